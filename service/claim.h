/*
 * claim.h: one claim, end to end, in the configured mode; and the few other
 * operations the API needs from the backends.
 *
 * This is the layer between the HTTP API and the backends: api -> claim ->
 * {lock, wd, store, metrics}. It owns the per-thread connections: each thread
 * that calls in (an HTTP worker) gets its own lock_client_t and store_t the
 * first time, kept in thread-specific storage and freed when the thread
 * exits. No connection is ever shared between threads, so none needs a lock.
 */
#ifndef COUPONSVC_CLAIM_H
#define COUPONSVC_CLAIM_H

#include <stddef.h>
#include <stdint.h>

#include "cfg.h"
#include "req.h"

typedef enum claim_outcome {
    CLAIM_CLAIMED = 0, /* 201: a new claim */
    CLAIM_ALREADY,     /* 200: this user's existing claim */
    CLAIM_SOLD_OUT,    /* 410 */
    CLAIM_NOT_FOUND,   /* 404: no such coupon */
    CLAIM_FENCED,      /* 409: our fence was refused; nothing written */
    CLAIM_BUSY,        /* 503: the lock wait ran past its deadline */
    CLAIM_UNAVAILABLE, /* 503: Redis or PostgreSQL failed */
    CLAIM_LEASE_LOST,  /* 503: lease lost before COMMIT; rolled back */
    /* 503: the connection was lost during COMMIT: it may have committed,
     * and a retry tells */
    CLAIM_COMMIT_UNKNOWN,
    CLAIM_OVERLOADED,    /* 503: refused at admission; nothing was tried */
    CLAIM_SHUTTING_DOWN, /* 503: parked when the instance stopped */
    CLAIM_NOT_STARTED,   /* 409: before the coupon's window opens */
    CLAIM_EXPIRED,       /* 410: after the coupon's window closed */
} claim_outcome_t;

typedef struct claim_result {
    claim_outcome_t outcome;
    int64_t claim_id;  /* CLAIMED, ALREADY */
    int64_t fence;     /* the claim's fence; -1 when it has none */
    int64_t remaining; /* stock left */
    char detail[200];  /* for errors: what happened */
} claim_result_t;

typedef struct claim_coupon {
    int64_t total, claimed, last_fence; /* claimed: all buckets together */
    int buckets;                        /* 1: unsharded */
    struct {
        int64_t total, claimed, last_fence;
    } bucket[REQ_BUCKETS_MAX];        /* [0, buckets) when buckets > 1 */
    int64_t starts_at_us, ends_at_us; /* or REQ_NO_TIME */
} claim_coupon_t;

/* Reads the configuration (borrowed for the process's lifetime) and starts
 * the watchdog in lock mode. Returns 0, or -1 with a log line. */
int claim_init(const cfg_t *cfg);

/* Stops the watchdog. Call after every request has finished. */
void claim_shutdown(void);

/* Claims coupon for user. deadline_ns (CLOCK_MONOTONIC ns) bounds the wait
 * for the lock; 0 means COUPON_LOCK_WAIT_MS from now. A deadline already
 * past (the request waited that long in the queue) is CLAIM_BUSY at once,
 * before Redis is asked anything. Never fails as a call: every outcome,
 * including backend failure, is in *out. */
void claim_one(const char *coupon, const char *user, int64_t deadline_ns,
               claim_result_t *out);

/*
 * Combining: many claims, one lease (lock mode, COUPON_BATCH_MAX > 1).
 *
 * The event loop hands every complete POST /claim to claim_submit, which
 * decides at once, without a backend, one of:
 *   - CLAIM_SUBMIT_ANSWERED: w->result is final (the sold-out fast path's
 *     410, or its 200 to a claimant, or 503 overloaded from admission
 *     control). The caller answers.
 *   - CLAIM_SUBMIT_RUN: the caller queues w for a worker, which calls
 *     claim_run(w). w is its coupon's leader (or an uncontended claim).
 *   - CLAIM_SUBMIT_PARKED: w waits in its coupon's queue behind the leader;
 *     w->park(w) was called (under the combiner's mutex, before any leader
 *     can see w: the caller suspends the connection there). From then on w
 *     belongs to the combiner until w->done(w).
 * claim_run answers w and every parked claim it takes into its batch by
 * calling their done callbacks (on the worker's thread, exactly once each),
 * then hands the leadership to the next parked claim by w->dispatch(next),
 * which queues it for a worker as if claim_submit had said RUN. A dispatch
 * that is refused (the workers are stopping) answers that claim and every
 * claim parked behind it 503 shutting_down. A leader that a stopping worker
 * will not run is given to claim_cancel instead of claim_run.
 */
