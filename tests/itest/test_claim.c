/*
 * test_claim.c: the claim path against real PostgreSQL, Redis and several
 * couponsvc processes. The tests run in the order they build on each other:
 * exact stock, one claim per user, the stale holder, the race without a
 * lock, then the failures.
 */
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "tt.h"

static long jint(json_t *j, const char *k) {
    json_t *v = json_object_get(j, k);
    TT_ASSERT_MSG(v != NULL && json_is_integer(v), "member %s missing", k);
    return (long)json_integer_value(v);
}

static const char *jstr(json_t *j, const char *k) {
    json_t *v = json_object_get(j, k);
    TT_ASSERT_MSG(v != NULL && json_is_string(v), "member %s missing", k);
    return json_string_value(v);
}

/* 3 instances, stock 10, 300 distinct users at once: exactly ten 201s,
 * the rest 410, and the database agrees. */
TT_TEST(lock_three_instances_exact_stock, 90) {
    h_begin();
    const char *env[] = {"COUPON_LOCK_WAIT_MS=20000", NULL};
    h_svc_t *s[3] = {h_svc_start("a1", env), h_svc_start("a2", env),
                     h_svc_start("a3", env)};
    h_coupon(s[0], "hot", 10);
    h_counts_t c;
    h_claim_many(s, 3, "hot", "user", 300, 48, &c);
    TT_EQ_INT(c.by_status[201], 10);
    TT_EQ_INT(c.by_status[410], 290);
    h_check_invariants("hot", 10, c.by_status[201]);
    TT_CMP_INT(h_pg_int("SELECT count(DISTINCT instance) FROM claims"), >=, 1);
}

/* One user on two instances at the same moment: one claim; the other
 * answer is already_claimed with the same claim. Ten rounds. */
typedef struct b_arg {
    h_svc_t *s;
    const char *user;
    long status;
    json_t *json;
} b_arg_t;

static void *b_thread(void *p) {
    b_arg_t *a = p;
    a->status = h_claim(a->s, "one", a->user, &a->json);
    return NULL;
}

TT_TEST(same_user_two_instances, 60) {
    h_begin();
    h_svc_t *s1 = h_svc_start("b1", NULL), *s2 = h_svc_start("b2", NULL);
    h_coupon(s1, "one", 100);
    for (int round = 0; round < 10; round++) {
        char user[32];
        snprintf(user, sizeof(user), "twice-%d", round);
        b_arg_t x = {s1, user, 0, NULL}, y = {s2, user, 0, NULL};
        pthread_t tx, ty;
        pthread_create(&tx, NULL, b_thread, &x);
        pthread_create(&ty, NULL, b_thread, &y);
        pthread_join(tx, NULL);
        pthread_join(ty, NULL);
        TT_EQ_INT(x.status + y.status, 201 + 200);
        b_arg_t *won = x.status == 201 ? &x : &y;
        b_arg_t *lost = x.status == 201 ? &y : &x;
        TT_EQ_STR(jstr(won->json, "status"), "claimed");
        TT_EQ_STR(jstr(lost->json, "status"), "already_claimed");
        TT_EQ_INT(jint(lost->json, "claim_id"), jint(won->json, "claim_id"));
        TT_EQ_INT(jint(lost->json, "fence"), jint(won->json, "fence"));
        json_decref(x.json);
        json_decref(y.json);
    }
    h_check_invariants("one", 100, 10);
}

/* The stale holder. A takes the lock, then its whole process is frozen
 * (SIGSTOP, like a long GC pause) past its TTL; B claims with a newer fence;
 * A wakes up and writes with its old fence: PostgreSQL must refuse it. */
typedef struct c_arg {
    h_svc_t *s;
    long status;
    json_t *json;
} c_arg_t;

static void *c_thread(void *p) {
    c_arg_t *a = p;
    a->status = h_claim(a->s, "stale", "sleeper", &a->json);
    return NULL;
}

