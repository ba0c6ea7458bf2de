/*
 * test_etcd_faults.c: the etcd backend's own scenarios (run with
 * LOCK_BACKEND=etcd: `make test-faults LOCK_BACKEND=etcd T=etcd_`), on the
 * run's 3-member cluster (h_etcd.h), each under a key prefix of its own and
 * each ending with the invariants. Without the etcd backend they pass
 * without running.
 *
 *   etcd_switch_from_redis_raises_offset   a coupon fenced by Redis first
 *   etcd_kill9_holder_freed_by_lease       the holder's lease expires
 *   etcd_leader_killed                     an election under load
 *   etcd_member_partitioned_from_one_instance  the instance fails over
 *   etcd_quorum_lost_then_back             503 within a bound, then recovery
 *   etcd_waiter_gives_up_deletes_its_key   no dead key blocks the queue
 *   etcd_session_lost_every_lock_lost      keep-alive answers no TTL
 *   etcd_auth_user_and_refused_password    auth on, token expiry, refusal
 */
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "faults/load.h"
#include "faults/proxy.h"
#include "itest/harness.h"
#include "tt.h"

#define H_ETCD_ONLY()                                                          \
    do {                                                                       \
        if (!h_etcd_on()) {                                                    \
            printf("    (etcd only: run with LOCK_BACKEND=etcd)\n");           \
            return;                                                            \
        }                                                                      \
    } while (0)

#define E_TTL "COUPON_LOCK_TTL_MS=1000" /* 1 s: the test cluster's floor */
#define E_STOCK 2000
#define E_PAUSE_MS 20

/* ------------------------------------------------------------------------ */

/*
 * A coupon used with the Redis backend first, whose Redis counter was in the
 * millions (a long-lived Redis), then the service switched to etcd. etcd's
 * revisions are far below the coupon's last_fence: without the offset every
 * write would be refused forever. The first etcd claim is refused, finds its
 * key still the owner, raises the offset to last_fence and retries: every
 * claim is answered 201, fences keep rising in commit order.
 */
TT_TEST(etcd_switch_from_redis_raises_offset, 60) {
    H_ETCD_ONLY();
    h_begin();
    h_redis_cmd("SET coupon:{sw}:fence 5000000");
    const char *env_r[] = {"COUPON_LOCK_BACKEND=redis", NULL};
    h_svc_t *r = h_svc_start("sw-redis", env_r);
    h_coupon(r, "sw", 40);
    h_counts_t c;
    h_claim_many(&r, 1, "sw", "on-redis", 10, 4, &c);
    TT_EQ_INT(c.by_status[201], 10);
    long long last = h_pg_int("SELECT last_fence FROM coupons");
    TT_CMP_INT(last, >, 5000000);
    TT_EQ_INT(h_svc_stop(r, 10000), 0);
    h_svc_drop(r);

    h_svc_t *e[2] = {h_svc_start("sw-etcd1", NULL),
                     h_svc_start("sw-etcd2", NULL)};
    h_claim_many(e, 2, "sw", "on-etcd", 20, 4, &c);
    TT_EQ_INT(c.by_status[201], 20); /* no 409, no 503 */
    double rec = h_metric(e[0], "couponsvc_fence_counter_recoveries_total") +
                 h_metric(e[1], "couponsvc_fence_counter_recoveries_total");
    printf("    last Redis fence %lld; offset now %lld; recoveries %.0f\n",
           last, h_etcd_get_int("fence/sw"), rec);
    TT_CMP_INT(rec, >=, 1);
    TT_CMP_INT(h_etcd_get_int("fence/sw"), >=, last);
    h_check_invariants("sw", 40, 30); /* fences rise in commit order */
}

/*
 * kill -9 of the holder: nobody releases its key, nobody keeps its process
 * lease alive; etcd deletes the key when the lease's TTL (1 s) runs out, and
 * the waiter behind it wakes on that delete. No 201 while the key lived.
 */
