/* upload.c — publishing a folder to a Hub repo (see upload.h; the protocol
 * is docs/hub-protocol.md §10, read from huggingface_hub hf_api.py
 * create_repo, create_branch, preupload_lfs_files, create_commit,
 * upload_folder and _commit_api.py). */
#include "flashify/upload.h"
#include "flashify/cache.h"
#include "flashify/commit.h"
#include "flashify/http.h"
#include "flashify/lfs.h"
#include "flashify/upload_scan.h"
#include "flashify/util.h"

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PREUPLOAD_MAX 256     /* files per preupload call (_commit_api.py) */
#define SLOW_TIMEOUT 300      /* s without progress for a commit or a completion */

typedef struct {
    const upload_request *req;
    upload_result *res;
    http_client http;
    CURL *h;
    const char *repo_id;
    const char *branch;       /* where commits go: the revision, then a PR's branch */
    char *qbranch;            /* it, percent-encoded */
    char pr_branch[64];
    int exists;               /* the repo exists (a dry run does not create it) */
    char head[41];            /* the commit the next commit builds on */
    int64_t kept;             /* regular-file bytes held in memory */
    int jobs;
} up_run;

/* ----------------------------------------------------------------------------
 * Requests */

/* A JSON request to the Hub with the token; FL_OK when a reply arrived
 * (hd->status says which). */
static fl_status api(up_run *R, const char *method, const char *url, const char *body,
                     strbuf *reply, http_headers *hd, fl_error *err)
{
    http_request req = {.method = method, .url = url, .auth = 1,
                        .content_type = body ? "application/json" : NULL, .body = body,
                        .body_len = body ? strlen(body) : 0, .reply = reply,
                        .retry = HTTP_RETRY_TRANSIENT};
    http_headers_reset(hd);
    return http_perform(&R->http, R->h, &req, hd, NULL, err);
}

static fl_status reply_error(up_run *R, const http_headers *hd, const char *what, fl_error *err)
{
    http_response r = {0};
    http_response_fill(&r, hd, hd->status);
    return http_write_error(&R->http, &r, what, err);
}

/* GET /api/models/{id}/revision/{branch} -> *sha (or "" when missing:
 * *status 404). */
static fl_status branch_head(up_run *R, char sha[41], long *status, fl_error *err)
{
    char *url = fl_asprintf("%s/api/models/%s/revision/%s", R->http.endpoint, R->repo_id,
                            R->qbranch);
    strbuf reply = {0};
    http_headers hd = {0};
    fl_status st = url ? api(R, "GET", url, NULL, &reply, &hd, err)
                       : fl_fail(err, FL_EIO, "out of memory");
    sha[0] = 0;
    *status = hd.status;
    if (st == FL_OK && hd.status == 200) {
        cJSON *j = cJSON_Parse(reply.p ? reply.p : "");
        const char *s = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "sha"));
        if (cache_is_commit(s))
            memcpy(sha, s, 41);
        else
            st = fl_fail(err, FL_ENET, "%s: the revision API gave no commit for '%s'",
                         R->repo_id, R->branch);
        cJSON_Delete(j);
    } else if (st == FL_OK && hd.status != 404) {
        http_response r = {0};
        http_response_fill(&r, &hd, hd.status);
        st = http_error(&R->http, &r, NULL, err);
    }
    free(url);
    sb_free(&reply);
    http_headers_reset(&hd);
    return st;
}

/* ----------------------------------------------------------------------------
 * The repo and the branch */

/* create_repo(exist_ok=True): 409 is an existing repo; 401/403 may be a
 * token that cannot create but can write an existing repo, so look. */
