"""The NEP 49 numpy memory handler (csrc/numpy_handler.c, tieredmem/numpy_alloc.py)
as a user sees it: which allocations go to a pool (at least `threshold`
bytes), realloc and calloc, 64-byte alignment, the handler outliving its pool,
and the scopes that select it: `with pool:`, `with tm.use(pool):` (per thread
or asyncio task) and tm.install()/tm.uninstall() (process-wide).

Pools are small (8 MiB DRAM over 64 MiB NVMe, see conftest.py); "big" arrays
are 2 MiB, above the default 1 MiB threshold. Every test deletes its arrays;
every test that installs a pool uninstalls it (the `install` fixture).
"""
import asyncio
import concurrent.futures
import contextvars
import gc
import threading

import numpy as np
import pytest
from numpy._core.multiarray import get_handler_name

import tieredmem as tm
from patterns import fill, first_mismatch

pytestmark = pytest.mark.timeout(60, method="thread")

KiB, MiB = 1 << 10, 1 << 20
THRESHOLD = MiB            # the default
BIG = 2 * MiB // 8         # float64 elements of a 2 MiB array: above the threshold
SMALL = 1000               # float64 elements of an 8000-byte array: below it
JOIN = 30                  # seconds to wait for a helper thread


@pytest.fixture
def install():
    """install(pool, **kw): tm.install, undone by tm.uninstall() at teardown
    whatever the test did (so no test leaves numpy's allocator changed)."""
    def do(pool, **kwargs):
        tm.install(pool, **kwargs)
        return pool
    try:
        yield do
    finally:
        tm.uninstall()
        gc.collect()


def in_thread(fn):
    """fn() run in a new threading.Thread; its result (or exception)."""
    out = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 -- re-raised in the caller
            out["error"] = e

    t = threading.Thread(target=target)
    t.start()
    t.join(JOIN)
    assert not t.is_alive(), "helper thread did not finish"
    if "error" in out:
        raise out["error"]
    return out["value"]


# ---- which allocations go to the pool ----------------------------------

def test_an_allocation_of_exactly_the_threshold_goes_to_the_pool(pool):
    p = pool()
    with tm.use(p):
        a = np.empty(THRESHOLD, dtype=np.uint8)
    assert p.owns(a)
    del a


def test_an_allocation_one_byte_below_the_threshold_goes_to_the_c_library(pool):
    p = pool()
    with tm.use(p):
        a = np.empty(THRESHOLD - 1, dtype=np.uint8)
    assert not p.owns(a)
    del a


def test_the_pools_threshold_option_sets_the_threshold_of_its_scopes(pool):
    p = pool(threshold="4MiB")
    with tm.use(p):
        below = np.empty(2 * MiB, dtype=np.uint8)
        at = np.empty(4 * MiB, dtype=np.uint8)
    assert (p.owns(below), p.owns(at)) == (False, True)
    del below, at


def test_the_threshold_given_to_use_overrides_the_pools(pool):
    p = pool()  # 1 MiB
    with tm.use(p, threshold="64KiB"):
        a = np.empty(64 * KiB, dtype=np.uint8)
    with tm.use(p, threshold="4MiB"):
        b = np.empty(2 * MiB, dtype=np.uint8)
    assert (p.owns(a), p.owns(b)) == (True, False)
    del a, b


def test_the_threshold_given_to_install_overrides_the_pools(pool, install):
    p = install(pool(), threshold="4MiB")
    below = np.empty(2 * MiB, dtype=np.uint8)
    at = np.empty(4 * MiB, dtype=np.uint8)
    assert (p.owns(below), p.owns(at)) == (False, True)
    del below, at


@pytest.mark.parametrize("make", [
    lambda p: p.empty(3),
    lambda p: p.zeros(3),
    lambda p: p.full(3, 7.0),
    lambda p: p.empty_like(np.arange(3.0)),
    lambda p: p.asarray([1.0, 2.0, 3.0]),
], ids=["empty", "zeros", "full", "empty_like", "asarray"])
def test_pool_constructors_put_arrays_of_any_size_in_the_pool(pool, make):
    p = pool()
    a = make(p)
    assert a.nbytes == 24
    assert p.owns(a)
    del a


def test_a_pool_array_reports_the_tieredmem_handler(pool):
    p = pool()
    with tm.use(p):
        a = np.ones(BIG)
    assert get_handler_name(a) == "tieredmem"
    del a


def test_an_allocation_beyond_the_pools_capacity_raises_memory_error(pool):
    p = pool()  # 8 MiB + 64 MiB: a 1 GiB array cannot fit, and must not land in DRAM instead
    with tm.use(p):
        with pytest.raises(MemoryError):
            np.empty(1 << 30, dtype=np.uint8)


