/* cli.c — the flashify command line.
 *
 * A thin layer over the library: install the signal policy, parse argv
 * (cli_opts.c), call the stages, print the library's error line and turn
 * its status into the exit code.  Nothing here knows about tensors. */
#include "cli.h"

#include "flashify/cache.h"
#include "flashify/checkpoint.h"
#include "flashify/error.h"
#include "flashify/hub.h"
#include "flashify/plan.h"
#include "flashify/verify.h"
#include "flashify/write.h"

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/crypto.h>
#include <openssl/opensslv.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---------------------------------------------------------------------------
 * signals and exit status */

static volatile sig_atomic_t last_signal;

/* Every signal that would end the process otherwise only raises
 * fl_interrupted: the long loops poll it and fail with FL_EINTR, and the
 * normal error path removes temporary output.  A second signal of the same
 * kind while the first is being handled ends the process at once. */
static void on_signal(int sig)
{
    int saved = errno;   /* the interrupted code may be about to read errno */
    if (atomic_load(&fl_interrupted) && last_signal == sig) {
        signal(sig, SIG_DFL);
        raise(sig);
    }
    if (!last_signal)
        last_signal = sig;
    atomic_store(&fl_interrupted, 1);
    errno = saved;
}

static void install_signal_policy(void)
{
    static const int stop_signals[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGALRM, SIGUSR1,
                                       SIGUSR2, SIGPIPE, SIGVTALRM, SIGPROF, SIGXCPU};
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_signal;
    for (size_t i = 0; i < sizeof stop_signals / sizeof stop_signals[0]; i++)
        sigaction(stop_signals[i], &sa, NULL);
    /* A file-size limit makes write() fail with EFBIG (an I/O error with a
     * message) instead of killing the process. */
    sa.sa_handler = SIG_IGN;
    sigaction(SIGXFSZ, &sa, NULL);
    /* Lets the writer read the source through a mapping (write.h). */
    sa.sa_handler = convert_sigbus_handler;
    sigaction(SIGBUS, &sa, NULL);
    /* A libcurl that may raise SIGPIPE on a connection the peer closed
     * (before 7.87, TLS writes) must not make that an interrupt: block it;
     * writes to a closed pipe then fail with EPIPE (finish_stdout). */
    if (!hub_sigpipe_safe()) {
        sigset_t pipe_set;
        sigemptyset(&pipe_set);
        sigaddset(&pipe_set, SIGPIPE);
        pthread_sigmask(SIG_BLOCK, &pipe_set, NULL);
    }
}

static int exit_code(fl_status s)
{
    if (s == FL_EINTR)
        return 128 + (last_signal ? last_signal : SIGINT);
    return (int)s;
}

static int fail(const fl_error *err)
{
    cli_diag("error", "%s", err->msg);
    return exit_code(err->code);
}

/* stdout is where inspect, verify and download put their results: a
 * failed write there (a full disk, a closed pipe) must not exit 0. */
static int finish_stdout(int code)
{
    if (fflush(stdout) == 0 && !ferror(stdout))
        return code;
    if (last_signal == SIGPIPE || errno == EPIPE)
        return code ? code : 128 + SIGPIPE;
    cli_diag("error", "standard output: write failed: %s", strerror(errno));
    return code ? code : FL_EIO;
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
            p->arch->model_type, p->n_layers, p->hidden);
    fprintf(f, "fold plan: %zu norms, gain %s\n", p->n_groups,
            p->arch->norm->gain == GAIN_ONE_PLUS_W ? "1 + w" : "w");
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
        if (p->groups[i].note)
            fprintf(f, "   [%s]", p->groups[i].note);
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
                fprintf(f, "  %s: %s%s\n", pat, p->kept[i].quantized ? "--partial: " : "", p->kept[i].reason);
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
 * the source: a directory or a repo id */

static void default_output(const char *source, char *out, size_t cap)
{
    char buf[PATH_MAX];
    snprintf(buf, sizeof buf, "%s", source);
    struct stat sb;
    if (stat(source, &sb) != 0 && hub_is_repo_id(source))
        buf[strcspn(buf, "@")] = '\0'; /* "org/name@rev" -> "org/name" */
    char name[NAME_MAX + 1];
    fl_basename(buf, name, sizeof name);
    if (!*name || strcmp(name, ".") == 0 || strcmp(name, "..") == 0 || strcmp(name, "/") == 0)
        snprintf(name, sizeof name, "model");
    snprintf(out, cap, "./%s-FlashNorm", name);
}

