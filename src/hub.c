/* hub.c — resolving a Hugging Face repo id to a snapshot in the shared hub
 * cache (see hub.h).  The flow follows snapshot_download
 * (docs/hub-protocol.md §6): revision -> commit, tree listing (paginated),
 * file selection, then one HEAD per file the cache lacks and a verified
 * transfer per blob the cache lacks, on `jobs` worker threads. */
#include "flashify/hub.h"

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "flashify/cache.h"
#include "flashify/download.h"
#include "flashify/pool.h"
#include "flashify/util.h"

#define MAX_JOBS 16
#define MAX_TREE_PAGES 10000

/* ----------------------------------------------------------------------------
 * Repo ids and tokens */

/* One part of a repo id: [A-Za-z0-9_.-]{1,96}, no "--" / "..", not
 * starting with "." or "-". */
static int id_part_ok(const char *s, size_t n)
{
    if (n < 1 || n > 96 || s[0] == '.' || s[0] == '-')
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-' || c == '.'))
            return 0;
        if (i && (c == '-' || c == '.') && s[i - 1] == c)
            return 0;
    }
    return 1;
}

int hub_is_repo_id(const char *s)
{
    if (!s)
        return 0;
    const char *at = strchr(s, '@');
    size_t n = at ? (size_t)(at - s) : strlen(s);
    if (at && !cache_safe_relpath(at + 1))
        return 0;
    const char *slash = memchr(s, '/', n);
    if (!slash)
        return 0; /* "org/name" only: a bare word is more likely a typo'd path */
    size_t a = (size_t)(slash - s), b = n - a - 1;
    if (!id_part_ok(s, a) || !id_part_ok(slash + 1, b))
        return 0;
    if (b >= 4 && !strncmp(slash + 1 + b - 4, ".git", 4))
        return 0;
    return 1;
}

/* get_token(): trims whitespace, drops CR/LF; "" means none. */
static char *clean_token(const char *t)
{
    if (!t)
        return NULL;
    size_t n = strlen(t);
    char *out = malloc(n + 1), *w = out;
    if (!out)
        return NULL;
    for (size_t i = 0; i < n; i++)
        if (t[i] != '\r' && t[i] != '\n')
            *w++ = t[i];
    *w = 0;
    char *b = out;
    while (*b == ' ' || *b == '\t')
        b++;
    size_t len = strlen(b);
    while (len && (b[len - 1] == ' ' || b[len - 1] == '\t'))
        b[--len] = 0;
    if (!len) {
        free(out);
        return NULL;
    }
    memmove(out, b, len + 1);
    return out;
}

const char *hub_endpoint(const hub_env *env)
{
    return env && env->hf_endpoint && *env->hf_endpoint ? env->hf_endpoint
                                                        : "https://huggingface.co";
}

void hub_token_free(char *token)
{
    if (token) {
        memset(token, 0, strlen(token));
        free(token);
    }
}

int hub_sigpipe_safe(void)
{
    /* From 7.87.0 every TLS backend writes through libcurl's connection
     * filters, which send() with MSG_NOSIGNAL; before, OpenSSL wrote to
     * the socket itself (curl commit 55807e6c, docs/hub-protocol.md §9). */
    const curl_version_info_data *v = curl_version_info(CURLVERSION_NOW);
    return v && v->version_num >= 0x075700;
}

char *hub_find_token(const char *given, const hub_env *env)
{
    static const hub_env none;
    if (!env)
        env = &none;
    char *t;
    if ((t = clean_token(given)))
        return t;
    if ((t = clean_token(env->hf_token)))
        return t;
    if ((t = clean_token(env->hugging_face_hub_token)))
        return t;
    char *path = NULL;
    const char *p = env->hf_token_path;
    if (p && *p) {
        path = strdup(p);
    } else {
        char *home = cache_hf_home(env);
        if (home) {
            size_t n = strlen(home) + 8;
            path = malloc(n);
            if (path)
                snprintf(path, n, "%s/token", home);
            free(home);
        }
    }
    if (!path)
        return NULL;
    char *buf = NULL;
    size_t n = 0;
    fl_error ignored;
    fl_status rs = fl_read_file(path, 4096, 0, &buf, &n, &ignored);
    free(path);
    if (rs != FL_OK)
        return NULL;
    t = clean_token(buf);
    memset(buf, 0, n);
    free(buf);
    return t;
}

