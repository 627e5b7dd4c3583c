/* forward_hybrid.c — the hybrid Mamba layer stacks of Nemotron-H and
 * Falcon-H1 for the reference forward pass (fwd_blocks, forward_internal.h;
 * the Mamba-2 mixer is forward_mamba.c's).  docs/architectures.md cites
 * each rule.
 *
 * Nemotron-H (nemotron_h/modeling_nemotron_h.py, NemotronHBlock): one norm
 * per block and one mixer, x += mixer(norm(x)), the mixer by the block type:
 * Mamba-2; attention without RoPE (NemotronHAttention, scale head_dim^-1/2);
 * an MLP down(relu2(up(h))); or MoE: the DeepSeek router on h (sigmoid,
 * correction bias, groups), relu2 experts on h, or on fc1_latent_proj(h)
 * and then back through fc2_latent_proj, plus the shared expert on h.
 *
 * Falcon-H1 (falcon_h1/modular_falcon_h1.py, FalconH1DecoderLayer): the
 * parallel block h = input_layernorm(x),
 *   x += ssm_out_multiplier * mamba(h)
 *      + attention_out_multiplier * attention(attention_in_multiplier * h)
 * (keys times key_multiplier), then x += mlp(pre_ff_layernorm(x)) with
 * mlp = down(up(h) * act(gate(h) * m_gate)) * m_down. */
#include "forward_internal.h"

#include "flashify/safetensors.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HY_MAX_DIM 65536

static const char *dir(const fwd_model *m) { return m->ck->dir; }

#define NAME(fmt) (snprintf(name, sizeof name, "%s" fmt, pre), name)

/* q/k/v/o "<pre><what>_proj" with biases where stored. */
static fl_status bind_qkvo(fwd_model *m, fwd_layer *ly, const char *pre, fl_error *err)
{
    char name[512];
    long H = m->H, qd = m->nh * m->hd, kd = m->nkv * m->hd;
    struct {
        const char *w, *b;
        long rows, cols;
        fwd_mat *mat;
        float **bias;
    } p[4] = {{"q_proj.weight", "q_proj.bias", qd, H, &ly->q, &ly->bq},
              {"k_proj.weight", "k_proj.bias", kd, H, &ly->k, &ly->bk},
              {"v_proj.weight", "v_proj.bias", kd, H, &ly->v, &ly->bv},
              {"o_proj.weight", "o_proj.bias", H, qd, &ly->o, &ly->bo}};
    fl_status s = FL_OK;
    for (int i = 0; i < 4 && s == FL_OK; i++) {
        snprintf(name, sizeof name, "%s%s", pre, p[i].w);
        if ((s = fwd_bind_mat(m, name, p[i].rows, p[i].cols, 1, p[i].mat, err)) == FL_OK) {
            snprintf(name, sizeof name, "%s%s", pre, p[i].b);
            s = fwd_bind_vec(m, name, p[i].rows, 0, p[i].bias, err);
        }
    }
    return s;
}

/* An nn.Linear "<base>.weight" [rows, cols] (rows < 0: any) with its bias
 * where stored. */
static fl_status bind_linear(fwd_model *m, const char *base, long rows, long cols, fwd_mat *w, float **bias,
                             fl_error *err)
{
    char name[600];
    snprintf(name, sizeof name, "%s.weight", base);
    fl_status s = fwd_bind_mat(m, name, rows, cols, 1, w, err);
    snprintf(name, sizeof name, "%s.bias", base);
    return s == FL_OK && bias ? fwd_bind_vec(m, name, w->rows, 0, bias, err) : s;
}

/* y = down(act(up(x))) on n rows (the relu2 MLPs and experts of Nemotron-H). */
static fl_status plain_mlp(const fwd_model *m, const fwd_mat *up, const float *bu, const fwd_mat *down,
                           const float *bd, const float *x, long n, float *hid, float *y, fl_error *err)
{
    fl_status s = fwd_matmul(m, up, bu, x, n, hid, err);
    for (long i = 0; s == FL_OK && i < n * up->rows; i++)
        hid[i] = fwd_act(m, hid[i]);
    return s == FL_OK ? fwd_matmul(m, down, bd, hid, n, y, err) : s;
}

/* ============================================================================
 * Nemotron-H */

