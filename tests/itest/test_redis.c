/*
 * test_redis.c: Redis authentication with the shipped ACL rule, and the
 * readiness probe (what /readyz says, and that it answers on the event loop
 * whatever the claims are doing). Real Redis, PostgreSQL and couponsvc.
 */
#include <arpa/inet.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "harness.h"
#include "lock_scripts.h"
#include "tt.h"

#define SVC_PASS "svc-test-pw"

/* GET /readyz; returns the status and the parsed body (new ref). */
static long readyz(const h_svc_t *s, json_t **body) {
    char url[96], *text = NULL;
    snprintf(url, sizeof(url), "%s/readyz", s->url);
    long st = h_http("GET", url, NULL, NULL, NULL, 0, &text);
    *body = text != NULL ? json_loads(text, 0, NULL) : NULL;
    TT_ASSERT_MSG(*body != NULL, "/readyz body is not JSON: %s",
                  text != NULL ? text : "(none)");
    free(text);
    return st;
}

/* The string at body.backends.<backend>.<field>, or "" if absent. */
static const char *backend_str(json_t *body, const char *backend,
                               const char *field) {
    json_t *v = json_object_get(
        json_object_get(json_object_get(body, "backends"), backend), field);
    return json_is_string(v) ? json_string_value(v) : "";
}

static const char *jstr0(json_t *j, const char *k) {
    json_t *v = json_object_get(j, k);
    return json_is_string(v) ? json_string_value(v) : "";
}

/* Polls /readyz until backend's state is want (or, with want NULL, until
 * the probe's first round is in: no "starting"), at most 15 s. Returns the
 * last status; *body gets the last body (new ref). */
static long readyz_wait(const h_svc_t *s, const char *backend, const char *want,
                        json_t **body) {
    long st = 0;
    *body = NULL;
    for (int i = 0; i < 150; i++) {
        json_decref(*body);
        st = readyz(s, body);
        int done = want != NULL
                       ? strcmp(backend_str(*body, backend, "state"), want) == 0
                       : strstr(jstr0(*body, "detail"), "starting") == NULL;
        if (done) {
            return st;
        }
        h_sleep_ms(100);
    }
    char *dump = json_dumps(*body, 0);
    TT_ASSERT_MSG(0, "/readyz never showed %s %s: %ld %s", backend,
                  want != NULL ? want : "checked", st, dump);
    return st;
}

/* ------------------------------------------------------------- the ACL --- */

/* The service's ACL user, with exactly the shipped rule: claims work, the
 * release deletes the key, the release's PUBLISH reaches a subscriber (Redis
 * 7 grants no channel by default: without &coupon:* the script fails after
 * its DEL), and Redis denied the user nothing (ACL LOG is empty). */
