/* fold.c — the fold kernel: W*[o,i] = W[o,i] * g[i], rounded once (fold.h).
 *
 * Exactness argument.  A weight of at most 24 significant bits (F32, BF16,
 * F16) times a norm weight of at most 24 bits is exact in a double (48 <= 53
 * bits).  Rounding that double straight to F32 is one rounding.  For BF16
 * the fast path goes double -> F32 with round-to-odd, then F32 -> BF16 with
 * round-to-nearest-even: round-to-odd at >= p+2 bits followed by RNE to p
 * bits equals a single RNE (Boldo & Melquiond, "Emulation of FMA and
 * correctly rounded sums: proved algorithms using rounding to odd").
 * Gemma's gain 1 + w: W + W*w is a sum of two exact doubles; TwoSum gives
 * the rounding error, which turns the sum into its round-to-odd double, and
 * the same argument applies.  F64 operands use fma. */
#include "flashify/fold.h"
#include "flashify/dtype.h"
#include "flashify/safetensors.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The double nearest-odd to a + b (a, b doubles): round-to-odd. */
static inline double sum_round_odd(double a, double b)
{
    double s = a + b;
    double bb = s - a;
    double e = (a - (s - bb)) + (b - bb);
    if (e != 0) {
        uint64_t u;
        memcpy(&u, &s, 8);
        if ((u & 1) == 0) {
            /* Move one ulp towards the exact value: in sign-magnitude
             * bits, +1 grows |s|, -1 shrinks it. */
            if ((e > 0) == (s > 0))
                u += 1;
            else
                u -= 1;
            memcpy(&s, &u, 8);
        }
    }
    return s;
}

/* a * b + residual as a round-to-odd double (a*b not necessarily exact). */
static inline double prod_round_odd(double a, double b)
{
    double p = a * b;
    double e = fma(a, b, -p);
    if (e != 0) {
        uint64_t u;
        memcpy(&u, &p, 8);
        if ((u & 1) == 0) {
            if ((e > 0) == (p > 0))
                u += 1;
            else
                u -= 1;
            memcpy(&p, &u, 8);
        }
    }
    return p;
}

/* F32 bits of x rounded to odd (exact when x fits). */
static inline uint32_t f32_bits_round_odd(double x)
{
    float f = (float)x;
    uint32_t u = f32_bits(f);
    double back = (double)f;
    if (back != x) {
        if (fabs(back) > fabs(x))
            u -= 1;   /* one step towards zero */
        u |= 1;
    }
    return u;
}

