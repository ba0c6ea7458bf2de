/*
 * test_lockmath.c: the lock's wait arithmetic, which needs no server: the
 * poll strategy's backoff (its cap, its floor, the holder's PTTL, the
 * deadline), the pubsub strategy's re-check period and deadline clamps,
 * the handoff window and when a holdback ends, Redlock's quorum counts,
 * and the clock and string helpers they use. No network.
 */
#include <stdint.h>

#include "lock.h"
#include "lock_backend.h"
#include "lock_wait.h"
#include "mono.h"
#include "str.h"
#include "tt.h"

/* The backoff's draw stays in [cap/2, cap]: rnd 0 gives cap/2, the largest
 * rnd that the modulus keeps gives cap. */
TT_TEST(lock_backoff_draw_within_cap, 5) {
    int64_t cap = 8 * MONO_MS, far = 1000 * MONO_MS;
    TT_EQ_INT(lock__backoff_ns(cap, 0, -1, far), 4 * MONO_MS);
    TT_EQ_INT(lock__backoff_ns(cap, (uint64_t)(cap / 2), -1, far), cap);
    TT_EQ_INT(lock__backoff_ns(cap, (uint64_t)(cap / 2 + 1), -1, far),
              4 * MONO_MS); /* wraps round */
    uint64_t x = 88172645463325252ULL;
    for (int i = 0; i < 10000; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        int64_t s = lock__backoff_ns(cap, x, -1, far);
        TT_ASSERT_MSG(s >= cap / 2 && s <= cap, "draw %d: %lld ns", i,
                      (long long)s);
    }
}

/* Never past the holder's PTTL, never below 1 ms (a PTTL of 0 must not
 * make a loop without a pause), never past the deadline. */
TT_TEST(lock_backoff_pttl_floor_deadline, 5) {
    int64_t cap = 40 * MONO_MS, far = 1000 * MONO_MS;
    TT_EQ_INT(lock__backoff_ns(cap, 0, 5, far), 5 * MONO_MS);
    TT_EQ_INT(lock__backoff_ns(cap, 0, 0, far), 1 * MONO_MS);
    TT_EQ_INT(lock__backoff_ns(2 * MONO_MS / 2, 0, -1, far), 1 * MONO_MS);
    TT_EQ_INT(lock__backoff_ns(cap, 0, -1, 3 * MONO_MS), 3 * MONO_MS);
    /* The deadline wins even over the floor: no sleep past it. */
    TT_EQ_INT(lock__backoff_ns(cap, 0, 0, MONO_MS / 2), MONO_MS / 2);
}

/* The cap doubles from 1 ms up to 50 ms and stays there. */
TT_TEST(lock_backoff_cap_grows_to_50ms, 5) {
    int64_t cap = 1 * MONO_MS;
    static const int64_t want_ms[] = {2, 4, 8, 16, 32, 50, 50, 50};
    for (size_t i = 0; i < sizeof(want_ms) / sizeof(want_ms[0]); i++) {
        cap = lock__backoff_next_cap(cap);
        TT_EQ_INT(cap, want_ms[i] * MONO_MS);
    }
}

/* COUPON_LOCK_RECHECK_MS in ns, and 0 read as 1 ms: the re-check never
 * becomes a wait without a timeout. A wait's end is clamped to the claim's
 * deadline, never moved later. */
TT_TEST(lock_wait_recheck_and_deadline_clamp, 5) {
    TT_EQ_INT(lock_wait__recheck_ns(200), 200 * MONO_MS);
    TT_EQ_INT(lock_wait__recheck_ns(250), 250 * MONO_MS);
    TT_EQ_INT(lock_wait__recheck_ns(1), 1 * MONO_MS);
    TT_EQ_INT(lock_wait__recheck_ns(0), 1 * MONO_MS);
    TT_EQ_INT(lock_wait__until(100, 200), 100);
    TT_EQ_INT(lock_wait__until(300, 200), 200);
    TT_EQ_INT(lock_wait__until(200, 200), 200);
}

/* The handoff window: 10 ms after the last release (or message), never
 * past the deadline. */
TT_TEST(lock_wait_handoff_window, 5) {
    int64_t t = 5000 * MONO_MS;
    TT_EQ_INT(lock_wait__handoff_until(t, t + 1000 * MONO_MS),
              t + 10 * MONO_MS);
    TT_EQ_INT(lock_wait__handoff_until(t, t + 3 * MONO_MS), t + 3 * MONO_MS);
    TT_EQ_INT(lock_wait__handoff_until(t, t), t);
}

/* When a holdback ends. Columns: others (processes waiting), msgs (release
 * messages seen since our release), self (our own release echoes back),
 * now, until (the window's end); want 1 = stop holding back. */