enum { NH_MAMBA, NH_ATTN, NH_MLP, NH_MOE };

typedef struct {
    int type;
    fwd_mamba mb;
    fwd_mat up, down, sh_up, sh_down, lat_in, lat_out;
    float *b_up, *b_down, *b_sh_up, *b_sh_down, *b_lat_in, *b_lat_out;
    long inner;          /* widest of the MLP / expert / shared intermediate sizes */
} nh_layer;

typedef struct {
    nh_layer *ly;
    fwd_mamba_dims md;
    long E, latent;      /* routed experts, moe_latent_size (0: none) */
    long count[4];       /* blocks of each type */
    int fused;           /* transformers 5 fused experts */
} nh_model;

/* The first present key of a "legacy, current" pair (NemotronHConfig.__post_init__
 * lets the legacy mamba_* name win). */
static double num_alt(ckpt_view c, const char *legacy, const char *key, double def)
{
    return ckpt_view_get(c, legacy) ? ckpt_view_num(c, legacy, def, def) : ckpt_view_num(c, key, def, def);
}

static long int_alt(ckpt_view c, const char *legacy, const char *key, long def)
{
    return ckpt_view_get(c, legacy) ? ckpt_view_int(c, legacy, def) : ckpt_view_int(c, key, def);
}

/* Block i's type from layers_block_type, layer_types or the Hub's
 * hybrid_override_pattern (M, *, -, E); legacy names mamba / attention. */
static fl_status parse_blocks(fwd_model *m, nh_model *g, fl_error *err)
{
    static const char *const keys[] = {"layers_block_type", "layer_types", "hybrid_override_pattern"};
    static const struct {
        const char *name;
        int type;
    } names[] = {{"linear_attention", NH_MAMBA}, {"mamba", NH_MAMBA}, {"M", NH_MAMBA},  {"full_attention", NH_ATTN},
                 {"attention", NH_ATTN},         {"*", NH_ATTN},       {"mlp", NH_MLP},  {"-", NH_MLP},
                 {"moe", NH_MOE},                {"E", NH_MOE}};
    const cJSON *v = NULL;
    for (size_t k = 0; k < 3 && (!v || cJSON_IsNull(v)); k++)
        v = ckpt_view_get(m->cfg, keys[k]);
    for (long i = 0; i < m->L; i++) {
        char one[2] = {0, 0};
        const char *t = "";
        if (cJSON_IsArray(v) && i < cJSON_GetArraySize(v)) {
            const cJSON *e = cJSON_GetArrayItem(v, (int)i);
            t = cJSON_IsString(e) ? e->valuestring : "";
        } else if (cJSON_IsString(v) && (size_t)i < strlen(v->valuestring)) {
            one[0] = v->valuestring[i];
            t = one;
        }
        size_t j = 0;
        while (j < sizeof names / sizeof names[0] && strcmp(names[j].name, t))
            j++;
        if (j == sizeof names / sizeof names[0])
            return fl_fail(err, FL_EINPUT, "%s/config.json: block %ld has no known type (layers_block_type or "
                           "hybrid_override_pattern: mamba, attention, mlp, moe)", dir(m), i);
        g->ly[i].type = names[j].type;
        g->count[names[j].type]++;
    }
    return FL_OK;
}

/* NemotronHMamba2Mixer: inner size mamba_num_heads * mamba_head_dim, the
 * gated norm per group of inner / n_groups (Zamba2RMSNormGated), the
 * conv's mamba_hidden_act, torch_forward's clamp(dt, time_step_min). */
