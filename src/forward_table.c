/* forward_table.c — how each family computes (forward_internal.h).
 *
 * Written from the transformers modeling classes (docs/architectures.md
 * cites each), deliberately apart from the fold table in arch.c: a wrong
 * fold rule there shows up as a logit difference here.  A quirk is a field;
 * forward*.c never compares model_type strings. */
#include "forward_internal.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

/* ----------------------------------------------------------------------------
 * MoE tensor layouts */

static const fwd_moe_names MIXTRAL_V4 = {.router = "block_sparse_moe.gate", .experts = "block_sparse_moe.experts",
                                         .gate = "w1", .up = "w3", .down = "w2"};
/* transformers 5 renames block_sparse_moe to mlp (conversion_mapping.py). */
static const fwd_moe_names MIXTRAL_V5 = {.router = "mlp.gate", .experts = "mlp.experts", .gate = "gate_proj",
                                         .up = "up_proj", .down = "down_proj"};
static const fwd_moe_names QWEN2_MOE = {.router = "mlp.gate", .experts = "mlp.experts", .gate = "gate_proj",
                                        .up = "up_proj", .down = "down_proj", .shared = "mlp.shared_expert",
                                        .shared_gate = "mlp.shared_expert_gate"};
static const fwd_moe_names QWEN3_MOE = {.router = "mlp.gate", .experts = "mlp.experts", .gate = "gate_proj",
                                        .up = "up_proj", .down = "down_proj"};
/* Qwen3_5MoeSparseMoeBlock / Qwen3NextSparseMoeBlock (= Qwen2MoeSparseMoeBlock):
 * experts plus a shared expert scaled by sigmoid(shared_expert_gate(x)). */
static const fwd_moe_names QWEN_SHARED = {.router = "mlp.gate", .experts = "mlp.experts", .gate = "gate_proj",
                                          .up = "up_proj", .down = "down_proj", .shared = "mlp.shared_expert",
                                          .shared_gate = "mlp.shared_expert_gate"};
static const fwd_moe_names DEEPSEEK = {.router = "mlp.gate", .experts = "mlp.experts", .gate = "gate_proj",
                                       .up = "up_proj", .down = "down_proj", .shared = "mlp.shared_experts"};
/* zoo group (c): GptOssMLP (router, experts: bound by fwd_oss_bind_experts);
 * Llama4TextMoe (fused [E, H, 2I] or llm-compressor's per-expert Linears). */
static const fwd_moe_names GPT_OSS = {.router = "mlp.router", .experts = "mlp.experts"};
static const fwd_moe_names LLAMA4 = {.router = "feed_forward.router", .experts = "feed_forward.experts",
                                     .gate = "gate_proj", .up = "up_proj", .down = "down_proj",
                                     .shared = "feed_forward.shared_expert"};

/* -- zoo 13 (hybrid group), docs/architectures.md §zoo13-hybrid */
/* OlmoeSparseMoeBlock: router mlp.gate, experts per expert or fused. */
static const fwd_moe_names OLMOE = {.router = "mlp.gate", .experts = "mlp.experts", .gate = "gate_proj",
                                    .up = "up_proj", .down = "down_proj"};
/* NemotronHModel: embeddings / norm_f, under backbone. on the Hub and
 * model. as transformers 5 writes it (backbone.embedding: the older name
 * its conversion renames). */
static const fwd_names NEMOTRON_H_NAMES[] = {
    {"backbone.", "embeddings", "norm_f"}, {"model.", "embeddings", "norm_f"}, {"backbone.", "embedding", "norm_f"},
    {NULL, NULL, NULL}};
/* FalconH1Model: final_layernorm. */
static const fwd_names FALCON_H1_NAMES[] = {{"model.", "embed_tokens", "final_layernorm"}, {NULL, NULL, NULL}};
/* zoo 13 (tail), docs/architectures.md §zoo13-tail: renamed tensors and MoE
 * layouts. */
static const fwd_renames LFM2_RENAMES = {.attn_norm = "operator_norm", .mlp_norm = "ffn_norm",
                                         .q_norm = "self_attn.q_layernorm", .k_norm = "self_attn.k_layernorm",
                                         .o = "self_attn.out_proj", .gate = "w1", .up = "w3", .down = "w2"};
/* Lfm2Model: model.embed_tokens, the final norm model.embedding_norm. */
static const fwd_names LFM2_NAMES[] = {{"model.", "embed_tokens", "embedding_norm"}, {NULL, NULL, NULL}};
/* Lfm2MoeSparseMoeBlock: gate, experts (per expert w1/w3/w2 as released,
 * fused by transformers 5), feed_forward.expert_bias. */
