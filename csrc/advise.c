/* advise.c: the application's advice on ranges of the arena (tm_advise), the
 * madvise of tiering. Actions (willneed, hot, dontneed) move blocks at once
 * on the calling thread; marks (hot, cold) are block flags the built-in
 * policy honours and policies can read; access patterns (sequential,
 * random) are kept as ranges the stream detector consults. */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>

#include "block.h"

/* Bring the lower-tier blocks of [b, e) into DRAM, a batch at a time, as far
 * as the budget allows without demoting what was brought in. Their reads and
 * copies, and the demotions that make room, run with the lock released (the
 * caller holds ctl_lock: the worker's lists are its own meanwhile). */
static void bring_in(struct tm_pool *p, int64_t b, int64_t e)
{
    tm_worker *w = &p->ctl;
    int64_t room = p->dram_blocks - p->batch_blocks;
    while (b < e && room > 0) {
        int64_t n = 0, max = p->batch_blocks < room ? p->batch_blocks : room;
        for (; b < e && n < max; b++)
            if (tm_block_state(p, b) == TM_BS_LOWER) /* one in flight is already on its way */
                w->list[n++] = b;
        if (!n)
            break;
        int64_t got = tm_promote_ahead(w, w->list, n, "advice");
        if (!got)
            break;
        for (int64_t i = 0; i < got; i++) /* so that CLOCK spares them while the rest comes in */
            p->meta.flags[w->list[i]] |= TM_F_REF;
        room -= got;
    }
}

static void send_out(struct tm_pool *p, int64_t b, int64_t e)
{
    tm_worker *w = &p->ctl;
    /* Blocks the background is writing back would be skipped as busy, and
     * found still in DRAM right after: "now" means after them. */
    tm_wait_settled(p, b, e - b);
    while (b < e) {
        int64_t n = 0;
        for (; b < e && n < p->batch_blocks; b++)
            if ((p->meta.flags[b] & TM_F_ALLOC) && p->meta.tier[b] == TM_DRAM)
                w->list[n++] = b;
        if (n && !tm_demote_blocks(w, w->list, n))
            break; /* nowhere to write: the blocks stay */
    }
}

static void set_flags(struct tm_pool *p, int64_t b, int64_t e, uint8_t set, uint8_t clear)
{
    for (int64_t i = b; i < e; i++)
        if (p->meta.flags[i] & TM_F_ALLOC)
            p->meta.flags[i] = (uint8_t)((p->meta.flags[i] & ~clear) | set);
}

int tm_advise(tm_pool *p, const void *ptr, size_t size, int advice)
{
    if (advice < TM_ADV_WILLNEED || advice > TM_ADV_NORMAL || !tm_contains(p, ptr, size))
        return -EINVAL;
    if (!size)
        return 0;
    if (p->child) {
        tm_lock(p);
        tm_set_error(p, "advise: a forked child's view of its parent's pool takes no advice");
        tm_unlock(p);
        return -EPERM;
    }
    int64_t b = tm_block_of(p, ptr), e = tm_block_of(p, (const uint8_t *)ptr + size - 1) + 1;
    /* Actions move blocks with the control worker, which resize shares: one
     * user at a time, taken before the pool lock (which its I/O releases),
     * and as inside the engine meanwhile (an interposed malloc gives the
     * thread no pool memory while it holds them). */
    int moves = advice == TM_ADV_WILLNEED || advice == TM_ADV_HOT || advice == TM_ADV_DONTNEED;
    if (moves) {
        tm_engine_depth++;
        pthread_mutex_lock(&p->ctl_lock);
    }
    tm_lock(p);
    switch (advice) {
    case TM_ADV_WILLNEED:
        bring_in(p, b, e);
        break;
    case TM_ADV_HOT:
        set_flags(p, b, e, TM_F_HOT, TM_F_COLD);
        bring_in(p, b, e);
        break;
    case TM_ADV_DONTNEED:
        send_out(p, b, e);
        break;
    case TM_ADV_COLD:
        set_flags(p, b, e, TM_F_COLD, TM_F_HOT | TM_F_REF);
        p->clock_hand = b; /* the built-in CLOCK comes to them next */
        break;
    case TM_ADV_SEQUENTIAL:
    case TM_ADV_RANDOM:
        tm_advice_keep(p, b, e, advice);
        break;
    case TM_ADV_NORMAL:
        set_flags(p, b, e, 0, TM_F_HOT | TM_F_COLD);
        tm_advice_forget(p, b, e - b);
        break;
    }
    tm_unlock(p);
    if (moves) {
        pthread_mutex_unlock(&p->ctl_lock);
        tm_engine_depth--;
    }
    return 0;
}
