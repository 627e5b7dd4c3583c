/* gen_fixture.c — writes a Llama-shaped Hugging Face checkpoint for benchmarks.
 *
 * The output directory looks like what `save_pretrained` leaves behind:
 * config.json, generation_config.json and either one model.safetensors or
 * model-0000k-of-0000n.safetensors shards plus model.safetensors.index.json.
 * Tensor names, shapes and the shard split follow transformers' Llama
 * (modeling_llama.py) and huggingface_hub's greedy 5 GB (decimal) sharding,
 * so `--preset 1b` is shaped like Llama-3.2-1B and `--preset 8b` like
 * Llama-3.1-8B (same four shard sizes).
 *
 * Values are deterministic pseudo-random numbers with trained-looking
 * magnitudes: linear and embedding weights ~N(0, 0.02), RMSNorm gains
 * uniform in [0.5, 2.5).  Each tensor has its own generator seeded from its
 * name, so its bytes do not depend on the shard layout.
 *
 * The safetensors writer is deliberately independent of the flashify
 * library (it is a second implementation of the layout rules of
 * safetensors/src/tensor.rs `prepare`: dtype descending, then name
 * ascending; JSON padded with spaces to a multiple of 8), so that a
 * benchmark or test fixture is not produced by the code under test.
 *
 * Speed matters (a 16 GB fixture should not take minutes): normal samples
 * come from a 65536-entry table indexed by 16 random bits, four per
 * xorshift64 step, and data is written in 16 MiB blocks by a second thread
 * while the next block is generated. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------------
 * Model description */

typedef struct {
    int layers;          /* num_hidden_layers */
    int hidden;          /* hidden_size */
    int intermediate;    /* intermediate_size */
    int heads;           /* num_attention_heads */
    int kv_heads;        /* num_key_value_heads */
    int head_dim;        /* head_dim (hidden/heads in stock Llama) */
    int vocab;           /* vocab_size */
    int tied;            /* tie_word_embeddings: no lm_head.weight on disk */
    int rope_llama3;     /* write Llama 3.1 rope_scaling (else null) */
    int max_pos;         /* max_position_embeddings */
    int bos, eos;        /* token ids (must be < vocab) */
    double rope_theta;
    int f32;             /* dtype F32 instead of BF16 */
    uint64_t max_shard;  /* greedy shard limit in bytes; 0 = one file */
    uint64_t seed;
} Config;

typedef enum { INIT_NORMAL, INIT_NORM_GAIN } Init;

typedef struct {
    char name[96];
    int ndim;
    uint64_t shape[2];
    uint64_t nbytes;
    Init init;
    int shard;           /* 0-based output file */
    uint64_t begin;      /* data offset within its shard */
} Tensor;

static const char *progname = "gen_fixture";

static void die(const char *fmt, const char *arg)
{
    fprintf(stderr, "%s: ", progname);
    fprintf(stderr, fmt, arg);
    fputc('\n', stderr);
    exit(1);
}

static void preset(Config *c, const char *name)
{
    memset(c, 0, sizeof *c);
    c->seed = 1234;
    c->rope_theta = 500000.0;
    c->bos = 128000; c->eos = 128001;   /* Llama 3 tokenizer */
    if (strcmp(name, "tiny") == 0) {
        /* Small enough for unit-sized tests, yet every dimension differs so
         * a transposed fold shows up as a shape error. */
        c->layers = 2; c->hidden = 64; c->intermediate = 176; c->heads = 4;
        c->kv_heads = 2; c->head_dim = 16; c->vocab = 256; c->tied = 1;
        c->max_pos = 512; c->rope_theta = 10000.0;
        c->bos = 1; c->eos = 2;
    } else if (strcmp(name, "1b") == 0) {
        /* meta-llama/Llama-3.2-1B config.json */
        c->layers = 16; c->hidden = 2048; c->intermediate = 8192; c->heads = 32;
        c->kv_heads = 8; c->head_dim = 64; c->vocab = 128256; c->tied = 1;
        c->rope_llama3 = 1; c->max_pos = 131072;
    } else if (strcmp(name, "8b") == 0) {
        /* meta-llama/Llama-3.1-8B config.json; shipped as 4 shards of the
         * hub's default 5 GB limit. */
        c->layers = 32; c->hidden = 4096; c->intermediate = 14336; c->heads = 32;
        c->kv_heads = 8; c->head_dim = 128; c->vocab = 128256; c->tied = 0;
        c->rope_llama3 = 1; c->max_pos = 131072; c->max_shard = 5000000000ULL;
    } else {
        die("unknown preset '%s' (tiny, 1b, 8b)", name);
    }
}

