/* test_ghost.c: benefit measurement (csrc/ghost.c): its histogram buckets,
 * refault distances from the eviction clock, park-to-hint times of reused
 * blocks (and first uses told apart), and the census of parked blocks.
 *
 * Links ghost.c and os.c (memory for the stamps, tm_assert's report). A
 * ghost here is tm_ghost_new's for a few blocks, with times given by the
 * checks; the engine's thread-locals that ghost.c's pool functions use are
 * defined below (arena.c defines them in the engine). */
#include <stdlib.h>

#include "check.h"
#include "internal.h"

__thread int tm_engine_depth;
__thread int tm_locks_held;

#define N 64
#define T0 1000000000ull /* the ghost's epoch, ns */
#define MS 1000000ull

static uint64_t hist_sum(const uint64_t *h, int n)
{
    uint64_t s = 0;
    for (int i = 0; i < n; i++)
        s += h[i];
    return s;
}

static void distance_buckets_start_at_their_lower_bounds(void)
{
    for (int i = 0; i < TM_GHOST_DISTANCES - 4; i++)
        CHECKF(tm_ghost_distance_bucket(tm_ghost_distance_lo(i)) == i, "bucket of lo(%d) = %llu", i,
               (unsigned long long)tm_ghost_distance_lo(i));
}

static void every_distance_falls_between_its_bucket_bounds(void)
{
    int last = 0, bad = 0;
    for (uint64_t d = 0; d < 200000; d++) {
        int i = tm_ghost_distance_bucket(d);
        bad += i < last || tm_ghost_distance_lo(i) > d || d >= tm_ghost_distance_lo(i + 1);
        last = i;
    }
    CHECKF(bad == 0, "%d distances outside [lo(i), lo(i+1)) or out of order", bad);
    CHECK_EQ(tm_ghost_distance_bucket(UINT32_MAX), 4 * 30 + 3);
}

static void age_buckets_are_octaves_of_the_unit(void)
{
    int bad = 0;
    for (uint64_t u = 0; u < 100000; u++) {
        int i = tm_ghost_age_bucket(u);
        uint64_t ns = u * TM_GHOST_UNIT_NS;
        bad += tm_ghost_age_lo_ns(i) > ns || ns >= tm_ghost_age_lo_ns(i + 1);
    }
    CHECKF(bad == 0, "%d ages outside their bucket", bad);
    CHECK_EQ(tm_ghost_age_bucket(0), 0);
    CHECK_EQ(tm_ghost_age_bucket(1), 1);
    CHECK_EQ(tm_ghost_age_bucket(UINT64_MAX), TM_GHOST_AGES - 1);
}

static void a_refault_counts_the_evictions_since_its_own(void)
{
    tm_ghost *g = tm_ghost_new(N, T0);
    for (int64_t b = 0; b < 10; b++)
        tm_ghost_evicted(g, b);
    tm_ghost_refault(g, 3, 1); /* itself and 4..9 left after it: 7 more blocks would have kept it */
    CHECK_EQ(g->st.evictions, 10);
    CHECK_EQ(g->st.refaults, 1);
    CHECK_EQ(g->st.refault_distance[tm_ghost_distance_bucket(7)], 1);
    CHECK_EQ(hist_sum(g->st.refault_distance, TM_GHOST_DISTANCES), 1);
    tm_ghost_free(g);
}

static void a_block_never_evicted_is_no_refault(void)
{
    tm_ghost *g = tm_ghost_new(N, T0);
    tm_ghost_evicted(g, 1);
    tm_ghost_refault(g, 2, 1);
    CHECK_EQ(g->st.refaults, 0);
    tm_ghost_free(g);
}

static void a_refault_takes_its_eviction_stamp(void)
{
    tm_ghost *g = tm_ghost_new(N, T0);
    tm_ghost_evicted(g, 5);
    tm_ghost_refault(g, 5, 0);
    tm_ghost_refault(g, 5, 0); /* a promotion without an eviction between (the engine makes none): not counted */
    CHECK_EQ(g->st.refaults, 1);
    tm_ghost_free(g);
}

static void the_eviction_clock_wraps_past_zero(void)
{
    tm_ghost *g = tm_ghost_new(N, T0);
    g->clock = UINT32_MAX - 1;
    tm_ghost_evicted(g, 0); /* stamped UINT32_MAX - 1 */
    tm_ghost_evicted(g, 1); /* UINT32_MAX, then the clock skips 0 */
    CHECK_EQ(g->clock, 1);
    tm_ghost_evicted(g, 2);
    CHECK_EQ(g->stamp[2], 1);
    tm_ghost_refault(g, 0, 1);
    CHECK_EQ(g->st.refault_distance[tm_ghost_distance_bucket(3)], 1);
    tm_ghost_free(g);
}

/* Block b came into DRAM from below ahead of need and was hit once after a
 * park at t. */
static void arrive_and_use(tm_ghost *g, int64_t b, uint64_t t)
{
    tm_ghost_evicted(g, b);
    tm_ghost_refault(g, b, 0);
    tm_ghost_parked(g, b, 1, t);
    tm_ghost_hint(g, b, t + MS);
}

static void a_reuse_records_the_time_from_park_to_access(void)
{
    tm_ghost *g = tm_ghost_new(N, T0);
    arrive_and_use(g, 9, T0);
    tm_ghost_parked(g, 8, 4, T0 + 10 * MS);
    tm_ghost_hint(g, 9, T0 + 15 * MS);
    uint64_t units = (15 * MS) / TM_GHOST_UNIT_NS - (10 * MS) / TM_GHOST_UNIT_NS;
    int i = tm_ghost_age_bucket(units);
    CHECK_EQ(g->st.reuses, 1);
    CHECK_EQ(g->st.reuse_latency[i], 1);
    CHECK_EQ(g->st.reuse_latency_ns[i], units * TM_GHOST_UNIT_NS);
    CHECK_EQ(hist_sum(g->st.reuse_latency, TM_GHOST_AGES), 1);
    tm_ghost_free(g);
}

