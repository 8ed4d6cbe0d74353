/* tier.c: what every lower tier shares: the slot map and the fault-injection
 * layer in front of the backends' I/O. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

int tm_tier_init_slots(tm_tier *t, uint64_t nslots)
{
    t->nslots = nslots;
    t->used_map = calloc((nslots + 63) / 64 + 1, sizeof(uint64_t));
    t->csum = calloc(nslots, sizeof(uint32_t));
    return t->used_map && t->csum ? 0 : -ENOMEM;
}

void tm_tier_close(tm_tier *t)
{
    if (t->ops && t->ops->close)
        t->ops->close(t);
    free(t->used_map);
    free(t->csum);
    free(t->kept);
    t->used_map = NULL;
    t->csum = NULL;
    t->kept = NULL;
    t->nslots = 0;
}

static int slot_used(const tm_tier *t, uint64_t s)
{
    return (t->used_map[s >> 6] >> (s & 63)) & 1;
}

uint64_t tm_tier_slot_alloc(tm_tier *t, uint64_t hint)
{
    if (t->used >= t->nslots)
        return UINT64_MAX;
    /* Next fit from the hint (or the cursor), scanning a word at a time. */
    uint64_t s = hint < t->nslots ? hint : t->cursor;
    for (uint64_t scanned = 0; scanned <= t->nslots + 64;) {
        if (s >= t->nslots)
            s = 0;
        uint64_t w = t->used_map[s >> 6] | ((1ull << (s & 63)) - 1);
        if (~w == 0) {
            scanned += 64 - (s & 63);
            s = (s | 63) + 1;
            continue;
        }
        uint64_t bit = (uint64_t)__builtin_ctzll(~w);
        s = (s & ~63ull) | bit;
        if (s < t->nslots && !slot_used(t, s)) {
            t->used_map[s >> 6] |= 1ull << bit;
            t->used++;
            if (t->used > t->peak)
                t->peak = t->used;
            t->cursor = s + 1;
            return s;
        }
        scanned += 64;
        s = (s | 63) + 1;
    }
    return UINT64_MAX;
}

void tm_tier_slot_free(tm_tier *t, uint64_t slot)
{
    if (t->kept && t->kept[slot]) { /* a forked child still reads it: freed when it is let go */
        t->kept[slot] |= TM_KEPT_FREED;
        return;
    }
    t->used_map[slot >> 6] &= ~(1ull << (slot & 63));
    t->used--;
}

int tm_tier_keep(tm_tier *t, uint64_t slot)
{
    if (!t->kept && !(t->kept = calloc(t->nslots, sizeof *t->kept)))
        return -ENOMEM;
    tm_assert(slot_used(t, slot) && !(t->kept[slot] & TM_KEPT_FREED) &&
              (t->kept[slot] & ~TM_KEPT_FREED) < TM_KEPT_FREED - 1);
    if (!t->kept[slot])
        t->kept_slots++;
    t->kept[slot]++;
    return 0;
}

int tm_tier_let_go(tm_tier *t, uint64_t slot)
{
    tm_assert(t->kept && (t->kept[slot] & ~TM_KEPT_FREED) > 0);
    uint16_t k = --t->kept[slot];
    if (k & ~TM_KEPT_FREED)
        return 0;
    t->kept[slot] = 0;
    t->kept_slots--;
    if (!(k & TM_KEPT_FREED))
        return 0;
    tm_tier_slot_free(t, slot);
    return 1;
}

int tm_tier_kept(const tm_tier *t, uint64_t slot)
{
    return t->kept && t->kept[slot] != 0;
}

void tm_tier_discard(tm_tier *t, uint64_t slot, uint64_t n)
{
    /* Runs of slots nobody keeps: a kept slot's data is still read. */
    for (uint64_t i = 0; i < n;) {
        uint64_t j = i;
        while (j < n && !tm_tier_kept(t, slot + j))
            j++;
        if (j > i)
            t->ops->discard(t, slot + i, j - i);
        i = j + 1;
    }
}

/* 1 if this operation must fail as injected (after sleeping, if it is to be
 * slow); counts operations. */
static int injected(tm_inject *in, uint64_t *count)
{
    uint64_t n = __atomic_fetch_add(count, 1, __ATOMIC_RELAXED);
    if (n < in->skip)
        return 0;
    if (in->delay_ns) {
        struct timespec ts = {(time_t)(in->delay_ns / 1000000000ull), (long)(in->delay_ns % 1000000000ull)};
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
        }
    }
    return in->err || in->short_io;
}

/* Emulated speed: stretch a transfer that started at t0 to its latency per
 * request plus its size over the bandwidth. The bandwidth is the medium's,
 * shared by all threads: a transfer starts when the one before it on any
 * thread is done (*busy). Spinning, not sleeping: a CPU copying from slow
 * memory is busy, not idle. */
