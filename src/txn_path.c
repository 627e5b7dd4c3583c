/* txn_path.c — where the output may go (txn_path.h, txn.h): resolving -o,
 * the sibling names, what --force may replace, and removing a tree through
 * directory descriptors. */
#include "txn_path.h"
#include "flashify/util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CARD_MAX (1u << 20)
#define MAX_TREE_FILES 100000

void txn_fp_init(txn_fp *f)
{
    f->a = 0xcbf29ce484222325ull;   /* FNV-1a's offset basis */
    f->b = 0x84222325cbf29ce4ull;   /* another one */
    f->n = 0;
}

void txn_fp_add(txn_fp *f, const void *p, size_t n)
{
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++) {
        f->a = (f->a ^ c[i]) * 0x100000001b3ull;   /* FNV-1a's 64-bit prime */
        f->b = (f->b ^ c[i]) * 0x100000001b3ull;
        f->b ^= f->b >> 29;
    }
    f->n += n;
}

/* splitmix64's finalizer: every input bit moves every output bit. */
static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

void txn_fp_final(const txn_fp *f, unsigned char out[TXN_FP_BYTES])
{
    uint64_t a = mix64(f->a ^ f->n), b = mix64(f->b + mix64(f->n));
    for (int i = 0; i < 8; i++) {
        out[i] = (unsigned char)(a >> (8 * i));
        out[8 + i] = (unsigned char)(b >> (8 * i));
    }
}

void txn_hex(const unsigned char *b, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", b[i]);
}

/* A directory stream over fd, from its start (a dup shares the position). */
DIR *txn_dir_stream(int fd)
{
    int copy = dup(fd);
    DIR *d = copy >= 0 ? fdopendir(copy) : NULL;
    if (!d && copy >= 0)
        close(copy);
    if (d)
        rewinddir(d);
    return d;
}

/* ---------------------------------------------------------------------------
 * names and paths */

