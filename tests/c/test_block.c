/* test_block.c: block states and their transitions (csrc/block.h).
 *
 * Links os.c (tm_assert's report). A pool here is a zeroed struct tm_pool
 * with metadata arrays for a few blocks; nothing is mapped. Each check walks
 * one path of the state diagram in block.h and reads the state back with
 * tm_block_state; the last ones take a transition from a state it does not
 * start from, in a child process, which must abort naming the assertion. */
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "block.h"
#include "check.h"

#define N 8

static uint8_t tier[N], flags[N], xflags[N], count[N];
static uint16_t last[N];
static uint32_t slot[N];

static struct tm_pool *pool(void)
{
    static struct tm_pool p;
    memset(&p, 0, sizeof p);
    memset(tier, 0, sizeof tier);
    memset(flags, 0, sizeof flags);
    memset(xflags, 0, sizeof xflags);
    for (int i = 0; i < N; i++)
        slot[i] = TM_NO_SLOT;
    p.meta = (tm_meta){.tier = tier, .flags = flags, .access_count = count, .last_access = last, .slot = slot,
                       .nblocks = N};
    p.xflags = xflags;
    return &p;
}

/* Block b allocated, in `t` (at slot 7 if below DRAM). */
static void put(struct tm_pool *p, int64_t b, uint8_t t)
{
    p->meta.flags[b] = TM_F_ALLOC;
    p->meta.tier[b] = t;
    if (tm_tier_is_lower(t))
        p->meta.slot[b] = 7;
}

static void a_zero_fill_takes_an_unbacked_block_to_dirty_resident(void)
{
    struct tm_pool *p = pool();
    put(p, 0, TM_UNBACKED);
    CHECK_EQ(tm_block_state(p, 0), TM_BS_UNBACKED);
    tm_block_start_load(p, 0);
    CHECK_EQ(tm_block_state(p, 0), TM_BS_LOADING);
    CHECK(!tm_block_free_to_move(p, 0));
    tm_block_end_load(p, 0);
    tm_block_resident(p, 0, 1);
    CHECK_EQ(tm_block_state(p, 0), TM_BS_RESIDENT);
    CHECK(p->meta.flags[0] & TM_F_DIRTY);
}

static void a_load_takes_a_lower_block_to_clean_resident(void)
{
    struct tm_pool *p = pool();
    put(p, 1, TM_NVME);
    CHECK_EQ(tm_block_state(p, 1), TM_BS_LOWER);
    tm_block_start_load(p, 1);
    tm_block_end_load(p, 1);
    CHECK_EQ(tm_block_state(p, 1), TM_BS_LOWER); /* back, until mapped */
    tm_block_resident(p, 1, 0);
    CHECK_EQ(tm_block_state(p, 1), TM_BS_RESIDENT);
    CHECK(!(p->meta.flags[1] & TM_F_DIRTY) && p->meta.slot[1] == 7);
}

static void a_kept_readahead_block_loads_and_a_dropped_one_stays_lower(void)
{
    struct tm_pool *p = pool();
    put(p, 0, TM_NVME);
    put(p, 1, TM_PMEM); /* a stream's run reads both lower tiers */
    tm_block_start_readahead(p, 0);
    tm_block_start_readahead(p, 1);
    CHECK_EQ(tm_block_state(p, 0), TM_BS_READAHEAD);
    tm_block_keep_readahead(p, 0);
    CHECK_EQ(tm_block_state(p, 0), TM_BS_LOADING);
    tm_block_end_readahead(p, 1);
    CHECK_EQ(tm_block_state(p, 1), TM_BS_LOWER);
    tm_block_end_load(p, 0);
    tm_block_resident(p, 0, 0);
    CHECK_EQ(tm_block_state(p, 0), TM_BS_RESIDENT);
}

static void a_victim_leaves_for_its_slots_tier_clean(void)
{
    struct tm_pool *p = pool();
    put(p, 2, TM_DRAM);
    p->meta.flags[2] |= TM_F_DIRTY | TM_F_REF;
    p->meta.slot[2] = 9;
    tm_block_take_victim(p, 2);
    CHECK_EQ(tm_block_state(p, 2), TM_BS_VICTIM);
    tm_block_victim_left(p, 2, TM_PMEM);
    CHECK_EQ(tm_block_state(p, 2), TM_BS_LOWER);
    CHECK(p->meta.tier[2] == TM_PMEM && !(p->meta.flags[2] & (TM_F_DIRTY | TM_F_REF)));
}

