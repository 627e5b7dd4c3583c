/* forward_gemma4.c — Gemma 4's decoder stack for the reference forward pass
 * (a fwd_block, forward_internal.h).
 *
 * What Gemma4ForCausalLM, and the text model of
 * Gemma4ForConditionalGeneration, compute for a text-only sequence
 * (transformers gemma4/modeling_gemma4.py; docs/architectures.md §gemma4
 * cites each rule): sliding and full attention layers with their own head
 * size, kv heads and RoPE (default / proportional), q/k norms and a
 * weightless v norm, attention scale 1; attention_k_eq_v (values are the
 * raw key projection); KV sharing (the last num_kv_shared_layers reuse the
 * keys and values of the last earlier layer of their type); sandwich norms;
 * the MoE block beside the dense MLP (router on the raw residual through a
 * weightless norm, router.scale, per_expert_scale); per-layer inputs; the
 * layer scalar.  The embedding scale, final norm, head and final soft cap
 * are the shared pass's (forward.c, forward_table.c). */
#include "forward_internal.h"

#include "flashify/safetensors.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define G4_MAX_DIM 65536

enum { G4_SLIDING = 0, G4_FULL = 1 };

typedef struct {
    int type;              /* G4_SLIDING / G4_FULL */
    long hd, nkv;          /* head size and kv heads of this layer */
    long kv_from;          /* -1: its own keys and values; else the layer they come from */
    int keep_kv;           /* a later layer reads this layer's keys and values */
    int k_eq_v;            /* values are the key projection (before k_norm) */
    fwd_norm pre_moe, post_mlp, post_moe;
    fwd_ple_layer ple;     /* the per-layer input path (forward_gemma_shared.c) */
    float layer_scalar;
    fwd_mat router;        /* router.proj [E, H] */
    float *router_scale;   /* router.scale [H] */
    float *expert_scale;   /* router.per_expert_scale [E] */
    fwd_layer ex;          /* the experts: n_experts, e_gate_up, e_down */
} g4_layer;

typedef struct {
    g4_layer *ly;
    fwd_ple ple;              /* the per-layer inputs (ple.P 0: none) */
    float *freq[2];           /* inverse frequencies per layer type */
    long hd_max, nkv_max, n_shared, n_sliding, window;
    int k_eq_v, moe, double_wide;
    long E;
} g4_model;

static const char *const TYPE_NAMES[2] = {"sliding_attention", "full_attention"};

static const char *dir(const fwd_model *m) { return m->ck->dir; }

/* ----------------------------------------------------------------------------
 * The config (Gemma4TextConfig and its __post_init__) */

/* layer_types, or the config class's default pattern (every 6th layer
 * full); the last layer is always full attention (__post_init__ forces
 * it). */
static fl_status parse_layer_types(fwd_model *m, g4_model *g, fl_error *err)
{
    const cJSON *lt = ckpt_view_get(m->cfg, "layer_types");
    if (lt && !cJSON_IsNull(lt) && (!cJSON_IsArray(lt) || cJSON_GetArraySize(lt) != m->L))
        return fl_fail(err, FL_EINPUT, "%s/config.json: layer_types must list %ld layer types", dir(m), m->L);
    for (long i = 0; i < m->L; i++) {
        int type = (i + 1) % 6 ? G4_SLIDING : G4_FULL;
        const cJSON *e = cJSON_IsArray(lt) ? cJSON_GetArrayItem(lt, (int)i) : NULL;
        if (e) {
            if (!cJSON_IsString(e) || (strcmp(e->valuestring, TYPE_NAMES[0]) && strcmp(e->valuestring, TYPE_NAMES[1])))
                return fl_fail(err, FL_EINPUT, "%s/config.json: layer_types[%ld] is not sliding_attention "
                               "or full_attention", dir(m), i);
            type = strcmp(e->valuestring, TYPE_NAMES[1]) == 0;
        }
        g->ly[i].type = i == m->L - 1 ? G4_FULL : type;
        g->n_sliding += g->ly[i].type == G4_SLIDING;
    }
    return FL_OK;
}

