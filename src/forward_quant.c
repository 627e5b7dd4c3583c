/* forward_quant.c — quantized matrices for the reference forward pass
 * (forward_internal.h).
 *
 * A --partial conversion keeps every norm whose consumer is stored
 * quantized and folds the others; proving that output equivalent needs a
 * forward pass through the quantized layers, which pass through both
 * checkpoints byte for byte.  Two storage forms are decoded to float32
 * (docs/architectures.md §quantized):
 *
 *  - FP8 (DeepSeek-V3/V3.2, Kimi K2; compressed-tensors FP8):
 *    "<base>.weight" F8_E4M3 [out, in] and
 *    "<base>.weight_scale_inv" [ceil(out / b0), ceil(in / b1)], the block
 *    [b0, b1] from quantization_config.weight_block_size (default
 *    [128, 128]), or compressed-tensors' "<base>.weight_scale" per tensor,
 *    per output channel [out, 1] or per group of inputs [out, in / g];
 *    W[o][i] = fp8 * scale[o / b0][i / b1] (transformers
 *    integrations/finegrained_fp8.py, the weight_dequant of DeepSeek's
 *    inference code, compressed-tensors' float-quantized format).
 *  - compressed-tensors pack-quantized integers (Kimi K2 Thinking / K2.5
 *    INT4 experts): "<base>.weight_packed" I32 [out, ceil(in * bits / 32)],
 *    value j of a row in word j * bits / 32 at bit (j * bits) % 32, stored
 *    with an offset of 2^(bits - 1); "<base>.weight_scale" [out, in / g] for
 *    groups of g inputs; "<base>.weight_shape" [out, in].  Symmetric only:
 *    W[o][i] = (q - 2^(bits - 1)) * scale[o][i / g] (compressed_tensors
 *    compressors/quantized_compressors/pack_quantized.py, unpack_from_int32).
 *
 * Each decoded value is the product of two exactly representable numbers
 * rounded once to float32: both checkpoints decode the same bytes the same
 * way, which is all the comparison needs. */
#include "forward_internal.h"

#include "flashify/dtype.h"
#include "flashify/safetensors.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_COLS (1L << 24)

static int is_float_scale(int d) { return d == ST_F32 || d == ST_BF16 || d == ST_F16; }

/* The value of an E4M3FN code (bias 7, no infinities, S.1111.111 is NaN). */
static float e4m3_value(unsigned char c)
{
    int e = (c >> 3) & 15, mnt = c & 7;
    float v = e == 15 && mnt == 7 ? NAN : e ? ldexpf(1.0f + (float)mnt / 8.0f, e - 7) : ldexpf((float)mnt / 8.0f, -6);
    return c >> 7 ? -v : v;
}

/* quantization_config.weight_block_size, [128, 128] when absent. */
static void block_size(const fwd_model *m, long *b0, long *b1)
{
    const cJSON *qc = ckpt_view_get(m->cfg, "quantization_config");
    const cJSON *bs = cJSON_IsObject(qc) ? cJSON_GetObjectItemCaseSensitive(qc, "weight_block_size") : NULL;
    const cJSON *x = cJSON_GetArrayItem(bs, 0), *y = cJSON_GetArrayItem(bs, 1);
    *b0 = *b1 = 128;
    if (cJSON_IsArray(bs) && cJSON_GetArraySize(bs) == 2 && cJSON_IsNumber(x) && cJSON_IsNumber(y) &&
        x->valuedouble >= 1 && x->valuedouble <= MAX_COLS && y->valuedouble >= 1 && y->valuedouble <= MAX_COLS) {
        *b0 = (long)x->valuedouble;
        *b1 = (long)y->valuedouble;
    }
}

static fl_status shape_fits(const fwd_model *m, const char *name, long R, long C, long rows, long cols,
                            fl_error *err)
{
    if ((rows >= 0 && R != rows) || (cols >= 0 && C != cols))
        return fl_fail(err, FL_EINPUT, "%s: tensor '%s' has shape [%ld, %ld], expected [%ld, %ld]", m->ck->dir,
                       name, R, C, rows, cols);
    return FL_OK;
}

/* The scale block of FP8 weight [R, C]: weight_scale_inv's from the config
 * (blocks of weight_block_size); compressed-tensors' weight_scale from its
 * shape: [R, 1] per output channel, [R, C / g] per group of g inputs, one
 * value per tensor.  0 when the scale does not fit. */
