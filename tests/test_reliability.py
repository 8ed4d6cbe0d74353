"""The failure model of docs/reliability.md: damaged lower-tier data is
detected, failed writes go elsewhere, a full disk is an allocation error, and
tier files are private."""
import errno
import gc
import os
import pathlib
import signal
import stat
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import tieredmem as tm
from patterns import MiB, fill, first_mismatch

pytestmark = pytest.mark.timeout(120, method="thread")


def nvme_file_fd(directory):
    """The descriptor of this process's (unlinked) slot file in `directory`."""
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith(str(directory)):
                return int(fd)
        except OSError:
            continue
    raise AssertionError(f"no open file in {directory}")


def spill(pool, budget, seed=1):
    """An array a quarter of the budget, pushed out to NVMe by fresh writes."""
    a = pool.empty(budget // 4 // 8, dtype=np.uint64)
    fill(a, seed)
    for _ in range(8):
        other = pool.empty(2 * budget // 8, dtype=np.uint64)
        other[:] = 1  # fresh blocks, written: nothing read back from a lower tier
        del other
        gc.collect()
        if pool.placement(a)["dram"] == 0:
            break
    assert pool.placement(a)["nvme"] == a.nbytes
    return a


def corrupt_first_slot(pool, a, directory):
    """Overwrite the start of the slot file's first slot behind the pool's back;
    return the element range of `a` whose block lives there."""
    fd = os.open(f"/proc/self/fd/{nvme_file_fd(directory)}", os.O_RDWR)
    try:
        os.pwrite(fd, os.urandom(4096), 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    meta = pool.metadata()
    block = int(np.flatnonzero(meta["slot"] == 1)[0])  # slot ids start at 1 (no PMEM)
    base = meta_base(pool)
    per_block = pool.block_size // a.itemsize
    first = (base + block * pool.block_size - a.ctypes.data) // a.itemsize
    assert 0 <= first < a.size, "the first slot does not hold a block of this array"
    return first, first + per_block


def meta_base(pool):
    """Address of the pool's arena (block 0)."""
    from tieredmem._engine import ffi, lib
    return int(ffi.cast("uintptr_t", lib.tm_arena_base(pool._p)))


# ---- checksums ---------------------------------------------------------

def test_damaged_nvme_block_is_refused_with_efault_not_returned(make_pool, nvme_dir, tmp_path):
    budget = 8 * MiB
    pool = make_pool(dram=budget, nvme="256MiB")
    a = spill(pool, budget)
    lo, hi = corrupt_first_slot(pool, a, nvme_dir)
    with open(tmp_path / "out", "wb") as f, pytest.raises(OSError) as exc:
        f.write(memoryview(a[lo:hi]).cast("B"))
    assert exc.value.errno == errno.EFAULT
    st = pool.stats()
    assert st["checksum_errors"] >= 1
    assert "checksum" in st["last_error"]
    del a


def test_undamaged_blocks_of_a_pool_with_a_damaged_one_read_exactly(make_pool, nvme_dir):
    budget = 8 * MiB
    pool = make_pool(dram=budget, nvme="256MiB")
    a = spill(pool, budget)
    lo, hi = corrupt_first_slot(pool, a, nvme_dir)
    assert first_mismatch(a, 1, hi=lo) is None
    assert first_mismatch(a, 1, lo=hi) is None
    del a


def test_user_read_of_a_damaged_block_gets_sigbus(tmp_path):
    code = textwrap.dedent(f"""
        import gc, os, sys
        import numpy as np
        import tieredmem as tm
        sys.path.insert(0, {str(pathlib.Path(__file__).parent)!r})
        from test_reliability import corrupt_first_slot, spill
        pool = tm.Pool(dram="8MiB", nvme="256MiB", nvme_path={str(tmp_path)!r})
        a = spill(pool, 8 << 20)
        lo, hi = corrupt_first_slot(pool, a, {str(tmp_path)!r})
        print("corrupted", flush=True)
        a[lo]
        print("read damaged data", flush=True)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "corrupted" in res.stdout and "read damaged data" not in res.stdout, res.stderr[-2000:]
    assert res.returncode == -signal.SIGBUS


# ---- failed writes go elsewhere ------------------------------------------

def test_failed_pmem_writes_are_retried_on_nvme_within_the_budget(make_pool, monkeypatch):
    monkeypatch.setenv("TIEREDMEM_INJECT", "pmem_write:EIO")
    budget = 8 * MiB
    pool = make_pool(dram=budget, pmem="16MiB", nvme="256MiB")
    a = pool.empty(4 * budget // 8, dtype=np.uint64)
    fill(a, 3)
    assert first_mismatch(a, 3) is None
    # The background may be demoting (to keep headroom) as stats are read: a
    # victim holds a PMEM slot while its failed write is retried on NVMe.
    deadline = time.monotonic() + 5
    while (st := pool.stats())["pmem"]["used"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert st["io_errors"] >= 1
    assert st["nvme"]["used"] > 0 and st["pmem"]["used"] == 0
    assert st["budget_overruns"] == 0 and st["dram"]["peak"] <= budget
    del a


# ---- a full disk is an allocation error ------------------------------------

@pytest.fixture
def small_tmpfs(tmp_path):
    """A 24 MiB tmpfs mounted for the test (root only)."""
    mnt = tmp_path / "small"
    mnt.mkdir(mode=0o700)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs", str(mnt)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_nvme_filesystem_makes_allocation_raise_before_data_is_lost(small_tmpfs):
    pool = tm.Pool(dram="8MiB", nvme="1GiB", nvme_path=small_tmpfs)
    arrays = []
    with pytest.raises(MemoryError, match="filesystem"):
        for seed in range(64):  # 64 x 4 MiB: far beyond 8 MiB of DRAM and 24 MiB of disk
            a = pool.empty(MiB // 2, dtype=np.uint64)
            fill(a, seed)
            arrays.append(a)
    assert 4 <= len(arrays) < 64
    s0 = pool.stats()
    for seed, a in enumerate(arrays):
        assert first_mismatch(a, seed) is None, f"array {seed}"
    assert pool.stats()["budget_overruns"] == 0, (s0, pool.stats())
    del a, arrays
    gc.collect()
    pool.close()


# ---- private tier files ----------------------------------------------------

def test_nvme_directory_writable_by_others_is_refused(tmp_path):
    d = tmp_path / "open"
    d.mkdir()
    d.chmod(0o777)
    with pytest.raises(PermissionError, match="writable by others") as exc:
        tm.Pool(dram="8MiB", nvme="64MiB", nvme_path=d)
    assert str(d) in str(exc.value)


def test_nvme_directory_of_another_user_is_refused(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to give a directory to another user")
    d = tmp_path / "theirs"
    d.mkdir(mode=0o700)
    os.chown(d, 65534, 65534)
    with pytest.raises(PermissionError, match="not owned by this user"):
        tm.Pool(dram="8MiB", nvme="64MiB", nvme_path=d)


def test_emulated_pmem_lives_in_a_private_directory():
    with tm.Pool(dram="8MiB", pmem="16MiB", nvme=0) as pool:
        d = pathlib.Path(f"/dev/shm/tieredmem-{os.geteuid()}")
        st = os.lstat(d)
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700
        assert st.st_uid == os.geteuid()
        assert os.listdir(d) == []  # the file is unlinked while open
        assert pool.stats()["pmem"]["capacity"] == 16 * MiB


def test_freed_blocks_are_punched_out_of_the_slot_file(make_pool, nvme_dir):
    budget = 8 * MiB
    pool = make_pool(dram=budget, nvme="256MiB")
    a = spill(pool, budget)
    fd = nvme_file_fd(nvme_dir)
    assert os.fstat(fd).st_blocks > 0
    del a
    gc.collect()
    assert os.fstat(fd).st_blocks == 0  # no stale data left on disk
