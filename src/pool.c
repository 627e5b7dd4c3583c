/* pool.c — the worker pool (see pool.h).
 *
 * Workers sleep on `wake` until the job generation changes, then pull
 * items from `next` until the counter runs past n_items or the run is
 * stopped; the last one to finish signals `idle`.  Everything a run shares
 * is under `mu` except the item counter and the stop flag, which are
 * atomics so pulling an item costs no lock. */
#include "flashify/pool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    fl_pool *pool;
    int index;
} worker_arg;

struct fl_pool {
    int size;                 /* workers including the caller */
    pthread_t tid[FL_POOL_MAX];
    worker_arg args[FL_POOL_MAX];
    pthread_mutex_t mu;
    pthread_cond_t wake, idle;
    unsigned long generation; /* bumped for every run (and for shutdown) */
    int quit;
    int busy;                 /* started threads still working on this run */
    /* the current run */
    fl_pool_fn fn;
    void *ctx;
    size_t n_items;
    atomic_size_t next;
    atomic_int stop;
    fl_status status;         /* first failure */
    fl_error err;
};

int fl_cpu_count(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > FL_POOL_MAX ? FL_POOL_MAX : (int)n;
}

/* Pulls and runs items until none are left or the run stops. */
static void work(fl_pool *p, int worker)
{
    fl_error e;
    for (;;) {
        if (atomic_load(&p->stop))
            return;
        size_t i = atomic_fetch_add(&p->next, 1);
        if (i >= p->n_items)
            return;
        fl_status s;
        memset(&e, 0, sizeof e);
        if (fl_interrupted)
            s = fl_fail(&e, FL_EINTR, "interrupted");
        else
            s = p->fn(p->ctx, i, worker, &e);
        if (s != FL_OK) {
            pthread_mutex_lock(&p->mu);
            if (p->status == FL_OK) {
                p->status = s;
                p->err = e;
                p->err.code = s;
            }
            pthread_mutex_unlock(&p->mu);
            atomic_store(&p->stop, 1);
            return;
        }
    }
}

static void *worker_main(void *arg)
{
    worker_arg *a = arg;
    fl_pool *p = a->pool;
    unsigned long seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->quit && p->generation == seen)
            pthread_cond_wait(&p->wake, &p->mu);
        if (p->quit)
            break;
        seen = p->generation;
        pthread_mutex_unlock(&p->mu);
        work(p, a->index);
        pthread_mutex_lock(&p->mu);
        if (--p->busy == 0)
            pthread_cond_signal(&p->idle);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

fl_pool *fl_pool_new(int threads)
{
    fl_pool *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    if (threads <= 0)
        threads = fl_cpu_count();
    if (threads > FL_POOL_MAX)
        threads = FL_POOL_MAX;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->idle, NULL);
    atomic_init(&p->next, 0);
    atomic_init(&p->stop, 0);
    p->size = 1;
    for (int i = 1; i < threads; i++) {
        p->args[p->size] = (worker_arg){p, p->size};
        if (pthread_create(&p->tid[p->size], NULL, worker_main, &p->args[p->size]) != 0)
            break;   /* fewer threads: the work still gets done */
        p->size++;
    }
    return p;
}

int fl_pool_size(const fl_pool *p) { return p->size; }

void fl_pool_free(fl_pool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->quit = 1;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->size; i++)
        pthread_join(p->tid[i], NULL);
    pthread_cond_destroy(&p->idle);
    pthread_cond_destroy(&p->wake);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

fl_status fl_pool_run(fl_pool *p, size_t n_items, fl_pool_fn fn, void *ctx, fl_error *err)
{
    if (fl_interrupted)
        return fl_fail(err, FL_EINTR, "interrupted");
    if (n_items == 0)
        return FL_OK;
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->ctx = ctx;
    p->n_items = n_items;
    atomic_store(&p->next, 0);
    atomic_store(&p->stop, 0);
    p->status = FL_OK;
    memset(&p->err, 0, sizeof p->err);
    /* One item needs no helpers: wake no one. */
    int helpers = n_items > 1 ? p->size - 1 : 0;
    if (helpers) {
        p->busy = p->size - 1;
        p->generation++;
        pthread_cond_broadcast(&p->wake);
    }
    pthread_mutex_unlock(&p->mu);
    work(p, 0);
    pthread_mutex_lock(&p->mu);
    while (helpers && p->busy > 0)
        pthread_cond_wait(&p->idle, &p->mu);
    fl_status s = p->status;
    if (s != FL_OK && err)
        *err = p->err;
    pthread_mutex_unlock(&p->mu);
    return s;
}

fl_status fl_pool_run_once(int threads, size_t n_items, fl_pool_fn fn, void *ctx,
                           fl_error *err)
{
    if (threads <= 0)
        threads = fl_cpu_count();
    if ((size_t)threads > n_items)
        threads = n_items ? (int)n_items : 1;
    fl_pool *p = fl_pool_new(threads);
    if (!p)
        return fl_fail(err, FL_EIO, "out of memory");
    fl_status s = fl_pool_run(p, n_items, fn, ctx, err);
    fl_pool_free(p);
    return s;
}
