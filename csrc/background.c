/* background.c: the pool's background thread. Every tick it
 *  - keeps DRAM headroom: when more is allocated than DRAM holds, it demotes
 *    ahead of need so that faults find free room (TPP's free watermark);
 *  - lets the policy promote lower-tier blocks it expects to be used;
 *  - samples accesses by hint faults: it parks a run of resident blocks
 *    (moves their pages to the shadow) and the next access to one is a fault
 *    that records the access (REF bit, the policy's on_access) and moves the
 *    block back. The sample size adapts so that the measured cost of
 *    sampling stays within its budget: a share of the time (1% by default),
 *    plus, under memory pressure and while sampled blocks are reused, a share
 *    of the time spent serving faults.
 * Everything runs with the pool lock held, like fault service. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

#include "block.h"

#define TICK_NS (50ull * 1000 * 1000)
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

/* Free DRAM the background keeps ahead of faults, as the kernel's kswapd
 * does between its watermarks: woken below `low`, it demotes until `high`
 * is free, writing outside the lock, so that faults find room without
 * writing anything themselves. Both start at a batch or two and adapt to how
 * fast DRAM fills: each fault that had to demote itself raises them by a
 * batch (kswapd's watermark boost), up to an eighth and a quarter of DRAM
 * (in small pools they are there already); each tick without one lowers the
 * boost by an eighth, giving the DRAM back. */
static int64_t min64(int64_t a, int64_t b)
{
    return a < b ? a : b;
}

static int64_t max_boost(const struct tm_pool *p)
{
    return p->dram_blocks / 4;
}

static int64_t low_watermark(const struct tm_pool *p)
{
    return min64(p->batch_blocks + p->wm_boost, p->dram_blocks / 8);
}

int64_t tm_background_headroom(const struct tm_pool *p)
{
    return min64(2 * p->batch_blocks + p->wm_boost, tm_background_max_headroom(p));
}

int64_t tm_background_max_headroom(const struct tm_pool *p)
{
    return p->dram_blocks / 4;
}

void tm_background_fault_demoted(struct tm_pool *p, int64_t n)
{
    p->st.fault_demotions += (uint64_t)n;
    p->tick_fault_demotions += (uint64_t)n;
    p->wm_boost = min64(p->wm_boost + p->batch_blocks, max_boost(p));
}

/* Once a tick: the boost decays while faults find room. */
static void decay_boost(struct tm_pool *p)
{
    if (!p->tick_fault_demotions)
        p->wm_boost -= p->wm_boost > 8 ? p->wm_boost / 8 : p->wm_boost;
    p->tick_fault_demotions = 0;
}

static int spilling(const struct tm_pool *p)
{
    return p->reserved > p->dram_blocks; /* else everything fits: nothing to make room for */
}

void tm_background_used(struct tm_pool *p)
{
    if (spilling(p) && !p->bg_kick && p->dram_blocks - p->resident < low_watermark(p)) {
        p->bg_kick = 1;
        pthread_cond_signal(&p->bg_cond);
    }
}

static void keep_headroom(struct tm_pool *p)
{
    while (!p->bg_stop && spilling(p)) {
        int64_t want = tm_background_headroom(p) - (p->dram_blocks - p->resident);
        if (want <= 0)
            break;
        int64_t moved = tm_migrate_demote(&p->bg, want);
        if (!moved)
            break;
        p->st.background_demotions += (uint64_t)moved;
    }
}

static void policy_promotions(struct tm_pool *p)
{
    int64_t room = p->dram_blocks - low_watermark(p) - p->resident;
    if (!p->policy.promote || room <= 0)
        return;
    int64_t max = room < p->batch_blocks ? room : p->batch_blocks;
    int64_t *list = p->bg.list;
    int64_t n = p->policy.promote(p->policy.state, p->meta.tier, p->meta.flags, p->scan_end, max, list);
    if (n < 0 || n > max) {
        p->st.policy_errors++;
        tm_set_error(p, "policy promote returned %lld for at most %lld blocks", (long long)n, (long long)max);
        return;
    }
    p->st.policy_promotions += (uint64_t)tm_migrate_promote_ahead(&p->bg, list, n, "promote");
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
    double budget = (double)TICK_NS * p->sample_budget_ppm / 1e6;
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
    p->st.sample_rate = (uint64_t)(k * 1e9 / TICK_NS);
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
            parked += tm_migrate_park(p, list, k);
            k = 0;
        }
    }
    parked += tm_migrate_park(p, list, k);
    uint64_t ns = tm_os_now_ns() - t0;
    if (parked)
        EWMA(p->zap_cost_ns, (double)ns / parked);
    p->tick_sampled = (uint64_t)parked;
    p->st.sampled += (uint64_t)parked;
    p->st.sample_ns += ns;
}

void tm_background_hint(struct tm_pool *p, uint64_t service_ns)
{
    p->st.hint_faults++;
    p->st.sample_ns += service_ns;
    p->tick_hints++;
    p->tick_hint_ns += service_ns;
}

static void tick(struct tm_pool *p)
{
    decay_boost(p);
    keep_headroom(p);
    policy_promotions(p);
    if (p->ngens)
        tm_fork_reap(p);
    if (p->sample_budget_ppm && (p->pmem.nslots || p->nvme.nslots)) {
        adapt(p);
        sample(p);
    }
}

static void next_tick(struct timespec *t)
{
    uint64_t ns = (uint64_t)t->tv_nsec + TICK_NS;
    t->tv_sec += (time_t)(ns / 1000000000ull);
    t->tv_nsec = (long)(ns % 1000000000ull);
}

static void *bg_main(void *arg)
{
    struct tm_pool *p = arg;
    tm_engine_depth = 1; /* it demotes under the lock: never given pool memory */
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    next_tick(&next);
    tm_lock(p);
    while (!p->bg_stop) {
        int timed_out = 0;
        while (!p->bg_stop && !p->bg_kick && !timed_out)
            timed_out = pthread_cond_timedwait(&p->bg_cond, &p->lock, &next) == ETIMEDOUT;
        if (p->bg_stop)
            break;
        if (p->bg_kick) { /* a fault took DRAM below the low watermark */
            p->bg_kick = 0;
            keep_headroom(p);
        }
        if (timed_out) {
            tick(p);
            next_tick(&next);
        }
    }
    tm_unlock(p);
    return NULL;
}

int tm_background_start(struct tm_pool *p)
{
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&p->bg_cond, &attr);
    pthread_condattr_destroy(&attr);
    p->sample_per_tick = (double)p->batch_blocks;
    p->hint_cost_ns = 5000;
    p->zap_cost_ns = 4000;
    p->hint_ratio = 0.5;
    int r = tm_worker_init(p, &p->bg, 0);
    if (r < 0 || (r = tm_worker_init(p, &p->ctl, 0)) < 0)
        return r;
    p->bg.unlocked_io = p->bg.unlocked_loads = 1; /* advice and resize (ctl) share one worker: locked */
    pthread_cond_init(&p->io_cond, NULL);
    /* Signals belong to the application's threads. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    r = pthread_create(&p->bg.thread, NULL, bg_main, p);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (r)
        return -r;
    p->bg_started = 1;
    return 0;
}

void tm_background_stop(struct tm_pool *p)
{
    if (p->bg_started) {
        tm_lock(p);
        p->bg_stop = 1;
        pthread_cond_signal(&p->bg_cond);
        tm_unlock(p);
        pthread_join(p->bg.thread, NULL);
        p->bg_started = 0;
    }
    tm_worker_fini(&p->bg);
    tm_worker_fini(&p->ctl);
}
