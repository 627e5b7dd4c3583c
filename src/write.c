/* write.c — writing the FlashNorm checkpoint (see write.h).
 *
 * convert_write follows the README's "What the output contains": the
 * shards, the index, config.json, the model card, the other files, each
 * written into the output transaction (txn.c), whose files layout.c
 * planned.  Everything that can be refused is refused before the first
 * shard byte (prepare). */
#include "flashify/write.h"
#include "flashify/card.h"
#include "flashify/config_edit.h"
#include "flashify/dtype.h"
#include "flashify/fold.h"
#include "flashify/hash.h"
#include "flashify/layout.h"
#include "flashify/pool.h"
#include "flashify/txn.h"
#include "flashify/util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Fold buffers, shared by the threads; with the fixed ~9 MiB of the
 * process (libc, libcurl, OpenSSL, the plan) peak RSS stays under 64 MiB. */
#define DEFAULT_MEMORY (48ull << 20)
#define SOURCE_CARD_MAX (1u << 20)

static fl_status write_all(int fd, const void *buf, size_t n, uint64_t off, const char *path,
                           fl_error *err)
{
    if (fl_pwrite_full(fd, buf, n, off) != 0)
        return fl_fail(err, FL_EIO, "%s: write failed: %s", path, strerror(errno));
    return FL_OK;
}

void convert_digests_free(convert_digests *d)
{
    for (size_t i = 0; d && i < d->n; i++)
        free(d->v[i].path);
    if (d)
        free(d->v);
    if (d)
        memset(d, 0, sizeof *d);
}

/* Records the sha256 (hex) of output file `rel` (opt->digests). */
static fl_status digest_add_hex(const convert_options *opt, const char *rel, uint64_t size,
                                const char *hex, fl_error *err)
{
    convert_digests *d = opt->digests;
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 16;
        convert_digest *v = realloc(d->v, cap * sizeof *v);
        if (!v)
            return fl_fail(err, FL_EIO, "out of memory");
        d->v = v;
        d->cap = cap;
    }
    convert_digest *e = &d->v[d->n];
    if (!(e->path = fl_strdup(rel)))
        return fl_fail(err, FL_EIO, "out of memory");
    e->size = size;
    snprintf(e->sha256, sizeof e->sha256, "%s", hex);
    d->n++;
    return FL_OK;
}

static fl_status digest_add(const convert_options *opt, const char *rel, uint64_t size,
                            const fl_digest *dg, fl_error *err)
{
    char hex[65];
    if (!fl_digest_hex(dg, hex, sizeof hex))
        return fl_fail(err, FL_EIO, "%s: cannot compute its sha256", rel);
    return digest_add_hex(opt, rel, size, hex, err);
}

/* The sha256 of a whole buffer, recorded as the digest of `rel`. */
static fl_status digest_buffer(const convert_options *opt, const char *rel, const void *p, size_t n,
                               fl_error *err)
{
    fl_digest dg = {0};
    fl_status s = fl_digest_init(&dg, HASH_SHA256, 0) && fl_digest_update(&dg, p, n)
                      ? digest_add(opt, rel, n, &dg, err)
                      : fl_fail(err, FL_EIO, "%s: cannot compute its sha256", rel);
    fl_digest_free(&dg);
    return s;
}

/* Copies n bytes from in to out through buf, adding them to the digest
 * once `turn` (when not NULL: the writer's ordered digest for item k) is
 * ours: the bytes pass through user space exactly once. */
