/* verify.c — the equivalence check behind `flashify verify` and --strict
 * (see verify.h).
 *
 * Sections: the forward check (the tensor and config checks are in
 * verify_tensors.c), the report (text or JSON), the entry point. */
#include "flashify/verify.h"
#include "verify_tensors.h"

#include "flashify/checkpoint.h"
#include "flashify/forward.h"
#include "flashify/plan.h"
#include "flashify/safetensors.h"
#include "flashify/util.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_TOKENS 4096

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
    char desc[512];
    double secs;
    int ok;
    long route_decisions, route_flips; /* MoE choices of the output pass, and those pinned */
    int route_lost;
    /* the DSA indexer's (forward.h fwd_index_stats) */
    long idx_rows, idx_flips, idx_compared, idx_worst;
    double idx_rel;
    int idx_lost;
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

/* The first logit of x[0..V) that is not finite, or -1. */
static long first_non_finite(const float *x, long V)
{
    for (long v = 0; v < V; v++)
        if (!isfinite(x[v]))
            return v;
    return -1;
}

/* One position: max |dlogit|, the argmaxes, KL(source || output).  A
 * logit that is not finite, in either model, fails the position: nothing
 * can be compared then (and NaN would slip through every fmax and <). */
static void compare_position(const float *x, const float *y, long V, size_t t, fsummary *f, double *kl_sum)
{
    char why[400] = "";
    long nx = first_non_finite(x, V), ny = first_non_finite(y, V);
    double amax = 0, dmax = 0, mx = -INFINITY, my = -INFINITY, sx = 0, sy = 0, kl = 0;
    long ia = 0, ib = 0;
    for (long v = 0; nx < 0 && ny < 0 && v < V; v++) {
        amax = fmax(amax, fabs((double)x[v]));
        dmax = fmax(dmax, fabs((double)x[v] - (double)y[v]));
        if (x[v] > x[ia]) ia = v;
        if (y[v] > y[ib]) ib = v;
        mx = fmax(mx, x[v]);
        my = fmax(my, y[v]);
    }
    for (long v = 0; nx < 0 && ny < 0 && v < V; v++) {
        sx += exp((double)x[v] - mx);
        sy += exp((double)y[v] - my);
    }
    double lx = mx + log(sx), ly = my + log(sy);
    for (long v = 0; nx < 0 && ny < 0 && v < V; v++)
        kl += exp((double)x[v] - lx) * (((double)x[v] - lx) - ((double)y[v] - ly));
    if (kl < 0)
        kl = 0; /* rounding below zero */
    double scale = fmax(1.0, amax), rel = dmax / scale;
    if (nx >= 0 || ny >= 0) {
        dmax = rel = kl = INFINITY;
        snprintf(why, sizeof why, "logit %ld of the %s is %g: not finite, nothing to compare", nx >= 0 ? nx : ny,
                 nx >= 0 ? "source" : "output", nx >= 0 ? (double)x[nx] : (double)y[ny]);
    } else if (!(rel <= f->tol)) {
        snprintf(why, sizeof why, "max |dlogit| %.4g = %.4g of the logit scale %.4g > tolerance %g", dmax, rel,
                 scale, f->tol);
    } else if (ia != ib && (x[ia] - x[ib]) > f->tol * scale) {
        snprintf(why, sizeof why, "top-1 token %ld in the output, %ld in the source, which prefers it by %.4g",
                 ib, ia, (double)(x[ia] - x[ib]));
    } else if (!(kl <= 10 * f->tol * f->tol)) {
        snprintf(why, sizeof why, "KL divergence %.4g > %.4g", kl, 10 * f->tol * f->tol);
    }
    f->max_abs = fmax(f->max_abs, dmax);
    f->max_rel = fmax(f->max_rel, rel);
    f->kl_max = fmax(f->kl_max, kl);
    *kl_sum += kl;
    if (ia == ib && nx < 0 && ny < 0)
        f->top1_agree++;
    if (why[0]) {
        if (f->first_bad < 0) {
            f->first_bad = (long)t;
            snprintf(f->bad, sizeof f->bad, "position %zu (token %d): %s", t, (int)f->tokens[t], why);
        }
        f->ok = 0;
    }
}

