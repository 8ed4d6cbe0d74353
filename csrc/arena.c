/* arena.c: the pool. Creates the arena (anonymous memory: the DRAM tier) and
 * its shadow, the block metadata and the lower tiers; allocates and frees
 * extents of blocks; reports statistics and placement. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "internal.h"

#define PAGE_BYTES 4096u
#define MIN_BLOCK (4u << 10)
#define MAX_BLOCK (2u << 20)

/* ---- fork: every live pool is prepared, then made the parent's or the
 * child's (fork.c). The registry's lock is held across, so that the child
 * inherits it unlocked and complete. */
#define MAX_POOLS 64
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct tm_pool *registry[MAX_POOLS];

static void on_fork_prepare(void)
{
    pthread_mutex_lock(&registry_lock);
    for (int i = 0; i < MAX_POOLS; i++)
        if (registry[i])
            tm_fork_prepare(registry[i]);
}

static void on_fork_parent(void)
{
    for (int i = MAX_POOLS - 1; i >= 0; i--)
        if (registry[i])
            tm_fork_parent(registry[i]);
    pthread_mutex_unlock(&registry_lock);
}

static void on_fork_child(void)
{
    for (int i = 0; i < MAX_POOLS; i++)
        if (registry[i]) {
            tm_fork_child(registry[i]);
            /* A parent's thread may have held it; a child's view takes
             * neither advice nor resize, but it stays usable. */
            pthread_mutex_init(&registry[i]->ctl_lock, NULL);
        }
    tm_locks_held = 0; /* tm_fork_child made every pool lock anew */
    pthread_mutex_init(&registry_lock, NULL);
}

static void add_fork_handler(void)
{
    pthread_atfork(on_fork_prepare, on_fork_parent, on_fork_child);
}

static void watch_forks(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, add_fork_handler);
}

/* ---- registry of live pools: which pool does a pointer belong to? ----- */

/* Bounds over all registered arenas: most foreign pointers are rejected
 * without the lock. */
static uintptr_t registry_lo = UINTPTR_MAX, registry_hi = 0;

static int registry_add(struct tm_pool *p)
{
    int r = -EMFILE;
    pthread_mutex_lock(&registry_lock);
    for (int i = 0; i < MAX_POOLS; i++) {
        if (!registry[i]) {
            registry[i] = p;
            uintptr_t lo = (uintptr_t)p->base, hi = lo + p->arena_size;
            if (lo < __atomic_load_n(&registry_lo, __ATOMIC_RELAXED))
                __atomic_store_n(&registry_lo, lo, __ATOMIC_RELAXED);
            if (hi > __atomic_load_n(&registry_hi, __ATOMIC_RELAXED))
                __atomic_store_n(&registry_hi, hi, __ATOMIC_RELAXED);
            r = 0;
            break;
        }
    }
    pthread_mutex_unlock(&registry_lock);
    return r;
}

static void registry_remove(struct tm_pool *p)
{
    pthread_mutex_lock(&registry_lock);
    for (int i = 0; i < MAX_POOLS; i++)
        if (registry[i] == p)
            registry[i] = NULL;
    pthread_mutex_unlock(&registry_lock);
}

tm_pool *tm_pool_of(const void *ptr)
{
    uintptr_t a = (uintptr_t)ptr;
    if (a < __atomic_load_n(&registry_lo, __ATOMIC_RELAXED) || a >= __atomic_load_n(&registry_hi, __ATOMIC_RELAXED))
        return NULL;
    struct tm_pool *found = NULL;
    pthread_mutex_lock(&registry_lock);
    for (int i = 0; i < MAX_POOLS && !found; i++)
        if (registry[i] && tm_contains(registry[i], ptr, 1))
            found = registry[i];
    pthread_mutex_unlock(&registry_lock);
    return found;
}

