/* card.c — the model card (README.md) of the output (card.h).
 *
 * In the style of a Hugging Face card: YAML front matter with base_model,
 * what the source card says a derived model inherits, and the tags
 * FlashNorm checkpoints carry on the Hub; then what was folded, what was
 * kept and why, and how to load the result.  Names come from strangers
 * (directory names, tensor names, the source card), so each is escaped for
 * where it goes: a YAML scalar, a Markdown code span, a heading. */
#include "flashify/card.h"
#include "flashify/util.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_INHERITED_ITEMS 64
#define MAX_INHERITED_VALUE 512

/* ---------------------------------------------------------------------------
 * escaping */

/* Length of the valid UTF-8 character at s (1..4), or 0. */
static size_t utf8_char(const char *s)
{
    unsigned char c = (unsigned char)*s;
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    for (size_t i = 1; i < n; i++)
        if (!s[i])
            return 0;
    return n && fl_utf8_check(s, n) == n ? n : 0;
}

static int plain_yaml(const char *s)
{
    static const char *const words[] = {"true", "false", "yes", "no", "on", "off", "null", "y", "n", NULL};
    if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z')))
        return 0;
    for (const char *p = s; *p; p++)
        if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._/+-", *p))
            return 0;
    for (size_t i = 0; words[i]; i++)
        if (strcasecmp(s, words[i]) == 0)
            return 0;
    return 1;
}

/* A YAML scalar: plain when it cannot mean anything but this string, else
 * double-quoted with every byte that is not printable text escaped as
 * \uXXXX (YAML 1.2 §5.7; also a valid JSON string); bytes that are not
 * UTF-8 become U+FFFD. */
static void yaml_scalar(strbuf *b, const char *s)
{
    if (plain_yaml(s)) {
        sb_str(b, s);
        return;
    }
    sb_str(b, "\"");
    for (const char *p = s; *p;) {
        unsigned char c = (unsigned char)*p;
        size_t n = utf8_char(p);
        unsigned cp = n == 2 ? ((c & 0x1Fu) << 6) | ((unsigned char)p[1] & 0x3Fu) : 0;
        int line_sep = n == 3 && c == 0xE2 && (unsigned char)p[1] == 0x80 &&
                       ((unsigned char)p[2] == 0xA8 || (unsigned char)p[2] == 0xA9);
        int bom = n == 3 && c == 0xEF && (unsigned char)p[1] == 0xBB && (unsigned char)p[2] == 0xBF;
        if (c == '"' || c == '\\')
            sb_printf(b, "\\%c", c);
        else if (n == 1 && (c < 0x20 || c == 0x7F))
            sb_printf(b, "\\u%04x", c);
        else if (!n)
            sb_str(b, "\\ufffd");
        else if ((n == 2 && cp >= 0x80 && cp <= 0x9F) || line_sep || bom)
            sb_printf(b, "\\u%04x", n == 2 ? cp : line_sep ? 0x2028u + ((unsigned char)p[2] - 0xA8u) : 0xFEFFu);
        else
            sb_put(b, p, n);
        p += n ? n : 1;
    }
    sb_str(b, "\"");
}

enum { MD_LINE, MD_CELL, MD_CODE };

/* Text for a Markdown line, table cell or code span: control characters
 * become spaces (no new line, no new row); in a cell '|' and in a code span
 * also '`' become '\''. */
static void md_text(strbuf *b, const char *s, int where)
{
    for (const char *p = s; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c < 0x20 || c == 0x7F)
            sb_put(b, " ", 1);
        else if ((where != MD_LINE && c == '|') || (where == MD_CODE && c == '`'))
            sb_put(b, "'", 1);
        else
            sb_put(b, p, 1);
    }
}

static void md_code(strbuf *b, const char *s)
{
    sb_str(b, "`");
    md_text(b, s, MD_CODE);
    sb_str(b, "`");
}

/* ---------------------------------------------------------------------------
 * metadata inherited from the source card */

/* One scalar of the source card's YAML, unquoted into out; 0 when it is
 * not a plain or simply quoted scalar (flow mappings, anchors, tags, block
 * scalars, escapes are not read: the key is left out). */
static int source_scalar(const char *s, size_t n, char *out, size_t cap)
{
    while (n && (*s == ' ' || *s == '\t'))
        s++, n--;
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r'))
        n--;
    if (!n || n >= cap || strchr("{[&*!|>%@`", *s) || memchr(s, '#', n) || memchr(s, '\\', n))
        return 0;
    if (*s == '"' || *s == '\'') {
        if (n < 2 || s[n - 1] != *s || memchr(s + 1, *s, n - 2))
            return 0;
        s++, n -= 2;
    }
    memcpy(out, s, n);
    out[n] = '\0';
    return n > 0;
}

/* Emits `key` from the source card's front matter `fm`: "key: scalar",
 * "key: [a, b]" or "key:" followed by "- item" lines. */
