/* util.h — the small helpers every stage shares, written once.
 *
 * Formatted allocation, one growable text buffer, one JSON string escaper,
 * careful file I/O (a small-file reader, full pread/pwrite loops, an
 * in-kernel copy with a fallback, mkdir -p) and a monotonic clock.  No
 * global state and no printing: failures come back as an fl_status with a
 * message naming the file. */
#ifndef FLASHIFY_UTIL_H
#define FLASHIFY_UTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "flashify/error.h"

#define FL_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))

/* ---- strings --------------------------------------------------------------
 * All return malloc'd memory, or NULL when out of memory (or s is NULL). */

char *fl_strdup(const char *s);
char *fl_asprintf(const char *fmt, ...) FL_PRINTF(1, 2);
char *fl_vasprintf(const char *fmt, va_list ap) FL_PRINTF(1, 0);
/* "dir/name"; an empty dir gives name alone, a dir ending in '/' no
 * second slash. */
char *fl_path_join(const char *dir, const char *name);
/* The last component of a path, trailing slashes ignored ("a/b/" -> "b"),
 * copied into buf. */
const char *fl_basename(const char *path, char *buf, size_t cap);
/* 1 when s ends with suffix. */
int fl_ends_with(const char *s, const char *suffix);
/* Offset of the first byte that is not strict UTF-8 (no overlong forms,
 * surrogates or code points above U+10FFFF: what Rust's str::from_utf8 and
 * RFC 8259 accept), or len when all of s is valid. */
size_t fl_utf8_check(const void *s, size_t len);

/* ---- the text buffer ------------------------------------------------------
 * A growing, NUL-terminated buffer for the JSON, Markdown and reports
 * flashify writes.  Failure is sticky: when an allocation fails, or the
 * text would pass `limit` bytes (0: no limit but SIZE_MAX / 2), `oom` is
 * set, later appends do nothing, and the owner checks it once at the end. */
typedef struct {
    char *p;       /* the text (NULL while nothing was appended) */
    size_t n;      /* its length */
    size_t cap;
    size_t limit;  /* 0: unlimited */
    int oom;
} strbuf;

void sb_put(strbuf *b, const void *s, size_t n);
void sb_str(strbuf *b, const char *s);
void sb_printf(strbuf *b, const char *fmt, ...) FL_PRINTF(2, 3);
/* Appends s as a JSON string literal, escaped the way serde_json and
 * Python's json module (ensure_ascii=False) write it: '"' and '\\', the
 * short forms \b \f \n \r \t, other control characters as \u00xx; every
 * other byte as is (the caller passes UTF-8). */
void sb_json_string(strbuf *b, const char *s);
/* Hands over the text (NUL-terminated, "" when empty) and resets the
 * buffer; NULL (and the memory freed) when oom was set. */
char *sb_take(strbuf *b);
void sb_free(strbuf *b);

/* ---- files ----------------------------------------------------------------*/

enum {
    FL_READ_UTF8 = 1,      /* the content must be strict UTF-8 (JSON, RFC 8259) */
    FL_READ_NOFOLLOW = 2   /* refuse a symlink at the last component */
};

/* Reads a whole small file (at most `max` bytes) into a NUL-terminated
 * buffer: opened O_NONBLOCK (a FIFO in its place must not hang), a regular
 * file only, EINTR and short reads handled.  Returns FL_OK, FL_EINPUT (not
 * a regular file, larger than max, not UTF-8) or FL_EIO (cannot open or
 * read: err says which, with strerror). */
fl_status fl_read_file(const char *path, size_t max, int flags, char **out, size_t *len,
                       fl_error *err);

/* Exactly n bytes at off: EINTR retried, short transfers continued, at
 * most 1 GiB per call.  Return 0, or -1 with errno set (errno 0 after a
 * read that hit the end of the file). */
int fl_pread_full(int fd, void *buf, size_t n, uint64_t off);
int fl_pwrite_full(int fd, const void *buf, size_t n, uint64_t off);

/* Copies n bytes from in_fd at in_off to out_fd at out_off: copy_file_range
 * where the kernel can (no trip through user space; a reflink on
 * filesystems that share extents), else pread/pwrite through buf.  When
 * copy_file_range fails with an error that could belong to either file,
 * the rest goes through pread/pwrite so the message names the right one:
 * "<in_path>: read failed" or "<out_path>: write failed".  fl_interrupted is
 * checked between chunks (FL_EINTR). */
fl_status fl_copy_range(int in_fd, uint64_t in_off, int out_fd, uint64_t out_off, uint64_t n,
                        const char *in_path, const char *out_path, void *buf, size_t buf_size,
                        fl_error *err);

/* mkdir -p `path` (each created directory gets `mode` & ~umask).  An
 * existing directory is fine; anything else in the way is an error. */
fl_status fl_mkdir_p(const char *path, unsigned mode, fl_error *err);
/* Creates the directories of the relative file name `rel` under `root`. */
fl_status fl_mkdir_parents(const char *root, const char *rel, unsigned mode, fl_error *err);

/* ---- time -----------------------------------------------------------------*/

/* Seconds on a monotonic clock (only differences mean anything). */
double fl_now(void);
/* Sleeps `seconds`, in short steps, returning early once fl_interrupted. */
void fl_sleep(double seconds);

#endif
