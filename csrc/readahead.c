/* readahead.c: stream readahead. A sequential stream has its next runs
 * read asynchronously into buffers of their own while the application
 * works; the run a fault reaches is mapped on the fault path, those after
 * it by an idle handler (fill_fd). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "block.h"

/* Runs of readahead: one mapped as the stream reaches it, one its next fault
 * reaches, and between them those mapped ahead by idle handlers. Their
 * buffers are memory outside the budget: an eighth of it, so the runs mapped
 * ahead (depth - 2) hold at most a sixteenth of DRAM before the stream uses
 * them; at least two, at most TM_RA_MAX. A small budget maps none ahead:
 * many blocks in flight would leave the policy nothing but advised-hot
 * blocks to take, and the buffers would be a large share of the process.
 * Buffers are touched only when a stream uses them. */
static int readahead_depth(const struct tm_pool *p)
{
    int64_t d = p->dram_blocks / 8 / p->batch_max;
    return d < 2 ? 2 : d > TM_RA_MAX ? TM_RA_MAX : (int)d;
}

/* Reap run r's NVMe reads (none in a pool without NVMe). */
static int readahead_wait(struct tm_pool *p, tm_ra_run *r)
{
    return p->nvme.nslots ? tm_tier_wait_reads(&p->nvme, r->q) : 0;
}

int tm_readahead_init(struct tm_pool *p)
{
    size_t len = (size_t)p->batch_max << p->bshift;
    int depth = readahead_depth(p);
    for (int k = 0; k < depth; k++) {
        tm_ra_run *r = &p->ra.run[k];
        r->buf = tm_os_io_buffer(len, 0);
        r->slots = calloc((size_t)p->batch_max, sizeof(uint32_t));
        r->blocks = calloc((size_t)p->batch_max, sizeof(int64_t));
        if (!r->buf || !r->slots || !r->blocks)
            return -ENOMEM;
        r->q = tm_ioq_create();
        if (!r->q)
            break; /* no native AIO left: fewer runs, or no readahead */
        p->ra.depth = k + 1;
    }
    return 0;
}

void tm_readahead_fini(struct tm_pool *p)
{
    for (int k = 0; k < TM_RA_MAX; k++) {
        tm_ra_run *r = &p->ra.run[k];
        if (r->state == TM_RA_READING)
            readahead_wait(p, r);
        tm_ioq_destroy(r->q);
        tm_os_unmap(r->buf, (size_t)p->batch_max << p->bshift);
        free(r->slots);
        free(r->blocks);
        *r = (tm_ra_run){0};
    }
    p->ra.depth = 0;
}

/* Start reading run r: the lower-tier blocks of the next batch of arena
 * blocks from `start`, skipping those in DRAM. NVMe blocks are read
 * asynchronously into r's buffer; PMEM ones, a copy, when the run is
 * finished (by an idle handler, if it is mapped ahead). They are marked
 * busy: nothing but a release can change them until then. Returns whether a
 * run was started. */
static int readahead_run(struct tm_pool *p, tm_ra_run *r, int64_t start)
{
    int64_t *list = r->blocks, n = 0, c = start;
    for (; c < p->nblocks && c < start + 2 * p->batch_blocks && n < p->batch_blocks; c++) {
        uint8_t t = p->meta.tier[c];
        if (!(p->meta.flags[c] & TM_F_ALLOC) || (p->meta.flags[c] & (TM_F_BUSY | TM_F_POISON)) ||
            t == TM_UNBACKED)
            break;
        if (t != TM_DRAM)
            list[n++] = c;
    }
    if (!n)
        return 0;
    tm_io ios[n];
    int nio = tm_slot_ios(p, &p->nvme, list, n, r->buf, 0, ios, NULL);
    if (nio && tm_tier_submit_readv(&p->nvme, r->q, ios, nio) < 0)
        return 0; /* no readahead: the fault path reads synchronously */
    for (int64_t i = 0; i < n; i++) {
        r->slots[i] = p->meta.slot[list[i]];
        tm_block_start_readahead(p, list[i]);
    }
    r->start = start;
    r->end = c;
    r->n = n;
    r->async = 0;
    r->state = TM_RA_READING;
    p->st.readahead += (uint64_t)n;
    return 1;
}

/* Keep the stream whose next run starts at `start` read ahead: follow its
 * runs in flight, then start new ones into free buffers, up to depth - 1
 * (a buffer stays for the run being mapped). */
void tm_readahead_submit(struct tm_pool *p, int64_t start)
{
    int ahead = 0;
    for (int k = 0; k < p->ra.depth && ahead < p->ra.depth; k++) {
        tm_ra_run *r = &p->ra.run[k];
        if (r->state != TM_RA_IDLE && r->state != TM_RA_MAPPING && r->start == start) {
            start = r->end;
            ahead++;
            k = -1; /* from the first again: the runs are in no order */
        }
    }
    for (int k = 0; k < p->ra.depth && ahead < p->ra.depth - 1; k++) {
        tm_ra_run *r = &p->ra.run[k];
        if (r->state != TM_RA_IDLE)
            continue;
        if (!readahead_run(p, r, start))
            return;
        start = r->end;
        ahead++;
    }
}

