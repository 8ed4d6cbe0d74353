"""The suite's run: every system on every workload and footprint, side by
side, interleaved per repetition; the machine and its disk measured in the
same run; targets computed from the medians.

Order: for each workload, footprints from the smallest; for each footprint,
`reps` repetitions; in each repetition numpy (all-DRAM) first (its checksum is
the reference and its time sets the others' timeout), then the other systems
in an order rotated by one each repetition. A system that was OOM-killed or
timed out at a footprint is not run at the larger footprints of that workload
(reported "not run: ... at the smaller footprint"); a system whose answer
differs from all-DRAM is reported WRONG and not timed as a success.
"""
import datetime
import json
import mmap
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

from . import cgroup, swap, systems as sysmod
from .workloads import WORKLOADS

MiB = 1 << 20
GiB = 1 << 30
BUDGET_AT_SCALE_1 = 4 * GiB
SCHEMA = "tieredmem-bench/1"
TMPFS = ("tmpfs", "ramfs", "devtmpfs", "hugetlbfs")

TARGETS = [  # id, text, workload, footprint, kind, baseline, bound
    ("pipeline_vs_dram", "pipeline at 2x: time / all-DRAM", "pipeline", 2.0, "slowdown", "numpy", ("<=", 1.5)),
    ("pipeline_vs_swap", "pipeline at 2x: speedup over kernel swap", "pipeline", 2.0, "speedup", "swap", (">=", 3.0)),
    ("seq_vs_memmap", "sequential reduce at 4x: speedup over numpy.memmap", "seq_reduce", 4.0, "speedup", "memmap",
     (">=", 1.0)),
    ("seq_vs_swap", "sequential reduce at 4x: speedup over kernel swap", "seq_reduce", 4.0, "speedup", "swap",
     (">=", 5.0)),
]


@dataclass
class Config:
    budget: int
    footprints: list
    workloads: list
    systems: list                 # ids to run
    reps: int
    nvme_path: str
    allowance: int = 32 * MiB     # the CLI's default: 32 MiB + budget / 16, at most 64 MiB
    pmem: int = 0                 # PMEM tier bytes (0: same as the budget)
    pmem_emulation: str = "optane"
    timeout_factor: float = 20.0  # timeout = min_timeout + factor x numpy's wall time
    min_timeout: float = 30.0
    max_timeout: float = 900.0
    sample_s: float = 0.05
    quick: bool = False
    scale: float = 1.0
    progress: bool = True
    skipped: dict = field(default_factory=dict)  # system id -> why it is not run
    policies: list = field(default_factory=list)
    extra_footprints: dict = field(default_factory=dict)  # workload -> one more footprint (--quick: seq_reduce 4x)

    def footprints_of(self, workload):
        extra = self.extra_footprints.get(workload)
        return sorted(set(self.footprints) | ({extra} if extra else set()))


# ----------------------------------------------------------------- machine

def mount_of(path):
    """(mount point, fs type, source) of the filesystem holding path."""
    real = os.path.realpath(path)
    best = ("/", "?", "?")
    try:
        lines = open("/proc/self/mountinfo").read().splitlines()
    except OSError:
        return best
    for line in lines:
        pre, _, post = line.partition(" - ")
        f, g = pre.split(), post.split()
        if len(f) < 5 or len(g) < 2:
            continue
        mnt = f[4].replace("\\040", " ")
        if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best[0]):
            best = (mnt, g[0], g[1])
    return best


def disk_check(path):
    """None if path is on a real disk, else the reason it is not."""
    mnt, fstype, source = mount_of(path)
    if fstype in TMPFS:
        return f"{path} is on {fstype} ({mnt}): the NVMe tier, memmap files and swap file must be on a disk"
    return None


def read_text(path, default=None):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return default


