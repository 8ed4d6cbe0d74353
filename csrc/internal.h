/* internal.h: the engine's private types, shared by the files of csrc/.
 *
 * Locking: one mutex (tm_pool.lock) guards all metadata, the extent
 * allocator, the slot maps and the counters: state transitions and
 * bookkeeping only. It is never held across tier I/O, a copy, a checksum or
 * a userfaultfd ioctl that copies data: the blocks moved meanwhile are
 * marked in flight (block.h), and what is left is counted in
 * tm_stats.locked_io_bytes. Whoever holds it must never touch arena memory
 * (that would fault into a handler that waits for the same lock). The
 * shadow (below) is engine memory: touching it never waits for a handler.
 * Take it with tm_lock/tm_unlock (at the end): they also mark the thread as
 * inside the engine, so that a malloc interposer gives it no pool memory.
 */
#ifndef TIEREDMEM_INTERNAL_H
#define TIEREDMEM_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>

#include "tieredmem.h"

#define TM_MAX_HANDLERS 8
#define TM_BATCH_BYTES (4u << 20)  /* largest promotion / demotion batch */
#define TM_IO_BYTES (512u << 10)     /* largest single request */
#define TM_ZERO_MIN_BYTES (256u << 10) /* smallest zero fill of fresh memory */
#define TM_HUGE_BYTES (2ul << 20)      /* a transparent huge page */
#define TM_ERRLEN 512

/* Engine-private block flags (tm_pool.xflags). */
enum {
    /* Mapped writable without write protection (moved back from the shadow):
     * whether it is clean is decided by its checksum when it is demoted. */
    TM_X_VERIFY = 1 << 0,
    /* Being read in from a lower tier outside the lock (also TM_F_BUSY). */
    TM_X_LOADING = 1 << 1,
    /* Named by the policy's answer being checked (finds duplicates). */
    TM_X_NAMED = 1 << 2,
    /* In a fork child's view: mapped by the child (fork.c). */
    TM_X_CHILD = 1 << 3,
    /* Being moved from PMEM to NVMe outside the lock (also TM_F_BUSY). */
    TM_X_CASCADE = 1 << 4,
    /* Freed, its pages still mapped (writable) for the next allocation
     * there (spare.c); not allocated, tier TM_UNBACKED. */
    TM_X_SPARE = 1 << 5,
    /* Resident, no slot, zeroed when a spare was reused by an allocation
     * (spare.c), mapped writable: whether it was written since is decided at
     * eviction by its content. Still all zero, it is dropped back to
     * UNBACKED, as a fresh block never written would be. */
    TM_X_ZERO = 1 << 6,
};

/* Checked preconditions and invariants (as mimalloc's mi_assert_internal).
 * Each costs a compare or two next to a fault's microseconds, so they are
 * compiled in unless TM_NDEBUG is defined: a broken invariant stops the
 * process with its location instead of corrupting data. */
#ifndef TM_NDEBUG
#define tm_assert(cond) ((cond) ? (void)0 : tm_os_assert_fail(#cond, __FILE__, __LINE__, __func__))
#else
#define tm_assert(cond) ((void)0)
#endif

/* ---- os.c: the OS layer --------------------------------------------- */

/* Print the failed assertion on stderr and abort. */
void tm_os_assert_fail(const char *cond, const char *file, int line, const char *func)
    __attribute__((noreturn, cold));

/* An anonymous private range of `size` bytes at an address aligned to
 * `align` (a power of two >= page size), reserved but not backed, never
 * made of huge pages; a fork child inherits it (copy-on-write) only if
 * `inherit`. NULL and errno on failure. */
void *tm_os_reserve(size_t size, size_t align, int inherit);
/* Precondition: size is a multiple of 2 MiB. An anonymous range aligned to
 * 2 MiB whose pages the kernel makes huge when it can (MADV_HUGEPAGE), not
 * inherited by a fork child, not populated. NULL and errno on failure. */
void *tm_os_huge_reserve(size_t size);
/* Precondition: size is a multiple of 4096. A buffer for tier I/O, in
 * transparent huge pages where the system allows: a disk request holds at
 * most max_segments pages (254 here: about 1 MiB of small pages), so only in
 * huge pages does a read of several MiB reach the disk as one request. Not
 * inherited by a fork child; `populate`d now, or on first use. Free it with
 * tm_os_unmap(buf, size). NULL on failure (errno). */
void *tm_os_io_buffer(size_t size, int populate);
void tm_os_unmap(void *addr, size_t size);
/* Free the file pages in [off, off+len); both block aligned. Also removes
 * them from every mapping of the file. */
int tm_os_punch(int fd, uint64_t off, uint64_t len);
/* Write-fault every page of [addr, addr+len) (MADV_POPULATE_WRITE): a page
 * shared copy-on-write becomes the caller's own. Precondition: every page is
 * mapped and none is write-protected by a userfaultfd (either would wait for
 * its handler). 0 or -errno. */
int tm_os_populate_write(void *addr, size_t len);
/* Free the pages of [addr, addr+len) of an anonymous range (it reads as
 * zero, or faults, afterwards); also clears poison entries. */
int tm_os_zap(void *addr, size_t len);
/* A pipe, both ends close-on-exec, the read end non-blocking. 0 or -1 and
 * errno. */
int tm_os_pipe(int fds[2]);
/* An eventfd, close-on-exec; fd or -errno. */
int tm_os_eventfd(int nonblocking);
/* Add one to eventfd fd's count (fd open), waking a thread that polls it. */
void tm_os_kick(int fd);
/* 1 if every write end of the pipe whose read end is fd is closed. */
int tm_os_hung_up(int fd);
/* A userfaultfd, non-blocking and close-on-exec; -errno if denied. */
int tm_os_userfaultfd(void);
/* Unlinked file, 0600, in directory `dir`, opened with `flags` | O_RDWR.
 * Returns fd or -errno. */
int tm_os_tmpfile(const char *dir, int flags);
/* The CPUs this thread may run on; returns how many were written. */
int tm_os_cpus(int *cpus, int max);
int tm_os_pin_self(int cpu);
uint64_t tm_os_now_ns(void);
/* Create `path` as a directory 0700 if missing; -EPERM unless it is then a
 * directory (not a symlink) owned by this user and closed to others. */
