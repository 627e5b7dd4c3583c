/* lfs.c — the LFS batch request and the transfers it asks for (see lfs.h;
 * docs/hub-protocol.md §10; huggingface_hub lfs.py post_lfs_batch_info,
 * lfs_upload, _upload_multi_part). */
#include "flashify/lfs.h"
#include "flashify/pool.h"
#include "flashify/util.h"

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define LFS_TYPE "application/vnd.git-lfs+json"

void lfs_object_free(lfs_object *o)
{
    free(o->href);
    free(o->verify);
    for (size_t i = 0; i < o->n_parts; i++) {
        free(o->parts[i]);
        if (o->etags)
            free(o->etags[i]);
    }
    free(o->parts);
    free(o->etags);
    if (o->fd >= 0)
        close(o->fd);
    o->href = o->verify = NULL;
    o->parts = o->etags = NULL;
    o->n_parts = 0;
    o->fd = -1;
}

/* ----------------------------------------------------------------------------
 * The batch */

/* An action URL from the answer: absolute http(s); a URL on
 * https://huggingface.co is moved to the endpoint (lfs.py
 * fix_hf_endpoint_in_url).  malloc'd or NULL. */
static char *action_url(const http_client *c, const char *href)
{
    static const char hf[] = "https://huggingface.co";
    if (!href || (strncmp(href, "http://", 7) && strncmp(href, "https://", 8)))
        return NULL;
    if (!strncmp(href, hf, sizeof hf - 1) && (href[sizeof hf - 1] == '/' || !href[sizeof hf - 1]) &&
        strcmp(c->endpoint, hf))
        return fl_asprintf("%s%s", c->endpoint, href + sizeof hf - 1);
    return fl_strdup(href);
}

static int64_t ceil_div(int64_t a, int64_t b)
{
    return a / b + (a % b != 0);
}

/* The multipart header: chunk_size and the part URLs "1".."N". */
static fl_status read_parts(const http_client *c, lfs_object *o, const cJSON *header,
                            fl_error *err)
{
    const char *cs = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(header, "chunk_size"));
    char *end;
    long long chunk = cs ? strtoll(cs, &end, 10) : 0;
    if (!cs || *end || chunk <= 0)
        return fl_fail(err, FL_ENET, "%s: the LFS batch answer has an unusable chunk_size", o->path);
    size_t n = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, header) {
        const char *k = e->string;
        n += k && *k && strspn(k, "0123456789") == strlen(k);
    }
    /* lfs.py _get_sorted_parts_urls: the part count must fit the size. */
    if ((int64_t)n != ceil_div(o->size, chunk))
        return fl_fail(err, FL_ENET, "%s: the LFS batch answer has %zu part URLs for %lld bytes in "
                       "parts of %lld", o->path, n, (long long)o->size, chunk);
    o->chunk = chunk;
    o->parts = calloc(n ? n : 1, sizeof *o->parts);
    o->etags = calloc(n ? n : 1, sizeof *o->etags);
    if (!o->parts || !o->etags)
        return fl_fail(err, FL_EIO, "out of memory");
    o->n_parts = n;
    for (size_t i = 0; i < n; i++) {
        char key[32];
        snprintf(key, sizeof key, "%zu", i + 1);
        const char *u = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(header, key));
        if (!(o->parts[i] = action_url(c, u)))
            return fl_fail(err, FL_ENET, "%s: the LFS batch answer has no usable URL for part %zu",
                           o->path, i + 1);
    }
    return FL_OK;
}

