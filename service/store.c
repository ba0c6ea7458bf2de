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
 *
 * No call waits on the server without a deadline. The connection is in
 * libpq's non-blocking mode: each statement is sent with PQsend*, and every
 * wait for the socket is a poll with the time left until the call's
 * deadline (COUPON_PG_TX_DEADLINE_MS, one for the whole transaction). When
 * it passes, the connection is shut down and dropped, and the next call
 * connects again. statement_timeout alone cannot do this: it is enforced by
 * the server, and a server behind a dead network path never answers.
 */
#include "store.h"

#include <assert.h>
#include <errno.h>
#include <libpq-fe.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "fault.h"
#include "log.h"
#include "metrics.h"
#include "mono.h"

struct store {
    PGconn *conn; /* NULL while disconnected; non-blocking while connected */
    char *dsn;    /* owned copies of the options */
    char *instance;
    uint32_t connect_timeout_s, statement_timeout_ms, idle_tx_timeout_ms;
    uint32_t tx_deadline_ms;
    int64_t deadline_ns; /* monotonic: the running call gives up here */
    int timed_out;       /* the last wait ran into deadline_ns */
    int replan;          /* a statement failed with 0A000: prepare again */
    int refused;         /* the last connect failed because the server
                            refused this login (see store__open) */
    int shape_buckets;   /* store_claim_shape: what the last claim learnt */
    uint64_t shape_stock;
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

void store_opts_from_cfg(store_opts_t *o, const cfg_t *cfg) {
    *o = (store_opts_t){.dsn = cfg->pg_dsn,
                        .instance = cfg->instance_id,
                        .connect_timeout_s = cfg->pg_connect_timeout_s,
                        .statement_timeout_ms = cfg->pg_statement_timeout_ms,
                        .idle_tx_timeout_ms = cfg->pg_idle_tx_timeout_ms,
                        .tx_deadline_ms = cfg->pg_tx_deadline_ms};
}

store_t *store_new(const store_opts_t *o) {
    /* Without a deadline every call would expire before it started. */
    assert(o->tx_deadline_ms > 0);
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
    st->tx_deadline_ms = o->tx_deadline_ms;
    return st;
}

/* Drops the connection without waiting for anything. shutdown(2) first, so
 * that PQfinish's goodbye message fails at once instead of queueing behind
 * a peer that stopped reading; the server notices the FIN (or, behind a
 * black hole, its idle-in-transaction timeout ends the session). Never
 * PQcancel: it opens a new connection and waits for it, with no timeout,
 * which behind a black hole is forever. */
static void store__drop(store_t *st) {
    if (st->conn == NULL) {
        return;
    }
    int fd = PQsocket(st->conn);
    if (fd >= 0) {
        shutdown(fd, SHUT_RDWR);
    }
    PQfinish(st->conn);
    st->conn = NULL;
}

void store_free(store_t *st) {
    if (st == NULL) {
        return;
    }
    store__drop(st);
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

static int store__sqlstate_is(const PGresult *res, const char *code) {
    const char *state =
        res != NULL ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    return state != NULL && strcmp(state, code) == 0;
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
    if (store__sqlstate_is(res, "57014")) {
        metrics_inc(M_PG_STATEMENT_TIMEOUTS); /* statement_timeout fired */
    }
    if (st->conn != NULL && PQstatus(st->conn) != CONNECTION_OK) {
        store__drop(st);
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

/* Copies a connect failure into errstr: its first line only (the verbose
 * form adds a LOCATION line), without libpq's trailing newline. */
static void store__open_err(char *errstr, size_t errlen, const char *msg) {
    snprintf(errstr, errlen, "postgres: connect: %.*s", (int)strcspn(msg, "\n"),
             msg);
}

/*
 * Connects without blocking on the network: PQconnectStartParams, then
 * PQconnectPoll with a poll on the socket, until connect_timeout or
 * deadline_ns (monotonic), whichever comes first. (connect_timeout is ours
 * to enforce here: libpq ignores it for PQconnectPoll. The name lookup,
 * getaddrinfo inside libpq, is the one step that still blocks.) Returns a
 * new, connected PGconn, or NULL with errstr set.
 *
 * Later keywords override earlier ones, and the DSN is expanded from
 * "dbname", the last keyword: so anything the DSN sets, keyword or URI
 * form, wins over these defaults. The TCP defaults are for a peer that
 * vanishes without a RST (a host that died, a frozen VM, a black-holed
 * route): keepalives find a dead idle connection within about idle +
 * interval * count = 25 s, and tcp_user_timeout drops a connection whose
 * sent data stays unacknowledged for 15 s. The transaction deadline is what
 * bounds a claim; these bound what no query is waiting on, such as an idle
 * worker's connection.
 *
 * The connect runs with verbose errors, so that a failure carries its
 * SQLSTATE: *refused (may be NULL) is set to 1 when the server refused the
 * login itself (store__refused_sqlstate, or a password it wanted and the
 * DSN lacks), which the readiness probe reports as this instance's own
 * fault. Queries afterwards run with the default verbosity.
 */
static PGconn *store__open(const char *dsn, uint32_t connect_timeout_s,
                           int64_t deadline_ns, char *errstr, size_t errlen,
                           int *refused) {
    if (refused != NULL) {
        *refused = 0;
    }
    const char *keys[] = {"application_name", "keepalives",
                          "keepalives_idle",  "keepalives_interval",
                          "keepalives_count", "tcp_user_timeout",
                          "dbname",           NULL};
    const char *vals[] = {"couponsvc", "1", "10", "5", "3", "15000", dsn, NULL};
    int64_t until = mono_ns() + (int64_t)connect_timeout_s * 1000 * MONO_MS;
    const char *bound = "COUPON_PG_CONNECT_TIMEOUT_S";
    if (deadline_ns < until) {
        until = deadline_ns;
        bound = "COUPON_PG_TX_DEADLINE_MS";
    }
    PGconn *c = PQconnectStartParams(keys, vals, 1);
    if (c == NULL) {
        store__open_err(errstr, errlen, "out of memory");
        return NULL;
    }
    PQsetErrorVerbosity(c, PQERRORS_VERBOSE);
    PostgresPollingStatusType ps = PQstatus(c) == CONNECTION_BAD
                                       ? PGRES_POLLING_FAILED
                                       : PGRES_POLLING_WRITING;
    while (ps != PGRES_POLLING_OK && ps != PGRES_POLLING_FAILED) {
        int64_t left_ns = until - mono_ns();
        if (left_ns <= 0) {
            char why[96];
            snprintf(why, sizeof(why), "no answer in time (%s)", bound);
            store__open_err(errstr, errlen, why);
            int fd = PQsocket(c);
            if (fd >= 0) {
                shutdown(fd, SHUT_RDWR);
            }
            PQfinish(c);
            return NULL;
        }
        struct pollfd p = {.fd = PQsocket(c),
                           .events =
                               ps == PGRES_POLLING_READING ? POLLIN : POLLOUT};
        int n = poll(&p, 1, (int)((left_ns + MONO_MS - 1) / MONO_MS));
        if (n > 0) {
            ps = PQconnectPoll(c);
        } else if (n < 0 && errno != EINTR) {
            store__open_err(errstr, errlen, strerror(errno));
            PQfinish(c);
            return NULL;
        }
    }
    if (ps == PGRES_POLLING_FAILED || PQstatus(c) != CONNECTION_OK) {
        store__open_err(errstr, errlen, PQerrorMessage(c));
        if (refused != NULL) {
            *refused = PQconnectionNeedsPassword(c) ||
                       store__refused_sqlstate(PQerrorMessage(c));
        }
        PQfinish(c);
        return NULL;
    }
    PQsetErrorVerbosity(c, PQERRORS_DEFAULT);
    PQsetNoticeProcessor(c, store__notice, NULL);
    return c;
}

/* ------------------------------------------------ the deadline, polled --- */

/* Starts the deadline for one call: a whole transaction, or one statement
 * outside a transaction. Every wait on the server until the next call to
 * this counts against it. */
static void store__deadline_start(store_t *st) {
    st->deadline_ns = mono_ns() + (int64_t)st->tx_deadline_ms * MONO_MS;
}

/* Waits until the socket is ready for events or the deadline passes.
 * Returns 0 when ready; on expiry drops the connection, records why and
 * returns STORE_ERR with st->timed_out set. */
static int store__wait(store_t *st, const char *what, short events) {
    for (;;) {
        int64_t left_ns = st->deadline_ns - mono_ns();
        if (left_ns <= 0) {
            snprintf(st->errstr, sizeof(st->errstr),
                     "postgres: %s: no answer within the %u ms deadline "
                     "(COUPON_PG_TX_DEADLINE_MS); connection dropped",
                     what, st->tx_deadline_ms);
            metrics_inc(M_PG_ERRORS);
            metrics_inc(M_PG_DEADLINE_DROPS);
            log_warn("postgres.deadline", "what=\"%s\" deadline_ms=%u", what,
                     st->tx_deadline_ms);
            store__drop(st);
            st->timed_out = 1;
            return STORE_ERR;
        }
        struct pollfd p = {.fd = PQsocket(st->conn), .events = events};
        int ms = (int)((left_ns + MONO_MS - 1) / MONO_MS);
        int n = poll(&p, 1, ms);
        if (n > 0) {
            return STORE_OK;
        }
        if (n < 0 && errno != EINTR) {
            store__seterr(st, what, strerror(errno));
            metrics_inc(M_PG_ERRORS);
            store__drop(st);
            return STORE_ERR;
        }
    }
}

/* After a PQsend*: sends what libpq buffered, then reads until the last
 * result of the command is in, each wait bounded by the deadline. Returns
 * the last result (PQclear it; for several statements sent as one query,
 * an error is always last, since the server stops at the first), or NULL
 * when the connection failed or the deadline passed (errstr set, the
 * connection dropped if it is bad). */
static PGresult *store__collect(store_t *st, const char *what) {
    assert(st->conn != NULL && PQisnonblocking(st->conn));
    int f;
    while ((f = PQflush(st->conn)) == 1) {
        if (store__wait(st, what, POLLOUT | POLLIN) != STORE_OK) {
            return NULL;
        }
        if (PQconsumeInput(st->conn) == 0) {
            store__fail(st, what, NULL);
            return NULL;
        }
    }
    if (f < 0) {
        store__fail(st, what, NULL);
        return NULL;
    }
    PGresult *last = NULL;
    for (;;) {
        while (PQisBusy(st->conn)) {
            if (store__wait(st, what, POLLIN) != STORE_OK) {
                PQclear(last);
                return NULL;
            }
            if (PQconsumeInput(st->conn) == 0) {
                PQclear(last);
                store__fail(st, what, NULL);
                return NULL;
            }
        }
        PGresult *r = PQgetResult(st->conn);
        if (r == NULL) {
            break;
        }
        PQclear(last);
        last = r;
    }
    if (last == NULL) {
        store__fail(st, what, NULL);
    }
    return last;
}

/* One query as text (one or more statements), bounded by the deadline.
 * Returns the last result or NULL, as store__collect. */
static PGresult *store__query(store_t *st, const char *sql) {
    if (st->conn == NULL) {
        return NULL; /* dropped earlier in this call: errstr says why */
    }
    st->timed_out = 0;
    if (PQsendQuery(st->conn, sql) == 0) {
        store__fail(st, sql, NULL);
        return NULL;
    }
    return store__collect(st, sql);
}

/* ------------------------------------------------------------- connect --- */

/* Prepares every statement, bounded by the deadline. */
static int store__prepare_all(store_t *st) {
    for (size_t i = 0; i < STORE__NSTMTS; i++) {
        const char *name = store__stmts[i].name;
        st->timed_out = 0;
        if (PQsendPrepare(st->conn, name, store__stmts[i].sql, 0, NULL) == 0) {
            return store__fail(st, name, NULL);
        }
        PGresult *res = store__collect(st, name);
        if (res == NULL) {
            return STORE_ERR;
        }
        if (PQresultStatus(res) != PGRES_COMMAND_OK) {
            store__fail(st, name, res);
            PQclear(res);
            return STORE_ERR;
        }
        PQclear(res);
    }
    return STORE_OK;
}

/* Once per process: the first session logs what synchronous_commit it
 * runs with. */
static atomic_int store__sync_logged;

/*
 * synchronous_commit decides whether a COMMIT that returned has reached
 * disk (and the standbys the server waits for). A 201 promises a durable
 * claim, so the session needs at least `on`: below it (off, local,
 * remote_write) a server crash, or a failover, can lose claims already
 * answered. The server's (or role's, or database's) value is kept when it
 * is stronger (remote_apply), and never lowered.
 */
static int store__sync_commit(store_t *st) {
    PGresult *res = store__query(st, "SHOW synchronous_commit");
    if (res == NULL) {
        return STORE_ERR;
    }
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        store__fail(st, "SHOW synchronous_commit", res);
        PQclear(res);
        return STORE_ERR;
    }
    char server[32];
    snprintf(server, sizeof(server), "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    int weak = strcmp(server, "off") == 0 || strcmp(server, "local") == 0 ||
               strcmp(server, "remote_write") == 0;
    if (weak) {
        res = store__query(st, "SET synchronous_commit = on");
        if (res == NULL) {
            return STORE_ERR;
        }
        if (PQresultStatus(res) != PGRES_COMMAND_OK) {
            store__fail(st, "SET synchronous_commit", res);
            PQclear(res);
            return STORE_ERR;
        }
        PQclear(res);
    }
    if (atomic_exchange(&store__sync_logged, 1) == 0) {
        log_info("postgres.synchronous_commit", "server=%s session=%s%s",
                 server, weak ? "on" : server,
                 weak ? " (raised: an answered claim must survive a crash)"
                      : "");
    }
    return STORE_OK;
}

/* Connects, sets the session up and prepares every statement, within the
 * deadline already started. */
static int store__connect(store_t *st) {
    if (st->conn != NULL) {
        return STORE_OK;
    }
    st->conn = store__open(st->dsn, st->connect_timeout_s, st->deadline_ns,
                           st->errstr, sizeof(st->errstr), &st->refused);
    if (st->conn == NULL) {
        metrics_inc(M_PG_ERRORS);
        return STORE_ERR;
    }
    /* Non-blocking: every send and every read goes through poll with the
     * time left (store__collect), never a blocking libpq call. */
    if (PQsetnonblocking(st->conn, 1) != 0) {
        store__fail(st, "PQsetnonblocking", NULL);
        store__drop(st);
        return STORE_ERR;
    }

    char set[160];
    snprintf(set, sizeof(set),
             "SET statement_timeout = %u; "
             "SET idle_in_transaction_session_timeout = %u",
             st->statement_timeout_ms, st->idle_tx_timeout_ms);
    PGresult *res = store__query(st, set);
    int ok = res != NULL && PQresultStatus(res) == PGRES_COMMAND_OK;
    if (res != NULL && !ok) {
        store__fail(st, "session settings", res);
    }
    PQclear(res);
    if (!ok || store__sync_commit(st) != STORE_OK ||
        store__prepare_all(st) != STORE_OK) {
        store__drop(st);
        return STORE_ERR;
    }
    return STORE_OK;
}

/*
 * After an online migration changes the type of a column a prepared
 * statement returns (ALTER TABLE ... TYPE), every later execution fails with
 * SQLSTATE 0A000, "cached plan must not change result type": a prepared
 * statement's result shape is fixed. Preparing again adopts the new shape.
 * Only possible outside a failed transaction: the caller rolls back first.
 */
static int store__replan(store_t *st) {
    log_warn("postgres.replan",
             "a prepared statement's result type changed (a migration?); "
             "preparing every statement again");
    PGresult *res = store__query(st, "DEALLOCATE ALL");
    int ok = res != NULL && PQresultStatus(res) == PGRES_COMMAND_OK;
    if (res != NULL && !ok) {
        store__fail(st, "DEALLOCATE ALL", res);
    }
    PQclear(res);
    return ok ? store__prepare_all(st) : STORE_ERR;
}

/* -------------------------------------------------- running statements --- */

/* Runs a prepared statement and returns its result, whatever its status
 * (PQclear it), or NULL when the connection failed or the deadline passed.
 * A plan whose result type changed sets st->replan (see store__replan);
 * outside a transaction the statement is prepared again and run once more
 * here, inside one store_claim starts the transaction again. */
static PGresult *store__run(store_t *st, const char *name, int n,
                            const char *const *params) {
    for (int attempt = 0;; attempt++) {
        if (st->conn == NULL) {
            return NULL; /* dropped earlier in this call: errstr says why */
        }
        st->timed_out = 0;
        if (PQsendQueryPrepared(st->conn, name, n, params, NULL, NULL, 0) ==
            0) {
            store__fail(st, name, NULL);
            return NULL;
        }
        PGresult *res = store__collect(st, name);
        if (res == NULL || !store__sqlstate_is(res, "0A000")) {
            return res;
        }
        st->replan = 1;
        if (attempt > 0 || PQtransactionStatus(st->conn) != PQTRANS_IDLE) {
            return res;
        }
        PQclear(res);
        if (store__replan(st) != STORE_OK) {
            return NULL;
        }
        st->replan = 0;
    }
}

/* Runs a prepared statement. Returns the result (PQclear it) when its status
 * is `want`; otherwise records the failure and returns NULL. */
static PGresult *store__exec(store_t *st, const char *name, int n,
                             const char *const *params, ExecStatusType want) {
    PGresult *res = store__run(st, name, n, params);
    if (res != NULL && PQresultStatus(res) != want) {
        store__fail(st, name, res);
        PQclear(res);
        return NULL;
    }
    return res;
}

/* A statement without parameters whose result must be COMMAND_OK. */
static int store__simple(store_t *st, const char *sql) {
    PGresult *res = store__query(st, sql);
    if (res == NULL) {
        return STORE_ERR;
    }
    int ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    if (!ok) {
        store__fail(st, sql, res);
    }
    PQclear(res);
    return ok ? STORE_OK : STORE_ERR;
}

/* ROLLBACK after a failure; its own failure only matters for the connection
 * state, which store__fail already handles. Past the deadline there is no
 * time left to wait for its answer: the connection is dropped instead,
 * which rolls back just the same once the server notices. */
static void store__rollback(store_t *st) {
    if (st->conn != NULL && PQtransactionStatus(st->conn) != PQTRANS_IDLE) {
        char keep[sizeof(st->errstr)];
        memcpy(keep, st->errstr, sizeof(keep));
        if (mono_ns() >= st->deadline_ns) {
            store__drop(st);
        } else {
            store__simple(st, "ROLLBACK");
        }
        memcpy(st->errstr, keep, sizeof(keep));
    }
}

/*
 * COMMIT, and what its answer proves. A COMMIT that came back as
 * "COMMIT" committed. One that the server answered with an error, on a
 * connection still good, did not (a deferred constraint, a serialization
 * failure: the server rolled back). One that came back COMMAND_OK with the
 * tag "ROLLBACK" did not either: that is how the server answers COMMIT in a
 * transaction that had already failed, for instance after an error this
 * client missed. But when the connection broke or the deadline passed
 * after COMMIT was sent, the server may have committed or not, and the
 * client cannot tell: STORE_COMMIT_UNKNOWN. A retry settles it, since
 * UNIQUE (coupon_id, user_id) turns a repeated claim into already_claimed.
 * A deadline that passed before COMMIT is sent is no such case: the
 * connection is dropped unsent, and that is a rollback.
 */
static int store__commit(store_t *st) {
    if (mono_ns() >= st->deadline_ns) {
        /* Too late to commit, and not too late to know: COMMIT was never
         * sent, so dropping the connection rolls back. */
        snprintf(st->errstr, sizeof(st->errstr),
                 "postgres: the %u ms deadline (COUPON_PG_TX_DEADLINE_MS) "
                 "passed before COMMIT; rolled back",
                 st->tx_deadline_ms);
        metrics_inc(M_PG_ERRORS);
        metrics_inc(M_PG_DEADLINE_DROPS);
        store__drop(st);
        return STORE_ERR;
    }
    PGresult *res = store__query(st, "COMMIT");
    if (res == NULL) {
        return STORE_COMMIT_UNKNOWN;
    }
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        int known = st->conn != NULL && PQstatus(st->conn) == CONNECTION_OK;
        store__fail(st, "COMMIT", res);
        PQclear(res);
        return known ? STORE_ERR : STORE_COMMIT_UNKNOWN;
    }
    int committed = strcmp(PQcmdStatus(res), "COMMIT") == 0;
    if (!committed) {
        snprintf(st->errstr, sizeof(st->errstr),
                 "postgres: COMMIT answered \"%s\": the transaction had "
                 "failed; nothing was written",
                 PQcmdStatus(res));
        metrics_inc(M_PG_ERRORS);
    }
    PQclear(res);
    return committed ? STORE_OK : STORE_ERR;
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
    PGresult *res = store__run(st, stmt, np, p);
    if (res == NULL) {
        return STORE_ERR;
    }
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
    if (!reused || st->conn != NULL || st->timed_out) {
        /* a fresh connection, a live one that refused, or no time left */
        return STORE_ERR;
    }
    if (store__connect(st) != STORE_OK) {
        return STORE_ERR;
    }
    return store__simple(st, "BEGIN");
}

/* One attempt at the claim's transaction; see store_claim. */
static int store__claim_tx(store_t *st, const char *coupon, int64_t fence,
                           store_item_t *items, size_t n, store_gate_fn gate,
                           void *arg, int64_t *last_fence_out) {
    assert(n >= 1 && st->tx_deadline_ms > 0);
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
    if (fault_ms(FAULT_ABORT_BEFORE_COMMIT) != 0) {
        /* Tests only: the transaction fails and the client does not notice,
         * the state a lost error leaves (a pipelined statement's error
         * read by nobody). Its COMMIT must then not count as one. */
        PQclear(store__query(st, "SELECT 1/0"));
    }
    return store__commit(st);
}

int store_claim(store_t *st, const char *coupon, int bucket, int64_t fence,
                store_item_t *items, size_t n, store_gate_fn gate, void *arg,
                int64_t *last_fence_out) {
    st->shape_buckets = 0;
    st->shape_stock = 0;
    if (bucket != -1) {
        snprintf(st->errstr, sizeof(st->errstr),
                 "postgres: sharded claims are not implemented yet");
        return STORE_WRONG_BUCKET;
    }
    store__deadline_start(st);
    st->replan = 0;
    int rc =
        store__claim_tx(st, coupon, fence, items, n, gate, arg, last_fence_out);
    if (rc != STORE_ERR || !st->replan || st->conn == NULL ||
        PQtransactionStatus(st->conn) != PQTRANS_IDLE) {
        return rc;
    }
    /* A statement's plan went stale inside the transaction (see
     * store__replan), which aborted it: nothing was written. Prepare again
     * and run the whole transaction once more, within the same deadline. */
    st->replan = 0;
    if (store__replan(st) != STORE_OK) {
        return STORE_ERR;
    }
    return store__claim_tx(st, coupon, fence, items, n, gate, arg,
                           last_fence_out);
}

void store_claim_shape(const store_t *st, int *buckets, uint64_t *stock_mask) {
    *buckets = st->shape_buckets;
    *stock_mask = st->shape_stock;
}

int store_claim_naive(store_t *st, const char *coupon, store_item_t *item) {
    store__deadline_start(st);
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
    res = store__run(st, "naive_insert", 4, p);
    if (res == NULL) {
        return STORE_ERR;
    }
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

int store_coupon_create(store_t *st, const char *id, int64_t total, int buckets,
                        int64_t starts_at_us, int64_t ends_at_us) {
    if (buckets != 1 || starts_at_us != STORE_NO_TIME ||
        ends_at_us != STORE_NO_TIME) {
        snprintf(st->errstr, sizeof(st->errstr),
                 "postgres: buckets and windows are not implemented yet");
        return STORE_ERR;
    }
    store__deadline_start(st);
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
    store__deadline_start(st);
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
        out->buckets = 1;
        out->starts_at_us = STORE_NO_TIME;
        out->ends_at_us = STORE_NO_TIME;
    }
    PQclear(res);
    return found ? STORE_OK : STORE_NOT_FOUND;
}

int store_ping(store_t *st) {
    store__deadline_start(st);
    if (store__connect(st) != STORE_OK) {
        return STORE_ERR;
    }
    PGresult *res = store__query(st, "SELECT 1");
    if (res == NULL) {
        return STORE_ERR;
    }
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
    PGconn *c = store__open(o->dsn, o->connect_timeout_s, INT64_MAX, errstr,
                            errlen, NULL);
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

int store_probe(store_t *st) {
    if (store_ping(st) == STORE_OK) {
        return STORE_OK;
    }
    /* Connected, the query failed: not a login problem. */
    return st->conn == NULL && st->refused ? STORE_EREFUSED : STORE_ERR;
}

/* ------------------------------------------- the sold-out fast path --- */

/* One statement with text parameters, not prepared (each runs once per
 * coupon, not per claim), bounded by the call's deadline. Returns the result
 * when its status is want, else NULL with the failure recorded. */
static PGresult *store__params(store_t *st, const char *what, const char *sql,
                               int n, const char *const *params,
                               ExecStatusType want) {
    if (st->conn == NULL) {
        return NULL;
    }
    st->timed_out = 0;
    if (PQsendQueryParams(st->conn, sql, n, NULL, params, NULL, NULL, 0) == 0) {
        store__fail(st, what, NULL);
        return NULL;
    }
    PGresult *res = store__collect(st, what);
    if (res != NULL && PQresultStatus(res) != want) {
        store__fail(st, what, res);
        PQclear(res);
        return NULL;
    }
    return res;
}

int store_claimants(store_t *st, const char *coupon, store_claimant_fn fn,
                    void *arg) {
    store__deadline_start(st);
    if (store__connect(st) != STORE_OK) {
        return STORE_ERR;
    }
    const char *p[] = {coupon};
    PGresult *res = store__params(
        st, "claimants", "SELECT user_id FROM claims WHERE coupon_id = $1", 1,
        p, PGRES_TUPLES_OK);
    if (res == NULL) {
        return STORE_ERR;
    }
    int rows = PQntuples(res), rc = STORE_OK;
    for (int i = 0; i < rows && rc == STORE_OK; i++) {
        rc = fn(arg, PQgetvalue(res, i, 0), (size_t)PQgetlength(res, i, 0));
    }
    PQclear(res);
    return rc;
}

int store_claim_lookup(store_t *st, const char *coupon, store_item_t *item) {
    store__deadline_start(st);
    if (store__connect(st) != STORE_OK) {
        return STORE_ERR;
    }
    const char *p[] = {coupon, item->user_id};
    PGresult *res = store__exec(st, "claim_get", 2, p, PGRES_TUPLES_OK);
    if (res == NULL) {
        return STORE_ERR;
    }
    int found = PQntuples(res) == 1;
    if (found) {
        item->status = STORE_ALREADY;
        item->claim_id = store__int(res, 0, 0);
        item->fence = store__int(res, 0, 1);
        item->remaining = store__int(res, 0, 2);
    }
    PQclear(res);
    return found ? STORE_OK : STORE_NOT_FOUND;
}
