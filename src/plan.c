/* plan.c — building and checking the fold plan (see plan.h).
 *
 * The plan comes from config.json's model_type and the architecture table,
 * never from tensor-name patterns (architectures.md pitfall 2: the same
 * name means different things in different families).  Every tensor the
 * table expects must exist with a matching input dimension before anything
 * is written. */
#include "flashify/plan.h"
#include "flashify/dtype.h"
#include "flashify/util.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_EXPERTS 65536
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

/* Grows *arr (of elements of `size` bytes) to hold one more element. */
static void *grow(void *arr, size_t *cap, size_t n, size_t size)
{
    if (n < *cap)
        return arr;
    size_t c = *cap ? *cap * 2 : 16;
    void *q = realloc(arr, c * size);
    if (q)
        *cap = c;
    return q;
}

/* ---------------------------------------------------------------------------
 * --plan FILE */

static const char *custom_str(fold_plan *p, const cJSON *v)
{
    return cJSON_IsString(v) ? arena_printf(p, "%s", v->valuestring) : NULL;
}

/* Parses a custom architecture (README "Custom architectures"):
 * {"model_type": "...", "gain": "w" | "1+w",
 *  "layers": [{"norm": "input_layernorm", "consumers": ["self_attn.q_proj", ...]}, ...],
 *  "keep": [{"norm": "...", "reason": "..."}], "tie_word_embeddings_default": false,
 *  "flashnorm_marker": true} */
