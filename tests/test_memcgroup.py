"""Tests of the tests/memcgroup.py helper (hard memory limits via cgroups).

Each test skips (with the precise reason) when no memory cgroup can be made,
e.g. when not running as root.
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from memcgroup import CgroupUnavailable, find_parent_cgroup, run_limited  # noqa: E402

MiB = 1 << 20
LIMIT = 256 * MiB


def _run(code, limit=LIMIT, timeout=30.0):
    try:
        return run_limited(code, limit_bytes=limit, timeout=timeout)
    except CgroupUnavailable as exc:
        pytest.skip(f"no memory cgroup available: {exc}")


SMALL_JOB = (
    "import numpy as np\n"
    "a = np.ones(50 * 2**20 // 8)\n"   # 50 MiB, touched
    "print(int(a.sum()))\n"
)

BIG_JOB = (
    "import numpy as np\n"
    "a = np.ones(2**27)\n"             # 1 GiB of float64, touched
    "print('survived', a.nbytes)\n"
)


def test_small_numpy_job_completes_under_limit():
    res = _run(SMALL_JOB)
    assert res.returncode == 0, res.stderr
    assert not res.oom_killed
    assert not res.timed_out
    assert res.stdout.strip() == str(50 * 2**20 // 8)
    if res.peak_bytes is not None:
        assert 50 * MiB <= res.peak_bytes <= LIMIT


def test_plain_numpy_1gib_is_oom_killed_under_256mib():
    res = _run(BIG_JOB)
    assert "survived" not in res.stdout
    assert res.returncode == -9, (res.returncode, res.stderr)
    assert res.killed_by_sigkill
    assert res.oom_killed
    assert not res.timed_out
    if res.peak_bytes is not None:
        assert res.peak_bytes <= LIMIT


def test_cgroup_directory_is_removed_afterwards():
    res = _run("pass")
    assert res.returncode == 0, res.stderr
    assert res.cgroup_path
    assert not os.path.exists(res.cgroup_path)
    # also after an OOM kill
    res = _run(BIG_JOB)
    assert res.oom_killed
    assert not os.path.exists(res.cgroup_path)
    leftovers = [n for n in os.listdir(find_parent_cgroup().parent_dir)
                 if n.startswith(f"tieredmem-test-{os.getpid()}-")]
    assert leftovers == []


def test_timeout_reports_timed_out_and_cleans_up():
    res = _run("import time; time.sleep(60)", timeout=1.0)
    assert res.timed_out
    assert res.killed_by_sigkill
    assert not res.oom_killed
    assert not os.path.exists(res.cgroup_path)


def test_calling_process_stays_in_its_own_cgroup():
    with open("/proc/self/cgroup") as f:
        before = f.read()
    res = _run("pass")
    assert res.returncode == 0, res.stderr
    with open("/proc/self/cgroup") as f:
        assert f.read() == before
