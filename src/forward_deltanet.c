/* forward_deltanet.c — Gated DeltaNet linear attention, the "linear_attention"
 * layers of Qwen3.5 / Qwen3.6 / Qwen3-Next (forward_internal.h).
 *
 * As Qwen3NextGatedDeltaNet / Qwen3_5GatedDeltaNet compute it for a prompt
 * without cache (transformers qwen3_next/modular_qwen3_next.py,
 * qwen3_5/modular_qwen3_5.py; docs/architectures.md §qwen3_5):
 *
 *   [q | k | v] = in_proj_qkv(h) (Qwen3-Next: from in_proj_qkvz, grouped per
 *   key head), z = in_proj_z(h), b = in_proj_b(h), a = in_proj_a(h);
 *   [q | k | v] = silu(causal depthwise conv1d, kernel K, no bias);
 *   q, k l2-normalised per head (eps 1e-6), q *= dk^-1/2; key heads are
 *   repeated (repeat_interleave) over the value heads;
 *   beta = sigmoid(b), g = -exp(A_log) * softplus(a + dt_bias);
 *   per value head, state S [dk][dv] from 0:  S *= exp(g_t);
 *   S += k_t (beta_t (v_t - S^T k_t))^T;  o_t = S^T q_t
 *   (the recurrent form; the chunked kernel transformers runs for a prompt
 *   computes the same);
 *   o = RMSNorm(o) * w * silu(z) per value head (Qwen3NextRMSNormGated, gain
 *   w, eps rms_norm_eps); out = out_proj(o).
 *
 * The recurrence and every statistic run in double, activations are float. */
#include "forward_internal.h"

#include "flashify/safetensors.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GDN_MAX_HEADS 4096
#define GDN_MAX_DIM 4096
#define GDN_MAX_KERNEL 64

struct fwd_gdn {
    long nk, nv, dk, dv, K;  /* key and value heads, their dims, the conv kernel */
    fwd_mat qkv, z, b, a;    /* LINATTN_SPLIT */
    fwd_mat qkvz, ba;        /* LINATTN_FUSED */
    fwd_mat out;
    float *conv;             /* [C][K], C = 2 nk dk + nv dv */
    float *a_log, *dt_bias;  /* [nv] */
    float *norm;             /* [dv], gain w; NULL: ones */
};

void fwd_gdn_free(struct fwd_gdn *g)
{
    if (!g)
        return;
    free(g->conv);
    free(g->a_log);
    free(g->dt_bias);
    free(g->norm);
    free(g);
}

int fwd_layer_is_linear(const fwd_model *m, long i)
{
    const cJSON *lt = ckpt_view_get(m->cfg, "layer_types");
    if (cJSON_IsArray(lt)) {
        const cJSON *e = i < cJSON_GetArraySize(lt) ? cJSON_GetArrayItem(lt, (int)i) : NULL;
        if (!cJSON_IsString(e))
            return -1;
        if (strcmp(e->valuestring, "linear_attention") == 0)
            return 1;
        return strcmp(e->valuestring, "full_attention") == 0 ? 0 : -1;
    }
    long n = ckpt_view_int(m->cfg, "full_attention_interval", 4);
    return n <= 0 ? -1 : (i + 1) % n != 0;
}

/* ----------------------------------------------------------------------------
 * Binding */

static fl_status gdn_dims(const fwd_model *m, struct fwd_gdn *g, fl_error *err)
{
    g->nk = ckpt_view_int(m->cfg, "linear_num_key_heads", 16);
    g->nv = ckpt_view_int(m->cfg, "linear_num_value_heads", 32);
    g->dk = ckpt_view_int(m->cfg, "linear_key_head_dim", 128);
    g->dv = ckpt_view_int(m->cfg, "linear_value_head_dim", 128);
    g->K = ckpt_view_int(m->cfg, "linear_conv_kernel_dim", 4);
    if (g->nk < 1 || g->nk > GDN_MAX_HEADS || g->nv < 1 || g->nv > GDN_MAX_HEADS || g->nv % g->nk != 0 ||
        g->dk < 1 || g->dk > GDN_MAX_DIM || g->dv < 1 || g->dv > GDN_MAX_DIM || g->K < 1 || g->K > GDN_MAX_KERNEL)
        return fl_fail(err, FL_EINPUT, "%s/config.json: linear attention with %ld key heads of %ld, %ld value heads "
                       "of %ld, conv kernel %ld is not a valid layout (value heads a multiple of key heads)",
                       m->ck->dir, g->nk, g->dk, g->nv, g->dv, g->K);
    return FL_OK;
}

