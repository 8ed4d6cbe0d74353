"""Prometheus metrics (tieredmem.metrics): `run --metrics-port` serves the
figures of the program's pool over loopback, under conventional names, as
prometheus_client's own parser reads them."""
import socket
import subprocess
import sys
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tieredmem import metrics

from settled import SCRIPT, origin_line, start, stop

pytestmark = pytest.mark.timeout(120, method="thread")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A settled program under `run --metrics-port`, its own figures, and
    what its endpoint served, parsed."""
    nvme = tmp_path_factory.mktemp("nvme")
    port = free_port()
    proc, told = start([sys.executable, "-m", "tieredmem", "run", "--quiet", "--nvme-path", str(nvme), "--dram",
                        "8MiB", "--nvme", "64MiB", "--track-origins", "--metrics-port", str(port), str(SCRIPT)])
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    finally:
        stop(proc)
    yield proc, told, {f.name: f for f in text_string_to_metric_families(text)}


def values(family, **labels):
    """The family's sample values whose labels include `labels`."""
    return [s.value for s in family.samples if labels.items() <= s.labels.items()]


def test_tier_bytes_are_the_program_pool_tiers(served):
    proc, told, families = served
    stats = told["stats"]
    assert stats["nvme"]["used"] > 0
    for tier in ("dram", "pmem", "nvme"):
        assert values(families["tieredmem_tier_bytes"], tier=tier) == [stats[tier]["used"]]
        assert values(families["tieredmem_tier_capacity_bytes"], tier=tier) == [stats[tier]["capacity"]]


def test_every_series_is_labelled_with_the_process_and_the_pool(served):
    proc, told, families = served
    labels = {(s.labels["pid"], s.labels["pool"]) for f in families.values() for s in f.samples}
    assert labels == {(str(proc.pid), "1")}


def test_counters_are_totals_in_bytes_and_seconds(served):
    proc, told, families = served
    stats = told["stats"]
    for family, field in (("tieredmem_faults", "faults"), ("tieredmem_promotions", "promotions"),
                          ("tieredmem_demotions", "demotions"), ("tieredmem_read_bytes", "bytes_read"),
                          ("tieredmem_written_bytes", "bytes_written")):
        assert families[family].type == "counter"
        assert values(families[family]) == [stats[field]], family
    assert values(families["tieredmem_fault_seconds"]) == [pytest.approx(stats["fault_ns"] / 1e9)]
    assert stats["demotions"] > 0 and stats["bytes_written"] > 0


def test_the_largest_array_is_served_per_tier_with_its_origin(served):
    proc, told, families = served
    origin = f"{SCRIPT}:{origin_line()}"
    for tier, nbytes in told["placement"].items():
        assert values(families["tieredmem_array_bytes"], rank="1", origin=origin, tier=tier) == [nbytes]


def test_the_pool_policy_is_served_as_info(served):
    proc, told, families = served
    (sample,) = families["tieredmem_pool_info"].samples
    assert sample.labels["policy"] == "lru" and sample.labels["block_size"] == str(told["stats"]["block_size"])


def test_serve_listens_on_loopback_by_default(make_pool):
    make_pool(dram="8MiB", nvme="64MiB")
    server = metrics.serve(0)
    try:
        assert server.server_address[0] == "127.0.0.1"
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=30).read().decode()
    finally:
        server.shutdown()
    assert "tieredmem_tier_capacity_bytes" in {f.name for f in text_string_to_metric_families(text)}
