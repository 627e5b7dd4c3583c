/* dtype.c — exact conversions between double and the float storage formats.
 *
 * Rounding is done on the bits of the double, once, to nearest with ties to
 * even, for any target with `ebits` exponent and `mbits` mantissa bits.  It
 * does not depend on the FPU rounding mode or on a compiler's _Float16, and
 * BF16/F16 are not reached through float (that would round twice: a double
 * just above a BF16 tie can become the tie in float, then round to even). */
#include "flashify/dtype.h"
#include "flashify/safetensors.h"

#include <math.h>

/* Rounds x to the binary format (1 sign, ebits exponent, mbits mantissa,
 * IEEE-style bias, subnormals, inf/NaN) and returns its bit pattern.
 * Overflow gives infinity; NaN gives a quiet NaN keeping the sign and the
 * top payload bits. */
static uint32_t round_to_format(double x, int ebits, int mbits)
{
    uint64_t u;
    memcpy(&u, &x, 8);
    uint32_t sign = (uint32_t)(u >> 63) << (ebits + mbits);
    int e = (int)((u >> 52) & 0x7ff);
    uint64_t m = u & ((1ULL << 52) - 1);
    uint32_t expmax = (1u << ebits) - 1;
    int bias = (1 << (ebits - 1)) - 1;
    uint32_t inf = sign | expmax << mbits;
    if (e == 0x7ff)
        return m ? inf | 1u << (mbits - 1) | (uint32_t)(m >> (52 - mbits)) : inf;
    /* Zero, and double subnormals (< 2^-1022): far below half the smallest
     * subnormal of every target (F32's is 2^-149), so they round to zero. */
    if (e == 0)
        return sign;
    int exp = e - 1023;                   /* x = sig * 2^(exp-52) */
    if (exp > bias + 1)
        return inf;                       /* >= 2^(bias+2): beyond any rounding */
    uint64_t sig = m | 1ULL << 52;
    int emin = 1 - bias;                  /* smallest normal exponent */
    int q = (exp < emin ? emin : exp) - mbits; /* quantum of the result: 2^q */
    int sh = q - (exp - 52);              /* >= 52 - mbits > 0 */
    uint64_t t;
    if (sh > 54) {
        t = 0;                            /* below a quarter quantum */
    } else {
        t = sig >> sh;
        uint64_t rem = sig & ((1ULL << sh) - 1), half = 1ULL << (sh - 1);
        if (rem > half || (rem == half && (t & 1)))
            t++;
    }
    /* t counts quanta.  For normals it includes the implicit bit, so adding
     * (biased exponent - 1) << mbits gives the encoding, and a carry out of
     * the mantissa moves to the next binade (or to infinity) by itself. */
    uint64_t bits = exp < emin ? t : ((uint64_t)(exp + bias - 1) << mbits) + t;
    if (bits >= (uint64_t)expmax << mbits)
        return inf;
    return sign | (uint32_t)bits;
}

float double_to_f32(double x)
{
    return f32_from_bits(round_to_format(x, 8, 23));
}

uint16_t double_to_bf16(double x)
{
    return (uint16_t)round_to_format(x, 8, 7);
}

uint16_t double_to_f16(double x)
{
    return (uint16_t)round_to_format(x, 5, 10);
}

double f16_to_double(uint16_t h)
{
    int e = (h >> 10) & 31;
    unsigned m = h & 1023;
    double v;
    if (e == 0)
        v = ldexp(m, -24);                     /* subnormal: m * 2^-24 */
    else if (e == 31)
        v = m ? NAN : INFINITY;
    else
        v = ldexp(1024 + m, e - 25);           /* (1.m) * 2^(e-15) */
    return h & 0x8000 ? -v : v;
}

/* Little-endian load of `n` bytes, whatever the host's byte order. */
static uint64_t load_le(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

double dtype_load(int d, const void *buf, size_t i)
{
    const unsigned char *p = buf;
    switch (d) {
    case ST_F16:
        return f16_to_double((uint16_t)load_le(p + 2 * i, 2));
    case ST_BF16:
        return bf16_to_double((uint16_t)load_le(p + 2 * i, 2));
    case ST_F32:
        return f32_from_bits((uint32_t)load_le(p + 4 * i, 4));
    case ST_F64: {
        uint64_t u = load_le(p + 8 * i, 8);
        double v;
        memcpy(&v, &u, 8);
        return v;
    }
    default:
        return NAN;
    }
}
