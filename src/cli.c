/* cli.c — the flashify command line.
 *
 * A thin layer over the library: parse argv (options anywhere), call the
 * stages, print the library's error line and turn its status into the exit
 * code.  Nothing here knows about tensors. */
#include "flashify/checkpoint.h"
#include "flashify/error.h"
#include "flashify/hub.h"
#include "flashify/progress.h"
#include "flashify/util.h"
#include "flashify/plan.h"
#include "flashify/verify.h"
#include "flashify/write.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char USAGE[] =
    "usage: flashify SOURCE [-o OUTPUT] [options]\n"
    "       flashify inspect PATH\n"
    "       flashify verify SOURCE OUTPUT [--json] [--tokens IDS] [--tolerance X]\n"
    "       flashify download REPO_ID [--revision REV]\n"
    "\n"
    "Folds every RMSNorm weight of a Hugging Face checkpoint into the linear layers\n"
    "that read it (FlashNorm, arXiv 2407.09577) and writes a new checkpoint that\n"
    "computes the same function without norm weights.\n"
    "\n"
    "SOURCE is a checkpoint directory (config.json + *.safetensors) or a Hugging\n"
    "Face repo id (org/name[@revision]), downloaded into the shared HF cache.\n"
    "\n"
    "Options:\n"
    "  -o, --output DIR   output directory (default: ./<name>-FlashNorm)\n"
    "  --keep-tied        keep tied embeddings; leave the final norm unfolded\n"
    "  --keep-norms       write folded norms as identity (1, or 0 for Gemma's 1+w)\n"
    "                     instead of removing them, for loaders that need them\n"
    "  --strict           verify the output against the source before it is moved\n"
    "                     into place (exit 3 if not equivalent)\n"
    "  --plan FILE        fold plan for a model_type flashify does not know (README)\n"
    "  --dry-run          print the plan and sizes; write nothing\n"
    "  --force            replace an existing output directory\n"
    "  --max-shard-size SIZE  re-shard the output (e.g. 5GB, decimal like the Hub;\n"
    "                     default: keep the source's files)\n"
    "  --resume           continue an interrupted conversion from its finished\n"
    "                     shards (and keep them if this run is interrupted too)\n"
    "  --threads N        worker threads (default: one per core)\n"
    "  --memory SIZE      fold buffer budget, e.g. 16MiB, 1GiB (default 48MiB)\n"
    "  --no-fsync         skip fsync before the final rename (faster, less safe)\n"
    "  -q, --quiet        print errors only\n"
    "  -h, --help         this help;  --version  the version\n"
    "\n"
    "verify and --strict:\n"
    "  --json             print the equivalence report as JSON\n"
    "  --tokens IDS       token ids for the forward check, e.g. 1,2,3 (default: BOS\n"
    "                     and 16 fixed ids)\n"
    "  --tolerance X      max logit difference relative to the logit scale (default\n"
    "                     by dtype: BF16 0.1, F16 0.02, F32/F64 1e-4)\n"
    "  --skip-forward     tensor and config check only\n"
    "\n"
    "Hub (SOURCE or download is a repo id; HF_ENDPOINT, HF_TOKEN, HF_HOME apply):\n"
    "  --revision REV     branch, tag or commit (default: main, or org/name@REV)\n"
    "  --token TOKEN      Hugging Face token (default: HF_TOKEN or $HF_HOME/token)\n"
    "  --offline          use the HF cache only (also HF_HUB_OFFLINE=1)\n"
    "  --jobs N           parallel downloads (default 4)\n"
    "  --verbose          log every request (the token is never shown)\n"
    "\n"
    "Examples:\n"
    "  flashify ./Llama-3.2-1B -o ./Llama-3.2-1B-FlashNorm\n"
    "  flashify ./Llama-3.2-1B --dry-run\n"
    "  flashify ./gemma-2-2b --keep-norms --strict\n"
    "  flashify meta-llama/Llama-3.2-1B -o out\n"
    "  flashify verify ./Llama-3.2-1B ./Llama-3.2-1B-FlashNorm\n"
    "\n"
    "Exit status: 0 success, 1 usage, 2 bad or unsupported input, 3 not equivalent,\n"
    "4 network, 5 I/O, 130/143 interrupted.\n";

