/*
 * test_api.c: the HTTP contract, status by status, against a real instance.
 */
#include <string.h>

#include "harness.h"
#include "tt.h"

typedef struct api_case {
    const char *method, *path, *ctype, *auth, *body;
    long status;
    const char *error; /* expected "error" member, NULL for success */
} api_case_t;

#define ADMIN "Bearer test-admin-token"
#define JSON "application/json"

static void run_case(const h_svc_t *s, const api_case_t *c, int i) {
    char url[256], *body = NULL;
    snprintf(url, sizeof(url), "%s%s", s->url, c->path);
    long st = h_http(c->method, url, c->ctype, c->auth, c->body,
                     c->body != NULL ? strlen(c->body) : 0, &body);
    TT_ASSERT_MSG(st == c->status,
                  "case %d %s %s %s: status %ld, want %ld "
                  "(body %s)",
                  i, c->method, c->path, c->body ? c->body : "", st, c->status,
                  body);
    json_t *j = json_loads(body, 0, NULL);
    if (strcmp(c->method, "HEAD") != 0 && strcmp(c->path, "/metrics") != 0) {
        TT_ASSERT_MSG(j != NULL, "case %d: body is not JSON: %s", i, body);
    }
    if (st >= 400 && strcmp(c->method, "HEAD") != 0) {
        /* Every error has {"error": CODE, "detail": TEXT}. */
        json_t *e = json_object_get(j, "error");
        json_t *d = json_object_get(j, "detail");
        TT_ASSERT_MSG(json_is_string(e) && json_is_string(d),
                      "case %d: error body lacks error/detail: %s", i, body);
        if (c->error != NULL) {
            TT_EQ_STR(json_string_value(e), c->error);
        }
    }
    json_decref(j);
    free(body);
}

