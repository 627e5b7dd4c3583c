/* checkpoint.c — opening a Hugging Face checkpoint directory (see checkpoint.h).
 *
 * Everything that comes from the directory is validated before it is used:
 * config.json's types and ranges, every weight_map entry of the index
 * (huggingface_hub's rules: no absolute path, no "..", a .safetensors name,
 * the file exists and holds the tensor), each shard's header, shard
 * symlinks that leave the directory, and tensor names stored twice.  The
 * files copied with the model are found by checkpoint_files.c. */
#include "flashify/checkpoint.h"
#include "checkpoint_files.h"
#include "flashify/dtype.h"
#include "flashify/json.h"
#include "flashify/util.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CONFIG_MAX_BYTES (16u << 20)   /* a config.json is a few KB */
#define INDEX_MAX_BYTES (256u << 20)   /* 405B index: ~100 KB; leave room */

/* ---------------------------------------------------------------------------
 * small helpers */

static int file_exists(const char *dir, const char *name)
{
    char *p = fl_path_join(dir, name);
    struct stat st;
    int ok = p && stat(p, &st) == 0;
    free(p);
    return ok;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

const char *ckpt_json_duplicate_key(const cJSON *obj)
{
    /* Sorted, not pairwise: a 16 MiB config.json can hold a million keys,
     * and a quadratic scan of them would never finish.  Nested objects are
     * checked too (cJSON caps nesting at CJSON_NESTING_LIMIT). */
    const char *dup = NULL;
    size_t n = 0;
    for (const cJSON *a = obj->child; a; a = a->next)
        n++;
    if (cJSON_IsObject(obj) && n > 1) {
        const char **keys = malloc(n * sizeof *keys);
        if (!keys)
            return NULL;
        size_t k = 0;
        for (const cJSON *a = obj->child; a; a = a->next)
            if (a->string)
                keys[k++] = a->string;
        qsort(keys, k, sizeof *keys, cmp_str);
        for (size_t i = 1; i < k && !dup; i++)
            if (strcmp(keys[i - 1], keys[i]) == 0)
                dup = keys[i];
        free(keys);
    }
    for (const cJSON *a = obj->child; a && !dup; a = a->next)
        if (a->child)
            dup = ckpt_json_duplicate_key(a);
    return dup;
}

/* ---------------------------------------------------------------------------
 * config.json */

ckpt_view ckpt_config_view(const ckpt_config *cfg, int nested)
{
    ckpt_view v = {cfg->json, cfg->json, cfg->path, cfg};
    if (nested && cfg->nested)
        v.text = cfg->nested;
    return v;
}

const cJSON *ckpt_view_get(ckpt_view v, const char *key)
{
    const cJSON *x = v.text ? cJSON_GetObjectItemCaseSensitive(v.text, key) : NULL;
    if (!x && v.top && v.top != v.text)
        x = cJSON_GetObjectItemCaseSensitive(v.top, key);
    return x;
}

double ckpt_view_num(ckpt_view v, const char *key, double def, double null_value)
{
    const cJSON *x = ckpt_view_get(v, key);
    if (cJSON_IsNumber(x))
        return x->valuedouble;
    return cJSON_IsNull(x) ? null_value : def;
}

long ckpt_view_int(ckpt_view v, const char *key, long def)
{
    double d = ckpt_view_num(v, key, NAN, NAN);
    if (isnan(d) || d != floor(d) || d < (double)LONG_MIN / 2 || d > (double)LONG_MAX / 2)
        return def;
    return (long)d;
}

int ckpt_view_bool(ckpt_view v, const char *key, int def)
{
    const cJSON *x = ckpt_view_get(v, key);
    return cJSON_IsBool(x) ? cJSON_IsTrue(x) : def;
}

int ckpt_view_set(ckpt_view v, const char *key)
{
    const cJSON *x = ckpt_view_get(v, key);
    if (!x || cJSON_IsNull(x) || cJSON_IsFalse(x))
        return 0;
    if (cJSON_IsNumber(x))
        return x->valuedouble != 0;
    if (cJSON_IsString(x))
        return x->valuestring[0] != 0;
    return 1;
}

int ckpt_view_listed(ckpt_view v, const char *key, const char *def, long i)
{
    const cJSON *list = ckpt_view_get(v, key);
    if (list && !cJSON_IsNull(list)) {
        if (!cJSON_IsArray(list))
            return -1;
        for (const cJSON *e = list->child; e; e = e->next)
            if (cJSON_IsNumber(e) && e->valuedouble == (double)i)
                return 1;
        return 0;
    }
    if (!def)
        return -1;
    for (const char *p = def; *p;) {
        char *end;
        long n = strtol(p, &end, 10);
        if (end == p)
            break;
        if (n == i)
            return 1;
        p = *end == ',' ? end + 1 : end;
    }
    return 0;
}

/* 1 when the number at `key` of the level x was read from is spelled as
 * a float (transformers then gets a Python float and range() refuses it). */
static int spelled_as_float(ckpt_view v, const cJSON *x, const char *key)
{
    if (!v.cfg || !v.cfg->float_spelled)
        return 0;
    int nested = v.text != v.top && cJSON_GetObjectItemCaseSensitive(v.text, key) == x;
    char *probe = fl_asprintf("\n%c %s\n", nested ? 'N' : 'T', key);
    int yes = probe && strstr(v.cfg->float_spelled, probe) != NULL;
    free(probe);
    return yes;
}

fl_status ckpt_view_count(ckpt_view v, const char *key, long max, long *out, fl_error *err)
{
    const cJSON *x = ckpt_view_get(v, key);
    if (!x)
        return fl_fail(err, FL_EINPUT, "%s: \"%s\" is missing", v.path, key);
    if (!cJSON_IsNumber(x) || x->valuedouble != floor(x->valuedouble))
        return fl_fail(err, FL_EINPUT, "%s: \"%s\" must be an integer", v.path, key);
    if (spelled_as_float(v, x, key))
        return fl_fail(err, FL_EINPUT, "%s: \"%s\" is written %.17g as a float (with a fraction or an "
                       "exponent): Python reads a float, which transformers refuses; write an integer",
                       v.path, key, x->valuedouble);
    if (x->valuedouble < 1 || x->valuedouble > (double)max)
        return fl_fail(err, FL_EINPUT, "%s: \"%s\" is %.17g, expected 1..%ld",
                       v.path, key, x->valuedouble, max);
    *out = (long)x->valuedouble;
    return FL_OK;
}

/* tie_word_embeddings of one level: 1 / 0, -1 when absent.  null is 0:
 * the loaders ask `if config.tie_word_embeddings` and Python's None is
 * false (docs/architectures.md §tie), so a null never ties a stored head
 * back to the embedding. */
static fl_status tie_flag(const char *path, const cJSON *level, int *out, fl_error *err)
{
    const cJSON *tie = level ? cJSON_GetObjectItemCaseSensitive(level, "tie_word_embeddings") : NULL;
    *out = -1;
    if (!tie)
        return FL_OK;
    if (cJSON_IsNull(tie)) {
        *out = 0;
        return FL_OK;
    }
    if (!cJSON_IsBool(tie))
        return fl_fail(err, FL_EINPUT, "%s: \"tie_word_embeddings\" must be true or false", path);
    *out = cJSON_IsTrue(tie);
    return FL_OK;
}

static fl_status copy_type(const char *path, const cJSON *v, char *dst, size_t cap, fl_error *err)
{
    if (!cJSON_IsString(v) || !v->valuestring[0])
        return fl_fail(err, FL_EINPUT, "%s: \"model_type\" is missing or not a string", path);
    if (strlen(v->valuestring) >= cap)
        return fl_fail(err, FL_EINPUT, "%s: \"model_type\" is too long", path);
    strcpy(dst, v->valuestring);
    return FL_OK;
}

/* Records, in cfg->float_spelled, the members of the object at the cursor
 * (level 'T' or 'N') whose number has a fraction or an exponent; recurses
 * into text_config from the top level. */
static fl_status scan_level(json_reader *j, char level, strbuf *out)
{
    json_iter it;
    fl_status st = json_enter(j, &it, '{', level == 'T' ? 0 : 1);
    char *key;
    int r = 0;
    while (st == FL_OK && (r = json_next(j, &it, &key, NULL)) > 0) {
        int c = json_peek(j);
        int nonfinite = c == '-' && j->pos + 1 < j->len && j->s[j->pos + 1] == 'I';   /* -Infinity */
        if ((c == '-' && !nonfinite) || (c >= '0' && c <= '9')) {
            int is_uint;
            uint64_t v;
            const char *tok;
            size_t n;
            st = json_number(j, &is_uint, &v, &tok, &n);
            if (st == FL_OK && (memchr(tok, '.', n) || memchr(tok, 'e', n) || memchr(tok, 'E', n)))
                sb_printf(out, "%c %s\n", level, key);
        } else if (c == '{' && level == 'T' && !strcmp(key, "text_config")) {
            st = scan_level(j, 'N', out);
        } else {
            st = json_skip(j, level == 'T' ? 1 : 2);
        }
        free(key);
    }
    return st == FL_OK && r < 0 ? j->status : st;
}

static fl_status scan_spellings(const char *path, const char *text, size_t len, ckpt_config *cfg,
                                fl_error *err)
{
    json_reader j;
    json_init(&j, path, "JSON", text, len, CJSON_NESTING_LIMIT, err);
    j.python_floats = 1;
    json_ws(&j);
    strbuf b = {0};
    sb_str(&b, "\n");
    fl_status st = scan_level(&j, 'T', &b);
    cfg->float_spelled = sb_take(&b);
    if (st == FL_OK && !cfg->float_spelled)
        st = fl_fail(err, FL_EIO, "out of memory");
    return st;
}

cJSON *ckpt_config_json(const char *text, size_t len)
{
    cJSON *j = cJSON_ParseWithLength(text, len);
    if (j || !text)
        return j;
    /* A copy for cJSON with the bare tokens outside strings spelled as
     * JSON: Infinity as 1e999 (strtod gives inf), NaN as null. */
    strbuf b = {0};
    int in_str = 0;
    for (size_t i = 0; i < len; i++) {
        char c = text[i];
        if (in_str) {
            in_str = !(c == '"');
            if (c == '\\' && i + 1 < len)
                sb_put(&b, text + i++, 1);
        } else if (c == '"') {
            in_str = 1;
        } else if (len - i >= 8 && !memcmp(text + i, "Infinity", 8)) {
            sb_str(&b, "1e999");
            i += 7;
            continue;
        } else if (len - i >= 3 && !memcmp(text + i, "NaN", 3)) {
            sb_str(&b, "null");
            i += 2;
            continue;
        }
        sb_put(&b, &text[i], 1);
    }
    if (!b.oom)
        j = cJSON_ParseWithLength(b.p, b.n);
    sb_free(&b);
    return j;
}

fl_status ckpt_config_parse(const char *path, const char *text, size_t len, ckpt_config *cfg,
                            fl_error *err)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->tie_top = cfg->tie_nested = -1;
    if (!(cfg->path = strdup(path)))
        return fl_fail(err, FL_EIO, "out of memory");
    fl_status s = FL_EINPUT;
    cfg->json = ckpt_config_json(text, len);
    if (!cfg->json || !cJSON_IsObject(cfg->json))
        return fl_fail(err, FL_EINPUT, "%s: not a JSON object", path);
    const char *dup = ckpt_json_duplicate_key(cfg->json);
    if (dup)
        return fl_fail(err, FL_EINPUT, "%s: key \"%s\" appears twice", path, dup);
    cJSON *tc = cJSON_GetObjectItemCaseSensitive(cfg->json, "text_config");
    if (tc && !cJSON_IsNull(tc)) {
        if (!cJSON_IsObject(tc))
            return fl_fail(err, FL_EINPUT, "%s: \"text_config\" must be an object", path);
        cfg->nested = tc;
    }
    if ((s = copy_type(path, cJSON_GetObjectItemCaseSensitive(cfg->json, "model_type"), cfg->model_type,
                       sizeof cfg->model_type, err)) != FL_OK)
        return s;
    /* text_config.model_type picks the text row of a wrapper: anything but
     * a name (or null, read as absent) must not fall back to a default. */
    const cJSON *nmt = cfg->nested ? cJSON_GetObjectItemCaseSensitive(cfg->nested, "model_type") : NULL;
    if (nmt && !cJSON_IsNull(nmt) &&
        (s = copy_type(path, nmt, cfg->nested_model_type, sizeof cfg->nested_model_type, err)) != FL_OK)
        return fl_fail(err, FL_EINPUT, "%s: \"text_config\".\"model_type\" must be a model type name (a non-empty string), or absent", path);
    if ((s = tie_flag(path, cfg->json, &cfg->tie_top, err)) != FL_OK ||
        (s = tie_flag(path, cfg->nested, &cfg->tie_nested, err)) != FL_OK ||
        (s = scan_spellings(path, text, len, cfg, err)) != FL_OK)
        return s;
    const cJSON *dt = cfg->nested ? cJSON_GetObjectItemCaseSensitive(cfg->nested, "torch_dtype") : NULL;
    if (!dt)
        dt = cJSON_GetObjectItemCaseSensitive(cfg->json, "torch_dtype");
    if (!dt)
        dt = cJSON_GetObjectItemCaseSensitive(cfg->json, "dtype");
    if (cJSON_IsString(dt) && strlen(dt->valuestring) < sizeof cfg->torch_dtype)
        strcpy(cfg->torch_dtype, dt->valuestring);
    return FL_OK;
}