/* Gemma4TextAttention.__init__: a full layer's head size is
 * global_head_dim (class default 512) when set; with attention_k_eq_v it
 * has num_global_key_value_heads and no v_proj. */
static fl_status parse_attention(fwd_model *m, g4_model *g, fl_error *err)
{
    ckpt_view c = m->cfg;
    const cJSON *bi = ckpt_view_get(c, "use_bidirectional_attention");
    if (cJSON_IsString(bi) && strcmp(bi->valuestring, "all") == 0)
        return fl_fail(err, FL_EINPUT, "%s/config.json: use_bidirectional_attention \"all\" (non-causal text "
                       "attention) is not supported by the reference forward pass", dir(m));
    if (ckpt_view_get(c, "per_layer_config") && !ckpt_view_get(c, "global_head_dim"))
        return fl_fail(err, FL_EINPUT, "%s/config.json: per_layer_config without global_head_dim is not "
                       "supported by the reference forward pass", dir(m));
    long ghd = (long)ckpt_view_num(c, "global_head_dim", 512, 0);
    g->k_eq_v = ckpt_view_set(c, "attention_k_eq_v");
    long gkv = ckpt_view_int(c, "num_global_key_value_heads", 0);
    if (g->k_eq_v && gkv <= 0)
        return fl_fail(err, FL_EINPUT, "%s/config.json: attention_k_eq_v needs num_global_key_value_heads", dir(m));
    double w = ckpt_view_num(c, "sliding_window", 512, 0);
    g->window = w >= 1 && w < 1e15 ? (long)w : 0;
    for (long i = 0; i < m->L; i++) {
        g4_layer *ly = &g->ly[i];
        int full = ly->type == G4_FULL;
        ly->hd = full && ghd > 0 ? ghd : m->hd;
        ly->k_eq_v = g->k_eq_v && full;
        ly->nkv = ly->k_eq_v ? gkv : m->nkv;
        if (ly->hd <= 0 || ly->hd > G4_MAX_DIM || ly->hd % 2 || ly->nkv <= 0 || ly->nkv > m->nh ||
            m->nh % ly->nkv)
            return fl_fail(err, FL_EINPUT, "%s/config.json: layer %ld: head_dim %ld with %ld of %ld kv heads "
                           "is not a valid attention layout", dir(m), i, ly->hd, ly->nkv, m->nh);
        if (ly->hd > g->hd_max)
            g->hd_max = ly->hd;
        if (ly->nkv > g->nkv_max)
            g->nkv_max = ly->nkv;
        m->layers[i].window = full ? 0 : g->window;
        m->layers[i].rot = ly->hd;
    }
    return FL_OK;
}

/* KV sharing: layer i >= L - num_kv_shared_layers (when that is > 0)
 * reads the keys and values of the last layer of its type before the
 * shared ones (Gemma4TextAttention.kv_shared_layer_index). */
static fl_status parse_kv_sharing(fwd_model *m, g4_model *g, fl_error *err)
{
    long n = ckpt_view_int(m->cfg, "num_kv_shared_layers", 0);
    if (n < 0 || n >= m->L)
        return fl_fail(err, FL_EINPUT, "%s/config.json: num_kv_shared_layers %ld must be 0 to %ld", dir(m), n,
                       m->L - 1);
    long first = m->L - n;
    g->n_shared = n;
    for (long i = 0; i < m->L; i++) {
        g4_layer *ly = &g->ly[i];
        ly->kv_from = -1;
        if (i < first)
            continue;
        for (long j = first - 1; j >= 0 && ly->kv_from < 0; j--)
            if (g->ly[j].type == ly->type)
                ly->kv_from = j;
        if (ly->kv_from < 0)
            return fl_fail(err, FL_EINPUT, "%s/config.json: KV-shared layer %ld is %s, but none of the first %ld "
                           "layers is", dir(m), i, TYPE_NAMES[ly->type], first);
        g->ly[ly->kv_from].keep_kv = 1;
    }
    return FL_OK;
}

