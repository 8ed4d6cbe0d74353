/* migrate.c: placement. Serves a fault by deciding where the block's data
 * comes from, makes room in DRAM by demoting victims (DRAM -> PMEM, and
 * PMEM -> NVMe when PMEM is full), and consults the policy hooks.
 *
 * Every function here runs with the pool lock held.
 *
 * Slots: a block keeps the lower-tier slot it was last written to while it
 * is in DRAM, so a block that was not written since (no TM_F_DIRTY; writes
 * are seen as write-protect faults) is dropped on demotion without I/O. When
 * a tier has no free slot, one is taken back from such a DRAM block, which
 * then counts as dirty. The capacity check at allocation (arena.c) keeps a
 * batch of headroom, so a victim always finds a slot. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "block.h"

/* The scans below (CLOCK, slot reclaim, PMEM cascade) only walk blocks that
 * were ever allocated: the arena's address space is four times its capacity,
 * but first-fit keeps allocations low. */
static int64_t advance(const struct tm_pool *p, int64_t *hand)
{
    int64_t b = *hand < p->scan_end ? *hand : 0;
    *hand = b + 1;
    return b;
}

/* ---- slots ---------------------------------------------------------- */

static tm_tier *tier_by_id(struct tm_pool *p, int id)
{
    return id == TM_PMEM ? &p->pmem : &p->nvme;
}

static uint64_t slot_local(struct tm_pool *p, uint32_t g)
{
    return g - tm_slot_tier(p, g)->first_slot;
}

static void slot_release(struct tm_pool *p, int64_t b)
{
    uint32_t g = p->meta.slot[b];
    if (g == TM_NO_SLOT)
        return;
    tm_tier *t = tm_slot_tier(p, g);
    tm_tier_slot_free(t, g - t->first_slot);
    p->meta.slot[b] = TM_NO_SLOT;
}

/* Take the slot of a DRAM block that holds one in tier t (it becomes dirty).
 * Returns the local slot, or UINT64_MAX if none. */
static uint64_t slot_steal(struct tm_pool *p, tm_tier *t)
{
    for (int64_t i = 0; i < p->scan_end; i++) {
        int64_t b = advance(p, &p->steal_hand);
        uint32_t g = p->meta.slot[b];
        if (p->meta.tier[b] != TM_DRAM || g == TM_NO_SLOT || (p->meta.flags[b] & TM_F_BUSY))
            continue;
        if (tm_slot_tier(p, g) != t || tm_tier_kept(t, g - t->first_slot))
            continue; /* a kept slot is never rewritten */
        p->meta.slot[b] = TM_NO_SLOT;
        p->meta.flags[b] |= TM_F_DIRTY;
        return g - t->first_slot;
    }
    return UINT64_MAX;
}

/* A slot in tier t for block b: free one, else one taken from a DRAM block. */
static int slot_take(struct tm_pool *p, tm_tier *t, int64_t b)
{
    if (!t->nslots)
        return -ENOSPC;
    uint64_t s = tm_tier_slot_alloc(t, UINT64_MAX);
    if (s == UINT64_MAX) {
        s = slot_steal(p, t);
        if (s == UINT64_MAX)
            return -ENOSPC;
    }
    p->meta.slot[b] = t->first_slot + (uint32_t)s;
    return 0;
}

/* ---- checksums: every block written to a lower tier carries one -------- */

static void seal(struct tm_pool *p, int64_t b, const uint8_t *data)
{
    uint32_t g = p->meta.slot[b];
    tm_tier *t = tm_slot_tier(p, g);
    t->csum[g - t->first_slot] = tm_block_checksum(data, p->bs);
}

static int intact(struct tm_pool *p, int64_t b, const uint8_t *data)
{
    uint32_t g = p->meta.slot[b];
    tm_tier *t = tm_slot_tier(p, g);
    return t->csum[g - t->first_slot] == tm_block_checksum(data, p->bs);
}

/* ---- I/O helpers ---------------------------------------------------- */

/* Requests for blocks list[0..n), merging runs of adjacent slots. Block
 * list[i]'s data is at buf + i blocks (an I/O buffer in huge pages: a run is
 * one request, up to a batch), or, when `in_shadow`, at its own place in the
 * shadow (small pages: requests of io_max_blocks, which the disk takes
 * whole). Only blocks whose slot is in tier t and, if skip is given, whose
 * skip[i] is 0. */
static int build_ios(struct tm_pool *p, tm_tier *t, const int64_t *list, int64_t n, uint8_t *buf, int in_shadow,
                     tm_io *ios, const uint8_t *skip)
{
    int64_t max = in_shadow ? p->io_max_blocks : p->batch_max;
    int k = 0;
    for (int64_t i = 0; i < n; i++) {
        uint32_t g = p->meta.slot[list[i]];
        if (g == TM_NO_SLOT || tm_slot_tier(p, g) != t || (skip && skip[i]))
            continue;
        uint64_t s = g - t->first_slot;
        uint8_t *at = in_shadow ? p->shadow + ((size_t)list[i] << p->bshift) : buf + ((size_t)i << p->bshift);
        if (k > 0 && ios[k - 1].slot + ios[k - 1].nblocks == s && ios[k - 1].nblocks < max &&
            (uint8_t *)ios[k - 1].buf + ((size_t)ios[k - 1].nblocks << p->bshift) == at) {
            ios[k - 1].nblocks++;
        } else {
            ios[k++] = (tm_io){s, at, 1};
        }
    }
    return k;
}

static uint8_t *shadow_of(const struct tm_pool *p, int64_t b)
{
    return p->shadow + ((size_t)b << p->bshift);
}

static void sort_ids(int64_t *a, int64_t n)
{
    for (int64_t i = 1; i < n; i++) {
        int64_t v = a[i], j = i;
        for (; j > 0 && a[j - 1] > v; j--)
            a[j] = a[j - 1];
        a[j] = v;
    }
}

/* Apply fn to maximal runs of consecutive block ids in list[0..n). */
static void for_runs(struct tm_pool *p, const int64_t *list, int64_t n, int (*fn)(struct tm_pool *, int64_t, int64_t))
{
    for (int64_t i = 0; i < n;) {
        int64_t j = i + 1;
        while (j < n && list[j] == list[j - 1] + 1)
            j++;
        fn(p, list[i], j - i);
        i = j;
    }
}

static int free_shadow_run(struct tm_pool *p, int64_t b, int64_t n)
{
    return tm_os_zap(shadow_of(p, b), (size_t)n << p->bshift);
}

/* Park blocks [b, b+n) for hint sampling (flagged SAMPLED by the caller). A
 * block the kernel has pinned for I/O stays mapped and loses its flag.
 * Returns how many were parked. */
static int64_t park_for_sampling(struct tm_pool *p, int64_t b, int64_t n)
{
    int64_t parked = 0;
    while (n > 0) {
        int64_t k = tm_fault_park(p, b, n);
        parked += k;
        if (k == n)
            break;
        tm_block_unpark(p, b + k);
        p->st.pinned_skips++;
        b += k + 1;
        n -= k + 1;
    }
    return parked;
}

