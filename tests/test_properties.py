"""Random sequences of allocate, realloc, free, write and read over a small pool,
checked against shadow copies held in ordinary memory, with shrinking.

The pool is tiny (256 KiB to 1 MiB of DRAM, 0 or 512 KiB of PMEM, 8 MiB of
NVMe, blocks of 4, 16 or 64 KiB) and the live arrays add up to several MiB, so
nearly every access moves blocks between the tiers. Operations: allocate
(pool.empty, pool.zeros, np.empty under tm.use), free, realloc (ndarray.resize
through the handler), write and read slices from Python, write and read them
from the kernel (readinto, write), strided writes, copies between arrays and
within one, resizing the pool's DRAM budget, and advice (willneed, dontneed,
hot, cold, sequential, random, normal) on slices. Each example's pool runs one
of the built-in policies, with hint sampling on. Allocation succeeds exactly
when its blocks fit in the capacity left. After every step the machine checks, for every live array: its
placement accounts for each of its bytes, it lives in the pool exactly when
its size is at least its handler's threshold; and the DRAM tier holds at most
its budget (plus one block: the block being installed). At the end every array
equals its shadow and, all freed, nothing stays allocated.

`make test` runs a bounded number of examples; the `slow` test runs the same
machine for many more (`pytest -m slow tests/test_properties.py`).
"""
import gc
import shutil
import sys
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import (Bundle, RuleBasedStateMachine, consumes, initialize, invariant, multiple,
                                 rule, run_state_machine_as_test)

import tieredmem as tm

