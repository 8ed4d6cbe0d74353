/* background.c: the pool's background thread. Woken when DRAM falls below
 * the low watermark, and every tick, it
 *  - keeps DRAM headroom: when more is allocated than DRAM holds, it demotes
 *    ahead of need so that faults find free room (watermark.c);
 *  - lets the policy promote lower-tier blocks it expects to be used;
 *  - samples accesses by hint faults (sampling.c);
 *  - lets forked children's slots go once they exit (fork.c).
 *  - keeps PMEM headroom: when NVMe is below it, the coldest PMEM blocks
 *    the hand finds move to NVMe (the cascade), so that demotions find PMEM
 *    slots without cascading on the fault path.
 * Everything runs with the pool lock held, like fault service; its worker
 * writes and reads outside it. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <time.h>

#include "internal.h"

/* Free PMEM slots kept ahead of demotions when NVMe is below PMEM: two
 * batches, at most an eighth of PMEM. Only while more is allocated than
 * DRAM and the rest of PMEM hold (some data must go to NVMe anyway), so a
 * pool that fits in DRAM and PMEM never writes NVMe. */
static void keep_pmem_headroom(struct tm_pool *p)
{
    if (!p->pmem.nslots || !p->nvme.nslots)
        return;
    int64_t target = 2 * p->batch_blocks, cap = (int64_t)p->pmem.nslots / 8;
    if (target > cap)
        target = cap;
    if (p->reserved <= p->dram_blocks + (int64_t)p->pmem.nslots - target)
        return;
    while (!p->bg_stop) {
        int64_t want = target - (int64_t)(p->pmem.nslots - p->pmem.used);
        if (want <= 0 || !tm_demote_cascade(&p->bg, want))
            break;
    }
}

static void keep_headroom(struct tm_pool *p)
{
    while (!p->bg_stop && tm_watermark_spilling(p)) {
        int64_t want = tm_watermark_headroom(p) - (p->dram_blocks - p->resident);
        if (want <= 0)
            break;
        int64_t moved = tm_demote(&p->bg, want);
        if (!moved)
            break;
        p->st.background_demotions += (uint64_t)moved;
    }
    keep_pmem_headroom(p);
}

static void policy_promotions(struct tm_pool *p)
{
    int64_t room = p->dram_blocks - tm_watermark_low(p) - p->resident;
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
    p->st.policy_promotions += (uint64_t)tm_promote_ahead(&p->bg, list, n, "promote");
}

static void tick(struct tm_pool *p)
{
    tm_watermark_decay(p);
    keep_headroom(p);
    policy_promotions(p);
    tm_spare_tick(p);
    if (p->ngens)
        tm_fork_reap(p);
    if (p->sample_budget_ppm && (p->pmem.nslots || p->nvme.nslots))
        tm_sampling_tick(p);
    tm_stats st;
    tm_stats_snapshot(p, &st);
    tm_publish_tick(p, &st);
}

static void next_tick(struct timespec *t)
{
    uint64_t ns = (uint64_t)t->tv_nsec + TM_TICK_NS;
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
    tm_sampling_init(p);
    int r = tm_worker_init(p, &p->bg, 0);
    if (r < 0 || (r = tm_worker_init(p, &p->ctl, 0)) < 0)
        return r;
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
