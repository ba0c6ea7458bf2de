/*
 * lock_etcd_gw.c: see lock_etcd_gw.h.
 *
 * Bounds. Every attempt has CURLOPT_TIMEOUT_MS (connect included) of at most
 * the per-attempt timeout, and never past the call's deadline; a call makes
 * at most one attempt per endpoint, plus one after a re-authentication. So a
 * call never takes longer than n x the timeout, whatever the cluster does.
 *
 * Failover. The client remembers the endpoint that answered last and starts
 * there. An endpoint that is down, partitioned, or cut off from its quorum
 * (it answers "etcdserver: request timed out" or "no leader", or nothing)
 * makes the call move to the next one. A call moved on after a timeout may
 * have been applied by the first member anyway: the lock's writes are
 * written so that doing one twice is harmless (see lock_etcd.c).
 *
 * Auth. The token is process-wide, under a mutex, with a generation number:
 * the thread that sees code 16 re-authenticates unless another thread
 * already did it for the same token, then the call is repeated once.
 */
#include "lock_etcd_gw.h"

#include <assert.h>
#include <curl/curl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mono.h"

struct lock_etcd_gw {
    CURL *unary; /* kept alive between calls */
    CURL *watch; /* a watch is closed by us, so its own handle */
    struct curl_slist *hdrs;
    unsigned long hdrs_gen; /* the token generation hdrs carry */
    int cur;                /* the endpoint that answered last */
    lock_errkind_t errkind;
    char errstr[192];
};

static struct {
    pthread_mutex_t mu;
    char *urls[LOCK_ETCD_GW_MAX_ENDPOINTS];
    int n;
    const char *username, *password, *ca_file;
    uint32_t timeout_ms;
    char *token;       /* current auth token, or NULL */
    unsigned long gen; /* bumped on each new token */
} lock_etcd_gw__g = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* --------------------------------------------------------------- setup --- */

int lock_etcd_gw_init(const char *endpoints, const char *username,
                      const char *password, const char *ca_file,
                      uint32_t timeout_ms, char *err, size_t errlen) {
    if (curl_global_init(CURL_GLOBAL_ALL) != 0) {
        snprintf(err, errlen, "curl_global_init failed");
        return -1;
    }
    const char *p = endpoints;
    while (*p != '\0') {
        size_t len = strcspn(p, ",");
        if (len > 0) {
            if (lock_etcd_gw__g.n == LOCK_ETCD_GW_MAX_ENDPOINTS) {
                snprintf(err, errlen,
                         "COUPON_ETCD_ENDPOINTS: more than %d endpoints",
                         LOCK_ETCD_GW_MAX_ENDPOINTS);
                return -1;
            }
            char *u = strndup(p, len);
            if (u == NULL) {
                snprintf(err, errlen, "out of memory");
                return -1;
            }
            while (len > 0 && u[len - 1] == '/') {
                u[--len] = '\0'; /* we append "/v3/..." */
            }
            if (strncmp(u, "http://", 7) != 0 &&
                strncmp(u, "https://", 8) != 0) {
                snprintf(err, errlen,
                         "COUPON_ETCD_ENDPOINTS: \"%s\" is not an http:// or "
                         "https:// URL",
                         u);
                free(u);
                return -1;
            }
            lock_etcd_gw__g.urls[lock_etcd_gw__g.n++] = u;
        }
        p += len;
        if (*p == ',') {
            p++;
        }
    }
    if (lock_etcd_gw__g.n == 0) {
        snprintf(err, errlen, "COUPON_ETCD_ENDPOINTS is empty");
        return -1;
    }
    lock_etcd_gw__g.username = username != NULL ? username : "";
    lock_etcd_gw__g.password = password != NULL ? password : "";
    lock_etcd_gw__g.ca_file = ca_file != NULL ? ca_file : "";
    lock_etcd_gw__g.timeout_ms = timeout_ms > 0 ? timeout_ms : 1;
    return 0;
}