TT_TEST(redis_acl_user_happy_path, 60) {
    H_REDIS_ONLY();
    h_begin();
    h_redis_restart_acl(SVC_PASS);
    const char *env[] = {"COUPON_REDIS_USERNAME=couponsvc",
                         "COUPON_REDIS_PASSWORD=" SVC_PASS, NULL};
    h_svc_t *s = h_svc_start("acl1", env);
    h_coupon(s, "acl", 5);

    struct timeval tv = {5, 0};
    redisContext *sub =
        redisConnectWithTimeout("127.0.0.1", h_redis_port(), tv);
    TT_ASSERT(sub != NULL && sub->err == 0);
    redisSetTimeout(sub, tv);
    redisReply *r = redisCommand(sub, "AUTH %s", H_REDIS_ADMIN_PASS);
    TT_ASSERT(r != NULL && r->type == REDIS_REPLY_STATUS);
    freeReplyObject(r);
    r = redisCommand(sub, "SUBSCRIBE coupon:{acl}:released");
    TT_ASSERT(r != NULL && r->type == REDIS_REPLY_ARRAY);
    freeReplyObject(r);

    json_t *j1 = NULL, *j2 = NULL;
    TT_EQ_INT(h_claim(s, "acl", "u1", &j1), 201);
    TT_EQ_INT(h_claim(s, "acl", "u2", &j2), 201);
    TT_CMP_INT(json_integer_value(json_object_get(j2, "fence")), >,
               json_integer_value(json_object_get(j1, "fence")));
    json_decref(j1);
    json_decref(j2);
    TT_EQ_INT(h_redis_cmd("EXISTS coupon:{acl}:lock"), 0);

    for (int i = 0; i < 2; i++) {
        void *reply = NULL;
        TT_ASSERT_MSG(redisGetReply(sub, &reply) == REDIS_OK && reply != NULL,
                      "release notification %d never came: %s", i + 1,
                      sub->errstr);
        r = reply;
        TT_ASSERT(r->type == REDIS_REPLY_ARRAY && r->elements == 3);
        TT_EQ_STR(r->element[0]->str, "message");
        TT_EQ_STR(r->element[1]->str, "coupon:{acl}:released");
        /* The message is the released token (32 hex digits). */
        TT_EQ_INT(strlen(r->element[2]->str), 32);
        TT_EQ_INT(strspn(r->element[2]->str, "0123456789abcdef"), 32);
        freeReplyObject(r);
    }
    redisFree(sub);

    /* Every connection is the ACL user's, and it was refused nothing. */
    redisContext *c = redisConnectWithTimeout("127.0.0.1", h_redis_port(), tv);
    TT_ASSERT(c != NULL && c->err == 0);
    r = redisCommand(c, "AUTH %s", H_REDIS_ADMIN_PASS);
    freeReplyObject(r);
    r = redisCommand(c, "CLIENT LIST");
    TT_ASSERT(r != NULL && r->type == REDIS_REPLY_STRING);
    TT_CONTAINS(r->str, "user=couponsvc");
    freeReplyObject(r);
    r = redisCommand(c, "ACL LOG");
    TT_ASSERT(r != NULL && r->type == REDIS_REPLY_ARRAY);
    TT_EQ_INT(r->elements, 0);
    freeReplyObject(r);
    redisFree(c);

    json_t *b = NULL;
    TT_EQ_INT(readyz_wait(s, "redis", "up", &b), 200);
    json_decref(b);
    TT_EQ_INT(h_metric(s, "couponsvc_backend_errors_total{backend=\"redis\"}"),
              0);
    h_check_invariants("acl", 5, 2);

    /* The password never reaches the log. */
    FILE *f = fopen(s->log, "r");
    TT_ASSERT(f != NULL);
    char line[2048];
    while (fgets(line, sizeof(line), f) != NULL) {
        TT_ASSERT_MSG(strstr(line, SVC_PASS) == NULL, "password logged: %s",
                      line);
    }
    fclose(f);
}

/* A wrong password, and none at all: /readyz is 503 and says the
 * credentials were refused (this instance's own fault), claims answer 503,
 * and nothing reaches PostgreSQL. */
TT_TEST(redis_acl_refused_credentials, 60) {
    H_REDIS_ONLY();
    h_begin();
    h_redis_restart_acl(SVC_PASS);
    const char *wrong[] = {"COUPON_REDIS_USERNAME=couponsvc",
                           "COUPON_REDIS_PASSWORD=not-the-password", NULL};
    const char *none[] = {"COUPON_REDIS_USERNAME=", NULL};
    h_svc_t *svcs[2] = {h_svc_start("wrong", wrong), h_svc_start("none", none)};
    h_coupon(svcs[0], "acl", 5);

    for (int i = 0; i < 2; i++) {
        json_t *b = NULL;
        TT_EQ_INT(readyz_wait(svcs[i], NULL, NULL, &b), 503);
        TT_EQ_STR(jstr0(b, "error"), "not_ready");
        TT_CONTAINS(jstr0(b, "detail"), "refused this instance's credentials");
        TT_EQ_STR(backend_str(b, "redis", "state"), "refused");
        json_decref(b);

        json_t *j = NULL;
        TT_EQ_INT(h_claim(svcs[i], "acl", "u1", &j), 503);
        TT_EQ_STR(jstr0(j, "error"), "unavailable");
        json_decref(j);
    }
    TT_EQ_INT(h_pg_int("SELECT count(*) FROM claims"), 0);
    TT_EQ_INT(h_pg_int("SELECT claimed FROM coupons WHERE id = 'acl'"), 0);
}

/* Runs the ACQUIRE script with token tok; returns granted (1/0), the second
 * element in *v. */
static long long acquire_as(redisContext *c, const char *tok, long long *v) {
    redisReply *r = redisCommand(c,
                                 "EVAL %s 2 coupon:{re}:lock "
                                 "coupon:{re}:fence %s 30000",
                                 LOCK_SCRIPT_ACQUIRE, tok);
    TT_ASSERT_MSG(r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements == 2,
                  "acquire: %s", r != NULL && r->str ? r->str : c->errstr);
    long long granted = r->element[0]->integer;
    *v = r->element[1]->integer;
    freeReplyObject(r);
    return granted;
}

