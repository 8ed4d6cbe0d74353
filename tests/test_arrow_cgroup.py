"""The Arrow pool alone (no malloc interposer) carries a pandas job on
Arrow-backed strings with a Parquet round trip through a memory cgroup where
plain python is OOM-killed: `tieredmem run` puts its Arrow buffers, as well as
its numpy ones, in the pool. Measured with the script at 12 M rows (it has
8 M here): it peaked at 1.8 GB RSS plainly and 0.8 GB under run with 256 MiB of
DRAM, completed under run in 768 MiB, and run with only numpy's allocations
in the pool was OOM-killed in 1 GiB. At 8 M rows it peaks at 1.3 GB plainly.
The allowance for what stays outside the pool (interpreter and libraries,
Python strings made on the way, Arrow's default pool where Parquet's reader
and writer use it directly, the page cache) is the 512 MiB between the DRAM
budget and the 768 MiB limit."""
import pathlib

import pytest

from memcgroup import CgroupUnavailable, run_limited

pytest.importorskip("pyarrow")
pytest.importorskip("pandas")

SCRIPT = pathlib.Path(__file__).parent / "scripts" / "arrow_strings_parquet.py"
LIMIT = 768 << 20
pytestmark = pytest.mark.timeout(180)


def limited(code):
    try:
        return run_limited(code, limit_bytes=LIMIT, timeout=120)
    except CgroupUnavailable as exc:
        pytest.skip(f"no memory cgroup can be made here: {exc}")


def test_plain_python_is_oom_killed_in_768mib(tmp_path):
    res = limited(f"import sys, runpy; sys.argv = ['x', {str(tmp_path)!r}]; "
                  f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')")
    assert res.oom_killed and res.killed_by_sigkill, (res.returncode, res.stderr[-2000:])


def test_under_run_completes_in_768mib_reading_back_exactly_what_it_wrote(tmp_path):
    (tmp_path / "nvme").mkdir()
    argv = ["tieredmem", "run", "--quiet", "--dram", "256MiB", "--nvme", "8GiB", "--nvme-path", str(tmp_path / "nvme"),
            str(SCRIPT), str(tmp_path)]
    res = limited(f"import runpy, sys; sys.argv = {argv!r}; "
                  "runpy.run_module('tieredmem', run_name='__main__', alter_sys=True)")
    assert res.returncode == 0 and not res.oom_killed, (res.returncode, res.stderr[-2000:])
    assert res.stdout.strip() == "8000000"  # every row checked by the script
