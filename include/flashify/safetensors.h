/* safetensors.h — reading and writing the safetensors container.
 *
 * Layout: u64 little-endian N | N bytes of UTF-8 JSON | data buffer.
 * The reader enforces every check of the reference implementation
 * (huggingface/safetensors, safetensors/src/tensor.rs) plus the ones it
 * lacks: explicit duplicate-key rejection, the reserved tensor name
 * "__metadata__", and exact integer parsing.  Only the header is read into
 * memory; tensor bytes are read with pread by whoever needs them. */
#ifndef FLASHIFY_SAFETENSORS_H
#define FLASHIFY_SAFETENSORS_H

#include <stdint.h>
#include <stddef.h>

#include "flashify/error.h"

/* Same limit as the reference (MAX_HEADER_SIZE, decimal bytes). */
#define ST_MAX_HEADER_SIZE 100000000ULL
/* Resource caps (README "Limits"): the reference has none for these, but a
 * checkpoint from a stranger must not make us allocate without bound. */
#define ST_MAX_DIMS 16
#define ST_MAX_TENSORS 1000000
#define ST_MAX_NAME 4096
/* Integers in the header must be exact in a double (cJSON stores doubles). */
#define ST_MAX_INT 9007199254740992ULL /* 2^53 */

/* Dtypes in the reference's enum order ("increasing alignment"). */
typedef enum {
    ST_BOOL, ST_F4, ST_F6_E2M3, ST_F6_E3M2, ST_U8, ST_I8, ST_F8_E5M2,
    ST_F8_E4M3, ST_F8_E8M0, ST_F8_E4M3FNUZ, ST_F8_E5M2FNUZ, ST_I16, ST_U16,
    ST_F16, ST_BF16, ST_I32, ST_U32, ST_F32, ST_C64, ST_F64, ST_I64, ST_U64,
    ST_DTYPE_COUNT
} st_dtype;

/* Name as written in headers ("BF16"), and size in bits. */
const char *st_dtype_name(st_dtype d);
unsigned st_dtype_bits(st_dtype d);
/* Returns 0 and sets *out when `name` is a known dtype, -1 otherwise. */
int st_dtype_parse(const char *name, st_dtype *out);
/* 1 for the float dtypes flashify can fold into (F16, BF16, F32, F64). */
int st_dtype_is_foldable(st_dtype d);

typedef struct {
    char *name;
    st_dtype dtype;
    int ndim;
    uint64_t shape[ST_MAX_DIMS];
    uint64_t begin, end;   /* data_offsets, relative to the data buffer */
} st_tensor;

typedef struct {
    char *key, *value;
} st_meta;

typedef struct {
    uint64_t header_len;   /* N */
    uint64_t data_start;   /* 8 + N */
    uint64_t file_size;
    size_t n_tensors;
    st_tensor *tensors;    /* in header order */
    size_t n_meta;
    st_meta *meta;         /* __metadata__, in header order */
} st_header;

/* Parses and validates a header.  `json`/`json_len` are the N header bytes,
 * `file_size` the whole file's length (the data buffer must end exactly at
 * EOF).  `what` names the file in error messages.  Returns FL_OK or FL_EINPUT. */
fl_status st_parse_header(const char *what, const char *json, size_t json_len,
                          uint64_t file_size, st_header *out, fl_error *err);

/* Reads and validates the header of the file open on `fd` (never reads
 * the data).  Returns FL_OK, FL_EINPUT (malformed) or FL_EIO. */
fl_status st_read_header(const char *path, int fd, st_header *out, fl_error *err);

void st_header_free(st_header *h);

/* Linear lookup by name; NULL if absent. */
const st_tensor *st_header_find(const st_header *h, const char *name);
/* The __metadata__ value for key, or NULL. */
const char *st_header_meta(const st_header *h, const char *key);

/* Number of elements (checked: returns -1 on overflow). */
int st_numel(const st_tensor *t, uint64_t *out);
/* Byte size of a tensor (end - begin). */
static inline uint64_t st_nbytes(const st_tensor *t) { return t->end - t->begin; }

/* ---- writer ---------------------------------------------------------------
 * st_layout assigns data offsets the way the reference writer does (sort by
 * dtype descending, then name ascending; contiguous from 0) and renders the
 * header JSON: __metadata__ first (with "format":"pt" unless already set),
 * then the tensors in offset order, padded with spaces to a multiple of 8.
 * On input, tensors[i].begin/end only carry the byte size (end - begin);
 * on output they hold the assigned offsets and *order holds the write order
 * (indices into tensors).  *header receives the 8-byte length prefix
 * followed by the padded JSON; *header_size its total length. */
fl_status st_layout(const char *what, st_tensor *tensors, size_t n,
                    const st_meta *meta, size_t n_meta, size_t *order,
                    char **header, size_t *header_size, fl_error *err);

#endif
