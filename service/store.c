/*
 * store.c: see store.h.
 *
 * Every statement is prepared once per connection and run with text
 * parameters. A transaction is: BEGIN, per item the check and the write,
 * then the gate, then COMMIT. Round trips for one claim: 4 (BEGIN, check,
 * write, COMMIT).
 *
 * The write is one statement, a data-modifying CTE: the conditional UPDATE
 * and the INSERT of the claim row, which takes its seq from the UPDATE's
 * RETURNING. If the UPDATE matches no row, the INSERT inserts none.
 */
#include "store.h"

#include <errno.h>
#include <libpq-fe.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fault.h"
#include "log.h"
#include "metrics.h"
#include "mono.h"

struct store {
    PGconn *conn; /* NULL while disconnected */
    char *dsn;    /* owned copies of the options */
    char *instance;
    uint32_t connect_timeout_s, statement_timeout_ms, idle_tx_timeout_ms;
    char errstr[256];
};

/* ---------------------------------------------------------- statements --- */

/*
 * !!! NEGATIVE CONTROLS. NEVER DEFINE THESE OUTSIDE `make test-negative`. !!!
 *
 * COUPONSVC_UNSAFE_NO_FENCE drops the fence from the write's WHERE,
 * COUPONSVC_UNSAFE_NO_STOCK_CHECK drops `claimed < total`, and
 * COUPONSVC_UNSAFE_FENCE_NOT_STRICT lets a lease's first write through with
 * last_fence == fence (store__claim_item). Each builds a couponsvc with
 * exactly one guard removed, into a build/.../neg-<name>
 * directory only (the Makefile refuses any other), so that the fault tests
 * can show they catch the bug that guard exists for: a test that cannot fail
 * proves nothing. Both are off by default; the real binary never has them.
 */
#if defined(COUPONSVC_UNSAFE_NO_FENCE) &&                                      \
    defined(COUPONSVC_UNSAFE_NO_STOCK_CHECK)
#error "one negative control at a time"
#elif defined(COUPONSVC_UNSAFE_NO_FENCE)
#pragma message "COUPONSVC_UNSAFE_NO_FENCE: a couponsvc WITHOUT fencing"
#define STORE__WRITE_FENCED_WHERE                                              \
    "   WHERE id = $1 AND $5::bigint IS NOT NULL AND claimed < total"
#elif defined(COUPONSVC_UNSAFE_NO_STOCK_CHECK)
#pragma message "COUPONSVC_UNSAFE_NO_STOCK_CHECK: a couponsvc that oversells"
#define STORE__WRITE_FENCED_WHERE                                              \
    "   WHERE id = $1 AND last_fence <= $5::bigint"
#else
#define STORE__WRITE_FENCED_WHERE                                              \
    "   WHERE id = $1 AND last_fence <= $5::bigint AND claimed < total"
#endif

typedef struct store__stmt {
    const char *name;
    const char *sql;
} store__stmt_t;

static const store__stmt_t store__stmts[] = {
    /* The check: the coupon, and this user's claim if any. */
    {"check", "SELECT c.total, c.claimed, c.last_fence, cl.id, cl.fence"
              "  FROM coupons c"
              "  LEFT JOIN claims cl ON cl.coupon_id = c.id AND cl.user_id = $2"
              " WHERE c.id = $1"},
    /* The fenced, conditional increment and the claim row. $5 is the
     * highest last_fence this write may find: fence - 1 for a lease's first
     * write, fence for its later writes in the same transaction (a batch).
     * So a stale holder is refused, and so is a NEW lease that drew a fence
     * someone already wrote with (possible only after Redis lost the
     * counter). claimed < total refuses a check that went stale: fences
     * order writes, not reads. */
    {"write_fenced",
     "WITH upd AS ("
     "  UPDATE coupons SET claimed = claimed + 1, last_fence = "
     "$3::bigint" STORE__WRITE_FENCED_WHERE "  RETURNING claimed)"
     "INSERT INTO claims (coupon_id, user_id, fence, seq, instance)"
     " SELECT $1, $2, $3::bigint, upd.claimed, $4 FROM upd"
     " RETURNING id, seq"},
    /* Atomic mode: the same without a fence. */
    {"write_free",
     "WITH upd AS ("
     "  UPDATE coupons SET claimed = claimed + 1"
     "   WHERE id = $1 AND claimed < total"
     "  RETURNING claimed)"
     "INSERT INTO claims (coupon_id, user_id, fence, seq, instance)"
     " SELECT $1, $2, NULL, upd.claimed, $3 FROM upd"
     " RETURNING id, seq"},
    {"coupon_get",
     "SELECT total, claimed, last_fence FROM coupons WHERE id = $1"},
    {"claim_get", "SELECT cl.id, cl.fence, c.total - c.claimed"
                  "  FROM claims cl JOIN coupons c ON c.id = cl.coupon_id"
                  " WHERE cl.coupon_id = $1 AND cl.user_id = $2"},
    {"coupon_create", "INSERT INTO coupons (id, total) VALUES ($1, $2::integer)"
                      " ON CONFLICT (id) DO NOTHING RETURNING id"},
    /* Naive mode's write: the value computed by the client, unguarded. */
    {"naive_set", "UPDATE coupons SET claimed = $2::integer WHERE id = $1"},
    {"naive_insert",
     "INSERT INTO claims (coupon_id, user_id, fence, seq, instance)"
     " VALUES ($1, $2, NULL, $3::integer, $4) RETURNING id"},
};

