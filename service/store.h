/*
 * store.h: PostgreSQL, the source of truth. Only this module includes libpq.
 *
 * A store_t is one PGconn plus its prepared statements and error state, used
 * by one thread at a time (each HTTP worker owns one). It connects lazily,
 * prepares every statement on connect, and after an error that leaves the
 * connection bad it drops it and connects (and prepares) again on the next
 * call. Each session runs with statement_timeout and
 * idle_in_transaction_session_timeout set, so no call waits forever on a row
 * lock or leaves a lock held forever, and with synchronous_commit at least
 * `on` (raised when the server's is lower, never lowered), so an answered
 * claim survives a server crash. Every call is bounded on the client side
 * too: one deadline (tx_deadline_ms) for the whole call, after which the
 * connection is dropped and the call fails; this is what bounds a call to a
 * server that went silent (a dead host, a black-holed network), which no
 * server-side timeout can.
 *
 * Return codes: STORE_OK (0); expected outcomes that are not failures have
 * positive names (STORE_NOT_FOUND, STORE_SOLD_OUT, STORE_FENCED, ...); a
 * failure is STORE_ERR (negative), store_errkind says which kind and
 * store_errstr says it in words.
 */
#ifndef COUPONSVC_STORE_H
#define COUPONSVC_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "cfg.h"

enum {
    STORE_OK = 0,
    STORE_NOT_FOUND = 1, /* no such coupon */
    STORE_SOLD_OUT = 2,  /* item: the coupon (every bucket) has no stock */
    STORE_FENCED = 3,    /* our fence is below last_fence: nothing written */
    STORE_ALREADY = 4,   /* this user already holds a claim */
    STORE_EXISTS = 5,    /* coupon id taken (create) */
    STORE_ABORTED = 6,   /* the commit gate said no: rolled back */
    /* The connection was lost (or the deadline passed) after COMMIT was
     * sent: it may have committed or not. */
    STORE_COMMIT_UNKNOWN = 7,
    /* item: this bucket has no stock left; other buckets of the coupon
     * still have some. */
    STORE_BUCKET_EMPTY = 8,
    /* whole call: before the coupon's starts_at (PostgreSQL's clock):
     * nothing written. */
    STORE_NOT_STARTED = 9,
    /* whole call: at or after its ends_at: nothing written, and never will
     * be. */
    STORE_EXPIRED = 10,
    /* whole call: bucket -1 for a sharded coupon, or a bucket it does not
     * have: nothing written (store_claim_shape says its shape). */
    STORE_WRONG_BUCKET = 11,
    /* store.c's own, between its steps; never returned by a store_*
     * function: the naive check found nothing that answers, so the write
     * follows (STORE__PROCEED); the claim statement wrote, so there is
     * something to commit (STORE__WROTE). */
    STORE__PROCEED = 100,
    STORE__WROTE = 101,
    STORE_ERR = -1,
    STORE_EREFUSED = -2, /* the server refused this login (store_probe) */
};

#define STORE_NO_FENCE (-1)     /* the claim carries no fence (atomic mode) */
#define STORE_NO_TIME INT64_MIN /* no bound on that side of the window */
#define STORE_BUCKETS_MAX 64    /* most buckets one coupon may have */

typedef struct store store_t;

typedef struct store_opts {
    const char *dsn;      /* libpq conninfo or URI; borrowed */
    const char *instance; /* written into claims.instance; borrowed */
    uint32_t connect_timeout_s;
    uint32_t statement_timeout_ms;
    uint32_t idle_tx_timeout_ms; /* 0 = off */
    uint32_t tx_deadline_ms;     /* client-side bound on one call */
} store_opts_t;

/* One claim in a batch. The caller fills user_id; the store fills the rest. */
typedef struct store_item {
    const char *user_id; /* in; borrowed */
    int status;          /* out: STORE_OK (claimed now), STORE_ALREADY,
                            STORE_SOLD_OUT or STORE_BUCKET_EMPTY; after a
                            whole-call STORE_NOT_STARTED / STORE_EXPIRED /
                            STORE_FENCED, STORE_ALREADY for a user who holds
                            a claim and that code for the others */
    int64_t claim_id;    /* out: claims.id (new or existing) */
    int64_t fence;       /* out: the claim's fence, STORE_NO_FENCE if NULL */
    int64_t seq;         /* out: the claim's claims.seq */
    int64_t remaining;   /* out: the coupon's stock left after this claim (or
                            now), all buckets together */
} store_item_t;

