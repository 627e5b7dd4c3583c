/* util.c — the shared helpers (see util.h). */
#include "flashify/util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* One pread/pwrite/copy_file_range call moves at most this much, so a
 * length never overflows ssize_t and interrupts are seen between calls. */
#define IO_STEP (1u << 30)
/* copy_file_range chunk: fl_interrupted is checked between chunks. */
#define COPY_CHUNK (64u << 20)

/* ---------------------------------------------------------------------------
 * strings */

char *fl_strdup(const char *s)
{
    if (!s)
        return NULL;
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p)
        memcpy(p, s, n);
    return p;
}

char *fl_vasprintf(const char *fmt, va_list ap)
{
    va_list aq;
    va_copy(aq, ap);
    int n = vsnprintf(NULL, 0, fmt, aq);
    va_end(aq);
    if (n < 0)
        return NULL;
    char *s = malloc((size_t)n + 1);
    if (s)
        vsnprintf(s, (size_t)n + 1, fmt, ap);
    return s;
}

char *fl_asprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = fl_vasprintf(fmt, ap);
    va_end(ap);
    return s;
}

char *fl_path_join(const char *dir, const char *name)
{
    size_t nd = strlen(dir);
    if (nd == 0)
        return fl_strdup(name);
    return fl_asprintf("%s%s%s", dir, dir[nd - 1] == '/' ? "" : "/", name);
}

const char *fl_basename(const char *path, char *buf, size_t cap)
{
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/')
        n--;
    size_t start = n;
    while (start > 0 && path[start - 1] != '/')
        start--;
    if (n == 1 && path[0] == '/')
        start = 0;
    snprintf(buf, cap, "%.*s", (int)(n - start), path + start);
    return buf;
}

int fl_ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && memcmp(s + a - b, suffix, b) == 0;
}

size_t fl_utf8_check(const void *buf, size_t len)
{
    const unsigned char *s = buf;
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t n;
        unsigned lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF)
            n = 1;
        else if (c == 0xE0)
            n = 2, lo = 0xA0;
        else if (c >= 0xE1 && c <= 0xEC)
            n = 2;
        else if (c == 0xED)
            n = 2, hi = 0x9F;           /* no UTF-16 surrogates */
        else if (c >= 0xEE && c <= 0xEF)
            n = 2;
        else if (c == 0xF0)
            n = 3, lo = 0x90;
        else if (c >= 0xF1 && c <= 0xF3)
            n = 3;
        else if (c == 0xF4)
            n = 3, hi = 0x8F;           /* nothing above U+10FFFF */
        else
            return i;
        if (len - i - 1 < n || s[i + 1] < lo || s[i + 1] > hi)
            return i;
        for (size_t k = 2; k <= n; k++)
            if ((s[i + k] & 0xC0) != 0x80)
                return i;
        i += n + 1;
    }
    return len;
}

/* ---------------------------------------------------------------------------
 * the text buffer */

void sb_put(strbuf *b, const void *s, size_t n)
{
    if (b->oom)
        return;
    size_t limit = b->limit ? b->limit : SIZE_MAX / 2;
    if (n > limit || b->n > limit - n) {
        b->oom = 1;
        return;
    }
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1)
            cap *= 2;     /* cannot overflow: n + b->n <= SIZE_MAX / 2 */
        char *q = realloc(b->p, cap);
        if (!q) {
            b->oom = 1;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

void sb_str(strbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

void sb_printf(strbuf *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->oom = 1;
        return;
    }
    if ((size_t)n < sizeof tmp) {
        sb_put(b, tmp, (size_t)n);
        return;
    }
    va_start(ap, fmt);
    char *big = fl_vasprintf(fmt, ap);
    va_end(ap);
    if (!big) {
        b->oom = 1;
        return;
    }
    sb_put(b, big, (size_t)n);
    free(big);
}

void sb_json_string(strbuf *b, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    sb_put(b, "\"", 1);
    size_t run = 0;
    for (size_t i = 0;; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') {
            run++;
            continue;
        }
        sb_put(b, s + i - run, run);
        run = 0;
        if (!c)
            break;
        char e[6] = {'\\', 0};
        size_t n = 2;
        switch (c) {
        case '"': e[1] = '"'; break;
        case '\\': e[1] = '\\'; break;
        case '\b': e[1] = 'b'; break;
        case '\f': e[1] = 'f'; break;
        case '\n': e[1] = 'n'; break;
        case '\r': e[1] = 'r'; break;
        case '\t': e[1] = 't'; break;
        default:
            memcpy(e + 1, "u00", 3);
            e[4] = hex[c >> 4];
            e[5] = hex[c & 15];
            n = 6;
        }
        sb_put(b, e, n);
    }
    sb_put(b, "\"", 1);
}