void lock_etcd_gw_shutdown(void) {
    pthread_mutex_lock(&lock_etcd_gw__g.mu);
    for (int i = 0; i < lock_etcd_gw__g.n; i++) {
        free(lock_etcd_gw__g.urls[i]);
        lock_etcd_gw__g.urls[i] = NULL;
    }
    lock_etcd_gw__g.n = 0;
    free(lock_etcd_gw__g.token);
    lock_etcd_gw__g.token = NULL;
    pthread_mutex_unlock(&lock_etcd_gw__g.mu);
}

int lock_etcd_gw_nendpoints(void) {
    return lock_etcd_gw__g.n;
}

lock_etcd_gw_t *lock_etcd_gw_new(void) {
    lock_etcd_gw_t *gw = calloc(1, sizeof(*gw));
    if (gw == NULL) {
        return NULL;
    }
    gw->unary = curl_easy_init();
    gw->watch = curl_easy_init();
    if (gw->unary == NULL || gw->watch == NULL) {
        lock_etcd_gw_free(gw);
        return NULL;
    }
    gw->hdrs_gen = (unsigned long)-1;
    return gw;
}

void lock_etcd_gw_free(lock_etcd_gw_t *gw) {
    if (gw == NULL) {
        return;
    }
    if (gw->unary != NULL) {
        curl_easy_cleanup(gw->unary);
    }
    if (gw->watch != NULL) {
        curl_easy_cleanup(gw->watch);
    }
    curl_slist_free_all(gw->hdrs);
    free(gw);
}

const char *lock_etcd_gw_errstr(const lock_etcd_gw_t *gw) {
    return gw->errstr;
}

lock_errkind_t lock_etcd_gw_errkind(const lock_etcd_gw_t *gw) {
    return gw->errkind;
}

int lock_etcd_gw_bad_reply(lock_etcd_gw_t *gw, const char *what) {
    gw->errkind = LOCK_EPROTO;
    snprintf(gw->errstr, sizeof(gw->errstr), "etcd: unexpected reply to %s",
             what);
    return LOCK_ETCD_GW_ERR;
}

/* ------------------------------------------------------------- helpers --- */

int64_t lock_etcd_gw_ttl_s(uint32_t ttl_ms, uint32_t election_ms) {
    int64_t floor_s = ((int64_t)election_ms * 3 + 1999) / 2000;
    int64_t ttl_s = ((int64_t)ttl_ms + 999) / 1000;
    if (ttl_s < floor_s) {
        ttl_s = floor_s;
    }
    return ttl_s < 1 ? 1 : ttl_s;
}

static const char lock_etcd_gw__b64c[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *lock_etcd_gw_b64(const char *src, size_t n) {
    char *out = malloc((n + 2) / 3 * 4 + 1);
    if (out == NULL) {
        return NULL;
    }
    const unsigned char *s = (const unsigned char *)src;
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)s[i] << 16;
        if (i + 1 < n) {
            v |= (uint32_t)s[i + 1] << 8;
        }
        if (i + 2 < n) {
            v |= s[i + 2];
        }
        out[o++] = lock_etcd_gw__b64c[(v >> 18) & 63];
        out[o++] = lock_etcd_gw__b64c[(v >> 12) & 63];
        out[o++] = i + 1 < n ? lock_etcd_gw__b64c[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < n ? lock_etcd_gw__b64c[v & 63] : '=';
    }
    out[o] = '\0';
    return out;
}

long lock_etcd_gw_unb64(const char *src, char *out, size_t cap) {
    uint32_t acc = 0;
    int bits = 0;
    size_t o = 0;
    for (const char *p = src; *p != '\0' && *p != '='; p++) {
        const char *c = strchr(lock_etcd_gw__b64c, *p);
        if (c == NULL || *p == '\0') {
            return -1;
        }
        acc = (acc << 6) | (uint32_t)(c - lock_etcd_gw__b64c);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o >= cap) {
                return -1;
            }
            out[o++] = (char)((acc >> bits) & 0xff);
        }
    }
    return (long)o;
}