static inline uint16_t bf16_from_f32_bits_rne(uint32_t u)
{
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

/* W * (1 + w) for an F64 norm weight w, as a round-to-odd double.
 * 1 + w = hi + lo exactly (TwoSum), W*hi = p + e and W*lo = q + eq exactly
 * (TwoProduct), so x = p + e + q + eq.  s = RN(p + (e + q)) is within an
 * ulp of x, and the sign of x - s, assembled from the exact rounding
 * errors, picks the odd neighbour.  Unlike W + W*w this does not cancel
 * when w is close to -1 (1 + w = 2^-53 is exact in hi). */
static inline double one_plus_wide_round_odd(double W, double w)
{
    double hi = 1.0 + w, bb = hi - 1.0;
    double lo = (1.0 - (hi - bb)) + (w - bb);
    double p = W * hi, e = fma(W, hi, -p);
    double q = W * lo, eq = fma(W, lo, -q);
    double rem = e + q, t = rem - e;
    double rem_err = (e - (rem - t)) + (q - t);
    double s = p + rem;
    double tail = (rem - (s - p)) + (rem_err + eq);
    if (tail == 0)
        return s;
    if (s == 0)
        return tail > 0 ? 4.9406564584124654e-324 : -4.9406564584124654e-324;
    uint64_t u;
    memcpy(&u, &s, 8);
    if ((u & 1) == 0) {
        if ((tail > 0) == (s > 0))
            u += 1;
        else
            u -= 1;
        memcpy(&s, &u, 8);
    }
    return s;
}

/* The exact (or round-to-odd) value of W * gain(w). */
static inline double product(double W, double w, int one_plus, int wide)
{
    if (!one_plus)
        return wide ? prod_round_odd(W, w) : W * w;
    if (W == 0 || w == -1.0)
        return W * (1.0 + w); /* exact zero: W + W*w would lose the IEEE sign */
    if (wide)
        return one_plus_wide_round_odd(W, w);
    return sum_round_odd(W, W * w);
}

/* The BF16 fast path: when every gain g has at most 16 significant bits
 * (a BF16 or F16 norm, and Gemma's 1 + w for most BF16 w), a BF16 weight
 * (8 bits) times g is exact in F32, so one F32 multiply and one integer
 * round-to-nearest-even give the correctly rounded BF16.  The exception is
 * a product in F32's subnormal range (or Inf/NaN), which the return value
 * flags so the caller redoes that row on the exact path.  Compiled twice,
 * for AVX2 and for baseline x86-64, and picked at load time. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__) && \
    !defined(__SANITIZE_THREAD__)
#define FOLD_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define FOLD_CLONES
#endif

/* One element of the fast path: x * g in F32, rounded to BF16; *flagged
 * gets a nonzero bit for a subnormal, infinite or NaN product. */
static inline uint16_t bf16_mul_f32(uint16_t x, float g, uint32_t *flagged)
{
    uint32_t b = f32_bits(f32_from_bits((uint32_t)x << 16) * g);
    uint32_t e = (b >> 23) & 0xFFu;
    *flagged |= (e == 0xFFu) | ((e == 0) & ((b & 0x7FFFFFu) != 0));
    return bf16_from_f32_bits_rne(b);
}

FOLD_CLONES
static int fold_bf16_row_f32(const uint16_t *restrict x, uint16_t *restrict y, size_t n,
                             const float *restrict g)
{
    uint32_t flagged = 0;
    for (size_t c = 0; c < n; c++)
        y[c] = bf16_mul_f32(x[c], g[c], &flagged);
    return flagged != 0;
}

/* ... for n elements that all read the gain g (fused experts [E, in, out]). */
FOLD_CLONES
static int fold_bf16_run_f32(const uint16_t *restrict x, uint16_t *restrict y, size_t n, float g)
{
    uint32_t flagged = 0;
    for (size_t c = 0; c < n; c++)
        y[c] = bf16_mul_f32(x[c], g, &flagged);
    return flagged != 0;
}

/* Fills g[c] with the gain as a float when every gain has at most 16
 * significant bits; returns 0 (and the fast path is not taken) otherwise. */
static int gains_fit_16_bits(const double *w, int one_plus, size_t cols, float *g)
{
    for (size_t c = 0; c < cols; c++) {
        double v = one_plus ? 1.0 + w[c] : w[c];
        if (one_plus && v - 1.0 != w[c])
            return 0;   /* 1 + w was not exact in double */
        float f = (float)v;
        if ((double)f != v || (f32_bits(f) & 0xFFu) != 0)
            return 0;
        g[c] = f;
    }
    return 1;
}

/* The exact path for one element: the product as a round-to-odd double,
 * to F32 by round-to-odd, to BF16 by nearest-even (see the top). */
static inline uint16_t bf16_exact(uint16_t x, double w, int one_plus, int wide)
{
    return bf16_from_f32_bits_rne(f32_bits_round_odd(product(bf16_to_double(x), w, one_plus, wide)));
}

/* The middle tier: when every gain v (w, or 1 + w exact in a double) has
 * at most 45 significant bits, a BF16 weight (8 bits) times v is exact in a
 * double, so one double multiply, round-to-odd to F32 and nearest-even to
 * BF16 give the correctly rounded result (see the top).  Gemma's and
 * Qwen3.5's 1 + w of a small BF16 w (|w| < 2^-8: 17 or more bits) lands
 * here instead of on the element-wise TwoSum path.  Branch-free so the
 * compiler vectorises it. */
static int gains_fit_45_bits(const double *w, int one_plus, size_t cols, double *v)
{
    for (size_t c = 0; c < cols; c++) {
        double g = one_plus ? 1.0 + w[c] : w[c];
        uint64_t u;
        memcpy(&u, &g, 8);
        if ((one_plus && g - 1.0 != w[c]) || (u & 0xFFu) != 0)
            return 0;
        v[c] = g;
    }
    return 1;
}

FOLD_CLONES
static void fold_bf16_row_f64(const uint16_t *restrict x, uint16_t *restrict y, size_t n, const double *restrict v)
{
    for (size_t c = 0; c < n; c++)
        y[c] = bf16_from_f32_bits_rne(f32_bits_round_odd(bf16_to_double(x[c]) * v[c]));
}

FOLD_CLONES
static void fold_bf16_run_f64(const uint16_t *restrict x, uint16_t *restrict y, size_t n, double v)
{
    for (size_t c = 0; c < n; c++)
        y[c] = bf16_from_f32_bits_rne(f32_bits_round_odd(bf16_to_double(x[c]) * v));
}

static void fold_bf16_exact(const uint16_t *in, uint16_t *out, size_t rows, size_t cols,
                            const double *w, int one_plus, int wide)
{
    for (size_t r = 0; r < rows; r++) {
        const uint16_t *x = in + r * cols;
        uint16_t *y = out + r * cols;
        if (!one_plus && !wide)
            fold_bf16_row_f64(x, y, cols, w);   /* w: at most 24 bits */
        else
            for (size_t c = 0; c < cols; c++)
                y[c] = bf16_exact(x[c], w[c], one_plus, wide);
    }
}

/* Returns 1 when the output may hold Inf/NaN and must be scanned: the fast
 * path flags those itself, so all-fast-path output needs no second pass. */
static int fold_bf16(const uint16_t *in, uint16_t *out, size_t rows, size_t cols,
                     const double *w, int one_plus, int wide)
{
    int scan = 0;
    /* The fast path folds into a scratch row, so a flagged row can be
     * redone from its input even when in == out. */
    enum { STACK_COLS = 8192 };
    float stack_g[STACK_COLS];
    double stack_v[STACK_COLS];
    uint16_t stack_row[STACK_COLS];
    int heap = cols > STACK_COLS;
    float *g = heap ? malloc(cols * sizeof *g) : stack_g;
    double *v = heap ? malloc(cols * sizeof *v) : stack_v;
    uint16_t *row = heap ? malloc(cols * sizeof *row) : stack_row;
    int ok = g && v && row && !wide;
    if (ok && gains_fit_16_bits(w, one_plus, cols, g)) {
        for (size_t r = 0; r < rows; r++) {
            const uint16_t *x = in + r * cols;
            uint16_t *y = out + r * cols;
            if (fold_bf16_row_f32(x, row, cols, g)) {
                fold_bf16_exact(x, y, 1, cols, w, one_plus, wide);
                scan = 1;
            } else
                memcpy(y, row, cols * sizeof *row);
        }
    } else if (ok && one_plus && gains_fit_45_bits(w, one_plus, cols, v)) {
        for (size_t r = 0; r < rows; r++)
            fold_bf16_row_f64(in + r * cols, out + r * cols, cols, v);
        scan = 1;
    } else {
        fold_bf16_exact(in, out, rows, cols, w, one_plus, wide);
        scan = 1;
    }
    if (heap) {
        free(g);
        free(v);
        free(row);
    }
    return scan;
}

static void fold_f32(const uint32_t *in, uint32_t *out, size_t rows, size_t cols,
                     const double *w, int one_plus, int wide)
{
    for (size_t r = 0; r < rows; r++) {
        const uint32_t *x = in + r * cols;
        uint32_t *y = out + r * cols;
        for (size_t c = 0; c < cols; c++) {
            double p = product((double)f32_from_bits(x[c]), w[c], one_plus, wide);
            y[c] = f32_bits((float)p);
        }
    }
}

static void fold_f16(const uint16_t *in, uint16_t *out, size_t rows, size_t cols,
                     const double *w, int one_plus, int wide)
{
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < cols; c++)
            out[r * cols + c] =
                double_to_f16(product(f16_to_double(in[r * cols + c]), w[c], one_plus, wide));
}