static fl_status parse_nh(fwd_model *m, nh_model *g, fl_error *err)
{
    ckpt_view c = m->cfg;
    fwd_mamba_dims *d = &g->md;
    d->heads = ckpt_view_int(c, "mamba_num_heads", 128);
    d->head_dim = ckpt_view_int(c, "mamba_head_dim", 64);
    d->state = ckpt_view_int(c, "ssm_state_size", 128);
    d->groups = int_alt(c, "mamba_n_groups", "n_groups", 8);
    d->kernel = int_alt(c, "mamba_d_conv", "conv_kernel", 4);
    d->has_norm = 1;
    long inner = fwd_mamba_inner(d);
    d->norm_group = inner > 0 && d->groups > 0 ? inner / d->groups : 0;
    d->eps = m->eps;
    d->dt_min = num_alt(c, "mamba_dt_min", "time_step_min", 0.001);
    d->dt_max = INFINITY;
    d->in_mult = 1;
    for (int k = 0; k < 5; k++)
        d->mup[k] = 1;
    const cJSON *act = ckpt_view_get(c, "mamba_hidden_act");
    if (act && (!cJSON_IsString(act) || (strcmp(act->valuestring, "silu") && strcmp(act->valuestring, "swish"))))
        return fl_fail(err, FL_EINPUT, "%s/config.json: mamba_hidden_act must be silu for the reference forward "
                       "pass", dir(m));
    d->act = ACT_SILU;
    g->E = int_alt(c, "num_local_experts", "n_routed_experts", 8);
    g->latent = ckpt_view_int(c, "moe_latent_size", 0);
    if (g->count[NH_MOE] && (g->E < 1 || g->E > HY_MAX_DIM || m->topk < 1 || m->topk > g->E || g->latent < 0 ||
                             g->latent > HY_MAX_DIM))
        return fl_fail(err, FL_EINPUT, "%s/config.json: n_routed_experts %ld, num_experts_per_tok %ld, "
                       "moe_latent_size %ld are not valid", dir(m), g->E, m->topk, g->latent);
    return g->count[NH_MAMBA] ? fwd_mamba_check(m, d, err) : FL_OK;
}

static void grow_inner(fwd_model *m, nh_layer *nl, long I)
{
    if (I > nl->inner)
        nl->inner = I;
    if (I > m->max_inter)
        m->max_inter = I;
}

/* NemotronHExperts: per expert mixer.experts.{e}.up_proj / down_proj, or
 * fused up_proj [E, I, in] / down_proj [E, in, I]; in = H or the latent. */
static fl_status bind_nh_experts(fwd_model *m, nh_model *g, nh_layer *nl, fwd_layer *ly, const char *pre, long in,
                                 fl_error *err)
{
    char name[512];
    fl_status s = fwd_alloc_experts(ly, g->E, err);
    const ckpt_tensor *up = fwd_findf(m, name, sizeof name, "%smixer.experts.up_proj", pre);
    if (s == FL_OK && up) {
        const ckpt_tensor *dn = fwd_findf(m, name, sizeof name, "%smixer.experts.down_proj", pre);
        const uint64_t *a = up->t->shape, *b = dn ? dn->t->shape : NULL;
        if (!dn || up->t->ndim != 3 || dn->t->ndim != 3 || a[0] != (uint64_t)g->E || a[2] != (uint64_t)in ||
            a[1] == 0 || a[1] > 4 * HY_MAX_DIM || b[0] != a[0] || b[1] != (uint64_t)in || b[2] != a[1] ||
            !st_dtype_is_foldable(up->t->dtype) || !st_dtype_is_foldable(dn->t->dtype))
            return fl_fail(err, FL_EINPUT, "%s: fused experts '%smixer.experts.up_proj' / 'down_proj' must be float "
                           "[%ld, I, %ld] and [%ld, %ld, I]", dir(m), pre, g->E, in, g->E, in);
        m->mp->total += st_nbytes(up->t) + st_nbytes(dn->t);
        for (long e = 0; e < g->E; e++) {
            ly->e_up[e] = fwd_slab(up, e, (long)a[1], in, 0);
            ly->e_down[e] = fwd_slab(dn, e, in, (long)a[1], 0);
        }
        g->fused = 1;
        grow_inner(m, nl, (long)a[1]);
        return FL_OK;
    }
    for (long e = 0; e < g->E && s == FL_OK; e++) {
        snprintf(name, sizeof name, "%smixer.experts.%ld.up_proj", pre, e);
        if ((s = bind_linear(m, name, e ? ly->e_up[0].rows : -1, in, &ly->e_up[e], NULL, err)) == FL_OK) {
            snprintf(name, sizeof name, "%smixer.experts.%ld.down_proj", pre, e);
            s = bind_linear(m, name, in, ly->e_up[e].rows, &ly->e_down[e], NULL, err);
        }
    }
    if (s == FL_OK)
        grow_inner(m, nl, ly->e_up[0].rows);
    return s;
}

