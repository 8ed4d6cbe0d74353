/* tieredmem.h: the engine's public C API.
 *
 * A pool is a reserved virtual range (the arena) whose bytes the application
 * reads and writes as ordinary memory. Resident blocks are anonymous memory
 * mapped in the arena (the DRAM tier, kept under a hard budget); the others live in
 * lower tiers (PMEM, NVMe) and are brought back by the engine's userfaultfd
 * handler threads when touched. Nothing here needs Python or the GIL.
 *
 * Every function that can fail returns 0 / a valid pointer on success and a
 * negative errno (or NULL) on failure; tm_last_error() then says why.
 */
#ifndef TIEREDMEM_H
#define TIEREDMEM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tm_pool tm_pool;

enum tm_tier_id { TM_UNBACKED = 0, TM_DRAM = 1, TM_PMEM = 2, TM_NVME = 3 };

/* Per-block flag bits (tm_meta.flags). */
enum {
    TM_F_ALLOC = 1 << 0,   /* inside a live allocation */
    TM_F_DIRTY = 1 << 1,   /* resident copy differs from the lower-tier copy */
    TM_F_REF = 1 << 2,     /* referenced since the CLOCK hand last passed */
    TM_F_BUSY = 1 << 3,    /* being moved; faults on it wait */
    TM_F_POISON = 1 << 4,  /* a page was poisoned after a failed promotion */
    TM_F_SAMPLED = 1 << 5, /* unmapped by hint sampling: its next access is a hint fault */
    TM_F_HOT = 1 << 6,     /* advised hot: the built-in policy demotes it last */
    TM_F_COLD = 1 << 7,    /* advised cold: the built-in policy demotes it first */
};

/* What an access the engine saw was (tm_policy_ops.on_access). */
enum tm_access_kind {
    TM_ACCESS_MISSING = 0, /* first touch, or the block was in a lower tier */
    TM_ACCESS_MINOR = 1,   /* in DRAM but unmapped (not by sampling): a fault that raced another */
    TM_ACCESS_WP = 2,      /* first write to a clean block */
    TM_ACCESS_HINT = 3,    /* the access that followed a sampling unmap */
    TM_ACCESS_AHEAD = 4,   /* not an access: the block entered DRAM ahead of need
                              (readahead, prefetch, promotion, advice) */
};

/* pool.advise / tm_advise */
enum tm_advice {
    TM_ADV_WILLNEED = 0,   /* bring the range into DRAM now */
    TM_ADV_DONTNEED = 1,   /* move it out of DRAM now; its data is kept */
    TM_ADV_COLD = 2,       /* demote it before other blocks */
    TM_ADV_HOT = 3,        /* keep it in DRAM ahead of other blocks; bring it in now */
    TM_ADV_SEQUENTIAL = 4, /* read far ahead of faults in it */
    TM_ADV_RANDOM = 5,     /* no readahead in it */
    TM_ADV_NORMAL = 6,     /* forget earlier advice on the range */
};

/* Slot ids are global across the lower tiers and start at 1 (PMEM's first,
 * then NVMe's), so zeroed metadata means "no slot". */
#define TM_NO_SLOT 0u

/* The exit status of a forked child that touches pool memory it cannot be
 * served (its view could not be set up, or a block could not be read):
 * EX_OSERR, after one line on stderr saying why (docs/fork.md). */
#define TM_FORK_UNSERVED_EXIT 71