/* Metadata arrays in one anonymous mapping; untouched parts cost nothing. */
static size_t meta_bytes(int64_t nblocks)
{
    return (size_t)nblocks * (4 * sizeof(uint8_t) + sizeof(uint16_t) + 2 * sizeof(uint32_t));
}

static int meta_init(struct tm_pool *p)
{
    int64_t n = p->nblocks;
    uint8_t *m = mmap(NULL, meta_bytes(n), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED)
        return -errno;
    /* Widest first, so every array is aligned. */
    p->meta.nblocks = n;
    p->meta.slot = (uint32_t *)m;
    uint32_t *alloc_len = p->meta.slot + n;
    p->meta.last_access = (uint16_t *)(alloc_len + n);
    p->meta.tier = (uint8_t *)(p->meta.last_access + n);
    p->meta.flags = p->meta.tier + n;
    p->meta.access_count = p->meta.flags + n;
    p->xflags = p->meta.access_count + n;
    p->alloc_len = alloc_len;
    return 0;
}

static int create_tiers(struct tm_pool *p, const tm_config *cfg, char *err)
{
    p->pmem.fd = p->nvme.fd = -1;
    p->pmem.id = TM_PMEM;
    p->nvme.id = TM_NVME;
    p->pmem.bs = p->nvme.bs = p->bs;
    p->pmem.first_slot = 1;
    uint64_t pslots = cfg->pmem_bytes / p->bs, nslots = cfg->nvme_bytes / p->bs;
    if (pslots + nslots >= UINT32_MAX) {
        snprintf(err, TM_ERRLEN, "pmem + nvme hold %llu blocks; at most %u are supported (use a larger block_size)",
                 (unsigned long long)(pslots + nslots), UINT32_MAX - 1);
        return -EINVAL;
    }
    int r;
    if (pslots) {
        if ((r = tm_tier_init_slots(&p->pmem, pslots)) < 0 || (r = tm_tier_pmem_open(&p->pmem, cfg->pmem_path, err)) < 0)
            return r;
    }
    if (nslots) {
        if (!cfg->nvme_path) {
            snprintf(err, TM_ERRLEN, "nvme_path: no directory given for the NVMe tier");
            return -EINVAL;
        }
        p->nvme.first_slot = 1 + (uint32_t)pslots;
        if ((r = tm_tier_init_slots(&p->nvme, nslots)) < 0 || (r = tm_tier_nvme_open(&p->nvme, cfg->nvme_path, err)) < 0)
            return r;
    }
    p->pmem.emu = (tm_emulation){.read_ns = cfg->pmem_read_ns, .write_ns = cfg->pmem_write_ns,
                                  .read_mbps = cfg->pmem_read_mbps, .write_mbps = cfg->pmem_write_mbps};
    if (cfg->inject && *cfg->inject)
        return tm_inject_parse(cfg->inject, &p->pmem, &p->nvme, err);
    return 0;
}

static void release_engine(struct tm_pool *p);

__thread int tm_engine_depth;
__thread int tm_locks_held;

int tm_in_engine(void)
{
    return tm_engine_depth > 0;
}

