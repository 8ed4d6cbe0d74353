"""Malloc interposer benchmark: numpy's test suite under `tieredmem run` with the
interposer (the default) against `run --no-malloc`, and with the interposer
but no freed blocks kept for reuse (TIEREDMEM_MALLOC_KEEP=0, as before the
cache; docs/malloc.md).

All run numpy's tests as tests/test_numpy_suite.py does (`run --threshold 4KiB
--dram 64MiB --nvme 8GiB -m pytest --pyargs ...`; --threshold changes it), each repetition a fresh
process, the three interleaved (the order alternates). Target: the interposer
adds at most 2% (ratio of medians <= 1.02). The ratio is reported as
measured, met or not.

Then "churn", the cost the suite's temporaries pay: a loop of malloc, memset
(the first touch) and free of one size (64 KiB, 1 MiB, 4 MiB; 128 MiB of
them each) through libc, under `run --threshold 64KiB` with the interposer
(freed blocks kept for reuse), with it but nothing kept
(TIEREDMEM_MALLOC_KEEP=0: every malloc a tm_alloc and its first touch a zero
fill per block, every free a tm_free), and `run --no-malloc` (glibc's): us per
loop and the pool's zero fills. No target; it shows the cause.

Run from the repo root:  python -m benchmarks.bench_malloc [--quick] [--reps N] [--threshold SIZE] [--out DIR]
"""
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time

from benchmarks import common as c

SUITE = ["numpy._core.tests.test_multiarray", "numpy._core.tests.test_numeric"]
QUICK_SUITE = ["numpy._core.tests.test_multiarray", "-k",
               "TestResize or TestCreation or TestMethods or TestNewaxis or TestAlignment"]
RUN = ["-m", "tieredmem", "run", "--dram", "64MiB", "--nvme", "8GiB", "--quiet"]
THRESHOLD = "4KiB"  # as tests/test_numpy_suite.py; the interposer's is at least a block (64 KiB)
PYTEST = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "--pyargs"]
TARGET = ("<=", 1.02)
SYSTEMS = {"run --no-malloc": (["--no-malloc"], {}), "run, nothing kept": ([], {"TIEREDMEM_MALLOC_KEEP": "0"}),
           "run": ([], {})}


def cpu_of_children():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def suite_once(extra, env, suite, threshold, nvme_dir, cwd):
    """One run of the suite under `tieredmem run` (+ extra options, env): wall
    seconds, CPU seconds (user + system, all its threads: less disturbed by
    other jobs on a shared machine than the wall time) and pytest's counts."""
    cmd = [sys.executable, *RUN, "--threshold", threshold, "--nvme-path", nvme_dir, *extra, *PYTEST, *suite]
    start, cpu = time.perf_counter(), cpu_of_children()
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=3600, env={**os.environ, **env})
    seconds, cpu = time.perf_counter() - start, cpu_of_children() - cpu
    tail = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""
    if res.returncode not in (0, 1):  # 1: some tests failed, as they may without tieredmem too
        raise c.NotRun(f"exit {res.returncode}: {(res.stdout + res.stderr)[-300:]}")
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|xfailed|errors?)", tail)}
    return {"seconds": seconds, "cpu_seconds": cpu, **counts}


CHURN_SIZES = [64 << 10, 1 << 20, 4 << 20]
CHURN_BYTES = 128 << 20
CHURN_SYSTEMS = {"run --no-malloc": (["--no-malloc"], {}), "run, nothing kept": ([], {"TIEREDMEM_MALLOC_KEEP": "0"}),
                 "run": ([], {})}
CHURN = """
import ctypes, json, sys, time
import tieredmem
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
pool = tieredmem.installed()
out = {}
for size in %r:
    n = max(100, %d // size)
    z0 = pool.stats()["zero_fills"] if pool else 0
    start = time.perf_counter()
    for _ in range(n):
        p = libc.malloc(size)
        libc.memset(p, 1, size)
        libc.free(p)
    out[f"us_{size >> 10}k"] = (time.perf_counter() - start) / n * 1e6
    out[f"zero_fills_{size >> 10}k"] = (pool.stats()["zero_fills"] if pool else 0) - z0
print(json.dumps(out))
""" % (CHURN_SIZES, CHURN_BYTES)


def churn_once(extra, env, nvme_dir, cwd):
    """One run of the churn loop under `tieredmem run` (+ extra options, env)."""
    path = os.path.join(cwd, "churn.py")
    with open(path, "w") as f:
        f.write(CHURN)
    cmd = [sys.executable, *RUN, "--threshold", "64KiB", "--nvme-path", nvme_dir, *extra, path]
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, env={**os.environ, **env})
    if res.returncode != 0:
        raise c.NotRun(f"exit {res.returncode}: {(res.stdout + res.stderr)[-300:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def churn_rows(records):
    metrics = []
    for size in CHURN_SIZES:
        metrics += [(f"us_{size >> 10}k", f"malloc+touch+free {size >> 10} KiB, us", None),
                    (f"zero_fills_{size >> 10}k", f"zero fills, {size >> 10} KiB loop", None)]
    rows = c.comparison_rows(records, "run --no-malloc", "run, nothing kept", metrics)
    return rows + c.comparison_rows(records, "run --no-malloc", "run", metrics)[len(metrics):]


def suite_rows(records):
    metrics = [("seconds", "numpy tests, wall (s)", TARGET), ("cpu_seconds", "numpy tests, CPU (s)", None)]
    rows = c.comparison_rows(records, "run --no-malloc", "run, nothing kept", metrics)
    return rows + c.comparison_rows(records, "run --no-malloc", "run", metrics)[len(metrics):]


def main(argv=None):
    parser = c.bench_parser(__doc__, "malloc", reps_help="repetitions per system (default 5, quick 3)",
                            quick_help="a subset of test_multiarray, 3 repetitions")
    parser.add_argument("--threshold", default=THRESHOLD, help=f"run's --threshold (default {THRESHOLD})")
    args = parser.parse_args(argv)
    reps = args.reps or (3 if args.quick else 5)
    suite = QUICK_SUITE if args.quick else SUITE
    args.nvme_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.nvme_dir) as nvme, tempfile.TemporaryDirectory() as cwd:
        records = c.interleave(reps, {name: (lambda extra=extra, env=env:
                                             suite_once(extra, env, suite, args.threshold, nvme, cwd))
                                      for name, (extra, env) in SYSTEMS.items()})
        churn = c.interleave(reps, {name: (lambda extra=extra, env=env: churn_once(extra, env, nvme, cwd))
                                    for name, (extra, env) in CHURN_SYSTEMS.items()})
    report = {
        "machine": c.machine_info(),
        "config": {"quick": args.quick, "reps": reps, "suite": suite, "run": RUN, "threshold": args.threshold},
        "scenarios": {
            "numpy_suite": {"params": {}, "records": records, "rows": suite_rows(records)},
            "churn": {"params": {"loop_bytes": CHURN_BYTES}, "records": churn, "rows": churn_rows(churn)},
        },
    }
    c.publish(report, args.out, "malloc", "tieredmem malloc interposer benchmark")


if __name__ == "__main__":
    main()
