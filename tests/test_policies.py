"""Pool(policy=...): the contract of docs/policies.md.

- Every built-in policy keeps data exact and the DRAM budget on a footprint
  four times DRAM, under sequential and random access.
- A user policy (the example of docs/policies.md, copied here verbatim) plugs
  in: its hooks run and its state shows it.
- A faulty policy is contained: every kind of wrong answer from
  select_victims, prefetch and promote is rejected, counted in
  stats()["policy_errors"] and described by last_error(), and the data and
  the budget come through intact. A hook with the wrong signature is refused
  when the pool is made.
- What a policy asks for is done: victims go to the tier named in out_tier,
  blocks named by promote come into DRAM ahead of need, on_access is told of
  every fault and hint.
- pool.policy_state() exposes the policy's arrays (and "info") as writable
  views of what the hooks use.
- fifo follows advice: blocks advised cold go first, blocks advised hot only
  when no other block can, and it names victims even when every DRAM block
  is advised hot.
- hotness keeps a small hot set in DRAM while a large cold array streams
  through it; fifo, by design, loses it unless it is advised hot.

The test policies are numba cfuncs compiled once at import (cache=True).
Pools live in a per-test directory (conftest.make_pool); every test deletes
its arrays before its pool is closed.
"""
import ctypes
import gc
import time

import numpy as np
import pytest
from numba import carray, cfunc

from patterns import MiB, digest, fill, first_mismatch, pattern

import tieredmem as tm
from tieredmem.policy import ON_ACCESS, PREFETCH, PROMOTE, SELECT_VICTIMS
from tieredmem.policy.base import (AHEAD, DRAM, F_ALLOC, F_BUSY, F_COLD, F_HOT, HINT, INFO_ARENA_BLOCKS,
                                   INFO_BLOCK_SIZE, INFO_DRAM_BLOCKS, INFO_LEN, MINOR, MISSING, NVME, PMEM, WP)
from tieredmem.policy.builtin import FifoPolicy

pytestmark = pytest.mark.timeout(120, method="thread")

BUDGET = 8 * MiB  # DRAM of most pools here (DRAM itself is the tier id)
BUILTIN = tm.policy_names()


def wait_until(condition, seconds=2.0, step=0.01):
    """Poll condition() until it is true or `seconds` pass; its last value."""
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


def assert_budget_held(pool):
    s = pool.stats()
    assert s["dram"]["peak"] <= s["dram"]["capacity"], s["dram"]
    assert s["budget_overruns"] == 0, s["last_error"]
    assert s["io_errors"] == 0 and s["checksum_errors"] == 0 and s["sigbus_sent"] == 0, s["last_error"]


# ---- the example of docs/policies.md, "Writing a policy" (verbatim) ---------

@cfunc(ON_ACCESS)
def recent_on_access(state, block, kind, now):
    info = carray(state[0], INFO_LEN, np.int64)
    last = carray(state[1], info[INFO_ARENA_BLOCKS], np.int64)
    last[block] = now


@cfunc(SELECT_VICTIMS)
def recent_select_victims(state, tier, flags, nblocks, want, out, out_tier):
    info = carray(state[0], INFO_LEN, np.int64)
    last = carray(state[1], info[INFO_ARENA_BLOCKS], np.int64)
    g = carray(state[2], 2, np.int64)          # g[0]: the hand, g[1]: calls
    g[1] += 1
    now = info[5]
    got = 0
    for _ in range(nblocks):
        b = g[0] if g[0] < nblocks else 0
        g[0] = b + 1
        if tier[b] == DRAM and not (flags[b] & F_BUSY) and now - last[b] > 64:
            out[got] = b
            got += 1
            if got == want:
                break
    return got


class RecentPolicy(tm.Policy):
    name = "recent"
    on_access = recent_on_access
    select_victims = recent_select_victims

    def state(self, arena_blocks, dram_blocks):
        return {"last": np.zeros(arena_blocks, np.int64), "g": np.zeros(2, np.int64)}


