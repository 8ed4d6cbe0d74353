"""Allocator benchmark: the drop-in numpy handler against numpy's default.

Scenarios, each measured side by side in one run with interleaved repetitions:

* small_empty: np.empty of 16 float64 (below the threshold, so the C library
  serves it) in a loop, numpy's default handler vs tm.install(pool).
* large_first_write: a fresh 256 MiB array and its first full write, which fits
  the DRAM budget, numpy's default handler vs tm.install(pool), each system in
  a fresh process per repetition.

Run from the repo root:  python -m benchmarks.bench_allocator [--quick] [--out DIR]
"""
import gc
import tempfile
import time

import numpy as np

from benchmarks import common as c

SMALL_CALLS = 200_000
LARGE_BYTES = 256 * c.MiB
SMALL_TARGET = ("<=", 1.2)
LARGE_TARGET = ("<=", 1.3)


def small_empty(calls):
    empty = np.empty
    start = time.perf_counter()
    for _ in range(calls):
        empty(16)
    return {"ns_per_call": (time.perf_counter() - start) / calls * 1e9}


def large_first_write(nbytes):
    start = time.perf_counter()
    a = np.empty(nbytes // 8)
    a[:] = 1.0
    seconds = time.perf_counter() - start
    del a
    gc.collect()
    return {"seconds": seconds}


def large_first_write_child(system, nbytes, nvme_dir):
    """In a fresh process, numpy's allocator or a pool installed: one untimed
    warm-up, then the measured allocation and first write."""
    if system == "tieredmem":
        import tieredmem as tm
        tm.install(tm.Pool(dram=4 * nbytes, nvme="1GiB", nvme_path=nvme_dir))
    large_first_write(nbytes)
    return large_first_write(nbytes)


def systems(tm, pool, measure):
    """numpy's default handler and the installed pool, running `measure`."""
    def default():
        tm.uninstall()
        return measure()

    def installed():
        tm.install(pool)
        try:
            return measure()
        finally:
            tm.uninstall()

    return {"numpy": default, "tieredmem": installed}


def main(argv=None):
    parser = c.bench_parser(__doc__, "allocator")
    args = parser.parse_args(argv)
    reps = args.reps or (3 if args.quick else 7)
    tm, reason = c.import_tieredmem()
    if tm is None:
        raise SystemExit(f"tieredmem not run: {reason}")
    args.nvme_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.nvme_dir) as nvme, \
            tm.Pool(dram=4 * LARGE_BYTES, nvme="1GiB", nvme_path=nvme) as pool:
        small = c.interleave(reps, systems(tm, pool, lambda: small_empty(SMALL_CALLS)))
        child = "benchmarks.bench_allocator", "large_first_write_child"
        large = c.interleave(reps, {system: (lambda s=system: c.in_subprocess(*child, s, LARGE_BYTES, nvme))
                                    for system in ("numpy", "tieredmem")})
    report = {
        "machine": c.machine_info(),
        "config": {"quick": args.quick, "reps": reps},
        "scenarios": {
            "small_empty": {"params": {"calls": SMALL_CALLS}, "records": small,
                            "rows": c.comparison_rows(small, "numpy", "tieredmem",
                                                      [("ns_per_call", "np.empty(16) (ns)", SMALL_TARGET)])},
            "large_first_write": {"params": {"array_bytes": LARGE_BYTES, "dram_bytes": 4 * LARGE_BYTES},
                                  "records": large,
                                  "rows": c.comparison_rows(large, "numpy", "tieredmem",
                                                            [("seconds", "empty + first write (s)", LARGE_TARGET)])},
        },
    }
    c.publish(report, args.out, "allocator", "tieredmem allocator benchmark")


if __name__ == "__main__":
    main()
