"""Zero fills from huge pages (csrc/hugezero.c): where a fault's 2 MiB of the
arena are all fresh and fit in DRAM, a chunk populated ahead of need (by the
kernel, in a huge page when it has one) is moved in whole instead of zeros
being copied in; the blocks of such a chunk are demoted, read back, forked
and freed one by one like any others."""
import gc
import os
import time

import numpy as np

MiB = 1 << 20


def chunks_ready(a):
    """Touch a small fresh array (the fault has the chunks populated) and give
    an idle handler the time to populate them."""
    a[0] = 1
    time.sleep(0.3)


def test_a_fresh_array_that_fits_is_filled_by_moving_huge_pages_in(pool):
    p = pool(dram="64MiB")
    chunks_ready(p.empty(MiB // 8))
    a = p.zeros(8 * MiB // 8)
    a[:] = 3.0
    s = p.stats()
    assert s["huge_zero_fills"] >= 2 * MiB // p.block_size, s["huge_zero_fills"]
    assert s["huge_zero_fills"] <= s["zero_fills"]
    assert np.all(a == 3.0)
    del a


def test_memory_filled_from_huge_pages_reads_as_zero(pool):
    p = pool(dram="64MiB")
    chunks_ready(p.empty(MiB // 8))
    a = p.empty(8 * MiB // 8)
    assert not a.any()
    assert p.stats()["huge_zero_fills"] > 0
    del a


def test_blocks_of_a_huge_page_are_demoted_and_read_back_exactly(pool):
    p = pool(dram="32MiB", nvme="256MiB")  # the smallest budget with chunks: 16 of them
    chunks_ready(p.empty(MiB // 8))
    a = p.empty(4 * MiB // 8, dtype=np.uint64)
    a[:] = np.arange(a.size, dtype=np.uint64)
    assert p.stats()["huge_zero_fills"] > 0
    other = p.empty(64 * MiB // 8)
    other[:] = 1.0  # pushes a out, a block at a time
    assert p.placement(a)["dram"] < a.nbytes
    assert np.array_equal(a, np.arange(a.size, dtype=np.uint64))
    del a, other


def test_a_forked_child_reads_an_array_filled_from_huge_pages(pool):
    p = pool(dram="64MiB")
    chunks_ready(p.empty(MiB // 8))
    a = p.empty(4 * MiB // 8, dtype=np.uint64)
    a[:] = 7
    assert p.stats()["huge_zero_fills"] > 0
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave at once
        os.close(r)
        ok = bool(np.all(a == 7))
        a[:] = 8  # its own copy
        os.write(w, b"1" if ok else b"0")
        os._exit(0)
    os.close(w)
    got = os.read(r, 1)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert got == b"1"
    assert np.all(a == 7)
    del a


def test_a_freed_huge_page_array_is_kept_as_spares_and_reused(pool):
    p = pool(dram="64MiB")
    chunks_ready(p.empty(MiB // 8))
    a = p.empty(4 * MiB // 8)
    a[:] = 5.0
    addr = a.ctypes.data
    del a
    gc.collect()
    b = p.empty(4 * MiB // 8)
    assert b.ctypes.data == addr and p.stats()["spare_reuses"] == 4 * MiB // p.block_size
    assert not b.any()
    del b


def test_huge_pages_populated_ahead_count_in_the_budget_and_give_way(pool):
    p = pool(dram="32MiB", nvme="256MiB")
    chunks_ready(p.empty(MiB // 8))
    assert p.stats()["zero_ready"] > 0
    a = p.empty(31 * MiB // 8)
    a[:] = 1.0  # fills DRAM: the ready huge pages are moved in or given back
    s = p.stats()
    assert s["dram"]["used"] + s["spare"] + s["zero_ready"] <= s["dram"]["capacity"], s
    assert s["dram"]["peak"] <= s["dram"]["capacity"], s
    assert s["bytes_written"] == 0, "room for a's blocks came from the huge pages, not from demotions"
    assert a.sum() == a.size
    del a
