/* forward.c — the reference forward pass (see forward.h).
 *
 * The pass itself: embeddings, the decoder layers in the family's layout
 * (pre-norm, sandwich, post-norm, parallel), the final norm, the head and
 * the logit scalars.  The family table is forward_table.c, loading
 * forward_load.c, the blocks forward_blocks.c, the matrix kernel
 * forward_kernel.c (docs/architectures.md cites the modeling code of each
 * rule). */
#include "forward_internal.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static void free_layer(fwd_layer *ly)
{
    fwd_norm *norms[] = {&ly->attn_norm, &ly->attn_post, &ly->mlp_norm, &ly->mlp_post,
                         &ly->q_norm, &ly->k_norm};
    for (size_t i = 0; i < sizeof norms / sizeof norms[0]; i++)
        free(norms[i]->g);
    free(ly->bq); free(ly->bk); free(ly->bv); free(ly->bo); free(ly->bqkv);
    free(ly->b_gate); free(ly->b_up); free(ly->b_down);
    free(ly->e_gate); free(ly->e_up); free(ly->e_gate_up); free(ly->e_down);
    free(ly->e_bias); free(ly->q_a_norm.g); free(ly->kv_a_norm.g);
    fwd_gdn_free(ly->gdn);
    free(ly->sinks); free(ly->b_router); free(ly->e_gu_bias); free(ly->e_dn_bias);
    fwd_conv_free(ly->conv);
    free(ly->b_qa); free(ly->b_kva);
    fwd_dsa_free(ly->dsa);
}

void fwd_close(fwd_model *m)
{
    if (!m)
        return;
    if (m->fam && m->fam->block && m->fam->block->close)
        m->fam->block->close(m);
    if (m->layers)
        for (long i = 0; i < m->L; i++)
            free_layer(&m->layers[i]);
    free(m->layers);
    free(m->routing.sel);
    fwd_index_rec_free(m->routing.idx);
    free(m->final_norm.g);
    free(m->head_bias);
    free(m->freq_global);
    free(m->freq_local);
    cJSON_Delete(m->rope_defaults);
    for (int i = 0; m->scratch && i < fl_pool_size(m->pool); i++) {
        free(m->scratch[i].raw);
        free(m->scratch[i].f);
    }
    free(m->scratch);
    fl_pool_free(m->pool);
    free(m);
}

long fwd_vocab(const fwd_model *m) { return m->V; }
long fwd_tokens(const fwd_model *m)
{
    return m->in_tokens > 0 && m->in_tokens < m->embed.rows ? m->in_tokens : m->embed.rows;
}
const char *fwd_describe(const fwd_model *m) { return m->desc; }

long fwd_bos(const fwd_model *m)
{
    long b = ckpt_view_int(m->cfg, "bos_token_id", 1);
    if (b < 0 || b >= m->embed.rows)
        b = m->embed.rows > 1 ? 1 : 0;
    return b;
}


static void *xcalloc(size_t n, size_t size, int *oom)
{
    if (n == 0)
        n = 1;
    void *p = calloc(n, size);
    if (!p)
        *oom = 1;
    return p;
}

/* The pass's buffers for T tokens, sized by the largest layer; 0 when out
 * of memory (what was allocated is freed by bufs_free). */
static int bufs_alloc(const fwd_model *m, size_t tz, fwd_bufs *b)
{
    long H = m->H, qd = m->nh * m->hd, kd = m->nkv * m->hd, I = m->max_inter;
    long E = m->max_experts, K = m->topk > 0 ? m->topk : 1;
    int oom = 0;
    memset(b, 0, sizeof *b);
    b->h = xcalloc(tz * H, sizeof(float), &oom);
    b->q = xcalloc(tz * qd, sizeof(float), &oom);
    b->k = xcalloc(tz * kd, sizeof(float), &oom);
    b->v = xcalloc(tz * kd, sizeof(float), &oom);
    b->ctx = xcalloc(tz * qd, sizeof(float), &oom);
    b->qkv = xcalloc(tz * (qd + 2 * kd), sizeof(float), &oom);
    b->att = xcalloc(tz, sizeof(float), &oom);
    b->g = xcalloc(tz * I, sizeof(float), &oom);
    b->u = xcalloc(tz * I, sizeof(float), &oom);
    b->gu = xcalloc(tz * 2 * I, sizeof(float), &oom);
    b->tmp = xcalloc(tz * H, sizeof(float), &oom);
    b->tmp2 = xcalloc(tz * H, sizeof(float), &oom);
    b->xe = xcalloc(tz * H, sizeof(float), &oom);
    b->router = xcalloc(tz * (E > 1 ? E : 1), sizeof(float), &oom);
    b->sel = xcalloc(tz * K, sizeof(long), &oom);
    b->selw = xcalloc(tz * K, sizeof(float), &oom);
    return !oom;
}

static void bufs_free(fwd_bufs *b)
{
    free(b->h); free(b->q); free(b->k); free(b->v); free(b->ctx); free(b->qkv); free(b->att);
    free(b->g); free(b->u); free(b->gu); free(b->tmp); free(b->tmp2); free(b->xe);
    free(b->router); free(b->sel); free(b->selw);
}