# ---- a policy that answers wrongly on demand ----------------------------------
# State "mode": [victims mode, prefetch mode, promote mode]; "calls": how
# often each hook ran. Mode 0 answers "nothing" (valid: the engine decides).
# The hooks never write beyond `want`/`max` entries: the engine's buffers are
# only that long, and a hook that overran them would corrupt memory, which no
# validation after the fact can contain.

V_OK, V_OUT_OF_RANGE, V_NEGATIVE_ID, V_MORE_THAN_WANT, V_DUPLICATES, V_NOT_IN_DRAM, V_BAD_OUT_TIER, \
    V_NEGATIVE_COUNT = range(8)
L_OK, L_GARBAGE_IDS, L_MORE_THAN_MAX, L_NEGATIVE_COUNT = range(4)  # prefetch and promote
CALL_VICTIMS, CALL_PREFETCH, CALL_PROMOTE = range(3)


@cfunc(SELECT_VICTIMS, cache=True)
def faulty_select_victims(state, tier, flags, nblocks, want, out, out_tier):
    mode = carray(state[1], 4, np.int64)[0]
    calls = carray(state[2], 4, np.int64)
    calls[CALL_VICTIMS] += 1
    if mode == V_OUT_OF_RANGE:
        for i in range(want):
            out[i] = nblocks + i
        return want
    if mode == V_NEGATIVE_ID:
        out[0] = -1
        return 1
    if mode == V_NEGATIVE_COUNT:
        return -1
    if mode == V_NOT_IN_DRAM:
        got = 0
        for b in range(nblocks):
            if tier[b] != DRAM:
                out[got] = b
                got += 1
                if got == want:
                    break
        return got
    if mode == V_MORE_THAN_WANT or mode == V_DUPLICATES or mode == V_BAD_OUT_TIER:
        got = 0
        for b in range(nblocks):
            if got == want:
                break
            if tier[b] == DRAM and not (flags[b] & F_BUSY):
                out[got] = b
                out_tier[got] = 1 if mode == V_BAD_OUT_TIER else 0  # 1 is DRAM: not a destination
                got += 1
        if mode == V_MORE_THAN_WANT:
            return want + 1
        if mode == V_DUPLICATES:
            if got < 2:
                return 0
            out[got - 1] = out[0]
        return got
    return 0


@cfunc(PREFETCH, cache=True)
def faulty_prefetch(state, tier, flags, nblocks, block, max_blocks, out):
    mode = carray(state[1], 4, np.int64)[1]
    calls = carray(state[2], 4, np.int64)
    calls[CALL_PREFETCH] += 1
    if mode == L_GARBAGE_IDS:
        # out of range both ways, and the faulting block itself (already read)
        n = max_blocks if max_blocks < 3 else 3
        for i in range(n):
            out[i] = -1 if i == 0 else (nblocks + 5 if i == 1 else block)
        return n
    if mode == L_MORE_THAN_MAX:
        return max_blocks + 1
    if mode == L_NEGATIVE_COUNT:
        return -1
    return 0


@cfunc(PROMOTE, cache=True)
def faulty_promote(state, tier, flags, nblocks, max_blocks, out):
    mode = carray(state[1], 4, np.int64)[2]
    calls = carray(state[2], 4, np.int64)
    calls[CALL_PROMOTE] += 1
    if mode == L_GARBAGE_IDS:
        # out of range both ways, and a block in DRAM (if any)
        n = max_blocks if max_blocks < 3 else 3
        resident = -2
        for b in range(nblocks):
            if tier[b] == DRAM:
                resident = b
                break
        for i in range(n):
            out[i] = -1 if i == 0 else (nblocks + 5 if i == 1 else resident)
        return n
    if mode == L_MORE_THAN_MAX:
        return max_blocks + 1
    if mode == L_NEGATIVE_COUNT:
        return -1
    return 0