TT_TEST(stale_holder_is_fenced, 60) {
    h_begin();
    const char *env_a[] = {"COUPON_LOCK_TTL_MS=500",
                           "COUPON_FAULT=after_acquire:1000", NULL};
    h_svc_t *a = h_svc_start("stale-a", env_a);
    h_svc_t *b = h_svc_start("fresh-b", NULL);
    h_coupon(b, "stale", 5);

    c_arg_t ca = {a, 0, NULL};
    pthread_t t;
    pthread_create(&t, NULL, c_thread, &ca);
    /* Freeze A once it holds the lease (inside the after_acquire pause). */
    TT_CMP_INT(h_wait_metric(a, "couponsvc_leases_held", 1, 5000), >=, 1);
    kill(a->pid, SIGSTOP);
    h_sleep_ms(1500); /* 3x the TTL: the lock expires in Redis */

    json_t *jb = NULL;
    long sb = h_claim(b, "stale", "punctual", &jb);
    TT_EQ_INT(sb, 201);
    long fence_b = jint(jb, "fence");

    kill(a->pid, SIGCONT);
    pthread_join(t, NULL);
    TT_EQ_INT(ca.status, 409);
    TT_EQ_STR(jstr(ca.json, "error"), "fenced");
    TT_CMP_INT(jint(ca.json, "fence"), <, fence_b);
    TT_ASSERT(json_object_get(ca.json, "detail") != NULL);

    /* Nothing of A's was written; B's claim stands. */
    TT_EQ_INT(h_pg_int("SELECT count(*) FROM claims WHERE user_id='sleeper'"),
              0);
    h_check_invariants("stale", 5, 1);
    TT_EQ_INT(h_metric(a, "couponsvc_fenced_refusals_total"), 1);
    TT_EQ_INT(h_metric(a, "couponsvc_claims_total{outcome=\"fenced\"}"), 1);
    json_decref(jb);
    json_decref(ca.json);
}

/* Naive mode under the load of lock_three_instances_exact_stock must
 * oversell, or that test's invariant check proves nothing. A few rounds
 * are allowed. */
TT_TEST(naive_mode_oversells, 120) {
    h_begin();
    const char *env[] = {"COUPON_CLAIM_MODE=naive", NULL};
    h_svc_t *s[3] = {h_svc_start("n1", env), h_svc_start("n2", env),
                     h_svc_start("n3", env)};
    long worst = 0;
    for (int round = 0; round < 5 && worst <= 10; round++) {
        char coupon[32];
        snprintf(coupon, sizeof(coupon), "naive-%d", round);
        h_coupon(s[0], coupon, 10);
        h_counts_t c;
        h_claim_many(s, 3, coupon, "n", 300, 48, &c);
        char sql[128];
        snprintf(sql, sizeof(sql),
                 "SELECT count(*) FROM claims WHERE coupon_id = '%s'", coupon);
        long rows = h_pg_int(sql);
        printf("    round %d: 201s=%ld claim rows=%ld (stock 10)\n", round,
               c.by_status[201], rows);
        if (c.by_status[201] > worst) {
            worst = c.by_status[201];
        }
    }
    TT_CMP_INT(worst, >, 10);
}

/* The fence counter deleted mid-run (Redis lost it): the service raises
 * it back above last_fence and claims go on; nothing breaks. The counter is
 * deleted four times between bursts of concurrent claims on 3 instances,
 * each time with the high-water mark in PostgreSQL far above 1. */
TT_TEST(fence_counter_lost_recovers, 90) {
    h_begin();
    const char *env[] = {"COUPON_LOCK_WAIT_MS=20000", NULL};
    h_svc_t *s[3] = {h_svc_start("e1", env), h_svc_start("e2", env),
                     h_svc_start("e3", env)};
    h_coupon(s[0], "fence-loss", 60);
    if (h_etcd_on()) {
        /* etcd's fences are revisions, which do not go back by themselves.
         * What can go back is the offset above them: a cluster restored from
         * an older snapshot, or a new one. Start where a Redis-era coupon
         * would be (last_fence far above any revision), so that the offset
         * has something to lose: the warm-up's first claim raises it. */
        h_pg_int("UPDATE coupons SET last_fence = 1000000 RETURNING 1");
    }
    h_counts_t c;
    h_claim_many(s, 3, "fence-loss", "warm", 20, 4, &c);
    TT_EQ_INT(c.by_status[201], 20);
    long n201 = 20;
    if (h_etcd_on()) {
        TT_CMP_INT(h_etcd_get_int("fence/fence-loss"), >=, 1000000);
    }

    for (int round = 0; round < 4; round++) {
        if (h_etcd_on()) {
            TT_EQ_INT(h_etcd_del("fence/fence-loss"), 1);
        } else {
            TT_EQ_INT(h_redis_cmd("DEL coupon:{fence-loss}:fence"), 1);
        }
        char prefix[32];
        snprintf(prefix, sizeof(prefix), "after-loss-%d", round);
        h_claim_many(s, 3, "fence-loss", prefix, 10, 10, &c);
        for (int st = 0; st < 600; st++) {
            if (c.by_status[st] != 0 && st != 201) {
                printf("    round %d: %ld answered %d\n", round,
                       c.by_status[st], st);
            }
        }
        TT_EQ_INT(c.by_status[201], 10); /* no 409, no 503: recovered */
        n201 += c.by_status[201];
    }

    double rec = 0;
    for (int i = 0; i < 3; i++) {
        rec += h_metric(s[i], "couponsvc_fence_counter_recoveries_total");
    }
    TT_CMP_INT(rec, >=, 4);
    h_check_invariants("fence-loss", 60, n201);
    TT_EQ_INT(n201, 60);
    if (h_etcd_on()) {
        /* Each recovery set the offset to the last accepted fence; later
         * grants draw offset + a revision, above it. */
        TT_CMP_INT(h_etcd_get_int("fence/fence-loss"), >=, 1000000);
        return;
    }
    /* The counter is above the high-water mark again. */
    TT_CMP_INT(h_redis_cmd("GET coupon:{fence-loss}:fence"), >=,
               h_pg_int("SELECT last_fence FROM coupons"));
}

