/*
 * test_comb.c: combining (one lease, one transaction, many parked claims),
 * admission control and the sold-out fast path, through real couponsvc
 * processes against real PostgreSQL and Redis.
 */
#include <curl/curl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "harness.h"
#include "tt.h"

/* One claim with its status, JSON body and whether Retry-After came. */
typedef struct comb_call {
    const h_svc_t *s;
    const char *coupon;
    char user[48];
    long status;
    json_t *json;
    int retry_after;
    double ms; /* from send to answer */
} comb_call_t;

static size_t comb_header(char *p, size_t size, size_t n, void *arg) {
    comb_call_t *c = arg;
    if (size * n >= 12 && strncasecmp(p, "Retry-After:", 12) == 0) {
        c->retry_after = 1;
    }
    return size * n;
}

static void *comb_claim_thread(void *arg) {
    comb_call_t *c = arg;
    char url[96], data[256];
    snprintf(url, sizeof(url), "%s/claim", c->s->url);
    snprintf(data, sizeof(data), "{\"coupon_id\":\"%s\",\"user_id\":\"%s\"}",
             c->coupon, c->user);
    CURL *h = curl_easy_init();
    h_buf_t b = {0};
    struct curl_slist *hdr =
        curl_slist_append(NULL, "Content-Type: application/json");
    hdr = curl_slist_append(hdr, "Expect:");
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, data);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, h_buf_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, comb_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, c);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 30000L);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    double t0 = h_now_ms();
    c->status = 0;
    if (curl_easy_perform(h) == CURLE_OK) {
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &c->status);
    }
    c->ms = h_now_ms() - t0;
    h_api_record("POST", url, c->status, b.p);
    c->json = b.p != NULL ? json_loads(b.p, 0, NULL) : NULL;
    free(b.p);
    curl_slist_free_all(hdr);
    curl_easy_cleanup(h);
    return NULL;
}

static const char *comb_str(json_t *j, const char *k) {
    const char *v = json_string_value(json_object_get(j, k));
    return v != NULL ? v : "";
}

static long comb_int(json_t *j, const char *k) {
    json_t *v = json_object_get(j, k);
    TT_ASSERT_MSG(json_is_integer(v), "member %s missing", k);
    return (long)json_integer_value(v);
}

/* Batches of more than one claim, from the batch-size histogram. */
static double comb_big_batches(const h_svc_t *s) {
    double count = h_metric(s, "couponsvc_claim_batch_size_count");
    double ones = h_metric(s, "couponsvc_claim_batch_size_bucket{le=\"1\"}");
    TT_ASSERT_MSG(count >= 0 && ones >= 0,
                  "no couponsvc_claim_batch_size histogram");
    return count - ones;
}

/* Many concurrent claims on one hot coupon, one instance: batches carry
 * more than one claim, the stock is exact, one claim per user, every 201
 * has its row (and the fences pass the checker: equal only within one
 * transaction). */
TT_TEST(comb_hot_coupon_batches, 90) {
    h_begin();
    const char *env[] = {"COUPON_BATCH_MAX=32", "COUPON_THREADS=4",
                         "COUPON_LOCK_WAIT_MS=20000", NULL};
    h_svc_t *s = h_svc_start("comb", env);
    h_coupon(s, "hot", 150);
    h_counts_t c;
    h_claim_many(&s, 1, "hot", "u", 400, 64, &c);
    printf("# 201=%ld 410=%ld 503=%ld, batches > 1: %.0f of %.0f\n",
           c.by_status[201], c.by_status[410], c.by_status[503],
           comb_big_batches(s),
           h_metric(s, "couponsvc_claim_batch_size_count"));
    TT_EQ_INT(c.by_status[201], 150);
    TT_EQ_INT(c.by_status[410], 250);
    TT_CMP_INT(comb_big_batches(s), >, 0);
    h_check_invariants("hot", 150, c.by_status[201]);
}

/* One user's claim sent 16 times at once while the leader holds the lease
 * (its after_acquire pause): they park, ride in one batch, and exactly one
 * of them is 201; the others are 200 with the same claim_id. */
