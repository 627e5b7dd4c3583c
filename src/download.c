/* download.c — HTTP transfers for the hub client (see download.h).
 *
 * Redirects are followed by hand, hop by hop, so the Authorization header
 * is attached only to requests whose origin is the Hub endpoint's: the CDN
 * never sees the token, whatever libcurl's own redirect rules are. */
#include "flashify/download.h"
#include "flashify/util.h"

#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_RETRIES 5          /* _http_backoff_base: 5 retries, 1,2,4,8,8 s */
#define MAX_HOPS 10
#define API_BODY_MAX (256u << 20)

/* ----------------------------------------------------------------------------
 * Helpers */

char *dl_quote(const char *s, const char *keep)
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
        size_t n = strlen(scheme) + strlen(host) + strlen(port) + 5;
        out = malloc(n);
        if (out) {
            snprintf(out, n, "%s://%s:%s", scheme, host, port);
            for (char *c = out; *c; c++)
                *c = (char)tolower((unsigned char)*c);
        }
    }
    curl_free(scheme);
    curl_free(host);
    curl_free(port);
    if (u)
        curl_url_cleanup(u);
    return out;
}

static int same_origin(const dl_client *c, const char *url)
{
    char *o = url_origin(url);
    int same = o && c->origin && !strcmp(o, c->origin);
    free(o);
    return same;
}

/* A Location without a host: Python replaces only the path of the current
 * URL (keeping its query).  Anything with a scheme or "//" is absolute. */
static int location_is_relative(const char *loc)
{
    if (loc[0] == '/' && loc[1] == '/')
        return 0;
    for (const char *p = loc; *p && *p != '/' && *p != '?'; p++)
        if (*p == ':')
            return 0;
    return 1;
}

/* Resolves `loc` against `base`.  relative_path_only: the HEAD rule above;
 * otherwise standard URL resolution (GET redirects). malloc'd or NULL. */