/* ----------------------------------------------------------------------------
 * Files of the repo and which of them to fetch */

typedef struct {
    char *path;
    int64_t size;        /* from the tree listing */
    int want;
    int is_weight;       /* fetched in the second phase */
} hub_file;

typedef struct {
    hub_file *v;
    size_t n, cap;
} file_list;

static void files_free(file_list *fl)
{
    for (size_t i = 0; i < fl->n; i++)
        free(fl->v[i].path);
    free(fl->v);
    memset(fl, 0, sizeof *fl);
}

static hub_file *files_find(file_list *fl, const char *path)
{
    for (size_t i = 0; i < fl->n; i++)
        if (!strcmp(fl->v[i].path, path))
            return &fl->v[i];
    return NULL;
}


/* The non-weight files a converter output needs (§6): configs, tokenizer
 * and generation files; never original/ (Llama's consolidated .pth and
 * params.json) or other runtimes' formats. */
static int wanted_aux(const char *p)
{
    if (!strncmp(p, "original/", 9))
        return 0;
    const char *base = strrchr(p, '/');
    base = base ? base + 1 : p;
    static const char *pat[] = {"*.json", "tokenizer*", "*.model", "*.tiktoken",
                                "vocab.txt", "merges.txt", "*.jinja"};
    for (size_t i = 0; i < sizeof pat / sizeof *pat; i++)
        if (fnmatch(pat[i], base, 0) == 0)
            return !fl_ends_with(p, ".safetensors") && !strchr(p, '/');
    return 0;
}

/* Reads one page of the tree JSON into fl; validates every path. */
static fl_status parse_tree_page(const char *body, const char *repo, file_list *fl,
                                 fl_error *err)
{
    cJSON *j = cJSON_Parse(body);
    if (!cJSON_IsArray(j)) {
        cJSON_Delete(j);
        return fl_fail(err, FL_ENET, "%s: the tree listing is not a JSON array", repo);
    }
    cJSON *e;
    cJSON_ArrayForEach(e, j) {
        const char *type = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "type"));
        const char *path = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "path"));
        cJSON *size = cJSON_GetObjectItemCaseSensitive(e, "size");
        if (!type || !path) {
            cJSON_Delete(j);
            return fl_fail(err, FL_ENET, "%s: tree entry without type or path", repo);
        }
        if (strcmp(type, "file"))
            continue;
        if (!cache_safe_relpath(path)) {
            fl_status st = fl_fail(err, FL_EINPUT,
                                   "%s: the Hub lists an unsafe file name '%.200s' "
                                   "(absolute, '..', backslash or control character)",
                                   repo, path);
            cJSON_Delete(j);
            return st;
        }
        double sz = cJSON_IsNumber(size) ? size->valuedouble : -1;
        if (fl->n == fl->cap) {
            size_t cap = fl->cap ? fl->cap * 2 : 64;
            hub_file *v = realloc(fl->v, cap * sizeof *v);
            if (!v) {
                cJSON_Delete(j);
                return fl_fail(err, FL_EIO, "out of memory");
            }
            fl->v = v;
            fl->cap = cap;
        }
        hub_file *f = &fl->v[fl->n++];
        memset(f, 0, sizeof *f);
        f->path = strdup(path);
        /* Sizes are JSON doubles: exact only below 2^53. */
        f->size = (sz >= 0 && sz < 9007199254740992.0 && sz == (double)(int64_t)sz) ? (int64_t)sz : -1;
        if (!f->path) {
            cJSON_Delete(j);
            return fl_fail(err, FL_EIO, "out of memory");
        }
    }
    cJSON_Delete(j);
    return FL_OK;
}

/* ----------------------------------------------------------------------------
 * The fetch run */

typedef struct {
    dl_client dc;
    const char *repo_id;
    char *hub_dir, *folder, *repo_dir;
    char commit[41];
    file_list files;
    /* work queue of one phase */
    hub_file **queue;
    size_t nq;
    int jobs;
    int no_symlinks;          /* HF_HUB_DISABLE_SYMLINKS: regular files in snapshots/ */
    char *license;            /* cardData.license of the revision API, or NULL */
} run;

