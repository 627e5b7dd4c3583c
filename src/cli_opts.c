/* cli_opts.c — the option table, argv parsing and --help (see cli.h).
 *
 * Every option is one row: its names, the kind of value it takes and the
 * range it accepts, the cli_args field it sets, the subcommands it applies
 * to and its help text.  The parser and --help both read the table, so
 * they cannot disagree. */
#include "cli.h"

#include "flashify/error.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef enum {
    OPT_FLAG,    /* int = 1 */
    OPT_STR,     /* const char * */
    OPT_INT,     /* int in [min, max] */
    OPT_SIZE,    /* uint64_t bytes in [min, max] (max 0: no limit) */
    OPT_DOUBLE   /* double in (min, max] */
} opt_kind;

/* Help sections, in the order --help prints them. */
enum { SEC_CONVERT, SEC_VERIFY, SEC_HUB, SEC_UPLOAD, SEC_GENERAL, SEC_HIDDEN };

typedef struct {
    const char *name;      /* "--threads" */
    const char *alias;     /* "-q", or NULL */
    opt_kind kind;
    size_t offset;         /* field of cli_args */
    double min, max;
    const char *metavar;   /* "N" in "--threads N" */
    unsigned commands;     /* CMD_* bits it applies to */
    int section;
    const char *help;      /* '\n' starts an indented continuation line */
} cli_option;

#define F(field) offsetof(cli_args, field)
#define CONV CMD_CONVERT
#define CONV_VERIFY (CMD_CONVERT | CMD_VERIFY)
#define HUB (CMD_CONVERT | CMD_DOWNLOAD)
#define UP (CMD_CONVERT | CMD_UPLOAD)

