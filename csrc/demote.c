/* demote.c: demotion (DRAM -> PMEM, and PMEM -> NVMe when PMEM is full).
 * Victims are moved out of the arena into the shadow, written from there
 * (outside the lock on an unlocked worker), and give their pages back; a
 * victim that cannot be written anywhere stays in DRAM. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "block.h"

/* Move up to `want` PMEM-resident blocks to NVMe to free PMEM slots. */
static void cascade_pmem(tm_worker *w, int64_t want)
{
    struct tm_pool *p = w->pool;
    int64_t *list = w->list + 2 * p->batch_blocks;
    int64_t n = 0;
    for (int64_t scanned = 0; n < want && scanned < p->scan_end; scanned++) {
        int64_t b = tm_scan_next(p, &p->pmem_hand);
        if (p->meta.tier[b] == TM_PMEM && !(p->meta.flags[b] & TM_F_BUSY)) /* busy: being loaded */
            list[n++] = b;
    }
    if (!n)
        return;
    tm_io ios[n];
    int k = tm_slot_ios(p, &p->pmem, list, n, w->iobuf, 0, ios, NULL);
    int r = tm_tier_readv(&p->pmem, w->ioq, ios, k);
    if (r < 0) {
        p->st.io_errors++;
        tm_set_error(p, "pmem read while moving blocks to nvme: %s", strerror(-r));
        return;
    }
    /* A block whose PMEM copy fails its checksum stays there (and fails when
     * read): moving it would give damaged data a fresh checksum. */
    int64_t kept = 0;
    for (int64_t i = 0; i < n; i++) {
        if (!tm_slot_intact(p, list[i], w->iobuf + ((size_t)i << p->bshift))) {
            tm_set_error(p, "pmem block %lld failed its checksum", (long long)list[i]);
            continue;
        }
        if (kept != i) {
            list[kept] = list[i];
            memcpy(w->iobuf + ((size_t)kept << p->bshift), w->iobuf + ((size_t)i << p->bshift), p->bs);
        }
        kept++;
    }
    n = kept;
    uint32_t old[n ? n : 1];
    int64_t moved = 0;
    for (int64_t i = 0; i < n; i++)
        old[i] = p->meta.slot[list[i]];
    for (; moved < n; moved++) {
        p->meta.slot[list[moved]] = TM_NO_SLOT;
        if (tm_slot_take(p, &p->nvme, list[moved]) < 0) {
            p->meta.slot[list[moved]] = old[moved];
            break;
        }
        p->nvme.csum[p->meta.slot[list[moved]] - p->nvme.first_slot] = p->pmem.csum[old[moved] - p->pmem.first_slot];
    }
    k = tm_slot_ios(p, &p->nvme, list, moved, w->iobuf, 0, ios, NULL);
    r = k ? tm_tier_writev(&p->nvme, w->ioq, ios, k) : 0;
    for (int64_t i = 0; i < moved; i++) {
        int64_t b = list[i];
        if (r < 0) { /* stays in PMEM */
            tm_slot_release(p, b);
            p->meta.slot[b] = old[i];
            continue;
        }
        tm_tier_slot_free(&p->pmem, old[i] - p->pmem.first_slot);
        tm_tier_discard(&p->pmem, old[i] - p->pmem.first_slot, 1);
        tm_block_cascaded(p, b);
        p->st.demotions++;
        p->st.bytes_written += p->bs;
    }
    if (r < 0) {
        p->st.io_errors++;
        tm_set_error(p, "nvme write while moving blocks from pmem: %s", strerror(-r));
    }
}

/* Park blocks [b, b+n) whose first block would not move: after a fork its
 * pages may be shared with a child, which UFFDIO_MOVE refuses like pinned
 * ones. Made the parent's own (a copy while the child lives, else taken
 * back), they move; a pinned page stays pinned (a pin for writing had
 * already made it the parent's own) and still refuses. Its write protection
 * was lifted for that, so its checksum decides whether it is clean. */
static int64_t unshare_and_park(struct tm_pool *p, int64_t b, int64_t n)
{
    if (tm_uffd_unshare(p, b, 1) < 0)
        return 0;
    p->xflags[b] |= TM_X_VERIFY;
    p->st.fork_unshared++;
    return tm_uffd_park(p, b, n);
}

