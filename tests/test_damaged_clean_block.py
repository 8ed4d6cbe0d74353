"""Regression (defect 2): a block that was promoted by a read (installed
write-protected, clean), then dropped clean by advise(..., "dontneed"), and
whose lower-tier slot is then damaged (bytes flipped behind the pool's back)
or unreadable (TIEREDMEM_INJECT=..._read:EIO@1: the promotion read is the
only one that succeeds) must be answered like any unreadable block
(docs/reliability.md): a kernel-mode read fails with EFAULT, a user-mode read
is killed by SIGBUS, promptly; sigbus_sent counts it; the other blocks of the
array read exactly. The engine hung on that read instead (checksum_errors=1,
io_errors=1, sigbus_sent=0, the reader blocked forever), on NVMe and PMEM,
with every policy.

Each case runs in a child process; the parent asserts on how it ended."""
import errno
import signal
import textwrap

import pytest

from probing import private_dir, run_child

pytestmark = pytest.mark.timeout(120, method="thread")

TIMEOUT = 25  # seconds for a whole child (numba start-up included)
PROMPT = 5.0  # the failing read must return (or kill) within this
WATCHDOG = 8  # the child reports itself blocked and exits 4 after this long in the read

CHILD = textwrap.dedent("""
    import errno, json, os, sys, time
    import numpy as np
    import tieredmem as tm
    from patterns import pattern
    from probing import emit, stats_summary, tier_file_fd, watchdog

    tier, damage, policy, access, tierdir, outdir, WATCH = sys.argv[1:8]
    WATCH = float(WATCH)
    NB, K, SEED = 8, 4, 11   # blocks of the array; the block that gets damaged
    if tier == "nvme":
        pool = tm.Pool(dram="8MiB", nvme="64MiB", nvme_path=tierdir, policy=policy)
    else:
        pool = tm.Pool(dram="8MiB", pmem="16MiB", nvme=0, pmem_path=tierdir, policy=policy)
    bs = pool.block_size
    per = bs // 8
    a = pool.empty(NB * per, dtype=np.uint64)
    a[:] = pattern(0, a.size, SEED)
    a_base = a.ctypes.data
    view = a[K * per:(K + 1) * per]
    pool.advise(a, "random")                 # one block per fault: exactly one read below
    other_low = [] if damage == "eio" else [6, 7]   # other blocks left on the lower tier
    for j in other_low:
        pool.advise(a[j * per:(j + 1) * per], "dontneed")
    pool.advise(view, "dontneed")            # dirty: written to the lower tier
    assert pool.placement(view)[tier] == bs, ("not demoted", pool.placement(view))

    # The promotion by a read: installed write-protected, clean.
    assert np.array_equal(view, pattern(K * per, (K + 1) * per, SEED)), "promoted data wrong"
    assert pool.placement(view)["dram"] == bs, ("not promoted", pool.placement(view))
    drops = pool.stats()["clean_drops"]
    pool.advise(view, "dontneed")            # clean: dropped without I/O, keeps its slot
    s = pool.stats()
    assert s["clean_drops"] > drops, ("the promoted block was not dropped clean", s)

    # A policy may promote it again at once (hotness saw it used). Promoted
    # before the damage, it is back in DRAM intact: undo the damage and try
    # again. Promoted after, it read the damaged slot and stays below.
    meta = pool.metadata()
    block = (a_base - int(tm.pool.ffi.cast("uintptr_t", tm.pool.lib.tm_arena_base(pool._p)))) // bs + K
    for attempt in range(20):
        for _ in range(100):
            if not pool.placement(view)["dram"]:
                break
            pool.advise(view, "dontneed")
        slot = int(meta["slot"][block])
        if damage == "flip":
            pslots = s["pmem"]["capacity"] // bs
            first = 1 if tier == "pmem" else 1 + pslots
            off = (slot - first) * bs
            fd = os.open(f"/proc/self/fd/{tier_file_fd(tierdir)}", os.O_RDWR)
            old = os.pread(fd, 4096, off + 8192)
            assert len(old) == 4096
            os.pwrite(fd, bytes(b ^ 0xA5 for b in old), off + 8192)
            os.fsync(fd)
        where = pool.placement(view)
        if not where["dram"]:
            if damage == "flip":
                os.close(fd)
            break
        if damage == "flip":
            os.pwrite(fd, old, off + 8192)
            os.fsync(fd)
            os.close(fd)
    else:
        emit({"setup": "raced: the block was back in DRAM each time before its slot was changed",
              "placement": where})
        sys.exit(3)
    before = stats_summary(pool)
    print("damaged", flush=True)

    watchdog(WATCH, pool, f"the {access} read of the damaged block")
    t0 = time.monotonic()
    out = {"before": before, "slot": slot}
    if access == "kernel":
        fd = os.open(os.path.join(outdir, "out.bin"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            n = os.write(fd, memoryview(view).cast("B"))
            out["kernel_read"] = f"returned {n}"
        except OSError as e:
            out["kernel_read"] = errno.errorcode.get(e.errno, str(e.errno))
        os.close(fd)
    else:
        x = int(view[100])
        out["user_read"] = f"returned {x:#x}"
    out["read_seconds"] = time.monotonic() - t0
    out["after"] = stats_summary(pool)
    wrong = []
    for j in range(NB):
        if j == K:
            continue
        if not np.array_equal(a[j * per:(j + 1) * per], pattern(j * per, (j + 1) * per, SEED)):
            wrong.append(j)
    out["other_blocks_checked"] = NB - 1
    out["other_blocks_wrong"] = wrong
    out["after_others"] = stats_summary(pool)
    emit(out)
""")