void ckpt_config_free(ckpt_config *cfg)
{
    cJSON_Delete(cfg->json);
    free(cfg->raw);
    free(cfg->path);
    free(cfg->float_spelled);
    memset(cfg, 0, sizeof *cfg);
}

static fl_status config_load(const char *dir, ckpt_config *cfg, fl_error *err)
{
    memset(cfg, 0, sizeof *cfg);
    char *path = fl_path_join(dir, "config.json");
    if (!path)
        return fl_fail(err, FL_EIO, "out of memory");
    struct stat st;
    fl_status s;
    if (stat(path, &st) != 0) {
        s = fl_fail(err, FL_EINPUT, "%s: no config.json: not a Hugging Face checkpoint directory", dir);
        free(path);
        return s;
    }
    char *raw = NULL;
    size_t raw_len = 0;
    s = fl_read_file(path, CONFIG_MAX_BYTES, FL_READ_UTF8, &raw, &raw_len, err);
    if (s == FL_OK)
        s = ckpt_config_parse(path, raw, raw_len, cfg, err);
    cfg->raw = raw;
    cfg->raw_len = raw_len;
    free(path);
    return s;
}

/* ---------------------------------------------------------------------------
 * shards */

/* huggingface_hub's _load_sharded_checkpoint rules for weight_map values. */
static fl_status check_shard_name(const char *index_path, const char *tensor,
                                  const char *file, fl_error *err)
{
    size_t n = strlen(file);
    if (n == 0 || file[0] == '/' || file[0] == '\\' ||
        (n >= 2 && file[1] == ':'))
        return fl_fail(err, FL_EINPUT, "%s: tensor '%s' maps to \"%s\", an absolute path",
                       index_path, tensor, file);
    for (const char *p = file; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == '\\')
            return fl_fail(err, FL_EINPUT, "%s: tensor '%s' maps to a file name with a control character or backslash",
                           index_path, tensor);
    const char *seg = file;
    for (;;) {
        const char *slash = strchr(seg, '/');
        size_t len = slash ? (size_t)(slash - seg) : strlen(seg);
        if ((len == 2 && seg[0] == '.' && seg[1] == '.') || len == 0)
            return fl_fail(err, FL_EINPUT, "%s: tensor '%s' maps to \"%s\", which leaves the checkpoint directory",
                           index_path, tensor, file);
        if (!slash)
            break;
        seg = slash + 1;
    }
    if (n < 12 || strcmp(file + n - 12, ".safetensors") != 0)
        return fl_fail(err, FL_EINPUT, "%s: tensor '%s' maps to \"%s\", not a .safetensors file",
                       index_path, tensor, file);
    return FL_OK;
}