/* One bucket of a sharded coupon. */
typedef struct store_bucket {
    int64_t total, claimed, last_fence;
} store_bucket_t;

typedef struct store_coupon {
    /* claimed: for a sharded coupon, the sum over its buckets; last_fence:
     * the coupons row's (a sharded coupon's stays 0: see the buckets). */
    int64_t total, claimed, last_fence;
    int buckets;                              /* 1: unsharded */
    store_bucket_t bucket[STORE_BUCKETS_MAX]; /* [0, buckets) when > 1 */
    /* The window, microseconds since the Unix epoch, or STORE_NO_TIME. */
    int64_t starts_at_us, ends_at_us;
} store_coupon_t;

/* Called after the claims were written and before COMMIT. Return 0 to
 * commit, anything else to roll back (the claim then returns STORE_ABORTED).
 * This is where the claim checks that its lease still holds. */
typedef int (*store_gate_fn)(void *arg);

/* Returns a new store (free with store_free); NULL when out of memory. The
 * strings in opts are copied. Nothing is sent until the first call. */
store_t *store_new(const store_opts_t *opts);

/* Fills *o from the configuration: every PostgreSQL setting, one place for
 * all the module's users (workers, the readiness probe, migrate). The
 * strings are borrowed from cfg. */
void store_opts_from_cfg(store_opts_t *o, const cfg_t *cfg);

/* Closes the connection and frees. Accepts NULL. */
void store_free(store_t *st);

/* The last error, borrowed; valid until the next call on st. */
const char *store_errstr(const store_t *st);

/* What kind of failure the last STORE_ERR (or STORE_EREFUSED) was, kept
 * beside store_errstr as hiredis keeps err beside errstr: callers decide on
 * the kind, never on the words. */
typedef enum store_errkind {
    STORE_ENONE = 0, /* no failure yet */
    STORE_EIO,       /* unreachable, the connection failed, or the call's
                        deadline (COUPON_PG_TX_DEADLINE_MS) passed */
    STORE_EAUTH,     /* the server refused this login (store_probe's
                        STORE_EREFUSED) */
    STORE_ESERVER,   /* the server answered an error (a SQLSTATE, a failed
                        transaction, a conflict that kept recurring) */
    STORE_EPROTO,    /* an answer this module did not expect */
    STORE_ESYS,      /* a local failure: out of memory */
} store_errkind_t;

/* The last failure's kind; STORE_ENONE before the first. */
store_errkind_t store_errkind(const store_t *st);

/*
 * The claim, for 1..n users of one coupon, in ONE transaction.
 *
 * bucket is -1 for an unsharded coupon (its coupons row is the stock), or
 * 0..B-1 for bucket b of a sharded one (its coupon_buckets row); fence is the
 * lease's on that resource (the coupon, or ID#b), or STORE_NO_FENCE.
 *
 * The write is set-based: a fixed number of statements whatever n is, no
 * savepoints. The users who already hold a claim get it back
 * (STORE_ALREADY); so does a user named twice in items: the second gets the
 * first's claim. The others, in their order in items, are claimed while
 * stock lasts, by one conditional UPDATE that raises claimed by their count,
 * guarded by the fence (a lease's first write needs last_fence < fence),
 * the stock (claimed + k <= total) and the window (PostgreSQL's clock);
 * past the stock an item is STORE_SOLD_OUT, or STORE_BUCKET_EMPTY when
 * another bucket of the coupon still has stock. A refused fence is the
 * whole call: STORE_FENCED, rolled back, *last_fence_out set. When
 * something was written, gate(arg) decides between COMMIT and ROLLBACK. A
 * COMMIT that the server answers with the tag ROLLBACK (the transaction
 * had failed) is STORE_ERR: nothing was written.
 *
 * The whole call, connecting included, is bounded by tx_deadline_ms. A
 * prepared statement whose result type changed under it (an online
 * migration: SQLSTATE 0A000) is prepared again and the transaction run once
 * more, within the same deadline.
 *
 * Returns STORE_OK (see each item's status), STORE_NOT_FOUND, STORE_FENCED,
 * STORE_NOT_STARTED, STORE_EXPIRED, STORE_WRONG_BUCKET, STORE_ABORTED,
 * STORE_COMMIT_UNKNOWN or STORE_ERR. items is borrowed; gate may be NULL;
 * last_fence_out may be NULL when fence is STORE_NO_FENCE.
 */
int store_claim(store_t *st, const char *coupon, int bucket, int64_t fence,
                store_item_t *items, size_t n, store_gate_fn gate, void *arg,
                int64_t *last_fence_out);

