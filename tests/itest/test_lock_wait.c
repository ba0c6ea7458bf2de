/*
 * test_lock_wait.c: how lock waiters sleep and wake (service/lock_wait.c),
 * against real Redis, PostgreSQL and couponsvc. The lock is held by the test
 * itself (a SET of a token the service does not know), so the test decides
 * when it is released and whether the release is announced. The fault
 * scenarios (subscriber killed, a release never announced) are in
 * test_lock_wait_faults.c.
 *
 * What a waiter did is read from the service's metrics: acquire attempts
 * (couponsvc_lock_acquisitions_total), wakeups by cause
 * (couponsvc_lock_wakeups_total) and waiters now (couponsvc_lock_waiters).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "lw_common.h"
#include "tt.h"

/* Subscribe before the attempt: the first attempt is refused, and the lock
 * is released (and announced) while the waiter is paused before it
 * subscribes, so the announcement reaches nobody. The waiter's attempt
 * after the subscription's confirmation finds the lock free: granted with
 * no wakeup at all. A waiter that went to sleep right after subscribing
 * (no attempt in between) would sleep through its deadline's re-checks
 * instead: a recheck wakeup, and one more refused attempt at least. */
TT_TEST(lock_wait_subscribe_then_attempt, 60) {
    H_REDIS_ONLY();
    h_begin();
    const char *env[] = {"COUPON_LOCK_WAIT_MS=5000",
                         "COUPON_LOCK_RECHECK_MS=250",
                         "COUPON_FAULT=before_subscribe:800", NULL};
    h_svc_t *s = h_svc_start("sb", env);
    h_coupon(s, "sb", 5);
    lw_hold("sb");

    lw_claim_t a;
    lw_claim_start(&a, s, "sb", "u1");
    h_wait_metric(s, LW_BUSY, 1, 5000);
    /* The waiter is paused in before_subscribe now (800 ms). */
    lw_release_announced("sb");
    lw_claim_join(&a);
    TT_EQ_INT(a.status, 201);
    TT_EQ_INT(h_metric(s, LW_BUSY), 1);
    TT_EQ_INT(h_metric(s, LW_WAKE_RECHECK), 0);
    TT_EQ_INT(h_metric(s, LW_WAKE_MESSAGE), 0);
    h_check_invariants("sb", 5, 1);
}

/* Wake one, FIFO: three waiters on a held lock; one announcement that is
 * not a release (the lock stays held) wakes exactly one of them, which
 * tries and is refused; the others sleep on. Then the real release: the
 * waiters get the lock in the order they came (fences rise in arrival
 * order), each woken by its predecessor's release. */
TT_TEST(lock_wait_wakes_one_in_order, 60) {
    H_REDIS_ONLY();
    h_begin();
    lw_claim_t c[3];
    h_svc_t *s = lw_waiters_start("fifo", c, 3);
    double msg0 = h_metric(s, LW_WAKE_MESSAGE);
    h_redis_cmd("PUBLISH coupon:{fifo}:released coupon:{fifo}:lock");
    h_wait_metric(s, LW_WAKE_MESSAGE, msg0 + 1, 5000);
    h_sleep_ms(400);
    TT_EQ_INT(h_metric(s, LW_WAKE_MESSAGE) - msg0, 1);

    lw_release_announced("fifo");
    long long fence[3];
    for (int i = 0; i < 3; i++) {
        lw_claim_join(&c[i]);
        TT_EQ_INT(c[i].status, 201);
        fence[i] = c[i].fence;
    }
    TT_CMP_INT(fence[0], <, fence[1]);
    TT_CMP_INT(fence[1], <, fence[2]);
    TT_EQ_INT(h_metric(s, LW_WAITERS), 0);
    h_check_invariants("fifo", 5, 3);
}

/* The subscriber authenticates as the service's ACL user, with exactly the
 * shipped rule: its SUBSCRIBE is allowed, so the release wakes the waiter
 * by its message. (Refused, the waiter would only ever wake by the
 * re-check.) */
TT_TEST(lock_wait_subscriber_acl, 60) {
    H_REDIS_ONLY();
    h_begin();
    h_redis_restart_acl("svc-wait-pw");
    const char *env[] = {
        "COUPON_REDIS_USERNAME=couponsvc", "COUPON_REDIS_PASSWORD=svc-wait-pw",
        "COUPON_LOCK_WAIT_MS=5000", "COUPON_LOCK_RECHECK_MS=250", NULL};
    h_svc_t *s = h_svc_start("acl", env);
    h_coupon(s, "acl", 5);
    lw_hold("acl");
    lw_claim_t a;
    lw_claim_start(&a, s, "acl", "u1");
    h_wait_metric(s, LW_WAITERS, 1, 5000);
    h_sleep_ms(600); /* subscribed by now, or refused */
    lw_release_announced("acl");
    lw_claim_join(&a);
    TT_EQ_INT(a.status, 201);
    TT_CMP_INT(h_metric(s, LW_WAKE_MESSAGE), >=, 1);
}