int64_t lock_etcd_gw_i64(const json_t *obj, const char *name) {
    const json_t *v = json_object_get(obj, name);
    if (json_is_string(v)) {
        return strtoll(json_string_value(v), NULL, 10);
    }
    if (json_is_integer(v)) {
        return json_integer_value(v);
    }
    return 0;
}

json_t *lock_etcd_gw_jint(int64_t v) {
    char buf[24];
    snprintf(buf, sizeof(buf), "%lld", (long long)v);
    return json_string(buf);
}

/* A growing response body. */
typedef struct lock_etcd_gw__buf {
    char *p;
    size_t len, cap;
    /* For watches: the key to look for and whether its DELETE was seen. */
    const char *wkey;
    size_t wkeylen;
    int deleted, ended;
} lock_etcd_gw__buf_t;

#define LOCK_ETCD_GW__BODY_MAX (4u << 20) /* no answer of ours is this big */

static int lock_etcd_gw__append(lock_etcd_gw__buf_t *b, const char *d,
                                size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 1024;
        while (cap < b->len + n + 1) {
            cap *= 2;
        }
        if (cap > LOCK_ETCD_GW__BODY_MAX) {
            return -1;
        }
        char *p = realloc(b->p, cap);
        if (p == NULL) {
            return -1;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, d, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

static size_t lock_etcd_gw__write(char *ptr, size_t size, size_t n, void *arg) {
    lock_etcd_gw__buf_t *b = arg;
    return lock_etcd_gw__append(b, ptr, size * n) == 0 ? size * n : 0;
}

/* The Authorization header for the current token (or none). */
static void lock_etcd_gw__headers(lock_etcd_gw_t *gw) {
    pthread_mutex_lock(&lock_etcd_gw__g.mu);
    if (gw->hdrs_gen != lock_etcd_gw__g.gen || gw->hdrs == NULL) {
        curl_slist_free_all(gw->hdrs);
        gw->hdrs = curl_slist_append(NULL, "Content-Type: application/json");
        /* No "Expect: 100-continue" (libcurl's default above 1 KiB of
         * body): it costs a round trip before every larger transaction. */
        if (gw->hdrs != NULL) {
            struct curl_slist *e = curl_slist_append(gw->hdrs, "Expect:");
            if (e != NULL) {
                gw->hdrs = e;
            }
        }
        if (lock_etcd_gw__g.token != NULL && gw->hdrs != NULL) {
            char h[512];
            snprintf(h, sizeof(h), "Authorization: %s", lock_etcd_gw__g.token);
            struct curl_slist *l = curl_slist_append(gw->hdrs, h);
            if (l != NULL) {
                gw->hdrs = l;
            }
        }
        gw->hdrs_gen = lock_etcd_gw__g.gen;
    }
    pthread_mutex_unlock(&lock_etcd_gw__g.mu);
}

/* Sets the options every request shares on handle h. */
static void lock_etcd_gw__setup(CURL *h, const char *url, const char *body,
                                struct curl_slist *hdrs, long timeout_ms,
                                lock_etcd_gw__buf_t *buf) {
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L); /* threads: no SIGALRM */
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms);
    curl_easy_setopt(h, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, lock_etcd_gw__write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, buf);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    if (lock_etcd_gw__g.ca_file[0] != '\0') {
        curl_easy_setopt(h, CURLOPT_CAINFO, lock_etcd_gw__g.ca_file);
    }
}

/* What one attempt came to. */
typedef enum lock_etcd_gw__outcome {
    LOCK_ETCD_GW__DONE = 0, /* 200, parsed */
    LOCK_ETCD_GW__NEXT,     /* try another endpoint */
    LOCK_ETCD_GW__REAUTH,   /* code 16: authenticate, then again */
    LOCK_ETCD_GW__NOTFOUND, /* code 5 */
    LOCK_ETCD_GW__FAIL,     /* final: errkind/errstr set */
} lock_etcd_gw__outcome_t;

