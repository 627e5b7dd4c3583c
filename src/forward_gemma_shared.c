/* forward_gemma_shared.c — what the Gemma 3n and Gemma 4 layer stacks
 * (forward_gemma3n.c, forward_gemma4.c) compute alike: the attention of a
 * layer, KV-shared or not, and the per-layer inputs.
 *
 * Gemma3nTextAttention / Gemma4TextAttention.forward: q -> q_norm -> RoPE;
 * k -> k_norm -> RoPE, v (Gemma 4 attention_k_eq_v: the raw k) -> the
 * weightless v_norm; a KV-shared layer takes the kept k, v of an earlier
 * layer instead; causal softmax(q.k) at scale 1 (the layer's window);
 * o_proj (docs/architectures.md §gemma3n, §gemma4).
 *
 * Both text models (Gemma3nTextModel / Gemma4TextModel
 * get_per_layer_inputs + project_per_layer_inputs) give every layer l a
 * P-wide input of its own: (norm(per_layer_model_projection(x) * H^-0.5)
 * + embed_tokens_per_layer[token] * sqrt(P)) * 2^-0.5, as [T][L][P]; the
 * decoder layer adds post_per_layer_input_norm(per_layer_projection(
 * act(per_layer_input_gate(h)) * input_l)) to its output
 * (docs/architectures.md §gemma3n, §gemma4). */
#include "forward_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

fl_status fwd_gemma_attention(const fwd_model *m, const fwd_layer *ly, const fwd_gemma_attn *a, const float *h,
                              long T, fwd_bufs *b, float *out, fl_error *err)
{
    long hd = a->hd, qd = m->nh * hd, kd = a->nkv * hd;
    fl_status s = fwd_matmul(m, &ly->q, ly->bq, h, T, a->q, err);
    if (s != FL_OK)
        return s;
    fwd_norm_rows(m, &ly->q_norm, a->q, T * m->nh, hd);
    for (long t = 0; t < T; t++)
        for (long hh = 0; hh < m->nh; hh++)
            fwd_rope_head(m, ly, a->q + t * qd + hh * hd, t);
    const float *k = a->from_k ? a->from_k : a->k, *v = a->from_k ? a->from_v : a->v;
    if (!a->from_k) {
        if ((s = fwd_matmul(m, &ly->k, ly->bk, h, T, a->k, err)) != FL_OK)
            return s;
        if (a->k_eq_v)
            memcpy(a->v, a->k, (size_t)(T * kd) * sizeof *a->v);
        else if ((s = fwd_matmul(m, &ly->v, ly->bv, h, T, a->v, err)) != FL_OK)
            return s;
        fwd_norm_rows(m, &ly->k_norm, a->k, T * a->nkv, hd);
        fwd_norm rms = {NULL, hd};   /* v_norm: RMSNorm with_scale=False */
        fwd_norm_rows(m, &rms, a->v, T * a->nkv, hd);
        for (long t = 0; t < T; t++)
            for (long hh = 0; hh < a->nkv; hh++)
                fwd_rope_head(m, ly, a->k + t * kd + hh * hd, t);
        if (a->keep_k) {
            memcpy(a->keep_k, a->k, (size_t)(T * kd) * sizeof *a->k);
            memcpy(a->keep_v, a->v, (size_t)(T * kd) * sizeof *a->v);
        }
    }
    fwd_sdpa(m, ly, a->q, qd, k, kd, v, kd, m->nh, a->nkv, hd, hd, T, b->att, a->ctx);
    return fwd_matmul(m, &ly->o, ly->bo, a->ctx, T, out, err);
}

#define NAME(fmt) (snprintf(name, sizeof name, "%s" fmt, pre), name)