static void fold_f64(const double *in, double *out, size_t rows, size_t cols,
                     const double *w, int one_plus)
{
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < cols; c++) {
            double x = in[r * cols + c];
            /* fma rounds x*w + x once: exactly x * (1 + w) rounded. */
            out[r * cols + c] = !one_plus ? x * w[c] : (x == 0 || w[c] == -1.0) ? x * (1.0 + w[c]) : fma(x, w[c], x);
        }
}

/* 1 when element i of a buffer of dtype d is Inf or NaN (all exponent bits set). */
static inline int is_nonfinite(st_dtype d, const void *buf, size_t i)
{
    switch (d) {
    case ST_BF16: return (((const uint16_t *)buf)[i] & 0x7F80u) == 0x7F80u;
    case ST_F16: return (((const uint16_t *)buf)[i] & 0x7C00u) == 0x7C00u;
    case ST_F32: return (((const uint32_t *)buf)[i] & 0x7F800000u) == 0x7F800000u;
    default: return !isfinite(((const double *)buf)[i]);
    }
}

/* Index of the first non-finite element, or -1.  The common all-finite
 * case is one branch-free pass per 16-bit dtype (vectorised); the index is
 * searched for only when something is wrong. */
static long first_nonfinite(st_dtype d, const void *buf, size_t n)
{
    if (d == ST_BF16 || d == ST_F16) {
        const uint16_t *x = buf;
        uint16_t mask = d == ST_BF16 ? 0x7F80u : 0x7C00u;
        unsigned any = 0;
        for (size_t i = 0; i < n; i++)
            any |= (x[i] & mask) == mask;
        if (!any)
            return -1;
    }
    for (size_t i = 0; i < n; i++)
        if (is_nonfinite(d, buf, i))
            return (long)i;
    return -1;
}

