/* arch.c — the architecture table (see arch.h).
 *
 * Every rule comes from ../shared/docs/architectures.md §1, which cites the
 * transformers modeling file it was read from.  Adding a family is adding a
 * row here and a test. */
#include "flashify/arch.h"

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

/* ---------------------------------------------------------------------------
 * which layers are sparse (MoE) */

static int in_int_list(const ckpt_config *cfg, const char *key, long i)
{
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(cfg->text, key);
    if (!cJSON_IsArray(list))
        return 0;
    for (const cJSON *e = list->child; e; e = e->next)
        if (cJSON_IsNumber(e) && e->valuedouble == (double)i)
            return 1;
    return 0;
}

/* Mixtral: every layer is sparse. */
static int moe_all(const ckpt_config *cfg, long i) { (void)cfg; (void)i; return 1; }

/* Qwen2MoeDecoderLayer / Qwen3MoeDecoderLayer: sparse when the layer is not
 * in mlp_only_layers, num_experts > 0 and (i + 1) % decoder_sparse_step == 0. */
static int moe_qwen(const ckpt_config *cfg, long i)
{
    long step = ckpt_config_int(cfg, "decoder_sparse_step", 1);
    long experts = ckpt_config_int(cfg, "num_experts", 0);
    if (in_int_list(cfg, "mlp_only_layers", i) || experts <= 0 || step <= 0)
        return 0;
    return (i + 1) % step == 0;
}

/* DeepseekV3DecoderLayer: the first first_k_dense_replace layers are dense;
 * after that every moe_layer_freq-th layer is sparse. */
static int moe_deepseek(const ckpt_config *cfg, long i)
{
    long first = ckpt_config_int(cfg, "first_k_dense_replace", 0);
    long freq = ckpt_config_int(cfg, "moe_layer_freq", 1);
    long experts = ckpt_config_int(cfg, "n_routed_experts", 0);
    if (experts <= 0 || freq <= 0)
        return 0;
    return i >= first && i % freq == 0;
}

/* ---------------------------------------------------------------------------
 * shared pieces */

#define QKV {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"}
#define GATE_UP {"mlp.gate_proj", "mlp.up_proj"}
#define LLAMA_FOLDS                                                   \
    {{"input_layernorm", QKV, LAYERS_ALL, NULL},                      \
     {"post_attention_layernorm", GATE_UP, LAYERS_ALL, NULL}}

static const char QK_NORM_WHY[] =
    "q/k norm: applied per head before RoPE and the attention scores, not before a linear layer";
static const char POST_NORM_WHY[] =
    "sandwich norm: normalises a sublayer's output before the residual add, not a linear layer's input";