static tm_pool *create_pool(const tm_config *cfg)
{
    char err[TM_ERRLEN] = "";
    uint64_t bs = cfg->block_size;
    if (bs < MIN_BLOCK || bs > MAX_BLOCK || (bs & (bs - 1))) {
        tm_set_create_error("block_size must be a power of two from 4 KiB to 2 MiB, got %llu", (unsigned long long)bs);
        errno = EINVAL;
        return NULL;
    }
    if (cfg->dram_bytes < bs) {
        tm_set_create_error("dram must hold at least one block (%llu bytes), got %llu",
                            (unsigned long long)bs, (unsigned long long)cfg->dram_bytes);
        errno = EINVAL;
        return NULL;
    }
    watch_forks();
    struct tm_pool *p = calloc(1, sizeof *p);
    if (!p) {
        errno = ENOMEM;
        return NULL;
    }
    pthread_mutex_init(&p->lock, NULL);
    pthread_mutex_init(&p->ctl_lock, NULL);
    p->bs = bs;
    p->bshift = __builtin_ctzll(bs);
    p->uffd = p->stop_fd = p->fill_fd = -1;
    for (int i = 0; i < TM_RECENT; i++)
        p->recent[i] = -1;
    p->dram_blocks = (int64_t)(cfg->dram_bytes / bs);
    p->batch_blocks = (int64_t)(TM_BATCH_BYTES / bs);
    if (p->batch_blocks > p->dram_blocks / 4)
        p->batch_blocks = p->dram_blocks / 4;
    if (p->batch_blocks < 1)
        p->batch_blocks = 1;
    p->batch_max = p->batch_blocks;
    p->sample_budget_ppm = cfg->sample_budget_ppm;
    p->io_max_blocks = TM_IO_BYTES / bs ? (int64_t)(TM_IO_BYTES / bs) : 1;
    p->zero_min_blocks = TM_ZERO_MIN_BYTES / bs ? (int64_t)(TM_ZERO_MIN_BYTES / bs) : 1;
    if (p->zero_min_blocks > p->batch_blocks)
        p->zero_min_blocks = p->batch_blocks;

    int r = create_tiers(p, cfg, err);
    if (r < 0)
        goto fail;
    int64_t lower = (int64_t)(p->pmem.nslots + p->nvme.nslots);
    /* A batch of headroom: a demotion in progress may need that many slots
     * while the blocks being promoted still hold theirs. */
    p->cap_blocks = p->dram_blocks + lower - (lower ? p->batch_blocks : 0);
    /* Four times the capacity in address space (it costs nothing until
     * used), so that fragmentation of the arena does not limit allocation. */
    p->nblocks = 4 * p->cap_blocks + 64;
    p->arena_size = (size_t)p->nblocks << p->bshift;
    if ((r = meta_init(p)) < 0 || (r = tm_extents_init(&p->extents, p->nblocks)) < 0) {
        snprintf(err, sizeof err, "cannot allocate block metadata: %s", strerror(-r));
        goto fail;
    }
    /* Aligned to a huge page, so that hugezero.c moves whole ones in. A fork
     * child reads it (fork.c). */
    p->base = tm_os_reserve(p->arena_size, TM_HUGE_BYTES, 1);
    p->shadow = tm_os_reserve(p->arena_size, bs, 0);
    p->zeros = tm_os_reserve((size_t)p->batch_max << p->bshift, PAGE_BYTES, 0);
    if (!p->base || !p->shadow || !p->zeros) {
        r = -errno;
        snprintf(err, sizeof err, "cannot reserve the arena (2 x %zu bytes of address space): %s", p->arena_size,
                 strerror(errno));
        goto fail;
    }
    if ((r = tm_hugezero_init(p)) < 0) {
        snprintf(err, sizeof err, "cannot reserve the huge pages of zero fills: %s", strerror(-r));
        goto fail;
    }
    if ((r = tm_readahead_init(p)) < 0) {
        snprintf(err, sizeof err, "cannot allocate the readahead buffer: %s", strerror(-r));
        goto fail;
    }
    if ((r = tm_uffd_open(p, cfg->force_no_uffd)) < 0) {
        release_engine(p);
        free(p);
        errno = -r;
        return NULL; /* tm_uffd_open set the message */
    }
    if ((r = tm_publish_init(p, cfg->publish)) < 0) {
        snprintf(err, sizeof err, "cannot allocate the pool's published statistics: %s", strerror(-r));
        goto fail;
    }
    if ((r = tm_handler_start(p)) < 0 || (r = tm_background_start(p)) < 0) {
        snprintf(err, sizeof err, "cannot start the engine's threads: %s", strerror(-r));
        goto fail;
    }
    if ((r = registry_add(p)) < 0) {
        snprintf(err, sizeof err, "too many pools: at most %d can be open at once", MAX_POOLS);
        goto fail;
    }
    p->st.nvme_direct = p->nvme.direct;
    p->st.pmem_dax = p->pmem.dax;
    return p;
fail:
    tm_set_create_error("%s", err);
    release_engine(p);
    free(p);
    errno = -r;
    return NULL;
}

