/* progress.h — rendering hub download events for the CLI (hub.h).
 *
 * On a terminal: one live line per active transfer (bytes, rate, ETA) and a
 * total line, redrawn at most 10 times a second.  Otherwise: one line per
 * completed file.  Quiet: nothing.  --verbose lines are printed in both
 * modes.  Output goes to the stream the caller gives (the CLI: stderr). */
#ifndef FLASHIFY_PROGRESS_H
#define FLASHIFY_PROGRESS_H

#include <stdio.h>

#include "flashify/hub.h"

#define PROGRESS_SLOTS 16

typedef struct {
    FILE *out;
    int tty, quiet;
    int drawn;                       /* live lines currently on screen */
    double last_draw, t0;
    int nfiles;                      /* files completed */
    struct {
        char name[96];
        long long done, total;
        double elapsed;
        int active;
    } slot[PROGRESS_SLOTS];
    long long all_done, all_total;
} hub_progress;

/* tty < 0: decide with isatty(fileno(out)). */
void hub_progress_init(hub_progress *p, FILE *out, int tty, int quiet);

/* A hub_progress_fn: pass it with a hub_progress * as the context. */
void hub_progress_render(const hub_event *ev, void *ctx);

/* Erases the live lines (call once hub_fetch_snapshot returned). */
void hub_progress_finish(hub_progress *p);

#endif