TT_TEST(lock_wait_handoff_over_cases, 5) {
    static const struct {
        int others, msgs, self;
        int64_t now, until;
        int want;
    } c[] = {
        {0, 0, 0, 0, 100, 1},   /* nobody else waits: no holdback */
        {-1, 0, 1, 0, 100, 1},  /* a count below zero reads as nobody */
        {2, 0, 0, 0, 100, 0},   /* two wait, none had a turn yet */
        {2, 1, 0, 0, 100, 0},   /* one of two had it */
        {2, 2, 0, 0, 100, 1},   /* both had it */
        {2, 2, 1, 0, 100, 0},   /* our own echo counts for nobody */
        {2, 3, 1, 0, 100, 1},   /* echo + both */
        {1, 0, 1, 99, 100, 0},  /* the window is still open */
        {1, 0, 1, 100, 100, 1}, /* the window has ended: idle lock */
    };
    for (size_t i = 0; i < sizeof(c) / sizeof(c[0]); i++) {
        int got = lock_wait__handoff_over(c[i].others, c[i].msgs, c[i].self,
                                          c[i].now, c[i].until);
        TT_ASSERT_MSG(got == c[i].want, "case %zu: got %d, want %d", i, got,
                      c[i].want);
    }
}

/* Redlock: validity is TTL - elapsed - drift exactly, for every TTL the
 * settings allow a hundred of; and a majority of n is a count two disjoint
 * sets cannot both reach. */
TT_TEST(redlock_validity_is_ttl_minus_elapsed_minus_drift, 5) {
    for (uint32_t ttl = 100; ttl <= 60000; ttl += 599) {
        for (int64_t el = 0; el <= 3 * MONO_MS; el += MONO_MS) {
            int64_t want = (int64_t)ttl * MONO_MS - el -
                           ((int64_t)ttl * MONO_MS / 100 + 2 * MONO_MS);
            TT_EQ_INT(lock_redlock_validity_ns(ttl, el), want);
        }
    }
    for (int n = 1; n <= LOCK_MAX_NODES; n++) {
        int m = lock_redlock_majority(n);
        TT_ASSERT_MSG(2 * m > n && 2 * (m - 1) <= n, "n=%d majority=%d", n, m);
    }
}

/* Which round counts are possible: every verdict is asked only of those. */
TT_TEST(redlock_quorum_counts_checked, 5) {
    TT_EQ_INT(lock_redlock__quorum_ok(3, 2, 1), 1);
    TT_EQ_INT(lock_redlock__quorum_ok(3, 0, 0), 1);
    TT_EQ_INT(lock_redlock__quorum_ok(3, 3, 0), 1);
    TT_EQ_INT(lock_redlock__quorum_ok(3, 4, 0), 0); /* granted > N */
    TT_EQ_INT(lock_redlock__quorum_ok(3, 2, 2), 0); /* a node twice */
    TT_EQ_INT(lock_redlock__quorum_ok(3, -1, 0), 0);
    TT_EQ_INT(lock_redlock__quorum_ok(0, 0, 0), 0);
    TT_EQ_INT(lock_redlock__quorum_ok(LOCK_MAX_NODES + 1, 0, 0), 0);

    TT_EQ_INT(lock_redlock__masks_ok(5, 0x7, 0x18, 3, 2), 1);
    TT_EQ_INT(lock_redlock__masks_ok(5, 0x7, 0x18, 2, 2), 0); /* count */
    TT_EQ_INT(lock_redlock__masks_ok(5, 0x7, 0x4, 3, 1), 0);  /* overlap */
    TT_EQ_INT(lock_redlock__masks_ok(3, 0x9, 0x0, 2, 0), 0);  /* node 3 of 3 */
}

/* The shared helpers the wait arithmetic stands on (mono.h, str.h). */
TT_TEST(mono_ts_and_trim_helpers, 5) {
    struct timespec ts = mono_ts_from_ns(3 * MONO_S + 250 * MONO_MS);
    TT_EQ_INT(ts.tv_sec, 3);
    TT_EQ_INT(ts.tv_nsec, 250 * MONO_MS);
    ts = mono_ts_from_ns(MONO_S - 1);
    TT_EQ_INT(ts.tv_sec, 0);
    TT_EQ_INT(ts.tv_nsec, MONO_S - 1);
    int64_t t0 = mono_ns();
    mono_sleep_ns(2 * MONO_MS);
    TT_CMP_INT(mono_ns() - t0, >=, 2 * MONO_MS);
    mono_sleep_ns(-1); /* returns at once */

    char a[] = "connection refused\r\n\n";
    TT_EQ_INT(str_trim_newline(a), 18);
    TT_EQ_STR(a, "connection refused");
    char b[] = "no newline ";
    TT_EQ_INT(str_trim_newline(b), 11);
    TT_EQ_STR(b, "no newline ");
    char c[] = "fatal: x \n \n";
    TT_EQ_INT(str_trim_end(c, "\n "), 8);
    TT_EQ_STR(c, "fatal: x");
    char d[] = "\n";
    TT_EQ_INT(str_trim_newline(d), 0);
    TT_EQ_STR(d, "");
    TT_EQ_INT(str_trimmed_len("notice: skipping\n", "\r\n"), 16);
}
