/* forward_internal.h — the reference forward pass's own pieces (forward*.c).
 *
 * forward_table.c  the family table and the activations: every quirk of a
 *                  family as a field, written from the modeling code
 *                  (docs/architectures.md), independently of arch.c
 * forward_rope.c   the RoPE types and the model's frequencies
 * forward_load.c   fwd_open: the config read step by step, tensors bound
 * forward_bind_mlp.c  ... the MLP / MoE tensors of a layer
 * forward_kernel.c the matrix products, streamed from the files
 * forward_blocks.c norms, attention, MLP, MoE routing
 * forward.c        the pass itself (fwd_logits) */
#ifndef FLASHIFY_FORWARD_INTERNAL_H
#define FLASHIFY_FORWARD_INTERNAL_H

#include "flashify/forward.h"
#include "flashify/pool.h"

struct cJSON;

/* ----------------------------------------------------------------------------
 * The family table */

typedef enum {
    NORM_RMS_CAST,    /* Llama: w * x_hat.to(dtype) (activations are f32 here: w * x_hat) */
    NORM_RMS_F32,     /* OLMo2: (w * x_hat_fp32).to(dtype) -- the same in f32 */
    NORM_RMS_1PW,     /* Gemma: (x_hat_fp32 * (1 + w.float())).to(dtype) */
    NORM_LN_NOBIAS    /* Cohere: mean-centred LayerNorm, no bias */
} fwd_norm_kind;

typedef enum {
    LAYOUT_PRE,      /* x += attn(n1(x)); x += mlp(n2(x))            (Llama) */
    LAYOUT_SANDWICH, /* x += n_post(attn(n1(x))); x += n_post2(mlp(n_pre(x))) (Gemma2/3) */
    LAYOUT_POST,     /* x += n_post(attn(x)); x += n_post2(mlp(x))   (OLMo2) */
    LAYOUT_PARALLEL  /* h = n1(x); x += attn(h) + mlp(h)             (Cohere) */
} fwd_layout;

typedef enum {
    QK_NONE,
    QK_HEAD,    /* RMSNorm over head_dim, one weight for all heads (Qwen3, Gemma3) */
    QK_FULL,    /* RMSNorm over the whole projection, before the reshape (OLMo2) */
    QK_HEAD_2D, /* LayerNorm over head_dim, weight [heads, head_dim] (Cohere) */
    QK_L2,      /* weightless RMS over head_dim after RoPE, RoPE layers only (Llama 4) */
    QK_HEAD_POST /* RMSNorm over head_dim after RoPE (Hunyuan query_layernorm) */
} fwd_qk;

typedef enum {
    EMBED_NONE,
    EMBED_SQRT_H,   /* * sqrt(hidden), rounded to the embedding dtype (Gemma) */
    EMBED_KEY       /* * config key (Granite embedding_multiplier) */
} fwd_embed;

typedef enum {
    SCALE_HEAD_DIM,  /* 1 / sqrt(head_dim) */
    SCALE_KEY_ISQRT, /* key^-0.5 (Gemma query_pre_attn_scalar) */
    SCALE_KEY        /* the key itself (Granite attention_multiplier) */
} fwd_scale;

typedef enum {
    SLIDE_NONE,
    SLIDE_ALL,      /* every layer (Mistral, Mixtral) */
    SLIDE_EVEN,     /* even layers (Gemma2DecoderLayer.is_sliding) */
    SLIDE_PATTERN,  /* all but every n-th layer, n = sliding_window_pattern (Gemma3) */
    SLIDE_QWEN2     /* only with use_sliding_window: layers >= max_window_layers (Qwen2-VL) */
} fwd_sliding;

/* A position-dependent query scale applied after RoPE. */
typedef enum {
    QSCALE_NONE,
    QSCALE_LLAMA4_BETA  /* 1 + beta * log(1 + floor(pos / original_max_position_embeddings)) (Ministral3) */
} fwd_qscale;

typedef enum {
    ROUTER_SOFTMAX,  /* softmax over all experts, top-k (Mixtral, Qwen) */
    ROUTER_DEEPSEEK, /* sigmoid, correction bias, group-limited top-k */
    ROUTER_HOOK      /* the family's `route` function (gpt-oss, Llama 4) */
} fwd_router;

struct fwd_model;
struct fwd_layer;
struct fwd_bufs;
struct fwd_moe_names;
/* Family hooks (forward_oss.c, forward_llama4.c): the router's choice for
 * one token (sel[K] experts, w[K] weights); one expert on n gathered rows;
 * (given: sel is chosen already, only weigh it); binding a layer's experts (instead of the per-expert / fused binders);
 * per-layer setup after the generic binding (sinks, chunked attention). */
typedef void (*fwd_route_fn)(const struct fwd_model *m, const struct fwd_layer *ly, const float *logits, long E,
                             long K, long *sel, float *w, int given);
typedef fl_status (*fwd_expert_fn)(const struct fwd_model *m, const struct fwd_layer *ly, long e, const float *x,
                                   long n, struct fwd_bufs *b, float *out, fl_error *err);
typedef fl_status (*fwd_bind_experts_fn)(struct fwd_model *m, struct fwd_layer *ly, const char *pre,
                                         const struct fwd_moe_names *nm, long E, fl_error *err);
typedef fl_status (*fwd_layer_fn)(struct fwd_model *m, struct fwd_layer *ly, long i, const char *pre, fl_error *err);

/* Tensor names of one MoE layout, relative to the layer prefix. */
typedef struct fwd_moe_names {
    const char *router;      /* "mlp.gate" */
    const char *experts;     /* "mlp.experts": per-expert "<experts>.{e}.<gate>" or fused "<experts>.gate_up_proj" */
    const char *gate, *up, *down;   /* per-expert projection names */
    const char *shared;      /* shared expert(s) "mlp.shared_expert", or NULL */
    const char *shared_gate; /* sigmoid scalar gate of the shared expert, or NULL */
} fwd_moe_names;

