/* forward_gemma3n.c — Gemma 3n's decoder stack for the reference forward
 * pass (a fwd_block, forward_internal.h).
 *
 * What Gemma3nForCausalLM, and the text model of
 * Gemma3nForConditionalGeneration, compute for a text-only sequence
 * (transformers gemma3n/modeling_gemma3n.py: Gemma3nTextModel,
 * Gemma3nTextDecoderLayer, Gemma3nTextAltUp, Gemma3nTextLaurelBlock,
 * Gemma3nTextMLP, Gemma3nTextAttention; docs/architectures.md §gemma3n cites
 * each rule).  The residual stream is AltUp's n predictions: the embedding
 * and n - 1 projections of it scaled to its magnitude.  Each layer predicts
 * (a learned n x n mix routed by the active stream), runs attention and
 * LAuReL on the normed active prediction, the MLP (sparse activations in
 * the first layers), corrects every stream by the innovation, and adds the
 * per-layer input path to streams 1..n-1.  At the end the streams are
 * unembedded, rescaled, averaged.  KV sharing and the per-layer inputs work
 * as in Gemma 4 (forward_gemma4.c); the embedding scale, final norm, head
 * and soft cap are the shared pass's. */
#include "forward_internal.h"

#include "flashify/safetensors.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define G3N_MAX_STREAMS 64
#define G3N_MAX_DIM 65536

typedef struct {
    int sliding;
    long kv_from;          /* -1: its own keys and values; else the layer they come from */
    int keep_kv;           /* a later layer reads this layer's keys and values */
    long I;                /* intermediate_size[i] */
    int sparse;            /* activation_sparsity_pattern[i] > 0 */
    float cutoff_mult;     /* icdf(sparsity) in the model dtype */
    fwd_norm router_norm, post_laurel;
    fwd_mat router, laurel_l, laurel_r;
    fwd_ple_layer ple;     /* the per-layer input path (forward_gemma_shared.c) */
    float *pred_w;         /* altup.prediction_coefs [n * n, n] */
    float *corr_w;         /* altup.correction_coefs [n, n], clamped to +-altup_coef_clip */
    float *out_scale;      /* altup.correct_output_scale [H] */
} g3n_layer;

typedef struct {
    g3n_layer *ly;
    long n, active, window, n_sliding, n_shared, n_sparse, laurel;
    int correct_scale;
    fwd_ple ple;           /* the per-layer inputs; H^-0.5 and 2^-0.5 in the model dtype */
    fwd_mat proj[G3N_MAX_STREAMS], unembed[G3N_MAX_STREAMS]; /* altup_(un)embed_projections.{j} */
} g3n_model;

static const char *dir(const fwd_model *m) { return m->ck->dir; }

/* ----------------------------------------------------------------------------
 * The config (Gemma3nTextConfig) */

/* The inverse of the standard normal CDF (torch Normal(0, 1).icdf), by
 * Newton's method on erfc. */
static double normal_icdf(double p)
{
    double x = 0;
    for (int it = 0; it < 100; it++) {
        double f = 0.5 * erfc(-x / sqrt(2.0)) - p, d = exp(-0.5 * x * x) / sqrt(2.0 * M_PI);
        double step = f / d;
        x -= step;
        if (fabs(step) < 1e-15)
            break;
    }
    return x;
}

/* A per-layer list (intermediate_size may be one number for every layer). */
static int per_layer(const fwd_model *m, const char *key, long i, double *v)
{
    const cJSON *a = ckpt_view_get(m->cfg, key);
    const cJSON *e = cJSON_IsArray(a) ? cJSON_GetArrayItem(a, (int)i) : a;
    if (!cJSON_IsNumber(e) || (cJSON_IsArray(a) && cJSON_GetArraySize(a) != m->L))
        return 0;
    *v = e->valuedouble;
    return 1;
}

/* layer_types (class default: every fifth full), KV sharing
 * (Gemma3nTextAttention.kv_shared_layer_index), the MLP's widths and
 * sparsity (default 0.95 in the first 10 layers when there are more). */
