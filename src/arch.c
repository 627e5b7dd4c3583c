/* arch.c — the architecture table (see arch.h).
 *
 * Every rule comes from docs/architectures.md, which says per family what
 * was read in which transformers modeling file.  Adding a family is adding
 * a row here (or an alias), a row in forward_table.c, fixtures and a test. */
#include "flashify/arch.h"

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const arch_norm_class ARCH_RMS_W = {"LlamaRMSNorm", GAIN_W};
const arch_norm_class ARCH_RMS_1PW = {"GemmaRMSNorm", GAIN_ONE_PLUS_W};
const arch_norm_class ARCH_LN_NOBIAS = {"CohereLayerNorm", GAIN_W};

const arch_layout ARCH_LAYOUTS[] = {
    {"model.", "embed_tokens", "norm", "lm_head"},
    {"language_model.model.", "embed_tokens", "norm", "language_model.lm_head"},
    {"model.language_model.", "embed_tokens", "norm", "lm_head"},
    {"model.text_model.", "embed_tokens", "norm", "lm_head"},
    {NULL, NULL, NULL, NULL},
};

/* docs/architectures.md §marker: what transformers' and vLLM's FlashNorm
 * loaders build without a weight when config.json says flashnorm_folded. */
const char *const ARCH_MARKER_NORMS[] = {"input_layernorm", "post_attention_layernorm", NULL};

/* ---------------------------------------------------------------------------
 * shared pieces */

/* Row pieces.  Designated initializers throughout: a row names only the
 * fields it sets. */
#define L(n) {.name = n, .input = IN_LINEAR}
#define FUSED(n, in) {.name = n, .input = in}
#define QKV L("self_attn.q_proj"), L("self_attn.k_proj"), L("self_attn.v_proj")
#define GATE_UP L("mlp.gate_proj"), L("mlp.up_proj")
#define FOLD(n, ...) {.norm = n, .consumers = {__VA_ARGS__}}
#define KEEP(n, why) {.norm = n, .reason = why}
#define WHEN(k) {.kind = k}
#define WHEN_KEY(k, key_) {.kind = k, .key = key_}
#define LLAMA_FOLDS {FOLD("input_layernorm", QKV), FOLD("post_attention_layernorm", GATE_UP)}
/* transformers 5 writes fused experts when saving with
 * save_original_format=False (docs/architectures.md §v5). */
#define HAS_FUSED {WHEN(WHEN_MOE), WHEN_KEY(WHEN_HAS, "mlp.experts.gate_up_proj")}
#define FUSED_NOTE "transformers 5 fused experts"
#define QWEN_MOE                                                                       \
    {.experts = {"num_experts", "num_local_experts"}, .dense_list = "mlp_only_layers", \
     .step = "decoder_sparse_step", .step_offset = 1}

static const char QK_NORM_WHY[] =
    "q/k norm: applied per head before RoPE and the attention scores, not before a linear layer";
static const char POST_NORM_WHY[] =
    "sandwich norm: normalises a sublayer's output before the residual add, not a linear layer's input";
static const char GEMMA_WARNING[] =
    "Gemma norms are 1+w: a dropped norm loads as the identity only on transformers "
    "releases that initialise missing Gemma norms to 0 (v4.57+); on ~v4.51-4.56 it "
    "loads as gain 2. Use --keep-norms to write the identity (0) explicitly";
static const char GEMMA_UNTIE_WARNING[] =
    "vLLM's Gemma loaders assert tied embeddings; this untied checkpoint will not load "
    "there (use --keep-tied for vLLM)";

/* Gemma4RMSNorm (gemma4/modeling_gemma4.py): (w * x_hat_fp32).to(dtype). */
static const arch_norm_class GEMMA4_RMS = {"Gemma4RMSNorm", GAIN_W};
static const char GEMMA4_MOE_POST_WHY[] =
    "normalises the dense MLP's or the experts' output before the two are summed, not a linear layer's input";
/* -- zoo (a): Qwen3.5 / Qwen3.6 / Qwen3-Next (docs/architectures.md §qwen3_5).
 * Decoder norms are 1 + w on a non-Gemma class; the layer type picks what
 * input_layernorm feeds: layer_types[i], or, in configs without it (the
 * original Qwen3-Next ones), every full_attention_interval-th layer
 * (default 4) is full attention -- Qwen3NextConfig computes layer_types so. */
static const arch_norm_class QWEN3_5_RMS = {"Qwen3_5RMSNorm", GAIN_ONE_PLUS_W};
static const arch_norm_class QWEN3_NEXT_RMS = {"Qwen3NextRMSNorm", GAIN_ONE_PLUS_W};
#define LAYER_IS(t) {.kind = WHEN_LAYER_TYPE, .key = "layer_types", .value = t}
#define NO_LAYER_TYPES {.kind = WHEN_NOT_FLAG, .key = "layer_types"}
#define INTERVAL(k) {.kind = k, .key = "full_attention_interval", .value = "4"}
#define QWEN3_5_LINEAR \
    L("linear_attn.in_proj_qkv"), L("linear_attn.in_proj_z"), L("linear_attn.in_proj_b"), L("linear_attn.in_proj_a")
#define QWEN3_NEXT_LINEAR L("linear_attn.in_proj_qkvz"), L("linear_attn.in_proj_ba")
#define LINEAR_NOTE "linear attention (Gated DeltaNet)"
#define FULL_NOTE "gated full attention (q_proj: query and gate per head)"
#define HYBRID_INPUT(linear)                                                                                  \
    {.norm = "input_layernorm", .consumers = {linear}, .when = {LAYER_IS("linear_attention")}, .note = LINEAR_NOTE}, \
    {.norm = "input_layernorm", .consumers = {QKV}, .when = {LAYER_IS("full_attention")}, .note = FULL_NOTE},          \
    {.norm = "input_layernorm", .consumers = {linear}, .when = {NO_LAYER_TYPES, INTERVAL(WHEN_NOT_EVERY)},            \
     .note = LINEAR_NOTE " (no layer_types: by full_attention_interval)"},                                            \
    {.norm = "input_layernorm", .consumers = {QKV}, .when = {NO_LAYER_TYPES, INTERVAL(WHEN_EVERY)},                    \
     .note = FULL_NOTE " (no layer_types: by full_attention_interval)"}
#define QWEN_SHARED_EXPERT L("mlp.shared_expert.gate_proj"), L("mlp.shared_expert.up_proj"), L("mlp.shared_expert_gate")
#define QWEN_SHARED_MOE_FOLDS                                                                                    \
    {.norm = "post_attention_layernorm",                                                                         \
     .consumers = {L("mlp.gate"), FUSED("mlp.experts.gate_up_proj", IN_EITHER), QWEN_SHARED_EXPERT},            \
     .when = HAS_FUSED, .note = FUSED_NOTE},                                                                     \
    {.norm = "post_attention_layernorm",                                                                         \
     .consumers = {L("mlp.gate"), L("mlp.experts.{e}.gate_proj"), L("mlp.experts.{e}.up_proj"), QWEN_SHARED_EXPERT}, \
     .when = {WHEN(WHEN_MOE)}}
static const char GATED_NORM_WHY[] =
    "gated RMSNorm of linear attention (gain w over head_v_dim, one gain for every value head, then times "
    "silu(z)): out_proj reads it, but folding would need the gain tiled over the heads, which a fold does not do";
#define HYBRID_KEEPS \
    {KEEP("self_attn.q_norm", QK_NORM_WHY), KEEP("self_attn.k_norm", QK_NORM_WHY), KEEP("linear_attn.norm", GATED_NORM_WHY)}
/* -- zoo issue 13 (VLM wrappers), docs/architectures.md §vlm-mllama */
#define MLLAMA_CROSS(k) {.kind = k, .key = "cross_attention_layers", .value = "3,8,13,18,23,28,33,38"}
static const char CROSS_QK_WHY[] =
    "cross-attention q/k norm: per head on the projection's output, before the attention scores";