class FaultyPolicy(tm.Policy):
    name = "faulty"
    select_victims = faulty_select_victims
    prefetch = faulty_prefetch
    promote = faulty_promote

    def __init__(self, victims=V_OK, prefetch=L_OK, promote=L_OK):
        self.modes = (victims, prefetch, promote)

    def state(self, arena_blocks, dram_blocks):
        mode = np.zeros(4, np.int64)
        mode[:3] = self.modes
        return {"mode": mode, "calls": np.zeros(4, np.int64)}


# ---- small policies that do one thing ------------------------------------------

@cfunc(SELECT_VICTIMS, cache=True)
def to_tier_select_victims(state, tier, flags, nblocks, want, out, out_tier):
    g = carray(state[1], 4, np.int64)  # g[0]: the hand, g[1]: the tier to ask for
    got = 0
    for _ in range(nblocks):
        b = g[0] if g[0] < nblocks else 0
        g[0] = b + 1
        if tier[b] == DRAM and not (flags[b] & F_BUSY):
            out[got] = b
            out_tier[got] = g[1]
            got += 1
            if got == want:
                break
    return got


class ToTierPolicy(tm.Policy):
    """Demotes in address order (a rotating hand), to the tier it is given."""
    name = "to-tier"
    select_victims = to_tier_select_victims

    def __init__(self, out_tier):
        self.out_tier = out_tier

    def state(self, arena_blocks, dram_blocks):
        g = np.zeros(4, np.int64)
        g[1] = self.out_tier
        return {"g": g}


@cfunc(PROMOTE, cache=True)
def promote_all_promote(state, tier, flags, nblocks, max_blocks, out):
    calls = carray(state[1], 1, np.int64)
    calls[0] += 1
    got = 0
    for b in range(nblocks):
        if got == max_blocks:
            break
        if (tier[b] == PMEM or tier[b] == NVME) and (flags[b] & F_ALLOC) and not (flags[b] & F_BUSY):
            out[got] = b
            got += 1
    return got


class PromoteAllPolicy(tm.Policy):
    """Asks for every allocated lower-tier block to come back."""
    name = "promote-all"
    promote = promote_all_promote

    def state(self, arena_blocks, dram_blocks):
        return {"calls": np.zeros(1, np.int64)}


@cfunc(ON_ACCESS, cache=True)
def count_kinds_on_access(state, block, kind, now):
    kinds = carray(state[1], 8, np.int64)
    kinds[kind] += 1


class CountKindsPolicy(tm.Policy):
    """Counts on_access calls by kind; CLOCK picks the victims."""
    name = "count-kinds"
    on_access = count_kinds_on_access

    def state(self, arena_blocks, dram_blocks):
        return {"kinds": np.zeros(8, np.int64)}


# ---- choosing a policy ----------------------------------------------------------

def test_policy_names_are_the_three_built_ins():
    assert tm.policy_names() == ("lru", "fifo", "hotness")


@pytest.mark.parametrize("name", BUILTIN)
def test_pool_reports_the_policy_it_was_made_with(make_pool, name):
    assert make_pool(dram=BUDGET, nvme="64MiB", policy=name).policy == name


def test_default_policy_is_lru(make_pool):
    assert make_pool(dram=BUDGET, nvme="64MiB").policy == "lru"


@pytest.mark.parametrize("name", ["mru", "LRU", "", "clock"])
def test_unknown_policy_name_raises_valueerror_naming_the_valid_ones(make_pool, name):
    with pytest.raises(ValueError) as exc:
        make_pool(dram=BUDGET, nvme="64MiB", policy=name)
    msg = str(exc.value)
    assert repr(name) in msg
    for valid in BUILTIN:
        assert valid in msg, msg


@pytest.mark.parametrize("obj", [42, None, object(), RecentPolicy], ids=["int", "None", "object", "Policy-class"])
def test_policy_that_is_neither_a_name_nor_a_policy_instance_raises_typeerror(make_pool, obj):
    with pytest.raises(TypeError, match="policy"):
        make_pool(dram=BUDGET, nvme="64MiB", policy=obj)