static fl_status copy_hashed(int in, uint64_t in_off, int out, uint64_t out_off, uint64_t n,
                             const char *in_path, const char *out_path, char *buf, size_t cap,
                             fl_digest *whole, ordered_digest *turn, size_t k, fl_error *err)
{
    int waited = turn == NULL;
    do {
        size_t want = n > cap ? cap : (size_t)n;
        if (fl_interrupted)
            return fl_fail(err, FL_EINTR, "interrupted");
        if (want && fl_pread_full(in, buf, want, in_off) != 0)
            return fl_fail(err, FL_EIO, "%s: read failed: %s", in_path,
                           errno ? strerror(errno) : "the file shrank while it was copied");
        fl_status s = waited ? FL_OK : ordered_digest_wait(turn, k, err);
        waited = 1;
        if (s != FL_OK)
            return s;
        if (!(turn ? ordered_digest_update(turn, buf, want) : fl_digest_update(whole, buf, want)))
            return fl_fail(err, FL_EIO, "%s: cannot compute its sha256", out_path);
        if ((s = write_all(out, buf, want, out_off, out_path, err)) != FL_OK)
            return s;
        in_off += want;
        out_off += want;
        n -= want;
    } while (n > 0);
    return FL_OK;
}

/* ---------------------------------------------------------------------------
 * the streaming tensor writer */

/* One unit of work: a byte range of one output tensor. */
typedef struct {
    const out_tensor *o;
    uint64_t dst_off;       /* absolute offset in the output file */
    uint64_t first, count;  /* element range within the tensor */
} work_item;

typedef struct {
    const checkpoint *ck;
    int out_fd;
    const char *out_path;   /* the output file, for messages */
    work_item *items;
    size_t n_items;
    atomic_ullong done;
    uint64_t done_base, total;
    size_t buf_size;
    char **bufs;            /* one buffer per pool worker */
    const convert_options *opt;
    int use_mmap;           /* read folded sources through a mapping */
    ordered_digest *hash;   /* the file's sha256, fed in file order (NULL: none) */
} shard_job;

/* A source file that shrinks while it is mapped, or a sector the disk
 * cannot read, raises SIGBUS on access; the worker that touched it jumps
 * back and reports an error instead of the process dying. */
static _Thread_local sigjmp_buf *bus_jump;

void convert_sigbus_handler(int sig)
{
    if (bus_jump)
        siglongjmp(*bus_jump, 1);
    signal(sig, SIG_DFL);
    raise(sig);
}

/* 1 when the program installed convert_sigbus_handler for SIGBUS: only
 * then may the source be read through a mapping. */
static int sigbus_handled(void)
{
    struct sigaction sa;
    return sigaction(SIGBUS, NULL, &sa) == 0 && !(sa.sa_flags & SA_SIGINFO) &&
           sa.sa_handler == convert_sigbus_handler;
}

static int norm_is_wide(const checkpoint *ck, const fold_group *g)
{
    const ckpt_tensor *t = ckpt_find(ck, g->norm);
    return t && t->t->dtype == ST_F64;
}

/* What a SIGBUS in the mapping of bytes [off, end) of sh meant: the file
 * is shorter now, or it is as long as ever and the disk failed to read it. */
static fl_status bus_error(const ckpt_shard *sh, const out_tensor *o, uint64_t off, uint64_t end, fl_error *e)
{
    struct stat st;
    if (fstat(sh->fd, &st) == 0 && (uint64_t)st.st_size < end)
        return fl_fail(e, FL_EIO, "%s: the file shrank to %lld bytes while tensor '%s' was read (it needs %llu)",
                       sh->path, (long long)st.st_size, o->name, (unsigned long long)end);
    return fl_fail(e, FL_EIO, "%s: read error in tensor '%s' (bytes %llu..%llu): the mapped data could not be "
                   "read (SIGBUS: a bad sector or a failing device)", sh->path, o->name,
                   (unsigned long long)off, (unsigned long long)end);
}

/* Folds one chunk of a tensor into buf (fold.h's fold_range, along the
 * tensor's input axis).  The source bytes are read through a read-only
 * mapping when the kernel allows it (the page cache is folded directly,
 * saving pread's copy into user space), else with pread.  Returns FL_OK
 * with *bad = index of a non-finite result or -1. */
