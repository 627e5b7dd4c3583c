/* write.h — writing the FlashNorm checkpoint directory.
 *
 * Plans every output file first (layout.h: headers from the input headers,
 * folding keeps shapes and dtypes), checks every input and the output path,
 * then streams tensor by tensor in bounded chunks: pass-through bytes with
 * copy_file_range, folded rows through the fold kernel on a pool of threads,
 * each with its own buffer, so memory is bounded by --memory whatever the
 * model size.  Everything goes through the output transaction (txn.h): a
 * private temporary sibling, renamed into place only when every step
 * succeeded. */
#ifndef FLASHIFY_WRITE_H
#define FLASHIFY_WRITE_H

#include <stdint.h>

#include "flashify/checkpoint.h"
#include "flashify/plan.h"

typedef struct {
    const char *out_dir;
    int force;                  /* replace an empty directory or an earlier flashify output */
    int threads;                /* 0: one per core */
    uint64_t memory;            /* buffer budget in bytes; 0: 48 MiB */
    int fsync;                  /* fsync files and directories before the rename */
    uint64_t max_shard_size;    /* 0: keep the source's shard layout */
    int resume;                 /* keep / continue a partial output (--resume) */
    const char *base_model;     /* the source's Hub repo id for the model card;
                                   NULL: found from a cache snapshot path, else
                                   the source directory's name */
    const char *license;        /* the source's license for the card when the
                                   source's own card does not say (the Hub API's
                                   cardData), or NULL */
    /* When not NULL, filled with the sha256 of every file the output holds,
     * computed from the bytes as they are written (pass-through tensors then
     * go through a buffer instead of copy_file_range, so each byte is read
     * once), for publishing (--push-to-hub) without reading the output again.
     * A shard an earlier run finished (--resume) is hashed from its file. */
    struct convert_digests *digests;
    /* --force never replaces these directories or one containing them
     * ($HOME, $HF_HOME), and never writes inside managed_dirs (the hub
     * cache): txn.h.  NULL-terminated; may be NULL. */
    const char *const *keep_dirs;
    const char *const *managed_dirs;
    /* Called on the complete temporary directory before it is renamed into
     * place (--strict), with commit_ctx; a non-FL_OK return aborts and
     * removes it. */
    fl_status (*before_commit)(const char *tmp_dir, void *commit_ctx, fl_error *err);
    void *commit_ctx;
    /* Progress: bytes written so far of `total`; may be NULL. */
    void (*progress)(void *progress_ctx, uint64_t done, uint64_t total);
    /* Informational messages (resuming, repairs of an interrupted run); may be NULL. */
    void (*note)(void *progress_ctx, const char *msg);
    void *progress_ctx;
} convert_options;

/* The digest of one output file (convert_options.digests). */
typedef struct {
    char *path;                 /* relative to the output directory */
    uint64_t size;
    char sha256[65];            /* lowercase hex */
} convert_digest;

typedef struct convert_digests {
    convert_digest *v;
    size_t n, cap;
} convert_digests;

void convert_digests_free(convert_digests *d);

/* Everything the real run checks before it writes a byte, without writing
 * anything: the output layout and headers, config.json's rewrite, the
 * model card, every other input file readable, and the output path
 * (txn_check_output: the --force rules).  Returns FL_OK or what the
 * real run would fail with. */
fl_status convert_dry_run(const checkpoint *ck, const fold_plan *plan, const convert_options *opt,
                          fl_error *err);

/* Writes the whole output.  On any failure (or fl_interrupted) nothing is
 * left at out_dir, and the temporary directory is removed unless --resume
 * keeps its finished shards (txn.h). */
fl_status convert_write(const checkpoint *ck, const fold_plan *plan,
                        const convert_options *opt, fl_error *err);

/* The SIGBUS handler for reading the source through a mapping.  A source
 * file truncated while it is mapped, or a bad sector under it, raises
 * SIGBUS in the worker touching it; this handler turns that into an error
 * for that tensor.  The library installs no signal handlers: a program that
 * installs this one for SIGBUS (plain sa_handler) gets the mapped fast path,
 * any other reads with pread. */
void convert_sigbus_handler(int sig);

#endif
