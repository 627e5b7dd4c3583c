/* plan_file.c — the --plan file: a custom architecture row (plan.h).
 *
 * The format is the table row of arch.h written as JSON (README "Custom
 * architectures").  Every key is checked: a duplicate, an unknown key or a
 * value of the wrong type is refused with the path of the offending member,
 * so a typo cannot silently change what is folded. */
#include "flashify/json.h"
#include "flashify/plan.h"
#include "flashify/util.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct arch_custom {
    arch_info info;
    arch_norm_class classes[ARCH_MAX_FOLDS + 1]; /* [0]: the row's; then per fold */
    int nested;
    char **strings;
    size_t n_strings, cap_strings;
};

typedef struct {
    arch_custom *c;
    const char *path;
    fl_error *err;
} parser;

static fl_status bad(parser *p, const char *member, const char *what)
{
    return fl_fail(p->err, FL_EINPUT, "%s: %s %s", p->path, member, what);
}

/* A copy of s owned by the custom row. */
static const char *keep(parser *p, const char *s)
{
    arch_custom *c = p->c;
    if (c->n_strings == c->cap_strings) {
        size_t cap = c->cap_strings ? c->cap_strings * 2 : 32;
        char **v = realloc(c->strings, cap * sizeof *v);
        if (!v)
            return NULL;
        c->strings = v;
        c->cap_strings = cap;
    }
    char *d = fl_strdup(s);
    if (d)
        c->strings[c->n_strings++] = d;
    return d;
}

/* Refuses members of obj not in `allowed` (NULL-terminated). */
static fl_status only_keys(parser *p, const cJSON *obj, const char *member, const char *const *allowed)
{
    for (const cJSON *m = obj->child; m; m = m->next) {
        int ok = 0;
        for (int i = 0; allowed[i] && !ok; i++)
            ok = strcmp(m->string, allowed[i]) == 0;
        if (!ok) {
            char *msg = fl_asprintf("has an unknown key \"%s\"", m->string);
            fl_status s = bad(p, member, msg ? msg : "has an unknown key");
            free(msg);
            return s;
        }
    }
    return FL_OK;
}

/* An optional string member: *out stays NULL when absent. */
static fl_status opt_string(parser *p, const cJSON *obj, const char *key, const char *member,
                            const char **out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v)
        return FL_OK;
    if (!cJSON_IsString(v) || !v->valuestring[0]) {
        char *m = fl_asprintf("%s.%s", member, key);
        fl_status s = bad(p, m ? m : key, "must be a non-empty string");
        free(m);
        return s;
    }
    return (*out = keep(p, v->valuestring)) ? FL_OK : fl_fail(p->err, FL_EIO, "out of memory");
}

static fl_status parse_gain(parser *p, const cJSON *v, const char *member, arch_norm_class *cls)
{
    cls->name = "declared in the plan file";
    if (!v || (cJSON_IsString(v) && strcmp(v->valuestring, "w") == 0))
        cls->gain = GAIN_W;
    else if (cJSON_IsString(v) && strcmp(v->valuestring, "1+w") == 0)
        cls->gain = GAIN_ONE_PLUS_W;
    else
        return bad(p, member, "must be \"w\" or \"1+w\"");
    return FL_OK;
}