static void a_victim_whose_write_failed_stays_resident_and_dirty(void)
{
    struct tm_pool *p = pool();
    put(p, 3, TM_DRAM);
    tm_block_park(p, 3);
    CHECK_EQ(tm_block_state(p, 3), TM_BS_PARKED);
    tm_block_take_victim(p, 3);
    tm_block_victim_stays(p, 3);
    CHECK_EQ(tm_block_state(p, 3), TM_BS_RESIDENT);
    CHECK(p->meta.flags[3] & TM_F_DIRTY);
}

static void a_pinned_victim_goes_back_as_it_was(void)
{
    struct tm_pool *p = pool();
    put(p, 4, TM_DRAM);
    tm_block_take_victim(p, 4);
    tm_block_victim_pinned(p, 4);
    CHECK_EQ(tm_block_state(p, 4), TM_BS_RESIDENT);
    CHECK(!(p->meta.flags[4] & TM_F_DIRTY));
}

static void the_cascade_moves_a_pmem_block_to_nvme(void)
{
    struct tm_pool *p = pool();
    put(p, 5, TM_PMEM);
    tm_block_start_cascade(p, 5);
    CHECK_EQ(tm_block_state(p, 5), TM_BS_CASCADING);
    CHECK(!tm_block_free_to_move(p, 5)); /* a load, readahead or another cascade skips it */
    p->meta.slot[5] = 11; /* its NVMe slot, set by the caller */
    tm_block_cascaded(p, 5);
    CHECK_EQ(tm_block_state(p, 5), TM_BS_LOWER);
    CHECK_EQ(p->meta.tier[5], TM_NVME);
    CHECK(tm_block_free_to_move(p, 5) && p->xflags[5] == 0);
}

static void a_cascade_that_fails_leaves_the_block_in_pmem(void)
{
    struct tm_pool *p = pool();
    put(p, 5, TM_PMEM);
    tm_block_start_cascade(p, 5);
    tm_block_end_cascade(p, 5);
    CHECK_EQ(tm_block_state(p, 5), TM_BS_LOWER);
    CHECK(p->meta.tier[5] == TM_PMEM && p->meta.slot[5] == 7);
    CHECK(tm_block_free_to_move(p, 5) && p->xflags[5] == 0);
}

static void a_block_read_ahead_is_not_taken_for_a_cascade(void)
{
    struct tm_pool *p = pool();
    put(p, 5, TM_PMEM);
    tm_block_start_readahead(p, 5);
    CHECK_EQ(tm_block_state(p, 5), TM_BS_READAHEAD); /* busy but not cascading */
    tm_block_end_readahead(p, 5);
    CHECK_EQ(tm_block_state(p, 5), TM_BS_LOWER);
}

static void a_release_frees_a_block_and_keeps_its_poison(void)
{
    struct tm_pool *p = pool();
    put(p, 6, TM_DRAM);
    p->meta.flags[6] |= TM_F_POISON | TM_F_HOT;
    tm_block_release(p, 6);
    CHECK_EQ(tm_block_state(p, 6), TM_BS_FREE);
    CHECK_EQ(p->meta.flags[6], TM_F_POISON);
    CHECK_EQ(p->meta.tier[6], TM_UNBACKED);
}

/* Whether fn(p) aborts in a child, as a failed tm_assert does. */
static bool aborts(void (*fn)(struct tm_pool *))
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        close(2); /* the report is expected: keep the test's output clean */
        fn(pool());
        _exit(0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT;
}

static void load_a_resident_block(struct tm_pool *p)
{
    put(p, 0, TM_DRAM);
    tm_block_start_load(p, 0);
}

static void take_a_loading_block_as_victim(struct tm_pool *p)
{
    put(p, 0, TM_NVME);
    tm_block_start_load(p, 0);
    p->meta.tier[0] = TM_DRAM; /* as if mapped while still flagged in flight */
    tm_block_take_victim(p, 0);
}

