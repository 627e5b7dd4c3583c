/* safetensors.c — reading and validating, and laying out, safetensors headers.
 *
 * The header is parsed by a small purpose-built JSON reader rather than by
 * cJSON, because the reference (serde_json into typed structs) demands
 * things a generic tree does not give us cheaply: exact 64-bit integers
 * (cJSON keeps doubles), duplicate keys rejected (cJSON keeps both), JSON's
 * exact grammar (cJSON accepts any byte <= 0x20 as whitespace, raw control
 * characters in strings and numbers like "+1" or "01"), bounded nesting,
 * and memory proportional to the tensor table instead of a node per value
 * (a million-tensor header would be a few million cJSON nodes).
 * The grammar accepted is RFC 8259 JSON; what it may contain is the
 * reference's schema (safetensors/src/tensor.rs, see docs/safetensors.md §1). */
#include "flashify/safetensors.h"
#include "flashify/json.h"
#include "flashify/util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A valid header nests three deep (header -> tensor -> shape).  Unknown
 * fields in a tensor entry are ignored like the reference does, but their
 * values may nest only this deep in total, so hostile nesting cannot
 * exhaust the stack. */
#define ST_MAX_DEPTH 8
/* Unknown fields tolerated per tensor entry (checked for duplicates by a
 * linear scan, so the count is capped). */
#define ST_MAX_EXTRA_FIELDS 16

/* ---- dtypes -------------------------------------------------------------- */

static const struct { const char *name; unsigned bits; } dtype_table[ST_DTYPE_COUNT] = {
    [ST_BOOL] = {"BOOL", 8},        [ST_F4] = {"F4", 4},
    [ST_F6_E2M3] = {"F6_E2M3", 6},  [ST_F6_E3M2] = {"F6_E3M2", 6},
    [ST_U8] = {"U8", 8},            [ST_I8] = {"I8", 8},
    [ST_F8_E5M2] = {"F8_E5M2", 8},  [ST_F8_E4M3] = {"F8_E4M3", 8},
    [ST_F8_E8M0] = {"F8_E8M0", 8},  [ST_F8_E4M3FNUZ] = {"F8_E4M3FNUZ", 8},
    [ST_F8_E5M2FNUZ] = {"F8_E5M2FNUZ", 8},
    [ST_I16] = {"I16", 16},         [ST_U16] = {"U16", 16},
    [ST_F16] = {"F16", 16},         [ST_BF16] = {"BF16", 16},
    [ST_I32] = {"I32", 32},         [ST_U32] = {"U32", 32},
    [ST_F32] = {"F32", 32},         [ST_C64] = {"C64", 64},
    [ST_F64] = {"F64", 64},         [ST_I64] = {"I64", 64},
    [ST_U64] = {"U64", 64},
};

const char *st_dtype_name(st_dtype d)
{
    return (unsigned)d < ST_DTYPE_COUNT ? dtype_table[d].name : "?";
}

unsigned st_dtype_bits(st_dtype d)
{
    return (unsigned)d < ST_DTYPE_COUNT ? dtype_table[d].bits : 0;
}

int st_dtype_parse(const char *name, st_dtype *out)
{
    for (int i = 0; i < ST_DTYPE_COUNT; i++)
        if (strcmp(name, dtype_table[i].name) == 0) {
            *out = (st_dtype)i;
            return 0;
        }
    return -1;
}

int st_dtype_is_foldable(st_dtype d)
{
    return d == ST_F16 || d == ST_BF16 || d == ST_F32 || d == ST_F64;
}

/* ---- small helpers ------------------------------------------------------- */

/* Copies `s` into `buf` for an error message: at most ~80 bytes, control
 * characters replaced by '?', so a hostile name cannot break the one-line
 * error or flood the terminal. */