static fl_status fold_chunk(const checkpoint *ck, const out_tensor *o, uint64_t first,
                            uint64_t count, char *buf, int use_mmap, long *bad, fl_error *e)
{
    const st_tensor *t = o->src->t;
    const ckpt_shard *sh = &ck->shards[o->src->shard];
    size_t es = st_dtype_bits(t->dtype) / 8;
    size_t bytes = (size_t)(count * es);
    int wide = norm_is_wide(ck, o->group);
    fold_axis ax = fold_axis_of(t->shape, t->ndim, o->axis);
    uint64_t off = sh->st.data_start + t->begin + first * es;
    long page = sysconf(_SC_PAGESIZE);
    uint64_t aligned = off - off % (uint64_t)page;
    size_t map_len = bytes + (size_t)(off - aligned);
    void *map = bytes && use_mmap ? mmap(NULL, map_len, PROT_READ, MAP_SHARED | MAP_POPULATE, sh->fd,
                                         (off_t)aligned)
                                  : MAP_FAILED;
    if (map == MAP_FAILED) {
        fl_status s = ckpt_read(ck, o->src, first * es, buf, bytes, e);
        if (s == FL_OK)
            *bad = fold_range(t->dtype, buf, buf, first, count, ax, o->group->w, o->group->gain, wide);
        return s;
    }
    sigjmp_buf jump;
    if (sigsetjmp(jump, 1)) {
        bus_jump = NULL;
        munmap(map, map_len);
        return bus_error(sh, o, off, off + bytes, e);
    }
    bus_jump = &jump;
    *bad = fold_range(t->dtype, (const char *)map + (off - aligned), buf, first, count, ax, o->group->w,
                      o->group->gain, wide);
    bus_jump = NULL;
    munmap(map, map_len);
    return FL_OK;
}

/* The error for a fold whose element `idx` is not finite: both factors. */
static fl_status not_finite(const shard_job *j, const out_tensor *o, uint64_t idx, fl_error *e)
{
    const st_tensor *t = o->src->t;
    size_t es = st_dtype_bits(t->dtype) / 8;
    uint64_t col = fold_gain_index(fold_axis_of(t->shape, t->ndim, o->axis), idx);
    char src_val[64] = "?", at[96];
    unsigned char raw[8];
    fold_describe_index(t->shape, t->ndim, idx, at, sizeof at);
    if (ckpt_read(j->ck, o->src, idx * es, raw, es, e) == FL_OK)
        snprintf(src_val, sizeof src_val, "%g", dtype_load(t->dtype, raw, 0));
    return fl_fail(e, FL_EINPUT, "%s: tensor '%s' element %s = %s times gain %g of '%s' is not finite in %s",
                   j->ck->shards[o->src->shard].path, o->name, at, src_val,
                   o->group->w[col] + (o->group->gain == GAIN_ONE_PLUS_W ? 1.0 : 0.0), o->group->norm,
                   st_dtype_name(t->dtype));
}

