/* publish.c: what a pool shows outside itself.
 *
 * Its statistics, rates and largest allocations are kept in a small file of
 * its own in /dev/shm (a tm_pub, tieredmem.h), which `tieredmem top`,
 * `tieredmem stats` and the Prometheus exporter read from other processes.
 * Only the background thread writes it, from its tick, so the fault path
 * never touches it; readers take no lock either: the writer makes a sequence
 * counter odd, writes, and makes it even again (a seqlock), and a reader
 * keeps its copy only if the counter was even and unchanged across it.
 *
 * It also keeps where the program made each allocation, when asked
 * (tm_track_origins), for the published arrays and pool.report().
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

#define SHM_DIR "/dev/shm"
_Static_assert(TM_PUB_ERROR == TM_ERRLEN, "tm_pub.last_error holds the pool's error whole");
#define PERIOD_NS ((uint64_t)TM_PUB_PERIOD_MS * 1000000ull)

struct tm_publisher {
    tm_pub *pub;             /* the mapped file, or NULL: not published */
    char path[128];
    int64_t owner;           /* the pid that made it: a forked child leaves it alone */
    char policy[TM_PUB_POLICY];
    tm_stats base;           /* the counters when the current period began */
    uint64_t base_ns;
    tm_pub_array arrays[TM_PUB_ARRAYS]; /* found outside the write, copied in it */
    uint64_t origin_min;     /* tm_origin_min: read by allocating threads without the lock */
    char **origin;           /* per block, at an allocation's first: where it was made (malloc'd) */
    size_t origin_bytes;
    struct tm_publisher *next;  /* the process's published files, removed at exit */
};

/* The process's published files, for the exit handler. */
static pthread_mutex_t published_lock = PTHREAD_MUTEX_INITIALIZER;
static struct tm_publisher *published;
static uint64_t pools_made;

static void remove_at_exit(void)
{
    /* A fork may have copied the lock held: a child then leaves the files to
     * their owner, as it would anyway. */
    if (pthread_mutex_trylock(&published_lock) != 0)
        return;
    for (struct tm_publisher *s = published; s; s = s->next)
        if (s->owner == getpid())
            tm_os_unlink(s->path);
    pthread_mutex_unlock(&published_lock);
}

static void list_add(struct tm_publisher *s)
{
    static int registered;
    pthread_mutex_lock(&published_lock);
    if (!registered)
        registered = atexit(remove_at_exit) == 0;
    s->next = published;
    published = s;
    pthread_mutex_unlock(&published_lock);
}

static void list_remove(struct tm_publisher *s)
{
    pthread_mutex_lock(&published_lock);
    for (struct tm_publisher **q = &published; *q; q = &(*q)->next) {
        if (*q == s) {
            *q = s->next;
            break;
        }
    }
    pthread_mutex_unlock(&published_lock);
}

static void write_begin(tm_pub *pub)
{
    __atomic_store_n(&pub->seq, pub->seq + 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE); /* odd before any of the data */
}

static void write_end(tm_pub *pub)
{
    __atomic_store_n(&pub->seq, pub->seq + 1, __ATOMIC_RELEASE);
}

int tm_pub_read(const tm_pub *shared, tm_pub *out)
{
    uint64_t seq = __atomic_load_n(&shared->seq, __ATOMIC_ACQUIRE);
    if (seq & 1)
        return -EAGAIN;
    memcpy(out, shared, sizeof *out);
    __atomic_thread_fence(__ATOMIC_ACQUIRE); /* the copy before the second look */
    if (__atomic_load_n(&shared->seq, __ATOMIC_RELAXED) != seq)
        return -EAGAIN;
    out->seq = seq;
    return 0;
}

/* Create the file; a file of the same name was left by a process that had
 * this pid before (and died without removing it): it is replaced. */