static void emulate(const tm_tier *t, const tm_io *ios, int n, uint64_t ns_per_req, uint64_t mbps, uint64_t t0,
                    uint64_t *busy)
{
    if (!ns_per_req && !mbps)
        return;
    uint64_t bytes = 0;
    for (int i = 0; i < n; i++)
        bytes += (uint64_t)ios[i].nblocks * t->bs;
    uint64_t ready = t0 + (uint64_t)n * ns_per_req, until = ready;
    if (mbps) {
        uint64_t seen = __atomic_load_n(busy, __ATOMIC_RELAXED);
        do
            until = (seen > ready ? seen : ready) + bytes * 1000 / mbps;
        while (!__atomic_compare_exchange_n(busy, &seen, until, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    }
    while (tm_os_now_ns() < until) {
    }
}

int tm_tier_readv(tm_tier *t, tm_ioq *q, const tm_io *ios, int n)
{
    if (injected(&t->inject_read, &t->nreads))
        return t->inject_read.short_io ? -EIO : -t->inject_read.err;
    uint64_t t0 = tm_os_now_ns();
    int r = t->ops->readv(t, q, ios, n);
    emulate(t, ios, n, t->emu.read_ns, t->emu.read_mbps, t0, &t->emu.read_busy);
    return r;
}

int tm_tier_writev(tm_tier *t, tm_ioq *q, const tm_io *ios, int n)
{
    if (injected(&t->inject_write, &t->nwrites))
        return t->inject_write.short_io ? -EIO : -t->inject_write.err;
    uint64_t t0 = tm_os_now_ns();
    int r = t->ops->writev(t, q, ios, n);
    emulate(t, ios, n, t->emu.write_ns, t->emu.write_mbps, t0, &t->emu.write_busy);
    return r;
}

int tm_tier_submit_readv(tm_tier *t, tm_ioq *q, const tm_io *ios, int n)
{
    /* With injected read faults or delays the synchronous path must see every read. */
    if (!t->ops->submit_readv || t->inject_read.err || t->inject_read.short_io || t->inject_read.delay_ns)
        return -ENOTSUP;
    return t->ops->submit_readv(t, q, ios, n);
}

int tm_tier_wait_reads(tm_tier *t, tm_ioq *q)
{
    return t->ops->wait_reads ? t->ops->wait_reads(t, q) : 0;
}

static int errno_named(const char *s, size_t len)
{
    static const struct { const char *name; int err; } names[] = {
        {"EIO", EIO}, {"ENOSPC", ENOSPC}, {"EFAULT", EFAULT}, {"ENOMEM", ENOMEM}, {"EROFS", EROFS},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strlen(names[i].name) == len && strncmp(s, names[i].name, len) == 0)
            return names[i].err;
    return 0;
}

/* A decimal count at s (digits only: strtoull would take a sign and wrap
 * overflow silently); 0 or -1. *end is set past it. */
static int parse_count(const char *s, char **end, uint64_t *out)
{
    if (*s < '0' || *s > '9')
        return -1;
    errno = 0;
    *out = strtoull(s, end, 10);
    return errno == ERANGE ? -1 : 0;
}

/* spec: comma-separated "TIER_OP:WHAT[@SKIP]", TIER pmem|nvme, OP read|write,
 * WHAT an errno name (EIO, ENOSPC, ...), "short", or "delayNms" (succeed N
 * milliseconds late); SKIP operations are left alone first. Example:
 * "nvme_read:EIO@10,pmem_write:ENOSPC,nvme_write:delay200ms". */
int tm_inject_parse(const char *spec, tm_tier *pmem, tm_tier *nvme, char *err)
{
    const char *s = spec;
    while (s && *s) {
        const char *end = strchr(s, ',');
        size_t len = end ? (size_t)(end - s) : strlen(s);
        const char *colon = memchr(s, ':', len);
        if (!colon)
            goto bad;
        size_t klen = (size_t)(colon - s);
        tm_inject *in = NULL;
        if (klen == 9 && !strncmp(s, "pmem_read", 9)) in = &pmem->inject_read;
        else if (klen == 10 && !strncmp(s, "pmem_write", 10)) in = &pmem->inject_write;
        else if (klen == 9 && !strncmp(s, "nvme_read", 9)) in = &nvme->inject_read;
        else if (klen == 10 && !strncmp(s, "nvme_write", 10)) in = &nvme->inject_write;
        else goto bad;
        const char *what = colon + 1;
        const char *at = memchr(what, '@', len - klen - 1);
        size_t wlen = at ? (size_t)(at - what) : len - klen - 1;
        char *end_ms;
        if (wlen == 5 && !strncmp(what, "short", 5)) {
            in->short_io = 1;
        } else if (wlen > 7 && !strncmp(what, "delay", 5) && what[5] >= '0' && what[5] <= '9') {
            uint64_t ms;
            if (parse_count(what + 5, &end_ms, &ms) < 0 || ms > UINT64_MAX / 1000000ull ||
                end_ms != what + wlen - 2 || strncmp(end_ms, "ms", 2))
                goto bad;
            in->delay_ns = ms * 1000000ull;
        } else if (!(in->err = errno_named(what, wlen))) {
            goto bad;
        }
        if (at) {
            char *stop;
            if (parse_count(at + 1, &stop, &in->skip) < 0 || stop != s + len)
                goto bad;
        }
        s = end ? end + 1 : NULL;
    }
    return 0;
bad:
    snprintf(err, TM_ERRLEN, "bad TIEREDMEM_INJECT entry near '%s': expected "
             "{pmem,nvme}_{read,write}:{EIO,ENOSPC,EFAULT,ENOMEM,EROFS,short,delayNms}[@N]", s);
    return -EINVAL;
}