static fl_status bind_nh_moe(fwd_model *m, nh_model *g, nh_layer *nl, fwd_layer *ly, const char *pre,
                             fl_error *err)
{
    char name[512];
    long H = m->H, in = g->latent ? g->latent : H;
    fl_status s;
    if ((s = fwd_bind_mat(m, NAME("mixer.gate.weight"), g->E, H, 1, &ly->router, err)) != FL_OK ||
        (s = fwd_bind_vec(m, NAME("mixer.gate.e_score_correction_bias"), g->E, 0, &ly->e_bias, err)) != FL_OK ||
        (s = bind_linear(m, NAME("mixer.shared_experts.up_proj"), -1, H, &nl->sh_up, &nl->b_sh_up, err)) != FL_OK ||
        (s = bind_linear(m, NAME("mixer.shared_experts.down_proj"), H, nl->sh_up.rows, &nl->sh_down, &nl->b_sh_down,
                         err)) != FL_OK)
        return s;
    grow_inner(m, nl, nl->sh_up.rows);
    if (g->latent &&
        ((s = bind_linear(m, NAME("mixer.fc1_latent_proj"), in, H, &nl->lat_in, &nl->b_lat_in, err)) != FL_OK ||
         (s = bind_linear(m, NAME("mixer.fc2_latent_proj"), H, in, &nl->lat_out, &nl->b_lat_out, err)) != FL_OK))
        return s;
    if (g->E > m->max_experts)
        m->max_experts = g->E;
    return bind_nh_experts(m, g, nl, ly, pre, in, err);
}

static fl_status bind_nh_block(fwd_model *m, nh_model *g, const char *prefix, long i, fl_error *err)
{
    char pre[256], name[512];
    nh_layer *nl = &g->ly[i];
    fwd_layer *ly = &m->layers[i];
    snprintf(pre, sizeof pre, "%slayers.%ld.", prefix, i);
    fl_status s = fwd_bind_norm(m, NAME("norm.weight"), m->H, &ly->attn_norm, err);
    if (s != FL_OK)
        return s;
    switch (nl->type) {
    case NH_MAMBA:
        return fwd_mamba_bind(m, NAME("mixer."), &g->md, &nl->mb, err);
    case NH_ATTN:
        return bind_qkvo(m, ly, NAME("mixer."), err);   /* inv_freq NULL: no RoPE */
    case NH_MLP:
        if ((s = bind_linear(m, NAME("mixer.up_proj"), -1, m->H, &nl->up, &nl->b_up, err)) == FL_OK &&
            (s = bind_linear(m, NAME("mixer.down_proj"), m->H, nl->up.rows, &nl->down, &nl->b_down, err)) == FL_OK)
            grow_inner(m, nl, nl->up.rows);
        return s;
    default:
        return bind_nh_moe(m, g, nl, ly, pre, err);
    }
}

static void nh_close(fwd_model *m)
{
    nh_model *g = m->ext;
    if (!g)
        return;
    for (long i = 0; g->ly && i < m->L; i++) {
        nh_layer *nl = &g->ly[i];
        fwd_mamba_free(&nl->mb);
        free(nl->b_up); free(nl->b_down); free(nl->b_sh_up); free(nl->b_sh_down);
        free(nl->b_lat_in); free(nl->b_lat_out);
    }
    free(g->ly);
    free(g);
    m->ext = NULL;
}

static fl_status nh_open(fwd_model *m, const char *prefix, fl_error *err)
{
    nh_model *g = calloc(1, sizeof *g);
    if (!g || !(g->ly = calloc((size_t)m->L, sizeof *g->ly))) {
        free(g);
        return fl_fail(err, FL_EIO, "out of memory");
    }
    m->ext = g;
    fl_status s = parse_blocks(m, g, err);
    if (s == FL_OK)
        s = parse_nh(m, g, err);
    for (long i = 0; s == FL_OK && i < m->L; i++)
        s = bind_nh_block(m, g, prefix, i, err);
    return s;
}

/* The routed experts on xin [T][in]: each on the tokens that chose it,
 * weighted, summed into out [T][in]. */