static fl_status ensure_repo(up_run *R, fl_error *err)
{
    size_t ns = strcspn(R->repo_id, "/");
    char *url = fl_asprintf("%s/api/models/%s", R->http.endpoint, R->repo_id);
    char *create = fl_asprintf("%s/api/repos/create", R->http.endpoint);
    strbuf body = {0};
    sb_str(&body, "{\"name\":");
    sb_json_string(&body, R->repo_id + ns + 1);
    sb_printf(&body, ",\"organization\":\"%.*s\"%s}", (int)ns, R->repo_id,
              R->req->private_repo ? ",\"visibility\":\"private\"" : "");
    http_headers hd = {0}, look = {0};
    fl_status st = url && create && !body.oom ? FL_OK : fl_fail(err, FL_EIO, "out of memory");
    if (st == FL_OK && !R->req->dry_run)
        st = api(R, "POST", create, body.p, NULL, &hd, err);
    if (st == FL_OK && !R->req->dry_run && hd.status == 200) {
        R->res->created = R->exists = 1;
    } else if (st == FL_OK && (R->req->dry_run || hd.status == 401 || hd.status == 403 ||
                               hd.status == 409)) {
        st = api(R, "GET", url, NULL, NULL, &look, err);
        R->exists = st == FL_OK && look.status == 200;
        if (st == FL_OK && !R->exists && R->req->dry_run && (look.status == 401 || look.status == 404))
            R->res->created = 1;        /* would be created */
        else if (st == FL_OK && !R->exists)
            st = reply_error(R, R->req->dry_run ? &look : &hd, "creating the repository", err);
        else if (R->req->private_repo)
            http_log(&R->http, "%s exists: --private does not change its visibility", R->repo_id);
    } else if (st == FL_OK) {
        st = reply_error(R, &hd, "creating the repository", err);
    }
    free(url);
    free(create);
    sb_free(&body);
    http_headers_reset(&hd);
    http_headers_reset(&look);
    return st;
}

/* The head of the branch; a missing branch other than main is created
 * from main (hf upload does the same), except in a dry run. */
static fl_status resolve_head(up_run *R, fl_error *err)
{
    long status;
    fl_status st = branch_head(R, R->head, &status, err);
    if (st || R->head[0])
        return st;
    if (!strcmp(R->branch, "main") || R->req->create_pr)
        return fl_fail(err, FL_ENET, "%s has no branch '%s' (HTTP %ld)", R->repo_id, R->branch,
                       status);
    if (R->req->dry_run) {
        http_log(&R->http, "branch '%s' does not exist: it would be created from main", R->branch);
        return FL_OK;
    }
    char *url = fl_asprintf("%s/api/models/%s/branch/%s", R->http.endpoint, R->repo_id, R->qbranch);
    http_headers hd = {0};
    st = url ? api(R, "POST", url, "{}", NULL, &hd, err) : fl_fail(err, FL_EIO, "out of memory");
    if (st == FL_OK && hd.status != 200 && hd.status != 409)
        st = reply_error(R, &hd, "creating the branch", err);
    free(url);
    http_headers_reset(&hd);
    if (st == FL_OK)
        st = branch_head(R, R->head, &status, err);
    if (st == FL_OK && !R->head[0])
        st = fl_fail(err, FL_ENET, "%s: branch '%s' is still missing after creating it",
                     R->repo_id, R->branch);
    return st;
}

/* POST /api/validate-yaml: a README.md front matter the Hub rejects fails
 * now, before anything is sent (hf_api.py _validate_yaml). */