static const fwd_moe_names LFM2_MOE = {.router = "feed_forward.gate", .experts = "feed_forward.experts",
                                       .gate = "w1", .up = "w3", .down = "w2"};
static const fwd_moe_names ERNIE_MOE = {.router = "mlp.gate", .experts = "mlp.experts", .gate = "gate_proj",
                                        .up = "up_proj", .down = "down_proj", .shared = "mlp.shared_experts"};
static const fwd_renames HUNYUAN_RENAMES = {.q_norm = "self_attn.query_layernorm",
                                            .k_norm = "self_attn.key_layernorm"};
/* HunYuanMoEV1Moe: gate.wg, experts, the always-on shared_mlp. */
static const fwd_moe_names HUNYUAN_MOE = {.router = "mlp.gate.wg", .experts = "mlp.experts", .gate = "gate_proj",
                                          .up = "up_proj", .down = "down_proj", .shared = "mlp.shared_mlp"};
static const fwd_renames APERTUS_RENAMES = {.attn_norm = "attention_layernorm",
                                            .mlp_norm = "feedforward_layernorm"};
/* InternLM2 (remote code modeling_internlm2.py). */
static const fwd_renames INTERNLM2_RENAMES = {.attn_norm = "attention_norm", .mlp_norm = "ffn_norm",
                                              .qkv = "attention.wqkv", .o = "attention.wo", .gate = "w1",
                                              .up = "w3", .down = "w2", .head = "output"};
static const fwd_names INTERNLM2_NAMES[] = {{"model.", "tok_embeddings", "norm"}, {NULL, NULL, NULL}};

/* ----------------------------------------------------------------------------
 * The families */

/* Pieces of rows (designated initializers may not name a field twice). */
#define RMS(e) .norm = NORM_RMS_CAST, .eps_key = "rms_norm_eps", .eps = e
#define SILU .act_key = "hidden_act", .act_default = "silu"
#define TOPK_KEY .topk_norm_key = "norm_topk_prob"
#define GEMMA                                                                                        \
    .norm = NORM_RMS_1PW, .eps_key = "rms_norm_eps", .eps = 1e-6, .embed = EMBED_SQRT_H,            \
    .act_key = "hidden_activation", .act_default = "gelu_pytorch_tanh", .tie_default = 1
#define GEMMA_SANDWICH                                                                               \
    GEMMA, .layout = LAYOUT_SANDWICH, .scale = SCALE_KEY_ISQRT, .scale_key = "query_pre_attn_scalar",  \
    .scale_default = 256, .attn_cap_key = "attn_logit_softcapping",                                 \
    .final_cap_key = "final_logit_softcapping"

#define GRANITE_SCALARS                                                                                \
    RMS(1e-6), SILU, .embed = EMBED_KEY, .embed_key = "embedding_multiplier",                             \
    .residual_key = "residual_multiplier", .scale = SCALE_KEY, .scale_key = "attention_multiplier",      \
    .scale_default = 1.0, .logit_key = "logits_scaling", .logit_default = 1.0, .logit_divide = 1
#define QWEN_HYBRID(lin)                                                                                   \
    .norm = NORM_RMS_1PW, .eps_key = "rms_norm_eps", .eps = 1e-6, SILU, .qk = QK_HEAD, .linear_attn = lin, \
    .attn_gate = 1, .rotary_default = 0.25, .head_dim_default = 256
/* Ministral3Config.__post_init__'s rope_parameters when the config has none. */
#define MINISTRAL3_ROPE                                                                          \
    "{\"rope_type\":\"yarn\",\"rope_theta\":1000000.0,\"factor\":16.0,"                           \
    "\"original_max_position_embeddings\":16384,\"beta_fast\":32.0,\"beta_slow\":1.0,"             \
    "\"mscale_all_dim\":1.0,\"mscale\":1.0,\"llama_4_scaling_beta\":0.1}"

/* zoo issue 13 (docs/architectures.md §vlm-tie, §vlm-paligemma): the
 * wrapper config classes' tie defaults, LlavaConfig's fallback to
 * text_config, PaliGemma's prefix-LM prompt; AyaVisionConfig defaults to
 * cohere2. */
