/* tier_nvme.c: the NVMe tier. A slot file in a directory on a fast disk,
 * unlinked while open. With O_DIRECT the requests of a batch are submitted
 * together through Linux native AIO, on the calling thread's own queue, so
 * several are in flight and none passes through the page cache; where the filesystem refuses O_DIRECT
 * (tmpfs, some network filesystems) buffered pread/pwrite is used and the
 * written range is dropped from the page cache with posix_fadvise. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/aio_abi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

#define NVME_QUEUE 64  /* requests in flight at most, per queue */

/* One thread's requests in flight (Linux native AIO): every thread that does
 * NVMe I/O owns one, so that I/O can run outside the pool lock. */
struct tm_ioq {
    aio_context_t ctx;
    int pending;            /* submitted by tm_tier_submit_readv, not yet reaped */
    struct iocb cbs[NVME_QUEUE];
    struct iocb *ptrs[NVME_QUEUE];
    struct io_event events[NVME_QUEUE];
};

tm_ioq *tm_ioq_create(void)
{
    tm_ioq *q = calloc(1, sizeof *q);
    if (q && syscall(SYS_io_setup, NVME_QUEUE, &q->ctx) < 0) {
        free(q); /* no native AIO (aio-max-nr exhausted): synchronous I/O */
        q = NULL;
    }
    return q;
}

static int reap(tm_ioq *q, int n);

void tm_ioq_destroy(tm_ioq *q)
{
    if (!q)
        return;
    reap(q, q->pending);
    syscall(SYS_io_destroy, q->ctx);
    free(q);
}

static void fill_iocbs(tm_tier *t, tm_ioq *q, const tm_io *ios, int n, int opcode)
{
    for (int i = 0; i < n; i++) {
        struct iocb *cb = &q->cbs[i];
        memset(cb, 0, sizeof *cb);
        cb->aio_fildes = (uint32_t)t->fd;
        cb->aio_lio_opcode = (uint16_t)opcode;
        cb->aio_buf = (uint64_t)(uintptr_t)ios[i].buf;
        cb->aio_nbytes = ios[i].nblocks * t->bs;
        cb->aio_offset = (int64_t)(ios[i].slot * t->bs);
        cb->aio_data = (uint64_t)ios[i].nblocks * t->bs; /* expected length */
        q->ptrs[i] = cb;
    }
}

/* Wait for n requests of q; 0 or the -errno of the first that failed (a
 * short transfer is -EIO). */
static int reap(tm_ioq *q, int n)
{
    int err = 0;
    for (int done = 0; done < n;) {
        long g = syscall(SYS_io_getevents, q->ctx, 1L, (long)(n - done), q->events, NULL);
        if (g < 0) {
            if (errno == EINTR)
                continue;
            return -errno; /* the context is unusable; nothing more will come */
        }
        for (long k = 0; k < g; k++) {
            const struct io_event *ev = &q->events[k];
            if (!err && ev->res != (int64_t)ev->data)
                err = ev->res < 0 ? (int)ev->res : -EIO;
        }
        done += (int)g;
    }
    return err;
}

/* Submit up to NVME_QUEUE requests; on failure, reap what went in (so the
 * buffers are free) and return -errno. */
static int submit(tm_tier *t, tm_ioq *q, const tm_io *ios, int n, int opcode)
{
    fill_iocbs(t, q, ios, n, opcode);
    for (int done = 0; done < n;) {
        long r = syscall(SYS_io_submit, q->ctx, (long)(n - done), q->ptrs + done);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            int e = r < 0 ? errno : EIO;
            reap(q, done);
            return -e;
        }
        done += (int)r;
    }
    return 0;
}

static int buffered_io(tm_tier *t, const tm_io *ios, int n, int write);

static int direct_io(tm_tier *t, tm_ioq *q, const tm_io *ios, int n, int opcode)
{
    if (!q) /* no AIO context: the same requests one at a time */
        return buffered_io(t, ios, n, opcode == IOCB_CMD_PWRITE);
    for (int i = 0; i < n; i += NVME_QUEUE) {
        int k = n - i < NVME_QUEUE ? n - i : NVME_QUEUE;
        int r = submit(t, q, ios + i, k, opcode);
        if (r == 0)
            r = reap(q, k);
        if (r < 0)
            return r;
    }
    return 0;
}

static int buffered_io(tm_tier *t, const tm_io *ios, int n, int write)
{
    for (int i = 0; i < n; i++) {
        size_t len = ios[i].nblocks * t->bs, done = 0;
        off_t off = (off_t)(ios[i].slot * t->bs);
        while (done < len) {
            ssize_t r = write ? pwrite(t->fd, (char *)ios[i].buf + done, len - done, off + (off_t)done)
                              : pread(t->fd, (char *)ios[i].buf + done, len - done, off + (off_t)done);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0)
                return r < 0 ? -errno : -EIO;
            done += (size_t)r;
        }
        if (write) /* keep the page cache from holding what we moved out */
            posix_fadvise(t->fd, off, (off_t)len, POSIX_FADV_DONTNEED);
    }
    return 0;
}

static int nvme_wait_reads(tm_tier *t, tm_ioq *q)
{
    int n = q->pending;
    q->pending = 0;
    return reap(q, n);
}

static int nvme_submit_readv(tm_tier *t, tm_ioq *q, const tm_io *ios, int n)
{
    if (!q || n > NVME_QUEUE || q->pending)
        return -EBUSY;
    int r = submit(t, q, ios, n, IOCB_CMD_PREAD);
    if (r == 0)
        q->pending = n;
    return r;
}

static int nvme_readv(tm_tier *t, tm_ioq *q, const tm_io *ios, int n)
{
    return t->direct ? direct_io(t, q, ios, n, IOCB_CMD_PREAD) : buffered_io(t, ios, n, 0);
}

static int nvme_writev(tm_tier *t, tm_ioq *q, const tm_io *ios, int n)
{
    return t->direct ? direct_io(t, q, ios, n, IOCB_CMD_PWRITE) : buffered_io(t, ios, n, 1);
}

static void nvme_discard(tm_tier *t, uint64_t slot, uint64_t n)
{
    tm_os_punch(t->fd, slot * t->bs, n * t->bs);
}

static void nvme_close(tm_tier *t)
{
    if (t->fd >= 0)
        close(t->fd);
    t->fd = -1;
}

static const tm_tier_ops nvme_ops = {nvme_readv, nvme_writev, NULL, NULL, nvme_discard, nvme_close};
static const tm_tier_ops nvme_direct_ops = {nvme_readv, nvme_writev, nvme_submit_readv, nvme_wait_reads,
                                            nvme_discard, nvme_close};

int tm_tier_nvme_open(tm_tier *t, const char *dir, char *err)
{
    int fd = tm_os_tmpfile(dir, O_DIRECT);
    t->direct = fd >= 0;
    if (fd == -EINVAL)
        fd = tm_os_tmpfile(dir, 0);
    if (fd < 0) {
        snprintf(err, TM_ERRLEN, "nvme_path %s: cannot create the NVMe slot file: %s", dir, strerror(-fd));
        return fd;
    }
    if (ftruncate(fd, (off_t)(t->nslots * t->bs)) < 0) {
        int e = errno;
        close(fd);
        snprintf(err, TM_ERRLEN, "nvme_path %s: cannot size the NVMe slot file: %s", dir, strerror(e));
        return -e;
    }
    t->fd = fd;
    t->ops = &nvme_ops;
    t->name = "nvme";
    if (t->direct)
        t->ops = &nvme_direct_ops;
    return 0;
}