TT_TEST(comb_duplicates_in_one_batch, 60) {
    enum { N = 16 };
    h_begin();
    const char *env[] = {"COUPON_BATCH_MAX=32", "COUPON_LOCK_WAIT_MS=20000",
                         "COUPON_FAULT=after_acquire:700", NULL};
    h_svc_t *s = h_svc_start("dups", env);
    h_coupon(s, "dup", 10);
    static comb_call_t lead, d[N];
    lead = (comb_call_t){.s = s, .coupon = "dup", .user = "opener"};
    pthread_t tl, t[N];
    TT_ASSERT(pthread_create(&tl, NULL, comb_claim_thread, &lead) == 0);
    TT_CMP_INT(h_wait_metric(s, "couponsvc_leases_held", 1, 5000), >=, 1);
    for (int i = 0; i < N; i++) {
        d[i] = (comb_call_t){.s = s, .coupon = "dup", .user = "twin"};
        TT_ASSERT(pthread_create(&t[i], NULL, comb_claim_thread, &d[i]) == 0);
    }
    pthread_join(tl, NULL);
    TT_EQ_INT(lead.status, 201);
    int n201 = 0, n200 = 0;
    long id = -1;
    for (int i = 0; i < N; i++) {
        pthread_join(t[i], NULL);
        if (d[i].status == 201) {
            n201++;
        } else if (d[i].status == 200) {
            n200++;
            TT_EQ_STR(comb_str(d[i].json, "status"), "already_claimed");
        }
        if (d[i].status == 201 || d[i].status == 200) {
            long got = comb_int(d[i].json, "claim_id");
            TT_ASSERT_MSG(id < 0 || got == id, "claim_id %ld and %ld", id, got);
            id = got;
        }
        json_decref(d[i].json);
    }
    json_decref(lead.json);
    printf("# twin: 201=%d 200=%d; batches > 1: %.0f\n", n201, n200,
           comb_big_batches(s));
    TT_EQ_INT(n201, 1);
    TT_EQ_INT(n200, N - 1);
    /* They waited behind the opener's lease: at least one batch carried
     * more than one of them. */
    TT_CMP_INT(comb_big_batches(s), >=, 1);
    TT_EQ_INT(h_metric(s, "couponsvc_claims_parked"), 0);
    h_check_invariants("dup", 10, 2);
}

/* Admission control: a coupon's queue holds COUPON_QUEUE_MAX_PER_COUPON
 * (4) claims; while the leader holds the lease (its pause), 12 more claims
 * come: 4 park and are served, 8 are answered 503 overloaded at once, as
 * JSON, with Retry-After, and nothing of theirs is written. */
TT_TEST(comb_overload_beyond_queue_bound, 60) {
    enum { N = 12, BOUND = 4 };
    h_begin();
    const char *env[] = {"COUPON_BATCH_MAX=32", "COUPON_QUEUE_MAX_PER_COUPON=4",
                         "COUPON_LOCK_WAIT_MS=20000",
                         "COUPON_FAULT=after_acquire:1500", NULL};
    h_svc_t *s = h_svc_start("over", env);
    h_coupon(s, "busy", 100);
    static comb_call_t lead, q[N];
    lead = (comb_call_t){.s = s, .coupon = "busy", .user = "leader"};
    pthread_t tl, t[N];
    TT_ASSERT(pthread_create(&tl, NULL, comb_claim_thread, &lead) == 0);
    TT_CMP_INT(h_wait_metric(s, "couponsvc_leases_held", 1, 5000), >=, 1);
    for (int i = 0; i < N; i++) {
        q[i] = (comb_call_t){.s = s, .coupon = "busy"};
        snprintf(q[i].user, sizeof(q[i].user), "q-%d", i);
        TT_ASSERT(pthread_create(&t[i], NULL, comb_claim_thread, &q[i]) == 0);
    }
    int over = 0, ok = 0;
    for (int i = 0; i < N; i++) {
        pthread_join(t[i], NULL);
        if (q[i].status == 503) {
            TT_EQ_STR(comb_str(q[i].json, "error"), "overloaded");
            TT_ASSERT_MSG(json_is_string(json_object_get(q[i].json, "detail")),
                          "503 without a detail");
            TT_ASSERT_MSG(q[i].retry_after, "503 overloaded without "
                                            "Retry-After");
            over++;
        } else if (q[i].status == 201) {
            ok++;
        }
        json_decref(q[i].json);
    }
    pthread_join(tl, NULL);
    json_decref(lead.json);
    printf("# overloaded=%d claimed=%d (bound %d)\n", over, ok, BOUND);
    TT_EQ_INT(over, N - BOUND);
    TT_EQ_INT(ok, BOUND);
    TT_EQ_INT(lead.status, 201);
    TT_EQ_INT(h_metric(s, "couponsvc_admissions_refused_total{reason="
                          "\"coupon_queue_full\"}"),
              N - BOUND);
    h_check_invariants("busy", 100, BOUND + 1);
}

