/* hub.h — the Hugging Face Hub client: fetching a repo into the shared hub
 * cache, and (upload.h) publishing a folder.
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
 * The library reads no environment variable: the CLI reads each one once
 * into a hub_env (src/cli_env.c) and the hub applies the rules below to it
 * (docs/hub-protocol.md §5 has the precedence). */
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
    HUB_EV_DONE,    /* `name` is verified and in the cache (uploaded, hashed) */
    HUB_EV_IDLE,    /* the worker `slot` finished its piece (a part): no line */
    HUB_EV_LOG      /* a --verbose line in `msg` (never contains the token) */
} hub_event_kind;

/* What a transfer event is about. */
typedef enum {
    HUB_PHASE_DOWNLOAD,
    HUB_PHASE_HASH,      /* upload: reading a file to hash it */
    HUB_PHASE_UPLOAD     /* upload: sending its bytes */
} hub_phase;

typedef struct {
    hub_event_kind kind;
    hub_phase phase;
    int slot;                /* worker index, 0 .. jobs-1 */
    const char *name;        /* file path in the repo (NULL for LOG) */
    int64_t done, total;     /* bytes of this file (total -1 when unknown) */
    int64_t all_done;        /* bytes of all files to transfer in this run */
    int64_t all_total;
    double elapsed;          /* seconds since this file's transfer began */
    const char *msg;         /* HUB_EV_LOG only */
    int step, steps;         /* upload: commit `step` of `steps` (0 0: one) */
} hub_event;

typedef void (*hub_progress_fn)(const hub_event *ev, void *ctx);

/* The environment as the CLI read it: each field is the variable's value,
 * NULL when unset.  The hub interprets them as huggingface_hub does:
 *   hf_endpoint            HF_ENDPOINT (default https://huggingface.co)
 *   hf_token, hugging_face_hub_token, hf_token_path
 *                          the token after --token, in that order; the
 *                          token file defaults to $HF_HOME/token
 *   hf_home, xdg_cache_home, home
 *                          $HF_HOME, else ${XDG_CACHE_HOME:-~/.cache}/huggingface
 *   hf_hub_cache, huggingface_hub_cache
 *                          the hub cache, else $HF_HOME/hub
 *   hf_hub_offline, transformers_offline
 *                          1/ON/YES/TRUE: use the cache only
 *   hf_hub_disable_symlinks  1/ON/YES/TRUE: regular files in snapshots/ (a
 *                          new blob is moved there, an existing one copied)
 *   hf_hub_etag_timeout, hf_hub_download_timeout
 *                          seconds of no progress before a request is
 *                          abandoned and retried (default 10)
 *   curl_ca_bundle, ssl_cert_file, ssl_cert_dir   the TLS trust store
 *   backoff_scale          FLASHIFY_HUB_BACKOFF_SCALE: multiplies the
 *                          1,2,4,8,8 s retry backoff (the tests set it small;
 *                          Retry-After and RateLimit waits are never scaled)
 *   hash_thread            FLASHIFY_HASH_THREAD: 1/0 forces hashing a
 *                          download on a thread of its own on/off
 * libcurl reads the proxy variables itself. */
typedef struct {
    const char *hf_endpoint;
    const char *hf_token, *hugging_face_hub_token, *hf_token_path;
    const char *hf_home, *xdg_cache_home, *home;
    const char *hf_hub_cache, *huggingface_hub_cache;
    const char *hf_hub_offline, *transformers_offline;
    const char *hf_hub_disable_symlinks;
    const char *hf_hub_etag_timeout, *hf_hub_download_timeout;
    const char *curl_ca_bundle, *ssl_cert_file, *ssl_cert_dir;
    const char *backoff_scale;
    const char *hash_thread;
} hub_env;

typedef struct {
    const char *repo_id;     /* "org/name" (may carry "@rev") */
    const char *revision;    /* NULL -> from "@rev" or "main" */
    const char *token;       /* --token, or NULL -> HF_TOKEN, HUGGING_FACE_HUB_TOKEN,
                                HF_TOKEN_PATH / $HF_HOME/token */
    const hub_env *env;      /* NULL: no variable set */
    int offline;             /* --offline, or HF_HUB_OFFLINE=1 */
    int quiet, verbose;      /* -q, --verbose */
    int jobs;                /* parallel transfers, 0 -> 4 */
    hub_progress_fn progress;  /* NULL -> no events at all */
    void *progress_ctx;
    char **license;          /* out, may be NULL: the license the repo's card declares
                                (cardData.license, malloc'd), when the Hub was asked
                                (not offline, not for a cached commit); else NULL */
} hub_request;

/* 1 when s has the Hub's repo-id grammar (utils/_validators.py): "ns/name"
 * with an optional "@revision", each part [A-Za-z0-9_.-]{1,96}, no "--" or
 * "..", no ".git" suffix, and (stricter, so "./x" is never a repo) no part
 * starting with "." or "-".  The caller checks it is not an existing
 * directory. */
int hub_is_repo_id(const char *s);

/* HF_ENDPOINT, or https://huggingface.co. */
const char *hub_endpoint(const hub_env *env);

/* The token as huggingface_hub's get_token() finds it (utils/_auth.py):
 * `given` (--token), else HF_TOKEN, HUGGING_FACE_HUB_TOKEN, then the file
 * $HF_TOKEN_PATH or $HF_HOME/token; whitespace trimmed, CR/LF dropped, ""
 * is none.  malloc'd or NULL; free it with hub_token_free (wipes it). */
char *hub_find_token(const char *given, const hub_env *env);
void hub_token_free(char *token);

/* 1 when the libcurl in use cannot raise SIGPIPE on a connection the peer
 * closed (it sends with MSG_NOSIGNAL, TLS included: 7.87.0 and later).
 * Otherwise a program that does not want SIGPIPE to end it (or to count as
 * an interrupt) must block or ignore it around hub calls: the library
 * installs no signal policy. */
int hub_sigpipe_safe(void);

/* Downloads (or finds in the cache) everything needed to convert the repo
 * and sets *snapshot_dir (malloc'd) to snapshots/<commit> in the hub cache.
 * Returns FL_ENET for network errors (after retries), FL_EINPUT for a repo
 * that cannot be converted (no safetensors, gated, missing repo, revision or
 * file, refused token), FL_EIO for local errors (disk full: the partial
 * download is kept and resumes next time), FL_EINTR when fl_interrupted. */
fl_status hub_fetch_snapshot(const hub_request *req, char **snapshot_dir, fl_error *err);

#endif
