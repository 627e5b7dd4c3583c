/* forward_mla.c — DeepSeek's multi-head latent attention and DeepSeek-V2's
 * router for the reference forward pass (forward_internal.h).
 *
 * MLA as transformers computes it (docs/architectures.md §deepseek_v3 and
 * §glm-deepseek; deepseek_v3/modeling_deepseek_v3.py DeepseekV3Attention,
 * deepseek_v2/modular_deepseek_v2.py DeepseekV2Attention): the query from
 * q_proj, or q_a_proj -> q_a_layernorm -> q_b_proj; kv_a_proj_with_mqa
 * gives [latent | k_rot], the latent goes through kv_a_layernorm and
 * kv_b_proj to per-head [k_nope | v]; one k_rot is shared by every head.
 * The two inner norms are built without an eps argument (1e-6).  A DSA
 * layer (DeepSeek-V3.2, GLM-5) then attends only to the keys its indexer
 * selected (forward_dsa.c).
 *
 * DeepseekV2Moe.route_tokens_to_experts: softmax over all experts in fp32,
 * then "greedy" (top-k) or "group_limited_greedy" (groups ranked by their
 * best expert, the topk_group best kept, the others masked to 0, top-k);
 * the weights are the softmax values times routed_scaling_factor, never
 * renormalised (transformers ignores norm_topk_prob there). */
#include "forward_internal.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DIM 65536

fl_status fwd_parse_mla(fwd_model *m, fl_error *err)
{
    if (!m->fam->mla)
        return FL_OK;
    m->q_lora = ckpt_view_int(m->cfg, "q_lora_rank", 0);
    m->kv_lora = ckpt_view_int(m->cfg, "kv_lora_rank", 0);
    m->nope = ckpt_view_int(m->cfg, "qk_nope_head_dim", 0);
    m->rot = ckpt_view_int(m->cfg, "qk_rope_head_dim", 0);
    m->vdim = ckpt_view_int(m->cfg, "v_head_dim", 0);
    if (m->kv_lora <= 0 || m->kv_lora > MAX_DIM || m->nope < 0 || m->nope > MAX_DIM || m->rot <= 0 ||
        m->rot > MAX_DIM || m->rot % 2 || m->vdim <= 0 || m->vdim > MAX_DIM || m->q_lora < 0 || m->q_lora > MAX_DIM)
        return fl_fail(err, FL_EINPUT, "%s/config.json: MLA dims kv_lora_rank %ld, qk_nope_head_dim %ld, "
                       "qk_rope_head_dim %ld, v_head_dim %ld are not valid", m->ck->dir, m->kv_lora, m->nope, m->rot,
                       m->vdim);
    return FL_OK;
}

#define NAME(fmt) (snprintf(name, sizeof name, "%s" fmt, pre), name)

/* The projections and inner norms of one MLA layer.  q_a_proj,
 * kv_a_proj_with_mqa and o_proj carry a bias where the checkpoint has one
 * (DeepseekV2Attention: bias=config.attention_bias). */
fl_status fwd_bind_mla(fwd_model *m, fwd_layer *ly, const char *pre, fl_error *err)
{
    char name[512];
    fl_status s;
    long H = m->H, qk = m->nope + m->rot, kva = m->kv_lora + m->rot;
    if (m->q_lora > 0) {
        if ((s = fwd_bind_mat(m, NAME("self_attn.q_a_proj.weight"), m->q_lora, H, 1, &ly->q_a, err)) != FL_OK ||
            (s = fwd_bind_vec(m, NAME("self_attn.q_a_proj.bias"), m->q_lora, 0, &ly->b_qa, err)) != FL_OK ||
            (s = fwd_bind_norm(m, NAME("self_attn.q_a_layernorm.weight"), m->q_lora, &ly->q_a_norm, err)) != FL_OK ||
            (s = fwd_bind_mat(m, NAME("self_attn.q_b_proj.weight"), m->nh * qk, m->q_lora, 1, &ly->q_b, err)) != FL_OK)
            return s;
    } else if ((s = fwd_bind_mat(m, NAME("self_attn.q_proj.weight"), m->nh * qk, H, 1, &ly->q, err)) != FL_OK) {
        return s;
    }
    if ((s = fwd_bind_mat(m, NAME("self_attn.kv_a_proj_with_mqa.weight"), kva, H, 1, &ly->kv_a, err)) != FL_OK ||
        (s = fwd_bind_vec(m, NAME("self_attn.kv_a_proj_with_mqa.bias"), kva, 0, &ly->b_kva, err)) != FL_OK ||
        (s = fwd_bind_norm(m, NAME("self_attn.kv_a_layernorm.weight"), m->kv_lora, &ly->kv_a_norm, err)) != FL_OK ||
        (s = fwd_bind_mat(m, NAME("self_attn.kv_b_proj.weight"), m->nh * (m->nope + m->vdim), m->kv_lora, 1,
                          &ly->kv_b, err)) != FL_OK ||
        (s = fwd_bind_mat(m, NAME("self_attn.o_proj.weight"), H, m->nh * m->vdim, 1, &ly->o, err)) != FL_OK)
        return s;
    return fwd_bind_vec(m, NAME("self_attn.o_proj.bias"), H, 0, &ly->bo, err);
}
#undef NAME

