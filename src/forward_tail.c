/* forward_tail.c — hooks of the zoo 13 families that fit the shared layer
 * stack (forward_internal.h; docs/architectures.md §zoo13-tail).
 *
 * The biased router (Lfm2MoeSparseMoeBlock.route_tokens_to_experts in
 * transformers lfm2_moe/modular_lfm2_moe.py, Ernie4_5_MoeSparseMoeBlock in
 * ernie4_5_moe/modular_ernie4_5_moe.py): scores are a sigmoid (LFM2) or a
 * softmax in fp32 (ERNIE) of the router logits; the choice ranks the
 * scores plus a correction bias; the chosen experts weigh their plain
 * scores, renormalised (LFM2: / (sum + 1e-6) when norm_topk_prob; ERNIE: /
 * max(sum, moe_norm_min), always), times routed_scaling_factor.  The layer
 * hook binds that bias, and Apertus' learned xIELU parameters
 * (XIELUActivation in transformers activations.py). */
#include "forward_internal.h"

#include "flashify/safetensors.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

void fwd_biased_route(const fwd_model *m, const fwd_layer *ly, const float *logits, long E, long K, long *sel,
                      float *w, int given)
{
    const fwd_family *f = m->fam;
    double p[E], choice[E], mx = -INFINITY, sum = 0;
    for (long e = 0; e < E; e++)
        mx = logits[e] > mx ? logits[e] : mx;
    for (long e = 0; e < E; e++)
        sum += (p[e] = f->route_softmax ? exp((double)logits[e] - mx) : 1.0 / (1.0 + exp(-(double)logits[e])));
    for (long e = 0; e < E; e++) {
        if (f->route_softmax)
            p[e] /= sum;
        choice[e] = p[e] + (ly->e_bias ? ly->e_bias[e] : 0.0);
    }
    if (!given)
        fwd_top_k(choice, E, K, sel);
    double tot = 0, den = 1.0;
    for (long k = 0; k < K; k++)
        tot += p[sel[k]];
    if (m->norm_topk)
        den = f->route_clamp_key ? fmax(tot, ckpt_view_num(m->cfg, f->route_clamp_key, f->route_clamp, f->route_clamp))
                                 : tot + f->route_eps;
    for (long k = 0; k < K; k++)
        w[k] = (float)(p[sel[k]] / den * m->routed_scale);
}

static double softplus(double x) { return x > 20 ? x : log1p(exp(x)); }

/* One scalar parameter of the activation module, its value and dtype
 * (absent and not required: def, F32). */
static fl_status act_scalar(fwd_model *m, const char *pre, const char *what, int required, double def, double *v,
                            int *dtype, fl_error *err)
{
    char name[512];
    snprintf(name, sizeof name, "%s%s.act_fn.%s", pre, m->fam->mlp ? m->fam->mlp : "mlp", what);
    const ckpt_tensor *t = ckpt_find(m->ck, name);
    float *x = NULL;
    fl_status s = fwd_bind_vec(m, name, 1, required, &x, err);
    *v = x ? x[0] : def;
    *dtype = t ? t->t->dtype : ST_F32;
    free(x);
    return s;
}

/* XIELUActivation: alpha_p, alpha_n [1] parameters and the beta, eps
 * buffers (0.5, -1e-6 when absent); softplus(alpha_p) and
 * beta + softplus(alpha_n) are computed in the parameters' dtype. */
static fl_status bind_xielu(fwd_model *m, fwd_layer *ly, const char *pre, fl_error *err)
{
    double ap, an, beta, eps;
    int dp, dn, db, de;
    fl_status s;
    if ((s = act_scalar(m, pre, "alpha_p", 1, 0, &ap, &dp, err)) != FL_OK ||
        (s = act_scalar(m, pre, "alpha_n", 1, 0, &an, &dn, err)) != FL_OK ||
        (s = act_scalar(m, pre, "beta", 0, 0.5, &beta, &db, err)) != FL_OK ||
        (s = act_scalar(m, pre, "eps", 0, -1e-6, &eps, &de, err)) != FL_OK)
        return s;
    ly->act_p[0] = (float)fwd_round_to_dtype(dp, softplus(ap));
    ly->act_p[1] = (float)fwd_round_to_dtype(dn, beta + fwd_round_to_dtype(dn, softplus(an)));
    ly->act_p[2] = (float)beta;
    ly->act_p[3] = (float)eps;
    (void)db, (void)de;
    return FL_OK;
}

/* The shared MoE path adds no biases inside the experts: refuse where the
 * checkpoint has them (Ernie4_5_MoeMLP with use_bias) rather than compute
 * something else. */
static fl_status expert_biases(const fwd_model *m, const char *pre, fl_error *err)
{
    const fwd_moe_names *nm = m->fam->moe[0];
    char a[512], b[512];
    snprintf(a, sizeof a, "%s%s.0.%s.bias", pre, nm->experts, nm->gate ? nm->gate : "");
    snprintf(b, sizeof b, "%s%s.gate_proj.bias", pre, nm->shared ? nm->shared : "");
    const char *hit = ckpt_find(m->ck, a) ? a : nm->shared && ckpt_find(m->ck, b) ? b : NULL;
    if (!hit)
        return FL_OK;
    return fl_fail(err, FL_EINPUT, "%s: expert biases ('%s') are not supported by the reference forward pass",
                   m->ck->dir, hit);
}

fl_status fwd_tail_layer(fwd_model *m, fwd_layer *ly, long i, const char *pre, fl_error *err)
{
    (void)i;
    char name[512];
    fl_status s = ly->n_experts && m->fam->moe[0] ? expert_biases(m, pre, err) : FL_OK;
    if (s == FL_OK && m->fam->route_bias && ly->n_experts) {
        snprintf(name, sizeof name, "%s%s", pre, m->fam->route_bias);
        s = fwd_bind_vec(m, name, ly->n_experts, 0, &ly->e_bias, err);
    }
    if (s == FL_OK && m->act == ACT_XIELU)
        s = bind_xielu(m, ly, pre, err);
    return s;
}