static const arch_info ARCHS[] = {
    {.model_type = "llama", .gain = GAIN_W, .norm_kind = NORM_RMS_CAST_THEN_MUL,
     .folds = LLAMA_FOLDS, .marker_ok = 1, .tie_default = 0},
    {.model_type = "mistral", .gain = GAIN_W, .norm_kind = NORM_RMS_CAST_THEN_MUL,
     .folds = LLAMA_FOLDS, .marker_ok = 1, .tie_default = 0},
    /* Qwen2's q/k/v biases are added after W·x: folding g into W is exact
     * and the biases stay as they are. */
    {.model_type = "qwen2", .gain = GAIN_W, .norm_kind = NORM_RMS_CAST_THEN_MUL,
     .folds = LLAMA_FOLDS, .marker_ok = 1, .tie_default = 0},
    {.model_type = "granite", .gain = GAIN_W, .norm_kind = NORM_RMS_CAST_THEN_MUL,
     .folds = LLAMA_FOLDS, .marker_ok = 1, .tie_default = 0},
    {.model_type = "smollm3", .gain = GAIN_W, .norm_kind = NORM_RMS_CAST_THEN_MUL,
     .folds = LLAMA_FOLDS, .marker_ok = 1, .tie_default = 1},
    {.model_type = "qwen3", .gain = GAIN_W, .norm_kind = NORM_RMS_CAST_THEN_MUL,
     .folds = LLAMA_FOLDS,
     .keeps = {{"self_attn.q_norm", QK_NORM_WHY}, {"self_attn.k_norm", QK_NORM_WHY}},
     .marker_ok = 1, .tie_default = 0},
    /* Phi3's fused projections are single [out, H] matrices: every column
     * i is scaled by g[i], no splitting needed. */
    {.model_type = "phi3", .gain = GAIN_W, .norm_kind = NORM_RMS_CAST_THEN_MUL,
     .folds = {{"input_layernorm", {"self_attn.qkv_proj"}, LAYERS_ALL, NULL},
               {"post_attention_layernorm", {"mlp.gate_up_proj"}, LAYERS_ALL, NULL}},
     .marker_ok = 1, .tie_default = 0},
    {.model_type = "gemma", .gain = GAIN_ONE_PLUS_W, .norm_kind = NORM_RMS_GEMMA,
     .folds = LLAMA_FOLDS, .marker_ok = 1, .tie_default = 1,
     .warning = "Gemma norms are 1+w: a dropped norm loads as the identity only on transformers "
                "releases that initialise missing Gemma norms to 0 (v4.57+); on ~v4.51-4.56 it "
                "loads as gain 2. Use --keep-norms to write the identity (0) explicitly"},
    /* Gemma2/3: post_attention_layernorm and post_feedforward_layernorm sit
     * on the sublayer output, before the residual add. */
    {.model_type = "gemma2", .gain = GAIN_ONE_PLUS_W, .norm_kind = NORM_RMS_GEMMA,
     .folds = {{"input_layernorm", QKV, LAYERS_ALL, NULL},
               {"pre_feedforward_layernorm", GATE_UP, LAYERS_ALL, NULL}},
     .keeps = {{"post_attention_layernorm", POST_NORM_WHY},
               {"post_feedforward_layernorm", POST_NORM_WHY}},
     .marker_ok = 0, .tie_default = 1,
     .warning = "Gemma norms are 1+w: a dropped norm loads as the identity only on transformers "
                "releases that initialise missing Gemma norms to 0 (v4.57+); on ~v4.51-4.56 it "
                "loads as gain 2. Use --keep-norms to write the identity (0) explicitly"},
    {.model_type = "gemma3_text", .gain = GAIN_ONE_PLUS_W, .norm_kind = NORM_RMS_GEMMA,
     .folds = {{"input_layernorm", QKV, LAYERS_ALL, NULL},
               {"pre_feedforward_layernorm", GATE_UP, LAYERS_ALL, NULL}},
     .keeps = {{"post_attention_layernorm", POST_NORM_WHY},
               {"post_feedforward_layernorm", POST_NORM_WHY},
               {"self_attn.q_norm", QK_NORM_WHY}, {"self_attn.k_norm", QK_NORM_WHY}},
     .marker_ok = 0, .tie_default = 1,
     .warning = "Gemma norms are 1+w: a dropped norm loads as the identity only on transformers "
                "releases that initialise missing Gemma norms to 0 (v4.57+); on ~v4.51-4.56 it "
                "loads as gain 2. Use --keep-norms to write the identity (0) explicitly"},
    /* OLMo2 has no pre-norms: attention and MLP read the raw residual. */
    {.model_type = "olmo2", .gain = GAIN_W, .norm_kind = NORM_RMS_MUL_THEN_CAST,
     .keeps = {{"post_attention_layernorm", POST_NORM_WHY},
               {"post_feedforward_layernorm", POST_NORM_WHY},
               {"self_attn.q_norm", "q/k norm over the whole projection, before RoPE"},
               {"self_attn.k_norm", "q/k norm over the whole projection, before RoPE"}},
     .marker_ok = 0, .tie_default = 0},
    /* Mixtral: the post-attention norm feeds the router and every expert's
     * w1 (gate) and w3 (up); w2 is the down projection. */
    {.model_type = "mixtral", .gain = GAIN_W, .norm_kind = NORM_RMS_CAST_THEN_MUL,
     .folds = {{"input_layernorm", QKV, LAYERS_ALL, NULL},
               {"post_attention_layernorm",
                {"block_sparse_moe.gate", "block_sparse_moe.experts.{e}.w1",
                 "block_sparse_moe.experts.{e}.w3"}, LAYERS_MOE, NULL}},
     .experts_key = "num_local_experts", .is_moe_layer = moe_all,
     .marker_ok = 1, .tie_default = 0},
    {.model_type = "qwen2_moe", .gain = GAIN_W, .norm_kind = NORM_RMS_CAST_THEN_MUL,
     .folds = {{"input_layernorm", QKV, LAYERS_ALL, NULL},
               {"post_attention_layernorm",
                {"mlp.gate", "mlp.experts.{e}.gate_proj", "mlp.experts.{e}.up_proj",
                 "mlp.shared_expert.gate_proj", "mlp.shared_expert.up_proj",
                 "mlp.shared_expert_gate"}, LAYERS_MOE, NULL},
               {"post_attention_layernorm", GATE_UP, LAYERS_DENSE, NULL}},
     .experts_key = "num_experts", .is_moe_layer = moe_qwen,
     .marker_ok = 1, .tie_default = 0},
    {.model_type = "qwen3_moe", .gain = GAIN_W, .norm_kind = NORM_RMS_CAST_THEN_MUL,
     .folds = {{"input_layernorm", QKV, LAYERS_ALL, NULL},
               {"post_attention_layernorm",
                {"mlp.gate", "mlp.experts.{e}.gate_proj", "mlp.experts.{e}.up_proj"},
                LAYERS_MOE, NULL},
               {"post_attention_layernorm", GATE_UP, LAYERS_DENSE, NULL}},
     .keeps = {{"self_attn.q_norm", QK_NORM_WHY}, {"self_attn.k_norm", QK_NORM_WHY}},
     .experts_key = "num_experts", .is_moe_layer = moe_qwen,
     .marker_ok = 1, .tie_default = 0},
    /* DeepSeek-V3 MLA: two extra foldable norms inside attention.  Without
     * q_lora_rank the input norm feeds q_proj directly and there is no
     * q_a_layernorm.  e_score_correction_bias is never scaled. */
    {.model_type = "deepseek_v3", .gain = GAIN_W, .norm_kind = NORM_RMS_CAST_THEN_MUL,
     .folds = {{"input_layernorm", {"self_attn.q_a_proj|self_attn.q_proj",
                                    "self_attn.kv_a_proj_with_mqa"}, LAYERS_ALL, NULL},
               {"self_attn.q_a_layernorm", {"self_attn.q_b_proj"}, LAYERS_ALL, "q_lora_rank"},
               {"self_attn.kv_a_layernorm", {"self_attn.kv_b_proj"}, LAYERS_ALL, NULL},
               {"post_attention_layernorm",
                {"mlp.gate", "mlp.experts.{e}.gate_proj", "mlp.experts.{e}.up_proj",
                 "mlp.shared_experts.gate_proj", "mlp.shared_experts.up_proj"},
                LAYERS_MOE, NULL},
               {"post_attention_layernorm", GATE_UP, LAYERS_DENSE, NULL}},
     .experts_key = "n_routed_experts", .is_moe_layer = moe_deepseek,
     .marker_ok = 1, .tie_default = 0},
    /* Cohere: parallel block, one input_layernorm feeds attention and MLP.
     * LayerNorm without bias: the gain folds exactly like RMSNorm's. */
    {.model_type = "cohere", .gain = GAIN_W, .norm_kind = NORM_LAYER_NO_BIAS,
     .folds = {{"input_layernorm", {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                    "mlp.gate_proj", "mlp.up_proj"}, LAYERS_ALL, NULL}},
     .keeps = {{"self_attn.q_norm", QK_NORM_WHY}, {"self_attn.k_norm", QK_NORM_WHY}},
     .marker_ok = 1, .tie_default = 1},
};

/* Multimodal Gemma 3 is gemma3_text under another prefix; the top-level
 * model_type "gemma3" maps to it (its text_config says gemma3_text). */
const arch_info *arch_find(const char *model_type)
{
    if (strcmp(model_type, "gemma3") == 0)
        model_type = "gemma3_text";
    for (size_t i = 0; i < sizeof ARCHS / sizeof ARCHS[0]; i++)
        if (strcmp(ARCHS[i].model_type, model_type) == 0)
            return &ARCHS[i];
    return NULL;
}

const char *arch_supported_list(void)
{
    static char list[512];
    if (!list[0]) {
        size_t n = 0;
        for (size_t i = 0; i < sizeof ARCHS / sizeof ARCHS[0]; i++) {
            int w = snprintf(list + n, sizeof list - n, "%s%s", i ? ", " : "", ARCHS[i].model_type);
            if (w < 0 || (size_t)w >= sizeof list - n)
                break;
            n += (size_t)w;
            if (strcmp(ARCHS[i].model_type, "gemma3_text") == 0) {
                w = snprintf(list + n, sizeof list - n, ", gemma3");
                if (w > 0 && (size_t)w < sizeof list - n)
                    n += (size_t)w;
            }
        }
    }
    return list;
}