typedef struct {
    const char *source, *output, *plan_file;
    int keep_tied, keep_norms, force, dry_run, strict, quiet, no_fsync, resume;
    uint64_t max_shard_size;
    int threads;
    uint64_t memory;
    const char *revision, *token;  /* hub options */
    int offline, verbose, jobs;
    int json, skip_forward;        /* verify / --strict */
    const char *tokens, *dump_logits;
    double tolerance;
} cli_args;

static volatile sig_atomic_t last_signal;

static void on_signal(int sig)
{
    int saved = errno;   /* the interrupted code may be about to read errno */
    if (atomic_load(&fl_interrupted)) {
        /* Second Ctrl-C: the user insists. */
        signal(sig, SIG_DFL);
        raise(sig);
    }
    last_signal = sig;
    atomic_store(&fl_interrupted, 1);
    errno = saved;
}

static int exit_code(fl_status s)
{
    if (s == FL_EINTR)
        return last_signal == SIGTERM ? 143 : 130;
    return (int)s;
}

static int fail(const fl_error *err)
{
    fprintf(stderr, "flashify: error: %s\n", err->msg);
    return exit_code(err->code);
}

static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "flashify: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nTry 'flashify --help'.\n");
    return FL_EUSAGE;
}

/* "64MiB", "1GiB", "500MB", "1048576" -> bytes; 0 on error. */
static uint64_t parse_size(const char *s)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || v <= 0 || !isfinite(v))
        return 0;
    static const struct { const char *suffix; double mult; } units[] = {
        {"", 1}, {"B", 1}, {"K", 1024.0}, {"KiB", 1024.0}, {"KB", 1e3},
        {"M", 1048576.0}, {"MiB", 1048576.0}, {"MB", 1e6},
        {"G", 1073741824.0}, {"GiB", 1073741824.0}, {"GB", 1e9},
        {"T", 1099511627776.0}, {"TiB", 1099511627776.0}, {"TB", 1e12}};
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
        if (strcmp(end, units[i].suffix) == 0) {
            double b = v * units[i].mult;
            return b >= 1 && b < 1.8e19 ? (uint64_t)b : 0;
        }
    return 0;
}


/* ---------------------------------------------------------------------------
 * progress */

typedef struct {
    int tty, quiet;
    double start, last;
} progress_state;

