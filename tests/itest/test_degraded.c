/*
 * test_degraded.c: the degraded mode, COUPON_LOCK_UNAVAILABLE=fail|atomic.
 * Real Redis, PostgreSQL and couponsvc; "Redis is down" for one instance is
 * either a port nothing listens on (connection refused at once) or the TCP
 * proxy of tests/faults/proxy.c black-holing (silence: only the Redis
 * timeout ends each attempt).
 *
 *   - fail (the default): with its Redis gone, a claim answers 503
 *     unavailable within its deadline and writes nothing;
 *   - atomic: the same claims are served lockless, by the atomic mode's
 *     conditional UPDATE: exactly the stock is handed out, counted in
 *     couponsvc_claims_degraded_total and logged;
 *   - atomic is for an unavailable backend only: refused credentials (an
 *     answer, not an outage) still answer 503;
 *   - fenced writers (instances that reach Redis) and a lockless one (its
 *     Redis black-holed) on one coupon under load: the invariants hold.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "faults/proxy.h"
#include "harness.h"
#include "tt.h"

static const char *jerr(json_t *j) {
    json_t *v = json_object_get(j, "error");
    return json_is_string(v) ? json_string_value(v) : "";
}

/* A loopback port nothing listens on: bound once by the kernel's choice,
 * then closed. A connect to it is refused. */
static int dead_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    TT_ASSERT(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    TT_ASSERT(bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0);
    TT_ASSERT(getsockname(fd, (struct sockaddr *)&a, &len) == 0);
    close(fd);
    return ntohs(a.sin_port);
}

/* ----------------------------------------------------------------- fail --- */

/* One claim on s that must be refused: 503 unavailable within the lock-wait
 * deadline (2 s here; the bound is generous, a liveness check, not a speed
 * test) and nothing written. */
static void refused_in_time(const h_svc_t *s, const char *coupon,
                            const char *user) {
    double t0 = h_now_ms();
    json_t *j = NULL;
    long st = h_claim(s, coupon, user, &j);
    double ms = h_now_ms() - t0;
    TT_ASSERT_MSG(st == 503, "%s on %s: %ld %s, want 503 unavailable", user,
                  s->name, st, jerr(j));
    TT_EQ_STR(jerr(j), "unavailable");
    json_decref(j);
    TT_CMP_INT(ms, <, 2000 + 3000);
}

/* The default is fail: Redis refused (a dead port) or silent (a black-holed
 * proxy), combined (batch 32) and not (batch 1): every claim 503 in time,
 * no row, nothing counted as degraded. */
TT_TEST(degraded_fail_503_within_deadline, 90) {
    h_begin();
    fp_t *p = fp_start(h_redis_port());
    char dead[64], hole[64];
    snprintf(dead, sizeof(dead), "COUPON_REDIS_ADDRS=127.0.0.1:%d",
             dead_port());
    snprintf(hole, sizeof(hole), "COUPON_REDIS_ADDRS=127.0.0.1:%d", fp_port(p));
    const char *env_ok[] = {NULL};
    const char *env_dead[] = {dead, "COUPON_LOCK_WAIT_MS=2000", NULL};
    const char *env_dead1[] = {dead, "COUPON_LOCK_WAIT_MS=2000",
                               "COUPON_BATCH_MAX=1", NULL};
    const char *env_hole[] = {hole, "COUPON_LOCK_WAIT_MS=2000",
                              "COUPON_REDIS_TIMEOUT_MS=300", NULL};
    h_svc_t *ok = h_svc_start("fail-ok", env_ok);
    h_svc_t *d = h_svc_start("fail-dead", env_dead);
    h_svc_t *d1 = h_svc_start("fail-dead1", env_dead1);
    h_svc_t *bh = h_svc_start("fail-hole", env_hole);
    h_coupon(ok, "f", 10);
    TT_EQ_INT(h_claim(bh, "f", "before-hole", NULL), 201);

    fp_blackhole(p, 1);
    for (int i = 0; i < 3; i++) {
        char user[32];
        snprintf(user, sizeof(user), "dead-%d", i);
        refused_in_time(d, "f", user);
        snprintf(user, sizeof(user), "dead1-%d", i);
        refused_in_time(d1, "f", user);
        snprintf(user, sizeof(user), "hole-%d", i);
        refused_in_time(bh, "f", user);
    }
    fp_blackhole(p, 0);
    TT_EQ_INT(h_pg_int("SELECT count(*) FROM claims WHERE user_id <> "
                       "'before-hole'"),
              0);
    TT_EQ_INT(h_metric(d, "couponsvc_claims_degraded_total"), 0);
    TT_EQ_INT(h_metric(bh, "couponsvc_claims_degraded_total"), 0);
    TT_EQ_INT(h_claim(ok, "f", "after", NULL), 201);
    h_check_invariants("f", 10, 2);
    fp_stop(p);
}

/* --------------------------------------------------------------- atomic --- */

