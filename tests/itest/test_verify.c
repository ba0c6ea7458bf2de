/*
 * test_verify.c: the invariant checker (loadtest/lg_verify.c) can fail.
 *
 * Every claim test ends with the checker, and a checker that always says
 * "ok" would let every one of them pass. Here each violation is planted
 * directly in the test's database, on a coupon of its own, and the checker
 * must name it; beside them, clean coupons (a batch whose rows share one
 * fence inside one transaction, a sharded coupon whose buckets reuse each
 * other's fences) must pass. No service runs: the rows are written by SQL,
 * each statement its own transaction unless a BEGIN groups them.
 */
#include "harness.h"
#include "tt.h"

#include <libpq-fe.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

/* Runs sql (several statements allowed) on the test database; fails the test
 * if it fails. */
static void v_sql(const char *sql) {
    PGconn *c = PQconnectdb(h_dsn());
    TT_ASSERT_MSG(PQstatus(c) == CONNECTION_OK, "connect: %s",
                  PQerrorMessage(c));
    PGresult *r = PQexec(c, sql);
    TT_ASSERT_MSG(PQresultStatus(r) == PGRES_COMMAND_OK, "%s: %s", sql,
                  PQerrorMessage(c));
    PQclear(r);
    PQfinish(c);
}

/* An unsharded coupon with stock total and counter claimed, no claims. */
static void v_coupon(const char *id, int total, int claimed) {
    char sql[256];
    snprintf(sql, sizeof sql,
             "INSERT INTO coupons (id, total, claimed) VALUES ('%s', %d, %d)",
             id, total, claimed);
    v_sql(sql);
}

/* One claim row, in a transaction of its own (unless inside a BEGIN the
 * caller sent in the same string). bucket < 0: NULL. */
static void v_claim(const char *coupon, const char *user, long fence, int seq,
                    int bucket) {
    char sql[384], b[16] = "NULL";
    if (bucket >= 0) {
        snprintf(b, sizeof b, "%d", bucket);
    }
    snprintf(sql, sizeof sql,
             "INSERT INTO claims (coupon_id, user_id, fence, seq, instance,"
             " bucket) VALUES ('%s', '%s', %ld, %d, 'test_verify', %s)",
             coupon, user, fence, seq, b);
    v_sql(sql);
}

static lg_verify_report_t v_check(const char *coupon) {
    lg_verify_report_t r;
    TT_ASSERT_MSG(h_invariants(coupon, &r) == 0, "checker on %s: %s", coupon,
                  r.err);
    printf("  %-8s ok=%d first: %s\n", coupon, r.ok,
           r.first[0] ? r.first : "-");
    return r;
}

/* One counter of the report and the value the checker must give it. */
typedef struct v_want {
    const char *name; /* the member's name, for the failure message */
    size_t off, size; /* where it is in lg_verify_report_t */
    long long value;
} v_want_t;

#define V_WANT(member, v)                                                      \
    {                                                                          \
        #member, offsetof(lg_verify_report_t, member),                         \
            sizeof(((lg_verify_report_t *)0)->member), v                       \
    }

/* A violation planted on an unsharded coupon of its own: the coupon's stock
 * and counter, two claim rows written in two transactions, and what the
 * checker must count. It must also say the coupon is not ok. */
typedef struct v_planted {
    const char *coupon; /* also what the violation is */
    int total, claimed;
    struct {
        const char *user;
        long fence;
        int seq;
    } rows[2];
    v_want_t want[3];  /* unused slots have name NULL */
    const char *first; /* a phrase of the first violation's words, or NULL */
} v_planted_t;

static const v_planted_t v_planted[] = {
    /* Two transactions with an equal fence: two leases that drew the same
     * fence (Redis lost its counter) both wrote. */
    {"tie",
     5,
     2,
     {{"u1", 7, 1}, {"u2", 7, 2}},
     {V_WANT(fence_repeats, 1), V_WANT(fence_ties_in_tx, 0),
      V_WANT(fences_increasing, 0)},
     "another transaction"},
    /* A fence falling in commit order: a stale holder wrote after a newer
     * one. */
    {"fall",
     5,
     2,
     {{"u1", 9, 1}, {"u2", 8, 2}},
     {V_WANT(fence_decreases, 1), V_WANT(fences_increasing, 0)},
     NULL},
    /* A row its counter does not count. */
    {"rows",
     5,
     1,
     {{"u1", 1, 1}, {"u2", 2, 2}},
     {V_WANT(rows_mismatch, 1), V_WANT(oversell, 0)},
     NULL},
    /* More rows than stock. */
    {"over",
     1,
     1,
     {{"u1", 1, 1}, {"u2", 2, 2}},
     {V_WANT(oversell, 1), V_WANT(oversold_coupons, 1)},
     NULL},
    /* A gap in seq: a counter that moved without its row (or a row with a
     * seq no UPDATE produced). */
    {"gap",
     5,
     2,
     {{"u1", 1, 1}, {"u2", 2, 3}},
     {V_WANT(seq_mismatch, 1)},
     NULL},
};

