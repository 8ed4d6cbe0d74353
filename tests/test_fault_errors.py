"""Lower-tier I/O errors, injected with TIEREDMEM_INJECT (read when a Pool is
created): "TIER_OP:WHAT[@SKIP]", comma-separated; TIER pmem|nvme, OP
read|write, WHAT EIO|ENOSPC|EFAULT|ENOMEM|EROFS|short, SKIP operations
succeed first.

A block that cannot be read back answers the access with SIGBUS (user mode)
or EFAULT (kernel mode) instead of hanging; a block that cannot be written
down stays in DRAM, overrunning the budget rather than losing data.
"""
import errno
import gc
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from patterns import MiB, fill, first_mismatch, pattern



pytestmark = pytest.mark.timeout(60, method="thread")


def demoted_array(pool, budget, seed=1):
    """An array (a quarter of the budget) filled and then pushed out of DRAM
    by writing fresh memory (never reading anything back from a lower tier,
    which may be set up to fail)."""
    a = pool.empty(budget // 4 // 8, dtype=np.uint64)
    fill(a, seed)
    for _ in range(8):
        other = pool.empty(2 * budget // 8, dtype=np.uint64)
        other[:] = 1  # zero-filled blocks, written: no lower-tier reads
        del other
        gc.collect()
        if pool.placement(a)["dram"] == 0:
            break
    assert pool.placement(a)["nvme"] == a.nbytes, pool.placement(a)
    return a


def write_from(a, path):
    """os.write the array's bytes to a new file: the kernel reads pool memory."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        return os.write(fd, memoryview(a).cast("B"))
    finally:
        os.close(fd)


# ---- failed reads: kernel mode ---------------------------------------------

@pytest.mark.parametrize("what", ["EIO", "short", "ENOMEM"])
def test_kernel_read_of_an_unreadable_nvme_block_fails_with_efault(make_pool, monkeypatch, tmp_path, what):
    monkeypatch.setenv("TIEREDMEM_INJECT", f"nvme_read:{what}")
    budget = 8 * MiB
    pool = make_pool(dram=budget, nvme="256MiB")
    a = demoted_array(pool, budget)
    with pytest.raises(OSError) as exc:
        write_from(a, tmp_path / "out.bin")
    assert exc.value.errno == errno.EFAULT, exc.value
    del a  # never read in user mode: its first page is poisoned
    gc.collect()


def test_failed_nvme_read_counts_an_io_error_and_a_sigbus(make_pool, monkeypatch, tmp_path):
    monkeypatch.setenv("TIEREDMEM_INJECT", "nvme_read:EIO")
    budget = 8 * MiB
    pool = make_pool(dram=budget, nvme="256MiB")
    a = demoted_array(pool, budget)
    before = pool.stats()
    assert before["io_errors"] == 0 and before["sigbus_sent"] == 0, before
    with pytest.raises(OSError):
        write_from(a, tmp_path / "out.bin")
    s = pool.stats()
    assert s["io_errors"] >= 1, s
    assert s["sigbus_sent"] >= 1, s
    del a
    gc.collect()


def test_failed_nvme_read_is_named_in_last_error(make_pool, monkeypatch, tmp_path):
    monkeypatch.setenv("TIEREDMEM_INJECT", "nvme_read:EIO")
    budget = 8 * MiB
    pool = make_pool(dram=budget, nvme="256MiB")
    a = demoted_array(pool, budget)
    with pytest.raises(OSError):
        write_from(a, tmp_path / "out.bin")
    msg = pool.stats()["last_error"]
    assert "nvme" in msg and "read" in msg, f"last_error does not name the nvme read: {msg!r}"
    assert "EIO" in msg or os.strerror(errno.EIO) in msg, f"last_error does not name EIO: {msg!r}"
    del a
    gc.collect()


def test_reads_within_the_skip_count_succeed(make_pool, monkeypatch, tmp_path):
    """nvme_read:EIO@N fails only after N reads: with N larger than the reads
    made, demoted data comes back intact (checked through a kernel read, which
    fails with EFAULT rather than killing the process if it does not)."""
    monkeypatch.setenv("TIEREDMEM_INJECT", "nvme_read:EIO@1000000")
    budget = 8 * MiB
    pool = make_pool(dram=budget, nvme="256MiB")
    a = demoted_array(pool, budget, seed=3)
    out = tmp_path / "out.bin"
    assert write_from(a, out) == a.nbytes
    back = np.fromfile(out, dtype=np.uint64)
    assert np.array_equal(back, pattern(0, a.size, 3))
    assert pool.stats()["io_errors"] == 0
    del a
    gc.collect()


def test_first_read_after_the_skip_count_fails(make_pool, monkeypatch, tmp_path):
    """nvme_read:EIO@0 lets no read through: the first one already fails."""
    monkeypatch.setenv("TIEREDMEM_INJECT", "nvme_read:EIO@0")
    budget = 8 * MiB
    pool = make_pool(dram=budget, nvme="256MiB")
    a = demoted_array(pool, budget)
    with pytest.raises(OSError) as exc:
        write_from(a, tmp_path / "out.bin")
    assert exc.value.errno == errno.EFAULT
    del a
    gc.collect()


def test_bad_inject_spec_is_rejected_at_pool_creation(make_pool, monkeypatch):
    monkeypatch.setenv("TIEREDMEM_INJECT", "nvme_read:EBOGUS")
    with pytest.raises(ValueError, match="TIEREDMEM_INJECT"):
        make_pool(dram="8MiB", nvme="64MiB")


# ---- failed reads: user mode (in a child process: it dies) ------------------

CHILD = textwrap.dedent("""
    import gc, sys
    import numpy as np
    import tieredmem as tm
    MiB = 1 << 20
    pool = tm.Pool(dram="8MiB", nvme="256MiB", nvme_path=sys.argv[1], block_size="64KiB")
    a = pool.empty(2 * MiB // 8, dtype=np.uint64)
    a[:] = 42
    for _ in range(8):
        other = pool.empty(16 * MiB // 8, dtype=np.uint64)
        other[:] = 1
        del other
        gc.collect()
        if pool.placement(a)["dram"] == 0:
            break
    assert pool.placement(a)["nvme"] == a.nbytes, pool.placement(a)
    print("demoted", flush=True)
    {action}
    print("survived", flush=True)
""")


def run_child(action, nvme_dir, inject):
    env = dict(os.environ, TIEREDMEM_INJECT=inject)
    return subprocess.run([sys.executable, "-c", CHILD.format(action=action), str(nvme_dir)],
                          env=env, capture_output=True, text=True, timeout=45)


@pytest.mark.parametrize("action", ["x = int(a[1000])", "a[1000] = 7"], ids=["read", "write"])
def test_user_access_to_an_unreadable_block_is_killed_by_sigbus(nvme_dir, action):
    res = run_child(action, nvme_dir, "nvme_read:EIO")
    assert "demoted" in res.stdout, res.stderr
    assert "survived" not in res.stdout
    assert res.returncode == -signal.SIGBUS, (res.returncode, res.stderr[-2000:])


def test_memory_of_a_poisoned_array_is_usable_again_after_free(nvme_dir):
    action = textwrap.dedent("""
        import os
        fd = os.open(os.path.join(sys.argv[1], "out.bin"), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.write(fd, memoryview(a).cast("B"))  # EFAULT: poisons a page of a
            print("no error", flush=True)
        except OSError:
            pass
        base = a.__array_interface__["data"][0]
        del a
        gc.collect()
        # The last `other`'s freed pages are kept for the next allocation where
        # it was (spares): this one takes them, so that b lands on a's range.
        c = pool.empty(16 * MiB // 8, dtype=np.uint64)
        b = pool.empty(2 * MiB // 8, dtype=np.uint64)  # fits in DRAM: no reads
        assert b.__array_interface__["data"][0] == base, "not the same memory"
        b[:] = 9
        assert int(b.sum()) == 9 * b.size
    """)
    res = run_child(action, nvme_dir, "nvme_read:EIO")
    assert "demoted" in res.stdout, res.stderr
    assert "no error" not in res.stdout
    assert res.returncode == 0, (res.returncode, res.stderr[-2000:])
    assert "survived" in res.stdout


# ---- failed writes: data stays in DRAM -------------------------------------

def test_failed_demotion_writes_keep_the_data_exact_in_dram(make_pool, monkeypatch):
    monkeypatch.setenv("TIEREDMEM_INJECT", "nvme_write:EIO")
    budget = 8 * MiB
    pool = make_pool(dram=budget, nvme="256MiB")
    a = pool.empty(4 * budget // 8, dtype=np.uint64)
    fill(a, seed=5)
    bad = first_mismatch(a, 5)
    assert bad is None, f"data lost: {bad}"
    pl = pool.placement(a)
    assert pl["dram"] == a.nbytes, pl
    del a
    gc.collect()


def test_failed_demotion_writes_are_counted_as_budget_overruns_and_io_errors(make_pool, monkeypatch):
    monkeypatch.setenv("TIEREDMEM_INJECT", "nvme_write:EIO")
    budget = 8 * MiB
    pool = make_pool(dram=budget, nvme="256MiB")
    a = pool.empty(4 * budget // 8, dtype=np.uint64)
    fill(a, seed=6)
    s = pool.stats()
    assert s["budget_overruns"] >= 1, s
    assert s["io_errors"] >= 1, s
    assert s["dram"]["used"] > budget, s["dram"]
    assert "nvme" in s["last_error"] and "write" in s["last_error"], s["last_error"]
    del a
    gc.collect()


def test_failed_pmem_writes_keep_the_data_exact(make_pool, monkeypatch):
    monkeypatch.setenv("TIEREDMEM_INJECT", "pmem_write:EIO")
    budget = 8 * MiB
    pool = make_pool(dram=budget, pmem="16MiB", nvme="256MiB")
    a = pool.empty(4 * budget // 8, dtype=np.uint64)
    fill(a, seed=7)
    bad = first_mismatch(a, 7)
    assert bad is None, f"data lost: {bad}"
    assert pool.stats()["io_errors"] >= 1
    del a
    gc.collect()


def test_demotion_writes_that_fail_after_skip_keep_the_data_exact(make_pool, monkeypatch):
    """The first writes reach NVMe, the later ones fail: data written before
    and after the failures reads back exactly."""
    monkeypatch.setenv("TIEREDMEM_INJECT", "nvme_write:EIO@4")
    budget = 8 * MiB
    pool = make_pool(dram=budget, nvme="256MiB")
    a = pool.empty(4 * budget // 8, dtype=np.uint64)
    fill(a, seed=8)
    s = pool.stats()
    assert s["bytes_written"] > 0 and s["io_errors"] >= 1, s
    bad = first_mismatch(a, 8)
    assert bad is None, f"data lost: {bad}"
    del a
    gc.collect()