/* Classifies an error answer {"error","message","code"} of HTTP status
 * http. */
static lock_etcd_gw__outcome_t lock_etcd_gw__classify(lock_etcd_gw_t *gw,
                                                      const char *url,
                                                      long http, json_t *j) {
    int64_t code = lock_etcd_gw_i64(j, "code");
    const char *msg = json_string_value(json_object_get(j, "error"));
    if (msg == NULL) {
        msg = "no error text";
    }
    snprintf(gw->errstr, sizeof(gw->errstr), "etcd %s: HTTP %ld: %s", url, http,
             msg);
    switch (code) {
    case 5:
        return LOCK_ETCD_GW__NOTFOUND;
    case 16:
        gw->errkind = LOCK_EAUTH;
        return LOCK_ETCD_GW__REAUTH;
    case 7:
        gw->errkind = LOCK_EPERM;
        return LOCK_ETCD_GW__FAIL;
    case 3:
        /* etcd answers refused credentials with code 3 (invalid argument),
         * the code of every malformed request too; its fixed message is
         * the only mark that tells them apart, so this reads etcd's reply
         * text, never our errstr. */
        if (strstr(msg, "authentication failed") != NULL) {
            gw->errkind = LOCK_EAUTH;
            return LOCK_ETCD_GW__FAIL;
        }
        break;
    case 4:  /* deadline exceeded: "request timed out" */
    case 14: /* unavailable: "no leader", "leader changed" ... */
        gw->errkind = LOCK_EIO;
        return LOCK_ETCD_GW__NEXT;
    default:
        break;
    }
    if (http >= 500) {
        gw->errkind = LOCK_EIO;
        return LOCK_ETCD_GW__NEXT;
    }
    gw->errkind = LOCK_EPROTO;
    return LOCK_ETCD_GW__FAIL;
}

/* The time one attempt may take, in ms: what is left until deadline_ns,
 * at most the per-endpoint timeout and at least 1 ms; 0 when the deadline
 * has passed (no attempt). */
static long lock_etcd_gw__attempt_ms(int64_t deadline_ns) {
    int64_t left = deadline_ns - mono_ns();
    if (left <= 0) {
        return 0;
    }
    long tmo = (long)(left / MONO_MS);
    if (tmo > (long)lock_etcd_gw__g.timeout_ms) {
        tmo = (long)lock_etcd_gw__g.timeout_ms;
    }
    return tmo < 1 ? 1 : tmo;
}

/* One POST of body to endpoint i, within timeout_ms. On DONE *resp is the
 * parsed answer (for streams: its "result"). */
static lock_etcd_gw__outcome_t
lock_etcd_gw__attempt(lock_etcd_gw_t *gw, int i, const char *path,
                      const char *body, long timeout_ms, json_t **resp) {
    char url[512];
    snprintf(url, sizeof(url), "%s%s", lock_etcd_gw__g.urls[i], path);
    lock_etcd_gw__headers(gw);
    lock_etcd_gw__buf_t buf = {0};
    lock_etcd_gw__setup(gw->unary, url, body, gw->hdrs, timeout_ms, &buf);
    CURLcode cc = curl_easy_perform(gw->unary);
    long http = 0;
    curl_easy_getinfo(gw->unary, CURLINFO_RESPONSE_CODE, &http);
    if (cc != CURLE_OK) {
        gw->errkind = LOCK_EIO;
        snprintf(gw->errstr, sizeof(gw->errstr), "etcd %s: %s", url,
                 curl_easy_strerror(cc));
        free(buf.p);
        return LOCK_ETCD_GW__NEXT;
    }
    json_error_t je;
    json_t *j = buf.p != NULL
                    ? json_loadb(buf.p, buf.len, JSON_DISABLE_EOF_CHECK, &je)
                    : NULL;
    free(buf.p);
    if (!json_is_object(j)) {
        json_decref(j);
        gw->errkind = http >= 500 ? LOCK_EIO : LOCK_EPROTO;
        snprintf(gw->errstr, sizeof(gw->errstr),
                 "etcd %s: HTTP %ld with no JSON object", url, http);
        return http >= 500 ? LOCK_ETCD_GW__NEXT : LOCK_ETCD_GW__FAIL;
    }
    /* A stream's message carries either a result or an error. */
    json_t *inner = json_object_get(j, "error");
    if (http == 200 && json_is_object(inner)) {
        lock_etcd_gw__outcome_t o =
            lock_etcd_gw__classify(gw, url, http, inner);
        json_decref(j);
        return o;
    }
    if (http != 200) {
        lock_etcd_gw__outcome_t o = lock_etcd_gw__classify(gw, url, http, j);
        json_decref(j);
        return o;
    }
    json_t *result = json_object_get(j, "result");
    if (json_is_object(result)) {
        json_incref(result);
        json_decref(j);
        j = result;
    }
    *resp = j;
    return LOCK_ETCD_GW__DONE;
}