TT_TEST(etcd_kill9_holder_freed_by_lease, 60) {
    H_ETCD_ONLY();
    h_begin();
    const char *env[] = {E_TTL, "COUPON_LOCK_WAIT_MS=5000", NULL};
    const char *env_v[] = {E_TTL, "COUPON_FAULT=after_acquire:5000",
                           "COUPON_LOCK_WAIT_MS=10000", NULL};
    h_svc_t *a = h_svc_start("k9-a", env), *b = h_svc_start("k9-b", env);
    h_svc_t *v = h_svc_start("k9-victim", env_v);
    h_svc_t *ok[] = {a, b};
    h_coupon(a, "k9", E_STOCK);
    fl_load_t *l = fl_start(ok, 2, "k9", "load", 4, 20000, E_PAUSE_MS);
    fl_wait_201s(l, 20);
    fl_solo_t so;
    fl_solo_start(&so, v, "k9", "victim", 20000);
    TT_CMP_INT(h_wait_metric(v, "couponsvc_leases_held", 1, 10000), >=, 1);
    double t_seen = h_now_ms();
    h_sleep_ms(300);
    double t_kill = h_now_ms();
    kill(v->pid, SIGKILL);
    waitpid(v->pid, NULL, 0);
    h_sleep_ms(3500);
    fl_stop(l);
    fl_solo_join(&so);
    fl_print(l, "load");

    TT_EQ_INT(so.r.status, 0);
    /* The key lived at least TTL - one watchdog period after the kill. */
    TT_EQ_INT(fl_count_within(l, 201, t_seen, t_kill + 500), 0);
    double first = fl_first_after(l, 201, t_kill);
    TT_CMP_INT(first, >, 0);
    printf("    first 201 after the kill: +%.0f ms (lease TTL 1 s)\n",
           first - t_kill);
    TT_CMP_INT(first - t_kill, >=, 500);
    TT_CMP_INT(first - t_kill, <=, 3500);
    TT_EQ_INT(fl_rows_for_user("victim"), 0);
    fl_finish_one(l, "k9", E_STOCK, 0, ok, 2);
}

/*
 * The leader is killed under load: the two others elect a new one (election
 * timeout 500 ms), the instances' calls to the dead member (the first of
 * their endpoints) fail over, claims go on. The member comes back and
 * catches up.
 */
TT_TEST(etcd_leader_killed, 90) {
    H_ETCD_ONLY();
    h_begin();
    const char *env[] = {E_TTL, "COUPON_LOCK_WAIT_MS=5000",
                         "COUPON_ETCD_TIMEOUT_MS=500", NULL};
    h_svc_t *s[3] = {h_svc_start("ld-1", env), h_svc_start("ld-2", env),
                     h_svc_start("ld-3", env)};
    h_coupon(s[0], "ld", E_STOCK);
    fl_load_t *l = fl_start(s, 3, "ld", "load", 6, 20000, E_PAUSE_MS);
    fl_wait_201s(l, 30);
    /* The leader is also the member every instance talks to first: the
     * instances lose their endpoint and the cluster its leader at once. */
    h_etcd_make_leader(0);
    int leader = h_etcd_leader(5000);
    TT_EQ_INT(leader, 0);
    double t_kill = h_now_ms();
    h_etcd_kill(leader);
    int next = h_etcd_leader(10000);
    double t_elected = h_now_ms();
    printf("    killed leader m%d; m%d leads %.0f ms later\n", leader, next,
           t_elected - t_kill);
    TT_CMP_INT(next, >=, 0);
    TT_ASSERT(next != leader);
    h_sleep_ms(2000);
    long during = fl_count_between(l, 201, t_kill, h_now_ms());
    double first = fl_first_after(l, 201, t_kill + 1);
    printf("    201s in the 2 s after the election: %ld; first +%.0f ms\n",
           during, first - t_kill);
    TT_CMP_INT(during, >, 0);
    /* Once the election is over and the dead member's calls have timed
     * out, no claim fails any more: the instances have moved on. */
    long late = fl_count_within(l, 503, t_elected + 1500, h_now_ms());
    TT_EQ_INT(late, 0);
    h_etcd_start(leader);
    h_sleep_ms(1000);
    fl_stop(l);
    fl_print(l, "load");
    fl_finish_one(l, "ld", E_STOCK, 0, s, 3);
}

/*
 * One instance loses its path to the member it talks to (a TCP proxy that
 * black-holes: no reset, no EOF, only silence). Its calls time out after
 * COUPON_ETCD_TIMEOUT_MS and go to the next member: its claims go on during
 * the partition. The other instance never noticed.
 */
