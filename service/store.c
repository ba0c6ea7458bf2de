/*
 * store.c: see store.h.
 *
 * Every statement is prepared once per connection and run with text
 * parameters. A claim's transaction is: BEGIN, the stock row's lock and the
 * claim statement for the whole batch, sent as one pipeline; then the gate;
 * then COMMIT. Round trips for a claim, or a batch of any size: 2.
 *
 * The claim statement is one data-modifying CTE (store__claim_c_sql below): the
 * conditional UPDATE by the batch's count and the INSERT of the claim rows,
 * which take their seq from the UPDATE's RETURNING. If the UPDATE matches
 * no row, the INSERT inserts none.
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
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "fault.h"
#include "log.h"
#include "metrics.h"
#include "mono.h"
#include "str.h"

struct store {
    PGconn *conn; /* NULL while disconnected; non-blocking while connected */
    char *dsn;    /* owned copies of the options */
    char *instance;
    uint32_t connect_timeout_s, statement_timeout_ms, idle_tx_timeout_ms;
    uint32_t tx_deadline_ms;
    int64_t deadline_ns;  /* monotonic: the running call gives up here */
    int timed_out;        /* the last wait ran into deadline_ns */
    int replan;           /* a statement failed with 0A000: prepare again */
    uint64_t round_trips; /* store_round_trips */
    int shape_buckets;    /* store_claim_shape: what the last claim learnt */
    uint64_t shape_stock;
    store_errkind_t errkind; /* the last failure's kind, beside errstr */
    char errstr[256];
};

/* ---------------------------------------------------------- statements --- */

/*
 * !!! NEGATIVE CONTROLS. NEVER DEFINE THESE OUTSIDE `make test-negative`. !!!
 *
 * Four guards of the store can each be compiled out, one at a time:
 *   COUPONSVC_UNSAFE_NO_FENCE         drops the fence from the write's WHERE;
 *   COUPONSVC_UNSAFE_NO_STOCK_CHECK   drops the stock from it (both the bound
 *                                     on how many are claimed,
 *                                     LEAST(..., total - claimed), and the
 *                                     guard claimed + k <= total);
 *   COUPONSVC_UNSAFE_FENCE_NOT_STRICT lets a lease's first write through
 *                                     with last_fence == fence
 *                                     (last_fence <= fence);
 *   COUPONSVC_UNSAFE_TRUST_READ       makes a lock-mode claim of one user on
 *                                     an unsharded coupon the textbook
 *                                     critical section whose write trusts
 *                                     its read: naive mode's read, then
 *                                     (after the after_check fault point)
 *                                     its write of claimed = read + 1,
 *                                     neither fenced nor bounded by the
 *                                     stock (store_claim, store_claim_naive).
 *                                     That one shows what the lock alone is
 *                                     worth once a lease can end early.
 * Each builds a couponsvc with exactly one guard removed, into a
 * build/.../neg-<name> directory only (the Makefile refuses any other), so
 * that the fault tests can show they catch the bug that guard exists for: a
 * test that cannot fail proves nothing. All four are off by default, and
 * the #error below refuses more than one at a time; the real binary never
 * has them. The lock's own controls (Redlock's fence write-back:
 * COUPONSVC_UNSAFE_REDLOCK_WRITEBACK_NO_TOKEN and
 * COUPONSVC_UNSAFE_REDLOCK_NO_WRITEBACK) are at the top of
 * service/lock_redlock.c.
 */
#if defined(COUPONSVC_UNSAFE_NO_FENCE) +                                       \
        defined(COUPONSVC_UNSAFE_NO_STOCK_CHECK) +                             \
        defined(COUPONSVC_UNSAFE_FENCE_NOT_STRICT) +                           \
        defined(COUPONSVC_UNSAFE_TRUST_READ) >                                 \
    1
#error "one negative control at a time"
#elif defined(COUPONSVC_UNSAFE_TRUST_READ)
#pragma message                                                                \
    "COUPONSVC_UNSAFE_TRUST_READ: a couponsvc whose write trusts its read"
#elif defined(COUPONSVC_UNSAFE_NO_FENCE)
#pragma message "COUPONSVC_UNSAFE_NO_FENCE: a couponsvc WITHOUT fencing"
#define STORE__FENCE_GUARD "($3::bigint IS NULL OR true)"
#elif defined(COUPONSVC_UNSAFE_FENCE_NOT_STRICT)
#pragma message                                                                \
    "COUPONSVC_UNSAFE_FENCE_NOT_STRICT: a couponsvc that lets a fence repeat"
#define STORE__FENCE_GUARD "($3::bigint IS NULL OR t.last_fence <= $3::bigint)"
#elif defined(COUPONSVC_UNSAFE_NO_STOCK_CHECK)
#pragma message "COUPONSVC_UNSAFE_NO_STOCK_CHECK: a couponsvc that oversells"
#define STORE__STOCK_GUARD "true"
#define STORE__WANT "(SELECT count(*) FROM fresh)"
#endif
/* The fence rule, the one place it is written: a lease's first (and only)
 * write needs a fence above every fence written before it. With no fence
 * ($3 NULL: the atomic mode, the degraded mode) the rule does not apply. */
#ifndef STORE__FENCE_GUARD
#define STORE__FENCE_GUARD "($3::bigint IS NULL OR t.last_fence < $3::bigint)"
#endif
#ifndef STORE__STOCK_GUARD
#define STORE__STOCK_GUARD "t.claimed + want.k <= t.total"
#define STORE__WANT "LEAST((SELECT count(*) FROM fresh), c.total - c.claimed)"
#endif