/* One file: HEAD, then (unless the blob is already there) a locked
 * transfer into blobs/, then the snapshot symlink (or, without symlinks,
 * the blob moved there when new, copied when it was already there). */
static fl_status fetch_one(run *R, CURL *h, int slot, hub_file *f, fl_error *err)
{
    char *qrev = http_quote(R->commit, "");
    char *qpath = http_quote(f->path, "/");
    char *url = qrev && qpath ? fl_asprintf("%s/%s/resolve/%s/%s", R->dc.http.endpoint,
                                            R->repo_id, qrev, qpath)
                              : NULL;
    fl_status st = FL_OK;
    free(qrev);
    free(qpath);
    if (!url)
        return fl_fail(err, FL_EIO, "out of memory");

    dl_meta m;
    http_response r;
    st = dl_head(&R->dc.http, h, url, &m, &r, err);
    free(url);
    if (st)
        return st;
    if (r.status < 200 || r.status >= 400) {
        st = http_error(&R->dc.http, &r, f->path, err);
        http_response_free(&r);
        return st;
    }
    if (strcmp(m.commit, R->commit)) {
        st = fl_fail(err, FL_ENET, "%s: the Hub answered for commit %s, expected %s", f->path,
                     m.commit, R->commit);
        dl_meta_free(&m);
        return st;
    }
    if (f->size >= 0 && m.size != f->size) {
        st = fl_fail(err, FL_ENET, "%s: the Hub says %lld bytes, the tree listing %lld", f->path,
                     (long long)m.size, (long long)f->size);
        dl_meta_free(&m);
        return st;
    }
    char *blob = fl_asprintf("%s/blobs/%s", R->repo_dir, m.etag);
    char *partial = blob ? fl_asprintf("%s.incomplete", blob) : NULL;
    cache_lock lk = {.fd = -1};
    struct stat sb;
    if (!partial) {
        st = fl_fail(err, FL_EIO, "out of memory");
        goto out;
    }
    if ((st = cache_lock_acquire(R->hub_dir, R->folder, m.etag, &lk, err)))
        goto out;
    /* Another process or thread may have completed it while we waited
     * (without symlinks it moved the blob away: look at the snapshot). */
    int fresh = 0, there = R->no_symlinks &&
                           cache_pointer_ok(R->repo_dir, R->commit, f->path, m.size);
    if (!there && !(stat(blob, &sb) == 0 && S_ISREG(sb.st_mode) && sb.st_size == m.size)) {
        st = dl_blob(&R->dc, h, slot, f->path, &m, partial, blob, err);
        fresh = 1;
    }
    if (st == FL_OK && !there)
        st = R->no_symlinks ? cache_place_file(R->repo_dir, R->commit, f->path, m.etag, fresh, err)
                            : cache_link(R->repo_dir, R->commit, f->path, m.etag, err);
    cache_lock_release(&lk);
out:
    free(blob);
    free(partial);
    dl_meta_free(&m);
    return st;
}

/* One file of a phase (a pool item) on the worker's own CURL handle.  A
 * failure sets dc.stop, so the transfers still running on other workers
 * give up instead of finishing. */
typedef struct {
    run *R;
    CURL **handles;
} phase_job;

static fl_status fetch_item(void *ctx, size_t item, int worker, fl_error *err)
{
    phase_job *j = ctx;
    fl_status st = fetch_one(j->R, j->handles[worker], worker, j->R->queue[item], err);
    if (st != FL_OK)
        atomic_store(&j->R->dc.http.stop, 1);
    return st;
}

/* Fetches the wanted files of one phase (is_weight == phase) that the
 * snapshot does not hold yet. */
