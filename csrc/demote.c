/* demote.c: demotion (DRAM -> PMEM, and PMEM -> NVMe when PMEM is full).
 * Victims are moved out of the arena into the shadow, checked and written
 * from there outside the lock, and give their pages back; a victim that
 * cannot be written anywhere stays in DRAM. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "block.h"

/* Requests writing n blocks from buf (block i at buf + i blocks) to the
 * global slots to[0..n) of tier t, merging adjacent slots; those with
 * skip[i] set are left out. */
static int slots_ios(struct tm_pool *p, tm_tier *t, const uint32_t *to, int64_t n, uint8_t *buf,
                     const uint8_t *skip, tm_io *ios)
{
    int k = 0;
    for (int64_t i = 0; i < n; i++) {
        if (skip[i])
            continue;
        uint64_t s = to[i] - t->first_slot;
        uint8_t *at = buf + ((size_t)i << p->bshift);
        if (k > 0 && ios[k - 1].slot + ios[k - 1].nblocks == s && ios[k - 1].nblocks < p->batch_max &&
            (uint8_t *)ios[k - 1].buf + ((size_t)ios[k - 1].nblocks << p->bshift) == at)
            ios[k - 1].nblocks++;
        else
            ios[k++] = (tm_io){s, at, 1};
    }
    return k;
}

/* The PMEM -> NVMe cascade: the blocks the PMEM hand finds that nobody has
 * in flight get NVMe slots and are marked CASCADING (busy) under the lock;
 * they are read from PMEM, checked and written to NVMe with it released (a
 * fault on one waits for the wake at the end, a free waits for the end:
 * release.c); then, under the lock again, those written take their NVMe
 * slot and give back their PMEM one, and the others stay in PMEM. A block
 * whose PMEM copy fails its checksum stays there (and fails when read):
 * moving it would give damaged data a fresh checksum. */
int64_t tm_demote_cascade(tm_worker *w, int64_t want)
{
    struct tm_pool *p = w->pool;
    if (!p->pmem.nslots || !p->nvme.nslots || want <= 0)
        return 0;
    if (want > p->batch_blocks)
        want = p->batch_blocks;
    int64_t *list = w->list + 2 * p->batch_max;
    uint32_t to[want];
    int64_t n = 0;
    for (int64_t scanned = 0; n < want && scanned < p->scan_end; scanned++) {
        int64_t b = tm_scan_next(p, &p->pmem_hand);
        if (p->meta.tier[b] != TM_PMEM || !tm_block_free_to_move(p, b))
            continue;
        uint64_t s = tm_tier_slot_alloc(&p->nvme, UINT64_MAX);
        if (s == UINT64_MAX && (s = tm_slot_steal(p, &p->nvme)) == UINT64_MAX)
            break; /* NVMe is full */
        to[n] = p->nvme.first_slot + (uint32_t)s;
        list[n++] = b;
    }
    if (!n)
        return 0;
    for (int64_t i = 0; i < n; i++)
        tm_block_start_cascade(p, list[i]);
    p->cascade_blocks += n;
    tm_unlock(p);
    tm_io ios[n];
    uint8_t bad[n]; /* not to be moved */
    int k = tm_slot_ios(p, &p->pmem, list, n, w->iobuf, 0, ios, NULL);
    tm_io_bytes(p, tm_ios_bytes(p, ios, k));
    int rr = tm_tier_readv(&p->pmem, w->ioq, ios, k), wr = 0;
    for (int64_t i = 0; i < n; i++)
        bad[i] = rr < 0 || !tm_slot_intact(p, list[i], w->iobuf + ((size_t)i << p->bshift));
    k = slots_ios(p, &p->nvme, to, n, w->iobuf, bad, ios);
    tm_io_bytes(p, tm_ios_bytes(p, ios, k));
    wr = k ? tm_tier_writev(&p->nvme, w->ioq, ios, k) : 0;
    tm_lock(p);
    p->cascade_blocks -= n;
    if (rr < 0) {
        p->st.io_errors++;
        tm_set_error(p, "pmem read while moving blocks to nvme: %s", strerror(-rr));
    } else if (wr < 0) {
        p->st.io_errors++;
        tm_set_error(p, "nvme write while moving blocks from pmem: %s", strerror(-wr));
    }
    int64_t moved = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t b = list[i];
        uint32_t old = p->meta.slot[b];
        if (bad[i] || wr < 0) {
            if (bad[i] && rr == 0)
                tm_set_error(p, "pmem block %lld failed its checksum", (long long)b);
            tm_tier_slot_free(&p->nvme, to[i] - p->nvme.first_slot);
            tm_block_end_cascade(p, b);
            continue;
        }
        p->nvme.csum[to[i] - p->nvme.first_slot] = p->pmem.csum[old - p->pmem.first_slot];
        p->meta.slot[b] = to[i];
        tm_tier_slot_free(&p->pmem, old - p->pmem.first_slot);
        tm_tier_discard(&p->pmem, old - p->pmem.first_slot, 1);
        tm_block_cascaded(p, b);
        p->st.demotions++;
        p->st.bytes_written += p->bs;
        moved++;
    }
    /* Threads that faulted on them meanwhile fault again and are served. */
    tm_sort_ids(list, n);
    tm_for_runs(p, list, n, tm_uffd_wake);
    pthread_cond_broadcast(&p->io_cond);
    return moved;
}

