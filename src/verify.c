/* verify.c — the equivalence check behind `flashify verify` and --strict
 * (see verify.h).
 *
 * Sections: a small string builder, the tensor check (threaded over
 * tensors, streamed in blocks), the config check, the forward check, and
 * the report (text or JSON). */
#include "flashify/verify.h"
#include "flashify/util.h"

#include "flashify/checkpoint.h"
#include "flashify/dtype.h"
#include "flashify/fold.h"
#include "flashify/forward.h"
#include "flashify/plan.h"
#include "flashify/pool.h"
#include "flashify/safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_PROBLEMS 10          /* problems listed in the report */
#define BLOCK_BYTES (4u << 20)   /* tensor bytes compared per read */
#define MAX_TOKENS 4096

/* ----------------------------------------------------------------------------
 * Tensor check */

enum { TC_COPY, TC_FOLD, TC_NORM };

typedef struct {
    const char *name;
    int kind;                     /* TC_* */
    const ckpt_tensor *src;       /* source bytes (the embedding for an untied head) */
    const ckpt_tensor *got;       /* the output tensor */
    const fold_group *group;      /* TC_FOLD */
    int axis;                     /* TC_FOLD: the source's input axis */
    /* results */
    int bad;                      /* a problem that makes the pair not equivalent */
    uint64_t numel, n_far, n_ulp1; /* elements differing by > 1 ulp / by 1 ulp */
    uint64_t first;               /* first differing element */
    double want, have;
    char msg[512];
    fl_status io;
    fl_error err;
} tcheck;

typedef struct {
    const checkpoint *src, *out;
    tcheck *checks;
    unsigned char **bufs;   /* three BUF_BYTES buffers per pool worker */
    const verify_options *opt;
    _Atomic uint64_t done;  /* bytes compared, of total (progress) */
    uint64_t total;
} tpool;

#define BUF_BYTES (BLOCK_BYTES * 2u + 16)

static uint64_t load_bits(int d, const unsigned char *buf, size_t i)
{
    switch (st_dtype_bits(d)) {
    case 64: { uint64_t v; memcpy(&v, buf + 8 * i, 8); return v; }
    case 32: { uint32_t v; memcpy(&v, buf + 4 * i, 4); return v; }
    case 16: { uint16_t v; memcpy(&v, buf + 2 * i, 2); return v; }
    default: return buf[i];
    }
}

/* Distance in ulps between two floats of `nb` bits given as bit patterns:
 * sign-magnitude mapped onto a monotone integer line.  NaNs are far from
 * everything (UINT64_MAX) unless the bits are identical. */
static uint64_t ulp_distance(uint64_t a, uint64_t b, int d)
{
    if (a == b)
        return 0;
    double va = dtype_load(d, &a, 0), vb = dtype_load(d, &b, 0);
    if (isnan(va) || isnan(vb))
        return UINT64_MAX;
    unsigned nb = st_dtype_bits(d);
    uint64_t mask = (nb == 64 ? ~0ULL : (1ULL << nb) - 1) >> 1;
    uint64_t sa = a >> (nb - 1) & 1, sb = b >> (nb - 1) & 1;
    uint64_t oa = sa ? (1ULL << 63) - (a & mask) : (1ULL << 63) + (a & mask);
    uint64_t ob = sb ? (1ULL << 63) - (b & mask) : (1ULL << 63) + (b & mask);
    uint64_t dist = oa > ob ? oa - ob : ob - oa;
    return dist ? dist : 1; /* +0 vs -0: equal values, different bits */
}

static void describe_index(const st_tensor *t, uint64_t i, char *buf, size_t cap)
{
    fold_describe_index(t->shape, t->ndim, i, buf, cap);
}

/* Compares the output tensor with the expected bytes, block by block: a
 * verbatim copy (TC_COPY) or the source folded with the group's gain
 * (TC_FOLD, via fold_range: the same single rounding the converter uses,
 * streamed in blocks that may start and end anywhere in a row). */
