/* write.h — writing the FlashNorm checkpoint directory.
 *
 * Plans every output header from the input headers (folding keeps shapes
 * and dtypes), then streams tensor by tensor in bounded chunks: pass-through
 * bytes with copy_file_range, folded rows through the fold kernel on a pool
 * of threads, each with its own buffer, so memory is bounded by --memory
 * whatever the model size.  Everything goes into a temporary sibling
 * directory that is renamed into place only when every step succeeded. */
#ifndef FLASHIFY_WRITE_H
#define FLASHIFY_WRITE_H

#include <stdint.h>

#include "flashify/checkpoint.h"
#include "flashify/plan.h"

typedef struct {
    const char *out_dir;
    int force;                  /* replace an existing output directory */
    int threads;                /* 0: one per core */
    uint64_t memory;            /* buffer budget in bytes; 0: 48 MiB */
    int fsync;                  /* fsync files and directories before the rename */
    uint64_t max_shard_size;    /* 0: keep the source's shard layout */
    int resume;                 /* continue a partial output (--resume) */
    const char *base_model;     /* for the model card; NULL: source dir name */
    /* Called on the complete temporary directory before it is renamed into
     * place (--strict), with commit_ctx; a non-FL_OK return aborts and
     * removes it. */
    fl_status (*before_commit)(const char *tmp_dir, void *commit_ctx, fl_error *err);
    void *commit_ctx;
    /* Progress: bytes written so far of `total`; may be NULL. */
    void (*progress)(void *progress_ctx, uint64_t done, uint64_t total);
    /* Informational messages (resuming, stale partial output); may be NULL. */
    void (*note)(void *progress_ctx, const char *msg);
    void *progress_ctx;
} convert_options;

/* Checks that out_dir is a sane place for the output of ck: not the source,
 * not inside it, not containing it, not existing unless force.  Returns
 * FL_OK or FL_EUSAGE. */
fl_status convert_check_output(const checkpoint *ck, const char *out_dir, int force,
                               fl_error *err);

/* Writes the whole output.  On any failure (or fl_interrupted) the
 * temporary directory is removed and nothing is left at out_dir. */
fl_status convert_write(const checkpoint *ck, const fold_plan *plan,
                        const convert_options *opt, fl_error *err);

/* The SIGBUS handler for reading the source through a mapping.  A source
 * file truncated while it is mapped raises SIGBUS in the worker touching
 * it; this handler turns that into an error for that tensor.  The library
 * installs no signal handlers: a program that installs this one for SIGBUS
 * (plain sa_handler) gets the mapped fast path, any other reads with pread. */
void convert_sigbus_handler(int sig);

/* Removes a directory tree (used for cleanup). */
void remove_tree(const char *path);

#endif