/* The working arrays of one MLA pass. */
typedef struct {
    float *q, *k, *v, *kva, *lat, *kvb, *qa, *ctx;
} mla_bufs;

static void mla_free(mla_bufs *w)
{
    free(w->q); free(w->k); free(w->v); free(w->kva); free(w->lat); free(w->kvb); free(w->qa); free(w->ctx);
}

static fl_status mla_alloc(const fwd_model *m, long T, mla_bufs *w, fl_error *err)
{
    size_t tz = (size_t)T, nh = (size_t)m->nh, qk = (size_t)(m->nope + m->rot);
    w->q = malloc(tz * nh * qk * sizeof(float));
    w->k = malloc(tz * nh * qk * sizeof(float));
    w->v = malloc(tz * nh * (size_t)m->vdim * sizeof(float));
    w->kva = malloc(tz * (size_t)(m->kv_lora + m->rot) * sizeof(float));
    w->lat = malloc(tz * (size_t)m->kv_lora * sizeof(float));
    w->kvb = malloc(tz * nh * (size_t)(m->nope + m->vdim) * sizeof(float));
    w->qa = malloc(tz * (size_t)(m->q_lora > 0 ? m->q_lora : 1) * sizeof(float));
    w->ctx = malloc(tz * nh * (size_t)m->vdim * sizeof(float));
    if (w->q && w->k && w->v && w->kva && w->lat && w->kvb && w->qa && w->ctx)
        return FL_OK;
    mla_free(w);
    return fl_fail(err, FL_EIO, "out of memory");
}

/* q [T][nh][nope + R], the latent through kv_a_layernorm and kv_b_proj,
 * and w->kva's shared k_rot (not yet rotated). */
static fl_status mla_project(const fwd_model *m, const fwd_layer *ly, const float *h, long T, mla_bufs *w,
                             fl_error *err)
{
    fl_status s;
    long kvw = m->kv_lora + m->rot;
    if (ly->q_a.t) {
        if ((s = fwd_matmul(m, &ly->q_a, ly->b_qa, h, T, w->qa, err)) != FL_OK)
            return s;
        fwd_norm_eps(m, &ly->q_a_norm, w->qa, T, m->q_lora, m->fam->mla_norm_eps);
        s = fwd_matmul(m, &ly->q_b, NULL, w->qa, T, w->q, err);
    } else {
        s = fwd_matmul(m, &ly->q, NULL, h, T, w->q, err);
    }
    if (s != FL_OK || (s = fwd_matmul(m, &ly->kv_a, ly->b_kva, h, T, w->kva, err)) != FL_OK)
        return s;
    for (long t = 0; t < T; t++)
        memcpy(w->lat + t * m->kv_lora, w->kva + t * kvw, (size_t)m->kv_lora * sizeof(float));
    fwd_norm_eps(m, &ly->kv_a_norm, w->lat, T, m->kv_lora, m->fam->mla_norm_eps);
    return fwd_matmul(m, &ly->kv_b, NULL, w->lat, T, w->kvb, err);
}