/* Downloads repo id `repo` (or finds it in the HF cache) and sets *dir to
 * its snapshot directory, with the hub's progress on stderr. */
static fl_status fetch_repo(const cli_args *a, const char *repo, char **dir, char **license,
                            fl_error *err)
{
    hub_progress hp;
    hub_progress_init(&hp, stderr, -1, a->quiet);
    hub_env env;
    cli_hub_env(&env);
    hub_request req = {.repo_id = repo, .revision = a->revision, .token = a->token, .env = &env,
                       .offline = a->offline, .quiet = a->quiet, .verbose = a->verbose,
                       .jobs = a->jobs, .progress = hub_progress_render, .progress_ctx = &hp,
                       .license = license};
    fl_status s = hub_fetch_snapshot(&req, dir, err);
    hub_progress_finish(&hp);
    return s;
}

/* Resolves SOURCE to a local checkpoint directory: an existing path, or a
 * repo id (org/name[@rev]) that becomes its snapshot in the HF cache. */
static fl_status resolve_source(const cli_args *a, const char *source, char **dir,
                                char **license, fl_error *err)
{
    struct stat st;
    if (stat(source, &st) == 0) {
        *dir = fl_strdup(source);
        return *dir ? FL_OK : fl_fail(err, FL_EIO, "out of memory");
    }
    if (hub_is_repo_id(source)) {
        fl_status s = fetch_repo(a, source, dir, license, err);
        if (s != FL_OK && s != FL_EINTR)
            fl_prefix(err, "%s is not a local directory, so it was fetched as a Hub repo id", source);
        return s;
    }
    return fl_fail(err, FL_EINPUT, "%s: no such directory", source);
}

/* ---------------------------------------------------------------------------
 * commands */

/* flashify download REPO: fetch into the HF cache, print the snapshot. */
static int cmd_download(const cli_args *a, const char *repo)
{
    if (!hub_is_repo_id(repo))
        return cli_usage_error("'%s' is not a repo id (org/name[@revision])", repo);
    fl_error err = {0};
    char *dir = NULL;
    fl_status s = fetch_repo(a, repo, &dir, NULL, &err);
    if (s != FL_OK)
        return fail(&err);
    printf("%s\n", dir);
    free(dir);
    return 0;
}

/* flashify upload FOLDER REPO: publish, print the URL (cli_upload.c). */
static int cmd_upload(const cli_args *a, const char *folder, const char *repo)
{
    fl_error err = {0};
    fl_status s = cli_upload(a, folder, repo, &err);
    return s == FL_OK ? 0 : fail(&err);
}

/* --strict: the complete temporary output is verified against the source
 * before write.c renames it into place; a failure removes it (exit 3). */
typedef struct {
    const char *source;
    verify_options opt;
    int quiet;
} strict_ctx;

static fl_status strict_check(const char *tmp_dir, void *ctx, fl_error *err)
{
    const strict_ctx *sc = ctx;
    char *report = NULL;
    fl_status s = verify_pair(sc->source, tmp_dir, &sc->opt, &report, err);
    if (report && (s != FL_OK || !sc->quiet || sc->opt.json))
        fputs(report, sc->opt.json ? stdout : stderr);
    free(report);
    return s;
}

static verify_options verify_options_of(const cli_args *a)
{
    return (verify_options){.tokens = a->tokens, .tolerance = a->tolerance, .json = a->json,
                            .threads = a->threads, .skip_forward = a->skip_forward,
                            .plan_file = a->plan_file, .partial = a->partial,
                            .dump_logits = a->dump_logits};
}

/* flashify verify SOURCE OUTPUT: prints the report (stdout), exit 0 or 3. */
static int cmd_verify(const cli_args *a, const char *source, const char *output)
{
    fl_error err = {0};
    verify_options vo = verify_options_of(a);
    cli_progress progress;
    cli_progress_init(&progress, stderr, a->quiet, a->verbose);
    vo.progress = cli_progress_update;
    vo.progress_ctx = &progress;
    char *report = NULL;
    fl_status s = verify_pair(source, output, &vo, &report, &err);
    cli_progress_finish(&progress);
    if (report)
        fputs(report, stdout);
    free(report);
    if (s == FL_ENOTEQUIV)
        return exit_code(s);
    return s == FL_OK ? 0 : fail(&err);
}