int64_t tm_migrate_park(struct tm_pool *p, const int64_t *list, int64_t n)
{
    int64_t parked = 0;
    for (int64_t i = 0; i < n;) {
        int64_t j = i + 1;
        while (j < n && list[j] == list[j - 1] + 1)
            j++;
        parked += park_for_sampling(p, list[i], j - i);
        i = j;
    }
    return parked;
}

/* ---- victims -------------------------------------------------------- */

/* CLOCK over the reference bits that faults and sampled hints set. With
 * sampling on, a block whose bit is cleared is also unmapped (a hint sample:
 * its pages stay), so that an access before the hand comes round again sets
 * the bit again; without it, a block in constant use but mapped would look
 * unused. Blocks
 * advised cold go regardless of their bit; blocks advised hot only once two
 * sweeps found nothing else, the blocks of the latest faults only after four
 * (else two blocks that one instruction needs could evict each other
 * forever). Each gets two sweeps: the first may only clear its bit. */
static int recent(const struct tm_pool *p, int64_t b)
{
    for (int i = 0; i < TM_RECENT; i++)
        if (p->recent[i] == b)
            return 1;
    return 0;
}

static int64_t clock_victims(struct tm_pool *p, int64_t want, int64_t *out)
{
    int64_t n = 0, run = -1, len = 0, sampled = 0;
    uint64_t t0 = tm_os_now_ns();
    for (int64_t scanned = 0; n < want && scanned < 6 * p->scan_end; scanned++) {
        int64_t b = advance(p, &p->clock_hand);
        uint8_t f = p->meta.flags[b];
        if (p->meta.tier[b] != TM_DRAM || (f & TM_F_BUSY))
            continue;
        if (scanned < 4 * p->scan_end && recent(p, b))
            continue;
        if ((f & TM_F_HOT) && scanned < 2 * p->scan_end)
            continue;
        if ((f & TM_F_REF) && !(f & TM_F_COLD)) {
            p->meta.flags[b] &= (uint8_t)~TM_F_REF;
            if (!p->sample_budget_ppm || (f & TM_F_SAMPLED))
                continue; /* sampling is off, or the block is parked already */
            tm_block_park(p, b);
            if (len && b != run + len) {
                sampled += park_for_sampling(p, run, len);
                len = 0;
            }
            if (!len)
                run = b;
            len++;
            continue;
        }
        if (len && b >= run && b < run + len) {
            /* The hand came round to the run flagged for sampling before it
             * was parked: park it first, so that a victim is whole in one place. */
            sampled += park_for_sampling(p, run, len);
            len = 0;
        }
        tm_block_take_victim(p, b);
        out[n++] = b;
    }
    if (len)
        sampled += park_for_sampling(p, run, len);
    if (sampled) {
        p->st.sampled += (uint64_t)sampled;
        p->st.sample_ns += tm_os_now_ns() - t0;
    }
    return n;
}

void tm_policy_info(struct tm_pool *p)
{
    int64_t *info = p->policy.info;
    if (!info)
        return;
    info[TM_INFO_ARENA_BLOCKS] = p->nblocks;
    info[TM_INFO_DRAM_BLOCKS] = p->dram_blocks;
    info[TM_INFO_RESIDENT] = p->resident;
    info[TM_INFO_SCAN_END] = p->scan_end;
    info[TM_INFO_BLOCK_SIZE] = (int64_t)p->bs;
    info[TM_INFO_NOW] = (int64_t)p->st.faults;
}

void tm_policy_access(struct tm_pool *p, int64_t b, int kind)
{
    if (p->trace && kind != TM_ACCESS_AHEAD) {
        if (p->trace_n < p->trace_cap) {
            p->trace[p->trace_n++] = b;
            p->st.trace_events++;
        } else {
            p->st.trace_dropped++;
        }
    }
    if (p->policy.on_access) {
        tm_policy_info(p);
        p->policy.on_access(p->policy.state, b, kind, (int64_t)p->st.faults);
    }
}

/* ---- streams: use-once and loops ------------------------------------ */

/* Blocks a sequential stream has passed are demoted before the policy is
 * asked, the most recently passed first. For a scan they are used once; for
 * a loop larger than DRAM the block just passed is the one needed last
 * (Belady's choice), so the blocks the loop's last pass did not reach stay
 * resident across passes and each pass reads about footprint - DRAM + guard.
 * A hot set outside the streams is left to the policy. The `guard` blocks
 * behind a stream's head are kept while the stream is active: code working
 * in chunks reads a chunk again just after passing it. It is not once it
 * has not matched for TM_STREAMS faults, or once a stream started since
 * behind its guard (a loop's next pass: its first victims are then the last
 * pass's last blocks, not the ones it is about to hit). docs/policies.md,
 * "Streams: use-once and loops", has the rule and the simulator's model. */
static int64_t stream_guard(const struct tm_pool *p)
{
    int64_t g = p->dram_blocks / 16;
    return g > p->batch_blocks ? g : p->batch_blocks;
}

/* Take b if it is resident, not advised hot and not one of the latest
 * faults' (marked BUSY: streams' regions may overlap). */
static int stream_takes(struct tm_pool *p, int64_t b)
{
    uint8_t f = p->meta.flags[b];
    if (p->meta.tier[b] != TM_DRAM || (f & (TM_F_ALLOC | TM_F_BUSY | TM_F_HOT)) != TM_F_ALLOC || recent(p, b))
        return 0;
    tm_block_take_victim(p, b);
    return 1;
}

/* Take up to `want` blocks of stream s's passed region below `top`, from the
 * top down: first those passed since it was last looked at ([hi, top)), then
 * those below what was looked at ([start, lo)). [lo, hi) grows to cover what
 * is looked at; if a new look stops short of hi, it restarts there (blocks
 * in between are looked at again later). */
static int64_t stream_take(struct tm_pool *p, tm_stream *s, int64_t top, int64_t want, int64_t *out)
{
    int64_t n = 0, x = top - 1;
    for (; x >= s->hi && x >= s->start && n < want; x--)
        if (stream_takes(p, x))
            out[n++] = x;
    if (x >= s->hi && x >= s->start) { /* stopped short of the old range */
        s->lo = x + 1;
        s->hi = top;
        return n;
    }
    if (top > s->hi)
        s->hi = top;
    for (x = s->lo - 1; x >= s->start && n < want; x--)
        if (stream_takes(p, x))
            out[n++] = x;
    s->lo = x + 1;
    return n;
}

static int stream_active(const struct tm_pool *p, const tm_stream *s, int64_t guard)
{
    if (s->used + TM_STREAMS < p->st.faults)
        return 0;
    for (int i = 0; i < TM_STREAMS; i++) {
        const tm_stream *t = &p->streams[i];
        if (t->window && t->born > s->used && t->start < s->next - guard)
            return 0;
    }
    return 1;
}

