/* advice.c: the access patterns advised on ranges (sequential, random),
 * kept for the stream detector; the oldest advice goes when the table is
 * full. */
#define _GNU_SOURCE
#include <string.h>

#include "internal.h"

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

void tm_advice_keep(struct tm_pool *p, int64_t b, int64_t e, int advice)
{
    forget_ranges(p, b, e);
    if (p->nranges == TM_RANGES) { /* the oldest advice goes */
        memmove(p->ranges, p->ranges + 1, sizeof p->ranges[0] * (TM_RANGES - 1));
        p->nranges--;
    }
    p->ranges[p->nranges++] = (tm_range){b, e, advice};
}