/* Embeddings (GemmaModel: * normalizer; Granite: * embedding_multiplier). */
static fl_status embed(fwd_model *m, const int32_t *tokens, long T, float *x, fl_error *err)
{
    long H = m->H;
    size_t rowb = (size_t)H * m->embed.esize;
    void *raw = malloc(rowb ? rowb : 1);
    if (!raw)
        return fl_fail(err, FL_EIO, "out of memory");
    fl_status s = FL_OK;
    for (long t = 0; t < T && s == FL_OK; t++) {
        if ((s = ckpt_read(m->ck, m->embed.t, (uint64_t)tokens[t] * rowb, raw, rowb, err)) != FL_OK)
            break;
        fwd_to_float(m->embed.dtype, raw, x + t * H, (size_t)H);
        if (m->embed_mult != 1.0)
            for (long c = 0; c < H; c++)
                x[t * H + c] = (float)(x[t * H + c] * m->embed_mult);
    }
    free(raw);
    if (s == FL_OK && m->head.t != m->embed.t)
        fwd_meter_add(m, &m->embed);   /* looked up, not streamed */
    return s;
}

/* x += residual_multiplier * y (Granite's; 1 elsewhere). */
static void residual_add(const fwd_model *m, float *x, const float *y, long n)
{
    for (long i = 0; i < n; i++)
        x[i] += (float)(m->residual_mult * y[i]);
}

/* The shared decoder stack (a family with a fwd_block runs its own): pre-,
 * post-, sandwich or parallel sublayers as fwd_family.layout says. */
static fl_status layer_stack(fwd_model *m, float *x, long T, fwd_bufs *b, float *y, fl_error *err)
{
    long H = m->H;
    size_t bytes = (size_t)T * (size_t)H * sizeof(float);
    const int layout = m->fam->layout;
    fl_status s = FL_OK;
    for (long l = 0; l < m->L && s == FL_OK; l++) {
        const fwd_layer *ly = &m->layers[l];
        if (ly->skip)
            continue;   /* MllamaTextModel: no cross-attention states, the layer does not run */
        /* Attention sublayer. */
        memcpy(b->h, x, bytes);
        if (layout != LAYOUT_POST)
            fwd_norm_rows(m, &ly->attn_norm, b->h, T, H);
        if ((s = fwd_attention(m, ly, b->h, T, b, y, err)) != FL_OK)
            break;
        if (layout == LAYOUT_SANDWICH || layout == LAYOUT_POST)
            fwd_norm_rows(m, &ly->attn_post, y, T, H);
        if (layout == LAYOUT_PARALLEL) {
            /* CohereDecoderLayer: x + attn(h) + mlp(h), same normed h. */
            if ((s = fwd_mlp(m, ly, b->h, T, b, b->tmp, err)) != FL_OK)
                break;
            for (long i = 0; i < T * H; i++)
                x[i] += y[i] + b->tmp[i];
            continue;
        }
        residual_add(m, x, y, T * H);
        /* MLP sublayer. */
        memcpy(b->h, x, bytes);
        if (layout != LAYOUT_POST)
            fwd_norm_rows(m, &ly->mlp_norm, b->h, T, H);
        if ((s = fwd_mlp(m, ly, b->h, T, b, y, err)) != FL_OK)
            break;
        if (layout == LAYOUT_SANDWICH || layout == LAYOUT_POST)
            fwd_norm_rows(m, &ly->mlp_post, y, T, H);
        residual_add(m, x, y, T * H);
    }
    return s;
}

/* The final norm, the head and its logit scale / soft cap. */
static fl_status head(fwd_model *m, float *x, long T, float *logits, fl_error *err)
{
    fwd_norm_rows(m, &m->final_norm, x, T, m->H);
    fl_status s = fwd_matmul(m, &m->head, m->head_bias, x, T, logits, err);
    if (s != FL_OK)
        return s;
    for (long i = 0; i < T * m->V; i++) {
        double z = logits[i] * m->logit_mult;
        if (m->final_softcap > 0)
            z = tanh(z / m->final_softcap) * m->final_softcap;
        logits[i] = (float)z;
    }
    return FL_OK;
}

fl_status fwd_logits(fwd_model *m, const int32_t *tokens, size_t n, float *logits,
                     fl_error *err)
{
    if (n == 0 || n > 1000000)
        return fl_fail(err, FL_EINPUT, "the forward pass needs 1 to 1000000 tokens, got %zu", n);
    for (size_t t = 0; t < n; t++)
        if (tokens[t] < 0 || tokens[t] >= fwd_tokens(m))
            return fl_fail(err, FL_EINPUT, "token id %d at position %zu is outside the ids the pass embeds (0..%ld)",
                           (int)tokens[t], t, fwd_tokens(m) - 1);
    long T = (long)n;
    int oom = 0;
    fwd_bufs b;
    int ok = bufs_alloc(m, n, &b);
    float *x = xcalloc(n * (size_t)m->H, sizeof(float), &oom);
    float *y = xcalloc(n * (size_t)m->H, sizeof(float), &oom);
    fl_status s = FL_OK;
    m->meter.done = 0;
    fwd_route_reset(m);
    if (!ok || oom)
        s = fl_fail(err, FL_EIO, "out of memory for %zu tokens", n);
    if (s == FL_OK)
        s = embed(m, tokens, T, x, err);
    if (s == FL_OK)
        s = m->fam->block ? m->fam->block->run(m, tokens, x, T, &b, err) : layer_stack(m, x, T, &b, y, err);
    if (s == FL_OK)
        s = head(m, x, T, logits, err);
    if (s == FL_OK && m->meter.fn)
        m->meter.fn(m->meter.ctx, m->meter.total, m->meter.total);
    free(x);
    free(y);
    bufs_free(&b);
    return s;
}