tm_pool *tm_pool_create(const tm_config *cfg)
{
    tm_engine_depth++; /* its allocations (metadata, slot maps, thread start-up) are the engine's */
    tm_pool *p = create_pool(cfg);
    tm_engine_depth--;
    return p;
}

/* Give back everything but the handle. Precondition: no live allocation, no
 * thread touching arena memory. */
static void release_engine(struct tm_pool *p)
{
    registry_remove(p);
    tm_background_stop(p);
    tm_publish_fini(p);
    tm_handler_stop(p);
    tm_uffd_close(p);
    tm_readahead_fini(p);
    tm_hugezero_fini(p);
    tm_fork_fini(p);
    tm_ghost_fini(p);
    tm_os_unmap(p->base, p->arena_size);
    tm_os_unmap(p->shadow, p->arena_size);
    tm_os_unmap(p->zeros, (size_t)p->batch_max << p->bshift);
    tm_tier_close(&p->pmem);
    tm_tier_close(&p->nvme);
    if (p->meta.slot)
        munmap(p->meta.slot, meta_bytes(p->nblocks));
    tm_extents_destroy(&p->extents);
    memset(&p->policy, 0, sizeof p->policy);
    for (int i = 0; i < p->npolicy_mem; i++)
        free(p->policy_mem[i]);
    free(p->policy_mem);
    p->policy_mem = NULL;
    p->npolicy_mem = 0;
    p->base = NULL;
    p->meta.slot = NULL;
}

/* Release the engine if nothing holds it any more, and free the handle if
 * its owner dropped it. Called without the lock, from any thread: an unpin
 * (a metadata view's finalizer) may race the owner's drop, so exactly one
 * caller releases, exactly one frees, and never while the release runs. */
static void settle(struct tm_pool *p)
{
    if (p->child)
        return;
    tm_lock(p);
    int release = p->closed && !p->released && p->live_allocs == 0 && p->pins == 0;
    if (release)
        p->released = p->releasing = 1;
    tm_unlock(p);
    if (release) {
        release_engine(p);
        tm_lock(p);
        p->releasing = 0;
        tm_unlock(p);
    }
    tm_lock(p);
    int free_handle = p->released && !p->releasing && !p->freeing && p->dropped && p->live_allocs == 0 &&
                      p->pins == 0;
    if (free_handle)
        p->freeing = 1;
    tm_unlock(p);
    if (free_handle) {
        pthread_mutex_destroy(&p->lock);
        pthread_mutex_destroy(&p->ctl_lock);
        free(p);
    }
}

void tm_pool_close(tm_pool *p)
{
    if (p->child)
        return;
    tm_lock(p);
    p->closed = 1;
    tm_unlock(p);
    settle(p);
}

void tm_pool_pin(tm_pool *p)
{
    if (p->child)
        return;
    tm_lock(p);
    p->pins++;
    tm_unlock(p);
}

void tm_pool_unpin(tm_pool *p)
{
    if (p->child)
        return;
    tm_lock(p);
    p->pins--;
    tm_unlock(p);
    settle(p);
}

void tm_pool_drop(tm_pool *p)
{
    if (p->child)
        return;
    tm_lock(p);
    p->closed = 1;
    p->dropped = 1;
    tm_unlock(p);
    settle(p);
}

int tm_pool_released(tm_pool *p)
{
    tm_lock(p);
    int r = p->released;
    tm_unlock(p);
    return r;
}

/* Whether the NVMe tier's filesystem can take every block of n more if all
 * of them spill there: a full disk is an allocation error now, never a lost
 * demotion later. (Other users of the disk can still fill it; a demotion
 * that then fails keeps its block in DRAM.) */