/* Take victims list[0..n) (DRAM blocks marked BUSY) out of the arena into
 * the shadow; parked ones are there already. From then on an access faults
 * and waits for the lock, so no writer races the copy-out. A victim with a
 * page the kernel pins for I/O (an O_DIRECT read in flight into it) cannot
 * be moved: it stays, unmarked, and is dropped from the list, which is
 * compacted with dest[]. Returns how many remain. */
static int64_t unmap_victims(struct tm_pool *p, int64_t *list, int64_t n, uint8_t *dest)
{
    int64_t kept = 0;
    for (int64_t i = 0; i < n;) {
        int64_t j = i + 1;
        int parked = (p->meta.flags[list[i]] & TM_F_SAMPLED) != 0;
        while (j < n && list[j] == list[j - 1] + 1 && ((p->meta.flags[list[j]] & TM_F_SAMPLED) != 0) == parked)
            j++;
        int64_t moved = parked ? j - i : tm_uffd_park(p, list[i], j - i);
        for (int64_t k = i; k < j; k++) {
            int64_t again = k == i + moved && p->forks ? unshare_and_park(p, list[k], j - k) : 0;
            moved += again;
            if (k == i + moved) { /* pinned */
                tm_block_victim_pinned(p, list[k]);
                p->st.pinned_skips++;
                moved += tm_uffd_park(p, list[k] + 1, j - k - 1) + 1;
                continue;
            }
            list[kept] = list[k];
            dest[kept++] = dest[k];
        }
        i = j;
    }
    return kept;
}

/* Whether victim b's copy in the shadow equals its slot's: no write needed. */
static int clean(struct tm_pool *p, int64_t b)
{
    if (p->meta.slot[b] == TM_NO_SLOT || (p->meta.flags[b] & TM_F_DIRTY))
        return 0;
    return !(p->xflags[b] & TM_X_VERIFY) || tm_slot_intact(p, b, tm_shadow_of(p, b));
}

static int free_shadow_run(struct tm_pool *p, int64_t b, int64_t n)
{
    return tm_os_zap(tm_shadow_of(p, b), (size_t)n << p->bshift);
}

/* Demote list[0..n) (DRAM blocks marked BUSY; dest[i]: the tier wanted for
 * block i, 0 for the engine's choice). Returns how many left DRAM. */