static int publish_file(struct tm_pool *p, struct tm_publisher *s)
{
    uint64_t id = __atomic_add_fetch(&pools_made, 1, __ATOMIC_RELAXED);
    snprintf(s->path, sizeof s->path, "%s/tieredmem-%u-%d-%llu", SHM_DIR, (unsigned)geteuid(), (int)getpid(),
             (unsigned long long)id);
    tm_pub *pub = tm_os_shm_create(s->path, sizeof *pub);
    if (!pub && errno == EEXIST && tm_os_unlink(s->path) == 0)
        pub = tm_os_shm_create(s->path, sizeof *pub);
    if (!pub)
        return -errno;
    s->owner = getpid();
    pub->magic = TM_PUB_MAGIC;
    pub->version = TM_PUB_VERSION;
    pub->size = sizeof *pub;
    pub->pid = s->owner;
    pub->start_time = tm_os_start_time();
    pub->pool = id;
    pub->block_size = p->bs;
    s->pub = pub;
    s->base_ns = tm_os_now_ns();
    list_add(s);
    return 0;
}

int tm_publish_init(struct tm_pool *p, int publish)
{
    struct tm_publisher *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    p->publisher = s;
    int r = publish ? publish_file(p, s) : 0;
    if (r < 0)
        tm_set_error(p, "cannot publish the pool's statistics in %s (tieredmem top will not show it): %s", SHM_DIR,
                     strerror(-r));
    return 0;
}

/* Add allocation [b, b+n) to the `max` largest in out[0..*k). */
static void keep_if_large(struct tm_pool *p, tm_pub_array *out, int64_t max, int64_t *k, int64_t b, int64_t n)
{
    uint64_t bytes = (uint64_t)n << p->bshift;
    int64_t i = *k;
    if (*k < max) {
        (*k)++;
    } else {
        i = 0; /* the smallest kept, replaced if this one is larger */
        for (int64_t j = 1; j < max; j++)
            if (out[j].bytes < out[i].bytes)
                i = j;
        if (out[i].bytes >= bytes)
            return;
    }
    out[i] = (tm_pub_array){.offset = (uint64_t)b << p->bshift, .bytes = bytes};
}