/* --partial: which norms stay, and why (one line per layer pattern). */
static void print_quantized_kept(const fold_plan *plan)
{
    char pat[512], earlier[512];
    for (size_t i = 0; i < plan->n_kept; i++) {
        if (!plan->kept[i].quantized)
            continue;
        plan_name_pattern(plan->kept[i].name, pat, sizeof pat);
        int seen = 0;
        for (size_t j = 0; j < i && !seen; j++) {
            plan_name_pattern(plan->kept[j].name, earlier, sizeof earlier);
            seen = plan->kept[j].quantized && strcmp(earlier, pat) == 0;
        }
        if (!seen)
            cli_diag("note", "--partial: keeping %s: %s", pat, plan->kept[i].reason);
    }
}

/* What the user should know before the long work starts. */
static void announce_plan(const fold_plan *plan)
{
    if (plan->untie)
        fprintf(stderr,
                "flashify: %s is tied to the embedding: writing a separate %s with the final norm folded "
                "in (+%.1f MB) and setting tie_word_embeddings to false (--keep-tied keeps the tie)\n",
                plan->head_name, plan->head_name, plan->added_bytes / 1e6);
    if (plan->tied && !plan->final_folded)
        fprintf(stderr,
                "flashify: --keep-tied: the final norm stays unfolded, so no FlashNorm marker "
                "(flashnorm_folded) is written\n");
    if (plan->arch->warning && !plan->keep_norms && plan->n_dropped)
        cli_diag("warning", "%s", plan->arch->warning);
    if (plan->untie && plan->arch->untie_warning)
        cli_diag("warning", "%s", plan->arch->untie_warning);
    print_quantized_kept(plan);
}

/* --dry-run: the plan, then the result on stdout: what the real run would
 * write (and publish), or what it would refuse and why (every check the
 * real run makes before writing: convert_dry_run); and on stderr which of
 * the given options a dry run does not act on.  The plan was made, so
 * exit 0. */
static fl_status dry_run(const cli_args *a, const checkpoint *ck, const fold_plan *plan,
                         const convert_options *co)
{
    print_plan(stdout, ck, plan);
    if (a->strict && !a->quiet)
        cli_diag("note", "--dry-run does not run --strict: it verifies the written output, and a dry run "
                         "writes none");
    if (a->resume && !a->quiet)
        cli_diag("note", "--dry-run does not look into a partial output for --resume");
    fl_error why = {0};
    if (convert_dry_run(ck, plan, co, &why) != FL_OK) {
        printf("would refuse: %s (dry run: nothing written)\n", why.msg);
        return FL_OK;
    }
    printf("would write %s (dry run: nothing written)\n", co->out_dir);
    if (a->push_to_hub)
        printf("would publish %s to %s\n", co->out_dir, a->push_to_hub);
    return FL_OK;
}

static void announce_result(const fold_plan *plan, const char *out, double t0)
{
    size_t folded = 0;
    uint64_t bytes = 0;
    for (size_t i = 0; i < plan->n_out; i++) {
        folded += plan->out[i].op == OUT_FOLD;
        bytes += st_nbytes(plan->out[i].src->t);
    }
    fprintf(stderr, "flashify: wrote %s: %zu tensors folded, %zu norms %s, %.2f GB in %.1f s\n", out, folded,
            plan->n_dropped, plan->keep_norms ? "set to identity" : "removed", bytes / 1e9, fl_now() - t0);
    if (plan->n_quantized_kept)
        cli_diag("note", "--partial: %d norms kept with their weights (quantized consumers); "
                         "no FlashNorm marker written", plan->n_quantized_kept);
}

