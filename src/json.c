/* json.c — the strict JSON pull reader (see json.h).
 *
 * The grammar is RFC 8259's exactly: whitespace is space, tab, CR and LF
 * only; strings hold no raw control characters; numbers have no leading
 * '+' or zeros.  Escapes decode as serde_json decodes them. */
#include "flashify/json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void json_init(json_reader *j, const char *what, const char *label, const void *s, size_t len,
               int max_depth, fl_error *err)
{
    memset(j, 0, sizeof *j);
    j->what = what;
    j->label = label;
    j->s = s;
    j->len = len;
    j->max_depth = max_depth;
    j->err = err;
}

fl_status json_fail(json_reader *j, const char *msg)
{
    if (j->pos >= j->len)
        return fl_fail(j->err, FL_EINPUT, "%s: invalid %s: %s at the end of the %s",
                       j->what, j->label, msg, j->label);
    unsigned c = j->s[j->pos];
    char shown_c[16];
    if (c > 0x20 && c < 0x7f) snprintf(shown_c, sizeof shown_c, "'%c'", (char)c);
    else snprintf(shown_c, sizeof shown_c, "0x%02x", c);
    return fl_fail(j->err, FL_EINPUT, "%s: invalid %s: %s at byte %zu (%s)",
                   j->what, j->label, msg, j->pos, shown_c);
}