static const fwd_wrap WRAP_LLAVA = {.any_text = 1, .tie = -1, .tie_or_text = 1};
static const fwd_wrap WRAP_PALIGEMMA = {.any_text = 1, .tie = 1, .prefix_lm = 1};
static const fwd_wrap WRAP_TIED = {.any_text = 1, .tie = 1};
static const fwd_wrap WRAP_AYA = {.any_text = 1, .tie = 1, .class_text = "cohere2"};
static const fwd_wrap WRAP_UNTIED = {.any_text = 1, .tie = 0};
static const fwd_wrap WRAP_MLLAMA = {.tie = 0};

static const fwd_family FAMILIES[] = {
    {"llama", RMS(1e-6), SILU},
    {"mistral", RMS(1e-6), SILU, .sliding = SLIDE_ALL},
    {"qwen2", RMS(1e-6), SILU},
    {"qwen3", RMS(1e-6), SILU, .qk = QK_HEAD},
    /* Phi3Config / Olmo2Config default rms_norm_eps to 1e-5. */
    {"phi3", RMS(1e-5), SILU},
    /* GraniteModel / GraniteForCausalLM: four multipliers. */
    {"granite", GRANITE_SCALARS},
    {"smollm3", RMS(1e-6), SILU, .tie_default = 1},
    {"gemma", GEMMA},
    /* Gemma2Config: soft caps 50 / 30 unless null; query_pre_attn_scalar. */
    {"gemma2", GEMMA_SANDWICH, .attn_cap = 50.0, .final_cap = 30.0, .sliding = SLIDE_EVEN},
    {"gemma3_text", GEMMA_SANDWICH, .qk = QK_HEAD, .sliding = SLIDE_PATTERN,
     .local_theta_key = "rope_local_base_freq"},
    /* Gemma3ForConditionalGeneration: the text model in text_config. */
    {"gemma3", .wraps = "gemma3_text"},
    {"olmo2", .norm = NORM_RMS_F32, .eps_key = "rms_norm_eps", .eps = 1e-5, SILU, .layout = LAYOUT_POST,
     .qk = QK_FULL},
    /* CohereLayerNorm (layer_norm_eps 1e-5), parallel block, interleaved
     * RoPE, logits * logit_scale (0.0625). */
    {"cohere", .norm = NORM_LN_NOBIAS, .eps_key = "layer_norm_eps", .eps = 1e-5, SILU, .layout = LAYOUT_PARALLEL,
     .qk = QK_HEAD_2D, .qk_flag = "use_qk_norm", .logit_key = "logit_scale", .logit_default = 0.0625,
     .interleaved = 1, .tie_default = 1},
    /* MixtralSparseMoeBlock always renormalises the top-k weights. */
    {"mixtral", RMS(1e-6), SILU, .sliding = SLIDE_ALL, .topk_norm = 1, .moe = {&MIXTRAL_V4, &MIXTRAL_V5}},
    {"qwen2_moe", RMS(1e-6), SILU, TOPK_KEY, .moe = {&QWEN2_MOE}},
    {"qwen3_moe", RMS(1e-6), SILU, TOPK_KEY, .qk = QK_HEAD, .moe = {&QWEN3_MOE}},
    /* DeepseekV3Attention (MLA) and DeepseekV3TopkRouter. */
    {"deepseek_v3", RMS(1e-6), SILU, TOPK_KEY, .interleaved = 1, .interleave_key = "rope_interleave", .mla = 1,
     .mla_norm_eps = 1e-6, .router = ROUTER_DEEPSEEK, .topk_norm = 1, .moe = {&DEEPSEEK}},

    /* ---- zoo: Gemma 4 (docs/architectures.md §gemma4) ---- */
    /* Gemma4RMSNorm: (w * x_hat_fp32).to(dtype), w with ones init;
     * Gemma4TextScaledWordEmbedding: * sqrt(hidden) in the embedding dtype;
     * Gemma4ForCausalLM: final_logit_softcapping (class default None).
     * The layers (attention scale 1, no attention soft cap, KV sharing,
     * per-layer inputs, the MoE block) are forward_gemma4.c's. */
    {"gemma4_text", .norm = NORM_RMS_F32, .eps_key = "rms_norm_eps", .eps = 1e-6, .embed = EMBED_SQRT_H,
     .act_key = "hidden_activation", .act_default = "gelu_pytorch_tanh", .final_cap_key = "final_logit_softcapping",
     .tie_default = 1, .block = &FWD_GEMMA4},
    /* Gemma4ForConditionalGeneration: the text model in text_config. */
    {"gemma4", .wraps = "gemma4_text"},
    /* -- zoo (a): Qwen3.5 / Qwen3.6 / Qwen3-Next, docs/architectures.md §qwen3_5.
     * Qwen3_5RMSNorm / Qwen3NextRMSNorm are 1 + w, q/k norms per head;
     * layer_types picks Gated DeltaNet or output-gated attention; config
     * defaults partial_rotary_factor 0.25, head_dim 256.  Qwen3_5MoeTopKRouter
     * always renormalises the top-k weights, Qwen3-Next's when norm_topk_prob
     * (default true). */
    {"qwen3_5_text", QWEN_HYBRID(LINATTN_SPLIT)},
    {"qwen3_5", .wraps = "qwen3_5_text"},
    {"qwen3_5_moe_text", QWEN_HYBRID(LINATTN_SPLIT), .topk_norm = 1, .moe = {&QWEN_SHARED}},
    {"qwen3_5_moe", .wraps = "qwen3_5_moe_text"},
    {"qwen3_next", QWEN_HYBRID(LINATTN_FUSED), TOPK_KEY, .topk_norm = 1, .moe = {&QWEN_SHARED}},
    /* ---- zoo group (c): gpt-oss and Llama 4 ------------------------------
     * GptOssRMSNorm (w * x_hat in fp32, eps 1e-5); GptOssConfig: sliding
     * layers are the even ones unless layer_types says otherwise, 4 experts
     * per token; q/k/v/o biases where stored; the sinks, router and experts
     * in forward_oss.c. */
    {"gpt_oss", .norm = NORM_RMS_F32, .eps_key = "rms_norm_eps", .eps = 1e-5, SILU, .sliding = SLIDE_EVEN,
     .moe = {&GPT_OSS}, .router = ROUTER_HOOK, .route = fwd_oss_route, .expert = fwd_oss_expert,
     .bind_experts = fwd_oss_bind_experts, .layer_extra = fwd_oss_layer, .topk_default = 4},
    /* Llama4TextRMSNorm (x_hat.type_as(x) * w, eps 1e-5), the L2 qk norm
     * (use_qk_norm, default true), complex (interleaved) RoPE, sigmoid
     * routing of the expert input, dense layers under feed_forward.*;
     * NoPE layers, chunks and temperature in forward_llama4.c. */
    {"llama4_text", RMS(1e-5), SILU, .qk = QK_L2, .qk_flag = "use_qk_norm", .qk_default = 1, .interleaved = 1,
     .moe = {&LLAMA4}, .router = ROUTER_HOOK, .route = fwd_llama4_route, .route_scales_input = 1, .topk_default = 1,
     .mlp = "feed_forward", .layer_extra = fwd_llama4_layer},
    /* Llama4ForConditionalGeneration: the text model in text_config. */
    {"llama4", .wraps = "llama4_text"},
    /* ---- zoo (d): the vision-language text models and their wrappers,
     * docs/architectures.md §vl.  Each wrapper reads text_config (or flat
     * keys); text_config.model_type picks the row when known.  Multimodal
     * RoPE is plain RoPE for text-only positions (§vl-mrope). */
    /* Qwen2VLTextConfig / Qwen2_5_VLTextConfig: rms_norm_eps 1e-5, rope
     * theta 1e6; Qwen2VLAttention: q/k/v biases, head_dim = hidden / heads. */
    {"qwen2_vl_text", RMS(1e-5), SILU, .sliding = SLIDE_QWEN2, .rope_theta = 1e6},
    {"qwen2_vl", .wraps = "qwen2_vl_text"},
    {"qwen2_5_vl_text", RMS(1e-5), SILU, .sliding = SLIDE_QWEN2, .rope_theta = 1e6},
    {"qwen2_5_vl", .wraps = "qwen2_5_vl_text"},
    /* Qwen3VLTextConfig: default_theta 500000 (transformers 5). */
    {"qwen3_vl_text", RMS(1e-6), SILU, .qk = QK_HEAD, .rope_theta = 5e5},
    {"qwen3_vl", .wraps = "qwen3_vl_text"},
    /* Qwen3VLMoeTextTopKRouter renormalises the top-k weights always (no
     * norm_topk_prob, unlike Qwen3MoeTopKRouter). */
    {"qwen3_vl_moe_text", RMS(1e-6), SILU, .qk = QK_HEAD, .topk_norm = 1, .moe = {&QWEN3_MOE}, .rope_theta = 5e5},
    {"qwen3_vl_moe", .wraps = "qwen3_vl_moe_text"},
    /* Ministral3Config: rms_norm_eps 1e-5, sliding_window None, default
     * rope_parameters (YaRN); Ministral3Attention scales the queries. */
    {"ministral3", RMS(1e-5), SILU, .sliding = SLIDE_ALL, .rope_defaults = MINISTRAL3_ROPE,
     .qscale = QSCALE_LLAMA4_BETA},
    /* Mistral3ForConditionalGeneration: mistral or ministral3 inside. */
    {"mistral3", .wraps = "mistral"},

    /* ---- zoo (issue 13): GLM and DeepSeek, docs/architectures.md §glm-deepseek ----
     * Glm4DecoderLayer: x += post_self_attn(attn(input(x))); x +=
     * post_mlp(mlp(post_attention(x))); GlmAttention's RoPE on pairs (2i,
     * 2i+1) of the first half of each head (Glm4Config: partial_rotary_factor
     * 0.5, head_dim 128, rms_norm_eps 1.5625e-07); Phi3MLP's fused gate_up. */
    {"glm4", RMS(1.5625e-7), SILU, .layout = LAYOUT_SANDWICH, .interleaved = 1, .rotary_default = 0.5,
     .head_dim_default = 128, .sandwich = {"post_self_attn_layernorm", "post_attention_layernorm", "post_mlp_layernorm"}},
    /* Glm4MoeAttention (CohereAttention with rotate_half RoPE on half of
     * each head, per-head q/k norms when use_qk_norm) and DeepSeek-V3's
     * sigmoid router and shared experts (Glm4MoeConfig: 8 experts per token). */
    {"glm4_moe", RMS(1e-5), SILU, TOPK_KEY, .qk = QK_HEAD, .qk_flag = "use_qk_norm", .rotary_default = 0.5,
     .router = ROUTER_DEEPSEEK, .topk_norm = 1, .topk_default = 8, .moe = {&DEEPSEEK}},
    /* Glm4MoeLite: DeepseekV3Attention (MLA, rope_interleave default true)
     * with Glm4Moe's MoE (4 experts per token). */
    {"glm4_moe_lite", RMS(1e-5), SILU, TOPK_KEY, .interleaved = 1, .interleave_key = "rope_interleave", .mla = 1,
     .mla_norm_eps = 1e-6, .router = ROUTER_DEEPSEEK, .topk_norm = 1, .topk_default = 4, .moe = {&DEEPSEEK}},
    /* DeepseekV2Attention: MLA, complex (interleaved) RoPE, scaling
     * qk_head_dim^-0.5 even under YaRN; DeepseekV2Moe's softmax router
     * (forward_mla.c), no renormalisation. */
    {"deepseek_v2", RMS(1e-6), SILU, .interleaved = 1, .mla = 1, .mla_norm_eps = 1e-6, .mla_plain_scale = 1,
     .router = ROUTER_HOOK, .route = fwd_ds2_route, .layer_extra = fwd_ds2_layer, .moe = {&DEEPSEEK}},
    /* DeepseekV32Attention: V3's MLA (interleaved RoPE) plus the DSA
     * indexer (forward_dsa.c); DeepseekV32Config: 8 experts per token. */
    {"deepseek_v32", RMS(1e-6), SILU, TOPK_KEY, .interleaved = 1, .mla = 1, .mla_norm_eps = 1e-6,
     .router = ROUTER_DEEPSEEK, .topk_norm = 1, .topk_default = 8, .moe = {&DEEPSEEK}, .dsa = &FWD_DSA_V32,
     .layer_extra = fwd_dsa_layer},
    /* GlmMoeDsa: the same with an interleaved indexer RoPE and shared layers. */
    {"glm_moe_dsa", RMS(1e-5), SILU, TOPK_KEY, .interleaved = 1, .mla = 1, .mla_norm_eps = 1e-6,
     .router = ROUTER_DEEPSEEK, .topk_norm = 1, .topk_default = 8, .moe = {&DEEPSEEK}, .dsa = &FWD_DSA_GLM,
     .layer_extra = fwd_dsa_layer},
    /* Kimi K2 (remote code modeling_deepseek.py, DeepSeek-V3) and K2.5
     * (text_config, tensors under language_model.model.). */
    {"kimi_k2", .wraps = "deepseek_v3"},
    {"kimi_k25", .wraps = "deepseek_v3"},
    /* -- zoo 13 (hybrid group), docs/architectures.md §zoo13-hybrid.
     * Olmo3Model: Olmo2's post-norm layers; layer_types (class default:
     * every 4th full, the rest sliding, window 4096); sliding layers take
     * the default RoPE (rotary_embs["sliding_attention"]). */
    {"olmo3", .norm = NORM_RMS_F32, .eps_key = "rms_norm_eps", .eps = 1e-5, SILU, .layout = LAYOUT_POST,
     .qk = QK_FULL, .sliding = SLIDE_PATTERN, .slide_period = 4, .window_default = 4096, .slide_default_rope = 1},
    /* OlmoeAttention (q/k norms over all heads, clip_qkv), OlmoeSparseMoeBlock
     * (softmax, top-k, renormalised when norm_topk_prob, default false; 8 per token). */
    {"olmoe", RMS(1e-5), SILU, .qk = QK_FULL, .clip_key = "clip_qkv", TOPK_KEY, .topk_default = 8,
     .moe = {&OLMOE}},
    /* GraniteMoe*: Granite's four multipliers; JetMoe's top-k gating is a
     * softmax over the k best logits (= the full softmax renormalised); the
     * layers are forward_granite.c's. */
    {"granitemoe", GRANITE_SCALARS, .topk_norm = 1, .block = &FWD_GRANITE},
    {"granitemoeshared", GRANITE_SCALARS, .topk_norm = 1, .block = &FWD_GRANITE},
    {"granitemoehybrid", GRANITE_SCALARS, .topk_norm = 1, .block = &FWD_GRANITE_HYBRID},
    /* NemotronHRMSNorm (layer_norm_epsilon 1e-5), relu2 MLPs and experts,
     * the DeepSeek router (sigmoid, correction bias, groups, norm_topk_prob
     * default true); blocks in forward_hybrid.c. */
    {"nemotron_h", .norm = NORM_RMS_CAST, .eps_key = "layer_norm_epsilon", .eps = 1e-5, .act_key = "mlp_hidden_act",
     .act_default = "relu2", .router = ROUTER_DEEPSEEK, .group_mask_inf = 1, TOPK_KEY, .topk_norm = 1,
     .head_dim_default = 128,
     .names = NEMOTRON_H_NAMES,
     .blocks_key = "layers_block_type|layer_types|hybrid_override_pattern", .block = &FWD_NEMOTRON_H},
    /* FalconH1RMSNorm (rms_norm_eps 1e-5); embedding_multiplier,
     * lm_head_multiplier (times); the parallel block in forward_hybrid.c. */
    {"falcon_h1", RMS(1e-5), SILU, .embed = EMBED_KEY, .embed_key = "embedding_multiplier",
     .logit_key = "lm_head_multiplier", .logit_default = 1.0, .names = FALCON_H1_NAMES, .block = &FWD_FALCON_H1},
    /* ---- zoo issue 13: the LLaVA-style VLM wrappers, docs/architectures.md
     * §vlm.  Each builds the text model text_config names (wraps: the config
     * class default) and computes logits with its own lm_head. */
    {"llava", .wraps = "llama", .wrap = &WRAP_LLAVA},
    {"llava_next", .wraps = "llama", .wrap = &WRAP_LLAVA},
    {"llava_onevision", .wraps = "qwen2", .wrap = &WRAP_LLAVA},
    {"paligemma", .wraps = "gemma", .wrap = &WRAP_PALIGEMMA},
    {"internvl", .wraps = "qwen2", .wrap = &WRAP_TIED},
    {"aya_vision", .wraps = "cohere", .wrap = &WRAP_AYA},
    {"idefics3", .wraps = "llama", .wrap = &WRAP_UNTIED},
    {"smolvlm", .wraps = "llama", .wrap = &WRAP_UNTIED},
    /* MllamaTextConfig: rms_norm_eps 1e-5, default_theta 500000, head_dim
     * hidden / heads; MllamaTextModel skips the cross-attention layers when
     * there are no cross-attention states (§vlm-mllama). */
    {"mllama_text_model", RMS(1e-5), SILU, .rope_theta = 5e5, .skip_key = "cross_attention_layers",
     .skip_default = "3,8,13,18,23,28,33,38"},
    /* MllamaForConditionalGeneration: MllamaTextConfig, whatever text_config names. */
    {"mllama", .wraps = "mllama_text_model", .wrap = &WRAP_MLLAMA},

    /* ---- zoo 13 (tail), docs/architectures.md §zoo13-tail ----------------
     * Lfm2RMSNorm (norm_eps 1e-5); Lfm2MLP's activation is silu whatever
     * the config says (no act key); per-head q/k norms before RoPE; conv
     * layers in forward_shortconv.c; rope_theta default 1e6;
     * Lfm2MoeSparseMoeBlock: sigmoid scores, expert_bias on the choice,
     * renormalised (+1e-6) when norm_topk_prob, * routed_scaling_factor. */
    {"lfm2", .norm = NORM_RMS_CAST, .eps_key = "norm_eps", .eps = 1e-5, .act_default = "silu", .qk = QK_HEAD,
     .renames = &LFM2_RENAMES, .names = LFM2_NAMES, .mlp = "feed_forward", .conv_layers = 1, .tie_default = 1,
     .tie_alias = "tie_embedding", .rope_theta = 1e6},
    {"lfm2_moe", .norm = NORM_RMS_CAST, .eps_key = "norm_eps", .eps = 1e-5, .act_default = "silu", .qk = QK_HEAD,
     .renames = &LFM2_RENAMES, .names = LFM2_NAMES, .mlp = "feed_forward", .conv_layers = 1, .tie_default = 1,
     .tie_alias = "tie_embedding", .rope_theta = 1e6, .moe = {&LFM2_MOE}, .router = ROUTER_HOOK,
     .route = fwd_biased_route, .route_eps = 1e-6, .route_bias = "feed_forward.expert_bias", TOPK_KEY,
     .topk_norm = 1, .topk_default = 4, .layer_extra = fwd_tail_layer},
    /* Gemma3nRMSNorm: (w * x_hat_fp32).to(dtype); the layers (AltUp, LAuReL,
     * per-layer inputs, sparse activations, KV sharing) are forward_gemma3n.c's;
     * sliding layers' RoPE base rope_local_base_freq; final soft cap 30. */
    {"gemma3n_text", .norm = NORM_RMS_F32, .eps_key = "rms_norm_eps", .eps = 1e-6, .embed = EMBED_SQRT_H,
     .act_key = "hidden_activation", .act_default = "gelu_pytorch_tanh", .final_cap_key = "final_logit_softcapping",
     .final_cap = 30.0, .local_theta_key = "rope_local_base_freq", .rope_theta = 1e6, .tie_default = 1,
     .block = &FWD_GEMMA3N},
    {"gemma3n", .wraps = "gemma3n_text"},
    /* Cohere2: Cohere's LayerNorm and parallel block, no q/k norms;
     * sliding layers all but every sliding_window_pattern-th (default 4),
     * RoPE (interleaved) only there. */
    {"cohere2", .norm = NORM_LN_NOBIAS, .eps_key = "layer_norm_eps", .eps = 1e-5, SILU, .layout = LAYOUT_PARALLEL,
     .logit_key = "logit_scale", .logit_default = 0.0625, .interleaved = 1, .tie_default = 1,
     .sliding = SLIDE_PATTERN, .slide_period = 4, .nope_full = NOPE_FULL_ALWAYS},
    /* MiniCPM: embeddings * scale_emb (in the embedding dtype), residual
     * branches * scale_depth / sqrt(layers), logits * dim_model_base / hidden. */
    {"minicpm", RMS(1e-6), SILU, .embed = EMBED_KEY, .embed_key = "scale_emb", .embed_default = 12, .embed_round = 1,
     .residual_key = "scale_depth", .residual_default = 1.4, .residual_sqrt_layers = 1,
     .logit_base_key = "dim_model_base", .logit_base_default = 256, .tie_default = 1},
    /* ERNIE 4.5: GLM's interleaved RoPE over the whole head; head_dim 128,
     * rope_theta 500000 by default.  The MoE router: softmax in fp32, the
     * choice adds moe_statics.e_score_correction_bias, the weights are
     * renormalised with the sum clamped at moe_norm_min; moe_k experts. */
    {"ernie4_5", RMS(1e-5), SILU, .interleaved = 1, .head_dim_default = 128, .rope_theta = 500000.0,
     .tie_default = 1},
    {"ernie4_5_moe", RMS(1e-5), SILU, .interleaved = 1, .head_dim_default = 128, .rope_theta = 500000.0,
     .tie_default = 1, .moe = {&ERNIE_MOE}, .router = ROUTER_HOOK, .route = fwd_biased_route, .route_softmax = 1,
     .route_clamp_key = "moe_norm_min", .route_clamp = 1e-12, .route_bias = "mlp.moe_statics.e_score_correction_bias",
     .topk_norm = 1, .topk_key = "moe_k", .topk_default = 6, .layer_extra = fwd_tail_layer},
    /* HunYuan: q/k norms per head after RoPE; DynamicNTKAlpha RoPE; MoE:
     * softmax, top moe_topk, always renormalised, plus the shared MLP. */
    {"hunyuan_v1_dense", RMS(1e-5), SILU, .qk = QK_HEAD_POST, .renames = &HUNYUAN_RENAMES, .rope_alpha = 1},
    {"hunyuan_v1_moe", RMS(1e-5), SILU, .qk = QK_HEAD_POST, .renames = &HUNYUAN_RENAMES, .rope_alpha = 1,
     .moe = {&HUNYUAN_MOE}, .topk_norm = 1, .topk_key = "moe_topk", .topk_default = 1},
    /* EXAONE 4: OLMo2's post-norm layer, per-head q/k norms before RoPE;
     * sliding layers all but every 4th by default; with a sliding window
     * the full layers have no RoPE. */
    {"exaone4", RMS(1e-5), SILU, .layout = LAYOUT_POST, .qk = QK_HEAD, .sliding = SLIDE_PATTERN, .slide_period = 4,
     .nope_full = NOPE_FULL_IF_WINDOW},
    {"seed_oss", RMS(1e-6), SILU, .head_dim_default = 128},
    /* Apertus: renamed pre-norms, q/k norms before RoPE, NemotronMLP with
     * xIELU (its parameters bound by fwd_tail_layer). */
    {"apertus", RMS(1e-5), .act_key = "hidden_act", .act_default = "xielu", .qk = QK_HEAD,
     .renames = &APERTUS_RENAMES,
     .mlp_no_gate = 1, .rope_theta = 12000000.0, .layer_extra = fwd_tail_layer},
    {"arcee", RMS(1e-5), .act_key = "hidden_act", .act_default = "relu2", .mlp_no_gate = 1},
    /* InternLM2: wqkv grouped per kv head; feed_forward.w1/w3/w2; output. */
    {"internlm2", RMS(1e-6), SILU, .renames = &INTERNLM2_RENAMES, .names = INTERNLM2_NAMES, .mlp = "feed_forward",
     .qkv_grouped = 1},
    {"internlm3", RMS(1e-6), SILU},
};