static int fp8_blocks(const fwd_model *m, const ckpt_tensor *sc, int inv, uint64_t R, uint64_t C, long *b0,
                      long *b1)
{
    const uint64_t *s = sc->t->shape;
    uint64_t n = 0;
    if (inv) {
        block_size(m, b0, b1);
        return sc->t->ndim == 2 && s[0] == (R + (uint64_t)*b0 - 1) / (uint64_t)*b0 &&
               s[1] == (C + (uint64_t)*b1 - 1) / (uint64_t)*b1;
    }
    if (st_numel(sc->t, &n) == 0 && n == 1) {
        *b0 = (long)R;
        *b1 = (long)C;
        return 1;
    }
    *b0 = 1;
    *b1 = sc->t->ndim == 2 && s[0] == R && s[1] && C % s[1] == 0 ? (long)(C / s[1]) : 0;
    return *b1 > 0;
}

static fl_status bind_fp8(const fwd_model *m, const char *name, const ckpt_tensor *t, const ckpt_tensor *sc,
                          int inv, long rows, long cols, fwd_mat *out, fl_error *err)
{
    const uint64_t *w = t->t->shape;
    long b0 = 0, b1 = 0;
    if (t->t->ndim != 2 || !is_float_scale(sc->t->dtype) || w[0] == 0 || w[1] == 0 || w[0] > MAX_COLS ||
        w[1] > MAX_COLS || !fp8_blocks(m, sc, inv, w[0], w[1], &b0, &b1))
        return fl_fail(err, FL_EINPUT, "%s: FP8 '%s' and its %s %s", m->ck->dir, name,
                       inv ? "weight_scale_inv" : "weight_scale",
                       inv ? "do not fit the blocks of quantization_config.weight_block_size (default 128x128)"
                           : "are not per tensor, per output channel or per group of inputs");
    long R = (long)w[0], C = (long)w[1];
    fl_status st = shape_fits(m, name, R, C, rows, cols, err);
    if (st != FL_OK)
        return st;
    *out = (fwd_mat){.t = t, .rows = R, .cols = C, .dtype = t->t->dtype, .esize = 1, .quant = FWD_Q_FP8_BLOCK,
                     .qs = sc, .qb_rows = b0, .qb_cols = b1};
    m->mp->total += st_nbytes(t->t) + st_nbytes(sc->t);
    m->mp->quant[FWD_Q_FP8_BLOCK]++;
    return FL_OK;
}

/* out x in from weight_shape, or in = 32 / bits words per packed word for
 * 4 bits when there is none; the bits from the packed width. */
static fl_status int_dims(const fwd_model *m, const char *base, const ckpt_tensor *pk, long *R, long *C, int *bits,
                          fl_error *err)
{
    char name[600];
    snprintf(name, sizeof name, "%s.weight_shape", base);
    const ckpt_tensor *sh = ckpt_find(m->ck, name);
    long pc = (long)pk->t->shape[1];
    *R = (long)pk->t->shape[0];
    *C = pc * 8;
    if (sh) {
        /* I64 (or I32) [2]: out, in */
        unsigned char raw[16];
        uint64_t n = 0;
        size_t es = st_dtype_bits(sh->t->dtype) / 8;
        fl_status s = st_numel(sh->t, &n) == 0 && n == 2 && (sh->t->dtype == ST_I64 || sh->t->dtype == ST_I32)
                          ? ckpt_read(m->ck, sh, 0, raw, 2 * es, err)
                          : fl_fail(err, FL_EINPUT, "%s: '%s' should be 2 integers", m->ck->dir, name);
        if (s != FL_OK)
            return s;
        int64_t v[2];
        for (int k = 0; k < 2; k++) {
            uint64_t u = 0;
            for (size_t b = 0; b < es; b++)
                u |= (uint64_t)raw[k * es + b] << (8 * b);
            v[k] = es == 4 ? (int64_t)(int32_t)(uint32_t)u : (int64_t)u;
        }
        if (v[0] != *R || v[1] < 1 || v[1] > MAX_COLS)
            return fl_fail(err, FL_EINPUT, "%s: '%s' says [%lld, %lld], but the packed weight has %ld rows",
                           m->ck->dir, name, (long long)v[0], (long long)v[1], *R);
        *C = (long)v[1];
    }
    *bits = pc == (*C * 4 + 31) / 32 ? 4 : pc == (*C * 8 + 31) / 32 ? 8 : 0;
    if (!*bits)
        return fl_fail(err, FL_EINPUT, "%s: '%s.weight_packed' has %ld words per row: not %ld 4- or 8-bit values",
                       m->ck->dir, base, pc, *C);
    return FL_OK;
}

