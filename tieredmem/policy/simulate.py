"""Replay a block-access trace against a placement policy, offline.

The model is the engine's: demand paging into a DRAM tier of `dram_blocks`
blocks. Every access ends with its block in DRAM (a fault always promotes);
when DRAM is full the policy picks a victim, which is demoted to PMEM if the
simulation has a PMEM tier, else to NVMe. Tiers are exclusive: a PMEM hit
moves the block back up to DRAM.

Policies:

* "lru": exact LRU (the engine approximates it with CLOCK over sampled
  reference bits; exact LRU is the policy CLOCK aims at).
* "fifo": evict in order of arrival in DRAM; hits do not reorder.
* "hotness" (in the spirit of Memtis): per-block access counts, halved
  every COOL_PERIOD_FACTOR * dram_blocks accesses, binned by log2 into a
  histogram of all blocks seen (any tier). The hot threshold is the lowest
  bin such that the blocks in it and above fit DRAM. The victim is the least
  recently used cold block (below the threshold; recency ranks the blocks
  the histogram calls alike), or, when every block in DRAM is hot, the least
  recently used block of the coldest bin.

Every policy is composed with the engine's stream layer (streams=True, the
default; streams=False replays the policy alone), modelled on csrc/stream.c
("streams: use-once and loops"). Streams are detected from misses only, as
the engine sees faults, not hits: up to NSTREAMS records {start, next,
window, stride, last, used, born}; a miss at b continues the first record
with next <= b <= next + window (window doubles up to `batch`, next = b + 1,
stride 1) or, for a strided record, b == last + stride; or else the first
sequential record with a window of a whole batch, the latest or one matched
within the latest NSTREAMS misses, whose next .. b - 1 are all resident (at most dram_blocks of them:
it walked there over hits, as the engine's streams walk over blocks mapped
ahead or left resident, and those blocks are passed too); else it replaces the
least recently used record with {start b, next b + 1, window 1, born: the
miss count}, strided (stride d) if b lies d blocks past the latest record's
last block, 1 < d <= MAX_STRIDE. Only sequential records (stride 1) give
victims. A record is *active* if it matched within the latest NSTREAMS misses
and no record born after its last match starts below its next - G. When a
victim is needed the layer takes a resident block that is not one of the
latest RECENT misses: first from each record's passed region, most recently
used first, scanned downward ([start, next - G) if active, the whole
[start, next) if not; an interval [lo, hi) already looked at is skipped, as
the engine's stream_take); then, for each active record in that order, from
its guard, last - 1 down to max(next - G, start). Only if no record yields a
block does the policy choose, by its own rule; a block the layer takes leaves
the policy's structures too. batch = max(1, min(64, dram_blocks // 4)) and
G = max(batch, dram_blocks // 16), as in the engine (a 4 MiB batch of 64 KiB
blocks, capped at a quarter of DRAM). The model differs from the engine in
what it cannot see: no prefetch (a miss brings in its block only, so last =
next - 1), every miss is a read (the engine's zero fills pass nothing), no
advice, nothing in flight, one victim at a time, and the policies alone do
not skip the latest misses (the engine's do). docs/policies.md, "Streams:
use-once and loops", explains the rule.

PMEM, for every policy, evicts to NVMe in FIFO order of demotion. Since a
PMEM hit promotes the block (it leaves PMEM), that order is also LRU order
of the blocks' last DRAM residency.

All kernels run in numba on a trace remapped to dense ids 0..nblocks-1, in
the order of the original ids (the stream layer needs their order and
spacing: it sees the original ids through ids[dense id]), and never raise:
arguments are validated here in Python first.
"""
import operator

import numpy as np
from numba import njit

POLICIES = ("lru", "fifo", "hotness")

# where[] states of a block
NEW, DRAM, PMEM, NVME = 0, 1, 2, 3

# tally[] slots shared by the kernels (an array, so helpers can update them)
DRAM_HITS, PMEM_HITS, FIRST_ACCESSES, DRAM_USED, PMEM_USED, STREAM_VICTIMS = range(6)
TALLY_SIZE = 6

# Dense ids and list links are int32 to halve the cache footprint of the
# per-block arrays; the sentinels come after the last block id, so a trace
# (which has at most as many distinct blocks as events) must leave room.
MAX_EVENTS = (1 << 31) - 64

