/* numpy_handler.c: NumPy's NEP 49 memory handler backed by pools.
 *
 * Allocations of at least a threshold go to a pool; smaller ones, and all of
 * them once the pool is detached (closed), go to the C library, 64-byte
 * aligned. free() and realloc() recognise pool memory by address
 * (tm_pool_of), so any handler frees any pointer correctly: that is what lets
 * install() repoint numpy's default handler for every thread, whose arrays
 * made earlier come from the C library.
 *
 * Handlers are never freed: numpy arrays keep their handler's capsule and call
 * it at free time, whenever that is. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_2_0_API_VERSION
#define PY_ARRAY_UNIQUE_SYMBOL tieredmem_ARRAY_API
#include <numpy/arrayobject.h>

#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tieredmem.h"

#define ALIGN 64

struct tm_np_handler {
    PyDataMem_Handler h;  /* first: the capsule points at it */
    tm_pool *pool;        /* NULL: detached, everything goes to the C library */
    size_t threshold;
    int64_t live;         /* pool allocations made through this handler */
    PyObject *capsule;
};

/* Guards every handler's pool pointer against detaching while an allocation
 * from it is under way; taken only on the pool path. */
static pthread_mutex_t np_lock = PTHREAD_MUTEX_INITIALIZER;

/* The handler that install() puts behind numpy's default capsule, and what
 * that capsule held before. */
static tm_np_handler global;
static void *numpy_default;
static int repointed, installed;

static void *small_alloc(size_t size)
{
    void *p = NULL;
    return posix_memalign(&p, ALIGN, size ? size : 1) == 0 ? p : NULL;
}

/* Directories whose frames are not origins (tm_np_origin_skip): the
 * libraries', so that an origin is a line of the program. Appended under
 * np_lock, read without it: an entry is written before the count that
 * shows it. */
#define ORIGIN_SKIPS 16
static char *origin_skip[ORIGIN_SKIPS];
static int norigin_skip;

