/* shim.c — fault injection for the end-to-end tests, loaded with LD_PRELOAD.
 *
 * FLASHIFY_FAULT is a comma-separated list of rules "CALL[@TEXT]:N:ACTION":
 *
 *   CALL    rename (rename, renameat, renameat2), renameat2, write (write,
 *           pwrite), fsync (fsync, fdatasync), read (read, pread),
 *           copy_file_range, mmap, open (open, openat), mkdir (mkdir,
 *           mkdirat), unlink (unlink, unlinkat)
 *   @TEXT   only calls whose path (the argument, or what the descriptor is
 *           open on, via /proc/self/fd) contains TEXT
 *   N       the Nth such call (1-based), "N+" that one and every later one,
 *           "*" every one
 *   ACTION  stop / kill: SIGSTOP / SIGKILL before the call;
 *           after-stop / after-kill: the same after it;
 *           fail=ERRNO (EIO, ENOSPC, EINVAL, ENOSYS, EACCES, EXDEV, ENOTSUP):
 *           the call fails with that errno;
 *           sigbus (mmap): the mapping succeeds but reading it raises SIGBUS,
 *           as a bad sector does.
 *
 * FLASHIFY_FAULT_LOG=FILE appends "CALL PATH" for every call of a class
 * above, so a test can count the points where a run can be stopped.
 * Standard C and Linux only; nothing here is part of flashify. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAX_RULES 16

enum { ACT_STOP, ACT_KILL, ACT_AFTER_STOP, ACT_AFTER_KILL, ACT_FAIL, ACT_SIGBUS };

typedef struct {
    char call[32];
    char text[256];
    long n;            /* 0: every call */
    int from;          /* "N+" */
    int action, err;
    atomic_long seen;
} rule;

static rule rules[MAX_RULES];
static int n_rules;
static int log_fd = -1;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static int errno_of(const char *s)
{
    static const struct { const char *name; int e; } t[] = {
        {"EIO", EIO}, {"ENOSPC", ENOSPC}, {"EINVAL", EINVAL}, {"ENOSYS", ENOSYS},
        {"EACCES", EACCES}, {"EXDEV", EXDEV}, {"ENOTSUP", ENOTSUP}, {"EPERM", EPERM}};
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        if (!strcmp(s, t[i].name))
            return t[i].e;
    return EIO;
}

