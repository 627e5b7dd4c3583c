/* layout.c — the output's files, their planned headers, the index and the
 * fingerprint (see layout.h). */
#include "flashify/layout.h"
#include "flashify/util.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ---------------------------------------------------------------------------
 * which tensors go into which file */

void layout_free(out_layout *l)
{
    for (size_t i = 0; i < l->n; i++) {
        out_file *f = &l->f[i];
        free(f->file);
        free(f->t);
        free(f->ts);
        free(f->order);
        free(f->meta);
        free(f->header);
    }
    free(l->f);
    free(l->file_of);
    memset(l, 0, sizeof *l);
}

static int file_add(out_file *f, const out_tensor *o)
{
    if (f->n == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 16;
        const out_tensor **t = realloc(f->t, cap * sizeof *t);
        if (!t)
            return -1;
        f->t = t;
        f->cap = cap;
    }
    f->t[f->n++] = o;
    return 0;
}

static unsigned shard_mode(const ckpt_shard *sh)
{
    struct stat st;
    return fstat(sh->fd, &st) == 0 ? (unsigned)(st.st_mode & 0777) : 0600;
}

/* Same names as the source, each file with its own tensors. */
static fl_status assign_mirrored(const checkpoint *ck, const fold_plan *plan, out_layout *l, fl_error *err)
{
    for (size_t i = 0; i < ck->n_shards; i++) {
        l->f[i].file = fl_strdup(ck->shards[i].file);
        l->f[i].meta_src = &ck->shards[i];
        l->f[i].mode = shard_mode(&ck->shards[i]);
        if (!l->f[i].file)
            return fl_fail(err, FL_EIO, "out of memory");
    }
    l->n = ck->n_shards;
    for (size_t i = 0; i < plan->n_out; i++) {
        l->file_of[i] = plan->out[i].shard;
        if (file_add(&l->f[plan->out[i].shard], &plan->out[i]) != 0)
            return fl_fail(err, FL_EIO, "out of memory");
    }
    for (size_t i = 0; i < l->n; i++)
        l->f[i].skip = l->f[i].n == 0 && l->n > 1;  /* a shard that held only norms */
    l->want_index = ck->has_index;
    return FL_OK;
}

/* Re-packed greedily in order, as huggingface_hub's
 * split_state_dict_into_shards does; a tensor larger than the limit sits
 * alone in its file. */
static fl_status assign_resharded(const checkpoint *ck, const fold_plan *plan, uint64_t max_shard_size,
                                  out_layout *l, fl_error *err)
{
    uint64_t used = 0;
    unsigned mode = 0777;
    for (size_t i = 0; i < ck->n_shards; i++)
        mode &= shard_mode(&ck->shards[i]);
    for (size_t i = 0; i < plan->n_out; i++) {
        uint64_t bytes = st_nbytes(plan->out[i].src->t);
        if (l->n == 0 || (used + bytes > max_shard_size && used > 0)) {
            l->n++;
            used = 0;
        }
        l->file_of[i] = l->n - 1;
        if (file_add(&l->f[l->n - 1], &plan->out[i]) != 0)
            return fl_fail(err, FL_EIO, "out of memory");
        used += bytes;
    }
    if (l->n == 0)
        l->n = 1;
    for (size_t i = 0; i < l->n; i++) {
        char name[64];
        if (l->n == 1)
            snprintf(name, sizeof name, "model.safetensors");
        else
            snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", i + 1, l->n);
        if (!(l->f[i].file = strdup(name)))
            return fl_fail(err, FL_EIO, "out of memory");
        l->f[i].mode = mode;
    }
    l->want_index = l->n > 1;
    return FL_OK;
}

/* The output file that holds tensor `name`, or NULL. */
static const char *file_of(const out_layout *l, const fold_plan *plan, const char *name)
{
    const out_tensor *o = plan_find_out(plan, name);
    return o ? l->f[l->file_of[o - plan->out]].file : NULL;
}

/* ---------------------------------------------------------------------------
 * the planned headers */

/* Metadata of a same-name file: "format": "pt" first, then the source's
 * entries, less the aliases that became real tensors.  An alias whose
 * target would change meaning is refused. */
static fl_status meta_mirrored(const checkpoint *ck, const fold_plan *plan, out_file *f, fl_error *err)
{
    for (size_t i = 0; i < f->meta_src->st.n_meta; i++) {
        const st_meta *m = &f->meta_src->st.meta[i];
        if (strcmp(m->key, "format") == 0)
            continue;
        const ckpt_tensor *alias = ckpt_find(ck, m->key);
        if (alias && alias->is_alias) {
            if (plan_find_out(plan, m->key))
                continue;  /* materialised (untied) */
            const out_tensor *target = plan_find_out(plan, m->value);
            if (!target || target->op != OUT_COPY)
                return fl_fail(err, FL_EINPUT,
                               "%s: alias '%s' -> '%s' would point at a %s tensor; refusing to change what it means",
                               f->meta_src->path, m->key, m->value, target ? "folded" : "removed");
        }
        f->meta[f->n_meta++] = *m;
    }
    return FL_OK;
}