#define STORE__NSTMTS (sizeof(store__stmts) / sizeof(store__stmts[0]))

/* ------------------------------------------------------------ plumbing --- */

store_t *store_new(const store_opts_t *o) {
    store_t *st = calloc(1, sizeof(*st));
    if (st == NULL) {
        return NULL;
    }
    st->dsn = strdup(o->dsn);
    st->instance = strdup(o->instance);
    if (st->dsn == NULL || st->instance == NULL) {
        store_free(st);
        return NULL;
    }
    st->connect_timeout_s = o->connect_timeout_s;
    st->statement_timeout_ms = o->statement_timeout_ms;
    st->idle_tx_timeout_ms = o->idle_tx_timeout_ms;
    return st;
}

void store_free(store_t *st) {
    if (st == NULL) {
        return;
    }
    if (st->conn != NULL) {
        PQfinish(st->conn);
    }
    free(st->dsn);
    free(st->instance);
    free(st);
}

const char *store_errstr(const store_t *st) {
    return st->errstr;
}

/* Copies libpq's message without its trailing newline. */
static void store__seterr(store_t *st, const char *what, const char *msg) {
    snprintf(st->errstr, sizeof(st->errstr), "postgres: %s: %s", what,
             msg != NULL ? msg : "?");
    size_t n = strlen(st->errstr);
    while (n > 0 && (st->errstr[n - 1] == '\n' || st->errstr[n - 1] == ' ')) {
        st->errstr[--n] = '\0';
    }
}

/* Records a failure. If the connection went bad it is dropped, so the next
 * call reconnects and prepares again. Always returns STORE_ERR. */
static int store__fail(store_t *st, const char *what, const PGresult *res) {
    const char *msg = res != NULL ? PQresultErrorMessage(res) : NULL;
    if ((msg == NULL || msg[0] == '\0') && st->conn != NULL) {
        msg = PQerrorMessage(st->conn);
    }
    store__seterr(st, what, msg);
    metrics_inc(M_PG_ERRORS);
    if (st->conn != NULL && PQstatus(st->conn) != CONNECTION_OK) {
        PQfinish(st->conn);
        st->conn = NULL;
    }
    return STORE_ERR;
}

/* Server notices ("relation already exists, skipping") go to the debug log
 * instead of libpq's default, a bare line on stderr. */
static void store__notice(void *arg, const char *msg) {
    (void)arg;
    size_t n = strlen(msg);
    while (n > 0 && msg[n - 1] == '\n') {
        n--;
    }
    log_debug("postgres.notice", "msg=\"%.*s\"", (int)n, msg);
}

