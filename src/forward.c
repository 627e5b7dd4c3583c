/* forward.c — the reference forward pass (see forward.h).
 *
 * Sections: the family table, loading (tensors, config, RoPE), the matrix
 * kernel (streamed from the files, threaded), the neural-net blocks, and
 * the forward pass.  Every rule cites the Hugging Face modeling class it
 * reproduces (models/<family>/modeling_<family>.py). */
#include "flashify/forward.h"

#include "flashify/dtype.h"
#include "flashify/pool.h"
#include "flashify/safetensors.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define FWD_X86 1
#endif

/* ----------------------------------------------------------------------------
 * The family table: how each model_type wires its norms (architectures.md
 * §1).  Tensor names inside a layer are shared by all families; the
 * alternatives (fused qkv_proj, Mixtral's w1/w3/w2) are resolved by which
 * tensor the checkpoint has. */

enum {
    LAYOUT_PRE,      /* x += attn(n1(x)); x += mlp(n2(x))            (Llama) */
    LAYOUT_SANDWICH, /* x += n_post(attn(n1(x))); x += n_post2(mlp(n_pre(x))) (Gemma2/3) */
    LAYOUT_POST,     /* x += n_post(attn(x)); x += n_post2(mlp(x))   (OLMo2) */
    LAYOUT_PARALLEL  /* h = n1(x); x += attn(h) + mlp(h)             (Cohere) */
};
enum {
    QK_NONE,
    QK_HEAD,    /* RMSNorm over head_dim, one weight for all heads (Qwen3, Gemma3) */
    QK_FULL,    /* RMSNorm over the whole projection, before the reshape (OLMo2) */
    QK_HEAD_2D  /* LayerNorm over head_dim, weight [heads, head_dim] (Cohere use_qk_norm) */
};

typedef struct {
    const char *model_type;
    int one_plus_w;   /* gain is 1 + w (GemmaRMSNorm) */
    int layernorm;    /* mean-centred LayerNorm without bias (CohereLayerNorm) */
    int layout;       /* LAYOUT_* */
    int qk;           /* QK_* */
    int embed_sqrt;   /* embeddings times sqrt(hidden), rounded to the dtype (Gemma*) */
    int interleaved;  /* RoPE rotates (2i, 2i+1) instead of (i, i + d/2) (Cohere) */
    int tie_default;  /* config class default of tie_word_embeddings */
    int sliding;      /* 0; 2: even layers slide (Gemma2); 6: pattern (Gemma3); 1: all (Mistral) */
    int gemma_act;    /* activation from hidden_activation, default gelu_pytorch_tanh */
} fwd_family;

static const fwd_family families[] = {
    /* model_type   1+w LN layout            qk          sqrtH ilv tie slide gact */
    {"llama",        0, 0, LAYOUT_PRE,      QK_NONE,    0,    0,  0,  0,    0},
    {"mistral",      0, 0, LAYOUT_PRE,      QK_NONE,    0,    0,  0,  1,    0},
    {"mixtral",      0, 0, LAYOUT_PRE,      QK_NONE,    0,    0,  0,  1,    0},
    {"qwen2",        0, 0, LAYOUT_PRE,      QK_NONE,    0,    0,  0,  0,    0},
    {"qwen2_moe",    0, 0, LAYOUT_PRE,      QK_NONE,    0,    0,  0,  0,    0},
    {"qwen3",        0, 0, LAYOUT_PRE,      QK_HEAD,    0,    0,  0,  0,    0},
    {"qwen3_moe",    0, 0, LAYOUT_PRE,      QK_HEAD,    0,    0,  0,  0,    0},
    {"phi3",         0, 0, LAYOUT_PRE,      QK_NONE,    0,    0,  0,  0,    0},
    {"granite",      0, 0, LAYOUT_PRE,      QK_NONE,    0,    0,  0,  0,    0},
    {"smollm3",      0, 0, LAYOUT_PRE,      QK_NONE,    0,    0,  1,  0,    0},
    {"gemma",        1, 0, LAYOUT_PRE,      QK_NONE,    1,    0,  1,  0,    1},
    {"gemma2",       1, 0, LAYOUT_SANDWICH, QK_NONE,    1,    0,  1,  2,    1},
    {"gemma3_text",  1, 0, LAYOUT_SANDWICH, QK_HEAD,    1,    0,  1,  6,    1},
    {"olmo2",        0, 0, LAYOUT_POST,     QK_FULL,    0,    0,  0,  0,    0},
    {"cohere",       0, 1, LAYOUT_PARALLEL, QK_HEAD_2D, 0,    1,  1,  0,    0},
    {"deepseek_v3",  0, 0, LAYOUT_PRE,      QK_NONE,    0,    1,  0,  0,    0}, /* MLA */
};

enum { ACT_SILU, ACT_GELU_TANH, ACT_GELU_ERF };

/* Y[t][r] = sum_i X[t][i] * W[r][i] over a block of rows (see the kernel). */
typedef void (*gemm_fn)(const float *w, long nr, long cols, const float *x, long T,
                        float *y, long ldy);

/* ----------------------------------------------------------------------------
 * The model */

typedef struct {
    const ckpt_tensor *t;   /* NULL: absent */
    long rows, cols;        /* [out, in] as nn.Linear stores it */
    int dtype;
    size_t esize;           /* bytes per element */
} fwd_mat;

typedef struct {
    float *g;               /* effective gain (w or 1 + w); NULL = identity */
    long n;
} fwd_norm;

typedef struct {
    fwd_norm attn_norm, attn_post, mlp_norm, mlp_post, q_norm, k_norm;
    fwd_mat q, k, v, qkv, o;
    float *bq, *bk, *bv, *bo;
    fwd_mat gate, up, gate_up, down;
    float *b_gate, *b_up, *b_down;
    long n_experts;          /* 0: dense MLP */
    fwd_mat router;
    fwd_mat *e_gate, *e_up, *e_down;
    fwd_mat sh_gate, sh_up, sh_down, sh_scalar; /* shared expert(s); scalar gate: Qwen2-MoE */
    float *e_bias;           /* DeepSeek router e_score_correction_bias (choice only) */
    fwd_mat q_a, q_b, kv_a, kv_b; /* DeepSeek MLA projections */
    fwd_norm q_a_norm, kv_a_norm;
    const float *inv_freq;   /* rot/2 frequencies; NULL: no RoPE (SmolLM3 NoPE) */
    float rope_af;           /* multiplies cos and sin */
    long window;             /* sliding window (0: none) */
} fwd_layer;

/* A worker's conversion buffers, grown to the largest block it met. */
struct mm_scratch {
    void *raw;      /* the block as stored */
    float *f;       /* ... and as floats */
    size_t cap;     /* elements both can hold */
};

struct fwd_model {
    const checkpoint *ck;
    const fwd_family *fam;
    fl_pool *pool;                    /* kept across matrix products */
    struct mm_scratch *scratch;       /* one per pool worker */
    gemm_fn gemm;                     /* the matrix kernel for this CPU */
    long H, L, nh, nkv, hd, V, rot;   /* rot: rotary dims per head */
    long max_inter;                   /* widest MLP / expert intermediate */
    long max_experts, topk;
    int norm_topk;                    /* renormalise the top-k routing weights */
    int ds_router;                    /* DeepSeek: sigmoid scores, group-limited top-k */
    long n_group, topk_group;
    double routed_scale;
    int mla;                          /* DeepSeek multi-head latent attention */
    long q_lora, kv_lora, nope, vdim; /* MLA dims (rope part = rot) */
    int interleaved;                  /* RoPE on pairs (2i, 2i+1) */
    int act;
    int qk_norm_on;
    double eps;
    double embed_mult;                /* sqrt(H) in the embedding dtype, Granite multiplier */
    double residual_mult;             /* Granite */
    double attn_scale;                /* multiplies q.k */
    double attn_softcap, final_softcap; /* 0: none */
    double logit_mult;                /* Cohere logit_scale, 1/Granite logits_scaling */
    fwd_mat embed, head;
    fwd_norm final_norm;
    fwd_layer *layers;
    float *freq_global, *freq_local;
    double af_global, af_local;       /* RoPE attention factor (YaRN, LongRoPE) */
    char desc[160];
    /* fwd_set_progress: bytes of the bound matrices (total) and of those
     * streamed in this pass.  The blocks take the model const, so they
     * count through mp, which points at meter. */
    struct fwd_meter {
        fwd_progress_fn fn;
        void *ctx;
        uint64_t done, total;
    } meter, *mp;
};

static const char *ckdir(const fwd_model *m) { return m->ck->dir; }

/* ----------------------------------------------------------------------------
 * Loading */

static const cJSON *cfg_item(const ckpt_config *cfg, const char *key)
{
    const cJSON *v = cfg->text ? cJSON_GetObjectItemCaseSensitive(cfg->text, key) : NULL;
    if (!v && cfg->json && cfg->json != cfg->text)
        v = cJSON_GetObjectItemCaseSensitive(cfg->json, key);
    return v;
}

/* A number from config.json, `def` when absent, `null_value` when null. */
static double cfg_num(const ckpt_config *cfg, const char *key, double def, double null_value)
{
    const cJSON *v = cfg_item(cfg, key);
    if (cJSON_IsNumber(v))
        return v->valuedouble;
    if (cJSON_IsNull(v))
        return null_value;
    return def;
}

static int cfg_bool(const ckpt_config *cfg, const char *key, int def)
{
    const cJSON *v = cfg_item(cfg, key);
    return cJSON_IsBool(v) ? cJSON_IsTrue(v) : def;
}

static const ckpt_tensor *findf(const fwd_model *m, char *buf, size_t cap,
                                const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static const ckpt_tensor *findf(const fwd_model *m, char *buf, size_t cap,
                                const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, cap, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= cap)
        return NULL;
    return ckpt_find(m->ck, buf);
}

/* Binds a 2-D float matrix.  rows/cols < 0 accept any size; otherwise the
 * shape must match.  A missing tensor is an error only when `required`. */
static fl_status bind_mat(const fwd_model *m, const char *name, long rows, long cols,
                          int required, fwd_mat *out, fl_error *err)
{
    memset(out, 0, sizeof *out);
    const ckpt_tensor *t = ckpt_find(m->ck, name);
    if (!t) {
        if (required)
            return fl_fail(err, FL_EINPUT, "%s: tensor '%s' is missing", ckdir(m), name);
        return FL_OK;
    }
    const st_tensor *s = t->t;
    if (!st_dtype_is_foldable(s->dtype))
        return fl_fail(err, FL_EINPUT, "%s: tensor '%s' is %s; the forward pass reads F16, BF16, F32 or F64",
                       ckdir(m), name, st_dtype_name(s->dtype));
    if (s->ndim != 2 || s->shape[0] == 0 || s->shape[1] == 0 ||
        s->shape[0] > (1ULL << 40) || s->shape[1] > (1ULL << 40))
        return fl_fail(err, FL_EINPUT, "%s: tensor '%s' should be a non-empty matrix (it has %d dims)",
                       ckdir(m), name, s->ndim);
    if ((rows >= 0 && (long)s->shape[0] != rows) || (cols >= 0 && (long)s->shape[1] != cols))
        return fl_fail(err, FL_EINPUT, "%s: tensor '%s' has shape [%llu, %llu], expected [%ld, %ld]",
                       ckdir(m), name, (unsigned long long)s->shape[0],
                       (unsigned long long)s->shape[1], rows, cols);
    out->t = t;
    out->rows = (long)s->shape[0];
    out->cols = (long)s->shape[1];
    out->dtype = s->dtype;
    out->esize = st_dtype_bits(s->dtype) / 8;
    m->mp->total += st_nbytes(s);
    return FL_OK;
}