/* Re-sharded output keeps only the aliases, each in the file of its target. */
static fl_status meta_resharded(const checkpoint *ck, const fold_plan *plan, const out_layout *l,
                                out_file *f, fl_error *err)
{
    for (size_t i = 0; i < ck->n_tensors; i++) {
        const ckpt_tensor *a = &ck->tensors[i];
        if (!a->is_alias || plan_find_out(plan, a->name))
            continue;
        const out_tensor *target = plan_find_out(plan, a->t->name);
        if (!target || target->op != OUT_COPY)
            return fl_fail(err, FL_EINPUT, "%s: alias '%s' -> '%s' would point at a %s tensor",
                           ck->shards[a->shard].path, a->name, a->t->name, target ? "folded" : "removed");
        const char *file = file_of(l, plan, a->t->name);
        if (file && strcmp(file, f->file) == 0)
            f->meta[f->n_meta++] = (st_meta){(char *)a->name, a->t->name};
    }
    return FL_OK;
}

static fl_status header_build(const checkpoint *ck, const fold_plan *plan, const out_layout *l,
                              out_file *f, const char *label, fl_error *err)
{
    size_t n_meta_cap = 1 + (f->meta_src ? f->meta_src->st.n_meta : ck->n_tensors);
    f->ts = calloc(f->n ? f->n : 1, sizeof *f->ts);
    f->order = calloc(f->n ? f->n : 1, sizeof *f->order);
    f->meta = calloc(n_meta_cap, sizeof *f->meta);
    if (!f->ts || !f->order || !f->meta)
        return fl_fail(err, FL_EIO, "out of memory");
    for (size_t i = 0; i < f->n; i++) {
        const st_tensor *t = f->t[i]->src->t;
        f->ts[i] = *t;
        f->ts[i].name = (char *)f->t[i]->name;
        f->ts[i].begin = 0;
        f->ts[i].end = st_nbytes(t);
    }
    f->meta[f->n_meta++] = (st_meta){"format", "pt"};
    fl_status s = f->meta_src ? meta_mirrored(ck, plan, f, err) : meta_resharded(ck, plan, l, f, err);
    char *what = s == FL_OK ? fl_asprintf("%s/%s", label, f->file) : NULL;
    if (s == FL_OK && !what)
        s = fl_fail(err, FL_EIO, "out of memory");
    if (s == FL_OK)
        s = st_layout(what, f->ts, f->n, f->meta, f->n_meta, f->order, &f->header, &f->header_size, err);
    free(what);
    for (size_t i = 0; s == FL_OK && i < f->n; i++)
        if (f->ts[i].end > f->data_bytes)
            f->data_bytes = f->ts[i].end;
    return s;
}

fl_status layout_build(const checkpoint *ck, const fold_plan *plan, uint64_t max_shard_size,
                       const char *label, out_layout *l, fl_error *err)
{
    memset(l, 0, sizeof *l);
    size_t cap = max_shard_size ? plan->n_out + 1 : ck->n_shards;
    l->f = calloc(cap ? cap : 1, sizeof *l->f);
    l->file_of = calloc(plan->n_out ? plan->n_out : 1, sizeof *l->file_of);
    if (!l->f || !l->file_of)
        return fl_fail(err, FL_EIO, "out of memory");
    fl_status s = max_shard_size ? assign_resharded(ck, plan, max_shard_size, l, err)
                                 : assign_mirrored(ck, plan, l, err);
    for (size_t i = 0; s == FL_OK && i < l->n; i++) {
        if (l->f[i].skip)
            continue;
        s = header_build(ck, plan, l, &l->f[i], label, err);
        l->tensor_bytes += l->f[i].data_bytes;
    }
    return s;
}

/* ---------------------------------------------------------------------------
 * the index */

/* qsort has no context argument: the names being sorted, per thread. */
static _Thread_local const char **sorting_names;

static int cmp_name_idx(const void *a, const void *b)
{
    return strcmp(sorting_names[*(const size_t *)a], sorting_names[*(const size_t *)b]);
}

static void index_metadata(const checkpoint *ck, const out_layout *l, strbuf *b)
{
    sb_str(b, "{\n  \"metadata\": {\n");
    sb_printf(b, "    \"total_size\": %llu", (unsigned long long)l->tensor_bytes);
    const cJSON *meta = ck->index ? cJSON_GetObjectItemCaseSensitive(ck->index, "metadata") : NULL;
    if (cJSON_IsObject(meta))
        for (const cJSON *m = meta->child; m; m = m->next) {
            if (!m->string || strcmp(m->string, "total_size") == 0)
                continue;
            char *v = cJSON_PrintUnformatted(m);
            if (!v)
                continue;
            sb_str(b, ",\n    ");
            sb_json_string(b, m->string);
            sb_str(b, ": ");
            sb_str(b, v);
            cJSON_free(v);
        }
    sb_str(b, "\n  },\n  \"weight_map\": {\n");
}

