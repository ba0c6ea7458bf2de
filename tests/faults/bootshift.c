/*
 * bootshift.c: an LD_PRELOAD library that moves a process's CLOCK_BOOTTIME
 * (and nothing else) by an offset the test can change while the process
 * runs. This is what a system suspend looks like from inside a process:
 * CLOCK_BOOTTIME jumps ahead by the time asleep, CLOCK_MONOTONIC and every
 * wait do not. Preloaded into couponsvc for the test "a lease whose validity
 * ran out during a suspend is refused at the commit gate".
 *
 * BOOTSHIFT_FILE names a file of 8 bytes, a native int64 offset in
 * milliseconds, mapped shared so that a write by the test (pwrite) is seen
 * by the next clock read. Like clockshift.c it never calls dlsym or malloc:
 * every clock is read with the raw system call (slower than the vDSO, which
 * does not matter in a test). glibc's own internal clock reads, such as
 * those of pthread_cond_timedwait, do not come through here: waits are not
 * moved, as in a real suspend.
 *
 * Under AddressSanitizer the runtime insists on being first in the library
 * list; the test adds verify_asan_link_order=0 to ASAN_OPTIONS.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* 0: not mapped yet, 1: being mapped, 2: ready (or no file: offset 0). */
static atomic_int bootshift__state;
static _Atomic(int64_t *) bootshift__ms;

static int64_t bootshift__offset_ms(void) {
    int s = atomic_load(&bootshift__state);
    if (s == 0 && atomic_compare_exchange_strong(&bootshift__state, &s, 1)) {
        const char *path = getenv("BOOTSHIFT_FILE");
        int fd = path != NULL ? open(path, O_RDONLY | O_CLOEXEC) : -1;
        if (fd >= 0) {
            void *p = mmap(NULL, sizeof(int64_t), PROT_READ, MAP_SHARED, fd, 0);
            if (p != MAP_FAILED) {
                atomic_store(&bootshift__ms, (int64_t *)p);
            }
            close(fd);
        }
        atomic_store(&bootshift__state, 2);
    }
    int64_t *p = atomic_load(&bootshift__ms);
    return p != NULL ? __atomic_load_n(p, __ATOMIC_RELAXED) : 0;
}

int clock_gettime(clockid_t id, struct timespec *ts) {
    int rc = (int)syscall(SYS_clock_gettime, id, ts);
    if (rc == 0 && (id == CLOCK_BOOTTIME || id == CLOCK_BOOTTIME_ALARM)) {
        int64_t ns = (int64_t)ts->tv_sec * 1000000000LL + ts->tv_nsec +
                     bootshift__offset_ms() * 1000000LL;
        ts->tv_sec = ns / 1000000000LL;
        ts->tv_nsec = ns % 1000000000LL;
    }
    return rc;
}