static fl_status custom_arch_load(const char *path, fold_plan *p, fl_error *err)
{
    char *buf = NULL;
    size_t n = 0;
    fl_status rs = fl_read_file(path, CUSTOM_PLAN_MAX_BYTES, FL_READ_UTF8, &buf, &n, err);
    if (rs == FL_EIO) {
        /* --plan names a file that cannot be read: a bad command line. */
        fl_prefix(err, "--plan");
        if (err)
            err->code = FL_EUSAGE;
        return FL_EUSAGE;
    }
    if (rs != FL_OK)
        return rs;
    cJSON *j = cJSON_ParseWithLength(buf, n);
    free(buf);
    fl_status s = FL_EINPUT;
    arch_info *a = &p->custom;
    memset(a, 0, sizeof *a);
    if (!cJSON_IsObject(j)) {
        fl_fail(err, FL_EINPUT, "%s: not a JSON object", path);
        goto out;
    }
    a->model_type = custom_str(p, cJSON_GetObjectItemCaseSensitive(j, "model_type"));
    if (!a->model_type) {
        fl_fail(err, FL_EINPUT, "%s: \"model_type\" must be a string", path);
        goto out;
    }
    const cJSON *gain = cJSON_GetObjectItemCaseSensitive(j, "gain");
    if (!gain || (cJSON_IsString(gain) && strcmp(gain->valuestring, "w") == 0))
        a->gain = GAIN_W;
    else if (cJSON_IsString(gain) && strcmp(gain->valuestring, "1+w") == 0)
        a->gain = GAIN_ONE_PLUS_W;
    else {
        fl_fail(err, FL_EINPUT, "%s: \"gain\" must be \"w\" or \"1+w\"", path);
        goto out;
    }
    a->norm_kind = a->gain == GAIN_W ? NORM_RMS_CAST_THEN_MUL : NORM_RMS_GEMMA;
    const cJSON *layers = cJSON_GetObjectItemCaseSensitive(j, "layers");
    if (!cJSON_IsArray(layers) || cJSON_GetArraySize(layers) > ARCH_MAX_GROUPS) {
        fl_fail(err, FL_EINPUT, "%s: \"layers\" must be an array of at most %d {norm, consumers}",
                path, ARCH_MAX_GROUPS);
        goto out;
    }
    int gi = 0;
    for (const cJSON *g = layers->child; g; g = g->next, gi++) {
        arch_fold *fold = &a->folds[gi];
        fold->norm = custom_str(p, cJSON_GetObjectItemCaseSensitive(g, "norm"));
        const cJSON *cons = cJSON_GetObjectItemCaseSensitive(g, "consumers");
        if (!fold->norm || !cJSON_IsArray(cons) || cJSON_GetArraySize(cons) < 1 ||
            cJSON_GetArraySize(cons) > ARCH_MAX_CONSUMERS) {
            fl_fail(err, FL_EINPUT, "%s: layers[%d] needs \"norm\" (string) and \"consumers\" (1 to %d strings)",
                    path, gi, ARCH_MAX_CONSUMERS);
            goto out;
        }
        int ci = 0;
        for (const cJSON *c = cons->child; c; c = c->next, ci++)
            if (!(fold->consumers[ci] = custom_str(p, c))) {
                fl_fail(err, FL_EINPUT, "%s: layers[%d].consumers[%d] is not a string", path, gi, ci);
                goto out;
            }
    }
    const cJSON *keep = cJSON_GetObjectItemCaseSensitive(j, "keep");
    if (keep) {
        if (!cJSON_IsArray(keep) || cJSON_GetArraySize(keep) > ARCH_MAX_KEEPS) {
            fl_fail(err, FL_EINPUT, "%s: \"keep\" must be an array of at most %d {norm, reason}",
                    path, ARCH_MAX_KEEPS);
            goto out;
        }
        int ki = 0;
        for (const cJSON *k = keep->child; k; k = k->next, ki++) {
            a->keeps[ki].norm = custom_str(p, cJSON_GetObjectItemCaseSensitive(k, "norm"));
            a->keeps[ki].reason = custom_str(p, cJSON_GetObjectItemCaseSensitive(k, "reason"));
            if (!a->keeps[ki].norm) {
                fl_fail(err, FL_EINPUT, "%s: keep[%d].norm must be a string", path, ki);
                goto out;
            }
            if (!a->keeps[ki].reason)
                a->keeps[ki].reason = "declared in the plan file";
        }
    }
    a->tie_default = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "tie_word_embeddings_default"));
    const cJSON *ek = cJSON_GetObjectItemCaseSensitive(j, "experts_key");
    if (ek && !(a->experts_key = custom_str(p, ek))) {
        fl_fail(err, FL_EINPUT, "%s: \"experts_key\" must be a string (the config key holding the expert count)", path);
        goto out;
    }
    const cJSON *marker = cJSON_GetObjectItemCaseSensitive(j, "flashnorm_marker");
    a->marker_ok = marker ? cJSON_IsTrue(marker) : 1;
    s = FL_OK;
out:
    cJSON_Delete(j);
    return s;
}

/* ---------------------------------------------------------------------------
 * checks */

static const char *shard_path(const checkpoint *ck, const ckpt_tensor *t)
{
    return ck->shards[t->shard].path;
}

/* The quantisation side tensors that mean a weight is not a plain matrix. */
static const char *const QUANT_SUFFIXES[] = {
    ".weight_scale_inv", ".weight_scale", ".scales", ".qweight", ".qzeros", ".absmax", NULL};