# ---- alignment, calloc, realloc ----------------------------------------

@pytest.mark.parametrize("nbytes", [1, 3, 24, 1000, 4097, THRESHOLD - 8, THRESHOLD, THRESHOLD + 8, 3 * MiB + 8])
def test_data_pointers_from_the_handler_are_64_byte_aligned(pool, nbytes):
    p = pool()
    with tm.use(p):
        a = np.empty(nbytes, dtype=np.uint8)
    assert a.ctypes.data % 64 == 0
    del a


def test_resizing_a_small_array_in_the_c_library_keeps_it_64_byte_aligned(pool):
    p = pool()
    with tm.use(p):
        a = np.zeros(3, dtype=np.uint8)
    misaligned = []
    for n in (5, 17, 100, 1000, 4000, 20000, 70000, 300000, 11):
        a.resize(n, refcheck=False)
        if a.ctypes.data % 64:
            misaligned.append((n, a.ctypes.data % 64))
    assert misaligned == []
    del a


def test_zeros_in_the_pool_read_zero_where_a_freed_array_held_data(pool):
    p = pool()
    with tm.use(p):
        a = np.empty(BIG, dtype=np.uint64)
        fill(a, seed=1)
        del a
        z = np.zeros(BIG, dtype=np.uint64)
    assert p.owns(z)
    assert not z.any()
    del z


def test_small_zeros_from_the_handler_read_zero(pool):
    p = pool()
    with tm.use(p):
        junk = [np.full(SMALL, 0xAB, dtype=np.uint8) for _ in range(64)]
        del junk
        z = [np.zeros(SMALL, dtype=np.uint8) for _ in range(64)]
    assert not any(a.any() for a in z)
    del z


def test_resize_from_below_to_above_the_threshold_moves_into_the_pool_keeping_the_data(pool):
    p = pool()
    with tm.use(p):
        a = np.arange(SMALL, dtype=np.float64)
    assert not p.owns(a)
    a.resize(BIG, refcheck=False)
    assert p.owns(a)
    assert np.array_equal(a[:SMALL], np.arange(SMALL, dtype=np.float64))
    assert not a[SMALL:].any()
    del a


def test_resize_growing_a_pool_array_keeps_the_data(pool):
    p = pool()
    with tm.use(p):
        a = np.empty(BIG, dtype=np.uint64)
    fill(a, seed=2)
    a.resize(3 * BIG, refcheck=False)
    assert p.owns(a)
    assert first_mismatch(a, seed=2, hi=BIG) is None
    assert not a[BIG:].any()
    del a


def test_resize_shrinking_a_pool_array_below_the_threshold_keeps_the_data(pool):
    p = pool()
    with tm.use(p):
        a = np.empty(BIG, dtype=np.uint64)
    fill(a, seed=3)
    a.resize(SMALL, refcheck=False)
    assert not p.owns(a)
    assert first_mismatch(a, seed=3) is None
    assert a.ctypes.data % 64 == 0
    del a


def test_resize_growing_a_pool_array_after_the_pool_closed_keeps_the_data(pool):
    p = pool()
    with tm.use(p):
        a = np.empty(BIG, dtype=np.uint64)
    fill(a, seed=4)
    p.close()
    a.resize(2 * BIG, refcheck=False)
    assert first_mismatch(a, seed=4, hi=BIG) is None
    a[BIG:] = 5
    assert (a[BIG:] == 5).all()
    del a


# ---- the handler outlives its pool -------------------------------------

def test_a_pool_array_stays_usable_after_the_pool_closes_and_frees_cleanly(pool):
    p = pool()
    with tm.use(p):
        a = np.empty(BIG, dtype=np.uint64)
    fill(a, seed=5)
    p.close()
    gc.collect()
    assert first_mismatch(a, seed=5) is None
    a += 1
    del a
    gc.collect()
    assert p._destroyed


def test_a_pool_array_outlives_the_pool_object_itself(nvme_dir):
    p = tm.Pool(dram="8MiB", nvme="64MiB", nvme_path=nvme_dir)
    with tm.use(p):
        a = np.empty(BIG, dtype=np.uint64)
    fill(a, seed=6)
    p.close()
    del p
    gc.collect()
    assert first_mismatch(a, seed=6) is None
    b = a.copy()
    del a
    gc.collect()
    assert first_mismatch(b, seed=6) is None


def test_a_scope_whose_pool_closed_allocates_from_the_c_library(pool):
    p = pool()
    with tm.use(p):
        keep = np.empty(BIG)  # keeps the engine alive so that owns() can answer
        p.close()
        a = np.ones(BIG)
    assert not p.owns(a)
    assert a.sum() == BIG
    del a, keep


# ---- scopes: with tm.use(pool), with pool --------------------------------