/* Gemma4TextRotaryEmbedding: rope_parameters keyed by layer type (class
 * default: sliding "default" base 1e4, full "proportional" base 1e6 on a
 * quarter of the head).  "default" rotates head_dim channels; proportional
 * rotates the first partial_rotary_factor * hd / 2 frequency pairs of the
 * layer's head with exponents over the whole head, the rest get frequency
 * 0 (_compute_proportional_rope_parameters). */
static fl_status build_freqs(fwd_model *m, g4_model *g, int type, long hd, fl_error *err)
{
    const cJSON *rp = ckpt_view_get(m->cfg, "rope_parameters");
    const cJSON *sub = cJSON_IsObject(rp) ? cJSON_GetObjectItemCaseSensitive(rp, TYPE_NAMES[type]) : NULL;
    if (rp && !cJSON_IsNull(rp) && !cJSON_IsObject(sub))
        return fl_fail(err, FL_EINPUT, "%s/config.json: rope_parameters has no \"%s\" entry", dir(m),
                       TYPE_NAMES[type]);
    const cJSON *ty = sub ? cJSON_GetObjectItemCaseSensitive(sub, "rope_type") : NULL;
    const cJSON *th = sub ? cJSON_GetObjectItemCaseSensitive(sub, "rope_theta") : NULL;
    const cJSON *fa = sub ? cJSON_GetObjectItemCaseSensitive(sub, "factor") : NULL;
    const cJSON *pr = sub ? cJSON_GetObjectItemCaseSensitive(sub, "partial_rotary_factor") : NULL;
    const char *rtype = cJSON_IsString(ty) ? ty->valuestring : sub ? "default" : type ? "proportional" : "default";
    double theta = cJSON_IsNumber(th) ? th->valuedouble : sub ? NAN : type ? 1e6 : 1e4;
    double factor = cJSON_IsNumber(fa) ? fa->valuedouble : 1.0;
    double prf = cJSON_IsNumber(pr) ? pr->valuedouble : sub ? 1.0 : type ? 0.25 : 1.0;
    if (!(theta > 1) || !(factor > 0) || !(prf >= 0 && prf <= 1))
        return fl_fail(err, FL_EINPUT, "%s/config.json: rope_parameters.%s needs rope_theta > 1, factor > 0 and "
                       "partial_rotary_factor in [0, 1]", dir(m), TYPE_NAMES[type]);
    long dim, angles;
    int prop = strcmp(rtype, "proportional") == 0;
    if (prop) {
        /* head_dim_key: global_head_dim for full layers, else head_dim;
         * either falls back to hidden_size / num_attention_heads. */
        long key = type ? (long)ckpt_view_num(m->cfg, "global_head_dim", 512, 0)
                        : ckpt_view_int(m->cfg, "head_dim", 0);
        dim = key > 0 ? key : m->H / m->nh;
        angles = (long)floor(prf * (double)dim / 2);
    } else if (strcmp(rtype, "default") == 0) {
        dim = ckpt_view_int(m->cfg, "head_dim", 0) > 0 ? ckpt_view_int(m->cfg, "head_dim", 0) : m->H / m->nh;
        angles = dim / 2;
    } else {
        return fl_fail(err, FL_EINPUT, "%s/config.json: rope_type '%s' for %s layers is not supported by the "
                       "Gemma 4 forward pass (default, proportional)", dir(m), rtype, TYPE_NAMES[type]);
    }
    if (dim != hd)
        return fl_fail(err, FL_EINPUT, "%s/config.json: %s RoPE for %s layers spans %ld dims, but their heads "
                       "have %ld", dir(m), rtype, TYPE_NAMES[type], dim, hd);
    float *f = calloc((size_t)(hd / 2), sizeof *f);
    if (!f)
        return fl_fail(err, FL_EIO, "out of memory");
    for (long j = 0; j < angles && j < hd / 2; j++)
        f[j] = (float)(1.0 / pow(theta, (double)(2 * j) / (double)dim) / factor);
    g->freq[type] = f;
    return FL_OK;
}

