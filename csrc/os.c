/* os.c: the OS layer. Every system call the engine makes outside the fault
 * ioctls goes through here; each function states what it needs. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <mntent.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14 */
#endif

void tm_os_assert_fail(const char *cond, const char *file, int line, const char *func)
{
    /* stdio may be unusable in a broken process: one write(2), then abort. */
    char msg[512];
    int n = snprintf(msg, sizeof msg, "tieredmem: internal error: %s:%d: %s: assertion failed: %s\n", file, line,
                     func, cond);
    if (n > 0 && write(2, msg, (size_t)(n < (int)sizeof msg ? n : (int)sizeof msg - 1)) < 0)
        n = 0;
    abort();
}

/* size bytes of fresh anonymous memory aligned to align (a power of two, a
 * multiple of the page size): map size + align, keep the first aligned
 * stretch and give back the slack. NULL on failure (errno). */
static void *map_aligned(size_t size, size_t align, int flags)
{
    tm_assert(size > 0 && (size & 4095) == 0 && align >= 4096 && (align & (align - 1)) == 0);
    size_t span = size + align;
    uint8_t *r = mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | flags, -1, 0);
    if (r == MAP_FAILED)
        return NULL;
    uintptr_t a = ((uintptr_t)r + align - 1) & ~(uintptr_t)(align - 1);
    if (a > (uintptr_t)r)
        munmap(r, a - (uintptr_t)r);
    size_t tail = (uintptr_t)r + span - (a + size);
    if (tail)
        munmap((void *)(a + size), tail);
    return (void *)a;
}

void *tm_os_reserve(size_t size, size_t align, int inherit)
{
    void *a = map_aligned(size, align, MAP_NORESERVE);
    if (!a)
        return NULL;
    /* No huge pages of the kernel's making: blocks (64 KiB by default) move
     * one by one, and the first moved out of a transparent huge page splits
     * it. The engine moves whole huge pages in itself, where a zero fill
     * covers one (hugezero.c). */
    if (!inherit)
        madvise(a, size, MADV_DONTFORK);
    madvise(a, size, MADV_NOHUGEPAGE);
    return a;
}

void *tm_os_huge_reserve(size_t size)
{
    tm_assert(size > 0 && (size & (TM_HUGE_BYTES - 1)) == 0);
    void *a = map_aligned(size, TM_HUGE_BYTES, MAP_NORESERVE);
    if (!a)
        return NULL;
    madvise(a, size, MADV_HUGEPAGE);  /* where THP is "never", small pages: still correct */
    madvise(a, size, MADV_DONTFORK);
    return a;
}

void *tm_os_io_buffer(size_t size, int populate)
{
    /* Aligned to a huge page, so that its huge pages can be used whole. */
    void *a = map_aligned(size, TM_HUGE_BYTES, 0);
    if (!a)
        return NULL;
    /* Where THP is "never", small pages: requests are then split, not refused. */
    madvise(a, size, MADV_HUGEPAGE);
    madvise(a, size, MADV_DONTFORK); /* a fork child never uses it */
    if (populate && madvise(a, size, MADV_POPULATE_WRITE) < 0) {
        /* touched later, on first use */
    }
    return a;
}

void tm_os_unmap(void *addr, size_t size)
{
    if (addr)
        munmap(addr, size);
}

int tm_os_punch(int fd, uint64_t off, uint64_t len)
{
    if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) < 0)
        return -errno;
    return 0;
}

int tm_os_populate_write(void *addr, size_t len)
{
    tm_assert(((uintptr_t)addr & 4095) == 0 && len > 0);
    return madvise(addr, len, MADV_POPULATE_WRITE) < 0 ? -errno : 0;
}

int tm_os_zap(void *addr, size_t len)
{
    return madvise(addr, len, MADV_DONTNEED) < 0 ? -errno : 0;
}

int tm_os_pipe(int fds[2])
{
    if (pipe2(fds, O_CLOEXEC) < 0)
        return -1;
    fcntl(fds[0], F_SETFL, O_NONBLOCK);
    return 0;
}

int tm_os_eventfd(int nonblocking)
{
    int fd = eventfd(0, EFD_CLOEXEC | (nonblocking ? EFD_NONBLOCK : 0));
    return fd < 0 ? -errno : fd;
}

void tm_os_kick(int fd)
{
    tm_assert(fd >= 0);
    uint64_t one = 1;
    if (write(fd, &one, sizeof one) < 0) {
        /* EAGAIN on a non-blocking eventfd: the count is saturated, a kick is pending anyway */
    }
}