/* ------------------------------------------------------------------------
 * Tensor list, in LlamaForCausalLM state_dict order (the order the hub
 * shards in). */

static void add(Tensor *t, int *n, const Config *c, const char *name,
                uint64_t rows, uint64_t cols, Init init)
{
    Tensor *x = &t[(*n)++];
    memset(x, 0, sizeof *x);
    snprintf(x->name, sizeof x->name, "%s", name);
    x->init = init;
    x->ndim = cols ? 2 : 1;
    x->shape[0] = rows;
    x->shape[1] = cols;
    x->nbytes = rows * (cols ? cols : 1) * (c->f32 ? 4 : 2);
}

static Tensor *build_tensors(const Config *c, int *n_out)
{
    int cap = c->layers * 9 + 3, n = 0;
    Tensor *t = calloc((size_t)cap, sizeof *t);
    if (!t) die("%s", "out of memory");
    uint64_t H = c->hidden, I = c->intermediate, V = c->vocab;
    uint64_t Q = (uint64_t)c->heads * c->head_dim, KV = (uint64_t)c->kv_heads * c->head_dim;
    char nm[96];
    add(t, &n, c, "model.embed_tokens.weight", V, H, INIT_NORMAL);
    for (int i = 0; i < c->layers; i++) {
#define L(suffix, r, k, init) \
        snprintf(nm, sizeof nm, "model.layers.%d.%s", i, suffix); add(t, &n, c, nm, r, k, init)
        L("self_attn.q_proj.weight", Q, H, INIT_NORMAL);
        L("self_attn.k_proj.weight", KV, H, INIT_NORMAL);
        L("self_attn.v_proj.weight", KV, H, INIT_NORMAL);
        L("self_attn.o_proj.weight", H, Q, INIT_NORMAL);
        L("mlp.gate_proj.weight", I, H, INIT_NORMAL);
        L("mlp.up_proj.weight", I, H, INIT_NORMAL);
        L("mlp.down_proj.weight", H, I, INIT_NORMAL);
        L("input_layernorm.weight", H, 0, INIT_NORM_GAIN);
        L("post_attention_layernorm.weight", H, 0, INIT_NORM_GAIN);
#undef L
    }
    add(t, &n, c, "model.norm.weight", H, 0, INIT_NORM_GAIN);
    if (!c->tied) add(t, &n, c, "lm_head.weight", V, H, INIT_NORMAL);
    *n_out = n;
    return t;
}

/* Greedy split as huggingface_hub split_torch_state_dict_into_shards: walk
 * in state_dict order, start a new shard when the next tensor would push
 * the current one past the limit (a tensor larger than the limit gets a
 * shard of its own).  Returns the number of shards. */
static int assign_shards(Tensor *t, int n, uint64_t max_shard)
{
    int shard = 0;
    uint64_t cur = 0;
    for (int i = 0; i < n; i++) {
        if (max_shard && cur > 0 && cur + t[i].nbytes > max_shard) {
            shard++;
            cur = 0;
        }
        t[i].shard = shard;
        cur += t[i].nbytes;
    }
    return shard + 1;
}

/* ------------------------------------------------------------------------
 * Random values */

static uint64_t hash_name(const char *s, uint64_t seed)
{
    uint64_t h = 1469598103934665603ULL ^ seed;   /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    h ^= h >> 33;                                 /* splitmix finaliser */
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    return h ? h : 0x9e3779b97f4a7c15ULL;         /* xorshift needs != 0 */
}