static fl_status parse_layers(fwd_model *m, g3n_model *g, fl_error *err)
{
    const cJSON *lt = ckpt_view_get(m->cfg, "layer_types");
    long shared = ckpt_view_int(m->cfg, "num_kv_shared_layers", 15);
    if (shared < 0 || shared > m->L)
        return fl_fail(err, FL_EINPUT, "%s/config.json: num_kv_shared_layers %ld must be 0 to %ld", dir(m), shared,
                       m->L);
    long first = m->L - shared;
    int sparse_default = !ckpt_view_get(m->cfg, "activation_sparsity_pattern") ||
                         cJSON_IsNull(ckpt_view_get(m->cfg, "activation_sparsity_pattern"));
    for (long i = 0; i < m->L; i++) {
        g3n_layer *ly = &g->ly[i];
        const cJSON *e = cJSON_IsArray(lt) ? cJSON_GetArrayItem(lt, (int)i) : NULL;
        if (cJSON_IsArray(lt) && !(cJSON_IsString(e) && (!strcmp(e->valuestring, "sliding_attention") ||
                                                          !strcmp(e->valuestring, "full_attention"))))
            return fl_fail(err, FL_EINPUT, "%s/config.json: layer_types[%ld] is not sliding_attention or "
                           "full_attention", dir(m), i);
        ly->sliding = e ? !strcmp(e->valuestring, "sliding_attention") : (i + 1) % 5 != 0;
        g->n_sliding += ly->sliding;
        double v;
        if (!per_layer(m, "intermediate_size", i, &v) || v < 1 || v > G3N_MAX_DIM * 4)
            return fl_fail(err, FL_EINPUT, "%s/config.json: intermediate_size (layer %ld) is not valid", dir(m), i);
        ly->I = (long)v;
        double sp = sparse_default ? (m->L > 10 && i < 10 ? 0.95 : 0.0) : -1;
        if (!sparse_default && !per_layer(m, "activation_sparsity_pattern", i, &sp))
            return fl_fail(err, FL_EINPUT, "%s/config.json: activation_sparsity_pattern must list %ld values",
                           dir(m), m->L);
        if (!(sp >= 0 && sp < 1))
            return fl_fail(err, FL_EINPUT, "%s/config.json: activation sparsity %g (layer %ld) must be in [0, 1)",
                           dir(m), sp, i);
        ly->sparse = sp > 0;
        g->n_sparse += ly->sparse;
        ly->cutoff_mult = (float)fwd_round_to_dtype(m->embed.dtype, normal_icdf(sp));
        ly->kv_from = -1;
        if (i < first)
            continue;
        for (long j = first - 1; j >= 0 && ly->kv_from < 0; j--)
            if (g->ly[j].sliding == ly->sliding)
                ly->kv_from = j;
        if (ly->kv_from < 0)
            return fl_fail(err, FL_EINPUT, "%s/config.json: KV-shared layer %ld has no earlier layer of its type "
                           "to share with", dir(m), i);
        g->ly[ly->kv_from].keep_kv = 1;
        g->n_shared++;
    }
    double w = ckpt_view_num(m->cfg, "sliding_window", 512, 0);
    g->window = w >= 1 && w < 1e15 ? (long)w : 0;
    return FL_OK;
}

static fl_status parse_altup(fwd_model *m, g3n_model *g, fl_error *err)
{
    g->n = ckpt_view_int(m->cfg, "altup_num_inputs", 4);
    g->active = ckpt_view_int(m->cfg, "altup_active_idx", 0);
    g->laurel = ckpt_view_int(m->cfg, "laurel_rank", 64);
    g->ple.P = ckpt_view_int(m->cfg, "hidden_size_per_layer_input", 256);
    g->correct_scale = ckpt_view_bool(m->cfg, "altup_correct_scale", 1);
    if (g->n < 1 || g->n > G3N_MAX_STREAMS || g->active < 0 || g->active >= g->n)
        return fl_fail(err, FL_EINPUT, "%s/config.json: altup_num_inputs %ld with altup_active_idx %ld is not valid",
                       dir(m), g->n, g->active);
    if (g->laurel < 1 || g->laurel > G3N_MAX_DIM || g->ple.P < 1 || g->ple.P > G3N_MAX_DIM ||
        (double)m->L * (double)g->ple.P > (double)(1L << 31))
        return fl_fail(err, FL_EINPUT, "%s/config.json: laurel_rank %ld or hidden_size_per_layer_input %ld is not "
                       "valid", dir(m), g->laurel, g->ple.P);
    return FL_OK;
}