static int nvme_room_for(struct tm_pool *p, int64_t n, uint64_t *free_bytes)
{
    /* DRAM may hold less than its budget by the free memory the background
     * keeps ahead of faults at most, and by a fault's batch demoted while the
     * background's writeback was in flight. */
    int64_t spill = p->reserved + n - (p->dram_blocks - tm_watermark_max_headroom(p) - p->batch_blocks) -
                    (int64_t)p->pmem.nslots;
    struct statvfs s;
    if (!p->nvme.nslots || spill <= 0 || fstatvfs(p->nvme.fd, &s) < 0)
        return 1;
    *free_bytes = (uint64_t)s.f_bavail * s.f_frsize;
    return ((uint64_t)spill << p->bshift) <= (p->nvme.used << p->bshift) + *free_bytes;
}

static void unpoison(struct tm_pool *p, int64_t b, int64_t n)
{
    tm_os_zap(tm_block_addr(p, b), (size_t)n << p->bshift);
    for (int64_t i = b; i < b + n; i++)
        p->meta.flags[i] &= (uint8_t)~TM_F_POISON;
}

/* Spare runs an allocation reuses at most: past that, its other spares are
 * given back (zero-filled on first touch instead). */
#define REUSE_RUNS 32

void *tm_alloc(tm_pool *p, size_t size)
{
    if (p->child) {
        errno = EBADF;
        return NULL;
    }
    int64_t n = (int64_t)((size + p->bs - 1) >> p->bshift);
    if (n == 0)
        n = 1;
    tm_extent runs[REUSE_RUNS];
    int nruns = 0;
    tm_lock(p);
    void *ptr = NULL;
    int err = ENOMEM;
    uint64_t free_bytes = 0;
    if (p->closed) {
        tm_set_error(p, "cannot allocate %zu bytes: the pool is closed", size);
        err = EBADF;
    } else if (p->reserved + n > p->cap_blocks) {
        tm_set_error(p, "cannot allocate %zu bytes: %lld of %lld bytes of pool capacity in use (capacity is "
                     "dram + pmem + nvme less %lld bytes of headroom for moving blocks)",
                     size, (long long)p->reserved << p->bshift, (long long)p->cap_blocks << p->bshift,
                     (long long)(p->pmem.nslots + p->nvme.nslots ? p->batch_blocks : 0) << p->bshift);
    } else if (!nvme_room_for(p, n, &free_bytes)) {
        tm_set_error(p, "cannot allocate %zu bytes: the NVMe tier's filesystem has %llu bytes free, fewer than "
                     "this pool may have to write there", size, (unsigned long long)free_bytes);
    } else {
        int64_t b = tm_spare_place(p, n);
        if (b < 0 || tm_extents_take(&p->extents, b, n) < 0)
            b = tm_extents_alloc(&p->extents, n);
        if (b < 0) {
            tm_set_error(p, "cannot allocate %zu bytes: no free run of %lld blocks in the arena", size, (long long)n);
        } else {
            /* A free block is poisoned by a fault on it: a stray access, or a
             * fault message that was still queued when its block was freed
             * (another fault's zero fill had already served it). */
            for (int64_t i = b; i < b + n; i++) {
                if (p->meta.flags[i] & TM_F_POISON) {
                    tm_spare_drop(p, b, n);
                    unpoison(p, b, n);
                    break;
                }
            }
            for (int64_t i = b; i < b + n; i++)
                p->meta.flags[i] = TM_F_ALLOC;
            tm_spare_reuse(p, b, n, runs, REUSE_RUNS, &nruns);
            p->alloc_len[b] = (uint32_t)n;
            if (b + n > p->scan_end)
                p->scan_end = b + n;
            p->reserved += n;
            p->live_allocs++;
            ptr = tm_block_addr(p, b);
        }
    }
    tm_unlock(p);
    if (!ptr) {
        errno = err;
        return NULL;
    }
    /* Reused spares hold what their last owner wrote. They are resident and
     * mapped writable: this faults only if one was demoted meanwhile (it
     * comes back, and is zeroed then). Then they are zero blocks. */
    for (int i = 0; i < nruns; i++)
        memset(tm_block_addr(p, runs[i].start), 0, (size_t)runs[i].len << p->bshift);
    if (nruns) {
        tm_lock(p);
        tm_spare_zeroed(p, runs, nruns);
        tm_unlock(p);
    }
    return ptr;
}

