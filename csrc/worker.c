/* worker.c: what a thread needs to move blocks: its I/O buffer (huge
 * pages, so that a run of adjacent slots is one request), its block lists
 * and its I/O queue. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>

#include "internal.h"

int tm_worker_init(struct tm_pool *p, tm_worker *w, int populate)
{
    w->pool = p;
    w->iobuf = tm_os_io_buffer((size_t)p->batch_max << p->bshift, populate);
    w->list = calloc((size_t)p->batch_max * 3, sizeof(int64_t));
    w->ioq = tm_ioq_create(); /* NULL: synchronous requests */
    return w->iobuf && w->list ? 0 : -ENOMEM;
}

void tm_worker_fini(tm_worker *w)
{
    if (w->iobuf)
        tm_os_unmap(w->iobuf, (size_t)w->pool->batch_max << w->pool->bshift);
    free(w->list);
    tm_ioq_destroy(w->ioq);
    w->iobuf = NULL;
    w->list = NULL;
    w->ioq = NULL;
}
