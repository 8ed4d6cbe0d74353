/* advise.c: the application's advice on ranges of the arena (tm_advise), the
 * madvise of tiering. Actions (willneed, hot, dontneed) move blocks at once
 * on the calling thread; marks (hot, cold) are block flags the built-in
 * policy honours and policies can read; access patterns (sequential,
 * random) are kept as ranges the stream detector consults. */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>

#include "block.h"

int tm_range_advice(const struct tm_pool *p, int64_t b)
{
    for (int i = 0; i < p->nranges; i++)
        if (b >= p->ranges[i].start && b < p->ranges[i].end)
            return p->ranges[i].advice;
    return TM_ADV_NORMAL;
}

/* Drop the kept advice overlapping [b, e). */
static void forget_ranges(struct tm_pool *p, int64_t b, int64_t e)
{
    int k = 0;
    for (int i = 0; i < p->nranges; i++)
        if (p->ranges[i].end <= b || p->ranges[i].start >= e)
            p->ranges[k++] = p->ranges[i];
    p->nranges = k;
}

void tm_advice_forget(struct tm_pool *p, int64_t b, int64_t n)
{
    forget_ranges(p, b, b + n);
}

static void keep_range(struct tm_pool *p, int64_t b, int64_t e, int advice)
{
    forget_ranges(p, b, e);
    if (p->nranges == TM_RANGES) { /* the oldest advice goes */
        memmove(p->ranges, p->ranges + 1, sizeof p->ranges[0] * (TM_RANGES - 1));
        p->nranges--;
    }
    p->ranges[p->nranges++] = (tm_range){b, e, advice};
}

/* Bring the lower-tier blocks of [b, e) into DRAM, a batch at a time, as far
 * as the budget allows without demoting what was brought in. */
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
        int64_t got = tm_migrate_promote_ahead(w, w->list, n, "advice");
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
    tm_migrate_wait_settled(p, b, e - b);
    while (b < e) {
        int64_t n = 0;
        for (; b < e && n < p->batch_blocks; b++)
            if ((p->meta.flags[b] & TM_F_ALLOC) && p->meta.tier[b] == TM_DRAM)
                w->list[n++] = b;
        if (n && !tm_migrate_demote_blocks(w, w->list, n))
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
        keep_range(p, b, e, advice);
        break;
    case TM_ADV_NORMAL:
        set_flags(p, b, e, 0, TM_F_HOT | TM_F_COLD);
        forget_ranges(p, b, e);
        break;
    }
    tm_unlock(p);
    return 0;
}
