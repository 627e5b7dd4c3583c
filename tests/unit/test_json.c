/* test_json.c — the strict JSON pull reader (json.h): the iterator over
 * objects and arrays, decoded keys and their byte offsets, the nesting
 * limit and the grammar errors.  The safetensors tests exercise the same
 * reader through headers; these pin the iterator's own contract. */
#include "flashify/json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

/* Walks the top-level object of `text`, recording "key@offset" for each
 * member and skipping its value; returns the status. */
static fl_status walk(const char *text, int max_depth, char *keys, size_t cap, fl_error *err)
{
    json_reader j;
    json_init(&j, "t.json", "JSON", text, strlen(text), max_depth, err);
    json_ws(&j);
    json_iter it;
    fl_status st = json_enter(&j, &it, '{', 0);
    keys[0] = 0;
    char *key;
    size_t at;
    int r = 0;
    while (st == FL_OK && (r = json_next(&j, &it, &key, &at)) > 0) {
        size_t n = strlen(keys);
        snprintf(keys + n, cap - n, "%s%s@%zu", n ? "," : "", key, at);
        free(key);
        st = json_skip(&j, 1);
    }
    if (st == FL_OK && r < 0)
        st = j.status;
    json_ws(&j);
    if (st == FL_OK && j.pos != j.len)
        st = json_fail(&j, "trailing data");
    return st;
}

int main(void)
{
    fl_error err = {0};
    char keys[512];
    CHECK(walk("{\"a\": 1, \"b\\u0063\": [1, {\"x\": null}], \"\\\"q\": \"s\"}", 8, keys,
               sizeof keys, &err) == FL_OK, "walk: %s", err.msg);
    CHECK(!strcmp(keys, "a@1,bc@9,\"q@38"), "keys decoded with their offsets: %s", keys);
    CHECK(walk(" { } ", 8, keys, sizeof keys, &err) == FL_OK && !keys[0], "empty object");

    static const struct {
        const char *text, *needle;
    } bad[] = {
        {"{\"a\": 1,}", "expected a string"},
        {"{\"a\" 1}", "expected ':'"},
        {"{\"a\": 1 \"b\": 2}", "expected ',' or '}'"},
        {"{\"a\": [1 2]}", "expected ',' or ']'"},
        {"{\"a\": [1,]}", "expected a JSON value"},
        {"{\"a\": 01}", "expected ',' or '}'"},
        {"{\"a\": +1}", "expected a JSON value"},
        {"{\"a\": \"\\u0000\"}", "NUL"},
        {"{\"a\": \"\\ud800\"}", "surrogate"},
        {"{\"a\": \"x\ty\"}", "control character"},
        {"{\"a\": tru}", "expected a JSON value"},
        {"{\"a\": [[[[1]]]]}", "nested deeper than 4"},
        {"{\"a\": 1", "at the end of the JSON"},
        {"{\"a\": 1}\x0c", "trailing"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err.msg[0] = 0;
        fl_status st = walk(bad[i].text, 4, keys, sizeof keys, &err);
        CHECK(st == FL_EINPUT && strstr(err.msg, bad[i].needle) && !strncmp(err.msg, "t.json: ", 8),
              "%s -> status %d, '%s' (want '%s')", bad[i].text, (int)st, err.msg, bad[i].needle);
    }
    /* Exactly at the limit is fine: depth 0 object, arrays at 1, 2, 3. */
    CHECK(walk("{\"a\": [[[1]]]}", 4, keys, sizeof keys, &err) == FL_OK, "at the limit: %s", err.msg);

    /* Numbers: plain integers exact to 64 bits, everything else flagged. */
    static const struct {
        const char *text;
        int is_uint;
        unsigned long long v;
    } nums[] = {{"0", 1, 0}, {"9007199254740993", 1, 9007199254740993ull},
                {"99999999999999999999", 0, 0}, {"-1", 0, 0}, {"1.0", 0, 0}, {"1e3", 0, 0}};
    for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) {
        json_reader j;
        json_init(&j, "n", "JSON", nums[i].text, strlen(nums[i].text), 4, &err);
        int u = -1;
        uint64_t v = 0;
        const char *tok;
        size_t tl;
        CHECK(json_number(&j, &u, &v, &tok, &tl) == FL_OK && u == nums[i].is_uint &&
                  (!u || v == nums[i].v) && tl == strlen(nums[i].text),
              "number %s: is_uint %d value %llu", nums[i].text, u, (unsigned long long)v);
    }
    if (failures) {
        fprintf(stderr, "%d failure(s)\n", failures);
        return 1;
    }
    printf("test_json: ok\n");
    return 0;
}