static fl_status bind_projections(fwd_model *m, struct fwd_gdn *g, const char *pre, fl_error *err)
{
    char name[512];
    long H = m->H, kd = g->nk * g->dk, vd = g->nv * g->dv;
    fl_status s;
#define N(x) (snprintf(name, sizeof name, "%slinear_attn." x ".weight", pre), name)
    if (m->fam->linear_attn == LINATTN_FUSED) {
        if ((s = fwd_bind_mat(m, N("in_proj_qkvz"), 2 * kd + 2 * vd, H, 1, &g->qkvz, err)) != FL_OK ||
            (s = fwd_bind_mat(m, N("in_proj_ba"), 2 * g->nv, H, 1, &g->ba, err)) != FL_OK)
            return s;
    } else if ((s = fwd_bind_mat(m, N("in_proj_qkv"), 2 * kd + vd, H, 1, &g->qkv, err)) != FL_OK ||
               (s = fwd_bind_mat(m, N("in_proj_z"), vd, H, 1, &g->z, err)) != FL_OK ||
               (s = fwd_bind_mat(m, N("in_proj_b"), g->nv, H, 1, &g->b, err)) != FL_OK ||
               (s = fwd_bind_mat(m, N("in_proj_a"), g->nv, H, 1, &g->a, err)) != FL_OK) {
        return s;
    }
    return fwd_bind_mat(m, N("out_proj"), H, vd, 1, &g->out, err);
#undef N
}

fl_status fwd_bind_deltanet(fwd_model *m, fwd_layer *ly, const char *pre, fl_error *err)
{
    struct fwd_gdn *g = calloc(1, sizeof *g);
    if (!g)
        return fl_fail(err, FL_EIO, "out of memory");
    ly->gdn = g;
    char name[512];
    fl_status s = gdn_dims(m, g, err);
    long C = 2 * g->nk * g->dk + g->nv * g->dv;
    if (s == FL_OK)
        s = bind_projections(m, g, pre, err);
    if (s == FL_OK)
        s = fwd_bind_conv(m, (snprintf(name, sizeof name, "%slinear_attn.conv1d.weight", pre), name), C, g->K,
                          &g->conv, err);
    if (s == FL_OK)
        s = fwd_bind_vec(m, (snprintf(name, sizeof name, "%slinear_attn.A_log", pre), name), g->nv, 1, &g->a_log, err);
    if (s == FL_OK)
        s = fwd_bind_vec(m, (snprintf(name, sizeof name, "%slinear_attn.dt_bias", pre), name), g->nv, 1, &g->dt_bias,
                         err);
    if (s == FL_OK)
        s = fwd_bind_vec(m, (snprintf(name, sizeof name, "%slinear_attn.norm.weight", pre), name), g->dv, 0, &g->norm,
                         err);
    if (s == FL_OK)
        m->linear_layers++;
    return s;
}

/* ----------------------------------------------------------------------------
 * The pass */

typedef struct {
    long C, kd, vd;
    float *mixed;  /* [T][C]: q | k | v, then the conv output */
    float *z;      /* [T][vd] */
    float *beta;   /* [T][nv]: b, then sigmoid(b) */
    float *gl;     /* [T][nv]: a, then g (log of the decay) */
    float *o;      /* [T][vd] */
} gdn_bufs;

/* Qwen3NextGatedDeltaNet.fix_query_key_value_ordering: in_proj_qkvz rows
 * are per key head [q (dk) | k (dk) | v (r dv) | z (r dv)], in_proj_ba rows
 * per key head [b (r) | a (r)], r = nv / nk; flattened head by head. */
