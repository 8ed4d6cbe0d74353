"""The PMEM tier's filesystem fills (docs/reliability.md): a demotion that finds
no space gets ENOSPC, goes to NVMe, else stays in DRAM; the process is never
killed by SIGBUS and no data is lost. Each pool runs in a child process, since
the failure this guards against kills the process."""
import errno
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from patterns import MiB

pytestmark = pytest.mark.timeout(120, method="thread")

# Writes `before` arrays of 4 MiB (seeds 0..), optionally waits for the parent
# (which fills the filesystem meanwhile), writes `after` more, reads them all
# back and prints the pool's stats as the last line.
CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tieredmem as tm
    sys.path.insert(0, {tests!r})
    from patterns import MiB, fill, first_mismatch
    pool = tm.Pool(**{pool!r})
    arrays = []
    def write(n):
        for _ in range(n):
            a = pool.empty(4 * MiB // 8, dtype=np.uint64)
            fill(a, len(arrays))
            arrays.append(a)
    write({before})
    if {wait}:
        print("created", flush=True)
        assert sys.stdin.readline() == "filled\\n"
    write({after})
    for seed, a in enumerate(arrays):
        bad = first_mismatch(a, seed)
        assert bad is None, f"array {{seed}}: {{bad}}"
    print(json.dumps(pool.stats()), flush=True)
""")


def child_code(pool, before, after=0, wait=False):
    return CHILD.format(tests=str(pathlib.Path(__file__).parent), pool=pool,
                        before=before, after=after, wait=wait)


def child_stats(res):
    """The child's stats, after checking that it exited normally."""
    assert res.returncode == 0, f"child exited with {res.returncode}: {res.stderr[-2000:]}"
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.fixture
def tmpfs(tmp_path):
    """Factory: tmpfs(size) -> a tmpfs of that size (mode 0700) mounted for the
    test (root only), as small_tmpfs in tests/test_reliability.py."""
    mounted = []

    def mount(size):
        mnt = tmp_path / f"tmpfs{len(mounted)}"
        mnt.mkdir(mode=0o700)
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mnt)],
                             capture_output=True, text=True)
        if res.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
        mounted.append(mnt)
        return mnt

    yield mount
    for mnt in mounted:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill_filesystem(path):
    """Write a file at path until its filesystem is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, bytes(MiB))
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)


def test_full_pmem_filesystem_sends_demotions_to_nvme_without_crashing(tmpfs, tmp_path):
    pool = dict(dram="16MiB", pmem="64MiB", nvme="256MiB", pmem_path=str(tmpfs("32m")), nvme_path=str(tmp_path))
    # 40 x 4 MiB = 160 MiB: far more than 16 MiB of DRAM and 32 MiB of PMEM space
    res = subprocess.run([sys.executable, "-c", child_code(pool, before=40)],
                         capture_output=True, text=True, timeout=90)
    st = child_stats(res)
    assert st["io_errors"] >= 1
    assert "pmem write" in st["last_error"] and os.strerror(errno.ENOSPC) in st["last_error"]
    assert st["pmem"]["used"] <= 32 * MiB and st["nvme"]["used"] > 0
    assert st["budget_overruns"] == 0
    assert st["dram"]["peak"] <= st["dram"]["capacity"]


def test_block_that_no_tier_can_take_stays_in_dram_when_pmem_filesystem_is_full(tmpfs):
    pool = dict(dram="16MiB", pmem="64MiB", nvme=0, pmem_path=str(tmpfs("32m")))
    # 14 x 4 MiB = 56 MiB: within the pool's capacity (16 + 64 MiB less a batch)
    # but 8 MiB more than DRAM and the PMEM filesystem hold: those 8 MiB have
    # nowhere to go and must stay in DRAM, over the budget.
    res = subprocess.run([sys.executable, "-c", child_code(pool, before=14)],
                         capture_output=True, text=True, timeout=90)
    st = child_stats(res)
    assert st["io_errors"] >= 1
    assert os.strerror(errno.ENOSPC) in st["last_error"]
    assert st["budget_overruns"] >= 1
    # Slots of a background writeback still in flight count as used before
    # their write meets the full filesystem: at most a batch (4 MiB) more.
    assert st["pmem"]["used"] <= (32 + 4) * MiB
    # over the budget by what the filesystem could not hold, within two batches
    assert st["dram"]["capacity"] < st["dram"]["peak"] <= (56 - 32 + 8) * MiB


def test_pmem_filesystem_filled_by_another_process_after_creation_loses_no_data(tmpfs, tmp_path):
    mnt = tmpfs("64m")
    pool = dict(dram="16MiB", pmem="48MiB", nvme="256MiB", pmem_path=str(mnt), nvme_path=str(tmp_path))
    # 6 x 4 MiB before: 8 MiB of it in PMEM; then the filesystem is filled
    # from here, and 16 x 4 MiB more are written.
    proc = subprocess.Popen([sys.executable, "-c", child_code(pool, before=6, after=16, wait=True)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "created\n", proc.communicate(timeout=30)[1][-2000:]
        fill_filesystem(mnt / "filler")
        assert os.statvfs(mnt).f_bavail == 0
        out, err = proc.communicate("filled\n", timeout=90)
    finally:
        proc.kill()
    st = child_stats(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    assert st["io_errors"] >= 1
    assert os.strerror(errno.ENOSPC) in st["last_error"]
    assert st["nvme"]["used"] > 0
    assert st["budget_overruns"] == 0
    assert st["dram"]["peak"] <= st["dram"]["capacity"]