/* A shard may be a symlink (the Hugging Face cache links snapshots to
 * ../../blobs/<sha256>), but it must not lead anywhere else. */
fl_status ckpt_check_location(const char *dir_real, const char *path,
                                      fl_error *err)
{
    char real[PATH_MAX];
    if (!realpath(path, real))
        return fl_fail(err, FL_EINPUT, "%s: cannot resolve: %s", path, strerror(errno));
    size_t nd = strlen(dir_real);
    if (strncmp(real, dir_real, nd) == 0 && real[nd] == '/')
        return FL_OK;
    /* <repo>/snapshots/<commit> may point into <repo>/blobs/. */
    char repo[PATH_MAX];
    snprintf(repo, sizeof repo, "%s", dir_real);
    char *last = strrchr(repo, '/');
    if (last && last > repo) {
        *last = '\0';
        char *snap = strrchr(repo, '/');
        if (snap && strcmp(snap, "/snapshots") == 0) {
            *snap = '\0';
            size_t nr = strlen(repo);
            if (strncmp(real, repo, nr) == 0 && strncmp(real + nr, "/blobs/", 7) == 0)
                return FL_OK;
        }
    }
    return fl_fail(err, FL_EINPUT, "%s: resolves to %s, outside the checkpoint directory",
                   path, real);
}