static const char QWEN_1PW_WARNING[] =
    "Qwen3.5/Qwen3-Next decoder norms are 1+w: transformers initialises a missing one to 0 (the identity), "
    "a loader that fills missing norms with 1 would double the gain. Use --keep-norms to write the identity "
    "(0) explicitly";

/* DeepSeek's MLA and MoE, shared by deepseek_v3 and the issue-13 rows
 * (docs/architectures.md §deepseek_v3, §glm-deepseek).  Without
 * q_lora_rank the input norm feeds q_proj directly and there is no
 * q_a_layernorm; e_score_correction_bias is never scaled. */
#define Q_LORA WHEN_KEY(WHEN_FLAG, "q_lora_rank")
#define MLA_FOLDS                                                                                            \
    {.norm = "input_layernorm", .consumers = {L("self_attn.q_a_proj"), L("self_attn.kv_a_proj_with_mqa")},      \
     .when = {Q_LORA}},                                                                                        \
    {.norm = "input_layernorm", .consumers = {L("self_attn.q_proj"), L("self_attn.kv_a_proj_with_mqa")},        \
     .note = "q_lora_rank is null: q_proj reads the input norm, no q_a_layernorm"},                           \
    {.norm = "self_attn.q_a_layernorm", .consumers = {L("self_attn.q_b_proj")}, .when = {Q_LORA}},           \
    FOLD("self_attn.kv_a_layernorm", L("self_attn.kv_b_proj"))
#define SHARED_EXPERTS L("mlp.shared_experts.gate_proj"), L("mlp.shared_experts.up_proj")
#define DS_MOE_FOLDS                                                                                          \
    {.norm = "post_attention_layernorm",                                                                      \
     .consumers = {L("mlp.gate"), FUSED("mlp.experts.gate_up_proj", IN_LAST), SHARED_EXPERTS},                \
     .when = HAS_FUSED, .note = FUSED_NOTE},                                                                  \
    {.norm = "post_attention_layernorm",                                                                      \
     .consumers = {L("mlp.gate"), L("mlp.experts.{e}.gate_proj"), L("mlp.experts.{e}.up_proj"), SHARED_EXPERTS}, \
     .when = {WHEN(WHEN_MOE)}},                                                                               \
    {.norm = "post_attention_layernorm", .consumers = {GATE_UP}, .when = {WHEN(WHEN_DENSE)}, .note = "dense layer"}
#define DS_EXPERTS_KEYS {"n_routed_experts", "num_local_experts"}
/* -- zoo 13 (hybrid group): OLMo 3, OLMoE, Granite MoE / Granite 4, Nemotron-H,
 * Falcon-H1 (docs/architectures.md §zoo13-hybrid) */
static const char OLMO_QK_WHY[] = "q/k norm over the whole projection (all heads), before RoPE";
#define OLMO_KEEPS                                                                                      \
    {KEEP("post_attention_layernorm", POST_NORM_WHY), KEEP("post_feedforward_layernorm", POST_NORM_WHY), \
     KEEP("self_attn.q_norm", OLMO_QK_WHY), KEEP("self_attn.k_norm", OLMO_QK_WHY)}
/* GraniteMoeMoE: the router's nn.Linear and the experts' 3-D input_linear
 * [E, 2I, H] (a Parameter named weight, F.linear per expert); the shared MLP's
 * fused input_linear [2I, H].  output_linear reads neither norm. */
#define GRANITE_ROUTED L("block_sparse_moe.router.layer"), FUSED("block_sparse_moe.input_linear.weight", IN_LAST)
#define GRANITE_SHARED L("shared_mlp.input_linear")
#define GRANITE_TYPES "layer_types|layers_block_type"
#define G4_MAMBA {.kind = WHEN_BLOCK, .key = GRANITE_TYPES, .value = "mamba|linear_attention"}
#define G4_ATTN {.kind = WHEN_BLOCK, .key = GRANITE_TYPES, .value = "attention|full_attention"}
#define G4_NO_TYPES WHEN_KEY(WHEN_NOT_FLAG, "layer_types"), WHEN_KEY(WHEN_NOT_FLAG, "layers_block_type")
#define G4_ALL_MAMBA "no layer_types: every layer is Mamba-2 (GraniteMoeHybridConfig.layers_block_type)"
#define GATED_NOTE "gated RMSNorm of the Mamba-2 mixer: a per-channel gain right before out_proj"
/* The Mamba-2 gated norms: w over the mixer's intermediate size (Nemotron-H
 * and Falcon-H1 normalise per group, the gain is still one per channel). */
static const arch_norm_class GRANITE_GATED = {"GraniteMoeHybridRMSNormGated", GAIN_W};
static const arch_norm_class NEMH_GATED = {"Zamba2RMSNormGated", GAIN_W};
static const arch_norm_class FALCON_GATED = {"FalconH1RMSNormGated", GAIN_W};
/* Nemotron-H: one norm per block, feeding the block's one mixer; the block
 * type from layers_block_type (transformers 5; legacy names mamba /
 * attention too), layer_types, or the Hub's hybrid_override_pattern. */
#define NEMH_BLOCKS "layers_block_type|layer_types|hybrid_override_pattern"
#define NEMH_IS(t) {.kind = WHEN_BLOCK, .key = NEMH_BLOCKS, .value = t}
#define NEMH_MAMBA "linear_attention|mamba|M"
#define NEMH_MOE "moe|E"
#define NEMH_SHARED L("mixer.shared_experts.up_proj")
static const arch_layout NEMOTRON_H_LAYOUTS[] = {
    {"backbone.", "embeddings", "norm_f", "lm_head"},
    {"model.", "embeddings", "norm_f", "lm_head"},    /* transformers 5: backbone. renamed model. */
    {"backbone.", "embedding", "norm_f", "lm_head"},  /* the name transformers renames to embeddings */
    {NULL, NULL, NULL, NULL},
};
static const arch_layout FALCON_H1_LAYOUTS[] = {
    {"model.", "embed_tokens", "final_layernorm", "lm_head"},
    {NULL, NULL, NULL, NULL},
};
/* -- zoo 13 (tail): LFM2, Gemma 3n, Cohere 2 and the llama-like rows,
 * docs/architectures.md §zoo13-tail. */
static const char LFM2_QK_WHY[] =
    "q/k norm (q_layernorm, k_layernorm): per head before RoPE and the attention scores, not before a linear layer";
static const char HUNYUAN_QK_WHY[] =
    "q/k norm (query_layernorm, key_layernorm): per head after RoPE, before the attention scores";
static const char GEMMA3N_INPUT_WHY[] =
    "refused: its output also joins the residual stream through LAuReL (x + post_laurel_norm(linear_right("
    "linear_left(x))), x the normed input), where no linear layer can absorb the gain; its consumers "
    "self_attn.q/k/v_proj and laurel.linear_left stay unfolded";
static const char GEMMA3N_LAUREL_WHY[] =
    "LAuReL's output norm: normalises linear_right's output before it joins the residual, not a linear layer's input";
/* Lfm2RMSNorm and Gemma3nRMSNorm apply w (ones init). */
static const arch_norm_class LFM2_RMS = {"Lfm2RMSNorm", GAIN_W};
static const arch_norm_class GEMMA3N_RMS = {"Gemma3nRMSNorm", GAIN_W};
static const arch_norm_class COHERE2_LN = {"Cohere2LayerNorm", GAIN_W};
/* LFM2 names its final norm embedding_norm (applied after the last layer). */
static const arch_layout LFM2_LAYOUTS[] = {{"model.", "embed_tokens", "embedding_norm", "lm_head"},
                                           {NULL, NULL, NULL, NULL}};
/* InternLM2 remote code: model.tok_embeddings, model.norm, output. */
static const arch_layout INTERNLM2_LAYOUTS[] = {{"model.", "tok_embeddings", "norm", "output"},
                                                {NULL, NULL, NULL, NULL}};
