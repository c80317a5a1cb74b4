/* The C tests' tiny framework: CHECK counts a condition, report() prints the
 * closing "N passed, M failed" line and gives the exit status. */
#ifndef PYQUANT_TESTS_CHECK_H
#define PYQUANT_TESTS_CHECK_H

#include <stdio.h>

static int passed, failed;

#define CHECK(cond)                                                          \
    do {                                                                     \
        if (cond) {                                                          \
            passed++;                                                        \
        } else {                                                             \
            failed++;                                                        \
            printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);           \
        }                                                                    \
    } while (0)

static int report(void) {
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}

#endif
