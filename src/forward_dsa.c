/* forward_dsa.c — DeepSeek Sparse Attention's lightning indexer for the
 * reference forward pass (forward_internal.h; docs/architectures.md
 * §deepseek_v32, read in transformers deepseek_v32/modular_deepseek_v32.py
 * DeepseekV32Indexer and glm_moe_dsa/modular_glm_moe_dsa.py).
 *
 * Per layer, from the attention's normed input x and the query latent
 * q_a_layernorm(q_a_proj(x)):
 *   q = wq_b(latent)            [T][heads][D], the first R dims rotated
 *   k = LayerNorm(wk(x))        [T][D] (k_norm: weight and bias, eps 1e-6)
 *   w = weights_proj(x) / sqrt(heads)
 *   score[t][s] = sum_h w[t][h] * relu(q[t][h] . k[s] / sqrt(D)),  s <= t
 * and query t attends only to its min(index_topk, T) best keys (all of
 * them while t + 1 <= that).  RoPE: R = qk_rope_head_dim, pairs (i, i+R/2)
 * for DeepSeek-V3.2, (2i, 2i+1) for GLM-5.  GLM-5 layers whose
 * indexer_types entry is "shared" have no indexer and reuse the selection
 * of the last "full" layer.  torch.topk leaves the order of equal scores
 * open; here the lower position wins.
 *
 * The selection is discrete: a correct fold that rounds a score can pick
 * another key at a near tie.  When verify compares two models (forward.h,
 * fwd_route_record), the output's selection is pinned to the source's
 * like the MoE routers', and the index scores themselves are compared, so
 * a wrongly folded indexer consumer fails even where every key is kept. */
#include "forward_internal.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const fwd_dsa_spec FWD_DSA_V32 = {.interleaved = 0, .heads = 64, .head_dim = 128, .shared_layers = 0};
const fwd_dsa_spec FWD_DSA_GLM = {.interleaved = 1, .heads = 32, .head_dim = 128, .shared_layers = 1};

/* Scores of the first SCORE_ROWS query positions are compared between the
 * passes (every key of those rows): enough to see a wrong fold, which
 * moves every score, without holding T^2 floats per layer. */
#define SCORE_ROWS 64

struct fwd_dsa {
    fwd_mat wq_b, wk, wproj;
    float *kn_w, *kn_b;          /* k_norm's weight and bias, [D] (NULL: 1 and 0) */
    long heads, dim, topk, layer;
    const struct fwd_dsa *from;  /* a shared layer: the full layer whose selection it reads */
    unsigned char *allow;        /* this pass's selection [T][T] (full layers) */
    size_t cap;
};

/* What a recording pass kept and what a replaying pass found. */
struct fwd_index_rec {
    unsigned char *bits;         /* selected keys, row t of each layer as t + 1 bits */
    size_t nbits, capbytes, posbits;
    float *score;                /* scores of the rows t < SCORE_ROWS */
    size_t ns, caps, poss;
    long rows, flips, compared, worst_layer;
    double max_rel;
    int lost;
};

void fwd_dsa_free(struct fwd_dsa *d)
{
    if (!d)
        return;
    free(d->kn_w);
    free(d->kn_b);
    free(d->allow);
    free(d);
}

void fwd_index_rec_free(struct fwd_index_rec *r)
{
    if (!r)
        return;
    free(r->bits);
    free(r->score);
    free(r);
}

void fwd_index_rec_rewind(struct fwd_index_rec *r)
{
    if (!r)
        return;
    r->nbits = r->posbits = r->ns = r->poss = 0;
    r->rows = r->flips = r->compared = 0;
    r->worst_layer = -1;
    r->max_rel = 0;
    r->lost = 0;
}

void fwd_index_stats(const fwd_model *m, long *rows, long *flips, long *compared, double *max_rel,
                     long *worst_layer, int *lost)
{
    const struct fwd_index_rec *r = m->routing.idx;
    *rows = r ? r->rows : 0;
    *flips = r ? r->flips : 0;
    *compared = r ? r->compared : 0;
    *max_rel = r ? r->max_rel : 0;
    *worst_layer = r ? r->worst_layer : -1;
    *lost = r ? r->lost : 0;
}

/* ----------------------------------------------------------------------------
 * Binding */

/* GlmMoeDsaConfig: indexer_types[i], else index_topk_pattern ("FSS...", or
 * a list), else "full" when max(i - index_skip_topk_offset + 1, 0) is a
 * multiple of index_topk_freq (defaults 2 and 1: every layer full). */
