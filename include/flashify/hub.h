/* hub.h — fetching a Hugging Face repo into the shared hub cache.
 *
 * hub_fetch_snapshot() resolves a revision to a commit, lists the repo tree,
 * picks what the converter needs (config.json, the safetensors named by the
 * index or the single file, tokenizer and generation files; never original/,
 * .bin/.pth files or other runtimes' formats), and downloads what the cache does
 * not hold yet into the layout huggingface_hub uses (cache.h).  Transfers
 * resume from blobs/<etag>.incomplete, retry with backoff, and every blob is
 * checked (size, then sha256 or git blob sha1 against its etag) before it is
 * renamed into place.  The protocol is in docs/hub-protocol.md.
 *
 * Environment: HF_ENDPOINT (default https://huggingface.co), HF_TOKEN,
 * HUGGING_FACE_HUB_TOKEN, HF_TOKEN_PATH, HF_HOME, HF_HUB_CACHE,
 * HF_HUB_OFFLINE, HF_HUB_DISABLE_SYMLINKS (regular files in snapshots/: a
 * new blob is moved there, an existing one copied), HF_HUB_ETAG_TIMEOUT /
 * HF_HUB_DOWNLOAD_TIMEOUT (seconds of no progress before a transfer is
 * abandoned and retried, default 10),
 * CURL_CA_BUNDLE / SSL_CERT_FILE, the usual proxy variables, and
 * FLASHIFY_HUB_BACKOFF_SCALE (multiplies the 1,2,4,8,8 s retry backoff; the
 * tests set it small; Retry-After and RateLimit waits are never scaled). */
#ifndef FLASHIFY_HUB_H
#define FLASHIFY_HUB_H

#include <stdint.h>

#include "flashify/error.h"

/* What the hub reports while it works; the library never prints, the
 * caller renders these (progress.h has the CLI's renderer).  Events are
 * delivered one at a time (the hub serializes them), from worker threads. */
typedef enum {
    HUB_EV_START,   /* a transfer of `name` begins (done = resume offset) */
    HUB_EV_BYTES,   /* bytes arrived for `name` */
    HUB_EV_DONE,    /* `name` is verified and in the cache */
    HUB_EV_LOG,     /* a --verbose line in `msg` (never contains the token) */
    HUB_EV_HASH     /* hashing what an earlier run left of `name` before the
                       transfer resumes (done of total bytes hashed) */
} hub_event_kind;

typedef struct {
    hub_event_kind kind;
    int slot;                /* worker index, 0 .. jobs-1 */
    const char *name;        /* file path in the repo (NULL for LOG) */
    int64_t done, total;     /* bytes of this file (total -1 when unknown) */
    int64_t all_done;        /* bytes of all files to transfer in this run */
    int64_t all_total;
    double elapsed;          /* seconds since this file's transfer began */
    const char *msg;         /* HUB_EV_LOG only */
} hub_event;

typedef void (*hub_progress_fn)(const hub_event *ev, void *ctx);

typedef struct {
    const char *repo_id;     /* "org/name" (may carry "@rev") */
    const char *revision;    /* NULL -> from "@rev" or "main" */
    const char *token;       /* --token, or NULL -> HF_TOKEN, HUGGING_FACE_HUB_TOKEN,
                                HF_TOKEN_PATH / $HF_HOME/token */
    int offline;             /* --offline, or HF_HUB_OFFLINE=1 */
    int quiet, verbose;      /* -q, --verbose */
    int jobs;                /* parallel transfers, 0 -> 4 */
    hub_progress_fn progress;  /* NULL -> no events at all */
    void *progress_ctx;
} hub_request;

/* 1 when s has the Hub's repo-id grammar (utils/_validators.py): "ns/name"
 * with an optional "@revision", each part [A-Za-z0-9_.-]{1,96}, no "--" or
 * "..", no ".git" suffix, and (stricter, so "./x" is never a repo) no part
 * starting with "." or "-".  The caller checks it is not an existing
 * directory. */
int hub_is_repo_id(const char *s);

/* Downloads (or finds in the cache) everything needed to convert the repo
 * and sets *snapshot_dir (malloc'd) to snapshots/<commit> in the hub cache.
 * Returns FL_ENET for network errors (after retries), FL_EINPUT for a repo
 * that cannot be converted (no safetensors, gated, missing repo, revision or
 * file, refused token), FL_EIO for local errors (disk full: the partial
 * download is kept and resumes next time), FL_EINTR when fl_interrupted. */
fl_status hub_fetch_snapshot(const hub_request *req, char **snapshot_dir, fl_error *err);

#endif
