/* plan.c — deciding the fold plan (pure) and loading its norms (see plan.h).
 *
 * The plan comes from config.json's model_type and the architecture table,
 * never from tensor-name patterns (docs/architectures.md §pitfalls: the same
 * name means different things in different families).  Every tensor the
 * table expects must exist with a matching input dimension before anything
 * is written; a quantized consumer is refused, naming its format, unless
 * --partial keeps its norm. */
#include "plan_internal.h"

#include "flashify/util.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_EXPERTS 65536
#define MAX_LAYERS 100000
#define MAX_HIDDEN (1L << 24)
#define MAX_NORM_LEN (1u << 24)
#define CUSTOM_PLAN_MAX_BYTES (1u << 20)

/* ---------------------------------------------------------------------------
 * string ownership: every string the plan hands out lives in the arena */

typedef struct {
    char **v;
    size_t n, cap;
} arena;

static char *arena_keep(fold_plan *p, char *s)
{
    arena *a = p->arena;
    if (!s)
        return NULL;
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 64;
        char **v = realloc(a->v, cap * sizeof *v);
        if (!v) {
            free(s);
            return NULL;
        }
        a->v = v;
        a->cap = cap;
    }
    return a->v[a->n++] = s;
}

static char *arena_printf(fold_plan *p, const char *fmt, ...) FL_PRINTF(2, 3);
static char *arena_printf(fold_plan *p, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = fl_vasprintf(fmt, ap);
    va_end(ap);
    return arena_keep(p, s);
}

void *plan_grow(void *arr, size_t *cap, size_t n, size_t size)
{
    if (n < *cap)
        return arr;
    size_t c = *cap ? *cap * 2 : 16;
    void *q = realloc(arr, c * size);
    if (q)
        *cap = c;
    return q;
}

fl_status plan_oom(fl_error *err) { return fl_fail(err, FL_EIO, "out of memory"); }

/* ---------------------------------------------------------------------------
 * the catalogue */

/* The decision in progress: the catalogue, the plan, and growth state. */
typedef struct {
    const plan_catalogue *cat;
    const plan_options *opt;
    fold_plan *p;
    size_t cap_groups, cap_kept;
    const char *lp;          /* the layer prefix being planned */
    const char *final_name;  /* the final norm of the layout */
    const ckpt_config *cfg;
    fl_error *err;
} planner;

const ckpt_tensor *plan_cat_find(const plan_catalogue *cat, const char *name)
{
    return ckpt_search(cat->tensors, cat->n, name);
}

static const char *cat_file(const plan_catalogue *cat, const ckpt_tensor *t)
{
    return cat->files ? cat->files[t->shard] : cat->dir;
}

/* ---------------------------------------------------------------------------
 * consumers */

/* Side tensors that mean a weight is stored quantized, appended to the
 * consumer's base name, and the format they belong to (docs/architectures.md
 * §quantized). */
static const struct {
    const char *suffix, *format;
} QUANT_MARKERS[] = {
    {".weight_scale_inv", "FP8 with block scales"},
    {".weight_packed", "compressed-tensors (packed integers)"},
    {".weight_scale", "FP8 / compressed-tensors (per-channel or block scales)"},
    {"_blocks", "MXFP4"},
    {"_scales", "MXFP4"},
    {".qweight", "GPTQ/AWQ"},
    {".qzeros", "GPTQ/AWQ"},
    {".scales", "GPTQ/AWQ"},
    {".weight.absmax", "bitsandbytes"},
    {".absmax", "bitsandbytes"},
};

/* For WHEN_HAS: does the layer being planned store `rel`, plain or
 * quantized (gpt-oss's fused experts exist only as _blocks and _scales)? */
static int layer_has(const char *rel, void *ctx)
{
    planner *pl = ctx;
    char name[ST_MAX_NAME + 128];
    for (size_t i = 0; i <= sizeof QUANT_MARKERS / sizeof QUANT_MARKERS[0]; i++) {
        snprintf(name, sizeof name, "%s%s%s", pl->lp, rel, i ? QUANT_MARKERS[i - 1].suffix : "");
        if (plan_cat_find(pl->cat, name))
            return 1;
    }
    return 0;
}

/* What check_consumer found. */
typedef struct {
    const ckpt_tensor *t;    /* the tensor, when usable */
    int axis;                /* its input axis */
    const char *format;      /* non-NULL: stored quantized, in this format */
    char evidence[ST_MAX_NAME + 64];  /* the tensor that shows it */
} consumer_found;