static PGconn *store__open(const char *dsn, uint32_t connect_timeout_s,
                           char *errstr, size_t errlen) {
    char timeout[16];
    snprintf(timeout, sizeof(timeout), "%u", connect_timeout_s);
    /* Later keywords override earlier ones, so anything the DSN sets (it is
     * expanded from "dbname") wins over these defaults. */
    const char *keys[] = {"connect_timeout", "application_name", "dbname",
                          NULL};
    const char *vals[] = {timeout, "couponsvc", dsn, NULL};
    PGconn *c = PQconnectdbParams(keys, vals, 1);
    if (c == NULL || PQstatus(c) != CONNECTION_OK) {
        snprintf(errstr, errlen, "postgres: connect: %s",
                 c != NULL ? PQerrorMessage(c) : "out of memory");
        size_t n = strlen(errstr);
        while (n > 0 && errstr[n - 1] == '\n') {
            errstr[--n] = '\0';
        }
        PQfinish(c);
        return NULL;
    }
    PQsetNoticeProcessor(c, store__notice, NULL);
    return c;
}

static int store__connect(store_t *st) {
    if (st->conn != NULL) {
        return STORE_OK;
    }
    st->conn = store__open(st->dsn, st->connect_timeout_s, st->errstr,
                           sizeof(st->errstr));
    if (st->conn == NULL) {
        metrics_inc(M_PG_ERRORS);
        return STORE_ERR;
    }

    char set[160];
    snprintf(set, sizeof(set),
             "SET statement_timeout = %u; "
             "SET idle_in_transaction_session_timeout = %u",
             st->statement_timeout_ms, st->idle_tx_timeout_ms);
    PGresult *res = PQexec(st->conn, set);
    int ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    if (!ok) {
        store__fail(st, "session settings", res);
        PQclear(res);
        if (st->conn != NULL) {
            PQfinish(st->conn);
            st->conn = NULL;
        }
        return STORE_ERR;
    }
    PQclear(res);

    for (size_t i = 0; i < STORE__NSTMTS; i++) {
        res = PQprepare(st->conn, store__stmts[i].name, store__stmts[i].sql, 0,
                        NULL);
        if (PQresultStatus(res) != PGRES_COMMAND_OK) {
            store__fail(st, store__stmts[i].name, res);
            PQclear(res);
            if (st->conn != NULL) {
                PQfinish(st->conn);
                st->conn = NULL;
            }
            return STORE_ERR;
        }
        PQclear(res);
    }
    return STORE_OK;
}

/* Runs a prepared statement. Returns the result (PQclear it) when its status
 * is `want`; otherwise records the failure and returns NULL. */
static PGresult *store__exec(store_t *st, const char *name, int n,
                             const char *const *params, ExecStatusType want) {
    PGresult *res = PQexecPrepared(st->conn, name, n, params, NULL, NULL, 0);
    if (PQresultStatus(res) != want) {
        store__fail(st, name, res);
        PQclear(res);
        return NULL;
    }
    return res;
}

static int store__simple(store_t *st, const char *sql) {
    PGresult *res = PQexec(st->conn, sql);
    int ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    if (!ok) {
        store__fail(st, sql, res);
    }
    PQclear(res);
    return ok ? STORE_OK : STORE_ERR;
}

/* ROLLBACK after a failure; its own failure only matters for the connection
 * state, which store__fail already handles. */
static void store__rollback(store_t *st) {
    if (st->conn != NULL && PQtransactionStatus(st->conn) != PQTRANS_IDLE) {
        char keep[sizeof(st->errstr)];
        memcpy(keep, st->errstr, sizeof(keep));
        store__simple(st, "ROLLBACK");
        memcpy(st->errstr, keep, sizeof(keep));
    }
}

static int64_t store__int(const PGresult *res, int row, int col) {
    return PQgetisnull(res, row, col)
               ? STORE_NO_FENCE
               : strtoll(PQgetvalue(res, row, col), NULL, 10);
}

static int store__is_unique_violation(const PGresult *res) {
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    return state != NULL && strcmp(state, "23505") == 0;
}

/* Fills item with the user's existing claim (outside or inside a
 * transaction). */
static int store__existing(store_t *st, const char *coupon,
                           store_item_t *item) {
    const char *p[] = {coupon, item->user_id};
    PGresult *res = store__exec(st, "claim_get", 2, p, PGRES_TUPLES_OK);
    if (res == NULL) {
        return STORE_ERR;
    }
    if (PQntuples(res) != 1) {
        PQclear(res);
        snprintf(st->errstr, sizeof(st->errstr),
                 "postgres: claim of %s vanished", item->user_id);
        return STORE_ERR;
    }
    item->status = STORE_ALREADY;
    item->claim_id = store__int(res, 0, 0);
    item->fence = store__int(res, 0, 1);
    item->remaining = store__int(res, 0, 2);
    PQclear(res);
    return STORE_OK;
}

