/* checkpoint_files.c — the files copied with the model (checkpoint_files.h):
 * the walk of the checkpoint directory behind checkpoint.other_files.
 *
 * Everything else in the directory tree belongs to the model (tokenizers,
 * generation config, chat templates, sentence-transformers modules such as
 * 1_Pooling/config.json) and is copied, except what the output regenerates
 * or must not carry.  Each real directory is walked once, whatever links
 * lead to it (a link loop would otherwise be unrolled to the depth limit),
 * real directories before links, in name order, so the result does not
 * depend on readdir (docs/output.md "What is copied"). */
#include "checkpoint_files.h"
#include "flashify/util.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAX_OTHER_FILES 10000
#define MAX_DIR_DEPTH 8

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Weights in other formats and other runtimes' files are not copied: the
 * output holds FlashNorm safetensors only, and stale unfolded weights next
 * to them would be loaded by some tools.  At the top level config.json and
 * README.md are regenerated and *.safetensors are the weights; deeper,
 * they belong to other modules (sentence-transformers' 2_Dense/) and are
 * copied, unless the index names them as shards. */
static int is_skipped_file(const checkpoint *ck, const char *rel, int depth)
{
    static const char *const suffixes[] = {
        ".bin", ".pth", ".pt", ".gguf", ".h5", ".msgpack", ".ckpt", ".onnx", ".incomplete", ".lock", NULL};
    for (int i = 0; suffixes[i]; i++)
        if (fl_ends_with(rel, suffixes[i]))
            return 1;
    if (depth == 0)
        return fl_ends_with(rel, ".safetensors") || fl_ends_with(rel, ".safetensors.index.json") ||
               strcmp(rel, "config.json") == 0 || strcmp(rel, "README.md") == 0;
    for (size_t i = 0; i < ck->n_shards; i++)
        if (strcmp(ck->shards[i].file, rel) == 0)
            return 1;
    return 0;
}

typedef struct {
    uint64_t dev, ino;
} dir_id;

typedef struct {
    checkpoint *ck;
    char dir_real[PATH_MAX];
    dir_id *seen;            /* directories walked (or being walked) */
    size_t n_seen;
    char **links;            /* linked directories, walked after the real tree */
    int *link_depth;
    size_t n_links;
} tree_walk;

/* 1 when the directory st was walked already; records it otherwise. */
static int seen_before(tree_walk *w, const struct stat *st, int *oom)
{
    for (size_t i = 0; i < w->n_seen; i++)
        if (w->seen[i].dev == (uint64_t)st->st_dev && w->seen[i].ino == (uint64_t)st->st_ino)
            return 1;
    dir_id *grown = realloc(w->seen, (w->n_seen + 1) * sizeof *grown);
    if (!grown) {
        *oom = 1;
        return 1;
    }
    w->seen = grown;
    w->seen[w->n_seen++] = (dir_id){(uint64_t)st->st_dev, (uint64_t)st->st_ino};
    return 0;
}

static fl_status add_other(checkpoint *ck, char **rel, fl_error *err)
{
    if (ck->n_other >= MAX_OTHER_FILES)
        return fl_fail(err, FL_EINPUT, "%s: more than %d files to copy (at %s)", ck->dir, MAX_OTHER_FILES, *rel);
    char **grown = realloc(ck->other_files, (ck->n_other + 1) * sizeof *grown);
    if (!grown)
        return fl_fail(err, FL_EIO, "out of memory");
    ck->other_files = grown;
    ck->other_files[ck->n_other++] = *rel;
    *rel = NULL;
    return FL_OK;
}

static fl_status defer_link(tree_walk *w, char **rel, int depth, fl_error *err)
{
    char **grown = realloc(w->links, (w->n_links + 1) * sizeof *grown);
    if (grown)
        w->links = grown;
    int *dg = grown ? realloc(w->link_depth, (w->n_links + 1) * sizeof *dg) : NULL;
    if (!dg)
        return fl_fail(err, FL_EIO, "out of memory");
    w->link_depth = dg;
    w->links[w->n_links] = *rel;
    w->link_depth[w->n_links++] = depth;
    *rel = NULL;
    return FL_OK;
}

/* The names in directory `path`, sorted, hidden ones (., .., .git,
 * .cache: never part of a model) left out. */
static fl_status list_dir(const char *path, char ***names, size_t *n, fl_error *err)
{
    *names = NULL;
    *n = 0;
    DIR *d = opendir(path);
    if (!d)
        return fl_fail(err, FL_EIO, "%s: cannot list: %s", path, strerror(errno));
    fl_status s = FL_OK;
    for (struct dirent *e; s == FL_OK && (e = readdir(d)) != NULL;) {
        if (e->d_name[0] == '.')
            continue;
        char **grown = *n < MAX_OTHER_FILES ? realloc(*names, (*n + 1) * sizeof *grown) : NULL;
        if (!grown || !(grown[*n] = fl_strdup(e->d_name)))
            s = *n < MAX_OTHER_FILES ? fl_fail(err, FL_EIO, "out of memory")
                                     : fl_fail(err, FL_EINPUT, "%s: more than %d entries", path, MAX_OTHER_FILES);
        if (grown)
            *names = grown;
        if (s == FL_OK)
            (*n)++;
    }
    closedir(d);
    if (*n)
        qsort(*names, *n, sizeof **names, cmp_str);
    return s;
}

static fl_status walk_dir(tree_walk *w, const char *rel, int depth, fl_error *err);

/* One entry `rel` (full path `full`) of a directory at `depth`. */
static fl_status walk_entry(tree_walk *w, char **rel, const char *full, int depth, fl_error *err)
{
    struct stat st, lst;
    if (lstat(full, &lst) != 0)
        return fl_fail(err, FL_EIO, "%s: %s", full, strerror(errno));
    if (stat(full, &st) != 0)
        return fl_fail(err, FL_EINPUT, "%s: a symbolic link to %s", full,
                       errno == ENOENT ? "nothing (its target does not exist)" : strerror(errno));
    if (S_ISLNK(lst.st_mode)) {
        /* A link must stay inside the checkpoint (or the HF cache's
         * blobs/), like a shard: a hostile tokenizer.json -> ~/.ssh/id_rsa
         * would otherwise be copied into the output, ready to be uploaded.
         * A link to the checkpoint itself is a loop, not a way out. */
        char real[PATH_MAX];
        if (!(S_ISDIR(st.st_mode) && realpath(full, real) && strcmp(real, w->dir_real) == 0)) {
            fl_status s = ckpt_check_location(w->dir_real, full, err);
            if (s != FL_OK)
                return s;
        }
    }
    if (S_ISDIR(st.st_mode)) {
        const char *name = strrchr(*rel, '/') ? strrchr(*rel, '/') + 1 : *rel;
        if (depth == 0 && strcmp(name, "original") == 0)
            return FL_OK;  /* Meta's consolidated .pth weights */
        if (S_ISLNK(lst.st_mode))
            return defer_link(w, rel, depth + 1, err);
        return walk_dir(w, *rel, depth + 1, err);
    }
    if (!S_ISREG(st.st_mode))
        return fl_fail(err, FL_EINPUT, "%s: not a regular file or a directory", full);
    if (is_skipped_file(w->ck, *rel, depth))
        return FL_OK;
    return add_other(w->ck, rel, err);
}

/* Walks directory `rel` (depth levels below the checkpoint) unless its
 * real directory was walked already. */
static fl_status walk_dir(tree_walk *w, const char *rel, int depth, fl_error *err)
{
    char *path = rel[0] ? fl_path_join(w->ck->dir, rel) : fl_strdup(w->ck->dir);
    struct stat st;
    int oom = 0;
    fl_status s = FL_OK;
    if (!path)
        return fl_fail(err, FL_EIO, "out of memory");
    if (stat(path, &st) != 0)
        s = fl_fail(err, FL_EIO, "%s: %s", path, strerror(errno));
    else if (seen_before(w, &st, &oom))
        s = oom ? fl_fail(err, FL_EIO, "out of memory") : FL_OK;
    else if (depth > MAX_DIR_DEPTH)
        s = fl_fail(err, FL_EINPUT, "%s: more than %d directory levels deep; flashify copies the files of at "
                    "most %d levels", path, MAX_DIR_DEPTH, MAX_DIR_DEPTH);
    else {
        char **names;
        size_t n;
        s = list_dir(path, &names, &n, err);
        for (size_t i = 0; i < n; i++) {
            char *r = rel[0] ? fl_path_join(rel, names[i]) : fl_strdup(names[i]);
            char *full = r ? fl_path_join(w->ck->dir, r) : NULL;
            if (s == FL_OK)
                s = r && full ? walk_entry(w, &r, full, depth, err) : fl_fail(err, FL_EIO, "out of memory");
            free(r);
            free(full);
            free(names[i]);
        }
        free(names);
    }
    free(path);
    return s;
}

fl_status ckpt_collect_files(checkpoint *ck, fl_error *err)
{
    tree_walk w = {.ck = ck};
    if (!realpath(ck->dir, w.dir_real))
        return fl_fail(err, FL_EINPUT, "%s: cannot resolve: %s", ck->dir, strerror(errno));
    fl_status s = walk_dir(&w, "", 0, err);
    /* Linked directories last, so the real ones keep their names; a link
     * may lead to more links (appended as they are found). */
    for (size_t i = 0; i < w.n_links; i++) {
        if (s == FL_OK)
            s = walk_dir(&w, w.links[i], w.link_depth[i], err);
        free(w.links[i]);
    }
    free(w.links);
    free(w.link_depth);
    free(w.seen);
    if (s == FL_OK && ck->n_other) /* qsort(NULL, 0) is undefined */
        qsort(ck->other_files, ck->n_other, sizeof *ck->other_files, cmp_str);
    return s;
}

