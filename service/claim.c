/*
 * claim.c: see claim.h (and claim_int.h for the combiner's entry, the
 * batch's answers and the sanity checks this file asserts). The lock-mode
 * flow, as in the README:
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
 *
 * Combining (lock mode, COUPON_BATCH_MAX > 1): who parks where, and what a
 * batch shares.
 *
 *   - Every coupon with a claim in flight in this process has one entry
 *     (claim__res_t) in a hash table under one mutex (claim__mu): its queue
 *     of parked claims and a flag, led, saying that it has a leader. The
 *     key is the lock's resource: the coupon id.
 *   - A claim that finds no leader becomes the leader and takes a worker
 *     (CLAIM_SUBMIT_RUN). A claim that finds one parks in the queue on its
 *     suspended connection and holds no thread (CLAIM_SUBMIT_PARKED), unless
 *     admission control refuses it first: the coupon's queue is at
 *     COUPON_QUEUE_MAX_PER_COUPON, the process's parked claims are at
 *     COUPON_QUEUE_MAX, or the batches ahead of it (the queue length over
 *     the batch size, times the coupon's recent batch duration) would run
 *     past its deadline. A refused claim is answered 503 overloaded with
 *     Retry-After at once, on the event loop.
 *   - The leader acquires the coupon's lease (lock_acquire waits inside, up
 *     to the leader's own deadline), then takes up to COUPON_BATCH_MAX - 1
 *     parked claims off the head of the queue; a claim whose deadline passed
 *     while it was parked is answered 503 lock_busy and left out. The batch
 *     shares one lease, hence one fence, and one transaction
 *     (store_claim with n items), as the fence rule requires: writes may
 *     repeat a fence only within the transaction of the lease that drew it.
 *     After COMMIT (or ROLLBACK) the lease is released; the next batch takes
 *     a new lease, so every transaction has a fence of its own.
 *   - Each claim of the batch gets its own answer: 201 claimed now, 200 its
 *     existing claim (also the second of one user twice in the batch, who
 *     gets the first's), 410 past the stock. A lease found lost at the
 *     commit gate rolls the batch back and puts its claims back at the head
 *     of the queue, in order, for the next lease (each still within its own
 *     deadline, else 503 lease_lost). A fence refused while the lease still
 *     holds the lock is recovered as for a single claim (raise the counter,
 *     one retry of the same batch with a new lease); otherwise every claim
 *     of the batch is answered 409 fenced.
 *   - The leadership passes on without a gap: when the batch is answered and
 *     claims are still parked, the head of the queue becomes the leader and
 *     is queued for a worker (w->dispatch); when the worker queue is empty,
 *     the same worker takes it at once. Invariant (claim__res_ok): an entry
 *     exists iff it is led or has parked claims; it has parked claims only
 *     while it is led. So no parked claim is ever left without a leader that
 *     will take it, or answer it.
 *   - At shutdown a leader that no worker will run (claim_cancel), or a
 *     dispatch that is refused, answers its queue 503 shutting_down; parked
 *     claims are part of the requests the HTTP layer drains.
 *
 * With COUPON_BATCH_MAX = 1, and in the naive and atomic modes, claims are
 * not combined: each waits for the lock (if any) on its own worker.
 *
 * The sold-out fast path (COUPON_SOLDOUT_MEMO): no API adds stock or
 * moves a window, so a coupon once sold out, or past its ends_at, stays so
 * and its claimants never change. The first time a worker sees a coupon
 * sold out or expired it loads every claimant with its claim
 * (store_claimants: one transaction that takes the stock rows' locks before
 * it judges the coupon, so the set it reads is final): the full user id,
 * the claim's id and fence, kept sorted by a 64-bit hash of the user id
 * (seeded per process, so nobody can aim collisions at it), published with
 * an atomic store. claim_submit, on the event loop, then answers every claim
 * from memory: a user found in the set (the hash finds the candidates, the
 * user id itself decides, so a collision cannot answer wrong) gets 200 with
 * its claim, exactly what the store would read (a claim never changes once
 * written, nor does a final coupon's stock); any other user gets 410
 * (sold_out or expired, as the store judged the coupon). The set is
 * published only if it holds exactly the coupon's claimed count, as a
 * check.
 */
#include "claim.h"
#include "claim_int.h"

#include <assert.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "fault.h"
#include "lock.h"
#include "log.h"
#include "metrics.h"
#include "mono.h"
#include "store.h"
#include "wd.h"

_Static_assert(REQ_NO_TIME == STORE_NO_TIME, "one value for no bound");
_Static_assert(REQ_BUCKETS_MAX == STORE_BUCKETS_MAX, "one bucket limit");

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
    c->lock = lock_client_new(cfg);
    if (c->store == NULL || c->lock == NULL ||
        pthread_setspecific(claim__key, c) != 0) {
        claim__conns_free(c);
        return NULL;
    }
    return c;
}

static uint64_t claim__seed;

int claim_init(const cfg_t *cfg) {
    claim__cfg = cfg;
    if (getrandom(&claim__seed, sizeof(claim__seed), 0) !=
        (ssize_t)sizeof(claim__seed)) {
        log_error("claim.init", "no randomness for the claimant hash seed");
        return -1;
    }
    if (pthread_key_create(&claim__key, claim__conns_free) != 0) {
        log_error("claim.init", "pthread_key_create failed");
        return -1;
    }
    if (cfg->mode == CLAIM_MODE_LOCK) {
        claim__wd = wd_start(cfg, cfg->watchdog_period_ms);
        if (claim__wd == NULL) {
            log_error("claim.init", "cannot start the watchdog");
            return -1;
        }
        wd_set_max_hold(claim__wd, cfg->lock_max_hold_ms);
    }
    return 0;
}

void claim_shutdown(void) {
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
    case STORE_NOT_STARTED:
        out->outcome = CLAIM_NOT_STARTED;
        break;
    case STORE_EXPIRED:
        out->outcome = CLAIM_EXPIRED;
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
        [CLAIM_OVERLOADED] = M_CLAIM_OVERLOADED,
        [CLAIM_SHUTTING_DOWN] = M_CLAIM_SHUTTING_DOWN,
        [CLAIM_NOT_STARTED] = M_CLAIM_NOT_STARTED,
        [CLAIM_EXPIRED] = M_CLAIM_EXPIRED,
    };
    metrics_inc(m[out->outcome]);
}

/* Maps what the store answered for a one-item claim; errstr is the
 * store's (borrowed), the detail of a failure. */
static void claim__from_store(claim_result_t *out, int src,
                              const store_item_t *it, const char *errstr) {
    switch (src) {
    case STORE_OK:
        claim__from_item(out, it);
        break;
    case STORE_NOT_FOUND:
        claim__set(out, CLAIM_NOT_FOUND, "no such coupon");
        break;
    case STORE_NOT_STARTED:
    case STORE_EXPIRED:
        /* The window refused the whole call; a user who holds a claim
         * still gets it back. */
        if (it->status == STORE_ALREADY) {
            claim__from_item(out, it);
        } else {
            claim__set(out,
                       src == STORE_EXPIRED ? CLAIM_EXPIRED : CLAIM_NOT_STARTED,
                       src == STORE_EXPIRED
                           ? "the coupon's claim window has ended"
                           : "the coupon's claim window has not started");
        }
        break;
    case STORE_ABORTED:
        claim__set(out, CLAIM_LEASE_LOST,
                   "the lock lease was lost before commit; nothing written");
        break;
    case STORE_COMMIT_UNKNOWN:
        /* The reason (deadline, connection reset) goes to the log; the
         * client needs to know only what to do. */
        log_warn("claim.commit_unknown", "err=\"%s\"", errstr);
        claim__set(out, CLAIM_COMMIT_UNKNOWN,
                   "retry: a retry returns the claim if it was made");
        break;
    default:
        claim__set(out, CLAIM_UNAVAILABLE, errstr);
        break;
    }
}

int claim__batch_answer(int src, const store_item_t *it, int64_t lease_fence,
                        const char *errstr, claim_result_t *o) {
    if (src == STORE_OK && it->status == STORE_BUCKET_EMPTY) {
        return CLAIM__MOVED; /* another bucket still has stock */
    }
    claim__from_store(o, src, it, errstr);
    o->fence = src == STORE_OK ? it->fence : lease_fence;
    return CLAIM__ANSWERED;
}