static int layer_is_shared(const fwd_model *m, long i)
{
    const cJSON *types = ckpt_view_get(m->cfg, "indexer_types");
    const cJSON *pat = ckpt_view_get(m->cfg, "index_topk_pattern");
    if (cJSON_IsArray(types) || cJSON_IsArray(pat)) {
        const cJSON *e = cJSON_GetArrayItem(cJSON_IsArray(types) ? types : pat, (int)i);
        return cJSON_IsString(e) && strcmp(e->valuestring, "shared") == 0;
    }
    if (cJSON_IsString(pat))
        return (long)strlen(pat->valuestring) > i && pat->valuestring[i] == 'S';
    long freq = ckpt_view_int(m->cfg, "index_topk_freq", 1), off = ckpt_view_int(m->cfg, "index_skip_topk_offset", 2);
    long k = i - off + 1 > 0 ? i - off + 1 : 0;
    return freq > 1 && k % freq != 0;
}

#define NAME(fmt) (snprintf(name, sizeof name, "%s" fmt, pre), name)

static fl_status bind_indexer(fwd_model *m, struct fwd_dsa *d, const char *pre, fl_error *err)
{
    char name[512];
    long D = d->dim;
    fl_status s;
    if ((s = fwd_bind_mat(m, NAME("self_attn.indexer.wq_b.weight"), d->heads * D, m->q_lora, 1, &d->wq_b, err)) !=
            FL_OK ||
        (s = fwd_bind_mat(m, NAME("self_attn.indexer.wk.weight"), D, m->H, 1, &d->wk, err)) != FL_OK ||
        (s = fwd_bind_mat(m, NAME("self_attn.indexer.weights_proj.weight"), d->heads, m->H, 1, &d->wproj, err)) !=
            FL_OK ||
        (s = fwd_bind_vec(m, NAME("self_attn.indexer.k_norm.weight"), D, 0, &d->kn_w, err)) != FL_OK)
        return s;
    return fwd_bind_vec(m, NAME("self_attn.indexer.k_norm.bias"), D, 0, &d->kn_b, err);
}
#undef NAME

/* layer_extra of the DSA families. */
fl_status fwd_dsa_layer(fwd_model *m, fwd_layer *ly, long i, const char *pre, fl_error *err)
{
    const fwd_dsa_spec *sp = m->fam->dsa;
    struct fwd_dsa *d = calloc(1, sizeof *d);
    if (!d)
        return fl_fail(err, FL_EIO, "out of memory");
    ly->dsa = d;
    d->layer = i;
    d->heads = ckpt_view_int(m->cfg, "index_n_heads", sp->heads);
    d->dim = ckpt_view_int(m->cfg, "index_head_dim", sp->head_dim);
    d->topk = ckpt_view_int(m->cfg, "index_topk", 2048);
    if (m->q_lora <= 0)
        return fl_fail(err, FL_EINPUT, "%s/config.json: the DSA indexer reads the query latent, but q_lora_rank "
                       "is %ld", m->ck->dir, m->q_lora);
    if (d->heads < 1 || d->heads > 65536 || d->dim < m->rot || d->dim > 65536 || d->topk < 1)
        return fl_fail(err, FL_EINPUT, "%s/config.json: index_n_heads %ld, index_head_dim %ld (>= qk_rope_head_dim "
                       "%ld), index_topk %ld are not a valid indexer", m->ck->dir, d->heads, d->dim, m->rot, d->topk);
    if (sp->shared_layers && layer_is_shared(m, i)) {
        for (long j = i - 1; j >= 0 && !d->from; j--)
            if (m->layers[j].dsa && !m->layers[j].dsa->from)
                d->from = m->layers[j].dsa;
        if (!d->from)
            return fl_fail(err, FL_EINPUT, "%s/config.json: layer %ld reuses the indexer selection of an earlier "
                           "\"full\" layer (indexer_types), but there is none", m->ck->dir, i);
        return FL_OK;
    }
    return bind_indexer(m, d, pre, err);
}

void fwd_dsa_describe(const fwd_model *m, char *buf, size_t cap)
{
    const struct fwd_dsa *d = NULL;
    long shared = 0;
    for (long i = 0; i < m->L && m->layers; i++) {
        const struct fwd_dsa *x = m->layers[i].dsa;
        if (x && !x->from && !d)
            d = x;
        shared += x && x->from;
    }
    if (!d)
        return;
    int n = snprintf(buf, cap, ", DSA indexer (%ld heads x %ld, top %ld keys, %s RoPE)", d->heads, d->dim, d->topk,
                     m->fam->dsa->interleaved ? "interleaved" : "half-split");
    if (shared && n > 0 && (size_t)n < cap)
        snprintf(buf + n, cap - (size_t)n, ", %ld layers reuse an earlier selection", shared);
}