static fl_status validate_card(up_run *R, const upload_file *readme, fl_error *err)
{
    upload_file copy = *readme;
    copy.content = NULL;
    copy.gitsha1[0] = 0;
    fl_status st = upload_read_content(&copy, err);
    if (st)
        return st;
    R->res->bytes_read += copy.size;
    strbuf body = {0};
    sb_str(&body, "{\"content\":");
    char *text = malloc((size_t)copy.size + 1);
    if (text) {
        memcpy(text, copy.content, (size_t)copy.size);
        text[copy.size] = 0;
        sb_json_string(&body, text);
    } else {
        body.oom = 1;
    }
    sb_str(&body, ",\"repoType\":\"model\"}");
    free(text);
    free(copy.content);
    char *url = fl_asprintf("%s/api/validate-yaml", R->http.endpoint);
    strbuf reply = {0};
    http_headers hd = {0};
    st = url && !body.oom ? api(R, "POST", url, body.p, &reply, &hd, err)
                          : fl_fail(err, FL_EIO, "out of memory");
    if (st == FL_OK && hd.status == 400) {
        cJSON *j = cJSON_Parse(reply.p ? reply.p : "");
        const cJSON *e0 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "errors"), 0);
        const char *m = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e0, "message"));
        st = fl_fail(err, FL_EINPUT, "%s: the Hub rejects its metadata: %s", readme->full,
                     m ? m : hd.error_msg);
        cJSON_Delete(j);
    } else if (st == FL_OK && hd.status != 200) {
        st = reply_error(R, &hd, "validating README.md", err);
    }
    free(url);
    sb_free(&body);
    sb_free(&reply);
    http_headers_reset(&hd);
    return st;
}

/* ----------------------------------------------------------------------------
 * Preupload: regular or LFS, and what the branch has */

static upload_file *find_file(upload_result *res, const char *path)
{
    size_t lo = 0, hi = res->n_files;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(res->files[mid].path, path);
        if (!c)
            return &res->files[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* The preupload answer for `n` files. */
static fl_status read_modes(up_run *R, const char *body, size_t n, fl_error *err)
{
    size_t seen = 0;
    cJSON *j = cJSON_Parse(body);
    const cJSON *files = cJSON_GetObjectItemCaseSensitive(j, "files"), *e;
    fl_status st = cJSON_IsArray(files) ? FL_OK
                                        : fl_fail(err, FL_ENET, "the preupload answer has no files");
    cJSON_ArrayForEach(e, files) {
        const char *path = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "path"));
        const char *mode = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "uploadMode"));
        const char *oid = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "oid"));
        upload_file *f = path ? find_file(R->res, path) : NULL;
        if (!f || !mode || (strcmp(mode, "lfs") && strcmp(mode, "regular"))) {
            st = fl_fail(err, FL_ENET, "the preupload answer has an unusable entry for '%.200s'",
                         path ? path : "?");
            break;
        }
        /* Empty files cannot be LFS objects (_fetch_upload_modes). */
        f->lfs = !strcmp(mode, "lfs") && f->size > 0;
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "shouldIgnore")))
            f->state = UPLOAD_IGNORED;
        snprintf(f->remote_oid, sizeof f->remote_oid, "%s", oid ? oid : "");
        seen++;
    }
    cJSON_Delete(j);
    if (st == FL_OK && seen != n)
        st = fl_fail(err, FL_ENET, "the preupload answer covers %zu of %zu files", seen, n);
    return st;
}

/* One preupload call for files [from, to). */
static fl_status preupload_chunk(up_run *R, const char *url, size_t from, size_t to, fl_error *err)
{
    strbuf body = {0};
    fl_status st = FL_OK;
    sb_str(&body, "{\"files\":[");
    for (size_t i = from; st == FL_OK && i < to; i++) {
        upload_file *f = &R->res->files[i];
        unsigned char sample[512];
        size_t n = 0;
        if ((st = upload_sample(f, sample, &n, err)))
            break;
        R->res->bytes_read += (int64_t)n;
        char *b64 = hub_base64(sample, n);
        sb_str(&body, i > from ? ",{\"path\":" : "{\"path\":");
        sb_json_string(&body, f->path);
        sb_printf(&body, ",\"size\":%lld,\"sample\":\"%s\"}", (long long)f->size, b64 ? b64 : "");
        if (!b64)
            body.oom = 1;
        free(b64);
    }
    sb_str(&body, "]}");
    strbuf reply = {0};
    http_headers hd = {0};
    if (st == FL_OK)
        st = body.oom ? fl_fail(err, FL_EIO, "out of memory")
                      : api(R, "POST", url, body.p, &reply, &hd, err);
    if (st == FL_OK && hd.status != 200)
        st = reply_error(R, &hd, "asking the Hub how to upload the files", err);
    else if (st == FL_OK)
        st = read_modes(R, reply.p ? reply.p : "", to - from, err);
    sb_free(&body);
    sb_free(&reply);
    http_headers_reset(&hd);
    return st;
}

