"""Eight threads doing random reads and writes on a footprint four times the
DRAM budget: no thread ever stops making progress (a watchdog), the budget
holds throughout, and every byte reads back exactly.

Layout: one array of 4x DRAM. Each thread owns a region, cut into 16 KiB
chunks (a quarter block, so writes are partial-block); it writes
version-stamped patterns (patterns.pattern, seeded by thread, chunk and
version) to random chunks of it and remembers the version of each, so any
chunk can be checked at any time, by it or by the main thread at the end. A
shared region, written once before the threads start, is only read by all of
them, so several threads fault on the same blocks at once. Random reads,
writes and sequential scans (which grow the readahead window to its maximum)
are mixed.

Prefetch (stream readahead) is always on in the engine, so it is exercised
here. Every run is repeated for each built-in policy (tm.policy_names()),
with hint-fault sampling on at its default budget: the runs check that hint
faults were taken, so the threads' accesses did race the background thread's
unmapping and the faults it causes.

The 60 s runs are marked slow (`pytest -m slow tests/test_stress.py`); a 3 s
run of each configuration and policy is part of make test.
"""
import faulthandler
import gc
import tempfile
import threading
import time

import numpy as np
import pytest

from patterns import KiB, MiB, pattern

import tieredmem as tm

NTHREADS = 8
DRAM = 16 * MiB
FOOTPRINT = 4 * DRAM
SHARED = 16 * MiB // 8  # elements of the shared, read-only region
OWN = (FOOTPRINT // 8 - SHARED) // NTHREADS  # elements each thread owns (6 MiB)
UNIT = 16 * KiB // 8  # elements per chunk
CHUNKS = OWN // UNIT
SCAN = 64  # chunks per sequential scan: 1 MiB
STALL_SECONDS = 20  # a thread with no finished operation for this long is stuck
SHARED_SEED = 0x5EED

TIERS = {"nvme": dict(), "pmem+nvme": dict(pmem="16MiB")}


def chunk_seed(tid, chunk, version):
    return (tid << 48) | (chunk << 24) | version


class Worker:
    """One thread's region and what it last wrote to each chunk of it."""

    def __init__(self, a, tid):
        self.a, self.tid = a, tid
        self.base = SHARED + tid * OWN
        self.version = np.zeros(CHUNKS, dtype=np.int64)  # 0: never written, reads zero
        self.ops = 0
        self.rng = np.random.default_rng(tid)

    def span(self, chunk):
        lo = self.base + chunk * UNIT
        return lo, lo + UNIT

    def expected(self, chunk):
        lo, hi = self.span(chunk)
        v = int(self.version[chunk])
        return np.zeros(UNIT, dtype=np.uint64) if v == 0 else pattern(lo, hi, chunk_seed(self.tid, chunk, v))

    def write(self, chunk):
        self.version[chunk] += 1
        lo, hi = self.span(chunk)
        self.a[lo:hi] = pattern(lo, hi, chunk_seed(self.tid, chunk, int(self.version[chunk])))

    def check(self, chunk):
        lo, hi = self.span(chunk)
        got = self.a[lo:hi]
        want = self.expected(chunk)
        if not np.array_equal(got, want):
            bad = np.flatnonzero(got != want)
            raise AssertionError(f"thread {self.tid} chunk {chunk} (version {int(self.version[chunk])}): "
                                 f"{bad.size} wrong elements, first at element {lo + int(bad[0])}: "
                                 f"got {int(got[bad[0]]):#x}, want {int(want[bad[0]]):#x}")

    def check_shared(self, lo, hi):
        want = pattern(lo, hi, SHARED_SEED)
        if not np.array_equal(self.a[lo:hi], want):
            raise AssertionError(f"thread {self.tid}: shared elements [{lo}:{hi}] differ from their pattern")

    def step(self):
        r = self.rng.random()
        if r < 0.40:
            self.write(int(self.rng.integers(CHUNKS)))
        elif r < 0.70:
            self.check(int(self.rng.integers(CHUNKS)))
        elif r < 0.90:
            lo = int(self.rng.integers(SHARED - UNIT))
            self.check_shared(lo, lo + UNIT)
        elif r < 0.95:  # sequential scan of own chunks, checking as it goes
            first = int(self.rng.integers(CHUNKS - SCAN))
            for c in range(first, first + SCAN):
                self.check(c)
        else:  # sequential scan of a quarter of the shared region
            lo = int(self.rng.integers(SHARED - SHARED // 4))
            for i in range(lo, lo + SHARED // 4, 8 * UNIT):
                self.check_shared(i, min(i + 8 * UNIT, lo + SHARED // 4))
        self.ops += 1


SAMPLING = 0.01  # the default budget, given explicitly: these runs must sample


def make_pool(nvme_dir, tiers, policy):
    return tm.Pool(dram=DRAM, nvme="256MiB", nvme_path=nvme_dir, block_size="64KiB", policy=policy,
                   sampling=SAMPLING, **TIERS[tiers])


def run_stress(nvme_dir, tiers, policy, seconds):
    pool = make_pool(nvme_dir, tiers, policy)
    a = pool.empty(FOOTPRINT // 8, dtype=np.uint64)
    for i in range(0, SHARED, 1 << 17):
        a[i:min(i + (1 << 17), SHARED)] = pattern(i, min(i + (1 << 17), SHARED), SHARED_SEED)
    workers = [Worker(a, t) for t in range(NTHREADS)]
    errors, stop = [], threading.Event()
    deadline = time.monotonic() + seconds

    def run(w):
        try:
            while time.monotonic() < deadline and not stop.is_set():
                w.step()
        except BaseException as e:
            errors.append(repr(e))
            stop.set()

    threads = [threading.Thread(target=run, args=(w,), name=f"stress-{w.tid}", daemon=True) for w in workers]
    capacity = pool.stats()["dram"]["capacity"]
    watch = {"max_dram": 0, "stuck": [], "samples": 0, "tracebacks": ""}

    def watchdog():
        last = [(-1, time.monotonic())] * NTHREADS
        while any(t.is_alive() for t in threads):
            s = pool.stats()
            watch["max_dram"] = max(watch["max_dram"], s["dram"]["used"])
            watch["samples"] += 1
            now = time.monotonic()
            for i, (w, t) in enumerate(zip(workers, threads)):
                if w.ops != last[i][0]:
                    last[i] = (w.ops, now)
                elif t.is_alive() and now - last[i][1] > STALL_SECONDS:
                    watch["stuck"].append(t.name)
            if watch["stuck"]:
                with tempfile.TemporaryFile("w+") as f:
                    faulthandler.dump_traceback(f, all_threads=True)
                    f.seek(0)
                    watch["tracebacks"] = f.read()
                stop.set()
                return
            time.sleep(0.1)

    dog = threading.Thread(target=watchdog, name="watchdog", daemon=True)
    for t in threads:
        t.start()
    dog.start()
    dog.join(seconds + 2 * STALL_SECONDS + 30)
    assert not dog.is_alive(), "the watchdog itself is stuck (in pool.stats()?)"
    assert not watch["stuck"], (f"no progress for {STALL_SECONDS} s in {watch['stuck']} "
                                f"(ops: {[w.ops for w in workers]})\n{watch['tracebacks']}")
    for t in threads:
        t.join()
    return pool, a, workers, errors, watch, capacity


def check_everything(workers):
    for w in workers:
        for c in range(CHUNKS):
            w.check(c)
    for i in range(0, SHARED, 1 << 17):
        workers[0].check_shared(i, min(i + (1 << 17), SHARED))


def stress(nvme_dir, tiers, policy, seconds):
    pool, a, workers, errors, watch, capacity = run_stress(nvme_dir, tiers, policy, seconds)
    try:
        assert not errors, errors
        assert all(w.ops > 0 for w in workers), [w.ops for w in workers]
        check_everything(workers)  # every chunk: its last version, or zero if never written
        s = pool.stats()
        block = s["block_size"]
        # The budget held at every sample, and by the engine's own peak.
        assert watch["max_dram"] <= capacity + block, (watch["max_dram"], capacity)
        assert s["dram"]["peak"] <= capacity + block, (s["dram"], capacity)
        assert s["budget_overruns"] == 0, s["last_error"]
        assert s["io_errors"] == 0 and s["checksum_errors"] == 0 and s["sigbus_sent"] == 0, s["last_error"]
        # The run did move data both ways, so the checks above mean something.
        assert s["demotions"] > 0 and s["promotions"] > 0, s
        assert s["readahead"] > 0, "the scans never started stream readahead"
        # Sampling was on and its faults raced the threads' own.
        assert s["sampled"] > 0 and s["hint_faults"] > 0, (s["sampled"], s["hint_faults"])
        assert s["policy_errors"] == 0, s["last_error"]
        return s, [w.ops for w in workers], watch
    finally:
        del a
        for w in workers:
            w.a = None
        gc.collect()
        pool.close()


@pytest.mark.parametrize("policy", tm.policy_names())
@pytest.mark.parametrize("tiers", list(TIERS))
@pytest.mark.timeout(3 + 2 * STALL_SECONDS + 120, method="thread")
def test_eight_threads_for_3_seconds_keep_progress_budget_and_data(nvme_dir, tiers, policy):
    stress(nvme_dir, tiers, policy, seconds=3)


@pytest.mark.slow
@pytest.mark.parametrize("policy", tm.policy_names())
@pytest.mark.parametrize("tiers", list(TIERS))
@pytest.mark.timeout(60 + 2 * STALL_SECONDS + 180, method="thread")
def test_eight_threads_for_60_seconds_keep_progress_budget_and_data(nvme_dir, tiers, policy):
    stress(nvme_dir, tiers, policy, seconds=60)