void claim__tally_add(claim__tally_t *t, int how, const claim_result_t *o) {
    if (how == CLAIM__MOVED) {
        t->moved++;
    } else {
        assert((unsigned)o->outcome < CLAIM__NOUTCOMES);
        t->outcome[o->outcome]++;
    }
}

int claim__tally_ok(const claim__tally_t *t) {
    size_t sum = t->moved;
    for (size_t i = 0; i < CLAIM__NOUTCOMES; i++) {
        sum += t->outcome[i];
    }
    return sum == t->n && t->outcome[CLAIM_CLAIMED] == t->written;
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

static void claim__shape_learn(const char *coupon, store_t *st);
static void claim__resource(char *key, size_t n, const char *coupon,
                            int bucket);
static int claim__gate_fault_only(void *arg);

/* Claims run lockless since the last claim.degraded line. */
static _Atomic uint64_t claim__degraded_quiet;

/* Counts n claims that ran without the lock (the metric, and the next
 * claim.degraded line's count). */
static void claim__degraded(size_t n) {
    for (size_t i = 0; i < n; i++) {
        metrics_inc(M_CLAIMS_DEGRADED);
    }
    atomic_fetch_add(&claim__degraded_quiet, n);
}

/* After a lock attempt found the backend unavailable, the degraded mode
 * skips the lock for this long (monotonic deadline in claim__lock_down),
 * then tries it again: a black-holed Redis would otherwise cost every
 * claim (every batch) a full Redis timeout before it went lockless. */
#define CLAIM__LOCK_RETRY_NS (1000 * MONO_MS)
static _Atomic int64_t claim__lock_down;

/* 1 while claims skip the lock (COUPON_LOCK_UNAVAILABLE=atomic, and the
 * backend was found unavailable less than CLAIM__LOCK_RETRY_NS ago). */
static int claim__lock_skipped(void) {
    return claim__cfg->lock_unavailable_atomic &&
           mono_ns() < atomic_load(&claim__lock_down);
}

/* The degraded mode (COUPON_LOCK_UNAVAILABLE=atomic): 1 when the lock
 * attempt that just failed on cl failed because the backend is unavailable
 * (LOCK_EIO: unreachable, timed out, no quorum), so that the claim may run
 * without the lock, by the atomic mode's conditional UPDATE. Busy locks and
 * auth, permission or protocol errors never qualify: those are not an
 * outage the lock can do nothing about, they are answers. Logged at most
 * once a second per process, with how many claims went lockless since the
 * last line. */
static int claim__degrade(const lock_client_t *cl, const char *coupon) {
    if (!claim__cfg->lock_unavailable_atomic || lock_errkind(cl) != LOCK_EIO) {
        return 0;
    }
    static _Atomic int64_t last_log_ns;
    int64_t now = mono_ns(), last = atomic_load(&last_log_ns);
    atomic_store(&claim__lock_down, now + CLAIM__LOCK_RETRY_NS);
    if ((last == 0 || now - last >= 1000 * MONO_MS) &&
        atomic_compare_exchange_strong(&last_log_ns, &last, now)) {
        log_warn("claim.degraded",
                 "coupon=%s claims=%llu err=\"%s\" (the lock backend is "
                 "unavailable: claims run without the lock, PostgreSQL's "
                 "conditional UPDATE alone; COUPON_LOCK_UNAVAILABLE=atomic)",
                 coupon,
                 (unsigned long long)atomic_exchange(&claim__degraded_quiet, 0),
                 lock_errstr(cl));
    }
    return 1;
}

static int claim__gate_fault_only(void *arg);

/* One claim of user on bucket (-1: unsharded) of coupon by the atomic
 * mode's write: no fence, the stock and UNIQUE alone, exact without the
 * lock (the atomic mode, and the degraded lock mode). Returns 1 when the
 * claim must move to another bucket (as claim__locked), else 0 with *out
 * final. */
static int claim__atomic(claim__conns_t *c, const char *coupon, int bucket,
                         const char *user, claim_result_t *out) {
    store_item_t item = {.user_id = user};
    int src = store_claim(c->store, coupon, bucket, STORE_NO_FENCE, &item, 1,
                          claim__gate_fault_only, NULL, NULL);
    claim__shape_learn(coupon, c->store);
    if (src == STORE_WRONG_BUCKET ||
        (src == STORE_OK && item.status == STORE_BUCKET_EMPTY)) {
        return 1;
    }
    claim__from_store(out, src, &item, store_errstr(c->store));
    return 0;
}

/* After PostgreSQL refused a lease's fence (last_fence: the fence it had
 * already accepted on key's row): raises the lock's counter to it, and
 * returns 1 (counted in M_FENCE_RECOVERIES, *now_at the counter) when the
 * claim should run once more with a new lease: the lock was still ours
 * when the refusal came (current), so the fence that beat us can only be
 * from before a data loss, and this was the first attempt. Raising is safe
 * whoever we are: it only ever moves the counter up to a fence PostgreSQL
 * has already accepted. */
static int claim__fence_retry(claim__conns_t *c, const char *key,
                              int64_t last_fence, int current, int attempt,
                              int64_t *now_at) {
    int raised = lock_raise_fence(c->lock, key, last_fence, now_at) == LOCK_OK;
    if (current && raised && attempt == 0) {
        metrics_inc(M_FENCE_RECOVERIES);
        return 1;
    }
    return 0;
}

/* A fenced claim's answer: 409, its lease's fence and the one that beat
 * it. */
static void claim__fenced(claim_result_t *o, int64_t fence,
                          int64_t last_fence) {
    o->fence = fence;
    snprintf(o->detail, sizeof(o->detail),
             "fence %lld is not above the coupon's last accepted fence "
             "%lld: this lease is stale; nothing was written",
             (long long)fence, (long long)last_fence);
    o->outcome = CLAIM_FENCED;
}

/* Ends a lease after its transaction, on every path: returns 1 when the
 * store refused its fence (src STORE_FENCED) while the lock was still ours.
 * Refused by the fence: a stale holder, or a counter that went backwards?
 * Asked while we still (maybe) hold the lock: if our token is still there,
 * nobody newer holds it, so the fence that beat us can only come from
 * before a Redis data loss. Then the watchdog stops renewing BEFORE the
 * release, so it sends no renewal after it. (A renewal that timed out may
 * still run in Redis after the release: the EXTEND script's token compare
 * makes it a no-op; see wd.h.) */
static int claim__end_lease(claim__conns_t *c, lock_lease_t *lease, int src) {
    int current =
        src == STORE_FENCED && lock_check(c->lock, lease) == LOCK_HELD;
    wd_unwatch(claim__wd, lease);
    if (lock_release(c->lock, lease) == LOCK_ERR) {
        log_warn("lock.release_failed",
                 "key=%s fence=%lld err=\"%s\" (expires by TTL)", lease->key,
                 (long long)lease->fence, lock_errstr(c->lock));
    }
    return current;
}

/* One claim on bucket (-1: unsharded) of coupon. Returns 1 when the claim
 * must move to another bucket (this one is empty, or the coupon's shape was
 * not what we thought: the shape is learnt by then), else 0 with *out
 * final. */
static int claim__locked(claim__conns_t *c, const char *coupon, int bucket,
                         const char *user, int64_t deadline,
                         claim_result_t *out) {
    const cfg_t *cfg = claim__cfg;
    char resource[LOCK_KEY_MAX];
    claim__resource(resource, sizeof(resource), coupon, bucket);
    if (deadline == 0) {
        deadline = mono_ns() + (int64_t)cfg->lock_wait_ms * MONO_MS;
    } else if (mono_ns() >= deadline) {
        /* It waited in the worker queue past its deadline: answer now
         * and ask Redis nothing. A queue that long means the instance is
         * overloaded, and a lock round trip would only add load. */
        claim__set(out, CLAIM_BUSY,
                   "the request waited in this instance's queue past its "
                   "lock-wait deadline; nothing was tried");
        return 0;
    }

    for (int attempt = 0;; attempt++) {
        lock_lease_t lease;
        int64_t waited = 0;
        int skip = claim__lock_skipped();
        int lrc = skip ? LOCK_ERR
                       : lock_acquire(c->lock, resource, cfg->lock_ttl_ms,
                                      deadline, &lease, &waited);
        if (!skip) {
            metrics_observe_lock_wait((uint64_t)waited);
        }
        if (lrc == LOCK_BUSY) {
            claim__set(out, CLAIM_BUSY,
                       "the coupon's lock stayed busy past the wait deadline");
            return 0;
        }
        if (lrc == LOCK_ERR && (skip || claim__degrade(c->lock, coupon))) {
            claim__degraded(1);
            return claim__atomic(c, coupon, bucket, user, out);
        }
        if (lrc != LOCK_OK) {
            claim__set(out, CLAIM_UNAVAILABLE, lock_errstr(c->lock));
            log_warn("claim.lock_error", "coupon=%s err=\"%s\"", coupon,
                     lock_errstr(c->lock));
            return 0;
        }

        wd_watch(claim__wd, &lease);
        fault_pause(FAULT_AFTER_ACQUIRE);

        store_item_t item = {.user_id = user};
        int64_t last_fence = 0;
        int src = store_claim(c->store, coupon, bucket, lease.fence, &item, 1,
                              claim__gate, &lease, &last_fence);
        claim__shape_learn(coupon, c->store);
        if (src == STORE_OK && item.status == STORE_OK) {
            fault_pause(FAULT_AFTER_COMMIT);
        }

        int current = claim__end_lease(c, &lease, src);

        if (src == STORE_WRONG_BUCKET ||
            (src == STORE_OK && item.status == STORE_BUCKET_EMPTY)) {
            return 1;
        }
        if (src != STORE_FENCED) {
            claim__from_store(out, src, &item, store_errstr(c->store));
            out->fence = src == STORE_OK ? item.fence : lease.fence;
            if (src == STORE_ABORTED) {
                log_warn("claim.lease_lost", "coupon=%s user=%s fence=%lld",
                         coupon, user, (long long)lease.fence);
            }
            return 0;
        }

        int64_t now_at = 0;
        if (claim__fence_retry(c, resource, last_fence, current, attempt,
                               &now_at)) {
            log_warn("fence.recovered",
                     "coupon=%s fence=%lld last_fence=%lld counter=%lld "
                     "(Redis lost the counter; retrying with a new lease)",
                     coupon, (long long)lease.fence, (long long)last_fence,
                     (long long)now_at);
            continue;
        }
        log_warn("claim.fenced", "coupon=%s user=%s fence=%lld last_fence=%lld",
                 coupon, user, (long long)lease.fence, (long long)last_fence);
        claim__fenced(out, lease.fence, last_fence);
        return 0;
    }
}

/* -------------------------------------------------- naive, atomic modes --- */

static int claim__gate_fault_only(void *arg) {
    (void)arg;
    fault_pause(FAULT_BEFORE_COMMIT);
    return 0;
}

static void claim__memo_build(claim__conns_t *c, const char *coupon);
static int claim__pick(const char *coupon, const char *user);

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
    int src, hops = 0, again = 1;
    switch (claim__cfg->mode) {
    case CLAIM_MODE_LOCK:
    case CLAIM_MODE_ATOMIC:
        /* A sharded coupon: a bucket with stock, starting at the user's
         * hash; moved on while the store finds buckets empty. */
        while (again && hops++ <= STORE_BUCKETS_MAX) {
            int bucket = claim__pick(coupon, user);
            again =
                claim__cfg->mode == CLAIM_MODE_LOCK
                    ? claim__locked(c, coupon, bucket, user, deadline_ns, out)
                    : claim__atomic(c, coupon, bucket, user, out);
        }
        if (again) {
            claim__set(out, CLAIM_UNAVAILABLE,
                       "the coupon's buckets kept emptying under this claim; "
                       "retry");
        }
        break;
    case CLAIM_MODE_NAIVE:
        src = store_claim_naive(c->store, coupon, &item);
        claim__from_store(out, src, &item, store_errstr(c->store));
        break;
    }

    claim__count(out);
    if (out->outcome == CLAIM_CLAIMED) {
        log_info("claim.ok", "coupon=%s user=%s claim=%lld fence=%lld", coupon,
                 user, (long long)out->claim_id, (long long)out->fence);
    } else if (out->outcome == CLAIM_UNAVAILABLE) {
        log_warn("claim.unavailable", "coupon=%s err=\"%s\"", coupon,
                 out->detail);
    } else if ((out->outcome == CLAIM_SOLD_OUT ||
                out->outcome == CLAIM_EXPIRED) &&
               claim__cfg->mode != CLAIM_MODE_NAIVE) {
        claim__memo_build(c, coupon);
    }
}

