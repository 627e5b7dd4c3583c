/* check.h — the unit tests' one assertion.  CHECK(cond, fmt, ...) counts a
 * failure and prints where and why, without stopping the test, so one run
 * reports every broken case; main() returns non-zero when `failures` is. */
#ifndef FLASHIFY_TEST_CHECK_H
#define FLASHIFY_TEST_CHECK_H

#include <stdio.h>

static int failures;

#define CHECK(cond, ...)                                                         \
    do {                                                                         \
        if (!(cond)) {                                                           \
            failures++;                                                          \
            fprintf(stderr, "%s:%d: FAILED: %s: ", __FILE__, __LINE__, #cond);   \
            fprintf(stderr, __VA_ARGS__);                                        \
            fputc('\n', stderr);                                                 \
        }                                                                        \
    } while (0)

#endif
