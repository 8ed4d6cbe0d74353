/* tier_pmem.c: the persistent-memory tier. A file mapped shared; blocks are
 * copied in and out with memcpy. The file is on a DAX filesystem when the user
 * names one or one is mounted, else emulated in /dev/shm. */
#define _GNU_SOURCE
#include <errno.h>
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

static int pmem_readv(tm_tier *t, const tm_io *ios, int n)
{
    for (int i = 0; i < n; i++)
        memcpy(ios[i].buf, t->map + ios[i].slot * t->bs, ios[i].nblocks * t->bs);
    return 0;
}

static int pmem_writev(tm_tier *t, const tm_io *ios, int n)
{
    for (int i = 0; i < n; i++)
        memcpy(t->map + ios[i].slot * t->bs, ios[i].buf, ios[i].nblocks * t->bs);
    return 0;
}

static void pmem_discard(tm_tier *t, uint64_t slot, uint64_t n)
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

static const tm_tier_ops pmem_ops = {pmem_readv, pmem_writev, NULL, NULL, pmem_discard, pmem_close};

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
    void *m = MAP_FAILED;
    if (t->dax) /* MAP_SYNC keeps stores durable without fsync on real PMEM */
        m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED_VALIDATE | MAP_SYNC, fd, 0);
    if (m == MAP_FAILED)
        m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
    if (m == MAP_FAILED) {
        int e = errno;
        close(fd);
        snprintf(err, TM_ERRLEN, "pmem_path %s: cannot map the PMEM file: %s", dir, strerror(e));
        return -e;
    }
    t->fd = fd;
    t->map = m;
    t->ops = &pmem_ops;
    t->name = "pmem";
    return 0;
}