/* COUPON_LOCK_UNAVAILABLE=atomic with Redis refused: one claim, then 60
 * users for the 24 left of a stock of 25, from 16 threads, combined (batch
 * 32) and not (batch 1): exactly the stock in 201s, the rest 410, no 503,
 * every claim that reached the store counted as degraded, rows without a
 * fence, the mode logged. */
static void atomic_run(const char *batch) {
    h_begin();
    char dead[64];
    snprintf(dead, sizeof(dead), "COUPON_REDIS_ADDRS=127.0.0.1:%d",
             dead_port());
    const char *env[] = {dead, "COUPON_LOCK_UNAVAILABLE=atomic", batch, NULL};
    h_svc_t *ok = h_svc_start("atomic-ok", NULL);
    h_svc_t *s = h_svc_start("atomic-dead", env);
    h_coupon(ok, "a", 25);
    TT_EQ_INT(h_claim(s, "a", "first", NULL), 201);

    h_counts_t c;
    h_svc_t *svcs[] = {s};
    h_claim_many(svcs, 1, "a", "u", 60, 16, &c);
    TT_EQ_INT(c.by_status[201], 25 - 1);
    TT_EQ_INT(c.by_status[410], 60 - 24);
    TT_EQ_INT(c.by_status[503], 0);
    TT_EQ_INT(h_pg_int("SELECT count(*) FROM claims WHERE coupon_id = 'a'"
                       " AND fence IS NULL"),
              25);
    /* Every claim that reached the store went lockless; the others were
     * 410s from the sold-out memo, once the instance had seen the end. */
    double fast = h_metric(s, "couponsvc_soldout_fastpath_total{result="
                              "\"sold_out\"}");
    TT_EQ_INT(h_metric(s, "couponsvc_claims_degraded_total") + fast, 61);
    TT_CMP_INT(h_metric(s, "couponsvc_claims_degraded_total"), >=, 25);
    TT_ASSERT_MSG(h_file_has(s->log, "event=claim.degraded"),
                  "no claim.degraded line in %s", s->log);
    /* A user who holds a claim gets it back. */
    json_t *j = NULL;
    TT_EQ_INT(h_claim(s, "a", "first", &j), 200);
    json_decref(j);
    h_check_invariants("a", 25, 25);
}

TT_TEST(degraded_atomic_exact_stock, 90) {
    atomic_run("COUPON_BATCH_MAX=32");
}

TT_TEST(degraded_atomic_exact_stock_uncombined, 90) {
    atomic_run("COUPON_BATCH_MAX=1");
}

/* A silent Redis (a black-holed proxy) costs a whole Redis timeout per
 * attempt. In the degraded mode one attempt that found it unavailable
 * makes the claims skip the lock for a second before trying again: 20
 * claims one after the other (uncombined), all 201, and far fewer lock
 * attempts than claims (each attempt is one observation of the lock-wait
 * histogram). Without the skip every claim would try, and wait out the
 * 300 ms timeout, first. */
TT_TEST(degraded_atomic_blackhole_skips_lock, 60) {
    h_begin();
    fp_t *p = fp_start(h_redis_port());
    char hole[64];
    snprintf(hole, sizeof(hole), "COUPON_REDIS_ADDRS=127.0.0.1:%d", fp_port(p));
    const char *env[] = {hole, "COUPON_LOCK_UNAVAILABLE=atomic",
                         "COUPON_REDIS_TIMEOUT_MS=300", "COUPON_BATCH_MAX=1",
                         NULL};
    h_svc_t *s = h_svc_start("skip", env);
    h_coupon(s, "k", 30);
    TT_EQ_INT(h_claim(s, "k", "warm", NULL), 201);
    double tries0 = h_metric(s, "couponsvc_lock_wait_seconds_count");
    fp_blackhole(p, 1);
    for (int i = 0; i < 20; i++) {
        char user[16];
        snprintf(user, sizeof(user), "k-%d", i);
        TT_EQ_INT(h_claim(s, "k", user, NULL), 201);
    }
    double tries = h_metric(s, "couponsvc_lock_wait_seconds_count") - tries0;
    printf("# lock attempts for 20 claims with Redis silent: %.0f\n", tries);
    TT_CMP_INT(tries, >=, 1);
    TT_CMP_INT(tries, <=, 10);
    TT_EQ_INT(h_metric(s, "couponsvc_claims_degraded_total"), 20);
    fp_blackhole(p, 0);
    h_check_invariants("k", 30, 21);
    fp_stop(p);
}

/* Refused credentials are an answer, not an outage: with
 * COUPON_LOCK_UNAVAILABLE=atomic and a wrong Redis password, a claim still
 * answers 503 and nothing is written lockless. */