/* Park blocks [b, b+n) whose first block would not move: after a fork its
 * pages may be shared with a child, which UFFDIO_MOVE refuses like pinned
 * ones. Made the parent's own (a copy while the child lives, else taken
 * back), they move; a pinned page stays pinned (a pin for writing had
 * already made it the parent's own) and still refuses. Its write protection
 * was lifted for that (tm_block_unprotected). */
static int64_t unshare_and_park(struct tm_pool *p, int64_t b, int64_t n)
{
    if (tm_uffd_unshare(p, b, 1) < 0)
        return 0;
    tm_block_unprotected(p, b, 0);
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

static int free_shadow_run(struct tm_pool *p, int64_t b, int64_t n)
{
    return tm_os_zap(tm_shadow_of(p, b), (size_t)n << p->bshift);
}

/* What becomes of each victim of a demotion. A zeroed block (TM_X_ZERO) is
 * checked: still all ZERO, it is dropped to UNBACKED, else written.
 * TO_WRITE is 0: the states are the skip list of tm_slot_ios. */
enum { TO_WRITE, WRITTEN, FAILED, CLEAN, VERIFY, ZERO_CHECK, ZERO };

/* Write the victims of list[0..n) that are TO_WRITE to their slots, straight
 * from the shadow, sealing each slot's checksum first (lock released):
 * sent[i] is the tier victim i went to (0: none), res[] each tier's result. */
static void write_victims(tm_worker *w, const int64_t *list, int64_t n, const uint8_t *state, uint8_t *sent,
                          int res[2])
{
    struct tm_pool *p = w->pool;
    tm_io ios[n];
    for (int64_t i = 0; i < n; i++) {
        sent[i] = state[i] == TO_WRITE ? (uint8_t)tm_slot_tier(p, p->meta.slot[list[i]])->id : 0;
        if (sent[i])
            tm_slot_seal(p, list[i], tm_shadow_of(p, list[i]));
    }
    for (int id = TM_PMEM; id <= TM_NVME; id++) {
        tm_tier *t = tm_tier_by_id(p, id);
        int k = t->nslots ? tm_slot_ios(p, t, list, n, NULL, 1, ios, state) : 0;
        tm_io_bytes(p, tm_ios_bytes(p, ios, k));
        res[id - TM_PMEM] = k ? tm_tier_writev(t, w->ioq, ios, k) : 0;
    }
}

/* Demote list[0..n) (DRAM blocks marked BUSY; dest[i]: the tier wanted for
 * block i, 0 for the engine's choice). Returns how many left DRAM.
 *
 * Under the lock the victims are unmapped, and each is found clean (its slot
 * holds its data: dropped without a write), to verify (moved back from the
 * shadow, TM_X_VERIFY: its checksum decides), or to write (given a slot).
 * The checksums and the writes run with the lock released: the victims are
 * busy and in the shadow, so no one else reads or changes them or their
 * slots, and a fault on one waits until they are woken below. A tier that
 * fails has its victims retried on the other tier (also unlocked); a victim
 * that cannot be written anywhere stays in DRAM (the budget is overrun
 * rather than data lost). */
static int64_t demote_list(tm_worker *w, int64_t *list, int64_t n, uint8_t *dest)
{
    struct tm_pool *p = w->pool;
    for (int64_t i = 0; i < n; i++) /* taken for this demotion alone */
        tm_assert(tm_block_state(p, list[i]) == TM_BS_VICTIM);
    n = unmap_victims(p, list, n, dest);
    if (!n)
        return 0;
    uint8_t state[n], sent[n];
    int io = 0; /* whether anything is to be checked or written */
    for (int64_t i = 0; i < n; i++) {
        int64_t b = list[i];
        uint32_t g = p->meta.slot[b];
        int kept = g != TM_NO_SLOT && tm_tier_kept(tm_slot_tier(p, g), tm_slot_local(p, g));
        if (g != TM_NO_SLOT && !(p->meta.flags[b] & TM_F_DIRTY) && (!(p->xflags[b] & TM_X_VERIFY) || !kept)) {
            state[i] = (p->xflags[b] & TM_X_VERIFY) ? VERIFY : CLEAN;
            io |= state[i] == VERIFY;
            continue;
        }
        if (kept) /* a forked child reads its old data there: written elsewhere */
            tm_slot_release(p, b);
        tm_tier *first = dest[i] == TM_NVME ? &p->nvme : &p->pmem;
        tm_tier *second = first == &p->pmem ? &p->nvme : &p->pmem;
        if (p->meta.slot[b] == TM_NO_SLOT && tm_slot_take(p, first, b) < 0 && tm_slot_take(p, second, b) < 0) {
            tm_set_error(p, "no lower-tier slot for block %lld", (long long)b);
            state[i] = FAILED;
            continue;
        }
        /* A zeroed block gets its slot too, to be written at once if it
         * turns out not to be zero any more. */
        state[i] = (p->xflags[b] & TM_X_ZERO) ? ZERO_CHECK : TO_WRITE;
        io = 1;
    }
    p->writeback_blocks += n;
    for (int attempt = 0; io && attempt < 2; attempt++) {
        int res[2];
        tm_unlock(p);
        if (attempt == 0)
            for (int64_t i = 0; i < n; i++)
                if (state[i] == VERIFY)
                    state[i] = tm_slot_intact(p, list[i], tm_shadow_of(p, list[i])) ? CLEAN : TO_WRITE;
                else if (state[i] == ZERO_CHECK)
                    state[i] = tm_all_zero(tm_shadow_of(p, list[i]), p->bs) ? ZERO : TO_WRITE;
        write_victims(w, list, n, state, sent, res);
        tm_lock(p);
        for (int id = TM_PMEM; id <= TM_NVME; id++)
            if (res[id - TM_PMEM] < 0) {
                p->st.io_errors++;
                tm_set_error(p, "%s write during demotion: %s", tm_tier_by_id(p, id)->name,
                             strerror(-res[id - TM_PMEM]));
            }
        io = 0;
        for (int64_t i = 0; i < n; i++) {
            if (!sent[i])
                continue;
            int r = res[sent[i] - TM_PMEM];
            if (r == 0) {
                state[i] = WRITTEN;
                continue;
            }
            state[i] = FAILED;
            if (attempt > 0)
                continue;
            /* Elsewhere, next: on a full disk the slot of a clean DRAM block
             * already holds disk space; else the other tier. */
            int64_t b = list[i];
            tm_tier *t = tm_tier_by_id(p, sent[i]), *other = tm_tier_by_id(p, sent[i] == TM_PMEM ? TM_NVME : TM_PMEM);
            uint64_t s = r == -ENOSPC ? tm_slot_steal(p, t) : UINT64_MAX;
            tm_slot_release(p, b);
            if (s != UINT64_MAX)
                p->meta.slot[b] = t->first_slot + (uint32_t)s;
            if (s != UINT64_MAX || tm_slot_take(p, other, b) == 0) {
                state[i] = TO_WRITE;
                io = 1;
            }
        }
    }
    p->writeback_blocks -= n;
    /* Those that left give their pages back; the others are mapped again,
     * dirty. Each set is sorted into address order so that runs coalesce. */
    int64_t nleft = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t b = list[i];
        if (state[i] == ZERO) {
            tm_slot_release(p, b); /* taken for nothing: nothing was written there */
            tm_block_victim_zeroed(p, b);
        } else if ((state[i] != WRITTEN && state[i] != CLEAN) || p->meta.slot[b] == TM_NO_SLOT) {
            uint32_t g = p->meta.slot[b];
            if (g != TM_NO_SLOT && state[i] != CLEAN) { /* a failed write left nothing valid there */
                tm_tier *t = tm_slot_tier(p, g);
                tm_tier_discard(t, g - t->first_slot, 1);
                tm_slot_release(p, b);
            }
            tm_block_victim_stays(p, b);
            continue;
        } else {
            tm_block_victim_left(p, b, tm_slot_tier(p, p->meta.slot[b])->id);
            if (p->ghost)
                tm_ghost_evicted(p->ghost, b);
        }
        p->resident--;
        p->st.demotions++;
        if (state[i] == WRITTEN)
            p->st.bytes_written += p->bs;
        else
            p->st.clean_drops++;
        list[i] = list[nleft];
        list[nleft++] = b;
    }
    tm_sort_ids(list, nleft);
    tm_for_runs(p, list, nleft, free_shadow_run);
    tm_for_runs(p, list, nleft, tm_uffd_wake); /* threads that faulted on them meanwhile */
    pthread_cond_broadcast(&p->io_cond);
    tm_sort_ids(list + nleft, n - nleft);
    tm_for_runs(p, list + nleft, n - nleft, tm_uffd_restore);
    return nleft;
}