/* One work item (a pool item): copy, fill or fold a range of a tensor. */
static fl_status shard_item(void *ctx, size_t k, int worker, fl_error *e)
{
    shard_job *j = ctx;
    char *buf = j->bufs[worker];
    const work_item *w = &j->items[k];
    const out_tensor *o = w->o;
    const st_tensor *t = o->src->t;
    size_t es = st_dtype_bits(t->dtype) / 8;
    uint64_t bytes = w->count * (es ? es : 1);
    fl_status s = FL_OK;
    if (o->op == OUT_COPY) {
        const ckpt_shard *sh = &j->ck->shards[o->src->shard];
        uint64_t in_off = sh->st.data_start + t->begin + w->first;
        if (j->hash)
            s = copy_hashed(sh->fd, in_off, j->out_fd, w->dst_off, st_nbytes(t), sh->path, j->out_path,
                            buf, j->buf_size, NULL, j->hash, k, e);
        else
            s = fl_copy_range(sh->fd, in_off, j->out_fd, w->dst_off, st_nbytes(t), sh->path,
                              j->out_path, buf, j->buf_size, e);
    } else {
        if (o->op == OUT_IDENTITY) {
            fill_value(t->dtype, buf, (size_t)w->count, o->identity);
        } else {
            long bad = -1;
            s = fold_chunk(j->ck, o, w->first, w->count, buf, j->use_mmap, &bad, e);
            if (s == FL_OK && bad >= 0)
                s = not_finite(j, o, w->first + (uint64_t)bad, e);
        }
        if (s == FL_OK && j->hash && (s = ordered_digest_wait(j->hash, k, e)) == FL_OK &&
            !ordered_digest_update(j->hash, buf, (size_t)bytes))
            s = fl_fail(e, FL_EIO, "%s: cannot compute its sha256", j->out_path);
        if (s == FL_OK)
            s = write_all(j->out_fd, buf, (size_t)bytes, w->dst_off, j->out_path, e);
    }
    if (j->hash) {
        if (s == FL_OK)
            ordered_digest_pass(j->hash);
        else
            ordered_digest_abort(j->hash);
    }
    if (s != FL_OK)
        return s;
    uint64_t d = atomic_fetch_add(&j->done, bytes) + bytes;
    if (j->opt->progress && k % 8 == 0)
        j->opt->progress(j->opt->progress_ctx, j->done_base + d, j->total);
    return FL_OK;
}

/* The workers that write shards: a pool and one buffer per worker. */
typedef struct {
    fl_pool *pool;
    char **bufs;
    size_t buf_size;
} shard_workers;

static void workers_free(shard_workers *w)
{
    if (w->bufs)
        for (int i = 0; i < fl_pool_size(w->pool); i++)
            free(w->bufs[i]);
    free(w->bufs);
    fl_pool_free(w->pool);
    memset(w, 0, sizeof *w);
}

static fl_status workers_new(const convert_options *opt, shard_workers *w, fl_error *err)
{
    memset(w, 0, sizeof *w);
    w->pool = fl_pool_new(opt->threads);
    if (!w->pool)
        return fl_fail(err, FL_EIO, "out of memory");
    int n = fl_pool_size(w->pool);
    uint64_t memory = opt->memory ? opt->memory : DEFAULT_MEMORY;
    /* Each worker holds its output buffer and, while folding, a mapped
     * window of the source of the same size: both count as resident. */
    w->buf_size = (size_t)(memory / (2 * (uint64_t)n));
    if (w->buf_size < (1u << 16))
        w->buf_size = 1u << 16;
    w->bufs = calloc((size_t)n, sizeof *w->bufs);
    for (int i = 0; w->bufs && i < n; i++)
        if (!(w->bufs[i] = malloc(w->buf_size))) {
            workers_free(w);
            return fl_fail(err, FL_EIO, "out of memory for a %zu byte buffer", w->buf_size);
        }
    if (!w->bufs) {
        workers_free(w);
        return fl_fail(err, FL_EIO, "out of memory");
    }
    return FL_OK;
}

/* Work items in file order: chunks of at most buf_size bytes per folded
 * tensor, whole tensors for copies (fl_copy_range chunks those itself).
 * The header and these ranges, in this order, tile the whole file: the
 * place to hash a file as it is written. */
static fl_status make_items(const out_file *f, size_t buf_size, work_item **items, size_t *n_items,
                            fl_error *err)
{
    size_t cap = 0, n = 0;
    *items = NULL;
    for (size_t i = 0; i < f->n; i++) {
        const out_tensor *o = f->t[f->order[i]];
        const st_tensor *t = o->src->t;
        uint64_t numel;
        st_numel(t, &numel);
        size_t es = st_dtype_bits(t->dtype) / 8;
        uint64_t per = (o->op == OUT_COPY || es == 0) ? (numel ? numel : 1) : buf_size / es;
        if (per == 0)
            per = 1;
        for (uint64_t first = 0; first < numel || (numel == 0 && first == 0); first += per) {
            if (n == cap) {
                cap = cap ? cap * 2 : 64;
                work_item *grown = realloc(*items, cap * sizeof **items);
                if (!grown) {
                    free(*items);
                    *items = NULL;
                    return fl_fail(err, FL_EIO, "out of memory");
                }
                *items = grown;
            }
            uint64_t count = numel - first < per ? numel - first : per;
            (*items)[n++] = (work_item){o, f->header_size + f->ts[f->order[i]].begin + first * es, first, count};
            if (numel == 0 || o->op == OUT_COPY)
                break;
        }
    }
    *n_items = n;
    return FL_OK;
}