int tm_os_private_dir(const char *path);
/* 1 if `dir` is on a filesystem mounted with the dax option. */
int tm_os_is_dax(const char *dir);
/* Mount point of a filesystem mounted with -o dax, or NULL. */
const char *tm_os_find_dax_mount(char *buf, size_t len);
/* Precondition: size > 0. Create the file `path` (0600; it must not exist,
 * and a symlink there is not followed) of `size` bytes and map it shared and
 * writable; the descriptor is not kept. NULL and errno on failure (EEXIST:
 * the file exists). */
void *tm_os_shm_create(const char *path, size_t size);
/* 0 or -errno. */
int tm_os_unlink(const char *path);
/* This process's start time, in clock ticks after boot (/proc/self/stat
 * field 22, as a reader finds it for any pid); 0 if unknown. */
uint64_t tm_os_start_time(void);

/* ---- tier.c and tier_*.c: lower-tier backends --------------------------- */

typedef struct tm_io {
    uint64_t slot;    /* slot index within the tier */
    void *buf;        /* block_size * nblocks bytes, page aligned */
    uint32_t nblocks;
} tm_io;

typedef struct tm_tier tm_tier;

/* Emulated speed of a tier (all 0: as fast as it is). */
typedef struct tm_emulation {
    uint64_t read_ns, write_ns;      /* per request */
    uint64_t read_mbps, write_mbps;  /* 10^6 bytes per second */
    uint64_t read_busy, write_busy;  /* when the medium is free (ns): threads share its bandwidth */
} tm_emulation;

/* A thread's queue of NVMe requests in flight (tier_nvme.c): each thread that
 * does tier I/O owns one, so threads do I/O at once, outside the pool lock.
 * NULL (no native AIO here) means synchronous requests. */
typedef struct tm_ioq tm_ioq;
tm_ioq *tm_ioq_create(void);
void tm_ioq_destroy(tm_ioq *q);

typedef struct tm_tier_ops {
    /* Transfer every request; return 0 or -errno of the first failure. */
    int (*readv)(tm_tier *t, tm_ioq *q, const tm_io *ios, int n);
    int (*writev)(tm_tier *t, tm_ioq *q, const tm_io *ios, int n);
    /* Optional: start reads on q without waiting (one batch in flight per
     * queue), and wait for them; both return 0 or -errno. */
    int (*submit_readv)(tm_tier *t, tm_ioq *q, const tm_io *ios, int n);
    int (*wait_reads)(tm_tier *t, tm_ioq *q);
    /* Forget the contents of n slots (hole punch), best effort. */
    void (*discard)(tm_tier *t, uint64_t slot, uint64_t n);
    void (*close)(tm_tier *t);
} tm_tier_ops;

typedef struct tm_inject {
    int err;          /* errno to fail with; 0 = none */
    int short_io;     /* fail as a short transfer */
    uint64_t delay_ns; /* succeed, but only after this long (a slow device) */
    uint64_t skip;    /* let this many operations succeed first */
} tm_inject;

struct tm_tier {
    const tm_tier_ops *ops;
    int id;                /* TM_PMEM or TM_NVME */
    const char *name;
    size_t bs;
    uint64_t nslots;       /* 0: tier absent */
    uint32_t first_slot;   /* global numbering: slot ids are unique across tiers */
    uint64_t *used_map;    /* bit per slot */
    uint32_t *csum;        /* CRC-32C of what each slot holds */
    /* Per slot, how many fork generations keep it (fork.c), and
     * TM_KEPT_FREED once its block let it go meanwhile; NULL before a fork. */
    uint16_t *kept;
    uint64_t kept_slots;   /* slots kept */
    uint64_t used;
    uint64_t cursor;       /* next-fit: sequential demotions get adjacent slots */
    uint64_t peak;
    int fd;
    uint8_t *map;          /* PMEM: the mapped file (read-only unless on DAX) */
    int direct;            /* NVMe: O_DIRECT */
    int dax;               /* PMEM: on a DAX filesystem */
    tm_inject inject_read, inject_write;
    tm_emulation emu;
    uint64_t nreads, nwrites;  /* operations, for injection (atomic: threads race) */
};

int tm_tier_pmem_open(tm_tier *t, const char *dir, char *err);
int tm_tier_nvme_open(tm_tier *t, const char *dir, char *err);
/* Common part: slot map for nslots; called by the backends' open. */
int tm_tier_init_slots(tm_tier *t, uint64_t nslots);
void tm_tier_close(tm_tier *t);
/* Slot allocation near `hint`; returns the slot or UINT64_MAX when full. */
uint64_t tm_tier_slot_alloc(tm_tier *t, uint64_t hint);
/* A kept slot stays allocated until it is let go. */
void tm_tier_slot_free(tm_tier *t, uint64_t slot);
/* Keep a used slot for a forked child that may read it: it is not
 * rewritten, discarded or reused until let go (the writer takes another).
 * 0 or -ENOMEM. */
int tm_tier_keep(tm_tier *t, uint64_t slot);
/* Let go of a kept slot; returns 1 if that freed it (its block had). */
int tm_tier_let_go(tm_tier *t, uint64_t slot);
int tm_tier_kept(const tm_tier *t, uint64_t slot);
#define TM_KEPT_FREED 0x8000u
/* Forget the contents of n slots from `slot` (hole punch), best effort,
 * except those kept. */
void tm_tier_discard(tm_tier *t, uint64_t slot, uint64_t n);
/* I/O through the injection layer, on the caller's queue. Safe from several
 * threads at once on different queues and different slots. */
int tm_tier_readv(tm_tier *t, tm_ioq *q, const tm_io *ios, int n);
int tm_tier_writev(tm_tier *t, tm_ioq *q, const tm_io *ios, int n);
/* Asynchronous reads where the backend has them: -ENOTSUP otherwise. */
int tm_tier_submit_readv(tm_tier *t, tm_ioq *q, const tm_io *ios, int n);
int tm_tier_wait_reads(tm_tier *t, tm_ioq *q);
int tm_inject_parse(const char *spec, tm_tier *pmem, tm_tier *nvme, char *err);

/* ---- checksum.c --------------------------------------------------------- */

