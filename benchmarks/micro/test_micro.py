"""Micro-benchmarks of the engine (issue 5, item 5), with pytest-benchmark:

    .venv/bin/python -m pytest benchmarks/micro --benchmark-only

* fault service latency, as the faulting thread sees it (touch to return):
  a hint fault (a resident block unmapped by sampling), a promotion from the
  PMEM tier (plain /dev/shm, and emulated Optane speed), a promotion from the
  NVMe tier; one 64 KiB block per fault (advise "random": no readahead), the
  blocks touched in a shuffled order;
* demotion throughput: advise(a, "dontneed") on dirty resident data, to NVMe
  and to PMEM (bytes/s in extra_info);
* allocator overhead: numpy allocation and free below the pool's threshold
  (goes to malloc) and above it (a pool allocation), against numpy's own.

Each benchmark puts its figure per fault / per byte in extra_info (shown
with --benchmark-json or --benchmark-columns). Not collected by `make test`.
"""
import time

import numpy as np
import pytest

import tieredmem as tm
from tieredmem.policy.base import F_ALLOC, F_SAMPLED

MiB = 1 << 20
BLOCK = 64 << 10
ROUNDS = 10

pytestmark = pytest.mark.timeout(300, method="thread")


def order(nblocks, seed=0):
    return np.random.default_rng(seed).permutation(nblocks)


def touch_each(a, blocks, per):
    """Read one element of each block in `blocks` (one fault each)."""
    total = 0
    for b in blocks:
        total += int(a[b * per])
    return total


def wait_until(cond, seconds):
    deadline = time.monotonic() + seconds
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# ------------------------------------------------------------ fault latency

def test_fault_latency_hint(benchmark, make_pool):
    """A hint fault: a resident block that the background thread's sampling
    unmapped (its pages stay in DRAM) is touched."""
    pool = make_pool(dram="64MiB", nvme="256MiB", sampling=0.5)
    a = pool.empty(16 * MiB // 8)
    a[:] = 1.0
    per = pool.block_size // 8
    nblocks = a.nbytes // pool.block_size
    blocks = order(nblocks)
    flags = pool.metadata()["flags"]

    def all_sampled():
        f = flags[(flags & F_ALLOC) != 0]
        return f.size > 0 and bool(np.all(f & F_SAMPLED))

    counts = []

    def setup():
        assert wait_until(all_sampled, 5.0), "sampling did not unmap every block of a resident array within 5 s"
        counts.append(pool.stats()["hint_faults"])

    def run():
        touch_each(a, blocks, per)
        counts.append(pool.stats()["hint_faults"])

    benchmark.pedantic(run, setup=setup, rounds=ROUNDS, iterations=1)
    hints = [counts[i + 1] - counts[i] for i in range(0, len(counts) - 1, 2)]
    benchmark.extra_info["blocks_touched"] = int(nblocks)
    benchmark.extra_info["hint_faults_per_round"] = hints
    benchmark.extra_info["us_per_fault_median"] = benchmark.stats.stats.median / nblocks * 1e6
    assert min(hints) > 0, "touching sampled blocks took no hint fault"


@pytest.mark.parametrize("tier,emulation", [("pmem", None), ("pmem", "optane"), ("nvme", None)],
                         ids=["pmem-shm", "pmem-optane", "nvme"])
def test_fault_latency_promotion(benchmark, make_pool, tier, emulation):
    """A fault on a block in the PMEM or NVMe tier: one 64 KiB block read and
    mapped (advise "random" keeps readahead off)."""
    kw = {"dram": "32MiB", "nvme": "256MiB", "sampling": False}
    if tier == "pmem":
        kw.update(pmem="128MiB", pmem_emulation=emulation)
    pool = make_pool(**kw)
    a = pool.empty(16 * MiB // 8)
    a[:] = 1.0
    per = pool.block_size // 8
    nblocks = a.nbytes // pool.block_size
    blocks = order(nblocks)
    pool.advise(a, "random")
    stats = []

    def setup():
        pool.advise(a, "dontneed")
        place = pool.placement(a)
        assert place[tier] == a.nbytes, place
        stats.append(pool.stats())

    def run():
        touch_each(a, blocks, per)

    benchmark.pedantic(run, setup=setup, rounds=ROUNDS, iterations=1)
    after = pool.stats()
    before = stats[-1]
    faults = after["faults"] - before["faults"]
    benchmark.extra_info["blocks_touched"] = int(nblocks)
    benchmark.extra_info["faults_last_round"] = faults
    benchmark.extra_info["promotions_last_round"] = after["promotions"] - before["promotions"]
    benchmark.extra_info["us_per_fault_median"] = benchmark.stats.stats.median / nblocks * 1e6
    benchmark.extra_info["handler_us_per_fault_last_round"] = (after["fault_ns"] - before["fault_ns"]) / max(faults, 1) / 1e3
    if tier == "pmem":
        benchmark.extra_info["pmem_emulation"] = emulation or "none (plain /dev/shm)"
    assert faults >= nblocks, f"{faults} faults for {nblocks} blocks: readahead or prefetch brought some in"


# ------------------------------------------------------ demotion throughput

@pytest.mark.parametrize("tier", ["nvme", "pmem"])
def test_demotion_throughput(benchmark, make_pool, tier):
    """advise(a, "dontneed") on 32 MiB of dirty resident data: written out
    to the lower tier and released from DRAM."""
    kw = {"dram": "64MiB", "nvme": "256MiB", "sampling": False}
    if tier == "pmem":
        kw.update(pmem="128MiB")
    pool = make_pool(**kw)
    a = pool.empty(32 * MiB // 8)
    a[:] = 1.0
    rounds = []

    def setup():
        a[:] += 1.0  # resident and dirty again
        assert pool.placement(a)["dram"] == a.nbytes
        rounds.append(pool.stats()["bytes_written"])

    def run():
        pool.advise(a, "dontneed")

    benchmark.pedantic(run, setup=setup, rounds=ROUNDS, iterations=1)
    written = pool.stats()["bytes_written"] - rounds[-1]
    assert written >= a.nbytes, (written, a.nbytes)
    assert pool.placement(a)[tier] == a.nbytes
    benchmark.extra_info["bytes"] = a.nbytes
    benchmark.extra_info["gb_per_s_median"] = a.nbytes / benchmark.stats.stats.median / 1e9


# ------------------------------------------------------- allocator overhead

@pytest.mark.parametrize("where", ["numpy", "tieredmem"])
@pytest.mark.parametrize("nbytes", [128, 4 * MiB], ids=["128B", "4MiB"])
def test_allocator_overhead(benchmark, make_pool, where, nbytes):
    """np.empty + free under the pool as numpy's allocator (tm.use) against
    numpy's default; 128 B is below the 1 MiB threshold (malloc), 4 MiB is a
    pool allocation. Only the allocation: nothing is touched."""
    n = nbytes // 8
    benchmark.group = f"alloc {nbytes} B"
    if where == "numpy":
        benchmark(lambda: np.empty(n))
        return
    pool = make_pool(dram="64MiB", nvme="256MiB")
    with tm.use(pool):
        benchmark(lambda: np.empty(n))