/* An acquire repeated after a dropped connection, when the first copy did
 * reach Redis, finds its own token: it is granted again with a new fence
 * and a fresh TTL, not told "busy" (which would make the claim wait a full
 * TTL for a lock it holds itself). Another token is still refused. */
TT_TEST(acquire_script_regrants_own_token, 30) {
    h_begin();
    struct timeval tv = {5, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", h_redis_port(), tv);
    TT_ASSERT(c != NULL && c->err == 0);
    long long v = 0;
    TT_EQ_INT(acquire_as(c, "tok-a", &v), 1);
    TT_EQ_INT(v, 1);
    TT_EQ_INT(h_redis_cmd("PEXPIRE coupon:{re}:lock 1000"), 1);
    TT_EQ_INT(acquire_as(c, "tok-a", &v), 1); /* the repeat */
    TT_EQ_INT(v, 2);
    TT_CMP_INT(h_redis_cmd("PTTL coupon:{re}:lock"), >, 1000);
    TT_EQ_INT(acquire_as(c, "tok-b", &v), 0);
    TT_CMP_INT(v, >, 0);
    redisFree(c);
}

/* ------------------------------------------------------- the readiness --- */

typedef struct hot_arg {
    h_svc_t *s;
    char user[16];
    long status;
    double done_ms;
} hot_arg_t;

static void *hot_claim(void *p) {
    hot_arg_t *a = p;
    a->status = h_claim(a->s, "hot", a->user, NULL);
    a->done_ms = h_now_ms();
    return NULL;
}

/* The probe under a hot lock. Two workers, four claims for one coupon whose
 * holder pauses 2.5 s after acquiring: one worker holds the lock, the other
 * waits for it, two claims wait in the worker queue. /readyz, sent after them,
 * must be answered before any of them is: it is answered on the event loop, not
 * queued behind claims. An ordering assertion, not a speed one. */
TT_TEST(readyz_answers_before_queued_claims, 90) {
    h_begin();
    const char *env[] = {"COUPON_THREADS=2", "COUPON_FAULT=after_acquire:2500",
                         "COUPON_LOCK_WAIT_MS=30000", NULL};
    h_svc_t *s = h_svc_start("hot1", env);
    h_coupon(s, "hot", 10);
    json_t *b = NULL;
    TT_EQ_INT(readyz_wait(s, NULL, NULL, &b), 200);
    json_decref(b);

    enum { N = 4 };
    hot_arg_t a[N];
    pthread_t t[N];
    for (int i = 0; i < N; i++) {
        a[i] = (hot_arg_t){.s = s};
        snprintf(a[i].user, sizeof(a[i].user), "hot-%d", i);
        pthread_create(&t[i], NULL, hot_claim, &a[i]);
    }
    h_sleep_ms(500); /* all four are in: one holds the lock, three wait */
    long st = readyz(s, &b);
    double ready_ms = h_now_ms();
    json_decref(b);
    for (int i = 0; i < N; i++) {
        pthread_join(t[i], NULL);
    }

    TT_EQ_INT(st, 200);
    for (int i = 0; i < N; i++) {
        TT_EQ_INT(a[i].status, 201);
        TT_ASSERT_MSG(ready_ms < a[i].done_ms,
                      "/readyz was answered %.0f ms after claim %d",
                      ready_ms - a[i].done_ms, i);
    }
    h_check_invariants("hot", 10, N);
}

/* The readiness policy. A shared backend down (here Redis) is reported in
 * the body and in /metrics but leaves the instance ready: otherwise every
 * replica would leave the load balancer at once. A login refused to this
 * instance (PostgreSQL: no such role) makes it unready. */
TT_TEST(readyz_policy_outage_vs_own_fault, 90) {
    H_REDIS_ONLY();
    h_begin();
    h_svc_t *s = h_svc_start("pol1", NULL);
    json_t *b = NULL;
    TT_EQ_INT(readyz_wait(s, NULL, NULL, &b), 200);
    json_decref(b);

    h_redis_stop();
    TT_EQ_INT(readyz_wait(s, "redis", "down", &b), 200);
    TT_EQ_STR(jstr0(b, "status"), "ready");
    TT_EQ_STR(backend_str(b, "postgres", "state"), "up");
    TT_CONTAINS(backend_str(b, "redis", "detail"), "redis");
    json_decref(b);
    TT_EQ_INT(h_metric(s, "couponsvc_backend_up{backend=\"redis\"}"), 0);
    TT_CMP_INT(h_metric(s, "couponsvc_backend_check_age_seconds{backend="
                           "\"redis\"}"),
               >=, 0);
    json_t *j = NULL;
    TT_EQ_INT(h_claim(s, "nope", "u1", &j), 503);
    TT_EQ_STR(jstr0(j, "error"), "unavailable");
    json_decref(j);

    h_redis_start();
    TT_EQ_INT(readyz_wait(s, "redis", "up", &b), 200);
    json_decref(b);
    TT_EQ_INT(h_metric(s, "couponsvc_backend_up{backend=\"redis\"}"), 1);
    TT_EQ_INT(h_metric(s, "couponsvc_backend_up{backend=\"postgres\"}"), 1);

    /* Own fault: the same server, a role that does not exist. */
    int port = 0;
    TT_ASSERT(sscanf(strstr(h_dsn(), "port="), "port=%d", &port) == 1);
    char dsn[200];
    snprintf(dsn, sizeof(dsn),
             "COUPON_PG_DSN=host=127.0.0.1 port=%d dbname=postgres "
             "user=nosuchrole",
             port);
    const char *env[] = {dsn, NULL};
    h_svc_t *bad = h_svc_start("pol2", env);
    TT_EQ_INT(readyz_wait(bad, NULL, NULL, &b), 503);
    TT_EQ_STR(jstr0(b, "error"), "not_ready");
    TT_CONTAINS(jstr0(b, "detail"), "PostgreSQL refused this instance's login");
    TT_EQ_STR(backend_str(b, "postgres", "state"), "refused");
    json_decref(b);
}

/* Reads one HTTP response from fd (headers, then Content-Length bytes) into
 * buf[n]; returns the status. */
static int read_response(int fd, char *buf, size_t n) {
    size_t got = 0;
    char *end = NULL;
    while ((end = strstr(buf, "\r\n\r\n")) == NULL) {
        ssize_t k = read(fd, buf + got, n - 1 - got);
        TT_ASSERT_MSG(k > 0, "connection closed before a response");
        got += (size_t)k;
        buf[got] = '\0';
    }
    const char *cl = strstr(buf, "Content-Length: ");
    size_t want =
        (size_t)(end + 4 - buf) + (cl ? strtoul(cl + 16, NULL, 10) : 0);
    while (got < want && got + 1 < n) {
        ssize_t k = read(fd, buf + got, n - 1 - got);
        TT_ASSERT_MSG(k > 0, "connection closed inside a response");
        got += (size_t)k;
        buf[got] = '\0';
    }
    return atoi(buf + 9);
}

static void *drain_claim(void *p) {
    hot_arg_t *a = p;
    a->status = h_claim(a->s, "drain", a->user, NULL);
    return NULL;
}

/* Once SIGTERM starts the drain, /readyz says 503 on a kept-alive
 * connection (the listening socket is closed by then), while the claim in
 * flight still finishes. */
TT_TEST(readyz_503_while_draining, 60) {
    h_begin();
    const char *env[] = {"COUPON_FAULT=after_acquire:3000", NULL};
    h_svc_t *s = h_svc_start("drain1", env);
    h_coupon(s, "drain", 5);
    json_t *b = NULL;
    TT_EQ_INT(readyz_wait(s, NULL, NULL, &b), 200);
    json_decref(b);

    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)s->port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    TT_ASSERT(connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    static const char req[] = "GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n";
    char buf[4096] = "";
    TT_ASSERT(write(fd, req, sizeof(req) - 1) == (ssize_t)(sizeof(req) - 1));
    TT_EQ_INT(read_response(fd, buf, sizeof(buf)), 200);

    hot_arg_t a = {.s = s, .user = "inflight"};
    pthread_t t;
    pthread_create(&t, NULL, drain_claim, &a);
    h_sleep_ms(500); /* the claim holds the lock now, for 3 s */
    kill(s->pid, SIGTERM);
    h_sleep_ms(300);
    memset(buf, 0, sizeof(buf));
    TT_ASSERT(write(fd, req, sizeof(req) - 1) == (ssize_t)(sizeof(req) - 1));
    TT_EQ_INT(read_response(fd, buf, sizeof(buf)), 503);
    TT_CONTAINS(buf, "draining");
    close(fd);
    pthread_join(t, NULL);
    TT_EQ_INT(a.status, 201);
    TT_EQ_INT(h_svc_stop(s, 15000), 0);
}