static const char *shown(const char *s, char *buf, size_t cap)
{
    size_t j = 0, limit = cap > 84 ? 80 : cap - 4;
    for (size_t i = 0; s[i] && j < limit; i++)
        buf[j++] = ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) ? '?' : s[i];
    if (strlen(s) > j) {
        /* Cut at a character boundary, not inside a UTF-8 sequence. */
        while (j > 0 && ((unsigned char)s[j] & 0xC0) == 0x80)
            j--;
        memcpy(buf + j, "...", 3);
        j += 3;
    }
    buf[j] = 0;
    return buf;
}

/* ---- the JSON reader ------------------------------------------------------ */

/* ---- the header schema ---------------------------------------------------- */

/* Nesting levels (json.h): the header object 0, a tensor entry 1, its
 * arrays and unknown fields' values 2; unknown values may nest only this
 * deep in total, so hostile nesting cannot exhaust the stack. */
enum { DEPTH_ENTRY = 1, DEPTH_FIELD = 2 };

/* Reads an array of non-negative integers (each <= ST_MAX_INT) into
 * vals[0..max), for "shape" and "data_offsets".  Messages name the tensor. */
static fl_status jint_array(json_reader *j, const char *tname, const char *field,
                            uint64_t *vals, int max, int *count)
{
    char nb[96];
    if (json_peek(j) != '[')
        return fl_fail(j->err, FL_EINPUT, "%s: tensor '%s': \"%s\" is not an array",
                       j->what, shown(tname, nb, sizeof nb), field);
    json_iter it;
    fl_status st = json_enter(j, &it, '[', DEPTH_FIELD);
    int n = 0, r = 0;
    while (st == FL_OK && (r = json_next(j, &it, NULL, NULL)) > 0) {
        int c = json_peek(j);
        if (c != '-' && !(c >= '0' && c <= '9'))
            return fl_fail(j->err, FL_EINPUT, "%s: tensor '%s': \"%s\" holds a non-number",
                           j->what, shown(tname, nb, sizeof nb), field);
        int is_uint;
        uint64_t v;
        const char *tok;
        size_t tl;
        if ((st = json_number(j, &is_uint, &v, &tok, &tl)) != FL_OK)
            return st;
        if (!is_uint || v > ST_MAX_INT)
            return fl_fail(j->err, FL_EINPUT,
                           "%s: tensor '%s': \"%s\" value %.*s is not an integer in [0, 2^53]",
                           j->what, shown(tname, nb, sizeof nb), field,
                           tl > 40 ? 40 : (int)tl, tok);
        if (n >= max)
            return fl_fail(j->err, FL_EINPUT, "%s: tensor '%s': \"%s\" has more than %d entries",
                           j->what, shown(tname, nb, sizeof nb), field, max);
        vals[n++] = v;
    }
    if (st == FL_OK && r < 0)
        st = j->status;
    *count = n;
    return st;
}

/* What one tensor entry has set so far; unknown keys are kept to find
 * duplicates among them. */
typedef struct {
    int dtype, shape, offsets, n_extra;
    char *extra[ST_MAX_EXTRA_FIELDS];
} entry_fields;

static fl_status jdtype(json_reader *j, st_tensor *t)
{
    char nb[96], db[96], *dt = NULL;
    if (json_peek(j) != '"')
        return fl_fail(j->err, FL_EINPUT, "%s: tensor '%s': \"dtype\" is not a string", j->what,
                       shown(t->name, nb, sizeof nb));
    fl_status st = json_string(j, &dt, NULL);
    if (st != FL_OK)
        return st;
    st_dtype d;
    if (st_dtype_parse(dt, &d) < 0)
        st = fl_fail(j->err, FL_EINPUT, "%s: tensor '%s': unknown dtype \"%s\"", j->what,
                     shown(t->name, nb, sizeof nb), shown(dt, db, sizeof db));
    else
        t->dtype = d;
    free(dt);
    return st;
}