/* What the last store_claim on st learnt of its coupon (also after
 * STORE_WRONG_BUCKET and the whole-call refusals): *buckets (1: unsharded,
 * 0: not known, the call failed first) and *stock_mask, bit b set when
 * bucket b had stock left after the call (bit 0 alone for an unsharded
 * coupon). Read from the same transaction, so exact as of its commit. */
void store_claim_shape(const store_t *st, int *buckets, uint64_t *stock_mask);

/* Round trips to PostgreSQL st has made (every statement or pipeline sent
 * and answered, connecting and preparing included), for tests and
 * measurements: an uncontended claim costs 2. */
uint64_t store_round_trips(const store_t *st);

/* The naive claim, for demonstrating the race: read claimed, then write
 * claimed = <read> + 1 and insert, as separate autocommit statements with
 * nothing holding other writers off between them. Never use it for real. */
int store_claim_naive(store_t *st, const char *coupon, store_item_t *item);

/* Creates a coupon with its stock split into buckets (1: unsharded; else
 * 2..min(total, STORE_BUCKETS_MAX) coupon_buckets rows, as even as
 * possible: the first total % buckets get one more) and its window
 * (microseconds since the Unix epoch, STORE_NO_TIME for an open side;
 * starts_at_us < ends_at_us when both are set). One statement. STORE_OK,
 * STORE_EXISTS or STORE_ERR. */
int store_coupon_create(store_t *st, const char *id, int64_t total, int buckets,
                        int64_t starts_at_us, int64_t ends_at_us);

/* Reads a coupon, its buckets and its window. STORE_OK, STORE_NOT_FOUND or
 * STORE_ERR. */
int store_coupon_get(store_t *st, const char *id, store_coupon_t *out);

/* Called once per claimant with its claim (claim_id, and fence or
 * STORE_NO_FENCE); user_id is borrowed for the call only. Return 0 to go
 * on, anything else to stop (store_claimants then returns it). */
typedef int (*store_claimant_fn)(void *arg, const char *user_id, size_t len,
                                 int64_t claim_id, int64_t fence);

/* Every user who holds a claim on coupon, in no particular order, streamed
 * to fn, for the fast path: only once the set is final, that is once the
 * coupon is sold out or its window has ended, judged in one transaction that
 * first takes the stock rows' locks (see store.c for why that makes it
 * exact). Rows are read one at a time, so a coupon with a million claimants
 * does not sit in memory at once. Returns STORE_EXPIRED or STORE_SOLD_OUT
 * when the set was streamed (*claimed_out: the coupon's claimed count, which
 * the rows must match; *remaining_out: its stock left, final too),
 * STORE_OK when the set is not final (nothing streamed), STORE_NOT_FOUND,
 * STORE_ERR, or what fn returned. claimed_out and remaining_out are
 * borrowed. */
int store_claimants(store_t *st, const char *coupon, store_claimant_fn fn,
                    void *arg, int64_t *claimed_out, int64_t *remaining_out);

/* Reads user's existing claim of coupon (no transaction, no lock), for
 * GET /coupons/{id}/claims/{user}: STORE_OK with item->status STORE_ALREADY
 * and the claim, STORE_NOT_FOUND when the user holds none (or there is no
 * such coupon), or STORE_ERR. item is borrowed. */
int store_claim_lookup(store_t *st, const char *coupon, store_item_t *item);

/* SELECT 1. STORE_OK or STORE_ERR. */
int store_ping(store_t *st);

/* One migration, as compiled into the binary (build/service/migrations.c). */
typedef struct store_migration {
    int version;      /* from the file name: 001_init.sql -> 1 */
    const char *name; /* the file name */
    const char *sql;
} store_migration_t;

extern const store_migration_t store_migrations[];
extern const size_t store_migrations_count;

/* Applies the migrations not yet recorded in schema_migrations, in order,
 * each in its own transaction, under an advisory lock so that replicas
 * starting together do not race. Returns the number applied, or STORE_ERR
 * with the reason in errstr. */
int store_migrate(const store_opts_t *opts, char *errstr, size_t errlen);

/* The readiness probe's check: store_ping, telling a refused login apart.
 * STORE_OK; STORE_EREFUSED when the connect failed because the server
 * refused this login itself: SQLSTATE class 28 (wrong password, no such role,
 * no pg_hba.conf entry), 3D000 (no such database), or a password it wanted and
 * the DSN lacks; STORE_ERR for anything else (unreachable, starting up, too
 * many clients). store_errstr says what failed. */
int store_probe(store_t *st);

#endif
