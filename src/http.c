/* http.c — the HTTP layer of the hub client (see http.h).
 *
 * Redirects are never followed by libcurl: callers follow them hop by hop,
 * so the Authorization header is attached only to requests whose origin
 * is the Hub endpoint's, whatever libcurl's own redirect rules are
 * (docs/hub-protocol.md §2). */
#include "flashify/http.h"

#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ----------------------------------------------------------------------------
 * URLs */

char *http_quote(const char *s, const char *keep)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = strlen(s);
    if (n > (SIZE_MAX - 1) / 3)
        return NULL;
    char *out = malloc(3 * n + 1), *w = out;
    if (!out)
        return NULL;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (isalnum(*p) || strchr("_.-~", *p) || (keep && *p && strchr(keep, *p))) {
            *w++ = (char)*p;
        } else {
            *w++ = '%';
            *w++ = hex[*p >> 4];
            *w++ = hex[*p & 15];
        }
    }
    *w = 0;
    return out;
}

/* "scheme://host:port" with the default port filled in, lowercased; NULL
 * when url does not parse. */
static char *url_origin(const char *url)
{
    CURLU *u = curl_url();
    char *scheme = NULL, *host = NULL, *port = NULL, *out = NULL;
    if (u && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) == CURLUE_OK) {
        out = fl_asprintf("%s://%s:%s", scheme, host, port);
        for (char *c = out; c && *c; c++)
            *c = (char)tolower((unsigned char)*c);
    }
    curl_free(scheme);
    curl_free(host);
    curl_free(port);
    if (u)
        curl_url_cleanup(u);
    return out;
}

int http_same_origin(const http_client *c, const char *url)
{
    char *o = url_origin(url);
    int same = o && c->origin && !strcmp(o, c->origin);
    free(o);
    return same;
}

/* Python replaces only the path of the current URL (keeping its query)
 * for a Location without a host.  Anything with a scheme or "//" is
 * absolute. */
int http_location_is_relative(const char *loc)
{
    if (loc[0] == '/' && loc[1] == '/')
        return 0;
    for (const char *p = loc; *p && *p != '/' && *p != '?'; p++)
        if (*p == ':')
            return 0;
    return 1;
}

char *http_resolve(const char *base, const char *loc, int relative_path_only)
{
    CURLU *u = curl_url();
    char *res = NULL, *out = NULL;
    if (!u || curl_url_set(u, CURLUPART_URL, base, 0) != CURLUE_OK)
        goto done;
    if (relative_path_only && loc[0] == '/') {
        char *path = strndup(loc, strcspn(loc, "?#"));
        if (!path || curl_url_set(u, CURLUPART_PATH, path, 0) != CURLUE_OK) {
            free(path);
            goto done;
        }
        free(path);
    } else if (curl_url_set(u, CURLUPART_URL, loc, 0) != CURLUE_OK) {
        goto done;
    }
    if (curl_url_get(u, CURLUPART_URL, &res, 0) == CURLUE_OK)
        out = strdup(res);
done:
    curl_free(res);
    if (u)
        curl_url_cleanup(u);
    return out;
}

void http_log_url(char *buf, size_t n, const char *url)
{
    size_t q = strcspn(url, "?");
    snprintf(buf, n, "%.*s%s", (int)(q > 400 ? 400 : q), url, url[q] ? "?…" : "");
}

/* ----------------------------------------------------------------------------
 * The client */

void http_emit(http_client *c, hub_event *ev)
{
    if (!c->progress)
        return;
    pthread_mutex_lock(&c->mu);
    ev->all_done = c->all_done;
    ev->all_total = c->all_total;
    c->progress(ev, c->progress_ctx);
    pthread_mutex_unlock(&c->mu);
}

void http_log(http_client *c, const char *fmt, ...)
{
    if (!c->verbose || !c->progress)
        return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    hub_event ev = {.kind = HUB_EV_LOG, .msg = msg, .total = -1};
    http_emit(c, &ev);
}

void http_add_done(http_client *c, int64_t n)
{
    pthread_mutex_lock(&c->mu);
    c->all_done += n;
    pthread_mutex_unlock(&c->mu);
}

