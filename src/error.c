/* error.c — filling fl_error (see error.h). */
#include "flashify/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

atomic_int fl_interrupted = 0;

/* Messages quote names taken from hostile files (tensor names, JSON keys,
 * paths): control characters become '?' so a message stays one line. */
static void one_line(char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            *s = '?';
}

fl_status fl_fail(fl_error *err, fl_status code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        one_line(err->msg);
        err->code = code;
    }
    return code;
}

fl_status fl_prefix(fl_error *err, const char *fmt, ...)
{
    if (!err)
        return FL_EINPUT;
    char prefix[FL_ERRMSG_MAX], old[FL_ERRMSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof old);
    /* Two messages of up to FL_ERRMSG_MAX may not fit in one: keep the
     * start and say that the rest was cut. */
    if (snprintf(err->msg, sizeof err->msg, "%s: %s", prefix, old) >= (int)sizeof err->msg)
        memcpy(err->msg + sizeof err->msg - 4, "...", 4);
    one_line(err->msg);
    return err->code;
}