TT_TEST(etcd_member_partitioned_from_one_instance, 90) {
    H_ETCD_ONLY();
    h_begin();
    fp_t *p[H_ETCD_MEMBERS];
    char eps[256] = "COUPON_ETCD_ENDPOINTS=";
    for (int i = 0; i < H_ETCD_MEMBERS; i++) {
        p[i] = fp_start(h_etcd_client_port(i));
        size_t o = strlen(eps);
        snprintf(eps + o, sizeof(eps) - o, "%shttp://127.0.0.1:%d",
                 i ? "," : "", fp_port(p[i]));
    }
    const char *env_a[] = {E_TTL, eps, "COUPON_ETCD_TIMEOUT_MS=300",
                           "COUPON_LOCK_WAIT_MS=5000", NULL};
    const char *env_b[] = {E_TTL, "COUPON_LOCK_WAIT_MS=5000", NULL};
    h_svc_t *a = h_svc_start("pt-a", env_a), *b = h_svc_start("pt-b", env_b);
    h_coupon(b, "pt", E_STOCK);
    fl_load_t *la = fl_start(&a, 1, "pt", "a", 3, 20000, E_PAUSE_MS);
    fl_load_t *lb = fl_start(&b, 1, "pt", "b", 3, 20000, E_PAUSE_MS);
    fl_wait_201s(la, 10);
    fl_wait_201s(lb, 10);
    TT_CMP_INT(fp_accepted(p[0]), >, 0); /* A talks to member 0 first */
    double t0 = h_now_ms();
    fp_blackhole(p[0], 1);
    h_sleep_ms(3000);
    double t1 = h_now_ms();
    long a_during = fl_count_between(la, 201, t0 + 1000, t1);
    long b_during = fl_count_between(lb, 201, t0, t1);
    printf("    during the partition: A %ld x 201, B %ld x 201; A reached "
           "member 1 %d times\n",
           a_during, b_during, fp_accepted(p[1]));
    TT_CMP_INT(a_during, >, 0);
    TT_CMP_INT(b_during, >, 0);
    TT_CMP_INT(fp_accepted(p[1]) + fp_accepted(p[2]), >, 0);
    fp_blackhole(p[0], 0);
    h_sleep_ms(500);
    fl_stop(la);
    fl_stop(lb);
    fl_print(la, "A");
    fl_print(lb, "B");
    h_svc_t *ok[] = {b, a};
    fl_load_t *ls[] = {la, lb};
    fl_finish("pt", E_STOCK, ls, 2, 0, ok, 2);
    fl_free(la);
    fl_free(lb);
    for (int i = 0; i < H_ETCD_MEMBERS; i++) {
        fp_stop(p[i]);
    }
}

/*
 * Two of three members killed: no quorum. A grant (a txn) cannot commit, so
 * the claim is answered 503 unavailable, within a bound set by the etcd
 * timeout and the endpoint count (not the client's patience); /readyz
 * reports the lock backend down. The members come back: claims succeed
 * again without restarting the service.
 */
TT_TEST(etcd_quorum_lost_then_back, 90) {
    H_ETCD_ONLY();
    h_begin();
    const char *env[] = {E_TTL, "COUPON_LOCK_WAIT_MS=2000",
                         "COUPON_ETCD_TIMEOUT_MS=500", "COUPON_BATCH_MAX=1",
                         NULL};
    h_svc_t *s = h_svc_start("q-1", env);
    h_coupon(s, "q", 10);
    TT_EQ_INT(h_claim(s, "q", "before", NULL), 201);

    int leader = h_etcd_leader(5000);
    int k1 = (leader + 1) % H_ETCD_MEMBERS, k2 = (leader + 2) % H_ETCD_MEMBERS;
    h_etcd_kill(k1);
    h_etcd_kill(k2);
    h_sleep_ms(300);
    double t0 = h_now_ms();
    json_t *j = NULL;
    long st = h_claim(s, "q", "during", &j);
    double took = h_now_ms() - t0;
    printf("    no quorum: %ld %s in %.0f ms\n", st,
           json_string_value(json_object_get(j, "error")), took);
    TT_EQ_INT(st, 503);
    TT_EQ_STR(json_string_value(json_object_get(j, "error")), "unavailable");
    TT_CMP_INT(took, <, 10000);
    json_decref(j);
    TT_EQ_INT(fl_rows_for_user("during"), 0);

    char url[96], *body = NULL;
    snprintf(url, sizeof(url), "%s/readyz", s->url);
    int down = 0;
    for (int i = 0; i < 60 && !down; i++) {
        free(body);
        body = NULL;
        h_http("GET", url, NULL, NULL, NULL, 0, &body);
        down = strstr(body, "\"up\":false") != NULL;
        if (!down) {
            h_sleep_ms(100);
        }
    }
    printf("    /readyz: %s\n", body);
    /* The lock backend's slot is etcd's, not a Redis nobody uses. */
    int named =
        strstr(body, "\"etcd\"") != NULL && strstr(body, "\"redis\"") == NULL;
    free(body);
    TT_ASSERT(down);
    TT_ASSERT(named);

    h_etcd_start(k1);
    h_etcd_start(k2);
    h_etcd_wait_healthy(20000);
    long after = 0;
    double t1 = h_now_ms();
    for (int i = 0; i < 40 && after != 201; i++) {
        after = h_claim(s, "q", "after", NULL);
        if (after != 201) {
            h_sleep_ms(250);
        }
    }
    printf("    quorum back: 201 after %.0f ms\n", h_now_ms() - t1);
    TT_EQ_INT(after, 201);
    h_check_invariants("q", 10, 2);
}

