"""Stream readahead (Engine v2): a sequential scan of blocks in the lower
tiers is read ahead in runs of a batch, several at once, and the runs after
the one the stream reached are mapped by an idle handler as soon as they are
read, so that the application finds them in DRAM; the last run in flight is
left for the stream's next fault, which starts the next runs. Runs read
PMEM blocks as well as NVMe ones.

Each test checks the data exactly besides what the counters say."""
import gc

import numpy as np
import pytest

from patterns import MiB, fill, first_mismatch

pytestmark = pytest.mark.timeout(120, method="thread")


def scan_stats(pool, a):
    """Counters of one full read pass over a (a sum), as differences."""
    before = pool.stats()
    a.sum()
    after = pool.stats()
    return {k: after[k] - before[k] for k in ("promotions", "readahead", "readahead_mapped_ahead", "faults")}


def test_a_scan_from_nvme_finds_runs_mapped_ahead_of_it(make_pool):
    pool = make_pool(dram="128MiB", nvme="1GiB", sampling=0)  # runs mapped ahead: at most 1/16 of DRAM
    a = pool.empty(512 * MiB // 8, dtype=np.uint64)
    fill(a, 1)
    d = scan_stats(pool, a)
    assert d["readahead"] > d["promotions"] // 2, f"the scan was not read ahead: {d}"
    # Mapped by an idle handler before the stream reached them; before this
    # engine every run waited for the stream's fault (0).
    assert d["readahead_mapped_ahead"] > d["readahead"] // 10, d
    assert first_mismatch(a, 1) is None


def test_a_scan_of_pmem_blocks_is_read_ahead(make_pool):
    """Every demoted block fits in PMEM, so the scan's blocks are all there."""
    pool = make_pool(dram="16MiB", pmem="256MiB", nvme="256MiB", sampling=0)
    a = pool.empty(128 * MiB // 8, dtype=np.uint64)
    fill(a, 2)
    assert pool.placement(a)["nvme"] == 0
    d = scan_stats(pool, a)
    assert d["readahead"] > d["promotions"] // 2, f"PMEM blocks were not read ahead: {d}"
    assert first_mismatch(a, 2) is None


def test_a_freed_arrays_runs_in_flight_never_map_into_the_next_array(make_pool):
    """A scan that stops halfway leaves runs read ahead in flight; the array is
    freed and its blocks given to a new one, whose own data must be what a
    later scan reads, never the old runs'."""
    pool = make_pool(dram="32MiB", nvme="1GiB", sampling=0)
    n = 128 * MiB // 8
    for seed in range(3, 9):
        old = pool.empty(n, dtype=np.uint64)
        fill(old, seed)
        old[: n // 2].sum()  # stops with the runs after the half in flight
        del old
        gc.collect()
        new = pool.empty(n, dtype=np.uint64)
        fill(new, seed + 100)
        assert first_mismatch(new, seed + 100) is None, f"round {seed}"
        del new
        gc.collect()