static fl_status check_consumer(const checkpoint *ck, const char *base,
                                const ckpt_tensor *norm, uint64_t len,
                                const ckpt_tensor **out, fl_error *err)
{
    char name[ST_MAX_NAME + 64];
    for (int i = 0; QUANT_SUFFIXES[i]; i++) {
        snprintf(name, sizeof name, "%s%s", base, QUANT_SUFFIXES[i]);
        const ckpt_tensor *q = ckpt_find(ck, name);
        if (q)
            return fl_fail(err, FL_EINPUT,
                           "%s: '%s.weight' is quantized ('%s' present): a per-channel norm gain does not "
                           "commute with block scales; dequantize the checkpoint first",
                           shard_path(ck, q), base, name);
    }
    snprintf(name, sizeof name, "%s.weight", base);
    const ckpt_tensor *t = ckpt_find(ck, name);
    if (!t)
        return fl_fail(err, FL_EINPUT, "%s: tensor '%s' (read by '%s') is missing",
                       ck->dir, name, norm->name);
    if (!st_dtype_is_foldable(t->t->dtype))
        return fl_fail(err, FL_EINPUT,
                       "%s: tensor '%s' is %s, a quantized or integer dtype: folding '%s' into it would not be exact; "
                       "dequantize first",
                       shard_path(ck, t), name, st_dtype_name(t->t->dtype), norm->name);
    if (t->t->ndim != 2)
        return fl_fail(err, FL_EINPUT, "%s: tensor '%s' has %d dimensions, expected a 2-D matrix",
                       shard_path(ck, t), name, t->t->ndim);
    if (t->t->shape[1] != len)
        return fl_fail(err, FL_EINPUT,
                       "%s: tensor '%s' has input dimension %llu, but '%s' has %llu elements",
                       shard_path(ck, t), name, (unsigned long long)t->t->shape[1], norm->name,
                       (unsigned long long)len);
    *out = t;
    return FL_OK;
}

/* Reads a norm vector and checks it can be folded. */
static fl_status load_norm(const checkpoint *ck, fold_plan *p, const ckpt_tensor *t,
                           fl_gain gain, fold_group *g, fl_error *err)
{
    if (t->t->ndim != 1)
        return fl_fail(err, FL_EINPUT, "%s: norm '%s' has %d dimensions, expected 1",
                       shard_path(ck, t), t->name, t->t->ndim);
    uint64_t len = t->t->shape[0];
    if (len == 0 || len > MAX_NORM_LEN)
        return fl_fail(err, FL_EINPUT, "%s: norm '%s' has %llu elements",
                       shard_path(ck, t), t->name, (unsigned long long)len);
    g->w = malloc(len * sizeof *g->w);
    if (!g->w)
        return fl_fail(err, FL_EIO, "out of memory");
    size_t n;
    fl_status s = ckpt_read_vector(ck, t, g->w, len, &n, err);
    if (s != FL_OK)
        return s;
    for (size_t i = 0; i < n; i++)
        if (!isfinite(g->w[i]))
            return fl_fail(err, FL_EINPUT, "%s: norm '%s' element %zu is %g: cannot fold a non-finite gain",
                           shard_path(ck, t), t->name, i, g->w[i]);
    g->norm = t->name;
    g->gain = gain;
    g->len = n;
    (void)p;
    return FL_OK;
}

/* ---------------------------------------------------------------------------
 * building */

typedef struct {
    const char *name;
    fold_group *group;   /* NULL: index into groups stored in gi instead */
    size_t gi;
} consumer_ref;

static int cmp_consumer(const void *a, const void *b)
{
    return strcmp(((const consumer_ref *)a)->name, ((const consumer_ref *)b)->name);
}

static int cmp_strp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int cmp_out(const void *a, const void *b)
{
    const out_tensor *x = a, *y = b;
    if (x->shard != y->shard)
        return x->shard < y->shard ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* qsort has no context argument: the plan being sorted, per thread. */
static _Thread_local const fold_plan *sorting_plan;

static int cmp_by_name(const void *a, const void *b)
{
    return strcmp(sorting_plan->out[*(const size_t *)a].name, sorting_plan->out[*(const size_t *)b].name);
}

static int config_key_set(const ckpt_config *cfg, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg->text, key);
    return v && !cJSON_IsNull(v);
}

/* Adds one fold group for `norm_name` and its consumers (already expanded
 * names without ".weight"). */