void tm_free(tm_pool *p, void *ptr)
{
    tm_lock(p);
    int64_t b = tm_block_of(p, ptr);
    int64_t n = (b >= 0 && b < p->nblocks) ? p->alloc_len[b] : 0;
    if (n == 0 || tm_block_addr(p, b) != ptr) {
        tm_set_error(p, "tm_free(%p): not an allocation of this pool", ptr);
        tm_unlock(p);
        return;
    }
    if (p->child) { /* the parent's data is untouched: only this child's pages go */
        tm_fork_child_release(p, b, n);
        tm_unlock(p);
        return;
    }
    /* A writeback or load of some of its blocks still uses their pages and
     * slots: let it finish. */
    tm_wait_settled(p, b, n);
    int poisoned = 0;
    for (int64_t i = b; i < b + n && !poisoned; i++)
        poisoned = (p->meta.flags[i] & TM_F_POISON) != 0;
    tm_release(p, b, n, !poisoned);
    if (poisoned)
        unpoison(p, b, n);
    tm_publish_freed(p, b);
    p->alloc_len[b] = 0;
    for (int64_t i = b; i < b + n; i++)
        p->meta.flags[i] = 0;
    if (tm_extents_free(&p->extents, b, n) < 0)
        tm_set_error(p, "out of memory recording a free extent; %lld blocks of address space lost", (long long)n);
    p->reserved -= n;
    p->live_allocs--;
    tm_unlock(p);
    settle(p);
}

size_t tm_alloc_size(tm_pool *p, const void *ptr)
{
    if (!tm_contains(p, ptr, 1))
        return 0;
    tm_lock(p);
    int64_t b = tm_block_of(p, ptr);
    size_t n = tm_block_addr(p, b) == ptr ? (size_t)p->alloc_len[b] << p->bshift : 0;
    tm_unlock(p);
    return n;
}

int tm_contains(tm_pool *p, const void *ptr, size_t size)
{
    const uint8_t *a = ptr;
    return a >= p->base && a + size <= p->base + p->arena_size;
}

int64_t tm_live_allocations(tm_pool *p)
{
    tm_lock(p);
    int64_t n = p->live_allocs;
    tm_unlock(p);
    return n;
}

void tm_get_stats(tm_pool *p, tm_stats *out)
{
    tm_lock(p);
    tm_stats_snapshot(p, out);
    tm_unlock(p);
}

void tm_placement(tm_pool *p, const void *ptr, size_t size, uint64_t out[4])
{
    memset(out, 0, 4 * sizeof out[0]);
    if (!size || !tm_contains(p, ptr, size))
        return;
    const uint8_t *a = ptr, *end = a + size;
    tm_lock(p);
    while (a < end) {
        int64_t b = tm_block_of(p, a);
        const uint8_t *bend = (const uint8_t *)tm_block_addr(p, b + 1);
        const uint8_t *stop = bend < end ? bend : end;
        out[p->meta.tier[b]] += (uint64_t)(stop - a);
        a = stop;
    }
    tm_unlock(p);
}

const tm_meta *tm_get_meta(tm_pool *p) { return &p->meta; }
void *tm_arena_base(tm_pool *p) { return p->base; }
size_t tm_block_size(tm_pool *p) { return p->bs; }

void tm_set_policy(tm_pool *p, const tm_policy_ops *ops)
{
    tm_lock(p);
    if (ops)
        p->policy = *ops;
    else
        memset(&p->policy, 0, sizeof p->policy);
    tm_policy_info(p);
    tm_unlock(p);
}

