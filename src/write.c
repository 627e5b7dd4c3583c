/* write.c — writing the FlashNorm checkpoint (see write.h).
 *
 * Output layout mirrors the source: the same shard file names, each shard's
 * tensors minus the dropped norms (a materialised lm_head goes into the
 * shard that holds the embedding), an updated index, config.json with only
 * the FlashNorm keys changed, the other files copied, a model card. */
#include "flashify/write.h"
#include "flashify/card.h"
#include "flashify/config_edit.h"
#include "flashify/pool.h"
#include "flashify/util.h"
#include "flashify/dtype.h"
#include "flashify/fold.h"
#include "flashify/util.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

/* Fold buffers, shared by the threads; with the fixed ~9 MiB of the
 * process (libc, libcurl, OpenSSL, the plan) peak RSS stays under 64 MiB. */
#define DEFAULT_MEMORY (48ull << 20)

/* ---------------------------------------------------------------------------
 * small file helpers */

static fl_status write_all(int fd, const void *buf, size_t n, uint64_t off,
                           const char *path, fl_error *err)
{
    if (fl_pwrite_full(fd, buf, n, off) != 0)
        return fl_fail(err, FL_EIO, "%s: write failed: %s", path, strerror(errno));
    return FL_OK;
}

static fl_status create_file(const char *path, int *fd, fl_error *err)
{
    unlink(path);  /* a file of an interrupted run being resumed */
    *fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (*fd < 0)
        return fl_fail(err, FL_EIO, "Failed to create the file %s: %s", path, strerror(errno));
    return FL_OK;
}

static fl_status close_file(int fd, const char *path, int sync, fl_error *err)
{
    if (sync && fsync(fd) != 0) {
        int e = errno;
        close(fd);
        return fl_fail(err, FL_EIO, "%s: fsync failed: %s", path, strerror(e));
    }
    if (close(fd) != 0)
        return fl_fail(err, FL_EIO, "%s: close failed: %s", path, strerror(errno));
    return FL_OK;
}

static fl_status write_whole_file(const char *path, const char *buf, size_t n, int sync,
                                  fl_error *err)
{
    int fd;
    fl_status s = create_file(path, &fd, err);
    if (s != FL_OK)
        return s;
    if ((s = write_all(fd, buf, n, 0, path, err)) != FL_OK) {
        close(fd);
        return s;
    }
    return close_file(fd, path, sync, err);
}

void remove_tree(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0)
        return;
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        if (d) {
            struct dirent *e;
            while ((e = readdir(d)) != NULL) {
                if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                    continue;
                char *p = fl_path_join(path, e->d_name);
                if (p)
                    remove_tree(p);
                free(p);
            }
            closedir(d);
        }
        rmdir(path);
    } else {
        unlink(path);
    }
}

/* ---------------------------------------------------------------------------
 * output path checks */

/* Absolute, symlink-free form of a path that may not exist yet (its parent
 * must). */