static void parse_rule(char *s)
{
    if (n_rules == MAX_RULES)
        return;
    rule *r = &rules[n_rules];
    char *c1 = strchr(s, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
    if (!c2)
        return;
    *c1 = *c2 = '\0';
    char *at = strchr(s, '@');
    if (at) {
        *at = '\0';
        snprintf(r->text, sizeof r->text, "%s", at + 1);
    }
    snprintf(r->call, sizeof r->call, "%s", s);
    r->n = strcmp(c1 + 1, "*") ? strtol(c1 + 1, NULL, 10) : 0;
    r->from = strchr(c1 + 1, '+') != NULL;
    const char *a = c2 + 1;
    r->action = !strcmp(a, "stop") ? ACT_STOP : !strcmp(a, "kill") ? ACT_KILL
              : !strcmp(a, "after-stop") ? ACT_AFTER_STOP : !strcmp(a, "after-kill") ? ACT_AFTER_KILL
              : !strcmp(a, "sigbus") ? ACT_SIGBUS : ACT_FAIL;
    if (!strncmp(a, "fail=", 5))
        r->err = errno_of(a + 5);
    n_rules++;
}

static void init(void)
{
    const char *spec = getenv("FLASHIFY_FAULT");
    if (spec) {
        char *copy = strdup(spec), *save = NULL;
        for (char *tok = copy ? strtok_r(copy, ",", &save) : NULL; tok; tok = strtok_r(NULL, ",", &save))
            parse_rule(tok);
        free(copy);
    }
    const char *log = getenv("FLASHIFY_FAULT_LOG");
    if (log)
        log_fd = (int)syscall(SYS_openat, AT_FDCWD, log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
}

static void fd_path(int fd, char *out, size_t cap)
{
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, out, cap - 1);
    out[n > 0 ? n : 0] = '\0';
}

static void at_path(int dirfd, const char *path, char *out, size_t cap)
{
    if (!path) {
        out[0] = '\0';
    } else if (path[0] == '/' || dirfd == AT_FDCWD) {
        snprintf(out, cap, "%s", path);
    } else {
        char dir[4096];
        fd_path(dirfd, dir, sizeof dir);
        snprintf(out, cap, "%s/%s", dir, path);
    }
}

static int class_matches(const char *rule_call, const char *cls, const char *fn)
{
    return !strcmp(rule_call, cls) || !strcmp(rule_call, fn);
}

/* The rule that fires for this call, or NULL; logs the call. */
static rule *check(const char *cls, const char *fn, const char *p1, const char *p2)
{
    pthread_once(&once, init);
    if (log_fd >= 0) {
        char line[8400];
        int n = snprintf(line, sizeof line, "%s %s%s%s\n", cls, p1, p2 ? " " : "", p2 ? p2 : "");
        if (n > 0)
            syscall(SYS_write, log_fd, line, (size_t)(n < (int)sizeof line ? n : (int)sizeof line - 1));
    }
    for (int i = 0; i < n_rules; i++) {
        rule *r = &rules[i];
        if (!class_matches(r->call, cls, fn))
            continue;
        if (r->text[0] && !strstr(p1, r->text) && !(p2 && strstr(p2, r->text)))
            continue;
        long k = atomic_fetch_add(&r->seen, 1) + 1;
        if (r->n == 0 || k == r->n || (r->from && k > r->n))
            return r;
    }
    return NULL;
}

/* Before the call: 1 when the call must fail (errno set). */
static int before(rule *r)
{
    if (!r)
        return 0;
    if (r->action == ACT_STOP)
        raise(SIGSTOP);
    if (r->action == ACT_KILL)
        raise(SIGKILL);
    if (r->action == ACT_FAIL) {
        errno = r->err;
        return 1;
    }
    return 0;
}

static void after(rule *r)
{
    if (r && r->action == ACT_AFTER_STOP)
        raise(SIGSTOP);
    if (r && r->action == ACT_AFTER_KILL)
        raise(SIGKILL);
}

#define REAL(ret, name, ...)                                       \
    static ret (*real_##name)(__VA_ARGS__);                        \
    if (!real_##name)                                              \
        real_##name = (ret (*)(__VA_ARGS__))dlsym(RTLD_NEXT, #name)

#define FD_CALL(cls, fn, fd, call)                                 \
    do {                                                           \
        char p_[4096];                                             \
        fd_path(fd, p_, sizeof p_);                                \
        rule *r_ = check(cls, fn, p_, NULL);                       \
        if (before(r_))                                            \
            return -1;                                             \
        __typeof__(call) v_ = call;                                \
        int e_ = errno;                                            \
        after(r_);                                                 \
        errno = e_;                                                \
        return v_;                                                 \
    } while (0)

ssize_t write(int fd, const void *b, size_t n)
{
    REAL(ssize_t, write, int, const void *, size_t);
    FD_CALL("write", "write", fd, real_write(fd, b, n));
}

ssize_t pwrite(int fd, const void *b, size_t n, off_t off)
{
    REAL(ssize_t, pwrite, int, const void *, size_t, off_t);
    FD_CALL("write", "pwrite", fd, real_pwrite(fd, b, n, off));
}

ssize_t pwrite64(int fd, const void *b, size_t n, off_t off)
{
    REAL(ssize_t, pwrite64, int, const void *, size_t, off_t);
    FD_CALL("write", "pwrite", fd, real_pwrite64(fd, b, n, off));
}

ssize_t read(int fd, void *b, size_t n)
{
    REAL(ssize_t, read, int, void *, size_t);
    FD_CALL("read", "read", fd, real_read(fd, b, n));
}

ssize_t pread(int fd, void *b, size_t n, off_t off)
{
    REAL(ssize_t, pread, int, void *, size_t, off_t);
    FD_CALL("read", "pread", fd, real_pread(fd, b, n, off));
}

ssize_t pread64(int fd, void *b, size_t n, off_t off)
{
    REAL(ssize_t, pread64, int, void *, size_t, off_t);
    FD_CALL("read", "pread", fd, real_pread64(fd, b, n, off));
}

int fsync(int fd)
{
    REAL(int, fsync, int);
    FD_CALL("fsync", "fsync", fd, real_fsync(fd));
}

int fdatasync(int fd)
{
    REAL(int, fdatasync, int);
    FD_CALL("fsync", "fdatasync", fd, real_fdatasync(fd));
}

ssize_t copy_file_range(int in, loff_t *ioff, int out, loff_t *ooff, size_t n, unsigned flags)
{
    REAL(ssize_t, copy_file_range, int, loff_t *, int, loff_t *, size_t, unsigned);
    char a[4096], b[4096];
    fd_path(in, a, sizeof a);
    fd_path(out, b, sizeof b);
    rule *r = check("copy_file_range", "copy_file_range", a, b);
    if (before(r))
        return -1;
    ssize_t v = real_copy_file_range(in, ioff, out, ooff, n, flags);
    after(r);
    return v;
}

static void *fault_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off,
                        void *(*real)(void *, size_t, int, int, int, off_t))
{
    char p[4096] = "";
    if (fd >= 0)
        fd_path(fd, p, sizeof p);
    rule *r = fd >= 0 ? check("mmap", "mmap", p, NULL) : NULL;
    if (r && r->action == ACT_SIGBUS) {
        /* An empty file mapped in its place: every page is past its end. */
        int mfd = (int)syscall(SYS_memfd_create, "flashify-fault", 0);
        void *v = mfd >= 0 ? real(addr, len, prot, flags & ~MAP_POPULATE, mfd, 0) : MAP_FAILED;
        if (mfd >= 0)
            close(mfd);
        return v;
    }
    if (before(r))
        return MAP_FAILED;
    void *v = real(addr, len, prot, flags, fd, off);
    after(r);
    return v;
}

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    REAL(void *, mmap, void *, size_t, int, int, int, off_t);
    return fault_mmap(addr, len, prot, flags, fd, off, real_mmap);
}

void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    REAL(void *, mmap64, void *, size_t, int, int, int, off_t);
    return fault_mmap(addr, len, prot, flags, fd, off, real_mmap64);
}