TT_TEST(degraded_atomic_not_on_auth_error, 60) {
    h_begin();
    h_redis_restart_acl("right-password");
    const char *env_ok[] = {"COUPON_REDIS_USERNAME=couponsvc",
                            "COUPON_REDIS_PASSWORD=right-password", NULL};
    const char *env_bad[] = {"COUPON_REDIS_USERNAME=couponsvc",
                             "COUPON_REDIS_PASSWORD=wrong-password",
                             "COUPON_LOCK_UNAVAILABLE=atomic", NULL};
    h_svc_t *ok = h_svc_start("auth-ok", env_ok);
    h_svc_t *bad = h_svc_start("auth-bad", env_bad);
    h_coupon(ok, "p", 10);
    json_t *j = NULL;
    TT_EQ_INT(h_claim(bad, "p", "refused", &j), 503);
    TT_EQ_STR(jerr(j), "unavailable");
    json_decref(j);
    TT_EQ_INT(h_pg_int("SELECT count(*) FROM claims"), 0);
    TT_EQ_INT(h_metric(bad, "couponsvc_claims_degraded_total"), 0);
    TT_EQ_INT(h_claim(ok, "p", "fine", NULL), 201);
    h_check_invariants("p", 10, 1);
}

/* ------------------------------------------------------------ mixed --- */

/* Two instances reach Redis and write fenced; a third (atomic) reaches it
 * through a proxy that black-holes once the load runs: its claims go
 * lockless. 900 users, 300 at a time, for a stock of 400 on one coupon,
 * round robin over the three. The invariants hold: no oversell, rows =
 * claimed, one claim per user, every 201 durable, and the fenced rows'
 * fences rise in commit order around the lockless ones. Both kinds of row
 * are there. */
typedef struct mixed_arg {
    h_svc_t *const *svcs;
    h_counts_t c;
} mixed_arg_t;

static void *mixed_load(void *p) {
    mixed_arg_t *a = p;
    h_claim_many(a->svcs, 3, "mix", "m", 900, 48, &a->c);
    return NULL;
}

TT_TEST(degraded_mixed_fenced_and_lockless, 120) {
    h_begin();
    fp_t *p = fp_start(h_redis_port());
    char hole[64];
    snprintf(hole, sizeof(hole), "COUPON_REDIS_ADDRS=127.0.0.1:%d", fp_port(p));
    /* A lease the lockless instance held when its Redis went silent is
     * never released: a 1 s TTL frees it well within the others' wait. */
    const char *env_f[] = {"COUPON_LOCK_WAIT_MS=5000",
                           "COUPON_LOCK_TTL_MS=1000", NULL};
    const char *env_l[] = {hole,
                           "COUPON_LOCK_UNAVAILABLE=atomic",
                           "COUPON_REDIS_TIMEOUT_MS=100",
                           "COUPON_LOCK_TTL_MS=1000",
                           "COUPON_LOCK_WAIT_MS=5000",
                           NULL};
    h_svc_t *f1 = h_svc_start("mix-f1", env_f);
    h_svc_t *f2 = h_svc_start("mix-f2", env_f);
    h_svc_t *l = h_svc_start("mix-lockless", env_l);
    h_coupon(f1, "mix", 400);
    /* The lockless instance starts with a working Redis (and takes the lock
     * like the others), then loses it under load. */
    TT_EQ_INT(h_claim(l, "mix", "warm", NULL), 201);

    h_svc_t *svcs[] = {f1, f2, l};
    mixed_arg_t a = {.svcs = svcs};
    pthread_t t;
    pthread_create(&t, NULL, mixed_load, &a);
    /* Redis goes silent once the load is under way with most of the stock
     * left: a fixed delay was sometimes longer than the whole sale. */
    for (int i = 0; i < 5000 && h_pg_int("SELECT count(*) FROM claims WHERE"
                                         " coupon_id = 'mix'") < 40;
         i++) {
        h_sleep_ms(2);
    }
    fp_blackhole(p, 1);
    pthread_join(t, NULL);

    /* Demand is more than twice the stock: it sells out even if a few
     * claims caught in the moment Redis went silent answer 503. */
    long n201 = a.c.by_status[201], n410 = a.c.by_status[410];
    long n503 = a.c.by_status[503];
    TT_ASSERT_MSG(n201 + 1 == 400, "201s: %ld (+1 warm), want the stock", n201);
    TT_ASSERT_MSG(n201 + n410 + n503 == 900,
                  "201 %ld + 410 %ld + 503 %ld: other answers", n201, n410,
                  n503);
    TT_CMP_INT(n503, <, 100);
    long long lockless = h_pg_int("SELECT count(*) FROM claims WHERE"
                                  " coupon_id = 'mix' AND fence IS NULL");
    long long fenced = h_pg_int("SELECT count(*) FROM claims WHERE"
                                " coupon_id = 'mix' AND fence IS NOT NULL");
    TT_CMP_INT(lockless, >, 0);
    TT_CMP_INT(fenced, >, 0);
    TT_CMP_INT(h_metric(l, "couponsvc_claims_degraded_total"), >=, lockless);
    h_check_invariants("mix", 400, n201 + 1);
    fp_blackhole(p, 0);
    fp_stop(p);
}
