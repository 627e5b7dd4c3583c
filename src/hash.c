/* hash.c — sha256 and git blob ids, inline, on a read-back thread, or over
 * a whole file (see hash.h). */
#include "flashify/hash.h"
#include "flashify/util.h"

#include <ctype.h>
#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* A test build may change these (to exercise the waits, or to measure). */
#ifndef HASH_CHUNK
#define HASH_CHUNK (1u << 20)                /* one read-back */
#endif
#ifndef HASH_LAG_MAX
#define HASH_LAG_MAX ((int64_t)64 << 20)     /* written but not yet hashed */
#endif
/* What wakes the hasher: never more than the lag a writer waits on. */
#define HASH_WAKE ((int64_t)HASH_CHUNK < HASH_LAG_MAX ? (int64_t)HASH_CHUNK : HASH_LAG_MAX)

static int is_hex(const char *s, size_t n)
{
    if (strlen(s) != n)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!isxdigit((unsigned char)s[i]))
            return 0;
    return 1;
}

hash_kind hash_kind_of(const char *hex)
{
    return is_hex(hex, 64) ? HASH_SHA256 : is_hex(hex, 40) ? HASH_GITSHA1 : HASH_NONE;
}

/* ----------------------------------------------------------------------------
 * One digest */

int fl_digest_init(fl_digest *d, hash_kind kind, int64_t size)
{
    d->kind = kind;
    d->size = size;
    if (kind == HASH_NONE)
        return 1;
    if (!d->md && !(d->md = EVP_MD_CTX_new()))
        return 0;
    if (!EVP_DigestInit_ex(d->md, kind == HASH_SHA256 ? EVP_sha256() : EVP_sha1(), NULL))
        return 0;
    if (kind == HASH_GITSHA1) {
        /* git's blob id hashes "blob <size>\0" first. */
        char hdr[64];
        int n = snprintf(hdr, sizeof hdr, "blob %lld", (long long)size);
        if (!EVP_DigestUpdate(d->md, hdr, (size_t)n + 1)) /* with the NUL */
            return 0;
    }
    return 1;
}

int fl_digest_update(fl_digest *d, const void *p, size_t n)
{
    return d->kind == HASH_NONE || EVP_DigestUpdate(d->md, p, n);
}

int fl_digest_hex(const fl_digest *d, char *hex, size_t cap)
{
    unsigned char v[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (d->kind == HASH_NONE || !d->md)
        return 0;
    EVP_MD_CTX *copy = EVP_MD_CTX_new();
    int ok = copy && EVP_MD_CTX_copy_ex(copy, d->md) && EVP_DigestFinal_ex(copy, v, &len) &&
             cap > 2 * (size_t)len;
    EVP_MD_CTX_free(copy);
    for (unsigned i = 0; ok && i < len; i++)
        snprintf(hex + 2 * i, 3, "%02x", v[i]);
    return ok;
}

void fl_digest_free(fl_digest *d)
{
    EVP_MD_CTX_free(d->md);
    d->md = NULL;
}

/* ----------------------------------------------------------------------------
 * While a file is written */

static int stopped(const hash_reader *r)
{
    return fl_interrupted || (r->stop && *r->stop);
}

/* The hasher thread: digests the file's bytes [done, avail) in HASH_CHUNK
 * reads as they appear, until quit; it wakes only for HASH_WAKE bytes (or
 * for the tail once flush is set), not for each of the writer's small
 * pieces.  A read or digest failure stops it with err set (reported by
 * hash_reader_drain). */
static void *reader_main(void *ud)
{
    hash_reader *r = ud;
    char *buf = malloc(HASH_CHUNK);
    pthread_mutex_lock(&r->mu);
    if (!buf)
        r->err = ENOMEM;
    for (;;) {
        while (!r->quit && (r->err || !(r->avail - r->done >= HASH_WAKE ||
                                        (r->flush && r->done < r->avail))))
            pthread_cond_wait(&r->cv, &r->mu);
        if (r->quit)
            break;
        int64_t off = r->done, left = r->avail - r->done;
        size_t want = left < (int64_t)HASH_CHUNK ? (size_t)left : HASH_CHUNK;
        r->busy = 1;
        pthread_mutex_unlock(&r->mu);
        ssize_t got;
        do
            got = pread(r->fd, buf, want, (off_t)off);
        while (got < 0 && errno == EINTR);
        int e = got < 0 ? errno : got == 0 ? EIO : 0;
        if (!e && !fl_digest_update(&r->d, buf, (size_t)got))
            e = EIO;
        pthread_mutex_lock(&r->mu);
        r->busy = 0;
        if (e)
            r->err = e;
        else
            r->done += got;
        pthread_cond_broadcast(&r->cv);
    }
    pthread_mutex_unlock(&r->mu);
    free(buf);
    return NULL;
}

/* Digests the file's first `n` bytes here (inline mode, a resumed
 * download): 0, an errno, or EINTR when stopped (it may be many GB). */
static int hash_prefix(hash_reader *r, int64_t n)
{
    char *buf = malloc(HASH_CHUNK);
    if (!buf)
        return ENOMEM;
    int e = 0;
    for (int64_t off = 0; off < n && !e;) {
        if (stopped(r)) {
            e = EINTR;
            break;
        }
        int64_t left = n - off;
        ssize_t got = pread(r->fd, buf, left < (int64_t)HASH_CHUNK ? (size_t)left : HASH_CHUNK,
                            (off_t)off);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0 || !fl_digest_update(&r->d, buf, (size_t)got))
            e = got < 0 ? errno : EIO;
        else
            off += got;
    }
    free(buf);
    return e;
}

