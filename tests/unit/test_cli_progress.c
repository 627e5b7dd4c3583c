/* test_cli_progress.c — the generic progress line and the terminal policy
 * (src/cli_progress.c; the CLI is not part of the library, so the file is
 * compiled in here).
 *
 * The line is drawn into a memory stream marked live by hand; expectations
 * are the literal text (percent, bytes, "--" before a rate means
 * anything), the rate and ETA recomputed from the elapsed time the test
 * measures itself, the erase sequence at the end of a phase, one --verbose
 * summary per phase even when several threads report at once, truncation
 * to the terminal width, and the TERM / NO_COLOR rules on a real
 * pseudo-terminal. */
#include "../../src/cli_progress.c"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>

#include "check.h"

static int starts(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

typedef struct {
    FILE *f;
    char *buf;
    size_t len;
    cli_progress p;
} sink;

static void sink_open(sink *s, int quiet, int verbose)
{
    s->buf = NULL;
    s->len = 0;
    s->f = open_memstream(&s->buf, &s->len);
    cli_progress_init(&s->p, s->f, quiet, verbose);
    s->p.live = !quiet;   /* as on a terminal */
}

/* The text written since the last call. */
static char *sink_take(sink *s, size_t *from)
{
    fflush(s->f);
    char *t = strndup(s->buf + *from, s->len - *from);
    *from = s->len;
    return t;
}

static void sink_close(sink *s)
{
    fclose(s->f);
    free(s->buf);
}

/* One update, and what it wrote. */
static char *step(sink *s, size_t *from, const char *phase, uint64_t done, uint64_t total)
{
    cli_progress_update(&s->p, phase, done, total);
    return sink_take(s, from);
}

static void test_line(void)
{
    sink s;
    size_t at = 0;
    sink_open(&s, 0, 1);
    char *t = step(&s, &at, "tensor check", 0, 1000);
    CHECK(!strcmp(t, "\rflashify: tensor check   0%  0 B / 1000 B  --  ETA --\033[K"), "first line: %s", t);
    free(t);

    double t0 = fl_now();
    fl_sleep(0.6);
    cli_progress_update(&s.p, "tensor check", 500, 1000);
    double el = fl_now() - t0;
    t = sink_take(&s, &at);
    /* "\rflashify: tensor check  50%  500 B / 1000 B  833 B/s  ETA 0:01\033[K" */
    double rate;
    int m, sec;
    int n = sscanf(t, "\rflashify: tensor check  50%%  500 B / 1000 B  %lf B/s  ETA %d:%d", &rate, &m, &sec);
    CHECK(n == 3, "half-way line: %s", t);
    CHECK(rate <= 500 / 0.6 + 1 && rate >= 500 / (el + 0.05) - 1, "rate %g for 500 B in %.2f s", rate, el);
    double left = 500 / rate;
    CHECK(abs(m * 60 + sec - (int)(left + 0.5)) <= 1, "ETA %d:%02d for %.2f s left", m, sec, left);
    CHECK(strstr(t, "\033[K") && !strchr(t, '\n'), "one line, erased to its end: %s", t);
    free(t);

    /* Routine updates within 0.1 s are not drawn. */
    t = step(&s, &at, "tensor check", 600, 1000);
    CHECK(!*t, "drawn again at once: %s", t);
    free(t);

    /* The end: the line goes, --verbose sums it up, later updates of the
     * same phase are ignored. */
    t = step(&s, &at, "tensor check", 1000, 1000);
    CHECK(starts(t, "\r\033[Kflashify: tensor check: 1000 B in ") && strstr(t, "/s\n"),
          "end of phase: %s", t);
    free(t);
    t = step(&s, &at, "tensor check", 1000, 1000);
    CHECK(!*t, "an ended phase drew again: %s", t);
    free(t);

    /* A new phase starts its own line; finishing erases it, no summary
     * for a phase that did not reach its total. */
    t = step(&s, &at, "forward pass (source)", 10, 4096);
    CHECK(starts(t, "\rflashify: forward pass (source)   0%  10 B / 4.0 KiB  --  ETA --"), "new phase: %s", t);
    free(t);
    cli_progress_finish(&s.p);
    t = sink_take(&s, &at);
    CHECK(!strcmp(t, "\r\033[K"), "finish: %s", t);
    free(t);
    sink_close(&s);
}

static void test_hours_and_width(void)
{
    sink s;
    size_t at = 0;
    sink_open(&s, 0, 0);
    cli_progress_update(&s.p, "writing", 0, 2000000000000ull);
    free(sink_take(&s, &at));
    fl_sleep(0.6);
    char *t = step(&s, &at, "writing", 1000000, 2000000000000ull);
    const char *e = strstr(t, "ETA ");
    int h = 0, m = -1, sec = -1;
    CHECK(e && sscanf(e, "ETA %d:%d:%d", &h, &m, &sec) == 3 && h > 100 && m < 60 && sec < 60,
          "hours ETA: %s", t);
    free(t);
    s.p.width = 24;
    fl_sleep(0.15);
    t = step(&s, &at, "writing", 2000000, 2000000000000ull);
    CHECK(!strcmp(t, "\rflashify: writing   0% \033[K"), "cut to 23 columns: '%s'", t);
    free(t);
    cli_progress_finish(&s.p);
    sink_close(&s);
}

/* A whole phase and a note, and what they wrote. */
static char *phase_and_note(sink *s)
{
    size_t at = 0;
    cli_progress_update(&s->p, "writing", 0, 10);
    cli_progress_update(&s->p, "writing", 10, 10);
    convert_progress_note(&s->p, "a note");
    cli_progress_finish(&s->p);
    return sink_take(s, &at);
}

static void test_quiet(void)
{
    sink s;
    sink_open(&s, 1, 1);
    char *t = phase_and_note(&s);
    CHECK(!*t, "-q printed: %s", t);
    free(t);
    sink_close(&s);

    /* Not live (no terminal) and not verbose: nothing but notes. */
    sink_open(&s, 0, 0);
    s.p.live = 0;
    t = phase_and_note(&s);
    CHECK(!strcmp(t, "flashify: a note\n"), "not a terminal: %s", t);
    free(t);
    sink_close(&s);
}

/* Workers report at once, out of order: one summary, the phase ends. */
typedef struct {
    cli_progress *p;
    _Atomic uint64_t *done;
} worker_arg;

static void *worker(void *ud)
{
    worker_arg *w = ud;
    for (int i = 0; i < 2000; i++) {
        uint64_t d = atomic_fetch_add(w->done, 1) + 1;
        cli_progress_update(w->p, "tensor check", d, 8000);
    }
    return NULL;
}

static void test_threads(void)
{
    sink s;
    size_t at = 0;
    sink_open(&s, 0, 1);
    _Atomic uint64_t done = 0;
    worker_arg w = {&s.p, &done};
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&th[i], NULL, worker, &w);
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    char *t = sink_take(&s, &at);
    const char *sum = strstr(t, "flashify: tensor check: 7.8 KiB in ");
    CHECK(sum && !strstr(sum + 1, "flashify: tensor check: "), "one summary: %s", t);
    CHECK(s.p.ended && s.p.done == 8000, "ended %d done %llu", s.p.ended, (unsigned long long)s.p.done);
    free(t);
    cli_progress_finish(&s.p);
    sink_close(&s);
}

