/* cache.c — the Hugging Face hub cache layout (see cache.h and
 * docs/hub-protocol.md §4; the facts come from huggingface_hub
 * constants.py, file_download.py and utils/_fixes.py). */
#include "flashify/cache.h"
#include "flashify/util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ----------------------------------------------------------------------------
 * Where the cache is */

static const hub_env no_env;

static const char *nonempty(const char *v)
{
    return v && *v ? v : NULL;
}

/* Python expands "~" in these variables (os.path.expanduser). */
static char *expand_home(const hub_env *e, const char *p)
{
    if (p[0] == '~' && (p[1] == '/' || p[1] == 0)) {
        const char *home = nonempty(e->home);
        if (home)
            return fl_asprintf("%s%s", home, p + 1);
    }
    return fl_strdup(p);
}

char *cache_hf_home(const hub_env *e)
{
    if (!e)
        e = &no_env;
    const char *h = nonempty(e->hf_home);
    if (h)
        return expand_home(e, h);
    const char *xdg = nonempty(e->xdg_cache_home);
    if (xdg) {
        char *x = expand_home(e, xdg);
        char *r = x ? fl_asprintf("%s/%s", x, "huggingface") : NULL;
        free(x);
        return r;
    }
    const char *home = nonempty(e->home);
    return fl_asprintf("%s/%s", home ? home : ".", ".cache/huggingface");
}

char *cache_hub_dir(const hub_env *e)
{
    if (!e)
        e = &no_env;
    const char *h = nonempty(e->hf_hub_cache);
    if (!h)
        h = nonempty(e->huggingface_hub_cache);
    if (h)
        return expand_home(e, h);
    char *home = cache_hf_home(e);
    char *r = home ? fl_asprintf("%s/%s", home, "hub") : NULL;
    free(home);
    return r;
}

char *cache_repo_folder(const char *repo_id)
{
    /* Each "/" becomes "--": at most one "/" in a valid id, but be general. */
    size_t n = strlen(repo_id), slashes = 0;
    for (size_t i = 0; i < n; i++)
        slashes += repo_id[i] == '/';
    char *s = malloc(8 + n + slashes + 1);
    if (!s)
        return NULL;
    char *w = s + sprintf(s, "models--");
    for (size_t i = 0; i < n; i++) {
        if (repo_id[i] == '/') {
            *w++ = '-';
            *w++ = '-';
        } else {
            *w++ = repo_id[i];
        }
    }
    *w = 0;
    return s;
}

/* constants.py _is_true: "1", "ON", "YES", "TRUE", case-insensitive. */
static int is_true(const char *v)
{
    if (!v)
        return 0;
    return !strcasecmp(v, "1") || !strcasecmp(v, "on") ||
           !strcasecmp(v, "yes") || !strcasecmp(v, "true");
}

int cache_offline_env(const hub_env *e)
{
    return e && (is_true(e->hf_hub_offline) || is_true(e->transformers_offline));
}

int cache_symlinks_disabled(const hub_env *e)
{
    return e && is_true(e->hf_hub_disable_symlinks);
}

int cache_is_commit(const char *s)
{
    if (!s || strlen(s) != 40)
        return 0;
    for (int i = 0; i < 40; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    return 1;
}

int cache_safe_relpath(const char *p)
{
    if (!p || !*p || p[0] == '/')
        return 0;
    const char *c = p;
    while (*c) {
        const char *e = c;
        while (*e && *e != '/') {
            unsigned char ch = (unsigned char)*e;
            if (ch < 0x20 || ch == 0x7f || ch == '\\')
                return 0;
            e++;
        }
        size_t len = (size_t)(e - c);
        if (len == 0 || (len == 1 && c[0] == '.') ||
            (len == 2 && c[0] == '.' && c[1] == '.'))
            return 0;
        c = *e ? e + 1 : e;
        if (*e && !*c)
            return 0; /* trailing "/" */
    }
    return 1;
}

/* ----------------------------------------------------------------------------
 * Directories, refs, tag */

int cache_read_ref(const char *repo_dir, const char *rev, char commit[41])
{
    if (!cache_safe_relpath(rev))
        return 0;
    char *path = fl_asprintf("%s/refs/%s", repo_dir, rev);
    if (!path)
        return 0;
    char *buf = NULL;
    size_t n = 0;
    fl_error ignored;
    fl_status rs = fl_read_file(path, 63, 0, &buf, &n, &ignored);
    free(path);
    if (rs != FL_OK)
        return 0;
    /* Python writes no newline but tolerate one written by other tools. */
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' '))
        buf[--n] = 0;
    int ok = cache_is_commit(buf);
    if (ok)
        memcpy(commit, buf, 41);
    free(buf);
    return ok;
}