/* Reads a float vector of exactly n elements (any shape with n elements:
 * Cohere's q_norm is [heads, head_dim]).  Absent and not required: *out = NULL. */
static fl_status bind_vec(const fwd_model *m, const char *name, long n, int required,
                          float **out, fl_error *err)
{
    *out = NULL;
    const ckpt_tensor *t = ckpt_find(m->ck, name);
    if (!t)
        return required ? fl_fail(err, FL_EINPUT, "%s: tensor '%s' is missing", ckdir(m), name)
                        : FL_OK;
    uint64_t numel;
    if (st_numel(t->t, &numel) != 0 || numel != (uint64_t)n)
        return fl_fail(err, FL_EINPUT, "%s: tensor '%s' has %llu elements, expected %ld",
                       ckdir(m), name, (unsigned long long)numel, n);
    double *d = malloc((size_t)n * sizeof *d);
    float *f = malloc((size_t)n * sizeof *f);
    if (!d || !f) {
        free(d);
        free(f);
        return fl_fail(err, FL_EIO, "out of memory");
    }
    size_t got = 0;
    fl_status s = ckpt_read_vector(m->ck, t, d, (size_t)n, &got, err);
    if (s == FL_OK)
        for (long i = 0; i < n; i++)
            f[i] = (float)d[i];
    free(d);
    if (s != FL_OK) {
        free(f);
        return s;
    }
    *out = f;
    return FL_OK;
}

/* A norm weight; absent = identity gain (what HF's loaders initialise a
 * missing norm to on current versions, architectures.md §3).  The gain is
 * 1 + w for Gemma, computed as torch does: 1.0 + w.float() in fp32. */
static fl_status bind_norm(const fwd_model *m, const char *name, long n, fwd_norm *out,
                           fl_error *err)
{
    out->n = n;
    out->g = NULL;
    const ckpt_tensor *t = ckpt_find(m->ck, name);
    if (!t)
        return FL_OK;
    uint64_t numel;
    if (st_numel(t->t, &numel) != 0 || numel != (uint64_t)n)
        return fl_fail(err, FL_EINPUT, "%s: norm '%s' has %llu elements, expected %ld",
                       ckdir(m), name, (unsigned long long)numel, n);
    double *d = malloc((size_t)n * sizeof *d);
    out->g = malloc((size_t)n * sizeof *out->g);
    if (!d || !out->g) {
        free(d);
        return fl_fail(err, FL_EIO, "out of memory");
    }
    size_t got = 0;
    fl_status s = ckpt_read_vector(m->ck, t, d, (size_t)n, &got, err);
    for (long i = 0; s == FL_OK && i < n; i++)
        out->g[i] = m->fam->one_plus_w ? (float)(1.0 + (double)(float)d[i]) : (float)d[i];
    free(d);
    return s;
}

/* Rounds x to the storage dtype d and back (Gemma's normalizer tensor is
 * created in the activation dtype: modeling_gemma.py GemmaModel.forward). */
static double round_to_dtype(int d, double x)
{
    switch (d) {
    case ST_BF16: return bf16_to_double(double_to_bf16(x));
    case ST_F16: return f16_to_double(double_to_f16(x));
    case ST_F32: return (double)double_to_f32(x);
    default: return x;
    }
}

/* rope_scaling (v4) or rope_parameters (v5; for Gemma3 possibly keyed by
 * layer type) for a layer type ("full_attention" / "sliding_attention"). */
static const cJSON *rope_params(const ckpt_config *cfg, const char *layer_type)
{
    const cJSON *p = cfg_item(cfg, "rope_parameters");
    if (cJSON_IsObject(p)) {
        const cJSON *sub = cJSON_GetObjectItemCaseSensitive(p, layer_type);
        return cJSON_IsObject(sub) ? sub : p;
    }
    return NULL;
}

static double json_num(const cJSON *o, const char *key, double def)
{
    const cJSON *v = cJSON_IsObject(o) ? cJSON_GetObjectItemCaseSensitive(o, key) : NULL;
    return cJSON_IsNumber(v) ? v->valuedouble : def;
}

/* YaRN's attention temperature (modeling_rope_utils.py get_mscale). */
static double yarn_mscale(double scale, double mscale)
{
    return scale <= 1 ? 1.0 : 0.1 * mscale * log(scale) + 1.0;
}

/* Builds the inverse frequencies for `rot` rotary dims and the factor that
 * multiplies cos and sin (*af), as HF's modeling_rope_utils.py does for
 * rope_type default, linear, llama3, dynamic (which only rescales beyond
 * max_position_embeddings: default for the sequences verify runs), yarn,
 * and longrope (the short factors: sequences up to
 * original_max_position_embeddings).  Any other rope_type is refused, since
 * silently ignoring it would change the model. */
static fl_status build_freqs(const fwd_model *m, const cJSON *scaling, double theta,
                             float **out, double *af, fl_error *err)
{
    *af = 1.0;
    long half = m->rot / 2;
    float *f = malloc((size_t)(half ? half : 1) * sizeof *f);
    if (!f)
        return fl_fail(err, FL_EIO, "out of memory");
    for (long i = 0; i < half; i++)
        f[i] = (float)(1.0 / pow(theta, (double)(2 * i) / (double)m->rot));
    const char *type = "default";
    if (cJSON_IsObject(scaling)) {
        const cJSON *ty = cJSON_GetObjectItemCaseSensitive(scaling, "rope_type");
        if (!cJSON_IsString(ty))
            ty = cJSON_GetObjectItemCaseSensitive(scaling, "type");
        if (cJSON_IsString(ty))
            type = ty->valuestring;
    }
    const cJSON *fa = cJSON_IsObject(scaling) ? cJSON_GetObjectItemCaseSensitive(scaling, "factor") : NULL;
    double factor = cJSON_IsNumber(fa) ? fa->valuedouble : 1.0;
    if (strcmp(type, "default") == 0) {
        /* nothing */
    } else if (strcmp(type, "linear") == 0) {
        if (!(factor > 0))
            goto bad_factor;
        for (long i = 0; i < half; i++)
            f[i] = (float)(f[i] / factor);
    } else if (strcmp(type, "llama3") == 0) {
        const cJSON *lo = cJSON_GetObjectItemCaseSensitive(scaling, "low_freq_factor");
        const cJSON *hi = cJSON_GetObjectItemCaseSensitive(scaling, "high_freq_factor");
        const cJSON *oc = cJSON_GetObjectItemCaseSensitive(scaling, "original_max_position_embeddings");
        if (!(factor > 0) || !cJSON_IsNumber(lo) || !cJSON_IsNumber(hi) || !cJSON_IsNumber(oc) ||
            !(hi->valuedouble > lo->valuedouble)) {
            free(f);
            return fl_fail(err, FL_EINPUT, "%s/config.json: rope_scaling llama3 needs factor, "
                           "low_freq_factor < high_freq_factor and original_max_position_embeddings",
                           ckdir(m));
        }
        double lf = lo->valuedouble, hf = hi->valuedouble, old = oc->valuedouble;
        double low_wl = old / lf, high_wl = old / hf;
        for (long i = 0; i < half; i++) {
            double inv = f[i], wl = 2 * M_PI / inv, r;
            if (wl < high_wl)
                r = inv;
            else if (wl > low_wl)
                r = inv / factor;
            else {
                double s = (old / wl - lf) / (hf - lf);
                r = (1 - s) * inv / factor + s * inv;
            }
            f[i] = (float)r;
        }
    } else if (strcmp(type, "dynamic") == 0) {
        /* _compute_dynamic_ntk_parameters at seq_len = max_position_embeddings */
    } else if (strcmp(type, "yarn") == 0) {
        /* _compute_yarn_parameters */
        if (!(factor > 0))
            goto bad_factor;
        const ckpt_config *cfg = &m->ck->cfg;
        double maxpos = cfg_num(cfg, "max_position_embeddings", 2048, 2048);
        double orig = json_num(scaling, "original_max_position_embeddings", 0);
        if (!(orig > 0))
            orig = maxpos;
        double ms = json_num(scaling, "mscale", 0), msad = json_num(scaling, "mscale_all_dim", 0);
        *af = json_num(scaling, "attention_factor", 0);
        if (!(*af > 0))
            *af = ms && msad ? yarn_mscale(factor, ms) / yarn_mscale(factor, msad) : yarn_mscale(factor, 1);
        double bf = json_num(scaling, "beta_fast", 32), bs = json_num(scaling, "beta_slow", 1);
        const cJSON *tr = cJSON_GetObjectItemCaseSensitive(scaling, "truncate");
        double dim = (double)m->rot;
        double lo = dim * log(orig / (bf * 2 * M_PI)) / (2 * log(theta));
        double hi = dim * log(orig / (bs * 2 * M_PI)) / (2 * log(theta));
        if (!cJSON_IsFalse(tr)) {
            lo = floor(lo);
            hi = ceil(hi);
        }
        lo = fmax(lo, 0);
        hi = fmin(hi, dim - 1);
        if (lo == hi)
            hi += 0.001;
        for (long i = 0; i < half; i++) {
            double pos_freq = pow(theta, (double)(2 * i) / dim);
            double ramp = fmin(fmax(((double)i - lo) / (hi - lo), 0), 1);
            double extra = 1 - ramp; /* share of the extrapolated (unscaled) frequency */
            f[i] = (float)(1.0 / (factor * pos_freq) * (1 - extra) + 1.0 / pos_freq * extra);
        }
    } else if (strcmp(type, "longrope") == 0) {
        /* _compute_longrope_parameters; Phi3 sets factor from the two
         * context lengths when original_max_position_embeddings exists. */
        const ckpt_config *cfg = &m->ck->cfg;
        const cJSON *sf = cJSON_GetObjectItemCaseSensitive(scaling, "short_factor");
        if (!cJSON_IsArray(sf) || cJSON_GetArraySize(sf) != half) {
            free(f);
            return fl_fail(err, FL_EINPUT, "%s/config.json: rope_scaling longrope needs short_factor "
                           "with %ld entries", ckdir(m), half);
        }
        double maxpos = cfg_num(cfg, "max_position_embeddings", 2048, 2048);
        double orig = cfg_num(cfg, "original_max_position_embeddings", 0, 0);
        if (orig > 0)
            factor = maxpos / orig;
        else
            orig = maxpos;
        *af = json_num(scaling, "attention_factor", 0);
        if (!(*af > 0))
            *af = factor <= 1 ? 1.0 : sqrt(1 + log(factor) / log(orig));
        for (long i = 0; i < half; i++) {
            const cJSON *e = cJSON_GetArrayItem(sf, (int)i);
            double ext = cJSON_IsNumber(e) ? e->valuedouble : 0;
            if (!(ext > 0)) {
                free(f);
                return fl_fail(err, FL_EINPUT, "%s/config.json: longrope short_factor[%ld] must be positive",
                               ckdir(m), i);
            }
            f[i] = (float)(1.0 / (ext * pow(theta, (double)(2 * i) / (double)m->rot)));
        }
    } else {
        free(f);
        return fl_fail(err, FL_EINPUT, "%s/config.json: rope_scaling type '%s' is not supported by "
                       "the reference forward pass (supported: default, linear, llama3, dynamic, "
                       "yarn, longrope)", ckdir(m), type);
    }
    *out = f;
    return FL_OK;
bad_factor:
    free(f);
    return fl_fail(err, FL_EINPUT, "%s/config.json: rope_scaling factor %g must be positive",
                   ckdir(m), factor);
}

