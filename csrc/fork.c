/* fork.c: pool arrays across fork. A child reads the parent's pool memory as
 * it was at the fork, and its writes stay its own, as with ordinary memory.
 *
 * The arena is anonymous private memory that fork inherits: the blocks then
 * in DRAM come to the child copy-on-write, by the kernel. The child's copy of
 * the metadata says where every other block was (its slot, its checksum);
 * the child registers the arena with a userfaultfd of its own and one thread
 * that reads those slots. For that, the parent keeps every slot that held a
 * block at the fork, one generation per fork: it writes such a block
 * elsewhere, and frees the slot only when all the children of the generation
 * are gone, which a pipe tells (its write end lives in the children only and
 * closes on their exit or exec). Pools are read-only views in a child:
 * allocation fails (the numpy handler then uses the C library), a free gives
 * the child's pages back, advice and resizing are refused. A child's access
 * to pool memory that cannot be served (its view could not be set up, a
 * block cannot be read back) ends it with one line on stderr and exit status
 * TM_FORK_UNSERVED_EXIT. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "internal.h"

#define TM_CHILD_READ_BYTES (1u << 20) /* a child's largest read */

void tm_fork_prepare(struct tm_pool *p)
{
    tm_lock(p); /* kept through the fork: nothing moves meanwhile */
    p->pending = (tm_fork_gen){.fd = -1};
    p->pending_wfd = -1;
    if (p->child)
        return; /* a child's view: its own child inherits it as it is, and the generation's pipe */
    p->fork_err[0] = 0; /* this fork's alone */
    tm_quiesce(p);
    p->forks++;
    int64_t n = 0;
    for (int64_t b = 0; b < p->scan_end; b++)
        n += (p->meta.flags[b] & TM_F_ALLOC) && p->meta.slot[b] != TM_NO_SLOT && p->meta.tier[b] != TM_DRAM;
    if (!n)
        return;
    int fds[2];
    uint32_t *slots = malloc((size_t)n * sizeof *slots);
    if (!slots || tm_os_pipe(fds) < 0) {
        free(slots);
        snprintf(p->fork_err, sizeof p->fork_err, "the parent could not keep its lower tiers' data at the fork (%s)",
                 strerror(errno));
        return;
    }
    int64_t k = 0;
    for (int64_t b = 0; b < p->scan_end && k < n; b++) {
        uint32_t g = p->meta.slot[b];
        if (!(p->meta.flags[b] & TM_F_ALLOC) || g == TM_NO_SLOT || p->meta.tier[b] == TM_DRAM)
            continue;
        tm_tier *t = tm_slot_tier(p, g);
        if (tm_tier_keep(t, g - t->first_slot) < 0)
            break;
        slots[k++] = g;
    }
    p->pending = (tm_fork_gen){.fd = fds[0], .slots = slots, .n = k};
    p->pending_wfd = fds[1];
    if (k < n) /* out of memory for the map of kept slots */
        snprintf(p->fork_err, sizeof p->fork_err, "the parent could not keep all of its lower tiers' data at the fork");
}

void tm_fork_parent(struct tm_pool *p)
{
    if (p->pending_wfd >= 0)
        close(p->pending_wfd);
    if (p->pending.fd >= 0) {
        tm_fork_gen *g = realloc(p->gens, (size_t)(p->ngens + 1) * sizeof *g);
        if (g) {
            p->gens = g;
            p->gens[p->ngens++] = p->pending;
        } else { /* cannot track it: its slots stay kept for the pool's life */
            close(p->pending.fd);
            free(p->pending.slots);
        }
    }
    tm_unlock(p);
}

static void let_go(struct tm_pool *p, const tm_fork_gen *g)
{
    for (int64_t i = 0; i < g->n; i++) {
        uint32_t s = g->slots[i];
        tm_tier *t = tm_slot_tier(p, s);
        tm_tier_let_go(t, s - t->first_slot);
    }
}

