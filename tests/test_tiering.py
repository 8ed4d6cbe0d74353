"""Tiering: data moves DRAM -> PMEM -> NVMe and back without a bit changing,
the DRAM budget holds, clean blocks are dropped instead of rewritten, dirty
ones are not, and freeing returns every tier's space.

Arrays are filled with a position-dependent pattern generated chunk by chunk
and checked the same way, so no second full copy of the data is ever held.
"""
import gc
import threading
import time

import numpy as np
import pytest

from patterns import CHUNK, KiB, MiB, digest, fill, first_mismatch, pattern, push_out



pytestmark = pytest.mark.timeout(120, method="thread")


# ---- helpers --------------------------------------------------------------

# ---- round trips ------------------------------------------------------------

@pytest.mark.parametrize("block_size", ["4KiB", "64KiB", "2MiB"])
def test_data_four_times_the_budget_reads_back_bit_exact(make_pool, block_size):
    budget = 16 * MiB
    pool = make_pool(dram=budget, nvme="256MiB", block_size=block_size)
    a = pool.empty(4 * budget // 8, dtype=np.uint64)
    written = fill(a, seed=1)
    s = pool.stats()
    assert s["demotions"] > 0 and pool.placement(a)["nvme"] > 0, "nothing left DRAM: tiering not exercised"
    read = digest(a)
    if read != written:
        pytest.fail(f"read back differs from what was written: {first_mismatch(a, 1)}")
    assert pool.stats()["promotions"] > 0
    del a
    gc.collect()


def test_blocks_read_back_in_random_order_are_bit_exact(make_pool):
    budget = 16 * MiB
    pool = make_pool(dram=budget, nvme="256MiB", block_size="64KiB")
    a = pool.empty(4 * budget // 8, dtype=np.uint64)
    fill(a, seed=2)
    per_block = pool.block_size // 8
    order = np.random.default_rng(7).permutation(a.size // per_block)
    bad = []
    for b in order:
        lo = int(b) * per_block
        if not np.array_equal(a[lo:lo + per_block], pattern(lo, lo + per_block, 2)):
            bad.append(int(b))
    assert not bad, f"{len(bad)} blocks read back wrong, e.g. blocks {sorted(bad)[:10]}"
    del a
    gc.collect()


@pytest.mark.parametrize("block_size", ["4KiB", "64KiB", "2MiB"])
def test_pmem_and_nvme_tiers_round_trip_bit_exact(make_pool, block_size):
    budget = 16 * MiB
    pool = make_pool(dram=budget, pmem="32MiB", nvme="256MiB", block_size=block_size)
    a = pool.empty(6 * budget // 8, dtype=np.uint64)  # 96 MiB: more than DRAM + PMEM
    written = fill(a, seed=3)
    for rnd in range(2):  # every pass pulls blocks back up through all tiers
        read = digest(a)
        if read != written:
            pytest.fail(f"pass {rnd}: read back differs: {first_mismatch(a, 3)}")
    s = pool.stats()
    assert s["pmem"]["peak"] > 0 and s["nvme"]["peak"] > 0, s
    del a
    gc.collect()


def test_placement_spans_dram_pmem_and_nvme_and_sums_to_nbytes(make_pool):
    budget = 16 * MiB
    pool = make_pool(dram=budget, pmem="32MiB", nvme="256MiB", block_size="64KiB")
    a = pool.empty(6 * budget // 8, dtype=np.uint64)
    fill(a, seed=4)
    pl = pool.placement(a)
    assert pl["dram"] > 0 and pl["pmem"] > 0 and pl["nvme"] > 0, pl
    assert pl["unbacked"] == 0, pl
    assert sum(pl.values()) == a.nbytes, pl
    assert pl["dram"] <= budget, pl
    digest(a)  # read it all: blocks move up and down again
    pl = pool.placement(a)
    assert pl["pmem"] > 0 and pl["nvme"] > 0, pl
    assert sum(pl.values()) == a.nbytes, pl
    del a
    gc.collect()


# ---- the budget -------------------------------------------------------------

def test_dram_used_never_exceeds_budget_during_fill_and_verify(make_pool):
    budget = 16 * MiB
    pool = make_pool(dram=budget, nvme="256MiB", block_size="64KiB")
    limit = budget + 1 * pool.block_size  # one faulting thread
    samples = []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            samples.append(pool.stats()["dram"]["used"])
            time.sleep(0.0005)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        a = pool.empty(4 * budget // 8, dtype=np.uint64)
        written = fill(a, seed=5)
        assert digest(a) == written
    finally:
        stop.set()
        t.join(10)
    s = pool.stats()
    assert len(samples) >= 20, f"only {len(samples)} samples taken"
    assert max(samples) >= budget // 2, "the budget was never approached: no memory pressure"
    assert max(samples) <= limit, f"dram used reached {max(samples)} > budget {budget} + one block"
    assert s["dram"]["peak"] <= limit, s["dram"]
    assert s["budget_overruns"] == 0, s
    del a
    gc.collect()


# ---- clean and dirty blocks -------------------------------------------------

def test_read_only_pass_drops_clean_blocks_without_rewriting(make_pool):
    budget = 16 * MiB
    pool = make_pool(dram=budget, nvme="256MiB", block_size="64KiB")
    if not pool.stats()["dirty_tracking"]:
        pytest.skip("no write-protect dirty tracking on this kernel: every block counts as dirty")
    a = pool.empty(4 * budget // 8, dtype=np.uint64)
    written = fill(a, seed=6)
    s0 = pool.stats()
    assert digest(a) == written  # reads only
    s1 = pool.stats()
    rewritten = s1["bytes_written"] - s0["bytes_written"]
    dropped = s1["clean_drops"] - s0["clean_drops"]
    assert s1["promotions"] > s0["promotions"], "the pass did not read from NVMe"
    # Only the blocks still dirty in DRAM after the fill (at most the budget)
    # may be written; every block promoted by the pass leaves again clean.
    assert rewritten <= budget, f"a read-only pass rewrote {rewritten} bytes of {a.nbytes}"
    assert dropped * pool.block_size >= a.nbytes - 2 * budget, (
        f"only {dropped} clean drops for {a.nbytes // pool.block_size} blocks read")
    del a
    gc.collect()


@pytest.mark.parametrize("stride", [1, 64 * KiB // 8], ids=["whole-blocks", "one-element-per-block"])
def test_write_after_read_survives_the_next_demotion(make_pool, stride):
    budget = 16 * MiB
    pool = make_pool(dram=budget, nvme="256MiB", block_size="64KiB")
    a = pool.empty(4 * budget // 8, dtype=np.uint64)
    other = pool.zeros(2 * budget // 8, dtype=np.uint64)
    fill(a, seed=7)
    n = 2 * MiB // 8
    region = a[:n]
    assert push_out(pool, region, other)["nvme"] == region.nbytes
    # A read promotes clean. The background thread keeps DRAM headroom (here
    # as much as the region) and may demote the just-read blocks again at
    # once: read until most of them are in DRAM.
    for _ in range(10):
        assert int(region.sum()) == int(pattern(0, n, 7).sum())
        if pool.placement(region)["dram"] >= region.nbytes // 2:
            break
    assert pool.placement(region)["dram"] >= region.nbytes // 2
    idx = np.arange(0, n, stride)
    region[::stride] = pattern(0, n, 8)[::stride]  # written after the read
    assert push_out(pool, region, other)["nvme"] == region.nbytes
    want = pattern(0, n, 7)
    want[idx] = pattern(0, n, 8)[idx]
    wrong = np.flatnonzero(region != want)
    assert wrong.size == 0, (
        f"{wrong.size} elements written after a read were lost by the demotion, first at index {wrong[0]}")
    assert first_mismatch(a, 7, lo=n) is None
    del region, a, other
    gc.collect()


# ---- freeing and capacity -----------------------------------------------------

def test_freeing_an_array_returns_dram_and_lower_tier_slots(make_pool):
    budget = 16 * MiB
    pool = make_pool(dram=budget, pmem="16MiB", nvme="256MiB", block_size="64KiB")
    a = pool.empty(4 * budget // 8, dtype=np.uint64)
    fill(a, seed=9)
    s = pool.stats()
    assert s["dram"]["used"] > 0 and s["pmem"]["used"] > 0 and s["nvme"]["used"] > 0, s
    del a
    gc.collect()
    s = pool.stats()
    assert s["allocated"] == 0, s
    assert (s["dram"]["used"], s["pmem"]["used"], s["nvme"]["used"]) == (0, 0, 0), s


def test_memory_reused_after_free_reads_as_zero(make_pool):
    budget = 16 * MiB
    pool = make_pool(dram=budget, nvme="256MiB", block_size="64KiB")
    a = pool.empty(4 * budget // 8, dtype=np.uint64)
    fill(a, seed=10)
    del a
    gc.collect()
    b = pool.zeros(4 * budget // 8, dtype=np.uint64)
    nonzero = sum(int(np.count_nonzero(b[i:i + CHUNK])) for i in range(0, b.size, CHUNK))
    assert nonzero == 0, f"{nonzero} elements of a fresh array hold stale data"
    del b
    gc.collect()


TIER_CONFIGS = {
    "nvme": dict(dram="8MiB", nvme="32MiB"),
    "pmem+nvme": dict(dram="8MiB", pmem="8MiB", nvme="32MiB"),
    "pmem": dict(dram="8MiB", pmem="32MiB", nvme=0),
}


@pytest.mark.parametrize("tiers", list(TIER_CONFIGS))
def test_allocation_of_the_whole_reported_capacity_succeeds_and_holds_data(make_pool, tiers):
    pool = make_pool(block_size="64KiB", **TIER_CONFIGS[tiers])
    cap = pool.stats()["capacity"]
    assert cap >= 32 * MiB
    a = pool.empty(cap // 8, dtype=np.uint64)
    assert pool.stats()["allocated"] == cap
    written = fill(a, seed=11)
    if digest(a) != written:
        pytest.fail(f"data at full capacity read back wrong: {first_mismatch(a, 11)}")
    assert pool.stats()["io_errors"] == 0, pool.stats()["last_error"]
    del a
    gc.collect()


def test_allocation_beyond_the_reported_capacity_raises_memory_error(make_pool):
    pool = make_pool(dram="8MiB", nvme="32MiB", block_size="64KiB")
    cap = pool.stats()["capacity"]
    with pytest.raises(MemoryError):
        pool.empty(cap + pool.block_size, dtype=np.uint8)
    a = pool.empty(cap - pool.block_size, dtype=np.uint8)
    with pytest.raises(MemoryError):
        pool.empty(2 * pool.block_size, dtype=np.uint8)
    b = pool.empty(pool.block_size, dtype=np.uint8)  # exactly what is left
    assert pool.stats()["allocated"] == cap
    del a, b
    gc.collect()


def test_allocation_of_all_remaining_capacity_succeeds_after_a_free(make_pool):
    """Capacity left is capacity - allocated, wherever earlier allocations
    sat in the arena (tm_alloc: ENOMEM only "when the tiers' total capacity
    is exhausted")."""
    pool = make_pool(dram="8MiB", nvme="32MiB", block_size="64KiB")
    cap, bs = pool.stats()["capacity"], pool.block_size
    first = pool.empty(cap // 2, dtype=np.uint8)
    pinned = pool.empty(bs, dtype=np.uint8)  # allocated after `first`
    del first
    gc.collect()
    assert pool.stats()["allocated"] == bs
    rest = pool.empty(cap - bs, dtype=np.uint8)
    assert pool.stats()["allocated"] == cap
    del rest, pinned
    gc.collect()
