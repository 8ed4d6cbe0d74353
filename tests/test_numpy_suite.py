"""NumPy's own test suite under the drop-in allocator, as docs/compatibility.md
records: `python -m tieredmem run --threshold 4KiB --dram 64MiB -m pytest --pyargs
...` (with the malloc interposer, run's default: numpy's C-level scratch and
large Python objects are pool memory too). A quick subset runs in make test; the full run is marked slow and counts
as a failure only what does not also fail without tieredmem."""
import re
import subprocess
import sys

import pytest

QUICK = ["numpy._core.tests.test_multiarray", "-k",
         "TestResize or TestCreation or TestMethods or TestNewaxis or TestAlignment"]
FULL = ["numpy._core.tests.test_multiarray", "numpy._core.tests.test_numeric",
        "numpy._core.tests.test_umath", "numpy._core.tests.test_ufunc", "numpy.lib.tests"]
PYTEST = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf", "--pyargs"]


def run_suite(args, cwd, tieredmem, timeout):
    """(exit code, failed test ids, output) of numpy's tests, with or without
    the pool installed."""
    prefix = ["-m", "tieredmem", "run", "--threshold", "4KiB", "--dram", "64MiB", "--nvme", "8GiB",
              "--nvme-path", str(cwd), "--quiet"] if tieredmem else []
    res = subprocess.run([sys.executable, *prefix, *PYTEST, *args], cwd=cwd, capture_output=True,
                         text=True, timeout=timeout)
    failed = set(re.findall(r"^FAILED (\S+)", res.stdout, re.M))
    return res.returncode, failed, res.stdout[-3000:] + res.stderr[-3000:]


@pytest.mark.timeout(600)
def test_quick_subset_of_numpy_tests_passes_under_run(tmp_path):
    code, failed, out = run_suite(QUICK, tmp_path, tieredmem=True, timeout=580)
    assert code == 0 and not failed, out


@pytest.mark.slow
@pytest.mark.timeout(7200)
def test_numpy_suite_fails_nothing_new_under_run(tmp_path):
    base_code, base_failed, _ = run_suite(FULL, tmp_path, tieredmem=False, timeout=3500)
    code, failed, out = run_suite(FULL, tmp_path, tieredmem=True, timeout=3500)
    assert code in (0, 1), out  # 1: some tests failed; anything else: the run broke
    assert failed <= base_failed, f"fail only under tieredmem: {sorted(failed - base_failed)}\n{out}"
