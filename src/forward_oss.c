/* forward_oss.c — gpt-oss's blocks for the reference forward pass
 * (forward_internal.h hooks; docs/architectures.md §gpt_oss, read in
 * transformers src/transformers/models/gpt_oss/modeling_gpt_oss.py).
 *
 * GptOssTopKRouter: logits = W x + b; the top-k logits, softmaxed among
 * themselves, weight the chosen experts.  GptOssExperts: gate_up = x W_e +
 * b_e with gate and up interleaved (gate_up[..., ::2], [..., 1::2]); gate
 * clamped above at `limit`, up to [-limit, limit]; (up + 1) * gate *
 * sigmoid(1.702 * gate); then x W_down_e + b_down_e.  The experts are
 * stored [E, H, 2I] / [E, I, H] (used as x @ W) or as MXFP4 blocks, which
 * forward_mxfp4.c decodes.  GptOssAttention: one sink logit per head joins
 * the softmax (sdpa in forward_blocks.c reads fwd_layer.sinks). */
#include "forward_internal.h"

#include "flashify/dtype.h"
#include "flashify/safetensors.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* GptOssExperts: alpha is a constant of the module, not of the config. */
#define OSS_ALPHA 1.702

void fwd_oss_route(const fwd_model *m, const fwd_layer *ly, const float *logits, long E, long K, long *sel,
                   float *w, int given)
{
    (void)m, (void)ly;
    if (!given)
        fwd_choose(logits, E, K, sel);
    double mx = -INFINITY, sum = 0;
    for (long k = 0; k < K; k++)
        mx = fmax(mx, logits[sel[k]]);
    for (long k = 0; k < K; k++)
        sum += exp(logits[sel[k]] - mx);
    for (long k = 0; k < K; k++)
        w[k] = (float)(exp(logits[sel[k]] - mx) / sum);
}

fl_status fwd_oss_expert(const fwd_model *m, const fwd_layer *ly, long e, const float *x, long n, fwd_bufs *b,
                         float *out, fl_error *err)
{
    const fwd_mat *gu = &ly->e_gate_up[e];
    long I2 = gu->xw ? gu->cols : gu->rows, I = I2 / 2;
    const float *bgu = ly->e_gu_bias ? ly->e_gu_bias + e * I2 : NULL;
    const float *bdn = ly->e_dn_bias ? ly->e_dn_bias + e * m->H : NULL;
    fl_status s = fwd_matmul(m, gu, bgu, x, n, b->gu, err);
    if (s != FL_OK)
        return s;
    double lim = m->swiglu_limit;
    for (long t = 0; t < n; t++)
        for (long i = 0; i < I; i++) {
            double g = fmin(b->gu[t * I2 + 2 * i], lim);
            double u = fmax(fmin(b->gu[t * I2 + 2 * i + 1], lim), -lim);
            double glu = g / (1.0 + exp(-OSS_ALPHA * g));
            b->g[t * I + i] = (float)((u + 1.0) * glu);
        }
    return fwd_matmul(m, &ly->e_down[e], bdn, b->g, n, out, err);
}

/* One expert's matrix in a 3-D tensor: rows x cols at slab e (x @ W when xw). */
static fwd_mat oss_slab(const ckpt_tensor *t, long e, long rows, long cols, int xw)
{
    size_t es = st_dtype_bits(t->t->dtype) / 8;
    uint64_t off = (uint64_t)e * (uint64_t)rows * (uint64_t)cols * es;
    return (fwd_mat){.t = t, .rows = rows, .cols = cols, .dtype = t->t->dtype, .esize = es, .off = off, .xw = xw};
}

/* An MXFP4 pair "<base>_blocks" [E, out, in/32, 16] / "<base>_scales"
 * [E, out, in/32] (U8): per expert, an nn.Linear-shaped [out, in] matrix. */
static fl_status bind_mx(fwd_model *m, const char *base, long E, long out_dim, long in_dim, fwd_mat *mats,
                         fl_error *err)
{
    char bn[512], sn[512];
    snprintf(bn, sizeof bn, "%s_blocks", base);
    snprintf(sn, sizeof sn, "%s_scales", base);
    const ckpt_tensor *bt = ckpt_find(m->ck, bn), *st = ckpt_find(m->ck, sn);
    if (!bt || !st)
        return fl_fail(err, FL_EINPUT, "%s: tensor '%s' is missing", m->ck->dir, bt ? sn : bn);
    const uint64_t *b = bt->t->shape, *c = st->t->shape;
    uint64_t nb = (uint64_t)in_dim / 32;
    if (in_dim % 32 || bt->t->dtype != ST_U8 || st->t->dtype != ST_U8 || bt->t->ndim != 4 || st->t->ndim != 3 ||
        b[0] != (uint64_t)E || b[1] != (uint64_t)out_dim || b[2] != nb || b[3] != 16 || c[0] != (uint64_t)E ||
        c[1] != (uint64_t)out_dim || c[2] != nb)
        return fl_fail(err, FL_EINPUT, "%s: MXFP4 '%s' / '%s' should be U8 [%ld, %ld, %ld, 16] / [%ld, %ld, %ld]",
                       m->ck->dir, bn, sn, E, out_dim, in_dim / 32, E, out_dim, in_dim / 32);
    for (long e = 0; e < E; e++) {
        uint64_t rows_before = (uint64_t)e * (uint64_t)out_dim;
        mats[e] = (fwd_mat){.t = bt, .rows = out_dim, .cols = in_dim, .dtype = ST_U8, .esize = 1,
                            .off = rows_before * nb * 16, .mx = st, .mx_off = rows_before * nb};
    }
    m->mp->total += st_nbytes(bt->t) + st_nbytes(st->t);
    return FL_OK;
}

