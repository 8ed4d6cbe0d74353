"""Fork benchmark: what a forked child's view of a pool costs (docs/fork.md).

Three scenarios, each system in a fresh process per repetition, interleaved:
- fork: os.fork() + the child's exit + waitpid, for a process holding an
  array of the same size plainly (all in DRAM) and in a pool 4x its DRAM;
- rewrite: one `a += 1` pass of the parent over its spilled pool array, with
  no child and with a child alive (its pages shared copy-on-write, its slots
  kept), and the lower-tier bytes that the kept slots add;
- child_read: a sequential sum of the spilled array by the parent and by a
  forked child (which reads one block at a time, synchronously).
No target: the figures are the costs docs/fork.md states.

Run from the repo root:  python -m benchmarks.bench_fork [--quick] [--reps N] [--out DIR]
"""
import os
import tempfile
import time

import numpy as np

from benchmarks import common as c

DRAM = 64 * c.MiB
FOOTPRINT = 4 * DRAM


def _spilled(nvme_dir, dram, footprint):
    import tieredmem as tm
    pool = tm.Pool(dram=dram, nvme=4 * footprint, nvme_path=nvme_dir)
    a = pool.empty(footprint // 8, dtype=np.uint64)
    a[:] = 1
    return pool, a


def _fork_seconds():
    t = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return time.perf_counter() - t


def fork_plain(nvme_dir, dram, footprint):
    a = np.ones(footprint // 8, dtype=np.uint64)
    return {"seconds": _fork_seconds(), "checksum": int(a[::4096].sum())}


def fork_pool(nvme_dir, dram, footprint):
    pool, a = _spilled(nvme_dir, dram, footprint)
    return {"seconds": _fork_seconds(), "checksum": int(a[::4096].sum())}


def rewrite(nvme_dir, dram, footprint, with_child):
    pool, a = _spilled(nvme_dir, dram, footprint)
    r, w = os.pipe()
    pid = os.fork() if with_child else None
    if pid == 0:
        os.close(w)
        os.read(r, 1)
        os._exit(0)
    used0 = pool.stats()["nvme"]["used"]
    t = time.perf_counter()
    a += np.uint64(1)
    seconds = time.perf_counter() - t
    s = pool.stats()
    if pid:
        os.close(w)
        os.waitpid(pid, 0)
    assert int(a[::4096].sum()) == 2 * len(a[::4096])
    return {"seconds": seconds, "nvme_grew_mib": (s["nvme"]["used"] - used0) / c.MiB,
            "kept_mib": s["fork_kept"] / c.MiB, "unshared_blocks": s["fork_unshared"]}


def read(nvme_dir, dram, footprint, in_child):
    pool, a = _spilled(nvme_dir, dram, footprint)
    pool.advise(a, "dontneed")  # both start from the lower tiers
    if not in_child:
        t = time.perf_counter()
        ok = int(a.sum()) == a.size
        seconds = time.perf_counter() - t
        return {"seconds": seconds, "gbps": a.nbytes / seconds / 1e9, "ok": ok}
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        t = time.perf_counter()
        ok = int(a.sum()) == a.size
        os.write(w, f"{time.perf_counter() - t} {int(ok)}".encode())
        os._exit(0)
    os.close(w)
    seconds, ok = os.read(r, 100).split()
    os.waitpid(pid, 0)
    return {"seconds": float(seconds), "gbps": a.nbytes / float(seconds) / 1e9, "ok": bool(int(ok))}


def main(argv=None):
    parser = c.bench_parser(__doc__, "fork")
    args = parser.parse_args(argv)
    reps = args.reps or (3 if args.quick else 7)
    dram, footprint = (DRAM // 2, FOOTPRINT // 2) if args.quick else (DRAM, FOOTPRINT)
    args.nvme_dir.mkdir(parents=True, exist_ok=True)
    mod = "benchmarks.bench_fork"
    with tempfile.TemporaryDirectory(dir=args.nvme_dir) as d:
        run = lambda func, *extra: (lambda: c.in_subprocess(mod, func, d, dram, footprint, *extra))  # noqa: E731
        scenarios = {
            "fork": (c.interleave(reps, {"numpy array": run("fork_plain"), "pool array": run("fork_pool")}),
                     "numpy array", "pool array", [("seconds", "fork + exit + wait (s)", None)]),
            "rewrite": (c.interleave(reps, {"no child": run("rewrite", False), "child alive": run("rewrite", True)}),
                        "no child", "child alive",
                        [("seconds", "a += 1 pass (s)", None), ("nvme_grew_mib", "NVMe used grew (MiB)", None),
                         ("kept_mib", "kept for the child (MiB)", None)]),
            "child_read": (c.interleave(reps, {"parent": run("read", False), "child": run("read", True)}),
                           "parent", "child", [("gbps", "sequential sum (GB/s)", None)]),
        }
    report = {
        "machine": c.machine_info(),
        "config": {"quick": args.quick, "reps": reps},
        "scenarios": {name: {"params": {"dram_bytes": dram, "footprint_bytes": footprint}, "records": records,
                             "rows": c.comparison_rows(records, base, cand, metrics)}
                      for name, (records, base, cand, metrics) in scenarios.items()},
    }
    c.publish(report, args.out, "fork", "tieredmem fork benchmark")


if __name__ == "__main__":
    main()
