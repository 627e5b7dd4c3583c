/* forward_load.c — fwd_open: the config read step by step, the tensors bound.
 *
 * Each parse_* step reads one part of the config the way the family's
 * config class and modeling code do (forward_table.c says which keys and
 * defaults), like filling in a config struct: dimensions, attention, norms
 * and activation, RoPE (forward_rope.c), MoE routing, the head.  Then every
 * layer's tensors are bound (names checked, shapes checked, norm and bias
 * vectors read). */
#include "forward_internal.h"

#include "flashify/dtype.h"
#include "flashify/safetensors.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_DIM 65536

static const char *ckdir(const fwd_model *m) { return m->ck->dir; }

const ckpt_tensor *fwd_findf(const fwd_model *m, char *buf, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, cap, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= cap)
        return NULL;
    return ckpt_find(m->ck, buf);
}

/* ----------------------------------------------------------------------------
 * Binding tensors */

/* Binds a 2-D float matrix.  rows/cols < 0 accept any size; otherwise the
 * shape must match.  A missing tensor is an error only when `required`. */
fl_status fwd_bind_mat(const fwd_model *m, const char *name, long rows, long cols, int required, fwd_mat *out,
                       fl_error *err)
{
    memset(out, 0, sizeof *out);
    const ckpt_tensor *t = ckpt_find(m->ck, name);
    if (!t || !st_dtype_is_foldable(t->t->dtype)) {
        /* FP8 with block scales, compressed-tensors packed integers */
        fl_status s = fwd_bind_quant(m, name, rows, cols, out, err);
        if (s != FL_OK || out->t)
            return s;
    }
    if (!t) {
        if (required)
            return fl_fail(err, FL_EINPUT, "%s: tensor '%s' is missing", ckdir(m), name);
        return FL_OK;
    }
    const st_tensor *s = t->t;
    if (!st_dtype_is_foldable(s->dtype))
        return fl_fail(err, FL_EINPUT, "%s: tensor '%s' is %s; the forward pass reads F16, BF16, F32 or F64",
                       ckdir(m), name, st_dtype_name(s->dtype));
    if (s->ndim != 2 || s->shape[0] == 0 || s->shape[1] == 0 || s->shape[0] > (1ULL << 40) ||
        s->shape[1] > (1ULL << 40))
        return fl_fail(err, FL_EINPUT, "%s: tensor '%s' should be a non-empty matrix (it has %d dims)", ckdir(m),
                       name, s->ndim);
    if ((rows >= 0 && (long)s->shape[0] != rows) || (cols >= 0 && (long)s->shape[1] != cols))
        return fl_fail(err, FL_EINPUT, "%s: tensor '%s' has shape [%llu, %llu], expected [%ld, %ld]", ckdir(m), name,
                       (unsigned long long)s->shape[0], (unsigned long long)s->shape[1], rows, cols);
    *out = (fwd_mat){.t = t, .rows = (long)s->shape[0], .cols = (long)s->shape[1], .dtype = s->dtype,
                     .esize = st_dtype_bits(s->dtype) / 8};
    m->mp->total += st_nbytes(s);
    return FL_OK;
}

/* Reads exactly n elements of tensor `name` (any shape: Cohere's q_norm is
 * [heads, head_dim]) into doubles; absent: *out = NULL, an error only when
 * `required`. */
static fl_status read_vec(const fwd_model *m, const char *name, long n, int required, const char *what,
                          double **out, fl_error *err)
{
    *out = NULL;
    const ckpt_tensor *t = ckpt_find(m->ck, name);
    if (!t)
        return required ? fl_fail(err, FL_EINPUT, "%s: tensor '%s' is missing", ckdir(m), name) : FL_OK;
    uint64_t numel;
    if (st_numel(t->t, &numel) != 0 || numel != (uint64_t)n)
        return fl_fail(err, FL_EINPUT, "%s: %s '%s' has %llu elements, expected %ld", ckdir(m), what, name,
                       (unsigned long long)numel, n);
    double *d = malloc((size_t)n * sizeof *d);
    if (!d)
        return fl_fail(err, FL_EIO, "out of memory");
    size_t got = 0;
    fl_status s = ckpt_read_vector(m->ck, t, d, (size_t)n, &got, err);
    if (s != FL_OK) {
        free(d);
        return s;
    }
    *out = d;
    return FL_OK;
}