static fl_status fetch_phase(run *R, int phase, fl_error *err)
{
    R->nq = 0;
    free(R->queue);
    R->queue = calloc(R->files.n ? R->files.n : 1, sizeof *R->queue);
    if (!R->queue)
        return fl_fail(err, FL_EIO, "out of memory");
    int64_t total = 0;
    for (size_t i = 0; i < R->files.n; i++) {
        hub_file *f = &R->files.v[i];
        if (!f->want || f->is_weight != phase)
            continue;
        if (cache_pointer_ok(R->repo_dir, R->commit, f->path, f->size)) {
            http_log(&R->dc.http, "%s: in the cache", f->path);
            continue;
        }
        R->queue[R->nq++] = f;
        if (f->size > 0)
            total += f->size;
    }
    if (!R->nq)
        return FL_OK;
    pthread_mutex_lock(&R->dc.http.mu);
    R->dc.http.all_total += total;
    pthread_mutex_unlock(&R->dc.http.mu);
    int nt = R->jobs < (int)R->nq ? R->jobs : (int)R->nq;
    fl_pool *pool = fl_pool_new(nt);
    CURL **handles = pool ? calloc((size_t)fl_pool_size(pool), sizeof *handles) : NULL;
    fl_status st = handles ? FL_OK : fl_fail(err, FL_EIO, "out of memory");
    for (int i = 0; st == FL_OK && i < fl_pool_size(pool); i++)
        if (!(handles[i] = curl_easy_init()))
            st = fl_fail(err, FL_EIO, "cannot initialise libcurl");
    phase_job job = {R, handles};
    if (st == FL_OK)
        st = fl_pool_run(pool, R->nq, fetch_item, &job, err);
    for (int i = 0; handles && i < fl_pool_size(pool); i++)
        if (handles[i])
            curl_easy_cleanup(handles[i]);
    free(handles);
    fl_pool_free(pool);
    return st;
}

/* Reads the snapshot's model.safetensors.index.json and marks the shards
 * of its weight_map wanted (the index decides, which drops e.g. Mistral's
 * consolidated.safetensors). */
static fl_status want_index_shards(const char *snap, file_list *fl, const char *repo,
                                   fl_error *err)
{
    char *path = fl_path_join(snap, "model.safetensors.index.json"), *buf = NULL;
    if (!path)
        return fl_fail(err, FL_EIO, "out of memory");
    fl_status rs = fl_read_file(path, 64u << 20, FL_READ_UTF8, &buf, NULL, err);
    free(path);
    if (rs != FL_OK)
        return rs;
    cJSON *j = cJSON_Parse(buf);
    free(buf);
    cJSON *wm = cJSON_GetObjectItemCaseSensitive(j, "weight_map");
    if (!cJSON_IsObject(wm)) {
        cJSON_Delete(j);
        return fl_fail(err, FL_EINPUT, "%s: model.safetensors.index.json has no weight_map", repo);
    }
    fl_status st = FL_OK;
    size_t nshards = 0;
    cJSON *e;
    cJSON_ArrayForEach(e, wm) {
        const char *file = cJSON_GetStringValue(e);
        if (!file || !cache_safe_relpath(file)) {
            st = fl_fail(err, FL_EINPUT, "%s: weight_map entry '%s' names an unsafe file '%.200s'",
                         repo, e->string ? e->string : "?", file ? file : "(not a string)");
            break;
        }
        hub_file *hf = files_find(fl, file);
        if (!hf) {
            st = fl_fail(err, FL_EINPUT,
                         "%s: weight_map maps '%s' to %s, which is not in the repository", repo,
                         e->string ? e->string : "?", file);
            break;
        }
        if (!hf->want)
            nshards++;
        hf->want = 1;
        hf->is_weight = 1;
    }
    cJSON_Delete(j);
    if (!st && !nshards)
        st = fl_fail(err, FL_EINPUT, "%s: model.safetensors.index.json lists no shards", repo);
    return st;
}

/* Picks the files: aux files now; the weights either from the index
 * (after phase 0 fetched it) or all top-level *.safetensors. */
