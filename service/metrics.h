/*
 * metrics.h: process-wide counters and one histogram, rendered in the
 * Prometheus text format for GET /metrics.
 *
 * Thread safety: every entry point may be called from any thread. Counters
 * are relaxed atomics: each is exact, but a scrape is not a snapshot across
 * counters (Prometheus does not need one).
 */
#ifndef COUPONSVC_METRICS_H
#define COUPONSVC_METRICS_H

#include <stddef.h>
#include <stdint.h>

typedef enum metrics_counter {
    /* couponsvc_claims_total{outcome} */
    M_CLAIM_CLAIMED = 0,
    M_CLAIM_ALREADY,
    M_CLAIM_SOLD_OUT,
    M_CLAIM_NOT_FOUND,
    M_CLAIM_FENCED,
    M_CLAIM_BUSY,        /* lock wait ran past its deadline */
    M_CLAIM_UNAVAILABLE, /* Redis or PostgreSQL failed */
    M_CLAIM_LEASE_LOST,  /* rolled back: the watchdog lost the lease */
    /* connection lost during COMMIT: it may have committed */
    M_CLAIM_COMMIT_UNKNOWN,
    M_CLAIM_BAD_REQUEST,
    M_CLAIM_OVERLOADED,    /* refused at admission (see below) */
    M_CLAIM_SHUTTING_DOWN, /* parked when the instance stopped */
    M_CLAIM_NOT_STARTED,   /* before the coupon's window */
    M_CLAIM_EXPIRED,       /* after the coupon's window */
    /* couponsvc_lock_acquisitions_total{result}: one per attempt */
    M_LOCK_OK,
    M_LOCK_BUSY,
    M_LOCK_ERROR,
    /* couponsvc_watchdog_renewals_total{result} */
    M_WD_RENEW_OK,
    M_WD_RENEW_FAILED,
    M_LEASES_LOST,      /* couponsvc_leases_lost_total */
    M_FENCED_REFUSALS,  /* couponsvc_fenced_refusals_total */
    M_FENCE_RECOVERIES, /* couponsvc_fence_counter_recoveries_total */
    M_CLAIMS_DEGRADED,  /* couponsvc_claims_degraded_total: run lockless */
    M_REDIS_ERRORS,     /* couponsvc_backend_errors_total{backend="redis"} */
    M_PG_ERRORS,        /* ...{backend="postgres"} */
    /* couponsvc_postgres_timeouts_total{kind} */
    M_PG_STATEMENT_TIMEOUTS, /* the server's statement_timeout fired */
    M_PG_DEADLINE_DROPS,     /* the client's deadline dropped a connection */
    /* couponsvc_admissions_refused_total{reason}: claims answered 503
     * overloaded at once, on the event loop */
    M_ADMIT_QUEUE_FULL,   /* the coupon's queue is at its bound */
    M_ADMIT_PROCESS_FULL, /* the process's parked claims are at their bound */
    M_ADMIT_DEADLINE,     /* the queue ahead would outlast the deadline */
    /* couponsvc_soldout_fastpath_total{result}: claims on a coupon known
     * sold out */
    M_FAST_SOLD_OUT, /* 410 from memory, on the event loop */
    M_FAST_CLAIMANT, /* 200 with the claim of a claimant, from memory */
    M_FAST_EXPIRED,  /* 410 expired from memory, on the event loop */
    M_MEMOS_BUILT,   /* couponsvc_soldout_memos_total */
    M_LOCK_GRANTS,   /* couponsvc_lock_grants_total: leases this process got */
    /* couponsvc_lock_wakeups_total{cause}: a waiter tried again because */
    M_LOCK_WAKE_MESSAGE,   /* a release notification came */
    M_LOCK_WAKE_RECHECK,   /* its timed re-check ran out */
    M_LOCK_WAKE_RECONNECT, /* the subscriber (re)connected */
    M__COUNT,
} metrics_counter_t;

void metrics_inc(metrics_counter_t c);

/* Records one lock wait (from the first attempt to the grant or give-up). */
void metrics_observe_lock_wait(uint64_t ns);

/* The leases the watchdog holds right now (a gauge). */
void metrics_set_leases_held(int64_t n);

/* Lock waiters in this process right now (a gauge): delta is +1 or -1. */
void metrics_add_lock_waiters(int64_t delta);

uint64_t metrics_get(metrics_counter_t c);

/* Records one batch: the claims one lease carried in one transaction. */
void metrics_observe_batch(uint32_t size);

/* Records how long a claim waited for a batch (from the moment it was
 * complete to the moment a leader took it, or gave up on it). */
void metrics_observe_queue_wait(uint64_t ns);

/* Claims parked in the per-coupon queues now (a gauge). */
void metrics_set_parked(int64_t n);

/* The backends the readiness probe checks; the order of ready_backend_t. */
typedef enum metrics_backend {
    M_BACKEND_REDIS = 0,
    M_BACKEND_POSTGRES,
    M_BACKEND__COUNT,
} metrics_backend_t;

/* The readiness probe's last result for b: up (1/0), and when the check
 * finished (monotonic ns). Renders couponsvc_backend_up{backend} and
 * couponsvc_backend_check_age_seconds{backend}; a backend never set (one
 * this mode does not use) is left out. */
void metrics_set_backend(metrics_backend_t b, int up, int64_t checked_ns);

/* Renders every metric. Returns a new NUL-terminated buffer (free with
 * free()) and its length in *len, or NULL when out of memory. instance and
 * mode label couponsvc_info. */
char *metrics_render(const char *instance, const char *mode, size_t *len);

#endif