/* --------------------------------------------------------------- claim --- */

/* The check: reads the coupon and the user's claim. Returns STORE_ERR,
 * STORE_NOT_FOUND, STORE_OK with item->status set when the check already
 * answers (already claimed, sold out), or STORE__PROCEED with the coupon's
 * *total and *claimed when a write should follow. */
#define STORE__PROCEED 100
static int store__check(store_t *st, const char *coupon, store_item_t *item,
                        int64_t *total, int64_t *claimed) {
    const char *p[2] = {coupon, item->user_id};
    PGresult *res = store__exec(st, "check", 2, p, PGRES_TUPLES_OK);
    if (res == NULL) {
        return STORE_ERR;
    }
    if (PQntuples(res) == 0) {
        PQclear(res);
        return STORE_NOT_FOUND;
    }
    *total = store__int(res, 0, 0);
    *claimed = store__int(res, 0, 1);
    if (!PQgetisnull(res, 0, 3)) {
        item->status = STORE_ALREADY;
        item->claim_id = store__int(res, 0, 3);
        item->fence = store__int(res, 0, 4);
        item->remaining = *total - *claimed;
        PQclear(res);
        return STORE_OK;
    }
    PQclear(res);
    if (*claimed >= *total) {
        item->status = STORE_SOLD_OUT;
        item->remaining = 0;
        return STORE_OK;
    }
    return STORE__PROCEED;
}

/* One item inside the open transaction. Returns STORE_OK (item->status set),
 * STORE_NOT_FOUND, STORE_FENCED, STORE_ALREADY when the INSERT hit another
 * transaction's claim of the same user (the transaction is then aborted),
 * or STORE_ERR. */
static int store__claim_item(store_t *st, const char *coupon, int64_t fence,
                             const char *fence_txt, store_item_t *item,
                             int64_t *last_fence_out, int *wrote) {
    const char *p[5] = {coupon, item->user_id};
    /* The highest last_fence we may find: see write_fenced. */
#ifdef COUPONSVC_UNSAFE_FENCE_NOT_STRICT
    int64_t max_seen = fence; /* negative control: see the top */
#else
    int64_t max_seen = *wrote ? fence : fence - 1;
#endif
    char max_txt[24];
    snprintf(max_txt, sizeof(max_txt), "%lld", (long long)max_seen);
    int64_t total, claimed;
    int crc = store__check(st, coupon, item, &total, &claimed);
    if (crc != STORE__PROCEED) {
        return crc;
    }
    fault_pause(FAULT_AFTER_CHECK); /* tests only: let the check go stale */

    /* The write. */
    int np;
    const char *stmt;
    if (fence != STORE_NO_FENCE) {
        p[2] = fence_txt;
        p[3] = st->instance;
        p[4] = max_txt;
        np = 5;
        stmt = "write_fenced";
    } else {
        p[2] = st->instance;
        np = 3;
        stmt = "write_free";
    }
    PGresult *res = PQexecPrepared(st->conn, stmt, np, p, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        if (store__is_unique_violation(res)) {
            /* Another transaction inserted this user's claim after our
             * check (only possible without the lock, or for a stale
             * holder). Ours is aborted; the caller returns theirs. */
            PQclear(res);
            return STORE_ALREADY;
        }
        store__fail(st, stmt, res);
        PQclear(res);
        return STORE_ERR;
    }
    if (PQntuples(res) == 1) {
        item->status = STORE_OK;
        item->claim_id = store__int(res, 0, 0);
        item->fence = fence;
        item->remaining = total - store__int(res, 0, 1);
        PQclear(res);
        *wrote = 1;
        return STORE_OK;
    }
    PQclear(res);

    /* Zero rows: sold out since our check, or fenced. Read what stopped us
     * (READ COMMITTED: this statement sees the latest committed row). */
    p[1] = NULL;
    res = store__exec(st, "coupon_get", 1, p, PGRES_TUPLES_OK);
    if (res == NULL) {
        return STORE_ERR;
    }
    if (PQntuples(res) != 1) {
        PQclear(res);
        return STORE_NOT_FOUND;
    }
    int64_t last_fence = store__int(res, 0, 2);
    PQclear(res);
    if (fence != STORE_NO_FENCE && last_fence > max_seen) {
        *last_fence_out = last_fence;
        return STORE_FENCED;
    }
    item->status = STORE_SOLD_OUT;
    item->remaining = 0;
    return STORE_OK;
}

