/* watermark.c: free DRAM the background keeps ahead of faults, as the
 * kernel's kswapd does between its watermarks: woken below `low`, it demotes until `high`
 * is free, writing outside the lock, so that faults find room without
 * writing anything themselves. Both start at a batch or two and adapt to how
 * fast DRAM fills: each fault that had to demote itself raises them by a
 * batch (kswapd's watermark boost), up to an eighth and a quarter of DRAM
 * (in small pools they are there already), if anything was written since the
 * last; one that wrote nothing since (it dropped clean blocks) lowers it by a
 * batch, and each tick without a fault that demoted lowers it by an eighth,
 * giving the DRAM back. The background thread demotes
 * to them; faults and promotions report what they use. */
#define _GNU_SOURCE
#include <pthread.h>

#include "internal.h"

static int64_t min64(int64_t a, int64_t b)
{
    return a < b ? a : b;
}

static int64_t max_boost(const struct tm_pool *p)
{
    return p->dram_blocks / 4;
}

int64_t tm_watermark_low(const struct tm_pool *p)
{
    return min64(p->batch_blocks + p->wm_boost, p->dram_blocks / 8);
}

int64_t tm_watermark_headroom(const struct tm_pool *p)
{
    return min64(2 * p->batch_blocks + p->wm_boost, tm_watermark_max_headroom(p));
}

int64_t tm_watermark_max_headroom(const struct tm_pool *p)
{
    return p->dram_blocks / 4;
}

/* A fault demoted n blocks itself. The boost is there so that faults do
 * not write: it rises only if something was written since the last such
 * fault. A fault that only dropped clean blocks (a loop over data read back
 * from a lower tier: their copies are intact) wrote nothing, and lowers it
 * by a batch instead: headroom kept free for such faults is DRAM a loop
 * needs, and each pass would read it again (docs/policies.md, "Streams:
 * use-once and loops"). */
void tm_watermark_fault_demoted(struct tm_pool *p, int64_t n)
{
    p->st.fault_demotions += (uint64_t)n;
    if (p->st.bytes_written == p->wm_written) {
        p->wm_boost -= min64(p->wm_boost, p->batch_blocks);
        return;
    }
    p->wm_written = p->st.bytes_written;
    p->tick_fault_demotions += (uint64_t)n;
    p->wm_boost = min64(p->wm_boost + p->batch_blocks, max_boost(p));
}

/* Once a tick: the boost decays while faults find room. */
void tm_watermark_decay(struct tm_pool *p)
{
    if (!p->tick_fault_demotions)
        p->wm_boost -= p->wm_boost > 8 ? p->wm_boost / 8 : p->wm_boost;
    p->tick_fault_demotions = 0;
}

int tm_watermark_spilling(const struct tm_pool *p)
{
    return p->reserved > p->dram_blocks; /* else everything fits: nothing to make room for */
}

static void wake_below_low(struct tm_pool *p)
{
    if (tm_watermark_spilling(p) && !p->bg_kick && p->dram_blocks - p->resident < tm_watermark_low(p)) {
        p->bg_kick = 1;
        pthread_cond_signal(&p->bg_cond);
    }
}

void tm_watermark_resident(struct tm_pool *p, int64_t n)
{
    p->resident += n;
    uint64_t used = (uint64_t)(p->resident + p->spare + p->hz.held) << p->bshift; /* DRAM held */
    if (used > p->st.dram.peak)
        p->st.dram.peak = used;
    wake_below_low(p);
}