static char *resolve_location(const char *base, const char *loc, int relative_path_only)
{
    CURLU *u = curl_url();
    char *res = NULL, *out = NULL;
    if (!u || curl_url_set(u, CURLUPART_URL, base, 0) != CURLUE_OK)
        goto done;
    if (relative_path_only && loc[0] == '/') {
        size_t n = strcspn(loc, "?#");
        char *path = strndup(loc, n);
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

/* URL for logs: the query (signatures on CDN URLs) is masked. */
static void log_url(char *buf, size_t n, const char *url)
{
    size_t q = strcspn(url, "?");
    snprintf(buf, n, "%.*s%s", (int)(q > 400 ? 400 : q), url, url[q] ? "?…" : "");
}

static void emit(dl_client *c, hub_event *ev)
{
    if (!c->progress)
        return;
    pthread_mutex_lock(&c->mu);
    ev->all_done = c->all_done;
    ev->all_total = c->all_total;
    c->progress(ev, c->progress_ctx);
    pthread_mutex_unlock(&c->mu);
}

void dl_log(dl_client *c, const char *fmt, ...)
{
    if (!c->verbose || !c->progress)
        return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    hub_event ev = {.kind = HUB_EV_LOG, .msg = msg, .total = -1};
    emit(c, &ev);
}

static long env_long(const char *name, long def)
{
    const char *v = getenv(name);
    char *end;
    if (!v || !*v)
        return def;
    long x = strtol(v, &end, 10);
    return (*end || x <= 0 || x > 86400) ? def : x;
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init_once(void) { curl_global_init(CURL_GLOBAL_DEFAULT); }

fl_status dl_client_init(dl_client *c, const char *endpoint, const char *token,
                         fl_error *err)
{
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
    const char *s = getenv("FLASHIFY_HUB_BACKOFF_SCALE");
    c->backoff_scale = s && *s ? atof(s) : 1.0;
    if (!(c->backoff_scale >= 0 && c->backoff_scale <= 100))
        c->backoff_scale = 1.0;
    /* FLASHIFY_HASH_THREAD: 1 always hashes on a thread of its own, 0
     * never, unset: when the machine has a core to spare (dl_blob). */
    const char *ht = getenv("FLASHIFY_HASH_THREAD");
    c->hash_thread = ht && *ht ? atoi(ht) != 0 : -1;
    c->ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    c->etag_timeout = env_long("HF_HUB_ETAG_TIMEOUT", 10);
    c->download_timeout = env_long("HF_HUB_DOWNLOAD_TIMEOUT", 10);
    /* umask can only be read by setting it: do it here, before the worker
     * threads exist, not next to their file creations. */
    mode_t um = umask(0);
    umask(um);
    c->blob_mode = 0666 & ~um;
    pthread_mutex_init(&c->mu, NULL);
    return FL_OK;
}

void dl_client_free(dl_client *c)
{
    free(c->endpoint);
    free(c->origin);
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

void dl_response_free(dl_response *r)
{
    free(r->body);
    free(r->link_next);
    memset(r, 0, sizeof *r);
}

void dl_meta_free(dl_meta *m)
{
    free(m->location);
    memset(m, 0, sizeof *m);
}

/* ----------------------------------------------------------------------------
 * Response headers */

typedef struct {
    long status;
    char *location, *link_next;
    char commit[64], linked_etag[160], etag[160];
    char error_code[64], error_msg[256];
    char content_range[128], content_encoding[64];
    int64_t linked_size, content_length;   /* -1 when absent */
    double retry_after;                    /* seconds, -1 when absent */
} hdrs;

static void hdrs_reset(hdrs *h)
{
    free(h->location);
    free(h->link_next);
    memset(h, 0, sizeof *h);
    h->linked_size = h->content_length = -1;
    h->retry_after = -1;
}

/* Copies a header value, trimmed, without control characters. */
static void copy_value(char *dst, size_t n, const char *v, size_t len)
{
    while (len && (*v == ' ' || *v == '\t'))
        v++, len--;
    while (len && (v[len - 1] == '\r' || v[len - 1] == '\n' || v[len - 1] == ' '))
        len--;
    size_t j = 0;
    for (size_t i = 0; i < len && j + 1 < n; i++)
        if ((unsigned char)v[i] >= 0x20 && v[i] != 0x7f)
            dst[j++] = v[i];
    dst[j] = 0;
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

/* Link: <url>; rel="next" (utils/_pagination.py); several links may be
 * comma-separated. */
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

/* RateLimit: "resolvers";r=0;t=N -> wait N+1 s when r is 0 (HTTP
 * _http_backoff_base); -1 when absent. */
static double parse_ratelimit(const char *v)
{
    const char *r = strstr(v, ";r=");
    const char *t = strstr(v, ";t=");
    if (!r || !t || atol(r + 3) != 0)
        return -1;
    long n = atol(t + 3);
    return n >= 0 ? (double)n + 1 : -1;
}

static size_t on_header(char *buf, size_t size, size_t nitems, void *ud)
{
    hdrs *h = ud;
    size_t n = size * nitems;
    if (n >= 5 && !strncmp(buf, "HTTP/", 5)) {
        /* A new response (a 100-continue or a redirect hop) starts over. */
        hdrs_reset(h);
        const char *sp = memchr(buf, ' ', n);
        if (sp)
            h->status = atol(sp + 1);
        return n;
    }
    const char *colon = memchr(buf, ':', n);
    if (!colon)
        return n;
    size_t klen = (size_t)(colon - buf);
    const char *v = colon + 1;
    size_t vlen = n - klen - 1;
    char val[8192];
    copy_value(val, sizeof val, v, vlen);
#define IS(k) (klen == sizeof(k) - 1 && !strncasecmp(buf, k, klen))
    if (IS("location")) {
        free(h->location);
        h->location = strdup(val);
    } else if (IS("link")) {
        char *l = parse_link_next(val);
        if (l) {
            free(h->link_next);
            h->link_next = l;
        }
    } else if (IS("x-repo-commit")) {
        copy_value(h->commit, sizeof h->commit, val, strlen(val));
    } else if (IS("x-linked-etag")) {
        copy_value(h->linked_etag, sizeof h->linked_etag, val, strlen(val));
    } else if (IS("etag")) {
        copy_value(h->etag, sizeof h->etag, val, strlen(val));
    } else if (IS("x-linked-size")) {
        h->linked_size = parse_size(val);
    } else if (IS("content-length")) {
        h->content_length = parse_size(val);
    } else if (IS("content-range")) {
        copy_value(h->content_range, sizeof h->content_range, val, strlen(val));
    } else if (IS("content-encoding")) {
        copy_value(h->content_encoding, sizeof h->content_encoding, val, strlen(val));
    } else if (IS("x-error-code")) {
        copy_value(h->error_code, sizeof h->error_code, val, strlen(val));
    } else if (IS("x-error-message")) {
        copy_value(h->error_msg, sizeof h->error_msg, val, strlen(val));
    } else if (IS("retry-after")) {
        /* Only the integer form; an HTTP-date is ignored, as in Python. */
        int64_t s = parse_size(val);
        if (s >= 0 && h->retry_after < 0)
            h->retry_after = (double)(s > 300 ? 300 : s);
    } else if (IS("ratelimit")) {
        double w = parse_ratelimit(val);
        if (w >= 0)
            h->retry_after = w > 300 ? 300 : w;
    }
#undef IS
    return n;
}

/* ----------------------------------------------------------------------------
 * One exchange */

/* Options every request gets: TLS verification on, CA bundle from the
 * environment (libcurl itself only reads the proxy variables), http(s)
 * only, a no-progress timeout rather than a total one. */
static struct curl_slist *setup(dl_client *c, CURL *h, const char *url,
                                int head, long timeout, hdrs *hd,
                                const char *range)
{
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
    const char *ca = getenv("CURL_CA_BUNDLE");
    if (!ca || !*ca)
        ca = getenv("SSL_CERT_FILE");
    if (ca && *ca)
        curl_easy_setopt(h, CURLOPT_CAINFO, ca);
    const char *capath = getenv("SSL_CERT_DIR");
    if (capath && *capath)
        curl_easy_setopt(h, CURLOPT_CAPATH, capath);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, timeout);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, timeout);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, hd);
    if (head)
        curl_easy_setopt(h, CURLOPT_NOBODY, 1L);

    /* identity on the HEAD (so Content-Length is the real size) and on the
     * GET too, so the bytes we hash are the bytes of the file. */
    struct curl_slist *l = curl_slist_append(NULL, "Accept-Encoding: identity");
    if (c->token && same_origin(c, url)) {
        size_t n = strlen(c->token) + 32;
        char *a = malloc(n);
        if (a) {
            snprintf(a, n, "Authorization: Bearer %s", c->token);
            l = curl_slist_append(l, a);
            memset(a, 0, n);
            free(a);
        }
    }
    if (range)
        l = curl_slist_append(l, range);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, l);
    return l;
}

/* 1 for failures worth retrying: connect errors, timeouts, a peer that
 * closed early, and statuses 408, 429, 500, 502, 503, 504. */
static int transient(CURLcode rc, long status)
{
    switch (rc) {
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

/* The wait before retry number `attempt` (0-based): the server's
 * Retry-After / RateLimit when it gave one, else 1,2,4,8,8 s scaled. */
static double backoff(const dl_client *c, int attempt, const hdrs *hd)
{
    if (hd && hd->retry_after >= 0 && (hd->status == 429 || hd->status >= 500 || hd->status == 408))
        return hd->retry_after;
    double w = attempt >= 3 ? 8 : (double)(1 << attempt);
    return w * c->backoff_scale;
}

/* Collects a reply body; past API_BODY_MAX (the buffer's limit) the
 * transfer is aborted. */
static size_t on_body_mem(char *p, size_t size, size_t nmemb, void *ud)
{
    strbuf *m = ud;
    size_t n = size * nmemb;
    sb_put(m, p, n);
    return m->oom ? 0 : n;
}

static int on_xfer_abort(void *ud, curl_off_t a, curl_off_t b, curl_off_t c_, curl_off_t d)
{
    const dl_client *c = ud;
    return fl_interrupted || c->stop ? 1 : 0;
}

static void fill_response(dl_response *r, const hdrs *hd, long status)
{
    r->status = status;
    snprintf(r->error_code, sizeof r->error_code, "%s", hd->error_code);
    snprintf(r->error_msg, sizeof r->error_msg, "%s", hd->error_msg);
}

/* Performs one request with retries; no redirect is followed.  On FL_OK,
 * hd holds the final headers and *body (if wanted) the final body. */
static fl_status exchange(dl_client *c, CURL *h, const char *url, int head,
                          hdrs *hd, strbuf *body, fl_error *err)
{
    char lu[512];
    log_url(lu, sizeof lu, url);
    for (int attempt = 0;; attempt++) {
        hdrs_reset(hd);
        if (body) {
            sb_free(body);
            body->limit = API_BODY_MAX;
        }
        struct curl_slist *l = setup(c, h, url, head, c->etag_timeout, hd, NULL);
        strbuf sink = {.limit = API_BODY_MAX};
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body_mem);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, body ? body : &sink);
        curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
        curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_xfer_abort);
        curl_easy_setopt(h, CURLOPT_XFERINFODATA, c);
        double t0 = fl_now();
        CURLcode rc = curl_easy_perform(h);
        curl_slist_free_all(l);
        sb_free(&sink);
        long status = 0;
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
        hd->status = status;
        if (fl_interrupted)
            return fl_fail(err, FL_EINTR, "interrupted");
        if (c->stop)
            return fl_fail(err, FL_EINTR, "abandoned after another transfer failed");
        if (body && body->oom)
            return fl_fail(err, FL_ENET, "%s: reply larger than %u MiB", lu, API_BODY_MAX >> 20);
        dl_log(c, "%s %s -> %s%ld (%.0f ms)", head ? "HEAD" : "GET", lu,
               rc ? curl_easy_strerror(rc) : "", rc ? 0L : status, (fl_now() - t0) * 1e3);
        if (rc == CURLE_OK)
            c->contacted = 1;
        /* A name that does not resolve before anything ever answered is a
         * machine without network (or a typo'd local path taken for a repo
         * id): say so now instead of after 23 s of backoff. */
        int no_dns = !c->contacted && (rc == CURLE_COULDNT_RESOLVE_HOST ||
                                       rc == CURLE_COULDNT_RESOLVE_PROXY);
        if (!transient(rc, status) || no_dns)
            return rc == CURLE_OK ? FL_OK
                                  : fl_fail(err, FL_ENET, "%s: %s", lu, curl_easy_strerror(rc));
        if (attempt >= MAX_RETRIES) {
            if (rc != CURLE_OK)
                return fl_fail(err, FL_ENET, "%s: %s (gave up after %d retries)", lu,
                               curl_easy_strerror(rc), MAX_RETRIES);
            return FL_OK; /* the caller reports the status */
        }
        double w = backoff(c, attempt, rc == CURLE_OK ? hd : NULL);
        dl_log(c, "retrying in %.2f s", w);
        fl_sleep(w);
    }
}

