/*
 * test_store.c: the store's batch claim, called directly (service/store.o
 * linked in) against the harness's PostgreSQL, and the coupon features it
 * carries through the HTTP API of a real service: the claim window, the
 * buckets, and a rolling upgrade with a replica built before the schema
 * change.
 *
 * The batch tests call store_claim as the claim path does with a lease:
 * a fence per call, rising. Each ends with the shared invariant check.
 */
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "store.h"
#include "tt.h"

/* ------------------------------------------------------------- helpers --- */

static store_t *st_new(void) {
    store_opts_t o = {.dsn = h_dsn(),
                      .instance = "store-test",
                      .connect_timeout_s = 3,
                      .statement_timeout_ms = 5000,
                      .idle_tx_timeout_ms = 10000,
                      .tx_deadline_ms = 8000};
    store_t *st = store_new(&o);
    TT_ASSERT(st != NULL);
    return st;
}

/* The setting of a store test: a service (named as the coupon) that
 * creates coupon with stock, and a store of the test's own (new:
 * store_free). */
static store_t *st_begin(const char *coupon, long stock) {
    h_begin();
    h_svc_t *s = h_svc_start(coupon, NULL);
    h_coupon(s, coupon, stock);
    return st_new();
}

/* A batch of n users "<prefix>-<from>" .. "<prefix>-<from+n-1>". */
typedef struct batch {
    char names[64][32];
    store_item_t it[64];
    size_t n;
} batch_t;

static void batch_fill(batch_t *b, const char *prefix, int from, size_t n) {
    TT_ASSERT(n <= 64);
    memset(b, 0, sizeof(*b));
    b->n = n;
    for (size_t i = 0; i < n; i++) {
        snprintf(b->names[i], sizeof(b->names[i]), "%s-%d", prefix,
                 from + (int)i);
        b->it[i].user_id = b->names[i];
    }
}

static int batch_claim(store_t *st, const char *coupon, int bucket,
                       int64_t fence, batch_t *b, int64_t *last_fence) {
    int64_t lf = 0;
    int rc = store_claim(st, coupon, bucket, fence, b->it, b->n, NULL, NULL,
                         last_fence != NULL ? last_fence : &lf);
    if (rc == STORE_ERR) {
        printf("    store_claim: %s\n", store_errstr(st));
    }
    return rc;
}

static long long pg_int1(const char *fmt, const char *arg) {
    char sql[512];
    snprintf(sql, sizeof(sql), fmt, arg);
    return h_pg_int(sql);
}

/* ------------------------------------------------------------- batches --- */

/* Batches of 1, 2 and 32 claims: every item claimed, seq runs on without a
 * gap in batch order, every batch is one transaction (one xmin for all its
 * rows: no savepoints, whose subtransactions would each have their own),
 * and the counter moved by exactly the rows written. */
TT_TEST(store_batch_sizes_1_2_32, 60) {
    store_t *st = st_begin("sb", 100);
    static const size_t sizes[] = {1, 2, 32};
    int from = 0;
    int64_t fence = 10;
    for (size_t k = 0; k < 3; k++) {
        batch_t b;
        batch_fill(&b, "u", from, sizes[k]);
        TT_EQ_INT(batch_claim(st, "sb", -1, fence, &b, NULL), STORE_OK);
        for (size_t i = 0; i < b.n; i++) {
            TT_EQ_INT(b.it[i].status, STORE_OK);
            TT_EQ_INT(b.it[i].seq, from + (int)i + 1);
            TT_EQ_INT(b.it[i].fence, fence);
            TT_EQ_INT(b.it[i].remaining, 100 - (from + (int)i + 1));
            TT_CMP_INT(b.it[i].claim_id, >, 0);
        }
        char sql[200];
        snprintf(sql, sizeof(sql),
                 "SELECT count(DISTINCT xmin::text) FROM claims"
                 " WHERE coupon_id = 'sb' AND fence = %lld",
                 (long long)fence);
        TT_EQ_INT(h_pg_int(sql), 1);
        from += (int)sizes[k];
        fence++;
    }
    TT_EQ_INT(pg_int1("SELECT claimed FROM coupons WHERE id = '%s'", "sb"), 35);
    int buckets = -1;
    uint64_t mask = 0;
    store_claim_shape(st, &buckets, &mask);
    TT_EQ_INT(buckets, 1);
    TT_EQ_INT((long long)mask, 1);
    store_free(st);
    h_check_invariants("sb", 100, 35);
}