static fl_status resolve_future(const char *path, char *out, fl_error *err)
{
    if (realpath(path, out))
        return FL_OK;
    char tmp[PATH_MAX], tmp2[PATH_MAX], parent[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s", path);
    snprintf(tmp2, sizeof tmp2, "%s", path);
    const char *base = basename(tmp);
    const char *dir = dirname(tmp2);
    if (!realpath(dir, parent))
        return fl_fail(err, FL_EUSAGE, "%s: the parent directory %s does not exist", path, dir);
    if (strcmp(base, ".") == 0 || strcmp(base, "..") == 0 || strcmp(base, "/") == 0)
        return fl_fail(err, FL_EUSAGE, "%s: not a usable output directory name", path);
    int n = snprintf(out, PATH_MAX, "%s/%s", strcmp(parent, "/") == 0 ? "" : parent, base);
    if (n < 0 || n >= PATH_MAX)
        return fl_fail(err, FL_EUSAGE, "%s: path too long", path);
    return FL_OK;
}

static int is_inside(const char *inner, const char *outer)
{
    size_t n = strlen(outer);
    return strncmp(inner, outer, n) == 0 && (inner[n] == '/' || (n == 1 && outer[0] == '/'));
}

fl_status convert_check_output(const checkpoint *ck, const char *out_dir, int force,
                               fl_error *err)
{
    char src[PATH_MAX], out[PATH_MAX];
    if (!realpath(ck->dir, src))
        return fl_fail(err, FL_EINPUT, "%s: cannot resolve: %s", ck->dir, strerror(errno));
    fl_status s = resolve_future(out_dir, out, err);
    if (s != FL_OK)
        return s;
    if (strcmp(src, out) == 0)
        return fl_fail(err, FL_EUSAGE, "%s: the output directory is the source; choose another -o", out_dir);
    if (is_inside(out, src))
        return fl_fail(err, FL_EUSAGE, "%s: the output directory is inside the source %s; choose another -o",
                       out_dir, ck->dir);
    if (is_inside(src, out))
        return fl_fail(err, FL_EUSAGE, "%s: the output directory contains the source %s; choose another -o",
                       out_dir, ck->dir);
    struct stat st;
    if (lstat(out_dir, &st) == 0 && !force)
        return fl_fail(err, FL_EUSAGE, "%s: already exists (use --force to replace it)", out_dir);
    if (lstat(out_dir, &st) == 0 && !S_ISDIR(st.st_mode))
        return fl_fail(err, FL_EUSAGE, "%s: exists and is not a directory", out_dir);
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
    const char *out_path;
    work_item *items;
    size_t n_items;
    atomic_ullong done;
    uint64_t done_base, total;
    size_t buf_size;
    char **bufs;            /* one buffer per pool worker */
    const convert_options *opt;
    int use_mmap;           /* read folded sources through a mapping */
} shard_job;

static int norm_is_wide(const checkpoint *ck, const fold_group *g);

/* A source file that shrinks while it is mapped raises SIGBUS on access;
 * the worker that touched it jumps back and reports an error instead of
 * the process dying. */
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

/* Folds one chunk of a tensor into buf.  The source bytes are read through
 * a read-only mapping when the kernel allows it (the page cache is folded
 * directly, saving pread's copy into user space), else with pread.
 * Returns FL_OK with *bad = index of a non-finite result or -1. */
static fl_status fold_chunk(const checkpoint *ck, const out_tensor *o, uint64_t first,
                            uint64_t count, char *buf, int use_mmap, long *bad, fl_error *e)
{
    const st_tensor *t = o->src->t;
    const ckpt_shard *sh = &ck->shards[o->src->shard];
    size_t es = st_dtype_bits(t->dtype) / 8;
    size_t bytes = (size_t)(count * es);
    int wide = norm_is_wide(ck, o->group);
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
            *bad = fold_range(t->dtype, buf, buf, first, count, fold_axis_of(t->shape, t->ndim, o->axis),
                              o->group->w, o->group->gain, wide);
        return s;
    }
    sigjmp_buf jump;
    if (sigsetjmp(jump, 1)) {
        bus_jump = NULL;
        munmap(map, map_len);
        return fl_fail(e, FL_EIO, "%s: the file changed size while tensor '%s' was read", sh->path, o->name);
    }
    bus_jump = &jump;
    *bad = fold_range(t->dtype, (const char *)map + (off - aligned), buf, first, count,
                      fold_axis_of(t->shape, t->ndim, o->axis), o->group->w, o->group->gain, wide);
    bus_jump = NULL;
    munmap(map, map_len);
    return FL_OK;
}

static int norm_is_wide(const checkpoint *ck, const fold_group *g)
{
    const ckpt_tensor *t = ckpt_find(ck, g->norm);
    return t && t->t->dtype == ST_F64;
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
        s = fl_copy_range(sh->fd, sh->st.data_start + t->begin + w->first, j->out_fd, w->dst_off,
                          st_nbytes(t), sh->path, j->out_path, buf, j->buf_size, e);
    } else if (o->op == OUT_IDENTITY) {
        fill_value(t->dtype, buf, (size_t)w->count, o->identity);
        s = write_all(j->out_fd, buf, (size_t)bytes, w->dst_off, j->out_path, e);
    } else {
        long bad = -1;
        s = fold_chunk(j->ck, o, w->first, w->count, buf, j->use_mmap, &bad, e);
        if (s == FL_OK) {
            if (bad >= 0) {
                uint64_t idx = w->first + (uint64_t)bad;
                uint64_t col = fold_gain_index(fold_axis_of(t->shape, t->ndim, o->axis), idx);
                char src_val[64] = "?", at[96];
                fold_describe_index(t->shape, t->ndim, idx, at, sizeof at);
                double W;
                unsigned char raw[8];
                if (ckpt_read(j->ck, o->src, idx * es, raw, es, e) == FL_OK) {
                    W = dtype_load(t->dtype, raw, 0);
                    snprintf(src_val, sizeof src_val, "%g", W);
                }
                s = fl_fail(e, FL_EINPUT,
                            "%s: tensor '%s' element %s = %s times gain %g of '%s' is not finite in %s",
                            j->ck->shards[o->src->shard].path, o->name, at, src_val,
                            o->group->w[col] + (o->group->gain == GAIN_ONE_PLUS_W ? 1.0 : 0.0),
                            o->group->norm, st_dtype_name(t->dtype));
            } else {
                s = write_all(j->out_fd, buf, (size_t)bytes, w->dst_off, j->out_path, e);
            }
        }
    }
    if (s != FL_OK)
        return s;
    uint64_t d = atomic_fetch_add(&j->done, bytes) + bytes;
    if (j->opt->progress && k % 8 == 0)
        j->opt->progress(j->opt->progress_ctx, j->done_base + d, j->total);
    return FL_OK;
}

/* ---------------------------------------------------------------------------
 * output layout: which tensors go into which output file */