fl_status cache_write_ref(const char *repo_dir, const char *rev,
                          const char *commit, fl_error *err)
{
    char cur[41];
    if (cache_read_ref(repo_dir, rev, cur) && !strcmp(cur, commit))
        return FL_OK;
    if (!cache_safe_relpath(rev))
        return fl_fail(err, FL_EINPUT, "invalid revision name '%s'", rev);
    char *path = fl_asprintf("%s/refs/%s", repo_dir, rev);
    if (!path)
        return fl_fail(err, FL_EIO, "out of memory");
    char *slash = strrchr(path, '/');
    *slash = 0;
    fl_status st = fl_mkdir_p(path, 0777, err);
    *slash = '/';
    if (st) {
        free(path);
        return st;
    }
    /* "<name>.<8hex>.tmp" then rename, as file_download.py does. */
    size_t tn = strlen(path) + 16;
    char *tmp = malloc(tn);
    if (!tmp) {
        free(path);
        return fl_fail(err, FL_EIO, "out of memory");
    }
    snprintf(tmp, tn, "%s.%08x.tmp", path,
             (unsigned)((unsigned)getpid() * 2654435761u ^ (unsigned)time(NULL)));
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0666);
    int ok = fd >= 0 && write(fd, commit, 40) == 40;
    if (fd >= 0 && close(fd) != 0)
        ok = 0;
    if (ok && rename(tmp, path) != 0)
        ok = 0;
    if (!ok) {
        st = fl_fail(err, FL_EIO, "cannot write %s: %s", path, strerror(errno));
        unlink(tmp);
    }
    free(tmp);
    free(path);
    return st;
}

void cache_write_tag(const char *hub_dir)
{
    char *path = fl_asprintf("%s/%s", hub_dir, "CACHEDIR.TAG");
    if (!path)
        return;
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0666);
    if (fd >= 0) {
        /* The text _local_folder.py writes (https://bford.info/cachedir/). */
        static const char tag[] =
            "Signature: 8a477f597d28d172789f06886806bc55\n"
            "# This file is a cache directory tag created by huggingface_hub.\n"
            "# For information about cache directory tags, see:\n"
            "#\thttps://bford.info/cachedir/\n";
        ssize_t w = write(fd, tag, sizeof tag - 1);
        (void)w;
        close(fd);
    }
    free(path);
}

/* ----------------------------------------------------------------------------
 * Snapshot pointers */

int cache_pointer_ok(const char *repo_dir, const char *commit,
                     const char *path, int64_t want_size)
{
    if (!cache_safe_relpath(path) || !cache_is_commit(commit))
        return 0;
    char *snap = fl_asprintf("%s/snapshots/%s", repo_dir, commit);
    char *full = snap ? fl_asprintf("%s/%s", snap, path) : NULL;
    free(snap);
    if (!full)
        return 0;
    struct stat sb;
    int ok = stat(full, &sb) == 0 && S_ISREG(sb.st_mode) &&
             (want_size < 0 || (int64_t)sb.st_size == want_size);
    free(full);
    return ok;
}

fl_status cache_link(const char *repo_dir, const char *commit,
                     const char *path, const char *etag, fl_error *err)
{
    if (!cache_safe_relpath(path) || !cache_safe_relpath(etag) || strchr(etag, '/'))
        return fl_fail(err, FL_EINPUT, "unsafe file name '%s' or etag '%s'", path, etag);
    char *snap = fl_asprintf("%s/snapshots/%s", repo_dir, commit);
    char *dst = snap ? fl_asprintf("%s/%s", snap, path) : NULL;
    /* "../../blobs/<etag>" from snapshots/<commit>/, one "../" per level. */
    size_t depth = 0;
    for (const char *c = path; *c; c++)
        depth += *c == '/';
    size_t tn = 3 * (depth + 2) + 6 + strlen(etag) + 1;
    char *target = malloc(tn);
    fl_status st = FL_OK;
    if (!dst || !target) {
        st = fl_fail(err, FL_EIO, "out of memory");
        goto done;
    }
    char *w = target;
    for (size_t i = 0; i < depth + 2; i++)
        w += sprintf(w, "../");
    sprintf(w, "blobs/%s", etag);

    char *slash = strrchr(dst, '/');
    *slash = 0;
    st = fl_mkdir_p(dst, 0777, err);
    *slash = '/';
    if (st)
        goto done;
    if (unlink(dst) != 0 && errno != ENOENT) {
        st = fl_fail(err, FL_EIO, "cannot replace %s: %s", dst, strerror(errno));
        goto done;
    }
    if (symlink(target, dst) != 0)
        st = fl_fail(err, FL_EIO, "cannot create symlink %s: %s", dst, strerror(errno));
done:
    free(snap);
    free(dst);
    free(target);
    return st;
}

/* Copies src to a temporary name next to dst, then renames it onto dst:
 * a reader (or a crash) never leaves half a file at dst. */