/* The same user twice in one batch, and users who hold a claim already:
 * the second mention gets the first's claim, holders get theirs back, and
 * only the new users move the counter. */
TT_TEST(store_batch_duplicates, 60) {
    store_t *st = st_begin("sd", 10);
    batch_t b;
    batch_fill(&b, "old", 0, 1);
    TT_EQ_INT(batch_claim(st, "sd", -1, 5, &b, NULL), STORE_OK);
    int64_t old_id = b.it[0].claim_id;

    /* a, b, a, old-0, old-0, c */
    static const char *const users[] = {"a", "b", "a", "old-0", "old-0", "c"};
    memset(&b, 0, sizeof(b));
    b.n = 6;
    for (size_t i = 0; i < b.n; i++) {
        b.it[i].user_id = users[i];
    }
    TT_EQ_INT(batch_claim(st, "sd", -1, 6, &b, NULL), STORE_OK);
    TT_EQ_INT(b.it[0].status, STORE_OK);
    TT_EQ_INT(b.it[1].status, STORE_OK);
    TT_EQ_INT(b.it[2].status, STORE_ALREADY);
    TT_EQ_INT(b.it[2].claim_id, b.it[0].claim_id);
    TT_EQ_INT(b.it[2].fence, 6);
    TT_EQ_INT(b.it[3].status, STORE_ALREADY);
    TT_EQ_INT(b.it[3].claim_id, old_id);
    TT_EQ_INT(b.it[3].fence, 5);
    TT_EQ_INT(b.it[4].status, STORE_ALREADY);
    TT_EQ_INT(b.it[4].claim_id, old_id);
    TT_EQ_INT(b.it[5].status, STORE_OK);
    TT_EQ_INT(b.it[0].seq, 2);
    TT_EQ_INT(b.it[1].seq, 3);
    TT_EQ_INT(b.it[5].seq, 4);
    TT_EQ_INT(b.it[3].remaining, 6);
    TT_EQ_INT(pg_int1("SELECT claimed FROM coupons WHERE id = '%s'", "sd"), 4);

    /* A batch of holders only writes nothing, and is not fenced by a stale
     * fence: there is nothing to fence. */
    static const char *const again[] = {"a", "c"};
    memset(&b, 0, sizeof(b));
    b.n = 2;
    b.it[0].user_id = again[0];
    b.it[1].user_id = again[1];
    TT_EQ_INT(batch_claim(st, "sd", -1, 1, &b, NULL), STORE_OK);
    TT_EQ_INT(b.it[0].status, STORE_ALREADY);
    TT_EQ_INT(b.it[1].status, STORE_ALREADY);
    store_free(st);
    h_check_invariants("sd", 10, 4);
}

/* A batch that crosses the stock: the first ones in batch order get the
 * last coupons, the rest are sold out, and the next batch is all sold
 * out. */
TT_TEST(store_batch_crosses_stock, 60) {
    store_t *st = st_begin("sx", 5);
    batch_t b;
    batch_fill(&b, "x", 0, 3);
    TT_EQ_INT(batch_claim(st, "sx", -1, 1, &b, NULL), STORE_OK);
    batch_fill(&b, "x", 3, 4);
    TT_EQ_INT(batch_claim(st, "sx", -1, 2, &b, NULL), STORE_OK);
    TT_EQ_INT(b.it[0].status, STORE_OK);
    TT_EQ_INT(b.it[1].status, STORE_OK);
    TT_EQ_INT(b.it[1].remaining, 0);
    TT_EQ_INT(b.it[2].status, STORE_SOLD_OUT);
    TT_EQ_INT(b.it[3].status, STORE_SOLD_OUT);
    int buckets = 0;
    uint64_t mask = 1;
    store_claim_shape(st, &buckets, &mask);
    TT_EQ_INT((long long)mask, 0);
    batch_fill(&b, "x", 7, 32);
    TT_EQ_INT(batch_claim(st, "sx", -1, 3, &b, NULL), STORE_OK);
    for (size_t i = 0; i < b.n; i++) {
        TT_EQ_INT(b.it[i].status, STORE_SOLD_OUT);
    }
    store_free(st);
    h_check_invariants("sx", 5, 5);
}

