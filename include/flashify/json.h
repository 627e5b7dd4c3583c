/* json.h — a strict JSON pull reader over a byte buffer (RFC 8259).
 *
 * For inputs where a generic tree does not do: safetensors headers (exact
 * 64-bit integers, duplicate keys found, memory proportional to what is
 * kept, bounded nesting) and editing config.json in place (the byte span of
 * every member, keys compared after decoding their escapes).  cJSON is
 * laxer than the grammar (any byte <= 0x20 as whitespace, raw control
 * characters in strings, "+1" and "01" as numbers); this reader is not.
 *
 * Containers are walked with an iterator:
 *
 *     json_iter it;
 *     if ((st = json_enter(j, &it, '{'))) return st;
 *     char *key;
 *     while ((r = json_next(j, &it, &key)) > 0) { ... read or skip the value ...; free(key); }
 *     if (r < 0) return j->status;
 *
 * The input must have been checked to be UTF-8 (fl_utf8_check). */
#ifndef FLASHIFY_JSON_H
#define FLASHIFY_JSON_H

#include <stddef.h>
#include <stdint.h>

#include "flashify/error.h"

typedef struct {
    const char *what;          /* the file, first in every message */
    const char *label;         /* what the buffer is: "safetensors header", "JSON" */
    const unsigned char *s;
    size_t len, pos;
    int max_depth;             /* containers nested deeper are refused */
    fl_status status;          /* the last failure (json_next returns -1) */
    fl_error *err;
    int python_floats;         /* accept NaN, Infinity, -Infinity as numbers: config.json as
                                  Python's json.dumps writes float('inf') (transformers 4) */
} json_reader;

typedef struct {
    char close;                /* '}' or ']' */
    int count;                 /* members seen so far */
    int depth;                 /* nesting level of this container (outermost 0) */
} json_iter;

void json_init(json_reader *j, const char *what, const char *label, const void *s, size_t len,
               int max_depth, fl_error *err);

/* Skips whitespace (space, tab, CR, LF only). */
void json_ws(json_reader *j);
/* The byte at the cursor, or -1 at the end. */
int json_peek(const json_reader *j);
/* "<what>: invalid <label>: <msg> at byte N ('c')", FL_EINPUT. */
fl_status json_fail(json_reader *j, const char *msg);

/* A string at the cursor, decoded into a fresh NUL-terminated buffer
 * (*out; NULL out: only checked).  Escapes are decoded as serde_json does;
 * lone surrogates and \u0000 (no C string can hold it) are refused. */
fl_status json_string(json_reader *j, char **out, size_t *out_len);

/* A number at the cursor.  *is_uint is 1 when it is a plain non-negative
 * integer (no sign, fraction or exponent) that fits 64 bits, with its value
 * in *value; *tok / *tok_len give its text for messages. */
fl_status json_number(json_reader *j, int *is_uint, uint64_t *value, const char **tok,
                      size_t *tok_len);

/* The literal `lit` ("true", "false", "null") at the cursor. */
fl_status json_literal(json_reader *j, const char *lit);

/* Checks and skips any value at the cursor; `depth` is the nesting level
 * it would have as a container. */
fl_status json_skip(json_reader *j, int depth);

/* Enters the container opening with `open` ('{' or '[') at the cursor.
 * `depth` is its nesting level, 0 for the document's outermost container;
 * a container at max_depth or deeper is refused. */
fl_status json_enter(json_reader *j, json_iter *it, char open, int depth);

/* Moves to the next member: returns 1 with the cursor on its value (for
 * an object *key gets the decoded key when key is not NULL; key_start gets
 * the offset of the key's opening quote when not NULL), 0 when the
 * container ended (the closing bracket is consumed), -1 on a syntax error
 * (j->status, message in j->err). */
int json_next(json_reader *j, json_iter *it, char **key, size_t *key_start);

/* Checks that s[0..len) is exactly one JSON value (whitespace around it
 * allowed) in the strict grammar: what cJSON would accept laxly or
 * silently truncate (a \u0000 inside a string) is refused here first. */
fl_status json_validate(const char *what, const void *s, size_t len, int max_depth, fl_error *err);

#endif
