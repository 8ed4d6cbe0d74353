/* stats.c: the pool's statistics as tm_get_stats reports them and the
 * background publishes them: its counters, each tier's use, and the figures
 * derived from its state. */
#include "internal.h"

static void tier_stats(const tm_tier *t, tm_tier_stats *s)
{
    s->capacity = t->nslots * t->bs;
    s->used = t->used * t->bs;
    s->peak = t->peak * t->bs;
}

void tm_stats_snapshot(struct tm_pool *p, tm_stats *out)
{
    *out = p->st;
    out->dram.capacity = (uint64_t)p->dram_blocks << p->bshift;
    out->dram.used = (uint64_t)p->resident << p->bshift;
    out->spare = (uint64_t)p->spare << p->bshift;
    out->zero_ready = (uint64_t)p->hz.held << p->bshift;
    tier_stats(&p->pmem, &out->pmem);
    tier_stats(&p->nvme, &out->nvme);
    out->allocated = (uint64_t)p->reserved << p->bshift;
    out->capacity = (uint64_t)p->cap_blocks << p->bshift;
    out->headroom = (uint64_t)tm_watermark_headroom(p) << p->bshift;
    out->fork_children = (uint64_t)p->ngens;
    out->fork_kept = (p->pmem.kept_slots + p->nvme.kept_slots) << p->bshift;
}