# hotness: counts live in bins 1..NBINS-1 by bit length, so a count must fit
# in NBINS-1 bits. NBINS is a power of two so a ring slot is a mask away.
NBINS = 32
BIN_MASK = NBINS - 1
BIN0 = NBINS  # slot of bin 0 (count decayed to 0), outside the ring
# (the ring's spare slot, bin NBINS, stays empty: cooling reuses it)
COUNT_MAX = (1 << (NBINS - 1)) - 1
# Counts halve every COOL_PERIOD_FACTOR * dram_blocks accesses: long enough
# that a block needs several re-references to look hot, short enough that a
# hot set which moved away decays within a few DRAM turnovers.
COOL_PERIOD_FACTOR = 8

# The dense remap uses a direct lookup table (one pass in numba) when ids are
# below this many per event; otherwise np.unique, whose sort costs ~120 ns
# per event and would dominate the replay.
TABLE_IDS_PER_EVENT = 2
TABLE_IDS_MIN = 1 << 20


# ---------------------------------------------------------------- input

def _as_count(value, name, minimum):
    """value as an int >= minimum, else ValueError naming the argument."""
    try:
        count = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if count < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {count}")
    return count


def _validated_trace(trace):
    arr = np.asarray(trace)
    if arr.ndim != 1:
        raise ValueError(f"trace must be a 1-D array of block ids, got {arr.ndim} dimensions")
    if arr.dtype.kind not in "iu":
        raise ValueError(f"trace must hold integer block ids, got dtype {arr.dtype}")
    if arr.size and arr.dtype.kind == "i" and arr.min() < 0:
        raise ValueError(f"trace block ids must be non-negative, found {arr.min()}")
    if arr.size > MAX_EVENTS:
        raise ValueError(f"trace has {arr.size} events, more than the {MAX_EVENTS} supported")
    return arr


@njit(cache=True)
def _remap_by_table(trace, max_id):
    """Dense ids in the order of the original ids, and the original ids
    (ascending) by dense id."""
    table = np.zeros(max_id + 1, np.int32)
    for i in range(trace.size):
        table[trace[i]] = 1
    nblocks = 0
    for v in range(max_id + 1):
        nblocks += table[v]
    ids = np.empty(nblocks, np.int64)
    d = 0
    for v in range(max_id + 1):
        if table[v]:
            table[v] = d
            ids[d] = v
            d += 1
    dense = np.empty(trace.size, np.int32)
    for i in range(trace.size):
        dense[i] = table[trace[i]]
    return dense, ids


def _dense_trace(trace):
    """(trace as dense int32 ids, ids, base, orig): the original id of dense
    id d is base + ids[d]; orig is the trace as int64 ids less base. Dense
    ids follow the original ids' order, so ids is ascending. The policies
    are blind to id values; the stream layer reads ids and orig (only their
    order and spacing matter to it)."""
    arr = _validated_trace(trace)
    if arr.size == 0:
        return np.zeros(0, np.int32), np.zeros(0, np.int64), 0, np.zeros(0, np.int64)
    max_id = int(arr.max())
    if max_id < TABLE_IDS_PER_EVENT * arr.size + TABLE_IDS_MIN:
        orig = np.ascontiguousarray(arr, dtype=np.int64)
        dense, ids = _remap_by_table(orig, max_id)
        return dense, ids, 0, orig
    ids, inverse = np.unique(arr, return_inverse=True)
    # relative to the smallest: only order and spacing matter, and a uint64
    # id beyond int64's range must not wrap
    base = ids[0]
    return (inverse.astype(np.int32).ravel(), (ids - base).astype(np.int64), int(base),
            (arr - base).astype(np.int64))


# ---------------------------------------------------------------- shared kernel parts
# Blocks and sentinels share one links array of (prev, next) rows, so a
# node's two links share a cache line; a block is in at most one circular
# list at a time (a DRAM list or the PMEM list).
#
# Helpers on the per-access path are inline='always': numba otherwise calls
# them out of line, passing and reference-counting every array argument,
# which made the kernels ~3x slower.
PREV, NEXT = 0, 1


@njit(cache=True)
def _new_links(nblocks, nsentinels):
    size = nblocks + nsentinels
    links = np.empty((size, 2), np.int32)
    for s in range(nblocks, size):
        links[s, PREV] = s
        links[s, NEXT] = s
    return links


@njit(cache=True, inline='always')
def _unlink(links, x):
    p = links[x, PREV]
    n = links[x, NEXT]
    links[p, NEXT] = n
    links[n, PREV] = p


@njit(cache=True, inline='always')
def _insert_before(links, node, x):
    p = links[node, PREV]
    links[p, NEXT] = x
    links[x, PREV] = p
    links[x, NEXT] = node
    links[node, PREV] = x


@njit(cache=True, inline='always')
def _push_tail(links, sentinel, x):
    _insert_before(links, sentinel, x)


