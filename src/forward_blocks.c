/* forward_blocks.c — the neural-net blocks (forward_internal.h).
 *
 * Norms, RoPE, causal attention (GQA, DeepSeek MLA), the gated MLP and MoE
 * routing, each as its modeling class computes it; statistics, softmax
 * and RoPE angles in double, activations float32. */
#include "forward_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>


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
        if (m->fam->norm == NORM_LN_NOBIAS) {
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

void fwd_norm_eps(const fwd_model *m, const fwd_norm *nm, float *x, long T, long n, double eps)
{
    norm_apply_eps(m, x, T, n, nm->g, 0, eps);
}

void fwd_norm_rows(const fwd_model *m, const fwd_norm *nm, float *x, long T, long n)
{
    norm_apply(m, x, T, n, nm->g, 0);
}

/* The activation act; ap: a layer's learned xIELU parameters (act_p). */
static float act_as_p(int act, const float *ap, float x)
{
    switch (act) {
    case ACT_XIELU: { /* XIELUActivation._xielu_python */
        double xd = x;
        if (x > 0)
            return (float)(ap[0] * xd * xd + ap[2] * xd);
        return (float)((expm1(fmin(xd, ap[3])) - xd) * ap[1] + ap[2] * xd);
    }
    case ACT_GELU_TANH: {
        double c = sqrt(2.0 / M_PI);
        return (float)(0.5 * x * (1.0 + tanh(c * (x + 0.044715 * (double)x * x * x))));
    }
    case ACT_GELU_ERF:
        return (float)(0.5 * x * (1.0 + erf(x / sqrt(2.0))));
    case ACT_RELU2:   /* ReLUSquaredActivation (Nemotron-H mlp_hidden_act "relu2") */
        return x > 0 ? x * x : 0.0f;
    default:
        return (float)(x / (1.0 + exp(-(double)x)));
    }
}

static float act_as(int act, float x)
{
    static const float none[4] = {0, 0, 0, 0};
    return act_as_p(act, none, x);
}
static float act_fn_p(const fwd_model *m, const float *ap, float x) { return act_as_p(m->act, ap, x); }
static float act_fn(const fwd_model *m, float x) { return act_as(m->act, x); }

/* Rotates the first 2 * half values of v in place for position pos:
 * rotate_half pairs (i, i + half) (apply_rotary_pos_emb), or (2i, 2i+1)
 * when interleaved (Cohere, DeepSeek). */
void fwd_rope_pairs(const fwd_layer *ly, float *v, long pos, long half, int interleaved)
{
    const float *inv_freq = ly->inv_freq;
    for (long i = 0; i < half; i++) {
        float ang = (float)pos * inv_freq[i]; /* HF: positions x inv_freq in fp32 */
        float c = (float)cos(ang) * ly->rope_af, s = (float)sin(ang) * ly->rope_af;
        long a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + half;
        float x1 = v[a], x2 = v[b];
        v[a] = x1 * c - x2 * s;
        v[b] = x2 * c + x1 * s;
    }
}

/* One head vector, the model's pairing, the layer's rotary dims. */
static void rope_head(const fwd_model *m, const fwd_layer *ly, float *v, long pos)
{
    fwd_rope_pairs(ly, v, pos, (ly->rot ? ly->rot : m->rot) / 2, m->interleaved);
}


/* Causal softmax attention over T positions: query head h reads kv head
 * h / (nh / nkv) (GQA).  Row t of head h of q is at q + t*ldq + h*dqk (k
 * and v alike, with dqk and dv); ctx gets [T][nh * dv].  Scores and
 * softmax in double; Gemma2's soft cap; sliding window or chunked local
 * attention (Llama 4: only keys in the query's chunk) when the layer has
 * one; gpt-oss's sink logit joins each head's softmax and is dropped; a
 * DSA layer reads only the keys its indexer selected (ly->allow).
 * m->bidir: every position reads all T (PaliGemma's prompt is one
 * bidirectional block, OR-ed over the causal and sliding masks). */
static void sdpa(const fwd_model *m, const fwd_layer *ly, const float *q, long ldq,
                 const float *k, long ldk, const float *v, long ldv, long nh, long nkv,
                 long dqk, long dv, long T, float *att, float *ctx)
{
    long group = nh / nkv;
    for (long hh = 0; hh < nh; hh++) {
        long kh = hh / group;
        for (long i = 0; i < T; i++) {
            const float *qi = q + i * ldq + hh * dqk;
            long j0 = ly->window > 0 && i - ly->window + 1 > 0 ? i - ly->window + 1 : 0, j1 = i;
            if (ly->chunk > 0 && i / ly->chunk * ly->chunk > j0)
                j0 = i / ly->chunk * ly->chunk;
            if (m->bidir)
                j0 = 0, j1 = T - 1;
            double mx = ly->sinks ? (double)ly->sinks[hh] : -INFINITY;
            for (long j = j0; j <= j1; j++) {
                const float *kj = k + j * ldk + kh * dqk;
                double d = 0;
                for (long c = 0; c < dqk; c++)
                    d += (double)qi[c] * kj[c];
                d *= m->attn_scale;
                if (m->attn_softcap > 0)
                    d = tanh(d / m->attn_softcap) * m->attn_softcap;
                if (ly->allow && !ly->allow[i * T + j])
                    d = -INFINITY; /* DSA: a key the indexer did not select */
                att[j] = (float)d;
                if (d > mx)
                    mx = d;
            }
            double sum = ly->sinks ? exp((double)ly->sinks[hh] - mx) : 0;
            for (long j = j0; j <= j1; j++) {
                double e = exp((double)att[j] - mx);
                att[j] = (float)e;
                sum += e;
            }
            float *ci = ctx + i * nh * dv + hh * dv;
            for (long c = 0; c < dv; c++) {
                double acc = 0;
                for (long j = j0; j <= j1; j++)
                    acc += (double)att[j] * v[j * ldv + kh * dv + c];
                ci[c] = (float)(acc / sum);
            }
        }
    }
}

/* A fused qkv projection's rows: Phi3's [q | k | v] (Phi3Attention.forward),
 * or InternLM2's per kv head [G queries | key | value] (InternLM2Attention:
 * rearrange "b q (h gs d) -> b q h gs d", gs = G + 2). */
static void split_qkv(const fwd_model *m, fwd_bufs *b, long T)
{
    long hd = m->hd, qd = m->nh * hd, kd = m->nkv * hd, w = qd + 2 * kd, G = m->nh / m->nkv;
    for (long t = 0; t < T; t++) {
        const float *row = b->qkv + t * w;
        if (!m->fam->qkv_grouped) {
            memcpy(b->q + t * qd, row, (size_t)qd * sizeof(float));
            memcpy(b->k + t * kd, row + qd, (size_t)kd * sizeof(float));
            memcpy(b->v + t * kd, row + qd + kd, (size_t)kd * sizeof(float));
            continue;
        }
        for (long g = 0; g < m->nkv; g++) {
            const float *grp = row + g * (G + 2) * hd;
            memcpy(b->q + t * qd + g * G * hd, grp, (size_t)(G * hd) * sizeof(float));
            memcpy(b->k + t * kd + g * hd, grp + G * hd, (size_t)hd * sizeof(float));
            memcpy(b->v + t * kd + g * hd, grp + (G + 1) * hd, (size_t)hd * sizeof(float));
        }
    }
}

static void clip_qkv(const fwd_model *m, fwd_bufs *b, long T)
{
    float c = (float)m->clip_qkv;
    size_t nq = (size_t)T * (size_t)(m->nh * m->hd), nk = (size_t)T * (size_t)(m->nkv * m->hd);
    for (size_t i = 0; i < nq; i++)
        b->q[i] = b->q[i] > c ? c : b->q[i] < -c ? -c : b->q[i];
    for (size_t i = 0; i < nk; i++) {
        b->k[i] = b->k[i] > c ? c : b->k[i] < -c ? -c : b->k[i];
        b->v[i] = b->v[i] > c ? c : b->v[i] < -c ? -c : b->v[i];
    }
}

fl_status fwd_attention(const fwd_model *m, const fwd_layer *ly, const float *h, long T, fwd_bufs *b, float *out,
                        fl_error *err)
{
    if (m->fam->mla)
        return fwd_attention_mla(m, ly, h, T, b, out, err);
    if (ly->gdn)
        return fwd_deltanet(m, ly, h, T, out, err);
    if (ly->conv)
        return fwd_shortconv(m, ly, h, T, out, err);
    long hd = m->hd, qd = m->nh * hd, kd = m->nkv * hd;
    fl_status s;
    float *gate = NULL;
    if (m->fam->attn_gate) {
        if ((s = fwd_gated_query(m, ly, h, T, b->q, &gate, err)) != FL_OK ||
            (s = fwd_matmul(m, &ly->k, ly->bk, h, T, b->k, err)) != FL_OK ||
            (s = fwd_matmul(m, &ly->v, ly->bv, h, T, b->v, err)) != FL_OK) {
            free(gate);
            return s;
        }
    } else if (ly->qkv.t) {
        if ((s = fwd_matmul(m, &ly->qkv, ly->bqkv, h, T, b->qkv, err)) != FL_OK)
            return s;
        split_qkv(m, b, T);
    } else if ((s = fwd_matmul(m, &ly->q, ly->bq, h, T, b->q, err)) != FL_OK ||
               (s = fwd_matmul(m, &ly->k, ly->bk, h, T, b->k, err)) != FL_OK ||
               (s = fwd_matmul(m, &ly->v, ly->bv, h, T, b->v, err)) != FL_OK) {
        return s;
    }
    /* q/k norms, before RoPE. */
    switch (m->qk_norm_on ? m->fam->qk : QK_NONE) {
    case QK_HEAD:
        norm_apply(m, b->q, T * m->nh, hd, ly->q_norm.g, 0);
        norm_apply(m, b->k, T * m->nkv, hd, ly->k_norm.g, 0);
        break;
    case QK_FULL:
        norm_apply(m, b->q, T, qd, ly->q_norm.g, 0);
        norm_apply(m, b->k, T, kd, ly->k_norm.g, 0);
        break;
    case QK_HEAD_2D:
        for (long t = 0; t < T; t++) {
            norm_apply(m, b->q + t * qd, m->nh, hd, ly->q_norm.g, hd);
            norm_apply(m, b->k + t * kd, m->nkv, hd, ly->k_norm.g, hd);
        }
        break;
    default:
        break;
    }
    if (m->clip_qkv > 0)   /* OlmoeAttention: clamp_ after the q/k norms, before RoPE */
        clip_qkv(m, b, T);
    if (ly->inv_freq)
        for (long t = 0; t < T; t++) {
            for (long hh = 0; hh < m->nh; hh++)
                rope_head(m, ly, b->q + t * qd + hh * hd, t + m->pos0);
            for (long hh = 0; hh < m->nkv; hh++)
                rope_head(m, ly, b->k + t * kd + hh * hd, t + m->pos0);
        }
    /* Llama4TextAttention: the L2 qk norm after RoPE, on RoPE layers only;
     * the temperature on NoPE layers. */
    if (m->qk_norm_on && m->fam->qk == QK_L2 && ly->inv_freq) {
        norm_apply(m, b->q, T * m->nh, hd, NULL, 0);
        norm_apply(m, b->k, T * m->nkv, hd, NULL, 0);
    }
    if (m->qk_norm_on && m->fam->qk == QK_HEAD_POST) { /* HunYuan: query_layernorm after RoPE */
        norm_apply(m, b->q, T * m->nh, hd, ly->q_norm.g, 0);
        norm_apply(m, b->k, T * m->nkv, hd, ly->k_norm.g, 0);
    }
    if (ly->temp_floor > 0)
        fwd_temperature(ly, b->q, T, qd);
    fwd_apply_qscale(m, b->q, T);
    sdpa(m, ly, b->q, qd, b->k, kd, b->v, kd, m->nh, m->nkv, hd, hd, T, b->att, b->ctx);
    if (gate)
        fwd_gate_apply(b->ctx, gate, (size_t)T * (size_t)qd);
    free(gate);
    return fwd_matmul(m, &ly->o, ly->bo, b->ctx, T, out, err);
}

/* down(act(gate(x)) * up(x)) for a dense MLP or one expert; without a gate
 * (NemotronMLP: Apertus, Arcee) down(act(up(x))).  ap: the layer's
 * activation parameters (xIELU), or NULL. */
static fl_status gated_mlp(const fwd_model *m, const fwd_mat *gate, const fwd_mat *up,
                           const fwd_mat *gate_up, const fwd_mat *down, const float *bg,
                           const float *bu, const float *bd, const float *x, long T,
                           fwd_bufs *b, float *out, const float *ap, fl_error *err)
{
    static const float no_params[4] = {0, 0, 0, 0};
    fl_status s;
    long I;
    if (!ap)
        ap = no_params;
    if (!(gate_up && gate_up->t) && !gate->t) {
        if ((s = fwd_matmul(m, up, bu, x, T, b->g, err)) != FL_OK)
            return s;
        for (long i = 0; i < T * up->rows; i++)
            b->g[i] = act_fn_p(m, ap, b->g[i]);
    } else if (gate_up && gate_up->t) {
        /* Phi3MLP and fused experts: gate, up = gate_up(x).chunk(2). */
        I = (gate_up->xw ? gate_up->cols : gate_up->rows) / 2;
        if ((s = fwd_matmul(m, gate_up, NULL, x, T, b->gu, err)) != FL_OK)
            return s;
        for (long t = 0; t < T; t++)
            for (long i = 0; i < I; i++)
                b->g[t * I + i] = act_fn_p(m, ap, b->gu[t * 2 * I + i]) * b->gu[t * 2 * I + I + i];
    } else {
        I = gate->rows;
        if ((s = fwd_matmul(m, gate, bg, x, T, b->g, err)) != FL_OK ||
            (s = fwd_matmul(m, up, bu, x, T, b->u, err)) != FL_OK)
            return s;
        for (long i = 0; i < T * I; i++)
            b->g[i] = act_fn_p(m, ap, b->g[i]) * b->u[i];
    }
    return fwd_matmul(m, down, bd, b->g, T, out, err);
}

/* The indices of the K largest of E scores, best first; among equal scores
 * the lowest index wins, as torch.topk picks them.  Every router uses it. */
void fwd_top_k(const double *score, long E, long K, long *sel)
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

void fwd_choose(const float *logits, long E, long K, long *sel)
{
    double score[E];
    for (long e = 0; e < E; e++)
        score[e] = logits[e];   /* exact: the same order as the float logits */
    fwd_top_k(score, E, K, sel);
}

/* DeepseekV3TopkRouter's group limit: groups ranked by the sum of their two
 * best choices, experts outside the topk_group best groups masked to 0. */
static void ds_group_mask(const fwd_model *m, double *choice, long E)
{
    long G = m->n_group > 0 && E % m->n_group == 0 ? m->n_group : 1, per = E / G;
    long keep = m->topk_group > 0 && m->topk_group < G ? m->topk_group : G;
    if (keep >= G || per < 2)
        return;
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
    /* DeepseekV3TopkRouter masks the other groups with 0.0, NemotronHMoE
     * with -inf (a negative corrected choice can lose to a masked 0). */
    for (long e = 0; e < E; e++)
        if (!kept[e / per])
            choice[e] = m->fam->group_mask_inf ? -INFINITY : 0.0;
}

/* DeepseekV3TopkRouter: scores = sigmoid(logits); the choice adds
 * e_score_correction_bias, group-limited; top-k of the choice; weights are
 * the plain scores, renormalised (+1e-20) when norm_topk_prob, times
 * routed_scaling_factor.  `given`: sel is already chosen, weigh it. */
static void ds_route(const fwd_model *m, const fwd_layer *ly, const float *r, long E, long K,
                     long *sel, float *sw, int given)
{
    double score[E], choice[E];
    for (long e = 0; e < E; e++) {
        score[e] = 1.0 / (1.0 + exp(-(double)r[e]));
        choice[e] = score[e] + (ly->e_bias ? ly->e_bias[e] : 0.0);
    }
    if (!given) {
        ds_group_mask(m, choice, E);
        fwd_top_k(choice, E, K, sel);
    }
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

/* Mixtral / Qwen: softmax over all experts in fp32, top-k, renormalised
 * when norm_topk. */
static void softmax_route(const fwd_model *m, const float *r, long E, long K, long *sel, float *sw, int given)
{
    double mx = -INFINITY, sum = 0;
    for (long e = 0; e < E; e++)
        if (r[e] > mx)
            mx = r[e];
    for (long e = 0; e < E; e++)
        sum += exp((double)r[e] - mx);
    if (!given)
        fwd_choose(r, E, K, sel);
    double tot = 0;
    for (long k = 0; k < K; k++) {
        double p = exp((double)r[sel[k]] - mx) / sum;
        sw[k] = (float)p;
        tot += p;
    }
    if (m->norm_topk)
        for (long k = 0; k < K; k++)
            sw[k] = (float)(sw[k] / tot);
}

/* The family's router for one token: choose sel and weigh it, or (given)
 * only weigh the experts in sel. */
static void route(const fwd_model *m, const fwd_layer *ly, const float *r, long E, long K, long *sel, float *sw,
                  int given)
{
    if (m->fam->router == ROUTER_DEEPSEEK)
        ds_route(m, ly, r, E, K, sel, sw, given);
    else if (m->fam->router == ROUTER_HOOK)
        m->fam->route(m, ly, r, E, K, sel, sw, given);
    else
        softmax_route(m, r, E, K, sel, sw, given);
}

/* Sparse MoE block: the router's choice per token (pinned to a recorded
 * one when fwd_route_replay asked for it), each expert on its tokens
 * (Llama 4: the score scales the expert's input), plus Qwen2-MoE's shared
 * expert scaled by sigmoid(shared_expert_gate(x)) or an unscaled one. */
static fl_status moe(const fwd_model *m, const fwd_layer *ly, const float *x, long T,
                     fwd_bufs *b, float *out, fl_error *err)
{
    long E = ly->n_experts, K = m->topk, H = m->H;
    fl_status s;
    if ((s = fwd_matmul(m, &ly->router, ly->b_router, x, T, b->router, err)) != FL_OK)
        return s;
    for (long t = 0; t < T; t++) {
        const float *r = b->router + t * E;
        long *sel = b->sel + t * K;
        float *sw = b->selw + t * K;
        route(m, ly, r, E, K, sel, sw, 0);
        if (fwd_route_pin(m, sel, E, K))
            route(m, ly, r, E, K, sel, sw, 1);
    }
    if ((s = fwd_experts(m, ly, x, T, b, out, err)) != FL_OK || !ly->sh_gate.t)
        return s;
    if ((s = gated_mlp(m, &ly->sh_gate, &ly->sh_up, NULL, &ly->sh_down, NULL, NULL, NULL, x, T,
                       b, b->tmp2, NULL, err)) != FL_OK ||
        (ly->sh_scalar.t && (s = fwd_matmul(m, &ly->sh_scalar, NULL, x, T, b->router, err)) != FL_OK))
        return s;
    for (long t = 0; t < T; t++) {
        float gsc = ly->sh_scalar.t ? (float)(1.0 / (1.0 + exp(-(double)b->router[t]))) : 1.0f;
        for (long c = 0; c < H; c++)
            out[t * H + c] += gsc * b->tmp2[t * H + c];
    }
    return FL_OK;
}

fl_status fwd_alloc_experts(fwd_layer *ly, long E, fl_error *err)
{
    ly->n_experts = E;
    ly->e_gate = calloc((size_t)E, sizeof *ly->e_gate);
    ly->e_up = calloc((size_t)E, sizeof *ly->e_up);
    ly->e_gate_up = calloc((size_t)E, sizeof *ly->e_gate_up);
    ly->e_down = calloc((size_t)E, sizeof *ly->e_down);
    if (!ly->e_gate || !ly->e_up || !ly->e_gate_up || !ly->e_down)
        return fl_fail(err, FL_EIO, "out of memory");
    return FL_OK;
}

long fwd_gather_expert(const fwd_bufs *b, long e, long T, long K, const float *x, long width, long *idx, float *wt,
                       float *xe)
{
    long n = 0;
    for (long t = 0; t < T; t++)
        for (long k = 0; k < K; k++)
            if (b->sel[t * K + k] == e) {
                idx[n] = t;
                wt[n] = b->selw[t * K + k];
                memcpy(xe + n * width, x + t * width, (size_t)width * sizeof *xe);
                n++;
            }
    return n;
}

/* Each expert of ly on the tokens routed to it (b->sel, b->selw: m->topk
 * per token), weighted, summed into out (cleared first). */
fl_status fwd_experts(const fwd_model *m, const fwd_layer *ly, const float *x, long T, fwd_bufs *b, float *out,
                      fl_error *err)
{
    long E = ly->n_experts, K = m->topk, H = m->H;
    fl_status s = FL_OK;
    memset(out, 0, (size_t)(T * H) * sizeof *out);
    long *idx = malloc((size_t)T * sizeof *idx);
    float *wt = malloc((size_t)T * sizeof *wt);
    if (!idx || !wt) {
        free(idx);
        free(wt);
        return fl_fail(err, FL_EIO, "out of memory");
    }
    for (long e = 0; e < E && s == FL_OK; e++) {
        long n = fwd_gather_expert(b, e, T, K, x, H, idx, wt, b->xe);
        for (long i = 0; m->fam->route_scales_input && i < n; i++) {
            /* Llama4TextMoe: routed_in = x * score, summed unweighted. */
            for (long c = 0; c < H; c++)
                b->xe[i * H + c] *= wt[i];
            wt[i] = 1.0f;
        }
        if (!n) {
            /* No token chose expert e: its weights count as done unread. */
            fwd_meter_add(m, ly->fused ? &ly->e_gate_up[e] : &ly->e_gate[e]);
            if (!ly->fused)
                fwd_meter_add(m, &ly->e_up[e]);
            fwd_meter_add(m, &ly->e_down[e]);
            continue;
        }
        if (m->fam->expert)
            s = m->fam->expert(m, ly, e, b->xe, n, b, b->tmp2, err);
        else
            s = gated_mlp(m, &ly->e_gate[e], &ly->e_up[e], ly->fused ? &ly->e_gate_up[e] : NULL, &ly->e_down[e],
                          NULL, NULL, NULL, b->xe, n, b, b->tmp2, NULL, err);
        for (long i = 0; s == FL_OK && i < n; i++)
            for (long c = 0; c < H; c++)
                out[idx[i] * H + c] += wt[i] * b->tmp2[i * H + c];
    }
    free(idx);
    free(wt);
    return s;
}

fl_status fwd_gated_mlp(const fwd_model *m, const fwd_mat *gate, const fwd_mat *up, const fwd_mat *gate_up,
                        const fwd_mat *down, const float *bg, const float *bu, const float *bd, const float *x,
                        long T, fwd_bufs *b, float *out, fl_error *err)
{
    return gated_mlp(m, gate, up, gate_up, down, bg, bu, bd, x, T, b, out, NULL, err);
}

void fwd_route(const fwd_model *m, const fwd_layer *ly, const float *logits, long E, long K, long *sel, float *w,
               int given)
{
    route(m, ly, logits, E, K, sel, w, given);
}

fl_status fwd_mlp(const fwd_model *m, const fwd_layer *ly, const float *x, long T, fwd_bufs *b, float *out,
                  fl_error *err)
{
    if (ly->n_experts)
        return moe(m, ly, x, T, b, out, err);
    return gated_mlp(m, &ly->gate, &ly->up, &ly->gate_up, &ly->down, ly->b_gate, ly->b_up,
                     ly->b_down, x, T, b, out, ly->act_p, err);
}


/* ----------------------------------------------------------------------------
 * The pieces a fwd_block (forward_internal.h) builds on. */

void fwd_rope_head(const fwd_model *m, const fwd_layer *ly, float *v, long pos) { rope_head(m, ly, v, pos); }

void fwd_sdpa(const fwd_model *m, const fwd_layer *ly, const float *q, long ldq, const float *k, long ldk,
              const float *v, long ldv, long nh, long nkv, long dqk, long dv, long T, float *att, float *ctx)
{
    sdpa(m, ly, q, ldq, k, ldk, v, ldv, nh, nkv, dqk, dv, T, att, ctx);
}


float fwd_act(const fwd_model *m, float x) { return act_fn(m, x); }
float fwd_act_as(int act, float x) { return act_as(act, x); }