/* ----------------------------------------------------------------------------
 * Binding */

#define NAME(fmt) (snprintf(name, sizeof name, "%s" fmt, pre), name)

static fl_status bind_floats(fwd_model *m, const char *name, long n, float **out, fl_error *err)
{
    return fwd_bind_vec(m, name, n, 1, out, err);
}

/* A KV-shared layer's own k/v projections are never read (the released
 * checkpoints store them anyway): bound only where present. */
static fl_status bind_attention(fwd_model *m, fwd_layer *ly, const char *pre, int own_kv, fl_error *err)
{
    char name[512];
    long H = m->H, qd = m->nh * m->hd, kd = m->nkv * m->hd;
    fl_status s;
    if ((s = fwd_bind_mat(m, NAME("self_attn.q_proj.weight"), qd, H, 1, &ly->q, err)) != FL_OK ||
        (s = fwd_bind_mat(m, NAME("self_attn.k_proj.weight"), kd, H, own_kv, &ly->k, err)) != FL_OK ||
        (s = fwd_bind_mat(m, NAME("self_attn.v_proj.weight"), kd, H, own_kv, &ly->v, err)) != FL_OK ||
        (s = fwd_bind_mat(m, NAME("self_attn.o_proj.weight"), H, qd, 1, &ly->o, err)) != FL_OK ||
        (s = fwd_bind_vec(m, NAME("self_attn.q_proj.bias"), qd, 0, &ly->bq, err)) != FL_OK ||
        (s = fwd_bind_vec(m, NAME("self_attn.k_proj.bias"), kd, 0, &ly->bk, err)) != FL_OK ||
        (s = fwd_bind_vec(m, NAME("self_attn.v_proj.bias"), kd, 0, &ly->bv, err)) != FL_OK ||
        (s = fwd_bind_vec(m, NAME("self_attn.o_proj.bias"), H, 0, &ly->bo, err)) != FL_OK ||
        (s = fwd_bind_norm(m, NAME("self_attn.q_norm.weight"), m->hd, &ly->q_norm, err)) != FL_OK)
        return s;
    return fwd_bind_norm(m, NAME("self_attn.k_norm.weight"), m->hd, &ly->k_norm, err);
}

/* Gemma3nTextAltUp: router_norm -> modality_router [n, H], prediction_coefs
 * [n * n, n], correction_coefs [n, n] (correct() clamps them to
 * +-altup_coef_clip in place on every call), correct_output_scale [H]. */
static fl_status bind_altup(fwd_model *m, g3n_model *gm, g3n_layer *g, const char *pre, fl_error *err)
{
    char name[512];
    long n = gm->n;
    fl_status s;
    if ((s = fwd_bind_norm(m, NAME("altup.router_norm.weight"), m->H, &g->router_norm, err)) != FL_OK ||
        (s = fwd_bind_mat(m, NAME("altup.modality_router.weight"), n, m->H, 1, &g->router, err)) != FL_OK ||
        (s = bind_floats(m, NAME("altup.prediction_coefs.weight"), n * n * n, &g->pred_w, err)) != FL_OK ||
        (s = bind_floats(m, NAME("altup.correction_coefs.weight"), n * n, &g->corr_w, err)) != FL_OK ||
        (s = bind_floats(m, NAME("altup.correct_output_scale"), m->H, &g->out_scale, err)) != FL_OK)
        return s;
    const cJSON *clip = ckpt_view_get(m->cfg, "altup_coef_clip");
    double c = clip ? (cJSON_IsNumber(clip) ? clip->valuedouble : -1) : 120.0;
    for (long k = 0; c >= 0 && k < n * n; k++)
        g->corr_w[k] = (float)fmin(fmax(g->corr_w[k], -c), c);
    return FL_OK;
}

