/* forward_bind_mlp.c — binding a layer's MLP or MoE tensors for the reference
 * forward pass (forward_internal.h): the dense MLP (gate/up/down with
 * biases, or Phi3's fused gate_up_proj), per-expert experts, transformers 5
 * fused 3-D experts in either layout, shared experts, the DeepSeek
 * correction bias.  Moved out of forward_load.c, which binds the rest. */
#include "forward_internal.h"

#include "flashify/safetensors.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DIM 65536

static const char *ckdir(const fwd_model *m) { return m->ck->dir; }

static const fwd_moe_names *moe_layout(const fwd_model *m, const char *pre)
{
    char name[512];
    for (int i = 0; i < 2 && m->fam->moe[i]; i++)
        if (fwd_findf(m, name, sizeof name, "%s%s.weight", pre, m->fam->moe[i]->router))
            return m->fam->moe[i];
    return NULL;
}

fwd_mat fwd_slab(const ckpt_tensor *t, long e, long rows, long cols, int xw)
{
    size_t es = st_dtype_bits(t->t->dtype) / 8;
    return (fwd_mat){.t = t, .rows = rows, .cols = cols, .dtype = t->t->dtype, .esize = es,
                     .off = (uint64_t)e * (uint64_t)rows * (uint64_t)cols * es, .xw = xw};
}

/* transformers 5 fused experts: gate_up_proj [E, 2I, H] and down_proj
 * [E, H, I] (nn.functional.linear per expert), or the grouped-GEMM layout
 * [E, H, 2I] and [E, I, H] used as x @ W; gate is the first half of 2I. */
fl_status fwd_bind_fused(fwd_model *m, fwd_layer *ly, const char *pre, const char *experts, long E,
                         fl_error *err)
{
    char gu_name[512], dn_name[512];
    const ckpt_tensor *gu = fwd_findf(m, gu_name, sizeof gu_name, "%s%s.gate_up_proj", pre, experts);
    const ckpt_tensor *dn = fwd_findf(m, dn_name, sizeof dn_name, "%s%s.down_proj", pre, experts);
    if (!gu || !dn)
        return fl_fail(err, FL_EINPUT, "%s: tensor '%s' is missing", ckdir(m), gu ? dn_name : gu_name);
    const uint64_t *g = gu->t->shape, *d = dn->t->shape;
    if (gu->t->ndim != 3 || dn->t->ndim != 3 || g[0] != (uint64_t)E || d[0] != (uint64_t)E ||
        !st_dtype_is_foldable(gu->t->dtype) || !st_dtype_is_foldable(dn->t->dtype))
        return fl_fail(err, FL_EINPUT, "%s: fused experts '%s' / '%s' must be float [%ld, ., .] tensors", ckdir(m),
                       gu_name, dn_name, E);
    uint64_t H = (uint64_t)m->H;
    int last = g[2] == H, middle = g[1] == H;
    if (last && middle) {
        /* 2I == H: down_proj [E, H, I] or [E, I, H] tells the layouts apart. */
        last = d[1] == H && d[2] != H;
        middle = d[2] == H && d[1] != H;
    }
    if (last == middle)
        return fl_fail(err, FL_EINPUT, "%s: fused experts '%s' [%llu, %llu, %llu]: no single axis of size %ld",
                       ckdir(m), gu_name, (unsigned long long)g[0], (unsigned long long)g[1],
                       (unsigned long long)g[2], m->H);
    uint64_t I2 = last ? g[1] : g[2];
    uint64_t I = last ? d[2] : d[1];
    if (I2 % 2 || I2 / 2 != I || (last ? d[1] : d[2]) != H || I > MAX_DIM)
        return fl_fail(err, FL_EINPUT, "%s: fused experts '%s' (2I = %llu) and '%s' do not fit together", ckdir(m),
                       gu_name, (unsigned long long)I2, dn_name);
    ly->fused = last ? 1 : 2;
    m->mp->total += st_nbytes(gu->t) + st_nbytes(dn->t);
    for (long e = 0; e < E; e++) {
        ly->e_gate_up[e] = last ? fwd_slab(gu, e, (long)I2, m->H, 0) : fwd_slab(gu, e, m->H, (long)I2, 1);
        ly->e_down[e] = last ? fwd_slab(dn, e, m->H, (long)I, 0) : fwd_slab(dn, e, (long)I, m->H, 1);
    }
    if ((long)I > m->max_inter)
        m->max_inter = (long)I;
    return FL_OK;
}

/* gate [I, H], up [I, H] and down [H, I] named "<base>.<gate>.weight" and
 * so on: an expert, a shared expert.  A gate absent and not `required`
 * binds nothing. */
static fl_status bind_triple(fwd_model *m, const char *base, const char *gn, const char *un, const char *dn,
                             int required, fwd_mat *g, fwd_mat *u, fwd_mat *d, fl_error *err)
{
    char name[512];
    long H = m->H;
    snprintf(name, sizeof name, "%s.%s.weight", base, gn);
    fl_status s = fwd_bind_mat(m, name, -1, H, required, g, err);
    if (s != FL_OK || !g->t)
        return s;
    long I = g->rows;
    snprintf(name, sizeof name, "%s.%s.weight", base, un);
    if ((s = fwd_bind_mat(m, name, I, H, 1, u, err)) != FL_OK)
        return s;
    snprintf(name, sizeof name, "%s.%s.weight", base, dn);
    if ((s = fwd_bind_mat(m, name, H, I, 1, d, err)) != FL_OK)
        return s;
    if (I > m->max_inter)
        m->max_inter = I;
    return FL_OK;
}