static void check_stream(tpool *p, tcheck *c, unsigned char *a, unsigned char *b,
                         unsigned char *e)
{
    const st_tensor *st = c->src->t;
    int d = st->dtype;
    unsigned esz = st_dtype_bits(d) / 8;
    int is_float = st_dtype_is_foldable(d);
    uint64_t total = st_nbytes(st);
    fold_axis ax = {0, 0};
    if (c->kind == TC_FOLD)
        ax = fold_axis_of(st->shape, st->ndim, c->axis);
    int w_f64 = 0;
    if (c->kind == TC_FOLD) {
        const ckpt_tensor *nt = ckpt_find(p->src, c->group->norm);
        w_f64 = nt && nt->t->dtype == ST_F64;
    }
    int have_first = 0, have_far = 0;
    uint64_t off = 0;
    while (off < total) {
        uint64_t n = c->kind == TC_FOLD ? BLOCK_BYTES - BLOCK_BYTES % esz : BLOCK_BYTES;
        if (n > total - off)
            n = total - off;
        if ((c->io = ckpt_read(p->src, c->src, off, a, (size_t)n, &c->err)) != FL_OK ||
            (c->io = ckpt_read(p->out, c->got, off, b, (size_t)n, &c->err)) != FL_OK)
            return;
        const unsigned char *want = a;
        if (c->kind == TC_FOLD) {
            long bad = fold_range(d, a, e, off / esz, n / esz, ax, c->group->w, c->group->gain, w_f64);
            if (bad >= 0) {
                char at[64];
                describe_index(st, off / esz + (uint64_t)bad, at, sizeof at);
                snprintf(c->msg, sizeof c->msg, "the fold of '%s' overflows at %s", c->name, at);
                c->bad = 1;
                return;
            }
            want = e;
        }
        if (memcmp(want, b, (size_t)n) != 0) {
            size_t ne = is_float ? (size_t)n / esz : (size_t)n;
            for (size_t i = 0; i < ne; i++) {
                uint64_t x = is_float ? load_bits(d, want, i) : want[i];
                uint64_t y = is_float ? load_bits(d, b, i) : b[i];
                if (x == y)
                    continue;
                uint64_t dist = is_float ? ulp_distance(x, y, d) : UINT64_MAX;
                if (dist == 1)
                    c->n_ulp1++;
                else
                    c->n_far++;
                /* Report the first element that differs by more than 1
                 * ulp, or else the first that differs at all. */
                if (!have_first || (dist != 1 && !have_far)) {
                    have_first = 1;
                    have_far = dist != 1;
                    c->first = (is_float ? off / esz : off) + i;
                    c->want = is_float ? dtype_load(d, want, i) : want[i];
                    c->have = is_float ? dtype_load(d, b, i) : b[i];
                }
            }
        }
        off += n;
        uint64_t done = atomic_fetch_add(&p->done, n) + n;
        if (p->opt->progress)
            p->opt->progress(p->opt->progress_ctx, "tensor check", done, p->total);
        if (fl_interrupted) {
            c->io = fl_fail(&c->err, FL_EINTR, "interrupted");
            return;
        }
    }
}

static void check_norm(const tpool *p, tcheck *c)
{
    uint64_t numel;
    if (st_numel(c->got->t, &numel) != 0 || numel > (1u << 26)) {
        c->bad = 1;
        snprintf(c->msg, sizeof c->msg, "norm '%s' in the output has an implausible size", c->name);
        return;
    }
    double *v = malloc((numel ? numel : 1) * sizeof *v);
    if (!v) {
        c->io = fl_fail(&c->err, FL_EIO, "out of memory");
        return;
    }
    size_t n = 0;
    c->io = ckpt_read_vector(p->out, c->got, v, (size_t)numel, &n, &c->err);
    double id = fold_identity(c->group->gain);
    for (size_t i = 0; c->io == FL_OK && i < n; i++)
        if (v[i] != id) {
            c->bad = 1;
            c->n_far++;
            if (c->n_far == 1) {
                c->first = i;
                c->want = id;
                c->have = v[i];
            }
        }
    c->numel = n;
    if (c->bad)
        snprintf(c->msg, sizeof c->msg,
                 "norm '%s' is still in the output with a non-identity weight (element %llu is %.9g, "
                 "identity %g; %llu of %zu elements differ), although its consumers are folded: "
                 "the gain would be applied twice",
                 c->name, (unsigned long long)c->first, c->have, id,
                 (unsigned long long)c->n_far, n);
    free(v);
}

/* One tensor of the check (a pool item).  Problems found are recorded in
 * the tcheck; only I/O failures stop the pool. */
static fl_status tcheck_item(void *ctx, size_t i, int worker, fl_error *err)
{
    tpool *p = ctx;
    tcheck *c = &p->checks[i];
    unsigned char **buf = p->bufs + 3 * worker;
    if (c->kind == TC_NORM) {
        check_norm(p, c);
    } else if (c->kind == TC_FOLD && st_nbytes(c->src->t) / c->src->t->shape[0] > BLOCK_BYTES * 2u) {
        /* A single row wider than the buffers cannot be folded in blocks. */
        c->io = fl_fail(&c->err, FL_EINPUT, "tensor '%s' has rows wider than %u bytes",
                        c->name, BLOCK_BYTES * 2u);
    } else {
        check_stream(p, c, buf[0], buf[1], buf[2]);
        if (c->io == FL_OK && !c->bad)
            st_numel(c->src->t, &c->numel);
    }
    if (c->io != FL_OK) {
        *err = c->err;
        return c->io;
    }
    return FL_OK;
}

typedef struct {
    size_t n_copy, n_fold, n_removed, n_removed_present, n_ulp_tensors;
    uint64_t n_ulp_elems, n_bytes;
    int exact;
    size_t n_problems;
    char *problems[MAX_PROBLEMS];
    int config_ok;
    int ok;
} tsummary;

static void add_problem(tsummary *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add_problem(tsummary *s, const char *fmt, ...)
{
    s->ok = 0;
    if (s->n_problems < MAX_PROBLEMS) {
        char buf[768];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(buf, sizeof buf, fmt, ap);
        va_end(ap);
        s->problems[s->n_problems] = strdup(buf);
    }
    s->n_problems++;
}

static int same_shape(const st_tensor *a, const st_tensor *b)
{
    if (a->ndim != b->ndim || a->dtype != b->dtype)
        return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i])
            return 0;
    return 1;
}