/*
 * The claim of a batch, one statement. It runs right after the lock
 * statement (claim_lock_*) has taken the stock row's lock in the same
 * transaction, so its snapshot, taken when it starts, already shows every
 * claim committed by whoever held the row before: all writers of a
 * stock row's claims hold its lock (this statement's UPDATE, and an older
 * replica's), so what it reads of the row and of the claims stays true until
 * COMMIT. The parameters: $1 coupon, $2 the users (text[], in batch order),
 * $3 the fence (NULL: none), $4 the instance, and for a bucket $5 its
 * number.
 *
 *   items  the users with their place in the batch; u: each user once, at
 *          its first place (the second of a user named twice gets the
 *          first's claim)
 *   cp, c  the coupon (its window judged here, by this server's clock) and
 *          the stock row; allb: the coupon's stock over all its buckets
 *   ex     the users who already hold a claim (on any bucket: one claim per
 *          user is global)
 *   fresh  the others, numbered in batch order
 *   want   how many of them the stock allows
 *   upd    THE write: claimed + k, last_fence = fence, guarded by the
 *          fence, the stock and the window. It returns the counter before
 *          it (base), so claim i of the batch gets seq = base + i: the
 *          counter's values, one per claim, in commit order (the row lock
 *          is held to COMMIT).
 *   ins    the claim rows; none unless upd updated the row
 *
 * It answers one row per item, in batch order, carrying what the client
 * needs to tell every outcome apart without another read.
 *
 * statement_timestamp() is the clock: one value for the whole statement
 * (the window test in cp, in the UPDATE's WHERE and in the schema's trigger
 * agree), taken when the statement starts, after the lock statement's wait
 * for the row, so a claim that queued on the row is judged when it writes.
 * now() would judge it at BEGIN; clock_timestamp() changes during the
 * statement, so the reason reported could disagree with the UPDATE's.
 *
 * The statements are kept out of clang-format's reach, one clause a line,
 * so that they read as SQL (and the README's excerpt matches them).
 */
// clang-format off
#define STORE__WINDOW_NOW(t)                                                   \
    "CASE WHEN " t ".starts_at > statement_timestamp() THEN 1"                 \
    " WHEN " t ".ends_at <= statement_timestamp() THEN 2 ELSE 0 END"
#define STORE__WINDOW_OPEN(t)                                                  \
    "(" t ".starts_at IS NULL OR " t ".starts_at <= statement_timestamp())"    \
    " AND (" t ".ends_at IS NULL OR statement_timestamp() < " t ".ends_at)"
#define STORE__CLAIM_HEAD                                                      \
    "WITH items AS (SELECT x.u, x.ord"                                         \
    "   FROM unnest($2::text[]) WITH ORDINALITY AS x(u, ord)),"                \
    " u AS (SELECT u, min(ord) AS ord FROM items GROUP BY u),"
#define STORE__CLAIM_MIDDLE                                                    \
    " ex AS (SELECT cl.user_id AS u, cl.id, cl.fence, cl.seq"                  \
    "   FROM claims cl JOIN u ON cl.user_id = u.u WHERE cl.coupon_id = $1),"   \
    " fresh AS (SELECT u.u, row_number() OVER (ORDER BY u.ord) AS rn"          \
    "   FROM u WHERE NOT EXISTS (SELECT 1 FROM ex WHERE ex.u = u.u)),"         \
    " want AS (SELECT " STORE__WANT " AS k FROM c, cp WHERE cp.win = 0),"
#define STORE__CLAIM_TAIL                                                      \
    " SELECT i.ord, u.ord, cp.buckets, c.total, cp.win,"                       \
    "  COALESCE((SELECT k FROM want), 0), COALESCE((SELECT k FROM upd), 0),"   \
    "  c.last_fence, allb.total_all, allb.claimed_all, c.claimed,"             \
    "  allb.others, COALESCE(ins.id, ex.id), COALESCE(ins.seq, ex.seq),"       \
    "  CASE WHEN ins.id IS NULL THEN ex.fence ELSE $3::bigint END,"            \
    "  ins.id IS NOT NULL"                                                     \
    " FROM items i JOIN u ON u.u = i.u"                                        \
    " LEFT JOIN cp ON true LEFT JOIN c ON true LEFT JOIN allb ON true"         \
    " LEFT JOIN ex ON ex.u = i.u LEFT JOIN ins ON ins.u = i.u"                 \
    " ORDER BY i.ord"

/* The batch on an unsharded coupon: the coupons row is the stock. Its upd
 * is the fenced write the README shows. */
static const char store__claim_c_sql[] =
    STORE__CLAIM_HEAD
    " cp AS (SELECT buckets, " STORE__WINDOW_NOW("coupons") " AS win,"
    "   total, claimed, last_fence FROM coupons WHERE id = $1),"
    " c AS (SELECT total, claimed, last_fence FROM cp WHERE buckets = 1),"
    " allb AS (SELECT total AS total_all, claimed AS claimed_all,"
    "   0::bigint AS others FROM c),"
    STORE__CLAIM_MIDDLE
    " upd AS (UPDATE coupons t SET claimed = t.claimed + want.k,"
    "   last_fence = COALESCE($3::bigint, t.last_fence)"
    "   FROM want"
    "   WHERE t.id = $1 AND want.k > 0"
    "   AND " STORE__FENCE_GUARD
    "   AND " STORE__STOCK_GUARD
    "   AND " STORE__WINDOW_OPEN("t")
    "   RETURNING t.claimed - want.k AS base, want.k AS k),"
    " ins AS (INSERT INTO claims (coupon_id, user_id, fence, seq, instance)"
    "   SELECT $1, f.u, $3::bigint, upd.base + f.rn, $4"
    "   FROM fresh f, upd WHERE f.rn <= upd.k"
    "   RETURNING id, user_id AS u, seq)"
    STORE__CLAIM_TAIL;

/* The batch on bucket $5 of a sharded coupon: its coupon_buckets row is the
 * stock; the window is the coupon's. */
static const char store__claim_b_sql[] =
    STORE__CLAIM_HEAD
    " cp AS (SELECT buckets, " STORE__WINDOW_NOW("coupons") " AS win"
    "   FROM coupons WHERE id = $1),"
    " c AS (SELECT total, claimed, last_fence FROM coupon_buckets"
    "   WHERE coupon_id = $1 AND bucket = $5::integer),"
    " allb AS (SELECT sum(total)::bigint AS total_all,"
    "   sum(claimed)::bigint AS claimed_all,"
    "   COALESCE(bit_or(CASE WHEN claimed < total AND bucket <> $5::integer"
    "   THEN 1::bigint << bucket END), 0) AS others"
    "   FROM coupon_buckets WHERE coupon_id = $1),"
    STORE__CLAIM_MIDDLE
    " upd AS (UPDATE coupon_buckets t SET claimed = t.claimed + want.k,"
    "   last_fence = COALESCE($3::bigint, t.last_fence)"
    "   FROM want, coupons w"
    "   WHERE t.coupon_id = $1 AND t.bucket = $5::integer AND want.k > 0"
    "   AND w.id = $1"
    "   AND " STORE__FENCE_GUARD
    "   AND " STORE__STOCK_GUARD
    "   AND " STORE__WINDOW_OPEN("w")
    "   RETURNING t.claimed - want.k AS base, want.k AS k),"
    " ins AS (INSERT INTO claims"
    "   (coupon_id, user_id, fence, seq, instance, bucket)"
    "   SELECT $1, f.u, $3::bigint, upd.base + f.rn, $4, $5::integer"
    "   FROM fresh f, upd WHERE f.rn <= upd.k"
    "   RETURNING id, user_id AS u, seq)"
    STORE__CLAIM_TAIL;
