/* forward_kernel.c — the matrix products of the forward pass (forward_internal.h).
 *
 * Weights are streamed from the safetensors files in blocks of rows by the
 * model's worker pool and converted to float (exactly, for F16/BF16/F32);
 * activations stay float32, and every dot product accumulates in float32
 * (AVX2/FMA when the CPU has it). */
#include "forward_internal.h"

#include "flashify/dtype.h"
#include "flashify/safetensors.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define FWD_X86 1
#endif

/* Rounds x to the storage dtype d and back (Gemma's normalizer tensor is
 * created in the activation dtype: modeling_gemma.py GemmaModel.forward). */
double fwd_round_to_dtype(int d, double x)
{
    switch (d) {
    case ST_BF16: return bf16_to_double(double_to_bf16(x));
    case ST_F16: return f16_to_double(double_to_f16(x));
    case ST_F32: return (double)double_to_f32(x);
    default: return x;
    }
}

/* ----------------------------------------------------------------------------
 * The matrix kernel: Y[t][r] = sum_i X[t][i] * W[r][i] for a block of rows
 * already converted to float.  Two rows by four tokens per step keeps eight
 * independent accumulators in flight, enough to hide the FMA latency. */

static void gemm_generic(const float *w, long nr, long cols, const float *x, long T,
                         float *y, long ldy)
{
    for (long r = 0; r < nr; r++) {
        const float *wr = w + r * cols;
        for (long t = 0; t < T; t++) {
            const float *xt = x + t * cols;
            float acc[8] = {0};
            long i = 0;
            for (; i + 8 <= cols; i += 8)
                for (int j = 0; j < 8; j++)
                    acc[j] += wr[i + j] * xt[i + j];
            float s = 0;
            for (; i < cols; i++)
                s += wr[i] * xt[i];
            y[t * ldy + r] = s + ((acc[0] + acc[1]) + (acc[2] + acc[3])) +
                             ((acc[4] + acc[5]) + (acc[6] + acc[7]));
        }
    }
}

#ifdef FWD_X86
__attribute__((target("avx2,fma"))) static inline float hsum256(__m256 v)
{
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1));
    return _mm_cvtss_f32(lo);
}

__attribute__((target("avx2,fma")))
static void gemm_avx2(const float *w, long nr, long cols, const float *x, long T,
                      float *y, long ldy)
{
    long c8 = cols & ~7L;
    long r = 0;
    for (; r + 2 <= nr; r += 2) {
        const float *w0 = w + r * cols, *w1 = w0 + cols;
        long t = 0;
        for (; t + 4 <= T; t += 4) {
            const float *x0 = x + t * cols, *x1 = x0 + cols, *x2 = x1 + cols, *x3 = x2 + cols;
            __m256 a00 = _mm256_setzero_ps(), a01 = a00, a02 = a00, a03 = a00;
            __m256 a10 = a00, a11 = a00, a12 = a00, a13 = a00;
            for (long i = 0; i < c8; i += 8) {
                __m256 v0 = _mm256_loadu_ps(w0 + i), v1 = _mm256_loadu_ps(w1 + i);
                __m256 u = _mm256_loadu_ps(x0 + i);
                a00 = _mm256_fmadd_ps(v0, u, a00); a10 = _mm256_fmadd_ps(v1, u, a10);
                u = _mm256_loadu_ps(x1 + i);
                a01 = _mm256_fmadd_ps(v0, u, a01); a11 = _mm256_fmadd_ps(v1, u, a11);
                u = _mm256_loadu_ps(x2 + i);
                a02 = _mm256_fmadd_ps(v0, u, a02); a12 = _mm256_fmadd_ps(v1, u, a12);
                u = _mm256_loadu_ps(x3 + i);
                a03 = _mm256_fmadd_ps(v0, u, a03); a13 = _mm256_fmadd_ps(v1, u, a13);
            }
            float s[8] = {hsum256(a00), hsum256(a01), hsum256(a02), hsum256(a03),
                          hsum256(a10), hsum256(a11), hsum256(a12), hsum256(a13)};
            for (long i = c8; i < cols; i++) {
                s[0] += w0[i] * x0[i]; s[1] += w0[i] * x1[i];
                s[2] += w0[i] * x2[i]; s[3] += w0[i] * x3[i];
                s[4] += w1[i] * x0[i]; s[5] += w1[i] * x1[i];
                s[6] += w1[i] * x2[i]; s[7] += w1[i] * x3[i];
            }
            for (int j = 0; j < 4; j++) {
                y[(t + j) * ldy + r] = s[j];
                y[(t + j) * ldy + r + 1] = s[4 + j];
            }
        }
        for (; t < T; t++) {
            const float *xt = x + t * cols;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0;
            for (long i = 0; i < c8; i += 8) {
                __m256 u = _mm256_loadu_ps(xt + i);
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + i), u, a0);
                a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w1 + i), u, a1);
            }
            float s0 = hsum256(a0), s1 = hsum256(a1);
            for (long i = c8; i < cols; i++) {
                s0 += w0[i] * xt[i];
                s1 += w1[i] * xt[i];
            }
            y[t * ldy + r] = s0;
            y[t * ldy + r + 1] = s1;
        }
    }
    if (r < nr)
        gemm_generic(w + r * cols, nr - r, cols, x, T, y + r, ldy);
}
#endif