static void ungroup(const struct fwd_gdn *g, const float *qkvz, const float *ba, long T, gdn_bufs *w)
{
    long r = g->nv / g->nk, dk = g->dk, rv = r * g->dv, grp = 2 * dk + 2 * rv;
    for (long t = 0; t < T; t++) {
        float *mx = w->mixed + t * w->C, *z = w->z + t * w->vd;
        for (long h = 0; h < g->nk; h++) {
            const float *src = qkvz + t * g->nk * grp + h * grp;
            memcpy(mx + h * dk, src, (size_t)dk * sizeof *mx);
            memcpy(mx + w->kd + h * dk, src + dk, (size_t)dk * sizeof *mx);
            memcpy(mx + 2 * w->kd + h * rv, src + 2 * dk, (size_t)rv * sizeof *mx);
            memcpy(z + h * rv, src + 2 * dk + rv, (size_t)rv * sizeof *z);
            const float *bsrc = ba + t * 2 * g->nv + h * 2 * r;
            memcpy(w->beta + t * g->nv + h * r, bsrc, (size_t)r * sizeof *w->beta);
            memcpy(w->gl + t * g->nv + h * r, bsrc + r, (size_t)r * sizeof *w->gl);
        }
    }
}

static fl_status project(const fwd_model *m, const struct fwd_gdn *g, const float *h, long T, gdn_bufs *w,
                         fl_error *err)
{
    if (m->fam->linear_attn != LINATTN_FUSED) {
        fl_status s;
        if ((s = fwd_matmul(m, &g->qkv, NULL, h, T, w->mixed, err)) != FL_OK ||
            (s = fwd_matmul(m, &g->z, NULL, h, T, w->z, err)) != FL_OK ||
            (s = fwd_matmul(m, &g->b, NULL, h, T, w->beta, err)) != FL_OK)
            return s;
        return fwd_matmul(m, &g->a, NULL, h, T, w->gl, err);
    }
    size_t tz = (size_t)T;
    float *qkvz = malloc(tz * (size_t)(2 * w->kd + 2 * w->vd) * sizeof *qkvz);
    float *ba = malloc(tz * (size_t)(2 * g->nv) * sizeof *ba);
    fl_status s = qkvz && ba ? FL_OK : fl_fail(err, FL_EIO, "out of memory");
    if (s == FL_OK && (s = fwd_matmul(m, &g->qkvz, NULL, h, T, qkvz, err)) == FL_OK &&
        (s = fwd_matmul(m, &g->ba, NULL, h, T, ba, err)) == FL_OK)
        ungroup(g, qkvz, ba, T, w);
    free(qkvz);
    free(ba);
    return s;
}

static double silu(double x) { return x / (1.0 + exp(-x)); }

/* Causal depthwise conv over time (left zero padding K - 1), then silu:
 * out[t][c] = silu(sum_j w[c][j] x[t - (K - 1) + j][c]).  In place, from
 * the last step back, so each step still reads unconvolved inputs. */
static void conv_silu(const struct fwd_gdn *g, long T, gdn_bufs *w)
{
    long C = w->C, K = g->K;
    for (long t = T - 1; t >= 0; t--)
        for (long c = 0; c < C; c++)
            w->mixed[t * C + c] = (float)silu(fwd_conv_step(0, g->conv + c * K, K, w->mixed + c, C, t));
}

/* l2norm (x * rsqrt(sum x^2 + 1e-6)) of every q and k head, q then scaled
 * by dk^-1/2; beta = sigmoid(b); g = -exp(A_log) * softplus(a + dt_bias). */
static void gates_and_qk(const struct fwd_gdn *g, long T, gdn_bufs *w)
{
    for (long t = 0; t < T; t++) {
        for (long h = 0; h < 2 * g->nk; h++) {
            float *v = w->mixed + t * w->C + h * g->dk;
            double ss = 0;
            for (long i = 0; i < g->dk; i++)
                ss += (double)v[i] * v[i];
            double inv = 1.0 / sqrt(ss + 1e-6) * (h < g->nk ? 1.0 / sqrt((double)g->dk) : 1.0);
            for (long i = 0; i < g->dk; i++)
                v[i] = (float)(v[i] * inv);
        }
        for (long j = 0; j < g->nv; j++) {
            double b = w->beta[t * g->nv + j], a = (double)w->gl[t * g->nv + j] + g->dt_bias[j];
            double softplus = a > 20 ? a : log1p(exp(a));  /* torch softplus, threshold 20 */
            w->beta[t * g->nv + j] = (float)(1.0 / (1.0 + exp(-b)));
            w->gl[t * g->nv + j] = (float)(-exp((double)g->a_log[j]) * softplus);
        }
    }
}

