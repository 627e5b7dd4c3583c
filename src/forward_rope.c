/* forward_rope.c — rotary position embeddings of the reference forward pass.
 *
 * The rope types (modeling_rope_utils.py ROPE_INIT_FUNCTIONS, each a
 * {name, builder}) and the model's inverse frequencies from rope_theta and
 * rope_scaling / rope_parameters (v5, possibly keyed by layer type), for
 * the shared layer stack (fwd_open) and the fwd_blocks that want it. */
#include "forward_internal.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ----------------------------------------------------------------------------
 * RoPE types: modeling_rope_utils.py's _compute_*_parameters.  Each builder
 * gets the default inverse frequencies in inv_freq and rewrites them. */

static double json_num(const cJSON *o, const char *key, double def)
{
    const cJSON *v = cJSON_IsObject(o) ? cJSON_GetObjectItemCaseSensitive(o, key) : NULL;
    return cJSON_IsNumber(v) ? v->valuedouble : def;
}

/* YaRN's attention temperature (get_mscale). */
double fwd_yarn_mscale(double scale, double mscale)
{
    return scale <= 1 ? 1.0 : 0.1 * mscale * log(scale) + 1.0;
}

static fl_status bad_factor(const fwd_rope_ctx *c, double factor, fl_error *err)
{
    return fl_fail(err, FL_EINPUT, "%s/config.json: rope_scaling factor %g must be positive", c->dir, factor);
}

static fl_status rope_default(const fwd_rope_ctx *c, const cJSON *sc, double factor, float *f, double *af,
                              fl_error *err)
{
    (void)c, (void)sc, (void)factor, (void)f, (void)af, (void)err;
    return FL_OK;
}

static fl_status rope_linear(const fwd_rope_ctx *c, const cJSON *sc, double factor, float *f, double *af,
                             fl_error *err)
{
    (void)sc, (void)af;
    if (!(factor > 0))
        return bad_factor(c, factor, err);
    for (long i = 0; i < c->rot / 2; i++)
        f[i] = (float)(f[i] / factor);
    return FL_OK;
}

static fl_status rope_llama3(const fwd_rope_ctx *c, const cJSON *sc, double factor, float *f, double *af,
                             fl_error *err)
{
    (void)af;
    double lf = json_num(sc, "low_freq_factor", NAN), hf = json_num(sc, "high_freq_factor", NAN);
    double old = json_num(sc, "original_max_position_embeddings", NAN);
    if (!(factor > 0) || isnan(lf) || isnan(hf) || isnan(old) || !(hf > lf))
        return fl_fail(err, FL_EINPUT, "%s/config.json: rope_scaling llama3 needs factor, "
                       "low_freq_factor < high_freq_factor and original_max_position_embeddings", c->dir);
    double low_wl = old / lf, high_wl = old / hf;
    for (long i = 0; i < c->rot / 2; i++) {
        double inv = f[i], wl = 2 * M_PI / inv, r;
        if (wl < high_wl)
            r = inv;
        else if (wl > low_wl)
            r = inv / factor;
        else {
            double s = (old / wl - lf) / (hf - lf);
            r = (1 - s) * inv / factor + s * inv;
        }
        f[i] = (float)r;
    }
    return FL_OK;
}

/* _compute_yarn_parameters. */
static fl_status rope_yarn(const fwd_rope_ctx *c, const cJSON *sc, double factor, float *f, double *af,
                           fl_error *err)
{
    if (!(factor > 0))
        return bad_factor(c, factor, err);
    double maxpos = ckpt_view_num(c->cfg, "max_position_embeddings", 2048, 2048);
    double orig = json_num(sc, "original_max_position_embeddings", 0);
    if (!(orig > 0))
        orig = maxpos;
    double ms = json_num(sc, "mscale", 0), msad = json_num(sc, "mscale_all_dim", 0);
    *af = json_num(sc, "attention_factor", 0);
    if (!(*af > 0))
        *af = ms && msad ? fwd_yarn_mscale(factor, ms) / fwd_yarn_mscale(factor, msad) : fwd_yarn_mscale(factor, 1);
    double bf = json_num(sc, "beta_fast", 32), bs = json_num(sc, "beta_slow", 1);
    const cJSON *tr = cJSON_GetObjectItemCaseSensitive(sc, "truncate");
    double dim = (double)c->rot;
    double lo = dim * log(orig / (bf * 2 * M_PI)) / (2 * log(c->theta));
    double hi = dim * log(orig / (bs * 2 * M_PI)) / (2 * log(c->theta));
    if (!cJSON_IsFalse(tr)) {
        lo = floor(lo);
        hi = ceil(hi);
    }
    lo = fmax(lo, 0);
    hi = fmin(hi, dim - 1);
    if (lo == hi)
        hi += 0.001;
    for (long i = 0; i < c->rot / 2; i++) {
        double pos_freq = pow(c->theta, (double)(2 * i) / dim);
        double ramp = fmin(fmax(((double)i - lo) / (hi - lo), 0), 1);
        double extra = 1 - ramp; /* share of the extrapolated (unscaled) frequency */
        f[i] = (float)(1.0 / (factor * pos_freq) * (1 - extra) + 1.0 / pos_freq * extra);
    }
    return FL_OK;
}