static int quantized_by_marker(const plan_catalogue *cat, const char *base, consumer_found *f)
{
    for (size_t i = 0; i < sizeof QUANT_MARKERS / sizeof QUANT_MARKERS[0]; i++) {
        snprintf(f->evidence, sizeof f->evidence, "%s%s", base, QUANT_MARKERS[i].suffix);
        if (plan_cat_find(cat, f->evidence)) {
            f->format = QUANT_MARKERS[i].format;
            return 1;
        }
    }
    return 0;
}

/* The input axis of 3-D fused experts [E, a, b] for a norm of `len`. */
static fl_status fused_axis(planner *pl, const ckpt_tensor *t, arch_input in, uint64_t len,
                            const char *norm, int *axis)
{
    const uint64_t *sh = t->t->shape;
    int last = sh[2] == len, middle = sh[1] == len;
    if (in == IN_EITHER && last && middle)
        return fl_fail(pl->err, FL_EINPUT,
                       "%s: fused experts '%s' [%llu, %llu, %llu] read '%s' (%llu) along either axis; "
                       "the layout [E, 2I, H] or [E, H, 2I] cannot be told apart",
                       cat_file(pl->cat, t), t->name, (unsigned long long)sh[0], (unsigned long long)sh[1],
                       (unsigned long long)sh[2], norm, (unsigned long long)len);
    *axis = in == IN_LAST || (in == IN_EITHER && last) ? 2 : 1;
    if (sh[*axis] != len)
        return fl_fail(pl->err, FL_EINPUT,
                       "%s: fused experts '%s' have input dimension %llu (axis %d), but '%s' has %llu elements",
                       cat_file(pl->cat, t), t->name, (unsigned long long)sh[*axis], *axis, norm,
                       (unsigned long long)len);
    if (pl->p->n_experts > 0 && sh[0] != (uint64_t)pl->p->n_experts)
        return fl_fail(pl->err, FL_EINPUT, "%s: fused experts '%s' hold %llu experts, config.json says %ld",
                       cat_file(pl->cat, t), t->name, (unsigned long long)sh[0], pl->p->n_experts);
    return FL_OK;
}

/* Finds consumer `base` (a full name without ".weight") read by `norm` of
 * `len` elements.  FL_OK with f->t set, or with f->format set when it is
 * stored quantized (the caller refuses or, with --partial, keeps the
 * norm); FL_EINPUT when it is missing or does not fit. */
static fl_status check_consumer(planner *pl, const char *base, arch_input in, const char *norm,
                                uint64_t len, consumer_found *f)
{
    memset(f, 0, sizeof *f);
    char name[ST_MAX_NAME + 64];
    snprintf(name, sizeof name, in == IN_LINEAR ? "%s.weight" : "%s", base);
    const ckpt_tensor *t = plan_cat_find(pl->cat, name);
    if (quantized_by_marker(pl->cat, base, f))
        return FL_OK;
    if (!t)
        return fl_fail(pl->err, FL_EINPUT, "%s: tensor '%s' (read by '%s') is missing", pl->cat->dir, name, norm);
    if (!st_dtype_is_foldable(t->t->dtype)) {
        snprintf(f->evidence, sizeof f->evidence, "%.*s", (int)(sizeof f->evidence - 1), name);
        f->format = st_dtype_name(t->t->dtype);
        return FL_OK;
    }
    int dims = in == IN_LINEAR ? 2 : 3;
    if (t->t->ndim != dims)
        return fl_fail(pl->err, FL_EINPUT, "%s: tensor '%s' has %d dimensions, expected %s", cat_file(pl->cat, t),
                       name, t->t->ndim, dims == 2 ? "a 2-D matrix" : "3-D fused experts [E, out, in]");
    f->t = t;
    f->axis = 1;
    if (dims == 3)
        return fused_axis(pl, t, in, len, norm, &f->axis);
    if (t->t->shape[1] != len)
        return fl_fail(pl->err, FL_EINPUT, "%s: tensor '%s' has input dimension %llu, but '%s' has %llu elements",
                       cat_file(pl->cat, t), name, (unsigned long long)t->t->shape[1], norm,
                       (unsigned long long)len);
    return FL_OK;
}

/* Expands one consumer of the table for the layer prefix: "{e}" over the
 * experts.  Appends full base names to *bases. */
