/* verify_tensors.h — the exact half of the equivalence check (verify.h):
 * every output tensor against the fold plan of the source, and config.json.
 * Internal to verify.c. */
#ifndef FLASHIFY_VERIFY_TENSORS_H
#define FLASHIFY_VERIFY_TENSORS_H

#include "flashify/checkpoint.h"
#include "flashify/plan.h"
#include "flashify/verify.h"

#define VERIFY_MAX_PROBLEMS 10   /* problems listed in the report */

typedef struct {
    size_t n_copy, n_fold, n_removed;
    size_t n_identity;           /* removed norms still present, whose values
                                    were checked to be the identity */
    size_t n_ulp_tensors;
    uint64_t n_ulp_elems, n_bytes;
    int exact;                   /* folds must be bit-exact (else 1 ulp allowed) */
    size_t n_problems;
    char *problems[VERIFY_MAX_PROBLEMS];
    int config_ok;
    int ok;                      /* the tensors passed */
} tsummary;

/* Checks every tensor of `out` against the plan of `src` (opt->threads
 * workers, <= 0: one per CPU; opt->progress gets phase "tensor check") and
 * fills s.  Problems found make s->ok 0; only I/O failures (or an
 * interrupt) return non-FL_OK. */
fl_status tensor_check(const checkpoint *src, const checkpoint *out, const fold_plan *plan,
                       const verify_options *opt, tsummary *s, fl_error *err);

/* config.json of out equals src's except tie_word_embeddings and the marker
 * keys, and those are what the plan calls for; sets s->config_ok. */
void config_check(const checkpoint *src, const checkpoint *out, const fold_plan *plan, tsummary *s);

void tsummary_free(tsummary *s);

#endif