fl_status dl_api_get(dl_client *c, void *curl, const char *url, dl_response *r,
                     fl_error *err)
{
    memset(r, 0, sizeof *r);
    hdrs hd = {0};
    hdrs_reset(&hd);
    strbuf body = {.limit = API_BODY_MAX};
    char *cur = strdup(url);
    fl_status st = cur ? FL_OK : fl_fail(err, FL_EIO, "out of memory");
    /* A renamed repo redirects API calls too; the token follows only to
     * the endpoint's origin (setup() decides per request). */
    for (int hop = 0; st == FL_OK; hop++) {
        st = exchange(c, curl, cur, 0, &hd, &body, err);
        if (st || hd.status < 300 || hd.status >= 400 || !hd.location || hop >= MAX_HOPS)
            break;
        char *next = resolve_location(cur, hd.location, 0);
        free(cur);
        cur = next;
        if (!cur)
            st = fl_fail(err, FL_ENET, "%s: unusable redirect", url);
    }
    free(cur);
    if (st == FL_OK) {
        fill_response(r, &hd, hd.status);
        r->len = body.n;
        r->body = sb_take(&body);
        /* Link may be relative: resolve it against the request URL. */
        r->link_next = hd.link_next ? resolve_location(url, hd.link_next, 0) : NULL;
            }
    sb_free(&body);
    hdrs_reset(&hd);
    return st;
}

