"""Hint-fault sampling (docs/policies.md, "Hint sampling"; csrc/background.c).

Every 50 ms the background thread unmaps some resident blocks (their pages
stay in the memfd); the next access to one is a hint fault that records it
and maps the block again. The contract:

- with sampling on (the default) and a lower tier, accesses to resident data
  are seen (stats()["hint_faults"], ["sampled"]) and data stays exact,
  including data written by the access that takes the hint fault: the block
  must still be known dirty when it is demoted;
- Pool(sampling=False) samples nothing and takes no hint faults;
- sampling costs a small share of the time (the budget is 1%: sample_ns is
  checked against 5% of the wall time);
- sampling is a share of the time from 0 to 0.5, or True/False.
"""
import gc
import time

import numpy as np
import pytest

from patterns import MiB, digest, fill, first_mismatch, pattern

from tieredmem.policy.base import F_ALLOC, F_SAMPLED

import tieredmem as tm

pytestmark = pytest.mark.timeout(120, method="thread")

BUDGET = 8 * MiB


def wait_until(condition, seconds=2.0, step=0.01):
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


def touch_blocks(a, block_size):
    """Read one element of every block of `a` (a resident block: no fault
    unless sampling unmapped it)."""
    return int(a[::block_size // a.itemsize].sum())


# ---- sampling on ---------------------------------------------------------------

@pytest.mark.parametrize("policy", tm.policy_names())
def test_accesses_to_resident_data_take_hint_faults_when_sampling_is_on(make_pool, policy):
    pool = make_pool(dram=BUDGET, nvme="64MiB", policy=policy)  # sampling on by default
    a = pool.empty(4 * MiB // 8, dtype=np.uint64)  # fits DRAM: no demotion, no CLOCK
    written = fill(a, seed=1)

    def touched_and_hinted():
        touch_blocks(a, pool.block_size)
        return pool.stats()["hint_faults"] > 0

    assert wait_until(touched_and_hinted, seconds=3), f"no hint fault within 3 s of touching resident data"
    s = pool.stats()
    assert s["sampled"] > 0
    assert s["sample_ns"] > 0
    assert s["demotions"] == 0, "the data did not stay in DRAM: hints may have come from demotions"
    assert digest(a) == written, first_mismatch(a, 1)
    del a
    gc.collect()


def test_hint_faults_are_no_more_than_blocks_sampled(make_pool):
    pool = make_pool(dram=BUDGET, nvme="64MiB")
    a = pool.empty(4 * MiB // 8, dtype=np.uint64)
    a[:] = 1
    for _ in range(30):
        touch_blocks(a, pool.block_size)
        time.sleep(0.01)
    s = pool.stats()
    assert 0 < s["hint_faults"] <= s["sampled"], (s["hint_faults"], s["sampled"])
    del a
    gc.collect()


def wait_all_sampled(pool, seconds=3.0):
    """Wait until every allocated block carries the sampled flag (unmapped by
    sampling, not touched since)."""
    flags = pool.metadata()["flags"]

    def all_sampled():
        f = flags[(flags & F_ALLOC) != 0]
        return f.size > 0 and bool(np.all(f & F_SAMPLED))

    ok = wait_until(all_sampled, seconds=seconds)
    del flags
    return ok


@pytest.mark.parametrize("access", ["write", "read-then-write"])
def test_write_to_a_sampled_block_survives_its_demotion(make_pool, access):
    """A block promoted clean is mapped write-protected; sampling unmaps it.
    The write that follows (directly, or after a read that took the hint
    fault) must mark it dirty, or demotion would drop it without writing."""
    pool = make_pool(dram=BUDGET, nvme="64MiB")
    a = pool.empty(2 * MiB // 8, dtype=np.uint64)  # the pool's only allocation
    fill(a, seed=2)
    pool.advise(a, "dontneed")
    assert pool.placement(a)["nvme"] == a.nbytes
    assert digest(a) == digest(pattern(0, a.size, 2))  # promoted by reads: clean
    assert wait_all_sampled(pool), "sampling never unmapped every block of the array"
    per = pool.block_size // 8
    before = pool.stats()["hint_faults"]
    if access == "write":
        a[::per] = pattern(0, a.size, 3)[::per]  # the write is the hint fault
    else:
        assert int(a[::per].sum()) == int(pattern(0, a.size, 2)[::per].sum())  # the read is
        a[::per] = pattern(0, a.size, 3)[::per]
    assert pool.stats()["hint_faults"] - before >= a.size // per, "the blocks were not sampled when accessed"
    pool.advise(a, "dontneed")
    assert pool.placement(a)["nvme"] == a.nbytes
    want = pattern(0, a.size, 2)
    want[::per] = pattern(0, a.size, 3)[::per]
    wrong = np.flatnonzero(a != want)
    assert wrong.size == 0, (f"{wrong.size} elements written after sampling were lost by the demotion, "
                             f"first at index {wrong[0]}")
    del a
    gc.collect()


@pytest.mark.parametrize("policy", tm.policy_names())
def test_data_stays_exact_with_sampling_under_memory_pressure(make_pool, policy):
    pool = make_pool(dram=BUDGET, nvme="128MiB", policy=policy, sampling=0.05)
    a = pool.empty(3 * BUDGET // 8, dtype=np.uint64)
    fill(a, seed=4)
    per = pool.block_size // 8
    rng = np.random.default_rng(4)
    version = np.full(a.size // per, 4)
    t_end = time.monotonic() + 1.0
    while time.monotonic() < t_end:  # random block reads and writes, with time to sample
        for b in rng.integers(0, version.size, 64):
            lo = int(b) * per
            if rng.random() < 0.5:
                version[b] += 1
                a[lo:lo + per] = pattern(lo, lo + per, int(version[b]))
            else:
                assert np.array_equal(a[lo:lo + per], pattern(lo, lo + per, int(version[b]))), f"block {b}"
        time.sleep(0.01)
    bad = [b for b in range(version.size)
           if not np.array_equal(a[b * per:(b + 1) * per], pattern(b * per, (b + 1) * per, int(version[b])))]
    assert not bad, f"{len(bad)} blocks read back wrong, e.g. {bad[:10]}"
    s = pool.stats()
    assert s["hint_faults"] > 0 and s["demotions"] > 0, s
    assert s["dram"]["peak"] <= s["dram"]["capacity"], s["dram"]
    del a
    gc.collect()


# ---- sampling off ----------------------------------------------------------------

def test_sampling_false_takes_no_hint_faults_on_resident_data(make_pool):
    pool = make_pool(dram=BUDGET, nvme="64MiB", sampling=False)
    a = pool.empty(4 * MiB // 8, dtype=np.uint64)
    a[:] = 1
    for _ in range(30):  # 0.3 s: six ticks of the background thread
        touch_blocks(a, pool.block_size)
        time.sleep(0.01)
    s = pool.stats()
    assert s["hint_faults"] == 0 and s["sampled"] == 0, (s["hint_faults"], s["sampled"])
    assert s["sample_ns"] == 0
    del a
    gc.collect()


@pytest.mark.parametrize("policy", tm.policy_names())
def test_sampling_false_takes_no_hint_faults_under_memory_pressure(make_pool, policy):
    """Off means off whichever policy demotes, CLOCK included."""
    pool = make_pool(dram=BUDGET, nvme="128MiB", sampling=False, policy=policy)
    a = pool.empty(4 * BUDGET // 8, dtype=np.uint64)
    for rnd in range(3):
        a[:] = rnd
        for i in range(0, a.size, 4 * MiB // 8):  # re-read a little of it
            a[i:i + MiB // 8].sum()
        time.sleep(0.05)
    s = pool.stats()
    assert s["demotions"] > 0
    assert s["hint_faults"] == 0 and s["sampled"] == 0, (
        f"sampling=False, yet {s['sampled']} blocks were unmapped for sampling and {s['hint_faults']} hint faults "
        "were taken")
    del a
    gc.collect()


# ---- its cost -----------------------------------------------------------------------

def test_sampling_costs_a_small_share_of_the_time(make_pool):
    """2 s of touching every block of resident data (the worst case: every
    sampled block is touched again at once): sample_ns, the time spent
    unmapping and serving hint faults, stays under 5% of the wall time (the
    budget is 1%; the margin is for noise)."""
    pool = make_pool(dram="64MiB", nvme="256MiB")
    a = pool.empty(32 * MiB // 8, dtype=np.uint64)
    a[:] = 1
    per = pool.block_size // 8
    s0 = pool.stats()
    t0 = time.monotonic()
    while time.monotonic() - t0 < 2.0:
        a[::per] += 1
    wall_ns = (time.monotonic() - t0) * 1e9
    s1 = pool.stats()
    hints = s1["hint_faults"] - s0["hint_faults"]
    share = (s1["sample_ns"] - s0["sample_ns"]) / wall_ns
    assert hints > 0, "no hint fault: sampling was not running, the share says nothing"
    assert share < 0.05, f"sampling took {share:.1%} of the time ({hints} hint faults)"
    del a
    gc.collect()


# ---- the argument -------------------------------------------------------------------

@pytest.mark.parametrize("bad", [-0.01, 0.51, 1, 2.0, "0.01", "high", None], ids=repr)
def test_bad_sampling_value_raises_valueerror(make_pool, bad):
    with pytest.raises(ValueError, match="sampling"):
        make_pool(dram=BUDGET, nvme="64MiB", sampling=bad)


@pytest.mark.parametrize("good", [0, 0.0, 0.001, 0.5, True, False])
def test_sampling_accepts_a_share_from_0_to_half_or_a_bool(make_pool, good):
    make_pool(dram=BUDGET, nvme="64MiB", sampling=good)