static fl_status add_group(const checkpoint *ck, fold_plan *p, size_t *cap_groups,
                           const char *norm_name, fl_gain gain,
                           const char **consumer_bases, size_t n_bases, fl_error *err)
{
    const ckpt_tensor *nt = ckpt_find(ck, norm_name);
    if (!nt && cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(ck->cfg.json, "flashnorm_folded")))
        return fl_fail(err, FL_EINPUT, "%s: already a FlashNorm checkpoint (config.json has \"flashnorm_folded\": true "
                       "and norm '%s' is absent); nothing to fold",
                       ck->dir, norm_name);
    if (!nt)
        return fl_fail(err, FL_EINPUT, "%s: norm '%s' is missing (model_type %s expects it)",
                       ck->dir, norm_name, p->arch->model_type);
    fold_group *groups = grow(p->groups, cap_groups, p->n_groups, sizeof *groups);
    if (!groups)
        return fl_fail(err, FL_EIO, "out of memory");
    p->groups = groups;
    fold_group *g = &p->groups[p->n_groups++];
    memset(g, 0, sizeof *g);
    fl_status s = load_norm(ck, p, nt, gain, g, err);
    if (s != FL_OK)
        return s;
    g->consumers = calloc(n_bases, sizeof *g->consumers);
    if (!g->consumers)
        return fl_fail(err, FL_EIO, "out of memory");
    for (size_t i = 0; i < n_bases; i++) {
        const ckpt_tensor *ct;
        if ((s = check_consumer(ck, consumer_bases[i], nt, g->len, &ct, err)) != FL_OK)
            return s;
        g->consumers[g->n_consumers++] = ct->name;
    }
    return FL_OK;
}

/* Expands one consumer pattern of the table for layer prefix `lp`: "{e}"
 * over the experts, "a|b" to the alternative the checkpoint has. */
static fl_status expand_consumer(const checkpoint *ck, fold_plan *p, const char *lp,
                                 const char *pattern, long n_experts,
                                 const char ***bases, size_t *n, size_t *cap, fl_error *err)
{
    char alt[256];
    const char *choice = pattern;
    if (strchr(pattern, '|')) {
        /* Pick the first alternative stored in the checkpoint. */
        const char *s = pattern;
        choice = NULL;
        while (*s) {
            const char *bar = strchr(s, '|');
            size_t len = bar ? (size_t)(bar - s) : strlen(s);
            if (len >= sizeof alt)
                len = sizeof alt - 1;
            memcpy(alt, s, len);
            alt[len] = '\0';
            char probe[ST_MAX_NAME + 64];
            snprintf(probe, sizeof probe, "%s%s.weight", lp, alt);
            if (ckpt_find(ck, probe)) {
                choice = alt;
                break;
            }
            if (!bar)
                break;
            s = bar + 1;
        }
        if (!choice)
            return fl_fail(err, FL_EINPUT, "%s: none of %s%s is stored", ck->dir, lp, pattern);
    }
    const char *e = strstr(choice, "{e}");
    long count = e ? n_experts : 1;
    if (e && n_experts <= 0)
        return fl_fail(err, FL_EINPUT,
                       "%s: consumer '%s%s' expands over experts, but the expert count is 0 "
                       "(set \"experts_key\" in the plan to the config key that holds it)",
                       ck->dir, lp, choice);
    for (long j = 0; j < count; j++) {
        char *name = e ? arena_printf(p, "%s%.*s%ld%s", lp, (int)(e - choice), choice, j, e + 3)
                       : arena_printf(p, "%s%s", lp, choice);
        const char **b = grow(*bases, cap, *n, sizeof **bases);
        if (!name || !b)
            return fl_fail(err, FL_EIO, "out of memory");
        *bases = b;
        (*bases)[(*n)++] = name;
    }
    return FL_OK;
}

