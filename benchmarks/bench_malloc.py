"""Malloc interposer benchmark: numpy's test suite under `tieredmem run` with the
interposer (the default) against `run --no-malloc`.

Both run numpy's tests as tests/test_numpy_suite.py does (`run --threshold 4KiB
--dram 64MiB --nvme 8GiB -m pytest --pyargs ...`; --threshold changes it), each repetition a fresh
process, the two interleaved (the order alternates). Target: the interposer
adds at most 2% (ratio of medians <= 1.02). The ratio is reported as
measured, met or not.

Run from the repo root:  python -m benchmarks.bench_malloc [--quick] [--reps N] [--threshold SIZE] [--out DIR]
"""
import re
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
SYSTEMS = {"run --no-malloc": ["--no-malloc"], "run": []}


def suite_once(extra, suite, threshold, nvme_dir, cwd):
    """One run of the suite under `tieredmem run` (+ extra options): wall seconds
    and pytest's counts."""
    cmd = [sys.executable, *RUN, "--threshold", threshold, "--nvme-path", nvme_dir, *extra, *PYTEST, *suite]
    start = time.perf_counter()
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=3600)
    seconds = time.perf_counter() - start
    tail = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""
    if res.returncode not in (0, 1):  # 1: some tests failed, as they may without tieredmem too
        raise c.NotRun(f"exit {res.returncode}: {(res.stdout + res.stderr)[-300:]}")
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|xfailed|errors?)", tail)}
    return {"seconds": seconds, **counts}


def main(argv=None):
    parser = c.bench_parser(__doc__, "malloc", reps_help="repetitions per system (default 5, quick 3)",
                            quick_help="a subset of test_multiarray, 3 repetitions")
    parser.add_argument("--threshold", default=THRESHOLD, help=f"run's --threshold (default {THRESHOLD})")
    args = parser.parse_args(argv)
    reps = args.reps or (3 if args.quick else 5)
    suite = QUICK_SUITE if args.quick else SUITE
    args.nvme_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.nvme_dir) as nvme, tempfile.TemporaryDirectory() as cwd:
        records = c.interleave(reps, {name: (lambda extra=extra: suite_once(extra, suite, args.threshold, nvme, cwd))
                                      for name, extra in SYSTEMS.items()})
    report = {
        "machine": c.machine_info(),
        "config": {"quick": args.quick, "reps": reps, "suite": suite, "run": RUN, "threshold": args.threshold},
        "scenarios": {
            "numpy_suite": {"params": {}, "records": records,
                            "rows": c.comparison_rows(records, "run --no-malloc", "run",
                                                      [("seconds", "numpy tests, wall (s)", TARGET)])},
        },
    }
    c.publish(report, args.out, "malloc", "tieredmem malloc interposer benchmark")


if __name__ == "__main__":
    main()