static inline uint64_t xorshift64(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static uint16_t f32_to_bf16(float f)   /* round to nearest even; finite only */
{
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fff + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

/* N(0, 0.02) quantiles at the 65536 midpoints, so a 16-bit index is an
 * exact sample from a 65536-point discretisation of the normal. */
static float normal_tab[65536];
static uint16_t normal_tab_bf16[65536];

/* Inverse standard normal CDF by bisection on erfc (slow, runs 65536 times
 * once at start-up, well under a second). */
static double inv_normal(double p)
{
    double lo = -10, hi = 10;
    for (int k = 0; k < 80; k++) {
        double mid = 0.5 * (lo + hi);
        if (0.5 * erfc(-mid / sqrt(2.0)) < p) lo = mid; else hi = mid;
    }
    return 0.5 * (lo + hi);
}

static void init_tables(void)
{
    for (int k = 0; k < 32768; k++) {
        float v = (float)(0.02 * inv_normal((k + 0.5) / 65536.0));
        normal_tab[k] = v;                 /* symmetric: exact mirror */
        normal_tab[65535 - k] = -v;
    }
    for (int k = 0; k < 65536; k++) normal_tab_bf16[k] = f32_to_bf16(normal_tab[k]);
}

/* Fills `n` elements of tensor data from the tensor's generator `rng`,
 * which carries on across calls so a tensor can be written block by block. */
static void fill(void *buf, size_t n, Init init, int f32, uint64_t *rng)
{
    size_t i = 0;
    if (init == INIT_NORMAL && !f32) {
        uint16_t *o = buf;
        for (; i + 4 <= n; i += 4) {
            uint64_t r = xorshift64(rng);
            o[i] = normal_tab_bf16[r & 0xffff];
            o[i + 1] = normal_tab_bf16[(r >> 16) & 0xffff];
            o[i + 2] = normal_tab_bf16[(r >> 32) & 0xffff];
            o[i + 3] = normal_tab_bf16[r >> 48];
        }
        for (; i < n; i++) o[i] = normal_tab_bf16[xorshift64(rng) & 0xffff];
    } else if (init == INIT_NORMAL) {
        float *o = buf;
        for (; i + 4 <= n; i += 4) {
            uint64_t r = xorshift64(rng);
            /* perturb the low mantissa bits with the other draw so F32
             * values are not all from the 65536-point table */
            uint64_t s = xorshift64(rng);
            for (int k = 0; k < 4; k++) {
                float v = normal_tab[(r >> (16 * k)) & 0xffff];
                uint32_t u;
                memcpy(&u, &v, 4);
                u ^= (uint32_t)(s >> (16 * k)) & 0xff;
                memcpy(&o[i + k], &u, 4);
            }
        }
        for (; i < n; i++) o[i] = normal_tab[xorshift64(rng) & 0xffff];
    } else {
        for (; i < n; i++) {
            /* 24 random bits → uniform [0.5, 2.5) */
            float v = 0.5f + 2.0f * (float)(xorshift64(rng) >> 40) / 16777216.0f;
            if (f32) ((float *)buf)[i] = v;
            else ((uint16_t *)buf)[i] = f32_to_bf16(v);
        }
    }
}

/* ------------------------------------------------------------------------
 * Output */

static void write_all(int fd, const void *buf, size_t n, const char *path)
{
    const char *p = buf;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) die("write %s failed", path);
        p += w;
        n -= (size_t)w;
    }
}

static void write_text(const char *dir, const char *name, const char *text)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) die("cannot create %s", path);
    write_all(fd, text, strlen(text), path);
    if (close(fd) != 0) die("close %s failed", path);
}

static int cmp_name(const void *a, const void *b)
{
    /* byte order, like Rust's String Ord used by the reference writer */
    return strcmp((*(Tensor *const *)a)->name, (*(Tensor *const *)b)->name);
}

/* Growable string for JSON. */
typedef struct { char *p; size_t len, cap; } Buf;

static void bputs(Buf *b, const char *s)
{
    size_t n = strlen(s);
    if (b->len + n + 1 > b->cap) {
        b->cap = (b->len + n + 1) * 2;
        b->p = realloc(b->p, b->cap);
        if (!b->p) die("%s", "out of memory");
    }
    memcpy(b->p + b->len, s, n + 1);
    b->len += n;
}