static void on_progress(void *ctx, uint64_t done, uint64_t total)
{
    progress_state *p = ctx;
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

static void on_note(void *ctx, const char *msg)
{
    progress_state *p = ctx;
    if (!p->quiet)
        fprintf(stderr, "%sflashify: %s\n", p->tty ? "\r" : "", msg);
}

/* ---------------------------------------------------------------------------
 * printing the plan */

/* The description of group i: its norm and consumer patterns. */
static void group_line(const fold_group *g, char *out, size_t cap)
{
    size_t n = 0;
    char pat[512];
    plan_name_pattern(g->norm, pat, sizeof pat);
    n += (size_t)snprintf(out + n, cap - n, "%s ->", pat);
    for (size_t c = 0; c < g->n_consumers && n < cap; c++) {
        if (c == 8) {
            snprintf(out + n, cap - n, " ... (%zu matrices)", g->n_consumers);
            return;
        }
        plan_name_pattern(g->consumers[c], pat, sizeof pat);
        n += (size_t)snprintf(out + n, cap - n, " %s", pat);
    }
}

static void print_plan(FILE *f, const checkpoint *ck, const fold_plan *p)
{
    fprintf(f, "model_type %s (table entry %s), %ld layers, hidden %ld\n", ck->cfg.model_type,
            p->arch->model_type, p->n_layers, ck->cfg.hidden_size);
    fprintf(f, "fold plan: %zu norms, gain %s\n", p->n_groups,
            p->arch->gain == GAIN_ONE_PLUS_W ? "1 + w" : "w");
    char *seen = calloc(p->n_groups + 1, 1);
    char line[2048], other[2048];
    for (size_t i = 0; seen && i < p->n_groups; i++) {
        if (seen[i])
            continue;
        group_line(&p->groups[i], line, sizeof line);
        size_t count = 0;
        for (size_t j = i; j < p->n_groups; j++) {
            if (seen[j])
                continue;
            group_line(&p->groups[j], other, sizeof other);
            if (strcmp(line, other) == 0) {
                seen[j] = 1;
                count++;
            }
        }
        fprintf(f, "  %s", line);
        if (count > 1)
            fprintf(f, "   (%zu layers)", count);
        fputc('\n', f);
    }
    free(seen);
    if (p->n_kept) {
        fprintf(f, "kept, not folded:\n");
        char last[512] = "", pat[512];
        for (size_t i = 0; i < p->n_kept; i++) {
            plan_name_pattern(p->kept[i].name, pat, sizeof pat);
            if (strcmp(pat, last) == 0)
                continue;
            int dup = 0;
            for (size_t j = 0; j < i && !dup; j++) {
                char q[512];
                plan_name_pattern(p->kept[j].name, q, sizeof q);
                dup = strcmp(q, pat) == 0;
            }
            if (!dup)
                fprintf(f, "  %s: %s\n", pat, p->kept[i].reason);
            snprintf(last, sizeof last, "%s", pat);
        }
    }
    uint64_t total = 0;
    size_t folded = 0;
    for (size_t i = 0; i < p->n_out; i++) {
        total += st_nbytes(p->out[i].src->t);
        folded += p->out[i].op == OUT_FOLD;
    }
    fprintf(f, "%zu tensors folded, %zu norms %s", folded, p->n_dropped,
            p->keep_norms ? "written as identity" : "removed");
    if (p->untie)
        fprintf(f, ", %s materialised from the embedding (+%.1f MB)", p->head_name, p->added_bytes / 1e6);
    fprintf(f, "\noutput: %zu tensors, %.3f GB of tensor data in %zu file(s); FlashNorm marker: %s\n",
            p->n_out, total / 1e9, ck->n_shards, p->marker ? "yes" : "no");
}

/* ---------------------------------------------------------------------------
 * commands */

static void default_output(const char *source, char *out, size_t cap)
{
    char buf[PATH_MAX];
    snprintf(buf, sizeof buf, "%s", source);
    size_t n = strlen(buf);
    while (n > 1 && buf[n - 1] == '/')
        buf[--n] = '\0';
    struct stat sb;
    if (stat(source, &sb) != 0 && hub_is_repo_id(source))
        buf[strcspn(buf, "@")] = '\0'; /* "org/name@rev" -> "name" */
    const char *name = strrchr(buf, '/');
    name = name ? name + 1 : buf;
    if (!*name || strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
        name = "model";
    snprintf(out, cap, "./%s-FlashNorm", name);
}

/* Downloads repo id `repo` (or finds it in the HF cache) and sets *dir to
 * its snapshot directory, with the hub's progress on stderr. */
static fl_status fetch_repo(const cli_args *a, const char *repo, char **dir, fl_error *err)
{
    hub_progress hp;
    hub_progress_init(&hp, stderr, -1, a->quiet);
    hub_request req = {.repo_id = repo, .revision = a->revision, .token = a->token,
                       .offline = a->offline, .quiet = a->quiet, .verbose = a->verbose,
                       .jobs = a->jobs, .progress = hub_progress_render, .progress_ctx = &hp};
    fl_status s = hub_fetch_snapshot(&req, dir, err);
    hub_progress_finish(&hp);
    return s;
}

/* Resolves SOURCE to a local checkpoint directory: an existing path, or a
 * repo id (org/name[@rev]) that becomes its snapshot in the HF cache. */
static fl_status resolve_source(const cli_args *a, char **dir, fl_error *err)
{
    struct stat st;
    if (stat(a->source, &st) == 0) {
        *dir = strdup(a->source);
        return *dir ? FL_OK : fl_fail(err, FL_EIO, "out of memory");
    }
    if (hub_is_repo_id(a->source)) {
        fl_status s = fetch_repo(a, a->source, dir, err);
        if (s != FL_OK && s != FL_EINTR)
            fl_prefix(err, "%s is not a local directory, so it was fetched as a Hub repo id", a->source);
        return s;
    }
    return fl_fail(err, FL_EINPUT, "%s: no such directory", a->source);
}

/* flashify download REPO: fetch into the HF cache, print the snapshot. */
static int cmd_download(const cli_args *a, const char *repo)
{
    if (!hub_is_repo_id(repo))
        return usage_error("'%s' is not a repo id (org/name[@revision])", repo);
    fl_error err = {0};
    char *dir = NULL;
    fl_status s = fetch_repo(a, repo, &dir, &err);
    if (s != FL_OK)
        return fail(&err);
    printf("%s\n", dir);
    free(dir);
    return 0;
}

/* --strict: the complete temporary output is verified against the source
 * before write.c renames it into place; a failure removes it (exit 3). */
static const char *strict_source;
static verify_options strict_opt;
static int strict_quiet;

static fl_status strict_check(const char *tmp_dir, void *ctx, fl_error *err)
{
    (void)ctx;
    char *report = NULL;
    fl_status s = verify_pair(strict_source, tmp_dir, &strict_opt, &report, err);
    if (report && (s != FL_OK || !strict_quiet || strict_opt.json))
        fputs(report, strict_opt.json ? stdout : stderr);
    free(report);
    return s;
}

/* flashify verify SOURCE OUTPUT: prints the report (stdout), exit 0 or 3. */
static int cmd_verify(const cli_args *a, const char *source, const char *output)
{
    fl_error err = {0};
    verify_options vo = {.tokens = a->tokens, .tolerance = a->tolerance, .json = a->json,
                         .threads = a->threads, .skip_forward = a->skip_forward,
                         .plan_file = a->plan_file, .dump_logits = a->dump_logits};
    char *report = NULL;
    fl_status s = verify_pair(source, output, &vo, &report, &err);
    if (report)
        fputs(report, stdout);
    free(report);
    if (s == FL_ENOTEQUIV)
        return exit_code(s);
    return s == FL_OK ? 0 : fail(&err);
}

static int cmd_convert(const cli_args *a)
{
    fl_error err = {0};
    char *dir = NULL;
    fl_status s = resolve_source(a, &dir, &err);
    if (s != FL_OK)
        return fail(&err);
    checkpoint ck;
    s = ckpt_open(dir, &ck, &err);
    if (s != FL_OK) {
        free(dir);
        return fail(&err);
    }
    plan_options po = {.keep_tied = a->keep_tied, .keep_norms = a->keep_norms, .plan_file = a->plan_file};
    fold_plan plan;
    s = plan_build(&ck, &po, &plan, &err);
    if (s != FL_OK) {
        plan_free(&plan);
        ckpt_close(&ck);
        free(dir);
        return fail(&err);
    }
    char out[PATH_MAX];
    if (a->output)
        snprintf(out, sizeof out, "%s", a->output);
    else
        default_output(a->source, out, sizeof out);

    if (a->dry_run) {
        print_plan(stdout, &ck, &plan);
        s = convert_check_output(&ck, out, a->force, &err);
        if (s == FL_OK)
            printf("would write %s (dry run: nothing written)\n", out);
        else
            fprintf(stderr, "flashify: note: %s\n", err.msg);
        plan_free(&plan);
        ckpt_close(&ck);
        free(dir);
        return 0;
    }
    if (!a->quiet) {
        if (plan.untie)
            fprintf(stderr,
                    "flashify: %s is tied to the embedding: writing a separate %s with the final norm folded "
                    "in (+%.1f MB) and setting tie_word_embeddings to false (--keep-tied keeps the tie)\n",
                    plan.head_name, plan.head_name, plan.added_bytes / 1e6);
        if (plan.tied && !plan.final_folded)
            fprintf(stderr,
                    "flashify: --keep-tied: the final norm stays unfolded, so no FlashNorm marker "
                    "(flashnorm_folded) is written\n");
        if (plan.arch->warning && !plan.keep_norms && plan.n_dropped)
            fprintf(stderr, "flashify: warning: %s\n", plan.arch->warning);
        if (plan.untie && plan.arch->gain == GAIN_ONE_PLUS_W)
            fprintf(stderr,
                    "flashify: warning: vLLM's Gemma loaders assert tied embeddings; this untied "
                    "checkpoint will not load there (use --keep-tied for vLLM)\n");
    }
    progress_state ps = {.tty = !a->quiet && isatty(2), .quiet = a->quiet, .start = fl_now()};
    convert_options co = {.out_dir = out, .force = a->force, .threads = a->threads,
                          .memory = a->memory, .fsync = !a->no_fsync,
                          .max_shard_size = a->max_shard_size, .resume = a->resume,
                          .progress = on_progress, .note = on_note, .ctx = &ps};
    if (a->strict) {
        strict_source = dir;
        strict_opt = (verify_options){.tokens = a->tokens, .tolerance = a->tolerance,
                                      .json = a->json, .threads = a->threads,
                                      .skip_forward = a->skip_forward, .exact = 1,
                                      .plan_file = a->plan_file, .output_label = out};
        strict_quiet = a->quiet;
        co.before_commit = strict_check;
    }
    double t0 = fl_now();
    s = convert_write(&ck, &plan, &co, &err);
    if (s == FL_OK && !a->quiet) {
        size_t folded = 0;
        uint64_t bytes = 0;
        for (size_t i = 0; i < plan.n_out; i++) {
            folded += plan.out[i].op == OUT_FOLD;
            bytes += st_nbytes(plan.out[i].src->t);
        }
        fprintf(stderr, "flashify: wrote %s: %zu tensors folded, %zu norms %s, %.2f GB in %.1f s\n",
                out, folded, plan.n_dropped, plan.keep_norms ? "set to identity" : "removed",
                bytes / 1e9, fl_now() - t0);
    }
    plan_free(&plan);
    ckpt_close(&ck);
    free(dir);
    return s == FL_OK ? 0 : fail(&err);
}

/* One .safetensors file: its metadata and tensors (no plan without a
 * config.json). */
static int inspect_file(const char *path)
{
    fl_error err = {0};
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "flashify: error: %s: cannot open: %s\n", path, strerror(errno));
        return FL_EINPUT;
    }
    st_header h;
    memset(&h, 0, sizeof h);
    fl_status s = st_read_header(path, fd, &h, &err);
    close(fd);
    if (s != FL_OK)
        return fail(&err);
    printf("%s: %zu tensors, header %llu bytes, file %llu bytes\n", path, h.n_tensors,
           (unsigned long long)h.header_len, (unsigned long long)h.file_size);
    for (size_t i = 0; i < h.n_meta; i++)
        printf("  __metadata__ %s = %s\n", h.meta[i].key, h.meta[i].value);
    for (size_t i = 0; i < h.n_tensors; i++) {
        const st_tensor *t = &h.tensors[i];
        printf("  %-60s %-6s [", t->name, st_dtype_name(t->dtype));
        for (int d = 0; d < t->ndim; d++)
            printf("%s%llu", d ? ", " : "", (unsigned long long)t->shape[d]);
        printf("]  bytes %llu..%llu\n", (unsigned long long)t->begin, (unsigned long long)t->end);
    }
    st_header_free(&h);
    return 0;
}

