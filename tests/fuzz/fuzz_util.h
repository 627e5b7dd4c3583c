/* fuzz_util.h — helpers shared by the libFuzzer harnesses: a private
 * scratch directory under /dev/shm (tmpfs: no disk wear, fast), writing
 * files into it, and removing trees. */
#ifndef FLASHIFY_FUZZ_UTIL_H
#define FLASHIFY_FUZZ_UTIL_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A directory private to this process, created on first use and removed
 * at exit (libFuzzer exits through exit(), so atexit runs). */
static char fuzz_root[64];

static int fuzz_rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb; (void)flag; (void)ftw;
    remove(path);
    return 0;
}

static void fuzz_rm_tree(const char *path)
{
    nftw(path, fuzz_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static void fuzz_cleanup(void)
{
    if (fuzz_root[0])
        fuzz_rm_tree(fuzz_root);
}

static inline const char *fuzz_scratch(void)
{
    if (!fuzz_root[0]) {
        const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
        snprintf(fuzz_root, sizeof fuzz_root, "%s/flashify-fuzz-XXXXXX", base);
        if (!mkdtemp(fuzz_root)) {
            perror("mkdtemp");
            abort();
        }
        atexit(fuzz_cleanup);
    }
    return fuzz_root;
}

/* Writes n bytes to path (created or truncated).  Returns -1 when path
 * cannot be opened (a name the input made both a file and a directory). */
static inline int fuzz_try_write(const char *path, const void *buf, size_t n)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return -1;
    const char *p = buf;
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            perror(path);
            abort();
        }
        p += w;
        n -= (size_t)w;
    }
    close(fd);
    return 0;
}

/* fuzz_try_write that aborts on failure: the harness is broken then. */
static inline void fuzz_write(const char *path, const void *buf, size_t n)
{
    if (fuzz_try_write(path, buf, n) < 0) {
        perror(path);
        abort();
    }
}

#endif