/* Writes one output shard: the planned header, then every tensor, on the
 * workers pulling chunks from a shared list. */
static fl_status write_shard(txn *t, const checkpoint *ck, const fold_plan *plan, const out_file *f,
                             const convert_options *opt, const shard_workers *wk, uint64_t done_base,
                             uint64_t total, fl_error *err)
{
    work_item *items = NULL;
    size_t n_items = 0;
    int fd = -1;
    char *path = fl_asprintf("%s/%s", txn_path(t), f->file);  /* for messages */
    fl_status s = path ? txn_create(t, f->file, f->mode, &fd, err) : fl_fail(err, FL_EIO, "out of memory");
    if (s != FL_OK) {
        free(path);
        return s;
    }
    /* Reserve the space up front: a full disk fails here, not halfway. */
    int fa = posix_fallocate(fd, 0, (off_t)(f->header_size + f->data_bytes));
    if (fa == ENOSPC || fa == EFBIG)
        s = fl_fail(err, FL_EIO, "%s: cannot reserve %llu bytes: %s", path,
                    (unsigned long long)(f->header_size + f->data_bytes), strerror(fa));
    if (s == FL_OK)
        s = write_all(fd, f->header, f->header_size, 0, path, err);
    if (s == FL_OK)
        s = make_items(f, wk->buf_size, &items, &n_items, err);
    /* --push-to-hub: the file's sha256 from the bytes as they are written,
     * the header first, then the items in file order. */
    ordered_digest hash;
    int hashing = 0;
    if (opt->digests && s == FL_OK) {
        hashing = ordered_digest_init(&hash, HASH_SHA256);
        if (!hashing || !ordered_digest_update(&hash, f->header, f->header_size))
            s = fl_fail(err, FL_EIO, "%s: cannot compute its sha256", path);
    }
    if (s == FL_OK) {
        shard_job job = {.ck = ck, .out_fd = fd, .out_path = path, .items = items,
                         .n_items = n_items, .done_base = done_base, .total = total,
                         .buf_size = wk->buf_size, .bufs = wk->bufs, .opt = opt,
                         .use_mmap = sigbus_handled(), .hash = hashing ? &hash : NULL};
        atomic_init(&job.done, 0);
        s = fl_pool_run(wk->pool, n_items, shard_item, &job, err);
    }
    if (s == FL_OK && hashing)
        s = digest_add(opt, f->file, f->header_size + f->data_bytes, &hash.d, err);
    if (hashing)
        ordered_digest_free(&hash);
    free(items);
    free(path);
    if (s != FL_OK) {
        close(fd);
        return s;
    }
    return txn_finish_file(t, f->file, fd, 1, err);
}

/* The digest of a shard an earlier run finished (--resume): read back. */
static fl_status digest_existing(txn *t, const convert_options *opt, const out_file *f, fl_error *err)
{
    uint64_t size = f->header_size + f->data_bytes;
    char *path = fl_asprintf("%s/%s", txn_path(t), f->file), hex[65];
    int fd = path ? open(path, O_RDONLY | O_CLOEXEC) : -1;
    fl_status s = fd < 0 ? fl_fail(err, FL_EIO, "%s: cannot open: %s", path ? path : f->file, strerror(errno))
                         : fl_hash_fd(fd, path, (int64_t)size, hex, NULL, NULL, NULL, NULL, err);
    if (fd >= 0)
        close(fd);
    free(path);
    return s == FL_OK ? digest_add_hex(opt, f->file, size, hex, err) : s;
}