static fl_status expand_consumer(planner *pl, const arch_consumer *c, const char ***bases,
                                 unsigned char **inputs, size_t *n, size_t *cap)
{
    const char *e = strstr(c->name, "{e}");
    long count = e ? pl->p->n_experts : 1;
    if (e && count <= 0)
        return fl_fail(pl->err, FL_EINPUT,
                       "%s: consumer '%s%s' expands over experts, but the expert count is 0 "
                       "(set \"experts_key\" in the plan to the config key that holds it)",
                       pl->cat->dir, pl->lp, c->name);
    for (long j = 0; j < count; j++) {
        char *name = e ? arena_printf(pl->p, "%s%.*s%ld%s", pl->lp, (int)(e - c->name), c->name, j, e + 3)
                       : arena_printf(pl->p, "%s%s", pl->lp, c->name);
        size_t cap2 = *cap;
        const char **b = plan_grow(*bases, cap, *n, sizeof **bases);
        if (b)
            *bases = b;
        unsigned char *in = b ? plan_grow(*inputs, &cap2, *n, 1) : NULL;
        if (!name || !b || !in)
            return plan_oom(pl->err);
        *inputs = in;
        (*bases)[*n] = name;
        (*inputs)[(*n)++] = (unsigned char)c->input;
    }
    return FL_OK;
}

/* ---------------------------------------------------------------------------
 * groups and kept norms */

static fl_status add_kept(planner *pl, const char *name, const char *reason, int quantized)
{
    plan_kept *k = plan_grow(pl->p->kept, &pl->cap_kept, pl->p->n_kept, sizeof *k);
    if (!k)
        return plan_oom(pl->err);
    pl->p->kept = k;
    pl->p->kept[pl->p->n_kept++] = (plan_kept){name, reason, quantized};
    pl->p->n_quantized_kept += quantized;
    return FL_OK;
}

/* The norm tensor `name` (checked: present, 1-D, of a sane length). */
static fl_status find_norm(planner *pl, const char *name, const ckpt_tensor **out)
{
    const ckpt_tensor *t = plan_cat_find(pl->cat, name);
    if (!t) {
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(pl->p->cfg.top, "flashnorm_folded")))
            return fl_fail(pl->err, FL_EINPUT, "%s: already a FlashNorm checkpoint (config.json has \"flashnorm_folded\": true "
                           "and norm '%s' is absent); nothing to fold", pl->cat->dir, name);
        return fl_fail(pl->err, FL_EINPUT, "%s: norm '%s' is missing (model_type %s expects it)",
                       pl->cat->dir, name, pl->p->arch->model_type);
    }
    if (t->t->ndim != 1)
        return fl_fail(pl->err, FL_EINPUT, "%s: norm '%s' has %d dimensions, expected 1",
                       cat_file(pl->cat, t), t->name, t->t->ndim);
    if (t->t->shape[0] == 0 || t->t->shape[0] > MAX_NORM_LEN)
        return fl_fail(pl->err, FL_EINPUT, "%s: norm '%s' has %llu elements",
                       cat_file(pl->cat, t), t->name, (unsigned long long)t->t->shape[0]);
    *out = t;
    return FL_OK;
}

/* Adds the group of norm `nt` and its consumers (full base names), or,
 * when one is quantized and --partial is on, keeps the norm instead. */
static fl_status add_group(planner *pl, const ckpt_tensor *nt, fl_gain gain, const char *note,
                           const char **bases, const unsigned char *inputs, size_t n)
{
    fold_plan *p = pl->p;
    uint64_t len = nt->t->shape[0];
    const char **names = calloc(n ? n : 1, sizeof *names);
    unsigned char *axes = calloc(n ? n : 1, 1);
    fl_status s = names && axes ? FL_OK : plan_oom(pl->err);
    for (size_t i = 0; i < n && s == FL_OK; i++) {
        consumer_found f;
        if ((s = check_consumer(pl, bases[i], (arch_input)inputs[i], nt->name, len, &f)) != FL_OK)
            break;
        if (f.format && !pl->opt->partial)
            s = fl_fail(pl->err, FL_EINPUT,
                        "%s: '%s' (read by '%s') is stored quantized (%s: '%s'): a per-channel norm gain "
                        "does not commute with its scales; dequantize the checkpoint first, or convert "
                        "with --partial to keep the norms that feed quantized layers",
                        pl->cat->dir, bases[i], nt->name, f.format, f.evidence);
        else if (f.format) {
            char cp[ST_MAX_NAME + 64], ep[ST_MAX_NAME + 64];
            plan_name_pattern(bases[i], cp, sizeof cp);
            plan_name_pattern(f.evidence, ep, sizeof ep);
            char *why = arena_printf(p, "its consumer '%s' is stored quantized (%s: '%s'); a per-channel gain "
                                     "does not commute with the quantization scales", cp, f.format, ep);
            s = why ? add_kept(pl, nt->name, why, 1) : plan_oom(pl->err);
            free(names);
            free(axes);
            return s;
        } else {
            names[i] = f.t->name;
            axes[i] = (unsigned char)f.axis;
        }
    }
    fold_group *g = s == FL_OK ? plan_grow(p->groups, &pl->cap_groups, p->n_groups, sizeof *g) : NULL;
    if (s == FL_OK && !g)
        s = plan_oom(pl->err);
    if (s != FL_OK) {
        free(names);
        free(axes);
        return s;
    }
    p->groups = g;
    p->groups[p->n_groups++] = (fold_group){.norm = nt->name, .gain = gain, .note = note, .n_consumers = n,
                                            .consumers = names, .axes = axes, .len = (size_t)len};
    return FL_OK;
}