static void bprintf(Buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void bprintf(Buf *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    bputs(b, tmp);
}

#define BLOCK (16u << 20)

/* Writes one shard: the tensors of shard `s`, sorted by name (all share one
 * dtype, so that is the reference writer's order), offsets contiguous. */
typedef struct { int fd; const void *buf; size_t n; const char *path; } Job;

static void *writer(void *arg)
{
    Job *j = arg;
    write_all(j->fd, j->buf, j->n, j->path);
    return NULL;
}

static uint64_t write_shard(const Config *c, Tensor *t, int n, int s,
                            const char *dir, const char *fname, void *blocks[2])
{
    Tensor **v = malloc((size_t)n * sizeof *v);
    if (!v) die("%s", "out of memory");
    int m = 0;
    for (int i = 0; i < n; i++) if (t[i].shard == s) v[m++] = &t[i];
    qsort(v, (size_t)m, sizeof *v, cmp_name);

    Buf j = {0};
    bputs(&j, "{\"__metadata__\":{\"format\":\"pt\"}");
    uint64_t off = 0;
    for (int i = 0; i < m; i++) {
        v[i]->begin = off;
        bprintf(&j, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[%llu", v[i]->name,
                c->f32 ? "F32" : "BF16", (unsigned long long)v[i]->shape[0]);
        if (v[i]->ndim == 2) bprintf(&j, ",%llu", (unsigned long long)v[i]->shape[1]);
        bprintf(&j, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
                (unsigned long long)(off + v[i]->nbytes));
        off += v[i]->nbytes;
    }
    bputs(&j, "}");
    while (j.len % 8) bputs(&j, " ");

    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, fname);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) die("cannot create %s", path);
    unsigned char n8[8];
    for (int k = 0; k < 8; k++) n8[k] = (unsigned char)((uint64_t)j.len >> (8 * k));
    write_all(fd, n8, 8, path);
    write_all(fd, j.p, j.len, path);

    /* Double buffering: a writer thread writes one block while this thread
     * fills the next, so generation and the kernel's copy overlap. */
    size_t esz = c->f32 ? 4 : 2;
    int cur = 0, busy = 0;
    pthread_t th;
    Job job;
    for (int i = 0; i < m; i++) {
        uint64_t rng = hash_name(v[i]->name, c->seed);
        uint64_t left = v[i]->nbytes / esz;
        while (left > 0) {
            size_t k = left < BLOCK / esz ? (size_t)left : BLOCK / esz;
            fill(blocks[cur], k, v[i]->init, c->f32, &rng);
            if (busy) pthread_join(th, NULL);
            job = (Job){fd, blocks[cur], k * esz, path};
            if (pthread_create(&th, NULL, writer, &job) != 0) die("%s", "pthread_create failed");
            busy = 1;
            cur ^= 1;
            left -= k;
        }
    }
    if (busy) pthread_join(th, NULL);
    if (close(fd) != 0) die("close %s failed", path);
    free(j.p);
    free(v);
    return 8 + j.len + off;
}

static void write_config(const Config *c, const char *dir)
{
    Buf b = {0};
    bputs(&b, "{\n  \"architectures\": [\n    \"LlamaForCausalLM\"\n  ],\n");
    bputs(&b, "  \"attention_bias\": false,\n  \"attention_dropout\": 0.0,\n");
    bprintf(&b, "  \"bos_token_id\": %d,\n  \"eos_token_id\": %d,\n", c->bos, c->eos);
    bprintf(&b, "  \"head_dim\": %d,\n", c->head_dim);
    bputs(&b, "  \"hidden_act\": \"silu\",\n");
    bprintf(&b, "  \"hidden_size\": %d,\n", c->hidden);
    bputs(&b, "  \"initializer_range\": 0.02,\n");
    bprintf(&b, "  \"intermediate_size\": %d,\n", c->intermediate);
    bprintf(&b, "  \"max_position_embeddings\": %d,\n", c->max_pos);
    bputs(&b, "  \"mlp_bias\": false,\n  \"model_type\": \"llama\",\n");
    bprintf(&b, "  \"num_attention_heads\": %d,\n", c->heads);
    bprintf(&b, "  \"num_hidden_layers\": %d,\n", c->layers);
    bprintf(&b, "  \"num_key_value_heads\": %d,\n", c->kv_heads);
    bputs(&b, "  \"pretraining_tp\": 1,\n  \"rms_norm_eps\": 1e-05,\n");
    if (c->rope_llama3)
        bputs(&b, "  \"rope_scaling\": {\n    \"factor\": 32.0,\n"
                  "    \"high_freq_factor\": 4.0,\n    \"low_freq_factor\": 1.0,\n"
                  "    \"original_max_position_embeddings\": 8192,\n"
                  "    \"rope_type\": \"llama3\"\n  },\n");
    else
        bputs(&b, "  \"rope_scaling\": null,\n");
    bprintf(&b, "  \"rope_theta\": %.1f,\n", c->rope_theta);
    bprintf(&b, "  \"tie_word_embeddings\": %s,\n", c->tied ? "true" : "false");
    bprintf(&b, "  \"torch_dtype\": \"%s\",\n", c->f32 ? "float32" : "bfloat16");
    bputs(&b, "  \"transformers_version\": \"4.45.0.dev0\",\n  \"use_cache\": true,\n");
    bprintf(&b, "  \"vocab_size\": %d\n}\n", c->vocab);
    write_text(dir, "config.json", b.p);
    b.len = 0;
    bprintf(&b, "{\n  \"_from_model_config\": true,\n  \"bos_token_id\": %d,\n"
            "  \"do_sample\": true,\n  \"eos_token_id\": %d,\n"
            "  \"temperature\": 0.6,\n  \"top_p\": 0.9,\n"
            "  \"transformers_version\": \"4.45.0.dev0\"\n}\n", c->bos, c->eos);
    write_text(dir, "generation_config.json", b.p);
    free(b.p);
}