/* BF16/F32 experts [E, H, 2I] and [E, I, H], used as x @ W. */
static fl_status bind_dense_experts(fwd_model *m, fwd_layer *ly, const char *gu_name, const char *dn_name, long E,
                                    long *I, fl_error *err)
{
    const ckpt_tensor *gu = ckpt_find(m->ck, gu_name), *dn = ckpt_find(m->ck, dn_name);
    if (!gu || !dn)
        return fl_fail(err, FL_EINPUT, "%s: tensor '%s' is missing", m->ck->dir, gu ? dn_name : gu_name);
    const uint64_t *g = gu->t->shape, *d = dn->t->shape;
    if (gu->t->ndim != 3 || dn->t->ndim != 3 || !st_dtype_is_foldable(gu->t->dtype) ||
        !st_dtype_is_foldable(dn->t->dtype) || g[0] != (uint64_t)E || g[1] != (uint64_t)m->H || g[2] % 2 ||
        g[2] == 0 || g[2] / 2 > 65536 || d[0] != (uint64_t)E || d[1] != g[2] / 2 || d[2] != (uint64_t)m->H)
        return fl_fail(err, FL_EINPUT, "%s: experts '%s' / '%s' should be float [%ld, %ld, 2I] / [%ld, I, %ld]",
                       m->ck->dir, gu_name, dn_name, E, m->H, E, m->H);
    *I = (long)g[2] / 2;
    for (long e = 0; e < E; e++) {
        ly->e_gate_up[e] = oss_slab(gu, e, m->H, 2 * *I, 1);
        ly->e_down[e] = oss_slab(dn, e, *I, m->H, 1);
    }
    m->mp->total += st_nbytes(gu->t) + st_nbytes(dn->t);
    return FL_OK;
}

/* GptOssMLP's router bias and experts, plain or MXFP4, with their biases. */
fl_status fwd_oss_bind_experts(fwd_model *m, fwd_layer *ly, const char *pre, const fwd_moe_names *nm, long E,
                               fl_error *err)
{
    char name[640], gu[512], dn[512];
    snprintf(name, sizeof name, "%s%s.bias", pre, nm->router);
    fl_status s = fwd_bind_vec(m, name, E, 0, &ly->b_router, err);
    snprintf(gu, sizeof gu, "%s%s.gate_up_proj", pre, nm->experts);
    snprintf(dn, sizeof dn, "%s%s.down_proj", pre, nm->experts);
    long I = ckpt_view_int(m->cfg, "intermediate_size", 0);
    if (s != FL_OK)
        return s;
    if (ckpt_find(m->ck, gu)) {
        s = bind_dense_experts(m, ly, gu, dn, E, &I, err);
        ly->fused = 2;
    } else {
        if (I <= 0 || I > 65536)
            return fl_fail(err, FL_EINPUT, "%s/config.json: intermediate_size %ld is not valid for MXFP4 experts",
                           m->ck->dir, I);
        if ((s = bind_mx(m, gu, E, 2 * I, m->H, ly->e_gate_up, err)) == FL_OK)
            s = bind_mx(m, dn, E, m->H, I, ly->e_down, err);
        ly->fused = 3;
    }
    snprintf(name, sizeof name, "%s_bias", gu);
    if (s == FL_OK)
        s = fwd_bind_vec(m, name, E * 2 * I, 0, &ly->e_gu_bias, err);
    snprintf(name, sizeof name, "%s_bias", dn);
    if (s == FL_OK)
        s = fwd_bind_vec(m, name, E * m->H, 0, &ly->e_dn_bias, err);
    if (I > m->max_inter)
        m->max_inter = I;
    m->swiglu_limit = ckpt_view_num(m->cfg, "swiglu_limit", 7.0, 7.0);
    return s;
}

/* GptOssAttention.sinks: one logit per head. */
fl_status fwd_oss_layer(fwd_model *m, fwd_layer *ly, long i, const char *pre, fl_error *err)
{
    (void)i;
    char name[512];
    snprintf(name, sizeof name, "%sself_attn.sinks", pre);
    return fwd_bind_vec(m, name, m->nh, 1, &ly->sinks, err);
}