fl_status txn_resolve_out(const char *out_dir, txn_out_path *p, fl_error *err)
{
    char buf[PATH_MAX], dir[PATH_MAX];
    size_t n = strlen(out_dir);
    if (n == 0)
        return fl_fail(err, FL_EUSAGE, "-o needs a directory name, got ''");
    if (n >= sizeof buf)
        return fl_fail(err, FL_EUSAGE, "%s: path too long", out_dir);
    memcpy(buf, out_dir, n + 1);
    while (n > 1 && buf[n - 1] == '/')
        buf[--n] = '\0';
    char *slash = strrchr(buf, '/');
    const char *base = slash ? slash + 1 : buf;
    if (strcmp(buf, "/") == 0)
        return fl_fail(err, FL_EUSAGE, "/: the root directory cannot be an output directory");
    snprintf(dir, sizeof dir, "%.*s", slash ? (slash == buf ? 1 : (int)(slash - buf)) : 1,
             slash ? buf : ".");
    if (strcmp(base, ".") == 0 || strcmp(base, "..") == 0) {
        if (!realpath(buf, p->full))
            return fl_fail(err, FL_EUSAGE, "%s: cannot resolve: %s", out_dir, strerror(errno));
        if (strcmp(p->full, "/") == 0)
            return fl_fail(err, FL_EUSAGE, "%s: the root directory cannot be an output directory", out_dir);
        char *last = strrchr(p->full, '/');
        if (strlen(last + 1) > NAME_MAX)
            return fl_fail(err, FL_EUSAGE, "%s: the name is longer than %d bytes", out_dir, NAME_MAX);
        memcpy(p->name, last + 1, strlen(last + 1) + 1);
        snprintf(p->parent, sizeof p->parent, "%.*s", last == p->full ? 1 : (int)(last - p->full), p->full);
        return FL_OK;
    }
    struct stat st;
    if (stat(dir, &st) != 0)
        return fl_fail(err, FL_EUSAGE, "%s: the parent directory %s %s", out_dir, dir,
                       errno == ENOENT ? "does not exist" : strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return fl_fail(err, FL_EUSAGE, "%s: %s is not a directory", out_dir, dir);
    if (!realpath(dir, p->parent))
        return fl_fail(err, FL_EUSAGE, "%s: cannot resolve %s: %s", out_dir, dir, strerror(errno));
    if (strlen(base) > NAME_MAX)
        return fl_fail(err, FL_EUSAGE, "%s: the name is longer than %d bytes", out_dir, NAME_MAX);
    memcpy(p->name, base, strlen(base) + 1);
    int m = snprintf(p->full, sizeof p->full, "%s/%s", strcmp(p->parent, "/") ? p->parent : "", base);
    if (m < 0 || m >= (int)sizeof p->full)
        return fl_fail(err, FL_EUSAGE, "%s: path too long", out_dir);
    return FL_OK;
}

static int is_inside(const char *inner, const char *outer)
{
    size_t n = strlen(outer);
    return strncmp(inner, outer, n) == 0 && (inner[n] == '/' || (n == 1 && outer[0] == '/'));
}

/* "." + stem + suffix, the stem being NAME, or where "." NAME and the
 * longest suffix would pass the file system's name limit, a prefix of NAME
 * (cut between UTF-8 characters) + "~" + 16 hex digits of its hash, so
 * that a long NAME still has siblings and a later run finds them again. */
char *txn_sibling(int parent_fd, const char *name, const char *suffix)
{
    long max = fpathconf(parent_fd, _PC_NAME_MAX);
    if (max <= 0 || max > NAME_MAX)
        max = NAME_MAX;
    size_t n = strlen(name), room = (size_t)max - 1 - strlen(SUFFIX_PARTIAL);
    if (n <= room)
        return fl_asprintf(".%s%s", name, suffix);
    unsigned char d[TXN_FP_BYTES];
    char h[2 * 8 + 1];
    txn_fp f;
    txn_fp_init(&f);
    txn_fp_add(&f, name, n);
    txn_fp_final(&f, d);
    txn_hex(d, 8, h);
    size_t keep = room - 1 - 16;
    while (keep > 0 && ((unsigned char)name[keep] & 0xC0) == 0x80)
        keep--;
    return fl_asprintf(".%.*s~%s%s", (int)keep, name, h, suffix);
}

/* ---------------------------------------------------------------------------
 * what --force may replace */

/* 1 when the README.md in dfd starts like the model card flashify writes
 * (card.c): YAML front matter tagged flashnorm, then "Converted by
 * flashify". */
static int has_flashify_card(int dfd)
{
    int fd = openat(dfd, "README.md", O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    struct stat st;
    if (fd < 0)
        return 0;
    int ok = 0;
    char *text = NULL;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0 && st.st_size <= CARD_MAX &&
        (text = malloc((size_t)st.st_size + 1)) && fl_pread_full(fd, text, (size_t)st.st_size, 0) == 0) {
        text[st.st_size] = '\0';
        const char *end = strncmp(text, "---\n", 4) == 0 ? strstr(text + 3, "\n---\n") : NULL;
        const char *tag = strstr(text, "\ntags:\n- flashnorm\n");
        ok = end && tag && tag < end && strstr(end, "\nConverted by flashify ") != NULL;
    }
    free(text);
    close(fd);
    return ok;
}

static int is_regular_at(int dfd, const char *name)
{
    struct stat st;
    return fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode);
}

/* Walks the directory dfd (relative name `rel`): every entry must be a
 * regular file `ours` accepts or a directory of such files.  Fills why with
 * the first that is not.  *count bounds the walk. */
