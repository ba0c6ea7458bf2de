/*
 * tt.h: the test registry and assertions, shared by every test binary.
 *
 * A test is a function declared with TT_TEST(name, timeout_s). Each one runs
 * in its own forked child, in its own process group, under an alarm: a test
 * that hangs is killed (with everything it started) and reported as a
 * timeout, and one that crashes cannot take the others down. An assertion
 * that fails prints both values and the line, and ends the test.
 *
 * The run ends with the line "N passed, N failed" and exits non-zero if any
 * test failed. Arguments filter by substring: `build/tests/itest stale` runs
 * only the tests whose name contains "stale".
 */
#ifndef COUPONSVC_TT_H
#define COUPONSVC_TT_H

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct tt_test {
    const char *name;
    void (*fn)(void);
    unsigned timeout_s;
} tt_test_t;

void tt__register(const char *name, void (*fn)(void), unsigned timeout_s);
void tt__fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4), noreturn));

/* Runs the registered tests (filtered by argv), prints the summary, returns
 * the exit status. setup/teardown (may be NULL) run once in the parent
 * around all tests, e.g. to start a shared PostgreSQL. */
int tt_main(int argc, char **argv, int (*setup)(void), void (*teardown)(void));

/* The name of the test running in this process ("" outside a test). */
extern const char *tt_current;

/* Called (in the test's process) when a test fails, before it exits: the
 * integration harness prints the logs of the processes it started. */
extern void (*tt_on_failure)(void);

#define TT_TEST(name, timeout_s)                                               \
    static void tt_test_##name(void);                                          \
    __attribute__((constructor)) static void tt_reg_##name(void) {             \
        tt__register(#name, tt_test_##name, timeout_s);                        \
    }                                                                          \
    static void tt_test_##name(void)

#define TT_ASSERT(cond)                                                        \
    do {                                                                       \
        if (!(cond)) {                                                         \
            tt__fail(__FILE__, __LINE__, "assertion failed: %s", #cond);       \
        }                                                                      \
    } while (0)

#define TT_ASSERT_MSG(cond, ...)                                               \
    do {                                                                       \
        if (!(cond)) {                                                         \
            tt__fail(__FILE__, __LINE__, __VA_ARGS__);                         \
        }                                                                      \
    } while (0)

#define TT_EQ_INT(a, b)                                                        \
    do {                                                                       \
        long long tt_a_ = (long long)(a), tt_b_ = (long long)(b);              \
        if (tt_a_ != tt_b_) {                                                  \
            tt__fail(__FILE__, __LINE__, "%s == %s: %lld != %lld", #a, #b,     \
                     tt_a_, tt_b_);                                            \
        }                                                                      \
    } while (0)

#define TT_CMP_INT(a, op, b)                                                   \
    do {                                                                       \
        long long tt_a_ = (long long)(a), tt_b_ = (long long)(b);              \
        if (!(tt_a_ op tt_b_)) {                                               \
            tt__fail(__FILE__, __LINE__, "%s %s %s: %lld vs %lld", #a, #op,    \
                     #b, tt_a_, tt_b_);                                        \
        }                                                                      \
    } while (0)

#define TT_EQ_STR(a, b)                                                        \
    do {                                                                       \
        const char *tt_a_ = (a), *tt_b_ = (b);                                 \
        if (tt_a_ == NULL || tt_b_ == NULL || strcmp(tt_a_, tt_b_) != 0) {     \
            tt__fail(__FILE__, __LINE__, "%s == %s: \"%s\" != \"%s\"", #a, #b, \
                     tt_a_ ? tt_a_ : "(null)", tt_b_ ? tt_b_ : "(null)");      \
        }                                                                      \
    } while (0)

#define TT_CONTAINS(hay, needle)                                               \
    do {                                                                       \
        const char *tt_h_ = (hay), *tt_n_ = (needle);                          \
        if (tt_h_ == NULL || strstr(tt_h_, tt_n_) == NULL) {                   \
            tt__fail(__FILE__, __LINE__, "\"%s\" does not contain \"%s\"",     \
                     tt_h_ ? tt_h_ : "(null)", tt_n_);                         \
        }                                                                      \
    } while (0)

#endif
