/* strbuf.h — a growing, NUL-terminated text buffer for the JSON and
 * Markdown flashify writes (index, config edits, model card, reports).
 * Allocation failure is sticky: it sets `oom`, later appends do nothing,
 * and the owner checks `oom` once at the end. */
#ifndef FLASHIFY_STRBUF_H
#define FLASHIFY_STRBUF_H

#include <stddef.h>

typedef struct {
    char *p;      /* the text (NULL while empty) */
    size_t n;     /* its length */
    size_t cap;
    int oom;      /* an allocation failed */
} strbuf;

void sb_put(strbuf *b, const char *s, size_t n);
void sb_str(strbuf *b, const char *s);
void sb_printf(strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends s as a JSON string literal (quotes, escapes). */
void sb_json_string(strbuf *b, const char *s);

#endif