/* ----------------------------------------------------------------------------
 * Scoring and selection */

/* k_norm: nn.LayerNorm(D, eps=1e-6), mean-centred, weight and bias. */
static void layer_norm(float *v, long n, const float *w, const float *b)
{
    double mean = 0, var = 0;
    for (long i = 0; i < n; i++)
        mean += v[i];
    mean /= (double)n;
    for (long i = 0; i < n; i++)
        var += (v[i] - mean) * (v[i] - mean);
    double inv = 1.0 / sqrt(var / (double)n + 1e-6);
    for (long i = 0; i < n; i++) {
        float x = (float)((v[i] - mean) * inv);
        v[i] = x * (w ? w[i] : 1.0f) + (b ? b[i] : 0.0f);
    }
}

/* score[t][s] (row-major, s <= t; the rest unused) for T tokens. */
static fl_status index_scores(const fwd_model *m, const fwd_layer *ly, const struct fwd_dsa *d, const float *h,
                              const float *qa, long T, double *score, fl_error *err)
{
    long HD = d->heads * d->dim, D = d->dim;
    float *q = malloc((size_t)T * (size_t)HD * sizeof *q), *k = malloc((size_t)T * (size_t)D * sizeof *k);
    float *w = malloc((size_t)T * (size_t)d->heads * sizeof *w);
    fl_status s = q && k && w ? FL_OK : fl_fail(err, FL_EIO, "out of memory");
    if (s == FL_OK && (s = fwd_matmul(m, &d->wq_b, NULL, qa, T, q, err)) == FL_OK &&
        (s = fwd_matmul(m, &d->wk, NULL, h, T, k, err)) == FL_OK)
        s = fwd_matmul(m, &d->wproj, NULL, h, T, w, err);
    int il = m->fam->dsa->interleaved;
    for (long t = 0; s == FL_OK && t < T; t++) {
        layer_norm(k + t * D, D, d->kn_w, d->kn_b);
        fwd_rope_pairs(ly, k + t * D, t, m->rot / 2, il);
        for (long hh = 0; hh < d->heads; hh++)
            fwd_rope_pairs(ly, q + t * HD + hh * D, t, m->rot / 2, il);
    }
    double qk_scale = 1.0 / sqrt((double)D), w_scale = 1.0 / sqrt((double)d->heads);
    for (long t = 0; s == FL_OK && t < T; t++)
        for (long j = 0; j <= t; j++) {
            double acc = 0;
            for (long hh = 0; hh < d->heads; hh++) {
                const float *qh = q + t * HD + hh * D, *kj = k + j * D;
                double dot = 0;
                for (long c = 0; c < D; c++)
                    dot += (double)qh[c] * kj[c];
                dot *= qk_scale;
                acc += (double)w[t * d->heads + hh] * w_scale * (dot > 0 ? dot : 0);
            }
            score[t * T + j] = acc;
        }
    free(q);
    free(k);
    free(w);
    return s;
}

typedef struct {
    double s;
    long j;
} ranked;

static int by_score(const void *a, const void *b)
{
    const ranked *x = a, *y = b;
    if (x->s != y->s)
        return x->s > y->s ? -1 : 1;
    return x->j < y->j ? -1 : x->j > y->j;
}

/* allow[t][*]: the K best keys of row t (all of them when t + 1 <= K). */
static void select_keys(const double *score, long T, long K, unsigned char *allow, ranked *tmp)
{
    memset(allow, 0, (size_t)T * (size_t)T);
    for (long t = 0; t < T; t++) {
        for (long j = 0; j <= t; j++)
            tmp[j] = (ranked){score[t * T + j], j};
        if (t + 1 > K)
            qsort(tmp, (size_t)(t + 1), sizeof *tmp, by_score);
        for (long j = 0; j <= t && j < K; j++)
            allow[t * T + tmp[j].j] = 1;
    }
}

/* ----------------------------------------------------------------------------
 * Recording and replaying (verify's comparison) */

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 1;
    size_t c = *cap ? *cap : 4096;
    while (c < need)
        c *= 2;
    void *q = realloc(*p, c * elem);
    if (!q)
        return 0;
    *p = q;
    *cap = c;
    return 1;
}

