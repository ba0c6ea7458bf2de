/*
 * test_lock_wait_faults.c: the lock waiters' fault scenarios (see
 * service/lock_wait.c): the subscriber's connection killed while claims
 * wait, and a release that is never announced. Real Redis, PostgreSQL and
 * couponsvc; the lock is held by the test (lw_common.h).
 */
#include <stdio.h>

#include "harness.h"
#include "lw_common.h"
#include "tt.h"

/* The subscriber connection killed mid-wait (CLIENT KILL TYPE pubsub): the
 * subscriber reconnects and wakes every waiter once (a release in the gap
 * reached nobody), and the waiters still get the lock when it is released
 * after that. */
TT_TEST(lock_wait_subscriber_killed_mid_wait, 60) {
    H_REDIS_ONLY();
    h_begin();
    lw_claim_t c[2];
    h_svc_t *s = lw_waiters_start("kill", c, 2);
    h_sleep_ms(300); /* both past their subscription wait */

    TT_EQ_INT(h_redis_cmd("CLIENT KILL TYPE pubsub"), 1);
    TT_EQ_INT(h_wait_metric(s, LW_WAKE_RECONNECT, 2, 5000), 2);
    h_sleep_ms(300);
    TT_EQ_INT(h_metric(s, LW_WAKE_RECONNECT), 2); /* once each */

    lw_release_announced("kill");
    for (int i = 0; i < 2; i++) {
        lw_claim_join(&c[i]);
        TT_EQ_INT(c[i].status, 201);
    }
    h_check_invariants("kill", 5, 2);
}

/* A release nobody announces (a raw DEL, as an operator or a TTL expiry
 * does): the waiter is woken by its timed re-check, never by a message. */
TT_TEST(lock_wait_lost_release_rechecks, 60) {
    H_REDIS_ONLY();
    h_begin();
    const char *env[] = {"COUPON_LOCK_WAIT_MS=5000",
                         "COUPON_LOCK_RECHECK_MS=250", NULL};
    h_svc_t *s = h_svc_start("lost", env);
    h_coupon(s, "lost", 5);
    lw_hold("lost");
    lw_claim_t a;
    lw_claim_start(&a, s, "lost", "u0");
    TT_EQ_INT(h_wait_metric(s, LW_WAITERS, 1, 5000), 1);
    h_sleep_ms(300);
    TT_EQ_INT(h_redis_cmd("DEL coupon:{lost}:lock"), 1);
    lw_claim_join(&a);
    TT_EQ_INT(a.status, 201);
    TT_EQ_INT(h_metric(s, LW_WAKE_MESSAGE), 0);
    TT_CMP_INT(h_metric(s, LW_WAKE_RECHECK), >=, 1);
    h_check_invariants("lost", 5, 1);
}