void tm_fork_reap(struct tm_pool *p)
{
    for (int i = 0; i < p->ngens;) {
        if (!tm_os_hung_up(p->gens[i].fd)) {
            i++;
            continue;
        }
        let_go(p, &p->gens[i]);
        close(p->gens[i].fd);
        free(p->gens[i].slots);
        p->gens[i] = p->gens[--p->ngens];
    }
}

void tm_fork_fini(struct tm_pool *p)
{
    for (int i = 0; i < p->ngens; i++) {
        close(p->gens[i].fd);
        free(p->gens[i].slots);
    }
    free(p->gens);
    p->gens = NULL;
    p->ngens = 0;
    free(p->child_buf);
    free(p->child_ring);
    p->child_buf = NULL;
    p->child_ring = NULL;
}

/* ---- in the child ------------------------------------------------------ */

/* Pool memory a child cannot be served faults: the arena is inaccessible
 * (PROT_NONE) when the view could not be set up, and a block that cannot be
 * read is poisoned (SIGBUS). A SIGSEGV / SIGBUS handler then answers for
 * those pools' arenas only: one line on stderr, and _exit(TM_FORK_UNSERVED_EXIT),
 * rather than death by a signal that says nothing of why. Other faults go
 * to the handler it replaced. It runs in the faulting thread, so it only
 * reads what was written before the fault could happen, and calls only
 * async-signal-safe functions. */
typedef struct unserved {
    struct tm_pool *p;  /* claimed with a CAS: the views' threads record at once */
    uintptr_t lo, hi;   /* its arena */
    int cut;            /* the whole arena is inaccessible */
    int n;              /* reasons recorded; the latest is why[(n - 1) & 1] */
    char why[2][224];   /* two: one is written while the other may be read */
} unserved;
static unserved unserved_views[64]; /* as many as pools (arena.c) */
static struct sigaction prev_segv, prev_bus;
static pthread_mutex_t watch_lock = PTHREAD_MUTEX_INITIALIZER;
static int watching; /* inherited by a grandchild, with the handler */
static int said;     /* by the first thread whose access cannot be served */

static char *put(char *o, char *end, const char *s)
{
    while (*s && o < end)
        *o++ = *s++;
    return o;
}

static char *put_num(char *o, char *end, uint64_t v, unsigned base)
{
    char d[24];
    int n = 0;
    do
        d[n++] = "0123456789abcdef"[v % base];
    while ((v /= base) && n < (int)sizeof d);
    if (base == 16)
        o = put(o, end, "0x");
    while (n && o < end)
        *o++ = d[--n];
    return o;
}

/* Pass the fault on to the handler there was before. */
static void chain(int sig, siginfo_t *si, void *ctx)
{
    struct sigaction *prev = sig == SIGSEGV ? &prev_segv : &prev_bus;
    if (prev->sa_flags & SA_SIGINFO) {
        prev->sa_sigaction(sig, si, ctx);
    } else if (prev->sa_handler != SIG_DFL && prev->sa_handler != SIG_IGN) {
        prev->sa_handler(sig);
    } else {
        /* The default: a fault happens again on return, a sent signal is sent again. */
        sigaction(sig, prev, NULL);
        if (si->si_code <= 0)
            raise(sig);
    }
}

static void on_fault(int sig, siginfo_t *si, void *ctx)
{
    uintptr_t a = (uintptr_t)si->si_addr;
    for (size_t i = 0; si->si_code > 0 && i < sizeof unserved_views / sizeof unserved_views[0]; i++) {
        unserved *u = &unserved_views[i];
        int n = __atomic_load_n(&u->n, __ATOMIC_ACQUIRE);
        if (!n || a < u->lo || a >= u->hi)
            continue;
        if (__atomic_exchange_n(&said, 1, __ATOMIC_ACQ_REL))
            for (;;) /* another thread says it, and its _exit ends this one */
                pause();
        char line[512], *o = line, *end = line + sizeof line - 1;
        o = put(o, end, "tieredmem: forked child ");
        o = put_num(o, end, (uint64_t)getpid(), 10);
        o = put(o, end, ": pool memory at ");
        o = put_num(o, end, a, 16);
        o = put(o, end, " (pool at ");
        o = put_num(o, end, u->lo, 16);
        o = put(o, end, ") cannot be read: ");
        o = put(o, end, u->why[(n - 1) & 1]);
        o = put(o, end, "; exiting with status ");
        o = put_num(o, end, TM_FORK_UNSERVED_EXIT, 10);
        *o++ = '\n';
        if (write(2, line, (size_t)(o - line)) < 0) {
            /* nothing more to tell it with */
        }
        _exit(TM_FORK_UNSERVED_EXIT);
    }
    chain(sig, si, ctx);
}

