/* plan_internal.h — what plan.c and plan_out.c share. */
#ifndef FLASHIFY_PLAN_INTERNAL_H
#define FLASHIFY_PLAN_INTERNAL_H

#include "flashify/plan.h"

/* Grows *arr (of elements of `size` bytes) to hold one more element; NULL
 * (and *arr untouched) when out of memory. */
void *plan_grow(void *arr, size_t *cap, size_t n, size_t size);
fl_status plan_oom(fl_error *err);

/* Binary search of the catalogue by name; NULL if absent. */
const ckpt_tensor *plan_cat_find(const plan_catalogue *cat, const char *name);

/* Builds p->dropped, p->out and p->by_name from the groups (plan_out.c);
 * refuses a tensor folded by two norms and a norm in two groups. */
fl_status plan_outputs(fold_plan *p, const plan_catalogue *cat, fl_error *err);

/* 1 when the FlashNorm marker may be written (docs/architectures.md §marker). */
int plan_marker_allowed(const fold_plan *p, const plan_catalogue *cat);

#endif