#define LFM2_QKV L("self_attn.q_proj"), L("self_attn.k_proj"), L("self_attn.v_proj")
#define LFM2_CONV L("conv.in_proj")
#define FULL_ATTN_IDXS "full_attn_idxs"
/* Lfm2Config: layer_types[i] ("full_attention" / "conv"), else i in
 * full_attn_idxs, else (no list) every layer is attention. */
#define LFM2_OPERATOR                                                                                          \
    {.norm = "operator_norm", .consumers = {LFM2_QKV}, .when = {LAYER_IS("full_attention")}},                 \
    {.norm = "operator_norm", .consumers = {LFM2_CONV}, .when = {LAYER_IS("conv")},                           \
     .note = "gated short convolution"},                                                                       \
    {.norm = "operator_norm", .consumers = {LFM2_QKV}, .when = {NO_LAYER_TYPES, WHEN_KEY(WHEN_LISTED, FULL_ATTN_IDXS)}, \
     .note = "attention layer (no layer_types: by full_attn_idxs)"},                                           \
    {.norm = "operator_norm", .consumers = {LFM2_CONV},                                                        \
     .when = {NO_LAYER_TYPES, WHEN_KEY(WHEN_NOT_LISTED, FULL_ATTN_IDXS)},                                      \
     .note = "gated short convolution (no layer_types: by full_attn_idxs)"},                                  \
    {.norm = "operator_norm", .consumers = {LFM2_QKV}, .when = {NO_LAYER_TYPES},                              \
     .note = "attention layer (neither layer_types nor full_attn_idxs: all attention)"}
#define LFM2_FFN L("feed_forward.w1"), L("feed_forward.w3")
#define LFM2_KEEPS {KEEP("self_attn.q_layernorm", LFM2_QK_WHY), KEEP("self_attn.k_layernorm", LFM2_QK_WHY)}
/* ERNIE 4.5 MoE: shared experts exist when moe_num_shared_experts (class
 * default 2) is not 0. */
#define ERNIE_SHARED {.kind = WHEN_FLAG, .key = "moe_num_shared_experts", .value = "2"}
#define ERNIE_NO_SHARED {.kind = WHEN_NOT_FLAG, .key = "moe_num_shared_experts", .value = "2"}
#define HUNYUAN_SHARED L("mlp.shared_mlp.gate_proj"), L("mlp.shared_mlp.up_proj")

