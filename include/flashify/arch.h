/* arch.h — the architecture table: where each norm sits in each model family.
 *
 * One row per model_type, read by the planner (plan.h); the fold never
 * branches on a family.  Every fact and where it was read is in
 * docs/architectures.md.  A row says, per decoder layer, which norm feeds
 * which linear layers (fold variants chosen per layer by conditions on the
 * config and the tensor catalogue), which norms must keep their weights and
 * why, which layers are sparse (MoE), where the text model's tensors live,
 * and the config class defaults the loader would apply.
 *
 * Names are relative to a layer prefix ("model.layers.{i}.").  A consumer
 * name may carry "{e}", expanded over the experts (0 .. count-1). */
#ifndef FLASHIFY_ARCH_H
#define FLASHIFY_ARCH_H

#include "flashify/checkpoint.h"
#include "flashify/fold.h"

/* A norm class: how a module applies its weight (LlamaRMSNorm: w,
 * GemmaRMSNorm: 1 + w).  The gain decides what is folded and what
 * --keep-norms writes back (fold_identity).  Classes belong to norms, not
 * to families: Qwen3.5 mixes 1 + w decoder norms with a w gated norm. */
typedef struct {
    const char *name;   /* the transformers class, for messages and docs */
    fl_gain gain;
} arch_norm_class;

extern const arch_norm_class ARCH_RMS_W;      /* w * x_hat (Llama and most) */
extern const arch_norm_class ARCH_RMS_1PW;    /* (1 + w) * x_hat (Gemma 1-3) */
extern const arch_norm_class ARCH_LN_NOBIAS;  /* Cohere's mean-centred LayerNorm, no bias */

/* A condition on layer i; a list of them holds when every one does. */
typedef enum {
    WHEN_END = 0,    /* end of a list (an empty list always holds) */
    WHEN_MOE,        /* layer i is sparse by the row's MoE rule */
    WHEN_DENSE,      /* ... is dense */
    WHEN_LAYER_TYPE, /* config array `key`[i] equals `value` (layer_types) */
    WHEN_FLAG,       /* config `key` is set: present, not null, false, 0 or ""; `value`,
                        when given, is read instead of an absent key ("2": set) */
    WHEN_NOT_FLAG,
    WHEN_TAIL,       /* i >= num_hidden_layers - config `key` (the last N layers) */
    WHEN_NOT_TAIL,
    WHEN_HAS,        /* the layer stores tensor `key` (a layout: fused experts) */
    WHEN_NOT_HAS,
    WHEN_EVERY,      /* (i + 1) % config `key` == 0, `value` the key's default as a
                        decimal string (Qwen3-Next full_attention_interval "4") */
    WHEN_NOT_EVERY,
    WHEN_LISTED,     /* i is in the config's integer list `key`; `value` the list used
                        when the key is absent or null, comma separated (Mllama
                        cross_attention_layers "3,8,13,..."), or NULL */
    WHEN_NOT_LISTED, /* ... there is such a list, without i (neither holds without one) */
    WHEN_BLOCK       /* layer i's block type is one of `value`'s "|"-separated
                        spellings; it is read from the first of `key`'s
                        "|"-separated config keys that is present and not null:
                        an array's i-th string, or a string's i-th character
                        (Nemotron-H hybrid_override_pattern "M*-E"); no key: false */
} arch_cond_kind;

typedef struct {
    arch_cond_kind kind;
    const char *key;
    const char *value;  /* WHEN_LAYER_TYPE: the type; WHEN_[NOT_]EVERY, WHEN_[NOT_]LISTED:
                           the default */
} arch_cond;

/* How a consumer stores its input axis. */
typedef enum {
    IN_LINEAR = 0,  /* nn.Linear "<name>.weight", [out, in] */
    IN_LAST,        /* 3-D fused experts "<name>" (no suffix), [E, out, in] */
    IN_MIDDLE,      /* 3-D fused experts "<name>", [E, in, out] (used as x @ W) */
    IN_EITHER       /* 3-D: whichever of axis 1 or 2 has the norm's length
                       (refused when both do); for checkpoints seen in both */
} arch_input;

typedef struct {
    const char *name;
    arch_input input;
} arch_consumer;

#define ARCH_MAX_CONSUMERS 8
#define ARCH_MAX_FOLDS 12
#define ARCH_MAX_KEEPS 8
#define ARCH_MAX_CONDS 3