/* Every shard of the layout; with --resume, the ones an earlier run
 * finished (and whose digests still match) are kept. */
static fl_status write_shards(txn *t, const checkpoint *ck, const fold_plan *plan, const out_layout *l,
                              const convert_options *opt, fl_error *err)
{
    uint64_t total = 0, done = 0;
    size_t resumed = 0;
    for (size_t i = 0; i < plan->n_out; i++)
        total += st_nbytes(plan->out[i].src->t);
    shard_workers wk;
    fl_status s = workers_new(opt, &wk, err);
    for (size_t i = 0; i < l->n && s == FL_OK; i++) {
        const out_file *f = &l->f[i];
        if (f->skip)
            continue;
        if (opt->resume && txn_reusable(t, f->file)) {
            resumed++;
            if (opt->digests)
                s = digest_existing(t, opt, f, err);
        } else
            s = write_shard(t, ck, plan, f, opt, &wk, done, total, err);
        done += f->header_size + f->data_bytes;
    }
    workers_free(&wk);
    if (resumed && opt->note) {
        char msg[128];
        snprintf(msg, sizeof msg, "resumed: %zu of %zu shard(s) were already complete in the partial output",
                 resumed, l->n);
        opt->note(opt->progress_ctx, msg);
    }
    return s;
}

/* ---------------------------------------------------------------------------
 * the other files */

/* The permission bits of the source's file `rel` (as cp gives a copy), or
 * `fallback` when it has none. */
static unsigned source_mode(const checkpoint *ck, const char *rel, unsigned fallback)
{
    char *path = fl_path_join(ck->dir, rel);
    struct stat st;
    unsigned mode = path && stat(path, &st) == 0 ? (unsigned)(st.st_mode & 0777) : fallback;
    free(path);
    return mode;
}

static fl_status write_text(txn *t, const convert_options *opt, const char *rel, const char *text,
                            size_t n, unsigned mode, fl_error *err)
{
    int fd;
    fl_status s = opt->digests ? digest_buffer(opt, rel, text, n, err) : FL_OK;
    if (s == FL_OK)
        s = txn_create(t, rel, mode, &fd, err);
    if (s != FL_OK)
        return s;
    char *path = fl_asprintf("%s/%s", txn_path(t), rel);
    s = path ? write_all(fd, text, n, 0, path, err) : fl_fail(err, FL_EIO, "out of memory");
    free(path);
    if (s != FL_OK) {
        close(fd);
        return s;
    }
    return txn_finish_file(t, rel, fd, 0, err);
}

static fl_status copy_file(txn *t, const checkpoint *ck, const convert_options *opt, const char *rel,
                           char *buf, size_t cap, fl_error *err)
{
    fl_digest dg = {0};
    int hashing = opt->digests != NULL;
    if (hashing && !fl_digest_init(&dg, HASH_SHA256, 0))
        return fl_fail(err, FL_EIO, "%s: cannot compute its sha256", rel);
    char *src = fl_path_join(ck->dir, rel), *dst = fl_asprintf("%s/%s", txn_path(t), rel);
    int in = -1, out = -1;
    struct stat st;
    fl_status s = FL_OK;
    if (!src || !dst)
        s = fl_fail(err, FL_EIO, "out of memory");
    else if ((in = open(src, O_RDONLY | O_CLOEXEC | O_NONBLOCK)) < 0 || fstat(in, &st) != 0)
        s = fl_fail(err, FL_EIO, "%s: cannot open: %s", src, strerror(errno));
    else if ((s = txn_create(t, rel, (unsigned)st.st_mode, &out, err)) == FL_OK) {
        s = hashing ? copy_hashed(in, 0, out, 0, (uint64_t)st.st_size, src, dst, buf, cap, &dg, NULL, 0, err)
                    : fl_copy_range(in, 0, out, 0, (uint64_t)st.st_size, src, dst, buf, cap, err);
        if (s == FL_OK && hashing)
            s = digest_add(opt, rel, (uint64_t)st.st_size, &dg, err);
        if (s == FL_OK)
            s = txn_finish_file(t, rel, out, 0, err);
        else
            close(out);
    }
    if (in >= 0)
        close(in);
    if (hashing)
        fl_digest_free(&dg);
    free(src);
    free(dst);
    return s;
}