/* A float vector of exactly n elements (a bias). */
fl_status fwd_bind_vec(const fwd_model *m, const char *name, long n, int required, float **out, fl_error *err)
{
    double *d;
    *out = NULL;
    fl_status s = read_vec(m, name, n, required, "tensor", &d, err);
    if (s != FL_OK || !d)
        return s;
    float *f = malloc((size_t)n * sizeof *f);
    for (long i = 0; f && i < n; i++)
        f[i] = (float)d[i];
    free(d);
    if (!f)
        return fl_fail(err, FL_EIO, "out of memory");
    *out = f;
    return FL_OK;
}

/* A norm weight; absent = identity gain (what HF's loaders initialise a
 * missing norm to on current versions, docs/architectures.md §missing).
 * The gain is 1 + w for a 1 + w class, computed as torch does:
 * 1.0 + w.float() in fp32. */
static fl_status bind_norm(const fwd_model *m, const char *name, long n, fwd_norm *out, fl_error *err)
{
    double *d;
    out->n = n;
    out->g = NULL;
    fl_status s = read_vec(m, name, n, 0, "norm", &d, err);
    if (s != FL_OK || !d)
        return s;
    out->g = malloc((size_t)n * sizeof *out->g);
    int one_plus = m->fam->norm == NORM_RMS_1PW;
    for (long i = 0; out->g && i < n; i++)
        out->g[i] = one_plus ? (float)(1.0 + (double)(float)d[i]) : (float)d[i];
    free(d);
    return out->g ? FL_OK : fl_fail(err, FL_EIO, "out of memory");
}

fl_status fwd_bind_norm(const fwd_model *m, const char *name, long n, fwd_norm *out, fl_error *err)
{
    return bind_norm(m, name, n, out, err);
}

/* ----------------------------------------------------------------------------
 * Attention */

#define NAME(fmt) (snprintf(name, sizeof name, "%s" fmt, pre), name)
#define NAMED(n) (snprintf(name, sizeof name, "%s%s.weight", pre, n), name)
#define BIASN(n) (snprintf(name, sizeof name, "%s%s.bias", pre, n), name)

/* Which norms a layer has depends on the layout (docs/architectures.md). */
static fl_status bind_layer_norms(fwd_model *m, fwd_layer *ly, const char *pre, fl_error *err)
{
    char name[512];
    long H = m->H, qd = m->nh * m->hd, kd = m->nkv * m->hd;
    /* GLM-4 names its sandwich norms its own way (§glm4); other renames
     * come from the family's fwd_names (§zoo13-tail). */
    static const char *const gemma[3] = {"post_attention_layernorm", "pre_feedforward_layernorm",
                                         "post_feedforward_layernorm"};
    const char *const *sw = m->fam->sandwich[0] ? m->fam->sandwich : gemma;
    fl_status s = bind_norm(m, NAMED(m->nm.attn_norm), H, &ly->attn_norm, err);
    fwd_norm *post = m->fam->layout == LAYOUT_PRE ? &ly->mlp_norm : &ly->attn_post;
    if (s == FL_OK && m->fam->layout != LAYOUT_PARALLEL)
        s = bind_norm(m, NAMED(m->fam->sandwich[0] ? sw[0] : m->nm.mlp_norm), H, post, err);
    if (s == FL_OK && m->fam->layout == LAYOUT_SANDWICH)
        s = bind_norm(m, NAMED(sw[1]), H, &ly->mlp_norm, err);
    if (s == FL_OK && (m->fam->layout == LAYOUT_SANDWICH || m->fam->layout == LAYOUT_POST))
        s = bind_norm(m, NAMED(sw[2]), H, &ly->mlp_post, err);
    if (s != FL_OK || m->fam->qk == QK_NONE || !m->qk_norm_on)
        return s;
    int head = m->fam->qk == QK_HEAD || m->fam->qk == QK_HEAD_POST;
    if ((s = bind_norm(m, NAMED(m->nm.q_norm), head ? m->hd : qd, &ly->q_norm, err)) != FL_OK)
        return s;
    return bind_norm(m, NAMED(m->nm.k_norm), head ? m->hd : kd, &ly->k_norm, err);
}