static void inherit_key(strbuf *b, const char *fm, const char *key)
{
    size_t kl = strlen(key);
    const char *line = fm;
    while (line && !(strncmp(line, key, kl) == 0 && line[kl] == ':'))
        line = (line = strchr(line, '\n')) ? line + 1 : NULL;
    if (!line)
        return;
    const char *v = line + kl + 1, *eol = strchr(v, '\n');
    size_t vn = eol ? (size_t)(eol - v) : strlen(v);
    char item[MAX_INHERITED_VALUE];
    while (vn && (*v == ' ' || *v == '\t'))
        v++, vn--;
    strbuf list = {0};
    size_t n = 0;
    if (vn && *v == '[' && v[vn - 1] == ']') {
        for (const char *p = v + 1, *end = v + vn - 1; p < end && n < MAX_INHERITED_ITEMS; n++) {
            const char *comma = memchr(p, ',', (size_t)(end - p));
            const char *stop = comma ? comma : end;
            if (!source_scalar(p, (size_t)(stop - p), item, sizeof item))
                goto out;
            sb_str(&list, "\n- ");
            yaml_scalar(&list, item);
            p = stop + 1;
        }
    } else if (vn) {
        if (!source_scalar(v, vn, item, sizeof item))
            goto out;
        sb_str(b, key);
        sb_str(b, ": ");
        yaml_scalar(b, item);
        sb_str(b, "\n");
        goto out;
    }
    for (const char *p = eol ? eol + 1 : NULL; !vn && p && n < MAX_INHERITED_ITEMS; n++) {
        const char *q = p, *e = strchr(p, '\n');
        while (*q == ' ')
            q++;
        if (q[0] != '-' || q[1] != ' ' || !source_scalar(q + 2, (size_t)((e ? e : q + strlen(q)) - q - 2), item,
                                                         sizeof item))
            break;
        sb_str(&list, "\n- ");
        yaml_scalar(&list, item);
        p = e ? e + 1 : NULL;
    }
    if (n && list.p && !list.oom)
        sb_printf(b, "%s:%s\n", key, list.p);
out:
    sb_free(&list);
}

/* The source card's front matter (between the leading "---" line and the
 * next), copied into a NUL-terminated buffer; NULL when it has none. */
static char *front_matter(const char *card)
{
    if (!card || strncmp(card, "---\n", 4) != 0)
        return NULL;
    const char *end = strstr(card + 3, "\n---");
    return end ? fl_asprintf("%.*s\n", (int)(end - card - 3), card + 4) : NULL;
}

/* ---------------------------------------------------------------------------
 * the card */

static void card_front(strbuf *b, const fold_plan *plan, const card_source *src)
{
    static const char *const inherited[] = {"license", "license_name", "license_link", "language",
                                            "pipeline_tag", "library_name", NULL};
    sb_str(b, "---\nbase_model: ");
    yaml_scalar(b, src->base_model);
    sb_str(b, "\n");
    char *fm = front_matter(src->source_card);
    for (size_t i = 0; inherited[i]; i++) {
        size_t before = b->n;
        if (fm)
            inherit_key(b, fm, inherited[i]);
        if (b->n == before && i == 0 && src->license && *src->license) {
            sb_str(b, "license: ");
            yaml_scalar(b, src->license);
            sb_str(b, "\n");
        }
    }
    free(fm);
    sb_str(b, "tags:\n- flashnorm\n");
    if (plan->marker)
        sb_str(b, "- weightless-rmsnorm\n");
    sb_str(b, "---\n\n");
}

static void card_intro(strbuf *b, const fold_plan *plan, const card_source *src)
{
    sb_str(b, "# ");
    md_text(b, src->title, MD_LINE);
    sb_str(b, " (FlashNorm)\n\nThis is ");
    md_code(b, src->base_model);
    sb_printf(b,
              " with its RMSNorm weights folded into the linear layers that read them "
              "(FlashNorm, arXiv 2407.09577): `W*[o,i] = W[o,i] * g[i]`, computed exactly and rounded "
              "once to nearest-even in each tensor's dtype. The model computes what the source "
              "computes; the folded norms %s.\n\n",
              plan->keep_norms ? "are kept as identity weights (`--keep-norms`)"
                               : "run without a weight and their tensors are removed");
    if (src->on_hub) {
        sb_str(b, "The source model and its card: [");
        md_text(b, src->base_model, MD_CODE);
        sb_str(b, "](https://huggingface.co/");
        md_text(b, src->base_model, MD_CODE);
        sb_str(b, "); its intended use, limitations and license apply to this conversion.\n\n");
    } else if (src->source_card) {
        sb_str(b, "The source's model card (README.md of ");
        md_code(b, src->base_model);
        sb_str(b, ") describes its intended use, limitations and license, which apply to this conversion.\n\n");
    }
    sb_printf(b, "Converted by flashify %s (model_type ", FLASHIFY_VERSION);
    md_code(b, plan->arch->model_type);
    sb_str(b, ").\n\n");
}

