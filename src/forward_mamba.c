/* forward_mamba.c — the Mamba-2 mixer of the reference forward pass
 * (forward_internal.h): Granite 4.0-H's mamba (BambaMixer), Nemotron-H's
 * mixer (NemotronHMamba2Mixer) and Falcon-H1's mamba (FalconH1Mixer), as
 * their torch_forward computes a prompt without cache (transformers
 * bamba/modeling_bamba.py, nemotron_h/modeling_nemotron_h.py,
 * falcon_h1/modular_falcon_h1.py; docs/architectures.md §mamba2):
 *
 *   p = in_proj(h * in_mult), times mup per part:  [z (I) | xBC (I + 2 G N) | dt (heads)]
 *   xBC = act(causal depthwise conv1d over time, kernel K, + bias) = [x (I) | B (G N) | C (G N)]
 *   dt = clamp(softplus(dt + dt_bias), dt_min, dt_max);  A = -exp(A_log)
 *   per head h, its group g = h / (heads / G), from S = 0 [head_dim][N]:
 *     S = exp(dt A) S + dt x B^T;   y = S C + D x
 *   (the recurrent form; transformers runs the chunked SSD form for a
 *   prompt, the same sums regrouped)
 *   o = w * rms(y * silu(z)) per group of norm_group channels, or Falcon-H1's
 *       norm_before_gate (w * rms(y)) * silu(z), or y * silu(z) without a norm
 *   out = out_proj(o)
 *
 * The recurrence and every statistic run in double, activations in float. */
#include "forward_internal.h"

#include "flashify/safetensors.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MB_MAX_DIM 65536
#define MB_MAX_KERNEL 64

static long inner(const fwd_mamba_dims *d) { return d->heads * d->head_dim; }
static long state_width(const fwd_mamba_dims *d) { return d->groups * d->state; }
static long conv_width(const fwd_mamba_dims *d) { return inner(d) + 2 * state_width(d); }
static long proj_width(const fwd_mamba_dims *d) { return inner(d) + conv_width(d) + d->heads; }

long fwd_mamba_inner(const fwd_mamba_dims *d)
{
    int ok = d->heads >= 1 && d->heads <= MB_MAX_DIM && d->head_dim >= 1 && d->head_dim <= MB_MAX_DIM;
    return ok ? d->heads * d->head_dim : -1;
}

fl_status fwd_mamba_check(const fwd_model *m, const fwd_mamba_dims *d, fl_error *err)
{
    int dims_ok = d->heads >= 1 && d->heads <= MB_MAX_DIM && d->head_dim >= 1 && d->head_dim <= MB_MAX_DIM &&
                  d->state >= 1 && d->state <= MB_MAX_DIM && d->groups >= 1 && d->groups <= d->heads &&
                  d->heads % d->groups == 0 && d->kernel >= 1 && d->kernel <= MB_MAX_KERNEL;
    if (!dims_ok || inner(d) > FWD_MAMBA_MAX_INNER || state_width(d) > FWD_MAMBA_MAX_INNER)
        return fl_fail(err, FL_EINPUT, "%s/config.json: a Mamba-2 mixer of %ld heads of %ld, %ld groups, state %ld "
                       "and conv kernel %ld is not a valid layout (heads a multiple of the groups)",
                       m->ck->dir, d->heads, d->head_dim, d->groups, d->state, d->kernel);
    if (d->has_norm && (d->norm_group < 1 || inner(d) % d->norm_group != 0))
        return fl_fail(err, FL_EINPUT, "%s/config.json: the Mamba-2 gated norm's groups of %ld channels do not "
                       "divide its %ld channels", m->ck->dir, d->norm_group, inner(d));
    if (!(d->eps >= 0) || !(d->dt_min <= d->dt_max) || isnan(d->in_mult))
        return fl_fail(err, FL_EINPUT, "%s/config.json: Mamba-2 eps %g, time step limits [%g, %g] are not valid",
                       m->ck->dir, d->eps, d->dt_min, d->dt_max);
    return FL_OK;
}

/* ----------------------------------------------------------------------------
 * Binding */

