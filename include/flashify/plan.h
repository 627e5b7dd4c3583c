/* plan.h — the fold plan: which norm folds into which tensors.
 *
 * Deciding is pure: config.json and a catalogue of tensor names, dtypes and
 * shapes go in (plan_decide), the plan comes out, no file is read.  The
 * table row (arch.h, or a --plan file) says what every layer must hold;
 * every expected tensor must exist, consumers must be unquantized floats
 * whose input axis has the norm's length.  Then plan_load_norms reads the
 * norm weights.  Nothing is written before the plan is complete. */
#ifndef FLASHIFY_PLAN_H
#define FLASHIFY_PLAN_H

#include "flashify/arch.h"
#include "flashify/checkpoint.h"

typedef struct {
    const char *norm;           /* logical name of the norm tensor */
    fl_gain gain;               /* its class's gain */
    const char *note;           /* the table variant's note, or NULL */
    size_t n_consumers;
    const char **consumers;     /* logical names of the consuming tensors */
    unsigned char *axes;        /* the input axis of each (1 for [out, in]) */
    double *w;                  /* the norm weight exactly as stored (after
                                   plan_load_norms); the gain applied is w
                                   or 1 + w according to `gain` */
    size_t len;                 /* its length = consumers' input dimension */
} fold_group;

typedef struct {
    const char *name;
    const char *reason;
    int quantized;              /* kept by --partial: a consumer is quantized */
} plan_kept;

/* What happens to one output tensor. */
typedef enum {
    OUT_COPY,      /* bytes copied verbatim from src */
    OUT_FOLD,      /* src folded with group's gain along `axis`, rounded once */
    OUT_IDENTITY   /* --keep-norms: a norm rewritten to `identity` */
} out_op;

typedef struct {
    const char *name;           /* output tensor name */
    const ckpt_tensor *src;     /* where its source bytes are */
    out_op op;
    const fold_group *group;    /* OUT_FOLD: the norm folded into it;
                                   OUT_IDENTITY: the norm's own group */
    int axis;                   /* OUT_FOLD: src's input axis */
    double identity;            /* OUT_IDENTITY: 1, or 0 for a 1 + w norm */
    size_t shard;               /* output shard = source shard index */
} out_tensor;

typedef struct {
    int keep_tied;              /* --keep-tied: leave the final norm unfolded */
    int keep_norms;             /* --keep-norms: write identity norms */
    int partial;                /* --partial: keep norms with quantized consumers */
    const char *plan_file;      /* --plan FILE, or NULL (plan_build reads it) */
    const arch_info *custom;    /* a parsed --plan architecture (plan_decide) */
    int custom_nested;          /* ... that reads text_config */
} plan_options;

/* What plan_decide knows about a checkpoint: its tensors, no bytes. */
typedef struct {
    const ckpt_tensor *tensors; /* sorted by name (checkpoint.tensors) */
    size_t n;
    const char *dir;            /* names the checkpoint in messages */
    const char *const *files;   /* path of each shard, by ckpt_tensor.shard */
} plan_catalogue;

typedef struct arch_custom arch_custom;

typedef struct {
    const arch_info *arch;      /* table entry (or the one parsed from --plan) */
    arch_custom *custom;        /* owned --plan architecture, or NULL */
    ckpt_view cfg;              /* the config level the text model reads */
    const char *wrapper;        /* the composite model_type it came through */
    char prefix[64];            /* text model prefix: "model.", "language_model.model.", ... */
    long n_layers;
    long hidden;
    long n_experts;             /* by the MoE rule (0: dense) */
    size_t n_groups;
    fold_group *groups;
    size_t n_kept;
    plan_kept *kept;            /* norms left untouched, with the reason */
    size_t n_dropped;
    const char **dropped;       /* norms removed (or identity with keep_norms) */
    int tied;                   /* the source ties lm_head to the embedding */
    int head_copy;              /* ... and also stores lm_head.weight separately:
                                   plan_build checks it equals the embedding */
    int untie;                  /* lm_head is materialised from the embedding */
    int final_folded;
    int marker;                 /* write flashnorm_folded / flash_norm */
    int keep_norms;
    int n_quantized_kept;       /* --partial: norms kept for quantized consumers */
    const char *embed_name, *head_name;
    uint64_t added_bytes;       /* size of a materialised lm_head */
    size_t n_out;
    out_tensor *out;            /* every output tensor, by shard then name */
    size_t *by_name;            /* indices into out, sorted by name */
    void *arena;                /* owns the strings above */
} fold_plan;

/* Decides the plan from the config and the catalogue alone (pure).
 * FL_EINPUT with a message naming the tensor or the config key when the
 * checkpoint does not match its table row.  The groups' weights are not
 * read yet (w == NULL). */
fl_status plan_decide(const ckpt_config *cfg, const plan_catalogue *cat, const plan_options *opt,
                      fold_plan *plan, fl_error *err);

/* Reads every group's norm weight and checks it is finite (I/O). */
fl_status plan_load_norms(const checkpoint *ck, fold_plan *plan, fl_error *err);

/* plan_decide on an open checkpoint (reading opt->plan_file if set), then
 * plan_load_norms. */
fl_status plan_build(const checkpoint *ck, const plan_options *opt,
                     fold_plan *plan, fl_error *err);
void plan_free(fold_plan *plan);

/* The output tensor of that name, or NULL (dropped or unknown); O(log n). */
const out_tensor *plan_find_out(const fold_plan *plan, const char *name);

/* "model.layers.12.input_layernorm.weight" -> "model.layers.{i}.input_layernorm":
 * how plans are shown (dry run, model card), one line per layer pattern. */
void plan_name_pattern(const char *name, char *out, size_t cap);

/* The --plan file format (README "Custom architectures"), parsed into an
 * architecture row that owns its strings (plan_file.c).  Strict JSON:
 * duplicate and unknown keys are refused, like every other input. */
fl_status arch_custom_parse(const char *path, const char *text, size_t len, arch_custom **out,
                            fl_error *err);
const arch_info *arch_custom_info(const arch_custom *c);
int arch_custom_nested(const arch_custom *c);
void arch_custom_free(arch_custom *c);

#endif
