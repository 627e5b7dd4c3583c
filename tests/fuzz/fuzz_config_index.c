/* fuzz_config_index.c — libFuzzer harness for config.json and
 * model.safetensors.index.json.
 *
 * The input is config.json, optionally followed by "\n@@@\n" and the
 * index, and optionally ending with "\n@@plan\n" and a --plan file (the
 * custom architecture parser).  They are written into a scratch checkpoint directory that already
 * holds valid shards of a tiny Llama (model.safetensors, two hub-style
 * shards, a copy in sub/, and a decoy outside the directory), so the fuzzer
 * spends its time on the JSON files and the index's cross-checks. */
#include "fuzz_ckpt_common.h"

static char dir[128], cfg_path[160], idx_path[160], plan_path[160];

/* Tiny Llama tensors: hidden 4, intermediate 6, vocab 8, one layer. */
static const struct { const char *name; int rows, cols; int shard; } tiny[] = {
    {"model.embed_tokens.weight", 8, 4, 0},
    {"model.layers.0.input_layernorm.weight", 4, 0, 0},
    {"model.layers.0.self_attn.q_proj.weight", 4, 4, 1},
    {"model.layers.0.self_attn.k_proj.weight", 4, 4, 0},
    {"model.layers.0.self_attn.v_proj.weight", 4, 4, 1},
    {"model.layers.0.self_attn.o_proj.weight", 4, 4, 0},
    {"model.layers.0.post_attention_layernorm.weight", 4, 0, 1},
    {"model.layers.0.mlp.gate_proj.weight", 6, 4, 0},
    {"model.layers.0.mlp.up_proj.weight", 6, 4, 1},
    {"model.layers.0.mlp.down_proj.weight", 4, 6, 0},
    {"model.norm.weight", 4, 0, 1},
    {"lm_head.weight", 8, 4, 1},
};
#define N_TINY (sizeof tiny / sizeof tiny[0])

/* Writes the tensors of `shard` (-1: all) as a safetensors file. */
static void write_shard(const char *path, int shard)
{
    st_tensor ts[N_TINY];
    size_t n = 0, order[N_TINY];
    for (size_t i = 0; i < N_TINY; i++) {
        if (shard >= 0 && tiny[i].shard != shard) continue;
        st_tensor *t = &ts[n++];
        memset(t, 0, sizeof *t);
        t->name = (char *)tiny[i].name;
        t->dtype = ST_F32;
        t->ndim = tiny[i].cols ? 2 : 1;
        t->shape[0] = (uint64_t)tiny[i].rows;
        t->shape[1] = (uint64_t)tiny[i].cols;
        t->end = 4ULL * (uint64_t)tiny[i].rows * (uint64_t)(tiny[i].cols ? tiny[i].cols : 1);
    }
    char *hdr;
    size_t hsz;
    fl_error err;
    if (st_layout(path, ts, n, NULL, 0, order, &hdr, &hsz, &err) != FL_OK) {
        fprintf(stderr, "%s\n", err.msg);
        abort();
    }
    uint64_t total = ts[order[n - 1]].end;
    char *file = malloc(hsz + total);
    memcpy(file, hdr, hsz);
    float *f = (float *)(file + hsz);
    for (uint64_t i = 0; i < total / 4; i++)
        f[i] = 0.5f + (float)(i % 7) * 0.25f;
    fuzz_write(path, file, hsz + total);
    free(file);
    free(hdr);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc; (void)argv;
    const char *root = fuzz_scratch();
    char p[256];
    snprintf(dir, sizeof dir, "%s/ck", root);
    mkdir(dir, 0755);
    snprintf(p, sizeof p, "%s/sub", dir);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    write_shard(p, -1);
    snprintf(p, sizeof p, "%s/model-00001-of-00002.safetensors", dir);
    write_shard(p, 0);
    snprintf(p, sizeof p, "%s/model-00002-of-00002.safetensors", dir);
    write_shard(p, 1);
    snprintf(p, sizeof p, "%s/sub/model-00001-of-00002.safetensors", dir);
    write_shard(p, 0);
    snprintf(p, sizeof p, "%s/outside.safetensors", root);
    write_shard(p, -1);
    snprintf(cfg_path, sizeof cfg_path, "%s/config.json", dir);
    snprintf(idx_path, sizeof idx_path, "%s/model.safetensors.index.json", dir);
    snprintf(plan_path, sizeof plan_path, "%s/plan.json", root);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *plan_sep = "\n@@plan\n";
    const uint8_t *plan = memmem(data, size, plan_sep, 8);
    if (plan) {
        fuzz_write(plan_path, plan + 8, size - (size_t)(plan - data) - 8);
        size = (size_t)(plan - data);
    }
    const uint8_t *cut = memmem(data, size, "\n@@@\n", 5);
    size_t cfg_len = cut ? (size_t)(cut - data) : size;
    fuzz_write(cfg_path, data, cfg_len);
    if (cut)
        fuzz_write(idx_path, cut + 5, size - cfg_len - 5);
    else
        unlink(idx_path);
    exercise_dir(dir, plan ? plan_path : NULL);
    return 0;
}