/*
 * A waiter whose deadline passes deletes its own key. Otherwise its key,
 * on a process lease that lives on, would sit in the queue ahead of every
 * later waiter for as long as the process lives.
 */
typedef struct e_hold {
    h_svc_t *s;
    long status;
} e_hold_t;

static void *e_hold_run(void *p) {
    e_hold_t *h = p;
    h->status = h_claim(h->s, "wg", "holder", NULL);
    return NULL;
}

TT_TEST(etcd_waiter_gives_up_deletes_its_key, 60) {
    H_ETCD_ONLY();
    h_begin();
    const char *env_a[] = {E_TTL, "COUPON_FAULT=before_commit:2000", NULL};
    const char *env_b[] = {E_TTL, "COUPON_LOCK_WAIT_MS=500",
                           "COUPON_BATCH_MAX=1", NULL};
    h_svc_t *a = h_svc_start("wg-a", env_a), *b = h_svc_start("wg-b", env_b);
    h_coupon(b, "wg", 5);
    e_hold_t h = {a, 0};
    pthread_t t;
    pthread_create(&t, NULL, e_hold_run, &h);
    TT_CMP_INT(h_wait_metric(a, "couponsvc_leases_held", 1, 5000), >=, 1);
    TT_EQ_INT(h_etcd_count("lock/wg/"), 1);
    json_t *j = NULL;
    TT_EQ_INT(h_claim(b, "wg", "impatient", &j), 503);
    TT_EQ_STR(json_string_value(json_object_get(j, "error")), "lock_busy");
    json_decref(j);
    long keys = h_etcd_count("lock/wg/");
    printf("    keys in the queue after the waiter gave up: %ld\n", keys);
    TT_EQ_INT(keys, 1); /* the holder's only */
    pthread_join(t, NULL);
    TT_EQ_INT(h.status, 201);
    TT_EQ_INT(h_etcd_count("lock/wg/"), 0);
    TT_EQ_INT(h_claim(b, "wg", "next", NULL), 201);
    h_check_invariants("wg", 5, 2);
}

/*
 * The process lease is revoked behind the service's back (an operator, or
 * etcd expiring it while the process was cut off). The keep-alive of a lease
 * that is gone still answers HTTP 200, with no TTL: the watchdog must read
 * that as "lost", and then every lock of the process is lost. The claim in
 * its critical section is rolled back (503 lease_lost), nothing is written;
 * the next claim runs on a new session.
 */
TT_TEST(etcd_session_lost_every_lock_lost, 60) {
    H_ETCD_ONLY();
    h_begin();
    const char *env[] = {E_TTL, "COUPON_FAULT=before_commit:1500",
                         "COUPON_BATCH_MAX=1", NULL};
    h_svc_t *a = h_svc_start("sl-a", env);
    h_coupon(a, "sl", 5);
    fl_solo_t so;
    fl_solo_start(&so, a, "sl", "orphan", 20000);
    TT_CMP_INT(h_wait_metric(a, "couponsvc_leases_held", 1, 5000), >=, 1);
    TT_EQ_INT(h_etcd_revoke_owner("lock/sl/"), 1);
    fl_solo_join(&so);
    TT_EQ_INT(so.r.status, 503);
    TT_EQ_STR(so.r.error, "lease_lost");
    TT_EQ_INT(fl_rows_for_user("orphan"), 0);
    TT_CMP_INT(h_metric(a, "couponsvc_leases_lost_total"), >=, 1);
    TT_EQ_INT(h_claim(a, "sl", "next", NULL), 201);
    h_check_invariants("sl", 5, 1);
}

/*
 * Auth: a private one-member cluster with auth on (etcdctl, as an operator
 * would set it up: a user whose role has readwrite on the prefix only) and
 * simple tokens that expire after 1 s of disuse. The instance with the
 * right password claims, also after its token expired (code 16: it
 * authenticates again and repeats the call); the one with a wrong password
 * writes nothing, answers 503, and /readyz says it is its own fault (503).
 */
