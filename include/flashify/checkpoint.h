/* checkpoint.h — a Hugging Face checkpoint directory, opened read-only.
 *
 * config.json + model.safetensors, or shards + model.safetensors.index.json.
 * Every shard header is read and validated up front; tensor bytes are read
 * on demand with pread, so opening a 400 GB checkpoint costs its headers.
 * Tensor names are resolved through the index and through safetensors
 * aliases ("<missing name>": "<stored name>" in __metadata__, written by
 * transformers for shared tensors such as tied embeddings). */
#ifndef FLASHIFY_CHECKPOINT_H
#define FLASHIFY_CHECKPOINT_H

#include <stdint.h>
#include <stddef.h>

#include "flashify/error.h"
#include "flashify/safetensors.h"

struct cJSON;

/* config.json as read.  Which level a model reads (the top, or text_config
 * for composite models) is the architecture table's decision
 * (arch_resolve), so nothing here chooses: `nested` is only what the file
 * has. */
typedef struct {
    struct cJSON *json;     /* the whole config.json */
    struct cJSON *nested;   /* its "text_config" object, or NULL */
    char *raw;              /* config.json bytes, for byte-faithful rewriting */
    size_t raw_len;
    char *path;             /* "<dir>/config.json", for messages */
    char model_type[64];    /* top-level model_type (gemma3, llama, ...) */
    char nested_model_type[64]; /* text_config.model_type, or "" */
    int tie_top, tie_nested; /* tie_word_embeddings: 1 / 0, or -1 when absent */
    char torch_dtype[32];    /* "" when absent */
    char *float_spelled;     /* "\nT key\nN key\n...": numbers of the top level (T)
                                and of text_config (N) written with a fraction or an
                                exponent (2.0, 2e0), which Python reads as floats */
} ckpt_config;

/* Parses config.json text (validated: an object without duplicate keys, a
 * model_type string, text_config an object if present, the tie flags
 * booleans).  `path` names it in messages.  Pure: no file is read. */
fl_status ckpt_config_parse(const char *path, const char *text, size_t len, ckpt_config *cfg,
                            fl_error *err);
void ckpt_config_free(ckpt_config *cfg);

/* A key that appears twice in an object anywhere in the tree (cJSON keeps
 * both silently), or NULL.  Every JSON input is checked with it. */
const char *ckpt_json_duplicate_key(const struct cJSON *obj);
/* config.json text parsed with cJSON; the non-finite numbers Python's json
 * writes (Infinity, -Infinity, NaN: transformers 4 saves time_step_limit
 * (0.0, inf) so) read as +-inf and null.  NULL when it is not JSON. */
struct cJSON *ckpt_config_json(const char *text, size_t len);

/* One level of the config as a model reads it: keys are looked up in
 * `text`, then in `top` (composite models keep some keys at the top). */
typedef struct {
    const struct cJSON *text, *top;
    const char *path;       /* config.json, for messages */
    const ckpt_config *cfg;
} ckpt_view;

/* The top level alone (nested 0), or text_config falling back to the top
 * (nested 1, when the config has a text_config). */
ckpt_view ckpt_config_view(const ckpt_config *cfg, int nested);

const struct cJSON *ckpt_view_get(ckpt_view v, const char *key);
/* A number (`def` when absent or not a number; `null_value` when null). */
double ckpt_view_num(ckpt_view v, const char *key, double def, double null_value);
/* An integer, `def` when absent, not an integer or beyond +-2^62. */
long ckpt_view_int(ckpt_view v, const char *key, long def);
/* A boolean, `def` when absent or not a boolean. */
int ckpt_view_bool(ckpt_view v, const char *key, int def);
/* 1 when the key is present and not null, false, 0 or "". */
int ckpt_view_set(ckpt_view v, const char *key);
/* A required integer in 1..max: FL_EINPUT naming the key otherwise. */
fl_status ckpt_view_count(ckpt_view v, const char *key, long max, long *out, fl_error *err);

typedef struct {
    char *file;            /* name relative to the checkpoint directory */
    char *path;            /* full path */
    int fd;                /* open O_RDONLY */
    st_header st;
} ckpt_shard;

/* A tensor as the model sees it: its logical name and where it is stored. */
typedef struct {
    const char *name;      /* logical name (an alias has its own name) */
    size_t shard;          /* index into ckpt->shards */
    const st_tensor *t;    /* stored tensor (for an alias: the target) */
    int is_alias;          /* 1 when name is only an alias in __metadata__ */
} ckpt_tensor;

typedef struct {
    char *dir;
    ckpt_config cfg;
    int has_index;               /* model.safetensors.index.json present */
    struct cJSON *index;         /* parsed index (NULL without one) */
    size_t n_shards;
    ckpt_shard *shards;          /* sorted by file name */
    size_t n_tensors;
    ckpt_tensor *tensors;        /* stored tensors then aliases; sorted by name */
    size_t n_other;
    char **other_files;          /* other files to copy, relative names */
} checkpoint;

/* Opens and validates a checkpoint directory.  Returns FL_OK, FL_EINPUT or
 * FL_EIO with a message naming the file and the problem. */
fl_status ckpt_open(const char *dir, checkpoint *ck, fl_error *err);
void ckpt_close(checkpoint *ck);

/* Binary search by logical name; NULL if absent. */
const ckpt_tensor *ckpt_find(const checkpoint *ck, const char *name);
/* The same search in any name-sorted table (the planner's catalogue). */
const ckpt_tensor *ckpt_search(const ckpt_tensor *sorted, size_t n, const char *name);

/* Reads `n` bytes at byte `off` of the tensor's data (pread, EINTR and
 * short reads handled).  Returns FL_OK or FL_EIO. */
fl_status ckpt_read(const checkpoint *ck, const ckpt_tensor *t, uint64_t off,
                    void *buf, size_t n, fl_error *err);

/* Reads a whole 1-D (or any) float tensor of at most `max` elements into
 * doubles (F16/BF16/F32/F64 only).  Used for norm vectors.  *n_out gets the
 * element count. */
fl_status ckpt_read_vector(const checkpoint *ck, const ckpt_tensor *t,
                           double *out, size_t max, size_t *n_out, fl_error *err);

#endif