/* --------------------------------------------------------------- admin --- */

_Static_assert((int)CLAIM_RC_OK == STORE_OK, "claim_rc_t is the store's");
_Static_assert((int)CLAIM_RC_NOT_FOUND == STORE_NOT_FOUND,
               "claim_rc_t is the store's");
_Static_assert((int)CLAIM_RC_EXISTS == STORE_EXISTS,
               "claim_rc_t is the store's");
_Static_assert((int)CLAIM_RC_ERR == STORE_ERR, "claim_rc_t is the store's");

/* The store's code of an admin call, as claim_rc_t: passed through, the
 * detail filled on failure. The store answers only the codes named there. */
static claim_rc_t claim__rc(int src, store_t *st, char *detail, size_t len) {
    assert(src == STORE_OK || src == STORE_NOT_FOUND || src == STORE_EXISTS ||
           src == STORE_ERR);
    if (src == STORE_ERR) {
        snprintf(detail, len, "%s", store_errstr(st));
    }
    return (claim_rc_t)src;
}

claim_rc_t claim_coupon_create(const req_coupon_t *rc, char *detail,
                               size_t len) {
    claim__conns_t *c = claim__conns();
    if (c == NULL) {
        snprintf(detail, len, "out of memory");
        return CLAIM_RC_ERR;
    }
    /* REQ_NO_TIME and STORE_NO_TIME are the same value: INT64_MIN. */
    int src = store_coupon_create(c->store, rc->id, rc->total, rc->buckets,
                                  rc->starts_at_us, rc->ends_at_us);
    if (src == STORE_OK) {
        log_info("coupon.created", "coupon=%s total=%lld buckets=%d", rc->id,
                 (long long)rc->total, rc->buckets);
    }
    return claim__rc(src, c->store, detail, len);
}

claim_rc_t claim_coupon_get(const char *id, claim_coupon_t *out, char *detail,
                            size_t len) {
    claim__conns_t *c = claim__conns();
    if (c == NULL) {
        snprintf(detail, len, "out of memory");
        return CLAIM_RC_ERR;
    }
    static _Thread_local store_coupon_t sc; /* 1.6 KiB: off the stack */
    int src = store_coupon_get(c->store, id, &sc);
    if (src != STORE_OK) {
        return claim__rc(src, c->store, detail, len);
    }
    out->total = sc.total;
    out->claimed = sc.claimed;
    out->last_fence = sc.last_fence;
    out->buckets = sc.buckets;
    for (int i = 0; i < sc.buckets && sc.buckets > 1; i++) {
        out->bucket[i].total = sc.bucket[i].total;
        out->bucket[i].claimed = sc.bucket[i].claimed;
        out->bucket[i].last_fence = sc.bucket[i].last_fence;
    }
    out->starts_at_us = sc.starts_at_us;
    out->ends_at_us = sc.ends_at_us;
    return CLAIM_RC_OK;
}

claim_rc_t claim_lookup(const char *coupon, const char *user,
                        claim_result_t *out) {
    memset(out, 0, sizeof(*out));
    claim__conns_t *c = claim__conns();
    if (c == NULL) {
        snprintf(out->detail, sizeof(out->detail), "out of memory");
        return CLAIM_RC_ERR;
    }
    store_item_t it = {.user_id = user};
    int src = store_claim_lookup(c->store, coupon, &it);
    if (src == STORE_OK) {
        claim__from_item(out, &it);
    }
    return claim__rc(src, c->store, out->detail, sizeof(out->detail));
}

/* ------------------------------------------------------ bucket choice --- */

/* What this process knows of a coupon's shape: its bucket count (fixed at
 * creation) and which buckets had stock at the last claim that told. Learnt
 * from every store_claim (store_claim_shape); guarded by claim__shape_mu. */
typedef struct claim__shape {
    char coupon[REQ_COUPON_ID_MAX + 1];
    int buckets;   /* 1: unsharded */
    uint64_t mask; /* bit b: bucket b had stock */
    struct claim__shape *next;
} claim__shape_t;

#define CLAIM__SHAPE_SLOTS 4096u
/* Coupons remembered; more go unsharded first and learn from the store's
 * answer. */
