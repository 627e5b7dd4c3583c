/* forward_mxfp4.c — MXFP4 weights for the reference forward pass
 * (forward_internal.h).
 *
 * gpt-oss's released checkpoints store the experts as OCP MXFP4
 * (docs/architectures.md §gpt_oss, read in transformers
 * src/transformers/integrations/mxfp4.py, convert_moe_packed_tensors and
 * Mxfp4GptOssExperts): per output row, the input axis is cut into blocks of
 * 32 elements; `<name>_blocks` [.., out, in/32, 16] holds each block's 32
 * FP4 (e2m1) codes two per byte, element 2j in the low nibble and 2j+1 in
 * the high one, and `<name>_scales` [.., out, in/32] one E8M0 exponent per
 * block, value = fp4 * 2^(scale - 127).  Every such value is exact in
 * float32 (a 2-bit significand times a power of two within float32's
 * exponent range, or +-inf beyond it, as torch.ldexp gives in bfloat16), so
 * the decoded matrix is the one transformers dequantizes to. */
#include "forward_internal.h"

#include <math.h>

/* The e2m1 code points in the order of their 4-bit codes (sign bit 3). */
static const float FP4_E2M1[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                                   -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

fl_status fwd_mxfp4_rows(const fwd_model *m, const fwd_mat *w, long r, long n, void *raw, float *out,
                         fl_error *err)
{
    uint64_t blocks_per_row = (uint64_t)w->cols / 32, rows = (uint64_t)n;
    unsigned char *codes = raw, *scales = codes + rows * blocks_per_row * 16;
    fl_status s = ckpt_read(m->ck, w->t, w->off + (uint64_t)r * blocks_per_row * 16, codes,
                            (size_t)(rows * blocks_per_row * 16), err);
    if (s == FL_OK)
        s = ckpt_read(m->ck, w->mx, w->mx_off + (uint64_t)r * blocks_per_row, scales,
                      (size_t)(rows * blocks_per_row), err);
    if (s != FL_OK)
        return s;
    for (uint64_t b = 0; b < rows * blocks_per_row; b++) {
        int e = (int)scales[b] - 127;
        const unsigned char *c = codes + b * 16;
        float *o = out + b * 32;
        for (int j = 0; j < 16; j++) {
            o[2 * j] = ldexpf(FP4_E2M1[c[j] & 0x0F], e);
            o[2 * j + 1] = ldexpf(FP4_E2M1[c[j] >> 4], e);
        }
    }
    return FL_OK;
}