/* Whether layer i uses the sliding window (Gemma2: even layers,
 * Gemma2DecoderLayer.is_sliding; Gemma3: sliding_window_pattern, or the
 * layer_types list of newer configs; Mistral/Mixtral: all layers). */
static int layer_slides(const fwd_model *m, long i)
{
    const ckpt_config *cfg = &m->ck->cfg;
    const cJSON *lt = cfg_item(cfg, "layer_types");
    if (cJSON_IsArray(lt) && i < cJSON_GetArraySize(lt)) {
        const cJSON *e = cJSON_GetArrayItem(lt, (int)i);
        return cJSON_IsString(e) && strcmp(e->valuestring, "sliding_attention") == 0;
    }
    switch (m->fam->sliding) {
    case 1: return 1;
    case 2: return i % 2 == 0;
    case 6: {
        long p = (long)cfg_num(cfg, "sliding_window_pattern", 6, 6);
        return p > 0 && (i + 1) % p != 0;
    }
    default: return 0;
    }
}

static fl_status bind_mlp(fwd_model *m, fwd_layer *ly, const char *pre, fl_error *err)
{
    char name[512];
    fl_status s;
    long H = m->H;
    /* MoE: Mixtral's block_sparse_moe or the Qwen MoE mlp.gate + experts. */
    const char *router = NULL, *efmt[3] = {0};
    if (findf(m, name, sizeof name, "%sblock_sparse_moe.gate.weight", pre)) {
        router = "block_sparse_moe.gate.weight";
        efmt[0] = "%sblock_sparse_moe.experts.%ld.w1.weight";
        efmt[1] = "%sblock_sparse_moe.experts.%ld.w3.weight";
        efmt[2] = "%sblock_sparse_moe.experts.%ld.w2.weight";
    } else if (findf(m, name, sizeof name, "%smlp.gate.weight", pre) &&
               findf(m, name, sizeof name, "%smlp.experts.0.gate_proj.weight", pre)) {
        router = "mlp.gate.weight";
        efmt[0] = "%smlp.experts.%ld.gate_proj.weight";
        efmt[1] = "%smlp.experts.%ld.up_proj.weight";
        efmt[2] = "%smlp.experts.%ld.down_proj.weight";
    }
    if (router) {
        snprintf(name, sizeof name, "%s%s", pre, router);
        if ((s = bind_mat(m, name, -1, H, 1, &ly->router, err)) != FL_OK)
            return s;
        long E = ly->router.rows;
        if (E > 65536)
            return fl_fail(err, FL_EINPUT, "%s: router '%s' has %ld experts (limit 65536)",
                           ckdir(m), name, E);
        ly->n_experts = E;
        ly->e_gate = calloc((size_t)E, sizeof *ly->e_gate);
        ly->e_up = calloc((size_t)E, sizeof *ly->e_up);
        ly->e_down = calloc((size_t)E, sizeof *ly->e_down);
        if (!ly->e_gate || !ly->e_up || !ly->e_down)
            return fl_fail(err, FL_EIO, "out of memory");
        for (long e = 0; e < E; e++) {
            snprintf(name, sizeof name, efmt[0], pre, e);
            if ((s = bind_mat(m, name, -1, H, 1, &ly->e_gate[e], err)) != FL_OK)
                return s;
            long I = ly->e_gate[e].rows;
            snprintf(name, sizeof name, efmt[1], pre, e);
            if ((s = bind_mat(m, name, I, H, 1, &ly->e_up[e], err)) != FL_OK)
                return s;
            snprintf(name, sizeof name, efmt[2], pre, e);
            if ((s = bind_mat(m, name, H, I, 1, &ly->e_down[e], err)) != FL_OK)
                return s;
            if (I > m->max_inter)
                m->max_inter = I;
        }
        if (E > m->max_experts)
            m->max_experts = E;
        if (m->ds_router) {
            snprintf(name, sizeof name, "%smlp.gate.e_score_correction_bias", pre);
            if ((s = bind_vec(m, name, E, 0, &ly->e_bias, err)) != FL_OK)
                return s;
        }
        /* Shared expert: Qwen2-MoE's "shared_expert" with a sigmoid gate,
         * DeepSeek's "shared_experts" without one. */
        const char *sh = "shared_expert";
        snprintf(name, sizeof name, "%smlp.shared_expert.gate_proj.weight", pre);
        if (!ckpt_find(m->ck, name))
            sh = "shared_experts";
        snprintf(name, sizeof name, "%smlp.%s.gate_proj.weight", pre, sh);
        if ((s = bind_mat(m, name, -1, H, 0, &ly->sh_gate, err)) != FL_OK)
            return s;
        if (ly->sh_gate.t) {
            long I = ly->sh_gate.rows;
            snprintf(name, sizeof name, "%smlp.%s.up_proj.weight", pre, sh);
            if ((s = bind_mat(m, name, I, H, 1, &ly->sh_up, err)) != FL_OK)
                return s;
            snprintf(name, sizeof name, "%smlp.%s.down_proj.weight", pre, sh);
            if ((s = bind_mat(m, name, H, I, 1, &ly->sh_down, err)) != FL_OK)
                return s;
            snprintf(name, sizeof name, "%smlp.shared_expert_gate.weight", pre);
            if (!strcmp(sh, "shared_expert") &&
                (s = bind_mat(m, name, 1, H, 1, &ly->sh_scalar, err)) != FL_OK)
                return s;
            if (I > m->max_inter)
                m->max_inter = I;
        }
        return FL_OK;
    }
    /* Dense: gate/up/down, or Phi3's fused gate_up_proj. */
    snprintf(name, sizeof name, "%smlp.gate_up_proj.weight", pre);
    if ((s = bind_mat(m, name, -1, H, 0, &ly->gate_up, err)) != FL_OK)
        return s;
    long I;
    if (ly->gate_up.t) {
        if (ly->gate_up.rows % 2)
            return fl_fail(err, FL_EINPUT, "%s: fused '%s' has an odd number of rows (%ld)",
                           ckdir(m), name, ly->gate_up.rows);
        I = ly->gate_up.rows / 2;
    } else {
        snprintf(name, sizeof name, "%smlp.gate_proj.weight", pre);
        if ((s = bind_mat(m, name, -1, H, 1, &ly->gate, err)) != FL_OK)
            return s;
        I = ly->gate.rows;
        snprintf(name, sizeof name, "%smlp.up_proj.weight", pre);
        if ((s = bind_mat(m, name, I, H, 1, &ly->up, err)) != FL_OK)
            return s;
        snprintf(name, sizeof name, "%smlp.gate_proj.bias", pre);
        if ((s = bind_vec(m, name, I, 0, &ly->b_gate, err)) != FL_OK)
            return s;
        snprintf(name, sizeof name, "%smlp.up_proj.bias", pre);
        if ((s = bind_vec(m, name, I, 0, &ly->b_up, err)) != FL_OK)
            return s;
    }
    snprintf(name, sizeof name, "%smlp.down_proj.weight", pre);
    if ((s = bind_mat(m, name, H, I, 1, &ly->down, err)) != FL_OK)
        return s;
    snprintf(name, sizeof name, "%smlp.down_proj.bias", pre);
    if ((s = bind_vec(m, name, H, 0, &ly->b_down, err)) != FL_OK)
        return s;
    if (I > m->max_inter)
        m->max_inter = I;
    return FL_OK;
}

