/* uffd.c: the userfaultfd. Opens it and registers the arena, and wraps the
 * ioctls that resolve faults (copy a block in, zero fill, poison, wake) and
 * move blocks between the arena and its shadow (UFFDIO_MOVE). Nothing here
 * decides anything: the callers hold the pool lock or own the blocks. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/userfaultfd.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "internal.h"

/* Newer than some distributions' headers (Linux 6.6 / 6.8). */
#ifndef UFFD_FEATURE_POISON
#define UFFD_FEATURE_POISON (1 << 14)
struct uffdio_poison {
    struct uffdio_range range;
    __u64 mode;
    __s64 updated;
};
#define _UFFDIO_POISON (0x08)
#define UFFDIO_POISON _IOWR(UFFDIO, _UFFDIO_POISON, struct uffdio_poison)
#endif
#ifndef UFFD_FEATURE_MOVE
#define UFFD_FEATURE_MOVE (1 << 16)
struct uffdio_move {
    __u64 dst, src, len;
    __u64 mode;
    __s64 move;
};
#define UFFDIO_MOVE_MODE_DONTWAKE ((__u64)1 << 0)
#define UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES ((__u64)1 << 1)
#define _UFFDIO_MOVE (0x05)
#define UFFDIO_MOVE _IOWR(UFFDIO, _UFFDIO_MOVE, struct uffdio_move)
#endif

#define PAGE 4096ul

static const char *denied_help =
    "userfaultfd is not permitted for this process (%s). tieredmem serves page faults "
    "itself and needs it. Enable it with one of: `sysctl -w vm.unprivileged_userfaultfd=1`; "
    "read-write access to /dev/userfaultfd (e.g. `setfacl -m u:$USER:rw /dev/userfaultfd`); "
    "or run the process with CAP_SYS_PTRACE.";

static int api_handshake(int fd, uint64_t features, uint64_t *got)
{
    struct uffdio_api api = {.api = UFFD_API, .features = features};
    if (ioctl(fd, UFFDIO_API, &api) < 0)
        return -errno;
    *got = api.features;
    return 0;
}

int tm_uffd_open(struct tm_pool *p, int force_denied)
{
    int fd = force_denied ? -EPERM : tm_os_userfaultfd();
    if (fd == -EPERM || fd == -EACCES) {
        tm_set_create_error(denied_help, force_denied ? "forced by TIEREDMEM_FORCE_NO_UFFD" : strerror(-fd));
        return -EPERM;
    }
    if (fd < 0) {
        tm_set_create_error("userfaultfd is not available: %s (the kernel needs CONFIG_USERFAULTFD)", strerror(-fd));
        return fd;
    }
    /* Ask what the kernel offers on a throwaway descriptor: the handshake can
     * be made once per descriptor. */
    uint64_t offered = 0;
    int probe = tm_os_userfaultfd();
    if (probe >= 0) {
        api_handshake(probe, 0, &offered);
        close(probe);
    }
    /* UFFDIO_MOVE takes blocks out of the arena atomically, and refuses
     * pages the kernel has pinned for I/O (an O_DIRECT read in flight into
     * them): that is what makes demotion safe against such reads. */
    uint64_t need = UFFD_FEATURE_MOVE | UFFD_FEATURE_POISON;
    if ((offered & need) != need) {
        close(fd);
        tm_set_create_error("this kernel's userfaultfd lacks UFFDIO_MOVE or UFFDIO_POISON (features 0x%llx; "
                            "Linux 6.8 or newer is needed)", (unsigned long long)offered);
        return -ENOTSUP;
    }
    uint64_t got = 0;
    int r = api_handshake(fd, need, &got);
    if (r < 0) {
        close(fd);
        tm_set_create_error("UFFDIO_API failed: %s", strerror(-r));
        return r;
    }
    /* The arena: missing faults, and write-protect faults so that clean
     * blocks are known. The shadow only needs registering because UFFDIO_MOVE
     * moves into registered ranges; WP alone leaves its page faults to the
     * kernel, so the engine's own I/O into it never waits for a handler. */
    struct uffdio_register reg = {
        .range = {(uint64_t)(uintptr_t)p->base, p->arena_size},
        .mode = UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP,
    };
    struct uffdio_register shadow = {
        .range = {(uint64_t)(uintptr_t)p->shadow, p->arena_size},
        .mode = UFFDIO_REGISTER_MODE_WP,
    };
    if (ioctl(fd, UFFDIO_REGISTER, &reg) < 0 || ioctl(fd, UFFDIO_REGISTER, &shadow) < 0) {
        int e = errno;
        close(fd);
        tm_set_create_error("UFFDIO_REGISTER of the arena failed: %s", strerror(e));
        return -e;
    }
    p->uffd = fd;
    /* Write protection of anonymous memory is in every kernel with MOVE. */
    p->dirty_tracking = p->st.dirty_tracking = 1;
    return 0;
}