static void shape_str(const st_tensor *t, char *buf, size_t cap)
{
    size_t n = (size_t)snprintf(buf, cap, "%s [", st_dtype_name(t->dtype));
    for (int i = 0; i < t->ndim && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%llu", i ? ", " : "", (unsigned long long)t->shape[i]);
    if (n < cap)
        snprintf(buf + n, cap - n, "]");
}

static int cmp_cstr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Runs the tensor check of `out` against the plan of `src`. */
static fl_status tensor_check(const checkpoint *src, const checkpoint *out, const fold_plan *plan,
                              const verify_options *opt, tsummary *s, fl_error *err)
{
    s->ok = 1;
    tcheck *checks = calloc(plan->n_out + plan->n_dropped + 1, sizeof *checks);
    if (!checks)
        return fl_fail(err, FL_EIO, "out of memory");
    size_t n = 0;
    char sa[128], sb[128];

    /* Plan entries: copies and folds must be present with the same shape. */
    for (size_t i = 0; i < plan->n_out; i++) {
        const out_tensor *o = &plan->out[i];
        const ckpt_tensor *got = ckpt_find(out, o->name);
        if (!got) {
            add_problem(s, "tensor '%s' is missing from the output", o->name);
            continue;
        }
        if (!same_shape(o->src->t, got->t)) {
            shape_str(got->t, sa, sizeof sa);
            shape_str(o->src->t, sb, sizeof sb);
            add_problem(s, "tensor '%s' is %s in the output, expected %s", o->name, sa, sb);
            continue;
        }
        tcheck *c = &checks[n++];
        c->name = o->name;
        c->kind = o->op == OUT_FOLD ? TC_FOLD : TC_COPY;
        c->src = o->src;
        c->got = got;
        c->group = o->group;
        c->axis = o->axis;
        if (c->kind == TC_FOLD && ((got->t->ndim != 2 && got->t->ndim != 3) || got->t->shape[0] == 0)) {
            n--;
            add_problem(s, "folded tensor '%s' is not a matrix or 3-D experts", o->name);
        }
    }
    /* Dropped norms: absent, or present with the identity value. */
    for (size_t i = 0; i < plan->n_dropped; i++) {
        const char *norm = plan->dropped[i];
        const ckpt_tensor *got = ckpt_find(out, norm);
        s->n_removed++;
        if (!got)
            continue;
        const fold_group *g = NULL;
        for (size_t j = 0; j < plan->n_groups && !g; j++)
            if (strcmp(plan->groups[j].norm, norm) == 0)
                g = &plan->groups[j];
        if (!g || !st_dtype_is_foldable(got->t->dtype)) {
            add_problem(s, "norm '%s' is still in the output as %s", norm,
                        st_dtype_name(got->t->dtype));
            continue;
        }
        s->n_removed_present++;
        tcheck *c = &checks[n++];
        c->name = norm;
        c->kind = TC_NORM;
        c->got = got;
        c->group = g;
    }
    /* Output tensors that the plan does not account for. */
    for (size_t i = 0; i < out->n_tensors; i++) {
        const ckpt_tensor *t = &out->tensors[i];
        if (plan_find_out(plan, t->name))
            continue;
        if (bsearch(&t->name, plan->dropped, plan->n_dropped, sizeof *plan->dropped, cmp_cstr))
            continue;
        const ckpt_tensor *st = ckpt_find(src, t->name);
        if (t->is_alias && st && st->is_alias)
            continue; /* an alias kept as in the source (--keep-tied) */
        add_problem(s, "tensor '%s' is in the output but not accounted for by the plan of the source",
                    t->name);
    }

    /* Compare contents, tensors spread over the workers. */
    int nt = opt->threads > 0 ? opt->threads : fl_cpu_count();
    if (nt > 16)
        nt = 16;
    if ((size_t)nt > n)
        nt = n ? (int)n : 1;
    fl_pool *workers = fl_pool_new(nt);
    unsigned char **bufs = workers ? calloc(3 * (size_t)fl_pool_size(workers), sizeof *bufs) : NULL;
    int have_bufs = bufs != NULL;
    for (int i = 0; have_bufs && i < 3 * fl_pool_size(workers); i++)
        have_bufs = (bufs[i] = malloc(BUF_BYTES)) != NULL;
    tpool pool = {src, out, checks, bufs, opt, 0, 0};
    for (size_t i = 0; i < n; i++)
        pool.total += checks[i].kind == TC_NORM ? 0 : st_nbytes(checks[i].got->t);
    fl_status run = have_bufs ? fl_pool_run(workers, n, tcheck_item, &pool, err)
                              : fl_fail(err, FL_EIO, "out of memory");
    if (run == FL_OK && opt->progress)
        opt->progress(opt->progress_ctx, "tensor check", pool.total, pool.total);
    for (int i = 0; bufs && i < 3 * fl_pool_size(workers); i++)
        free(bufs[i]);
    free(bufs);
    fl_pool_free(workers);
    if (run != FL_OK) {
        free(checks);
        return run;
    }

    fl_status st = FL_OK;
    for (size_t i = 0; i < n; i++) {
        tcheck *c = &checks[i];
        if (c->io != FL_OK) {
            if (err)
                *err = c->err;
            st = c->io;
            break;
        }
        s->n_bytes += c->got ? st_nbytes(c->got->t) : 0;
        if (c->kind == TC_NORM) {
            if (c->bad)
                add_problem(s, "%s", c->msg);
            continue;
        }
        if (c->bad) {
            add_problem(s, "%s", c->msg);
            continue;
        }
        /* The counts are of tensors that passed; the others are problems. */
        if (!c->n_far && !c->n_ulp1) {
            if (c->kind == TC_COPY)
                s->n_copy++;
            else
                s->n_fold++;
            continue;
        }
        char at[64];
        describe_index(c->src->t, c->first, at, sizeof at);
        if (c->kind == TC_COPY) {
            add_problem(s, "tensor '%s' should be a byte-identical copy of the source, but element %s "
                        "is %.9g instead of %.9g (%llu elements differ)",
                        c->name, at, c->have, c->want,
                        (unsigned long long)(c->n_far + c->n_ulp1));
        } else if (c->n_far || s->exact) {
            add_problem(s, "folded tensor '%s' differs from the correctly rounded product: element %s "
                        "is %.9g, expected %.9g (%llu elements differ by more than 1 ulp, %llu by 1 ulp)",
                        c->name, at, c->have, c->want, (unsigned long long)c->n_far,
                        (unsigned long long)c->n_ulp1);
        } else {
            s->n_fold++;
            s->n_ulp_tensors++;
            s->n_ulp_elems += c->n_ulp1;
        }
    }
    free(checks);
    return st;
}

/* ----------------------------------------------------------------------------
 * Config check: equal except tie_word_embeddings and the marker keys. */

static void strip_keys(cJSON *j)
{
    static const char *keys[] = {"tie_word_embeddings", "flashnorm_folded", "flash_norm"};
    for (size_t i = 0; i < 3; i++)
        cJSON_DeleteItemFromObjectCaseSensitive(j, keys[i]);
    cJSON *tc = cJSON_GetObjectItemCaseSensitive(j, "text_config");
    if (cJSON_IsObject(tc))
        for (size_t i = 0; i < 3; i++)
            cJSON_DeleteItemFromObjectCaseSensitive(tc, keys[i]);
}

/* First differing path between two JSON values ("" when equal). */
static int json_diff(const cJSON *a, const cJSON *b, const char *path, char *out, size_t cap)
{
    if (cJSON_Compare(a, b, 1))
        return 0;
    if (cJSON_IsObject(a) && cJSON_IsObject(b)) {
        char sub[512];
        for (const cJSON *x = a->child; x; x = x->next) {
            const cJSON *y = cJSON_GetObjectItemCaseSensitive(b, x->string);
            snprintf(sub, sizeof sub, "%s%s%s", path, *path ? "." : "", x->string);
            if (!y) {
                snprintf(out, cap, "key '%s' is missing from the output", sub);
                return 1;
            }
            if (json_diff(x, y, sub, out, cap))
                return 1;
        }
        for (const cJSON *y = b->child; y; y = y->next)
            if (!cJSON_GetObjectItemCaseSensitive(a, y->string)) {
                snprintf(out, cap, "key '%s%s%s' was added in the output", path, *path ? "." : "",
                         y->string);
                return 1;
            }
    }
    char *ja = cJSON_PrintUnformatted(a), *jb = cJSON_PrintUnformatted(b);
    snprintf(out, cap, "'%s' is %.80s in the output, %.80s in the source", *path ? path : "config",
             jb ? jb : "?", ja ? ja : "?");
    free(ja);
    free(jb);
    return 1;
}

static int json_true(const cJSON *o, const char *key)
{
    return cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, key));
}