static void compare_logits(const float *a, const float *b, long V, size_t T, fsummary *f)
{
    double kl_sum = 0;
    for (size_t t = 0; t < T; t++)
        compare_position(a + t * V, b + t * V, V, t, f, &kl_sum);
    f->kl_mean = T ? kl_sum / (double)T : 0;
}

/* A DSA indexer's choice of keys is pinned to the source's, so its scores
 * are compared directly: a wrongly folded indexer consumer changes them
 * even where the selection keeps every key (docs/architectures.md
 * §deepseek_v32). */
static void compare_index(fsummary *f)
{
    if (!f->idx_compared || f->idx_rel <= f->tol)
        return;
    if (f->ok)   /* else a logit failure is named already */
        snprintf(f->bad, sizeof f->bad, "the DSA indexer's scores in layer %ld differ by %.4g of their scale "
                 "(tolerance %g): a norm feeding the indexer (wk, weights_proj, wq_b) is folded wrongly",
                 f->idx_worst, f->idx_rel, f->tol);
    f->ok = 0;
}

/* The token ids: --tokens, or BOS then 16 ids from a fixed LCG (Numerical
 * Recipes constants): deterministic, spread over the ids the source pass embeds (fwd_tokens). */
static fl_status choose_tokens(const verify_options *opt, const fwd_model *ms, long V, fsummary *f, fl_error *err)
{
    if (opt->tokens) {
        fl_status s = parse_tokens(opt->tokens, &f->tokens, &f->n_tokens, err);
        for (size_t i = 0; s == FL_OK && i < f->n_tokens; i++)
            if (f->tokens[i] >= V)
                s = fl_fail(err, FL_EUSAGE, "--tokens: id %d is outside the vocabulary (0..%ld)",
                            (int)f->tokens[i], V - 1);
            else if (f->tokens[i] >= fwd_tokens(ms))
                s = fl_fail(err, FL_EUSAGE, "--tokens: id %d is outside the ids the forward pass embeds (0..%ld)",
                            (int)f->tokens[i], fwd_tokens(ms) - 1);
        return s;
    }
    f->n_tokens = 17;
    f->tokens = malloc(f->n_tokens * sizeof *f->tokens);
    if (!f->tokens)
        return fl_fail(err, FL_EIO, "out of memory");
    f->tokens[0] = (int32_t)fwd_bos(ms);
    uint32_t x = 20240607u;
    long n = fwd_tokens(ms) < V ? fwd_tokens(ms) : V;
    for (size_t i = 1; i < f->n_tokens; i++) {
        x = x * 1664525u + 1013904223u;
        f->tokens[i] = (int32_t)((x >> 8) % (uint32_t)n);
    }
    return FL_OK;
}

static fl_status dump_logits(const char *path, const float *la, size_t n, fl_error *err)
{
    FILE *fp = fopen(path, "wb");
    fl_status s = FL_OK;
    if (!fp || fwrite(la, sizeof *la, n, fp) != n)
        s = fl_fail(err, FL_EIO, "%s: cannot write the logits: %s", path, strerror(errno));
    if (fp && fclose(fp) != 0 && s == FL_OK)
        s = fl_fail(err, FL_EIO, "%s: cannot write the logits: %s", path, strerror(errno));
    return s;
}