void *tm_policy_alloc(tm_pool *p, size_t bytes)
{
    tm_lock(p);
    void *m = calloc(1, bytes ? bytes : 1);
    void **list = m ? realloc(p->policy_mem, sizeof(void *) * (size_t)(p->npolicy_mem + 1)) : NULL;
    if (list) {
        p->policy_mem = list;
        list[p->npolicy_mem++] = m;
    } else {
        free(m);
        m = NULL;
    }
    tm_unlock(p);
    return m;
}

int tm_pool_resize(tm_pool *p, uint64_t dram_bytes)
{
    if (p->child) {
        tm_set_error(p, "resize: a forked child's view of its parent's pool cannot be resized");
        return -EPERM;
    }
    int64_t nb = (int64_t)(dram_bytes >> p->bshift);
    int64_t lower = (int64_t)(p->pmem.nslots + p->nvme.nslots);
    int64_t batch = p->batch_max < nb / 4 ? p->batch_max : nb / 4;
    if (batch < 1)
        batch = 1;
    int64_t cap = nb + lower - (lower ? batch : 0);
    /* The control worker is shared with advice: one user at a time, taken
     * before the pool lock, which its demotions release while they write. */
    tm_engine_depth++;
    pthread_mutex_lock(&p->ctl_lock);
    tm_lock(p);
    int r = 0;
    if (nb < 1) {
        tm_set_error(p, "resize: dram must hold at least one block (%zu bytes), got %llu", p->bs,
                     (unsigned long long)dram_bytes);
        r = -EINVAL;
    } else if (2 * cap > p->nblocks) {
        tm_set_error(p, "resize: dram of %llu bytes would make the capacity larger than this pool's arena allows "
                     "(at most %lld bytes in all tiers)", (unsigned long long)dram_bytes,
                     (long long)(p->nblocks / 2) << p->bshift);
        r = -EINVAL;
    } else if (p->reserved > cap) {
        tm_set_error(p, "resize: %lld bytes are allocated, more than the pool would hold with dram of %llu bytes",
                     (long long)p->reserved << p->bshift, (unsigned long long)dram_bytes);
        r = -ENOSPC;
    } else {
        p->dram_blocks = nb;
        p->batch_blocks = batch;
        p->cap_blocks = cap;
        int64_t zmin = TM_ZERO_MIN_BYTES / p->bs ? (int64_t)(TM_ZERO_MIN_BYTES / p->bs) : 1;
        p->zero_min_blocks = zmin < batch ? zmin : batch;
        for (;;) { /* spares first: frees may make more while demotions write */
            tm_spare_room(p, 0);
            if (p->resident <= p->dram_blocks)
                break;
            if (p->writeback_blocks || p->loading_blocks) { /* DRAM use settles when they are done */
                pthread_cond_wait(&p->io_cond, &p->lock);
                continue;
            }
            if (tm_demote(&p->ctl, p->resident - p->dram_blocks) == 0)
                break;
        }
        tm_policy_info(p);
        if (p->resident > p->dram_blocks) {
            p->st.budget_overruns++;
            tm_set_error(p, "resize: %lld bytes could not be demoted; DRAM stays over its new budget until they can",
                         (long long)(p->resident - p->dram_blocks) << p->bshift);
        }
    }
    tm_unlock(p);
    pthread_mutex_unlock(&p->ctl_lock);
    tm_engine_depth--;
    return r;
}

void tm_trace_start(tm_pool *p, int64_t *buf, int64_t cap)
{
    tm_lock(p);
    p->trace = buf;
    p->trace_cap = cap;
    p->trace_n = 0;
    tm_unlock(p);
}

int64_t tm_trace_stop(tm_pool *p)
{
    tm_lock(p);
    int64_t n = p->trace_n;
    p->trace = NULL;
    p->trace_cap = p->trace_n = 0;
    tm_unlock(p);
    return n;
}