gemm_fn fwd_pick_gemm(void)
{
#ifdef FWD_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return gemm_avx2;
#endif
    return gemm_generic;
}

static float f16_table[65536];
static pthread_once_t f16_once = PTHREAD_ONCE_INIT;
static void f16_init(void)
{
    for (uint32_t i = 0; i < 65536; i++)
        f16_table[i] = (float)f16_to_double((uint16_t)i);
}

/* Decodes n elements of dtype d into floats (exact for F16/BF16/F32). */
void fwd_to_float(int d, const void *raw, float *out, size_t n)
{
    const unsigned char *p = raw;
    switch (d) {
    case ST_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            out[i] = f32_from_bits((uint32_t)h << 16);
        }
        break;
    case ST_F16:
        pthread_once(&f16_once, f16_init);
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            out[i] = f16_table[h];
        }
        break;
    case ST_F32:
        memcpy(out, raw, n * 4);
        break;
    default: /* F64 */
        for (size_t i = 0; i < n; i++) {
            double v;
            memcpy(&v, p + 8 * i, 8);
            out[i] = (float)v;
        }
    }
}

typedef struct {
    const fwd_model *m;
    const fwd_mat *w;
    const float *x;
    long T;
    float *y;
    long chunk;     /* rows per item */
} mm_job;

#define MM_BLOCK_FLOATS (1L << 15) /* 128 KiB of converted weights per block */

/* Reads rows [r, r + n) of w (at its offset in the tensor) into the
 * worker's scratch as floats. */
static fl_status read_rows(const fwd_model *m, const fwd_mat *w, long r, long n, struct mm_scratch *sc,
                           fl_error *err)
{
    size_t elems = (size_t)n * (size_t)w->cols;
    if (elems > sc->cap) {
        free(sc->raw);
        free(sc->f);
        sc->raw = malloc(elems * 8);
        sc->f = malloc(elems * sizeof *sc->f);
        sc->cap = sc->raw && sc->f ? elems : 0;
        if (!sc->cap)
            return fl_fail(err, FL_EIO, "out of memory");
    }
    if (w->mx)
        return fwd_mxfp4_rows(m, w, r, n, sc->raw, sc->f, err);
    if (w->quant)
        return fwd_quant_rows(m, w, r, n, sc->raw, sc->f, err);
    size_t row_bytes = (size_t)w->cols * w->esize;
    void *dst = w->dtype == ST_F32 ? (void *)sc->f : sc->raw;
    fl_status s = ckpt_read(m->ck, w->t, w->off + (uint64_t)r * row_bytes, dst, (size_t)n * row_bytes, err);
    if (s == FL_OK && w->dtype != ST_F32)
        fwd_to_float(w->dtype, sc->raw, sc->f, elems);
    return s;
}

/* One block of rows of y = x W^T (a pool item): read, convert, multiply. */
static fl_status mm_item(void *ctx, size_t item, int worker, fl_error *err)
{
    const mm_job *j = ctx;
    const fwd_mat *w = j->w;
    struct mm_scratch *sc = &j->m->scratch[worker];
    long r = (long)item * j->chunk;
    long n = w->rows - r < j->chunk ? w->rows - r : j->chunk;
    fl_status s = read_rows(j->m, w, r, n, sc, err);
    if (s != FL_OK)
        return s;
    j->m->gemm(sc->f, n, w->cols, j->x, j->T, j->y + r, w->rows);
    return FL_OK;
}

/* y[T][w->rows] = x[T][w->cols] * W^T, streaming W from its file in blocks
 * of rows, spread over the model's pool (one block for a small product,
 * where waking the workers would cost more than it saves). */