typedef struct {
    char *file;                 /* output file name (relative) */
    const out_tensor **t;       /* its tensors, in plan order */
    size_t n, cap;
    const ckpt_shard *meta_src; /* same-name layout: metadata comes from here */
} out_shard;

typedef struct {
    out_shard *s;
    size_t n;
    size_t *file_of;            /* plan->out[i] is written to s[file_of[i]] */
} out_layout;

static void layout_free(out_layout *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->s[i].file);
        free(l->s[i].t);
    }
    free(l->s);
    free(l->file_of);
    memset(l, 0, sizeof *l);
}

static int shard_add(out_shard *sh, const out_tensor *o)
{
    if (sh->n == sh->cap) {
        size_t cap = sh->cap ? sh->cap * 2 : 16;
        const out_tensor **t = realloc(sh->t, cap * sizeof *t);
        if (!t)
            return -1;
        sh->t = t;
        sh->cap = cap;
    }
    sh->t[sh->n++] = o;
    return 0;
}

/* The default layout mirrors the source: same file names, each with its
 * own tensors (a materialised lm_head sits with the embedding).  With
 * max_shard_size the tensors are re-packed greedily in order, as
 * huggingface_hub's split_state_dict_into_shards does, a tensor larger than
 * the limit alone in its shard, named model-%05d-of-%05d.safetensors. */
static fl_status layout_build(const checkpoint *ck, const fold_plan *plan, uint64_t max_shard_size,
                              out_layout *l, fl_error *err)
{
    memset(l, 0, sizeof *l);
    size_t cap = max_shard_size ? plan->n_out + 1 : ck->n_shards;
    l->s = calloc(cap ? cap : 1, sizeof *l->s);
    l->file_of = calloc(plan->n_out ? plan->n_out : 1, sizeof *l->file_of);
    if (!l->s || !l->file_of)
        return fl_fail(err, FL_EIO, "out of memory");
    if (!max_shard_size) {
        for (size_t i = 0; i < ck->n_shards; i++) {
            l->s[i].file = strdup(ck->shards[i].file);
            l->s[i].meta_src = &ck->shards[i];
            if (!l->s[i].file)
                return fl_fail(err, FL_EIO, "out of memory");
        }
        l->n = ck->n_shards;
        for (size_t i = 0; i < plan->n_out; i++) {
            l->file_of[i] = plan->out[i].shard;
            if (shard_add(&l->s[plan->out[i].shard], &plan->out[i]) != 0)
                return fl_fail(err, FL_EIO, "out of memory");
        }
        return FL_OK;
    }
    uint64_t used = 0;
    for (size_t i = 0; i < plan->n_out; i++) {
        uint64_t bytes = st_nbytes(plan->out[i].src->t);
        if (l->n == 0 || (used + bytes > max_shard_size && used > 0)) {
            l->n++;
            used = 0;
        }
        l->file_of[i] = l->n - 1;
        if (shard_add(&l->s[l->n - 1], &plan->out[i]) != 0)
            return fl_fail(err, FL_EIO, "out of memory");
        used += bytes;
    }
    if (l->n == 0)
        l->n = 1;
    for (size_t i = 0; i < l->n; i++) {
        char name[64];
        if (l->n == 1)
            snprintf(name, sizeof name, "model.safetensors");
        else
            snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", i + 1, l->n);
        if (!(l->s[i].file = strdup(name)))
            return fl_fail(err, FL_EIO, "out of memory");
    }
    return FL_OK;
}

/* The output file that holds tensor `name`, or NULL. */
static const char *layout_file_of(const out_layout *l, const fold_plan *plan, const char *name)
{
    const out_tensor *o = plan_find_out(plan, name);
    return o ? l->s[l->file_of[o - plan->out]].file : NULL;
}

/* The planned header of one output shard.  Everything is derived from the
 * source headers and the plan, so a resumed run can compare a finished
 * shard's header with this one byte for byte. */
typedef struct {
    st_tensor *ts;
    size_t *order;
    st_meta *meta;
    size_t n_meta;
    char *header;
    size_t header_size;
    uint64_t data_bytes;
} shard_header;

static void shard_header_free(shard_header *h)
{
    free(h->ts);
    free(h->order);
    free(h->meta);
    free(h->header);
    memset(h, 0, sizeof *h);
}