/* ----------------------------------------------------------------------------
 * Binding */

#define NAME(fmt) (snprintf(name, sizeof name, "%s" fmt, pre), name)

/* Biases are optional (attention_bias). */
static fl_status bind_proj(fwd_model *m, const char *pre, const char *what, long rows, long cols, fwd_mat *w,
                           float **bias, fl_error *err)
{
    char name[512];
    snprintf(name, sizeof name, "%sself_attn.%s.weight", pre, what);
    fl_status s = fwd_bind_mat(m, name, rows, cols, 1, w, err);
    snprintf(name, sizeof name, "%sself_attn.%s.bias", pre, what);
    return s == FL_OK ? fwd_bind_vec(m, name, rows, 0, bias, err) : s;
}

static fl_status bind_attention(fwd_model *m, const g4_layer *g, fwd_layer *ly, const char *pre, fl_error *err)
{
    char name[512];
    long H = m->H, qd = m->nh * g->hd, kd = g->nkv * g->hd;
    fl_status s;
    if ((s = fwd_bind_norm(m, NAME("self_attn.q_norm.weight"), g->hd, &ly->q_norm, err)) != FL_OK ||
        (s = bind_proj(m, pre, "q_proj", qd, H, &ly->q, &ly->bq, err)) != FL_OK ||
        (s = bind_proj(m, pre, "o_proj", H, qd, &ly->o, &ly->bo, err)) != FL_OK)
        return s;
    if (g->kv_from >= 0)
        return FL_OK;   /* no k/v projections, no k_norm: the keys come from kv_from */
    if ((s = fwd_bind_norm(m, NAME("self_attn.k_norm.weight"), g->hd, &ly->k_norm, err)) != FL_OK ||
        (s = bind_proj(m, pre, "k_proj", kd, H, &ly->k, &ly->bk, err)) != FL_OK)
        return s;
    return g->k_eq_v ? FL_OK : bind_proj(m, pre, "v_proj", kd, H, &ly->v, &ly->bv, err);
}

/* Gemma4TextMLP: intermediate_size, twice that in KV-shared layers with
 * use_double_wide_mlp. */
static fl_status bind_mlp(fwd_model *m, g4_model *gm, const g4_layer *g, fwd_layer *ly, const char *pre,
                          fl_error *err)
{
    char name[512];
    long H = m->H, I = ckpt_view_int(m->cfg, "intermediate_size", 0);
    if (I <= 0 || I > G4_MAX_DIM * 4)
        return fl_fail(err, FL_EINPUT, "%s/config.json: intermediate_size %ld is not valid", dir(m), I);
    if (gm->double_wide && g->kv_from >= 0)
        I *= 2;
    fl_status s;
    if ((s = fwd_bind_mat(m, NAME("mlp.gate_proj.weight"), I, H, 1, &ly->gate, err)) != FL_OK ||
        (s = fwd_bind_mat(m, NAME("mlp.up_proj.weight"), I, H, 1, &ly->up, err)) != FL_OK ||
        (s = fwd_bind_mat(m, NAME("mlp.down_proj.weight"), H, I, 1, &ly->down, err)) != FL_OK)
        return s;
    if (I > m->max_inter)
        m->max_inter = I;
    return FL_OK;
}