/* CRC-32C of len bytes. */
uint32_t tm_crc32c(const void *data, size_t len);
/* Whether len bytes (a multiple of 8, 8-byte aligned) are all zero. */
int tm_all_zero(const void *data, size_t len);
/* A block's checksum: the CRC-32C of the CRC-32Cs of its four quarters (of
 * the whole when len is not a multiple of 32). */
uint32_t tm_block_checksum(const void *data, size_t len);

/* ---- extent.c: block-granular extent allocator ------------------------- */

typedef struct tm_extent { int64_t start, len; } tm_extent;

typedef struct tm_extents {
    tm_extent *free;   /* sorted by start, never adjacent (coalesced) */
    int64_t nfree, cap;
} tm_extents;

int tm_extents_init(tm_extents *e, int64_t nblocks);
void tm_extents_destroy(tm_extents *e);
/* First fit; returns the first block or -1. */
int64_t tm_extents_alloc(tm_extents *e, int64_t len);
/* Allocate [start, start+len) itself: 0, -EINVAL if it is not all free, or
 * -ENOMEM. */
int tm_extents_take(tm_extents *e, int64_t start, int64_t len);
/* Precondition: [start, start+len) is allocated. Returns 0 or -ENOMEM. */
int tm_extents_free(tm_extents *e, int64_t start, int64_t len);

/* ---- the pool ------------------------------------------------------- */

/* Stream readahead: the next runs of a sequential scan, read from the lower
 * tiers into buffers of their own while the application works on the last
 * run. Up to `depth` runs are in flight at once, so that the disk always has
 * several large requests to work on; each run has its own I/O queue, so that
 * waiting for one never reaps another's events. */
#define TM_RA_MAX 4
enum tm_ra_state {
    TM_RA_IDLE,     /* its buffer is free */
    TM_RA_READING,  /* its NVMe reads are in flight */
    TM_RA_WAITING,  /* a handler waits for them without the lock */
    TM_RA_MAPPING,  /* its blocks are being mapped: the buffer is in use */
};
typedef struct tm_ra_run {
    enum tm_ra_state state;
    int64_t start, end;    /* the arena range scanned: the stream's next run starts at end */
    int64_t n;             /* blocks read; block i is at buf + i blocks */
    int64_t *blocks;       /* their ids, ascending */
    uint32_t *slots;       /* their slots when submitted (PMEM or NVMe) */
    uint8_t *buf;          /* batch_max blocks, page aligned */
    tm_ioq *q;
    int async;             /* mapped by an idle handler once read, ahead of the stream */
} tm_ra_run;
typedef struct tm_readahead {
    tm_ra_run run[TM_RA_MAX];
    int depth;             /* runs with buffers: a share of the DRAM budget */
} tm_readahead;

/* A detected access stream: faults at `next` or up to `window` blocks past
 * it continue it (blocks still resident may lie between); `stride` > 1 is a
 * strided stream. A sequential stream has passed [start, next): those blocks
 * are demoted first (stream.c); [lo, hi) of
 * them were looked at already. */
typedef struct tm_stream {
    int64_t next, window, stride, last;
    int64_t start, lo, hi;
    int64_t ahead;   /* end of its readahead when last reached: faults up to there continue it */
    uint64_t born;   /* fault count when it started */
    uint64_t used;   /* fault count when last matched: the LRU entry is reused */
} tm_stream;
#define TM_STREAMS 8
#define TM_RECENT 4

#define TM_SPARE_RECENT 16

/* Zero fills from huge pages (hugezero.c): chunks of 2 MiB populated ahead
 * of need, off the fault path, moved into the arena whole. Their DRAM is in
 * the budget: resident + spare + hz.held <= dram_blocks. */
#define TM_HUGEZERO_CHUNKS 4
enum tm_hz_state {
    TM_HZ_EMPTY,    /* to be populated */
    TM_HZ_FILLING,  /* being populated, the lock released */
    TM_HZ_READY,    /* populated: zeros, in a huge page if the kernel had one */
    TM_HZ_TAKEN,    /* being moved into the arena by a zero fill */
};
typedef struct tm_hugezero {
    uint8_t *base;         /* TM_HUGEZERO_CHUNKS chunks of 2 MiB; NULL: none */
    int64_t per;           /* blocks per chunk */
    int64_t held;          /* blocks of DRAM the filling and ready chunks hold: in the budget */
    enum tm_hz_state state[TM_HUGEZERO_CHUNKS];
} tm_hugezero;

/* Advice on a range of blocks that is kept (sequential / random). */
typedef struct tm_range { int64_t start, end; int advice; } tm_range;
#define TM_RANGES 16

/* The slots kept for the children of one fork (fork.c). */
typedef struct tm_fork_gen {
    int fd;          /* read end of a pipe whose write end only they hold: hangs up when all are gone */
    uint32_t *slots; /* global slot ids */
    int64_t n;
} tm_fork_gen;

typedef struct tm_worker {
    struct tm_pool *pool;
    pthread_t thread;
    int cpu;
    tm_ioq *ioq;         /* its NVMe requests in flight */
    uint8_t *iobuf;      /* batch_max blocks, page aligned */
    /* 3 batch_max of block ids: the fault's (or advice's), its victims', the
     * PMEM cascade's (at batch_max offsets: pool.resize may change
     * batch_blocks while the lock is released) */
    int64_t *list;
} tm_worker;

struct tm_pool {
    size_t bs;
    int bshift;
    /* DRAM: anonymous memory. A resident block's pages are mapped in the
     * arena (base) or, while unmapped (parked by sampling, or on their way
     * down), at the same offset in the shadow, where the engine reads and
     * writes them directly. Blocks move between the two with UFFDIO_MOVE. */
    uint8_t *base;
    uint8_t *shadow;
    uint8_t *zeros;       /* batch_max blocks that read as zero: source of zero fills */
    size_t arena_size;
    int64_t nblocks;
    uint8_t *xflags;      /* engine-private per-block flags (TM_X_*) */