#define N_FAMILIES (sizeof FAMILIES / sizeof FAMILIES[0])

const fwd_family *fwd_family_find(const char *model_type)
{
    for (size_t i = 0; i < N_FAMILIES; i++)
        if (strcmp(FAMILIES[i].model_type, model_type) == 0)
            return &FAMILIES[i];
    return NULL;
}

const fwd_family *fwd_family_at(size_t i) { return i < N_FAMILIES ? &FAMILIES[i] : NULL; }

void fwd_resolve_names(const fwd_family *f, fwd_renames *out)
{
    static const fwd_renames none = {0};
    const fwd_renames *r = f->renames ? f->renames : &none;
#define PICK(field, llama) out->field = r->field ? r->field : llama
    PICK(attn_norm, "input_layernorm");
    PICK(mlp_norm, "post_attention_layernorm");
    PICK(q_norm, "self_attn.q_norm");
    PICK(k_norm, "self_attn.k_norm");
    PICK(q, "self_attn.q_proj");
    PICK(k, "self_attn.k_proj");
    PICK(v, "self_attn.v_proj");
    PICK(o, "self_attn.o_proj");
    PICK(qkv, "self_attn.qkv_proj");
    PICK(gate, "gate_proj");
    PICK(up, "up_proj");
    PICK(down, "down_proj");
    PICK(gate_up, "gate_up_proj");
    PICK(head, "lm_head");
#undef PICK
}

