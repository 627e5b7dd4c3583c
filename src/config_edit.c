/* config_edit.c — rewriting config.json for the output (config_edit.h).
 *
 * The source text is edited in place rather than re-serialised, so every
 * byte but the changed keys stays as it was: numbers keep their spelling
 * (10000.0 is not turned into 10000), key order and indentation stay.
 * Members are found with the strict JSON reader (json.h), keys compared
 * after decoding their escapes ("tie_word_embeddings" may be spelled with
 * \u0074...), whatever the number of members.  The result is parsed back
 * and checked: each edited key must read as intended, once. */
#include "flashify/config_edit.h"
#include "flashify/json.h"
#include "flashify/util.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* config.json is validated when the checkpoint is opened; this only bounds
 * the reader's recursion. */
#define CONFIG_MAX_DEPTH 64

/* Where one member of an object sits in the text. */
typedef struct {
    size_t key_start;              /* the key's opening quote */
    size_t value_start, value_end;
} member_span;

/* Finds `key` among the members of the object whose '{' is at `open`:
 * returns 1 with *hit set when present, 0 when absent (*last then spans the
 * last member, *n_members counts them), -1 on a syntax error. */
static int find_member(json_reader *j, size_t open, const char *key, member_span *hit,
                       member_span *last, size_t *n_members, size_t *close)
{
    j->pos = open;
    json_iter it;
    if (json_enter(j, &it, '{', 0) != FL_OK)
        return -1;
    *n_members = 0;
    int found = 0, r;
    char *k;
    member_span m;
    while ((r = json_next(j, &it, &k, &m.key_start)) > 0) {
        m.value_start = j->pos;
        int same = strcmp(k, key) == 0;
        free(k);
        if (json_skip(j, 1) != FL_OK)
            return -1;
        m.value_end = j->pos;
        (*n_members)++;
        *last = m;
        if (same && !found) {
            *hit = m;
            found = 1;
        }
    }
    if (r < 0)
        return -1;
    *close = j->pos - 1;
    return found;
}

typedef struct {
    size_t pos, del;
    char *text;     /* malloc'd */
    size_t order;   /* equal positions apply in this order */
} text_edit;

/* Sets `key` to the JSON literal `value` in the object at `open`: replaces
 * the value if the key exists, else appends a member in the indentation of
 * the last one.  Appends an edit; 0 or -1 (syntax or memory). */
static int set_member(const char *s, size_t n, size_t open, const char *key, const char *value,
                      text_edit *edits, size_t *n_edits)
{
    json_reader j;
    fl_error ignored;
    json_init(&j, "config.json", "JSON", s, n, CONFIG_MAX_DEPTH, &ignored);
    j.python_floats = 1;
    member_span hit, last;
    size_t count = 0, close = 0;
    int r = find_member(&j, open, key, &hit, &last, &count, &close);
    if (r < 0)
        return -1;
    text_edit *e = &edits[*n_edits];
    e->order = *n_edits;
    if (r == 1) {
        e->pos = hit.value_start;
        e->del = hit.value_end - hit.value_start;
        e->text = fl_strdup(value);
    } else if (count == 0) {
        e->pos = open + 1;
        e->del = 0;
        e->text = fl_asprintf("\"%s\": %s", key, value);
    } else {
        /* Same indentation as the last member, on a line of its own when
         * the last member has one. */
        size_t ls = last.key_start;
        while (ls > 0 && (s[ls - 1] == ' ' || s[ls - 1] == '\t'))
            ls--;
        int newline = ls > 0 && s[ls - 1] == '\n';
        e->pos = last.value_end;
        e->del = 0;
        e->text = fl_asprintf(",%s%.*s\"%s\": %s", newline ? "\n" : " ",
                              newline ? (int)(last.key_start - ls) : 0, s + ls, key, value);
    }
    if (!e->text)
        return -1;
    (*n_edits)++;
    return 0;
}

static int cmp_edit_desc(const void *a, const void *b)
{
    const text_edit *x = a, *y = b;
    if (x->pos != y->pos)
        return x->pos < y->pos ? 1 : -1;
    return x->order < y->order ? 1 : x->order > y->order ? -1 : 0;
}

/* Offset of the '{' of member `key` of the object at `open`, or 0. */
static size_t object_member_open(const char *s, size_t n, size_t open, const char *key)
{
    json_reader j;
    fl_error ignored;
    json_init(&j, "config.json", "JSON", s, n, CONFIG_MAX_DEPTH, &ignored);
    j.python_floats = 1;
    member_span hit, last;
    size_t count, close;
    if (find_member(&j, open, key, &hit, &last, &count, &close) != 1 || s[hit.value_start] != '{')
        return 0;
    return hit.value_start;
}