#define CLAIM__SHAPE_MAX 65536u

static pthread_mutex_t claim__shape_mu = PTHREAD_MUTEX_INITIALIZER;
static claim__shape_t *claim__shape_tab[CLAIM__SHAPE_SLOTS];
static uint32_t claim__nshapes;

static uint64_t claim__hash(const char *s);

static claim__shape_t *claim__shape_find(const char *coupon, unsigned slot) {
    claim__shape_t *x = claim__shape_tab[slot];
    while (x != NULL && strcmp(x->coupon, coupon) != 0) {
        x = x->next;
    }
    return x;
}

/* Records what the last store_claim on st said about coupon's shape. */
static void claim__shape_learn(const char *coupon, store_t *st) {
    int buckets = 0;
    uint64_t mask = 0;
    store_claim_shape(st, &buckets, &mask);
    if (buckets <= 0) {
        return; /* the call failed before it learnt anything */
    }
    unsigned slot = (unsigned)(claim__hash(coupon) % CLAIM__SHAPE_SLOTS);
    pthread_mutex_lock(&claim__shape_mu);
    claim__shape_t *x = claim__shape_find(coupon, slot);
    if (x == NULL && claim__nshapes < CLAIM__SHAPE_MAX &&
        (x = calloc(1, sizeof(*x))) != NULL) {
        snprintf(x->coupon, sizeof(x->coupon), "%s", coupon);
        x->next = claim__shape_tab[slot];
        claim__shape_tab[slot] = x;
        claim__nshapes++;
    }
    if (x != NULL) {
        x->buckets = buckets;
        x->mask = mask;
    }
    pthread_mutex_unlock(&claim__shape_mu);
}

/* The bucket a claim of user on coupon goes to: -1 for an unsharded coupon
 * (or one not seen yet: the store then says WRONG_BUCKET and its shape);
 * else the first bucket with stock at or after hash(user) mod B, so users
 * spread evenly over the buckets and one user always starts at the same
 * one; with no bucket known to have stock, the starting one (the store then
 * says sold out). */
static int claim__pick(const char *coupon, const char *user) {
    unsigned slot = (unsigned)(claim__hash(coupon) % CLAIM__SHAPE_SLOTS);
    int b = -1;
    pthread_mutex_lock(&claim__shape_mu);
    const claim__shape_t *x = claim__shape_find(coupon, slot);
    if (x != NULL && x->buckets > 1) {
        int start = (int)(claim__hash(user) % (uint64_t)x->buckets);
        b = start;
        for (int i = 0; i < x->buckets; i++) {
            int k = (start + i) % x->buckets;
            if (x->mask & (UINT64_C(1) << k)) {
                b = k;
                break;
            }
        }
    }
    pthread_mutex_unlock(&claim__shape_mu);
    return b;
}

/* The lock's resource: the coupon id, or ID#b for bucket b ('#' is not in
 * the id alphabet, so no coupon's resource is another's). */
static void claim__resource(char *key, size_t n, const char *coupon,
                            int bucket) {
    if (bucket < 0) {
        snprintf(key, n, "%s", coupon);
    } else {
        snprintf(key, n, "%s#%d", coupon, bucket);
    }
}

/* -------------------------------------------------- the sold-out memo --- */

/* claim__claimant_t: see claim_int.h. */

/* One coupon's frozen claimant set. Nodes are pushed onto a slot's list
 * under claim__memo_mu and never freed; readers (the event loop) walk the
 * lists without a lock: a node is read only once ready is 1 (release/
 * acquire), after which its fields never change. */
typedef struct claim__memo {
    char coupon[REQ_COUPON_ID_MAX + 1];
    claim__claimant_t *c; /* sorted by h; owned */
    char *text;           /* the user ids, back to back (no NULs); owned */
    size_t n;
    int64_t remaining;       /* the coupon's stock left, final too */
    atomic_int ready;        /* 1: c, text, n, remaining, outcome are final */
    claim_outcome_t outcome; /* CLAIM_SOLD_OUT or CLAIM_EXPIRED */
    int building;            /* a worker is loading it (under claim__memo_mu) */
    int64_t failed_ns; /* last failed load (monotonic), to space retries */
    struct claim__memo *_Atomic next;
} claim__memo_t;

#define CLAIM__MEMO_SLOTS 1024u
/* The most memory one claimant set may take (32 bytes per claimant plus
 * the user ids): a bigger coupon goes without a memo. 64 MiB holds about
 * 1.4 million claimants with 16-byte user ids. */
#define CLAIM__MEMO_BYTES (64u * 1024u * 1024u)
#define CLAIM__MEMO_RETRY_NS (1000 * MONO_MS)

static claim__memo_t *_Atomic claim__memo_tab[CLAIM__MEMO_SLOTS];
static pthread_mutex_t claim__memo_mu = PTHREAD_MUTEX_INITIALIZER;

/* FNV-1a over the seed and the text, then splitmix64's finalizer. */
static uint64_t claim__hash(const char *s) {
    uint64_t h = 1469598103934665603ull ^ claim__seed;
    for (; *s != '\0'; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ull;
    }
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebull;
    h ^= h >> 31;
    return h;
}

static unsigned claim__slot(const char *coupon) {
    return (unsigned)(claim__hash(coupon) % CLAIM__MEMO_SLOTS);
}

/* The ready memo of coupon, or NULL. Lock-free; borrowed for ever. */
static const claim__memo_t *claim__memo_find(const char *coupon) {
    claim__memo_t *m = atomic_load_explicit(
        &claim__memo_tab[claim__slot(coupon)], memory_order_acquire);
    for (; m != NULL;
         m = atomic_load_explicit(&m->next, memory_order_acquire)) {
        if (strcmp(m->coupon, coupon) == 0) {
            return atomic_load_explicit(&m->ready, memory_order_acquire) ? m
                                                                         : NULL;
        }
    }
    return NULL;
}

/* The answer to a user outside a memo's set: what the store would say. */
static void claim__memo_answer(claim_result_t *out, claim_outcome_t o) {
    if (o == CLAIM_EXPIRED) {
        claim__set(out, o, "the coupon's claim window has ended");
    } else {
        out->outcome = CLAIM_SOLD_OUT;
    }
    out->remaining = 0;
}

/* user's claim in m, or NULL when user holds none. Exact: the hash only
 * finds the candidates, and the user id itself decides, so two users whose
 * hashes collide are told apart. O(log n). Borrowed, like m. */
static const claim__claimant_t *claim__memo_lookup(const claim__memo_t *m,
                                                   const char *user) {
    uint64_t h = claim__hash(user);
    size_t len = strlen(user);
    size_t lo = 0, hi = m->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (m->c[mid].h < h) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    for (; lo < m->n && m->c[lo].h == h; lo++) {
        const claim__claimant_t *x = &m->c[lo];
        if (x->len == len && memcmp(m->text + x->off, user, len) == 0) {
            return x;
        }
    }
    return NULL;
}

typedef struct claim__collect {
    claim__claimant_t *c;
    size_t n, cap;
    char *text;
    size_t tlen, tcap;
    int failed;
} claim__collect_t;

/* Grows *p (*cap elements of sz bytes) to hold need elements, doubling
 * from first; 0, or -1 when the memo would pass CLAIM__MEMO_BYTES (used:
 * the bytes its other array takes) or memory runs out. *p stays owned by
 * the caller either way. */
static int claim__grow(void **p, size_t *cap, size_t need, size_t sz,
                       size_t first, size_t used) {
    if (need <= *cap) {
        return 0;
    }
    size_t n = *cap != 0 ? *cap : first;
    while (n < need) {
        n *= 2;
    }
    if (n * sz + used > CLAIM__MEMO_BYTES) {
        return -1;
    }
    void *q = realloc(*p, n * sz);
    if (q == NULL) {
        return -1;
    }
    *p = q;
    *cap = n;
    return 0;
}