/* The fence rule for a batch: the lease's write needs a fence above
 * last_fence; an equal one (a fence drawn twice, after Redis lost its
 * counter) and a lower one (a stale lease) are refused, the whole call,
 * nothing written. */
TT_TEST(store_batch_fenced, 60) {
    store_t *st = st_begin("sf", 100);
    batch_t b;
    batch_fill(&b, "f", 0, 2);
    TT_EQ_INT(batch_claim(st, "sf", -1, 10, &b, NULL), STORE_OK);
    static const int64_t stale[] = {10, 9};
    for (int k = 0; k < 2; k++) {
        int64_t lf = 0;
        batch_fill(&b, "g", 10 * k, 8);
        TT_EQ_INT(batch_claim(st, "sf", -1, stale[k], &b, &lf), STORE_FENCED);
        TT_EQ_INT(lf, 10);
        TT_EQ_INT(b.it[0].status, STORE_FENCED);
    }
    TT_EQ_INT(
        pg_int1("SELECT count(*) FROM claims WHERE coupon_id = '%s'", "sf"), 2);
    batch_fill(&b, "g", 0, 8);
    TT_EQ_INT(batch_claim(st, "sf", -1, 11, &b, NULL), STORE_OK);
    TT_EQ_INT(b.it[7].status, STORE_OK);
    store_free(st);
    h_check_invariants("sf", 100, 10);
}

/* Round trips per claim, on a connection already made: two (BEGIN, the
 * row lock and the claim statement as one pipeline; COMMIT), whatever the
 * batch's size. A claim that writes nothing (sold out) also costs two (the
 * pipeline, ROLLBACK). */
TT_TEST(store_round_trips_per_claim, 30) {
    store_t *st = st_begin("rt", 40);
    batch_t b;
    batch_fill(&b, "warm", 0, 1);
    TT_EQ_INT(batch_claim(st, "rt", -1, 1, &b, NULL), STORE_OK);
    static const size_t sizes[] = {1, 32, 8};
    for (int k = 0; k < 3; k++) {
        batch_fill(&b, "r", 100 * k, sizes[k]);
        uint64_t before = store_round_trips(st);
        TT_EQ_INT(batch_claim(st, "rt", -1, 2 + k, &b, NULL), STORE_OK);
        printf("    batch of %zu: %llu round trips\n", sizes[k],
               (unsigned long long)(store_round_trips(st) - before));
        TT_EQ_INT(store_round_trips(st) - before, 2);
    }
    TT_EQ_INT(b.it[7].status, STORE_SOLD_OUT);
    store_free(st);
    h_check_invariants("rt", 40, 40);
}

/* ------------------------------------------------------------- buckets --- */

/* Read one field of GET /coupons/{id}. */
static json_t *get_coupon(const h_svc_t *s, const char *id) {
    char url[160];
    snprintf(url, sizeof(url), "%s/coupons/%s", s->url, id);
    char *body = NULL;
    TT_EQ_INT(h_http("GET", url, NULL, NULL, NULL, 0, &body), 200);
    json_t *j = json_loads(body, 0, NULL);
    TT_ASSERT_MSG(j != NULL, "not JSON: %s", body);
    free(body);
    return j;
}

static long post_coupon(const h_svc_t *s, const char *json, char **body) {
    char url[160];
    snprintf(url, sizeof(url), "%s/coupons", s->url);
    return h_http("POST", url, "application/json", "Bearer test-admin-token",
                  json, strlen(json), body);
}

/* A sharded coupon: the stock split evenly, each bucket its own counter,
 * seq and fences; a bucket runs empty while others have stock
 * (STORE_BUCKET_EMPTY) and the coupon is sold out only when every bucket
 * is; one claim per user across buckets; the wrong bucket is refused. */