static void config_check(const checkpoint *src, const checkpoint *out, const fold_plan *plan,
                         tsummary *s)
{
    s->config_ok = 1;
    size_t before = s->n_problems;
    cJSON *a = cJSON_Duplicate(src->cfg.json, 1), *b = cJSON_Duplicate(out->cfg.json, 1);
    if (!a || !b) {
        add_problem(s, "config.json: out of memory");
    } else {
        strip_keys(a);
        strip_keys(b);
        char where[768];
        if (json_diff(a, b, "", where, sizeof where))
            add_problem(s, "config.json differs beyond tie_word_embeddings and the marker keys: %s", where);
    }
    cJSON_Delete(a);
    cJSON_Delete(b);
    /* tie_word_embeddings: false once the head is materialised (HF v4 ties
     * when the key is absent and would overwrite lm_head). */
    const cJSON *tie = cJSON_GetObjectItemCaseSensitive(out->cfg.json, "tie_word_embeddings");
    const cJSON *tc = cJSON_GetObjectItemCaseSensitive(out->cfg.json, "text_config");
    const cJSON *ttie = cJSON_IsObject(tc) ? cJSON_GetObjectItemCaseSensitive(tc, "tie_word_embeddings") : NULL;
    if (plan->untie) {
        if (!cJSON_IsFalse(tie) && !(ttie && cJSON_IsFalse(ttie) && !tie))
            add_problem(s, "config.json: lm_head is materialised but tie_word_embeddings is not false "
                        "(loaders would tie the head back to the embedding)");
        if (ttie && !cJSON_IsFalse(ttie))
            add_problem(s, "config.json: text_config.tie_word_embeddings must be false as well");
    } else {
        const cJSON *st = cJSON_GetObjectItemCaseSensitive(src->cfg.json, "tie_word_embeddings");
        if (!cJSON_Compare(st, tie, 1) && !(st == NULL && tie == NULL))
            add_problem(s, "config.json: tie_word_embeddings changed although the head was not untied");
    }
    /* The marker makes loaders drop post-attention norms: wrong where the
     * plan keeps some norm weights (Gemma2/3, OLMo2). */
    if (!plan->marker && (json_true(out->cfg.json, "flashnorm_folded") || json_true(out->cfg.json, "flash_norm")))
        add_problem(s, "config.json: the FlashNorm marker is set, but this model keeps norm weights "
                    "that marker-aware loaders would drop");
    if (s->n_problems != before)
        s->config_ok = 0;
}

