/* card.c — the model card (README.md) of the output (card.h).
 *
 * In the style of a Hugging Face card: YAML front matter with base_model
 * and the tags FlashNorm checkpoints carry on the Hub, then what was
 * folded, what was kept and why, and how to load the result. */
#include "flashify/card.h"
#include "flashify/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One table row per layer pattern of the kept norms (quantized or not). */
static void kept_rows(strbuf *b, const fold_plan *plan, int quantized)
{
    for (size_t i = 0; i < plan->n_kept; i++) {
        char pat[512], earlier[512];
        if (plan->kept[i].quantized != quantized)
            continue;
        plan_name_pattern(plan->kept[i].name, pat, sizeof pat);
        int seen = 0;
        for (size_t j = 0; j < i && !seen; j++) {
            plan_name_pattern(plan->kept[j].name, earlier, sizeof earlier);
            seen = plan->kept[j].quantized == quantized && strcmp(earlier, pat) == 0;
        }
        if (!seen)
            sb_printf(b, "| `%s` | %s |\n", pat, plan->kept[i].reason);
    }
}

fl_status model_card(const fold_plan *plan, const char *base, const char *title, char **text,
                     fl_error *err)
{
    strbuf b = {0};
    sb_str(&b, "---\nbase_model: ");
    sb_str(&b, base);
    sb_str(&b, "\ntags:\n- flashnorm\n");
    if (plan->marker)
        sb_str(&b, "- weightless-rmsnorm\n");
    sb_str(&b, "---\n\n");
    sb_printf(&b, "# %s (FlashNorm)\n\n", title);
    sb_printf(&b,
              "This is `%s` with its RMSNorm weights folded into the linear layers that read them "
              "(FlashNorm, arXiv 2407.09577): `W*[o,i] = W[o,i] * g[i]`, computed exactly and rounded "
              "once to nearest-even in each tensor's dtype. The model computes what the source "
              "computes; the folded norms %s.\n\n",
              base, plan->keep_norms ? "are kept as identity weights (`--keep-norms`)"
                                     : "run without a weight and their tensors are removed");
    sb_printf(&b, "Converted by flashify %s (model_type `%s`).\n\n", FLASHIFY_VERSION, plan->arch->model_type);
    sb_str(&b, "## Folded norms\n\n| norm | folded into | gain |\n|---|---|---|\n");
    for (size_t i = 0; i < plan->n_groups; i++) {
        const fold_group *g = &plan->groups[i];
        char pat[512], earlier[512];
        plan_name_pattern(g->norm, pat, sizeof pat);
        int seen = 0;
        for (size_t j = 0; j < i && !seen; j++) {
            plan_name_pattern(plan->groups[j].norm, earlier, sizeof earlier);
            seen = strcmp(earlier, pat) == 0 && plan->groups[j].n_consumers == g->n_consumers;
        }
        if (seen)
            continue;
        sb_printf(&b, "| `%s` | ", pat);
        for (size_t c = 0; c < g->n_consumers && c < 6; c++) {
            char cp[512];
            plan_name_pattern(g->consumers[c], cp, sizeof cp);
            sb_printf(&b, "%s`%s`", c ? ", " : "", cp);
        }
        if (g->n_consumers > 6)
            sb_printf(&b, " and %zu more", g->n_consumers - 6);
        sb_printf(&b, " | %s |\n", g->gain == GAIN_ONE_PLUS_W ? "1 + w" : "w");
    }
    if (plan->untie)
        sb_printf(&b, "\nThe source ties `lm_head` to the embedding. The final norm was folded into a new "
                      "`%s` (the embedding times the norm weight), so `tie_word_embeddings` is now "
                      "`false` and the checkpoint is %.1f MB larger.\n",
                  plan->head_name, (double)plan->added_bytes / 1e6);
    if (plan->n_kept > (size_t)plan->n_quantized_kept) {
        sb_str(&b, "\n## Norms that keep their weights\n\n| norm | why |\n|---|---|\n");
        kept_rows(&b, plan, 0);
    }
    if (plan->n_quantized_kept) {
        sb_str(&b, "\n## Norms kept because their consumers are quantized (`--partial`)\n\n"
                   "These norms feed quantized layers, where a per-channel gain cannot be folded exactly; "
                   "they keep their weights, and the checkpoint carries no FlashNorm marker.\n\n"
                   "| norm | why |\n|---|---|\n");
        kept_rows(&b, plan, 1);
    }
    sb_str(&b, "\n## How to load\n\n");
    if (plan->marker)
        sb_str(&b, "`config.json` carries `\"flashnorm_folded\": true` and `\"flash_norm\": true`. Loaders "
                   "with FlashNorm support (transformers and vLLM FlashNorm PRs, nano-vllm) build the "
                   "folded norms without weights.\n\n");
    else
        sb_str(&b, "`config.json` has no FlashNorm marker: some norms of this model keep their weights "
                   "(see above), and loaders keyed on the marker would drop them.\n\n");
    sb_str(&b, "With stock transformers, `AutoModelForCausalLM.from_pretrained(path)` loads it: missing "
               "norm weights are initialised to the identity on current releases.");
    if (plan->arch->warning)
        sb_printf(&b, " **Note:** %s.", plan->arch->warning);
    sb_str(&b, " For loaders that require every tensor, convert with `--keep-norms`, which writes the "
               "identity values explicitly.\n");
    if (b.oom) {
        free(b.p);
        return fl_fail(err, FL_EIO, "out of memory");
    }
    *text = b.p;
    return FL_OK;
}
