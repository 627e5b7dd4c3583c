/* test_dtype.c — double <-> F32/BF16/F16 conversions.
 *
 * Expectations come from outside the code under test: hand-computed bit
 * patterns, midpoints built from neighbouring bit patterns (exact in
 * double), the hardware's double->float conversion, and a decoder written
 * here with pow(). */
#include "flashify/dtype.h"
#include "flashify/safetensors.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "check.h"

/* Independent F16 decoder: sign * 2^(e-15) * (1 + m/1024), or subnormal. */
static double f16_ref(uint16_t h)
{
    int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    double v;
    if (e == 31) return m ? NAN : (s ? -INFINITY : INFINITY);
    if (e == 0) v = pow(2.0, -14) * (m / 1024.0);
    else v = pow(2.0, e - 15) * (1.0 + m / 1024.0);
    return s ? -v : v;
}

static uint64_t rng = 0x9E3779B97F4A7C15ULL;
static uint64_t next_rand(void)
{
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return rng;
}

static void test_hand_computed(void)
{
    CHECK(double_to_bf16(1.0) == 0x3f80, "%04x", double_to_bf16(1.0));
    CHECK(double_to_bf16(-2.0) == 0xc000, "%04x", double_to_bf16(-2.0));
    /* 1 + 2^-8 is halfway between 0x3f80 and 0x3f81: ties to even 0x3f80. */
    CHECK(double_to_bf16(1.0 + 0x1p-8) == 0x3f80, "%04x", double_to_bf16(1.0 + 0x1p-8));
    /* 1 + 3*2^-8 is halfway between 0x3f81 and 0x3f82: even is 0x3f82. */
    CHECK(double_to_bf16(1.0 + 3 * 0x1p-8) == 0x3f82, "%04x", double_to_bf16(1.0 + 3 * 0x1p-8));
    /* Just above the tie: the double-rounding trap (float would round the
     * 2^-40 away first and then tie to even 0x3f80). */
    CHECK(double_to_bf16(1.0 + 0x1p-8 + 0x1p-40) == 0x3f81, "%04x",
          double_to_bf16(1.0 + 0x1p-8 + 0x1p-40));
    CHECK(double_to_bf16(0.1) == 0x3dcd, "%04x", double_to_bf16(0.1));
    CHECK(double_to_f16(0.1) == 0x2e66, "%04x", double_to_f16(0.1));
    CHECK(double_to_f16(1.0 / 3) == 0x3555, "%04x", double_to_f16(1.0 / 3));
    CHECK(double_to_f16(65504.0) == 0x7bff, "%04x", double_to_f16(65504.0));
    /* 65520 is halfway between the largest F16 (65504) and 65536: the even
     * side is infinity. */
    CHECK(double_to_f16(65520.0) == 0x7c00, "%04x", double_to_f16(65520.0));
    CHECK(double_to_f16(65519.99) == 0x7bff, "%04x", double_to_f16(65519.99));
    CHECK(double_to_f16(-1e6) == 0xfc00, "%04x", double_to_f16(-1e6));
    CHECK(double_to_f16(0x1p-24) == 0x0001, "%04x", double_to_f16(0x1p-24));
    CHECK(double_to_f16(0x1p-25) == 0x0000, "%04x", double_to_f16(0x1p-25)); /* tie to even 0 */
    CHECK(double_to_f16(0x1p-25 + 0x1p-60) == 0x0001, "%04x", double_to_f16(0x1p-25 + 0x1p-60));
    CHECK(double_to_f16(3 * 0x1p-25) == 0x0002, "%04x", double_to_f16(3 * 0x1p-25));
    /* Largest subnormal rounds up into the smallest normal. */
    CHECK(double_to_f16(0x1p-14 - 0x1p-26) == 0x0400, "%04x", double_to_f16(0x1p-14 - 0x1p-26));
    CHECK(double_to_f16(-0.0) == 0x8000, "%04x", double_to_f16(-0.0));
    CHECK(double_to_bf16(-0.0) == 0x8000, "%04x", double_to_bf16(-0.0));
    CHECK(double_to_bf16(1e-300) == 0x0000, "%04x", double_to_bf16(1e-300));
    CHECK(double_to_bf16(-4.9e-324) == 0x8000, "%04x", double_to_bf16(-4.9e-324));
    CHECK(double_to_bf16(INFINITY) == 0x7f80, "%04x", double_to_bf16(INFINITY));
    CHECK(double_to_bf16(-INFINITY) == 0xff80, "%04x", double_to_bf16(-INFINITY));
    CHECK(double_to_bf16(1e300) == 0x7f80, "%04x", double_to_bf16(1e300));
    /* Largest BF16 is 0x7f7f = (2 - 2^-7) * 2^127; the tie above it (2 - 2^-8) *
     * 2^127 goes to infinity, anything below it to 0x7f7f. */
    CHECK(double_to_bf16((2 - 0x1p-8) * 0x1p127) == 0x7f80, "%04x",
          double_to_bf16((2 - 0x1p-8) * 0x1p127));
    CHECK(double_to_bf16((2 - 0x1p-8 - 0x1p-30) * 0x1p127) == 0x7f7f, "%04x",
          double_to_bf16((2 - 0x1p-8 - 0x1p-30) * 0x1p127));
    /* Smallest BF16 subnormal is 2^-133. */
    CHECK(double_to_bf16(0x1p-133) == 0x0001, "%04x", double_to_bf16(0x1p-133));
    CHECK(double_to_bf16(0x1p-134) == 0x0000, "%04x", double_to_bf16(0x1p-134));
    CHECK(double_to_bf16(0x1p-134 + 0x1p-160) == 0x0001, "%04x", double_to_bf16(0x1p-134 + 0x1p-160));
    uint16_t n = double_to_bf16(NAN);
    CHECK((n & 0x7f80) == 0x7f80 && (n & 0x7f), "NaN -> %04x", n);
    n = double_to_f16(-NAN);
    CHECK((n & 0x7c00) == 0x7c00 && (n & 0x3ff) && (n & 0x8000), "-NaN -> %04x", n);
    CHECK(isnan(double_to_f32(NAN)), "f32 NaN");
    CHECK(f32_bits(double_to_f32(1.0 + 0x1p-24)) == 0x3f800000, "%08x", f32_bits(double_to_f32(1.0 + 0x1p-24)));
    CHECK(f32_bits(double_to_f32(1.0 + 3 * 0x1p-24)) == 0x3f800002, "%08x",
          f32_bits(double_to_f32(1.0 + 3 * 0x1p-24)));
}