/* ----------------------------------------------------------------------------
 * Forward check */

typedef struct {
    int ran;
    char skipped[512];
    size_t n_tokens;
    int32_t *tokens;
    double max_abs, max_rel, kl_max, kl_mean, tol;
    const char *tol_dtype;
    size_t top1_agree;
    long first_bad;
    char bad[512];
    char desc[200];
    double secs;
    int ok;
} fsummary;

/* Parses "1,2,3" (spaces allowed). */
static fl_status parse_tokens(const char *s, int32_t **out, size_t *n, fl_error *err)
{
    int32_t *t = malloc(MAX_TOKENS * sizeof *t);
    if (!t)
        return fl_fail(err, FL_EIO, "out of memory");
    size_t k = 0;
    const char *p = s;
    while (*p) {
        while (*p == ' ')
            p++;
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v > INT32_MAX || k == MAX_TOKENS) {
            free(t);
            return fl_fail(err, FL_EUSAGE, "--tokens: expected up to %d comma-separated token ids >= 0, got '%s'",
                           MAX_TOKENS, s);
        }
        t[k++] = (int32_t)v;
        p = end;
        while (*p == ' ')
            p++;
        if (*p == ',')
            p++;
        else if (*p) {
            free(t);
            return fl_fail(err, FL_EUSAGE, "--tokens: unexpected '%c' in '%s'", *p, s);
        }
    }
    if (!k) {
        free(t);
        return fl_fail(err, FL_EUSAGE, "--tokens: no token ids in '%s'", s);
    }
    *out = t;
    *n = k;
    return FL_OK;
}

double verify_default_tolerance(const char *dtype)
{
    if (!strcmp(dtype, "BF16"))
        return 1e-1;
    if (!strcmp(dtype, "F16"))
        return 2e-2;
    return 1e-4;
}

/* The narrowest float dtype the output's folded tensors use (the one whose
 * rounding the fold adds); the embedding's when nothing is folded. */
static const char *fold_dtype(const checkpoint *src, const fold_plan *plan)
{
    int rank = -1;
    const char *name = NULL;
    for (size_t i = 0; i < plan->n_out; i++) {
        if (plan->out[i].op != OUT_FOLD)
            continue;
        int d = plan->out[i].src->t->dtype;
        int r = d == ST_BF16 ? 3 : d == ST_F16 ? 2 : d == ST_F32 ? 1 : 0;
        if (r > rank) {
            rank = r;
            name = st_dtype_name(d);
        }
    }
    if (!name) {
        const ckpt_tensor *e = ckpt_find(src, plan->embed_name);
        name = e ? st_dtype_name(e->t->dtype) : "F32";
    }
    return name;
}

static void compare_logits(const float *a, const float *b, long V, size_t T, fsummary *f)
{
    double kl_sum = 0;
    for (size_t t = 0; t < T; t++) {
        const float *x = a + t * V, *y = b + t * V;
        double amax = 0, dmax = 0, mx = -INFINITY, my = -INFINITY;
        long ia = 0, ib = 0;
        for (long v = 0; v < V; v++) {
            amax = fmax(amax, fabs((double)x[v]));
            dmax = fmax(dmax, fabs((double)x[v] - (double)y[v]));
            if (x[v] > x[ia]) ia = v;
            if (y[v] > y[ib]) ib = v;
            mx = fmax(mx, x[v]);
            my = fmax(my, y[v]);
        }
        double sx = 0, sy = 0;
        for (long v = 0; v < V; v++) {
            sx += exp((double)x[v] - mx);
            sy += exp((double)y[v] - my);
        }
        double lx = mx + log(sx), ly = my + log(sy), kl = 0;
        for (long v = 0; v < V; v++) {
            double pa = exp((double)x[v] - lx);
            kl += pa * (((double)x[v] - lx) - ((double)y[v] - ly));
        }
        if (kl < 0 || isnan(dmax))
            kl = isnan(dmax) ? INFINITY : 0; /* rounding below zero; NaN logits fail */
        if (isnan(dmax))
            dmax = INFINITY;
        double scale = fmax(1.0, amax), rel = dmax / scale;
        f->max_abs = fmax(f->max_abs, dmax);
        f->max_rel = fmax(f->max_rel, rel);
        f->kl_max = fmax(f->kl_max, kl);
        kl_sum += kl;
        if (ia == ib)
            f->top1_agree++;
        char why[400] = "";
        if (!(rel <= f->tol))
            snprintf(why, sizeof why, "max |dlogit| %.4g = %.4g of the logit scale %.4g > tolerance %g",
                     dmax, rel, scale, f->tol);
        else if (ia != ib && (x[ia] - x[ib]) > f->tol * scale)
            snprintf(why, sizeof why, "top-1 token %ld in the output, %ld in the source, which prefers "
                     "it by %.4g", ib, ia, (double)(x[ia] - x[ib]));
        else if (kl > 10 * f->tol * f->tol)
            snprintf(why, sizeof why, "KL divergence %.4g > %.4g", kl, 10 * f->tol * f->tol);
        if (why[0]) {
            if (f->first_bad < 0) {
                f->first_bad = (long)t;
                snprintf(f->bad, sizeof f->bad, "position %zu (token %d): %s", t, (int)f->tokens[t], why);
            }
            f->ok = 0;
        }
    }
    f->kl_mean = T ? kl_sum / (double)T : 0;
}

