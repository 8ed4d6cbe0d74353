/* ghost.c: what more or less DRAM would be worth to a pool, measured from
 * what the engine does anyway (docs/sharing.md, "Benefit").
 *
 *  - More DRAM: refault distances, as Linux's workingset does for the page
 *    cache. Each block evicted from DRAM is stamped with the eviction clock
 *    (evictions so far); when it is brought back, the evictions since are
 *    how much more DRAM would have kept it (under LRU order). A histogram of
 *    them, per period, says how many reads from below each extra amount of
 *    DRAM would have saved. Nothing is kept for evicted blocks but the stamp
 *    in a per-block array (no list, no hash), so it costs a store per
 *    eviction and a load per promotion.
 *  - Less DRAM: how soon resident blocks are used again. Hint sampling
 *    parks resident blocks (sampling.c); each parked block is stamped with
 *    the time, and its hint fault records the time from park to access: a
 *    block used every t seconds is hit about t/2 after a random park. Only
 *    a block seen used before since it came into DRAM (by the fault that
 *    brought it, or a hint) counts as reused: a scan's block read ahead is
 *    hit once, soon, and never again. A census
 *    of the blocks still parked, by how long, finds the idle ones. No hint
 *    fault is added: these are the samples sampling takes.
 * One u32 per block serves both: the eviction clock while the block is
 * below DRAM; in DRAM, SEEN (used since it came in) and, while parked, the
 * park time in the other 31 bits (0: none seen).
 *
 * The pure part works on a tm_ghost; the pool's hooks call it with the lock
 * held, only for pools that enabled it (p->ghost). */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>

#include "internal.h"

#define SEEN 0x80000000u
#define TIME_MASK 0x7fffffffu /* park times wrap after 2^31 units (39 hours) */

int tm_ghost_distance_bucket(uint64_t d)
{
    if (d < 4)
        return (int)d;
    int e = 63 - __builtin_clzll(d); /* >= 2 */
    int i = 4 * (e - 1) + (int)((d >> (e - 2)) & 3);
    return i < TM_GHOST_DISTANCES ? i : TM_GHOST_DISTANCES - 1;
}

uint64_t tm_ghost_distance_lo(int i)
{
    if (i < 4)
        return (uint64_t)i;
    return (uint64_t)(4 + i % 4) << (i / 4 - 1);
}

int tm_ghost_age_bucket(uint64_t units)
{
    int i = units ? 64 - __builtin_clzll(units) : 0;
    return i < TM_GHOST_AGES ? i : TM_GHOST_AGES - 1;
}

uint64_t tm_ghost_age_lo_ns(int i)
{
    return i ? (uint64_t)TM_GHOST_UNIT_NS << (i - 1) : 0;
}

/* Time since the ghost began, in units modulo 2^31, never 0 (0 marks
 * "none"). */
static uint32_t units_at(const tm_ghost *g, uint64_t now_ns)
{
    uint32_t u = (uint32_t)((now_ns - g->epoch_ns) / TM_GHOST_UNIT_NS) & TIME_MASK;
    return u ? u : 1;
}

static uint32_t units_since(uint32_t now, uint32_t then)
{
    return (now - then) & TIME_MASK;
}

tm_ghost *tm_ghost_new(int64_t nblocks, uint64_t now_ns)
{
    size_t bytes = ((size_t)nblocks * sizeof(uint32_t) + 4095) & ~(size_t)4095;
    tm_ghost *g = tm_os_reserve(bytes + 4096, 4096, 0);
    if (!g)
        return NULL;
    /* The header in the first page, the stamps after it: untouched pages
     * cost nothing. */
    g->stamp = (uint32_t *)((uint8_t *)g + 4096);
    g->nblocks = nblocks;
    g->bytes = bytes + 4096;
    g->clock = 1;
    g->epoch_ns = now_ns;
    _Static_assert(sizeof(tm_ghost) <= 4096, "the header fits its page");
    return g;
}