static void the_first_hint_on_a_block_read_ahead_of_need_is_a_first_use(void)
{
    tm_ghost *g = tm_ghost_new(N, T0);
    arrive_and_use(g, 3, T0);
    CHECK_EQ(g->st.first_uses, 1);
    CHECK_EQ(g->st.reuses, 0);
    tm_ghost_free(g);
}

static void an_eviction_forgets_that_a_block_was_used(void)
{
    tm_ghost *g = tm_ghost_new(N, T0);
    arrive_and_use(g, 3, T0);
    arrive_and_use(g, 3, T0 + 100 * MS); /* evicted and back: its hit is a first use again */
    CHECK_EQ(g->st.first_uses, 2);
    CHECK_EQ(g->st.reuses, 0);
    tm_ghost_free(g);
}

static void the_hint_after_the_fault_that_brought_a_block_in_is_a_reuse(void)
{
    tm_ghost *g = tm_ghost_new(N, T0);
    tm_ghost_evicted(g, 4);
    tm_ghost_refault(g, 4, 1);
    tm_ghost_parked(g, 4, 1, T0 + 10 * MS);
    tm_ghost_hint(g, 4, T0 + 30 * MS);
    CHECK_EQ(g->st.reuses, 1);
    CHECK_EQ(g->st.first_uses, 0);
    tm_ghost_free(g);
}

static void a_hint_on_a_block_not_seen_parked_is_not_recorded(void)
{
    tm_ghost *g = tm_ghost_new(N, T0);
    arrive_and_use(g, 8, T0);
    tm_ghost_parked(g, 8, 1, T0 + 10 * MS);
    tm_ghost_hint(g, 9, T0 + 12 * MS);
    tm_ghost_hint(g, 8, T0 + 12 * MS);
    tm_ghost_hint(g, 8, T0 + 13 * MS); /* a second hint without a park between */
    CHECK_EQ(g->st.reuses, 1);
    CHECK_EQ(g->st.first_uses, 1);
    tm_ghost_free(g);
}

static void the_census_counts_resident_blocks_still_parked_by_age(void)
{
    tm_ghost *g = tm_ghost_new(N, T0);
    uint8_t tier[N] = {0}, flags[N] = {0};
    for (int b = 0; b < 6; b++) {
        tier[b] = TM_DRAM;
        flags[b] = TM_F_ALLOC | TM_F_SAMPLED;
    }
    tm_ghost_hint(g, 0, T0);                   /* seen used: the census counts it all the same */
    tm_ghost_parked(g, 0, 3, T0 + 100 * MS);   /* parked 1.9 s at the census */
    tm_ghost_parked(g, 3, 3, T0 + 1900 * MS);  /* 0.1 s */
    flags[4] |= TM_F_BUSY;                     /* a victim on its way down */
    flags[5] &= (uint8_t)~TM_F_SAMPLED;        /* used since (a hint unparked it) */
    tier[6] = TM_NVME;                         /* below DRAM: not parked */
    uint64_t parked[TM_GHOST_AGES];
    uint64_t now = T0 + 2000 * MS;
    tm_ghost_census(g, tier, flags, N, now, parked);
    CHECK_EQ(hist_sum(parked, TM_GHOST_AGES), 4);
    CHECK_EQ(parked[tm_ghost_age_bucket((now - T0) / TM_GHOST_UNIT_NS - (100 * MS) / TM_GHOST_UNIT_NS)], 3);
    CHECK_EQ(parked[tm_ghost_age_bucket((now - T0) / TM_GHOST_UNIT_NS - (1900 * MS) / TM_GHOST_UNIT_NS)], 1);
    tm_ghost_free(g);
}

static void an_eviction_replaces_a_park_stamp(void)
{
    tm_ghost *g = tm_ghost_new(N, T0);
    tm_ghost_parked(g, 2, 1, T0 + 500 * MS);
    tm_ghost_evicted(g, 2); /* a parked block taken as a victim */
    tm_ghost_refault(g, 2, 1);
    CHECK_EQ(g->st.refault_distance[tm_ghost_distance_bucket(1)], 1);
    tm_ghost_free(g);
}

static const struct check checks[] = {
    CHECK_ENTRY(distance_buckets_start_at_their_lower_bounds),
    CHECK_ENTRY(every_distance_falls_between_its_bucket_bounds),
    CHECK_ENTRY(age_buckets_are_octaves_of_the_unit),
    CHECK_ENTRY(a_refault_counts_the_evictions_since_its_own),
    CHECK_ENTRY(a_block_never_evicted_is_no_refault),
    CHECK_ENTRY(a_refault_takes_its_eviction_stamp),
    CHECK_ENTRY(the_eviction_clock_wraps_past_zero),
    CHECK_ENTRY(a_reuse_records_the_time_from_park_to_access),
    CHECK_ENTRY(the_first_hint_on_a_block_read_ahead_of_need_is_a_first_use),
    CHECK_ENTRY(an_eviction_forgets_that_a_block_was_used),
    CHECK_ENTRY(the_hint_after_the_fault_that_brought_a_block_in_is_a_reuse),
    CHECK_ENTRY(a_hint_on_a_block_not_seen_parked_is_not_recorded),
    CHECK_ENTRY(the_census_counts_resident_blocks_still_parked_by_age),
    CHECK_ENTRY(an_eviction_replaces_a_park_stamp),
};

int main(int argc, char **argv)
{
    return RUN_CHECKS(checks, argc, argv);
}
