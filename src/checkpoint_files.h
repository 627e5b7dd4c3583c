/* checkpoint_files.h — the files copied with the model, found by walking
 * the checkpoint directory (checkpoint_files.c).  Internal to checkpoint.c. */
#ifndef FLASHIFY_CHECKPOINT_FILES_H
#define FLASHIFY_CHECKPOINT_FILES_H

#include "flashify/checkpoint.h"

/* Fills ck->other_files (sorted) with every file to copy; refuses (FL_EINPUT,
 * naming it) a directory deeper than 8 levels, more than 10,000 files, a
 * file that is neither regular nor a directory, a dangling link, or a link
 * out of the checkpoint.  ck->shards must be open. */
fl_status ckpt_collect_files(checkpoint *ck, fl_error *err);

/* FL_OK when path resolves inside dir_real (or, for a Hugging Face cache
 * snapshot, into its repo's blobs/); FL_EINPUT naming where it leads. */
fl_status ckpt_check_location(const char *dir_real, const char *path, fl_error *err);

#endif
