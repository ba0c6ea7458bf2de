/*
 * lw_common.h: helpers shared by the lock-wait tests (test_lock_wait.c,
 * test_lock_wait_faults.c): the test holds a coupon's lock itself, releases
 * it with or without the announcement, and runs claims in threads.
 */
#ifndef COUPONSVC_LW_COMMON_H
#define COUPONSVC_LW_COMMON_H

#include <jansson.h>
#include <pthread.h>

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

#endif