/* ----------------------------------------------------------------------------
 * Activations (transformers activations.py ACT2CLS). */

static const struct {
    const char *name;
    int act;
} ACTS[] = {
    {"silu", ACT_SILU}, {"swish", ACT_SILU}, {"gelu_pytorch_tanh", ACT_GELU_TANH}, {"gelu_new", ACT_GELU_TANH},
    {"gelu_fast", ACT_GELU_TANH}, {"gelu", ACT_GELU_ERF},
    /* ReLUSquaredActivation (Arcee); XIELUActivation (Apertus), learned
     * per layer. */
    {"relu2", ACT_RELU2}, {"xielu", ACT_XIELU},
};

int fwd_act_find(const char *name)
{
    for (size_t i = 0; i < sizeof ACTS / sizeof ACTS[0]; i++)
        if (strcmp(ACTS[i].name, name) == 0)
            return ACTS[i].act;
    return -1;
}

void fwd_act_names(char *buf, size_t cap)
{
    size_t n = 0;
    buf[0] = 0;
    for (size_t i = 0; i < sizeof ACTS / sizeof ACTS[0]; i++) {
        int w = snprintf(buf + n, cap - n, "%s%s", i ? ", " : "", ACTS[i].name);
        if (w < 0 || (size_t)w >= cap - n)
            break;
        n += (size_t)w;
    }
}
