/* test_util.c — the shared helpers (util.h) and the worker pool (pool.h).
 *
 * Expectations are written out literally (the JSON escapes, the joined
 * paths) or computed by a second, obvious method (the pool's sum). */
#include "flashify/pool.h"
#include "flashify/util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"

static void test_strings(void)
{
    char *s = fl_path_join("a", "b");
    CHECK(s && !strcmp(s, "a/b"), "join a b: %s", s);
    free(s);
    s = fl_path_join("a/", "b");
    CHECK(s && !strcmp(s, "a/b"), "join a/ b: %s", s);
    free(s);
    s = fl_path_join("", "b");
    CHECK(s && !strcmp(s, "b"), "join '' b: %s", s);
    free(s);
    s = fl_asprintf("%s-%d-%05zu", "x", 42, (size_t)7);
    CHECK(s && !strcmp(s, "x-42-00007"), "asprintf: %s", s);
    free(s);
    char buf[64];
    CHECK(!strcmp(fl_basename("/a/bc/", buf, sizeof buf), "bc"), "basename: %s", buf);
    CHECK(!strcmp(fl_basename("bc", buf, sizeof buf), "bc"), "basename: %s", buf);
    CHECK(!strcmp(fl_basename("/", buf, sizeof buf), "/"), "basename /: %s", buf);
    CHECK(fl_ends_with("model.safetensors", ".safetensors") && !fl_ends_with("x", ".safetensors"),
          "ends_with");
    CHECK(fl_utf8_check("ok\xc3\xa9", 4) == 4, "utf8 valid");
    CHECK(fl_utf8_check("a\xc0\xafz", 4) == 1, "utf8 overlong");
    CHECK(fl_utf8_check("a\xed\xa0\x80", 4) == 1, "utf8 surrogate");
    CHECK(fl_utf8_check("\xf4\x90\x80\x80", 4) == 0, "utf8 above U+10FFFF");
    CHECK(fl_utf8_check("ab\xe2\x82", 4) == 2, "utf8 truncated");
}