#define PATH_CALL(cls, fn, dirfd, path, call)                      \
    do {                                                           \
        char p_[8192];                                             \
        at_path(dirfd, path, p_, sizeof p_);                       \
        rule *r_ = check(cls, fn, p_, NULL);                       \
        if (before(r_))                                            \
            return -1;                                             \
        int v_ = call;                                             \
        int e_ = errno;                                            \
        after(r_);                                                 \
        errno = e_;                                                \
        return v_;                                                 \
    } while (0)

static mode_t mode_arg(int flags, va_list ap)
{
    return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE ? (mode_t)va_arg(ap, int) : 0;
}

int open(const char *path, int flags, ...)
{
    REAL(int, open, const char *, int, ...);
    va_list ap;
    va_start(ap, flags);
    mode_t m = mode_arg(flags, ap);
    va_end(ap);
    PATH_CALL("open", "open", AT_FDCWD, path, real_open(path, flags, m));
}

int open64(const char *path, int flags, ...)
{
    REAL(int, open64, const char *, int, ...);
    va_list ap;
    va_start(ap, flags);
    mode_t m = mode_arg(flags, ap);
    va_end(ap);
    PATH_CALL("open", "open", AT_FDCWD, path, real_open64(path, flags, m));
}

int openat(int dirfd, const char *path, int flags, ...)
{
    REAL(int, openat, int, const char *, int, ...);
    va_list ap;
    va_start(ap, flags);
    mode_t m = mode_arg(flags, ap);
    va_end(ap);
    PATH_CALL("open", "openat", dirfd, path, real_openat(dirfd, path, flags, m));
}

int openat64(int dirfd, const char *path, int flags, ...)
{
    REAL(int, openat64, int, const char *, int, ...);
    va_list ap;
    va_start(ap, flags);
    mode_t m = mode_arg(flags, ap);
    va_end(ap);
    PATH_CALL("open", "openat", dirfd, path, real_openat64(dirfd, path, flags, m));
}

int mkdir(const char *path, mode_t m)
{
    REAL(int, mkdir, const char *, mode_t);
    PATH_CALL("mkdir", "mkdir", AT_FDCWD, path, real_mkdir(path, m));
}

int mkdirat(int dirfd, const char *path, mode_t m)
{
    REAL(int, mkdirat, int, const char *, mode_t);
    PATH_CALL("mkdir", "mkdirat", dirfd, path, real_mkdirat(dirfd, path, m));
}

int unlink(const char *path)
{
    REAL(int, unlink, const char *);
    PATH_CALL("unlink", "unlink", AT_FDCWD, path, real_unlink(path));
}

int unlinkat(int dirfd, const char *path, int flags)
{
    REAL(int, unlinkat, int, const char *, int);
    PATH_CALL("unlink", "unlinkat", dirfd, path, real_unlinkat(dirfd, path, flags));
}

static int rename_call(const char *fn, int ofd, const char *op, int nfd, const char *np, unsigned flags,
                       int (*real3)(int, const char *, int, const char *, unsigned))
{
    char a[8192], b[8192];
    at_path(ofd, op, a, sizeof a);
    at_path(nfd, np, b, sizeof b);
    rule *r = check("rename", fn, a, b);
    if (before(r))
        return -1;
    int v = real3(ofd, op, nfd, np, flags);
    int e = errno;
    after(r);
    errno = e;
    return v;
}

static int (*real_renameat2_fn)(int, const char *, int, const char *, unsigned);

static int via_renameat2(int ofd, const char *op, int nfd, const char *np, unsigned flags)
{
    if (!real_renameat2_fn)
        real_renameat2_fn = (int (*)(int, const char *, int, const char *, unsigned))dlsym(RTLD_NEXT, "renameat2");
    return real_renameat2_fn(ofd, op, nfd, np, flags);
}

static int via_renameat(int ofd, const char *op, int nfd, const char *np, unsigned flags)
{
    static int (*real)(int, const char *, int, const char *);
    if (!real)
        real = (int (*)(int, const char *, int, const char *))dlsym(RTLD_NEXT, "renameat");
    return real(ofd, op, nfd, np);
}

static int via_rename(int ofd, const char *op, int nfd, const char *np, unsigned flags)
{
    static int (*real)(const char *, const char *);
    if (!real)
        real = (int (*)(const char *, const char *))dlsym(RTLD_NEXT, "rename");
    return real(op, np);
}

int renameat2(int ofd, const char *op, int nfd, const char *np, unsigned flags)
{
    return rename_call("renameat2", ofd, op, nfd, np, flags, via_renameat2);
}

int renameat(int ofd, const char *op, int nfd, const char *np)
{
    return rename_call("renameat", ofd, op, nfd, np, 0, via_renameat);
}

int rename(const char *op, const char *np)
{
    return rename_call("rename", AT_FDCWD, op, AT_FDCWD, np, 0, via_rename);
}
