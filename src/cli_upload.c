/* cli_upload.c — `flashify upload` and --push-to-hub (see cli.h): builds
 * the upload request from the options, runs it with the hub progress
 * lines, and reports: the URL on stdout (the commit, the pull request, or
 * the repo when nothing changed), a summary on stderr, or with --json one
 * JSON object; with --dry-run the list of what would be sent. */
#include "cli.h"

#include "flashify/upload.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const STATE_NAME[] = {
    [UPLOAD_SEND] = "send",
    [UPLOAD_STORED] = "stored",
    [UPLOAD_INLINE] = "inline",
    [UPLOAD_UNCHANGED] = "unchanged",
    [UPLOAD_IGNORED] = "ignored",
};

/* What a state means in the --dry-run listing. */
static const char *const STATE_HELP[] = {
    [UPLOAD_SEND] = "would send",
    [UPLOAD_STORED] = "stored",
    [UPLOAD_INLINE] = "would commit",
    [UPLOAD_UNCHANGED] = "unchanged",
    [UPLOAD_IGNORED] = "ignored",
};

static void print_json(const upload_request *req, const upload_result *r, FILE *f)
{
    strbuf b = {0};
    sb_str(&b, "{\"repo\":");
    sb_json_string(&b, req->repo_id);
    sb_str(&b, ",\"revision\":");
    sb_json_string(&b, req->revision ? req->revision : "main");
    sb_printf(&b, ",\"dry_run\":%s,\"created\":%s,\"commits\":%d", req->dry_run ? "true" : "false",
              r->created ? "true" : "false", r->n_commits);
    sb_printf(&b, ",\"parent\":%s%s%s", r->parent[0] ? "\"" : "", r->parent[0] ? r->parent : "null",
              r->parent[0] ? "\"" : "");
    sb_printf(&b, ",\"commit\":%s%s%s", r->commit[0] ? "\"" : "", r->commit[0] ? r->commit : "null",
              r->commit[0] ? "\"" : "");
    const char *urls[][2] = {{"url", r->repo_url}, {"commit_url", r->commit_url},
                             {"pr_url", r->pr_url}};
    for (size_t i = 0; i < 3; i++) {
        sb_printf(&b, ",\"%s\":", urls[i][0]);
        if (urls[i][1])
            sb_json_string(&b, urls[i][1]);
        else
            sb_str(&b, "null");
    }
    sb_printf(&b, ",\"bytes_read\":%lld,\"bytes_sent\":%lld,\"bytes_resent\":%lld,"
              "\"bytes_lfs_new\":%lld,\"bytes_commit\":%lld,\"files\":[",
              (long long)r->bytes_read, (long long)r->bytes_sent, (long long)r->bytes_resent,
              (long long)r->bytes_lfs_new, (long long)r->bytes_commit);
    for (size_t i = 0; i < r->n_files; i++) {
        const upload_file *u = &r->files[i];
        sb_str(&b, i ? ",{\"path\":" : "{\"path\":");
        sb_json_string(&b, u->path);
        sb_printf(&b, ",\"size\":%lld,\"lfs\":%s,\"state\":\"%s\",\"commit\":%d,\"oid\":\"%s\"}",
                  (long long)u->size, u->lfs ? "true" : "false", STATE_NAME[u->state], u->commit,
                  u->lfs ? u->sha256 : u->gitsha1);
    }
    sb_str(&b, "]}\n");
    if (b.p)
        fputs(b.p, f);
    sb_free(&b);
}

static void print_dry_run(const upload_request *req, const upload_result *r, FILE *f)
{
    size_t n_send = 0;
    long long bytes = 0;
    if (r->created)
        fprintf(f, "would create %s%s\n", req->repo_id, req->private_repo ? " (private)" : "");
    for (size_t i = 0; i < r->n_files; i++) {
        const upload_file *u = &r->files[i];
        int sends = u->state == UPLOAD_SEND || u->state == UPLOAD_INLINE;
        n_send += sends;
        bytes += sends ? u->size : 0;
        fprintf(f, "  %-12s %s (%s%lld bytes)\n", STATE_HELP[u->state], u->path,
                r->created ? "" : u->lfs ? "LFS, " : "regular, ", (long long)u->size);
    }
    fprintf(f, "dry run: %zu of %zu files would be sent (%lld bytes; LFS bytes the storage "
            "already holds are not sent); nothing was created or sent\n", n_send, r->n_files,
            bytes);
}

