"""The built-in policies that run as numba code in the engine: fifo and
hotness. ("lru" is the engine's own CLOCK over the reference bits that
faults and sampled hints set, in C; it needs no hooks.)

Both are written against tieredmem.policy.base's ABI and read like any user
policy would (docs/policies.md)."""
import numpy as np
from numba import carray, cfunc

from .base import (AHEAD, DRAM, F_ALLOC, F_BUSY, F_COLD, F_HOT, F_REF, INFO_DRAM_BLOCKS, INFO_LEN, MISSING, NVME, PMEM,
                   PROMOTE, SELECT_VICTIMS, ON_ACCESS, Policy)

# ---- fifo: demote in order of arrival in DRAM -----------------------------
# State: ring of (block, arrival number) in arrival order; arrival[b] is the
# number of b's latest arrival, so entries of earlier stays are recognised
# as stale. g: head, count, next arrival number, hand of the cold search.
# Advice as the engine's CLOCK takes it: blocks advised cold go first (the
# hand looks at a bounded stretch of blocks per call, to keep the lock hold
# short); blocks advised hot are passed over, back to the tail of the ring,
# and go only when no other block in the ring can: the engine must always
# get a victim while DRAM holds blocks.
G_HEAD, G_COUNT, G_SEQ, G_COLD_HAND = range(4)
COLD_SCAN = 4096  # blocks the cold hand examines per call


@cfunc(ON_ACCESS, cache=True)
def _fifo_on_access(state, block, kind, now):
    if kind != MISSING and kind != AHEAD:  # only arrivals in DRAM matter
        return
    info = carray(state[0], INFO_LEN, np.int64)
    n = info[0]
    ring_b = carray(state[1], n, np.int64)
    ring_s = carray(state[2], n, np.int64)
    arrival = carray(state[3], n, np.int64)
    g = carray(state[4], 4, np.int64)
    if g[G_COUNT] == n:  # full: the oldest entry goes
        g[G_HEAD] = (g[G_HEAD] + 1) % n
        g[G_COUNT] -= 1
    g[G_SEQ] += 1
    tail = (g[G_HEAD] + g[G_COUNT]) % n
    ring_b[tail] = block
    ring_s[tail] = g[G_SEQ]
    arrival[block] = g[G_SEQ]
    g[G_COUNT] += 1


@cfunc(SELECT_VICTIMS, cache=True)
def _fifo_select_victims(state, tier, flags, nblocks, want, out, out_tier):
    info = carray(state[0], INFO_LEN, np.int64)
    n = info[0]
    ring_b = carray(state[1], n, np.int64)
    ring_s = carray(state[2], n, np.int64)
    arrival = carray(state[3], n, np.int64)
    g = carray(state[4], 4, np.int64)
    got = 0
    scanned = 0
    while got < want and scanned < COLD_SCAN and scanned < nblocks:
        b = g[G_COLD_HAND] if g[G_COLD_HAND] < nblocks else 0
        g[G_COLD_HAND] = b + 1
        scanned += 1
        if tier[b] == DRAM and (flags[b] & (F_COLD | F_BUSY)) == F_COLD:
            out[got] = b
            got += 1
    by_hand = got
    # Then the ring from its head, each entry once per pass: the first pass
    # puts hot blocks back at the tail, the second takes them.
    for take_hot in range(2):
        left = g[G_COUNT]
        while got < want and left > 0:
            left -= 1
            b = ring_b[g[G_HEAD]]
            s = ring_s[g[G_HEAD]]
            g[G_HEAD] = (g[G_HEAD] + 1) % n
            g[G_COUNT] -= 1
            if b >= nblocks or arrival[b] != s or tier[b] != DRAM or (flags[b] & F_BUSY):
                continue  # the block left DRAM since this arrival, or is leaving it
            if (flags[b] & F_HOT) and not take_hot:
                tail = (g[G_HEAD] + g[G_COUNT]) % n
                ring_b[tail] = b
                ring_s[tail] = s
                g[G_COUNT] += 1
                continue
            named = False
            if flags[b] & F_COLD:  # the cold hand may have named it above
                for i in range(by_hand):
                    if out[i] == b:
                        named = True
            if not named:
                out[got] = b
                got += 1
    return got


class FifoPolicy(Policy):
    """Demote blocks in the order they entered DRAM; accesses do not reorder.
    Blocks advised cold go first, blocks advised hot last."""

    name = "fifo"
    on_access = _fifo_on_access
    select_victims = _fifo_select_victims

    def state(self, arena_blocks, dram_blocks):
        return {"ring_block": np.zeros(arena_blocks, np.int64), "ring_seq": np.zeros(arena_blocks, np.int64),
                "arrival": np.zeros(arena_blocks, np.int64), "g": np.zeros(4, np.int64)}


# ---- hotness: decayed access counts, hot threshold sized to DRAM ----------
# In the spirit of Memtis: every block's accesses (faults and sampled hints)
# are counted; counts halve every cooling period (lazily, per block, by the
# number of periods since it was last counted). At each cooling a histogram
# of the counts (bins by bit length) sets the hot threshold: the lowest power
# of two such that the blocks at or above it fit in DRAM less its headroom.
# Victims are cold blocks first (advised-cold ones before all; among the
# others, those sampling found unused first), in address order from a
# rotating hand; hot blocks only when no cold one is left. Blocks
# with no access since the last cooling skip PMEM and go straight to NVMe.
# Hot blocks in lower tiers are promoted ahead of need while DRAM has room.
H_EPOCH, H_NEXT_COOL, H_THRESH, H_HAND, H_PHAND, H_HI, H_PERIOD = range(7)
NBINS = 18  # bit lengths of uint16 counts, 0..16, plus a spare
COUNT_MAX = 65535
PROMOTE_SCAN = 4096  # blocks examined per promote call: bounds the lock hold