/* The group of fold variant f in the current layer. */
static fl_status plan_variant(planner *pl, const arch_fold *f, const char ***bases, unsigned char **inputs,
                              size_t *cap)
{
    size_t n = 0;
    fl_status s = FL_OK;
    for (int ci = 0; ci < ARCH_MAX_CONSUMERS && f->consumers[ci].name && s == FL_OK; ci++)
        s = expand_consumer(pl, &f->consumers[ci], bases, inputs, &n, cap);
    char *norm = s == FL_OK ? arena_printf(pl->p, "%s%s.weight", pl->lp, f->norm) : NULL;
    if (s == FL_OK && !norm)
        s = plan_oom(pl->err);
    const ckpt_tensor *nt = NULL;
    if (s == FL_OK && (s = find_norm(pl, norm, &nt)) == FL_OK) {
        const arch_norm_class *cls = f->cls ? f->cls : pl->p->arch->norm;
        s = add_group(pl, nt, cls->gain, f->note, *bases, *inputs, n);
    }
    return s;
}

/* 1 when an earlier fold entry for the same norm applies in this layer. */
static int decided_before(const arch_info *a, int fi, const char *matched)
{
    for (int j = 0; j < fi; j++)
        if (matched[j] && strcmp(a->folds[j].norm, a->folds[fi].norm) == 0)
            return 1;
    return 0;
}

static fl_status plan_keeps(planner *pl, ckpt_view cfg, long i, int moe, char *kept_here)
{
    const arch_info *a = pl->p->arch;
    for (int ki = 0; ki < ARCH_MAX_KEEPS && a->keeps[ki].norm; ki++) {
        kept_here[ki] = 0;
        if (!arch_when(a->keeps[ki].when, cfg, i, pl->p->n_layers, moe, layer_has, pl))
            continue;
        char *name = arena_printf(pl->p, "%s%s.weight", pl->lp, a->keeps[ki].norm);
        const ckpt_tensor *t = name ? plan_cat_find(pl->cat, name) : NULL;
        if (!name)
            return plan_oom(pl->err);
        kept_here[ki] = 1;
        if (t) {
            fl_status s = add_kept(pl, t->name, a->keeps[ki].reason, 0);
            if (s != FL_OK)
                return s;
        }
    }
    return FL_OK;
}

/* A norm of the row present in layer i that no variant and no keep covers
 * would silently stay in the output: refuse it. */
static fl_status check_covered(planner *pl, long i, const char *matched, const char *kept_here)
{
    const arch_info *a = pl->p->arch;
    for (int fi = 0; fi < ARCH_MAX_FOLDS && a->folds[fi].norm; fi++) {
        const char *norm = a->folds[fi].norm;
        int covered = 0;
        for (int j = 0; j < ARCH_MAX_FOLDS && a->folds[j].norm && !covered; j++)
            covered = matched[j] && strcmp(a->folds[j].norm, norm) == 0;
        for (int k = 0; k < ARCH_MAX_KEEPS && a->keeps[k].norm && !covered; k++)
            covered = kept_here[k] && strcmp(a->keeps[k].norm, norm) == 0;
        char name[ST_MAX_NAME + 128];
        snprintf(name, sizeof name, "%s%s.weight", pl->lp, norm);
        if (!covered && plan_cat_find(pl->cat, name))
            return fl_fail(pl->err, FL_EINPUT,
                           "%s: norm '%s' is present, but no rule of model_type %s applies to layer %ld "
                           "(check the layer's config: MoE layers, layer_types)",
                           pl->cat->dir, name, a->model_type, i);
    }
    return FL_OK;
}

static fl_status plan_layer(planner *pl, ckpt_view cfg, long i, const char ***bases, unsigned char **inputs,
                            size_t *cap)
{
    fold_plan *p = pl->p;
    const arch_info *a = p->arch;
    char *lp = arena_printf(p, "%slayers.%ld.", p->prefix, i);
    if (!lp)
        return plan_oom(pl->err);
    pl->lp = lp;
    int moe = arch_is_moe_layer(&a->moe, cfg, i, p->n_experts);
    char matched[ARCH_MAX_FOLDS] = {0}, kept_here[ARCH_MAX_KEEPS] = {0};
    fl_status s = FL_OK;
    for (int fi = 0; fi < ARCH_MAX_FOLDS && a->folds[fi].norm && s == FL_OK; fi++) {
        const arch_fold *f = &a->folds[fi];
        if (decided_before(a, fi, matched) || !arch_when(f->when, cfg, i, p->n_layers, moe, layer_has, pl))
            continue;
        matched[fi] = 1;
        s = plan_variant(pl, f, bases, inputs, cap);
    }
    if (s == FL_OK)
        s = plan_keeps(pl, cfg, i, moe, kept_here);
    return s == FL_OK ? check_covered(pl, i, matched, kept_here) : s;
}

