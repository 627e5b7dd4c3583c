/* upload_scan.c — listing an upload's folder and the digests of its files
 * (see upload_scan.h). */
#include "flashify/upload_scan.h"
#include "flashify/cache.h"
#include "flashify/hash.h"
#include "flashify/pool.h"
#include "flashify/util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_DEPTH 32

/* 1 when some component of rel equals `a` (and, with b, the next one b). */
static int has_components(const char *rel, const char *a, const char *b)
{
    size_t la = strlen(a), lb = b ? strlen(b) : 0;
    for (const char *c = rel; c; c = strchr(c, '/') ? strchr(c, '/') + 1 : NULL) {
        if (strncmp(c, a, la) || (c[la] != '/' && c[la] != 0))
            continue;
        if (!b)
            return 1;
        const char *n = c[la] == '/' ? c + la + 1 : NULL;
        if (n && !strncmp(n, b, lb) && (n[lb] == '/' || n[lb] == 0))
            return 1;
    }
    return 0;
}

int upload_path_ignored(const char *rel)
{
    /* DEFAULT_IGNORE_PATTERNS (utils/_paths.py): a ".git" component
     * anywhere, and ".cache/huggingface" anywhere, since fnmatch's '*'
     * crosses '/'. */
    return has_components(rel, ".git", NULL) || has_components(rel, ".cache", "huggingface");
}

int upload_path_forbidden(const char *rel)
{
    return has_components(rel, ".git", NULL) || has_components(rel, ".cache", NULL);
}

void upload_files_free(upload_file *files, size_t n)
{
    for (size_t i = 0; files && i < n; i++) {
        free(files[i].path);
        free(files[i].full);
        free(files[i].content);
    }
    free(files);
}

/* ----------------------------------------------------------------------------
 * Listing */

typedef struct {
    const char *root;
    upload_file *v;
    size_t n, cap;
} listing;

static int64_t mtime_ns(const struct stat *sb)
{
    return (int64_t)sb->st_mtim.tv_sec * 1000000000 + sb->st_mtim.tv_nsec;
}

/* Checks a file's name and size against what the Hub takes, then adds it. */
static fl_status add_file(listing *l, const char *rel, const char *full, const struct stat *sb,
                          fl_error *err)
{
    if (fl_utf8_check(rel, strlen(rel)) != strlen(rel) || !cache_safe_relpath(rel))
        return fl_fail(err, FL_EINPUT, "%s: the name is not UTF-8 or holds a control character "
                       "or backslash, which a Hub path cannot", full);
    if (upload_path_forbidden(rel))
        return fl_fail(err, FL_EINPUT, "%s: the Hub refuses paths with a '.git' or '.cache' "
                       "component; rename or move it out of the folder", full);
    if (sb->st_size > UPLOAD_FILE_MAX)
        return fl_fail(err, FL_EINPUT, "%s is %.1f GB; the Hub refuses files over %.0f GB: "
                       "re-shard it (flashify SOURCE --max-shard-size 5GB)", full,
                       (double)sb->st_size / 1e9, UPLOAD_FILE_MAX / 1e9);
    if (l->n >= UPLOAD_FILES_MAX)
        return fl_fail(err, FL_EINPUT, "%s holds more than %d files, the most a Hub repo takes",
                       l->root, UPLOAD_FILES_MAX);
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 64;
        upload_file *v = realloc(l->v, cap * sizeof *v);
        if (!v)
            return fl_fail(err, FL_EIO, "out of memory");
        l->v = v;
        l->cap = cap;
    }
    upload_file *f = &l->v[l->n];
    memset(f, 0, sizeof *f);
    f->path = fl_strdup(rel);
    f->full = fl_strdup(full);
    f->size = sb->st_size;
    f->mtime_ns = mtime_ns(sb);
    if (!f->path || !f->full) {
        free(f->path);
        free(f->full);
        return fl_fail(err, FL_EIO, "out of memory");
    }
    l->n++;
    return FL_OK;
}

static fl_status walk(listing *l, const char *rel, int depth, fl_error *err);