/* _compute_longrope_parameters with the short factors (sequences up to
 * original_max_position_embeddings); Phi3 sets factor from the two context
 * lengths when original_max_position_embeddings exists. */
static fl_status rope_longrope(const fwd_rope_ctx *c, const cJSON *sc, double factor, float *f, double *af,
                               fl_error *err)
{
    long half = c->rot / 2;
    const cJSON *sf = cJSON_GetObjectItemCaseSensitive(sc, "short_factor");
    if (!cJSON_IsArray(sf) || cJSON_GetArraySize(sf) != half)
        return fl_fail(err, FL_EINPUT, "%s/config.json: rope_scaling longrope needs short_factor "
                       "with %ld entries", c->dir, half);
    double maxpos = ckpt_view_num(c->cfg, "max_position_embeddings", 2048, 2048);
    double orig = ckpt_view_num(c->cfg, "original_max_position_embeddings", 0, 0);
    if (orig > 0)
        factor = maxpos / orig;
    else
        orig = maxpos;
    *af = json_num(sc, "attention_factor", 0);
    if (!(*af > 0))
        *af = factor <= 1 ? 1.0 : sqrt(1 + log(factor) / log(orig));
    for (long i = 0; i < half; i++) {
        const cJSON *e = cJSON_GetArrayItem(sf, (int)i);
        double ext = cJSON_IsNumber(e) ? e->valuedouble : 0;
        if (!(ext > 0))
            return fl_fail(err, FL_EINPUT, "%s/config.json: longrope short_factor[%ld] must be positive", c->dir, i);
        f[i] = (float)(1.0 / (ext * pow(c->theta, (double)(2 * i) / (double)c->rot)));
    }
    return FL_OK;
}

/* "dynamic" only rescales beyond max_position_embeddings: the default for
 * the sequences verify runs.  HunYuan's DynamicNTKAlpha rotary
 * (HunYuanDenseV1RotaryEmbedding: rope_type "dynamic" with an "alpha", the
 * family's rope_alpha) raises the base to theta * alpha^(d / (d - 2)) for
 * every length instead. */
static fl_status rope_dynamic(const fwd_rope_ctx *c, const cJSON *sc, double factor, float *f, double *af,
                              fl_error *err)
{
    (void)factor, (void)af;
    double alpha = json_num(sc, "alpha", 0), d = (double)c->rot;
    if (!c->ntk_alpha || !cJSON_IsObject(sc) || !cJSON_GetObjectItemCaseSensitive(sc, "alpha") || alpha == 0)
        return FL_OK;
    if (!(alpha > 0) || c->rot <= 2)
        return fl_fail(err, FL_EINPUT, "%s/config.json: rope_scaling alpha %g must be positive", c->dir, alpha);
    double base = c->theta * pow(alpha, d / (d - 2));
    for (long i = 0; i < c->rot / 2; i++)
        f[i] = (float)(1.0 / pow(base, (double)(2 * i) / d));
    return FL_OK;
}

static const fwd_rope_type ROPE_TYPES[] = {
    {"default", rope_default}, {"linear", rope_linear},   {"llama3", rope_llama3},
    {"dynamic", rope_dynamic}, {"yarn", rope_yarn},       {"longrope", rope_longrope},
    /* Qwen2-VL's legacy name; Qwen2VLTextConfig renames it "default"
     * (multimodal RoPE: §vl-mrope). */
    {"mrope", rope_default},
};

const fwd_rope_type *fwd_rope_find(const char *name)
{
    for (size_t i = 0; i < sizeof ROPE_TYPES / sizeof ROPE_TYPES[0]; i++)
        if (strcmp(ROPE_TYPES[i].name, name) == 0)
            return &ROPE_TYPES[i];
    return NULL;
}

void fwd_rope_names(char *buf, size_t cap)
{
    size_t n = 0;
    buf[0] = 0;
    for (size_t i = 0; i < sizeof ROPE_TYPES / sizeof ROPE_TYPES[0]; i++) {
        int w = snprintf(buf + n, cap - n, "%s%s", i ? ", " : "", ROPE_TYPES[i].name);
        if (w < 0 || (size_t)w >= cap - n)
            break;
        n += (size_t)w;
    }
}

/* ----------------------------------------------------------------------------
 * The model's frequencies */

/* Inverse frequencies for m->rot dims from theta, rewritten by the builder
 * of the rope_type (an unknown type is refused: ignoring it would change
 * the model), and the factor on cos and sin. */