@njit(cache=True, inline='always')
def _fetch(b, where, links, tally):
    """Account a DRAM miss on b and take it out of PMEM if it is there."""
    w = where[b]
    if w == PMEM:
        tally[PMEM_HITS] += 1
        tally[PMEM_USED] -= 1
        _unlink(links, b)
    elif w == NEW:
        tally[FIRST_ACCESSES] += 1


@njit(cache=True, inline='always')
def _demote(victim, where, links, pmem_list, pmem_cap, tally):
    """Move a victim (already unlinked from DRAM) to PMEM, pushing PMEM's
    oldest block to NVMe when full; straight to NVMe without PMEM."""
    if pmem_cap == 0:
        where[victim] = NVME
        return
    if tally[PMEM_USED] == pmem_cap:
        oldest = links[pmem_list, NEXT]
        _unlink(links, oldest)
        where[oldest] = NVME
    else:
        tally[PMEM_USED] += 1
    _push_tail(links, pmem_list, victim)
    where[victim] = PMEM


# ---------------------------------------------------------------- the stream layer
# streams[i] is one record, as the engine's tm_stream (csrc/internal.h);
# S_WINDOW == 0 marks an empty one. Original ids (S_START, S_NEXT, S_LAST,
# S_HI_ID) decide what continues a stream and state the rule, over all ids as
# the engine's blocks; regions are scanned in dense ids, which follow the
# original order: S_START_D, S_LAST_D and S_NEXT_D are the dense ids of
# start, last and next (= last + 1: no prefetch), S_TOP_D the first dense id
# at or above next - G (at least S_START_D). [S_LO, S_HI) (dense; S_HI_ID
# the original id S_HI stands for) is the interval looked at already, as the
# engine's [lo, hi). order[] lists the records most recently used first (each
# miss sets one record's S_USED to a new count, so no two non-empty records
# tie). recent[] holds the dense ids of the latest RECENT misses.
NSTREAMS = 8  # TM_STREAMS
RECENT = 4  # TM_RECENT
MAX_STRIDE = 256  # TM_MAX_STRIDE: farther apart, two misses are unrelated
(S_START, S_NEXT, S_WINDOW, S_USED, S_BORN, S_STRIDE, S_LAST, S_START_D, S_LAST_D, S_NEXT_D,
 S_TOP_D, S_LO, S_HI, S_HI_ID) = range(14)
S_FIELDS = 14
STREAM_BATCH_MAX = 64  # blocks: the engine's 4 MiB batch of 64 KiB blocks
GUARD_DIVISOR = 16  # G = max(batch, dram_blocks // 16)