/* Runs both models on the tokens and compares their logits. */
static fl_status run_both(fwd_model *ms, fwd_model *mo, long V, const verify_options *opt, fsummary *f,
                          fl_error *err)
{
    size_t T = f->n_tokens;
    float *la = malloc(T * (size_t)V * sizeof *la), *lb = malloc(T * (size_t)V * sizeof *lb);
    fl_status s = la && lb ? FL_OK : fl_fail(err, FL_EIO, "out of memory for %zu x %ld logits", T, V);
    /* The output pass takes the source pass's MoE choices (forward.h,
     * fwd_route_record; docs/architectures.md §moe-routing). */
    fwd_route_record(ms);
    fwd_route_replay(mo, ms);
    if (s == FL_OK && (s = fwd_logits(ms, f->tokens, T, la, err)) == FL_OK &&
        (s = fwd_logits(mo, f->tokens, T, lb, err)) == FL_OK) {
        f->ran = 1;
        fwd_route_stats(mo, &f->route_decisions, &f->route_flips, &f->route_lost);
        fwd_index_stats(mo, &f->idx_rows, &f->idx_flips, &f->idx_compared, &f->idx_rel, &f->idx_worst,
                        &f->idx_lost);
        compare_logits(la, lb, V, T, f);
        compare_index(f);
        if (opt->dump_logits)
            s = dump_logits(opt->dump_logits, la, T * (size_t)V, err);
    }
    free(la);
    free(lb);
    return s;
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
    fwd_phase ps = {opt, "forward pass (source)"}, po = {opt, "forward pass (output)"};
    long V = s == FL_OK ? fwd_vocab(ms) : 0;
    if (s == FL_OK) {
        if (opt->progress)
            fwd_set_progress(ms, fwd_phase_progress, &ps);
        snprintf(f->desc, sizeof f->desc, "%s", fwd_describe(ms));
        s = choose_tokens(opt, ms, V, f, err);
        if (s == FL_OK)
            s = fwd_open(out, opt->threads, &mo, &e2);
        if (s == FL_OK && opt->progress)
            fwd_set_progress(mo, fwd_phase_progress, &po);
    } else if (err) {
        *err = e2;
    }
    if (s == FL_EINPUT || (s == FL_OK && fwd_vocab(mo) != V)) {
        f->ran = 1;
        f->ok = 0;
        if (s == FL_EINPUT)
            snprintf(f->bad, sizeof f->bad, "the output cannot be run: %.400s", e2.msg);
        else
            snprintf(f->bad, sizeof f->bad, "the output has %ld logits per position, the source %ld",
                     fwd_vocab(mo), V);
        s = FL_OK;
    } else if (s == FL_OK) {
        s = run_both(ms, mo, V, opt, f, err);
    } else if (mo == NULL && ms && err && err->code == FL_OK) {
        *err = e2;
    }
    fwd_close(ms);
    fwd_close(mo);
    f->secs = fl_now() - t0;
    return s;
}

/* ----------------------------------------------------------------------------
 * Report */

/* The result line: a verdict reached without the forward check says so. */
static void verdict(const fsummary *f, int skip_forward, int ok, char *out, size_t cap)
{
    if (ok && skip_forward)
        snprintf(out, cap, "EQUIVALENT (tensors only; forward check skipped: --skip-forward)");
    else if (ok && !f->ran)
        snprintf(out, cap, "EQUIVALENT (tensors only; forward check unavailable: %s)", f->skipped);
    else
        snprintf(out, cap, "%s", ok ? "EQUIVALENT" : "NOT EQUIVALENT");
}

static char *report_text(const char *src_dir, const char *out_dir, const tsummary *t,
                         const fsummary *f, int skip_forward, int ok, double tsecs)
{
    strbuf b = {0};
    char line[768];
    sb_printf(&b, "flashify verify: %s -> %s\n", src_dir, out_dir);
    sb_printf(&b, "tensors: %s: %zu copied byte-identical, %zu folded %s, %zu norms removed",
              t->ok ? "ok" : "FAILED", t->n_copy, t->n_fold,
              t->n_ulp_tensors ? "within 1 ulp" : "bit-exact", t->n_removed);
    if (t->n_identity)
        sb_printf(&b, " (%zu kept at their identity value)", t->n_identity);
    sb_printf(&b, "; config.json %s (%.1f s)\n", t->config_ok ? "ok" : "differs", tsecs);
    if (t->n_ulp_tensors)
        sb_printf(&b, "  %llu elements in %zu folded tensors differ by 1 ulp from flashify's rounding "
                  "(allowed for checkpoints made by other tools)\n",
                  (unsigned long long)t->n_ulp_elems, t->n_ulp_tensors);
    for (size_t i = 0; i < t->n_problems && i < VERIFY_MAX_PROBLEMS; i++)
        sb_printf(&b, "  - %s\n", t->problems[i]);
    if (t->n_problems > VERIFY_MAX_PROBLEMS)
        sb_printf(&b, "  ... and %zu more\n", t->n_problems - VERIFY_MAX_PROBLEMS);
    if (skip_forward) {
        sb_printf(&b, "forward: skipped (--skip-forward)\n");
    } else if (!f->ran) {
        sb_printf(&b, "forward: skipped: %s\n", f->skipped);
    } else {
        sb_printf(&b, "forward: %s: %zu tokens on %s: max |dlogit| %.3g (relative %.3g), top-1 %zu/%zu, "
                  "KL max %.3g mean %.3g; tolerance %g (%s) (%.1f s)\n",
                  f->ok ? "ok" : "FAILED", f->n_tokens, f->desc, f->max_abs, f->max_rel,
                  f->top1_agree, f->n_tokens, f->kl_max, f->kl_mean, f->tol, f->tol_dtype, f->secs);
        if (f->route_decisions)
            sb_printf(&b, "  MoE routing pinned to the source's experts: the output's own choice differed in "
                      "%ld of %ld%s\n", f->route_flips, f->route_decisions,
                      f->route_lost ? " (pinning lost: the passes' decisions did not line up)" : "");
        if (f->idx_compared)
            sb_printf(&b, "  DSA indexer: key selection pinned to the source's; the output's own differed in %ld "
                      "of %ld rows with a choice%s; %ld index scores compared: max difference %.3g of their "
                      "scale\n", f->idx_flips, f->idx_rows,
                      f->idx_lost ? " (pinning lost: the passes did not line up)" : "", f->idx_compared,
                      f->idx_rel);
        if (!f->ok)
            sb_printf(&b, "  - %s\n", f->bad);
    }
    verdict(f, skip_forward, ok, line, sizeof line);
    sb_printf(&b, "result: %s\n", line);
    return sb_take(&b);
}

