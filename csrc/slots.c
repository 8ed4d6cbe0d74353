/* slots.c: the lower-tier slot a block holds, the checksum sealed with
 * what is written there, and the I/O requests over slots.
 *
 * A block keeps the lower-tier slot it was last written to while it
 * is in DRAM, so a block that was not written since (no TM_F_DIRTY; writes
 * are seen as write-protect faults) is dropped on demotion without I/O. When
 * a tier has no free slot, one is taken back from such a DRAM block, which
 * then counts as dirty. The capacity check at allocation (arena.c) keeps a
 * batch of headroom, so a victim always finds a slot. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "block.h"

void tm_slot_release(struct tm_pool *p, int64_t b)
{
    uint32_t g = p->meta.slot[b];
    if (g == TM_NO_SLOT)
        return;
    tm_tier *t = tm_slot_tier(p, g);
    tm_tier_slot_free(t, g - t->first_slot);
    p->meta.slot[b] = TM_NO_SLOT;
}

/* Take the slot of a DRAM block that holds one in tier t (it becomes dirty).
 * Returns the local slot, or UINT64_MAX if none. */
uint64_t tm_slot_steal(struct tm_pool *p, tm_tier *t)
{
    for (int64_t i = 0; i < p->scan_end; i++) {
        int64_t b = tm_scan_next(p, &p->steal_hand);
        uint32_t g = p->meta.slot[b];
        if (p->meta.tier[b] != TM_DRAM || g == TM_NO_SLOT || (p->meta.flags[b] & TM_F_BUSY))
            continue;
        if (tm_slot_tier(p, g) != t || tm_tier_kept(t, g - t->first_slot))
            continue; /* a kept slot is never rewritten */
        p->meta.slot[b] = TM_NO_SLOT;
        p->meta.flags[b] |= TM_F_DIRTY;
        return g - t->first_slot;
    }
    return UINT64_MAX;
}

/* A slot in tier t for block b: free one, else one taken from a DRAM block. */
int tm_slot_take(struct tm_pool *p, tm_tier *t, int64_t b)
{
    if (!t->nslots)
        return -ENOSPC;
    uint64_t s = tm_tier_slot_alloc(t, UINT64_MAX);
    if (s == UINT64_MAX) {
        s = tm_slot_steal(p, t);
        if (s == UINT64_MAX)
            return -ENOSPC;
    }
    p->meta.slot[b] = t->first_slot + (uint32_t)s;
    return 0;
}

void tm_slot_seal(struct tm_pool *p, int64_t b, const uint8_t *data)
{
    uint32_t g = p->meta.slot[b];
    tm_tier *t = tm_slot_tier(p, g);
    t->csum[g - t->first_slot] = tm_block_checksum(data, p->bs);
}

int tm_slot_intact(struct tm_pool *p, int64_t b, const uint8_t *data)
{
    uint32_t g = p->meta.slot[b];
    tm_tier *t = tm_slot_tier(p, g);
    return t->csum[g - t->first_slot] == tm_block_checksum(data, p->bs);
}

/* Requests for blocks list[0..n), merging runs of adjacent slots. Block
 * list[i]'s data is at buf + i blocks (an I/O buffer in huge pages: a run is
 * one request, up to a batch), or, when `in_shadow`, at its own place in the
 * shadow (small pages: requests of io_max_blocks, which the disk takes
 * whole). Only blocks whose slot is in tier t and, if skip is given, whose
 * skip[i] is 0. */
int tm_slot_ios(struct tm_pool *p, tm_tier *t, const int64_t *list, int64_t n, uint8_t *buf, int in_shadow,
                     tm_io *ios, const uint8_t *skip)
{
    int64_t max = in_shadow ? p->io_max_blocks : p->batch_max;
    int k = 0;
    for (int64_t i = 0; i < n; i++) {
        uint32_t g = p->meta.slot[list[i]];
        if (g == TM_NO_SLOT || tm_slot_tier(p, g) != t || (skip && skip[i]))
            continue;
        uint64_t s = g - t->first_slot;
        uint8_t *at = in_shadow ? p->shadow + ((size_t)list[i] << p->bshift) : buf + ((size_t)i << p->bshift);
        if (k > 0 && ios[k - 1].slot + ios[k - 1].nblocks == s && ios[k - 1].nblocks < max &&
            (uint8_t *)ios[k - 1].buf + ((size_t)ios[k - 1].nblocks << p->bshift) == at) {
            ios[k - 1].nblocks++;
        } else {
            ios[k++] = (tm_io){s, at, 1};
        }
    }
    return k;
}
