/* test_plan.c — the pure planner, without files.
 *
 * plan_decide gets a config.json text and a catalogue of tensor names,
 * dtypes and shapes built here in memory, and must produce exactly the
 * groups written out by hand below (from docs/architectures.md, not from
 * the table): which norm folds into which tensors along which axis, what
 * is kept, what is refused and why. */
#include "flashify/plan.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

/* ---------------------------------------------------------------- a catalogue */

#define MAX_T 512

typedef struct {
    st_tensor st[MAX_T];
    ckpt_tensor ct[MAX_T];
    char names[MAX_T][128];
    size_t n;
    ckpt_config cfg;
} fixture;

static void add(fixture *f, const char *name, st_dtype d, int ndim, uint64_t a, uint64_t b, uint64_t c)
{
    size_t i = f->n++;
    snprintf(f->names[i], sizeof f->names[i], "%s", name);
    f->st[i] = (st_tensor){.name = f->names[i], .dtype = d, .ndim = ndim, .shape = {a, b, c}};
    f->st[i].end = a * (ndim > 1 ? b : 1) * (ndim > 2 ? c : 1) * (st_dtype_bits(d) / 8);
}

static void addf(fixture *f, st_dtype d, int ndim, uint64_t a, uint64_t b, uint64_t c, const char *fmt, ...)
    __attribute__((format(printf, 7, 8)));
