/* dispatch.c: serving a fault (lock held, released by the moves it makes):
 * what the faulting block is (resident, never written, below), where its
 * data comes from, and how much to bring with it. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "block.h"

/* Blocks after b, adjacent in the arena, all never written (for a zero
 * fill) or all in lower tiers (for a promotion; the reads are merged where
 * slots are adjacent and issued together), up to max. */
static int64_t sequential_run(struct tm_pool *p, int64_t b, int64_t max, int64_t *list)
{
    int unbacked = p->meta.tier[b] == TM_UNBACKED;
    int64_t n = 1;
    list[0] = b;
    while (n < max && b + n < p->nblocks) {
        int64_t c = b + n;
        uint8_t t = p->meta.tier[c];
        if (!(p->meta.flags[c] & TM_F_ALLOC) || (p->meta.flags[c] & (TM_F_BUSY | TM_F_POISON)) ||
            (unbacked ? t != TM_UNBACKED : (t != TM_PMEM && t != TM_NVME)))
            break;
        list[n++] = c;
    }
    return n;
}

/* b, b+stride, ... while they are allocated lower-tier blocks, up to max. */
static int64_t strided_run(struct tm_pool *p, int64_t b, int64_t stride, int64_t max, int64_t *list)
{
    int64_t n = 1;
    list[0] = b;
    for (int64_t c = b + stride; n < max && c < p->scan_end; c += stride) {
        uint8_t t = p->meta.tier[c];
        if (!(p->meta.flags[c] & TM_F_ALLOC) || (p->meta.flags[c] & (TM_F_BUSY | TM_F_POISON)) ||
            (t != TM_PMEM && t != TM_NVME))
            break;
        list[n++] = c;
    }
    return n;
}

/* Zero-fill list[0..n) (never written; the fault at addr is on one of
 * them; if `huge`, they are a huge page's group, which has room). The
 * blocks are flagged loading before room is made (the lock is released
 * meanwhile, planned_blocks), cut to what fits, and filled with the lock
 * released too, by moving a populated huge page in if `huge` (hugezero.c),
 * else by copying zeros: a fault on one waits for the wake below, a release
 * waits for the end. */
static void zero_fill(tm_worker *w, uint64_t addr, int64_t *list, int64_t n, int huge)
{
    struct tm_pool *p = w->pool;
    int64_t moved = 0;
    for (int64_t i = 0; i < n; i++)
        tm_assert(tm_block_state(p, list[i]) == TM_BS_UNBACKED);
    int k = huge ? tm_hugezero_take(p) : -1; /* first: the room it held is theirs */
    n = tm_promote_reserve(w, addr, list, n);
    if (k >= 0 && n < p->hz.per) { /* cut to what fits: copies, then */
        tm_hugezero_untake(p, k);
        k = -1;
    }
    tm_unlock(p);
    int r = k >= 0 ? tm_hugezero_move(p, k, list[0]) : -1;
    if (r == 0) {
        moved = n;
    } else {
        tm_io_bytes(p, (uint64_t)n << p->bshift);
        r = tm_uffd_zero_fill(p, list[0], n);
    }
    tm_lock(p);
    if (k >= 0)
        tm_hugezero_used(p, k);
    p->st.huge_zero_fills += (uint64_t)moved;
    tm_promote_settle(p, list, n);
    if (r < 0) {
        tm_uffd_fail_fault(p, addr, "zero fill (UFFDIO_COPY) failed", r);
        tm_uffd_wake(p, list[0], n); /* those that faulted on the others meanwhile fault again */
        return;
    }
    for (int64_t i = 0; i < n; i++) {
        tm_block_resident(p, list[i], 1); /* no lower copy exists */
        if (i)
            tm_policy_access(p, list[i], TM_ACCESS_AHEAD);
    }
    tm_watermark_resident(p, n);
    tm_uffd_wake(p, list[0], n);
    p->st.zero_fills += (uint64_t)n;
}

