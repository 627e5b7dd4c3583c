/* forward_gated.c — the output gate of Qwen3.5 / Qwen3-Next full attention
 * (forward_internal.h).
 *
 * Qwen3NextAttention (transformers qwen3_next/modular_qwen3_next.py, reused
 * by Qwen3_5Attention): q_proj is twice as wide as the query; its output,
 * viewed per head as [head_dim * 2], is split into the query (first half)
 * and a gate (second half).  The attention output, heads concatenated, is
 * multiplied by sigmoid(gate) before o_proj.  docs/architectures.md
 * §qwen3_5. */
#include "forward_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

fl_status fwd_gated_query(const fwd_model *m, const fwd_layer *ly, const float *h, long T, float *q, float **gate,
                          fl_error *err)
{
    long hd = m->hd, nh = m->nh, qd = nh * hd;
    size_t n = (size_t)T * (size_t)qd;
    float *qg = malloc(2 * n * sizeof *qg);
    *gate = malloc(n * sizeof **gate);
    if (!qg || !*gate) {
        free(qg);
        free(*gate);
        *gate = NULL;
        return fl_fail(err, FL_EIO, "out of memory");
    }
    fl_status s = fwd_matmul(m, &ly->q, ly->bq, h, T, qg, err);
    for (long t = 0; s == FL_OK && t < T; t++)
        for (long hh = 0; hh < nh; hh++) {
            const float *src = qg + t * 2 * qd + hh * 2 * hd;
            memcpy(q + t * qd + hh * hd, src, (size_t)hd * sizeof *q);
            memcpy(*gate + t * qd + hh * hd, src + hd, (size_t)hd * sizeof **gate);
        }
    free(qg);
    if (s != FL_OK) {
        free(*gate);
        *gate = NULL;
    }
    return s;
}

void fwd_gate_apply(float *ctx, const float *gate, size_t n)
{
    for (size_t i = 0; i < n; i++)
        ctx[i] = (float)(ctx[i] / (1.0 + exp(-(double)gate[i])));
}
