/*
 * api.h: the HTTP API, independent of the HTTP library.
 *
 * http.c turns a libmicrohttpd request into an api_request_t, calls
 * api_handle, and sends the api_response_t back. Everything the contract
 * says about routes, status codes and JSON bodies lives in api.c. jansson
 * serves the HTTP edge (here and in req.c) and one backend, etcd, whose
 * gateway speaks JSON (lock_etcd*.c); nowhere else.
 */
#ifndef COUPONSVC_API_H
#define COUPONSVC_API_H

#include <stddef.h>
#include <stdint.h>

#include "cfg.h"
#include "claim.h"

typedef struct api_request {
    const char *method;        /* borrowed */
    const char *path;          /* borrowed; without the query string */
    const char *content_type;  /* borrowed; NULL if absent */
    const char *authorization; /* borrowed; NULL if absent */
    const char *body;          /* borrowed; may be NULL when body_len == 0 */
    size_t body_len;
    int body_too_large; /* the body passed COUPON_MAX_BODY */
    /* The claim's lock-wait deadline (CLOCK_MONOTONIC ns), counted from when
     * the request was queued for a worker; 0: COUPON_LOCK_WAIT_MS from the
     * start of the claim. */
    int64_t deadline_ns;
} api_request_t;

typedef struct api_response {
    unsigned status;
    char *body; /* new (free with api_response_free) */
    size_t len;
    const char *content_type; /* static */
    const char *allow;        /* static; set on 405 */
    unsigned retry_after;     /* seconds; 0 = no Retry-After header */
    int www_authenticate;     /* 401: add WWW-Authenticate: Bearer */
} api_response_t;

/* Borrows cfg for the process's lifetime. */
void api_init(const cfg_t *cfg);

/* Handles one request. Always fills *resp (500 with a JSON body if even
 * that fails). Thread-safe. With body_too_large set it decides from the
 * route alone (404, 405, 401 on the admin route, else 413) and never calls
 * a backend, so it may run on the event loop. */
void api_handle(const api_request_t *req, api_response_t *resp);

/* 1 if the request never touches a backend (GET /healthz, /readyz, /metrics:
 * /readyz reads the readiness probe's state) and may
 * be answered on the HTTP event-loop thread; 0 if it must go to a worker. */
int api_is_inline(const char *method, const char *path);

/* 1 for POST /claim, which the HTTP layer hands to api_claim_submit on the
 * event loop instead of queueing it for a worker. */
int api_is_claim(const char *method, const char *path);

enum {
    API_CLAIM_ANSWERED = 0, /* resp is filled: send it now */
    API_CLAIM_RUN = 1,      /* queue w for a worker: claim_run(w) */
    API_CLAIM_PARKED = 2,   /* w is parked (w->park was called) */
};

/* On the event loop, for a complete POST /claim: checks and parses the body
 * (4xx answered here, as api_handle would), fills w's coupon, user and
 * deadline (from req->deadline_ns, which must be set), and submits it (see
 * claim_submit in claim.h; the caller sets w's callbacks first). Never
 * waits on a backend. req and w are borrowed; resp is filled only for
 * API_CLAIM_ANSWERED. */
int api_claim_submit(const api_request_t *req, api_response_t *resp,
                     claim_waiter_t *w);

/* The answer for w's final result. resp's body is new. */
void api_claim_respond(const claim_waiter_t *w, api_response_t *resp);

/* Frees resp->body. Accepts NULL. */
void api_response_free(api_response_t *resp);

#endif
