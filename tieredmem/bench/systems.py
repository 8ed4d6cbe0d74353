"""The systems the suite compares, and how one of them runs one workload.

* numpy: all-DRAM numpy, no memory limit (the ideal).
* swap: plain numpy in the memory cgroup, with kernel swap to a swap file on
  the NVMe tier's disk (enabled only while this system runs).
* memmap: the workload's input arrays are numpy.memmap files on that disk
  (the page cache, charged to the cgroup, holds what fits); anything else the
  computation allocates is ordinary memory.
* tm-POLICY: a tieredmem Pool with that placement policy, DRAM tier = the
  budget, NVMe tier on the disk, installed as numpy's allocator for the whole
  run (`tm.use`), and the C library's large allocations in it through the
  malloc interposer (preloaded; TIEREDMEM_MALLOC=0 leaves it out), as
  `tieredmem run` would.
* tm-POLICY-pmem: the same with a PMEM tier emulated in /dev/shm at the speed
  of --pmem-emulation (default "optane"). Emulated PMEM pages live in DRAM and
  are charged to the cgroup, so its limit is raised by the PMEM tier's size.

Every repetition runs in a fresh interpreter (`python -m
tieredmem.bench.systems SPEC.json`) placed in its own memory cgroup before
exec. Once the interpreter and its modules (and the pool) are up, the child
limits its group to its usage at that moment + the DRAM budget + a fixed
allowance (for small allocations that no system tiers), so every system gets
the same memory for the workload whatever its imports cost. numpy's group is
left unlimited (it only measures the peak).
"""
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass

CORRUPT_ENV = "TIEREDMEM_BENCH_CORRUPT"  # test hook: comma list of system ids whose checksum is perturbed


@dataclass(frozen=True)
class System:
    id: str
    label: str
    kind: str            # "dram", "swap", "memmap", "tieredmem"
    policy: str = ""
    pmem: bool = False

    @property
    def limited(self):
        return self.kind != "dram"


def policy_names():
    """The engine's built-in policies."""
    import tieredmem  # not at module level: the children of other systems never load the engine
    return tuple(tieredmem.policy_names())


def all_systems(policies=None):
    out = [System("numpy", "numpy, all in DRAM (no limit)", "dram"),
           System("swap", "numpy + kernel swap", "swap"),
           System("memmap", "numpy.memmap", "memmap")]
    policies = policies or policy_names()
    out += [System(f"tm-{p}", f"tieredmem {p}", "tieredmem", p) for p in policies]
    out += [System(f"tm-{p}-pmem", f"tieredmem {p} + PMEM", "tieredmem", p, True) for p in policies]
    return out


# ------------------------------------------------------------------ the child

class Sampler(threading.Thread):
    """Every `interval` s: seconds since start, cgroup usage and swap, and the
    pool's bytes per tier (dram, pmem, nvme)."""

    def __init__(self, start, pool, cgroup_path, version, interval):
        super().__init__(daemon=True)
        self.t0, self.pool, self.cg, self.version, self.interval = start, pool, cgroup_path, version, interval
        self.rows = []
        self.halt = threading.Event()

    def sample(self):
        from . import cgroup
        row = [round(time.perf_counter() - self.t0, 4)]
        row += list(cgroup.usage(self.cg, self.version)) if self.cg else [None, None]
        if self.pool is not None:
            st = self.pool.stats()
            row += [st["dram"]["used"], st["pmem"]["used"], st["nvme"]["used"]]
        self.rows.append(row)

    def run(self):
        while not self.halt.wait(self.interval):
            try:
                self.sample()
            except Exception:  # noqa: BLE001 -- sampling must never break the run
                pass

    def stop(self):
        self.halt.set()
        self.join()
        return self.rows


def _pool_kwargs(spec):
    kw = {"dram": spec["budget"], "nvme": spec["nvme_bytes"], "nvme_path": spec["tier_dir"],
          "policy": spec["system"]["policy"]}
    if spec["system"]["pmem"]:
        kw["pmem"] = spec["pmem_bytes"]
        kw["pmem_emulation"] = spec["pmem_emulation"]
    return kw