static fl_status bind_layer(fwd_model *m, const char *prefix, long i, fl_error *err)
{
    fwd_layer *ly = &m->layers[i];
    char pre[256], name[512];
    fl_status s;
    snprintf(pre, sizeof pre, "%slayers.%ld.", prefix, i);
    long H = m->H, qd = m->nh * m->hd, kd = m->nkv * m->hd;

#define NAME(fmt) (snprintf(name, sizeof name, "%s" fmt, pre), name)
    /* Norms: which ones exist depends on the layout (architectures.md §1). */
    if ((s = bind_norm(m, NAME("input_layernorm.weight"), H, &ly->attn_norm, err)) != FL_OK)
        return s;
    switch (m->fam->layout) {
    case LAYOUT_PRE:
        s = bind_norm(m, NAME("post_attention_layernorm.weight"), H, &ly->mlp_norm, err);
        break;
    case LAYOUT_SANDWICH:
        if ((s = bind_norm(m, NAME("post_attention_layernorm.weight"), H, &ly->attn_post, err)) != FL_OK ||
            (s = bind_norm(m, NAME("pre_feedforward_layernorm.weight"), H, &ly->mlp_norm, err)) != FL_OK)
            return s;
        s = bind_norm(m, NAME("post_feedforward_layernorm.weight"), H, &ly->mlp_post, err);
        break;
    case LAYOUT_POST:
        if ((s = bind_norm(m, NAME("post_attention_layernorm.weight"), H, &ly->attn_post, err)) != FL_OK)
            return s;
        s = bind_norm(m, NAME("post_feedforward_layernorm.weight"), H, &ly->mlp_post, err);
        break;
    default:
        break;
    }
    if (s != FL_OK)
        return s;
    switch (m->fam->qk) {
    case QK_HEAD:
        if ((s = bind_norm(m, NAME("self_attn.q_norm.weight"), m->hd, &ly->q_norm, err)) != FL_OK ||
            (s = bind_norm(m, NAME("self_attn.k_norm.weight"), m->hd, &ly->k_norm, err)) != FL_OK)
            return s;
        break;
    case QK_FULL:
        if ((s = bind_norm(m, NAME("self_attn.q_norm.weight"), qd, &ly->q_norm, err)) != FL_OK ||
            (s = bind_norm(m, NAME("self_attn.k_norm.weight"), kd, &ly->k_norm, err)) != FL_OK)
            return s;
        break;
    case QK_HEAD_2D:
        if (m->qk_norm_on &&
            ((s = bind_norm(m, NAME("self_attn.q_norm.weight"), qd, &ly->q_norm, err)) != FL_OK ||
             (s = bind_norm(m, NAME("self_attn.k_norm.weight"), kd, &ly->k_norm, err)) != FL_OK))
            return s;
        break;
    }

    if (m->mla) {
        /* DeepseekV3Attention: q_proj, or q_a_proj -> q_a_layernorm ->
         * q_b_proj; kv_a_proj_with_mqa -> [latent | k_rot], the latent
         * through kv_a_layernorm -> kv_b_proj -> per head [k_nope | v]. */
        long qk = m->nope + m->rot;
        if (m->q_lora > 0) {
            if ((s = bind_mat(m, NAME("self_attn.q_a_proj.weight"), m->q_lora, H, 1, &ly->q_a, err)) != FL_OK ||
                (s = bind_norm(m, NAME("self_attn.q_a_layernorm.weight"), m->q_lora, &ly->q_a_norm, err)) != FL_OK ||
                (s = bind_mat(m, NAME("self_attn.q_b_proj.weight"), m->nh * qk, m->q_lora, 1, &ly->q_b, err)) != FL_OK)
                return s;
        } else if ((s = bind_mat(m, NAME("self_attn.q_proj.weight"), m->nh * qk, H, 1, &ly->q, err)) != FL_OK) {
            return s;
        }
        if ((s = bind_mat(m, NAME("self_attn.kv_a_proj_with_mqa.weight"), m->kv_lora + m->rot, H, 1,
                          &ly->kv_a, err)) != FL_OK ||
            (s = bind_norm(m, NAME("self_attn.kv_a_layernorm.weight"), m->kv_lora, &ly->kv_a_norm, err)) != FL_OK ||
            (s = bind_mat(m, NAME("self_attn.kv_b_proj.weight"), m->nh * (m->nope + m->vdim), m->kv_lora, 1,
                          &ly->kv_b, err)) != FL_OK ||
            (s = bind_mat(m, NAME("self_attn.o_proj.weight"), H, m->nh * m->vdim, 1, &ly->o, err)) != FL_OK)
            return s;
        return bind_mlp(m, ly, pre, err);
    }
    /* Attention projections: separate, or Phi3's fused qkv_proj. */
    if ((s = bind_mat(m, NAME("self_attn.qkv_proj.weight"), qd + 2 * kd, H, 0, &ly->qkv, err)) != FL_OK)
        return s;
    if (!ly->qkv.t) {
        if ((s = bind_mat(m, NAME("self_attn.q_proj.weight"), qd, H, 1, &ly->q, err)) != FL_OK ||
            (s = bind_mat(m, NAME("self_attn.k_proj.weight"), kd, H, 1, &ly->k, err)) != FL_OK ||
            (s = bind_mat(m, NAME("self_attn.v_proj.weight"), kd, H, 1, &ly->v, err)) != FL_OK)
            return s;
        /* Biases where the checkpoint has them (Qwen2 hard-codes q/k/v
         * biases; Llama's attention_bias adds o_proj's too). */
        if ((s = bind_vec(m, NAME("self_attn.q_proj.bias"), qd, 0, &ly->bq, err)) != FL_OK ||
            (s = bind_vec(m, NAME("self_attn.k_proj.bias"), kd, 0, &ly->bk, err)) != FL_OK ||
            (s = bind_vec(m, NAME("self_attn.v_proj.bias"), kd, 0, &ly->bv, err)) != FL_OK)
            return s;
    }
    if ((s = bind_mat(m, NAME("self_attn.o_proj.weight"), H, qd, 1, &ly->o, err)) != FL_OK ||
        (s = bind_vec(m, NAME("self_attn.o_proj.bias"), H, 0, &ly->bo, err)) != FL_OK)
        return s;
#undef NAME
    return bind_mlp(m, ly, pre, err);
}

static fl_status parse_act(fwd_model *m, fl_error *err)
{
    const ckpt_config *cfg = &m->ck->cfg;
    const char *act = m->fam->gemma_act ? "gelu_pytorch_tanh" : "silu";
    /* Gemma's MLP reads hidden_activation (GemmaMLP.__init__); the others
     * hidden_act. */
    const cJSON *v = cfg_item(cfg, m->fam->gemma_act ? "hidden_activation" : "hidden_act");
    if (cJSON_IsString(v))
        act = v->valuestring;
    if (!strcmp(act, "silu") || !strcmp(act, "swish"))
        m->act = ACT_SILU;
    else if (!strcmp(act, "gelu_pytorch_tanh") || !strcmp(act, "gelu_new") || !strcmp(act, "gelu_fast"))
        m->act = ACT_GELU_TANH;
    else if (!strcmp(act, "gelu"))
        m->act = ACT_GELU_ERF;
    else
        return fl_fail(err, FL_EINPUT, "%s/config.json: activation '%s' is not supported by the "
                       "reference forward pass (silu, gelu, gelu_pytorch_tanh)", ckdir(m), act);
    return FL_OK;
}

static gemm_fn pick_gemm(void);

static long cpu_count(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 64 ? 64 : n;
}

