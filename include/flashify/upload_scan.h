/* upload_scan.h — the local side of an upload: which files a folder
 * publishes and their digests (docs/hub-protocol.md §10).
 *
 * Listing follows huggingface_hub's upload_folder: every regular file
 * below the folder (a symlink to one counts as the file; symlinked
 * directories are not entered), in byte order of the path; a path with a
 * ".git" component or inside ".cache/huggingface" is skipped
 * (utils/_paths.py DEFAULT_IGNORE_PATTERNS); any other ".cache" component
 * is refused (FORBIDDEN_FOLDERS), as are paths that are not UTF-8 or hold
 * a control character or backslash, files over UPLOAD_FILE_MAX and more
 * than UPLOAD_FILES_MAX files.  Each file's size and mtime are recorded:
 * a file that changes afterwards is reported, never published half-new. */
#ifndef FLASHIFY_UPLOAD_SCAN_H
#define FLASHIFY_UPLOAD_SCAN_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "flashify/http.h"
#include "flashify/upload.h"

/* 1 when upload_folder skips the relative path (.git, .cache/huggingface). */
int upload_path_ignored(const char *rel);
/* 1 when the Hub refuses the relative path (a .git or .cache component). */
int upload_path_forbidden(const char *rel);

/* Lists folder into *files (sorted by path).  FL_EUSAGE when folder is not
 * a directory, FL_EINPUT for a refused path, a file too large, too many
 * files or none at all, FL_EIO for a read error. */
fl_status upload_list(const char *folder, upload_file **files, size_t *n, fl_error *err);
void upload_files_free(upload_file *files, size_t n);

/* The first min(512, size) bytes (preupload's sample) into buf. */
fl_status upload_sample(const upload_file *f, unsigned char *buf, size_t *len, fl_error *err);

/* Reads a regular file's bytes into f->content (checking it is the file
 * that was listed) and sets f->gitsha1, or, when it is set already, checks
 * that the bytes still have it. */
fl_status upload_read_content(upload_file *f, fl_error *err);

/* The sha256 of each of files[0..n) (LFS files), `jobs` at a time, with
 * HUB_PHASE_HASH events through http; *bytes_read adds what was read. */
fl_status upload_hash_lfs(upload_file **files, size_t n, int jobs, http_client *http,
                          int64_t *bytes_read, fl_error *err);

#endif
