"""Synthetic block-access traces: 1-D int64 arrays of block ids in access
order, ids in range(nblocks). Random generators take a seed and return the
same trace for the same arguments."""
import numpy as np

from .simulate import _as_count


def _check(condition, message):
    if not condition:
        raise ValueError(message)


def scan(nblocks, passes=1):
    """Sequential passes over blocks 0..nblocks-1; one pass never reuses a block."""
    nblocks = _as_count(nblocks, "nblocks", 1)
    passes = _as_count(passes, "passes", 0)
    return np.tile(np.arange(nblocks, dtype=np.int64), passes)


def loop(nblocks, length):
    """A loop over nblocks blocks repeated until `length` accesses: with
    nblocks above the DRAM size, LRU and FIFO never hit."""
    nblocks = _as_count(nblocks, "nblocks", 1)
    length = _as_count(length, "length", 0)
    return np.arange(length, dtype=np.int64) % nblocks


def _zipf_ranks(rng, nblocks, length, s):
    """Ranks 0..nblocks-1 with P(rank r) proportional to (r + 1) ** -s, by
    inverse CDF, which (unlike numpy's zipf) allows s <= 1 and bounded support."""
    weights = np.arange(1, nblocks + 1, dtype=np.float64) ** -s
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    ranks = np.searchsorted(cdf, rng.random(length), side="right")
    # rounding can leave cdf[-1] a hair below a draw
    return np.minimum(ranks, nblocks - 1).astype(np.int64)


def zipf(nblocks, length, s=0.99, seed=0):
    """Independent accesses with Zipf popularity of exponent s (0 = uniform);
    block 0 is the most popular."""
    nblocks = _as_count(nblocks, "nblocks", 1)
    length = _as_count(length, "length", 0)
    _check(s >= 0, f"s must be >= 0, got {s}")
    return _zipf_ranks(np.random.default_rng(seed), nblocks, length, s)


def shifting_hot_set(nblocks, length, hot_fraction=0.1, phases=4, seed=0, hot_share=0.9):
    """`phases` equal stretches, each with its own random hot set of
    hot_fraction * nblocks blocks that gets hot_share of the accesses
    (uniformly); the rest go uniformly to all blocks."""
    nblocks = _as_count(nblocks, "nblocks", 1)
    length = _as_count(length, "length", 0)
    phases = _as_count(phases, "phases", 1)
    _check(0 < hot_fraction <= 1, f"hot_fraction must be in (0, 1], got {hot_fraction}")
    _check(0 <= hot_share <= 1, f"hot_share must be in [0, 1], got {hot_share}")
    rng = np.random.default_rng(seed)
    hot_n = max(1, int(hot_fraction * nblocks))
    out = rng.integers(0, nblocks, length, dtype=np.int64)
    for part in np.array_split(np.arange(length), phases):
        hot_set = rng.permutation(nblocks)[:hot_n]
        to_hot = part[rng.random(part.size) < hot_share]
        out[to_hot] = hot_set[rng.integers(0, hot_n, to_hot.size)]
    return out


def mixed(nblocks, length, seed=0, scan_share=0.5, s=0.99):
    """A Zipf(s) workload over the first half of the blocks interleaved, at
    random positions, with a cyclic scan over the second half, which takes
    scan_share of the accesses: the scan pollutes recency-based policies."""
    nblocks = _as_count(nblocks, "nblocks", 2)
    length = _as_count(length, "length", 0)
    _check(0 <= scan_share <= 1, f"scan_share must be in [0, 1], got {scan_share}")
    _check(s >= 0, f"s must be >= 0, got {s}")
    rng = np.random.default_rng(seed)
    zipf_n = nblocks // 2
    is_scan = rng.random(length) < scan_share
    out = np.empty(length, dtype=np.int64)
    nscan = int(is_scan.sum())
    out[is_scan] = zipf_n + np.arange(nscan, dtype=np.int64) % (nblocks - zipf_n)
    out[~is_scan] = _zipf_ranks(rng, zipf_n, length - nscan, s)
    return out