    int uffd;
    int stop_fd;          /* eventfd: tells handler threads to exit */
    int fill_fd;          /* eventfd: tells idle handlers that readahead runs wait to be mapped */
    int dirty_tracking;   /* clean blocks are mapped write-protected */
    tm_worker workers[TM_MAX_HANDLERS];
    int nworkers;
    tm_worker bg;              /* the background thread (background.c) */
    tm_worker ctl;             /* advice and resize, on the application's threads */
    pthread_mutex_t ctl_lock;  /* one user of ctl at a time; taken before the pool lock */
    pthread_cond_t bg_cond;    /* wakes it early: stop, the low watermark */
    int bg_started, bg_stop, bg_kick;
    pthread_cond_t io_cond;    /* broadcast when an unlocked writeback or load is done */
    int64_t writeback_blocks;  /* victims of unlocked writebacks in flight */
    int64_t loading_blocks;    /* blocks of unlocked promotions in flight (counted resident) */
    int64_t planned_blocks;    /* flagged loading, waiting for room to be made (not counted resident) */
    int64_t cascade_blocks;    /* being moved from PMEM to NVMe outside the lock */
    /* Spare blocks (spare.c): freed, their pages kept mapped for reuse.
     * DRAM held, so the budget is resident + spare <= dram_blocks; room
     * is made by giving spares back first, which needs no I/O. */
    int64_t spare;
    int64_t spare_hand;        /* where the next give-back looks */
    tm_extent spare_recent[TM_SPARE_RECENT]; /* latest frees that kept spares: where to allocate next */
    int spare_recent_i;
    int spare_idle_ticks;      /* background ticks since a spare was reused */

    pthread_mutex_t lock;
    tm_meta meta;
    uint32_t *alloc_len;  /* at an allocation's first block: its length in blocks */
    tm_extents extents;
    tm_tier pmem, nvme;

    int64_t batch_blocks;      /* blocks per I/O batch */
    int64_t io_max_blocks;     /* blocks per request within a batch */
    int64_t zero_min_blocks;   /* smallest zero fill, in blocks */
    int64_t dram_blocks;       /* budget */
    int64_t resident;          /* blocks in DRAM */
    int64_t cap_blocks;        /* allocatable */
    int64_t reserved;          /* blocks in live allocations */
    int64_t live_allocs;
    int64_t pins;              /* metadata views and the like */
    int closed;                /* no new allocations */
    int released;              /* engine resources gone (or going: releasing) */
    int releasing;             /* a thread is releasing them, the lock not held */
    int dropped;               /* the owner gave up the handle */
    int freeing;               /* a thread frees the handle: nobody else may */
    int64_t scan_end;          /* end of the highest allocation ever made */
    int64_t clock_hand, pmem_hand, steal_hand;  /* advise(cold) moves clock_hand to its range */
    int64_t batch_max;         /* batch_blocks at creation: buffers' size */
    tm_stream streams[TM_STREAMS];
    /* Blocks of the latest faults: CLOCK takes them last, so that one
     * instruction touching several blocks (a memcpy) can have them all in DRAM
     * at once even when advice pins the rest. */
    int64_t recent[TM_RECENT];
    int recent_i;
    tm_range ranges[TM_RANGES];
    int nranges;

    /* hint sampling (background.c) */
    uint32_t sample_budget_ppm;
    int64_t sample_hand;
    double sample_per_tick;    /* blocks to sample next tick */
    double hint_cost_ns;       /* smoothed cost of one hint fault */
    double zap_cost_ns;        /* smoothed cost of unmapping one block */
    double hint_ratio;         /* smoothed share of sampled blocks accessed */
    uint64_t tick_hints, tick_sampled, tick_hint_ns, tick_fault_ns, tick_demotions;
    int64_t wm_boost;          /* blocks added to the watermarks (background.c) */
    uint64_t tick_fault_demotions;  /* blocks faults demoted this tick while writes were needed */
    uint64_t wm_written;       /* bytes_written when a fault last demoted (watermark.c) */

    int64_t *trace;            /* access trace buffer, or NULL */
    int64_t trace_cap, trace_n;

    tm_readahead ra;
    tm_hugezero hz;

    /* fork (fork.c) */
    int forks;                 /* forks so far: arena pages may be shared with a child */
    tm_fork_gen *gens;         /* generations whose children may still live */
    int ngens;
    tm_fork_gen pending;       /* kept between prepare and parent/child */
    int pending_wfd;
    int child;                 /* this is a forked child's view of the parent's pool */
    uint8_t *child_buf;        /* one block: the child's reads */
    int64_t *child_ring;       /* the blocks it read from below, oldest first */
    int64_t child_cap, child_held, child_head;
    int64_t child_run;         /* blocks per read at most */
    char fork_err[160];        /* why a child cannot read lower-tier blocks, if it cannot */

    tm_policy_ops policy;
    void **policy_mem;         /* tm_policy_alloc's blocks, freed at release */
    int npolicy_mem;
    tm_stats st;
    char err[TM_ERRLEN];
    struct tm_publisher *publisher;  /* its published statistics and the origins of its allocations (publish.c) */
    struct tm_ghost *ghost;    /* benefit measurement (ghost.c), for pools that enabled it; else NULL */
};

static inline int64_t tm_block_of(const struct tm_pool *p, const void *addr)
{
    return (int64_t)(((const uint8_t *)addr - p->base) >> p->bshift);
}

static inline void *tm_block_addr(const struct tm_pool *p, int64_t b)
{
    return p->base + ((size_t)b << p->bshift);
}

/* The tier of global slot id g (slot ids are unique across tiers). */
static inline tm_tier *tm_slot_tier(struct tm_pool *p, uint32_t g)
{
    return (p->pmem.nslots && g < p->pmem.first_slot + p->pmem.nslots) ? &p->pmem : &p->nvme;
}

/* The next block of a scan (CLOCK, slot reclaim, PMEM cascade) from *hand.
 * The scans only walk blocks that were ever allocated: the arena's address
 * space is four times its capacity, but first-fit keeps allocations low. */
static inline int64_t tm_scan_next(const struct tm_pool *p, int64_t *hand)
{
    int64_t b = *hand < p->scan_end ? *hand : 0;
    *hand = b + 1;
    return b;
}

static inline tm_tier *tm_tier_by_id(struct tm_pool *p, int id)
{
    return id == TM_PMEM ? &p->pmem : &p->nvme;
}

