/* download.h — the hub client's downloads over the HTTP layer (http.h):
 * API GETs, HEAD metadata and blob transfers with resume and integrity
 * checks (docs/hub-protocol.md §2, §3). */
#ifndef FLASHIFY_DOWNLOAD_H
#define FLASHIFY_DOWNLOAD_H

#include <stdatomic.h>
#include <stdint.h>

#include "flashify/error.h"
#include "flashify/http.h"

/* What the downloads add to the shared client. */
typedef struct {
    http_client http;
    unsigned blob_mode;      /* 0666 & ~umask, read once before any thread */
    atomic_int active;       /* dl_blob calls in progress */
    int hash_thread;         /* FLASHIFY_HASH_THREAD: 1, 0, or -1 (auto) */
    long ncpu;               /* online CPUs */
} dl_client;

/* What a HEAD on /resolve says about a file. */
typedef struct {
    char commit[41];         /* X-Repo-Commit */
    char etag[129];          /* normalized X-Linked-Etag or ETag */
    int64_t size;            /* X-Linked-Size, or Content-Length */
    char *location;          /* where to GET the bytes (malloc'd) */
} dl_meta;

/* http_client_init plus what downloads need (env may be NULL). */
fl_status dl_client_init(dl_client *c, const hub_env *env, const char *endpoint,
                         const char *token, fl_error *err);
void dl_client_free(dl_client *c);

/* GET an API URL (JSON) with the token, retrying transient failures and
 * following redirects (a renamed repo).  FL_OK means a reply arrived:
 * r->status may still be an error, for http_error(). */
fl_status dl_api_get(http_client *c, void *curl, const char *url, http_response *r,
                     fl_error *err);

/* HEAD /resolve: follows relative redirects itself, stops at an absolute
 * one (its target becomes m->location), retries transient failures.
 * A non-2xx/3xx final status is returned in r (FL_OK) as for dl_api_get;
 * missing X-Repo-Commit / etag / size is FL_ENET. */
fl_status dl_head(http_client *c, void *curl, const char *url, dl_meta *m,
                  http_response *r, fl_error *err);
void dl_meta_free(dl_meta *m);

/* Downloads m->location into `partial` (resuming from its current length
 * with Range; a 200 reply restarts from 0), checks the size and the hash
 * implied by the etag (64 hex: sha256, 40 hex: git blob sha1) and renames
 * it to `blob`.  The hash is computed while the bytes arrive (hash.h), on
 * a thread of its own only where the machine has a core to spare
 * (FLASHIFY_HASH_THREAD=1/0 forces it).  A mismatch deletes the partial
 * file, retries once from scratch, then fails with FL_ENET.  `name` and
 * `slot` label the events. */
fl_status dl_blob(dl_client *c, void *curl, int slot, const char *name,
                  const dl_meta *m, const char *partial, const char *blob,
                  fl_error *err);

#endif