static fl_status bind_int(const fwd_model *m, const char *base, const char *name, const ckpt_tensor *pk,
                          long rows, long cols, fwd_mat *out, fl_error *err)
{
    char sn[600];
    snprintf(sn, sizeof sn, "%s.weight_zero_point", base);
    if (ckpt_find(m->ck, sn))
        return fl_fail(err, FL_EINPUT, "%s: '%s' is asymmetric (weight_zero_point): the reference forward pass "
                       "decodes symmetric packed integers only", m->ck->dir, base);
    snprintf(sn, sizeof sn, "%s.weight_scale", base);
    const ckpt_tensor *sc = ckpt_find(m->ck, sn);
    if (pk->t->dtype != ST_I32 || pk->t->ndim != 2 || pk->t->shape[0] == 0 || pk->t->shape[1] == 0 ||
        pk->t->shape[0] > MAX_COLS || pk->t->shape[1] > MAX_COLS || !sc || sc->t->ndim != 2 ||
        !is_float_scale(sc->t->dtype) || sc->t->shape[0] != pk->t->shape[0] || sc->t->shape[1] == 0)
        return fl_fail(err, FL_EINPUT, "%s: '%s.weight_packed' should be I32 [out, packed] with a float "
                       "weight_scale [out, groups]", m->ck->dir, base);
    long R, C;
    int bits;
    fl_status s = int_dims(m, base, pk, &R, &C, &bits, err);
    if (s == FL_OK)
        s = shape_fits(m, name, R, C, rows, cols, err);
    if (s != FL_OK)
        return s;
    long groups = (long)sc->t->shape[1];
    if (C % groups)
        return fl_fail(err, FL_EINPUT, "%s: '%s' has %ld scale groups for %ld inputs: not whole groups", m->ck->dir,
                       sn, groups, C);
    *out = (fwd_mat){.t = pk, .rows = R, .cols = C, .dtype = ST_I32, .esize = 0, .quant = FWD_Q_INT_PACKED,
                     .qs = sc, .qb_rows = 1, .qb_cols = C / groups, .qbits = bits};
    m->mp->total += st_nbytes(pk->t) + st_nbytes(sc->t);
    m->mp->quant[FWD_Q_INT_PACKED]++;
    return FL_OK;
}

fl_status fwd_bind_quant(const fwd_model *m, const char *name, long rows, long cols, fwd_mat *out, fl_error *err)
{
    size_t n = strlen(name);
    char base[512], sn[600];
    memset(out, 0, sizeof *out);
    if (n < 8 || n - 7 >= sizeof base || strcmp(name + n - 7, ".weight") != 0)
        return FL_OK;
    snprintf(base, sizeof base, "%.*s", (int)(n - 7), name);
    const ckpt_tensor *t = ckpt_find(m->ck, name);
    snprintf(sn, sizeof sn, "%s.weight_scale_inv", base);
    const ckpt_tensor *sc = ckpt_find(m->ck, sn);
    int inv = sc != NULL;
    if (!sc) {
        snprintf(sn, sizeof sn, "%s.weight_scale", base);
        sc = ckpt_find(m->ck, sn);
    }
    if (t && sc && t->t->dtype == ST_F8_E4M3)
        return bind_fp8(m, name, t, sc, inv, rows, cols, out, err);
    snprintf(sn, sizeof sn, "%s.weight_packed", base);
    const ckpt_tensor *pk = t ? NULL : ckpt_find(m->ck, sn);
    return pk ? bind_int(m, base, name, pk, rows, cols, out, err) : FL_OK;
}