/* The hub's lines name what each transfer does: a download, hashing a
 * file, an upload. */
static void test_hub_phases(void)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    hub_progress hp;
    hub_progress_init(&hp, f, 1, 0);
    static const struct {
        hub_phase phase;
        const char *running, *finished;
    } cases[] = {{HUB_PHASE_DOWNLOAD, "  a.safetensors ", "downloaded a.safetensors (1.0 KiB, "},
                 {HUB_PHASE_HASH, "  a.safetensors (hashing) ", "hashed a.safetensors (1.0 KiB, "},
                 {HUB_PHASE_UPLOAD, "  a.safetensors (uploading) ", "uploaded a.safetensors (1.0 KiB, "}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        hub_event ev = {.kind = HUB_EV_START, .phase = cases[i].phase, .slot = 0, .name = "a.safetensors",
                        .done = 0, .total = 1024, .all_done = 0, .all_total = 1024, .elapsed = 0.5};
        size_t at = len;
        hub_progress_render(&ev, &hp);
        fflush(f);
        CHECK(strstr(buf + at, cases[i].running), "phase %d running: %s", (int)cases[i].phase, buf + at);
        at = len;
        ev.kind = HUB_EV_DONE;
        ev.done = ev.all_done = 1024;
        hub_progress_render(&ev, &hp);
        fflush(f);
        CHECK(strstr(buf + at, cases[i].finished), "phase %d done: %s", (int)cases[i].phase, buf + at);
    }
    hub_progress_finish(&hp);
    fclose(f);
    free(buf);
}

/* TERM and NO_COLOR on a pseudo-terminal, and never on a pipe. */
static void test_terminal_policy(void)
{
    int master = posix_openpt(O_RDWR | O_NOCTTY);
    FILE *tty = master >= 0 && grantpt(master) == 0 && unlockpt(master) == 0
                    ? fopen(ptsname(master), "w") : NULL;
    if (!tty) {
        /* A chroot or container without /dev/pts: nothing to test on. */
        fprintf(stderr, "skipped: the terminal policy (no pseudo-terminal: %s)\n", strerror(errno));
        if (master >= 0)
            close(master);
        return;
    }
    int fds[2];
    CHECK(pipe(fds) == 0, "pipe");
    FILE *pipe_end = fdopen(fds[1], "w");

    setenv("TERM", "xterm-256color", 1);
    unsetenv("NO_COLOR");
    CHECK(cli_term_live(tty) && cli_term_color(tty), "xterm tty");
    CHECK(!cli_term_live(pipe_end) && !cli_term_color(pipe_end), "a pipe is not live");
    setenv("NO_COLOR", "1", 1);
    CHECK(cli_term_live(tty) && !cli_term_color(tty), "NO_COLOR=1");
    setenv("NO_COLOR", "", 1);
    CHECK(cli_term_color(tty), "an empty NO_COLOR leaves colour on (no-color.org)");
    setenv("TERM", "dumb", 1);
    CHECK(!cli_term_live(tty) && !cli_term_color(tty), "TERM=dumb");
    unsetenv("TERM");
    CHECK(!cli_term_live(tty) && !cli_term_color(tty), "TERM unset");

    fclose(tty);
    fclose(pipe_end);
    close(fds[0]);
    close(master);
}

int main(void)
{
    test_line();
    test_hours_and_width();
    test_quiet();
    test_threads();
    test_hub_phases();
    test_terminal_policy();
    if (failures)
        fprintf(stderr, "%d failure(s)\n", failures);
    return failures != 0;
}
