/*
 * lg_verify.c: the invariant checker (see lg_verify.h for what it checks).
 *
 * One REPEATABLE READ transaction, so that every question is asked of the
 * same snapshot: the coupons to check and the answered (coupon, user) pairs
 * go into temporary tables by COPY, then a handful of set-based queries
 * answer the rest, whatever the number of coupons. Nothing is written: the
 * transaction ends with ROLLBACK.
 *
 * Commit order within one counter (a coupon's row, or one bucket's) is seq:
 * the UPDATE that produced a seq held that counter's row lock until COMMIT,
 * so a transaction that committed later read a higher counter. Two rows of
 * one transaction are told apart from two transactions by xmin, the id of
 * the inserting transaction (claim rows are never updated, so xmin stays
 * the inserter's).
 */
#include "lg_verify.h"

#include <assert.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------- helpers --- */

/* Records the first violation's description (later ones are counted only). */
static void lg_verify__first(lg_verify_report_t *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void lg_verify__first(lg_verify_report_t *r, const char *fmt, ...) {
    if (r->first[0] != '\0') {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->first, sizeof r->first, fmt, ap);
    va_end(ap);
}

/* Sets r->err to prefix and the first line of pg's error message (libpq's
 * messages end with a newline, and may go on with a hint). */
static void lg_verify__pgerr(lg_verify_report_t *r, const char *prefix,
                             PGconn *pg) {
    snprintf(r->err, sizeof r->err, "%s%s", prefix, PQerrorMessage(pg));
    r->err[strcspn(r->err, "\n")] = '\0';
}

/* Runs sql and checks its status. Returns a new result (PQclear it), or NULL
 * with r->err set. */
static PGresult *lg_verify__q(PGconn *pg, const char *sql, ExecStatusType want,
                              lg_verify_report_t *r) {
    PGresult *res = PQexec(pg, sql);
    if (PQresultStatus(res) != want) {
        lg_verify__pgerr(r, "", pg);
        PQclear(res);
        return NULL;
    }
    return res;
}

static int lg_verify__ok(PGconn *pg, const char *sql, lg_verify_report_t *r) {
    PGresult *res = lg_verify__q(pg, sql, PGRES_COMMAND_OK, r);
    PQclear(res);
    return res != NULL ? 0 : -1;
}

static long long lg_verify__ll(const PGresult *res, int row, int col) {
    return strtoll(PQgetvalue(res, row, col), NULL, 10);
}

/* Runs sql, a query of one row whose first column counts violations, and
 * sets *count to it. Returns the result, for the caller to name the first
 * offender from the other columns (PQclear it), or NULL with r->err set. */
static PGresult *lg_verify__count(PGconn *pg, const char *sql, long long *count,
                                  lg_verify_report_t *r) {
    PGresult *res = lg_verify__q(pg, sql, PGRES_TUPLES_OK, r);
    if (res != NULL) {
        *count = lg_verify__ll(res, 0, 0);
    }
    return res;
}

/* Appends s to buf at *len in COPY's text format (backslash, tab and line
 * ends escaped). buf has room for 2 * LG_VERIFY_ID_MAX more bytes. */
static void lg_verify__esc(char *buf, size_t *len, const char *s) {
    for (; *s != '\0'; s++) {
        char c = *s;
        if (c == '\\' || c == '\t' || c == '\n' || c == '\r') {
            buf[(*len)++] = '\\';
            c = c == '\t' ? 't' : c == '\n' ? 'n' : c == '\r' ? 'r' : c;
        }
        buf[(*len)++] = c;
    }
}

/* COPY the list into table (one column for coupons, two for pairs). */
static int lg_verify__copy(PGconn *pg, const char *sql,
                           const lg_verify_list_t *l, bool pairs,
                           lg_verify_report_t *r) {
    PGresult *res = lg_verify__q(pg, sql, PGRES_COPY_IN, r);
    if (res == NULL) {
        return -1;
    }
    PQclear(res);
    enum { CAP = 1 << 16 };
    char *buf = malloc(CAP);
    char coupon[LG_VERIFY_ID_MAX], user[LG_VERIFY_ID_MAX];
    size_t len = 0;
    bool ok = buf != NULL;
    for (uint64_t i = 0; l != NULL && i < l->n && ok; i++) {
        coupon[0] = user[0] = '\0';
        l->get(l->arg, i, coupon, pairs ? user : NULL);
        coupon[LG_VERIFY_ID_MAX - 1] = user[LG_VERIFY_ID_MAX - 1] = '\0';
        lg_verify__esc(buf, &len, coupon);
        if (pairs) {
            buf[len++] = '\t';
            lg_verify__esc(buf, &len, user);
        }
        buf[len++] = '\n';
        if (CAP - len < 4 * LG_VERIFY_ID_MAX + 8) { /* room for one more */
            ok = PQputCopyData(pg, buf, (int)len) == 1;
            len = 0;
        }
    }
    if (ok && len > 0) {
        ok = PQputCopyData(pg, buf, (int)len) == 1;
    }
    ok = PQputCopyEnd(pg, ok ? NULL : "lg_verify: could not send") == 1 && ok;
    while ((res = PQgetResult(pg)) != NULL) {
        if (PQresultStatus(res) != PGRES_COMMAND_OK && ok) {
            lg_verify__pgerr(r, "COPY: ", pg);
            ok = false;
        }
        PQclear(res);
    }
    if (!ok && r->err[0] == '\0') {
        snprintf(r->err, sizeof r->err, "COPY: %s", PQerrorMessage(pg));
    }
    free(buf);
    return ok ? 0 : -1;
}

/* ------------------------------------------------------------ the checks ---
 */

/* Adds row i of lg_verify__coupons's query, one coupon, to r. */
static void lg_verify__coupon_row(const PGresult *res, int i,
                                  lg_verify_report_t *r) {
    const char *id = PQgetvalue(res, i, 0);
    bool missing = PQgetvalue(res, i, 1)[0] == 't';
    long long total = lg_verify__ll(res, i, 2);
    long long own = lg_verify__ll(res, i, 3);
    long long rows = lg_verify__ll(res, i, 4);
    long long users = lg_verify__ll(res, i, 5);
    long long unbucketed = lg_verify__ll(res, i, 6);
    long long nbuckets = lg_verify__ll(res, i, 7);
    long long inbuckets = lg_verify__ll(res, i, 8);
    /* A sharded coupon counts its claims in its buckets; rows without
     * a bucket (an older replica's, during a rolling upgrade) are
     * counted by the coupon's own counter, as before sharding. */
    long long claimed = own + inbuckets;
    long long used = rows > claimed ? rows : claimed;
    r->coupons++;
    r->stock += total;
    r->claimed += claimed;
    r->claim_rows += rows;
    r->duplicate_users += rows - users;
    if (missing) {
        r->coupons_missing++;
        lg_verify__first(r, "coupon %s does not exist", id);
    }
    if (used > total) {
        r->oversell += used - total;
        r->oversold_coupons++;
        lg_verify__first(r,
                         "coupon %s oversold: stock %lld, claimed %lld, "
                         "%lld claim rows",
                         id, total, claimed, rows);
    }
    if (rows != claimed || (nbuckets > 0 && unbucketed != own)) {
        r->rows_mismatch++;
        if (nbuckets > 0) {
            lg_verify__first(r,
                             "coupon %s: %lld claim rows, claimed %lld "
                             "(outside its %lld buckets: %lld rows, "
                             "claimed %lld)",
                             id, rows, claimed, nbuckets, unbucketed, own);
        } else {
            lg_verify__first(r, "coupon %s: %lld claim rows, claimed %lld", id,
                             rows, claimed);
        }
    }
    if (rows != users) {
        lg_verify__first(r, "coupon %s: %lld claim rows for %lld users", id,
                         rows, users);
    }
}

/* Per coupon: existence, stock, counters (its own and its buckets'), rows,
 * distinct users. */
static int lg_verify__coupons(PGconn *pg, bool sharded_schema,
                              lg_verify_report_t *r) {
    char sql[1600];
    snprintf(sql, sizeof sql,
             "SELECT l.id, c.id IS NULL, coalesce(c.total, 0),"
             "       coalesce(c.claimed, 0),"
             "       (SELECT count(*) FROM claims k WHERE k.coupon_id = l.id),"
             "       (SELECT count(DISTINCT k.user_id) FROM claims k"
             "         WHERE k.coupon_id = l.id),"
             "       %s, b.n, b.claimed"
             "  FROM lgv_coupons l LEFT JOIN coupons c ON c.id = l.id"
             "  CROSS JOIN LATERAL (%s) b"
             " ORDER BY l.id",
             sharded_schema ? "(SELECT count(*) FROM claims k"
                              "  WHERE k.coupon_id = l.id AND k.bucket IS NULL)"
                            : "(SELECT count(*) FROM claims k"
                              "  WHERE k.coupon_id = l.id)",
             sharded_schema
                 ? "SELECT count(*) AS n, coalesce(sum(claimed), 0)"
                   "       AS claimed"
                   "  FROM coupon_buckets cb WHERE cb.coupon_id = l.id"
                 : "SELECT 0 AS n, 0 AS claimed");
    PGresult *res = lg_verify__q(pg, sql, PGRES_TUPLES_OK, r);
    if (res == NULL) {
        return -1;
    }
    for (int i = 0; i < PQntuples(res); i++) {
        lg_verify__coupon_row(res, i, r);
    }
    PQclear(res);
    return 0;
}

/* Claim rows naming a bucket that does not exist. */
static int lg_verify__orphans(PGconn *pg, lg_verify_report_t *r) {
    PGresult *res;
    long long orphans = 0;
    res = lg_verify__count(pg,
                           "SELECT count(*), min(k.coupon_id), min(k.bucket)"
                           "  FROM claims k JOIN lgv_coupons l"
                           "    ON l.id = k.coupon_id"
                           " WHERE k.bucket IS NOT NULL AND NOT EXISTS"
                           "       (SELECT 1 FROM coupon_buckets b"
                           "         WHERE b.coupon_id = k.coupon_id"
                           "           AND b.bucket = k.bucket)",
                           &orphans, r);
    if (res == NULL) {
        return -1;
    }
    if (orphans > 0) {
        r->bucket_rows_mismatch += orphans;
        lg_verify__first(r,
                         "%lld claim rows name a bucket that does not exist "
                         "(e.g. coupon %s bucket %s)",
                         orphans, PQgetvalue(res, 0, 1), PQgetvalue(res, 0, 2));
    }
    PQclear(res);
    return 0;
}

/* Per bucket of a sharded coupon: its stock and its rows; and claim rows
 * naming a bucket that does not exist. */
static int lg_verify__buckets(PGconn *pg, lg_verify_report_t *r) {
    PGresult *res = lg_verify__q(
        pg,
        "SELECT b.coupon_id, b.bucket, b.total, b.claimed,"
        "       (SELECT count(*) FROM claims k"
        "         WHERE k.coupon_id = b.coupon_id AND k.bucket = b.bucket)"
        "  FROM coupon_buckets b JOIN lgv_coupons l ON l.id = b.coupon_id"
        " ORDER BY 1, 2",
        PGRES_TUPLES_OK, r);
    if (res == NULL) {
        return -1;
    }
    for (int i = 0; i < PQntuples(res); i++) {
        const char *id = PQgetvalue(res, i, 0);
        long long b = lg_verify__ll(res, i, 1);
        long long total = lg_verify__ll(res, i, 2);
        long long claimed = lg_verify__ll(res, i, 3);
        long long rows = lg_verify__ll(res, i, 4);
        long long used = rows > claimed ? rows : claimed;
        r->buckets++;
        if (used > total) {
            r->bucket_oversell += used - total;
            r->oversold_buckets++;
            lg_verify__first(r,
                             "coupon %s bucket %lld oversold: stock %lld, "
                             "claimed %lld, %lld claim rows",
                             id, b, total, claimed, rows);
        }
        if (rows != claimed) {
            r->bucket_rows_mismatch++;
            lg_verify__first(r,
                             "coupon %s bucket %lld: %lld claim rows, "
                             "claimed %lld",
                             id, b, rows, claimed);
        }
    }
    PQclear(res);
    return lg_verify__orphans(pg, r);
}

/* Within each counter, seq is exactly 1..rows. */
static int lg_verify__seq(PGconn *pg, const char *bucket,
                          lg_verify_report_t *r) {
    char sql[900];
    snprintf(sql, sizeof sql,
             "SELECT count(*), min(coupon_id), min(b), min(n), min(lo),"
             "       min(hi), min(d)"
             "  FROM (SELECT k.coupon_id, %s AS b, count(*) AS n,"
             "               count(DISTINCT k.seq) AS d, min(k.seq) AS lo,"
             "               max(k.seq) AS hi"
             "          FROM claims k JOIN lgv_coupons l ON l.id = k.coupon_id"
             "         GROUP BY 1, 2) s"
             " WHERE d <> n OR lo <> 1 OR hi <> n",
             bucket);
    PGresult *res = lg_verify__count(pg, sql, &r->seq_mismatch, r);
    if (res == NULL) {
        return -1;
    }
    if (r->seq_mismatch > 0) {
        lg_verify__first(r,
                         "coupon %s bucket %s: %s rows have %s distinct seq "
                         "values from %s to %s, not 1..rows",
                         PQgetvalue(res, 0, 1),
                         PQgetisnull(res, 0, 2) ? "-" : PQgetvalue(res, 0, 2),
                         PQgetvalue(res, 0, 3), PQgetvalue(res, 0, 6),
                         PQgetvalue(res, 0, 4), PQgetvalue(res, 0, 5));
    }
    PQclear(res);
    return 0;
}

/* Names the first fence out of order, for the reader of a failed test;
 * inner is lg_verify__fences's query of the fenced rows. */
static int lg_verify__first_fence(PGconn *pg, const char *inner,
                                  lg_verify_report_t *r) {
    char sql[1600];
    snprintf(sql, sizeof sql,
             "SELECT coupon_id, b, seq, fence, pseq, prev, x = px FROM (%s) f"
             " WHERE fence < prev OR (fence = prev AND x <> px)"
             " ORDER BY coupon_id, b, seq LIMIT 1",
             inner);
    PGresult *res = lg_verify__q(pg, sql, PGRES_TUPLES_OK, r);
    if (res == NULL) {
        return -1;
    }
    if (PQntuples(res) == 1) {
        lg_verify__first(
            r, "coupon %s bucket %s: seq %s has fence %s after seq %s's %s%s",
            PQgetvalue(res, 0, 0),
            PQgetisnull(res, 0, 1) ? "-" : PQgetvalue(res, 0, 1),
            PQgetvalue(res, 0, 2), PQgetvalue(res, 0, 3), PQgetvalue(res, 0, 4),
            PQgetvalue(res, 0, 5),
            PQgetvalue(res, 0, 6)[0] == 'f' ? " (another transaction)" : "");
    }
    PQclear(res);
    return 0;
}

/* Fences in commit order within each counter: equal only inside one
 * transaction, strictly rising between transactions. */
static int lg_verify__fences(PGconn *pg, const char *bucket,
                             lg_verify_report_t *r) {
    char inner[900], sql[1600];
    snprintf(inner, sizeof inner,
             "SELECT k.coupon_id, %s AS b, k.seq, k.fence,"
             "       k.xmin::text AS x,"
             "       lag(k.seq) OVER w AS pseq,"
             "       lag(k.fence) OVER w AS prev,"
             "       lag(k.xmin::text) OVER w AS px"
             "  FROM claims k JOIN lgv_coupons l ON l.id = k.coupon_id"
             " WHERE k.fence IS NOT NULL"
             " WINDOW w AS (PARTITION BY k.coupon_id, %s ORDER BY k.seq, k.id)",
             bucket, bucket);
    snprintf(sql, sizeof sql,
             "SELECT count(*),"
             "       count(*) FILTER (WHERE fence = prev AND x <> px),"
             "       count(*) FILTER (WHERE fence < prev),"
             "       count(*) FILTER (WHERE fence = prev AND x = px)"
             "  FROM (%s) f",
             inner);
    PGresult *res = lg_verify__q(pg, sql, PGRES_TUPLES_OK, r);
    if (res == NULL) {
        return -1;
    }
    r->fenced_rows = lg_verify__ll(res, 0, 0);
    r->fence_repeats = lg_verify__ll(res, 0, 1);
    r->fence_decreases = lg_verify__ll(res, 0, 2);
    r->fence_ties_in_tx = lg_verify__ll(res, 0, 3);
    PQclear(res);
    if (r->fenced_rows == 0) {
        r->fences_increasing = -1;
    } else {
        r->fences_increasing = r->fence_repeats == 0 && r->fence_decreases == 0;
    }
    if (r->fences_increasing != 0) {
        return 0;
    }

    return lg_verify__first_fence(pg, inner, r);
}

/* Every answered (coupon, user) pair has its row. */
static int lg_verify__answered(PGconn *pg, lg_verify_report_t *r) {
    PGresult *res = lg_verify__count(
        pg,
        "SELECT count(*), min(o.coupon_id || ' / ' || o.user_id)"
        "  FROM (SELECT DISTINCT coupon_id, user_id FROM lgv_ok) o"
        " WHERE NOT EXISTS (SELECT 1 FROM claims k"
        "                    WHERE k.coupon_id = o.coupon_id"
        "                      AND k.user_id = o.user_id)",
        &r->missing_rows, r);
    if (res == NULL) {
        return -1;
    }
    if (r->missing_rows > 0) {
        lg_verify__first(r,
                         "%lld claims answered 2xx have no row (e.g. coupon "
                         "/ user %s)",
                         r->missing_rows, PQgetvalue(res, 0, 1));
    }
    PQclear(res);
    return 0;
}

/* ------------------------------------------------------------ the entry --- */

/* Opens the snapshot and loads the lists into its temporary tables. */
static int lg_verify__load(PGconn *pg, const lg_verify_list_t *coupons,
                           const lg_verify_list_t *answered,
                           lg_verify_report_t *out) {
    if (lg_verify__ok(pg, "BEGIN ISOLATION LEVEL REPEATABLE READ", out) != 0 ||
        lg_verify__ok(pg,
                      "CREATE TEMP TABLE lgv_coupons (id text)"
                      " ON COMMIT DROP",
                      out) != 0 ||
        lg_verify__ok(pg,
                      "CREATE TEMP TABLE lgv_ok (coupon_id text, user_id text)"
                      " ON COMMIT DROP",
                      out) != 0 ||
        lg_verify__copy(pg, "COPY lgv_coupons (id) FROM STDIN", coupons, false,
                        out) != 0 ||
        lg_verify__copy(pg, "COPY lgv_ok (coupon_id, user_id) FROM STDIN",
                        answered, true, out) != 0) {
        return -1;
    }
    return 0;
}

/* The schema as it is: buckets only where the migration made them. Returns
 * 1 (sharded), 0 (not), or -1. */
static int lg_verify__sharded(PGconn *pg, lg_verify_report_t *out) {
    PGresult *res = lg_verify__q(
        pg,
        "SELECT to_regclass('coupon_buckets') IS NOT NULL AND EXISTS"
        "       (SELECT 1 FROM pg_attribute"
        "         WHERE attrelid = to_regclass('claims')"
        "           AND attname = 'bucket' AND NOT attisdropped)",
        PGRES_TUPLES_OK, out);
    if (res == NULL) {
        return -1;
    }
    int sharded = PQgetvalue(res, 0, 0)[0] == 't';
    PQclear(res);
    return sharded;
}

/* The report's invariant: ok exactly when nothing failed to run and every
 * violation count is zero. */
static bool lg_verify__passed(const lg_verify_report_t *r) {
    return r->err[0] == '\0' && r->coupons_missing == 0 && r->oversell == 0 &&
           r->duplicate_users == 0 && r->rows_mismatch == 0 &&
           r->missing_rows == 0 && r->bucket_oversell == 0 &&
           r->bucket_rows_mismatch == 0 && r->seq_mismatch == 0 &&
           r->fences_increasing != 0;
}

int lg_verify_run(PGconn *pg, const lg_verify_list_t *coupons,
                  const lg_verify_list_t *answered, lg_verify_report_t *out) {
    memset(out, 0, sizeof *out);
    out->claimed_2xx = answered != NULL ? (long long)answered->n : 0;
    if (PQstatus(pg) != CONNECTION_OK) {
        lg_verify__pgerr(out, "not connected: ", pg);
        return -1;
    }
    int rc = -1, sharded;
    if (lg_verify__load(pg, coupons, answered, out) != 0 ||
        (sharded = lg_verify__sharded(pg, out)) < 0) {
        goto done;
    }
    const char *bucket = sharded ? "k.bucket" : "NULL::integer";
    if (lg_verify__coupons(pg, sharded, out) != 0 ||
        (sharded && lg_verify__buckets(pg, out) != 0) ||
        lg_verify__seq(pg, bucket, out) != 0 ||
        lg_verify__fences(pg, bucket, out) != 0 ||
        lg_verify__answered(pg, out) != 0) {
        goto done;
    }
    out->ok = lg_verify__passed(out);
    rc = 0;
done:;
    /* Nothing to keep; a failed ROLLBACK must not hide the first error. */
    lg_verify_report_t scratch;
    memset(&scratch, 0, sizeof scratch);
    lg_verify__ok(pg, "ROLLBACK", &scratch);
    if (rc != 0) {
        out->ok = false;
    }
    /* Every way of not running sets err, so this holds on both paths. */
    assert(out->ok == lg_verify__passed(out));
    return rc;
}

int lg_verify_dsn(const char *dsn, const lg_verify_list_t *coupons,
                  const lg_verify_list_t *answered, lg_verify_report_t *out) {
    PGconn *pg = PQconnectdb(dsn);
    int rc = -1;
    if (PQstatus(pg) == CONNECTION_OK) {
        rc = lg_verify_run(pg, coupons, answered, out);
    } else {
        memset(out, 0, sizeof *out);
        lg_verify__pgerr(out, "connect: ", pg);
    }
    PQfinish(pg);
    return rc;
}