/* A family whose decoder layers do not fit the shared layouts (Gemma 4:
 * per-layer head sizes, KV sharing, per-layer inputs, a MoE block beside
 * the MLP) brings its own binder and layer stack, in its own file.  The
 * shared parse (embedding, dims, norms, activation, scalars, head) runs
 * first; open binds the layers and sets what the shared buffers need
 * (max_inter, max_experts, topk); run maps the scaled embeddings x[T][H]
 * to the last hidden state; describe appends to the result line; close
 * frees m->ext. */
struct fwd_bufs;
typedef struct fwd_block {
    fl_status (*open)(fwd_model *m, const char *prefix, fl_error *err);
    fl_status (*run)(const fwd_model *m, const int32_t *tokens, float *x, long T, struct fwd_bufs *b,
                     fl_error *err);
    void (*describe)(const fwd_model *m, char *buf, size_t cap);
    void (*close)(fwd_model *m);
    int rope;   /* 1: the shared RoPE parse runs first (m->freq_global); 0: the block builds its own */
} fwd_block;

/* Tensor names of the shared layer stack where a family renames them
 * (fwd_family.renames; NULL fields: the Llama names, see
 * fwd_resolve_names).  Relative to the layer prefix, without ".weight";
 * the MLP's names are relative to its module (fwd_family.mlp); head is a
 * full name.  Where the embedding and final norm are: fwd_names below. */
typedef struct fwd_renames {
    const char *attn_norm, *mlp_norm;       /* input_layernorm, post_attention_layernorm */
    const char *q_norm, *k_norm;            /* self_attn.q_norm, self_attn.k_norm */
    const char *q, *k, *v, *o, *qkv;        /* self_attn.q_proj ... o_proj, qkv_proj */
    const char *gate, *up, *down, *gate_up; /* gate_proj, up_proj, down_proj, gate_up_proj */
    const char *head;                       /* lm_head */
} fwd_renames;

/* Where a family keeps its text model: "<prefix>layers.{i}.", the
 * embedding "<prefix><embed>.weight", the final norm "<prefix><norm>.weight"
 * (Nemotron-H backbone.embeddings / norm_f, Falcon-H1 final_layernorm). */
typedef struct {
    const char *prefix, *embed, *norm;
} fwd_names;

/* Linear-attention layers (Gated DeltaNet, forward_deltanet.c), where
 * config layer_types says "linear_attention". */
typedef enum {
    LINATTN_NONE,
    LINATTN_SPLIT,  /* Qwen3.5: in_proj_qkv, in_proj_z, in_proj_b, in_proj_a */
    LINATTN_FUSED   /* Qwen3-Next: in_proj_qkvz, in_proj_ba, grouped per key head */
} fwd_linattn;

/* What a LLaVA-style wrapper changes around its text model (zoo issue 13,
 * forward_wrap.c, docs/architectures.md §vlm). */
typedef struct fwd_wrap {
    int any_text;            /* text_config.model_type may name any family (AutoConfig); one
                                without a family is refused; the text model lives only in
                                text_config */
    const char *class_text;  /* the config class's text type when text_config names none
                                (NULL: `wraps`) */
    int tie;                 /* the wrapper config's tie_word_embeddings default; -1: the text family's */
    int tie_or_text;         /* LlavaConfig: a false top-level flag yields to text_config's */
    int prefix_lm;           /* PaliGemma: a text prompt attends bidirectionally, positions from 1 */
} fwd_wrap;

