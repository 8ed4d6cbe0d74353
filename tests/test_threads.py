"""Several application threads faulting on one array under memory pressure:
every write lands, every thread finishes (no hang in fault service)."""
import gc
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from patterns import MiB, pattern

import tieredmem as tm

CHUNK = 256 * 1024 // 8  # elements per write: small, so threads interleave
NTHREADS = 4
JOIN_TIMEOUT = 90

pytestmark = pytest.mark.timeout(150, method="thread")


def run_threads(target, n=NTHREADS):
    """Run target(tid) on n threads; fail unless all finish within
    JOIN_TIMEOUT without raising."""
    errors = []

    def wrap(tid):
        try:
            target(tid)
        except BaseException as e:
            errors.append((tid, repr(e)))
            barrier_abort()

    threads = [threading.Thread(target=wrap, args=(t,), daemon=True, name=f"writer-{t}") for t in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + JOIN_TIMEOUT
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    hung = [t.name for t in threads if t.is_alive()]
    assert not hung, f"threads still running after {JOIN_TIMEOUT}s: {hung}"
    assert not errors, errors


_barriers = []


def barrier_abort():
    for b in _barriers:
        b.abort()


def make_barrier(n=NTHREADS):
    b = threading.Barrier(n, timeout=JOIN_TIMEOUT)
    _barriers.append(b)
    return b


TIERS = {"nvme": dict(), "pmem+nvme": dict(pmem="16MiB")}


@pytest.fixture(params=list(TIERS))
def pool(nvme_dir, request):
    p = tm.Pool(dram="16MiB", nvme="512MiB", nvme_path=nvme_dir, block_size="64KiB", **TIERS[request.param])
    yield p
    _barriers.clear()
    gc.collect()
    p.close()


def test_four_threads_writing_and_verifying_disjoint_regions_lose_nothing(pool):
    budget = pool.stats()["dram"]["capacity"]
    a = pool.empty(4 * budget // 8, dtype=np.uint64)
    part = a.size // NTHREADS
    mismatches = {}

    def work(tid):
        lo, hi = tid * part, (tid + 1) * part
        for rnd in range(3):
            seed = 100 * rnd + tid
            for i in range(lo, hi, CHUNK):
                a[i:min(i + CHUNK, hi)] = pattern(i, min(i + CHUNK, hi), seed)
            for i in range(lo, hi, CHUNK):
                j = min(i + CHUNK, hi)
                if not np.array_equal(a[i:j], pattern(i, j, seed)):
                    mismatches.setdefault(tid, []).append((rnd, i))

    run_threads(work)
    assert not mismatches, {t: m[:5] for t, m in mismatches.items()}
    s = pool.stats()
    assert s["demotions"] > 0 and s["promotions"] > 0, "no memory pressure"
    assert s["io_errors"] == 0 and s["sigbus_sent"] == 0, s["last_error"]
    del a
    gc.collect()


def test_four_threads_writing_interleaved_slots_of_the_same_blocks_lose_nothing(pool):
    """Thread t owns elements t, t+4, t+8, ...: every block is written by all
    four threads at once. After each round (a Barrier) every element must
    hold its owner's value for that round."""
    budget = pool.stats()["dram"]["capacity"]
    a = pool.empty(4 * budget // 8, dtype=np.uint64)
    rounds = 3
    barrier = make_barrier()
    mismatches = []
    part = a.size // NTHREADS
    step = CHUNK * NTHREADS

    def work(tid):
        for rnd in range(rounds):
            # own slots, written front to back in chunks
            for i in range(tid, a.size, step):
                j = min(i + step, a.size)
                a[i:j:NTHREADS] = pattern(i, j, rnd, NTHREADS)
            barrier.wait()
            # every thread checks one quarter: all four threads' writes
            lo, hi = tid * part, (tid + 1) * part
            for i in range(lo, hi, CHUNK):
                j = min(i + CHUNK, hi)
                got = a[i:j]
                want = pattern(i, j, rnd)
                if not np.array_equal(got, want):
                    k = int(np.flatnonzero(got != want)[0])
                    mismatches.append((rnd, tid, i + k, f"owner thread {(i + k) % NTHREADS}"))
                    break
            barrier.wait()

    run_threads(work)
    assert not mismatches, mismatches[:8]
    s = pool.stats()
    assert s["demotions"] > 0 and s["promotions"] > 0, "no memory pressure"
    del a
    gc.collect()


def test_threads_taking_turns_see_the_last_writer_in_every_block(pool):
    """Each round one thread rewrites the whole array while the others wait;
    then all four read all of it at once (concurrent faults on the same
    blocks) and must see exactly that round's data."""
    budget = pool.stats()["dram"]["capacity"]
    a = pool.empty(3 * budget // 8, dtype=np.uint64)
    rounds = 4
    barrier = make_barrier()
    mismatches = []

    def work(tid):
        for rnd in range(rounds):
            if rnd % NTHREADS == tid:
                for i in range(0, a.size, CHUNK):
                    j = min(i + CHUNK, a.size)
                    a[i:j] = pattern(i, j, 1000 + rnd)
            barrier.wait()
            # start at different places so the readers collide on blocks
            # while moving in different directions through the array
            starts = list(range(0, a.size, CHUNK))
            k = tid * len(starts) // NTHREADS
            order = starts[k:] + starts[:k]
            if tid % 2:
                order.reverse()
            for i in order:
                j = min(i + CHUNK, a.size)
                if not np.array_equal(a[i:j], pattern(i, j, 1000 + rnd)):
                    mismatches.append((rnd, tid, i))
                    break
            barrier.wait()

    run_threads(work)
    assert not mismatches, mismatches[:8]
    del a
    gc.collect()


def test_dram_budget_holds_with_four_faulting_threads(pool):
    """Resident bytes stay within the budget plus one block per faulting
    thread while four threads fault concurrently."""
    budget = pool.stats()["dram"]["capacity"]
    a = pool.empty(4 * budget // 8, dtype=np.uint64)
    part = a.size // NTHREADS

    def work(tid):
        lo, hi = tid * part, (tid + 1) * part
        for rnd in range(2):
            for i in range(lo, hi, CHUNK):
                a[i:min(i + CHUNK, hi)] += np.uint64(rnd + 1)

    run_threads(work)
    s = pool.stats()
    assert s["dram"]["peak"] <= budget + NTHREADS * pool.block_size, s["dram"]
    assert s["budget_overruns"] == 0, s
    for i in range(0, a.size, CHUNK):
        assert (a[i:i + CHUNK] == 3).all(), f"lost update near element {i}"
    del a
    gc.collect()


def test_four_threads_reading_a_file_into_disjoint_regions_get_exact_bytes(pool, tmp_path):
    """Kernel-mode faults (preadv into pool memory) from four threads at once."""
    budget = pool.stats()["dram"]["capacity"]
    a = pool.empty(4 * budget // 8, dtype=np.uint64)
    a[:] = 3  # stale data, pushed to lower tiers by the rest of the fill
    path = tmp_path / "data.bin"
    with open(path, "wb") as f:
        for i in range(0, a.size, CHUNK):
            f.write(pattern(i, min(i + CHUNK, a.size), 77))
    mv = memoryview(a).cast("B")
    part = a.nbytes // NTHREADS
    step = 1 * MiB

    def work(tid):
        fd = os.open(path, os.O_RDONLY)
        try:
            for off in range(tid * part, (tid + 1) * part, step):
                got = 0
                while got < step:
                    n = os.preadv(fd, [mv[off + got:off + step]], off + got)
                    assert n > 0
                    got += n
        finally:
            os.close(fd)

    run_threads(work)
    for i in range(0, a.size, CHUNK):
        j = min(i + CHUNK, a.size)
        assert np.array_equal(a[i:j], pattern(i, j, 77)), f"wrong bytes near element {i}"
    del mv, a
    gc.collect()


def test_threads_allocating_touching_and_freeing_at_once_always_get_usable_memory(nvme_dir):
    """One thread's zero fill can serve another thread's fault whose message
    is still queued; that thread may free its memory before the message is
    read. The stale fault then finds a free block (and poisons it): the next
    allocation of that block must start clean, not deliver SIGBUS. Seen with
    four threads each making and filling arrays of 1-3 MiB; in a subprocess,
    since a SIGBUS would end the test run."""
    code = textwrap.dedent(f"""
        import ctypes, random, threading, tieredmem as tm
        pool = tm.Pool(dram="64MiB", nvme="1GiB", nvme_path={str(nvme_dir)!r})
        def work(seed):
            rng = random.Random(seed)
            for _ in range(300):
                a = pool.empty(rng.choice((1, 3)) * 2**20 // 8)
                ctypes.memset(a.ctypes.data, seed, a.nbytes)  # releases the GIL: faults at once
                assert ctypes.string_at(a.ctypes.data, 1) == bytes([seed])
        threads = [threading.Thread(target=work, args=(s,)) for s in range(1, 5)]
        for t in threads: t.start()
        for t in threads: t.join()
        print("done")
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "done", (res.returncode, res.stderr[-2000:])
