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

typedef struct {
    struct cJSON *json;     /* the whole config.json */
    struct cJSON *text;     /* "text_config" when present, else json */
    char *raw;              /* config.json bytes, for byte-faithful rewriting */
    size_t raw_len;
    char model_type[64];    /* top-level model_type (gemma3, llama, ...) */
    char text_model_type[64]; /* text_config.model_type, or model_type */
    long num_hidden_layers;
    long hidden_size;
    int tie_word_embeddings; /* 1 / 0, or -1 when the key is absent */
    char torch_dtype[32];    /* "" when absent */
} ckpt_config;

/* Reads a number or integer field of cfg->text, falling back to the top
 * level; returns `def` when absent or of the wrong type. */
double ckpt_config_num(const ckpt_config *cfg, const char *key, double def);
long ckpt_config_int(const ckpt_config *cfg, const char *key, long def);

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
