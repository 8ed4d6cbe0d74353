/* error.c: the pool's last error, and pool creation's (before a pool
 * exists), for tm_last_error. */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stdio.h>

#include "internal.h"

static __thread char create_err[TM_ERRLEN];

void tm_set_create_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(create_err, sizeof create_err, fmt, ap);
    va_end(ap);
}

void tm_set_error(struct tm_pool *p, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err, sizeof p->err, fmt, ap);
    va_end(ap);
}

const char *tm_last_error(tm_pool *p, char *buf, size_t len)
{
    if (!p) {
        snprintf(buf, len, "%s", create_err);
        return buf;
    }
    tm_lock(p);
    snprintf(buf, len, "%s", p->err);
    tm_unlock(p);
    return buf;
}