static fl_status nh_routed(const fwd_model *m, const fwd_layer *ly, const float *xin, long T, long in, long inner,
                           const fwd_bufs *b, float *out, fl_error *err)
{
    size_t tz = (size_t)T;
    long K = m->topk;
    long *idx = malloc(tz * sizeof *idx);
    float *wt = malloc(tz * sizeof *wt), *xe = malloc(tz * (size_t)in * sizeof *xe);
    float *hid = malloc(tz * (size_t)inner * sizeof *hid), *ye = malloc(tz * (size_t)in * sizeof *ye);
    fl_status s = idx && wt && xe && hid && ye ? FL_OK : fl_fail(err, FL_EIO, "out of memory");
    memset(out, 0, tz * (size_t)in * sizeof *out);
    for (long e = 0; s == FL_OK && e < ly->n_experts; e++) {
        long n = fwd_gather_expert(b, e, T, K, xin, in, idx, wt, xe);
        if (!n) {
            fwd_meter_add(m, &ly->e_up[e]);
            fwd_meter_add(m, &ly->e_down[e]);
            continue;
        }
        s = plain_mlp(m, &ly->e_up[e], NULL, &ly->e_down[e], NULL, xe, n, hid, ye, err);
        for (long i = 0; s == FL_OK && i < n; i++)
            for (long c = 0; c < in; c++)
                out[idx[i] * in + c] += wt[i] * ye[i * in + c];
    }
    free(idx); free(wt); free(xe); free(hid); free(ye);
    return s;
}

/* NemotronHMoE.forward: routing on h (pinned to the source's choice in
 * verify's output pass), the experts (through the latent projections when
 * there are any), plus the shared expert on h. */
static fl_status nh_moe(const fwd_model *m, const nh_model *g, const nh_layer *nl, const fwd_layer *ly,
                        const float *h, long T, fwd_bufs *b, float *out, fl_error *err)
{
    long E = g->E, K = m->topk, H = m->H, in = g->latent ? g->latent : H;
    size_t tz = (size_t)T;
    float *lat = g->latent ? malloc(tz * (size_t)in * sizeof *lat) : NULL;
    float *lo = g->latent ? malloc(tz * (size_t)in * sizeof *lo) : NULL;
    float *hid = malloc(tz * (size_t)nl->inner * sizeof *hid), *sh = malloc(tz * (size_t)H * sizeof *sh);
    fl_status s = hid && sh && (!g->latent || (lat && lo)) ? FL_OK : fl_fail(err, FL_EIO, "out of memory");
    if (s == FL_OK)
        s = fwd_matmul(m, &ly->router, NULL, h, T, b->router, err);
    for (long t = 0; s == FL_OK && t < T; t++) {
        long *sel = b->sel + t * K;
        float *w = b->selw + t * K;
        fwd_route(m, ly, b->router + t * E, E, K, sel, w, 0);
        if (fwd_route_pin(m, sel, E, K))
            fwd_route(m, ly, b->router + t * E, E, K, sel, w, 1);
    }
    if (s == FL_OK && g->latent && (s = fwd_matmul(m, &nl->lat_in, nl->b_lat_in, h, T, lat, err)) == FL_OK &&
        (s = nh_routed(m, ly, lat, T, in, nl->inner, b, lo, err)) == FL_OK)
        s = fwd_matmul(m, &nl->lat_out, nl->b_lat_out, lo, T, out, err);
    else if (s == FL_OK && !g->latent)
        s = nh_routed(m, ly, h, T, H, nl->inner, b, out, err);
    if (s == FL_OK && (s = plain_mlp(m, &nl->sh_up, nl->b_sh_up, &nl->sh_down, nl->b_sh_down, h, T, hid, sh, err)) ==
                          FL_OK)
        for (size_t i = 0; i < tz * (size_t)H; i++)
            out[i] += sh[i];
    free(lat); free(lo); free(hid); free(sh);
    return s;
}

