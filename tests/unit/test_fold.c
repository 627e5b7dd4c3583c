/* test_fold.c — the fold kernel against an independent reference.
 *
 * The reference multiplies in x87 long double (64-bit significand: every
 * product of a 24-bit weight and a 24-bit gain, and W + W*w for the 1+w
 * gains used here, is exact) and rounds once with rintl() at the target
 * format's last bit, handling subnormals and overflow by hand.  It shares
 * no code with src/fold.c (no round-to-odd, no bit tricks). */
#include "flashify/arch.h"
#include "flashify/dtype.h"
#include "flashify/fold.h"
#include "flashify/safetensors.h"

#include <fenv.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

/* x rounded to nearest-even in a binary format with `p` significand bits,
 * minimum normal exponent emin (x = m * 2^e, 1 <= m < 2), max finite
 * exponent emax; returns +-inf on overflow. */
static long double round_format(long double x, int p, int emin, int emax)
{
    if (x == 0 || !isfinite(x))
        return x;
    int e;
    frexpl(x, &e);   /* x = f * 2^e, 0.5 <= |f| < 1 */
    e -= 1;          /* now 1 <= |m| < 2 */
    if (e < emin)
        e = emin;    /* subnormal: fixed quantum */
    long double quantum = ldexpl(1.0L, e - (p - 1));
    long double r = rintl(x / quantum) * quantum;   /* FE_TONEAREST: ties to even */
    long double max = ldexpl(2.0L - ldexpl(1.0L, 1 - p), emax);
    if (fabsl(r) > max)
        return x > 0 ? INFINITY : -INFINITY;
    return r;
}

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint32_t next32(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}

/* A "trained-looking" weight: random sign, exponent in [-12, 2], random bits. */
static float random_weight(void)
{
    float m = 1.0f + (float)(next32() & 0x7FFFFF) / 8388608.0f;
    int e = -12 + (int)(next32() % 15);
    return (next32() & 1 ? -1 : 1) * ldexpf(m, e);
}

static void test_dtype(int d, int p, int emin, int emax, int gain)
{
    enum { ROWS = 64, COLS = 257 };
    size_t es = st_dtype_bits(d) / 8;
    unsigned char *in = malloc(ROWS * COLS * es), *out = malloc(ROWS * COLS * es);
    double w[COLS];
    for (int c = 0; c < COLS; c++) {
        float g = gain == GAIN_ONE_PLUS_W ? random_weight() / 4 : 0.5f + 2.0f * (float)(next32() % 1000) / 1000;
        w[c] = g;
    }
    /* Columns 0..3: gains that force exact ties at the target precision:
     * W * (1 + 2^-p) = W + W*2^-p lies halfway for an odd last bit. */
    w[0] = gain == GAIN_ONE_PLUS_W ? ldexp(1.0, -p) : 1.0 + ldexp(1.0, -p);
    w[1] = gain == GAIN_ONE_PLUS_W ? -ldexp(1.0, -p) : 1.0 - ldexp(1.0, -p - 1);
    w[2] = gain == GAIN_ONE_PLUS_W ? -1.0 : 0.0;   /* zero gain: signed zeros */
    w[3] = gain == GAIN_ONE_PLUS_W ? 3.0 : 4.0;
    for (int i = 0; i < ROWS * COLS; i++) {
        double v = round_format(random_weight(), p, emin, emax);
        if (i % 7 == 0)
            v = -v;
        if (i % 97 == 0)
            v = -0.0;
        switch (d) {
        case ST_BF16: ((uint16_t *)in)[i] = double_to_bf16(v); break;
        case ST_F16: ((uint16_t *)in)[i] = double_to_f16(v); break;
        case ST_F32: ((uint32_t *)in)[i] = f32_bits((float)v); break;
        }
    }
    long bad = fold_rows(d, in, out, ROWS, COLS, w, gain, 0);
    CHECK(bad == -1, "dtype %s gain %d: unexpected non-finite at %ld", st_dtype_name(d), gain, bad);
    int wrong = 0;
    for (int i = 0; i < ROWS * COLS; i++) {
        long double W = dtype_load(d, in, (size_t)i);
        long double g = gain == GAIN_ONE_PLUS_W ? 1.0L + (long double)w[i % COLS] : (long double)w[i % COLS];
        long double want = round_format(W * g, p, emin, emax);
        long double got = dtype_load(d, out, (size_t)i);
        if (got != want || signbit(got) != signbit(want)) {
            if (wrong++ < 5)
                CHECK(0, "dtype %s gain %d: element %d: W=%.20Lg g=%.20Lg got %.20Lg want %.20Lg",
                      st_dtype_name(d), gain, i, W, g, got, want);
        }
    }
    CHECK(wrong == 0, "dtype %s gain %d: %d of %d elements wrong", st_dtype_name(d), gain, wrong, ROWS * COLS);
    free(in);
    free(out);
}