static int64_t stream_victims(struct tm_pool *p, int64_t want, int64_t *out)
{
    tm_stream *order[TM_STREAMS];
    int ns = 0;
    for (int i = 0; i < TM_STREAMS; i++) { /* sequential ones, most recently used first */
        tm_stream *s = &p->streams[i];
        if (!s->window || s->stride != 1)
            continue;
        int k = ns++;
        for (; k > 0 && order[k - 1]->used < s->used; k--)
            order[k] = order[k - 1];
        order[k] = s;
    }
    int64_t n = 0, guard = stream_guard(p);
    uint8_t active[TM_STREAMS];
    for (int i = 0; i < ns && n < want; i++) {
        tm_stream *s = order[i];
        active[i] = (uint8_t)stream_active(p, s, guard);
        int64_t top = active[i] ? s->next - guard : s->next;
        if (top > s->start)
            n += stream_take(p, s, top, want - n, out + n);
    }
    /* Before the policy: guarded blocks the stream's latest fault has
     * passed, the most recent first (the policy could take blocks mapped
     * ahead of a stream, certain to be read again). */
    for (int i = 0; i < ns && n < want; i++) {
        tm_stream *s = order[i];
        int64_t lo = s->next - guard > s->start ? s->next - guard : s->start;
        for (int64_t x = s->last - 1; active[i] && x >= lo && n < want; x--)
            if (stream_takes(p, x))
                out[n++] = x;
    }
    p->st.stream_victims += (uint64_t)n;
    return n;
}

/* The policy's victims, each checked; any bad answer rejects the whole
 * answer in favour of CLOCK. Chosen blocks come back marked BUSY, with the
 * tier each should go to in dest[] (0: the engine's choice). */
static int64_t policy_victims(struct tm_pool *p, int64_t want, int64_t *out, uint8_t *dest)
{
    if (want <= 0)
        return 0;
    if (p->policy.select_victims) {
        tm_policy_info(p);
        int64_t n = p->policy.select_victims(p->policy.state, p->meta.tier, p->meta.flags, p->scan_end, want, out,
                                             dest);
        int ok = n >= 0 && n <= want;
        int64_t named = 0;
        for (; ok && named < n; named++) {
            int64_t b = out[named];
            ok = b >= 0 && b < p->scan_end && p->meta.tier[b] == TM_DRAM && !(p->xflags[b] & TM_X_NAMED) &&
                 (dest[named] == 0 || dest[named] == TM_PMEM || dest[named] == TM_NVME);
            if (ok)
                p->xflags[b] |= TM_X_NAMED; /* a block named twice is an error */
        }
        for (int64_t i = 0; i < named; i++)
            p->xflags[out[i]] &= (uint8_t)~TM_X_NAMED;
        /* Valid, but not taken: blocks in flight (being written back or
         * loaded: busy), and the blocks of the latest faults, since one
         * instruction may need them all at once and a policy that kept naming
         * them would have them evict each other forever. */
        int64_t kept = 0;
        for (int64_t i = 0; ok && i < n; i++) {
            int64_t b = out[i];
            if ((p->meta.flags[b] & TM_F_BUSY) || recent(p, b))
                continue;
            tm_block_take_victim(p, b);
            out[kept] = b;
            dest[kept++] = dest[i];
        }
        if (kept > 0)
            return kept;
        if (!ok) {
            p->st.policy_errors++;
            tm_set_error(p, "policy select_victims returned an invalid answer (%lld blocks for %lld asked); "
                         "CLOCK used instead", (long long)n, (long long)want);
        }
        memset(dest, 0, (size_t)want);
    }
    return clock_victims(p, want, out);
}

/* Victims for `want` blocks: the streams' passed blocks, then the
 * policy's. Chosen blocks come back marked BUSY, with the tier each should
 * go to in dest[] (0: the engine's choice). */
static int64_t pick_victims(struct tm_pool *p, int64_t want, int64_t *out, uint8_t *dest)
{
    if (want <= 0)
        return 0;
    memset(dest, 0, (size_t)want);
    int64_t n = stream_victims(p, want, out);
    return n + policy_victims(p, want - n, out + n, dest + n);
}

/* ---- PMEM -> NVMe --------------------------------------------------- */