static int larger_first(const void *a, const void *b)
{
    const tm_pub_array *x = a, *y = b;
    if (x->bytes != y->bytes)
        return x->bytes < y->bytes ? 1 : -1;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* The `max` largest live allocations into out, largest first; lock held. */
static int64_t largest(struct tm_pool *p, tm_pub_array *out, int64_t max)
{
    int64_t k = 0, f = 0;
    const tm_extents *e = &p->extents;
    for (int64_t b = 0; b < p->scan_end && max > 0;) {
        if (f < e->nfree && e->free[f].start == b) {
            b += e->free[f++].len;
            continue;
        }
        int64_t n = p->alloc_len[b];
        if (n == 0) { /* lost: a free whose extent could not be recorded (tm_free) */
            b++;
            continue;
        }
        keep_if_large(p, out, max, &k, b, n);
        b += n;
    }
    qsort(out, (size_t)k, sizeof *out, larger_first);
    char **origin = p->publisher->origin;
    for (int64_t i = 0; i < k; i++) {
        int64_t b = (int64_t)(out[i].offset >> p->bshift), n = (int64_t)(out[i].bytes >> p->bshift);
        for (int64_t j = b; j < b + n; j++)
            out[i].tier_bytes[p->meta.tier[j]] += p->bs;
        if (origin && origin[b])
            snprintf(out[i].origin, sizeof out[i].origin, "%s", origin[b]);
    }
    return k;
}

int64_t tm_allocations(tm_pool *p, tm_pub_array *out, int64_t max)
{
    tm_lock(p);
    int64_t k = largest(p, out, max);
    tm_unlock(p);
    return k;
}

static double per_second(uint64_t count, uint64_t before, double seconds)
{
    return (double)(count - before) / seconds;
}

/* The rates over the period that ends now; it starts again. */
static tm_pub_rates period_rates(struct tm_publisher *s, const tm_stats *st, uint64_t now)
{
    double dt = (double)(now - s->base_ns) / 1e9;
    const tm_stats *b = &s->base;
    tm_pub_rates r = {
        .faults = per_second(st->faults, b->faults, dt),
        .promotions = per_second(st->promotions, b->promotions, dt),
        .demotions = per_second(st->demotions, b->demotions, dt),
        .bytes_read = per_second(st->bytes_read, b->bytes_read, dt),
        .bytes_written = per_second(st->bytes_written, b->bytes_written, dt),
        .stalled = per_second(st->fault_ns, b->fault_ns, dt) / 1e9,
        .period = dt,
    };
    s->base = *st;
    s->base_ns = now;
    return r;
}

void tm_publish_tick(struct tm_pool *p, const tm_stats *st)
{
    struct tm_publisher *s = p->publisher;
    tm_pub *pub = s->pub;
    if (!pub)
        return;
    uint64_t now = tm_os_now_ns();
    int period_ended = now - s->base_ns >= PERIOD_NS;
    tm_pub_rates rates = {0};
    int64_t narrays = 0;
    if (period_ended) { /* found before the write: it walks every allocation */
        memset(s->arrays, 0, sizeof s->arrays);
        narrays = largest(p, s->arrays, TM_PUB_ARRAYS);
        rates = period_rates(s, st, now);
    }
    write_begin(pub);
    pub->updated_ns = now;
    memcpy(pub->policy, s->policy, sizeof pub->policy);
    snprintf(pub->last_error, sizeof pub->last_error, "%s", p->err);
    pub->stats = *st;
    pub->live_allocations = p->live_allocs;
    if (period_ended) {
        pub->rates = rates;
        pub->narrays = narrays;
        memcpy(pub->arrays, s->arrays, sizeof pub->arrays);
    }
    write_end(pub);
}

const char *tm_publish_dir(void)
{
    return SHM_DIR;
}

const char *tm_publish_path(tm_pool *p)
{
    return p->publisher && p->publisher->pub ? p->publisher->path : NULL;
}

void tm_publish_policy(tm_pool *p, const char *name)
{
    tm_lock(p);
    snprintf(p->publisher->policy, sizeof p->publisher->policy, "%s", name);
    tm_unlock(p);
}

int tm_track_origins(tm_pool *p, uint64_t min_bytes)
{
    struct tm_publisher *s = p->publisher;
    int r = 0;
    tm_lock(p);
    if (min_bytes && !s->origin) {
        /* A pointer per block, reserved: only the pages of allocations' first
         * blocks are ever touched. */
        size_t bytes = ((size_t)p->nblocks * sizeof(char *) + 4095) & ~(size_t)4095;
        s->origin = tm_os_reserve(bytes, 4096, 1);
        s->origin_bytes = s->origin ? bytes : 0;
        r = s->origin ? 0 : -ENOMEM;
    }
    if (r == 0)
        __atomic_store_n(&s->origin_min, min_bytes, __ATOMIC_RELAXED);
    tm_unlock(p);
    return r;
}

uint64_t tm_origin_min(tm_pool *p)
{
    return __atomic_load_n(&p->publisher->origin_min, __ATOMIC_RELAXED);
}

void tm_set_origin(tm_pool *p, const void *ptr, const char *origin)
{
    struct tm_publisher *s = p->publisher;
    const uint8_t *a = ptr;
    if (!tm_origin_min(p) || a < p->base || a >= p->base + p->arena_size)
        return;
    /* Kept as it is published: its end (the file's name and the line) if it
     * is longer. */
    size_t len = strlen(origin), room = TM_PUB_ORIGIN - 1;
    char *copy = malloc(room + 1);
    if (!copy)
        return;
    if (len > room)
        snprintf(copy, room + 1, "...%s", origin + len - (room - 3));
    else
        memcpy(copy, origin, len + 1);
    tm_lock(p);
    int64_t b = tm_block_of(p, ptr);
    if (tm_block_addr(p, b) == ptr && p->alloc_len[b]) {
        free(s->origin[b]);
        s->origin[b] = copy;
        copy = NULL;
    }
    tm_unlock(p);
    free(copy);
}

void tm_publish_freed(struct tm_pool *p, int64_t b)
{
    char **origin = p->publisher->origin;
    if (origin && origin[b]) {
        free(origin[b]);
        origin[b] = NULL;
    }
}

void tm_publish_fini(struct tm_pool *p)
{
    struct tm_publisher *s = p->publisher;
    if (!s)
        return;
    if (s->pub) {
        list_remove(s);
        if (s->owner == getpid())
            tm_os_unlink(s->path);
        tm_os_unmap(s->pub, sizeof *s->pub);
    }
    if (s->origin) {
        for (int64_t b = 0; b < p->scan_end; b++)
            free(s->origin[b]);
        tm_os_unmap(s->origin, s->origin_bytes);
    }
    free(s);
    p->publisher = NULL;
}
