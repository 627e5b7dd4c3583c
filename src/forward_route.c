/* forward_route.c — recording and replaying MoE routing decisions
 * (forward.h, fwd_route_record).
 *
 * The comparison in `flashify verify` runs the source and the output on the
 * same tokens.  A correct fold changes each router logit by a rounding; at
 * a near tie that can flip a top-k choice, and one flipped top-1 expert
 * (Llama 4) changes a position's logits by far more than any tolerance.
 * Pinning the output's choices to the source's keeps the comparison about
 * the fold: the output's own router still weighs the pinned experts (a
 * wrong router fold still shows), and the flips are counted and reported. */
#include "forward_internal.h"

#include <stdlib.h>

void fwd_route_record(fwd_model *m)
{
    m->rp = &m->routing;
    m->routing.mode = 1;
}

void fwd_route_replay(fwd_model *m, const fwd_model *from)
{
    m->rp = &m->routing;
    m->routing.mode = 2;
    m->routing.from = &from->routing;
}

void fwd_route_stats(const fwd_model *m, long *decisions, long *flips, int *lost)
{
    *decisions = m->routing.decisions;
    *flips = m->routing.flips;
    *lost = m->routing.lost;
}

/* Called from fwd_logits before a pass. */
void fwd_route_reset(fwd_model *m)
{
    m->routing.n = m->routing.pos = 0;
    m->routing.decisions = m->routing.flips = 0;
    m->routing.lost = 0;
    fwd_index_rec_rewind(m->routing.idx);
}

static int same_set(const long *a, const long *b, long K)
{
    for (long i = 0; i < K; i++) {
        int found = 0;
        for (long j = 0; j < K && !found; j++)
            found = a[i] == b[j];
        if (!found)
            return 0;
    }
    return 1;
}

int fwd_route_pin(const fwd_model *m, long *sel, long E, long K)
{
    struct fwd_routing *r = m->rp;
    if (!r || r->mode == 0 || r->lost)
        return 0;
    r->decisions++;
    if (r->mode == 1) {
        if (r->n + (size_t)K > r->cap) {
            size_t cap = r->cap ? r->cap * 2 : 1024;
            while (cap < r->n + (size_t)K)
                cap *= 2;
            long *p = realloc(r->sel, cap * sizeof *p);
            if (!p) {
                r->lost = 1;
                return 0;
            }
            r->sel = p;
            r->cap = cap;
        }
        for (long k = 0; k < K; k++)
            r->sel[r->n++] = sel[k];
        return 0;
    }
    const struct fwd_routing *f = r->from;
    if (!f || f->lost || r->pos + (size_t)K > f->n) {
        r->lost = 1;
        return 0;
    }
    const long *want = f->sel + r->pos;
    for (long k = 0; k < K; k++)
        if (want[k] < 0 || want[k] >= E) {
            r->lost = 1;
            return 0;
        }
    r->pos += (size_t)K;
    if (same_set(sel, want, K))
        return 0;
    r->flips++;
    for (long k = 0; k < K; k++)
        sel[k] = want[k];
    return 1;
}
