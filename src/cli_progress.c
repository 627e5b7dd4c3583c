/* cli_progress.c — what the command line draws on the terminal (see
 * cli.h): the terminal policy (live lines, colour), coloured diagnostics,
 * the generic progress line of every long operation, and the hub's
 * per-transfer lines.  Presentation only; the library reports progress
 * through callbacks and never prints. */
#include "cli.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

/* ---------------------------------------------------------------------------
 * the terminal */

int cli_term_live(FILE *f)
{
    const char *term = getenv("TERM");
    return isatty(fileno(f)) && term && *term && strcmp(term, "dumb") != 0;
}

int cli_term_color(FILE *f)
{
    const char *no = getenv("NO_COLOR");
    return cli_term_live(f) && !(no && *no);
}

/* The colours gcc uses for the same words. */
static const char *diag_color(const char *kind)
{
    if (!strcmp(kind, "error"))
        return "\033[1;31m";
    if (!strcmp(kind, "warning"))
        return "\033[1;35m";
    return "\033[1;36m";
}

void cli_diag(const char *kind, const char *fmt, ...)
{
    int color = cli_term_color(stderr);
    fprintf(stderr, "flashify: %s%s:%s ", color ? diag_color(kind) : "", kind, color ? "\033[0m" : "");
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

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

/* "m:ss" or "h:mm:ss" for the time `left` bytes take at `rate` ("--"
 * while there is no rate yet). */
static const char *eta(char *buf, size_t n, double left, double rate)
{
    if (!(rate > 0) || !(left >= 0) || left / rate > 1e7) {
        snprintf(buf, n, "--");
        return buf;
    }
    long s = (long)(left / rate + 0.5);
    if (s >= 3600)
        snprintf(buf, n, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
    else
        snprintf(buf, n, "%ld:%02ld", s / 60, s % 60);
    return buf;
}

static int term_width(FILE *f)
{
    struct winsize ws;
    if (ioctl(fileno(f), TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
        return ws.ws_col;
    return 0;
}

/* ---------------------------------------------------------------------------
 * the generic progress line */

void cli_progress_init(cli_progress *p, FILE *out, int quiet, int verbose)
{
    memset(p, 0, sizeof *p);
    p->out = out;
    p->quiet = quiet;
    p->live = !quiet && cli_term_live(out);
    p->verbose = verbose && !quiet;
    p->width = p->live ? term_width(out) : 0;
    pthread_mutex_init(&p->mu, NULL);
}

static void erase_line(cli_progress *p)
{
    if (p->shown) {
        fputs("\r\033[K", p->out);
        fflush(p->out);
        p->shown = 0;
    }
}

static void draw_line(cli_progress *p, double now)
{
    char a[32], b[32], r[32] = "--", e[32] = "--", line[256];
    double el = now - p->t0;
    double rate = el > 0 ? (double)p->done / el : 0;
    int pct = p->total ? (int)(100.0 * (double)p->done / (double)p->total) : 100;
    /* Too early for a rate that means anything: none yet, and no ETA. */
    if (el >= 0.5 && p->done > 0) {
        human(r, sizeof r - 2, rate);
        strcat(r, "/s");
        eta(e, sizeof e, (double)(p->total - p->done), rate);
    }
    int n = snprintf(line, sizeof line, "flashify: %s %3d%%  %s / %s  %s  ETA %s", p->phase, pct,
                     human(a, sizeof a, (double)p->done), human(b, sizeof b, (double)p->total), r,
                     e);
    /* A line wider than the terminal would wrap, and \r would then only
     * go back to the start of its last row. */
    if (p->width > 1 && n >= p->width)
        line[p->width - 1] = '\0';
    fprintf(p->out, "\r%s\033[K", line);
    fflush(p->out);
    p->shown = 1;
    p->last = now;
}

/* Ends the current phase: the line goes, and --verbose says how it went. */
static void end_phase(cli_progress *p, double now)
{
    erase_line(p);
    if (p->verbose && !p->ended && p->phase[0] && p->done >= p->total) {
        char a[32], r[32];
        double el = now - p->t0;
        fprintf(p->out, "flashify: %s: %s in %.1f s, %s/s\n", p->phase,
                human(a, sizeof a, (double)p->total), el,
                human(r, sizeof r, el > 0 ? (double)p->total / el : 0));
        fflush(p->out);
    }
    p->ended = 1;
}

void cli_progress_update(void *ctx, const char *phase, uint64_t done, uint64_t total)
{
    cli_progress *p = ctx;
    if (!p->live && !p->verbose)
        return;
    int new_phase = strncmp(phase, p->phase, sizeof p->phase - 1) != 0;
    /* Routine updates may be dropped while another thread draws; a phase
     * change or the end of one must not be. */
    if (new_phase || done >= total)
        pthread_mutex_lock(&p->mu);
    else if (pthread_mutex_trylock(&p->mu) != 0)
        return;
    double now = fl_now();
    if (strncmp(phase, p->phase, sizeof p->phase - 1) != 0) {
        if (p->phase[0] && !p->ended)
            end_phase(p, now);
        snprintf(p->phase, sizeof p->phase, "%s", phase);
        p->t0 = now;
        p->last = 0;
        p->done = 0;
        p->ended = 0;
    }
    if (!p->ended) {
        if (done > p->done)
            p->done = done;   /* workers may report out of order */
        p->total = total;
        if (p->done >= p->total)
            end_phase(p, now);
        else if (p->live && now - p->last >= 0.1)
            draw_line(p, now);
    }
    pthread_mutex_unlock(&p->mu);
}

void cli_progress_clear(cli_progress *p)
{
    pthread_mutex_lock(&p->mu);
    erase_line(p);
    pthread_mutex_unlock(&p->mu);
}

void cli_progress_finish(cli_progress *p)
{
    cli_progress_clear(p);
    pthread_mutex_destroy(&p->mu);
}

/* ---------------------------------------------------------------------------
 * conversion */

void convert_progress_bytes(void *ctx, uint64_t done, uint64_t total)
{
    cli_progress_update(ctx, "writing", done, total);
}

void convert_progress_note(void *ctx, const char *msg)
{
    cli_progress *p = ctx;
    if (p->quiet)
        return;
    cli_progress_clear(p);
    fprintf(p->out, "flashify: %s\n", msg);
}

/* ---------------------------------------------------------------------------
 * hub downloads */

void hub_progress_init(hub_progress *p, FILE *out, int tty, int quiet)
{
    memset(p, 0, sizeof *p);
    p->out = out;
    p->tty = tty < 0 ? cli_term_live(out) : tty;
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
    char a[32], b[32], r[32], e[32];
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
    int pct = p->all_total > 0 ? (int)(100.0 * p->all_done / p->all_total) : 0;
    fprintf(p->out, "  total %3d%% %10s / %-10s %10s/s  ETA %s\n", pct,
            human(a, sizeof a, (double)p->all_done), human(b, sizeof b, (double)p->all_total),
            human(r, sizeof r, rate), eta(e, sizeof e, (double)(p->all_total - p->all_done), rate));
    lines++;
    p->drawn = lines;
    p->last_draw = fl_now();
    fflush(p->out);
}

/* How each hub phase shows: after the file's name while it runs, and the
 * word for it when the file is done. */
static const struct {
    const char *running, *finished;
} PHASE_WORDS[] = {
    [HUB_PHASE_DOWNLOAD] = {"", "downloaded"},
    [HUB_PHASE_HASH] = {" (hashing)", "hashed"},
    [HUB_PHASE_UPLOAD] = {" (uploading)", "uploaded"},
};

void hub_progress_render(const hub_event *ev, void *ctx)
{
    hub_progress *p = ctx;
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
    size_t ph = (size_t)ev->phase < sizeof PHASE_WORDS / sizeof PHASE_WORDS[0] ? (size_t)ev->phase : 0;
    char a[32], r[32];
    switch (ev->kind) {
    case HUB_EV_START:
        snprintf(p->slot[s].name, sizeof p->slot[s].name, "%s%s", ev->name, PHASE_WORDS[ph].running);
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
    case HUB_EV_DONE:
        p->slot[s].active = 0;
        p->nfiles++;
        if (p->tty)
            erase(p);
        fprintf(p->out, "%s %s (%s, %s/s)\n", PHASE_WORDS[ph].finished, ev->name,
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