static fl_status nh_run(const fwd_model *m, const int32_t *tokens, float *x, long T, fwd_bufs *b, fl_error *err)
{
    (void)tokens;
    const nh_model *g = m->ext;
    size_t n = (size_t)T * (size_t)m->H;
    long inner = 1;
    for (long l = 0; l < m->L; l++)
        inner = g->ly[l].inner > inner ? g->ly[l].inner : inner;
    float *y = malloc(n * sizeof *y), *hid = malloc((size_t)T * (size_t)inner * sizeof *hid);
    fl_status s = y && hid ? FL_OK : fl_fail(err, FL_EIO, "out of memory for %ld tokens", T);
    for (long l = 0; s == FL_OK && l < m->L; l++) {
        const nh_layer *nl = &g->ly[l];
        const fwd_layer *ly = &m->layers[l];
        memcpy(b->h, x, n * sizeof *x);
        fwd_norm_rows(m, &ly->attn_norm, b->h, T, m->H);
        switch (nl->type) {
        case NH_MAMBA: s = fwd_mamba_run(m, &nl->mb, b->h, T, y, err); break;
        case NH_ATTN: s = fwd_attention(m, ly, b->h, T, b, y, err); break;
        case NH_MLP: s = plain_mlp(m, &nl->up, nl->b_up, &nl->down, nl->b_down, b->h, T, hid, y, err); break;
        default: s = nh_moe(m, g, nl, ly, b->h, T, b, y, err); break;
        }
        for (size_t i = 0; s == FL_OK && i < n; i++)
            x[i] += y[i];
    }
    free(y);
    free(hid);
    return s;
}

static void nh_describe(const fwd_model *m, char *buf, size_t cap)
{
    const nh_model *g = m->ext;
    int n = snprintf(buf, cap, ", blocks: %ld Mamba-2, %ld attention (no RoPE), %ld MLP, %ld MoE", g->count[NH_MAMBA],
                     g->count[NH_ATTN], g->count[NH_MLP], g->count[NH_MOE]);
    if (g->count[NH_MOE] && n > 0 && (size_t)n < cap)
        snprintf(buf + n, cap - (size_t)n, " (%s experts%s)", g->fused ? "fused [E, I, H]" : "per-expert",
                 g->latent ? ", latent projections" : "");
}

const fwd_block FWD_NEMOTRON_H = {nh_open, nh_run, nh_describe, nh_close, .rope = 0};

/* ============================================================================
 * Falcon-H1 */

typedef struct {
    fwd_mamba mb;
    fwd_mat gate, up, down;
    float *bg, *bu, *bd;
} fh_layer;

typedef struct {
    fh_layer *ly;
    fwd_mamba_dims md;
    double attn_in, attn_out, ssm_out, m_gate, m_down;
} fh_model;

/* A number, or transformers 5's spelling of one JSON has no literal for,
 * {"__float__": "Infinity"} (configuration_utils._FLOAT_TAG_KEY); 0 when
 * it is neither. */
static int config_float(const cJSON *e, double *out)
{
    if (cJSON_IsNumber(e)) {
        *out = e->valuedouble;
        return 1;
    }
    const cJSON *tag = cJSON_IsObject(e) ? cJSON_GetObjectItemCaseSensitive(e, "__float__") : NULL;
    if (!cJSON_IsString(tag) || (strcmp(tag->valuestring, "Infinity") && strcmp(tag->valuestring, "-Infinity")))
        return 0;
    *out = tag->valuestring[0] == '-' ? -INFINITY : INFINITY;
    return 1;
}

/* The n numbers of the config list `key` into out (the defaults stay where
 * it is absent or null); -1 when it is not a list of n numbers. */
static int num_list(ckpt_view c, const char *key, double *out, int n)
{
    const cJSON *v = ckpt_view_get(c, key);
    if (!v || cJSON_IsNull(v))
        return 0;
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != n)
        return -1;
    for (int i = 0; i < n; i++)
        if (!config_float(cJSON_GetArrayItem(v, i), &out[i]))
            return -1;
    return 0;
}

/* FalconH1Mixer.__init__ / FalconH1Config: inner size mamba_d_ssm (class
 * default 1024; null: mamba_expand * hidden_size), heads of mamba_d_head
 * ("auto": inner / heads), the optional gated norm (mamba_rms_norm) per
 * group of inner / mamba_n_groups, norm_before_gate (default true), the
 * time_step_limit clamp, ssm_in_multiplier and the five ssm_multipliers. */