static fl_status copy_into_place(const char *src, const char *dst, fl_error *err)
{
    char *tmp = malloc(strlen(dst) + 16);
    char *buf = malloc(1 << 20);
    int in = open(src, O_RDONLY | O_CLOEXEC), out = -1, created = 0;
    fl_status st = FL_OK;
    if (!tmp || !buf) {
        st = fl_fail(err, FL_EIO, "out of memory");
        goto done;
    }
    sprintf(tmp, "%s.%08x.tmp", dst,
            (unsigned)((unsigned)getpid() * 2654435761u ^ (unsigned)time(NULL)));
    if (in < 0) {
        st = fl_fail(err, FL_EIO, "cannot open %s: %s", src, strerror(errno));
        goto done;
    }
    out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (out < 0) {
        st = fl_fail(err, FL_EIO, "cannot create %s: %s", tmp, strerror(errno));
        goto done;
    }
    created = 1;
    struct stat sb;
    if (fstat(in, &sb) != 0) {
        st = fl_fail(err, FL_EIO, "cannot stat %s: %s", src, strerror(errno));
        goto done;
    }
    if ((st = fl_copy_range(in, 0, out, 0, (uint64_t)sb.st_size, src, tmp, buf, 1 << 20, err)))
        goto done;
    if (close(out) != 0) {
        out = -1;
        st = fl_fail(err, FL_EIO, "cannot write %s: %s", tmp, strerror(errno));
        goto done;
    }
    out = -1;
    if (rename(tmp, dst) != 0)
        st = fl_fail(err, FL_EIO, "cannot move %s into place: %s", tmp, strerror(errno));
done:
    if (out >= 0)
        close(out);
    if (in >= 0)
        close(in);
    if (st && created)
        unlink(tmp);
    free(tmp);
    free(buf);
    return st;
}

fl_status cache_place_file(const char *repo_dir, const char *commit, const char *path,
                           const char *etag, int new_blob, fl_error *err)
{
    if (!cache_safe_relpath(path) || !cache_safe_relpath(etag) || strchr(etag, '/'))
        return fl_fail(err, FL_EINPUT, "unsafe file name '%s' or etag '%s'", path, etag);
    char *snap = fl_asprintf("%s/snapshots/%s", repo_dir, commit);
    char *dst = snap ? fl_asprintf("%s/%s", snap, path) : NULL;
    char *blob = fl_asprintf("%s/blobs/%s", repo_dir, etag);
    fl_status st = FL_OK;
    if (!dst || !blob) {
        st = fl_fail(err, FL_EIO, "out of memory");
        goto done;
    }
    char *slash = strrchr(dst, '/');
    *slash = 0;
    st = fl_mkdir_p(dst, 0777, err);
    *slash = '/';
    if (st)
        goto done;
    /* rename() replaces a file or a symlink left at dst; a directory there
     * is an error, as it is for Python. */
    if (new_blob) {
        if (rename(blob, dst) != 0)
            st = fl_fail(err, FL_EIO, "cannot move %s to %s: %s", blob, dst, strerror(errno));
    } else {
        st = copy_into_place(blob, dst, err);
    }
done:
    free(snap);
    free(dst);
    free(blob);
    return st;
}

/* ----------------------------------------------------------------------------
 * Locks (py-filelock UnixFileLock semantics) */

fl_status cache_lock_acquire(const char *hub_dir, const char *folder,
                             const char *etag, cache_lock *lk, fl_error *err)
{
    lk->fd = -1;
    lk->path = NULL;
    char *dir = fl_asprintf("%s/.locks/%s", hub_dir, folder);
    if (!dir)
        return fl_fail(err, FL_EIO, "out of memory");
    fl_status st = fl_mkdir_p(dir, 0777, err);
    char *path = st ? NULL : fl_asprintf("%s/%s.lock", dir, etag);
    free(dir);
    if (st)
        return st;
    if (!path)
        return fl_fail(err, FL_EIO, "out of memory");
    for (;;) {
        if (fl_interrupted) {
            st = fl_fail(err, FL_EINTR, "interrupted while waiting for %s", path);
            free(path);
            return st;
        }
        int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0664);
        if (fd < 0) {
            st = fl_fail(err, FL_EIO, "cannot open lock %s: %s", path, strerror(errno));
            free(path);
            return st;
        }
        int r = flock(fd, LOCK_EX | LOCK_NB);
        if (r != 0 && errno != EWOULDBLOCK && errno != EINTR) {
            /* No flock here (ENOSYS, some network file systems): the lock is
             * best effort (py-filelock falls back to a soft lock too). */
            lk->fd = fd;
            lk->path = path;
            return FL_OK;
        }
        if (r == 0) {
            /* The holder may have unlinked the file on release after we
             * opened it: that lock protects nothing, so start over. */
            struct stat sb;
            if (fstat(fd, &sb) == 0 && sb.st_nlink > 0) {
                lk->fd = fd;
                lk->path = path;
                return FL_OK;
            }
        }
        close(fd);
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

void cache_lock_release(cache_lock *lk)
{
    if (lk->fd >= 0) {
        unlink(lk->path);
        close(lk->fd);
    }
    free(lk->path);
    lk->fd = -1;
    lk->path = NULL;
}