/* A critical section longer than the TTL (before_commit pause of 3x the
 * TTL) completes: the watchdog renews its lease, and no other instance gets
 * in meanwhile. */
typedef struct f_arg {
    h_svc_t *s;
    long status;
    json_t *json;
} f_arg_t;

static void *f_thread(void *p) {
    f_arg_t *a = p;
    a->status = h_claim(a->s, "slow", "tortoise", &a->json);
    return NULL;
}

TT_TEST(long_critical_section_is_renewed, 60) {
    h_begin();
    const char *env_a[] = {"COUPON_LOCK_TTL_MS=500",
                           "COUPON_FAULT=before_commit:1500", NULL};
    const char *env_b[] = {"COUPON_LOCK_TTL_MS=500", "COUPON_LOCK_WAIT_MS=100",
                           NULL};
    h_svc_t *a = h_svc_start("slow-a", env_a);
    h_svc_t *b = h_svc_start("quick-b", env_b);
    h_coupon(b, "slow", 5);

    f_arg_t fa = {a, 0, NULL};
    pthread_t t;
    pthread_create(&t, NULL, f_thread, &fa);
    TT_CMP_INT(h_wait_metric(a, "couponsvc_leases_held", 1, 5000), >=, 1);

    /* While A sits in its critical section, B keeps trying: every try must
     * find the lock busy. */
    int tries = 0, busy = 0, won = 0;
    while (h_metric(a, "couponsvc_leases_held") >= 1 && tries < 100) {
        char user[32];
        snprintf(user, sizeof(user), "hare-%d", tries++);
        json_t *j = NULL;
        long st = h_claim(b, "slow", user, &j);
        if (st == 503 && strcmp(jstr(j, "error"), "lock_busy") == 0) {
            busy++;
        } else if (st == 201) {
            won++; /* only legal once A is done; seq below checks order */
        }
        if (st != 503 && h_metric(a, "couponsvc_leases_held") >= 1) {
            TT_ASSERT_MSG(0, "B got %ld while A held the lock", st);
        }
        json_decref(j);
    }
    pthread_join(t, NULL);
    TT_EQ_INT(fa.status, 201);
    TT_CMP_INT(busy, >=, 3);
    TT_CMP_INT(h_metric(a, "couponsvc_watchdog_renewals_total{result=\"ok\"}"),
               >=, 2);
    TT_EQ_INT(h_metric(a, "couponsvc_leases_lost_total"), 0);

    /* A's claim was the first committed; B's next one follows it. */
    json_t *jb = NULL;
    TT_EQ_INT(h_claim(b, "slow", "after", &jb), 201);
    TT_CMP_INT(jint(jb, "fence"), >, jint(fa.json, "fence"));
    TT_EQ_INT(h_pg_int("SELECT seq FROM claims WHERE user_id='tortoise'"), 1);
    h_check_invariants("slow", 5, 2 + won);
    json_decref(jb);
    json_decref(fa.json);
}

/* Redis gone: claims answer 503 quickly; /readyz stays 200 (a shared
 * backend's outage is not this instance's fault) and reports Redis down;
 * Redis back: claims succeed again without restarting the service. Also a
 * Redis that hangs (SIGSTOP) rather than refuses: the command timeout
 * bounds it. */
