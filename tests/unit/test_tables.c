/* test_tables.c — the fold table, the forward table and the README agree.
 *
 * The fold table (src/arch.c, rows and composite aliases) and the forward
 * pass's family table (src/forward_table.c, written separately on purpose)
 * must know the same model types; the README's "Supported model families"
 * table must list exactly those.  Plus the tables' own consistency: every
 * alias and wrapper names an existing row, every row has a norm class, and
 * every condition names what it needs. */
#include "flashify/arch.h"
#include "flashify/plan.h"

#include "../../src/forward_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

#define MAX_TYPES 256

typedef struct {
    char *v[MAX_TYPES];
    size_t n;
} names;

static void add(names *s, const char *t)
{
    if (s->n < MAX_TYPES)
        s->v[s->n++] = strdup(t);
}

static int cmp(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int has(const names *s, const char *t)
{
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->v[i], t) == 0)
            return 1;
    return 0;
}

/* Every name of a in b, reported by `what`. */
static void subset(const names *a, const names *b, const char *what)
{
    for (size_t i = 0; i < a->n; i++)
        CHECK(has(b, a->v[i]), "%s: '%s'", what, a->v[i]);
}

static void fold_types(names *s)
{
    for (size_t i = 0; arch_row(i); i++)
        add(s, arch_row(i)->model_type);
    for (size_t i = 0; arch_alias_at(i); i++)
        add(s, arch_alias_at(i)->model_type);
}

static void forward_types(names *s)
{
    for (size_t i = 0; fwd_family_at(i); i++)
        add(s, fwd_family_at(i)->model_type);
}

/* The first column of the README's table under the heading `section`,
 * names split at ", ". */
static int readme_types(const char *root, const char *section, names *s)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/README.md", root);
    FILE *f = fopen(path, "r");
    CHECK(f != NULL, "cannot open %s", path);
    if (!f)
        return 0;
    char line[4096];
    int in_section = 0, rows = 0;
    while (fgets(line, sizeof line, f)) {
        if (!strncmp(line, "## ", 3) || !strncmp(line, "### ", 4)) {
            in_section = strstr(line, section) != NULL;
            continue;
        }
        if (!in_section || line[0] != '|' || strstr(line, "model_type") || strstr(line, "|---"))
            continue;
        char *end = strchr(line + 1, '|');
        if (!end)
            continue;
        *end = 0;
        rows++;
        for (char *tok = strtok(line + 1, ","); tok; tok = strtok(NULL, ",")) {
            while (*tok == ' ' || *tok == '`')
                tok++;
            size_t n = strlen(tok);
            while (n && (tok[n - 1] == ' ' || tok[n - 1] == '`'))
                tok[--n] = 0;
            if (n)
                add(s, tok);
        }
    }
    fclose(f);
    return rows;
}

static void test_types_agree(void)
{
    names fold = {0}, fwd = {0}, readme = {0};
    fold_types(&fold);
    forward_types(&fwd);
    subset(&fold, &fwd, "in the fold table but without a forward pass");
    subset(&fwd, &fold, "in the forward table but not in the fold table");
    const char *root = getenv("FLASHIFY_ROOT");
    if (!root)
        root = "..";
    int rows = readme_types(root, "Supported model families", &readme);
    CHECK(rows > 0, "no rows found in README.md's \"Supported model families\" table");
    subset(&fold, &readme, "supported but missing from README.md's family table");
    subset(&readme, &fold, "in README.md's family table but not supported");
    qsort(fold.v, fold.n, sizeof fold.v[0], cmp);
    for (size_t i = 1; i < fold.n; i++)
        CHECK(strcmp(fold.v[i - 1], fold.v[i]) != 0, "model_type '%s' twice in the fold table", fold.v[i]);
    for (size_t i = 0; i < fold.n; i++)
        free(fold.v[i]);
    for (size_t i = 0; i < fwd.n; i++)
        free(fwd.v[i]);
    for (size_t i = 0; i < readme.n; i++)
        free(readme.v[i]);
}

static void check_conds(const arch_cond *w, const char *where)
{
    for (int k = 0; k < ARCH_MAX_CONDS && w[k].kind != WHEN_END; k++) {
        int needs_key = w[k].kind != WHEN_MOE && w[k].kind != WHEN_DENSE;
        CHECK(!needs_key || w[k].key, "%s: condition %d names no key", where, k);
        CHECK(w[k].kind != WHEN_LAYER_TYPE || w[k].value, "%s: layer-type condition without a value", where);
    }
}

