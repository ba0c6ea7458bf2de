/*
 * mono.h: the only clock the lock logic reads.
 *
 * CLOCK_MONOTONIC never jumps when NTP or an operator sets the wall clock, so
 * every lease deadline and wait deadline in this service is "monotonic now +
 * a relative amount". No wall-clock time takes part in a lock decision.
 */
#ifndef COUPONSVC_MONO_H
#define COUPONSVC_MONO_H

#include <stdint.h>
#include <time.h>

#define MONO_MS (1000000LL)

static inline int64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Sleeps ns nanoseconds (<= 0: returns at once). */
static inline void mono_sleep_ns(int64_t ns) {
    if (ns <= 0) {
        return;
    }
    struct timespec ts = {.tv_sec = ns / 1000000000LL,
                          .tv_nsec = ns % 1000000000LL};
    while (clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, &ts) != 0) {
    }
}

#endif