/* New slots go to PMEM first; when it is full, its coldest blocks move to
 * NVMe to make room (the background keeps PMEM headroom, so this is rare on
 * a fault's path). Done before victims are taken: the lock is released. */
static void pmem_room(tm_worker *w, int64_t want)
{
    struct tm_pool *p = w->pool;
    if (p->pmem.nslots && p->nvme.nslots && p->pmem.used + (uint64_t)want > p->pmem.nslots)
        tm_demote_cascade(w, want - (int64_t)(p->pmem.nslots - p->pmem.used));
}

int64_t tm_demote(tm_worker *w, int64_t want)
{
    struct tm_pool *p = w->pool;
    int64_t *list = w->list + p->batch_max;
    pmem_room(w, want < p->batch_blocks ? want : p->batch_blocks);
    if (want > p->batch_blocks) /* after the cascade: a resize may have changed it meanwhile */
        want = p->batch_blocks;
    uint8_t dest[want > 0 ? want : 1];
    int64_t moved = demote_list(w, list, tm_victims_pick(p, want, list, dest), dest);
    if (moved || !p->policy.select_victims)
        return moved;
    /* The policy's victims were all pinned for I/O (or none was valid), and
     * it would name them again: CLOCK's hand moves on past them. */
    memset(dest, 0, (size_t)(want > 0 ? want : 1));
    return demote_list(w, list, tm_victims_clock(p, want, list), dest);
}