/* "when": {"moe": true, "layer_type": "...", "flag": "...", ...}. */
static fl_status parse_when(parser *p, const cJSON *w, const char *member, arch_cond *out)
{
    static const char *const keys[] = {"moe", "layer_type", "flag", "not_flag", "tail",
                                       "not_tail", "has", "not_has", NULL};
    static const arch_cond_kind kinds[] = {WHEN_MOE, WHEN_LAYER_TYPE, WHEN_FLAG, WHEN_NOT_FLAG,
                                           WHEN_TAIL, WHEN_NOT_TAIL, WHEN_HAS, WHEN_NOT_HAS};
    if (!w)
        return FL_OK;
    if (!cJSON_IsObject(w))
        return bad(p, member, "must be an object of conditions");
    fl_status s = only_keys(p, w, member, keys);
    if (s != FL_OK)
        return s;
    if (cJSON_GetArraySize(w) > ARCH_MAX_CONDS)
        return bad(p, member, "has more than 3 conditions");
    int n = 0;
    for (int k = 0; keys[k]; k++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(w, keys[k]);
        if (!v)
            continue;
        arch_cond *c = &out[n++];
        if (kinds[k] == WHEN_MOE) {
            if (!cJSON_IsBool(v))
                return bad(p, member, "\"moe\" must be true or false");
            c->kind = cJSON_IsTrue(v) ? WHEN_MOE : WHEN_DENSE;
            continue;
        }
        if (!cJSON_IsString(v) || !v->valuestring[0])
            return bad(p, member, "conditions other than \"moe\" name a config key or tensor (a string)");
        c->kind = kinds[k];
        c->key = kinds[k] == WHEN_LAYER_TYPE ? "layer_types" : keep(p, v->valuestring);
        c->value = kinds[k] == WHEN_LAYER_TYPE ? keep(p, v->valuestring) : NULL;
        if (!c->key || (kinds[k] == WHEN_LAYER_TYPE && !c->value))
            return fl_fail(p->err, FL_EIO, "out of memory");
    }
    return FL_OK;
}

/* A consumer: "name" (an nn.Linear) or {"name": ..., "input": "last" |
 * "middle" | "either"} (3-D fused experts). */
static fl_status parse_consumer(parser *p, const cJSON *v, const char *member, arch_consumer *out)
{
    static const char *const keys[] = {"name", "input", NULL};
    static const char *const inputs[] = {"linear", "last", "middle", "either", NULL};
    if (cJSON_IsString(v) && v->valuestring[0]) {
        out->input = IN_LINEAR;
        return (out->name = keep(p, v->valuestring)) ? FL_OK : fl_fail(p->err, FL_EIO, "out of memory");
    }
    if (!cJSON_IsObject(v))
        return bad(p, member, "must be a tensor name or {\"name\", \"input\"}");
    fl_status s = only_keys(p, v, member, keys);
    const char *input = NULL;
    if (s == FL_OK)
        s = opt_string(p, v, "name", member, &out->name);
    if (s == FL_OK)
        s = opt_string(p, v, "input", member, &input);
    if (s != FL_OK)
        return s;
    if (!out->name)
        return bad(p, member, "needs a \"name\"");
    out->input = IN_LINEAR;
    for (int i = 0; input && inputs[i]; i++)
        if (strcmp(input, inputs[i]) == 0)
            out->input = (arch_input)i;
    if (input && strcmp(input, inputs[out->input]) != 0)
        return bad(p, member, "\"input\" must be \"linear\", \"last\" ([E, out, in]), \"middle\" "
                              "([E, in, out]) or \"either\"");
    return FL_OK;
}

static fl_status parse_fold(parser *p, const cJSON *g, int gi, arch_fold *f, arch_norm_class *cls)
{
    static const char *const keys[] = {"norm", "consumers", "when", "gain", "note", NULL};
    char member[64];
    snprintf(member, sizeof member, "layers[%d]", gi);
    if (!cJSON_IsObject(g))
        return bad(p, member, "must be an object {norm, consumers}");
    fl_status s = only_keys(p, g, member, keys);
    if (s == FL_OK)
        s = opt_string(p, g, "norm", member, &f->norm);
    if (s == FL_OK)
        s = opt_string(p, g, "note", member, &f->note);
    if (s != FL_OK)
        return s;
    const cJSON *cons = cJSON_GetObjectItemCaseSensitive(g, "consumers");
    if (!f->norm || !cJSON_IsArray(cons) || cJSON_GetArraySize(cons) < 1 ||
        cJSON_GetArraySize(cons) > ARCH_MAX_CONSUMERS) {
        snprintf(member, sizeof member, "layers[%d]", gi);
        return bad(p, member, "needs \"norm\" (string) and \"consumers\" (1 to 8 tensor names)");
    }
    int ci = 0;
    for (const cJSON *c = cons->child; c && s == FL_OK; c = c->next, ci++) {
        char cm[64];
        snprintf(cm, sizeof cm, "layers[%d].consumers[%d]", gi, ci);
        s = parse_consumer(p, c, cm, &f->consumers[ci]);
    }
    const cJSON *gain = cJSON_GetObjectItemCaseSensitive(g, "gain");
    if (s == FL_OK && gain) {
        snprintf(member, sizeof member, "layers[%d].gain", gi);
        if ((s = parse_gain(p, gain, member, cls)) == FL_OK)
            f->cls = cls;
    }
    snprintf(member, sizeof member, "layers[%d].when", gi);
    return s == FL_OK ? parse_when(p, cJSON_GetObjectItemCaseSensitive(g, "when"), member, f->when) : s;
}