/* BEGIN, on a connection that may have died while it sat idle (PostgreSQL
 * restarted, a proxy timed it out). If BEGIN finds the connection dead,
 * nothing of this transaction was sent yet, so it is safe to connect again
 * and BEGIN once more; otherwise every worker would answer one spurious 503
 * after each PostgreSQL restart. */
static int store__begin(store_t *st) {
    int reused = st->conn != NULL;
    if (store__connect(st) != STORE_OK) {
        return STORE_ERR;
    }
    if (store__simple(st, "BEGIN") == STORE_OK) {
        return STORE_OK;
    }
    if (!reused || st->conn != NULL) {
        return STORE_ERR; /* a fresh connection, or a live one that refused */
    }
    if (store__connect(st) != STORE_OK) {
        return STORE_ERR;
    }
    return store__simple(st, "BEGIN");
}

int store_claim(store_t *st, const char *coupon, int64_t fence,
                store_item_t *items, size_t n, store_gate_fn gate, void *arg,
                int64_t *last_fence_out) {
    if (store__begin(st) != STORE_OK) {
        return STORE_ERR;
    }

    char fence_txt[24];
    snprintf(fence_txt, sizeof(fence_txt), "%lld", (long long)fence);
    int wrote = 0;
    int rc = STORE_OK;
    size_t i;

    /* A batch of more than one item writes each under a savepoint, so a
     * conflict on one user undoes only that user's increment. */
    int savepoints = n > 1;
    for (i = 0; i < n && rc == STORE_OK; i++) {
        if (savepoints && store__simple(st, "SAVEPOINT item") != STORE_OK) {
            rc = STORE_ERR;
            break;
        }
        rc = store__claim_item(st, coupon, fence, fence_txt, &items[i],
                               last_fence_out, &wrote);
        if (rc == STORE_ALREADY && savepoints) {
            rc = store__simple(st, "ROLLBACK TO SAVEPOINT item");
            if (rc == STORE_OK) {
                rc = store__existing(st, coupon, &items[i]);
            }
        }
    }

    if (rc == STORE_ALREADY) {
        /* n == 1: the transaction is aborted; nothing of ours was written.
         * Roll back and return the other transaction's claim. */
        store__rollback(st);
        return store__existing(st, coupon, &items[0]);
    }
    if (rc != STORE_OK) {
        if (rc == STORE_FENCED) {
            metrics_inc(M_FENCED_REFUSALS);
        }
        store__rollback(st);
        return rc;
    }
    if (!wrote) {
        store__rollback(st); /* read-only: nothing to commit */
        return STORE_OK;
    }
    if (gate != NULL && gate(arg) != 0) {
        store__rollback(st);
        return STORE_ABORTED;
    }
    /* If COMMIT fails we cannot know whether it landed (the connection may
     * have died after the server committed). The client sees 503; a retry
     * is safe: UNIQUE (coupon_id, user_id) turns it into already_claimed. */
    if (store__simple(st, "COMMIT") != STORE_OK) {
        return STORE_ERR;
    }
    return STORE_OK;
}

int store_claim_naive(store_t *st, const char *coupon, store_item_t *item) {
    if (store__connect(st) != STORE_OK) {
        return STORE_ERR;
    }
    const char *p[4] = {coupon, item->user_id};
    int64_t total, claimed;
    int crc = store__check(st, coupon, item, &total, &claimed);
    if (crc != STORE__PROCEED) {
        return crc;
    }

    /* The bug on purpose: between the read above and these writes, other
     * instances read the same `claimed` and write the same value. */
    char next[24];
    snprintf(next, sizeof(next), "%lld", (long long)(claimed + 1));
    p[1] = next;
    PGresult *res = store__exec(st, "naive_set", 2, p, PGRES_COMMAND_OK);
    if (res == NULL) {
        return STORE_ERR;
    }
    PQclear(res);

    p[1] = item->user_id;
    p[2] = next;
    p[3] = st->instance;
    res = PQexecPrepared(st->conn, "naive_insert", 4, p, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        int dup = store__is_unique_violation(res);
        if (!dup) {
            store__fail(st, "naive_insert", res);
        }
        PQclear(res);
        return dup ? store__existing(st, coupon, item) : STORE_ERR;
    }
    item->status = STORE_OK;
    item->claim_id = store__int(res, 0, 0);
    item->fence = STORE_NO_FENCE;
    item->remaining = total - (claimed + 1);
    PQclear(res);
    return STORE_OK;
}