static fl_status build_layer_groups(const checkpoint *ck, fold_plan *p, fl_error *err)
{
    const arch_info *a = p->arch;
    const ckpt_config *cfg = &ck->cfg;
    long n_experts = 0;
    if (a->experts_key) {
        n_experts = ckpt_config_int(cfg, a->experts_key, -1);
        if (n_experts < 0 || n_experts > MAX_EXPERTS)
            return fl_fail(err, FL_EINPUT, "%s/config.json: \"%s\" is missing or out of range (0..%d)",
                           ck->dir, a->experts_key, MAX_EXPERTS);
    }
    size_t cap_groups = 0, cap_bases = 0;
    const char **bases = NULL;
    fl_status s = FL_OK;
    for (long i = 0; i < p->n_layers && s == FL_OK; i++) {
        char *lp = arena_printf(p, "%slayers.%ld.", p->prefix, i);
        if (!lp)
            return fl_fail(err, FL_EIO, "out of memory");
        int moe = a->is_moe_layer ? a->is_moe_layer(cfg, i) : 0;
        for (int gi = 0; gi < ARCH_MAX_GROUPS && a->folds[gi].norm && s == FL_OK; gi++) {
            const arch_fold *f = &a->folds[gi];
            if ((f->layers == LAYERS_MOE && !moe) || (f->layers == LAYERS_DENSE && moe))
                continue;
            if (f->if_config && !config_key_set(cfg, f->if_config))
                continue;
            size_t n_bases = 0;
            for (int ci = 0; ci < ARCH_MAX_CONSUMERS && f->consumers[ci] && s == FL_OK; ci++)
                s = expand_consumer(ck, p, lp, f->consumers[ci], n_experts, &bases, &n_bases,
                                    &cap_bases, err);
            if (s != FL_OK)
                break;
            char *norm = arena_printf(p, "%s%s.weight", lp, f->norm);
            if (!norm) {
                s = fl_fail(err, FL_EIO, "out of memory");
                break;
            }
            s = add_group(ck, p, &cap_groups, norm, a->gain, bases, n_bases, err);
        }
        size_t cap_kept = p->n_kept;
        for (int ki = 0; ki < ARCH_MAX_KEEPS && a->keeps[ki].norm && s == FL_OK; ki++) {
            char *name = arena_printf(p, "%s%s.weight", lp, a->keeps[ki].norm);
            const ckpt_tensor *t = name ? ckpt_find(ck, name) : NULL;
            if (!t)
                continue;
            plan_kept *k = grow(p->kept, &cap_kept, p->n_kept, sizeof *k);
            if (!k) {
                s = fl_fail(err, FL_EIO, "out of memory");
                break;
            }
            p->kept = k;
            p->kept[p->n_kept++] = (plan_kept){t->name, a->keeps[ki].reason};
        }
    }
    free(bases);
    return s;
}

/* The text model's prefix: plain "model." or one of the two Gemma 3
 * multimodal layouts (architectures.md §1, gemma3 row). */
static fl_status find_prefix(const checkpoint *ck, fold_plan *p, fl_error *err)
{
    static const char *const prefixes[] = {"model.", "language_model.model.",
                                           "model.language_model.", NULL};
    static const char *const heads[] = {"lm_head.weight", "language_model.lm_head.weight",
                                        "lm_head.weight"};
    for (int i = 0; prefixes[i]; i++) {
        char name[128];
        snprintf(name, sizeof name, "%sembed_tokens.weight", prefixes[i]);
        const ckpt_tensor *t = ckpt_find(ck, name);
        if (t) {
            snprintf(p->prefix, sizeof p->prefix, "%s", prefixes[i]);
            p->embed_name = t->name;
            p->head_name = heads[i];
            return FL_OK;
        }
    }
    return fl_fail(err, FL_EINPUT, "%s: no embedding tensor (model.embed_tokens.weight) found", ck->dir);
}

/* Decides how the final norm is handled.  A tied head is the embedding:
 * folding into it would scale the input embeddings too, so the default
 * unties (materialises lm_head = E·diag(g)); --keep-tied leaves the final
 * norm in place. */