static const cli_option OPTIONS[] = {
    {"--output", "-o", OPT_STR, F(output), 0, 0, "DIR", CONV, SEC_CONVERT,
     "output directory (default: ./<name>-FlashNorm)"},
    {"--keep-tied", NULL, OPT_FLAG, F(keep_tied), 0, 0, NULL, CONV, SEC_CONVERT,
     "keep tied embeddings; leave the final norm unfolded"},
    {"--keep-norms", NULL, OPT_FLAG, F(keep_norms), 0, 0, NULL, CONV, SEC_CONVERT,
     "write folded norms as identity (1, or 0 for Gemma's 1+w)\n"
     "instead of removing them, for loaders that need them"},
    {"--partial", NULL, OPT_FLAG, F(partial), 0, 0, NULL, CONV_VERIFY | CMD_INSPECT, SEC_CONVERT,
     "fold only the norms whose consumers are unquantized; keep\n"
     "the others with their weights (no FlashNorm marker)"},
    {"--strict", NULL, OPT_FLAG, F(strict), 0, 0, NULL, CONV, SEC_CONVERT,
     "verify the output against the source before it is moved\n"
     "into place (exit 3 if not equivalent)"},
    {"--plan", NULL, OPT_STR, F(plan_file), 0, 0, "FILE", CONV_VERIFY | CMD_INSPECT, SEC_CONVERT,
     "fold plan for a model_type flashify does not know (README)"},
    {"--dry-run", "-n", OPT_FLAG, F(dry_run), 0, 0, NULL, UP, SEC_CONVERT,
     "print the plan and sizes; write nothing (upload: list\n"
     "what would be sent and what is there; send nothing)"},
    {"--force", "-f", OPT_FLAG, F(force), 0, 0, NULL, CONV, SEC_CONVERT,
     "replace an existing output: only an empty directory\n"
     "or an earlier flashify output"},
    {"--max-shard-size", NULL, OPT_SIZE, F(max_shard_size), 1, 0, "SIZE", CONV, SEC_CONVERT,
     "re-shard the output (e.g. 5GB, decimal like the Hub;\n"
     "default: keep the source's files)"},
    {"--resume", NULL, OPT_FLAG, F(resume), 0, 0, NULL, CONV, SEC_CONVERT,
     "continue an interrupted conversion from its finished\n"
     "shards (and keep them if this run is interrupted too)"},
    {"--threads", NULL, OPT_INT, F(threads), 1, 256, "N", CONV_VERIFY, SEC_CONVERT,
     "worker threads (default: one per core)"},
    {"--memory", NULL, OPT_SIZE, F(memory), 1 << 20, 0, "SIZE", CONV, SEC_CONVERT,
     "fold buffer budget, e.g. 16MiB, 1GiB (default 48MiB)"},
    {"--no-fsync", NULL, OPT_FLAG, F(no_fsync), 0, 0, NULL, CONV, SEC_CONVERT,
     "skip fsync before the final rename (faster, less safe)"},

    {"--json", NULL, OPT_FLAG, F(json), 0, 0, NULL, CONV_VERIFY | CMD_UPLOAD, SEC_VERIFY,
     "print the equivalence report (upload: a summary) as JSON"},
    {"--tokens", NULL, OPT_STR, F(tokens), 0, 0, "IDS", CONV_VERIFY, SEC_VERIFY,
     "token ids for the forward check, e.g. 1,2,3 (default: BOS\n"
     "and 16 fixed ids)"},
    {"--tolerance", NULL, OPT_DOUBLE, F(tolerance), 0, 1e6, "X", CONV_VERIFY, SEC_VERIFY,
     "max logit difference relative to the logit scale (default\n"
     "by dtype: BF16 0.1, F16 0.02, F32/F64 1e-4)"},
    {"--skip-forward", NULL, OPT_FLAG, F(skip_forward), 0, 0, NULL, CONV_VERIFY, SEC_VERIFY,
     "tensor and config check only"},
    {"--dump-logits", NULL, OPT_STR, F(dump_logits), 0, 0, "FILE", CMD_VERIFY, SEC_HIDDEN,
     "write the source's logits (float32) for tests/interop"},

    {"--revision", NULL, OPT_STR, F(revision), 0, 0, "REV", HUB | CMD_UPLOAD, SEC_HUB,
     "branch, tag or commit (default: main, or org/name@REV);\n"
     "upload: the branch (created from main when missing)"},
    {"--token", NULL, OPT_STR, F(token), 0, 0, "TOKEN", HUB | CMD_UPLOAD, SEC_HUB,
     "Hugging Face token (default: HF_TOKEN or $HF_HOME/token)"},
    {"--offline", NULL, OPT_FLAG, F(offline), 0, 0, NULL, HUB, SEC_HUB,
     "use the HF cache only (also HF_HUB_OFFLINE=1)"},
    {"--jobs", NULL, OPT_INT, F(jobs), 1, 16, "N", HUB | CMD_UPLOAD, SEC_HUB,
     "parallel transfers (default 4)"},

    {"--push-to-hub", NULL, OPT_STR, F(push_to_hub), 0, 0, "REPO", CONV, SEC_UPLOAD,
     "after the conversion (and --strict) succeeded, publish\n"
     "the output to the model repo REPO (org/name)"},
    {"--private", NULL, OPT_FLAG, F(private_repo), 0, 0, NULL, UP, SEC_UPLOAD,
     "create the repo private (an existing one keeps its visibility)"},
    {"--create-pr", NULL, OPT_FLAG, F(create_pr), 0, 0, NULL, UP, SEC_UPLOAD,
     "open a pull request instead of committing to the branch"},
    {"--message", "-m", OPT_STR, F(message), 0, 0, "MSG", UP, SEC_UPLOAD,
     "commit message"},

    {"--quiet", "-q", OPT_FLAG, F(quiet), 0, 0, NULL, CMD_ALL, SEC_GENERAL,
     "print errors only (results on stdout stay)"},
    {"--verbose", NULL, OPT_FLAG, F(verbose), 0, 0, NULL, CMD_ALL, SEC_GENERAL,
     "log every Hub request (never the token) and the time\n"
     "and rate of each long step"},
    {"--help", "-h", OPT_FLAG, F(help), 0, 0, NULL, CMD_ALL, SEC_GENERAL, "this help"},
    {"--version", NULL, OPT_FLAG, F(version), 0, 0, NULL, CMD_ALL, SEC_GENERAL,
     "print the version and those of the libraries"},
    {"--list-options", NULL, OPT_FLAG, F(list_options), 0, 0, NULL, CMD_ALL, SEC_HIDDEN,
     "print this table (for the man page test and the completions)"},
};

static const char *const SECTION_TITLE[] = {
    [SEC_CONVERT] = "Options",
    [SEC_VERIFY] = "verify and --strict",
    [SEC_HUB] = "Hub (SOURCE or download is a repo id; HF_ENDPOINT, HF_TOKEN, HF_HOME apply)",
    [SEC_UPLOAD] = "Publishing (upload, --push-to-hub; the token needs write access)",
    [SEC_GENERAL] = "General",
};

static const char *const CMD_NAME[] = {"convert", "inspect", "verify", "download", "upload"};

int cli_usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("flashify: ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\nTry 'flashify --help'.\n", stderr);
    return FL_EUSAGE;
}