static int demotable(const struct tm_pool *p, int64_t b)
{
    return p->meta.tier[b] == TM_DRAM && !(p->meta.flags[b] & TM_F_BUSY);
}

int64_t tm_demote_blocks(tm_worker *w, int64_t *blocks, int64_t n)
{
    struct tm_pool *p = w->pool;
    int64_t *list = w->list + p->batch_max, m = 0;
    for (int64_t i = 0; i < n; i++)
        m += demotable(p, blocks[i]);
    pmem_room(w, m < p->batch_blocks ? m : p->batch_blocks);
    m = 0; /* the lock was released: look again */
    for (int64_t i = 0; i < n && m < p->batch_blocks; i++) {
        int64_t b = blocks[i];
        if (!demotable(p, b))
            continue;
        tm_block_take_victim(p, b);
        list[m++] = b;
    }
    uint8_t dest[m ? m : 1];
    memset(dest, 0, sizeof dest);
    return demote_list(w, list, m, dest);
}

/* Make room for up to n more blocks in DRAM. The victims' writes release
 * the lock, so the caller's plan (flagged loading, counted in
 * planned_blocks) is kept from everyone else meanwhile, and room is
 * checked again each time the lock is taken back. Returns how many fit,
 * which is less than n only when nothing more could be demoted and no
 * writeback in flight will free room: the caller cuts its plan to that
 * rather than overrun the budget. */
int64_t tm_demote_room(tm_worker *w, int64_t n)
{
    struct tm_pool *p = w->pool;
    /* Spares are given back first: room without I/O. */
    for (tm_spare_room(p, n); p->resident + n > p->dram_blocks; tm_spare_room(p, n)) {
        /* Demote a whole batch when we must demote at all: fewer, larger
         * writes, and headroom for the next faults. */
        int64_t want = p->resident + n - p->dram_blocks;
        if (want < p->batch_blocks)
            want = p->batch_blocks;
        int64_t moved = tm_demote(w, want);
        if (moved) {
            if (w >= p->workers && w < p->workers + p->nworkers) /* a fault's */
                tm_watermark_fault_demoted(p, moved);
            continue;
        }
        if (p->writeback_blocks) { /* every victim is being written: room comes */
            p->st.writeback_waits++;
            pthread_cond_wait(&p->io_cond, &p->lock);
            continue;
        }
        int64_t fit = p->dram_blocks - p->resident;
        return fit > 0 ? (fit < n ? fit : n) : 0;
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
