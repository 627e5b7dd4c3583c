/* arch_resolve.c — from a config's model_type to its row of the
 * architecture table (arch.c): refusals, aliases, the wrappers whose text
 * model is whatever text_config names, and --plan architectures
 * (docs/architectures.md §composite, §vlm-text). */
#include "flashify/arch.h"

#include <stdio.h>
#include <string.h>

/* Appends ", item" (or the first item) to list[cap] at n; a full list
 * stays as it was. */
static size_t list_add(char *list, size_t cap, size_t n, const char *item)
{
    int w = snprintf(list + n, cap - n, "%s%s", n ? ", " : "", item);
    if (w < 0 || (size_t)w >= cap - n) {
        list[n] = 0;
        return n;
    }
    return n + (size_t)w;
}

const char *arch_supported_list(void)
{
    static char list[2048];
    if (list[0])
        return list;
    size_t n = 0, i = 0;
    const arch_info *a;
    const arch_alias *al;
    for (; (a = arch_row(i)) != NULL; i++)
        n = list_add(list, sizeof list, n, a->model_type);
    for (i = 0; (al = arch_alias_at(i)) != NULL; i++)
        n = list_add(list, sizeof list, n, al->model_type);
    return list;
}

/* The row of a text model type: a row, or a text alias (qwen2_vl_text). */
static const arch_info *text_row(const char *type)
{
    const arch_info *a = arch_find(type);
    const arch_alias *al = a ? NULL : arch_alias_find(type);
    return a ? a : al && !al->nested ? arch_find(al->text_type) : NULL;
}

/* ALIAS_TEXT_ANY (docs/architectures.md §vlm-text): the config class builds
 * the text model text_config names -- its model_type, or the class default
 * -- and only from text_config. */
static fl_status any_text(const ckpt_config *cfg, const char *where, const arch_alias *al, arch_resolved *out,
                          fl_error *err)
{
    if (!cfg->nested)
        return fl_fail(err, FL_EINPUT, "%s/config.json: model_type '%s' keeps its text model in \"text_config\", "
                       "which is missing", where, al->model_type);
    int named = cfg->nested_model_type[0] != 0;
    const char *type = named ? cfg->nested_model_type : al->class_text ? al->class_text : al->text_type;
    if (!(out->arch = text_row(type)))
        return fl_fail(err, FL_EINPUT, "%s/config.json: text_config.model_type %s '%s', whose text model is not "
                       "supported inside %s (supported: %s)", where, named ? "is" : "is absent: the config class "
                       "defaults to", type, al->model_type, arch_supported_list());
    out->tie_default = al->tie_default >= 0 ? al->tie_default : out->arch->tie_default;
    return FL_OK;
}

fl_status arch_resolve(const ckpt_config *cfg, const char *where, const arch_info *custom,
                       int custom_nested, arch_resolved *out, fl_error *err)
{
    memset(out, 0, sizeof *out);
    const arch_refusal *no = arch_refused(cfg->model_type);
    if (no)
        return fl_fail(err, FL_EINPUT, "%s/config.json: model_type '%s' is refused: %s", where, no->model_type,
                       no->reason);
    const arch_alias *al = arch_alias_find(cfg->model_type);
    if (custom) {
        /* A plan written for the type inside text_config reads that level. */
        int nested = custom_nested || (cfg->nested && strcmp(custom->model_type, cfg->nested_model_type) == 0);
        out->cfg = ckpt_config_view(cfg, nested);
        out->arch = custom;
        out->tie_default = custom->tie_default;
        return FL_OK;
    }
    int nested = al && al->nested && cfg->nested;
    out->cfg = ckpt_config_view(cfg, nested);
    if (al) {
        out->wrapper = al->model_type;
        out->tie_or_text = al->tie_or_text;
        if (al->text_rule == ALIAS_TEXT_ANY)
            return any_text(cfg, where, al, out, err);
        /* The text config may name its own type (mistral or ministral3
         * inside mistral3); otherwise the alias says which row. */
        if (al->text_rule == ALIAS_TEXT_NAMED && nested && cfg->nested_model_type[0])
            out->arch = arch_find(cfg->nested_model_type);
        if (!out->arch)
            out->arch = arch_find(al->text_type);
    } else {
        out->arch = arch_find(cfg->model_type);
    }
    if (!out->arch)
        return fl_fail(err, FL_EINPUT,
                       "%s/config.json: model_type '%s' is not supported (supported: %s); "
                       "describe its norms with --plan FILE",
                       where, cfg->model_type, arch_supported_list());
    out->tie_default = al && al->tie_default >= 0 ? al->tie_default : out->arch->tie_default;
    return FL_OK;
}