static fl_status parse_keep(parser *p, const cJSON *k, int ki, arch_keep *out)
{
    static const char *const keys[] = {"norm", "reason", "when", NULL};
    char member[64];
    snprintf(member, sizeof member, "keep[%d]", ki);
    if (!cJSON_IsObject(k))
        return bad(p, member, "must be an object {norm, reason}");
    fl_status s = only_keys(p, k, member, keys);
    if (s == FL_OK)
        s = opt_string(p, k, "norm", member, &out->norm);
    if (s == FL_OK)
        s = opt_string(p, k, "reason", member, &out->reason);
    if (s != FL_OK)
        return s;
    if (!out->norm)
        return bad(p, member, "needs \"norm\" (a string)");
    if (!out->reason)
        out->reason = "declared in the plan file";
    snprintf(member, sizeof member, "keep[%d].when", ki);
    return parse_when(p, cJSON_GetObjectItemCaseSensitive(k, "when"), member, out->when);
}

/* "experts_key": "k" or ["k1", "k2"]; "moe_rule": {...} (arch_moe_rule). */
static fl_status parse_moe(parser *p, const cJSON *j, arch_moe_rule *r)
{
    static const char *const keys[] = {"experts", "flag", "sparse_list", "dense_list",
                                       "first_dense", "step", "step_offset", NULL};
    const cJSON *ek = cJSON_GetObjectItemCaseSensitive(j, "experts_key");
    const cJSON *mr = cJSON_GetObjectItemCaseSensitive(j, "moe_rule");
    fl_status s = FL_OK;
    if (mr) {
        if (!cJSON_IsObject(mr))
            return bad(p, "\"moe_rule\"", "must be an object");
        if ((s = only_keys(p, mr, "\"moe_rule\"", keys)) != FL_OK)
            return s;
        const char **dst[] = {&r->flag, &r->sparse_list, &r->dense_list, &r->first_dense, &r->step};
        for (int i = 0; i < 5 && s == FL_OK; i++)
            s = opt_string(p, mr, keys[i + 1], "moe_rule", dst[i]);
        const cJSON *off = cJSON_GetObjectItemCaseSensitive(mr, "step_offset");
        if (off && !(cJSON_IsNumber(off) && (off->valuedouble == 0 || off->valuedouble == 1)))
            return bad(p, "moe_rule.step_offset", "must be 0 (i % step) or 1 ((i + 1) % step)");
        r->step_offset = off ? (int)off->valuedouble : 1;
        if (s == FL_OK && !ek)
            ek = cJSON_GetObjectItemCaseSensitive(mr, "experts");
    }
    if (s != FL_OK || !ek)
        return s;
    if (cJSON_IsString(ek) && ek->valuestring[0])
        return (r->experts[0] = keep(p, ek->valuestring)) ? FL_OK : fl_fail(p->err, FL_EIO, "out of memory");
    int n = 0;
    for (const cJSON *e = cJSON_IsArray(ek) ? ek->child : NULL; e; e = e->next, n++)
        if (n >= 3 || !cJSON_IsString(e) || !(r->experts[n] = keep(p, e->valuestring)))
            return bad(p, "the expert count key", "must be a string or 1 to 3 strings (config keys)");
    return n ? FL_OK : bad(p, "the expert count key", "must be a string or 1 to 3 strings (config keys)");
}

static fl_status parse_list(parser *p, const cJSON *j, const char *key, int max, void *out, size_t size,
                            fl_status (*one)(parser *, const cJSON *, int, void *))
{
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(j, key);
    if (!a)
        return FL_OK;
    if (!cJSON_IsArray(a) || cJSON_GetArraySize(a) > max) {
        char *msg = fl_asprintf("must be an array of at most %d entries", max);
        char member[32];
        snprintf(member, sizeof member, "\"%s\"", key);
        fl_status s = bad(p, member, msg ? msg : "must be an array");
        free(msg);
        return s;
    }
    int i = 0;
    fl_status s = FL_OK;
    for (const cJSON *e = a->child; e && s == FL_OK; e = e->next, i++)
        s = one(p, e, i, (char *)out + (size_t)i * size);
    return s;
}