/* A timeout variable: a whole number of seconds in (0, 86400], else def. */
static long env_seconds(const char *v, long def)
{
    char *end;
    if (!v || !*v)
        return def;
    long x = strtol(v, &end, 10);
    return (*end || x <= 0 || x > 86400) ? def : x;
}

static const char *nonempty(const char *v)
{
    return v && *v ? v : NULL;
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init_once(void) { curl_global_init(CURL_GLOBAL_DEFAULT); }

fl_status http_client_init(http_client *c, const hub_env *env, const char *endpoint,
                           const char *token, fl_error *err)
{
    static const hub_env none;
    if (!env)
        env = &none;
    memset(c, 0, sizeof *c);
    pthread_once(&curl_once, curl_init_once);
    c->endpoint = strdup(endpoint);
    if (!c->endpoint)
        return fl_fail(err, FL_EIO, "out of memory");
    size_t n = strlen(c->endpoint);
    while (n && c->endpoint[n - 1] == '/')
        c->endpoint[--n] = 0;
    c->origin = url_origin(c->endpoint);
    if (!c->origin || strncmp(c->endpoint, "http", 4)) {
        fl_status st = fl_fail(err, FL_EUSAGE, "HF_ENDPOINT '%s' is not an http(s) URL", endpoint);
        free(c->endpoint);
        free(c->origin);
        return st;
    }
    c->token = token ? strdup(token) : NULL;
    const char *s = env->backoff_scale;
    c->backoff_scale = s && *s ? atof(s) : 1.0;
    if (!(c->backoff_scale >= 0 && c->backoff_scale <= 100))
        c->backoff_scale = 1.0;
    c->etag_timeout = env_seconds(env->hf_hub_etag_timeout, 10);
    c->download_timeout = env_seconds(env->hf_hub_download_timeout, 10);
    /* libcurl itself reads only the proxy variables: the trust store is
     * handed to it (CURL_CA_BUNDLE first, as requests and httpx do). */
    const char *ca = nonempty(env->curl_ca_bundle) ? env->curl_ca_bundle : env->ssl_cert_file;
    c->ca_file = nonempty(ca) ? strdup(ca) : NULL;
    c->ca_path = nonempty(env->ssl_cert_dir) ? strdup(env->ssl_cert_dir) : NULL;
    pthread_mutex_init(&c->mu, NULL);
    return FL_OK;
}

void http_client_free(http_client *c)
{
    free(c->endpoint);
    free(c->origin);
    free(c->ca_file);
    free(c->ca_path);
    if (c->token) {
        /* The token does not linger in freed memory. */
        volatile char *t = c->token;
        while (*t)
            *t++ = 0;
        free(c->token);
    }
    pthread_mutex_destroy(&c->mu);
    memset(c, 0, sizeof *c);
}

void http_response_free(http_response *r)
{
    free(r->body);
    free(r->link_next);
    memset(r, 0, sizeof *r);
}

void http_response_fill(http_response *r, const http_headers *hd, long status)
{
    r->status = status;
    snprintf(r->error_code, sizeof r->error_code, "%s", hd->error_code);
    snprintf(r->error_msg, sizeof r->error_msg, "%s", hd->error_msg);
}

/* ----------------------------------------------------------------------------
 * Response headers: one table row per header the hub reads */

void http_headers_reset(http_headers *h)
{
    free(h->location);
    free(h->link_next);
    memset(h, 0, sizeof *h);
    h->linked_size = h->content_length = -1;
    h->retry_after = -1;
}

/* Copies a header value, trimmed, without control characters; 0 when it
 * did not fit. */
static int copy_value(char *dst, size_t n, const char *v, size_t len)
{
    while (len && (*v == ' ' || *v == '\t'))
        v++, len--;
    while (len && (v[len - 1] == '\r' || v[len - 1] == '\n' || v[len - 1] == ' '))
        len--;
    size_t j = 0, i = 0;
    for (; i < len && j + 1 < n; i++)
        if ((unsigned char)v[i] >= 0x20 && v[i] != 0x7f)
            dst[j++] = v[i];
    dst[j] = 0;
    return i == len;
}

static int64_t parse_size(const char *s)
{
    char *end;
    errno = 0;
    long long x = strtoll(s, &end, 10);
    if (end == s || *end || errno || x < 0)
        return -1;
    return (int64_t)x;
}

/* Link: <url>; rel="next" (huggingface_hub utils/_pagination.py); several
 * links may be comma-separated. */
static char *parse_link_next(const char *v)
{
    const char *p = v;
    while ((p = strchr(p, '<'))) {
        const char *e = strchr(p, '>');
        if (!e)
            return NULL;
        const char *next = strchr(e, ',');
        size_t plen = next ? (size_t)(next - e) : strlen(e);
        char params[256];
        snprintf(params, sizeof params, "%.*s", (int)(plen < 255 ? plen : 255), e);
        if (strstr(params, "rel=\"next\"") || strstr(params, "rel=next"))
            return strndup(p + 1, (size_t)(e - p - 1));
        p = e;
    }
    return NULL;
}

/* RateLimit: "resolvers";r=0;t=N -> wait N+1 s when r is 0 (§3); -1 when
 * absent. */
static double parse_ratelimit(const char *v)
{
    const char *r = strstr(v, ";r=");
    const char *t = strstr(v, ";t=");
    if (!r || !t || atol(r + 3) != 0)
        return -1;
    long n = atol(t + 3);
    return n >= 0 ? (double)n + 1 : -1;
}

typedef enum { H_TEXT, H_URL, H_LINK, H_SIZE, H_RETRY_AFTER, H_RATELIMIT } header_kind;

static const struct {
    const char *name;        /* lowercase */
    header_kind kind;
    size_t off, cap;         /* field of http_headers (cap: H_TEXT only) */
} HEADERS[] = {
#define TEXT(name, field) {name, H_TEXT, offsetof(http_headers, field), sizeof(((http_headers *)0)->field)}
    {"location", H_URL, offsetof(http_headers, location), 0},
    {"link", H_LINK, offsetof(http_headers, link_next), 0},
    TEXT("x-repo-commit", commit),
    TEXT("x-linked-etag", linked_etag),
    TEXT("etag", etag),
    {"x-linked-size", H_SIZE, offsetof(http_headers, linked_size), 0},
    {"content-length", H_SIZE, offsetof(http_headers, content_length), 0},
    TEXT("content-range", content_range),
    TEXT("content-encoding", content_encoding),
    TEXT("x-error-code", error_code),
    TEXT("x-error-message", error_msg),
    {"retry-after", H_RETRY_AFTER, offsetof(http_headers, retry_after), 0},
    {"ratelimit", H_RATELIMIT, offsetof(http_headers, retry_after), 0},
#undef TEXT
};

/* Stores header value `val` as table row i prescribes. */
static void store_header(http_headers *h, size_t i, const char *val)
{
    void *f = (char *)h + HEADERS[i].off;
    switch (HEADERS[i].kind) {
    case H_TEXT:
        if (!copy_value(f, HEADERS[i].cap, val, strlen(val)))
            h->too_long = 1;
        break;
    case H_URL:
        free(*(char **)f);
        *(char **)f = strdup(val);
        break;
    case H_LINK: {
        char *l = parse_link_next(val);
        if (l) {
            free(*(char **)f);
            *(char **)f = l;
        }
        break;
    }
    case H_SIZE:
        *(int64_t *)f = parse_size(val);
        break;
    case H_RETRY_AFTER: {
        /* Only the integer form; an HTTP-date is ignored, as in Python.
         * RateLimit, when both come, wins. */
        int64_t s = parse_size(val);
        if (s >= 0 && *(double *)f < 0)
            *(double *)f = (double)(s > 300 ? 300 : s);
        break;
    }
    case H_RATELIMIT: {
        double w = parse_ratelimit(val);
        if (w >= 0)
            *(double *)f = w > 300 ? 300 : w;
        break;
    }
    }
}

static size_t on_header(char *buf, size_t size, size_t nitems, void *ud)
{
    http_headers *h = ud;
    size_t n = size * nitems;
    if (n >= 5 && !strncmp(buf, "HTTP/", 5)) {
        /* A new response (a 100-continue or a redirect hop) starts over. */
        http_headers_reset(h);
        const char *sp = memchr(buf, ' ', n);
        if (sp)
            h->status = atol(sp + 1);
        return n;
    }
    const char *colon = memchr(buf, ':', n);
    if (!colon)
        return n;
    size_t klen = (size_t)(colon - buf);
    char val[8192];
    if (!copy_value(val, sizeof val, colon + 1, n - klen - 1))
        h->too_long = 1;
    for (size_t i = 0; i < sizeof HEADERS / sizeof HEADERS[0]; i++)
        if (strlen(HEADERS[i].name) == klen && !strncasecmp(buf, HEADERS[i].name, klen)) {
            store_header(h, i, val);
            break;
        }
    return n;
}

/* ----------------------------------------------------------------------------
 * One request */

/* Upload bodies: the request's producer, called at increasing offsets. */
typedef struct {
    const http_request *req;
    uint64_t off;
    int64_t *sent;
} body_state;

static size_t on_read_body(char *buf, size_t size, size_t nitems, void *ud)
{
    body_state *b = ud;
    size_t want = size * nitems;
    const http_request *r = b->req;
    if (b->off >= r->body_len)
        return 0;
    if (want > r->body_len - b->off)
        want = (size_t)(r->body_len - b->off);
    size_t got;
    if (r->read) {
        got = r->read(r->read_ctx, b->off, buf, want);
        if (got == 0 && want > 0)
            return CURL_READFUNC_ABORT;   /* the producer failed (it says why) */
    } else {
        memcpy(buf, r->body + b->off, want);
        got = want;
    }
    b->off += got;
    if (r->sent)
        r->sent(r->sent_ctx, (int64_t)b->off);
    return got;
}

/* libcurl rewinds a body it must send again by itself (a reused
 * connection that turned out dead): the producer starts over there. */
static int on_seek_body(void *ud, curl_off_t offset, int origin)
{
    body_state *b = ud;
    if (origin != SEEK_SET || offset < 0 || (uint64_t)offset > b->req->body_len)
        return CURL_SEEKFUNC_CANTSEEK;
    b->off = (uint64_t)offset;
    return CURL_SEEKFUNC_OK;
}

/* Collects a reply body; past its limit the transfer is aborted. */
static size_t on_body_mem(char *p, size_t size, size_t nmemb, void *ud)
{
    strbuf *m = ud;
    size_t n = size * nmemb;
    sb_put(m, p, n);
    return m->oom ? 0 : n;
}

static int on_xfer_abort(void *ud, curl_off_t a, curl_off_t b, curl_off_t c_, curl_off_t d)
{
    const http_client *c = ud;
    return fl_interrupted || c->stop ? 1 : 0;
}

/* The same for a request that must finish once sent (a commit). */
static int on_xfer_abort_stop_only(void *ud, curl_off_t a, curl_off_t b, curl_off_t c_,
                                   curl_off_t d)
{
    const http_client *c = ud;
    return c->stop ? 1 : 0;
}

/* Appends "Name: value" (value may hold the token: wiped after use). */
static struct curl_slist *add_header(struct curl_slist *l, int *ok, const char *name,
                                     const char *value)
{
    char *line = fl_asprintf("%s: %s", name, value);
    struct curl_slist *n = line ? curl_slist_append(l, line) : NULL;
    if (line) {
        memset(line, 0, strlen(line));
        free(line);
    }
    if (!n) {
        *ok = 0;
        return l;
    }
    return n;
}

/* The request's header lines; NULL when out of memory. */
static struct curl_slist *header_list(const http_client *c, const http_request *req,
                                      const char *url)
{
    /* identity on every request: Content-Length is the real size (HEAD)
     * and the bytes hashed are the bytes of the file (GET). */
    int ok = 1;
    struct curl_slist *l = curl_slist_append(NULL, "Accept-Encoding: identity");
    if (!l)
        return NULL;
    if (req->body || req->read) /* no "Expect: 100-continue" round trip per body */
        l = add_header(l, &ok, "Expect", "");
    if (req->content_type)
        l = add_header(l, &ok, "Content-Type", req->content_type);
    if (req->accept)
        l = add_header(l, &ok, "Accept", req->accept);
    if (req->header) {
        struct curl_slist *n = curl_slist_append(l, req->header);
        ok = ok && n;
        l = n ? n : l;
    }
    if (req->auth && c->token && http_same_origin(c, url)) {
        char *bearer = fl_asprintf("Bearer %s", c->token);
        if (bearer) {
            l = add_header(l, &ok, "Authorization", bearer);
            memset(bearer, 0, strlen(bearer));
            free(bearer);
        } else {
            ok = 0;
        }
    }
    if (!ok) {
        curl_slist_free_all(l);
        return NULL;
    }
    return l;
}

/* Options every request gets: TLS verification on, the trust store the
 * client was given, http(s) only, a no-progress timeout rather than a
 * total one, no redirect following. */
struct curl_slist *http_setup(http_client *c, void *curl, const http_request *req,
                              const char *url, http_headers *hd)
{
    CURL *h = curl;
    long timeout = req->timeout > 0 ? req->timeout : c->etag_timeout;
    const char *method = req->method ? req->method : "GET";
    curl_easy_reset(h);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "flashify/" FLASHIFY_VERSION);
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
#else
    curl_easy_setopt(h, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L);
    if (c->ca_file)
        curl_easy_setopt(h, CURLOPT_CAINFO, c->ca_file);
    if (c->ca_path)
        curl_easy_setopt(h, CURLOPT_CAPATH, c->ca_path);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, timeout);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, timeout);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    if (req->fresh_connection)
        curl_easy_setopt(h, CURLOPT_FRESH_CONNECT, 1L);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, hd);
    curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION,
                     req->finish_on_interrupt ? on_xfer_abort_stop_only : on_xfer_abort);
    curl_easy_setopt(h, CURLOPT_XFERINFODATA, c);
    if (!strcmp(method, "HEAD"))
        curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
    int has_body = req->body || req->read;
    if (!strcmp(method, "PUT")) {
        /* CURLOPT_UPLOAD with the size: a Content-Length, never chunked
         * encoding (storage refuses it, §10). */
        curl_easy_setopt(h, CURLOPT_UPLOAD, 1L);
        curl_easy_setopt(h, CURLOPT_INFILESIZE_LARGE, (curl_off_t)req->body_len);
        /* Fewer, larger reads of the file per part (default 64 KiB). */
        curl_easy_setopt(h, CURLOPT_UPLOAD_BUFFERSIZE, 512L * 1024);
    } else if (!strcmp(method, "POST")) {
        curl_easy_setopt(h, CURLOPT_POST, 1L);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
        if (!has_body)
            curl_easy_setopt(h, CURLOPT_POSTFIELDS, "");
    }

    struct curl_slist *l = header_list(c, req, url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, l);
    return l;
}