void tm_ghost_free(tm_ghost *g)
{
    if (g)
        tm_os_unmap(g, g->bytes);
}

void tm_ghost_evicted(tm_ghost *g, int64_t b)
{
    g->stamp[b] = g->clock;
    g->clock = g->clock + 1 ? g->clock + 1 : 1;
    g->st.evictions++;
}

void tm_ghost_refault(tm_ghost *g, int64_t b, int used)
{
    uint32_t s = g->stamp[b];
    g->stamp[b] = used ? SEEN : 0;
    if (!s)
        return;
    /* Evictions since, modulo 2^32 less the 0 the clock skips. */
    uint32_t d = g->clock - s - (g->clock < s);
    g->st.refaults++;
    g->st.refault_distance[tm_ghost_distance_bucket(d)]++;
}

void tm_ghost_parked(tm_ghost *g, int64_t b, int64_t n, uint64_t now_ns)
{
    uint32_t u = units_at(g, now_ns);
    for (int64_t i = b; i < b + n; i++)
        g->stamp[i] = (g->stamp[i] & SEEN) | u;
}

void tm_ghost_hint(tm_ghost *g, int64_t b, uint64_t now_ns)
{
    uint32_t s = g->stamp[b];
    g->stamp[b] = SEEN;
    if (!(s & TIME_MASK))
        return;
    if (!(s & SEEN)) {
        g->st.first_uses++;
        return;
    }
    uint32_t units = units_since(units_at(g, now_ns), s & TIME_MASK);
    int i = tm_ghost_age_bucket(units);
    g->st.reuses++;
    g->st.reuse_latency[i]++;
    g->st.reuse_latency_ns[i] += (uint64_t)units * TM_GHOST_UNIT_NS;
}

void tm_ghost_census(const tm_ghost *g, const uint8_t *tier, const uint8_t *flags, int64_t n, uint64_t now_ns,
                     uint64_t parked[TM_GHOST_AGES])
{
    uint32_t u = units_at(g, now_ns);
    memset(parked, 0, TM_GHOST_AGES * sizeof parked[0]);
    for (int64_t b = 0; b < n; b++)
        if (tier[b] == TM_DRAM && (flags[b] & (TM_F_SAMPLED | TM_F_BUSY)) == TM_F_SAMPLED &&
            (g->stamp[b] & TIME_MASK))
            parked[tm_ghost_age_bucket(units_since(u, g->stamp[b] & TIME_MASK))]++;
}

int tm_ghost_enable(tm_pool *p)
{
    if (p->child)
        return -EPERM;
    tm_engine_depth++; /* its memory is the engine's: never the pool's own */
    tm_ghost *g = tm_ghost_new(p->nblocks, tm_os_now_ns());
    tm_engine_depth--;
    if (!g)
        return -ENOMEM;
    tm_lock(p);
    tm_ghost *old = p->ghost;
    if (!old)
        p->ghost = g;
    tm_unlock(p);
    if (old)
        tm_ghost_free(g);
    return 0;
}

int tm_ghost_read(tm_pool *p, tm_ghost_stats *out)
{
    if (p->child) /* a fork child's view: its parent's stamps were not inherited */
        return -ENOENT;
    tm_lock(p);
    if (!p->ghost) {
        tm_unlock(p);
        return -ENOENT;
    }
    uint64_t t0 = tm_os_now_ns();
    *out = p->ghost->st;
    tm_ghost_census(p->ghost, p->meta.tier, p->meta.flags, p->scan_end, t0, out->parked);
    uint64_t ns = tm_os_now_ns() - t0;
    p->ghost->st.census_ns += ns;
    out->census_ns += ns;
    tm_unlock(p);
    return 0;
}

void tm_ghost_fini(struct tm_pool *p)
{
    tm_ghost_free(p->ghost);
    p->ghost = NULL;
}