static void read_ahead_a_resident_block(struct tm_pool *p)
{
    put(p, 0, TM_DRAM);
    tm_block_start_readahead(p, 0);
}

static void release_a_victim(struct tm_pool *p)
{
    put(p, 0, TM_DRAM);
    tm_block_take_victim(p, 0);
    tm_block_release(p, 0);
}

static void cascade_an_nvme_block(struct tm_pool *p)
{
    put(p, 0, TM_NVME);
    tm_block_start_cascade(p, 0);
}

static void cascade_a_loading_block(struct tm_pool *p)
{
    put(p, 0, TM_PMEM);
    tm_block_start_load(p, 0);
    tm_block_start_cascade(p, 0);
}

static void load_a_cascading_block(struct tm_pool *p)
{
    put(p, 0, TM_PMEM);
    tm_block_start_cascade(p, 0);
    tm_block_start_load(p, 0);
}

static void finish_a_cascade_never_started(struct tm_pool *p)
{
    put(p, 0, TM_PMEM);
    tm_block_cascaded(p, 0);
}

static void release_a_cascading_block(struct tm_pool *p)
{
    put(p, 0, TM_PMEM);
    tm_block_start_cascade(p, 0);
    tm_block_release(p, 0);
}

static void a_freed_resident_block_becomes_spare_and_is_reused_dirty(void)
{
    struct tm_pool *p = pool();
    put(p, 0, TM_DRAM);
    tm_block_spare(p, 0);
    CHECK_EQ(tm_block_state(p, 0), TM_BS_SPARE);
    /* Everyone but spare.c sees a free block: not allocated, no tier. */
    CHECK(!(p->meta.flags[0] & TM_F_ALLOC) && p->meta.tier[0] == TM_UNBACKED);
    CHECK(!tm_block_free_to_move(p, 0));
    p->meta.flags[0] = TM_F_ALLOC; /* allocated again over it */
    tm_block_reuse(p, 0);
    CHECK_EQ(tm_block_state(p, 0), TM_BS_RESIDENT);
    CHECK(p->meta.flags[0] & TM_F_DIRTY); /* no slot holds what its pages hold */
}

static void a_spare_given_back_is_free(void)
{
    struct tm_pool *p = pool();
    put(p, 0, TM_DRAM);
    tm_block_spare(p, 0);
    tm_block_spare_drop(p, 0);
    CHECK_EQ(tm_block_state(p, 0), TM_BS_FREE);
}

static void a_reused_spare_zeroed_and_taken_as_victim_drops_to_unbacked(void)
{
    struct tm_pool *p = pool();
    put(p, 0, TM_DRAM);
    tm_block_spare(p, 0);
    p->meta.flags[0] = TM_F_ALLOC;
    tm_block_reuse(p, 0);
    tm_block_zeroed(p, 0);
    CHECK_EQ(tm_block_state(p, 0), TM_BS_RESIDENT);
    CHECK(!(p->meta.flags[0] & TM_F_DIRTY) && (p->xflags[0] & TM_X_ZERO));
    tm_block_take_victim(p, 0);
    tm_block_victim_zeroed(p, 0);
    CHECK_EQ(tm_block_state(p, 0), TM_BS_UNBACKED); /* zero-filled again when touched */
}

static void a_block_mapped_writable_is_dirty_if_written_else_verified(void)
{
    struct tm_pool *p = pool();
    put(p, 0, TM_NVME);
    tm_block_start_load(p, 0);
    tm_block_end_load(p, 0);
    tm_block_resident(p, 0, 0); /* clean: its slot holds it */
    tm_block_unprotected(p, 0, 0);
    CHECK(!(p->meta.flags[0] & TM_F_DIRTY) && (p->xflags[0] & TM_X_VERIFY));
    tm_block_unprotected(p, 0, 1);
    CHECK((p->meta.flags[0] & TM_F_DIRTY) && !(p->xflags[0] & TM_X_VERIFY));
    put(p, 1, TM_DRAM); /* a zeroed block: its content decides, not a slot */
    tm_block_zeroed(p, 1);
    tm_block_unprotected(p, 1, 0);
    CHECK(p->xflags[1] == TM_X_ZERO && !(p->meta.flags[1] & TM_F_DIRTY));
}