static int only_our_files(const txn_options *o, int dfd, const char *rel, int depth,
                          size_t *count, char *why, size_t cap)
{
    DIR *d = txn_dir_stream(dfd);
    if (!d) {
        snprintf(why, cap, "cannot list %s: %s", *rel ? rel : ".", strerror(errno));
        return 0;
    }
    int ok = 1;
    struct dirent *e;
    while (ok && (e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char *r = *rel ? fl_asprintf("%s/%s", rel, e->d_name) : fl_strdup(e->d_name);
        struct stat st;
        if (!r || ++*count > MAX_TREE_FILES || fstatat(dfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
            snprintf(why, cap, "%s: too many files or unreadable", r ? r : e->d_name);
            ok = 0;
        } else if (S_ISDIR(st.st_mode) && depth < MAX_TREE_DEPTH) {
            int sub = openat(dfd, e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            ok = sub >= 0 && only_our_files(o, sub, r, depth + 1, count, why, cap);
            if (sub < 0)
                snprintf(why, cap, "cannot open %s: %s", r, strerror(errno));
            if (sub >= 0)
                close(sub);
        } else if (!S_ISREG(st.st_mode) || !o->ours || !o->ours(o->ours_ctx, r)) {
            snprintf(why, cap, "it holds %s, which this conversion would not write", r);
            ok = 0;
        }
        free(r);
    }
    closedir(d);
    return ok;
}

/* The rules for what --force may replace, on the directory open as dfd
 * (path `full`, shown as `shown`). */
fl_status txn_check_replaceable(const txn_options *o, int dfd, const char *full, const char *shown,
                                fl_error *err)
{
    char real[PATH_MAX], cwd[PATH_MAX];
    if (getcwd(cwd, sizeof cwd) && realpath(cwd, real) && (strcmp(real, full) == 0 || is_inside(real, full)))
        return fl_fail(err, FL_EUSAGE, "%s: is the working directory or contains it; --force never replaces that",
                       shown);
    for (size_t i = 0; o->keep_dirs && o->keep_dirs[i]; i++)
        if (realpath(o->keep_dirs[i], real) && (strcmp(real, full) == 0 || is_inside(real, full)))
            return fl_fail(err, FL_EUSAGE, "%s: is %s or contains it; --force never replaces that", shown,
                           o->keep_dirs[i]);
    struct stat st;
    if (fstat(dfd, &st) != 0)
        return fl_fail(err, FL_EIO, "%s: %s", shown, strerror(errno));
    if (st.st_uid != geteuid())
        return fl_fail(err, FL_EUSAGE, "%s: belongs to another user (uid %u); --force replaces only your own "
                       "earlier flashify output", shown, (unsigned)st.st_uid);
    char why[PATH_MAX + 64] = "";
    size_t count = 0;
    DIR *d = txn_dir_stream(dfd);
    int empty = 1;
    for (struct dirent *e; d && (e = readdir(d)) != NULL;)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            empty = 0;
    if (d)
        closedir(d);
    if (empty)
        return FL_OK;
    if (!has_flashify_card(dfd))
        snprintf(why, sizeof why, "its README.md is not a flashify model card");
    else if (!is_regular_at(dfd, "config.json") ||
             !(is_regular_at(dfd, "model.safetensors") || is_regular_at(dfd, "model.safetensors.index.json")))
        snprintf(why, sizeof why, "it lacks config.json or the safetensors weights");
    else if (only_our_files(o, dfd, "", 0, &count, why, sizeof why))
        return FL_OK;
    return fl_fail(err, FL_EUSAGE, "%s: --force replaces only an empty directory or an earlier flashify "
                   "output, and %s", shown, why);
}

fl_status txn_check_location(const txn_options *o, txn_out_path *p, fl_error *err)
{
    char src[PATH_MAX], real[PATH_MAX];
    fl_status s = txn_resolve_out(o->out_dir, p, err);
    if (s != FL_OK)
        return s;
    if (!realpath(o->src_dir, src))
        return fl_fail(err, FL_EINPUT, "%s: cannot resolve: %s", o->src_dir, strerror(errno));
    if (strcmp(src, p->full) == 0)
        return fl_fail(err, FL_EUSAGE, "%s: the output directory is the source; choose another -o", o->out_dir);
    if (is_inside(p->full, src))
        return fl_fail(err, FL_EUSAGE, "%s: the output directory is inside the source %s; choose another -o",
                       o->out_dir, o->src_dir);
    if (is_inside(src, p->full))
        return fl_fail(err, FL_EUSAGE, "%s: the output directory contains the source %s; choose another -o",
                       o->out_dir, o->src_dir);
    for (size_t i = 0; o->managed_dirs && o->managed_dirs[i]; i++)
        if (realpath(o->managed_dirs[i], real) && (strcmp(real, p->full) == 0 || is_inside(p->full, real)))
            return fl_fail(err, FL_EUSAGE, "%s: is inside the Hugging Face cache %s, which hub tools manage; "
                           "choose another -o", o->out_dir, o->managed_dirs[i]);
    return FL_OK;
}

fl_status txn_check_existing(const txn_options *o, const txn_out_path *p, fl_error *err)
{
    struct stat st;
    if (lstat(p->full, &st) != 0)
        return errno == ENOENT ? FL_OK : fl_fail(err, FL_EUSAGE, "%s: %s", o->out_dir, strerror(errno));
    if (!o->force)
        return fl_fail(err, FL_EUSAGE, "%s: already exists (use --force to replace an earlier flashify output)",
                       o->out_dir);
    if (S_ISLNK(st.st_mode) || !S_ISDIR(st.st_mode))
        return fl_fail(err, FL_EUSAGE, "%s: is %s; --force replaces only a directory (an earlier flashify "
                       "output or an empty one)", o->out_dir,
                       S_ISLNK(st.st_mode) ? "a symbolic link" : "not a directory");
    int dfd = open(p->full, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dfd < 0)
        return fl_fail(err, FL_EUSAGE, "%s: cannot open: %s", o->out_dir, strerror(errno));
    fl_status s = txn_check_replaceable(o, dfd, p->full, o->out_dir, err);
    close(dfd);
    return s;
}

fl_status txn_check_output(const txn_options *o, fl_error *err)
{
    txn_out_path p;
    fl_status s = txn_check_location(o, &p, err);
    if (s == FL_OK)
        s = txn_check_existing(o, &p, err);
    if (s != FL_OK || !o->note)
        return s;
    /* Read only: the repair is the next real run's (txn_begin). */
    int pfd = open(p.parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    char *journal = pfd >= 0 ? txn_sibling(pfd, p.name, SUFFIX_JOURNAL) : NULL;
    struct stat st;
    if (journal && fstatat(pfd, journal, &st, AT_SYMLINK_NOFOLLOW) == 0) {
        char msg[PATH_MAX + 200];
        snprintf(msg, sizeof msg, "an earlier run on this output was interrupted (%s/%s); the next conversion "
                 "finishes or undoes what it left", p.parent, journal);
        o->note(o->note_ctx, msg);
    }
    free(journal);
    if (pfd >= 0)
        close(pfd);
    return FL_OK;
}

/* ---------------------------------------------------------------------------
 * removing a tree through descriptors (never following a symbolic link) */


/* Removes every entry of the directory fd, but `keep`.  Returns 0 or -1. */
int txn_clear_at(int fd, int depth, const char *keep)
{
    int rc = 0;
    for (int pass = 0; pass < 4; pass++) {
        DIR *d = txn_dir_stream(fd);
        if (!d)
            return -1;
        int removed = 0;
        rc = 0;
        for (struct dirent *e; (e = readdir(d)) != NULL;) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..") || (keep && !strcmp(e->d_name, keep)))
                continue;
            if (txn_remove_at(fd, e->d_name, depth) == 0)
                removed++;
            else
                rc = -1;
        }
        closedir(d);
        if (!removed) /* nothing was left, or nothing more can go */
            break;
    }
    return rc;
}

int txn_remove_at(int dfd, const char *name, int depth)
{
    if (unlinkat(dfd, name, 0) == 0 || errno == ENOENT)
        return 0;
    if (errno != EISDIR && errno != EPERM)
        return -1;
    if (depth > MAX_TREE_DEPTH) {
        errno = ELOOP;
        return -1;
    }
    int fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = txn_clear_at(fd, depth + 1, NULL);
    close(fd);
    if (rc == 0 && unlinkat(dfd, name, AT_REMOVEDIR) != 0 && errno != ENOENT)
        rc = -1;
    return rc;
}