def test_arrays_made_in_a_use_block_stay_in_the_pool_after_it(pool):
    p = pool()
    with tm.use(p):
        a = np.empty(BIG, dtype=np.uint64)
    fill(a, seed=7)
    assert p.owns(a)
    assert first_mismatch(a, seed=7) is None
    del a


def test_arrays_made_after_a_use_block_are_not_in_the_pool(pool):
    p = pool()
    with tm.use(p):
        pass
    a = np.empty(BIG)
    assert not p.owns(a)
    assert get_handler_name(a) != "tieredmem"
    del a


def test_use_leaves_the_pool_open(pool):
    p = pool()
    with tm.use(p) as entered:
        pass
    assert entered is p
    assert not p.closed
    a = p.empty(BIG)
    assert p.owns(a)
    del a


def test_with_pool_puts_arrays_in_the_pool(pool):
    p = pool()
    with p as entered:
        a = np.empty(BIG)
        assert p.owns(a)
    assert entered is p
    del a


def test_leaving_with_pool_closes_the_pool_and_its_arrays_stay_valid(pool):
    p = pool()
    with p:
        a = np.empty(BIG, dtype=np.uint64)
        fill(a, seed=8)
    assert p.closed
    assert p.owns(a)
    assert first_mismatch(a, seed=8) is None
    del a
    gc.collect()
    assert p._destroyed


def test_nested_use_blocks_each_restore_the_allocator_current_before_them(pool):
    p, q = pool(), pool()
    with tm.use(q):
        with tm.use(p):
            inner = np.empty(BIG)
        after_inner = np.empty(BIG)
    after_outer = np.empty(BIG)
    assert (p.owns(inner), q.owns(after_inner)) == (True, True)
    assert not p.owns(after_outer) and not q.owns(after_outer)
    del inner, after_inner, after_outer


def test_a_use_block_in_one_thread_does_not_change_another_threads_allocator(pool):
    p = pool()
    entered, made = threading.Event(), threading.Event()

    def holder():
        with tm.use(p):
            entered.set()
            made.wait(JOIN)

    t = threading.Thread(target=holder)
    t.start()
    try:
        assert entered.wait(JOIN)
        a = np.empty(BIG)
    finally:
        made.set()
        t.join(JOIN)
    assert not p.owns(a)
    del a


def test_a_thread_started_inside_a_use_block_does_not_use_the_pool(pool):
    # Documented behaviour: numpy keeps the handler in a contextvar, and a new
    # threading.Thread starts in an empty context.
    p = pool()
    with tm.use(p):
        a = in_thread(lambda: np.empty(BIG))
    assert not p.owns(a)
    del a


def test_copy_context_run_inside_a_use_block_uses_the_pool(pool):
    p = pool()
    with tm.use(p):
        ctx = contextvars.copy_context()
    a = in_thread(lambda: ctx.run(np.empty, BIG))
    assert p.owns(a)
    del a


def test_a_use_block_in_an_asyncio_task_does_not_reach_a_concurrent_task(pool):
    p = pool()

    async def main():
        entered, done = asyncio.Event(), asyncio.Event()

        async def holder():
            with tm.use(p):
                entered.set()
                await done.wait()

        async def other():
            await entered.wait()
            try:
                return np.empty(BIG)
            finally:
                done.set()

        _, a = await asyncio.gather(holder(), other())
        return a

    a = asyncio.run(main())
    assert not p.owns(a)
    del a


def test_a_task_created_inside_a_use_block_uses_the_pool(pool):
    p = pool()

    async def make():
        await asyncio.sleep(0)
        return np.empty(BIG)

    async def main():
        with tm.use(p):
            task = asyncio.create_task(make())
        return await task

    a = asyncio.run(main())
    assert p.owns(a)
    del a


def test_leaving_with_pool_in_an_asyncio_task_restores_that_tasks_own_allocator(pool):
    # Task A enters `with p:`, then task B (inside `with tm.use(q):`) enters
    # `with p:` too; A leaves first. After its block A must be back on numpy's
    # default allocator, and B, after its own block, back on q.
    p, q = pool(), pool()

    async def main():
        a_in, b_in, a_out = asyncio.Event(), asyncio.Event(), asyncio.Event()

        async def task_a():
            with p:
                a_in.set()
                await b_in.wait()
            arr = np.empty(BIG)
            a_out.set()
            return arr

        async def task_b():
            with tm.use(q):
                await a_in.wait()
                with p:
                    b_in.set()
                    await a_out.wait()
                return np.empty(BIG)

        return await asyncio.gather(task_a(), task_b())

    a, b = asyncio.run(main())
    assert (q.owns(a), q.owns(b)) == (False, True), \
        "each task's allocator after `with pool:` is the one it had before it"
    del a, b