static fl_status build_freqs(const fwd_model *m, const cJSON *scaling, double theta, float **out, double *af,
                             fl_error *err)
{
    *af = 1.0;
    const char *type = "default";
    if (cJSON_IsObject(scaling)) {
        const cJSON *ty = cJSON_GetObjectItemCaseSensitive(scaling, "rope_type");
        if (!cJSON_IsString(ty))
            ty = cJSON_GetObjectItemCaseSensitive(scaling, "type");
        if (cJSON_IsString(ty))
            type = ty->valuestring;
    }
    const fwd_rope_type *rt = fwd_rope_find(type);
    if (!rt) {
        char names[256];
        fwd_rope_names(names, sizeof names);
        return fl_fail(err, FL_EINPUT, "%s/config.json: rope_scaling type '%s' is not supported by "
                       "the reference forward pass (supported: %s)", m->ck->dir, type, names);
    }
    long half = m->rot / 2;
    float *f = malloc((size_t)(half ? half : 1) * sizeof *f);
    if (!f)
        return fl_fail(err, FL_EIO, "out of memory");
    for (long i = 0; i < half; i++)
        f[i] = (float)(1.0 / pow(theta, (double)(2 * i) / (double)m->rot));
    const cJSON *fa = cJSON_IsObject(scaling) ? cJSON_GetObjectItemCaseSensitive(scaling, "factor") : NULL;
    fwd_rope_ctx ctx = {m->rot, theta, m->cfg, m->ck->dir, m->fam->rope_alpha};
    fl_status s = rt->build(&ctx, scaling, cJSON_IsNumber(fa) ? fa->valuedouble : 1.0, f, af, err);
    if (s != FL_OK) {
        free(f);
        return s;
    }
    *out = f;
    return FL_OK;
}

/* rope_scaling (v4) or rope_parameters (v5; possibly keyed by layer type:
 * "full_attention" / "sliding_attention"). */
static const cJSON *rope_params(ckpt_view cfg, const char *layer_type)
{
    const cJSON *p = ckpt_view_get(cfg, "rope_parameters");
    if (cJSON_IsObject(p)) {
        const cJSON *sub = cJSON_GetObjectItemCaseSensitive(p, layer_type);
        return cJSON_IsObject(sub) ? sub : p;
    }
    return NULL;
}

/* Global frequencies from rope_theta + rope_scaling; sliding layers of
 * families with a local base (Gemma3) use it with default scaling. */
fl_status fwd_parse_rope(fwd_model *m, fl_error *err)
{
    const cJSON *rp = rope_params(m->cfg, "full_attention");
    fl_status s = rp ? FL_OK : fwd_rope_defaults(m, &rp, err);
    const cJSON *sc = rp ? rp : ckpt_view_get(m->cfg, "rope_scaling");
    const cJSON *th = rp ? cJSON_GetObjectItemCaseSensitive(rp, "rope_theta") : NULL;
    double t0 = m->fam->rope_theta > 0 ? m->fam->rope_theta : 10000.0;
    double theta = cJSON_IsNumber(th) ? th->valuedouble : ckpt_view_num(m->cfg, "rope_theta", t0, t0);
    if (s == FL_OK && !(theta > 1))
        return fl_fail(err, FL_EINPUT, "%s/config.json: rope_theta %g must be > 1", m->ck->dir, theta);
    if (s != FL_OK || (s = fwd_parse_qscale(m, sc, err)) != FL_OK ||
        (s = build_freqs(m, sc, theta, &m->freq_global, &m->af_global, err)) != FL_OK)
        return s;
    /* DeepseekV3Attention: scaling *= mscale^2 with mscale_all_dim. */
    double msad = 0;
    const cJSON *ms = cJSON_IsObject(sc) ? cJSON_GetObjectItemCaseSensitive(sc, "mscale_all_dim") : NULL;
    const cJSON *fa = cJSON_IsObject(sc) ? cJSON_GetObjectItemCaseSensitive(sc, "factor") : NULL;
    if (cJSON_IsNumber(ms))
        msad = ms->valuedouble;
    if (m->fam->mla && !m->fam->mla_plain_scale && msad)
        m->attn_scale *= pow(fwd_yarn_mscale(cJSON_IsNumber(fa) ? fa->valuedouble : 1.0, msad), 2);
    if (!m->fam->local_theta_key && !m->fam->slide_default_rope)
        return FL_OK;
    /* Gemma 3: the local base; OLMo 3: the global base, default RoPE. */
    const cJSON *lp = rope_params(m->cfg, "sliding_attention");
    const cJSON *lt = lp && lp != rp ? cJSON_GetObjectItemCaseSensitive(lp, "rope_theta") : NULL;
    double local = cJSON_IsNumber(lt)              ? lt->valuedouble
                   : m->fam->slide_default_rope ? theta
                                                : ckpt_view_num(m->cfg, m->fam->local_theta_key, 10000.0, 10000.0);
    return build_freqs(m, lp && lp != rp ? lp : NULL, local, &m->freq_local, &m->af_local, err);
}
