/* tier_pmem.c: the persistent-memory tier. A file on a DAX filesystem when
 * the user names one or one is mounted, else emulated in /dev/shm. On DAX the
 * file is allocated in full and mapped, and blocks are copied with memcpy;
 * elsewhere it stays sparse: blocks are written with pwrite and read through
 * a read-only mapping. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "internal.h"

#ifndef MAP_SHARED_VALIDATE
#define MAP_SHARED_VALIDATE 0x03
#endif
#ifndef MAP_SYNC
#define MAP_SYNC 0x80000
#endif

/* DAX: loads and stores straight to the media. The file was fully allocated
 * at open, so no store can meet an unbacked page. */
static int map_readv(tm_tier *t, tm_ioq *q, const tm_io *ios, int n)
{
    for (int i = 0; i < n; i++)
        memcpy(ios[i].buf, t->map + ios[i].slot * t->bs, ios[i].nblocks * t->bs);
    return 0;
}

static int dax_writev(tm_tier *t, tm_ioq *q, const tm_io *ios, int n)
{
    for (int i = 0; i < n; i++)
        memcpy(t->map + ios[i].slot * t->bs, ios[i].buf, ios[i].nblocks * t->bs);
    return 0;
}

/* Not DAX: the file is sparse, so a write may find its filesystem full. A
 * store through a mapping would get SIGBUS there; pwrite returns ENOSPC,
 * which the demotion retries on the other tier. Reads only ever name slots
 * written before, whose pages exist: they load through a read-only mapping,
 * 2-3x faster than pread here. */
static int file_writev(tm_tier *t, tm_ioq *q, const tm_io *ios, int n)
{
    for (int i = 0; i < n; i++) {
        size_t len = ios[i].nblocks * t->bs, done = 0;
        off_t off = (off_t)(ios[i].slot * t->bs);
        while (done < len) {
            ssize_t r = pwrite(t->fd, (char *)ios[i].buf + done, len - done, off + (off_t)done);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0)
                return r < 0 ? -errno : -EIO;
            done += (size_t)r;
        }
    }
    return 0;
}

/* Zeroed, not punched: a hole would unreserve the space a later store needs. */
static void dax_discard(tm_tier *t, uint64_t slot, uint64_t n)
{
    memset(t->map + slot * t->bs, 0, n * t->bs);
}

static void file_discard(tm_tier *t, uint64_t slot, uint64_t n)
{
    tm_os_punch(t->fd, slot * t->bs, n * t->bs);
}

static void pmem_close(tm_tier *t)
{
    tm_os_unmap(t->map, t->nslots * t->bs);
    if (t->fd >= 0)
        close(t->fd);
    t->map = NULL;
    t->fd = -1;
}

static const tm_tier_ops dax_ops = {map_readv, dax_writev, NULL, NULL, dax_discard, pmem_close};
static const tm_tier_ops file_ops = {map_readv, file_writev, NULL, NULL, file_discard, pmem_close};

/* Allocate the whole DAX file and map it with MAP_SYNC. */
static int map_dax(tm_tier *t, int fd, size_t size, const char *dir, char *err)
{
    if (fallocate(fd, 0, 0, (off_t)size) < 0) {
        int e = errno;
        snprintf(err, TM_ERRLEN, "pmem_path %s: cannot allocate the PMEM file (%zu bytes): %s", dir, size, strerror(e));
        return -e;
    }
    /* MAP_SYNC keeps stores durable without fsync on real PMEM. */
    void *m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED_VALIDATE | MAP_SYNC, fd, 0);
    if (m == MAP_FAILED) /* not every DAX filesystem has MAP_SYNC */
        m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) {
        int e = errno;
        snprintf(err, TM_ERRLEN, "pmem_path %s: cannot map the PMEM file: %s", dir, strerror(e));
        return -e;
    }
    t->map = m;
    return 0;
}

int tm_tier_pmem_open(tm_tier *t, const char *dir, char *err)
{
    char buf[4096];
    if (!dir)
        dir = tm_os_find_dax_mount(buf, sizeof buf);
    if (!dir) { /* emulated: a private directory in /dev/shm */
        snprintf(buf, sizeof buf, "/dev/shm/tieredmem-%u", (unsigned)geteuid());
        int r = tm_os_private_dir(buf);
        if (r < 0) {
            snprintf(err, TM_ERRLEN, "pmem_path %s: %s", buf,
                     r == -EPERM ? "exists but is not a directory private to this user (mode 0700, owned by you)"
                                 : strerror(-r));
            return r;
        }
        dir = buf;
    }
    size_t size = t->nslots * t->bs;
    int fd = tm_os_tmpfile(dir, 0);
    if (fd < 0) {
        snprintf(err, TM_ERRLEN, "pmem_path %s: cannot create the PMEM file: %s", dir, strerror(-fd));
        return fd;
    }
    if (ftruncate(fd, (off_t)size) < 0) {
        int e = errno;
        close(fd);
        snprintf(err, TM_ERRLEN, "pmem_path %s: cannot size the PMEM file: %s", dir, strerror(e));
        return -e;
    }
    t->dax = tm_os_is_dax(dir);
    int r = 0;
    if (t->dax) {
        r = map_dax(t, fd, size, dir, err);
    } else {
        void *m = mmap(NULL, size, PROT_READ, MAP_SHARED | MAP_NORESERVE, fd, 0);
        if (m == MAP_FAILED) {
            r = -errno;
            snprintf(err, TM_ERRLEN, "pmem_path %s: cannot map the PMEM file: %s", dir, strerror(errno));
        } else {
            t->map = m;
        }
    }
    if (r < 0) {
        close(fd);
        return r;
    }
    t->fd = fd;
    t->ops = t->dax ? &dax_ops : &file_ops;
    t->name = "pmem";
    return 0;
}