static fl_status bind_layer(fwd_model *m, g3n_model *gm, const char *prefix, long i, fl_error *err)
{
    char pre[256], name[512];
    g3n_layer *g = &gm->ly[i];
    fwd_layer *ly = &m->layers[i];
    long H = m->H, I = g->I, r = gm->laurel;
    snprintf(pre, sizeof pre, "%slayers.%ld.", prefix, i);
    fl_status s;
    if ((s = fwd_bind_norm(m, NAME("input_layernorm.weight"), H, &ly->attn_norm, err)) != FL_OK ||
        (s = fwd_bind_norm(m, NAME("post_attention_layernorm.weight"), H, &ly->attn_post, err)) != FL_OK ||
        (s = fwd_bind_norm(m, NAME("pre_feedforward_layernorm.weight"), H, &ly->mlp_norm, err)) != FL_OK ||
        (s = fwd_bind_norm(m, NAME("post_feedforward_layernorm.weight"), H, &ly->mlp_post, err)) != FL_OK ||
        (s = bind_attention(m, ly, pre, g->kv_from < 0, err)) != FL_OK ||
        (s = bind_altup(m, gm, g, pre, err)) != FL_OK ||
        (s = fwd_bind_mat(m, NAME("mlp.gate_proj.weight"), I, H, 1, &ly->gate, err)) != FL_OK ||
        (s = fwd_bind_mat(m, NAME("mlp.up_proj.weight"), I, H, 1, &ly->up, err)) != FL_OK ||
        (s = fwd_bind_mat(m, NAME("mlp.down_proj.weight"), H, I, 1, &ly->down, err)) != FL_OK ||
        (s = fwd_bind_mat(m, NAME("laurel.linear_left.weight"), r, H, 1, &g->laurel_l, err)) != FL_OK ||
        (s = fwd_bind_mat(m, NAME("laurel.linear_right.weight"), H, r, 1, &g->laurel_r, err)) != FL_OK ||
        (s = fwd_bind_norm(m, NAME("laurel.post_laurel_norm.weight"), H, &g->post_laurel, err)) != FL_OK ||
        (s = fwd_ple_bind_layer(m, &gm->ple, &g->ple, pre, err)) != FL_OK)
        return s;
    if (I > m->max_inter)
        m->max_inter = I;
    ly->inv_freq = g->sliding && m->freq_local ? m->freq_local : m->freq_global;
    ly->rope_af = (float)(g->sliding && m->freq_local ? m->af_local : m->af_global);
    ly->window = g->sliding ? gm->window : 0;
    return FL_OK;
}

/* Gemma3nTextModel: embed_tokens_per_layer [Vp, L * P] (* sqrt(P) in its
 * dtype), per_layer_model_projection [L * P, H], per_layer_projection_norm
 * [P], altup_projections.{j} and altup_unembed_projections.{j} [H, H]. */
static fl_status bind_model(fwd_model *m, g3n_model *g, const char *pre, fl_error *err)
{
    char name[512];
    fl_status s = fwd_ple_bind(m, &g->ple, pre, err);
    if (s != FL_OK)
        return s;
    /* Gemma3nTextModel rounds both scalars to the model dtype
     * (.type(inputs_embeds.dtype), §gemma3n). */
    g->ple.proj_scale = fwd_round_to_dtype(m->embed.dtype, g->ple.proj_scale);
    g->ple.input_scale = fwd_round_to_dtype(m->embed.dtype, g->ple.input_scale);
    m->in_tokens = g->ple.embed.rows;   /* the text ids: above them are the multimodal soft tokens */
    for (long j = 0; j + 1 < g->n && s == FL_OK; j++) {
        snprintf(name, sizeof name, "%saltup_projections.%ld.weight", pre, j);
        if ((s = fwd_bind_mat(m, name, m->H, m->H, 1, &g->proj[j], err)) != FL_OK)
            break;
        snprintf(name, sizeof name, "%saltup_unembed_projections.%ld.weight", pre, j);
        s = fwd_bind_mat(m, name, m->H, m->H, 1, &g->unembed[j], err);
    }
    return s;
}
#undef NAME

