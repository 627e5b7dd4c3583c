/* forward_granite.c — the Granite MoE layer stacks for the reference forward
 * pass (fwd_blocks, forward_internal.h): granitemoe, granitemoeshared and
 * granitemoehybrid (Granite 4.0 and 4.0-H), as GraniteMoeDecoderLayer,
 * GraniteMoeSharedDecoderLayer and GraniteMoeHybridDecoderLayer compute a
 * text-only prompt (transformers granitemoe/modular_granitemoe.py,
 * granitemoeshared/modular_granitemoeshared.py,
 * granitemoehybrid/modular_granitemoehybrid.py; docs/architectures.md
 * §granitemoe):
 *
 *   x += residual_multiplier * mixer(input_layernorm(x))
 *        mixer: attention (scale attention_multiplier; RoPE, or none in a
 *        hybrid without position_embedding_type "rope") or Mamba-2
 *   h = post_attention_layernorm(x)
 *   x += residual_multiplier * (routed(h) + shared(h))
 *        routed: router.layer logits, top-k, softmax over the k chosen;
 *        experts input_linear [E, 2I, H] (gate rows, then up), silu(gate) * up,
 *        output_linear [E, H, I]; shared: shared_mlp.input_linear / output_linear
 *
 * The embedding multiplier, final norm, head and logits_scaling are the
 * shared pass's (forward.c, forward_table.c). */
#include "forward_internal.h"

#include "flashify/safetensors.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GR_MAX_DIM 65536

typedef struct {
    int mamba;              /* the mixer is Mamba-2 (else attention) */
    fwd_mamba mb;
    fwd_mat sh_in, sh_out;  /* shared_mlp.input_linear [2Is, H], output_linear [H, Is]; none: t NULL */
} gr_layer;

typedef struct {
    gr_layer *ly;
    int hybrid;             /* granitemoehybrid: layer types, Mamba-2, optional RoPE */
    int rope;               /* attention layers rotate */
    long E, Is;             /* routed experts, shared MLP width (0: none) */
    long n_mamba;
    fwd_mamba_dims md;
} gr_model;

static const char *dir(const fwd_model *m) { return m->ck->dir; }

/* ----------------------------------------------------------------------------
 * The config */

/* GraniteMoeHybridConfig.layers_block_type: layer_types ("mamba" /
 * "attention"; transformers 5's names "linear_attention" / "full_attention"
 * too), or every layer Mamba-2 without them. */
static fl_status parse_layer_types(fwd_model *m, gr_model *g, fl_error *err)
{
    const cJSON *lt = ckpt_view_get(m->cfg, "layer_types");
    if (!lt || cJSON_IsNull(lt))
        lt = ckpt_view_get(m->cfg, "layers_block_type");
    int listed = lt && !cJSON_IsNull(lt);
    if (listed && (!cJSON_IsArray(lt) || cJSON_GetArraySize(lt) != m->L))
        return fl_fail(err, FL_EINPUT, "%s/config.json: layer_types must list %ld layer types", dir(m), m->L);
    for (long i = 0; i < m->L; i++) {
        const cJSON *e = listed ? cJSON_GetArrayItem(lt, (int)i) : NULL;
        const char *t = !listed ? "mamba" : cJSON_IsString(e) ? e->valuestring : "";
        int mamba = !strcmp(t, "mamba") || !strcmp(t, "linear_attention");
        if (!mamba && strcmp(t, "attention") && strcmp(t, "full_attention"))
            return fl_fail(err, FL_EINPUT, "%s/config.json: layer_types[%ld] is neither mamba nor attention",
                           dir(m), i);
        g->ly[i].mamba = mamba;
        g->n_mamba += mamba;
    }
    return FL_OK;
}

/* BambaMixer.__init__: inner size mamba_expand * hidden_size, heads of
 * mamba_d_head ("auto": inner / heads), the gated norm over all of it
 * (BambaRMSNormGated), conv activation hidden_act, no time-step clamp. */
