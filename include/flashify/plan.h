/* plan.h — the fold plan: which norm folds into which tensors.
 *
 * Built from config.json's model_type and the architecture table (or a
 * --plan file), then checked against the checkpoint: every expected tensor
 * exists, consumers are foldable floats with an input dimension equal to
 * the norm's length.  Nothing is written before the plan is complete. */
#ifndef FLASHIFY_PLAN_H
#define FLASHIFY_PLAN_H

#include "flashify/arch.h"
#include "flashify/checkpoint.h"

typedef struct {
    const char *norm;           /* logical name of the norm tensor */
    fl_gain gain;
    size_t n_consumers;
    const char **consumers;     /* logical names of the consuming matrices */
    double *w;                  /* the norm weight exactly as stored; the gain
                                   applied is w or 1 + w according to `gain` */
    size_t len;                 /* its length = consumers' input dimension */
} fold_group;

typedef struct {
    const char *name;
    const char *reason;
} plan_kept;

/* What happens to one output tensor. */
typedef enum {
    OUT_COPY,      /* bytes copied verbatim from src */
    OUT_FOLD,      /* src folded with group's gain, rounded once */
    OUT_IDENTITY   /* --keep-norms: a norm rewritten to its identity value */
} out_op;

typedef struct {
    const char *name;           /* output tensor name */
    const ckpt_tensor *src;     /* where its source bytes are */
    out_op op;
    const fold_group *group;    /* OUT_FOLD: the norm folded into it */
    size_t shard;               /* output shard = source shard index */
} out_tensor;

typedef struct {
    int keep_tied;              /* --keep-tied: leave the final norm unfolded */
    int keep_norms;             /* --keep-norms: write identity norms */
    const char *plan_file;      /* --plan FILE, or NULL */
} plan_options;

typedef struct {
    const arch_info *arch;      /* table entry (or the one parsed from --plan) */
    arch_info custom;           /* storage for a --plan architecture */
    char prefix[64];            /* text model prefix: "model.", "language_model.model.", ... */
    long n_layers;
    size_t n_groups;
    fold_group *groups;
    size_t n_kept;
    plan_kept *kept;            /* norms left untouched, with the reason */
    size_t n_dropped;
    const char **dropped;       /* norms removed (or identity with keep_norms) */
    int tied;                   /* the source ties lm_head to the embedding */
    int untie;                  /* lm_head is materialised from the embedding */
    int final_folded;
    int marker;                 /* write flashnorm_folded / flash_norm */
    int keep_norms;
    const char *embed_name, *head_name;
    uint64_t added_bytes;       /* size of a materialised lm_head */
    size_t n_out;
    out_tensor *out;            /* every output tensor, by shard then name */
    size_t *by_name;            /* indices into out, sorted by name */
    void *arena;                /* owns the strings above */
} fold_plan;

fl_status plan_build(const checkpoint *ck, const plan_options *opt,
                     fold_plan *plan, fl_error *err);
void plan_free(fold_plan *plan);

/* The output tensor of that name, or NULL (dropped or unknown); O(log n). */
const out_tensor *plan_find_out(const fold_plan *plan, const char *name);

/* "model.layers.12.input_layernorm.weight" -> "model.layers.{i}.input_layernorm":
 * how plans are shown (dry run, model card), one line per layer pattern. */
void plan_name_pattern(const char *name, char *out, size_t cap);

#endif