long fold_rows(st_dtype d, const void *in, void *out, size_t rows, size_t cols,
               const double *w, fl_gain gain, int w_is_f64)
{
    int one_plus = gain == GAIN_ONE_PLUS_W;
    switch (d) {
    case ST_BF16:
        if (!fold_bf16(in, out, rows, cols, w, one_plus, w_is_f64))
            return -1;
        break;
    case ST_F16: fold_f16(in, out, rows, cols, w, one_plus, w_is_f64); break;
    case ST_F32: fold_f32(in, out, rows, cols, w, one_plus, w_is_f64); break;
    case ST_F64: fold_f64(in, out, rows, cols, w, one_plus); break;
    default: return 0;
    }
    return first_nonfinite(d, out, rows * cols);
}

/* ---------------------------------------------------------------------------
 * ranges of a tensor, along its input axis */

fold_axis fold_axis_of(const uint64_t *shape, int ndim, int axis)
{
    fold_axis ax = {0, 0};
    if (ndim < 1 || axis < 0 || axis >= ndim || shape[axis] == 0)
        return ax;
    uint64_t inner = 1;
    for (int i = axis + 1; i < ndim; i++) {
        if (shape[i] && inner > UINT64_MAX / shape[i])
            return ax;
        inner *= shape[i];
    }
    if (inner == 0)
        return ax;
    ax.n_in = shape[axis];
    ax.inner = inner;
    return ax;
}

/* fold_bf16 for a run of n elements that all read one gain w: the 16-bit
 * test once per run, not per piece, the fast path in blocks written
 * straight to `out` (through a stack block when in == out, so a flagged
 * block can be redone exactly from its input).  Returns fold_bf16's scan
 * flag. */
static int fold_bf16_run(const uint16_t *in, uint16_t *out, size_t n, double w, int one_plus, int wide)
{
    float g;
    double v;
    if (!wide && !gains_fit_16_bits(&w, one_plus, 1, &g) && gains_fit_45_bits(&w, one_plus, 1, &v)) {
        fold_bf16_run_f64(in, out, n, v);
        return 1;
    }
    if (wide || !gains_fit_16_bits(&w, one_plus, 1, &g)) {
        for (size_t c = 0; c < n; c++)
            out[c] = bf16_exact(in[c], w, one_plus, wide);
        return 1;
    }
    enum { BLOCK = 4096 };
    uint16_t block[BLOCK];
    int scan = 0;
    for (size_t c0 = 0; c0 < n; c0 += BLOCK) {
        size_t len = n - c0 < BLOCK ? n - c0 : BLOCK;
        uint16_t *dst = in == out ? block : out + c0;
        if (fold_bf16_run_f32(in + c0, dst, len, g)) {
            for (size_t c = 0; c < len; c++)
                out[c0 + c] = bf16_exact(in[c0 + c], w, one_plus, wide);
            scan = 1;
        } else if (dst == block) {
            memcpy(out + c0, block, len * sizeof *block);
        }
    }
    return scan;
}

