/* download.c — API GETs, HEADs and verified blob transfers for the hub
 * client (see download.h; the protocol is docs/hub-protocol.md §2, §3).
 *
 * A blob transfer is a loop of attempts (blob_attempt): one GET from the
 * current length of the partial file, following redirects hop by hop,
 * that ends DONE (verified and renamed), RETRY (a transient failure, after
 * a backoff), RESTART (the bytes were wrong: from zero, once) or FAIL.
 * dl_blob holds the policy around it. */
#include "flashify/download.h"
#include "flashify/hash.h"
#include "flashify/util.h"

#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

fl_status dl_client_init(dl_client *c, const hub_env *env, const char *endpoint,
                         const char *token, fl_error *err)
{
    memset(c, 0, sizeof *c);
    fl_status st = http_client_init(&c->http, env, endpoint, token, err);
    if (st)
        return st;
    /* FLASHIFY_HASH_THREAD: 1 always hashes on a thread of its own, 0
     * never, unset: when the machine has a core to spare (dl_blob). */
    const char *ht = env ? env->hash_thread : NULL;
    c->hash_thread = ht && *ht ? atoi(ht) != 0 : -1;
    c->ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    /* umask can only be read by setting it: do it here, before the worker
     * threads exist, not next to their file creations. */
    mode_t um = umask(0);
    umask(um);
    c->blob_mode = 0666 & ~um;
    return FL_OK;
}

void dl_client_free(dl_client *c)
{
    http_client_free(&c->http);
    memset(c, 0, sizeof *c);
}

void dl_meta_free(dl_meta *m)
{
    free(m->location);
    memset(m, 0, sizeof *m);
}

/* ----------------------------------------------------------------------------
 * API GETs and HEADs */

