/* config_edit.h — the output's config.json. */
#ifndef FLASHIFY_CONFIG_EDIT_H
#define FLASHIFY_CONFIG_EDIT_H

#include <stddef.h>

#include "flashify/checkpoint.h"
#include "flashify/plan.h"

/* The bytes config.json gets: the source text with only tie_word_embeddings
 * (top level and text_config, when the plan unties) and the FlashNorm
 * marker keys (when plan->marker) changed, the rest byte for byte.
 * *out is malloc'd.  Returns FL_OK, FL_EINPUT or FL_EIO. */
fl_status config_rewrite(const checkpoint *ck, const fold_plan *plan, char **out,
                         size_t *out_len, fl_error *err);

#endif
