/* commit.c — the streamed NDJSON commit (see commit.h). */
#include "flashify/commit.h"
#include "flashify/util.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The payload is a list of segments: JSON text, or raw bytes that go out
 * base64-encoded (a regular file's content). */
typedef struct {
    char *text;                  /* NULL: a base64 segment */
    const unsigned char *raw;
    size_t raw_len;
    uint64_t len;                /* bytes this segment contributes */
} segment;

struct commit_payload {
    segment *seg;
    size_t n, cap;
    uint64_t size;
    size_t cur;                  /* the segment the last read ended in */
    uint64_t cur_start;          /* its offset in the payload */
    int oom;
};

/* A new zeroed segment at the end, or NULL (p->oom set). */
static segment *push(commit_payload *p)
{
    if (p->oom)
        return NULL;
    if (p->n == p->cap) {
        size_t cap = p->cap ? 2 * p->cap : 16;
        segment *s = realloc(p->seg, cap * sizeof *s);
        if (!s) {
            p->oom = 1;
            return NULL;
        }
        p->seg = s;
        p->cap = cap;
    }
    segment *s = &p->seg[p->n++];
    memset(s, 0, sizeof *s);
    return s;
}

/* Appends the text of b (and resets b). */
static void add_text(commit_payload *p, strbuf *b)
{
    char *t = sb_take(b);
    segment *s = t ? push(p) : NULL;
    if (!s) {
        free(t);
        p->oom = 1;
        return;
    }
    s->text = t;
    s->len = strlen(t);
    p->size += s->len;
}

/* Appends len raw bytes that go out base64-encoded. */
static void add_b64(commit_payload *p, const unsigned char *raw, size_t len)
{
    segment *s = push(p);
    if (!s)
        return;
    s->raw = raw;
    s->raw_len = len;
    s->len = 4 * ((uint64_t)len / 3 + (len % 3 != 0));
    p->size += s->len;
}

commit_payload *commit_payload_new(const commit_request *r)
{
    commit_payload *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    strbuf b = {0};
    sb_str(&b, "{\"key\":\"header\",\"value\":{\"summary\":");
    sb_json_string(&b, r->summary);
    sb_str(&b, ",\"description\":");
    sb_json_string(&b, r->description ? r->description : "");
    if (r->parent) {
        sb_str(&b, ",\"parentCommit\":");
        sb_json_string(&b, r->parent);
    }
    sb_str(&b, "}}\n");
    add_text(p, &b);
    for (size_t i = 0; i < r->n_ops && !p->oom; i++) {
        const commit_op *op = &r->ops[i];
        if (op->lfs) {
            sb_str(&b, "{\"key\":\"lfsFile\",\"value\":{\"path\":");
            sb_json_string(&b, op->path);
            sb_printf(&b, ",\"algo\":\"sha256\",\"oid\":\"%s\",\"size\":%lld}}\n", op->oid,
                      (long long)op->size);
            add_text(p, &b);
            continue;
        }
        sb_str(&b, "{\"key\":\"file\",\"value\":{\"content\":\"");
        add_text(p, &b);
        add_b64(p, op->content, (size_t)op->size);
        sb_str(&b, "\",\"path\":");
        sb_json_string(&b, op->path);
        sb_str(&b, ",\"encoding\":\"base64\"}}\n");
        add_text(p, &b);
    }
    sb_free(&b);
    if (p->oom) {
        commit_payload_free(p);
        return NULL;
    }
    return p;
}

uint64_t commit_payload_size(const commit_payload *p)
{
    return p->size;
}

/* Characters [from, from+n) of the base64 encoding of raw (RFC 4648, with
 * padding), into out. */
static void b64_range(const unsigned char *raw, size_t len, uint64_t from, char *out, size_t n)
{
    static const char A[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    uint64_t g = from / 4;
    size_t skip = (size_t)(from % 4), w = 0;
    while (w < n) {
        size_t i = (size_t)(g * 3);
        unsigned v = (unsigned)raw[i] << 16;
        size_t have = len - i >= 3 ? 3 : len - i;
        if (have > 1)
            v |= (unsigned)raw[i + 1] << 8;
        if (have > 2)
            v |= raw[i + 2];
        char q[4] = {A[v >> 18 & 63], A[v >> 12 & 63], have > 1 ? A[v >> 6 & 63] : '=',
                     have > 2 ? A[v & 63] : '='};
        for (size_t k = skip; k < 4 && w < n; k++)
            out[w++] = q[k];
        skip = 0;
        g++;
    }
}

char *hub_base64(const void *p, size_t n)
{
    size_t len = 4 * (n / 3 + (n % 3 != 0));
    char *out = malloc(len + 1);
    if (!out)
        return NULL;
    if (len)
        b64_range(p, n, 0, out, len);
    out[len] = 0;
    return out;
}

size_t commit_payload_read(commit_payload *p, uint64_t off, char *buf, size_t n)
{
    if (off < p->cur_start) {        /* a retry starts again */
        p->cur = 0;
        p->cur_start = 0;
    }
    size_t w = 0;
    while (w < n && p->cur < p->n) {
        segment *s = &p->seg[p->cur];
        uint64_t in = off + w - p->cur_start;
        if (in >= s->len) {
            p->cur_start += s->len;
            p->cur++;
            continue;
        }
        size_t k = s->len - in < n - w ? (size_t)(s->len - in) : n - w;
        if (s->text)
            memcpy(buf + w, s->text + in, k);
        else
            b64_range(s->raw, s->raw_len, in, buf + w, k);
        w += k;
    }
    return w;
}

void commit_payload_free(commit_payload *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->n; i++)
        free(p->seg[i].text);
    free(p->seg);
    free(p);
}

static size_t payload_read(void *ctx, uint64_t off, char *buf, size_t n)
{
    return commit_payload_read(ctx, off, buf, n);
}

/* commitOid, commitUrl, pullRequestUrl of a 2xx reply. */
static fl_status read_reply(const char *body, commit_result *out, fl_error *err)
{
    cJSON *j = cJSON_Parse(body);
    const char *oid = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "commitOid"));
    const char *url = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "commitUrl"));
    const char *pr = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "pullRequestUrl"));
    fl_status st = FL_OK;
    if (!oid || strlen(oid) != 40 || strspn(oid, "0123456789abcdef") != 40)
        st = fl_fail(err, FL_ENET, "the Hub's commit answer has no commitOid");
    else
        memcpy(out->oid, oid, 41);
    if (st == FL_OK && ((url && !(out->url = fl_strdup(url))) ||
                        (pr && !(out->pr_url = fl_strdup(pr)))))
        st = fl_fail(err, FL_EIO, "out of memory");
    cJSON_Delete(j);
    return st;
}

