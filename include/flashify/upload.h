/* upload.h — publishing a folder to a Hub model repo (flashify upload,
 * --push-to-hub), over the Git LFS path as huggingface_hub uses it without
 * Xet (docs/hub-protocol.md §10):
 *
 *   create the repo (exists: fine) -> the branch head to commit on top of
 *   -> preupload (regular or LFS, and what the branch already has) -> the
 *   digests (git blob id of regular files, sha256 of LFS files; those the
 *   converter computed while writing are taken as given) -> per commit:
 *   the LFS batch (what storage lacks), the transfers, then one commit
 *   with parentCommit set to the head it builds on.
 *
 * Nothing is sent twice: a file whose bytes the branch already has at its
 * path is left out; an LFS object the storage holds (an interrupted run
 * sent it) is not sent again; a run with nothing new commits nothing.
 * Memory is bounded: files are streamed from disk, regular files are held
 * at most UPLOAD_KEEP_MAX bytes in all (past that they are read again for
 * the commit, and must not have changed).
 *
 * Large folders become several commits: at most UPLOAD_COMMIT_FILES files
 * and UPLOAD_COMMIT_INLINE bytes of regular-file content each, in this
 * order: the LFS files (the weights), the regular files in subfolders, the
 * top-level regular files (index, card, tokenizer), config.json last of
 * all, each group in path order; so nothing is loadable before the last
 * commit lands.  Ctrl-C never leaves half a commit: the one
 * in flight completes or does not happen, and a run again resumes. */
#ifndef FLASHIFY_UPLOAD_H
#define FLASHIFY_UPLOAD_H

#include <stddef.h>
#include <stdint.h>

#include "flashify/error.h"
#include "flashify/hub.h"

#define UPLOAD_COMMIT_FILES 100                 /* the Hub's advice: < 100 files a commit */
#define UPLOAD_COMMIT_INLINE ((int64_t)64 << 20)
#define UPLOAD_KEEP_MAX ((int64_t)64 << 20)
#define UPLOAD_FILE_MAX 50000000000LL           /* the Hub refuses files over 50 GB */
#define UPLOAD_FILES_MAX 100000                 /* the Hub's limit of files per repo */

/* A digest computed while the file was written (--push-to-hub). */
typedef struct {
    const char *path;          /* relative to the folder */
    int64_t size;
    char sha256[65];
} upload_digest;

typedef enum {
    UPLOAD_SEND,               /* LFS: its bytes go to the storage, then into a commit */
    UPLOAD_STORED,             /* LFS: the storage holds its bytes; only the commit */
    UPLOAD_INLINE,             /* regular: its bytes go in the commit */
    UPLOAD_UNCHANGED,          /* the branch has these bytes at this path already */
    UPLOAD_IGNORED             /* the repo's .gitignore excludes it (shouldIgnore) */
} upload_state;

typedef struct {
    char *path;                /* relative, '/'-separated: also the path in the repo */
    int64_t size;
    int lfs;
    upload_state state;
    int commit;                /* 1-based number of the commit it went into, 0: none */
    char sha256[65];           /* LFS files */
    char gitsha1[41];          /* regular files */
    /* internal */
    char *full;                /* the path on disk */
    int64_t mtime_ns;
    unsigned char *content;    /* a regular file's bytes while held */
    char remote_oid[65];       /* what preupload says the branch has, or "" */
} upload_file;

typedef struct {
    const char *folder;
    const char *repo_id;       /* "ns/name" */
    const char *revision;      /* branch; NULL: main (created when missing) */
    const char *token;         /* --token, or NULL (hub_find_token) */
    const hub_env *env;
    int private_repo;          /* a new repo is private */
    int create_pr;             /* open a pull request instead of pushing */
    int dry_run;               /* say what would be sent; create and send nothing */
    int verbose;
    int jobs;                  /* parallel transfers, 0 -> 4 */
    const char *message;       /* commit summary; NULL: a default */
    const char *description;
    const upload_digest *digests;
    size_t n_digests;
    hub_progress_fn progress;
    void *progress_ctx;
} upload_request;

typedef struct {
    upload_file *files;
    size_t n_files;
    int created;               /* this run created the repo (dry run: would) */
    int n_commits;
    char parent[41];           /* the head the upload started from */
    char commit[41];           /* the head it left ("" in a dry run) */
    char *repo_url, *commit_url, *pr_url;
    int64_t bytes_read;        /* from disk: samples, digests, transfers, inline content */
    int64_t bytes_sent;        /* LFS bytes handed to the network, retries included */
    int64_t bytes_resent;      /* of which retries */
    int64_t bytes_lfs_new;     /* bytes of the LFS objects the storage lacked */
    int64_t bytes_commit;      /* commit payloads */
} upload_result;

/* Publishes req->folder.  FL_EUSAGE (bad repo id, not a directory),
 * FL_EINPUT (no or read-only token, no write access, a forbidden path, a
 * file too large, an invalid README front matter, a refused commit),
 * FL_ENET (network, the branch moved: the message says what to do),
 * FL_EIO, FL_EINTR.  res is filled as far as the run got; free it. */
fl_status hub_upload(const upload_request *req, upload_result *res, fl_error *err);
void upload_result_free(upload_result *res);

void upload_digests_free(upload_digest *d, size_t n);



#endif