// clang-format on

/* The columns of that answer. */
enum {
    STORE__C_ORD,
    STORE__C_FIRST,
    STORE__C_BUCKETS, /* NULL: no such coupon */
    STORE__C_TOTAL,   /* the stock row's; NULL: no such stock row */
    STORE__C_WIN,     /* 0 open, 1 not started, 2 ended */
    STORE__C_WANT,
    STORE__C_WROTE,
    STORE__C_LAST_FENCE,
    STORE__C_TOTAL_ALL,
    STORE__C_CLAIMED_ALL,
    STORE__C_CLAIMED, /* the stock row's, before the write */
    STORE__C_OTHERS,  /* bit b: bucket b (not ours) has stock */
    STORE__C_ID,
    STORE__C_SEQ,
    STORE__C_FENCE,
    STORE__C_NEW,
    STORE__C__COUNT,
};

typedef struct store__stmt {
    const char *name;
    const char *sql;
} store__stmt_t;

static const store__stmt_t store__stmts[] = {
    /* The check of the naive mode: the coupon, and this user's claim. */
    {"check", "SELECT c.total, c.claimed, c.last_fence, cl.id, cl.fence"
              "  FROM coupons c"
              "  LEFT JOIN claims cl ON cl.coupon_id = c.id AND cl.user_id = $2"
              " WHERE c.id = $1"},
    /* The stock row's lock, first in every claim's transaction (see
     * store__claim_c_sql). NO KEY UPDATE, the strength the UPDATE takes
     * anyway, so that the foreign-key checks of claims being inserted (KEY
     * SHARE) are not blocked. */
    {"claim_lock_c", "SELECT 1 FROM coupons WHERE id = $1 FOR NO KEY UPDATE"},
    {"claim_lock_b", "SELECT 1 FROM coupon_buckets"
                     " WHERE coupon_id = $1 AND bucket = $2::integer"
                     " FOR NO KEY UPDATE"},
    {"claim_c", store__claim_c_sql},
    {"claim_b", store__claim_b_sql},
    /* The coupon, its window (microseconds since the epoch) and, for a
     * sharded one, the sum over its buckets. */
    {"coupon_get",
     "SELECT c.total, CASE WHEN c.buckets = 1 THEN c.claimed"
     "   ELSE (SELECT COALESCE(sum(claimed), 0) FROM coupon_buckets"
     "         WHERE coupon_id = c.id) END,"
     " c.last_fence, c.buckets,"
     " (extract(epoch FROM c.starts_at) * 1000000)::bigint,"
     " (extract(epoch FROM c.ends_at) * 1000000)::bigint"
     " FROM coupons c WHERE c.id = $1"},
    {"coupon_buckets_get",
     "SELECT bucket, total, claimed, last_fence FROM coupon_buckets"
     " WHERE coupon_id = $1 ORDER BY bucket"},
    /* A user's claim, and the coupon's stock left (over all its buckets). */
    {"claim_get",
     "SELECT cl.id, cl.fence, c.total - CASE WHEN c.buckets = 1 THEN c.claimed"
     "   ELSE (SELECT COALESCE(sum(claimed), 0) FROM coupon_buckets"
     "         WHERE coupon_id = c.id) END, cl.seq"
     "  FROM claims cl JOIN coupons c ON c.id = cl.coupon_id"
     " WHERE cl.coupon_id = $1 AND cl.user_id = $2"},
    /* The coupon and, when sharded, its buckets, in one statement: as even
     * as possible, the first total % buckets get one more. */
    {"coupon_create",
     "WITH cp AS (INSERT INTO coupons (id, total, buckets, starts_at, ends_at)"
     "   VALUES ($1, $2::integer, $3::integer,"
     "     'epoch'::timestamptz + $4::bigint * interval '1 microsecond',"
     "     'epoch'::timestamptz + $5::bigint * interval '1 microsecond')"
     "   ON CONFLICT (id) DO NOTHING RETURNING id, total, buckets),"
     " b AS (INSERT INTO coupon_buckets (coupon_id, bucket, total)"
     "   SELECT cp.id, g.b, cp.total / cp.buckets"
     "     + CASE WHEN g.b < cp.total % cp.buckets THEN 1 ELSE 0 END"
     "   FROM cp, generate_series(0, cp.buckets - 1) AS g(b)"
     "   WHERE cp.buckets > 1)"
     " SELECT id FROM cp"},
    /* The claimant set's load (store_claimants): the stock rows' locks,
     * then the coupon's state judged after them, then the claimants. */
    {"memo_lock_c", "SELECT 1 FROM coupons WHERE id = $1 FOR SHARE"},
    {"memo_lock_b", "SELECT 1 FROM coupon_buckets WHERE coupon_id = $1"
                    " ORDER BY bucket FOR SHARE"},
    {"memo_state",
     "SELECT c.ends_at IS NOT NULL AND c.ends_at <= statement_timestamp(),"
     " CASE WHEN c.buckets = 1 THEN c.total - c.claimed"
     "   ELSE (SELECT COALESCE(sum(total - claimed), 0) FROM coupon_buckets"
     "         WHERE coupon_id = c.id) END,"
     " CASE WHEN c.buckets = 1 THEN c.claimed"
     "   ELSE (SELECT COALESCE(sum(claimed), 0) FROM coupon_buckets"
     "         WHERE coupon_id = c.id) END"
     " FROM coupons c WHERE c.id = $1"},
    {"claimants", "SELECT user_id, id, fence FROM claims WHERE coupon_id = $1"},
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

store_errkind_t store_errkind(const store_t *st) {
    return st->errkind;
}

/* Records a failure of kind: its words in errstr. */
__attribute__((format(printf, 3, 4))) static void
store__err(store_t *st, store_errkind_t kind, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(st->errstr, sizeof(st->errstr), fmt, ap);
    va_end(ap);
    st->errkind = kind;
}

/* Copies libpq's message without its trailing newline. */
static void store__seterr(store_t *st, store_errkind_t kind, const char *what,
                          const char *msg) {
    st->errkind = kind;
    snprintf(st->errstr, sizeof(st->errstr), "postgres: %s: %s", what,
             msg != NULL ? msg : "?");
    str_trim_end(st->errstr, "\n ");
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
    /* The server's own error carries a SQLSTATE; a result without one is
     * an answer this module did not expect; no result at all, a connection
     * that failed under the call. */
    const char *state =
        res != NULL ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    store__seterr(st,
                  state != NULL ? STORE_ESERVER
                  : res != NULL ? STORE_EPROTO
                                : STORE_EIO,
                  what, msg);
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
    log_debug("postgres.notice", "msg=\"%.*s\"",
              (int)str_trimmed_len(msg, "\n"), msg);
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
            store__err(st, STORE_EIO,
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
            store__seterr(st, STORE_EIO, what, strerror(errno));
            metrics_inc(M_PG_ERRORS);
            store__drop(st);
            return STORE_ERR;
        }
    }
}

