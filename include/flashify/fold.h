/* fold.h — the fold itself: pure functions over buffers.
 *
 * W*[o,i] = W[o,i] * g[i], computed exactly in double (a product of two
 * values of at most 24 significant bits is exact in 53) and rounded once, to
 * nearest-even, into the matrix's dtype.  The result does not depend on how
 * rows are split between threads. */
#ifndef FLASHIFY_FOLD_H
#define FLASHIFY_FOLD_H

#include <stddef.h>
#include <stdint.h>

#include "flashify/safetensors.h"

/* The gain a norm applies: w (LlamaRMSNorm) or 1 + w (GemmaRMSNorm). */
typedef enum { GAIN_W = 0, GAIN_ONE_PLUS_W = 1 } fl_gain;

/* The weight that makes a norm of that gain the identity: 1, or 0 for 1 + w
 * (what --keep-norms writes). */
static inline double fold_identity(fl_gain g) { return g == GAIN_ONE_PLUS_W ? 0.0 : 1.0; }

/* Folds `rows` rows of `cols` elements of dtype `d` (ST_F16, ST_BF16, ST_F32,
 * ST_F64) from `in` to `out` (may be the same buffer), with the gain w[c]
 * (gain == GAIN_W) or 1 + w[c] (GAIN_ONE_PLUS_W), where w holds the norm
 * weight exactly; w_is_f64 says it may carry more than 24 significant bits.  Returns -1 on
 * success, or the flat index of the first element whose product is not
 * finite (nothing is guaranteed about `out` then). */
long fold_rows(st_dtype d, const void *in, void *out, size_t rows, size_t cols,
               const double *w, fl_gain gain, int w_is_f64);

/* Where a tensor's input axis is.  Element f (row-major flat index) reads
 * the gain w[(f / inner) % n_in]: for an nn.Linear [out, in] or fused
 * experts [E, out, in], n_in = in and inner = 1; for fused experts
 * [E, in, out] (used as x @ W), n_in = in and inner = out. */
typedef struct {
    uint64_t n_in, inner;
} fold_axis;

/* The fold_axis of a tensor of `ndim` dims whose input is dimension
 * `axis`; {0, 0} when axis is out of range or a product overflows. */
fold_axis fold_axis_of(const uint64_t *shape, int ndim, int axis);

/* The gain index of flat element f. */
static inline uint64_t fold_gain_index(fold_axis ax, uint64_t f) { return (f / ax.inner) % ax.n_in; }

/* Folds elements [first, first + count) of a tensor laid out as `ax` says,
 * from `in` to `out` (which may be the same buffer): any range, starting
 * and ending anywhere in a row, so a tensor can be streamed in bounded
 * chunks.  Same rounding and return value as fold_rows (the flat index is
 * relative to `first`).  Used by the writer and by the tensor check. */
long fold_range(st_dtype d, const void *in, void *out, uint64_t first, uint64_t count,
                fold_axis ax, const double *w, fl_gain gain, int w_is_f64);

/* "[i, j]" / "[e, i, j]": the position of flat element f in a tensor. */
void fold_describe_index(const uint64_t *shape, int ndim, uint64_t f, char *buf, size_t cap);

/* Fills `n` elements of dtype `d` with `value` (the identity norm: 1 or 0). */
void fill_value(st_dtype d, void *out, size_t n, double value);

#endif