/* A fault on a DRAM block: a first write to a clean block, an access to a
 * block parked by sampling (a hint), or a fault that raced the one that
 * mapped the block. Returns the kind of access it was. */
static int serve_resident(struct tm_pool *p, int64_t b, int kind, int write)
{
    if (p->meta.flags[b] & TM_F_BUSY) {
        /* Being written back outside the lock: its thread is woken when the
         * write is done, and faults again. */
        p->st.busy_waits++;
        return TM_ACCESS_MINOR;
    }
    if (kind == TM_ACCESS_WP) {
        p->st.wp_faults++;
        p->meta.flags[b] |= TM_F_DIRTY;
        p->xflags[b] = 0;
        tm_uffd_unprotect(p, b, 1);
        return kind;
    }
    if (!(p->meta.flags[b] & TM_F_SAMPLED)) {
        p->st.minor_faults++;
        tm_uffd_wake(p, b, 1);
        return TM_ACCESS_MINOR;
    }
    uint64_t t0 = tm_os_now_ns();
    tm_block_unpark(p, b);
    tm_block_unprotected(p, b, write); /* moved back writable */
    int r = tm_uffd_unpark(p, b, 1);
    if (r < 0)
        tm_set_error(p, "cannot map sampled block %lld back: %s", (long long)b, strerror(-r));
    tm_uffd_wake(p, b, 1);
    tm_sampling_hint(p, tm_os_now_ns() - t0);
    if (p->ghost)
        tm_ghost_hint(p->ghost, b, t0);
    return TM_ACCESS_HINT;
}

/* Room for a batch, made before a fault on b plans anything, since the lock
 * is released meanwhile: the fault waits for writebacks in flight if they
 * free enough, else demotes a batch itself, also writing outside the lock,
 * so other faults go on. When nothing can be demoted because every victim is
 * in flight (loads reserve their room, writebacks pin theirs), it waits for
 * those to settle instead of overrunning the budget. */
static void make_fault_room(tm_worker *w, int64_t b)
{
    struct tm_pool *p = w->pool;
    while ((p->meta.flags[b] & (TM_F_ALLOC | TM_F_BUSY)) == TM_F_ALLOC && p->meta.tier[b] != TM_DRAM) {
        tm_spare_room(p, p->batch_blocks); /* spares first: room without I/O */
        if (p->resident + p->batch_blocks <= p->dram_blocks)
            break;
        if (p->writeback_blocks && p->resident - p->writeback_blocks + p->batch_blocks <= p->dram_blocks) {
            p->st.writeback_waits++;
            pthread_cond_wait(&p->io_cond, &p->lock);
            continue;
        }
        int64_t moved = tm_demote(w, p->batch_blocks);
        if (moved) {
            tm_watermark_fault_demoted(p, moved);
        } else if (p->writeback_blocks || p->loading_blocks) {
            p->st.writeback_waits++;
            pthread_cond_wait(&p->io_cond, &p->lock);
        } else {
            break; /* all pinned: the plan's own room check decides */
        }
    }
}

