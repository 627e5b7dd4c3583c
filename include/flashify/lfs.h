/* lfs.h — the Git LFS side of an upload (docs/hub-protocol.md §10): the
 * batch request that says, per object, whether the storage needs its
 * bytes and how to send them, and the transfers themselves.
 *
 * A basic transfer is one PUT of the whole file, then a verify POST to the
 * Hub (with the token); a multipart transfer is one PUT per numbered part
 * (each slice of chunk_size bytes read again from the file on every
 * attempt), then a completion POST with every part's ETag exactly as the
 * storage returned it.  The PUTs and the completion go to pre-signed URLs:
 * they never carry the token.  Parts of all files run on `jobs` workers;
 * the worker that finishes a file's last part completes it, so a file is
 * stored as soon as its bytes are there. */
#ifndef FLASHIFY_LFS_H
#define FLASHIFY_LFS_H

#include <stdatomic.h>
#include <stdint.h>

#include "flashify/http.h"

typedef enum { LFS_UNKNOWN, LFS_STORED, LFS_BASIC, LFS_MULTIPART } lfs_action;

typedef struct {
    const char *path;        /* in the repo (messages, events) */
    const char *file;        /* on disk */
    int64_t size;
    char oid[65];            /* sha256 */
    /* What the batch answered: */
    lfs_action action;
    char *href;              /* basic: the PUT URL; multipart: the completion URL */
    char *verify;            /* basic: the verify URL, or NULL */
    int64_t chunk;           /* multipart: bytes per part */
    char **parts;            /* multipart: part URLs, in part order */
    size_t n_parts;
    /* The transfer: */
    char **etags;            /* per part, verbatim */
    atomic_int parts_left;
    atomic_llong done;       /* bytes of it sent (for progress) */
    int fd;                  /* -1 until the transfer opens the file */
    double t0;
} lfs_object;

typedef struct {
    http_client *http;
    const char *batch_url;   /* {E}/{id}.git/info/lfs/objects/batch */
    const char *ref;         /* the branch the objects are for, or NULL (a PR) */
    int jobs;
    long slow_timeout;       /* seconds a completion or verify may take */
    int step, steps;         /* the commit these objects are for (events) */
    /* Totals over every transfer (under http->mu). */
    int64_t sent, resent, read;
} lfs_session;

/* Asks the batch endpoint about objs (at most LFS_BATCH_MAX per call; the
 * caller splits) and fills each one's action.  A per-object error of the
 * batch fails with its message naming the file. */
#define LFS_BATCH_MAX 256
fl_status lfs_batch(lfs_session *s, void *curl, lfs_object *objs, size_t n, fl_error *err);

/* Sends the bytes of every object whose action is BASIC or MULTIPART and
 * completes (or verifies) each.  FL_EINTR on Ctrl-C: what is complete
 * stays stored, the rest is sent again by the next run. */
fl_status lfs_transfer(lfs_session *s, lfs_object *objs, size_t n, fl_error *err);

void lfs_object_free(lfs_object *o);

#endif