fl_status fwd_open(const checkpoint *ck, int threads, fwd_model **out, fl_error *err)
{
    *out = NULL;
    const ckpt_config *cfg = &ck->cfg;
    const char *type = cfg->text_model_type[0] ? cfg->text_model_type : cfg->model_type;
    const fwd_family *fam = NULL;
    for (size_t i = 0; i < sizeof families / sizeof families[0]; i++)
        if (strcmp(families[i].model_type, type) == 0)
            fam = &families[i];
    for (size_t i = 0; !fam && i < sizeof families / sizeof families[0]; i++)
        if (strcmp(cfg->model_type, "gemma3") == 0 && strcmp(families[i].model_type, "gemma3_text") == 0)
            fam = &families[i]; /* the multimodal wrapper's text model */
    if (!fam)
        return fl_fail(err, FL_EINPUT, "%s/config.json: model_type '%s' has no reference forward "
                       "pass", ck->dir, type);

    fwd_model *m = calloc(1, sizeof *m);
    if (!m)
        return fl_fail(err, FL_EIO, "out of memory");
    m->ck = ck;
    m->fam = fam;
    m->mp = &m->meter;
    m->pool = fl_pool_new(threads > 0 ? (threads > 64 ? 64 : threads) : (cpu_count() > 64 ? 64 : cpu_count()));
    m->scratch = m->pool ? calloc((size_t)fl_pool_size(m->pool), sizeof *m->scratch) : NULL;
    if (!m->scratch) {
        fwd_close(m);
        return fl_fail(err, FL_EIO, "out of memory");
    }
    m->gemm = pick_gemm();
    fl_status s = FL_OK;
    char name[512];

    /* The text model prefix: plain, or inside a multimodal wrapper. */
    static const char *prefixes[] = {"model.", "language_model.model.", "model.language_model.", ""};
    const char *prefix = NULL;
    for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0] && !prefix; i++)
        if (findf(m, name, sizeof name, "%sembed_tokens.weight", prefixes[i]))
            prefix = prefixes[i];
    if (!prefix) {
        s = fl_fail(err, FL_EINPUT, "%s: no embed_tokens.weight tensor (looked under model., "
                    "language_model.model., model.language_model.)", ck->dir);
        goto fail;
    }
    if ((s = bind_mat(m, name, -1, -1, 1, &m->embed, err)) != FL_OK)
        goto fail;
    m->V = m->embed.rows;
    m->H = m->embed.cols;
    if (cfg->hidden_size > 0 && cfg->hidden_size != m->H) {
        s = fl_fail(err, FL_EINPUT, "%s: '%s' is %ld wide but config.json says hidden_size %ld",
                    ck->dir, name, m->H, cfg->hidden_size);
        goto fail;
    }

    /* Dimensions. */
    m->L = cfg->num_hidden_layers;
    m->nh = ckpt_config_int(cfg, "num_attention_heads", 0);
    m->nkv = ckpt_config_int(cfg, "num_key_value_heads", m->nh);
    if (m->nkv <= 0)
        m->nkv = m->nh;
    if (m->L <= 0 || m->L > 100000 || m->nh <= 0 || m->nh > 65536 || m->nkv > m->nh ||
        m->nh % m->nkv != 0) {
        s = fl_fail(err, FL_EINPUT, "%s/config.json: num_hidden_layers %ld, num_attention_heads %ld, "
                    "num_key_value_heads %ld are not a valid attention layout",
                    ck->dir, m->L, m->nh, m->nkv);
        goto fail;
    }
    m->hd = ckpt_config_int(cfg, "head_dim", 0);
    if (m->hd <= 0)
        m->hd = m->H / m->nh;
    if (m->hd <= 0 || m->hd > 65536) {
        s = fl_fail(err, FL_EINPUT, "%s/config.json: head_dim %ld is not valid", ck->dir, m->hd);
        goto fail;
    }
    double prf = cfg_num(cfg, "partial_rotary_factor", 1.0, 1.0);
    m->rot = (long)(m->hd * prf);
    m->rot -= m->rot % 2;
    if (m->rot <= 0 || m->rot > m->hd) {
        s = fl_fail(err, FL_EINPUT, "%s/config.json: partial_rotary_factor %g gives %ld rotary dims",
                    ck->dir, prf, m->rot);
        goto fail;
    }
    m->interleaved = fam->interleaved;
    if (strcmp(type, "deepseek_v3") == 0) {
        /* DeepseekV3Config: MLA dims; scaling qk_head_dim^-0.5; RoPE on
         * qk_rope_head_dim dims, interleaved unless rope_interleave false. */
        m->mla = 1;
        m->q_lora = ckpt_config_int(cfg, "q_lora_rank", 0);
        m->kv_lora = ckpt_config_int(cfg, "kv_lora_rank", 0);
        m->nope = ckpt_config_int(cfg, "qk_nope_head_dim", 0);
        m->rot = ckpt_config_int(cfg, "qk_rope_head_dim", 0);
        m->vdim = ckpt_config_int(cfg, "v_head_dim", 0);
        if (m->kv_lora <= 0 || m->kv_lora > 65536 || m->nope < 0 || m->nope > 65536 || m->rot <= 0 ||
            m->rot > 65536 || m->rot % 2 || m->vdim <= 0 || m->vdim > 65536 || m->q_lora < 0 ||
            m->q_lora > 65536) {
            s = fl_fail(err, FL_EINPUT, "%s/config.json: MLA dims kv_lora_rank %ld, qk_nope_head_dim %ld, "
                        "qk_rope_head_dim %ld, v_head_dim %ld are not valid", ck->dir, m->kv_lora,
                        m->nope, m->rot, m->vdim);
            goto fail;
        }
        m->nkv = m->nh;
        m->interleaved = cfg_bool(cfg, "rope_interleave", 1);
        m->ds_router = 1;
        m->n_group = ckpt_config_int(cfg, "n_group", 1);
        m->topk_group = ckpt_config_int(cfg, "topk_group", 1);
        m->routed_scale = cfg_num(cfg, "routed_scaling_factor", 1.0, 1.0);
        const cJSON *sf = cfg_item(cfg, "scoring_func");
        if (cJSON_IsString(sf) && strcmp(sf->valuestring, "sigmoid") != 0) {
            s = fl_fail(err, FL_EINPUT, "%s/config.json: scoring_func '%s' is not supported by the "
                        "reference forward pass (sigmoid)", ck->dir, sf->valuestring);
            goto fail;
        }
    }
    m->eps = cfg_num(cfg, fam->layernorm ? "layer_norm_eps" : "rms_norm_eps", 1e-6, 1e-6);
    if (!fam->layernorm && !cJSON_IsNumber(cfg_item(cfg, "rms_norm_eps")) &&
        (strcmp(type, "phi3") == 0 || strcmp(type, "olmo2") == 0))
        m->eps = 1e-5; /* Phi3Config / Olmo2Config default */
    if (fam->layernorm && !cJSON_IsNumber(cfg_item(cfg, "layer_norm_eps")))
        m->eps = 1e-5;
    if ((s = parse_act(m, err)) != FL_OK)
        goto fail;
    m->qk_norm_on = fam->qk != QK_HEAD_2D || cfg_bool(cfg, "use_qk_norm", 0);

    /* Scalars around the blocks. */
    m->embed_mult = 1.0;
    if (fam->embed_sqrt)
        m->embed_mult = round_to_dtype(m->embed.dtype, sqrt((double)m->H));
    m->residual_mult = 1.0;
    m->logit_mult = 1.0;
    m->attn_scale = 1.0 / sqrt((double)(m->mla ? m->nope + m->rot : m->hd));
    if (strcmp(type, "granite") == 0) {
        /* GraniteModel: embeddings * embedding_multiplier; residual +
         * sublayer * residual_multiplier; scores * attention_multiplier;
         * logits / logits_scaling (GraniteForCausalLM.forward). */
        m->embed_mult = cfg_num(cfg, "embedding_multiplier", 1.0, 1.0);
        m->residual_mult = cfg_num(cfg, "residual_multiplier", 1.0, 1.0);
        m->attn_scale = cfg_num(cfg, "attention_multiplier", 1.0, 1.0);
        double ls = cfg_num(cfg, "logits_scaling", 1.0, 1.0);
        m->logit_mult = ls != 0 ? 1.0 / ls : 1.0;
    }
    if (fam->layout == LAYOUT_SANDWICH) {
        /* Gemma2/3: scaling = query_pre_attn_scalar ** -0.5. */
        double qp = cfg_num(cfg, "query_pre_attn_scalar", 256, 256);
        if (qp > 0)
            m->attn_scale = 1.0 / sqrt(qp);
        int g2 = strcmp(type, "gemma2") == 0;
        m->attn_softcap = cfg_num(cfg, "attn_logit_softcapping", g2 ? 50.0 : 0.0, 0.0);
        m->final_softcap = cfg_num(cfg, "final_logit_softcapping", g2 ? 30.0 : 0.0, 0.0);
    }
    if (fam->layernorm)
        m->logit_mult = cfg_num(cfg, "logit_scale", 0.0625, 1.0);

    /* MoE routing. */
    m->topk = ckpt_config_int(cfg, "num_experts_per_tok", 2);
    m->norm_topk = strcmp(type, "mixtral") == 0 ? 1 : cfg_bool(cfg, "norm_topk_prob", m->mla);

    /* RoPE: global frequencies from rope_theta + rope_scaling; Gemma3's
     * sliding layers use rope_local_base_freq with default scaling. */
    {
        const cJSON *rp = rope_params(cfg, "full_attention");
        const cJSON *sc = rp ? rp : cfg_item(cfg, "rope_scaling");
        const cJSON *th = rp ? cJSON_GetObjectItemCaseSensitive(rp, "rope_theta") : NULL;
        double theta = cJSON_IsNumber(th) ? th->valuedouble : cfg_num(cfg, "rope_theta", 10000.0, 10000.0);
        if (!(theta > 1)) {
            s = fl_fail(err, FL_EINPUT, "%s/config.json: rope_theta %g must be > 1", ck->dir, theta);
            goto fail;
        }
        if ((s = build_freqs(m, sc, theta, &m->freq_global, &m->af_global, err)) != FL_OK)
            goto fail;
        /* DeepseekV3Attention: scaling *= mscale^2 with mscale_all_dim. */
        double msad = json_num(sc, "mscale_all_dim", 0);
        if (m->mla && msad)
            m->attn_scale *= pow(yarn_mscale(json_num(sc, "factor", 1.0), msad), 2);
        if (fam->sliding == 6) {
            const cJSON *lp = rope_params(cfg, "sliding_attention");
            const cJSON *lt = lp && lp != rp ? cJSON_GetObjectItemCaseSensitive(lp, "rope_theta") : NULL;
            double local = cJSON_IsNumber(lt) ? lt->valuedouble
                                              : cfg_num(cfg, "rope_local_base_freq", 10000.0, 10000.0);
            if ((s = build_freqs(m, lp && lp != rp ? lp : NULL, local, &m->freq_local, &m->af_local,
                                 err)) != FL_OK)
                goto fail;
        }
    }

    /* Output head: tied means the embedding matrix (v4 tie_weights() also
     * overwrites a stored lm_head when the config says tie). */
    int tie = cfg->tie_word_embeddings;
    const cJSON *tv = cfg_item(cfg, "tie_word_embeddings");
    if (cJSON_IsBool(tv))
        tie = cJSON_IsTrue(tv);
    if (tie < 0)
        tie = fam->tie_default;
    if (tie) {
        m->head = m->embed;
    } else {
        static const char *heads[] = {"lm_head.weight", "language_model.lm_head.weight"};
        for (size_t i = 0; i < 2 && !m->head.t; i++)
            if ((s = bind_mat(m, heads[i], -1, m->H, 0, &m->head, err)) != FL_OK)
                goto fail;
        if (!m->head.t) {
            s = fl_fail(err, FL_EINPUT, "%s: tie_word_embeddings is false but there is no lm_head.weight",
                        ck->dir);
            goto fail;
        }
    }
    m->V = m->head.rows; /* logits are the head's rows; token ids index the embedding */

    snprintf(name, sizeof name, "%snorm.weight", prefix);
    if ((s = bind_norm(m, name, m->H, &m->final_norm, err)) != FL_OK)
        goto fail;

    m->layers = calloc((size_t)m->L, sizeof *m->layers);
    if (!m->layers) {
        s = fl_fail(err, FL_EIO, "out of memory");
        goto fail;
    }
    const cJSON *nope = cfg_item(cfg, "no_rope_layers");
    for (long i = 0; i < m->L; i++) {
        if ((s = bind_layer(m, prefix, i, err)) != FL_OK)
            goto fail;
        fwd_layer *ly = &m->layers[i];
        int slides = layer_slides(m, i);
        ly->inv_freq = fam->sliding == 6 && slides ? m->freq_local : m->freq_global;
        ly->rope_af = (float)(fam->sliding == 6 && slides ? m->af_local : m->af_global);
        if (cJSON_IsArray(nope) && i < cJSON_GetArraySize(nope)) {
            const cJSON *e = cJSON_GetArrayItem(nope, (int)i);
            if (cJSON_IsNumber(e) && e->valuedouble == 0)
                ly->inv_freq = NULL; /* SmolLM3: use_rope = no_rope_layers[i] */
        }
        if (slides) {
            double w = cfg_num(cfg, "sliding_window", 0, 0);
            ly->window = w > 0 && w < 1e15 ? (long)w : 0;
        }
        if (ly->n_experts && (m->topk < 1 || m->topk > ly->n_experts)) {
            s = fl_fail(err, FL_EINPUT, "%s/config.json: num_experts_per_tok %ld but layer %ld has %ld experts",
                        ck->dir, m->topk, i, ly->n_experts);
            goto fail;
        }
    }
    snprintf(m->desc, sizeof m->desc, "%s, %ld layers, hidden %ld, %ld heads (%ld kv), vocab %ld, %s",
             type, m->L, m->H, m->nh, m->nkv, m->V, st_dtype_name(m->embed.dtype));
    *out = m;
    return FL_OK;
fail:
    fwd_close(m);
    return s;
}

static void free_layer(fwd_layer *ly)
{
    fwd_norm *norms[] = {&ly->attn_norm, &ly->attn_post, &ly->mlp_norm, &ly->mlp_post,
                         &ly->q_norm, &ly->k_norm};
    for (size_t i = 0; i < sizeof norms / sizeof norms[0]; i++)
        free(norms[i]->g);
    free(ly->bq); free(ly->bk); free(ly->bv); free(ly->bo);
    free(ly->b_gate); free(ly->b_up); free(ly->b_down);
    free(ly->e_gate); free(ly->e_up); free(ly->e_down);
    free(ly->e_bias); free(ly->q_a_norm.g); free(ly->kv_a_norm.g);
}

void fwd_close(fwd_model *m)
{
    if (!m)
        return;
    if (m->layers)
        for (long i = 0; i < m->L; i++)
            free_layer(&m->layers[i]);
    free(m->layers);
    free(m->final_norm.g);
    free(m->freq_global);
    free(m->freq_local);
    for (int i = 0; m->scratch && i < fl_pool_size(m->pool); i++) {
        free(m->scratch[i].raw);
        free(m->scratch[i].f);
    }
    free(m->scratch);
    fl_pool_free(m->pool);
    free(m);
}

long fwd_vocab(const fwd_model *m) { return m->V; }
const char *fwd_describe(const fwd_model *m) { return m->desc; }

long fwd_bos(const fwd_model *m)
{
    long b = ckpt_config_int(&m->ck->cfg, "bos_token_id", 1);
    if (b < 0 || b >= m->embed.rows)
        b = m->embed.rows > 1 ? 1 : 0;
    return b;
}

/* ----------------------------------------------------------------------------
 * The matrix kernel: Y[t][r] = sum_i X[t][i] * W[r][i] for a block of rows
 * already converted to float.  Two rows by four tokens per step keeps eight
 * independent accumulators in flight, enough to hide the FMA latency. */

static void gemm_generic(const float *w, long nr, long cols, const float *x, long T,
                         float *y, long ldy)
{
    for (long r = 0; r < nr; r++) {
        const float *wr = w + r * cols;
        for (long t = 0; t < T; t++) {
            const float *xt = x + t * cols;
            float acc[8] = {0};
            long i = 0;
            for (; i + 8 <= cols; i += 8)
                for (int j = 0; j < 8; j++)
                    acc[j] += wr[i + j] * xt[i + j];
            float s = 0;
            for (; i < cols; i++)
                s += wr[i] * xt[i];
            y[t * ldy + r] = s + ((acc[0] + acc[1]) + (acc[2] + acc[3])) +
                             ((acc[4] + acc[5]) + (acc[6] + acc[7]));
        }
    }
}

#ifdef FWD_X86
__attribute__((target("avx2,fma"))) static inline float hsum256(__m256 v)
{
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1));
    return _mm_cvtss_f32(lo);
}