fl_status layout_index(const checkpoint *ck, const fold_plan *plan, const out_layout *l, char **text,
                       size_t *len, fl_error *err)
{
    strbuf b = {0};
    index_metadata(ck, l, &b);
    /* Every output tensor, plus the aliases that remain (in their target's
     * file, where the alias is recorded). */
    size_t n = 0, cap = plan->n_out + ck->n_tensors + 1;
    const char **names = calloc(cap, sizeof *names), **files = calloc(cap, sizeof *files);
    size_t *idx = malloc(cap * sizeof *idx);
    for (size_t i = 0; names && files && i < plan->n_out; i++) {
        names[n] = plan->out[i].name;
        files[n++] = l->f[l->file_of[i]].file;
    }
    const cJSON *wm = ck->index ? cJSON_GetObjectItemCaseSensitive(ck->index, "weight_map") : NULL;
    for (const cJSON *e = wm && names && files ? wm->child : NULL; e; e = e->next) {
        const ckpt_tensor *t = ckpt_find(ck, e->string);
        const char *file = t && t->is_alias && !plan_find_out(plan, e->string) ? file_of(l, plan, t->t->name)
                                                                                : NULL;
        if (file) {
            names[n] = t->name;
            files[n++] = file;
        }
    }
    for (size_t i = 0; idx && i < n; i++)
        idx[i] = i;
    sorting_names = names;
    if (idx && names && files)
        qsort(idx, n, sizeof *idx, cmp_name_idx);
    sorting_names = NULL;
    for (size_t k = 0; idx && names && files && k < n; k++) {
        sb_str(&b, "    ");
        sb_json_string(&b, names[idx[k]]);
        sb_str(&b, ": ");
        sb_json_string(&b, files[idx[k]]);
        sb_str(&b, k + 1 < n ? ",\n" : "\n");
    }
    sb_str(&b, "  }\n}\n");
    int ok = names && files && idx;
    free(idx);
    free(names);
    free(files);
    *len = b.n;
    *text = sb_take(&b);
    if (!ok || !*text) {
        free(*text);
        *text = NULL;
        return fl_fail(err, FL_EIO, "out of memory");
    }
    return FL_OK;
}

/* ---------------------------------------------------------------------------
 * the fingerprint */

static void put(txn_fp *f, const void *p, size_t n)
{
    txn_fp_add(f, p, n);
}

static void put_str(txn_fp *f, const char *s)
{
    put(f, s, strlen(s) + 1);
}

static void put_u64(txn_fp *f, uint64_t v)
{
    put(f, &v, sizeof v);
}

static void put_tensor(txn_fp *f, const checkpoint *ck, const out_tensor *o)
{
    const st_tensor *t = o->src->t;
    put_str(f, o->name);
    put_u64(f, (uint64_t)o->op);
    put_str(f, ck->shards[o->src->shard].file);
    put_u64(f, t->begin);
    put_u64(f, t->end);
    put_u64(f, (uint64_t)t->dtype);
    for (int d = 0; d < t->ndim; d++)
        put_u64(f, t->shape[d]);
    if (o->op == OUT_FOLD) {
        const ckpt_tensor *norm = ckpt_find(ck, o->group->norm);
        put_str(f, o->group->norm);
        put_u64(f, (uint64_t)o->group->gain);
        put_u64(f, (uint64_t)o->axis);
        put_u64(f, norm ? (uint64_t)norm->t->dtype : UINT64_MAX);
        put(f, o->group->w, o->group->len * sizeof *o->group->w);
    }
    if (o->op == OUT_IDENTITY)
        put(f, &o->identity, sizeof o->identity);
}

void layout_fingerprint(const checkpoint *ck, const fold_plan *plan, const out_layout *l,
                        unsigned char fp[TXN_FP_BYTES])
{
    txn_fp f;
    txn_fp_init(&f);
    put_str(&f, "flashify " FLASHIFY_VERSION);
    for (size_t i = 0; i < ck->n_shards; i++) {
        struct stat st;
        memset(&st, 0, sizeof st);
        fstat(ck->shards[i].fd, &st);
        put_str(&f, ck->shards[i].file);
        put_u64(&f, (uint64_t)st.st_dev);
        put_u64(&f, (uint64_t)st.st_ino);
        put_u64(&f, (uint64_t)st.st_size);
        put_u64(&f, (uint64_t)st.st_mtim.tv_sec);
        put_u64(&f, (uint64_t)st.st_mtim.tv_nsec);
    }
    for (size_t i = 0; i < plan->n_out; i++)
        put_tensor(&f, ck, &plan->out[i]);
    for (size_t i = 0; i < l->n; i++) {
        put_str(&f, l->f[i].file);
        put_u64(&f, (uint64_t)l->f[i].skip);
        if (l->f[i].header)
            put(&f, l->f[i].header, l->f[i].header_size);
    }
    txn_fp_final(&f, fp);
}