static fl_status plan_layers(planner *pl)
{
    fold_plan *p = pl->p;
    const char *key;
    p->n_experts = arch_expert_count(&p->arch->moe, p->cfg, &key);
    if (p->n_experts == -2)
        return fl_fail(pl->err, FL_EINPUT, "%s: the expert counts %s, %s disagree", p->cfg.path,
                       p->arch->moe.experts[0], p->arch->moe.experts[1]);
    const cJSON *kv = p->n_experts < 0 && key ? ckpt_view_get(p->cfg, key) : NULL;
    if (cJSON_IsArray(kv)) /* HunYuanMoEV1Config allows one count per layer */
        return fl_fail(pl->err, FL_EINPUT, "%s: \"%s\" is a per-layer list; only one expert count for every "
                       "layer is supported", p->cfg.path, key);
    if (p->n_experts < 0 || p->n_experts > MAX_EXPERTS)
        return fl_fail(pl->err, FL_EINPUT, "%s: \"%s\" is missing or out of range (0..%d)",
                       p->cfg.path, key, MAX_EXPERTS);
    const char **bases = NULL;
    unsigned char *inputs = NULL;
    size_t cap = 0;
    fl_status s = FL_OK;
    for (long i = 0; i < p->n_layers && s == FL_OK; i++)
        s = plan_layer(pl, p->cfg, i, &bases, &inputs, &cap);
    free(bases);
    free(inputs);
    return s;
}

/* ---------------------------------------------------------------------------
 * the text model's layout and the final norm */

static fl_status find_layout(planner *pl)
{
    fold_plan *p = pl->p;
    const arch_layout *lay = p->arch->layouts ? p->arch->layouts : ARCH_LAYOUTS;
    for (; lay->prefix; lay++) {
        char name[256];
        snprintf(name, sizeof name, "%s%s.weight", lay->prefix, lay->embed);
        const ckpt_tensor *t = plan_cat_find(pl->cat, name);
        if (!t)
            continue;
        snprintf(p->prefix, sizeof p->prefix, "%s", lay->prefix);
        p->embed_name = t->name;
        p->head_name = arena_printf(p, "%s.weight", lay->head);
        pl->final_name = arena_printf(p, "%s%s.weight", lay->prefix, lay->norm);
        return p->head_name && pl->final_name ? FL_OK : plan_oom(pl->err);
    }
    return fl_fail(pl->err, FL_EINPUT, "%s: no embedding tensor (model.embed_tokens.weight) found", pl->cat->dir);
}

/* The tie flag the loader would see: the top level's, then text_config's
 * for composite models, then the class default.  A false top level does
 * not decide where the wrapper class takes text_config's flag then
 * (LlavaConfig, docs/architectures.md §vlm-tie). */
static int tie_flag(const ckpt_config *cfg, const arch_resolved *r)
{
    /* Lfm2Config: kwargs.get("tie_embedding", tie_word_embeddings), read
     * with Python truthiness (docs/architectures.md §lfm2). */
    if (r->arch->tie_alias && ckpt_view_get(r->cfg, r->arch->tie_alias))
        return ckpt_view_set(r->cfg, r->arch->tie_alias);
    if (cfg->tie_top > 0 || (cfg->tie_top == 0 && !r->tie_or_text))
        return cfg->tie_top;
    if (r->cfg.text != r->cfg.top && cfg->tie_nested >= 0)
        return cfg->tie_nested;
    return r->tie_default;
}

/* The group of the final norm: into lm_head, or into a new lm_head made
 * from the embedding when they are tied (folding into the shared matrix
 * would scale the input embeddings too).  --keep-tied keeps the norm. */
/* How the config said "not tied", for messages. */
static const char *cfg_tie_spelling(const planner *pl)
{
    const ckpt_config *cfg = pl->cfg;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg->json, "tie_word_embeddings");
    if (!v && cfg->nested)
        v = cJSON_GetObjectItemCaseSensitive(cfg->nested, "tie_word_embeddings");
    return !v ? "absent (what the loader then reads is false)" : cJSON_IsNull(v) ? "null" : "false";
}

