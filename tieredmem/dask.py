"""Dask workers on tiered memory (docs/dask.md).

A worker's pool is installed process-wide before its tasks run: numpy's
allocator (tm.install: the default handler is repointed, so the worker's task
threads, which start with copies of the worker's context, reach it too),
pyarrow's default memory pool, and, where the worker was started with the
malloc interposer preloaded, the C library's large allocations and pymalloc's
arenas. Three ways in:

    client.register_plugin(tieredmem.dask.TieredMemory(dram="2GiB"))   # a WorkerPlugin
    client.register_plugin(tieredmem.dask.Interposer())   # a NannyPlugin: restarts the
                                                         # workers with the interposer preloaded
    dask worker --preload tieredmem.dask --tieredmem-dram 2GiB ...   # and --preload-nanny
                                                                     # tieredmem.dask: the interposer

A worker process cannot preload the interposer itself: LD_PRELOAD is read when
a process starts, and `tieredmem run`'s re-exec is not open to a worker, which
its nanny spawned (multiprocessing's spawn) and which reads its start-up data
from a pipe once. So the nanny puts it in the environment it spawns workers
with (Interposer, or the nanny preload).

Defaults come from the worker: DRAM is DRAM_SHARE of its memory_limit, the
NVMe tier is in its local directory (the slot file is unlinked at creation, so
a killed worker leaves none behind). Dask's own spilling is turned off unless
asked for (dask_spill=True): see docs/dask.md for the measurement."""
import logging
import os
import sys
import threading
import time

import click
from distributed.diagnostics.plugin import NannyPlugin, WorkerPlugin
from tornado.ioloop import PeriodicCallback

from . import malloc, numpy_alloc
from .pool import Pool, _check_dir, default_nvme_size, policy_names
from .sizes import format_size, parse_size

logger = logging.getLogger("distributed.worker.tieredmem")  # shown as Dask's own logs are

# Of the worker's memory_limit: the rest is for memory outside the pool (the
# interpreter, modules, small objects: ~150-250 MiB for a worker with pandas
# and pyarrow imported) below Dask's pause threshold (80%).
DRAM_SHARE = 0.5
RATE_INTERVAL = 1.0  # seconds between the samples fault and I/O rates are taken over
# Counters reported as rates per second, and as Prometheus counters.
RATE_COUNTERS = ("faults", "promotions", "demotions", "bytes_read", "bytes_written")


class Settings:
    """A worker pool's settings, checked where they are given (the client, the
    worker's command line) so that bad input fails there, naming the option."""

    def __init__(self, dram=None, pmem=0, nvme=None, nvme_path=None, pmem_path=None, block_size="64KiB",
                 threshold="1MiB", policy="lru", dram_share=DRAM_SHARE, dask_spill=False, pymalloc=True):
        values = dict(dram=dram, pmem=pmem, nvme=nvme, block_size=block_size, threshold=threshold)
        self.sizes = {k: parse_size(v, k) for k, v in values.items() if v is not None}
        if policy not in policy_names():
            raise ValueError(f"policy: unknown policy {policy!r} (one of: {', '.join(policy_names())})")
        if not isinstance(dram_share, (int, float)) or not 0 < dram_share < 1:
            raise ValueError(f"dram_share: a share of the worker's memory_limit between 0 and 1, got {dram_share!r}")
        self.policy, self.dram_share = policy, float(dram_share)
        self.nvme_path, self.pmem_path = nvme_path, pmem_path
        self.dask_spill, self.pymalloc = bool(dask_spill), bool(pymalloc)

    def pool_kwargs(self, worker) -> dict:
        """Pool(...) arguments for `worker`: what was not given, from the worker."""
        limit = worker.memory_manager.memory_limit
        dram = self.sizes.get("dram")
        if dram is None:
            if not limit:
                raise ValueError("tieredmem: the worker has no memory_limit to take a DRAM share of: give dram=")
            dram = int(limit * self.dram_share)
        nvme_path = _check_dir(self.nvme_path or worker.local_directory, "nvme_path")
        nvme = self.sizes["nvme"] if "nvme" in self.sizes else default_nvme_size(nvme_path)
        bs = self.sizes["block_size"]
        return dict(dram=max(dram - dram % bs, bs), pmem=self.sizes["pmem"], nvme=nvme - nvme % bs,
                    nvme_path=nvme_path, pmem_path=self.pmem_path, block_size=bs,
                    threshold=self.sizes["threshold"], policy=self.policy)


