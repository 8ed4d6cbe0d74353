"""Loops larger than DRAM (issue 12, item 1): an array of `ratio` x DRAM is
filled, then summed `passes` times. For each pass: the bytes read from the
lower tiers and the time, against the optimum footprint - DRAM (Belady's: a
fixed part stays resident) and the stream rule's footprint - DRAM + G
(docs/policies.md, "Streams: use-once and loops"). numpy.memmap over a file
of the same size, in a memory cgroup limited to the same DRAM (its bytes
read: the process's read_bytes in /proc/self/io), when a cgroup can be made.

    python -m benchmarks.bench_loops [--dram MiB] [--ratio R] [--passes N] [--no-memmap]
"""
import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import common as c

MiB = 1 << 20


def engine_loop_child(dram_mib, ratio, passes, nvme_dir):
    """In a fresh process: the loop over a tieredmem pool."""
    import tieredmem as tm
    pool = tm.Pool(dram=f"{dram_mib}MiB", nvme=f"{int(dram_mib * ratio * 3)}MiB", nvme_path=nvme_dir)
    try:
        a = pool.empty(int(dram_mib * ratio) * MiB // 8, dtype=np.uint64)
        a[:] = 1
        rows = []
        for _ in range(passes):
            s0 = pool.stats()
            t0 = time.perf_counter()
            total = int(a.sum())
            dt = time.perf_counter() - t0
            s1 = pool.stats()
            if total != a.size:
                raise c.NotRun(f"wrong sum {total} != {a.size}")
            rows.append({"seconds": dt, "bytes_read": s1["bytes_read"] - s0["bytes_read"],
                         **{k: s1[k] - s0[k] for k in ("stream_victims", "demotions", "background_demotions",
                                                       "fault_demotions")},
                         "headroom": s1["headroom"]})
        del a
        return {"passes": rows}
    finally:
        pool.close()


def _read_bytes():
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    return 0


def memmap_loop_child(cgroup_path, cgroup_version, path, n, dram, passes):
    """In a fresh process inside its own memory cgroup limited to dram more than
    the interpreter: numpy.memmap sums of a cold file."""
    from tieredmem.bench import cgroup
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    cgroup.limit_self(cgroup_path, cgroup_version, dram, swap=False)
    a = np.memmap(path, dtype=np.uint64, mode="r", shape=(n,))
    rows = []
    for _ in range(passes):
        r0, t0 = _read_bytes(), time.perf_counter()
        total = int(a.sum())
        rows.append({"seconds": time.perf_counter() - t0, "bytes_read": _read_bytes() - r0})
        if total != n:
            raise c.NotRun(f"wrong sum {total} != {n}")
    return {"passes": rows}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dram", type=int, default=128, help="DRAM budget, MiB (default 128)")
    ap.add_argument("--ratio", type=float, default=1.5, help="footprint / DRAM (default 1.5)")
    ap.add_argument("--passes", type=int, default=6)
    ap.add_argument("--no-memmap", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON here too")
    args = ap.parse_args(argv)
    footprint = int(args.dram * args.ratio)
    guard = max(min(4, args.dram / 4), args.dram / 16)
    report = {"dram_mib": args.dram, "footprint_mib": footprint, "optimum_mib": footprint - args.dram,
              "rule_mib": footprint - args.dram + guard, "machine": c.machine_info(), "systems": {}}
    with tempfile.TemporaryDirectory(prefix="bench_loops_") as work:
        try:
            report["systems"]["tieredmem"] = c.in_subprocess("benchmarks.bench_loops", "engine_loop_child",
                                                             args.dram, args.ratio, args.passes, work)
        except c.NotRun as exc:
            report["systems"]["tieredmem"] = c.not_run(str(exc))
        if not args.no_memmap:
            n = footprint * MiB // 8
            path = Path(work) / "loop.bin"
            with open(path, "wb") as f:
                chunk = np.ones(MiB // 8, dtype=np.uint64).tobytes()
                for _ in range(footprint):
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            try:
                report["systems"]["numpy.memmap"] = c.in_memory_cgroup(
                    "benchmarks.bench_loops", "memmap_loop_child", str(path), n, args.dram * MiB, args.passes,
                    tag="loops")
            except c.NotRun as exc:
                report["systems"]["numpy.memmap"] = c.not_run(str(exc))
    print(f"DRAM {args.dram} MiB, footprint {footprint} MiB: optimum {footprint - args.dram} MiB per pass, "
          f"rule {footprint - args.dram + guard:g} MiB")
    for name, res in report["systems"].items():
        if "passes" not in res:
            print(f"{name}: not run: {res}")
            continue
        cells = ", ".join(f"{r['bytes_read'] / MiB:.0f} MiB {r['seconds'] * 1e3:.0f} ms" for r in res["passes"])
        print(f"{name}: {cells}")
    if args.out:
        c.write_json(args.out, report)
    return report


if __name__ == "__main__":
    main()
