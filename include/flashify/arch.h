/* arch.h — the architecture table: where each norm sits in each model family.
 *
 * One entry per model_type (see ../shared/docs/architectures.md for the
 * source of every rule).  The fold never branches on a family; it reads this
 * table.  Names are relative to a layer prefix ("model.layers.{i}.") and get
 * ".weight" appended.  A consumer name may carry "{e}" (expanded over the
 * experts) and alternatives "a|b" (the one the checkpoint has). */
#ifndef FLASHIFY_ARCH_H
#define FLASHIFY_ARCH_H

#include "flashify/checkpoint.h"

/* The gain a norm applies: w (Llama) or 1 + w (Gemma). */
typedef enum { GAIN_W = 0, GAIN_ONE_PLUS_W = 1 } fl_gain;

/* The norm's forward formula, for the reference forward pass. */
typedef enum {
    NORM_RMS_CAST_THEN_MUL, /* Llama: w * x_hat.to(dtype) */
    NORM_RMS_MUL_THEN_CAST, /* OLMo2: (w * x_hat_fp32).to(dtype) */
    NORM_RMS_GEMMA,         /* Gemma: (x_hat_fp32 * (1 + w)).to(dtype) */
    NORM_LAYER_NO_BIAS      /* Cohere: mean-centred LayerNorm, no bias */
} fl_norm_kind;

/* Which layers a fold group applies to (MoE models mix dense and sparse). */
enum { LAYERS_ALL = 0, LAYERS_DENSE = 1, LAYERS_MOE = 2 };

#define ARCH_MAX_CONSUMERS 8
#define ARCH_MAX_GROUPS 8
#define ARCH_MAX_KEEPS 6

typedef struct {
    const char *norm;                           /* "input_layernorm" */
    const char *consumers[ARCH_MAX_CONSUMERS];  /* "self_attn.q_proj", ... */
    int layers;                                 /* LAYERS_* */
    const char *if_config;  /* applies only when this config key is set and not null */
} arch_fold;

typedef struct {
    const char *norm;    /* a norm that is never folded ... */
    const char *reason;  /* ... and why (for --dry-run and the model card) */
} arch_keep;

typedef struct arch_info {
    const char *model_type;
    fl_gain gain;
    fl_norm_kind norm_kind;
    arch_fold folds[ARCH_MAX_GROUPS];   /* per-layer fold groups */
    arch_keep keeps[ARCH_MAX_KEEPS];    /* per-layer norms kept */
    const char *experts_key;            /* config key: number of experts */
    /* 1 when layer i is sparse (MoE); NULL = dense model. */
    int (*is_moe_layer)(const ckpt_config *cfg, long i);
    /* Loaders keyed on flashnorm_folded make the input, post-attention and
     * final norms weightless; 0 where post_attention_layernorm keeps its
     * weight (Gemma2/3, OLMo2), so the marker would break the model. */
    int marker_ok;
    int tie_default;        /* the config class default of tie_word_embeddings */
    const char *warning;    /* printed when norms are dropped, or NULL */
} arch_info;

/* The built-in entry for model_type, or NULL. */
const arch_info *arch_find(const char *model_type);
/* Comma-separated list of supported model_types (static storage). */
const char *arch_supported_list(void);

#endif