@cfunc(ON_ACCESS, cache=True)
def _hot_on_access(state, block, kind, now):
    if kind == AHEAD:  # not an access
        return
    info = carray(state[0], INFO_LEN, np.int64)
    n = info[0]
    count = carray(state[1], n, np.uint16)
    epoch_of = carray(state[2], n, np.int64)
    g = carray(state[3], 8, np.int64)
    hist = carray(state[4], NBINS, np.int64)
    age = g[H_EPOCH] - epoch_of[block]
    c = np.int64(count[block]) >> (age if age < 16 else 16)
    count[block] = c + 1 if c < COUNT_MAX else COUNT_MAX
    epoch_of[block] = g[H_EPOCH]
    if block + 1 > g[H_HI]:
        g[H_HI] = block + 1
    if now < g[H_NEXT_COOL]:
        return
    # Cool: a new epoch, and the threshold from the histogram of all counts.
    dram = info[INFO_DRAM_BLOCKS]
    g[H_EPOCH] += 1
    g[H_NEXT_COOL] = now + g[H_PERIOD]
    for k in range(NBINS):
        hist[k] = 0
    for b in range(g[H_HI]):
        a = g[H_EPOCH] - epoch_of[b]
        v = np.int64(count[b]) >> (a if a < 16 else 16)
        k = 0
        while v > 0:
            v >>= 1
            k += 1
        hist[k] += 1
    room = dram - dram // 8
    total = 0
    k = NBINS - 1
    while k > 1 and total + hist[k] <= room:
        total += hist[k]
        k -= 1
    # bins above k fit: hot means a count of at least 2^k (bit length > k)
    g[H_THRESH] = np.int64(1) << k


@cfunc(SELECT_VICTIMS, cache=True)
def _hot_select_victims(state, tier, flags, nblocks, want, out, out_tier):
    info = carray(state[0], INFO_LEN, np.int64)
    n = info[0]
    count = carray(state[1], n, np.uint16)
    epoch_of = carray(state[2], n, np.int64)
    g = carray(state[3], 8, np.int64)
    if nblocks <= 0:
        return 0
    got = 0
    # Pass 0: advised cold; then below the threshold, first those without
    # their reference bit (not accessed since sampling last unmapped them),
    # then the others; then the same for blocks above it; last, advised hot.
    for rule in range(6):
        scanned = 0
        while got < want and scanned < nblocks:
            b = g[H_HAND] if g[H_HAND] < nblocks else 0
            g[H_HAND] = b + 1
            scanned += 1
            f = flags[b]
            if tier[b] != DRAM or (f & F_BUSY):
                continue
            a = g[H_EPOCH] - epoch_of[b]
            c = np.int64(count[b]) >> (a if a < 16 else 16)
            plain = not (f & (F_COLD | F_HOT))
            cold = c < g[H_THRESH]
            fresh = (f & F_REF) == 0
            if rule == 0:
                take = (f & F_COLD) != 0
            elif rule == 1:
                take = plain and cold and fresh
            elif rule == 2:
                take = plain and cold and not fresh
            elif rule == 3:
                take = plain and not cold and fresh
            elif rule == 4:
                take = plain and not cold and not fresh
            else:
                take = (f & F_HOT) != 0
            if take:
                out[got] = b
                out_tier[got] = NVME if (c == 0 or (f & F_COLD)) else 0
                got += 1
        if got == want:
            break
    return got


@cfunc(PROMOTE, cache=True)
def _hot_promote(state, tier, flags, nblocks, max_blocks, out):
    info = carray(state[0], INFO_LEN, np.int64)
    n = info[0]
    count = carray(state[1], n, np.uint16)
    epoch_of = carray(state[2], n, np.int64)
    g = carray(state[3], 8, np.int64)
    if nblocks <= 0:
        return 0
    need = g[H_THRESH] if g[H_THRESH] > 2 else 2
    got = 0
    scanned = 0
    while got < max_blocks and scanned < PROMOTE_SCAN and scanned < nblocks:
        b = g[H_PHAND] if g[H_PHAND] < nblocks else 0
        g[H_PHAND] = b + 1
        scanned += 1
        t = tier[b]
        if (t != PMEM and t != NVME) or not (flags[b] & F_ALLOC) or (flags[b] & (F_BUSY | F_COLD)):
            continue
        a = g[H_EPOCH] - epoch_of[b]
        c = np.int64(count[b]) >> (a if a < 16 else 16)
        if c >= need or (flags[b] & F_HOT):
            out[got] = b
            got += 1
    return got


class HotnessPolicy(Policy):
    """Decayed access counts with a hot threshold sized to the DRAM budget.
    Counts halve every `cooling` x (DRAM blocks) accesses seen."""

    name = "hotness"
    on_access = _hot_on_access
    select_victims = _hot_select_victims
    promote = _hot_promote

    def __init__(self, cooling=8):
        if not isinstance(cooling, (int, float)) or not cooling > 0:
            raise ValueError(f"cooling: a positive number, got {cooling!r}")
        self.cooling = cooling

    def state(self, arena_blocks, dram_blocks):
        g = np.zeros(8, np.int64)
        g[H_PERIOD] = max(int(self.cooling * dram_blocks), 256)
        g[H_NEXT_COOL] = g[H_PERIOD]
        g[H_THRESH] = 2
        return {"count": np.zeros(arena_blocks, np.uint16), "epoch": np.zeros(arena_blocks, np.int64), "g": g,
                "hist": np.zeros(NBINS, np.int64)}


BUILTIN = {"fifo": FifoPolicy, "hotness": HotnessPolicy}
