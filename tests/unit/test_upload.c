/* test_upload.c — the pure parts of publishing: the streamed commit
 * payload (base64 and JSON, read in any pieces), the digests the Hub names
 * files by and which paths a folder publishes.
 * Expectations are literal values: RFC 4648 test vectors, `git
 * hash-object` and sha256sum outputs, huggingface_hub's ignore and forbid
 * rules (utils/_paths.py), not outputs of the code under test. */
#include "flashify/commit.h"
#include "flashify/hash.h"
#include "flashify/upload.h"
#include "flashify/upload_scan.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

static void test_base64(void)
{
    /* RFC 4648 §10. */
    static const char *in[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    static const char *out[] = {"", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    for (size_t i = 0; i < 7; i++) {
        char *b = hub_base64(in[i], strlen(in[i]));
        CHECK(b && !strcmp(b, out[i]), "base64('%s') = '%s', want '%s'", in[i], b ? b : "?", out[i]);
        free(b);
    }
    unsigned char bytes[3] = {0xfb, 0xff, 0x00};
    char *b = hub_base64(bytes, 3);
    CHECK(b && !strcmp(b, "+/8A"), "base64 of fb ff 00 = '%s'", b ? b : "?");
    free(b);
}

/* The whole payload, read in pieces of `step` bytes. */
static char *read_all(commit_payload *p, size_t step)
{
    uint64_t n = commit_payload_size(p);
    char *buf = calloc(n + 1, 1);
    for (uint64_t off = 0; buf && off < n;) {
        size_t want = n - off < step ? (size_t)(n - off) : step;
        size_t got = commit_payload_read(p, off, buf + off, want);
        if (got != want) {
            free(buf);
            return NULL;
        }
        off += got;
    }
    return buf;
}

static void test_commit_payload(void)
{
    const unsigned char cfg[] = "{\"a\": 1}\n";
    const unsigned char bin[5] = {0, 1, 2, 0xfe, 0xff};
    commit_op ops[] = {
        {.path = "model.safetensors", .lfs = 1,
         .oid = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", .size = 3},
        {.path = "config.json", .content = cfg, .size = sizeof cfg - 1},
        {.path = "sub/\"q\".bin", .content = bin, .size = 5},
    };
    commit_request r = {.url = "http://x", .summary = "Upload \"it\"\n", .description = "",
                        .parent = "0123456789abcdef0123456789abcdef01234567", .ops = ops,
                        .n_ops = 3};
    commit_payload *p = commit_payload_new(&r);
    CHECK(p != NULL, "payload");
    if (!p)
        return;
    char *whole = read_all(p, 1 << 20);
    CHECK(whole && strlen(whole) == commit_payload_size(p), "size %llu, read %zu",
          (unsigned long long)commit_payload_size(p), whole ? strlen(whole) : 0);
    /* Any piece size gives the same bytes (libcurl asks for what it likes,
     * and a retry starts again at 0). */
    static const size_t steps[] = {1, 2, 3, 7, 64, 1000};
    for (size_t i = 0; whole && i < sizeof steps / sizeof *steps; i++) {
        char *again = read_all(p, steps[i]);
        CHECK(again && !strcmp(again, whole), "pieces of %zu differ", steps[i]);
        free(again);
    }
    /* NDJSON: 4 lines, each a JSON object. */
    const char *want[4] = {
        "{\"key\":\"header\",\"value\":{\"summary\":\"Upload \\\"it\\\"\\n\",\"description\":\"\","
        "\"parentCommit\":\"0123456789abcdef0123456789abcdef01234567\"}}",
        "{\"key\":\"lfsFile\",\"value\":{\"path\":\"model.safetensors\",\"algo\":\"sha256\","
        "\"oid\":\"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\",\"size\":3}}",
        "{\"key\":\"file\",\"value\":{\"content\":\"eyJhIjogMX0K\",\"path\":\"config.json\","
        "\"encoding\":\"base64\"}}",
        "{\"key\":\"file\",\"value\":{\"content\":\"AAEC/v8=\",\"path\":\"sub/\\\"q\\\".bin\","
        "\"encoding\":\"base64\"}}",
    };
    char *line = whole;
    for (int i = 0; line && i < 4; i++) {
        char *nl = strchr(line, '\n');
        CHECK(nl != NULL, "line %d has no newline", i);
        if (!nl)
            break;
        *nl = 0;
        CHECK(!strcmp(line, want[i]), "line %d:\n  %s\nwant\n  %s", i, line, want[i]);
        cJSON *j = cJSON_Parse(line);
        CHECK(cJSON_IsObject(j), "line %d is not JSON", i);
        cJSON_Delete(j);
        line = nl + 1;
    }
    CHECK(line && !*line, "trailing bytes after the last line");
    free(whole);
    commit_payload_free(p);
}

static void test_digests(void)
{
    char hex[65];
    fl_digest d = {0};
    /* sha256("abc") (FIPS 180-2); git hash-object of "hello\n". */
    CHECK(fl_digest_init(&d, HASH_SHA256, 3) && fl_digest_update(&d, "abc", 3) &&
          fl_digest_hex(&d, hex, sizeof hex) &&
          !strcmp(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
          "sha256(abc) = %s", hex);
    fl_digest_free(&d);
    CHECK(fl_digest_init(&d, HASH_GITSHA1, 6) && fl_digest_update(&d, "hello\n", 6) &&
          fl_digest_hex(&d, hex, sizeof hex) &&
          !strcmp(hex, "ce013625030ba8dba906f756967f9e9ca394464a"), "git blob id = %s", hex);
    /* The empty blob: git's well-known e69de29b... */
    CHECK(fl_digest_init(&d, HASH_GITSHA1, 0) && fl_digest_hex(&d, hex, sizeof hex) &&
          !strcmp(hex, "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"), "empty blob id = %s", hex);
    fl_digest_free(&d);
    CHECK(hash_kind_of("ce013625030ba8dba906f756967f9e9ca394464a") == HASH_GITSHA1, "40 hex");
    CHECK(hash_kind_of("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad") ==
          HASH_SHA256, "64 hex");
    CHECK(hash_kind_of("d41d8cd98f00b204e9800998ecf8427e") == HASH_NONE, "md5 is neither");
}

static void test_paths(void)
{
    static const char *ignored[] = {".git", ".git/HEAD", "a/.git", "a/.git/objects/x",
                                    ".cache/huggingface", ".cache/huggingface/upload/x.metadata",
                                    "sub/.cache/huggingface/y"};
    static const char *kept[] = {".gitattributes", ".github/workflow.yml", "a.git", "x/.gitignore",
                                 ".cache/other", "cache/huggingface/x", "model.safetensors"};
    for (size_t i = 0; i < sizeof ignored / sizeof *ignored; i++)
        CHECK(upload_path_ignored(ignored[i]), "'%s' is published", ignored[i]);
    for (size_t i = 0; i < sizeof kept / sizeof *kept; i++)
        CHECK(!upload_path_ignored(kept[i]), "'%s' is skipped", kept[i]);
    CHECK(upload_path_forbidden(".cache/other"), ".cache/other allowed");
    CHECK(upload_path_forbidden("a/.cache/b"), "a/.cache/b allowed");
    CHECK(!upload_path_forbidden(".cachex/a") && !upload_path_forbidden("a/b.cache"),
          "a name that only starts with .cache refused");
}


int main(void)
{
    test_base64();
    test_commit_payload();
    test_digests();
    test_paths();
    if (failures)
        fprintf(stderr, "%d check(s) failed\n", failures);
    return failures != 0;
}