KiB, MiB = 1 << 10, 1 << 20
SIZES = st.one_of(st.integers(1, 256), st.integers(1, 256 * KiB), st.integers(256 * KiB, 3 * MiB // 2))


def random_bytes(seed, n):
    return np.random.default_rng(seed).integers(0, 256, size=n, dtype=np.uint8)


class TieredPoolMachine(RuleBasedStateMachine):
    """One pool per example; arrays are names in the `arrays` bundle, mapped to
    (array, shadow, threshold it was allocated under)."""

    arrays = Bundle("arrays")

    def __init__(self):
        super().__init__()
        self.pool = None
        self.live = {}
        self.next_name = 0
        self.dir = tempfile.mkdtemp(prefix="tm-props-")

    @initialize(dram=st.sampled_from([256 * KiB, 512 * KiB, 1 * MiB]),
                pmem=st.sampled_from([0, 512 * KiB]),
                block_size=st.sampled_from([4 * KiB, 16 * KiB, 64 * KiB]),
                handler_threshold=st.sampled_from([0, 64 * KiB]),
                policy=st.sampled_from(tm.policy_names()))
    def make_pool(self, dram, pmem, block_size, handler_threshold, policy):
        self.pool = tm.Pool(dram=dram, pmem=pmem, nvme="8MiB", nvme_path=self.dir, block_size=block_size,
                            policy=policy)
        self.handler_threshold = handler_threshold

    # ---- rules ------------------------------------------------------

    @rule(target=arrays, n=SIZES, how=st.sampled_from(["pool.empty", "pool.zeros", "np.empty in use"]))
    def allocate(self, n, how):
        """Succeeds exactly when its blocks fit in the capacity left (or it is
        below its handler's threshold and comes from the C library)."""
        threshold = 0 if how.startswith("pool.") else self.handler_threshold
        fits = n < threshold or self.fits(n)
        try:
            if how == "pool.empty":
                a = self.pool.empty(n, dtype=np.uint8)
            elif how == "pool.zeros":
                a = self.pool.zeros(n, dtype=np.uint8)
            else:
                with tm.use(self.pool, threshold=threshold):
                    a = np.empty(n, dtype=np.uint8)
        except MemoryError:
            assert not fits, f"{n} bytes fit in the capacity left, yet: {self.pool.last_error()}"
            return multiple()
        assert fits, f"an allocation of {n} bytes beyond the capacity succeeded: {self.pool.stats()}"
        # Fresh pool memory reads as zero, even where a freed array held data;
        # np.empty below the threshold comes from the C library, uninitialised.
        shadow = np.zeros(n, dtype=np.uint8) if self.pool.owns(a) else a.copy()
        name = self.next_name
        self.next_name += 1
        self.live[name] = (a, shadow, threshold)
        return name

    def fits(self, n):
        """Whether n more bytes, rounded up to whole blocks, fit in the capacity."""
        s = self.pool.stats()
        bs = self.pool.block_size
        return s["allocated"] + max(1, -(-n // bs)) * bs <= s["capacity"]

    @rule(name=consumes(arrays))
    def free(self, name):
        del self.live[name]

    @rule(name=arrays, start=st.integers(0, 2 * MiB), length=st.integers(1, 2 * MiB), seed=st.integers(0, 2**32))
    def write_slice(self, name, start, length, seed):
        a, shadow, _ = self.live[name]
        lo = start % a.size
        hi = min(a.size, lo + length)
        data = random_bytes(seed, hi - lo)
        a[lo:hi] = data
        shadow[lo:hi] = data

    @rule(name=arrays, start=st.integers(0, 2 * MiB), step=st.sampled_from([7, 4096, 5000, 65536]),
          value=st.integers(0, 255))
    def write_strided(self, name, start, step, value):
        a, shadow, _ = self.live[name]
        lo = start % a.size
        a[lo::step] = value
        shadow[lo::step] = value

    @rule(dst=arrays, src=arrays, dst_start=st.integers(0, 2 * MiB), src_start=st.integers(0, 2 * MiB),
          length=st.integers(1, 2 * MiB))
    def copy_between_arrays(self, dst, src, dst_start, src_start, length):
        """Pool memory into pool memory, possibly overlapping (dst may be src)."""
        a, shadow, _ = self.live[dst]
        b, b_shadow, _ = self.live[src]
        lo, blo = dst_start % a.size, src_start % b.size
        n = min(length, a.size - lo, b.size - blo)
        a[lo:lo + n] = b[blo:blo + n]
        shadow[lo:lo + n] = b_shadow[blo:blo + n].copy()

    @rule(name=arrays, start=st.integers(0, 2 * MiB), length=st.integers(1, 2 * MiB), seed=st.integers(0, 2**32))
    def write_slice_from_the_kernel(self, name, start, length, seed):
        """readinto() a slice: the kernel writes pool memory (faults in kernel mode)."""
        a, shadow, _ = self.live[name]
        lo = start % a.size
        hi = min(a.size, lo + length)
        data = random_bytes(seed, hi - lo)
        with tempfile.TemporaryFile() as f:
            f.write(data.tobytes())
            f.seek(0)
            got = f.readinto(memoryview(a[lo:hi]))
        assert got == hi - lo
        shadow[lo:hi] = data

    @rule(name=arrays, start=st.integers(0, 2 * MiB), length=st.integers(1, 2 * MiB))
    def read_slice_from_the_kernel(self, name, start, length):
        """write() a slice to a file: the kernel reads pool memory."""
        a, shadow, _ = self.live[name]
        lo = start % a.size
        hi = min(a.size, lo + length)
        with tempfile.TemporaryFile() as f:
            assert f.write(memoryview(a[lo:hi])) == hi - lo
            f.seek(0)
            got = np.frombuffer(f.read(), dtype=np.uint8)
        assert_same(got, shadow[lo:hi], f"array {name}[{lo}:{hi}] as written to a file")

    @rule(name=arrays, step=st.integers(2, 70000))
    def placement_of_a_strided_view_counts_each_element_once(self, name, step):
        a, _, _ = self.live[name]
        if self.pool.owns(a):
            view = a[::step]
            assert sum(self.pool.placement(view).values()) == view.nbytes

    @rule(name=arrays, start=st.integers(0, 2 * MiB), length=st.integers(1, 2 * MiB))
    def read_slice(self, name, start, length):
        a, shadow, _ = self.live[name]
        lo = start % a.size
        hi = min(a.size, lo + length)
        assert_same(a[lo:hi], shadow[lo:hi], f"array {name}[{lo}:{hi}]")

    @rule()
    def read_everything(self):
        for name, (a, shadow, _) in self.live.items():
            assert_same(a, shadow, f"array {name}")

    @rule(name=arrays, n=SIZES)
    def realloc(self, name, n):
        """ndarray.resize reallocates through the array's own handler: the
        prefix is kept and the new tail reads zero. If the new size cannot be
        had, MemoryError, and the array is unchanged."""
        a, shadow, threshold = self.live[name]
        sure_to_fit = n < threshold or self.fits(n)  # a shrink in place may fit even when this is False
        try:
            a.resize(n, refcheck=False)
        except MemoryError:
            assert not sure_to_fit, f"resize to {n} bytes fit in the capacity left, yet: {self.pool.last_error()}"
            assert_same(a, shadow, f"array {name} after a failed resize to {n}")
            return
        grown = np.zeros(n, dtype=np.uint8)
        keep = min(n, shadow.size)
        grown[:keep] = shadow[:keep]
        self.live[name] = (a, grown, threshold)
        assert_same(a, grown, f"array {name} after resize to {n}")

    @rule(dram=st.sampled_from([128 * KiB, 256 * KiB, 512 * KiB, 1 * MiB]))
    def resize_the_dram_budget(self, dram):
        """Takes effect at once (shrinking demotes), unless what is allocated
        would no longer fit: then MemoryError and nothing changes."""
        before = self.pool.stats()
        if dram < self.pool.block_size:
            return
        try:
            self.pool.resize(dram=dram)
        except MemoryError:
            assert before["allocated"] > before["capacity"] - before["dram"]["capacity"] + dram - 4 * MiB, before
            assert self.pool.stats()["dram"]["capacity"] == before["dram"]["capacity"]
            return
        after = self.pool.stats()
        assert after["dram"]["capacity"] == dram
        assert after["dram"]["used"] <= dram, after["dram"]
        assert after["allocated"] <= after["capacity"]

    @rule(name=arrays, start=st.integers(0, 2 * MiB), length=st.integers(1, 2 * MiB),
          advice=st.sampled_from(["willneed", "dontneed", "hot", "cold", "sequential", "random", "normal"]))
    def advise_a_slice(self, name, start, length, advice):
        """Advice moves or marks blocks; it never changes data."""
        a, _, _ = self.live[name]
        if not self.pool.owns(a):
            return
        lo = start % a.size
        self.pool.advise(a[lo:lo + length], advice)

    # ---- invariants, checked after every step -------------------------

    @invariant()
    def every_array_is_in_the_pool_exactly_when_it_reaches_its_threshold(self):
        if self.pool is None:
            return
        for name, (a, _, threshold) in self.live.items():
            assert self.pool.owns(a) == (a.nbytes >= threshold), (name, a.nbytes, threshold)

    @invariant()
    def placement_accounts_for_every_byte_of_every_array(self):
        if self.pool is None:
            return
        for name, (a, _, _) in self.live.items():
            if self.pool.owns(a):
                where = self.pool.placement(a)
                assert sum(where.values()) == a.nbytes, (name, a.nbytes, where)

    @invariant()
    def dram_holds_at_most_its_budget(self):
        if self.pool is None:
            return
        s = self.pool.stats()
        assert s["dram"]["used"] <= s["dram"]["capacity"] + s["block_size"], s["dram"]
        assert s["pmem"]["used"] <= s["pmem"]["capacity"], s["pmem"]
        assert s["nvme"]["used"] <= s["nvme"]["capacity"], s["nvme"]
        assert s["budget_overruns"] == 0, s["last_error"]
        assert s["io_errors"] == 0, s["last_error"]

    def teardown(self):
        failing = sys.exc_info()[0] is not None  # its traceback may hold arrays
        try:
            if self.pool is not None and not failing:
                self.read_everything()
                self.live.clear()
                gc.collect()
                # Every array freed: nothing stays reserved.
                assert self.pool.stats()["allocated"] == 0, self.pool.stats()
        finally:
            self.live.clear()
            if self.pool is not None:
                self.pool.close()
            shutil.rmtree(self.dir, ignore_errors=True)


def assert_same(got, want, what):
    if not np.array_equal(got, want):
        bad = np.flatnonzero(got != want)
        raise AssertionError(f"{what}: {bad.size} bytes differ from the shadow; first at {int(bad[0])}: "
                             f"got {int(got[bad[0]])}, want {int(want[bad[0]])}")


COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
              print_blob=True)


@pytest.mark.timeout(300, method="thread")
def test_random_operation_sequences_keep_every_array_equal_to_its_shadow():
    run_state_machine_as_test(TieredPoolMachine,
                              settings=settings(max_examples=25, stateful_step_count=50, **COMMON))


@pytest.mark.slow
@pytest.mark.timeout(3600, method="thread")
def test_long_random_operation_sequences_keep_every_array_equal_to_its_shadow():
    run_state_machine_as_test(TieredPoolMachine,
                              settings=settings(max_examples=400, stateful_step_count=80, **COMMON))