__attribute__((target("avx2,fma")))
static void gemm_avx2(const float *w, long nr, long cols, const float *x, long T,
                      float *y, long ldy)
{
    long c8 = cols & ~7L;
    long r = 0;
    for (; r + 2 <= nr; r += 2) {
        const float *w0 = w + r * cols, *w1 = w0 + cols;
        long t = 0;
        for (; t + 4 <= T; t += 4) {
            const float *x0 = x + t * cols, *x1 = x0 + cols, *x2 = x1 + cols, *x3 = x2 + cols;
            __m256 a00 = _mm256_setzero_ps(), a01 = a00, a02 = a00, a03 = a00;
            __m256 a10 = a00, a11 = a00, a12 = a00, a13 = a00;
            for (long i = 0; i < c8; i += 8) {
                __m256 v0 = _mm256_loadu_ps(w0 + i), v1 = _mm256_loadu_ps(w1 + i);
                __m256 u = _mm256_loadu_ps(x0 + i);
                a00 = _mm256_fmadd_ps(v0, u, a00); a10 = _mm256_fmadd_ps(v1, u, a10);
                u = _mm256_loadu_ps(x1 + i);
                a01 = _mm256_fmadd_ps(v0, u, a01); a11 = _mm256_fmadd_ps(v1, u, a11);
                u = _mm256_loadu_ps(x2 + i);
                a02 = _mm256_fmadd_ps(v0, u, a02); a12 = _mm256_fmadd_ps(v1, u, a12);
                u = _mm256_loadu_ps(x3 + i);
                a03 = _mm256_fmadd_ps(v0, u, a03); a13 = _mm256_fmadd_ps(v1, u, a13);
            }
            float s[8] = {hsum256(a00), hsum256(a01), hsum256(a02), hsum256(a03),
                          hsum256(a10), hsum256(a11), hsum256(a12), hsum256(a13)};
            for (long i = c8; i < cols; i++) {
                s[0] += w0[i] * x0[i]; s[1] += w0[i] * x1[i];
                s[2] += w0[i] * x2[i]; s[3] += w0[i] * x3[i];
                s[4] += w1[i] * x0[i]; s[5] += w1[i] * x1[i];
                s[6] += w1[i] * x2[i]; s[7] += w1[i] * x3[i];
            }
            for (int j = 0; j < 4; j++) {
                y[(t + j) * ldy + r] = s[j];
                y[(t + j) * ldy + r + 1] = s[4 + j];
            }
        }
        for (; t < T; t++) {
            const float *xt = x + t * cols;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0;
            for (long i = 0; i < c8; i += 8) {
                __m256 u = _mm256_loadu_ps(xt + i);
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + i), u, a0);
                a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w1 + i), u, a1);
            }
            float s0 = hsum256(a0), s1 = hsum256(a1);
            for (long i = c8; i < cols; i++) {
                s0 += w0[i] * xt[i];
                s1 += w1[i] * xt[i];
            }
            y[t * ldy + r] = s0;
            y[t * ldy + r + 1] = s1;
        }
    }
    if (r < nr)
        gemm_generic(w + r * cols, nr - r, cols, x, T, y + r, ldy);
}
#endif

static gemm_fn pick_gemm(void)
{
#ifdef FWD_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return gemm_avx2;
#endif
    return gemm_generic;
}

static float f16_table[65536];
static pthread_once_t f16_once = PTHREAD_ONCE_INIT;
static void f16_init(void)
{
    for (uint32_t i = 0; i < 65536; i++)
        f16_table[i] = (float)f16_to_double((uint16_t)i);
}

/* Decodes n elements of dtype d into floats (exact for F16/BF16/F32). */
static void to_float(int d, const void *raw, float *out, size_t n)
{
    const unsigned char *p = raw;
    switch (d) {
    case ST_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            out[i] = f32_from_bits((uint32_t)h << 16);
        }
        break;
    case ST_F16:
        pthread_once(&f16_once, f16_init);
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            out[i] = f16_table[h];
        }
        break;
    case ST_F32:
        memcpy(out, raw, n * 4);
        break;
    default: /* F64 */
        for (size_t i = 0; i < n; i++) {
            double v;
            memcpy(&v, p + 8 * i, 8);
            out[i] = (float)v;
        }
    }
}

typedef struct {
    const fwd_model *m;
    const fwd_mat *w;
    const float *x;
    long T;
    float *y;
    long chunk;     /* rows per item */
} mm_job;

#define MM_BLOCK_FLOATS (1L << 15) /* 128 KiB of converted weights per block */

/* One block of rows of y = x W^T (a pool item): read, convert, multiply. */
static fl_status mm_item(void *ctx, size_t item, int worker, fl_error *err)
{
    const mm_job *j = ctx;
    const fwd_mat *w = j->w;
    struct mm_scratch *sc = &j->m->scratch[worker];
    long r = (long)item * j->chunk;
    long n = w->rows - r < j->chunk ? w->rows - r : j->chunk;
    size_t elems = (size_t)n * (size_t)w->cols;
    if (elems > sc->cap) {
        free(sc->raw);
        free(sc->f);
        sc->raw = malloc(elems * 8);
        sc->f = malloc(elems * sizeof *sc->f);
        sc->cap = sc->raw && sc->f ? elems : 0;
        if (!sc->cap)
            return fl_fail(err, FL_EIO, "out of memory");
    }
    size_t row_bytes = (size_t)w->cols * w->esize;
    void *dst = w->dtype == ST_F32 ? (void *)sc->f : sc->raw;
    fl_status s = ckpt_read(j->m->ck, w->t, (uint64_t)r * row_bytes, dst, (size_t)n * row_bytes, err);
    if (s != FL_OK)
        return s;
    if (w->dtype != ST_F32)
        to_float(w->dtype, sc->raw, sc->f, elems);
    j->m->gemm(sc->f, n, w->cols, j->x, j->T, j->y + r, w->rows);
    return FL_OK;
}

void fwd_set_progress(fwd_model *m, fwd_progress_fn fn, void *ctx)
{
    m->meter.fn = fn;
    m->meter.ctx = ctx;
}

/* Counts matrix w as streamed (or skipped) in this pass. */
static void meter_add(const fwd_model *m, const fwd_mat *w)
{
    struct fwd_meter *mt = m->mp;
    if (w->t)
        mt->done += (uint64_t)w->rows * (uint64_t)w->cols * w->esize;
    if (mt->fn)
        mt->fn(mt->ctx, mt->done < mt->total ? mt->done : mt->total, mt->total);
}

/* y[T][w->rows] = x[T][w->cols] * W^T (+ bias), streaming W from its file
 * in blocks of rows, spread over the model's pool (one block for a small
 * product, where waking the workers would cost more than it saves). */
static fl_status matmul(const fwd_model *m, const fwd_mat *w, const float *bias,
                        const float *x, long T, float *y, fl_error *err)
{
    if (fl_interrupted)
        return fl_fail(err, FL_EINTR, "interrupted");
    long chunk = MM_BLOCK_FLOATS / w->cols;
    if (chunk < 1)
        chunk = 1;
    double work = (double)w->rows * (double)w->cols * (double)T;
    if (work < (1 << 20))
        chunk = w->rows;
    mm_job job = {m, w, x, T, y, chunk};
    size_t items = (size_t)((w->rows + chunk - 1) / chunk);
    fl_status s = fl_pool_run(m->pool, items, mm_item, &job, err);
    if (s != FL_OK)
        return s;
    meter_add(m, w);
    if (bias)
        for (long t = 0; t < T; t++)
            for (long r = 0; r < w->rows; r++)
                y[t * w->rows + r] += bias[r];
    return FL_OK;
}

/* ----------------------------------------------------------------------------
 * Neural-net blocks */

/* Normalises `count` vectors of `n` floats in place: RMSNorm
 * (x * rsqrt(mean(x^2) + eps)) or mean-centred LayerNorm without bias, then
 * multiplies by the gain (g_stride 0: one gain for every vector; n: Cohere's
 * per-head 2-D weight).  Statistics in double. */
static void norm_apply_eps(const fwd_model *m, float *x, long count, long n, const float *g,
                           long g_stride, double eps)
{
    for (long c = 0; c < count; c++) {
        float *v = x + c * n;
        double mean = 0, ss = 0;
        if (m->fam->layernorm) {
            for (long i = 0; i < n; i++)
                mean += v[i];
            mean /= (double)n;
        }
        for (long i = 0; i < n; i++) {
            double d = v[i] - mean;
            ss += d * d;
        }
        double inv = 1.0 / sqrt(ss / (double)n + eps);
        const float *gc = g ? g + (g_stride ? c * g_stride : 0) : NULL;
        for (long i = 0; i < n; i++) {
            float xh = (float)((v[i] - mean) * inv);
            v[i] = gc ? xh * gc[i] : xh;
        }
    }
}

static void norm_apply(const fwd_model *m, float *x, long count, long n, const float *g,
                       long g_stride)
{
    norm_apply_eps(m, x, count, n, g, g_stride, m->eps);
}

static void norm_rows(const fwd_model *m, const fwd_norm *nm, float *x, long T, long n)
{
    norm_apply(m, x, T, n, nm->g, 0);
}

static float act_fn(const fwd_model *m, float x)
{
    switch (m->act) {
    case ACT_GELU_TANH: {
        double c = sqrt(2.0 / M_PI);
        return (float)(0.5 * x * (1.0 + tanh(c * (x + 0.044715 * (double)x * x * x))));
    }
    case ACT_GELU_ERF:
        return (float)(0.5 * x * (1.0 + erf(x / sqrt(2.0))));
    default:
        return (float)(x / (1.0 + exp(-(double)x)));
    }
}

/* Rotates one head vector in place for position pos: rotate_half pairs
 * (i, i + rot/2) (apply_rotary_pos_emb), or (2i, 2i+1) for Cohere. */
static void rope_head(const fwd_model *m, const fwd_layer *ly, float *v, long pos)
{
    const float *inv_freq = ly->inv_freq;
    long half = m->rot / 2;
    for (long i = 0; i < half; i++) {
        float ang = (float)pos * inv_freq[i]; /* HF: positions x inv_freq in fp32 */
        float c = (float)cos(ang) * ly->rope_af, s = (float)sin(ang) * ly->rope_af;
        long a = m->interleaved ? 2 * i : i, b = m->interleaved ? 2 * i + 1 : i + half;
        float x1 = v[a], x2 = v[b];
        v[a] = x1 * c - x2 * s;
        v[b] = x2 * c + x1 * s;
    }
}

typedef struct {
    float *h, *q, *k, *v, *ctx, *qkv, *att;
    float *g, *u, *gu, *tmp, *tmp2, *xe, *router;
    long *sel;
    float *selw;
} fwd_bufs;

/* Causal softmax attention over T positions: query head h reads kv head
 * h / (nh / nkv) (GQA).  Row t of head h of q is at q + t*ldq + h*dqk (k
 * and v alike, with dqk and dv); ctx gets [T][nh * dv].  Scores and
 * softmax in double; Gemma2's soft cap; sliding window when the layer has
 * one. */