static fl_status convert(const cli_args *a, const char *dir, const char *base_model,
                         const checkpoint *ck, const fold_plan *plan, const char *out,
                         cli_publish_ctx *pub, fl_error *err)
{
    cli_progress progress;
    cli_progress_init(&progress, stderr, a->quiet, a->verbose);
    /* --force never replaces the home directory or the HF home, and
     * nothing is written into the hub cache (txn.h). */
    hub_env env;
    cli_hub_env(&env);
    char *hf_home = cache_hf_home(&env), *hub_cache = cache_hub_dir(&env);
    const char *keep_dirs[] = {env.home, hf_home, NULL};
    const char *managed_dirs[] = {hub_cache, NULL};
    if (!keep_dirs[0]) {
        keep_dirs[0] = hf_home;
        keep_dirs[1] = NULL;
    }
    convert_options co = {.out_dir = out, .force = a->force, .threads = a->threads,
                          .memory = a->memory, .fsync = !a->no_fsync,
                          .max_shard_size = a->max_shard_size, .resume = a->resume,
                          .base_model = base_model, .keep_dirs = keep_dirs, .managed_dirs = managed_dirs,
                          .progress = convert_progress_bytes, .note = convert_progress_note,
                          .progress_ctx = &progress};
    strict_ctx sc = {.source = dir, .opt = verify_options_of(a), .quiet = a->quiet};
    if (a->strict) {
        sc.opt.exact = 1;
        sc.opt.output_label = out;
        sc.opt.dump_logits = NULL;
        co.before_commit = strict_check;
        co.commit_ctx = &sc;
        sc.opt.progress = cli_progress_update;
        sc.opt.progress_ctx = &progress;
    }
    co.license = pub->license;
    if (a->push_to_hub)
        co.digests = &pub->digests;
    fl_status s;
    if (a->dry_run) {
        s = dry_run(a, ck, plan, &co);
    } else {
        if (!a->quiet)
            announce_plan(plan);
        double t0 = fl_now();
        s = convert_write(ck, plan, &co, err);
        cli_progress_finish(&progress);
        if (s == FL_OK && !a->quiet)
            announce_result(plan, out, t0);
    }
    free(hf_home);
    free(hub_cache);
    return s;
}

static int cmd_convert(const cli_args *a, const char *source)
{
    if (a->output && !*a->output)
        return cli_usage_error("-o needs a directory name, got ''");
    if (!a->push_to_hub && (a->private_repo || a->create_pr || a->message))
        return cli_usage_error("--private, --create-pr and -m go with --push-to-hub REPO");
    fl_error err = {0};
    fl_status s = a->push_to_hub && !a->dry_run ? cli_publish_check(a, &err) : FL_OK;
    if (s != FL_OK)
        return fail(&err);
    /* A repo id's card names it as the base model (not its snapshot). */
    struct stat sst;
    char base[256] = "";
    if (stat(source, &sst) != 0 && hub_is_repo_id(source))
        snprintf(base, sizeof base, "%.*s", (int)strcspn(source, "@"), source);
    char *dir = NULL;
    cli_publish_ctx pub = {.a = a};
    /* The Hub's cardData license goes into the card when the source card
     * is not at hand (the snapshot has no README.md); a local source's
     * card is read by the writer itself. */
    s = resolve_source(a, source, &dir, &pub.license, &err);
    if (s != FL_OK)
        return fail(&err);
    checkpoint ck;
    s = ckpt_open(dir, &ck, &err);
    if (s != FL_OK) {
        free(dir);
        return fail(&err);
    }
    plan_options po = {.keep_tied = a->keep_tied, .keep_norms = a->keep_norms,
                       .partial = a->partial, .plan_file = a->plan_file};
    fold_plan plan;
    s = plan_build(&ck, &po, &plan, &err);
    if (s == FL_OK) {
        char out[PATH_MAX];
        if (a->output)
            snprintf(out, sizeof out, "%s", a->output);
        else
            default_output(source, out, sizeof out);
        s = convert(a, dir, base[0] ? base : NULL, &ck, &plan, out, &pub, &err);
        /* Published only once the conversion (and --strict) succeeded. */
        if (s == FL_OK && a->push_to_hub && !a->dry_run)
            s = cli_publish(&pub, out, &err);
    }
    cli_publish_ctx_free(&pub);
    plan_free(&plan);
    ckpt_close(&ck);
    free(dir);
    return s == FL_OK ? 0 : fail(&err);
}

static void print_shape(const st_tensor *t)
{
    for (int d = 0; d < t->ndim; d++)
        printf("%s%llu", d ? ", " : "", (unsigned long long)t->shape[d]);
}

/* One .safetensors file: its metadata and tensors (no plan without a
 * config.json). */
