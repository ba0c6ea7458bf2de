/*
 * mono.h: the clocks the lock logic reads.
 *
 * Neither CLOCK_MONOTONIC nor CLOCK_BOOTTIME jumps when NTP or an operator
 * sets the wall clock, so every lease deadline and wait deadline in this
 * service is "now on one of them + a relative amount": leases on the boot
 * clock (mono_boot_ns, which also counts a system suspend), waits on the
 * monotonic one (mono_ns). No wall-clock time takes part in a lock
 * decision.
 */
#ifndef COUPONSVC_MONO_H
#define COUPONSVC_MONO_H

#include <errno.h>
#include <stdint.h>
#include <time.h>

#define MONO_MS (1000000LL)
#define MONO_S (1000000000LL)

/* ns (>= 0) nanoseconds as a struct timespec: an absolute instant on one of
 * the clocks below for pthread_cond_timedwait / clock_nanosleep, or a
 * relative amount. */
static inline struct timespec mono_ts_from_ns(int64_t ns) {
    struct timespec ts = {.tv_sec = (time_t)(ns / MONO_S),
                          .tv_nsec = (long)(ns % MONO_S)};
    return ts;
}

static inline int64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * MONO_S + ts.tv_nsec;
}

/* Nanoseconds on CLOCK_BOOTTIME: the clock of lease validity. It is
 * CLOCK_MONOTONIC plus the time the system spent suspended. A lease's TTL
 * runs on in Redis while this host sleeps (a suspended laptop or VM, a
 * frozen container host), and CLOCK_MONOTONIC does not see that time: a
 * lease judged by it would look valid long after Redis expired the key and
 * granted it to someone else. So lease validity (valid_until_ns), the commit
 * gate and the watchdog's expiry check read this clock. Waits and sleeps stay
 * on CLOCK_MONOTONIC, which glibc's condition variables require. */
static inline int64_t mono_boot_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_BOOTTIME, &ts);
    return (int64_t)ts.tv_sec * MONO_S + ts.tv_nsec;
}

/* Sleeps ns nanoseconds on CLOCK_MONOTONIC (<= 0: returns at once). A
 * signal does not cut the sleep short: after EINTR it sleeps the rest. */
static inline void mono_sleep_ns(int64_t ns) {
    if (ns <= 0) {
        return;
    }
    struct timespec ts = mono_ts_from_ns(ns);
    while (clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, &ts) == EINTR) {
    }
}

#endif