static void record(struct fwd_index_rec *r, const double *score, const unsigned char *allow, long T)
{
    size_t bits = (size_t)T * (size_t)(T + 1) / 2, rows = (size_t)(T < SCORE_ROWS ? T : SCORE_ROWS);
    size_t ns = rows * (rows + 1) / 2;
    if (r->lost || !grow((void **)&r->bits, &r->capbytes, (r->nbits + bits + 7) / 8, 1) ||
        !grow((void **)&r->score, &r->caps, r->ns + ns, sizeof *r->score)) {
        r->lost = 1;
        return;
    }
    for (long t = 0; t < T; t++)
        for (long j = 0; j <= t; j++, r->nbits++) {
            unsigned char bit = (unsigned char)(1u << (r->nbits % 8));
            if (allow[t * T + j])
                r->bits[r->nbits / 8] |= bit;
            else
                r->bits[r->nbits / 8] &= (unsigned char)~bit;
        }
    for (size_t t = 0; t < rows; t++)
        for (size_t j = 0; j <= t; j++)
            r->score[r->ns++] = (float)score[t * (size_t)T + j];
}

/* Compares this layer's scores with the recorded ones and takes the
 * recorded selection (counting the rows where the own one differed). */
static void replay(struct fwd_index_rec *r, const struct fwd_index_rec *from, const double *score,
                   unsigned char *allow, long T, long K, long layer)
{
    size_t bits = (size_t)T * (size_t)(T + 1) / 2, rows = (size_t)(T < SCORE_ROWS ? T : SCORE_ROWS);
    size_t ns = rows * (rows + 1) / 2;
    if (r->lost || !from || from->lost || r->posbits + bits > from->nbits || r->poss + ns > from->ns) {
        r->lost = 1;
        return;
    }
    double scale = 0, diff = 0;
    const float *want = from->score + r->poss;
    for (size_t t = 0, n = 0; t < rows; t++)
        for (size_t j = 0; j <= t; j++, n++) {
            scale = fmax(scale, fabs((double)want[n]));
            diff = fmax(diff, fabs((double)want[n] - score[t * (size_t)T + j]));
        }
    double rel = diff == 0 ? 0 : scale > 0 ? diff / scale : INFINITY;
    if (r->worst_layer < 0 || rel > r->max_rel) {
        r->max_rel = rel;
        r->worst_layer = layer;
    }
    r->compared += (long)ns;
    r->poss += ns;
    for (long t = 0; t < T; t++) {
        int differs = 0;
        for (long j = 0; j <= t; j++, r->posbits++) {
            unsigned char want_bit = (unsigned char)((from->bits[r->posbits / 8] >> (r->posbits % 8)) & 1);
            differs |= want_bit != allow[t * T + j];
            allow[t * T + j] = want_bit;
        }
        r->rows += t + 1 > K;
        r->flips += differs;
    }
}

fl_status fwd_dsa_select(const fwd_model *m, const fwd_layer *ly, const float *h, const float *qa, long T,
                         const unsigned char **allow, fl_error *err)
{
    struct fwd_dsa *d = ly->dsa;
    if (d->from) {
        *allow = d->from->allow;
        return FL_OK;
    }
    size_t tt = (size_t)T * (size_t)T;
    double *score = malloc(tt * sizeof *score);
    ranked *tmp = malloc((size_t)T * sizeof *tmp);
    fl_status s = score && tmp && grow((void **)&d->allow, &d->cap, tt, 1) ? FL_OK
                                                                          : fl_fail(err, FL_EIO, "out of memory");
    if (s == FL_OK && (s = index_scores(m, ly, d, h, qa, T, score, err)) == FL_OK) {
        long K = d->topk < T ? d->topk : T;
        select_keys(score, T, K, d->allow, tmp);
        struct fwd_routing *r = m->rp;
        if (r && r->mode && !r->idx) {
            if (!(r->idx = calloc(1, sizeof *r->idx)))
                r->lost = 1;
            fwd_index_rec_rewind(r->idx);
        }
        if (r && r->mode == 1 && r->idx)
            record(r->idx, score, d->allow, T);
        else if (r && r->mode == 2 && r->idx)
            replay(r->idx, r->from ? r->from->idx : NULL, score, d->allow, T, K, d->layer);
        *allow = d->allow;
    }
    free(score);
    free(tmp);
    return s;
}
