/*
 * test_lock.c: the lock's arithmetic and state machines that need no
 * server: Redlock's majority, drift, validity and round verdicts, and the
 * watchdog's lease states. No network.
 */
#include <stdint.h>

#include "lock.h"
#include "lock_backend.h"
#include "mono.h"
#include "tt.h"
#include "wd.h"

TT_TEST(redlock_majority_of_n, 5) {
    static const int want[][2] = {{1, 1}, {3, 2}, {5, 3}, {7, 4}};
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        TT_EQ_INT(lock_redlock_majority(want[i][0]), want[i][1]);
    }
    /* Two majorities of the same n always share a node. */
    for (int n = 1; n <= LOCK_MAX_NODES; n += 2) {
        TT_CMP_INT(2 * lock_redlock_majority(n), >, n);
    }
}

TT_TEST(redlock_drift_and_validity, 5) {
    /* drift = TTL/100 + 2 ms */
    TT_EQ_INT(lock_redlock_drift_ns(5000), 52 * MONO_MS);
    TT_EQ_INT(lock_redlock_drift_ns(100), 3 * MONO_MS);
    TT_EQ_INT(lock_redlock_drift_ns(0), 2 * MONO_MS);
    /* validity = TTL - elapsed - drift */
    TT_EQ_INT(lock_redlock_validity_ns(5000, 10 * MONO_MS), 4938 * MONO_MS);
    TT_EQ_INT(lock_redlock_validity_ns(100, 96 * MONO_MS), 1 * MONO_MS);
    TT_CMP_INT(lock_redlock_validity_ns(100, 97 * MONO_MS), <=, 0);
    TT_CMP_INT(lock_redlock_validity_ns(5000, 5000 * MONO_MS), <, 0);
    /* Never more than the TTL minus the drift, however fast the round. */
    TT_EQ_INT(lock_redlock_validity_ns(5000, 0), 4948 * MONO_MS);
}

TT_TEST(redlock_round_verdicts, 5) {
    static const struct {
        int n, yes, no, want;
    } v[] = {
        {3, 2, 0, LOCK_OK},   {3, 3, 0, LOCK_OK},   {3, 2, 1, LOCK_OK},
        {3, 1, 1, LOCK_BUSY}, {3, 0, 2, LOCK_BUSY}, {3, 0, 3, LOCK_BUSY},
        {3, 1, 0, LOCK_ERR},  {3, 0, 1, LOCK_ERR},  {3, 0, 0, LOCK_ERR},
        {5, 3, 0, LOCK_OK},   {5, 2, 1, LOCK_BUSY}, {5, 2, 0, LOCK_ERR},
        {5, 1, 1, LOCK_ERR},  {5, 0, 3, LOCK_BUSY}, {1, 1, 0, LOCK_OK},
        {1, 0, 1, LOCK_BUSY}, {1, 0, 0, LOCK_ERR},
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        TT_ASSERT_MSG(
            lock_redlock_verdict(v[i].n, v[i].yes, v[i].no) == v[i].want,
            "n=%d yes=%d no=%d: got %d, want %d", v[i].n, v[i].yes, v[i].no,
            lock_redlock_verdict(v[i].n, v[i].yes, v[i].no), v[i].want);
    }
}

/* Every (state, event) pair: the move, or -1 where the event cannot
 * happen; and the invariant: listed iff WATCHED or IN_ROUND, held by a
 * round iff IN_ROUND or UNLINKED_IN_ROUND. */
TT_TEST(wd_state_machine_table, 5) {
    enum { X = -1 };
    static const int next[4][4] = {
        /*                 WATCH       SNAPSHOT     UNWATCH    ROUND_END */
        [WD_IDLE] = {WD_WATCHED, X, WD_IDLE, X},
        [WD_WATCHED] = {X, WD_IN_ROUND, WD_IDLE, X},
        [WD_IN_ROUND] = {X, X, WD_UNLINKED_IN_ROUND, WD_WATCHED},
        [WD_UNLINKED_IN_ROUND] = {X, X, WD_UNLINKED_IN_ROUND, WD_IDLE},
    };
    for (int s = WD_IDLE; s <= WD_UNLINKED_IN_ROUND; s++) {
        for (int e = WD_EV_WATCH; e <= WD_EV_ROUND_END; e++) {
            TT_ASSERT_MSG(
                wd_state_next((wd_state_t)s, (wd_event_t)e) == next[s][e],
                "state %d event %d: got %d, want %d", s, e,
                wd_state_next((wd_state_t)s, (wd_event_t)e), next[s][e]);
        }
    }
    TT_EQ_INT(wd_state_listed(WD_IDLE), 0);
    TT_EQ_INT(wd_state_listed(WD_WATCHED), 1);
    TT_EQ_INT(wd_state_listed(WD_IN_ROUND), 1);
    TT_EQ_INT(wd_state_listed(WD_UNLINKED_IN_ROUND), 0);
    TT_EQ_INT(wd_state_in_round(WD_IDLE), 0);
    TT_EQ_INT(wd_state_in_round(WD_WATCHED), 0);
    TT_EQ_INT(wd_state_in_round(WD_IN_ROUND), 1);
    TT_EQ_INT(wd_state_in_round(WD_UNLINKED_IN_ROUND), 1);
}

/* Random walks over the legal moves, checked against a model of the list
 * and of the round: whatever the interleaving of a claim's watch/unwatch
 * and the watchdog's rounds, a lease is listed exactly while watched and
 * never left with a round that ended. */
TT_TEST(wd_state_machine_walks, 5) {
    uint64_t x = 88172645463325252ULL;
    for (int walk = 0; walk < 2000; walk++) {
        wd_state_t s = WD_IDLE;
        int watched = 0, in_round = 0; /* the model */
        for (int step = 0; step < 50; step++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            wd_event_t e = (wd_event_t)(x % 4);
            int n = wd_state_next(s, e);
            /* The model says which events can happen. */
            int legal = e == WD_EV_WATCH      ? !watched && !in_round
                        : e == WD_EV_SNAPSHOT ? watched && !in_round
                        : e == WD_EV_UNWATCH  ? 1
                                              : in_round;
            TT_ASSERT_MSG((n >= 0) == legal,
                          "walk %d step %d: state %d "
                          "event %d -> %d",
                          walk, step, s, e, n);
            if (n < 0) {
                continue;
            }
            watched = e == WD_EV_WATCH ? 1 : e == WD_EV_UNWATCH ? 0 : watched;
            in_round = e == WD_EV_SNAPSHOT    ? 1
                       : e == WD_EV_ROUND_END ? 0
                                              : in_round;
            s = (wd_state_t)n;
            TT_EQ_INT(wd_state_listed(s), watched);
            TT_EQ_INT(wd_state_in_round(s), in_round);
        }
    }
}