static void report_json_tensors(cJSON *r, const tsummary *t, double tsecs)
{
    cJSON *tj = cJSON_AddObjectToObject(r, "tensor_check");
    cJSON_AddBoolToObject(tj, "passed", t->ok);
    cJSON_AddNumberToObject(tj, "copied", (double)t->n_copy);
    cJSON_AddNumberToObject(tj, "folded", (double)t->n_fold);
    cJSON_AddNumberToObject(tj, "norms_removed", (double)t->n_removed);
    cJSON_AddNumberToObject(tj, "norms_kept_as_identity", (double)t->n_identity);
    cJSON_AddBoolToObject(tj, "exact", t->exact);
    cJSON_AddNumberToObject(tj, "ulp1_tensors", (double)t->n_ulp_tensors);
    cJSON_AddNumberToObject(tj, "ulp1_elements", (double)t->n_ulp_elems);
    cJSON_AddBoolToObject(tj, "config_ok", t->config_ok);
    cJSON_AddNumberToObject(tj, "seconds", tsecs);
    cJSON *pj = cJSON_AddArrayToObject(tj, "problems");
    for (size_t i = 0; i < t->n_problems && i < VERIFY_MAX_PROBLEMS; i++)
        cJSON_AddItemToArray(pj, cJSON_CreateString(t->problems[i]));
    cJSON_AddNumberToObject(tj, "problem_count", (double)t->n_problems);
}