int http_transient(int rc, long status)
{
    switch ((CURLcode)rc) {
    case CURLE_OK:
        return status == 408 || status == 429 || status == 500 || status == 502 ||
               status == 503 || status == 504;
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_PARTIAL_FILE:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_SSL_CONNECT_ERROR:
        return 1;
    default:
        return 0;
    }
}

/* Under HTTP_RETRY_UNSENT: the failures after which the server cannot
 * have acted on the request: no connection, or its explicit refusal. */
static int unsent(CURLcode rc, long status)
{
    if (rc == CURLE_OK)
        return status == 429;
    return rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_HOST ||
           rc == CURLE_COULDNT_RESOLVE_PROXY;
}

double http_backoff(const http_client *c, int attempt, const http_headers *hd)
{
    if (hd && hd->retry_after >= 0 && (hd->status == 429 || hd->status >= 500 || hd->status == 408))
        return hd->retry_after;
    double w = attempt >= 3 ? 8 : (double)(1 << attempt);
    return w * c->backoff_scale;
}

/* One attempt of req: the curl code, hd filled, *sent the body bytes
 * handed to libcurl. */
static CURLcode perform_once(http_client *c, CURL *h, const http_request *req, http_headers *hd,
                             int64_t *sent)
{
    http_headers_reset(hd);
    strbuf sink = {.limit = HTTP_BODY_MAX};
    strbuf *reply = req->reply ? req->reply : &sink;
    sb_free(reply);
    reply->limit = req->reply_max ? req->reply_max : HTTP_BODY_MAX;
    struct curl_slist *l = http_setup(c, h, req, req->url, hd);
    if (!l)
        return CURLE_OUT_OF_MEMORY;
    body_state bs = {.req = req};
    if (req->body || req->read) {
        curl_easy_setopt(h, CURLOPT_READFUNCTION, on_read_body);
        curl_easy_setopt(h, CURLOPT_READDATA, &bs);
        curl_easy_setopt(h, CURLOPT_SEEKFUNCTION, on_seek_body);
        curl_easy_setopt(h, CURLOPT_SEEKDATA, &bs);
    }
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body_mem);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, reply);
    CURLcode rc = curl_easy_perform(h);
    curl_slist_free_all(l);
    sb_free(&sink);
    long status = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    hd->status = status;
    *sent = (int64_t)bs.off;
    return rc;
}

