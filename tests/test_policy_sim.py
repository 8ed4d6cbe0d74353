"""Specification of the offline policy simulator (tieredmem.policy): exact
hit counts on hand-computed traces, Belady's MIN against exhaustive search,
properties on the synthetic traces, the stream layer (use-once and loops),
and input validation. Throughput is measured by benchmarks/bench_policy_sim.py,
not asserted here.

The hand-computed traces and the policies' reference model replay the
policies alone (streams=False): their block ids are consecutive, which the
stream layer would read as streams. The stream layer has its own section."""
import functools
import itertools

import numpy as np
import pytest

from tieredmem import policy
from tieredmem.policy import belady, simulate, traces
from tieredmem.policy.simulate import COOL_PERIOD_FACTOR, stream_sizes

POLICIES = ("lru", "fifo", "hotness")


def hits(trace, name, dram, pmem=0):
    """DRAM hits of the policy alone."""
    return simulate(trace, name, dram, pmem, streams=False)["dram_hits"]


# ---------------------------------------------------------------- hand-computed traces

def test_policy_names():
    assert policy.POLICIES == POLICIES


def test_lru_and_fifo_differ():
    # DRAM of 2. LRU keeps 0 (re-used before each new block): hits at 2, 4, 6.
    # FIFO evicts 0 as the oldest arrival when 2 comes in, so 0 misses at 4.
    trace = [0, 1, 0, 2, 0, 3, 0]
    assert hits(trace, "lru", 2) == 3
    assert hits(trace, "fifo", 2) == 2
    assert belady(trace, 2) == 3 / 7


def test_hotness_keeps_the_frequent_block():
    # When 2 arrives, 0 has count 3 (bin 2) and 1 count 1 (bin 1); only one
    # block fits above the threshold, so 0 is hot and 1, the cold one, goes.
    # LRU and FIFO evict 0 instead and miss it at the end.
    trace = [0, 0, 0, 1, 2, 0]
    assert hits(trace, "hotness", 2) == 3
    assert hits(trace, "lru", 2) == 2
    assert hits(trace, "fifo", 2) == 2


def test_hotness_resists_a_scan():
    # 0 and 1 are hot (count 2). The scan 2, 3, 4 must evict one of them
    # (both resident blocks are hot: the LRU one, 0, goes), then each scan
    # block is the cold victim of the next, so 1 survives. LRU and FIFO lose
    # both. Belady does as well as hotness here.
    trace = [0, 1, 0, 1, 2, 3, 4, 0, 1]
    assert hits(trace, "hotness", 2) == 3
    assert hits(trace, "lru", 2) == 2
    assert hits(trace, "fifo", 2) == 2
    assert belady(trace, 2) == 3 / 9


def test_hotness_counts_decay():
    # Block 0's count of 1000 would outrank 1 and 2 forever; halving every
    # 8 * dram_blocks accesses lets the new pair take DRAM over, after which
    # the alternation always hits.
    trace = [0] * 1000 + [1, 2] * 100
    tail = 40
    assert hits(trace, "hotness", 2) - hits(trace[:-tail], "hotness", 2) == tail


@pytest.mark.parametrize("name", POLICIES)
def test_pmem_catches_a_demoted_block(name):
    # DRAM 1, PMEM 1. 1 demotes 0 to PMEM; 0 is a PMEM hit and demotes 1;
    # 2 demotes 0, which pushes 1 out of PMEM; so 1 is read from NVMe.
    result = simulate([0, 1, 0, 2, 1], name, 1, pmem_blocks=1, streams=False)
    assert result["dram_hits"] == 0
    assert result["misses"] == 5
    assert result["pmem_hits"] == 1
    assert result["first_accesses"] == 3
    assert result["nvme_reads"] == 1
    assert result["pmem_hit_ratio"] == 1 / 5


@pytest.mark.parametrize("name", POLICIES)
def test_pmem_evicts_in_demotion_order(name):
    # DRAM 1, PMEM 2. After 0, 1, 2: PMEM holds [0, 1] in demotion order.
    # 0 is a PMEM hit (leaves PMEM) and demotes 2: PMEM [1, 2]. 3 demotes 0,
    # which evicts 1, the oldest demotion, so 1 is an NVMe read.
    result = simulate([0, 1, 2, 0, 3, 1], name, 1, pmem_blocks=2, streams=False)
    assert result["pmem_hits"] == 1
    assert result["first_accesses"] == 4
    assert result["nvme_reads"] == 1