/* Global slot id g's slot in its tier. */
static inline uint64_t tm_slot_local(struct tm_pool *p, uint32_t g)
{
    return g - tm_slot_tier(p, g)->first_slot;
}

static inline uint8_t *tm_shadow_of(const struct tm_pool *p, int64_t b)
{
    return p->shadow + ((size_t)b << p->bshift);
}

/* Whether b is one of the latest faults' blocks, which one instruction may
 * need all at once: victim choices spare them. */
static inline int tm_recent(const struct tm_pool *p, int64_t b)
{
    for (int i = 0; i < TM_RECENT; i++)
        if (p->recent[i] == b)
            return 1;
    return 0;
}

/* Insertion sort: the lists are a batch long at most. */
static inline void tm_sort_ids(int64_t *a, int64_t n)
{
    for (int64_t i = 1; i < n; i++) {
        int64_t v = a[i], j = i;
        for (; j > 0 && a[j - 1] > v; j--)
            a[j] = a[j - 1];
        a[j] = v;
    }
}

/* Apply fn to maximal runs of consecutive block ids in list[0..n). */
static inline void tm_for_runs(struct tm_pool *p, const int64_t *list, int64_t n,
                               int (*fn)(struct tm_pool *, int64_t, int64_t))
{
    for (int64_t i = 0; i < n;) {
        int64_t j = i + 1;
        while (j < n && list[j] == list[j - 1] + 1)
            j++;
        fn(p, list[i], j - i);
        i = j;
    }
}

/* The background's tick. */
#define TM_TICK_NS (50ull * 1000 * 1000)

/* The engine's files, each a concept, from the bottom layer up: a file
 * calls only the ones above it in this list (docs/architecture.md draws
 * the layers). Unless said otherwise, a function runs with the pool lock
 * held. */

/* ---- error.c --------------------------------------------------------- */