static const arch_info ARCHS[] = {
    {.model_type = "llama", .norm = &ARCH_RMS_W, .folds = LLAMA_FOLDS},
    {.model_type = "mistral", .norm = &ARCH_RMS_W, .folds = LLAMA_FOLDS},
    /* §llama: Qwen2's q/k/v biases are added after W·x, so folding g into
     * W is exact and the biases stay as they are. */
    {.model_type = "qwen2", .norm = &ARCH_RMS_W, .folds = LLAMA_FOLDS},
    {.model_type = "granite", .norm = &ARCH_RMS_W, .folds = LLAMA_FOLDS},
    {.model_type = "smollm3", .norm = &ARCH_RMS_W, .folds = LLAMA_FOLDS, .tie_default = 1},
    {.model_type = "qwen3", .norm = &ARCH_RMS_W, .folds = LLAMA_FOLDS,
     .keeps = {KEEP("self_attn.q_norm", QK_NORM_WHY), KEEP("self_attn.k_norm", QK_NORM_WHY)}},
    /* §phi3: the fused projections are single [out, H] matrices: every
     * column i is scaled by g[i], no splitting needed. */
    {.model_type = "phi3", .norm = &ARCH_RMS_W,
     .folds = {FOLD("input_layernorm", L("self_attn.qkv_proj")),
               FOLD("post_attention_layernorm", L("mlp.gate_up_proj"))}},
    {.model_type = "gemma", .norm = &ARCH_RMS_1PW, .folds = LLAMA_FOLDS, .tie_default = 1,
     .warning = GEMMA_WARNING, .untie_warning = GEMMA_UNTIE_WARNING},
    /* §gemma: in Gemma2/3 post_attention_layernorm and
     * post_feedforward_layernorm sit on the sublayer output, before the
     * residual add. */
    {.model_type = "gemma2", .norm = &ARCH_RMS_1PW,
     .folds = {FOLD("input_layernorm", QKV), FOLD("pre_feedforward_layernorm", GATE_UP)},
     .keeps = {KEEP("post_attention_layernorm", POST_NORM_WHY), KEEP("post_feedforward_layernorm", POST_NORM_WHY)},
     .tie_default = 1, .warning = GEMMA_WARNING, .untie_warning = GEMMA_UNTIE_WARNING},
    {.model_type = "gemma3_text", .norm = &ARCH_RMS_1PW,
     .folds = {FOLD("input_layernorm", QKV), FOLD("pre_feedforward_layernorm", GATE_UP)},
     .keeps = {KEEP("post_attention_layernorm", POST_NORM_WHY), KEEP("post_feedforward_layernorm", POST_NORM_WHY),
               KEEP("self_attn.q_norm", QK_NORM_WHY), KEEP("self_attn.k_norm", QK_NORM_WHY)},
     .tie_default = 1, .warning = GEMMA_WARNING, .untie_warning = GEMMA_UNTIE_WARNING},
    /* §olmo2: no pre-norms; attention and MLP read the raw residual. */
    {.model_type = "olmo2", .norm = &ARCH_RMS_W,
     .keeps = {KEEP("post_attention_layernorm", POST_NORM_WHY), KEEP("post_feedforward_layernorm", POST_NORM_WHY),
               KEEP("self_attn.q_norm", "q/k norm over the whole projection, before RoPE"),
               KEEP("self_attn.k_norm", "q/k norm over the whole projection, before RoPE")}},
    /* §mixtral: the post-attention norm feeds the router and every expert's
     * w1 (gate) and w3 (up); w2 is the down projection.  transformers 5
     * renames block_sparse_moe to mlp and fuses w1/w3 into gate_up_proj. */
    {.model_type = "mixtral", .norm = &ARCH_RMS_W,
     .folds = {FOLD("input_layernorm", QKV),
               {.norm = "post_attention_layernorm",
                .consumers = {L("mlp.gate"), FUSED("mlp.experts.gate_up_proj", IN_LAST)},
                .when = HAS_FUSED, .note = FUSED_NOTE},
               FOLD("post_attention_layernorm", L("block_sparse_moe.gate"), L("block_sparse_moe.experts.{e}.w1"),
                    L("block_sparse_moe.experts.{e}.w3"))},
     .moe = {.experts = {"num_local_experts"}}},
    /* §qwen2_moe, §v5: fused experts are [E, 2I, H] as transformers 5 saves
     * them; the grouped-GEMM layout [E, H, 2I] (Qwen3-VL-MoE's, and some
     * trainers') is told apart by shape. */
    {.model_type = "qwen2_moe", .norm = &ARCH_RMS_W,
     .folds = {FOLD("input_layernorm", QKV),
               {.norm = "post_attention_layernorm",
                .consumers = {L("mlp.gate"), FUSED("mlp.experts.gate_up_proj", IN_EITHER),
                              L("mlp.shared_expert.gate_proj"), L("mlp.shared_expert.up_proj"),
                              L("mlp.shared_expert_gate")},
                .when = HAS_FUSED, .note = FUSED_NOTE},
               {.norm = "post_attention_layernorm",
                .consumers = {L("mlp.gate"), L("mlp.experts.{e}.gate_proj"), L("mlp.experts.{e}.up_proj"),
                              L("mlp.shared_expert.gate_proj"), L("mlp.shared_expert.up_proj"),
                              L("mlp.shared_expert_gate")},
                .when = {WHEN(WHEN_MOE)}},
               {.norm = "post_attention_layernorm", .consumers = {GATE_UP}, .when = {WHEN(WHEN_DENSE)},
                .note = "dense layer"}},
     .moe = QWEN_MOE},
    {.model_type = "qwen3_moe", .norm = &ARCH_RMS_W,
     .folds = {FOLD("input_layernorm", QKV),
               {.norm = "post_attention_layernorm",
                .consumers = {L("mlp.gate"), FUSED("mlp.experts.gate_up_proj", IN_EITHER)},
                .when = HAS_FUSED, .note = FUSED_NOTE},
               {.norm = "post_attention_layernorm",
                .consumers = {L("mlp.gate"), L("mlp.experts.{e}.gate_proj"), L("mlp.experts.{e}.up_proj")},
                .when = {WHEN(WHEN_MOE)}},
               {.norm = "post_attention_layernorm", .consumers = {GATE_UP}, .when = {WHEN(WHEN_DENSE)},
                .note = "dense layer"}},
     .keeps = {KEEP("self_attn.q_norm", QK_NORM_WHY), KEEP("self_attn.k_norm", QK_NORM_WHY)},
     .moe = QWEN_MOE},
    /* §deepseek_v3: MLA has two extra foldable norms inside attention.
     * Without q_lora_rank the input norm feeds q_proj directly and there
     * is no q_a_layernorm.  e_score_correction_bias is never scaled. */
    {.model_type = "deepseek_v3", .norm = &ARCH_RMS_W, .folds = {MLA_FOLDS, DS_MOE_FOLDS},
     .moe = {.experts = DS_EXPERTS_KEYS, .first_dense = "first_k_dense_replace", .step = "moe_layer_freq"}},
    /* §cohere: a parallel block, one input_layernorm feeds attention and
     * MLP.  LayerNorm without bias: the gain folds exactly like RMSNorm's. */
    {.model_type = "cohere", .norm = &ARCH_LN_NOBIAS, .folds = {FOLD("input_layernorm", QKV, GATE_UP)},
     .keeps = {KEEP("self_attn.q_norm", QK_NORM_WHY), KEEP("self_attn.k_norm", QK_NORM_WHY)}, .tie_default = 1},

    /* ---- zoo: Gemma 4 (docs/architectures.md §gemma4) ---- */
    /* Gemma4RMSNorm is w with ones init (not Gemma 1-3's 1 + w).  The
     * input norm's consumers depend on the layer: KV-shared tail layers
     * have only q_proj (WHEN_NOT_HAS: a tail layer that still stores
     * k_proj folds into it too, see the docs), full-attention layers with
     * attention_k_eq_v have no v_proj.  The dense MLP runs in every layer;
     * with enable_moe_block the experts run beside it from their own
     * pre-norm, and the router reads the raw residual (nothing to fold). */
    {.model_type = "gemma4_text", .norm = &GEMMA4_RMS,
     .folds = {{.norm = "input_layernorm", .consumers = {L("self_attn.q_proj")},
                .when = {WHEN_KEY(WHEN_TAIL, "num_kv_shared_layers"), WHEN_KEY(WHEN_NOT_HAS, "self_attn.k_proj.weight")},
                .note = "KV-shared layer: keys and values come from an earlier layer"},
               {.norm = "input_layernorm", .consumers = {L("self_attn.q_proj"), L("self_attn.k_proj")},
                .when = {WHEN_KEY(WHEN_FLAG, "attention_k_eq_v"),
                         {.kind = WHEN_LAYER_TYPE, .key = "layer_types", .value = "full_attention"}},
                .note = "attention_k_eq_v: the values are the key projection"},
               FOLD("input_layernorm", QKV),
               FOLD("pre_feedforward_layernorm", GATE_UP),
               {.norm = "pre_feedforward_layernorm_2", .consumers = {FUSED("experts.gate_up_proj", IN_LAST)},
                .when = {WHEN(WHEN_MOE)}, .note = "the experts' own pre-norm"}},
     .keeps = {KEEP("post_attention_layernorm", POST_NORM_WHY), KEEP("post_feedforward_layernorm", POST_NORM_WHY),
               KEEP("post_feedforward_layernorm_1", GEMMA4_MOE_POST_WHY),
               KEEP("post_feedforward_layernorm_2", GEMMA4_MOE_POST_WHY),
               KEEP("post_per_layer_input_norm", POST_NORM_WHY), KEEP("self_attn.q_norm", QK_NORM_WHY),
               KEEP("self_attn.k_norm", QK_NORM_WHY)},
     .moe = {.experts = {"num_experts"}, .flag = "enable_moe_block"},
     .tie_default = 1},
    /* -- zoo (a): Qwen3.5 / Qwen3.6 / Qwen3-Next, docs/architectures.md §qwen3_5 */
    {.model_type = "qwen3_5_text", .norm = &QWEN3_5_RMS, .folds = {HYBRID_INPUT(QWEN3_5_LINEAR), FOLD("post_attention_layernorm", GATE_UP)},
     .keeps = HYBRID_KEEPS, .warning = QWEN_1PW_WARNING},
    {.model_type = "qwen3_5_moe_text", .norm = &QWEN3_5_RMS,
     .folds = {HYBRID_INPUT(QWEN3_5_LINEAR), QWEN_SHARED_MOE_FOLDS},
     .keeps = HYBRID_KEEPS, .moe = {.experts = {"num_experts", "num_local_experts"}}, .warning = QWEN_1PW_WARNING},
    {.model_type = "qwen3_next", .norm = &QWEN3_NEXT_RMS,
     .folds = {HYBRID_INPUT(QWEN3_NEXT_LINEAR), QWEN_SHARED_MOE_FOLDS,
               {.norm = "post_attention_layernorm", .consumers = {GATE_UP}, .when = {WHEN(WHEN_DENSE)},
                .note = "dense layer"}},
     .keeps = HYBRID_KEEPS, .moe = QWEN_MOE, .warning = QWEN_1PW_WARNING},
    /* ---- zoo group (c): gpt-oss and Llama 4 ------------------------------
     * §gpt_oss: GptOssRMSNorm applies w (in fp32).  Every layer is sparse;
     * the router's bias and the sinks are added after W·x / in the softmax,
     * so they stay.  The experts are [E, H, 2I], used as x @ W (fold axis 1);
     * the released checkpoints store them as MXFP4 _blocks/_scales, which
     * the planner names and --partial keeps. */
    {.model_type = "gpt_oss", .norm = &ARCH_RMS_W,
     .folds = {FOLD("input_layernorm", QKV),
               FOLD("post_attention_layernorm", L("mlp.router"), FUSED("mlp.experts.gate_up_proj", IN_MIDDLE))},
     .moe = {.experts = {"num_local_experts"}}},
    /* §llama4: Llama4TextRMSNorm applies w; qk_norm is a weightless L2
     * norm.  Sparse layers (moe_layers, else every interleave_moe_layer_step-th)
     * feed the router, the [E, H, 2I] experts (fold axis 1) and the shared
     * expert; llm-compressor's unpacked experts are per-expert Linears. */
    {.model_type = "llama4_text", .norm = &ARCH_RMS_W,
     .folds = {FOLD("input_layernorm", QKV),
               {.norm = "post_attention_layernorm",
                .consumers = {L("feed_forward.router"), FUSED("feed_forward.experts.gate_up_proj", IN_MIDDLE),
                              L("feed_forward.shared_expert.gate_proj"), L("feed_forward.shared_expert.up_proj")},
                .when = {WHEN(WHEN_MOE), WHEN_KEY(WHEN_HAS, "feed_forward.experts.gate_up_proj")},
                .note = "fused experts [E, H, 2I]"},
               {.norm = "post_attention_layernorm",
                .consumers = {L("feed_forward.router"), L("feed_forward.experts.{e}.gate_proj"),
                              L("feed_forward.experts.{e}.up_proj"), L("feed_forward.shared_expert.gate_proj"),
                              L("feed_forward.shared_expert.up_proj")},
                .when = {WHEN(WHEN_MOE)}, .note = "per-expert experts (llm-compressor's unpacked layout)"},
               {.norm = "post_attention_layernorm",
                .consumers = {L("feed_forward.gate_proj"), L("feed_forward.up_proj")},
                .when = {WHEN(WHEN_DENSE)}, .note = "dense layer"}},
     .moe = {.experts = {"num_local_experts"}, .sparse_list = "moe_layers", .step = "interleave_moe_layer_step",
             .step_offset = 1}},
    /* ---- zoo (d): the vision-language rows, docs/architectures.md §vl ----
     * §ministral3: Ministral3DecoderLayer is the llama layout (its query
     * scale and YaRN touch no norm); Ministral3Config ties nothing. */
    {.model_type = "ministral3", .norm = &ARCH_RMS_W, .folds = LLAMA_FOLDS},

    /* ---- zoo (issue 13): GLM and DeepSeek, docs/architectures.md §glm-deepseek ----
     * §glm4: Glm4DecoderLayer's sandwich norms have their own names; the
     * pre-MLP norm is post_attention_layernorm, into the fused
     * gate_up_proj (gate rows first, as Phi3MLP); q/k/v biases stay. */
    {.model_type = "glm4", .norm = &ARCH_RMS_W,
     .folds = {FOLD("input_layernorm", QKV), FOLD("post_attention_layernorm", L("mlp.gate_up_proj"))},
     .keeps = {KEEP("post_self_attn_layernorm", POST_NORM_WHY), KEEP("post_mlp_layernorm", POST_NORM_WHY)}},
    /* §glm4_moe: DeepseekV3DecoderLayer with Cohere-style attention
     * (q/k/v biases, per-head q/k norms when use_qk_norm); sparse from
     * first_k_dense_replace on (Glm4MoeConfig default 1). */
    {.model_type = "glm4_moe", .norm = &ARCH_RMS_W, .folds = {FOLD("input_layernorm", QKV), DS_MOE_FOLDS},
     .keeps = {KEEP("self_attn.q_norm", QK_NORM_WHY), KEEP("self_attn.k_norm", QK_NORM_WHY)},
     .moe = {.experts = DS_EXPERTS_KEYS, .first_dense = "first_k_dense_replace", .first_dense_default = 1}},
    /* §glm4_moe_lite (GLM-4.7-Flash): DeepSeek MLA; mlp_layer_types
     * decides which layers are sparse (default: all but the first). */
    {.model_type = "glm4_moe_lite", .norm = &ARCH_RMS_W, .folds = {MLA_FOLDS, DS_MOE_FOLDS},
     .moe = {.experts = DS_EXPERTS_KEYS, .type_list = "mlp_layer_types", .first_dense = "first_k_dense_replace",
             .first_dense_default = 1}},
    /* §deepseek_v2: MLA as V3; a softmax router without correction bias;
     * n_shared_experts null means no shared experts. */
#define NO_SHARED WHEN_KEY(WHEN_NOT_FLAG, "n_shared_experts")
    {.model_type = "deepseek_v2", .norm = &ARCH_RMS_W,
     .folds = {MLA_FOLDS,
               {.norm = "post_attention_layernorm",
                .consumers = {L("mlp.gate"), FUSED("mlp.experts.gate_up_proj", IN_LAST)},
                .when = {WHEN(WHEN_MOE), WHEN_KEY(WHEN_HAS, "mlp.experts.gate_up_proj"), NO_SHARED},
                .note = FUSED_NOTE ", no shared experts (n_shared_experts null)"},
               {.norm = "post_attention_layernorm",
                .consumers = {L("mlp.gate"), L("mlp.experts.{e}.gate_proj"), L("mlp.experts.{e}.up_proj")},
                .when = {WHEN(WHEN_MOE), NO_SHARED}, .note = "no shared experts (n_shared_experts null)"},
               DS_MOE_FOLDS},
     .moe = {.experts = DS_EXPERTS_KEYS, .first_dense = "first_k_dense_replace", .step = "moe_layer_freq"}},
#undef NO_SHARED
    /* §deepseek_v32, §glm_moe_dsa: MLA (always with q_lora) plus the DSA
     * lightning indexer, a second reader of input_layernorm (wk,
     * weights_proj) and of q_a_layernorm (wq_b).  GLM-5's "shared"
     * indexer layers have no indexer. */
#define DSA_INPUT L("self_attn.q_a_proj"), L("self_attn.kv_a_proj_with_mqa"), L("self_attn.indexer.wk"), \
                  L("self_attn.indexer.weights_proj")
#define DSA_FOLDS FOLD("input_layernorm", DSA_INPUT), \
                  FOLD("self_attn.q_a_layernorm", L("self_attn.q_b_proj"), L("self_attn.indexer.wq_b")), \
                  FOLD("self_attn.kv_a_layernorm", L("self_attn.kv_b_proj"))
#define DSA_KEEPS {KEEP("self_attn.indexer.k_norm", \
                        "the indexer's key norm (a LayerNorm with bias) normalises indexer.wk's output before " \
                        "RoPE and the index scores, not a linear layer's input")}
