/* plan_out.c — the output tensors of a decided plan (plan.h, plan_internal.h).
 *
 * Every source tensor becomes a copy, a fold (with its group and input
 * axis), an identity norm (--keep-norms) or nothing (a dropped norm, an
 * alias kept in __metadata__); a tied head is materialised from the
 * embedding.  Ordered by shard then name, indexed by name. */
#include "plan_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------------------
 * the output tensors */

typedef struct {
    const char *name;
    size_t gi;               /* index into groups */
    int axis;
} name_ref;

static int cmp_ref(const void *a, const void *b)
{
    return strcmp(((const name_ref *)a)->name, ((const name_ref *)b)->name);
}

static int cmp_strp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int cmp_out(const void *a, const void *b)
{
    const out_tensor *x = a, *y = b;
    if (x->shard != y->shard)
        return x->shard < y->shard ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* qsort has no context argument: the plan being sorted, per thread. */
static _Thread_local const fold_plan *sorting_plan;

static int cmp_by_name(const void *a, const void *b)
{
    return strcmp(sorting_plan->out[*(const size_t *)a].name, sorting_plan->out[*(const size_t *)b].name);
}

/* Sorted references to every consumer and every dropped norm; refuses a
 * tensor folded by two norms and a norm in two groups. */
static fl_status index_groups(fold_plan *p, name_ref **cons, size_t *n_cons, name_ref **norms, fl_error *err)
{
    size_t n = 0;
    for (size_t i = 0; i < p->n_groups; i++)
        n += p->groups[i].n_consumers;
    *cons = calloc(n ? n : 1, sizeof **cons);
    *norms = calloc(p->n_groups ? p->n_groups : 1, sizeof **norms);
    p->dropped = calloc(p->n_groups ? p->n_groups : 1, sizeof *p->dropped);
    if (!*cons || !*norms || !p->dropped)
        return plan_oom(err);
    size_t k = 0;
    for (size_t i = 0; i < p->n_groups; i++) {
        (*norms)[i] = (name_ref){p->groups[i].norm, i, 0};
        p->dropped[p->n_dropped++] = p->groups[i].norm;
        for (size_t j = 0; j < p->groups[i].n_consumers; j++)
            (*cons)[k++] = (name_ref){p->groups[i].consumers[j], i, p->groups[i].axes[j]};
    }
    *n_cons = n;
    qsort(*cons, n, sizeof **cons, cmp_ref);
    qsort(*norms, p->n_groups, sizeof **norms, cmp_ref);
    qsort(p->dropped, p->n_dropped, sizeof *p->dropped, cmp_strp);
    for (size_t i = 1; i < n; i++)
        if (strcmp((*cons)[i - 1].name, (*cons)[i].name) == 0)
            return fl_fail(err, FL_EINPUT, "plan error: tensor '%s' would be folded by two norms ('%s' and '%s')",
                           (*cons)[i].name, p->groups[(*cons)[i - 1].gi].norm, p->groups[(*cons)[i].gi].norm);
    for (size_t i = 1; i < p->n_groups; i++)
        if (strcmp((*norms)[i - 1].name, (*norms)[i].name) == 0)
            return fl_fail(err, FL_EINPUT, "plan error: norm '%s' appears in two fold groups", (*norms)[i].name);
    return FL_OK;
}

static fl_status push_out(fold_plan *p, size_t *cap, out_tensor o, fl_error *err)
{
    out_tensor *outs = plan_grow(p->out, cap, p->n_out, sizeof *outs);
    if (!outs)
        return plan_oom(err);
    p->out = outs;
    p->out[p->n_out++] = o;
    return FL_OK;
}

/* What becomes of source tensor t: skipped (*keep = 0), or its out_tensor. */
static out_tensor out_of(const fold_plan *p, const ckpt_tensor *t, const ckpt_tensor *embed,
                         const name_ref *cons, size_t n_cons, const name_ref *norms, int *keep)
{
    out_tensor o = {.name = t->name, .src = t, .op = OUT_COPY, .axis = 1, .shard = t->shard};
    int is_head = p->untie && strcmp(t->name, p->head_name) == 0;
    int is_embed = strcmp(t->name, p->embed_name) == 0;
    name_ref probe = {t->name, 0, 0};
    const name_ref *r;
    *keep = 1;
    if (t->is_alias && !(p->untie && (is_head || is_embed))) {
        *keep = 0;  /* stays an alias in the shard's __metadata__ */
    } else if ((r = bsearch(&probe, norms, p->n_groups, sizeof *norms, cmp_ref))) {
        *keep = p->keep_norms;
        o.op = OUT_IDENTITY;
        o.group = &p->groups[r->gi];
        o.identity = fold_identity(o.group->gain);
    } else if (is_head) {
        o = (out_tensor){t->name, embed, OUT_FOLD, &p->groups[p->n_groups - 1], 1, 0, embed->shard};
    } else if ((r = bsearch(&probe, cons, n_cons, sizeof *cons, cmp_ref))) {
        o.op = OUT_FOLD;
        o.group = &p->groups[r->gi];
        o.axis = r->axis;
    }
    return o;
}

fl_status plan_outputs(fold_plan *p, const plan_catalogue *cat, fl_error *err)
{
    name_ref *cons = NULL, *norms = NULL;
    size_t n_cons = 0, cap = 0;
    fl_status s = index_groups(p, &cons, &n_cons, &norms, err);
    /* A norm the plan both folds and keeps would be folded while the card
     * says it was kept: a contradiction in the table or the --plan file. */
    for (size_t i = 0; s == FL_OK && i < p->n_kept; i++) {
        name_ref key = {p->kept[i].name, 0, 0};
        if (bsearch(&key, norms, p->n_groups, sizeof *norms, cmp_ref))
            s = fl_fail(err, FL_EINPUT, "plan error: norm '%s' is both folded and kept (\"%s\")",
                        p->kept[i].name, p->kept[i].reason);
    }
    const ckpt_tensor *embed = plan_cat_find(cat, p->embed_name);
    int head_written = 0;
    for (size_t i = 0; i < cat->n && s == FL_OK; i++) {
        int keep;
        out_tensor o = out_of(p, &cat->tensors[i], embed, cons, n_cons, norms, &keep);
        head_written |= p->untie && strcmp(o.name, p->head_name) == 0;
        if (keep)
            s = push_out(p, &cap, o, err);
    }
    if (s == FL_OK && p->untie && !head_written)
        s = push_out(p, &cap, (out_tensor){p->head_name, embed, OUT_FOLD, &p->groups[p->n_groups - 1], 1, 0,
                                           embed->shard}, err);
    free(cons);
    free(norms);
    if (s != FL_OK)
        return s;
    qsort(p->out, p->n_out, sizeof *p->out, cmp_out);
    p->by_name = malloc((p->n_out ? p->n_out : 1) * sizeof *p->by_name);
    if (!p->by_name)
        return plan_oom(err);
    for (size_t i = 0; i < p->n_out; i++)
        p->by_name[i] = i;
    sorting_plan = p;
    qsort(p->by_name, p->n_out, sizeof *p->by_name, cmp_by_name);
    sorting_plan = NULL;
    return FL_OK;
}

/* The FlashNorm marker makes ARCH_MARKER_NORMS and the final norm
 * weightless: write it only when every one of them that exists was folded,
 * and nothing was kept because of quantization. */
int plan_marker_allowed(const fold_plan *p, const plan_catalogue *cat)
{
    if (p->arch->marker == ARCH_MARKER_NEVER || !p->final_folded || p->n_quantized_kept)
        return 0;
    for (long i = 0; i < p->n_layers; i++)
        for (int k = 0; ARCH_MARKER_NORMS[k]; k++) {
            char name[256];
            snprintf(name, sizeof name, "%slayers.%ld.%s.weight", p->prefix, i, ARCH_MARKER_NORMS[k]);
            const char *key = name;
            if (plan_cat_find(cat, name) && !bsearch(&key, p->dropped, p->n_dropped, sizeof *p->dropped, cmp_strp))
                return 0;
        }
    return 1;
}

void plan_name_pattern(const char *name, char *out, size_t cap)
{
    const char *l = strstr(name, "layers.");
    size_t n = strlen(name);
    if (n > 7 && strcmp(name + n - 7, ".weight") == 0)
        n -= 7;
    if (!l || (size_t)(l - name) >= n) {
        snprintf(out, cap, "%.*s", (int)n, name);
        return;
    }
    const char *d = l + 7;
    const char *e = d;
    while (*e >= '0' && *e <= '9')
        e++;
    if (e == d) {
        snprintf(out, cap, "%.*s", (int)n, name);
        return;
    }
    snprintf(out, cap, "%.*s{i}%.*s", (int)(d - name), name, (int)(n - (size_t)(e - name)), e);
}

const out_tensor *plan_find_out(const fold_plan *p, const char *name)
{
    size_t lo = 0, hi = p->n_out;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const out_tensor *o = &p->out[p->by_name[mid]];
        int c = strcmp(o->name, name);
        if (c == 0)
            return o;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}