/* Gets a new token unless the one that failed (generation gen) was already
 * replaced by another thread. 0, or -1 with errkind/errstr set. */
static int lock_etcd_gw__authenticate(lock_etcd_gw_t *gw, unsigned long gen,
                                      int64_t deadline_ns) {
    pthread_mutex_lock(&lock_etcd_gw__g.mu);
    int fresh = lock_etcd_gw__g.gen != gen && lock_etcd_gw__g.token != NULL;
    pthread_mutex_unlock(&lock_etcd_gw__g.mu);
    if (fresh) {
        return 0;
    }
    json_t *req = json_pack("{s:s, s:s}", "name", lock_etcd_gw__g.username,
                            "password", lock_etcd_gw__g.password);
    char *body = req != NULL ? json_dumps(req, JSON_COMPACT) : NULL;
    json_decref(req);
    if (body == NULL) {
        gw->errkind = LOCK_ESYS;
        snprintf(gw->errstr, sizeof(gw->errstr), "out of memory");
        return -1;
    }
    int rc = -1;
    for (int k = 0; k < lock_etcd_gw__g.n; k++) {
        int i = (gw->cur + k) % lock_etcd_gw__g.n;
        long tmo = lock_etcd_gw__attempt_ms(deadline_ns);
        if (tmo == 0) {
            break;
        }
        json_t *resp = NULL;
        /* The authenticate call itself carries no token. */
        pthread_mutex_lock(&lock_etcd_gw__g.mu);
        char *old = lock_etcd_gw__g.token;
        lock_etcd_gw__g.token = NULL;
        lock_etcd_gw__g.gen++;
        pthread_mutex_unlock(&lock_etcd_gw__g.mu);
        free(old);
        lock_etcd_gw__outcome_t o = lock_etcd_gw__attempt(
            gw, i, "/v3/auth/authenticate", body, tmo, &resp);
        if (o == LOCK_ETCD_GW__DONE) {
            const char *t = json_string_value(json_object_get(resp, "token"));
            if (t == NULL) {
                json_decref(resp);
                lock_etcd_gw_bad_reply(gw, "authenticate");
                break;
            }
            pthread_mutex_lock(&lock_etcd_gw__g.mu);
            free(lock_etcd_gw__g.token);
            lock_etcd_gw__g.token = strdup(t);
            lock_etcd_gw__g.gen++;
            pthread_mutex_unlock(&lock_etcd_gw__g.mu);
            json_decref(resp);
            gw->cur = i;
            rc = 0;
            break;
        }
        if (o != LOCK_ETCD_GW__NEXT) {
            if (gw->errkind == LOCK_EPROTO || gw->errkind == LOCK_ENONE) {
                gw->errkind = LOCK_EAUTH;
            }
            break;
        }
    }
    free(body);
    return rc;
}

/* With auth configured, gets the first token before the first call. 0, or
 * -1 with errkind/errstr set. */
