/*
 * lw_common.h: helpers shared by the lock-wait tests (test_lock_wait.c,
 * test_lock_wait_faults.c): the test holds a coupon's lock itself, releases
 * it with or without the announcement, and runs claims in threads.
 */
#ifndef COUPONSVC_LW_COMMON_H
#define COUPONSVC_LW_COMMON_H

#include <jansson.h>
#include <pthread.h>
#include <stdio.h>

#include "harness.h"
#include "tt.h"

#define LW_BUSY "couponsvc_lock_acquisitions_total{result=\"busy\"}"
#define LW_WAITERS "couponsvc_lock_waiters"
#define LW_WAKE_MESSAGE "couponsvc_lock_wakeups_total{cause=\"message\"}"
#define LW_WAKE_RECHECK "couponsvc_lock_wakeups_total{cause=\"recheck\"}"
#define LW_WAKE_RECONNECT "couponsvc_lock_wakeups_total{cause=\"reconnect\"}"

/* Tests that need several waiters of one coupon in one process turn
 * combining off: with it, one claim per coupon per process (the leader)
 * waits for the lock and the others park behind it. */
#define LW_UNCOMBINED "COUPON_BATCH_MAX=1"

/* Takes coupon's lock with a token the service does not know, for 30 s. */
static inline void lw_hold(const char *coupon) {
    h_redis_cmd("SET coupon:{%s}:lock test-holder PX 30000", coupon);
}

/* Releases it as the release script does: DEL and PUBLISH in one step. */
static inline void lw_release_announced(const char *coupon) {
    char key[96], ch[96];
    snprintf(key, sizeof(key), "coupon:{%s}:lock", coupon);
    snprintf(ch, sizeof(ch), "coupon:{%s}:released", coupon);
    h_redis_cmd("EVAL %s 2 %s %s",
                "redis.call('DEL', KEYS[1]) "
                "return redis.call('PUBLISH', KEYS[2], KEYS[1])",
                key, ch);
}

/* One claim in a thread of its own. */
typedef struct lw_claim {
    const h_svc_t *s;
    const char *coupon, *user;
    long status;
    long long fence;
    pthread_t t;
} lw_claim_t;

static inline void *lw__run(void *p) {
    lw_claim_t *c = p;
    json_t *j = NULL;
    c->status = h_claim(c->s, c->coupon, c->user, &j);
    json_t *f = json_object_get(j, "fence");
    c->fence = json_is_integer(f) ? json_integer_value(f) : -1;
    json_decref(j);
    return NULL;
}

static inline void lw_claim_start(lw_claim_t *c, const h_svc_t *s,
                                  const char *coupon, const char *user) {
    c->s = s;
    c->coupon = coupon;
    c->user = user;
    c->status = -1;
    c->fence = -1;
    TT_ASSERT(pthread_create(&c->t, NULL, lw__run, c) == 0);
}

static inline void lw_claim_join(lw_claim_t *c) {
    pthread_join(c->t, NULL);
}

/* The waiting setting most waiter tests start from: one instance `name`
 * (lock wait 15 s, a re-check every 250 ms, 4 threads, combining off), the
 * coupon `name` with stock 5, its lock held by the test (lw_hold), and n
 * claims (users u0, u1, ...; n <= 8) started one after the other, each one
 * counted among the waiters before the next starts. Returns the instance
 * (harness-owned). */
static inline h_svc_t *lw_waiters_start(const char *name, lw_claim_t *c,
                                        int n) {
    static const char *const users[] = {"u0", "u1", "u2", "u3",
                                        "u4", "u5", "u6", "u7"};
    TT_ASSERT(n >= 0 && n <= 8);
    const char *env[] = {"COUPON_LOCK_WAIT_MS=15000",
                         "COUPON_LOCK_RECHECK_MS=250", "COUPON_THREADS=4",
                         LW_UNCOMBINED, NULL};
    h_svc_t *s = h_svc_start(name, env);
    h_coupon(s, name, 5);
    lw_hold(name);
    for (int i = 0; i < n; i++) {
        lw_claim_start(&c[i], s, name, users[i]);
        TT_EQ_INT(h_wait_metric(s, LW_WAITERS, i + 1, 5000), i + 1);
    }
    return s;
}

/* Fairness across processes: instance a claims coupon in a closed loop
 * from 16 threads (n claims in all) while instance b claims it 20 times,
 * one after the other. B must get the lock every time within its wait. */
typedef struct lw_fair {
    h_svc_t *a;         /* the greedy instance (harness-owned) */
    const char *coupon; /* borrowed: a literal */
    int n;              /* A's claims */
    h_counts_t c;       /* A's answers */
    long b_busy;        /* B's claims that ran out of lock wait (503) */
    double a_grants;    /* A's grants when B was done */
} lw_fair_t;

static inline void *lw__fair_load(void *p) {
    lw_fair_t *l = p;
    h_claim_many(&l->a, 1, l->coupon, "a", l->n, 16, &l->c);
    return NULL;
}

/* Runs the scenario: A's load in a thread, B's 20 claims once A has 50
 * grants, then waits for A's load to end. */
static inline void lw_fair_run(lw_fair_t *l, const h_svc_t *b) {
    pthread_t t;
    TT_ASSERT(pthread_create(&t, NULL, lw__fair_load, l) == 0);
    h_wait_metric(l->a, "couponsvc_lock_grants_total", 50, 10000);
    l->b_busy = 0;
    for (int i = 0; i < 20; i++) {
        char u[16];
        snprintf(u, sizeof(u), "b%d", i);
        long st = h_claim(b, l->coupon, u, NULL);
        TT_ASSERT_MSG(st == 201 || st == 503, "B's claim answered %ld", st);
        l->b_busy += st == 503;
    }
    l->a_grants = h_metric(l->a, "couponsvc_lock_grants_total");
    pthread_join(t, NULL);
}

/* None of B's claims starved, and the coupon's invariants hold. */
static inline void lw_fair_check(const lw_fair_t *l, long stock) {
    TT_ASSERT_MSG(l->b_busy == 0,
                  "B's claims starved: %ld of 20 ran out of lock wait while "
                  "A had %g grants",
                  l->b_busy, l->a_grants);
    h_check_invariants(l->coupon, stock, l->c.by_status[201] + 20 - l->b_busy);
}

#endif
