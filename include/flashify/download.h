/* download.h — HTTP for the hub client: API GETs, HEAD metadata and blob
 * transfers over libcurl, with retries, resume and integrity checks
 * (hub-protocol.md §2, §3, §9).  One CURL easy handle per worker thread;
 * the dl_client is shared and only touched under its mutex. */
#ifndef FLASHIFY_DOWNLOAD_H
#define FLASHIFY_DOWNLOAD_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "flashify/error.h"
#include "flashify/hub.h"

typedef struct {
    char *endpoint;          /* no trailing '/' */
    char *origin;            /* "scheme://host:port" of the endpoint */
    char *token;             /* NULL when none; sent to `origin` only */
    const char *repo_id;     /* for error messages */
    const char *revision;
    int verbose;
    double backoff_scale;    /* FLASHIFY_HUB_BACKOFF_SCALE */
    long etag_timeout;       /* HF_HUB_ETAG_TIMEOUT, s */
    long download_timeout;   /* HF_HUB_DOWNLOAD_TIMEOUT, s (no-progress limit) */
    hub_progress_fn progress;
    void *progress_ctx;
    unsigned blob_mode;      /* 0666 & ~umask, read once before any thread */
    /* Written and read by several workers without the mutex: atomic. */
    atomic_int stop;         /* set when another worker failed: abandon transfers */
    atomic_int contacted;    /* a reply has arrived from some server */
    atomic_int active;       /* dl_blob calls in progress */
    int hash_thread;         /* FLASHIFY_HASH_THREAD: 1, 0, or -1 (auto) */
    long ncpu;               /* online CPUs */
    pthread_mutex_t mu;      /* guards the fields below and event delivery */
    int64_t all_done, all_total;
} dl_client;

/* A reply whose status was not retried away. */
typedef struct {
    long status;
    char *body;              /* NUL-terminated (API GET only) */
    size_t len;
    char *link_next;         /* Link rel="next" URL, or NULL */
    char error_code[64];     /* X-Error-Code */
    char error_msg[256];     /* X-Error-Message, control chars removed */
} dl_response;

/* What a HEAD on /resolve says about a file. */
typedef struct {
    char commit[41];         /* X-Repo-Commit */
    char etag[129];          /* normalized X-Linked-Etag or ETag */
    int64_t size;            /* X-Linked-Size, or Content-Length */
    char *location;          /* where to GET the bytes (malloc'd) */
} dl_meta;

/* Fills c from the environment and the request (token already looked up). */
fl_status dl_client_init(dl_client *c, const char *endpoint, const char *token,
                         fl_error *err);
void dl_client_free(dl_client *c);

/* Emits a HUB_EV_LOG line when verbose (printf-style). */
void dl_log(dl_client *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* GET an API URL (JSON), retrying connect errors, timeouts, 408, 429 and
 * 5xx.  FL_OK means a reply arrived: r->status may still be an error, which
 * the caller turns into a message with dl_http_error(). */
fl_status dl_api_get(dl_client *c, void *curl, const char *url, dl_response *r,
                     fl_error *err);
void dl_response_free(dl_response *r);

/* HEAD /resolve: follows relative redirects itself, stops at an absolute
 * one (its target becomes m->location), retries transient failures.
 * A non-2xx/3xx final status is returned in r (FL_OK) as for dl_api_get;
 * missing X-Repo-Commit / etag / size is FL_ENET. */
fl_status dl_head(dl_client *c, void *curl, const char *url, dl_meta *m,
                  dl_response *r, fl_error *err);
void dl_meta_free(dl_meta *m);

/* Downloads m->location into `partial` (resuming from its current length
 * with Range; a 200 reply restarts from 0), checks the size and the hash
 * implied by the etag (64 hex: sha256, 40 hex: git blob sha1) and renames
 * it to `blob`.  The hash is computed while the bytes arrive, so it
 * costs no pass after the end: in the write callback, or, when the machine
 * has a core to spare (FLASHIFY_HASH_THREAD=1/0 forces it on/off), by a
 * second thread that reads back what was written (the resumed prefix
 * first, beside the transfer) and covers exactly the bytes on disk.  A mismatch deletes the partial file, retries once from
 * scratch, then fails with FL_ENET.  `name` and `slot` label the events. */
fl_status dl_blob(dl_client *c, void *curl, int slot, const char *name,
                  const dl_meta *m, const char *partial, const char *blob,
                  fl_error *err);

/* Turns an HTTP error reply into a message the user can act on: gated
 * repo, missing repo / revision / file, refused token, disabled repo
 * (FL_EINPUT), rate limit and server errors (FL_ENET). `file` may be NULL. */
fl_status dl_http_error(const dl_client *c, const dl_response *r, const char *file,
                        fl_error *err);

/* Percent-encodes s as Python's quote(s, safe=keep) does (always keeping
 * A-Za-z0-9_.-~ and the characters in keep). malloc'd. */
char *dl_quote(const char *s, const char *keep);

#endif
