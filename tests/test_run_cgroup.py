"""`python -m tieredmem run` puts an unchanged numpy script on a pool: a job
over 3 GiB of arrays completes inside a 1 GiB memory cgroup, bit-identical
to its in-memory result, where plain python is OOM-killed."""
import json
import pathlib
import subprocess
import sys

import pytest

from memcgroup import CgroupUnavailable, run_limited

SCRIPT = pathlib.Path(__file__).parent / "scripts" / "process_3gib.py"
LIMIT = 1 << 30


def limited(code, **kw):
    try:
        return run_limited(code, limit_bytes=LIMIT, timeout=600, **kw)
    except CgroupUnavailable as exc:
        pytest.skip(f"no memory cgroup can be made here: {exc}")


def run_code(argv):
    return f"import runpy, sys; sys.argv = {argv!r}; runpy.run_module('tieredmem', run_name='__main__', alter_sys=True)"


@pytest.fixture(scope="module")
def in_memory_digest():
    """The script's result with all of its arrays in ordinary memory."""
    res = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


@pytest.mark.timeout(660)
def test_plain_python_is_oom_killed_in_1gib():
    res = limited(f"import runpy; runpy.run_path({str(SCRIPT)!r}, run_name='__main__')")
    assert res.oom_killed and res.killed_by_sigkill, (res.returncode, res.stderr[-2000:])


@pytest.mark.timeout(660)
def test_script_under_run_completes_in_1gib_bit_identical(tmp_path, in_memory_digest):
    stats = tmp_path / "stats.json"
    argv = ["tieredmem", "run", "--dram", "384MiB", "--nvme", "8GiB", "--nvme-path", str(tmp_path),
            "--stats", str(stats), str(SCRIPT)]
    res = limited(run_code(argv))
    assert res.returncode == 0 and not res.oom_killed, (res.returncode, res.stderr[-2000:])
    assert res.stdout.strip() == in_memory_digest
    st = json.loads(stats.read_text())
    assert st["dram"]["peak"] <= 384 << 20
    assert st["nvme"]["peak"] > 0 and st["demotions"] > 0