/* One directory entry `name` of the directory at rel. */
static fl_status visit(listing *l, const char *rel, const char *name, int depth, fl_error *err)
{
    char *sub = rel ? fl_asprintf("%s/%s", rel, name) : fl_strdup(name);
    char *full = sub ? fl_path_join(l->root, sub) : NULL;
    fl_status st = FL_OK;
    struct stat sb;
    if (!full) {
        st = fl_fail(err, FL_EIO, "out of memory");
    } else if (upload_path_ignored(sub)) {
        /* .git, .cache/huggingface: not published */
    } else if (lstat(full, &sb) != 0) {
        st = fl_fail(err, FL_EIO, "cannot stat %s: %s", full, strerror(errno));
    } else if (S_ISDIR(sb.st_mode)) {
        st = depth >= MAX_DEPTH ? fl_fail(err, FL_EINPUT, "%s: more than %d directories deep",
                                          full, MAX_DEPTH)
                                : walk(l, sub, depth + 1, err);
    } else if (S_ISREG(sb.st_mode) || (S_ISLNK(sb.st_mode) && stat(full, &sb) == 0 &&
                                       S_ISREG(sb.st_mode))) {
        st = add_file(l, sub, full, &sb, err);
    }
    /* Anything else (a FIFO, a device, a link to a directory or to
     * nothing) is not a file to publish. */
    free(sub);
    free(full);
    return st;
}

static fl_status walk(listing *l, const char *rel, int depth, fl_error *err)
{
    char *dir = rel ? fl_path_join(l->root, rel) : fl_strdup(l->root);
    if (!dir)
        return fl_fail(err, FL_EIO, "out of memory");
    DIR *d = opendir(dir);
    if (!d) {
        fl_status st = fl_fail(err, FL_EIO, "cannot read directory %s: %s", dir, strerror(errno));
        free(dir);
        return st;
    }
    fl_status st = FL_OK;
    struct dirent *de;
    errno = 0;
    while (st == FL_OK && (de = readdir(d))) {
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
            st = visit(l, rel, de->d_name, depth, err);
        errno = 0;
    }
    if (st == FL_OK && errno)
        st = fl_fail(err, FL_EIO, "cannot read directory %s: %s", dir, strerror(errno));
    closedir(d);
    free(dir);
    return st;
}

static int by_path(const void *a, const void *b)
{
    return strcmp(((const upload_file *)a)->path, ((const upload_file *)b)->path);
}