/* verify_options.progress for one forward pass (a fwd_progress_fn). */
typedef struct {
    const verify_options *opt;
    const char *phase;
} fwd_phase;

static void fwd_phase_progress(void *ctx, uint64_t done, uint64_t total)
{
    const fwd_phase *ph = ctx;
    ph->opt->progress(ph->opt->progress_ctx, ph->phase, done, total);
}

static fl_status forward_check(const checkpoint *src, const checkpoint *out, const fold_plan *plan,
                               const verify_options *opt, fsummary *f, fl_error *err)
{
    f->ok = 1;
    f->first_bad = -1;
    f->tol_dtype = fold_dtype(src, plan);
    f->tol = opt->tolerance > 0 ? opt->tolerance : verify_default_tolerance(f->tol_dtype);
    double t0 = fl_now();
    fwd_model *ms = NULL, *mo = NULL;
    fl_error e2 = {0};
    fl_status s = fwd_open(src, opt->threads, &ms, &e2);
    if (s == FL_EINPUT) {
        /* No reference pass for this model (family, rope type...): say so. */
        snprintf(f->skipped, sizeof f->skipped, "%.400s", e2.msg);
        return FL_OK;
    }
    if (s != FL_OK) {
        if (err)
            *err = e2;
        return s;
    }
    fwd_phase ps = {opt, "forward pass (source)"}, po = {opt, "forward pass (output)"};
    if (opt->progress)
        fwd_set_progress(ms, fwd_phase_progress, &ps);
    long V = fwd_vocab(ms);
    snprintf(f->desc, sizeof f->desc, "%s", fwd_describe(ms));
    if (opt->tokens) {
        if ((s = parse_tokens(opt->tokens, &f->tokens, &f->n_tokens, err)) != FL_OK)
            goto done;
        for (size_t i = 0; i < f->n_tokens; i++)
            if (f->tokens[i] >= V) {
                s = fl_fail(err, FL_EUSAGE, "--tokens: id %d is outside the vocabulary (0..%ld)",
                            (int)f->tokens[i], V - 1);
                goto done;
            }
    } else {
        /* BOS, then 16 ids from a fixed LCG (Numerical Recipes constants):
         * deterministic, spread over the whole vocabulary. */
        f->n_tokens = 17;
        f->tokens = malloc(f->n_tokens * sizeof *f->tokens);
        if (!f->tokens) {
            s = fl_fail(err, FL_EIO, "out of memory");
            goto done;
        }
        f->tokens[0] = (int32_t)fwd_bos(ms);
        uint32_t x = 20240607u;
        for (size_t i = 1; i < f->n_tokens; i++) {
            x = x * 1664525u + 1013904223u;
            f->tokens[i] = (int32_t)((x >> 8) % (uint32_t)V);
        }
    }
    s = fwd_open(out, opt->threads, &mo, &e2);
    if (s == FL_EINPUT) {
        f->ran = 1;
        f->ok = 0;
        snprintf(f->bad, sizeof f->bad, "the output cannot be run: %.400s", e2.msg);
        s = FL_OK;
        goto done;
    }
    if (s != FL_OK) {
        if (err)
            *err = e2;
        goto done;
    }
    if (opt->progress)
        fwd_set_progress(mo, fwd_phase_progress, &po);
    if (fwd_vocab(mo) != V) {
        f->ran = 1;
        f->ok = 0;
        snprintf(f->bad, sizeof f->bad, "the output has %ld logits per position, the source %ld",
                 fwd_vocab(mo), V);
        goto done;
    }
    size_t T = f->n_tokens;
    float *la = malloc(T * (size_t)V * sizeof *la), *lb = malloc(T * (size_t)V * sizeof *lb);
    if (!la || !lb) {
        free(la);
        free(lb);
        s = fl_fail(err, FL_EIO, "out of memory for %zu x %ld logits", T, V);
        goto done;
    }
    if ((s = fwd_logits(ms, f->tokens, T, la, err)) == FL_OK &&
        (s = fwd_logits(mo, f->tokens, T, lb, err)) == FL_OK) {
        f->ran = 1;
        compare_logits(la, lb, V, T, f);
        if (opt->dump_logits) {
            FILE *fp = fopen(opt->dump_logits, "wb");
            if (!fp || fwrite(la, sizeof *la, T * (size_t)V, fp) != T * (size_t)V)
                s = fl_fail(err, FL_EIO, "%s: cannot write the logits: %s", opt->dump_logits,
                            strerror(errno));
            if (fp && fclose(fp) != 0 && s == FL_OK)
                s = fl_fail(err, FL_EIO, "%s: cannot write the logits: %s", opt->dump_logits,
                            strerror(errno));
        }
    }
    free(la);
    free(lb);
done:
    fwd_close(ms);
    fwd_close(mo);
    f->secs = fl_now() - t0;
    return s;
}