static int claim__collect_one(void *arg, const char *user, size_t len,
                              int64_t claim_id, int64_t fence) {
    claim__collect_t *k = arg;
    void *c = k->c, *text = k->text;
    int grown =
        claim__grow(&c, &k->cap, k->n + 1, sizeof(*k->c), 1024, k->tcap) == 0 &&
        claim__grow(&text, &k->tcap, k->tlen + len, 1, 16384,
                    k->cap * sizeof(*k->c)) == 0;
    k->c = c;
    k->text = text;
    if (!grown || len == 0 || len > REQ_USER_ID_MAX ||
        memchr(user, '\0', len) != NULL) {
        /* Too big, out of memory, or a user id no request could carry
         * (then the set could not be trusted to be what requests ask). */
        k->failed = 1;
        return 1;
    }
    memcpy(k->text + k->tlen, user, len);
    k->c[k->n++] = (claim__claimant_t){.h = claim__hash(user),
                                       .claim_id = claim_id,
                                       .fence = fence,
                                       .off = (uint32_t)k->tlen,
                                       .len = (uint32_t)len};
    k->tlen += len;
    return 0;
}

int claim__memo_sanity(const claim__claimant_t *c, size_t n, size_t tlen,
                       int64_t claimed) {
    if (claimed < 0 || (uint64_t)claimed != n) {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        if ((i > 0 && c[i - 1].h > c[i].h) || c[i].len == 0 ||
            c[i].len > REQ_USER_ID_MAX || (size_t)c[i].off + c[i].len > tlen) {
            return 0;
        }
    }
    return 1;
}

static int claim__claimant_cmp(const void *a, const void *b) {
    uint64_t x = ((const claim__claimant_t *)a)->h;
    uint64_t y = ((const claim__claimant_t *)b)->h;
    return x < y ? -1 : x > y;
}

/* The memo entry of coupon, made if new and marked building; NULL when
 * it is ready, being loaded, failed less than CLAIM__MEMO_RETRY_NS ago, or
 * memory ran out. Borrowed: entries are never freed. */
static claim__memo_t *claim__memo_start(const char *coupon) {
    unsigned slot = claim__slot(coupon);
    int64_t now = mono_ns();
    pthread_mutex_lock(&claim__memo_mu);
    claim__memo_t *m = atomic_load(&claim__memo_tab[slot]);
    for (; m != NULL && strcmp(m->coupon, coupon) != 0;
         m = atomic_load(&m->next)) {
    }
    if (m != NULL && (atomic_load(&m->ready) || m->building ||
                      now - m->failed_ns < CLAIM__MEMO_RETRY_NS)) {
        pthread_mutex_unlock(&claim__memo_mu);
        return NULL;
    }
    if (m == NULL) {
        m = calloc(1, sizeof(*m));
        if (m == NULL) {
            pthread_mutex_unlock(&claim__memo_mu);
            return NULL;
        }
        snprintf(m->coupon, sizeof(m->coupon), "%s", coupon);
        atomic_store(&m->next, atomic_load(&claim__memo_tab[slot]));
        atomic_store_explicit(&claim__memo_tab[slot], m, memory_order_release);
    }
    m->building = 1;
    pthread_mutex_unlock(&claim__memo_mu);
    return m;
}

/* Loads coupon's claimant set and publishes it, unless it is there, being
 * loaded, or failed less than a second ago. Runs on a worker (c is its
 * connections), after the claim that saw the sell-out (or the end of the
 * window) was answered. */
static void claim__memo_build(claim__conns_t *c, const char *coupon) {
    if (!claim__cfg->soldout_memo) {
        return;
    }
    claim__memo_t *m = claim__memo_start(coupon);
    if (m == NULL) {
        return;
    }

    claim__collect_t k = {NULL, 0, 0, NULL, 0, 0, 0};
    int64_t claimed = -1, remaining = 0;
    int rc = store_claimants(c->store, coupon, claim__collect_one, &k, &claimed,
                             &remaining);
    /* The store says the set is final; the rows must then match the
     * coupon's claimed count (rows = claimed is an invariant). */
    int final = rc == STORE_SOLD_OUT || rc == STORE_EXPIRED;
    int ok = final && !k.failed && (int64_t)k.n == claimed;
    if (ok) {
        if (k.n > 1) { /* no claimant at all: k.c is NULL, nothing to sort */
            qsort(k.c, k.n, sizeof(*k.c), claim__claimant_cmp);
        }
        /* Published once, never changed: checked whole, once. */
        assert(claim__memo_sanity(k.c, k.n, k.tlen, claimed));
    } else {
        log_warn("soldout.memo_skipped",
                 "coupon=%s rows=%zu err=\"%s\" (claims answered by the "
                 "store as before)",
                 coupon, k.n,
                 final            ? "rows differ from claimed"
                 : rc == STORE_OK ? "neither sold out nor ended"
                                  : store_errstr(c->store));
        free(k.c);
        free(k.text);
    }
    pthread_mutex_lock(&claim__memo_mu);
    m->building = 0;
    if (ok) {
        m->c = k.c;
        m->text = k.text;
        m->n = k.n;
        m->remaining = remaining;
        m->outcome = rc == STORE_EXPIRED ? CLAIM_EXPIRED : CLAIM_SOLD_OUT;
        atomic_store_explicit(&m->ready, 1, memory_order_release);
        metrics_inc(M_MEMOS_BUILT);
        log_info("soldout.memo", "coupon=%s claimants=%zu outcome=%s", coupon,
                 k.n, rc == STORE_EXPIRED ? "expired" : "sold_out");
    } else {
        m->failed_ns = mono_ns();
    }
    pthread_mutex_unlock(&claim__memo_mu);
}

/* ----------------------------------------------------------- combining --- */

/* claim__res_t and its invariant: see claim_int.h. */

#define CLAIM__RES_SLOTS 4096u

/* Guarded by claim__mu: the table, every entry, every queue link, and
 * claim__parked. */
static pthread_mutex_t claim__mu = PTHREAD_MUTEX_INITIALIZER;
static claim__res_t *claim__res_tab[CLAIM__RES_SLOTS];
static uint32_t claim__parked;

/* The entry's invariant (claim_int.h). O(1): it is asserted on every park,
 * requeue and change of leader, so it does not walk the queue. Under
 * claim__mu. */
int claim__res_ok(const claim__res_t *r) {
    return r->led && (r->n == 0) == (r->head == NULL) &&
           (r->n == 0) == (r->tail == NULL) &&
           (r->tail == NULL || r->tail->next == NULL) &&
           (r->n != 1 || r->head == r->tail) && r->n <= claim__parked;
}

/* claim__res_ok, and the queue walked: n claims of r, ending at tail. */
int claim__res_sanity(const claim__res_t *r) {
    if (!claim__res_ok(r)) {
        return 0;
    }
    uint32_t k = 0;
    const claim_waiter_t *last = NULL;
    for (const claim_waiter_t *x = r->head; x != NULL && k <= r->n;
         x = x->next) {
        if (x->res != r) {
            return 0;
        }
        last = x;
        k++;
    }
    return k == r->n && last == r->tail;
}

#ifdef COUPONSVC_DEBUG_SANITY
/* Admission control's count: claim__parked is the sum of every entry's n,
 * and every entry is sane. Walks the whole table: debug builds only, at
 * each change of leader. Under claim__mu. */
static int claim__parked_sanity(void) {
    uint64_t sum = 0;
    for (unsigned i = 0; i < CLAIM__RES_SLOTS; i++) {
        for (const claim__res_t *r = claim__res_tab[i]; r != NULL;
             r = r->next) {
            if (!claim__res_sanity(r)) {
                return 0;
            }
            sum += r->n;
        }
    }
    return sum == claim__parked;
}
#endif

uint32_t claim__parked_now(void) {
    pthread_mutex_lock(&claim__mu);
    uint32_t n = claim__parked;
    pthread_mutex_unlock(&claim__mu);
    return n;
}

/* Parks w at the tail of r's queue and counts it. Under claim__mu; r is
 * led. */
static void claim__append(claim__res_t *r, claim_waiter_t *w) {
    w->next = NULL;
    if (r->tail != NULL) {
        r->tail->next = w;
    } else {
        r->head = w;
    }
    r->tail = w;
    r->n++;
    claim__parked++;
    assert(claim__res_ok(r));
#ifdef COUPONSVC_DEBUG_SANITY
    assert(claim__res_sanity(r));
#endif
    metrics_set_parked(claim__parked);
}

static int claim__combining(void) {
    return claim__cfg->mode == CLAIM_MODE_LOCK && claim__cfg->batch_max > 1;
}

int claim__batch_ok(claim_waiter_t *const *b, size_t n, size_t max,
                    const claim__res_t *r) {
    if (n == 0 || n > max) {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        if (b[i] == NULL || b[i]->res != r || b[i]->answered ||
            b[i]->next != NULL) {
            return 0;
        }
    }
    return 1;
}