/* Hub index: indent 2, weight_map keys sorted (as transformers writes it),
 * total_size = sum of tensor bytes, headers excluded. */
static void write_index(Tensor *t, int n, int nshards, const char *dir)
{
    Tensor **v = malloc((size_t)n * sizeof *v);
    if (!v) die("%s", "out of memory");
    uint64_t total = 0;
    for (int i = 0; i < n; i++) { v[i] = &t[i]; total += t[i].nbytes; }
    qsort(v, (size_t)n, sizeof *v, cmp_name);
    Buf b = {0};
    bprintf(&b, "{\n  \"metadata\": {\n    \"total_size\": %llu\n  },\n  \"weight_map\": {\n",
            (unsigned long long)total);
    for (int i = 0; i < n; i++)
        bprintf(&b, "    \"%s\": \"model-%05d-of-%05d.safetensors\"%s\n", v[i]->name,
                v[i]->shard + 1, nshards, i + 1 < n ? "," : "");
    bputs(&b, "  }\n}\n");
    write_text(dir, "model.safetensors.index.json", b.p);
    free(b.p);
    free(v);
}

/* Creates `path` and its missing parents (like mkdir -p). */
static void mkdir_p(const char *path)
{
    char tmp[4096];
    if (strlen(path) >= sizeof tmp) die("path too long: %s", path);
    strcpy(tmp, path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(tmp, 0755) != 0 && errno != EEXIST) die("cannot create directory %s", tmp);
        *p = '/';
    }
    if (mkdir(tmp, 0755) != 0 && errno != EEXIST) die("cannot create directory %s", tmp);
}

/* ------------------------------------------------------------------------
 * Command line */

static void usage(FILE *f)
{
    fprintf(f,
        "usage: gen_fixture [--preset tiny|1b|8b] [options] OUTDIR\n"
        "Writes a Llama-shaped Hugging Face checkpoint (config.json + safetensors).\n"
        "  --preset NAME        tiny (default), 1b (Llama-3.2-1B), 8b (Llama-3.1-8B, 4 shards)\n"
        "  --layers N --hidden N --intermediate N --heads N --kv-heads N\n"
        "  --head-dim N --vocab N   override the preset's shape\n"
        "  --bos N --eos N      token ids in config.json\n"
        "  --tied | --untied    tie_word_embeddings (no lm_head.weight when tied)\n"
        "  --dtype bf16|f32     storage dtype (default bf16)\n"
        "  --max-shard-size B   greedy hub-style sharding at B bytes (suffixes KB MB GB,\n"
        "                       decimal); 0 = one model.safetensors\n"
        "  --no-rope-scaling    write rope_scaling null instead of Llama 3.1's llama3\n"
        "  --seed N             value seed (default 1234)\n"
        "  --quiet              no progress line\n");
}

static long parse_int(const char *opt, const char *s)
{
    char *end;
    errno = 0;
    long v = strtol(s ? s : "", &end, 10);
    if (!s || errno || *end || v <= 0 || v > 1000000000L) die("bad value for %s", opt);
    return v;
}