static fl_status g3n_open(fwd_model *m, const char *prefix, fl_error *err)
{
    g3n_model *g = calloc(1, sizeof *g);
    if (!g || !(g->ly = calloc((size_t)m->L, sizeof *g->ly))) {
        free(g);
        return fl_fail(err, FL_EIO, "out of memory");
    }
    m->ext = g;
    m->attn_scale = 1.0;   /* Gemma3nTextAttention: scaling=1.0 (q_norm and k_norm set the scale) */
    m->attn_softcap = 0;
    fl_status s;
    if ((s = parse_layers(m, g, err)) != FL_OK || (s = parse_altup(m, g, err)) != FL_OK ||
        (s = bind_model(m, g, prefix, err)) != FL_OK)
        return s;
    for (long i = 0; i < m->L && s == FL_OK; i++)
        s = bind_layer(m, g, prefix, i, err);
    return s;
}

static void g3n_describe(const fwd_model *m, char *buf, size_t cap)
{
    const g3n_model *g = m->ext;
    snprintf(buf, cap, ", AltUp %ld streams, LAuReL rank %ld, per-layer inputs %ld, sliding window %ld in %ld layers"
             "%s, sparse activations in %ld layers", g->n, g->laurel, g->ple.P, g->window, g->n_sliding,
             g->n_shared ? ", KV shared" : "", g->n_sparse);
}

static void g3n_close(fwd_model *m)
{
    g3n_model *g = m->ext;
    if (!g)
        return;
    for (long i = 0; g->ly && i < m->L; i++) {
        g3n_layer *ly = &g->ly[i];
        free(ly->router_norm.g); free(ly->post_laurel.g); free(ly->ple.post.g);
        free(ly->pred_w); free(ly->corr_w); free(ly->out_scale);
    }
    free(g->ly);
    free(g->ple.proj_norm.g);
    free(g);
    m->ext = NULL;
}

/* ----------------------------------------------------------------------------
 * The pass */

typedef struct {
    float *s;          /* the n streams [n][T][H] */
    float *pred;       /* predictions [n][T][H] */
    float *act;        /* active prediction, normed [T][H] */
    float *y, *y2, *z, *lr;
    float *mod;        /* router modalities [T][n] */
    float *ple;        /* per-layer inputs [T][L][P] */
    float **ks, **vs;  /* kept keys and values per layer */
} g3n_bufs;

/* sqrt(mean(x^2)) of one vector. */
static double magnitude(const float *x, long n)
{
    double ss = 0;
    for (long i = 0; i < n; i++)
        ss += (double)x[i] * x[i];
    return sqrt(ss / (double)n);
}

/* Gemma3nTextAltUp.compute_router_modalities: tanh(modality_router(
 * router_norm(x) / H)) for each of T rows, into w->mod [T][n]. */
static fl_status modalities(const fwd_model *m, const g3n_model *gm, const g3n_layer *g, const float *x, long T,
                            g3n_bufs *w, fl_error *err)
{
    long H = m->H;
    memcpy(w->z, x, (size_t)(T * H) * sizeof *w->z);
    fwd_norm_rows(m, &g->router_norm, w->z, T, H);
    for (long i = 0; i < T * H; i++)
        w->z[i] = (float)(w->z[i] / (double)H);
    fl_status s = fwd_matmul(m, &g->router, NULL, w->z, T, w->mod, err);
    for (long i = 0; s == FL_OK && i < T * gm->n; i++)
        w->mod[i] = (float)tanh((double)w->mod[i]);
    return s;
}

