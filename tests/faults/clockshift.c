/*
 * clockshift.c: an LD_PRELOAD library that moves a process's wall clock by
 * an offset the test can change while the process runs. For the fault test
 * "Redis's clock jumps forward": Redis expires keys by its wall clock
 * (gettimeofday), so a jump of its clock past a lock's TTL ends the lease
 * early, while the lock holder's own (monotonic) view says it still holds.
 *
 * Why not libfaketime: Debian's redis-server is linked against libjemalloc,
 * and libfaketime 0.9.10 cannot initialise in such a process (its dlsym
 * calls malloc, jemalloc's init calls clock_gettime, which is libfaketime's
 * own, not yet initialised: "Unexpected recursive calls to clock_gettime()",
 * and Redis does not start; libfaketime issues #130 and #327). This shim
 * avoids the trap by never calling dlsym or malloc: the real clocks are read
 * with raw system calls.
 *
 * CLOCKSHIFT_FILE names a file of 8 bytes, a native int64 offset in
 * milliseconds. It is mapped shared, so a write by the test (pwrite) is seen
 * by the next clock read, with no re-reading and no cache. Only the
 * realtime clocks are moved; CLOCK_MONOTONIC and the others pass through.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* 0: not mapped yet, 1: being mapped, 2: ready (or no file: offset 0). */
static atomic_int clockshift__state;
static _Atomic(int64_t *) clockshift__ms;

static int64_t clockshift__offset_ms(void) {
    int s = atomic_load(&clockshift__state);
    if (s == 0 && atomic_compare_exchange_strong(&clockshift__state, &s, 1)) {
        const char *path = getenv("CLOCKSHIFT_FILE");
        int fd = path != NULL ? open(path, O_RDONLY | O_CLOEXEC) : -1;
        if (fd >= 0) {
            void *p = mmap(NULL, sizeof(int64_t), PROT_READ, MAP_SHARED, fd, 0);
            if (p != MAP_FAILED) {
                atomic_store(&clockshift__ms, (int64_t *)p);
            }
            close(fd);
        }
        atomic_store(&clockshift__state, 2);
    }
    int64_t *p = atomic_load(&clockshift__ms);
    return p != NULL ? __atomic_load_n(p, __ATOMIC_RELAXED) : 0;
}

static int clockshift__is_realtime(clockid_t id) {
    return id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE;
}

int clock_gettime(clockid_t id, struct timespec *ts) {
    int rc = (int)syscall(SYS_clock_gettime, id, ts);
    if (rc == 0 && clockshift__is_realtime(id)) {
        int64_t ns = (int64_t)ts->tv_sec * 1000000000LL + ts->tv_nsec +
                     clockshift__offset_ms() * 1000000LL;
        ts->tv_sec = ns / 1000000000LL;
        ts->tv_nsec = ns % 1000000000LL;
    }
    return rc;
}

int gettimeofday(struct timeval *restrict tv, void *restrict tz) {
    (void)tz;
    struct timespec ts;
    int rc = clock_gettime(CLOCK_REALTIME, &ts);
    if (rc == 0) {
        tv->tv_sec = ts.tv_sec;
        tv->tv_usec = ts.tv_nsec / 1000;
    }
    return rc;
}

time_t time(time_t *out) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (out != NULL) {
        *out = ts.tv_sec;
    }
    return ts.tv_sec;
}