/* 1 when the attempt's reply (or its absence) should be retried under
 * the request's policy. */
static int retry_allowed(const http_request *req, CURLcode rc, long status)
{
    switch (req->retry) {
    case HTTP_RETRY_TRANSIENT: return http_transient(rc, status);
    case HTTP_RETRY_UNSENT: return unsent(rc, status);
    default: return 0;
    }
}

fl_status http_perform(http_client *c, void *curl, const http_request *req, http_headers *hd,
                       http_stats *stats, fl_error *err)
{
    char lu[512];
    const char *method = req->method ? req->method : "GET";
    http_stats none = {0};
    if (!stats)
        stats = &none;
    http_log_url(lu, sizeof lu, req->url);
    for (int attempt = 0;; attempt++) {
        double t0 = fl_now();
        int64_t sent = 0;
        CURLcode rc = perform_once(c, curl, req, hd, &sent);
        long status = hd->status;
        stats->attempts++;
        stats->sent += sent;
        if (attempt > 0)
            stats->resent += sent;
        if (fl_interrupted && !req->finish_on_interrupt)
            return fl_fail(err, FL_EINTR, "interrupted");
        if (c->stop)
            return fl_fail(err, FL_EINTR, "abandoned after another transfer failed");
        if (rc == CURLE_OUT_OF_MEMORY)
            return fl_fail(err, FL_EIO, "out of memory");
        if (req->reply && req->reply->oom)
            return fl_fail(err, FL_ENET, "%s: reply larger than %zu MiB", lu,
                           (req->reply_max ? req->reply_max : HTTP_BODY_MAX) >> 20);
        if (rc == CURLE_ABORTED_BY_CALLBACK)
            return fl_fail(err, FL_EIO, "%s %s: the request body could not be read", method, lu);
        http_log(c, "%s %s -> %s%ld (%.0f ms)", method, lu, rc ? curl_easy_strerror(rc) : "",
                 rc ? 0L : status, (fl_now() - t0) * 1e3);
        if (rc == CURLE_OK)
            c->contacted = 1;
        /* A name that does not resolve before anything ever answered is a
         * machine without network (or a typo'd local path taken for a repo
         * id): say so now instead of after 23 s of backoff. */
        int no_dns = !c->contacted && (rc == CURLE_COULDNT_RESOLVE_HOST ||
                                       rc == CURLE_COULDNT_RESOLVE_PROXY);
        int again = retry_allowed(req, rc, status) && !fl_interrupted;
        if (!again || no_dns)
            return rc == CURLE_OK ? FL_OK
                                  : fl_fail(err, FL_ENET, "%s: %s", lu, curl_easy_strerror(rc));
        if (attempt >= HTTP_MAX_RETRIES) {
            if (rc != CURLE_OK)
                return fl_fail(err, FL_ENET, "%s: %s (gave up after %d retries)", lu,
                               curl_easy_strerror(rc), HTTP_MAX_RETRIES);
            return FL_OK; /* the caller reports the status */
        }
        if (!unsent(rc, status))
            stats->maybe_applied = 1;
        double w = http_backoff(c, attempt, rc == CURLE_OK ? hd : NULL);
        http_log(c, "retrying in %.2f s", w);
        fl_sleep(w);
    }
}