def stream_sizes(dram_blocks):
    """(batch, guard) in blocks for a DRAM of dram_blocks, as in the engine:
    batch = min(64, dram_blocks // 4), at least 1; guard G = max(batch,
    dram_blocks // 16), the blocks behind an active stream's head the layer
    takes only after every stream's other passed blocks."""
    batch = max(1, min(STREAM_BATCH_MAX, dram_blocks // 4))
    return batch, max(batch, dram_blocks // GUARD_DIVISOR)


@njit(cache=True)
def _new_streams():
    order = np.empty(NSTREAMS, np.int64)
    for k in range(NSTREAMS):
        order[k] = k
    recent = np.full(RECENT, -1, np.int64)
    active = np.zeros(NSTREAMS, np.bool_)  # scratch for _stream_victim
    return np.zeros((NSTREAMS, S_FIELDS), np.int64), order, recent, active


@njit(cache=True, inline='always')
def _stream_walked(i, latest, d, b, streams, where, nmiss, batch, walk_max):
    """The engine's stream_walked: sequential record i, whose window is a
    whole batch (a run of sequential misses confirmed it), the latest (or one
    matched within the latest NSTREAMS misses), reached b over blocks that
    are all in DRAM: every id from next to b - 1 is in the trace (dense ids
    next_d .. d - 1 stand for exactly those) and resident, and there are at
    most walk_max (the DRAM's blocks) of them."""
    nxt = streams[i, S_NEXT]
    if streams[i, S_STRIDE] != 1 or streams[i, S_WINDOW] < batch or b <= nxt or b - nxt > walk_max:
        return False
    if i != latest and streams[i, S_USED] + NSTREAMS < nmiss:
        return False
    lo = streams[i, S_NEXT_D]
    if d - lo != b - nxt:
        return False
    for x in range(lo, d):
        if where[x] != DRAM:
            return False
    return True


@njit(cache=True, inline='always')
def _stream_miss(d, b, ids, streams, order, recent, nmiss, batch, guard, where, walk_max):
    """A miss on block b, dense id d (the misses so far, this one included:
    nmiss), as the engine's tm_stream_of: continue the first stream it falls in
    (next <= b <= next + window: sequential from then on; or a strided one's
    last + stride), else the first sequential one that walked to b over
    resident blocks (_stream_walked), or replace the least recently used
    record (the first of the least) with a new one, whose stride is guessed
    from the latest record's last block. (b comes from the trace, read in
    order: looking it up in ids[] would be a cache miss per miss.)"""
    recent[nmiss % RECENT] = d
    found = -1
    oldest = 0
    latest = 0
    for i in range(NSTREAMS):
        w = streams[i, S_WINDOW]
        if found < 0 and w and streams[i, S_NEXT] <= b <= streams[i, S_NEXT] + w:
            streams[i, S_STRIDE] = 1
            found = i
        elif found < 0 and w and streams[i, S_STRIDE] > 1 and b == streams[i, S_LAST] + streams[i, S_STRIDE]:
            found = i
        if streams[i, S_USED] < streams[oldest, S_USED]:
            oldest = i
        if streams[i, S_USED] > streams[latest, S_USED]:
            latest = i
    if found < 0:
        for i in range(NSTREAMS):
            if streams[i, S_WINDOW] and _stream_walked(i, latest, d, b, streams, where, nmiss, batch, walk_max):
                found = i
                break
    if found >= 0:
        w = 2 * streams[found, S_WINDOW]
        streams[found, S_WINDOW] = w if w < batch else batch
        if streams[found, S_STRIDE] == 1:
            # a strided stream's next stays (the engine's strided runs
            # leave it); a sequential one's follows b
            streams[found, S_NEXT] = b + 1
            streams[found, S_NEXT_D] = d + 1
            top = b + 1 - guard
            t = streams[found, S_TOP_D]
            while t < ids.size and ids[t] < top:
                t += 1
            streams[found, S_TOP_D] = t
    else:
        delta = b - streams[latest, S_LAST] if streams[latest, S_WINDOW] else 0
        found = oldest
        streams[found, S_START] = b
        streams[found, S_NEXT] = b + 1
        streams[found, S_WINDOW] = 1
        streams[found, S_STRIDE] = delta if 1 < delta <= MAX_STRIDE else 1
        streams[found, S_BORN] = nmiss
        streams[found, S_START_D] = d
        streams[found, S_NEXT_D] = d + 1
        # next - G <= start (G >= 1): the first dense id at or above it,
        # clamped to start, is start
        streams[found, S_TOP_D] = d
        streams[found, S_LO] = d
        streams[found, S_HI] = d
        streams[found, S_HI_ID] = b
    streams[found, S_LAST] = b
    streams[found, S_LAST_D] = d
    streams[found, S_USED] = nmiss
    # to the front of order[]
    k = 0
    while order[k] != found:
        k += 1
    while k > 0:
        order[k] = order[k - 1]
        k -= 1
    order[0] = found


@njit(cache=True, inline='always')
def _stream_takes(x, where, recent):
    """The engine's stream_takes: x is resident and not one of the latest
    misses (the simulator has no advice and nothing in flight)."""
    if where[x] != DRAM:
        return False
    for r in range(RECENT):
        if recent[r] == x:
            return False
    return True


@njit(cache=True, inline='always')
def _stream_active(i, streams, nmiss, guard):
    """The engine's stream_active: record i matched within the latest
    NSTREAMS misses, and no stream born since then starts below its
    next - G."""
    if streams[i, S_USED] + NSTREAMS < nmiss:
        return False
    below = streams[i, S_NEXT] - guard
    for t in range(NSTREAMS):
        if streams[t, S_WINDOW] and streams[t, S_BORN] > streams[i, S_USED] and streams[t, S_START] < below:
            return False
    return True


@njit(cache=True, inline="always")
def _stream_take(i, streams, top_id, top_d, where, ids, recent):
    """The engine's stream_take for one block: from top - 1 down, first the
    blocks above the interval looked at ([hi, top)), then those below it
    ([start, lo)); -1 if none. The interval grows to cover what is looked
    at; if the block taken lies above hi, the interval restarts at
    [taken, top) (the blocks between are looked at again later)."""
    start_d = streams[i, S_START_D]
    hi_d = streams[i, S_HI]
    hi_id = streams[i, S_HI_ID]
    lim = hi_d if hi_d > start_d else start_d
    x = top_d - 1
    while x >= lim:
        if _stream_takes(x, where, recent):
            if ids[x] > hi_id and ids[x] > streams[i, S_START]:  # stopped short of the old range
                streams[i, S_LO] = x
                streams[i, S_HI] = top_d
                streams[i, S_HI_ID] = top_id
            elif top_id > hi_id:
                streams[i, S_HI] = top_d
                streams[i, S_HI_ID] = top_id
            return x
        x -= 1
    if top_id > hi_id:
        streams[i, S_HI] = top_d
        streams[i, S_HI_ID] = top_id
    x = streams[i, S_LO] - 1
    while x >= start_d:
        if _stream_takes(x, where, recent):
            streams[i, S_LO] = x
            return x
        x -= 1
    streams[i, S_LO] = start_d
    return -1


@njit(cache=True, inline="always")
def _stream_victim(streams, order, recent, active, where, ids, nmiss, guard):
    """The engine's stream_victims for one block, -1 if none. Sequential
    streams, most recently used first: an active stream's passed region
    below its guard, [start, next - G); an inactive one's whole passed
    region, [start, next). Then, for each active stream in that order, the
    guarded blocks its latest miss has passed, from last - 1 down to
    max(next - G, start), with no interval kept."""
    for k in range(NSTREAMS):
        active[k] = False
    for k in range(NSTREAMS):
        i = order[k]
        if streams[i, S_WINDOW] == 0 or streams[i, S_STRIDE] != 1:
            continue
        active[k] = _stream_active(i, streams, nmiss, guard)
        if active[k]:
            top_id = streams[i, S_NEXT] - guard
            top_d = streams[i, S_TOP_D]
        else:
            top_id = streams[i, S_NEXT]
            top_d = streams[i, S_NEXT_D]
        if top_id > streams[i, S_START]:
            x = _stream_take(i, streams, top_id, top_d, where, ids, recent)
            if x >= 0:
                return x
    for k in range(NSTREAMS):
        if not active[k]:
            continue
        i = order[k]
        lo = streams[i, S_TOP_D]
        if lo < streams[i, S_START_D]:
            lo = streams[i, S_START_D]
        x = streams[i, S_LAST_D] - 1
        while x >= lo:
            if _stream_takes(x, where, recent):
                return x
            x -= 1
    return -1


# ---------------------------------------------------------------- lru, fifo

@njit(cache=True, inline='always')
def _record(per_hit, per_victim, i, hit, victim, ids):
    """Per-access detail, when asked for (arrays of the trace's length)."""
    per_hit[i] = hit
    per_victim[i] = ids[victim] if victim >= 0 else -1


@njit(cache=True)
def _simulate_queue(trace, orig, ids, dram_cap, pmem_cap, move_on_hit, batch, guard,
                    per_hit, per_victim):
    """LRU (move_on_hit) or FIFO: DRAM is one list, victims taken at its head
    (after the stream layer's, if batch > 0)."""
    nblocks = ids.size
    where = np.zeros(nblocks, np.uint8)
    links = _new_links(nblocks, 2)
    dram_list = nblocks
    pmem_list = nblocks + 1
    tally = np.zeros(TALLY_SIZE, np.int64)
    streams, order, recent, active = _new_streams()
    nmiss = 0
    record = per_hit.size > 0
    for i in range(trace.size):
        b = trace[i]
        if where[b] == DRAM:
            tally[DRAM_HITS] += 1
            if move_on_hit:
                _unlink(links, b)
                _push_tail(links, dram_list, b)
            if record:
                _record(per_hit, per_victim, i, True, -1, ids)
            continue
        _fetch(b, where, links, tally)
        nmiss += 1
        if batch:
            _stream_miss(b, orig[i], ids, streams, order, recent, nmiss, batch, guard, where, dram_cap)
        victim = -1
        if tally[DRAM_USED] == dram_cap:
            if batch:
                victim = _stream_victim(streams, order, recent, active, where, ids, nmiss, guard)
            if victim >= 0:
                tally[STREAM_VICTIMS] += 1
            else:
                victim = links[dram_list, NEXT]
            _unlink(links, victim)
            _demote(victim, where, links, pmem_list, pmem_cap, tally)
        else:
            tally[DRAM_USED] += 1
        _push_tail(links, dram_list, b)
        where[b] = DRAM
        if record:
            _record(per_hit, per_victim, i, False, victim, ids)
    return tally


# ---------------------------------------------------------------- hotness
# A block's count c, stored at epoch e, is worth c >> (E - e) at epoch E:
# cooling (E += 1) halves every count lazily. Its bin is its bit length, and
# halving lowers a bit length by exactly one, so bit_length(c) + e is an
# absolute level that cooling does not change: level L sits in bin L - E.
# Histogram entries and DRAM lists for bins >= 1 are therefore kept in a ring
# indexed by L mod NBINS, and cooling only merges the ring slot of bin 1 into
# bin 0 (slot BIN0). Each DRAM list is in LRU order (head least recent), and
# the merge keeps it so.
#
# Per block, one heat row (16 bytes, one cache line): the count packed with
# its epoch, and the time of the last access.
COUNT_AT, STAMP = 0, 1
COUNT_BITS = 32
COUNT_FIELD = (1 << COUNT_BITS) - 1
# thresh[]: the hot bin t and how many blocks (in any tier) are in bins >= t
HOT_BIN, HOT_BLOCKS = 0, 1


@njit(cache=True, inline='always')
def _bit_length(x):
    n = 0
    if x >= 1 << 16:
        x >>= 16
        n += 16
    if x >= 1 << 8:
        x >>= 8
        n += 8
    if x >= 1 << 4:
        x >>= 4
        n += 4
    if x >= 1 << 2:
        x >>= 2
        n += 2
    if x >= 2:
        x >>= 1
        n += 1
    return n + x


@njit(cache=True, inline='always')
def _slot_of_bin(k, epoch):
    return BIN0 if k == 0 else (epoch + k) & BIN_MASK


@njit(cache=True, inline='always')
def _touch(b, i, seen, heat, hist, thresh, epoch):
    """Count access i to b, moving b in the histogram; return its new bin."""
    packed = heat[b, COUNT_AT]
    c = packed & COUNT_FIELD
    old_bin = 0
    if seen:
        age = epoch - (packed >> COUNT_BITS)
        old_bin = max(_bit_length(c) - age, 0)
        hist[_slot_of_bin(old_bin, epoch)] -= 1
        thresh[HOT_BLOCKS] -= old_bin >= thresh[HOT_BIN]
        c = c >> age if age < NBINS else 0
    new_bin = old_bin
    if c < COUNT_MAX:
        # the bit length grows when c + 1 is a power of two
        new_bin += (c & (c + 1)) == 0
        c += 1
    heat[b, COUNT_AT] = (epoch << COUNT_BITS) | c
    heat[b, STAMP] = i
    hist[_slot_of_bin(new_bin, epoch)] += 1
    thresh[HOT_BLOCKS] += new_bin >= thresh[HOT_BIN]
    return new_bin


@njit(cache=True)
def _fit_threshold(hist, thresh, epoch, dram_cap):
    """Move the hot bin t to the lowest bin such that all blocks in bins >= t
    fit DRAM. It moves little between evictions, so this is O(1) amortized."""
    t = thresh[HOT_BIN]
    hot = thresh[HOT_BLOCKS]
    while hot > dram_cap:
        hot -= hist[_slot_of_bin(t, epoch)]
        t += 1
    while t > 0 and hot + hist[_slot_of_bin(t - 1, epoch)] <= dram_cap:
        t -= 1
        hot += hist[_slot_of_bin(t, epoch)]
    thresh[HOT_BIN] = t
    thresh[HOT_BLOCKS] = hot


@njit(cache=True)
def _merge_lru(links, heat, dst, src):
    """Move list src into list dst, both in LRU order, keeping that order.
    Linear in their lengths, at most DRAM's size, once per cooling period."""
    at = links[dst, NEXT]
    x = links[src, NEXT]
    while x != src:
        following = links[x, NEXT]
        while at != dst and heat[at, STAMP] < heat[x, STAMP]:
            at = links[at, NEXT]
        _insert_before(links, at, x)
        x = following
    links[src, NEXT] = src
    links[src, PREV] = src


@njit(cache=True)
def _cool(epoch, hist, thresh, links, heat, nblocks):
    """Entering `epoch`: every bin drops by one; the slot that held bin 1
    joins bin 0. The hot bin follows, so the hot set stays the same blocks
    unless it was everything from bin 1 up."""
    s = epoch & BIN_MASK
    if thresh[HOT_BIN] >= 2:
        thresh[HOT_BIN] -= 1
    elif thresh[HOT_BIN] == 1:
        thresh[HOT_BLOCKS] -= hist[s]
    hist[BIN0] += hist[s]
    hist[s] = 0
    _merge_lru(links, heat, nblocks + BIN0, nblocks + s)


@njit(cache=True)
def _hotness_victim(hot_bin, epoch, links, heat, nblocks):
    """Least recently used resident block below hot_bin, else the LRU block
    of the coldest non-empty bin. Only list heads compete: each list is in
    LRU order."""
    best = -1
    for k in range(NBINS):
        sentinel = nblocks + _slot_of_bin(k, epoch)
        head = links[sentinel, NEXT]
        if head == sentinel:
            continue
        if k >= hot_bin:
            return head if best < 0 else best
        if best < 0 or heat[head, STAMP] < heat[best, STAMP]:
            best = head
    return best


@njit(cache=True)
def _simulate_hotness(trace, orig, ids, dram_cap, pmem_cap, batch, guard, per_hit, per_victim):
    nblocks = ids.size
    where = np.zeros(nblocks, np.uint8)
    heat = np.zeros((nblocks, 2), np.int64)
    hist = np.zeros(NBINS + 1, np.int64)
    thresh = np.zeros(2, np.int64)
    # sentinels: nblocks + slot for the DRAM bin lists, then PMEM's
    links = _new_links(nblocks, NBINS + 2)
    pmem_list = nblocks + NBINS + 1
    tally = np.zeros(TALLY_SIZE, np.int64)
    streams, order, recent, active = _new_streams()
    nmiss = 0
    record = per_hit.size > 0
    period = COOL_PERIOD_FACTOR * dram_cap
    until_cool = period
    epoch = 0
    for i in range(trace.size):
        if until_cool == 0:
            epoch += 1
            _cool(epoch, hist, thresh, links, heat, nblocks)
            until_cool = period
        until_cool -= 1
        b = trace[i]
        w = where[b]
        new_bin = _touch(b, i, w != NEW, heat, hist, thresh, epoch)
        victim = -1
        if w == DRAM:
            tally[DRAM_HITS] += 1
            _unlink(links, b)
        else:
            _fetch(b, where, links, tally)
            nmiss += 1
            if batch:
                _stream_miss(b, orig[i], ids, streams, order, recent, nmiss, batch, guard, where, dram_cap)
            if tally[DRAM_USED] == dram_cap:
                if batch:
                    victim = _stream_victim(streams, order, recent, active, where, ids, nmiss, guard)
                if victim >= 0:
                    tally[STREAM_VICTIMS] += 1
                else:
                    _fit_threshold(hist, thresh, epoch, dram_cap)
                    victim = _hotness_victim(thresh[HOT_BIN], epoch, links, heat, nblocks)
                _unlink(links, victim)
                _demote(victim, where, links, pmem_list, pmem_cap, tally)
            else:
                tally[DRAM_USED] += 1
            where[b] = DRAM
        _push_tail(links, nblocks + _slot_of_bin(new_bin, epoch), b)
        if record:
            _record(per_hit, per_victim, i, w == DRAM, victim, ids)
    return tally


# ---------------------------------------------------------------- belady

@njit(cache=True)
def _next_uses(trace, nblocks):
    """next_use[i]: index of the next access to trace[i]'s block, or n."""
    n = trace.size
    next_use = np.empty(n, np.int64)
    upcoming = np.full(nblocks, n, np.int64)
    for i in range(n - 1, -1, -1):
        b = trace[i]
        next_use[i] = upcoming[b]
        upcoming[b] = i
    return next_use


# The sift helpers stay out of line: inlined at their three call sites they
# measured slower, not faster.
@njit(cache=True)
def _sift_up(keys, blocks, pos, j):
    key = keys[j]
    b = blocks[j]
    while j > 0:
        parent = (j - 1) >> 1
        if keys[parent] >= key:
            break
        keys[j] = keys[parent]
        blocks[j] = blocks[parent]
        pos[blocks[j]] = j
        j = parent
    keys[j] = key
    blocks[j] = b
    pos[b] = j


@njit(cache=True)
def _sift_down(keys, blocks, pos, size, j):
    key = keys[j]
    b = blocks[j]
    while True:
        child = 2 * j + 1
        if child >= size:
            break
        if child + 1 < size and keys[child + 1] > keys[child]:
            child += 1
        if keys[child] <= key:
            break
        keys[j] = keys[child]
        blocks[j] = blocks[child]
        pos[blocks[j]] = j
        j = child
    keys[j] = key
    blocks[j] = b
    pos[b] = j


@njit(cache=True)
def _belady_hits(trace, nblocks, capacity):
    """Belady's MIN with demand paging: DRAM residents in a max-heap keyed by
    next use; a miss on a full DRAM replaces the root. O(n log capacity)."""
    next_use = _next_uses(trace, nblocks)
    keys = np.empty(capacity, np.int64)
    blocks = np.empty(capacity, np.int32)
    pos = np.full(nblocks, -1, np.int32)
    size = 0
    hits = 0
    for i in range(trace.size):
        b = trace[i]
        j = pos[b]
        if j >= 0:
            # The key was i, the smallest in the heap; it can only grow.
            hits += 1
            keys[j] = next_use[i]
            _sift_up(keys, blocks, pos, j)
        elif size < capacity:
            keys[size] = next_use[i]
            blocks[size] = b
            size += 1
            _sift_up(keys, blocks, pos, size - 1)
        else:
            pos[blocks[0]] = -1
            keys[0] = next_use[i]
            blocks[0] = b
            _sift_down(keys, blocks, pos, size, 0)
    return hits


# ---------------------------------------------------------------- public API

def _run_policy(policy, dense, orig, ids, dram_blocks, pmem_blocks, streams, per_hit, per_victim):
    # Tiers larger than the footprint never fill, so clamping them changes no
    # result and keeps sizes (and hotness's cooling period) within int64.
    nblocks = ids.size
    dram_blocks = min(dram_blocks, max(nblocks, 1))
    pmem_blocks = min(pmem_blocks, nblocks)
    batch, guard = stream_sizes(dram_blocks) if streams else (0, 0)
    if policy == "hotness":
        return _simulate_hotness(dense, orig, ids, dram_blocks, pmem_blocks, batch, guard, per_hit, per_victim)
    return _simulate_queue(dense, orig, ids, dram_blocks, pmem_blocks, policy == "lru", batch, guard,
                           per_hit, per_victim)


def simulate(trace, policy, dram_blocks, pmem_blocks=0, *, streams=True, per_access=False):
    """Replay `trace` (1-D integer array of block ids in access order) under
    `policy` (one of POLICIES) with DRAM of `dram_blocks` blocks and an
    optional PMEM tier of `pmem_blocks`.

    streams: compose the policy with the engine's stream layer (the default,
    as in the engine): blocks that a detected stream has passed are demoted
    first, most recently passed first, the guard behind an active stream's
    head last (module docstring; docs/policies.md). streams=False: the policy alone.
    With the layer, block ids are positions (adjacent ids are adjacent
    blocks); without it they are only names.

    Returns a dict: dram_hits (accesses found in DRAM); misses (all others,
    first accesses included); pmem_hits (misses found in PMEM); first_accesses;
    nvme_reads (misses that were neither); dram_hit_ratio and pmem_hit_ratio
    (hits / len(trace), 0.0 for an empty trace); stream_victims (victims the
    stream layer chose; the policy chose the others); plus the inputs' sizes
    and `streams`. per_access=True adds two arrays of the trace's length:
    "hit" (bool: the access was a DRAM hit) and "victim" (int64: the block
    id demoted from DRAM by that access, -1 if none)."""
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; valid policies: {', '.join(POLICIES)}")
    dram_blocks = _as_count(dram_blocks, "dram_blocks", 1)
    pmem_blocks = _as_count(pmem_blocks, "pmem_blocks", 0)
    dense, ids, base, orig = _dense_trace(trace)
    size = dense.size if per_access else 0
    per_hit = np.zeros(size, np.bool_)
    per_victim = np.zeros(size, np.int64)
    tally = _run_policy(policy, dense, orig, ids, dram_blocks, pmem_blocks, bool(streams), per_hit, per_victim)
    result = _report(policy, dense.size, ids.size, dram_blocks, pmem_blocks, tally)
    result["streams"] = bool(streams)
    if per_access:
        result["hit"] = per_hit
        if base:
            per_victim = np.where(per_victim >= 0, per_victim + base, -1)
        result["victim"] = per_victim
    return result


def _report(policy, accesses, nblocks, dram_blocks, pmem_blocks, tally):
    dram_hits = int(tally[DRAM_HITS])
    pmem_hits = int(tally[PMEM_HITS])
    first = int(tally[FIRST_ACCESSES])
    misses = accesses - dram_hits
    return {
        "policy": policy,
        "accesses": accesses,
        "distinct_blocks": nblocks,
        "dram_blocks": dram_blocks,
        "pmem_blocks": pmem_blocks,
        "dram_hits": dram_hits,
        "misses": misses,
        "pmem_hits": pmem_hits,
        "first_accesses": first,
        "nvme_reads": misses - pmem_hits - first,
        "dram_hit_ratio": dram_hits / accesses if accesses else 0.0,
        "pmem_hit_ratio": pmem_hits / accesses if accesses else 0.0,
        "stream_victims": int(tally[STREAM_VICTIMS]),
    }


def belady(trace, dram_blocks):
    """Optimal offline DRAM hit ratio (Belady's MIN, demand paging: the
    accessed block always enters DRAM) as dram_hits / len(trace); first
    accesses are misses; 0.0 for an empty trace."""
    dram_blocks = _as_count(dram_blocks, "dram_blocks", 1)
    dense, ids, _, _ = _dense_trace(trace)
    if dense.size == 0:
        return 0.0
    nblocks = ids.size
    capacity = min(dram_blocks, nblocks)  # the heap never holds more
    return _belady_hits(dense, nblocks, capacity) / dense.size