typedef struct tm_config {
    uint64_t dram_bytes;     /* hard budget of resident bytes; > 0 */
    uint64_t pmem_bytes;     /* 0 = no PMEM tier */
    uint64_t nvme_bytes;     /* 0 = no NVMe tier */
    uint64_t block_size;     /* power of two, 4 KiB .. 2 MiB */
    const char *pmem_path;   /* directory for the PMEM file; NULL = DAX mount or /dev/shm */
    const char *nvme_path;   /* directory for the NVMe slot file; must exist */
    const char *inject;      /* fault injection spec or NULL; see docs/reliability.md */
    int force_no_uffd;       /* behave as if userfaultfd were denied (tests) */
    /* Emulated PMEM speed (0 = as fast as the memory behind it): each request
     * takes at least its latency plus its size over the bandwidth. */
    uint64_t pmem_read_ns, pmem_write_ns;      /* per request */
    uint64_t pmem_read_mbps, pmem_write_mbps;  /* MB/s (10^6 bytes) */
    /* Hint-fault sampling: 0 off; else the share of the time its faults may
     * cost, in millionths (e.g. 10000 = 1%). */
    uint32_t sample_budget_ppm;
    /* 1: publish the pool's statistics for other processes to read (tm_pub) */
    int publish;
} tm_config;

/* Per-block metadata, structure of arrays, one entry per arena block.
 * Readable (not writable) by Python through numpy without a copy. */
typedef struct tm_meta {
    int64_t nblocks;
    uint8_t *tier;          /* enum tm_tier_id: where the block's data lives */
    uint8_t *flags;         /* TM_F_* */
    uint8_t *access_count;  /* faults served on the block, saturating */
    uint16_t *last_access;  /* epoch of the last fault (epoch = faults >> 8) */
    uint32_t *slot;         /* lower-tier slot holding a copy, or TM_NO_SLOT */
} tm_meta;

/* Placement hooks: the engine calls these on its own threads, with the pool
 * lock held and without the GIL, so they must not block, raise, take the GIL
 * or touch pool memory. Any may be NULL (built-in behaviour). Every hook is
 * given the block metadata as plain arrays (tier[], flags[] of `nblocks`
 * entries: blocks beyond were never allocated), so a numba @cfunc can take
 * them as typed pointers; `state` is the policy's own memory.
 * Answers are validated; an invalid one falls back to the built-in policy
 * (CLOCK) and is counted in tm_stats.policy_errors. */
/* tm_policy_ops.info[]: the pool's state, kept current by the engine. */
enum {
    TM_INFO_ARENA_BLOCKS = 0, /* entries of the metadata arrays */
    TM_INFO_DRAM_BLOCKS = 1,  /* the budget, in blocks */
    TM_INFO_RESIDENT = 2,     /* blocks in DRAM */
    TM_INFO_SCAN_END = 3,     /* blocks beyond were never allocated */
    TM_INFO_BLOCK_SIZE = 4,
    TM_INFO_NOW = 5,          /* accesses seen so far */
    TM_INFO_LEN = 8
};

typedef struct tm_policy_ops {
    void *state;
    int64_t *info;  /* TM_INFO_LEN entries, or NULL */
    /* Every fault served and every sampled access (kind: enum tm_access_kind),
     * in order; `now` counts them. */
    void (*on_access)(void *state, int64_t block, int32_t kind, int64_t now);
    /* Write up to `want` DRAM-resident block ids to demote into out[] and,
     * per block, the tier to send it to in out_tier[] (TM_PMEM, TM_NVME, or
     * 0: the engine's choice); return how many. */
    int64_t (*select_victims)(void *state, const uint8_t *tier, const uint8_t *flags, int64_t nblocks,
                              int64_t want, int64_t *out, uint8_t *out_tier);
    /* Periodically, when DRAM has room: up to `max` lower-tier block ids to
     * bring into DRAM ahead of need; return how many. */
    int64_t (*promote)(void *state, const uint8_t *tier, const uint8_t *flags, int64_t nblocks,
                       int64_t max, int64_t *out);
    /* A fault on `block` that reads from a lower tier: up to `max` further
     * lower-tier block ids to read along with it; return how many. */
    int64_t (*prefetch)(void *state, const uint8_t *tier, const uint8_t *flags, int64_t nblocks,
                        int64_t block, int64_t max, int64_t *out);
} tm_policy_ops;

typedef struct tm_tier_stats {
    uint64_t capacity;  /* bytes */
    uint64_t used;      /* bytes held (for DRAM: resident bytes) */
    uint64_t peak;      /* highest `used` seen */
} tm_tier_stats;

