/*
 * api.c: routes, status codes and bodies; see the README's API section.
 *
 * Every error, 4xx and 5xx, is {"error": CODE, "detail": TEXT}. Handlers
 * whose name ends in OrReply have already filled the response when they
 * return nonzero; the caller just returns.
 */
#include "api.h"

#include <assert.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "claim.h"
#include "metrics.h"
#include "mono.h"
#include "ready.h"
#include "req.h"

static const cfg_t *api__cfg;

void api_init(const cfg_t *cfg) {
    api__cfg = cfg;
}

void api_response_free(api_response_t *resp) {
    if (resp != NULL) {
        free(resp->body);
        resp->body = NULL;
    }
}

/* ----------------------------------------------------------- responses --- */

/* Takes ownership of obj (a new reference) and makes it the body. */
static void api__json(api_response_t *resp, unsigned status, json_t *obj) {
    resp->status = status;
    resp->content_type = "application/json";
    resp->body = obj != NULL ? json_dumps(obj, JSON_COMPACT) : NULL;
    json_decref(obj);
    if (resp->body == NULL) {
        static const char oom[] =
            "{\"error\":\"internal\",\"detail\":\"out of memory\"}";
        resp->status = 500;
        resp->body = strdup(oom);
    }
    resp->len = resp->body != NULL ? strlen(resp->body) : 0;
}

static void api__error(api_response_t *resp, unsigned status, const char *code,
                       const char *detail) {
    api__json(resp, status,
              json_pack("{s:s, s:s}", "error", code, "detail", detail));
}

static void api__unavailable(api_response_t *resp, const char *code,
                             const char *detail) {
    api__error(resp, 503, code, detail);
    resp->retry_after = 1;
}

/* -------------------------------------------------------------- checks --- */

/* Compares without an early exit, so the time taken does not tell an
 * attacker how many leading bytes of the token were right. */
static int api__token_equal(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    unsigned char diff = (unsigned char)(la != lb);
    for (size_t i = 0; i < la; i++) {
        diff |= (unsigned char)(a[i] ^ b[i % (lb ? lb : 1)]);
    }
    return diff == 0 && lb != 0;
}

static int api__check_adminOrReply(const api_request_t *req,
                                   api_response_t *resp) {
    const char *want = api__cfg->admin_token;
    const char *got = req->authorization;
    if (want == NULL || want[0] == '\0') {
        api__error(resp, 401, "unauthorized",
                   "the admin API is off: COUPON_ADMIN_TOKEN is not set");
    } else if (got == NULL || strncasecmp(got, "Bearer ", 7) != 0) {
        api__error(resp, 401, "unauthorized",
                   "send Authorization: Bearer <admin token>");
    } else if (!api__token_equal(got + 7, want)) {
        api__error(resp, 401, "unauthorized", "wrong admin token");
    } else {
        return 0;
    }
    resp->www_authenticate = 1;
    return 1;
}

static int api__check_bodyOrReply(const api_request_t *req,
                                  api_response_t *resp) {
    if (req->body_too_large) {
        char d[96];
        snprintf(d, sizeof(d), "request body is larger than %u bytes",
                 api__cfg->max_body);
        api__error(resp, 413, "payload_too_large", d);
        return 1;
    }
    if (!req_is_json_type(req->content_type)) {
        api__error(resp, 415, "unsupported_media_type",
                   "send Content-Type: application/json");
        return 1;
    }
    return 0;
}

/* ------------------------------------------------------------ handlers --- */

static void api__claim_error(const char *coupon, const claim_result_t *r,
                             api_response_t *resp, char *d, size_t dlen);

/* Makes the formatted text the body (JSON), or the 500 of api__json when
 * memory runs out. The arguments must need no JSON escaping. */
