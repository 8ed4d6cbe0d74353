"""What more or less DRAM was worth to a pool over the last period: its
miss-ratio curve near its budget, from its ghost (csrc/ghost.c) and its
counters. docs/sharing.md, "Benefit".

Misses are bytes read from the lower tiers per second (promotions, readahead
included). For each of POINTS amounts of DRAM, k * step for k = 1..POINTS:

- gain[k-1]: the misses per second that k * step more DRAM would have saved:
  the refaults whose distance (evictions between a block's eviction and its
  return) was at most that many blocks;
- loss[k-1]: the misses per second that k * step less DRAM would add, at
  least gain[k-1] (curves()): the blocks that would go, coldest first, each
  at the rate it is used (each of its uses a miss, were it below DRAM). DRAM the pool does not use costs
  nothing; the blocks parked now (the first victims: hint sampling parked
  them, and they were not used since) are used as often as parked blocks
  were reused over the period; a resident block seen reused is used about
  1/(2 L) a second, L the time from its park to its reuse; a block used once
  since it came in (a scan's) is not known to be used again; and a block
  nothing was learnt of (sampling is off, or has not looked yet) is taken as
  used all the time (UNKNOWN_RATE)."""
from .._engine import ffi, lib

DISTANCES = lib.TM_GHOST_DISTANCES
AGES = lib.TM_GHOST_AGES
DISTANCE_LO = [int(lib.tm_ghost_distance_lo(i)) for i in range(DISTANCES + 1)]
AGE_LO_S = [lib.tm_ghost_age_lo_ns(i) / 1e9 for i in range(AGES + 1)]
UNIT_S = lib.TM_GHOST_UNIT_NS / 1e9
# Uses per second of a block nothing was learnt of: never given away for little.
UNKNOWN_RATE = 1e6
_COUNTS = ("evictions", "refaults", "reuses", "first_uses", "census_ns")
_HISTOGRAMS = ("refault_distance", "reuse_latency", "reuse_latency_ns", "parked")


def read(engine) -> dict:
    """The pool's ghost counts and its census now, as plain numbers; None if
    it measures nothing (tm_ghost_enable was not called)."""
    g = ffi.new("tm_ghost_stats *")
    if lib.tm_ghost_read(engine, g) < 0:
        return None
    out = {name: int(getattr(g, name)) for name in _COUNTS}
    for name in _HISTOGRAMS:
        out[name] = list(getattr(g, name))
    return out


def _diff(cur: list, prev: list) -> list:
    return [c - p for c, p in zip(cur, prev)]


def gain(prev: dict, cur: dict, seconds: float, amounts: list) -> list:
    """Blocks per second that each of `amounts` (blocks) more DRAM would have
    kept from being read back, over the period between two reads. A refault
    at distance d is saved by d more blocks or more; within a bucket the
    distances are taken as spread evenly."""
    counts = _diff(cur["refault_distance"], prev["refault_distance"])
    out = []
    for amount in amounts:
        saved = 0.0
        for i, n in enumerate(counts):
            lo, hi = DISTANCE_LO[i], DISTANCE_LO[i + 1]
            if n and amount >= lo:
                saved += n * min(1.0, (amount - lo + 1) / (hi - lo))
        out.append(saved / seconds)
    return out


def classes(prev: dict, cur: dict, seconds: float, free: int, resident: int) -> list:
    """The pool's DRAM as (blocks, uses per second of each) classes, coldest
    first: `free` blocks it does not use; the blocks parked now, each reused
    as often as parked blocks were over the period (reuse hints per second
    over the parked blocks, halved as 1/(2 L) is: a parked block waits half
    its reuse time on average); and the rest of the `resident` blocks in the
    proportions the period's hints found them: first uses, reuses by their
    time from park to use, or nothing learnt. A scan's parked blocks are
    blocks it passed (never hit again), an idle pool's are all of them."""
    out = [(free, 0.0)]
    reuses = _diff(cur["reuse_latency"], prev["reuse_latency"])
    parked = sum(cur["parked"])
    if parked:
        out.append((parked, sum(reuses) / seconds / (2 * parked)))
    active = max(resident - parked, 0)
    reuse_s = [ns / 1e9 for ns in _diff(cur["reuse_latency_ns"], prev["reuse_latency_ns"])]
    first = cur["first_uses"] - prev["first_uses"]
    seen = sum(reuses) + first
    if active and not seen:
        out.append((active, UNKNOWN_RATE))
    elif active:
        out.append((active * first / seen, 0.0))
        for n, s in zip(reuses, reuse_s):
            if n:
                out.append((active * n / seen, 1.0 / (2 * max(s / n, UNIT_S / 2))))
    return sorted(out, key=lambda c: c[1])


def loss(population: list, amounts: list) -> list:
    """Blocks per second read back if each of `amounts` (blocks) less DRAM
    had held the pool: the coldest blocks of `population` (classes()) go
    first, and each is read back as often as it is used."""
    out = []
    for amount in amounts:
        left, lost = amount, 0.0
        for blocks, rate in population:
            take = min(left, blocks)
            lost += take * rate
            left -= take
            if left <= 0:
                break
        else:
            lost += left * UNKNOWN_RATE  # more than it holds: everything it has, and more
        out.append(lost)
    return out


def curves(prev: dict, cur: dict, seconds: float, free: int, resident: int, amounts: list):
    """(gain, loss) at each of `amounts` (blocks), in blocks per second, over
    the period between two reads. The loss is at least the gain: a
    miss-ratio curve flattens as DRAM grows (it is convex), so a block less
    costs at least what a block more saves. That bound is what is known of a
    pool that thrashes: its hot blocks are evicted before sampling sees
    them reused, and its refaults say what they are worth."""
    gained = gain(prev, cur, seconds, amounts)
    lost = loss(classes(prev, cur, seconds, free, resident), amounts)
    return gained, [max(g, x) for g, x in zip(gained, lost)]


def idle_blocks(census: list, seconds: float) -> int:
    """Blocks parked at least `seconds` and not used since."""
    return sum(n for j, n in enumerate(census) if AGE_LO_S[j] >= seconds)