/* One fold variant: in the layers where `when` holds, `norm` feeds exactly
 * `consumers`.  Variants of one norm are tried in table order and the first
 * that holds applies, so an absence (no v_proj, no q_a_proj) is always a
 * declared variant with its condition, never a skipped tensor.  A norm
 * present in a layer where none of its variants and none of its keeps
 * applies is an error. */
typedef struct {
    const char *norm;                             /* "input_layernorm" */
    arch_consumer consumers[ARCH_MAX_CONSUMERS];
    arch_cond when[ARCH_MAX_CONDS];               /* empty: every layer */
    const arch_norm_class *cls;                   /* NULL: the row's class */
    const char *note;  /* what this variant's consumer set means, or NULL */
} arch_fold;

/* A norm that keeps its weight where `when` holds, and why. */
typedef struct {
    const char *norm;
    const char *reason;   /* for --dry-run and the model card */
    arch_cond when[ARCH_MAX_CONDS];
} arch_keep;

/* Which layers are sparse.  Keys name config fields; NULL ones are unused.
 * Layer i is sparse when the expert count is > 0, `flag` (if any) is set,
 * and then: its `type_list` entry is "sparse" when the config has that
 * list; listed in `sparse_list` when the config has that list;
 * otherwise not listed in `dense_list`, not among the first `first_dense`
 * layers, not after `last_sparse`, and (i + step_offset) % step == 0 for
 * `step` (default 1). */
typedef struct {
    const char *experts[3];  /* expert count: the first key present wins */
    const char *flag;        /* Gemma 4 enable_moe_block */
    const char *sparse_list; /* Llama 4 moe_layers */
    const char *dense_list;  /* Qwen mlp_only_layers */
    const char *first_dense; /* DeepSeek first_k_dense_replace */
    const char *step;        /* Qwen decoder_sparse_step, DeepSeek moe_layer_freq */
    int step_offset;         /* 1: (i+1) % step (Qwen, Llama 4); 0: i % step (DeepSeek) */
    const char *type_list;   /* a per-layer list of "dense" / "sparse" that decides when the config has it
                                (GLM-4.7-Flash, DeepSeek-V3.2, GLM-5 mlp_layer_types) */
    int first_dense_default; /* first_dense when the config lacks the key (the config class default) */
    const char *last_sparse; /* layers after this index are dense; -1 or absent: none
                                (ERNIE moe_layer_end_index) */
    int optional;            /* no expert key: 0 experts, not an error (Nemotron-H
                                configs without MoE blocks) */
} arch_moe_rule;

/* Where a text model's tensors are: "<prefix>layers.{i}.", the embedding
 * "<prefix><embed>.weight", the final norm "<prefix><norm>.weight" and the
 * head "<head>.weight".  The first layout whose embedding exists applies. */
typedef struct {
    const char *prefix, *embed, *norm, *head;
} arch_layout;

/* The default layouts: model., language_model.model. (original Gemma 3,
 * Llama 4, LLaVA), model.language_model. (transformers 5 VLMs),
 * model.text_model. (SmolVLM, Idefics3). */
extern const arch_layout ARCH_LAYOUTS[];

enum { ARCH_MARKER_AUTO = 0, ARCH_MARKER_NEVER = 1 };

typedef struct arch_info {
    const char *model_type;
    const arch_norm_class *norm;         /* class of its norms and the final norm */
    arch_fold folds[ARCH_MAX_FOLDS];
    arch_keep keeps[ARCH_MAX_KEEPS];
    arch_moe_rule moe;                   /* all NULL: a dense model */
    const arch_layout *layouts;          /* NULL: ARCH_LAYOUTS; ends with a NULL prefix */
    /* AUTO: write flashnorm_folded when every norm the marker makes
     * weightless (ARCH_MARKER_NORMS, and the final norm) was folded;
     * NEVER: a --plan file said "flashnorm_marker": false. */
    int marker;
    int tie_default;           /* the config class default of tie_word_embeddings */
    const char *tie_alias;     /* a boolean key that, when present, decides the tie instead of
                                  tie_word_embeddings (LFM2 tie_embedding), or NULL */
    const char *warning;       /* printed when norms are dropped, or NULL */
    const char *untie_warning; /* printed when lm_head is materialised, or NULL */
    /* Config keys ("a|b", as WHEN_BLOCK reads them) that list every layer's
     * block type, or NULL: the first present one's length is the layer
     * count, and must equal num_hidden_layers when that is there too
     * (Nemotron-H: transformers 5 counts the list). */
    const char *blocks;
} arch_info;

