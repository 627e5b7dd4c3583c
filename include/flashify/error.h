/* error.h — how the flashify library reports failure.
 *
 * Every library function that can fail takes an `fl_error *` and returns an
 * fl_status.  The library never prints and never exits: it fills the error
 * with one line that names the file, the tensor and the values that disagree,
 * and the CLI prints it and turns the status into the exit code. */
#ifndef FLASHIFY_ERROR_H
#define FLASHIFY_ERROR_H

#include <stdatomic.h>
#include <stddef.h>

/* The status doubles as the process exit code (documented in --help). */
typedef enum {
    FL_OK = 0,
    FL_EUSAGE = 1,     /* bad command line */
    FL_EINPUT = 2,     /* bad or unsupported input checkpoint / repo */
    FL_ENOTEQUIV = 3,  /* --strict / verify: output is not equivalent */
    FL_ENET = 4,       /* network / hub error */
    FL_EIO = 5,        /* local I/O error (disk full, permission, ...) */
    FL_EINTR = 130     /* interrupted by a signal (130 SIGINT, 143 SIGTERM) */
} fl_status;

#define FL_ERRMSG_MAX 1024

typedef struct {
    fl_status code;
    char msg[FL_ERRMSG_MAX];
} fl_error;

/* Fills `err` (if non-NULL) with a printf-style message and returns `code`,
 * so a failing path reads `return fl_fail(err, FL_EINPUT, "...", ...);`. */
fl_status fl_fail(fl_error *err, fl_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prepends "context: " to an existing message (used when a lower layer's
 * error needs the caller's file name).  Returns err->code. */
fl_status fl_prefix(fl_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Set by the CLI's SIGINT/SIGTERM handler; long loops poll it and fail with
 * FL_EINTR so temporary output is cleaned up by the normal error path.
 * Atomic (lock-free), so worker threads see the handler's store. */
extern atomic_int fl_interrupted;

#endif