int tm_os_hung_up(int fd)
{
    struct pollfd q = {fd, POLLIN, 0};
    char c;
    return poll(&q, 1, 0) == 1 && (q.revents & (POLLHUP | POLLERR)) && read(fd, &c, 1) == 0;
}

int tm_os_userfaultfd(void)
{
    int flags = O_CLOEXEC | O_NONBLOCK;
    int fd = (int)syscall(SYS_userfaultfd, flags);
    if (fd >= 0)
        return fd;
    int e = errno;
    /* Unprivileged users may still get one through /dev/userfaultfd. */
    int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
    if (dev < 0)
        return -e;
    fd = ioctl(dev, USERFAULTFD_IOC_NEW, flags);
    e = errno;
    close(dev);
    return fd >= 0 ? fd : -e;
}

int tm_os_tmpfile(const char *dir, int flags)
{
    int fd = open(dir, O_TMPFILE | O_RDWR | O_EXCL | O_CLOEXEC | flags, 0600);
    if (fd >= 0)
        return fd;
    if (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL)
        return -errno;
    /* No O_TMPFILE here: create with a random name and unlink at once. */
    char path[4096];
    if (snprintf(path, sizeof path, "%s/tieredmem-XXXXXX", dir) >= (int)sizeof path)
        return -ENAMETOOLONG;
    fd = mkostemp(path, O_CLOEXEC);
    if (fd < 0)
        return -errno;
    unlink(path);
    if (flags) {
        int fl = fcntl(fd, F_GETFL);
        if (fcntl(fd, F_SETFL, fl | flags) < 0) {
            int e = errno;
            close(fd);
            return -e;
        }
    }
    return fd;
}

int tm_os_cpus(int *cpus, int max)
{
    cpu_set_t set;
    int n = 0;
    if (sched_getaffinity(0, sizeof set, &set) < 0)
        return 0;
    for (int c = 0; c < CPU_SETSIZE && n < max; c++)
        if (CPU_ISSET(c, &set))
            cpus[n++] = c;
    return n;
}

int tm_os_pin_self(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return sched_setaffinity(0, sizeof set, &set) < 0 ? -errno : 0;
}

uint64_t tm_os_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int has_dax_option(const struct mntent *m)
{
    return hasmntopt(m, "dax") != NULL;
}

int tm_os_is_dax(const char *dir)
{
    /* The longest mount point that prefixes dir decides. */
    FILE *f = setmntent("/proc/self/mounts", "r");
    if (!f)
        return 0;
    struct mntent *m;
    size_t best = 0;
    int dax = 0;
    char real[4096];
    if (!realpath(dir, real)) {
        endmntent(f);
        return 0;
    }
    while ((m = getmntent(f))) {
        size_t l = strlen(m->mnt_dir);
        if (strncmp(real, m->mnt_dir, l) == 0 && (real[l] == '/' || real[l] == 0 || l == 1) && l >= best) {
            best = l;
            dax = has_dax_option(m);
        }
    }
    endmntent(f);
    return dax;
}

const char *tm_os_find_dax_mount(char *buf, size_t len)
{
    FILE *f = setmntent("/proc/self/mounts", "r");
    if (!f)
        return NULL;
    struct mntent *m;
    const char *found = NULL;
    while ((m = getmntent(f))) {
        if (has_dax_option(m) && access(m->mnt_dir, W_OK) == 0) {
            snprintf(buf, len, "%s", m->mnt_dir);
            found = buf;
            break;
        }
    }
    endmntent(f);
    return found;
}

int tm_os_private_dir(const char *path)
{
    if (mkdir(path, 0700) < 0 && errno != EEXIST)
        return -errno;
    struct stat st;
    if (lstat(path, &st) < 0)
        return -errno;
    if (!S_ISDIR(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 077))
        return -EPERM;
    return 0;
}

void *tm_os_shm_create(const char *path, size_t size)
{
    tm_assert(size > 0);
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        return NULL;
    void *m = MAP_FAILED;
    if (ftruncate(fd, (off_t)size) == 0)
        m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    int e = errno;
    close(fd);
    if (m == MAP_FAILED) {
        unlink(path);
        errno = e;
        return NULL;
    }
    return m;
}

int tm_os_unlink(const char *path)
{
    return unlink(path) < 0 ? -errno : 0;
}

uint64_t tm_os_start_time(void)
{
    char buf[1024];
    int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = 0;
    /* The command (field 2) may hold spaces and parentheses: count from its
     * closing one, after which field 3 starts. */
    char *s = strrchr(buf, ')');
    for (int field = 2; s && field < 22; field++)
        s = strchr(s + 1, ' ');
    return s ? strtoull(s + 1, NULL, 10) : 0;
}