static fl_status linear_matmul(const fwd_model *m, const fwd_mat *w, const float *x, long T, float *y,
                               fl_error *err)
{
    long chunk = MM_BLOCK_FLOATS / w->cols;
    if (chunk < 1)
        chunk = 1;
    double work = (double)w->rows * (double)w->cols * (double)T;
    if (work < (1 << 20))
        chunk = w->rows;
    mm_job job = {m, w, x, T, y, chunk};
    size_t items = (size_t)((w->rows + chunk - 1) / chunk);
    return fl_pool_run(m->pool, items, mm_item, &job, err);
}

/* x @ W for W stored [in, out] (grouped-GEMM experts): each pool item
 * takes a fixed block of input rows and writes its partial product to its
 * own slot; the slots are summed in order afterwards, so the result does
 * not depend on the thread count. */
#define XW_MAX_ITEMS 8

typedef struct {
    const fwd_model *m;
    const fwd_mat *w;
    const float *x;
    long T, chunk;
    float *partial;   /* [items][T][w->cols] */
} xw_job;

static fl_status xw_item(void *ctx, size_t item, int worker, fl_error *err)
{
    const xw_job *j = ctx;
    const fwd_mat *w = j->w;
    struct mm_scratch *sc = &j->m->scratch[worker];
    long r = (long)item * j->chunk, cols = w->cols;
    long n = w->rows - r < j->chunk ? w->rows - r : j->chunk;
    fl_status s = read_rows(j->m, w, r, n, sc, err);
    if (s != FL_OK)
        return s;
    float *p = j->partial + item * (size_t)j->T * (size_t)cols;
    for (long t = 0; t < j->T; t++) {
        float *pt = p + t * cols;
        const float *xt = j->x + t * w->rows + r;
        for (long k = 0; k < n; k++) {
            const float *wk = sc->f + k * cols;
            float a = xt[k];
            for (long c = 0; c < cols; c++)
                pt[c] += a * wk[c];
        }
    }
    return FL_OK;
}

static fl_status xw_matmul(const fwd_model *m, const fwd_mat *w, const float *x, long T, float *y, fl_error *err)
{
    long chunk = (w->rows + XW_MAX_ITEMS - 1) / XW_MAX_ITEMS;
    if ((double)w->rows * (double)w->cols * (double)T < (1 << 20))
        chunk = w->rows;
    size_t items = (size_t)((w->rows + chunk - 1) / chunk);
    size_t per = (size_t)T * (size_t)w->cols;
    float *partial = calloc(items * per, sizeof *partial);
    if (!partial)
        return fl_fail(err, FL_EIO, "out of memory");
    xw_job job = {m, w, x, T, chunk, partial};
    fl_status s = fl_pool_run(m->pool, items, xw_item, &job, err);
    for (size_t i = 0; s == FL_OK && i < per; i++) {
        float acc = 0;
        for (size_t it = 0; it < items; it++)
            acc += partial[it * per + i];
        y[i] = acc;
    }
    free(partial);
    return s;
}

void fwd_set_progress(fwd_model *m, fwd_progress_fn fn, void *ctx)
{
    m->meter.fn = fn;
    m->meter.ctx = ctx;
}

uint64_t fwd_mat_bytes(const fwd_mat *w)
{
    uint64_t elems = (uint64_t)w->rows * (uint64_t)w->cols;
    /* MXFP4: half a byte per element plus one scale byte per 32. */
    if (w->quant == FWD_Q_INT_PACKED)
        return elems * (uint64_t)w->qbits / 8;
    return w->mx ? elems / 2 + elems / 32 : elems * w->esize;
}

void fwd_meter_add(const fwd_model *m, const fwd_mat *w)
{
    struct fwd_meter *mt = m->mp;
    if (w->t)
        mt->done += fwd_mat_bytes(w);
    if (mt->fn)
        mt->fn(mt->ctx, mt->done < mt->total ? mt->done : mt->total, mt->total);
}

fl_status fwd_matmul(const fwd_model *m, const fwd_mat *w, const float *bias, const float *x, long T, float *y,
                     fl_error *err)
{
    if (fl_interrupted)
        return fl_fail(err, FL_EINTR, "interrupted");
    fl_status s = w->xw ? xw_matmul(m, w, x, T, y, err) : linear_matmul(m, w, x, T, y, err);
    long out = w->xw ? w->cols : w->rows;
    if (s == FL_OK)
        fwd_meter_add(m, w);
    if (s == FL_OK && bias)
        for (long t = 0; t < T; t++)
            for (long r = 0; r < out; r++)
                y[t * out + r] += bias[r];
    return s;
}

double fwd_conv_step(double acc, const float *w, long K, const float *x, long ld, long t)
{
    for (long j = t < K - 1 ? K - 1 - t : 0; j < K; j++)
        acc += (double)w[j] * x[(t - (K - 1) + j) * ld];
    return acc;
}