/* Finds or makes the entry for key; NULL when out of memory. Under
 * claim__mu. */
static claim__res_t *claim__res_get(const char *key, int bucket) {
    unsigned slot = (unsigned)(claim__hash(key) % CLAIM__RES_SLOTS);
    for (claim__res_t *r = claim__res_tab[slot]; r != NULL; r = r->next) {
        if (strcmp(r->key, key) == 0) {
            return r;
        }
    }
    claim__res_t *r = calloc(1, sizeof(*r));
    if (r != NULL) {
        snprintf(r->key, sizeof(r->key), "%s", key);
        r->bucket = bucket;
        r->next = claim__res_tab[slot];
        claim__res_tab[slot] = r;
    }
    return r;
}

/* The entry of the bucket claim__pick gives w's claim now, returned with
 * claim__mu held (the caller unlocks it); NULL, with claim__mu released,
 * when out of memory. */
static claim__res_t *claim__res_locked(const claim_waiter_t *w) {
    char key[LOCK_KEY_MAX];
    int bucket = claim__pick(w->coupon, w->user);
    claim__resource(key, sizeof(key), w->coupon, bucket);
    pthread_mutex_lock(&claim__mu);
    claim__res_t *r = claim__res_get(key, bucket);
    if (r == NULL) {
        pthread_mutex_unlock(&claim__mu);
    }
    return r;
}

claim__res_t *claim__res_lead(const char *key, int bucket) {
    pthread_mutex_lock(&claim__mu);
    claim__res_t *r = claim__res_get(key, bucket);
    if (r != NULL) {
        r->led = 1;
    }
    pthread_mutex_unlock(&claim__mu);
    return r;
}

void claim__park(claim__res_t *r, claim_waiter_t *w) {
    pthread_mutex_lock(&claim__mu);
    w->res = r;
    claim__append(r, w);
    pthread_mutex_unlock(&claim__mu);
}

/* Unlinks and frees r, which must be neither led nor have claims. Under
 * claim__mu. */
static void claim__res_drop(claim__res_t *r) {
    assert(!r->led && r->n == 0 && r->head == NULL);
    unsigned slot = (unsigned)(claim__hash(r->key) % CLAIM__RES_SLOTS);
    claim__res_t **pp = &claim__res_tab[slot];
    while (*pp != r) {
        pp = &(*pp)->next;
    }
    *pp = r->next;
    free(r);
}

/* Takes the head of r's queue, or NULL. Under claim__mu. */
static claim_waiter_t *claim__pop(claim__res_t *r) {
    claim_waiter_t *w = r->head;
    if (w != NULL) {
        r->head = w->next;
        if (r->head == NULL) {
            r->tail = NULL;
        }
        w->next = NULL;
        r->n--;
        claim__parked--;
    }
    return w;
}

/* Counts w's answer and gives it back through done: once per claim. */
static void claim__finish(claim_waiter_t *w) {
    assert(!w->answered);
    w->answered = 1;
    claim__count(&w->result);
    w->done(w);
}

/* Answers w with outcome o (and counts it), through its done. */
static void claim__answer(claim_waiter_t *w, claim_outcome_t o,
                          const char *detail) {
    claim__set(&w->result, o, detail);
    claim__finish(w);
}

/* The sold-out fast path, on the event loop: 1 when w's coupon is final
 * and known here, w->result then its answer (and counted). */
static int claim__memo_answered(claim_waiter_t *w) {
    if (claim__cfg->soldout_memo && claim__cfg->mode != CLAIM_MODE_NAIVE) {
        const claim__memo_t *m = claim__memo_find(w->coupon);
        if (m != NULL) {
            const claim__claimant_t *x = claim__memo_lookup(m, w->user);
            if (x == NULL) {
                claim__memo_answer(&w->result, m->outcome);
                metrics_inc(m->outcome == CLAIM_EXPIRED ? M_FAST_EXPIRED
                                                        : M_FAST_SOLD_OUT);
            } else {
                /* A claimant: its claim, as the store would read it. */
                w->result.outcome = CLAIM_ALREADY;
                w->result.claim_id = x->claim_id;
                w->result.fence = x->fence;
                w->result.remaining = m->remaining;
                metrics_inc(M_FAST_CLAIMANT);
            }
            claim__count(&w->result);
            return 1;
        }
    }
    return 0;
}

/* Admission control for w, which would park on r (under claim__mu): the
 * bound it hits (its metric, the reason in why), or M__COUNT to admit. */
static metrics_counter_t claim__admit(const claim__res_t *r,
                                      const claim_waiter_t *w, char *why,
                                      size_t len) {
    const cfg_t *cfg = claim__cfg;
    metrics_counter_t refused = M__COUNT;
    /* Full batches queued ahead of this claim (the one in progress aside),
     * each about as long as the coupon's recent batches. Only a queue of at
     * least one full batch is refused on this estimate: a lone slow batch
     * (a row lock, a slow backend) is better answered by its own outcome. */
    uint32_t batches = r->n / cfg->batch_max;
    int64_t ahead_ns = (int64_t)(batches + 1) * r->cycle_ns;
    if (r->n >= cfg->queue_max_per_coupon) {
        refused = M_ADMIT_QUEUE_FULL;
        snprintf(why, len,
                 "%u claims of this coupon are already waiting here "
                 "(COUPON_QUEUE_MAX_PER_COUPON); nothing was tried",
                 r->n);
    } else if (claim__parked >= cfg->queue_max) {
        refused = M_ADMIT_PROCESS_FULL;
        snprintf(why, len,
                 "%u claims are already waiting in this instance "
                 "(COUPON_QUEUE_MAX); nothing was tried",
                 claim__parked);
    } else if (batches > 0 && w->submitted_ns + ahead_ns > w->deadline_ns) {
        refused = M_ADMIT_DEADLINE;
        snprintf(why, len,
                 "the %u claims queued ahead need about %lld ms, past this "
                 "claim's deadline; nothing was tried",
                 r->n, (long long)(ahead_ns / MONO_MS));
    }
    return refused;
}

int claim_submit(claim_waiter_t *w) {
    memset(&w->result, 0, sizeof(w->result));
    w->result.fence = -1;
    w->submitted_ns = mono_ns();
    w->res = NULL;
    w->hops = 0;
    w->next = NULL;
    w->answered = 0;

    if (claim__memo_answered(w)) {
        return CLAIM_SUBMIT_ANSWERED;
    }
    if (!claim__combining()) {
        return CLAIM_SUBMIT_RUN;
    }

    char why[160] = "";
    claim__res_t *r = claim__res_locked(w);
    if (r == NULL) {
        claim__set(&w->result, CLAIM_UNAVAILABLE, "out of memory");
        claim__count(&w->result);
        return CLAIM_SUBMIT_ANSWERED;
    }
    if (!r->led) {
        r->led = 1;
        w->res = r;
        pthread_mutex_unlock(&claim__mu);
        return CLAIM_SUBMIT_RUN;
    }
    metrics_counter_t refused = claim__admit(r, w, why, sizeof(why));
    if (refused != M__COUNT) {
        pthread_mutex_unlock(&claim__mu);
        metrics_inc(refused);
        claim__set(&w->result, CLAIM_OVERLOADED, why);
        claim__count(&w->result);
        return CLAIM_SUBMIT_ANSWERED;
    }
    w->res = r;
    w->park(w); /* suspended before any leader can see it */
    claim__append(r, w);
    pthread_mutex_unlock(&claim__mu);
    return CLAIM_SUBMIT_PARKED;
}

/* Answers w and every claim parked on r 503 shutting_down, and ends r's
 * leadership. w's done is called only if answer_w. */
static void claim__abandon(claim__res_t *r, claim_waiter_t *w, int answer_w) {
    pthread_mutex_lock(&claim__mu);
    claim_waiter_t *list = r->head;
    uint32_t n = r->n;
    r->head = r->tail = NULL;
    claim__parked -= n;
    r->n = 0;
    r->led = 0;
    claim__res_drop(r);
    metrics_set_parked(claim__parked);
    pthread_mutex_unlock(&claim__mu);
    static const char why[] = "this instance is stopping; retry";
    while (list != NULL) {
        claim_waiter_t *x = list;
        list = x->next;
        x->next = NULL;
        claim__answer(x, CLAIM_SHUTTING_DOWN, why);
    }
    if (answer_w) {
        claim__answer(w, CLAIM_SHUTTING_DOWN, why);
    } else {
        claim__set(&w->result, CLAIM_SHUTTING_DOWN, why);
        claim__count(&w->result);
    }
}

