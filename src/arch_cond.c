/* arch_cond.c — the table's conditions and the MoE rule (see arch.h):
 * whether a fold variant, a keep or a sparse-layer rule applies to layer i
 * of a config.  The rows they read are in arch.c. */
#include "flashify/arch.h"

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int in_int_list(const cJSON *list, long i)
{
    for (const cJSON *e = cJSON_IsArray(list) ? list->child : NULL; e; e = e->next)
        if (cJSON_IsNumber(e) && e->valuedouble == (double)i)
            return 1;
    return 0;
}

static int layer_type_is(ckpt_view cfg, const char *key, const char *value, long i)
{
    const cJSON *lt = ckpt_view_get(cfg, key);
    const cJSON *e = cJSON_IsArray(lt) ? cJSON_GetArrayItem(lt, (int)i) : NULL;
    return cJSON_IsString(e) && value && strcmp(e->valuestring, value) == 0;
}

/* The config value WHEN_BLOCK reads: the first of the "|"-separated keys
 * that is present and not null (its name into key[64]). */
static const cJSON *block_list(ckpt_view cfg, const char *keys, char key[64])
{
    for (const char *k = keys; k && *k;) {
        size_t n = strcspn(k, "|");
        snprintf(key, 64, "%.*s", (int)(n < 63 ? n : 63), k);
        k += n + (k[n] == '|');
        const cJSON *v = ckpt_view_get(cfg, key);
        if (v && !cJSON_IsNull(v))
            return v;
    }
    return NULL;
}

long arch_block_count(ckpt_view cfg, const char *keys, char key[64])
{
    const cJSON *v = block_list(cfg, keys, key);
    if (cJSON_IsArray(v))
        return cJSON_GetArraySize(v);
    return cJSON_IsString(v) ? (long)strlen(v->valuestring) : -1;
}

/* 1 when `word` is one of the "|"-separated spellings in `list`. */
static int in_spellings(const char *list, const char *word)
{
    size_t w = strlen(word);
    for (const char *k = list; k && *k;) {
        size_t n = strcspn(k, "|");
        if (n == w && strncmp(k, word, n) == 0)
            return 1;
        k += n + (k[n] == '|');
    }
    return 0;
}

/* WHEN_BLOCK: layer i's entry of the block-type list (an array of names,
 * or a pattern string of one character per layer). */
static int block_is(ckpt_view cfg, const char *keys, const char *spellings, long i)
{
    char key[64];
    const cJSON *v = block_list(cfg, keys, key);
    char one[2] = {0, 0};
    const char *got = NULL;
    if (cJSON_IsArray(v) && i < cJSON_GetArraySize(v)) {
        const cJSON *e = cJSON_GetArrayItem(v, (int)i);
        got = cJSON_IsString(e) ? e->valuestring : NULL;
    } else if (cJSON_IsString(v) && (size_t)i < strlen(v->valuestring)) {
        one[0] = v->valuestring[i];
        got = one;
    }
    return got && in_spellings(spellings, got);
}

static int cond_holds(const arch_cond *c, ckpt_view cfg, long i, long n_layers, int moe,
                      int (*has)(const char *, void *), void *ctx)
{
    switch (c->kind) {
    case WHEN_MOE: return moe;
    case WHEN_DENSE: return !moe;
    case WHEN_LAYER_TYPE: return layer_type_is(cfg, c->key, c->value, i);
    case WHEN_FLAG:
    case WHEN_NOT_FLAG: {
        int set = ckpt_view_get(cfg, c->key) || !c->value ? ckpt_view_set(cfg, c->key) : strcmp(c->value, "0") != 0;
        return c->kind == WHEN_FLAG ? set : !set;
    }
    /* No list (the key absent without a default, or not an array): neither holds. */
    case WHEN_LISTED: return ckpt_view_listed(cfg, c->key, c->value, i) == 1;
    case WHEN_NOT_LISTED: return ckpt_view_listed(cfg, c->key, c->value, i) == 0;
    case WHEN_TAIL:
    case WHEN_NOT_TAIL: {
        long n = ckpt_view_int(cfg, c->key, 0);
        int tail = n > 0 && i >= n_layers - n;
        return c->kind == WHEN_TAIL ? tail : !tail;
    }
    case WHEN_HAS: return has(c->key, ctx);
    case WHEN_NOT_HAS: return !has(c->key, ctx);
    case WHEN_EVERY:
    case WHEN_NOT_EVERY: {
        long n = ckpt_view_int(cfg, c->key, c->value ? strtol(c->value, NULL, 10) : 1);
        int every = n > 0 && (i + 1) % n == 0;
        return c->kind == WHEN_EVERY ? every : !every;
    }
    case WHEN_BLOCK: return block_is(cfg, c->key, c->value, i);
    default: return 1;
    }
}

int arch_when(const arch_cond *when, ckpt_view cfg, long i, long n_layers, int moe,
              int (*has)(const char *rel, void *ctx), void *ctx)
{
    for (int k = 0; k < ARCH_MAX_CONDS && when[k].kind != WHEN_END; k++)
        if (!cond_holds(&when[k], cfg, i, n_layers, moe, has, ctx))
            return 0;
    return 1;
}

long arch_expert_count(const arch_moe_rule *r, ckpt_view cfg, const char **key)
{
    *key = r->experts[0];
    /* A flag-gated MoE (Gemma 4 enable_moe_block) is dense when the flag is
     * off, whatever the expert key says (dense configs write null). */
    if (!r->experts[0] || (r->flag && !ckpt_view_set(cfg, r->flag)))
        return 0;
    long n = -1;
    for (int k = 0; k < 3 && r->experts[k]; k++) {
        long v = ckpt_view_int(cfg, r->experts[k], -1);
        if (v < 0)
            continue;
        if (n >= 0 && v != n)
            return -2;   /* num_experts and num_local_experts disagree */
        if (n < 0)
            *key = r->experts[k];
        n = v;
    }
    return n < 0 && r->optional ? 0 : n;
}

int arch_is_moe_layer(const arch_moe_rule *r, ckpt_view cfg, long i, long experts)
{
    if (experts <= 0 || (r->flag && !ckpt_view_set(cfg, r->flag)))
        return 0;
    if (r->type_list && cJSON_IsArray(ckpt_view_get(cfg, r->type_list)))
        return layer_type_is(cfg, r->type_list, "sparse", i);
    if (r->sparse_list) {
        const cJSON *list = ckpt_view_get(cfg, r->sparse_list);
        if (cJSON_IsArray(list))
            return in_int_list(list, i);
    }
    if (r->dense_list && in_int_list(ckpt_view_get(cfg, r->dense_list), i))
        return 0;
    if (r->first_dense && i < ckpt_view_int(cfg, r->first_dense, r->first_dense_default))
        return 0;
    /* Ernie4_5_MoeConfig: an end of -1 is the last layer; any other
     * negative end leaves no layer sparse (docs/architectures.md §ernie4_5_moe). */
    long last = r->last_sparse ? ckpt_view_int(cfg, r->last_sparse, -1) : -1;
    if (last != -1 && i > last)
        return 0;
    long step = r->step ? ckpt_view_int(cfg, r->step, 1) : 1;
    return step > 0 && (i + r->step_offset) % step == 0;
}