/* Every finite BF16/F16 value decodes exactly and encodes back to itself;
 * every midpoint between neighbours ties to the even one, and the doubles
 * on either side of a midpoint go to the nearer neighbour. */
static void test_exhaustive_16bit(void)
{
    for (uint32_t h = 0; h < 65536; h++) {
        double d = bf16_to_double((uint16_t)h);
        uint32_t u32 = h << 16;
        float f;
        memcpy(&f, &u32, 4);
        if (isnan(f)) {
            uint16_t r = double_to_bf16(d);
            CHECK((r & 0x7f80) == 0x7f80 && (r & 0x7f) && (r >> 15) == (h >> 15), "bf16 NaN %04x -> %04x", h, r);
            continue;
        }
        CHECK(double_to_bf16(d) == h, "bf16 %04x -> %g -> %04x", h, d, double_to_bf16(d));
        /* Positive neighbours below infinity (0x7f7f is the largest). */
        if ((h & 0x7fff) < 0x7f7f) {
            double up = bf16_to_double((uint16_t)(h + 1)), mid = (d + up) / 2;
            uint16_t even = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;
            CHECK(double_to_bf16(mid) == even, "bf16 tie %04x/%04x -> %04x", h, h + 1, double_to_bf16(mid));
            CHECK(double_to_bf16(nextafter(mid, d)) == h, "bf16 below tie %04x", h);
            CHECK(double_to_bf16(nextafter(mid, up)) == h + 1, "bf16 above tie %04x", h);
        }
    }
    for (uint32_t h = 0; h < 65536; h++) {
        double ref = f16_ref((uint16_t)h), d = f16_to_double((uint16_t)h);
        if (isnan(ref)) {
            CHECK(isnan(d), "f16 %04x should decode to NaN", h);
            uint16_t r = double_to_f16(d);
            CHECK((r & 0x7c00) == 0x7c00 && (r & 0x3ff), "f16 NaN %04x -> %04x", h, r);
            continue;
        }
        CHECK(d == ref && signbit(d) == signbit(ref), "f16 %04x decodes to %a, expected %a", h, d, ref);
        CHECK(double_to_f16(d) == h, "f16 %04x -> %g -> %04x", h, d, double_to_f16(d));
        if ((h & 0x7fff) < 0x7bff) {
            double up = f16_ref((uint16_t)(h + 1)), mid = (ref + up) / 2;
            uint16_t even = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;
            CHECK(double_to_f16(mid) == even, "f16 tie %04x -> %04x", h, double_to_f16(mid));
            CHECK(double_to_f16(nextafter(mid, ref)) == h, "f16 below tie %04x", h);
            CHECK(double_to_f16(nextafter(mid, up)) == h + 1, "f16 above tie %04x", h);
        }
    }
}