/* Record an error for tm_last_error (lock held or pool private). */
void tm_set_error(struct tm_pool *p, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Creation errors before a pool exists. */
void tm_set_create_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- publish.c ------------------------------------------------------- */

/* Set up what the pool shows outside itself: its published file if
 * `publish` (a failure is recorded as the pool's error and leaves it
 * unpublished), and room for the origins of its allocations. Called at
 * creation, before its threads start. 0 or -ENOMEM. */
int tm_publish_init(struct tm_pool *p, int publish);
/* The background's tick: publish `st` (the pool's tm_stats_snapshot), and
 * once a period the rates and the largest allocations. No-op if the pool
 * publishes nothing. */
void tm_publish_tick(struct tm_pool *p, const tm_stats *st);
/* The allocation at block b is being freed: forget its origin. */
void tm_publish_freed(struct tm_pool *p, int64_t b);
/* Remove the published file (unless this is a forked child of its
 * creator) and free the origins. Safe on a pool never set up. */
void tm_publish_fini(struct tm_pool *p);

/* ---- ghost.c: what more or less DRAM would be worth ------------------ */

typedef struct tm_ghost {
    uint32_t *stamp;      /* per block: eviction clock while below DRAM; in DRAM, seen used and park time (ghost.c) */
    int64_t nblocks;
    size_t bytes;         /* mapped, with this header */
    uint32_t clock;       /* evictions so far, from 1 (0 is skipped) */
    uint64_t epoch_ns;    /* park times are units of TM_GHOST_UNIT_NS since */
    tm_ghost_stats st;    /* cumulative; the census is taken when read */
} tm_ghost;

/* Histogram buckets: refault distances in quarter octaves of blocks, times
 * (ages) in octaves of TM_GHOST_UNIT_NS (bucket 0: under one unit). */
int tm_ghost_distance_bucket(uint64_t d);
int tm_ghost_age_bucket(uint64_t units);
/* For nblocks blocks, its times counted from now_ns; NULL if out of memory.
 * No lock needed (the pool's is held by the hooks below). */
tm_ghost *tm_ghost_new(int64_t nblocks, uint64_t now_ns);
void tm_ghost_free(tm_ghost *g);
/* Block b left DRAM for a lower tier. */
void tm_ghost_evicted(tm_ghost *g, int64_t b);
/* Block b came back into DRAM from a lower tier: `used` if a fault on it
 * brought it (not ahead of need). */
void tm_ghost_refault(tm_ghost *g, int64_t b, int used);
/* Blocks [b, b+n) were parked for hint sampling at now_ns. */
void tm_ghost_parked(tm_ghost *g, int64_t b, int64_t n, uint64_t now_ns);
/* A hint fault on block b (it was parked) at now_ns: a reuse if it was
 * seen used before since it came into DRAM, else a first use. */
void tm_ghost_hint(tm_ghost *g, int64_t b, uint64_t now_ns);
/* The resident blocks of [0, n) still parked, by how long (tier[], flags[]
 * as tm_meta's). */
void tm_ghost_census(const tm_ghost *g, const uint8_t *tier, const uint8_t *flags, int64_t n, uint64_t now_ns,
                     uint64_t parked[TM_GHOST_AGES]);
/* At release (no lock needed: nothing runs). */
void tm_ghost_fini(struct tm_pool *p);

/* ---- uffd.c ---------------------------------------------------------- */

/* Open and configure the userfaultfd and register the arena; on failure
 * the creation error says why and how to grant access. */
int tm_uffd_open(struct tm_pool *p, int force_denied);
/* In a fork child: a userfaultfd of its own for the inherited arena
 * (missing and write-protect faults). 0 or -errno. */
int tm_uffd_open_child(struct tm_pool *p);
void tm_uffd_close(struct tm_pool *p);
/* Move blocks [b, b+n) from the arena to the shadow, in order, stopping at
 * a block with a page the kernel pins for I/O or a fork shared (which stays
 * whole in the arena). Returns how many blocks moved. Threads are not woken. */
int64_t tm_uffd_park(struct tm_pool *p, int64_t b, int64_t n);
/* Move blocks [b, b+n) back from the shadow to the arena, writable, without
 * waking; 0 or -errno. */
int tm_uffd_unpark(struct tm_pool *p, int64_t b, int64_t n);
/* Unpark [b, b+n) and wake the threads waiting there; a failure is recorded
 * as the pool's error. Returns 0 or -errno. */
int tm_uffd_restore(struct tm_pool *p, int64_t b, int64_t n);
/* Fill [b, b+n) from buf, or with zeros, and map it without waking the
 * threads waiting there: the caller updates the metadata, then wakes them
 * with tm_uffd_wake, so a thread never runs ahead of its block's state.
 * Needs no lock when the blocks are busy. */
int tm_uffd_install(struct tm_pool *p, int64_t b, int64_t n, const void *buf, int wp);
/* Move the pages of src (n blocks, all present, in an anonymous range of
 * this process) into [b, b+n) of the arena (unmapped), huge pages whole
 * where aligned, without waking. 0, or -errno and [b, b+n) left unmapped. */
int tm_uffd_move_in(struct tm_pool *p, int64_t b, int64_t n, void *src);
/* Map [b, b+n) (at most batch_max blocks) as zeros without waking. */
int tm_uffd_zero_fill(struct tm_pool *p, int64_t b, int64_t n);
/* Answer a fault at addr with SIGBUS. */
int tm_uffd_poison(struct tm_pool *p, uint64_t addr);
/* Answer the fault at addr with SIGBUS (EFAULT for a kernel-mode access)
 * because `what` failed with err; the block is flagged POISON, so nothing
 * reads it ahead of need any more. */
void tm_uffd_fail_fault(struct tm_pool *p, uint64_t addr, const char *what, int err);
int tm_uffd_unprotect(struct tm_pool *p, int64_t b, int64_t n);
/* Make the pages of [b, b+n) (all mapped, none pinned by the caller) this
 * process's own, writable and unprotected: pages a fork shares with a child
 * are copied (or taken back if the child is gone), so UFFDIO_MOVE takes
 * them. 0 or -errno. */
int tm_uffd_unshare(struct tm_pool *p, int64_t b, int64_t n);
int tm_uffd_wake(struct tm_pool *p, int64_t b, int64_t n);

/* ---- advice.c -------------------------------------------------------- */

/* The advice of the range holding block b (TM_ADV_NORMAL if none). */
int tm_range_advice(const struct tm_pool *p, int64_t b);
/* Keep access-pattern advice on [b, e), replacing what overlapped it. */
void tm_advice_keep(struct tm_pool *p, int64_t b, int64_t e, int advice);
/* Forget the advice on blocks [b, b+n). */
void tm_advice_forget(struct tm_pool *p, int64_t b, int64_t n);

/* ---- worker.c -------------------------------------------------------- */

/* What a thread needs to move blocks: buffer, lists, I/O queue. The buffer
 * is memory outside the DRAM budget: `populate` it only where its page
 * faults must stay off the fault path (handlers). fini is safe on a worker
 * never initialised (all zero). */
int tm_worker_init(struct tm_pool *p, tm_worker *w, int populate);
void tm_worker_fini(tm_worker *w);

/* ---- hugezero.c ------------------------------------------------------ */

/* Reserve the chunks (none for a budget too small for them); 0 or -errno. */
int tm_hugezero_init(struct tm_pool *p);
void tm_hugezero_fini(struct tm_pool *p);
/* Populate the empty chunks while DRAM has room for them, the lock released
 * while the kernel does. */
void tm_hugezero_refill(struct tm_pool *p);
/* Whether a chunk is being populated (the lock released): its room is held
 * until it is ready (io_cond is broadcast then). */
int tm_hugezero_filling(const struct tm_pool *p);
/* Give back up to `want` blocks' worth of ready chunks (room needed, or an
 * idle pool); returns how many blocks. */
int64_t tm_hugezero_give_back(struct tm_pool *p, int64_t want);
/* The first block of the chunk-sized, aligned group of blocks holding b, if
 * every one of them is never written and a chunk is ready; else -1. */
int64_t tm_hugezero_group(struct tm_pool *p, int64_t b);
/* A ready chunk, now the caller's, its DRAM no longer held by the chunks
 * (the caller reserves the blocks it fills: the budget is unchanged); -1 if
 * none. */
int tm_hugezero_take(struct tm_pool *p);
/* Chunk k, taken, is not used after all: ready again. */
void tm_hugezero_untake(struct tm_pool *p, int k);
/* Move chunk k into the arena at block g (its blocks loading, the lock not
 * needed); 0, or -errno and the blocks still unmapped. */
int tm_hugezero_move(struct tm_pool *p, int k, int64_t g);
/* Chunk k was moved in (or failed to be): it is populated again later. */
void tm_hugezero_used(struct tm_pool *p, int k);

/* ---- spare.c --------------------------------------------------------- */

/* Keep the freed blocks of [b, b+n) that are mapped in the arena (RESIDENT)
 * as spares, their pages writable; the caller releases (and zaps) the
 * others. Precondition: each block of the range is not in flight, and
 * still allocated. Returns how many became spare. */
int64_t tm_spare_keep(struct tm_pool *p, int64_t b, int64_t n);
/* Where an allocation of n blocks reuses the most spares: the start of a
 * recently freed range that still holds some, or -1 (first fit). */
int64_t tm_spare_place(struct tm_pool *p, int64_t n);
/* The spares of [b, b+n) become resident blocks of a new allocation there
 * (dirty: no slot holds them), their pages kept: no fault, no zero fill.
 * Their contents are what the last owner wrote: the runs reused are listed
 * in runs[0..*nruns) (at most max; spares past that are given back) for a
 * caller that must zero them. Returns how many blocks were reused. */
int64_t tm_spare_reuse(struct tm_pool *p, int64_t b, int64_t n, tm_extent *runs, int max, int *nruns);
/* The caller zeroed the runs tm_spare_reuse listed (without the lock):
 * those of their blocks still resident become zero blocks (TM_X_ZERO), so
 * that if they are evicted still all zero they are dropped, not written, as
 * fresh blocks would be. */
void tm_spare_zeroed(struct tm_pool *p, const tm_extent *runs, int nruns);
/* Give back the spares of [b, b+n) (their pages zapped). */
void tm_spare_drop(struct tm_pool *p, int64_t b, int64_t n);
/* Give back spares, then ready zero-fill chunks, until n more blocks fit the
 * budget beside them, or none is left (waiting, the lock released, for a
 * chunk being populated if it holds the room). */
void tm_spare_room(struct tm_pool *p, int64_t n);
/* Once a tick: spares nobody reused for a second go back. */
void tm_spare_tick(struct tm_pool *p);

/* ---- slots.c --------------------------------------------------------- */

/* Give back block b's slot, if it holds one. */
void tm_slot_release(struct tm_pool *p, int64_t b);
/* Take the slot of a DRAM block that holds one in tier t (it becomes
 * dirty). Returns the local slot, or UINT64_MAX if none. */
uint64_t tm_slot_steal(struct tm_pool *p, tm_tier *t);
/* A slot in tier t for block b: a free one, else one taken from a DRAM
 * block. 0 or -ENOSPC. */
int tm_slot_take(struct tm_pool *p, tm_tier *t, int64_t b);
/* Record the checksum of data, block b's as written to its slot. */
void tm_slot_seal(struct tm_pool *p, int64_t b, const uint8_t *data);
/* Whether data matches the checksum of block b's slot. */
int tm_slot_intact(struct tm_pool *p, int64_t b, const uint8_t *data);
int tm_slot_ios(struct tm_pool *p, tm_tier *t, const int64_t *list, int64_t n, uint8_t *buf, int in_shadow,
                tm_io *ios, const uint8_t *skip);

/* ---- policy.c -------------------------------------------------------- */

/* Bring the policy's info[] up to date. */
void tm_policy_info(struct tm_pool *p);
/* Tell the policy of an access (and the trace, if one is recorded). */
void tm_policy_access(struct tm_pool *p, int64_t b, int kind);
int64_t tm_policy_victims(struct tm_pool *p, int64_t want, int64_t *out, uint8_t *dest);
int64_t tm_policy_take_lower(struct tm_pool *p, int64_t *list, int64_t n, const int64_t *cand, int64_t m,
                             const char *who);
/* Add the policy's prefetch choices after fault b that are valid lower-tier
 * blocks to list[0..n); returns the new length. */
int64_t tm_policy_prefetch(struct tm_pool *p, int64_t b, int64_t *list, int64_t n);

/* ---- watermark.c ----------------------------------------------------- */

/* Free DRAM below which the background is woken. */
int64_t tm_watermark_low(const struct tm_pool *p);
/* Blocks of DRAM the background keeps free now (its high watermark), and
 * the most it ever keeps: DRAM holds up to that much less than its budget
 * when the pool spills. */
int64_t tm_watermark_headroom(const struct tm_pool *p);
int64_t tm_watermark_max_headroom(const struct tm_pool *p);
/* Whether more is allocated than DRAM holds: only then is room kept. */
int tm_watermark_spilling(const struct tm_pool *p);
/* n more blocks are resident: the peak, and the background woken below the
 * low watermark. */
void tm_watermark_resident(struct tm_pool *p, int64_t n);
/* A fault demoted n blocks itself: the background fell behind, so the
 * watermarks rise. */
void tm_watermark_fault_demoted(struct tm_pool *p, int64_t n);
/* Once a tick: the boost decays while faults find room. */
void tm_watermark_decay(struct tm_pool *p);

/* ---- sampling.c ------------------------------------------------------ */

void tm_sampling_init(struct tm_pool *p);
/* Park blocks [b, b+n) (flagged SAMPLED by the caller) for hint sampling;
 * returns how many were parked (pinned ones stay and lose the flag). */
int64_t tm_sampling_park_run(struct tm_pool *p, int64_t b, int64_t n);
/* A hint fault was served in service_ns: account for it. */
void tm_sampling_hint(struct tm_pool *p, uint64_t service_ns);
/* The background's tick: adapt the sample size to its measured cost, and
 * sample. */
void tm_sampling_tick(struct tm_pool *p);

/* ---- stats.c --------------------------------------------------------- */

/* The pool's statistics (tm_get_stats): its counters, each tier's use and
 * the figures derived from its state. */
void tm_stats_snapshot(struct tm_pool *p, tm_stats *out);

/* ---- stream.c -------------------------------------------------------- */

/* The stream a fault at b continues, its window grown, or a new one. */
tm_stream *tm_stream_of(struct tm_pool *p, int64_t b);
/* Up to `want` blocks the sequential streams have passed, marked BUSY. */
int64_t tm_stream_victims(struct tm_pool *p, int64_t want, int64_t *out);

/* ---- victims.c ------------------------------------------------------- */

int64_t tm_victims_clock(struct tm_pool *p, int64_t want, int64_t *out);
int64_t tm_victims_pick(struct tm_pool *p, int64_t want, int64_t *out, uint8_t *dest);

/* ---- demote.c -------------------------------------------------------- */

/* Demote up to `want` blocks chosen by the victims; returns how many left DRAM. */
int64_t tm_demote(tm_worker *w, int64_t want);
/* Demote the blocks of list[0..n) that are in DRAM and not busy (n at most
 * a batch); returns how many left DRAM. */
int64_t tm_demote_blocks(tm_worker *w, int64_t *list, int64_t n);
/* Make room for up to n more blocks in DRAM, the lock released while
 * victims are written: the caller's planned blocks are flagged loading and
 * counted in planned_blocks meanwhile. Returns how many fit. */
int64_t tm_demote_room(tm_worker *w, int64_t n);
/* The same for a fault: at least the faulting block fits. */
int64_t tm_demote_fault_room(tm_worker *w, int64_t n);
/* Move up to `want` PMEM blocks to NVMe (at most a batch), the lock released
 * during the copy; returns how many moved. */
int64_t tm_demote_cascade(tm_worker *w, int64_t want);

/* ---- promote.c ------------------------------------------------------- */

/* Flag list[0..n) (never written, or lower-tier; not in flight) loading and
 * reserve their room: tm_promote_room. */
int64_t tm_promote_reserve(tm_worker *w, uint64_t addr, int64_t *list, int64_t n);
/* Room for list[0..n), flagged loading by the caller (list[0] faulted at
 * addr, or 0 if nobody waits): made with the lock released meanwhile, the
 * plan cut to what fits (the blocks cut go back to what they were, their
 * waiting threads woken). Reserves the room of those kept (resident,
 * loading_blocks) and returns how many, from the first. */
int64_t tm_promote_room(tm_worker *w, uint64_t addr, int64_t *list, int64_t n);
/* The load of list[0..n) (reserved by tm_promote_room) is over, arrived or
 * not: their room and loading flags go; the caller maps their state. */
void tm_promote_settle(struct tm_pool *p, const int64_t *list, int64_t n);
int64_t tm_promote_load(tm_worker *w, uint64_t addr, int64_t *list, int64_t n, int write);
/* Bring lower-tier blocks list[0..n) (n at most a batch) into DRAM ahead of
 * need; returns how many arrived. Invalid entries are skipped and counted as
 * errors of `who` (a policy hook's name). */
int64_t tm_promote_ahead(tm_worker *w, int64_t *list, int64_t n, const char *who);
int64_t tm_promote_map_in(struct tm_pool *p, uint64_t addr, const int64_t *list, int64_t n, uint8_t *buf, int write,
                          int *err);
int64_t tm_promote_mapped(struct tm_pool *p, uint64_t addr, const int64_t *list, int64_t done, int write, int err);

/* ---- readahead.c ----------------------------------------------------- */

/* Readahead buffers: set up at creation; finished and freed at release. */
int tm_readahead_init(struct tm_pool *p);
void tm_readahead_fini(struct tm_pool *p);
void tm_readahead_submit(struct tm_pool *p, int64_t start);
int64_t tm_readahead_chain_end(const struct tm_pool *p, int64_t start);
tm_ra_run *tm_readahead_holding(struct tm_pool *p, int64_t b);
/* Whether a run is being waited for or mapped (outside the lock). */
int tm_readahead_busy(const struct tm_pool *p);
/* Drop the runs being read that hold a block of [b, b+n) (no run waited
 * for; their reads reaped with the lock held). */
void tm_readahead_drop(struct tm_pool *p, int64_t b, int64_t n);
/* Drop one such run, its reads reaped with the lock released; returns
 * whether it did (the lock was released: look again). */
int tm_readahead_reap(struct tm_pool *p, int64_t b, int64_t n);
void tm_readahead_finish(tm_worker *w, tm_ra_run *r);
/* Map the readahead runs marked async as their reads complete (released
 * while waiting): an idle handler's work. */
void tm_readahead_fill(tm_worker *w);

/* ---- dispatch.c ------------------------------------------------------ */

/* Serve a fault at `addr`. kind: 0 missing, 1 minor, 2 wp. */
void tm_dispatch_fault(tm_worker *w, uint64_t addr, int kind, int write);

/* ---- release.c ------------------------------------------------------- */

/* Wait (released meanwhile) until no block of [b, b+n) is being written
 * back or loaded outside the lock, and no readahead is being waited for (a
 * release drops it). */
void tm_wait_settled(struct tm_pool *p, int64_t b, int64_t n);
/* Settle the pool (released while waiting) so that a fork sees each block
 * whole in one place: no I/O or copy in flight, no readahead, no block
 * parked in the shadow (which a child does not inherit). */
void tm_quiesce(struct tm_pool *p);
/* Release every block of [b, b+n): slots, and DRAM pages but those kept as
 * spares if `keep_spares` (spare.c). */
void tm_release(struct tm_pool *p, int64_t b, int64_t n, int keep_spares);

/* ---- fork.c ---------------------------------------------------------------
 * The atfork handlers of arena.c call these for every live pool. */

/* Before fork: take the lock (kept until tm_fork_parent / tm_fork_child),
 * settle I/O, and keep every lower-tier slot that holds a block. */
void tm_fork_prepare(struct tm_pool *p);
void tm_fork_parent(struct tm_pool *p);
/* In the child: the pool becomes a read-only view served by a thread of its
 * own, or, if that cannot be set up, an inaccessible range whose first access
 * exits the child with TM_FORK_UNSERVED_EXIT, saying why. */
void tm_fork_child(struct tm_pool *p);
/* Let go of the slots of generations whose children are all gone (lock held). */
void tm_fork_reap(struct tm_pool *p);
void tm_fork_fini(struct tm_pool *p);
/* A child's free of [b, b+n) (lock held): its pages go, the blocks fault. */
void tm_fork_child_release(struct tm_pool *p, int64_t b, int64_t n);

/* ---- handler.c ------------------------------------------------------- */

int tm_handler_start(struct tm_pool *p);
/* Stop and join the handler threads (the userfaultfd stays open). */
void tm_handler_stop(struct tm_pool *p);

/* ---- background.c ---------------------------------------------------- */

/* The pool's background thread: demotion ahead of need to keep DRAM
 * headroom, the policy's promotions, hint sampling. */
int tm_background_start(struct tm_pool *p);
void tm_background_stop(struct tm_pool *p);

/* ---- inside the engine (tm_in_engine) -----------------------------------
 * Nonzero while the calling thread is inside the engine: for the whole life
 * of the engine's own threads, and on any thread while it holds a pool lock
 * or creates a pool. An interposed malloc must then use the C library
 * (docs/malloc.md): pool memory there could deadlock on the lock or fault
 * into a handler that is this very thread. */
extern __thread int tm_engine_depth;
/* Pool locks the calling thread holds (tm_lock). */
extern __thread int tm_locks_held;

static inline void tm_lock(struct tm_pool *p)
{
    pthread_mutex_lock(&p->lock);
    tm_engine_depth++;
    tm_locks_held++;
}

static inline void tm_unlock(struct tm_pool *p)
{
    tm_locks_held--;
    tm_engine_depth--;
    pthread_mutex_unlock(&p->lock);
}

/* Account for `bytes` of tier I/O or of data copied into the arena
 * (UFFDIO_COPY) that the caller is about to do: counted in locked_io_bytes
 * if it holds the pool lock (which it must not, to keep faults going). */
static inline void tm_io_bytes(struct tm_pool *p, uint64_t bytes)
{
    if (tm_locks_held)
        p->st.locked_io_bytes += bytes;
}

static inline uint64_t tm_ios_bytes(const struct tm_pool *p, const tm_io *ios, int k)
{
    uint64_t n = 0;
    for (int i = 0; i < k; i++)
        n += ios[i].nblocks;
    return n << p->bshift;
}

#endif