/* _normalize_etag: strip a leading W/ and the quotes. */
static void normalize_etag(char *dst, size_t n, const char *e)
{
    if (!strncmp(e, "W/", 2))
        e += 2;
    size_t len = strlen(e);
    while (len && *e == '"')
        e++, len--;
    while (len && e[len - 1] == '"')
        len--;
    snprintf(dst, n, "%.*s", (int)len, e);
}

/* An etag becomes a file name in blobs/: allow only what real etags use. */
static int etag_ok(const char *e)
{
    if (!*e || strlen(e) > 128 || e[0] == '.')
        return 0;
    for (; *e; e++)
        if (!isalnum((unsigned char)*e) && !strchr("-_.+=", *e))
            return 0;
    return 1;
}

fl_status dl_head(dl_client *c, void *curl, const char *url, dl_meta *m,
                  dl_response *r, fl_error *err)
{
    memset(m, 0, sizeof *m);
    memset(r, 0, sizeof *r);
    hdrs hd = {0};
    hdrs_reset(&hd);
    char *cur = strdup(url);
    fl_status st = FL_OK;
    char lu[512];
    for (int hop = 0;; hop++) {
        if (!cur) {
            st = fl_fail(err, FL_EIO, "out of memory");
            break;
        }
        log_url(lu, sizeof lu, cur);
        if ((st = exchange(c, curl, cur, 1, &hd, NULL, err)))
            break;
        long s = hd.status;
        if (s >= 300 && s < 400 && hd.location && location_is_relative(hd.location)) {
            /* A renamed repo: follow it ourselves, still on the Hub. */
            if (hop >= MAX_HOPS) {
                st = fl_fail(err, FL_ENET, "%s: more than %d redirects", lu, MAX_HOPS);
                break;
            }
            char *next = resolve_location(cur, hd.location, 1);
            free(cur);
            cur = next;
            continue;
        }
        if (s < 200 || s >= 400) {
            fill_response(r, &hd, s);
            break;
        }
        r->status = s;
        normalize_etag(m->etag, sizeof m->etag, hd.linked_etag[0] ? hd.linked_etag : hd.etag);
        copy_value(m->commit, sizeof m->commit, hd.commit, strlen(hd.commit));
        m->size = hd.linked_size >= 0 ? hd.linked_size : (s < 300 ? hd.content_length : -1);
        if (s >= 300) {
            m->location = hd.location ? resolve_location(cur, hd.location, 0) : NULL;
            if (!m->location) {
                st = fl_fail(err, FL_ENET, "%s: redirect %ld without a usable Location", lu, s);
                break;
            }
        } else {
            m->location = strdup(cur);
        }
        if (strlen(hd.commit) != 40) {
            st = fl_fail(err, FL_ENET, "%s: the reply has no X-Repo-Commit (is HF_ENDPOINT a Hub?)", lu);
        } else if (!m->etag[0]) {
            st = fl_fail(err, FL_ENET, "%s: the reply has no ETag or X-Linked-Etag", lu);
        } else if (!etag_ok(m->etag)) {
            st = fl_fail(err, FL_ENET, "%s: unusable etag '%.80s'", lu, m->etag);
        } else if (m->size < 0) {
            st = fl_fail(err, FL_ENET, "%s: the reply has no X-Linked-Size or Content-Length", lu);
        }
        break;
    }
    free(cur);
    hdrs_reset(&hd);
    if (st)
        dl_meta_free(m);
    return st;
}

/* ----------------------------------------------------------------------------
 * Blob transfer */

enum { HASH_NONE, HASH_SHA256, HASH_GITSHA1 };

static int is_hex(const char *s, size_t n)
{
    if (strlen(s) != n)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!isxdigit((unsigned char)s[i]))
            return 0;
    return 1;
}

typedef struct {
    dl_client *c;
    CURL *h;
    hdrs *hd;
    int slot;
    const char *name;
    const char *partial;
    int fd;
    int64_t written, expected;
    int hash_kind;
    EVP_MD_CTX *md;       /* owned by the hasher thread while h_busy */
    /* Inline (h_running 0) the write callback digests each piece it has
     * written.  With a spare core, a hasher thread instead reads back
     * [h_done, h_avail) of the partial file and digests it, so sha256 runs
     * beside recv+write.  h_avail only grows by what the write callback has
     * put in the file; the digest covers exactly bytes [0, h_done) of it. */
    pthread_t h_thread;
    int h_running, h_busy, h_quit, h_errno;
    int h_flush;          /* hash a tail shorter than HASH_CHUNK too */
    pthread_mutex_t h_mu;
    pthread_cond_t h_cv;
    int64_t h_avail, h_done;
    int started;          /* the body of the current reply has begun */
    int range_bad;        /* 206 at the wrong offset */
    int too_long;
    int io_errno;
    double t0, last_emit;
    char errbody[512];    /* start of an error reply's body */
    size_t errlen;
} xfer;

