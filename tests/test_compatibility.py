"""pandas' and pyarrow's own test suites under `python -m tieredmem run
--threshold 4KiB --dram 64MiB -m pytest ...` (numpy's handler, the Arrow pool
and the malloc interposer all installed), as docs/compatibility.md records. A
test counts as broken by tieredmem only when it fails under run and not
without it: the quick subsets run under run, and whatever fails there is run
again without tieredmem. The full runs, both ways, are marked slow."""
import json
import os
import sys

import pytest

pytest.importorskip("pandas", reason="pandas' test suite needs pandas")
pytest.importorskip("pyarrow", reason="pyarrow's test suite needs pyarrow")

sys.path.insert(0, os.path.dirname(__file__))
from compat_runner import SUITES, run_suite  # noqa: E402


# Fails under run by design, not by a fault: the test asserts pyarrow's default
# pool is one of Arrow's own allocators, and run makes tieredmem's pool the
# default (its backend_name is "tieredmem", docs/arrow.md).
BY_DESIGN = {"pyarrow/tests/test_memory.py::test_default_backend_name"}


def failures_only_under_run(suite, cwd, timeout, dram):
    """(result under run, its statistics, ids that fail under run but not
    without tieredmem, BY_DESIGN aside). Only the ids that failed are run
    plainly again, which keeps make test short."""
    stats_path = cwd / "stats.json"
    res = run_suite(SUITES[suite], cwd, tieredmem=True, timeout=timeout, stats=stats_path,
                    dram=dram)
    assert res["code"] in (0, 1), res["tail"]  # 1: tests failed; else the run broke
    stats = json.loads(stats_path.read_text())
    new = res["failed"] - BY_DESIGN
    if new:
        plain = run_suite(sorted(new), cwd, tieredmem=False, timeout=timeout)
        new = new - plain["failed"]
    return res, stats, new


# The issue's budget, 64 MiB, holds all the pool memory of pandas' tests at
# once; at 8 MiB the same subset also has its blocks demoted and promoted.
PANDAS_64, PYARROW_64, PANDAS_8 = ("quick.pandas", "64MiB"), ("quick.pyarrow", "64MiB"), \
    ("quick.pandas", "8MiB")
QUICK = [PANDAS_64, PYARROW_64, PANDAS_8]
IDS = ["-".join(q) for q in QUICK]


@pytest.fixture(scope="module")
def quick(request, tmp_path_factory):
    """A quick subset, run once under run at a DRAM budget; the tests read it."""
    suite, dram = request.param
    return failures_only_under_run(suite, tmp_path_factory.mktemp("compat"), 500, dram)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("quick", QUICK, ids=IDS, indirect=True)
def test_quick_subset_fails_nothing_new_under_run(quick):
    res, _, new = quick
    assert not new, f"fail only under tieredmem: {sorted(new)}\n{res['tail']}"


@pytest.mark.timeout(600)
@pytest.mark.parametrize("quick", QUICK, ids=IDS, indirect=True)
def test_quick_subset_runs_hundreds_of_tests(quick):
    # A subset that collected nothing (a renamed module) would fail nothing new.
    res, _, _ = quick
    assert res["counts"].get("passed", 0) >= 200, res["tail"]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("quick", QUICK, ids=IDS, indirect=True)
def test_quick_subset_runs_with_its_buffers_in_the_pool(quick):
    # Nor would one that ran with the pool never installed.
    _, stats, _ = quick
    assert stats["malloc"]["allocations"] > 0 and stats["faults"] > 0, stats


@pytest.mark.timeout(600)
@pytest.mark.parametrize("quick", [PANDAS_8], ids=["-".join(PANDAS_8)], indirect=True)
def test_quick_subset_at_8mib_moves_blocks_between_tiers(quick):
    _, stats, _ = quick
    assert stats["demotions"] > 0 and stats["promotions"] > 0, stats


@pytest.mark.timeout(600)
@pytest.mark.parametrize("quick", QUICK, ids=IDS, indirect=True)
def test_quick_subset_keeps_pool_memory_within_the_dram_budget(quick):
    _, stats, _ = quick
    assert stats["budget_overruns"] == 0, stats
    assert stats["dram"]["peak"] <= stats["dram"]["capacity"], stats


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("suite", [s for s in SUITES if not s.startswith("quick.")])
def test_suite_fails_nothing_new_under_run(suite, tmp_path):
    base = run_suite(SUITES[suite], tmp_path, tieredmem=False, timeout=1500)
    res = run_suite(SUITES[suite], tmp_path, tieredmem=True, timeout=1500)
    assert res["code"] in (0, 1), res["tail"]
    new = res["failed"] - base["failed"] - BY_DESIGN
    assert not new, f"fail only under tieredmem: {sorted(new)}\n{res['tail']}"