/* Plants p and checks that the checker finds it. */
static void v_planted_check(const v_planted_t *p) {
    v_coupon(p->coupon, p->total, p->claimed);
    for (int i = 0; i < 2; i++) {
        v_claim(p->coupon, p->rows[i].user, p->rows[i].fence, p->rows[i].seq,
                -1);
    }
    lg_verify_report_t r = v_check(p->coupon);
    TT_ASSERT_MSG(!r.ok, "%s: the checker found nothing", p->coupon);
    for (int i = 0; i < 3 && p->want[i].name != NULL; i++) {
        const v_want_t *w = &p->want[i];
        const char *at = (const char *)&r + w->off;
        long long got =
            w->size == sizeof(int) ? *(const int *)at : *(const long long *)at;
        TT_ASSERT_MSG(got == w->value, "%s: %s is %lld, not %lld", p->coupon,
                      w->name, got, w->value);
    }
    TT_ASSERT_MSG(p->first == NULL || strstr(r.first, p->first) != NULL,
                  "%s: first: %s", p->coupon, r.first);
}

TT_TEST(verify_checker_catches_planted_violations, 60) {
    h_begin();

    /* Clean: three claims, the last two one batch (one transaction, one
     * lease, one fence). Allowed, and counted as a tie within a
     * transaction. */
    v_coupon("clean", 5, 3);
    v_claim("clean", "u1", 10, 1, -1);
    v_sql("BEGIN;"
          "INSERT INTO claims (coupon_id, user_id, fence, seq, instance)"
          " VALUES ('clean', 'u2', 11, 2, 't'), ('clean', 'u3', 11, 3, 't');"
          "COMMIT");
    lg_verify_report_t r = v_check("clean");
    TT_ASSERT_MSG(r.ok, "clean coupon: %s", r.first);
    TT_EQ_INT(r.fence_ties_in_tx, 1);
    TT_EQ_INT(r.fence_repeats, 0);
    TT_EQ_INT(r.fenced_rows, 3);

    /* The planted violations of an unsharded coupon, one row each. */
    for (size_t i = 0; i < sizeof(v_planted) / sizeof(v_planted[0]); i++) {
        v_planted_check(&v_planted[i]);
    }

    /* A sharded coupon: two buckets, each its own counter and fence order.
     * Clean first: the buckets reuse each other's fences (each bucket's lock
     * has its own counter), which is allowed. */
    v_sql("INSERT INTO coupons (id, total, buckets) VALUES ('shard', 4, 2);"
          "INSERT INTO coupon_buckets (coupon_id, bucket, total, claimed)"
          " VALUES ('shard', 0, 2, 2), ('shard', 1, 2, 1)");
    v_claim("shard", "u1", 1, 1, 0);
    v_claim("shard", "u2", 1, 1, 1);
    v_claim("shard", "u3", 2, 2, 0);
    r = v_check("shard");
    TT_ASSERT_MSG(r.ok, "clean sharded coupon: %s", r.first);
    TT_EQ_INT(r.buckets, 2);
    TT_EQ_INT(r.claimed, 3);

    /* Then bucket 1 gets a row its counter does not count, with a fence
     * equal to its previous one from another transaction. */
    v_claim("shard", "u4", 1, 2, 1);
    r = v_check("shard");
    TT_ASSERT(!r.ok);
    TT_EQ_INT(r.bucket_rows_mismatch, 1);
    TT_EQ_INT(r.fence_repeats, 1);
    TT_EQ_INT(r.rows_mismatch, 1); /* 4 rows, 3 counted */

    /* Per-bucket oversell: bucket 0 of "shard2" holds 1, gets 2 rows; the
     * coupon as a whole (stock 3) is not oversold. */
    v_sql("INSERT INTO coupons (id, total, buckets) VALUES ('shard2', 3, 2);"
          "INSERT INTO coupon_buckets (coupon_id, bucket, total, claimed)"
          " VALUES ('shard2', 0, 1, 1), ('shard2', 1, 2, 0)");
    v_claim("shard2", "u1", 1, 1, 0);
    v_claim("shard2", "u2", 2, 2, 0);
    r = v_check("shard2");
    TT_ASSERT(!r.ok);
    TT_EQ_INT(r.bucket_oversell, 1);
    TT_EQ_INT(r.oversold_buckets, 1);
    TT_EQ_INT(r.oversell, 0);

    /* One claim per user, over all buckets: UNIQUE (coupon_id, user_id)
     * refuses the duplicate, so it is dropped for this database first. */
    v_sql("ALTER TABLE claims DROP CONSTRAINT claims_one_per_user");
    v_coupon("dup", 5, 2);
    v_claim("dup", "u1", 1, 1, -1);
    v_claim("dup", "u1", 2, 2, -1);
    r = v_check("dup");
    TT_ASSERT(!r.ok);
    TT_EQ_INT(r.duplicate_users, 1);
    TT_EQ_INT(r.rows_mismatch, 0);

    /* And a coupon that does not exist. */
    r = v_check("nosuch");
    TT_ASSERT(!r.ok);
    TT_EQ_INT(r.coupons_missing, 1);
}

/* The harness's ports: every server a test starts gets a port of its own.
 * The kernel's "free port" (bind to port 0) repeats itself within a few
 * hundred calls on this machine, and a test of five Redis nodes once got
 * one port twice, so h_free_port remembers what it gave. 500 calls, as
 * many as the busiest tests' servers several times over, must all differ. */
TT_TEST(harness_free_ports_never_repeat, 10) {
    static int ports[500];
    for (int i = 0; i < 500; i++) {
        ports[i] = h_free_port();
        TT_ASSERT(ports[i] > 0);
        for (int j = 0; j < i; j++) {
            TT_ASSERT_MSG(ports[j] != ports[i],
                          "port %d given at calls %d and %d", ports[i], j, i);
        }
    }
}