static fl_status shard_open(const char *dir, const char *dir_real, const char *file,
                            ckpt_shard *sh, fl_error *err)
{
    sh->fd = -1;
    sh->file = fl_strdup(file);
    sh->path = fl_path_join(dir, file);
    if (!sh->file || !sh->path)
        return fl_fail(err, FL_EIO, "out of memory");
    struct stat st;
    if (stat(sh->path, &st) != 0)
        return fl_fail(err, FL_EINPUT, "%s: shard is missing", sh->path);
    fl_status s = ckpt_check_location(dir_real, sh->path, err);
    if (s != FL_OK)
        return s;
    sh->fd = open(sh->path, O_RDONLY | O_CLOEXEC | O_NONBLOCK); /* a FIFO must not hang */
    if (sh->fd < 0)
        return fl_fail(err, FL_EIO, "%s: cannot open: %s", sh->path, strerror(errno));
    return st_read_header(sh->path, sh->fd, &sh->st, err);
}

/* ---------------------------------------------------------------------------
 * tensor table */

static int cmp_tensor_name(const void *a, const void *b)
{
    return strcmp(((const ckpt_tensor *)a)->name, ((const ckpt_tensor *)b)->name);
}


const ckpt_tensor *ckpt_search(const ckpt_tensor *sorted, size_t n, const char *name)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(sorted[mid].name, name);
        if (c == 0)
            return &sorted[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

const ckpt_tensor *ckpt_find(const checkpoint *ck, const char *name)
{
    return ckpt_search(ck->tensors, ck->n_tensors, name);
}

/* Builds the sorted table of logical tensors: every stored tensor, then the
 * aliases recorded in __metadata__ ("<missing name>": "<stored name>", as
 * transformers writes for shared tensors).  A metadata entry counts as an
 * alias only when its value names a tensor of the same shard and its key
 * names none. */
static fl_status build_tensor_table(checkpoint *ck, fl_error *err)
{
    size_t cap = 0;
    for (size_t i = 0; i < ck->n_shards; i++) {
        cap += ck->shards[i].st.n_tensors + ck->shards[i].st.n_meta;
    }
    ck->tensors = calloc(cap ? cap : 1, sizeof *ck->tensors);
    if (!ck->tensors)
        return fl_fail(err, FL_EIO, "out of memory for %zu tensors", cap);
    size_t n = 0;
    for (size_t i = 0; i < ck->n_shards; i++) {
        const st_header *h = &ck->shards[i].st;
        for (size_t j = 0; j < h->n_tensors; j++)
            ck->tensors[n++] = (ckpt_tensor){h->tensors[j].name, i, &h->tensors[j], 0};
    }
    size_t n_stored = n;
    qsort(ck->tensors, n, sizeof *ck->tensors, cmp_tensor_name);
    for (size_t i = 1; i < n; i++)
        if (strcmp(ck->tensors[i - 1].name, ck->tensors[i].name) == 0)
            return fl_fail(err, FL_EINPUT, "%s: tensor '%s' is stored in both %s and %s",
                           ck->dir, ck->tensors[i].name,
                           ck->shards[ck->tensors[i - 1].shard].file,
                           ck->shards[ck->tensors[i].shard].file);
    ck->n_tensors = n;
    for (size_t i = 0; i < ck->n_shards; i++) {
        const st_header *h = &ck->shards[i].st;
        for (size_t j = 0; j < h->n_meta; j++) {
            const char *k = h->meta[j].key, *v = h->meta[j].value;
            if (strcmp(k, "format") == 0 || ckpt_find(ck, k))
                continue;
            /* Binary search among the stored tensors (sorted above), not
             * st_header_find's linear scan: a million metadata entries
             * times a million tensors would take hours. */
            const ckpt_tensor *target = ckpt_find(ck, v);
            if (!target || target->shard != i || target->is_alias)
                continue;
            ck->tensors[n++] = (ckpt_tensor){k, i, target->t, 1};
        }
    }
    if (n > n_stored) {
        ck->n_tensors = n;
        qsort(ck->tensors, n, sizeof *ck->tensors, cmp_tensor_name);
        for (size_t i = 1; i < n; i++)
            if (strcmp(ck->tensors[i - 1].name, ck->tensors[i].name) == 0)
                return fl_fail(err, FL_EINPUT, "%s: alias '%s' is declared by two shards",
                               ck->dir, ck->tensors[i].name);
    }
    return FL_OK;
}

/* ---------------------------------------------------------------------------
 * index */

/* Tensor names are unique in a JSON object only if we check. */
static fl_status weight_map_unique(const char *path, const cJSON *wm, size_t n, fl_error *err)
{
    const char **names = malloc((n ? n : 1) * sizeof *names);
    if (!names)
        return fl_fail(err, FL_EIO, "out of memory");
    size_t k = 0;
    for (const cJSON *e = wm->child; e; e = e->next)
        names[k++] = e->string;
    qsort(names, k, sizeof *names, cmp_str);
    fl_status s = FL_OK;
    for (size_t i = 1; i < k && s == FL_OK; i++)
        if (strcmp(names[i - 1], names[i]) == 0)
            s = fl_fail(err, FL_EINPUT, "%s: tensor '%s' appears twice in weight_map", path, names[i]);
    free(names);
    return s;
}

static fl_status index_load(checkpoint *ck, const char *dir_real, fl_error *err)
{
    char *path = fl_path_join(ck->dir, "model.safetensors.index.json");
    char *raw = NULL;
    size_t len = 0;
    char **files = NULL;
    size_t n_files = 0;
    fl_status s = fl_read_file(path, INDEX_MAX_BYTES, FL_READ_UTF8, &raw, &len, err);
    /* Strict first: cJSON would cut "a.safetensors\u0000b" at the NUL. */
    if (s == FL_OK)
        s = json_validate(path, raw, len, CJSON_NESTING_LIMIT, err);
    if (s != FL_OK)
        goto out;
    ck->index = cJSON_ParseWithLength(raw, len);
    if (!ck->index || !cJSON_IsObject(ck->index)) {
        s = fl_fail(err, FL_EINPUT, "%s: not a JSON object", path);
        goto out;
    }
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(ck->index, "weight_map");
    if (!cJSON_IsObject(wm) || !wm->child) {
        s = fl_fail(err, FL_EINPUT, "%s: \"weight_map\" is missing, empty or not an object", path);
        goto out;
    }
    size_t n_entries = 0;
    for (const cJSON *e = wm->child; e; e = e->next)
        n_entries++;
    if (n_entries > ST_MAX_TENSORS) {
        s = fl_fail(err, FL_EINPUT, "%s: %zu weight_map entries, more than %d",
                    path, n_entries, ST_MAX_TENSORS);
        goto out;
    }
    files = calloc(n_entries, sizeof *files);
    if (!files) {
        s = fl_fail(err, FL_EIO, "out of memory");
        goto out;
    }
    for (const cJSON *e = wm->child; e; e = e->next) {
        if (!cJSON_IsString(e)) {
            s = fl_fail(err, FL_EINPUT, "%s: weight_map entry '%s' is not a string", path, e->string);
            goto out;
        }
        if ((s = check_shard_name(path, e->string, e->valuestring, err)) != FL_OK)
            goto out;
        files[n_files++] = e->valuestring;
    }
    if ((s = weight_map_unique(path, wm, n_entries, err)) != FL_OK)
        goto out;
    /* Elsewhere too: Python's json keeps the last of two keys, cJSON the
     * first, so a duplicate means two readers see two different indexes. */
    const char *dup = ckpt_json_duplicate_key(ck->index);
    if (dup) {
        s = fl_fail(err, FL_EINPUT, "%s: key \"%s\" appears twice", path, dup);
        goto out;
    }
    qsort(files, n_files, sizeof *files, cmp_str);
    size_t u = 0;
    for (size_t i = 0; i < n_files; i++)
        if (u == 0 || strcmp(files[u - 1], files[i]) != 0)
            files[u++] = files[i];
    ck->shards = calloc(u, sizeof *ck->shards);
    if (!ck->shards) {
        s = fl_fail(err, FL_EIO, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < u; i++) {
        ck->n_shards = i + 1;
        if ((s = shard_open(ck->dir, dir_real, files[i], &ck->shards[i], err)) != FL_OK)
            goto out;
    }
    s = FL_OK;
out:
    free(files);
    free(raw);
    free(path);
    return s;
}

/* Every weight_map entry must be stored in the shard it names. */
static fl_status index_check(const checkpoint *ck, fl_error *err)
{
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(ck->index, "weight_map");
    for (const cJSON *e = wm->child; e; e = e->next) {
        const ckpt_tensor *t = ckpt_find(ck, e->string);
        if (!t)
            return fl_fail(err, FL_EINPUT,
                           "%s/model.safetensors.index.json: tensor '%s' is mapped to %s, which does not hold it",
                           ck->dir, e->string, e->valuestring);
        if (strcmp(ck->shards[t->shard].file, e->valuestring) != 0)
            return fl_fail(err, FL_EINPUT,
                           "%s/model.safetensors.index.json: tensor '%s' is mapped to %s but stored in %s",
                           ck->dir, e->string, e->valuestring, ck->shards[t->shard].file);
    }
    return FL_OK;
}

/* ---------------------------------------------------------------------------
 * public */

fl_status ckpt_open(const char *dir, checkpoint *ck, fl_error *err)
{
    memset(ck, 0, sizeof *ck);
    struct stat st;
    if (stat(dir, &st) != 0)
        return fl_fail(err, FL_EINPUT, "%s: %s", dir, strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return fl_fail(err, FL_EINPUT, "%s: not a directory", dir);
    char dir_real[PATH_MAX];
    if (!realpath(dir, dir_real))
        return fl_fail(err, FL_EINPUT, "%s: cannot resolve: %s", dir, strerror(errno));
    ck->dir = fl_strdup(dir);
    if (!ck->dir)
        return fl_fail(err, FL_EIO, "out of memory");

    fl_status s = config_load(dir, &ck->cfg, err);
    if (s != FL_OK)
        goto fail;
    if (file_exists(dir, "model.safetensors.index.json")) {
        ck->has_index = 1;
        if ((s = index_load(ck, dir_real, err)) != FL_OK)
            goto fail;
    } else if (file_exists(dir, "model.safetensors")) {
        ck->shards = calloc(1, sizeof *ck->shards);
        if (!ck->shards) {
            s = fl_fail(err, FL_EIO, "out of memory");
            goto fail;
        }
        ck->n_shards = 1;
        if ((s = shard_open(dir, dir_real, "model.safetensors", &ck->shards[0], err)) != FL_OK)
            goto fail;
    } else {
        const char *hint = file_exists(dir, "pytorch_model.bin") ||
                                   file_exists(dir, "pytorch_model.bin.index.json")
                               ? ": it has only PyTorch .bin weights; convert them to safetensors first"
                               : "";
        s = fl_fail(err, FL_EINPUT, "%s: no model.safetensors or model.safetensors.index.json%s",
                    dir, hint);
        goto fail;
    }
    if ((s = build_tensor_table(ck, err)) != FL_OK)
        goto fail;
    if (ck->has_index && (s = index_check(ck, err)) != FL_OK)
        goto fail;
    if ((s = ckpt_collect_files(ck, err)) != FL_OK)
        goto fail;
    return FL_OK;
fail:
    ckpt_close(ck);
    return s;
}

void ckpt_close(checkpoint *ck)
{
    if (!ck)
        return;
    for (size_t i = 0; i < ck->n_shards; i++) {
        if (ck->shards[i].fd >= 0 && ck->shards[i].path)
            close(ck->shards[i].fd);
        st_header_free(&ck->shards[i].st);
        free(ck->shards[i].file);
        free(ck->shards[i].path);
    }
    free(ck->shards);
    free(ck->tensors);
    for (size_t i = 0; i < ck->n_other; i++)
        free(ck->other_files[i]);
    free(ck->other_files);
    cJSON_Delete(ck->index);
    ckpt_config_free(&ck->cfg);
    free(ck->dir);
    memset(ck, 0, sizeof *ck);
}

fl_status ckpt_read(const checkpoint *ck, const ckpt_tensor *t, uint64_t off,
                    void *buf, size_t n, fl_error *err)
{
    const ckpt_shard *sh = &ck->shards[t->shard];
    uint64_t size = st_nbytes(t->t);
    if (off > size || n > size - off)
        return fl_fail(err, FL_EIO, "%s: read of %zu bytes at %llu is past the end of tensor '%s' (%llu bytes)",
                       sh->path, n, (unsigned long long)off, t->name, (unsigned long long)size);
    uint64_t pos = sh->st.data_start + t->t->begin + off;
    if (fl_pread_full(sh->fd, buf, n, pos) != 0) {
        if (errno)
            return fl_fail(err, FL_EIO, "%s: read failed in tensor '%s': %s", sh->path, t->name,
                           strerror(errno));
        return fl_fail(err, FL_EIO, "%s: file shrank while reading tensor '%s'", sh->path, t->name);
    }
    return FL_OK;
}

fl_status ckpt_read_vector(const checkpoint *ck, const ckpt_tensor *t,
                           double *out, size_t max, size_t *n_out, fl_error *err)
{
    uint64_t numel;
    if (st_numel(t->t, &numel) != 0 || numel > max)
        return fl_fail(err, FL_EINPUT, "%s: tensor '%s' has too many elements for a norm (limit %zu)",
                       ck->shards[t->shard].path, t->name, max);
    if (!st_dtype_is_foldable(t->t->dtype))
        return fl_fail(err, FL_EINPUT, "%s: tensor '%s' is %s, expected a float dtype",
                       ck->shards[t->shard].path, t->name, st_dtype_name(t->t->dtype));
    size_t bytes = (size_t)st_nbytes(t->t);
    void *buf = malloc(bytes ? bytes : 1);
    if (!buf)
        return fl_fail(err, FL_EIO, "out of memory");
    fl_status s = ckpt_read(ck, t, 0, buf, bytes, err);
    if (s == FL_OK) {
        for (size_t i = 0; i < numel; i++)
            out[i] = dtype_load(t->t->dtype, buf, i);
        *n_out = (size_t)numel;
    }
    free(buf);
    return s;
}
