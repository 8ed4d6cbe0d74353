/* malloc_interpose.c: the C library's large allocations served by a pool.
 *
 * `tieredmem run` preloads this library (LD_PRELOAD); tieredmem/malloc.py
 * then attaches the run's pool with the engine's entry points. From then on
 * malloc, calloc, realloc, reallocarray, posix_memalign, aligned_alloc,
 * memalign, valloc and pvalloc of at least the threshold are pool
 * allocations; smaller ones go to the next allocator (glibc's) with one
 * compare. free, realloc and malloc_usable_size decide ownership by address:
 * a pointer inside an arena ever attached is asked about (tm_pool_of), any
 * other goes straight on. See docs/malloc.md.
 *
 * The engine does not know this library: it only exports tm_in_engine(),
 * which says when the calling thread must not get pool memory (its own
 * threads, and any thread holding a pool lock). This library adds a
 * thread-local guard of its own around its calls into the engine.
 *
 * Not attached (before the pool exists, in programs that never attach, and
 * once the pool is closed), and in a fork child, every allocation goes to the
 * next allocator. A fork child reads the parent's pool memory as it was at
 * the fork (the engine serves it there, read-only): its frees of those
 * pointers give the child's copy back, and its reallocs move them to the
 * next allocator.
 *
 * Freed pool allocations are kept a while for reuse (the cache below): a
 * fresh pool block costs a userfaultfd zero fill on its first touch and its
 * free zaps the pages, where glibc would reuse memory it kept. Kept blocks
 * stay live pool allocations (they count against the pool), bounded by a
 * share of the DRAM budget and one second idle, and are given back when the
 * pool is full and on detach.
 *
 * Under `run` this library is also CPython's arena allocator (pymalloc's
 * arenas, below): Python's small objects are pool memory too. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "../tieredmem.h" /* tm_stats: the DRAM budget, read once at attach */

#define EXPORT __attribute__((visibility("default")))
#define LIKELY(x) __builtin_expect(!!(x), 1)

/* ---- the next allocator ---------------------------------------------------
 * Resolved with dlsym(RTLD_NEXT), which may itself allocate (the dynamic
 * loader's error buffers): while resolving, allocations come from a static
 * bootstrap buffer whose blocks are never freed. Each pointer starts at a
 * function that resolves everything and then calls the real one, so the
 * fast paths need no "resolved yet?" test. */
static void *boot_malloc(size_t size);
static void *boot_calloc(size_t n, size_t size);
static void *boot_realloc(void *ptr, size_t size);
static void boot_free(void *ptr);
static void *boot_memalign(size_t align, size_t size);
static int boot_posix_memalign(void **out, size_t align, size_t size);
static void *boot_aligned_alloc(size_t align, size_t size);
static size_t boot_usable_size(void *ptr);

static void *(*next_malloc)(size_t) = boot_malloc;
static void *(*next_calloc)(size_t, size_t) = boot_calloc;
static void *(*next_realloc)(void *, size_t) = boot_realloc;
static void (*next_free)(void *) = boot_free;
static void *(*next_memalign)(size_t, size_t) = boot_memalign;
static int (*next_posix_memalign)(void **, size_t, size_t) = boot_posix_memalign;
static void *(*next_aligned_alloc)(size_t, size_t) = boot_aligned_alloc;
static size_t (*next_usable_size)(void *) = boot_usable_size;

#define BOOT_BYTES (256u << 10)
#define BOOT_ALIGN 16u
static _Alignas(4096) unsigned char boot_buf[BOOT_BYTES];
static size_t boot_used;
static int resolving;

static int in_boot(const void *ptr)
{
    return (uintptr_t)ptr - (uintptr_t)boot_buf < BOOT_BYTES;
}

/* A block of the bootstrap buffer, `align` aligned (a power of two), its size
 * in the 16 bytes before it; NULL with ENOMEM when the buffer is spent. */