/* (Re)starts the digest; git's blob id hashes "blob <size>\0" first. */
static int hash_reset(xfer *x)
{
    if (x->hash_kind == HASH_NONE)
        return 1;
    const EVP_MD *md = x->hash_kind == HASH_SHA256 ? EVP_sha256() : EVP_sha1();
    if (!EVP_DigestInit_ex(x->md, md, NULL))
        return 0;
    if (x->hash_kind == HASH_GITSHA1) {
        char hdr[64];
        int n = snprintf(hdr, sizeof hdr, "blob %lld", (long long)x->expected);
        if (!EVP_DigestUpdate(x->md, hdr, (size_t)n + 1)) /* with the NUL */
            return 0;
    }
    return 1;
}

static void xfer_emit(xfer *x, hub_event_kind kind)
{
    hub_event ev = {.kind = kind, .slot = x->slot, .name = x->name,
                    .done = x->written, .total = x->expected,
                    .elapsed = fl_now() - x->t0};
    emit(x->c, &ev);
}

static void add_done(dl_client *c, int64_t n)
{
    pthread_mutex_lock(&c->mu);
    c->all_done += n;
    pthread_mutex_unlock(&c->mu);
}

/* A test build may change these (to exercise the waits, or to measure). */
#ifndef HASH_CHUNK
#define HASH_CHUNK (1u << 20)                /* one read-back */
#endif
#ifndef HASH_LAG_MAX
#define HASH_LAG_MAX ((int64_t)64 << 20)     /* written but not yet hashed */
#endif
/* What wakes the hasher: never more than the lag a writer waits on. */
#define HASH_WAKE ((int64_t)HASH_CHUNK < HASH_LAG_MAX ? (int64_t)HASH_CHUNK : HASH_LAG_MAX)

/* The hasher thread: digests the partial file's bytes [h_done, h_avail)
 * in HASH_CHUNK reads as they appear, until h_quit; it wakes only for
 * HASH_WAKE bytes (or for the tail once h_flush is set), not for each of the
 * write callback's small pieces.  A read or digest failure stops it with
 * h_errno set (reported by hasher_drain). */
static void *hasher_main(void *ud)
{
    xfer *x = ud;
    char *buf = malloc(HASH_CHUNK);
    pthread_mutex_lock(&x->h_mu);
    if (!buf)
        x->h_errno = ENOMEM;
    for (;;) {
        while (!x->h_quit && (x->h_errno || !(x->h_avail - x->h_done >= HASH_WAKE ||
                                               (x->h_flush && x->h_done < x->h_avail))))
            pthread_cond_wait(&x->h_cv, &x->h_mu);
        if (x->h_quit)
            break;
        int64_t off = x->h_done, left = x->h_avail - x->h_done;
        size_t want = left < (int64_t)HASH_CHUNK ? (size_t)left : HASH_CHUNK;
        x->h_busy = 1;
        pthread_mutex_unlock(&x->h_mu);
        ssize_t r;
        do
            r = pread(x->fd, buf, want, (off_t)off);
        while (r < 0 && errno == EINTR);
        int e = r < 0 ? errno : r == 0 ? EIO : 0;
        if (!e && !EVP_DigestUpdate(x->md, buf, (size_t)r))
            e = EIO;
        pthread_mutex_lock(&x->h_mu);
        x->h_busy = 0;
        if (e)
            x->h_errno = e;
        else
            x->h_done += r;
        pthread_cond_broadcast(&x->h_cv);
    }
    pthread_mutex_unlock(&x->h_mu);
    free(buf);
    return NULL;
}

/* Digests the file's first x->written bytes here (inline mode, a
 * resumed download).  0 (x->io_errno) on failure, or EINTR when an
 * interrupt or another worker's failure stops it: it may be many GB. */
static int hash_prefix(xfer *x)
{
    char *buf = malloc(HASH_CHUNK);
    if (!buf) {
        x->io_errno = ENOMEM;
        return 0;
    }
    for (int64_t off = 0; off < x->written;) {
        if (fl_interrupted || x->c->stop) {
            x->io_errno = EINTR;
            free(buf);
            return 0;
        }
        int64_t left = x->written - off;
        ssize_t r = pread(x->fd, buf, left < (int64_t)HASH_CHUNK ? (size_t)left : HASH_CHUNK,
                          (off_t)off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0 || !EVP_DigestUpdate(x->md, buf, (size_t)r)) {
            x->io_errno = r < 0 ? errno : EIO;
            free(buf);
            return 0;
        }
        off += r;
    }
    free(buf);
    return 1;
}

/* Starts hashing on a digest just reset, to cover the file's first
 * x->written bytes (a resumed download) and whatever follows: on a hasher
 * thread when `threaded` (the prefix then overlaps the transfer too), else
 * inline.  Nothing when there is nothing to hash.  0 (x->io_errno) on
 * failure. */
static int hasher_start(xfer *x, int threaded)
{
    if (x->hash_kind == HASH_NONE)
        return 1;
    if (!hash_reset(x)) {
        x->io_errno = EIO;
        return 0;
    }
    x->h_avail = x->written;
    x->h_done = 0;
    if (!threaded) {
        if (!hash_prefix(x))
            return 0;
        x->h_done = x->written;
        return 1;
    }
    pthread_mutex_init(&x->h_mu, NULL);
    pthread_cond_init(&x->h_cv, NULL);
    if (pthread_create(&x->h_thread, NULL, hasher_main, x) != 0) {
        /* No thread: hash inline, as on a machine without a spare core. */
        pthread_cond_destroy(&x->h_cv);
        pthread_mutex_destroy(&x->h_mu);
        return hasher_start(x, 0);
    }
    x->h_running = 1;
    return 1;
}

