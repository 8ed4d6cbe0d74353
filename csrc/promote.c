/* promote.c: promotion. Lower-tier blocks are read into a worker's buffer,
 * checked against their checksums and copied into the arena
 * (UFFDIO_COPY), the reads and copies outside the lock. Also the room and
 * the bookkeeping every load shares (a zero fill, a readahead run). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "block.h"

/* Read list[0..n) (in lower tiers) into w's buffer, verify and copy in what
 * arrived intact, without the lock: sets *err and *what on a failure, and
 * *damaged to the index of the first block that failed its checksum (n if
 * none). Returns how many, from the first, are mapped. */
static int64_t load(tm_worker *w, uint64_t addr, const int64_t *list, int64_t n, int write, int *err,
                    const char **what, int64_t *damaged, int *copy_err)
{
    struct tm_pool *p = w->pool;
    tm_io ios[n];
    *err = *copy_err = 0;
    *damaged = n;
    for (int id = TM_PMEM; id <= TM_NVME; id++) {
        tm_tier *t = tm_tier_by_id(p, id);
        int k = t->nslots ? tm_slot_ios(p, t, list, n, w->iobuf, 0, ios, NULL) : 0;
        tm_io_bytes(p, tm_ios_bytes(p, ios, k));
        int r = k ? tm_tier_readv(t, w->ioq, ios, k) : 0;
        if (r < 0) {
            *err = r;
            *what = t->name;
        }
    }
    if (*err < 0 && n > 1 && addr) { /* retry the block the thread waits for on its own */
        n = 1;
        tm_tier *t = tm_slot_tier(p, p->meta.slot[list[0]]);
        tm_io one = {tm_slot_local(p, p->meta.slot[list[0]]), w->iobuf, 1};
        tm_io_bytes(p, p->bs);
        if (tm_tier_readv(t, w->ioq, &one, 1) == 0)
            *err = -EAGAIN; /* the batch failed, this block did not */
    }
    if (*err < 0 && *err != -EAGAIN)
        return 0;
    /* Map only what arrives intact: blocks after a damaged one stay below. */
    for (int64_t i = 0; i < n; i++)
        if (!tm_slot_intact(p, list[i], w->iobuf + ((size_t)i << p->bshift))) {
            *damaged = i;
            n = i;
        }
    return tm_promote_map_in(p, addr, list, n, w->iobuf, write, copy_err);
}

/* Account for a load (lock held): its errors, then the blocks mapped.
 * Returns how many arrived. */
static int64_t settle_load(struct tm_pool *p, uint64_t addr, int64_t *list, int64_t n, int write, int err,
                           const char *what, int64_t damaged, int64_t done, int copy_err)
{
    const char *tier = tm_slot_tier(p, p->meta.slot[list[0]])->id == TM_PMEM ? "pmem" : "nvme";
    if (err < 0 && err != -EAGAIN && addr) {
        tm_uffd_fail_fault(p, addr, !strcmp(tier, "pmem") ? "pmem read failed" : "nvme read failed", err);
        return 0;
    }
    if (err < 0) { /* ahead of need the blocks stay below and fail when touched */
        p->st.io_errors++;
        tm_set_error(p, "%s read during promotion failed%s", what,
                     err == -EAGAIN ? "; the faulting block alone was read again" : "");
        if (err != -EAGAIN)
            return 0;
    }
    if (damaged < n) {
        p->st.checksum_errors++;
        if (damaged == 0 && addr) {
            tm_uffd_fail_fault(p, addr, !strcmp(tier, "pmem") ? "pmem block failed its checksum" :
                       "nvme block failed its checksum", -EBADMSG);
            return 0;
        }
        tm_set_error(p, "block %lld failed its checksum on promotion ahead of need", (long long)list[damaged]);
        p->meta.flags[list[damaged]] |= TM_F_POISON;
    }
    return tm_promote_mapped(p, addr, list, done, write, copy_err);
}

/* Reserve DRAM for lower-tier blocks list[0..n) and mark them loading:
 * list[0] faulted at addr, or addr is 0 when nobody waits (ahead of need).
 * The blocks are marked first, so that nobody takes them while the room is
 * made with the lock released (planned_blocks); the plan then shrinks to
 * what fits (the blocks cut from it stay below, and the threads that
 * faulted on them meanwhile are woken to fault again). Returns how many are
 * reserved, which tm_promote_load then brings in. */
int64_t tm_promote_reserve(tm_worker *w, uint64_t addr, int64_t *list, int64_t n)
{
    for (int64_t i = 0; i < n; i++) /* free to move: no other thread has it in flight */
        tm_block_start_load(w->pool, list[i]);
    return tm_promote_room(w, addr, list, n);
}

