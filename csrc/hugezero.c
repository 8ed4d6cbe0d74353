/* hugezero.c: zero fills from huge pages.
 *
 * A zero fill copies zeros into fresh small pages (UFFDIO_COPY: ~4.5 GB/s
 * here), where numpy's own large arrays get transparent huge pages, which
 * the kernel zeroes at ~15-20 GB/s when it has them. So a few 2 MiB chunks
 * of a MADV_HUGEPAGE range are kept populated (zeroed by the kernel, in a
 * huge page when it can make one), and a fault whose 2 MiB of the arena are
 * all never written, with room for them in DRAM, has a chunk moved in whole
 * (UFFDIO_MOVE: page-table entries, a huge page as one): measured, 128 MiB
 * filled in 6-15 ms this way against 28-31 ms of copies of zeros. Chunks are
 * populated off the fault path, by an idle handler (fill_fd), so the
 * kernel's compaction, when huge pages are scarce, delays no fault. Their
 * DRAM is in the budget (hz.held): they are populated only while DRAM has
 * room for them, given back first when room is needed (with the spares,
 * spare.c), and moving one in only turns held blocks into resident ones.
 *
 * The huge pages split when one of their blocks is later moved out alone
 * (demoted, parked by sampling); that is the kernel's business. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>

#include "block.h"

int tm_hugezero_init(struct tm_pool *p)
{
    int64_t per = (int64_t)(TM_HUGE_BYTES >> p->bshift);
    /* A whole chunk must fit one zero fill (a batch), and the chunks be a
     * small share of the budget; else no chunks, and zero fills copy. */
    if (per < 1 || per > p->batch_max || p->dram_blocks < 16 * per)
        return 0;
    p->hz.base = tm_os_huge_reserve(TM_HUGEZERO_CHUNKS * TM_HUGE_BYTES);
    if (!p->hz.base)
        return -errno;
    p->hz.per = per;
    return 0;
}

void tm_hugezero_fini(struct tm_pool *p)
{
    tm_os_unmap(p->hz.base, TM_HUGEZERO_CHUNKS * TM_HUGE_BYTES);
    p->hz = (tm_hugezero){0};
}

static uint8_t *chunk(const struct tm_pool *p, int k)
{
    return p->hz.base + (size_t)k * TM_HUGE_BYTES;
}

void tm_hugezero_refill(struct tm_pool *p)
{
    for (int k = 0; k < TM_HUGEZERO_CHUNKS && p->hz.base; k++) {
        if (p->hz.state[k] != TM_HZ_EMPTY)
            continue;
        if (p->resident + p->spare + p->hz.held + p->hz.per > p->dram_blocks)
            return; /* no room for it in the budget */
        p->hz.state[k] = TM_HZ_FILLING; /* ours while the lock is released */
        p->hz.held += p->hz.per;
        tm_unlock(p);
        int r = tm_os_populate_write(chunk(p, k), TM_HUGE_BYTES);
        tm_lock(p);
        if (r < 0) { /* no memory for it now: zero fills copy meanwhile */
            tm_os_zap(chunk(p, k), TM_HUGE_BYTES);
            p->hz.state[k] = TM_HZ_EMPTY;
            p->hz.held -= p->hz.per;
            pthread_cond_broadcast(&p->io_cond);
            return;
        }
        p->hz.state[k] = TM_HZ_READY;
        pthread_cond_broadcast(&p->io_cond); /* room-makers may wait for it (spare.c) */
    }
}

int tm_hugezero_filling(const struct tm_pool *p)
{
    for (int k = 0; k < TM_HUGEZERO_CHUNKS; k++)
        if (p->hz.state[k] == TM_HZ_FILLING)
            return 1;
    return 0;
}

int64_t tm_hugezero_give_back(struct tm_pool *p, int64_t want)
{
    int64_t done = 0;
    for (int k = 0; k < TM_HUGEZERO_CHUNKS && done < want; k++)
        if (p->hz.state[k] == TM_HZ_READY) {
            tm_os_zap(chunk(p, k), TM_HUGE_BYTES);
            p->hz.state[k] = TM_HZ_EMPTY;
            p->hz.held -= p->hz.per;
            done += p->hz.per;
        }
    return done;
}

/* Whether a chunk is ready; if none is, have the empty ones populated. */
static int ready(struct tm_pool *p)
{
    int empty = 0;
    for (int k = 0; k < TM_HUGEZERO_CHUNKS; k++) {
        if (p->hz.state[k] == TM_HZ_READY)
            return 1;
        empty |= p->hz.state[k] == TM_HZ_EMPTY;
    }
    if (empty && p->fill_fd >= 0)
        tm_os_kick(p->fill_fd);
    return 0;
}

int64_t tm_hugezero_group(struct tm_pool *p, int64_t b)
{
    int64_t per = p->hz.per;
    if (!per || !ready(p))
        return -1;
    int64_t g = b - (b % per); /* the arena is aligned to a huge page */
    if (g + per > p->nblocks)
        return -1;
    for (int64_t i = g; i < g + per; i++)
        if (tm_block_state(p, i) != TM_BS_UNBACKED || (p->meta.flags[i] & TM_F_POISON))
            return -1;
    return g;
}

int tm_hugezero_take(struct tm_pool *p)
{
    for (int k = 0; k < TM_HUGEZERO_CHUNKS; k++)
        if (p->hz.state[k] == TM_HZ_READY) {
            p->hz.state[k] = TM_HZ_TAKEN;
            p->hz.held -= p->hz.per;
            p->spare_idle_ticks = 0; /* in use: the background keeps them (spare.c) */
            return k;
        }
    return -1;
}

void tm_hugezero_untake(struct tm_pool *p, int k)
{
    tm_assert(p->hz.state[k] == TM_HZ_TAKEN);
    p->hz.state[k] = TM_HZ_READY;
    p->hz.held += p->hz.per;
}

int tm_hugezero_move(struct tm_pool *p, int k, int64_t g)
{
    tm_assert(p->hz.state[k] == TM_HZ_TAKEN && g % p->hz.per == 0);
    return tm_uffd_move_in(p, g, p->hz.per, chunk(p, k));
}

void tm_hugezero_used(struct tm_pool *p, int k)
{
    tm_assert(p->hz.state[k] == TM_HZ_TAKEN);
    /* Its pages went into the arena, or, if the move failed, what is left
     * of them goes: populated again from nothing. */
    tm_os_zap(chunk(p, k), TM_HUGE_BYTES);
    p->hz.state[k] = TM_HZ_EMPTY;
    ready(p); /* an idle handler populates it again */
}