/* ----------------------------------------------------------------------------
 * Report */

static char *report_text(const char *src_dir, const char *out_dir, const tsummary *t,
                         const fsummary *f, int skip_forward, int ok, double tsecs)
{
    strbuf b = {0};
    sb_printf(&b, "flashify verify: %s -> %s\n", src_dir, out_dir);
    sb_printf(&b, "tensors: %s: %zu copied byte-identical, %zu folded %s, %zu norms removed",
              t->ok ? "ok" : "FAILED", t->n_copy, t->n_fold,
              t->n_ulp_tensors ? "within 1 ulp" : "bit-exact", t->n_removed);
    if (t->n_removed_present)
        sb_printf(&b, " (%zu kept at their identity value)", t->n_removed_present);
    sb_printf(&b, "; config.json %s (%.1f s)\n", t->config_ok ? "ok" : "differs", tsecs);
    if (t->n_ulp_tensors)
        sb_printf(&b, "  %llu elements in %zu folded tensors differ by 1 ulp from flashify's rounding "
                  "(allowed for checkpoints made by other tools)\n",
                  (unsigned long long)t->n_ulp_elems, t->n_ulp_tensors);
    for (size_t i = 0; i < t->n_problems && i < MAX_PROBLEMS; i++)
        sb_printf(&b, "  - %s\n", t->problems[i]);
    if (t->n_problems > MAX_PROBLEMS)
        sb_printf(&b, "  ... and %zu more\n", t->n_problems - MAX_PROBLEMS);
    if (skip_forward) {
        sb_printf(&b, "forward: skipped (--skip-forward)\n");
    } else if (!f->ran) {
        sb_printf(&b, "forward: skipped: %s\n", f->skipped);
    } else {
        sb_printf(&b, "forward: %s: %zu tokens on %s: max |dlogit| %.3g (relative %.3g), top-1 %zu/%zu, "
                  "KL max %.3g mean %.3g; tolerance %g (%s) (%.1f s)\n",
                  f->ok ? "ok" : "FAILED", f->n_tokens, f->desc, f->max_abs, f->max_rel,
                  f->top1_agree, f->n_tokens, f->kl_max, f->kl_mean, f->tol, f->tol_dtype, f->secs);
        if (!f->ok)
            sb_printf(&b, "  - %s\n", f->bad);
    }
    sb_printf(&b, "result: %s\n", ok ? "EQUIVALENT" : "NOT EQUIVALENT");
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

static char *report_json(const char *src_dir, const char *out_dir, const tsummary *t,
                         const fsummary *f, int skip_forward, int ok, double tsecs)
{
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "source", src_dir);
    cJSON_AddStringToObject(r, "output", out_dir);
    cJSON_AddBoolToObject(r, "equivalent", ok);
    cJSON *tj = cJSON_AddObjectToObject(r, "tensor_check");
    cJSON_AddBoolToObject(tj, "passed", t->ok);
    cJSON_AddNumberToObject(tj, "copied", (double)t->n_copy);
    cJSON_AddNumberToObject(tj, "folded", (double)t->n_fold);
    cJSON_AddNumberToObject(tj, "norms_removed", (double)t->n_removed);
    cJSON_AddNumberToObject(tj, "norms_kept_as_identity", (double)t->n_removed_present);
    cJSON_AddBoolToObject(tj, "exact", t->exact);
    cJSON_AddNumberToObject(tj, "ulp1_tensors", (double)t->n_ulp_tensors);
    cJSON_AddNumberToObject(tj, "ulp1_elements", (double)t->n_ulp_elems);
    cJSON_AddBoolToObject(tj, "config_ok", t->config_ok);
    cJSON_AddNumberToObject(tj, "seconds", tsecs);
    cJSON *pj = cJSON_AddArrayToObject(tj, "problems");
    for (size_t i = 0; i < t->n_problems && i < MAX_PROBLEMS; i++)
        cJSON_AddItemToArray(pj, cJSON_CreateString(t->problems[i]));
    cJSON_AddNumberToObject(tj, "problem_count", (double)t->n_problems);
    cJSON *fj = cJSON_AddObjectToObject(r, "forward_check");
    if (skip_forward || !f->ran) {
        cJSON_AddStringToObject(fj, "skipped", skip_forward ? "--skip-forward" : f->skipped);
    } else {
        cJSON_AddBoolToObject(fj, "passed", f->ok);
        cJSON_AddStringToObject(fj, "model", f->desc);
        cJSON *tk = cJSON_AddArrayToObject(fj, "tokens");
        for (size_t i = 0; i < f->n_tokens; i++)
            cJSON_AddItemToArray(tk, cJSON_CreateNumber(f->tokens[i]));
        cJSON_AddNumberToObject(fj, "max_abs_diff", f->max_abs);
        cJSON_AddNumberToObject(fj, "max_rel_diff", f->max_rel);
        cJSON_AddNumberToObject(fj, "top1_agree", (double)f->top1_agree);
        cJSON_AddNumberToObject(fj, "positions", (double)f->n_tokens);
        cJSON_AddNumberToObject(fj, "kl_max", f->kl_max);
        cJSON_AddNumberToObject(fj, "kl_mean", f->kl_mean);
        cJSON_AddNumberToObject(fj, "tolerance", f->tol);
        cJSON_AddStringToObject(fj, "tolerance_dtype", f->tol_dtype);
        cJSON_AddNumberToObject(fj, "seconds", f->secs);
        if (!f->ok) {
            cJSON_AddNumberToObject(fj, "first_bad_position", (double)f->first_bad);
            cJSON_AddStringToObject(fj, "failure", f->bad);
        }
    }
    char *s = cJSON_Print(r);
    cJSON_Delete(r);
    if (s) {
        /* A trailing newline, like the text report. */
        size_t n = strlen(s);
        char *t2 = realloc(s, n + 2);
        if (t2) {
            t2[n] = '\n';
            t2[n + 1] = 0;
            s = t2;
        }
    }
    return s;
}