void tm_dispatch_fault(tm_worker *w, uint64_t addr, int kind, int write)
{
    struct tm_pool *p = w->pool;
    uint8_t *a = (uint8_t *)(uintptr_t)addr;
    if (a < p->base || a >= p->base + p->arena_size)
        return;
    int64_t b = tm_block_of(p, a);
    make_fault_room(w, b);
    p->st.faults++;
    if (tm_block_state(p, b) == TM_BS_SPARE) {
        /* Raised before the block was freed (its pages are mapped now): the
         * access goes on, as one to freed C-library memory would. */
        p->st.minor_faults++;
        tm_uffd_wake(p, b, 1);
        return;
    }
    if (!(p->meta.flags[b] & TM_F_ALLOC)) {
        tm_set_error(p, "access to unallocated pool memory at %p; the thread got SIGBUS (none did if the fault was "
                     "raised before its memory was freed and served by another fault meanwhile)", (void *)a);
        if (tm_uffd_poison(p, addr) == 0) {
            p->st.sigbus_sent++;
            p->meta.flags[b] |= TM_F_POISON;
        }
        return;
    }
    p->recent[p->recent_i] = b;
    p->recent_i = (p->recent_i + 1) % TM_RECENT;
    if (p->meta.access_count[b] < UINT8_MAX)
        p->meta.access_count[b]++;
    p->meta.last_access[b] = (uint16_t)(p->st.faults >> 8);
    p->meta.flags[b] |= TM_F_REF;

    int64_t *list = w->list;
    switch (p->meta.tier[b]) {
    case TM_DRAM:
        tm_policy_access(p, b, serve_resident(p, b, kind, write));
        break;
    case TM_UNBACKED: {
        tm_policy_access(p, b, TM_ACCESS_MISSING);
        if (p->meta.flags[b] & TM_F_BUSY) {
            /* Another thread zero-fills it outside the lock: woken once mapped. */
            p->st.busy_waits++;
            break;
        }
        /* A zero fill costs little next to a fault: never fill less than
         * TM_ZERO_MIN_BYTES, so a small fresh array takes one fault. */
        tm_stream *s = tm_stream_of(p, b);
        int64_t g = tm_hugezero_group(p, b), n;
        if (g >= 0) { /* its whole huge page, moved in */
            for (n = 0; n < p->hz.per; n++)
                list[n] = g + n;
        } else {
            n = sequential_run(p, b, s->window > p->zero_min_blocks ? s->window : p->zero_min_blocks, list);
        }
        s->next = list[n - 1] + 1;
        /* What a stream fills is new data, read next rather than used once:
         * it passes only blocks it reads back. */
        s->start = s->lo = s->hi = s->next;
        zero_fill(w, addr, list, n, g >= 0);
        break;
    }
    default: {
        tm_ra_run *ra = tm_readahead_holding(p, b);
        tm_policy_access(p, b, TM_ACCESS_MISSING);
        if ((p->meta.flags[b] & TM_F_BUSY) && !ra) {
            /* Another thread loads it (or an idle handler maps it ahead)
             * outside the lock: woken once mapped. */
            p->st.busy_waits++;
            break;
        }
        tm_stream *s = tm_stream_of(p, b);
        if (ra) {
            /* The stream reached its readahead: map it; the next is read. */
            s->next = ra->blocks[ra->n - 1] + 1;
            int64_t end = ra->end;
            tm_readahead_finish(w, ra);
            /* The runs after it are mapped ahead, without faults: the
             * stream's next fault may be as far as their end. */
            s->ahead = tm_readahead_chain_end(p, end);
            if (p->meta.tier[b] == TM_DRAM)
                break;
            make_fault_room(w, b); /* others used the room while it waited */
            if ((p->meta.flags[b] & (TM_F_ALLOC | TM_F_BUSY)) != TM_F_ALLOC ||
                (p->meta.tier[b] != TM_PMEM && p->meta.tier[b] != TM_NVME)) {
                /* b was loaded, taken or freed meanwhile: its thread faults
                 * again if it must, and is served then. */
                tm_uffd_wake(p, b, 1);
                break;
            }
        }
        int64_t n;
        if (s->stride > 1 && s->window > 1) {
            n = strided_run(p, b, s->stride, s->window, list);
            s->last = list[n - 1];
        } else {
            n = sequential_run(p, b, s->window, list);
            s->next = b + n;
        }
        int stream = s->stride == 1 && s->window == p->batch_blocks && tm_range_advice(p, b) != TM_ADV_RANDOM;
        n = tm_promote_reserve(w, addr, list, tm_policy_prefetch(p, b, list, n));
        if (!n)
            break;
        if (stream) /* read ahead of it while this is read and mapped */
            tm_readahead_submit(p, list[n - 1] + 1);
        tm_promote_load(w, addr, list, n, write);
        break;
    }
    }
}