/* Gemma4TextRouter and Gemma4TextExperts ([E, 2I, H] / [E, H, I]). */
static fl_status bind_moe(fwd_model *m, g4_model *gm, g4_layer *g, const char *pre, fl_error *err)
{
    char name[512];
    long E = gm->E, H = m->H;
    fl_status s;
    if ((s = fwd_bind_mat(m, NAME("router.proj.weight"), E, H, 1, &g->router, err)) != FL_OK ||
        (s = fwd_bind_vec(m, NAME("router.scale"), H, 0, &g->router_scale, err)) != FL_OK ||
        (s = fwd_bind_vec(m, NAME("router.per_expert_scale"), E, 0, &g->expert_scale, err)) != FL_OK ||
        (s = fwd_bind_norm(m, NAME("pre_feedforward_layernorm_2.weight"), H, &g->pre_moe, err)) != FL_OK ||
        (s = fwd_bind_norm(m, NAME("post_feedforward_layernorm_1.weight"), H, &g->post_mlp, err)) != FL_OK ||
        (s = fwd_bind_norm(m, NAME("post_feedforward_layernorm_2.weight"), H, &g->post_moe, err)) != FL_OK)
        return s;
    fwd_layer *ex = &g->ex;
    if ((s = fwd_alloc_experts(ex, E, err)) != FL_OK || (s = fwd_bind_fused(m, ex, pre, "experts", E, err)) != FL_OK)
        return s;
    long I = ckpt_view_int(m->cfg, "moe_intermediate_size", 0);
    long got = ex->e_down[0].xw ? ex->e_down[0].rows : ex->e_down[0].cols;
    if (got != I)
        return fl_fail(err, FL_EINPUT, "%s: experts '%sexperts.down_proj' are %ld wide, config.json says "
                       "moe_intermediate_size %ld", dir(m), pre, got, I);
    return FL_OK;
}

static fl_status bind_layer(fwd_model *m, g4_model *gm, const char *prefix, long i, fl_error *err)
{
    char pre[256], name[512];
    g4_layer *g = &gm->ly[i];
    fwd_layer *ly = &m->layers[i];
    long H = m->H;
    snprintf(pre, sizeof pre, "%slayers.%ld.", prefix, i);
    fl_status s;
    if ((s = fwd_bind_norm(m, NAME("input_layernorm.weight"), H, &ly->attn_norm, err)) != FL_OK ||
        (s = fwd_bind_norm(m, NAME("post_attention_layernorm.weight"), H, &ly->attn_post, err)) != FL_OK ||
        (s = fwd_bind_norm(m, NAME("pre_feedforward_layernorm.weight"), H, &ly->mlp_norm, err)) != FL_OK ||
        (s = fwd_bind_norm(m, NAME("post_feedforward_layernorm.weight"), H, &ly->mlp_post, err)) != FL_OK ||
        (s = bind_attention(m, g, ly, pre, err)) != FL_OK || (s = bind_mlp(m, gm, g, ly, pre, err)) != FL_OK ||
        (gm->moe && (s = bind_moe(m, gm, g, pre, err)) != FL_OK) ||
        (gm->ple.P && (s = fwd_ple_bind_layer(m, &gm->ple, &g->ple, pre, err)) != FL_OK))
        return s;
    /* layer_scalar: a persistent buffer [1], initialised to ones. */
    float *sc = NULL;
    if ((s = fwd_bind_vec(m, NAME("layer_scalar"), 1, 0, &sc, err)) != FL_OK)
        return s;
    g->layer_scalar = sc ? sc[0] : 1.0f;
    free(sc);
    ly->inv_freq = gm->freq[g->type];
    ly->rope_af = 1.0f;
    return FL_OK;
}

#undef NAME

static fl_status parse_ffn(fwd_model *m, g4_model *g, fl_error *err)
{
    ckpt_view c = m->cfg;
    g->double_wide = ckpt_view_set(c, "use_double_wide_mlp");
    g->ple.P = (long)ckpt_view_num(c, "hidden_size_per_layer_input", 256, 0);
    if (g->ple.P < 0 || g->ple.P > G4_MAX_DIM || (double)m->L * (double)g->ple.P > (double)(1L << 31))
        return fl_fail(err, FL_EINPUT, "%s/config.json: hidden_size_per_layer_input %ld is not valid", dir(m),
                       g->ple.P);
    g->moe = ckpt_view_set(c, "enable_moe_block");
    if (!g->moe)
        return FL_OK;
    g->E = ckpt_view_int(c, "num_experts", 0);
    m->topk = ckpt_view_int(c, "top_k_experts", 0);
    if (g->E <= 0 || g->E > G4_MAX_DIM || m->topk < 1 || m->topk > g->E)
        return fl_fail(err, FL_EINPUT, "%s/config.json: enable_moe_block needs num_experts > 0 and top_k_experts "
                       "in 1..num_experts (got %ld, %ld)", dir(m), g->E, m->topk);
    m->max_experts = g->E;
    return FL_OK;
}