static fl_status plan_final(const checkpoint *ck, const plan_options *opt, fold_plan *p,
                            fl_error *err)
{
    const ckpt_tensor *embed = ckpt_find(ck, p->embed_name);
    const ckpt_tensor *head = ckpt_find(ck, p->head_name);
    int flag = ck->cfg.tie_word_embeddings;
    if (flag < 0)
        flag = p->arch->tie_default;
    int same_storage = head && head->shard == embed->shard && head->t == embed->t;
    p->tied = !head || same_storage || flag == 1;
    if (p->tied && opt->keep_tied) {
        p->final_folded = 0;
        return FL_OK;
    }
    p->final_folded = 1;
    if (p->tied) {
        p->untie = 1;
        p->added_bytes = st_nbytes(embed->t);
        /* The materialised head has the embedding's shape and dtype. */
        if (!st_dtype_is_foldable(embed->t->dtype) || embed->t->ndim != 2)
            return fl_fail(err, FL_EINPUT, "%s: embedding '%s' is %s with %d dimensions; cannot untie",
                           shard_path(ck, embed), embed->name, st_dtype_name(embed->t->dtype),
                           embed->t->ndim);
    }
    return FL_OK;
}

fl_status plan_build(const checkpoint *ck, const plan_options *opt, fold_plan *p,
                     fl_error *err)
{
    memset(p, 0, sizeof *p);
    p->arena = calloc(1, sizeof(arena));
    if (!p->arena)
        return fl_fail(err, FL_EIO, "out of memory");
    p->keep_norms = opt->keep_norms;
    const ckpt_config *cfg = &ck->cfg;
    fl_status s;
    if (opt->plan_file) {
        if ((s = custom_arch_load(opt->plan_file, p, err)) != FL_OK)
            return s;
        if (strcmp(p->custom.model_type, cfg->model_type) != 0 &&
            strcmp(p->custom.model_type, cfg->text_model_type) != 0)
            return fl_fail(err, FL_EINPUT, "%s: plan is for model_type '%s', but %s/config.json says '%s'",
                           opt->plan_file, p->custom.model_type, ck->dir, cfg->model_type);
        p->arch = &p->custom;
    } else {
        p->arch = arch_find(cfg->text_model_type);
        if (!p->arch)
            p->arch = arch_find(cfg->model_type);
        if (!p->arch)
            return fl_fail(err, FL_EINPUT,
                           "%s/config.json: model_type '%s' is not supported (supported: %s); "
                           "describe its norms with --plan FILE",
                           ck->dir, cfg->model_type, arch_supported_list());
    }
    p->n_layers = cfg->num_hidden_layers;
    if ((s = find_prefix(ck, p, err)) != FL_OK)
        return s;
    if ((s = build_layer_groups(ck, p, err)) != FL_OK)
        return s;

    /* Final norm. */
    char *final_name = arena_printf(p, "%snorm.weight", p->prefix);
    const ckpt_tensor *final = final_name ? ckpt_find(ck, final_name) : NULL;
    if (!final)
        return fl_fail(err, FL_EINPUT, "%s: final norm '%s' is missing", ck->dir,
                       final_name ? final_name : "model.norm.weight");
    /* config.json must describe these tensors: the final norm scales the
     * hidden state, so its length is hidden_size in every family. */
    if (final->t->ndim != 1 || final->t->shape[0] != (uint64_t)cfg->hidden_size)
        return fl_fail(err, FL_EINPUT, "%s/config.json: hidden_size is %ld, but '%s' has %d dimensions, %llu elements",
                       ck->dir, cfg->hidden_size, final->name, final->t->ndim,
                       (unsigned long long)(final->t->ndim ? final->t->shape[0] : 1));
    if ((s = plan_final(ck, opt, p, err)) != FL_OK)
        return s;
    size_t cap_groups = p->n_groups;
    if (p->final_folded) {
        if (p->untie) {
            /* The head does not exist yet: check against the embedding. */
            const ckpt_tensor *embed = ckpt_find(ck, p->embed_name);
            fold_group *groups = grow(p->groups, &cap_groups, p->n_groups, sizeof *groups);
            if (!groups)
                return fl_fail(err, FL_EIO, "out of memory");
            p->groups = groups;
            fold_group *g = &p->groups[p->n_groups++];
            memset(g, 0, sizeof *g);
            if ((s = load_norm(ck, p, final, p->arch->gain, g, err)) != FL_OK)
                return s;
            if (embed->t->shape[1] != g->len)
                return fl_fail(err, FL_EINPUT, "%s: embedding '%s' has width %llu, but '%s' has %zu elements",
                               shard_path(ck, embed), embed->name,
                               (unsigned long long)embed->t->shape[1], final->name, g->len);
            g->consumers = calloc(1, sizeof *g->consumers);
            if (!g->consumers)
                return fl_fail(err, FL_EIO, "out of memory");
            g->consumers[g->n_consumers++] = p->head_name;
        } else {
            /* "lm_head.weight" -> consumer base "lm_head" */
            const char *head_base = arena_printf(p, "%.*s", (int)(strlen(p->head_name) - 7), p->head_name);
            if (!head_base)
                return fl_fail(err, FL_EIO, "out of memory");
            if ((s = add_group(ck, p, &cap_groups, final->name, p->arch->gain, &head_base, 1, err)) != FL_OK)
                return s;
        }
    } else {
        size_t cap_kept = p->n_kept;
        plan_kept *k = grow(p->kept, &cap_kept, p->n_kept, sizeof *k);
        if (!k)
            return fl_fail(err, FL_EIO, "out of memory");
        p->kept = k;
        p->kept[p->n_kept++] = (plan_kept){final->name,
                                           "--keep-tied: lm_head is the embedding, so the final norm stays"};
    }
    p->marker = p->arch->marker_ok && p->final_folded;

    /* Every consumer is read by exactly one norm. */
    size_t n_cons = 0;
    for (size_t i = 0; i < p->n_groups; i++)
        n_cons += p->groups[i].n_consumers;
    consumer_ref *refs = calloc(n_cons ? n_cons : 1, sizeof *refs);
    p->dropped = calloc(p->n_groups ? p->n_groups : 1, sizeof *p->dropped);
    if (!refs || !p->dropped) {
        free(refs);
        return fl_fail(err, FL_EIO, "out of memory");
    }
    size_t k = 0;
    for (size_t i = 0; i < p->n_groups; i++) {
        p->dropped[p->n_dropped++] = p->groups[i].norm;
        for (size_t j = 0; j < p->groups[i].n_consumers; j++)
            refs[k++] = (consumer_ref){p->groups[i].consumers[j], NULL, i};
    }
    qsort(refs, n_cons, sizeof *refs, cmp_consumer);
    for (size_t i = 1; i < n_cons; i++)
        if (strcmp(refs[i - 1].name, refs[i].name) == 0) {
            s = fl_fail(err, FL_EINPUT, "plan error: tensor '%s' would be folded by two norms ('%s' and '%s')",
                        refs[i].name, p->groups[refs[i - 1].gi].norm, p->groups[refs[i].gi].norm);
            free(refs);
            return s;
        }
    qsort(p->dropped, p->n_dropped, sizeof *p->dropped, cmp_strp);
    for (size_t i = 1; i < p->n_dropped; i++)
        if (strcmp(p->dropped[i - 1], p->dropped[i]) == 0) {
            free(refs);
            return fl_fail(err, FL_EINPUT, "plan error: norm '%s' appears in two fold groups", p->dropped[i]);
        }

    /* The output tensors, shard by shard. */
    size_t cap_out = 0;
    const ckpt_tensor *embed = ckpt_find(ck, p->embed_name);
    int head_written = 0;
    for (size_t i = 0; i < ck->n_tensors; i++) {
        const ckpt_tensor *t = &ck->tensors[i];
        out_tensor o = {t->name, t, OUT_COPY, NULL, t->shard};
        const char *key = t->name;
        int is_head = p->untie && strcmp(t->name, p->head_name) == 0;
        int is_embed = strcmp(t->name, p->embed_name) == 0;
        if (t->is_alias && !(p->untie && (is_head || is_embed)))
            continue;  /* stays an alias in the shard's __metadata__ */
        if (bsearch(&key, p->dropped, p->n_dropped, sizeof *p->dropped, cmp_strp)) {
            if (!p->keep_norms)
                continue;
            o.op = OUT_IDENTITY;
        } else if (is_head) {
            o.op = OUT_FOLD;
            o.src = embed;
            o.shard = embed->shard;
            o.group = &p->groups[p->n_groups - 1];
            head_written = 1;
        } else {
            consumer_ref probe = {t->name, NULL, 0};
            consumer_ref *r = bsearch(&probe, refs, n_cons, sizeof *refs, cmp_consumer);
            if (r) {
                o.op = OUT_FOLD;
                o.group = &p->groups[r->gi];
            }
        }
        out_tensor *outs = grow(p->out, &cap_out, p->n_out, sizeof *outs);
        if (!outs) {
            free(refs);
            return fl_fail(err, FL_EIO, "out of memory");
        }
        p->out = outs;
        p->out[p->n_out++] = o;
    }
    if (p->untie && !head_written) {
        out_tensor *outs = grow(p->out, &cap_out, p->n_out, sizeof *outs);
        if (!outs) {
            free(refs);
            return fl_fail(err, FL_EIO, "out of memory");
        }
        p->out = outs;
        p->out[p->n_out++] = (out_tensor){p->head_name, embed, OUT_FOLD,
                                          &p->groups[p->n_groups - 1], embed->shard};
    }
    free(refs);
    qsort(p->out, p->n_out, sizeof *p->out, cmp_out);
    p->by_name = malloc((p->n_out ? p->n_out : 1) * sizeof *p->by_name);
    if (!p->by_name)
        return fl_fail(err, FL_EIO, "out of memory");
    for (size_t i = 0; i < p->n_out; i++)
        p->by_name[i] = i;
    sorting_plan = p;
    qsort(p->by_name, p->n_out, sizeof *p->by_name, cmp_by_name);
    sorting_plan = NULL;
    return FL_OK;
}

