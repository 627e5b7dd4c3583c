/* card.h — the output's README.md model card. */
#ifndef FLASHIFY_CARD_H
#define FLASHIFY_CARD_H

#include "flashify/plan.h"

/* Renders the card for `plan`: `base` is the source model's name
 * (base_model), `title` the output's.  *text is malloc'd.  Returns FL_OK
 * or FL_EIO (out of memory). */
fl_status model_card(const fold_plan *plan, const char *base, const char *title, char **text,
                     fl_error *err);

#endif