/* ----------------------------------------------------------------------------
 * Errors */

fl_status http_error(const http_client *c, const http_response *r, const char *file,
                     fl_error *err)
{
    const char *code = r->error_code, *msg = r->error_msg;
    const char *repo = c->repo_id ? c->repo_id : "?";
    const char *rev = c->revision ? c->revision : "main";
    char hubsays[300] = "";
    if (msg[0])
        snprintf(hubsays, sizeof hubsays, " (Hub: %s)", msg);
    if (!strcmp(code, "GatedRepo"))
        return fl_fail(err, FL_EINPUT,
                       "%s is a gated repository (HTTP %ld): request access at %s/%s and set HF_TOKEN",
                       repo, r->status, c->endpoint, repo);
    if (!strcmp(code, "RepoNotFound"))
        return fl_fail(err, FL_EINPUT,
                       "repository %s not found on %s (HTTP %ld)%s; if it is private, set HF_TOKEN",
                       repo, c->endpoint, r->status, c->token ? " with this token" : "");
    if (!strcmp(code, "RevisionNotFound"))
        return fl_fail(err, FL_EINPUT, "revision '%s' not found in %s (HTTP %ld)", rev, repo,
                       r->status);
    if (!strcmp(code, "EntryNotFound"))
        return fl_fail(err, FL_EINPUT, "%s not found in %s at revision '%s' (HTTP %ld)",
                       file ? file : "file", repo, rev, r->status);
    if (r->status == 401 && strstr(msg, "Invalid credentials"))
        return fl_fail(err, FL_EINPUT,
                       "the Hub refused the token for %s (Invalid credentials): run `hf auth login` "
                       "again or set HF_TOKEN",
                       repo);
    if (r->status == 403 && strstr(msg, "disabled"))
        return fl_fail(err, FL_EINPUT, "access to %s is disabled on the Hub%s", repo, hubsays);
    if (r->status == 401)
        return fl_fail(err, FL_EINPUT, "%s%s%s needs authentication (HTTP 401)%s: set HF_TOKEN",
                       repo, file ? ": " : "", file ? file : "", hubsays);
    if (r->status == 403)
        return fl_fail(err, FL_EINPUT, "%s%s%s: access denied (HTTP 403)%s", repo,
                       file ? ": " : "", file ? file : "", hubsays);
    if (r->status == 404)
        return fl_fail(err, FL_EINPUT, "%s%s%s not found (HTTP 404)%s", repo, file ? ": " : "",
                       file ? file : "", hubsays);
    if (r->status == 429)
        return fl_fail(err, FL_ENET, "rate limited by the Hub (HTTP 429) for %s%s; try again later",
                       repo, hubsays);
    return fl_fail(err, FL_ENET, "%s%s%s: HTTP %ld%s", repo, file ? ": " : "", file ? file : "",
                   r->status, hubsays);
}