TT_TEST(store_buckets, 60) {
    h_begin();
    h_svc_t *s = h_svc_start("sk", NULL);
    char *body = NULL;
    TT_EQ_INT(
        post_coupon(s, "{\"id\":\"sk\",\"total\":7,\"buckets\":3}", &body),
        201);
    free(body);
    json_t *j = get_coupon(s, "sk");
    json_t *bs = json_object_get(j, "buckets");
    TT_EQ_INT(json_array_size(bs), 3);
    TT_EQ_INT(
        json_integer_value(json_object_get(json_array_get(bs, 0), "total")), 3);
    TT_EQ_INT(
        json_integer_value(json_object_get(json_array_get(bs, 2), "total")), 2);
    json_decref(j);

    store_t *st = st_new();
    batch_t b;
    /* Bucket 1 (stock 2) with 3 users: the third finds it empty. */
    batch_fill(&b, "k", 0, 3);
    TT_EQ_INT(batch_claim(st, "sk", 1, 4, &b, NULL), STORE_OK);
    TT_EQ_INT(b.it[0].status, STORE_OK);
    TT_EQ_INT(b.it[0].seq, 1);
    TT_EQ_INT(b.it[1].seq, 2);
    TT_EQ_INT(b.it[1].remaining, 5);
    TT_EQ_INT(b.it[2].status, STORE_BUCKET_EMPTY);
    int buckets = 0;
    uint64_t mask = 0;
    store_claim_shape(st, &buckets, &mask);
    TT_EQ_INT(buckets, 3);
    TT_EQ_INT((long long)mask, 5); /* buckets 0 and 2 */
    /* Bucket 0 has its own fence: a lower fence than bucket 1's is fine. */
    batch_fill(&b, "k", 2, 3);
    TT_EQ_INT(batch_claim(st, "sk", 0, 2, &b, NULL), STORE_OK);
    TT_EQ_INT(b.it[0].status, STORE_OK);
    TT_EQ_INT(b.it[0].seq, 1);
    TT_EQ_INT(b.it[2].status, STORE_OK);
    /* One claim per user is global: k-0 holds one on bucket 1. */
    batch_fill(&b, "k", 0, 1);
    TT_EQ_INT(batch_claim(st, "sk", 2, 3, &b, NULL), STORE_OK);
    TT_EQ_INT(b.it[0].status, STORE_ALREADY);
    /* The last bucket: the last coupon, and then sold out. */
    batch_fill(&b, "k", 5, 3);
    TT_EQ_INT(batch_claim(st, "sk", 2, 4, &b, NULL), STORE_OK);
    TT_EQ_INT(b.it[1].status, STORE_OK);
    TT_EQ_INT(b.it[1].remaining, 0);
    TT_EQ_INT(b.it[2].status, STORE_SOLD_OUT);
    store_claim_shape(st, &buckets, &mask);
    TT_EQ_INT((long long)mask, 0);
    /* The wrong bucket: none on a sharded coupon, one it lacks, or one on
     * an unsharded coupon. Nothing written. */
    h_coupon(s, "plain", 5);
    batch_fill(&b, "w", 0, 1);
    TT_EQ_INT(batch_claim(st, "sk", -1, 9, &b, NULL), STORE_WRONG_BUCKET);
    TT_EQ_INT(batch_claim(st, "sk", 3, 9, &b, NULL), STORE_WRONG_BUCKET);
    TT_EQ_INT(batch_claim(st, "plain", 0, 9, &b, NULL), STORE_WRONG_BUCKET);
    TT_EQ_INT(
        pg_int1("SELECT count(*) FROM claims WHERE user_id = '%s'", "w-0"), 0);
    /* coupons.claimed is not the counter of a sharded coupon; GET sums. */
    TT_EQ_INT(pg_int1("SELECT claimed FROM coupons WHERE id = '%s'", "sk"), 0);
    j = get_coupon(s, "sk");
    TT_EQ_INT(json_integer_value(json_object_get(j, "claimed")), 7);
    TT_EQ_INT(json_integer_value(json_object_get(j, "remaining")), 0);
    json_decref(j);
    TT_EQ_INT(pg_int1("SELECT count(*) FROM claims WHERE coupon_id = '%s'"
                      " AND bucket IS NULL",
                      "sk"),
              0);
    store_free(st);
    h_check_invariants("sk", 7, 7);
}

/* Two buckets claimed at once for the same user (their locks differ, so
 * nothing serialises them but UNIQUE): one claim is made, the other call
 * gets it back as already claimed, and the counters agree with the rows.
 * The first holds its transaction open in the gate while the second
 * inserts, so the second runs into the first's row. */
typedef struct race {
    const char *coupon;
    int bucket;
    int64_t fence;
    int hold_ms;
    batch_t b;
    int rc;
} race_t;