/* Gemma3nTextAltUp.predict: pred[a] = s[a] + sum_c coef[a * n + c] * s[c],
 * coef = prediction_coefs(modalities of the active stream). */
static fl_status predict(const fwd_model *m, const g3n_model *gm, const g3n_layer *g, long T, g3n_bufs *w,
                         fl_error *err)
{
    long H = m->H, n = gm->n;
    size_t plane = (size_t)(T * H);
    fl_status s = modalities(m, gm, g, w->s + (size_t)gm->active * plane, T, w, err);
    if (s != FL_OK)
        return s;
    for (long t = 0; t < T; t++) {
        const float *mo = w->mod + t * n;
        for (long a = 0; a < n; a++)
            for (long h = 0; h < H; h++) {
                double acc = w->s[a * plane + t * H + h];
                for (long c = 0; c < n; c++) {
                    double coef = 0;
                    for (long k = 0; k < n; k++)
                        coef += (double)g->pred_w[(a * n + c) * n + k] * mo[k];
                    acc += coef * w->s[c * plane + t * H + h];
                }
                w->pred[a * plane + t * H + h] = (float)acc;
            }
    }
    return FL_OK;
}

/* Gemma3nTextAltUp.correct: s[a] = pred[a] + (activated - pred[active]) *
 * (correction_coefs(modalities of activated)[a] + 1). */
static fl_status correct(const fwd_model *m, const g3n_model *gm, const g3n_layer *g, const float *activated, long T,
                         g3n_bufs *w, fl_error *err)
{
    long H = m->H, n = gm->n;
    size_t plane = (size_t)(T * H);
    fl_status s = modalities(m, gm, g, activated, T, w, err);
    for (long t = 0; s == FL_OK && t < T; t++)
        for (long a = 0; a < n; a++) {
            double coef = 1.0;
            for (long k = 0; k < n; k++)
                coef += (double)g->corr_w[a * n + k] * w->mod[t * n + k];
            for (long h = 0; h < H; h++) {
                size_t at = (size_t)(t * H + h);
                double innov = (double)activated[at] - w->pred[(size_t)gm->active * plane + at];
                w->s[a * plane + at] = (float)(w->pred[a * plane + at] + innov * coef);
            }
        }
    return s;
}

/* Gemma3nTextAttention.forward (forward_gemma_shared.c), with KV sharing. */
static fl_status attention(const fwd_model *m, const g3n_layer *g, const fwd_layer *ly, long l, const float *h,
                           long T, fwd_bufs *b, g3n_bufs *w, float *out, fl_error *err)
{
    int shared = g->kv_from >= 0;
    fwd_gemma_attn a = {.hd = m->hd, .nkv = m->nkv,
                        .from_k = shared ? w->ks[g->kv_from] : NULL, .from_v = shared ? w->vs[g->kv_from] : NULL,
                        .keep_k = g->keep_kv ? w->ks[l] : NULL, .keep_v = g->keep_kv ? w->vs[l] : NULL,
                        .q = b->q, .k = b->k, .v = b->v, .ctx = b->ctx};
    return fwd_gemma_attention(m, ly, &a, h, T, b, out, err);
}

/* Gemma3nTextMLP: down(act(gate(x)) * up(x)); in sparse layers the gate
 * first goes through _gaussian_topk: relu(gate - (mean + std * icdf(p))),
 * the mean and (biased) std over the intermediate channels. */
