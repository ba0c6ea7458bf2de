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

typedef enum claim_outcome {
    CLAIM_CLAIMED = 0, /* 201: a new claim */
    CLAIM_ALREADY,     /* 200: this user's existing claim */
    CLAIM_SOLD_OUT,    /* 410 */
    CLAIM_NOT_FOUND,   /* 404: no such coupon */
    CLAIM_FENCED,      /* 409: our fence was refused; nothing written */
    CLAIM_BUSY,        /* 503: the lock wait ran past its deadline */
    CLAIM_UNAVAILABLE, /* 503: Redis or PostgreSQL failed */
    CLAIM_LEASE_LOST,  /* 503: lease lost before COMMIT; rolled back */
} claim_outcome_t;

typedef struct claim_result {
    claim_outcome_t outcome;
    int64_t claim_id;  /* CLAIMED, ALREADY */
    int64_t fence;     /* the claim's fence; -1 when it has none */
    int64_t remaining; /* stock left */
    char detail[200];  /* for errors: what happened */
} claim_result_t;

typedef struct claim_coupon {
    int64_t total, claimed, last_fence;
} claim_coupon_t;

/* Reads the configuration (borrowed for the process's lifetime) and starts
 * the watchdog in lock mode. Returns 0, or -1 with a log line. */
int claim_init(const cfg_t *cfg);

/* Stops the watchdog. Call after every request has finished. */
void claim_shutdown(void);

/* Claims coupon for user. Never fails as a call: every outcome, including
 * backend failure, is in *out. */
void claim_one(const char *coupon, const char *user, claim_result_t *out);

/* 0 created, 1 exists, -1 backend failure (detail filled). */
int claim_coupon_create(const char *id, int64_t total, char *detail,
                        size_t len);

/* 0 found, 1 not found, -1 backend failure (detail filled). */
int claim_coupon_get(const char *id, claim_coupon_t *out, char *detail,
                     size_t len);

#endif