static void drop_a_dirty_victim_as_zero(struct tm_pool *p)
{
    put(p, 0, TM_DRAM);
    p->meta.flags[0] |= TM_F_DIRTY;
    tm_block_take_victim(p, 0);
    tm_block_victim_zeroed(p, 0);
}

static void keep_a_parked_block_as_spare(struct tm_pool *p)
{
    put(p, 0, TM_DRAM);
    tm_block_park(p, 0); /* its pages are in the shadow, not mapped */
    tm_block_spare(p, 0);
}

static void keep_a_victim_as_spare(struct tm_pool *p)
{
    put(p, 0, TM_DRAM);
    tm_block_take_victim(p, 0);
    tm_block_spare(p, 0);
}

static void keep_a_lower_block_as_spare(struct tm_pool *p)
{
    put(p, 0, TM_NVME);
    tm_block_spare(p, 0);
}

static void reuse_a_free_block(struct tm_pool *p)
{
    p->meta.flags[0] = TM_F_ALLOC;
    tm_block_reuse(p, 0);
}

static void a_transition_from_the_wrong_state_aborts(void)
{
    CHECKF(aborts(load_a_resident_block), "loading a resident block");
    CHECKF(aborts(take_a_loading_block_as_victim), "taking a block in flight as a victim");
    CHECKF(aborts(read_ahead_a_resident_block), "reading ahead a block in DRAM");
    CHECKF(aborts(release_a_victim), "releasing a block being demoted");
    CHECKF(aborts(cascade_an_nvme_block), "cascading a block already in NVMe");
    CHECKF(aborts(cascade_a_loading_block), "cascading a block being loaded");
    CHECKF(aborts(load_a_cascading_block), "loading a block being cascaded");
    CHECKF(aborts(finish_a_cascade_never_started), "finishing a cascade that was not started");
    CHECKF(aborts(release_a_cascading_block), "releasing a block being cascaded");
    CHECKF(aborts(keep_a_parked_block_as_spare), "keeping a parked block's (unmapped) pages as a spare");
    CHECKF(aborts(keep_a_victim_as_spare), "keeping a block being demoted as a spare");
    CHECKF(aborts(keep_a_lower_block_as_spare), "keeping a block with no pages as a spare");
    CHECKF(aborts(reuse_a_free_block), "reusing a block that is not spare");
    CHECKF(aborts(drop_a_dirty_victim_as_zero), "dropping a dirty block as if it were zero");
}

static const struct check checks[] = {
    CHECK_ENTRY(a_zero_fill_takes_an_unbacked_block_to_dirty_resident),
    CHECK_ENTRY(a_load_takes_a_lower_block_to_clean_resident),
    CHECK_ENTRY(a_kept_readahead_block_loads_and_a_dropped_one_stays_lower),
    CHECK_ENTRY(a_victim_leaves_for_its_slots_tier_clean),
    CHECK_ENTRY(a_victim_whose_write_failed_stays_resident_and_dirty),
    CHECK_ENTRY(a_pinned_victim_goes_back_as_it_was),
    CHECK_ENTRY(the_cascade_moves_a_pmem_block_to_nvme),
    CHECK_ENTRY(a_cascade_that_fails_leaves_the_block_in_pmem),
    CHECK_ENTRY(a_block_read_ahead_is_not_taken_for_a_cascade),
    CHECK_ENTRY(a_release_frees_a_block_and_keeps_its_poison),
    CHECK_ENTRY(a_freed_resident_block_becomes_spare_and_is_reused_dirty),
    CHECK_ENTRY(a_spare_given_back_is_free),
    CHECK_ENTRY(a_reused_spare_zeroed_and_taken_as_victim_drops_to_unbacked),
    CHECK_ENTRY(a_block_mapped_writable_is_dirty_if_written_else_verified),
    CHECK_ENTRY(a_transition_from_the_wrong_state_aborts),
};

int main(int argc, char **argv)
{
    return RUN_CHECKS(checks, argc, argv);
}