int hash_reader_start(hash_reader *r, hash_kind kind, int fd, int64_t written, int64_t size,
                      const atomic_int *stop, int threaded)
{
    memset(r, 0, sizeof *r);
    r->fd = fd;
    r->stop = stop;
    r->d.kind = kind;
    if (kind == HASH_NONE)
        return 0;
    if (!fl_digest_init(&r->d, kind, size))
        return EIO;
    r->avail = written;
    r->done = 0;
    if (!threaded) {
        int e = hash_prefix(r, written);
        if (!e)
            r->done = written;
        return e;
    }
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    if (pthread_create(&r->thread, NULL, reader_main, r) != 0) {
        /* No thread: hash inline, as on a machine without a spare core. */
        pthread_cond_destroy(&r->cv);
        pthread_mutex_destroy(&r->mu);
        int e = hash_prefix(r, written);
        if (!e)
            r->done = written;
        return e;
    }
    r->running = 1;
    return 0;
}

int hash_reader_feed(hash_reader *r, const char *p, size_t n, int64_t avail)
{
    if (r->d.kind == HASH_NONE)
        return 0;
    if (!r->running) {
        r->avail = r->done = avail;
        return fl_digest_update(&r->d, p, n) ? 0 : EIO;
    }
    pthread_mutex_lock(&r->mu);
    r->avail = avail;
    if (r->avail - r->done >= HASH_WAKE)
        pthread_cond_broadcast(&r->cv);
    while (!r->err && r->avail - r->done > HASH_LAG_MAX && !stopped(r))
        pthread_cond_wait(&r->cv, &r->mu);
    pthread_mutex_unlock(&r->mu);
    return 0;
}

int hash_reader_drain(hash_reader *r)
{
    if (!r->running)
        return 0;
    pthread_mutex_lock(&r->mu);
    r->flush = 1;
    pthread_cond_broadcast(&r->cv);
    while (!r->err && r->done < r->avail && !stopped(r))
        pthread_cond_wait(&r->cv, &r->mu);
    int e = r->err, done = r->done >= r->avail;
    pthread_mutex_unlock(&r->mu);
    return e ? e : done ? 0 : EINTR;
}

int hash_reader_reset(hash_reader *r)
{
    if (!r->running)
        return fl_digest_init(&r->d, r->d.kind, r->d.size) ? 0 : EIO;
    pthread_mutex_lock(&r->mu);
    while (r->busy)
        pthread_cond_wait(&r->cv, &r->mu);
    r->avail = r->done = 0;
    r->err = r->flush = 0;
    int ok = fl_digest_init(&r->d, r->d.kind, r->d.size);
    pthread_mutex_unlock(&r->mu);
    return ok ? 0 : EIO;
}

int hash_reader_hex(hash_reader *r, char *hex, size_t cap)
{
    return fl_digest_hex(&r->d, hex, cap);
}