static fl_status g4_open(fwd_model *m, const char *prefix, fl_error *err)
{
    g4_model *g = calloc(1, sizeof *g);
    if (!g || !(g->ly = calloc((size_t)m->L, sizeof *g->ly))) {
        free(g);
        return fl_fail(err, FL_EIO, "out of memory");
    }
    m->ext = g;
    m->attn_scale = 1.0;   /* Gemma4TextAttention.scaling: q_norm/k_norm set the scale */
    m->attn_softcap = 0;
    fl_status s;
    if ((s = parse_layer_types(m, g, err)) != FL_OK || (s = parse_attention(m, g, err)) != FL_OK ||
        (s = parse_kv_sharing(m, g, err)) != FL_OK || (s = parse_ffn(m, g, err)) != FL_OK)
        return s;
    for (int t = 0; t < 2; t++) {
        long hd = -1;
        for (long i = 0; i < m->L && hd < 0; i++)
            if (g->ly[i].type == t)
                hd = g->ly[i].hd;
        if (hd > 0 && (s = build_freqs(m, g, t, hd, err)) != FL_OK)
            return s;
    }
    if (g->ple.P && (s = fwd_ple_bind(m, &g->ple, prefix, err)) != FL_OK)
        return s;
    for (long i = 0; i < m->L && s == FL_OK; i++)
        s = bind_layer(m, g, prefix, i, err);
    return s;
}

static void g4_describe(const fwd_model *m, char *buf, size_t cap)
{
    const g4_model *g = m->ext;
    snprintf(buf, cap, ", sliding window %ld in %ld layers%s%s%s%s%s", g->window, g->n_sliding,
             g->k_eq_v ? ", k_eq_v" : "", g->n_shared ? ", KV shared" : "", g->ple.P ? ", per-layer inputs" : "",
             g->double_wide && g->n_shared ? ", double-wide MLP" : "",
             g->moe ? ", MoE block (fused experts [E, 2I, H])" : "");
}

static void g4_close(fwd_model *m)
{
    g4_model *g = m->ext;
    if (!g)
        return;
    for (long i = 0; g->ly && i < m->L; i++) {
        g4_layer *ly = &g->ly[i];
        free(ly->pre_moe.g); free(ly->post_mlp.g); free(ly->post_moe.g); free(ly->ple.post.g);
        free(ly->router_scale); free(ly->expert_scale);
        free(ly->ex.e_gate); free(ly->ex.e_up); free(ly->ex.e_gate_up); free(ly->ex.e_down);
    }
    free(g->ly);
    free(g->ple.proj_norm.g);
    free(g->freq[0]);
    free(g->freq[1]);
    free(g);
    m->ext = NULL;
}

/* ----------------------------------------------------------------------------
 * The pass */

/* Per-pass buffers. */
typedef struct {
    float *q, *k, *v, *ctx, *res, *y, *y2, *xr, *ple;
    float **ks, **vs;   /* kept keys and values per layer (KV sharing) */
} g4_bufs;

/* Gemma4TextAttention.forward (forward_gemma_shared.c): this layer's
 * head size and kv heads, k_eq_v, KV sharing. */