/* Move up to `want` PMEM-resident blocks to NVMe to free PMEM slots. */
static void cascade_pmem(tm_worker *w, int64_t want)
{
    struct tm_pool *p = w->pool;
    int64_t *list = w->list + 2 * p->batch_blocks;
    int64_t n = 0;
    for (int64_t scanned = 0; n < want && scanned < p->scan_end; scanned++) {
        int64_t b = advance(p, &p->pmem_hand);
        if (p->meta.tier[b] == TM_PMEM && !(p->meta.flags[b] & TM_F_BUSY)) /* busy: being loaded */
            list[n++] = b;
    }
    if (!n)
        return;
    tm_io ios[n];
    int k = build_ios(p, &p->pmem, list, n, w->iobuf, 0, ios, NULL);
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
        if (!intact(p, list[i], w->iobuf + ((size_t)i << p->bshift))) {
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
        if (slot_take(p, &p->nvme, list[moved]) < 0) {
            p->meta.slot[list[moved]] = old[moved];
            break;
        }
        p->nvme.csum[p->meta.slot[list[moved]] - p->nvme.first_slot] = p->pmem.csum[old[moved] - p->pmem.first_slot];
    }
    k = build_ios(p, &p->nvme, list, moved, w->iobuf, 0, ios, NULL);
    r = k ? tm_tier_writev(&p->nvme, w->ioq, ios, k) : 0;
    for (int64_t i = 0; i < moved; i++) {
        int64_t b = list[i];
        if (r < 0) { /* stays in PMEM */
            slot_release(p, b);
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

/* ---- demotion ------------------------------------------------------- */

/* Take victims list[0..n) (DRAM blocks marked BUSY) out of the arena into
 * the shadow; parked ones are there already. From then on an access faults
 * and waits for the lock, so no writer races the copy-out. A victim with a
 * page the kernel pins for I/O (an O_DIRECT read in flight into it) cannot
 * be moved: it stays, unmarked, and is dropped from the list, which is
 * compacted with dest[]. Returns how many remain. */
/* Park blocks [b, b+n) whose first block would not move: after a fork its
 * pages may be shared with a child, which UFFDIO_MOVE refuses like pinned
 * ones. Made the parent's own (a copy while the child lives, else taken
 * back), they move; a pinned page stays pinned (a pin for writing had
 * already made it the parent's own) and still refuses. Its write protection
 * was lifted for that, so its checksum decides whether it is clean. */
static int64_t unshare_and_park(struct tm_pool *p, int64_t b, int64_t n)
{
    if (tm_fault_unshare(p, b, 1) < 0)
        return 0;
    p->xflags[b] |= TM_X_VERIFY;
    p->st.fork_unshared++;
    return tm_fault_park(p, b, n);
}

static int64_t unmap_victims(struct tm_pool *p, int64_t *list, int64_t n, uint8_t *dest)
{
    int64_t kept = 0;
    for (int64_t i = 0; i < n;) {
        int64_t j = i + 1;
        int parked = (p->meta.flags[list[i]] & TM_F_SAMPLED) != 0;
        while (j < n && list[j] == list[j - 1] + 1 && ((p->meta.flags[list[j]] & TM_F_SAMPLED) != 0) == parked)
            j++;
        int64_t moved = parked ? j - i : tm_fault_park(p, list[i], j - i);
        for (int64_t k = i; k < j; k++) {
            int64_t again = k == i + moved && p->forks ? unshare_and_park(p, list[k], j - k) : 0;
            moved += again;
            if (k == i + moved) { /* pinned */
                tm_block_victim_pinned(p, list[k]);
                p->st.pinned_skips++;
                moved += tm_fault_park(p, list[k] + 1, j - k - 1) + 1;
                continue;
            }
            list[kept] = list[k];
            dest[kept++] = dest[k];
        }
        i = j;
    }
    return kept;
}

static int unpark_run(struct tm_pool *p, int64_t b, int64_t n)
{
    int r = tm_fault_unpark(p, b, n);
    if (r < 0)
        tm_set_error(p, "cannot map blocks %lld..%lld back after a failed demotion: %s", (long long)b,
                     (long long)(b + n - 1), strerror(-r));
    tm_fault_wake(p, b, n);
    return r;
}

/* Whether victim b's copy in the shadow equals its slot's: no write needed. */
static int clean(struct tm_pool *p, int64_t b)
{
    if (p->meta.slot[b] == TM_NO_SLOT || (p->meta.flags[b] & TM_F_DIRTY))
        return 0;
    return !(p->xflags[b] & TM_X_VERIFY) || intact(p, b, shadow_of(p, b));
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
        if (g != TM_NO_SLOT && tm_tier_kept(tm_slot_tier(p, g), slot_local(p, g)))
            slot_release(p, b); /* a forked child reads its old data there: written elsewhere */
        tm_tier *first = dest[i] == TM_NVME ? &p->nvme : &p->pmem;
        tm_tier *second = first == &p->pmem ? &p->nvme : &p->pmem;
        if (p->meta.slot[b] == TM_NO_SLOT && slot_take(p, first, b) < 0 && slot_take(p, second, b) < 0)
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
            seal(p, list[i], shadow_of(p, list[i]));
    }
    for (int id = TM_PMEM; id <= TM_NVME; id++) {
        tm_tier *t = tier_by_id(p, id);
        int k = t->nslots ? build_ios(p, t, list, nd, NULL, 1, ios, state) : 0;
        first[id - TM_PMEM] = k ? tm_tier_writev(t, w->ioq, ios, k) : 0;
    }
    if (w->unlocked_io) {
        tm_lock(p);
        p->writeback_blocks -= n;
    }
    for (int attempt = 0; attempt < 2; attempt++) {
        for (int id = TM_PMEM; id <= TM_NVME; id++) {
            tm_tier *t = tier_by_id(p, id), *other = tier_by_id(p, id == TM_PMEM ? TM_NVME : TM_PMEM);
            int r = first[id - TM_PMEM];
            if (attempt > 0) {
                int k = t->nslots ? build_ios(p, t, list, nd, NULL, 1, ios, state) : 0;
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
                    uint64_t s = r == -ENOSPC ? slot_steal(p, t) : UINT64_MAX;
                    slot_release(p, b);
                    if (s != UINT64_MAX)
                        p->meta.slot[b] = t->first_slot + (uint32_t)s;
                    if (s != UINT64_MAX || slot_take(p, other, b) == 0)
                        seal(p, b, shadow_of(p, b));
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
                slot_release(p, b);
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
    sort_ids(list, nleft);
    for_runs(p, list, nleft, free_shadow_run);
    if (w->unlocked_io) { /* threads that faulted on them meanwhile */
        for_runs(p, list, nleft, tm_fault_wake);
        pthread_cond_broadcast(&p->io_cond);
    }
    sort_ids(list + nleft, n - nleft);
    for_runs(p, list + nleft, n - nleft, unpark_run);
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

int64_t tm_migrate_demote(tm_worker *w, int64_t want)
{
    struct tm_pool *p = w->pool;
    if (want > p->batch_blocks)
        want = p->batch_blocks;
    int64_t *list = w->list + p->batch_blocks;
    uint8_t dest[want > 0 ? want : 1];
    pmem_room(w, want);
    int64_t moved = demote_list(w, list, pick_victims(p, want, list, dest), dest);
    if (moved || !p->policy.select_victims)
        return moved;
    /* The policy's victims were all pinned for I/O (or none was valid), and
     * it would name them again: CLOCK's hand moves on past them. */
    memset(dest, 0, (size_t)want);
    return demote_list(w, list, clock_victims(p, want, list), dest);
}

int64_t tm_migrate_demote_blocks(tm_worker *w, int64_t *blocks, int64_t n)
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
static int64_t ensure_room(tm_worker *w, int64_t n)
{
    struct tm_pool *p = w->pool;
    while (p->resident + n > p->dram_blocks) {
        /* Demote a whole batch when we must demote at all: fewer, larger
         * writes, and headroom for the next faults. */
        int64_t want = p->resident + n - p->dram_blocks;
        if (want < p->batch_blocks)
            want = p->batch_blocks;
        int64_t moved = tm_migrate_demote(w, want);
        if (moved == 0) {
            int64_t fit = p->dram_blocks - p->resident;
            return fit > 0 ? fit : 0;
        }
        if (w >= p->workers && w < p->workers + p->nworkers) /* a fault's */
            tm_background_fault_demoted(p, moved);
    }
    return n;
}

/* Room for the block a fault waits for and the n - 1 planned after it: the
 * plan shrinks to what fits, and when not even the faulting block does
 * (every DRAM block pinned, nothing in flight) the budget is overrun by it
 * alone rather than the thread left waiting. */
static int64_t fault_room(tm_worker *w, int64_t n)
{
    int64_t fit = ensure_room(w, n);
    if (fit == 0) {
        w->pool->st.budget_overruns++;
        fit = 1;
    }
    return fit;
}

static void note_resident(struct tm_pool *p, int64_t n)
{
    p->resident += n;
    uint64_t used = (uint64_t)p->resident << p->bshift;
    if (used > p->st.dram.peak)
        p->st.dram.peak = used;
    tm_background_used(p);
}

/* ---- promotion ------------------------------------------------------ */

/* ---- streams: sequential and strided fault patterns ------------------- */

#define TM_MAX_STRIDE 256 /* blocks: farther apart, two faults are unrelated */

static int64_t grow(const struct tm_pool *p, int64_t window)
{
    return window * 2 > p->batch_blocks ? p->batch_blocks : window * 2;
}

/* The stream a fault at b continues, its window grown; or a new stream in
 * the least recently used entry, with a stride guessed from the latest
 * fault, confirmed if the next fault keeps it. Advice on
 * b's range overrides: sequential starts at the largest window, random
 * keeps the smallest. */
static tm_stream *stream_of(struct tm_pool *p, int64_t b)
{
    tm_stream *found = NULL, *oldest = &p->streams[0], *latest = &p->streams[0];
    for (int i = 0; i < TM_STREAMS && !found; i++) {
        tm_stream *s = &p->streams[i];
        if (s->window && b >= s->next && (b <= s->next + s->window || b < s->ahead)) {
            s->stride = 1;
            found = s;
        } else if (s->window && s->stride > 1 && b == s->last + s->stride) {
            found = s;
        }
        if (s->used < oldest->used)
            oldest = s;
        if (s->used > latest->used)
            latest = s;
    }
    if (found) {
        found->window = grow(p, found->window);
    } else {
        int64_t d = latest->window ? b - latest->last : 0;
        found = oldest;
        *found = (tm_stream){.next = b + 1, .window = 1, .stride = d > 1 && d <= TM_MAX_STRIDE ? d : 1,
                             .start = b, .lo = b, .hi = b, .born = p->st.faults};
    }
    found->last = b;
    found->used = p->st.faults;
    int adv = tm_range_advice(p, b);
    if (adv == TM_ADV_SEQUENTIAL)
        found->window = p->batch_blocks;
    else if (adv == TM_ADV_RANDOM)
        found->window = 1;
    return found;
}

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

/* Append to list[0..n) those of cand[0..m) (which may be list + n) that
 * are allocated, in a lower tier, not busy and not listed yet; each other
 * one is an error of `who` (the hook that named it). Returns how many were
 * appended. */
static int64_t take_lower(struct tm_pool *p, int64_t *list, int64_t n, const int64_t *cand, int64_t m,
                          const char *who)
{
    int64_t kept = n;
    for (int64_t i = 0; i < n; i++)
        p->xflags[list[i]] |= TM_X_NAMED; /* marks what is taken: no duplicates */
    for (int64_t i = 0; i < m; i++) {
        int64_t c = cand[i];
        int ok = c >= 0 && c < p->scan_end && tm_block_state(p, c) == TM_BS_LOWER && !(p->xflags[c] & TM_X_NAMED);
        if (!ok) {
            p->st.policy_errors++;
            tm_set_error(p, "policy %s named block %lld, which is not an allocated lower-tier block free to "
                         "move; skipped", who, (long long)c);
            continue;
        }
        if (p->meta.flags[c] & TM_F_POISON)
            continue; /* known unreadable: only a fault on it reads it again */
        p->xflags[c] |= TM_X_NAMED;
        list[kept++] = c;
    }
    for (int64_t i = 0; i < kept; i++)
        p->xflags[list[i]] &= (uint8_t)~TM_X_NAMED;
    return kept - n;
}

/* Add the policy's prefetch choices that are valid lower-tier blocks. */
static int64_t policy_prefetch(struct tm_pool *p, int64_t b, int64_t *list, int64_t n)
{
    int64_t room = p->batch_blocks - n;
    if (!p->policy.prefetch || room <= 0)
        return n;
    int64_t *extra = list + n;
    tm_policy_info(p);
    int64_t m = p->policy.prefetch(p->policy.state, p->meta.tier, p->meta.flags, p->scan_end, b, room, extra);
    if (m < 0 || m > room) {
        p->st.policy_errors++;
        tm_set_error(p, "policy prefetch returned %lld for at most %lld blocks", (long long)m, (long long)room);
        return n;
    }
    return n + take_lower(p, list, n, extra, m, "prefetch");
}

/* Answer the fault at addr with SIGBUS (EFAULT for a kernel-mode access).
 * The block is flagged: nothing reads it ahead of need any more. */
static void fail_fault(struct tm_pool *p, uint64_t addr, const char *what, int err)
{
    p->st.io_errors++;
    p->meta.flags[tm_block_of(p, (void *)(uintptr_t)addr)] |= TM_F_POISON;
    int r = tm_fault_poison(p, addr);
    if (r == 0) {
        p->st.sigbus_sent++;
        tm_set_error(p, "%s for the fault at %#llx: %s; the faulting thread got SIGBUS", what,
                     (unsigned long long)addr, strerror(-err));
        return;
    }
    /* Never leave the thread waiting: woken, it faults again and is
     * answered again. */
    tm_set_error(p, "%s for the fault at %#llx: %s; UFFDIO_POISON failed (%s), the thread will retry", what,
                 (unsigned long long)addr, strerror(-err), strerror(-r));
    tm_fault_wake(p, tm_block_of(p, (void *)(uintptr_t)addr), 1);
}

static int64_t install(struct tm_pool *p, uint64_t addr, const int64_t *list, int64_t n, uint8_t *buf, int write);
static int64_t map_in(struct tm_pool *p, uint64_t addr, const int64_t *list, int64_t n, uint8_t *buf, int write,
                      int *err);
static int64_t mapped(struct tm_pool *p, uint64_t addr, const int64_t *list, int64_t done, int write, int err);
static void readahead_submit(struct tm_pool *p, int64_t start);

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
        tm_tier *t = tier_by_id(p, id);
        int k = t->nslots ? build_ios(p, t, list, n, w->iobuf, 0, ios, NULL) : 0;
        int r = k ? tm_tier_readv(t, w->ioq, ios, k) : 0;
        if (r < 0) {
            *err = r;
            *what = t->name;
        }
    }
    if (*err < 0 && n > 1 && addr) { /* retry the block the thread waits for on its own */
        n = 1;
        tm_tier *t = tm_slot_tier(p, p->meta.slot[list[0]]);
        tm_io one = {slot_local(p, p->meta.slot[list[0]]), w->iobuf, 1};
        if (tm_tier_readv(t, w->ioq, &one, 1) == 0)
            *err = -EAGAIN; /* the batch failed, this block did not */
    }
    if (*err < 0 && *err != -EAGAIN)
        return 0;
    /* Map only what arrives intact: blocks after a damaged one stay below. */
    for (int64_t i = 0; i < n; i++)
        if (!intact(p, list[i], w->iobuf + ((size_t)i << p->bshift))) {
            *damaged = i;
            n = i;
        }
    return map_in(p, addr, list, n, w->iobuf, write, copy_err);
}

/* Account for a load (lock held): its errors, then the blocks mapped.
 * Returns how many arrived. */
static int64_t settle_load(struct tm_pool *p, uint64_t addr, int64_t *list, int64_t n, int write, int err,
                           const char *what, int64_t damaged, int64_t done, int copy_err)
{
    const char *tier = tm_slot_tier(p, p->meta.slot[list[0]])->id == TM_PMEM ? "pmem" : "nvme";
    if (err < 0 && err != -EAGAIN && addr) {
        fail_fault(p, addr, !strcmp(tier, "pmem") ? "pmem read failed" : "nvme read failed", err);
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
            fail_fault(p, addr, !strcmp(tier, "pmem") ? "pmem block failed its checksum" :
                       "nvme block failed its checksum", -EBADMSG);
            return 0;
        }
        tm_set_error(p, "block %lld failed its checksum on promotion ahead of need", (long long)list[damaged]);
        p->meta.flags[list[damaged]] |= TM_F_POISON;
    }
    return mapped(p, addr, list, done, write, copy_err);
}

/* Bring list[0..n) into DRAM from lower tiers: list[0] faulted at addr, or
 * addr is 0 when nobody waits (ahead of need). With `stream`, read the
 * blocks after the last one ahead, asynchronously. Returns how many arrived.
 * On a worker with unlocked loads the reads, checksums and copies run with
 * the lock released: the blocks are busy (a fault on one waits for the wake
 * below), their room is reserved, and nothing moves them or their slots. */
static int64_t promote(tm_worker *w, uint64_t addr, int64_t *list, int64_t n, int write, int stream)
{
    struct tm_pool *p = w->pool;
    for (int64_t i = 0; i < n; i++) /* free to move: no other thread has it in flight */
        tm_assert(tm_block_state(p, list[i]) == TM_BS_LOWER);
    /* Victims are DRAM blocks, never one of list; the blocks cut from the
     * plan were not taken and stay below. */
    n = addr ? fault_room(w, n) : ensure_room(w, n);
    if (!n)
        return 0;
    for (int64_t i = 0; i < n; i++)
        tm_block_start_load(p, list[i]);
    p->resident += n;
    p->loading_blocks += n;
    if (stream) /* a stream: read ahead of it while this is read and mapped */
        readahead_submit(p, list[n - 1] + 1);
    int err, copy_err;
    int64_t damaged;
    const char *what = "";
    if (w->unlocked_loads)
        tm_unlock(p);
    int64_t done = load(w, addr, list, n, write, &err, &what, &damaged, &copy_err);
    if (w->unlocked_loads)
        tm_lock(p);
    p->resident -= n;
    p->loading_blocks -= n;
    for (int64_t i = 0; i < n; i++)
        tm_block_end_load(p, list[i]);
    if (w->unlocked_loads)
        pthread_cond_broadcast(&p->io_cond);
    int64_t got = settle_load(p, addr, list, n, write, err, what, damaged, done, copy_err);
    /* Threads that faulted on the blocks that did not arrive wait too:
     * woken, they fault again and are answered. */
    for_runs(p, list + got, n - got, tm_fault_wake);
    return got;
}

int64_t tm_migrate_promote_ahead(tm_worker *w, int64_t *list, int64_t n, const char *who)
{
    struct tm_pool *p = w->pool;
    if (n > p->batch_blocks)
        n = p->batch_blocks;
    int64_t m = take_lower(p, list, 0, list, n, who);
    return m ? promote(w, 0, list, m, 0, 0) : 0;
}

/* Map list[0..n) (list[0] faulted at addr, 0 if no thread waits for it) from
 * buf, where list[k]'s data is at block k, and account for it. Runs of
 * adjacent blocks take one UFFDIO_COPY each. A block read back unmodified
 * keeps its slot and is mapped write-protected, so its first write is seen
 * and it can later be dropped instead of rewritten. */
/* Whether block list[k] is mapped write-protected (clean, tracked): all but
 * the one a write faulted on. */
static int installed_wp(const struct tm_pool *p, uint64_t addr, const int64_t *list, int64_t k, int write)
{
    return p->dirty_tracking && !(write && addr && k == 0);
}

/* Copy list[0..n) in from buf (list[k]'s data at block k), a run of
 * adjacent blocks per UFFDIO_COPY, without waking anyone. Needs no lock when
 * the blocks are busy. Returns how many, from the first, are mapped; *err
 * is the failure that stopped it. */
static int64_t map_in(struct tm_pool *p, uint64_t addr, const int64_t *list, int64_t n, uint8_t *buf, int write,
                      int *err)
{
    int64_t done = 0;
    *err = 0;
    while (done < n) {
        int64_t i = done, j = i + 1;
        int wp = installed_wp(p, addr, list, i, write);
        while (j < n && list[j] == list[j - 1] + 1 && installed_wp(p, addr, list, j, write) == wp)
            j++;
        if ((*err = tm_fault_install(p, list[i], j - i, buf + ((size_t)i << p->bshift), wp)) < 0)
            break;
        done = j;
    }
    return done;
}

/* Account for list[0..done) mapped by map_in (lock held) and wake the
 * threads waiting on them; report a failure that stopped it at `done`. */
static int64_t mapped(struct tm_pool *p, uint64_t addr, const int64_t *list, int64_t done, int write, int err)
{
    int64_t b = addr ? list[0] : -1;
    if (err < 0 && done == 0 && addr)
        fail_fault(p, addr, "UFFDIO_COPY failed", err);
    else if (err < 0)
        tm_set_error(p, "UFFDIO_COPY of prefetched blocks failed: %s", strerror(-err));
    for (int64_t k = 0; k < done; k++) {
        int64_t c = list[k];
        tm_block_resident(p, c, !installed_wp(p, addr, list, k, write));
        if (c != b)
            tm_policy_access(p, c, TM_ACCESS_AHEAD);
    }
    note_resident(p, done);
    for_runs(p, list, done, tm_fault_wake);
    p->st.promotions += (uint64_t)done;
    p->st.prefetched += (uint64_t)(addr && done ? done - 1 : done);
    p->st.bytes_read += (uint64_t)done << p->bshift;
    return done;
}

static int64_t install(struct tm_pool *p, uint64_t addr, const int64_t *list, int64_t n, uint8_t *buf, int write)
{
    int err;
    int64_t done = map_in(p, addr, list, n, buf, write, &err);
    return mapped(p, addr, list, done, write, err);
}

int tm_worker_init(struct tm_pool *p, tm_worker *w, int populate)
{
    w->pool = p;
    w->iobuf = tm_os_io_buffer((size_t)p->batch_max << p->bshift, populate);
    w->list = calloc((size_t)p->batch_max * 3, sizeof(int64_t));
    w->ioq = tm_ioq_create(); /* NULL: synchronous requests */
    return w->iobuf && w->list ? 0 : -ENOMEM;
}

void tm_worker_fini(tm_worker *w)
{
    if (w->iobuf)
        tm_os_unmap(w->iobuf, (size_t)w->pool->batch_max << w->pool->bshift);
    free(w->list);
    tm_ioq_destroy(w->ioq);
    w->iobuf = NULL;
    w->list = NULL;
    w->ioq = NULL;
}

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

int tm_migrate_init(struct tm_pool *p)
{
    size_t len = (size_t)p->batch_max << p->bshift;
    for (int i = 0; i < TM_RECENT; i++)
        p->recent[i] = -1;
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

void tm_migrate_fini(struct tm_pool *p)
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

/* ---- stream readahead ------------------------------------------------ */

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
    int nio = build_ios(p, &p->nvme, list, n, r->buf, 0, ios, NULL);
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
static void readahead_submit(struct tm_pool *p, int64_t start)
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
    if (n > 1)
        tm_fault_kick_fill(p);
}

/* The end of the runs in flight that follow each other from `start`
 * (start if none). */
static int64_t readahead_chain_end(const struct tm_pool *p, int64_t start)
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
static tm_ra_run *readahead_holding(struct tm_pool *p, int64_t b)
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

static int readahead_busy(const struct tm_pool *p)
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
static void readahead_drop(struct tm_pool *p, int64_t b, int64_t n)
{
    for (int k = 0; k < p->ra.depth; k++) {
        tm_ra_run *r = &p->ra.run[k];
        tm_assert(r->state != TM_RA_WAITING);
        if (r->state != TM_RA_READING || r->start >= b + n || r->end <= b)
            continue;
        readahead_wait(p, r);
        for (int64_t i = 0; i < r->n; i++)
            tm_block_end_readahead(p, r->blocks[i]);
        r->n = 0;
        r->state = TM_RA_IDLE;
    }
}

/* Copy run r's kept PMEM blocks into its buffer (no lock: they are busy).
 * Returns whether they arrived. */
static int readahead_copy_pmem(struct tm_pool *p, tm_ra_run *r, const uint8_t *keep)
{
    uint8_t skip[r->n ? r->n : 1];
    for (int64_t i = 0; i < r->n; i++)
        skip[i] = !keep[i];
    tm_io ios[r->n ? r->n : 1];
    int k = p->pmem.nslots ? build_ios(p, &p->pmem, r->blocks, r->n, r->buf, 0, ios, skip) : 0;
    return !k || tm_tier_readv(&p->pmem, NULL, ios, k) == 0;
}

/* Wait for run r, start the next runs (so the disk works while this one is
 * mapped and used), and map what is still valid: blocks in the same slot as
 * when read. On a worker with unlocked loads the wait, the PMEM copies, the
 * checksums and the copies into DRAM run with the lock released: the blocks
 * stay busy (a fault on one waits for the wake at the end); while it waits,
 * the run's state keeps other faults from finishing it and releases from
 * dropping it; while it maps, its blocks are loading (a release waits) and
 * its buffer is kept from the next readahead. */
static void readahead_finish(tm_worker *w, tm_ra_run *r)
{
    struct tm_pool *p = w->pool;
    int64_t *list = r->blocks, n = r->n;
    uint8_t *buf = r->buf;
    r->state = TM_RA_WAITING;
    if (w->unlocked_loads)
        tm_unlock(p);
    int rr = readahead_wait(p, r);
    if (w->unlocked_loads)
        tm_lock(p);
    r->state = TM_RA_MAPPING;
    pthread_cond_broadcast(&p->io_cond); /* a release may wait for that */
    /* A run larger than a batch was sized before the budget shrank and might
     * not fit: like a failed one, its blocks are read again on demand. */
    int valid = rr >= 0 && n <= p->batch_blocks;
    uint8_t keep[n];
    int64_t kept = 0;
    for (int64_t i = 0; i < n; i++) {
        keep[i] = valid && tm_tier_is_lower(p->meta.tier[list[i]]) && p->meta.slot[list[i]] == r->slots[i];
        if (keep[i])
            kept++;
        else
            tm_block_end_readahead(p, list[i]);
    }
    readahead_submit(p, r->end);
    if (!r->async)
        readahead_mark_async(p, r->end);
    /* What does not fit is dropped from the end, read again on demand. */
    int64_t fit = kept ? ensure_room(w, kept) : 0;
    for (int64_t i = n - 1; i >= 0 && kept > fit; i--)
        if (keep[i]) {
            keep[i] = 0;
            kept--;
            tm_block_end_readahead(p, list[i]);
        }
    for (int64_t i = 0; i < n; i++)
        if (keep[i])
            tm_block_keep_readahead(p, list[i]);
    p->resident += kept; /* their room, reserved */
    p->loading_blocks += kept;
    if (w->unlocked_loads)
        tm_unlock(p);
    int pmem_ok = readahead_copy_pmem(p, r, keep);
    /* Runs of kept blocks that arrived intact, each mapped with one copy. */
    int64_t start[n ? n : 1], len[n ? n : 1], done[n ? n : 1];
    int err[n ? n : 1], runs = 0;
    for (int64_t i = 0; i < n;) {
        int64_t j = i;
        while (j < n && keep[j] && (pmem_ok || tm_slot_tier(p, r->slots[j]) != &p->pmem) &&
               intact(p, list[j], buf + ((size_t)j << p->bshift)))
            j++;
        if (j > i) {
            start[runs] = i;
            len[runs] = j - i;
            done[runs] = map_in(p, 0, list + i, j - i, buf + ((size_t)i << p->bshift), 0, &err[runs]);
            runs++;
        }
        i = j + 1;
    }
    if (w->unlocked_loads)
        tm_lock(p);
    p->resident -= kept;
    p->loading_blocks -= kept;
    for (int64_t i = 0; i < n; i++)
        if (keep[i])
            tm_block_end_load(p, list[i]);
    uint8_t arrived[n ? n : 1];
    memset(arrived, 0, sizeof arrived);
    for (int i = 0; i < runs; i++) {
        mapped(p, 0, list + start[i], done[i], 0, err[i]); /* wakes those */
        memset(arrived + start[i], 1, (size_t)done[i]);
        if (r->async)
            p->st.readahead_mapped_ahead += (uint64_t)done[i];
    }
    /* Threads that faulted on blocks not mapped fault again and are served. */
    int64_t rest[n ? n : 1], nrest = 0;
    for (int64_t i = 0; i < n; i++)
        if (!arrived[i])
            rest[nrest++] = list[i];
    for_runs(p, rest, nrest, tm_fault_wake);
    r->n = 0;
    r->state = TM_RA_IDLE;
    pthread_cond_broadcast(&p->io_cond);
}

void tm_migrate_fill(tm_worker *w)
{
    struct tm_pool *p = w->pool;
    for (int k = 0; k < p->ra.depth; k++) {
        tm_ra_run *r = &p->ra.run[k];
        if (r->state == TM_RA_READING && r->async) {
            readahead_finish(w, r);
            k = -1; /* the lock was released: look again from the first */
        }
    }
}

static void zero_fill(tm_worker *w, uint64_t addr, int64_t *list, int64_t n)
{
    struct tm_pool *p = w->pool;
    for (int64_t i = 0; i < n; i++)
        tm_assert(tm_block_state(p, list[i]) == TM_BS_UNBACKED);
    n = fault_room(w, n);
    /* On a worker with unlocked loads the copy runs with the lock released,
     * as a load's does: the blocks are busy and loading (a fault on one waits
     * for the wake below, a release waits for the end), their room reserved. */
    if (w->unlocked_loads) {
        for (int64_t i = 0; i < n; i++)
            tm_block_start_load(p, list[i]);
        p->resident += n;
        p->loading_blocks += n;
        tm_unlock(p);
    }
    int r = tm_fault_zero_fill(p, list[0], n);
    if (w->unlocked_loads) {
        tm_lock(p);
        p->resident -= n;
        p->loading_blocks -= n;
        for (int64_t i = 0; i < n; i++)
            tm_block_end_load(p, list[i]);
        pthread_cond_broadcast(&p->io_cond);
    }
    if (r < 0) {
        fail_fault(p, addr, "zero fill (UFFDIO_COPY) failed", r);
        tm_fault_wake(p, list[0], n); /* those that faulted on the others meanwhile fault again */
        return;
    }
    for (int64_t i = 0; i < n; i++) {
        tm_block_resident(p, list[i], 1); /* no lower copy exists */
        if (i)
            tm_policy_access(p, list[i], TM_ACCESS_AHEAD);
    }
    note_resident(p, n);
    tm_fault_wake(p, list[0], n);
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
        tm_fault_unprotect(p, b, 1);
        return kind;
    }
    if (!(p->meta.flags[b] & TM_F_SAMPLED)) {
        p->st.minor_faults++;
        tm_fault_wake(p, b, 1);
        return TM_ACCESS_MINOR;
    }
    uint64_t t0 = tm_os_now_ns();
    tm_block_unpark(p, b);
    if (write)
        p->meta.flags[b] |= TM_F_DIRTY;
    /* Moved back writable: a clean block's checksum decides at demotion
     * whether it was written since. */
    else if (!(p->meta.flags[b] & TM_F_DIRTY))
        p->xflags[b] |= TM_X_VERIFY;
    int r = tm_fault_unpark(p, b, 1);
    if (r < 0)
        tm_set_error(p, "cannot map sampled block %lld back: %s", (long long)b, strerror(-r));
    tm_fault_wake(p, b, 1);
    tm_background_hint(p, tm_os_now_ns() - t0);
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
    while ((p->meta.flags[b] & (TM_F_ALLOC | TM_F_BUSY)) == TM_F_ALLOC && p->meta.tier[b] != TM_DRAM &&
           p->resident + p->batch_blocks > p->dram_blocks) {
        if (p->writeback_blocks && p->resident - p->writeback_blocks + p->batch_blocks <= p->dram_blocks) {
            p->st.writeback_waits++;
            pthread_cond_wait(&p->io_cond, &p->lock);
            continue;
        }
        w->unlocked_io = 1;
        int64_t moved = tm_migrate_demote(w, p->batch_blocks);
        w->unlocked_io = 0;
        if (moved) {
            tm_background_fault_demoted(p, moved);
        } else if (p->writeback_blocks || p->loading_blocks) {
            p->st.writeback_waits++;
            pthread_cond_wait(&p->io_cond, &p->lock);
        } else {
            break; /* all pinned: the plan's own room check decides */
        }
    }
}

void tm_migrate_fault(tm_worker *w, uint64_t addr, int kind, int write)
{
    struct tm_pool *p = w->pool;
    uint8_t *a = (uint8_t *)(uintptr_t)addr;
    if (a < p->base || a >= p->base + p->arena_size)
        return;
    int64_t b = tm_block_of(p, a);
    make_fault_room(w, b);
    p->st.faults++;
    if (!(p->meta.flags[b] & TM_F_ALLOC)) {
        tm_set_error(p, "access to unallocated pool memory at %p; the thread got SIGBUS (none did if the fault was "
                     "raised before its memory was freed and served by another fault meanwhile)", (void *)a);
        if (tm_fault_poison(p, addr) == 0) {
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
        tm_stream *s = stream_of(p, b);
        int64_t n = sequential_run(p, b, s->window > p->zero_min_blocks ? s->window : p->zero_min_blocks, list);
        s->next = b + n;
        /* What a stream fills is new data, read next rather than used once:
         * it passes only blocks it reads back. */
        s->start = s->lo = s->hi = s->next;
        zero_fill(w, addr, list, n);
        break;
    }
    default: {
        tm_ra_run *ra = readahead_holding(p, b);
        tm_policy_access(p, b, TM_ACCESS_MISSING);
        if ((p->meta.flags[b] & TM_F_BUSY) && !ra) {
            /* Another thread loads it (or an idle handler maps it ahead)
             * outside the lock: woken once mapped. */
            p->st.busy_waits++;
            break;
        }
        tm_stream *s = stream_of(p, b);
        if (ra) {
            /* The stream reached its readahead: map it; the next is read. */
            s->next = ra->blocks[ra->n - 1] + 1;
            int64_t end = ra->end;
            readahead_finish(w, ra);
            /* The runs after it are mapped ahead, without faults: the
             * stream's next fault may be as far as their end. */
            s->ahead = readahead_chain_end(p, end);
            if (p->meta.tier[b] == TM_DRAM)
                break;
            make_fault_room(w, b); /* others used the room while it waited */
            if ((p->meta.flags[b] & (TM_F_ALLOC | TM_F_BUSY)) != TM_F_ALLOC ||
                (p->meta.tier[b] != TM_PMEM && p->meta.tier[b] != TM_NVME)) {
                /* b was loaded, taken or freed meanwhile: its thread faults
                 * again if it must, and is served then. */
                tm_fault_wake(p, b, 1);
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
        promote(w, addr, list, policy_prefetch(p, b, list, n), write, stream);
        break;
    }
    }
}

static int in_flight(const struct tm_pool *p, int64_t b, int64_t n)
{
    for (int k = 0; k < p->ra.depth; k++)
        if (p->ra.run[k].state == TM_RA_WAITING)
            return 1;
    if (!p->writeback_blocks && !p->loading_blocks)
        return 0;
    for (int64_t i = b; i < b + n; i++)
        if (tm_block_state(p, i) == TM_BS_VICTIM || tm_block_state(p, i) == TM_BS_LOADING)
            return 1;
    return 0;
}

void tm_migrate_wait_settled(struct tm_pool *p, int64_t b, int64_t n)
{
    while (in_flight(p, b, n))
        pthread_cond_wait(&p->io_cond, &p->lock);
}

void tm_migrate_release(struct tm_pool *p, int64_t b, int64_t n)
{
    readahead_drop(p, b, n); /* it may hold these slots' old data */
    tm_advice_forget(p, b, n);
    tm_tier *run_tier = NULL; /* a run of adjacent slots, discarded at once */
    uint64_t run_start = 0, run_len = 0;
    for (int64_t i = b; i <= b + n; i++) {
        uint32_t g = i < b + n ? p->meta.slot[i] : TM_NO_SLOT;
        tm_tier *t = g != TM_NO_SLOT ? tm_slot_tier(p, g) : NULL;
        uint64_t s = t ? g - t->first_slot : 0;
        if (run_len && (t != run_tier || s != run_start + run_len)) {
            tm_tier_discard(run_tier, run_start, run_len);
            run_len = 0;
        }
        if (i == b + n)
            break;
        if (t) {
            if (!run_len) {
                run_tier = t;
                run_start = s;
            }
            run_len++;
            slot_release(p, i);
        }
        if (p->meta.tier[i] == TM_DRAM)
            p->resident--;
        tm_block_release(p, i); /* arena.c clears poison */
    }
    tm_os_zap(tm_block_addr(p, b), (size_t)n << p->bshift);
    tm_os_zap(shadow_of(p, b), (size_t)n << p->bshift); /* blocks parked by sampling */
}

void tm_migrate_quiesce(struct tm_pool *p)
{
    while (readahead_busy(p) || p->writeback_blocks || p->loading_blocks)
        pthread_cond_wait(&p->io_cond, &p->lock);
    readahead_drop(p, 0, p->nblocks);
    for (int64_t b = 0; b < p->scan_end; b++) {
        if (p->meta.tier[b] != TM_DRAM || !(p->meta.flags[b] & TM_F_SAMPLED))
            continue;
        tm_block_unpark(p, b);
        if (!(p->meta.flags[b] & TM_F_DIRTY))
            p->xflags[b] |= TM_X_VERIFY; /* moved back writable, as after a hint */
        unpark_run(p, b, 1);
    }
}