int64_t tm_promote_room(tm_worker *w, uint64_t addr, int64_t *list, int64_t n)
{
    struct tm_pool *p = w->pool;
    p->planned_blocks += n;
    /* Victims are DRAM blocks, never one of list. */
    int64_t fit = addr ? tm_demote_fault_room(w, n) : tm_demote_room(w, n);
    p->planned_blocks -= n;
    for (int64_t i = fit; i < n; i++)
        tm_block_end_load(p, list[i]);
    if (fit < n) {
        tm_for_runs(p, list + fit, n - fit, tm_uffd_wake);
        pthread_cond_broadcast(&p->io_cond); /* a free may wait for them */
    }
    p->resident += fit;
    p->loading_blocks += fit;
    return fit;
}

void tm_promote_settle(struct tm_pool *p, const int64_t *list, int64_t n)
{
    p->resident -= n;
    p->loading_blocks -= n;
    for (int64_t i = 0; i < n; i++)
        tm_block_end_load(p, list[i]);
    pthread_cond_broadcast(&p->io_cond); /* a free or a fork may wait for them */
}

/* Bring the n blocks tm_promote_reserve reserved into DRAM. Returns how many
 * arrived. The reads, checksums and copies run with the lock released: the
 * blocks are busy (a fault on one waits for the wake below), their room is
 * reserved, and nothing moves them or their slots. */
int64_t tm_promote_load(tm_worker *w, uint64_t addr, int64_t *list, int64_t n, int write)
{
    struct tm_pool *p = w->pool;
    int err, copy_err;
    int64_t damaged;
    const char *what = "";
    tm_unlock(p);
    int64_t done = load(w, addr, list, n, write, &err, &what, &damaged, &copy_err);
    tm_lock(p);
    tm_promote_settle(p, list, n);
    int64_t got = settle_load(p, addr, list, n, write, err, what, damaged, done, copy_err);
    /* Threads that faulted on the blocks that did not arrive wait too:
     * woken, they fault again and are answered. */
    tm_for_runs(p, list + got, n - got, tm_uffd_wake);
    return got;
}

int64_t tm_promote_ahead(tm_worker *w, int64_t *list, int64_t n, const char *who)
{
    struct tm_pool *p = w->pool;
    if (n > p->batch_blocks)
        n = p->batch_blocks;
    int64_t m = tm_policy_take_lower(p, list, 0, list, n, who);
    m = m ? tm_promote_reserve(w, 0, list, m) : 0;
    return m ? tm_promote_load(w, 0, list, m, 0) : 0;
}

/* Whether block list[k] (list[0] faulted at addr, 0 if no thread waits for
 * it) is mapped write-protected: all but the one a write faulted on. A
 * block read back unmodified keeps its slot, so its first write is seen and
 * it can later be dropped instead of rewritten. */
static int installed_wp(const struct tm_pool *p, uint64_t addr, const int64_t *list, int64_t k, int write)
{
    return p->dirty_tracking && !(write && addr && k == 0);
}

/* Copy list[0..n) in from buf (list[k]'s data at block k), a run of
 * adjacent blocks per UFFDIO_COPY, without waking anyone. Needs no lock when
 * the blocks are busy. Returns how many, from the first, are mapped; *err
 * is the failure that stopped it. */
int64_t tm_promote_map_in(struct tm_pool *p, uint64_t addr, const int64_t *list, int64_t n, uint8_t *buf, int write,
                      int *err)
{
    int64_t done = 0;
    *err = 0;
    while (done < n) {
        int64_t i = done, j = i + 1;
        int wp = installed_wp(p, addr, list, i, write);
        while (j < n && list[j] == list[j - 1] + 1 && installed_wp(p, addr, list, j, write) == wp)
            j++;
        tm_io_bytes(p, (uint64_t)(j - i) << p->bshift);
        if ((*err = tm_uffd_install(p, list[i], j - i, buf + ((size_t)i << p->bshift), wp)) < 0)
            break;
        done = j;
    }
    return done;
}

/* Account for list[0..done) mapped by map_in (lock held) and wake the
 * threads waiting on them; report a failure that stopped it at `done`. */
int64_t tm_promote_mapped(struct tm_pool *p, uint64_t addr, const int64_t *list, int64_t done, int write, int err)
{
    int64_t b = addr ? list[0] : -1;
    if (err < 0 && done == 0 && addr)
        tm_uffd_fail_fault(p, addr, "UFFDIO_COPY failed", err);
    else if (err < 0)
        tm_set_error(p, "UFFDIO_COPY of prefetched blocks failed: %s", strerror(-err));
    for (int64_t k = 0; k < done; k++) {
        int64_t c = list[k];
        tm_block_resident(p, c, !installed_wp(p, addr, list, k, write));
        if (p->ghost)
            tm_ghost_refault(p->ghost, c, c == b);
        if (c != b)
            tm_policy_access(p, c, TM_ACCESS_AHEAD);
    }
    tm_watermark_resident(p, done);
    tm_for_runs(p, list, done, tm_uffd_wake);
    p->st.promotions += (uint64_t)done;
    p->st.prefetched += (uint64_t)(addr && done ? done - 1 : done);
    p->st.bytes_read += (uint64_t)done << p->bshift;
    return done;
}