static void sdpa(const fwd_model *m, const fwd_layer *ly, const float *q, long ldq,
                 const float *k, long ldk, const float *v, long ldv, long nh, long nkv,
                 long dqk, long dv, long T, float *att, float *ctx)
{
    long group = nh / nkv;
    for (long hh = 0; hh < nh; hh++) {
        long kh = hh / group;
        for (long i = 0; i < T; i++) {
            const float *qi = q + i * ldq + hh * dqk;
            long j0 = ly->window > 0 && i - ly->window + 1 > 0 ? i - ly->window + 1 : 0;
            double mx = -INFINITY;
            for (long j = j0; j <= i; j++) {
                const float *kj = k + j * ldk + kh * dqk;
                double d = 0;
                for (long c = 0; c < dqk; c++)
                    d += (double)qi[c] * kj[c];
                d *= m->attn_scale;
                if (m->attn_softcap > 0)
                    d = tanh(d / m->attn_softcap) * m->attn_softcap;
                att[j] = (float)d;
                if (d > mx)
                    mx = d;
            }
            double sum = 0;
            for (long j = j0; j <= i; j++) {
                double e = exp((double)att[j] - mx);
                att[j] = (float)e;
                sum += e;
            }
            float *ci = ctx + i * nh * dv + hh * dv;
            for (long c = 0; c < dv; c++) {
                double acc = 0;
                for (long j = j0; j <= i; j++)
                    acc += (double)att[j] * v[j * ldv + kh * dv + c];
                ci[c] = (float)(acc / sum);
            }
        }
    }
}

/* DeepseekV3Attention (multi-head latent attention), see bind_layer.  The
 * latent and q_a norms are DeepseekV3RMSNorm built without eps: 1e-6. */
static fl_status attention_mla(const fwd_model *m, const fwd_layer *ly, const float *h, long T,
                               fwd_bufs *b, float *out, fl_error *err)
{
    long nh = m->nh, R = m->rot, qk = m->nope + R, kvw = m->kv_lora + R, kb = m->nope + m->vdim;
    size_t tz = (size_t)T;
    float *q = malloc(tz * nh * qk * sizeof *q), *k = malloc(tz * nh * qk * sizeof *k);
    float *v = malloc(tz * nh * m->vdim * sizeof *v), *kva = malloc(tz * kvw * sizeof *kva);
    float *lat = malloc(tz * m->kv_lora * sizeof *lat), *kvb = malloc(tz * nh * kb * sizeof *kvb);
    float *qa = malloc(tz * (m->q_lora > 0 ? m->q_lora : 1) * sizeof *qa);
    float *ctx = malloc(tz * nh * m->vdim * sizeof *ctx);
    fl_status s = FL_OK;
    if (!q || !k || !v || !kva || !lat || !kvb || !qa || !ctx) {
        s = fl_fail(err, FL_EIO, "out of memory");
        goto done;
    }
    if (ly->q_a.t) {
        if ((s = matmul(m, &ly->q_a, NULL, h, T, qa, err)) != FL_OK)
            goto done;
        norm_apply_eps(m, qa, T, m->q_lora, ly->q_a_norm.g, 0, 1e-6);
        s = matmul(m, &ly->q_b, NULL, qa, T, q, err);
    } else {
        s = matmul(m, &ly->q, NULL, h, T, q, err);
    }
    if (s != FL_OK || (s = matmul(m, &ly->kv_a, NULL, h, T, kva, err)) != FL_OK)
        goto done;
    for (long t = 0; t < T; t++)
        memcpy(lat + t * m->kv_lora, kva + t * kvw, (size_t)m->kv_lora * sizeof *lat);
    norm_apply_eps(m, lat, T, m->kv_lora, ly->kv_a_norm.g, 0, 1e-6);
    if ((s = matmul(m, &ly->kv_b, NULL, lat, T, kvb, err)) != FL_OK)
        goto done;
    for (long t = 0; t < T; t++) {
        float *kr = kva + t * kvw + m->kv_lora; /* one k_rot shared by all heads */
        rope_head(m, ly, kr, t);
        for (long hh = 0; hh < nh; hh++) {
            float *qh = q + (t * nh + hh) * qk, *kh = k + (t * nh + hh) * qk;
            const float *src = kvb + (t * nh + hh) * kb;
            rope_head(m, ly, qh + m->nope, t);
            memcpy(kh, src, (size_t)m->nope * sizeof *kh);
            memcpy(kh + m->nope, kr, (size_t)R * sizeof *kh);
            memcpy(v + (t * nh + hh) * m->vdim, src + m->nope, (size_t)m->vdim * sizeof *v);
        }
    }
    sdpa(m, ly, q, nh * qk, k, nh * qk, v, nh * m->vdim, nh, nh, qk, m->vdim, T, b->att, ctx);
    s = matmul(m, &ly->o, ly->bo, ctx, T, out, err);
done:
    free(q); free(k); free(v); free(kva); free(lat); free(kvb); free(qa); free(ctx);
    return s;
}


static fl_status attention(const fwd_model *m, const fwd_layer *ly, const float *h, long T,
                           fwd_bufs *b, float *out, fl_error *err)
{
    if (m->mla)
        return attention_mla(m, ly, h, T, b, out, err);
    long hd = m->hd, qd = m->nh * hd, kd = m->nkv * hd;
    fl_status s;
    if (ly->qkv.t) {
        /* Phi3: qkv_proj rows are [q | k | v] (Phi3Attention.forward). */
        if ((s = matmul(m, &ly->qkv, NULL, h, T, b->qkv, err)) != FL_OK)
            return s;
        long w = qd + 2 * kd;
        for (long t = 0; t < T; t++) {
            memcpy(b->q + t * qd, b->qkv + t * w, (size_t)qd * sizeof(float));
            memcpy(b->k + t * kd, b->qkv + t * w + qd, (size_t)kd * sizeof(float));
            memcpy(b->v + t * kd, b->qkv + t * w + qd + kd, (size_t)kd * sizeof(float));
        }
    } else if ((s = matmul(m, &ly->q, ly->bq, h, T, b->q, err)) != FL_OK ||
               (s = matmul(m, &ly->k, ly->bk, h, T, b->k, err)) != FL_OK ||
               (s = matmul(m, &ly->v, ly->bv, h, T, b->v, err)) != FL_OK) {
        return s;
    }
    /* q/k norms, before RoPE. */
    switch (m->fam->qk) {
    case QK_HEAD:
        norm_apply(m, b->q, T * m->nh, hd, ly->q_norm.g, 0);
        norm_apply(m, b->k, T * m->nkv, hd, ly->k_norm.g, 0);
        break;
    case QK_FULL:
        norm_apply(m, b->q, T, qd, ly->q_norm.g, 0);
        norm_apply(m, b->k, T, kd, ly->k_norm.g, 0);
        break;
    case QK_HEAD_2D:
        if (m->qk_norm_on)
            for (long t = 0; t < T; t++) {
                norm_apply(m, b->q + t * qd, m->nh, hd, ly->q_norm.g, hd);
                norm_apply(m, b->k + t * kd, m->nkv, hd, ly->k_norm.g, hd);
            }
        break;
    }
    if (ly->inv_freq)
        for (long t = 0; t < T; t++) {
            for (long hh = 0; hh < m->nh; hh++)
                rope_head(m, ly, b->q + t * qd + hh * hd, t);
            for (long hh = 0; hh < m->nkv; hh++)
                rope_head(m, ly, b->k + t * kd + hh * hd, t);
        }
    sdpa(m, ly, b->q, qd, b->k, kd, b->v, kd, m->nh, m->nkv, hd, hd, T, b->att, b->ctx);
    return matmul(m, &ly->o, ly->bo, b->ctx, T, out, err);
}

/* down(act(gate(x)) * up(x)) for a dense MLP or one expert. */
static fl_status gated_mlp(const fwd_model *m, const fwd_mat *gate, const fwd_mat *up,
                           const fwd_mat *gate_up, const fwd_mat *down, const float *bg,
                           const float *bu, const float *bd, const float *x, long T,
                           fwd_bufs *b, float *out, fl_error *err)
{
    fl_status s;
    long I;
    if (gate_up && gate_up->t) {
        /* Phi3MLP: gate, up = gate_up_proj(x).chunk(2); up * act(gate). */
        I = gate_up->rows / 2;
        if ((s = matmul(m, gate_up, NULL, x, T, b->gu, err)) != FL_OK)
            return s;
        for (long t = 0; t < T; t++)
            for (long i = 0; i < I; i++)
                b->g[t * I + i] = act_fn(m, b->gu[t * 2 * I + i]) * b->gu[t * 2 * I + I + i];
    } else {
        I = gate->rows;
        if ((s = matmul(m, gate, bg, x, T, b->g, err)) != FL_OK ||
            (s = matmul(m, up, bu, x, T, b->u, err)) != FL_OK)
            return s;
        for (long i = 0; i < T * I; i++)
            b->g[i] = act_fn(m, b->g[i]) * b->u[i];
    }
    return matmul(m, down, bd, b->g, T, out, err);
}

/* The indices of the K largest of E scores, best first; among equal scores
 * the lowest index wins, as torch.topk picks them.  Both routers use it. */
static void top_k(const double *score, long E, long K, long *sel)
{
    for (long k = 0; k < K; k++) {
        long best = -1;
        for (long e = 0; e < E; e++) {
            int taken = 0;
            for (long q = 0; q < k; q++)
                taken |= sel[q] == e;
            if (!taken && (best < 0 || score[e] > score[best]))
                best = e;
        }
        sel[k] = best;
    }
}

/* DeepseekV3TopkRouter: scores = sigmoid(logits); the choice adds
 * e_score_correction_bias; groups ranked by the sum of their two best
 * choices, experts outside the topk_group best groups masked to 0; top-k of
 * the choice; weights are the plain scores, renormalised (+1e-20) when
 * norm_topk_prob, times routed_scaling_factor. */
static void ds_route(const fwd_model *m, const fwd_layer *ly, const float *r, long E, long K,
                     long *sel, float *sw)
{
    double score[E], choice[E];
    for (long e = 0; e < E; e++) {
        score[e] = 1.0 / (1.0 + exp(-(double)r[e]));
        choice[e] = score[e] + (ly->e_bias ? ly->e_bias[e] : 0.0);
    }
    long G = m->n_group > 0 && E % m->n_group == 0 ? m->n_group : 1, per = E / G;
    long keep = m->topk_group > 0 && m->topk_group < G ? m->topk_group : G;
    if (keep < G && per >= 2) {
        double gs[G];
        int kept[G];
        for (long g = 0; g < G; g++) {
            double b1 = -INFINITY, b2 = -INFINITY;
            for (long e = g * per; e < (g + 1) * per; e++) {
                if (choice[e] > b1) {
                    b2 = b1;
                    b1 = choice[e];
                } else if (choice[e] > b2) {
                    b2 = choice[e];
                }
            }
            gs[g] = b1 + b2;
            kept[g] = 0;
        }
        for (long n = 0; n < keep; n++) {
            long best = -1;
            for (long g = 0; g < G; g++)
                if (!kept[g] && (best < 0 || gs[g] > gs[best]))
                    best = g;
            kept[best] = 1;
        }
        for (long e = 0; e < E; e++)
            if (!kept[e / per])
                choice[e] = 0.0;
    }
    top_k(choice, E, K, sel);
    double tot = 0;
    for (long k = 0; k < K; k++)
        tot += score[sel[k]];
    for (long k = 0; k < K; k++) {
        double w = score[sel[k]];
        if (m->norm_topk)
            w /= tot + 1e-20;
        sw[k] = (float)(w * m->routed_scale);
    }
}

