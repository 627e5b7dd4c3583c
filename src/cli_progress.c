/* cli_progress.c — the command line's progress lines (see cli.h): hub
 * download events and the conversion's bytes.  Presentation only; the
 * library reports progress through callbacks and never prints. */
#include "cli.h"

#include <string.h>
#include <time.h>
#include <unistd.h>


/* "1.5 MiB" style, in a caller buffer. */
static const char *human(char *buf, size_t n, double b)
{
    static const char *unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (b >= 1024 && u < 4)
        b /= 1024, u++;
    snprintf(buf, n, u ? "%.1f %s" : "%.0f %s", b, unit[u]);
    return buf;
}

void hub_progress_init(hub_progress *p, FILE *out, int tty, int quiet)
{
    memset(p, 0, sizeof *p);
    p->out = out;
    p->tty = tty < 0 ? isatty(fileno(out)) : tty;
    p->quiet = quiet;
    p->t0 = fl_now();
}

static void erase(hub_progress *p)
{
    if (p->drawn) {
        fprintf(p->out, "\r\033[%dA\033[J", p->drawn);
        p->drawn = 0;
    }
}

static void draw(hub_progress *p)
{
    char a[32], b[32], r[32];
    int lines = 0;
    for (int i = 0; i < PROGRESS_SLOTS; i++) {
        if (!p->slot[i].active)
            continue;
        double rate = p->slot[i].elapsed > 0 ? p->slot[i].done / p->slot[i].elapsed : 0;
        fprintf(p->out, "  %-40.40s %10s / %-10s %10s/s\n", p->slot[i].name,
                human(a, sizeof a, (double)p->slot[i].done),
                human(b, sizeof b, (double)p->slot[i].total), human(r, sizeof r, rate));
        lines++;
    }
    double el = fl_now() - p->t0;
    double rate = el > 0 ? p->all_done / el : 0;
    double left = p->all_total - p->all_done;
    char eta[32] = "--";
    if (rate > 0 && left > 0) {
        long s = (long)(left / rate);
        snprintf(eta, sizeof eta, "%ld:%02ld", s / 60, s % 60);
    }
    int pct = p->all_total > 0 ? (int)(100.0 * p->all_done / p->all_total) : 0;
    fprintf(p->out, "  total %3d%% %10s / %-10s %10s/s  ETA %s\n", pct,
            human(a, sizeof a, (double)p->all_done), human(b, sizeof b, (double)p->all_total),
            human(r, sizeof r, rate), eta);
    lines++;
    p->drawn = lines;
    p->last_draw = fl_now();
    fflush(p->out);
}

/* What a finished file line says, by phase. */
static const char *const VERB[] = {
    [HUB_PHASE_DOWNLOAD] = "downloaded",
    [HUB_PHASE_HASH] = "hashed",
    [HUB_PHASE_UPLOAD] = "uploaded",
};

void hub_progress_render(const hub_event *ev, void *ctx)
{
    hub_progress *p = ctx;
    if (ev->kind != HUB_EV_LOG && ev->phase != p->phase) {
        /* Hashing, then uploading: each phase has its own total and rate. */
        if (p->tty)
            erase(p);
        memset(p->slot, 0, sizeof p->slot);
        p->phase = ev->phase;
        p->t0 = fl_now();
        p->nfiles = 0;
    }
    p->all_done = ev->all_done;
    p->all_total = ev->all_total;
    if (ev->kind == HUB_EV_LOG) {
        if (p->tty)
            erase(p);
        fprintf(p->out, "hub: %s\n", ev->msg);
        if (p->tty)
            draw(p);
        return;
    }
    if (p->quiet)
        return;
    int s = ev->slot >= 0 && ev->slot < PROGRESS_SLOTS ? ev->slot : 0;
    char a[32], r[32];
    switch (ev->kind) {
    case HUB_EV_START:
        snprintf(p->slot[s].name, sizeof p->slot[s].name, "%s", ev->name);
        p->slot[s].active = 1;
        /* fall through */
    case HUB_EV_BYTES:
        p->slot[s].done = ev->done;
        p->slot[s].total = ev->total;
        p->slot[s].elapsed = ev->elapsed;
        if (p->tty && (ev->kind == HUB_EV_START || fl_now() - p->last_draw >= 0.1)) {
            erase(p);
            draw(p);
        }
        break;
    case HUB_EV_IDLE:
        p->slot[s].active = 0;
        break;
    case HUB_EV_DONE:
        p->slot[s].active = 0;
        p->nfiles++;
        if (p->tty)
            erase(p);
        fprintf(p->out, "%s %s (%s, %s/s)\n", VERB[ev->phase], ev->name,
                human(a, sizeof a, (double)ev->total),
                human(r, sizeof r, ev->elapsed > 0 ? ev->total / ev->elapsed : 0));
        if (p->tty)
            draw(p);
        else
            fflush(p->out);
        break;
    default:
        break;
    }
}

void hub_progress_finish(hub_progress *p)
{
    if (p->tty)
        erase(p);
    fflush(p->out);
}

/* ---------------------------------------------------------------------------
 * conversion */

void convert_progress_init(convert_progress *p, int quiet)
{
    memset(p, 0, sizeof *p);
    p->quiet = quiet;
    p->tty = !quiet && isatty(2);
    p->start = fl_now();
}

void convert_progress_bytes(void *ctx, uint64_t done, uint64_t total)
{
    convert_progress *p = ctx;
    if (!p->tty)
        return;
    double t = fl_now();
    if (done < total && t - p->last < 0.2)
        return;
    p->last = t;
    double rate = done / (t - p->start + 1e-9);
    double eta = rate > 0 ? (double)(total - done) / rate : 0;
    fprintf(stderr, "\rflashify: writing %5.1f%%  %.2f / %.2f GB  %.0f MB/s  ETA %.0fs   ",
            total ? 100.0 * (double)done / (double)total : 100.0, done / 1e9, total / 1e9,
            rate / 1e6, eta);
    if (done >= total)
        fputc('\n', stderr);
}

void convert_progress_note(void *ctx, const char *msg)
{
    convert_progress *p = ctx;
    if (!p->quiet)
        fprintf(stderr, "%sflashify: %s\n", p->tty ? "\r" : "", msg);
}