uint64_t cli_parse_size(const char *s)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || v <= 0 || !isfinite(v))
        return 0;
    static const struct {
        const char *suffix;
        double mult;
    } units[] = {{"", 1}, {"B", 1}, {"K", 1024.0}, {"KiB", 1024.0}, {"KB", 1e3},
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

/* The machine's memory in bytes (0 when unknown): --memory cannot ask
 * for more buffers than there is RAM. */
static uint64_t physical_memory(void)
{
    long pages = sysconf(_SC_PHYS_PAGES), size = sysconf(_SC_PAGESIZE);
    return pages > 0 && size > 0 ? (uint64_t)pages * (uint64_t)size : 0;
}

static const char *command_name(unsigned cmd)
{
    for (size_t i = 0; i < sizeof CMD_NAME / sizeof CMD_NAME[0]; i++)
        if (cmd == 1u << i)
            return CMD_NAME[i];
    return "?";
}

/* Stores `val` for option o; 0 or FL_EUSAGE (message printed). */
static int set_value(const cli_option *o, const char *val, cli_args *a)
{
    void *field = (char *)a + o->offset;
    char *end;
    switch (o->kind) {
    case OPT_FLAG:
        *(int *)field = 1;
        return 0;
    case OPT_STR:
        if (!*val)
            return cli_usage_error("option %s needs a non-empty value", o->name);
        *(const char **)field = val;
        return 0;
    case OPT_INT: {
        errno = 0;
        long n = strtol(val, &end, 10);
        if (errno || end == val || *end || n < (long)o->min || n > (long)o->max)
            return cli_usage_error("%s wants a whole number from %.0f to %.0f, got '%s'", o->name,
                                   o->min, o->max, val);
        *(int *)field = (int)n;
        return 0;
    }
    case OPT_SIZE: {
        uint64_t b = cli_parse_size(val);
        if (!b || (double)b < o->min)
            return cli_usage_error("%s wants a size like 64MiB, 1GiB or 5GB%s; got '%s'", o->name,
                                   o->min > 1 ? " (at least 1MiB)" : "", val);
        uint64_t ram = physical_memory();
        if (o->offset == F(memory) && ram && b > ram)
            return cli_usage_error("--memory %s is more than this machine's %.1f GiB of memory",
                                   val, (double)ram / (1 << 30));
        *(uint64_t *)field = b;
        return 0;
    }
    case OPT_DOUBLE: {
        errno = 0;
        double d = strtod(val, &end);
        if (errno || end == val || *end || !(d > o->min) || d > o->max)
            return cli_usage_error("%s wants a number above %g and at most %g, got '%s'", o->name,
                                   o->min, o->max, val);
        *(double *)field = d;
        return 0;
    }
    }
    return FL_EUSAGE;
}

static const cli_option *find_option(const char *arg, size_t len)
{
    for (size_t i = 0; i < sizeof OPTIONS / sizeof OPTIONS[0]; i++) {
        const cli_option *o = &OPTIONS[i];
        if ((strlen(o->name) == len && !strncmp(o->name, arg, len)) ||
            (o->alias && strlen(o->alias) == len && !strncmp(o->alias, arg, len)))
            return o;
    }
    return NULL;
}

int cli_parse(int argc, char **argv, int first, unsigned cmd, cli_args *a, const char **pos,
              int *n_pos, int max_pos)
{
    *n_pos = 0;
    int only_positional = 0;
    for (int i = first; i < argc; i++) {
        const char *arg = argv[i];
        if (only_positional || arg[0] != '-' || !arg[1]) {
            if (*n_pos >= max_pos)
                return cli_usage_error("unexpected argument '%s'", arg);
            pos[(*n_pos)++] = arg;
            continue;
        }
        if (!strcmp(arg, "--")) {
            only_positional = 1;
            continue;
        }
        const char *eq = arg[1] == '-' ? strchr(arg, '=') : NULL;
        const cli_option *o = find_option(arg, eq ? (size_t)(eq - arg) : strlen(arg));
        if (!o)
            return cli_usage_error("unknown option '%s'", arg);
        if (!(o->commands & cmd))
            return cli_usage_error("option %s does not apply to '%s'", o->name, command_name(cmd));
        const char *val = NULL;
        if (o->kind == OPT_FLAG) {
            if (eq)
                return cli_usage_error("option %s takes no value", o->name);
        } else if (eq) {
            val = eq + 1;
        } else if (i + 1 < argc) {
            val = argv[++i];
        } else {
            return cli_usage_error("option %s needs a value", o->name);
        }
        int r = set_value(o, val, a);
        if (r)
            return r;
    }
    return 0;
}

void cli_help(FILE *f)
{
    fputs("usage: flashify SOURCE [-o OUTPUT] [options]\n"
          "       flashify inspect PATH\n"
          "       flashify verify SOURCE OUTPUT [--json] [--tokens IDS] [--tolerance X]\n"
          "       flashify download REPO_ID [--revision REV]\n"
          "       flashify upload FOLDER REPO_ID [--revision B] [--create-pr] [-m MSG]\n"
          "\n"
          "Folds every RMSNorm weight of a Hugging Face checkpoint into the linear layers\n"
          "that read it (FlashNorm, arXiv 2407.09577) and writes a new checkpoint that\n"
          "computes the same function without norm weights.\n"
          "\n"
          "SOURCE is a checkpoint directory (config.json + *.safetensors) or a Hugging\n"
          "Face repo id (org/name[@revision]), downloaded into the shared HF cache.\n"
          "upload publishes a folder (a conversion's output) to a Hub model repo;\n"
          "--push-to-hub does it right after a conversion.\n",
          f);
    for (int sec = SEC_CONVERT; sec < SEC_HIDDEN; sec++) {
        fprintf(f, "\n%s:\n", SECTION_TITLE[sec]);
        for (size_t i = 0; i < sizeof OPTIONS / sizeof OPTIONS[0]; i++) {
            const cli_option *o = &OPTIONS[i];
            if (o->section != sec)
                continue;
            char names[64];
            snprintf(names, sizeof names, "%s%s%s%s%s", o->alias ? o->alias : "",
                     o->alias ? ", " : "", o->name, o->metavar ? " " : "",
                     o->metavar ? o->metavar : "");
            const char *h = o->help;
            size_t len = strcspn(h, "\n");
            if (strlen(names) > 18)
                fprintf(f, "  %s  %.*s\n", names, (int)len, h);
            else
                fprintf(f, "  %-18s %.*s\n", names, (int)len, h);
            while (h[len] == '\n') {
                h += len + 1;
                len = strcspn(h, "\n");
                fprintf(f, "  %-18s %.*s\n", "", (int)len, h);
            }
        }
    }
    fputs("\n"
          "Examples:\n"
          "  flashify ./Llama-3.2-1B -o ./Llama-3.2-1B-FlashNorm\n"
          "  flashify ./Llama-3.2-1B --dry-run\n"
          "  flashify ./gemma-2-2b --keep-norms --strict\n"
          "  flashify meta-llama/Llama-3.2-1B -o out\n"
          "  flashify verify ./Llama-3.2-1B ./Llama-3.2-1B-FlashNorm\n"
          "  flashify meta-llama/Llama-3.2-1B --strict --push-to-hub me/Llama-3.2-1B-FlashNorm\n"
          "  flashify upload ./Llama-3.2-1B-FlashNorm me/Llama-3.2-1B-FlashNorm --dry-run\n"
          "\n"
          "Exit status: 0 success, 1 usage, 2 bad or unsupported input, 3 not equivalent,\n"
          "4 network, 5 I/O, 128+N killed by signal N (130 SIGINT, 143 SIGTERM).\n",
          f);
}

/* One line per command ("command<TAB>NAME<TAB>word", or "default" for
 * convert, which has no word on the command line) and per option, hidden ones
 * included: "option<TAB>NAME<TAB>ALIAS<TAB>METAVAR<TAB>COMMANDS<TAB>
 * shown|hidden<TAB>help on one line", "-" for an empty field, COMMANDS
 * comma-separated.  Read by tests/e2e/test_manpage.py and
 * scripts/gen_completions.py, so the man page and the completions follow
 * the table. */
void cli_list_options(FILE *f)
{
    for (size_t c = 0; c < sizeof CMD_NAME / sizeof CMD_NAME[0]; c++)
        fprintf(f, "command\t%s\t%s\n", CMD_NAME[c], 1u << c == CMD_CONVERT ? "default" : "word");
    for (size_t i = 0; i < sizeof OPTIONS / sizeof OPTIONS[0]; i++) {
        const cli_option *o = &OPTIONS[i];
        fprintf(f, "option\t%s\t%s\t%s\t", o->name, o->alias ? o->alias : "-",
                o->metavar ? o->metavar : "-");
        const char *sep = "";
        for (size_t c = 0; c < sizeof CMD_NAME / sizeof CMD_NAME[0]; c++)
            if (o->commands & (1u << c)) {
                fprintf(f, "%s%s", sep, CMD_NAME[c]);
                sep = ",";
            }
        fprintf(f, "\t%s\t", o->section == SEC_HIDDEN ? "hidden" : "shown");
        for (const char *h = o->help; *h; h++)
            fputc(*h == '\n' ? ' ' : *h, f);
        fputc('\n', f);
    }
}