static fl_status select_files(run *R, int *has_index, fl_error *err)
{
    file_list *fl = &R->files;
    int config = 0, st_files = 0;
    *has_index = 0;
    for (size_t i = 0; i < fl->n; i++) {
        hub_file *f = &fl->v[i];
        if (!strcmp(f->path, "config.json"))
            config = 1;
        if (!strcmp(f->path, "model.safetensors.index.json"))
            *has_index = 1;
        if (fl_ends_with(f->path, ".safetensors") && !strchr(f->path, '/'))
            st_files++;
        f->want = wanted_aux(f->path);
    }
    if (!config)
        return fl_fail(err, FL_EINPUT, "%s has no config.json at revision %s: not a "
                       "transformers checkpoint", R->repo_id, R->commit);
    if (!st_files && !*has_index)
        return fl_fail(err, FL_EINPUT, "%s has no safetensors weights at revision %s "
                       "(only other formats): cannot convert", R->repo_id, R->commit);
    if (!*has_index)
        for (size_t i = 0; i < fl->n; i++)
            if (fl_ends_with(fl->v[i].path, ".safetensors") && !strchr(fl->v[i].path, '/')) {
                fl->v[i].want = 1;
                fl->v[i].is_weight = 1;
            }
    return FL_OK;
}

/* Lists the tree of R->commit, following Link rel="next". */
static fl_status list_tree(run *R, CURL *h, fl_error *err)
{
    char *qrev = http_quote(R->commit, "");
    char *url = qrev ? fl_asprintf("%s/api/models/%s/tree/%s?recursive=true&expand=false",
                                   R->dc.http.endpoint, R->repo_id, qrev)
                     : NULL;
    free(qrev);
    if (!url)
        return fl_fail(err, FL_EIO, "out of memory");
    fl_status st = FL_OK;
    for (int page = 0; url; page++) {
        if (page >= MAX_TREE_PAGES) {
            st = fl_fail(err, FL_ENET, "%s: more than %d tree pages", R->repo_id, MAX_TREE_PAGES);
            break;
        }
        http_response r;
        if ((st = dl_api_get(&R->dc.http, h, url, &r, err)))
            break;
        free(url);
        url = NULL;
        if (r.status != 200) {
            st = http_error(&R->dc.http, &r, NULL, err);
        } else {
            st = parse_tree_page(r.body, R->repo_id, &R->files, err);
            url = r.link_next;
            r.link_next = NULL;
        }
        http_response_free(&r);
        if (st)
            break;
    }
    free(url);
    return st;
}

/* GET /api/models/{id}/revision/{rev} -> sha. */
static fl_status resolve_commit(run *R, CURL *h, const char *rev, fl_error *err)
{
    char *qrev = http_quote(rev, "");
    char *url = qrev ? fl_asprintf("%s/api/models/%s/revision/%s", R->dc.http.endpoint,
                                   R->repo_id, qrev)
                     : NULL;
    free(qrev);
    if (!url)
        return fl_fail(err, FL_EIO, "out of memory");
    http_response r;
    fl_status st = dl_api_get(&R->dc.http, h, url, &r, err);
    free(url);
    if (st)
        return st;
    if (r.status != 200) {
        st = http_error(&R->dc.http, &r, NULL, err);
    } else {
        cJSON *j = cJSON_Parse(r.body);
        const char *sha = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "sha"));
        if (!cache_is_commit(sha))
            st = fl_fail(err, FL_ENET, "%s: the revision API gave no commit sha for '%s'",
                         R->repo_id, rev);
        else
            memcpy(R->commit, sha, 41);
        /* The card's license (a string, or a list of them: the first). */
        const cJSON *lic = cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(j, "cardData"), "license");
        const char *l = cJSON_IsArray(lic) ? cJSON_GetStringValue(cJSON_GetArrayItem(lic, 0))
                                           : cJSON_GetStringValue(lic);
        if (st == FL_OK && l && *l && strlen(l) < 128 && !strpbrk(l, "\r\n"))
            R->license = fl_strdup(l);
        cJSON_Delete(j);
    }
    http_response_free(&r);
    return st;
}

/* The snapshot from the cache alone: refs/<rev> (or a commit id), and the
 * files the converter needs present (config.json and the weights). */