static void watch_faults(void)
{
    pthread_mutex_lock(&watch_lock);
    if (!watching) {
        struct sigaction sa = {.sa_sigaction = on_fault, .sa_flags = SA_SIGINFO | SA_ONSTACK};
        sigemptyset(&sa.sa_mask);
        sigaction(SIGSEGV, &sa, &prev_segv);
        sigaction(SIGBUS, &sa, &prev_bus);
        watching = 1;
    }
    pthread_mutex_unlock(&watch_lock);
}

/* The entry of view p; `claim`: made if there is none (NULL if full). */
static unserved *unserved_of(struct tm_pool *p, int claim)
{
    for (size_t i = 0; i < sizeof unserved_views / sizeof unserved_views[0]; i++) {
        struct tm_pool *none = NULL;
        if (__atomic_load_n(&unserved_views[i].p, __ATOMIC_ACQUIRE) == p ||
            (claim &&
             __atomic_compare_exchange_n(&unserved_views[i].p, &none, p, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)))
            return &unserved_views[i];
    }
    return NULL;
}

static void record(struct tm_pool *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Why this view's pool memory (or some of it) cannot be read: the pool's
 * error, and what the fault handler will say. Before the fault can come. */
static void record(struct tm_pool *p, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err, sizeof p->err, fmt, ap);
    va_end(ap);
    unserved *u = unserved_of(p, 1);
    if (!u) /* 64 views unserved already: this one's faults go unexplained */
        return;
    watch_faults();
    snprintf(u->why[u->n & 1], sizeof u->why[0], "%s", p->err);
    u->lo = (uintptr_t)p->base;
    u->hi = u->lo + p->arena_size;
    __atomic_store_n(&u->n, u->n + 1, __ATOMIC_RELEASE);
}

/* Serve this view no more: no access to its arena (its missing pages would
 * read as zeros), and the faults waiting on the userfaultfd are woken, by
 * its closing, to find that out. The reason is recorded already. */
static void cut_off(struct tm_pool *p)
{
    mprotect(p->base, p->arena_size, PROT_NONE);
    unserved *u = unserved_of(p, 0);
    if (u)
        u->cut = 1;
    if (p->uffd >= 0)
        close(p->uffd);
    p->uffd = -1;
}