static fl_status one_fold(parser *p, const cJSON *e, int i, void *out)
{
    return parse_fold(p, e, i, out, &p->c->classes[1 + i]);
}

static fl_status one_keep(parser *p, const cJSON *e, int i, void *out)
{
    return parse_keep(p, e, i, out);
}

static fl_status parse_flags(parser *p, const cJSON *j)
{
    arch_custom *c = p->c;
    static const char *const bools[] = {"tie_word_embeddings_default", "flashnorm_marker", "text_config"};
    for (int i = 0; i < 3; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, bools[i]);
        if (v && !cJSON_IsBool(v)) {
            char member[40];
            snprintf(member, sizeof member, "\"%s\"", bools[i]);
            return bad(p, member, "must be true or false");
        }
    }
    c->info.tie_default = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "tie_word_embeddings_default"));
    c->info.marker = cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(j, "flashnorm_marker"))
                         ? ARCH_MARKER_NEVER : ARCH_MARKER_AUTO;
    c->nested = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "text_config"));
    return FL_OK;
}

static fl_status parse_row(parser *p, const cJSON *j)
{
    static const char *const keys[] = {"model_type", "gain", "layers", "keep", "experts_key",
                                       "moe_rule", "tie_word_embeddings_default",
                                       "flashnorm_marker", "text_config", NULL};
    arch_custom *c = p->c;
    if (!cJSON_IsObject(j))
        return fl_fail(p->err, FL_EINPUT, "%s: not a JSON object", p->path);
    const char *dup = ckpt_json_duplicate_key(j);
    if (dup)
        return fl_fail(p->err, FL_EINPUT, "%s: key \"%s\" appears twice", p->path, dup);
    fl_status s = only_keys(p, j, "the plan", keys);
    if (s == FL_OK)
        s = opt_string(p, j, "model_type", "the plan", &c->info.model_type);
    if (s != FL_OK)
        return s;
    if (!c->info.model_type)
        return fl_fail(p->err, FL_EINPUT, "%s: \"model_type\" must be a string", p->path);
    if ((s = parse_gain(p, cJSON_GetObjectItemCaseSensitive(j, "gain"), "\"gain\"", &c->classes[0])) != FL_OK)
        return s;
    c->info.norm = &c->classes[0];
    if (!cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(j, "layers")))
        return bad(p, "\"layers\"", "must be an array of at most 12 {norm, consumers}");
    if ((s = parse_list(p, j, "layers", ARCH_MAX_FOLDS, c->info.folds, sizeof c->info.folds[0], one_fold)) ||
        (s = parse_list(p, j, "keep", ARCH_MAX_KEEPS, c->info.keeps, sizeof c->info.keeps[0], one_keep)) ||
        (s = parse_moe(p, j, &c->info.moe)))
        return s;
    return parse_flags(p, j);
}

fl_status arch_custom_parse(const char *path, const char *text, size_t len, arch_custom **out,
                            fl_error *err)
{
    *out = NULL;
    arch_custom *c = calloc(1, sizeof *c);
    if (!c)
        return fl_fail(err, FL_EIO, "out of memory");
    parser p = {c, path, err};
    fl_status s = json_validate(path, text, len, CJSON_NESTING_LIMIT, err);
    cJSON *j = s == FL_OK ? cJSON_ParseWithLength(text, len) : NULL;
    if (s == FL_OK)
        s = j ? parse_row(&p, j) : fl_fail(err, FL_EINPUT, "%s: not valid JSON", path);
    cJSON_Delete(j);
    if (s != FL_OK) {
        arch_custom_free(c);
        return s;
    }
    *out = c;
    return FL_OK;
}

const arch_info *arch_custom_info(const arch_custom *c) { return &c->info; }
int arch_custom_nested(const arch_custom *c) { return c->nested; }

void arch_custom_free(arch_custom *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n_strings; i++)
        free(c->strings[i]);
    free(c->strings);
    free(c);
}
