/* http.h — the HTTP layer the hub's download and upload share.
 *
 * One client per run (endpoint, token, timeouts, trust store, retry
 * scale, progress sink), one CURL easy handle per worker thread.  What it
 * does for both directions (docs/hub-protocol.md §2, §3):
 *
 *   - every request gets the same options: TLS verified, http(s) only, a
 *     no-progress timeout instead of a total one, redirects never followed
 *     by libcurl (callers follow them hop by hop);
 *   - the token goes only on requests that ask for it and only when the
 *     URL's origin is the endpoint's, so a CDN, a storage host or any host
 *     a redirect names never sees it;
 *   - the response headers the hub reads are parsed from one table;
 *   - transient failures (connect errors, timeouts, a peer that hung up,
 *     408/429/5xx) are retried with backoff 1, 2, 4, 8, 8 s (scaled by
 *     FLASHIFY_HUB_BACKOFF_SCALE) or the server's Retry-After / RateLimit,
 *     under one of three policies, because a retry must never double an
 *     effect (a commit without a parent to check against).
 *
 * The client's `stop` flag (another worker failed) and fl_interrupted
 * abort transfers in flight. */
#ifndef FLASHIFY_HTTP_H
#define FLASHIFY_HTTP_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "flashify/error.h"
#include "flashify/hub.h"
#include "flashify/util.h"

#define HTTP_MAX_RETRIES 5     /* huggingface_hub _http_backoff_base: 5 retries */
#define HTTP_MAX_HOPS 10
#define HTTP_BODY_MAX (256u << 20)

typedef struct {
    char *endpoint;          /* no trailing '/' */
    char *origin;            /* "scheme://host:port" of the endpoint */
    char *token;             /* NULL when none; sent to `origin` only */
    const char *repo_id;     /* for error messages */
    const char *revision;
    int verbose;
    double backoff_scale;    /* FLASHIFY_HUB_BACKOFF_SCALE */
    long etag_timeout;       /* HF_HUB_ETAG_TIMEOUT, s: API calls and HEADs */
    long download_timeout;   /* HF_HUB_DOWNLOAD_TIMEOUT, s: bodies (no-progress limit) */
    char *ca_file, *ca_path; /* CURL_CA_BUNDLE or SSL_CERT_FILE; SSL_CERT_DIR */
    hub_progress_fn progress;
    void *progress_ctx;
    /* Written and read by several workers without the mutex: atomic. */
    atomic_int stop;         /* set when another worker failed: abandon transfers */
    atomic_int contacted;    /* a reply has arrived from some server */
    pthread_mutex_t mu;      /* guards the fields below and event delivery */
    int64_t all_done, all_total;
} http_client;

/* The response headers the hub reads (one table in http.c fills it).
 * Text values are trimmed and stripped of control characters; `too_long`
 * is set when one did not fit (an ETag must be kept verbatim or not at
 * all). */
typedef struct {
    long status;
    char *location, *link_next;
    char commit[64], linked_etag[160], etag[160];
    char error_code[64], error_msg[256];
    char content_range[128], content_encoding[64];
    int64_t linked_size, content_length;   /* -1 when absent */
    double retry_after;                    /* seconds, -1 when absent */
    int too_long;
} http_headers;

/* A reply whose status was not retried away. */
typedef struct {
    long status;
    char *body;              /* NUL-terminated (when a body was collected) */
    size_t len;
    char *link_next;         /* Link rel="next" URL, or NULL */
    char error_code[64];     /* X-Error-Code */
    char error_msg[256];     /* X-Error-Message, control chars removed */
} http_response;

/* When a request may be sent again after a failure. */
typedef enum {
    HTTP_RETRY_TRANSIENT,    /* any transient failure (idempotent requests) */
    HTTP_RETRY_UNSENT,       /* only when the server cannot have acted on it:
                                a refused connection, a 429 (commits without
                                a parent commit) */
    HTTP_RETRY_NEVER
} http_retry;

/* A request body: memory, or `size` bytes produced by `read` (called with
 * the offset to produce from, so a retry starts again at 0). */
typedef size_t (*http_read_fn)(void *ctx, uint64_t off, char *buf, size_t n);

