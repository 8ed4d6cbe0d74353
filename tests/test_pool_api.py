"""The Pool API as a user sees it: sizes, array constructors, stats(),
placement(), metadata() and the pool's lifetime (close, `with`, deferred
release while arrays live).

Pools are small (8 MiB DRAM, 64 MiB NVMe in a per-test directory, see
conftest.py); every test deletes its arrays before its pool is closed.
"""
import gc
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import tieredmem as tm

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
BLOCK = 64 * KiB  # the default block size
TIER_DRAM = 1     # enum tm_tier_id
TM_F_ALLOC = 1    # tm_meta.flags bit: inside a live allocation
PLACEMENT_KEYS = {"dram", "pmem", "nvme", "unbacked"}


# ---- parse_size -------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    (0, 0),
    (1048576, 1048576),
    ("4096", 4096),
    ("1KiB", KiB), ("512MiB", 512 * MiB), ("3GiB", 3 * GiB),
    ("1K", KiB), ("64M", 64 * MiB), ("4G", 4 * GiB),
    ("1KB", 1000), ("2MB", 2_000_000), ("3GB", 3_000_000_000),
    ("1.5GiB", 3 * GiB // 2),
    ("1.5KB", 1500),
])
def test_parse_size_accepts_ints_and_unit_strings(text, expected):
    assert tm.parse_size(text, "dram") == expected


@pytest.mark.parametrize("text, expected", [
    ("4.1MB", 4_100_000),
    ("4.1GB", 4_100_000_000),
    ("8.2GB", 8_200_000_000),
])
def test_parse_size_of_a_decimal_fraction_is_exact(text, expected):
    # 4.1 GB is exactly 4,100,000,000 bytes; float rounding must not lose one.
    assert tm.parse_size(text, "nvme") == expected


def test_parse_size_returns_an_int():
    assert type(tm.parse_size("1.5GiB", "dram")) is int


# ---- constructors -----------------------------------------------------

def test_empty_with_an_int_shape_is_one_dimensional(pool):
    p = pool()
    a = p.empty(1000)
    assert isinstance(a, np.ndarray)
    assert a.shape == (1000,)
    assert a.dtype == np.float64
    del a


def test_empty_with_a_tuple_shape(pool):
    p = pool()
    a = p.empty((3, 4, 5), dtype="int16")
    assert a.shape == (3, 4, 5)
    assert a.dtype == np.int16
    assert a.flags.c_contiguous
    del a


@pytest.mark.parametrize("dtype", ["uint8", "int32", "float32", "float64", "complex128", "bool"])
def test_empty_honours_the_dtype(pool, dtype):
    p = pool()
    a = p.empty((7, 3), dtype=dtype)
    assert a.dtype == np.dtype(dtype)
    assert a.nbytes == 21 * np.dtype(dtype).itemsize
    del a


def test_empty_with_order_f_is_fortran_contiguous(pool):
    p = pool()
    a = p.empty((30, 40), dtype="float32", order="F")
    assert a.flags.f_contiguous and not a.flags.c_contiguous
    del a