typedef struct {
    const char *model_type;
    const char *wraps;          /* a composite type: the family of its text_config */
    const fwd_wrap *wrap;       /* ... a LLaVA-style wrapper: logits are its own lm_head's (no
                                   final soft cap, no logit scale), plus the quirks above */
    const fwd_block *block;     /* its own layer stack, or NULL */
    fwd_norm_kind norm;
    const char *eps_key;
    double eps;                 /* default when the key is absent */
    fwd_layout layout;
    fwd_qk qk;
    const char *qk_flag;        /* config flag that enables the q/k norms, or NULL (always) */
    int qk_default;             /* ... its default when absent (Llama 4 use_qk_norm: true) */
    fwd_embed embed;
    const char *embed_key;
    const char *residual_key;   /* residual + m * sublayer (Granite), or NULL */
    fwd_scale scale;
    const char *scale_key;
    double scale_default;
    const char *attn_cap_key;   /* soft caps: tanh(z / c) * c; 0 = none */
    double attn_cap;
    const char *final_cap_key;
    double final_cap;
    const char *logit_key;      /* logits * key (Cohere logit_scale) or / key */
    double logit_default;
    int logit_divide;           /* 1: divide (Granite logits_scaling) */
    fwd_sliding sliding;
    const char *local_theta_key; /* sliding layers' RoPE base (Gemma3 rope_local_base_freq) */
    const char *act_key;
    const char *act_default;
    int interleaved;            /* RoPE on pairs (2i, 2i+1) (Cohere, DeepSeek) */
    const char *interleave_key; /* overrides it (DeepSeek rope_interleave) */
    int mla;                    /* DeepSeek multi-head latent attention */
    double mla_norm_eps;        /* q_a/kv_a norms are built without eps */
    fwd_router router;
    const char *topk_norm_key;  /* renormalise the top-k weights: this key ... */
    int topk_norm;              /* ... or this default (1 with no key: always) */
    const fwd_moe_names *moe[2]; /* MoE layouts; the first whose router exists */
    int tie_default;
    /* zoo (a), Qwen3.5 / Qwen3-Next (docs/architectures.md §qwen3_5) */
    fwd_linattn linear_attn;    /* Gated DeltaNet in the linear-attention layers */
    int attn_gate;              /* q_proj rows are [query | gate] per head; output * sigmoid(gate) */
    double rotary_default;      /* partial_rotary_factor when the config has none (0: 1) */
    long head_dim_default;      /* head_dim when the config has none (0: hidden / heads) */
    long topk_default;          /* num_experts_per_tok when absent (0: 2) */
    const char *mlp;            /* the dense MLP's module name (NULL: "mlp"; Llama 4 "feed_forward") */
    fwd_route_fn route;         /* ROUTER_HOOK */
    int route_scales_input;     /* the routing weight multiplies the expert's input (Llama 4) */
    fwd_expert_fn expert;       /* one routed expert, or NULL: gated_mlp */
    fwd_bind_experts_fn bind_experts; /* or NULL: per-expert or fused, by name */
    fwd_layer_fn layer_extra;   /* or NULL */
    /* zoo 13 (tail), docs/architectures.md §zoo13-tail */
    const fwd_renames *renames; /* renamed tensors, or NULL */
    const char *tie_alias;      /* a key that decides the tie when present (LFM2 tie_embedding) */
    const char *topk_key;       /* experts per token (NULL: num_experts_per_tok; Hunyuan moe_topk) */
    int nope_full;              /* full-attention layers without RoPE: NOPE_FULL_* */
    int embed_round;            /* EMBED_KEY's multiplier in the embedding dtype (MiniCPM scale_emb) */
    int residual_sqrt_layers;   /* the residual multiplier is residual_key / sqrt(layers) (MiniCPM) */
    const char *logit_base_key; /* logits * key / hidden (MiniCPM dim_model_base; absent: 1) */
    int mlp_no_gate;            /* down(act(up(x))): NemotronMLP (Apertus, Arcee) */
    int qkv_grouped;            /* fused qkv rows per kv head: G queries, key, value (InternLM2) */
    int rope_alpha;             /* "dynamic" RoPE with alpha: base * alpha^(d / (d - 2)) (Hunyuan) */
    int conv_layers;            /* layer_types "conv" (or not in full_attn_idxs): LFM2 short conv */
    int route_softmax;          /* ROUTER_BIASED: softmax scores (ERNIE), else sigmoid (LFM2) */
    double route_eps;           /* ... added to the top-k sum before renormalising (LFM2 1e-6) */
    const char *route_clamp_key; /* ... or the sum clamped below by this key (ERNIE moe_norm_min) */
    double route_clamp;         /* ... its default */
    const char *route_bias;     /* ... the choice's correction bias, relative to the layer prefix */
    double embed_default;       /* EMBED_KEY when absent (0: 1; MiniCPM scale_emb 12) */
    double residual_default;    /* residual_key when absent (0: 1; MiniCPM scale_depth 1.4) */
    double logit_base_default;  /* logit_base_key when absent (MiniCPM dim_model_base 256) */
    /* zoo (d), forward_position.c */
    double rope_theta;          /* default rope_theta (0: 10000) */
    const char *rope_defaults;  /* JSON of the config class's default rope_parameters, or NULL */
    fwd_qscale qscale;
    /* zoo (issue 13): GLM and DeepSeek, docs/architectures.md §glm-deepseek */
    const char *sandwich[3];    /* LAYOUT_SANDWICH norm names: after attention, before and after the MLP
                                   (NULL: Gemma's post_attention / pre_ and post_feedforward_layernorm) */
    int mla_plain_scale;        /* MLA scaling stays qk_head_dim^-0.5 under YaRN (DeepseekV2Attention) */
    const struct fwd_dsa_spec *dsa; /* the DSA lightning indexer in every MLA layer (forward_dsa.c), or NULL */
    /* zoo 13 (hybrid group), docs/architectures.md §zoo13-hybrid */
    const fwd_names *names;     /* text-model layouts, the first whose embedding exists (NULL: the
                                   default prefixes with embed_tokens / norm); ends with a NULL prefix */
    const char *blocks_key;     /* config keys ("a|b") listing every layer's block type: their length
                                   counts the layers when num_hidden_layers is absent (Nemotron-H) */
    const char *clip_key;       /* clamp q, k, v to +-key after the q/k norms (OLMoE clip_qkv), or NULL */
    long slide_period;          /* SLIDE_PATTERN without sliding_window_pattern: every n-th layer is
                                   full (0: 6, Gemma 3; OLMo 3: 4) */
    long window_default;        /* sliding_window when the config has none (0: no window) */
    int slide_default_rope;     /* sliding layers use the default RoPE on the global base (OLMo 3) */
    int group_mask_inf;         /* ROUTER_DEEPSEEK: experts outside the kept groups are -inf, not 0
                                   (NemotronHMoE.route_tokens_to_experts) */
    /* zoo issue 13, forward_wrap.c: layers that do not run on a text-only
     * sequence (Mllama's cross-attention layers), listed in this config key
     * or, when it is absent or null, in skip_default ("3,8,..."). */
    const char *skip_key;
    const char *skip_default;
} fwd_family;

enum { NOPE_FULL_NEVER = 0, NOPE_FULL_ALWAYS = 1 /* Cohere 2 */, NOPE_FULL_IF_WINDOW = 2 /* EXAONE 4 */ };

/* The row of model_type (rows and composite types), or NULL; i-th for tests. */
const fwd_family *fwd_family_find(const char *model_type);
const fwd_family *fwd_family_at(size_t i);

/* A rope_type (modeling_rope_utils.py ROPE_INIT_FUNCTIONS) and its builder. */
typedef struct fwd_rope_ctx fwd_rope_ctx;
typedef fl_status (*fwd_rope_builder)(const fwd_rope_ctx *c, const struct cJSON *scaling, double factor,
                                      float *inv_freq, double *attn_factor, fl_error *err);
typedef struct {
    const char *name;
    fwd_rope_builder build;
} fwd_rope_type;

struct fwd_rope_ctx {
    long rot;            /* rotary dims */
    double theta;
    ckpt_view cfg;
    const char *dir;
    int ntk_alpha;       /* the family's rope_alpha */
};

