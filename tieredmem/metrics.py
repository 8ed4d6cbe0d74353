"""Prometheus metrics of tieredmem pools: tieredmem.metrics.serve(port), or
`python -m tieredmem run --metrics-port N`.

A collector reads the statistics the pools publish (tieredmem.published) at
each scrape, so the figures are those `tieredmem top` shows. Every series
has the labels pid and pool. Counters end in _total, in bytes and seconds:

    tieredmem_tier_bytes{tier="dram"|"pmem"|"nvme"}   bytes held (DRAM: resident)
    tieredmem_tier_capacity_bytes{tier}, tieredmem_tier_peak_bytes{tier}
    tieredmem_faults_total, tieredmem_promotions_total, tieredmem_demotions_total, ...
                                        (every counter of pool.stats(), as tieredmem_<name>_total)
    tieredmem_read_bytes_total, tieredmem_written_bytes_total   lower-tier I/O
    tieredmem_fault_seconds_total       time faults were served: its rate is the share
                                        of the time the program waited on faults
    tieredmem_allocated_bytes, tieredmem_capacity_bytes, tieredmem_headroom_bytes, ...
    tieredmem_array_bytes{rank, origin, tier}   the largest arrays, per tier
    tieredmem_pool_info{policy, block_size, ...}
    tieredmem_share_*{group}            a pool in a host group (docs/sharing.md): its grant,
                                        target, floor, ceiling, weight, the group's budget,
                                        its stall share and misses, and what one step more
                                        or less DRAM is worth to it
"""
import os

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from . import published
from .pool import STAT_LEVELS, TIERS

LABELS = ["pid", "pool"]
LOWER_TIERS = ("dram", "pmem", "nvme")
# The names of the levels among pool.stats()' fields (pool.STAT_LEVELS:
# gauges) that say their unit otherwise; the other fields are counters.
GAUGE_NAMES = {"allocated": "allocated_bytes", "capacity": "capacity_bytes", "headroom": "headroom_bytes",
               "spare": "spare_bytes", "zero_ready": "zero_ready_bytes", "fork_kept": "fork_kept_bytes", "sample_rate": "sample_rate_blocks_per_second",
               "rss": "resident_bytes", "outside_pool": "outside_pool_bytes"}
INFO = ("dirty_tracking", "nvme_direct", "pmem_dax")
# Counters whose names say their unit otherwise.
COUNTER_NAMES = {"bytes_read": "read_bytes", "bytes_written": "written_bytes"}
# A host group member's figures (published "share"), as gauges with the label group.
SHARE_GAUGES = (
    ("budget", "share_budget_bytes", "the host group's DRAM"),
    ("grant", "share_grant_bytes", "the group's DRAM this pool may hold"),
    ("target", "share_target_bytes", "what the group's arbitration wants it to hold"),
    ("floor", "share_floor_bytes", "the least it keeps"),
    ("ceiling", "share_ceiling_bytes", "the most it takes"),
    ("weight", "share_weight", "its weight in the group"),
    ("stall", "share_stalled_ratio", "the share of the time its threads waited on faults, over the group's last period"),
    ("misses", "share_miss_bytes_per_second", "bytes read from its lower tiers per second, last period"),
    ("idle", "share_idle_bytes", "its DRAM parked a period or more and not used since"),
)


def counter_name(field: str) -> str:
    """tieredmem_<field>_total, nanoseconds as seconds."""
    if field.endswith("_ns"):
        return f"tieredmem_{field[:-3]}_seconds_total"
    return f"tieredmem_{COUNTER_NAMES.get(field, field)}_total"


class PoolCollector(Collector):
    """The published pools of the processes `pids` (default: this one)."""

    def __init__(self, pids=None):
        self.pids = [os.getpid()] if pids is None else list(pids)

    def collect(self):
        pools = [(str(proc["pid"]), snap) for proc in published.processes(self.pids)
                 for snap in proc["pools"] if "stats" in snap]  # one mid-write has no figures
        families = {}

        def family(kind, name, doc, extra=()):
            if name not in families:
                families[name] = kind(name, doc, labels=LABELS + list(extra))
            return families[name]

        for pid, snap in pools:
            labels = [pid, str(snap["pool"])]
            s = snap["stats"]
            for tier in LOWER_TIERS:
                for key, name, doc in (("used", "tier_bytes", "bytes held in the tier (DRAM: resident)"),
                                       ("capacity", "tier_capacity_bytes", "the tier's capacity"),
                                       ("peak", "tier_peak_bytes", "the most the tier held")):
                    family(GaugeMetricFamily, f"tieredmem_{name}", doc, ["tier"]).add_metric(
                        labels + [tier], s[tier][key])
            for field, value in s.items():
                if field in LOWER_TIERS or field in INFO:
                    continue
                if field in STAT_LEVELS:
                    f = family(GaugeMetricFamily, f"tieredmem_{GAUGE_NAMES.get(field, field)}",
                               f'pool.stats()["{field}"]')
                else:
                    f = family(CounterMetricFamily, counter_name(field), f'pool.stats()["{field}"]')
                f.add_metric(labels, value / 1e9 if field.endswith("_ns") else value)
            family(GaugeMetricFamily, "tieredmem_live_allocations", "live allocations").add_metric(
                labels, snap["live_allocations"])
            family(InfoMetricFamily, "tieredmem_pool", "the pool's settings").add_metric(
                labels, {"policy": snap["policy"], "block_size": str(snap["block_size"]),
                         **{k: str(s[k]) for k in INFO}})
            if snap.get("share"):
                self._share(family, labels, snap["share"])
            arrays = family(GaugeMetricFamily, "tieredmem_array_bytes",
                            "bytes of the largest arrays per tier (rank 1 is the largest)", ["rank", "origin", "tier"])
            for rank, row in enumerate(snap["arrays"], 1):
                for tier in TIERS:
                    arrays.add_metric(labels + [str(rank), row["origin"] or "", tier], row[tier])
        return list(families.values())

    @staticmethod
    def _share(family, labels, sh):
        group = labels + [sh["group"]]
        for key, name, doc in SHARE_GAUGES:
            family(GaugeMetricFamily, f"tieredmem_{name}", doc, ["group"]).add_metric(group, sh[key])
        for key, doc in (("gain", "bytes/s one step (the group's budget / 32) more DRAM would have saved it"),
                         ("loss", "bytes/s one step less DRAM would have cost it")):
            family(GaugeMetricFamily, f"tieredmem_share_step_{key}_bytes_per_second", doc, ["group"]).add_metric(
                group, sh[key][0])


def serve(port: int, addr: str = "127.0.0.1", pids=None):
    """Serve the metrics of this process's pools (or of the processes
    `pids`) over HTTP on addr:port, from a daemon thread; returns the
    server (server.shutdown() stops it). The default address is loopback:
    the figures are the user's own; give addr="0.0.0.0" for a Prometheus on
    another machine."""
    registry = CollectorRegistry()
    registry.register(PoolCollector(pids))
    server, _ = start_http_server(port, addr=addr, registry=registry)
    return server