static fl_status parse_mamba(fwd_model *m, gr_model *g, fl_error *err)
{
    ckpt_view c = m->cfg;
    fwd_mamba_dims *d = &g->md;
    double wide = ckpt_view_num(c, "mamba_expand", 2, 2) * (double)m->H;
    long inner = wide >= 1 && wide <= (double)FWD_MAMBA_MAX_INNER ? (long)wide : -1;
    d->heads = ckpt_view_int(c, "mamba_n_heads", 128);
    d->head_dim = ckpt_view_int(c, "mamba_d_head", d->heads > 0 && inner > 0 ? inner / d->heads : 0);
    d->state = ckpt_view_int(c, "mamba_d_state", 256);
    d->groups = ckpt_view_int(c, "mamba_n_groups", 1);
    d->kernel = ckpt_view_int(c, "mamba_d_conv", 4);
    d->has_norm = 1;
    d->norm_group = inner;
    d->act = m->act;
    d->eps = m->eps;
    d->dt_min = 0;
    d->dt_max = INFINITY;
    d->in_mult = 1;
    for (int k = 0; k < 5; k++)
        d->mup[k] = 1;
    if (inner < 0 || fwd_mamba_inner(d) != inner)
        return fl_fail(err, FL_EINPUT, "%s/config.json: mamba_n_heads %ld x mamba_d_head %ld is not mamba_expand x "
                       "hidden_size = %g", dir(m), d->heads, d->head_dim, wide);
    return fwd_mamba_check(m, d, err);
}

static fl_status parse(fwd_model *m, gr_model *g, fl_error *err)
{
    ckpt_view c = m->cfg;
    g->E = ckpt_view_int(c, "num_local_experts", 8);
    g->Is = ckpt_view_int(c, "shared_intermediate_size", g->hybrid ? 1024 : 0);
    if (g->E < 0 || g->E > GR_MAX_DIM || g->Is < 0 || g->Is > GR_MAX_DIM || (!g->hybrid && g->E == 0))
        return fl_fail(err, FL_EINPUT, "%s/config.json: num_local_experts %ld, shared_intermediate_size %ld are not "
                       "valid", dir(m), g->E, g->Is);
    if (g->E && (m->topk < 1 || m->topk > g->E))
        return fl_fail(err, FL_EINPUT, "%s/config.json: num_experts_per_tok %ld with %ld experts", dir(m), m->topk,
                       g->E);
    /* GraniteMoeModel always rotates; GraniteMoeHybridModel only with
     * position_embedding_type "rope" (Granite 4.0-H: "nope"). */
    const cJSON *pe = ckpt_view_get(c, "position_embedding_type");
    g->rope = !g->hybrid || (cJSON_IsString(pe) && !strcmp(pe->valuestring, "rope"));
    if (!g->hybrid) {
        for (long i = 0; i < m->L; i++)
            g->ly[i].mamba = 0;
        return FL_OK;
    }
    fl_status s = parse_layer_types(m, g, err);
    return s == FL_OK && g->n_mamba ? parse_mamba(m, g, err) : s;
}

/* ----------------------------------------------------------------------------
 * Binding */

#define NAME(fmt) (snprintf(name, sizeof name, "%s" fmt, pre), name)

static fl_status bind_attention(fwd_model *m, fwd_layer *ly, const char *pre, fl_error *err)
{
    char name[512];
    long H = m->H, qd = m->nh * m->hd, kd = m->nkv * m->hd;
    fl_status s;
    if ((s = fwd_bind_mat(m, NAME("self_attn.q_proj.weight"), qd, H, 1, &ly->q, err)) != FL_OK ||
        (s = fwd_bind_mat(m, NAME("self_attn.k_proj.weight"), kd, H, 1, &ly->k, err)) != FL_OK ||
        (s = fwd_bind_mat(m, NAME("self_attn.v_proj.weight"), kd, H, 1, &ly->v, err)) != FL_OK ||
        (s = fwd_bind_mat(m, NAME("self_attn.o_proj.weight"), H, qd, 1, &ly->o, err)) != FL_OK ||
        (s = fwd_bind_vec(m, NAME("self_attn.q_proj.bias"), qd, 0, &ly->bq, err)) != FL_OK ||
        (s = fwd_bind_vec(m, NAME("self_attn.k_proj.bias"), kd, 0, &ly->bk, err)) != FL_OK ||
        (s = fwd_bind_vec(m, NAME("self_attn.v_proj.bias"), kd, 0, &ly->bv, err)) != FL_OK)
        return s;
    return fwd_bind_vec(m, NAME("self_attn.o_proj.bias"), H, 0, &ly->bo, err);
}

/* A float 3-D tensor [E, a, b] with the given trailing sizes (b < 0: any). */
static fl_status bind_3d(const fwd_model *m, const char *name, long E, long a, long b, const ckpt_tensor **out,
                         fl_error *err)
{
    const ckpt_tensor *t = ckpt_find(m->ck, name);
    if (!t)
        return fl_fail(err, FL_EINPUT, "%s: tensor '%s' is missing", dir(m), name);
    const uint64_t *sh = t->t->shape;
    if (t->t->ndim != 3 || !st_dtype_is_foldable(t->t->dtype) || sh[0] != (uint64_t)E ||
        (a >= 0 && sh[1] != (uint64_t)a) || (b >= 0 && sh[2] != (uint64_t)b) || sh[1] == 0 || sh[2] == 0 ||
        sh[1] > 4 * GR_MAX_DIM || sh[2] > 4 * GR_MAX_DIM)
        return fl_fail(err, FL_EINPUT, "%s: tensor '%s' should be float experts [%ld, %ld, %ld]", dir(m), name, E,
                       a, b);
    *out = t;
    m->mp->total += st_nbytes(t->t);
    return FL_OK;
}