int tm_uffd_open_child(struct tm_pool *p)
{
    int fd = tm_os_userfaultfd();
    if (fd < 0)
        return fd;
    uint64_t got = 0;
    int r = api_handshake(fd, UFFD_FEATURE_POISON, &got);
    struct uffdio_register reg = {.range = {(uint64_t)(uintptr_t)p->base, p->arena_size},
                                  .mode = UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP};
    if (r == 0 && ioctl(fd, UFFDIO_REGISTER, &reg) < 0)
        r = -errno;
    if (r < 0) {
        close(fd);
        return r;
    }
    p->uffd = fd;
    p->dirty_tracking = 0;
    return 0;
}

void tm_uffd_close(struct tm_pool *p)
{
    if (p->uffd >= 0)
        close(p->uffd);
    p->uffd = -1;
}

int tm_uffd_wake(struct tm_pool *p, int64_t b, int64_t n)
{
    struct uffdio_range r = {(uint64_t)(uintptr_t)tm_block_addr(p, b), (uint64_t)n << p->bshift};
    return ioctl(p->uffd, UFFDIO_WAKE, &r) < 0 ? -errno : 0;
}

/* UFFDIO_MOVE of len bytes from src to dst without waking; returns the
 * bytes moved, or -errno if the first page could not be. */
static int64_t move(struct tm_pool *p, uint8_t *dst, uint8_t *src, uint64_t len, uint64_t mode)
{
    uint64_t done = 0;
    while (done < len) {
        struct uffdio_move m = {(uint64_t)(uintptr_t)(dst + done), (uint64_t)(uintptr_t)(src + done), len - done,
                                UFFDIO_MOVE_MODE_DONTWAKE | mode, 0};
        if (ioctl(p->uffd, UFFDIO_MOVE, &m) == 0)
            return (int64_t)len;
        if (m.move > 0)
            done += (uint64_t)m.move;
        else if (errno != EAGAIN)
            return done ? (int64_t)done : -errno;
    }
    return (int64_t)done;
}

int tm_uffd_move_in(struct tm_pool *p, int64_t b, int64_t n, void *src)
{
    size_t len = (size_t)n << p->bshift;
    int64_t r = move(p, tm_block_addr(p, b), src, len, 0);
    if (r == (int64_t)len)
        return 0;
    if (r > 0) /* a hole stopped it: what moved goes, so the blocks stay unmapped */
        tm_os_zap(tm_block_addr(p, b), (size_t)r);
    return r < 0 ? (int)r : -ENOENT;
}

int64_t tm_uffd_park(struct tm_pool *p, int64_t b, int64_t n)
{
    size_t off = (size_t)b << p->bshift, len = (size_t)n << p->bshift;
    int64_t r = move(p, p->shadow + off, p->base + off, len, 0);
    if (r == (int64_t)len)
        return n;
    /* A page the kernel pins for I/O stops the move: put back the part of
     * its block already moved, so that every block is whole on one side. */
    int64_t moved = r > 0 ? r : 0, whole = moved >> p->bshift;
    size_t part = (size_t)moved - ((size_t)whole << p->bshift);
    if (part) {
        size_t at = off + ((size_t)whole << p->bshift);
        move(p, p->base + at, p->shadow + at, part, 0);
    }
    return whole;
}