/* Separate q/k/v (biases where the checkpoint has them: Qwen2 hard-codes
 * q/k/v biases; Llama's attention_bias adds o_proj's too), or Phi3's fused
 * qkv_proj. */
static fl_status bind_attention(fwd_model *m, fwd_layer *ly, const char *pre, fl_error *err)
{
    char name[512];
    fl_status s;
    long H = m->H, qd = m->nh * m->hd, kd = m->nkv * m->hd;
    long qrows = m->fam->attn_gate ? 2 * qd : qd; /* Qwen3NextAttention: query and gate */
    if (!m->fam->attn_gate &&
        ((s = fwd_bind_mat(m, NAMED(m->nm.qkv), qd + 2 * kd, H, 0, &ly->qkv, err)) != FL_OK ||
         (s = fwd_bind_vec(m, BIASN(m->nm.qkv), qd + 2 * kd, 0, &ly->bqkv, err)) != FL_OK))
        return s;
    if (!ly->qkv.t &&
        ((s = fwd_bind_mat(m, NAMED(m->nm.q), qrows, H, 1, &ly->q, err)) != FL_OK ||
         (s = fwd_bind_mat(m, NAMED(m->nm.k), kd, H, 1, &ly->k, err)) != FL_OK ||
         (s = fwd_bind_mat(m, NAMED(m->nm.v), kd, H, 1, &ly->v, err)) != FL_OK ||
         (s = fwd_bind_vec(m, BIASN(m->nm.q), qrows, 0, &ly->bq, err)) != FL_OK ||
         (s = fwd_bind_vec(m, BIASN(m->nm.k), kd, 0, &ly->bk, err)) != FL_OK ||
         (s = fwd_bind_vec(m, BIASN(m->nm.v), kd, 0, &ly->bv, err)) != FL_OK))
        return s;
    if ((s = fwd_bind_mat(m, NAMED(m->nm.o), H, qd, 1, &ly->o, err)) != FL_OK)
        return s;
    return fwd_bind_vec(m, BIASN(m->nm.o), H, 0, &ly->bo, err);
}
#undef NAME
#undef NAMED
#undef BIASN

/* Whether layer i uses the sliding window: the config's layer_types when it
 * has them, else the family's pattern. */
static int layer_slides(const fwd_model *m, long i)
{
    /* Qwen2VLTextConfig: sliding_window is None unless use_sliding_window. */
    if (m->fam->sliding == SLIDE_QWEN2 && !ckpt_view_bool(m->cfg, "use_sliding_window", 0))
        return 0;
    const cJSON *lt = ckpt_view_get(m->cfg, "layer_types");
    if (cJSON_IsArray(lt) && i < cJSON_GetArraySize(lt)) {
        const cJSON *e = cJSON_GetArrayItem(lt, (int)i);
        return cJSON_IsString(e) && strcmp(e->valuestring, "sliding_attention") == 0;
    }
    switch (m->fam->sliding) {
    case SLIDE_ALL: return 1;
    case SLIDE_EVEN: return i % 2 == 0;
    case SLIDE_PATTERN: {
        double period = m->fam->slide_period ? (double)m->fam->slide_period : 6;
        long p = (long)ckpt_view_num(m->cfg, "sliding_window_pattern", period, period);
        return p > 0 && (i + 1) % p != 0;
    }
    case SLIDE_QWEN2: return i >= ckpt_view_int(m->cfg, "max_window_layers", 80);
    default: return 0;
    }
}