static int64_t demote_list(tm_worker *w, int64_t *list, int64_t n, uint8_t *dest)
{
    struct tm_pool *p = w->pool;
    for (int64_t i = 0; i < n; i++) /* taken for this demotion alone */
        tm_assert(tm_block_state(p, list[i]) == TM_BS_VICTIM);
    n = unmap_victims(p, list, n, dest);
    if (!n)
        return 0;
    int64_t nd = 0; /* victims to write, moved to the front of the list */
    for (int64_t i = 0; i < n; i++) {
        int64_t b = list[i];
        uint8_t d = dest[i];
        if (clean(p, b))
            continue;
        list[i] = list[nd];
        dest[i] = dest[nd];
        list[nd] = b;
        dest[nd++] = d;
    }
    for (int64_t i = 0; i < nd; i++) {
        int64_t b = list[i];
        uint32_t g = p->meta.slot[b];
        if (g != TM_NO_SLOT && tm_tier_kept(tm_slot_tier(p, g), tm_slot_local(p, g)))
            tm_slot_release(p, b); /* a forked child reads its old data there: written elsewhere */
        tm_tier *first = dest[i] == TM_NVME ? &p->nvme : &p->pmem;
        tm_tier *second = first == &p->pmem ? &p->nvme : &p->pmem;
        if (p->meta.slot[b] == TM_NO_SLOT && tm_slot_take(p, first, b) < 0 && tm_slot_take(p, second, b) < 0)
            tm_set_error(p, "no lower-tier slot for block %lld", (long long)b);
    }
    /* Write each tier's share, straight from the shadow. A tier that fails
     * has its victims retried on the other tier; a victim that cannot be
     * written anywhere stays in DRAM (the budget is overrun rather than data
     * lost). The first writes, the bulk of the work, run outside the lock on
     * an unlocked worker (the background's): the victims are busy and in the
     * shadow, so no one else reads or changes them or their slots, and a
     * fault on one waits until they are woken below. */
    enum { TO_WRITE, WRITTEN, FAILED };
    size_t nstate = nd > 0 ? (size_t)nd : 1;
    uint8_t state[nstate];
    memset(state, TO_WRITE, nstate);
    for (int64_t i = 0; i < nd; i++)
        if (p->meta.slot[list[i]] == TM_NO_SLOT)
            state[i] = FAILED;
    tm_io ios[nd ? nd : 1];
    int first[2] = {0, 0}; /* the first write's result, PMEM and NVMe */
    if (w->unlocked_io) {
        p->writeback_blocks += n;
        tm_unlock(p);
    }
    uint8_t sent[nstate]; /* the tier each victim's first write went to */
    for (int64_t i = 0; i < nd; i++) {
        sent[i] = state[i] == TO_WRITE ? (uint8_t)tm_slot_tier(p, p->meta.slot[list[i]])->id : 0;
        if (sent[i])
            tm_slot_seal(p, list[i], tm_shadow_of(p, list[i]));
    }
    for (int id = TM_PMEM; id <= TM_NVME; id++) {
        tm_tier *t = tm_tier_by_id(p, id);
        int k = t->nslots ? tm_slot_ios(p, t, list, nd, NULL, 1, ios, state) : 0;
        first[id - TM_PMEM] = k ? tm_tier_writev(t, w->ioq, ios, k) : 0;
    }
    if (w->unlocked_io) {
        tm_lock(p);
        p->writeback_blocks -= n;
    }
    for (int attempt = 0; attempt < 2; attempt++) {
        for (int id = TM_PMEM; id <= TM_NVME; id++) {
            tm_tier *t = tm_tier_by_id(p, id), *other = tm_tier_by_id(p, id == TM_PMEM ? TM_NVME : TM_PMEM);
            int r = first[id - TM_PMEM];
            if (attempt > 0) {
                int k = t->nslots ? tm_slot_ios(p, t, list, nd, NULL, 1, ios, state) : 0;
                if (!k)
                    continue;
                r = tm_tier_writev(t, w->ioq, ios, k);
            }
            if (r < 0) {
                p->st.io_errors++;
                tm_set_error(p, "%s write during demotion: %s", t->name, strerror(-r));
            }
            for (int64_t i = 0; i < nd; i++) {
                int64_t b = list[i];
                if (state[i] != TO_WRITE || tm_slot_tier(p, p->meta.slot[b]) != t)
                    continue;
                if (attempt == 0 && sent[i] != id)
                    continue; /* moved here after the first writes: written next */
                if (r == 0) {
                    state[i] = WRITTEN;
                } else if (attempt == 0) { /* elsewhere, next */
                    /* A full disk: the slot of a clean DRAM block already
                     * holds disk space; else another tier. */
                    uint64_t s = r == -ENOSPC ? tm_slot_steal(p, t) : UINT64_MAX;
                    tm_slot_release(p, b);
                    if (s != UINT64_MAX)
                        p->meta.slot[b] = t->first_slot + (uint32_t)s;
                    if (s != UINT64_MAX || tm_slot_take(p, other, b) == 0)
                        tm_slot_seal(p, b, tm_shadow_of(p, b));
                    else
                        state[i] = FAILED;
                } else {
                    state[i] = FAILED;
                }
            }
        }
    }
    /* Those that left give their pages back; the others are mapped again,
     * dirty. Each set is sorted into address order so that runs coalesce. */
    int64_t nleft = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t b = list[i];
        if ((i < nd && state[i] != WRITTEN) || p->meta.slot[b] == TM_NO_SLOT) {
            uint32_t g = p->meta.slot[b];
            if (g != TM_NO_SLOT) { /* a failed write left nothing valid there */
                tm_tier *t = tm_slot_tier(p, g);
                tm_tier_discard(t, g - t->first_slot, 1);
                tm_slot_release(p, b);
            }
            tm_block_victim_stays(p, b);
            continue;
        }
        tm_block_victim_left(p, b, tm_slot_tier(p, p->meta.slot[b])->id);
        p->resident--;
        p->st.demotions++;
        if (i < nd)
            p->st.bytes_written += p->bs;
        else
            p->st.clean_drops++;
        list[i] = list[nleft];
        list[nleft++] = b;
    }
    tm_sort_ids(list, nleft);
    tm_for_runs(p, list, nleft, free_shadow_run);
    if (w->unlocked_io) { /* threads that faulted on them meanwhile */
        tm_for_runs(p, list, nleft, tm_uffd_wake);
        pthread_cond_broadcast(&p->io_cond);
    }
    tm_sort_ids(list + nleft, n - nleft);
    tm_for_runs(p, list + nleft, n - nleft, tm_uffd_restore);
    return nleft;
}