static int cmd_inspect(const char *path)
{
    fl_error err = {0};
    struct stat pst;
    if (stat(path, &pst) == 0 && S_ISREG(pst.st_mode))
        return inspect_file(path);
    checkpoint ck;
    fl_status s = ckpt_open(path, &ck, &err);
    if (s != FL_OK)
        return fail(&err);
    printf("%s: model_type %s, %zu file(s), %zu tensors\n", path, ck.cfg.model_type, ck.n_shards,
           ck.n_tensors);
    for (size_t i = 0; i < ck.n_tensors; i++) {
        const ckpt_tensor *t = &ck.tensors[i];
        printf("  %-60s %-6s [", t->name, st_dtype_name(t->t->dtype));
        for (int d = 0; d < t->t->ndim; d++)
            printf("%s%llu", d ? ", " : "", (unsigned long long)t->t->shape[d]);
        if (t->is_alias)
            printf("]  %s (alias of %s)\n", ck.shards[t->shard].file, t->t->name);
        else
            printf("]  %s\n", ck.shards[t->shard].file);
    }
    plan_options po = {0};
    fold_plan plan;
    s = plan_build(&ck, &po, &plan, &err);
    if (s == FL_OK)
        print_plan(stdout, &ck, &plan);
    else
        printf("no fold plan: %s\n", err.msg);
    plan_free(&plan);
    ckpt_close(&ck);
    return 0;
}