static void test_rows_consistent(void)
{
    for (size_t i = 0; arch_row(i); i++) {
        const arch_info *a = arch_row(i);
        CHECK(a->norm != NULL, "%s has no norm class", a->model_type);
        int moe_conds = 0;
        for (int f = 0; f < ARCH_MAX_FOLDS && a->folds[f].norm; f++) {
            check_conds(a->folds[f].when, a->model_type);
            CHECK(a->folds[f].consumers[0].name, "%s: %s has no consumers", a->model_type, a->folds[f].norm);
            for (int k = 0; k < ARCH_MAX_CONDS; k++)
                moe_conds += a->folds[f].when[k].kind == WHEN_MOE || a->folds[f].when[k].kind == WHEN_DENSE;
        }
        for (int k = 0; k < ARCH_MAX_KEEPS && a->keeps[k].norm; k++) {
            check_conds(a->keeps[k].when, a->model_type);
            CHECK(a->keeps[k].reason && a->keeps[k].reason[0], "%s: kept %s without a reason", a->model_type,
                  a->keeps[k].norm);
        }
        CHECK(!moe_conds || a->moe.experts[0], "%s: MoE conditions without an expert count", a->model_type);
    }
    for (size_t i = 0; arch_alias_at(i); i++)
        CHECK(arch_find(arch_alias_at(i)->text_type), "alias %s names no row", arch_alias_at(i)->model_type);
    for (size_t i = 0; fwd_family_at(i); i++) {
        const fwd_family *f = fwd_family_at(i);
        if (f->wraps) {
            const fwd_family *w = fwd_family_find(f->wraps);
            CHECK(w && !w->wraps, "forward wrapper %s names no family", f->model_type);
            continue;
        }
        /* No act_key: the modeling code fixes the activation (LFM2). */
        CHECK(f->eps_key && f->act_default, "forward family %s lacks eps or activation defaults", f->model_type);
        CHECK(!f->moe[0] || (f->moe[0]->router && f->moe[0]->experts), "forward family %s: MoE names",
              f->model_type);
    }
    /* The RoPE types the forward pass knows, by name. */
    const char *ropes[] = {"default", "linear", "llama3", "dynamic", "yarn", "longrope"};
    for (size_t i = 0; i < sizeof ropes / sizeof ropes[0]; i++)
        CHECK(fwd_rope_find(ropes[i]) != NULL, "rope type %s missing", ropes[i]);
    CHECK(fwd_rope_find("su") == NULL, "unknown rope types are not accepted");
}

/* The refused model types (arch_refused) are exactly the README's
 * "Refused model families", each with a one-line reason, and none is also
 * a row or an alias. */
static void test_refusals(void)
{
    names refused = {0}, readme = {0};
    for (size_t i = 0; arch_refusal_at(i); i++) {
        const arch_refusal *r = arch_refusal_at(i);
        add(&refused, r->model_type);
        CHECK(r->reason && r->reason[0] && !strchr(r->reason, '\n'), "%s: no one-line reason", r->model_type);
        CHECK(!arch_find(r->model_type) && arch_refused(r->model_type) == r, "%s is refused and supported",
              r->model_type);
        for (size_t k = 0; arch_alias_at(k); k++)
            CHECK(strcmp(arch_alias_at(k)->model_type, r->model_type) != 0, "%s is refused and an alias",
                  r->model_type);
    }
    const char *root = getenv("FLASHIFY_ROOT");
    CHECK(readme_types(root ? root : "..", "Refused model families", &readme) > 0,
          "no rows in README.md's \"Refused model families\" table");
    subset(&refused, &readme, "refused but missing from README.md's refused table");
    subset(&readme, &refused, "in README.md's refused table but not refused");
    CHECK(arch_refused("llama") == NULL, "llama refused");
    for (size_t i = 0; i < refused.n; i++)
        free(refused.v[i]);
    for (size_t i = 0; i < readme.n; i++)
        free(readme.v[i]);
}

/* The README's --plan example is a valid plan file. */
static void test_readme_plan_example(void)
{
    const char *root = getenv("FLASHIFY_ROOT");
    char path[4096];
    snprintf(path, sizeof path, "%s/README.md", root ? root : "..");
    FILE *f = fopen(path, "r");
    if (!f)
        return; /* reported by test_types_agree */
    static char text[1 << 16];
    size_t n = 0;
    char line[4096];
    int section = 0, in_block = 0, done = 0;
    while (!done && fgets(line, sizeof line, f)) {
        if (!strncmp(line, "### ", 4) || !strncmp(line, "## ", 3))
            section = strstr(line, "Custom architectures") != NULL;
        else if (section && !in_block && !strncmp(line, "```json", 7))
            in_block = 1;
        else if (in_block && !strncmp(line, "```", 3))
            done = 1;
        else if (in_block && n + strlen(line) < sizeof text) {
            memcpy(text + n, line, strlen(line));
            n += strlen(line);
        }
    }
    fclose(f);
    CHECK(done && n > 0, "no ```json block in README.md's Custom architectures section");
    arch_custom *c = NULL;
    fl_error err = {0};
    fl_status s = arch_custom_parse("README.md", text, n, &c, &err);
    CHECK(s == FL_OK, "README.md's plan example: %s", err.msg);
    if (s == FL_OK) {
        const arch_info *a = arch_custom_info(c);
        CHECK(a->folds[3].consumers[1].input == IN_LAST && a->folds[3].cls &&
              a->folds[3].cls->gain == GAIN_ONE_PLUS_W, "the example's fused consumer and gain");
        CHECK(a->folds[0].when[0].kind == WHEN_LAYER_TYPE, "the example's layer_type condition");
    }
    arch_custom_free(c);
}

int main(void)
{
    test_types_agree();
    test_readme_plan_example();
    test_rows_consistent();
    test_refusals();
    if (failures) {
        fprintf(stderr, "test_tables: %d failure(s)\n", failures);
        return 1;
    }
    printf("test_tables: ok\n");
    return 0;
}