/* The builder of rope_type `name`, or NULL; the names, for messages. */
const fwd_rope_type *fwd_rope_find(const char *name);
void fwd_rope_names(char *buf, size_t cap);
/* YaRN's attention temperature (modeling_rope_utils.py get_mscale). */
double fwd_yarn_mscale(double scale, double mscale);

/* ----------------------------------------------------------------------------
 * The model */

typedef struct {
    const ckpt_tensor *t;   /* NULL: absent (MXFP4: the _blocks tensor) */
    long rows, cols;        /* [out, in] as nn.Linear stores it; xw: [in, out] */
    int dtype;
    size_t esize;           /* bytes per element */
    uint64_t off;           /* byte offset of this matrix in the tensor (one expert of a 3-D one) */
    int xw;                 /* stored [in, out] and used as x @ W (grouped-GEMM experts) */
    const ckpt_tensor *mx;  /* MXFP4: the _scales tensor (rows of [.., out, in/32]); NULL: dtype */
    uint64_t mx_off;        /* byte offset of this matrix's scales */
    int quant;              /* FWD_Q_*: stored quantized, decoded by forward_quant.c */
    const ckpt_tensor *qs;  /* ... its scales */
    long qb_rows, qb_cols;  /* FP8: the scale block [rows, cols]; INT4/INT8: group size in qb_cols */
    int qbits;              /* INT: 4 or 8 bits per value */
} fwd_mat;

enum { FWD_Q_NONE, FWD_Q_FP8_BLOCK, FWD_Q_INT_PACKED };

typedef struct {
    float *g;               /* effective gain (w or 1 + w); NULL = identity */
    long n;
} fwd_norm;

typedef struct fwd_layer {
    fwd_norm attn_norm, attn_post, mlp_norm, mlp_post, q_norm, k_norm;
    fwd_mat q, k, v, qkv, o;
    float *bq, *bk, *bv, *bo, *bqkv;
    fwd_mat gate, up, gate_up, down;
    float *b_gate, *b_up, *b_down;
    long n_experts;          /* 0: dense MLP */
    int fused;               /* experts stored as 3-D tensors */
    fwd_mat router;
    fwd_mat *e_gate, *e_up, *e_gate_up, *e_down;
    fwd_mat sh_gate, sh_up, sh_down, sh_scalar; /* shared expert(s); scalar gate: Qwen2-MoE */
    float *e_bias;           /* DeepSeek router e_score_correction_bias (choice only) */
    fwd_mat q_a, q_b, kv_a, kv_b; /* DeepSeek MLA projections */
    fwd_norm q_a_norm, kv_a_norm;
    struct fwd_gdn *gdn;     /* a Gated DeltaNet layer (forward_deltanet.c); NULL: attention */
    const float *inv_freq;   /* rot/2 frequencies; NULL: no RoPE (SmolLM3 NoPE) */
    float rope_af;           /* multiplies cos and sin */
    long window;             /* sliding window (0: none) */
    long rot;                /* rotary dims of this layer (0: the model's) */
    long chunk;              /* chunked local attention: same chunk of this size only (0: none) */
    float *sinks;            /* per-head attention sink logits in the softmax (gpt-oss), or NULL */
    double temp_floor, temp_scale; /* NoPE temperature tuning (Llama 4): q *= 1 + s log(floor((t+1)/f) + 1); f 0: off */
    float *b_router;         /* router bias (gpt-oss), or NULL */
    float *e_gu_bias, *e_dn_bias; /* per-expert biases [E, 2I], [E, H] (gpt-oss), or NULL */
    struct fwd_conv *conv;   /* an LFM2 short-convolution layer (forward_shortconv.c), or NULL */
    float act_p[4];          /* xIELU: softplus(alpha_p), beta + softplus(alpha_n), beta, eps */
    float *b_qa, *b_kva;     /* MLA q_a_proj / kv_a_proj_with_mqa biases (DeepSeek-V2 attention_bias), or NULL */
    struct fwd_dsa *dsa;     /* the layer's DSA indexer (forward_dsa.c), or NULL */
    const unsigned char *allow; /* set on a copy for one pass: allow[i * T + j], the keys query i reads */
    int skip;                /* not run on text-only input (fwd_family.skip_key) */
} fwd_layer;

/* A worker's conversion buffers, grown to the largest block it met. */
struct mm_scratch {
    void *raw;      /* the block as stored */
    float *f;       /* ... and as floats */
    size_t cap;     /* elements both can hold */
};

/* Y[t][r] = sum_i X[t][i] * W[r][i] over a block of rows (see the kernel). */
typedef void (*gemm_fn)(const float *w, long nr, long cols, const float *x, long T, float *y, long ldy);