static void test_strbuf(void)
{
    strbuf b = {0};
    sb_json_string(&b, "a\"b\\c\n\t\x01\x7f\xc3\xa9");
    const char *want = "\"a\\\"b\\\\c\\n\\t\\u0001\x7f\xc3\xa9\"";
    CHECK(b.p && !strcmp(b.p, want), "json escape: %s", b.p);
    sb_free(&b);
    for (int i = 0; i < 1000; i++)
        sb_printf(&b, "%04d", i);
    CHECK(!b.oom && b.n == 4000 && !memcmp(b.p + 3996, "0999", 4), "growth");
    char big[2000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = 0;
    sb_printf(&b, "%s", big);
    CHECK(!b.oom && b.n == 4000 + 1999, "long printf");
    char *t = sb_take(&b);
    CHECK(t && strlen(t) == 5999 && b.p == NULL && b.n == 0, "take");
    free(t);
    strbuf l = {.limit = 10};
    sb_str(&l, "0123456789");
    CHECK(!l.oom && l.n == 10, "at the limit");
    sb_str(&l, "x");
    CHECK(l.oom, "past the limit is sticky");
    sb_str(&l, "");
    CHECK(l.oom && sb_take(&l) == NULL, "take after oom");
    strbuf e = {0};
    t = sb_take(&e);
    CHECK(t && !*t, "take of an empty buffer is \"\"");
    free(t);
}

static void test_files(const char *dir)
{
    fl_error err = {0};
    char *p = fl_path_join(dir, "f.json"), *q = fl_path_join(dir, "fifo"),
         *r = fl_path_join(dir, "copy"), *d = fl_path_join(dir, "x/y//z/");
    FILE *f = fopen(p, "wb");
    fputs("{\"a\": 1}", f);
    fclose(f);
    char *text = NULL;
    size_t len = 0;
    CHECK(fl_read_file(p, 100, FL_READ_UTF8, &text, &len, &err) == FL_OK && len == 8 &&
              !strcmp(text, "{\"a\": 1}"), "read: %s", err.msg);
    free(text);
    CHECK(fl_read_file(p, 7, 0, &text, &len, &err) == FL_EINPUT && strstr(err.msg, "limit"),
          "cap: %s", err.msg);
    f = fopen(p, "wb");
    fputs("\xff", f);
    fclose(f);
    CHECK(fl_read_file(p, 100, FL_READ_UTF8, &text, &len, &err) == FL_EINPUT &&
              strstr(err.msg, "UTF-8"), "utf8: %s", err.msg);
    CHECK(mkfifo(q, 0600) == 0, "mkfifo");
    CHECK(fl_read_file(q, 100, 0, &text, &len, &err) == FL_EINPUT &&
              strstr(err.msg, "not a regular file"), "fifo: %s", err.msg);
    CHECK(fl_read_file(r, 100, 0, &text, &len, &err) == FL_EIO && strstr(err.msg, r),
          "missing: %s", err.msg);

    /* copy: in-kernel and through the buffer, at offsets */
    int in = open(p, O_RDWR | O_TRUNC), out = open(r, O_RDWR | O_CREAT | O_TRUNC, 0600);
    char data[10000];
    for (size_t i = 0; i < sizeof data; i++)
        data[i] = (char)(i * 7 + 3);
    CHECK(fl_pwrite_full(in, data, sizeof data, 0) == 0, "pwrite");
    char small[16];
    CHECK(fl_copy_range(in, 100, out, 5, 9000, p, r, small, sizeof small, &err) == FL_OK,
          "copy: %s", err.msg);
    char back[9000];
    CHECK(fl_pread_full(out, back, 9000, 5) == 0 && !memcmp(back, data + 100, 9000), "copied bytes");
    CHECK(fl_pread_full(out, back, 10, 9000) == -1 && errno == 0, "read past the end is EOF");
    CHECK(fl_copy_range(in, 9990, out, 0, 20, p, r, small, sizeof small, &err) == FL_EIO &&
              strstr(err.msg, p) && strstr(err.msg, "read failed"), "short source: %s", err.msg);
    close(in);
    close(out);

    CHECK(fl_mkdir_p(d, 0700, &err) == FL_OK, "mkdir -p: %s", err.msg);
    struct stat st;
    char *z = fl_path_join(dir, "x/y/z");
    CHECK(stat(z, &st) == 0 && S_ISDIR(st.st_mode), "created");
    CHECK(fl_mkdir_p(d, 0700, &err) == FL_OK, "exists already: %s", err.msg);
    CHECK(fl_mkdir_parents(dir, "x/y/w/file", 0700, &err) == FL_OK, "parents: %s", err.msg);
    char *w = fl_path_join(dir, "x/y/w");
    CHECK(stat(w, &st) == 0 && S_ISDIR(st.st_mode), "parents created");
    char *through = fl_path_join(p, "sub");
    CHECK(fl_mkdir_p(through, 0700, &err) == FL_EIO && strstr(err.msg, "not a directory"),
          "file in the way: %s", err.msg);
    free(through);
    free(w);
    free(z);
    free(p);
    free(q);
    free(r);
    free(d);
}

typedef struct {
    atomic_ullong sum;
    atomic_int seen[1000];
    atomic_int max_worker;
    size_t fail_at;
} pool_ctx;

static fl_status add_item(void *vctx, size_t item, int worker, fl_error *err)
{
    pool_ctx *c = vctx;
    if (item == c->fail_at)
        return fl_fail(err, FL_EINPUT, "item %zu failed", item);
    atomic_fetch_add(&c->sum, item * item);
    atomic_fetch_add(&c->seen[item], 1);
    int m = atomic_load(&c->max_worker);
    while (worker > m && !atomic_compare_exchange_weak(&c->max_worker, &m, worker))
        ;
    return FL_OK;
}

static void test_pool(void)
{
    fl_pool *p = fl_pool_new(4);
    CHECK(p && fl_pool_size(p) >= 1 && fl_pool_size(p) <= 4, "pool size");
    unsigned long long want = 0;
    for (size_t i = 0; i < 1000; i++)
        want += i * i;
    for (int run = 0; run < 50; run++) {
        pool_ctx c = {.fail_at = (size_t)-1};
        fl_error err = {0};
        CHECK(fl_pool_run(p, 1000, add_item, &c, &err) == FL_OK, "run %d", run);
        CHECK(atomic_load(&c.sum) == want, "sum %llu, want %llu", atomic_load(&c.sum), want);
        int once = 1;
        for (size_t i = 0; i < 1000; i++)
            once &= atomic_load(&c.seen[i]) == 1;
        CHECK(once, "every item exactly once");
        CHECK(atomic_load(&c.max_worker) < fl_pool_size(p), "worker index in range");
    }
    pool_ctx c = {.fail_at = 500};
    fl_error err = {0};
    CHECK(fl_pool_run(p, 1000, add_item, &c, &err) == FL_EINPUT && strstr(err.msg, "item 500"),
          "first error: %s", err.msg);
    CHECK(atomic_load(&c.seen[500]) == 0, "failing item not counted");
    c = (pool_ctx){.fail_at = (size_t)-1};
    CHECK(fl_pool_run(p, 0, add_item, &c, &err) == FL_OK && atomic_load(&c.sum) == 0, "no items");
    atomic_store(&fl_interrupted, 1);
    CHECK(fl_pool_run(p, 10, add_item, &c, &err) == FL_EINTR, "interrupted");
    atomic_store(&fl_interrupted, 0);
    fl_pool_free(p);
    c = (pool_ctx){.fail_at = (size_t)-1};
    CHECK(fl_pool_run_once(0, 1000, add_item, &c, &err) == FL_OK && atomic_load(&c.sum) == want,
          "run_once");
}

int main(void)
{
    char dir[] = "/tmp/flashify-test-util.XXXXXX";
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_strings();
    test_strbuf();
    test_files(dir);
    test_pool();
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "warning: could not remove %s\n", dir);
    if (failures) {
        fprintf(stderr, "%d failure(s)\n", failures);
        return 1;
    }
    printf("test_util: ok\n");
    return 0;
}