fl_status hub_commit(http_client *c, void *curl, const commit_request *r, commit_result *out,
                     fl_error *err)
{
    memset(out, 0, sizeof *out);
    commit_payload *p = commit_payload_new(r);
    if (!p)
        return fl_fail(err, FL_EIO, "out of memory");
    out->payload_bytes = (int64_t)p->size;
    strbuf reply = {0};
    http_headers hd = {0};
    http_headers_reset(&hd);
    /* huggingface_hub never retries a commit; with a parent commit a
     * repeated one is refused (412), so flashify retries it (commit.h). */
    http_request req = {.method = "POST", .url = r->url, .auth = 1,
                        .content_type = "application/x-ndjson", .body_len = (size_t)p->size,
                        .read = payload_read, .read_ctx = p, .reply = &reply,
                        .timeout = r->timeout, .finish_on_interrupt = 1,
                        .fresh_connection = 1,
                        .retry = r->parent && !r->opens_pr ? HTTP_RETRY_TRANSIENT
                                                           : HTTP_RETRY_UNSENT};
    http_stats stats = {0};
    fl_status st = http_perform(c, curl, &req, &hd, &stats, err);
    out->maybe_applied = stats.maybe_applied;
    if (st == FL_OK) {
        http_response_fill(&out->reply, &hd, hd.status);
        if (hd.status >= 200 && hd.status < 300)
            st = read_reply(reply.p ? reply.p : "", out, err);
    }
    sb_free(&reply);
    http_headers_reset(&hd);
    commit_payload_free(p);
    return st;
}

void commit_result_free(commit_result *r)
{
    free(r->url);
    free(r->pr_url);
    http_response_free(&r->reply);
    memset(r, 0, sizeof *r);
}
