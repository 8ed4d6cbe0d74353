"""A forked child (os.fork, multiprocessing's "fork" start method,
ProcessPoolExecutor) reads its parent's pool arrays as they were at the fork,
wherever their blocks were (DRAM, PMEM, NVMe); its writes stay its own; the
parent's data, budget and tiers are unaffected, and the lower-tier slots kept
for the child are let go when it exits. In the child, pools are read-only
views: new arrays come from the C library."""
import concurrent.futures
import multiprocessing as mp
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import tieredmem as tm

pytestmark = pytest.mark.timeout(120, method="thread")

MiB = 1 << 20
FORK = mp.get_context("fork")


@pytest.fixture
def spilled(make_pool):
    """A pool whose 64 MiB array is 4x its DRAM: most of it on NVMe."""
    pool = make_pool(dram="16MiB", nvme="512MiB")
    a = pool.empty(64 * MiB // 8, dtype=np.uint64)
    a[:] = np.arange(a.size, dtype=np.uint64)
    assert pool.placement(a)["nvme"] >= 32 * MiB
    return pool, a


@pytest.fixture
def installed(make_pool):
    pool = make_pool(dram="64MiB", nvme="1GiB")
    tm.install(pool)
    try:
        yield pool
    finally:
        tm.uninstall()


def fork_and_wait(child, timeout=60):
    """Run child() in a forked process; return its exit code (None: hung)."""
    proc = FORK.Process(target=child)
    proc.start()
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        return None
    return proc.exitcode


def wait_for(cond, seconds=10):
    deadline = time.monotonic() + seconds
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.05)
    return cond()


def test_forked_child_reads_every_tier_of_a_parents_array_exactly(spilled):
    pool, a = spilled
    code = fork_and_wait(lambda: os._exit(0 if np.array_equal(a, np.arange(a.size, dtype=np.uint64)) else 3))
    assert code == 0


def test_forked_child_sees_the_array_as_at_the_fork_not_the_parents_later_writes(spilled):
    pool, a = spilled
    go = FORK.Event()

    def child():
        go.wait(30)  # the parent has rewritten all of a by now
        os._exit(0 if np.array_equal(a, np.arange(a.size, dtype=np.uint64)) else 3)

    proc = FORK.Process(target=child)
    proc.start()
    a += np.uint64(1)
    go.set()
    proc.join(60)
    assert proc.exitcode == 0
    assert np.array_equal(a, np.arange(1, a.size + 1, dtype=np.uint64))


def test_forked_childs_writes_do_not_reach_the_parent(spilled):
    pool, a = spilled

    def child():
        a[:] = 7
        os._exit(0 if (a == 7).all() else 3)

    assert fork_and_wait(child) == 0
    assert np.array_equal(a, np.arange(a.size, dtype=np.uint64))


def test_parent_rewriting_its_array_while_a_child_lives_keeps_its_budget(spilled):
    pool, a = spilled
    done = FORK.Event()
    proc = FORK.Process(target=lambda: done.wait(60))
    proc.start()
    try:
        for _ in range(2):
            a += np.uint64(1)
        s = pool.stats()
        assert s["fork_children"] == 1 and s["fork_kept"] > 0, s
        assert s["dram"]["peak"] <= s["dram"]["capacity"] and s["budget_overruns"] == 0, s
        assert s["fork_unshared"] > 0, s  # the shared pages really were demoted
    finally:
        done.set()
        proc.join(30)
    assert np.array_equal(a, np.arange(2, a.size + 2, dtype=np.uint64))


def test_slots_kept_for_a_child_are_let_go_after_it_exits(spilled):
    pool, a = spilled
    assert fork_and_wait(lambda: os._exit(0)) == 0
    assert wait_for(lambda: pool.stats()["fork_children"] == 0), pool.stats()
    assert pool.stats()["fork_kept"] == 0
    a += np.uint64(1)  # kept, the old slots would add to the new ones
    a += np.uint64(1)
    assert pool.stats()["nvme"]["used"] <= a.nbytes, pool.stats()["nvme"]
    assert np.array_equal(a, np.arange(2, a.size + 2, dtype=np.uint64))


def rss_anon():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:"))


def test_forked_child_reading_a_spilled_array_holds_at_most_a_quarter_of_the_budget_of_it(spilled):
    pool, a = spilled
    cap = pool.stats()["dram"]["capacity"] // 4

    def child():
        before = rss_anon()
        for _ in range(2):
            ok = int(a.sum()) == a.size * (a.size - 1) // 2
        grew = rss_anon() - before
        os._exit(0 if ok and grew <= cap + 2 * MiB else 3)

    assert fork_and_wait(child) == 0