/* Ends the hasher thread (after its current read, if any); the digest
 * keeps what it had.  A no-op when none runs. */
static void hasher_stop(xfer *x)
{
    if (!x->h_running)
        return;
    pthread_mutex_lock(&x->h_mu);
    x->h_quit = 1;
    pthread_cond_broadcast(&x->h_cv);
    pthread_mutex_unlock(&x->h_mu);
    pthread_join(x->h_thread, NULL);
    pthread_cond_destroy(&x->h_cv);
    pthread_mutex_destroy(&x->h_mu);
    x->h_running = 0;
}

/* The n bytes at p were just written, and the file now holds `avail`
 * good bytes: digest them here (inline), or hand them to the hasher thread,
 * waiting while it lags more than HASH_LAG_MAX behind, so the bytes it
 * reads back are still in the page cache and the socket slows the sender
 * instead.  0 if the inline digest failed. */
static int hasher_feed(xfer *x, const char *p, size_t n, int64_t avail)
{
    if (x->hash_kind == HASH_NONE)
        return 1;
    if (!x->h_running) {
        x->h_avail = x->h_done = avail;
        return EVP_DigestUpdate(x->md, p, n);
    }
    pthread_mutex_lock(&x->h_mu);
    x->h_avail = avail;
    if (x->h_avail - x->h_done >= HASH_WAKE)
        pthread_cond_broadcast(&x->h_cv);
    while (!x->h_errno && x->h_avail - x->h_done > HASH_LAG_MAX && !fl_interrupted &&
           !x->c->stop)
        pthread_cond_wait(&x->h_cv, &x->h_mu);
    pthread_mutex_unlock(&x->h_mu);
    return 1;
}

/* Waits until every byte handed over is in the digest.  0 if the hasher
 * failed (x->io_errno set) or an interrupt / another worker's failure cut
 * the wait short (x->io_errno 0): a complete partial of many GB from an
 * earlier run is hashed here, and Ctrl-C must still work. */
static int hasher_drain(xfer *x)
{
    if (!x->h_running)
        return 1;
    pthread_mutex_lock(&x->h_mu);
    x->h_flush = 1;
    pthread_cond_broadcast(&x->h_cv);
    while (!x->h_errno && x->h_done < x->h_avail && !fl_interrupted && !x->c->stop)
        pthread_cond_wait(&x->h_cv, &x->h_mu);
    int e = x->h_errno, done = x->h_done >= x->h_avail;
    pthread_mutex_unlock(&x->h_mu);
    x->io_errno = e;
    return !e && done;
}

/* Back to an empty digest over an empty file: waits for the hasher to be
 * between reads (it must not read what is about to be truncated), then
 * resets its counters and the digest under its lock. */
static int hasher_reset(xfer *x)
{
    if (!x->h_running)
        return hash_reset(x);
    pthread_mutex_lock(&x->h_mu);
    while (x->h_busy)
        pthread_cond_wait(&x->h_cv, &x->h_mu);
    x->h_avail = x->h_done = 0;
    x->h_errno = x->h_flush = 0;
    int ok = hash_reset(x);
    pthread_mutex_unlock(&x->h_mu);
    return ok;
}

/* Truncates the partial file to 0 (a fresh start), the digest with it. */
static int xfer_restart(xfer *x)
{
    if (!hasher_reset(x)) {
        x->io_errno = EIO;
        return 0;
    }
    if (ftruncate(x->fd, 0) != 0) {
        x->io_errno = errno;
        return 0;
    }
    add_done(x->c, -x->written);
    x->written = 0;
    return 1;
}

static size_t on_body_file(char *p, size_t size, size_t nmemb, void *ud)
{
    xfer *x = ud;
    size_t n = size * nmemb;
    long status = 0;
    curl_easy_getinfo(x->h, CURLINFO_RESPONSE_CODE, &status);
    if (status != 200 && status != 206) {
        /* A redirect's or an error's body: keep a little for the message. */
        size_t k = sizeof x->errbody - 1 - x->errlen;
        if (k > n)
            k = n;
        memcpy(x->errbody + x->errlen, p, k);
        x->errlen += k;
        x->errbody[x->errlen] = 0;
        return n;
    }
    if (!x->started) {
        x->started = 1;
        if (status == 206) {
            long long a = -1;
            if (sscanf(x->hd->content_range, "bytes %lld-", &a) != 1 || a != x->written) {
                x->range_bad = 1;
                return 0;
            }
        } else if (x->written > 0) {
            /* 200 to a Range request: the server sends it all again. */
            dl_log(x->c, "%s: server ignored Range, restarting from byte 0", x->name);
            if (!xfer_restart(x))
                return 0;
        }
    }
    if (x->written + (int64_t)n > x->expected) {
        x->too_long = 1;
        return 0;
    }
    if (fl_pwrite_full(x->fd, p, n, (uint64_t)x->written) != 0) {
        x->io_errno = errno;
        return 0;
    }
    if (!hasher_feed(x, p, n, x->written + (int64_t)n))
        return 0;
    x->written += (int64_t)n;
    add_done(x->c, (int64_t)n);
    double t = fl_now();
    if (t - x->last_emit >= 0.1) {
        x->last_emit = t;
        xfer_emit(x, HUB_EV_BYTES);
    }
    return n;
}