static fl_status parse_fh(fwd_model *m, fh_model *g, fl_error *err)
{
    ckpt_view c = m->cfg;
    fwd_mamba_dims *d = &g->md;
    double wide = ckpt_view_num(c, "mamba_d_ssm", 1024, ckpt_view_num(c, "mamba_expand", 2, 2) * (double)m->H);
    long inner = wide >= 1 && wide <= (double)FWD_MAMBA_MAX_INNER && wide == floor(wide) ? (long)wide : -1;
    d->heads = ckpt_view_int(c, "mamba_n_heads", 128);
    d->head_dim = ckpt_view_int(c, "mamba_d_head", d->heads > 0 && inner > 0 ? inner / d->heads : 0);
    d->state = ckpt_view_int(c, "mamba_d_state", 256);
    d->groups = ckpt_view_int(c, "mamba_n_groups", 1);
    d->kernel = ckpt_view_int(c, "mamba_d_conv", 4);
    d->has_norm = ckpt_view_bool(c, "mamba_rms_norm", 0);
    d->norm_before_gate = ckpt_view_bool(c, "mamba_norm_before_gate", 1);
    d->norm_group = d->groups > 0 && inner > 0 ? inner / d->groups : 0;
    d->act = m->act;
    d->eps = m->eps;
    double lim[2] = {0, INFINITY}, mlp[2] = {1, 1};
    for (int k = 0; k < 5; k++)
        d->mup[k] = 1;
    if (num_list(c, "time_step_limit", lim, 2) || num_list(c, "ssm_multipliers", d->mup, 5) ||
        num_list(c, "mlp_multipliers", mlp, 2))
        return fl_fail(err, FL_EINPUT, "%s/config.json: time_step_limit, ssm_multipliers and mlp_multipliers must "
                       "be lists of 2, 5 and 2 numbers", dir(m));
    d->dt_min = lim[0];
    d->dt_max = lim[1];
    d->in_mult = ckpt_view_num(c, "ssm_in_multiplier", 1, 1);
    g->ssm_out = ckpt_view_num(c, "ssm_out_multiplier", 1, 1);
    g->attn_in = ckpt_view_num(c, "attention_in_multiplier", 1, 1);
    g->attn_out = ckpt_view_num(c, "attention_out_multiplier", 1, 1);
    g->m_gate = mlp[0];
    g->m_down = mlp[1];
    /* FalconH1Attention: key_states * key_multiplier, a factor on every score. */
    m->attn_scale *= ckpt_view_num(c, "key_multiplier", 1, 1);
    if (inner < 0 || fwd_mamba_inner(d) != inner)
        return fl_fail(err, FL_EINPUT, "%s/config.json: mamba_n_heads %ld x mamba_d_head %ld is not the Mamba "
                       "inner size %g (mamba_d_ssm)", dir(m), d->heads, d->head_dim, wide);
    return fwd_mamba_check(m, d, err);
}

static fl_status bind_fh_layer(fwd_model *m, fh_model *g, const char *prefix, long i, fl_error *err)
{
    char pre[256], name[512];
    fh_layer *fl = &g->ly[i];
    fwd_layer *ly = &m->layers[i];
    long H = m->H;
    snprintf(pre, sizeof pre, "%slayers.%ld.", prefix, i);
    fl_status s;
    if ((s = fwd_bind_norm(m, NAME("input_layernorm.weight"), H, &ly->attn_norm, err)) != FL_OK ||
        (s = fwd_bind_norm(m, NAME("pre_ff_layernorm.weight"), H, &ly->mlp_norm, err)) != FL_OK ||
        (s = fwd_mamba_bind(m, NAME("mamba."), &g->md, &fl->mb, err)) != FL_OK ||
        (s = bind_qkvo(m, ly, NAME("self_attn."), err)) != FL_OK ||
        (s = bind_linear(m, NAME("feed_forward.gate_proj"), -1, H, &fl->gate, &fl->bg, err)) != FL_OK ||
        (s = bind_linear(m, NAME("feed_forward.up_proj"), fl->gate.rows, H, &fl->up, &fl->bu, err)) != FL_OK ||
        (s = bind_linear(m, NAME("feed_forward.down_proj"), H, fl->gate.rows, &fl->down, &fl->bd, err)) != FL_OK)
        return s;
    if (fl->gate.rows > m->max_inter)
        m->max_inter = fl->gate.rows;
    ly->inv_freq = m->freq_global;
    ly->rope_af = (float)m->af_global;
    return FL_OK;
}

static void fh_close(fwd_model *m)
{
    fh_model *g = m->ext;
    if (!g)
        return;
    for (long i = 0; g->ly && i < m->L; i++) {
        fwd_mamba_free(&g->ly[i].mb);
        free(g->ly[i].bg); free(g->ly[i].bu); free(g->ly[i].bd);
    }
    free(g->ly);
    free(g);
    m->ext = NULL;
}