def test_result_keys():
    result = simulate([0, 1, 0], "lru", 1)
    for key in ("dram_hits", "misses", "dram_hit_ratio", "pmem_hits", "pmem_hit_ratio",
                "nvme_reads", "first_accesses"):
        assert key in result
    assert result["dram_hit_ratio"] == result["dram_hits"] / 3


# ---------------------------------------------------------------- reference model
# The documented semantics written plainly (eager halving, threshold and
# victim recomputed from scratch); the kernels must agree exactly.

def _reference_victim(name, in_dram, count, dram):
    if name != "hotness":
        return min(in_dram, key=in_dram.get)  # least recent use / arrival
    bins = {b: c.bit_length() for b, c in count.items()}
    # lowest t with at most `dram` blocks (of all seen) in bins >= t
    ranked = sorted(bins.values(), reverse=True)
    hot_bin = ranked[dram] + 1 if len(ranked) > dram else 0
    cold = [b for b in in_dram if bins[b] < hot_bin]
    if not cold:
        coldest = min(bins[b] for b in in_dram)
        cold = [b for b in in_dram if bins[b] == coldest]
    return min(cold, key=in_dram.get)


def _reference(trace, name, dram, pmem, streams=None):
    """(dram hits, pmem hits, first accesses); with streams (a
    _ReferenceStreams), victims come from it first."""
    in_dram = {}  # block -> last access (lru, hotness) or arrival (fifo)
    in_pmem = []  # in demotion order
    count = {}
    dram_hits = pmem_hits = first = 0
    period = COOL_PERIOD_FACTOR * dram
    for i, b in enumerate(trace):
        if i and i % period == 0:
            count = {k: c // 2 for k, c in count.items()}
        first += b not in count
        count[b] = count.get(b, 0) + 1
        if b in in_dram:
            dram_hits += 1
            if name != "fifo":
                in_dram[b] = i
            continue
        if b in in_pmem:
            pmem_hits += 1
            in_pmem.remove(b)
        if streams:
            streams.miss(b, in_dram)
        if len(in_dram) == dram:
            victim = streams.victim(in_dram) if streams else None
            if victim is None:
                victim = _reference_victim(name, in_dram, count, dram)
            del in_dram[victim]
            if pmem:
                if len(in_pmem) == pmem:
                    in_pmem.pop(0)
                in_pmem.append(victim)
        in_dram[b] = i
    return dram_hits, pmem_hits, first


class _ReferenceStreams:
    """The stream layer as docs/policies.md states it, in original ids,
    written after csrc/stream.c's tm_stream_of, stream_active, stream_take and
    stream_victims (one victim at a time, a miss brings its block only)."""

    def __init__(self, dram):
        self.dram = dram
        self.batch = max(1, min(64, dram // 4))
        self.guard = max(self.batch, dram // 16)
        self.records = [None] * 8
        self.misses = 0
        self.recent = []  # the latest 4 misses

    def walked(self, s, b, latest, resident):
        """s, a sequential record with a whole batch for window, the latest
        or matched within the latest 8 misses, reached b over resident
        blocks only (at most DRAM's of them): it walked there over hits."""
        return (s["stride"] == 1 and s["window"] == self.batch and s["next"] < b <= s["next"] + self.dram
                and (s is latest or s["used"] + 8 >= self.misses)
                and all(x in resident for x in range(s["next"], b)))

    def miss(self, b, resident):
        self.misses += 1
        self.recent = (self.recent + [b])[-4:]
        live = [s for s in self.records if s]
        latest = max(live, key=lambda s: s["used"], default=None)

        def continues(s):
            return s["next"] <= b <= s["next"] + s["window"] or s["stride"] > 1 and b == s["last"] + s["stride"]

        s = next((s for s in live if continues(s)), None)
        if s and s["next"] <= b <= s["next"] + s["window"]:
            s.update(stride=1, next=b + 1)  # (a strided stream's next stays)
        elif not s:
            s = next((t for t in live if self.walked(t, b, latest, resident)), None)
            if s:
                s["next"] = b + 1
        if not s:
            d = b - latest["last"] if latest else 0
            # the least recently used record, the first of them (empty ones: 0)
            i = min(range(8), key=lambda i: (self.records[i]["used"] if self.records[i] else 0, i))
            s = self.records[i] = {"start": b, "next": b + 1, "window": 0, "lo": b, "hi": b,
                                   "stride": d if 1 < d <= 256 else 1, "born": self.misses}
        # the window doubles up to batch; a new record's (0 above) is 1
        s.update(window=min(max(2 * s["window"], 1), self.batch), last=b, used=self.misses)

    def active(self, s):
        return s["used"] + 8 >= self.misses and not any(
            t["born"] > s["used"] and t["start"] < s["next"] - self.guard for t in self.records if t)

    def takes(self, x, resident):
        return x in resident and x not in self.recent

    def take(self, s, top, resident):
        x = top - 1
        while x >= s["hi"] and x >= s["start"]:
            if self.takes(x, resident):
                if x - 1 >= s["hi"] and x - 1 >= s["start"]:  # stopped short: restart
                    s.update(lo=x, hi=top)
                else:
                    s["hi"] = max(s["hi"], top)
                return x
            x -= 1
        s["hi"] = max(s["hi"], top)
        for x in range(s["lo"] - 1, s["start"] - 1, -1):
            if self.takes(x, resident):
                s["lo"] = x
                return x
        s["lo"] = s["start"]
        return None

    def victim(self, resident):
        """A resident block a stream has passed, or None."""
        order = sorted((s for s in self.records if s and s["stride"] == 1), key=lambda s: -s["used"])
        active = [self.active(s) for s in order]
        for s, on in zip(order, active):
            top = s["next"] - self.guard if on else s["next"]
            if top > s["start"]:
                x = self.take(s, top, resident)
                if x is not None:
                    return x
        for s, on in zip(order, active):
            if on:
                for x in range(s["last"] - 1, max(s["next"] - self.guard, s["start"]) - 1, -1):
                    if self.takes(x, resident):
                        return x
        return None


def _reference_cases(seed):
    # Small footprints with DRAM close to them keep long-idle blocks resident
    # across coolings, where bin merges and threshold moves decide victims.
    for nblocks in (12, 13, 40):
        yield traces.shifting_hot_set(nblocks, 600, hot_fraction=0.2, phases=1 + 4 * seed,
                                      seed=seed)
        yield traces.zipf(nblocks, 600, s=0.75, seed=seed)
        yield traces.mixed(nblocks, 600, seed=seed)


@pytest.mark.parametrize("name", POLICIES)
@pytest.mark.parametrize("seed", range(2))
def test_kernels_match_the_reference_model(name, seed):
    for trace in _reference_cases(seed):
        for dram, pmem in ((1, 0), (3, 4), (5, 0), (8, 10), (12, 3)):
            r = simulate(trace, name, dram, pmem, streams=False)
            got = (r["dram_hits"], r["pmem_hits"], r["first_accesses"])
            assert got == _reference(trace.tolist(), name, dram, pmem), (dram, pmem)


def _stream_reference_cases(seed):
    # Consecutive ids (scans, loops, the mixed trace's scan), sparse ones and
    # random ones; DRAM sizes around the guard's steps.
    yield traces.loop(37 + seed, 900)
    yield traces.scan(60, passes=3)
    yield traces.mixed(80, 1500, seed=seed)
    yield traces.mixed(300, 3000, seed=seed, scan_share=0.3)
    yield 2 * traces.loop(50, 600) + (traces.zipf(50, 600, seed=seed) % 2)
    yield traces.shifting_hot_set(60, 900, seed=seed)
    # A scan that walks over blocks touched just before it (hits): at 16
    # blocks of DRAM it continues its record past them (the walk rule).
    yield np.tile(np.concatenate([np.arange(30, 46), np.arange(30 + seed, 46), np.arange(90)]), 6)


@pytest.mark.parametrize("name", POLICIES)
@pytest.mark.parametrize("seed", range(2))
def test_kernels_with_streams_match_the_reference_model(name, seed):
    for trace in _stream_reference_cases(seed):
        distinct = len(np.unique(trace))
        for dram, pmem in ((1, 0), (4, 3), (9, 0), (16, 10), (33, 0), (distinct - 1, 5)):
            r = simulate(trace, name, dram, pmem)
            got = (r["dram_hits"], r["pmem_hits"], r["first_accesses"])
            want = _reference(trace.tolist(), name, dram, pmem, _ReferenceStreams(dram))
            assert got == want, (dram, pmem)


# ---------------------------------------------------------------- belady

@functools.cache
def _optimal_hits(trace, capacity, i=0, resident=frozenset()):
    """Most DRAM hits any demand-paging policy gets from position i on."""
    if i == len(trace):
        return 0
    b = trace[i]
    if b in resident:
        return 1 + _optimal_hits(trace, capacity, i + 1, resident)
    if len(resident) < capacity:
        return _optimal_hits(trace, capacity, i + 1, resident | {b})
    return max(_optimal_hits(trace, capacity, i + 1, (resident - {v}) | {b})
               for v in resident)


def test_belady_textbook_example():
    # The classic reference string: OPT takes 7 faults with 3 frames, 6 with 4.
    trace = [1, 2, 3, 4, 1, 2, 5, 1, 2, 3, 4, 5]
    assert belady(trace, 3) == 5 / 12
    assert belady(trace, 4) == 6 / 12


def test_belady_is_demand_paging():
    # The accessed block always enters DRAM: with one block, 1 evicts 0.
    assert belady([0, 1, 0], 1) == 0.0


@pytest.mark.parametrize("seed", range(12))
def test_belady_matches_exhaustive_search(seed):
    rng = np.random.default_rng(seed)
    trace = tuple(int(x) for x in rng.integers(0, 5, 11))
    for capacity in (1, 2, 3):
        assert belady(np.array(trace), capacity) * len(trace) == _optimal_hits(trace, capacity)


GENERATED = {
    "scan": traces.scan(300, passes=3),
    "loop": traces.loop(300, 4000),
    "zipf": traces.zipf(300, 4000, seed=1),
    "zipf_0.6": traces.zipf(300, 4000, s=0.6, seed=2),
    "shifting_hot_set": traces.shifting_hot_set(300, 4000, hot_fraction=0.1, phases=4, seed=3),
    "mixed": traces.mixed(300, 4000, seed=4),
}


@pytest.mark.parametrize("trace_name", GENERATED)
def test_belady_bounds_every_policy(trace_name):
    trace = GENERATED[trace_name]
    distinct = len(np.unique(trace))
    for dram in sorted({1, 7, distinct // 10, distinct // 4, distinct // 2, distinct - 1}):
        bound = belady(trace, dram)
        for name, pmem, streams in itertools.product(POLICIES, (0, distinct // 4), (True, False)):
            ratio = simulate(trace, name, dram, pmem, streams=streams)["dram_hit_ratio"]
            assert ratio <= bound, (name, dram, pmem, streams)


# ---------------------------------------------------------------- properties

@pytest.mark.parametrize("streams", (True, False))
@pytest.mark.parametrize("name", POLICIES)
def test_first_accesses_are_misses(name, streams):
    trace = np.arange(50)
    result = simulate(trace, name, 100, streams=streams)
    assert result["dram_hits"] == 0
    assert result["misses"] == result["first_accesses"] == 50
    assert result["nvme_reads"] == 0
    assert belady(trace, 100) == 0.0


@pytest.mark.parametrize("streams", (True, False))
@pytest.mark.parametrize("name", POLICIES)
def test_everything_fits(name, streams):
    trace = traces.zipf(200, 3000, seed=5)
    distinct = len(np.unique(trace))
    expected = 1 - distinct / len(trace)
    assert simulate(trace, name, distinct, streams=streams)["dram_hit_ratio"] == pytest.approx(expected)
    assert belady(trace, distinct) == pytest.approx(expected)


@pytest.mark.parametrize("streams", (True, False))
@pytest.mark.parametrize("name", POLICIES)
def test_accounting_adds_up(name, streams):
    trace = traces.mixed(400, 5000, seed=6)
    r = simulate(trace, name, 40, pmem_blocks=60, streams=streams)
    assert r["dram_hits"] + r["misses"] == len(trace)
    assert r["pmem_hits"] + r["first_accesses"] + r["nvme_reads"] == r["misses"]
    assert r["first_accesses"] == r["distinct_blocks"] == len(np.unique(trace))


@pytest.mark.parametrize("streams", (True, False))
@pytest.mark.parametrize("name", POLICIES)
def test_pmem_leaves_dram_alone(name, streams):
    # A PMEM hit is a DRAM miss like any other, so DRAM sees the same
    # sequence of misses with or without PMEM.
    trace = traces.shifting_hot_set(400, 5000, seed=7)
    without = simulate(trace, name, 30, streams=streams)
    with_pmem = simulate(trace, name, 30, pmem_blocks=50, streams=streams)
    assert with_pmem["dram_hits"] == without["dram_hits"]
    assert with_pmem["pmem_hits"] > 0
    assert without["pmem_hits"] == 0
    assert without["nvme_reads"] == without["misses"] - without["first_accesses"]


@pytest.mark.parametrize("streams", (True, False))
@pytest.mark.parametrize("name", POLICIES)
def test_no_nvme_reads_when_both_tiers_hold_everything(name, streams):
    trace = traces.zipf(300, 4000, seed=8)
    assert simulate(trace, name, 100, pmem_blocks=200, streams=streams)["nvme_reads"] == 0


@pytest.mark.parametrize("name", POLICIES)
def test_block_ids_are_only_names_to_the_policies(name):
    # Sparse ids take the np.unique remap, small dtypes and views the table;
    # all must give the results of the dense trace.
    trace = traces.mixed(300, 3000, seed=9)
    expected = simulate(trace, name, 30, 20, streams=False)
    doubled = np.repeat(trace, 2)[::2]
    for variant in (trace * 10**12 + 7, trace.astype(np.uint16), doubled, list(trace)):
        result = simulate(variant, name, 30, 20, streams=False)
        assert {k: result[k] for k in expected} == expected
    assert belady(trace * 10**12, 30) == belady(trace, 30)


@pytest.mark.parametrize("name", POLICIES)
def test_stream_layer_reads_only_the_order_and_spacing_of_ids(name):
    # An offset (either remap), a small dtype or a view change nothing. Ids
    # spread apart leave no two blocks adjacent (nor within the strides
    # followed): every stream is one block, [b, b + 1), which the layer
    # takes once the stream is inactive (engine's rule), whatever the
    # spacing.
    trace = traces.mixed(300, 3000, seed=9)
    expected = simulate(trace, name, 30, 20)
    assert expected["stream_victims"] > 0
    doubled = np.repeat(trace, 2)[::2]
    for variant in (trace + 10**12, trace + 5, trace.astype(np.uint16), doubled, list(trace)):
        result = simulate(variant, name, 30, 20)
        assert {k: result[k] for k in expected} == expected
    spread = simulate(trace * 1000, name, 30, 20)
    assert spread == simulate(trace * 3000 + 7, name, 30, 20)
    assert 0 < spread["stream_victims"] < expected["stream_victims"]
    assert spread["dram_hits"] != expected["dram_hits"]


def test_empty_trace():
    result = simulate(np.array([], dtype=np.int64), "lru", 4)
    assert result["dram_hits"] == result["misses"] == 0
    assert result["dram_hit_ratio"] == 0.0
    assert belady(np.array([], dtype=np.int64), 4) == 0.0


def test_tiers_larger_than_the_footprint():
    trace = [3, 1, 3, 1]
    assert simulate(trace, "hotness", 2**62, 2**62)["dram_hits"] == 2
    assert belady(trace, 2**62) == 0.5


# ---------------------------------------------------------------- validation

@pytest.mark.parametrize("trace, problem", [
    (np.zeros((2, 3), dtype=np.int64), "1-D"),
    (np.array([0.0, 1.0]), "integer"),
    (np.array([True, False]), "integer"),
    ([0, -1, 2], "non-negative"),
])
def test_bad_traces(trace, problem):
    with pytest.raises(ValueError, match=problem):
        simulate(trace, "lru", 2)
    with pytest.raises(ValueError, match=problem):
        belady(trace, 2)


def test_bad_sizes():
    with pytest.raises(ValueError, match="dram_blocks"):
        simulate([0, 1], "lru", 0)
    with pytest.raises(ValueError, match="dram_blocks"):
        simulate([0, 1], "lru", 2.5)
    with pytest.raises(ValueError, match="pmem_blocks"):
        simulate([0, 1], "lru", 1, pmem_blocks=-1)
    with pytest.raises(ValueError, match="dram_blocks"):
        belady([0, 1], 0)


def test_unknown_policy_lists_the_valid_ones():
    with pytest.raises(ValueError, match="lru, fifo, hotness"):
        simulate([0, 1], "arc", 1)


# ---------------------------------------------------------------- trace generators

def test_scan_and_loop():
    assert traces.scan(3, passes=2).tolist() == [0, 1, 2, 0, 1, 2]
    assert traces.scan(4).tolist() == [0, 1, 2, 3]
    assert traces.loop(3, 7).tolist() == [0, 1, 2, 0, 1, 2, 0]


@pytest.mark.parametrize("make", [
    lambda seed: traces.zipf(500, 20000, seed=seed),
    lambda seed: traces.shifting_hot_set(500, 20000, seed=seed),
    lambda seed: traces.mixed(500, 20000, seed=seed),
])
def test_random_generators_are_seeded(make):
    a = make(1)
    assert a.dtype == np.int64 and a.shape == (20000,)
    assert a.min() >= 0 and a.max() < 500
    assert np.array_equal(a, make(1))
    assert not np.array_equal(a, make(2))


def test_zipf_skew():
    counts = np.bincount(traces.zipf(1000, 200_000, s=0.99, seed=0), minlength=1000)
    assert counts.argmax() == 0
    assert counts[:10].sum() > 0.2 * counts.sum()  # harmonic: ~39% expected
    uniform = np.bincount(traces.zipf(1000, 200_000, s=0.0, seed=0), minlength=1000)
    assert uniform[:10].sum() < 0.02 * uniform.sum()


def test_shifting_hot_set_moves():
    trace = traces.shifting_hot_set(1000, 40_000, hot_fraction=0.05, phases=2, seed=0)
    first, second = trace[:20_000], trace[20_000:]
    hot_first = np.argsort(np.bincount(first, minlength=1000))[-50:]
    hot_second = np.argsort(np.bincount(second, minlength=1000))[-50:]
    assert np.isin(first, hot_first).mean() > 0.85
    assert len(np.intersect1d(hot_first, hot_second)) < 25


def test_mixed_interleaves_scan_and_zipf():
    trace = traces.mixed(1000, 10_000, seed=0)
    scan_part = trace[trace >= 500]
    assert 0.4 < scan_part.size / trace.size < 0.6
    assert np.array_equal(scan_part, 500 + np.arange(scan_part.size) % 500)
    assert np.bincount(trace[trace < 500]).argmax() == 0


@pytest.mark.parametrize("call", [
    lambda: traces.scan(0),
    lambda: traces.loop(0, 10),
    lambda: traces.zipf(10, -1),
    lambda: traces.zipf(10, 10, s=-1),
    lambda: traces.shifting_hot_set(10, 10, hot_fraction=0),
    lambda: traces.shifting_hot_set(10, 10, phases=0),
    lambda: traces.mixed(1, 10),
    lambda: traces.mixed(10, 10, s=-0.5),
    lambda: traces.loop(2.5, 10),
])
def test_generator_arguments_are_checked(call):
    with pytest.raises(ValueError):
        call()


# ---------------------------------------------------------------- the stream layer
# docs/policies.md, "Streams: use-once and loops": victims come first from
# the blocks detected streams have passed, most recently passed first, outside
# the guard of G blocks behind an active stream's head; then from those
# guards (the latest miss's block and the latest 4 misses excepted); then
# from the policy.

def test_batch_and_guard_sizes():
    # batch = min(64, DRAM // 4), at least 1; G = max(batch, DRAM // 16)
    assert stream_sizes(1) == (1, 1)
    assert stream_sizes(7) == (1, 1)
    assert stream_sizes(200) == (50, 50)
    assert stream_sizes(1024) == (64, 64)
    assert stream_sizes(2048) == (64, 128)
    assert stream_sizes(50_000) == (64, 3125)


LOOP_N, LOOP_DRAM, LOOP_PASSES = 1536, 1024, 12  # a loop over 1.5x DRAM


def _loop_misses_per_pass(name, streams):
    trace = traces.loop(LOOP_N, LOOP_N * LOOP_PASSES)
    hit = simulate(trace, name, LOOP_DRAM, streams=streams, per_access=True)["hit"]
    return (~hit).reshape(LOOP_PASSES, LOOP_N).sum(axis=1)


@pytest.mark.parametrize("name", POLICIES)
def test_loop_larger_than_dram_misses_at_most_n_minus_d_plus_guard_per_pass(name):
    _, guard = stream_sizes(LOOP_DRAM)
    per_pass = _loop_misses_per_pass(name, streams=True)
    assert per_pass[0] == LOOP_N
    assert per_pass[1:].max() <= LOOP_N - LOOP_DRAM + guard, per_pass
    # at 1.5x DRAM that is issue 12's bound: 1.25x (footprint - DRAM)
    assert per_pass[1:].max() <= 1.25 * (LOOP_N - LOOP_DRAM)


@pytest.mark.parametrize("name", POLICIES)
def test_loop_larger_than_dram_misses_every_block_without_streams(name):
    # LRU, FIFO and counts all evict the block needed soonest: no hit at all
    assert (_loop_misses_per_pass(name, streams=False) == LOOP_N).all()


MIXED_FOOTPRINT = 4000
MIXED = traces.mixed(MIXED_FOOTPRINT, 80_000, seed=4)
MIXED_HOT = MIXED < MIXED_FOOTPRINT // 2  # the Zipf part; the scan is above


def _mixed_hit(name, share, streams):
    dram = int(share * MIXED_FOOTPRINT)
    return simulate(MIXED, name, dram, streams=streams, per_access=True)["hit"]


@pytest.mark.parametrize("name", POLICIES)
@pytest.mark.parametrize("share", (0.1, 0.25, 0.5))
def test_mixed_hot_set_hits_at_least_as_often_with_streams(name, share):
    # Except hotness at 10%, which loses under 2 points (0.668 against
    # 0.685): the hot set's own misses are single-block streams, taken MRU
    # once inactive, over the counts' choice (docs/policies.md).
    with_layer = _mixed_hit(name, share, True)[MIXED_HOT].mean()
    alone = _mixed_hit(name, share, False)[MIXED_HOT].mean()
    assert with_layer >= alone - (0.02 if (name, share) == ("hotness", 0.1) else 0)


@pytest.mark.parametrize("name", POLICIES)
@pytest.mark.parametrize("share", (0.25, 0.5))
def test_mixed_scan_keeps_part_of_itself_with_streams_only(name, share):
    # the scan over the upper half is a loop larger than the DRAM left to it
    assert _mixed_hit(name, share, True)[~MIXED_HOT].mean() > 0.02
    assert _mixed_hit(name, share, False)[~MIXED_HOT].mean() == 0.0


@pytest.mark.parametrize("name", POLICIES)
def test_scan_victim_is_the_latest_passed_block_behind_the_guard(name):
    # Each miss on b continues the stream (next = b + 1): the layer takes
    # b - G, the most recently passed block outside the guard. Sparse ids
    # (the np.unique remap) are reported as given.
    dram = 200
    _, guard = stream_sizes(dram)
    trace = traces.scan(1000) + 10**12
    victim = simulate(trace, name, dram, per_access=True)["victim"]
    assert (victim[:dram] == -1).all()
    assert (victim[dram:] == trace[dram:] - guard).all()


def _chunks_read_twice(chunk, nblocks):
    """Each chunk of `chunk` blocks read twice, the chunks in order; and a
    mask of the second reads."""
    starts = range(0, nblocks, chunk)
    trace = np.concatenate([np.tile(np.arange(c, c + chunk), 2) for c in starts])
    second = np.tile(np.repeat([False, True], chunk), len(starts))
    return trace, second


@pytest.mark.parametrize("name", POLICIES)
def test_a_chunk_reread_within_the_guard_hits_while_older_passed_blocks_remain(name):
    # One stream reading chunks of G blocks twice: the blocks it passed
    # before the chunk (outside its guard) are the victims, so the guard is
    # never reached and every re-read hits.
    dram = 256
    _, guard = stream_sizes(dram)
    trace, second = _chunks_read_twice(guard, 8 * dram)
    result = simulate(trace, name, dram, per_access=True)
    assert result["hit"][second].all()
    assert result["stream_victims"] == 8 * dram - dram


@pytest.mark.parametrize("name", POLICIES)
def test_a_chunk_one_block_longer_than_the_guard_loses_two_blocks(name):
    # The guard is G blocks, no more: the chunk's first block is the
    # latest passed outside it when the chunk's last block comes in. Its
    # re-read misses, and starts a stream below the reading stream's
    # next - G: that stream is inactive, its whole passed region victims,
    # from its newest block not among the latest 4 misses: chunk - 4 blocks
    # into the chunk, which misses too.
    dram = 256
    _, guard = stream_sizes(dram)
    chunk = guard + 1
    trace, second = _chunks_read_twice(chunk, 8 * dram)
    hit = simulate(trace, name, dram, per_access=True)["hit"]
    misses = np.flatnonzero(second & ~hit)
    first_of_chunk = np.flatnonzero(second)[::chunk]
    steady = first_of_chunk[first_of_chunk > 2 * dram]  # DRAM full for a while
    assert np.isin(steady, misses).all()
    assert np.isin(steady + chunk - 4, misses).all()
    assert np.isin(misses, np.concatenate([first_of_chunk, first_of_chunk + chunk - 4])).all()


@pytest.mark.parametrize("name", POLICIES)
def test_a_new_stream_takes_its_own_guarded_blocks_before_the_policy(name):
    # DRAM holds a hot set that is in no stream record (its stream's record
    # was replaced), 7 single blocks and 4 free blocks; then a scan starts.
    # Its first G misses have nothing outside its guard: the single blocks
    # go once their records are inactive (no match for 8 misses), then the
    # guarded blocks the scan has passed, the newest not among the latest 4
    # misses (b - 4). From then on the guard is what it took: every victim
    # is b - 4 or a block below b - G. The policy is never asked: the hot
    # set survives the scan and is read again without a miss. Alone, every
    # policy loses it.
    hot = np.arange(80)
    single = 10**4 * np.arange(1, 8)
    scan = 10**6 + np.arange(500)
    trace = np.concatenate([hot, single, scan, hot])
    dram = len(hot) + len(single) + 4
    _, guard = stream_sizes(dram)
    result = simulate(trace, name, dram, per_access=True)
    during = slice(len(hot) + len(single), len(hot) + len(single) + len(scan))
    victim, hit = result["victim"][during], result["hit"]
    assert hit[-len(hot):].all()
    assert result["stream_victims"] == len(scan) - 4
    assert np.isin(victim[4:11], single).all()
    assert (victim[11:guard] == scan[11:guard] - 4).all()  # nothing below the guard yet
    later = victim[11:]
    assert ((later == scan[11:] - 4) | ((later >= scan[0]) & (later < scan[11:] + 1 - guard))).all()
    assert not simulate(trace, name, dram, streams=False, per_access=True)["hit"][-len(hot):].any()


@pytest.mark.parametrize("name", POLICIES)
def test_a_loops_next_pass_takes_the_last_passes_last_blocks_first(name):
    # The first pass keeps [0, D - G) and its last G blocks. Pass 2 hits
    # on [0, D - G); its first miss, D - G, starts a stream below the first
    # pass's next - G: that one is inactive, its whole passed region
    # victims, the most recently passed first: N - 4 (N - 3 .. N - 1 are
    # among the latest 4 misses, with D - G, and looked at: they stay, and
    # pass 2 ends with 3 hits), then down from there.
    n, dram = 300, 200
    _, guard = stream_sizes(dram)
    result = simulate(traces.loop(n, 2 * n), name, dram, per_access=True)
    victim, hit = result["victim"][n:], result["hit"][n:]
    assert hit[:dram - guard].all() and not hit[dram - guard:n - 3].any() and hit[n - 3:].all()
    got = victim[dram - guard:]
    assert got[0] == n - 4
    assert (got[1:10] == n - 5 - np.arange(9)).all()


@pytest.mark.parametrize("name", POLICIES)
@pytest.mark.parametrize("share", (0.1, 0.25, 0.5))
def test_scan_and_loop_score_near_belady_with_streams(name, share):
    for trace in (traces.scan(3000, passes=2), traces.loop(3000, 30_000)):
        dram = int(share * 3000)
        bound = belady(trace, dram)
        # at DRAM 300 the guard is batch = DRAM // 4: the layer keeps about
        # D - G, 3/4 of what Belady keeps
        assert simulate(trace, name, dram)["dram_hit_ratio"] >= 0.75 * bound
        assert simulate(trace, name, dram, streams=False)["dram_hit_ratio"] == 0.0


@pytest.mark.parametrize("name", POLICIES)
def test_stream_victims_counts_the_layers_choices(name):
    # A scan larger than DRAM: every victim is the layer's.
    r = simulate(traces.scan(500), name, 100)
    assert r["stream_victims"] == 400
    assert simulate(traces.scan(500), name, 100, streams=False)["stream_victims"] == 0