typedef struct {
    const char *method;      /* "GET" (default), "HEAD", "POST", "PUT" */
    const char *url;
    int auth;                /* add the token (only ever to the endpoint's origin) */
    long timeout;            /* no-progress seconds; 0: the client's etag_timeout */
    const char *content_type;/* for a body; NULL: none (a PUT to storage) */
    const char *accept;      /* Accept header, or NULL */
    const char *header;      /* one more header line ("Range: bytes=N-"), or NULL */
    const char *body;        /* request body in memory ... */
    size_t body_len;
    http_read_fn read;       /* ... or streamed (body_len bytes) */
    void *read_ctx;
    strbuf *reply;           /* collect the reply body here (NULL: discard) */
    size_t reply_max;        /* 0: HTTP_BODY_MAX */
    http_retry retry;
    int finish_on_interrupt; /* Ctrl-C does not abort it (a commit: its
                                outcome must be known); no retry after one */
    int fresh_connection;    /* never on a reused connection: libcurl would
                                resend it by itself when that one turns out
                                dead, unseen by the retry policy */
    /* Called with the bytes sent so far by this attempt (progress). */
    void (*sent)(void *ctx, int64_t bytes);
    void *sent_ctx;
} http_request;

/* Fills c from env (the CLI's reading of the environment; NULL: none set)
 * and the endpoint/token already chosen.  FL_EUSAGE for an endpoint that
 * is not an http(s) URL. */
fl_status http_client_init(http_client *c, const hub_env *env, const char *endpoint,
                           const char *token, fl_error *err);
void http_client_free(http_client *c);

/* Emits a HUB_EV_LOG line when verbose (printf-style). */
void http_log(http_client *c, const char *fmt, ...) FL_PRINTF(2, 3);
/* Delivers ev (serialized, with the client's running totals). */
void http_emit(http_client *c, hub_event *ev);
/* Adds n (may be negative) to the run's byte count. */
void http_add_done(http_client *c, int64_t n);

/* Percent-encodes s as Python's quote(s, safe=keep) does (always keeping
 * A-Za-z0-9_.-~ and the characters in keep). malloc'd. */
char *http_quote(const char *s, const char *keep);
/* 1 when url's origin (scheme, host, port) is the endpoint's. */
int http_same_origin(const http_client *c, const char *url);
/* Resolves `loc` against `base`.  relative_path_only: the rule for HEAD
 * (only the path is replaced, the query kept: §2); otherwise standard URL
 * resolution.  malloc'd or NULL. */
char *http_resolve(const char *base, const char *loc, int relative_path_only);
/* 1 when a Location has no scheme and no host. */
int http_location_is_relative(const char *loc);
/* url for logs: its query (signatures of pre-signed URLs) masked. */
void http_log_url(char *buf, size_t n, const char *url);

void http_headers_reset(http_headers *h);
void http_response_free(http_response *r);
/* The response fields of hd, for http_error. */
void http_response_fill(http_response *r, const http_headers *hd, long status);

/* Sets the options every request gets on curl handle h for `req`
 * (headers are parsed into hd).  Returns the header list to free after
 * curl_easy_perform, or NULL when out of memory. */
struct curl_slist *http_setup(http_client *c, void *h, const http_request *req,
                              const char *url, http_headers *hd);

/* 1 for a failure worth retrying: connect errors, timeouts, a peer that
 * closed early, and statuses 408, 429, 500, 502, 503, 504. */
int http_transient(int curl_code, long status);
/* The wait before retry number `attempt` (0-based): the server's
 * Retry-After / RateLimit when it gave one (hd not NULL), else
 * 1, 2, 4, 8, 8 s times the backoff scale. */
double http_backoff(const http_client *c, int attempt, const http_headers *hd);

/* What the attempts of one http_perform did. */
typedef struct {
    int64_t sent;            /* request body bytes handed to libcurl, all attempts */
    int64_t resent;          /* of which by attempts after the first */
    int attempts;
    int maybe_applied;       /* an attempt failed after the server may have
                                acted on it (a timeout, a reset, a 5xx) */
} http_stats;

/* Performs `req` on curl handle h with the retries its policy allows; no
 * redirect is followed.  FL_OK means a reply arrived: hd holds its
 * headers and hd->status may still be an error, which the caller turns
 * into a message.  FL_ENET after the retries, FL_EINTR on fl_interrupted
 * or the client's stop flag.  stats (may be NULL) is added to. */
fl_status http_perform(http_client *c, void *h, const http_request *req, http_headers *hd,
                       http_stats *stats, fl_error *err);

/* Turns an HTTP error reply into a message the user can act on: gated
 * repo, missing repo / revision / file, refused token, disabled repo
 * (FL_EINPUT), rate limit and server errors (FL_ENET). `file` may be NULL. */
fl_status http_error(const http_client *c, const http_response *r, const char *file,
                     fl_error *err);

/* The same for a request that writes (an upload): a missing or read-only
 * token, no write access to the namespace, a refused payload (FL_EINPUT),
 * then as http_error.  `what` names the request ("creating org/x"). */
fl_status http_write_error(const http_client *c, const http_response *r, const char *what,
                           fl_error *err);

#endif