static uint64_t parse_size(const char *s)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s ? s : "", &end, 10);
    if (!s || errno || end == s) die("bad size '%s'", s ? s : "");
    uint64_t mul = 1;
    if (!strcmp(end, "KB")) mul = 1000ULL;
    else if (!strcmp(end, "MB")) mul = 1000000ULL;
    else if (!strcmp(end, "GB")) mul = 1000000000ULL;
    else if (*end) die("bad size suffix in '%s' (KB, MB, GB)", s);
    if (v > UINT64_MAX / mul) die("size '%s' too large", s);
    return v * mul;
}

int main(int argc, char **argv)
{
    Config c;
    const char *out = NULL;
    int quiet = 0;
    /* preset first, so overrides apply whatever their position */
    const char *pname = "tiny";
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], "--preset")) pname = argv[i + 1];
    preset(&c, pname);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--preset")) i++;
        else if (!strcmp(a, "--layers")) { c.layers = (int)parse_int(a, v); i++; }
        else if (!strcmp(a, "--hidden")) { c.hidden = (int)parse_int(a, v); i++; }
        else if (!strcmp(a, "--intermediate")) { c.intermediate = (int)parse_int(a, v); i++; }
        else if (!strcmp(a, "--heads")) { c.heads = (int)parse_int(a, v); i++; }
        else if (!strcmp(a, "--kv-heads")) { c.kv_heads = (int)parse_int(a, v); i++; }
        else if (!strcmp(a, "--head-dim")) { c.head_dim = (int)parse_int(a, v); i++; }
        else if (!strcmp(a, "--vocab")) { c.vocab = (int)parse_int(a, v); i++; }
        else if (!strcmp(a, "--bos")) { c.bos = (int)parse_int(a, v); i++; }
        else if (!strcmp(a, "--eos")) { c.eos = (int)parse_int(a, v); i++; }
        else if (!strcmp(a, "--seed")) { c.seed = (uint64_t)parse_int(a, v); i++; }
        else if (!strcmp(a, "--max-shard-size")) { c.max_shard = parse_size(v); i++; }
        else if (!strcmp(a, "--tied")) c.tied = 1;
        else if (!strcmp(a, "--untied")) c.tied = 0;
        else if (!strcmp(a, "--no-rope-scaling")) c.rope_llama3 = 0;
        else if (!strcmp(a, "--quiet")) quiet = 1;
        else if (!strcmp(a, "--dtype")) {
            if (v && !strcmp(v, "bf16")) c.f32 = 0;
            else if (v && !strcmp(v, "f32")) c.f32 = 1;
            else die("bad --dtype '%s' (bf16, f32)", v ? v : "");
            i++;
        } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        else if (a[0] == '-') { usage(stderr); die("unknown option %s", a); }
        else if (!out) out = a;
        else die("unexpected argument %s", a);
    }
    if (!out) { usage(stderr); return 1; }
    if (c.heads % c.kv_heads) die("%s", "--heads must be a multiple of --kv-heads");
    if (c.bos >= c.vocab || c.eos >= c.vocab) {
        c.bos = 1;            /* a shrunken --vocab must not leave them out of range */
        c.eos = c.vocab > 2 ? 2 : 0;
    }

    mkdir_p(out);
    init_tables();
    int n;
    Tensor *t = build_tensors(&c, &n);
    int nshards = assign_shards(t, n, c.max_shard);
    if (nshards > 99999) die("%s", "too many shards");

    void *blocks[2] = {malloc(BLOCK), malloc(BLOCK)};
    if (!blocks[0] || !blocks[1]) die("%s", "out of memory");
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    uint64_t bytes = 0;
    write_config(&c, out);
    for (int s = 0; s < nshards; s++) {
        char fname[64];
        if (nshards == 1) snprintf(fname, sizeof fname, "model.safetensors");
        else snprintf(fname, sizeof fname, "model-%05d-of-%05d.safetensors", s + 1, nshards);
        bytes += write_shard(&c, t, n, s, out, fname, blocks);
    }
    if (nshards > 1) write_index(t, n, nshards, out);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double sec = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    if (!quiet)
        fprintf(stderr, "%s: wrote %s: %d tensors, %d file(s), %.3f GB in %.2f s (%.2f GB/s)\n",
                progname, out, n, nshards, (double)bytes / 1e9, sec,
                sec > 0 ? (double)bytes / 1e9 / sec : 0.0);
    free(blocks[0]);
    free(blocks[1]);
    free(t);
    return 0;
}
