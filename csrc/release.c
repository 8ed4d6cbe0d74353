/* release.c: freeing blocks, and waiting for what is in flight on them
 * (lock held, released while waiting, and while the readahead on them is
 * reaped). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "block.h"

static int in_flight(const struct tm_pool *p, int64_t b, int64_t n)
{
    for (int k = 0; k < p->ra.depth; k++)
        if (p->ra.run[k].state == TM_RA_WAITING)
            return 1;
    if (!p->writeback_blocks && !p->loading_blocks && !p->planned_blocks && !p->cascade_blocks)
        return 0;
    for (int64_t i = b; i < b + n; i++) {
        enum tm_block_state s = tm_block_state(p, i);
        if (s == TM_BS_VICTIM || s == TM_BS_LOADING || s == TM_BS_CASCADING)
            return 1;
    }
    return 0;
}

void tm_wait_settled(struct tm_pool *p, int64_t b, int64_t n)
{
    /* The readahead holding these blocks is dropped first, its reads reaped
     * without the lock, so that the release's drop waits for nothing. */
    while (tm_readahead_reap(p, b, n) || in_flight(p, b, n))
        if (in_flight(p, b, n))
            pthread_cond_wait(&p->io_cond, &p->lock);
}

void tm_release(struct tm_pool *p, int64_t b, int64_t n, int keep_spares)
{
    tm_readahead_drop(p, b, n); /* it may hold these slots' old data */
    tm_advice_forget(p, b, n);
    tm_tier *run_tier = NULL; /* a run of adjacent slots, discarded at once */
    uint64_t run_start = 0, run_len = 0;
    for (int64_t i = b; i <= b + n; i++) {
        uint32_t g = i < b + n ? p->meta.slot[i] : TM_NO_SLOT;
        tm_tier *t = g != TM_NO_SLOT ? tm_slot_tier(p, g) : NULL;
        uint64_t s = t ? g - t->first_slot : 0;
        if (run_len && (t != run_tier || s != run_start + run_len)) {
            tm_tier_discard(run_tier, run_start, run_len);
            run_len = 0;
        }
        if (i == b + n)
            break;
        if (t) {
            if (!run_len) {
                run_tier = t;
                run_start = s;
            }
            run_len++;
            tm_slot_release(p, i);
        }
    }
    if (keep_spares)
        tm_spare_keep(p, b, n);
    for (int64_t i = b; i < b + n;) { /* the others lose their pages, a run at a time */
        int64_t j = i;
        for (; j < b + n && tm_block_state(p, j) != TM_BS_SPARE; j++) {
            if (p->meta.tier[j] == TM_DRAM)
                p->resident--;
            tm_block_release(p, j); /* arena.c clears poison */
        }
        if (j > i)
            tm_os_zap(tm_block_addr(p, i), (size_t)(j - i) << p->bshift);
        i = j + 1;
    }
    tm_os_zap(tm_shadow_of(p, b), (size_t)n << p->bshift); /* blocks parked by sampling */
}

void tm_quiesce(struct tm_pool *p)
{
    for (;;) {
        if (tm_readahead_reap(p, 0, p->nblocks))
            continue;
        if (!tm_readahead_busy(p) && !p->writeback_blocks && !p->loading_blocks && !p->planned_blocks &&
            !p->cascade_blocks)
            break;
        pthread_cond_wait(&p->io_cond, &p->lock);
    }
    tm_readahead_drop(p, 0, p->nblocks);
    for (int64_t b = 0; b < p->scan_end; b++) {
        if (p->meta.tier[b] != TM_DRAM || !(p->meta.flags[b] & TM_F_SAMPLED))
            continue;
        tm_block_unpark(p, b);
        tm_block_unprotected(p, b, 0); /* moved back writable, as after a hint */
        tm_uffd_restore(p, b, 1);
    }
}