typedef struct tm_stats {
    tm_tier_stats dram, pmem, nvme;
    uint64_t allocated;        /* bytes in live allocations */
    uint64_t capacity;         /* bytes allocatable in total */
    uint64_t faults;           /* all faults served */
    uint64_t zero_fills;       /* faults on never-written blocks */
    uint64_t minor_faults;     /* faults on resident but unmapped blocks */
    uint64_t wp_faults;        /* first writes to clean blocks */
    uint64_t promotions;       /* blocks brought into DRAM from a lower tier */
    uint64_t prefetched;       /* of which ahead of a fault */
    uint64_t readahead;        /* of which read asynchronously ahead of a stream */
    uint64_t readahead_mapped_ahead; /* of which mapped by an idle handler before the stream reached them */
    uint64_t demotions;        /* blocks moved down a tier */
    uint64_t stream_victims;   /* victims chosen among blocks a stream had passed, before the policy */
    uint64_t clean_drops;      /* of which dropped without a write */
    uint64_t bytes_read;       /* from lower tiers */
    uint64_t bytes_written;    /* to lower tiers */
    uint64_t fault_ns;         /* total time spent serving faults */
    uint64_t io_errors;        /* failed lower-tier I/O */
    uint64_t checksum_errors;  /* blocks read back damaged */
    uint64_t sigbus_sent;      /* faults answered with SIGBUS */
    uint64_t policy_errors;    /* invalid policy results rejected */
    uint64_t budget_overruns;  /* times resident bytes exceeded the budget */
    uint64_t pinned_skips;     /* victims kept in DRAM: the kernel had pages of theirs pinned for I/O */
    uint64_t writeback_waits;  /* faults that waited for a background writeback instead of writing */
    uint64_t busy_waits;       /* faults on a block another thread was moving, woken when it landed */
    uint64_t hint_faults;      /* accesses seen by sampling */
    uint64_t sampled;          /* blocks unmapped by sampling */
    uint64_t sample_ns;        /* time spent sampling and serving hint faults */
    uint64_t sample_rate;      /* blocks sampled per second, as last adapted */
    uint64_t background_demotions; /* demoted ahead of need, to keep DRAM headroom */
    uint64_t fault_demotions;  /* demoted by faults themselves: the background fell behind */
    uint64_t headroom;         /* bytes of DRAM the background keeps free now (its high watermark; adapts) */
    uint64_t policy_promotions;    /* promoted ahead of need on the policy's choice */
    uint64_t fork_children;    /* fork generations whose children still live (each keeps slots) */
    uint64_t fork_kept;        /* bytes of lower-tier slots kept for them: their blocks' data as at fork */
    uint64_t fork_unshared;    /* victims whose pages a fork shared, made this process's own to move */
    uint64_t trace_events;     /* accesses recorded in the trace buffer */
    uint64_t trace_dropped;    /* accesses not recorded: the buffer was full */
    uint64_t locked_io_bytes;  /* bytes of tier I/O and UFFDIO_COPY done with the pool lock held (0 is the aim) */
    uint64_t spare;            /* bytes of freed memory kept mapped for reuse: DRAM held, within the budget */
    uint64_t zero_ready;       /* bytes of huge pages populated for zero fills: DRAM held, within the budget */
    uint64_t spare_reuses;     /* blocks an allocation reused from freed memory: no fault, no zero fill */
    uint64_t huge_zero_fills;  /* of zero_fills, blocks filled by moving in a huge page populated ahead */
    int32_t handler_threads;
    int32_t dirty_tracking;    /* 1 if clean blocks are write-protected */
    int32_t nvme_direct;       /* 1 if the NVMe file uses O_DIRECT */
    int32_t pmem_dax;          /* 1 if the PMEM file is on a DAX filesystem */
} tm_stats;

/* Create a pool. On failure returns NULL and tm_last_error() explains. */
tm_pool *tm_pool_create(const tm_config *cfg);

/* Lifetime. A pool's engine (threads, arena, tier files) is released once
 * it is closed and has no live allocations and no pins; the handle itself
 * stays valid until its owner drops it, so it can still say it was released.
 * tm_pool_create returns a handle owned by the caller. */