/* Sends what libpq buffered (a non-blocking connection buffers what the
 * socket did not take), reading whatever the server sends meanwhile so
 * that neither side stalls on a full buffer; each wait is bounded by the
 * call's deadline. STORE_OK, or STORE_ERR (errstr set, a bad connection
 * dropped). */
static int store__flush(store_t *st, const char *what) {
    int f;
    while ((f = PQflush(st->conn)) == 1) {
        if (store__wait(st, what, POLLOUT | POLLIN) != STORE_OK) {
            return STORE_ERR;
        }
        if (PQconsumeInput(st->conn) == 0) {
            return store__fail(st, what, NULL);
        }
    }
    return f < 0 ? store__fail(st, what, NULL) : STORE_OK;
}

/* After a PQsend*: sends what libpq buffered, then reads until the last
 * result of the command is in, each wait bounded by the deadline. Returns
 * the last result (PQclear it; for several statements sent as one query,
 * an error is always last, since the server stops at the first), or NULL
 * when the connection failed or the deadline passed (errstr set, the
 * connection dropped if it is bad). */
static PGresult *store__collect(store_t *st, const char *what) {
    assert(st->conn != NULL && PQisnonblocking(st->conn));
    st->round_trips++;
    if (store__flush(st, what) != STORE_OK) {
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
    int refused = 0;
    st->conn = store__open(st->dsn, st->connect_timeout_s, st->deadline_ns,
                           st->errstr, sizeof(st->errstr), &refused);
    if (st->conn == NULL) {
        st->errkind = refused ? STORE_EAUTH : STORE_EIO;
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
        store_errkind_t keep_kind = st->errkind;
        memcpy(keep, st->errstr, sizeof(keep));
        if (mono_ns() >= st->deadline_ns) {
            store__drop(st);
        } else {
            store__simple(st, "ROLLBACK");
        }
        memcpy(st->errstr, keep, sizeof(keep));
        st->errkind = keep_kind;
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
        store__err(st, STORE_EIO,
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
        store__err(st, STORE_ESERVER,
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

/* Reads the user's claim of coupon into item (outside or inside a
 * transaction): STORE_OK with item->status STORE_ALREADY, STORE_NOT_FOUND
 * when there is none, or STORE_ERR. */
static int store__claim_get(store_t *st, const char *coupon,
                            store_item_t *item) {
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
        item->seq = store__int(res, 0, 3);
    }
    PQclear(res);
    return found ? STORE_OK : STORE_NOT_FOUND;
}

/* Fills item with the user's existing claim, which must be there (the
 * claim statement said so). */
static int store__existing(store_t *st, const char *coupon,
                           store_item_t *item) {
    int rc = store__claim_get(st, coupon, item);
    if (rc == STORE_NOT_FOUND) {
        store__err(st, STORE_EPROTO, "postgres: claim of %s vanished",
                   item->user_id);
        return STORE_ERR;
    }
    return rc;
}

/* --------------------------------------------------------------- claim --- */

/* The check: reads the coupon and the user's claim. Returns STORE_ERR,
 * STORE_NOT_FOUND, STORE_OK with item->status set when the check already
 * answers (already claimed, sold out), or STORE__PROCEED with the coupon's
 * *total and *claimed when a write should follow. */
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

/* ------------------------------------------------------------ pipeline --- */

/* One statement of a pipeline: a prepared one (name) or, without
 * parameters, plain SQL. */
typedef struct store__q {
    const char *name; /* prepared statement, or NULL */
    const char *sql;  /* when name is NULL */
    int n;
    const char *const *params;
} store__q_t;

/* The next result of a pipeline, waiting for it within the deadline. NULL
 * either ends one statement's results (*err stays 0) or means the
 * connection failed or the deadline passed (*err set, errstr says why). */
static PGresult *store__pipe_next(store_t *st, const char *what, int *err) {
    while (PQisBusy(st->conn)) {
        if (store__wait(st, what, POLLIN) != STORE_OK) {
            *err = 1;
            return NULL;
        }
        if (PQconsumeInput(st->conn) == 0) {
            store__fail(st, what, NULL);
            *err = 1;
            return NULL;
        }
    }
    return PQgetResult(st->conn);
}

/*
 * Sends nq statements as one pipeline followed by a Sync, so that they cost
 * one round trip, and collects each statement's last result into res[i]
 * (PQclear each; NULL entries on failure). The server runs them in order,
 * each with a snapshot of its own (READ COMMITTED), and once one fails it
 * skips the rest (PGRES_PIPELINE_ABORTED) up to the Sync. Returns STORE_OK
 * when every result arrived (whatever their statuses), or STORE_ERR when
 * the connection failed or the deadline passed (then dropped). A result
 * with SQLSTATE 0A000 sets st->replan (see store__replan).
 */
static int store__pipeline(store_t *st, int nq, const store__q_t *q,
                           PGresult **res) {
    for (int i = 0; i < nq; i++) {
        res[i] = NULL;
    }
    if (st->conn == NULL) {
        return STORE_ERR; /* dropped earlier in this call: errstr says why */
    }
    st->timed_out = 0;
    const char *what = q[nq - 1].name != NULL ? q[nq - 1].name : q[0].sql;
    if (PQenterPipelineMode(st->conn) == 0) {
        return store__fail(st, "pipeline", NULL);
    }
    for (int i = 0; i < nq; i++) {
        int ok = q[i].name != NULL
                     ? PQsendQueryPrepared(st->conn, q[i].name, q[i].n,
                                           q[i].params, NULL, NULL, 0)
                     : PQsendQueryParams(st->conn, q[i].sql, 0, NULL, NULL,
                                         NULL, NULL, 0);
        if (ok == 0) {
            return store__fail(st, what, NULL);
        }
    }
    if (PQpipelineSync(st->conn) == 0) {
        return store__fail(st, what, NULL);
    }
    st->round_trips++;
    if (store__flush(st, what) != STORE_OK) {
        return STORE_ERR;
    }
    int err = 0;
    for (int i = 0; i < nq && !err; i++) {
        PGresult *r;
        while ((r = store__pipe_next(st, what, &err)) != NULL) {
            if (store__sqlstate_is(r, "0A000")) {
                st->replan = 1;
            }
            PQclear(res[i]);
            res[i] = r;
        }
    }
    if (!err) {
        PGresult *r = store__pipe_next(st, what, &err);
        if (!err && (r == NULL || PQresultStatus(r) != PGRES_PIPELINE_SYNC)) {
            store__fail(st, what, r);
            err = 1;
        }
        PQclear(r);
    }
    if (!err && PQexitPipelineMode(st->conn) == 0) {
        store__fail(st, what, NULL);
        err = 1;
    }
    if (err) {
        for (int i = 0; i < nq; i++) {
            PQclear(res[i]);
            res[i] = NULL;
        }
        store__drop(st); /* a pipeline half read is of no further use */
        return STORE_ERR;
    }
    return STORE_OK;
}

/* --------------------------------------------------------------- claim --- */

/* Writes the users as a PostgreSQL array literal, each element quoted.
 * Returns a new string (free it), or NULL when out of memory. */
static char *store__users_array(const store_item_t *items, size_t n) {
    size_t cap = 3;
    for (size_t i = 0; i < n; i++) {
        cap += 2 * strlen(items[i].user_id) + 3;
    }
    char *a = malloc(cap);
    if (a == NULL) {
        return NULL;
    }
    size_t k = 0;
    a[k++] = '{';
    for (size_t i = 0; i < n; i++) {
        if (i > 0) {
            a[k++] = ',';
        }
        a[k++] = '"';
        for (const char *p = items[i].user_id; *p != '\0'; p++) {
            if (*p == '"' || *p == '\\') {
                a[k++] = '\\';
            }
            a[k++] = *p;
        }
        a[k++] = '"';
    }
    a[k++] = '}';
    a[k] = '\0';
    assert(k < cap);
    return a;
}

static int64_t store__col(const PGresult *res, int row, int col) {
    return PQgetisnull(res, row, col)
               ? 0
               : strtoll(PQgetvalue(res, row, col), NULL, 10);
}

/* Each item's status and claim from its row of the claim statement's
 * answer: claimed now (STORE_OK), held before or named twice
 * (STORE_ALREADY, the first's claim), else not claimed: the whole call's
 * refusal (whole), or past the stock (empty: STORE_SOLD_OUT, or
 * STORE_BUCKET_EMPTY when another bucket has stock). left_all: the
 * coupon's stock over all buckets before the write; wrote: the claims it
 * made; claimed: the stock row's count before it. */
static void store__claim_items(const PGresult *res, store_item_t *items,
                               size_t n, int empty, int whole, int64_t left_all,
                               int64_t wrote, int64_t claimed) {
    for (int r = 0; r < (int)n; r++) {
        int ord = (int)store__col(res, r, STORE__C_ORD);
        int first = (int)store__col(res, r, STORE__C_FIRST);
        assert(ord == r + 1 && first >= 1 && first <= ord);
        store_item_t *it = &items[r];
        it->claim_id = store__col(res, r, STORE__C_ID);
        it->seq = store__col(res, r, STORE__C_SEQ);
        it->fence = store__int(res, r, STORE__C_FENCE);
        int fresh_claim = PQgetvalue(res, r, STORE__C_NEW)[0] == 't';
        if (PQgetisnull(res, r, STORE__C_ID)) {
            it->status = whole != STORE_OK ? whole : empty;
            it->claim_id = 0;
            it->fence = STORE_NO_FENCE;
            it->remaining = left_all - wrote;
        } else if (fresh_claim && first == ord) {
            it->status = STORE_OK;
            /* stock left once this claim was made: the batch's earlier
             * claims taken, and this one */
            it->remaining = left_all - (it->seq - claimed);
        } else {
            /* held before, or the second of a user named twice, who gets
             * the first's claim */
            it->status = STORE_ALREADY;
            it->remaining = left_all - wrote;
        }
    }
}

/*
 * Reads the claim statement's answer (one row per item, see store__claim_c_sql)
 * into the items. Returns STORE_OK, STORE__WROTE (STORE_OK, and something to
 * commit), a whole-call code (nothing written), or STORE_ERR.
 */
static int store__claim_read(store_t *st, const PGresult *res, int bucket,
                             int64_t fence, int64_t max_seen,
                             store_item_t *items, size_t n,
                             int64_t *last_fence_out) {
    if (PQntuples(res) != (int)n || PQnfields(res) != STORE__C__COUNT) {
        store__err(st, STORE_EPROTO,
                   "postgres: the claim answered %d rows for %zu items",
                   PQntuples(res), n);
        return STORE_ERR;
    }
    if (PQgetisnull(res, 0, STORE__C_BUCKETS)) {
        return STORE_NOT_FOUND;
    }
    int buckets = (int)store__col(res, 0, STORE__C_BUCKETS);
    st->shape_buckets = buckets;
    if (PQgetisnull(res, 0, STORE__C_TOTAL)) {
        store__err(st, STORE_ENONE,
                   "postgres: bucket %d on a coupon with %d bucket(s)", bucket,
                   buckets);
        return STORE_WRONG_BUCKET;
    }
    int64_t win = store__col(res, 0, STORE__C_WIN);
    int64_t want = store__col(res, 0, STORE__C_WANT);
    int64_t wrote = store__col(res, 0, STORE__C_WROTE);
    int64_t total = store__col(res, 0, STORE__C_TOTAL);
    int64_t claimed = store__col(res, 0, STORE__C_CLAIMED);
    int64_t left_all = store__col(res, 0, STORE__C_TOTAL_ALL) -
                       store__col(res, 0, STORE__C_CLAIMED_ALL);
    uint64_t others = (uint64_t)store__col(res, 0, STORE__C_OTHERS);
    int own_left = claimed + wrote < total;
    st->shape_stock =
        others | (own_left ? UINT64_C(1) << (bucket < 0 ? 0 : bucket) : 0);

    /* Why the fresh users were not claimed, when it was not the stock. */
    int whole = STORE_OK;
    if (win == 1) {
        whole = STORE_NOT_STARTED;
    } else if (win == 2) {
        whole = STORE_EXPIRED;
    } else if (want > 0 && wrote == 0) {
        int64_t last = store__col(res, 0, STORE__C_LAST_FENCE);
        if (fence == STORE_NO_FENCE || last <= max_seen) {
            store__err(st, STORE_EPROTO,
                       "postgres: the claim's UPDATE matched no row, and "
                       "neither the fence nor the window refused it");
            return STORE_ERR;
        }
        if (last_fence_out != NULL) {
            *last_fence_out = last;
        }
        whole = STORE_FENCED;
    }
    store__claim_items(res, items, n,
                       others != 0 ? STORE_BUCKET_EMPTY : STORE_SOLD_OUT, whole,
                       left_all, wrote, claimed);
    if (whole != STORE_OK) {
        return whole;
    }
    return wrote > 0 ? STORE__WROTE : STORE_OK;
}

/* Sends a claim's three statements (BEGIN, the lock, the claim) and reads
 * their results into res: STORE_OK or STORE_ERR. */
static int store__claim_send(store_t *st, const store__q_t *q, PGresult **res,
                             int reused) {
    int prc;
    if (fault_ms(FAULT_AFTER_CHECK) == 0) {
        prc = store__pipeline(st, 3, q, res);
        if (prc != STORE_OK && reused && st->conn == NULL && !st->timed_out &&
            store__connect(st) == STORE_OK) {
            /* The kept connection had died while idle (PostgreSQL
             * restarted, a proxy timed it out). Nothing was committed, so
             * once more on a fresh one; otherwise every worker would answer
             * one spurious 503 after each PostgreSQL restart. */
            prc = store__pipeline(st, 3, q, res);
        }
    } else {
        /* Tests only: the lock taken and the row read, the write not sent
         * yet; in two round trips so that the pause falls between them. */
        prc = store__pipeline(st, 2, q, res);
        if (prc == STORE_OK) {
            fault_pause(FAULT_AFTER_CHECK);
            prc = store__pipeline(st, 1, &q[2], &res[2]);
        }
    }
    return prc;
}

/* Ends a claim's transaction after its claim statement answered rc:
 * rolled back unless something was written (STORE__WROTE), then the gate
 * decides between ROLLBACK (STORE_ABORTED) and COMMIT. Returns as
 * store_claim. */
static int store__claim_end(store_t *st, int rc, store_gate_fn gate,
                            void *arg) {
    if (rc != STORE__WROTE) {
        if (rc == STORE_FENCED) {
            metrics_inc(M_FENCED_REFUSALS);
        }
        store__rollback(st); /* failed, refused, or read-only */
        return rc;
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

/*
 * One attempt at the claim's transaction; see store_claim. Round trips: one
 * for BEGIN, the lock statement and the claim statement (a pipeline), one
 * for COMMIT (or ROLLBACK when there is nothing to commit). Returns as
 * store_claim, or STORE_ALREADY when the claim statement ran into a
 * concurrent claim of the same user (possible only for a sharded coupon,
 * whose buckets are claimed in parallel): rolled back, worth running again.
 */
static int store__claim_tx(store_t *st, const char *coupon, int bucket,
                           int64_t fence, store_item_t *items, size_t n,
                           store_gate_fn gate, void *arg,
                           int64_t *last_fence_out) {
    assert(n >= 1 && st->tx_deadline_ms > 0);
    int reused = st->conn != NULL;
    if (store__connect(st) != STORE_OK) {
        return STORE_ERR;
    }
    char *users = store__users_array(items, n);
    if (users == NULL) {
        store__err(st, STORE_ESYS, "postgres: out of memory");
        return STORE_ERR;
    }
    char fence_txt[24], bucket_txt[16];
    /* The highest last_fence the write may have found: below our fence,
     * since this is the lease's first (and only) write (STORE__FENCE_GUARD
     * says so to PostgreSQL; this tells a refused fence from a failure). */
#ifdef COUPONSVC_UNSAFE_FENCE_NOT_STRICT
    int64_t max_seen = fence; /* negative control: see the top */
#else
    int64_t max_seen = fence - 1;
#endif
    snprintf(fence_txt, sizeof(fence_txt), "%lld", (long long)fence);
    snprintf(bucket_txt, sizeof(bucket_txt), "%d", bucket);
    const char *fence_p = fence != STORE_NO_FENCE ? fence_txt : NULL;
    const char *pl[2] = {coupon, bucket_txt};
    const char *pc[5] = {coupon, users, fence_p, st->instance, bucket_txt};
    store__q_t q[3] = {
        {.sql = "BEGIN"},
        {.name = bucket < 0 ? "claim_lock_c" : "claim_lock_b",
         .n = bucket < 0 ? 1 : 2,
         .params = pl},
        {.name = bucket < 0 ? "claim_c" : "claim_b",
         .n = bucket < 0 ? 4 : 5,
         .params = pc},
    };
    PGresult *res[3] = {NULL, NULL, NULL};
    int prc = store__claim_send(st, q, res, reused);
    free(users);
    if (prc != STORE_OK) {
        return STORE_ERR;
    }

    int rc = STORE_OK;
    for (int i = 0; i < 3 && rc == STORE_OK; i++) {
        ExecStatusType want = i == 0 ? PGRES_COMMAND_OK : PGRES_TUPLES_OK;
        if (res[i] == NULL || PQresultStatus(res[i]) != want) {
            if (res[i] != NULL && store__sqlstate_is(res[i], "23505")) {
                rc = STORE_ALREADY;
            } else {
                rc = store__fail(st, q[i].name != NULL ? q[i].name : "BEGIN",
                                 res[i]);
            }
        }
    }
    if (rc == STORE_OK) {
        rc = store__claim_read(st, res[2], bucket, fence, max_seen, items, n,
                               last_fence_out);
    }
    for (int i = 0; i < 3; i++) {
        PQclear(res[i]);
    }
    return store__claim_end(st, rc, gate, arg);
}

int store_claim(store_t *st, const char *coupon, int bucket, int64_t fence,
                store_item_t *items, size_t n, store_gate_fn gate, void *arg,
                int64_t *last_fence_out) {
    assert(bucket >= -1 && bucket < STORE_BUCKETS_MAX);
    st->shape_buckets = 0;
    st->shape_stock = 0;
    store__deadline_start(st);
    st->replan = 0;
#ifdef COUPONSVC_UNSAFE_TRUST_READ
    if (n == 1 && bucket < 0 && fence != STORE_NO_FENCE) {
        (void)gate;
        (void)arg;
        (void)last_fence_out;
        return store_claim_naive(st, coupon, items); /* see the top */
    }
#endif
    int rc = STORE_ERR;
    /* Bounded: a plan gone stale (once), or a concurrent claim of one of
     * our users on another bucket (each retry sees it as held). */
    for (int attempt = 0; attempt < 3; attempt++) {
        rc = store__claim_tx(st, coupon, bucket, fence, items, n, gate, arg,
                             last_fence_out);
        if (rc == STORE_ALREADY) {
            log_info("claim.retry",
                     "coupon=%s bucket=%d (a user of the "
                     "batch was claimed concurrently)",
                     coupon, bucket);
            continue;
        }
        if (rc != STORE_ERR || !st->replan || st->conn == NULL ||
            PQtransactionStatus(st->conn) != PQTRANS_IDLE) {
            return rc;
        }
        /* A statement's plan went stale inside the transaction (see
         * store__replan), which aborted it: nothing was written. Prepare
         * again and run the whole transaction once more, within the same
         * deadline. */
        st->replan = 0;
        if (store__replan(st) != STORE_OK) {
            return STORE_ERR;
        }
    }
    if (rc == STORE_ALREADY) {
        store__err(st, STORE_ESERVER,
                   "postgres: the batch kept running into concurrent claims of "
                   "its users");
        rc = STORE_ERR;
    }
    return rc;
}

uint64_t store_round_trips(const store_t *st) {
    return st->round_trips;
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
#ifdef COUPONSVC_UNSAFE_TRUST_READ
    fault_pause(FAULT_AFTER_CHECK); /* negative control: see the top */
#endif

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
        int dup = store__sqlstate_is(res, "23505");
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
    assert(buckets >= 1 && buckets <= STORE_BUCKETS_MAX &&
           (buckets == 1 || buckets <= total));
    store__deadline_start(st);
    if (store__connect(st) != STORE_OK) {
        return STORE_ERR;
    }
    char t[24], b[16], s0[24], s1[24];
    snprintf(t, sizeof(t), "%lld", (long long)total);
    snprintf(b, sizeof(b), "%d", buckets);
    snprintf(s0, sizeof(s0), "%lld", (long long)starts_at_us);
    snprintf(s1, sizeof(s1), "%lld", (long long)ends_at_us);
    const char *p[] = {id, t, b, starts_at_us != STORE_NO_TIME ? s0 : NULL,
                       ends_at_us != STORE_NO_TIME ? s1 : NULL};
    PGresult *res = store__exec(st, "coupon_create", 5, p, PGRES_TUPLES_OK);
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
    if (PQntuples(res) != 1) {
        PQclear(res);
        return STORE_NOT_FOUND;
    }
    out->total = store__col(res, 0, 0);
    out->claimed = store__col(res, 0, 1);
    out->last_fence = store__col(res, 0, 2);
    out->buckets = (int)store__col(res, 0, 3);
    out->starts_at_us =
        PQgetisnull(res, 0, 4) ? STORE_NO_TIME : store__col(res, 0, 4);
    out->ends_at_us =
        PQgetisnull(res, 0, 5) ? STORE_NO_TIME : store__col(res, 0, 5);
    PQclear(res);
    if (out->buckets <= 1) {
        out->buckets = 1;
        return STORE_OK;
    }
    /* Another statement, so the buckets may have moved on since the sum
     * above: take the claimed figure from the rows shown. */
    res = store__exec(st, "coupon_buckets_get", 1, p, PGRES_TUPLES_OK);
    if (res == NULL) {
        return STORE_ERR;
    }
    int rows = PQntuples(res);
    if (rows != out->buckets) {
        store__err(st, STORE_EPROTO,
                   "postgres: coupon %s has %d bucket rows, not %d", id, rows,
                   out->buckets);
        PQclear(res);
        return STORE_ERR;
    }
    out->claimed = 0;
    for (int i = 0; i < rows; i++) {
        store_bucket_t *b = &out->bucket[i];
        b->total = store__col(res, i, 1);
        b->claimed = store__col(res, i, 2);
        b->last_fence = store__col(res, i, 3);
        out->claimed += b->claimed;
    }
    PQclear(res);
    return STORE_OK;
}

/*
 * The claimants are read in libpq's single-row mode: each row is handed to
 * fn as it arrives, so memory stays flat however many there are. The call
 * is bounded by the same deadline as any other.
 *
 * Why the set is final when this says so. Every claim transaction's first
 * statement after BEGIN is claim_lock_c or claim_lock_b: the stock row (the
 * coupons row, or its one coupon_buckets row) FOR NO KEY UPDATE, held to its
 * COMMIT or ROLLBACK. Its claim statement comes after that lock is granted
 * and judges the window by its own statement_timestamp(), in the UPDATE's
 * WHERE. This load, in one transaction, first takes every stock row of the
 * coupon FOR SHARE (memo_lock_c, memo_lock_b), which conflicts with NO KEY
 * UPDATE (and not with the KEY SHARE that inserting a claim takes on the
 * coupons row). Then memo_state, a later statement, reads the coupon with a
 * fresh snapshot and a clock taken after the locks were granted. A claim
 * transaction W that can still write is either
 *   - one that held its row lock before this load got it: the load waited
 *     for W to end, so W's claims are committed (PostgreSQL releases row
 *     locks after the commit is visible) and memo_state and the claimants
 *     query, whose snapshots are taken later, see them; or
 *   - one that gets its row lock after this load ends: its claim statement
 *     starts later than memo_state did, so its statement_timestamp() is
 *     later too (one server, one clock). If memo_state found the window
 *     ended, that claim statement finds it ended and writes nothing; if
 *     memo_state found no stock left on any row, neither does it (no API
 *     adds stock).
 * So once memo_state says ended or sold out, no claim can be added after
 * the claimants query's snapshot: the set read is the final one. It rests
 * on PostgreSQL's clock not stepping back across ends_at, the same clock
 * every claim is judged by. (A writer that skips the lock statement, such as
 * an old replica's single UPDATE, is judged by a statement_timestamp() taken
 * before its row wait, and is not covered; the service's own claims are.)
 */
/* store_claimants' first step, in its transaction: the stock rows' locks,
 * then whether the coupon's claimant set is final. Returns STORE_OK with
 * *final STORE_EXPIRED, STORE_SOLD_OUT or STORE_OK (not final), or
 * STORE_NOT_FOUND / STORE_ERR. */
static int store__claimants_state(store_t *st, const char *const *p, int *final,
                                  int64_t *claimed_out,
                                  int64_t *remaining_out) {
    store__q_t q[4] = {
        {.sql = "BEGIN"},
        {.name = "memo_lock_c", .n = 1, .params = p},
        {.name = "memo_lock_b", .n = 1, .params = p},
        {.name = "memo_state", .n = 1, .params = p},
    };
    PGresult *res[4] = {NULL, NULL, NULL, NULL};
    if (store__pipeline(st, 4, q, res) != STORE_OK) {
        return STORE_ERR;
    }
    int rc = STORE_OK;
    for (int i = 0; i < 4 && rc == STORE_OK; i++) {
        ExecStatusType want = i == 0 ? PGRES_COMMAND_OK : PGRES_TUPLES_OK;
        if (res[i] == NULL || PQresultStatus(res[i]) != want) {
            rc = store__fail(st, q[i].name != NULL ? q[i].name : "BEGIN",
                             res[i]);
        }
    }
    *final = STORE_OK;
    if (rc == STORE_OK && PQntuples(res[3]) != 1) {
        rc = STORE_NOT_FOUND;
    } else if (rc == STORE_OK) {
        int ended = strcmp(PQgetvalue(res[3], 0, 0), "t") == 0;
        int64_t left = store__col(res[3], 0, 1);
        *claimed_out = store__col(res[3], 0, 2);
        *remaining_out = left > 0 ? left : 0;
        /* Expired first: the claim statement judges the window before the
         * stock, so that is what a claim would be answered. */
        *final = ended ? STORE_EXPIRED : left <= 0 ? STORE_SOLD_OUT : STORE_OK;
    }
    for (int i = 0; i < 4; i++) {
        PQclear(res[i]);
    }
    return rc;
}

/* store_claimants' second step: every claimant row, one at a time, to fn.
 * STORE_OK, what fn returned, or STORE_ERR. */
static int store__claimants_stream(store_t *st, const char *const *p,
                                   store_claimant_fn fn, void *arg) {
    st->timed_out = 0;
    if (PQsendQueryPrepared(st->conn, "claimants", 1, p, NULL, NULL, 0) == 0 ||
        PQsetSingleRowMode(st->conn) == 0) {
        return store__fail(st, "claimants", NULL);
    }
    int rc = STORE_OK, stop = 0;
    for (;;) {
        int err = 0;
        PGresult *r = store__pipe_next(st, "claimants", &err);
        if (err) {
            return STORE_ERR; /* the connection is gone: nothing to drain */
        }
        if (r == NULL) {
            break;
        }
        ExecStatusType s = PQresultStatus(r);
        if (s == PGRES_SINGLE_TUPLE && !stop) {
            int frc = fn(arg, PQgetvalue(r, 0, 0), (size_t)PQgetlength(r, 0, 0),
                         store__int(r, 0, 1), store__int(r, 0, 2));
            if (frc != 0) {
                rc = frc; /* read the rest, so the connection stays usable */
                stop = 1;
            }
        } else if (s != PGRES_SINGLE_TUPLE && s != PGRES_TUPLES_OK) {
            store__fail(st, "claimants", r);
            rc = STORE_ERR;
            stop = 1;
        }
        PQclear(r);
    }
    store__rollback(st); /* the locks go with it; nothing was written */
    return rc;
}

int store_claimants(store_t *st, const char *coupon, store_claimant_fn fn,
                    void *arg, int64_t *claimed_out, int64_t *remaining_out) {
    store__deadline_start(st);
    if (store__connect(st) != STORE_OK) {
        return STORE_ERR;
    }
    const char *p[] = {coupon};
    int final = STORE_OK;
    int rc = store__claimants_state(st, p, &final, claimed_out, remaining_out);
    if (rc != STORE_OK || final == STORE_OK) {
        store__rollback(st); /* read only: nothing to keep */
        return rc;
    }
    rc = store__claimants_stream(st, p, fn, arg);
    return rc == STORE_OK ? final : rc;
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
    return st->conn == NULL && st->errkind == STORE_EAUTH ? STORE_EREFUSED
                                                          : STORE_ERR;
}

/* ---------------------------------------------------- the claim lookup --- */

int store_claim_lookup(store_t *st, const char *coupon, store_item_t *item) {
    store__deadline_start(st);
    if (store__connect(st) != STORE_OK) {
        return STORE_ERR;
    }
    return store__claim_get(st, coupon, item);
}