static fl_status shard_header_build(const checkpoint *ck, const fold_plan *plan, const out_layout *l,
                                    const out_shard *sh, const char *path, shard_header *h,
                                    fl_error *err)
{
    memset(h, 0, sizeof *h);
    size_t n_meta_cap = 1 + (sh->meta_src ? sh->meta_src->st.n_meta : ck->n_tensors);
    h->ts = calloc(sh->n ? sh->n : 1, sizeof *h->ts);
    h->order = calloc(sh->n ? sh->n : 1, sizeof *h->order);
    h->meta = calloc(n_meta_cap, sizeof *h->meta);
    if (!h->ts || !h->order || !h->meta)
        return fl_fail(err, FL_EIO, "out of memory");
    for (size_t i = 0; i < sh->n; i++) {
        const st_tensor *t = sh->t[i]->src->t;
        h->ts[i] = *t;
        h->ts[i].name = (char *)sh->t[i]->name;
        h->ts[i].begin = 0;
        h->ts[i].end = st_nbytes(t);
    }
    /* Metadata: "format": "pt" first, then the source's entries, less the
     * aliases that became real tensors or whose target is gone.  Re-sharded
     * output keeps only the aliases, each in the file of its target. */
    h->meta[h->n_meta++] = (st_meta){"format", "pt"};
    if (sh->meta_src) {
        for (size_t i = 0; i < sh->meta_src->st.n_meta; i++) {
            const st_meta *m = &sh->meta_src->st.meta[i];
            if (strcmp(m->key, "format") == 0)
                continue;
            const ckpt_tensor *alias = ckpt_find(ck, m->key);
            if (alias && alias->is_alias) {
                if (plan_find_out(plan, m->key))
                    continue;  /* materialised (untied) */
                const out_tensor *target = plan_find_out(plan, m->value);
                if (!target || target->op != OUT_COPY)
                    return fl_fail(err, FL_EINPUT,
                                   "%s: alias '%s' -> '%s' would point at a %s tensor; refusing to change what it means",
                                   sh->meta_src->path, m->key, m->value, target ? "folded" : "removed");
            }
            h->meta[h->n_meta++] = *m;
        }
    } else {
        for (size_t i = 0; i < ck->n_tensors; i++) {
            const ckpt_tensor *a = &ck->tensors[i];
            if (!a->is_alias || plan_find_out(plan, a->name))
                continue;
            const out_tensor *target = plan_find_out(plan, a->t->name);
            if (!target || target->op != OUT_COPY)
                return fl_fail(err, FL_EINPUT, "%s: alias '%s' -> '%s' would point at a %s tensor",
                               ck->shards[a->shard].path, a->name, a->t->name,
                               target ? "folded" : "removed");
            const char *file = layout_file_of(l, plan, a->t->name);
            if (file && strcmp(file, sh->file) == 0)
                h->meta[h->n_meta++] = (st_meta){(char *)a->name, a->t->name};
        }
    }
    fl_status s = st_layout(path, h->ts, sh->n, h->meta, h->n_meta, h->order, &h->header,
                            &h->header_size, err);
    if (s != FL_OK)
        return s;
    for (size_t i = 0; i < sh->n; i++)
        if (h->ts[i].end > h->data_bytes)
            h->data_bytes = h->ts[i].end;
    return FL_OK;
}

/* 1 when `path` already holds the finished shard: size and header as
 * planned (used by --resume, after the journal said it was completed). */
static int shard_is_complete(const char *path, const shard_header *h)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    struct stat st;
    int ok = fstat(fd, &st) == 0 && (uint64_t)st.st_size == h->header_size + h->data_bytes;
    char *buf = ok ? malloc(h->header_size) : NULL;
    ok = ok && buf && pread(fd, buf, h->header_size, 0) == (ssize_t)h->header_size &&
         memcmp(buf, h->header, h->header_size) == 0;
    free(buf);
    close(fd);
    return ok;
}

/* Writes one output shard: the planned header, then every tensor, on
 * `threads` workers pulling chunks from a shared list. */
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

static fl_status write_shard(const checkpoint *ck, const fold_plan *plan, const out_shard *sh,
                             const shard_header *h, const char *path, const convert_options *opt,
                             const shard_workers *wk, uint64_t done_base, uint64_t total,
                             fl_error *err)
{
    work_item *items = NULL;
    int fd = -1;
    fl_status s;
    unlink(path);  /* a partial file from an interrupted run */
    if ((s = create_file(path, &fd, err)) != FL_OK)
        return s;
    /* Reserve the space up front: a full disk fails here, not halfway. */
    int fa = posix_fallocate(fd, 0, (off_t)(h->header_size + h->data_bytes));
    if (fa == ENOSPC || fa == EFBIG) {
        s = fl_fail(err, FL_EIO, "%s: cannot reserve %llu bytes: %s", path,
                    (unsigned long long)(h->header_size + h->data_bytes), strerror(fa));
        goto out;
    }
    if ((s = write_all(fd, h->header, h->header_size, 0, path, err)) != FL_OK)
        goto out;

    /* Work items: chunks of at most buf_size bytes per folded tensor, whole
     * tensors for copies (copy_range chunks those itself). */
    size_t buf_size = wk->buf_size;
    size_t cap = 0, n_items = 0;
    for (size_t i = 0; i < sh->n; i++) {
        const out_tensor *o = sh->t[h->order[i]];
        const st_tensor *t = o->src->t;
        uint64_t numel;
        st_numel(t, &numel);
        size_t es = st_dtype_bits(t->dtype) / 8;
        uint64_t per = (o->op == OUT_COPY || es == 0) ? (numel ? numel : 1) : buf_size / es;
        if (per == 0)
            per = 1;
        for (uint64_t first = 0; first < numel || (numel == 0 && first == 0); first += per) {
            if (n_items == cap) {
                cap = cap ? cap * 2 : 64;
                work_item *grown = realloc(items, cap * sizeof *items);
                if (!grown) {
                    s = fl_fail(err, FL_EIO, "out of memory");
                    goto out;
                }
                items = grown;
            }
            uint64_t count = numel - first < per ? numel - first : per;
            items[n_items++] = (work_item){o, h->header_size + h->ts[h->order[i]].begin + first * es,
                                           first, count};
            if (numel == 0 || o->op == OUT_COPY)
                break;
        }
    }
    shard_job job = {.ck = ck, .out_fd = fd, .out_path = path, .items = items, .n_items = n_items,
                     .done_base = done_base, .total = total, .buf_size = buf_size,
                     .bufs = wk->bufs, .opt = opt,
                     .use_mmap = sigbus_handled()};
    atomic_init(&job.done, 0);
    if ((s = fl_pool_run(wk->pool, n_items, shard_item, &job, err)) != FL_OK)
        goto out;
    s = close_file(fd, path, opt->fsync, err);
    fd = -1;
out:
    if (fd >= 0)
        close(fd);
    free(items);
    return s;
}