fl_status fwd_attention_mla(const fwd_model *m, const fwd_layer *ly, const float *h, long T, fwd_bufs *b,
                            float *out, fl_error *err)
{
    long nh = m->nh, R = m->rot, qk = m->nope + R, kvw = m->kv_lora + R, kb = m->nope + m->vdim;
    mla_bufs w = {0};
    fl_status s = mla_alloc(m, T, &w, err);
    if (s != FL_OK || (s = mla_project(m, ly, h, T, &w, err)) != FL_OK)
        goto done;
    for (long t = 0; t < T; t++) {
        float *kr = w.kva + t * kvw + m->kv_lora; /* one k_rot shared by all heads */
        fwd_rope_head(m, ly, kr, t);
        for (long hh = 0; hh < nh; hh++) {
            float *qh = w.q + (t * nh + hh) * qk, *kh = w.k + (t * nh + hh) * qk;
            const float *src = w.kvb + (t * nh + hh) * kb;
            fwd_rope_head(m, ly, qh + m->nope, t);
            memcpy(kh, src, (size_t)m->nope * sizeof *kh);
            memcpy(kh + m->nope, kr, (size_t)R * sizeof *kh);
            memcpy(w.v + (t * nh + hh) * m->vdim, src + m->nope, (size_t)m->vdim * sizeof(float));
        }
    }
    fwd_layer sel = *ly;   /* this pass's DSA selection, on a copy: the model is shared */
    if (ly->dsa && (s = fwd_dsa_select(m, ly, h, w.qa, T, &sel.allow, err)) != FL_OK)
        goto done;
    fwd_sdpa(m, &sel, w.q, nh * qk, w.k, nh * qk, w.v, nh * m->vdim, nh, nh, qk, m->vdim, T, b->att, w.ctx);
    s = fwd_matmul(m, &ly->o, ly->bo, w.ctx, T, out, err);
done:
    mla_free(&w);
    return s;
}

/* ----------------------------------------------------------------------------
 * DeepSeek-V2's router (a ROUTER_HOOK) */

void fwd_ds2_route(const fwd_model *m, const fwd_layer *ly, const float *logits, long E, long K, long *sel,
                   float *w, int given)
{
    (void)ly;
    double mx = -INFINITY, sum = 0, p[E], choice[E];
    for (long e = 0; e < E; e++)
        mx = fmax(mx, logits[e]);
    for (long e = 0; e < E; e++)
        sum += (p[e] = exp((double)logits[e] - mx));
    for (long e = 0; e < E; e++)
        choice[e] = p[e] /= sum;
    long G = m->n_group > 1 ? m->n_group : 1, per = E / G;
    if (!given && G > 1 && m->topk_group < G) {
        double best[G];
        for (long g = 0; g < G; g++) {
            best[g] = -INFINITY;
            for (long e = g * per; e < (g + 1) * per; e++)
                best[g] = fmax(best[g], p[e]);
        }
        long keep[G];
        fwd_top_k(best, G, m->topk_group, keep);
        for (long e = 0; e < E; e++) {
            int kept = 0;
            for (long k = 0; k < m->topk_group; k++)
                kept |= keep[k] == e / per;
            if (!kept)
                choice[e] = 0.0;
        }
    }
    if (!given)
        fwd_top_k(choice, E, K, sel);
    for (long k = 0; k < K; k++)
        w[k] = (float)(p[sel[k]] * m->routed_scale);
}

/* layer_extra of deepseek_v2: DeepseekV2Config's routing keys, read once
 * (scoring_func must be softmax; topk_method greedy, the class default, or
 * group_limited_greedy with n_group dividing the experts). */
fl_status fwd_ds2_layer(fwd_model *m, fwd_layer *ly, long i, const char *pre, fl_error *err)
{
    (void)pre;
    const cJSON *sf = ckpt_view_get(m->cfg, "scoring_func"), *tm = ckpt_view_get(m->cfg, "topk_method");
    const char *method = cJSON_IsString(tm) ? tm->valuestring : "greedy";
    if (cJSON_IsString(sf) && strcmp(sf->valuestring, "softmax") != 0)
        return fl_fail(err, FL_EINPUT, "%s/config.json: scoring_func '%s' is not supported by the reference "
                       "forward pass for deepseek_v2 (softmax)", m->ck->dir, sf->valuestring);
    int grouped = strcmp(method, "group_limited_greedy") == 0;
    if (!grouped && strcmp(method, "greedy") != 0)
        return fl_fail(err, FL_EINPUT, "%s/config.json: topk_method '%s' is not one of DeepseekV2Moe's "
                       "(greedy, group_limited_greedy)", m->ck->dir, method);
    m->routed_scale = ckpt_view_num(m->cfg, "routed_scaling_factor", 1.0, 1.0);
    m->n_group = grouped ? ckpt_view_int(m->cfg, "n_group", 0) : 1;
    m->topk_group = grouped ? ckpt_view_int(m->cfg, "topk_group", 0) : 1;
    if (ly->n_experts && grouped &&
        (m->n_group < 1 || m->n_group > ly->n_experts || ly->n_experts % m->n_group || m->topk_group < 1 ||
         m->topk_group > m->n_group))
        return fl_fail(err, FL_EINPUT, "%s/config.json: group_limited_greedy needs n_group dividing the %ld "
                       "experts of layer %ld and 1 <= topk_group <= n_group (n_group %ld, topk_group %ld)",
                       m->ck->dir, ly->n_experts, i, m->n_group, m->topk_group);
    return FL_OK;
}