/* One object of the answer into o. */
static fl_status read_object(const http_client *c, lfs_object *o, const cJSON *j, fl_error *err)
{
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
    if (e) {
        const char *m = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "message"));
        const cJSON *code = cJSON_GetObjectItemCaseSensitive(e, "code");
        return fl_fail(err, FL_EINPUT, "%s: the Hub's LFS storage refused it (%d: %s)", o->path,
                       cJSON_IsNumber(code) ? code->valueint : 0, m ? m : "no message");
    }
    const cJSON *actions = cJSON_GetObjectItemCaseSensitive(j, "actions");
    const cJSON *up = cJSON_GetObjectItemCaseSensitive(actions, "upload");
    if (!up) {
        o->action = LFS_STORED;   /* the storage has these bytes already */
        return FL_OK;
    }
    const char *href = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(up, "href"));
    if (!(o->href = action_url(c, href)))
        return fl_fail(err, FL_ENET, "%s: the LFS batch answer has no usable upload URL", o->path);
    const cJSON *verify = cJSON_GetObjectItemCaseSensitive(actions, "verify");
    if (verify) {
        href = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(verify, "href"));
        if (!(o->verify = action_url(c, href)))
            return fl_fail(err, FL_ENET, "%s: the LFS batch answer has no usable verify URL",
                           o->path);
    }
    const cJSON *header = cJSON_GetObjectItemCaseSensitive(up, "header");
    if (cJSON_GetObjectItemCaseSensitive(header, "chunk_size")) {
        o->action = LFS_MULTIPART;
        return read_parts(c, o, header, err);
    }
    o->action = LFS_BASIC;
    return FL_OK;
}

static char *batch_payload(const lfs_session *s, const lfs_object *objs, size_t n)
{
    strbuf b = {0};
    sb_str(&b, "{\"operation\":\"upload\",\"transfers\":[\"basic\",\"multipart\"],\"objects\":[");
    for (size_t i = 0; i < n; i++)
        sb_printf(&b, "%s{\"oid\":\"%s\",\"size\":%lld}", i ? "," : "", objs[i].oid,
                  (long long)objs[i].size);
    sb_str(&b, "],\"hash_algo\":\"sha256\"");
    if (s->ref) {
        sb_str(&b, ",\"ref\":{\"name\":");
        sb_json_string(&b, s->ref);
        sb_str(&b, "}");
    }
    sb_str(&b, "}");
    return sb_take(&b);
}

/* Matches the answer's objects to objs by oid and size. */
static fl_status read_answer(const lfs_session *s, lfs_object *objs, size_t n, const char *body,
                             fl_error *err)
{
    cJSON *j = cJSON_Parse(body);
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(j, "objects");
    fl_status st = cJSON_IsArray(arr) ? FL_OK
                                      : fl_fail(err, FL_ENET, "the LFS batch answer has no objects");
    const cJSON *e;
    cJSON_ArrayForEach(e, arr) {
        const char *oid = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "oid"));
        const cJSON *size = cJSON_GetObjectItemCaseSensitive(e, "size");
        for (size_t i = 0; st == FL_OK && oid && cJSON_IsNumber(size) && i < n; i++)
            if (objs[i].action == LFS_UNKNOWN && !strcmp(objs[i].oid, oid) &&
                size->valuedouble == (double)objs[i].size)
                st = read_object(s->http, &objs[i], e, err);
        if (st)
            break;
    }
    for (size_t i = 0; st == FL_OK && i < n; i++)
        if (objs[i].action == LFS_UNKNOWN)
            st = fl_fail(err, FL_ENET, "%s: the LFS batch answer does not mention it", objs[i].path);
    cJSON_Delete(j);
    return st;
}

