/* pool.h — the one worker pool behind every fan-out (the writer, the
 * tensor check, the forward pass's matrix products, the hub transfers).
 *
 * Threads are started once and reused for every run, so a forward pass
 * that runs thousands of small matrix products does not start thousands
 * of threads.  The calling thread works too (it is worker 0).  Items are
 * handed out one at a time from a shared counter, so a slow item does not
 * hold up the rest; the first error wins and stops the others; fl_interrupted
 * is checked before each item.  A pool runs one job at a time: fl_pool_run
 * is not reentrant, and must not be called from inside an item. */
#ifndef FLASHIFY_POOL_H
#define FLASHIFY_POOL_H

#include <stddef.h>

#include "flashify/error.h"

typedef struct fl_pool fl_pool;

/* Processes item number `item` (0 .. n_items-1) on worker `worker`
 * (0 .. fl_pool_size-1, stable for the duration of the call, so per-worker
 * scratch can be indexed by it).  A non-FL_OK return, with err filled,
 * stops the run. */
typedef fl_status (*fl_pool_fn)(void *ctx, size_t item, int worker, fl_error *err);

/* Online CPUs, at least 1. */
int fl_cpu_count(void);

/* A pool of `threads` workers including the caller (<= 0: one per online
 * CPU; capped at FL_POOL_MAX).  When threads cannot be started the pool is
 * smaller, down to the caller alone; NULL only when out of memory. */
#define FL_POOL_MAX 256
fl_pool *fl_pool_new(int threads);
int fl_pool_size(const fl_pool *p);
void fl_pool_free(fl_pool *p);

/* Runs fn over n_items items and returns when every worker is done:
 * FL_OK, the first failing item's status (its message in err), or FL_EINTR
 * when fl_interrupted was set. */
fl_status fl_pool_run(fl_pool *p, size_t n_items, fl_pool_fn fn, void *ctx, fl_error *err);

/* A pool for one run: fl_pool_new(min(threads, n_items)), run, free. */
fl_status fl_pool_run_once(int threads, size_t n_items, fl_pool_fn fn, void *ctx,
                           fl_error *err);

#endif