__attribute__((format(printf, 3, 4))) static void
api__jsonf(api_response_t *resp, unsigned status, const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    assert(n > 0 && (size_t)n < sizeof(buf));
    resp->status = status;
    resp->content_type = "application/json";
    resp->body = malloc((size_t)n + 1);
    if (resp->body == NULL) {
        api__json(resp, status, NULL); /* the 500 */
        return;
    }
    memcpy(resp->body, buf, (size_t)n + 1);
    resp->len = (size_t)n;
}

/* The answer for a claim's result; coupon and user are the claim's own.
 * The answers of a flash sale (201, 200, 410 sold out) are formatted
 * directly, without building a JSON tree: the ids are validated to the
 * id alphabets (req.h), which need no escaping, and the numbers are
 * integers. The body is byte for byte what json_pack and json_dumps made
 * (the same members, in the same order). */
static void api__claim_answer(const char *coupon, const char *user,
                              const claim_result_t *r, api_response_t *resp) {
    char fence[24];
    if (r->fence >= 0) {
        snprintf(fence, sizeof(fence), "%lld", (long long)r->fence);
    } else {
        snprintf(fence, sizeof(fence), "null");
    }
    char d[160];
    switch (r->outcome) {
    case CLAIM_CLAIMED:
    case CLAIM_ALREADY:
        api__jsonf(resp, r->outcome == CLAIM_CLAIMED ? 201 : 200,
                   "{\"status\":\"%s\",\"claim_id\":%lld,\"coupon_id\":"
                   "\"%s\",\"user_id\":\"%s\",\"fence\":%s,"
                   "\"remaining\":%lld}",
                   r->outcome == CLAIM_CLAIMED ? "claimed" : "already_claimed",
                   (long long)r->claim_id, coupon, user, fence,
                   (long long)r->remaining);
        return;
    case CLAIM_SOLD_OUT:
        api__jsonf(resp, 410,
                   "{\"status\":\"sold_out\",\"error\":\"sold_out\","
                   "\"detail\":\"coupon \\\"%s\\\" has no stock left\","
                   "\"coupon_id\":\"%s\",\"remaining\":0}",
                   coupon, coupon);
        return;
    default:
        break;
    }
    api__claim_error(coupon, r, resp, d, sizeof(d));
}

/* The other outcomes: errors, with a detail that may need escaping. Each
 * outcome's status and error code, in one table; a 503 also says
 * Retry-After (api__unavailable). */
static void api__claim_error(const char *coupon, const claim_result_t *r,
                             api_response_t *resp, char *d, size_t dlen) {
    static const struct {
        unsigned status; /* 0: not an error (api__claim_answer's) */
        const char *code;
    } errors[] = {
        [CLAIM_NOT_FOUND] = {404, "not_found"},
        [CLAIM_FENCED] = {409, "fenced"},
        [CLAIM_BUSY] = {503, "lock_busy"},
        [CLAIM_UNAVAILABLE] = {503, "unavailable"},
        [CLAIM_LEASE_LOST] = {503, "lease_lost"},
        [CLAIM_COMMIT_UNKNOWN] = {503, "commit_unknown"},
        [CLAIM_OVERLOADED] = {503, "overloaded"},
        [CLAIM_SHUTTING_DOWN] = {503, "shutting_down"},
        [CLAIM_NOT_STARTED] = {409, "not_started"},
        [CLAIM_EXPIRED] = {410, "expired"},
    };
    unsigned o = (unsigned)r->outcome;
    if (o >= sizeof(errors) / sizeof(errors[0]) || errors[o].status == 0) {
        api__error(resp, 500, "internal", "unknown claim outcome");
        return;
    }
    if (r->outcome == CLAIM_FENCED) {
        json_t *fence = r->fence >= 0 ? json_integer(r->fence) : json_null();
        api__json(resp, 409,
                  json_pack("{s:s, s:s, s:s, s:o}", "error", "fenced", "detail",
                            r->detail, "coupon_id", coupon, "fence", fence));
        /* Nothing was written, and a retry takes a new lease: it is safe,
         * and worth it once the newer holder is done. */
        resp->retry_after = 1;
    } else if (r->outcome == CLAIM_NOT_FOUND) {
        snprintf(d, dlen, "no coupon \"%s\"", coupon);
        api__error(resp, 404, "not_found", d);
    } else if (errors[o].status == 503) {
        api__unavailable(resp, errors[o].code, r->detail);
    } else {
        api__error(resp, errors[o].status, errors[o].code, r->detail);
    }
}

