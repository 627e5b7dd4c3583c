/* txn.c — the output transaction (see txn.h and docs/output.md).
 *
 * Sections: the journal (lock, records, parsing), repairing what a killed
 * run left, the temporary directory and its files (with the resume
 * decision), publishing, the end.  Where the output may go and what
 * --force may replace is txn_path.c. */
#include "flashify/txn.h"
#include "txn_path.h"
#include "flashify/hash.h"
#include "flashify/util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define JOURNAL_MAGIC "flashify-journal 2\n"
#define JOURNAL_MAX (64u << 20)  /* a done line per shard: ~200 bytes each */

typedef struct {
    char *name;
    uint64_t size;
    char sha256[65];         /* lowercase hex */
} done_rec;

/* What the journal says (the last record of each kind wins). */
typedef struct {
    int has_fp, has_partial, has_publish;
    unsigned char fp[TXN_FP_BYTES];
    uint64_t p_dev, p_ino;                     /* the temporary directory */
    char how[16];                              /* publish: new, exchange, aside */
    uint64_t new_dev, new_ino, old_dev, old_ino;
    done_rec *done;
    size_t n_done;
} journal;

struct txn {
    txn_options o;
    char parent[PATH_MAX];   /* resolved parent of the output */
    char name[NAME_MAX + 1]; /* the output's name in it */
    char *out_path, *tmp_path;
    char *tmp_name, *journal_name, *old_name;
    int parent_fd, tmp_fd, journal_fd;
    struct stat parent_st, tmp_st;
    journal j;               /* the records of the run being resumed */
    char **finished;         /* shards finished by this run, not yet in the journal */
    size_t n_finished;
    int began, keep, published, drop_journal;
};

static void note(const txn *t, const char *fmt, ...) FL_PRINTF(2, 3);
static void note(const txn *t, const char *fmt, ...)
{
    if (!t->o.note)
        return;
    char msg[1536];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    t->o.note(t->o.note_ctx, msg);
}

static int same_file(const struct stat *st, uint64_t dev, uint64_t ino)
{
    return (uint64_t)st->st_dev == dev && (uint64_t)st->st_ino == ino;
}

/* ---------------------------------------------------------------------------
 * the journal
 *
 *   flashify-journal 2
 *   fingerprint <sha256 of everything that determines the output bytes>
 *   partial <dev> <ino>                      the temporary directory
 *   done <size> <sha256> <file>              a finished shard (--resume)
 *   publish <new|exchange|aside> <dev> <ino> <old dev> <old ino>
 *
 * Appended (and fdatasync'd) one record at a time; a torn last line (no
 * newline) is ignored.  The file is also the lock. */

static void journal_free(journal *j)
{
    for (size_t i = 0; i < j->n_done; i++)
        free(j->done[i].name);
    free(j->done);
    memset(j, 0, sizeof *j);
}

static int hex_digit(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Exactly 2n lowercase hex digits (as txn_hex writes them), then the end
 * of the field. */
static int parse_hex(const char *s, unsigned char *out, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int hi = hex_digit(s[2 * i]), lo = hi < 0 ? -1 : hex_digit(s[2 * i + 1]);
        if (lo < 0)
            return -1;
        out[i] = (unsigned char)(hi << 4 | lo);
    }
    return s[2 * n] == '\0' || s[2 * n] == ' ' ? 0 : -1;
}

/* One record; -1 when it is not one this version writes. */
static int journal_line(journal *j, char *line)
{
    unsigned long long a, b, c, d, size;
    char how[16], sha[65];
    int used = 0;
    if (strncmp(line, "fingerprint ", 12) == 0) {
        j->has_fp = parse_hex(line + 12, j->fp, TXN_FP_BYTES) == 0;
        return j->has_fp ? 0 : -1;
    }
    if (sscanf(line, "partial %llu %llu%n", &a, &b, &used) == 2 && !line[used]) {
        j->has_partial = 1;
        j->p_dev = a;
        j->p_ino = b;
        return 0;
    }
    if (sscanf(line, "publish %15s %llu %llu %llu %llu%n", how, &a, &b, &c, &d, &used) == 5 && !line[used]) {
        j->has_publish = 1;
        snprintf(j->how, sizeof j->how, "%s", how);
        j->new_dev = a, j->new_ino = b, j->old_dev = c, j->old_ino = d;
        return 0;
    }
    if (sscanf(line, "done %llu %64s %n", &size, sha, &used) == 2 && used > 0 && line[used]) {
        unsigned char bin[32];
        done_rec *grown = parse_hex(sha, bin, sizeof bin) == 0 ? realloc(j->done, (j->n_done + 1) * sizeof *grown)
                                                             : NULL;
        if (!grown)
            return -1;
        j->done = grown;
        done_rec *r = &j->done[j->n_done];
        if (!(r->name = fl_strdup(line + used)))
            return -1;
        memcpy(r->sha256, sha, sizeof r->sha256);
        r->size = size;
        j->n_done++;
        return 0;
    }
    return -1;
}