/* Checks size and digest (the hasher drained); fills why[] on mismatch. */
static int xfer_verify(xfer *x, const char *etag, char *why, size_t n)
{
    if (x->written != x->expected) {
        snprintf(why, n, "size is %lld bytes, expected %lld", (long long)x->written,
                 (long long)x->expected);
        return 0;
    }
    if (x->hash_kind == HASH_NONE)
        return 1;
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned int dl = 0;
    EVP_MD_CTX *copy = EVP_MD_CTX_new();
    if (!copy || !EVP_MD_CTX_copy_ex(copy, x->md) || !EVP_DigestFinal_ex(copy, d, &dl)) {
        EVP_MD_CTX_free(copy);
        snprintf(why, n, "digest failed");
        return 0;
    }
    EVP_MD_CTX_free(copy);
    char hex[2 * EVP_MAX_MD_SIZE + 1];
    for (unsigned i = 0; i < dl; i++)
        sprintf(hex + 2 * i, "%02x", d[i]);
    if (strcasecmp(hex, etag)) {
        /* Both are hex digests of at most 64 digits (the etag was checked). */
        snprintf(why, n, "%s is %.64s, expected %.64s",
                 x->hash_kind == HASH_SHA256 ? "sha256" : "git blob sha1", hex, etag);
        return 0;
    }
    return 1;
}

/* One GET of the bytes from `url`, following redirects hop by hop (the
 * token only ever goes to the endpoint's origin).  Returns the curl code;
 * *status is the final status. */
static CURLcode xfer_get(xfer *x, const char *url, long *status)
{
    dl_client *c = x->c;
    char *cur = strdup(url);
    CURLcode rc = CURLE_OUT_OF_MEMORY;
    for (int hop = 0; cur && hop <= MAX_HOPS; hop++) {
        char range[64], *rg = NULL;
        if (x->written > 0) {
            snprintf(range, sizeof range, "Range: bytes=%lld-", (long long)x->written);
            rg = range;
        }
        struct curl_slist *l = setup(c, x->h, cur, 0, c->download_timeout, x->hd, rg);
        curl_easy_setopt(x->h, CURLOPT_WRITEFUNCTION, on_body_file);
        curl_easy_setopt(x->h, CURLOPT_WRITEDATA, x);
        curl_easy_setopt(x->h, CURLOPT_NOPROGRESS, 0L);
        curl_easy_setopt(x->h, CURLOPT_XFERINFOFUNCTION, on_xfer_abort);
        curl_easy_setopt(x->h, CURLOPT_XFERINFODATA, c);
        curl_easy_setopt(x->h, CURLOPT_BUFFERSIZE, 512L * 1024);
        x->started = 0;
        x->errlen = 0;
        char lu[512];
        log_url(lu, sizeof lu, cur);
        dl_log(c, "GET %s%s%s", lu, rg ? " " : "", rg ? rg : "");
        rc = curl_easy_perform(x->h);
        curl_slist_free_all(l);
        *status = 0;
        curl_easy_getinfo(x->h, CURLINFO_RESPONSE_CODE, status);
        x->hd->status = *status;
        if (rc == CURLE_OK && *status >= 300 && *status < 400 && x->hd->location) {
            char *next = resolve_location(cur, x->hd->location, 0);
            free(cur);
            cur = next;
            rc = CURLE_OUT_OF_MEMORY;
            continue;
        }
        break;
    }
    if (cur && rc == CURLE_OUT_OF_MEMORY && *status >= 300 && *status < 400)
        rc = CURLE_TOO_MANY_REDIRECTS;
    free(cur);
    return rc;
}

