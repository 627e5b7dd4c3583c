/* forward_position.c — position handling some families add (forward_internal.h).
 *
 * Two things a family's config class or attention does with positions that
 * the generic RoPE path does not: default rope_parameters the config class
 * fills in when config.json has none (Ministral3Config: YaRN), and a query
 * scale that grows with the position (Ministral3Attention).  The
 * multimodal RoPE of the Qwen VL families needs nothing here: for a
 * text-only sequence its three position streams are equal and it is plain
 * RoPE (docs/architectures.md §vl-mrope). */
#include "forward_internal.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <string.h>

fl_status fwd_rope_defaults(fwd_model *m, const cJSON **out, fl_error *err)
{
    *out = NULL;
    if (!m->fam->rope_defaults || ckpt_view_get(m->cfg, "rope_parameters") ||
        ckpt_view_get(m->cfg, "rope_scaling"))
        return FL_OK;
    if (!m->rope_defaults && !(m->rope_defaults = cJSON_Parse(m->fam->rope_defaults)))
        return fl_fail(err, FL_EIO, "out of memory");
    *out = m->rope_defaults;
    return FL_OK;
}

static int json_number(const cJSON *o, const char *key, double *v)
{
    const cJSON *x = cJSON_IsObject(o) ? cJSON_GetObjectItemCaseSensitive(o, key) : NULL;
    if (!cJSON_IsNumber(x))
        return 0;
    *v = x->valuedouble;
    return 1;
}

/* Ministral3Attention.forward reads both keys from rope_parameters; a
 * missing one is an error there too (None in the arithmetic). */
fl_status fwd_parse_qscale(fwd_model *m, const cJSON *rp, fl_error *err)
{
    if (m->fam->qscale == QSCALE_NONE)
        return FL_OK;
    if (!json_number(rp, "llama_4_scaling_beta", &m->qscale_beta) ||
        !json_number(rp, "original_max_position_embeddings", &m->qscale_orig) || !(m->qscale_orig > 0) ||
        !isfinite(m->qscale_beta))
        return fl_fail(err, FL_EINPUT, "%s/config.json: %s needs numbers llama_4_scaling_beta and "
                       "original_max_position_embeddings (> 0) in rope_parameters", m->ck->dir,
                       m->fam->model_type);
    return FL_OK;
}

/* _get_llama_4_attn_scale(cache_position, beta, original_max_position_embeddings):
 * 1 + beta * log(1 + floor(pos / original)), in float as torch computes it
 * on the float positions.  Exactly 1 below the original context length. */
void fwd_apply_qscale(const fwd_model *m, float *q, long T)
{
    if (m->fam->qscale == QSCALE_NONE)
        return;
    long qd = m->nh * m->hd;
    for (long t = 0; t < T; t++) {
        float s = (float)(1.0 + m->qscale_beta * log(1.0 + floor((double)t / m->qscale_orig)));
        if (s == 1.0f)
            continue;
        for (long c = 0; c < qd; c++)
            q[t * qd + c] *= s;
    }
}