def child_main(spec_path):
    """Run one repetition of one system on one workload; write the result JSON."""
    start = time.perf_counter()
    with open(spec_path) as f:
        spec = json.load(f)
    out = {"status": "ok"}

    def finish(**kw):
        out.update(kw)
        with open(spec["result"], "w") as f:
            json.dump(out, f, default=_jsonable)

    import numpy as np
    from . import cgroup
    from .workloads import WORKLOADS
    wl = WORKLOADS[spec["workload"]]
    system = spec["system"]
    if wl.name == "pipeline":
        import pandas  # noqa: F401 -- part of the interpreter's share, before the limit
    pool = None
    ctx = contextlib.nullcontext()
    if system["kind"] == "tieredmem":
        try:
            import tieredmem as tm
            pool = tm.Pool(**_pool_kwargs(spec))
            ctx = tm.use(pool)
            tm.malloc.attach(pool)  # if run_child preloaded the interposer
        except Exception as exc:  # noqa: BLE001 -- the system cannot run here: say why
            return finish(status="not run", reason=f"{type(exc).__name__}: {exc}")
    cg = spec.get("cgroup")
    sampler = Sampler(start, pool, cg and cg["path"], cg and cg["version"], spec["sample_s"])
    if cg and system["kind"] != "dram":
        extra = spec["budget"] + spec["allowance"] + (spec["pmem_bytes"] if system["pmem"] else 0)
        base, limit = cgroup.limit_self(cg["path"], cg["version"], extra, swap=system["kind"] == "swap")
        out["cgroup"] = {"baseline": base, "limit": limit}
    elif cg:
        base, _ = cgroup.usage(cg["path"], cg["version"])
        cgroup.reset_peak(cg["path"], cg["version"])
        out["cgroup"] = {"baseline": base, "limit": None}
    sampler.sample()
    sampler.start()
    files = []

    def alloc(shape, dtype, name):
        if system["kind"] == "memmap":
            path = os.path.join(spec["data_dir"], f"{name}.bin")
            files.append(path)
            return np.memmap(path, dtype=dtype, mode="w+", shape=shape)
        return np.empty(shape, dtype)

    params = spec["params"]
    try:
        with ctx:
            t0 = time.perf_counter()
            data = wl.setup(alloc, params)
            t1 = time.perf_counter()
            before = pool.stats() if pool is not None else None
            print(f"PHASE compute {time.time()}", flush=True)
            result, phases = wl.run(data, params)
            t2 = time.perf_counter()
            after = pool.stats() if pool is not None else None
            checksum = wl.checksum(result)
            t3 = time.perf_counter()
            del result, data
    except MemoryError as exc:
        sampler.stop()
        return finish(status="error", reason=f"MemoryError: {exc}")
    finally:
        for path in files:
            with contextlib.suppress(OSError):
                os.unlink(path)
    if system["id"] in os.environ.get(CORRUPT_ENV, "").split(","):
        checksum = {"corrupted by " + CORRUPT_ENV: checksum}
    series = sampler.stop()
    out.update(setup_s=t1 - t0, compute_s=t2 - t1, checksum_s=t3 - t2, phases=phases, checksum=checksum,
               marks={"setup": t0 - start, "compute": t1 - start, "checksum": t2 - start, "end": t3 - start},
               series=_thin(series, 600))
    if pool is not None:
        from ..pool import STAT_LEVELS
        out["stats"] = after
        out["stats_compute"] = {k: after[k] - before[k] for k in after
                                if k not in STAT_LEVELS and isinstance(after[k], int) and isinstance(before.get(k), int)}
        out["series_columns"] = ["t", "cgroup", "swap", "dram", "pmem", "nvme"]
    else:
        out["series_columns"] = ["t", "cgroup", "swap"]
    finish()
    # The measurement is over: skip the interpreter's teardown (freeing the
    # arrays, closing the pool), which no system is timed on. Tier files are
    # unlinked by the engine, memmap files were deleted above.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _thin(rows, limit):
    if len(rows) <= limit:
        return rows
    step = len(rows) / limit
    return [rows[int(i * step)] for i in range(limit)] + [rows[-1]]


def _jsonable(obj):
    try:
        return obj.item()
    except AttributeError:
        return str(obj)


# ----------------------------------------------------------------- the parent

def run_child(spec, workdir, cg_loc, timeout, swapfile=None):
    """Run one repetition in a fresh interpreter (in a new memory cgroup when
    cg_loc is given). Returns the child's result dict with "status" one of
    ok, not run, error, oom, timeout, and "wall_s"."""
    from . import cgroup
    os.makedirs(workdir, mode=0o700, exist_ok=True)
    spec = dict(spec, result=os.path.join(workdir, "result.json"), data_dir=workdir,
                tier_dir=workdir)
    spec_path = os.path.join(workdir, "spec.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    group = None
    proc = None
    try:
        if cg_loc is not None:
            group = cgroup.MemCgroup(cg_loc, spec["system"]["id"])
            spec["cgroup"] = {"path": group.path, "version": group.version}
            with open(spec_path, "w") as f:
                json.dump(spec, f)
        if swapfile is not None:
            swapfile.on()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if spec["system"]["kind"] == "tieredmem":
            env.update(_interposer_env())
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "tieredmem.bench.systems", spec_path],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=env, preexec_fn=group.add_self_fn() if group else None,
                                start_new_session=True)
        timed_out = False
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            killed_at = time.time()
            _kill(proc)
            stdout, stderr = proc.communicate()
        wall = time.perf_counter() - start
        cg_stats = group.stats() if group else {}
    except BaseException:
        if proc is not None and proc.poll() is None:
            _kill(proc)
            proc.wait()
        raise
    finally:
        if group is not None:
            group.remove()
        if swapfile is not None:
            swapfile.off()
    res = {}
    if os.path.exists(spec["result"]):
        with open(spec["result"]) as f:
            res = json.load(f)
    res["wall_s"] = wall
    res["cgroup_stats"] = cg_stats
    res["returncode"] = proc.returncode
    if timed_out:
        res["status"] = "timeout"
        res["timeout_s"] = timeout
        started = [float(line.split()[2]) for line in stdout.decode(errors="replace").splitlines()
                   if line.startswith("PHASE compute")]
        res["compute_lower_bound_s"] = killed_at - started[0] if started else None
    elif cg_stats.get("oom_kill"):
        res["status"] = "oom"
    elif not res.get("status") or proc.returncode != 0 and res.get("status") == "ok":
        err = stderr.decode(errors="replace").strip().splitlines()
        res["status"] = "error"
        res["reason"] = (err[-1] if err else f"exit status {proc.returncode}")[-300:]
    if res["status"] in ("error", "not run"):
        res["stderr_tail"] = stderr.decode(errors="replace")[-2000:]
    return res


def _interposer_env():
    """LD_PRELOAD with the malloc interposer for a tieredmem child, as `tieredmem
    run` sets it; nothing if TIEREDMEM_MALLOC=0 or it is not built."""
    from ..malloc import library_path
    path = library_path()
    if os.environ.get("TIEREDMEM_MALLOC") == "0" or path is None:
        return {}
    old = os.environ.get("LD_PRELOAD")
    return {"LD_PRELOAD": f"{path}:{old}" if old else str(path)}


def _kill(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


def system_dict(system):
    return asdict(system)


if __name__ == "__main__":
    child_main(sys.argv[1])
