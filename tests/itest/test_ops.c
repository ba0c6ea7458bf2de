/*
 * test_ops.c: what an operator and a client see around a claim: the claim
 * lookup route, request ids (header and log lines), JSON logs, and the load
 * balancer's per-client rate limit.
 */
#include <curl/curl.h>
#include <pthread.h>
#include <string.h>

#include "harness.h"
#include "str.h"
#include "tt.h"

#define JSON "application/json"
#define OPS_ADMIN "Bearer test-admin-token" /* the harness's */

/* ------------------------------------------------------------- helpers --- */

typedef struct ops_req {
    const char *method, *url, *body; /* borrowed; body NULL: none */
    const char *request_id;          /* sent as X-Request-Id; NULL: none */
    const char *source;              /* local address to bind; NULL: any */
    long status;                     /* out: 0 on transport error */
    char rid[128];                   /* out: the answer's X-Request-Id */
    char retry_after[16];            /* out: the answer's Retry-After */
    char *resp;                      /* out: new body (free()) */
} ops_req_t;

static size_t ops__header(char *p, size_t size, size_t n, void *arg) {
    ops_req_t *r = arg;
    size_t len = size * n;
    char line[256];
    snprintf(line, sizeof(line), "%.*s", (int)(len < 255 ? len : 255), p);
    str_trim_newline(line);
    if (strncasecmp(line, "X-Request-Id: ", 14) == 0) {
        snprintf(r->rid, sizeof(r->rid), "%s", line + 14);
    } else if (strncasecmp(line, "Retry-After: ", 13) == 0) {
        snprintf(r->retry_after, sizeof(r->retry_after), "%s", line + 13);
    }
    return len;
}

/* One request on a fresh connection, with the headers this file needs. */
static void ops_send(ops_req_t *r) {
    CURL *c = curl_easy_init();
    TT_ASSERT(c != NULL);
    h_buf_t b = {0};
    struct curl_slist *hdr = NULL;
    char line[300];
    hdr = curl_slist_append(hdr, "Expect:");
    if (r->body != NULL) {
        hdr = curl_slist_append(hdr, "Content-Type: " JSON);
    }
    if (r->request_id != NULL) {
        snprintf(line, sizeof(line), "X-Request-Id: %s", r->request_id);
        hdr = curl_slist_append(hdr, line);
    }
    curl_easy_setopt(c, CURLOPT_URL, r->url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, r->method);
    if (strcmp(r->method, "HEAD") == 0) {
        curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, h_buf_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, ops__header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 20000L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_FORBID_REUSE, 1L);
    if (r->source != NULL) {
        curl_easy_setopt(c, CURLOPT_INTERFACE, r->source);
    }
    if (r->body != NULL) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, r->body);
    }
    r->status = 0;
    r->rid[0] = r->retry_after[0] = '\0';
    if (curl_easy_perform(c) == CURLE_OK) {
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
    }
    curl_slist_free_all(hdr);
    curl_easy_cleanup(c);
    r->resp = b.p != NULL ? b.p : strdup("");
    h_api_record(r->method, r->url, r->status, r->resp);
}

