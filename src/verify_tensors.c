/* verify_tensors.c — the tensor and config checks of verify (see
 * verify_tensors.h and verify.h): threaded over tensors, streamed in blocks. */
#include "verify_tensors.h"

#include "flashify/dtype.h"
#include "flashify/fold.h"
#include "flashify/pool.h"
#include "flashify/util.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK_BYTES (4u << 20)   /* tensor bytes compared per read */

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

static void add_problem(tsummary *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add_problem(tsummary *s, const char *fmt, ...)
{
    s->ok = 0;
    if (s->n_problems < VERIFY_MAX_PROBLEMS) {
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

/* The checks the plan calls for.  Copies and folds must be present with
 * the source's shape; dropped norms absent, or present and then checked for
 * their identity value; nothing else may be in the output.  Problems that
 * need no reading are recorded at once.  Returns the number of checks. */
static size_t plan_checks(const checkpoint *src, const checkpoint *out, const fold_plan *plan, tcheck *checks,
                          tsummary *s)
{
    size_t n = 0;
    char sa[128], sb[128];
    for (size_t i = 0; i < plan->n_out; i++) {
        const out_tensor *o = &plan->out[i];
        const ckpt_tensor *got = ckpt_find(out, o->name);
        if (!got) {
            add_problem(s, "tensor '%s' is missing from the output", o->name);
        } else if (!same_shape(o->src->t, got->t)) {
            shape_str(got->t, sa, sizeof sa);
            shape_str(o->src->t, sb, sizeof sb);
            add_problem(s, "tensor '%s' is %s in the output, expected %s", o->name, sa, sb);
        } else if (o->op == OUT_FOLD && ((got->t->ndim != 2 && got->t->ndim != 3) || got->t->shape[0] == 0)) {
            add_problem(s, "folded tensor '%s' is not a matrix or 3-D experts", o->name);
        } else {
            checks[n++] = (tcheck){.name = o->name, .kind = o->op == OUT_FOLD ? TC_FOLD : TC_COPY,
                                   .src = o->src, .got = got, .group = o->group, .axis = o->axis};
        }
    }
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
        if (!g || !st_dtype_is_foldable(got->t->dtype))
            add_problem(s, "norm '%s' is still in the output as %s", norm, st_dtype_name(got->t->dtype));
        else
            checks[n++] = (tcheck){.name = norm, .kind = TC_NORM, .got = got, .group = g};
    }
    for (size_t i = 0; i < out->n_tensors; i++) {
        const ckpt_tensor *t = &out->tensors[i];
        if (plan_find_out(plan, t->name) ||
            bsearch(&t->name, plan->dropped, plan->n_dropped, sizeof *plan->dropped, cmp_cstr))
            continue;
        const ckpt_tensor *st = ckpt_find(src, t->name);
        if (t->is_alias && st && st->is_alias)
            continue; /* an alias kept as in the source (--keep-tied) */
        add_problem(s, "tensor '%s' is in the output but not accounted for by the plan of the source", t->name);
    }
    return n;
}

/* Compares contents, the tensors spread over the workers (three buffers
 * each). */
static fl_status run_checks(const checkpoint *src, const checkpoint *out, tcheck *checks, size_t n,
                            const verify_options *opt, fl_error *err)
{
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
    return run;
}

/* One finished check into the summary: counts for what passed, a problem
 * for what did not. */
static void record(const tcheck *c, tsummary *s)
{
    s->n_bytes += c->got ? st_nbytes(c->got->t) : 0;
    if (c->bad) {
        add_problem(s, "%s", c->msg);
        return;
    }
    if (c->kind == TC_NORM) {
        s->n_identity++;
        return;
    }
    if (!c->n_far && !c->n_ulp1) {
        if (c->kind == TC_COPY)
            s->n_copy++;
        else
            s->n_fold++;
        return;
    }
    char at[64];
    describe_index(c->src->t, c->first, at, sizeof at);
    if (c->kind == TC_COPY) {
        add_problem(s, "tensor '%s' should be a byte-identical copy of the source, but element %s "
                    "is %.9g instead of %.9g (%llu elements differ)",
                    c->name, at, c->have, c->want, (unsigned long long)(c->n_far + c->n_ulp1));
    } else if (c->n_far || s->exact) {
        add_problem(s, "folded tensor '%s' differs from the correctly rounded product: element %s "
                    "is %.9g, expected %.9g (%llu elements differ by more than 1 ulp, %llu by 1 ulp)",
                    c->name, at, c->have, c->want, (unsigned long long)c->n_far, (unsigned long long)c->n_ulp1);
    } else {
        s->n_fold++;
        s->n_ulp_tensors++;
        s->n_ulp_elems += c->n_ulp1;
    }
}

fl_status tensor_check(const checkpoint *src, const checkpoint *out, const fold_plan *plan,
                       const verify_options *opt, tsummary *s, fl_error *err)
{
    s->ok = 1;
    tcheck *checks = calloc(plan->n_out + plan->n_dropped + 1, sizeof *checks);
    if (!checks)
        return fl_fail(err, FL_EIO, "out of memory");
    size_t n = plan_checks(src, out, plan, checks, s);
    fl_status st = run_checks(src, out, checks, n, opt, err);
    for (size_t i = 0; st == FL_OK && i < n; i++) {
        if (checks[i].io != FL_OK) {
            if (err)
                *err = checks[i].err;
            st = checks[i].io;
        } else {
            record(&checks[i], s);
        }
    }
    free(checks);
    return st;
}

void tsummary_free(tsummary *s)
{
    for (size_t i = 0; i < s->n_problems && i < VERIFY_MAX_PROBLEMS; i++)
        free(s->problems[i]);
    s->n_problems = 0;
}

/* ----------------------------------------------------------------------------
 * Config check: equal except tie_word_embeddings (and the row's tie alias,
 * LFM2's tie_embedding) and the marker keys. */

static void strip_keys(cJSON *j, const char *alias)
{
    static const char *keys[] = {"tie_word_embeddings", "flashnorm_folded", "flash_norm"};
    for (size_t i = 0; i < 3; i++)
        cJSON_DeleteItemFromObjectCaseSensitive(j, keys[i]);
    if (alias)
        cJSON_DeleteItemFromObjectCaseSensitive(j, alias);
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
    /* cJSON_Compare finds inf unequal to inf (config.json's Infinity, as
     * Python's json writes it): compare numbers by value, arrays by element. */
    if (cJSON_IsNumber(a) && cJSON_IsNumber(b) && a->valuedouble == b->valuedouble)
        return 0;
    if (cJSON_IsArray(a) && cJSON_IsArray(b) && cJSON_GetArraySize(a) == cJSON_GetArraySize(b)) {
        char sub[512];
        int i = 0;
        for (const cJSON *x = a->child, *y = b->child; x && y; x = x->next, y = y->next, i++) {
            snprintf(sub, sizeof sub, "%s[%d]", path, i);
            if (json_diff(x, y, sub, out, cap))
                return 1;
        }
        return 0;
    }
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
        return 0;   /* every member equal (cJSON_Compare failed on an inf) */
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

void config_check(const checkpoint *src, const checkpoint *out, const fold_plan *plan, tsummary *s)
{
    s->config_ok = 1;
    size_t before = s->n_problems;
    cJSON *a = cJSON_Duplicate(src->cfg.json, 1), *b = cJSON_Duplicate(out->cfg.json, 1);
    if (!a || !b) {
        add_problem(s, "config.json: out of memory");
    } else {
        strip_keys(a, plan->arch->tie_alias);
        strip_keys(b, plan->arch->tie_alias);
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
        const cJSON *alias = plan->arch->tie_alias ? cJSON_GetObjectItemCaseSensitive(out->cfg.json,
                                                                                      plan->arch->tie_alias) : NULL;
        if (alias && !cJSON_IsFalse(alias))
            add_problem(s, "config.json: lm_head is materialised but %s is not false (it decides the tie)",
                        plan->arch->tie_alias);
    } else {
        const cJSON *st = cJSON_GetObjectItemCaseSensitive(src->cfg.json, "tie_word_embeddings");
        if (!cJSON_Compare(st, tie, 1) && !(st == NULL && tie == NULL))
            add_problem(s, "config.json: tie_word_embeddings changed although the head was not untied");
        const char *al = plan->arch->tie_alias;
        const cJSON *sa = al ? cJSON_GetObjectItemCaseSensitive(src->cfg.json, al) : NULL;
        const cJSON *oa = al ? cJSON_GetObjectItemCaseSensitive(out->cfg.json, al) : NULL;
        if ((sa || oa) && !cJSON_Compare(sa, oa, 1))
            add_problem(s, "config.json: %s changed although the head was not untied", al);
    }
    /* The marker makes loaders drop post-attention norms: wrong where the
     * plan keeps some norm weights (Gemma2/3, OLMo2). */
    if (!plan->marker && (json_true(out->cfg.json, "flashnorm_folded") || json_true(out->cfg.json, "flash_norm")))
        add_problem(s, "config.json: the FlashNorm marker is set, but this model keeps norm weights "
                    "that marker-aware loaders would drop");
    if (s->n_problems != before)
        s->config_ok = 0;
}