/* Stop allocating; release the engine now or when the last allocation goes. */
void tm_pool_close(tm_pool *p);
/* Keep the engine alive (e.g. while views of its metadata exist). */
void tm_pool_pin(tm_pool *p);
void tm_pool_unpin(tm_pool *p);
/* The owner gives up the handle (closing the pool). p is invalid afterwards. */
void tm_pool_drop(tm_pool *p);
/* 1 once the engine is released: every other call is then invalid. */
int tm_pool_released(tm_pool *p);
/* The live pool whose arena holds ptr, or NULL. Safe from any thread. */
tm_pool *tm_pool_of(const void *ptr);

/* 1 if the calling thread is one of the engine's, or holds a pool lock, or
 * is creating a pool: then it must not be given pool memory (a malloc
 * interposer serves it from the C library; docs/malloc.md). */
int tm_in_engine(void);

/* Allocate `size` bytes (rounded up to whole blocks), reading as zero: fresh
 * blocks are zero-filled on first touch, the pages of freed memory it reuses
 * (spares, below) are zeroed here. Returns NULL with errno ENOMEM when the
 * tiers' total capacity is exhausted, or EBADF when the pool is closed. */
void *tm_alloc(tm_pool *p, size_t size);

/* Free an allocation made by tm_alloc; its lower-tier
 * slots return to the pool at once, and its DRAM too, except the pages of
 * blocks mapped in DRAM, kept (within the budget) for the next allocation
 * at that address until room is needed or a second passes unused
 * (stats.spare). A closed pool is released with its last allocation.
 * Precondition: ptr came from this pool. */
void tm_free(tm_pool *p, void *ptr);

/* Size in bytes of the allocation starting at ptr, or 0 if ptr is not one. */
size_t tm_alloc_size(tm_pool *p, const void *ptr);

/* 1 if [ptr, ptr+size) lies inside the arena. */
int tm_contains(tm_pool *p, const void *ptr, size_t size);

int64_t tm_live_allocations(tm_pool *p);

void tm_get_stats(tm_pool *p, tm_stats *out);

/* Bytes of [ptr, ptr+size) per tier, indexed by tm_tier_id. */
void tm_placement(tm_pool *p, const void *ptr, size_t size, uint64_t out[4]);

const tm_meta *tm_get_meta(tm_pool *p);
void *tm_arena_base(tm_pool *p);
size_t tm_block_size(tm_pool *p);

/* Install placement hooks (NULL restores the built-ins). */
void tm_set_policy(tm_pool *p, const tm_policy_ops *ops);
/* Zeroed memory for a policy's state, owned by the engine: it stays valid
 * until the engine is released, however long that is after the pool's owner
 * let go (hooks keep being called while arrays live). NULL if out of memory. */
void *tm_policy_alloc(tm_pool *p, size_t bytes);

/* Change the DRAM budget; shrinking demotes at once. Returns 0, -EINVAL
 * (fewer than one block or more than the arena can use) or -ENOSPC (the
 * live allocations would no longer fit the pool's capacity). */
int tm_pool_resize(tm_pool *p, uint64_t dram_bytes);

/* Advice (enum tm_advice) on the blocks overlapping [ptr, ptr+size).
 * Returns 0, or -EINVAL if the range is not inside the arena or the advice
 * unknown. */
int tm_advise(tm_pool *p, const void *ptr, size_t size, int advice);

/* Record the block id of every access the engine sees (faults and sampled
 * hints) into buf[0..cap) from now on; buf must not be pool memory and must
 * live until tm_trace_stop. */
void tm_trace_start(tm_pool *p, int64_t *buf, int64_t cap);
/* Stop recording; returns how many ids were written. */
int64_t tm_trace_stop(tm_pool *p);

/* The pool's last recorded error (or the last creation error if p is NULL),
 * copied into buf. Returns buf. */
const char *tm_last_error(tm_pool *p, char *buf, size_t len);