/* Preupload for files [from, to) of the listing (all of them, or a
 * commit's, to see whether it was applied). */
static fl_status preupload(up_run *R, size_t from, size_t to, fl_error *err)
{
    char *url = fl_asprintf("%s/api/models/%s/preupload/%s%s", R->http.endpoint, R->repo_id,
                            R->qbranch, R->req->create_pr && !R->pr_branch[0] ? "?create_pr=1" : "");
    if (!url)
        return fl_fail(err, FL_EIO, "out of memory");
    fl_status st = FL_OK;
    for (size_t i = from; st == FL_OK && i < to; i += PREUPLOAD_MAX)
        st = preupload_chunk(R, url, i, i + PREUPLOAD_MAX < to ? i + PREUPLOAD_MAX : to, err);
    free(url);
    return st;
}

/* ----------------------------------------------------------------------------
 * Digests: what is unchanged */

/* A regular file: read (it goes in the commit), git blob id, compared. */
static fl_status regular_digest(up_run *R, upload_file *f, fl_error *err)
{
    if (f->size > UPLOAD_COMMIT_INLINE)
        return fl_fail(err, FL_EINPUT, "%s: the Hub asks for it as a regular (not LFS) file, but it "
                       "is %.1f MB; flashify sends at most %lld MiB inline", f->full,
                       f->size / 1e6, (long long)(UPLOAD_COMMIT_INLINE >> 20));
    fl_status st = upload_read_content(f, err);
    if (st)
        return st;
    R->res->bytes_read += f->size;
    if (!strcmp(f->remote_oid, f->gitsha1)) {
        f->state = UPLOAD_UNCHANGED;
    } else {
        f->state = UPLOAD_INLINE;
        if (R->kept + f->size <= UPLOAD_KEEP_MAX) {
            R->kept += f->size;
            return FL_OK;
        }
    }
    free(f->content);   /* read again for its commit */
    f->content = NULL;
    return FL_OK;
}

static const upload_digest *known_digest(const upload_request *req, const upload_file *f)
{
    for (size_t i = 0; i < req->n_digests; i++)
        if (!strcmp(req->digests[i].path, f->path) && req->digests[i].size == f->size &&
            strlen(req->digests[i].sha256) == 64)
            return &req->digests[i];
    return NULL;
}

static fl_status digests(up_run *R, fl_error *err)
{
    upload_result *res = R->res;
    upload_file **todo = calloc(res->n_files ? res->n_files : 1, sizeof *todo);
    if (!todo)
        return fl_fail(err, FL_EIO, "out of memory");
    size_t n = 0;
    fl_status st = FL_OK;
    for (size_t i = 0; st == FL_OK && i < res->n_files; i++) {
        upload_file *f = &res->files[i];
        const upload_digest *d;
        if (f->state == UPLOAD_IGNORED)
            continue;
        if (fl_interrupted)
            st = fl_fail(err, FL_EINTR, "interrupted");
        else if (!f->lfs)
            st = regular_digest(R, f, err);
        else if ((d = known_digest(R->req, f)))
            memcpy(f->sha256, d->sha256, sizeof f->sha256);   /* computed while written */
        else
            todo[n++] = f;
    }
    if (st == FL_OK)
        st = upload_hash_lfs(todo, n, R->jobs, &R->http, &res->bytes_read, err);
    for (size_t i = 0; st == FL_OK && i < res->n_files; i++) {
        upload_file *f = &res->files[i];
        if (f->lfs && f->state != UPLOAD_IGNORED)
            f->state = !strcmp(f->remote_oid, f->sha256) ? UPLOAD_UNCHANGED : UPLOAD_SEND;
    }
    free(todo);
    return st;
}