static fl_status plan_final(planner *pl, int flag)
{
    fold_plan *p = pl->p;
    const ckpt_tensor *embed = plan_cat_find(pl->cat, p->embed_name), *head = plan_cat_find(pl->cat, p->head_name);
    const ckpt_tensor *final = plan_cat_find(pl->cat, pl->final_name);
    fl_status s;
    if (!final)
        return fl_fail(pl->err, FL_EINPUT, "%s: final norm '%s' is missing", pl->cat->dir, pl->final_name);
    /* config.json must describe these tensors: the final norm scales the
     * hidden state, so its length is hidden_size in every family. */
    if (final->t->ndim != 1 || final->t->shape[0] != (uint64_t)p->hidden)
        return fl_fail(pl->err, FL_EINPUT, "%s: hidden_size is %ld, but '%s' has %d dimensions, %llu elements",
                       p->cfg.path, p->hidden, final->name, final->t->ndim,
                       (unsigned long long)(final->t->ndim ? final->t->shape[0] : 1));
    /* One definition of "tied" (docs/architectures.md §tie): the head is
     * the embedding when no separate lm_head is stored (absent, or an alias
     * of the embedding's bytes), or when the flag the loader reads is true.
     * A config that says "not tied" without a stored head would load a
     * random head: the source does not define one, so nothing can be
     * equivalent to it. */
    int same_storage = head && head->shard == embed->shard && head->t == embed->t;
    if ((!head || same_storage) && flag == 0)
        return fl_fail(pl->err, FL_EINPUT,
                       "%s: tie_word_embeddings is %s, but the checkpoint stores no separate '%s': "
                       "transformers would initialise a random output head; set "
                       "\"tie_word_embeddings\": true if the head is the embedding",
                       p->cfg.path, cfg_tie_spelling(pl), p->head_name);
    p->tied = !head || same_storage || flag == 1;
    p->head_copy = p->tied && head && !same_storage;
    if (p->tied && pl->opt->keep_tied)
        return add_kept(pl, final->name, "--keep-tied: lm_head is the embedding, so the final norm stays", 0);
    if (!p->tied) {
        const char *base = arena_printf(p, "%.*s", (int)(strlen(p->head_name) - 7), p->head_name);
        unsigned char in = IN_LINEAR;
        size_t before = p->n_groups;
        if (!base || (s = add_group(pl, final, p->arch->norm->gain, NULL, &base, &in, 1)) != FL_OK)
            return base ? s : plan_oom(pl->err);
        p->final_folded = p->n_groups > before;
        return FL_OK;
    }
    /* The materialised head has the embedding's shape and dtype. */
    if (!st_dtype_is_foldable(embed->t->dtype) || embed->t->ndim != 2)
        return fl_fail(pl->err, FL_EINPUT, "%s: embedding '%s' is %s with %d dimensions; cannot untie",
                       cat_file(pl->cat, embed), embed->name, st_dtype_name(embed->t->dtype), embed->t->ndim);
    if (embed->t->shape[1] != final->t->shape[0])
        return fl_fail(pl->err, FL_EINPUT, "%s: embedding '%s' has width %llu, but '%s' has %llu elements",
                       cat_file(pl->cat, embed), embed->name, (unsigned long long)embed->t->shape[1], final->name,
                       (unsigned long long)final->t->shape[0]);
    fold_group *g = plan_grow(p->groups, &pl->cap_groups, p->n_groups, sizeof *g);
    const char **names = calloc(1, sizeof *names);
    unsigned char *axes = calloc(1, 1);
    if (g)
        p->groups = g;
    if (!g || !names || !axes) {
        free(names);
        free(axes);
        return plan_oom(pl->err);
    }
    names[0] = p->head_name;
    axes[0] = 1;
    p->groups[p->n_groups++] = (fold_group){.norm = final->name, .gain = p->arch->norm->gain, .n_consumers = 1,
                                            .consumers = names, .axes = axes, .len = (size_t)final->t->shape[0]};
    p->untie = p->final_folded = 1;
    p->added_bytes = st_nbytes(embed->t);
    return FL_OK;
}

/* ---------------------------------------------------------------------------
 * deciding */

/* num_hidden_layers; for a row with a block-type list (Nemotron-H) that
 * list's length when the key is absent, and the two must agree when both are
 * there: transformers 5 counts the list, the remote code num_hidden_layers,
 * so a disagreement has no single meaning. */
static fl_status layer_count(fold_plan *p, fl_error *err)
{
    char key[64];
    long n = p->arch->blocks ? arch_block_count(p->cfg, p->arch->blocks, key) : -1;
    if (n >= 0 && !ckpt_view_get(p->cfg, "num_hidden_layers")) {
        if (n < 1 || n > MAX_LAYERS)
            return fl_fail(err, FL_EINPUT, "%s: \"%s\" lists %ld layers (1..%d)", p->cfg.path, key, n, MAX_LAYERS);
        p->n_layers = n;
        return FL_OK;
    }
    fl_status s = ckpt_view_count(p->cfg, "num_hidden_layers", MAX_LAYERS, &p->n_layers, err);
    if (s == FL_OK && n >= 0 && n != p->n_layers)
        return fl_fail(err, FL_EINPUT, "%s: \"%s\" lists %ld layers, but num_hidden_layers is %ld", p->cfg.path, key,
                       n, p->n_layers);
    return s;
}

