/* forward_gemma3n.c — placeholder */
#include "forward_internal.h"
static fl_status g3n_open(fwd_model *m, const char *prefix, fl_error *err)
{
    (void)m, (void)prefix;
    return fl_fail(err, FL_EINPUT, "gemma3n: not yet");
}
static fl_status g3n_run(const fwd_model *m, const int32_t *tokens, float *x, long T, struct fwd_bufs *b, fl_error *err)
{
    (void)m, (void)tokens, (void)x, (void)T, (void)b;
    return fl_fail(err, FL_EINPUT, "gemma3n: not yet");
}
const fwd_block FWD_GEMMA3N = {g3n_open, g3n_run, NULL, NULL};