fl_status fwd_bind_conv(const fwd_model *m, const char *name, long C, long K, float **out, fl_error *err)
{
    const ckpt_tensor *t = ckpt_find(m->ck, name);
    if (!t)
        return fl_fail(err, FL_EINPUT, "%s: tensor '%s' is missing", m->ck->dir, name);
    const uint64_t *sh = t->t->shape;
    if (t->t->ndim != 3 || sh[0] != (uint64_t)C || sh[1] != 1 || sh[2] != (uint64_t)K)
        return fl_fail(err, FL_EINPUT, "%s: tensor '%s' should be the depthwise conv weight [%ld, 1, %ld]",
                       m->ck->dir, name, C, K);
    return fwd_bind_vec(m, name, C * K, 1, out, err);
}

fl_status fwd_mamba_bind(fwd_model *m, const char *pre, const fwd_mamba_dims *d, fwd_mamba *mb, fl_error *err)
{
    char name[512];
    long H = m->H, I = inner(d), C = conv_width(d), P = proj_width(d);
    memset(mb, 0, sizeof *mb);
    mb->d = *d;
#define N(x) (snprintf(name, sizeof name, "%s" x, pre), name)
    fl_status s;
    if ((s = fwd_bind_mat(m, N("in_proj.weight"), P, H, 1, &mb->in_proj, err)) != FL_OK ||
        (s = fwd_bind_vec(m, N("in_proj.bias"), P, 0, &mb->in_bias, err)) != FL_OK ||
        (s = fwd_bind_mat(m, N("out_proj.weight"), H, I, 1, &mb->out_proj, err)) != FL_OK ||
        (s = fwd_bind_vec(m, N("out_proj.bias"), H, 0, &mb->out_bias, err)) != FL_OK ||
        (s = fwd_bind_conv(m, N("conv1d.weight"), C, d->kernel, &mb->conv, err)) != FL_OK ||
        (s = fwd_bind_vec(m, N("conv1d.bias"), C, 0, &mb->conv_bias, err)) != FL_OK ||
        (s = fwd_bind_vec(m, N("A_log"), d->heads, 1, &mb->a_log, err)) != FL_OK ||
        (s = fwd_bind_vec(m, N("D"), d->heads, 1, &mb->D, err)) != FL_OK ||
        (s = fwd_bind_vec(m, N("dt_bias"), d->heads, 1, &mb->dt_bias, err)) != FL_OK)
        return s;
    /* A folded checkpoint has no gated-norm weight: ones (the identity). */
    return d->has_norm ? fwd_bind_vec(m, N("norm.weight"), I, 0, &mb->norm, err) : FL_OK;
#undef N
}

void fwd_mamba_free(fwd_mamba *mb)
{
    free(mb->in_bias);
    free(mb->out_bias);
    free(mb->conv);
    free(mb->conv_bias);
    free(mb->a_log);
    free(mb->dt_bias);
    free(mb->D);
    free(mb->norm);
    memset(mb, 0, sizeof *mb);
}

/* ----------------------------------------------------------------------------
 * The pass */

/* Falcon-H1's mup vector (compute_mup_vector): one multiplier per part of
 * in_proj's output, z, x, B, C, dt. */
static void apply_mup(const fwd_mamba_dims *d, float *p, long T)
{
    long I = inner(d), GN = state_width(d), P = proj_width(d);
    long ends[5] = {I, 2 * I, 2 * I + GN, 2 * I + 2 * GN, P};
    for (int k = 0; k < 5; k++)
        if (d->mup[k] != 1.0)
            for (long t = 0; t < T; t++)
                for (long c = k ? ends[k - 1] : 0; c < ends[k]; c++)
                    p[t * P + c] = (float)(p[t * P + c] * d->mup[k]);
}

/* xBC[t][c] = act(bias[c] + sum_j w[c][j] p_xBC[t - (K - 1) + j][c]): nn.Conv1d
 * with groups = channels and padding K - 1, cut to the first T outputs. */
static void causal_conv(const fwd_mamba *mb, const float *p, long T, float *xbc)
{
    const fwd_mamba_dims *d = &mb->d;
    long C = conv_width(d), K = d->kernel, P = proj_width(d), off = inner(d);
    for (long t = 0; t < T; t++)
        for (long c = 0; c < C; c++) {
            double acc = fwd_conv_step(mb->conv_bias ? mb->conv_bias[c] : 0.0, mb->conv + c * K, K, p + off + c, P, t);
            xbc[t * C + c] = fwd_act_as(d->act, (float)acc);
        }
}

/* torch.nn.functional.softplus (beta 1, threshold 20). */
static double softplus(double x) { return x > 20 ? x : log1p(exp(x)); }