#define DSA_MOE(dense)                                                                                   \
    {.experts = {"n_routed_experts", "num_local_experts", "num_experts"}, .type_list = "mlp_layer_types", \
     .first_dense = "first_k_dense_replace", .first_dense_default = dense}
#define IDX_SHARED {.kind = WHEN_LAYER_TYPE, .key = "indexer_types", .value = "shared"}
    {.model_type = "deepseek_v32", .norm = &ARCH_RMS_W, .folds = {DSA_FOLDS, DS_MOE_FOLDS}, .keeps = DSA_KEEPS,
     .moe = DSA_MOE(3)},
    {.model_type = "glm_moe_dsa", .norm = &ARCH_RMS_W,
     .folds = {{.norm = "input_layernorm", .consumers = {L("self_attn.q_a_proj"), L("self_attn.kv_a_proj_with_mqa")},
                .when = {IDX_SHARED}, .note = "shared indexer layer: no indexer of its own"},
               {.norm = "self_attn.q_a_layernorm", .consumers = {L("self_attn.q_b_proj")}, .when = {IDX_SHARED},
                .note = "shared indexer layer"},
               DSA_FOLDS, DS_MOE_FOLDS},
     .keeps = DSA_KEEPS, .moe = DSA_MOE(3)},
#undef DSA_INPUT
#undef DSA_FOLDS
#undef DSA_KEEPS
#undef DSA_MOE
#undef IDX_SHARED
    /* -- zoo 13 (hybrid group), docs/architectures.md §zoo13-hybrid.
     * §olmo3: OLMo 2's post-norm layers with sliding-window attention in
     * three of four layers (no norm moves): only the final norm folds. */
    {.model_type = "olmo3", .norm = &ARCH_RMS_W, .keeps = OLMO_KEEPS},
    /* §olmoe: pre-norm Llama layers, every one MoE (router mlp.gate, experts
     * per expert or fused by transformers 5); q/k norms span all heads. */
    {.model_type = "olmoe", .norm = &ARCH_RMS_W,
     .folds = {FOLD("input_layernorm", QKV),
               {.norm = "post_attention_layernorm",
                .consumers = {L("mlp.gate"), FUSED("mlp.experts.gate_up_proj", IN_EITHER)},
                .when = HAS_FUSED, .note = FUSED_NOTE},
               FOLD("post_attention_layernorm", L("mlp.gate"), L("mlp.experts.{e}.gate_proj"),
                    L("mlp.experts.{e}.up_proj"))},
     .keeps = {KEEP("self_attn.q_norm", OLMO_QK_WHY), KEEP("self_attn.k_norm", OLMO_QK_WHY)},
     .moe = {.experts = {"num_experts", "num_local_experts"}}},
    /* §granitemoe: every layer MoE; the multipliers touch no norm edge. */
    {.model_type = "granitemoe", .norm = &ARCH_RMS_W,
     .folds = {FOLD("input_layernorm", QKV), FOLD("post_attention_layernorm", GRANITE_ROUTED)},
     .moe = {.experts = {"num_local_experts"}}},
    {.model_type = "granitemoeshared", .norm = &ARCH_RMS_W,
     .folds = {FOLD("input_layernorm", QKV),
               {.norm = "post_attention_layernorm", .consumers = {GRANITE_ROUTED, GRANITE_SHARED},
                .when = {WHEN_KEY(WHEN_FLAG, "shared_intermediate_size")}, .note = "with the shared MLP"},
               {.norm = "post_attention_layernorm", .consumers = {GRANITE_ROUTED},
                .note = "shared_intermediate_size 0: no shared MLP"}},
     .moe = {.experts = {"num_local_experts"}}},
    /* §granitemoehybrid (Granite 4.0-H): input_layernorm feeds the layer's
     * mixer, Mamba-2 (mamba.in_proj) or attention (q/k/v); the MLP is the
     * shared MLP, plus the routed experts when num_local_experts > 0. */
    {.model_type = "granitemoehybrid", .norm = &ARCH_RMS_W,
     .folds = {{.norm = "input_layernorm", .consumers = {L("mamba.in_proj")}, .when = {G4_MAMBA},
                .note = "Mamba-2 layer"},
               {.norm = "input_layernorm", .consumers = {QKV}, .when = {G4_ATTN}, .note = "attention layer"},
               {.norm = "input_layernorm", .consumers = {L("mamba.in_proj")}, .when = {G4_NO_TYPES},
                .note = G4_ALL_MAMBA},
               {.norm = "post_attention_layernorm", .consumers = {GRANITE_ROUTED, GRANITE_SHARED},
                .when = {WHEN(WHEN_MOE)}},
               {.norm = "post_attention_layernorm", .consumers = {GRANITE_SHARED}, .when = {WHEN(WHEN_DENSE)},
                .note = "num_local_experts 0: the shared MLP alone"},
               {.norm = "mamba.norm", .consumers = {L("mamba.out_proj")}, .when = {G4_MAMBA}, .cls = &GRANITE_GATED,
                .note = GATED_NOTE},
               {.norm = "mamba.norm", .consumers = {L("mamba.out_proj")}, .when = {G4_NO_TYPES},
                .cls = &GRANITE_GATED, .note = GATED_NOTE}},
     .moe = {.experts = {"num_local_experts"}}},
    /* §nemotron_h: backbone.layers.{i}.norm feeds whichever mixer block i
     * has; MoE blocks: the sigmoid router mixer.gate (its correction bias is
     * never scaled), the experts' up_proj (no gate: relu2 MLPs) or, with
     * moe_latent_size, fc1_latent_proj, and the shared expert's up_proj. */
    {.model_type = "nemotron_h", .norm = &ARCH_RMS_W,
     .folds = {{.norm = "norm", .consumers = {L("mixer.in_proj")}, .when = {NEMH_IS(NEMH_MAMBA)},
                .note = "Mamba-2 block"},
               {.norm = "norm", .consumers = {L("mixer.q_proj"), L("mixer.k_proj"), L("mixer.v_proj")},
                .when = {NEMH_IS("full_attention|attention|*")}, .note = "attention block"},
               {.norm = "norm", .consumers = {L("mixer.up_proj")}, .when = {NEMH_IS("mlp|-")},
                .note = "MLP block (up_proj, relu2, down_proj)"},
               {.norm = "norm", .consumers = {L("mixer.gate"), L("mixer.fc1_latent_proj"), NEMH_SHARED},
                .when = {NEMH_IS(NEMH_MOE), WHEN_KEY(WHEN_FLAG, "moe_latent_size")},
                .note = "MoE block with moe_latent_size: the experts read fc1_latent_proj's output"},
               {.norm = "norm", .consumers = {L("mixer.gate"), FUSED("mixer.experts.up_proj", IN_LAST), NEMH_SHARED},
                .when = {NEMH_IS(NEMH_MOE), WHEN_KEY(WHEN_HAS, "mixer.experts.up_proj")},
                .note = "MoE block, transformers 5 fused experts [E, I, H]"},
               {.norm = "norm", .consumers = {L("mixer.gate"), L("mixer.experts.{e}.up_proj"), NEMH_SHARED},
                .when = {NEMH_IS(NEMH_MOE)}, .note = "MoE block"},
               {.norm = "mixer.norm", .consumers = {L("mixer.out_proj")}, .when = {NEMH_IS(NEMH_MAMBA)},
                .cls = &NEMH_GATED, .note = GATED_NOTE}},
     .moe = {.experts = {"n_routed_experts", "num_local_experts"}, .optional = 1},
     .layouts = NEMOTRON_H_LAYOUTS, .blocks = NEMH_BLOCKS},
    /* §falcon_h1: the parallel block, input_layernorm feeds Mamba-2 and
     * attention at once; pre_ff_layernorm the MLP; the multipliers are
     * scalars (and mup on in_proj's output rows): no norm edge moves. */
    {.model_type = "falcon_h1", .norm = &ARCH_RMS_W,
     .folds = {FOLD("input_layernorm", L("mamba.in_proj"), QKV),
               FOLD("pre_ff_layernorm", L("feed_forward.gate_proj"), L("feed_forward.up_proj")),
               {.norm = "mamba.norm", .consumers = {L("mamba.out_proj")},
                .when = {WHEN_KEY(WHEN_FLAG, "mamba_rms_norm")}, .cls = &FALCON_GATED, .note = GATED_NOTE}},
     .layouts = FALCON_H1_LAYOUTS},
    /* ---- zoo issue 13: the LLaVA-style VLM wrappers, docs/architectures.md §vlm ----
     * Their decoders are existing rows (the aliases below); Mllama's is its
     * own.  §vlm-mllama: MllamaTextModel's layers in cross_attention_layers
     * (MllamaTextConfig default 3, 8, ..., 38) are cross-attention layers,
     * whose input_layernorm feeds only cross_attn.q_proj (k/v read the
     * vision states); their per-head q/k norms are kept; the tanh gates
     * cross_attn_attn_gate / cross_attn_mlp_gate are plain parameters. */
    {.model_type = "mllama_text_model", .norm = &ARCH_RMS_W,
     .folds = {{.norm = "input_layernorm", .consumers = {L("cross_attn.q_proj")}, .when = {MLLAMA_CROSS(WHEN_LISTED)},
                .note = "cross-attention layer: keys and values read the vision states"},
               FOLD("input_layernorm", QKV), FOLD("post_attention_layernorm", GATE_UP)},
     .keeps = {KEEP("cross_attn.q_norm", CROSS_QK_WHY), KEEP("cross_attn.k_norm", CROSS_QK_WHY)}},

    /* ---- zoo 13 (tail), docs/architectures.md §zoo13-tail ----------------
     * §lfm2: operator_norm feeds attention or the gated short convolution
     * by layer type; ffn_norm feeds the SwiGLU (w1 gate, w3 up; w2 down);
     * the final norm is model.embedding_norm.  tie_embedding (the original
     * key) decides the tie when present. */
    {.model_type = "lfm2", .norm = &LFM2_RMS, .folds = {LFM2_OPERATOR, FOLD("ffn_norm", LFM2_FFN)},
     .keeps = LFM2_KEEPS, .layouts = LFM2_LAYOUTS, .tie_default = 1, .tie_alias = "tie_embedding"},
    /* §lfm2_moe: the first num_dense_layers (class default 2) are dense;
     * the rest route through feed_forward.gate (sigmoid + expert_bias,
     * which is never scaled) to experts stored per expert (w1/w3/w2) or
     * fused [E, 2I, H]. */
    {.model_type = "lfm2_moe", .norm = &LFM2_RMS,
     .folds = {LFM2_OPERATOR,
               {.norm = "ffn_norm", .consumers = {L("feed_forward.gate"), FUSED("feed_forward.experts.gate_up_proj", IN_LAST)},
                .when = {WHEN(WHEN_MOE), WHEN_KEY(WHEN_HAS, "feed_forward.experts.gate_up_proj")}, .note = FUSED_NOTE},
               {.norm = "ffn_norm",
                .consumers = {L("feed_forward.gate"), L("feed_forward.experts.{e}.w1"), L("feed_forward.experts.{e}.w3")},
                .when = {WHEN(WHEN_MOE)}},
               {.norm = "ffn_norm", .consumers = {LFM2_FFN}, .when = {WHEN(WHEN_DENSE)}, .note = "dense layer"}},
     .keeps = LFM2_KEEPS, .moe = {.experts = {"num_experts"}, .first_dense = "num_dense_layers", .first_dense_default = 2},
     .layouts = LFM2_LAYOUTS, .tie_default = 1, .tie_alias = "tie_embedding"},
    /* §gemma3n: Gemma3nRMSNorm is w.  input_layernorm's output is also
     * LAuReL's residual term: kept, with q/k/v and laurel.linear_left
     * unfolded.  The MLP's pre-norm and the AltUp router's norm fold. */
    {.model_type = "gemma3n_text", .norm = &GEMMA3N_RMS,
     .folds = {FOLD("pre_feedforward_layernorm", GATE_UP), FOLD("altup.router_norm", L("altup.modality_router"))},
     .keeps = {KEEP("input_layernorm", GEMMA3N_INPUT_WHY), KEEP("post_attention_layernorm", POST_NORM_WHY),
               KEEP("post_feedforward_layernorm", POST_NORM_WHY), KEEP("laurel.post_laurel_norm", GEMMA3N_LAUREL_WHY),
               KEEP("post_per_layer_input_norm", POST_NORM_WHY), KEEP("self_attn.q_norm", QK_NORM_WHY),
               KEEP("self_attn.k_norm", QK_NORM_WHY)},
     .tie_default = 1},
    /* §cohere2: Cohere's parallel block without q/k norms. */
    {.model_type = "cohere2", .norm = &COHERE2_LN, .folds = {FOLD("input_layernorm", QKV, GATE_UP)}, .tie_default = 1},
    /* §minicpm: the Llama layout; scale_emb, scale_depth and dim_model_base
     * scale the embeddings, the residual branches and the logits. */
    {.model_type = "minicpm", .norm = &ARCH_RMS_W, .folds = LLAMA_FOLDS, .tie_default = 1},
    /* §ernie4_5: the Llama layout (biases, when use_bias, stay). */
    {.model_type = "ernie4_5", .norm = &ARCH_RMS_W, .folds = LLAMA_FOLDS, .tie_default = 1},
    /* §ernie4_5_moe: sparse layers are moe_layer_start_index (default 1)
     * to moe_layer_end_index (-1: the last), every moe_layer_interval-th;
     * the router mlp.gate (fp32) and the experts; shared experts when
     * moe_num_shared_experts.  moe_statics.e_score_correction_bias is
     * never scaled. */
    {.model_type = "ernie4_5_moe", .norm = &ARCH_RMS_W,
     .folds = {FOLD("input_layernorm", QKV),
               {.norm = "post_attention_layernorm",
                .consumers = {L("mlp.gate"), FUSED("mlp.experts.gate_up_proj", IN_LAST), SHARED_EXPERTS},
                .when = {WHEN(WHEN_MOE), WHEN_KEY(WHEN_HAS, "mlp.experts.gate_up_proj"), ERNIE_SHARED},
                .note = FUSED_NOTE},
               {.norm = "post_attention_layernorm", .consumers = {L("mlp.gate"), FUSED("mlp.experts.gate_up_proj", IN_LAST)},
                .when = HAS_FUSED, .note = FUSED_NOTE " (no shared experts)"},
               {.norm = "post_attention_layernorm",
                .consumers = {L("mlp.gate"), L("mlp.experts.{e}.gate_proj"), L("mlp.experts.{e}.up_proj"),
                              SHARED_EXPERTS},
                .when = {WHEN(WHEN_MOE), ERNIE_SHARED}},
               {.norm = "post_attention_layernorm",
                .consumers = {L("mlp.gate"), L("mlp.experts.{e}.gate_proj"), L("mlp.experts.{e}.up_proj")},
                .when = {WHEN(WHEN_MOE), ERNIE_NO_SHARED}, .note = "no shared experts"},
               {.norm = "post_attention_layernorm", .consumers = {GATE_UP}, .when = {WHEN(WHEN_DENSE)},
                .note = "dense layer"}},
     .moe = {.experts = {"moe_num_experts", "num_experts"}, .first_dense = "moe_layer_start_index",
             .first_dense_default = 1, .last_sparse = "moe_layer_end_index", .step = "moe_layer_interval",
             .step_offset = 1},
     .tie_default = 1},
    /* §hunyuan: the Llama layout; query_layernorm / key_layernorm come
     * after RoPE and stay. */
    {.model_type = "hunyuan_v1_dense", .norm = &ARCH_RMS_W, .folds = LLAMA_FOLDS,
     .keeps = {KEEP("self_attn.query_layernorm", HUNYUAN_QK_WHY), KEEP("self_attn.key_layernorm", HUNYUAN_QK_WHY)}},
    /* §hunyuan: every layer is MoE: router mlp.gate.wg (fp32), the
     * experts, the always-on shared_mlp. */
    {.model_type = "hunyuan_v1_moe", .norm = &ARCH_RMS_W,
     .folds = {FOLD("input_layernorm", QKV),
               {.norm = "post_attention_layernorm",
                .consumers = {L("mlp.gate.wg"), FUSED("mlp.experts.gate_up_proj", IN_LAST), HUNYUAN_SHARED},
                .when = HAS_FUSED, .note = FUSED_NOTE},
               {.norm = "post_attention_layernorm",
                .consumers = {L("mlp.gate.wg"), L("mlp.experts.{e}.gate_proj"), L("mlp.experts.{e}.up_proj"),
                              HUNYUAN_SHARED},
                .when = {WHEN(WHEN_MOE)}}},
     .keeps = {KEEP("self_attn.query_layernorm", HUNYUAN_QK_WHY), KEEP("self_attn.key_layernorm", HUNYUAN_QK_WHY)},
     .moe = {.experts = {"num_experts"}}},
    /* §exaone4: OLMo2's post-norm layer with per-head q/k norms: only the
     * final norm folds. */
    {.model_type = "exaone4", .norm = &ARCH_RMS_W,
     .keeps = {KEEP("post_attention_layernorm", POST_NORM_WHY), KEEP("post_feedforward_layernorm", POST_NORM_WHY),
               KEEP("self_attn.q_norm", QK_NORM_WHY), KEEP("self_attn.k_norm", QK_NORM_WHY)}},
    /* §seed_oss: the Llama layout; q/k/v biases stay. */
    {.model_type = "seed_oss", .norm = &ARCH_RMS_W, .folds = LLAMA_FOLDS},
    /* §apertus: renamed pre-norms, a gateless MLP (up_proj, xIELU,
     * down_proj), q/k norms before RoPE. */
    {.model_type = "apertus", .norm = &ARCH_RMS_W,
     .folds = {FOLD("attention_layernorm", QKV), FOLD("feedforward_layernorm", L("mlp.up_proj"))},
     .keeps = {KEEP("self_attn.q_norm", QK_NORM_WHY), KEEP("self_attn.k_norm", QK_NORM_WHY)}},
    /* §arcee: the Llama layout with a gateless ReLU^2 MLP. */
    {.model_type = "arcee", .norm = &ARCH_RMS_W,
     .folds = {FOLD("input_layernorm", QKV), FOLD("post_attention_layernorm", L("mlp.up_proj"))}},
    /* §internlm2 (remote code): attention_norm -> the fused, per-kv-group
     * attention.wqkv; ffn_norm -> feed_forward.w1 (gate), w3 (up). */
    {.model_type = "internlm2", .norm = &ARCH_RMS_W,
     .folds = {FOLD("attention_norm", L("attention.wqkv")), FOLD("ffn_norm", L("feed_forward.w1"), L("feed_forward.w3"))},
     .layouts = INTERNLM2_LAYOUTS},
    /* §internlm3 (remote code): the Llama layout and names. */
    {.model_type = "internlm3", .norm = &ARCH_RMS_W, .folds = LLAMA_FOLDS},
};