static void print_summary(const upload_request *req, const upload_result *r)
{
    size_t unchanged = 0, stored = 0;
    for (size_t i = 0; i < r->n_files; i++) {
        unchanged += r->files[i].state == UPLOAD_UNCHANGED;
        stored += r->files[i].state == UPLOAD_STORED;
    }
    const char *rev = req->revision ? req->revision : "main";
    if (!r->n_commits) {
        fprintf(stderr, "flashify: nothing to commit: %s@%s already has these %zu files "
                "(commit %.12s)\n", req->repo_id, rev, r->n_files, r->commit);
        return;
    }
    fprintf(stderr, "flashify: %s %s: %d commit%s, %.2f GB of LFS data sent%s%s, %zu file%s "
            "unchanged, %zu already in LFS storage\n",
            r->pr_url ? "opened a pull request on" : "published to", req->repo_id, r->n_commits,
            r->n_commits == 1 ? "" : "s", r->bytes_sent / 1e9,
            r->bytes_resent ? " (retries included)" : "", r->created ? ", repo created" : "",
            unchanged, unchanged == 1 ? "" : "s", stored);
}

/* The upload's events on the one progress line: "hashing", then
 * "uploading" (with the commit's number when there are several);
 * --verbose lines above it. */
static void on_event(const hub_event *ev, void *ctx)
{
    cli_progress *p = ctx;
    if (ev->kind == HUB_EV_LOG) {
        cli_progress_clear(p);
        fprintf(stderr, "hub: %s\n", ev->msg);
        return;
    }
    char label[64] = "hashing";
    if (ev->phase == HUB_PHASE_UPLOAD && ev->steps > 1)
        snprintf(label, sizeof label, "uploading (%d/%d)", ev->step, ev->steps);
    else if (ev->phase == HUB_PHASE_UPLOAD)
        snprintf(label, sizeof label, "uploading");
    /* A retried part takes back what it had sent: never below 0. */
    if (ev->all_total > 0)
        cli_progress_update(p, label, ev->all_done > 0 ? (uint64_t)ev->all_done : 0,
                            (uint64_t)ev->all_total);
}

static fl_status run_upload(const cli_args *a, upload_request *req, fl_error *err)
{
    hub_env env;
    cli_hub_env(&env);
    cli_progress line;
    cli_progress_init(&line, stderr, a->quiet, a->verbose);
    req->env = &env;
    req->token = a->token;
    req->private_repo = a->private_repo;
    req->create_pr = a->create_pr;
    req->verbose = a->verbose;
    req->jobs = a->jobs ? a->jobs : 4;
    req->progress = on_event;
    req->progress_ctx = &line;
    if (a->message)
        req->message = a->message;
    upload_result r;
    fl_status s = hub_upload(req, &r, err);
    cli_progress_finish(&line);
    if (s == FL_OK) {
        if (a->json)
            print_json(req, &r, stdout);
        else if (req->dry_run)
            print_dry_run(req, &r, stdout);
        else
            printf("%s\n", r.pr_url ? r.pr_url : r.commit_url && r.n_commits ? r.commit_url
                                                                            : r.repo_url);
        if (!a->json && !req->dry_run && !a->quiet)
            print_summary(req, &r);
    }
    upload_result_free(&r);
    return s;
}

fl_status cli_upload(const cli_args *a, const char *folder, const char *repo, fl_error *err)
{
    upload_request req = {.folder = folder, .repo_id = repo, .revision = a->revision,
                          .dry_run = a->dry_run};
    return run_upload(a, &req, err);
}

fl_status cli_publish_check(const cli_args *a, fl_error *err)
{
    if (strchr(a->push_to_hub, '@') || !hub_is_repo_id(a->push_to_hub))
        return fl_fail(err, FL_EUSAGE, "--push-to-hub '%s' is not a repo id (org/name)",
                       a->push_to_hub);
    hub_env env;
    cli_hub_env(&env);
    char *token = hub_find_token(a->token, &env);
    if (!token)
        return fl_fail(err, FL_EINPUT, "--push-to-hub needs a Hugging Face token with write "
                       "access: set HF_TOKEN, pass --token, or run `hf auth login`");
    hub_token_free(token);
    return FL_OK;
}

fl_status cli_publish(cli_publish_ctx *p, const char *dir, fl_error *err)
{
    char msg[512];
    snprintf(msg, sizeof msg, "Upload FlashNorm checkpoint (flashify %s)", FLASHIFY_VERSION);
    /* The writer's digests, so the upload reads each file only to send it. */
    upload_digest *d = calloc(p->digests.n ? p->digests.n : 1, sizeof *d);
    if (!d)
        return fl_fail(err, FL_EIO, "out of memory");
    for (size_t i = 0; i < p->digests.n; i++) {
        d[i].path = p->digests.v[i].path;
        d[i].size = (int64_t)p->digests.v[i].size;
        memcpy(d[i].sha256, p->digests.v[i].sha256, sizeof d[i].sha256);
    }
    upload_request req = {.folder = dir, .repo_id = p->a->push_to_hub, .digests = d,
                          .n_digests = p->digests.n, .message = msg};
    fl_status st = run_upload(p->a, &req, err);
    free(d);
    return st;
}

void cli_publish_ctx_free(cli_publish_ctx *p)
{
    free(p->license);
    convert_digests_free(&p->digests);
    p->license = NULL;
}