static int race__gate(void *arg) {
    race_t *r = arg;
    h_sleep_ms(r->hold_ms);
    return 0;
}

static void *race__run(void *arg) {
    race_t *r = arg;
    store_t *st = st_new();
    int64_t lf = 0;
    r->rc = store_claim(st, r->coupon, r->bucket, r->fence, r->b.it, r->b.n,
                        race__gate, r, &lf);
    store_free(st);
    return NULL;
}

TT_TEST(store_buckets_same_user_races, 60) {
    h_begin();
    h_svc_t *s = h_svc_start("sr", NULL);
    char *body = NULL;
    TT_EQ_INT(
        post_coupon(s, "{\"id\":\"sr\",\"total\":10,\"buckets\":2}", &body),
        201);
    free(body);
    race_t r0 = {.coupon = "sr", .bucket = 0, .fence = 1, .hold_ms = 800};
    race_t r1 = {.coupon = "sr", .bucket = 1, .fence = 1, .hold_ms = 0};
    batch_fill(&r0.b, "same", 0, 2); /* same-0, same-1 */
    batch_fill(&r1.b, "same", 1, 2); /* same-1, same-2 */
    pthread_t t0, t1;
    TT_ASSERT(pthread_create(&t0, NULL, race__run, &r0) == 0);
    h_sleep_ms(300); /* r0 has written and waits in its gate */
    TT_ASSERT(pthread_create(&t1, NULL, race__run, &r1) == 0);
    pthread_join(t0, NULL);
    pthread_join(t1, NULL);
    TT_EQ_INT(r0.rc, STORE_OK);
    TT_EQ_INT(r1.rc, STORE_OK);
    TT_EQ_INT(r0.b.it[1].status, STORE_OK);
    TT_EQ_INT(r1.b.it[0].status, STORE_ALREADY);
    TT_EQ_INT(r1.b.it[0].claim_id, r0.b.it[1].claim_id);
    TT_EQ_INT(r1.b.it[1].status, STORE_OK);
    TT_EQ_INT(r1.b.it[1].seq, 1); /* bucket 1's first: nothing else counted */
    h_check_invariants("sr", 10, 3);
}

/* -------------------------------------------------------------- window --- */

static long long pg_now_ms(void) {
    return h_pg_int("SELECT (extract(epoch FROM now()) * 1000)::bigint");
}