/* ----------------------------------------------------------------------------
 * Commits */

typedef struct {
    upload_file **files;      /* this commit's, LFS first */
    size_t n;
} batch;

/* Where a file goes in the commit order: LFS files (the weights), then
 * regular files in subfolders, then top-level ones, config.json last of
 * all, so that nothing is loadable before the last commit lands; path
 * order within each group. */
static int commit_rank(const upload_file *f)
{
    if (f->lfs)
        return 0;
    if (strchr(f->path, '/'))
        return 1;
    return strcmp(f->path, "config.json") ? 2 : 3;
}

/* The commits in that order, cut at UPLOAD_COMMIT_FILES files or
 * UPLOAD_COMMIT_INLINE bytes of regular-file content. */
static fl_status plan_commits(upload_result *res, batch **out, size_t *n_out, fl_error *err)
{
    size_t n = 0;
    for (size_t i = 0; i < res->n_files; i++)
        n += res->files[i].state == UPLOAD_SEND || res->files[i].state == UPLOAD_INLINE;
    upload_file **order = calloc(n ? n : 1, sizeof *order);
    batch *b = calloc(n ? n : 1, sizeof *b);
    if (!order || !b) {
        free(order);
        free(b);
        return fl_fail(err, FL_EIO, "out of memory");
    }
    size_t k = 0, nb = 0, in_batch = 0;
    for (int rank = 0; rank < 4; rank++)
        for (size_t i = 0; i < res->n_files; i++) {
            upload_file *f = &res->files[i];
            if ((f->state == UPLOAD_SEND || f->state == UPLOAD_INLINE) && commit_rank(f) == rank)
                order[k++] = f;
        }
    int64_t inline_bytes = 0;
    for (size_t i = 0; i < n; i++) {
        int64_t add = order[i]->lfs ? 0 : order[i]->size;
        if (!nb || in_batch == UPLOAD_COMMIT_FILES || inline_bytes + add > UPLOAD_COMMIT_INLINE) {
            b[nb++] = (batch){order + i, 0};
            in_batch = 0;
            inline_bytes = 0;
        }
        b[nb - 1].n++;
        in_batch++;
        inline_bytes += add;
    }
    if (!nb)
        free(order);
    *out = b;
    *n_out = nb;
    return FL_OK;
}

/* The LFS objects of a commit (one per distinct sha256): what the storage
 * lacks is sent. */
