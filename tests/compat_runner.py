"""pandas' and pyarrow's own test suites, run without tieredmem and under
`tieredmem run --threshold 4KiB --dram 64MiB`, as docs/compatibility.md records.

    python tests/compat_runner.py [--tieredmem-only] [--dram SIZE] SUITE... [--out results.jsonl]

runs each named suite (see SUITES) plainly, then under run, one process at a
time, and prints the counts, times and the failures that happen only under
tieredmem. tests/test_compatibility.py uses run_suite() for its checks."""
import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time

# pandas' own selection for an installed pandas (pandas.test()), and its option
# for a wheel, which ships no test data files: a test that needs one skips.
# pyarrow's defaults already leave out the groups that need services or large
# memory; its Parquet tests read PARQUET_TEST_DATA (apache/parquet-testing's
# data directory) when the environment names it.
PANDAS_OPTIONS = ["-m", "not slow and not network and not db and not single_cpu",
                  "--no-strict-data-files"]
# --timeout: a test that hangs (a fault nobody serves) fails instead of the run.
PYTEST = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", "--timeout", "900"]

# name: the test modules or packages it runs.
SUITES = {
    "pandas.groupby": ["pandas.tests.groupby"],
    "pandas.reshape": ["pandas.tests.reshape"],
    "pandas.frame.methods": ["pandas.tests.frame.methods"],
    "pandas.io.parser": ["pandas.tests.io.parser"],
    "pandas.arrays": ["pandas.tests.arrays"],
    "pandas.window": ["pandas.tests.window"],
    "pandas.indexing": ["pandas.tests.indexing"],
    "pandas.io.test_parquet": ["pandas.tests.io.test_parquet"],
    "pyarrow": ["pyarrow.tests.test_memory", "pyarrow.tests.test_array",
                "pyarrow.tests.test_table", "pyarrow.tests.test_compute",
                "pyarrow.tests.parquet"],
    # The quick subsets of tests/test_compatibility.py: a few hundred tests that
    # build, join, group and write frames and Arrow buffers.
    "quick.pandas": ["pandas.tests.reshape.merge.test_join",
                     "pandas.tests.groupby.test_counting",
                     "pandas.tests.groupby.test_libgroupby",
                     "pandas.tests.io.test_parquet"],
    "quick.pyarrow": ["pyarrow.tests.test_memory", "pyarrow.tests.test_table",
                      "pyarrow.tests.parquet.test_basic"],
}

# Tests are named by path, not with --pyargs: pytest reads the options a
# conftest adds (pandas' --no-strict-data-files) only from the conftests of the
# paths it is given. Test ids are relative to site-packages
# ("pandas/tests/...::test"), the same in every run and from every cwd.
SITE = os.path.dirname(os.path.dirname(importlib.util.find_spec("pytest").origin))

COUNT = re.compile(r"(\d+) (passed|failed|skipped|xfailed|xpassed|errors?|deselected|warnings?)")


def path_of(target):
    """A module name or a test id (relative to SITE) as an absolute path."""
    if "/" in target or "::" in target:
        return os.path.join(SITE, target)
    path = os.path.join(SITE, *target.split("."))
    return path + ".py" if os.path.exists(path + ".py") else path


def run_suite(targets, cwd, tieredmem, timeout, stats=None, dram="64MiB"):
    """Run pytest on targets (module names or test ids) in cwd, with or without
    the pool installed. Returns {code, counts, failed (ids failed or in error),
    seconds, tail, cmd}."""
    prefix = []
    if tieredmem:
        # The NVMe tier in cwd: a scratch directory, removed with the run.
        prefix = ["-m", "tieredmem", "run", "--threshold", "4KiB", "--dram", dram,
                  "--nvme", "8GiB", "--nvme-path", str(cwd), "--quiet"]
        if stats:
            prefix += ["--stats", str(stats)]
    options = PANDAS_OPTIONS if targets[0].startswith("pandas") else []
    # An empty configuration: else pytest takes the first pyproject.toml above
    # the test files, which is tieredmem's when .venv is in the checkout.
    ini = os.path.join(cwd, "pytest.ini")
    with open(ini, "w") as f:
        f.write("[pytest]\n")
    cmd = [sys.executable, *prefix, *PYTEST, "-c", ini, "--rootdir", SITE, *options,
           *map(path_of, targets)]
    t0 = time.monotonic()
    res = subprocess.run(cmd, cwd=cwd, text=True, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, timeout=timeout, stdin=subprocess.DEVNULL)
    seconds = time.monotonic() - t0
    lines = res.stdout.splitlines()
    summary = next((l for l in reversed(lines) if re.search(r" in [\d.]+s", l)), "")
    counts = {}
    for n, kind in COUNT.findall(summary):
        counts[kind.rstrip("s") if kind.startswith(("error", "warning")) else kind] = int(n)
    # "FAILED id - message": a parametrized id may hold spaces, the message
    # follows " - ". pytest prints the id's path relative to cwd.
    failed = set()
    for shown in re.findall(r"^(?:FAILED|ERROR) (.+?)(?: - .*)?$", res.stdout, re.M):
        path, sep, rest = shown.partition("::")
        failed.add(os.path.relpath(os.path.join(cwd, path), SITE) + sep + rest)
    return {"code": res.returncode, "counts": counts, "failed": failed, "seconds": seconds,
            "tail": "\n".join(lines[-60:]), "cmd": cmd}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suites", nargs="+", choices=sorted(SUITES))
    ap.add_argument("--out", help="append one JSON line per run to this file")
    ap.add_argument("--tieredmem-only", action="store_true")
    ap.add_argument("--dram", default="64MiB", help="run's DRAM budget (default 64MiB)")
    ap.add_argument("--timeout", type=float, default=3 * 3600)
    a = ap.parse_args()
    for name in a.suites:
        results = {}
        for tiered in ([True] if a.tieredmem_only else [False, True]):
            with tempfile.TemporaryDirectory(prefix="compat-") as d:
                stats = os.path.join(d, "stats.json")
                r = run_suite(SUITES[name], d, tiered, a.timeout, stats=stats, dram=a.dram)
                if tiered and os.path.exists(stats):
                    with open(stats) as f:
                        r["stats"] = json.load(f)
            key = "tieredmem" if tiered else "plain"
            results[key] = r
            print(f"{name} {key}: code {r['code']} {r['counts']} {r['seconds']:.0f} s", flush=True)
            for t in sorted(r["failed"]):
                print(f"  failed: {t}", flush=True)
            if a.out:
                with open(a.out, "a") as f:
                    rec = {"suite": name, "run": key, "dram": a.dram, **r,
                           "failed": sorted(r["failed"])}
                    f.write(json.dumps(rec) + "\n")
        if "plain" in results:
            new = sorted(results["tieredmem"]["failed"] - results["plain"]["failed"])
            print(f"{name}: fail only under tieredmem: {new or 'none'}", flush=True)


if __name__ == "__main__":
    main()
