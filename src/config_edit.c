/* config_edit.c — rewriting config.json for the output (config_edit.h).
 *
 * The source text is edited in place rather than re-serialised, so every
 * byte but the changed keys stays as it was: numbers keep their spelling
 * (10000.0 is not turned into 10000), key order and indentation stay. */
#include "flashify/config_edit.h"
#include "flashify/util.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A minimal scanner over JSON text that finds the spans of an object's
 * members, so config.json can be edited in place: the rest of the file
 * stays byte for byte (numbers like 10000.0 keep their spelling). */
typedef struct {
    size_t key_start;     /* the opening quote of the key */
    size_t value_start, value_end;
    char key[64];
} json_member;

static size_t skip_ws(const char *s, size_t n, size_t i)
{
    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
        i++;
    return i;
}

static size_t skip_string(const char *s, size_t n, size_t i)
{
    for (i++; i < n; i++) {
        if (s[i] == '\\')
            i++;
        else if (s[i] == '"')
            return i + 1;
    }
    return n;
}

/* End of the JSON value starting at i (the text is known to parse). */
static size_t skip_value(const char *s, size_t n, size_t i)
{
    if (i >= n)
        return n;
    if (s[i] == '"')
        return skip_string(s, n, i);
    if (s[i] == '{' || s[i] == '[') {
        int depth = 0;
        for (; i < n; i++) {
            if (s[i] == '"') {
                i = skip_string(s, n, i) - 1;
            } else if (s[i] == '{' || s[i] == '[') {
                depth++;
            } else if (s[i] == '}' || s[i] == ']') {
                if (--depth == 0)
                    return i + 1;
            }
        }
        return n;
    }
    while (i < n && s[i] != ',' && s[i] != '}' && s[i] != ']' && s[i] != ' ' &&
           s[i] != '\n' && s[i] != '\r' && s[i] != '\t')
        i++;
    return i;
}

/* Lists the members of the object whose '{' is at `open`; returns their
 * count (at most max) and sets *close to the index of its '}'. */
static size_t object_members(const char *s, size_t n, size_t open, json_member *m,
                             size_t max, size_t *close)
{
    size_t count = 0, i = skip_ws(s, n, open + 1);
    while (i < n && s[i] == '"') {
        size_t ks = i, ke = skip_string(s, n, i);
        i = skip_ws(s, n, ke);
        if (i >= n || s[i] != ':')
            break;
        i = skip_ws(s, n, i + 1);
        size_t vs = i, ve = skip_value(s, n, i);
        if (count < max) {
            json_member *mm = &m[count];
            size_t kl = ke - ks - 2;
            if (kl >= sizeof mm->key)
                kl = sizeof mm->key - 1;
            memcpy(mm->key, s + ks + 1, kl);
            mm->key[kl] = '\0';
            mm->key_start = ks;
            mm->value_start = vs;
            mm->value_end = ve;
        }
        count++;
        i = skip_ws(s, n, ve);
        if (i < n && s[i] == ',')
            i = skip_ws(s, n, i + 1);
    }
    *close = i;
    return count < max ? count : max;
}

typedef struct {
    size_t pos, del;
    char text[160];
} text_edit;

static const json_member *member(const json_member *m, size_t n, const char *key)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(m[i].key, key) == 0)
            return &m[i];
    return NULL;
}

/* Sets key to `value` in the object at `open`: replaces the value if the
 * key exists, else appends a member in the indentation of the last one. */
static void set_member(const char *s, size_t n, size_t open, const char *key,
                       const char *value, text_edit *edits, size_t *n_edits)
{
    json_member m[512];
    size_t close;
    size_t count = object_members(s, n, open, m, 512, &close);
    const json_member *hit = member(m, count, key);
    text_edit *e = &edits[(*n_edits)++];
    if (hit) {
        e->pos = hit->value_start;
        e->del = hit->value_end - hit->value_start;
        snprintf(e->text, sizeof e->text, "%s", value);
        return;
    }
    e->del = 0;
    if (count == 0) {
        e->pos = open + 1;
        snprintf(e->text, sizeof e->text, "\"%s\": %s", key, value);
        return;
    }
    const json_member *last = &m[count - 1];
    size_t ls = last->key_start;
    while (ls > 0 && s[ls - 1] != '\n' && (s[ls - 1] == ' ' || s[ls - 1] == '\t'))
        ls--;
    int indent = (int)(last->key_start - ls);
    int newline = ls > 0 && s[ls - 1] == '\n';
    e->pos = last->value_end;
    snprintf(e->text, sizeof e->text, ",%s%.*s\"%s\": %s", newline ? "\n" : " ",
             newline ? indent : 0, s + ls, key, value);
}

static int cmp_edit_desc(const void *a, const void *b)
{
    const text_edit *x = a, *y = b;
    return x->pos < y->pos ? 1 : x->pos > y->pos ? -1 : 0;
}

fl_status config_rewrite(const checkpoint *ck, const fold_plan *plan, char **out,
                         size_t *out_len, fl_error *err)
{
    const char *s = ck->cfg.raw;
    size_t n = ck->cfg.raw_len;
    size_t open = skip_ws(s, n, 0);
    if (open >= n || s[open] != '{')
        return fl_fail(err, FL_EINPUT, "%s/config.json: not a JSON object", ck->dir);
    text_edit edits[8];
    size_t n_edits = 0;
    if (plan->untie) {
        set_member(s, n, open, "tie_word_embeddings", "false", edits, &n_edits);
        json_member m[512];
        size_t close;
        size_t count = object_members(s, n, open, m, 512, &close);
        const json_member *tc = member(m, count, "text_config");
        if (tc && s[tc->value_start] == '{')
            set_member(s, n, tc->value_start, "tie_word_embeddings", "false", edits, &n_edits);
    }
    if (plan->marker) {
        set_member(s, n, open, "flashnorm_folded", "true", edits, &n_edits);
        set_member(s, n, open, "flash_norm", "true", edits, &n_edits);
    }
    /* Two appends at the same position must keep their order: apply from
     * the end, and for equal positions the later edit first. */
    for (size_t i = 0; i < n_edits; i++)
        edits[i].pos = edits[i].pos * 8 + i;
    qsort(edits, n_edits, sizeof *edits, cmp_edit_desc);
    strbuf b = {0};
    sb_put(&b, s, n);
    for (size_t i = 0; i < n_edits && !b.oom; i++) {
        size_t pos = edits[i].pos / 8;
        size_t add = strlen(edits[i].text);
        strbuf nb = {0};
        sb_put(&nb, b.p, pos);
        sb_put(&nb, edits[i].text, add);
        sb_put(&nb, b.p + pos + edits[i].del, b.n - pos - edits[i].del);
        free(b.p);
        b = nb;
    }
    if (b.oom) {
        free(b.p);
        return fl_fail(err, FL_EIO, "out of memory");
    }
    /* The edited text must still parse (belt and braces). */
    cJSON *j = cJSON_ParseWithLength(b.p, b.n);
    if (!j) {
        free(b.p);
        return fl_fail(err, FL_EINPUT, "%s/config.json: could not be rewritten as valid JSON", ck->dir);
    }
    cJSON_Delete(j);
    *out = b.p;
    *out_len = b.n;
    return FL_OK;
}