fl_status lfs_batch(lfs_session *s, void *curl, lfs_object *objs, size_t n, fl_error *err)
{
    char *payload = batch_payload(s, objs, n);
    if (!payload)
        return fl_fail(err, FL_EIO, "out of memory");
    strbuf reply = {0};
    http_headers hd = {0};
    http_headers_reset(&hd);
    http_request req = {.method = "POST", .url = s->batch_url, .auth = 1,
                        .content_type = LFS_TYPE, .accept = LFS_TYPE, .body = payload,
                        .body_len = strlen(payload), .reply = &reply,
                        .retry = HTTP_RETRY_TRANSIENT};
    fl_status st = http_perform(s->http, curl, &req, &hd, NULL, err);
    if (st == FL_OK && hd.status != 200) {
        http_response r = {0};
        http_response_fill(&r, &hd, hd.status);
        st = http_write_error(s->http, &r, "asking the LFS storage what to send", err);
    } else if (st == FL_OK) {
        st = read_answer(s, objs, n, reply.p ? reply.p : "", err);
    }
    free(payload);
    sb_free(&reply);
    http_headers_reset(&hd);
    return st;
}

/* ----------------------------------------------------------------------------
 * Transfers */

typedef struct {
    lfs_object *o;
    size_t part;             /* 0-based; 0 for a basic transfer */
} lfs_item;

typedef struct {
    lfs_session *s;
    lfs_item *items;
    CURL **handles;
} transfer_job;

/* A part's bytes, read again from the file on every attempt. */
typedef struct {
    lfs_object *o;
    uint64_t base;
    int err;
    int64_t reported;        /* bytes of this attempt already added to o->done */
    const lfs_session *s;
    http_client *http;
    int slot;
    const char *label;
    int64_t size;
    double last_emit;
} part_body;

static size_t part_read(void *ctx, uint64_t off, char *buf, size_t n)
{
    part_body *b = ctx;
    if (fl_pread_full(b->o->fd, buf, n, b->base + off) != 0) {
        b->err = errno ? errno : EIO;
        return 0;
    }
    return n;
}

static void emit(const lfs_session *s, hub_event_kind kind, int slot, const char *name,
                 int64_t done, int64_t total, double t0)
{
    hub_event ev = {.kind = kind, .phase = HUB_PHASE_UPLOAD, .slot = slot, .name = name,
                    .done = done, .total = total, .elapsed = fl_now() - t0, .step = s->step,
                    .steps = s->steps};
    http_emit(s->http, &ev);
}

/* Progress of an attempt: `sent` bytes of this part so far. */
static void part_sent(void *ctx, int64_t sent)
{
    part_body *b = ctx;
    /* A retry starts again from 0: the delta is negative once. */
    http_add_done(b->http, sent - b->reported);
    atomic_fetch_add(&b->o->done, sent - b->reported);
    b->reported = sent;
    double t = fl_now();
    if (t - b->last_emit >= 0.1) {
        b->last_emit = t;
        emit(b->s, HUB_EV_BYTES, b->slot, b->label, sent, b->size, b->o->t0);
    }
}

/* A small JSON POST (a completion or a verify); FL_OK on a 2xx. */
static fl_status post_json(lfs_session *s, CURL *h, const char *url, int auth, const char *type,
                           const char *body, const char *what, fl_error *err)
{
    http_headers hd = {0};
    http_headers_reset(&hd);
    http_request req = {.method = "POST", .url = url, .auth = auth, .content_type = type,
                        .accept = type, .body = body, .body_len = strlen(body),
                        .timeout = s->slow_timeout, .retry = HTTP_RETRY_TRANSIENT};
    fl_status st = http_perform(s->http, h, &req, &hd, NULL, err);
    if (st == FL_OK && (hd.status < 200 || hd.status >= 300)) {
        http_response r = {0};
        http_response_fill(&r, &hd, hd.status);
        st = http_write_error(s->http, &r, what, err);
    }
    http_headers_reset(&hd);
    return st;
}

/* After the last part: the completion POST (multipart) or the verify POST
 * (basic, when the batch asked for one). */