/* The sold-out fast path: once the instance has seen the coupon sold out,
 * a user without a claim gets 410 from memory, with PostgreSQL stopped;
 * so does a user with a claim, 200 with exactly its claim (id, fence,
 * remaining), also from memory; and a user id that is a claimant's but
 * one character longer, or shorter, is no claimant. */
TT_TEST(soldout_fastpath_without_postgres, 90) {
    h_begin();
    h_pg_private_start();
    h_svc_t *s = h_svc_start("memo", NULL);
    h_coupon(s, "gone", 3);
    long ids[3], fences[3];
    for (int i = 0; i < 3; i++) {
        char user[16];
        snprintf(user, sizeof(user), "holder-%d", i);
        json_t *j = NULL;
        TT_EQ_INT(h_claim(s, "gone", user, &j), 201);
        ids[i] = comb_int(j, "claim_id");
        fences[i] = comb_int(j, "fence");
        json_decref(j);
    }
    TT_EQ_INT(h_claim(s, "gone", "late-0", NULL), 410); /* seen sold out */
    /* The memo is loaded off the event loop, after that answer. */
    double memos = h_wait_metric(s, "couponsvc_soldout_memos_total", 1, 5000);

    h_check_invariants("gone", 3, 3);
    h_pg_private_stop("fast");
    for (int i = 0; i < 3; i++) {
        char user[16];
        snprintf(user, sizeof(user), "holder-%d", i);
        json_t *j = NULL;
        long st = h_claim(s, "gone", user, &j);
        TT_ASSERT_MSG(st == 200, "%s with PostgreSQL stopped: %ld %s", user, st,
                      comb_str(j, "error"));
        TT_EQ_STR(comb_str(j, "status"), "already_claimed");
        TT_EQ_STR(comb_str(j, "user_id"), user);
        TT_EQ_INT(comb_int(j, "claim_id"), ids[i]);
        TT_EQ_INT(comb_int(j, "fence"), fences[i]);
        TT_EQ_INT(comb_int(j, "remaining"), 0);
        json_decref(j);
    }
    static const char *const near[] = {"holder-1x", "holder-", "holder-3"};
    for (size_t i = 0; i < sizeof(near) / sizeof(near[0]); i++) {
        TT_EQ_INT(h_claim(s, "gone", near[i], NULL), 410);
    }
    json_t *j = NULL;
    for (int i = 1; i <= 5; i++) {
        char user[16];
        snprintf(user, sizeof(user), "late-%d", i);
        j = NULL;
        long st = h_claim(s, "gone", user, &j);
        TT_ASSERT_MSG(st == 410, "%s with PostgreSQL stopped: %ld %s", user, st,
                      comb_str(j, "error"));
        TT_EQ_STR(comb_str(j, "status"), "sold_out");
        json_decref(j);
    }
    TT_CMP_INT(memos, >=, 1);
    TT_EQ_INT(h_metric(s, "couponsvc_soldout_fastpath_total{result="
                          "\"claimant\"}"),
              3);
    TT_EQ_INT(h_metric(s, "couponsvc_soldout_fastpath_total{result="
                          "\"sold_out\"}"),
              5 + 3);
}

/* The fast path serves an expired coupon too: two coupons (one unsharded,
 * one of 4 buckets, made in SQL) whose window ends about two seconds after
 * PostgreSQL's now(). Once PostgreSQL's clock has passed the end, the first
 * late claim on each is answered by the store (410 expired) and loads the
 * memo; a claimant then gets its claim (200), and with PostgreSQL stopped
 * every non-claimant still gets 410 expired, from memory. */