static int lock_etcd_gw__first_token(lock_etcd_gw_t *gw, int64_t deadline_ns) {
    pthread_mutex_lock(&lock_etcd_gw__g.mu);
    int need_auth =
        lock_etcd_gw__g.username[0] != '\0' && lock_etcd_gw__g.token == NULL;
    unsigned long gen = lock_etcd_gw__g.gen;
    pthread_mutex_unlock(&lock_etcd_gw__g.mu);
    return need_auth ? lock_etcd_gw__authenticate(gw, gen, deadline_ns) : 0;
}

int lock_etcd_gw_call(lock_etcd_gw_t *gw, const char *path, json_t *req,
                      int64_t deadline_ns, json_t **resp, int64_t *sent_ns) {
    *resp = NULL;
    int n = lock_etcd_gw__g.n;
    if (deadline_ns == 0) {
        deadline_ns =
            mono_ns() + (int64_t)n * lock_etcd_gw__g.timeout_ms * MONO_MS;
    }
    char *body = json_dumps(req, JSON_COMPACT);
    if (body == NULL) {
        gw->errkind = LOCK_ESYS;
        snprintf(gw->errstr, sizeof(gw->errstr), "out of memory");
        return LOCK_ETCD_GW_ERR;
    }
    if (lock_etcd_gw__first_token(gw, deadline_ns) != 0) {
        free(body);
        return LOCK_ETCD_GW_ERR;
    }
    unsigned long gen = 0;

    int rc = LOCK_ETCD_GW_ERR, reauthed = 0, attempts = 0;
    gw->errkind = LOCK_EIO;
    snprintf(gw->errstr, sizeof(gw->errstr),
             "etcd: %s: the deadline passed before any endpoint answered",
             path);
    for (int k = 0; k < n; k++) {
        int i = (gw->cur + k) % n;
        long tmo = lock_etcd_gw__attempt_ms(deadline_ns);
        if (tmo == 0) {
            break;
        }
        pthread_mutex_lock(&lock_etcd_gw__g.mu);
        gen = lock_etcd_gw__g.gen;
        pthread_mutex_unlock(&lock_etcd_gw__g.mu);
        if (sent_ns != NULL) {
            *sent_ns = mono_boot_ns();
        }
        /* The bound at the top: one attempt per endpoint, one more after a
         * re-authentication. */
        attempts++;
        assert(attempts <= n + reauthed);
        lock_etcd_gw__outcome_t o =
            lock_etcd_gw__attempt(gw, i, path, body, tmo, resp);
        if (o == LOCK_ETCD_GW__DONE) {
            gw->cur = i;
            gw->errkind = LOCK_ENONE;
            rc = LOCK_ETCD_GW_OK;
            break;
        }
        if (o == LOCK_ETCD_GW__NOTFOUND) {
            gw->cur = i;
            rc = LOCK_ETCD_GW_NOTFOUND;
            break;
        }
        if (o == LOCK_ETCD_GW__REAUTH && !reauthed &&
            lock_etcd_gw__g.username[0] != '\0') {
            reauthed = 1;
            if (lock_etcd_gw__authenticate(gw, gen, deadline_ns) != 0) {
                break;
            }
            k--; /* the same endpoint again, with the new token */
            continue;
        }
        if (o != LOCK_ETCD_GW__NEXT) {
            break;
        }
    }
    free(body);
    return rc;
}

/* ---------------------------------------------------------------- watch --- */

/* Looks at every complete line of a watch stream: a DELETE event of the
 * key, or the end of the watch (cancelled, compacted, an error). */