/* Where layer i's RoPE and window come from. */
static void layer_positions(fwd_model *m, fwd_layer *ly, long i)
{
    int slides = layer_slides(m, i);
    int local = slides && m->freq_local;
    ly->inv_freq = local ? m->freq_local : m->freq_global;
    ly->rope_af = (float)(local ? m->af_local : m->af_global);
    const cJSON *nope = ckpt_view_get(m->cfg, "no_rope_layers");
    if (cJSON_IsArray(nope) && i < cJSON_GetArraySize(nope)) {
        const cJSON *e = cJSON_GetArrayItem(nope, (int)i);
        if (cJSON_IsNumber(e) && e->valuedouble == 0)
            ly->inv_freq = NULL; /* SmolLM3: use_rope = no_rope_layers[i] */
    }
    if (slides) {
        double w = ckpt_view_num(m->cfg, "sliding_window", (double)m->fam->window_default, 0);
        ly->window = w > 0 && w < 1e15 ? (long)w : 0;
    }
    /* Cohere2Attention rotates only where a sliding window applies;
     * Exaone4Attention's full layers have no RoPE when a window is set (both
     * config classes default sliding_window to 4096: absent is set). */
    const cJSON *sw = ckpt_view_get(m->cfg, "sliding_window");
    int windowed = !sw || ckpt_view_num(m->cfg, "sliding_window", 0, 0) > 0;
    if ((m->fam->nope_full == NOPE_FULL_ALWAYS && !(slides && windowed)) ||
        (m->fam->nope_full == NOPE_FULL_IF_WINDOW && windowed && !slides))
        ly->inv_freq = NULL;
}

static fl_status bind_layer(fwd_model *m, const char *prefix, long i, fl_error *err)
{
    fwd_layer *ly = &m->layers[i];
    char pre[256];
    if ((ly->skip = fwd_layer_skipped(m, i)))
        return FL_OK;
    snprintf(pre, sizeof pre, "%slayers.%ld.", prefix, i);
    fl_status s = bind_layer_norms(m, ly, pre, err);
    int linear = m->fam->linear_attn != LINATTN_NONE ? fwd_layer_is_linear(m, i) : 0;
    if (s == FL_OK && linear < 0)
        return fl_fail(err, FL_EINPUT, "%s/config.json: layer %ld is neither linear_attention nor full_attention "
                       "(layer_types, or full_attention_interval without them)", ckdir(m), i);
    if (s == FL_OK)
        s = linear ? fwd_bind_deltanet(m, ly, pre, err)
            : m->fam->conv_layers && fwd_layer_is_conv(m, i) ? fwd_bind_shortconv(m, ly, pre, err)
            : m->fam->mla ? fwd_bind_mla(m, ly, pre, err) : bind_attention(m, ly, pre, err);
    if (s != FL_OK)
        return s;
    if ((s = fwd_bind_ffn(m, ly, pre, err)) != FL_OK)
        return s;
    layer_positions(m, ly, i);
    if (m->fam->layer_extra && (s = m->fam->layer_extra(m, ly, i, pre, err)) != FL_OK)
        return s;
    if (ly->n_experts && (m->topk < 1 || m->topk > ly->n_experts))
        return fl_fail(err, FL_EINPUT, "%s/config.json: %s %ld but layer %ld has %ld experts", ckdir(m),
                       m->fam->topk_key ? m->fam->topk_key : "num_experts_per_tok", m->topk, i, ly->n_experts);
    return FL_OK;
}

/* ----------------------------------------------------------------------------
 * The config, step by step */

/* The family, and the config level its text model reads (text_config only
 * for composite types). */
static fl_status pick_family(fwd_model *m, fl_error *err)
{
    const ckpt_config *cfg = &m->ck->cfg;
    const fwd_family *fam = fwd_family_find(cfg->model_type);
    int nested = fam && fam->wraps && cfg->nested;
    fl_status s = fam && fam->wraps ? fwd_wrap_inner(m, fam, &fam, err) : FL_OK;
    if (s != FL_OK)
        return s;
    if (!fam)
        return fl_fail(err, FL_EINPUT, "%s/config.json: model_type '%s' has no reference forward pass", ckdir(m),
                       cfg->model_type);
    m->fam = fam;
    m->cfg = ckpt_config_view(cfg, nested);
    return FL_OK;
}

/* The text model's layout and the embedding: the family's layouts
 * (Nemotron-H backbone.embeddings, Falcon-H1 final_layernorm), else the
 * default prefixes with embed_tokens / norm. */