char *sb_take(strbuf *b)
{
    char *p = b->p;
    if (b->oom) {
        free(p);
        p = NULL;
    } else if (!p) {
        p = fl_strdup("");
    }
    memset(b, 0, sizeof *b);
    return p;
}

void sb_free(strbuf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

/* ---------------------------------------------------------------------------
 * files */

fl_status fl_read_file(const char *path, size_t max, int flags, char **out, size_t *len,
                       fl_error *err)
{
    *out = NULL;
    if (len)
        *len = 0;
    int fd;
    do
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK |
                            (flags & FL_READ_NOFOLLOW ? O_NOFOLLOW : 0));
    while (fd < 0 && errno == EINTR);
    if (fd < 0) {
        if (errno == ELOOP && (flags & FL_READ_NOFOLLOW))
            return fl_fail(err, FL_EINPUT, "%s: is a symbolic link", path);
        return fl_fail(err, FL_EIO, "%s: cannot open: %s", path, strerror(errno));
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return fl_fail(err, FL_EIO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return fl_fail(err, FL_EINPUT, "%s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > max) {
        close(fd);
        return fl_fail(err, FL_EINPUT, "%s: %lld bytes, larger than the %zu byte limit", path,
                       (long long)st.st_size, max);
    }
    size_t n = (size_t)st.st_size;
    char *buf = malloc(n + 1);
    if (!buf) {
        close(fd);
        return fl_fail(err, FL_EIO, "%s: out of memory for %zu bytes", path, n);
    }
    if (fl_pread_full(fd, buf, n, 0) != 0) {
        int e = errno;
        free(buf);
        close(fd);
        return fl_fail(err, FL_EIO, "%s: read failed: %s", path,
                       e ? strerror(e) : "the file shrank while it was read");
    }
    close(fd);
    buf[n] = '\0';
    if (flags & FL_READ_UTF8) {
        size_t bad = fl_utf8_check(buf, n);
        if (bad < n) {
            fl_status s = fl_fail(err, FL_EINPUT, "%s: not valid UTF-8 (byte %zu is 0x%02x)",
                                  path, bad, (unsigned char)buf[bad]);
            free(buf);
            return s;
        }
    }
    *out = buf;
    if (len)
        *len = n;
    return FL_OK;
}

int fl_pread_full(int fd, void *buf, size_t n, uint64_t off)
{
    char *p = buf;
    while (n > 0) {
        ssize_t r = pread(fd, p, n > IO_STEP ? IO_STEP : n, (off_t)off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        if (r == 0) {
            errno = 0;
            return -1;
        }
        p += r;
        off += (uint64_t)r;
        n -= (size_t)r;
    }
    return 0;
}

int fl_pwrite_full(int fd, const void *buf, size_t n, uint64_t off)
{
    const char *p = buf;
    while (n > 0) {
        ssize_t w = pwrite(fd, p, n > IO_STEP ? IO_STEP : n, (off_t)off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -1;
        if (w == 0) {
            errno = EIO;
            return -1;
        }
        p += w;
        off += (uint64_t)w;
        n -= (size_t)w;
    }
    return 0;
}

fl_status fl_copy_range(int in_fd, uint64_t in_off, int out_fd, uint64_t out_off, uint64_t n,
                        const char *in_path, const char *out_path, void *buf, size_t buf_size,
                        fl_error *err)
{
    int use_cfr = 1;
    while (n > 0) {
        if (fl_interrupted)
            return fl_fail(err, FL_EINTR, "interrupted");
        size_t want = n > COPY_CHUNK ? COPY_CHUNK : (size_t)n;
        if (use_cfr) {
            loff_t a = (loff_t)in_off, b = (loff_t)out_off;
            ssize_t r = copy_file_range(in_fd, &a, out_fd, &b, want, 0);
            if (r > 0) {
                in_off += (uint64_t)r;
                out_off += (uint64_t)r;
                n -= (uint64_t)r;
                continue;
            }
            if (r < 0 && errno == EINTR)
                continue;
            if (r < 0 && (errno == ENOSPC || errno == EFBIG || errno == EDQUOT))
                return fl_fail(err, FL_EIO, "%s: write failed: %s", out_path, strerror(errno));
            if (r == 0)
                return fl_fail(err, FL_EIO, "%s: read failed: the file shrank while it was copied",
                               in_path);
            /* EXDEV, EINVAL, ENOSYS, EOPNOTSUPP: no in-kernel copy here.
             * EIO and the rest could be either file: the loop below finds
             * out which. */
            use_cfr = 0;
        }
        if (want > buf_size)
            want = buf_size;
        ssize_t r = pread(in_fd, buf, want, (off_t)in_off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return fl_fail(err, FL_EIO, "%s: read failed: %s", in_path,
                           r < 0 ? strerror(errno) : "the file shrank while it was copied");
        if (fl_pwrite_full(out_fd, buf, (size_t)r, out_off) != 0)
            return fl_fail(err, FL_EIO, "%s: write failed: %s", out_path, strerror(errno));
        in_off += (uint64_t)r;
        out_off += (uint64_t)r;
        n -= (uint64_t)r;
    }
    return FL_OK;
}

fl_status fl_mkdir_p(const char *path, unsigned mode, fl_error *err)
{
    if (!*path)
        return fl_fail(err, FL_EIO, "cannot create a directory with an empty name");
    char *p = fl_strdup(path);
    if (!p)
        return fl_fail(err, FL_EIO, "out of memory");
    fl_status s = FL_OK;
    for (char *c = p + 1;; c++) {
        if (*c != '/' && *c != '\0')
            continue;
        char saved = *c;
        *c = '\0';
        struct stat st;
        if (mkdir(p, (mode_t)mode) != 0) {
            if (errno != EEXIST) {
                s = fl_fail(err, FL_EIO, "%s: cannot create directory: %s", p, strerror(errno));
                break;
            }
            if (stat(p, &st) != 0 || !S_ISDIR(st.st_mode)) {
                s = fl_fail(err, FL_EIO, "%s: exists and is not a directory", p);
                break;
            }
        }
        *c = saved;
        if (!saved)
            break;
        while (c[1] == '/')
            c++;
        if (!c[1])
            break;
    }
    free(p);
    return s;
}

fl_status fl_mkdir_parents(const char *root, const char *rel, unsigned mode, fl_error *err)
{
    const char *slash = strrchr(rel, '/');
    if (!slash)
        return FL_OK;
    char *dir = fl_asprintf("%s/%.*s", root, (int)(slash - rel), rel);
    if (!dir)
        return fl_fail(err, FL_EIO, "out of memory");
    fl_status s = fl_mkdir_p(dir, mode, err);
    free(dir);
    return s;
}

/* ---------------------------------------------------------------------------
 * time */

double fl_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void fl_sleep(double seconds)
{
    double end = fl_now() + seconds;
    for (;;) {
        double left = end - fl_now();
        if (left <= 0 || fl_interrupted)
            return;
        if (left > 0.05)
            left = 0.05;
        struct timespec ts = {0, (long)(left * 1e9)};
        nanosleep(&ts, NULL);
    }
}