/* Checks and parses a claim's request; 0, or 1 with the 4xx in resp. */
static int api__claim_parseOrReply(const api_request_t *req,
                                   api_response_t *resp, req_claim_t *rc) {
    if (api__check_bodyOrReply(req, resp)) {
        metrics_inc(M_CLAIM_BAD_REQUEST);
        return 1;
    }
    req_error_t err;
    if (req_parse_claim(req->body, req->body_len, rc, &err) != 0) {
        metrics_inc(M_CLAIM_BAD_REQUEST);
        api__error(resp, 400, err.code, err.detail);
        return 1;
    }
    return 0;
}

/* The claim on the calling thread, start to end (api_handle's route). */
static void api__claim(const api_request_t *req, api_response_t *resp) {
    req_claim_t rc;
    if (api__claim_parseOrReply(req, resp, &rc)) {
        return;
    }
    claim_result_t r;
    claim_one(rc.coupon_id, rc.user_id, req->deadline_ns, &r);
    api__claim_answer(rc.coupon_id, rc.user_id, &r, resp);
}

int api_is_claim(const char *method, const char *path) {
    return strcmp(method, "POST") == 0 && strcmp(path, "/claim") == 0;
}

int api_claim_submit(const api_request_t *req, api_response_t *resp,
                     claim_waiter_t *w) {
    memset(resp, 0, sizeof(*resp));
    req_claim_t rc;
    if (api__claim_parseOrReply(req, resp, &rc)) {
        return API_CLAIM_ANSWERED;
    }
    memcpy(w->coupon, rc.coupon_id, sizeof(w->coupon));
    memcpy(w->user, rc.user_id, sizeof(w->user));
    w->deadline_ns = req->deadline_ns;
    switch (claim_submit(w)) {
    case CLAIM_SUBMIT_RUN:
        return API_CLAIM_RUN;
    case CLAIM_SUBMIT_PARKED:
        return API_CLAIM_PARKED;
    default:
        api__claim_answer(w->coupon, w->user, &w->result, resp);
        return API_CLAIM_ANSWERED;
    }
}

void api_claim_respond(const claim_waiter_t *w, api_response_t *resp) {
    memset(resp, 0, sizeof(*resp));
    api__claim_answer(w->coupon, w->user, &w->result, resp);
}

/* The coupon as GET /coupons/{id} shows it (and a create answers it):
 * its stock, its buckets (an empty list for an unsharded coupon, whose own
 * row is the stock) and its window (null for an open side). A new
 * reference. */
static json_t *api__coupon_json(const char *id, const claim_coupon_t *c) {
    json_t *b = json_array();
    for (int i = 0; c->buckets > 1 && i < c->buckets; i++) {
        json_array_append_new(
            b, json_pack("{s:i, s:I, s:I, s:I}", "bucket", i, "total",
                         (json_int_t)c->bucket[i].total, "claimed",
                         (json_int_t)c->bucket[i].claimed, "last_fence",
                         (json_int_t)c->bucket[i].last_fence));
    }
    char s0[32], s1[32];
    if (c->starts_at_us != REQ_NO_TIME) {
        req_format_time(c->starts_at_us, s0, sizeof(s0));
    }
    if (c->ends_at_us != REQ_NO_TIME) {
        req_format_time(c->ends_at_us, s1, sizeof(s1));
    }
    return json_pack(
        "{s:s, s:I, s:I, s:I, s:I, s:o, s:o, s:o}", "id", id, "total",
        (json_int_t)c->total, "claimed", (json_int_t)c->claimed, "remaining",
        (json_int_t)(c->total - c->claimed), "last_fence",
        (json_int_t)c->last_fence, "buckets", b, "starts_at",
        c->starts_at_us != REQ_NO_TIME ? json_string(s0) : json_null(),
        "ends_at",
        c->ends_at_us != REQ_NO_TIME ? json_string(s1) : json_null());
}