fl_status http_write_error(const http_client *c, const http_response *r, const char *what,
                           fl_error *err)
{
    const char *repo = c->repo_id ? c->repo_id : "?", *msg = r->error_msg;
    char hubsays[300] = "";
    if (msg[0])
        snprintf(hubsays, sizeof hubsays, " (Hub: %s)", msg);
    if (r->status == 401 && !strstr(msg, "Invalid credentials"))
        return fl_fail(err, FL_EINPUT,
                       "%s: the Hub wants a token with write access (HTTP 401)%s: set HF_TOKEN or "
                       "pass --token (tokens: https://huggingface.co/settings/tokens)",
                       what, hubsays);
    if (r->status == 403 && !strstr(msg, "disabled") && strcmp(r->error_code, "GatedRepo")) {
        size_t ns = strcspn(repo, "/");
        return fl_fail(err, FL_EINPUT,
                       "%s: this token cannot write to %s (HTTP 403)%s: a read-only token, or no "
                       "write access to the namespace '%.*s'; use a write token "
                       "(https://huggingface.co/settings/tokens) or a namespace you belong to",
                       what, repo, hubsays, (int)ns, repo);
    }
    if (r->status == 400 || r->status == 413 || r->status == 422)
        return fl_fail(err, FL_EINPUT, "%s: the Hub refused it (HTTP %ld)%s", what, r->status,
                       hubsays);
    fl_status st = http_error(c, r, NULL, err);
    fl_prefix(err, "%s", what);
    return st;
}