/* RFC 3339 in UTC, as the API answers it (6 fraction digits, or none). */
static void fmt_ms(long long ms, char *out, size_t n) {
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    int k =
        snprintf(out, n, "%04d-%02d-%02dT%02d:%02d:%02d", tm.tm_year + 1900,
                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
    if (ms % 1000 != 0) {
        snprintf(out + k, n - (size_t)k, ".%03lld000Z", ms % 1000);
    } else {
        snprintf(out + k, n - (size_t)k, "Z");
    }
}

/* Waits until PostgreSQL's clock reaches ms (bounded: 20 s). */
static void pg_wait_until(long long ms) {
    for (int i = 0; i < 200 && pg_now_ms() < ms; i++) {
        h_sleep_ms(100);
    }
    TT_CMP_INT(pg_now_ms(), >=, ms);
}

static long claim_status(const h_svc_t *s, const char *coupon, const char *user,
                         char *error, size_t n) {
    json_t *j = NULL;
    long st = h_claim(s, coupon, user, &j);
    json_t *e = json_object_get(j, "error");
    snprintf(error, n, "%s", json_is_string(e) ? json_string_value(e) : "");
    json_decref(j);
    return st;
}

/* A limited-time coupon through the API: before its window 409
 * not_started, inside 201, after it 410 expired, and nothing written
 * outside it. The window is set from PostgreSQL's clock, which judges it. */
TT_TEST(api_coupon_window, 60) {
    h_begin();
    h_svc_t *s = h_svc_start("win", NULL);
    long long now = pg_now_ms();
    char a[40], z[40], json[256], *body = NULL;
    fmt_ms(now + 2500, a, sizeof(a));
    fmt_ms(now + 6500, z, sizeof(z));
    snprintf(json, sizeof(json),
             "{\"id\":\"win\",\"total\":10,\"starts_at\":\"%s\","
             "\"ends_at\":\"%s\"}",
             a, z);
    TT_EQ_INT(post_coupon(s, json, &body), 201);
    json_t *j = json_loads(body, 0, NULL);
    free(body);
    TT_EQ_STR(json_string_value(json_object_get(j, "starts_at")), a);
    json_decref(j);
    j = get_coupon(s, "win");
    TT_EQ_STR(json_string_value(json_object_get(j, "starts_at")), a);
    TT_EQ_STR(json_string_value(json_object_get(j, "ends_at")), z);
    json_decref(j);

    char err[64];
    TT_EQ_INT(claim_status(s, "win", "early", err, sizeof(err)), 409);
    TT_EQ_STR(err, "not_started");
    TT_CMP_INT(pg_now_ms(), <, now + 2500); /* it was judged before */
    TT_EQ_INT(
        pg_int1("SELECT count(*) FROM claims WHERE coupon_id = '%s'", "win"),
        0);

    pg_wait_until(now + 2600);
    TT_EQ_INT(claim_status(s, "win", "inside", err, sizeof(err)), 201);
    TT_EQ_INT(claim_status(s, "win", "early", err, sizeof(err)), 201);
    TT_CMP_INT(pg_now_ms(), <, now + 6500);

    pg_wait_until(now + 6600);
    TT_EQ_INT(claim_status(s, "win", "late", err, sizeof(err)), 410);
    TT_EQ_STR(err, "expired");
    TT_EQ_INT(
        pg_int1("SELECT count(*) FROM claims WHERE coupon_id = '%s'", "win"),
        2);
    TT_EQ_INT(
        pg_int1("SELECT count(*) FROM claims WHERE user_id = '%s'", "late"), 0);
    h_check_invariants("win", 10, 2);
}

/* The window's and the buckets' input rules: clear 400s, nothing created. */
TT_TEST(api_coupon_window_and_buckets_rules, 30) {
    h_begin();
    h_svc_t *s = h_svc_start("rules", NULL);
    static const struct {
        const char *json, *error;
    } bad[] = {
        {"{\"id\":\"r\",\"total\":5,\"starts_at\":\"2026-12-01T10:00:00Z\","
         "\"ends_at\":\"2026-12-01T10:00:00Z\"}",
         "invalid_window"},
        {"{\"id\":\"r\",\"total\":5,\"starts_at\":\"2026-12-02T10:00:00Z\","
         "\"ends_at\":\"2026-12-01T10:00:00Z\"}",
         "invalid_window"},
        {"{\"id\":\"r\",\"total\":5,\"ends_at\":\"2026-12-01 10:00:00Z\"}",
         "invalid_time"},
        {"{\"id\":\"r\",\"total\":5,\"ends_at\":\"2026-12-01T10:00:00\"}",
         "invalid_time"},
        {"{\"id\":\"r\",\"total\":5,\"ends_at\":\"2026-02-30T10:00:00Z\"}",
         "invalid_time"},
        {"{\"id\":\"r\",\"total\":5,\"ends_at\":\"2026-12-01T24:00:00Z\"}",
         "invalid_time"},
        {"{\"id\":\"r\",\"total\":5,\"ends_at\":\"2026-12-01T10:00:00."
         "1234567Z\"}",
         "invalid_time"},
        {"{\"id\":\"r\",\"total\":5,\"ends_at\":\"2026-12-01T10:00:00+1:00\"}",
         "invalid_time"},
        {"{\"id\":\"r\",\"total\":5,\"ends_at\":\"2026-12-01T10:00:00Z \"}",
         "invalid_time"},
        {"{\"id\":\"r\",\"total\":5,\"ends_at\":1764583200}", "invalid_time"},
        {"{\"id\":\"r\",\"total\":5,\"buckets\":0}", "bad_request"},
        {"{\"id\":\"r\",\"total\":5,\"buckets\":6}", "bad_request"},
        {"{\"id\":\"r\",\"total\":500,\"buckets\":65}", "bad_request"},
        {"{\"id\":\"r\",\"total\":5,\"buckets\":\"2\"}", "bad_request"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char *body = NULL;
        long st = post_coupon(s, bad[i].json, &body);
        json_t *j = json_loads(body != NULL ? body : "", 0, NULL);
        TT_ASSERT_MSG(st == 400, "case %zu %s: %ld %s", i, bad[i].json, st,
                      body);
        TT_EQ_STR(json_string_value(json_object_get(j, "error")), bad[i].error);
        TT_ASSERT(json_is_string(json_object_get(j, "detail")));
        json_decref(j);
        free(body);
    }
    TT_EQ_INT(h_pg_int("SELECT count(*) FROM coupons"), 0);
    /* An offset is taken into account, a fraction kept, null is open. */
    char *body = NULL;
    TT_EQ_INT(post_coupon(s,
                          "{\"id\":\"r\",\"total\":64,\"buckets\":64,"
                          "\"starts_at\":\"2026-12-01T11:30:00.25+01:30\","
                          "\"ends_at\":null}",
                          &body),
              201);
    json_t *j = json_loads(body, 0, NULL);
    free(body);
    TT_EQ_STR(json_string_value(json_object_get(j, "starts_at")),
              "2026-12-01T10:00:00.250000Z");
    TT_ASSERT(json_is_null(json_object_get(j, "ends_at")));
    TT_EQ_INT(json_array_size(json_object_get(j, "buckets")), 64);
    json_decref(j);
}

/* ------------------------------------------------------ rolling upgrade --- */

/*
 * An old replica (built from the commit before the schema change, the
 * binary in $COUPONSVC_OLD_BIN) and a new one on the migrated database,
 * claiming one unsharded coupon at once: the invariants hold, and both
 * made claims. On a sharded or windowed coupon the old replica's write is
 * refused by the schema (503, nothing written) instead of overselling or
 * claiming out of the window.
 */
TT_TEST(rolling_upgrade_old_and_new_replicas, 120) {
    H_REDIS_ONLY(); /* the old replica has no etcd backend */
    h_begin();
    const char *old = getenv("COUPONSVC_OLD_BIN");
    TT_ASSERT_MSG(old != NULL && old[0] != '\0',
                  "COUPONSVC_OLD_BIN is not set (make test-integration "
                  "builds it into build/old/)");
    const char *newbin = getenv("COUPONSVC_BIN");
    char keep[512];
    snprintf(keep, sizeof(keep), "%s", newbin != NULL ? newbin : "");
    setenv("COUPONSVC_BIN", old, 1);
    h_svc_t *o = h_svc_start("old", NULL);
    setenv("COUPONSVC_BIN", keep, 1);
    h_svc_t *n = h_svc_start("new", NULL);

    h_coupon(o, "up", 300);
    h_svc_t *both[] = {o, n};
    h_counts_t c;
    memset(&c, 0, sizeof(c));
    h_claim_many(both, 2, "up", "u", 400, 16, &c);
    printf("    201: %ld, 410: %ld, 503: %ld\n", c.by_status[201],
           c.by_status[410], c.by_status[503]);
    TT_EQ_INT(c.by_status[201], 300);
    TT_EQ_INT(c.by_status[410], 100);
    TT_CMP_INT(pg_int1("SELECT count(*) FROM claims WHERE coupon_id = '%s'"
                       " AND instance LIKE '%%old%%'",
                       "up"),
               >, 0);
    TT_CMP_INT(pg_int1("SELECT count(*) FROM claims WHERE coupon_id = '%s'"
                       " AND instance LIKE '%%new%%'",
                       "up"),
               >, 0);
    h_check_invariants("up", 300, 300);

    /* The new features are refused on the old replica, not misread. */
    char *body = NULL;
    TT_EQ_INT(
        post_coupon(n, "{\"id\":\"sh\",\"total\":4,\"buckets\":2}", &body),
        201);
    free(body);
    long long now = pg_now_ms();
    char z[40], json[200];
    fmt_ms(now - 1000, z, sizeof(z));
    snprintf(json, sizeof(json),
             "{\"id\":\"gone\",\"total\":4,\"ends_at\":\"%s\"}", z);
    TT_EQ_INT(post_coupon(n, json, &body), 201);
    free(body);
    char err[64];
    TT_EQ_INT(claim_status(o, "sh", "x", err, sizeof(err)), 503);
    TT_EQ_INT(claim_status(o, "gone", "x", err, sizeof(err)), 503);
    TT_EQ_INT(claim_status(n, "gone", "x", err, sizeof(err)), 410);
    TT_EQ_STR(err, "expired");
    TT_EQ_INT(pg_int1("SELECT count(*) FROM claims WHERE user_id = '%s'", "x"),
              0);
}
