/* test_extent.c: the block-granular extent allocator (csrc/extent.c).
 *
 * Links extent.c alone. The free list is read directly (tm_extents.free,
 * .nfree, as declared in internal.h): it must stay sorted by start, with no
 * two extents adjacent (freeing coalesces), and allocation is first fit. */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>

#include "check.h"
#include "internal.h"

/* The free list is exactly these (start, len) pairs, in order. */
static bool free_list_is(const tm_extents *e, const int64_t (*want)[2], int64_t n)
{
    if (e->nfree != n)
        return false;
    for (int64_t i = 0; i < n; i++)
        if (e->free[i].start != want[i][0] || e->free[i].len != want[i][1])
            return false;
    return true;
}

static void print_free_list(const tm_extents *e)
{
    printf("      free list (%lld):", (long long)e->nfree);
    for (int64_t i = 0; i < e->nfree && i < 16; i++)
        printf(" [%lld,+%lld)", (long long)e->free[i].start, (long long)e->free[i].len);
    printf("%s\n", e->nfree > 16 ? " ..." : "");
}

#define CHECK_FREE_LIST(e, ...)                                                 \
    do {                                                                        \
        static const int64_t want_[][2] = {__VA_ARGS__};                        \
        int64_t n_ = (int64_t)(sizeof want_ / sizeof want_[0]);                 \
        CHECKF(free_list_is(e, want_, n_), "want the free list " #__VA_ARGS__); \
        if (!free_list_is(e, want_, n_))                                        \
            print_free_list(e);                                                 \
    } while (0)

static void init_gives_one_free_extent_covering_all_blocks(void)
{
    tm_extents e;
    CHECK_EQ(tm_extents_init(&e, 1000), 0);
    CHECK_FREE_LIST(&e, {0, 1000});
    tm_extents_destroy(&e);
    CHECK(e.free == NULL);
    CHECK_EQ(e.nfree, 0);
}

static void sequential_allocations_are_contiguous_from_block_zero(void)
{
    tm_extents e;
    tm_extents_init(&e, 100);
    CHECK_EQ(tm_extents_alloc(&e, 3), 0);
    CHECK_EQ(tm_extents_alloc(&e, 5), 3);
    CHECK_EQ(tm_extents_alloc(&e, 1), 8);
    CHECK_FREE_LIST(&e, {9, 91});
    tm_extents_destroy(&e);
}

static void alloc_is_first_fit_not_best_fit(void)
{
    tm_extents e;
    tm_extents_init(&e, 100);
    /* holes: [0,10) and [20,24), in use: [10,20) and [24,30) */
    CHECK_EQ(tm_extents_alloc(&e, 10), 0);
    CHECK_EQ(tm_extents_alloc(&e, 10), 10);
    CHECK_EQ(tm_extents_alloc(&e, 4), 20);
    CHECK_EQ(tm_extents_alloc(&e, 6), 24);
    CHECK_EQ(tm_extents_free(&e, 0, 10), 0);
    CHECK_EQ(tm_extents_free(&e, 20, 4), 0);
    CHECK_FREE_LIST(&e, {0, 10}, {20, 4}, {30, 70});
    /* 4 blocks fit exactly at 20, but the first run long enough is at 0 */
    CHECK_EQ(tm_extents_alloc(&e, 4), 0);
    CHECK_FREE_LIST(&e, {4, 6}, {20, 4}, {30, 70});
    /* 7 blocks fit in neither hole: they go to the top */
    CHECK_EQ(tm_extents_alloc(&e, 7), 30);
    CHECK_FREE_LIST(&e, {4, 6}, {20, 4}, {37, 63});
    tm_extents_destroy(&e);
}

static void alloc_of_a_whole_extent_removes_it_from_the_free_list(void)
{
    tm_extents e;
    tm_extents_init(&e, 30);
    tm_extents_alloc(&e, 30);
    CHECK_EQ(e.nfree, 0);
    tm_extents_free(&e, 0, 10);
    tm_extents_free(&e, 20, 10);
    CHECK_FREE_LIST(&e, {0, 10}, {20, 10});
    CHECK_EQ(tm_extents_alloc(&e, 10), 0);
    CHECK_FREE_LIST(&e, {20, 10});
    CHECK_EQ(tm_extents_alloc(&e, 10), 20);
    CHECK_EQ(e.nfree, 0);
    tm_extents_destroy(&e);
}

static void alloc_fails_with_minus_one_when_no_run_is_long_enough(void)
{
    tm_extents e;
    tm_extents_init(&e, 16);
    CHECK_EQ(tm_extents_alloc(&e, 17), -1);
    CHECK_FREE_LIST(&e, {0, 16}); /* a failed allocation changes nothing */
    for (int i = 0; i < 16; i++)
        tm_extents_alloc(&e, 1);
    /* free every other block: 8 blocks free, but no two together */
    for (int i = 0; i < 16; i += 2)
        tm_extents_free(&e, i, 1);
    CHECK_EQ(e.nfree, 8);
    CHECK_EQ(tm_extents_alloc(&e, 2), -1);
    CHECK_EQ(e.nfree, 8);
    CHECK_EQ(tm_extents_alloc(&e, 1), 0);
    tm_extents_destroy(&e);

    tm_extents_init(&e, 4);
    tm_extents_alloc(&e, 4);
    CHECK_EQ(tm_extents_alloc(&e, 1), -1); /* full */
    tm_extents_destroy(&e);
}

static void freeing_adjacent_extents_coalesces_them(void)
{
    tm_extents e;
    tm_extents_init(&e, 50);
    for (int i = 0; i < 5; i++)
        CHECK_EQ(tm_extents_alloc(&e, 10), 10 * i);
    CHECK_EQ(e.nfree, 0);
    tm_extents_free(&e, 10, 10);
    tm_extents_free(&e, 30, 10);
    CHECK_FREE_LIST(&e, {10, 10}, {30, 10});
    /* [20,30) touches both neighbours: the three become one */
    tm_extents_free(&e, 20, 10);
    CHECK_FREE_LIST(&e, {10, 30});
    /* [0,10) touches only the next one */
    tm_extents_free(&e, 0, 10);
    CHECK_FREE_LIST(&e, {0, 40});
    /* [40,50) touches only the previous one */
    tm_extents_free(&e, 40, 10);
    CHECK_FREE_LIST(&e, {0, 50});
    tm_extents_destroy(&e);
}

static void freeing_a_detached_extent_inserts_it_in_order(void)
{
    tm_extents e;
    tm_extents_init(&e, 100);
    tm_extents_alloc(&e, 100);
    tm_extents_free(&e, 50, 5);
    tm_extents_free(&e, 10, 5); /* before the first */
    tm_extents_free(&e, 90, 5); /* after the last */
    tm_extents_free(&e, 30, 5); /* in between */
    CHECK_FREE_LIST(&e, {10, 5}, {30, 5}, {50, 5}, {90, 5});
    tm_extents_free(&e, 0, 1);  /* at block 0 */
    tm_extents_free(&e, 99, 1); /* at the last block */
    CHECK_FREE_LIST(&e, {0, 1}, {10, 5}, {30, 5}, {50, 5}, {90, 5}, {99, 1});
    tm_extents_destroy(&e);
}

static void freeing_part_of_an_allocation_is_allowed(void)
{
    /* The precondition is only that the range is allocated: a tail or a
     * middle of one allocation may be freed on its own. */
    tm_extents e;
    tm_extents_init(&e, 20);
    CHECK_EQ(tm_extents_alloc(&e, 10), 0);
    tm_extents_free(&e, 4, 2);
    CHECK_FREE_LIST(&e, {4, 2}, {10, 10});
    tm_extents_free(&e, 6, 4);
    CHECK_FREE_LIST(&e, {4, 16});
    tm_extents_destroy(&e);
}

static void free_list_grows_past_its_initial_capacity(void)
{
    enum { N = 1000 };
    tm_extents e;
    tm_extents_init(&e, N);
    int64_t cap0 = e.cap;
    tm_extents_alloc(&e, N);
    for (int64_t i = 0; i < N; i += 2)
        CHECK_EQ(tm_extents_free(&e, i, 1), 0);
    CHECK_EQ(e.nfree, N / 2);
    CHECK(e.cap >= N / 2 && e.cap > cap0);
    bool ok = true;
    for (int64_t i = 0; i < e.nfree; i++)
        ok &= e.free[i].start == 2 * i && e.free[i].len == 1;
    CHECKF(ok, "want [2i,+1) for every i");
    /* filling the gaps coalesces everything back into one extent */
    for (int64_t i = 1; i < N; i += 2)
        tm_extents_free(&e, i, 1);
    CHECK_FREE_LIST(&e, {0, N});
    tm_extents_destroy(&e);
}

/* ---- randomized: against a bitmap model ------------------------------- */

enum { MODEL_BLOCKS = 777, MODEL_OPS = 6000, MAX_RUNS = MODEL_BLOCKS };

static bool used[MODEL_BLOCKS];
static struct run { int64_t start, len; } runs[MAX_RUNS]; /* allocated */
static int nruns;

/* First fit in the model: the start of the lowest maximal free run of at
 * least len blocks, or -1. */
static int64_t model_first_fit(int64_t len)
{
    for (int64_t s = 0; s < MODEL_BLOCKS;) {
        if (used[s]) {
            s++;
            continue;
        }
        int64_t e = s;
        while (e < MODEL_BLOCKS && !used[e])
            e++;
        if (e - s >= len)
            return s;
        s = e;
    }
    return -1;
}

/* The invariants, and that the free list is exactly the model's maximal
 * free runs. Prints the first violation and returns false. */
static bool extents_match_model(const tm_extents *e, int op)
{
    int64_t free_blocks = 0, alloc_blocks = 0;
    for (int64_t i = 0; i < e->nfree; i++) {
        const tm_extent *x = &e->free[i];
        if (x->len <= 0 || x->start < 0 || x->start + x->len > MODEL_BLOCKS) {
            printf("      op %d: free extent %lld [%lld,+%lld) is empty or out of range\n", op, (long long)i,
                   (long long)x->start, (long long)x->len);
            return false;
        }
        if (i > 0) {
            const tm_extent *p = &e->free[i - 1];
            if (p->start + p->len > x->start) {
                printf("      op %d: free list unsorted or overlapping at %lld: [%lld,+%lld) then [%lld,+%lld)\n", op,
                       (long long)i, (long long)p->start, (long long)p->len, (long long)x->start, (long long)x->len);
                return false;
            }
            if (p->start + p->len == x->start) {
                printf("      op %d: free extents %lld and %lld are adjacent (not coalesced) at block %lld\n", op,
                       (long long)i - 1, (long long)i, (long long)x->start);
                return false;
            }
        }
        for (int64_t b = x->start; b < x->start + x->len; b++)
            if (used[b]) {
                printf("      op %d: block %lld is both free and allocated\n", op, (long long)b);
                return false;
            }
        free_blocks += x->len;
    }
    for (int i = 0; i < nruns; i++)
        alloc_blocks += runs[i].len;
    if (free_blocks + alloc_blocks != MODEL_BLOCKS) {
        printf("      op %d: %lld free + %lld allocated != %d blocks\n", op, (long long)free_blocks,
               (long long)alloc_blocks, MODEL_BLOCKS);
        return false;
    }
    /* No overlap and the total right, so every block not in a free extent
     * is allocated; each extent also has to be a maximal free run. */
    for (int64_t i = 0; i < e->nfree; i++) {
        const tm_extent *x = &e->free[i];
        bool maximal = (x->start == 0 || used[x->start - 1]) &&
                       (x->start + x->len == MODEL_BLOCKS || used[x->start + x->len]);
        if (!maximal) {
            printf("      op %d: free extent [%lld,+%lld) is not a whole free run\n", op, (long long)x->start,
                   (long long)x->len);
            return false;
        }
    }
    return true;
}

static void random_allocs_and_frees_match_a_bitmap_model(void)
{
    tm_extents e;
    CHECK_EQ(tm_extents_init(&e, MODEL_BLOCKS), 0);
    memset(used, 0, sizeof used);
    nruns = 0;
    check_rng_state = 20240601;
    int allocs = 0, failed_allocs = 0, frees = 0, max_nfree = 0;
    for (int op = 0; op < MODEL_OPS; op++) {
        /* lean toward allocation while there is room, toward freeing when full */
        bool do_alloc = nruns == 0 || (nruns < MAX_RUNS && check_below(100) < 55);
        if (do_alloc) {
            int64_t len = check_below(10) == 0 ? 1 + (int64_t)check_below(200) : 1 + (int64_t)check_below(12);
            int64_t want = model_first_fit(len);
            int64_t got = tm_extents_alloc(&e, len);
            if (got != want) {
                CHECKF(got == want, "op %d: alloc(%lld) returned %lld, first fit is %lld", op, (long long)len,
                       (long long)got, (long long)want);
                break;
            }
            if (got < 0) {
                failed_allocs++;
            } else {
                for (int64_t b = got; b < got + len; b++)
                    used[b] = true;
                runs[nruns++] = (struct run){got, len};
                allocs++;
            }
        } else {
            /* free a random part of a random allocated run: all of it, a
             * head, a tail or a middle (which splits it in two) */
            int r = (int)check_below((uint64_t)nruns);
            struct run x = runs[r];
            int64_t off = check_below(3) == 0 ? 0 : (int64_t)check_below((uint64_t)x.len);
            int64_t len = check_below(3) == 0 ? x.len - off : 1 + (int64_t)check_below((uint64_t)(x.len - off));
            int rc = tm_extents_free(&e, x.start + off, len);
            if (rc != 0) {
                CHECKF(rc == 0, "op %d: free(%lld, %lld) returned %d", op, (long long)(x.start + off),
                       (long long)len, rc);
                break;
            }
            for (int64_t b = x.start + off; b < x.start + off + len; b++)
                used[b] = false;
            runs[r] = runs[--nruns];
            if (off > 0)
                runs[nruns++] = (struct run){x.start, off};
            if (off + len < x.len)
                runs[nruns++] = (struct run){x.start + off + len, x.len - off - len};
            frees++;
        }
        if (e.nfree > max_nfree)
            max_nfree = (int)e.nfree;
        if (!extents_match_model(&e, op)) {
            CHECKF(false, "op %d: the free list broke an invariant (above)", op);
            print_free_list(&e);
            break;
        }
    }
    /* the run must have exercised the interesting cases */
    printf("      %d allocations, %d failed (no run long enough), %d frees, up to %d free extents\n", allocs,
           failed_allocs, frees, max_nfree);
    CHECK(allocs > 1000 && failed_allocs > 10 && frees > 1000 && max_nfree > 64);
    tm_extents_destroy(&e);
}

static void take_allocates_the_range_named_splitting_its_extent(void)
{
    tm_extents e;
    tm_extents_init(&e, 100);
    CHECK_EQ(tm_extents_take(&e, 40, 10), 0); /* the middle: two pieces */
    CHECK_FREE_LIST(&e, {0, 40}, {50, 50});
    CHECK_EQ(tm_extents_take(&e, 0, 5), 0); /* an extent's start */
    CHECK_FREE_LIST(&e, {5, 35}, {50, 50});
    CHECK_EQ(tm_extents_take(&e, 30, 10), 0); /* its end */
    CHECK_FREE_LIST(&e, {5, 25}, {50, 50});
    CHECK_EQ(tm_extents_take(&e, 5, 25), 0); /* all of it */
    CHECK_FREE_LIST(&e, {50, 50});
    CHECK_EQ(tm_extents_free(&e, 0, 50), 0);
    CHECK_FREE_LIST(&e, {0, 100});
    tm_extents_destroy(&e);
}

static void take_refuses_a_range_that_is_not_all_free(void)
{
    tm_extents e;
    tm_extents_init(&e, 100);
    CHECK_EQ(tm_extents_alloc(&e, 10), 0);
    CHECK_EQ(tm_extents_take(&e, 5, 10), -EINVAL);  /* starts in use */
    CHECK_EQ(tm_extents_take(&e, 95, 10), -EINVAL); /* runs past the end */
    CHECK_EQ(tm_extents_take(&e, 20, 10), 0);
    CHECK_EQ(tm_extents_take(&e, 15, 10), -EINVAL); /* ends in use */
    CHECK_FREE_LIST(&e, {10, 10}, {30, 70});
    tm_extents_destroy(&e);
}

static const struct check checks[] = {
    CHECK_ENTRY(init_gives_one_free_extent_covering_all_blocks),
    CHECK_ENTRY(sequential_allocations_are_contiguous_from_block_zero),
    CHECK_ENTRY(alloc_is_first_fit_not_best_fit),
    CHECK_ENTRY(take_allocates_the_range_named_splitting_its_extent),
    CHECK_ENTRY(take_refuses_a_range_that_is_not_all_free),
    CHECK_ENTRY(alloc_of_a_whole_extent_removes_it_from_the_free_list),
    CHECK_ENTRY(alloc_fails_with_minus_one_when_no_run_is_long_enough),
    CHECK_ENTRY(freeing_adjacent_extents_coalesces_them),
    CHECK_ENTRY(freeing_a_detached_extent_inserts_it_in_order),
    CHECK_ENTRY(freeing_part_of_an_allocation_is_allowed),
    CHECK_ENTRY(free_list_grows_past_its_initial_capacity),
    CHECK_ENTRY(random_allocs_and_frees_match_a_bitmap_model),
};

int main(int argc, char **argv)
{
    return RUN_CHECKS(checks, argc, argv);
}
