/* verify.h — prove a FlashNorm checkpoint equivalent to its source.
 *
 * Two independent checks (issue 4):
 *
 * 1. Tensor check.  The fold plan of the SOURCE (plan.h) says what every
 *    output tensor must be.  Folded tensors must equal the correctly
 *    rounded product W[o,i]*g[i] bit for bit (flashify's own output) or
 *    within 1 ulp per element (pairs made by other tools; the count of
 *    1-ulp elements is reported); every other tensor byte-identical; the
 *    removed tensors exactly the plan's norms (a norm still present with its
 *    identity value, 1 or 0 for 1+w norms, counts as removed); config.json
 *    equal except tie_word_embeddings and the marker keys
 *    (flashnorm_folded, flash_norm).  An output that kept the tie
 *    (--keep-tied) is recognised by its missing lm_head.
 *
 * 2. Forward check.  The reference forward pass (forward.h) runs on both
 *    directories with the same token ids, and the logits are compared at
 *    every position: max absolute and relative difference, top-1
 *    agreement, KL divergence.
 *
 * Default tolerance (max over positions of max|dlogit| / max(1, max|logit|)),
 * from the narrowest float dtype among the output's folded tensors:
 *     F64, F32: 1e-4     F16: 2e-2     BF16: 1e-1
 * Correct folds only add one rounding per weight (relative 2^-24, 2^-11,
 * 2^-8).  Measured maxima: stories260K 4.8e-7 (F32) and 5.3e-3 (BF16);
 * the generated models of every family (tests/e2e) at most 8e-7 (F32),
 * 1.5e-3 (F16), 1.1e-2 (BF16).  Wrong folds move logits by tens of percent
 * (w instead of 1 + w or the reverse: 0.39 to 1.9).  A subtle error in one
 * row of a large model may stay under these bounds: the tensor check,
 * which is exact, is the one that catches it.  A position also fails when its top-1 token differs while the
 * source prefers its own top-1 by more than the tolerance (relative to the
 * same scale), and when KL(source || output) exceeds 10 * tolerance^2.
 */
#ifndef FLASHIFY_VERIFY_H
#define FLASHIFY_VERIFY_H

#include <stdint.h>

#include "flashify/error.h"

typedef struct {
    const char *tokens;   /* "1,2,3", or NULL: BOS + 16 fixed ids */
    double tolerance;     /* <= 0: the default for the output's dtype */
    int json;             /* report as JSON instead of text */
    int threads;          /* <= 0: one per CPU */
    int skip_forward;     /* tensor check only */
    int exact;            /* 1: folded tensors must be bit-exact (--strict on
                             our own output); 0: bit-exact when README.md says
                             "Converted by flashify", else 1 ulp allowed */
    const char *plan_file; /* --plan FILE the output was made with, or NULL */
    int partial;          /* the output was made with --partial */
    const char *output_label; /* shown for OUTPUT in the report (--strict
                                 checks a temporary directory), or NULL */
    const char *dump_logits; /* write the SOURCE's logits there (raw
                                little-endian float32, positions x vocab),
                                for tests/interop; or NULL */
    /* Progress, or NULL: phase "tensor check" (bytes of the output
     * compared), then "forward pass (source)" and "forward pass (output)"
     * (bytes of weights streamed, forward.h); each phase ends with
     * done == total unless it fails.  Called from worker threads, possibly
     * several at once: the callee serializes. */
    void (*progress)(void *progress_ctx, const char *phase, uint64_t done, uint64_t total);
    void *progress_ctx;
} verify_options;

/* Checks OUTPUT against SOURCE.  *report receives a malloc'd human (or
 * JSON) report in every case where the checks ran, pass or fail (NULL
 * otherwise).  Returns FL_OK if equivalent, FL_ENOTEQUIV (3) if not,
 * FL_EUSAGE for a bad --tokens list, FL_EINPUT / FL_EIO when a directory
 * cannot be read or planned (err names it). */
fl_status verify_pair(const char *source_dir, const char *output_dir,
                      const verify_options *opt, char **report, fl_error *err);

/* The default tolerance for a dtype name ("BF16", "F16", "F32", "F64"). */
double verify_default_tolerance(const char *dtype);

#endif
