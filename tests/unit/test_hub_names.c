/* test_hub_names.c — the pure parts of the hub client: the repo-id
 * grammar, path validation, cache folder names and directories, URL
 * quoting.  Expectations are literal strings from hub-protocol.md and
 * huggingface_hub's documented behaviour (validate_repo_id, quote,
 * repo_folder_name, constants.py), not outputs of the code under test. */
#include "flashify/cache.h"
#include "flashify/download.h"
#include "flashify/hub.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;
#define CHECK(cond, ...) do { if (!(cond)) { failures++; \
    fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond); \
    fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); } } while (0)

static void test_repo_ids(void)
{
    static const char *good[] = {
        "meta-llama/Llama-3.2-1B", "org/name", "a/b", "google/gemma-2-2b@main",
        "org/name@refs/pr/1", "Org_1/model.v2", "o/x@0123456789abcdef0123456789abcdef01234567",
        "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
    };
    static const char *bad[] = {
        "", "name", "org/", "/name", "org//name", "org/a/b", "org/a--b", "org/a..b",
        "org/model.git", "./x", "../x", "-org/x", "org/x y", "org/x@", "org/x@../etc",
        "org/x@/abs", "org/\x01", "org/x\\y", "C:/x",
        "org/xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    };
    for (size_t i = 0; i < sizeof good / sizeof *good; i++)
        CHECK(hub_is_repo_id(good[i]), "'%s' rejected", good[i]);
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        CHECK(!hub_is_repo_id(bad[i]), "'%s' accepted", bad[i]);
    /* 96 characters is the limit, 97 is over it. */
    char id[128] = "o/";
    memset(id + 2, 'x', 96);
    id[98] = 0;
    CHECK(hub_is_repo_id(id), "96-char name rejected");
    id[98] = 'x';
    id[99] = 0;
    CHECK(!hub_is_repo_id(id), "97-char name accepted");
}

static void test_relpaths(void)
{
    static const char *good[] = {"config.json", "a/b/c.safetensors", "sub dir/x+y.json",
                                 "..hidden", "a/.b", "unicode-\xc3\xa9.json"};
    static const char *bad[] = {"", "/etc/passwd", "../x", "a/../b", "a/..", "./x", "a/./b",
                                "a//b", "a/", "a\\b", "x\ny", "x\x7f", "\t"};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++)
        CHECK(cache_safe_relpath(good[i]), "'%s' rejected", good[i]);
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        CHECK(!cache_safe_relpath(bad[i]), "'%s' accepted", bad[i]);
    CHECK(cache_is_commit("0123456789abcdef0123456789abcdef01234567"), "commit");
    CHECK(!cache_is_commit("0123456789ABCDEF0123456789abcdef01234567"), "uppercase commit");
    CHECK(!cache_is_commit("main"), "main is not a commit");
}

static void expect_str(char *got, const char *want, const char *what)
{
    CHECK(got && !strcmp(got, want), "%s: got '%s', want '%s'", what, got ? got : "(null)", want);
    free(got);
}

static void test_cache_dirs(void)
{
    expect_str(cache_repo_folder("meta-llama/Llama-3.2-1B"), "models--meta-llama--Llama-3.2-1B",
               "folder");
    expect_str(cache_repo_folder("gpt2"), "models--gpt2", "folder without namespace");

    unsetenv("HF_HUB_CACHE");
    unsetenv("HUGGINGFACE_HUB_CACHE");
    unsetenv("HF_HOME");
    unsetenv("XDG_CACHE_HOME");
    setenv("HOME", "/home/u", 1);
    expect_str(cache_hub_dir(), "/home/u/.cache/huggingface/hub", "default");
    setenv("XDG_CACHE_HOME", "/xdg", 1);
    expect_str(cache_hub_dir(), "/xdg/huggingface/hub", "XDG_CACHE_HOME");
    setenv("HF_HOME", "~/hf", 1);
    expect_str(cache_hub_dir(), "/home/u/hf/hub", "HF_HOME with ~");
    expect_str(cache_hf_home(), "/home/u/hf", "cache_hf_home");
    setenv("HUGGINGFACE_HUB_CACHE", "/legacy", 1);
    expect_str(cache_hub_dir(), "/legacy", "HUGGINGFACE_HUB_CACHE");
    setenv("HF_HUB_CACHE", "/new", 1);
    expect_str(cache_hub_dir(), "/new", "HF_HUB_CACHE wins");

    static const char *on[] = {"1", "ON", "yes", "True"}, *off[] = {"0", "", "no", "2"};
    unsetenv("TRANSFORMERS_OFFLINE");
    for (size_t i = 0; i < 4; i++) {
        setenv("HF_HUB_OFFLINE", on[i], 1);
        CHECK(cache_offline_env(), "HF_HUB_OFFLINE=%s is offline", on[i]);
        setenv("HF_HUB_OFFLINE", off[i], 1);
        CHECK(!cache_offline_env(), "HF_HUB_OFFLINE=%s is online", off[i]);
    }
    unsetenv("HF_HUB_OFFLINE");
    setenv("TRANSFORMERS_OFFLINE", "1", 1);
    CHECK(cache_offline_env(), "TRANSFORMERS_OFFLINE=1");
    unsetenv("TRANSFORMERS_OFFLINE");
}

static void test_quote(void)
{
    /* urllib.parse.quote(s, safe="") and quote(path) (safe="/"). */
    expect_str(dl_quote("refs/pr/1", ""), "refs%2Fpr%2F1", "revision");
    expect_str(dl_quote("a b+c/d~e_f.g-h", "/"), "a%20b%2Bc/d~e_f.g-h", "path");
    expect_str(dl_quote("\xc3\xa9", "/"), "%C3%A9", "utf-8");
}

int main(void)
{
    test_repo_ids();
    test_relpaths();
    test_cache_dirs();
    test_quote();
    if (failures)
        fprintf(stderr, "%d check(s) failed\n", failures);
    return failures != 0;
}