/* One member of a tensor entry; takes ownership of key. */
static fl_status jtensor_field(json_reader *j, st_tensor *t, char *key, entry_fields *f)
{
    char nb[96], kb[96];
    const char *tn = t->name;
    int *seen = !strcmp(key, "dtype") ? &f->dtype
              : !strcmp(key, "shape") ? &f->shape
              : !strcmp(key, "data_offsets") ? &f->offsets : NULL;
    int dup = seen ? *seen : 0;
    for (int k = 0; !seen && k < f->n_extra; k++)
        dup |= !strcmp(f->extra[k], key);
    fl_status st = FL_OK;
    if (dup) {
        st = fl_fail(j->err, FL_EINPUT, "%s: tensor '%s': duplicate key \"%s\"", j->what,
                     shown(tn, nb, sizeof nb), shown(key, kb, sizeof kb));
    } else if (seen == &f->dtype) {
        st = jdtype(j, t);
    } else if (seen == &f->shape) {
        st = jint_array(j, tn, "shape", t->shape, ST_MAX_DIMS, &t->ndim);
    } else if (seen == &f->offsets) {
        uint64_t off[2] = {0, 0};
        int n = 0;
        st = jint_array(j, tn, "data_offsets", off, 2, &n);
        if (st == FL_OK && n != 2)
            st = fl_fail(j->err, FL_EINPUT,
                         "%s: tensor '%s': \"data_offsets\" has %d entries, expected 2",
                         j->what, shown(tn, nb, sizeof nb), n);
        t->begin = off[0];
        t->end = off[1];
    } else if (f->n_extra == ST_MAX_EXTRA_FIELDS) {
        st = fl_fail(j->err, FL_EINPUT, "%s: tensor '%s': more than %d unknown fields", j->what,
                     shown(tn, nb, sizeof nb), ST_MAX_EXTRA_FIELDS);
    } else {
        /* Ignored like the reference does, but checked. */
        f->extra[f->n_extra++] = key;
        key = NULL;
        st = json_skip(j, DEPTH_FIELD);
    }
    free(key);
    if (seen)
        *seen = 1;
    return st;
}

/* Parses one tensor entry {"dtype":..., "shape":[...], "data_offsets":[b,e]}
 * into *t (name already set).  Unknown fields are ignored, as the reference
 * does, but duplicates of any field are rejected. */
static fl_status jtensor(json_reader *j, st_tensor *t)
{
    char nb[96];
    if (json_peek(j) != '{')
        return fl_fail(j->err, FL_EINPUT, "%s: tensor '%s': entry is not a JSON object",
                       j->what, shown(t->name, nb, sizeof nb));
    entry_fields f = {0};
    json_iter it;
    fl_status st = json_enter(j, &it, '{', DEPTH_ENTRY);
    char *key;
    int r = 0;
    while (st == FL_OK && (r = json_next(j, &it, &key, NULL)) > 0)
        st = jtensor_field(j, t, key, &f);
    if (st == FL_OK && r < 0)
        st = j->status;
    if (st == FL_OK && (!f.dtype || !f.shape || !f.offsets))
        st = fl_fail(j->err, FL_EINPUT, "%s: tensor '%s': missing \"%s\"", j->what,
                     shown(t->name, nb, sizeof nb),
                     !f.dtype ? "dtype" : !f.shape ? "shape" : "data_offsets");
    for (int k = 0; k < f.n_extra; k++)
        free(f.extra[k]);
    return st;
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(**(char *const *const *)a, **(char *const *const *)b);
}

/* Finds a duplicate among n strings reached through ptrs (sorted in place,
 * O(n log n)).  Returns the duplicate or NULL. */
static const char *find_duplicate(char ***ptrs, size_t n)
{
    qsort(ptrs, n, sizeof *ptrs, cmp_names);
    for (size_t i = 1; i < n; i++)
        if (strcmp(*ptrs[i - 1], *ptrs[i]) == 0) return *ptrs[i];
    return NULL;
}

/* Grows a header array (tensors or metadata) by one element; NULL when
 * out of memory. */
static void *grow_one(void *arr, size_t n, size_t *cap, size_t size)
{
    if (n < *cap)
        return arr;
    size_t nc = *cap ? *cap * 2 : 16;
    if (nc > ST_MAX_TENSORS)
        nc = ST_MAX_TENSORS;
    void *p = realloc(arr, nc * size);
    if (p)
        *cap = nc;
    return p;
}