struct fwd_model {
    const checkpoint *ck;
    const fwd_family *fam;
    ckpt_view cfg;                    /* the config level the text model reads */
    fl_pool *pool;                    /* kept across matrix products */
    struct mm_scratch *scratch;       /* one per pool worker */
    gemm_fn gemm;                     /* the matrix kernel for this CPU */
    long H, L, nh, nkv, hd, V, rot;   /* rot: rotary dims per head */
    long max_inter;                   /* widest MLP / expert intermediate */
    long max_experts, topk, moe_layers;
    long linear_layers;               /* Gated DeltaNet layers */
    int norm_topk;                    /* renormalise the top-k routing weights */
    long n_group, topk_group;
    double routed_scale;
    double swiglu_limit;              /* gpt-oss experts' clamp (swiglu_limit, 7.0) */
    long q_lora, kv_lora, nope, vdim; /* MLA dims (rope part = rot) */
    int interleaved;                  /* RoPE on pairs (2i, 2i+1) */
    int act;
    int qk_norm_on;
    double eps;
    double embed_mult;                /* sqrt(H) in the embedding dtype, Granite multiplier */
    double residual_mult;
    double attn_scale;                /* multiplies q.k */
    double attn_softcap, final_softcap; /* 0: none */
    double logit_mult;
    double clip_qkv;                  /* OLMoE: |q|, |k|, |v| <= clip after the q/k norms (0: none) */
    fwd_mat embed, head;
    long in_tokens;                   /* ids the pass embeds, when fewer than embed.rows (fwd_tokens); 0: all */
    float *head_bias;                 /* lm_head.bias (ERNIE 4.5 MoE with use_bias), or NULL */
    fwd_renames nm;                   /* the family's tensor names (fwd_resolve_names) */
    fwd_norm final_norm;
    fwd_layer *layers;
    float *freq_global, *freq_local;
    double af_global, af_local;       /* RoPE attention factor (YaRN, LongRoPE) */
    void *ext;                        /* a fwd_block's own state */
    struct cJSON *rope_defaults;      /* the family's rope_defaults, parsed (forward_position.c) */
    double qscale_beta, qscale_orig;  /* QSCALE_LLAMA4_BETA's beta and length */
    const fwd_family *wrapper;        /* the LLaVA-style wrapper row around fam, or NULL */
    int bidir;                        /* attention over the whole sequence (PaliGemma's prompt) */
    long pos0;                        /* position id of the first token (PaliGemma: 1) */
    long skipped;                     /* layers not run (Mllama's cross-attention layers) */
    char desc[512];
    /* fwd_set_progress: bytes of the bound matrices (total) and of those
     * streamed in this pass.  The blocks take the model const, so they
     * count through mp, which points at meter. */
    struct fwd_meter {
        fwd_progress_fn fn;
        void *ctx;
        uint64_t done, total;
        long quant[3];                /* matrices bound stored quantized, by kind FWD_Q_* */
    } meter, *mp;
    /* fwd_route_record / fwd_route_replay: every MoE decision of a pass,
     * in order (layer by layer, token by token, K experts each). */
    struct fwd_routing {
        int mode;                      /* 0 free, 1 record, 2 replay */
        long *sel;
        size_t n, cap;
        const struct fwd_routing *from; /* replay: the recording model's */
        size_t pos;
        long decisions, flips;
        int lost;                      /* out of memory or a mismatch: not pinned */
        struct fwd_index_rec *idx;     /* the DSA indexers' selections and scores (forward_dsa.c), or NULL */
    } routing, *rp;
};

enum { ACT_SILU, ACT_GELU_TANH, ACT_GELU_ERF, ACT_RELU2, ACT_XIELU };

/* The activation of a hidden_act name (ACT_*), or -1; the names, for
 * messages (forward_table.c). */
int fwd_act_find(const char *name);
void fwd_act_names(char *buf, size_t cap);
/* The family's names, the Llama ones where it sets none. */
void fwd_resolve_names(const fwd_family *f, fwd_renames *out);

/* ----------------------------------------------------------------------------
 * Across the files */

/* forward_load.c */
fl_status fwd_bind_mat(const fwd_model *m, const char *name, long rows, long cols, int required, fwd_mat *out,
                       fl_error *err);
/* A norm weight of n elements (absent: the identity gain), a float vector
 * (a bias; absent: NULL unless required), fused experts "<pre><experts>.
 * gate_up_proj" / ".down_proj" into ly->e_gate_up / e_down (allocated by
 * the caller for E experts). */
fl_status fwd_bind_norm(const fwd_model *m, const char *name, long n, fwd_norm *out, fl_error *err);
fl_status fwd_bind_vec(const fwd_model *m, const char *name, long n, int required, float **out, fl_error *err);
fl_status fwd_bind_fused(fwd_model *m, fwd_layer *ly, const char *pre, const char *experts, long E,
                         fl_error *err);
/* The tensor named by the printf format (the name written into buf), or
 * NULL when absent or when the name does not fit. */
const ckpt_tensor *fwd_findf(const fwd_model *m, char *buf, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* forward_bind_mlp.c: the layer's MLP (dense, or MoE by the family's name
 * sets) under prefix pre; one expert's rows x cols matrix at slab e of a
 * 3-D tensor [E, a, b] (xw: stored [in, out], used as x @ W). */
fl_status fwd_bind_ffn(fwd_model *m, fwd_layer *ly, const char *pre, fl_error *err);
fwd_mat fwd_slab(const ckpt_tensor *t, long e, long rows, long cols, int xw);


/* forward_deltanet.c: Qwen3.5 / Qwen3-Next linear attention */
/* 1 when layer i is a linear-attention layer: config layer_types[i], or
 * without layer_types every full_attention_interval-th layer (default 4)
 * is full attention (Qwen3NextConfig). */
int fwd_layer_is_linear(const fwd_model *m, long i);
fl_status fwd_bind_deltanet(fwd_model *m, fwd_layer *ly, const char *pre, fl_error *err);
fl_status fwd_deltanet(const fwd_model *m, const fwd_layer *ly, const float *h, long T, float *out, fl_error *err);
void fwd_gdn_free(struct fwd_gdn *g);

/* forward_gated.c: the output-gated full attention of Qwen3.5 / Qwen3-Next */
/* q_proj(h) split per head into the query (q, [T][nh * hd]) and the gate
 * (*gate, allocated [T][nh * hd]). */
fl_status fwd_gated_query(const fwd_model *m, const fwd_layer *ly, const float *h, long T, float *q, float **gate,
                          fl_error *err);
/* ctx *= sigmoid(gate), elementwise over n values. */
void fwd_gate_apply(float *ctx, const float *gate, size_t n);

/* forward_mla.c: DeepSeek's multi-head latent attention (V2, V3, V3.2,
 * GLM-4.7-Flash, GLM-5) and DeepSeek-V2's softmax router */
fl_status fwd_parse_mla(fwd_model *m, fl_error *err);
fl_status fwd_bind_mla(fwd_model *m, fwd_layer *ly, const char *pre, fl_error *err);
fl_status fwd_attention_mla(const fwd_model *m, const fwd_layer *ly, const float *h, long T, struct fwd_bufs *b,
                            float *out, fl_error *err);