/* --------------------------------------------------------------- admin --- */

int store_coupon_create(store_t *st, const char *id, int64_t total) {
    if (store__connect(st) != STORE_OK) {
        return STORE_ERR;
    }
    char t[24];
    snprintf(t, sizeof(t), "%lld", (long long)total);
    const char *p[] = {id, t};
    PGresult *res = store__exec(st, "coupon_create", 2, p, PGRES_TUPLES_OK);
    if (res == NULL) {
        return STORE_ERR;
    }
    int created = PQntuples(res) == 1;
    PQclear(res);
    return created ? STORE_OK : STORE_EXISTS;
}

int store_coupon_get(store_t *st, const char *id, store_coupon_t *out) {
    if (store__connect(st) != STORE_OK) {
        return STORE_ERR;
    }
    const char *p[] = {id};
    PGresult *res = store__exec(st, "coupon_get", 1, p, PGRES_TUPLES_OK);
    if (res == NULL) {
        return STORE_ERR;
    }
    int found = PQntuples(res) == 1;
    if (found) {
        out->total = store__int(res, 0, 0);
        out->claimed = store__int(res, 0, 1);
        out->last_fence = store__int(res, 0, 2);
    }
    PQclear(res);
    return found ? STORE_OK : STORE_NOT_FOUND;
}

int store_ping(store_t *st) {
    if (store__connect(st) != STORE_OK) {
        return STORE_ERR;
    }
    PGresult *res = PQexec(st->conn, "SELECT 1");
    int ok = PQresultStatus(res) == PGRES_TUPLES_OK;
    if (!ok) {
        store__fail(st, "ping", res);
    }
    PQclear(res);
    return ok ? STORE_OK : STORE_ERR;
}

/* ---------------------------------------------------------- migrations --- */

static int store__mexec(PGconn *c, const char *sql, int n,
                        const char *const *params, char *errstr, size_t errlen,
                        const char *what) {
    PGresult *res = n > 0 ? PQexecParams(c, sql, n, NULL, params, NULL, NULL, 0)
                          : PQexec(c, sql);
    ExecStatusType s = PQresultStatus(res);
    int ok = s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK;
    int rows = ok && s == PGRES_TUPLES_OK ? PQntuples(res) : 0;
    if (!ok) {
        snprintf(errstr, errlen, "migrate: %s: %s", what,
                 PQresultErrorMessage(res));
    }
    PQclear(res);
    return ok ? rows : -1;
}

