/* sampling.c: access sampling by hint faults. Each background tick parks a
 * run of resident blocks (moves their pages to the shadow); the next access
 * to one is a fault that records the access (REF bit, the policy's
 * on_access) and moves the block back. The sample size adapts so that the
 * measured cost of sampling stays within its budget: a share of the time
 * (1% by default), plus, under memory pressure and while sampled blocks are
 * reused, a share of the time spent serving faults. CLOCK parks the blocks
 * whose bit it clears the same way. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "block.h"

/* The faulting thread's side of a hint fault (trap, handler wake, return),
 * which the handler cannot time: measured ~6.5 us on these machines (a hint
 * costs the application ~16 us, of which the handler ~9.5 us; docs/policies.md). */
#define HINT_TRAP_NS 6500.0
/* Assume at least this share of sampled blocks is touched before the next
 * sample, so a quiet spell cannot grow the sample without bound. */
#define MIN_HINT_RATIO 0.25
#define EWMA(avg, x) ((avg) = 0.75 * (avg) + 0.25 * (x))
/* Under memory pressure, sampling may also take this share of the time spent
 * serving faults: a fault from NVMe costs ~130 us, a hint ~16 us, so a better
 * choice of victims repays sampling many times over. */
#define PRESSURE_SHARE 0.05
/* ... but only while sampled blocks are seen again: in a scan, what sampling
 * finds behind the stream is never touched again, and the share is waste. */
#define REUSE_RATIO 0.1

/* Park blocks [b, b+n) for hint sampling (flagged SAMPLED by the caller). A
 * block the kernel has pinned for I/O stays mapped and loses its flag.
 * Returns how many were parked. */
int64_t tm_sampling_park_run(struct tm_pool *p, int64_t b, int64_t n)
{
    int64_t parked = 0;
    while (n > 0) {
        int64_t k = tm_uffd_park(p, b, n);
        parked += k;
        if (p->ghost)
            tm_ghost_parked(p->ghost, b, k, tm_os_now_ns());
        if (k == n)
            break;
        tm_block_unpark(p, b + k);
        p->st.pinned_skips++;
        b += k + 1;
        n -= k + 1;
    }
    return parked;
}

static int64_t park_list(struct tm_pool *p, const int64_t *list, int64_t n)
{
    int64_t parked = 0;
    for (int64_t i = 0; i < n;) {
        int64_t j = i + 1;
        while (j < n && list[j] == list[j - 1] + 1)
            j++;
        parked += tm_sampling_park_run(p, list[i], j - i);
        i = j;
    }
    return parked;
}

/* Blocks to sample next tick: as many as the budget pays for at the
 * measured costs, at most twice the last number, and half of it when the
 * last tick cost more than the budget. */
static void adapt(struct tm_pool *p)
{
    /* Pressure: blocks were demoted since the last tick. */
    int pressure = p->st.demotions != p->tick_demotions;
    double serving = (double)(p->st.fault_ns - p->tick_fault_ns) - (double)p->tick_hint_ns;
    p->tick_fault_ns = p->st.fault_ns;
    p->tick_demotions = p->st.demotions;
    double budget = (double)TM_TICK_NS * p->sample_budget_ppm / 1e6;
    if (pressure && serving > 0 && p->hint_ratio > REUSE_RATIO)
        budget += PRESSURE_SHARE * serving;
    if (p->tick_hints)
        EWMA(p->hint_cost_ns, (double)p->tick_hint_ns / p->tick_hints + HINT_TRAP_NS);
    if (p->tick_sampled) /* the hints of this tick mostly answer the last sample */
        EWMA(p->hint_ratio, p->tick_hints < p->tick_sampled ? (double)p->tick_hints / (double)p->tick_sampled : 1.0);
    double ratio = p->hint_ratio > MIN_HINT_RATIO ? p->hint_ratio : MIN_HINT_RATIO;
    double per_block = p->zap_cost_ns + ratio * p->hint_cost_ns;
    double k = budget / per_block, last = p->sample_per_tick;
    double spent = (double)p->tick_hint_ns + p->tick_hints * HINT_TRAP_NS + p->tick_sampled * p->zap_cost_ns;
    if (k > 2 * last + 1)
        k = 2 * last + 1;
    if (spent > budget && k > last / 2)
        k = last / 2;
    p->sample_per_tick = k;
    p->st.sample_rate = (uint64_t)(k * 1e9 / TM_TICK_NS);
    p->tick_hints = p->tick_hint_ns = 0;
}

/* Sample up to sample_per_tick resident blocks (at most a quarter of DRAM
 * per tick), in chunks of the background worker's list. */
static void sample(struct tm_pool *p)
{
    int64_t want = (int64_t)p->sample_per_tick, chunk = 3 * p->batch_max, n = 0, parked = 0;
    if (want > p->dram_blocks / 4 + 1)
        want = p->dram_blocks / 4 + 1;
    int64_t *list = p->bg.list, k = 0;
    uint64_t t0 = tm_os_now_ns();
    for (int64_t scanned = 0; n < want && scanned < p->scan_end; scanned++) {
        int64_t b = p->sample_hand < p->scan_end ? p->sample_hand : 0;
        p->sample_hand = b + 1;
        if (p->meta.tier[b] != TM_DRAM || (p->meta.flags[b] & (TM_F_BUSY | TM_F_SAMPLED)))
            continue;
        p->meta.flags[b] &= (uint8_t)~TM_F_REF;
        tm_block_park(p, b);
        list[k++] = b;
        n++;
        if (k == chunk) {
            parked += park_list(p, list, k);
            k = 0;
        }
    }
    parked += park_list(p, list, k);
    uint64_t ns = tm_os_now_ns() - t0;
    if (parked)
        EWMA(p->zap_cost_ns, (double)ns / parked);
    p->tick_sampled = (uint64_t)parked;
    p->st.sampled += (uint64_t)parked;
    p->st.sample_ns += ns;
}

void tm_sampling_tick(struct tm_pool *p)
{
    adapt(p);
    sample(p);
}

void tm_sampling_hint(struct tm_pool *p, uint64_t service_ns)
{
    p->st.hint_faults++;
    p->st.sample_ns += service_ns;
    p->tick_hints++;
    p->tick_hint_ns += service_ns;
}

void tm_sampling_init(struct tm_pool *p)
{
    p->sample_per_tick = (double)p->batch_blocks;
    p->hint_cost_ns = 5000;
    p->zap_cost_ns = 4000;
    p->hint_ratio = 0.5;
}