static void *boot_take(size_t align, size_t size)
{
    if (align < BOOT_ALIGN)
        align = BOOT_ALIGN;
    size_t used = __atomic_load_n(&boot_used, __ATOMIC_RELAXED), start;
    do {
        start = (used + BOOT_ALIGN + align - 1) & ~(align - 1);
        if (start > BOOT_BYTES || size > BOOT_BYTES - start) {
            errno = ENOMEM;
            return NULL;
        }
    } while (!__atomic_compare_exchange_n(&boot_used, &used, start + size, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    *(size_t *)(boot_buf + start - BOOT_ALIGN) = size;
    return boot_buf + start;
}

static size_t boot_size(const void *ptr)
{
    return *(const size_t *)((const unsigned char *)ptr - BOOT_ALIGN);
}

static void resolve(void)
{
    __atomic_store_n(&resolving, 1, __ATOMIC_RELAXED);
    void *f;
    if ((f = dlsym(RTLD_NEXT, "malloc")))
        next_malloc = f;
    if ((f = dlsym(RTLD_NEXT, "calloc")))
        next_calloc = f;
    if ((f = dlsym(RTLD_NEXT, "realloc")))
        next_realloc = f;
    if ((f = dlsym(RTLD_NEXT, "free")))
        next_free = f;
    if ((f = dlsym(RTLD_NEXT, "memalign")))
        next_memalign = f;
    if ((f = dlsym(RTLD_NEXT, "posix_memalign")))
        next_posix_memalign = f;
    if ((f = dlsym(RTLD_NEXT, "aligned_alloc")))
        next_aligned_alloc = f;
    if ((f = dlsym(RTLD_NEXT, "malloc_usable_size")))
        next_usable_size = f;
    __atomic_store_n(&resolving, 0, __ATOMIC_RELAXED);
}

/* While resolving (or if the next allocator lacks a function), the bootstrap
 * buffer answers; else resolve and call the real function. */
static int must_boot(void)
{
    if (__atomic_load_n(&resolving, __ATOMIC_RELAXED))
        return 1;
    resolve();
    return 0;
}

static void *boot_malloc(size_t size)
{
    return must_boot() || next_malloc == boot_malloc ? boot_take(0, size) : next_malloc(size);
}

static void *boot_calloc(size_t n, size_t size)
{
    size_t total;
    if (__builtin_mul_overflow(n, size, &total)) {
        errno = ENOMEM;
        return NULL;
    }
    /* The bootstrap buffer is static, so still zero where never handed out. */
    return must_boot() || next_calloc == boot_calloc ? boot_take(0, total) : next_calloc(n, size);
}

static void *boot_realloc(void *ptr, size_t size)
{
    if (must_boot() || next_realloc == boot_realloc) {
        void *q = boot_take(0, size);
        if (q && ptr)
            memcpy(q, ptr, boot_size(ptr) < size ? boot_size(ptr) : size);
        return q;
    }
    return next_realloc(ptr, size);
}

static void boot_free(void *ptr)
{
    if (!must_boot() && next_free != boot_free)
        next_free(ptr);
}

static void *boot_memalign(size_t align, size_t size)
{
    return must_boot() || next_memalign == boot_memalign ? boot_take(align, size) : next_memalign(align, size);
}

static int boot_posix_memalign(void **out, size_t align, size_t size)
{
    if (must_boot() || next_posix_memalign == boot_posix_memalign) {
        void *p = boot_take(align, size);
        if (!p)
            return ENOMEM;
        *out = p;
        return 0;
    }
    return next_posix_memalign(out, align, size);
}

static void *boot_aligned_alloc(size_t align, size_t size)
{
    return must_boot() || next_aligned_alloc == boot_aligned_alloc ? boot_take(align, size)
                                                                    : next_aligned_alloc(align, size);
}

static size_t boot_usable_size(void *ptr)
{
    return must_boot() || next_usable_size == boot_usable_size ? 0 : next_usable_size(ptr);
}

/* ---- the attached pool ------------------------------------------------- */

/* The engine's entry points (tieredmem.h), set at the first attach and never
 * changed: the engine's module is never unloaded. */
static struct {
    void *(*alloc)(void *pool, size_t size);
    void (*free)(void *pool, void *ptr);
    size_t (*alloc_size)(void *pool, const void *ptr);
    void *(*pool_of)(const void *ptr);
    int (*in_engine)(void);
} eng;

/* Smallest size served by the pool: SIZE_MAX while none is attached. */
static size_t threshold = SIZE_MAX;
static size_t block_size;
/* [range_lo, range_lo + range_len) covers every arena ever attached, so that
 * their pointers are recognised after a detach; a pointer in it is checked
 * with tm_pool_of (the range may have been reused once an engine is released). */
static uintptr_t range_lo;
static size_t range_len;
/* The arenas ever attached. */
#define MAX_ARENAS 16
static struct {
    uintptr_t lo;
    size_t len;
} arenas[MAX_ARENAS];
static int narenas;
/* The pool new allocations come from, or NULL. attach_lock is held across
 * tm_alloc so that a detach (before the owner drops the handle) waits for
 * allocations on it to finish. A fork child never takes it. */
static void *pool;
static pthread_mutex_t attach_lock = PTHREAD_MUTEX_INITIALIZER;
static volatile int forked;
/* Inside this library's call into the engine: what that call allocates
 * comes from the next allocator. initial-exec: a preloaded library's TLS is
 * static, so reading it never allocates. */
static __thread int busy __attribute__((tls_model("initial-exec")));
/* Allocations served by the pool, and their bytes (tm_interpose_counts). */
static uint64_t served, served_bytes;

/* Async-signal-safe: it runs in the child of a fork. */
static void on_fork_child(void)
{
    forked = 1;
}

__attribute__((constructor)) static void init(void)
{
    if (next_malloc == boot_malloc)
        resolve();
    pthread_atfork(NULL, NULL, on_fork_child);
}

static int in_range(const void *ptr)
{
    uintptr_t lo = __atomic_load_n(&range_lo, __ATOMIC_ACQUIRE); /* then a len at least as new */
    return (uintptr_t)ptr - lo < __atomic_load_n(&range_len, __ATOMIC_RELAXED);
}

/* The live pool holding ptr, or NULL. Precondition: in_range(ptr). */
static void *owner_of(const void *ptr)
{
    busy++;
    void *p = eng.pool_of(ptr);
    busy--;
    return p;
}

/* ---- kept blocks ----------------------------------------------------------
 * Freed allocations of the attached pool, kept mapped for reuse by a later
 * allocation of (about) the same size: their pages are resident already, so
 * reusing one costs no fault, where a fresh tm_alloc costs a userfaultfd zero
 * fill per block on first touch and tm_free zaps the pages again. Oldest
 * first; guarded by attach_lock. At most keep_limit bytes (a share of the
 * DRAM budget, or TIEREDMEM_MALLOC_KEEP bytes, read at attach; 0: none kept)
 * and KEEP_SLOTS blocks; one idle KEEP_NS is given back (when the next large
 * allocation or free looks). They are live allocations of the pool, in its
 * arena, so the budget holds; they are given back when the pool is full and
 * on detach. A fork child neither keeps nor takes: its copy of this array
 * names the parent's allocations. */
#define KEEP_SLOTS 128
#define KEEP_NS 1000000000ull
#define KEEP_SHARE 8                  /* keep_limit: dram / KEEP_SHARE ... */
#define KEEP_MAX ((size_t)64 << 20)   /* ... and at most this */
#define KEEP_FALLBACK ((size_t)8 << 20) /* if the DRAM budget cannot be read */
static struct kept {
    void *ptr;
    size_t bytes; /* its allocation's size, whole blocks */
    uint64_t since;
} kept[KEEP_SLOTS];
static int nkept;
static size_t kept_bytes, keep_limit;
/* tm_interpose_cache_counts: allocations served by a kept block, frees that
 * kept theirs, kept blocks given back to the engine. */
static uint64_t reused, kept_frees, given_back;

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* Move the n oldest kept blocks to out; returns n. attach_lock held. */
static int take_oldest(int n, void **out)
{
    for (int i = 0; i < n; i++) {
        out[i] = kept[i].ptr;
        kept_bytes -= kept[i].bytes;
    }
    memmove(kept, kept + n, (size_t)(nkept - n) * sizeof kept[0]);
    nkept -= n;
    given_back += (uint64_t)n;
    return n;
}

/* How many of the oldest kept blocks have been idle too long. attach_lock held. */
static int expired(uint64_t now)
{
    int n = 0;
    while (n < nkept && now - kept[n].since > KEEP_NS)
        n++;
    return n;
}

/* Free blocks taken from the cache into p (busy: what tm_free allocates is
 * the next allocator's). */
static void give_back(void *p, void **ptrs, int n)
{
    busy++;
    for (int i = 0; i < n; i++)
        eng.free(p, ptrs[i]);
    busy--;
}

/* A kept block for size bytes: the smallest that holds them without wasting
 * more than a quarter, the newest of those; NULL if none. *bytes is its
 * size. attach_lock held. */
static void *take_kept(size_t size, size_t *bytes)
{
    size_t need = (size + block_size - 1) / block_size * block_size;
    if (!need)
        need = block_size;
    int best = -1;
    for (int i = nkept - 1; i >= 0; i--)
        if (kept[i].bytes >= need && kept[i].bytes - need <= need / 4 && (best < 0 || kept[i].bytes < kept[best].bytes))
            best = i;
    if (best < 0)
        return NULL;
    void *r = kept[best].ptr;
    *bytes = kept[best].bytes;
    kept_bytes -= kept[best].bytes;
    memmove(kept + best, kept + best + 1, (size_t)(nkept - best - 1) * sizeof kept[0]);
    nkept--;
    reused++;
    return r;
}

/* size bytes of pool memory (block aligned; reading as zero if `zero`), or
 * NULL: none attached, the caller is inside the engine or this library, a
 * fork child, or the pool cannot serve it (full or closed). A kept block
 * serves it if one fits. Not counted (pool_alloc counts). Precondition:
 * size >= block_size. */
static void *pool_take(size_t size, int zero)
{
    /* acquire: pairs with attach's release, so eng is seen set */
    if (busy || forked || __atomic_load_n(&threshold, __ATOMIC_ACQUIRE) == SIZE_MAX)
        return NULL;
    busy++;
    void *r = NULL, *owner = NULL, *old[KEEP_SLOTS];
    int nold = 0;
    size_t reused_bytes = 0;
    if (!eng.in_engine()) {
        pthread_mutex_lock(&attach_lock);
        if ((owner = pool)) {
            if (nkept) {
                nold = take_oldest(expired(now_ns()), old);
                r = take_kept(size, &reused_bytes);
            }
            if (!r) {
                r = eng.alloc(pool, size);
                if (!r && errno == ENOMEM && nkept) { /* full: the kept blocks first */
                    void *all[KEEP_SLOTS];
                    give_back(pool, all, take_oldest(nkept, all));
                    r = eng.alloc(pool, size);
                }
            }
        }
        pthread_mutex_unlock(&attach_lock);
    }
    if (nold)
        give_back(owner, old, nold);
    busy--;
    if (r && reused_bytes && zero)
        memset(r, 0, size); /* a kept block holds what its last owner wrote */
    return r;
}

/* pool_take for the C library's functions, counted (tm_interpose_counts).
 * Precondition: size >= threshold. */
static void *pool_alloc(size_t size, int zero)
{
    void *r = pool_take(size, zero);
    if (r) {
        __atomic_add_fetch(&served, 1, __ATOMIC_RELAXED);
        __atomic_add_fetch(&served_bytes, size, __ATOMIC_RELAXED);
    }
    return r;
}

/* Keep ptr, an allocation of p, for reuse instead of freeing it; 0 if it is
 * not kept (p is not the attached pool, the caller is inside the engine or
 * this library, a fork child, or it is larger than keep_limit). Makes room
 * by giving back the oldest kept blocks. Precondition: p = owner_of(ptr). */
static int keep(void *p, void *ptr)
{
    if (busy || forked || p != __atomic_load_n(&pool, __ATOMIC_RELAXED) || !keep_limit)
        return 0;
    busy++;
    int done = 0, nold = 0;
    void *old[KEEP_SLOTS];
    if (!eng.in_engine()) {
        size_t bytes = eng.alloc_size(p, ptr);
        pthread_mutex_lock(&attach_lock);
        if (p == pool && bytes && bytes <= keep_limit) {
            done = 1;
            for (int i = 0; i < nkept; i++)
                if (kept[i].ptr == ptr)
                    goto out; /* a double free: kept once */
            uint64_t now = now_ns();
            int n = expired(now);
            size_t left = kept_bytes;
            for (int i = 0; i < n; i++)
                left -= kept[i].bytes;
            while (n < nkept && (left + bytes > keep_limit || nkept - n >= KEEP_SLOTS))
                left -= kept[n++].bytes;
            nold = take_oldest(n, old);
            kept[nkept++] = (struct kept){ptr, bytes, now};
            kept_bytes += bytes;
            kept_frees++;
        }
    out:
        pthread_mutex_unlock(&attach_lock);
    }
    if (nold)
        give_back(p, old, nold);
    busy--;
    return done;
}

/* Precondition: p = owner_of(ptr) is not NULL. */
static void pool_free(void *p, void *ptr)
{
    busy++;
    eng.free(p, ptr);
    busy--;
}

static size_t pool_size(void *p, const void *ptr)
{
    busy++;
    size_t n = eng.alloc_size(p, ptr);
    busy--;
    return n;
}

/* p's DRAM budget in bytes, from the engine's tm_get_stats (found through
 * the library that holds tm_alloc, which is already loaded); 0 if unknown. */
static size_t dram_budget(void *p, void *alloc)
{
    Dl_info info;
    size_t r = 0;
    busy++;
    if (dladdr(alloc, &info) && info.dli_fname) {
        void *lib = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
        if (lib) {
            void (*get)(void *, tm_stats *) = (void (*)(void *, tm_stats *))dlsym(lib, "tm_get_stats");
            if (get) {
                tm_stats s;
                get(p, &s);
                r = (size_t)s.dram.capacity;
            }
            dlclose(lib);
        }
    }
    busy--;
    return r;
}

/* How many bytes of freed blocks to keep for p: TIEREDMEM_MALLOC_KEEP bytes if
 * set, else dram / KEEP_SHARE, at most KEEP_MAX. */
static size_t keep_limit_for(void *p, void *alloc)
{
    const char *env = getenv("TIEREDMEM_MALLOC_KEEP");
    if (env && *env) {
        char *end;
        unsigned long long n = strtoull(env, &end, 10);
        if (!*end)
            return (size_t)n;
    }
    size_t dram = dram_budget(p, alloc);
    size_t limit = dram ? dram / KEEP_SHARE : KEEP_FALLBACK;
    return limit < KEEP_MAX ? limit : KEEP_MAX;
}

/* Serve allocations of at least `threshold` bytes from `p` from now on;
 * returns 0, or -1 (nothing attached) if MAX_ARENAS arenas were attached
 * already. Preconditions: p is an open pool of the engine whose entry points
 * are given, its arena is [arena, arena + arena_len) and aligned to
 * block_size, and tm_interpose_detach(p) is called before p's owner drops it. */
EXPORT int tm_interpose_attach(void *p, size_t thresh, size_t block, void *arena, size_t arena_len,
                                void *(*alloc)(void *, size_t), void (*free_fn)(void *, void *),
                                size_t (*alloc_size)(void *, const void *), void *(*pool_of)(const void *),
                                int (*in_engine)(void))
{
    size_t limit = keep_limit_for(p, (void *)alloc);
    void *old[KEEP_SLOTS], *old_pool;
    int nold = 0;
    pthread_mutex_lock(&attach_lock);
    int known = 0;
    for (int i = 0; i < narenas; i++)
        known |= arenas[i].lo == (uintptr_t)arena;
    if (!known && narenas == MAX_ARENAS) {
        pthread_mutex_unlock(&attach_lock);
        return -1;
    }
    if (!known) {
        arenas[narenas].lo = (uintptr_t)arena;
        arenas[narenas].len = arena_len;
        narenas++;
    }
    eng.alloc = alloc;
    eng.free = free_fn;
    eng.alloc_size = alloc_size;
    eng.pool_of = pool_of;
    eng.in_engine = in_engine;
    uintptr_t lo = (uintptr_t)arena, hi = lo + arena_len;
    if (range_len) { /* keep earlier arenas' pointers recognised */
        if (range_lo < lo)
            lo = range_lo;
        if (range_lo + range_len > hi)
            hi = range_lo + range_len;
    }
    /* Grow len before moving lo down: a concurrent free sees a window that
     * still covers every earlier arena, whichever pair it reads. */
    __atomic_store_n(&range_len, hi - lo, __ATOMIC_RELAXED);
    __atomic_store_n(&range_lo, lo, __ATOMIC_RELEASE);
    if ((old_pool = pool) && pool != p) /* kept blocks of the pool attached before */
        nold = take_oldest(nkept, old);
    block_size = block;
    keep_limit = limit;
    pool = p;
    __atomic_store_n(&threshold, thresh ? thresh : 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&attach_lock);
    if (nold)
        give_back(old_pool, old, nold);
    return 0;
}

/* Allocate nothing more from p (nothing happens if p is not attached), and
 * give its kept blocks back to it before returning. Its pointers are still
 * freed into it, however long after. */
EXPORT void tm_interpose_detach(void *p)
{
    void *old[KEEP_SLOTS];
    int nold = 0;
    pthread_mutex_lock(&attach_lock);
    if (pool == p) {
        nold = take_oldest(nkept, old);
        pool = NULL;
        __atomic_store_n(&threshold, SIZE_MAX, __ATOMIC_RELAXED);
    }
    pthread_mutex_unlock(&attach_lock);
    if (nold)
        give_back(p, old, nold);
}

/* Since the process started: out[0] allocations served by a pool, out[1]
 * the bytes they asked for. */
EXPORT void tm_interpose_counts(uint64_t out[2])
{
    out[0] = __atomic_load_n(&served, __ATOMIC_RELAXED);
    out[1] = __atomic_load_n(&served_bytes, __ATOMIC_RELAXED);
}

/* The cache of freed blocks: out[0] allocations served by a kept block,
 * out[1] frees that kept their block, out[2] kept blocks given back to the
 * engine (aged out, evicted for room, the pool full, or detached), out[3]
 * blocks kept now, out[4] their bytes, out[5] the limit on those bytes. */
EXPORT void tm_interpose_cache_counts(uint64_t out[6])
{
    pthread_mutex_lock(&attach_lock);
    out[0] = reused;
    out[1] = kept_frees;
    out[2] = given_back;
    out[3] = (uint64_t)nkept;
    out[4] = kept_bytes;
    out[5] = keep_limit;
    pthread_mutex_unlock(&attach_lock);
}

/* ---- pymalloc's arenas ---------------------------------------------------
 * CPython's small-object allocator (pymalloc) carves its objects out of
 * arenas (1 MiB on 64-bit CPython 3.10+, 256 KiB before) that it maps itself
 * through its arena allocator, not malloc: neither the interposed functions
 * nor numpy's handler see them. tm_interpose_arenas_install puts this
 * library's arena allocator in its place (PyObject_SetArenaAllocator), for
 * the life of the process: from then on an arena is a pool allocation of the
 * attached pool when one is attached and the arena is at least a block (a
 * smaller one would take a whole block of the budget), whatever the
 * threshold; otherwise (none attached, a fork child, a full or closed pool,
 * the caller inside the engine) it is the previous allocator's. Its free
 * decides by address, as free() does: an arena of a pool (one that is
 * attached, detached or closed: it is freed into its engine, or kept like a
 * freed malloc) or the previous allocator's (every arena from before the
 * install, and every fallback). pymalloc calls both with the GIL held; the
 * pool's side takes attach_lock anyway, the counts are atomic.
 *
 * The layout of CPython's PyObjectArenaAllocator (Include/cpython/objimpl.h,
 * the same since 3.4); the library does not link libpython: the caller
 * passes PyObject_GetArenaAllocator and PyObject_SetArenaAllocator. */
typedef struct {
    void *ctx;
    void *(*alloc)(void *ctx, size_t size);
    void (*free)(void *ctx, void *ptr, size_t size);
} arena_allocator;

static arena_allocator prev_arenas; /* set once, before ours is installed */
static int arenas_installed;        /* written with the GIL held */
/* The first `arena_floor` bytes of arenas made after the install stay the
 * previous allocator's: the interpreter's own working set (modules, code,
 * the objects every statement touches), made first, stays outside, so that a
 * small budget tiers the program's data rather than thrashing the
 * interpreter. */
static int64_t arena_floor;
static int64_t arena_prev_bytes; /* made by the previous allocator since the install (never less) */
/* tm_interpose_arena_counts: arenas the pool served and the pool took back,
 * arenas the previous allocator served and took back, the bytes of pool
 * arenas now. */
static uint64_t arenas_pool, arenas_pool_freed, arenas_prev, arenas_prev_freed;
static int64_t arena_pool_bytes;

static void *arena_alloc(void *ctx, size_t size)
{
    (void)ctx;
    /* acquire: pairs with attach's release, so block_size is seen set */
    if (__atomic_load_n(&threshold, __ATOMIC_ACQUIRE) != SIZE_MAX && size >= block_size &&
        __atomic_load_n(&arena_prev_bytes, __ATOMIC_RELAXED) >= arena_floor) {
        void *r = pool_take(size, 0);
        if (r) {
            __atomic_add_fetch(&arenas_pool, 1, __ATOMIC_RELAXED);
            __atomic_add_fetch(&arena_pool_bytes, (int64_t)size, __ATOMIC_RELAXED);
            return r;
        }
    }
    void *r = prev_arenas.alloc(prev_arenas.ctx, size);
    if (r) {
        __atomic_add_fetch(&arenas_prev, 1, __ATOMIC_RELAXED);
        __atomic_add_fetch(&arena_prev_bytes, (int64_t)size, __ATOMIC_RELAXED);
    }
    return r;
}

static void arena_free(void *ctx, void *ptr, size_t size)
{
    (void)ctx;
    if (ptr && in_range(ptr)) {
        void *p = owner_of(ptr);
        if (p) { /* in a fork child: the child's copy goes, as for free() */
            if (!keep(p, ptr))
                pool_free(p, ptr);
            __atomic_add_fetch(&arenas_pool_freed, 1, __ATOMIC_RELAXED);
            __atomic_sub_fetch(&arena_pool_bytes, (int64_t)size, __ATOMIC_RELAXED);
            return;
        }
    }
    __atomic_add_fetch(&arenas_prev_freed, 1, __ATOMIC_RELAXED);
    prev_arenas.free(prev_arenas.ctx, ptr, size);
}

/* Make this library pymalloc's arena allocator, keeping the one installed
 * before for what the pool does not serve and for the first `floor` bytes of
 * arenas; 1 if installed now, 0 if it was already. Never undone: arenas live as long as an object in them, and each
 * must be freed by the allocator that made it. Precondition: the GIL is held
 * (ctypes.PyDLL), so that no arena is made or freed meanwhile; get and set
 * are CPython's PyObject_GetArenaAllocator and PyObject_SetArenaAllocator. */
EXPORT int tm_interpose_arenas_install(void (*get)(arena_allocator *), void (*set)(arena_allocator *),
                                       int64_t floor)
{
    if (arenas_installed)
        return 0;
    arena_floor = floor;
    get(&prev_arenas);
    arena_allocator mine = {NULL, arena_alloc, arena_free};
    set(&mine); /* CPython copies the struct */
    arenas_installed = 1;
    return 1;
}

/* out[0] 1 if installed, out[1] arenas the pool served, out[2] pool arenas
 * freed, out[3] arenas the previous allocator served since the install,
 * out[4] of its arenas freed since (including ones from before the
 * install), out[5] bytes of pool arenas now. */
EXPORT void tm_interpose_arena_counts(uint64_t out[6])
{
    out[0] = (uint64_t)arenas_installed;
    out[1] = __atomic_load_n(&arenas_pool, __ATOMIC_RELAXED);
    out[2] = __atomic_load_n(&arenas_pool_freed, __ATOMIC_RELAXED);
    out[3] = __atomic_load_n(&arenas_prev, __ATOMIC_RELAXED);
    out[4] = __atomic_load_n(&arenas_prev_freed, __ATOMIC_RELAXED);
    int64_t b = __atomic_load_n(&arena_pool_bytes, __ATOMIC_RELAXED);
    out[5] = b > 0 ? (uint64_t)b : 0;
}

/* ---- the interposed functions ----------------------------------------------
 * Each has the C library's contract; pool memory is block aligned. */

static size_t current_threshold(void)
{
    return __atomic_load_n(&threshold, __ATOMIC_RELAXED);
}

EXPORT void *malloc(size_t size)
{
    if (LIKELY(size < current_threshold()))
        return next_malloc(size);
    void *r = pool_alloc(size, 0);
    return r ? r : next_malloc(size);
}

EXPORT void *calloc(size_t n, size_t size)
{
    size_t total;
    if (__builtin_mul_overflow(n, size, &total) || LIKELY(total < current_threshold()))
        return next_calloc(n, size); /* an overflow is the next allocator's to report */
    void *r = pool_alloc(total, 1); /* fresh pool memory reads as zero; a kept block is cleared */
    return r ? r : next_calloc(n, size);
}

EXPORT void free(void *ptr)
{
    if (LIKELY(!in_range(ptr))) {
        if (!in_boot(ptr))
            next_free(ptr);
        return;
    }
    void *p = owner_of(ptr);
    if (p) {
        if (!keep(p, ptr))
            pool_free(p, ptr);
    } else
        next_free(ptr); /* the range of a released arena, reused by the C library */
}

/* Move [ptr, ptr+old) into a new allocation of size bytes (pool or not, by
 * size) and free ptr with free(). */
static void *move_to_new(void *ptr, size_t old, size_t size)
{
    void *q = malloc(size);
    if (!q)
        return NULL;
    memcpy(q, ptr, old < size ? old : size);
    free(ptr);
    return q;
}

EXPORT void *realloc(void *ptr, size_t size)
{
    if (!ptr)
        return malloc(size);
    if (in_boot(ptr))
        return move_to_new(ptr, boot_size(ptr), size);
    void *p = NULL;
    if (in_range(ptr))
        p = owner_of(ptr);
    if (p) {
        size_t old = pool_size(p, ptr);
        if (size <= old && size >= current_threshold() && size > old / 2)
            return ptr; /* still fits its blocks without wasting half of them */
        return move_to_new(ptr, old, size);
    }
    if (size >= current_threshold()) {
        void *q = pool_alloc(size, 0);
        if (q) {
            size_t old = next_usable_size(ptr);
            memcpy(q, ptr, old < size ? old : size);
            next_free(ptr);
            return q;
        }
    }
    return next_realloc(ptr, size);
}

EXPORT void *reallocarray(void *ptr, size_t n, size_t size)
{
    size_t total;
    if (__builtin_mul_overflow(n, size, &total)) {
        errno = ENOMEM;
        return NULL;
    }
    return realloc(ptr, total);
}

/* Pool memory for an aligned request, or NULL (then the next allocator
 * serves it, or rejects it): alignments beyond the pool's block size, or not
 * powers of two, are not the pool's. */
static void *pool_aligned(size_t align, size_t size)
{
    int fits = align <= block_size && !(align & (align - 1));
    return size >= current_threshold() && fits ? pool_alloc(size, 0) : NULL;
}

EXPORT int posix_memalign(void **out, size_t align, size_t size)
{
    if (align < sizeof(void *) || (align & (align - 1)))
        return EINVAL;
    void *r = pool_aligned(align, size);
    if (r) {
        *out = r;
        return 0;
    }
    return next_posix_memalign(out, align, size);
}

EXPORT void *aligned_alloc(size_t align, size_t size)
{
    void *r = pool_aligned(align, size);
    return r ? r : next_aligned_alloc(align, size);
}

EXPORT void *memalign(size_t align, size_t size)
{
    void *r = pool_aligned(align, size);
    return r ? r : next_memalign(align, size);
}

EXPORT void *valloc(size_t size)
{
    return memalign((size_t)sysconf(_SC_PAGESIZE), size);
}

EXPORT void *pvalloc(size_t size)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    if (size > SIZE_MAX - page) {
        errno = ENOMEM;
        return NULL;
    }
    return memalign(page, size ? (size + page - 1) & ~(page - 1) : page);
}

EXPORT size_t malloc_usable_size(void *ptr)
{
    if (!ptr)
        return 0;
    if (in_boot(ptr))
        return boot_size(ptr);
    if (in_range(ptr)) {
        void *p = owner_of(ptr);
        if (p)
            return pool_size(p, ptr);
    }
    return next_usable_size(ptr);
}
