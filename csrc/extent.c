/* extent.c: block-granular first-fit allocator over the arena.
 *
 * Free space is a sorted array of disjoint, non-adjacent extents; freeing
 * coalesces with both neighbours. Allocation is first fit, which keeps large
 * arrays low in the arena and long free runs at the top. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

int tm_extents_init(tm_extents *e, int64_t nblocks)
{
    e->cap = 64;
    e->free = malloc(sizeof(tm_extent) * (size_t)e->cap);
    if (!e->free)
        return -ENOMEM;
    e->free[0] = (tm_extent){0, nblocks};
    e->nfree = 1;
    return 0;
}

void tm_extents_destroy(tm_extents *e)
{
    free(e->free);
    e->free = NULL;
    e->nfree = e->cap = 0;
}

int64_t tm_extents_alloc(tm_extents *e, int64_t len)
{
    for (int64_t i = 0; i < e->nfree; i++) {
        tm_extent *x = &e->free[i];
        if (x->len < len)
            continue;
        int64_t start = x->start;
        x->start += len;
        x->len -= len;
        if (x->len == 0) {
            memmove(x, x + 1, sizeof(tm_extent) * (size_t)(e->nfree - i - 1));
            e->nfree--;
        }
        return start;
    }
    return -1;
}

/* Index of the first free extent that starts after `start`. */
static int64_t upper_bound(const tm_extents *e, int64_t start)
{
    int64_t lo = 0, hi = e->nfree;
    while (lo < hi) {
        int64_t mid = (lo + hi) / 2;
        if (e->free[mid].start <= start)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Make room for one more extent. */
static int grow(tm_extents *e)
{
    if (e->nfree < e->cap)
        return 0;
    tm_extent *n = realloc(e->free, sizeof(tm_extent) * (size_t)e->cap * 2);
    if (!n)
        return -ENOMEM;
    e->free = n;
    e->cap *= 2;
    return 0;
}

int tm_extents_take(tm_extents *e, int64_t start, int64_t len)
{
    int64_t i = upper_bound(e, start) - 1;
    if (i < 0 || e->free[i].start + e->free[i].len < start + len)
        return -EINVAL;
    tm_extent *x = &e->free[i];
    int64_t before = start - x->start, after = x->start + x->len - start - len;
    if (before && after) { /* split in two */
        if (grow(e) < 0)
            return -ENOMEM;
        x = &e->free[i];
        memmove(x + 2, x + 1, sizeof(tm_extent) * (size_t)(e->nfree - i - 1));
        x[1] = (tm_extent){start + len, after};
        x->len = before;
        e->nfree++;
    } else if (before) {
        x->len = before;
    } else if (after) {
        x->start = start + len;
        x->len = after;
    } else {
        memmove(x, x + 1, sizeof(tm_extent) * (size_t)(e->nfree - i - 1));
        e->nfree--;
    }
    return 0;
}

int tm_extents_free(tm_extents *e, int64_t start, int64_t len)
{
    int64_t i = upper_bound(e, start);
    int join_prev = i > 0 && e->free[i - 1].start + e->free[i - 1].len == start;
    int join_next = i < e->nfree && start + len == e->free[i].start;
    if (join_prev && join_next) {
        e->free[i - 1].len += len + e->free[i].len;
        memmove(&e->free[i], &e->free[i + 1], sizeof(tm_extent) * (size_t)(e->nfree - i - 1));
        e->nfree--;
    } else if (join_prev) {
        e->free[i - 1].len += len;
    } else if (join_next) {
        e->free[i].start = start;
        e->free[i].len += len;
    } else {
        if (grow(e) < 0)
            return -ENOMEM;
        memmove(&e->free[i + 1], &e->free[i], sizeof(tm_extent) * (size_t)(e->nfree - i));
        e->free[i] = (tm_extent){start, len};
        e->nfree++;
    }
    return 0;
}
