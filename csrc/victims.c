/* victims.c: the DRAM blocks to demote: the streams' passed blocks, then
 * the policy's, else CLOCK's. Chosen blocks come back marked BUSY. */
#define _GNU_SOURCE
#include <string.h>

#include "block.h"

/* CLOCK over the reference bits that faults and sampled hints set. With
 * sampling on, a block whose bit is cleared is also unmapped (a hint sample:
 * its pages stay), so that an access before the hand comes round again sets
 * the bit again; without it, a block in constant use but mapped would look
 * unused. Blocks
 * advised cold go regardless of their bit; blocks advised hot only once two
 * sweeps found nothing else, the blocks of the latest faults only after four
 * (else two blocks that one instruction needs could evict each other
 * forever). Each gets two sweeps: the first may only clear its bit. */
int64_t tm_victims_clock(struct tm_pool *p, int64_t want, int64_t *out)
{
    int64_t n = 0, run = -1, len = 0, sampled = 0;
    uint64_t t0 = tm_os_now_ns();
    for (int64_t scanned = 0; n < want && scanned < 6 * p->scan_end; scanned++) {
        int64_t b = tm_scan_next(p, &p->clock_hand);
        uint8_t f = p->meta.flags[b];
        if (p->meta.tier[b] != TM_DRAM || (f & TM_F_BUSY))
            continue;
        if (scanned < 4 * p->scan_end && tm_recent(p, b))
            continue;
        if ((f & TM_F_HOT) && scanned < 2 * p->scan_end)
            continue;
        if ((f & TM_F_REF) && !(f & TM_F_COLD)) {
            p->meta.flags[b] &= (uint8_t)~TM_F_REF;
            if (!p->sample_budget_ppm || (f & TM_F_SAMPLED))
                continue; /* sampling is off, or the block is parked already */
            tm_block_park(p, b);
            if (len && b != run + len) {
                sampled += tm_sampling_park_run(p, run, len);
                len = 0;
            }
            if (!len)
                run = b;
            len++;
            continue;
        }
        if (len && b >= run && b < run + len) {
            /* The hand came round to the run flagged for sampling before it
             * was parked: park it first, so that a victim is whole in one place. */
            sampled += tm_sampling_park_run(p, run, len);
            len = 0;
        }
        tm_block_take_victim(p, b);
        out[n++] = b;
    }
    if (len)
        sampled += tm_sampling_park_run(p, run, len);
    if (sampled) {
        p->st.sampled += (uint64_t)sampled;
        p->st.sample_ns += tm_os_now_ns() - t0;
    }
    return n;
}

/* Victims for `want` blocks: the streams' passed blocks, then the
 * policy's, else CLOCK's. Chosen blocks come back marked BUSY, with the tier
 * each should go to in dest[] (0: the engine's choice). */
int64_t tm_victims_pick(struct tm_pool *p, int64_t want, int64_t *out, uint8_t *dest)
{
    if (want <= 0)
        return 0;
    memset(dest, 0, (size_t)want);
    int64_t n = tm_stream_victims(p, want, out);
    if (n == want)
        return n;
    int64_t k = tm_policy_victims(p, want - n, out + n, dest + n);
    return n + (k ? k : tm_victims_clock(p, want - n, out + n));
}