class WorkerPool:
    """The pool of this worker process and what was installed with it."""

    def __init__(self, worker, settings: Settings):
        self.kwargs = settings.pool_kwargs(worker)
        self.pool = Pool(**self.kwargs)
        numpy_alloc.install(self.pool)
        self.malloc = malloc.loaded() and malloc.attach(self.pool, arenas=settings.pymalloc)
        if self.malloc:
            forget_interposer(os.environ)
        else:
            logger.warning("tieredmem: the malloc interposer is not preloaded in this worker: only numpy's and "
                           "Arrow's allocations go to the pool (register tieredmem.dask.Interposer(), or start "
                           "the worker with --preload-nanny tieredmem.dask; docs/dask.md)")
        self.restore_dask_spill = (lambda: None) if settings.dask_spill else disable_dask_spill(worker)
        self.lock = threading.Lock()
        self.previous = self.latest = self._sample()
        logger.info("tieredmem: pool of %s DRAM, %s NVMe in %s%s", format_size(self.kwargs["dram"]),
                    format_size(self.kwargs["nvme"]), self.kwargs["nvme_path"],
                    "; malloc interposer attached" if self.malloc else "")

    def _sample(self):
        return time.monotonic(), self.pool.stats()

    def tick(self):
        """Take a sample: rates are over the latest two."""
        sample = self._sample()
        with self.lock:
            self.previous, self.latest = self.latest, sample

    def report(self) -> dict:
        """Tier bytes, the DRAM budget, RSS and what of it is outside the pool,
        and the engine's counters, as they are now; their rates per second
        over the latest sampling interval."""
        s = self.pool.stats()
        with self.lock:
            (t0, s0), (t1, s1) = self.previous, self.latest
        out = {f"{tier}_bytes": s[tier]["used"] for tier in ("dram", "pmem", "nvme")}
        out.update(dram_budget=s["dram"]["capacity"], spare_bytes=s["spare"], allocated_bytes=s["allocated"],
                   rss=s["rss"], outside_pool=s["outside_pool"], malloc=self.malloc)
        out.update({k: s[k] for k in RATE_COUNTERS})
        dt = t1 - t0
        out.update({f"{k}_per_s": (s1[k] - s0[k]) / dt if dt > 0 else 0.0 for k in RATE_COUNTERS})
        return out

    def close(self):
        self.restore_dask_spill()
        numpy_alloc.uninstall()
        self.pool.close()


_current = None  # this process's WorkerPool: one pool per process


def install(worker, settings: Settings) -> WorkerPool:
    """Create `worker`'s pool and install it process-wide; start its sampler
    and metrics."""
    global _current
    if _current is not None:
        raise RuntimeError("tieredmem: this process has a worker pool already (one per process: workers that "
                           "share a process, as LocalCluster(processes=False) makes, cannot each have one)")
    _current = WorkerPool(worker, settings)
    pc = PeriodicCallback(_current.tick, RATE_INTERVAL * 1000)
    worker.periodic_callbacks["tieredmem"] = pc  # stopped by the worker when it closes
    pc.start()
    worker.metrics["tieredmem"] = lambda w: _current.report() if _current else None
    _register_prometheus()
    return _current


def uninstall(worker):
    global _current
    pc = worker.periodic_callbacks.pop("tieredmem", None)
    if pc is not None:
        pc.stop()
    worker.metrics.pop("tieredmem", None)
    if _current is not None:
        _current.close()
        _current = None


def stats() -> dict | None:
    """This worker's tier bytes, counters and rates (WorkerPool.report), or
    None without a pool: `client.run(tieredmem.dask.stats)`."""
    return _current.report() if _current is not None else None


def forget_interposer(environ):
    """Take the interposer out of LD_PRELOAD, as `tieredmem run` does: the
    processes a task starts are not this pool's to tier."""
    path = str(malloc.library_path())
    rest = [p for p in environ.get("LD_PRELOAD", "").split(":") if p and p != path]
    if rest:
        environ["LD_PRELOAD"] = ":".join(rest)
    else:
        environ.pop("LD_PRELOAD", None)


def disable_dask_spill(worker):
    """Leave data beyond DRAM to the pool: Dask's spilling by managed bytes
    (target) and by RSS (spill) would pickle pool arrays to disk, which the
    pool demotes without a copy (docs/dask.md, the measurement). Pausing and
    termination stay: RSS holds the pool's DRAM and what is outside it.
    Returns a function that turns it back on as it was."""
    mm, data = worker.memory_manager, worker.data
    was = mm.memory_target_fraction, mm.memory_spill_fraction, getattr(data, "n", None)
    mm.memory_target_fraction = mm.memory_spill_fraction = False
    if was[2] is not None:  # a SpillBuffer: its target, in managed bytes
        data.n = float("inf")

    def restore():
        mm.memory_target_fraction, mm.memory_spill_fraction = was[:2]
        if was[2] is not None:
            data.n = was[2]
    return restore


def _register_prometheus():
    """Our gauges and counters in the worker's /metrics (prometheus_client's
    default registry, which the worker's handler serves), once per process."""
    try:
        import prometheus_client
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    except ImportError:
        return
    if getattr(_register_prometheus, "done", False):
        return

    class Collector:
        def collect(self):
            report = stats()
            if report is None:
                return
            tiers = GaugeMetricFamily("dask_worker_tieredmem_tier_bytes", "Bytes in each tier of the worker's "
                                      "tieredmem pool", labels=["tier"])
            for tier in ("dram", "pmem", "nvme"):
                tiers.add_metric([tier], report[f"{tier}_bytes"])
            yield tiers
            yield GaugeMetricFamily("dask_worker_tieredmem_dram_budget_bytes", "The pool's DRAM budget",
                                    value=report["dram_budget"])
            yield GaugeMetricFamily("dask_worker_tieredmem_outside_pool_bytes", "Resident bytes of the worker "
                                    "outside its pool", value=report["outside_pool"])
            for k in RATE_COUNTERS:
                yield CounterMetricFamily(f"dask_worker_tieredmem_{k}", f"The pool's {k.replace('_', ' ')} "
                                          "since it was created", value=report[k])

    prometheus_client.REGISTRY.register(Collector())
    _register_prometheus.done = True