int tm_uffd_unpark(struct tm_pool *p, int64_t b, int64_t n)
{
    /* Pages that reached the arena already (a racing fault's block, mapped
     * since) stay: the move skips what is missing from the shadow. */
    size_t off = (size_t)b << p->bshift, len = (size_t)n << p->bshift;
    for (size_t done = 0; done < len;) {
        int64_t r = move(p, p->base + off + done, p->shadow + off + done, len - done,
                         UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES);
        if (r == -EEXIST) { /* this page is mapped already */
            done += PAGE;
            continue;
        }
        if (r < 0)
            return (int)r;
        done += (size_t)r;
    }
    tm_os_zap(p->shadow + off, len); /* nothing of these blocks stays behind */
    return 0;
}

int tm_uffd_install(struct tm_pool *p, int64_t b, int64_t n, const void *buf, int wp)
{
    uint64_t addr = (uint64_t)(uintptr_t)tm_block_addr(p, b);
    uint64_t len = (uint64_t)n << p->bshift, done = 0;
    while (done < len) {
        struct uffdio_copy c = {addr + done, (uint64_t)(uintptr_t)buf + done, len - done,
                                UFFDIO_COPY_MODE_DONTWAKE | (wp ? UFFDIO_COPY_MODE_WP : 0), 0};
        if (ioctl(p->uffd, UFFDIO_COPY, &c) == 0)
            return 0;
        if (errno == EAGAIN && c.copy > 0)
            done += (uint64_t)c.copy;
        else if (errno != EAGAIN)
            return -errno;
    }
    return 0;
}

int tm_uffd_zero_fill(struct tm_pool *p, int64_t b, int64_t n)
{
    /* Pages of their own at once, copied from a range that reads as zero:
     * the shared zero page would cost a copy-on-write fault per page at the
     * first write. */
    return tm_uffd_install(p, b, n, p->zeros, 0);
}

int tm_uffd_poison(struct tm_pool *p, uint64_t addr)
{
    /* The thread waiting there is only woken by the poison: if an entry is
     * in the way (the block is below DRAM, so it holds nothing), clear it. */
    struct uffdio_poison q = {{addr & ~(PAGE - 1), PAGE}, 0, 0};
    if (ioctl(p->uffd, UFFDIO_POISON, &q) == 0)
        return 0;
    if (errno != EEXIST)
        return -errno;
    tm_os_zap((void *)(uintptr_t)q.range.start, PAGE);
    return ioctl(p->uffd, UFFDIO_POISON, &q) < 0 ? -errno : 0;
}

int tm_uffd_unprotect(struct tm_pool *p, int64_t b, int64_t n)
{
    struct uffdio_writeprotect w = {{(uint64_t)(uintptr_t)tm_block_addr(p, b), (uint64_t)n << p->bshift}, 0};
    return ioctl(p->uffd, UFFDIO_WRITEPROTECT, &w) < 0 ? -errno : 0;
}

int tm_uffd_unshare(struct tm_pool *p, int64_t b, int64_t n)
{
    /* Write protection first: a write fault on a protected page would wait
     * for a handler, and the caller may be one, holding the lock. */
    int r = tm_uffd_unprotect(p, b, n);
    return r < 0 ? r : tm_os_populate_write(tm_block_addr(p, b), (size_t)n << p->bshift);
}

/* Answer the fault at addr with SIGBUS (EFAULT for a kernel-mode access).
 * The block is flagged: nothing reads it ahead of need any more. */
void tm_uffd_fail_fault(struct tm_pool *p, uint64_t addr, const char *what, int err)
{
    p->st.io_errors++;
    p->meta.flags[tm_block_of(p, (void *)(uintptr_t)addr)] |= TM_F_POISON;
    int r = tm_uffd_poison(p, addr);
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
    tm_uffd_wake(p, tm_block_of(p, (void *)(uintptr_t)addr), 1);
}

int tm_uffd_restore(struct tm_pool *p, int64_t b, int64_t n)
{
    int r = tm_uffd_unpark(p, b, n);
    if (r < 0)
        tm_set_error(p, "cannot map blocks %lld..%lld back after a failed demotion: %s", (long long)b,
                     (long long)(b + n - 1), strerror(-r));
    tm_uffd_wake(p, b, n);
    return r;
}
