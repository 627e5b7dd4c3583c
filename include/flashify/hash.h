/* hash.h — the digests the Hub names files by, and the ways flashify
 * computes them without a second pass over the bytes.
 *
 * Git-tracked files are named by their git blob id, sha1("blob <size>\0" +
 * data); LFS files by the sha256 of their bytes (docs/hub-protocol.md §2).
 *
 *   - fl_digest: one running digest of either kind;
 *   - hash_reader: the digest of a file that is being written (a download):
 *     inline, fed the bytes as they are written, or, where a core is free,
 *     on a thread of its own that reads back what was written while it is
 *     still in the page cache, so sha256 runs beside recv + write;
 *   - fl_hash_fd: both digests of a whole file in one read (an upload). */
#ifndef FLASHIFY_HASH_H
#define FLASHIFY_HASH_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "flashify/error.h"

typedef enum { HASH_NONE, HASH_SHA256, HASH_GITSHA1 } hash_kind;

/* 64 hex digits: sha256; 40: git blob sha1; else HASH_NONE. */
hash_kind hash_kind_of(const char *hex);

typedef struct {
    void *md;            /* EVP_MD_CTX */
    hash_kind kind;
    int64_t size;        /* the blob size in git's header */
} fl_digest;

/* (Re)starts d for a blob of `size` bytes; 0 on failure.  HASH_NONE is a
 * digest that accepts bytes and has no value. */
int fl_digest_init(fl_digest *d, hash_kind kind, int64_t size);
int fl_digest_update(fl_digest *d, const void *p, size_t n);
/* The lowercase hex value so far (d keeps running); 0 on failure. */
int fl_digest_hex(const fl_digest *d, char *hex, size_t cap);
void fl_digest_free(fl_digest *d);

/* ---- hashing a file while it is written --------------------------------*/

typedef struct {
    fl_digest d;         /* owned by the hasher thread while busy */
    int fd;              /* the file being written (read back by the thread) */
    const atomic_int *stop;   /* another worker failed: stop waiting */
    /* The digest covers exactly bytes [0, done) of the file; `avail` only
     * grows by what the writer has put in the file. */
    pthread_t thread;
    int running, busy, quit, err;
    int flush;           /* hash a tail shorter than a chunk too */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int64_t avail, done;
} hash_reader;

/* Starts r on file fd, whose first `written` bytes are already there (a
 * resumed download), for a blob of `size` bytes: on a thread when
 * `threaded` (the prefix then overlaps the transfer too), else inline (the
 * prefix hashed here; Ctrl-C or *stop cut it short with EINTR).  Returns 0,
 * or an errno. */
int hash_reader_start(hash_reader *r, hash_kind kind, int fd, int64_t written, int64_t size,
                      const atomic_int *stop, int threaded);
/* The n bytes at p were just written and the file now holds `avail` good
 * bytes: digests them (inline), or hands them to the thread, waiting while
 * it lags more than HASH_LAG_MAX behind so that what it reads back is still
 * in the page cache (and the socket slows the sender instead).  0 or an
 * errno. */
int hash_reader_feed(hash_reader *r, const char *p, size_t n, int64_t avail);
/* Waits until every byte handed over is in the digest.  0; an errno when
 * the thread failed; EINTR when Ctrl-C or *stop cut the wait short (a
 * complete partial file of many GB is hashed here). */
int hash_reader_drain(hash_reader *r);
/* Back to an empty digest over an empty file (the caller truncates it):
 * waits until the thread is between reads.  0 or an errno. */
int hash_reader_reset(hash_reader *r);
/* The digest's hex value (drain first). */
int hash_reader_hex(hash_reader *r, char *hex, size_t cap);
/* Ends the thread, if any, and frees the digest. */
void hash_reader_free(hash_reader *r);

/* ---- hashing a whole file ------------------------------------------------*/

/* Called after each chunk with the bytes hashed so far. */
typedef void (*hash_progress_fn)(void *ctx, int64_t done);

/* Reads fd's `size` bytes from offset 0 once and computes the sha256
 * (sha256 != NULL, 65 bytes) and the git blob id (gitsha1 != NULL, 41
 * bytes).  Checks fl_interrupted and *stop (may be NULL) between chunks.
 * FL_OK, FL_EIO (read error or the file is shorter than size: err names
 * `path`), FL_EINTR. */
fl_status fl_hash_fd(int fd, const char *path, int64_t size, char *sha256, char *gitsha1,
                     const atomic_int *stop, hash_progress_fn progress, void *progress_ctx,
                     fl_error *err);

/* ---- hashing a file written out of order --------------------------------
 * The writer's workers finish their pieces of a file out of order, but a
 * digest must take the bytes in file order: piece k waits for its turn
 * (everything before it hashed), adds its bytes, and passes the turn on.
 * Pieces are handed out in order, so the piece holding the turn is always
 * being worked on; a failure anywhere aborts the waiters. */
typedef struct {
    fl_digest d;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    size_t next;         /* the piece whose turn it is */
    int failed;
} ordered_digest;

int ordered_digest_init(ordered_digest *o, hash_kind kind);
/* Waits for piece k's turn: FL_OK, or FL_EINTR once aborted or interrupted. */
fl_status ordered_digest_wait(ordered_digest *o, size_t k, fl_error *err);
/* Adds bytes during the caller's turn (0 on failure). */
int ordered_digest_update(ordered_digest *o, const void *p, size_t n);
/* Ends the caller's turn. */
void ordered_digest_pass(ordered_digest *o);
void ordered_digest_abort(ordered_digest *o);
void ordered_digest_free(ordered_digest *o);

#endif
