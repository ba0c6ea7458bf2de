/*
 * ready.h: what GET /readyz answers, kept fresh by a thread of its own.
 *
 * The probe thread checks each backend this mode uses about once a second on
 * connections of its own (a lock client and a store, never a worker's), each
 * check bounded by that backend's timeouts, and keeps the result in a small
 * state that /readyz and /metrics read without waiting on anything. So the
 * probe answers in the time it takes to copy that state, however many claims
 * wait in the worker queue, and a hung backend can only make the state older
 * (the age is in the answer), never make the probe slow.
 *
 * The policy (ready_decide), and why: an instance is ready when it has
 * finished starting (its first round of checks is done), is not draining
 * (SIGTERM), and has no fault of its own: its Redis or PostgreSQL login is
 * refused. An outage of a backend that every replica shares does NOT make it
 * unready: that would take every replica out of the load balancer at once,
 * and clients would get connection errors instead of the service's JSON 503
 * with Retry-After. Backend states are reported in the body and in /metrics
 * (couponsvc_backend_up, couponsvc_backend_check_age_seconds).
 *
 * Thread safety notes: ready_start and ready_stop are called once each, from
 * the main thread. ready_get and ready_set_draining may be called from any
 * thread; ready_get takes the state's mutex only to copy the state, and the
 * probe thread holds it only to store a finished round.
 */
#ifndef COUPONSVC_READY_H
#define COUPONSVC_READY_H

#include <stddef.h>
#include <stdint.h>

#include "cfg.h"

typedef enum ready_backend {
    READY_REDIS = 0,
    READY_POSTGRES,
    READY__NBACKENDS,
} ready_backend_t;

typedef enum ready_health {
    READY_UNCHECKED = 0, /* no check has finished yet */
    READY_UP,            /* the last check succeeded */
    READY_DOWN,          /* unreachable, timed out or failing */
    READY_REFUSED,       /* it refused this instance's login */
} ready_health_t;

typedef struct ready_backend_state {
    int used;              /* this mode talks to the backend at all */
    ready_health_t health; /* the last finished check's result */
    int64_t checked_ns;    /* monotonic end of that check; 0 = never */
    char detail[256];      /* why it is not up; "" when up */
} ready_backend_state_t;

typedef struct ready_state {
    int started;  /* the first round of checks has finished */
    int draining; /* SIGTERM: the instance is on its way out */
    ready_backend_state_t backend[READY__NBACKENDS];
} ready_state_t;

/* Starts the probe thread for cfg's mode (borrowed for the process's
 * lifetime). Returns 0, or -1 with a log line. */
int ready_start(const cfg_t *cfg);

/* Stops and joins the thread (waits for a check in flight, which its
 * backend's timeout bounds). Accepts a ready_start that failed. */
void ready_stop(void);

/* From now on /readyz answers 503: the drain has begun. Idempotent. */
void ready_set_draining(void);

/* Copies the current state into *out. Never waits on a backend. */
void ready_get(ready_state_t *out);

/* The policy above. Returns 1 when ready; else 0 with the reason in
 * why[len]. */
int ready_decide(const ready_state_t *s, char *why, size_t len);

/* "redis", "postgres". */
const char *ready_backend_name(ready_backend_t b);

#endif