def machine_info(nvme_path):
    import numpy
    info = {
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "cpu_model": next((line.split(":", 1)[1].strip() for line in (read_text("/proc/cpuinfo", "")).splitlines()
                           if line.startswith("model name")), platform.processor()),
        "mem_total_bytes": _meminfo("MemTotal"),
        "mem_available_bytes": _meminfo("MemAvailable"),
        "kernel": platform.release(),
        "kernel_version": platform.version(),
        "python": sys.version.split()[0],
        "numpy": numpy.__version__,
        "loadavg_start": read_text("/proc/loadavg"),
        "thp": read_text("/sys/kernel/mm/transparent_hugepage/enabled"),
        "thp_shmem": read_text("/sys/kernel/mm/transparent_hugepage/shmem_enabled"),
        "swaps_before": [{"path": p, "size": s, "used": u} for p, s, u in swap.active_swaps()],
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    for mod in ("pandas", "tieredmem"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception as exc:  # noqa: BLE001
            info[mod] = f"unavailable: {type(exc).__name__}: {exc}"
    info["engine"] = engine_identity()
    mnt, fstype, source = mount_of(nvme_path)
    info["disk"] = {"path": str(nvme_path), "mount": mnt, "fstype": fstype, "device": source}
    dev = os.path.basename(source)
    info["disk"]["read_ahead_kb"] = read_text(f"/sys/class/block/{dev}/queue/read_ahead_kb")
    info["disk"]["rotational"] = read_text(f"/sys/class/block/{dev}/queue/rotational")
    return info


def engine_identity():
    """The engine binary's sha256 and mtime (a rebuild during a run shows), and
    the source tree's git commit when there is one."""
    import glob
    import hashlib
    import subprocess
    pkg = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = {}
    for path in sorted(glob.glob(os.path.join(pkg, "_engine*.so"))):
        with open(path, "rb") as f:
            out["so_sha256"] = hashlib.sha256(f.read()).hexdigest()[:16]
        out["so_mtime"] = datetime.datetime.fromtimestamp(os.path.getmtime(path), datetime.timezone.utc).isoformat(
            timespec="seconds")
    try:
        res = subprocess.run(["git", "-C", pkg, "describe", "--always", "--dirty"], capture_output=True, text=True,
                             timeout=10)
        if res.returncode == 0:
            out["git"] = res.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def _meminfo(key):
    for line in (read_text("/proc/meminfo", "") or "").splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return None


def measure_disk(directory, size, reps=3, chunk=MiB):
    """O_DIRECT sequential write then reads of a file of `size` bytes (random
    data, `chunk` requests one at a time): {"write_gbps", "read_gbps": {median,
    min, max, runs}}, or {"error": reason}."""
    path = os.path.join(directory, "disk-probe.bin")
    buf = mmap.mmap(-1, 8 * MiB)
    buf.write(os.urandom(8 * MiB))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o600)
        try:
            t = time.perf_counter()
            for off in range(0, size, 8 * MiB):
                os.pwritev(fd, [buf], off)
            os.fsync(fd)
            write_s = time.perf_counter() - t
        finally:
            os.close(fd)
        rbuf = mmap.mmap(-1, chunk)
        runs = []
        for _ in range(reps):
            fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
            try:
                t = time.perf_counter()
                for off in range(0, size, chunk):
                    os.preadv(fd, [rbuf], off)
                runs.append(size / (time.perf_counter() - t) / 1e9)
            finally:
                os.close(fd)
        rbuf.close()
        return {"bytes": size, "request": chunk, "write_gbps": size / write_s / 1e9,
                "read_gbps": {"median": statistics.median(runs), "min": min(runs), "max": max(runs), "runs": runs}}
    except OSError as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        buf.close()
        try:
            os.unlink(path)
        except OSError:
            pass


# ------------------------------------------------------------------- the run

def _summary(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def _fp_label(f):
    return f"{f:g}x"


class Suite:
    def __init__(self, cfg: Config, progress=None):
        self.cfg = cfg
        self.progress = progress
        self.all = sysmod.all_systems(cfg.policies or None)
        self.by_id = {s.id: s for s in self.all}
        self.sys_reason = {}   # id -> "not run: ..." for the whole suite
        self.notes = []

    def log(self, text):
        if self.progress is not None:
            self.progress.note(text)
        else:
            print(text, file=sys.stderr)

    # A system's reason for not running anywhere, or None.
    def _system_reasons(self, loc_reason, swap_reason, tm_reason):
        cfg = self.cfg
        for s in self.all:
            if s.id in cfg.skipped:
                self.sys_reason[s.id] = f"not run: {cfg.skipped[s.id]}"
            elif s.id not in cfg.systems:
                self.sys_reason[s.id] = "not run: not selected (--systems)"
            elif s.limited and loc_reason:
                self.sys_reason[s.id] = f"not run: no memory cgroup for the limit: {loc_reason}"
            elif s.kind == "swap" and swap_reason:
                self.sys_reason[s.id] = f"not run: {swap_reason}"
            elif s.kind == "tieredmem" and tm_reason:
                self.sys_reason[s.id] = f"not run: {tm_reason}"

    def run(self):
        cfg = self.cfg
        started = time.monotonic()
        results = {"schema": SCHEMA, "config": self._config_dict(), "complete": False}
        os.makedirs(cfg.nvme_path, mode=0o700, exist_ok=True)
        for name in swap.cleanup_stale(cfg.nvme_path):
            self.notes.append(f"removed a stale swap file from an earlier run: {name}")
        for name in _stale_rundirs(cfg.nvme_path):
            self.notes.append(f"removed the data directory of an earlier run that was killed: {name}")
        rundir = tempfile.mkdtemp(prefix=f"run-{os.getpid()}-", dir=cfg.nvme_path)
        results["machine"] = machine_info(cfg.nvme_path)
        swapfile = None
        old_handlers = _trap_signals()
        try:
            probe = min(GiB, max(256 * MiB, cfg.budget))
            self.log(f"measuring the disk ({probe >> 20} MiB, O_DIRECT) ...")
            results["machine"]["disk"]["probe_start"] = measure_disk(rundir, probe)
            loc = loc_reason = None
            try:
                loc = cgroup.find_location()
                stale = cgroup.cleanup_stale(loc)
                if stale:
                    self.notes.append(f"removed {len(stale)} stale cgroup(s) of an earlier run")
                results["machine"]["cgroup"] = {"version": loc.version, "parent": loc.parent_dir}
            except cgroup.CgroupUnavailable as exc:
                loc_reason = str(exc)
                results["machine"]["cgroup"] = {"error": loc_reason}
            tm_reason = None
            try:
                import tieredmem  # noqa: F401
            except Exception as exc:  # noqa: BLE001
                tm_reason = f"import tieredmem failed: {type(exc).__name__}: {exc}"
            swap_reason = None
            if "swap" in cfg.systems and "swap" not in cfg.skipped and not loc_reason:
                size = int(max(max(cfg.footprints_of(w)) for w in cfg.workloads) * cfg.budget * 1.5) + 512 * MiB
                swapfile = swap.SwapFile(cfg.nvme_path, size)
                try:
                    swapfile.create()
                    results["machine"]["swap_file"] = {"path": swapfile.path, "size": swapfile.size,
                                                       "priority": swap.SWAP_PRIO}
                except swap.SwapUnavailable as exc:
                    swap_reason = str(exc)
                    swapfile = None
            self._system_reasons(loc_reason, swap_reason, tm_reason)
            results["systems"] = [dict(asdict(s), status=self.sys_reason.get(s.id, "ok")) for s in self.all]
            results["workloads"] = [{"name": w, "title": WORKLOADS[w].title,
                                     "description": WORKLOADS[w].description, "rtol": WORKLOADS[w].rtol}
                                    for w in cfg.workloads]
            results["cells"] = []
            try:
                self._loop(results, rundir, loc, swapfile)
                results["complete"] = True
            except KeyboardInterrupt:
                results["interrupted"] = "interrupted (Ctrl-C or a signal): the results are partial"
                self.log("interrupted: writing the partial results")
            if results["complete"]:
                results["machine"]["disk"]["probe_end"] = measure_disk(rundir, probe)
        finally:
            if swapfile is not None:
                swapfile.remove()
            shutil.rmtree(rundir, ignore_errors=True)
            _restore_signals(old_handlers)
        results["machine"]["loadavg_end"] = read_text("/proc/loadavg")
        results["machine"]["engine_end"] = engine_identity()
        results["machine"]["swaps_after"] = [{"path": p, "size": s, "used": u} for p, s, u in swap.active_swaps()]
        results["targets"] = self._targets(results["cells"])
        results["notes"] = self.notes
        results["elapsed_s"] = time.monotonic() - started
        return results

    def _config_dict(self):
        cfg = self.cfg
        d = asdict(cfg)
        d["pmem_bytes"] = cfg.pmem or cfg.budget
        try:
            from ..pool import parse_pmem_emulation
            d["pmem_emulation_params"] = parse_pmem_emulation(cfg.pmem_emulation)
        except Exception as exc:  # noqa: BLE001
            d["pmem_emulation_params"] = f"unknown: {exc}"
        d["limit_rule"] = ("cgroup limit = the child's usage once its interpreter (and pool) are up + DRAM budget "
                           "+ allowance (+ the PMEM tier for tieredmem with PMEM: emulated PMEM is memory "
                           "charged to the cgroup); memory+swap = the same limit except for the swap system; "
                           "numpy (all-DRAM) unlimited")
        return d

    def _loop(self, results, rundir, loc, swapfile):
        cfg = self.cfg
        runnable = [s.id for s in self.all if s.id not in self.sys_reason]
        total = sum(len(cfg.footprints_of(w)) for w in cfg.workloads) * cfg.reps * len(runnable)
        self.progress_total = total
        if self.progress is not None:
            self.progress.total = total
        mem_avail = _meminfo("MemAvailable") or 0
        run_no = 0
        for wname in cfg.workloads:
            wl = WORKLOADS[wname]
            failed_at = {}   # system id -> why its larger footprints are not run
            for f in cfg.footprints_of(wname):
                fp = int(f * cfg.budget)
                params = wl.params(fp, cfg.budget)
                cell = {"workload": wname, "footprint": f, "footprint_bytes": fp, "params": params,
                        "systems": {}}
                results["cells"].append(cell)
                recs = cell["systems"]
                for s in self.all:
                    reason = self.sys_reason.get(s.id) or (f"not run: {failed_at[s.id]}" if s.id in failed_at
                                                           else None)
                    if s.kind == "dram" and not reason and fp * 1.3 > mem_avail:
                        reason = (f"not run: the footprint ({fp >> 20} MiB) does not fit the machine's available "
                                  f"memory ({mem_avail >> 20} MiB)")
                    recs[s.id] = ({"state": "not run", "status": reason, "runs": []} if reason
                                  else {"state": "ok", "status": "ok", "runs": []})
                    if reason and s.id in runnable and self.progress is not None:
                        self.progress.skip(cfg.reps)
                ref = None
                others = [s.id for s in self.all if s.id != "numpy" and recs[s.id]["state"] == "ok"]
                for rep in range(cfg.reps):
                    k = rep % len(others) if others else 0
                    order = ["numpy"] + others[k:] + others[:k]
                    for sid in order:
                        rec = recs[sid]
                        if rec["state"] != "ok":
                            continue
                        timeout = self._timeout(recs["numpy"])
                        label = f"{wname} {_fp_label(f)} ({fp >> 20} MiB) {sid} rep {rep + 1}/{cfg.reps}"
                        if self.progress is not None:
                            self.progress.step(label)
                        run_no += 1
                        r = self._run_one(self.by_id[sid], wl, params, fp, rundir, run_no, loc, timeout, swapfile)
                        r["rep"] = rep
                        if self.progress is not None:
                            self.progress.advance()
                        ref = self._record(wl, f, sid, rec, r, ref, failed_at, cell)
                        if rec["state"] != "ok" and self.progress is not None:
                            self.progress.skip(cfg.reps - rep - 1)
                            self.log(f"{label}: {rec['status']}")
                self._summarize(cell)

    def _timeout(self, numpy_rec):
        cfg = self.cfg
        walls = [r["wall_s"] for r in numpy_rec["runs"]]
        if not walls:
            return cfg.max_timeout
        return min(cfg.max_timeout, cfg.min_timeout + cfg.timeout_factor * statistics.median(walls))

    def _run_one(self, system, wl, params, fp, rundir, run_no, loc, timeout, swapfile):
        cfg = self.cfg
        spec = {"system": asdict(system), "workload": wl.name, "params": params, "budget": cfg.budget,
                "allowance": cfg.allowance, "pmem_bytes": cfg.pmem or cfg.budget,
                "pmem_emulation": cfg.pmem_emulation,
                "nvme_bytes": 2 * fp + 512 * MiB, "sample_s": cfg.sample_s}
        workdir = os.path.join(rundir, f"{run_no:04d}-{system.id}")
        try:
            return sysmod.run_child(spec, workdir, loc, timeout,
                                    swapfile if system.kind == "swap" else None)
        except cgroup.CgroupUnavailable as exc:
            return {"status": "not run", "reason": f"no memory cgroup: {exc}", "wall_s": 0.0}
        except OSError as exc:
            return {"status": "error", "reason": f"{type(exc).__name__}: {exc}", "wall_s": 0.0}
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def _record(self, wl, f, sid, rec, r, ref, failed_at, cell):
        status = r.get("status")
        rec["runs"].append(r)
        fl = _fp_label(f)
        if status == "ok":
            if sid == "numpy":
                if ref is None:
                    return r["checksum"]
                if not wl.same(ref, r["checksum"]):
                    rec["state"], rec["status"] = "WRONG", "WRONG: all-DRAM checksums differ between repetitions"
                return ref
            if ref is None:
                r["checked"] = False
                rec.setdefault("unchecked", "no all-DRAM reference: the answer was not checked")
            elif not wl.same(ref, r["checksum"]):
                rec["state"] = "WRONG"
                rec["status"] = f"WRONG: the answer differs from all-DRAM's (rep {r['rep'] + 1})"
            else:
                r["checked"] = True
            return ref
        if status == "not run":
            rec["state"], rec["status"] = "not run", f"not run: {r.get('reason')}"
            if self.by_id[sid].kind == "tieredmem":  # a pool that cannot be made here: nowhere else either
                self.sys_reason[sid] = rec["status"]
        elif status == "oom":
            lim = (r.get("cgroup") or {}).get("limit")
            rec["state"] = "oom"
            rec["status"] = "OOM-killed" + (f" (cgroup limit {lim >> 20} MiB)" if lim else "")
            failed_at[sid] = f"OOM-killed at the smaller footprint {fl}"
        elif status == "timeout":
            rec["state"] = "timeout"
            lb = r.get("compute_lower_bound_s")
            rec["status"] = f"timed out after {r['timeout_s']:.0f} s" + (
                f" (compute > {lb:.1f} s)" if lb else " (before the computation started)")
            rec["lower_bound_s"] = lb
            failed_at[sid] = f"timed out at the smaller footprint {fl}"
        else:
            rec["state"], rec["status"] = "error", f"error: {r.get('reason')}"
        return ref

    def _summarize(self, cell):
        recs = cell["systems"]
        base = recs.get("numpy")
        base_med = None
        if base and base["state"] == "ok" and base["runs"]:
            base_med = statistics.median(r["compute_s"] for r in base["runs"])
        for sid, rec in recs.items():
            ok_runs = [r for r in rec["runs"] if r.get("status") == "ok"]
            if rec["state"] == "ok" and ok_runs:
                comp = [r["compute_s"] for r in ok_runs]
                summ = {"compute_s": _summary(comp), "setup_s": _summary([r["setup_s"] for r in ok_runs]),
                        "wall_s": _summary([r["wall_s"] for r in ok_runs])}
                peaks = [r["cgroup_stats"]["peak_bytes"] - r["cgroup"]["baseline"] for r in ok_runs
                         if (r.get("cgroup_stats") or {}).get("peak_bytes") and r.get("cgroup")]
                if peaks:
                    summ["peak_bytes"] = _summary(peaks)
                if base_med:
                    summ["ratio"] = {"median": statistics.median(comp) / base_med, "min": min(comp) / base_med,
                                     "max": max(comp) / base_med}
                rec["summary"] = summ
            elif rec["state"] == "timeout" and rec.get("lower_bound_s") and base_med:
                rec["summary"] = {"ratio_lower_bound": rec["lower_bound_s"] / base_med}

    def _targets(self, cells):
        out = []
        for tid, text, wname, fp, kind, baseline, (op, bound) in TARGETS:
            cell = next((c for c in cells if c["workload"] == wname and c["footprint"] == fp), None)
            for s in self.all:
                if s.kind != "tieredmem":
                    continue
                row = {"target": tid, "text": text, "system": s.id, "bound": f"{op} {bound}"}
                out.append(row)
                if cell is None:
                    row.update(met=None, note=f"not measured: {wname} at {fp:g}x was not in this run")
                    continue
                rec, base = cell["systems"].get(s.id), cell["systems"].get(baseline)
                tm_t = (rec.get("summary") or {}).get("compute_s", {}).get("median") if rec else None
                if tm_t is None:
                    row.update(met=None, note=f"{s.id}: {rec['status'] if rec else 'absent'}")
                    continue
                base_t = (base.get("summary") or {}).get("compute_s", {}).get("median") if base else None
                lower = False
                if base_t is None and base and base["state"] == "timeout" and base.get("lower_bound_s"):
                    base_t, lower = base["lower_bound_s"], True
                if base_t is None:
                    row.update(met=None, note=f"{baseline}: {base['status'] if base else 'absent'}")
                    continue
                value = tm_t / base_t if kind == "slowdown" else base_t / tm_t
                row["value"] = value
                if lower:
                    row["lower_bound"] = True
                    row["note"] = f"{baseline} timed out: its time is a lower bound, so the speedup is at least this"
                met = value <= bound if op == "<=" else value >= bound
                row["met"] = met if (met or not lower) else None
        return out


def _stale_rundirs(directory):
    """Remove run-PID-* directories of benchmark processes that are gone."""
    removed = []
    for name in os.listdir(directory):
        parts = name.split("-")
        if len(parts) >= 3 and parts[0] == "run" and parts[1].isdigit():
            pid = int(parts[1])
            if pid != os.getpid() and not os.path.exists(f"/proc/{pid}"):
                shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
                removed.append(name)
    return removed


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _trap_signals():
    """SIGTERM and SIGHUP unwind like Ctrl-C, so that swap and cgroups are removed."""
    old = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            old[sig] = signal.signal(sig, _raise_interrupt)
        except (ValueError, OSError):  # not the main thread
            pass
    return old


def _restore_signals(old):
    for sig, handler in old.items():
        signal.signal(sig, handler)


def load(path):
    with open(path) as f:
        return json.load(f)
