/* dtype.h — exact conversions between the float storage formats and double.
 *
 * Pure functions, no state.  Every conversion to a narrower format rounds
 * once, to nearest, ties to even, exactly as torch's .to() does for finite
 * values.  Decoding is exact (every F16/BF16/F32 value is a double). */
#ifndef FLASHIFY_DTYPE_H
#define FLASHIFY_DTYPE_H

#include <stdint.h>
#include <string.h>

static inline double bf16_to_double(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline float f32_from_bits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

double f16_to_double(uint16_t h);
/* Round a double to the nearest-even F32 / BF16 / F16 (single rounding:
 * not via float for BF16/F16, which would round twice). */
float double_to_f32(double x);
uint16_t double_to_bf16(double x);
uint16_t double_to_f16(double x);

/* Decodes element i of a little-endian buffer of dtype `d` (F16, BF16, F32,
 * F64 only; see st_dtype_is_foldable). */
double dtype_load(int d, const void *buf, size_t i);

#endif
