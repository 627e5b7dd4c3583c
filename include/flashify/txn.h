/* txn.h — the output transaction: a new output directory appears whole,
 * at once, or not at all (docs/output.md).
 *
 * For `-o DIR/NAME` everything is written into a private (0700) sibling,
 * DIR/.NAME.flashify-partial, and published with one rename.  Next to it,
 * DIR/.NAME.flashify-journal is the lock (flock, held from the start until
 * the published output is in place and what it replaced is gone) and the
 * journal: the fingerprint of the inputs, the identity of the temporary
 * directory, each finished shard with its sha256 (--resume), and the
 * publish step in progress, so that a run killed at any point leaves a
 * state the next run recognises and repairs.  Names longer than the file
 * system allows for these siblings are shortened with a hash of NAME.
 *
 * Everything under the temporary directory is reached through directory
 * file descriptors: a parent directory renamed during the run cannot make
 * writes or the cleanup land elsewhere. */
#ifndef FLASHIFY_TXN_H
#define FLASHIFY_TXN_H

#include <stddef.h>
#include <stdint.h>

#include "flashify/error.h"

/* The fingerprint of a run's inputs (layout.c feeds it, the journal keeps
 * it): 128 bits from two FNV-1a-64 lanes with different bases and a final
 * avalanche.  Not a cryptographic digest: it tells apart the inputs of two
 * runs, and costs nothing in a run that never resumes (OpenSSL's first
 * digest costs 2.4 MiB of resident memory); the sha256 of each shard is
 * what proves a reused shard's bytes. */
#define TXN_FP_BYTES 16

typedef struct {
    uint64_t a, b, n;
} txn_fp;

void txn_fp_init(txn_fp *f);
void txn_fp_add(txn_fp *f, const void *p, size_t n);
void txn_fp_final(const txn_fp *f, unsigned char out[TXN_FP_BYTES]);

typedef struct {
    const char *out_dir;     /* -o as given (messages name it) */
    const char *src_dir;     /* the source: never inside or around the output;
                                its directories' modes are the output's */
    int force;               /* may replace an empty directory or an earlier
                                flashify output (txn_check_output says which) */
    int resume;              /* keep finished shards (with their digests) on
                                failure; reuse the intact ones of a kept run */
    int fsync;               /* fsync files and directories before publishing */
    /* --force never replaces one of these directories or one that contains
     * one ($HOME, $HF_HOME); NULL-terminated, may be NULL. */
    const char *const *keep_dirs;
    /* Nothing is ever written inside these (the hub cache); may be NULL. */
    const char *const *managed_dirs;
    /* 1 when a file of relative name `rel` is one this conversion writes
     * (its shards, index, config.json, card, the source's other files):
     * --force replaces a non-empty directory only when its README.md is a
     * flashify model card and every file in it is such a name, so that
     * nothing a user added to an earlier output is deleted. */
    int (*ours)(void *ctx, const char *rel);
    void *ours_ctx;
    /* Informational messages (resuming, repairs); may be NULL. */
    void (*note)(void *ctx, const char *msg);
    void *note_ctx;
} txn_options;

typedef struct txn txn;

/* Decides, without writing anything, whether o->out_dir may receive the
 * output: its parent exists and is a directory; it is not the source, inside
 * it or around it, nor inside a managed directory; if it exists, only with
 * force, and then only an empty directory or an earlier flashify output
 * (its model card and files), never "/", the working directory or one of
 * its ancestors, nor a keep_dir or one of its ancestors.  Returns FL_OK or
 * FL_EUSAGE with one line saying what was refused and why. */
fl_status txn_check_output(const txn_options *o, fl_error *err);

/* Starts the transaction: takes the lock, repairs what a killed run left
 * (finishes or undoes its publish step), then creates the temporary
 * directory or reuses one this user's flashify made (recorded in the
 * journal, owned by this user, mode 0700): with o->resume and the same
 * fingerprint its shards stay candidates for txn_reusable, otherwise it is
 * emptied.  Anything else in the way is refused.  `fingerprint` covers
 * everything that determines the output bytes. */
fl_status txn_begin(const txn_options *o, const unsigned char fingerprint[TXN_FP_BYTES],
                    txn **t, fl_error *err);

/* The temporary directory's path (for --strict, and for messages). */
const char *txn_path(const txn *t);

/* 1 when the file `rel` was recorded finished by an earlier run with the
 * same fingerprint and still has the recorded size and sha256 (--resume). */
int txn_reusable(txn *t, const char *rel);

/* Creates the file `rel` (a relative name, parents made as needed with
 * the modes of the source's directories of the same names) in the
 * temporary directory with permission bits `mode` (the umask applies), and
 * opens it for writing.  An existing file of that name is replaced. */
fl_status txn_create(txn *t, const char *rel, unsigned mode, int *fd, fl_error *err);

/* Finishes a file made by txn_create: fsync (unless !fsync) and close.
 * `shard`: record it as a finished shard in the journal (with --resume,
 * with its sha256, so that a later run can reuse it). */
fl_status txn_finish_file(txn *t, const char *rel, int fd, int shard, fl_error *err);

/* Publishes: runs check(path, ctx) on the complete temporary directory
 * (--strict; may be NULL), gives it the source directory's mode, then
 * renames it into place: renameat2(RENAME_NOREPLACE) for a new output,
 * RENAME_EXCHANGE to replace one (then the replaced directory is removed),
 * with fallbacks where the file system lacks them.  An output that
 * appeared during the run, or changed into something --force may not
 * replace, is refused (FL_EUSAGE) and the finished temporary directory is
 * kept for --resume.  Once published, FL_OK whatever signal arrives. */
fl_status txn_commit(txn *t, fl_status (*check)(const char *path, void *ctx, fl_error *err),
                     void *ctx, fl_error *err);

/* Ends the transaction and frees it.  After a failure `s`, the temporary
 * directory is removed, unless --resume asked to keep finished shards (an
 * I/O error or an interrupt) or txn_commit kept it; the lock is released and
 * the journal removed with the directory. */
void txn_end(txn *t, fl_status s);

#endif