void claim_cancel(claim_waiter_t *w) {
    if (w->res == NULL) {
        claim__set(&w->result, CLAIM_SHUTTING_DOWN,
                   "this instance is stopping; retry");
        claim__count(&w->result);
        return;
    }
    claim__abandon(w->res, w, 0);
}

/* Ends a leader's turn on r: the next parked claim leads (dispatched to a
 * worker), or r is dropped. cycle_ns (0: none) feeds the estimate of
 * admission control. */
static void claim__pass(claim__res_t *r, int64_t cycle_ns) {
    pthread_mutex_lock(&claim__mu);
    if (cycle_ns > 0) {
        r->cycle_ns =
            r->cycle_ns == 0 ? cycle_ns : (r->cycle_ns * 7 + cycle_ns) / 8;
    }
    claim_waiter_t *next = claim__pop(r);
    if (next == NULL) {
        r->led = 0;
        claim__res_drop(r);
    } else {
        assert(claim__res_ok(r));
    }
#ifdef COUPONSVC_DEBUG_SANITY
    assert(claim__parked_sanity());
#endif
    metrics_set_parked(claim__parked);
    pthread_mutex_unlock(&claim__mu);
    if (next != NULL && next->dispatch(next) != 0) {
        claim__abandon(r, next, 1);
    }
}

/* Takes up to max - have parked claims into b[have..], answering 503 those
 * whose deadline passed while parked. Returns the new count. */
size_t claim__take(claim__res_t *r, claim_waiter_t **b, size_t have,
                   size_t max) {
    claim_waiter_t *late = NULL;
    int64_t now = mono_ns();
    pthread_mutex_lock(&claim__mu);
    while (have < max && r->head != NULL) {
        claim_waiter_t *x = claim__pop(r);
        /* now was read before the mutex: a claim parked in between looks
         * submitted after it, and a negative wait would land in +Inf. */
        int64_t waited = now - x->submitted_ns;
        metrics_observe_queue_wait(waited > 0 ? (uint64_t)waited : 0);
        if (now >= x->deadline_ns) {
            x->next = late;
            late = x;
        } else {
            b[have++] = x;
        }
    }
    assert(claim__res_ok(r));
    metrics_set_parked(claim__parked);
    pthread_mutex_unlock(&claim__mu);
    while (late != NULL) {
        claim_waiter_t *x = late;
        late = x->next;
        x->next = NULL;
        claim__answer(x, CLAIM_BUSY,
                      "the claim waited in its coupon's queue past its "
                      "deadline; nothing was tried");
    }
    return have;
}

/* Puts b[0..n) back at the head of r's queue, in order. */
static void claim__requeue(claim__res_t *r, claim_waiter_t **b, size_t n) {
    pthread_mutex_lock(&claim__mu);
    for (size_t i = n; i-- > 0;) {
        b[i]->next = r->head;
        r->head = b[i];
        if (r->tail == NULL) {
            r->tail = b[i];
        }
        r->n++;
        claim__parked++;
    }
    assert(claim__res_ok(r));
    metrics_set_parked(claim__parked);
    pthread_mutex_unlock(&claim__mu);
}

/* Moves w, a claim whose bucket turned out empty (or whose coupon's shape
 * was not known), to the queue of the bucket claim__pick now gives: as its
 * leader (dispatched to a worker) if that queue has none, else parked. w is
 * still suspended and unanswered; admission does not apply again. */
static void claim__reroute(claim_waiter_t *w) {
    if (++w->hops > STORE_BUCKETS_MAX + 1) {
        claim__answer(w, CLAIM_UNAVAILABLE,
                      "the coupon's buckets kept emptying under this claim; "
                      "retry");
        return;
    }
    claim__res_t *r = claim__res_locked(w);
    if (r == NULL) {
        claim__answer(w, CLAIM_UNAVAILABLE, "out of memory");
        return;
    }
    w->res = r;
    w->next = NULL;
    int lead = !r->led;
    if (lead) {
        r->led = 1;
    } else {
        claim__append(r, w);
    }
    pthread_mutex_unlock(&claim__mu);
    if (lead && w->dispatch(w) != 0) {
        claim__abandon(r, w, 1);
    }
}

/* The lease was not granted (lrc LOCK_BUSY past the deadline, or
 * LOCK_ERR not taken for an outage): each of the n claims in b is
 * answered 503 lock_busy or unavailable. */
static void claim__lead_no_lock(claim__conns_t *c, const char *coupon, int lrc,
                                claim_waiter_t **b, size_t n) {
    const char *why =
        lrc == LOCK_BUSY
            ? "the coupon's lock stayed busy past the wait deadline"
            : lock_errstr(c->lock);
    if (lrc != LOCK_BUSY) {
        log_warn("claim.lock_error", "coupon=%s err=\"%s\"", coupon, why);
    }
    claim_outcome_t o = lrc == LOCK_BUSY ? CLAIM_BUSY : CLAIM_UNAVAILABLE;
    for (size_t i = 0; i < n; i++) {
        claim__answer(b[i], o, why);
    }
}

/* A batch whose lease was lost at the commit gate (nothing written): its
 * claims go back to the head of r's queue for a new lease, each within its
 * own deadline, else answered 503 lease_lost. */
static void claim__lead_requeue(claim__res_t *r, claim_waiter_t **b, size_t n) {
    int64_t now = mono_ns();
    size_t keep = 0;
    for (size_t i = 0; i < n; i++) {
        if (now >= b[i]->deadline_ns) {
            claim__answer(b[i], CLAIM_LEASE_LOST,
                          "the lock lease was lost before commit; "
                          "nothing written");
        } else {
            b[keep++] = b[i];
        }
    }
    claim__requeue(r, b, keep);
}

/* A batch whose fence PostgreSQL refused (nothing written): every claim is
 * answered 409 fenced, with both fences. */
static void claim__lead_fenced(claim_waiter_t **b, size_t n, int64_t fence,
                               int64_t last_fence) {
    for (size_t i = 0; i < n; i++) {
        claim__fenced(&b[i]->result, fence, last_fence);
        claim__finish(b[i]);
    }
}

/* Answers each claim of a batch store_claim answered with src (items: the
 * claims' rows; lease_fence: the batch's fence), moving on those whose
 * bucket was empty. Returns 1 when the coupon was found final (sold out or
 * ended), so that its memo is loaded. */
static int claim__lead_answer(claim__conns_t *c, const char *coupon,
                              claim_waiter_t **b, const store_item_t *items,
                              size_t n, int src, int64_t lease_fence) {
    int sold_out = 0;
    claim__tally_t tally = {.n = n};
    for (size_t i = 0; src == STORE_OK && i < n; i++) {
        tally.written += items[i].status == STORE_OK;
    }
    for (size_t i = 0; i < n; i++) {
        claim_result_t *o = &b[i]->result;
        int how = claim__batch_answer(src, &items[i], lease_fence,
                                      store_errstr(c->store), o);
        claim__tally_add(&tally, how, o);
        if (how == CLAIM__MOVED) {
            claim__reroute(b[i]);
            b[i] = NULL;
            continue;
        }
        if (o->outcome == CLAIM_CLAIMED) {
            /* The line is this claim's: its own request's id, not the
             * leader's (w may be answered and gone by now). */
            char lead_rid[LOG_REQUEST_ID_MAX + 1];
            snprintf(lead_rid, sizeof(lead_rid), "%s", log_request_id());
            log_set_request_id(b[i]->request_id);
            log_info("claim.ok",
                     "coupon=%s user=%s claim=%lld fence=%lld batch=%zu",
                     coupon, b[i]->user, (long long)o->claim_id,
                     (long long)o->fence, n);
            log_set_request_id(lead_rid);
        } else if (o->outcome == CLAIM_SOLD_OUT ||
                   o->outcome == CLAIM_EXPIRED) {
            sold_out = 1; /* either is final: load the memo */
        }
    }
    assert(claim__tally_ok(&tally));
    if (src != STORE_OK) {
        log_warn("claim.batch_failed", "coupon=%s batch=%zu err=\"%s\"", coupon,
                 n, b[0]->result.detail);
    }
    for (size_t i = 0; i < n; i++) {
        if (b[i] != NULL) {
            claim__finish(b[i]);
        }
    }
    return sold_out;
}

