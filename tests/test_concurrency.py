"""Engine v2: I/O runs outside the pool lock. The background writes dirty
blocks back, and a handler reads a block in, with the lock released, so
faults on other blocks are served meanwhile.

The I/O is made slow with TIEREDMEM_INJECT="nvme_write:delayNms" or
"nvme_read:delayNms" (every such operation succeeds N ms late), so that one
in flight is long enough to see. Each test would wait most of a delay with
the lock held across the I/O."""
import gc
import threading
import time

import numpy as np
import pytest

from patterns import MiB, fill, first_mismatch

pytestmark = pytest.mark.timeout(120, method="thread")

DELAY_MS = 500


def test_fault_on_another_block_is_served_while_a_delayed_background_writeback_is_in_flight(make_pool,
                                                                                           monkeypatch):
    monkeypatch.setenv("TIEREDMEM_INJECT", f"nvme_write:delay{DELAY_MS}ms")
    pool = make_pool(dram="16MiB", nvme="512MiB", sampling=0)
    per = pool.block_size // 8
    hot = pool.empty(2 * MiB // 8, dtype=np.uint64)
    fill(hot, 1)
    pool.advise(hot, "dontneed")  # written down (slowly), then read back clean
    assert first_mismatch(hot, 1) is None
    pool.advise(hot, "hot")       # kept in DRAM while the stream below spills
    assert pool.placement(hot)["dram"] == hot.nbytes
    stream = pool.empty(64 * MiB // 8, dtype=np.uint64)
    done = threading.Event()

    def spill():
        try:
            fill(stream, 2)
        finally:
            done.set()

    writer = threading.Thread(target=spill)
    before = pool.stats()["background_demotions"]
    writer.start()
    latencies = []
    for k in range(hot.size // per):  # the first write to each clean block is a fault
        if done.is_set():
            break
        time.sleep(DELAY_MS / 1000 / 8)
        t0 = time.perf_counter()
        hot[k * per] = 10 + k
        latencies.append(time.perf_counter() - t0)
    writer.join(60)
    assert not writer.is_alive()
    during = pool.stats()["background_demotions"] - before
    assert during >= pool.stats()["dram"]["capacity"] // pool.block_size, \
        f"only {during} blocks written back in the background while the stream spilled"
    assert len(latencies) >= 8, f"the stream spilled before {len(latencies)} faults were timed"
    # Under one lock held across the write, some of these would wait for most
    # of a delayed write.
    assert max(latencies) < DELAY_MS / 1000 / 3, [round(x * 1000, 1) for x in latencies]
    for k in range(len(latencies)):
        assert hot[k * per] == 10 + k
    assert first_mismatch(stream, 2) is None
    del hot, stream
    gc.collect()


def test_fault_on_another_block_is_served_while_a_delayed_read_is_in_flight(make_pool, monkeypatch):
    monkeypatch.setenv("TIEREDMEM_INJECT", f"nvme_read:delay{DELAY_MS}ms")
    pool = make_pool(dram="64MiB", nvme="512MiB", sampling=0)
    per = pool.block_size // 8
    far = pool.empty(per, dtype=np.uint64)  # one block: one read
    fill(far, 3)
    pool.advise(far, "dontneed")
    assert pool.placement(far)["nvme"] == far.nbytes
    fresh = pool.empty(16 * per, dtype=np.uint64)
    timing = {}

    def read_far():
        t0 = time.perf_counter()
        timing["sum"] = int(far.sum())
        timing["read"] = time.perf_counter() - t0

    reader = threading.Thread(target=read_far)
    reader.start()
    time.sleep(DELAY_MS / 1000 / 5)  # the reader's fault is in its read
    latencies = []
    for k in range(0, fresh.size, 4 * per):  # each first write is a fault (a zero fill)
        t0 = time.perf_counter()
        fresh[k] = k
        latencies.append(time.perf_counter() - t0)
    reader.join(30)
    assert not reader.is_alive()
    assert timing["read"] >= DELAY_MS / 1000 * 0.9, f"the read was not held back: {timing['read']:.3f} s"
    assert timing["sum"] == int(np.sum(far)), "the block read back differs"
    assert first_mismatch(far, 3) is None
    assert max(latencies) < DELAY_MS / 1000 / 3, [round(x * 1000, 1) for x in latencies]
    del far, fresh
    gc.collect()


def test_delay_without_milliseconds_is_a_bad_inject_spec(make_pool, monkeypatch):
    monkeypatch.setenv("TIEREDMEM_INJECT", "nvme_write:delay300")
    with pytest.raises(ValueError, match="delayNms"):
        make_pool(dram="8MiB", nvme="64MiB")