/* BF16 gains (<= 16 significant bits) take the F32 fast path; products in
 * F32's subnormal range must fall back to the exact path, in place too. */
static void test_bf16_fast_path(int gain)
{
    enum { ROWS = 48, COLS = 129 };
    uint16_t in[ROWS * COLS], out[ROWS * COLS], inplace[ROWS * COLS];
    double w[COLS];
    for (int c = 0; c < COLS; c++) {
        /* Gemma: 1 + w must fit 16 bits too for the fast path. */
        double g = gain == GAIN_ONE_PLUS_W ? ((double)(next32() % 512) - 256) / 256
                                           : 0.5 + (double)(next32() % 4096) / 1024;
        w[c] = bf16_to_double(double_to_bf16(g));
    }
    w[0] = gain == GAIN_ONE_PLUS_W ? ldexp(1.0, -8) : 1.0 + ldexp(1.0, -8);   /* ties */
    w[1] = gain == GAIN_ONE_PLUS_W ? -0.75 : ldexp(1.0, -20);                /* tiny gain */
    for (int i = 0; i < ROWS * COLS; i++) {
        double v = random_weight();
        if ((i / COLS) % 3 == 0 && i % 5 == 0)
            v = ldexp(v, -122);   /* these rows have products in F32's subnormal range */
        if (i % 97 == 0)
            v = -0.0;
        if (i % COLS == 0 && i % 2 == 0)
            v = ldexp(i % 4 ? -1.0 : 1.0, (int)(next32() % 8) - 4);   /* exact ties in column 0 */
        in[i] = inplace[i] = double_to_bf16(v);
    }
    CHECK(fold_rows(ST_BF16, in, out, ROWS, COLS, w, gain, 0) == -1, "fast path: unexpected non-finite");
    fold_rows(ST_BF16, inplace, inplace, ROWS, COLS, w, gain, 0);
    CHECK(memcmp(out, inplace, sizeof out) == 0, "fast path: in-place fold differs");
    int wrong = 0;
    for (int i = 0; i < ROWS * COLS; i++) {
        long double W = bf16_to_double(in[i]);
        long double g = gain == GAIN_ONE_PLUS_W ? 1.0L + (long double)w[i % COLS] : (long double)w[i % COLS];
        long double want = round_format(W * g, 8, -126, 127);
        long double got = bf16_to_double(out[i]);
        if ((got != want || signbit(got) != signbit(want)) && wrong++ < 5)
            CHECK(0, "fast path gain %d: element %d: W=%.20Lg g=%.20Lg got %.20Lg want %.20Lg",
                  gain, i, W, g, got, want);
    }
    CHECK(wrong == 0, "fast path gain %d: %d elements wrong", gain, wrong);
}

static void test_nonfinite_reported(void)
{
    uint16_t in[4] = {double_to_bf16(1.0), double_to_bf16(3e38), double_to_bf16(2.0), 0};
    uint16_t out[4];
    double w[4] = {1.0, 4.0, 1.0, 1.0};
    CHECK(fold_rows(ST_BF16, in, out, 1, 4, w, GAIN_W, 0) == 1, "overflow to inf not reported at index 1");
    float fin[3] = {1.0f, 2.0f, 3.0f}, fout[3];
    double wn[3] = {1.0, 1.0, NAN};
    CHECK(fold_rows(ST_F32, fin, fout, 1, 3, wn, GAIN_W, 0) == 2, "NaN gain not reported at index 2");
}