/* ---------------------------------------------------------------------------
 * argv */

static int parse_args(int argc, char **argv, int first, cli_args *a, const char **positional,
                      int *n_positional, int max_positional)
{
    *n_positional = 0;
    for (int i = first; i < argc; i++) {
        const char *o = argv[i];
        const char *val = NULL;
#define NEEDS_VALUE()                                              \
    do {                                                           \
        if (i + 1 >= argc)                                         \
            return usage_error("option %s needs a value", o);      \
        val = argv[++i];                                           \
    } while (0)
        if (strcmp(o, "-o") == 0 || strcmp(o, "--output") == 0) {
            NEEDS_VALUE();
            a->output = val;
        } else if (strncmp(o, "--output=", 9) == 0) {
            a->output = o + 9;
        } else if (strcmp(o, "--keep-tied") == 0) {
            a->keep_tied = 1;
        } else if (strcmp(o, "--keep-norms") == 0) {
            a->keep_norms = 1;
        } else if (strcmp(o, "--force") == 0 || strcmp(o, "-f") == 0) {
            a->force = 1;
        } else if (strcmp(o, "--dry-run") == 0 || strcmp(o, "-n") == 0) {
            a->dry_run = 1;
        } else if (strcmp(o, "--strict") == 0) {
            a->strict = 1;
        } else if (strcmp(o, "--json") == 0) {
            a->json = 1;
        } else if (strcmp(o, "--skip-forward") == 0) {
            a->skip_forward = 1;
        } else if (strcmp(o, "--dump-logits") == 0) {
            NEEDS_VALUE();
            a->dump_logits = val;
        } else if (strcmp(o, "--tokens") == 0) {
            NEEDS_VALUE();
            a->tokens = val;
        } else if (strcmp(o, "--tolerance") == 0) {
            NEEDS_VALUE();
            char *end;
            a->tolerance = strtod(val, &end);
            if (*end || !(a->tolerance > 0) || a->tolerance > 1e6)
                return usage_error("--tolerance wants a positive number, got '%s'", val);
        } else if (strcmp(o, "--no-fsync") == 0) {
            a->no_fsync = 1;
        } else if (strcmp(o, "--resume") == 0) {
            a->resume = 1;
        } else if (strcmp(o, "--max-shard-size") == 0) {
            NEEDS_VALUE();
            a->max_shard_size = parse_size(val);
            if (!a->max_shard_size)
                return usage_error("--max-shard-size wants a size like 5GB or 500MB; got '%s'", val);
        } else if (strcmp(o, "-q") == 0 || strcmp(o, "--quiet") == 0) {
            a->quiet = 1;
        } else if (strcmp(o, "--revision") == 0) {
            NEEDS_VALUE();
            a->revision = val;
        } else if (strcmp(o, "--token") == 0) {
            NEEDS_VALUE();
            a->token = val;
        } else if (strcmp(o, "--offline") == 0) {
            a->offline = 1;
        } else if (strcmp(o, "--verbose") == 0) {
            a->verbose = 1;
        } else if (strcmp(o, "--jobs") == 0) {
            NEEDS_VALUE();
            char *end;
            long n = strtol(val, &end, 10);
            if (*end || n < 1 || n > 16)
                return usage_error("--jobs wants 1..16, got '%s'", val);
            a->jobs = (int)n;
        } else if (strcmp(o, "--plan") == 0) {
            NEEDS_VALUE();
            a->plan_file = val;
        } else if (strcmp(o, "--threads") == 0) {
            NEEDS_VALUE();
            char *end;
            long n = strtol(val, &end, 10);
            if (*end || n < 1 || n > 256)
                return usage_error("--threads wants 1..256, got '%s'", val);
            a->threads = (int)n;
        } else if (strcmp(o, "--memory") == 0) {
            NEEDS_VALUE();
            a->memory = parse_size(val);
            if (a->memory < (1u << 20))
                return usage_error("--memory wants a size of at least 1MiB, like 64MiB or 1GiB; got '%s'", val);
        } else if (strcmp(o, "--") == 0) {
            for (i++; i < argc; i++) {
                if (*n_positional >= max_positional)
                    return usage_error("unexpected argument '%s'", argv[i]);
                positional[(*n_positional)++] = argv[i];
            }
        } else if (o[0] == '-' && o[1]) {
            return usage_error("unknown option '%s'", o);
        } else {
            if (*n_positional >= max_positional)
                return usage_error("unexpected argument '%s'", o);
            positional[(*n_positional)++] = o;
        }
#undef NEEDS_VALUE
    }
    return 0;
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            fputs(USAGE, stdout);
            return 0;
        }
        if (strcmp(argv[i], "--version") == 0) {
            printf("flashify %s\n", FLASHIFY_VERSION);
            return 0;
        }
    }
    if (argc < 2) {
        fputs(USAGE, stderr);
        return FL_EUSAGE;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    cli_args a = {0};
    const char *pos[4];
    int n_pos = 0;
    if (strcmp(argv[1], "inspect") == 0) {
        int r = parse_args(argc, argv, 2, &a, pos, &n_pos, 1);
        if (r)
            return r;
        if (n_pos != 1)
            return usage_error("%s", "inspect needs one PATH");
        return cmd_inspect(pos[0]);
    }
    if (strcmp(argv[1], "download") == 0) {
        int r = parse_args(argc, argv, 2, &a, pos, &n_pos, 1);
        if (r)
            return r;
        if (n_pos != 1)
            return usage_error("%s", "download needs one REPO_ID");
        return cmd_download(&a, pos[0]);
    }
    if (strcmp(argv[1], "verify") == 0) {
        int r = parse_args(argc, argv, 2, &a, pos, &n_pos, 2);
        if (r)
            return r;
        if (n_pos != 2)
            return usage_error("%s", "verify needs SOURCE and OUTPUT directories");
        return cmd_verify(&a, pos[0], pos[1]);
    }
    int r = parse_args(argc, argv, 1, &a, pos, &n_pos, 1);
    if (r)
        return r;
    if (n_pos != 1)
        return usage_error("%s", "expected one SOURCE (a checkpoint directory or a repo id)");
    a.source = pos[0];
    return cmd_convert(&a);
}