/* The gated delta rule of value head j over T steps into w->o. */
static void recur_head(const struct fwd_gdn *g, long T, long j, double *S, gdn_bufs *w)
{
    long dk = g->dk, dv = g->dv, kh = j / (g->nv / g->nk);
    memset(S, 0, (size_t)(dk * dv) * sizeof *S);
    double *mem = S + dk * dv;
    for (long t = 0; t < T; t++) {
        const float *row = w->mixed + t * w->C;
        const float *q = row + kh * dk, *k = row + w->kd + kh * dk, *v = row + 2 * w->kd + j * dv;
        double decay = exp((double)w->gl[t * g->nv + j]), beta = w->beta[t * g->nv + j];
        for (long c = 0; c < dv; c++)
            mem[c] = 0;
        for (long i = 0; i < dk; i++)
            for (long c = 0; c < dv; c++) {
                S[i * dv + c] *= decay;
                mem[c] += S[i * dv + c] * k[i];
            }
        for (long c = 0; c < dv; c++)
            mem[c] = beta * (v[c] - mem[c]);   /* the delta */
        float *o = w->o + t * w->vd + j * dv;
        for (long c = 0; c < dv; c++) {
            double acc = 0;
            for (long i = 0; i < dk; i++) {
                S[i * dv + c] += (double)k[i] * mem[c];
                acc += S[i * dv + c] * q[i];
            }
            o[c] = (float)acc;
        }
    }
}

/* Qwen3NextRMSNormGated per value head: w * x_hat, then * silu(z). */
static void gated_norm(const fwd_model *m, const struct fwd_gdn *g, long T, gdn_bufs *w)
{
    for (long t = 0; t < T; t++)
        for (long j = 0; j < g->nv; j++) {
            float *o = w->o + t * w->vd + j * g->dv;
            const float *z = w->z + t * w->vd + j * g->dv;
            double ss = 0;
            for (long c = 0; c < g->dv; c++)
                ss += (double)o[c] * o[c];
            double inv = 1.0 / sqrt(ss / (double)g->dv + m->eps);
            for (long c = 0; c < g->dv; c++) {
                float xh = (float)(o[c] * inv);
                o[c] = (float)((g->norm ? xh * g->norm[c] : xh) * silu(z[c]));
            }
        }
}

fl_status fwd_deltanet(const fwd_model *m, const fwd_layer *ly, const float *h, long T, float *out, fl_error *err)
{
    const struct fwd_gdn *g = ly->gdn;
    gdn_bufs w = {.kd = g->nk * g->dk, .vd = g->nv * g->dv};
    w.C = 2 * w.kd + w.vd;
    size_t tz = (size_t)T;
    w.mixed = malloc(tz * (size_t)w.C * sizeof *w.mixed);
    w.z = malloc(tz * (size_t)w.vd * sizeof *w.z);
    w.beta = malloc(tz * (size_t)g->nv * sizeof *w.beta);
    w.gl = malloc(tz * (size_t)g->nv * sizeof *w.gl);
    w.o = malloc(tz * (size_t)w.vd * sizeof *w.o);
    double *S = malloc((size_t)(g->dk + 1) * (size_t)g->dv * sizeof *S);
    fl_status s = w.mixed && w.z && w.beta && w.gl && w.o && S ? FL_OK : fl_fail(err, FL_EIO, "out of memory");
    if (s == FL_OK)
        s = project(m, g, h, T, &w, err);
    if (s == FL_OK) {
        conv_silu(g, T, &w);
        gates_and_qk(g, T, &w);
        for (long j = 0; j < g->nv; j++)
            recur_head(g, T, j, S, &w);
        gated_norm(m, g, T, &w);
        s = fwd_matmul(m, &g->out, NULL, w.o, T, out, err);
    }
    free(w.mixed);
    free(w.z);
    free(w.beta);
    free(w.gl);
    free(w.o);
    free(S);
    return s;
}