/* ---- numpy integration (numpy_handler.c) ------------------------------
 * NumPy NEP 49 memory handlers backed by pools. These take the GIL where they
 * touch Python; the handler functions themselves need neither. */
typedef struct tm_np_handler tm_np_handler;

/* Import numpy's C API; 0 or -1. */
int tm_np_init(void);
/* A handler (and its capsule) sending allocations of >= threshold bytes to p.
 * Never freed: arrays keep using it until they die. */
tm_np_handler *tm_np_handler_new(tm_pool *p, size_t threshold);
/* From now on the handler allocates from the C library only. */
void tm_np_detach(tm_np_handler *h);
/* Same for the installed handler if it allocates from p. */
void tm_np_detach_pool(tm_pool *p);
/* Make h (NULL: numpy's default) the handler of the current context; returns
 * a token for tm_np_restore_context. */
void *tm_np_set_context(tm_np_handler *h);
void tm_np_restore_context(void *token);
/* Process-wide: numpy's default handler allocates from p, in every thread. */
int tm_np_install(tm_pool *p, size_t threshold);
/* New arrays use numpy's default again; existing ones stay valid. */
void tm_np_uninstall(void);
tm_pool *tm_np_installed_pool(void);

/* ---- published statistics (publish.c; docs/observability.md) ----------
 * A pool created with tm_config.publish keeps a tm_pub in a file of its own,
 * tm_publish_dir()/tieredmem-UID-PID-POOL (mode 0600), that other processes
 * of the user read (`tieredmem top`, `stats`, Prometheus). Its background
 * thread rewrites it every tick (the rates and the arrays every
 * TM_PUB_PERIOD_MS) under a sequence counter, so that readers take a
 * consistent copy without a lock: tm_pub_read. The file is removed when the
 * pool is released, and at exit; one left by a killed process names a dead
 * pid (or a pid reused since: start_time differs), and readers remove it. */
#define TM_PUB_MAGIC 0x42504d54   /* "TMPB" */
#define TM_PUB_VERSION 1
#define TM_PUB_PERIOD_MS 1000
#define TM_PUB_ARRAYS 16          /* the largest allocations shown */
#define TM_PUB_ORIGIN 96          /* an origin, "file:line", its end kept if longer */
#define TM_PUB_POLICY 32
#define TM_PUB_ERROR 512          /* the pool's last error, as tm_last_error gives it */

/* A live allocation (tm_allocations, tm_pub.arrays). */
typedef struct tm_pub_array {
    uint64_t offset;            /* from the arena's base */
    uint64_t bytes;             /* whole blocks */
    uint64_t tier_bytes[4];     /* of them per tier, indexed by tm_tier_id */
    char origin[TM_PUB_ORIGIN]; /* where the program made it ("file:line"), or "" (tm_set_origin) */
} tm_pub_array;

/* Per second, over the last period. */
typedef struct tm_pub_rates {
    double faults, promotions, demotions;
    double bytes_read, bytes_written;
    double stalled;             /* seconds of fault service per second, summed over the threads that faulted */
    double period;              /* seconds the rates are over; 0 until the first period ends */
} tm_pub_rates;

typedef struct tm_pub {
    uint32_t magic;             /* TM_PUB_MAGIC */
    uint32_t version;           /* TM_PUB_VERSION */
    uint64_t size;              /* sizeof(tm_pub) */
    uint64_t seq;               /* odd while the engine writes, even when stable */
    int64_t pid;
    uint64_t start_time;        /* the process's start (/proc/PID/stat field 22): a reused pid has another */
    uint64_t pool;              /* the pool's number in its process, from 1 */
    uint64_t updated_ns;        /* CLOCK_MONOTONIC of the last write */
    uint64_t block_size;
    char policy[TM_PUB_POLICY];
    char last_error[TM_PUB_ERROR];
    tm_stats stats;             /* as tm_get_stats */
    tm_pub_rates rates;
    int64_t live_allocations;
    int64_t narrays;
    tm_pub_array arrays[TM_PUB_ARRAYS]; /* the largest live allocations, largest first */
} tm_pub;