/* ----------------------------------------------------------------------------
 * Entry point */

static int made_by_flashify(const char *dir)
{
    char *path = fl_path_join(dir, "README.md"), *text = NULL;
    fl_error ignored;
    int yes = path && fl_read_file(path, 1u << 20, 0, &text, NULL, &ignored) == FL_OK &&
              strstr(text, "Converted by flashify") != NULL;
    free(text);
    free(path);
    return yes;
}

fl_status verify_pair(const char *source_dir, const char *output_dir, const verify_options *opt,
                      char **report, fl_error *err)
{
    *report = NULL;
    checkpoint src, out;
    fold_plan plan;
    memset(&plan, 0, sizeof plan);
    fl_status s = ckpt_open(source_dir, &src, err);
    if (s != FL_OK)
        return s;
    if ((s = ckpt_open(output_dir, &out, err)) != FL_OK) {
        ckpt_close(&src);
        return s;
    }
    tsummary t = {0};
    fsummary f = {0};
    double t0 = fl_now(), tsecs = 0;
    /* The output either untied the head (default) or kept the tie
     * (--keep-tied); the plan of the source for that choice says what every
     * tensor must be. */
    plan_options po = {.plan_file = opt->plan_file, .partial = opt->partial};
    if ((s = plan_build(&src, &po, &plan, err)) != FL_OK)
        goto done;
    const ckpt_tensor *oh = ckpt_find(&out, plan.head_name), *oe = ckpt_find(&out, plan.embed_name);
    /* The same notion of "tied" as the planner's: no separate head, or a
     * tied config that also stores a copy of the embedding, left as it was
     * (an untying writer sets tie_word_embeddings to false). */
    int out_tied = !oh || oh->is_alias || (oe && oh->shard == oe->shard && oh->t == oe->t) ||
                   (plan.head_copy && out.cfg.tie_top != 0);
    if (plan.untie && out_tied) {
        plan_free(&plan);
        po.keep_tied = 1;
        if ((s = plan_build(&src, &po, &plan, err)) != FL_OK)
            goto done;
    }
    t.exact = opt->exact || made_by_flashify(output_dir);
    if ((s = tensor_check(&src, &out, &plan, opt, &t, err)) != FL_OK)
        goto done;
    int tensors_ok = t.ok;
    config_check(&src, &out, &plan, &t);
    t.ok = tensors_ok;
    tsecs = fl_now() - t0;
    if (!opt->skip_forward && (s = forward_check(&src, &out, &plan, opt, &f, err)) != FL_OK)
        goto done;
    int ok = t.ok && t.config_ok && (opt->skip_forward || !f.ran || f.ok);
    if (opt->output_label)
        output_dir = opt->output_label;
    *report = opt->json ? report_json(source_dir, output_dir, &t, &f, opt->skip_forward, ok, tsecs)
                        : report_text(source_dir, output_dir, &t, &f, opt->skip_forward, ok, tsecs);
    if (!*report)
        s = fl_fail(err, FL_EIO, "out of memory for the report");
    else
        s = ok ? FL_OK : FL_ENOTEQUIV;
    if (s == FL_ENOTEQUIV)
        fl_fail(err, FL_ENOTEQUIV, "%s is not equivalent to %s: %s", output_dir, source_dir,
                t.n_problems ? t.problems[0] : f.bad);
done:
    for (size_t i = 0; i < t.n_problems && i < MAX_PROBLEMS; i++)
        free(t.problems[i]);
    free(f.tokens);
    plan_free(&plan);
    ckpt_close(&out);
    ckpt_close(&src);
    return s;
}