# ---- install / uninstall -------------------------------------------------

def test_install_puts_big_arrays_of_the_main_thread_in_the_pool(pool, install):
    p = install(pool())
    a = np.empty(BIG)
    assert p.owns(a)
    assert get_handler_name(a) == "tieredmem"
    del a


def test_install_leaves_arrays_below_the_threshold_out_of_the_pool(pool, install):
    p = install(pool())
    a = np.empty(SMALL)
    assert not p.owns(a)
    assert a.ctypes.data % 64 == 0
    del a


def test_install_reaches_threads_started_after_it(pool, install):
    p = install(pool())
    a = in_thread(lambda: np.empty(BIG))
    assert p.owns(a)
    del a


def test_install_reaches_threads_started_before_it(pool, install):
    p = pool()
    go, out = threading.Event(), {}

    def worker():
        np.empty(SMALL)  # this thread has used numpy before the install
        go.wait(JOIN)
        out["a"] = np.empty(BIG)

    t = threading.Thread(target=worker)
    t.start()
    try:
        install(p)
    finally:
        go.set()
        t.join(JOIN)
    assert p.owns(out["a"])
    del out["a"]


def test_install_reaches_thread_pool_executor_workers(pool, install):
    p = install(pool())
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as ex:
        arrays = list(ex.map(lambda _: np.empty(BIG), range(4)))
    assert all(p.owns(a) for a in arrays)
    del arrays


def test_installed_names_the_installed_pool_and_none_after_uninstall(pool, install):
    p = pool()
    assert tm.installed() is None
    install(p)
    assert tm.installed() is p
    tm.uninstall()
    assert tm.installed() is None


def test_after_uninstall_new_arrays_are_not_in_the_pool(pool, install):
    p = install(pool())
    tm.uninstall()
    a = np.empty(BIG)
    assert not p.owns(a)
    del a


def test_after_uninstall_new_arrays_stay_out_of_the_pool_while_one_of_its_arrays_lives(pool, install):
    p = install(pool())
    old = np.empty(BIG)
    tm.uninstall()
    new = np.empty(BIG)
    assert p.owns(old) and not p.owns(new)
    del old, new


def test_arrays_made_while_installed_stay_valid_after_uninstall(pool, install):
    install(pool())
    big = np.empty(BIG, dtype=np.uint64)
    small = np.arange(SMALL, dtype=np.uint64)
    fill(big, seed=9)
    tm.uninstall()
    assert first_mismatch(big, seed=9) is None
    big.resize(2 * BIG, refcheck=False)
    small.resize(10 * SMALL, refcheck=False)
    assert first_mismatch(big, seed=9, hi=BIG) is None
    assert np.array_equal(small[:SMALL], np.arange(SMALL, dtype=np.uint64))
    del big, small


def test_new_arrays_use_the_default_allocator_once_the_installed_handlers_arrays_are_freed(pool, install):
    install(pool())
    a = np.empty(BIG)
    tm.uninstall()
    del a
    gc.collect()
    b = np.empty(BIG)
    assert get_handler_name(b) == "default_allocator"
    del b


def test_arrays_made_before_install_are_freed_and_resized_correctly_while_installed(pool, install):
    before_small = np.arange(SMALL, dtype=np.float64)
    before_big = np.arange(BIG, dtype=np.float64)
    p = install(pool())
    before_small.resize(BIG, refcheck=False)  # crosses the threshold while installed
    assert np.array_equal(before_small[:SMALL], np.arange(SMALL, dtype=np.float64))
    assert p.owns(before_small)
    assert before_big[-1] == BIG - 1
    del before_small, before_big
    gc.collect()


def test_reinstalling_while_an_array_of_the_last_install_lives_uses_the_new_pool(pool, install):
    p, q = pool(), pool()
    install(p)
    old = np.empty(BIG)
    tm.uninstall()
    install(q)
    new = np.empty(BIG)
    assert p.owns(old) and q.owns(new)
    assert tm.installed() is q
    del old, new


def test_a_use_block_takes_precedence_over_the_installed_pool(pool, install):
    p, q = pool(), pool()
    install(p)
    with tm.use(q):
        a = np.empty(BIG)
    b = np.empty(BIG)
    assert (q.owns(a), p.owns(b)) == (True, True)
    del a, b


def test_uninstall_without_an_install_changes_nothing():
    tm.uninstall()
    assert tm.installed() is None
    a = np.empty(BIG)
    assert get_handler_name(a) == "default_allocator"
    del a


def test_installing_a_closed_pool_raises_value_error(pool, install):
    p = pool()
    p.close()
    with pytest.raises(ValueError):
        install(p)
    assert tm.installed() is None
