/* test_safetensors.c — the safetensors header reader and writer.
 *
 * Every rule of docs/safetensors.md §1 gets a header that breaks it, and
 * must be rejected with FL_EINPUT and a message naming the file; valid
 * headers (including the reference's whitespace and zero-size cases) must
 * be accepted with the fields read exactly.  The writer is checked against
 * hand-written JSON and by reading its output back. */
#include "flashify/safetensors.h"
#include "flashify/util.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "check.h"

#define WHAT "model.safetensors"

/* Parses `json` as the header of a file holding `data` bytes after it. */
static fl_status parse(const char *json, size_t len, uint64_t data, st_header *h, fl_error *err)
{
    memset(err, 0, sizeof *err);
    return st_parse_header(WHAT, json, len, 8 + len + data, h, err);
}

/* A header that must be accepted. */
static void ok_case(int line, const char *json, uint64_t data, size_t n_tensors)
{
    st_header h;
    fl_error err;
    fl_status st = parse(json, strlen(json), data, &h, &err);
    if (st != FL_OK) {
        failures++;
        fprintf(stderr, "line %d: valid header rejected: %s\n  header: %s\n", line, err.msg, json);
        return;
    }
    if (h.n_tensors != n_tensors) {
        failures++;
        fprintf(stderr, "line %d: %zu tensors, expected %zu\n", line, h.n_tensors, n_tensors);
    }
    st_header_free(&h);
}

/* A header that must be rejected with FL_EINPUT, a one-line message naming
 * the file and containing `needle`. */
static void bad_case_len(int line, const char *json, size_t len, uint64_t data, const char *needle)
{
    st_header h;
    fl_error err;
    fl_status st = parse(json, len, data, &h, &err);
    if (st != FL_EINPUT) {
        failures++;
        fprintf(stderr, "line %d: expected FL_EINPUT, got %d (%s)\n  header: %.200s\n", line, st,
                st ? err.msg : "accepted", json);
        if (st == FL_OK) st_header_free(&h);
        return;
    }
    if (strncmp(err.msg, WHAT ": ", strlen(WHAT) + 2) != 0 || strchr(err.msg, '\n') ||
        !strstr(err.msg, needle)) {
        failures++;
        fprintf(stderr, "line %d: message \"%s\" should start with the file name, be one line and contain \"%s\"\n",
                line, err.msg, needle);
    }
    if (h.n_tensors || h.tensors || h.meta) {
        failures++;
        fprintf(stderr, "line %d: header not cleared on failure\n", line);
    }
}
#define OK(json, data, n) ok_case(__LINE__, json, data, n)
#define BAD(json, data, needle) bad_case_len(__LINE__, json, strlen(json), data, needle)

#define T(name, dtype, shape, b, e) \
    "\"" name "\":{\"dtype\":\"" dtype "\",\"shape\":" shape ",\"data_offsets\":[" #b "," #e "]}"