/* ---------------------------------------------------------------------------
 * index, model card, other files */

/* qsort has no context argument: the names being sorted, per thread. */
static _Thread_local const char **sorting_names;

static int cmp_name_idx(const void *a, const void *b)
{
    return strcmp(sorting_names[*(const size_t *)a], sorting_names[*(const size_t *)b]);
}

/* model.safetensors.index.json in huggingface_hub's format (indent 2,
 * weight_map sorted), keeping the source's extra metadata keys. */
static fl_status write_index(const checkpoint *ck, const fold_plan *plan, const out_layout *l,
                             const char *tmp, uint64_t total_size, int sync, fl_error *err)
{
    strbuf b = {0};
    sb_str(&b, "{\n  \"metadata\": {\n");
    sb_printf(&b, "    \"total_size\": %llu", (unsigned long long)total_size);
    const cJSON *meta = ck->index ? cJSON_GetObjectItemCaseSensitive(ck->index, "metadata") : NULL;
    if (cJSON_IsObject(meta))
        for (const cJSON *m = meta->child; m; m = m->next) {
            if (!m->string || strcmp(m->string, "total_size") == 0)
                continue;
            char *v = cJSON_PrintUnformatted(m);
            if (!v)
                continue;
            sb_str(&b, ",\n    ");
            sb_json_string(&b, m->string);
            sb_str(&b, ": ");
            sb_str(&b, v);
            cJSON_free(v);
        }
    sb_str(&b, "\n  },\n  \"weight_map\": {\n");
    /* Every output tensor, plus the aliases that remain (in their target's
     * file, where the alias is recorded). */
    size_t n = 0;
    const char **names = calloc(plan->n_out + ck->n_tensors + 1, sizeof *names);
    const char **files = calloc(plan->n_out + ck->n_tensors + 1, sizeof *files);
    if (!names || !files) {
        free(names);
        free(files);
        free(b.p);
        return fl_fail(err, FL_EIO, "out of memory");
    }
    for (size_t i = 0; i < plan->n_out; i++) {
        names[n] = plan->out[i].name;
        files[n++] = l->s[l->file_of[i]].file;
    }
    const cJSON *wm = ck->index ? cJSON_GetObjectItemCaseSensitive(ck->index, "weight_map") : NULL;
    for (const cJSON *e = wm ? wm->child : NULL; e; e = e->next) {
        const ckpt_tensor *t = ckpt_find(ck, e->string);
        const char *file = t && t->is_alias && !plan_find_out(plan, e->string)
                               ? layout_file_of(l, plan, t->t->name) : NULL;
        if (file) {
            names[n] = t->name;
            files[n++] = file;
        }
    }
    /* Sort names and files together (names are unique). */
    size_t *idx = malloc((n ? n : 1) * sizeof *idx);
    if (!idx) {
        free(names);
        free(files);
        free(b.p);
        return fl_fail(err, FL_EIO, "out of memory");
    }
    for (size_t i = 0; i < n; i++)
        idx[i] = i;
    sorting_names = names;
    qsort(idx, n, sizeof *idx, cmp_name_idx);
    sorting_names = NULL;
    for (size_t k = 0; k < n; k++) {
        size_t i = idx[k];
        sb_str(&b, "    ");
        sb_json_string(&b, names[i]);
        sb_str(&b, ": ");
        sb_json_string(&b, files[i]);
        sb_str(&b, k + 1 < n ? ",\n" : "\n");
    }
    sb_str(&b, "  }\n}\n");
    free(idx);
    free(names);
    free(files);
    if (b.oom) {
        free(b.p);
        return fl_fail(err, FL_EIO, "out of memory");
    }
    char *path = fl_path_join(tmp, "model.safetensors.index.json");
    fl_status s = path ? write_whole_file(path, b.p, b.n, sync, err) : fl_fail(err, FL_EIO, "out of memory");
    free(path);
    free(b.p);
    return s;
}