static fl_status attention(const fwd_model *m, const g4_layer *g, const fwd_layer *ly, long l, const float *h,
                           long T, fwd_bufs *b, g4_bufs *w, float *out, fl_error *err)
{
    int shared = g->kv_from >= 0;
    fwd_gemma_attn a = {.hd = g->hd, .nkv = g->nkv, .k_eq_v = g->k_eq_v,
                        .from_k = shared ? w->ks[g->kv_from] : NULL, .from_v = shared ? w->vs[g->kv_from] : NULL,
                        .keep_k = g->keep_kv ? w->ks[l] : NULL, .keep_v = g->keep_kv ? w->vs[l] : NULL,
                        .q = w->q, .k = w->k, .v = w->v, .ctx = w->ctx};
    return fwd_gemma_attention(m, ly, &a, h, T, b, out, err);
}

/* Gemma4TextRouter on the raw residual: weightless RMSNorm, * scale *
 * H^-0.5, proj, softmax, top-k, renormalised, * per_expert_scale; then
 * the experts on pre_feedforward_layernorm_2(residual). */
static fl_status moe_block(const fwd_model *m, const g4_layer *g, const float *res, long T, fwd_bufs *b,
                           g4_bufs *w, float *out, fl_error *err)
{
    long H = m->H, E = g->ex.n_experts, K = m->topk;
    double rs = 1.0 / sqrt((double)H);
    memcpy(w->xr, res, (size_t)(T * H) * sizeof *w->xr);
    fwd_norm rms = {NULL, H};
    fwd_norm_rows(m, &rms, w->xr, T, H);
    for (long t = 0; t < T; t++)
        for (long c = 0; c < H; c++)
            w->xr[t * H + c] = (float)(w->xr[t * H + c] * (g->router_scale ? g->router_scale[c] : 1.0f) * rs);
    fl_status s = fwd_matmul(m, &g->router, NULL, w->xr, T, b->router, err);
    if (s != FL_OK)
        return s;
    double *p = malloc((size_t)E * sizeof *p);
    if (!p)
        return fl_fail(err, FL_EIO, "out of memory");
    for (long t = 0; t < T; t++) {
        const float *r = b->router + t * E;
        double mx = -INFINITY, sum = 0, tot = 0;
        for (long e = 0; e < E; e++)
            mx = r[e] > mx ? r[e] : mx;
        for (long e = 0; e < E; e++)
            sum += (p[e] = exp((double)r[e] - mx));
        for (long e = 0; e < E; e++)
            p[e] /= sum;
        fwd_top_k(p, E, K, b->sel + t * K);
        /* verify's output pass takes the source's choice (forward_route.c),
         * weighted by this router's own probabilities. */
        fwd_route_pin(m, b->sel + t * K, E, K);
        for (long k = 0; k < K; k++)
            tot += p[b->sel[t * K + k]];
        for (long k = 0; k < K; k++) {
            long e = b->sel[t * K + k];
            b->selw[t * K + k] = (float)(p[e] / tot * (g->expert_scale ? g->expert_scale[e] : 1.0f));
        }
    }
    free(p);
    memcpy(w->xr, res, (size_t)(T * H) * sizeof *w->xr);
    fwd_norm_rows(m, &g->pre_moe, w->xr, T, H);
    return fwd_experts(m, &g->ex, w->xr, T, b, out, err);
}