static fl_status offline_snapshot(run *R, const char *rev, char **out, fl_error *err)
{
    char commit[41];
    if (cache_is_commit(rev))
        memcpy(commit, rev, 41);
    else if (!cache_read_ref(R->repo_dir, rev, commit))
        return fl_fail(err, FL_ENET, "%s@%s is not in the cache %s (offline mode)", R->repo_id,
                       rev, R->hub_dir);
    char *snap = fl_asprintf("%s/snapshots/%s", R->repo_dir, commit);
    if (!snap)
        return fl_fail(err, FL_EIO, "out of memory");
    if (!cache_pointer_ok(R->repo_dir, commit, "config.json", -1)) {
        fl_status st = fl_fail(err, FL_ENET, "%s: snapshot %s in the cache has no config.json "
                               "(offline mode)", R->repo_id, commit);
        free(snap);
        return st;
    }
    if (!cache_pointer_ok(R->repo_dir, commit, "model.safetensors.index.json", -1)) {
        /* No index: some top-level *.safetensors must be there. */
        int found = 0;
        DIR *d = opendir(snap);
        struct dirent *de;
        while (d && !found && (de = readdir(d)))
            found = fl_ends_with(de->d_name, ".safetensors") &&
                    cache_pointer_ok(R->repo_dir, commit, de->d_name, -1);
        if (d)
            closedir(d);
        if (!found) {
            fl_status st = fl_fail(err, FL_ENET, "%s: snapshot %s in the cache has no "
                                   "safetensors weights (offline mode)", R->repo_id, commit);
            free(snap);
            return st;
        }
    } else {
        /* Every shard of the index must be there. */
        fl_status st;
        char *idx = fl_path_join(snap, "model.safetensors.index.json"), *buf = NULL;
        fl_error ignored;
        if (idx && fl_read_file(idx, 64u << 20, FL_READ_UTF8, &buf, NULL, &ignored) != FL_OK)
            buf = NULL;
        free(idx);
        cJSON *j = buf ? cJSON_Parse(buf) : NULL;
        free(buf);
        cJSON *wm = cJSON_GetObjectItemCaseSensitive(j, "weight_map"), *it;
        int ok = cJSON_IsObject(wm);
        cJSON_ArrayForEach(it, wm) {
            const char *file = cJSON_GetStringValue(it);
            if (!file || !cache_pointer_ok(R->repo_dir, commit, file, -1)) {
                ok = 0;
                break;
            }
        }
        cJSON_Delete(j);
        if (!ok) {
            st = fl_fail(err, FL_ENET, "%s: snapshot %s in the cache lacks shards of its index "
                         "(offline mode)", R->repo_id, commit);
            free(snap);
            return st;
        }
    }
    *out = snap;
    return FL_OK;
}

static void run_free(run *R)
{
    dl_client_free(&R->dc);
    free(R->hub_dir);
    free(R->folder);
    free(R->repo_dir);
    files_free(&R->files);
    free(R->queue);
    free(R->license);
}

/* Creates blobs/ and snapshots/<commit>/, the cache tag and refs/<rev>
 * (§4: the order file_download.py writes them in); *snap is the snapshot
 * directory. */
static fl_status prepare_snapshot(run *R, const char *rev, char **snap, fl_error *err)
{
    *snap = fl_asprintf("%s/snapshots/%s", R->repo_dir, R->commit);
    char *blobs = fl_path_join(R->repo_dir, "blobs");
    fl_status st = *snap && blobs ? FL_OK : fl_fail(err, FL_EIO, "out of memory");
    if (!st)
        st = fl_mkdir_p(blobs, 0777, err);
    if (!st)
        st = fl_mkdir_p(*snap, 0777, err);
    free(blobs);
    if (!st) {
        cache_write_tag(R->hub_dir);
        if (strcmp(rev, R->commit))
            st = cache_write_ref(R->repo_dir, rev, R->commit, err);
    }
    return st;
}

/* The commit and file list from the Hub.  *cached is set when the Hub is
 * unreachable and the cache holds the snapshot (then *snapshot_dir is it):
 * like Python, fall back to what the cache has (§3). */
static fl_status resolve_online(run *R, CURL *h, const char *rev, char **snapshot_dir,
                                int *cached, fl_error *err)
{
    fl_error quiet;
    *cached = 0;
    if (cache_is_commit(rev) && offline_snapshot(R, rev, snapshot_dir, &quiet) == FL_OK) {
        /* A commit is immutable: when its snapshot holds what a conversion
         * needs, no request at all (file_download.py does the same). */
        http_log(&R->dc.http, "commit %s is in the cache", rev);
        *cached = 1;
        return FL_OK;
    }
    fl_status st = FL_OK;
    if (cache_is_commit(rev)) {
        memcpy(R->commit, rev, 41);
    } else if ((st = resolve_commit(R, h, rev, err)) == FL_ENET &&
               offline_snapshot(R, rev, snapshot_dir, &quiet) == FL_OK) {
        http_log(&R->dc.http, "Hub unreachable (%s); using the cached snapshot", err->msg);
        *cached = 1;
        return FL_OK;
    }
    if (!st)
        st = list_tree(R, h, err);
    return st;
}