/* The directory of the published files. */
const char *tm_publish_dir(void);
/* The pool's published file, or NULL if it publishes none. */
const char *tm_publish_path(tm_pool *p);
/* The policy's name, as published. */
void tm_publish_policy(tm_pool *p, const char *name);
/* Copy a published tm_pub (mapped from its file) into out if it is stable:
 * 0, or -EAGAIN while it is being written (try again). */
int tm_pub_read(const tm_pub *shared, tm_pub *out);

/* Where allocations were made: recorded by tm_set_origin for those of at
 * least `min_bytes` (0: none) from now on, and kept until they are freed.
 * 0 or -ENOMEM. */
int tm_track_origins(tm_pool *p, uint64_t min_bytes);
/* The size from which origins are recorded; 0 when they are not. */
uint64_t tm_origin_min(tm_pool *p);
/* Record `origin` for the allocation that starts at ptr (ignored when
 * origins are not tracked or ptr starts no allocation). */
void tm_set_origin(tm_pool *p, const void *ptr, const char *origin);
/* The `max` largest live allocations, largest first, with their bytes per
 * tier and origin; returns how many were written. */
int64_t tm_allocations(tm_pool *p, tm_pub_array *out, int64_t max);
/* numpy_handler.c records the origins of the pool allocations it makes: the
 * innermost Python frame whose file is not under one of these prefixes (the
 * libraries', so that the line is the program's). 0, or -ENOMEM. */
int tm_np_origin_skip(const char *prefix);

/* ---- benefit measurement (ghost.c; docs/sharing.md) ---------------------
 * What more or less DRAM would be worth to a pool, from what it does anyway:
 * refault distances (how many evictions happened between a block's eviction
 * and its return: that much more DRAM would have kept it) and, from hint
 * sampling's own samples, how soon a parked resident block is used again
 * (a reuse: it was seen used before, since it came into DRAM) or used at
 * all (a first use, as a scan's block read ahead is).
 * Off unless enabled; then it costs a store per eviction, a load per
 * promotion, hint and park, and a scan of the blocks per read. */
#define TM_GHOST_DISTANCES 128    /* quarter octaves of blocks */
#define TM_GHOST_AGES 40          /* octaves of TM_GHOST_UNIT_NS */
#define TM_GHOST_UNIT_NS 65536    /* resolution of park times */

typedef struct tm_ghost_stats {
    /* Counts since it was enabled. */
    uint64_t evictions;         /* blocks that left DRAM for a lower tier */
    uint64_t refaults;          /* blocks brought back whose eviction it saw */
    uint64_t refault_distance[TM_GHOST_DISTANCES]; /* by evictions in between (tm_ghost_distance_lo) */
    uint64_t reuses;            /* hint faults on blocks seen used before since they came into DRAM */
    uint64_t reuse_latency[TM_GHOST_AGES];    /* by time from park to access (tm_ghost_age_lo_ns) */
    uint64_t reuse_latency_ns[TM_GHOST_AGES]; /* their total time */
    uint64_t first_uses;        /* hint faults on blocks not seen used before (read ahead, say) */
    uint64_t census_ns;         /* time the reads' scans took */
    /* When read: resident blocks parked and not used since, by how long. */
    uint64_t parked[TM_GHOST_AGES];
} tm_ghost_stats;

/* Start measuring (once; again is a no-op). 0, -ENOMEM, or -EPERM in a
 * forked child's view of its parent's pool. */
int tm_ghost_enable(tm_pool *p);
/* The counts, and the census of parked blocks now (a scan of the blocks,
 * with the pool lock held). 0, or -ENOENT if not enabled (or in a forked
 * child's view). */
int tm_ghost_read(tm_pool *p, tm_ghost_stats *out);
/* The smallest distance (blocks) of refault_distance[i]. */
uint64_t tm_ghost_distance_lo(int i);
/* The shortest time (ns) of hint_latency[i] and parked[i]. */
uint64_t tm_ghost_age_lo_ns(int i);

#ifdef __cplusplus
}
#endif
#endif