void fwd_ds2_route(const struct fwd_model *m, const struct fwd_layer *ly, const float *logits, long E, long K,
                   long *sel, float *w, int given);
fl_status fwd_ds2_layer(fwd_model *m, fwd_layer *ly, long i, const char *pre, fl_error *err);

/* forward_dsa.c: the DeepSeek Sparse Attention indexer (V3.2, GLM-5) */
typedef struct fwd_dsa_spec {
    int interleaved;       /* the indexer's RoPE pairs (2i, 2i+1) (GLM-5) or (i, i + R/2) (V3.2) */
    long heads, head_dim;  /* index_n_heads, index_head_dim defaults of the config class */
    int shared_layers;     /* indexer_types may say "shared": reuse the last full layer's selection */
} fwd_dsa_spec;
extern const fwd_dsa_spec FWD_DSA_V32, FWD_DSA_GLM;
fl_status fwd_dsa_layer(fwd_model *m, fwd_layer *ly, long i, const char *pre, fl_error *err);
/* The keys each query reads (allow[t * T + s]) from the normed input h and
 * the query latent qa (q_a_layernorm's output); NULL allow: every key. */
fl_status fwd_dsa_select(const fwd_model *m, const fwd_layer *ly, const float *h, const float *qa, long T,
                         const unsigned char **allow, fl_error *err);
void fwd_dsa_free(struct fwd_dsa *d);
void fwd_dsa_describe(const fwd_model *m, char *buf, size_t cap);
void fwd_index_rec_free(struct fwd_index_rec *r);
void fwd_index_rec_rewind(struct fwd_index_rec *r);

/* forward_quant.c: FP8 block-scaled and compressed-tensors packed-integer
 * matrices, decoded to float for the forward pass.  fwd_bind_quant binds
 * `name` (a "<base>.weight") when one of those forms of it is stored
 * (out->t set), leaves out->t NULL when none is, or fails on a malformed
 * one; fwd_quant_rows decodes rows [r, r + n) into out. */
fl_status fwd_bind_quant(const fwd_model *m, const char *name, long rows, long cols, fwd_mat *out, fl_error *err);
fl_status fwd_quant_rows(const fwd_model *m, const fwd_mat *w, long r, long n, void *raw, float *out,
                         fl_error *err);
void fwd_quant_describe(const fwd_model *m, char *buf, size_t cap);

/* forward_kernel.c */
gemm_fn fwd_pick_gemm(void);
void fwd_to_float(int d, const void *raw, float *out, size_t n);
/* y[T][out] = x[T][in] * W^T (+ bias) for an nn.Linear matrix, or x @ W for an xw one. */
fl_status fwd_matmul(const fwd_model *m, const fwd_mat *w, const float *bias, const float *x, long T, float *y,
                     fl_error *err);
/* Counts matrix w as streamed (or skipped: an expert no token chose) in this
 * pass, and reports progress. */
void fwd_meter_add(const fwd_model *m, const fwd_mat *w);
/* Rounds x to the storage dtype d and back. */
double fwd_round_to_dtype(int d, double x);
/* Bytes of matrix w as stored. */
uint64_t fwd_mat_bytes(const fwd_mat *w);
/* One output of a causal depthwise conv1d (nn.Conv1d, groups = channels,
 * padding K - 1, cut to the first T outputs): acc + sum_j w[j] *
 * x[(t - (K - 1) + j) * ld] over the steps >= 0, in double, j ascending;
 * x points at the channel's column (LFM2, Mamba-2, Gated DeltaNet). */
double fwd_conv_step(double acc, const float *w, long K, const float *x, long ld, long t);

/* forward_mxfp4.c: rows [r, r + n) of an MXFP4 matrix decoded into floats
 * (raw: scratch of at least n * cols * 17 / 32 bytes). */
fl_status fwd_mxfp4_rows(const fwd_model *m, const fwd_mat *w, long r, long n, void *raw, float *out,
                         fl_error *err);

/* forward_position.c */
/* The rope_parameters the config does not spell out: the family's defaults
 * (parsed into m->rope_defaults) when the config has neither
 * rope_parameters nor rope_scaling, else NULL. */
fl_status fwd_rope_defaults(fwd_model *m, const struct cJSON **out, fl_error *err);
/* The query scale's parameters from the rope parameters `rp`. */
fl_status fwd_parse_qscale(fwd_model *m, const struct cJSON *rp, fl_error *err);
/* Multiplies each query head of row t by the family's scale for position t. */
void fwd_apply_qscale(const fwd_model *m, float *q, long T);

/* forward_blocks.c */
typedef struct fwd_bufs {
    float *h, *q, *k, *v, *ctx, *qkv, *att;
    float *g, *u, *gu, *tmp, *tmp2, *xe, *router;
    long *sel;
    float *selw;
} fwd_bufs;

void fwd_norm_rows(const fwd_model *m, const fwd_norm *nm, float *x, long T, long n);
/* ... with another eps (MLA's q_a/kv_a norms). */
void fwd_norm_eps(const fwd_model *m, const fwd_norm *nm, float *x, long T, long n, double eps);
/* RoPE on the first 2 * half values of v at position pos (ly's frequencies). */
void fwd_rope_pairs(const fwd_layer *ly, float *v, long pos, long half, int interleaved);
fl_status fwd_attention(const fwd_model *m, const fwd_layer *ly, const float *h, long T, fwd_bufs *b, float *out,
                        fl_error *err);
fl_status fwd_mlp(const fwd_model *m, const fwd_layer *ly, const float *x, long T, fwd_bufs *b, float *out,
                  fl_error *err);
/* The pieces, for a fwd_block: RoPE on one head vector at position pos
 * (ly->inv_freq, ly->rot); causal attention over T positions (see sdpa in
 * forward_blocks.c); the experts of ly on the routing in b->sel / b->selw
 * (m->topk per token), summed into out. */
