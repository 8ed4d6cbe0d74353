"""Run-time controls (docs/policies.md, "Run-time controls"): resizing the
DRAM budget, advice on arrays and views, access traces, and emulated PMEM
speed.

Pools live in a per-test directory (conftest.make_pool); every test deletes
its arrays before its pool is closed.
"""
import gc
import subprocess
import sys
import time

import numpy as np
import pytest

from patterns import MiB, digest, fill, first_mismatch, pattern

import tieredmem as tm

pytestmark = pytest.mark.timeout(120, method="thread")

BUDGET = 16 * MiB


def dram_of(pool, a):
    return pool.placement(a)["dram"]


# ---- resize ----------------------------------------------------------------------

def test_shrinking_the_budget_demotes_at_once(make_pool):
    pool = make_pool(dram=BUDGET, nvme="128MiB")
    a = pool.empty(12 * MiB // 8, dtype=np.uint64)
    written = fill(a, seed=1)
    assert dram_of(pool, a) == a.nbytes
    pool.resize(dram="4MiB")
    s = pool.stats()  # before anything touches the array again
    assert s["dram"]["capacity"] == 4 * MiB
    assert s["dram"]["used"] <= 4 * MiB, s["dram"]
    assert dram_of(pool, a) <= 4 * MiB
    assert s["budget_overruns"] == 0, s["last_error"]
    assert digest(a) == written, first_mismatch(a, 1)
    assert pool.stats()["dram"]["used"] <= 4 * MiB
    del a
    gc.collect()


def test_shrinking_the_budget_during_a_scan_keeps_the_readahead_within_it(make_pool):
    """A readahead in flight was sized for the old budget: after a shrink it
    must not be mapped all at once past the new one."""
    pool = make_pool(dram="1MiB", nvme="64MiB", block_size="4KiB")
    a = pool.empty(7 * MiB // 8, dtype=np.uint64)
    b = pool.empty(7 * MiB // 8, dtype=np.uint64)
    a[:] = 1
    b[:] = 2
    assert int(a.sum()) == a.size  # its stream reads ahead into b
    pool.resize(dram="128KiB")
    assert int(b.sum()) == 2 * b.size
    s = pool.stats()
    assert s["readahead"] > 0, "the scan read nothing ahead: the case is not exercised"
    assert s["budget_overruns"] == 0, s["last_error"]
    del a, b
    gc.collect()


def test_growing_the_budget_lets_more_stay_resident(make_pool):
    pool = make_pool(dram="8MiB", nvme="128MiB")
    a = pool.empty(16 * MiB // 8, dtype=np.uint64)
    written = fill(a, seed=2)
    assert digest(a) == written
    assert dram_of(pool, a) <= 8 * MiB
    pool.resize(dram="32MiB")
    assert pool.stats()["dram"]["capacity"] == 32 * MiB
    assert digest(a) == written  # brings it all in: it fits now
    demotions = pool.stats()["demotions"]
    assert digest(a) == written
    assert dram_of(pool, a) == a.nbytes, pool.placement(a)
    assert pool.stats()["demotions"] == demotions, "a second pass still demoted: the new budget did not hold it"
    del a
    gc.collect()


@pytest.mark.parametrize("size", ["32KiB", 0, 65535])
def test_resize_below_one_block_raises_valueerror(make_pool, size):
    pool = make_pool(dram=BUDGET, nvme="64MiB")
    with pytest.raises(ValueError, match="block"):
        pool.resize(dram=size)
    assert pool.stats()["dram"]["capacity"] == BUDGET


def test_resize_beyond_what_the_arena_allows_raises_valueerror(make_pool):
    pool = make_pool(dram=BUDGET, nvme="64MiB")
    with pytest.raises(ValueError, match="arena"):
        pool.resize(dram="1GiB")
    assert pool.stats()["dram"]["capacity"] == BUDGET


def test_resize_that_would_not_hold_the_allocations_raises_memoryerror_and_changes_nothing(make_pool):
    pool = make_pool(dram="8MiB", nvme="32MiB")
    cap = pool.stats()["capacity"]
    a = pool.empty(cap - pool.block_size, dtype=np.uint8)  # all but one block
    a[::4096] = 7
    with pytest.raises(MemoryError) as exc:
        pool.resize(dram="4MiB")
    assert "allocated" in str(exc.value), str(exc.value)
    s = pool.stats()
    assert s["dram"]["capacity"] == 8 * MiB and s["capacity"] == cap, s
    assert int(np.count_nonzero(a[::4096] == 7)) == a[::4096].size
    del a
    gc.collect()


def test_pool_without_a_lower_tier_cannot_shrink_below_its_allocations(make_pool):
    pool = make_pool(dram=BUDGET, nvme=0)
    a = pool.empty(12 * MiB // 8, dtype=np.uint64)
    written = fill(a, seed=3)
    with pytest.raises(MemoryError):
        pool.resize(dram="8MiB")
    assert pool.stats()["dram"]["capacity"] == BUDGET
    pool.resize(dram="12MiB")  # exactly what is allocated still fits
    assert pool.stats()["dram"]["capacity"] == 12 * MiB
    assert digest(a) == written, first_mismatch(a, 3)
    del a
    gc.collect()


# ---- advise ----------------------------------------------------------------------

def test_advise_willneed_brings_a_lower_tier_array_into_dram(make_pool):
    # No sampling: its hint faults on the blocks brought in would be faults too.
    pool = make_pool(dram=BUDGET, nvme="128MiB", sampling=0)
    a = pool.empty(4 * MiB // 8, dtype=np.uint64)
    written = fill(a, seed=4)
    pool.advise(a, "dontneed")
    assert pool.placement(a)["nvme"] == a.nbytes
    faults = pool.stats()["faults"]
    pool.advise(a, "willneed")
    assert dram_of(pool, a) == a.nbytes, pool.placement(a)
    assert pool.stats()["faults"] == faults, "willneed took faults: it should read ahead of them"
    assert digest(a) == written, first_mismatch(a, 4)
    assert pool.stats()["faults"] == faults, "the data was not in place after willneed"
    del a
    gc.collect()


def test_advise_dontneed_moves_an_array_out_of_dram_keeping_its_data(make_pool):
    pool = make_pool(dram=BUDGET, nvme="128MiB")
    a = pool.empty(4 * MiB // 8, dtype=np.uint64)
    written = fill(a, seed=5)
    assert dram_of(pool, a) == a.nbytes
    pool.advise(a, "dontneed")
    assert pool.placement(a) == {"unbacked": 0, "dram": 0, "pmem": 0, "nvme": a.nbytes}
    assert pool.stats()["dram"]["used"] == 0
    assert digest(a) == written, "dontneed lost data: " + str(first_mismatch(a, 5))
    del a
    gc.collect()


def test_advise_dontneed_on_a_pmem_pool_sends_the_array_to_pmem(make_pool):
    pool = make_pool(dram=BUDGET, pmem="64MiB", nvme=0)
    a = pool.empty(4 * MiB // 8, dtype=np.uint64)
    written = fill(a, seed=6)
    pool.advise(a, "dontneed")
    assert pool.placement(a)["pmem"] == a.nbytes
    assert digest(a) == written
    del a
    gc.collect()


@pytest.mark.parametrize("policy", ["lru", "hotness"])
def test_advise_cold_blocks_are_demoted_first(make_pool, policy):
    """12 MiB resident in 16 MiB of DRAM, its second half advised cold; 5 MiB
    more need ~4 MiB of room (one 4 MiB batch): it all comes from the cold
    half, none from the other. (fifo demotes in arrival order by design.)"""
    pool = make_pool(dram=BUDGET, nvme="128MiB", policy=policy)
    a = pool.empty(12 * MiB // 8, dtype=np.uint64)
    written = fill(a, seed=7)
    warm, cold = a[:a.size // 2], a[a.size // 2:]
    pool.advise(cold, "cold")
    b = pool.empty(5 * MiB // 8, dtype=np.uint64)
    b[:] = 1
    assert pool.stats()["demotions"] > 0, "nothing was demoted: no pressure"
    warm_out, cold_out = warm.nbytes - dram_of(pool, warm), cold.nbytes - dram_of(pool, cold)
    assert warm_out == 0 and cold_out > 0, (
        f"{policy}: {warm_out / MiB} MiB of the un-advised half left DRAM, {cold_out / MiB} MiB of the cold half")
    assert digest(a) == written
    del a, warm, cold, b
    gc.collect()


@pytest.mark.parametrize("policy", ["lru", "hotness"])
def test_advise_hot_keeps_an_array_resident_under_pressure(make_pool, policy):
    pool = make_pool(dram=BUDGET, nvme="256MiB", policy=policy)
    hot = pool.empty(4 * MiB // 8, dtype=np.uint64)
    written = fill(hot, seed=8)
    pool.advise(hot, "dontneed")
    pool.advise(hot, "hot")  # also brings it in
    assert dram_of(pool, hot) == hot.nbytes, pool.placement(hot)
    stream = pool.empty(4 * BUDGET // 8, dtype=np.uint64)
    stream[:] = 1  # 4x DRAM through it, and read back
    assert int(stream[::8192].sum()) == stream[::8192].size
    assert dram_of(pool, hot) == hot.nbytes, f"{policy}: the hot array was demoted: {pool.placement(hot)}"
    assert digest(hot) == written
    del hot, stream
    gc.collect()


COPY_PAST_A_HOT_BLOCK = """
import sys
import numpy as np
import tieredmem as tm
pool = tm.Pool(dram="128KiB", nvme="64MiB", nvme_path=sys.argv[1], block_size="64KiB", threshold=0)
with tm.use(pool):
    hot = np.ones(64 * 1024, dtype=np.uint8)  # one of the two DRAM blocks, pinned
    pool.advise(hot, "hot")
    a = np.full(600_000, 5, dtype=np.uint8)
    b = np.full(600_000, 6, dtype=np.uint8)  # pushes a out
    a.resize(700_000, refcheck=False)  # memcpy: one instruction touches a block of each
assert (a[:600_000] == 5).all() and (b == 6).all()
assert pool.stats()["budget_overruns"] == 0, pool.stats()["last_error"]
"""


def test_a_copy_between_two_blocks_completes_when_advice_pins_the_rest_of_dram(nvme_dir):
    """With one DRAM block left free by hot advice, the two blocks of a copy
    used to evict each other forever; the blocks of the latest faults are now
    taken last. Run in a child, so that a livelock fails instead of hanging."""
    try:
        res = subprocess.run([sys.executable, "-c", COPY_PAST_A_HOT_BLOCK, str(nvme_dir)], capture_output=True,
                             text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the copy made no progress in 60 s: its two blocks evict each other")
    assert res.returncode == 0, res.stderr[-2000:]


def test_advise_normal_forgets_hot(make_pool):
    pool = make_pool(dram=BUDGET, nvme="256MiB")
    a = pool.empty(4 * MiB // 8, dtype=np.uint64)
    a[:] = 1
    pool.advise(a, "hot")
    pool.advise(a, "normal")
    stream = pool.empty(4 * BUDGET // 8, dtype=np.uint64)
    stream[:] = 1
    stream[:] = 2
    assert dram_of(pool, a) < a.nbytes, "advice 'normal' did not clear 'hot'"
    assert int(a.sum()) == a.size
    del a, stream
    gc.collect()


def reread_from_nvme(pool, a, advice):
    """Push `a` to NVMe, give it `advice`, read it all; the counters' change."""
    pool.advise(a, "dontneed")
    pool.advise(a, advice)
    s0 = pool.stats()
    a.sum()
    s1 = pool.stats()
    return {k: s1[k] - s0[k] for k in ("faults", "promotions", "prefetched")}


def test_advise_sequential_reads_a_full_batch_from_the_first_fault(make_pool):
    pool = make_pool(dram=BUDGET, nvme="128MiB")
    a = pool.empty(8 * MiB // 8, dtype=np.uint64)
    written = fill(a, seed=9)
    blocks = a.nbytes // pool.block_size
    d = reread_from_nvme(pool, a, "sequential")
    assert d["promotions"] == blocks, d
    batch_blocks = 4 * MiB // pool.block_size
    assert d["faults"] <= blocks // batch_blocks + 1, f"sequential advice: {d['faults']} faults for {blocks} blocks"
    assert digest(a) == written
    del a
    gc.collect()


def test_advise_random_reads_no_block_ahead(make_pool):
    pool = make_pool(dram=BUDGET, nvme="128MiB")
    a = pool.empty(8 * MiB // 8, dtype=np.uint64)
    written = fill(a, seed=10)
    blocks = a.nbytes // pool.block_size
    d = reread_from_nvme(pool, a, "random")
    assert d["promotions"] == blocks and d["prefetched"] == 0, d
    assert d["faults"] >= blocks, d
    assert digest(a) == written
    del a
    gc.collect()


def test_advise_normal_forgets_random(make_pool):
    pool = make_pool(dram=BUDGET, nvme="128MiB")
    a = pool.empty(8 * MiB // 8, dtype=np.uint64)
    a[:] = 3
    pool.advise(a, "random")
    d = reread_from_nvme(pool, a, "normal")
    assert d["prefetched"] > 0, d
    assert int(a.sum()) == 3 * a.size
    del a
    gc.collect()


@pytest.mark.parametrize("advice", ["willneed", "dontneed", "cold", "hot", "sequential", "random", "normal"])
def test_every_advice_keeps_data_exact_under_pressure(make_pool, advice):
    pool = make_pool(dram="8MiB", nvme="128MiB")
    a = pool.empty(24 * MiB // 8, dtype=np.uint64)
    fill(a, seed=11)
    third = a.size // 3
    pool.advise(a[third:2 * third], advice)
    a[:third] = pattern(0, third, 12)
    assert digest(a, third) == digest(pattern(third, a.size, 11)), first_mismatch(a, 11, lo=third)
    assert first_mismatch(a, 12, hi=third) is None
    assert pool.stats()["dram"]["peak"] <= 8 * MiB
    del a
    gc.collect()


def test_advise_on_a_slice_moves_only_the_blocks_it_spans(make_pool):
    pool = make_pool(dram=BUDGET, nvme="128MiB")
    a = pool.empty(8 * MiB // 8, dtype=np.uint64)
    written = fill(a, seed=13)
    per = pool.block_size // 8
    # elements from the middle of block 10 to the middle of block 20: blocks 10..20
    view = a[10 * per + per // 2:20 * per + per // 2]
    pool.advise(view, "dontneed")
    assert pool.placement(a[10 * per:21 * per])["nvme"] == 11 * pool.block_size
    assert dram_of(pool, a[:10 * per]) == 10 * pool.block_size
    assert dram_of(pool, a[21 * per:]) == a[21 * per:].nbytes
    assert digest(a) == written
    del a, view
    gc.collect()


def test_advise_on_a_strided_view_covers_the_span_of_its_elements(make_pool):
    pool = make_pool(dram=BUDGET, nvme="128MiB")
    a = pool.empty(8 * MiB // 8, dtype=np.uint64)
    a[:] = 1
    per = pool.block_size // 8
    pool.advise(a[per * 4:per * 8:per], "dontneed")  # first elements of blocks 4..7
    assert pool.placement(a[4 * per:8 * per])["nvme"] == 4 * pool.block_size  # 4..7 (the last one is block 7)
    assert dram_of(pool, a[:4 * per]) == 4 * pool.block_size
    assert dram_of(pool, a[8 * per:]) == a[8 * per:].nbytes
    del a
    gc.collect()


@pytest.mark.parametrize("advice", ["WILLNEED", "free", "", None, 0])
def test_unknown_advice_raises_valueerror_listing_the_known_ones(make_pool, advice):
    pool = make_pool(dram=BUDGET, nvme="64MiB")
    a = pool.zeros(MiB // 8)
    with pytest.raises(ValueError) as exc:
        pool.advise(a, advice)
    msg = str(exc.value)
    for known in ("willneed", "dontneed", "cold", "hot", "sequential", "random", "normal"):
        assert known in msg, msg
    del a
    gc.collect()


def test_advise_on_an_array_not_in_the_pool_raises_valueerror(make_pool):
    pool = make_pool(dram=BUDGET, nvme="64MiB")
    other = make_pool(dram=BUDGET, nvme="64MiB")
    b = other.zeros(MiB // 8)
    for a in (np.zeros(MiB // 8), b):
        with pytest.raises(ValueError, match="not in this pool"):
            pool.advise(a, "willneed")
    del b
    gc.collect()


@pytest.mark.parametrize("obj", [[1.0, 2.0], memoryview(b"abc"), 3], ids=["list", "memoryview", "int"])
def test_advise_on_a_non_array_raises_typeerror(make_pool, obj):
    pool = make_pool(dram=BUDGET, nvme="64MiB")
    with pytest.raises(TypeError):
        pool.advise(obj, "willneed")


# ---- traces ---------------------------------------------------------------------------

def traced_workload(pool):
    """Fill 2x DRAM and read it back; the array."""
    a = pool.empty(2 * pool.stats()["dram"]["capacity"] // 8, dtype=np.uint64)
    written = fill(a, seed=14)
    assert digest(a) == written
    return a


def test_trace_is_a_1d_int64_array_of_block_ids_one_per_fault(make_pool):
    pool = make_pool(dram="8MiB", nvme="128MiB")
    nblocks = pool.metadata()["tier"].size
    faults = pool.stats()["faults"]
    pool.start_trace()
    a = traced_workload(pool)
    trace = pool.stop_trace()
    faults = pool.stats()["faults"] - faults
    assert isinstance(trace, np.ndarray) and trace.dtype == np.int64 and trace.ndim == 1
    assert trace.size > 0
    assert trace.min() >= 0 and trace.max() < nblocks
    assert trace.size == faults, f"{trace.size} events for {faults} faults"
    assert np.unique(trace).size <= a.nbytes // pool.block_size
    del a
    gc.collect()


def test_trace_records_nothing_after_stop(make_pool):
    pool = make_pool(dram="8MiB", nvme="128MiB")
    pool.start_trace()
    trace = pool.stop_trace()
    assert trace.size == 0
    events = pool.stats()["trace_events"]
    a = traced_workload(pool)
    assert pool.stats()["trace_events"] == events
    del a
    gc.collect()


def test_stop_trace_with_a_path_saves_it_with_numpy_save(make_pool, tmp_path):
    pool = make_pool(dram="8MiB", nvme="128MiB")
    pool.start_trace()
    a = traced_workload(pool)
    path = tmp_path / "trace.npy"
    trace = pool.stop_trace(path)
    loaded = np.load(path)
    assert loaded.dtype == np.int64
    assert np.array_equal(loaded, trace)
    del a
    gc.collect()


def test_stop_trace_without_start_raises_runtimeerror(make_pool):
    pool = make_pool(dram="8MiB", nvme="64MiB")
    with pytest.raises(RuntimeError):
        pool.stop_trace()


def test_start_trace_twice_raises_runtimeerror_and_keeps_the_first(make_pool):
    pool = make_pool(dram="8MiB", nvme="128MiB")
    pool.start_trace()
    with pytest.raises(RuntimeError):
        pool.start_trace()
    a = traced_workload(pool)
    assert pool.stop_trace().size > 0
    with pytest.raises(RuntimeError):
        pool.stop_trace()
    del a
    gc.collect()


@pytest.mark.parametrize("bad", [0, -1, 1.5, "10"])
def test_start_trace_with_a_bad_max_events_raises_valueerror(make_pool, bad):
    pool = make_pool(dram="8MiB", nvme="64MiB")
    with pytest.raises(ValueError, match="max_events"):
        pool.start_trace(max_events=bad)
    pool.start_trace()  # nothing was started
    pool.stop_trace()


def test_trace_beyond_max_events_is_dropped_and_counted(make_pool):
    pool = make_pool(dram="8MiB", nvme="128MiB")
    before = pool.stats()
    pool.start_trace(max_events=10)
    a = traced_workload(pool)
    trace = pool.stop_trace()
    s = pool.stats()
    faults = s["faults"] - before["faults"]
    assert faults > 10
    assert trace.size == 10
    assert s["trace_events"] - before["trace_events"] == 10
    assert s["trace_dropped"] - before["trace_dropped"] == faults - 10
    del a
    gc.collect()


def test_recorded_trace_replays_in_the_simulator_and_belady(make_pool):
    pool = make_pool(dram="8MiB", nvme="128MiB")
    pool.start_trace()
    a = traced_workload(pool)
    trace = pool.stop_trace()
    dram_blocks = 8 * MiB // pool.block_size
    best = tm.policy.belady(trace, dram_blocks)
    assert 0.0 <= best <= 1.0
    for name in tm.policy.POLICIES:
        r = tm.policy.simulate(trace, name, dram_blocks)
        assert r["accesses"] == trace.size
        assert r["distinct_blocks"] == np.unique(trace).size
        assert r["dram_hit_ratio"] <= best + 1e-12, (name, r["dram_hit_ratio"], best)
    del a
    gc.collect()


# ---- emulated PMEM speed -----------------------------------------------------------

PRESETS = {
    "optane": {"read_ns": 300, "write_ns": 100, "read_gbps": 6.6, "write_gbps": 2.3},
    "cxl": {"read_ns": 250, "write_ns": 250, "read_gbps": 20.0, "write_gbps": 20.0},
}


@pytest.mark.parametrize("preset", list(PRESETS))
def test_pmem_emulation_presets_have_the_documented_figures(make_pool, preset):
    pool = make_pool(dram="8MiB", pmem="32MiB", nvme="64MiB", pmem_emulation=preset)
    assert pool.pmem_emulation == PRESETS[preset]


def test_pmem_emulation_explicit_values_fill_the_others_with_zero(make_pool):
    pool = make_pool(dram="8MiB", pmem="32MiB", nvme="64MiB", pmem_emulation="read_ns=500, read_gbps=1.5")
    assert pool.pmem_emulation == {"read_ns": 500, "write_ns": 0, "read_gbps": 1.5, "write_gbps": 0}


def test_pool_without_pmem_emulation_reports_none(make_pool, monkeypatch):
    monkeypatch.delenv("TIEREDMEM_PMEM_EMULATION", raising=False)
    assert make_pool(dram="8MiB", pmem="32MiB", nvme="64MiB").pmem_emulation is None


@pytest.mark.parametrize("spec, named", [
    ("speed=3", "speed"),
    ("read_ns=fast", "read_ns"),
    ("write_gbps=-1", "write_gbps"),
    ("read_gbps=inf", "read_gbps"),
    ("read_ns=nan", "read_ns"),
    ("optane3", "optane3"),
])
def test_bad_pmem_emulation_raises_valueerror_naming_what_is_wrong(make_pool, spec, named):
    with pytest.raises(ValueError) as exc:
        make_pool(dram="8MiB", pmem="32MiB", nvme="64MiB", pmem_emulation=spec)
    msg = str(exc.value)
    assert msg.startswith("pmem_emulation"), msg
    assert named in msg, msg


def test_pmem_emulation_without_a_pmem_tier_raises_valueerror(make_pool):
    with pytest.raises(ValueError, match="pmem"):
        make_pool(dram="8MiB", pmem=0, nvme="64MiB", pmem_emulation="optane")


def test_pmem_emulation_comes_from_the_environment_when_not_given(make_pool, monkeypatch):
    monkeypatch.setenv("TIEREDMEM_PMEM_EMULATION", "cxl")
    assert make_pool(dram="8MiB", pmem="32MiB", nvme="64MiB").pmem_emulation == PRESETS["cxl"]
    explicit = make_pool(dram="8MiB", pmem="32MiB", nvme="64MiB", pmem_emulation="optane")
    assert explicit.pmem_emulation == PRESETS["optane"], "the argument must win over the environment"


def timed_pass(pool, a, fn):
    s0 = pool.stats()
    t0 = time.perf_counter()
    fn(a)
    elapsed = time.perf_counter() - t0
    s1 = pool.stats()
    return elapsed, s1["bytes_read"] - s0["bytes_read"], s1["bytes_written"] - s0["bytes_written"]


def test_emulated_pmem_read_bandwidth_bounds_promotion_time(make_pool):
    """read_gbps=0.2: reading data back from PMEM takes at least its size
    over 0.2 GB/s (the emulation busy-waits on the handler thread)."""
    pool = make_pool(dram="8MiB", pmem="128MiB", nvme=0, pmem_emulation="read_gbps=0.2")
    a = pool.empty(64 * MiB // 8, dtype=np.uint64)
    written = fill(a, seed=15)
    elapsed, read, _ = timed_pass(pool, a, digest)
    assert read >= 48 * MiB, f"only {read} bytes came from PMEM"
    assert elapsed >= 0.95 * read / 0.2e9, f"{read >> 20} MiB read from PMEM in {elapsed:.3f} s: faster than 0.2 GB/s"
    assert digest(a) == written
    del a
    gc.collect()


def test_emulated_pmem_write_bandwidth_bounds_demotion_time(make_pool):
    pool = make_pool(dram="8MiB", pmem="128MiB", nvme=0, pmem_emulation="write_gbps=0.2")
    a = pool.empty(64 * MiB // 8, dtype=np.uint64)
    elapsed, _, wrote = timed_pass(pool, a, lambda x: fill(x, seed=16))
    assert wrote >= 48 * MiB, f"only {wrote} bytes went to PMEM"
    assert elapsed >= 0.95 * wrote / 0.2e9, f"{wrote >> 20} MiB written to PMEM in {elapsed:.3f} s: faster than 0.2 GB/s"
    assert first_mismatch(a, 16) is None
    del a
    gc.collect()
