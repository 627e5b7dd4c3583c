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

/* Folds `rows` rows of `cols` elements of dtype `d` (ST_F16, ST_BF16, ST_F32,
 * ST_F64) from `in` to `out` (may be the same buffer), with the gain w[c]
 * (gain == GAIN_W) or 1 + w[c] (GAIN_ONE_PLUS_W), where w holds the norm
 * weight exactly; w_is_f64 says it may carry more than 24 significant bits.  Returns -1 on
 * success, or the flat index of the first element whose product is not
 * finite (nothing is guaranteed about `out` then). */
long fold_rows(int d, const void *in, void *out, size_t rows, size_t cols,
               const double *w, int gain, int w_is_f64);

/* Fills `n` elements of dtype `d` with `value` (the identity norm: 1 or 0). */
void fill_value(int d, void *out, size_t n, double value);

#endif
