/* test_hub_names.c — the pure parts of the hub client: the repo-id
 * grammar, path validation, cache folder names and directories (from the
 * hub_env the CLI fills), token lookup, URL quoting.  Expectations are literal strings from hub-protocol.md and
 * huggingface_hub's documented behaviour (validate_repo_id, quote,
 * repo_folder_name, constants.py), not outputs of the code under test. */
#include "flashify/cache.h"
#include "flashify/http.h"
#include "flashify/hub.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

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

    /* The hub_env fields are the variables as the CLI reads them. */
    hub_env e = {.home = "/home/u"};
    expect_str(cache_hub_dir(&e), "/home/u/.cache/huggingface/hub", "default");
    e.xdg_cache_home = "/xdg";
    expect_str(cache_hub_dir(&e), "/xdg/huggingface/hub", "XDG_CACHE_HOME");
    e.hf_home = "~/hf";
    expect_str(cache_hub_dir(&e), "/home/u/hf/hub", "HF_HOME with ~");
    expect_str(cache_hf_home(&e), "/home/u/hf", "cache_hf_home");
    e.huggingface_hub_cache = "/legacy";
    expect_str(cache_hub_dir(&e), "/legacy", "HUGGINGFACE_HUB_CACHE");
    e.hf_hub_cache = "/new";
    expect_str(cache_hub_dir(&e), "/new", "HF_HUB_CACHE wins");
    hub_env empty = {.hf_home = "", .home = "/h"};
    expect_str(cache_hub_dir(&empty), "/h/.cache/huggingface/hub", "empty HF_HOME is unset");

    static const char *on[] = {"1", "ON", "yes", "True"}, *off[] = {"0", "", "no", "2"};
    hub_env o = {0};
    for (size_t i = 0; i < 4; i++) {
        o.hf_hub_offline = on[i];
        CHECK(cache_offline_env(&o), "HF_HUB_OFFLINE=%s is offline", on[i]);
        o.hf_hub_offline = off[i];
        CHECK(!cache_offline_env(&o), "HF_HUB_OFFLINE=%s is online", off[i]);
    }
    o.hf_hub_offline = NULL;
    o.transformers_offline = "1";
    CHECK(cache_offline_env(&o), "TRANSFORMERS_OFFLINE=1");
    CHECK(!cache_offline_env(NULL), "no environment is online");
    hub_env sl = {.hf_hub_disable_symlinks = "TRUE"};
    CHECK(cache_symlinks_disabled(&sl), "HF_HUB_DISABLE_SYMLINKS=TRUE");
    sl.hf_hub_disable_symlinks = "0";
    CHECK(!cache_symlinks_disabled(&sl), "HF_HUB_DISABLE_SYMLINKS=0");
}

static void test_tokens(void)
{
    /* utils/_auth.py get_token: --token, HF_TOKEN, HUGGING_FACE_HUB_TOKEN,
     * then the token file; whitespace trimmed, CR/LF dropped, "" is none. */
    hub_env e = {.hf_token = " hf_env \r\n", .hugging_face_hub_token = "hf_legacy",
                 .hf_token_path = "/nonexistent/token"};
    char *t = hub_find_token("  hf_given\n", &e);
    expect_str(t, "hf_given", "--token wins");
    expect_str(hub_find_token(NULL, &e), "hf_env", "HF_TOKEN");
    e.hf_token = "   ";
    expect_str(hub_find_token(NULL, &e), "hf_legacy", "blank HF_TOKEN is none");
    e.hugging_face_hub_token = NULL;
    CHECK(hub_find_token(NULL, &e) == NULL, "missing token file is no token");
}

static void test_quote(void)
{
    /* urllib.parse.quote(s, safe="") and quote(path) (safe="/"). */
    expect_str(http_quote("refs/pr/1", ""), "refs%2Fpr%2F1", "revision");
    expect_str(http_quote("a b+c/d~e_f.g-h", "/"), "a%20b%2Bc/d~e_f.g-h", "path");
    expect_str(http_quote("\xc3\xa9", "/"), "%C3%A9", "utf-8");
}

int main(void)
{
    test_repo_ids();
    test_relpaths();
    test_cache_dirs();
    test_tokens();
    test_quote();
    if (failures)
        fprintf(stderr, "%d check(s) failed\n", failures);
    return failures != 0;
}
