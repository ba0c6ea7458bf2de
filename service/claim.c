/*
 * claim.c: see claim.h. The lock-mode flow, as in the README:
 *
 *   1. acquire coupon:{ID}:lock with a fresh token; the same script draws
 *      the fence (one round trip). Busy: wait, bounded by the deadline.
 *   2. hand the lease to the watchdog, which keeps extending it.
 *   3. one transaction: check, fenced conditional UPDATE + INSERT, and right
 *      before COMMIT the gate: is the lease still ours? If not, roll back.
 *   4. take the lease back from the watchdog, then release (compare token,
 *      DEL, PUBLISH); always, also on error paths.
 *   5. if PostgreSQL refused our fence while our token was still in Redis,
 *      the Redis counter went backwards (Redis lost it): raise it to
 *      last_fence and try once more with a new lease.
 */
#include "claim.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fault.h"
#include "lock.h"
#include "lock_wait.h"
#include "log.h"
#include "metrics.h"
#include "mono.h"
#include "store.h"
#include "wd.h"

/* Set once by claim_init, read-only afterwards. */
static const cfg_t *claim__cfg;
static wd_t *claim__wd;
static pthread_key_t claim__key;

/* A worker thread's connections. */
typedef struct claim__conns {
    lock_client_t *lock;
    store_t *store;
} claim__conns_t;

static void claim__conns_free(void *p) {
    claim__conns_t *c = p;
    if (c != NULL) {
        lock_client_free(c->lock);
        store_free(c->store);
        free(c);
    }
}

/* The calling thread's connections, created on first use. NULL only when
 * out of memory. Borrowed: freed when the thread exits. */
static claim__conns_t *claim__conns(void) {
    claim__conns_t *c = pthread_getspecific(claim__key);
    if (c != NULL) {
        return c;
    }
    c = calloc(1, sizeof(*c));
    if (c == NULL) {
        return NULL;
    }
    const cfg_t *cfg = claim__cfg;
    store_opts_t so;
    store_opts_from_cfg(&so, cfg);
    c->store = store_new(&so);
    c->lock = lock_client_new(&cfg->redis[0], cfg->redis_timeout_ms);
    if (c->store == NULL || c->lock == NULL ||
        pthread_setspecific(claim__key, c) != 0) {
        claim__conns_free(c);
        return NULL;
    }
    return c;
}

int claim_init(const cfg_t *cfg) {
    claim__cfg = cfg;
    lock_init(cfg->redis_username, cfg->redis_password);
    lock_wait_config(cfg->lock_wait_poll, cfg->lock_recheck_ms, &cfg->redis[0],
                     cfg->redis_timeout_ms);
    if (pthread_key_create(&claim__key, claim__conns_free) != 0) {
        log_error("claim.init", "pthread_key_create failed");
        return -1;
    }
    if (cfg->mode == CLAIM_MODE_LOCK) {
        claim__wd = wd_start(&cfg->redis[0], cfg->redis_timeout_ms,
                             cfg->watchdog_period_ms);
        if (claim__wd == NULL) {
            log_error("claim.init", "cannot start the watchdog");
            return -1;
        }
        wd_set_max_hold(claim__wd, cfg->lock_max_hold_ms);
    }
    return 0;
}

void claim_shutdown(void) {
    lock_wait_shutdown();
    wd_stop(claim__wd);
    claim__wd = NULL;
}

/* ------------------------------------------------------------ outcomes --- */

static void claim__set(claim_result_t *out, claim_outcome_t o,
                       const char *detail) {
    out->outcome = o;
    snprintf(out->detail, sizeof(out->detail), "%s", detail);
}

static void claim__from_item(claim_result_t *out, const store_item_t *it) {
    out->claim_id = it->claim_id;
    out->fence = it->fence;
    out->remaining = it->remaining;
    switch (it->status) {
    case STORE_OK:
        out->outcome = CLAIM_CLAIMED;
        break;
    case STORE_ALREADY:
        out->outcome = CLAIM_ALREADY;
        break;
    default:
        out->outcome = CLAIM_SOLD_OUT;
        break;
    }
}

static void claim__count(const claim_result_t *out) {
    static const metrics_counter_t m[] = {
        [CLAIM_CLAIMED] = M_CLAIM_CLAIMED,
        [CLAIM_ALREADY] = M_CLAIM_ALREADY,
        [CLAIM_SOLD_OUT] = M_CLAIM_SOLD_OUT,
        [CLAIM_NOT_FOUND] = M_CLAIM_NOT_FOUND,
        [CLAIM_FENCED] = M_CLAIM_FENCED,
        [CLAIM_BUSY] = M_CLAIM_BUSY,
        [CLAIM_UNAVAILABLE] = M_CLAIM_UNAVAILABLE,
        [CLAIM_LEASE_LOST] = M_CLAIM_LEASE_LOST,
        [CLAIM_COMMIT_UNKNOWN] = M_CLAIM_COMMIT_UNKNOWN,
    };
    metrics_inc(m[out->outcome]);
}

