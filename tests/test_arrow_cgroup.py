"""The Arrow pool alone (no malloc interposer) carries a pandas job on
Arrow-backed strings with a Parquet round trip through a memory cgroup where
plain python is OOM-killed: `tieredmem run` puts its Arrow buffers, as well as
its numpy ones, in the pool. Measured: the script peaks at 1.8 GB RSS plainly
and 0.8 GB under run with 256 MiB of DRAM; under run it also completes in
768 MiB, while run with only numpy's allocations in the pool is OOM-killed in
1 GiB. The allowance for what stays outside the pool (interpreter and
libraries, Python strings made on the way, Arrow's default pool where Parquet's
writer uses it directly, the page cache) is the 768 MiB between the DRAM
budget and the 1 GiB limit."""
import pathlib
import subprocess
import sys

import pytest

from memcgroup import CgroupUnavailable, run_limited

pytest.importorskip("pyarrow")
pytest.importorskip("pandas")

SCRIPT = pathlib.Path(__file__).parent / "scripts" / "arrow_strings_parquet.py"
LIMIT = 1 << 30
pytestmark = pytest.mark.timeout(180)


def limited(code):
    try:
        return run_limited(code, limit_bytes=LIMIT, timeout=120)
    except CgroupUnavailable as exc:
        pytest.skip(f"no memory cgroup can be made here: {exc}")


def test_plain_python_is_oom_killed_in_1gib(tmp_path):
    res = limited(f"import sys, runpy; sys.argv = ['x', {str(tmp_path)!r}]; "
                  f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')")
    assert res.oom_killed and res.killed_by_sigkill, (res.returncode, res.stderr[-2000:])


def test_under_run_completes_in_1gib_with_the_same_result(tmp_path):
    plain = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0, plain.stderr
    (tmp_path / "nvme").mkdir()
    argv = ["tieredmem", "run", "--quiet", "--dram", "256MiB", "--nvme", "8GiB", "--nvme-path", str(tmp_path / "nvme"),
            str(SCRIPT), str(tmp_path)]
    res = limited(f"import runpy, sys; sys.argv = {argv!r}; "
                  "runpy.run_module('tieredmem', run_name='__main__', alter_sys=True)")
    assert res.returncode == 0 and not res.oom_killed, (res.returncode, res.stderr[-2000:])
    assert res.stdout.strip() == plain.stdout.strip()