/* Parses "__metadata__": an object of string -> string, or null (the
 * reference reads it as Option<HashMap<String, String>>: null is None). */
static fl_status jmetadata(json_reader *j, st_header *h)
{
    char kb[96];
    if (json_peek(j) == 'n')
        return json_literal(j, "null");
    if (json_peek(j) != '{')
        return fl_fail(j->err, FL_EINPUT, "%s: \"__metadata__\" is not a JSON object of strings",
                       j->what);
    json_iter it;
    fl_status st = json_enter(j, &it, '{', DEPTH_ENTRY);
    size_t cap = 0;
    char *key;
    int r = 0;
    while (st == FL_OK && (r = json_next(j, &it, &key, NULL)) > 0) {
        st_meta *m = h->n_meta < ST_MAX_TENSORS ? grow_one(h->meta, h->n_meta, &cap, sizeof *m) : NULL;
        if (!m) {
            st = h->n_meta < ST_MAX_TENSORS
                     ? fl_fail(j->err, FL_EIO, "%s: out of memory reading header", j->what)
                     : fl_fail(j->err, FL_EINPUT, "%s: \"__metadata__\" has more than %d entries (limit)",
                               j->what, ST_MAX_TENSORS);
            free(key);
            break;
        }
        h->meta = m;
        m = &h->meta[h->n_meta++];
        m->key = key;
        m->value = NULL;
        if (json_peek(j) != '"')
            st = fl_fail(j->err, FL_EINPUT, "%s: \"__metadata__\" value of \"%s\" is not a string",
                         j->what, shown(m->key, kb, sizeof kb));
        else
            st = json_string(j, &m->value, NULL);
    }
    if (st == FL_OK && r < 0)
        st = j->status;
    if (st != FL_OK || h->n_meta == 0)
        return st;
    char ***ptrs = malloc(h->n_meta * sizeof *ptrs);
    if (!ptrs) return fl_fail(j->err, FL_EIO, "%s: out of memory reading header", j->what);
    for (size_t i = 0; i < h->n_meta; i++) ptrs[i] = &h->meta[i].key;
    const char *dup = find_duplicate(ptrs, h->n_meta);
    if (dup)
        st = fl_fail(j->err, FL_EINPUT, "%s: \"__metadata__\" has duplicate key \"%s\"",
                     j->what, shown(dup, kb, sizeof kb));
    free(ptrs);
    return st;
}

int st_numel(const st_tensor *t, uint64_t *out)
{
    /* Like the reference's checked_mul fold: overflow is an error even if a
     * later dimension is 0. */
    uint64_t n = 1;
    for (int i = 0; i < t->ndim; i++) {
        if (t->shape[i] && n > UINT64_MAX / t->shape[i]) return -1;
        n *= t->shape[i];
    }
    *out = n;
    return 0;
}

/* Checks that a tensor's byte range matches its shape and dtype. */
static fl_status check_size(const char *what, const st_tensor *t, fl_error *err)
{
    char nb[96];
    uint64_t numel, bits = st_dtype_bits(t->dtype);
    if (st_numel(t, &numel) < 0 || numel > UINT64_MAX / bits)
        return fl_fail(err, FL_EINPUT, "%s: tensor '%s': shape product overflows 64 bits",
                       what, shown(t->name, nb, sizeof nb));
    if ((numel * bits) % 8)
        return fl_fail(err, FL_EINPUT,
                       "%s: tensor '%s': %llu elements of %s is not a whole number of bytes",
                       what, shown(t->name, nb, sizeof nb), (unsigned long long)numel,
                       st_dtype_name(t->dtype));
    uint64_t bytes = numel * bits / 8;
    if (t->end < t->begin)
        return fl_fail(err, FL_EINPUT, "%s: tensor '%s' has data_offsets [%llu, %llu]: end before start",
                       what, shown(t->name, nb, sizeof nb), (unsigned long long)t->begin,
                       (unsigned long long)t->end);
    if (t->end - t->begin != bytes)
        return fl_fail(err, FL_EINPUT,
                       "%s: tensor '%s' has data_offsets [%llu, %llu] (%llu bytes), expected %llu bytes for %s of %llu elements",
                       what, shown(t->name, nb, sizeof nb), (unsigned long long)t->begin,
                       (unsigned long long)t->end, (unsigned long long)(t->end - t->begin),
                       (unsigned long long)bytes, st_dtype_name(t->dtype),
                       (unsigned long long)numel);
    return FL_OK;
}