static fl_status parse_embedding(fwd_model *m, fwd_names *where, fl_error *err)
{
    static const fwd_names defaults[] = {
        {"model.", "embed_tokens", "norm"},           {"language_model.model.", "embed_tokens", "norm"},
        {"model.language_model.", "embed_tokens", "norm"}, {"model.text_model.", "embed_tokens", "norm"},
        {"", "embed_tokens", "norm"},                 {NULL, NULL, NULL},
    };
    char name[512];
    const fwd_names *n = m->fam->names ? m->fam->names : defaults;
    for (; n->prefix && !fwd_findf(m, name, sizeof name, "%s%s.weight", n->prefix, n->embed); n++)
        ;
    if (!n->prefix)
        return fl_fail(err, FL_EINPUT, "%s: no %s.weight tensor (looked under %s)", ckdir(m),
                       m->fam->names ? m->fam->names->embed : "embed_tokens",
                       m->fam->names ? m->fam->names->prefix
                                     : "model., language_model.model., model.language_model., model.text_model.");
    *where = *n;
    fl_status s = fwd_bind_mat(m, name, -1, -1, 1, &m->embed, err);
    if (s != FL_OK)
        return s;
    m->V = m->embed.rows;
    m->H = m->embed.cols;
    long hidden = ckpt_view_int(m->cfg, "hidden_size", 0);
    if (hidden > 0 && hidden != m->H)
        return fl_fail(err, FL_EINPUT, "%s: '%s' is %ld wide but config.json says hidden_size %ld", ckdir(m), name,
                       m->H, hidden);
    return FL_OK;
}

/* The length of the family's block-type list (the first of blocks_key's
 * "|"-separated keys present: an array, or a pattern string), or -1. */
static long block_list_length(const fwd_model *m, char key[64])
{
    for (const char *k = m->fam->blocks_key; k && *k;) {
        size_t n = strcspn(k, "|");
        snprintf(key, 64, "%.*s", (int)(n < 63 ? n : 63), k);
        k += n + (k[n] == '|');
        const cJSON *v = ckpt_view_get(m->cfg, key);
        if (cJSON_IsArray(v))
            return cJSON_GetArraySize(v);
        if (cJSON_IsString(v))
            return (long)strlen(v->valuestring);
    }
    return -1;
}

static fl_status parse_dims(fwd_model *m, fl_error *err)
{
    char key[64];
    long listed = block_list_length(m, key);
    m->L = ckpt_view_int(m->cfg, "num_hidden_layers", listed);
    if (listed >= 0 && m->L != listed)
        return fl_fail(err, FL_EINPUT, "%s/config.json: \"%s\" lists %ld layers, but num_hidden_layers is %ld",
                       ckdir(m), key, listed, m->L);
    m->nh = ckpt_view_int(m->cfg, "num_attention_heads", 0);
    m->nkv = ckpt_view_int(m->cfg, "num_key_value_heads", m->nh);
    if (m->nkv <= 0 || m->fam->mla)
        m->nkv = m->nh;
    if (m->L <= 0 || m->L > 100000 || m->nh <= 0 || m->nh > MAX_DIM || m->nkv > m->nh || m->nh % m->nkv != 0)
        return fl_fail(err, FL_EINPUT, "%s/config.json: num_hidden_layers %ld, num_attention_heads %ld, "
                       "num_key_value_heads %ld are not a valid attention layout", ckdir(m), m->L, m->nh, m->nkv);
    m->hd = ckpt_view_int(m->cfg, "head_dim", m->fam->head_dim_default);
    if (m->hd <= 0)
        m->hd = m->H / m->nh;
    if (m->hd <= 0 || m->hd > MAX_DIM)
        return fl_fail(err, FL_EINPUT, "%s/config.json: head_dim %ld is not valid", ckdir(m), m->hd);
    /* transformers 5 keeps partial_rotary_factor in rope_parameters. */
    double prf_default = m->fam->rotary_default > 0 ? m->fam->rotary_default : 1.0;
    const cJSON *rp = ckpt_view_get(m->cfg, "rope_parameters");
    const cJSON *rpf = cJSON_IsObject(rp) ? cJSON_GetObjectItemCaseSensitive(rp, "partial_rotary_factor") : NULL;
    double prf = cJSON_IsNumber(rpf) ? rpf->valuedouble
                                     : ckpt_view_num(m->cfg, "partial_rotary_factor", prf_default, prf_default);
    m->rot = (long)(m->hd * prf);
    m->rot -= m->rot % 2;
    if (m->rot <= 0 || m->rot > m->hd)
        return fl_fail(err, FL_EINPUT, "%s/config.json: partial_rotary_factor %g gives %ld rotary dims", ckdir(m),
                       prf, m->rot);
    return FL_OK;
}