static fl_status send_lfs(up_run *R, batch *b, int k, size_t nb, fl_error *err)
{
    lfs_object *objs = calloc(b->n ? b->n : 1, sizeof *objs);
    if (!objs)
        return fl_fail(err, FL_EIO, "out of memory");
    size_t n = 0;
    for (size_t i = 0; i < b->n; i++) {
        upload_file *f = b->files[i];
        int dup = 0;
        for (size_t j = 0; f->lfs && j < n && !dup; j++)
            dup = !strcmp(objs[j].oid, f->sha256);
        if (!f->lfs || dup)
            continue;
        objs[n] = (lfs_object){.path = f->path, .file = f->full, .size = f->size, .fd = -1};
        memcpy(objs[n].oid, f->sha256, sizeof objs[n].oid);
        n++;
    }
    char *url = fl_asprintf("%s/%s.git/info/lfs/objects/batch", R->http.endpoint, R->repo_id);
    lfs_session s = {.http = &R->http, .batch_url = url, .jobs = R->jobs,
                     .ref = R->req->create_pr ? NULL : R->branch, .slow_timeout = SLOW_TIMEOUT,
                     .step = nb > 1 ? k : 0, .steps = nb > 1 ? (int)nb : 0};
    fl_status st = url ? FL_OK : fl_fail(err, FL_EIO, "out of memory");
    for (size_t i = 0; st == FL_OK && i < n; i += LFS_BATCH_MAX)
        st = lfs_batch(&s, R->h, objs + i, n - i < LFS_BATCH_MAX ? n - i : LFS_BATCH_MAX, err);
    int64_t todo = 0;
    for (size_t i = 0; st == FL_OK && i < n; i++) {
        int stored = objs[i].action == LFS_STORED;
        todo += stored ? 0 : objs[i].size;
        for (size_t j = 0; j < b->n; j++)
            if (stored && b->files[j]->lfs && !strcmp(b->files[j]->sha256, objs[i].oid))
                b->files[j]->state = UPLOAD_STORED;
    }
    R->res->bytes_lfs_new += todo;
    pthread_mutex_lock(&R->http.mu);
    R->http.all_done = 0;
    R->http.all_total = todo;
    pthread_mutex_unlock(&R->http.mu);
    if (st == FL_OK)
        st = lfs_transfer(&s, objs, n, err);
    R->res->bytes_sent += s.sent;
    R->res->bytes_resent += s.resent;
    R->res->bytes_read += s.read;
    for (size_t i = 0; i < n; i++)
        lfs_object_free(&objs[i]);
    free(objs);
    free(url);
    return st;
}

/* A commit whose reply was lost and whose retry met 412: applied when the
 * branch now has every file of it. */
static int batch_applied(up_run *R, batch *b, fl_error *err)
{
    size_t lo = (size_t)(b->files[0] - R->res->files), hi = lo;
    for (size_t i = 0; i < b->n; i++) {
        size_t k = (size_t)(b->files[i] - R->res->files);
        lo = k < lo ? k : lo;
        hi = k + 1 > hi ? k + 1 : hi;
    }
    if (preupload(R, lo, hi, err) != FL_OK)
        return 0;
    for (size_t i = 0; i < b->n; i++) {
        const upload_file *f = b->files[i];
        if (strcmp(f->remote_oid, f->lfs ? f->sha256 : f->gitsha1))
            return 0;
    }
    long status;
    return branch_head(R, R->head, &status, err) == FL_OK && R->head[0];
}

static fl_status branch_moved(up_run *R, fl_error *err)
{
    char now[41];
    long status;
    fl_error ignored;
    if (branch_head(R, now, &status, &ignored) != FL_OK || !now[0])
        snprintf(now, sizeof now, "another commit");
    return fl_fail(err, FL_ENET, "%s: '%s' moved to %s since this upload started from %s (someone "
                   "else pushed); run the upload again (nothing sent is sent twice) or use "
                   "--create-pr", R->repo_id, R->branch, now, R->res->parent);
}

/* After the commit that opened a pull request, later commits go to its
 * branch refs/pr/N (from the pullRequestUrl ".../discussions/N"). */
static fl_status follow_pr(up_run *R, const char *pr_url, fl_error *err)
{
    const char *slash = pr_url ? strrchr(pr_url, '/') : NULL;
    long n = slash ? strtol(slash + 1, NULL, 10) : 0;
    if (n <= 0)
        return fl_fail(err, FL_ENET, "the Hub opened a pull request but named no number (%s)",
                       pr_url ? pr_url : "no URL");
    snprintf(R->pr_branch, sizeof R->pr_branch, "refs/pr/%ld", n);
    free(R->qbranch);
    R->branch = R->pr_branch;
    R->qbranch = http_quote(R->pr_branch, "");
    return R->qbranch ? FL_OK : fl_fail(err, FL_EIO, "out of memory");
}