void plan_free(fold_plan *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->n_groups; i++) {
        free(p->groups[i].w);
        free(p->groups[i].consumers);
    }
    free(p->groups);
    free(p->kept);
    free(p->dropped);
    free(p->out);
    free(p->by_name);
    arena *a = p->arena;
    if (a) {
        for (size_t i = 0; i < a->n; i++)
            free(a->v[i]);
        free(a->v);
        free(a);
    }
    memset(p, 0, sizeof *p);
}

void plan_name_pattern(const char *name, char *out, size_t cap)
{
    const char *l = strstr(name, "layers.");
    size_t n = strlen(name);
    if (n > 7 && strcmp(name + n - 7, ".weight") == 0)
        n -= 7;
    if (!l || (size_t)(l - name) >= n) {
        snprintf(out, cap, "%.*s", (int)n, name);
        return;
    }
    const char *d = l + 7;
    const char *e = d;
    while (*e >= '0' && *e <= '9')
        e++;
    if (e == d) {
        snprintf(out, cap, "%.*s", (int)n, name);
        return;
    }
    snprintf(out, cap, "%.*s{i}%.*s", (int)(d - name), name, (int)(n - (size_t)(e - name)), e);
}

const out_tensor *plan_find_out(const fold_plan *p, const char *name)
{
    size_t lo = 0, hi = p->n_out;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const out_tensor *o = &p->out[p->by_name[mid]];
        int c = strcmp(o->name, name);
        if (c == 0)
            return o;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}