static fl_status journal_read(txn *t, fl_error *err)
{
    struct stat st;
    if (fstat(t->journal_fd, &st) != 0 || st.st_size > JOURNAL_MAX)
        return fl_fail(err, FL_EUSAGE, "%s/%s: unreadable or too large", t->parent, t->journal_name);
    if (st.st_size == 0)
        return FL_OK;  /* created just now, or by a run killed at once */
    char *text = malloc((size_t)st.st_size + 1);
    if (!text || fl_pread_full(t->journal_fd, text, (size_t)st.st_size, 0) != 0) {
        free(text);
        return fl_fail(err, FL_EIO, "%s/%s: cannot read", t->parent, t->journal_name);
    }
    text[st.st_size] = '\0';
    fl_status s = FL_OK;
    size_t magic = strlen(JOURNAL_MAGIC);
    if (strncmp(text, JOURNAL_MAGIC, magic) != 0)
        s = fl_fail(err, FL_EUSAGE, "%s/%s: not a journal of this flashify version; remove it and %s to start over",
                    t->parent, t->journal_name, t->tmp_name);
    for (char *line = text + magic, *nl; s == FL_OK && (nl = strchr(line, '\n')) != NULL; line = nl + 1) {
        *nl = '\0';
        if (journal_line(&t->j, line) != 0)
            s = fl_fail(err, FL_EUSAGE, "%s/%s: unreadable record '%.80s'; remove it and %s to start over",
                        t->parent, t->journal_name, line, t->tmp_name);
    }
    free(text);
    return s;
}

static fl_status journal_append(txn *t, fl_error *err, const char *fmt, ...) FL_PRINTF(3, 4);
static fl_status journal_append(txn *t, fl_error *err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *line = fl_vasprintf(fmt, ap);
    va_end(ap);
    off_t end = line ? lseek(t->journal_fd, 0, SEEK_END) : -1;
    /* Synced unless --no-fsync: then a crash of the machine may lose a
     * record, and what it described is refused later, never trusted. */
    int ok = end >= 0 && fl_pwrite_full(t->journal_fd, line, strlen(line), (uint64_t)end) == 0 &&
             (!t->o.fsync || fdatasync(t->journal_fd) == 0);
    int e = errno;
    free(line);
    return ok ? FL_OK : fl_fail(err, FL_EIO, "%s/%s: write failed: %s", t->parent, t->journal_name, strerror(e));
}

/* Starts the journal over for fingerprint fp (the temporary directory, if
 * any, was emptied first, so a crash in between leaves nothing to trust). */
static fl_status journal_restart(txn *t, const unsigned char fp[TXN_FP_BYTES], fl_error *err)
{
    char h[2 * TXN_FP_BYTES + 1];
    txn_hex(fp, TXN_FP_BYTES, h);
    journal_free(&t->j);
    if (ftruncate(t->journal_fd, 0) != 0)
        return fl_fail(err, FL_EIO, "%s/%s: cannot truncate: %s", t->parent, t->journal_name, strerror(errno));
    return journal_append(t, err, JOURNAL_MAGIC "fingerprint %s\n", h);
}

/* Opens (or creates, 0600) and locks the journal.  Only a lock on the file
 * that is at the name after flock counts: a run that just finished may
 * have removed it, and another may have made a new one. */