/* The whole file at path, a new string. */
static char *ops_slurp(const char *path) {
    FILE *f = fopen(path, "r");
    TT_ASSERT_MSG(f != NULL, "cannot read %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = calloc(1, (size_t)n + 1);
    TT_ASSERT(s != NULL && fread(s, 1, (size_t)n, f) == (size_t)n);
    fclose(f);
    return s;
}

/* The log line (text format) of event ev that contains needle; a new
 * string, or NULL. */
static char *ops_log_line(const h_svc_t *s, const char *ev,
                          const char *needle) {
    char *all = ops_slurp(s->log);
    char evk[96];
    snprintf(evk, sizeof(evk), "event=%s ", ev);
    char *found = NULL;
    for (char *line = strtok(all, "\n"); line != NULL && found == NULL;
         line = strtok(NULL, "\n")) {
        if (strstr(line, evk) != NULL && strstr(line, needle) != NULL) {
            found = strdup(line);
        }
    }
    free(all);
    return found;
}

static int ops_is_hex32(const char *s) {
    return strlen(s) == 32 && strspn(s, "0123456789abcdef") == 32;
}

/* ---------------------------------------------------- the claim lookup --- */

static long ops_get(const h_svc_t *s, const char *path, json_t **out) {
    char url[512], *body = NULL;
    snprintf(url, sizeof(url), "%s%s", s->url, path);
    long st = h_http("GET", url, NULL, NULL, NULL, 0, &body);
    json_t *j = json_loads(body, 0, NULL);
    TT_ASSERT_MSG(j != NULL, "GET %s: not JSON: %s", path, body);
    if (st >= 400) {
        TT_ASSERT_MSG(json_is_string(json_object_get(j, "error")) &&
                          json_is_string(json_object_get(j, "detail")),
                      "GET %s: error body without error/detail: %s", path,
                      body);
    }
    free(body);
    if (out != NULL) {
        *out = j;
    } else {
        json_decref(j);
    }
    return st;
}

static const char *ops_err(json_t *j) {
    return json_string_value(json_object_get(j, "error"));
}

TT_TEST(api_claim_lookup, 60) {
    h_begin();
    h_svc_t *s = h_svc_start("lookup", NULL);
    h_coupon(s, "c1", 2);
    json_t *j = NULL;

    TT_EQ_INT(ops_get(s, "/coupons/c1/claims/u1", &j), 404);
    TT_EQ_STR(ops_err(j), "not_found");
    json_decref(j);

    json_t *claim = NULL;
    TT_EQ_INT(h_claim(s, "c1", "u1", &claim), 201);
    TT_EQ_INT(ops_get(s, "/coupons/c1/claims/u1", &j), 200);
    TT_EQ_STR(json_string_value(json_object_get(j, "status")), "claimed");
    TT_EQ_STR(json_string_value(json_object_get(j, "coupon_id")), "c1");
    TT_EQ_STR(json_string_value(json_object_get(j, "user_id")), "u1");
    TT_EQ_INT(json_integer_value(json_object_get(j, "claim_id")),
              json_integer_value(json_object_get(claim, "claim_id")));
    TT_EQ_INT(json_integer_value(json_object_get(j, "fence")),
              json_integer_value(json_object_get(claim, "fence")));
    TT_ASSERT(json_integer_value(json_object_get(j, "fence")) > 0);
    TT_EQ_INT(json_integer_value(json_object_get(j, "remaining")), 1);
    json_decref(j);
    json_decref(claim);

    /* The user alphabet's specials, literally and percent-encoded. */
    TT_EQ_INT(h_claim(s, "c1", "a+b@x:y", NULL), 201);
    TT_EQ_INT(ops_get(s, "/coupons/c1/claims/a+b@x:y", &j), 200);
    TT_EQ_STR(json_string_value(json_object_get(j, "user_id")), "a+b@x:y");
    TT_EQ_INT(json_integer_value(json_object_get(j, "remaining")), 0);
    json_decref(j);
    TT_EQ_INT(ops_get(s, "/coupons/c1/claims/a%2Bb%40x%3Ay", NULL), 200);

    static const struct {
        const char *path;
        long status;
        const char *error;
    } bad[] = {
        {"/coupons/c1/claims/u2", 404, "not_found"},
        {"/coupons/zz/claims/u1", 404, "not_found"},
        {"/coupons/c1/claims/", 400, "invalid_id"},
        {"/coupons/c1/claims/a%20b", 400, "invalid_id"},
        {"/coupons/c1/claims/u1/x", 400, "invalid_id"},
        {"/coupons/c1/claims/u1%00", 400, "invalid_id"},
        {"/coupons/c%201/claims/u1", 400, "invalid_id"},
        {"/coupons//claims/u1", 400, "invalid_id"},
        {"/coupons/c1/claim/u1", 400, "invalid_id"},
        {"/coupons/"
         "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
         "/claims/u1",
         400, "invalid_id"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        long st = ops_get(s, bad[i].path, &j);
        TT_ASSERT_MSG(st == bad[i].status, "GET %s: %ld, want %ld", bad[i].path,
                      st, bad[i].status);
        TT_EQ_STR(ops_err(j), bad[i].error);
        json_decref(j);
    }
    /* A user id one byte over its limit. */
    char path[256] = "/coupons/c1/claims/";
    memset(path + strlen(path), 'u', 129);
    TT_EQ_INT(ops_get(s, path, &j), 400);
    TT_EQ_STR(ops_err(j), "invalid_id");
    json_decref(j);

    char url[256], *body = NULL;
    snprintf(url, sizeof(url), "%s/coupons/c1/claims/u1", s->url);
    TT_EQ_INT(h_http("POST", url, JSON, NULL, "{}", 2, &body), 405);
    TT_CONTAINS(body, "\"error\":\"method_not_allowed\"");
    free(body);
    ops_req_t head = {.method = "HEAD", .url = url};
    ops_send(&head);
    TT_EQ_INT(head.status, 200);
    free(head.resp);

    /* Looking up wrote nothing. */
    h_check_invariants("c1", 2, 2);
}

/* ---------------------------------------------------------- request ids --- */

TT_TEST(api_request_id_echoed_and_logged, 60) {
    h_begin();
    h_svc_t *s = h_svc_start("rid", NULL);
    h_coupon(s, "c1", 10);
    char url[128];
    snprintf(url, sizeof(url), "%s/claim", s->url);

    /* Well-formed: echoed as sent, and on the claim's log line. */
    ops_req_t r = {.method = "POST",
                   .url = url,
                   .body = "{\"coupon_id\":\"c1\",\"user_id\":\"u1\"}",
                   .request_id = "Client-7f3a.9:b_x"};
    ops_send(&r);
    TT_EQ_INT(r.status, 201);
    TT_EQ_STR(r.rid, "Client-7f3a.9:b_x");
    free(r.resp);
    h_sleep_ms(100); /* the log line is written before the answer; slack */
    char *line = ops_log_line(s, "claim.ok", "user=u1 ");
    TT_ASSERT_MSG(line != NULL, "no claim.ok line for u1 in %s", s->log);
    TT_ASSERT_MSG(strstr(line, " request_id=Client-7f3a.9:b_x") != NULL,
                  "claim line without the request id: %s", line);
    free(line);

    /* Malformed ones are replaced by a generated id; so is a missing one.
     * Each generated id is new. */
    char long_id[80];
    memset(long_id, 'a', 65);
    long_id[65] = '\0';
    const char *badids[] = {"has space",  "quote\"d", long_id,
                            "semi;colon", "",         NULL};
    char seen[6][128];
    for (int i = 0; i < 6; i++) {
        char body[96];
        snprintf(body, sizeof(body),
                 "{\"coupon_id\":\"c1\",\"user_id\":\"b%d\"}", i);
        ops_req_t q = {.method = "POST",
                       .url = url,
                       .body = body,
                       .request_id = badids[i]};
        ops_send(&q);
        TT_EQ_INT(q.status, 201);
        TT_ASSERT_MSG(ops_is_hex32(q.rid), "request %d: answer id '%s'", i,
                      q.rid);
        for (int k = 0; k < i; k++) {
            TT_ASSERT(strcmp(seen[k], q.rid) != 0);
        }
        snprintf(seen[i], sizeof(seen[i]), "%s", q.rid);
        free(q.resp);
        char user[16], want[64];
        snprintf(user, sizeof(user), "user=b%d ", i);
        snprintf(want, sizeof(want), " request_id=%s", q.rid);
        h_sleep_ms(50);
        line = ops_log_line(s, "claim.ok", user);
        TT_ASSERT_MSG(line != NULL && strstr(line, want) != NULL,
                      "request %d: log line %s lacks %s", i,
                      line ? line : "(none)", want);
        free(line);
    }

    /* Every answer carries one, errors and inline routes included. */
    char u2[128];
    snprintf(u2, sizeof(u2), "%s/nowhere", s->url);
    ops_req_t e = {.method = "GET", .url = u2, .request_id = "e-1"};
    ops_send(&e);
    TT_EQ_INT(e.status, 404);
    TT_EQ_STR(e.rid, "e-1");
    free(e.resp);
    snprintf(u2, sizeof(u2), "%s/healthz", s->url);
    ops_req_t hz = {.method = "GET", .url = u2};
    ops_send(&hz);
    TT_EQ_INT(hz.status, 200);
    TT_ASSERT(ops_is_hex32(hz.rid));
    free(hz.resp);
}

/* Claims batched under one lease: each claim.ok line names its own
 * request, not the batch leader's. */
typedef struct ops_batch_arg {
    const char *url;
    int i;
    long status;
} ops_batch_arg_t;

static void *ops_batch_one(void *p) {
    ops_batch_arg_t *a = p;
    char body[96], rid[32];
    snprintf(body, sizeof(body), "{\"coupon_id\":\"hot\",\"user_id\":\"k%d\"}",
             a->i);
    snprintf(rid, sizeof(rid), "rid-k%d", a->i);
    ops_req_t r = {
        .method = "POST", .url = a->url, .body = body, .request_id = rid};
    ops_send(&r);
    a->status = r.status;
    free(r.resp);
    return NULL;
}

TT_TEST(api_request_id_per_claim_in_a_batch, 60) {
    h_begin();
    /* The first lease pauses, so the claims behind it park and the next
     * leader takes them as one batch. */
    const char *env[] = {"COUPON_FAULT=after_acquire:400", NULL};
    h_svc_t *s = h_svc_start("ridbatch", env);
    h_coupon(s, "hot", 100);
    char url[128];
    snprintf(url, sizeof(url), "%s/claim", s->url);
    enum { N = 8 };
    pthread_t t[N];
    ops_batch_arg_t a[N];
    for (int i = 0; i < N; i++) {
        a[i] = (ops_batch_arg_t){url, i, 0};
        TT_ASSERT(pthread_create(&t[i], NULL, ops_batch_one, &a[i]) == 0);
        if (i == 0) {
            h_sleep_ms(100); /* k0 leads and holds the lock */
        }
    }
    for (int i = 0; i < N; i++) {
        pthread_join(t[i], NULL);
        TT_EQ_INT(a[i].status, 201);
    }
    h_sleep_ms(100);
    int batched = 0;
    for (int i = 0; i < N; i++) {
        char user[16], want[32];
        snprintf(user, sizeof(user), "user=k%d ", i);
        snprintf(want, sizeof(want), " request_id=rid-k%d", i);
        char *line = ops_log_line(s, "claim.ok", user);
        TT_ASSERT_MSG(line != NULL, "no claim.ok line for k%d", i);
        TT_ASSERT_MSG(strstr(line, want) != NULL, "k%d's line: %s", i, line);
        batched |=
            strstr(line, "batch=1 ") == NULL && strstr(line, "batch=") != NULL;
        free(line);
    }
    TT_ASSERT_MSG(batched, "no claim was batched with another: the test did "
                           "not exercise a batch");
    h_check_invariants("hot", 100, N);
}

TT_TEST(log_format_json_service_lines, 60) {
    h_begin();
    const char *env[] = {"COUPON_LOG_FORMAT=json", "COUPON_BATCH_MAX=1", NULL};
    h_svc_t *s = h_svc_start("jsonlog", env);
    h_coupon(s, "c1", 5);
    char url[128];
    snprintf(url, sizeof(url), "%s/claim", s->url);
    ops_req_t r = {.method = "POST",
                   .url = url,
                   .body = "{\"coupon_id\":\"c1\",\"user_id\":\"j1\"}",
                   .request_id = "json-1"};
    ops_send(&r);
    TT_EQ_INT(r.status, 201);
    free(r.resp);
    h_sleep_ms(100);
    TT_EQ_INT(h_svc_stop(s, 10000), 0);

    /* Every line the service wrote is one JSON object. */
    char *all = ops_slurp(s->log);
    int objects = 0, claim_ok = 0;
    for (char *line = strtok(all, "\n"); line != NULL;
         line = strtok(NULL, "\n")) {
        json_error_t err;
        json_t *o = json_loads(line, JSON_REJECT_DUPLICATES, &err);
        TT_ASSERT_MSG(json_is_object(o), "not JSON (%s): %s", err.text, line);
        objects++;
        TT_ASSERT(json_is_string(json_object_get(o, "ts")));
        TT_ASSERT(json_is_string(json_object_get(o, "event")));
        TT_EQ_STR(json_string_value(json_object_get(o, "instance")), "jsonlog");
        const char *ev = json_string_value(json_object_get(o, "event"));
        if (strcmp(ev, "claim.ok") == 0) {
            claim_ok++;
            TT_EQ_STR(json_string_value(json_object_get(o, "user")), "j1");
            TT_EQ_STR(json_string_value(json_object_get(o, "coupon")), "c1");
            TT_EQ_STR(json_string_value(json_object_get(o, "request_id")),
                      "json-1");
        }
        json_decref(o);
    }
    free(all);
    TT_ASSERT_MSG(objects >= 3, "only %d JSON lines", objects);
    TT_EQ_INT(claim_ok, 1);
}

/* --------------------------------------------------------- rate limits --- */

/* One client address sending claims through the balancer: `greedy` as fast
 * as it can, else one every 200 ms (5/s, a quarter of the limit). */
typedef struct ops_client {
    const char *lb, *source;
    int greedy, n;
    int ok, limited, other;
    double elapsed_ms;
    char bad[256]; /* the first answer that broke the 429 contract */
} ops_client_t;

static void *ops_client_run(void *p) {
    ops_client_t *c = p;
    double start = h_now_ms();
    for (int i = 0; i < c->n; i++) {
        char body[128];
        snprintf(body, sizeof(body),
                 "{\"coupon_id\":\"rl\",\"user_id\":\"%s-%d\"}", c->source, i);
        ops_req_t r = {
            .method = "POST", .url = c->lb, .body = body, .source = c->source};
        ops_send(&r);
        if (r.status == 201) {
            c->ok++;
        } else if (r.status == 429) {
            c->limited++;
            json_t *j = json_loads(r.resp, 0, NULL);
            const char *e = json_string_value(json_object_get(j, "error"));
            if (c->bad[0] == '\0' &&
                (e == NULL || strcmp(e, "rate_limited") != 0 ||
                 !json_is_string(json_object_get(j, "detail")) ||
                 strcmp(r.retry_after, "1") != 0 || r.rid[0] == '\0')) {
                snprintf(c->bad, sizeof(c->bad),
                         "429 retry-after '%s' id '%s' body %s", r.retry_after,
                         r.rid, r.resp);
            }
            json_decref(j);
        } else {
            c->other++;
            if (c->bad[0] == '\0') {
                snprintf(c->bad, sizeof(c->bad), "status %ld body %s", r.status,
                         r.resp);
            }
        }
        free(r.resp);
        if (!c->greedy) {
            h_sleep_ms(200);
        }
    }
    c->elapsed_ms = h_now_ms() - start;
    return NULL;
}

TT_TEST(lb_rate_limit_greedy_client_alone, 90) {
    h_begin();
    h_svc_t *s = h_svc_start("rl", NULL);
    h_coupon(s, "rl", 100000);
    h_nginx_rate_limit(1);
    h_svc_t *ups[] = {s};
    int port = h_nginx_start(ups, 1);
    char lb[96];
    snprintf(lb, sizeof(lb), "http://127.0.0.1:%d/claim", port);

    /* Four client addresses on the loopback (127.0.0.0/8 is all local):
     * one greedy, three polite, at the same time. */
    enum { NC = 4 };
    ops_client_t c[NC] = {
        {.lb = lb, .source = "127.0.0.2", .greedy = 1, .n = 300},
        {.lb = lb, .source = "127.0.0.3", .n = 20},
        {.lb = lb, .source = "127.0.0.4", .n = 20},
        {.lb = lb, .source = "127.0.0.5", .n = 20},
    };
    pthread_t t[NC];
    for (int i = 0; i < NC; i++) {
        TT_ASSERT(pthread_create(&t[i], NULL, ops_client_run, &c[i]) == 0);
    }
    for (int i = 0; i < NC; i++) {
        pthread_join(t[i], NULL);
    }
    for (int i = 0; i < NC; i++) {
        printf("    %s %s: %d x 201, %d x 429, %d other in %.0f ms\n",
               c[i].source, c[i].greedy ? "greedy" : "polite", c[i].ok,
               c[i].limited, c[i].other, c[i].elapsed_ms);
        TT_ASSERT_MSG(c[i].bad[0] == '\0', "%s: %s", c[i].source, c[i].bad);
    }
    /* The greedy one is held to the burst plus the rate over its run
     * (20/s, burst 40), with slack for the edges of the window; the polite
     * ones, far below the limit, are never refused. */
    TT_ASSERT_MSG(c[0].limited > 0, "the greedy client was never limited");
    double allowed = 40 + 20 * (c[0].elapsed_ms / 1000.0) + 5;
    TT_ASSERT_MSG(c[0].ok <= allowed, "greedy: %d answered, at most %.0f",
                  c[0].ok, allowed);
    int polite_ok = 0;
    for (int i = 1; i < NC; i++) {
        TT_EQ_INT(c[i].limited, 0);
        TT_EQ_INT(c[i].ok, c[i].n);
        polite_ok += c[i].ok;
    }
    /* A refused request never reached a replica: nothing written for it. */
    h_check_invariants("rl", 100000, c[0].ok + polite_ok);
    h_nginx_stop();
}

TT_TEST(lb_request_id_passes_or_is_replaced, 60) {
    h_begin();
    h_svc_t *s = h_svc_start("lbrid", NULL);
    h_coupon(s, "c1", 10);
    h_svc_t *ups[] = {s};
    int port = h_nginx_start(ups, 1);
    char lb[96];
    snprintf(lb, sizeof(lb), "http://127.0.0.1:%d/claim", port);

    /* The client's well-formed id reaches the replica and comes back. */
    ops_req_t r = {.method = "POST",
                   .url = lb,
                   .body = "{\"coupon_id\":\"c1\",\"user_id\":\"n1\"}",
                   .request_id = "trace-0001"};
    ops_send(&r);
    TT_EQ_INT(r.status, 201);
    TT_EQ_STR(r.rid, "trace-0001");
    free(r.resp);
    /* A malformed one is replaced by nginx's $request_id (32 hex digits),
     * which the replica then logs and echoes. */
    ops_req_t q = {.method = "POST",
                   .url = lb,
                   .body = "{\"coupon_id\":\"c1\",\"user_id\":\"n2\"}",
                   .request_id = "not ok"};
    ops_send(&q);
    TT_EQ_INT(q.status, 201);
    TT_ASSERT_MSG(ops_is_hex32(q.rid), "id through the LB: '%s'", q.rid);
    free(q.resp);
    h_sleep_ms(100);
    char want[64];
    snprintf(want, sizeof(want), " request_id=%s", q.rid);
    char *line = ops_log_line(s, "claim.ok", "user=n2 ");
    TT_ASSERT_MSG(line != NULL && strstr(line, want) != NULL,
                  "replica's line %s lacks %s", line ? line : "(none)", want);
    free(line);
    line = ops_log_line(s, "claim.ok", "user=n1 ");
    TT_ASSERT_MSG(line != NULL &&
                      strstr(line, " request_id=trace-0001") != NULL,
                  "replica's line %s", line ? line : "(none)");
    free(line);
    h_nginx_stop();
}

/* ----------------------------------------- answers the document names --- */

/* Answers of the API document (service/openapi.yaml) that no other test
 * makes through the harness's HTTP client, so that each is recorded. */
TT_TEST(api_document_answers, 60) {
    h_begin();
    h_svc_t *s = h_svc_start("docs", NULL);
    char url[128], *body = NULL;

    snprintf(url, sizeof(url), "%s/coupons", s->url);
    TT_EQ_INT(h_http("POST", url, JSON, OPS_ADMIN, "{\"id\":", 6, &body), 400);
    TT_CONTAINS(body, "\"error\":\"bad_json\"");
    free(body);
    size_t n = 5000;
    char *big = malloc(n + 1);
    TT_ASSERT(big != NULL);
    memset(big, ' ', n);
    big[n] = '\0';
    TT_EQ_INT(h_http("POST", url, JSON, OPS_ADMIN, big, n, &body), 413);
    TT_CONTAINS(body, "\"error\":\"payload_too_large\"");
    free(body);
    free(big);
    static const char *const getonly[] = {"/readyz", "/metrics", "/healthz"};
    for (size_t i = 0; i < 3; i++) {
        snprintf(url, sizeof(url), "%s%s", s->url, getonly[i]);
        TT_EQ_INT(h_http("POST", url, JSON, NULL, "{}", 2, &body), 405);
        TT_CONTAINS(body, "\"error\":\"method_not_allowed\"");
        free(body);
    }

    /* PostgreSQL unreachable: every route that reads or writes it answers
     * 503 unavailable with Retry-After. */
    const char *env[] = {"COUPON_PG_DSN=host=127.0.0.1 port=1 dbname=x user=x",
                         NULL};
    h_svc_t *d = h_svc_start("docs-nopg", env);
    static const struct {
        const char *method, *path, *body;
    } pg[] = {
        {"POST", "/coupons", "{\"id\":\"c1\",\"total\":1}"},
        {"GET", "/coupons/c1", NULL},
        {"GET", "/coupons/c1/claims/u1", NULL},
    };
    for (size_t i = 0; i < sizeof(pg) / sizeof(pg[0]); i++) {
        snprintf(url, sizeof(url), "%s%s", d->url, pg[i].path);
        long st =
            h_http(pg[i].method, url, pg[i].body ? JSON : NULL, OPS_ADMIN,
                   pg[i].body, pg[i].body ? strlen(pg[i].body) : 0, &body);
        TT_ASSERT_MSG(st == 503, "%s %s: %ld %s", pg[i].method, pg[i].path, st,
                      body);
        TT_CONTAINS(body, "\"error\":\"unavailable\"");
        free(body);
    }
}