static void e_etcdctl(const char *ep, const char *args) {
    char cmd[512];
    snprintf(cmd, sizeof(cmd),
             "ETCDCTL_API=3 etcdctl --endpoints=%s %s >>'%s/etcdctl.log' 2>&1",
             ep, args, h_test_dir());
    TT_ASSERT_MSG(system(cmd) == 0, "etcdctl %s failed (see etcdctl.log)",
                  args);
}

TT_TEST(etcd_auth_user_and_refused_password, 60) {
    H_ETCD_ONLY();
    h_begin();
    int cport = h_free_port(), pport = h_free_port();
    char curl_[64], purl[64], cluster[96], data[300], log[300];
    snprintf(curl_, sizeof(curl_), "http://127.0.0.1:%d", cport);
    snprintf(purl, sizeof(purl), "http://127.0.0.1:%d", pport);
    snprintf(cluster, sizeof(cluster), "a1=%s", purl);
    snprintf(data, sizeof(data), "%s/auth.etcd", h_test_dir());
    snprintf(log, sizeof(log), "%s/auth-etcd.log", h_test_dir());
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        dup2(fd, 1);
        dup2(fd, 2);
        execlp("etcd", "etcd", "--name", "a1", "--data-dir", data,
               "--listen-client-urls", curl_, "--advertise-client-urls", curl_,
               "--listen-peer-urls", purl, "--initial-advertise-peer-urls",
               purl, "--initial-cluster", cluster, "--auth-token", "simple",
               "--auth-token-ttl", "1", (char *)NULL);
        _exit(127);
    }
    char url[96];
    snprintf(url, sizeof(url), "%s/health", curl_);
    double end = h_now_ms() + 15000;
    while (h_http("GET", url, NULL, NULL, NULL, 0, NULL) != 200) {
        TT_ASSERT_MSG(h_now_ms() < end, "the auth member did not start");
        h_sleep_ms(50);
    }
    e_etcdctl(curl_, "user add root:rootpw");
    e_etcdctl(curl_, "role add couponsvc");
    char grant[160];
    snprintf(grant, sizeof(grant),
             "role grant-permission couponsvc --prefix=true readwrite %s",
             h_etcd_prefix());
    e_etcdctl(curl_, grant);
    e_etcdctl(curl_, "user add svc:svcpw");
    e_etcdctl(curl_, "user grant-role svc couponsvc");
    e_etcdctl(curl_, "auth enable");

    char ep[128];
    snprintf(ep, sizeof(ep), "COUPON_ETCD_ENDPOINTS=%s", curl_);
    const char *good[] = {ep, "COUPON_ETCD_USERNAME=svc",
                          "COUPON_ETCD_PASSWORD=svcpw", NULL};
    const char *bad[] = {ep, "COUPON_ETCD_USERNAME=svc",
                         "COUPON_ETCD_PASSWORD=wrong", NULL};
    h_svc_t *g = h_svc_start("auth-good", good);
    h_svc_t *b = h_svc_start("auth-bad", bad);
    h_coupon(g, "au", 5);
    TT_EQ_INT(h_claim(g, "au", "first", NULL), 201);
    /* Frozen past the token's TTL (its readiness probe would otherwise keep
     * the token in use): the member forgets the token. */
    kill(g->pid, SIGSTOP);
    h_sleep_ms(2500);
    kill(g->pid, SIGCONT);
    TT_EQ_INT(h_claim(g, "au", "after-expiry", NULL), 201);

    json_t *j = NULL;
    TT_EQ_INT(h_claim(b, "au", "intruder", &j), 503);
    TT_EQ_STR(json_string_value(json_object_get(j, "error")), "unavailable");
    json_decref(j);
    TT_EQ_INT(fl_rows_for_user("intruder"), 0);
    snprintf(url, sizeof(url), "%s/readyz", b->url);
    long st = 0;
    char *body = NULL;
    for (int i = 0; i < 50 && st != 503; i++) {
        free(body);
        body = NULL;
        st = h_http("GET", url, NULL, NULL, NULL, 0, &body);
        if (st != 503) {
            h_sleep_ms(100);
        }
    }
    printf("    wrong password: /readyz %ld %s\n", st, body);
    TT_EQ_INT(st, 503);
    TT_CONTAINS(body, "etcd refused this instance's credentials");
    free(body);
    snprintf(url, sizeof(url), "%s/readyz", g->url);
    TT_EQ_INT(h_http("GET", url, NULL, NULL, NULL, 0, NULL), 200);
    h_check_invariants("au", 5, 2);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}