/* New slots go to PMEM first; when it is full, its coldest blocks move to
 * NVMe to make room. Done before victims use the I/O buffer. */
static void pmem_room(tm_worker *w, int64_t want)
{
    struct tm_pool *p = w->pool;
    if (p->pmem.nslots && p->nvme.nslots && p->pmem.used + (uint64_t)want > p->pmem.nslots)
        cascade_pmem(w, want - (int64_t)(p->pmem.nslots - p->pmem.used));
}

int64_t tm_demote(tm_worker *w, int64_t want)
{
    struct tm_pool *p = w->pool;
    if (want > p->batch_blocks)
        want = p->batch_blocks;
    int64_t *list = w->list + p->batch_blocks;
    uint8_t dest[want > 0 ? want : 1];
    pmem_room(w, want);
    int64_t moved = demote_list(w, list, tm_victims_pick(p, want, list, dest), dest);
    if (moved || !p->policy.select_victims)
        return moved;
    /* The policy's victims were all pinned for I/O (or none was valid), and
     * it would name them again: CLOCK's hand moves on past them. */
    memset(dest, 0, (size_t)want);
    return demote_list(w, list, tm_victims_clock(p, want, list), dest);
}

int64_t tm_demote_blocks(tm_worker *w, int64_t *blocks, int64_t n)
{
    struct tm_pool *p = w->pool;
    int64_t *list = w->list + p->batch_blocks, m = 0;
    for (int64_t i = 0; i < n && m < p->batch_blocks; i++) {
        int64_t b = blocks[i];
        if (p->meta.tier[b] != TM_DRAM || (p->meta.flags[b] & TM_F_BUSY))
            continue;
        tm_block_take_victim(p, b);
        list[m++] = b;
    }
    uint8_t dest[m ? m : 1];
    memset(dest, 0, sizeof dest);
    pmem_room(w, m);
    return demote_list(w, list, m, dest);
}

/* Make room for up to n more blocks in DRAM, demoting under the lock.
 * Returns how many fit, which is less than n only when nothing more could
 * be demoted: the caller shrinks its plan rather than overrun the budget. */
int64_t tm_demote_room(tm_worker *w, int64_t n)
{
    struct tm_pool *p = w->pool;
    while (p->resident + n > p->dram_blocks) {
        /* Demote a whole batch when we must demote at all: fewer, larger
         * writes, and headroom for the next faults. */
        int64_t want = p->resident + n - p->dram_blocks;
        if (want < p->batch_blocks)
            want = p->batch_blocks;
        int64_t moved = tm_demote(w, want);
        if (moved == 0) {
            int64_t fit = p->dram_blocks - p->resident;
            return fit > 0 ? fit : 0;
        }
        if (w >= p->workers && w < p->workers + p->nworkers) /* a fault's */
            tm_watermark_fault_demoted(p, moved);
    }
    return n;
}

/* Room for the block a fault waits for and the n - 1 planned after it: the
 * plan shrinks to what fits, and when not even the faulting block does
 * (every DRAM block pinned, nothing in flight) the budget is overrun by it
 * alone rather than the thread left waiting. */
int64_t tm_demote_fault_room(tm_worker *w, int64_t n)
{
    int64_t fit = tm_demote_room(w, n);
    if (fit == 0) {
        w->pool->st.budget_overruns++;
        fit = 1;
    }
    return fit;
}