/* GraniteMoeMoE: router.layer [E, H]; the ParallelExperts input_linear
 * [E, 2I, H] and output_linear [E, H, I], one slab per expert. */
static fl_status bind_experts(fwd_model *m, const gr_model *g, fwd_layer *ly, const char *pre, fl_error *err)
{
    char name[512];
    const ckpt_tensor *gu, *dn;
    fl_status s;
    if ((s = fwd_bind_mat(m, NAME("block_sparse_moe.router.layer.weight"), g->E, m->H, 1, &ly->router, err)) !=
            FL_OK ||
        (s = bind_3d(m, NAME("block_sparse_moe.input_linear.weight"), g->E, -1, m->H, &gu, err)) != FL_OK)
        return s;
    long I2 = (long)gu->t->shape[1], I = I2 / 2;
    if (I2 % 2)
        return fl_fail(err, FL_EINPUT, "%s: '%s' has an odd number of rows (%ld): gate and up halves", dir(m),
                       gu->name, I2);
    if ((s = bind_3d(m, NAME("block_sparse_moe.output_linear.weight"), g->E, m->H, I, &dn, err)) != FL_OK ||
        (s = fwd_alloc_experts(ly, g->E, err)) != FL_OK)
        return s;
    ly->fused = 1;
    for (long e = 0; e < g->E; e++) {
        ly->e_gate_up[e] = fwd_slab(gu, e, I2, m->H, 0);
        ly->e_down[e] = fwd_slab(dn, e, m->H, I, 0);
    }
    if (I > m->max_inter)
        m->max_inter = I;
    if (g->E > m->max_experts)
        m->max_experts = g->E;
    m->moe_layers++;
    return FL_OK;
}

static fl_status bind_shared(fwd_model *m, const gr_model *g, gr_layer *gl, const char *pre, fl_error *err)
{
    char name[512];
    fl_status s;
    if ((s = fwd_bind_mat(m, NAME("shared_mlp.input_linear.weight"), 2 * g->Is, m->H, 1, &gl->sh_in, err)) !=
            FL_OK ||
        (s = fwd_bind_mat(m, NAME("shared_mlp.output_linear.weight"), m->H, g->Is, 1, &gl->sh_out, err)) != FL_OK)
        return s;
    if (g->Is > m->max_inter)
        m->max_inter = g->Is;
    return FL_OK;
}

static fl_status bind_layer(fwd_model *m, gr_model *g, const char *prefix, long i, fl_error *err)
{
    char pre[256], name[512];
    gr_layer *gl = &g->ly[i];
    fwd_layer *ly = &m->layers[i];
    snprintf(pre, sizeof pre, "%slayers.%ld.", prefix, i);
    fl_status s;
    if ((s = fwd_bind_norm(m, NAME("input_layernorm.weight"), m->H, &ly->attn_norm, err)) != FL_OK ||
        (s = fwd_bind_norm(m, NAME("post_attention_layernorm.weight"), m->H, &ly->mlp_norm, err)) != FL_OK)
        return s;
    if (gl->mamba)
        s = fwd_mamba_bind(m, NAME("mamba."), &g->md, &gl->mb, err);
    else
        s = bind_attention(m, ly, pre, err);
    if (s == FL_OK && g->E)
        s = bind_experts(m, g, ly, pre, err);
    if (s == FL_OK && g->Is)
        s = bind_shared(m, g, gl, pre, err);
    ly->inv_freq = g->rope ? m->freq_global : NULL;
    ly->rope_af = (float)m->af_global;
    return s;
}
#undef NAME

static void gr_close(fwd_model *m)
{
    gr_model *g = m->ext;
    if (!g)
        return;
    for (long i = 0; g->ly && i < m->L; i++)
        fwd_mamba_free(&g->ly[i].mb);
    free(g->ly);
    free(g);
    m->ext = NULL;
}