TT_TEST(expired_fastpath_without_postgres, 90) {
    static const char *const coupons[] = {"brief", "brief4"};
    h_begin();
    h_pg_private_start();
    h_svc_t *s = h_svc_start("memox", NULL);
    TT_EQ_INT(h_pg_int("INSERT INTO coupons (id, total, ends_at) VALUES"
                       " ('brief', 10, now() + interval '2 seconds')"
                       " RETURNING 1"),
              1);
    TT_EQ_INT(h_pg_int("WITH cp AS (INSERT INTO coupons (id, total, buckets,"
                       "   ends_at) VALUES ('brief4', 40, 4,"
                       "   now() + interval '2 seconds') RETURNING id)"
                       " INSERT INTO coupon_buckets (coupon_id, bucket, total)"
                       " SELECT 'brief4', g, 10 FROM cp, generate_series(0, 3)"
                       " g RETURNING 1"),
              1);
    long ids[2][3];
    for (int c = 0; c < 2; c++) {
        for (int i = 0; i < 3; i++) {
            char user[16];
            snprintf(user, sizeof(user), "holder-%d", i);
            json_t *j = NULL;
            TT_EQ_INT(h_claim(s, coupons[c], user, &j), 201);
            ids[c][i] = comb_int(j, "claim_id");
            json_decref(j);
        }
    }
    /* Bounded: the window ends two seconds after it was made. */
    for (int i = 0; i < 100 && h_pg_int("SELECT count(*) FROM coupons"
                                        " WHERE ends_at > now()") > 0;
         i++) {
        h_sleep_ms(100);
    }
    TT_EQ_INT(h_pg_int("SELECT count(*) FROM coupons WHERE ends_at > now()"),
              0);
    for (int c = 0; c < 2; c++) {
        json_t *j = NULL;
        TT_EQ_INT(h_claim(s, coupons[c], "late-0", &j), 410); /* the store */
        TT_EQ_STR(comb_str(j, "error"), "expired");
        json_decref(j);
    }
    double memos = h_wait_metric(s, "couponsvc_soldout_memos_total", 2, 5000);
    TT_CMP_INT(memos, >=, 2);
    h_check_invariants("brief", 10, 3);
    h_check_invariants("brief4", 40, 3);
    h_pg_private_stop("fast");
    /* A claimant gets its claim from memory, with the stock left that the
     * window's end froze. */
    for (int c = 0; c < 2; c++) {
        json_t *j = NULL;
        long st = h_claim(s, coupons[c], "holder-1", &j);
        TT_ASSERT_MSG(st == 200, "holder-1 on %s with PostgreSQL stopped: %ld",
                      coupons[c], st);
        TT_EQ_STR(comb_str(j, "status"), "already_claimed");
        TT_EQ_INT(comb_int(j, "claim_id"), ids[c][1]);
        TT_EQ_INT(comb_int(j, "remaining"), c == 0 ? 10 - 3 : 40 - 3);
        json_decref(j);
    }
    for (int c = 0; c < 2; c++) {
        for (int i = 1; i <= 5; i++) {
            char user[16];
            snprintf(user, sizeof(user), "late-%d", i);
            json_t *j = NULL;
            long st = h_claim(s, coupons[c], user, &j);
            TT_ASSERT_MSG(st == 410, "%s on %s with PostgreSQL stopped: %ld %s",
                          user, coupons[c], st, comb_str(j, "error"));
            TT_EQ_STR(comb_str(j, "error"), "expired");
            TT_ASSERT_MSG(json_is_string(json_object_get(j, "detail")),
                          "410 expired without a detail");
            json_decref(j);
        }
    }
    TT_EQ_INT(h_metric(s, "couponsvc_soldout_fastpath_total{result="
                          "\"expired\"}"),
              10);
    TT_EQ_INT(h_metric(s, "couponsvc_soldout_fastpath_total{result="
                          "\"claimant\"}"),
              2);
}

/* COUPON_SOLDOUT_MEMO=off: the same sold-out coupon is asked of
 * PostgreSQL every time (with it stopped: 503), as the baseline. */
TT_TEST(soldout_memo_off_asks_postgres, 90) {
    h_begin();
    h_pg_private_start();
    const char *env[] = {"COUPON_SOLDOUT_MEMO=off", NULL};
    h_svc_t *s = h_svc_start("nomemo", env);
    h_coupon(s, "gone", 1);
    TT_EQ_INT(h_claim(s, "gone", "holder", NULL), 201);
    TT_EQ_INT(h_claim(s, "gone", "late-0", NULL), 410);
    h_sleep_ms(300);
    TT_CMP_INT(h_metric(s, "couponsvc_soldout_memos_total"), <=, 0);
    h_pg_private_stop("fast");
    TT_EQ_INT(h_claim(s, "gone", "late-1", NULL), 503);
}

/* A sharded coupon (4 buckets of 10, made in SQL: the HTTP create of
 * buckets is not this test's subject): claims pick a bucket by the user's
 * hash, move on when the store finds it empty, and are sold out only when
 * every bucket is. Combined (batch 32) and not (batch 1). */