def test_grandchild_reads_what_its_parent_child_saw(spilled):
    pool, a = spilled

    def child():
        a[:4] = 9  # the child's own, inherited by its child

        def grandchild():
            want = np.arange(a.size, dtype=np.uint64)
            want[:4] = 9
            os._exit(0 if np.array_equal(a, want) else 3)

        os._exit(fork_and_wait(grandchild) or 0)

    assert fork_and_wait(child) == 0


def sum_slice(bounds):
    lo, hi = bounds
    return int(SHARED[lo:hi].sum())


def test_fork_pool_map_over_a_parents_spilled_array_is_correct(spilled):
    global SHARED
    pool, SHARED = spilled
    parts = [(i, i + SHARED.size // 8) for i in range(0, SHARED.size, SHARED.size // 8)]
    with FORK.Pool(2) as workers:
        got = workers.map_async(sum_slice, parts).get(60)
    assert got == [int(SHARED[lo:hi].sum()) for lo, hi in parts]


def test_process_pool_executor_over_a_parents_spilled_array_is_correct(spilled):
    global SHARED
    pool, SHARED = spilled
    parts = [(i, i + SHARED.size // 4) for i in range(0, SHARED.size, SHARED.size // 4)]
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=FORK) as ex:
        got = list(ex.map(sum_slice, parts, timeout=60))
    assert got == [int(SHARED[lo:hi].sum()) for lo, hi in parts]


def test_forked_child_allocates_arrays_from_the_c_library(installed):
    def child():
        b = np.ones(2**22)  # 32 MiB, above the threshold: would go to the pool
        os._exit(0 if b.sum() == 2**22 and not installed.owns(b) else 3)

    assert fork_and_wait(child) == 0


def test_forked_child_makes_and_uses_a_pool_of_its_own(spilled, nvme_dir):
    pool, a = spilled

    def child():
        own = tm.Pool(dram="8MiB", nvme="256MiB", nvme_path=nvme_dir)
        b = own.empty(4 * own.stats()["dram"]["capacity"] // 8, dtype=np.uint64)
        b[:] = a[:b.size]
        ok = np.array_equal(b, np.arange(b.size, dtype=np.uint64)) and own.placement(b)["nvme"] > 0
        del b
        own.close()
        os._exit(0 if ok else 3)

    assert fork_and_wait(child) == 0


def test_forked_child_freeing_a_pool_array_leaves_the_parents_data_intact(installed):
    a = np.arange(2**22, dtype=np.float64)
    assert installed.owns(a)
    holder = [a]

    def child():
        holder.clear()  # drops the parent's pool array in the child
        os._exit(0)

    assert fork_and_wait(child) == 0
    assert installed.placement(a)["dram"] == a.nbytes
    assert np.array_equal(a, np.arange(2**22, dtype=np.float64))


def test_forked_child_is_refused_advice_and_resizing_with_a_reason(spilled):
    pool, a = spilled

    def child():
        try:
            pool.advise(a, "willneed")
        except Exception as e:
            advised = "forked child" in str(e)
        else:
            advised = False
        try:
            pool.resize(dram="32MiB")
        except Exception as e:
            resized = "forked child" in str(e)
        else:
            resized = False
        os._exit(0 if advised and resized else 3)

    assert fork_and_wait(child) == 0


def test_forked_workers_under_run_give_correct_results(tmp_path):
    """The issue's case: `run` with DRAM smaller than the arrays; a fork Pool
    and a ProcessPoolExecutor over the parent's arrays; nothing hangs."""
    script = tmp_path / "workers.py"
    script.write_text(textwrap.dedent("""
        import concurrent.futures, multiprocessing as mp
        import numpy as np
        import tieredmem as tm
        A = np.arange(12 << 20, dtype=np.float64)  # 96 MiB, 3x DRAM
        def part(i):
            s = A[i * (1 << 20):(i + 1) * (1 << 20)]
            s *= 2  # the worker's own copy
            return float(s.sum())
        if __name__ == "__main__":
            assert tm.installed().owns(A)
            want = [float(A[i << 20:(i + 1) << 20].sum()) * 2 for i in range(12)]
            ctx = mp.get_context("fork")
            with ctx.Pool(2) as p:
                assert p.map_async(part, range(12)).get(60) == want
            with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as ex:
                assert list(ex.map(part, range(12), timeout=60)) == want
            assert np.array_equal(A, np.arange(12 << 20, dtype=np.float64)), "a child's write reached the parent"
            print("OK")
    """))
    env = dict(os.environ, TIEREDMEM_NVME_PATH=str(tmp_path))
    res = subprocess.run([sys.executable, "-m", "tieredmem", "run", "--dram", "32MiB", str(script)],
                         capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0 and "OK" in res.stdout, res.stdout + res.stderr
