/* handler.c: the handler threads, one pinned per CPU, so the faulting
 * thread's own CPU always has one to wake (a wake-up on the other vCPU costs
 * ~35 us on these VMs). Each reads userfaultfd messages and hands them to
 * dispatch.c under the pool lock; when idle, one maps the readahead runs
 * marked async and populates the zero fills' huge pages (fill_fd). */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include "internal.h"

static void serve(tm_worker *w, const struct uffd_msg *msg)
{
    struct tm_pool *p = w->pool;
    if (msg->event != UFFD_EVENT_PAGEFAULT)
        return;
    uint64_t fl = msg->arg.pagefault.flags;
    tm_lock(p);
    uint64_t t0 = tm_os_now_ns();
    tm_dispatch_fault(w, msg->arg.pagefault.address, (fl & UFFD_PAGEFAULT_FLAG_WP) ? TM_ACCESS_WP : TM_ACCESS_MISSING,
                     (fl & UFFD_PAGEFAULT_FLAG_WRITE) != 0);
    p->st.fault_ns += tm_os_now_ns() - t0;
    tm_unlock(p);
}

static void *handler_main(void *arg)
{
    tm_worker *w = arg;
    struct tm_pool *p = w->pool;
    tm_engine_depth = 1; /* for its whole life: it serves pool memory, so it must never be given any */
    tm_os_pin_self(w->cpu);
    struct pollfd fds[3] = {{p->uffd, POLLIN, 0}, {p->stop_fd, POLLIN, 0}, {p->fill_fd, POLLIN, 0}};
    struct uffd_msg msg;
    for (;;) {
        if (poll(fds, 3, -1) < 0 && errno != EINTR)
            break;
        if (fds[1].revents)
            break;
        uint64_t kicks;
        if (fds[2].revents && read(p->fill_fd, &kicks, sizeof kicks) == (ssize_t)sizeof kicks) {
            tm_lock(p); /* the one that read the count maps; the others find it taken */
            tm_readahead_fill(w);
            tm_hugezero_refill(p);
            tm_unlock(p);
        }
        if (!fds[0].revents)
            continue;
        /* Every handler wakes; the one on the faulting CPU usually wins and
         * the others find nothing to read. One message at a time: a fault
         * may wait for I/O, and a fault read along with it would wait too
         * while another handler could serve it. */
        ssize_t r = read(p->uffd, &msg, sizeof msg);
        if (r < 0) {
            if (errno == EAGAIN || errno == EINTR)
                continue;
            break;
        }
        if (r == (ssize_t)sizeof msg)
            serve(w, &msg);
    }
    return NULL;
}

int tm_handler_start(struct tm_pool *p)
{
    int cpus[TM_MAX_HANDLERS];
    int n = tm_os_cpus(cpus, TM_MAX_HANDLERS);
    if (n <= 0) {
        cpus[0] = 0;
        n = 1;
    }
    p->stop_fd = tm_os_eventfd(0);
    p->fill_fd = tm_os_eventfd(1);
    if (p->stop_fd < 0 || p->fill_fd < 0)
        return p->stop_fd < 0 ? p->stop_fd : p->fill_fd;
    /* Handler threads take no signals: those belong to the application. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int err = 0;
    for (int i = 0; i < n; i++) {
        tm_worker *w = &p->workers[i];
        w->cpu = cpus[i];
        if ((err = tm_worker_init(p, w, 1)) < 0)
            break;
        if ((err = -pthread_create(&w->thread, NULL, handler_main, w)) < 0)
            break;
        p->nworkers++;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    p->st.handler_threads = p->nworkers;
    return err;
}

void tm_handler_stop(struct tm_pool *p)
{
    if (p->stop_fd >= 0)
        tm_os_kick(p->stop_fd);
    for (int i = 0; i < p->nworkers; i++)
        pthread_join(p->workers[i].thread, NULL);
    for (int i = 0; i < TM_MAX_HANDLERS; i++)
        tm_worker_fini(&p->workers[i]);
    p->nworkers = 0;
    if (p->stop_fd >= 0)
        close(p->stop_fd);
    if (p->fill_fd >= 0)
        close(p->fill_fd);
    p->stop_fd = p->fill_fd = -1;
}