# ---- built-in policies: data and budget at 4x DRAM ------------------------------

@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_policy_keeps_data_and_budget_under_sequential_access(make_pool, name):
    pool = make_pool(dram=BUDGET, nvme="128MiB", policy=name)
    a = pool.empty(4 * BUDGET // 8, dtype=np.uint64)
    written = fill(a, seed=1)
    for rnd in range(2):
        if digest(a) != written:
            pytest.fail(f"{name}, pass {rnd}: {first_mismatch(a, 1)}")
    s = pool.stats()
    assert s["demotions"] > 0 and s["promotions"] > 0, "no data moved: the policy was not exercised"
    assert s["policy_errors"] == 0, s["last_error"]
    assert_budget_held(pool)
    del a
    gc.collect()


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_policy_keeps_data_and_budget_under_random_access(make_pool, name):
    pool = make_pool(dram=BUDGET, nvme="128MiB", policy=name)
    a = pool.empty(4 * BUDGET // 8, dtype=np.uint64)
    fill(a, seed=2)
    per = pool.block_size // 8
    nblocks = a.size // per
    rng = np.random.default_rng(3)
    want_seed = np.full(nblocks, 2)
    for b in rng.permutation(nblocks):  # every block once, in random order
        lo = int(b) * per
        assert np.array_equal(a[lo:lo + per], pattern(lo, lo + per, int(want_seed[b]))), f"block {b}"
        if rng.random() < 0.5:  # and rewrite half of them
            a[lo:lo + per] = pattern(lo, lo + per, 4)
            want_seed[b] = 4
    for b in range(nblocks):  # and all of them again, in order
        lo = b * per
        if not np.array_equal(a[lo:lo + per], pattern(lo, lo + per, int(want_seed[b]))):
            pytest.fail(f"{name}: block {b} (last written with seed {want_seed[b]}) reads back wrong")
    s = pool.stats()
    assert s["demotions"] > 0 and s["promotions"] > 0, "no data moved: the policy was not exercised"
    assert s["policy_errors"] == 0, s["last_error"]
    assert_budget_held(pool)
    del a
    gc.collect()


# ---- a user policy: the documented example ---------------------------------------

def test_documented_example_policy_runs_its_hooks_and_keeps_data(make_pool):
    pool = make_pool(dram="64MiB", nvme="1GiB", policy=RecentPolicy())
    assert pool.policy is not None and pool.policy.name == "recent"
    a = pool.zeros(32 << 20)                     # 256 MiB
    a += 1
    state = pool.policy_state()
    assert state["g"][1] > 0, "select_victims was never called"
    assert np.count_nonzero(state["last"]) > 0, "on_access never recorded an access"
    ones = sum(int(np.count_nonzero(a[i:i + (1 << 20)] == 1)) for i in range(0, a.size, 1 << 20))
    assert ones == a.size, f"{a.size - ones} elements are not 1"
    s = pool.stats()
    assert s["policy_errors"] == 0, s["last_error"]
    assert s["demotions"] > 0
    assert_budget_held(pool)
    del a, state
    gc.collect()


# ---- containment of a faulty policy --------------------------------------------

def run_workload_against(pool, hook):
    """Fill 3x DRAM (select_victims runs), read it back (prefetch runs), free
    DRAM room and wait for the background thread (promote runs). Returns the
    array and what was written to it."""
    a = pool.empty(3 * BUDGET // 8, dtype=np.uint64)
    written = fill(a, seed=5)
    assert digest(a) == written, first_mismatch(a, 5)
    room = pool.empty(BUDGET // 2 // 8, dtype=np.uint64)
    room[:] = 1
    del room
    gc.collect()
    calls = pool.policy_state()["calls"]
    index = {"select_victims": CALL_VICTIMS, "prefetch": CALL_PREFETCH, "promote": CALL_PROMOTE}[hook]
    assert wait_until(lambda: calls[index] > 0), f"{hook} was never called"
    if hook == "promote":  # let it run a few ticks
        assert wait_until(lambda: calls[index] >= 3)
    return a, written


VICTIM_FAULTS = {"out-of-range": V_OUT_OF_RANGE, "negative-id": V_NEGATIVE_ID, "more-than-want": V_MORE_THAN_WANT,
                 "duplicates": V_DUPLICATES, "not-in-dram": V_NOT_IN_DRAM, "bad-out-tier": V_BAD_OUT_TIER,
                 "negative-count": V_NEGATIVE_COUNT}
LIST_FAULTS = {"garbage-ids": L_GARBAGE_IDS, "more-than-max": L_MORE_THAN_MAX, "negative-count": L_NEGATIVE_COUNT}


def check_contained(pool, a, written, hook):
    if digest(a) != written:
        pytest.fail(f"a wrong {hook} answer changed data: {first_mismatch(a, 5)}")
    assert_budget_held(pool)
    s = pool.stats()
    assert s["policy_errors"] > 0, f"the wrong {hook} answers were not counted"
    err = pool.last_error()
    assert "policy" in err and hook in err, f"last_error() does not describe the wrong {hook} answer: {err!r}"


@pytest.mark.parametrize("fault", list(VICTIM_FAULTS))
def test_wrong_select_victims_answer_is_rejected_counted_and_described(make_pool, fault):
    pool = make_pool(dram=BUDGET, nvme="128MiB", policy=FaultyPolicy(victims=VICTIM_FAULTS[fault]))
    a, written = run_workload_against(pool, "select_victims")
    assert pool.stats()["demotions"] > 0, "nothing was demoted: CLOCK did not take over"
    check_contained(pool, a, written, "select_victims")
    del a
    gc.collect()


@pytest.mark.parametrize("fault", list(LIST_FAULTS))
def test_wrong_prefetch_answer_is_rejected_counted_and_described(make_pool, fault):
    pool = make_pool(dram=BUDGET, nvme="128MiB", policy=FaultyPolicy(prefetch=LIST_FAULTS[fault]))
    a, written = run_workload_against(pool, "prefetch")
    check_contained(pool, a, written, "prefetch")
    del a
    gc.collect()


@pytest.mark.parametrize("fault", list(LIST_FAULTS))
def test_wrong_promote_answer_is_rejected_counted_and_described(make_pool, fault):
    pool = make_pool(dram=BUDGET, nvme="128MiB", policy=FaultyPolicy(promote=LIST_FAULTS[fault]))
    a, written = run_workload_against(pool, "promote")
    assert pool.stats()["policy_promotions"] == 0, "a wrong promote answer promoted something"
    check_contained(pool, a, written, "promote")
    del a
    gc.collect()


def test_policy_answering_nothing_leaves_the_choice_to_the_engine_without_errors(make_pool):
    pool = make_pool(dram=BUDGET, nvme="128MiB", policy=FaultyPolicy())
    a, written = run_workload_against(pool, "select_victims")
    assert digest(a) == written
    s = pool.stats()
    assert s["demotions"] > 0
    assert s["policy_errors"] == 0, s["last_error"]
    assert_budget_held(pool)
    del a
    gc.collect()


@cfunc(PROMOTE, cache=True)
def promote_shaped(state, tier, flags, nblocks, max_blocks, out):
    return 0


def on_access_in_python(state, block, kind, now):
    pass


@pytest.mark.parametrize("hook, fn", [("select_victims", promote_shaped), ("on_access", on_access_in_python),
                                      ("prefetch", promote_shaped), ("promote", recent_on_access)],
                         ids=["select_victims-with-promote-signature", "on_access-plain-python",
                              "prefetch-with-promote-signature", "promote-with-on_access-signature"])
def test_hook_with_the_wrong_signature_raises_typeerror_when_the_pool_is_made(make_pool, hook, fn):
    policy = type("WrongSignature", (tm.Policy,), {hook: fn})()
    with pytest.raises(TypeError) as exc:
        make_pool(dram=BUDGET, nvme="64MiB", policy=policy)
    assert hook in str(exc.value)


# ---- what a policy asks for is done -----------------------------------------------

@pytest.mark.parametrize("out_tier, expected", [(NVME, "nvme"), (PMEM, "pmem"), (0, "pmem")],
                         ids=["nvme", "pmem", "engine-choice"])
def test_victims_go_to_the_tier_named_in_out_tier(make_pool, out_tier, expected):
    # PMEM is large enough for every victim: the engine's choice is PMEM, and
    # nothing is ever cascaded from PMEM to NVMe.
    pool = make_pool(dram=BUDGET, pmem="64MiB", nvme="128MiB", policy=ToTierPolicy(out_tier))
    a = pool.empty(3 * BUDGET // 8, dtype=np.uint64)
    written = fill(a, seed=6)
    where = pool.placement(a)
    other = "pmem" if expected == "nvme" else "nvme"
    assert where[expected] >= a.nbytes - BUDGET, where
    assert where[other] == 0, f"victims went to {other} although the policy asked for {expected}: {where}"
    assert pool.stats()[other]["peak"] == 0, pool.stats()[other]
    assert digest(a) == written, first_mismatch(a, 6)
    s = pool.stats()
    assert s["policy_errors"] == 0, s["last_error"]
    assert_budget_held(pool)
    del a
    gc.collect()


def test_blocks_named_by_promote_come_into_dram_ahead_of_need(make_pool):
    pool = make_pool(dram="16MiB", nvme="128MiB", policy=PromoteAllPolicy())
    a = pool.empty(4 * MiB // 8, dtype=np.uint64)
    written = fill(a, seed=7)
    faults, promoted = pool.stats()["faults"], pool.stats()["policy_promotions"]
    # Every block of a goes down now; DRAM has room, so the background asks
    # promote, which names them all (it may start before the advice is done).
    pool.advise(a, "dontneed")
    assert wait_until(lambda: pool.placement(a)["dram"] == a.nbytes, seconds=2), (
        f"promoted blocks did not arrive within 2 s: {pool.placement(a)}")
    s = pool.stats()
    assert s["policy_promotions"] - promoted >= a.nbytes // pool.block_size, s["policy_promotions"]
    assert s["faults"] == faults, "the blocks came in by faults, not by the policy"
    assert pool.policy_state()["calls"][0] > 0
    assert digest(a) == written, first_mismatch(a, 7)
    assert_budget_held(pool)
    del a
    gc.collect()


def test_on_access_sees_missing_ahead_and_hint_kinds_and_every_fault(make_pool):
    pool = make_pool(dram=BUDGET, nvme="128MiB", policy=CountKindsPolicy())
    big = pool.empty(3 * BUDGET // 8, dtype=np.uint64)
    written = fill(big, seed=8)     # first touches (MISSING) and zero fills ahead (AHEAD)
    assert digest(big) == written   # reads from NVMe (MISSING) and readahead (AHEAD)
    small = pool.empty(MiB // 8, dtype=np.uint64)
    small[:] = 1
    per = pool.block_size // 8
    kinds = pool.policy_state()["kinds"]

    def touched_and_hinted():
        small[::per].sum()  # resident: seen only when sampling unmapped it
        return kinds[HINT] > 0

    assert wait_until(touched_and_hinted, seconds=3), f"no HINT access within 3 s: kinds {kinds[:5]}"
    s = pool.stats()
    assert kinds[MISSING] > 0 and kinds[AHEAD] > 0, kinds[:5]
    assert kinds[HINT] == s["hint_faults"], (kinds[HINT], s["hint_faults"])
    accesses = int(kinds[MISSING] + kinds[MINOR] + kinds[WP] + kinds[HINT])
    assert accesses == s["faults"], f"on_access saw {accesses} accesses for {s['faults']} faults"
    del big, small, kinds
    gc.collect()


# ---- policy_state ------------------------------------------------------------------

def test_policy_state_of_lru_is_empty(make_pool):
    assert make_pool(dram=BUDGET, nvme="64MiB", policy="lru").policy_state() == {}


@pytest.mark.parametrize("policy, arrays", [
    ("fifo", ["ring_block", "ring_seq", "arrival", "g"]),
    ("hotness", ["count", "epoch", "g", "hist"]),
    (RecentPolicy(), ["last", "g"]),
], ids=["fifo", "hotness", "custom"])
def test_policy_state_has_info_then_the_policys_arrays(make_pool, policy, arrays):
    pool = make_pool(dram=BUDGET, nvme="64MiB", policy=policy)
    state = pool.policy_state()
    assert list(state) == ["info"] + arrays
    assert state["info"].dtype == np.int64 and state["info"].shape == (INFO_LEN,)
    assert all(v.flags.writeable for v in state.values())
    del state


@pytest.mark.parametrize("policy", ["fifo", "hotness"])
def test_policy_state_info_describes_the_pool(make_pool, policy):
    pool = make_pool(dram=BUDGET, nvme="64MiB", policy=policy)
    a = pool.empty(2 * BUDGET // 8, dtype=np.uint64)
    a[:] = 1  # hooks run, so the engine fills info in
    info = pool.policy_state()["info"]
    assert info[INFO_ARENA_BLOCKS] == pool.metadata()["tier"].size
    assert info[INFO_DRAM_BLOCKS] == BUDGET // pool.block_size
    assert info[INFO_BLOCK_SIZE] == pool.block_size
    del a, info
    gc.collect()


def test_policy_state_info_follows_a_resize(make_pool):
    pool = make_pool(dram=BUDGET, nvme="128MiB", policy="fifo")
    pool.resize(dram=2 * BUDGET)
    a = pool.empty(3 * BUDGET // 8, dtype=np.uint64)
    a[:] = 1  # hooks run after the resize
    assert pool.policy_state()["info"][INFO_DRAM_BLOCKS] == 2 * BUDGET // pool.block_size
    del a
    gc.collect()


def test_writes_to_policy_state_reach_the_hooks(make_pool):
    pool = make_pool(dram=BUDGET, nvme="128MiB", policy=FaultyPolicy())  # answers "nothing": valid
    a = pool.empty(2 * BUDGET // 8, dtype=np.uint64)
    a[:] = 1
    assert pool.stats()["policy_errors"] == 0
    pool.policy_state()["mode"][0] = V_OUT_OF_RANGE
    b = pool.empty(2 * BUDGET // 8, dtype=np.uint64)
    b[:] = 2
    assert pool.stats()["policy_errors"] > 0, "the mode written through policy_state() did not reach the hook"
    assert int(a.sum()) == a.size and int(b.sum()) == 2 * b.size
    del a, b
    gc.collect()


def test_policy_state_of_a_closed_pool_raises_valueerror(make_pool):
    pool = make_pool(dram=BUDGET, nvme="64MiB", policy="fifo")
    pool.close()
    with pytest.raises(ValueError, match="closed"):
        pool.policy_state()


# ---- fifo and advice, its hooks called directly ----------------------------------

def fifo_victims(want, hot=(), cold=(), arrived=8):
    """Victims fifo's select_victims names, `want` asked, after blocks
    0..arrived-1 entered DRAM in that order; `hot` and `cold` are advised."""
    policy = FifoPolicy()
    info = np.zeros(INFO_LEN, np.int64)
    info[INFO_ARENA_BLOCKS] = arrived
    arrays = [info, *policy.state(arrived, arrived).values()]
    state = (ctypes.c_void_p * len(arrays))(*(a.ctypes.data for a in arrays))
    for b in range(arrived):
        policy.on_access.ctypes(state, b, MISSING, b)
    tier = np.full(arrived, DRAM, np.uint8)
    flags = np.full(arrived, F_ALLOC, np.uint8)
    flags[list(hot)] |= F_HOT
    flags[list(cold)] |= F_COLD
    out, out_tier = np.zeros(want, np.int64), np.zeros(want, np.uint8)
    u8p, i64p = ctypes.POINTER(ctypes.c_uint8), ctypes.POINTER(ctypes.c_int64)
    got = policy.select_victims.ctypes(state, tier.ctypes.data_as(u8p), flags.ctypes.data_as(u8p), arrived, want,
                                       out.ctypes.data_as(i64p), out_tier.ctypes.data_as(u8p))
    return out[:got].tolist()


def test_fifo_without_advice_names_victims_in_order_of_arrival():
    assert fifo_victims(3) == [0, 1, 2]


def test_fifo_takes_hot_advised_blocks_only_when_no_other_block_is_left():
    assert fifo_victims(6, hot=[0, 1, 2, 3]) == [4, 5, 6, 7, 0, 1]


def test_fifo_names_victims_when_every_dram_block_is_advised_hot():
    # The engine must always make progress: hot advice only orders victims.
    assert fifo_victims(3, hot=range(8)) == [0, 1, 2]


def test_fifo_takes_cold_advised_blocks_first():
    assert fifo_victims(3, cold=[5]) == [5, 0, 1]


def test_fifo_names_a_cold_advised_block_once():
    assert fifo_victims(8, cold=[0, 5]) == [0, 5, 1, 2, 3, 4, 6, 7]


# ---- hotness keeps a hot set that fifo loses --------------------------------------

def hot_set_residency(make_pool, policy, advice=None):
    """Share of a 2 MiB hot set (given `advice`, if any) found in DRAM while
    a 4x DRAM cold array is written through a 16 MiB DRAM, a DRAM-full of it
    between two rounds of touches of the hot set; averaged over the rounds."""
    dram = 16 * MiB
    pool = make_pool(dram=dram, nvme="256MiB", policy=policy)
    per = pool.block_size // 8
    hot = pool.empty(2 * MiB // 8, dtype=np.uint64)
    hot[:] = 9
    if advice is not None:
        pool.advise(hot, advice)
    for _ in range(10):  # ~0.5 s of touches: sampling sees them as hint faults
        for _ in range(50):
            hot[::per].sum()
        time.sleep(0.05)
    cold = pool.empty(4 * dram // 8, dtype=np.uint64)
    step = dram // 8
    seen = []
    for i in range(0, cold.size, step):
        cold[i:i + step] = 1
        seen.append(pool.placement(hot)["dram"] / hot.nbytes)
        for _ in range(20):
            hot[::per].sum()
        time.sleep(0.05)
    assert int(hot.sum()) == 9 * hot.size
    assert_budget_held(pool)
    del hot, cold
    gc.collect()
    return float(np.mean(seen)), seen


def test_hotness_keeps_a_hot_set_in_dram_while_a_cold_array_streams_through(make_pool):
    share, seen = hot_set_residency(make_pool, "hotness")
    assert share >= 0.75, f"hotness kept only {share:.0%} of the hot set in DRAM (per round: {seen})"


def test_fifo_without_advice_loses_the_hot_set_to_a_cold_array_streaming_through(make_pool):
    # The counterpart of the tests around it: the scenario does evict an
    # unprotected hot set, so keeping it is the policy's (or the advice's) doing.
    # On the median round: fifo drops from its ring the blocks it names, and
    # the engine may not take some of them (the latest faults' blocks, blocks
    # pinned or in flight), which then stay in DRAM unseen by fifo; with
    # background writeback that keeps the hot set for about one round in four.
    share, seen = hot_set_residency(make_pool, "fifo")
    assert float(np.median(seen)) <= 0.25, f"fifo kept {share:.0%} of the hot set in DRAM (per round: {seen})"


def test_fifo_keeps_a_hot_advised_set_in_dram_while_a_cold_array_streams_through(make_pool):
    share, seen = hot_set_residency(make_pool, "fifo", advice="hot")
    assert share >= 0.9, f"fifo kept only {share:.0%} of the hot-advised set in DRAM (per round: {seen})"