static void api__coupon_create(const api_request_t *req, api_response_t *resp) {
    if (api__check_adminOrReply(req, resp) ||
        api__check_bodyOrReply(req, resp)) {
        return;
    }
    req_coupon_t c;
    req_error_t err;
    if (req_parse_coupon(req->body, req->body_len, &c, &err) != 0) {
        api__error(resp, 400, err.code, err.detail);
        return;
    }
    char d[256];
    claim_rc_t rc = claim_coupon_create(&c, d, sizeof(d));
    if (rc == CLAIM_RC_ERR) {
        api__unavailable(resp, "unavailable", d);
        return;
    }
    if (rc == CLAIM_RC_EXISTS) {
        snprintf(d, sizeof(d), "coupon \"%s\" exists already", c.id);
        api__error(resp, 409, "exists", d);
        return;
    }
    /* Created: answer what was stored (the buckets' split, the window as
     * PostgreSQL keeps it). */
    static _Thread_local claim_coupon_t cc;
    if (claim_coupon_get(c.id, &cc, d, sizeof(d)) != CLAIM_RC_OK) {
        api__json(
            resp, 201,
            json_pack("{s:s, s:I}", "id", c.id, "total", (json_int_t)c.total));
        return;
    }
    api__json(resp, 201, api__coupon_json(c.id, &cc));
}

static void api__coupon_get(const char *id, api_response_t *resp) {
    const char *why = NULL;
    char d[256];
    if (req_valid_coupon_id(id, strlen(id), &why) != 0) {
        api__error(resp, 400, "invalid_id", why);
        return;
    }
    static _Thread_local claim_coupon_t c;
    claim_rc_t rc = claim_coupon_get(id, &c, d, sizeof(d));
    if (rc == CLAIM_RC_ERR) {
        api__unavailable(resp, "unavailable", d);
    } else if (rc == CLAIM_RC_NOT_FOUND) {
        snprintf(d, sizeof(d), "no coupon \"%s\"", id);
        api__error(resp, 404, "not_found", d);
    } else {
        api__json(resp, 200, api__coupon_json(id, &c));
    }
}

/* GET /coupons/{id}/claims/{user}: the user's claim as a claim's answer
 * shows it (status "claimed": it exists), so a client whose answer got lost
 * can look it up without claiming again. id and user are the path's. */
static void api__claim_get(const char *id, const char *user,
                           api_response_t *resp) {
    const char *why = NULL;
    char d[256], u[REQ_USER_ID_MAX + 1];
    if (req_valid_coupon_id(id, strlen(id), &why) != 0 ||
        req_valid_user_id(user, strlen(user), &why) != 0) {
        api__error(resp, 400, "invalid_id", why);
        return;
    }
    snprintf(u, sizeof(u), "%s", user);
    claim_result_t r;
    claim_rc_t rc = claim_lookup(id, u, &r);
    if (rc == CLAIM_RC_ERR) {
        api__unavailable(resp, "unavailable", r.detail);
    } else if (rc == CLAIM_RC_NOT_FOUND) {
        snprintf(d, sizeof(d), "user \"%s\" holds no claim of coupon \"%s\"", u,
                 id);
        api__error(resp, 404, "not_found", d);
    } else {
        api__json(resp, 200,
                  json_pack("{s:s, s:I, s:s, s:s, s:o, s:I}", "status",
                            "claimed", "claim_id", (json_int_t)r.claim_id,
                            "coupon_id", id, "user_id", u, "fence",
                            r.fence >= 0 ? json_integer(r.fence) : json_null(),
                            "remaining", (json_int_t)r.remaining));
    }
}