/* §composite: multimodal Gemma 3 is gemma3_text under another prefix, its
 * text config nested in text_config. */
static const arch_alias ALIASES[] = {
    {.model_type = "gemma3", .text_type = "gemma3_text", .nested = 1, .tie_default = -1},
    /* ---- zoo: Gemma 4 ---- Gemma4ForConditionalGeneration: text_config,
     * tensors under model.language_model.; Gemma4Config ties by default. */
    {.model_type = "gemma4", .text_type = "gemma4_text", .nested = 1, .tie_default = 1},
    /* -- zoo (a): Qwen3_5ForConditionalGeneration and its MoE twin, §qwen3_5 */
    {.model_type = "qwen3_5", .text_type = "qwen3_5_text", .nested = 1, .tie_default = -1},
    {.model_type = "qwen3_5_moe", .text_type = "qwen3_5_moe_text", .nested = 1, .tie_default = -1},
    /* zoo group (c), §llama4: Llama4ForConditionalGeneration, text model
     * in text_config, tensors under language_model.model. */
    {.model_type = "llama4", .text_type = "llama4_text", .nested = 1, .tie_default = -1},
    /* ---- zoo (d): §vl.  The Qwen VL decoders are qwen2 / qwen3 /
     * qwen3_moe under a VLM prefix; the vision towers pass through.  The
     * wrapper reads text_config (or flat keys: Qwen2/2.5-VL Hub configs);
     * the text types are names text_config uses, accepted at the top too.
     * tie_default 0 everywhere: the ForConditionalGeneration config class
     * decides (False for the Qwen wrappers) and a stored lm_head is never
     * tied over (Mistral3Config's True included: §vl-tie). */
    {.model_type = "qwen2_vl", .text_type = "qwen2", .nested = 1, .tie_default = 0},
    {.model_type = "qwen2_vl_text", .text_type = "qwen2", .tie_default = 0},
    {.model_type = "qwen2_5_vl", .text_type = "qwen2", .nested = 1, .tie_default = 0},
    {.model_type = "qwen2_5_vl_text", .text_type = "qwen2", .tie_default = 0},
    {.model_type = "qwen3_vl", .text_type = "qwen3", .nested = 1, .tie_default = 0},
    {.model_type = "qwen3_vl_text", .text_type = "qwen3", .tie_default = 0},
    {.model_type = "qwen3_vl_moe", .text_type = "qwen3_moe", .nested = 1, .tie_default = 0},
    {.model_type = "qwen3_vl_moe_text", .text_type = "qwen3_moe", .tie_default = 0},
    /* Mistral3ForConditionalGeneration: text_config.model_type says mistral
     * (Mistral Small 3.x) or ministral3 (Ministral 3). */
    {.model_type = "mistral3", .text_type = "mistral", .nested = 1, .tie_default = 0},
    /* ---- zoo (issue 13), §kimi: Kimi K2 is DeepSeek-V3 under its own
     * model_type (remote code modeling_deepseek.py); Kimi K2.5 wraps it,
     * text_config and tensors under language_model.model. */
    {.model_type = "kimi_k2", .text_type = "deepseek_v3", .nested = 0, .tie_default = -1},
    {.model_type = "kimi_k25", .text_type = "deepseek_v3", .nested = 1, .tie_default = -1},
    /* ---- zoo issue 13: §vlm.  The config classes build any text model from
     * text_config (AutoConfig), so text_config.model_type picks the row and
     * an unknown one is refused; text_type is the class default.  Tie
     * defaults are the wrapper classes' (§vlm-tie): LlavaConfig and its two
     * successors take text_config's flag when their own is false. */
    {.model_type = "llava", .text_type = "llama", .nested = 1, .tie_default = -1, .text_rule = ALIAS_TEXT_ANY,
     .tie_or_text = 1},
    {.model_type = "llava_next", .text_type = "llama", .nested = 1, .tie_default = -1,
     .text_rule = ALIAS_TEXT_ANY, .tie_or_text = 1},
    {.model_type = "llava_onevision", .text_type = "qwen2", .nested = 1, .tie_default = -1,
     .text_rule = ALIAS_TEXT_ANY, .tie_or_text = 1},
    {.model_type = "paligemma", .text_type = "gemma", .nested = 1, .tie_default = 1, .text_rule = ALIAS_TEXT_ANY},
    {.model_type = "internvl", .text_type = "qwen2", .nested = 1, .tie_default = 1, .text_rule = ALIAS_TEXT_ANY},
    /* AyaVisionConfig defaults to cohere2 (Aya Vision 8B); Aya Vision
     * 32B's text_config names cohere. */
    {.model_type = "aya_vision", .text_type = "cohere", .nested = 1, .tie_default = 1, .text_rule = ALIAS_TEXT_ANY,
     .class_text = "cohere2"},
    {.model_type = "idefics3", .text_type = "llama", .nested = 1, .tie_default = 0, .text_rule = ALIAS_TEXT_ANY},
    {.model_type = "smolvlm", .text_type = "llama", .nested = 1, .tie_default = 0, .text_rule = ALIAS_TEXT_ANY},
    /* MllamaConfig builds MllamaTextConfig whatever text_config says. */
    {.model_type = "mllama", .text_type = "mllama_text_model", .nested = 1, .tie_default = 0,
     .text_rule = ALIAS_TEXT_FIXED},
    /* zoo 13 (tail), §gemma3n: Gemma3nForConditionalGeneration, text model
     * in text_config (gemma3n_text), tensors under model.language_model. */
    {.model_type = "gemma3n", .text_type = "gemma3n_text", .nested = 1, .tie_default = -1},
};