/* Reads again what regular files of b were not held, then the ops. */
static fl_status batch_ops(up_run *R, batch *b, commit_op *ops, fl_error *err)
{
    for (size_t i = 0; i < b->n; i++) {
        upload_file *f = b->files[i];
        if (!f->lfs && !f->content) {
            fl_status st = upload_read_content(f, err);
            if (st)
                return st;
            R->res->bytes_read += f->size;
        }
        ops[i] = (commit_op){.path = f->path, .lfs = f->lfs, .oid = f->sha256, .size = f->size,
                             .content = f->content};
    }
    return FL_OK;
}

/* The k-th commit (1-based) of nb. */
static fl_status commit_batch(up_run *R, batch *b, int k, size_t nb, fl_error *err)
{
    commit_op *ops = calloc(b->n, sizeof *ops);
    const char *msg = R->req->message ? R->req->message : "Upload folder with flashify";
    char *summary = nb > 1 ? fl_asprintf("%s (%d of %zu)", msg, k, nb) : fl_strdup(msg);
    int open_pr = R->req->create_pr && !R->pr_branch[0];
    char *url = fl_asprintf("%s/api/models/%s/commit/%s%s", R->http.endpoint, R->repo_id,
                            R->qbranch, open_pr ? "?create_pr=1" : "");
    fl_status st = ops && summary && url ? batch_ops(R, b, ops, err)
                                         : fl_fail(err, FL_EIO, "out of memory");
    /* A pull request starts from the head the upload started from
     * (create_commit's parent_commit); it cannot overwrite anything. */
    commit_request cr = {.url = url, .summary = summary, .description = R->req->description,
                         .parent = R->head, .opens_pr = open_pr, .ops = ops, .n_ops = b->n,
                         .timeout = SLOW_TIMEOUT};
    commit_result out = {0};
    if (st == FL_OK)
        st = hub_commit(&R->http, R->h, &cr, &out, err);
    R->res->bytes_commit += out.payload_bytes;
    long status = out.reply.status;
    if (st == FL_OK && status == 412)
        st = out.maybe_applied && batch_applied(R, b, err) ? FL_OK : branch_moved(R, err);
    else if (st == FL_OK && (status < 200 || status >= 300))
        st = http_write_error(&R->http, &out.reply, "committing", err);
    else if (st == FL_OK)
        memcpy(R->head, out.oid, sizeof R->head);
    if (st == FL_OK && out.url) {
        free(R->res->commit_url);
        R->res->commit_url = fl_strdup(out.url);
    }
    if (st == FL_OK && open_pr) {
        R->res->pr_url = out.pr_url ? fl_strdup(out.pr_url) : NULL;
        st = follow_pr(R, out.pr_url, err);
    }
    for (size_t i = 0; st == FL_OK && i < b->n; i++) {
        b->files[i]->commit = k;
        free(b->files[i]->content);
        b->files[i]->content = NULL;
    }
    if (st == FL_OK)
        R->res->n_commits++;
    commit_result_free(&out);
    free(ops);
    free(summary);
    free(url);
    return st;
}

static fl_status commit_all(up_run *R, fl_error *err)
{
    batch *b = NULL;
    size_t nb = 0;
    fl_status st = plan_commits(R->res, &b, &nb, err);
    for (size_t k = 0; st == FL_OK && k < nb; k++) {
        if (fl_interrupted) {
            st = fl_fail(err, FL_EINTR, "interrupted after %zu of %zu commits: run again to send "
                         "the rest", k, nb);
            break;
        }
        st = send_lfs(R, &b[k], (int)k + 1, nb, err);
        if (st == FL_OK)
            st = commit_batch(R, &b[k], (int)k + 1, nb, err);
    }
    if (nb)
        free(b[0].files);
    free(b);
    return st;
}

/* ----------------------------------------------------------------------------
 * The run */