static fl_status finish_object(lfs_session *s, CURL *h, lfs_object *o, int slot, fl_error *err)
{
    char what[600];
    strbuf b = {0};
    fl_status st = FL_OK;
    if (o->action == LFS_MULTIPART) {
        sb_printf(&b, "{\"oid\":\"%s\",\"parts\":[", o->oid);
        for (size_t i = 0; i < o->n_parts; i++) {
            sb_printf(&b, "%s{\"partNumber\":%zu,\"etag\":", i ? "," : "", i + 1);
            sb_json_string(&b, o->etags[i]);
            sb_str(&b, "}");
        }
        sb_str(&b, "]}");
        snprintf(what, sizeof what, "completing the upload of %s", o->path);
        /* Pre-signed: lfs.py sends the LFS headers only, no token. */
        st = b.oom ? fl_fail(err, FL_EIO, "out of memory")
                   : post_json(s, h, o->href, 0, LFS_TYPE, b.p, what, err);
    } else if (o->verify) {
        sb_printf(&b, "{\"oid\":\"%s\",\"size\":%lld}", o->oid, (long long)o->size);
        snprintf(what, sizeof what, "verifying the upload of %s", o->path);
        st = b.oom ? fl_fail(err, FL_EIO, "out of memory")
                   : post_json(s, h, o->verify, 1, "application/json", b.p, what, err);
    }
    sb_free(&b);
    if (st == FL_OK)
        emit(s, HUB_EV_DONE, slot, o->path, o->size, o->size, o->t0);
    return st;
}

/* One PUT of part i of o (the whole file for a basic transfer). */
static fl_status put_part(lfs_session *s, CURL *h, lfs_object *o, size_t i, int slot,
                          fl_error *err)
{
    int64_t off = (int64_t)i * (o->action == LFS_MULTIPART ? o->chunk : 0);
    int64_t len = o->action == LFS_MULTIPART ? (o->size - off < o->chunk ? o->size - off : o->chunk)
                                             : o->size;
    char label[300];
    if (o->action == LFS_MULTIPART)
        snprintf(label, sizeof label, "%s [%zu/%zu]", o->path, i + 1, o->n_parts);
    else
        snprintf(label, sizeof label, "%s", o->path);
    part_body b = {.o = o, .base = (uint64_t)off, .s = s, .http = s->http, .slot = slot,
                   .label = label, .size = len};
    emit(s, HUB_EV_START, slot, label, 0, len, fl_now());
    http_headers hd = {0};
    http_headers_reset(&hd);
    http_request req = {.method = "PUT", .url = o->action == LFS_MULTIPART ? o->parts[i] : o->href,
                        .timeout = s->http->download_timeout, .body_len = (size_t)len,
                        .read = part_read, .read_ctx = &b, .sent = part_sent, .sent_ctx = &b,
                        .retry = HTTP_RETRY_TRANSIENT};
    http_stats stats = {0};
    fl_status st = http_perform(s->http, h, &req, &hd, &stats, err);
    if (b.err)
        st = fl_fail(err, FL_EIO, "%s: read failed: %s", o->file, strerror(b.err));
    if (st == FL_OK && (hd.status < 200 || hd.status >= 300)) {
        char what[400];
        snprintf(what, sizeof what, "uploading %s", label);
        http_response r = {0};
        http_response_fill(&r, &hd, hd.status);
        st = http_write_error(s->http, &r, what, err);
    }
    if (st == FL_OK && o->action == LFS_MULTIPART) {
        /* The ETag exactly as the storage sent it (quotes included). */
        if (!hd.etag[0] || hd.too_long)
            st = fl_fail(err, FL_ENET, "uploading %s: the storage answered without a usable ETag",
                         label);
        else if (!(o->etags[i] = fl_strdup(hd.etag)))
            st = fl_fail(err, FL_EIO, "out of memory");
    }
    pthread_mutex_lock(&s->http->mu);
    s->sent += stats.sent;
    s->resent += stats.resent;
    s->read += stats.sent;
    pthread_mutex_unlock(&s->http->mu);
    http_headers_reset(&hd);
    emit(s, HUB_EV_IDLE, slot, label, len, len, o->t0);
    return st;
}