/* Rows whose pattern (and consumer count) an earlier row already showed
 * are left out: one row per layer pattern. */
static void card_folded(strbuf *b, const fold_plan *plan)
{
    sb_str(b, "## Folded norms\n\n| norm | folded into | gain |\n|---|---|---|\n");
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
        sb_str(b, "| ");
        md_code(b, pat);
        sb_str(b, " | ");
        for (size_t c = 0; c < g->n_consumers && c < 6; c++) {
            char cp[512];
            plan_name_pattern(g->consumers[c], cp, sizeof cp);
            if (c)
                sb_str(b, ", ");
            md_code(b, cp);
        }
        if (g->n_consumers > 6)
            sb_printf(b, " and %zu more", g->n_consumers - 6);
        sb_printf(b, " | %s |\n", g->gain == GAIN_ONE_PLUS_W ? "1 + w" : "w");
    }
}

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
        if (seen)
            continue;
        sb_str(b, "| ");
        md_code(b, pat);
        sb_str(b, " | ");
        md_text(b, plan->kept[i].reason, MD_CELL);
        sb_str(b, " |\n");
    }
}

static void card_kept(strbuf *b, const fold_plan *plan)
{
    if (plan->untie) {
        sb_str(b, "\nThe source ties `lm_head` to the embedding. The final norm was folded into a new ");
        md_code(b, plan->head_name);
        sb_printf(b, " (the embedding times the norm weight), so `tie_word_embeddings` is now "
                     "`false` and the checkpoint is %.1f MB larger.\n",
                  (double)plan->added_bytes / 1e6);
    }
    if (plan->n_kept > (size_t)plan->n_quantized_kept) {
        sb_str(b, "\n## Norms that keep their weights\n\n| norm | why |\n|---|---|\n");
        kept_rows(b, plan, 0);
    }
    if (plan->n_quantized_kept) {
        sb_str(b, "\n## Norms kept because their consumers are quantized (`--partial`)\n\n"
                  "These norms feed quantized layers, where a per-channel gain cannot be folded exactly; "
                  "they keep their weights, and the checkpoint carries no FlashNorm marker.\n\n"
                  "| norm | why |\n|---|---|\n");
        kept_rows(b, plan, 1);
    }
}

static void card_loading(strbuf *b, const fold_plan *plan)
{
    sb_str(b, "\n## How to load\n\n");
    if (plan->marker)
        sb_str(b, "`config.json` carries `\"flashnorm_folded\": true` and `\"flash_norm\": true`. Loaders "
                  "with FlashNorm support (transformers and vLLM FlashNorm PRs, nano-vllm) build the "
                  "folded norms without weights.\n\n");
    else
        sb_str(b, "`config.json` has no FlashNorm marker: some norms of this model keep their weights "
                  "(see above), and loaders keyed on the marker would drop them.\n\n");
    sb_str(b, "With stock transformers, `AutoModelForCausalLM.from_pretrained(path)` loads it: missing "
              "norm weights are initialised to the identity on current releases.");
    if (plan->arch->warning) {
        sb_str(b, " **Note:** ");
        md_text(b, plan->arch->warning, MD_LINE);
        sb_str(b, ".");
    }
    sb_str(b, " For loaders that require every tensor, convert with `--keep-norms`, which writes the "
              "identity values explicitly.\n");
}

fl_status model_card(const fold_plan *plan, const card_source *src, char **text, fl_error *err)
{
    strbuf b = {0};
    card_front(&b, plan, src);
    card_intro(&b, plan, src);
    card_folded(&b, plan);
    card_kept(&b, plan);
    card_loading(&b, plan);
    if (!(*text = sb_take(&b)))
        return fl_fail(err, FL_EIO, "out of memory");
    return FL_OK;
}

int card_repo_of_snapshot(const char *dir, char *out, size_t cap)
{
    char real[PATH_MAX];
    if (!realpath(dir, real))
        return 0;
    char *commit = strrchr(real, '/');
    if (!commit || commit == real || !commit[1])
        return 0;
    *commit = '\0';
    char *snap = strrchr(real, '/');
    if (!snap || strcmp(snap, "/snapshots") != 0 || snap == real)
        return 0;
    *snap = '\0';
    const char *folder = strrchr(real, '/');
    folder = folder ? folder + 1 : real;
    if (strncmp(folder, "models--", 8) != 0 || !folder[8])
        return 0;
    const char *name = folder + 8, *sep = strstr(name, "--");
    if (sep && (sep == name || !sep[2] || strstr(sep + 2, "--")))
        return 0;
    int n = sep ? snprintf(out, cap, "%.*s/%s", (int)(sep - name), name, sep + 2) : snprintf(out, cap, "%s", name);
    return n > 0 && (size_t)n < cap;
}