static fl_status copy_other_files(txn *t, const checkpoint *ck, const convert_options *opt, fl_error *err)
{
    char buf[1 << 16];
    fl_status s = FL_OK;
    for (size_t i = 0; i < ck->n_other && s == FL_OK; i++)
        s = copy_file(t, ck, opt, ck->other_files[i], buf, sizeof buf, err);
    return s;
}

/* ---------------------------------------------------------------------------
 * before the long work */

/* What the output will hold besides the shards, made up front so that a
 * problem with any of it stops the run before the first shard byte. */
typedef struct {
    out_layout layout;
    char *index, *config, *card;
    size_t index_len, config_len;
    unsigned config_mode, index_mode, card_mode;
} prepared;

static void prepared_free(prepared *p)
{
    layout_free(&p->layout);
    free(p->index);
    free(p->config);
    free(p->card);
    memset(p, 0, sizeof *p);
}

/* The card: base_model is the Hub repo id when there is one (given, or
 * read from a cache snapshot path), else the source directory's name. */
static fl_status make_card(const checkpoint *ck, const fold_plan *plan, const convert_options *opt,
                           prepared *p, fl_error *err)
{
    char base[PATH_MAX], title[NAME_MAX + 1];
    card_source cs = {.title = fl_basename(opt->out_dir, title, sizeof title), .license = opt->license};
    if (opt->base_model)
        snprintf(base, sizeof base, "%s", opt->base_model);
    cs.on_hub = opt->base_model || card_repo_of_snapshot(ck->dir, base, sizeof base);
    if (!cs.on_hub)
        fl_basename(ck->dir, base, sizeof base);
    cs.base_model = base;
    char *path = fl_path_join(ck->dir, "README.md"), *text = NULL;
    struct stat st;
    fl_status s = FL_OK;
    if (!path)
        return fl_fail(err, FL_EIO, "out of memory");
    if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
        /* Too large or not UTF-8: a card without its metadata, not a refusal. */
        s = fl_read_file(path, SOURCE_CARD_MAX, FL_READ_UTF8, &text, NULL, err);
        if (s == FL_EINPUT)
            s = FL_OK;
        p->card_mode = (unsigned)(st.st_mode & 0777);
    }
    cs.source_card = text;
    if (s == FL_OK)
        s = model_card(plan, &cs, &p->card, err);
    free(text);
    free(path);
    return s;
}

/* Every other file is opened and its first byte read now: an unreadable
 * tokenizer file must not be found after every shard was written. */
static fl_status check_inputs(const checkpoint *ck, fl_error *err)
{
    for (size_t i = 0; i < ck->n_other; i++) {
        char *path = fl_path_join(ck->dir, ck->other_files[i]), byte;
        int fd = path ? open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK) : -1;
        struct stat st;
        fl_status s = FL_OK;
        if (fd < 0 || fstat(fd, &st) != 0)
            s = fl_fail(err, FL_EIO, "%s: cannot open: %s", path ? path : ck->other_files[i], strerror(errno));
        else if (!S_ISREG(st.st_mode))
            s = fl_fail(err, FL_EINPUT, "%s: not a regular file", path);
        else if (st.st_size > 0 && pread(fd, &byte, 1, 0) != 1)
            s = fl_fail(err, FL_EIO, "%s: read failed: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        free(path);
        if (s != FL_OK)
            return s;
    }
    return FL_OK;
}