static void test_in_place_and_row_split(void)
{
    /* Folding 8 rows at once, one row at a time, or in place gives the same bits. */
    enum { ROWS = 8, COLS = 33 };
    uint16_t a[ROWS * COLS], b[ROWS * COLS], c[ROWS * COLS];
    double w[COLS];
    for (int i = 0; i < COLS; i++)
        w[i] = 0.25 + (double)(next32() % 4096) / 1024;
    for (int i = 0; i < ROWS * COLS; i++)
        a[i] = c[i] = double_to_bf16(random_weight());
    fold_rows(ST_BF16, a, b, ROWS, COLS, w, GAIN_W, 0);
    for (int r = 0; r < ROWS; r++)
        fold_rows(ST_BF16, c + r * COLS, c + r * COLS, 1, COLS, w, GAIN_W, 0);
    CHECK(memcmp(b, c, sizeof b) == 0, "row-by-row in-place fold differs from the block fold");
}

/* fold_range on 3-D fused experts: [E, out, in] reads w[last index],
 * [E, in, out] reads w[middle index].  Folded in chunks whose boundaries
 * fall mid-row (and mid-run of one gain), the result must equal the
 * long-double reference element by element, for every chunk size. */
static void test_range_axes(int d, int p, int emin, int emax, int gain)
{
    enum { E = 3, A = 5, B = 7, N = E * A * B };
    const uint64_t shape[3] = {E, A, B};
    size_t es = st_dtype_bits(d) / 8;
    unsigned char in[N * 4], out[N * 4];
    for (int axis = 1; axis <= 2; axis++) {
        int n_in = axis == 1 ? A : B;
        double w[B];
        for (int c = 0; c < n_in; c++)
            w[c] = gain == GAIN_ONE_PLUS_W ? random_weight() / 4 : 0.5 + (double)(next32() % 1000) / 500;
        for (int i = 0; i < N; i++) {
            double v = round_format(random_weight(), p, emin, emax);
            switch (d) {
            case ST_BF16: ((uint16_t *)in)[i] = double_to_bf16(v); break;
            case ST_F16: ((uint16_t *)in)[i] = double_to_f16(v); break;
            default: ((uint32_t *)in)[i] = f32_bits((float)v); break;
            }
        }
        fold_axis ax = fold_axis_of(shape, 3, axis);
        CHECK(ax.n_in == (uint64_t)n_in && ax.inner == (axis == 1 ? B : 1u), "axis %d: n_in %llu inner %llu",
              axis, (unsigned long long)ax.n_in, (unsigned long long)ax.inner);
        for (int chunk = 1; chunk <= N; chunk += chunk < 12 ? 1 : 17) {
            memset(out, 0xAB, sizeof out);
            for (int first = 0; first < N; first += chunk) {
                int count = N - first < chunk ? N - first : chunk;
                long bad = fold_range(d, in + (size_t)first * es, out + (size_t)first * es, (uint64_t)first,
                                      (uint64_t)count, ax, w, gain, 0);
                CHECK(bad == -1, "axis %d chunk %d: non-finite at %ld", axis, chunk, bad);
            }
            int wrong = 0;
            for (int i = 0; i < N; i++) {
                int e = i / (A * B), a = i / B % A, b = i % B;
                (void)e;
                long double W = dtype_load(d, in, (size_t)i);
                long double gv = axis == 1 ? w[a] : w[b];
                long double g = gain == GAIN_ONE_PLUS_W ? 1.0L + gv : gv;
                long double want = round_format(W * g, p, emin, emax);
                long double got = dtype_load(d, out, (size_t)i);
                if ((got != want || signbit(got) != signbit(want)) && wrong++ < 3)
                    CHECK(0, "%s axis %d chunk %d: element [%d, %d, %d]: got %.20Lg want %.20Lg",
                          st_dtype_name(d), axis, chunk, e, a, b, got, want);
            }
            CHECK(wrong == 0, "%s axis %d chunk %d gain %d: %d elements wrong", st_dtype_name(d), axis, chunk, gain,
                  wrong);
        }
    }
    /* A 2-D nn.Linear [out, in] through fold_range equals fold_rows. */
    const uint64_t sh2[2] = {A * E, B};
    fold_axis ax2 = fold_axis_of(sh2, 2, 1);
    double w2[B];
    for (int c = 0; c < B; c++)
        w2[c] = 0.25 + (double)(next32() % 1000) / 250;
    unsigned char ref[N * 4];
    fold_rows(d, in, ref, A * E, B, w2, gain, 0);
    fold_range(d, in, out, 0, 10, ax2, w2, gain, 0);
    fold_range(d, in + 10 * es, out + 10 * es, 10, N - 10, ax2, w2, gain, 0);
    CHECK(memcmp(ref, out, N * es) == 0, "%s: 2-D fold_range split mid-row differs from fold_rows",
          st_dtype_name(d));
    fold_axis bad = fold_axis_of(shape, 3, 3);
    CHECK(bad.n_in == 0, "axis 3 of a 3-D tensor is refused");
}