/* One leader's batch: the claims one lease (or, degraded, none) carries
 * into one transaction. */
typedef struct claim__batch {
    claim__res_t *r;
    char coupon[REQ_COUPON_ID_MAX + 1]; /* a copy: the leader's claim may be
                                           answered and gone */
    claim_waiter_t **b;  /* b[0..n): the claims, the oldest first */
    store_item_t *items; /* items[i]: b[i]'s row for the store */
    size_t n, max;       /* 0 until the first lease; max: COUPON_BATCH_MAX */
    lock_lease_t lease;  /* fence STORE_NO_FENCE when degraded */
    int degraded;        /* 1: this round runs without the lock */
    int64_t last_fence;  /* a refused fence: the one that beat it */
    int current;         /* a refused fence: the lease was still ours */
} claim__batch_t;

/* Takes the lease for batch t, led by w (before the first round) or by
 * t->b[0], whose deadline is then the batch's earliest: the leader is the
 * oldest claim of the queue, or of a batch put back in order. Returns
 * LOCK_OK with the lease granted and watched, or with t->degraded set
 * when the lock is down and the degraded mode lets the batch run without
 * it. Otherwise the claims are answered 503 (a first round has only its
 * leader, a later one its whole batch) and the lock's code is returned. */
static int claim__lead_hold(claim__conns_t *c, claim__batch_t *t,
                            claim_waiter_t *w) {
    const cfg_t *cfg = claim__cfg;
    int64_t deadline = t->n > 0 ? t->b[0]->deadline_ns : w->deadline_ns;
    int64_t waited = 0;
    int skip = claim__lock_skipped();
    int lrc = skip ? LOCK_ERR
                   : lock_acquire(c->lock, t->r->key, cfg->lock_ttl_ms,
                                  deadline, &t->lease, &waited);
    if (!skip) {
        metrics_observe_lock_wait((uint64_t)waited);
    }
    t->degraded =
        lrc == LOCK_ERR && (skip || claim__degrade(c->lock, t->coupon));
    if (t->degraded) {
        memset(&t->lease, 0, sizeof(t->lease));
        t->lease.fence = STORE_NO_FENCE;
        return LOCK_OK;
    }
    if (lrc != LOCK_OK) {
        claim__lead_no_lock(c, t->coupon, lrc, t->n > 0 ? t->b : &w,
                            t->n > 0 ? t->n : 1);
        return lrc;
    }
    wd_watch(claim__wd, &t->lease);
    fault_pause(FAULT_AFTER_ACQUIRE);
    return LOCK_OK;
}

/* Writes batch t in one transaction under its lease (degraded: the atomic
 * mode's lockless write for its n users), then ends the lease. Returns
 * what store_claim returned; t->items hold each claim's row. */
static int claim__lead_write(claim__conns_t *c, claim__batch_t *t) {
    assert(claim__batch_ok(t->b, t->n, t->max, t->r));
    for (size_t i = 0; i < t->n; i++) {
        t->items[i] = (store_item_t){.user_id = t->b[i]->user};
    }
    t->last_fence = 0;
    int src = t->degraded ? store_claim(c->store, t->coupon, t->r->bucket,
                                        STORE_NO_FENCE, t->items, t->n,
                                        claim__gate_fault_only, NULL, NULL)
                          : store_claim(c->store, t->coupon, t->r->bucket,
                                        t->lease.fence, t->items, t->n,
                                        claim__gate, &t->lease, &t->last_fence);
    claim__shape_learn(t->coupon, c->store);
    int wrote = 0;
    for (size_t i = 0; src == STORE_OK && i < t->n; i++) {
        wrote |= t->items[i].status == STORE_OK;
    }
    if (wrote) {
        fault_pause(FAULT_AFTER_COMMIT);
    }
    t->current = 0;
    if (t->degraded) {
        claim__degraded(t->n);
    } else {
        t->current = claim__end_lease(c, &t->lease, src);
    }
    metrics_observe_batch((uint32_t)t->n);
    return src;
}

/* After batch t's transaction answered src in round attempt: answers its
 * claims, or puts them back, or moves them. Returns 1 when the batch is
 * to run once more with a new lease (a fence recovered after Redis lost
 * its counter), else 0, with *sold_out set when the coupon was found
 * final. */
static int claim__lead_settle(claim__conns_t *c, claim__batch_t *t, int src,
                              int attempt, int *sold_out) {
    switch (src) {
    case STORE_ABORTED:
        /* Nothing was written: back to the head of the queue for a new
         * lease, each within its own deadline. */
        log_warn("claim.lease_lost",
                 "coupon=%s fence=%lld batch=%zu (rolled back; the claims "
                 "wait for a new lease)",
                 t->coupon, (long long)t->lease.fence, t->n);
        claim__lead_requeue(t->r, t->b, t->n);
        return 0;
    case STORE_FENCED: {
        int64_t now_at = 0;
        if (claim__fence_retry(c, t->r->key, t->last_fence, t->current, attempt,
                               &now_at)) {
            log_warn("fence.recovered",
                     "coupon=%s fence=%lld last_fence=%lld counter=%lld "
                     "batch=%zu (Redis lost the counter; retrying with a new "
                     "lease)",
                     t->coupon, (long long)t->lease.fence,
                     (long long)t->last_fence, (long long)now_at, t->n);
            return 1;
        }
        log_warn("claim.fenced",
                 "coupon=%s fence=%lld last_fence=%lld batch=%zu", t->coupon,
                 (long long)t->lease.fence, (long long)t->last_fence, t->n);
        claim__lead_fenced(t->b, t->n, t->lease.fence, t->last_fence);
        return 0;
    }
    case STORE_WRONG_BUCKET:
        /* Nothing written: the coupon is sharded (or not) after all; its
         * shape is learnt now, so each claim goes to its bucket. */
        for (size_t i = 0; i < t->n; i++) {
            claim__reroute(t->b[i]);
        }
        return 0;
    default:
        *sold_out = claim__lead_answer(c, t->coupon, t->b, t->items, t->n, src,
                                       t->lease.fence);
        return 0;
    }
}

/* The leader's turn: one lease, one batch, one transaction. w leads; with
 * the lease it takes every claim queued behind it (up to the batch's
 * max), and a round that recovered a fence runs the same batch again. */
static void claim__lead(claim__conns_t *c, claim_waiter_t *w) {
    claim__batch_t t = {.r = w->res, .max = claim__cfg->batch_max};
    memcpy(t.coupon, w->coupon, sizeof(t.coupon));
    int64_t start = mono_ns();
    int sold_out = 0;
    t.b = calloc(t.max, sizeof(*t.b));
    t.items = calloc(t.max, sizeof(*t.items));
    if (t.b == NULL || t.items == NULL) {
        free(t.b);
        free(t.items);
        claim__answer(w, CLAIM_UNAVAILABLE, "out of memory");
        claim__pass(t.r, 0);
        return;
    }
    metrics_observe_queue_wait((uint64_t)(start - w->submitted_ns));
    if (start >= w->deadline_ns) {
        claim__answer(w, CLAIM_BUSY,
                      "the request waited in this instance's queue past its "
                      "lock-wait deadline; nothing was tried");
    } else {
        for (int attempt = 0; claim__lead_hold(c, &t, w) == LOCK_OK;
             attempt++) {
            if (t.n == 0) {
                t.b[0] = w;
                t.n = claim__take(t.r, t.b, 1, t.max);
            }
            int src = claim__lead_write(c, &t);
            if (!claim__lead_settle(c, &t, src, attempt, &sold_out)) {
                break;
            }
        }
    }
    free(t.b);
    free(t.items);
    /* After the answers, not before: the next leader's wait starts now. */
    claim__pass(t.r, mono_ns() - start);
    if (sold_out) {
        claim__memo_build(c, t.coupon);
    }
}

void claim_run(claim_waiter_t *w) {
    claim__conns_t *c = claim__conns();
    if (c == NULL) {
        if (w->res != NULL) {
            claim__answer(w, CLAIM_UNAVAILABLE, "out of memory");
            claim__pass(w->res, 0);
            return;
        }
        claim__answer(w, CLAIM_UNAVAILABLE, "out of memory");
        return;
    }
    if (w->res == NULL) {
        claim_one(w->coupon, w->user, w->deadline_ns, &w->result);
        assert(!w->answered);
        w->answered = 1;
        w->done(w); /* claim_one counted it */
        return;
    }
    claim__lead(c, w);
}