static void sharded_run(const char *batch) {
    h_begin();
    const char *env[] = {batch, "COUPON_LOCK_WAIT_MS=20000", NULL};
    h_svc_t *s = h_svc_start("shard", env);
    TT_EQ_INT(h_pg_int("WITH cp AS (INSERT INTO coupons (id, total, buckets)"
                       " VALUES ('shard', 40, 4) RETURNING id)"
                       " INSERT INTO coupon_buckets (coupon_id, bucket, total)"
                       " SELECT 'shard', g, 10 FROM cp, generate_series(0, 3) g"
                       " RETURNING 1"),
              1);
    h_counts_t c;
    h_claim_many(&s, 1, "shard", "s", 120, 48, &c);
    printf("# %s: 201=%ld 410=%ld 503=%ld\n", batch, c.by_status[201],
           c.by_status[410], c.by_status[503]);
    TT_EQ_INT(c.by_status[201], 40);
    TT_EQ_INT(c.by_status[410], 80);
    TT_EQ_INT(h_pg_int("SELECT count(*) FROM coupon_buckets"
                       " WHERE coupon_id = 'shard' AND claimed = total"),
              4);
    TT_EQ_INT(h_pg_int("SELECT count(DISTINCT bucket) FROM claims"), 4);
    TT_EQ_INT(h_redis_cmd("EXISTS coupon:{shard#3}:fence"), 1);
    h_check_invariants("shard", 40, c.by_status[201]);
}

TT_TEST(comb_sharded_buckets_move_on, 90) {
    H_REDIS_ONLY(); /* it reads the buckets' Redis keys */
    sharded_run("COUPON_BATCH_MAX=32");
}

TT_TEST(comb_sharded_buckets_move_on_uncombined, 90) {
    H_REDIS_ONLY(); /* it reads the buckets' Redis keys */
    sharded_run("COUPON_BATCH_MAX=1");
}

/* SIGTERM with claims parked: the leader (in its after_acquire pause) is
 * finishing its batch of two when the grace period (300 ms) runs out; the
 * workers stop, the leadership cannot be handed on, and the claims still
 * parked are answered 503 shutting_down with Retry-After. Every claim gets
 * an answer, the process exits 0 (libmicrohttpd aborts on a suspended
 * connection at stop), and every 201 has its row. */
TT_TEST(comb_parked_claims_answered_at_shutdown, 60) {
    enum { N = 6 };
    h_begin();
    const char *env[] = {"COUPON_BATCH_MAX=2", "COUPON_SHUTDOWN_GRACE_MS=300",
                         "COUPON_LOCK_WAIT_MS=20000",
                         "COUPON_FAULT=after_acquire:1000", NULL};
    h_svc_t *s = h_svc_start("stopping", env);
    h_coupon(s, "stop", 100);
    static comb_call_t lead, q[N];
    lead = (comb_call_t){.s = s, .coupon = "stop", .user = "leader"};
    pthread_t tl, t[N];
    TT_ASSERT(pthread_create(&tl, NULL, comb_claim_thread, &lead) == 0);
    TT_CMP_INT(h_wait_metric(s, "couponsvc_leases_held", 1, 5000), >=, 1);
    for (int i = 0; i < N; i++) {
        q[i] = (comb_call_t){.s = s, .coupon = "stop"};
        snprintf(q[i].user, sizeof(q[i].user), "p-%d", i);
        TT_ASSERT(pthread_create(&t[i], NULL, comb_claim_thread, &q[i]) == 0);
    }
    TT_CMP_INT(h_wait_metric(s, "couponsvc_claims_parked", N, 5000), >=, N);
    TT_ASSERT(kill(s->pid, SIGTERM) == 0);
    pthread_join(tl, NULL);
    long n201 = lead.status == 201;
    int down = 0;
    for (int i = 0; i < N; i++) {
        pthread_join(t[i], NULL);
        printf("# %s: %ld %s\n", q[i].user, q[i].status,
               comb_str(q[i].json, "error"));
        TT_ASSERT_MSG(
            q[i].status == 201 ||
                (q[i].status == 503 &&
                 strcmp(comb_str(q[i].json, "error"), "shutting_down") == 0 &&
                 q[i].retry_after),
            "%s: %ld %s", q[i].user, q[i].status, comb_str(q[i].json, "error"));
        n201 += q[i].status == 201;
        down += q[i].status == 503;
        json_decref(q[i].json);
    }
    json_decref(lead.json);
    TT_EQ_INT(lead.status, 201);
    TT_CMP_INT(down, >=, 1);
    TT_EQ_INT(h_svc_stop(s, 10000), 0);
    h_check_invariants("stop", 100, n201);
}