static void addf(fixture *f, st_dtype d, int ndim, uint64_t a, uint64_t b, uint64_t c, const char *fmt, ...)
{
    char name[128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    add(f, name, d, ndim, a, b, c);
}

static int cmp_ct(const void *a, const void *b)
{
    return strcmp(((const ckpt_tensor *)a)->name, ((const ckpt_tensor *)b)->name);
}

/* Plans the fixture with config text `json`; returns the status. */
static fl_status decide(fixture *f, const char *json, const plan_options *opt, fold_plan *p, fl_error *err)
{
    for (size_t i = 0; i < f->n; i++)
        f->ct[i] = (ckpt_tensor){.name = f->st[i].name, .shard = 0, .t = &f->st[i]};
    qsort(f->ct, f->n, sizeof f->ct[0], cmp_ct);
    fl_status s = ckpt_config_parse("mem/config.json", json, strlen(json), &f->cfg, err);
    CHECK(s == FL_OK, "config: %s", err->msg);
    plan_options none = {0};
    plan_catalogue cat = {f->ct, f->n, "mem", NULL};
    return plan_decide(&f->cfg, &cat, opt ? opt : &none, p, err);
}

static void done(fixture *f, fold_plan *p)
{
    plan_free(p);
    ckpt_config_free(&f->cfg);
    free(f);
}

static const fold_group *group_of(const fold_plan *p, const char *norm)
{
    for (size_t i = 0; i < p->n_groups; i++)
        if (strcmp(p->groups[i].norm, norm) == 0)
            return &p->groups[i];
    return NULL;
}

/* The group of `norm` folds into exactly `want` (space separated, in
 * order), each along axis 1 unless "name@2". */
static void expect_group(const fold_plan *p, const char *norm, const char *want)
{
    const fold_group *g = group_of(p, norm);
    CHECK(g != NULL, "no group for %s", norm);
    if (!g)
        return;
    char buf[2048];
    snprintf(buf, sizeof buf, "%s", want);
    size_t k = 0;
    for (char *tok = strtok(buf, " "); tok; tok = strtok(NULL, " "), k++) {
        int axis = 1;
        char *at = strchr(tok, '@');
        if (at) {
            axis = atoi(at + 1);
            *at = 0;
        }
        CHECK(k < g->n_consumers && strcmp(g->consumers[k], tok) == 0, "%s consumer %zu: got %s, want %s", norm, k,
              k < g->n_consumers ? g->consumers[k] : "(none)", tok);
        CHECK(k >= g->n_consumers || g->axes[k] == axis, "%s consumer %s: axis %d, want %d", norm, tok,
              k < g->n_consumers ? g->axes[k] : -1, axis);
    }
    CHECK(k == g->n_consumers, "%s has %zu consumers, want %zu", norm, g->n_consumers, k);
}

static int kept(const fold_plan *p, const char *name)
{
    for (size_t i = 0; i < p->n_kept; i++)
        if (strcmp(p->kept[i].name, name) == 0)
            return 1;
    return 0;
}

static const out_tensor *out_named(const fold_plan *p, const char *name) { return plan_find_out(p, name); }

/* ---------------------------------------------------------------- models */

enum { H = 8, V = 16, I = 12 };
#define BF ST_BF16

static void llama_layer(fixture *f, const char *pre, int i, int qk_norm)
{
    addf(f, BF, 1, H, 0, 0, "%slayers.%d.input_layernorm.weight", pre, i);
    addf(f, BF, 1, H, 0, 0, "%slayers.%d.post_attention_layernorm.weight", pre, i);
    addf(f, BF, 2, H, H, 0, "%slayers.%d.self_attn.q_proj.weight", pre, i);
    addf(f, BF, 2, 4, H, 0, "%slayers.%d.self_attn.k_proj.weight", pre, i);
    addf(f, BF, 2, 4, H, 0, "%slayers.%d.self_attn.v_proj.weight", pre, i);
    addf(f, BF, 2, H, H, 0, "%slayers.%d.self_attn.o_proj.weight", pre, i);
    if (qk_norm) {
        addf(f, BF, 1, 4, 0, 0, "%slayers.%d.self_attn.q_norm.weight", pre, i);
        addf(f, BF, 1, 4, 0, 0, "%slayers.%d.self_attn.k_norm.weight", pre, i);
    }
}

static void dense_mlp(fixture *f, const char *pre, int i)
{
    addf(f, BF, 2, I, H, 0, "%slayers.%d.mlp.gate_proj.weight", pre, i);
    addf(f, BF, 2, I, H, 0, "%slayers.%d.mlp.up_proj.weight", pre, i);
    addf(f, BF, 2, H, I, 0, "%slayers.%d.mlp.down_proj.weight", pre, i);
}

static void embed_norm(fixture *f, const char *pre, int head)
{
    addf(f, BF, 2, V, H, 0, "%sembed_tokens.weight", pre);
    addf(f, BF, 1, H, 0, 0, "%snorm.weight", pre);
    if (head)
        add(f, "lm_head.weight", BF, 2, V, H, 0);
}

static void test_llama_tied(void)
{
    fixture *f = calloc(1, sizeof *f);
    for (int i = 0; i < 2; i++) {
        llama_layer(f, "model.", i, 0);
        dense_mlp(f, "model.", i);
    }
    embed_norm(f, "model.", 0);
    fold_plan p;
    fl_error err = {0};
    fl_status s = decide(f, "{\"model_type\":\"llama\",\"num_hidden_layers\":2,\"hidden_size\":8,"
                            "\"tie_word_embeddings\":true}", NULL, &p, &err);
    CHECK(s == FL_OK, "llama: %s", err.msg);
    if (s == FL_OK) {
        expect_group(&p, "model.layers.1.input_layernorm.weight",
                     "model.layers.1.self_attn.q_proj.weight model.layers.1.self_attn.k_proj.weight "
                     "model.layers.1.self_attn.v_proj.weight");
        expect_group(&p, "model.layers.0.post_attention_layernorm.weight",
                     "model.layers.0.mlp.gate_proj.weight model.layers.0.mlp.up_proj.weight");
        expect_group(&p, "model.norm.weight", "lm_head.weight");
        CHECK(p.n_groups == 5, "llama: %zu groups", p.n_groups);
        CHECK(p.untie && p.marker && p.n_kept == 0, "llama: untie %d marker %d kept %zu", p.untie, p.marker,
              p.n_kept);
        const out_tensor *h = out_named(&p, "lm_head.weight");
        CHECK(h && h->op == OUT_FOLD && strcmp(h->src->name, "model.embed_tokens.weight") == 0,
              "lm_head is materialised from the embedding");
        CHECK(!out_named(&p, "model.norm.weight"), "the final norm is dropped");
        const out_tensor *d = out_named(&p, "model.layers.0.mlp.down_proj.weight");
        CHECK(d && d->op == OUT_COPY, "down_proj is copied");
    }
    done(f, &p);
}

/* Gemma 2: sandwich norms kept, pre_feedforward folded, gain 1 + w and
 * --keep-norms identity 0, no marker. */
static void test_gemma2_keeps(void)
{
    fixture *f = calloc(1, sizeof *f);
    llama_layer(f, "model.", 0, 0);
    dense_mlp(f, "model.", 0);
    add(f, "model.layers.0.pre_feedforward_layernorm.weight", BF, 1, H, 0, 0);
    add(f, "model.layers.0.post_feedforward_layernorm.weight", BF, 1, H, 0, 0);
    embed_norm(f, "model.", 0);
    fold_plan p;
    fl_error err = {0};
    plan_options opt = {.keep_norms = 1};
    fl_status s = decide(f, "{\"model_type\":\"gemma2\",\"num_hidden_layers\":1,\"hidden_size\":8}", &opt, &p, &err);
    CHECK(s == FL_OK, "gemma2: %s", err.msg);
    if (s == FL_OK) {
        expect_group(&p, "model.layers.0.pre_feedforward_layernorm.weight",
                     "model.layers.0.mlp.gate_proj.weight model.layers.0.mlp.up_proj.weight");
        CHECK(kept(&p, "model.layers.0.post_attention_layernorm.weight"), "post_attention_layernorm kept");
        CHECK(kept(&p, "model.layers.0.post_feedforward_layernorm.weight"), "post_feedforward_layernorm kept");
        CHECK(!p.marker, "gemma2 keeps post_attention_layernorm: no marker");
        CHECK(p.untie, "gemma2's class default ties the head");
        const out_tensor *o = out_named(&p, "model.layers.0.input_layernorm.weight");
        CHECK(o && o->op == OUT_IDENTITY && o->identity == 0.0, "1+w identity is 0");
        CHECK(group_of(&p, "model.norm.weight")->gain == GAIN_ONE_PLUS_W, "final norm gain 1+w");
    }
    done(f, &p);
}

/* Qwen2-MoE, per-expert layout: layer 0 dense (mlp_only_layers), layer 1
 * sparse; the v5 config key num_local_experts instead of num_experts. */
static void test_qwen2_moe(const char *experts_key)
{
    fixture *f = calloc(1, sizeof *f);
    for (int i = 0; i < 2; i++)
        llama_layer(f, "model.", i, 0);
    dense_mlp(f, "model.", 0);
    add(f, "model.layers.1.mlp.gate.weight", BF, 2, 2, H, 0);
    for (int e = 0; e < 2; e++) {
        addf(f, BF, 2, 6, H, 0, "model.layers.1.mlp.experts.%d.gate_proj.weight", e);
        addf(f, BF, 2, 6, H, 0, "model.layers.1.mlp.experts.%d.up_proj.weight", e);
        addf(f, BF, 2, H, 6, 0, "model.layers.1.mlp.experts.%d.down_proj.weight", e);
    }
    add(f, "model.layers.1.mlp.shared_expert.gate_proj.weight", BF, 2, 10, H, 0);
    add(f, "model.layers.1.mlp.shared_expert.up_proj.weight", BF, 2, 10, H, 0);
    add(f, "model.layers.1.mlp.shared_expert.down_proj.weight", BF, 2, H, 10, 0);
    add(f, "model.layers.1.mlp.shared_expert_gate.weight", BF, 2, 1, H, 0);
    embed_norm(f, "model.", 1);
    char json[256];
    snprintf(json, sizeof json, "{\"model_type\":\"qwen2_moe\",\"num_hidden_layers\":2,\"hidden_size\":8,"
                                "\"%s\":2,\"mlp_only_layers\":[0],\"decoder_sparse_step\":1}", experts_key);
    fold_plan p;
    fl_error err = {0};
    fl_status s = decide(f, json, NULL, &p, &err);
    CHECK(s == FL_OK, "qwen2_moe (%s): %s", experts_key, err.msg);
    if (s == FL_OK) {
        expect_group(&p, "model.layers.0.post_attention_layernorm.weight",
                     "model.layers.0.mlp.gate_proj.weight model.layers.0.mlp.up_proj.weight");
        expect_group(&p, "model.layers.1.post_attention_layernorm.weight",
                     "model.layers.1.mlp.gate.weight model.layers.1.mlp.experts.0.gate_proj.weight "
                     "model.layers.1.mlp.experts.1.gate_proj.weight model.layers.1.mlp.experts.0.up_proj.weight "
                     "model.layers.1.mlp.experts.1.up_proj.weight model.layers.1.mlp.shared_expert.gate_proj.weight "
                     "model.layers.1.mlp.shared_expert.up_proj.weight model.layers.1.mlp.shared_expert_gate.weight");
        CHECK(!p.untie && p.marker, "untied qwen2_moe: fold into lm_head, marker");
    }
    done(f, &p);
}

/* Mixtral as transformers 5 saves it with save_original_format=False:
 * block_sparse_moe renamed mlp, w1/w3 fused into experts.gate_up_proj
 * [E, 2I, H] (input on the last axis). */
static void test_mixtral_fused(void)
{
    fixture *f = calloc(1, sizeof *f);
    llama_layer(f, "model.", 0, 0);
    add(f, "model.layers.0.mlp.gate.weight", BF, 2, 3, H, 0);
    add(f, "model.layers.0.mlp.experts.gate_up_proj", BF, 3, 3, 2 * I, H);
    add(f, "model.layers.0.mlp.experts.down_proj", BF, 3, 3, H, I);
    embed_norm(f, "model.", 1);
    fold_plan p;
    fl_error err = {0};
    fl_status s = decide(f, "{\"model_type\":\"mixtral\",\"num_hidden_layers\":1,\"hidden_size\":8,"
                            "\"num_local_experts\":3}", NULL, &p, &err);
    CHECK(s == FL_OK, "mixtral fused: %s", err.msg);
    if (s == FL_OK) {
        expect_group(&p, "model.layers.0.post_attention_layernorm.weight",
                     "model.layers.0.mlp.gate.weight model.layers.0.mlp.experts.gate_up_proj@2");
        const out_tensor *o = out_named(&p, "model.layers.0.mlp.experts.gate_up_proj");
        CHECK(o && o->op == OUT_FOLD && o->axis == 2, "fused experts fold along the last axis");
        o = out_named(&p, "model.layers.0.mlp.experts.down_proj");
        CHECK(o && o->op == OUT_COPY, "down_proj copied");
    }
    done(f, &p);
    /* The expert count must match the fused tensor. */
    f = calloc(1, sizeof *f);
    llama_layer(f, "model.", 0, 0);
    add(f, "model.layers.0.mlp.gate.weight", BF, 2, 3, H, 0);
    add(f, "model.layers.0.mlp.experts.gate_up_proj", BF, 3, 4, 2 * I, H);
    embed_norm(f, "model.", 1);
    s = decide(f, "{\"model_type\":\"mixtral\",\"num_hidden_layers\":1,\"hidden_size\":8,\"num_local_experts\":3}",
               NULL, &p, &err);
    CHECK(s == FL_EINPUT && strstr(err.msg, "4 experts") && strstr(err.msg, "3"), "expert mismatch: %s", err.msg);
    done(f, &p);
}

/* Qwen3-MoE with the grouped-GEMM layout [E, H, 2I]: input on axis 1. */
static void test_qwen3_moe_middle_axis(void)
{
    fixture *f = calloc(1, sizeof *f);
    llama_layer(f, "model.", 0, 1);
    add(f, "model.layers.0.mlp.gate.weight", BF, 2, 2, H, 0);
    add(f, "model.layers.0.mlp.experts.gate_up_proj", BF, 3, 2, H, 2 * I);
    add(f, "model.layers.0.mlp.experts.down_proj", BF, 3, 2, I, H);
    embed_norm(f, "model.", 1);
    fold_plan p;
    fl_error err = {0};
    const char *cfg = "{\"model_type\":\"qwen3_moe\",\"num_hidden_layers\":1,\"hidden_size\":8,\"num_experts\":2}";
    fl_status s = decide(f, cfg, NULL, &p, &err);
    CHECK(s == FL_OK, "qwen3_moe [E,H,2I]: %s", err.msg);
    if (s == FL_OK) {
        expect_group(&p, "model.layers.0.post_attention_layernorm.weight",
                     "model.layers.0.mlp.gate.weight model.layers.0.mlp.experts.gate_up_proj@1");
        CHECK(kept(&p, "model.layers.0.self_attn.q_norm.weight"), "q_norm kept");
    }
    done(f, &p);
    /* H == 2I: either axis could be the input -- refused, not guessed. */
    f = calloc(1, sizeof *f);
    llama_layer(f, "model.", 0, 1);
    add(f, "model.layers.0.mlp.gate.weight", BF, 2, 2, H, 0);
    add(f, "model.layers.0.mlp.experts.gate_up_proj", BF, 3, 2, H, H);
    embed_norm(f, "model.", 1);
    s = decide(f, cfg, NULL, &p, &err);
    CHECK(s == FL_EINPUT && strstr(err.msg, "cannot be told apart"), "ambiguous axis: %s", err.msg);
    done(f, &p);
}

/* DeepSeek-V3 without q_lora_rank: input_layernorm feeds q_proj (the
 * declared variant), no q_a_layernorm; first layer dense. */
static void test_deepseek_q_proj(void)
{
    fixture *f = calloc(1, sizeof *f);
    for (int i = 0; i < 2; i++) {
        addf(f, BF, 1, H, 0, 0, "model.layers.%d.input_layernorm.weight", i);
        addf(f, BF, 1, H, 0, 0, "model.layers.%d.post_attention_layernorm.weight", i);
        addf(f, BF, 2, 24, H, 0, "model.layers.%d.self_attn.q_proj.weight", i);
        addf(f, BF, 2, 8, H, 0, "model.layers.%d.self_attn.kv_a_proj_with_mqa.weight", i);
        addf(f, BF, 1, 6, 0, 0, "model.layers.%d.self_attn.kv_a_layernorm.weight", i);
        addf(f, BF, 2, 16, 6, 0, "model.layers.%d.self_attn.kv_b_proj.weight", i);
    }
    dense_mlp(f, "model.", 0);
    add(f, "model.layers.1.mlp.gate.weight", BF, 2, 2, H, 0);
    add(f, "model.layers.1.mlp.gate.e_score_correction_bias", ST_F32, 1, 2, 0, 0);
    add(f, "model.layers.1.mlp.experts.gate_up_proj", BF, 3, 2, 10, H);
    add(f, "model.layers.1.mlp.shared_experts.gate_proj.weight", BF, 2, 5, H, 0);
    add(f, "model.layers.1.mlp.shared_experts.up_proj.weight", BF, 2, 5, H, 0);
    embed_norm(f, "model.", 1);
    fold_plan p;
    fl_error err = {0};
    fl_status s = decide(f, "{\"model_type\":\"deepseek_v3\",\"num_hidden_layers\":2,\"hidden_size\":8,"
                            "\"num_local_experts\":2,\"q_lora_rank\":null,\"first_k_dense_replace\":1}",
                         NULL, &p, &err);
    CHECK(s == FL_OK, "deepseek: %s", err.msg);
    if (s == FL_OK) {
        expect_group(&p, "model.layers.0.input_layernorm.weight",
                     "model.layers.0.self_attn.q_proj.weight model.layers.0.self_attn.kv_a_proj_with_mqa.weight");
        CHECK(group_of(&p, "model.layers.0.input_layernorm.weight")->note != NULL, "the variant says why");
        expect_group(&p, "model.layers.1.self_attn.kv_a_layernorm.weight", "model.layers.1.self_attn.kv_b_proj.weight");
        expect_group(&p, "model.layers.1.post_attention_layernorm.weight",
                     "model.layers.1.mlp.gate.weight model.layers.1.mlp.experts.gate_up_proj@2 "
                     "model.layers.1.mlp.shared_experts.gate_proj.weight "
                     "model.layers.1.mlp.shared_experts.up_proj.weight");
        const out_tensor *o = out_named(&p, "model.layers.1.mlp.gate.e_score_correction_bias");
        CHECK(o && o->op == OUT_COPY, "e_score_correction_bias is never scaled");
    }
    done(f, &p);
}

/* A llama config with a stray text_config: the plan reads the top level. */
static void test_stray_text_config(void)
{
    fixture *f = calloc(1, sizeof *f);
    llama_layer(f, "model.", 0, 0);
    dense_mlp(f, "model.", 0);
    embed_norm(f, "model.", 1);
    fold_plan p;
    fl_error err = {0};
    fl_status s = decide(f, "{\"model_type\":\"llama\",\"num_hidden_layers\":1,\"hidden_size\":8,"
                            "\"text_config\":{\"model_type\":\"gemma3_text\",\"num_hidden_layers\":5,"
                            "\"hidden_size\":64,\"tie_word_embeddings\":true}}", NULL, &p, &err);
    CHECK(s == FL_OK, "stray text_config: %s", err.msg);
    if (s == FL_OK) {
        CHECK(strcmp(p.arch->model_type, "llama") == 0 && p.n_layers == 1 && p.hidden == 8,
              "stray text_config changed the plan: %s, %ld layers", p.arch->model_type, p.n_layers);
        CHECK(!p.untie && group_of(&p, "model.norm.weight")->gain == GAIN_W, "tie and gain from llama");
    }
    done(f, &p);
}

/* Multimodal Gemma 3 (a composite type): the text row from text_config,
 * the model.language_model. layout, the vision tower passed through. */
static void test_gemma3_composite(void)
{
    fixture *f = calloc(1, sizeof *f);
    const char *pre = "model.language_model.";
    llama_layer(f, pre, 0, 1);
    dense_mlp(f, pre, 0);
    add(f, "model.language_model.layers.0.pre_feedforward_layernorm.weight", BF, 1, H, 0, 0);
    add(f, "model.language_model.layers.0.post_feedforward_layernorm.weight", BF, 1, H, 0, 0);
    embed_norm(f, pre, 0);
    add(f, "model.vision_tower.vision_model.post_layernorm.weight", BF, 1, 4, 0, 0);
    fold_plan p;
    fl_error err = {0};
    fl_status s = decide(f, "{\"model_type\":\"gemma3\",\"text_config\":{\"model_type\":\"gemma3_text\","
                            "\"num_hidden_layers\":1,\"hidden_size\":8}}", NULL, &p, &err);
    CHECK(s == FL_OK, "gemma3: %s", err.msg);
    if (s == FL_OK) {
        CHECK(strcmp(p.arch->model_type, "gemma3_text") == 0 && strcmp(p.prefix, pre) == 0, "row %s prefix %s",
              p.arch->model_type, p.prefix);
        expect_group(&p, "model.language_model.layers.0.input_layernorm.weight",
                     "model.language_model.layers.0.self_attn.q_proj.weight "
                     "model.language_model.layers.0.self_attn.k_proj.weight "
                     "model.language_model.layers.0.self_attn.v_proj.weight");
        const out_tensor *o = out_named(&p, "model.vision_tower.vision_model.post_layernorm.weight");
        CHECK(o && o->op == OUT_COPY, "vision tower passes through");
        CHECK(p.untie && strcmp(p.head_name, "lm_head.weight") == 0, "tied by gemma3_text's default");
    }
    done(f, &p);
}

/* Quantized consumers: refused naming the format; --partial keeps the
 * norm that feeds them (gpt-oss-like MXFP4 experts under a qwen3_moe row)
 * and writes no marker. */
static void test_quantized(void)
{
    static const struct {
        const char *extra, *format;
    } cases[] = {
        {"model.layers.0.mlp.experts.gate_up_proj_blocks", "MXFP4"},
        {"model.layers.0.mlp.experts.gate_up_proj.weight_packed", "compressed-tensors"},
    };
    for (size_t c = 0; c < 2; c++) {
        for (int partial = 0; partial <= 1; partial++) {
            fixture *f = calloc(1, sizeof *f);
            llama_layer(f, "model.", 0, 1);
            add(f, "model.layers.0.mlp.gate.weight", BF, 2, 2, H, 0);
            add(f, "model.layers.0.mlp.experts.gate_up_proj", BF, 3, 2, 2 * I, H);
            add(f, cases[c].extra, ST_U8, 3, 2, 2 * I, H / 2);
            embed_norm(f, "model.", 1);
            fold_plan p;
            fl_error err = {0};
            plan_options opt = {.partial = partial};
            fl_status s = decide(f, "{\"model_type\":\"qwen3_moe\",\"num_hidden_layers\":1,\"hidden_size\":8,"
                                    "\"num_experts\":2}", &opt, &p, &err);
            if (!partial) {
                CHECK(s == FL_EINPUT && strstr(err.msg, cases[c].format) && strstr(err.msg, "--partial"),
                      "refusal names %s and --partial: %s", cases[c].format, err.msg);
            } else {
                CHECK(s == FL_OK, "--partial: %s", err.msg);
                if (s == FL_OK) {
                    CHECK(kept(&p, "model.layers.0.post_attention_layernorm.weight") && p.n_quantized_kept == 1,
                          "post_attention_layernorm kept for its quantized experts");
                    CHECK(!group_of(&p, "model.layers.0.post_attention_layernorm.weight"), "and not folded");
                    CHECK(group_of(&p, "model.layers.0.input_layernorm.weight"), "input_layernorm still folded");
                    CHECK(!p.marker, "no marker with a norm kept for quantization");
                    const out_tensor *o = out_named(&p, "model.layers.0.mlp.gate.weight");
                    CHECK(o && o->op == OUT_COPY, "the router of a kept norm is copied");
                }
            }
            done(f, &p);
        }
    }
}

/* A test-only row in the shape of Gemma 4 (docs/architectures.md
 * §families-2026): KV-shared tail layers read only q_proj, full-attention
 * layers with attention_k_eq_v have no v_proj, others q/k/v; a 1 + w input
 * norm next to a w pre-MLP norm (gain per class). */
static void test_variants_by_layer(void)
{
    static const arch_norm_class W = {"test w", GAIN_W}, OPW = {"test 1+w", GAIN_ONE_PLUS_W};
    static const arch_info row = {
        .model_type = "testfour",
        .norm = &OPW,
        .folds = {{.norm = "input_layernorm", .consumers = {{"self_attn.q_proj", IN_LINEAR}},
                   .when = {{.kind = WHEN_TAIL, .key = "num_kv_shared_layers"}}, .note = "KV-shared"},
                  {.norm = "input_layernorm",
                   .consumers = {{"self_attn.q_proj", IN_LINEAR}, {"self_attn.k_proj", IN_LINEAR}},
                   .when = {{.kind = WHEN_FLAG, .key = "attention_k_eq_v"},
                            {.kind = WHEN_LAYER_TYPE, .key = "layer_types", .value = "full_attention"}}},
                  {.norm = "input_layernorm",
                   .consumers = {{"self_attn.q_proj", IN_LINEAR}, {"self_attn.k_proj", IN_LINEAR},
                                 {"self_attn.v_proj", IN_LINEAR}}},
                  {.norm = "post_attention_layernorm",
                   .consumers = {{"mlp.gate_proj", IN_LINEAR}, {"mlp.up_proj", IN_LINEAR}}, .cls = &W}},
    };
    fixture *f = calloc(1, sizeof *f);
    for (int i = 0; i < 4; i++) {
        llama_layer(f, "model.", i, 0);
        dense_mlp(f, "model.", i);
    }
    /* layer 1 is full attention (no v_proj), layers 2-3 share KV (q only) */
    char *drop[] = {"model.layers.1.self_attn.v_proj.weight", "model.layers.2.self_attn.k_proj.weight",
                    "model.layers.2.self_attn.v_proj.weight", "model.layers.3.self_attn.k_proj.weight",
                    "model.layers.3.self_attn.v_proj.weight"};
    for (size_t d = 0; d < sizeof drop / sizeof drop[0]; d++)
        for (size_t i = 0; i < f->n; i++)
            if (strcmp(f->names[i], drop[d]) == 0)
                snprintf(f->names[i], sizeof f->names[i], "unrelated.%zu", d);
    embed_norm(f, "model.", 1);
    plan_options opt = {.custom = &row};
    fold_plan p;
    fl_error err = {0};
    fl_status s = decide(f, "{\"model_type\":\"testfour\",\"num_hidden_layers\":4,\"hidden_size\":8,"
                            "\"attention_k_eq_v\":true,\"num_kv_shared_layers\":2,\"layer_types\":"
                            "[\"sliding_attention\",\"full_attention\",\"sliding_attention\",\"full_attention\"]}",
                         &opt, &p, &err);
    CHECK(s == FL_OK, "variants: %s", err.msg);
    if (s == FL_OK) {
        expect_group(&p, "model.layers.0.input_layernorm.weight",
                     "model.layers.0.self_attn.q_proj.weight model.layers.0.self_attn.k_proj.weight "
                     "model.layers.0.self_attn.v_proj.weight");
        expect_group(&p, "model.layers.1.input_layernorm.weight",
                     "model.layers.1.self_attn.q_proj.weight model.layers.1.self_attn.k_proj.weight");
        expect_group(&p, "model.layers.2.input_layernorm.weight", "model.layers.2.self_attn.q_proj.weight");
        expect_group(&p, "model.layers.3.input_layernorm.weight", "model.layers.3.self_attn.q_proj.weight");
        CHECK(group_of(&p, "model.layers.3.input_layernorm.weight")->gain == GAIN_ONE_PLUS_W &&
                  group_of(&p, "model.layers.3.post_attention_layernorm.weight")->gain == GAIN_W,
              "gain per class: input 1+w, post-attention w");
        const out_tensor *o = out_named(&p, "model.layers.3.post_attention_layernorm.weight");
        CHECK(!o, "dropped");
    }
    done(f, &p);
}

/* Refusals: a missing consumer, a present norm no rule covers. */
static void test_refusals(void)
{
    fixture *f = calloc(1, sizeof *f);
    llama_layer(f, "model.", 0, 0);
    addf(f, BF, 2, I, H, 0, "model.layers.0.mlp.gate_proj.weight");
    embed_norm(f, "model.", 1);
    fold_plan p;
    fl_error err = {0};
    fl_status s = decide(f, "{\"model_type\":\"llama\",\"num_hidden_layers\":1,\"hidden_size\":8}", NULL, &p, &err);
    CHECK(s == FL_EINPUT && strstr(err.msg, "model.layers.0.mlp.up_proj.weight") && strstr(err.msg, "missing"),
          "missing consumer: %s", err.msg);
    done(f, &p);
    /* qwen3_moe layer 0 is dense by mlp_only_layers, but it stores experts
     * and no gate_proj: the dense variant's consumer is missing. */
    f = calloc(1, sizeof *f);
    llama_layer(f, "model.", 0, 0);
    add(f, "model.layers.0.mlp.gate.weight", BF, 2, 2, H, 0);
    embed_norm(f, "model.", 1);
    s = decide(f, "{\"model_type\":\"qwen3_moe\",\"num_hidden_layers\":1,\"hidden_size\":8,\"num_experts\":2,"
                  "\"mlp_only_layers\":[0]}", NULL, &p, &err);
    CHECK(s == FL_EINPUT && strstr(err.msg, "mlp.gate_proj"), "dense layer without gate_proj: %s", err.msg);
    done(f, &p);
}

/* The sparse layers of a 5-layer config by rule r, as "01..." against want. */
static void check_sparse_layers(const arch_moe_rule *r, const char *json, const char *want)
{
    ckpt_config cfg;
    fl_error err = {0};
    fl_status st = ckpt_config_parse("mem/config.json", json, strlen(json), &cfg, &err);
    CHECK(st == FL_OK, "%s", err.msg);
    if (st != FL_OK)
        return;
    ckpt_view v = ckpt_config_view(&cfg, 0);
    const char *key;
    long E = arch_expert_count(r, v, &key);
    char got[6] = {0};
    for (long i = 0; i < 5; i++)
        got[i] = arch_is_moe_layer(r, v, i, E) ? '1' : '0';
    CHECK(strcmp(got, want) == 0, "%s: sparse layers %s, expected %s", json, got, want);
    ckpt_config_free(&cfg);
}

/* A rule with a per-layer type list (mlp_layer_types) follows the list
 * when the config has one, else first_dense, whose absent key reads as the
 * rule's default (docs/architectures.md §glm4_moe_lite, §deepseek_v32). */
static void test_moe_type_list(void)
{
    static const arch_moe_rule r = {.experts = {"n_routed_experts"}, .type_list = "mlp_layer_types",
                                    .first_dense = "first_k_dense_replace", .first_dense_default = 3};
    static const struct {
        const char *json, *want;
    } cases[] = {
        {"{\"model_type\":\"x\",\"n_routed_experts\":4}", "00011"},
        {"{\"model_type\":\"x\",\"n_routed_experts\":4,\"first_k_dense_replace\":1}", "01111"},
        {"{\"model_type\":\"x\",\"n_routed_experts\":4,\"first_k_dense_replace\":1,\"mlp_layer_types\":"
         "[\"dense\",\"sparse\",\"dense\",\"sparse\",\"dense\"]}", "01010"},
        {"{\"model_type\":\"x\",\"n_routed_experts\":0,\"mlp_layer_types\":[\"sparse\",\"sparse\",\"sparse\",\"sparse\",\"sparse\"]}",
         "00000"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
        check_sparse_layers(&r, cases[c].json, cases[c].want);
}

/* ERNIE 4.5 MoE's range rule: sparse from moe_layer_start_index to
 * moe_layer_end_index, where only -1 means the last layer
 * (Ernie4_5_MoeConfig); any other negative end leaves no layer sparse
 * (docs/architectures.md §ernie4_5_moe). */
static void test_moe_end_index(void)
{
    static const arch_moe_rule r = {.experts = {"moe_num_experts"}, .first_dense = "moe_layer_start_index",
                                    .first_dense_default = 1, .last_sparse = "moe_layer_end_index",
                                    .step = "moe_layer_interval", .step_offset = 1};
    static const struct {
        const char *json, *want;
    } cases[] = {
        {"{\"model_type\":\"x\",\"moe_num_experts\":4}", "01111"},
        {"{\"model_type\":\"x\",\"moe_num_experts\":4,\"moe_layer_end_index\":-1}", "01111"},
        {"{\"model_type\":\"x\",\"moe_num_experts\":4,\"moe_layer_end_index\":2}", "01100"},
        {"{\"model_type\":\"x\",\"moe_num_experts\":4,\"moe_layer_end_index\":-100}", "00000"},
        {"{\"model_type\":\"x\",\"moe_num_experts\":4,\"moe_layer_interval\":2}", "01010"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
        check_sparse_layers(&r, cases[c].json, cases[c].want);
}

/* zoo issue 13 (docs/architectures.md §vlm): Mllama's cross-attention
 * layers by MllamaTextConfig's default list when the key is null; the
 * LLaVA wrappers' text row from text_config (an unknown type refused) and
 * their tie flag (a false top level yields to text_config's). */
static void mllama_cross_layer(fixture *f, const char *pre, int i)
{
    addf(f, BF, 1, H, 0, 0, "%slayers.%d.input_layernorm.weight", pre, i);
    addf(f, BF, 1, H, 0, 0, "%slayers.%d.post_attention_layernorm.weight", pre, i);
    static const char *const mats[] = {"q_proj", "k_proj", "v_proj", "o_proj"};
    for (int k = 0; k < 4; k++)
        addf(f, BF, 2, H, H, 0, "%slayers.%d.cross_attn.%s.weight", pre, i, mats[k]);
    addf(f, BF, 1, 4, 0, 0, "%slayers.%d.cross_attn.q_norm.weight", pre, i);
    addf(f, BF, 1, 4, 0, 0, "%slayers.%d.cross_attn.k_norm.weight", pre, i);
    addf(f, BF, 1, 1, 0, 0, "%slayers.%d.cross_attn_attn_gate", pre, i);
    dense_mlp(f, pre, i);
}

/* WHEN_[NOT_]LISTED's list: the config's, else the row's default; no list
 * at all (absent without a default, or not an array) satisfies neither
 * condition (LFM2's full_attn_idxs has no default). */
static void test_listed(void)
{
    static const struct {
        const char *json, *def;
        long i;
        int want;
    } cases[] = {
        {"{\"model_type\":\"x\",\"l\":[1,3]}", NULL, 3, 1},
        {"{\"model_type\":\"x\",\"l\":[1,3]}", "2", 2, 0},
        {"{\"model_type\":\"x\",\"l\":null}", "3,8,13", 13, 1},
        {"{\"model_type\":\"x\"}", "3,8,13", 4, 0},
        {"{\"model_type\":\"x\"}", NULL, 0, -1},
        {"{\"model_type\":\"x\",\"l\":5}", "5", 5, -1},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        ckpt_config cfg;
        fl_error err = {0};
        fl_status st = ckpt_config_parse("mem/config.json", cases[c].json, strlen(cases[c].json), &cfg, &err);
        CHECK(st == FL_OK, "%s", err.msg);
        if (st != FL_OK)
            continue;
        int got = ckpt_view_listed(ckpt_config_view(&cfg, 0), "l", cases[c].def, cases[c].i);
        CHECK(got == cases[c].want, "listed case %zu: %d, expected %d", c, got, cases[c].want);
        ckpt_config_free(&cfg);
    }
}

static void test_vlm_wrappers(void)
{
    const char *pre = "language_model.model.";
    fixture *f = calloc(1, sizeof *f);
    for (int i = 0; i < 4; i++) {
        if (i == 3)
            mllama_cross_layer(f, pre, i);
        else {
            llama_layer(f, pre, i, 0);
            dense_mlp(f, pre, i);
        }
    }
    embed_norm(f, pre, 0);
    add(f, "language_model.lm_head.weight", BF, 2, V, H, 0);
    fold_plan p;
    fl_error err = {0};
    fl_status s = decide(f, "{\"model_type\":\"mllama\",\"text_config\":{\"model_type\":\"mllama_text_model\","
                            "\"num_hidden_layers\":4,\"hidden_size\":8,\"cross_attention_layers\":null}}",
                         NULL, &p, &err);
    CHECK(s == FL_OK, "mllama: %s", err.msg);
    if (s == FL_OK) {
        expect_group(&p, "language_model.model.layers.3.input_layernorm.weight",
                     "language_model.model.layers.3.cross_attn.q_proj.weight");
        expect_group(&p, "language_model.model.layers.2.input_layernorm.weight",
                     "language_model.model.layers.2.self_attn.q_proj.weight "
                     "language_model.model.layers.2.self_attn.k_proj.weight "
                     "language_model.model.layers.2.self_attn.v_proj.weight");
        CHECK(kept(&p, "language_model.model.layers.3.cross_attn.q_norm.weight"), "cross q_norm kept");
        CHECK(!p.untie && !p.tied, "mllama is untied");
    }
    plan_free(&p);
    ckpt_config_free(&f->cfg);
    s = decide(f, "{\"model_type\":\"llava\",\"text_config\":{\"model_type\":\"olmo\",\"num_hidden_layers\":4,"
                  "\"hidden_size\":8}}", NULL, &p, &err);
    CHECK(s == FL_EINPUT && strstr(err.msg, "'olmo'") && strstr(err.msg, "llava"), "unknown text type: %s", err.msg);
    done(f, &p);

    f = calloc(1, sizeof *f);
    llama_layer(f, pre, 0, 0);
    dense_mlp(f, pre, 0);
    embed_norm(f, pre, 0);
    static const char *const cfgs[] = {
        "{\"model_type\":\"llava\",\"tie_word_embeddings\":false,\"text_config\":{\"model_type\":\"llama\","
        "\"num_hidden_layers\":1,\"hidden_size\":8,\"tie_word_embeddings\":true}}",
        "{\"model_type\":\"internvl\",\"tie_word_embeddings\":false,\"text_config\":{\"model_type\":\"llama\","
        "\"num_hidden_layers\":1,\"hidden_size\":8,\"tie_word_embeddings\":true}}"};
    for (int k = 0; k < 2; k++) {
        s = decide(f, cfgs[k], NULL, &p, &err);
        if (k == 0)
            CHECK(s == FL_OK && p.untie, "llava: text_config's true wins over a false top: %s", err.msg);
        else
            CHECK(s == FL_EINPUT && strstr(err.msg, "language_model.lm_head"), "internvl: the top decides: %s",
                  err.msg);
        plan_free(&p);
        ckpt_config_free(&f->cfg);
    }
    free(f);
}

int main(void)
{
    test_moe_type_list();
    test_moe_end_index();
    test_llama_tied();
    test_gemma2_keeps();
    test_qwen2_moe("num_experts");
    test_qwen2_moe("num_local_experts");
    test_mixtral_fused();
    test_qwen3_moe_middle_axis();
    test_deepseek_q_proj();
    test_stray_text_config();
    test_gemma3_composite();
    test_quantized();
    test_variants_by_layer();
    test_refusals();
    test_listed();
    test_vlm_wrappers();
    if (failures) {
        fprintf(stderr, "test_plan: %d failure(s)\n", failures);
        return 1;
    }
    printf("test_plan: ok\n");
    return 0;
}