fl_status dl_api_get(http_client *c, void *curl, const char *url, http_response *r,
                     fl_error *err)
{
    memset(r, 0, sizeof *r);
    http_headers hd = {0};
    http_headers_reset(&hd);
    strbuf body = {.limit = HTTP_BODY_MAX};
    char *cur = strdup(url);
    fl_status st = cur ? FL_OK : fl_fail(err, FL_EIO, "out of memory");
    /* A renamed repo redirects API calls too; the token follows only to
     * the endpoint's origin (http_setup decides per request). */
    for (int hop = 0; st == FL_OK; hop++) {
        http_request req = {.url = cur, .auth = 1, .reply = &body, .retry = HTTP_RETRY_TRANSIENT};
        st = http_perform(c, curl, &req, &hd, NULL, err);
        if (st || hd.status < 300 || hd.status >= 400 || !hd.location || hop >= HTTP_MAX_HOPS)
            break;
        char *next = http_resolve(cur, hd.location, 0);
        free(cur);
        cur = next;
        if (!cur)
            st = fl_fail(err, FL_ENET, "%s: unusable redirect", url);
    }
    free(cur);
    if (st == FL_OK) {
        http_response_fill(r, &hd, hd.status);
        r->len = body.n;
        r->body = sb_take(&body);
        /* Link may be relative: resolve it against the request URL. */
        r->link_next = hd.link_next ? http_resolve(url, hd.link_next, 0) : NULL;
    }
    sb_free(&body);
    http_headers_reset(&hd);
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

/* The metadata of a final (2xx or absolute-3xx) HEAD reply at `cur`. */
static fl_status head_meta(const http_headers *hd, const char *cur, const char *lu, dl_meta *m,
                           fl_error *err)
{
    long s = hd->status;
    normalize_etag(m->etag, sizeof m->etag, hd->linked_etag[0] ? hd->linked_etag : hd->etag);
    if (strlen(hd->commit) == 40)
        memcpy(m->commit, hd->commit, 41);
    m->size = hd->linked_size >= 0 ? hd->linked_size : (s < 300 ? hd->content_length : -1);
    if (s >= 300) {
        m->location = hd->location ? http_resolve(cur, hd->location, 0) : NULL;
        if (!m->location)
            return fl_fail(err, FL_ENET, "%s: redirect %ld without a usable Location", lu, s);
    } else {
        m->location = strdup(cur);
    }
    if (strlen(hd->commit) != 40)
        return fl_fail(err, FL_ENET, "%s: the reply has no X-Repo-Commit (is HF_ENDPOINT a Hub?)", lu);
    if (!m->etag[0])
        return fl_fail(err, FL_ENET, "%s: the reply has no ETag or X-Linked-Etag", lu);
    if (!etag_ok(m->etag))
        return fl_fail(err, FL_ENET, "%s: unusable etag '%.80s'", lu, m->etag);
    if (m->size < 0)
        return fl_fail(err, FL_ENET, "%s: the reply has no X-Linked-Size or Content-Length", lu);
    return FL_OK;
}

fl_status dl_head(http_client *c, void *curl, const char *url, dl_meta *m,
                  http_response *r, fl_error *err)
{
    memset(m, 0, sizeof *m);
    memset(r, 0, sizeof *r);
    http_headers hd = {0};
    http_headers_reset(&hd);
    char *cur = strdup(url);
    fl_status st = FL_OK;
    char lu[512];
    for (int hop = 0;; hop++) {
        if (!cur) {
            st = fl_fail(err, FL_EIO, "out of memory");
            break;
        }
        http_log_url(lu, sizeof lu, cur);
        http_request req = {.method = "HEAD", .url = cur, .auth = 1, .retry = HTTP_RETRY_TRANSIENT};
        if ((st = http_perform(c, curl, &req, &hd, NULL, err)))
            break;
        long s = hd.status;
        if (s >= 300 && s < 400 && hd.location && http_location_is_relative(hd.location)) {
            /* A renamed repo: follow it ourselves, still on the Hub. */
            if (hop >= HTTP_MAX_HOPS) {
                st = fl_fail(err, FL_ENET, "%s: more than %d redirects", lu, HTTP_MAX_HOPS);
                break;
            }
            char *next = http_resolve(cur, hd.location, 1);
            free(cur);
            cur = next;
            continue;
        }
        if (s < 200 || s >= 400) {
            http_response_fill(r, &hd, s);
            break;
        }
        r->status = s;
        st = head_meta(&hd, cur, lu, m, err);
        break;
    }
    free(cur);
    http_headers_reset(&hd);
    if (st)
        dl_meta_free(m);
    return st;
}

/* ----------------------------------------------------------------------------
 * Blob transfer */

typedef struct {
    dl_client *c;
    CURL *h;
    http_headers *hd;
    int slot;
    const char *name;
    const char *partial;
    int fd;
    int64_t written, expected;
    hash_reader hr;       /* the digest of bytes [0, written) */
    int started;          /* the body of the current reply has begun */
    int range_bad;        /* 206 at the wrong offset */
    int too_long;
    int io_errno;
    int counted;          /* in c->active */
    double t0, last_emit;
    char why[400];        /* what was wrong with the bytes (RESTART) */
} xfer;

typedef enum { XFER_DONE, XFER_RETRY, XFER_RESTART, XFER_FAIL } xfer_outcome;

static void xfer_emit(xfer *x, hub_event_kind kind)
{
    hub_event ev = {.kind = kind, .phase = HUB_PHASE_DOWNLOAD, .slot = x->slot, .name = x->name,
                    .done = x->written, .total = x->expected, .elapsed = fl_now() - x->t0};
    http_emit(&x->c->http, &ev);
}

/* Truncates the partial file to 0 (a fresh start), the digest with it. */
static int xfer_restart(xfer *x)
{
    if ((x->io_errno = hash_reader_reset(&x->hr)))
        return 0;
    if (ftruncate(x->fd, 0) != 0) {
        x->io_errno = errno;
        return 0;
    }
    http_add_done(&x->c->http, -x->written);
    x->written = 0;
    return 1;
}

static size_t on_body_file(char *p, size_t size, size_t nmemb, void *ud)
{
    xfer *x = ud;
    size_t n = size * nmemb;
    long status = 0;
    curl_easy_getinfo(x->h, CURLINFO_RESPONSE_CODE, &status);
    if (status != 200 && status != 206)
        return n;   /* a redirect's or an error's body */
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
            http_log(&x->c->http, "%s: server ignored Range, restarting from byte 0", x->name);
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
    if ((x->io_errno = hash_reader_feed(&x->hr, p, n, x->written + (int64_t)n)))
        return 0;
    x->written += (int64_t)n;
    http_add_done(&x->c->http, (int64_t)n);
    double t = fl_now();
    if (t - x->last_emit >= 0.1) {
        x->last_emit = t;
        xfer_emit(x, HUB_EV_BYTES);
    }
    return n;
}

/* Checks size and digest (the hasher drained); fills x->why on mismatch. */
static int xfer_verify(xfer *x, const char *etag)
{
    if (x->written != x->expected) {
        snprintf(x->why, sizeof x->why, "size is %lld bytes, expected %lld",
                 (long long)x->written, (long long)x->expected);
        return 0;
    }
    if (x->hr.d.kind == HASH_NONE)
        return 1;
    char hex[129];
    if (!hash_reader_hex(&x->hr, hex, sizeof hex)) {
        snprintf(x->why, sizeof x->why, "digest failed");
        return 0;
    }
    if (strcasecmp(hex, etag)) {
        /* Both are hex digests of at most 64 digits (the etag was checked). */
        snprintf(x->why, sizeof x->why, "%s is %.64s, expected %.64s",
                 x->hr.d.kind == HASH_SHA256 ? "sha256" : "git blob sha1", hex, etag);
        return 0;
    }
    return 1;
}

static int on_xfer_abort(void *ud, curl_off_t a, curl_off_t b, curl_off_t c_, curl_off_t d)
{
    const http_client *c = ud;
    return fl_interrupted || c->stop ? 1 : 0;
}

/* One GET of the bytes from `url`, following redirects hop by hop (the
 * token only ever goes to the endpoint's origin).  Returns the curl code;
 * *status is the final status. */
static CURLcode xfer_get(xfer *x, const char *url, long *status)
{
    http_client *c = &x->c->http;
    char *cur = strdup(url);
    CURLcode rc = CURLE_OUT_OF_MEMORY;
    for (int hop = 0; cur && hop <= HTTP_MAX_HOPS; hop++) {
        char range[64];
        if (x->written > 0)
            snprintf(range, sizeof range, "Range: bytes=%lld-", (long long)x->written);
        http_request req = {.url = cur, .auth = 1, .timeout = c->download_timeout,
                            .header = x->written > 0 ? range : NULL};
        struct curl_slist *l = http_setup(c, x->h, &req, cur, x->hd);
        if (!l)
            break;
        curl_easy_setopt(x->h, CURLOPT_WRITEFUNCTION, on_body_file);
        curl_easy_setopt(x->h, CURLOPT_WRITEDATA, x);
        curl_easy_setopt(x->h, CURLOPT_XFERINFOFUNCTION, on_xfer_abort);
        curl_easy_setopt(x->h, CURLOPT_XFERINFODATA, c);
        curl_easy_setopt(x->h, CURLOPT_BUFFERSIZE, 512L * 1024);
        x->started = 0;
        char lu[512];
        http_log_url(lu, sizeof lu, cur);
        http_log(c, "GET %s%s%s", lu, req.header ? " " : "", req.header ? req.header : "");
        rc = curl_easy_perform(x->h);
        curl_slist_free_all(l);
        *status = 0;
        curl_easy_getinfo(x->h, CURLINFO_RESPONSE_CODE, status);
        x->hd->status = *status;
        if (rc == CURLE_OK && *status >= 300 && *status < 400 && x->hd->location) {
            char *next = http_resolve(cur, x->hd->location, 0);
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

static const char *stop_reason(void)
{
    return fl_interrupted ? "interrupted" : "stopped after another error";
}

/* A reply that ended the body (complete, too long, or 416): verify and
 * move into place (DONE), or say what was wrong with the bytes (RESTART). */
static xfer_outcome finish_body(xfer *x, const dl_meta *m, const char *blob, long status,
                                fl_error *err)
{
    x->why[0] = 0;
    if (x->too_long)
        snprintf(x->why, sizeof x->why, "the server sent more than %lld bytes",
                 (long long)x->expected);
    else if (status == 416)
        snprintf(x->why, sizeof x->why, "the server refused the range at byte %lld",
                 (long long)x->written);
    /* The digest must cover every byte before it is read. */
    if (!x->why[0] && x->written == x->expected && (x->io_errno = hash_reader_drain(&x->hr))) {
        if (x->io_errno == EINTR)
            fl_fail(err, FL_EINTR, "%s while checking %s", stop_reason(), x->name);
        else
            fl_fail(err, FL_EIO, "cannot read %s back to hash it: %s", x->partial,
                    strerror(x->io_errno));
        return XFER_FAIL;
    }
    if (x->why[0] || !xfer_verify(x, m->etag))
        return XFER_RESTART;
    /* Python chmods to what a fresh file in blobs/ would get. */
    if (fchmod(x->fd, (mode_t)x->c->blob_mode) != 0 || rename(x->partial, blob) != 0) {
        fl_fail(err, FL_EIO, "cannot move %s into place: %s", x->partial, strerror(errno));
        return XFER_FAIL;
    }
    xfer_emit(x, HUB_EV_DONE);
    return XFER_DONE;
}

/* One attempt: a GET from byte x->written, then what its end means.  On
 * XFER_RETRY *rc_out and *status_out tell the backoff what happened. */
static xfer_outcome blob_attempt(xfer *x, const dl_meta *m, const char *blob, int *rc_out,
                                 long *status_out, fl_error *err)
{
    http_client *c = &x->c->http;
    long status = 200;
    CURLcode rc = CURLE_OK;
    x->range_bad = x->too_long = x->io_errno = 0;
    if (x->written < x->expected || x->expected == 0)
        rc = xfer_get(x, m->location, &status);
    *rc_out = rc;
    *status_out = status;
    if (fl_interrupted || c->stop) {
        /* The partial file stays: the next run resumes it. */
        fl_fail(err, FL_EINTR, "%s while downloading %s", stop_reason(), x->name);
        return XFER_FAIL;
    }
    if (x->io_errno) {
        fl_fail(err, FL_EIO, "cannot write %s: %s", x->partial, strerror(x->io_errno));
        return XFER_FAIL;
    }
    int complete = rc == CURLE_OK && (status == 200 || status == 206);
    if (complete || x->too_long || (rc == CURLE_OK && status == 416))
        return finish_body(x, m, blob, status, err);
    if (x->range_bad) {
        http_log(c, "%s: Content-Range '%s' does not start at %lld; restarting", x->name,
                 x->hd->content_range, (long long)x->written);
        if (!xfer_restart(x)) {
            fl_fail(err, FL_EIO, "cannot truncate %s: %s", x->partial, strerror(x->io_errno));
            return XFER_FAIL;
        }
        return XFER_RETRY;
    }
    if (http_transient(rc, status))
        return XFER_RETRY;
    if (rc != CURLE_OK) {
        fl_fail(err, FL_ENET, "downloading %s: %s", x->name, curl_easy_strerror(rc));
    } else {
        http_response r = {0};
        http_response_fill(&r, x->hd, status);
        http_error(c, &r, x->name, err);
    }
    return XFER_FAIL;
}

/* Opens the partial file and starts its digest over what it holds (an
 * oversized one is emptied first).  FL_OK or a failure in err. */
static fl_status xfer_open(xfer *x, fl_error *err)
{
    dl_client *c = x->c;
    x->fd = open(x->partial, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (x->fd < 0)
        return fl_fail(err, FL_EIO, "cannot open %s: %s", x->partial, strerror(errno));
    struct stat sb;
    if (fstat(x->fd, &sb) != 0)
        return fl_fail(err, FL_EIO, "cannot stat %s: %s", x->partial, strerror(errno));
    x->written = sb.st_size;
    if (x->written > x->expected) {
        if (ftruncate(x->fd, 0) != 0)
            return fl_fail(err, FL_EIO, "cannot truncate %s: %s", x->partial, strerror(errno));
        x->written = 0;
    }
    /* A hasher thread only where it gets a core of its own: beside 2 busy
     * threads per transfer and one for the rest.  Without one it would
     * only add its read-back and its switches to the same cores. */
    int active = atomic_fetch_add(&c->active, 1) + 1;
    x->counted = 1;
    int threaded = c->hash_thread > 0 || (c->hash_thread < 0 && 2L * active + 1 <= c->ncpu);
    int e = hash_reader_start(&x->hr, x->hr.d.kind, x->fd, x->written, x->expected,
                              &c->http.stop, threaded);
    if (e == EINTR)
        return fl_fail(err, FL_EINTR, "%s while checking %s", stop_reason(), x->name);
    if (e)
        return fl_fail(err, FL_EIO, "cannot hash %s: %s", x->partial, strerror(e));
    return FL_OK;
}

fl_status dl_blob(dl_client *c, void *curl, int slot, const char *name,
                  const dl_meta *m, const char *partial, const char *blob,
                  fl_error *err)
{
    xfer x = {.c = c, .h = curl, .slot = slot, .name = name, .partial = partial,
              .expected = m->size, .t0 = fl_now(), .fd = -1};
    http_headers hd = {0};
    http_headers_reset(&hd);
    x.hd = &hd;
    x.hr.d.kind = hash_kind_of(m->etag);
    if (x.hr.d.kind == HASH_NONE)
        http_log(&c->http, "%s: etag %s is not a sha256 or git sha1; checking the size only",
                 name, m->etag);
    fl_status st = xfer_open(&x, err);
    if (st == FL_OK) {
        http_add_done(&c->http, x.written);
        if (x.written > 0)
            http_log(&c->http, "%s: resuming at byte %lld", name, (long long)x.written);
        xfer_emit(&x, HUB_EV_START);
    }
    int integrity_left = 1;     /* a bad blob is fetched once more, then fails */
    int stalls = 0;             /* retries in a row without new bytes */
    while (st == FL_OK) {
        int64_t before = x.written;
        int rc;
        long status;
        xfer_outcome o = blob_attempt(&x, m, blob, &rc, &status, err);
        if (o == XFER_DONE)
            break;
        if (o == XFER_FAIL) {
            st = err->code;
            break;
        }
        if (o == XFER_RESTART) {
            if (integrity_left-- <= 0) {
                st = fl_fail(err, FL_ENET, "%s from %s: %s; the download was deleted", name,
                             c->http.repo_id, x.why);
                unlink(partial);
                break;
            }
            http_log(&c->http, "%s: %s; downloading it again", name, x.why);
            if (!xfer_restart(&x))
                st = fl_fail(err, FL_EIO, "cannot truncate %s: %s", partial,
                             strerror(x.io_errno));
            continue;
        }
        if (x.written > before)
            stalls = 0;
        else if (++stalls > HTTP_MAX_RETRIES) {
            st = rc != CURLE_OK
                     ? fl_fail(err, FL_ENET, "downloading %s: %s (no progress after %d retries)",
                               name, curl_easy_strerror(rc), HTTP_MAX_RETRIES)
                     : fl_fail(err, FL_ENET, "downloading %s: HTTP %ld (gave up after %d retries)",
                               name, status, HTTP_MAX_RETRIES);
            break;
        }
        double w = http_backoff(&c->http, stalls > 0 ? stalls - 1 : 0, rc == CURLE_OK ? &hd : NULL);
        http_log(&c->http, "%s: %s at byte %lld; retrying in %.2f s", name,
                 rc ? curl_easy_strerror(rc) : "HTTP error", (long long)x.written, w);
        fl_sleep(w);
    }
    hash_reader_free(&x.hr);
    if (x.counted)
        atomic_fetch_sub(&c->active, 1);
    if (st)
        http_add_done(&c->http, -x.written);
    if (x.fd >= 0)
        close(x.fd);
    http_headers_reset(&hd);
    return st;
}