/* A layer list a WHEN_[NOT_]LISTED condition reads (Mllama's
 * cross_attention_layers, LFM2's full_attn_idxs) must be a list of layer
 * indices when present: anything else would satisfy neither condition and
 * leave the layers to a rule meant for others. */
static fl_status check_lists(const fold_plan *p, fl_error *err)
{
    for (int f = 0; f < ARCH_MAX_FOLDS && p->arch->folds[f].norm; f++)
        for (int k = 0; k < ARCH_MAX_CONDS; k++) {
            const arch_cond *c = &p->arch->folds[f].when[k];
            if ((c->kind != WHEN_LISTED && c->kind != WHEN_NOT_LISTED) || !c->key)
                continue;
            const cJSON *v = ckpt_view_get(p->cfg, c->key);
            int ok = !v || cJSON_IsNull(v) || cJSON_IsArray(v);
            for (const cJSON *e = cJSON_IsArray(v) ? v->child : NULL; e && ok; e = e->next)
                ok = cJSON_IsNumber(e) && e->valuedouble >= 0 && e->valuedouble < MAX_LAYERS &&
                     e->valuedouble == (double)(long)e->valuedouble;
            if (!ok)
                return fl_fail(err, FL_EINPUT, "%s: \"%s\" must be a list of layer indices (0..%d)", p->cfg.path,
                               c->key, MAX_LAYERS - 1);
        }
    return FL_OK;
}

static fl_status plan_setup(fold_plan *p, const ckpt_config *cfg, const plan_catalogue *cat,
                            const plan_options *opt, arch_resolved *r, fl_error *err)
{
    memset(p, 0, sizeof *p);
    if (!(p->arena = calloc(1, sizeof(arena))))
        return plan_oom(err);
    p->keep_norms = opt->keep_norms;
    if (opt->custom && strcmp(opt->custom->model_type, cfg->model_type) != 0 &&
        strcmp(opt->custom->model_type, cfg->nested_model_type) != 0)
        return fl_fail(err, FL_EINPUT, "%s: plan is for model_type '%s', but %s/config.json says '%s'",
                       opt->plan_file ? opt->plan_file : "--plan", opt->custom->model_type, cat->dir,
                       cfg->model_type);
    fl_status s = arch_resolve(cfg, cat->dir, opt->custom, opt->custom_nested, r, err);
    if (s != FL_OK)
        return s;
    p->arch = r->arch;
    p->cfg = r->cfg;
    p->wrapper = r->wrapper;
    if ((s = layer_count(p, err)) != FL_OK || (s = check_lists(p, err)) != FL_OK ||
        (s = ckpt_view_count(p->cfg, "hidden_size", MAX_HIDDEN, &p->hidden, err)) != FL_OK)
        return s;
    return FL_OK;
}

fl_status plan_decide(const ckpt_config *cfg, const plan_catalogue *cat, const plan_options *opt,
                      fold_plan *p, fl_error *err)
{
    arch_resolved r;
    fl_status s = plan_setup(p, cfg, cat, opt, &r, err);
    planner pl = {.cat = cat, .opt = opt, .p = p, .cfg = cfg, .err = err};
    if (s == FL_OK)
        s = find_layout(&pl);
    if (s == FL_OK)
        s = plan_layers(&pl);
    if (s == FL_OK)
        s = plan_final(&pl, tie_flag(cfg, &r));
    if (s == FL_OK)
        s = plan_outputs(p, cat, err);
    if (s == FL_OK)
        p->marker = plan_marker_allowed(p, cat);
    return s;
}

/* ---------------------------------------------------------------------------
 * loading the norms (I/O) */

fl_status plan_load_norms(const checkpoint *ck, fold_plan *p, fl_error *err)
{
    for (size_t i = 0; i < p->n_groups; i++) {
        fold_group *g = &p->groups[i];
        const ckpt_tensor *t = ckpt_find(ck, g->norm);
        if (!t)
            return fl_fail(err, FL_EINPUT, "%s: norm '%s' is missing", ck->dir, g->norm);
        g->w = malloc(g->len * sizeof *g->w);
        if (!g->w)
            return plan_oom(err);
        size_t n;
        fl_status s = ckpt_read_vector(ck, t, g->w, g->len, &n, err);
        if (s != FL_OK)
            return s;
        for (size_t k = 0; k < n; k++)
            if (!isfinite(g->w[k]))
                return fl_fail(err, FL_EINPUT, "%s: norm '%s' element %zu is %g: cannot fold a non-finite gain",
                               ck->shards[t->shard].path, t->name, k, g->w[k]);
    }
    return FL_OK;
}