/* A woken waiter that leaves without the lock passes its wake on. Two
 * waiters queue on a held lock; the test then turns the lock key into a
 * hash, so that every acquire attempt fails with an error (WRONGTYPE), and
 * announces a release once. The first waiter is woken, fails, answers 503
 * and leaves: its wake goes to the second, which is woken by a message too
 * (two message wakeups from one announcement), not left to its re-check. */
TT_TEST(lock_wait_failed_waiter_passes_wake, 60) {
    H_REDIS_ONLY();
    h_begin();
    lw_claim_t c[2];
    h_svc_t *s = lw_waiters_start("pass", c, 2);
    h_sleep_ms(300);

    h_redis_cmd("EVAL %s 1 %s",
                "redis.call('DEL', KEYS[1]) "
                "return redis.call('HSET', KEYS[1], 'not', 'a lock')",
                "coupon:{pass}:lock");
    double msg0 = h_metric(s, LW_WAKE_MESSAGE);
    h_redis_cmd("PUBLISH coupon:{pass}:released coupon:{pass}:lock");
    for (int i = 0; i < 2; i++) {
        lw_claim_join(&c[i]);
        TT_EQ_INT(c[i].status, 503);
    }
    TT_EQ_INT(h_metric(s, LW_WAKE_MESSAGE) - msg0, 2);
    TT_EQ_INT(h_metric(s, LW_WAITERS), 0);
}

/* Fairness across processes: instance A claims in a closed loop from 16
 * threads on a hot coupon; instance B, with a short lock wait (150 ms),
 * claims 20 times, one after the other, while A's load runs. B must get the
 * lock every time within its wait: A's releases reach B's subscriber at
 * once, A's new claims queue behind A's waiters instead of barging, and A
 * holds back after a release that reached B (the handoff window). With
 * the polling baseline B sleeps between attempts while A's claims keep
 * taking the lock, and some of B's claims run out of wait. This is a
 * liveness bound (no starved waiter), not a speed. */
TT_TEST(lock_wait_no_replica_starves, 120) {
    H_REDIS_ONLY(); /* the handoff window is the Pub/Sub waiting's */
    h_begin();
    const char *envb[] = {"COUPON_LOCK_WAIT_MS=150", NULL};
    const char *enva[] = {"COUPON_LOCK_WAIT_MS=20000", NULL};
    lw_fair_t l = {.a = h_svc_start("fa", enva), .coupon = "fair", .n = 3000};
    h_svc_t *b = h_svc_start("fb", envb);
    h_coupon(l.a, "fair", 4000);
    lw_fair_run(&l, b);
    lw_fair_check(&l, 4000);
}

/* The release is sent at once, its reply read later: right after a 201
 * the lock key is gone, also when the script cache was flushed just before
 * the claim (a release sent as EVALSHA would then come back NOSCRIPT with
 * nobody reading it, and the lock would stay until the worker's next
 * command or the TTL), and with one worker, whose next claim reads the
 * reply it left behind before its own acquire. */
TT_TEST(lock_release_sent_at_once, 60) {
    h_begin();
    const char *env[] = {"COUPON_THREADS=1", NULL};
    h_svc_t *s = h_svc_start("rel", env);
    h_coupon(s, "rel", 5);
    json_t *j = NULL;
    TT_EQ_INT(h_claim(s, "rel", "u0", &j), 201);
    json_decref(j);
    TT_EQ_INT(h_redis_cmd("EXISTS coupon:{rel}:lock"), 0);
    h_redis_cmd("SCRIPT FLUSH");
    TT_EQ_INT(h_claim(s, "rel", "u1", &j), 201);
    json_decref(j);
    TT_EQ_INT(h_redis_cmd("EXISTS coupon:{rel}:lock"), 0);
    TT_EQ_INT(h_claim(s, "rel", "u2", &j), 201);
    json_decref(j);
    TT_EQ_INT(h_redis_cmd("EXISTS coupon:{rel}:lock"), 0);
    h_check_invariants("rel", 5, 3);
}
