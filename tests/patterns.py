"""Data patterns for the tests: every uint64 element gets a value distinct per
index and seed, so a lost, stale, zeroed or misplaced block shows up. Arrays
are written and checked in chunks so that no full second copy is needed."""
import hashlib

import numpy as np

KiB = 1 << 10
MiB = 1 << 20
CHUNK = MiB // 8  # uint64 elements per generated chunk


def pattern(start, stop, seed, step=1):
    """Element values for indexes range(start, stop, step)."""
    i = np.arange(start, stop, step, dtype=np.uint64)
    return (i * np.uint64(0x9E3779B97F4A7C15)) ^ np.uint64((seed * 0x5851F42D4C957F2D + 1) & (2**64 - 1))


def fill(a, seed, lo=0, hi=None):
    """Write the pattern into a[lo:hi] chunk by chunk; return its sha1."""
    hi = a.size if hi is None else hi
    h = hashlib.sha1()
    for i in range(lo, hi, CHUNK):
        j = min(i + CHUNK, hi)
        p = pattern(i, j, seed)
        a[i:j] = p
        h.update(p)
    return h.hexdigest()


def digest(a, lo=0, hi=None):
    """sha1 of a[lo:hi] of a 1-D array, read chunk by chunk (never writes)."""
    hi = a.size if hi is None else hi
    h = hashlib.sha1()
    for i in range(lo, hi, CHUNK):
        h.update(memoryview(a[i:min(i + CHUNK, hi)]))
    return h.hexdigest()


def expected_digest(nbytes, seed):
    """sha1 of the first nbytes of the pattern."""
    h = hashlib.sha1()
    n = nbytes // 8
    for i in range(0, n, CHUNK):
        h.update(pattern(i, min(i + CHUNK, n), seed))
    return h.hexdigest()


def first_mismatch(a, seed, lo=0, hi=None):
    """None if a[lo:hi] holds the pattern, else a description of the first
    wrong element and how many are wrong."""
    hi = a.size if hi is None else hi
    bad, first = 0, None
    for i in range(lo, hi, CHUNK):
        j = min(i + CHUNK, hi)
        want = pattern(i, j, seed)
        wrong = np.flatnonzero(a[i:j] != want)
        if wrong.size:
            bad += int(wrong.size)
            if first is None:
                k = int(wrong[0])
                first = (i + k, int(a[i + k]), int(want[k]))
    if first is None:
        return None
    idx, got, want = first
    return f"{bad} wrong elements; first at index {idx} (byte {idx * 8}): got {got:#x}, want {want:#x}"


def push_out(pool, region, other, rounds=8):
    """Touch `other` (pool memory outside region) until no byte of region is
    left in DRAM, then advise what is left out (passes over `other` are a
    loop, whose own blocks the engine demotes first); return region's
    placement."""
    for _ in range(rounds):
        if pool.placement(region)["dram"] == 0:
            break
        other += 1
    if pool.placement(region)["dram"]:
        pool.advise(region, "dontneed")
    return pool.placement(region)