static fl_status fh_open(fwd_model *m, const char *prefix, fl_error *err)
{
    fh_model *g = calloc(1, sizeof *g);
    if (!g || !(g->ly = calloc((size_t)m->L, sizeof *g->ly))) {
        free(g);
        return fl_fail(err, FL_EIO, "out of memory");
    }
    m->ext = g;
    fl_status s = parse_fh(m, g, err);
    for (long i = 0; s == FL_OK && i < m->L; i++)
        s = bind_fh_layer(m, g, prefix, i, err);
    return s;
}

/* FalconH1MLP.forward: down(up(x) * act(gate(x) * m_gate)) * m_down. */
static fl_status fh_mlp(const fwd_model *m, const fh_model *g, const fh_layer *fl, const float *h, long T,
                        fwd_bufs *b, float *out, fl_error *err)
{
    long I = fl->gate.rows;
    fl_status s;
    if ((s = fwd_matmul(m, &fl->gate, fl->bg, h, T, b->g, err)) != FL_OK ||
        (s = fwd_matmul(m, &fl->up, fl->bu, h, T, b->u, err)) != FL_OK)
        return s;
    for (long i = 0; i < T * I; i++)
        b->g[i] = b->u[i] * fwd_act(m, (float)(b->g[i] * g->m_gate));
    if ((s = fwd_matmul(m, &fl->down, fl->bd, b->g, T, out, err)) != FL_OK)
        return s;
    for (long i = 0; g->m_down != 1.0 && i < T * m->H; i++)
        out[i] = (float)(out[i] * g->m_down);
    return FL_OK;
}

static fl_status fh_layer_run(const fwd_model *m, const fh_model *g, long l, float *x, long T, fwd_bufs *b,
                              float *y, float *ya, fl_error *err)
{
    const fh_layer *fl = &g->ly[l];
    const fwd_layer *ly = &m->layers[l];
    size_t n = (size_t)T * (size_t)m->H;
    memcpy(b->h, x, n * sizeof *x);
    fwd_norm_rows(m, &ly->attn_norm, b->h, T, m->H);
    fl_status s = fwd_mamba_run(m, &fl->mb, b->h, T, y, err);
    for (size_t i = 0; s == FL_OK && i < n; i++)
        b->tmp[i] = (float)(b->h[i] * g->attn_in);   /* the attention reads h * attention_in_multiplier */
    if (s == FL_OK && (s = fwd_attention(m, ly, b->tmp, T, b, ya, err)) == FL_OK)
        for (size_t i = 0; i < n; i++)
            x[i] += (float)(y[i] * g->ssm_out) + (float)(ya[i] * g->attn_out);
    if (s != FL_OK)
        return s;
    memcpy(b->h, x, n * sizeof *x);
    fwd_norm_rows(m, &ly->mlp_norm, b->h, T, m->H);
    if ((s = fh_mlp(m, g, fl, b->h, T, b, y, err)) == FL_OK)
        for (size_t i = 0; i < n; i++)
            x[i] += y[i];
    return s;
}

static fl_status fh_run(const fwd_model *m, const int32_t *tokens, float *x, long T, fwd_bufs *b, fl_error *err)
{
    (void)tokens;
    size_t n = (size_t)T * (size_t)m->H;
    float *y = malloc(n * sizeof *y), *ya = malloc(n * sizeof *ya);
    fl_status s = y && ya ? FL_OK : fl_fail(err, FL_EIO, "out of memory for %ld tokens", T);
    for (long l = 0; s == FL_OK && l < m->L; l++)
        s = fh_layer_run(m, m->ext, l, x, T, b, y, ya, err);
    free(y);
    free(ya);
    return s;
}

static void fh_describe(const fwd_model *m, char *buf, size_t cap)
{
    const fh_model *g = m->ext;
    snprintf(buf, cap, ", parallel Mamba-2 (%ld heads%s) and attention in every layer", g->md.heads,
             g->md.has_norm ? ", gated norm" : "");
}

const fwd_block FWD_FALCON_H1 = {fh_open, fh_run, fh_describe, fh_close, .rope = 1};