/* After a fault reached the stream's readahead at `start`: the runs in
 * flight after it are mapped by an idle handler as soon as they are read,
 * while the application works, all but the last, which the stream's next
 * fault reaches and which keeps the readahead going (its fault starts the
 * next runs), as the kernel's PG_readahead mark does. */
static void readahead_mark_async(struct tm_pool *p, int64_t start)
{
    tm_ra_run *chain[TM_RA_MAX];
    int n = 0;
    for (int k = 0; k < p->ra.depth && n < p->ra.depth; k++) {
        tm_ra_run *r = &p->ra.run[k];
        if (r->state == TM_RA_READING && r->start == start) {
            chain[n++] = r;
            start = r->end;
            k = -1;
        }
    }
    for (int i = 0; i + 1 < n; i++)
        chain[i]->async = 1;
    if (n > 1 && p->fill_fd >= 0) /* an idle handler maps them */
        tm_os_kick(p->fill_fd);
}

/* The end of the runs in flight that follow each other from `start`
 * (start if none). */
int64_t tm_readahead_chain_end(const struct tm_pool *p, int64_t start)
{
    for (int k = 0; k < p->ra.depth; k++) {
        const tm_ra_run *r = &p->ra.run[k];
        if ((r->state == TM_RA_READING || r->state == TM_RA_WAITING) && r->start == start) {
            start = r->end;
            k = -1;
        }
    }
    return start;
}

/* The run being read that holds b, or NULL. Not a range test: the blocks
 * between a run's were resident at submission, and one of those may since
 * have gone down and be loading on another thread (busy, but not ours to
 * map). A run being waited for is another handler's: b is busy until then. */
tm_ra_run *tm_readahead_holding(struct tm_pool *p, int64_t b)
{
    for (int k = 0; k < p->ra.depth; k++) {
        tm_ra_run *r = &p->ra.run[k];
        if (r->state != TM_RA_READING || b < r->start || b >= r->end)
            continue;
        int64_t lo = 0, hi = r->n; /* ascending */
        while (lo < hi) {
            int64_t mid = lo + (hi - lo) / 2;
            if (r->blocks[mid] < b)
                lo = mid + 1;
            else
                hi = mid;
        }
        if (lo < r->n && r->blocks[lo] == b)
            return r;
    }
    return NULL;
}

int tm_readahead_busy(const struct tm_pool *p)
{
    for (int k = 0; k < p->ra.depth; k++)
        if (p->ra.run[k].state == TM_RA_WAITING || p->ra.run[k].state == TM_RA_MAPPING)
            return 1;
    return 0;
}

/* Drop the runs being read that hold a block of [b, b+n) (lock held; no run
 * is waited for): their I/O is reaped and their blocks are free to move
 * again. A release calls it, so that a readahead never outlives the blocks
 * it was read for. */
void tm_readahead_drop(struct tm_pool *p, int64_t b, int64_t n)
{
    for (int k = 0; k < p->ra.depth; k++) {
        tm_ra_run *r = &p->ra.run[k];
        tm_assert(r->state != TM_RA_WAITING);
        if (r->state != TM_RA_READING || r->start >= b + n || r->end <= b)
            continue;
        tm_io_bytes(p, (uint64_t)r->n << p->bshift); /* its reads may still be in flight: waited for locked */
        readahead_wait(p, r);
        for (int64_t i = 0; i < r->n; i++)
            tm_block_end_readahead(p, r->blocks[i]);
        r->n = 0;
        r->state = TM_RA_IDLE;
    }
}

int tm_readahead_reap(struct tm_pool *p, int64_t b, int64_t n)
{
    for (int k = 0; k < p->ra.depth; k++) {
        tm_ra_run *r = &p->ra.run[k];
        if (r->state != TM_RA_READING || r->start >= b + n || r->end <= b)
            continue;
        r->state = TM_RA_WAITING; /* ours: no fault finishes it, no release drops it */
        tm_unlock(p);
        readahead_wait(p, r);
        tm_lock(p);
        for (int64_t i = 0; i < r->n; i++)
            tm_block_end_readahead(p, r->blocks[i]);
        /* Threads that faulted on its blocks meanwhile fault again. */
        tm_for_runs(p, r->blocks, r->n, tm_uffd_wake);
        r->n = 0;
        r->state = TM_RA_IDLE;
        pthread_cond_broadcast(&p->io_cond);
        return 1;
    }
    return 0;
}

/* Copy run r's kept PMEM blocks into its buffer (no lock: they are busy).
 * Returns whether they arrived. */
