/* forward_llama4.c — Llama 4's blocks for the reference forward pass
 * (forward_internal.h hooks; docs/architectures.md §llama4, read in
 * transformers src/transformers/models/llama4/modeling_llama4.py and
 * configuration_llama4.py).
 *
 * Llama4Router: the top-k logits (no bias) through a sigmoid are the
 * routing scores, and Llama4TextMoe multiplies each chosen expert's *input*
 * by its score (moe() in forward_blocks.c, route_scales_input), the shared
 * expert reading the unscaled input.  Llama4TextAttention: RoPE on the
 * layers whose no_rope_layers entry is 1, with chunked local attention on
 * the "chunked_attention" layers; the other (NoPE) layers attend globally
 * and scale q by the attention temperature. */
#include "forward_internal.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <string.h>

void fwd_llama4_route(const fwd_model *m, const fwd_layer *ly, const float *logits, long E, long K, long *sel,
                      float *w, int given)
{
    (void)m, (void)ly;
    if (!given)
        fwd_choose(logits, E, K, sel);
    for (long k = 0; k < K; k++)
        w[k] = (float)(1.0 / (1.0 + exp(-(double)logits[sel[k]])));
}

void fwd_temperature(const fwd_layer *ly, float *q, long T, long width)
{
    for (long t = 0; t < T; t++) {
        double s = log(floor((double)(t + 1) / ly->temp_floor) + 1.0) * ly->temp_scale + 1.0;
        for (long c = 0; c < width; c++)
            q[t * width + c] = (float)(q[t * width + c] * s);
    }
}

/* Llama4TextConfig: without no_rope_layers (or with an empty list), layer
 * i uses RoPE unless (i + 1) % no_rope_layer_interval == 0 (default 4). */
static int uses_rope(const fwd_model *m, const fwd_layer *ly, long i)
{
    const cJSON *nope = ckpt_view_get(m->cfg, "no_rope_layers");
    if (cJSON_IsArray(nope) && cJSON_GetArraySize(nope) > 0)
        return ly->inv_freq != NULL;   /* layer_positions read the list */
    long every = ckpt_view_int(m->cfg, "no_rope_layer_interval", 4);
    return every <= 0 || (i + 1) % every != 0;
}

/* Chunked attention where layer_types says "chunked_attention", or, without
 * layer_types, on the RoPE layers (the config's default layer_types). */
static int chunked(const fwd_model *m, long i, int rope)
{
    const cJSON *lt = ckpt_view_get(m->cfg, "layer_types");
    if (!cJSON_IsArray(lt))
        return rope;
    const cJSON *e = cJSON_GetArrayItem(lt, (int)i);
    return cJSON_IsString(e) && strcmp(e->valuestring, "chunked_attention") == 0;
}

fl_status fwd_llama4_layer(fwd_model *m, fwd_layer *ly, long i, const char *pre, fl_error *err)
{
    (void)pre;
    int rope = uses_rope(m, ly, i);
    if (!rope)
        ly->inv_freq = NULL;
    if (chunked(m, i, rope)) {
        double c = ckpt_view_num(m->cfg, "attention_chunk_size", 8192, 0);
        ly->chunk = c >= 1 && c < 1e15 ? (long)c : 0;
    }
    /* attn_temperature_tuning defaults to 4 (truthy) in Llama4TextConfig. */
    int temp = ckpt_view_get(m->cfg, "attn_temperature_tuning") ? ckpt_view_set(m->cfg, "attn_temperature_tuning")
                                                                  : 1;
    if (!temp || rope)
        return FL_OK;
    ly->temp_floor = ckpt_view_num(m->cfg, "floor_scale", 8192, 8192);
    ly->temp_scale = ckpt_view_num(m->cfg, "attn_scale", 0.1, 0.1);
    if (!(ly->temp_floor > 0) || !isfinite(ly->temp_floor) || !isfinite(ly->temp_scale))
        return fl_fail(err, FL_EINPUT, "%s/config.json: floor_scale %g and attn_scale %g are not a valid "
                       "attention temperature", m->ck->dir, ly->temp_floor, ly->temp_scale);
    return FL_OK;
}