void fwd_rope_head(const fwd_model *m, const fwd_layer *ly, float *v, long pos);
void fwd_sdpa(const fwd_model *m, const fwd_layer *ly, const float *q, long ldq, const float *k, long ldk,
              const float *v, long ldv, long nh, long nkv, long dqk, long dv, long T, float *att, float *ctx);
fl_status fwd_experts(const fwd_model *m, const fwd_layer *ly, const float *x, long T, fwd_bufs *b, float *out,
                      fl_error *err);
/* The tokens of T that chose expert e (b->sel / b->selw, K per token):
 * their positions into idx, weights into wt, their rows of x (width wide)
 * into xe; returns how many. */
long fwd_gather_expert(const fwd_bufs *b, long e, long T, long K, const float *x, long width, long *idx, float *wt,
                       float *xe);
/* ly->n_experts = E and its four per-expert matrix arrays, zeroed. */
fl_status fwd_alloc_experts(fwd_layer *ly, long E, fl_error *err);
/* down(act(gate(x)) * up(x)) (gate_up: one fused [2I, H], gate rows first),
 * biases where given; the family's router for one token (or, given, only
 * the weights of the experts in sel). */
fl_status fwd_gated_mlp(const fwd_model *m, const fwd_mat *gate, const fwd_mat *up, const fwd_mat *gate_up,
                        const fwd_mat *down, const float *bg, const float *bu, const float *bd, const float *x,
                        long T, fwd_bufs *b, float *out, fl_error *err);
void fwd_route(const fwd_model *m, const fwd_layer *ly, const float *logits, long E, long K, long *sel, float *w,
               int given);
/* The indices of the K largest of E scores, best first (torch.topk order). */
void fwd_top_k(const double *score, long E, long K, long *sel);
float fwd_act(const fwd_model *m, float x);
float fwd_act_as(int act, float x);   /* by ACT_* kind (a Mamba conv's own activation) */

/* forward_wrap.c (zoo issue 13: the LLaVA-style VLM wrappers) */
/* The text family of wrapper row w (fam->wraps set): the old rule (the
 * family text_config names, else wraps) or, with w->wrap, the wrapper's. */
fl_status fwd_wrap_inner(fwd_model *m, const fwd_family *w, const fwd_family **inner, fl_error *err);
/* After the scalars are parsed: the wrapper's logits, attention, positions. */
void fwd_wrap_apply(fwd_model *m);
/* tie_word_embeddings as the loader reads it (docs/architectures.md §vl-tie, §vlm-tie). */
int fwd_tie(const fwd_model *m);
/* 1 when layer i does not run on a text-only sequence (counted in m->skipped). */
int fwd_layer_skipped(fwd_model *m, long i);
/* Appends the wrapper and the skipped layers to the result line. */
void fwd_wrap_describe(const fwd_model *m, char *buf, size_t cap);

/* forward_gemma4.c (zoo: Gemma 4) */
extern const fwd_block FWD_GEMMA4;

/* forward_gemma_shared.c: what Gemma 3n and Gemma 4 share.  The attention
 * of one layer: its own q/k/v (hd, nkv per layer), or the keys and values
 * from_k / from_v of an earlier layer (KV sharing); keep_k / keep_v (or
 * NULL) receive this layer's for a later one; q, k, v, ctx are buffers of
 * T * nh * hd, T * nkv * hd, T * nkv * hd, T * nh * hd floats. */
typedef struct {
    long hd, nkv;
    int k_eq_v;                     /* values are the key projection (Gemma 4 attention_k_eq_v) */
    const float *from_k, *from_v;   /* a KV-shared layer's source, or NULL */
    float *keep_k, *keep_v;
    float *q, *k, *v, *ctx;
} fwd_gemma_attn;
fl_status fwd_gemma_attention(const fwd_model *m, const fwd_layer *ly, const fwd_gemma_attn *a, const float *h,
                              long T, fwd_bufs *b, float *out, fl_error *err);
/* The per-layer inputs.  fwd_ple_bind binds the model's tensors under pre
 * (p->P set; grows m->max_inter to P, the gate's buffer) and sets the
 * scales sqrt(P) (in the embedding's dtype), H^-0.5 and 2^-0.5, which a
 * family may round after; fwd_ple_inputs writes [T][L][P] into out;
 * fwd_ple_layer_out is layer l's path from its input x [T][H] into out
 * [T][H], in being the per-layer inputs (the gate runs in b->g). */
typedef struct {
    long P;                  /* hidden_size_per_layer_input */
    fwd_mat embed;           /* embed_tokens_per_layer [Vp, L * P] */
    fwd_mat model_proj;      /* per_layer_model_projection [L * P, H] */
    fwd_norm proj_norm;      /* per_layer_projection_norm [P] */
    double embed_scale, proj_scale, input_scale;
} fwd_ple;
typedef struct {
    fwd_mat gate, proj;      /* per_layer_input_gate [P, H], per_layer_projection [H, P] */
    fwd_norm post;           /* post_per_layer_input_norm [H] */
} fwd_ple_layer;
fl_status fwd_ple_bind(fwd_model *m, fwd_ple *p, const char *pre, fl_error *err);
fl_status fwd_ple_bind_layer(fwd_model *m, const fwd_ple *p, fwd_ple_layer *ly, const char *pre, fl_error *err);
fl_status fwd_ple_inputs(const fwd_model *m, const fwd_ple *p, const int32_t *tokens, const float *x, long T,
                         float *out, fl_error *err);
fl_status fwd_ple_layer_out(const fwd_model *m, const fwd_ple *p, const fwd_ple_layer *ly, long l, const float *in,
                            const float *x, long T, fwd_bufs *b, float *out, fl_error *err);
/* ... of E float logits. */
void fwd_choose(const float *logits, long E, long K, long *sel);