static int cmp_offsets(const void *a, const void *b)
{
    const st_tensor *x = *(const st_tensor *const *)a, *y = *(const st_tensor *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

/* One tensor of the header (takes ownership of its name). */
static fl_status header_tensor(json_reader *j, st_header *out, char *key, size_t *cap)
{
    char nb[96];
    size_t klen = strlen(key);
    if (klen == 0 || klen > ST_MAX_NAME) {
        fl_status st = fl_fail(j->err, FL_EINPUT, "%s: tensor name '%s' is %s (limit %d bytes)",
                               j->what, shown(key, nb, sizeof nb), klen ? "too long" : "empty",
                               ST_MAX_NAME);
        free(key);
        return st;
    }
    st_tensor *t = out->n_tensors < ST_MAX_TENSORS
                       ? grow_one(out->tensors, out->n_tensors, cap, sizeof *t) : NULL;
    if (!t) {
        free(key);
        return out->n_tensors < ST_MAX_TENSORS
                   ? fl_fail(j->err, FL_EIO, "%s: out of memory reading header", j->what)
                   : fl_fail(j->err, FL_EINPUT, "%s: more than %d tensors (limit)", j->what,
                             ST_MAX_TENSORS);
    }
    out->tensors = t;
    t = &out->tensors[out->n_tensors++];
    memset(t, 0, sizeof *t);
    t->name = key;
    return jtensor(j, t);
}

/* The header's members: tensors and __metadata__, nothing after the
 * closing brace. */
static fl_status parse_members(json_reader *j, st_header *out)
{
    /* The reference accepts leading and trailing \t\n\r and space padding. */
    json_ws(j);
    if (json_peek(j) != '{')
        return json_fail(j, "header must be a JSON object starting with '{'");
    json_iter it;
    fl_status st = json_enter(j, &it, '{', 0);
    size_t cap = 0;
    int have_meta = 0, r = 0;
    char *key;
    while (st == FL_OK && (r = json_next(j, &it, &key, NULL)) > 0) {
        if (strcmp(key, "__metadata__") == 0) {
            free(key);
            if (have_meta)
                st = fl_fail(j->err, FL_EINPUT, "%s: duplicate key \"__metadata__\"", j->what);
            else
                st = jmetadata(j, out);
            have_meta = 1;
        } else {
            st = header_tensor(j, out, key, &cap);
        }
    }
    if (st == FL_OK && r < 0)
        st = j->status;
    if (st != FL_OK)
        return st;
    json_ws(j);
    if (j->pos != j->len)
        return json_fail(j, "trailing data after the JSON object");
    return FL_OK;
}

/* No two tensors of one name (found by sorting: a million-tensor header). */
static fl_status check_names(const char *what, const st_header *h, fl_error *err)
{
    size_t n = h->n_tensors;
    char ***names = malloc((n ? n : 1) * sizeof *names);
    if (!names)
        return fl_fail(err, FL_EIO, "%s: out of memory reading header", what);
    for (size_t i = 0; i < n; i++)
        names[i] = &h->tensors[i].name;
    const char *dup = find_duplicate(names, n);
    char nb[96];
    fl_status st = dup ? fl_fail(err, FL_EINPUT, "%s: duplicate tensor name '%s'", what, shown(dup, nb, sizeof nb))
                       : FL_OK;
    free(names);
    return st;
}

/* The data buffer is tiled exactly, in offset order (the reference's
 * Metadata::validate); *end gets its length. */
static fl_status check_contiguous(const char *what, const st_header *h, uint64_t *end, fl_error *err)
{
    size_t n = h->n_tensors;
    const st_tensor **byoff = malloc((n ? n : 1) * sizeof *byoff);
    if (!byoff)
        return fl_fail(err, FL_EIO, "%s: out of memory reading header", what);
    for (size_t i = 0; i < n; i++)
        byoff[i] = &h->tensors[i];
    qsort(byoff, n, sizeof *byoff, cmp_offsets);
    uint64_t prev_end = 0;
    const st_tensor *prev = NULL;
    fl_status st = FL_OK;
    char nb[96], pb[96];
    for (size_t i = 0; i < n && st == FL_OK; i++) {
        const st_tensor *t = byoff[i];
        if (t->begin != prev_end && prev)
            st = fl_fail(err, FL_EINPUT,
                         "%s: tensor '%s' has data_offsets [%llu, %llu], expected start %llu (end of '%s'): %s",
                         what, shown(t->name, nb, sizeof nb), (unsigned long long)t->begin,
                         (unsigned long long)t->end, (unsigned long long)prev_end,
                         shown(prev->name, pb, sizeof pb), t->begin < prev_end ? "overlap" : "hole");
        else if (t->begin != prev_end)
            st = fl_fail(err, FL_EINPUT,
                         "%s: tensor '%s' has data_offsets [%llu, %llu], expected start 0: hole at start of data",
                         what, shown(t->name, nb, sizeof nb), (unsigned long long)t->begin,
                         (unsigned long long)t->end);
        prev_end = t->end;
        prev = t;
    }
    free(byoff);
    *end = prev_end;
    return st;
}

fl_status st_parse_header(const char *what, const char *json, size_t json_len,
                          uint64_t file_size, st_header *out, fl_error *err)
{
    memset(out, 0, sizeof *out);
    out->header_len = json_len;
    out->data_start = 8 + (uint64_t)json_len;
    out->file_size = file_size;
    if (json_len > ST_MAX_HEADER_SIZE)
        return fl_fail(err, FL_EINPUT, "%s: header is %zu bytes, over the limit of %llu",
                       what, json_len, ST_MAX_HEADER_SIZE);
    json_reader jr;
    json_init(&jr, what, "safetensors header", json, json_len, ST_MAX_DEPTH, err);
    size_t bad = fl_utf8_check(json, json_len);
    if (bad < json_len)
        return fl_fail(err, FL_EINPUT, "%s: header is not valid UTF-8 (byte %zu is 0x%02x)",
                       what, bad, (unsigned char)json[bad]);
    /* Members, duplicates, sizes, contiguity, then the file length. */
    fl_status st = parse_members(&jr, out);
    if (st == FL_OK)
        st = check_names(what, out, err);
    for (size_t i = 0; st == FL_OK && i < out->n_tensors; i++)
        st = check_size(what, &out->tensors[i], err);
    uint64_t data_end = 0;
    if (st == FL_OK)
        st = check_contiguous(what, out, &data_end, err);
    /* data_start <= 1e8+8 and data_end <= 2^53: no overflow. */
    if (st == FL_OK && out->data_start + data_end != file_size)
        st = fl_fail(err, FL_EINPUT,
                     "%s: file is %llu bytes, but the header says %llu (8 + %zu header + %llu data)%s",
                     what, (unsigned long long)file_size,
                     (unsigned long long)(out->data_start + data_end), json_len,
                     (unsigned long long)data_end,
                     file_size < out->data_start + data_end ? ": truncated" : ": trailing bytes");
    if (st != FL_OK)
        st_header_free(out);
    return st;
}

fl_status st_read_header(const char *path, int fd, st_header *out, fl_error *err)
{
    memset(out, 0, sizeof *out);
    struct stat sb;
    if (fstat(fd, &sb) < 0)
        return fl_fail(err, FL_EIO, "%s: cannot stat: %s", path, strerror(errno));
    if (!S_ISREG(sb.st_mode))
        return fl_fail(err, FL_EINPUT, "%s: not a regular file", path);
    uint64_t size = (uint64_t)sb.st_size;
    if (size < 8)
        return fl_fail(err, FL_EINPUT, "%s: file is %llu bytes, too small for a safetensors header (8)",
                       path, (unsigned long long)size);
    unsigned char lb[8];
    if (fl_pread_full(fd, lb, 8, 0) < 0)
        return fl_fail(err, FL_EIO, "%s: cannot read header length: %s", path,
                       errno ? strerror(errno) : "unexpected end of file");
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = n << 8 | lb[i];
    if (n > ST_MAX_HEADER_SIZE)
        return fl_fail(err, FL_EINPUT, "%s: header length %llu is over the limit of %llu",
                       path, (unsigned long long)n, ST_MAX_HEADER_SIZE);
    if (n > size - 8)
        return fl_fail(err, FL_EINPUT, "%s: header length %llu goes past the end of the %llu-byte file",
                       path, (unsigned long long)n, (unsigned long long)size);
    char *buf = malloc(n ? n : 1);
    if (!buf)
        return fl_fail(err, FL_EIO, "%s: out of memory for a %llu-byte header", path,
                       (unsigned long long)n);
    if (fl_pread_full(fd, buf, n, 8) < 0) {
        fl_status st = fl_fail(err, FL_EIO, "%s: cannot read header: %s", path,
                               errno ? strerror(errno) : "unexpected end of file (file shrank?)");
        free(buf);
        return st;
    }
    fl_status st = st_parse_header(path, buf, n, size, out, err);
    free(buf);
    return st;
}

void st_header_free(st_header *h)
{
    if (!h) return;
    for (size_t i = 0; i < h->n_tensors; i++) free(h->tensors[i].name);
    for (size_t i = 0; i < h->n_meta; i++) {
        free(h->meta[i].key);
        free(h->meta[i].value);
    }
    free(h->tensors);
    free(h->meta);
    memset(h, 0, sizeof *h);
}

const st_tensor *st_header_find(const st_header *h, const char *name)
{
    for (size_t i = 0; i < h->n_tensors; i++)
        if (strcmp(h->tensors[i].name, name) == 0) return &h->tensors[i];
    return NULL;
}

const char *st_header_meta(const st_header *h, const char *key)
{
    for (size_t i = 0; i < h->n_meta; i++)
        if (strcmp(h->meta[i].key, key) == 0) return h->meta[i].value;
    return NULL;
}

/* ---- writer --------------------------------------------------------------- */

/* Reference writer order: dtype descending, then name ascending (bytes). */
static int cmp_layout(const void *a, const void *b)
{
    const st_tensor *x = *(const st_tensor *const *)a, *y = *(const st_tensor *const *)b;
    if (x->dtype != y->dtype) return x->dtype > y->dtype ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* What st_layout is given must read back: names, dtypes, ranks, sizes
 * that agree with the shapes, no name twice. */
static fl_status check_writable(const char *what, st_tensor *tensors, size_t n, fl_error *err)
{
    char nb[96];
    if (n > ST_MAX_TENSORS)
        return fl_fail(err, FL_EINPUT, "%s: %zu tensors, over the limit of %d", what, n, ST_MAX_TENSORS);
    for (size_t i = 0; i < n; i++) {
        const st_tensor *t = &tensors[i];
        size_t len = strlen(t->name);
        if (len == 0 || len > ST_MAX_NAME || strcmp(t->name, "__metadata__") == 0)
            return fl_fail(err, FL_EINPUT, "%s: cannot write a tensor named '%s'", what,
                           shown(t->name, nb, sizeof nb));
        if ((unsigned)t->dtype >= ST_DTYPE_COUNT || t->ndim < 0 || t->ndim > ST_MAX_DIMS)
            return fl_fail(err, FL_EINPUT, "%s: tensor '%s': bad dtype or rank", what,
                           shown(t->name, nb, sizeof nb));
        fl_status st = check_size(what, t, err);
        if (st != FL_OK)
            return st;
    }
    st_header h = {.n_tensors = n, .tensors = tensors};
    return n > 1 ? check_names(what, &h, err) : FL_OK;
}

/* The header JSON for tensors in `order` (offsets assigned), with the
 * 8-byte length prefix and space padding to a multiple of 8. */
static fl_status render_header(const char *what, const st_tensor *tensors, size_t n, const size_t *order,
                               const st_meta *meta, size_t n_meta, char **header, size_t *header_size,
                               fl_error *err)
{
    strbuf b = {0};
    sb_put(&b, "\0\0\0\0\0\0\0\0", 8); /* length prefix, filled in below */
    sb_str(&b, "{\"__metadata__\":{");
    int has_format = 0;
    for (size_t i = 0; i < n_meta; i++)
        if (strcmp(meta[i].key, "format") == 0) has_format = 1;
    int first = 1;
    if (!has_format) {
        sb_str(&b, "\"format\":\"pt\"");
        first = 0;
    }
    for (size_t i = 0; i < n_meta; i++) {
        if (!first) sb_put(&b, ",", 1);
        first = 0;
        sb_json_string(&b, meta[i].key);
        sb_put(&b, ":", 1);
        sb_json_string(&b, meta[i].value);
    }
    sb_put(&b, "}", 1);
    for (size_t k = 0; k < n; k++) {
        const st_tensor *t = &tensors[order[k]];
        sb_put(&b, ",", 1);
        sb_json_string(&b, t->name);
        sb_printf(&b, ":{\"dtype\":\"%s\",\"shape\":[", st_dtype_name(t->dtype));
        for (int d = 0; d < t->ndim; d++)
            sb_printf(&b, d ? ",%llu" : "%llu", (unsigned long long)t->shape[d]);
        sb_printf(&b, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)t->begin,
                  (unsigned long long)t->end);
    }
    sb_put(&b, "}", 1);
    while (!b.oom && (b.n - 8) % 8) sb_put(&b, " ", 1);
    if (b.oom) {
        sb_free(&b);
        return fl_fail(err, FL_EIO, "%s: out of memory building the header", what);
    }
    uint64_t hn = b.n - 8;
    if (hn > ST_MAX_HEADER_SIZE) {
        sb_free(&b);
        return fl_fail(err, FL_EINPUT, "%s: header would be %llu bytes, over the limit of %llu",
                       what, (unsigned long long)hn, ST_MAX_HEADER_SIZE);
    }
    for (int i = 0; i < 8; i++) b.p[i] = (char)(hn >> (8 * i));
    *header_size = b.n;
    *header = b.p;
    return FL_OK;
}

fl_status st_layout(const char *what, st_tensor *tensors, size_t n,
                    const st_meta *meta, size_t n_meta, size_t *order,
                    char **header, size_t *header_size, fl_error *err)
{
    *header = NULL;
    *header_size = 0;
    fl_status st = check_writable(what, tensors, n, err);
    if (st != FL_OK)
        return st;
    const st_tensor **sorted = malloc((n ? n : 1) * sizeof *sorted);
    if (!sorted) return fl_fail(err, FL_EIO, "%s: out of memory", what);
    for (size_t i = 0; i < n; i++) sorted[i] = &tensors[i];
    qsort(sorted, n, sizeof *sorted, cmp_layout);
    for (size_t k = 0; k < n; k++) order[k] = (size_t)(sorted[k] - tensors);
    free(sorted);
    uint64_t off = 0;
    for (size_t k = 0; k < n; k++) {
        st_tensor *t = &tensors[order[k]];
        uint64_t size = t->end - t->begin;
        if (size > UINT64_MAX - off)
            return fl_fail(err, FL_EINPUT, "%s: data size overflows 64 bits", what);
        t->begin = off;
        t->end = off + size;
        off += size;
    }
    return render_header(what, tensors, n, order, meta, n_meta, header, header_size, err);
}