static fl_status bind_per_expert(fwd_model *m, fwd_layer *ly, const char *pre, const fwd_moe_names *nm, long E,
                                 fl_error *err)
{
    char base[512];
    fl_status s = FL_OK;
    for (long e = 0; e < E && s == FL_OK; e++) {
        snprintf(base, sizeof base, "%s%s.%ld", pre, nm->experts, e);
        s = bind_triple(m, base, nm->gate, nm->up, nm->down, 1, &ly->e_gate[e], &ly->e_up[e], &ly->e_down[e], err);
    }
    return s;
}

/* The shared expert(s): Qwen2-MoE's with a sigmoid scalar gate,
 * DeepSeek's without one. */
static fl_status bind_shared(fwd_model *m, fwd_layer *ly, const char *pre, const fwd_moe_names *nm, fl_error *err)
{
    char name[512];
    if (!nm->shared)
        return FL_OK;
    snprintf(name, sizeof name, "%s%s", pre, nm->shared);
    fl_status s = bind_triple(m, name, "gate_proj", "up_proj", "down_proj", 0, &ly->sh_gate, &ly->sh_up,
                              &ly->sh_down, err);
    if (s != FL_OK || !ly->sh_gate.t || !nm->shared_gate)
        return s;
    snprintf(name, sizeof name, "%s%s.weight", pre, nm->shared_gate);
    return fwd_bind_mat(m, name, 1, m->H, 1, &ly->sh_scalar, err);
}

static fl_status bind_moe(fwd_model *m, fwd_layer *ly, const char *pre, const fwd_moe_names *nm, fl_error *err)
{
    char name[512];
    fl_status s;
    snprintf(name, sizeof name, "%s%s.weight", pre, nm->router);
    if ((s = fwd_bind_mat(m, name, -1, m->H, 1, &ly->router, err)) != FL_OK)
        return s;
    long E = ly->router.rows;
    if (E > MAX_DIM)
        return fl_fail(err, FL_EINPUT, "%s: router '%s' has %ld experts (limit 65536)", ckdir(m), name, E);
    if ((s = fwd_alloc_experts(ly, E, err)) != FL_OK)
        return s;
    int fused = fwd_findf(m, name, sizeof name, "%s%s.gate_up_proj", pre, nm->experts) != NULL;
    if (m->fam->bind_experts)
        s = m->fam->bind_experts(m, ly, pre, nm, E, err);
    else
        s = fused ? fwd_bind_fused(m, ly, pre, nm->experts, E, err) : bind_per_expert(m, ly, pre, nm, E, err);
    if (s != FL_OK)
        return s;
    if (E > m->max_experts)
        m->max_experts = E;
    m->moe_layers++;
    if (m->fam->router == ROUTER_DEEPSEEK) {
        snprintf(name, sizeof name, "%s%s.e_score_correction_bias", pre, nm->router);
        if ((s = fwd_bind_vec(m, name, E, 0, &ly->e_bias, err)) != FL_OK)
            return s;
    }
    return bind_shared(m, ly, pre, nm, err);
}

/* Dense: gate/up/down (with biases where present), Phi3's fused
 * gate_up_proj, or NemotronMLP's up/down (mlp_no_gate); names from m->nm. */
static fl_status bind_dense(fwd_model *m, fwd_layer *ly, const char *pre, fl_error *err)
{
    char name[512];
    fl_status s;
    long H = m->H, I;
    const char *mlp = m->fam->mlp ? m->fam->mlp : "mlp";
    const fwd_renames *nm = &m->nm;
#define MLPN(n, suffix) (snprintf(name, sizeof name, "%s%s.%s." suffix, pre, mlp, n), name)
    if ((s = fwd_bind_mat(m, MLPN(nm->gate_up, "weight"), -1, H, 0, &ly->gate_up, err)) != FL_OK)
        return s;
    if (ly->gate_up.t) {
        if (ly->gate_up.rows % 2)
            return fl_fail(err, FL_EINPUT, "%s: fused '%s' has an odd number of rows (%ld)", ckdir(m), name,
                           ly->gate_up.rows);
        I = ly->gate_up.rows / 2;
    } else {
        if (!m->fam->mlp_no_gate &&
            (s = fwd_bind_mat(m, MLPN(nm->gate, "weight"), -1, H, 1, &ly->gate, err)) != FL_OK)
            return s;
        if ((s = fwd_bind_mat(m, MLPN(nm->up, "weight"), ly->gate.t ? ly->gate.rows : -1, H, 1, &ly->up, err)) !=
            FL_OK)
            return s;
        I = ly->up.rows;
        if ((s = fwd_bind_vec(m, MLPN(nm->gate, "bias"), I, 0, &ly->b_gate, err)) != FL_OK ||
            (s = fwd_bind_vec(m, MLPN(nm->up, "bias"), I, 0, &ly->b_up, err)) != FL_OK)
            return s;
    }
    if ((s = fwd_bind_mat(m, MLPN(nm->down, "weight"), H, I, 1, &ly->down, err)) != FL_OK ||
        (s = fwd_bind_vec(m, MLPN(nm->down, "bias"), H, 0, &ly->b_down, err)) != FL_OK)
        return s;
#undef MLPN
    if (I > m->max_inter)
        m->max_inter = I;
    return FL_OK;
}

fl_status fwd_bind_ffn(fwd_model *m, fwd_layer *ly, const char *pre, fl_error *err)
{
    const fwd_moe_names *nm = moe_layout(m, pre);
    return nm ? bind_moe(m, ly, pre, nm, err) : bind_dense(m, ly, pre, err);
}