class TieredMemory(WorkerPlugin):
    """A pool in each worker, installed when the plugin is registered and in
    every worker that joins or restarts later (the scheduler hands the plugin
    to each): `client.register_plugin(TieredMemory(dram="2GiB"))`.

    dram: the DRAM budget (default: dram_share of the worker's memory_limit);
    nvme: the NVMe tier's size (default: the free space of nvme_path's disk
    less 10%); nvme_path: its directory (default: the worker's local
    directory); pmem, pmem_path, block_size, threshold, policy: as Pool's;
    dask_spill: keep Dask's spilling (target/spill) on; pymalloc: put Python's
    small objects in the pool too where the interposer is preloaded."""

    name = "tieredmem"

    def __init__(self, **settings):
        self.settings = Settings(**settings)

    def setup(self, worker):
        install(worker, self.settings)

    def teardown(self, worker):
        uninstall(worker)


def interposer_environ(environ) -> dict:
    """The variables a worker is to be spawned with for the interposer:
    LD_PRELOAD with the library first, and Arrow's default pool on malloc
    (Arrow reads it at its first allocation), unless set already."""
    path = malloc.library_path()
    if path is None:
        raise RuntimeError("tieredmem: the malloc interposer is not built (make build)")
    old = environ.get("LD_PRELOAD", "")
    if str(path) in old.split(":"):
        return {}
    out = {"LD_PRELOAD": f"{path}:{old}" if old else str(path)}
    if "ARROW_DEFAULT_MEMORY_POOL" not in environ:
        out["ARROW_DEFAULT_MEMORY_POOL"] = "system"
    return out


def prepare_nanny(nanny):
    """Make `nanny` spawn its workers with the interposer preloaded: the
    environment it sets before it spawns (pre_spawn_env, which its worker
    process shares, so restarts keep it)."""
    nanny.pre_spawn_env.update(interposer_environ(nanny.pre_spawn_env))


class Interposer(NannyPlugin):
    """Restart each worker with the malloc interposer preloaded, so that its
    pool (TieredMemory, or the preload) also serves the C library's large
    allocations and pymalloc's arenas (docs/malloc.md). Needs nannies."""

    name = "tieredmem-interposer"
    restart = True

    def setup(self, nanny):
        prepare_nanny(nanny)


# The preload: `dask worker --preload tieredmem.dask --tieredmem-dram 2GiB`.
# Each option is a Settings argument; --tieredmem-X for X.
_PRELOAD_OPTIONS = (
    ("dram", str, "DRAM budget (default: --tieredmem-dram-share of the worker's memory limit)"),
    ("dram-share", float, f"share of the worker's memory limit for DRAM when --tieredmem-dram is not given "
                          f"(default: {DRAM_SHARE})"),
    ("nvme", str, "NVMe tier size (default: free space of its disk less 10%)"),
    ("nvme-path", str, "NVMe tier directory (default: the worker's local directory)"),
    ("pmem", str, "PMEM tier size (default: none)"),
    ("pmem-path", str, "PMEM directory (default: a DAX mount, else /dev/shm)"),
    ("block-size", str, "placement unit (default: 64KiB)"),
    ("threshold", str, "smallest allocation placed in the pool (default: 1MiB)"),
    ("policy", str, "placement policy: lru, fifo or hotness (default: lru)"),
)


def _preload_command(fn):
    for name, kind, text in reversed(_PRELOAD_OPTIONS):
        fn = click.option(f"--tieredmem-{name}", type=kind, default=None, help=text)(fn)
    fn = click.option("--tieredmem-dask-spill/--no-tieredmem-dask-spill", default=False,
                      help="keep Dask's own spilling (target/spill) on (default: off)")(fn)
    fn = click.option("--tieredmem-pymalloc/--no-tieredmem-pymalloc", default=True,
                      help="Python's small objects in the pool too, where the interposer is preloaded")(fn)
    return click.command(context_settings={"ignore_unknown_options": False})(fn)


@_preload_command
def dask_setup(service, **options):
    """As a worker preload: install the pool. As a nanny preload
    (--preload-nanny): spawn workers with the interposer preloaded."""
    from distributed import Nanny
    if isinstance(service, Nanny):
        prepare_nanny(service)
        return
    given = {k[len("tieredmem_"):]: v for k, v in options.items() if v is not None}
    try:
        install(service, Settings(**given))
    except Exception:
        # Dask logs a preload's error and starts the worker anyway: a worker
        # meant to run on tiered memory must not run without it.
        logger.exception("tieredmem: cannot install the worker's pool; stopping the worker")
        sys.exit(1)


def dask_teardown(service):
    from distributed import Nanny
    if not isinstance(service, Nanny):
        uninstall(service)