fl_status dl_blob(dl_client *c, void *curl, int slot, const char *name,
                  const dl_meta *m, const char *partial, const char *blob,
                  fl_error *err)
{
    xfer x = {.c = c, .h = curl, .slot = slot, .name = name, .partial = partial,
              .expected = m->size, .t0 = fl_now()};
    hdrs hd = {0};
    hdrs_reset(&hd);
    x.hd = &hd;
    x.hash_kind = is_hex(m->etag, 64) ? HASH_SHA256 : is_hex(m->etag, 40) ? HASH_GITSHA1 : HASH_NONE;
    if (x.hash_kind == HASH_NONE)
        dl_log(c, "%s: etag %s is not a sha256 or git sha1; checking the size only", name, m->etag);
    x.md = EVP_MD_CTX_new();
    fl_status st = FL_OK;
    int counted = 0;          /* in c->active */
    x.fd = open(partial, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (!x.md || x.fd < 0) {
        st = fl_fail(err, FL_EIO, "cannot open %s: %s", partial, strerror(errno));
        goto out;
    }
    struct stat sb;
    if (fstat(x.fd, &sb) != 0) {
        st = fl_fail(err, FL_EIO, "cannot stat %s: %s", partial, strerror(errno));
        goto out;
    }
    x.written = sb.st_size;
    if (x.written > x.expected) {
        if (ftruncate(x.fd, 0) != 0) {
            st = fl_fail(err, FL_EIO, "cannot truncate %s: %s", partial, strerror(errno));
            goto out;
        }
        x.written = 0;
    }
    /* A hasher thread only where it gets a core of its own: beside 2 busy
     * threads per transfer and one for the rest.  Without one it would
     * only add its read-back and its switches to the same cores. */
    int active = atomic_fetch_add(&c->active, 1) + 1;
    counted = 1;
    int threaded = c->hash_thread > 0 || (c->hash_thread < 0 && 2L * active + 1 <= c->ncpu);
    if (!hasher_start(&x, threaded)) {
        st = fl_interrupted || c->stop
                 ? fl_fail(err, FL_EINTR, "%s while checking %s",
                           fl_interrupted ? "interrupted" : "stopped after another error", name)
                 : fl_fail(err, FL_EIO, "cannot hash %s: %s", partial, strerror(x.io_errno));
        goto out;
    }
    add_done(c, x.written);
    if (x.written > 0)
        dl_log(c, "%s: resuming at byte %lld", name, (long long)x.written);
    xfer_emit(&x, HUB_EV_START);

    int integrity_left = 1;     /* a bad blob is fetched once more, then fails */
    int stalls = 0;             /* retries in a row without new bytes */
    for (;;) {
        long status = 200;
        CURLcode rc = CURLE_OK;
        int64_t before = x.written;
        x.range_bad = x.too_long = x.io_errno = 0;
        if (x.written < x.expected || x.expected == 0)
            rc = xfer_get(&x, m->location, &status);
        if (fl_interrupted || c->stop) {
            /* The partial file stays: the next run resumes it. */
            st = fl_fail(err, FL_EINTR, "%s while downloading %s",
                         fl_interrupted ? "interrupted" : "stopped after another error", name);
            break;
        }
        if (x.io_errno) {
            st = fl_fail(err, FL_EIO, "cannot write %s: %s", partial, strerror(x.io_errno));
            break;
        }
        int complete = rc == CURLE_OK && (status == 200 || status == 206);
        if (complete || x.too_long || (rc == CURLE_OK && status == 416)) {
            char why[256] = "";
            if (x.too_long)
                snprintf(why, sizeof why, "the server sent more than %lld bytes",
                         (long long)x.expected);
            else if (status == 416)
                snprintf(why, sizeof why, "the server refused the range at byte %lld",
                         (long long)x.written);
            /* The digest must cover every byte before it is read. */
            if (!why[0] && x.written == x.expected && !hasher_drain(&x)) {
                st = x.io_errno ? fl_fail(err, FL_EIO, "cannot read %s back to hash it: %s",
                                          partial, strerror(x.io_errno))
                                : fl_fail(err, FL_EINTR, "%s while checking %s",
                                          fl_interrupted ? "interrupted"
                                                         : "stopped after another error",
                                          name);
                break;
            }
            if (!why[0] && xfer_verify(&x, m->etag, why, sizeof why)) {
                /* Python chmods to what a fresh file in blobs/ would get. */
                if (fchmod(x.fd, (mode_t)c->blob_mode) != 0 || rename(partial, blob) != 0) {
                    st = fl_fail(err, FL_EIO, "cannot move %s into place: %s", partial,
                                 strerror(errno));
                    break;
                }
                xfer_emit(&x, HUB_EV_DONE);
                break;
            }
            if (integrity_left-- <= 0) {
                st = fl_fail(err, FL_ENET, "%s from %s: %s; the download was deleted",
                             name, c->repo_id, why);
                unlink(partial);
                break;
            }
            dl_log(c, "%s: %s; downloading it again", name, why);
            if (!xfer_restart(&x)) {
                st = fl_fail(err, FL_EIO, "cannot truncate %s: %s", partial, strerror(x.io_errno));
                break;
            }
            continue;
        }
        if (x.range_bad) {
            dl_log(c, "%s: Content-Range '%s' does not start at %lld; restarting", name,
                   hd.content_range, (long long)x.written);
            if (!xfer_restart(&x)) {
                st = fl_fail(err, FL_EIO, "cannot truncate %s: %s", partial, strerror(x.io_errno));
                break;
            }
        } else if (!transient(rc, status)) {
            if (rc != CURLE_OK) {
                st = fl_fail(err, FL_ENET, "downloading %s: %s", name, curl_easy_strerror(rc));
            } else {
                dl_response r = {0};
                fill_response(&r, &hd, status);
                st = dl_http_error(c, &r, name, err);
            }
            break;
        }
        if (x.written > before)
            stalls = 0;
        else if (++stalls > MAX_RETRIES) {
            st = rc != CURLE_OK
                     ? fl_fail(err, FL_ENET, "downloading %s: %s (no progress after %d retries)",
                               name, curl_easy_strerror(rc), MAX_RETRIES)
                     : fl_fail(err, FL_ENET, "downloading %s: HTTP %ld (gave up after %d retries)",
                               name, status, MAX_RETRIES);
            break;
        }
        double w = backoff(c, stalls > 0 ? stalls - 1 : 0, rc == CURLE_OK ? &hd : NULL);
        dl_log(c, "%s: %s at byte %lld; retrying in %.2f s", name,
               rc ? curl_easy_strerror(rc) : "HTTP error", (long long)x.written, w);
        fl_sleep(w);
    }
out:
    hasher_stop(&x);
    if (counted)
        atomic_fetch_sub(&c->active, 1);
    if (st)
        add_done(c, -x.written);
    if (x.fd >= 0)
        close(x.fd);
    EVP_MD_CTX_free(x.md);
    hdrs_reset(&hd);
    return st;
}

/* ----------------------------------------------------------------------------
 * Errors */

fl_status dl_http_error(const dl_client *c, const dl_response *r, const char *file,
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