void json_ws(json_reader *j)
{
    while (j->pos < j->len) {
        unsigned char c = j->s[j->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        j->pos++;
    }
}

int json_peek(const json_reader *j) { return j->pos < j->len ? j->s[j->pos] : -1; }

static int hexval(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int read_hex4(json_reader *j, unsigned *out)
{
    if (j->len - j->pos < 4) return -1;
    unsigned v = 0;
    for (int k = 0; k < 4; k++) {
        int h = hexval(j->s[j->pos + k]);
        if (h < 0) return -1;
        v = v << 4 | (unsigned)h;
    }
    j->pos += 4;
    *out = v;
    return 0;
}

/* Parses a JSON string at the cursor into a fresh NUL-terminated buffer
 * (*out, caller frees; NULL when out is NULL: the string is only checked).
 * The buffer was validated as UTF-8 beforehand, so raw bytes are copied;
 * escapes are decoded like serde_json does (lone surrogates rejected).  A
 * \u0000 escape is rejected: no name or metadata value can hold a NUL in C. */
fl_status json_string(json_reader *j, char **out, size_t *out_len)
{
    if (json_peek(j) != '"') return json_fail(j, "expected a string");
    j->pos++;
    /* The decoded string is never longer than its encoding. */
    size_t start = j->pos, cap = 0;
    while (j->pos < j->len && j->s[j->pos] != '"') {
        if (j->s[j->pos] == '\\') j->pos++;
        j->pos++;
    }
    if (j->pos >= j->len) { j->pos = start - 1; return json_fail(j, "unterminated string"); }
    cap = j->pos - start;
    j->pos = start;
    char *buf = NULL;
    if (out) {
        buf = malloc(cap + 1);
        if (!buf) return fl_fail(j->err, FL_EIO, "%s: out of memory reading header", j->what);
    }
    size_t n = 0;
    for (;;) {
        unsigned char c = j->s[j->pos];
        if (c == '"') { j->pos++; break; }
        if (c < 0x20) { free(buf); return json_fail(j, "control character in string"); }
        if (c != '\\') {
            if (buf) buf[n] = (char)c;
            n++;
            j->pos++;
            continue;
        }
        j->pos++;
        int e = j->s[j->pos++];
        unsigned cp = 0;
        switch (e) {
        case '"': case '\\': case '/': cp = (unsigned)e; break;
        case 'b': cp = '\b'; break;
        case 'f': cp = '\f'; break;
        case 'n': cp = '\n'; break;
        case 'r': cp = '\r'; break;
        case 't': cp = '\t'; break;
        case 'u':
            if (read_hex4(j, &cp) < 0) { free(buf); j->pos -= 2; return json_fail(j, "bad \\u escape"); }
            if (cp >= 0xDC00 && cp <= 0xDFFF) {
                free(buf); j->pos -= 6; return json_fail(j, "lone low surrogate in \\u escape");
            }
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                unsigned lo;
                if (j->len - j->pos < 2 || j->s[j->pos] != '\\' || j->s[j->pos + 1] != 'u') {
                    free(buf); j->pos -= 6; return json_fail(j, "lone high surrogate in \\u escape");
                }
                j->pos += 2;
                if (read_hex4(j, &lo) < 0 || lo < 0xDC00 || lo > 0xDFFF) {
                    free(buf); j->pos -= 8; return json_fail(j, "bad surrogate pair in \\u escape");
                }
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            if (cp == 0) { free(buf); j->pos -= 6; return json_fail(j, "NUL (\\u0000) in string"); }
            break;
        default:
            free(buf); j->pos -= 2; return json_fail(j, "bad escape in string");
        }
        /* UTF-8 encode cp; never longer than the escape it came from. */
        unsigned char tmp[4];
        size_t k;
        if (cp < 0x80) { tmp[0] = (unsigned char)cp; k = 1; }
        else if (cp < 0x800) { tmp[0] = 0xC0 | cp >> 6; tmp[1] = 0x80 | (cp & 63); k = 2; }
        else if (cp < 0x10000) {
            tmp[0] = 0xE0 | cp >> 12; tmp[1] = 0x80 | ((cp >> 6) & 63); tmp[2] = 0x80 | (cp & 63); k = 3;
        } else {
            tmp[0] = 0xF0 | cp >> 18; tmp[1] = 0x80 | ((cp >> 12) & 63);
            tmp[2] = 0x80 | ((cp >> 6) & 63); tmp[3] = 0x80 | (cp & 63); k = 4;
        }
        if (buf) memcpy(buf + n, tmp, k);
        n += k;
    }
    if (buf) {
        buf[n] = 0;
        *out = buf;
    }
    if (out_len) *out_len = n;
    return FL_OK;
}

/* Scans a JSON number at the cursor (RFC 8259 grammar).  When it is a plain
 * non-negative integer (no sign, fraction or exponent) that fits in 64 bits,
 * *value gets it and *is_uint is 1; otherwise *is_uint is 0.  *tok and *tok_len
 * give the token's text for messages. */
fl_status json_number(json_reader *j, int *is_uint, uint64_t *value,
                         const char **tok, size_t *tok_len)
{
    size_t start = j->pos;
    int plain = 1, overflow = 0;
    uint64_t v = 0;
    if (json_peek(j) == '-') { plain = 0; j->pos++; }
    int c = json_peek(j);
    if (c == '0') j->pos++;
    else if (c >= '1' && c <= '9') {
        while ((c = json_peek(j)) >= '0' && c <= '9') {
            if (v > (UINT64_MAX - 9) / 10) overflow = 1;
            else v = v * 10 + (uint64_t)(c - '0');
            j->pos++;
        }
    } else return json_fail(j, "bad number");
    if (json_peek(j) == '.') {
        plain = 0;
        j->pos++;
        if (!((c = json_peek(j)) >= '0' && c <= '9')) return json_fail(j, "bad number");
        while ((c = json_peek(j)) >= '0' && c <= '9') j->pos++;
    }
    if (json_peek(j) == 'e' || json_peek(j) == 'E') {
        plain = 0;
        j->pos++;
        if (json_peek(j) == '+' || json_peek(j) == '-') j->pos++;
        if (!((c = json_peek(j)) >= '0' && c <= '9')) return json_fail(j, "bad number");
        while ((c = json_peek(j)) >= '0' && c <= '9') j->pos++;
    }
    *is_uint = plain && !overflow;
    *value = v;
    *tok = (const char *)j->s + start;
    *tok_len = j->pos - start;
    return FL_OK;
}

fl_status json_literal(json_reader *j, const char *lit)
{
    size_t n = strlen(lit);
    if (j->len - j->pos < n || memcmp(j->s + j->pos, lit, n) != 0)
        return json_fail(j, "expected a JSON value");
    j->pos += n;
    return FL_OK;
}

fl_status json_enter(json_reader *j, json_iter *it, char open, int depth)
{
    if (json_peek(j) != open)
        return json_fail(j, open == '{' ? "expected an object" : "expected an array");
    if (depth >= j->max_depth)
        return fl_fail(j->err, FL_EINPUT, "%s: %s nested deeper than %d levels at byte %zu",
                       j->what, j->label, j->max_depth, j->pos);
    j->pos++;
    it->close = open == '{' ? '}' : ']';
    it->count = 0;
    it->depth = depth;
    return FL_OK;
}

int json_next(json_reader *j, json_iter *it, char **key, size_t *key_start)
{
    if (key)
        *key = NULL;
    json_ws(j);
    if (json_peek(j) == it->close) {
        j->pos++;
        return 0;
    }
    if (it->count > 0) {
        if (json_peek(j) != ',') {
            j->status = json_fail(j, it->close == '}' ? "expected ',' or '}'" : "expected ',' or ']'");
            return -1;
        }
        j->pos++;
        json_ws(j);
    }
    it->count++;
    if (it->close == '}') {
        if (key_start)
            *key_start = j->pos;
        if ((j->status = json_string(j, key, NULL)) != FL_OK)
            return -1;
        json_ws(j);
        if (json_peek(j) != ':') {
            if (key) {
                free(*key);
                *key = NULL;
            }
            j->status = json_fail(j, "expected ':'");
            return -1;
        }
        j->pos++;
        json_ws(j);
    }
    return 1;
}

fl_status json_skip(json_reader *j, int depth)
{
    int c = json_peek(j);
    if (c == '{' || c == '[') {
        json_iter it;
        fl_status st = json_enter(j, &it, (char)c, depth);
        int r = 0;
        while (st == FL_OK && (r = json_next(j, &it, NULL, NULL)) > 0)
            st = json_skip(j, depth + 1);
        return st != FL_OK ? st : r < 0 ? j->status : FL_OK;
    }
    if (c == '"') return json_string(j, NULL, NULL);
    if (j->python_floats && (c == 'N' || c == 'I' || (c == '-' && j->pos + 1 < j->len && j->s[j->pos + 1] == 'I')))
        return json_literal(j, c == 'N' ? "NaN" : c == 'I' ? "Infinity" : "-Infinity");
    if (c == 't') return json_literal(j, "true");
    if (c == 'f') return json_literal(j, "false");
    if (c == 'n') return json_literal(j, "null");
    if (c == '-' || (c >= '0' && c <= '9')) {
        int u; uint64_t v; const char *t; size_t tl;
        return json_number(j, &u, &v, &t, &tl);
    }
    return json_fail(j, "expected a JSON value");
}

fl_status json_validate(const char *what, const void *s, size_t len, int max_depth, fl_error *err)
{
    json_reader j;
    json_init(&j, what, "JSON", s, len, max_depth, err);
    json_ws(&j);
    fl_status st = json_skip(&j, 0);
    json_ws(&j);
    if (st == FL_OK && j.pos != j.len)
        st = json_fail(&j, "trailing data after the JSON value");
    return st;
}