static fl_status journal_lock(txn *t, fl_error *err)
{
    const char *jn = t->journal_name;
    for (int attempt = 0; attempt < 16; attempt++) {
        int fd = openat(t->parent_fd, jn, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0 && errno == ENOENT) {
            fd = openat(t->parent_fd, jn, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
            if (fd < 0 && errno == EEXIST)
                continue;
        }
        if (fd < 0)
            return fl_fail(err, errno == ELOOP ? FL_EUSAGE : FL_EIO, "%s/%s: cannot open the journal: %s",
                           t->parent, jn, errno == ELOOP ? "it is a symbolic link" : strerror(errno));
        struct stat st, now;
        if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 077)) {
            close(fd);
            return fl_fail(err, FL_EUSAGE, "%s/%s: not this user's flashify journal (owner uid %u, mode %04o, "
                           "expected a private file of uid %u); remove it or choose another -o", t->parent, jn,
                           (unsigned)st.st_uid, (unsigned)(st.st_mode & 07777), (unsigned)geteuid());
        }
        if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
            close(fd);
            return fl_fail(err, FL_EUSAGE, "%s: another flashify is writing this output (%s/%s is locked)",
                           t->o.out_dir, t->parent, jn);
        }
        if (fstatat(t->parent_fd, jn, &now, AT_SYMLINK_NOFOLLOW) == 0 &&
            same_file(&now, (uint64_t)st.st_dev, (uint64_t)st.st_ino)) {
            t->journal_fd = fd;
            return FL_OK;
        }
        close(fd);
    }
    return fl_fail(err, FL_EIO, "%s/%s: cannot take the lock: the file keeps changing", t->parent, jn);
}

/* ---------------------------------------------------------------------------
 * repairing what a killed run left */

/* The last run recorded a publish step and was stopped: find out how far
 * it got from the identities of what is at each name, and finish or undo
 * it.  Afterwards the journal describes only the temporary directory. */
static fl_status repair_publish(txn *t, fl_error *err)
{
    journal *j = &t->j;
    struct stat out, tmp, old;
    int has_out = fstatat(t->parent_fd, t->name, &out, AT_SYMLINK_NOFOLLOW) == 0;
    int has_tmp = fstatat(t->parent_fd, t->tmp_name, &tmp, AT_SYMLINK_NOFOLLOW) == 0;
    int has_old = fstatat(t->parent_fd, t->old_name, &old, AT_SYMLINK_NOFOLLOW) == 0;
    int published = has_out && same_file(&out, j->new_dev, j->new_ino);
    const char *where = NULL;
    if (published && !strcmp(j->how, "exchange") && has_tmp && same_file(&tmp, j->old_dev, j->old_ino))
        where = t->tmp_name;
    else if (!strcmp(j->how, "aside") && has_old && same_file(&old, j->old_dev, j->old_ino)) {
        if (!published && has_out)
            return fl_fail(err, FL_EUSAGE, "%s: a run was stopped while replacing it: the previous output is in "
                           "%s/%s, and something else is at %s now; move one of them yourself", t->o.out_dir,
                           t->parent, t->old_name, t->out_path);
        if (!published) {
            if (renameat(t->parent_fd, t->old_name, t->parent_fd, t->name) != 0)
                return fl_fail(err, FL_EIO, "%s: cannot restore the previous output from %s/%s: %s",
                               t->o.out_dir, t->parent, t->old_name, strerror(errno));
            note(t, "%s: restored the previous output from %s/%s (a run was stopped while replacing it)",
                 t->o.out_dir, t->parent, t->old_name);
            j->has_publish = 0;
            return FL_OK;
        }
        where = t->old_name;
    }
    if (where) {
        /* --force asked for it to be replaced: finish removing it. */
        if (txn_remove_at(t->parent_fd, where, 0) != 0)
            return fl_fail(err, FL_EIO, "%s/%s: cannot remove the previous output of %s: %s", t->parent, where,
                           t->o.out_dir, strerror(errno));
        note(t, "%s: finished replacing it: removed the previous output, left in %s/%s by a run stopped during "
             "the swap", t->o.out_dir, t->parent, where);
    }
    if (published) /* the temporary directory is the output now: nothing left to describe */
        journal_free(j);
    j->has_publish = 0;
    return FL_OK;
}

/* ---------------------------------------------------------------------------
 * the temporary directory */

/* Reuses the temporary directory when the journal records it and it is
 * this user's private directory; an unrecorded empty one (a run killed
 * between mkdir and its record) is removed; anything else is refused.
 * Sets *have. */