/* Rows [r0, r0 + n) of scale tensor w->qs (ncols values each) as floats. */
static fl_status read_scales(const fwd_model *m, const fwd_mat *w, long r0, long n, long ncols, float **out,
                             fl_error *err)
{
    size_t es = st_dtype_bits(w->qs->t->dtype) / 8, cnt = (size_t)n * (size_t)ncols;
    void *raw = malloc(cnt * es);
    float *f = malloc(cnt * sizeof *f);
    fl_status s = raw && f ? ckpt_read(m->ck, w->qs, (uint64_t)r0 * (uint64_t)ncols * es, raw, cnt * es, err)
                           : fl_fail(err, FL_EIO, "out of memory");
    if (s == FL_OK)
        fwd_to_float(w->qs->t->dtype, raw, f, cnt);
    free(raw);
    if (s != FL_OK) {
        free(f);
        return s;
    }
    *out = f;
    return FL_OK;
}

static fl_status fp8_rows(const fwd_model *m, const fwd_mat *w, long r, long n, unsigned char *codes, float *out,
                          fl_error *err)
{
    long C = w->cols, ncb = (C + w->qb_cols - 1) / w->qb_cols, sr0 = r / w->qb_rows;
    long nsr = (r + n - 1) / w->qb_rows - sr0 + 1;
    float *sc = NULL;
    fl_status s = ckpt_read(m->ck, w->t, (uint64_t)r * (uint64_t)C, codes, (size_t)n * (size_t)C, err);
    if (s == FL_OK)
        s = read_scales(m, w, sr0, nsr, ncb, &sc, err);
    if (s != FL_OK)
        return s;
    float lut[256];
    for (int c = 0; c < 256; c++)
        lut[c] = e4m3_value((unsigned char)c);
    for (long i = 0; i < n; i++) {
        const float *srow = sc + ((r + i) / w->qb_rows - sr0) * ncb;
        for (long j = 0; j < C; j++)
            out[i * C + j] = lut[codes[i * C + j]] * srow[j / w->qb_cols];
    }
    free(sc);
    return FL_OK;
}

static fl_status int_rows(const fwd_model *m, const fwd_mat *w, long r, long n, unsigned char *packed, float *out,
                          fl_error *err)
{
    long C = w->cols, pc = (C * w->qbits + 31) / 32, groups = C / w->qb_cols;
    float *sc = NULL;
    fl_status s = ckpt_read(m->ck, w->t, (uint64_t)r * (uint64_t)pc * 4, packed, (size_t)n * (size_t)pc * 4, err);
    if (s == FL_OK)
        s = read_scales(m, w, r, n, groups, &sc, err);
    if (s != FL_OK)
        return s;
    uint32_t mask = (1u << w->qbits) - 1, offset = 1u << (w->qbits - 1);
    for (long i = 0; i < n; i++) {
        const unsigned char *row = packed + (size_t)i * (size_t)pc * 4;
        for (long j = 0; j < C; j++) {
            long bit = j * w->qbits;
            const unsigned char *wd = row + (bit / 32) * 4;
            uint32_t word = (uint32_t)wd[0] | (uint32_t)wd[1] << 8 | (uint32_t)wd[2] << 16 | (uint32_t)wd[3] << 24;
            int q = (int)((word >> (bit % 32)) & mask) - (int)offset;
            out[i * C + j] = (float)q * sc[i * groups + j / w->qb_cols];
        }
    }
    free(sc);
    return FL_OK;
}

/* raw holds at least n * cols * 8 bytes (read_rows' scratch): the codes or
 * packed words of n rows fit. */
fl_status fwd_quant_rows(const fwd_model *m, const fwd_mat *w, long r, long n, void *raw, float *out,
                         fl_error *err)
{
    return w->quant == FWD_Q_FP8_BLOCK ? fp8_rows(m, w, r, n, raw, out, err) : int_rows(m, w, r, n, raw, out, err);
}

void fwd_quant_describe(const fwd_model *m, char *buf, size_t cap)
{
    const long *q = m->meter.quant;
    int n = 0;
    if (q[FWD_Q_FP8_BLOCK])
        n = snprintf(buf, cap, ", %ld FP8 matrices dequantized", q[FWD_Q_FP8_BLOCK]);
    if (q[FWD_Q_INT_PACKED] && n >= 0 && (size_t)n < cap)
        snprintf(buf + n, cap - (size_t)n, ", %ld packed-integer (compressed-tensors) matrices dequantized",
                 q[FWD_Q_INT_PACKED]);
}