void hash_reader_free(hash_reader *r)
{
    if (r->running) {
        pthread_mutex_lock(&r->mu);
        r->quit = 1;
        pthread_cond_broadcast(&r->cv);
        pthread_mutex_unlock(&r->mu);
        pthread_join(r->thread, NULL);
        pthread_cond_destroy(&r->cv);
        pthread_mutex_destroy(&r->mu);
        r->running = 0;
    }
    fl_digest_free(&r->d);
}

/* ----------------------------------------------------------------------------
 * A whole file */

#define FILE_CHUNK (1u << 20)

fl_status fl_hash_fd(int fd, const char *path, int64_t size, char *sha256, char *gitsha1,
                     const atomic_int *stop, hash_progress_fn progress, void *progress_ctx,
                     fl_error *err)
{
    fl_digest s = {0}, g = {0};
    char *buf = malloc(FILE_CHUNK);
    fl_status st = FL_OK;
    if (!buf || (sha256 && !fl_digest_init(&s, HASH_SHA256, size)) ||
        (gitsha1 && !fl_digest_init(&g, HASH_GITSHA1, size))) {
        st = fl_fail(err, FL_EIO, "out of memory");
        goto done;
    }
    for (int64_t off = 0; off < size;) {
        if (fl_interrupted || (stop && *stop)) {
            st = fl_fail(err, FL_EINTR, "%s while hashing %s",
                         fl_interrupted ? "interrupted" : "stopped after another error", path);
            goto done;
        }
        size_t want = size - off < FILE_CHUNK ? (size_t)(size - off) : FILE_CHUNK;
        if (fl_pread_full(fd, buf, want, (uint64_t)off) != 0) {
            st = errno ? fl_fail(err, FL_EIO, "%s: read failed: %s", path, strerror(errno))
                       : fl_fail(err, FL_EIO, "%s: shorter than its %lld bytes (did it change?)",
                                 path, (long long)size);
            goto done;
        }
        if ((sha256 && !fl_digest_update(&s, buf, want)) ||
            (gitsha1 && !fl_digest_update(&g, buf, want))) {
            st = fl_fail(err, FL_EIO, "%s: digest failed", path);
            goto done;
        }
        off += (int64_t)want;
        if (progress)
            progress(progress_ctx, off);
    }
    if ((sha256 && !fl_digest_hex(&s, sha256, 65)) || (gitsha1 && !fl_digest_hex(&g, gitsha1, 41)))
        st = fl_fail(err, FL_EIO, "%s: digest failed", path);
done:
    fl_digest_free(&s);
    fl_digest_free(&g);
    free(buf);
    return st;
}

/* ---------------------------------------------------------------------------
 * a digest fed in order by several workers */

int ordered_digest_init(ordered_digest *o, hash_kind kind)
{
    memset(o, 0, sizeof *o);
    if (!fl_digest_init(&o->d, kind, 0))
        return 0;
    pthread_mutex_init(&o->mu, NULL);
    pthread_cond_init(&o->cv, NULL);
    return 1;
}

fl_status ordered_digest_wait(ordered_digest *o, size_t k, fl_error *err)
{
    pthread_mutex_lock(&o->mu);
    while (o->next != k && !o->failed && !fl_interrupted) {
        /* A signal sets fl_interrupted without waking anyone: look again
         * every 50 ms. */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 50000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&o->cv, &o->mu, &ts);
    }
    int ok = o->next == k && !o->failed;
    pthread_mutex_unlock(&o->mu);
    return ok ? FL_OK : fl_fail(err, FL_EINTR, "interrupted");
}

int ordered_digest_update(ordered_digest *o, const void *p, size_t n)
{
    return fl_digest_update(&o->d, p, n);
}

void ordered_digest_pass(ordered_digest *o)
{
    pthread_mutex_lock(&o->mu);
    o->next++;
    pthread_cond_broadcast(&o->cv);
    pthread_mutex_unlock(&o->mu);
}

void ordered_digest_abort(ordered_digest *o)
{
    pthread_mutex_lock(&o->mu);
    o->failed = 1;
    pthread_cond_broadcast(&o->cv);
    pthread_mutex_unlock(&o->mu);
}

void ordered_digest_free(ordered_digest *o)
{
    fl_digest_free(&o->d);
    pthread_cond_destroy(&o->cv);
    pthread_mutex_destroy(&o->mu);
}
