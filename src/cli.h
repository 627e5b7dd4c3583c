/* cli.h — the command line's own pieces (src/cli*.c; not the library).
 *
 * cli.c runs the commands, cli_opts.c parses argv against the option
 * table and prints --help from it, cli_progress.c draws progress. */
#ifndef FLASHIFY_CLI_H
#define FLASHIFY_CLI_H

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>

#include "flashify/hub.h"
#include "flashify/write.h"
#include "flashify/upload.h"
#include "flashify/util.h"

/* The subcommands, as bits: an option lists the ones it applies to. */
enum {
    CMD_CONVERT = 1,
    CMD_INSPECT = 2,
    CMD_VERIFY = 4,
    CMD_DOWNLOAD = 8,
    CMD_UPLOAD = 16,
    CMD_ALL = 31
};

/* Everything argv can set.  Zero is every option's default. */
typedef struct {
    const char *output, *plan_file;
    int keep_tied, keep_norms, partial, force, dry_run, strict, quiet, no_fsync, resume;
    uint64_t max_shard_size;
    int threads;
    uint64_t memory;
    const char *revision, *token;  /* hub */
    int offline, verbose, jobs;
    const char *push_to_hub, *message;  /* publishing */
    int private_repo, create_pr;
    int json, skip_forward;        /* verify / --strict */
    const char *tokens, *dump_logits;
    double tolerance;
    int help, version, list_options;
} cli_args;

/* Parses argv[first..] for command `cmd` (one CMD_* bit): options anywhere,
 * "--opt value" and "--opt=value", "--" ends the options.  Positional
 * arguments go to pos[0..max_pos).  Returns 0, or FL_EUSAGE after printing
 * the problem to stderr. */
int cli_parse(int argc, char **argv, int first, unsigned cmd, cli_args *a, const char **pos,
              int *n_pos, int max_pos);

/* The full --help text (usage, every option of the table, environment,
 * exit status, examples). */
void cli_help(FILE *f);

/* The option table for programs (hidden: --list-options; see cli_opts.c). */
void cli_list_options(FILE *f);

/* "flashify: <message>\nTry 'flashify --help'." on stderr; returns FL_EUSAGE. */
int cli_usage_error(const char *fmt, ...) FL_PRINTF(1, 2);

/* "64MiB", "1GiB", "500MB", "1048576" -> bytes; 0 when not a size. */
uint64_t cli_parse_size(const char *s);

/* ---- the terminal (cli_progress.c) ---------------------------------------
 * What may be drawn on a stream: live lines (redrawn in place with \r and
 * ANSI erase) only on a terminal whose TERM is set and not "dumb"; colour
 * only there and when NO_COLOR is unset or empty (https://no-color.org). */
int cli_term_live(FILE *f);
int cli_term_color(FILE *f);

/* "flashify: <kind>: <message>" on stderr, the kind ("error", "warning",
 * "note") in bold colour where cli_term_color(stderr) allows. */
void cli_diag(const char *kind, const char *fmt, ...) FL_PRINTF(2, 3);

/* ---- the environment (cli_env.c) ---------------------------------------
 * Fills every field of e from the environment (getenv; NULL when unset):
 * the one place the program reads a variable the library interprets. */
void cli_hub_env(hub_env *e);

/* ---- progress (cli_progress.c) ------------------------------------------
 * One generic line for any long operation that knows its total:
 *     flashify: tensor check  45%  1.2 GiB / 2.6 GiB  812.0 MiB/s  ETA 0:02
 * redrawn in place at most 10 times a second on a live terminal (see
 * cli_term_live), absent otherwise and with -q.  A new phase label starts a
 * new line (its own rate and ETA); a phase ends when done reaches total,
 * and --verbose then prints a summary line ("tensor check: 2.6 GiB in
 * 3.2 s, 812.0 MiB/s") whether or not stderr is a terminal.  Safe to call
 * from several worker threads at once: an update that finds another being
 * drawn is dropped (the next one catches up), phase changes and ends never
 * are. */
typedef struct {
    FILE *out;
    int live, quiet, verbose;        /* verbose: summaries (never with -q) */
    int width;                       /* terminal columns (0: unknown) */
    pthread_mutex_t mu;
    char phase[64];
    int ended;                       /* the phase reached its total */
    int shown;                       /* a live line is on screen */
    double t0, last;
    uint64_t done, total;
} cli_progress;

void cli_progress_init(cli_progress *p, FILE *out, int quiet, int verbose);
/* The callback form (verify_options.progress), with a cli_progress *. */
void cli_progress_update(void *ctx, const char *phase, uint64_t done, uint64_t total);
/* Erases the live line so that other output can follow (the next update
 * draws it again). */
void cli_progress_clear(cli_progress *p);
/* Erases the line and releases p. */
void cli_progress_finish(cli_progress *p);

/* Hub downloads: on a live terminal one line per active transfer (bytes,
 * rate, ETA) and a total line, redrawn at most 10 times a second;
 * otherwise one line per completed file; quiet: nothing.  --verbose lines
 * are printed in both modes. */
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

/* tty < 0: decide with cli_term_live(out). */
void hub_progress_init(hub_progress *p, FILE *out, int tty, int quiet);
/* A hub_progress_fn: pass it with a hub_progress * as the context. */
void hub_progress_render(const hub_event *ev, void *ctx);
/* Erases the live lines (call once hub_fetch_snapshot returned). */
void hub_progress_finish(hub_progress *p);

/* ---- publishing (cli_upload.c) ------------------------------------------*/

/* flashify upload FOLDER REPO. */
fl_status cli_upload(const cli_args *a, const char *folder, const char *repo, fl_error *err);

/* --push-to-hub, around a conversion. */
typedef struct {
    const cli_args *a;
    char *license;                 /* the source's (Hub API cardData), or NULL */
    convert_digests digests;       /* sha256 of every output file, made by the
                                      writer as it wrote them (write.h) */
} cli_publish_ctx;

/* Before the conversion: the repo id is one and a token is there, so a
 * long conversion does not end in a usage error. */
fl_status cli_publish_check(const cli_args *a, fl_error *err);
/* After the conversion (and --strict) succeeded: publishes dir. */
fl_status cli_publish(cli_publish_ctx *p, const char *dir, fl_error *err);
void cli_publish_ctx_free(cli_publish_ctx *p);

/* convert_options.progress and .note (write.h), with a cli_progress *:
 * the bytes written as the phase "writing", notes on stderr (not with -q). */
void convert_progress_bytes(void *ctx, uint64_t done, uint64_t total);
void convert_progress_note(void *ctx, const char *msg);

#endif
