/* fuzz_st_header.c — libFuzzer harness for the safetensors header reader
 * and writer.
 *
 * Each input is tried three ways: as a whole .safetensors file in memory
 * (u64 length | header | data), as a header alone, and through
 * st_read_header on a memfd.  Properties checked beyond "no crash, no
 * sanitizer report": a rejection leaves a one-line message naming the file
 * and an empty header; an accepted header has every tensor inside the
 * file; and st_layout of an accepted header renders a header that parses
 * back to the same tensors and metadata (writer/reader round trip). */
#include "fuzz_util.h"
#include "flashify/safetensors.h"

#include <sys/mman.h>

static void check_rejection(const char *what, fl_status st, const fl_error *err, const st_header *h)
{
    size_t n = strlen(what);
    if (st != FL_EINPUT && st != FL_EIO) abort();
    if (strncmp(err->msg, what, n) != 0 || err->msg[n] != ':' || strchr(err->msg, '\n')) {
        fprintf(stderr, "bad message: %s\n", err->msg);
        abort();
    }
    if (h->tensors || h->meta || h->n_tensors || h->n_meta) abort();
}

static void check_accepted(const st_header *h)
{
    for (size_t i = 0; i < h->n_tensors; i++) {
        const st_tensor *t = &h->tensors[i];
        if (t->begin > t->end || h->data_start + t->end > h->file_size) abort();
        if (!t->name[0] || strlen(t->name) > ST_MAX_NAME || t->ndim > ST_MAX_DIMS) abort();
    }
}

static void round_trip(const st_header *h)
{
    size_t n = h->n_tensors;
    st_tensor *ts = calloc(n ? n : 1, sizeof *ts);
    size_t *order = calloc(n ? n : 1, sizeof *order);
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++) {
        ts[i] = h->tensors[i];
        ts[i].begin = 0;
        ts[i].end = st_nbytes(&h->tensors[i]);
        total += ts[i].end;
    }
    char *hdr;
    size_t hsz;
    fl_error err;
    if (st_layout("rt", ts, n, h->meta, h->n_meta, order, &hdr, &hsz, &err) != FL_OK) {
        fprintf(stderr, "st_layout refused an accepted header: %s\n", err.msg);
        abort();
    }
    uint64_t len = 0;
    for (int i = 7; i >= 0; i--) len = len << 8 | (unsigned char)hdr[i];
    if (len != hsz - 8 || len % 8) abort();
    st_header back;
    if (st_parse_header("rt", hdr + 8, hsz - 8, hsz + total, &back, &err) != FL_OK) {
        fprintf(stderr, "written header does not read back: %s\n%.*s\n", err.msg, (int)(hsz - 8), hdr + 8);
        abort();
    }
    if (back.n_tensors != n) abort();
    for (size_t i = 0; i < n; i++) {
        const st_tensor *a = &h->tensors[i], *b = st_header_find(&back, a->name);
        if (!b || b->dtype != a->dtype || b->ndim != a->ndim || st_nbytes(b) != st_nbytes(a) ||
            memcmp(a->shape, b->shape, sizeof a->shape) != 0 || b->begin != ts[i].begin)
            abort();
    }
    for (size_t i = 0; i < h->n_meta; i++) {
        const char *v = st_header_meta(&back, h->meta[i].key);
        if (!v || strcmp(v, h->meta[i].value) != 0) abort();
    }
    if (back.n_meta != h->n_meta + (st_header_meta(h, "format") ? 0 : 1)) abort();
    st_header_free(&back);
    free(hdr);
    free(ts);
    free(order);
}

static void try_parse(const char *what, const char *json, size_t len, uint64_t file_size)
{
    st_header h;
    fl_error err;
    fl_status st = st_parse_header(what, json, len, file_size, &h, &err);
    if (st == FL_OK) {
        check_accepted(&h);
        round_trip(&h);
        st_header_free(&h);
    } else {
        check_rejection(what, st, &err, &h);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* 1. A whole file. */
    if (size >= 8) {
        uint64_t n = 0;
        for (int i = 7; i >= 0; i--) n = n << 8 | data[i];
        if (n <= size - 8)
            try_parse("file", (const char *)data + 8, (size_t)n, size);
    }
    /* 2. A header alone, in a file with no data. */
    try_parse("header", (const char *)data, size, 8 + (uint64_t)size);

    /* 3. The file through st_read_header (length checks, pread). */
    static int mfd = -1;
    if (mfd < 0) {
        mfd = memfd_create("fuzz.safetensors", MFD_CLOEXEC);
        if (mfd < 0) abort();
    }
    if (ftruncate(mfd, 0) != 0 || (size && pwrite(mfd, data, size, 0) != (ssize_t)size)) abort();
    st_header h;
    fl_error err;
    fl_status st = st_read_header("memfd", mfd, &h, &err);
    if (st == FL_OK) {
        check_accepted(&h);
        st_header_free(&h);
    } else {
        check_rejection("memfd", st, &err, &h);
    }
    return 0;
}