/* BF16 fused experts [E, in, out] with long runs of one gain (longer
 * than fold_bf16_run's 4096-element block): the fast path for 16-bit
 * gains, the exact path for F32 and F64 gains, 1 + w, a block whose
 * products fall in F32's subnormal range (redone exactly), in place and
 * not, in chunks that start and end mid-run and mid-block, and an
 * overflow reported at its index.  Against the long-double reference. */
enum { MR_E = 2, MR_A = 3, MR_B = 5000, MR_N = MR_E * MR_A * MR_B };

static int check_middle(const uint16_t *in, const uint16_t *out, const double *w, int gain, const char *what)
{
    int wrong = 0;
    for (int i = 0; i < MR_N; i++) {
        long double W = bf16_to_double(in[i]), gv = w[i / MR_B % MR_A];
        long double want = round_format(W * (gain == GAIN_ONE_PLUS_W ? 1.0L + gv : gv), 8, -126, 127);
        long double got = bf16_to_double(out[i]);
        if ((got != want || signbit(got) != signbit(want)) && wrong++ < 3)
            CHECK(0, "%s gain %d: element %d: W=%.20Lg g=%.20Lg got %.20Lg want %.20Lg", what, gain, i, W, gv, got,
                  want);
    }
    return wrong;
}

static void test_middle_runs(int gain)
{
    static uint16_t in[MR_N], out[MR_N], inplace[MR_N];
    const uint64_t shape[3] = {MR_E, MR_A, MR_B};
    fold_axis ax = fold_axis_of(shape, 3, 1);
    for (int i = 0; i < MR_N; i++)
        in[i] = double_to_bf16(random_weight());
    /* Run 1 of expert 0, second block: tiny weights whose products are
     * F32 subnormals, so the fast path flags that block. */
    for (int i = MR_B + 4096 + 10; i < MR_B + 4096 + 20; i++)
        in[i] = double_to_bf16(ldexp(1.5, -127));
    for (int kind = 0; kind < 3; kind++) {     /* gains of 16 bits, 24 bits, 53 bits */
        double w[MR_A];
        for (int a = 0; a < MR_A; a++) {
            double g = gain == GAIN_ONE_PLUS_W ? random_weight() / 4 : 0.5 + (double)(next32() % 1000) / 500;
            w[a] = kind == 0 ? bf16_to_double(double_to_bf16(g)) : kind == 1 ? (double)(float)(g * (1 + 0x1p-20)) : g * (1 + 0x1p-40);
        }
        if (gain == GAIN_W)
            w[1] = kind == 0 ? 0.5 : 0.5 + 0x1p-20;   /* run 1: the subnormal products */
        if (kind == 1) {
            /* A double-rounding trap: 3 * (2839894 + 2^23) / 2^23 =
             * 4 * (1 + 2^-8 + 2^-24), which F32 rounds to the BF16
             * midpoint 4 * (1 + 2^-8) and then to even, 4, while once
             * rounded it is 4 * (1 + 2^-7).  Planted in run 2 of both
             * experts, with W = 3 and -3. */
            w[2] = gain == GAIN_ONE_PLUS_W ? 2839894.0 / 8388608.0 : 11228502.0 / 8388608.0;
            for (int e = 0; e < MR_E; e++)
                for (int k = 0; k < 8; k++)
                    in[(e * MR_A + 2) * MR_B + 50 + 601 * k] = double_to_bf16(k % 2 ? -3.0 : 3.0);
        }
        int wide = kind == 2;
        for (int chunk = 1237; chunk <= MR_N; chunk += chunk < MR_N / 2 ? 4099 : MR_N) {
            memset(out, 0xAB, sizeof out);
            memcpy(inplace, in, sizeof in);
            for (int first = 0; first < MR_N; first += chunk) {
                int count = MR_N - first < chunk ? MR_N - first : chunk;
                long bad = fold_range(ST_BF16, in + first, out + first, (uint64_t)first, (uint64_t)count, ax, w,
                                      gain, wide);
                long bad2 = fold_range(ST_BF16, inplace + first, inplace + first, (uint64_t)first, (uint64_t)count,
                                       ax, w, gain, wide);
                CHECK(bad == -1 && bad2 == -1, "kind %d chunk %d: non-finite at %ld / %ld", kind, chunk, bad, bad2);
            }
            char what[64];
            snprintf(what, sizeof what, "middle-axis runs, gains kind %d, chunk %d", kind, chunk);
            CHECK(check_middle(in, out, w, gain, what) == 0, "%s: elements wrong", what);
            CHECK(memcmp(out, inplace, sizeof out) == 0, "%s: in place differs", what);
        }
    }
    /* An overflowing product is reported at its index, relative to first. */
    double w[MR_A] = {1.0, 4.0, 1.0};
    memcpy(inplace, in, sizeof in);
    inplace[MR_B + 3000] = double_to_bf16(ldexp(1.0, 127));
    long bad = fold_range(ST_BF16, inplace + 100, out + 100, 100, MR_N - 100, ax, w, GAIN_W, 0);
    CHECK(bad == MR_B + 3000 - 100, "overflow reported at %ld, expected %d", bad, MR_B + 3000 - 100);
}