/* The per-layer norms that loaders keyed on flashnorm_folded build without
 * a weight (with the final norm). */
extern const char *const ARCH_MARKER_NORMS[];

/* A wrapper (composite) model_type, or another name for a row: top-level
 * model_type `model_type` reads the row `text_type` -- or, when `nested`
 * and text_config names a known type, that one -- from text_config when
 * `nested` (and the config has one), else from the top level.  Only these
 * types read text_config: a stray one elsewhere changes nothing. */
/* How an alias picks its text row (docs/architectures.md §vlm-text). */
enum {
    ALIAS_TEXT_NAMED = 0, /* text_config.model_type when it names a row, else text_type */
    ALIAS_TEXT_ANY,       /* the config class builds any text model (AutoConfig): the type
                             text_config names -- or the class default, class_text or
                             text_type -- must name a row or a text alias, else refused */
    ALIAS_TEXT_FIXED      /* the config class builds its own text config: text_type */
};

typedef struct {
    const char *model_type;
    const char *text_type;
    int nested;
    int tie_default;   /* the wrapper class's default; -1: the text row's */
    int text_rule;     /* ALIAS_TEXT_* */
    const char *class_text; /* ALIAS_TEXT_ANY: the class default when it is not text_type
                               (a type without a row: refused; Aya Vision's cohere2) */
    int tie_or_text;   /* LlavaConfig: tied when the top level or text_config ties (a false
                          top level does not win over text_config) */
} arch_alias;

/* A model_type flashify refuses, and why (one line naming the norm and
 * what reads it; docs/architectures.md §refused). */
typedef struct {
    const char *model_type;
    const char *reason;
} arch_refusal;

/* The table row of model_type (not aliases), or NULL. */
const arch_info *arch_find(const char *model_type);
/* The refusal of model_type, or NULL; the i-th for tests and tables. */
const arch_refusal *arch_refused(const char *model_type);
const arch_refusal *arch_refusal_at(size_t i);
/* The number of entries of the block-type list named by `keys` (as
 * WHEN_BLOCK reads them; the key found into key[64]), or -1 when the
 * config has none of them. */
long arch_block_count(ckpt_view cfg, const char *keys, char key[64]);

/* The outcome of arch_resolve: the row, the config level its text model
 * reads, and the tie default that applies. */
typedef struct {
    const arch_info *arch;
    ckpt_view cfg;
    const char *wrapper;  /* the alias's model_type, or NULL */
    int tie_default;
    int tie_or_text;      /* the alias's tie_or_text */
} arch_resolved;

/* Finds the row for cfg's model_type (through the aliases), or takes
 * `custom` (a --plan architecture) when it is not NULL; a custom plan reads
 * text_config when `custom_nested` or when it names text_config's
 * model_type.  FL_EINPUT naming the model_type and the supported list when
 * there is no row, or with the reason when the type is refused (a --plan
 * cannot lift a refusal); `where` is the checkpoint directory. */
fl_status arch_resolve(const ckpt_config *cfg, const char *where, const arch_info *custom,
                       int custom_nested, arch_resolved *out, fl_error *err);

/* 1 when every condition of `when` holds for layer i (moe: whether layer i
 * is sparse; has(name, ctx): whether the layer stores a tensor). */
int arch_when(const arch_cond *when, ckpt_view cfg, long i, long n_layers, int moe,
              int (*has)(const char *rel, void *ctx), void *ctx);

/* The expert count by the row's MoE rule: 0 for a dense row, -1 when no
 * expert key is present, -2 when two of them disagree (*key gets the key
 * read, or the first one named). */
long arch_expert_count(const arch_moe_rule *r, ckpt_view cfg, const char **key);
/* 1 when layer i is sparse (MoE) by the rule, given the expert count. */
int arch_is_moe_layer(const arch_moe_rule *r, ckpt_view cfg, long i, long experts);

/* Every supported model_type, rows then aliases, comma separated (static). */
const char *arch_supported_list(void);
/* Iteration for tests and tables: the i-th row / alias, NULL past the end. */
const arch_info *arch_row(size_t i);
const arch_alias *arch_alias_at(size_t i);
/* The alias of model_type, or NULL. */
const arch_alias *arch_alias_find(const char *model_type);

#endif