static fl_status prepare(const checkpoint *ck, const fold_plan *plan, const convert_options *opt,
                         prepared *p, fl_error *err)
{
    memset(p, 0, sizeof *p);
    p->config_mode = source_mode(ck, "config.json", 0644);
    p->index_mode = source_mode(ck, "model.safetensors.index.json", p->config_mode);
    p->card_mode = p->config_mode;
    fl_status s = layout_build(ck, plan, opt->max_shard_size, opt->out_dir, &p->layout, err);
    if (s == FL_OK && p->layout.want_index)
        s = layout_index(ck, plan, &p->layout, &p->index, &p->index_len, err);
    if (s == FL_OK)
        s = config_rewrite(ck, plan, &p->config, &p->config_len, err);
    if (s == FL_OK)
        s = make_card(ck, plan, opt, p, err);
    if (s == FL_OK)
        s = check_inputs(ck, err);
    return s;
}

/* A file this conversion writes (what --force may replace, txn.h). */
static int is_ours(void *ctx, const char *rel)
{
    const checkpoint *ck = ctx;
    if (!strcmp(rel, "README.md") || !strcmp(rel, "config.json") ||
        !strcmp(rel, "model.safetensors.index.json") || fl_ends_with(rel, ".safetensors"))
        return 1;
    size_t lo = 0, hi = ck->n_other;  /* other_files is sorted */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(ck->other_files[mid], rel);
        if (c == 0)
            return 1;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return 0;
}

static txn_options txn_options_of(const checkpoint *ck, const convert_options *opt)
{
    return (txn_options){.out_dir = opt->out_dir, .src_dir = ck->dir, .force = opt->force,
                         .resume = opt->resume, .fsync = opt->fsync, .keep_dirs = opt->keep_dirs,
                         .managed_dirs = opt->managed_dirs, .ours = is_ours, .ours_ctx = (void *)ck,
                         .note = opt->note, .note_ctx = opt->progress_ctx};
}

fl_status convert_dry_run(const checkpoint *ck, const fold_plan *plan, const convert_options *opt,
                          fl_error *err)
{
    prepared p;
    fl_status s = prepare(ck, plan, opt, &p, err);
    txn_options to = txn_options_of(ck, opt);
    if (s == FL_OK)
        s = txn_check_output(&to, err);
    prepared_free(&p);
    return s;
}

/* ---------------------------------------------------------------------------
 * the output */

fl_status convert_write(const checkpoint *ck, const fold_plan *plan, const convert_options *opt,
                        fl_error *err)
{
    prepared p;
    txn *t = NULL;
    txn_options to = txn_options_of(ck, opt);
    unsigned char fp[TXN_FP_BYTES];
    fl_status s = prepare(ck, plan, opt, &p, err);
    if (s == FL_OK) {
        layout_fingerprint(ck, plan, &p.layout, fp);
        s = txn_begin(&to, fp, &t, err);
    }
    /* The shards: the source's files (or --max-shard-size's), each less the
     * folded norms; a materialised lm_head sits with the embedding. */
    if (s == FL_OK)
        s = write_shards(t, ck, plan, &p.layout, opt, err);
    /* The updated index. */
    if (s == FL_OK && p.layout.want_index)
        s = write_text(t, opt, "model.safetensors.index.json", p.index, p.index_len, p.index_mode, err);
    /* config.json with only the FlashNorm keys changed. */
    if (s == FL_OK)
        s = write_text(t, opt, "config.json", p.config, p.config_len, p.config_mode, err);
    /* The model card. */
    if (s == FL_OK)
        s = write_text(t, opt, "README.md", p.card, strlen(p.card), p.card_mode, err);
    /* The other files, verbatim. */
    if (s == FL_OK)
        s = copy_other_files(t, ck, opt, err);
    if (s == FL_OK && opt->progress)
        opt->progress(opt->progress_ctx, p.layout.tensor_bytes, p.layout.tensor_bytes);
    /* --strict, then the rename into place. */
    if (s == FL_OK)
        s = txn_commit(t, opt->before_commit, opt->commit_ctx, err);
    txn_end(t, s);
    prepared_free(&p);
    return s;
}