static fl_status parse_norms_act(fwd_model *m, fl_error *err)
{
    const fwd_family *f = m->fam;
    m->eps = ckpt_view_num(m->cfg, f->eps_key, f->eps, f->eps);
    /* Python truthiness, as `if config.use_qk_norm` reads it (an int too). */
    m->qk_norm_on = !f->qk_flag || (ckpt_view_get(m->cfg, f->qk_flag) ? ckpt_view_set(m->cfg, f->qk_flag)
                                                                       : f->qk_default);
    /* No act_key: the modeling code fixes the activation (Lfm2MLP: silu). */
    const cJSON *v = f->act_key ? ckpt_view_get(m->cfg, f->act_key) : NULL;
    const char *act = cJSON_IsString(v) ? v->valuestring : f->act_default;
    char names[128];
    if ((m->act = fwd_act_find(act)) >= 0)
        return FL_OK;
    fwd_act_names(names, sizeof names);
    return fl_fail(err, FL_EINPUT, "%s/config.json: activation '%s' is not supported by the reference forward "
                   "pass (%s)", ckdir(m), act, names);
}

/* The scalars around the blocks: embedding, residual, attention and logit
 * multipliers, soft caps. */
static void parse_scalars(fwd_model *m)
{
    const fwd_family *f = m->fam;
    ckpt_view c = m->cfg;
    m->embed_mult = 1.0;
    if (f->embed == EMBED_SQRT_H)
        m->embed_mult = fwd_round_to_dtype(m->embed.dtype, sqrt((double)m->H));
    else if (f->embed == EMBED_KEY)
        m->embed_mult = ckpt_view_num(c, f->embed_key, f->embed_default ? f->embed_default : 1.0, 1.0);
    if (f->embed_round) /* MiniCPMScaledWordEmbedding: embed_scale.to(weight.dtype) */
        m->embed_mult = fwd_round_to_dtype(m->embed.dtype, m->embed_mult);
    /* MiniCPMDecoderLayer: scale_depth / sqrt(layers), scale_depth null = sqrt(layers). */
    double r = f->residual_key ? ckpt_view_num(c, f->residual_key, f->residual_default ? f->residual_default : 1.0,
                                               f->residual_sqrt_layers ? sqrt((double)m->L) : 1.0) : 1.0;
    m->residual_mult = f->residual_sqrt_layers ? r / sqrt((double)m->L) : r;
    m->attn_scale = 1.0 / sqrt((double)(f->mla ? m->nope + m->rot : m->hd));
    if (f->scale == SCALE_KEY) {
        m->attn_scale = ckpt_view_num(c, f->scale_key, f->scale_default, f->scale_default);
    } else if (f->scale == SCALE_KEY_ISQRT) {
        double qp = ckpt_view_num(c, f->scale_key, f->scale_default, f->scale_default);
        if (qp > 0)
            m->attn_scale = 1.0 / sqrt(qp);
    }
    m->attn_softcap = f->attn_cap_key ? ckpt_view_num(c, f->attn_cap_key, f->attn_cap, 0.0) : 0.0;
    m->final_softcap = f->final_cap_key ? ckpt_view_num(c, f->final_cap_key, f->final_cap, 0.0) : 0.0;
    m->logit_mult = 1.0;
    if (f->logit_key) {
        double v = ckpt_view_num(c, f->logit_key, f->logit_default, 1.0);
        m->logit_mult = !f->logit_divide ? v : v != 0 ? 1.0 / v : 1.0;
    }
    if (f->logit_base_key) /* MiniCPMForCausalLM: hidden / (hidden_size / dim_model_base) */
        m->logit_mult = ckpt_view_num(c, f->logit_base_key, f->logit_base_default, (double)m->H) / (double)m->H;
    m->interleaved = f->interleave_key ? ckpt_view_bool(c, f->interleave_key, f->interleaved) : f->interleaved;
    m->clip_qkv = f->clip_key ? ckpt_view_num(c, f->clip_key, 0, 0) : 0;
}

