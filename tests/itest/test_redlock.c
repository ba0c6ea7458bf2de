/*
 * test_redlock.c: the Redlock backend (COUPON_REDIS_ADDRS with 3
 * independent Redis nodes, each a real redis-server on a free port): exact
 * stock with fences rising in grant order, a minority down keeps granting,
 * a majority down is "unavailable" (kind io) within the claim's deadline,
 * waiters woken once per release although every node announces it, and
 * the start-up refusals (an even count, a replica, a duplicate).
 */
#include <hiredis/hiredis.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "faults/proxy.h"
#include "harness.h"
#include "lw_common.h"
#include "tt.h"

/* Three independent nodes; *env_out gets COUPON_REDIS_ADDRS for them
 * (static storage). */
static void rl_nodes(int port[3], const char **env_out) {
    static char addrs[200];
    for (int i = 0; i < 3; i++) {
        char name[16];
        snprintf(name, sizeof(name), "redlock%d", i + 1);
        port[i] = h_redis_extra_start(name);
    }
    snprintf(addrs, sizeof(addrs),
             "COUPON_REDIS_ADDRS=127.0.0.1:%d,127.0.0.1:%d,127.0.0.1:%d",
             port[0], port[1], port[2]);
    *env_out = addrs;
}

/* Stops the node at port at once (SHUTDOWN NOSAVE: no reply comes). */
static void rl_node_down(int port) {
    struct timeval tv = {2, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
    TT_ASSERT(c != NULL && c->err == 0);
    redisReply *r = redisCommand(c, "SHUTDOWN NOSAVE");
    if (r != NULL) {
        freeReplyObject(r);
    }
    redisFree(c);
    for (int i = 0; i < 100; i++) { /* until it refuses connections */
        c = redisConnectWithTimeout("127.0.0.1", port, tv);
        int up = c != NULL && c->err == 0;
        redisFree(c);
        if (!up) {
            return;
        }
        h_sleep_ms(20);
    }
    TT_ASSERT_MSG(0, "redis on port %d did not stop", port);
}

/* The fences of s's lock.acquired lines for resource, in log order (grant
 * order within one process). Returns how many (at most max). */
static int rl_grants(const h_svc_t *s, const char *resource, long long *fence,
                     int max, int *redlock_lines) {
    FILE *f = fopen(s->log, "r");
    TT_ASSERT(f != NULL);
    char line[2048], want[128];
    snprintf(want, sizeof(want), "resource=%s fence=", resource);
    int n = 0;
    *redlock_lines = 0;
    while (fgets(line, sizeof(line), f) != NULL) {
        const char *p = strstr(line, "event=lock.acquired ");
        const char *q = p != NULL ? strstr(p, want) : NULL;
        if (q == NULL) {
            continue;
        }
        *redlock_lines += strstr(p, " backend=redlock") != NULL;
        if (n < max) {
            fence[n++] = atoll(q + strlen(want));
        }
    }
    fclose(f);
    return n;
}

/* Redis's integer reply for GET on a counter at port, 0 when absent. */
static long long rl_counter(int port, const char *key) {
    redisReply *r = h_redis_reply_at(port, "GET %s", key);
    long long v = r->type == REDIS_REPLY_STRING ? atoll(r->str) : 0;
    freeReplyObject(r);
    return v;
}

/* 2 instances on 3 nodes, stock 10, 150 users at once: exactly ten 201s;
 * each instance's grants carry strictly rising fences in grant order; the
 * highest fence granted stands on a majority of the nodes' counters (the
 * write-back). */
TT_TEST(redlock_three_nodes_exact_stock, 90) {
    H_REDIS_ONLY(); /* a Redis topology of its own */
    h_begin();
    int port[3];
    const char *addrs;
    rl_nodes(port, &addrs);
    const char *env[] = {addrs, "COUPON_LOCK_WAIT_MS=20000",
                         "COUPON_BATCH_MAX=1", NULL};
    h_svc_t *s[2] = {h_svc_start("rl1", env), h_svc_start("rl2", env)};
    h_coupon(s[0], "rl", 10);
    h_counts_t c;
    h_claim_many(s, 2, "rl", "user", 150, 24, &c);
    TT_EQ_INT(c.by_status[201], 10);
    TT_EQ_INT(c.by_status[410], 140);
    h_check_invariants("rl", 10, c.by_status[201]);

    long long top = 0;
    int grants = 0;
    for (int k = 0; k < 2; k++) {
        long long f[400];
        int redlock = 0;
        int n = rl_grants(s[k], "rl", f, 400, &redlock);
        TT_EQ_INT(redlock, n);
        grants += n;
        for (int i = 1; i < n; i++) {
            TT_ASSERT_MSG(f[i] > f[i - 1], "%s: grant %d fence %lld after %lld",
                          s[k]->name, i, f[i], f[i - 1]);
        }
        if (n > 0 && f[n - 1] > top) {
            top = f[n - 1];
        }
    }
    TT_CMP_INT(grants, >=, 10);
    int at_top = 0;
    for (int i = 0; i < 3; i++) {
        at_top += rl_counter(port[i], "coupon:{rl}:fence") >= top;
    }
    TT_CMP_INT(at_top, >=, 2);
}

/* One node of three down: claims go on (exact stock); a second down: the
 * claim answers 503 unavailable, with the Redlock error of kind io, well
 * within its deadline, and /readyz reports the outage (not a refusal). */
TT_TEST(redlock_minority_down_then_majority_down, 90) {
    H_REDIS_ONLY(); /* a Redis topology of its own */
    h_begin();
    int port[3];
    const char *addrs;
    rl_nodes(port, &addrs);
    const char *env[] = {addrs, "COUPON_LOCK_WAIT_MS=3000",
                         "COUPON_REDIS_TIMEOUT_MS=300", "COUPON_BATCH_MAX=1",
                         NULL};
    h_svc_t *s = h_svc_start("rlm", env);
    h_coupon(s, "min", 5);

    rl_node_down(port[2]);
    h_counts_t c;
    h_claim_many(&s, 1, "min", "m", 40, 8, &c);
    TT_EQ_INT(c.by_status[201], 5);
    TT_EQ_INT(c.by_status[410], 35);
    h_check_invariants("min", 5, 5);

    h_coupon(s, "maj", 5);
    rl_node_down(port[1]);
    json_t *j = NULL;
    double t0 = h_now_ms();
    long st = h_claim(s, "maj", "late", &j);
    double took = h_now_ms() - t0;
    TT_EQ_INT(st, 503);
    const char *err = json_string_value(json_object_get(j, "error"));
    const char *detail = json_string_value(json_object_get(j, "detail"));
    TT_ASSERT(err != NULL && detail != NULL);
    TT_EQ_STR(err, "unavailable");
    TT_ASSERT_MSG(strstr(detail, "redlock (io): acquire: 1 of 3 nodes") != NULL,
                  "detail: %s", detail);
    /* One round with a 300 ms deadline, never the 3 s lock wait: an outage
     * is not waited out like a busy lock. */
    TT_CMP_INT((long)took, <, 2500);
    json_decref(j);

    /* /readyz reports the outage (kind io: every replica is in the same
     * spot, so it stays ready), not a refusal of this instance's own. */
    char url[128], *body = NULL;
    snprintf(url, sizeof(url), "%s/readyz", s->url);
    double end = h_now_ms() + 10000;
    long rs = 0;
    for (;;) {
        rs = h_http("GET", url, NULL, NULL, NULL, 0, &body);
        if ((body != NULL && strstr(body, "redlock (io)") != NULL) ||
            h_now_ms() > end) {
            break;
        }
        free(body);
        body = NULL;
        h_sleep_ms(100);
    }
    TT_EQ_INT(rs, 200);
    TT_ASSERT_MSG(body != NULL && strstr(body, "redlock (io)") != NULL &&
                      strstr(body, "\"state\":\"down\"") != NULL,
                  "readyz: %s", body != NULL ? body : "");
    free(body);
    TT_EQ_INT(h_pg_int("SELECT claimed FROM coupons WHERE id = 'maj'"), 0);
}

/* Runs couponsvc with env added to the test's own (a start that must
 * fail): returns its exit status; its output is in the file out. */
static int rl_run(const char *const *env, const char *out) {
    const char *bin = getenv("COUPONSVC_BIN");
    TT_ASSERT_MSG(bin != NULL, "COUPONSVC_BIN is not set");
    char dsn[400], http[64];
    snprintf(dsn, sizeof(dsn), "COUPON_PG_DSN=%s", h_dsn());
    snprintf(http, sizeof(http), "COUPON_HTTP_ADDR=127.0.0.1:1");
    pid_t pid = fork();
    TT_ASSERT(pid >= 0);
    if (pid == 0) {
        FILE *f = freopen(out, "w", stderr);
        (void)f;
        dup2(2, 1);
        putenv(dsn);
        putenv(http);
        for (int i = 0; env[i] != NULL; i++) {
            putenv((char *)env[i]);
        }
        execl(bin, bin, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 200; i++) { /* 10 s */
        int st = 0;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        }
        h_sleep_ms(50);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    TT_ASSERT_MSG(0, "couponsvc did not exit (it should refuse to start)");
    return -1;
}

/* An even count, a replica among the nodes, one node listed twice (also
 * under another name), one node reached twice (through a TCP proxy: two
 * addresses, one run_id): couponsvc refuses to start, saying which and
 * why. */
TT_TEST(redlock_startup_refusals, 90) {
    H_REDIS_ONLY(); /* a Redis topology of its own */
    h_begin();
    int port[3];
    const char *addrs;
    rl_nodes(port, &addrs);
    char out[600], env[300];
    const char *e[] = {env, NULL};

    snprintf(out, sizeof(out), "%s/even.out", h_test_dir());
    snprintf(env, sizeof(env), "COUPON_REDIS_ADDRS=127.0.0.1:%d,127.0.0.1:%d",
             port[0], port[1]);
    TT_EQ_INT(rl_run(e, out), 1);
    TT_ASSERT(h_file_has(out, "names 2 Redis nodes"));

    snprintf(out, sizeof(out), "%s/dup.out", h_test_dir());
    snprintf(env, sizeof(env),
             "COUPON_REDIS_ADDRS=127.0.0.1:%d,127.0.0.1:%d,localhost:%d",
             port[0], port[1], port[0]);
    TT_EQ_INT(rl_run(e, out), 1);
    TT_ASSERT(h_file_has(out, "lists one node twice: entries 1"));

    fp_t *px = fp_start(port[1]);
    snprintf(out, sizeof(out), "%s/runid.out", h_test_dir());
    snprintf(env, sizeof(env),
             "COUPON_REDIS_ADDRS=127.0.0.1:%d,127.0.0.1:%d,127.0.0.1:%d",
             port[0], port[1], fp_port(px));
    TT_EQ_INT(rl_run(e, out), 1);
    TT_ASSERT(h_file_has(out, "(entries 2 and 3 of COUPON_REDIS_ADDRS) are "
                              "one Redis server"));
    fp_stop(px);

    h_redis_cmd_at(port[2], "REPLICAOF 127.0.0.1 %d", port[0]);
    snprintf(out, sizeof(out), "%s/replica.out", h_test_dir());
    snprintf(env, sizeof(env), "%s", addrs);
    TT_EQ_INT(rl_run(e, out), 1);
    TT_ASSERT(h_file_has(out, "(entry 3 of COUPON_REDIS_ADDRS) is not a "
                              "master: its ROLE is slave"));

    /* Three masters again: it starts, and logs the topology. */
    h_redis_cmd_at(port[2], "REPLICAOF NO ONE");
    const char *ok[] = {addrs, NULL};
    h_svc_t *s = h_svc_start("rlok", ok);
    TT_ASSERT(h_file_has(s->log, "event=lock.topology backend=redlock "
                                 "nodes=3 majority=2 checked=3"));
}

/* Waiting on 3 nodes: three claims wait for a lock held on every node by a
 * token the service does not know. Its release, announced by all three
 * nodes, wakes ONE waiter (the announcements carry the token and are
 * counted once); each claim holds the lock 600 ms (a fault pause), so the
 * others stay asleep until its own release. All three get the lock, in
 * turn, with rising fences. */
TT_TEST(redlock_wait_one_wake_per_release, 60) {
    H_REDIS_ONLY(); /* a Redis topology of its own */
    h_begin();
    int port[3];
    const char *addrs;
    rl_nodes(port, &addrs);
    const char *env[] = {addrs,
                         "COUPON_LOCK_WAIT_MS=15000",
                         "COUPON_LOCK_RECHECK_MS=250",
                         "COUPON_THREADS=4",
                         "COUPON_FAULT=after_acquire:600",
                         LW_UNCOMBINED,
                         NULL};
    h_svc_t *s = h_svc_start("rlw", env);
    h_coupon(s, "rlw", 5);
    for (int i = 0; i < 3; i++) {
        h_redis_cmd_at(port[i], "SET coupon:{rlw}:lock outsider PX 30000");
    }
    lw_claim_t c[3];
    char user[3][8];
    for (int i = 0; i < 3; i++) {
        snprintf(user[i], sizeof(user[i]), "w%d", i);
        lw_claim_start(&c[i], s, "rlw", user[i]);
        TT_EQ_INT(h_wait_metric(s, LW_WAITERS, i + 1, 5000), i + 1);
    }
    h_sleep_ms(300);
    double msg0 = h_metric(s, LW_WAKE_MESSAGE);
    for (int i = 0; i < 3; i++) {
        h_redis_cmd_at(port[i], "EVAL %s 1 coupon:{rlw}:lock outsider %s",
                       "if redis.call('GET', KEYS[1]) == ARGV[1] then "
                       "redis.call('DEL', KEYS[1]) "
                       "return redis.call('PUBLISH', ARGV[2], ARGV[1]) end "
                       "return 0",
                       "coupon:{rlw}:released");
    }
    h_wait_metric(s, LW_WAKE_MESSAGE, msg0 + 1, 5000);
    h_sleep_ms(300); /* the first winner still holds it (600 ms) */
    TT_EQ_INT(h_metric(s, LW_WAKE_MESSAGE) - msg0, 1);
    long long fence[3];
    for (int i = 0; i < 3; i++) {
        lw_claim_join(&c[i]);
        TT_EQ_INT(c[i].status, 201);
        fence[i] = c[i].fence;
    }
    /* Two more releases had waiters (the first and second winner's). */
    TT_EQ_INT(h_metric(s, LW_WAKE_MESSAGE) - msg0, 3);
    TT_ASSERT(fence[0] != fence[1] && fence[1] != fence[2]);
    h_check_invariants("rlw", 5, 3);
}

/* Calls of EVAL the node at port has served so far (INFO commandstats). */
static long long rl_evals(int port) {
    redisReply *r = h_redis_reply_at(port, "INFO commandstats");
    TT_ASSERT(r->type == REDIS_REPLY_STRING);
    const char *p = strstr(r->str, "cmdstat_eval:calls=");
    long long v = p != NULL ? atoll(p + strlen("cmdstat_eval:calls=")) : 0;
    freeReplyObject(r);
    return v;
}

/*
 * A waiter's attempts are bounded by its wakes. Another client holds the
 * lock on nodes 1 and 2 (a majority), node 0 is free: every attempt of the
 * waiter is granted there, draws a fence on node 0 and is taken back.
 * Nothing is released meanwhile, so nothing may wake the waiter but its
 * re-check (every 200 ms): over a 1.5 s wait that is about ten attempts.
 * Counted twice, by node 0's fence counter (one INCR per attempt) and by
 * the EVALs it served (an attempt and its undo, each one EVAL); the bound
 * is generous (60 attempts), a retry loop makes thousands. First with the
 * holder a token the service does not know, then with the holder a claim
 * of another instance (which renews its lease meanwhile).
 */
TT_TEST(redlock_waiter_attempts_bounded, 60) {
    H_REDIS_ONLY(); /* a Redis topology of its own */
    h_begin();
    int port[3];
    const char *addrs;
    rl_nodes(port, &addrs);
    const char *env[] = {addrs, "COUPON_LOCK_WAIT_MS=1500",
                         "COUPON_LOCK_RECHECK_MS=200", LW_UNCOMBINED, NULL};
    const char *env_h[] = {addrs,
                           "COUPON_LOCK_WAIT_MS=1500",
                           "COUPON_LOCK_TTL_MS=1000",
                           "COUPON_FAULT=after_acquire:3000",
                           LW_UNCOMBINED,
                           NULL};
    h_svc_t *w = h_svc_start("rlb-w", env);
    h_svc_t *hold = h_svc_start("rlb-h", env_h);
    h_coupon(w, "rlb", 5);
    for (int round = 0; round < 2; round++) {
        lw_claim_t hc;
        if (round == 0) {
            for (int i = 1; i < 3; i++) {
                h_redis_cmd_at(port[i],
                               "SET coupon:{rlb}:lock outsider PX 30000");
            }
        } else {
            lw_claim_start(&hc, hold, "rlb", "holder");
            double end = h_now_ms() + 5000;
            while (h_node_int(port[0], "EXISTS coupon:{rlb}:lock") != 1) {
                TT_ASSERT_MSG(h_now_ms() < end, "the holder got no grant");
                h_sleep_ms(5);
            }
            /* The holder keeps nodes 1 and 2; node 0 is free. */
            h_redis_cmd_at(port[0], "DEL coupon:{rlb}:lock");
        }
        long long f0 = rl_counter(port[0], "coupon:{rlb}:fence");
        long long e0 = rl_evals(port[0]);
        lw_claim_t c;
        lw_claim_start(&c, w, "rlb", round == 0 ? "waiter0" : "waiter1");
        lw_claim_join(&c);
        long long f1 = rl_counter(port[0], "coupon:{rlb}:fence");
        long long e1 = rl_evals(port[0]);
        printf("    round %d: the waiter's claim %ld; node 0's fence %lld -> "
               "%lld, its EVALs %lld -> %lld\n",
               round, c.status, f0, f1, e0, e1);
        TT_EQ_INT(c.status, 503);
        TT_CMP_INT(f1 - f0, >=, 1);
        TT_CMP_INT(f1 - f0, <=, 60);
        TT_CMP_INT(e1 - e0, <=, 2 * 60 + 20);
        if (round == 0) {
            for (int i = 1; i < 3; i++) {
                h_redis_cmd_at(port[i], "DEL coupon:{rlb}:lock");
            }
        } else {
            lw_claim_join(&hc);
            TT_EQ_INT(hc.status, 201);
        }
    }
}

/* The write-back's adversary: while it runs, deletes every lock key on
 * the node at port that is not the outsider's (the waiter's grant there
 * vanishes before its write-back can see it). */
typedef struct rl_thief {
    int port;
    atomic_int stop; /* set by the test, read by the thief */
    long stolen;
    pthread_t t;
} rl_thief_t;

static void *rl__thief_run(void *p) {
    rl_thief_t *th = p;
    struct timeval tv = {2, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", th->port, tv);
    for (int i = 0;
         c != NULL && c->err == 0 && !atomic_load(&th->stop) && i < 20000;
         i++) {
        redisReply *r = redisCommand(
            c, "EVAL %s 1 coupon:{rlwb}:lock",
            "local v = redis.call('GET', KEYS[1]) "
            "if v and v ~= 'outsider' then return redis.call('DEL', KEYS[1]) "
            "end return 0");
        th->stolen +=
            r != NULL && r->type == REDIS_REPLY_INTEGER && r->integer == 1;
        if (r != NULL) {
            freeReplyObject(r);
        }
        h_sleep_ms(2);
    }
    if (c != NULL) {
        redisFree(c);
    }
    return NULL;
}

/*
 * A refused write-back wakes nobody. The outsider holds node 2; the
 * waiter's every attempt is granted on nodes 0 and 1 and pauses 100 ms
 * before its write-back (a fault pause), while a thief deletes its key on
 * node 1: the write-back is refused there, the lease never becomes usable
 * and the attempt is taken back. Nothing was ever released, so the
 * waiter's subscribers must deliver no release message (its own node 0's
 * announcement of a lock it never had would wake it at once, and the next
 * refused attempt would wake it again: attempts bounded by no wake). Its
 * attempts are bounded by the re-checks: about 2 s / (250 ms + 100 ms).
 */
TT_TEST(redlock_refused_writeback_wakes_nobody, 60) {
    H_REDIS_ONLY(); /* a Redis topology of its own */
    h_begin();
    int port[3];
    const char *addrs;
    rl_nodes(port, &addrs);
    const char *env[] = {addrs,
                         "COUPON_LOCK_WAIT_MS=2000",
                         "COUPON_LOCK_RECHECK_MS=250",
                         "COUPON_FAULT=before_writeback:100",
                         LW_UNCOMBINED,
                         NULL};
    h_svc_t *w = h_svc_start("rlwb", env);
    h_coupon(w, "rlwb", 5);
    h_redis_cmd_at(port[2], "SET coupon:{rlwb}:lock outsider PX 30000");
    rl_thief_t th = {.port = port[1]};
    TT_ASSERT(pthread_create(&th.t, NULL, rl__thief_run, &th) == 0);
    double msg0 = h_metric(w, LW_WAKE_MESSAGE);
    long long f0 = rl_counter(port[0], "coupon:{rlwb}:fence");
    lw_claim_t c;
    lw_claim_start(&c, w, "rlwb", "waiter");
    lw_claim_join(&c);
    atomic_store(&th.stop, 1);
    pthread_join(th.t, NULL);
    long long f1 = rl_counter(port[0], "coupon:{rlwb}:fence");
    double msgs = h_metric(w, LW_WAKE_MESSAGE) - msg0;
    printf("    claim %ld; %ld grants stolen on node 1; node 0's fence "
           "%lld -> %lld; %.0f message wakes\n",
           c.status, th.stolen, f0, f1, msgs);
    TT_EQ_INT(c.status, 503);
    TT_CMP_INT(th.stolen, >=, 1);
    TT_EQ_INT(msgs, 0);
    TT_CMP_INT(f1 - f0, <=, 20);
}

/* Creates the service's ACL user on the node at port with exactly the
 * shipped rule (deploy/redis/couponsvc.acl) and password pass. */
static void rl_acl_user(int port, const char *pass) {
    char rule[1024], pw[64];
    snprintf(rule, sizeof(rule), "%s", h_acl_rule() + strlen("user "));
    snprintf(pw, sizeof(pw), ">%s", pass);
    const char *argv[64] = {"ACL", "SETUSER"};
    int argc = 2;
    for (char *save = NULL, *t = strtok_r(rule, " ", &save);
         t != NULL && argc < 62; t = strtok_r(NULL, " ", &save)) {
        argv[argc++] = t;
    }
    argv[argc++] = pw;
    struct timeval tv = {2, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
    TT_ASSERT(c != NULL && c->err == 0);
    redisReply *r = redisCommandArgv(c, argc, argv, NULL);
    TT_ASSERT_MSG(r != NULL && r->type == REDIS_REPLY_STATUS, "ACL SETUSER: %s",
                  r != NULL ? r->str : c->errstr);
    freeReplyObject(r);
    redisFree(c);
}

/* The entries of ACL LOG on the node at port (denials). */
static long rl_acl_denials(int port) {
    redisReply *r = h_redis_reply_at(port, "ACL LOG");
    TT_ASSERT(r->type == REDIS_REPLY_ARRAY);
    long n = (long)r->elements;
    freeReplyObject(r);
    return n;
}

/*
 * Redlock under the shipped ACL rule: the start-up topology check runs
 * with the service's own user (ROLE and INFO server are granted), so a
 * replica among the nodes is refused, as without ACLs; three masters
 * start with all three checked, claims work, and no node denied the user
 * anything (ACL LOG empty).
 */
TT_TEST(redlock_acl_user_topology_checked, 90) {
    H_REDIS_ONLY(); /* a Redis topology of its own */
    h_begin();
    int port[3];
    const char *addrs;
    rl_nodes(port, &addrs);
    for (int i = 0; i < 3; i++) {
        rl_acl_user(port[i], "rl-acl-pass");
    }
    const char *e[] = {addrs, "COUPON_REDIS_USERNAME=couponsvc",
                       "COUPON_REDIS_PASSWORD=rl-acl-pass", NULL};
    char out[600];
    h_redis_cmd_at(port[2], "REPLICAOF 127.0.0.1 %d", port[0]);
    snprintf(out, sizeof(out), "%s/acl-replica.out", h_test_dir());
    TT_EQ_INT(rl_run(e, out), 1);
    TT_ASSERT(h_file_has(out, "(entry 3 of COUPON_REDIS_ADDRS) is not a "
                              "master: its ROLE is slave"));
    TT_ASSERT(!h_file_has(out, "lock.topology_unchecked"));

    h_redis_cmd_at(port[2], "REPLICAOF NO ONE");
    h_svc_t *s = h_svc_start("rlacl", e);
    TT_ASSERT(h_file_has(s->log, "event=lock.topology backend=redlock "
                                 "nodes=3 majority=2 checked=3"));
    h_coupon(s, "rlacl", 5);
    json_t *j = NULL;
    TT_EQ_INT(h_claim(s, "rlacl", "u1", &j), 201);
    json_decref(j);
    for (int i = 0; i < 3; i++) {
        TT_EQ_INT(rl_acl_denials(port[i]), 0);
    }
    h_check_invariants("rlacl", 5, 1);
}

/* Fairness across processes under Redlock (lock_wait.c's handoff): A
 * claims in a closed loop from 16 threads on a hot coupon; B, with a
 * short lock wait (300 ms), claims 20 times, one after the other. The
 * release's reply from each node counts the other processes waiting, so
 * A's hint (its debug line lock.handoff_hint) must say one other process
 * (B) at some point, and never more: the maximum over the nodes, less
 * A's own subscription there (the sum would say 3, without taking ours
 * off 2). And B gets the lock every time within its wait: a liveness
 * bound (no starved waiter), not a speed. */
TT_TEST(redlock_no_replica_starves, 120) {
    H_REDIS_ONLY(); /* a Redis topology of its own */
    h_begin();
    int port[3];
    const char *addrs;
    rl_nodes(port, &addrs);
    /* B's wait covers one of A's turns with room to spare: 300 ms, or
     * 1500 ms under ThreadSanitizer (its builds run the service 5 to 15
     * times slower; its pass exports TSAN_OPTIONS). The 300 ms bound, the
     * one a build without the handoff fails, holds in every other run. */
    const char *envb[] = {addrs,
                          getenv("TSAN_OPTIONS") != NULL
                              ? "COUPON_LOCK_WAIT_MS=1500"
                              : "COUPON_LOCK_WAIT_MS=300",
                          NULL};
    const char *enva[] = {addrs, "COUPON_LOCK_WAIT_MS=20000",
                          "COUPON_LOG_LEVEL=debug", NULL};
    lw_fair_t l = {.a = h_svc_start("rlfa", enva), .coupon = "rlf", .n = 1500};
    h_svc_t *b = h_svc_start("rlfb", envb);
    h_coupon(l.a, "rlf", 4000);
    lw_fair_run(&l, b);
    printf("    B: %ld of 20 claims ran out of lock wait; A had %g grants\n",
           l.b_busy, l.a_grants);
    FILE *f = fopen(l.a->log, "r");
    TT_ASSERT(f != NULL);
    char line[2048];
    int hints = 0, top = 0;
    while (fgets(line, sizeof(line), f) != NULL) {
        const char *p =
            strstr(line, "event=lock.handoff_hint resource=rlf others=");
        if (p != NULL) {
            int k = atoi(p + strlen("event=lock.handoff_hint resource=rlf "
                                    "others="));
            hints++;
            top = k > top ? k : top;
        }
    }
    fclose(f);
    printf("    A's hint changed %d times; at most %d other process\n", hints,
           top);
    TT_EQ_INT(top, 1);
    lw_fair_check(&l, 4000);
}
