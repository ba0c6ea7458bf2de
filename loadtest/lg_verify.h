/*
 * lg_verify.h: the invariant checker, run in PostgreSQL after a load.
 *
 * One checker for everything that claims coupons and wants to know whether
 * the database is still right: the load generator's --verify-dsn and the
 * test harness's end-of-test check both call lg_verify_run. It reads the
 * database only (one REPEATABLE READ snapshot, temporary tables, ROLLBACK),
 * so it is as good after a load made with wrk as after one of our own.
 *
 * What it checks, per coupon, and per stock bucket of a sharded coupon
 * (a coupon with rows in coupon_buckets):
 *
 *   - stock: claimed <= total, and the claim rows too (an oversell shows in
 *     whichever of the two ran ahead);
 *   - rows = claimed: every claim row counted once by its counter (for a
 *     sharded coupon: each bucket's rows against the bucket's counter; rows
 *     without a bucket against coupons.claimed);
 *   - one claim per user, over all buckets;
 *   - every 2xx claim the caller was answered has its row (the caller
 *     passes the answered (coupon, user) pairs);
 *   - seq: within a counter, the claims' seq values are exactly 1..rows
 *     (each UPDATE that took a row lock produced one value);
 *   - fences, in commit order (seq) within each counter: two neighbours may
 *     carry the same fence only when one transaction wrote both (same
 *     xmin: a batch under one lease); between transactions the fence
 *     strictly rises. This is what catches two leases that drew the same
 *     fence after Redis lost its counter, and a stale holder that wrote
 *     after a newer one. Rows without a fence (naive and atomic modes) are
 *     left out of this check.
 *
 * The schema is read as it is: a database without coupon_buckets or
 * claims.bucket (the first migration only) is checked as unsharded.
 *
 * Thread safety: none needed; a call uses only the connection it is given.
 */
#ifndef COUPONSVC_LG_VERIFY_H
#define COUPONSVC_LG_VERIFY_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The longest coupon or user id a source may produce, NUL included. */
#define LG_VERIFY_ID_MAX 512

/* A list of n ids (or id pairs), produced on demand so that a caller with a
 * million answers need not build them as strings first. get writes item i
 * (i < n) NUL-terminated into the buffers, each LG_VERIFY_ID_MAX bytes;
 * user is NULL for a list of coupons. arg is the caller's. */
typedef struct lg_verify_list {
    uint64_t n;
    void (*get)(void *arg, uint64_t i, char *coupon, char *user);
    void *arg;
} lg_verify_list_t;

/* What one check found. Counts are sums over the checked coupons.
 *
 * Invariant: ok is true exactly when err is empty and every violation
 * count below it is zero (fence_ties_in_tx is not a violation). */
typedef struct lg_verify_report {
    char err[256];              /* could not check: why; "" otherwise */
    long long coupons;          /* coupons checked */
    long long coupons_missing;  /* of those, not in the coupons table */
    long long stock;            /* sum of coupons.total */
    long long claimed;          /* sum of the counters (buckets included) */
    long long claim_rows;       /* rows in claims */
    long long claimed_2xx;      /* answered pairs given by the caller */
    long long oversell;         /* sum of max(0, max(rows, claimed) - total) */
    long long oversold_coupons; /* coupons with oversell > 0 */
    long long duplicate_users;  /* rows minus distinct (coupon, user) */
    long long rows_mismatch;    /* coupons whose rows != claimed */
    long long missing_rows;     /* distinct answered pairs without a row */
    long long buckets;          /* coupon_buckets rows of these coupons */
    long long bucket_oversell;  /* sum over buckets of max(0, used - total) */
    long long oversold_buckets; /* buckets with an oversell */
    long long bucket_rows_mismatch; /* buckets whose rows != claimed, plus
                                       claim rows naming no existing bucket */
    long long seq_mismatch;         /* counters whose seqs are not 1..rows */
    long long fenced_rows;          /* rows with a non-NULL fence */
    long long fence_repeats;        /* equal to the previous fence, written
                                       by another transaction */
    long long fence_decreases;      /* below the previous fence */
    long long fence_ties_in_tx;     /* equal, same transaction: allowed */
    int fences_increasing;          /* 1, 0, or -1 for none (no fences) */
    char first[256]; /* the first violation found, in words; "" if none */
    bool ok;         /* every check passed */
} lg_verify_report_t;

/* Checks the coupons in `coupons` (user = NULL) with the answered claims in
 * `answered` (may be NULL: none) on pg, an open connection not inside a
 * transaction (borrowed; it is left outside one). Fills *out (zeroed
 * first). Returns 0 when the check ran (out->ok says whether it passed), -1
 * when it could not (out->err says why). */
int lg_verify_run(PGconn *pg, const lg_verify_list_t *coupons,
                  const lg_verify_list_t *answered, lg_verify_report_t *out);

/* lg_verify_run on a connection of its own to dsn (borrowed), closed
 * before it returns. Returns as lg_verify_run does; a failed connect is
 * -1 with out->err "connect: <libpq's first line>". */
int lg_verify_dsn(const char *dsn, const lg_verify_list_t *coupons,
                  const lg_verify_list_t *answered, lg_verify_report_t *out);

#endif