static fl_status adopt_existing(txn *t, int *have, fl_error *err)
{
    struct stat *st = &t->tmp_st;
    *have = fstatat(t->parent_fd, t->tmp_name, st, AT_SYMLINK_NOFOLLOW) == 0;
    if (!*have)
        return FL_OK;
    int recorded = t->j.has_partial && same_file(st, t->j.p_dev, t->j.p_ino);
    if (!recorded && S_ISDIR(st->st_mode) && st->st_uid == geteuid() &&
        unlinkat(t->parent_fd, t->tmp_name, AT_REMOVEDIR) == 0) {
        *have = 0;
        return FL_OK;
    }
    if (!recorded)
        return fl_fail(err, FL_EUSAGE, "%s: exists, and no journal of this user's flashify records it as its "
                       "temporary directory; remove it or choose another -o", t->tmp_path);
    /* Its mode is 0700 while it is written; a run killed just before the
     * rename may have given it the output's mode already.  Writable by
     * anyone else, it may hold anything. */
    if (!S_ISDIR(st->st_mode) || st->st_uid != geteuid() || (st->st_mode & 022))
        return fl_fail(err, FL_EUSAGE, "%s: is not a directory of uid %u that only it can write (owner %u, mode "
                       "%04o); flashify reuses only its own; remove it", t->tmp_path, (unsigned)geteuid(),
                       (unsigned)st->st_uid, (unsigned)(st->st_mode & 07777));
    t->tmp_fd = openat(t->parent_fd, t->tmp_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    struct stat now;
    if (t->tmp_fd < 0 || fstat(t->tmp_fd, &now) != 0 || now.st_ino != st->st_ino || fchmod(t->tmp_fd, 0700) != 0)
        return fl_fail(err, FL_EIO, "%s: cannot open: %s", t->tmp_path, strerror(errno));
    return FL_OK;
}

static fl_status prepare_tmp(txn *t, const unsigned char fp[TXN_FP_BYTES], fl_error *err)
{
    int have;
    fl_status s = adopt_existing(t, &have, err);
    if (s != FL_OK)
        return s;
    int resuming = have && t->o.resume && t->j.has_fp && memcmp(t->j.fp, fp, TXN_FP_BYTES) == 0;
    if (have && !resuming) {
        if (t->o.resume)
            note(t, "--resume: the partial output in %s was made from other input or options; starting over",
                 t->tmp_path);
        else
            note(t, "removing a partial output left by an interrupted run (%s); use --resume to continue one",
                 t->tmp_path);
        if (txn_clear_at(t->tmp_fd, 0, NULL) != 0)
            return fl_fail(err, FL_EIO, "%s: cannot empty: %s", t->tmp_path, strerror(errno));
    }
    if (resuming)
        return FL_OK;
    if ((s = journal_restart(t, fp, err)) != FL_OK)
        return s;
    if (!have) {
        if (mkdirat(t->parent_fd, t->tmp_name, 0700) != 0)
            return fl_fail(err, FL_EIO, "%s: cannot create the temporary directory: %s", t->tmp_path,
                           strerror(errno));
        t->tmp_fd = openat(t->parent_fd, t->tmp_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (t->tmp_fd < 0 || fstat(t->tmp_fd, &t->tmp_st) != 0)
            return fl_fail(err, FL_EIO, "%s: cannot open: %s", t->tmp_path, strerror(errno));
    }
    return journal_append(t, err, "partial %llu %llu\n", (unsigned long long)t->tmp_st.st_dev,
                          (unsigned long long)t->tmp_st.st_ino);
}

static fl_status txn_names(txn *t, const txn_out_path *p, fl_error *err)
{
    snprintf(t->parent, sizeof t->parent, "%s", p->parent);
    snprintf(t->name, sizeof t->name, "%s", p->name);
    t->parent_fd = open(t->parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (t->parent_fd < 0 || fstat(t->parent_fd, &t->parent_st) != 0)
        return fl_fail(err, FL_EUSAGE, "%s: cannot open: %s", t->parent, strerror(errno));
    t->tmp_name = txn_sibling(t->parent_fd, t->name, SUFFIX_PARTIAL);
    t->journal_name = txn_sibling(t->parent_fd, t->name, SUFFIX_JOURNAL);
    t->old_name = txn_sibling(t->parent_fd, t->name, SUFFIX_OLD);
    const char *sep = strcmp(t->parent, "/") ? "/" : "";
    t->out_path = fl_asprintf("%s%s%s", t->parent, sep, t->name);
    t->tmp_path = t->tmp_name ? fl_asprintf("%s%s%s", t->parent, sep, t->tmp_name) : NULL;
    if (!t->tmp_name || !t->journal_name || !t->old_name || !t->out_path || !t->tmp_path)
        return fl_fail(err, FL_EIO, "out of memory");
    return FL_OK;
}

fl_status txn_begin(const txn_options *o, const unsigned char fingerprint[TXN_FP_BYTES], txn **out,
                    fl_error *err)
{
    *out = NULL;
    txn_out_path p;
    fl_status s = txn_check_location(o, &p, err);
    if (s != FL_OK)
        return s;
    txn *t = calloc(1, sizeof *t);
    if (!t)
        return fl_fail(err, FL_EIO, "out of memory");
    t->o = *o;
    t->parent_fd = t->tmp_fd = t->journal_fd = -1;
    if ((s = txn_names(t, &p, err)) == FL_OK && (s = journal_lock(t, err)) == FL_OK &&
        (s = journal_read(t, err)) == FL_OK) {
        if ((!t->j.has_publish || (s = repair_publish(t, err)) == FL_OK) &&
            (s = txn_check_existing(o, &p, err)) == FL_OK)
            s = prepare_tmp(t, fingerprint, err);
        /* A journal that records nothing on disk (made now, or restarted
         * before a failed mkdir) goes; one that does stays for the user. */
        t->drop_journal = s != FL_OK && !t->j.has_partial && !t->j.has_publish;
    }
    if (s != FL_OK) {
        t->keep = 1;  /* what is there was not made by this run */
        txn_end(t, s);
        return s;
    }
    t->began = 1;
    *out = t;
    return FL_OK;
}

const char *txn_path(const txn *t)
{
    return t->tmp_path;
}

/* ---------------------------------------------------------------------------
 * files in the temporary directory */

/* The sha256 (hex) and size of the file rel in the temporary directory
 * (hash.c's one read of a whole file). */
static fl_status shard_digest(txn *t, const char *rel, char sha[65], uint64_t *size, fl_error *err)
{
    int fd = openat(t->tmp_fd, rel, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    struct stat st;
    char *path = fl_asprintf("%s/%s", t->tmp_path, rel);
    fl_status s = FL_OK;
    if (!path || fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
        s = fl_fail(err, FL_EIO, "%s/%s: cannot open: %s", t->tmp_path, rel, strerror(errno));
    else if ((s = fl_hash_fd(fd, path, (int64_t)st.st_size, sha, NULL, NULL, NULL, NULL, err)) == FL_OK)
        *size = (uint64_t)st.st_size;
    if (fd >= 0)
        close(fd);
    free(path);
    return s;
}

/* Opens the directory that holds `rel` in the temporary directory, making
 * the missing ones with the modes of the source's directories of the same
 * names (the owner keeps rwx, so the files can be written).  *leaf gets the
 * file's own name; *dfd is t->tmp_fd or a descriptor to close. */
static fl_status open_dirs(txn *t, const char *rel, int *dfd, const char **leaf, fl_error *err)
{
    *dfd = t->tmp_fd;
    *leaf = rel;
    for (const char *slash; (slash = strchr(*leaf, '/')) != NULL; *leaf = slash + 1) {
        char *comp = fl_asprintf("%.*s", (int)(slash - *leaf), *leaf);
        char *src = fl_asprintf("%s/%.*s", t->o.src_dir, (int)(slash - rel), rel);
        struct stat st;
        unsigned mode = src && stat(src, &st) == 0 ? (unsigned)(st.st_mode & 0777) | 0700 : 0700;
        int next = -1;
        if (comp && (mkdirat(*dfd, comp, mode) == 0 || errno == EEXIST))
            next = openat(*dfd, comp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        int e = errno;
        free(comp);
        free(src);
        if (*dfd != t->tmp_fd)
            close(*dfd);
        *dfd = next;
        if (next < 0)
            return fl_fail(err, FL_EIO, "%s/%s: cannot create the directory: %s", t->tmp_path, rel, strerror(e));
    }
    return FL_OK;
}

fl_status txn_create(txn *t, const char *rel, unsigned mode, int *fd, fl_error *err)
{
    int dfd;
    const char *leaf;
    fl_status s = open_dirs(t, rel, &dfd, &leaf, err);
    if (s != FL_OK)
        return s;
    unlinkat(dfd, leaf, 0);  /* a file of the run being resumed */
    *fd = openat(dfd, leaf, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, (mode_t)(mode & 0777));
    int e = errno;
    if (dfd != t->tmp_fd)
        close(dfd);
    if (*fd < 0)
        return fl_fail(err, FL_EIO, "Failed to create the file %s/%s: %s", t->tmp_path, rel, strerror(e));
    return FL_OK;
}

/* Appends "done" for shard rel, with the digest of what is on disk now. */
static fl_status journal_done(txn *t, const char *rel, fl_error *err)
{
    char sha[65];
    uint64_t size;
    fl_status s = shard_digest(t, rel, sha, &size, err);
    return s == FL_OK ? journal_append(t, err, "done %llu %s %s\n", (unsigned long long)size, sha, rel) : s;
}

fl_status txn_finish_file(txn *t, const char *rel, int fd, int shard, fl_error *err)
{
    if (t->o.fsync && fsync(fd) != 0) {
        int e = errno;
        close(fd);
        return fl_fail(err, FL_EIO, "%s/%s: fsync failed: %s", t->tmp_path, rel, strerror(e));
    }
    if (close(fd) != 0)
        return fl_fail(err, FL_EIO, "%s/%s: close failed: %s", t->tmp_path, rel, strerror(errno));
    if (!shard)
        return FL_OK;
    if (t->o.resume)  /* digests cost a read of the shard: only when asked */
        return journal_done(t, rel, err);
    char **grown = realloc(t->finished, (t->n_finished + 1) * sizeof *grown);
    if (!grown || !(grown[t->n_finished] = fl_strdup(rel))) {
        if (grown)
            t->finished = grown;
        return fl_fail(err, FL_EIO, "out of memory");
    }
    t->finished = grown;
    t->n_finished++;
    return FL_OK;
}

int txn_reusable(txn *t, const char *rel)
{
    const done_rec *r = NULL;
    for (size_t i = 0; i < t->j.n_done; i++)
        if (strcmp(t->j.done[i].name, rel) == 0)
            r = &t->j.done[i];
    char sha[65];
    uint64_t size;
    fl_error ignored;
    return r && shard_digest(t, rel, sha, &size, &ignored) == FL_OK && size == r->size &&
           strcmp(sha, r->sha256) == 0;
}

/* ---------------------------------------------------------------------------
 * publishing */

static int sync_tree(int fd, int depth)
{
    int rc = fsync(fd);
    DIR *d = txn_dir_stream(fd);
    for (struct dirent *e; d && (e = readdir(d)) != NULL;) {
        if (e->d_type != DT_DIR || !strcmp(e->d_name, ".") || !strcmp(e->d_name, "..") || depth > MAX_TREE_DEPTH)
            continue;
        int sub = openat(fd, e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (sub >= 0) {
            rc |= sync_tree(sub, depth + 1);
            close(sub);
        }
    }
    if (d)
        closedir(d);
    return rc;
}

/* The output directory takes the source directory's mode as a new
 * directory would (the umask applies): a probe directory asks the kernel,
 * since umask() is process-wide and racy. */
static fl_status final_mode(txn *t, fl_error *err)
{
    static const char probe[] = ".flashify-mode";
    struct stat st;
    if (stat(t->o.src_dir, &st) != 0)
        return fl_fail(err, FL_EIO, "%s: %s", t->o.src_dir, strerror(errno));
    unlinkat(t->tmp_fd, probe, AT_REMOVEDIR);
    if (mkdirat(t->tmp_fd, probe, (st.st_mode & 0777) | 0700) != 0 ||
        fstatat(t->tmp_fd, probe, &st, AT_SYMLINK_NOFOLLOW) != 0 || unlinkat(t->tmp_fd, probe, AT_REMOVEDIR) != 0 ||
        fchmod(t->tmp_fd, st.st_mode & 0777) != 0)
        return fl_fail(err, FL_EIO, "%s: cannot set the mode: %s", t->tmp_path, strerror(errno));
    return FL_OK;
}

/* Records the shards this run finished (their digests) so that --resume
 * can reuse a temporary directory that is kept. */
static void journal_finished(txn *t)
{
    fl_error ignored;
    int ok = 1;
    for (size_t i = 0; i < t->n_finished; i++) {
        ok = ok && journal_done(t, t->finished[i], &ignored) == FL_OK;
        free(t->finished[i]);
    }
    t->n_finished = 0;
}

/* The output name is taken by something this run may not replace: keep
 * the finished temporary directory (and its shards' digests) for --resume. */
static fl_status kept(txn *t, fl_status s, fl_error *err)
{
    t->keep = 1;
    journal_finished(t);
    size_t n = strlen(err->msg);
    snprintf(err->msg + n, sizeof err->msg - n, "; the finished output is kept in %s: run the same command "
             "with --resume once %s is out of the way", t->tmp_path, t->out_path);
    return s;
}

static fl_status appeared(txn *t, const char *why, fl_error *err)
{
    fl_fail(err, FL_EUSAGE, "%s: %s, so it was not replaced", t->o.out_dir, why);
    return kept(t, FL_EUSAGE, err);
}

static int no_flags(int e)
{
    return e == EINVAL || e == ENOSYS || e == EOPNOTSUPP;
}

/* Renames the temporary directory to the free output name, never over
 * anything: renameat2(RENAME_NOREPLACE), or where the file system lacks it,
 * a directory made with mkdir (which fails if the name is taken) that
 * rename then replaces (which fails if it is no longer empty). */
static fl_status publish_new(txn *t, fl_error *err)
{
    if (renameat2(t->parent_fd, t->tmp_name, t->parent_fd, t->name, RENAME_NOREPLACE) == 0)
        return FL_OK;
    if (errno == EEXIST || errno == ENOTEMPTY)
        return appeared(t, "appeared during the run", err);
    if (!no_flags(errno))
        return fl_fail(err, FL_EIO, "%s: cannot rename the finished output into place: %s", t->out_path,
                       strerror(errno));
    if (mkdirat(t->parent_fd, t->name, 0700) != 0)
        return errno == EEXIST ? appeared(t, "appeared during the run", err)
                               : fl_fail(err, FL_EIO, "%s: cannot create: %s", t->out_path, strerror(errno));
    if (renameat(t->parent_fd, t->tmp_name, t->parent_fd, t->name) == 0)
        return FL_OK;
    int e = errno;
    unlinkat(t->parent_fd, t->name, AT_REMOVEDIR);  /* only while it is still empty */
    if (e == EEXIST || e == ENOTEMPTY)
        return appeared(t, "appeared during the run", err);
    return fl_fail(err, FL_EIO, "%s: cannot rename the finished output into place: %s", t->out_path, strerror(e));
}

/* Without RENAME_EXCHANGE: the old output moves aside, the new one into
 * place, the old one is removed; the journal lets a later run restore the
 * old output when this one is stopped in between. */
static fl_status publish_aside(txn *t, const struct stat *old, fl_error *err)
{
    struct stat st;
    if (fstatat(t->parent_fd, t->old_name, &st, AT_SYMLINK_NOFOLLOW) == 0)
        return fl_fail(err, FL_EUSAGE, "%s/%s: exists; remove it to let the output be replaced", t->parent,
                       t->old_name);
    fl_status s = journal_append(t, err, "publish aside %llu %llu %llu %llu\n", (unsigned long long)t->tmp_st.st_dev,
                                 (unsigned long long)t->tmp_st.st_ino, (unsigned long long)old->st_dev,
                                 (unsigned long long)old->st_ino);
    if (s != FL_OK)
        return s;
    if (renameat(t->parent_fd, t->name, t->parent_fd, t->old_name) != 0)
        return fl_fail(err, FL_EIO, "%s: cannot move the existing output aside: %s", t->out_path, strerror(errno));
    if (fstatat(t->parent_fd, t->old_name, &st, AT_SYMLINK_NOFOLLOW) != 0 ||
        !same_file(&st, (uint64_t)old->st_dev, (uint64_t)old->st_ino)) {
        renameat(t->parent_fd, t->old_name, t->parent_fd, t->name);
        return appeared(t, "changed while it was being replaced", err);
    }
    if ((s = publish_new(t, err)) != FL_OK) {
        /* Put the old output back, unless something took its name (then
         * the journal's record makes the next run say where it is). */
        if (fstatat(t->parent_fd, t->name, &st, AT_SYMLINK_NOFOLLOW) != 0 && errno == ENOENT)
            renameat(t->parent_fd, t->old_name, t->parent_fd, t->name);
        return s;
    }
    t->published = 1;
    if (txn_remove_at(t->parent_fd, t->old_name, 0) != 0)
        note(t, "%s/%s: could not remove the previous output: %s", t->parent, t->old_name, strerror(errno));
    return FL_OK;
}

/* --force: swaps the new output with the old one in one step, checks that
 * what came out is what was checked, then removes it. */
static fl_status publish_replace(txn *t, fl_error *err)
{
    int ofd = openat(t->parent_fd, t->name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (ofd < 0)
        return appeared(t, "changed into something that is not a directory during the run", err);
    struct stat old, st;
    fl_status s = fstat(ofd, &old) == 0 ? txn_check_replaceable(&t->o, ofd, t->out_path, t->o.out_dir, err)
                                        : fl_fail(err, FL_EIO, "%s: %s", t->out_path, strerror(errno));
    close(ofd);
    if (s != FL_OK)
        return kept(t, s, err);
    s = journal_append(t, err, "publish exchange %llu %llu %llu %llu\n", (unsigned long long)t->tmp_st.st_dev,
                       (unsigned long long)t->tmp_st.st_ino, (unsigned long long)old.st_dev,
                       (unsigned long long)old.st_ino);
    if (s != FL_OK)
        return s;
    if (renameat2(t->parent_fd, t->tmp_name, t->parent_fd, t->name, RENAME_EXCHANGE) != 0)
        return no_flags(errno) ? publish_aside(t, &old, err)
                               : fl_fail(err, FL_EIO, "%s: cannot replace: %s", t->out_path, strerror(errno));
    if (fstatat(t->parent_fd, t->tmp_name, &st, AT_SYMLINK_NOFOLLOW) != 0 ||
        !same_file(&st, (uint64_t)old.st_dev, (uint64_t)old.st_ino)) {
        renameat2(t->parent_fd, t->tmp_name, t->parent_fd, t->name, RENAME_EXCHANGE);
        return appeared(t, "changed while it was being replaced", err);
    }
    t->published = 1;
    if (txn_remove_at(t->parent_fd, t->tmp_name, 0) != 0)
        note(t, "%s: could not remove the previous output: %s", t->tmp_path, strerror(errno));
    return FL_OK;
}

fl_status txn_commit(txn *t, fl_status (*check)(const char *path, void *ctx, fl_error *err), void *ctx,
                     fl_error *err)
{
    if (t->o.fsync && sync_tree(t->tmp_fd, 0) != 0)
        return fl_fail(err, FL_EIO, "%s: fsync failed: %s", t->tmp_path, strerror(errno));
    fl_status s = check ? check(t->tmp_path, ctx, err) : FL_OK;
    if (s == FL_OK && fl_interrupted)
        s = fl_fail(err, FL_EINTR, "interrupted");
    if (s == FL_OK)
        s = final_mode(t, err);
    if (s != FL_OK)
        return s;
    struct stat st;
    if (stat(t->parent, &st) != 0 || st.st_dev != t->parent_st.st_dev || st.st_ino != t->parent_st.st_ino)
        return fl_fail(err, FL_EIO, "%s: the directory %s was moved or replaced during the run; nothing was "
                       "published", t->o.out_dir, t->parent);
    if (fstatat(t->parent_fd, t->name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
        if (!t->o.force)
            return appeared(t, "appeared during the run", err);
        s = publish_replace(t, err);
    } else {
        s = journal_append(t, err, "publish new %llu %llu 0 0\n", (unsigned long long)t->tmp_st.st_dev,
                           (unsigned long long)t->tmp_st.st_ino);
        if (s == FL_OK && (s = publish_new(t, err)) == FL_OK)
            t->published = 1;
    }
    if (t->published && t->o.fsync)
        fsync(t->parent_fd);
    return t->published ? FL_OK : s;
}

/* ---------------------------------------------------------------------------
 * the end */

void txn_end(txn *t, fl_status s)
{
    if (!t)
        return;
    int keep = !t->published && (t->keep || (t->o.resume && (s == FL_EINTR || s == FL_EIO)));
    if (keep && t->began && !t->keep)  /* (txn_commit's refusal says so itself) */
        note(t, "kept the partial output in %s; run the same command with --resume to continue", t->tmp_path);
    if (keep && t->began)
        fchmod(t->tmp_fd, 0700);  /* private again until it is published */
    if (!keep && t->tmp_fd >= 0 && !t->published) {
        /* Only the directory this run made or adopted, wherever it is now. */
        struct stat st;
        if (fstatat(t->parent_fd, t->tmp_name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
            st.st_dev == t->tmp_st.st_dev && st.st_ino == t->tmp_st.st_ino)
            txn_remove_at(t->parent_fd, t->tmp_name, 0);
        else
            txn_clear_at(t->tmp_fd, 0, NULL);
    }
    if (t->journal_fd >= 0 && (t->published || !keep || t->drop_journal))
        unlinkat(t->parent_fd, t->journal_name, 0);  /* still locked: see journal_lock */
    if (t->journal_fd >= 0)
        close(t->journal_fd);
    if (t->tmp_fd >= 0)
        close(t->tmp_fd);
    if (t->parent_fd >= 0)
        close(t->parent_fd);
    for (size_t i = 0; i < t->n_finished; i++)
        free(t->finished[i]);
    free(t->finished);
    journal_free(&t->j);
    free(t->out_path);
    free(t->tmp_path);
    free(t->tmp_name);
    free(t->journal_name);
    free(t->old_name);
    free(t);
}
