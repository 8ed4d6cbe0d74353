"""Spare blocks: freed memory whose pages stay mapped for the next allocation
there (csrc/spare.c, docs/architecture.md "Freeing, and spares").

Programs free and allocate arrays of the same sizes over and over; an array
allocated where one was just freed takes its pages as they are (zeroed), with
no fault and no zero fill. Spares are DRAM held: they count in the budget,
give way to data that needs the room, and go back after a second unused."""
import gc
import time

import numpy as np
import psutil

MiB = 1 << 20
BLOCK = 64 << 10


def freed_array(p, nbytes, value=1.0):
    """Make an array of nbytes in p, write it, free it; its address."""
    a = p.empty(nbytes // 8)
    a[:] = value
    addr = a.ctypes.data
    del a
    gc.collect()
    return addr


def test_a_freed_array_keeps_its_pages_as_spares_within_the_budget(pool):
    p = pool(dram="16MiB")
    freed_array(p, 4 * MiB)
    s = p.stats()
    assert s["spare"] == 4 * MiB and s["dram"]["used"] == 0 and s["allocated"] == 0, s
    assert s["dram"]["peak"] <= s["dram"]["capacity"]


def test_an_array_allocated_where_one_was_freed_reuses_its_pages_without_a_fault(pool):
    p = pool(dram="16MiB")
    addr = freed_array(p, 4 * MiB)
    before = p.stats()
    b = p.empty(4 * MiB // 8)
    b[:] = 2.0
    after = p.stats()
    blocks = 4 * MiB // BLOCK
    assert b.ctypes.data == addr
    assert after["faults"] == before["faults"] and after["zero_fills"] == before["zero_fills"], (before, after)
    assert after["spare_reuses"] - before["spare_reuses"] == blocks
    assert after["spare"] == 0 and after["dram"]["used"] == 4 * MiB
    del b


def test_a_reused_block_evicted_still_all_zero_is_dropped_not_written(pool):
    p = pool(dram="8MiB")
    freed_array(p, 4 * MiB)
    b = p.zeros(4 * MiB // 8)  # on the spares: zeros, never written
    assert p.stats()["spare_reuses"] == 4 * MiB // BLOCK
    written = p.stats()["bytes_written"]
    other = p.empty(12 * MiB // 8)
    other[:] = 1.0  # pushes b out of DRAM
    assert p.placement(b)["dram"] < b.nbytes
    assert p.stats()["bytes_written"] - written <= other.nbytes, "b's blocks were written out"
    assert p.placement(b)["unbacked"] == b.nbytes - p.placement(b)["dram"]
    assert not b.any()
    del b, other


def test_reused_spares_read_as_zero(pool):
    p = pool(dram="16MiB")
    freed_array(p, 4 * MiB, value=7.0)
    b = p.empty(4 * MiB // 8)
    assert p.stats()["spare_reuses"] == 4 * MiB // BLOCK
    assert not b.any()
    del b


def test_a_larger_allocation_over_spares_reuses_them_and_zero_fills_the_rest(pool):
    p = pool(dram="16MiB")
    addr = freed_array(p, 2 * MiB, value=5.0)
    b = p.empty(3 * MiB // 8)  # the free range above the spares is free too: first fit lands there
    assert b.ctypes.data == addr
    assert p.stats()["spare_reuses"] == 2 * MiB // BLOCK
    assert not b.any()
    b[:] = 1.0
    assert b.sum() == b.size
    del b


def test_spares_give_way_to_new_data_without_a_write(pool):
    p = pool(dram="8MiB")  # 2 MiB batches: a fault wants room for one
    a = p.empty(4 * MiB // 8)
    a[:] = 1.0
    guard = p.empty(BLOCK // 8)  # keeps the next, larger allocation from landing on a's range
    guard[:] = 1.0
    del a
    gc.collect()
    assert p.stats()["spare"] == 4 * MiB
    c = p.empty(5 * MiB // 8)
    c[:] = 3.0  # needs the room the spares hold, not more
    s = p.stats()
    assert s["spare_reuses"] == 0
    assert s["spare"] + s["zero_ready"] + s["dram"]["used"] <= s["dram"]["capacity"], s
    assert s["dram"]["peak"] <= s["dram"]["capacity"], s
    assert s["bytes_written"] == 0 and s["demotions"] == 0, "spares were given back, not data demoted"
    assert c.sum() == 3.0 * c.size
    del c, guard


def test_spares_unused_for_a_second_go_back_to_the_system(pool):
    p = pool(dram="64MiB")
    freed_array(p, 32 * MiB)
    assert p.stats()["spare"] == 32 * MiB
    rss = psutil.Process().memory_info().rss
    deadline = time.monotonic() + 5
    while p.stats()["spare"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert p.stats()["spare"] == 0
    assert psutil.Process().memory_info().rss < rss - 24 * MiB


def test_a_freed_array_read_back_from_below_keeps_its_clean_blocks_as_spares(pool):
    p = pool(dram="4MiB", nvme="64MiB")
    a = p.empty(8 * MiB // 8)
    a[:] = 1.0  # most of it goes to NVMe
    assert a.sum() == a.size  # its tail comes back clean, write-protected
    addr = a.ctypes.data
    del a
    gc.collect()
    spare = p.stats()["spare"]
    assert spare > 0
    b = p.empty(8 * MiB // 8)
    assert b.ctypes.data == addr
    assert p.stats()["spare_reuses"] == spare // BLOCK
    assert not b.any()
    b[:] = 2.0
    assert b.sum() == 2.0 * b.size
    del b


def test_the_budget_holds_when_arrays_are_freed_and_reallocated_under_pressure(pool):
    p = pool(dram="8MiB", nvme="128MiB")
    keep = p.empty(12 * MiB // 8)
    keep[:] = 1.0
    for i in range(8):
        t = p.empty((2 + i % 3) * MiB // 8)
        t[:] = i
        assert t.sum() == i * t.size
        keep[i * MiB // 8:(i + 1) * MiB // 8] += t[:MiB // 8]
        del t
        s = p.stats()
        assert s["dram"]["used"] + s["spare"] + s["zero_ready"] <= s["dram"]["capacity"], s
    s = p.stats()
    assert s["spare_reuses"] > 0
    assert s["dram"]["peak"] <= s["dram"]["capacity"], s
    expect = np.ones(keep.size)
    for i in range(8):
        expect[i * MiB // 8:(i + 1) * MiB // 8] += i
    assert np.array_equal(keep, expect)
    del keep