/* Maps what the store answered for a one-item claim. */
static void claim__from_store(claim_result_t *out, int src,
                              const store_item_t *it, store_t *st) {
    switch (src) {
    case STORE_OK:
        claim__from_item(out, it);
        break;
    case STORE_NOT_FOUND:
        claim__set(out, CLAIM_NOT_FOUND, "no such coupon");
        break;
    case STORE_ABORTED:
        claim__set(out, CLAIM_LEASE_LOST,
                   "the lock lease was lost before commit; nothing written");
        break;
    case STORE_COMMIT_UNKNOWN:
        /* The reason (deadline, connection reset) goes to the log; the
         * client needs to know only what to do. */
        log_warn("claim.commit_unknown", "err=\"%s\"", store_errstr(st));
        claim__set(out, CLAIM_COMMIT_UNKNOWN,
                   "retry: a retry returns the claim if it was made");
        break;
    default:
        claim__set(out, CLAIM_UNAVAILABLE, store_errstr(st));
        break;
    }
}

/* ---------------------------------------------------------- lock mode --- */

/* The commit gate: the last moment the claim can still back out. */
static int claim__gate(void *arg) {
    lock_lease_t *lease = arg;
    fault_pause(FAULT_BEFORE_COMMIT);
    if (lock_lease_usable(lease)) {
        return 0;
    }
    /* The watchdog may not have noticed yet (its thread was frozen with
     * ours, or its round is still in flight): record the loss here. */
    wd_lost(lease, "expired_at_commit");
    return 1;
}

static void claim__locked(claim__conns_t *c, const char *coupon,
                          const char *user, int64_t deadline,
                          claim_result_t *out) {
    const cfg_t *cfg = claim__cfg;
    if (deadline == 0) {
        deadline = mono_ns() + (int64_t)cfg->lock_wait_ms * MONO_MS;
    } else if (mono_ns() >= deadline) {
        /* It waited in the worker queue past its deadline: answer now
         * and ask Redis nothing. A queue that long means the instance is
         * overloaded, and a lock round trip would only add load. */
        claim__set(out, CLAIM_BUSY,
                   "the request waited in this instance's queue past its "
                   "lock-wait deadline; nothing was tried");
        return;
    }

    for (int attempt = 0;; attempt++) {
        lock_lease_t lease;
        int64_t waited = 0;
        int lrc = lock_acquire(c->lock, coupon, cfg->lock_ttl_ms, deadline,
                               &lease, &waited);
        metrics_observe_lock_wait((uint64_t)waited);
        if (lrc == LOCK_BUSY) {
            claim__set(out, CLAIM_BUSY,
                       "the coupon's lock stayed busy past the wait deadline");
            return;
        }
        if (lrc != LOCK_OK) {
            claim__set(out, CLAIM_UNAVAILABLE, lock_errstr(c->lock));
            log_warn("claim.lock_error", "coupon=%s err=\"%s\"", coupon,
                     lock_errstr(c->lock));
            return;
        }

        wd_watch(claim__wd, &lease);
        fault_pause(FAULT_AFTER_ACQUIRE);

        store_item_t item = {.user_id = user};
        int64_t last_fence = 0;
        int src = store_claim(c->store, coupon, lease.fence, &item, 1,
                              claim__gate, &lease, &last_fence);
        if (src == STORE_OK && item.status == STORE_OK) {
            fault_pause(FAULT_AFTER_COMMIT);
        }

        /* Refused by the fence: a stale holder, or a counter that went
         * backwards? Ask while we still (maybe) hold the lock: if our token
         * is still there, nobody newer holds it, so the fence that beat us
         * can only come from before a Redis data loss. */
        int current = src == STORE_FENCED && lock_check(c->lock, &lease) == 1;

        /* Stop renewing BEFORE releasing, so the watchdog sends no renewal
         * after the release; then release, on every path. (A renewal that
         * timed out may still run in Redis after the release: the EXTEND
         * script's token compare makes it a no-op; see wd.h.) */
        wd_unwatch(claim__wd, &lease);
        int rrc = lock_release(c->lock, &lease);
        if (rrc == LOCK_ERR) {
            log_warn("lock.release_failed",
                     "key=%s fence=%lld err=\"%s\" (expires by TTL)", lease.key,
                     (long long)lease.fence, lock_errstr(c->lock));
        }

        if (src != STORE_FENCED) {
            claim__from_store(out, src, &item, c->store);
            out->fence = src == STORE_OK ? item.fence : lease.fence;
            if (src == STORE_ABORTED) {
                log_warn("claim.lease_lost", "coupon=%s user=%s fence=%lld",
                         coupon, user, (long long)lease.fence);
            }
            return;
        }

        /* Raising is safe whoever we are: it only ever moves the counter up
         * to a fence PostgreSQL has already accepted. */
        int64_t now_at = 0;
        int raised =
            lock_raise_fence(c->lock, coupon, last_fence, &now_at) == LOCK_OK;
        if (current && raised && attempt == 0) {
            metrics_inc(M_FENCE_RECOVERIES);
            log_warn("fence.recovered",
                     "coupon=%s fence=%lld last_fence=%lld counter=%lld "
                     "(Redis lost the counter; retrying with a new lease)",
                     coupon, (long long)lease.fence, (long long)last_fence,
                     (long long)now_at);
            continue;
        }
        log_warn("claim.fenced", "coupon=%s user=%s fence=%lld last_fence=%lld",
                 coupon, user, (long long)lease.fence, (long long)last_fence);
        out->fence = lease.fence;
        snprintf(out->detail, sizeof(out->detail),
                 "fence %lld is not above the coupon's last accepted fence "
                 "%lld: this lease is stale; nothing was written",
                 (long long)lease.fence, (long long)last_fence);
        out->outcome = CLAIM_FENCED;
        return;
    }
}