static void test_valid(void)
{
    OK("{}", 0, 0);
    /* The reference accepts leading and trailing \t\n\r and space. */
    OK(" \t\r\n{}  \n ", 0, 0);
    OK("{" T("a", "F32", "[2]", 0, 8) "}", 8, 1);
    /* Contiguity is checked in offset order, not JSON order. */
    OK("{" T("b", "F32", "[2]", 8, 16) "," T("a", "F32", "[2]", 0, 8) "}", 16, 2);
    /* Zero-sized and scalar tensors (reference test_zero_sized_tensor). */
    OK("{" T("z", "F32", "[0,3]", 0, 0) "," T("s", "F64", "[]", 0, 8) "}", 8, 2);
    OK("{\"__metadata__\":{\"format\":\"pt\",\"k\":\"v\"}," T("a", "U8", "[3]", 0, 3) "}", 3, 1);
    OK("{\"__metadata__\":{}}", 0, 0);
    OK("{\"__metadata__\":null," T("a", "U8", "[1]", 0, 1) "}", 1, 1); /* Option: null is None */
    /* Sub-byte dtypes: 2 x F4 = 1 byte, 4 x F6 = 3 bytes. */
    OK("{" T("f4", "F4", "[2]", 0, 1) "," T("f6", "F6_E2M3", "[2,2]", 1, 4) "}", 4, 2);
    /* Unknown fields are ignored like the reference does. */
    OK("{\"a\":{\"extra\":{\"x\":[1,2.5,null,true]},\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8, 1);
    /* Every dtype of the reference. */
    OK("{" T("a", "BOOL", "[1]", 0, 1) "," T("b", "F8_E5M2", "[1]", 1, 2) "," T("c", "F8_E4M3", "[1]", 2, 3) ","
       T("d", "F8_E8M0", "[1]", 3, 4) "," T("e", "F8_E4M3FNUZ", "[1]", 4, 5) "," T("f", "F8_E5M2FNUZ", "[1]", 5, 6) ","
       T("g", "I8", "[1]", 6, 7) "," T("h", "I16", "[1]", 7, 9) "," T("i", "U16", "[1]", 9, 11) ","
       T("j", "F16", "[1]", 11, 13) "," T("k", "BF16", "[1]", 13, 15) "," T("l", "I32", "[1]", 15, 19) ","
       T("m", "U32", "[1]", 19, 23) "," T("n", "C64", "[1]", 23, 31) "," T("o", "U64", "[1]", 31, 39) ","
       T("p", "F6_E3M2", "[4]", 39, 42) "}", 42, 16);

    /* Fields read exactly: 2^53 offsets/dims are representable. */
    const char *j = "{\"__metadata__\":{\"format\":\"pt\"},\"w\\u00e9\\ud83d\\ude00\\n\":{\"dtype\":\"BF16\",\"shape\":[3,1,2],\"data_offsets\":[0,12]}}";
    st_header h;
    fl_error err;
    CHECK(parse(j, strlen(j), 12, &h, &err) == FL_OK, "%s", err.msg);
    if (h.n_tensors == 1) {
        const st_tensor *t = &h.tensors[0];
        CHECK(strcmp(t->name, "w\xc3\xa9\xf0\x9f\x98\x80\n") == 0, "name decoded: %s", t->name);
        CHECK(t->dtype == ST_BF16 && t->ndim == 3 && t->shape[0] == 3 && t->shape[1] == 1 &&
              t->shape[2] == 2 && t->begin == 0 && t->end == 12, "fields");
        CHECK(h.header_len == strlen(j) && h.data_start == 8 + strlen(j), "lengths");
        CHECK(st_header_find(&h, "w\xc3\xa9\xf0\x9f\x98\x80\n") == t, "find");
        CHECK(st_header_find(&h, "w") == NULL, "find miss");
        CHECK(st_header_meta(&h, "format") && strcmp(st_header_meta(&h, "format"), "pt") == 0, "meta");
        CHECK(st_header_meta(&h, "nope") == NULL, "meta miss");
        uint64_t n;
        CHECK(st_numel(t, &n) == 0 && n == 6, "numel");
        CHECK(st_nbytes(t) == 12, "nbytes");
        st_header_free(&h);
    }
    /* Largest allowed integers: a 2^53-element U8 tensor is 2^53 bytes. */
    j = "{\"a\":{\"dtype\":\"U8\",\"shape\":[9007199254740992],\"data_offsets\":[0,9007199254740992]}}";
    CHECK(parse(j, strlen(j), 9007199254740992ULL, &h, &err) == FL_OK, "%s", err.msg);
    if (h.n_tensors == 1) {
        CHECK(h.tensors[0].end == 9007199254740992ULL, "2^53 exact");
        st_header_free(&h);
    }
}

static void test_malformed(void)
{
    /* UTF-8 */
    BAD("{\"a\xff\":{}}", 0, "UTF-8");
    BAD("{\"\xc0\xaf\":{}}", 0, "UTF-8");           /* overlong '/' */
    BAD("{\"\xed\xa0\x80\":{}}", 0, "UTF-8");       /* surrogate */
    BAD("{\"\xf4\x90\x80\x80\":{}}", 0, "UTF-8");   /* > U+10FFFF */
    BAD("{\"\xe2\x82\":{}}", 0, "UTF-8");           /* truncated sequence */
    /* JSON shape */
    BAD("", 0, "starting with '{'");
    BAD("   ", 0, "starting with '{'");
    BAD("hello", 0, "starting with '{'");
    BAD("[]", 0, "starting with '{'");
    BAD("x{}", 0, "starting with '{'");
    BAD("\x0b{}", 0, "starting with '{'");           /* VT is not JSON whitespace */
    BAD("\xef\xbb\xbf{}", 0, "starting with '{'");   /* BOM */
    BAD("{}x", 0, "trailing data");
    BAD("{} {}", 0, "trailing data");
    bad_case_len(__LINE__, "{}\0", 3, 0, "trailing data");
    BAD("{", 0, "end of the safetensors header");
    BAD("{\"a\"", 0, "expected ':'");
    BAD("{\"a\":", 0, "tensor 'a'");
    BAD("{,}", 0, "expected a string");
    BAD("{\"a\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]},}", 4, "expected a string");
    BAD("{'a':{}}", 0, "expected a string");
    BAD("{\"a\":{\"dtype\":\"F32\" \"shape\":[]}}", 0, "expected ','");
    BAD("{\"a\x01\":{}}", 0, "control character");
    BAD("{\"a\\u0000b\":{}}", 0, "NUL");
    BAD("{\"a\\ud800\":{}}", 0, "surrogate");
    BAD("{\"a\\udc00\":{}}", 0, "surrogate");
    BAD("{\"a\\ud800\\u0041\":{}}", 0, "surrogate");
    BAD("{\"a\\x\":{}}", 0, "bad escape");
    BAD("{\"a\\u12\":{}}", 0, "\\u escape");
    BAD("{\"a", 0, "unterminated string");
    BAD("{\"a\\", 0, "unterminated string");
    /* keys */
    BAD("{" T("a", "F32", "[1]", 0, 4) "," T("a", "F32", "[1]", 4, 8) "}", 8, "duplicate tensor name 'a'");
    /* Identical duplicates pass the reference (last wins); not here. */
    BAD("{" T("a", "F32", "[1]", 0, 4) "," T("a", "F32", "[1]", 0, 4) "}", 4, "duplicate tensor name 'a'");
    BAD("{\"__metadata__\":{},\"__metadata__\":{}}", 0, "duplicate key \"__metadata__\"");
    BAD("{\"__metadata__\":{\"k\":\"1\",\"j\":\"2\",\"k\":\"3\"}}", 0, "duplicate key \"k\"");
    BAD("{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "duplicate key \"dtype\"");
    BAD("{\"a\":{\"x\":1,\"dtype\":\"F32\",\"x\":2,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "duplicate key \"x\"");
    BAD("{\"\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "empty");
    /* __metadata__ */
    BAD("{\"__metadata__\":{\"a\":0}}", 0, "\"a\" is not a string");
    BAD("{\"__metadata__\":{\"a\":null}}", 0, "not a string");
    BAD("{\"__metadata__\":{\"a\":{\"b\":\"c\"}}}", 0, "not a string");
    BAD("{\"__metadata__\":[]}", 0, "not a JSON object");
    BAD("{\"__metadata__\":\"pt\"}", 0, "not a JSON object");
    BAD("{\"__metadata__\":nul}", 0, "expected a JSON value");
    BAD("{\"__metadata__\":null,\"__metadata__\":{}}", 0, "duplicate key \"__metadata__\"");
    /* A tensor cannot be named __metadata__ (reference issue #849). */
    BAD("{\"__metadata__\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "not a string");
    /* tensor entries */
    BAD("{\"a\":[]}", 0, "tensor 'a': entry is not a JSON object");
    BAD("{\"a\":3}", 0, "tensor 'a'");
    BAD("{\"a\":{}}", 0, "missing \"dtype\"");
    BAD("{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,0]}}", 0, "missing \"shape\"");
    BAD("{\"a\":{\"dtype\":\"F32\",\"shape\":[0]}}", 0, "missing \"data_offsets\"");
    BAD("{\"a\":{\"dtype\":3,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "\"dtype\" is not a string");
    BAD(T("a", "F12", "[1]", 0, 4), 4, "starting with '{'");
    BAD("{" T("a", "F12", "[1]", 0, 4) "}", 4, "unknown dtype \"F12\"");
    BAD("{" T("a", "f32", "[1]", 0, 4) "}", 4, "unknown dtype \"f32\"");
    BAD("{" T("a", "Q4_K", "[1]", 0, 4) "}", 4, "unknown dtype");
    BAD("{\"a\":{\"dtype\":\"F32\",\"shape\":3,\"data_offsets\":[0,4]}}", 4, "\"shape\" is not an array");
    BAD("{\"a\":{\"dtype\":\"F32\",\"shape\":[\"1\"],\"data_offsets\":[0,4]}}", 4, "non-number");
    /* shapes: negative, fractional, exponent, signs, leading zeros, huge */
    BAD("{" T("a", "F32", "[-1]", 0, 4) "}", 4, "value -1 is not an integer");
    BAD("{" T("a", "F32", "[1.0]", 0, 4) "}", 4, "value 1.0 is not an integer");
    BAD("{" T("a", "F32", "[1.5]", 0, 4) "}", 4, "1.5");
    BAD("{" T("a", "F32", "[1e0]", 0, 4) "}", 4, "1e0");
    BAD("{" T("a", "F32", "[-0]", 0, 4) "}", 4, "-0");
    BAD("{" T("a", "F32", "[+1]", 0, 4) "}", 4, "non-number");
    BAD("{" T("a", "F32", "[01]", 0, 4) "}", 4, "expected ','");
    BAD("{" T("a", "F32", "[9007199254740993]", 0, 4) "}", 4, "9007199254740993");
    BAD("{" T("a", "F32", "[18446744073709551616]", 0, 4) "}", 4, "18446744073709551616");
    BAD("{" T("a", "F32", "[99999999999999999999999999999999999]", 0, 4) "}", 4, "not an integer");
    BAD("{" T("a", "F32", "[1,]", 0, 4) "}", 4, "non-number");
    BAD("{" T("a", "U8", "[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1]", 0, 1) "}", 1, "more than 16 entries");
    OK("{" T("a", "U8", "[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1]", 0, 1) "}", 1, 1);
    /* overflowing shape products: 2^32 * 2^32 elements; 2^40 * 2^20 F64 bits */
    BAD("{" T("a", "U8", "[4294967296,4294967296]", 0, 0) "}", 0, "overflows");
    BAD("{" T("a", "U8", "[4294967296,4294967296,0]", 0, 0) "}", 0, "overflows");
    BAD("{" T("a", "F64", "[1099511627776,1048576]", 0, 0) "}", 0, "overflows");
    /* sizes */
    BAD("{" T("a", "F32", "[2]", 0, 4) "}", 4, "expected 8 bytes");
    BAD("{" T("a", "F32", "[2]", 0, 12) "}", 12, "expected 8 bytes");
    BAD("{" T("a", "F4", "[3]", 0, 2) "}", 2, "not a whole number of bytes");
    BAD("{" T("a", "F32", "[0]", 8, 0) "}", 0, "end before start");
    /* data_offsets */
    BAD("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 8, "more than 2 entries");
    BAD("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4]}}", 4, "has 1 entries, expected 2");
    BAD("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":{}}}", 4, "not an array");
    BAD("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4.0]}}", 4, "4.0");
    BAD("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 4, "-4");
    BAD("{" T("a", "F32", "[1]", 4, 8) "}", 8, "tensor 'a' has data_offsets [4, 8], expected start 0");
    BAD("{" T("a", "F32", "[1]", 0, 4) "," T("b", "F32", "[1]", 8, 12) "}", 12,
        "tensor 'b' has data_offsets [8, 12], expected start 4 (end of 'a'): hole");
    BAD("{" T("a", "F32", "[2]", 0, 8) "," T("b", "F32", "[1]", 4, 8) "}", 8,
        "tensor 'b' has data_offsets [4, 8], expected start 8 (end of 'a'): overlap");
    BAD("{" T("a", "U8", "[0]", 9007199254740992, 9007199254740992) "}", 0, "expected start 0");
    /* file length: truncated download and trailing (polyglot) bytes */
    BAD("{" T("a", "F32", "[2]", 0, 8) "}", 7, "truncated");
    BAD("{" T("a", "F32", "[2]", 0, 8) "}", 9, "trailing bytes");
    BAD("{}", 1, "trailing bytes");
    /* nesting: unknown fields may nest, but not without bound */
    OK("{\"a\":{\"x\":[[[[[[1]]]]]],\"dtype\":\"U8\",\"shape\":[],\"data_offsets\":[0,1]}}", 1, 1);
    BAD("{\"a\":{\"x\":[[[[[[[1]]]]]]],\"dtype\":\"U8\",\"shape\":[],\"data_offsets\":[0,1]}}", 1, "nested deeper");
    BAD("{\"a\":{\"x\":[1,nul],\"dtype\":\"U8\",\"shape\":[],\"data_offsets\":[0,1]}}", 1, "expected a JSON value");
    {
        /* 100000 levels: rejected early, no deep recursion. */
        size_t n = 100000;
        char *deep = malloc(2 * n + 16);
        strcpy(deep, "{\"a\":{\"x\":");
        size_t k = strlen(deep);
        for (size_t i = 0; i < n; i++) deep[k++] = '[';
        for (size_t i = 0; i < n; i++) deep[k++] = ']';
        deep[k++] = '}';
        deep[k++] = '}';
        bad_case_len(__LINE__, deep, k, 0, "nested deeper");
        free(deep);
    }
    /* names */
    {
        char *long_name = malloc(ST_MAX_NAME + 200);
        size_t k = 0;
        long_name[k++] = '{';
        long_name[k++] = '"';
        for (int i = 0; i < ST_MAX_NAME + 1; i++) long_name[k++] = 'n';
        strcpy(long_name + k, "\":{\"dtype\":\"U8\",\"shape\":[],\"data_offsets\":[0,1]}}");
        bad_case_len(__LINE__, long_name, strlen(long_name), 1, "too long");
        /* exactly the limit is fine */
        memmove(long_name + 2, long_name + 3, strlen(long_name + 3) + 1);
        OK(long_name, 1, 1);
        free(long_name);
    }
    /* A long name is cut in messages at a character boundary: the message
     * stays valid UTF-8.  (81 bytes of 'a' + 2-byte characters, so byte 80
     * falls inside one.) */
    {
        char name[400], j[1200];
        size_t k = 0;
        name[k++] = 'a';
        for (int i = 0; i < 100; i++) { name[k++] = (char)0xc3; name[k++] = (char)0xa9; }
        name[k] = 0;
        snprintf(j, sizeof j, "{\"%s\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]},"
                 "\"%s\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]}}", name, name);
        st_header h;
        fl_error err;
        CHECK(parse(j, strlen(j), 0, &h, &err) == FL_EINPUT && strstr(err.msg, "duplicate") &&
              strstr(err.msg, "...") && fl_utf8_check(err.msg, strlen(err.msg)) == strlen(err.msg),
              "%s", err.msg);
    }
    /* The header-size limit is checked before anything is read. */
    {
        st_header h;
        fl_error err;
        CHECK(st_parse_header(WHAT, "{}", ST_MAX_HEADER_SIZE + 1, ST_MAX_HEADER_SIZE + 9, &h, &err) == FL_EINPUT &&
              strstr(err.msg, "over the limit"), "%s", err.msg);
    }
}

/* Builds a header of n empty tensors named t0, t1, ...; when dup >= 0 the
 * last one is named t<dup> instead. */
static char *many(size_t n, long dup, size_t *len)
{
    size_t cap = n * 64 + 16, k = 0;
    char *j = malloc(cap);
    j[k++] = '{';
    for (size_t i = 0; i < n; i++)
        k += (size_t)snprintf(j + k, cap - k, "%s\"t%zu\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}",
                              i ? "," : "", (dup >= 0 && i == n - 1) ? (size_t)dup : i);
    j[k++] = '}';
    j[k] = 0;
    *len = k;
    return j;
}

/* A million tensors (the cap) parse in a second or two; one more is
 * refused; a duplicate among them is found.  A quadratic duplicate check
 * would take hours. */
static void test_many_tensors(void)
{
    size_t k;
    char *j = many(ST_MAX_TENSORS, -1, &k);
    st_header h;
    fl_error err;
    clock_t c0 = clock();
    fl_status st = parse(j, k, 0, &h, &err);
    double secs = (double)(clock() - c0) / CLOCKS_PER_SEC;
    CHECK(st == FL_OK && h.n_tensors == ST_MAX_TENSORS, "%s", err.msg);
    CHECK(secs < 60, "a million tensors took %.1f s", secs);
    fprintf(stderr, "test_safetensors: %d tensors parsed in %.2f s\n", ST_MAX_TENSORS, secs);
    if (st == FL_OK) st_header_free(&h);
    free(j);
    j = many(ST_MAX_TENSORS + 1, -1, &k);
    bad_case_len(__LINE__, j, k, 0, "more than 1000000 tensors");
    free(j);
    j = many(ST_MAX_TENSORS, 123456, &k);
    bad_case_len(__LINE__, j, k, 0, "duplicate tensor name 't123456'");
    free(j);
}

/* ---- st_read_header on real files ----------------------------------------- */

static char tmpdir[] = "/tmp/test_safetensors.XXXXXX";

static int write_file(const char *name, const void *buf, size_t n)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return -1;
    if (write(fd, buf, n) != (ssize_t)n) { close(fd); return -1; }
    return fd;
}

static void file_case(int line, const char *name, const unsigned char *buf, size_t n,
                      fl_status want, const char *needle)
{
    int fd = write_file(name, buf, n);
    if (fd < 0) { failures++; fprintf(stderr, "line %d: cannot write %s\n", line, name); return; }
    st_header h;
    fl_error err = {0};
    char path[256];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    fl_status st = st_read_header(path, fd, &h, &err);
    close(fd);
    if (st != want || (want != FL_OK && (!strstr(err.msg, needle) || !strstr(err.msg, name)))) {
        failures++;
        fprintf(stderr, "line %d: %s: status %d (want %d), message \"%s\" (want \"%s\")\n", line,
                name, st, want, st ? err.msg : "", needle);
    }
    if (st == FL_OK) st_header_free(&h);
}

static void put_le(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static void test_files(void)
{
    if (!mkdtemp(tmpdir)) { failures++; perror("mkdtemp"); return; }
    unsigned char buf[64] = {0};
    file_case(__LINE__, "empty.safetensors", buf, 0, FL_EINPUT, "too small");
    file_case(__LINE__, "seven.safetensors", buf, 7, FL_EINPUT, "too small");
    put_le(buf, 0);
    file_case(__LINE__, "zero.safetensors", buf, 8, FL_EINPUT, "starting with '{'");
    put_le(buf, 2);
    memcpy(buf + 8, "{}", 2);
    file_case(__LINE__, "min.safetensors", buf, 10, FL_OK, "");
    file_case(__LINE__, "short.safetensors", buf, 9, FL_EINPUT, "past the end");
    file_case(__LINE__, "trail.safetensors", buf, 11, FL_EINPUT, "trailing bytes");
    put_le(buf, 1ULL << 63);
    file_case(__LINE__, "huge.safetensors", buf, 10, FL_EINPUT, "over the limit");
    put_le(buf, UINT64_MAX);
    file_case(__LINE__, "max.safetensors", buf, 10, FL_EINPUT, "over the limit");
    put_le(buf, ST_MAX_HEADER_SIZE + 1);
    file_case(__LINE__, "limit.safetensors", buf, 10, FL_EINPUT, "over the limit");
    put_le(buf, ST_MAX_HEADER_SIZE);
    file_case(__LINE__, "atlimit.safetensors", buf, 10, FL_EINPUT, "past the end");
    const char *j = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    size_t n = strlen(j);
    unsigned char big[128];
    put_le(big, n);
    memcpy(big + 8, j, n);
    memset(big + 8 + n, 0x11, 8);
    file_case(__LINE__, "one.safetensors", big, 8 + n + 8, FL_OK, "");
    file_case(__LINE__, "trunc.safetensors", big, 8 + n + 7, FL_EINPUT, "truncated");
    /* A directory is not a safetensors file. */
    int dfd = open(tmpdir, O_RDONLY | O_DIRECTORY);
    st_header h;
    fl_error err;
    CHECK(st_read_header(tmpdir, dfd, &h, &err) == FL_EINPUT && strstr(err.msg, "not a regular file"), "%s", err.msg);
    close(dfd);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", tmpdir);
}

/* ---- writer ---------------------------------------------------------------- */

static void test_layout(void)
{
    /* The reference's own example, byte for byte. */
    st_tensor one = {.name = "a", .dtype = ST_F32, .ndim = 1, .shape = {2}, .begin = 0, .end = 8};
    size_t order[8];
    char *hdr;
    size_t hsz;
    fl_error err;
    const char *want = "{\"__metadata__\":{\"format\":\"pt\"},\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    CHECK(st_layout(WHAT, &one, 1, NULL, 0, order, &hdr, &hsz, &err) == FL_OK, "%s", err.msg);
    size_t wl = strlen(want), padded = (wl + 7) / 8 * 8;
    CHECK(hsz == 8 + padded, "size %zu, expected %zu", hsz, 8 + padded);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = n << 8 | (unsigned char)hdr[i];
    CHECK(n == padded, "length prefix %llu", (unsigned long long)n);
    CHECK(memcmp(hdr + 8, want, wl) == 0, "json: %.*s", (int)(hsz - 8), hdr + 8);
    for (size_t i = 8 + wl; i < hsz; i++) CHECK(hdr[i] == ' ', "padding byte %zu", i);
    free(hdr);

    /* Order: dtype descending (F32 > BF16 > F16 in the enum), then name. */
    st_tensor ts[5] = {
        {.name = "b", .dtype = ST_F16, .ndim = 1, .shape = {3}, .begin = 0, .end = 6},
        {.name = "c", .dtype = ST_F32, .ndim = 1, .shape = {1}, .begin = 0, .end = 4},
        {.name = "q\"\\\n\x01/\xc3\xa9", .dtype = ST_BF16, .ndim = 0, .begin = 0, .end = 2},
        {.name = "a", .dtype = ST_F32, .ndim = 2, .shape = {1, 2}, .begin = 100, .end = 108},
        {.name = "z", .dtype = ST_U8, .ndim = 1, .shape = {0}, .begin = 0, .end = 0},
    };
    st_meta meta[2] = {{"k\"ey", "v\talue"}, {"other", ""}};
    CHECK(st_layout(WHAT, ts, 5, meta, 2, order, &hdr, &hsz, &err) == FL_OK, "%s", err.msg);
    size_t want_order[5] = {3, 1, 2, 0, 4};
    for (int i = 0; i < 5; i++) CHECK(order[i] == want_order[i], "order[%d] = %zu", i, order[i]);
    CHECK(ts[3].begin == 0 && ts[3].end == 8 && ts[1].begin == 8 && ts[1].end == 12 &&
          ts[2].begin == 12 && ts[2].end == 14 && ts[0].begin == 14 && ts[0].end == 20 &&
          ts[4].begin == 20 && ts[4].end == 20, "offsets");
    const char *want2 =
        "{\"__metadata__\":{\"format\":\"pt\",\"k\\\"ey\":\"v\\talue\",\"other\":\"\"},"
        "\"a\":{\"dtype\":\"F32\",\"shape\":[1,2],\"data_offsets\":[0,8]},"
        "\"c\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]},"
        "\"q\\\"\\\\\\n\\u0001/\xc3\xa9\":{\"dtype\":\"BF16\",\"shape\":[],\"data_offsets\":[12,14]},"
        "\"b\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[14,20]},"
        "\"z\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[20,20]}}";
    CHECK(hsz >= 8 + strlen(want2) && memcmp(hdr + 8, want2, strlen(want2)) == 0 && (hsz - 8) % 8 == 0,
          "json: %.*s", (int)(hsz - 8), hdr + 8);
    /* Read back. */
    st_header h;
    CHECK(st_parse_header(WHAT, hdr + 8, hsz - 8, hsz + 20, &h, &err) == FL_OK, "%s", err.msg);
    if (h.n_tensors == 5) {
        for (int i = 0; i < 5; i++) {
            const st_tensor *t = st_header_find(&h, ts[i].name);
            CHECK(t && t->dtype == ts[i].dtype && t->ndim == ts[i].ndim && t->begin == ts[i].begin &&
                  t->end == ts[i].end && memcmp(t->shape, ts[i].shape, sizeof t->shape) == 0,
                  "tensor %d read back", i);
        }
        CHECK(h.n_meta == 3 && strcmp(st_header_meta(&h, "k\"ey"), "v\talue") == 0 &&
              strcmp(st_header_meta(&h, "format"), "pt") == 0, "meta read back");
        st_header_free(&h);
    }
    free(hdr);

    /* "format" already present is not repeated; no tensors is fine. */
    st_meta fm = {"format", "pt"};
    CHECK(st_layout(WHAT, NULL, 0, &fm, 1, order, &hdr, &hsz, &err) == FL_OK, "%s", err.msg);
    CHECK(hsz == 8 + 32 && memcmp(hdr + 8, "{\"__metadata__\":{\"format\":\"pt\"}}", 32) == 0,
          "%.*s", (int)(hsz - 8), hdr + 8);
    free(hdr);

    /* Refused: size disagreeing with shape, duplicate names, reserved name. */
    st_tensor badsz = {.name = "a", .dtype = ST_F32, .ndim = 1, .shape = {2}, .begin = 0, .end = 4};
    CHECK(st_layout(WHAT, &badsz, 1, NULL, 0, order, &hdr, &hsz, &err) == FL_EINPUT, "size mismatch accepted");
    st_tensor dup[2] = {{.name = "a", .dtype = ST_F32, .ndim = 0, .end = 4},
                        {.name = "a", .dtype = ST_F16, .ndim = 0, .end = 2}};
    CHECK(st_layout(WHAT, dup, 2, NULL, 0, order, &hdr, &hsz, &err) == FL_EINPUT &&
          strstr(err.msg, "duplicate"), "duplicate accepted");
    st_tensor res = {.name = "__metadata__", .dtype = ST_U8, .ndim = 0, .end = 1};
    CHECK(st_layout(WHAT, &res, 1, NULL, 0, order, &hdr, &hsz, &err) == FL_EINPUT, "reserved name accepted");
}

int main(void)
{
    test_valid();
    test_malformed();
    test_many_tensors();
    test_files();
    test_layout();
    if (failures) {
        fprintf(stderr, "test_safetensors: %d failures\n", failures);
        return 1;
    }
    printf("test_safetensors: ok\n");
    return 0;
}
