/* commit.h — one commit of an upload: the NDJSON payload the Hub's commit
 * endpoint takes, streamed (regular files base64-encoded on the fly, so
 * the payload is never built in memory), with a Content-Length computed
 * in advance (docs/hub-protocol.md §10; huggingface_hub _commit_api.py
 * _prepare_commit_payload, _send_commit).
 *
 * A retry must not commit twice: on a branch, with the parent commit set,
 * the Hub refuses a second application (412), so transient failures are
 * retried; a commit that opens a pull request (the parent then only says
 * where the PR starts) is retried only after failures the Hub cannot have
 * acted on.  Ctrl-C does not cut a commit short: its outcome is always
 * known. */
#ifndef FLASHIFY_COMMIT_H
#define FLASHIFY_COMMIT_H

#include <stdint.h>

#include "flashify/http.h"

typedef struct {
    const char *path;            /* in the repo */
    int lfs;                     /* an lfsFile line (oid, size), else a file line */
    const char *oid;             /* lfs: the sha256 */
    int64_t size;
    const unsigned char *content;/* regular: its `size` bytes */
} commit_op;

typedef struct {
    const char *url;             /* {E}/api/models/{id}/commit/{rev}[?create_pr=1] */
    const char *summary, *description;
    const char *parent;          /* 40 hex, or NULL */
    int opens_pr;                /* the URL has ?create_pr=1 */
    const commit_op *ops;
    size_t n_ops;
    long timeout;                /* seconds without progress */
} commit_request;

typedef struct {
    char oid[41];                /* the new commit */
    char *url, *pr_url;          /* commitUrl, pullRequestUrl (or NULL) */
    http_response reply;         /* status and error fields of the final reply */
    int maybe_applied;           /* an earlier attempt may have been applied */
    int64_t payload_bytes;
} commit_result;

/* Sends the commit.  FL_OK means a reply arrived: reply.status 200 with
 * oid set, or an error status for the caller to report (412: the branch
 * moved).  FL_ENET after the retries, FL_EIO when out of memory. */
fl_status hub_commit(http_client *c, void *curl, const commit_request *r, commit_result *out,
                     fl_error *err);
void commit_result_free(commit_result *r);

/* p's n bytes base64-encoded (RFC 4648, padded; malloc'd, or NULL). */
char *hub_base64(const void *p, size_t n);

/* The payload's length and bytes [off, off+n) (for tests: the same
 * generator hub_commit streams). */
typedef struct commit_payload commit_payload;
commit_payload *commit_payload_new(const commit_request *r);
uint64_t commit_payload_size(const commit_payload *p);
size_t commit_payload_read(commit_payload *p, uint64_t off, char *buf, size_t n);
void commit_payload_free(commit_payload *p);

#endif