/* Gemma4TextDecoderLayer.forward. */
static fl_status layer(const fwd_model *m, const g4_model *gm, long l, float *x, long T, fwd_bufs *b, g4_bufs *w,
                       fl_error *err)
{
    const g4_layer *g = &gm->ly[l];
    const fwd_layer *ly = &m->layers[l];
    long H = m->H;
    size_t n = (size_t)(T * H);
    memcpy(b->h, x, n * sizeof *x);
    fwd_norm_rows(m, &ly->attn_norm, b->h, T, H);
    fl_status s = attention(m, g, ly, l, b->h, T, b, w, w->y, err);
    if (s != FL_OK)
        return s;
    fwd_norm_rows(m, &ly->attn_post, w->y, T, H);
    for (size_t i = 0; i < n; i++)
        x[i] += w->y[i];
    memcpy(w->res, x, n * sizeof *x);
    memcpy(b->h, x, n * sizeof *x);
    fwd_norm_rows(m, &ly->mlp_norm, b->h, T, H);
    if ((s = fwd_mlp(m, ly, b->h, T, b, w->y, err)) != FL_OK)
        return s;
    if (gm->moe) {
        fwd_norm_rows(m, &g->post_mlp, w->y, T, H);
        if ((s = moe_block(m, g, w->res, T, b, w, w->y2, err)) != FL_OK)
            return s;
        fwd_norm_rows(m, &g->post_moe, w->y2, T, H);
        for (size_t i = 0; i < n; i++)
            w->y[i] += w->y2[i];
    }
    fwd_norm_rows(m, &ly->mlp_post, w->y, T, H);
    for (size_t i = 0; i < n; i++)
        x[i] = w->res[i] + w->y[i];
    /* the per-layer input residual: x += norm(proj(act(gate(x)) * ple_l)) */
    if (gm->ple.P && (s = fwd_ple_layer_out(m, &gm->ple, &g->ple, l, w->ple, x, T, b, w->y, err)) != FL_OK)
        return s;
    for (size_t i = 0; gm->ple.P && i < n; i++)
        x[i] += w->y[i];
    for (size_t i = 0; i < n; i++)
        x[i] *= g->layer_scalar;
    return FL_OK;
}

static void free_bufs(const fwd_model *m, g4_bufs *w)
{
    free(w->q); free(w->k); free(w->v); free(w->ctx);
    free(w->res); free(w->y); free(w->y2); free(w->xr); free(w->ple);
    for (long i = 0; w->ks && i < m->L; i++) {
        free(w->ks[i]);
        free(w->vs[i]);
    }
    free(w->ks);
    free(w->vs);
}

static fl_status g4_run(const fwd_model *m, const int32_t *tokens, float *x, long T, fwd_bufs *b, fl_error *err)
{
    const g4_model *g = m->ext;
    size_t tz = (size_t)T, hx = tz * (size_t)g->hd_max, H = (size_t)m->H;
    g4_bufs w = {0};
    w.q = malloc(hx * (size_t)m->nh * sizeof(float));
    w.ctx = malloc(hx * (size_t)m->nh * sizeof(float));
    w.k = malloc(hx * (size_t)g->nkv_max * sizeof(float));
    w.v = malloc(hx * (size_t)g->nkv_max * sizeof(float));
    w.res = malloc(tz * H * sizeof(float));
    w.y = malloc(tz * H * sizeof(float));
    w.y2 = malloc(tz * H * sizeof(float));
    w.xr = malloc(tz * H * sizeof(float));
    w.ple = malloc(tz * (size_t)(m->L * (g->ple.P ? g->ple.P : 1)) * sizeof(float));
    w.ks = calloc((size_t)m->L, sizeof *w.ks);
    w.vs = calloc((size_t)m->L, sizeof *w.vs);
    int oom = !w.q || !w.ctx || !w.k || !w.v || !w.res || !w.y || !w.y2 || !w.xr || !w.ple || !w.ks || !w.vs;
    for (long i = 0; !oom && i < m->L; i++) {
        if (!g->ly[i].keep_kv)
            continue;
        size_t kd = tz * (size_t)(g->ly[i].nkv * g->ly[i].hd) * sizeof(float);
        oom = !(w.ks[i] = malloc(kd)) || !(w.vs[i] = malloc(kd));
    }
    fl_status s = oom ? fl_fail(err, FL_EIO, "out of memory for %ld tokens", T) : FL_OK;
    if (s == FL_OK && g->ple.P)
        s = fwd_ple_inputs(m, &g->ple, tokens, x, T, w.ple, err);
    for (long l = 0; s == FL_OK && l < m->L; l++)
        s = layer(m, g, l, x, T, b, &w, err);
    free_bufs(m, &w);
    return s;
}

const fwd_block FWD_GEMMA4 = {g4_open, g4_run, g4_describe, g4_close, .rope = 0};