static fl_status parse_moe(fwd_model *m, fl_error *err)
{
    const fwd_family *f = m->fam;
    const char *tk = f->topk_key ? f->topk_key : "num_experts_per_tok";
    m->topk = ckpt_view_int(m->cfg, tk, f->topk_default ? f->topk_default : 2);
    if (ckpt_view_get(m->cfg, tk) && !cJSON_IsNull(ckpt_view_get(m->cfg, tk)) && ckpt_view_int(m->cfg, tk, -1) < 0)
        return fl_fail(err, FL_EINPUT, "%s/config.json: %s is not one integer (per-layer lists are not supported "
                       "by the reference forward pass)", ckdir(m), tk);
    m->norm_topk = f->topk_norm_key ? ckpt_view_bool(m->cfg, f->topk_norm_key, f->topk_norm) : f->topk_norm;
    m->routed_scale = ckpt_view_num(m->cfg, "routed_scaling_factor", 1.0, 1.0);
    if (f->router != ROUTER_DEEPSEEK)
        return FL_OK;
    m->n_group = ckpt_view_int(m->cfg, "n_group", 1);
    m->topk_group = ckpt_view_int(m->cfg, "topk_group", 1);
    const cJSON *sf = ckpt_view_get(m->cfg, "scoring_func");
    if (cJSON_IsString(sf) && strcmp(sf->valuestring, "sigmoid") != 0)
        return fl_fail(err, FL_EINPUT, "%s/config.json: scoring_func '%s' is not supported by the "
                       "reference forward pass (sigmoid)", ckdir(m), sf->valuestring);
    return FL_OK;
}

/* Tied means the embedding matrix (v4 tie_weights() also overwrites a
 * stored lm_head when the config says tie).  A null flag is not tied: the
 * loaders test `if config.tie_word_embeddings`, and None is false. */
static fl_status parse_head(fwd_model *m, const fwd_names *where, fl_error *err)
{
    fl_status s = FL_OK;
    char name[512];
    if (fwd_tie(m)) {
        m->head = m->embed;
    } else {
        snprintf(name, sizeof name, "%s.weight", m->nm.head);
        const char *const heads[] = {name, "language_model.lm_head.weight"};
        for (size_t i = 0; i < 2 && !m->head.t; i++)
            if ((s = fwd_bind_mat(m, heads[i], -1, m->H, 0, &m->head, err)) != FL_OK)
                return s;
        if (!m->head.t)
            return fl_fail(err, FL_EINPUT, "%s: tie_word_embeddings is false but there is no %s", ckdir(m), name);
        /* Ernie4_5_MoeForCausalLM: lm_head has a bias with use_bias. */
        snprintf(name, sizeof name, "%.*s.bias", (int)strlen(m->head.t->name) - 7, m->head.t->name);
        if ((s = fwd_bind_vec(m, name, m->head.rows, 0, &m->head_bias, err)) != FL_OK)
            return s;
    }
    m->V = m->head.rows; /* logits are the head's rows; token ids index the embedding */
    snprintf(name, sizeof name, "%s%s.weight", where->prefix, where->norm);
    return bind_norm(m, name, m->H, &m->final_norm, err);
}

/* "qwen3_moe, 3 layers, hidden 32, 4 heads (2 kv), vocab 96, BF16, MoE in
 * 2 layers (fused experts [E, 2I, H])": the result line names what ran. */
