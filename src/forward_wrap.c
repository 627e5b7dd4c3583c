/* forward_wrap.c — the text model inside a composite (wrapper) model_type,
 * and what the LLaVA-style VLM wrappers change around it (zoo issue 13,
 * docs/architectures.md §vlm): which family text_config holds, where the
 * tie flag is read, the wrapper's own lm_head (no final soft cap, no logit
 * scale), PaliGemma's bidirectional prompt with positions from 1, and the
 * layers a text-only sequence does not run (Mllama's cross-attention
 * layers). */
#include "forward_internal.h"

#include <stdio.h>
#include <string.h>

static const fwd_family *text_family(const char *type)
{
    const fwd_family *f = type && type[0] ? fwd_family_find(type) : NULL;
    return f && !f->wraps ? f : NULL;
}

fl_status fwd_wrap_inner(fwd_model *m, const fwd_family *w, const fwd_family **inner, fl_error *err)
{
    const ckpt_config *cfg = &m->ck->cfg;
    const fwd_wrap *q = w->wrap;
    if (!q || !q->any_text) {
        /* text_config names its family (mistral or ministral3 inside
         * mistral3), else the row says; a wrapper class that builds its own
         * text config (MllamaConfig) always the row's. */
        const fwd_family *f = !q && cfg->nested ? text_family(cfg->nested_model_type) : NULL;
        m->wrapper = q ? w : NULL;
        *inner = f ? f : fwd_family_find(w->wraps);
        return FL_OK;
    }
    m->wrapper = w;
    /* LlavaConfig and the others build the text model from text_config only
     * (AutoConfig of its model_type, or the class default). */
    if (!cfg->nested)
        return fl_fail(err, FL_EINPUT, "%s/config.json: model_type '%s' keeps its text model in \"text_config\", "
                       "which is missing", m->ck->dir, w->model_type);
    int named = cfg->nested_model_type[0] != 0;
    const char *type = named ? cfg->nested_model_type : q->class_text ? q->class_text : w->wraps;
    const fwd_family *f = text_family(type);
    if (!f)
        return fl_fail(err, FL_EINPUT, "%s/config.json: the text model of %s is '%s'%s: it has no reference "
                       "forward pass", m->ck->dir, w->model_type, type,
                       named ? "" : " (the config class default: text_config names none)");
    /* The prefix-LM mask is the shared attention's (fwd_sdpa); a family with
     * its own layer stack, MLA or linear attention would ignore it. */
    if (q->prefix_lm && (f->block || f->mla || f->linear_attn != LINATTN_NONE))
        return fl_fail(err, FL_EINPUT, "%s/config.json: %s attends bidirectionally over the prompt, which the "
                       "reference pass does not do for a %s text model", m->ck->dir, w->model_type, type);
    *inner = f;
    return FL_OK;
}

void fwd_wrap_apply(fwd_model *m)
{
    const fwd_wrap *q = m->wrapper ? m->wrapper->wrap : NULL;
    if (!q)
        return;
    /* LlavaForConditionalGeneration.forward and its kin: logits =
     * lm_head(hidden); the text model's ForCausalLM (Gemma 2's final soft
     * cap, Cohere's logit_scale, Granite's logits_scaling) never runs. */
    m->final_softcap = 0;
    m->logit_mult = 1.0;
    /* PaliGemma's create_causal_mask_mapping: a prompt without
     * token_type_ids is one bidirectional block; position_ids =
     * cache_position + 1 ("Paligemma positions are 1-indexed"). */
    if (q->prefix_lm) {
        m->bidir = 1;
        m->pos0 = 1;
    }
}

int fwd_tie(const fwd_model *m)
{
    const ckpt_config *cfg = &m->ck->cfg;
    const fwd_wrap *q = m->wrapper ? m->wrapper->wrap : NULL;
    /* As plan.c's tie_flag: a family's alias wins (Lfm2Config
     * tie_embedding, docs/architectures.md §lfm2). */
    if (m->fam->tie_alias && ckpt_view_get(m->cfg, m->fam->tie_alias))
        return ckpt_view_set(m->cfg, m->fam->tie_alias);
    /* The top level first (§vl-tie), unless it is false and the wrapper
     * class then takes text_config's (LlavaConfig, §vlm-tie). */
    if (cfg->tie_top > 0 || (cfg->tie_top == 0 && !(q && q->tie_or_text)))
        return cfg->tie_top;
    if (m->cfg.text != m->cfg.top && cfg->tie_nested >= 0)
        return cfg->tie_nested;
    return q && q->tie >= 0 ? q->tie : m->fam->tie_default;
}

int fwd_layer_skipped(fwd_model *m, long i)
{
    if (!m->fam->skip_key || ckpt_view_listed(m->cfg, m->fam->skip_key, m->fam->skip_default, i) != 1)
        return 0;
    m->skipped++;
    return 1;
}

void fwd_wrap_describe(const fwd_model *m, char *buf, size_t cap)
{
    int n = 0;
    if (m->wrapper)
        n = snprintf(buf, cap, ", the text model of %s%s", m->wrapper->model_type,
                     m->bidir ? " (bidirectional prompt, positions from 1)" : "");
    if (m->skipped && n >= 0 && (size_t)n < cap)
        snprintf(buf + n, cap - (size_t)n, ", %ld cross-attention layer%s skipped (text only)", m->skipped,
                 m->skipped == 1 ? "" : "s");
}