static fl_status mlp(const fwd_model *m, const g3n_layer *g, const fwd_layer *ly, const float *x, long T,
                     fwd_bufs *b, float *out, fl_error *err)
{
    long I = g->I;
    fl_status s;
    if ((s = fwd_matmul(m, &ly->gate, NULL, x, T, b->g, err)) != FL_OK ||
        (s = fwd_matmul(m, &ly->up, NULL, x, T, b->u, err)) != FL_OK)
        return s;
    for (long t = 0; t < T; t++) {
        float *gt = b->g + t * I;
        double cut = -INFINITY;
        if (g->sparse) {
            double mean = 0, var = 0;
            for (long i = 0; i < I; i++)
                mean += gt[i];
            mean /= (double)I;
            for (long i = 0; i < I; i++)
                var += (gt[i] - mean) * (gt[i] - mean);
            cut = mean + sqrt(var / (double)I) * g->cutoff_mult;
        }
        for (long i = 0; i < I; i++) {
            float gi = g->sparse ? (float)fmax((double)gt[i] - cut, 0.0) : gt[i];
            gt[i] = fwd_act(m, gi) * b->u[t * I + i];
        }
    }
    return fwd_matmul(m, &ly->down, NULL, b->g, T, out, err);
}

/* Gemma3nTextDecoderLayer.forward: attention and LAuReL on the normed
 * active prediction, (active + attn + laurel) / sqrt(2), the MLP's
 * sandwich, AltUp's correction, the per-layer input on streams 1..n-1. */
static fl_status layer(const fwd_model *m, const g3n_model *gm, long l, long T, fwd_bufs *b, g3n_bufs *w,
                       fl_error *err)
{
    const g3n_layer *g = &gm->ly[l];
    const fwd_layer *ly = &m->layers[l];
    long H = m->H;
    size_t n = (size_t)(T * H);
    const float *active = w->pred + (size_t)gm->active * n;
    fl_status s = predict(m, gm, g, T, w, err);
    if (s != FL_OK)
        return s;
    memcpy(w->act, active, n * sizeof *w->act);
    fwd_norm_rows(m, &ly->attn_norm, w->act, T, H);
    /* LAuReL: x + post_laurel_norm(linear_right(linear_left(x))), x normed. */
    if ((s = fwd_matmul(m, &g->laurel_l, NULL, w->act, T, w->lr, err)) != FL_OK ||
        (s = fwd_matmul(m, &g->laurel_r, NULL, w->lr, T, w->y2, err)) != FL_OK ||
        (s = attention(m, g, ly, l, w->act, T, b, w, w->y, err)) != FL_OK)
        return s;
    fwd_norm_rows(m, &g->post_laurel, w->y2, T, H);
    fwd_norm_rows(m, &ly->attn_post, w->y, T, H);
    for (size_t i = 0; i < n; i++)
        w->z[i] = (float)(((double)active[i] + w->y[i] + w->act[i] + w->y2[i]) / sqrt(2.0));
    memcpy(b->h, w->z, n * sizeof *b->h);
    fwd_norm_rows(m, &ly->mlp_norm, b->h, T, H);
    if ((s = mlp(m, g, ly, b->h, T, b, w->y, err)) != FL_OK)
        return s;
    fwd_norm_rows(m, &ly->mlp_post, w->y, T, H);
    for (size_t i = 0; i < n; i++)
        w->y2[i] = w->z[i] + w->y[i];
    if ((s = correct(m, gm, g, w->y2, T, w, err)) != FL_OK)
        return s;
    memcpy(w->act, w->s + (size_t)gm->active * n, n * sizeof *w->act);
    for (size_t i = 0; gm->correct_scale && i < n; i++)
        w->act[i] *= g->out_scale[i % (size_t)H];
    if ((s = fwd_ple_layer_out(m, &gm->ple, &g->ple, l, w->ple, w->act, T, b, w->y, err)) != FL_OK)
        return s;
    for (long a = 1; a < gm->n; a++)
        for (size_t i = 0; i < n; i++)
            w->s[(size_t)a * n + i] += w->y[i];
    return FL_OK;
}

/* Stream j of n (1..n-1) from the hidden state x through a projection,
 * scaled to the magnitude of ref, per row. */