static int inspect_file(const char *path)
{
    fl_error err = {0};
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        cli_diag("error", "%s: cannot open: %s", path, strerror(errno));
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
        print_shape(t);
        printf("]  bytes %llu..%llu\n", (unsigned long long)t->begin, (unsigned long long)t->end);
    }
    st_header_free(&h);
    return 0;
}

/* flashify inspect PATH: the tensors and the fold plan; exit 2 when
 * there is no plan (the checkpoint cannot be converted as it is). */
static int cmd_inspect(const cli_args *a, const char *path)
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
        print_shape(t->t);
        if (t->is_alias)
            printf("]  %s (alias of %s)\n", ck.shards[t->shard].file, t->t->name);
        else
            printf("]  %s\n", ck.shards[t->shard].file);
    }
    plan_options po = {.plan_file = a->plan_file, .partial = a->partial};
    fold_plan plan;
    s = plan_build(&ck, &po, &plan, &err);
    if (s == FL_OK)
        print_plan(stdout, &ck, &plan);
    else
        printf("no fold plan: %s\n", err.msg);
    plan_free(&plan);
    ckpt_close(&ck);
    if (s != FL_OK)
        return fail(&err);
    return 0;
}

/* ---------------------------------------------------------------------------
 * main */

/* flashify --version: each library as built against and as loaded now
 * (the shared library may have been upgraded since). */
static void print_version(void)
{
    const curl_version_info_data *cv = curl_version_info(CURLVERSION_NOW);
    printf("flashify %s\n", FLASHIFY_VERSION);
    printf("cJSON %s (built with %d.%d.%d)\n", cJSON_Version(), CJSON_VERSION_MAJOR,
           CJSON_VERSION_MINOR, CJSON_VERSION_PATCH);
    printf("libcurl %s, TLS by %s (built with %s)\n", cv->version,
           cv->ssl_version ? cv->ssl_version : "none", LIBCURL_VERSION);
    printf("OpenSSL %s (built with %s)\n", OpenSSL_version(OPENSSL_VERSION_STRING),
           OPENSSL_VERSION_STR);
}

static int run(int argc, char **argv)
{
    static const struct {
        const char *name;
        unsigned cmd;
        int n_pos;
        const char *want;
    } commands[] = {
        {"inspect", CMD_INSPECT, 1, "inspect needs one PATH"},
        {"download", CMD_DOWNLOAD, 1, "download needs one REPO_ID"},
        {"verify", CMD_VERIFY, 2, "verify needs SOURCE and OUTPUT directories"},
        {"upload", CMD_UPLOAD, 2, "upload needs a FOLDER and a REPO_ID"},
    };
    unsigned cmd = CMD_CONVERT;
    int first = 1, n_want = 1;
    const char *want = "expected one SOURCE (a checkpoint directory or a repo id)";
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (argc > 1 && strcmp(argv[1], commands[i].name) == 0) {
            cmd = commands[i].cmd;
            first = 2;
            n_want = commands[i].n_pos;
            want = commands[i].want;
        }
    /* --help and --version win over everything else on the line. */
    for (int i = 1; i < argc && strcmp(argv[i], "--"); i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            cli_help(stdout);
            return 0;
        }
        if (!strcmp(argv[i], "--version")) {
            print_version();
            return 0;
        }
        if (!strcmp(argv[i], "--list-options")) {
            cli_list_options(stdout);
            return 0;
        }
    }
    if (argc < 2) {
        cli_help(stderr);
        return FL_EUSAGE;
    }
    cli_args a = {0};
    const char *pos[2];
    int n_pos = 0;
    int r = cli_parse(argc, argv, first, cmd, &a, pos, &n_pos, n_want);
    if (r)
        return r;
    if (n_pos != n_want)
        return cli_usage_error("%s", want);
    if (a.quiet && a.verbose)
        return cli_usage_error("--quiet and --verbose contradict each other");
    switch (cmd) {
    case CMD_INSPECT: return cmd_inspect(&a, pos[0]);
    case CMD_DOWNLOAD: return cmd_download(&a, pos[0]);
    case CMD_VERIFY: return cmd_verify(&a, pos[0], pos[1]);
    case CMD_UPLOAD: return cmd_upload(&a, pos[0], pos[1]);
    default: return cmd_convert(&a, pos[0]);
    }
}

int main(int argc, char **argv)
{
    install_signal_policy();
    return finish_stdout(run(argc, argv));
}