static void test_describe_index(void)
{
    const uint64_t s3[3] = {3, 5, 7}, s2[2] = {4, 6};
    char buf[64];
    fold_describe_index(s3, 3, 2 * 35 + 4 * 7 + 6, buf, sizeof buf);
    CHECK(strcmp(buf, "[2, 4, 6]") == 0, "3-D index: %s", buf);
    fold_describe_index(s2, 2, 13, buf, sizeof buf);
    CHECK(strcmp(buf, "[2, 1]") == 0, "2-D index: %s", buf);
}

static void test_identity_fill(void)
{
    uint16_t h[3];
    fill_value(ST_BF16, h, 3, 1.0);
    CHECK(h[0] == 0x3F80 && h[2] == 0x3F80, "BF16 identity 1 is 0x3F80, got 0x%04X", h[0]);
    fill_value(ST_F16, h, 3, 1.0);
    CHECK(h[1] == 0x3C00, "F16 identity 1 is 0x3C00, got 0x%04X", h[1]);
    uint32_t f[2];
    fill_value(ST_F32, f, 2, 0.0);
    CHECK(f[0] == 0 && f[1] == 0, "F32 identity 0 is all-zero bits");
}

int main(void)
{
    fesetround(FE_TONEAREST);
    for (int gain = GAIN_W; gain <= GAIN_ONE_PLUS_W; gain++) {
        test_dtype(ST_BF16, 8, -126, 127, gain);
        test_dtype(ST_F16, 11, -14, 15, gain);
        test_dtype(ST_F32, 24, -126, 127, gain);
    }
    test_bf16_fast_path(GAIN_W);
    test_bf16_fast_path(GAIN_ONE_PLUS_W);
    for (int gain = GAIN_W; gain <= GAIN_ONE_PLUS_W; gain++) {
        test_range_axes(ST_BF16, 8, -126, 127, gain);
        test_range_axes(ST_F16, 11, -14, 15, gain);
        test_range_axes(ST_F32, 24, -126, 127, gain);
    }
    test_middle_runs(GAIN_W);
    test_middle_runs(GAIN_ONE_PLUS_W);
    test_describe_index();
    test_nonfinite_reported();
    test_in_place_and_row_split();
    test_identity_fill();
    if (failures) {
        fprintf(stderr, "test_fold: %d failure(s)\n", failures);
        return 1;
    }
    printf("test_fold: ok\n");
    return 0;
}
