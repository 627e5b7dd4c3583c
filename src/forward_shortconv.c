/* forward_shortconv.c — LFM2's gated short convolution for the reference
 * forward pass (forward_internal.h; docs/architectures.md §lfm2, read in
 * transformers src/transformers/models/lfm2/modeling_lfm2.py,
 * Lfm2ShortConv.slow_forward, and configuration_lfm2.py).
 *
 * For a prompt without cache, per channel c and position t:
 *   [B | C | x] = in_proj(h)             three chunks of H channels
 *   u[t] = B[t] * x[t]
 *   y[t] = sum_j w[c][j] u[t - (K - 1) + j] (+ conv bias)   causal, depthwise
 *   out  = out_proj(C[t] * y[t])
 * with K = conv_L_cache: nn.Conv1d(groups = H, padding = K - 1) whose output
 * is cut to the first T positions. */
#include "forward_internal.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CONV_MAX_KERNEL 4096

struct fwd_conv {
    fwd_mat in_proj, out_proj;  /* [3H, H], [H, H] */
    float *b_in, *b_out;        /* conv_bias: [3H], [H]; else NULL */
    float *w;                   /* conv.conv.weight [H, 1, K] */
    float *b_conv;              /* [H] or NULL */
    long K;
};

/* Lfm2DecoderLayer.is_attention_layer: layer_types[i] == "full_attention",
 * every other type is a convolution; Lfm2Config derives layer_types from
 * full_attn_idxs, and without that list every layer is attention. */
int fwd_layer_is_conv(const fwd_model *m, long i)
{
    const cJSON *lt = ckpt_view_get(m->cfg, "layer_types");
    if (cJSON_IsArray(lt)) {
        const cJSON *e = cJSON_GetArrayItem(lt, (int)i);
        return !(cJSON_IsString(e) && strcmp(e->valuestring, "full_attention") == 0);
    }
    const cJSON *idx = ckpt_view_get(m->cfg, "full_attn_idxs");
    if (!cJSON_IsArray(idx))
        return 0;
    for (const cJSON *e = idx->child; e; e = e->next)
        if (cJSON_IsNumber(e) && e->valuedouble == (double)i)
            return 0;
    return 1;
}

void fwd_conv_free(struct fwd_conv *c)
{
    if (!c)
        return;
    free(c->b_in);
    free(c->b_out);
    free(c->w);
    free(c->b_conv);
    free(c);
}

fl_status fwd_bind_shortconv(fwd_model *m, fwd_layer *ly, const char *pre, fl_error *err)
{
    char name[512];
    long H = m->H, K = ckpt_view_int(m->cfg, "conv_L_cache", 3);
    if (K < 1 || K > CONV_MAX_KERNEL)
        return fl_fail(err, FL_EINPUT, "%s/config.json: conv_L_cache %ld is not a valid kernel size (1..%d)",
                       m->ck->dir, K, CONV_MAX_KERNEL);
    struct fwd_conv *c = calloc(1, sizeof *c);
    if (!c)
        return fl_fail(err, FL_EIO, "out of memory");
    ly->conv = c;
    c->K = K;
#define CN(fmt) (snprintf(name, sizeof name, "%sconv." fmt, pre), name)
    fl_status s;
    if ((s = fwd_bind_mat(m, CN("in_proj.weight"), 3 * H, H, 1, &c->in_proj, err)) != FL_OK ||
        (s = fwd_bind_mat(m, CN("out_proj.weight"), H, H, 1, &c->out_proj, err)) != FL_OK ||
        (s = fwd_bind_conv(m, CN("conv.weight"), H, K, &c->w, err)) != FL_OK ||
        (s = fwd_bind_vec(m, CN("in_proj.bias"), 3 * H, 0, &c->b_in, err)) != FL_OK ||
        (s = fwd_bind_vec(m, CN("out_proj.bias"), H, 0, &c->b_out, err)) != FL_OK)
        return s;
    return fwd_bind_vec(m, CN("conv.bias"), H, 0, &c->b_conv, err);
#undef CN
}

fl_status fwd_shortconv(const fwd_model *m, const fwd_layer *ly, const float *h, long T, float *out, fl_error *err)
{
    const struct fwd_conv *c = ly->conv;
    long H = m->H, K = c->K;
    size_t tz = (size_t)T;
    float *bcx = malloc(tz * 3 * (size_t)H * sizeof *bcx), *y = malloc(tz * (size_t)H * sizeof *y);
    fl_status s = bcx && y ? fwd_matmul(m, &c->in_proj, c->b_in, h, T, bcx, err)
                           : fl_fail(err, FL_EIO, "out of memory for %ld tokens", T);
    if (s == FL_OK) {
        /* u = B * x, in place of B. */
        for (long t = 0; t < T; t++)
            for (long ch = 0; ch < H; ch++)
                bcx[t * 3 * H + ch] *= bcx[t * 3 * H + 2 * H + ch];
        for (long t = 0; t < T; t++)
            for (long ch = 0; ch < H; ch++) {
                double acc = fwd_conv_step(c->b_conv ? c->b_conv[ch] : 0.0, c->w + ch * K, K, bcx + ch, 3 * H, t);
                y[t * H + ch] = (float)(bcx[t * 3 * H + H + ch] * acc);
            }
        s = fwd_matmul(m, &c->out_proj, c->b_out, y, T, out, err);
    }
    free(bcx);
    free(y);
    return s;
}
