/* cache.h — the Hugging Face hub cache, laid out exactly as huggingface_hub
 * lays it out (docs/hub-protocol.md §4), so models downloaded by Python tools are
 * reused by flashify and the other way round:
 *
 *   <hub>/CACHEDIR.TAG
 *   <hub>/.locks/models--<ns>--<name>/<etag>.lock
 *   <hub>/models--<ns>--<name>/blobs/<etag>
 *   <hub>/models--<ns>--<name>/refs/<revision>        (commit, no newline)
 *   <hub>/models--<ns>--<name>/snapshots/<commit>/<path> -> ../../blobs/<etag>
 *       (a regular file instead with HF_HUB_DISABLE_SYMLINKS=1)
 *
 * Every function takes paths it builds itself from validated names: callers
 * pass a file name from the API through cache_safe_relpath() first.  Where
 * the cache is comes from the hub_env the CLI read (NULL: nothing set). */
#ifndef FLASHIFY_CACHE_H
#define FLASHIFY_CACHE_H

#include <stdint.h>

#include "flashify/error.h"
#include "flashify/hub.h"

/* $HF_HOME, else ${XDG_CACHE_HOME:-~/.cache}/huggingface, "~" expanded
 * with $HOME (malloc'd). */
char *cache_hf_home(const hub_env *env);

/* $HF_HUB_CACHE, else $HUGGINGFACE_HUB_CACHE, else $HF_HOME/hub (malloc'd). */
char *cache_hub_dir(const hub_env *env);

/* "models--" + repo_id with "/" replaced by "--" (malloc'd). */
char *cache_repo_folder(const char *repo_id);

/* 1 when HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is 1/ON/YES/TRUE. */
int cache_offline_env(const hub_env *env);

/* 1 when HF_HUB_DISABLE_SYMLINKS is 1/ON/YES/TRUE: snapshots/ then holds
 * regular files (cache_place_file) instead of symlinks. */
int cache_symlinks_disabled(const hub_env *env);

/* 1 when s is a 40-character lowercase hex commit id. */
int cache_is_commit(const char *s);

/* 1 when p is safe to append to a directory: relative, non-empty, no empty,
 * "." or ".." component, no backslash, no control character. */
int cache_safe_relpath(const char *p);

/* Reads <repo_dir>/refs/<rev> into commit (41 bytes).  Returns 1 when the
 * ref exists and holds a commit id, 0 otherwise. */
int cache_read_ref(const char *repo_dir, const char *rev, char commit[41]);

/* Writes refs/<rev> = commit without a newline, atomically (tmp + rename),
 * only when the content changes. */
fl_status cache_write_ref(const char *repo_dir, const char *rev,
                          const char *commit, fl_error *err);

/* Writes <hub>/CACHEDIR.TAG when missing (best effort, as Python does). */
void cache_write_tag(const char *hub_dir);

/* 1 when snapshots/<commit>/<path> resolves to a regular file; when
 * want_size >= 0 its size must also equal want_size. */
int cache_pointer_ok(const char *repo_dir, const char *commit,
                     const char *path, int64_t want_size);

/* Creates snapshots/<commit>/<path> as a relative symlink to blobs/<etag>
 * ("../../blobs/<etag>", one more "../" per directory level), replacing
 * whatever was there. */
fl_status cache_link(const char *repo_dir, const char *commit,
                     const char *path, const char *etag, fl_error *err);

/* No-symlink mode (docs/hub-protocol.md §4, file_download.py _create_symlink):
 * puts blobs/<etag> at snapshots/<commit>/<path> as a regular file.  A blob
 * just downloaded (new_blob) is moved there, so blobs/<etag> is gone, as
 * Python leaves it; an existing blob is copied (through a temporary file
 * and a rename) and stays.  Whatever was at the path is replaced. */
fl_status cache_place_file(const char *repo_dir, const char *commit, const char *path,
                           const char *etag, int new_blob, fl_error *err);

/* An exclusive flock on <hub>/.locks/<folder>/<etag>.lock, as py-filelock
 * takes it; released by unlinking then closing. */
typedef struct {
    int fd;
    char *path;
} cache_lock;

/* Waits (polling every 50 ms, giving up with FL_EINTR on fl_interrupted)
 * until the lock is held. */
fl_status cache_lock_acquire(const char *hub_dir, const char *folder,
                             const char *etag, cache_lock *lk, fl_error *err);
void cache_lock_release(cache_lock *lk);

#endif