static fl_status check_request(const upload_request *req, fl_error *err)
{
    if (!req->repo_id || strchr(req->repo_id, '@') || !hub_is_repo_id(req->repo_id))
        return fl_fail(err, FL_EUSAGE, "'%s' is not a repo id to upload to (org/name; a branch "
                       "goes in --revision)", req->repo_id ? req->repo_id : "");
    const char *rev = req->revision ? req->revision : "main";
    if (!cache_safe_relpath(rev) || cache_is_commit(rev))
        return fl_fail(err, FL_EUSAGE, "--revision '%s' is not a branch name", rev);
    if (req->create_pr && strcmp(rev, "main"))
        return fl_fail(err, FL_EUSAGE, "--create-pr opens a pull request against main; it "
                       "cannot be combined with --revision %s", rev);
    return FL_OK;
}

/* Everything after the folder was listed and the client set up. */
static fl_status upload_run(up_run *R, fl_error *err)
{
    upload_result *res = R->res;
    fl_status st = ensure_repo(R, err);
    if (st == FL_OK && R->exists)
        st = resolve_head(R, err);
    memcpy(res->parent, R->head, sizeof res->parent);
    const upload_file *readme = find_file(res, "README.md");
    if (st == FL_OK && readme)
        st = validate_card(R, readme, err);
    if (st == FL_OK && R->head[0])
        st = preupload(R, 0, res->n_files, err);
    if (st == FL_OK && !R->head[0]) {
        /* A dry run for a repo (or branch) that does not exist: all new;
         * whether a file would be LFS only the Hub says. */
        for (size_t i = 0; i < res->n_files; i++)
            res->files[i].state = UPLOAD_SEND;
        return FL_OK;
    }
    if (st == FL_OK)
        st = digests(R, err);
    if (st == FL_OK && !R->req->dry_run)
        st = commit_all(R, err);
    if (st == FL_OK && !R->req->dry_run)
        memcpy(res->commit, R->head, sizeof res->commit);
    return st;
}

fl_status hub_upload(const upload_request *req, upload_result *res, fl_error *err)
{
    memset(res, 0, sizeof *res);
    fl_status st = check_request(req, err);
    if (st == FL_OK)
        st = upload_list(req->folder, &res->files, &res->n_files, err);
    if (st)
        return st;
    char *token = hub_find_token(req->token, req->env);
    if (!token)
        return fl_fail(err, FL_EINPUT, "uploading to %s needs a Hugging Face token with write "
                       "access: set HF_TOKEN, pass --token, or run `hf auth login` (tokens: "
                       "https://huggingface.co/settings/tokens)", req->repo_id);
    up_run R = {.req = req, .res = res, .repo_id = req->repo_id,
                .branch = req->revision ? req->revision : "main",
                .jobs = req->jobs > 0 ? (req->jobs < 16 ? req->jobs : 16) : 4};
    st = http_client_init(&R.http, req->env, hub_endpoint(req->env), token, err);
    hub_token_free(token);
    if (st)
        return st;
    R.http.repo_id = req->repo_id;
    R.http.revision = R.branch;
    R.http.verbose = req->verbose;
    R.http.progress = req->progress;
    R.http.progress_ctx = req->progress_ctx;
    R.qbranch = http_quote(R.branch, "");
    R.h = curl_easy_init();
    res->repo_url = fl_asprintf("%s/%s", R.http.endpoint, req->repo_id);
    if (!R.qbranch || !R.h || !res->repo_url)
        st = fl_fail(err, FL_EIO, "out of memory");
    http_log(&R.http, "endpoint %s, %zu files in %s, token set (hidden)", R.http.endpoint,
             res->n_files, req->folder);
    if (st == FL_OK)
        st = upload_run(&R, err);
    if (R.h)
        curl_easy_cleanup(R.h);
    free(R.qbranch);
    http_client_free(&R.http);
    return st;
}

void upload_result_free(upload_result *res)
{
    upload_files_free(res->files, res->n_files);
    free(res->repo_url);
    free(res->commit_url);
    free(res->pr_url);
    memset(res, 0, sizeof *res);
}