/* -------------------------------------------------- naive, atomic modes --- */

static int claim__gate_fault_only(void *arg) {
    (void)arg;
    fault_pause(FAULT_BEFORE_COMMIT);
    return 0;
}

void claim_one(const char *coupon, const char *user, int64_t deadline_ns,
               claim_result_t *out) {
    memset(out, 0, sizeof(*out));
    out->fence = -1;
    claim__conns_t *c = claim__conns();
    if (c == NULL) {
        claim__set(out, CLAIM_UNAVAILABLE, "out of memory");
        claim__count(out);
        return;
    }

    store_item_t item = {.user_id = user};
    int src;
    switch (claim__cfg->mode) {
    case CLAIM_MODE_LOCK:
        claim__locked(c, coupon, user, deadline_ns, out);
        break;
    case CLAIM_MODE_ATOMIC:
        src = store_claim(c->store, coupon, STORE_NO_FENCE, &item, 1,
                          claim__gate_fault_only, NULL, NULL);
        claim__from_store(out, src, &item, c->store);
        break;
    case CLAIM_MODE_NAIVE:
        src = store_claim_naive(c->store, coupon, &item);
        claim__from_store(out, src, &item, c->store);
        break;
    }

    claim__count(out);
    if (out->outcome == CLAIM_CLAIMED) {
        log_info("claim.ok", "coupon=%s user=%s claim=%lld fence=%lld", coupon,
                 user, (long long)out->claim_id, (long long)out->fence);
    } else if (out->outcome == CLAIM_UNAVAILABLE) {
        log_warn("claim.unavailable", "coupon=%s err=\"%s\"", coupon,
                 out->detail);
    }
}

/* --------------------------------------------------------------- admin --- */

int claim_coupon_create(const char *id, int64_t total, char *detail,
                        size_t len) {
    claim__conns_t *c = claim__conns();
    if (c == NULL) {
        snprintf(detail, len, "out of memory");
        return -1;
    }
    int rc = store_coupon_create(c->store, id, total);
    if (rc == STORE_ERR) {
        snprintf(detail, len, "%s", store_errstr(c->store));
        return -1;
    }
    if (rc == STORE_OK) {
        log_info("coupon.created", "coupon=%s total=%lld", id,
                 (long long)total);
    }
    return rc == STORE_OK ? 0 : 1;
}

int claim_coupon_get(const char *id, claim_coupon_t *out, char *detail,
                     size_t len) {
    claim__conns_t *c = claim__conns();
    if (c == NULL) {
        snprintf(detail, len, "out of memory");
        return -1;
    }
    store_coupon_t sc;
    int rc = store_coupon_get(c->store, id, &sc);
    if (rc == STORE_ERR) {
        snprintf(detail, len, "%s", store_errstr(c->store));
        return -1;
    }
    if (rc == STORE_NOT_FOUND) {
        return 1;
    }
    out->total = sc.total;
    out->claimed = sc.claimed;
    out->last_fence = sc.last_fence;
    return 0;
}