/* F32 against the hardware double->float conversion (round to nearest
 * even, single rounding) on random doubles across the whole range,
 * including F32 subnormals, overflow and tie-heavy bit patterns. */
static void test_f32_random(void)
{
    int bad = 0;
    for (int i = 0; i < 2000000; i++) {
        uint64_t r = next_rand(), u;
        switch (i % 4) {
        case 0: u = r; break;                                   /* anything */
        case 1: u = (r & 0x800FFFFFFFFFFFFFULL) | (uint64_t)(1023 - 160 + (r >> 52) % 330) << 52; break;
        case 2: u = (r & 0x800FFFFFE0000000ULL) | 0x10000000ULL | (uint64_t)(1023 - 160 + (r >> 52) % 330) << 52; break; /* exact ties */
        default: u = (r & 0x800FFFFFFFFFFFFFULL) | (uint64_t)(1023 - 150 + (r >> 52) % 30) << 52; break; /* subnormals */
        }
        double x;
        memcpy(&x, &u, 8);
        float hw = (float)x, got = double_to_f32(x);
        if (isnan(hw)) { if (!isnan(got)) bad++; continue; }
        if (f32_bits(hw) != f32_bits(got)) {
            if (bad++ < 5) CHECK(0, "double_to_f32(%a) = %08x, hardware %08x", x, f32_bits(got), f32_bits(hw));
        }
    }
    CHECK(bad == 0, "%d f32 mismatches", bad);
}

static void test_load(void)
{
    /* Little-endian encodings, written out by hand. */
    const unsigned char f16[] = {0x00, 0x3c, 0x00, 0xc0};          /* 1.0, -2.0 */
    const unsigned char bf16[] = {0x80, 0x3f, 0xcd, 0x3d};         /* 1.0, 0x3dcd */
    const unsigned char f32[] = {0, 0, 0x80, 0x3f, 0, 0, 0x40, 0xc0}; /* 1.0, -3.0 */
    const unsigned char f64[] = {0, 0, 0, 0, 0, 0, 0xf0, 0x3f, 0x9a, 0x99, 0x99, 0x99, 0x99, 0x99, 0xb9, 0x3f};
    CHECK(dtype_load(ST_F16, f16, 0) == 1.0, "f16[0]");
    CHECK(dtype_load(ST_F16, f16, 1) == -2.0, "f16[1]");
    CHECK(dtype_load(ST_BF16, bf16, 0) == 1.0, "bf16[0]");
    CHECK(dtype_load(ST_BF16, bf16, 1) == 0.10009765625, "bf16[1] = %a", dtype_load(ST_BF16, bf16, 1));
    CHECK(dtype_load(ST_F32, f32, 0) == 1.0, "f32[0]");
    CHECK(dtype_load(ST_F32, f32, 1) == -3.0, "f32[1]");
    CHECK(dtype_load(ST_F64, f64, 0) == 1.0, "f64[0]");
    CHECK(dtype_load(ST_F64, f64, 1) == 0.1, "f64[1] = %a", dtype_load(ST_F64, f64, 1));
}

int main(void)
{
    test_hand_computed();
    test_exhaustive_16bit();
    test_f32_random();
    test_load();
    if (failures) {
        fprintf(stderr, "test_dtype: %d failures\n", failures);
        return 1;
    }
    printf("test_dtype: ok\n");
    return 0;
}