static void lock_etcd_gw__watch_lines(lock_etcd_gw__buf_t *b) {
    char *nl;
    while ((nl = memchr(b->p, '\n', b->len)) != NULL) {
        size_t linelen = (size_t)(nl - b->p);
        json_error_t je;
        json_t *j = json_loadb(b->p, linelen, 0, &je);
        json_t *r = json_object_get(j, "result");
        if (json_object_get(j, "error") != NULL ||
            json_is_true(json_object_get(r, "canceled")) ||
            lock_etcd_gw_i64(r, "compact_revision") != 0) {
            b->ended = 1;
        }
        size_t i;
        json_t *ev;
        json_array_foreach(json_object_get(r, "events"), i, ev) {
            const char *type = json_string_value(json_object_get(ev, "type"));
            const char *k64 = json_string_value(
                json_object_get(json_object_get(ev, "kv"), "key"));
            char key[LOCK_KEY_MAX * 2];
            long klen =
                k64 != NULL ? lock_etcd_gw_unb64(k64, key, sizeof(key)) : -1;
            if (type != NULL && strcmp(type, "DELETE") == 0 && klen >= 0 &&
                (size_t)klen == b->wkeylen &&
                memcmp(key, b->wkey, b->wkeylen) == 0) {
                b->deleted = 1;
            }
        }
        json_decref(j);
        memmove(b->p, nl + 1, b->len - linelen - 1);
        b->len -= linelen + 1;
        b->p[b->len] = '\0';
    }
}

static size_t lock_etcd_gw__watch_write(char *ptr, size_t size, size_t n,
                                        void *arg) {
    lock_etcd_gw__buf_t *b = arg;
    if (lock_etcd_gw__append(b, ptr, size * n) != 0) {
        return 0;
    }
    lock_etcd_gw__watch_lines(b);
    /* Returning less than given ends the transfer: we have our answer. */
    return b->deleted || b->ended ? 0 : size * n;
}

int lock_etcd_gw_watch_delete(lock_etcd_gw_t *gw, const char *key,
                              size_t keylen, int64_t start_rev,
                              int64_t until_ns) {
    int64_t left = until_ns - mono_ns();
    if (left <= 0) {
        return 0;
    }
    char *k64 = lock_etcd_gw_b64(key, keylen);
    json_t *req =
        k64 != NULL ? json_pack("{s:{s:s, s:o}}", "create_request", "key", k64,
                                "start_revision", lock_etcd_gw_jint(start_rev))
                    : NULL;
    free(k64);
    char *body = req != NULL ? json_dumps(req, JSON_COMPACT) : NULL;
    json_decref(req);
    if (body == NULL) {
        return 0;
    }
    char url[512];
    snprintf(url, sizeof(url), "%s/v3/watch", lock_etcd_gw__g.urls[gw->cur]);
    lock_etcd_gw__headers(gw);
    lock_etcd_gw__buf_t buf = {.wkey = key, .wkeylen = keylen};
    lock_etcd_gw__setup(gw->watch, url, body, gw->hdrs,
                        (long)(left / MONO_MS) + 1, &buf);
    /* Connecting is bounded by the unary timeout: a dead endpoint must not
     * eat the whole wait. */
    long ctmo = (long)lock_etcd_gw__g.timeout_ms;
    curl_easy_setopt(gw->watch, CURLOPT_CONNECTTIMEOUT_MS,
                     ctmo < left / MONO_MS ? ctmo : (long)(left / MONO_MS) + 1);
    curl_easy_setopt(gw->watch, CURLOPT_WRITEFUNCTION,
                     lock_etcd_gw__watch_write);
    CURLcode cc = curl_easy_perform(gw->watch);
    free(body);
    free(buf.p);
    if (buf.deleted) {
        return 1;
    }
    if (cc == CURLE_COULDNT_CONNECT || cc == CURLE_OPERATION_TIMEDOUT ||
        cc == CURLE_RECV_ERROR || cc == CURLE_GOT_NOTHING) {
        long http = 0;
        curl_easy_getinfo(gw->watch, CURLINFO_RESPONSE_CODE, &http);
        if (cc != CURLE_OPERATION_TIMEDOUT || http == 0) {
            /* No stream at all from this member: the next watch goes to
             * the next one. */
            gw->cur = (gw->cur + 1) % lock_etcd_gw__g.n;
        }
    }
    return 0;
}