typedef struct claim_waiter claim_waiter_t;
typedef void (*claim_waiter_fn)(claim_waiter_t *w);
struct claim_waiter {
    /* Set by the caller before claim_submit. */
    char coupon[REQ_COUPON_ID_MAX + 1];
    char user[REQ_USER_ID_MAX + 1];
    int64_t deadline_ns;                /* CLOCK_MONOTONIC: answer by then */
    claim_waiter_fn park;               /* see above; called at most once */
    claim_waiter_fn done;               /* see above; called at most once */
    int (*dispatch)(claim_waiter_t *w); /* 0: queued for a worker */
    void *arg;                          /* the caller's */
    char request_id[REQ_REQUEST_ID_MAX + 1]; /* for its log lines; "" */

    claim_result_t result; /* final when done is called (or when
                              claim_submit answered ANSWERED) */

    /* The combiner's; the caller leaves them alone. */
    int64_t submitted_ns;
    struct claim__res *res; /* its coupon's queue entry; NULL: not combined */
    int hops;               /* buckets it was moved off (found empty) */
    int answered;           /* done was called (or is being called) */
    claim_waiter_t *next;   /* queue link */
};

enum {
    CLAIM_SUBMIT_ANSWERED = 0,
    CLAIM_SUBMIT_RUN = 1,
    CLAIM_SUBMIT_PARKED = 2,
};

/* On the event loop: never waits on a backend. w is borrowed; see above
 * for what the answer means for its ownership. */
int claim_submit(claim_waiter_t *w);

/* On a worker: runs w (from CLAIM_SUBMIT_RUN or a dispatch); every claim
 * it answers, w included, is answered through its done callback. w is
 * borrowed until its done. */
void claim_run(claim_waiter_t *w);

/* On a worker that is stopping, for a w it will not run: answers every
 * claim parked behind w 503 shutting_down (their done), and sets
 * w->result likewise without calling w->done: the caller answers w. */
void claim_cancel(claim_waiter_t *w);

/*
 * The codes of the three reads and writes below that go straight to the
 * store: the store's own codes (store.h), passed through unchanged, named
 * here so that the API layer needs no store.h. claim.c checks that each is
 * the STORE_ code it names.
 */
typedef enum claim_rc {
    CLAIM_RC_OK = 0,        /* STORE_OK */
    CLAIM_RC_NOT_FOUND = 1, /* STORE_NOT_FOUND */
    CLAIM_RC_EXISTS = 5,    /* STORE_EXISTS */
    CLAIM_RC_ERR = -1,      /* STORE_ERR: a backend failed (detail filled) */
} claim_rc_t;

/* Creates the coupon: CLAIM_RC_OK, CLAIM_RC_EXISTS (the id is taken) or
 * CLAIM_RC_ERR. c is borrowed. */
claim_rc_t claim_coupon_create(const req_coupon_t *c, char *detail, size_t len);

/* The user's claim of coupon, read without a lock (GET
 * /coupons/{id}/claims/{user}): CLAIM_RC_OK with out filled as a claim's
 * answer (CLAIM_ALREADY, its id, fence and the stock left),
 * CLAIM_RC_NOT_FOUND when the user holds none (or there is no such coupon),
 * or CLAIM_RC_ERR (out->detail). */
claim_rc_t claim_lookup(const char *coupon, const char *user,
                        claim_result_t *out);

/* The coupon: CLAIM_RC_OK, CLAIM_RC_NOT_FOUND or CLAIM_RC_ERR (detail
 * filled). */
claim_rc_t claim_coupon_get(const char *id, claim_coupon_t *out, char *detail,
                            size_t len);

#endif
