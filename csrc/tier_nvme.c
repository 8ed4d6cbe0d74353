/* tier_nvme.c: the NVMe tier. A slot file in a directory on a fast disk,
 * unlinked while open. With O_DIRECT the requests of a batch are submitted
 * together through Linux native AIO, so several are in flight and none
 * passes through the page cache; where the filesystem refuses O_DIRECT
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

#define NVME_QUEUE 64  /* requests in flight at most */

typedef struct nvme_impl {
    aio_context_t ctx;
    aio_context_t ra_ctx;   /* readahead: its own context, so a batch waited
                             * for on ctx never reaps a readahead's events */
    int ra_pending;         /* requests in flight on ra_ctx */
    struct iocb ra_cbs[NVME_QUEUE];
    struct iocb *ra_ptrs[NVME_QUEUE];
    struct io_event ra_events[NVME_QUEUE];
    struct iocb cbs[NVME_QUEUE];
    struct iocb *ptrs[NVME_QUEUE];
    struct io_event events[NVME_QUEUE];
} nvme_impl;

static void fill_iocbs(tm_tier *t, struct iocb *cbs, struct iocb **ptrs, const tm_io *ios, int n, int opcode);

/* Submit up to NVME_QUEUE requests and wait for all of them. */
static int aio_batch(tm_tier *t, const tm_io *ios, int n, int opcode)
{
    nvme_impl *im = t->impl;
    fill_iocbs(t, im->cbs, im->ptrs, ios, n, opcode);
    int submitted = 0;
    while (submitted < n) {
        long r = syscall(SYS_io_submit, im->ctx, (long)(n - submitted), im->ptrs + submitted);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            int e = r < 0 ? errno : EIO;
            /* Reap what was submitted before failing, so buffers are free. */
            for (int done = 0; done < submitted;) {
                long g = syscall(SYS_io_getevents, im->ctx, 1L, (long)(submitted - done), im->events, NULL);
                if (g > 0)
                    done += (int)g;
                else if (errno != EINTR)
                    break;
            }
            return -e;
        }
        submitted += (int)r;
    }
    int err = 0;
    for (int done = 0; done < n;) {
        long g = syscall(SYS_io_getevents, im->ctx, 1L, (long)(n - done), im->events, NULL);
        if (g < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        for (long k = 0; k < g; k++) {
            const struct io_event *ev = &im->events[k];
            int64_t want = (int64_t)ev->data;
            if (!err && ev->res < 0)
                err = (int)ev->res;
            else if (!err && ev->res != want)
                err = -EIO; /* short transfer */
        }
        done += (int)g;
    }
    return err;
}

static int direct_io(tm_tier *t, const tm_io *ios, int n, int opcode)
{
    for (int i = 0; i < n; i += NVME_QUEUE) {
        int r = aio_batch(t, ios + i, n - i < NVME_QUEUE ? n - i : NVME_QUEUE, opcode);
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

static void fill_iocbs(tm_tier *t, struct iocb *cbs, struct iocb **ptrs, const tm_io *ios, int n, int opcode)
{
    for (int i = 0; i < n; i++) {
        struct iocb *cb = &cbs[i];
        memset(cb, 0, sizeof *cb);
        cb->aio_fildes = (uint32_t)t->fd;
        cb->aio_lio_opcode = (uint16_t)opcode;
        cb->aio_buf = (uint64_t)(uintptr_t)ios[i].buf;
        cb->aio_nbytes = ios[i].nblocks * t->bs;
        cb->aio_offset = (int64_t)(ios[i].slot * t->bs);
        cb->aio_data = (uint64_t)ios[i].nblocks * t->bs; /* expected length */
        ptrs[i] = cb;
    }
}

static int nvme_wait_reads(tm_tier *t)
{
    nvme_impl *im = t->impl;
    int err = 0;
    while (im->ra_pending > 0) {
        long g = syscall(SYS_io_getevents, im->ra_ctx, 1L, (long)im->ra_pending, im->ra_events, NULL);
        if (g < 0) {
            if (errno == EINTR)
                continue;
            im->ra_pending = 0; /* the context is unusable; nothing more will come */
            return -errno;
        }
        for (long k = 0; k < g; k++)
            if (!err && im->ra_events[k].res != (int64_t)im->ra_events[k].data)
                err = im->ra_events[k].res < 0 ? (int)im->ra_events[k].res : -EIO;
        im->ra_pending -= (int)g;
    }
    return err;
}

static int nvme_submit_readv(tm_tier *t, const tm_io *ios, int n)
{
    nvme_impl *im = t->impl;
    if (n > NVME_QUEUE || im->ra_pending)
        return -EBUSY;
    fill_iocbs(t, im->ra_cbs, im->ra_ptrs, ios, n, IOCB_CMD_PREAD);
    for (int done = 0; done < n;) {
        long r = syscall(SYS_io_submit, im->ra_ctx, (long)(n - done), im->ra_ptrs + done);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            int e = r < 0 ? errno : EIO;
            nvme_wait_reads(t);
            return -e;
        }
        done += (int)r;
        im->ra_pending += (int)r;
    }
    return 0;
}

static int nvme_readv(tm_tier *t, const tm_io *ios, int n)
{
    return t->direct ? direct_io(t, ios, n, IOCB_CMD_PREAD) : buffered_io(t, ios, n, 0);
}

static int nvme_writev(tm_tier *t, const tm_io *ios, int n)
{
    return t->direct ? direct_io(t, ios, n, IOCB_CMD_PWRITE) : buffered_io(t, ios, n, 1);
}

static void nvme_discard(tm_tier *t, uint64_t slot, uint64_t n)
{
    tm_os_punch(t->fd, slot * t->bs, n * t->bs);
}

static void nvme_close(tm_tier *t)
{
    nvme_impl *im = t->impl;
    if (im) {
        nvme_wait_reads(t);
        if (im->ra_ctx)
            syscall(SYS_io_destroy, im->ra_ctx);
        if (im->ctx)
            syscall(SYS_io_destroy, im->ctx);
        free(im);
    }
    if (t->fd >= 0)
        close(t->fd);
    t->impl = NULL;
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
    nvme_impl *im = calloc(1, sizeof *im);
    if (!im) {
        close(fd);
        return -ENOMEM;
    }
    t->fd = fd;
    t->impl = im;
    t->ops = &nvme_ops;
    t->name = "nvme";
    if (t->direct && (syscall(SYS_io_setup, NVME_QUEUE, &im->ctx) < 0 ||
                      syscall(SYS_io_setup, NVME_QUEUE, &im->ra_ctx) < 0)) {
        /* No native AIO (aio-max-nr exhausted): fall back to buffered I/O. */
        if (im->ctx)
            syscall(SYS_io_destroy, im->ctx);
        im->ctx = im->ra_ctx = 0;
        int fl = fcntl(fd, F_GETFL);
        fcntl(fd, F_SETFL, fl & ~O_DIRECT);
        t->direct = 0;
    }
    if (t->direct)
        t->ops = &nvme_direct_ops;
    return 0;
}
