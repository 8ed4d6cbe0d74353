"""Engine v2, issue 11 item 1: the pool lock guards state transitions and
metadata only; it is never held across tier I/O, a copy, a checksum or a
userfaultfd ioctl that copies data (docs/architecture.md, "Threads and
locking").

Each test holds one path's I/O back with an injected delay
(TIEREDMEM_INJECT="nvme_write:delayNms": every such write succeeds N ms
late) and times faults on other blocks meanwhile: first writes to clean
resident blocks (write-protect faults, which need no room and no I/O), so
that each waits only if something holds the lock. With the lock held across
the delayed write, each of these timings would be most of a delay. The last
test checks what is left, stats()["locked_io_bytes"], in a workload that uses
every path at once."""
import gc
import threading
import time

import numpy as np
import pytest

from patterns import MiB, fill, first_mismatch
from tieredmem._engine import ffi, lib

pytestmark = pytest.mark.timeout(120, method="thread")

DELAY_MS = 500
TIER_PMEM = 2
F_BUSY = 1 << 3


def clean_hot(pool, nbytes, seed):
    """An array written, sent down and read back (so its blocks are resident
    and clean: their first write is a write-protect fault), advised hot so
    that the demotions below spare it."""
    a = pool.empty(nbytes // 8, dtype=np.uint64)
    fill(a, seed)
    pool.advise(a, "dontneed")
    assert first_mismatch(a, seed) is None
    pool.advise(a, "hot")
    assert pool.placement(a)["dram"] == a.nbytes
    return a


def assert_not_held(latencies):
    # One lock held across a delayed write would keep some of these waiting
    # for most of DELAY_MS.
    assert not latencies or max(latencies) < DELAY_MS / 1000 / 3, [round(x * 1000, 1) for x in latencies]


def time_faults_while(pool, hot, action, min_faults=6):
    """Run action() on a thread; meanwhile write one element in each block of
    `hot` (a fault each), a few ms apart, and time them: none may wait for the
    action's delayed I/O. Returns the latencies (s) of the faults taken while
    the action ran, and the action's duration."""
    per = pool.block_size // 8
    done = threading.Event()
    took = {}

    def run():
        t0 = time.perf_counter()
        try:
            action()
        finally:
            took["s"] = time.perf_counter() - t0
            done.set()

    t = threading.Thread(target=run)
    t.start()
    time.sleep(DELAY_MS / 1000 / 10)  # the action is in its first delayed write
    latencies = []
    for k in range(hot.size // per):
        if done.is_set():
            break
        t0 = time.perf_counter()
        hot[k * per] = 1000 + k
        latencies.append(time.perf_counter() - t0)
        time.sleep(DELAY_MS / 1000 / 10)
    t.join(90)
    assert not t.is_alive()
    assert_not_held(latencies)
    assert took["s"] >= DELAY_MS / 1000 * 0.9, f"setup: the action was not held back ({took['s']:.3f} s)"
    assert len(latencies) >= min_faults, f"setup: the action ended after {len(latencies)} timed faults"
    for k in range(len(latencies)):
        assert hot[k * per] == 1000 + k
    return latencies, took["s"]


def test_fault_on_another_block_is_served_while_willneed_makes_room_with_a_delayed_write(make_pool, monkeypatch):
    # tm_promote_reserve -> tm_demote_room on the control worker: DRAM is full
    # of dirty blocks, so bringing `far` in writes victims first.
    monkeypatch.setenv("TIEREDMEM_INJECT", f"nvme_write:delay{DELAY_MS}ms")
    pool = make_pool(dram="16MiB", nvme="256MiB", sampling=0)
    hot = clean_hot(pool, 2 * MiB, 1)
    far = pool.empty(8 * MiB // 8, dtype=np.uint64)
    fill(far, 3)
    pool.advise(far, "dontneed")
    assert pool.placement(far)["nvme"] == far.nbytes
    filler = pool.empty(13 * MiB // 8, dtype=np.uint64)
    fill(filler, 4)
    before = pool.stats()
    latencies, _ = time_faults_while(pool, hot, lambda: pool.advise(far, "willneed"))
    after = pool.stats()
    assert after["demotions"] > before["demotions"], "setup: willneed found room without demoting"
    assert pool.placement(far)["dram"] > 0
    assert first_mismatch(far, 3) is None
    assert first_mismatch(filler, 4) is None
    assert after["locked_io_bytes"] == 0
    del hot, far, filler
    gc.collect()


def test_fault_on_another_block_is_served_while_dontneed_writes_with_a_delay(make_pool, monkeypatch):
    monkeypatch.setenv("TIEREDMEM_INJECT", f"nvme_write:delay{DELAY_MS}ms")
    pool = make_pool(dram="32MiB", nvme="256MiB", sampling=0)
    hot = clean_hot(pool, 2 * MiB, 1)
    cold = pool.empty(12 * MiB // 8, dtype=np.uint64)
    fill(cold, 5)
    latencies, _ = time_faults_while(pool, hot, lambda: pool.advise(cold, "dontneed"))
    assert pool.placement(cold)["nvme"] == cold.nbytes
    assert first_mismatch(cold, 5) is None
    assert pool.stats()["locked_io_bytes"] == 0
    del hot, cold
    gc.collect()


def test_fault_on_another_block_is_served_while_resize_demotes_with_a_delayed_write(make_pool, monkeypatch):
    monkeypatch.setenv("TIEREDMEM_INJECT", f"nvme_write:delay{DELAY_MS}ms")
    pool = make_pool(dram="32MiB", nvme="256MiB", sampling=0)
    hot = clean_hot(pool, 2 * MiB, 1)
    data = pool.empty(20 * MiB // 8, dtype=np.uint64)
    fill(data, 6)
    latencies, _ = time_faults_while(pool, hot, lambda: pool.resize("12MiB"))
    s = pool.stats()
    assert s["dram"]["capacity"] == 12 * MiB
    assert s["dram"]["used"] <= 12 * MiB, s["last_error"]
    assert first_mismatch(data, 6) is None
    assert pool.stats()["locked_io_bytes"] == 0
    del hot, data
    gc.collect()


def test_fault_on_another_block_is_served_while_the_pmem_cascade_writes_nvme_with_a_delay(make_pool,
                                                                                        monkeypatch):
    # PMEM fills; its blocks move on to NVMe (the cascade), whose writes are
    # slow: in the background, and on the spilling thread's fault path.
    monkeypatch.setenv("TIEREDMEM_INJECT", f"nvme_write:delay{DELAY_MS}ms")
    pool = make_pool(dram="16MiB", pmem="16MiB", nvme="256MiB", sampling=0)
    hot = clean_hot(pool, 2 * MiB, 1)
    stream = pool.empty(48 * MiB // 8, dtype=np.uint64)
    latencies, _ = time_faults_while(pool, hot, lambda: fill(stream, 2))
    s = pool.stats()
    assert s["nvme"]["used"] > 0, "setup: nothing was cascaded to NVMe"
    assert first_mismatch(stream, 2) is None
    assert pool.stats()["locked_io_bytes"] == 0
    del hot, stream
    gc.collect()


def test_fault_on_a_block_being_cascaded_waits_for_it_and_reads_its_data(make_pool, monkeypatch):
    monkeypatch.setenv("TIEREDMEM_INJECT", f"nvme_write:delay{DELAY_MS}ms")
    pool = make_pool(dram="8MiB", pmem="8MiB", nvme="256MiB", sampling=0)
    first = pool.empty(4 * MiB // 8, dtype=np.uint64)  # the PMEM hand reaches its blocks first
    fill(first, 7)
    pool.advise(first, "dontneed")
    assert pool.placement(first)["pmem"] == first.nbytes
    rest = pool.empty(16 * MiB // 8, dtype=np.uint64)
    writer = threading.Thread(target=fill, args=(rest, 8))
    writer.start()
    meta = pool.metadata()
    arena = int(ffi.cast("uintptr_t", lib.tm_arena_base(pool._engine())))
    b0 = (first.__array_interface__["data"][0] - arena) // pool.block_size
    nb = first.nbytes // pool.block_size
    busy = None
    t_end = time.monotonic() + 30
    while busy is None and time.monotonic() < t_end and writer.is_alive():
        tiers, flags = meta["tier"][b0:b0 + nb].copy(), meta["flags"][b0:b0 + nb].copy()
        hits = np.flatnonzero((tiers == TIER_PMEM) & ((flags & F_BUSY) != 0))
        if hits.size:
            busy = int(hits[0])
        else:
            time.sleep(0.002)
    assert busy is not None, "setup: no block of the array was seen being cascaded"
    per = pool.block_size // 8
    waits = pool.stats()["busy_waits"]
    t0 = time.perf_counter()
    value = int(first[busy * per])  # faults on the block in flight: waits for the cascade's wake
    took = time.perf_counter() - t0
    writer.join(60)
    assert not writer.is_alive()
    assert first_mismatch(first, 7) is None
    assert first_mismatch(rest, 8) is None
    assert value == int(first[busy * per])
    assert pool.stats()["busy_waits"] > waits or took < DELAY_MS / 1000, took
    del meta, first, rest
    gc.collect()


def test_no_tier_io_is_done_under_the_lock_in_a_spilling_workload_with_resize_and_advice(make_pool):
    pool = make_pool(dram="16MiB", pmem="16MiB", nvme="256MiB")
    arrays = []
    for seed in range(6):  # 48 MiB: spills through PMEM to NVMe
        a = pool.empty(8 * MiB // 8, dtype=np.uint64)
        fill(a, seed)
        arrays.append(a)

    def reader(k):
        for _ in range(2):
            assert first_mismatch(arrays[k], k) is None

    threads = [threading.Thread(target=reader, args=(k,)) for k in (0, 3)]
    for t in threads:
        t.start()
    pool.advise(arrays[1], "dontneed")
    pool.advise(arrays[2], "willneed")
    pool.advise(arrays[4], "hot")
    pool.resize("8MiB")
    pool.resize("24MiB")
    for t in threads:
        t.join(60)
        assert not t.is_alive()
    for seed, a in enumerate(arrays):
        assert first_mismatch(a, seed) is None
    tmp = pool.empty(4 * MiB // 8, dtype=np.uint64)  # freed while its readahead may be in flight
    fill(tmp, 9)
    del tmp
    s = pool.stats()
    assert s["nvme"]["peak"] > 0 and s["pmem"]["peak"] > 0 and s["demotions"] > 0 and s["promotions"] > 0
    assert s["locked_io_bytes"] == 0, s
    del arrays
    gc.collect()