/* Sparse MoE block: softmax router over all experts in fp32, top-k,
 * optional renormalisation (MixtralSparseMoeBlock always; Qwen*MoE when
 * norm_topk_prob), each expert on its tokens, plus Qwen2-MoE's shared
 * expert scaled by sigmoid(shared_expert_gate(x)). */
static fl_status moe(const fwd_model *m, const fwd_layer *ly, const float *x, long T,
                     fwd_bufs *b, float *out, fl_error *err)
{
    long E = ly->n_experts, K = m->topk, H = m->H;
    fl_status s;
    if ((s = matmul(m, &ly->router, NULL, x, T, b->router, err)) != FL_OK)
        return s;
    for (long t = 0; t < T; t++) {
        const float *r = b->router + t * E;
        long *sel = b->sel + t * K;
        float *sw = b->selw + t * K;
        if (m->ds_router) {
            ds_route(m, ly, r, E, K, sel, sw);
            continue;
        }
        double mx = -INFINITY, sum = 0;
        for (long e = 0; e < E; e++)
            if (r[e] > mx)
                mx = r[e];
        for (long e = 0; e < E; e++)
            sum += exp((double)r[e] - mx);
        double rd[E];
        for (long e = 0; e < E; e++)
            rd[e] = r[e];   /* exact: the same order as the float logits */
        top_k(rd, E, K, sel);
        double tot = 0;
        for (long k = 0; k < K; k++) {
            long best = sel[k];
            double p = exp((double)r[best] - mx) / sum;
            sw[k] = (float)p;
            tot += p;
        }
        if (m->norm_topk)
            for (long k = 0; k < K; k++)
                sw[k] = (float)(sw[k] / tot);
    }
    memset(out, 0, (size_t)(T * H) * sizeof *out);
    long *idx = malloc((size_t)T * sizeof *idx);
    float *wt = malloc((size_t)T * sizeof *wt);
    if (!idx || !wt) {
        free(idx);
        free(wt);
        return fl_fail(err, FL_EIO, "out of memory");
    }
    for (long e = 0; e < E && s == FL_OK; e++) {
        long n = 0;
        for (long t = 0; t < T; t++)
            for (long k = 0; k < K; k++)
                if (b->sel[t * K + k] == e) {
                    idx[n] = t;
                    wt[n] = b->selw[t * K + k];
                    memcpy(b->xe + n * H, x + t * H, (size_t)H * sizeof(float));
                    n++;
                }
        if (!n) {
            /* No token chose expert e: its weights count as done unread. */
            meter_add(m, &ly->e_gate[e]);
            meter_add(m, &ly->e_up[e]);
            meter_add(m, &ly->e_down[e]);
            continue;
        }
        s = gated_mlp(m, &ly->e_gate[e], &ly->e_up[e], NULL, &ly->e_down[e], NULL, NULL, NULL,
                      b->xe, n, b, b->tmp2, err);
        for (long i = 0; s == FL_OK && i < n; i++)
            for (long c = 0; c < H; c++)
                out[idx[i] * H + c] += wt[i] * b->tmp2[i * H + c];
    }
    free(idx);
    free(wt);
    if (s != FL_OK || !ly->sh_gate.t)
        return s;
    if ((s = gated_mlp(m, &ly->sh_gate, &ly->sh_up, NULL, &ly->sh_down, NULL, NULL, NULL, x, T,
                       b, b->tmp2, err)) != FL_OK ||
        (ly->sh_scalar.t && (s = matmul(m, &ly->sh_scalar, NULL, x, T, b->router, err)) != FL_OK))
        return s;
    for (long t = 0; t < T; t++) {
        float gsc = ly->sh_scalar.t ? (float)(1.0 / (1.0 + exp(-(double)b->router[t]))) : 1.0f;
        for (long c = 0; c < H; c++)
            out[t * H + c] += gsc * b->tmp2[t * H + c];
    }
    return FL_OK;
}

static fl_status mlp(const fwd_model *m, const fwd_layer *ly, const float *x, long T,
                     fwd_bufs *b, float *out, fl_error *err)
{
    if (ly->n_experts)
        return moe(m, ly, x, T, b, out, err);
    return gated_mlp(m, &ly->gate, &ly->up, &ly->gate_up, &ly->down, ly->b_gate, ly->b_up,
                     ly->b_down, x, T, b, out, err);
}

/* ----------------------------------------------------------------------------
 * The forward pass */

static void *xcalloc(size_t n, size_t size, int *oom)
{
    if (n == 0)
        n = 1;
    void *p = calloc(n, size);
    if (!p)
        *oom = 1;
    return p;
}

fl_status fwd_logits(fwd_model *m, const int32_t *tokens, size_t n, float *logits,
                     fl_error *err)
{
    if (n == 0 || n > 1000000)
        return fl_fail(err, FL_EINPUT, "the forward pass needs 1 to 1000000 tokens, got %zu", n);
    for (size_t t = 0; t < n; t++)
        if (tokens[t] < 0 || tokens[t] >= m->embed.rows)
            return fl_fail(err, FL_EINPUT, "token id %d at position %zu is outside the vocabulary (0..%ld)",
                           (int)tokens[t], t, m->embed.rows - 1);
    long T = (long)n, H = m->H, qd = m->nh * m->hd, kd = m->nkv * m->hd, I = m->max_inter;
    long E = m->max_experts, K = m->topk > 0 ? m->topk : 1;
    int oom = 0;
    size_t tz = (size_t)T;
    fwd_bufs b = {0};
    float *x = xcalloc(tz * H, sizeof(float), &oom);
    float *y = xcalloc(tz * H, sizeof(float), &oom);
    b.h = xcalloc(tz * H, sizeof(float), &oom);
    b.q = xcalloc(tz * qd, sizeof(float), &oom);
    b.k = xcalloc(tz * kd, sizeof(float), &oom);
    b.v = xcalloc(tz * kd, sizeof(float), &oom);
    b.ctx = xcalloc(tz * qd, sizeof(float), &oom);
    b.qkv = xcalloc(tz * (qd + 2 * kd), sizeof(float), &oom);
    b.att = xcalloc(tz, sizeof(float), &oom);
    b.g = xcalloc(tz * I, sizeof(float), &oom);
    b.u = xcalloc(tz * I, sizeof(float), &oom);
    b.gu = xcalloc(tz * 2 * I, sizeof(float), &oom);
    b.tmp = xcalloc(tz * H, sizeof(float), &oom);
    b.tmp2 = xcalloc(tz * H, sizeof(float), &oom);
    b.xe = xcalloc(tz * H, sizeof(float), &oom);
    b.router = xcalloc(tz * (E > 1 ? E : 1), sizeof(float), &oom);
    b.sel = xcalloc(tz * K, sizeof(long), &oom);
    b.selw = xcalloc(tz * K, sizeof(float), &oom);
    size_t rowb = (size_t)H * m->embed.esize;
    void *raw = xcalloc(rowb, 1, &oom);
    fl_status s = FL_OK;
    m->meter.done = 0;
    if (oom) {
        s = fl_fail(err, FL_EIO, "out of memory for %zu tokens", n);
        goto done;
    }

    /* Embeddings (GemmaModel: * normalizer; Granite: * embedding_multiplier). */
    for (long t = 0; t < T; t++) {
        if ((s = ckpt_read(m->ck, m->embed.t, (uint64_t)tokens[t] * rowb, raw, rowb, err)) != FL_OK)
            goto done;
        to_float(m->embed.dtype, raw, x + t * H, (size_t)H);
        if (m->embed_mult != 1.0)
            for (long c = 0; c < H; c++)
                x[t * H + c] = (float)(x[t * H + c] * m->embed_mult);
    }
    if (m->head.t != m->embed.t)
        meter_add(m, &m->embed);   /* looked up, not streamed */

    for (long l = 0; l < m->L; l++) {
        const fwd_layer *ly = &m->layers[l];
        const int layout = m->fam->layout;
        /* Attention sublayer. */
        memcpy(b.h, x, tz * H * sizeof(float));
        if (layout != LAYOUT_POST)
            norm_rows(m, &ly->attn_norm, b.h, T, H);
        if ((s = attention(m, ly, b.h, T, &b, y, err)) != FL_OK)
            goto done;
        if (layout == LAYOUT_SANDWICH || layout == LAYOUT_POST)
            norm_rows(m, &ly->attn_post, y, T, H);
        if (layout == LAYOUT_PARALLEL) {
            /* CohereDecoderLayer: x + attn(h) + mlp(h), same normed h. */
            if ((s = mlp(m, ly, b.h, T, &b, b.tmp, err)) != FL_OK)
                goto done;
            for (long i = 0; i < T * H; i++)
                x[i] += y[i] + b.tmp[i];
            continue;
        }
        for (long i = 0; i < T * H; i++)
            x[i] += (float)(m->residual_mult * y[i]);
        /* MLP sublayer. */
        memcpy(b.h, x, tz * H * sizeof(float));
        if (layout != LAYOUT_POST)
            norm_rows(m, &ly->mlp_norm, b.h, T, H);
        if ((s = mlp(m, ly, b.h, T, &b, y, err)) != FL_OK)
            goto done;
        if (layout == LAYOUT_SANDWICH || layout == LAYOUT_POST)
            norm_rows(m, &ly->mlp_post, y, T, H);
        for (long i = 0; i < T * H; i++)
            x[i] += (float)(m->residual_mult * y[i]);
    }

    norm_rows(m, &m->final_norm, x, T, H);
    if ((s = matmul(m, &m->head, NULL, x, T, logits, err)) != FL_OK)
        goto done;
    for (long i = 0; i < T * m->V; i++) {
        double z = logits[i] * m->logit_mult;
        if (m->final_softcap > 0)
            z = tanh(z / m->final_softcap) * m->final_softcap;
        logits[i] = (float)z;
    }
    if (m->meter.fn)
        m->meter.fn(m->meter.ctx, m->meter.total, m->meter.total);
done:
    free(x); free(y); free(raw);
    free(b.h); free(b.q); free(b.k); free(b.v); free(b.ctx); free(b.qkv); free(b.att);
    free(b.g); free(b.u); free(b.gu); free(b.tmp); free(b.tmp2); free(b.xe);
    free(b.router); free(b.sel); free(b.selw);
    return s;
}