def run_case(tmp_path, tier, damage, policy, access):
    tierdir = private_dir(tmp_path / "tier")
    env = {"TIEREDMEM_INJECT": f"{tier}_read:EIO@1"} if damage == "eio" else {"TIEREDMEM_INJECT": ""}
    return run_child(CHILD, tier, damage, policy, access, tierdir, tmp_path, WATCHDOG, timeout=TIMEOUT, env=env)


@pytest.mark.parametrize("policy", ["lru", "fifo", "hotness"])
@pytest.mark.parametrize("tier", ["nvme", "pmem"])
@pytest.mark.parametrize("damage", ["flip", "eio"])
def test_kernel_read_of_a_damaged_block_dropped_clean_after_a_read_fails_with_efault(tmp_path, damage, tier, policy):
    res = run_case(tmp_path, tier, damage, policy, "kernel")
    assert "damaged" in res.stdout, f"the setup failed:\n{res}"
    assert not res.hung(), f"the read of the damaged block hung:\n{res}"
    assert res.returncode == 0 and res.result, f"\n{res}"
    r = res.result
    assert r["kernel_read"] == "EFAULT", f"kernel read of the damaged block: {r['kernel_read']}\n{res}"
    assert r["read_seconds"] < PROMPT, f"the failing read took {r['read_seconds']:.1f} s\n{res}"
    after = r["after"]
    assert after["sigbus_sent"] >= 1, f"the failed read was not counted in sigbus_sent: {after}"
    if damage == "flip":
        assert after["checksum_errors"] >= 1, after
    else:
        assert after["io_errors"] >= 1, after
    assert r["other_blocks_wrong"] == [], f"other blocks of the array read wrong: {r}"


@pytest.mark.parametrize("tier", ["nvme", "pmem"])
@pytest.mark.parametrize("damage", ["flip", "eio"])
def test_user_read_of_a_damaged_block_dropped_clean_after_a_read_is_killed_by_sigbus(tmp_path, damage, tier):
    res = run_case(tmp_path, tier, damage, "lru", "user")
    assert "damaged" in res.stdout, f"the setup failed:\n{res}"
    assert not res.hung(), f"the read of the damaged block hung:\n{res}"
    assert res.result is None or "setup" not in res.result, f"\n{res}"
    assert res.returncode == -signal.SIGBUS, f"user read of the damaged block: {res.how()}, want SIGBUS\n{res}"
    assert res.elapsed < TIMEOUT - 5, f"\n{res}"