fl_status upload_list(const char *folder, upload_file **files, size_t *n, fl_error *err)
{
    *files = NULL;
    *n = 0;
    struct stat sb;
    if (stat(folder, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return fl_fail(err, FL_EUSAGE, "%s is not a directory", folder);
    listing l = {.root = folder};
    fl_status st = walk(&l, NULL, 0, err);
    if (st == FL_OK && !l.n)
        st = fl_fail(err, FL_EINPUT, "%s has no files to upload", folder);
    if (st) {
        upload_files_free(l.v, l.n);
        return st;
    }
    qsort(l.v, l.n, sizeof *l.v, by_path);
    *files = l.v;
    *n = l.n;
    return FL_OK;
}

/* ----------------------------------------------------------------------------
 * Reading */

/* Opens f read-only: it must still be the file that was listed. */
static fl_status open_listed(const upload_file *f, int *fd, fl_error *err)
{
    *fd = open(f->full, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (*fd < 0)
        return fl_fail(err, FL_EIO, "cannot open %s: %s", f->full, strerror(errno));
    struct stat sb;
    if (fstat(*fd, &sb) != 0 || !S_ISREG(sb.st_mode) || sb.st_size != f->size ||
        mtime_ns(&sb) != f->mtime_ns) {
        close(*fd);
        *fd = -1;
        return fl_fail(err, FL_EINPUT, "%s changed since the upload started; run it again",
                       f->full);
    }
    return FL_OK;
}

fl_status upload_sample(const upload_file *f, unsigned char *buf, size_t *len, fl_error *err)
{
    int fd;
    fl_status st = open_listed(f, &fd, err);
    if (st)
        return st;
    *len = f->size < 512 ? (size_t)f->size : 512;
    if (fl_pread_full(fd, buf, *len, 0) != 0)
        st = fl_fail(err, FL_EIO, "%s: read failed: %s", f->full,
                     errno ? strerror(errno) : "the file is shorter than it was");
    close(fd);
    return st;
}

fl_status upload_read_content(upload_file *f, fl_error *err)
{
    int fd;
    fl_status st = open_listed(f, &fd, err);
    if (st)
        return st;
    unsigned char *p = malloc(f->size ? (size_t)f->size : 1);
    fl_digest d = {0};
    char hex[41];
    if (!p || !fl_digest_init(&d, HASH_GITSHA1, f->size)) {
        st = fl_fail(err, FL_EIO, "out of memory");
    } else if (fl_pread_full(fd, p, (size_t)f->size, 0) != 0) {
        st = fl_fail(err, FL_EIO, "%s: read failed: %s", f->full,
                     errno ? strerror(errno) : "the file is shorter than it was");
    } else if (!fl_digest_update(&d, p, (size_t)f->size) || !fl_digest_hex(&d, hex, sizeof hex)) {
        st = fl_fail(err, FL_EIO, "%s: digest failed", f->full);
    } else if (f->gitsha1[0] && strcmp(f->gitsha1, hex)) {
        st = fl_fail(err, FL_EINPUT, "%s changed since it was hashed; run the upload again",
                     f->full);
    } else {
        memcpy(f->gitsha1, hex, sizeof hex);
        free(f->content);
        f->content = p;
        p = NULL;
    }
    fl_digest_free(&d);
    free(p);
    close(fd);
    return st;
}

/* ----------------------------------------------------------------------------
 * Hashing LFS files */

typedef struct {
    upload_file **files;
    http_client *http;
    int64_t *bytes_read;
} hash_job;

typedef struct {
    http_client *http;
    const upload_file *f;
    int slot;
    int64_t reported;
    double t0, last;
} hash_progress;

static void on_hashed(void *ctx, int64_t done)
{
    hash_progress *p = ctx;
    http_add_done(p->http, done - p->reported);
    p->reported = done;
    double t = fl_now();
    if (t - p->last < 0.1)
        return;
    p->last = t;
    hub_event ev = {.kind = HUB_EV_BYTES, .phase = HUB_PHASE_HASH, .slot = p->slot,
                    .name = p->f->path, .done = done, .total = p->f->size, .elapsed = t - p->t0};
    http_emit(p->http, &ev);
}

static fl_status hash_item(void *ctx, size_t item, int worker, fl_error *err)
{
    hash_job *j = ctx;
    upload_file *f = j->files[item];
    int fd;
    fl_status st = open_listed(f, &fd, err);
    if (st)
        return st;
    hash_progress p = {.http = j->http, .f = f, .slot = worker, .t0 = fl_now()};
    hub_event ev = {.kind = HUB_EV_START, .phase = HUB_PHASE_HASH, .slot = worker,
                    .name = f->path, .total = f->size};
    http_emit(j->http, &ev);
    st = fl_hash_fd(fd, f->full, f->size, f->sha256, NULL, &j->http->stop, on_hashed, &p, err);
    close(fd);
    pthread_mutex_lock(&j->http->mu);
    *j->bytes_read += p.reported;
    pthread_mutex_unlock(&j->http->mu);
    if (st == FL_OK) {
        ev.kind = HUB_EV_DONE;
        ev.done = f->size;
        ev.elapsed = fl_now() - p.t0;
        http_emit(j->http, &ev);
    } else {
        atomic_store(&j->http->stop, 1);
    }
    return st;
}

fl_status upload_hash_lfs(upload_file **files, size_t n, int jobs, http_client *http,
                          int64_t *bytes_read, fl_error *err)
{
    if (!n)
        return FL_OK;
    int64_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += files[i]->size;
    pthread_mutex_lock(&http->mu);
    http->all_done = 0;
    http->all_total = total;
    pthread_mutex_unlock(&http->mu);
    hash_job job = {files, http, bytes_read};
    return fl_pool_run_once(jobs, n, hash_item, &job, err);
}

/* ----------------------------------------------------------------------------
 * Digests made elsewhere */

void upload_digests_free(upload_digest *d, size_t n)
{
    for (size_t i = 0; d && i < n; i++)
        free((char *)d[i].path);
    free(d);
}