static void describe(fwd_model *m)
{
    int n = snprintf(m->desc, sizeof m->desc, "%s, %ld layers, hidden %ld, %ld heads (%ld kv), vocab %ld, %s",
                     m->fam->model_type, m->L, m->H, m->nh, m->nkv, m->V, st_dtype_name(m->embed.dtype));
    if (m->fam->mla && n > 0 && (size_t)n < sizeof m->desc)
        n += snprintf(m->desc + n, sizeof m->desc - (size_t)n, ", MLA%s", m->q_lora > 0 ? "" : " (q_proj)");
    if (m->linear_layers && n > 0 && (size_t)n < sizeof m->desc)
        n += snprintf(m->desc + n, sizeof m->desc - (size_t)n, ", Gated DeltaNet in %ld of %ld layers",
                      m->linear_layers, m->L);
    if (n > 0 && (size_t)n < sizeof m->desc) {
        fwd_dsa_describe(m, m->desc + n, sizeof m->desc - (size_t)n);
        n = (int)strlen(m->desc);
        fwd_quant_describe(m, m->desc + n, sizeof m->desc - (size_t)n);
        n = (int)strlen(m->desc);
    }
    if (!m->moe_layers || n < 0 || (size_t)n >= sizeof m->desc)
        return;
    int fused = 0;
    for (long i = 0; i < m->L; i++)
        if (m->layers[i].fused)
            fused = m->layers[i].fused;
    snprintf(m->desc + n, sizeof m->desc - (size_t)n, ", MoE in %ld of %ld layers (%s)", m->moe_layers, m->L,
             fused == 1   ? "fused experts [E, 2I, H]"
             : fused == 2 ? "fused experts [E, H, 2I]"
             : fused == 3 ? "MXFP4 experts, dequantized"
                          : "per-expert");
}

static long cpu_count(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 64 ? 64 : n;
}

fl_status fwd_open(const checkpoint *ck, int threads, fwd_model **out, fl_error *err)
{
    *out = NULL;
    fwd_model *m = calloc(1, sizeof *m);
    if (!m)
        return fl_fail(err, FL_EIO, "out of memory");
    m->ck = ck;
    m->mp = &m->meter;
    fl_status s = pick_family(m, err);
    if (s != FL_OK) {
        free(m);
        return s;
    }
    fwd_resolve_names(m->fam, &m->nm);
    m->pool = fl_pool_new(threads > 0 ? (threads > 64 ? 64 : threads) : cpu_count());
    m->scratch = m->pool ? calloc((size_t)fl_pool_size(m->pool), sizeof *m->scratch) : NULL;
    m->gemm = fwd_pick_gemm();
    fwd_names where = {NULL, NULL, NULL};
    if (!m->scratch)
        s = fl_fail(err, FL_EIO, "out of memory");
    if (s == FL_OK && (s = parse_embedding(m, &where, err)) == FL_OK && (s = parse_dims(m, err)) == FL_OK &&
        (s = fwd_parse_mla(m, err)) == FL_OK && (s = parse_norms_act(m, err)) == FL_OK) {
        parse_scalars(m);
        fwd_wrap_apply(m);
        /* A fwd_block builds its own RoPE (Gemma 4: per layer type) unless it asks for the shared one. */
        int rope = !m->fam->block || m->fam->block->rope;
        if ((s = parse_moe(m, err)) == FL_OK && (!rope || (s = fwd_parse_rope(m, err)) == FL_OK))
            s = parse_head(m, &where, err);
    }
    if (s == FL_OK && !(m->layers = calloc((size_t)m->L, sizeof *m->layers)))
        s = fl_fail(err, FL_EIO, "out of memory");
    if (s == FL_OK && m->fam->block)
        s = m->fam->block->open(m, where.prefix, err);
    for (long i = 0; s == FL_OK && !m->fam->block && i < m->L; i++)
        s = bind_layer(m, where.prefix, i, err);
    if (s != FL_OK) {
        fwd_close(m);
        return s;
    }
    describe(m);
    size_t n = strlen(m->desc);
    if (m->fam->block && m->fam->block->describe)
        m->fam->block->describe(m, m->desc + n, sizeof m->desc - n);
    n = strlen(m->desc);
    fwd_wrap_describe(m, m->desc + n, sizeof m->desc - n);
    *out = m;
    return FL_OK;
}