static int readahead_copy_pmem(struct tm_pool *p, tm_ra_run *r, const uint8_t *keep)
{
    uint8_t skip[r->n ? r->n : 1];
    for (int64_t i = 0; i < r->n; i++)
        skip[i] = !keep[i];
    tm_io ios[r->n ? r->n : 1];
    int k = p->pmem.nslots ? tm_slot_ios(p, &p->pmem, r->blocks, r->n, r->buf, 0, ios, skip) : 0;
    tm_io_bytes(p, tm_ios_bytes(p, ios, k));
    return !k || tm_tier_readv(&p->pmem, NULL, ios, k) == 0;
}

/* Wait for run r, start the next runs (so the disk works while this one is
 * mapped and used), and map what is still valid: blocks in the same slot as
 * when read. The wait, the PMEM copies, the
 * checksums and the copies into DRAM run with the lock released: the blocks
 * stay busy (a fault on one waits for the wake at the end); while it waits,
 * the run's state keeps other faults from finishing it and releases from
 * dropping it; while it maps, its blocks are loading (a release waits) and
 * its buffer is kept from the next readahead. */
void tm_readahead_finish(tm_worker *w, tm_ra_run *r)
{
    struct tm_pool *p = w->pool;
    int64_t *list = r->blocks, n = r->n;
    uint8_t *buf = r->buf;
    r->state = TM_RA_WAITING;
    tm_unlock(p);
    int rr = readahead_wait(p, r);
    tm_lock(p);
    r->state = TM_RA_MAPPING;
    pthread_cond_broadcast(&p->io_cond); /* a release may wait for that */
    /* A run larger than a batch was sized before the budget shrank and might
     * not fit: like a failed one, its blocks are read again on demand. */
    int valid = rr >= 0 && n <= p->batch_blocks;
    /* The blocks kept are loading from here, so that nobody takes them while
     * room is made; what does not fit is dropped from the end, read again on
     * demand. */
    uint8_t keep[n ? n : 1];
    int64_t loading[n ? n : 1], kept = 0;
    for (int64_t i = 0; i < n; i++) {
        keep[i] = valid && tm_tier_is_lower(p->meta.tier[list[i]]) && p->meta.slot[list[i]] == r->slots[i];
        if (keep[i]) {
            tm_block_keep_readahead(p, list[i]);
            loading[kept++] = list[i];
        } else {
            tm_block_end_readahead(p, list[i]);
        }
    }
    tm_readahead_submit(p, r->end);
    if (!r->async)
        readahead_mark_async(p, r->end);
    int64_t fit = kept ? tm_promote_room(w, 0, loading, kept) : 0;
    for (int64_t i = n - 1; i >= 0 && kept > fit; i--)
        if (keep[i]) {
            keep[i] = 0;
            kept--;
        }
    tm_unlock(p);
    int pmem_ok = readahead_copy_pmem(p, r, keep);
    /* Runs of kept blocks that arrived intact, each mapped with one copy. */
    int64_t start[n ? n : 1], done[n ? n : 1];
    int err[n ? n : 1], runs = 0;
    for (int64_t i = 0; i < n;) {
        int64_t j = i;
        while (j < n && keep[j] && (pmem_ok || tm_slot_tier(p, r->slots[j]) != &p->pmem) &&
               tm_slot_intact(p, list[j], buf + ((size_t)j << p->bshift)))
            j++;
        if (j > i) {
            start[runs] = i;
            done[runs] = tm_promote_map_in(p, 0, list + i, j - i, buf + ((size_t)i << p->bshift), 0, &err[runs]);
            runs++;
        }
        i = j + 1;
    }
    tm_lock(p);
    tm_promote_settle(p, loading, kept);
    uint8_t arrived[n ? n : 1];
    memset(arrived, 0, sizeof arrived);
    for (int i = 0; i < runs; i++) {
        tm_promote_mapped(p, 0, list + start[i], done[i], 0, err[i]); /* wakes those */
        memset(arrived + start[i], 1, (size_t)done[i]);
        if (r->async)
            p->st.readahead_mapped_ahead += (uint64_t)done[i];
    }
    /* Threads that faulted on blocks not mapped fault again and are served. */
    int64_t rest[n ? n : 1], nrest = 0;
    for (int64_t i = 0; i < n; i++)
        if (!arrived[i])
            rest[nrest++] = list[i];
    tm_for_runs(p, rest, nrest, tm_uffd_wake);
    r->n = 0;
    r->state = TM_RA_IDLE;
    pthread_cond_broadcast(&p->io_cond);
}

void tm_readahead_fill(tm_worker *w)
{
    struct tm_pool *p = w->pool;
    for (;;) {
        /* The one the stream reaches first: the runs are in no order. */
        tm_ra_run *next = NULL;
        for (int k = 0; k < p->ra.depth; k++) {
            tm_ra_run *r = &p->ra.run[k];
            if (r->state == TM_RA_READING && r->async && (!next || r->start < next->start))
                next = r;
        }
        if (!next)
            return;
        tm_readahead_finish(w, next); /* the lock is released meanwhile: look again */
    }
}