/* A run of elements that all read gain g: BF16 by fold_bf16_run, the
 * other dtypes against a vector of g, in pieces of the stack buffer. */
static long fold_run(st_dtype d, const char *in, char *out, uint64_t n, double g, fl_gain gain,
                     int wide)
{
    if (d == ST_BF16) {
        if (!fold_bf16_run((const uint16_t *)(const void *)in, (uint16_t *)(void *)out, (size_t)n, g,
                           gain == GAIN_ONE_PLUS_W, wide))
            return -1;
        return first_nonfinite(d, out, (size_t)n);
    }
    enum { PIECE = 512 };
    double gv[PIECE];
    size_t es = st_dtype_bits(d) / 8;
    uint64_t fill = n < PIECE ? n : PIECE;
    for (uint64_t k = 0; k < fill; k++)
        gv[k] = g;
    for (uint64_t done = 0; done < n;) {
        uint64_t len = n - done < PIECE ? n - done : PIECE;
        long bad = fold_rows(d, in + done * es, out + done * es, 1, (size_t)len, gv, gain, wide);
        if (bad >= 0)
            return (long)(done + (uint64_t)bad);
        done += len;
    }
    return -1;
}

long fold_range(st_dtype d, const void *in, void *out, uint64_t first, uint64_t count,
                fold_axis ax, const double *w, fl_gain gain, int w_is_f64)
{
    size_t es = st_dtype_bits(d) / 8;
    const char *q = in;
    char *p = out;
    uint64_t done = 0;
    while (done < count) {
        uint64_t f = first + done, left = count - done, rows, len;
        long bad;
        if (ax.inner > 1) {
            /* [E, in, out]: a run of `inner` elements shares one gain. */
            len = ax.inner - f % ax.inner;
            if (len > left)
                len = left;
            rows = 1;
            bad = fold_run(d, q, p, len, w[fold_gain_index(ax, f)], gain, w_is_f64);
        } else {
            /* [.., in]: a leading partial row, whole rows, a trailing one. */
            uint64_t col = f % ax.n_in;
            if (col != 0 || left < ax.n_in) {
                rows = 1;
                len = ax.n_in - col < left ? ax.n_in - col : left;
            } else {
                rows = left / ax.n_in;
                len = ax.n_in;
            }
            bad = fold_rows(d, q, p, (size_t)rows, (size_t)len, w + col, gain, w_is_f64);
        }
        if (bad >= 0)
            return (long)(done + (uint64_t)bad);
        p += rows * len * es;
        q += rows * len * es;
        done += rows * len;
    }
    return -1;
}

void fold_describe_index(const uint64_t *shape, int ndim, uint64_t f, char *buf, size_t cap)
{
    uint64_t idx[ST_MAX_DIMS];
    int n = ndim < 1 ? 1 : ndim > ST_MAX_DIMS ? ST_MAX_DIMS : ndim;
    for (int i = n - 1; i >= 0; i--) {
        uint64_t dim = ndim >= 1 && shape[i] ? shape[i] : 1;
        idx[i] = i ? f % dim : f;
        f = i ? f / dim : 0;
    }
    size_t k = 0;
    for (int i = 0; i < n && k < cap; i++) {
        int w = snprintf(buf + k, cap - k, "%s%llu", i ? ", " : "[", (unsigned long long)idx[i]);
        if (w < 0)
            break;
        k += (size_t)w;
    }
    if (k < cap)
        snprintf(buf + k, cap - k, "]");
}

void fill_value(st_dtype d, void *out, size_t n, double value)
{
    for (size_t i = 0; i < n; i++) {
        switch (d) {
        case ST_BF16: ((uint16_t *)out)[i] = double_to_bf16(value); break;
        case ST_F16: ((uint16_t *)out)[i] = double_to_f16(value); break;
        case ST_F32: ((uint32_t *)out)[i] = f32_bits((float)value); break;
        default: ((double *)out)[i] = value; break;
        }
    }
}