int tm_np_origin_skip(const char *prefix)
{
    int r = 0;
    pthread_mutex_lock(&np_lock);
    int n = norigin_skip, known = 0;
    for (int i = 0; i < n && !known; i++)
        known = strcmp(origin_skip[i], prefix) == 0;
    if (!known) {
        if (n == ORIGIN_SKIPS || !(origin_skip[n] = strdup(prefix)))
            r = -ENOMEM;
        else
            __atomic_store_n(&norigin_skip, n + 1, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&np_lock);
    return r;
}

static int origin_skipped(const char *file)
{
    int n = __atomic_load_n(&norigin_skip, __ATOMIC_ACQUIRE);
    for (int i = 0; i < n; i++)
        if (strncmp(file, origin_skip[i], strlen(origin_skip[i])) == 0)
            return 1;
    return 0;
}

/* Record where the program allocated ptr in p: the innermost Python frame
 * outside the skipped directories, else the innermost. Only with the GIL
 * (numpy may allocate in a thread that released it: then nothing is
 * recorded), and without np_lock: walking frames may run the garbage
 * collector, which frees arrays through h_free. */
static void record_origin(tm_pool *p, void *ptr)
{
    if (!PyGILState_Check())
        return;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    char origin[2 * TM_PUB_ORIGIN] = "";
    PyFrameObject *f = PyEval_GetFrame();
    Py_XINCREF(f);
    while (f) {
        PyCodeObject *code = PyFrame_GetCode(f);
        const char *file = PyUnicode_AsUTF8(code->co_filename);
        int outside = file && !origin_skipped(file);
        if (file && (outside || !origin[0]))
            snprintf(origin, sizeof origin, "%s:%d", file, PyFrame_GetLineNumber(f));
        Py_DECREF(code);
        PyFrameObject *back = outside ? NULL : PyFrame_GetBack(f);
        Py_DECREF(f);
        f = back;
    }
    PyErr_Clear();
    PyErr_Restore(type, value, tb);
    if (origin[0])
        tm_set_origin(p, ptr, origin);
}

/* Pool memory for size bytes, NULL with errno ENOMEM (pool full) or EBADF
 * (no pool: detached, or closed). */
static void *pool_alloc(tm_np_handler *h, size_t size)
{
    pthread_mutex_lock(&np_lock);
    void *r = NULL;
    tm_pool *p = h->pool;
    errno = EBADF;
    if (p && (r = tm_alloc(p, size)))
        h->live++;
    pthread_mutex_unlock(&np_lock);
    uint64_t min = r ? tm_origin_min(p) : 0; /* p lives: r is one of its allocations */
    if (min && size >= min)
        record_origin(p, r);
    return r;
}

static void *h_malloc(void *ctx, size_t size)
{
    tm_np_handler *h = ctx;
    if (size >= h->threshold) {
        void *r = pool_alloc(h, size);
        if (r || errno == ENOMEM) /* a full pool is a MemoryError, not a fallback */
            return r;
    }
    return small_alloc(size);
}

static void *h_calloc(void *ctx, size_t n, size_t elsize)
{
    tm_np_handler *h = ctx;
    size_t size;
    if (__builtin_mul_overflow(n, elsize, &size))
        return NULL;
    if (size >= h->threshold) {
        void *r = pool_alloc(h, size); /* pool memory reads as zero */
        if (r || errno == ENOMEM)
            return r;
    }
    void *r = small_alloc(size);
    if (r)
        memset(r, 0, size);
    return r;
}

static void restore_default_if_idle(void);

static void h_free(void *ctx, void *ptr, size_t size)
{
    tm_np_handler *h = ctx;
    tm_pool *p = tm_pool_of(ptr);
    if (!p) {
        free(ptr);
        return;
    }
    tm_free(p, ptr);
    pthread_mutex_lock(&np_lock);
    h->live--;
    pthread_mutex_unlock(&np_lock);
    if (h == &global)
        restore_default_if_idle();
}

static void *h_realloc(void *ctx, void *ptr, size_t size)
{
    tm_np_handler *h = ctx;
    if (!ptr)
        return h_malloc(ctx, size);
    tm_pool *p = tm_pool_of(ptr);
    size_t old = p ? tm_alloc_size(p, ptr) : malloc_usable_size(ptr);
    if (p && size <= old && size >= h->threshold)
        return ptr; /* still fits its blocks */
    if (p || (size >= h->threshold && h->pool)) {
        /* Move between the pool and the C library, or grow in the pool. */
        void *q = h_malloc(ctx, size);
        if (!q)
            return NULL;
        memcpy(q, ptr, old < size ? old : size);
        h_free(ctx, ptr, old);
        return q;
    }
    void *q = realloc(ptr, size ? size : 1);
    if (q && ((uintptr_t)q & (ALIGN - 1))) { /* realloc only promises 16 bytes */
        void *a = small_alloc(size);
        if (!a) {
            free(q);
            return NULL;
        }
        memcpy(a, q, size);
        free(q);
        q = a;
    }
    return q;
}

static void handler_init(tm_np_handler *h, tm_pool *p, size_t threshold)
{
    snprintf(h->h.name, sizeof h->h.name, "tieredmem");
    h->h.version = 1;
    h->h.allocator = (PyDataMemAllocator){h, h_malloc, h_calloc, h_realloc, h_free};
    h->pool = p;
    h->threshold = threshold;
}

int tm_np_init(void)
{
    PyGILState_STATE g = PyGILState_Ensure();
    int r = PyArray_ImportNumPyAPI();
    if (r < 0)
        PyErr_Print();
    PyGILState_Release(g);
    return r;
}

tm_np_handler *tm_np_handler_new(tm_pool *p, size_t threshold)
{
    tm_np_handler *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    handler_init(h, p, threshold);
    PyGILState_STATE g = PyGILState_Ensure();
    h->capsule = PyCapsule_New(&h->h, "mem_handler", NULL);
    PyGILState_Release(g);
    if (!h->capsule) {
        free(h);
        return NULL;
    }
    return h;
}

void tm_np_detach(tm_np_handler *h)
{
    pthread_mutex_lock(&np_lock);
    h->pool = NULL;
    pthread_mutex_unlock(&np_lock);
}

void tm_np_detach_pool(tm_pool *p)
{
    pthread_mutex_lock(&np_lock);
    if (global.pool == p)
        global.pool = NULL;
    pthread_mutex_unlock(&np_lock);
}

void *tm_np_set_context(tm_np_handler *h)
{
    PyGILState_STATE g = PyGILState_Ensure();
    PyObject *old = PyDataMem_SetHandler(h ? h->capsule : NULL);
    PyGILState_Release(g);
    return old;
}

void tm_np_restore_context(void *token)
{
    PyGILState_STATE g = PyGILState_Ensure();
    PyObject *cur = PyDataMem_SetHandler((PyObject *)token);
    Py_XDECREF(cur);
    Py_XDECREF((PyObject *)token);
    PyGILState_Release(g);
}

int tm_np_install(tm_pool *p, size_t threshold)
{
    PyGILState_STATE g = PyGILState_Ensure();
    int r = 0;
    pthread_mutex_lock(&np_lock);
    if (!global.h.version)
        handler_init(&global, NULL, threshold);
    global.pool = p;
    global.threshold = threshold;
    installed = 1;
    pthread_mutex_unlock(&np_lock);
    if (!repointed) {
        numpy_default = PyCapsule_GetPointer(PyDataMem_DefaultHandler, "mem_handler");
        if (!numpy_default || PyCapsule_SetPointer(PyDataMem_DefaultHandler, &global.h) < 0) {
            PyErr_Print();
            r = -1;
        } else {
            repointed = 1;
        }
    }
    PyGILState_Release(g);
    return r;
}

/* Give numpy its own default handler back once no array allocated through
 * ours lives in a pool; until then ours stays, passing new allocations to the
 * C library. Needs the GIL (numpy frees arrays holding it). */
static void restore_default_if_idle(void)
{
    pthread_mutex_lock(&np_lock);
    int restore = repointed && !installed && global.live == 0;
    if (restore)
        repointed = 0;
    pthread_mutex_unlock(&np_lock);
    if (restore)
        PyCapsule_SetPointer(PyDataMem_DefaultHandler, numpy_default);
}

void tm_np_uninstall(void)
{
    PyGILState_STATE g = PyGILState_Ensure();
    pthread_mutex_lock(&np_lock);
    global.pool = NULL;
    installed = 0;
    pthread_mutex_unlock(&np_lock);
    restore_default_if_idle();
    PyGILState_Release(g);
}

tm_pool *tm_np_installed_pool(void)
{
    pthread_mutex_lock(&np_lock);
    tm_pool *p = installed ? global.pool : NULL;
    pthread_mutex_unlock(&np_lock);
    return p;
}
