/* txn_path.h — where the output may go, for the transaction (txn.c):
 * resolving -o, the names of its hidden siblings, what --force may replace,
 * and removing a tree through directory descriptors (never following a
 * symbolic link).  Internal to txn.c. */
#ifndef FLASHIFY_TXN_PATH_H
#define FLASHIFY_TXN_PATH_H

#include <dirent.h>
#include <limits.h>

#include "flashify/txn.h"

#define SUFFIX_PARTIAL ".flashify-partial"
#define SUFFIX_JOURNAL ".flashify-journal"   /* as long as SUFFIX_PARTIAL */
#define SUFFIX_OLD ".flashify-old"
#define MAX_TREE_DEPTH 32        /* an output is at most 9 levels deep (checkpoint.c) */

/* -o split into its resolved parent directory and its last component,
 * which is not followed ("." and ".." are resolved whole). */
typedef struct {
    char parent[PATH_MAX];
    char name[NAME_MAX + 1];
    char full[PATH_MAX];
} txn_out_path;

fl_status txn_resolve_out(const char *out_dir, txn_out_path *p, fl_error *err);

/* The two halves of txn_check_output: where -o is (resolved into p:
 * the source and the hub cache stay apart from it), and what is there
 * already (the --force rules).  txn_begin repairs a killed run between
 * the two, so that a run without --force still finishes its swap. */
fl_status txn_check_location(const txn_options *o, txn_out_path *p, fl_error *err);
fl_status txn_check_existing(const txn_options *o, const txn_out_path *p, fl_error *err);

/* "." + NAME + suffix, NAME shortened (a prefix and a hash) where that
 * would pass the file system's name limit; malloc'd. */
char *txn_sibling(int parent_fd, const char *name, const char *suffix);

/* The --force rules of txn_check_output for the existing directory open as
 * dfd (`full` resolved, `shown` as the user wrote it): FL_OK or FL_EUSAGE
 * saying why not. */
fl_status txn_check_replaceable(const txn_options *o, int dfd, const char *full, const char *shown,
                                fl_error *err);

/* A directory stream over fd from its start (NULL on failure). */
DIR *txn_dir_stream(int fd);
/* Removes `name` in dfd and everything under it; 0 or -1 with errno. */
int txn_remove_at(int dfd, const char *name, int depth);
/* Removes everything in the directory fd but the entry `keep` (may be NULL). */
int txn_clear_at(int fd, int depth, const char *keep);

/* n bytes in lowercase hex (2n digits and a NUL). */
void txn_hex(const unsigned char *b, size_t n, char *out);

#endif