/* Answered from the readiness probe's last round (ready.h), never from a
 * backend call: this runs on the event loop. The body reports each backend
 * whether or not it affects readiness. */
static void api__readyz(api_response_t *resp) {
    ready_state_t s;
    ready_get(&s);
    char why[512];
    int ready = ready_decide(&s, why, sizeof(why));
    json_t *backends = json_object();
    int64_t now = mono_ns();
    for (int i = 0; i < READY__NBACKENDS; i++) {
        const ready_backend_state_t *b = &s.backend[i];
        if (!b->used) {
            continue;
        }
        static const char *const health[] = {"unchecked", "up", "down",
                                             "refused"};
        json_t *o = json_pack("{s:b, s:s}", "up", b->health == READY_UP,
                              "state", health[b->health]);
        if (b->checked_ns != 0) {
            json_object_set_new(
                o, "checked_ms_ago",
                json_integer((json_int_t)((now - b->checked_ns) / MONO_MS)));
        }
        if (b->health != READY_UP && b->detail[0] != '\0') {
            json_object_set_new(o, "detail", json_string(b->detail));
        }
        json_object_set_new(backends, ready_backend_name((ready_backend_t)i),
                            o);
    }
    if (ready) {
        api__json(
            resp, 200,
            json_pack("{s:s, s:o}", "status", "ready", "backends", backends));
    } else {
        api__json(resp, 503,
                  json_pack("{s:s, s:s, s:o}", "error", "not_ready", "detail",
                            why, "backends", backends));
        resp->retry_after = 1;
    }
}

static void api__metrics(api_response_t *resp) {
    size_t len = 0;
    char *text = metrics_render(api__cfg->instance_id,
                                cfg_mode_name(api__cfg->mode), &len);
    if (text == NULL) {
        api__error(resp, 500, "internal", "out of memory");
        return;
    }
    resp->status = 200;
    resp->body = text;
    resp->len = len;
    resp->content_type = "text/plain; version=0.0.4; charset=utf-8";
}

/* -------------------------------------------------------------- routing --- */

typedef enum api__route {
    API__NONE,
    API__HEALTHZ,
    API__READYZ,
    API__METRICS,
    API__CLAIM,
    API__COUPONS,
    API__COUPON,
} api__route_t;

static api__route_t api__match(const char *path, const char **arg) {
    static const struct {
        const char *path;
        api__route_t route;
    } exact[] = {{"/healthz", API__HEALTHZ},
                 {"/readyz", API__READYZ},
                 {"/metrics", API__METRICS},
                 {"/claim", API__CLAIM},
                 {"/coupons", API__COUPONS}};
    for (size_t i = 0; i < sizeof(exact) / sizeof(exact[0]); i++) {
        if (strcmp(path, exact[i].path) == 0) {
            return exact[i].route;
        }
    }
    if (strncmp(path, "/coupons/", 9) == 0) {
        *arg = path + 9;
        return API__COUPON;
    }
    return API__NONE;
}

/* Copies untrusted text for an error detail: printable ASCII only, so the
 * detail is always valid UTF-8 and safe in a log line. */
static void api__printable(char *out, size_t n, const char *in) {
    size_t i = 0;
    for (; in[i] != '\0' && i + 1 < n; i++) {
        unsigned char ch = (unsigned char)in[i];
        out[i] = ch >= 0x20 && ch < 0x7f && ch != '"' ? (char)ch : '?';
    }
    out[i] = '\0';
}

static int api__is(const char *m, const char *want) {
    return strcmp(m, want) == 0;
}