static void report_json_forward(cJSON *r, const fsummary *f, int skip_forward)
{
    cJSON *fj = cJSON_AddObjectToObject(r, "forward_check");
    cJSON_AddBoolToObject(fj, "ran", f->ran && !skip_forward);
    if (skip_forward || !f->ran) {
        cJSON_AddStringToObject(fj, "skipped", skip_forward ? "--skip-forward" : f->skipped);
        return;
    }
    cJSON_AddBoolToObject(fj, "passed", f->ok);
    cJSON_AddStringToObject(fj, "model", f->desc);
    cJSON *tk = cJSON_AddArrayToObject(fj, "tokens");
    for (size_t i = 0; i < f->n_tokens; i++)
        cJSON_AddItemToArray(tk, cJSON_CreateNumber(f->tokens[i]));
    /* JSON has no Infinity: a position with a non-finite logit reads null. */
    cJSON_AddNumberToObject(fj, "max_abs_diff", f->max_abs);
    cJSON_AddNumberToObject(fj, "max_rel_diff", f->max_rel);
    cJSON_AddNumberToObject(fj, "top1_agree", (double)f->top1_agree);
    cJSON_AddNumberToObject(fj, "positions", (double)f->n_tokens);
    cJSON_AddNumberToObject(fj, "kl_max", f->kl_max);
    cJSON_AddNumberToObject(fj, "kl_mean", f->kl_mean);
    cJSON_AddNumberToObject(fj, "tolerance", f->tol);
    cJSON_AddStringToObject(fj, "tolerance_dtype", f->tol_dtype);
    cJSON_AddNumberToObject(fj, "seconds", f->secs);
    if (f->route_decisions) {
        cJSON *rj = cJSON_AddObjectToObject(fj, "moe_routing");
        cJSON_AddNumberToObject(rj, "decisions", (double)f->route_decisions);
        cJSON_AddNumberToObject(rj, "differed", (double)f->route_flips);
        cJSON_AddBoolToObject(rj, "pinned", !f->route_lost);
    }
    if (f->idx_compared) {
        cJSON *ij = cJSON_AddObjectToObject(fj, "dsa_indexer");
        cJSON_AddNumberToObject(ij, "rows_with_a_choice", (double)f->idx_rows);
        cJSON_AddNumberToObject(ij, "differed", (double)f->idx_flips);
        cJSON_AddBoolToObject(ij, "pinned", !f->idx_lost);
        cJSON_AddNumberToObject(ij, "scores_compared", (double)f->idx_compared);
        cJSON_AddNumberToObject(ij, "max_rel_score_diff", f->idx_rel);
    }
    if (!f->ok) {
        cJSON_AddNumberToObject(fj, "first_bad_position", (double)f->first_bad);
        cJSON_AddStringToObject(fj, "failure", f->bad);
    }
}

static char *report_json(const char *src_dir, const char *out_dir, const tsummary *t,
                         const fsummary *f, int skip_forward, int ok, double tsecs)
{
    char line[768];
    verdict(f, skip_forward, ok, line, sizeof line);
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "source", src_dir);
    cJSON_AddStringToObject(r, "output", out_dir);
    cJSON_AddBoolToObject(r, "equivalent", ok);
    cJSON_AddStringToObject(r, "result", line);
    cJSON_AddBoolToObject(r, "tensors_only", ok && (skip_forward || !f->ran));
    report_json_tensors(r, t, tsecs);
    report_json_forward(r, f, skip_forward);
    char *s = cJSON_Print(r);
    cJSON_Delete(r);
    char *with_newline = s ? fl_asprintf("%s\n", s) : NULL;  /* like the text report */
    cJSON_free(s);
    return with_newline;
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

/* The plan of the source for the choice the output made: it untied the
 * head (default) or kept the tie (--keep-tied). */
static fl_status plan_for(const checkpoint *src, const checkpoint *out, const verify_options *opt,
                          fold_plan *plan, fl_error *err)
{
    plan_options po = {.plan_file = opt->plan_file, .partial = opt->partial};
    fl_status s = plan_build(src, &po, plan, err);
    if (s != FL_OK)
        return s;
    const ckpt_tensor *oh = ckpt_find(out, plan->head_name), *oe = ckpt_find(out, plan->embed_name);
    /* The same notion of "tied" as the planner's: no separate head, or a
     * tied config that also stores a copy of the embedding, left as it was
     * (an untying writer sets tie_word_embeddings to false). */
    int out_tied = !oh || oh->is_alias || (oe && oh->shard == oe->shard && oh->t == oe->t) ||
                   (plan->head_copy && out->cfg.tie_top != 0);
    if (plan->untie && out_tied) {
        plan_free(plan);
        po.keep_tied = 1;
        s = plan_build(src, &po, plan, err);
    }
    return s;
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
    if ((s = plan_for(&src, &out, opt, &plan, err)) != FL_OK)
        goto done;
    t.exact = opt->exact || made_by_flashify(output_dir);
    if ((s = tensor_check(&src, &out, &plan, opt, &t, err)) != FL_OK)
        goto done;
    int tensors_ok = t.ok;
    config_check(&src, &out, &plan, &t);
    t.ok = tensors_ok;  /* config problems are listed, and counted in config_ok */
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
    tsummary_free(&t);
    free(f.tokens);
    plan_free(&plan);
    ckpt_close(&out);
    ckpt_close(&src);
    return s;
}