TT_TEST(redis_down_then_back, 60) {
    H_REDIS_ONLY(); /* etcd: etcd_quorum_lost_then_back (fault suite) */
    h_begin();
    const char *env[] = {"COUPON_REDIS_TIMEOUT_MS=300", NULL};
    h_svc_t *s = h_svc_start("g1", env);
    h_coupon(s, "g", 10);
    TT_EQ_INT(h_claim(s, "g", "before", NULL), 201);

    char url[96];
    snprintf(url, sizeof(url), "%s/readyz", s->url);
    TT_EQ_INT(h_http("GET", url, NULL, NULL, NULL, 0, NULL), 200);

    h_redis_stop();
    json_t *j = NULL;
    TT_EQ_INT(h_claim(s, "g", "during", &j), 503);
    TT_EQ_STR(jstr(j, "error"), "unavailable");
    json_decref(j);
    char *body = NULL;
    for (int i = 0; i < 100; i++) { /* the probe's next round: about 1 s */
        free(body);
        body = NULL;
        TT_EQ_INT(h_http("GET", url, NULL, NULL, NULL, 0, &body), 200);
        if (strstr(body, "\"redis\":{\"up\":false") != NULL) {
            break;
        }
        h_sleep_ms(100);
    }
    TT_CONTAINS(body, "\"redis\":{\"up\":false");
    free(body);

    /* Back, but empty: the fence counter restarts at 1, which PostgreSQL
     * has seen already. The claim detects it, raises the counter, retries. */
    h_redis_start();
    TT_EQ_INT(h_claim(s, "g", "after", NULL), 201);
    TT_EQ_INT(h_metric(s, "couponsvc_fence_counter_recoveries_total"), 1);
    TT_EQ_INT(h_http("GET", url, NULL, NULL, NULL, 0, NULL), 200);

    /* A hung Redis: the 300 ms command timeout, not the client's 30 s,
     * decides. (A bound on liveness, generous on purpose; not a speed
     * test.) */
    h_redis_signal(SIGSTOP);
    double t0 = h_now_ms();
    TT_EQ_INT(h_claim(s, "g", "hung", NULL), 503);
    TT_CMP_INT(h_now_ms() - t0, <, 10000);
    h_redis_signal(SIGCONT);
    /* The acquire that timed out was still in Redis's socket buffer: it ran
     * when Redis woke up. The release the service sent right after the
     * timeout ran behind it; if it had not, the TTL (5 s) would free the
     * lock, so retry until then. */
    long st = 0;
    for (int i = 0; i < 40 && st != 201; i++) {
        st = h_claim(s, "g", "resumed", NULL);
        if (st != 201) {
            h_sleep_ms(250);
        }
    }
    TT_EQ_INT(st, 201);
    h_check_invariants("g", 10, 3);
    TT_CMP_INT(h_metric(s, "couponsvc_backend_errors_total{backend=\"redis\"}"),
               >=, 1);
}

/* Atomic mode (the baseline the benchmarks compare with) is exact too. */
TT_TEST(atomic_mode_exact_stock, 90) {
    h_begin();
    const char *env[] = {"COUPON_CLAIM_MODE=atomic", NULL};
    h_svc_t *s[3] = {h_svc_start("x1", env), h_svc_start("x2", env),
                     h_svc_start("x3", env)};
    h_coupon(s[0], "atom", 10);
    h_counts_t c;
    h_claim_many(s, 3, "atom", "u", 300, 48, &c);
    TT_EQ_INT(c.by_status[201], 10);
    TT_EQ_INT(c.by_status[410], 290);
    h_check_invariants("atom", 10, 10);
}

/* SIGTERM with a claim in flight: the claim finishes and is answered, the
 * lock is released, the process exits 0. */
typedef struct s_arg {
    h_svc_t *s;
    long status;
} s_arg_t;

static void *s_thread(void *p) {
    s_arg_t *a = p;
    a->status = h_claim(a->s, "drain", "inflight", NULL);
    return NULL;
}

TT_TEST(graceful_shutdown_finishes_in_flight, 60) {
    h_begin();
    const char *env[] = {"COUPON_FAULT=before_commit:700", NULL};
    h_svc_t *s = h_svc_start("drain", env);
    h_coupon(s, "drain", 3);
    s_arg_t a = {s, 0};
    pthread_t t;
    pthread_create(&t, NULL, s_thread, &a);
    TT_CMP_INT(h_wait_metric(s, "couponsvc_leases_held", 1, 5000), >=, 1);
    kill(s->pid, SIGTERM);
    pthread_join(t, NULL);
    TT_EQ_INT(a.status, 201);
    TT_EQ_INT(h_svc_stop(s, 10000), 0);
    TT_EQ_INT(h_redis_cmd("EXISTS coupon:{drain}:lock"), 0);
    h_check_invariants("drain", 3, 1);
}

/* Migrations are recorded and applied once. */
TT_TEST(migrations_recorded_once, 30) {
    h_begin();
    TT_EQ_INT(h_pg_int("SELECT count(*) FROM schema_migrations"), 2);
    TT_EQ_INT(h_run_migrate(), 0); /* again: nothing to do */
    TT_EQ_INT(h_pg_int("SELECT count(*) FROM schema_migrations"), 2);
    TT_EQ_INT(h_pg_int("SELECT min(version) FROM schema_migrations"), 1);
    /* The constraints the README promises are in the schema. */
    TT_EQ_INT(h_pg_int("SELECT count(*) FROM pg_constraint WHERE conname IN "
                       "('coupons_claimed_within_total','claims_one_per_user',"
                       "'coupon_buckets_claimed_within_total',"
                       "'coupons_sharded_counts_in_buckets',"
                       "'coupons_window_ordered','claims_bucket_exists')"),
              6);
}