static fl_status write_model_card(const checkpoint *ck, const fold_plan *plan, const char *tmp,
                                  const convert_options *opt, fl_error *err)
{
    char base[PATH_MAX], title[PATH_MAX];
    if (opt->base_model)
        snprintf(base, sizeof base, "%s", opt->base_model);
    else
        fl_basename(ck->dir, base, sizeof base);
    char *text = NULL;
    fl_status s = model_card(plan, base, fl_basename(opt->out_dir, title, sizeof title), &text, err);
    if (s != FL_OK)
        return s;
    char *path = fl_path_join(tmp, "README.md");
    s = path ? write_whole_file(path, text, strlen(text), opt->fsync, err) : fl_fail(err, FL_EIO, "out of memory");
    free(path);
    free(text);
    return s;
}

static fl_status copy_other_files(const checkpoint *ck, const char *tmp, int sync, fl_error *err)
{
    char buf[1 << 16];
    for (size_t i = 0; i < ck->n_other; i++) {
        const char *rel = ck->other_files[i];
        char *src = fl_path_join(ck->dir, rel), *dst = fl_path_join(tmp, rel);
        fl_status s = FL_OK;
        int in = -1, out = -1;
        struct stat st;
        if (!src || !dst)
            s = fl_fail(err, FL_EIO, "out of memory");
        else if ((in = open(src, O_RDONLY | O_CLOEXEC)) < 0 || fstat(in, &st) != 0)
            s = fl_fail(err, FL_EIO, "%s: cannot open: %s", src, strerror(errno));
        else if ((s = fl_mkdir_parents(tmp, rel, 0755, err)) == FL_OK && (s = create_file(dst, &out, err)) == FL_OK) {
            s = fl_copy_range(in, 0, out, 0, (uint64_t)st.st_size, src, dst, buf, sizeof buf, err);
            int fd = out;
            out = -1;
            if (s == FL_OK)
                s = close_file(fd, dst, sync, err);
            else
                close(fd);
        }
        if (in >= 0)
            close(in);
        if (out >= 0)
            close(out);
        free(src);
        free(dst);
        if (s != FL_OK)
            return s;
    }
    return FL_OK;
}

static void sync_dir(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

/* ---------------------------------------------------------------------------
 * the journal: which shards of the temporary directory are complete
 *
 * .flashify-journal starts with a fingerprint of the source (shard names,
 * sizes, mtimes) and of everything that shapes the output; each finished,
 * fsynced shard appends "done <file>".  --resume trusts a shard only when
 * the fingerprint matches, the journal lists it, and its size and header
 * are exactly the planned ones. */

#define JOURNAL ".flashify-journal"
#define LOCKFILE ".flashify-lock"

static uint64_t fnv1a(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

static uint64_t fingerprint(const checkpoint *ck, const fold_plan *plan, const convert_options *opt)
{
    uint64_t h = 0xcbf29ce484222325ull;
    h = fnv1a(h, FLASHIFY_VERSION, strlen(FLASHIFY_VERSION));
    char real[PATH_MAX];
    if (realpath(ck->dir, real))
        h = fnv1a(h, real, strlen(real) + 1);
    for (size_t i = 0; i < ck->n_shards; i++) {
        struct stat st;
        h = fnv1a(h, ck->shards[i].file, strlen(ck->shards[i].file) + 1);
        if (fstat(ck->shards[i].fd, &st) == 0) {
            h = fnv1a(h, &st.st_size, sizeof st.st_size);
            h = fnv1a(h, &st.st_mtim, sizeof st.st_mtim);
        }
    }
    int flags[4] = {plan->untie, plan->final_folded, plan->keep_norms, (int)plan->n_groups};
    h = fnv1a(h, flags, sizeof flags);
    h = fnv1a(h, plan->arch->model_type, strlen(plan->arch->model_type));
    h = fnv1a(h, &opt->max_shard_size, sizeof opt->max_shard_size);
    return h;
}

/* Reads the journal; fills done[i] for the shards it lists.  Returns 1 when
 * it exists and its fingerprint matches. */
static int journal_read(const char *tmp, uint64_t fp, const out_layout *l, char *done)
{
    char *path = fl_path_join(tmp, JOURNAL);
    FILE *f = path ? fopen(path, "r") : NULL;
    free(path);
    if (!f)
        return 0;
    char line[PATH_MAX + 16];
    int ok = 0;
    unsigned long long got;
    if (fgets(line, sizeof line, f) && sscanf(line, "flashify-journal 1 %llx", &got) == 1 && got == fp) {
        ok = 1;
        while (fgets(line, sizeof line, f)) {
            line[strcspn(line, "\n")] = '\0';
            if (strncmp(line, "done ", 5) != 0)
                continue;
            for (size_t i = 0; i < l->n; i++)
                if (strcmp(l->s[i].file, line + 5) == 0)
                    done[i] = 1;
        }
    }
    fclose(f);
    return ok;
}

static fl_status journal_append(int fd, const char *text, const char *tmp, fl_error *err)
{
    fl_status s = write_all(fd, text, strlen(text), (uint64_t)lseek(fd, 0, SEEK_END), tmp, err);
    if (s == FL_OK && fdatasync(fd) != 0)
        return fl_fail(err, FL_EIO, "%s/" JOURNAL ": fsync failed: %s", tmp, strerror(errno));
    return s;
}

/* Removes everything in the temporary directory but the lock file. */
static void clear_dir_except_lock(const char *tmp)
{
    DIR *d = opendir(tmp);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0 ||
            strcmp(e->d_name, LOCKFILE) == 0)
            continue;
        char *p = fl_path_join(tmp, e->d_name);
        if (p)
            remove_tree(p);
        free(p);
    }
    closedir(d);
}