/* A tied config that also stores lm_head.weight: loaders disagree on what
 * that head is when it differs from the embedding (transformers 4 ties it
 * back to the embedding, transformers 5 keeps a differing stored head), so
 * the copy must be exact.  Compares the bytes in blocks. */
static fl_status check_head_copy(const checkpoint *ck, const fold_plan *p, fl_error *err)
{
    const ckpt_tensor *e = ckpt_find(ck, p->embed_name), *h = ckpt_find(ck, p->head_name);
    const char *why = NULL;
    if (!e || !h)
        return FL_OK;
    if (e->t->dtype != h->t->dtype || e->t->ndim != h->t->ndim || st_nbytes(e->t) != st_nbytes(h->t))
        why = "has another dtype or shape";
    enum { BLOCK = 4 << 20 };
    unsigned char *a = why ? NULL : malloc(BLOCK), *b = why ? NULL : malloc(BLOCK);
    if (!why && (!a || !b)) {
        free(a);
        free(b);
        return plan_oom(err);
    }
    fl_status s = FL_OK;
    for (uint64_t off = 0, n = why ? 0 : st_nbytes(e->t); off < n && !why && s == FL_OK; off += BLOCK) {
        size_t k = n - off < BLOCK ? (size_t)(n - off) : BLOCK;
        if ((s = ckpt_read(ck, e, off, a, k, err)) == FL_OK && (s = ckpt_read(ck, h, off, b, k, err)) == FL_OK &&
            memcmp(a, b, k) != 0)
            why = "holds other values";
    }
    free(a);
    free(b);
    if (s != FL_OK || !why)
        return s;
    return fl_fail(err, FL_EINPUT,
                   "%s: config.json ties the head to the embedding, but the stored '%s' %s than '%s': "
                   "transformers 4 would use the embedding and transformers 5 the stored head, so the "
                   "source has no single meaning; set tie_word_embeddings to the one you mean",
                   ck->dir, p->head_name, why, p->embed_name);
}

/* Reads and parses --plan FILE; an unreadable file is a bad command line. */
static fl_status load_plan_file(const char *path, arch_custom **out, fl_error *err)
{
    char *buf = NULL;
    size_t n = 0;
    fl_status s = fl_read_file(path, CUSTOM_PLAN_MAX_BYTES, FL_READ_UTF8, &buf, &n, err);
    if (s == FL_EIO) {
        fl_prefix(err, "--plan");
        if (err)
            err->code = FL_EUSAGE;
        return FL_EUSAGE;
    }
    if (s == FL_OK)
        s = arch_custom_parse(path, buf, n, out, err);
    free(buf);
    return s;
}

fl_status plan_build(const checkpoint *ck, const plan_options *opt, fold_plan *p, fl_error *err)
{
    memset(p, 0, sizeof *p);
    plan_options o = *opt;
    arch_custom *custom = NULL;
    fl_status s = FL_OK;
    if (opt->plan_file && (s = load_plan_file(opt->plan_file, &custom, err)) != FL_OK)
        return s;
    if (custom) {
        o.custom = arch_custom_info(custom);
        o.custom_nested = arch_custom_nested(custom);
    }
    const char **files = calloc(ck->n_shards ? ck->n_shards : 1, sizeof *files);
    if (!files) {
        arch_custom_free(custom);
        return plan_oom(err);
    }
    for (size_t i = 0; i < ck->n_shards; i++)
        files[i] = ck->shards[i].path;
    plan_catalogue cat = {ck->tensors, ck->n_tensors, ck->dir, files};
    s = plan_decide(&ck->cfg, &cat, &o, p, err);
    p->custom = custom;
    free(files);
    if (s == FL_OK && p->head_copy)
        s = check_head_copy(ck, p, err);
    return s == FL_OK ? plan_load_norms(ck, p, err) : s;
}

void plan_free(fold_plan *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->n_groups; i++) {
        free(p->groups[i].w);
        free(p->groups[i].consumers);
        free(p->groups[i].axes);
    }
    free(p->groups);
    free(p->kept);
    free(p->dropped);
    free(p->out);
    free(p->by_name);
    arch_custom_free(p->custom);
    arena *a = p->arena;
    if (a) {
        for (size_t i = 0; i < a->n; i++)
            free(a->v[i]);
        free(a->v);
        free(a);
    }
    memset(p, 0, sizeof *p);
}