/* Everything after the offline check: resolve, select, fetch the
 * non-weight files, then (with the index they include) the weights. */
static fl_status fetch_online(run *R, const char *rev, char **snapshot_dir, fl_error *err)
{
    CURL *h = curl_easy_init();
    if (!h)
        return fl_fail(err, FL_EIO, "cannot initialise libcurl");
    int cached = 0;
    fl_status st = resolve_online(R, h, rev, snapshot_dir, &cached, err);
    curl_easy_cleanup(h);
    if (st || cached)
        return st;
    int has_index = 0;
    char *snap = NULL;
    st = select_files(R, &has_index, err);
    if (!st)
        st = prepare_snapshot(R, rev, &snap, err);
    if (!st)
        st = fetch_phase(R, 0, err);
    if (!st && has_index)
        st = want_index_shards(snap, &R->files, R->repo_id, err);
    if (!st)
        st = fetch_phase(R, 1, err);
    if (st) {
        free(snap);
        return st;
    }
    *snapshot_dir = snap;
    return FL_OK;
}

fl_status hub_fetch_snapshot(const hub_request *req, char **snapshot_dir, fl_error *err)
{
    *snapshot_dir = NULL;
    if (req->license)
        *req->license = NULL;
    if (!hub_is_repo_id(req->repo_id))
        return fl_fail(err, FL_EUSAGE, "'%s' is not a Hugging Face repo id (org/name[@revision])",
                       req->repo_id);
    /* Split "org/name@rev". */
    char repo_id[256], rev[512];
    const char *at = strchr(req->repo_id, '@');
    snprintf(repo_id, sizeof repo_id, "%.*s", (int)(at ? at - req->repo_id : 200), req->repo_id);
    snprintf(rev, sizeof rev, "%s",
             req->revision && *req->revision ? req->revision : at ? at + 1 : "main");
    if (!cache_safe_relpath(rev))
        return fl_fail(err, FL_EUSAGE, "invalid revision '%s'", rev);

    run R;
    memset(&R, 0, sizeof R);
    R.repo_id = repo_id;
    R.jobs = req->jobs > 0 ? (req->jobs > MAX_JOBS ? MAX_JOBS : req->jobs) : 4;
    char *token = hub_find_token(req->token, req->env);
    fl_status st = dl_client_init(&R.dc, req->env, hub_endpoint(req->env), token, err);
    hub_token_free(token);
    if (st)
        return st;
    R.dc.http.repo_id = repo_id;
    R.dc.http.revision = rev;
    R.dc.http.verbose = req->verbose;
    R.dc.http.progress = req->progress;
    R.dc.http.progress_ctx = req->progress_ctx;
    R.no_symlinks = cache_symlinks_disabled(req->env);
    R.hub_dir = cache_hub_dir(req->env);
    R.folder = cache_repo_folder(repo_id);
    R.repo_dir = R.hub_dir && R.folder ? fl_path_join(R.hub_dir, R.folder) : NULL;
    if (!R.repo_dir) {
        run_free(&R);
        return fl_fail(err, FL_EIO, "out of memory");
    }
    http_log(&R.dc.http, "endpoint %s, cache %s, token %s", R.dc.http.endpoint, R.repo_dir,
           R.dc.http.token ? "set (hidden)" : "none");

    if (req->offline || cache_offline_env(req->env)) {
        st = offline_snapshot(&R, rev, snapshot_dir, err);
        run_free(&R);
        return st;
    }

    st = fetch_online(&R, rev, snapshot_dir, err);
    if (st == FL_OK && req->license) {
        *req->license = R.license;
        R.license = NULL;
    }
    run_free(&R);
    return st;
}