/* 1 when `obj` has exactly one member `key` and it is the boolean `want`. */
static int reads_as(const cJSON *obj, const char *key, int want)
{
    int count = 0, ok = 0;
    for (const cJSON *c = obj ? obj->child : NULL; c; c = c->next)
        if (c->string && strcmp(c->string, key) == 0) {
            count++;
            ok = cJSON_IsBool(c) && cJSON_IsTrue(c) == want;
        }
    return count == 1 && ok;
}

/* Parses the edited text back: what a loader will read. */
static fl_status check_written(const checkpoint *ck, const fold_plan *plan, const char *text,
                               size_t len, int text_config_edited, fl_error *err)
{
    cJSON *j = ckpt_config_json(text, len);
    const char *bad = !j ? "it is not valid JSON" : NULL;
    if (!bad && plan->untie && !reads_as(j, "tie_word_embeddings", 0))
        bad = "tie_word_embeddings does not read back as false";
    if (!bad && plan->untie && plan->arch->tie_alias && cJSON_GetObjectItemCaseSensitive(j, plan->arch->tie_alias) &&
        !reads_as(j, plan->arch->tie_alias, 0))
        bad = "the tie alias does not read back as false";
    if (!bad && plan->untie && text_config_edited &&
        !reads_as(cJSON_GetObjectItemCaseSensitive(j, "text_config"), "tie_word_embeddings", 0))
        bad = "text_config.tie_word_embeddings does not read back as false";
    if (!bad && plan->marker &&
        (!reads_as(j, "flashnorm_folded", 1) || !reads_as(j, "flash_norm", 1)))
        bad = "the FlashNorm marker does not read back as true";
    cJSON_Delete(j);
    if (bad)
        return fl_fail(err, FL_EINPUT, "%s/config.json: the rewritten config failed its check: %s",
                       ck->dir, bad);
    return FL_OK;
}

fl_status config_rewrite(const checkpoint *ck, const fold_plan *plan, char **out,
                         size_t *out_len, fl_error *err)
{
    const char *s = ck->cfg.raw;
    size_t n = ck->cfg.raw_len, open = 0;
    while (open < n && (s[open] == ' ' || s[open] == '\t' || s[open] == '\n' || s[open] == '\r'))
        open++;
    if (open >= n || s[open] != '{')
        return fl_fail(err, FL_EINPUT, "%s/config.json: not a JSON object", ck->dir);
    text_edit edits[8];
    size_t n_edits = 0;
    int rc = 0, text_config_edited = 0;
    const char *alias = plan->untie && plan->arch->tie_alias &&
                                cJSON_GetObjectItemCaseSensitive(ck->cfg.json, plan->arch->tie_alias)
                            ? plan->arch->tie_alias
                            : NULL;
    if (alias) /* LFM2's tie_embedding wins over tie_word_embeddings: both say false */
        rc |= set_member(s, n, open, alias, "false", edits, &n_edits);
    if (plan->untie) {
        rc |= set_member(s, n, open, "tie_word_embeddings", "false", edits, &n_edits);
        size_t tc = object_member_open(s, n, open, "text_config");
        if (tc) {
            rc |= set_member(s, n, tc, "tie_word_embeddings", "false", edits, &n_edits);
            text_config_edited = 1;
        }
    }
    if (plan->marker) {
        rc |= set_member(s, n, open, "flashnorm_folded", "true", edits, &n_edits);
        rc |= set_member(s, n, open, "flash_norm", "true", edits, &n_edits);
    }
    strbuf b = {0};
    if (rc == 0) {
        /* From the end, so earlier positions stay valid; two appends at
         * the same position keep their order. */
        qsort(edits, n_edits, sizeof *edits, cmp_edit_desc);
        size_t tail = n;
        /* Pieces back to front, joined front to back. */
        const char *piece[17];
        size_t piece_len[17], np = 0;
        for (size_t i = 0; i < n_edits; i++) {
            size_t after = edits[i].pos + edits[i].del;
            piece[np] = s + after;
            piece_len[np++] = tail - after;
            piece[np] = edits[i].text;
            piece_len[np++] = strlen(edits[i].text);
            tail = edits[i].pos;
        }
        piece[np] = s;
        piece_len[np++] = tail;
        for (size_t i = np; i-- > 0;)
            sb_put(&b, piece[i], piece_len[i]);
    }
    for (size_t i = 0; i < n_edits; i++)
        free(edits[i].text);
    if (rc != 0) {
        sb_free(&b);
        return fl_fail(err, FL_EINPUT, "%s/config.json: could not be scanned for editing", ck->dir);
    }
    if (b.oom) {
        sb_free(&b);
        return fl_fail(err, FL_EIO, "out of memory");
    }
    size_t len = b.n;
    char *text = sb_take(&b);
    if (!text)
        return fl_fail(err, FL_EIO, "out of memory");
    fl_status st = check_written(ck, plan, text, len, text_config_edited, err);
    if (st != FL_OK) {
        free(text);
        return st;
    }
    *out = text;
    *out_len = len;
    return FL_OK;
}