static fl_status transfer_item(void *ctx, size_t item, int worker, fl_error *err)
{
    transfer_job *j = ctx;
    lfs_item *it = &j->items[item];
    fl_status st = put_part(j->s, j->handles[worker], it->o, it->part, worker, err);
    /* The worker that sends a file's last part completes the file. */
    if (st == FL_OK && atomic_fetch_sub(&it->o->parts_left, 1) == 1)
        st = finish_object(j->s, j->handles[worker], it->o, worker, err);
    if (st != FL_OK)
        atomic_store(&j->s->http->stop, 1);
    return st;
}

/* Opens o's file for the transfer: it must still have the size it was
 * hashed with. */
static fl_status open_object(lfs_object *o, fl_error *err)
{
    o->fd = open(o->file, O_RDONLY | O_CLOEXEC);
    if (o->fd < 0)
        return fl_fail(err, FL_EIO, "cannot open %s: %s", o->file, strerror(errno));
    struct stat sb;
    if (fstat(o->fd, &sb) != 0)
        return fl_fail(err, FL_EIO, "cannot stat %s: %s", o->file, strerror(errno));
    if ((int64_t)sb.st_size != o->size)
        return fl_fail(err, FL_EINPUT, "%s changed while uploading: %lld bytes, hashed as %lld",
                       o->file, (long long)sb.st_size, (long long)o->size);
    atomic_store(&o->parts_left, o->action == LFS_MULTIPART ? (int)o->n_parts : 1);
    atomic_store(&o->done, 0);
    o->t0 = fl_now();
    return FL_OK;
}

/* The transfer items of objs in file order, parts in order. */
static fl_status plan_items(lfs_object *objs, size_t n, lfs_item **out, size_t *n_items,
                            fl_error *err)
{
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        if (objs[i].action == LFS_BASIC || objs[i].action == LFS_MULTIPART)
            total += objs[i].action == LFS_MULTIPART ? objs[i].n_parts : 1;
    lfs_item *items = calloc(total ? total : 1, sizeof *items);
    if (!items)
        return fl_fail(err, FL_EIO, "out of memory");
    size_t k = 0;
    fl_status st = FL_OK;
    for (size_t i = 0; st == FL_OK && i < n; i++) {
        lfs_object *o = &objs[i];
        if (o->action != LFS_BASIC && o->action != LFS_MULTIPART)
            continue;
        st = open_object(o, err);
        size_t parts = o->action == LFS_MULTIPART ? o->n_parts : 1;
        for (size_t p = 0; st == FL_OK && p < parts; p++)
            items[k++] = (lfs_item){o, p};
    }
    *out = items;
    *n_items = k;
    return st;
}

fl_status lfs_transfer(lfs_session *s, lfs_object *objs, size_t n, fl_error *err)
{
    lfs_item *items = NULL;
    size_t n_items = 0;
    fl_status st = plan_items(objs, n, &items, &n_items, err);
    if (st || !n_items) {
        free(items);
        return st;
    }
    int nt = s->jobs < (int)n_items ? s->jobs : (int)n_items;
    fl_pool *pool = fl_pool_new(nt > 0 ? nt : 1);
    CURL **handles = pool ? calloc((size_t)fl_pool_size(pool), sizeof *handles) : NULL;
    st = handles ? FL_OK : fl_fail(err, FL_EIO, "out of memory");
    for (int i = 0; st == FL_OK && i < fl_pool_size(pool); i++)
        if (!(handles[i] = curl_easy_init()))
            st = fl_fail(err, FL_EIO, "cannot initialise libcurl");
    transfer_job job = {s, items, handles};
    if (st == FL_OK)
        st = fl_pool_run(pool, n_items, transfer_item, &job, err);
    for (int i = 0; handles && i < fl_pool_size(pool); i++)
        if (handles[i])
            curl_easy_cleanup(handles[i]);
    free(handles);
    fl_pool_free(pool);
    free(items);
    return st;
}