/* forward_route.c: recording and replaying the routers' choices (see
 * fwd_route_record in forward.h).  Called with a token's own choice sel[K]
 * of E experts: records it, or replaces it by the recorded one and returns
 * 1 (the caller then weighs the recorded experts). */
int fwd_route_pin(const fwd_model *m, long *sel, long E, long K);
/* Forgets the last pass's record (fwd_logits calls it first). */
void fwd_route_reset(fwd_model *m);

/* forward_mamba.c (zoo 13): the Mamba-2 mixer of Granite 4.0-H, Nemotron-H
 * and Falcon-H1, as each family's config names its sizes. */
typedef struct {
    long heads, head_dim, state, groups, kernel; /* inner size = heads * head_dim */
    long norm_group;        /* channels per RMS group of the gated norm (inner: one group) */
    int has_norm;           /* the gated norm exists (Falcon-H1: mamba_rms_norm) */
    int norm_before_gate;   /* Falcon-H1: (w * x_hat) * silu(z); else w * rms(y * silu(z)) */
    int act;                /* ACT_* after the conv */
    double eps;             /* the gated norm's */
    double dt_min, dt_max;  /* clamp of softplus(dt + dt_bias) */
    double in_mult;         /* Falcon-H1 ssm_in_multiplier (1 otherwise) */
    double mup[5];          /* Falcon-H1 ssm_multipliers on z, x, B, C, dt (1 otherwise) */
} fwd_mamba_dims;

typedef struct {
    fwd_mamba_dims d;
    fwd_mat in_proj, out_proj;
    float *in_bias, *out_bias;   /* where stored */
    float *conv, *conv_bias;     /* [C][K], [C] (bias where stored); C = inner + 2 groups state */
    float *a_log, *dt_bias, *D;  /* [heads] */
    float *norm;                 /* [inner] gated-norm gain w; NULL: ones (or no norm) */
} fwd_mamba;

#define FWD_MAMBA_MAX_INNER (1L << 22)
/* heads * head_dim when both are in range (1..65536), else -1: config
 * values are never multiplied before they are bounded. */
long fwd_mamba_inner(const fwd_mamba_dims *d);
/* Checks the sizes (FL_EINPUT naming them); binds "<pre>in_proj.weight"
 * and the rest; runs the mixer on h[T][H] into out[T][H]; frees. */
fl_status fwd_mamba_check(const fwd_model *m, const fwd_mamba_dims *d, fl_error *err);
/* A depthwise conv1d weight [C, 1, K] as C * K floats (Mamba-2, Gated DeltaNet, LFM2). */
fl_status fwd_bind_conv(const fwd_model *m, const char *name, long C, long K, float **out, fl_error *err);
fl_status fwd_mamba_bind(fwd_model *m, const char *pre, const fwd_mamba_dims *d, fwd_mamba *mb, fl_error *err);
fl_status fwd_mamba_run(const fwd_model *m, const fwd_mamba *mb, const float *h, long T, float *out, fl_error *err);
void fwd_mamba_free(fwd_mamba *mb);

/* forward_granite.c (granitemoe, granitemoeshared, granitemoehybrid) and
 * forward_hybrid.c (nemotron_h, falcon_h1): their layer stacks. */
extern const fwd_block FWD_GRANITE, FWD_GRANITE_HYBRID, FWD_NEMOTRON_H, FWD_FALCON_H1;

/* forward_shortconv.c (LFM2): the gated short convolution of a conv layer,
 * bound from "<pre>conv."; run on the normed h [T][H] into out. */
int fwd_layer_is_conv(const fwd_model *m, long i);
fl_status fwd_bind_shortconv(fwd_model *m, fwd_layer *ly, const char *pre, fl_error *err);
fl_status fwd_shortconv(const fwd_model *m, const fwd_layer *ly, const float *h, long T, float *out, fl_error *err);
void fwd_conv_free(struct fwd_conv *c);

/* forward_tail.c (zoo 13): routers with a correction bias on the choice
 * (LFM2-MoE, ERNIE 4.5 MoE; fwd_family.route_*), and the layer setup of
 * the families that need one (xIELU parameters, the router bias). */
void fwd_biased_route(const fwd_model *m, const fwd_layer *ly, const float *logits, long E, long K, long *sel,
                      float *w, int given);
fl_status fwd_tail_layer(fwd_model *m, fwd_layer *ly, long i, const char *pre, fl_error *err);
/* forward_rope.c: RoPE of the shared pass (m->freq_global, m->freq_local
 * by the family's local_theta_key), also before a fwd_block with rope set. */
fl_status fwd_parse_rope(fwd_model *m, fl_error *err);

/* forward_gemma3n.c (zoo 13: Gemma 3n) */
extern const fwd_block FWD_GEMMA3N;

/* forward_oss.c (gpt-oss) and forward_llama4.c (Llama 4): the hooks above. */
void fwd_oss_route(const fwd_model *m, const fwd_layer *ly, const float *logits, long E, long K, long *sel,
                   float *w, int given);
fl_status fwd_oss_expert(const fwd_model *m, const fwd_layer *ly, long e, const float *x, long n, fwd_bufs *b,
                         float *out, fl_error *err);
fl_status fwd_oss_bind_experts(fwd_model *m, fwd_layer *ly, const char *pre, const fwd_moe_names *nm, long E,
                               fl_error *err);
fl_status fwd_oss_layer(fwd_model *m, fwd_layer *ly, long i, const char *pre, fl_error *err);
void fwd_llama4_route(const fwd_model *m, const fwd_layer *ly, const float *logits, long E, long K, long *sel,
                      float *w, int given);
fl_status fwd_llama4_layer(fwd_model *m, fwd_layer *ly, long i, const char *pre, fl_error *err);
/* Llama 4's NoPE temperature tuning on q [T][nh * hd] at positions 0..T-1. */
void fwd_temperature(const fwd_layer *ly, float *q, long T, long width);

#endif