static void fail(struct tm_pool *p, uint64_t addr, int64_t b, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void fail(struct tm_pool *p, uint64_t addr, int64_t b, const char *fmt, ...)
{
    char why[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    record(p, "block %lld: %s", (long long)b, why);
    p->meta.flags[b] |= TM_F_POISON;
    if (tm_uffd_poison(p, addr) < 0)
        cut_off(p); /* woken unpoisoned, the access would only fault here again */
}

/* Hold one more block read from below; past the cap, the oldest one not
 * written since goes (it is read again if touched). */
static void hold(struct tm_pool *p, int64_t b)
{
    if (p->child_held == p->child_cap) {
        int64_t o = p->child_ring[p->child_head];
        if ((p->xflags[o] & TM_X_CHILD) && !(p->meta.flags[o] & TM_F_DIRTY)) {
            tm_os_zap(tm_block_addr(p, o), p->bs);
            p->xflags[o] &= (uint8_t)~TM_X_CHILD;
        }
        p->child_held--;
        p->child_head = (p->child_head + 1) % p->child_cap;
    }
    p->child_ring[(p->child_head + p->child_held++) % p->child_cap] = b;
}

/* Map block b as it was at the fork (lock held); `wp`: a write to a block
 * this child mapped write-protected. */
static void serve(struct tm_pool *p, uint64_t addr, int wp)
{
    int64_t b = tm_block_of(p, (void *)(uintptr_t)addr);
    if (b < 0 || b >= p->nblocks)
        return;
    uint8_t f = p->meta.flags[b], tier = p->meta.tier[b];
    uint32_t g = p->meta.slot[b];
    if (!(f & TM_F_ALLOC) || (f & TM_F_POISON)) {
        fail(p, addr, b, "%s", f & TM_F_ALLOC ? "it was unreadable in the parent" : "it is not allocated (freed?)");
        return;
    }
    if (p->xflags[b] & TM_X_CHILD) { /* mapped already: a write, or a fault that raced the one that mapped it */
        if (wp) {
            p->meta.flags[b] |= TM_F_DIRTY; /* the child's own data now: never dropped */
            tm_uffd_unprotect(p, b, 1);
        }
        tm_uffd_wake(p, b, 1);
        return;
    }
    if (tier == TM_DRAM) {
        fail(p, addr, b, "internal error: a block resident at the fork has a page missing");
        return;
    }
    int64_t n = 1;
    if (tier == TM_UNBACKED) {
        memset(p->child_buf, 0, p->bs);
    } else if (p->fork_err[0]) {
        fail(p, addr, b, "%s", p->fork_err);
        return;
    } else {
        /* With the blocks after it whose slots follow its own, in one read:
         * a scan takes a fault per run, not per block. */
        tm_tier *t = tm_slot_tier(p, g);
        while (n < p->child_run && b + n < p->nblocks && p->meta.slot[b + n] == g + n &&
               p->meta.tier[b + n] == tier && (p->meta.flags[b + n] & (TM_F_ALLOC | TM_F_POISON)) == TM_F_ALLOC &&
               !(p->xflags[b + n] & TM_X_CHILD) && g + n < t->first_slot + t->nslots)
            n++;
        tm_io io = {.slot = g - t->first_slot, .nblocks = (uint32_t)n, .buf = p->child_buf};
        int r = tm_tier_readv(t, NULL, &io, 1);
        if (r < 0) {
            fail(p, addr, b, "the %s read of its slot failed (%s)", t == &p->pmem ? "pmem" : "nvme", strerror(-r));
            return;
        }
        for (int64_t i = 0; i < n; i++) {
            if (tm_block_checksum(p->child_buf + ((size_t)i << p->bshift), p->bs) != t->csum[io.slot + (uint64_t)i]) {
                if (i == 0) {
                    fail(p, addr, b, "the data read from its slot failed its checksum");
                    return;
                }
                n = i; /* the damaged one fails when it is touched */
            }
        }
    }
    /* A block read from below is protected, so that a write is seen: until
     * then it can be dropped and read again. A zero-filled one is the
     * child's own from the start. */
    int again = tier != TM_UNBACKED;
    int r = tm_uffd_install(p, b, n, p->child_buf, again);
    if (r < 0 && r != -EEXIST) {
        fail(p, addr, b, "UFFDIO_COPY failed (%s)", strerror(-r));
        return;
    }
    for (int64_t i = b; i < b + n; i++) {
        p->xflags[i] |= TM_X_CHILD;
        if (again)
            hold(p, i);
        else
            p->meta.flags[i] |= TM_F_DIRTY;
    }
    tm_uffd_wake(p, b, n);
}

static void *child_main(void *arg)
{
    struct tm_pool *p = arg;
    tm_engine_depth++; /* an interposed malloc gives this thread no pool memory */
    for (;;) {
        struct pollfd fd = {p->uffd, POLLIN, 0};
        if (poll(&fd, 1, -1) < 0 && errno != EINTR) { /* gone, this thread would leave faults waiting forever */
            int e = errno;
            tm_lock(p);
            record(p, "the thread that serves its faults failed (poll: %s)", strerror(e));
            cut_off(p);
            tm_unlock(p);
            break;
        }
        struct uffd_msg msg;
        if (read(p->uffd, &msg, sizeof msg) != (ssize_t)sizeof msg)
            continue; /* EAGAIN: another wake-up took it */
        if (msg.event != UFFD_EVENT_PAGEFAULT)
            continue;
        tm_lock(p);
        serve(p, msg.arg.pagefault.address, (msg.arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP) != 0);
        tm_unlock(p);
    }
    return NULL;
}

/* Test hook: TIEREDMEM_INJECT_FORK="STEP:ERRNO" (STEP uffd or thread, ERRNO
 * a number) makes that step of a child's setup fail with that errno. */
static int injected(const char *step)
{
    const char *s = getenv("TIEREDMEM_INJECT_FORK");
    size_t n = strlen(step);
    if (!s || strncmp(s, step, n) || s[n] != ':')
        return 0;
    int e = atoi(s + n + 1);
    return e > 0 ? -e : 0;
}

void tm_fork_child(struct tm_pool *p)
{
    /* The forking thread held the lock; no other thread came along. */
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->io_cond, NULL);
    pthread_cond_init(&p->bg_cond, NULL);
    tm_engine_depth--;
    tm_fork_fini(p); /* the parent's generations */
    if (p->pending.fd >= 0)
        close(p->pending.fd); /* the write end stays open as long as this child and its own */
    free(p->pending.slots);
    if (p->uffd >= 0)
        close(p->uffd);
    if (p->stop_fd >= 0)
        close(p->stop_fd);
    if (p->fill_fd >= 0)
        close(p->fill_fd);
    p->uffd = p->stop_fd = p->fill_fd = -1;
    p->nworkers = 0;
    p->bg_started = 0;
    p->child = 1;
    /* What it read from below stays up to a quarter of the parent's budget
     * (the blocks it writes or had from the parent's DRAM stay all along). */
    p->child_cap = p->dram_blocks / 4 > p->batch_blocks ? p->dram_blocks / 4 : p->batch_blocks;
    p->child_held = p->child_head = 0;
    for (int64_t b = 0; b < p->scan_end; b++)
        p->xflags[b] = 0;
    free(p->child_buf);
    free(p->child_ring);
    p->child_ring = malloc((size_t)p->child_cap * sizeof *p->child_ring);
    p->child_run = TM_CHILD_READ_BYTES / p->bs ? (int64_t)(TM_CHILD_READ_BYTES / p->bs) : 1;
    if (p->child_run > p->child_cap)
        p->child_run = p->child_cap;
    const char *step = "no memory for its buffers";
    int r = -ENOMEM;
    if (p->child_ring && !posix_memalign((void **)&p->child_buf, 4096, (size_t)p->child_run << p->bshift)) {
        step = "no userfaultfd of its own";
        if (!(r = injected("uffd")) && !(r = tm_uffd_open_child(p))) {
            step = "cannot start the thread that serves its faults";
            pthread_t th;
            if (!(r = injected("thread")) && !(r = -pthread_create(&th, NULL, child_main, p)))
                pthread_detach(th);
        }
    }
    if (r == 0) {
        /* The view of a parent that was cut off: this process is served. */
        unserved *u = unserved_of(p, 0);
        if (u && u->cut) {
            __atomic_store_n(&u->n, 0, __ATOMIC_RELEASE);
            u->cut = 0;
            mprotect(p->base, p->arena_size, PROT_READ | PROT_WRITE);
        }
        return;
    }
    /* Said only if an access comes: a child that leaves the pools alone
     * (one that calls exec, say) is not to be told. */
    record(p, "this process could not set up its view of the parent's pool at the fork: %s (%s)", step,
           strerror(-r));
    cut_off(p);
}

void tm_fork_child_release(struct tm_pool *p, int64_t b, int64_t n)
{
    tm_os_zap(tm_block_addr(p, b), (size_t)n << p->bshift);
    for (int64_t i = b; i < b + n; i++) {
        p->meta.flags[i] = 0;
        p->meta.tier[i] = TM_UNBACKED;
        p->xflags[i] = 0;
    }
    p->alloc_len[b] = 0;
}
