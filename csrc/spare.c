/* spare.c: freed memory kept mapped for the next allocation at its address.
 *
 * Programs free and allocate arrays of the same sizes over and over (pandas'
 * temporaries, a loop's scratch), and the allocator is first-fit, so a new
 * allocation mostly lands where one was just freed. A freed block whose
 * pages are mapped in the arena keeps them (SPARE, block.h): the next
 * allocation there takes them as they are, without a fault or a zero fill
 * (a UFFDIO_COPY of zeros costs ~19 us per 64 KiB here), as the C library's
 * heap reuses freed memory; an allocation goes where a recent free left the
 * most spares (tm_spare_place). Spares are DRAM held, so they count in the
 * budget (resident + spare <= dram_blocks), but they are the cheapest room
 * there is: giving one back is a zap under the lock, no I/O. Room is made
 * from them first (tm_spare_room), and the background gives back those that
 * nobody reused for a second (tm_spare_tick), as the interposer's cache of
 * freed blocks does. */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>

#include "block.h"

/* Ticks (50 ms) without a reuse after which the spares go back. */
#define SPARE_IDLE_TICKS 20

/* [b, b+n) (spares, about to become free) lose their pages. */
static int zap_run(struct tm_pool *p, int64_t b, int64_t n)
{
    for (int64_t i = b; i < b + n; i++)
        tm_block_spare_drop(p, i);
    p->spare -= n;
    return tm_os_zap(tm_block_addr(p, b), (size_t)n << p->bshift);
}

int64_t tm_spare_keep(struct tm_pool *p, int64_t b, int64_t n)
{
    int64_t kept = 0;
    for (int64_t i = b; i < b + n;) {
        if (tm_block_state(p, i) != TM_BS_RESIDENT || (p->meta.flags[i] & TM_F_POISON)) {
            i++;
            continue;
        }
        /* A run of blocks to keep: the write-protected ones (clean, read
         * back from below) are made writable, so the next owner's writes
         * need no fault either. */
        int64_t j = i, wp = 0;
        for (; j < b + n && tm_block_state(p, j) == TM_BS_RESIDENT && !(p->meta.flags[j] & TM_F_POISON); j++) {
            wp |= p->dirty_tracking && !(p->meta.flags[j] & TM_F_DIRTY) && !(p->xflags[j] & (TM_X_VERIFY | TM_X_ZERO));
            tm_block_spare(p, j);
        }
        if (wp && tm_uffd_unprotect(p, i, j - i) < 0) { /* they would fault: give them back */
            for (int64_t k = i; k < j; k++)
                tm_block_spare_drop(p, k);
            i = j;
            continue;
        }
        kept += j - i;
        i = j;
    }
    p->spare += kept;
    p->resident -= kept;
    if (kept) {
        p->spare_recent[p->spare_recent_i] = (tm_extent){b, n};
        p->spare_recent_i = (p->spare_recent_i + 1) % TM_SPARE_RECENT;
    }
    return kept;
}

int64_t tm_spare_place(struct tm_pool *p, int64_t n)
{
    int best = -1;
    int64_t best_count = 0;
    for (int i = 0; p->spare && i < TM_SPARE_RECENT; i++) {
        tm_extent *r = &p->spare_recent[i];
        if (r->len < n)
            continue;
        int64_t count = 0;
        for (int64_t k = r->start; k < r->start + n; k++)
            count += (p->xflags[k] & TM_X_SPARE) != 0;
        /* The most spares; of as many, the tightest fit. */
        if (count > best_count || (count && count == best_count && r->len < p->spare_recent[best].len)) {
            best = i;
            best_count = count;
        }
    }
    if (best < 0)
        return -1;
    tm_extent *r = &p->spare_recent[best];
    int64_t at = r->start;
    *r = (tm_extent){r->start + n, r->len - n}; /* the rest, for the next */
    return at;
}

int64_t tm_spare_reuse(struct tm_pool *p, int64_t b, int64_t n, tm_extent *runs, int max, int *nruns)
{
    int64_t reused = 0;
    *nruns = 0;
    for (int64_t i = b; i < b + n;) {
        if (tm_block_state(p, i) != TM_BS_SPARE) {
            i++;
            continue;
        }
        int64_t j = i;
        while (j < b + n && tm_block_state(p, j) == TM_BS_SPARE)
            j++;
        if (*nruns == max) { /* too scattered to list: fresh zero fills instead */
            zap_run(p, i, j - i);
            i = j;
            continue;
        }
        for (int64_t k = i; k < j; k++)
            tm_block_reuse(p, k);
        runs[(*nruns)++] = (tm_extent){i, j - i};
        reused += j - i;
        i = j;
    }
    p->spare -= reused;
    p->resident += reused;
    if (reused) {
        p->st.spare_reuses += (uint64_t)reused;
        p->spare_idle_ticks = 0;
    }
    return reused;
}

void tm_spare_zeroed(struct tm_pool *p, const tm_extent *runs, int nruns)
{
    for (int k = 0; k < nruns; k++)
        for (int64_t b = runs[k].start; b < runs[k].start + runs[k].len; b++)
            /* Still as reused (one demoted meanwhile is not): resident,
             * dirty, no slot; parked by sampling is as good. */
            if (tm_block_state(p, b) == TM_BS_RESIDENT || tm_block_state(p, b) == TM_BS_PARKED)
                if ((p->meta.flags[b] & TM_F_DIRTY) && p->meta.slot[b] == TM_NO_SLOT)
                    tm_block_zeroed(p, b);
}

/* Give back the spares the hand finds, up to `want`; returns how many. */
static int64_t give_back(struct tm_pool *p, int64_t want)
{
    int64_t done = 0;
    for (int64_t scanned = 0; done < want && p->spare && scanned < p->scan_end;) {
        int64_t b = tm_scan_next(p, &p->spare_hand);
        scanned++;
        if (tm_block_state(p, b) != TM_BS_SPARE)
            continue;
        int64_t n = 1;
        while (done + n < want && b + n < p->scan_end && tm_block_state(p, b + n) == TM_BS_SPARE)
            n++;
        zap_run(p, b, n);
        p->spare_hand = b + n;
        scanned += n - 1;
        done += n;
    }
    return done;
}

void tm_spare_drop(struct tm_pool *p, int64_t b, int64_t n)
{
    for (int64_t i = b; i < b + n;) {
        int64_t j = i;
        while (j < b + n && tm_block_state(p, j) == TM_BS_SPARE)
            j++;
        if (j > i)
            zap_run(p, i, j - i);
        i = j + 1;
    }
}

void tm_spare_room(struct tm_pool *p, int64_t n)
{
    for (;;) {
        int64_t over = p->resident + p->spare + p->hz.held + n - p->dram_blocks;
        if (over > 0 && p->spare)
            over -= give_back(p, over < p->spare ? over : p->spare);
        if (over > 0)
            over -= tm_hugezero_give_back(p, over);
        /* A chunk being populated holds its room until it is ready: wait for
         * it (the lock released) rather than go over the budget. */
        if (over <= 0 || !tm_hugezero_filling(p))
            return;
        pthread_cond_wait(&p->io_cond, &p->lock);
    }
}

void tm_spare_tick(struct tm_pool *p)
{
    if ((p->spare || p->hz.held) && ++p->spare_idle_ticks >= SPARE_IDLE_TICKS) {
        give_back(p, p->spare);
        tm_hugezero_give_back(p, p->hz.held);
    }
}