static fl_status gr_open_as(fwd_model *m, const char *prefix, int hybrid, fl_error *err)
{
    gr_model *g = calloc(1, sizeof *g);
    if (!g || !(g->ly = calloc((size_t)m->L, sizeof *g->ly))) {
        free(g);
        return fl_fail(err, FL_EIO, "out of memory");
    }
    m->ext = g;
    g->hybrid = hybrid;
    fl_status s = parse(m, g, err);
    for (long i = 0; s == FL_OK && i < m->L; i++)
        s = bind_layer(m, g, prefix, i, err);
    return s;
}

static fl_status gr_open(fwd_model *m, const char *prefix, fl_error *err) { return gr_open_as(m, prefix, 0, err); }
static fl_status gr_open_hybrid(fwd_model *m, const char *prefix, fl_error *err)
{
    return gr_open_as(m, prefix, 1, err);
}

/* ----------------------------------------------------------------------------
 * The pass */

/* GraniteMoeMoE.forward (routed experts, pinned to the source's choice in
 * verify's output pass) plus the shared MLP, into out. */
static fl_status ffn(const fwd_model *m, const gr_model *g, const gr_layer *gl, const fwd_layer *ly,
                     const float *h, long T, fwd_bufs *b, float *out, float *tmp, fl_error *err)
{
    long H = m->H, E = g->E, K = m->topk;
    fl_status s = FL_OK;
    memset(out, 0, (size_t)(T * H) * sizeof *out);
    if (E) {
        if ((s = fwd_matmul(m, &ly->router, NULL, h, T, b->router, err)) != FL_OK)
            return s;
        for (long t = 0; t < T; t++) {
            long *sel = b->sel + t * K;
            float *w = b->selw + t * K;
            fwd_route(m, ly, b->router + t * E, E, K, sel, w, 0);
            if (fwd_route_pin(m, sel, E, K))
                fwd_route(m, ly, b->router + t * E, E, K, sel, w, 1);
        }
        if ((s = fwd_experts(m, ly, h, T, b, out, err)) != FL_OK)
            return s;
    }
    if (!gl->sh_in.t)
        return FL_OK;
    if ((s = fwd_gated_mlp(m, NULL, NULL, &gl->sh_in, &gl->sh_out, NULL, NULL, NULL, h, T, b, tmp, err)) != FL_OK)
        return s;
    for (long i = 0; i < T * H; i++)
        out[i] += tmp[i];
    return FL_OK;
}

static void add_scaled(float *x, const float *y, double k, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] += (float)(k * y[i]);
}

static fl_status gr_run(const fwd_model *m, const int32_t *tokens, float *x, long T, fwd_bufs *b, fl_error *err)
{
    (void)tokens;
    const gr_model *g = m->ext;
    size_t n = (size_t)T * (size_t)m->H;
    float *y = malloc(n * sizeof *y), *tmp = malloc(n * sizeof *tmp);
    fl_status s = y && tmp ? FL_OK : fl_fail(err, FL_EIO, "out of memory for %ld tokens", T);
    for (long l = 0; s == FL_OK && l < m->L; l++) {
        const gr_layer *gl = &g->ly[l];
        const fwd_layer *ly = &m->layers[l];
        memcpy(b->h, x, n * sizeof *x);
        fwd_norm_rows(m, &ly->attn_norm, b->h, T, m->H);
        s = gl->mamba ? fwd_mamba_run(m, &gl->mb, b->h, T, y, err) : fwd_attention(m, ly, b->h, T, b, y, err);
        if (s != FL_OK)
            break;
        add_scaled(x, y, m->residual_mult, n);
        memcpy(b->h, x, n * sizeof *x);
        fwd_norm_rows(m, &ly->mlp_norm, b->h, T, m->H);
        if ((s = ffn(m, g, gl, ly, b->h, T, b, y, tmp, err)) == FL_OK)
            add_scaled(x, y, m->residual_mult, n);
    }
    free(y);
    free(tmp);
    return s;
}

static void gr_describe(const fwd_model *m, char *buf, size_t cap)
{
    const gr_model *g = m->ext;
    int n = g->hybrid ? snprintf(buf, cap, ", Mamba-2 in %ld of %ld layers", g->n_mamba, m->L) : 0;
    if (n < 0 || (size_t)n >= cap)
        return;
    /* the shared describe() has said how many layers are MoE */
    snprintf(buf + n, cap - (size_t)n, "%s, %s attention", g->Is ? ", shared MLP" : "", g->rope ? "RoPE" : "NoPE");
}

const fwd_block FWD_GRANITE = {gr_open, gr_run, gr_describe, gr_close, .rope = 1};
const fwd_block FWD_GRANITE_HYBRID = {gr_open_hybrid, gr_run, gr_describe, gr_close, .rope = 1};