fl_status fwd_ple_bind(fwd_model *m, fwd_ple *p, const char *pre, fl_error *err)
{
    char name[512];
    long LP = m->L * p->P;
    fl_status s;
    if ((s = fwd_bind_mat(m, NAME("embed_tokens_per_layer.weight"), -1, LP, 1, &p->embed, err)) != FL_OK ||
        (s = fwd_bind_mat(m, NAME("per_layer_model_projection.weight"), LP, m->H, 1, &p->model_proj, err)) !=
            FL_OK)
        return s;
    if (p->P > m->max_inter)
        m->max_inter = p->P;   /* the per-layer gate runs in the MLP buffer */
    p->embed_scale = fwd_round_to_dtype(p->embed.dtype, sqrt((double)p->P));
    p->proj_scale = 1.0 / sqrt((double)m->H);
    p->input_scale = 1.0 / sqrt(2.0);
    return fwd_bind_norm(m, NAME("per_layer_projection_norm.weight"), p->P, &p->proj_norm, err);
}

fl_status fwd_ple_bind_layer(fwd_model *m, const fwd_ple *p, fwd_ple_layer *ly, const char *pre, fl_error *err)
{
    char name[512];
    fl_status s;
    if ((s = fwd_bind_mat(m, NAME("per_layer_input_gate.weight"), p->P, m->H, 1, &ly->gate, err)) != FL_OK ||
        (s = fwd_bind_mat(m, NAME("per_layer_projection.weight"), m->H, p->P, 1, &ly->proj, err)) != FL_OK)
        return s;
    return fwd_bind_norm(m, NAME("post_per_layer_input_norm.weight"), m->H, &ly->post, err);
}
#undef NAME

fl_status fwd_ple_inputs(const fwd_model *m, const fwd_ple *p, const int32_t *tokens, const float *x, long T,
                         float *out, fl_error *err)
{
    long LP = m->L * p->P;
    const fwd_mat *pe = &p->embed;
    size_t rowb = (size_t)LP * pe->esize;
    void *raw = malloc(rowb);
    float *tok = malloc((size_t)LP * sizeof *tok);
    fl_status s = raw && tok ? fwd_matmul(m, &p->model_proj, NULL, x, T, out, err)
                             : fl_fail(err, FL_EIO, "out of memory");
    for (long t = 0; s == FL_OK && t < T; t++) {
        if (tokens[t] >= pe->rows) {
            s = fl_fail(err, FL_EINPUT, "token id %d is outside embed_tokens_per_layer (%ld rows)", (int)tokens[t],
                        pe->rows);
            break;
        }
        if ((s = ckpt_read(m->ck, pe->t, (uint64_t)tokens[t] * rowb, raw, rowb, err)) != FL_OK)
            break;
        fwd_to_float(pe->dtype, raw, tok, (size_t)LP);
        float *row = out + t * LP;
        for (long i = 0; i < LP; i++)
            row[i] = (float)(row[i] * p->proj_scale);
        fwd_norm_rows(m, &p->proj_norm, row, m->L, p->P);
        for (long i = 0; i < LP; i++)
            row[i] = (float)((row[i] + (float)(tok[i] * p->embed_scale)) * p->input_scale);
    }
    if (s == FL_OK)
        fwd_meter_add(m, pe);   /* looked up, not streamed */
    free(raw);
    free(tok);
    return s;
}

fl_status fwd_ple_layer_out(const fwd_model *m, const fwd_ple *p, const fwd_ple_layer *ly, long l, const float *in,
                            const float *x, long T, fwd_bufs *b, float *out, fl_error *err)
{
    long P = p->P;
    fl_status s = fwd_matmul(m, &ly->gate, NULL, x, T, b->g, err);
    if (s != FL_OK)
        return s;
    for (long t = 0; t < T; t++)
        for (long i = 0; i < P; i++)
            b->g[t * P + i] = fwd_act(m, b->g[t * P + i]) * in[(t * m->L + l) * P + i];
    if ((s = fwd_matmul(m, &ly->proj, NULL, b->g, T, out, err)) != FL_OK)
        return s;
    fwd_norm_rows(m, &ly->post, out, T, m->H);
    return FL_OK;
}