/* What cannot be folded exactly is refused with the reason (issue 13;
 * docs/architectures.md §refused).  -- zoo 13 (hybrid group) */
static const arch_refusal REFUSED[] = {
    {"nemotron",
     "NemotronLayerNorm1P (input_layernorm -> self_attn.q/k/v_proj, post_attention_layernorm -> mlp.up_proj, "
     "model.norm -> lm_head) is a mean-centred LayerNorm with gain 1 + w and a bias, not an RMSNorm: folding it "
     "would move the bias into the consumers, which flashify does not do"},
    {"bitnet",
     "its norms feed BitLinear layers (input_layernorm -> q/k/v_proj, self_attn.attn_sub_norm -> o_proj, "
     "post_attention_layernorm -> gate/up_proj, mlp.ffn_sub_norm -> down_proj) that ternarize their weights "
     "and quantize their input per token: a per-channel gain survives neither"},
};

#define N_ARCHS (sizeof ARCHS / sizeof ARCHS[0])
#define N_ALIASES (sizeof ALIASES / sizeof ALIASES[0])

const arch_info *arch_find(const char *model_type)
{
    for (size_t i = 0; i < N_ARCHS; i++)
        if (strcmp(ARCHS[i].model_type, model_type) == 0)
            return &ARCHS[i];
    return NULL;
}

const arch_info *arch_row(size_t i) { return i < N_ARCHS ? &ARCHS[i] : NULL; }

#define N_REFUSED (sizeof REFUSED / sizeof REFUSED[0])

const arch_refusal *arch_refused(const char *model_type)
{
    for (size_t i = 0; i < N_REFUSED; i++)
        if (strcmp(REFUSED[i].model_type, model_type) == 0)
            return &REFUSED[i];
    return NULL;
}

const arch_refusal *arch_refusal_at(size_t i) { return i < N_REFUSED ? &REFUSED[i] : NULL; }
const arch_alias *arch_alias_at(size_t i) { return i < N_ALIASES ? &ALIASES[i] : NULL; }

const arch_alias *arch_alias_find(const char *model_type)
{
    for (size_t i = 0; i < N_ALIASES; i++)
        if (strcmp(ALIASES[i].model_type, model_type) == 0)
            return &ALIASES[i];
    return NULL;
}