TT_TEST(api_contract, 60) {
    h_begin();
    h_svc_t *s = h_svc_start("api", NULL);
    static const api_case_t cases[] = {
        {"GET", "/healthz", NULL, NULL, NULL, 200, NULL},
        {"GET", "/readyz", NULL, NULL, NULL, 200, NULL},
        {"POST", "/coupons", JSON, ADMIN, "{\"id\":\"c1\",\"total\":2}", 201,
         NULL},
        {"POST", "/coupons", JSON, ADMIN, "{\"id\":\"c1\",\"total\":2}", 409,
         "exists"},
        {"POST", "/coupons", JSON, NULL, "{\"id\":\"c2\",\"total\":2}", 401,
         "unauthorized"},
        {"POST", "/coupons", JSON, "Bearer wrong",
         "{\"id\":\"c2\",\"total\":2}", 401, "unauthorized"},
        {"POST", "/coupons", JSON,
         "Basic dGVzdA==", "{\"id\":\"c2\",\"total\":2}", 401, "unauthorized"},
        {"POST", "/coupons", JSON, ADMIN, "{\"id\":\"c2\",\"total\":-2}", 400,
         "bad_request"},
        {"POST", "/coupons", JSON, ADMIN, "{\"id\":\"c 2\",\"total\":2}", 400,
         "invalid_id"},
        {"POST", "/coupons", "text/plain", ADMIN, "{\"id\":\"c2\",\"total\":2}",
         415, "unsupported_media_type"},
        {"GET", "/coupons", NULL, NULL, NULL, 405, "method_not_allowed"},
        {"POST", "/claim", JSON, NULL,
         "{\"coupon_id\":\"c1\",\"user_id\":\"u1\"}", 201, NULL},
        {"POST", "/claim", JSON, NULL,
         "{\"coupon_id\":\"c1\",\"user_id\":\"u1\"}", 200, NULL},
        {"POST", "/claim", "application/json; charset=utf-8", NULL,
         "{\"coupon_id\":\"c1\",\"user_id\":\"u2\"}", 201, NULL},
        {"POST", "/claim", JSON, NULL,
         "{\"coupon_id\":\"c1\",\"user_id\":\"u3\"}", 410, "sold_out"},
        {"POST", "/claim", JSON, NULL,
         "{\"coupon_id\":\"zz\",\"user_id\":\"u3\"}", 404, "not_found"},
        {"POST", "/claim", JSON, NULL, "{\"coupon_id\":\"c1\"}", 400,
         "bad_request"},
        {"POST", "/claim", JSON, NULL, "{\"coupon_id\":\"c1\",", 400,
         "bad_json"},
        {"POST", "/claim", JSON, NULL, "", 400, "bad_request"},
        {"POST", "/claim", JSON, NULL,
         "{\"coupon_id\":\"c1'; DROP TABLE claims; --\",\"user_id\":\"x\"}",
         400, "invalid_id"},
        {"POST", "/claim", NULL, NULL,
         "{\"coupon_id\":\"c1\",\"user_id\":\"u\"}", 415,
         "unsupported_media_type"},
        {"PUT", "/claim", JSON, NULL, "{}", 405, "method_not_allowed"},
        {"GET", "/claim", NULL, NULL, NULL, 405, "method_not_allowed"},
        {"DELETE", "/coupons/c1", NULL, NULL, NULL, 405, "method_not_allowed"},
        {"GET", "/coupons/c1", NULL, NULL, NULL, 200, NULL},
        {"GET", "/coupons/none", NULL, NULL, NULL, 404, "not_found"},
        {"GET", "/coupons/bad%20id", NULL, NULL, NULL, 400, "invalid_id"},
        {"GET", "/nowhere", NULL, NULL, NULL, 404, "not_found"},
        {"GET", "/metrics", NULL, NULL, NULL, 200, NULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        run_case(s, &cases[i], (int)i);
    }

    /* The coupon view matches what happened. */
    char url[128], *body = NULL;
    snprintf(url, sizeof(url), "%s/coupons/c1", s->url);
    TT_EQ_INT(h_http("GET", url, NULL, NULL, NULL, 0, &body), 200);
    json_t *j = json_loads(body, 0, NULL);
    TT_EQ_INT(json_integer_value(json_object_get(j, "total")), 2);
    TT_EQ_INT(json_integer_value(json_object_get(j, "claimed")), 2);
    TT_EQ_INT(json_integer_value(json_object_get(j, "remaining")), 0);
    /* Fences: u1 (1), u1 again (2: took the lock, wrote nothing), u2 (3),
     * u3 sold out (4: no write). last_fence is the last WRITTEN one. */
    if (!h_etcd_on()) {
        TT_EQ_INT(json_integer_value(json_object_get(j, "last_fence")), 3);
    } else {
        /* etcd's fences are create revisions: the last written one is u2's
         * claim, the coupon's highest. */
        TT_EQ_INT(json_integer_value(json_object_get(j, "last_fence")),
                  h_pg_int("SELECT max(fence) FROM claims"));
    }
    json_decref(j);
    free(body);
    h_check_invariants("c1", 2, 2);
    /* Nothing the bad requests sent reached the database. */
    TT_EQ_INT(h_pg_int("SELECT count(*) FROM coupons"), 1);
}

TT_TEST(api_body_limit_and_headers, 30) {
    h_begin();
    h_svc_t *s = h_svc_start("limits", NULL);
    char url[96];
    snprintf(url, sizeof(url), "%s/claim", s->url);
    size_t n = 100000;
    char *big = malloc(n + 1);
    memset(big, 'a', n);
    big[n] = '\0';
    char *body = NULL;
    TT_EQ_INT(h_http("POST", url, JSON, NULL, big, n, &body), 413);
    TT_CONTAINS(body, "\"error\":\"payload_too_large\"");
    free(body);
    free(big);

    /* 405 names the allowed methods; 503s say when to come back. */
    char *hdrs = NULL;
    (void)hdrs;
    snprintf(url, sizeof(url), "%s/healthz", s->url);
    TT_EQ_INT(h_http("POST", url, JSON, NULL, "{}", 2, NULL), 405);
    /* Still up after all that. */
    TT_EQ_INT(h_http("GET", url, NULL, NULL, NULL, 0, NULL), 200);
}