static fl_status rescaled(const fwd_model *m, const fwd_mat *proj, const float *x, const float *ref, long T,
                          float *out, fl_error *err)
{
    long H = m->H;
    fl_status s = fwd_matmul(m, proj, NULL, x, T, out, err);
    for (long t = 0; s == FL_OK && t < T; t++) {
        double scale = magnitude(ref + t * H, H) / magnitude(out + t * H, H);
        for (long h = 0; h < H; h++)
            out[t * H + h] = (float)(out[t * H + h] * scale);
    }
    return s;
}

static void free_bufs(const fwd_model *m, g3n_bufs *w)
{
    free(w->s); free(w->pred); free(w->act); free(w->y); free(w->y2); free(w->z); free(w->lr);
    free(w->mod); free(w->ple);
    for (long i = 0; w->ks && i < m->L; i++) {
        free(w->ks[i]);
        free(w->vs[i]);
    }
    free(w->ks);
    free(w->vs);
}

static int alloc_bufs(const fwd_model *m, const g3n_model *g, long T, g3n_bufs *w)
{
    size_t tz = (size_t)T, H = (size_t)m->H, n = (size_t)g->n, kd = tz * (size_t)(m->nkv * m->hd) * sizeof(float);
    w->s = malloc(n * tz * H * sizeof(float));
    w->pred = malloc(n * tz * H * sizeof(float));
    w->act = malloc(tz * H * sizeof(float));
    w->y = malloc(tz * H * sizeof(float));
    w->y2 = malloc(tz * H * sizeof(float));
    w->z = malloc(tz * H * sizeof(float));
    w->lr = malloc(tz * (size_t)g->laurel * sizeof(float));
    w->mod = malloc(tz * n * sizeof(float));
    w->ple = malloc(tz * (size_t)(m->L * g->ple.P) * sizeof(float));
    w->ks = calloc((size_t)m->L, sizeof *w->ks);
    w->vs = calloc((size_t)m->L, sizeof *w->vs);
    int ok = w->s && w->pred && w->act && w->y && w->y2 && w->z && w->lr && w->mod && w->ple && w->ks && w->vs;
    for (long i = 0; ok && i < m->L; i++)
        if (g->ly[i].keep_kv)
            ok = (w->ks[i] = malloc(kd)) && (w->vs[i] = malloc(kd));
    return ok;
}

/* Gemma3nTextModel.forward from the scaled embeddings x [T][H] to the
 * averaged streams, back in x. */
static fl_status g3n_run(const fwd_model *m, const int32_t *tokens, float *x, long T, fwd_bufs *b, fl_error *err)
{
    const g3n_model *g = m->ext;
    size_t plane = (size_t)T * (size_t)m->H;
    g3n_bufs w = {0};
    fl_status s = alloc_bufs(m, g, T, &w) ? fwd_ple_inputs(m, &g->ple, tokens, x, T, w.ple, err)
                                          : fl_fail(err, FL_EIO, "out of memory for %ld tokens", T);
    if (s == FL_OK)
        memcpy(w.s, x, plane * sizeof *x);
    for (long j = 1; s == FL_OK && j < g->n; j++)
        s = rescaled(m, &g->proj[j - 1], x, x, T, w.s + (size_t)j * plane, err);
    for (long l = 0; s == FL_OK && l < m->L; l++)
        s = layer(m, g, l, T, b, &w, err);
    /* Unembed streams 1..n-1 to stream 0's magnitude, then the mean. */
    if (s == FL_OK)
        memcpy(x, w.s, plane * sizeof *x);
    for (long j = 1; s == FL_OK && j < g->n; j++) {
        if ((s = rescaled(m, &g->unembed[j - 1], w.s + (size_t)j * plane, w.s, T, w.y, err)) == FL_OK)
            for (size_t i = 0; i < plane; i++)
                x[i] += w.y[i];
    }
    for (size_t i = 0; s == FL_OK && i < plane; i++)
        x[i] = (float)((double)x[i] / (double)g->n);
    free_bufs(m, &w);
    return s;
}

/* rope: the shared RoPE parse (rope_theta, rope_local_base_freq) runs first. */
const fwd_block FWD_GEMMA3N = {g3n_open, g3n_run, g3n_describe, g3n_close, 1};