int store_migrate(const store_opts_t *o, char *errstr, size_t errlen) {
    PGconn *c = store__open(o->dsn, o->connect_timeout_s, errstr, errlen);
    if (c == NULL) {
        return STORE_ERR;
    }
    int applied = 0;
    /* One migrator at a time: replicas that start together all run
     * `couponsvc migrate`; the advisory lock makes them take turns, and
     * the table makes the latecomers skip what is done. */
    if (store__mexec(c, "SELECT pg_advisory_lock(7245001)", 0, NULL, errstr,
                     errlen, "advisory lock") < 0 ||
        store__mexec(c,
                     "CREATE TABLE IF NOT EXISTS schema_migrations ("
                     " version integer PRIMARY KEY,"
                     " name text NOT NULL,"
                     " applied_at timestamptz NOT NULL DEFAULT now())",
                     0, NULL, errstr, errlen, "schema_migrations") < 0) {
        PQfinish(c);
        return STORE_ERR;
    }
    for (size_t i = 0; i < store_migrations_count; i++) {
        const store_migration_t *m = &store_migrations[i];
        char v[16];
        snprintf(v, sizeof(v), "%d", m->version);
        const char *p[] = {v, m->name};
        int seen = store__mexec(c,
                                "SELECT 1 FROM schema_migrations"
                                " WHERE version = $1::integer",
                                1, p, errstr, errlen, m->name);
        if (seen < 0) {
            applied = STORE_ERR;
            break;
        }
        if (seen > 0) {
            continue;
        }
        if (store__mexec(c, "BEGIN", 0, NULL, errstr, errlen, "BEGIN") < 0 ||
            store__mexec(c, m->sql, 0, NULL, errstr, errlen, m->name) < 0 ||
            store__mexec(c,
                         "INSERT INTO schema_migrations (version, name)"
                         " VALUES ($1::integer, $2)",
                         2, p, errstr, errlen, m->name) < 0 ||
            store__mexec(c, "COMMIT", 0, NULL, errstr, errlen, "COMMIT") < 0) {
            PGresult *r = PQexec(c, "ROLLBACK");
            PQclear(r);
            applied = STORE_ERR;
            break;
        }
        log_info("migrate.applied", "version=%d name=%s", m->version, m->name);
        applied++;
    }
    PGresult *r = PQexec(c, "SELECT pg_advisory_unlock(7245001)");
    PQclear(r);
    PQfinish(c);
    return applied;
}

/* ------------------------------------------------------------ readiness --- */

/* 1 if a verbose connection error (PQERRORS_VERBOSE: "FATAL:  28P01: ...")
 * carries a SQLSTATE that says the login itself was refused. The SQLSTATE is
 * the message's machine-readable part; the words around it are translated. */
static int store__refused_sqlstate(const char *msg) {
    for (const char *p = strstr(msg, ":  "); p != NULL;
         p = strstr(p + 1, ":  ")) {
        const char *code = p + 3;
        size_t n = strspn(code, "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ");
        if (n == 5 && code[5] == ':') {
            return strncmp(code, "28", 2) == 0 ||
                   strncmp(code, "3D000", 5) == 0;
        }
    }
    return 0;
}

int store_probe(store_t *st) {
    if (store_ping(st) == STORE_OK) {
        return STORE_OK;
    }
    if (st->conn != NULL) {
        return STORE_ERR; /* connected; the query failed */
    }
    /* The connect failed, and libpq's default message does not say why in a
     * form a program can read: connect once more, verbosely, without
     * blocking, bounded by the connect timeout. */
    char timeout[16];
    snprintf(timeout, sizeof(timeout), "%u", st->connect_timeout_s);
    const char *keys[] = {"connect_timeout", "application_name", "dbname",
                          NULL};
    const char *vals[] = {timeout, "couponsvc", st->dsn, NULL};
    PGconn *c = PQconnectStartParams(keys, vals, 1);
    if (c == NULL) {
        return STORE_ERR;
    }
    PQsetErrorVerbosity(c, PQERRORS_VERBOSE);
    int64_t deadline =
        mono_ns() + (int64_t)st->connect_timeout_s * 1000 * MONO_MS;
    PostgresPollingStatusType ps = PGRES_POLLING_WRITING;
    while (PQstatus(c) != CONNECTION_BAD && ps != PGRES_POLLING_OK &&
           ps != PGRES_POLLING_FAILED) {
        int64_t left_ms = (deadline - mono_ns()) / MONO_MS;
        if (left_ms <= 0) {
            break;
        }
        struct pollfd pfd = {.fd = PQsocket(c),
                             .events = ps == PGRES_POLLING_READING ? POLLIN
                                                                   : POLLOUT};
        if (poll(&pfd, 1, (int)left_ms) < 0 && errno != EINTR) {
            break;
        }
        ps = PQconnectPoll(c);
    }
    int refused = PQstatus(c) == CONNECTION_BAD &&
                  (PQconnectionNeedsPassword(c) ||
                   store__refused_sqlstate(PQerrorMessage(c)));
    if (refused) {
        /* The first line only: the verbose form adds a LOCATION line. */
        char msg[256];
        snprintf(msg, sizeof(msg), "%s", PQerrorMessage(c));
        msg[strcspn(msg, "\n")] = '\0';
        store__seterr(st, "login refused", msg);
    }
    PQfinish(c);
    return refused ? STORE_EREFUSED : STORE_ERR;
}