int api_is_inline(const char *method, const char *path) {
    const char *arg = NULL;
    api__route_t r = api__match(path, &arg);
    return (r == API__HEALTHZ || r == API__READYZ || r == API__METRICS) &&
           (api__is(method, "GET") || api__is(method, "HEAD"));
}

/* GET /coupons/{id} or /coupons/{id}/claims/{user}: neither id may hold a
 * '/', so the first "/claims/" splits them; anything else after the id
 * fails the id's check (400). arg is the path after "/coupons/". */
static void api__coupon_route(const char *arg, api_response_t *resp) {
    const char *sub = strstr(arg, "/claims/");
    if (sub != NULL) {
        char id[REQ_COUPON_ID_MAX + 2];
        size_t n = (size_t)(sub - arg);
        snprintf(id, sizeof(id), "%.*s",
                 (int)(n < sizeof(id) - 1 ? n : sizeof(id) - 1), arg);
        api__claim_get(id, sub + 8, resp);
    } else {
        api__coupon_get(arg, resp);
    }
}

/* A body over the limit on an existing route: the 413 (or the admin
 * route's 401 first), decided from the route alone, since this may run on
 * the event loop (the early 413), which must never wait on a backend. 0
 * when the method is not the route's: the 405, as for any other body. */
static int api__too_largeOrReply(const api_request_t *req, api_response_t *resp,
                                 api__route_t route, int get, int post) {
    int allowed = (route == API__CLAIM || route == API__COUPONS) ? post : get;
    if (route == API__NONE || !allowed) {
        return 0;
    }
    if (route == API__COUPONS && api__check_adminOrReply(req, resp)) {
        return 1;
    }
    if (route == API__CLAIM) {
        metrics_inc(M_CLAIM_BAD_REQUEST);
    }
    api__check_bodyOrReply(req, resp); /* the 413 */
    return 1;
}

/* The method's answer on one route: 1 when it is answered, 0 when the
 * route does not take the method (api_handle's 405). */
static int api__routeOrReply(const api_request_t *req, api_response_t *resp,
                             api__route_t route, const char *arg, int get,
                             int post) {
    switch (route) {
    case API__HEALTHZ:
        if (get) {
            api__json(resp, 200, json_pack("{s:s}", "status", "ok"));
        }
        return get;
    case API__READYZ:
        if (get) {
            api__readyz(resp);
        }
        return get;
    case API__METRICS:
        if (get) {
            api__metrics(resp);
        }
        return get;
    case API__CLAIM:
        if (post) {
            api__claim(req, resp);
        }
        return post;
    case API__COUPONS:
        if (post) {
            api__coupon_create(req, resp);
        }
        return post;
    case API__COUPON:
        if (get) {
            api__coupon_route(arg, resp);
        }
        return get;
    case API__NONE: {
        char d[160], p[101];
        api__printable(p, sizeof(p), req->path);
        snprintf(d, sizeof(d), "no route for %s", p);
        api__error(resp, 404, "not_found", d);
        return 1;
    }
    }
    return 0;
}

void api_handle(const api_request_t *req, api_response_t *resp) {
    memset(resp, 0, sizeof(*resp));
    const char *arg = NULL;
    api__route_t route = api__match(req->path, &arg);
    int get = api__is(req->method, "GET") || api__is(req->method, "HEAD");
    int post = api__is(req->method, "POST");

    if (req->body_too_large &&
        api__too_largeOrReply(req, resp, route, get, post)) {
        return;
    }

    if (api__routeOrReply(req, resp, route, arg, get, post)) {
        return;
    }

    /* The path exists but not with this method. */
    resp->allow =
        (route == API__CLAIM || route == API__COUPONS) ? "POST" : "GET, HEAD";
    char d[96], m[17];
    api__printable(m, sizeof(m), req->method);
    snprintf(d, sizeof(d), "%s is not allowed here; use %s", m, resp->allow);
    api__error(resp, 405, "method_not_allowed", d);
}