def test_fresh_empty_memory_reads_as_zero(pool):
    p = pool()
    a = p.empty(3 * BLOCK // 8)
    assert not a.any()
    del a


def test_zeros_reads_zero(pool):
    p = pool()
    a = p.zeros((100, 100), dtype="int64")
    assert a.shape == (100, 100)
    assert (a == 0).all()
    del a


def test_full_fills_every_element(pool):
    p = pool()
    a = p.full((50, 60), 2.5)
    assert a.shape == (50, 60)
    assert (a == 2.5).all()
    del a


def test_full_with_dtype_converts_the_fill_value(pool):
    p = pool()
    a = p.full(10, 7, dtype="float32")
    assert a.dtype == np.float32
    assert (a == 7.0).all()
    del a


def test_empty_like_keeps_shape_and_dtype(pool):
    p = pool()
    proto = np.arange(24, dtype="int32").reshape(2, 3, 4)
    a = p.empty_like(proto)
    assert a.shape == (2, 3, 4)
    assert a.dtype == np.int32
    assert p.owns(a)
    del a


def test_empty_like_keeps_fortran_order(pool):
    p = pool()
    a = p.empty_like(np.asfortranarray(np.ones((5, 6))))
    assert a.flags.f_contiguous and not a.flags.c_contiguous
    del a


def test_asarray_copies_a_foreign_array_into_the_pool(pool):
    p = pool()
    src = np.arange(1000, dtype="int64")
    a = p.asarray(src)
    assert p.owns(a)
    assert not np.shares_memory(a, src)
    assert a.dtype == np.int64
    np.testing.assert_array_equal(a, src)
    src[0] = -1
    assert a[0] == 0  # a copy, not a view of src
    del a


def test_asarray_copies_a_list(pool):
    p = pool()
    a = p.asarray([[1.0, 2.0], [3.0, 4.0]])
    assert p.owns(a)
    np.testing.assert_array_equal(a, [[1.0, 2.0], [3.0, 4.0]])
    del a


def test_asarray_returns_the_same_object_for_an_array_already_in_the_pool(pool):
    p = pool()
    a = p.zeros(100)
    assert p.asarray(a) is a
    view = a[10:20]
    assert p.asarray(view) is view
    del a, view


def test_asarray_copies_an_array_from_another_pool(pool):
    p, q = pool(), pool()
    a = q.full(100, 3.0)
    b = p.asarray(a)
    assert b is not a
    assert p.owns(b) and not q.owns(b)
    np.testing.assert_array_equal(b, a)
    del a, b


def test_owns_is_false_for_a_foreign_array(pool):
    p = pool()
    assert not p.owns(np.zeros(100))


def test_pool_arrays_are_writable_and_round_trip_data(pool):
    p = pool()
    rng = np.random.default_rng(0)
    data = rng.standard_normal((200, 300))
    a = p.empty((200, 300))
    assert a.flags.writeable
    a[...] = data
    np.testing.assert_array_equal(a, data)
    del a


def test_data_larger_than_the_dram_budget_round_trips(pool):
    p = pool(dram="4MiB", nvme="64MiB")
    n = 12 * MiB // 8
    a = p.empty(n, dtype="int64")
    a[:] = np.arange(n)  # three times the budget: most of it is demoted
    assert p.stats()["dram"]["used"] <= 4 * MiB
    np.testing.assert_array_equal(a, np.arange(n))
    del a


def test_block_size_attribute_is_the_parsed_block_size(pool):
    p = pool(block_size="16KiB")
    assert p.block_size == 16 * KiB


# ---- stats() ----------------------------------------------------------

def test_stats_has_the_contract_keys(pool):
    s = pool().stats()
    for tier in ("dram", "pmem", "nvme"):
        assert isinstance(s[tier]["capacity"], int)
        assert isinstance(s[tier]["used"], int)
    for key in ("faults", "promotions", "demotions", "bytes_read", "bytes_written", "allocated"):
        assert isinstance(s[key], int), key


def test_stats_tier_capacities_equal_the_requested_sizes(pool):
    s = pool(dram="8MiB", pmem="16MiB", nvme="32MiB").stats()
    assert s["dram"]["capacity"] == 8 * MiB
    assert s["pmem"]["capacity"] == 16 * MiB
    assert s["nvme"]["capacity"] == 32 * MiB


def test_stats_pmem_capacity_is_zero_when_no_pmem_is_asked_for(pool):
    assert pool().stats()["pmem"]["capacity"] == 0


def test_stats_of_a_fresh_pool_show_nothing_used(pool):
    s = pool().stats()
    assert s["dram"]["used"] == 0
    assert s["allocated"] == 0
    assert s["faults"] == 0


def test_writing_an_array_makes_its_blocks_resident(pool):
    p = pool()
    a = p.empty(3 * BLOCK // 8)
    a[:] = 1.0
    assert p.stats()["dram"]["used"] == 3 * BLOCK
    del a


def test_stats_of_a_released_pool_raise_instead_of_reading_freed_memory(tmp_path):
    # After close() with no arrays alive the engine is destroyed; stats() must
    # not hand the freed engine pointer to C. Run in a child: a use-after-free
    # may hang or crash.
    code = textwrap.dedent(f"""
        import tieredmem as tm
        p = tm.Pool(dram="8MiB", nvme="64MiB", nvme_path={str(tmp_path)!r})
        p.close()
        try:
            s = p.stats()
        except ValueError as e:
            print("ValueError", e)
        else:
            print("returned nvme capacity", s["nvme"]["capacity"], "(64 MiB was asked for)")
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("ValueError"), f"stats() after release: {res.stdout.strip()}"


# ---- placement() ------------------------------------------------------

def test_placement_of_a_fresh_array_is_all_unbacked(pool):
    p = pool()
    a = p.empty(10_000)
    assert p.placement(a) == {"unbacked": a.nbytes, "dram": 0, "pmem": 0, "nvme": 0}
    del a


def test_placement_after_writing_is_all_dram(pool):
    p = pool()
    a = p.empty(10_000)
    a[:] = 1.0
    assert p.placement(a) == {"unbacked": 0, "dram": a.nbytes, "pmem": 0, "nvme": 0}
    del a


def test_placement_sums_to_nbytes_when_partly_written(pool):
    p = pool()
    a = p.empty(5 * BLOCK // 8 + 3)  # 6 blocks, the last one holding 24 bytes
    a[-1] = 1.0                       # touches the last block only
    pl = p.placement(a)
    assert set(pl) == PLACEMENT_KEYS
    assert sum(pl.values()) == a.nbytes
    assert pl == {"unbacked": 5 * BLOCK, "dram": 24, "pmem": 0, "nvme": 0}
    del a


def test_placement_sums_to_nbytes_with_data_in_lower_tiers(pool):
    p = pool(dram="2MiB", nvme="64MiB")
    a = p.empty(8 * MiB // 8)
    a[:] = 1.0
    pl = p.placement(a)
    assert pl["nvme"] > 0
    assert pl["dram"] <= 2 * MiB
    assert sum(pl.values()) == a.nbytes
    del a


def test_placement_of_a_slice_counts_only_the_slice(pool):
    p = pool()
    per = BLOCK // 8
    a = p.empty(4 * per)
    a[3 * per:] = 1.0  # last block written, the first three never touched
    head, tail = a[10:20], a[3 * per + 5:]
    assert p.placement(head) == {"unbacked": head.nbytes, "dram": 0, "pmem": 0, "nvme": 0}
    assert p.placement(tail) == {"unbacked": 0, "dram": tail.nbytes, "pmem": 0, "nvme": 0}
    del a, head, tail


def test_placement_of_a_strided_view_sums_to_its_nbytes(pool):
    p = pool()
    a = p.empty(1000)
    a[:] = 1.0
    v = a[::4]
    assert p.placement(v) == {"unbacked": 0, "dram": v.nbytes, "pmem": 0, "nvme": 0}
    del a, v


def test_placement_of_an_array_not_in_the_pool_raises_valueerror(pool):
    p = pool()
    with pytest.raises(ValueError, match="not in this pool"):
        p.placement(np.zeros(100))


def test_placement_of_an_array_from_another_pool_raises_valueerror(pool):
    p, q = pool(), pool()
    a = q.zeros(100)
    with pytest.raises(ValueError, match="not in this pool"):
        p.placement(a)
    del a


def test_placement_of_a_non_array_raises_typeerror(pool):
    p = pool()
    with pytest.raises(TypeError, match="numpy array"):
        p.placement([1.0, 2.0, 3.0])


# ---- freeing ----------------------------------------------------------

def test_freeing_an_array_returns_its_bytes(pool):
    p = pool()
    a = p.empty(3 * BLOCK // 8)
    a[:] = 1.0
    s = p.stats()
    assert s["allocated"] == 3 * BLOCK and s["dram"]["used"] == 3 * BLOCK
    del a
    gc.collect()
    s = p.stats()
    assert s["allocated"] == 0
    assert s["dram"]["used"] == 0


def test_freeing_an_array_returns_its_lower_tier_slots(pool):
    p = pool(dram="2MiB", nvme="64MiB")
    a = p.empty(8 * MiB // 8)
    a[:] = 1.0
    assert p.stats()["nvme"]["used"] > 0
    del a
    gc.collect()
    s = p.stats()
    assert s["nvme"]["used"] == 0 and s["pmem"]["used"] == 0
    assert s["allocated"] == 0


def test_reallocated_memory_reads_zero(pool):
    p = pool()
    a = p.empty(3 * BLOCK // 8)
    a[:] = 7.0
    addr = a.ctypes.data
    del a
    gc.collect()
    b = p.empty(3 * BLOCK // 8)
    assert b.ctypes.data == addr  # the same memory was handed out again (its pages kept: tests/test_spare.py)
    assert not b.any()
    del b


def test_reallocated_memory_reads_zero_after_demotion(pool):
    p = pool(dram="2MiB", nvme="64MiB")
    n = 8 * MiB // 8
    a = p.empty(n)
    a[:] = 7.0  # most of it now lives on the NVMe tier
    addr = a.ctypes.data
    del a
    gc.collect()
    b = p.empty(n)
    assert b.ctypes.data == addr
    assert not b.any()
    del b


# ---- lifetime ---------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_view_dropped_on_another_thread_as_the_pool_is_closed_frees_the_pool_once(tmp_path):
    """A metadata view's unpin racing the owner's close and drop: before
    arena.c's settle let one caller release and one free (never during the
    release), 300 rounds of this crashed (SIGSEGV) every time, 60 rounds one
    time in three."""
    code = textwrap.dedent("""
        import gc, sys, threading, tieredmem as tm
        for _ in range(300):
            p = tm.Pool(dram="4MiB", nvme="16MiB", nvme_path=sys.argv[1])
            views = p.metadata()
            go = threading.Barrier(2)
            def drop_views():
                global views
                go.wait()
                views = None
                gc.collect()
            t = threading.Thread(target=drop_views)
            t.start()
            go.wait()
            p.close()
            del p
            t.join()
        print("done")
    """)
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=280)
    assert res.returncode == 0 and res.stdout.strip() == "done", (res.returncode, res.stderr[-2000:])


def test_with_block_closes_the_pool(nvme_dir):
    with tm.Pool(dram="8MiB", nvme="64MiB", nvme_path=nvme_dir) as p:
        assert not p.closed
    assert p.closed
    assert p._destroyed


def test_close_without_arrays_releases_the_engine_at_once(pool):
    p = pool()
    p.close()
    assert p.closed
    assert p._destroyed


def test_close_twice_is_harmless(pool):
    p = pool()
    p.close()
    p.close()
    assert p.closed and p._destroyed


def test_close_with_a_live_array_keeps_it_readable_and_writable(pool):
    p = pool()
    a = p.full(3 * BLOCK // 8, 1.0)
    p.close()
    assert p.closed
    assert not p._destroyed
    assert (a == 1.0).all()
    a[:] = 2.0
    assert (a == 2.0).all()
    del a


@pytest.mark.parametrize("make", [
    lambda p: p.empty(10),
    lambda p: p.zeros(10),
    lambda p: p.full(10, 1.0),
    lambda p: p.empty_like(np.zeros(10)),
    lambda p: p.asarray(np.zeros(10)),
    lambda p: p.metadata(),
], ids=["empty", "zeros", "full", "empty_like", "asarray", "metadata"])
def test_close_with_a_live_array_refuses_new_allocations(pool, make):
    p = pool()
    a = p.zeros(10)
    p.close()
    with pytest.raises(ValueError, match="closed"):
        make(p)
    del a


@pytest.mark.parametrize("control", [
    lambda p, a: p.resize("16MiB"),
    lambda p, a: p.advise(a, "hot"),
    lambda p, a: p.advise(a, "dontneed"),
    lambda p, a: p.start_trace(),
], ids=["resize", "advise hot", "advise dontneed", "start_trace"])
def test_close_with_a_live_array_refuses_controls(pool, control):
    p = pool()
    a = p.full(3 * BLOCK // 8, 1.0)
    p.close()
    with pytest.raises(ValueError, match="the pool is closed"):
        control(p, a)
    assert p.stats()["dram"]["capacity"] == 8 * MiB  # resize did not happen
    assert (a == 1.0).all()
    del a


def test_close_with_a_live_array_still_allows_inspection(pool):
    p = pool()
    a = p.full(3 * BLOCK // 8, 1.0)
    p.close()
    assert p.owns(a)
    assert p.placement(a)["dram"] == a.nbytes
    assert p.stats()["allocated"] >= a.nbytes
    assert isinstance(p.last_error(), str)
    del a


def test_stop_trace_after_close_returns_what_was_recorded(pool):
    p = pool()
    p.start_trace()
    a = p.full(3 * BLOCK // 8, 1.0)
    p.close()
    trace = p.stop_trace()
    assert trace.size == p.stats()["trace_events"] > 0
    del a


def test_closed_pool_is_released_when_its_last_array_goes(pool):
    p = pool()
    a, b = p.zeros(10), p.zeros(10)
    p.close()
    del a
    gc.collect()
    assert not p._destroyed
    del b
    gc.collect()
    assert p._destroyed


def test_a_view_keeps_a_closed_pool_alive(pool):
    p = pool()
    a = p.full(1000, 5.0)
    v = a[100:200]
    p.close()
    del a
    gc.collect()
    assert not p._destroyed
    assert (v == 5.0).all()
    v[:] = 6.0
    assert (v == 6.0).all()
    del v
    gc.collect()
    assert p._destroyed


def _threads_and_fds():
    return len(os.listdir("/proc/self/task")), len(os.listdir("/proc/self/fd"))


def test_dropping_an_unclosed_pool_releases_its_threads_and_files(nvme_dir):
    gc.collect()
    before = _threads_and_fds()
    p = tm.Pool(dram="8MiB", nvme="64MiB", nvme_path=nvme_dir)
    assert _threads_and_fds() != before  # handler threads, uffd, memfd, slot file
    del p
    gc.collect()
    assert _threads_and_fds() == before


def test_an_array_outlives_the_last_reference_to_its_pool(nvme_dir):
    a = tm.Pool(dram="8MiB", nvme="64MiB", nvme_path=nvme_dir).full(100_000, 3.0)
    gc.collect()
    assert (a == 3.0).all()
    a[:] = 4.0
    assert a.sum() == 400_000.0
    del a


def test_metadata_views_keep_a_closed_pool_alive(pool):
    p = pool()
    m = p.metadata()
    p.close()
    assert not p._destroyed
    assert m["tier"].sum() == 0  # still readable
    del m
    gc.collect()
    assert p._destroyed


# ---- metadata() -------------------------------------------------------

META_FIELDS = {"tier": np.uint8, "flags": np.uint8, "access_count": np.uint8,
               "last_access": np.uint16, "slot": np.uint32}


def test_metadata_has_the_five_fields_with_their_dtypes(pool):
    m = pool().metadata()
    assert {k: v.dtype for k, v in m.items()} == {k: np.dtype(t) for k, t in META_FIELDS.items()}
    del m


def test_metadata_has_one_entry_per_arena_block(pool):
    p = pool()
    m = p.metadata()
    lengths = {len(v) for v in m.values()}
    assert len(lengths) == 1
    assert all(v.ndim == 1 for v in m.values())
    # The arena spans at least the pool's whole capacity.
    assert lengths.pop() >= p.stats()["capacity"] // p.block_size
    del m


@pytest.mark.parametrize("field", sorted(META_FIELDS))
def test_metadata_views_are_read_only(pool, field):
    m = pool().metadata()
    v = m[field]
    assert not v.flags.writeable
    with pytest.raises(ValueError):
        v[0] = 1
    del m, v


def test_metadata_flags_mark_the_blocks_of_an_allocation(pool):
    p = pool()
    m = p.metadata()
    a = p.empty(3 * BLOCK // 8)
    assert (m["flags"] & TM_F_ALLOC != 0).sum() == 3
    assert (m["tier"] != 0).sum() == 0  # nothing written yet
    del a, m


def test_metadata_tier_of_a_block_is_dram_once_a_write_to_it_returns(pool):
    # The views are live (no copy) and read without a lock: once a write to a
    # block has returned, the block's tier must already read DRAM. Blocks are
    # written last to first so that each write faults in exactly one block.
    p = pool()
    m = p.metadata()
    nblocks, per = 64, BLOCK // 8
    a = p.empty(nblocks * per)
    blocks = np.flatnonzero(m["flags"] & TM_F_ALLOC)
    assert len(blocks) == nblocks
    tier = m["tier"]
    stale = []
    for i in reversed(range(nblocks)):
        a[i * per] = 1.0
        if tier[blocks[i]] != TIER_DRAM:
            stale.append(int(blocks[i]))
    assert stale == [], f"{len(stale)} of {nblocks} written blocks did not read tier DRAM"
    assert (tier[blocks] == TIER_DRAM).all()
    del a, m, tier
