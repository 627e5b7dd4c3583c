/* card.h — the output's README.md model card. */
#ifndef FLASHIFY_CARD_H
#define FLASHIFY_CARD_H

#include <stddef.h>

#include "flashify/plan.h"

typedef struct {
    const char *base_model;  /* the source: its Hub repo id, or its directory's name */
    int on_hub;              /* base_model is a repo id: the card links its card */
    const char *title;       /* the output's name */
    const char *source_card; /* the source's README.md text, or NULL */
    const char *license;     /* the source's license when its card is not at hand
                                (the Hub API's cardData), or NULL */
} card_source;

/* Renders the card for `plan`.  The YAML front matter has base_model, the
 * metadata a derived model inherits from the source card (license,
 * license_name, license_link, language, pipeline_tag, library_name), and the
 * tags; every value is written as a YAML scalar flashify escaped itself, so
 * no name can add keys.  *text is malloc'd.  Returns FL_OK or FL_EIO (out
 * of memory). */
fl_status model_card(const fold_plan *plan, const card_source *src, char **text, fl_error *err);

/* Writes "org/name" into out and returns 1 when dir is a snapshot of the
 * Hugging Face cache (<hub>/models--org--name/snapshots/<commit>, hub-protocol
 * layout; repo ids never contain "--"), else returns 0. */
int card_repo_of_snapshot(const char *dir, char *out, size_t cap);

#endif