static void note(const convert_options *opt, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note(const convert_options *opt, const char *fmt, ...)
{
    if (!opt->note)
        return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    opt->note(opt->progress_ctx, msg);
}

static fl_status write_everything(const checkpoint *ck, const fold_plan *plan, const char *tmp,
                                  const convert_options *opt, int journal_fd, const char *done_before,
                                  const out_layout *l, fl_error *err)
{
    uint64_t total = 0;
    for (size_t i = 0; i < plan->n_out; i++)
        total += st_nbytes(plan->out[i].src->t);
    uint64_t done = 0, tensor_bytes = 0;
    size_t resumed = 0;
    shard_workers wk;
    fl_status s = workers_new(opt, &wk, err);
    for (size_t i = 0; i < l->n && s == FL_OK; i++) {
        const out_shard *sh = &l->s[i];
        if (sh->n == 0 && l->n > 1)
            continue;  /* a source shard that held only norms */
        char *path = fl_path_join(tmp, sh->file);
        shard_header h;
        if (!path) {
            s = fl_fail(err, FL_EIO, "out of memory");
            break;
        }
        s = shard_header_build(ck, plan, l, sh, path, &h, err);
        if (s == FL_OK)
            s = fl_mkdir_parents(tmp, sh->file, 0755, err);
        if (s == FL_OK && done_before[i] && shard_is_complete(path, &h)) {
            resumed++;
        } else if (s == FL_OK) {
            s = write_shard(ck, plan, sh, &h, path, opt, &wk, done, total, err);
            if (s == FL_OK && journal_fd >= 0) {
                char line[PATH_MAX + 16];
                snprintf(line, sizeof line, "done %s\n", sh->file);
                s = journal_append(journal_fd, line, tmp, err);
            }
        }
        if (s == FL_OK) {
            tensor_bytes += h.data_bytes;
            done += h.header_size + h.data_bytes;
        }
        shard_header_free(&h);
        free(path);
    }
    workers_free(&wk);
    if (resumed)
        note(opt, "resumed: %zu of %zu shard(s) were already complete in the partial output", resumed, l->n);
    int want_index = opt->max_shard_size ? l->n > 1 : ck->has_index;
    if (s == FL_OK && want_index)
        s = write_index(ck, plan, l, tmp, tensor_bytes, opt->fsync, err);
    if (s == FL_OK) {
        char *cfg = NULL;
        size_t len = 0;
        char *path = fl_path_join(tmp, "config.json");
        s = path ? config_rewrite(ck, plan, &cfg, &len, err) : fl_fail(err, FL_EIO, "out of memory");
        if (s == FL_OK)
            s = write_whole_file(path, cfg, len, opt->fsync, err);
        free(cfg);
        free(path);
    }
    if (s == FL_OK)
        s = copy_other_files(ck, tmp, opt->fsync, err);
    if (s == FL_OK)
        s = write_model_card(ck, plan, tmp, opt, err);
    if (s == FL_OK && fl_interrupted)
        s = fl_fail(err, FL_EINTR, "interrupted");
    if (s == FL_OK && opt->progress)
        opt->progress(opt->progress_ctx, total, total);
    return s;
}

fl_status convert_write(const checkpoint *ck, const fold_plan *plan, const convert_options *opt,
                        fl_error *err)
{
    fl_status s = convert_check_output(ck, opt->out_dir, opt->force, err);
    if (s != FL_OK)
        return s;
    char out[PATH_MAX], tmp[PATH_MAX], old[PATH_MAX];
    if ((s = resolve_future(opt->out_dir, out, err)) != FL_OK)
        return s;
    char dirbuf[PATH_MAX], basebuf[PATH_MAX];
    snprintf(dirbuf, sizeof dirbuf, "%s", out);
    snprintf(basebuf, sizeof basebuf, "%s", out);
    const char *parent = dirname(dirbuf), *base = basename(basebuf);
    /* A hidden sibling on the same filesystem, so the final rename is
     * atomic; its name is fixed so that --resume finds it again. */
    int n = snprintf(tmp, sizeof tmp, "%s/.%s.flashify-partial", parent, base);
    int m = snprintf(old, sizeof old, "%s/.%s.flashify-old-%ld", parent, base, (long)getpid());
    if (n < 0 || n >= (int)sizeof tmp || m < 0 || m >= (int)sizeof old)
        return fl_fail(err, FL_EUSAGE, "%s: path too long", opt->out_dir);
    struct stat st;
    int existed = lstat(tmp, &st) == 0;
    if (existed && !S_ISDIR(st.st_mode))
        return fl_fail(err, FL_EUSAGE, "%s: exists and is not a directory; remove it", tmp);
    if (!existed && mkdir(tmp, 0755) != 0)
        return fl_fail(err, FL_EIO, "%s: cannot create the temporary directory: %s", tmp, strerror(errno));
    /* One writer per output: a second flashify on the same -o waits for no
     * one and fails here. */
    char *lock_path = fl_path_join(tmp, LOCKFILE);
    int lock_fd = lock_path ? open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644) : -1;
    if (lock_fd < 0 || flock(lock_fd, LOCK_EX | LOCK_NB) != 0) {
        s = fl_fail(err, FL_EUSAGE, "%s: another flashify is writing this output (%s is locked)",
                    opt->out_dir, tmp);
        if (lock_fd >= 0)
            close(lock_fd);
        free(lock_path);
        return s;
    }
    out_layout l;
    char *done_before = NULL;
    int journal_fd = -1;
    if ((s = layout_build(ck, plan, opt->max_shard_size, &l, err)) != FL_OK)
        goto finish;
    done_before = calloc(l.n + 1, 1);
    if (!done_before) {
        s = fl_fail(err, FL_EIO, "out of memory");
        goto finish;
    }
    uint64_t fp = fingerprint(ck, plan, opt);
    int resuming = existed && opt->resume && journal_read(tmp, fp, &l, done_before);
    if (existed && !resuming) {
        if (opt->resume)
            note(opt, "--resume: the partial output in %s was made from other input or options; starting over", tmp);
        else
            note(opt, "removing a partial output left by an interrupted run (%s); use --resume to continue one", tmp);
        clear_dir_except_lock(tmp);
        memset(done_before, 0, l.n + 1);
    }
    {
        char *jpath = fl_path_join(tmp, JOURNAL);
        journal_fd = jpath ? open(jpath, O_WRONLY | O_CREAT | O_CLOEXEC | (resuming ? O_APPEND : O_TRUNC), 0644) : -1;
        free(jpath);
        if (journal_fd < 0) {
            s = fl_fail(err, FL_EIO, "%s/" JOURNAL ": cannot create: %s", tmp, strerror(errno));
            goto finish;
        }
        if (!resuming) {
            char head[64];
            snprintf(head, sizeof head, "flashify-journal 1 %016llx\n", (unsigned long long)fp);
            if ((s = journal_append(journal_fd, head, tmp, err)) != FL_OK)
                goto finish;
        }
    }

    s = write_everything(ck, plan, tmp, opt, journal_fd, done_before, &l, err);
    if (s == FL_OK) {
        /* The bookkeeping files are not part of the output. */
        close(journal_fd);
        journal_fd = -1;
        char *jpath = fl_path_join(tmp, JOURNAL);
        if (jpath)
            unlink(jpath);
        free(jpath);
        unlink(lock_path);  /* still held: flock follows the open file */
        if (opt->fsync)
            sync_dir(tmp);
    }
    if (s == FL_OK && opt->before_commit)
        s = opt->before_commit(tmp, opt->commit_ctx, err);
    if (s == FL_OK && fl_interrupted)
        s = fl_fail(err, FL_EINTR, "interrupted");
    if (s == FL_OK) {
        int replacing = lstat(out, &st) == 0;
        if (replacing && rename(out, old) != 0)
            s = fl_fail(err, FL_EIO, "%s: cannot move the existing output aside: %s", out, strerror(errno));
        else if (rename(tmp, out) != 0) {
            s = fl_fail(err, FL_EIO, "%s: cannot rename the finished output into place: %s", out, strerror(errno));
            if (replacing)
                rename(old, out);
        } else {
            if (replacing)
                remove_tree(old);
            if (opt->fsync)
                sync_dir(parent);
        }
    }
finish:
    if (journal_fd >= 0)
        close(journal_fd);
    if (s != FL_OK) {
        /* With --resume, an interrupted or failed write (full disk, Ctrl-C)
         * keeps its finished shards for the next run; otherwise nothing is
         * left behind. */
        if (opt->resume && (s == FL_EINTR || s == FL_EIO))
            note(opt, "kept the partial output in %s; run the same command with --resume to continue", tmp);
        else
            remove_tree(tmp);
    }
    close(lock_fd);
    free(lock_path);
    free(done_before);
    layout_free(&l);
    return s;
}