/* The selective scan of head h over T steps into y (state S: head_dim x N). */
static void scan_head(const fwd_mamba *mb, const float *p, const float *xbc, long T, long h, double *S, float *y)
{
    const fwd_mamba_dims *d = &mb->d;
    long hd = d->head_dim, N = d->state, I = inner(d), C = conv_width(d), P = proj_width(d);
    long g = h / (d->heads / d->groups), GN = state_width(d);
    double A = -exp((double)mb->a_log[h]);
    memset(S, 0, (size_t)(hd * N) * sizeof *S);
    for (long t = 0; t < T; t++) {
        double dt = softplus((double)p[t * P + I + C + h] + mb->dt_bias[h]);
        dt = fmin(fmax(dt, d->dt_min), d->dt_max);
        double decay = exp(dt * A);
        const float *x = xbc + t * C + h * hd, *B = xbc + t * C + I + g * N, *Cm = xbc + t * C + I + GN + g * N;
        for (long i = 0; i < hd; i++) {
            double *s = S + i * N, acc = 0, dx = dt * x[i];
            for (long n = 0; n < N; n++) {
                s[n] = s[n] * decay + dx * B[n];
                acc += s[n] * Cm[n];
            }
            y[t * I + h * hd + i] = (float)(acc + (double)mb->D[h] * x[i]);
        }
    }
}

static double silu(double x) { return x / (1.0 + exp(-x)); }

/* The gated RMSNorm over each group of norm_group channels (the gain w,
 * NULL: ones), with z = the first I columns of p; in place on y. */
static void gated_norm(const fwd_mamba *mb, const float *p, long T, float *y)
{
    const fwd_mamba_dims *d = &mb->d;
    long I = inner(d), P = proj_width(d), G = d->has_norm ? d->norm_group : I;
    for (long t = 0; t < T; t++) {
        float *v = y + t * I;
        const float *z = p + t * P;
        if (!d->has_norm || !d->norm_before_gate)
            for (long c = 0; c < I; c++)
                v[c] = (float)(v[c] * silu(z[c]));
        for (long g0 = 0; d->has_norm && g0 < I; g0 += G) {
            double ss = 0;
            for (long c = g0; c < g0 + G; c++)
                ss += (double)v[c] * v[c];
            double inv = 1.0 / sqrt(ss / (double)G + d->eps);
            for (long c = g0; c < g0 + G; c++) {
                float xh = (float)(v[c] * inv);
                v[c] = mb->norm ? xh * mb->norm[c] : xh;
            }
        }
        if (d->has_norm && d->norm_before_gate)
            for (long c = 0; c < I; c++)
                v[c] = (float)(v[c] * silu(z[c]));
    }
}

fl_status fwd_mamba_run(const fwd_model *m, const fwd_mamba *mb, const float *h, long T, float *out, fl_error *err)
{
    const fwd_mamba_dims *d = &mb->d;
    size_t tz = (size_t)T, H = (size_t)m->H;
    float *in = d->in_mult != 1.0 ? malloc(tz * H * sizeof *in) : NULL;
    float *p = malloc(tz * (size_t)proj_width(d) * sizeof *p);
    float *xbc = malloc(tz * (size_t)conv_width(d) * sizeof *xbc);
    float *y = malloc(tz * (size_t)inner(d) * sizeof *y);
    double *S = malloc((size_t)(d->head_dim * d->state) * sizeof *S);
    fl_status s = p && xbc && y && S && (in || d->in_mult == 1.0) ? FL_OK : fl_fail(err, FL_EIO, "out of memory");
    for (size_t i = 0; in && i < tz * H; i++)
        in[i] = (float)(h[i] * d->in_mult);   /* Falcon-H1: hidden_states * ssm_in_multiplier */
    if (s == FL_OK)
        s = fwd_matmul(m, &mb->in_proj, mb->in_bias, in ? in : h, T, p, err);
    if (s == FL_OK) {
        apply_mup(d, p, T);
        causal_conv(mb, p, T, xbc);
        for (long hh = 0; hh < d->heads; hh++)
            scan_head(mb, p, xbc, T, hh, S, y);
        gated_norm(mb, p, T, y);
        s = fwd_matmul(m, &mb->out_proj, mb->out_bias, y, T, out, err);
    }
    free(in);
    free(p);
    free(xbc);
    free(y);
    free(S);
    return s;
}
