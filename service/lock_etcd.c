/*
 * lock_etcd.c: the etcd backend (COUPON_LOCK_BACKEND=etcd), the lock of
 * etcd's own concurrency.Mutex written again over the v3 JSON gateway
 * (lock_etcd_gw.c). No etcd type or call leaves lock_etcd*.c.
 *
 * Keys, under COUPON_ETCD_PREFIX (P, default "couponsvc/"):
 *   P lock/R/TOKEN   one per acquire attempt of resource R (the coupon id, or
 *                    "ID#b" for a bucket), empty value, attached to the
 *                    process lease; TOKEN is the attempt's 128-bit token, so
 *                    two threads of one process never share a key
 *   P fence/R        R's fence offset, a decimal number (absent: 0)
 *
 * The session. One lease per process, like concurrency.Session: granted on
 * the first acquire with the TTL below, kept alive by the watchdog's round
 * (lock_extend_many = one /v3/lease/keepalive for all the process's locks,
 * whatever their number). The keep-alive of an expired lease still answers
 * HTTP 200, with no TTL: the lease is lost when the keep-alive fails
 * (transport or HTTP error, after the TTL ran out by our clock) or answers a
 * TTL absent or <= 0, and then every lock of the process is lost with it
 * (etcd deleted their keys). An acquire that finds the session older than
 * half its TTL (the process held no lock for a while, so no round kept it
 * alive) sends one keep-alive itself first, and grants a new lease if the old
 * one is gone. At shutdown the lease is revoked: every key goes at once.
 *
 * The TTL. Whole seconds (the lease API's unit), at least ⌈1.5 x the
 * cluster's election timeout⌉ (COUPON_ETCD_ELECTION_TIMEOUT_MS, 1000 ms by
 * default: 2 s), because a leader change may take that long and a lease
 * shorter than it could expire while no leader can renew it. etcd itself
 * grants no less than 1.5 x its election timeout whatever we ask. So
 * COUPON_LOCK_TTL_MS is rounded up, and the start-up log says so.
 *
 * Acquire (one round trip when the lock is free):
 *   1. txn: if create_revision(P lock/R/TOKEN) == 0 then put it with the
 *      lease, else read it (a retry after a lost answer finds its own key:
 *      the put is done at most once); in both branches read the key of R
 *      with the lowest create revision and R's fence offset;
 *   2. our key's create revision is the lowest: granted, fence = offset +
 *      create revision;
 *   3. else wait: read the key of R with the highest create revision below
 *      ours (the one just before us) and watch it from that read's revision
 *      until it is deleted: only the next waiter wakes on a release, not the
 *      whole queue. A watch lasts at most COUPON_LOCK_RECHECK_MS, then we
 *      read again (a partitioned member's stream would otherwise keep us
 *      asleep). Each wake is one txn of three reads: our key (gone: the
 *      session was lost while we waited: start over with a new one), the key
 *      before ours, and the offset; no key before ours: granted;
 *   4. the deadline passed, or an error: delete our key, or it would block
 *      the queue for as long as the process lives.
 * Release deletes our key; the waiter behind it wakes. The watchdog's max
 * hold (lock_abandon) deletes it too: the lease serves the process's other
 * locks and must live on.
 *
 * The fence: offset + create revision. The revision is etcd's cluster-wide
 * counter of writes: every later key has a higher one, and the owner of R is
 * always the key with the lowest, so grants of R come in create-revision
 * order; it cannot be lost the way a Redis counter can (it is in the raft
 * log of a quorum). But it can be below the coupon's last accepted fence in
 * PostgreSQL: a coupon that used the Redis backend before (fences of
 * millions), a cluster restored from an older snapshot, or a new cluster.
 * Then every write would be refused forever. Decision: the offset, kept in
 * etcd, read in the same txn as the grant, raised during the recovery the
 * claim already has (PostgreSQL refused our fence while our key still holds
 * the lock: lock_raise_fence(R, last_fence)) by compare-and-swap on its mod
 * revision to last_fence itself; every later grant then draws last_fence +
 * a revision > last_fence. Offsets only rise, revisions only rise: fences
 * rise in grant order. The switch needs no operator step; the first claim
 * of such a coupon costs one refused transaction and one retry.
 */
#include <assert.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lock.h"
#include "lock_backend.h"
#include "lock_etcd_gw.h"
#include "log.h"
#include "mono.h"

typedef struct lock_etcd__client {
    struct lock_client_base base; /* first: lock.c reads it */
    lock_etcd_gw_t *gw;
} lock_etcd__client_t;

static struct {
    pthread_mutex_t mu;       /* the session fields below */
    pthread_mutex_t grant_mu; /* one thread refreshes the session at once */
    const cfg_t *cfg;
    int64_t ttl_s;          /* asked of etcd */
    int64_t lease_id;       /* 0: none yet, or the last one was lost */
    int64_t lease_ttl_ms;   /* as granted (and kept alive) */
    int64_t valid_until_ns; /* boot clock: last keep-alive sent + TTL */
    uint32_t recheck_ms;
} lock_etcd__g = {.mu = PTHREAD_MUTEX_INITIALIZER,
                  .grant_mu = PTHREAD_MUTEX_INITIALIZER};

/* The session's invariant (under mu): a session (lease_id != 0) has a TTL
 * as granted (lease_ttl_ms > 0) and an instant it is valid until
 * (valid_until_ns > 0), which a keep-alive of that session only moves
 * forward; lease_id 0 means no session, whatever the other two hold. */
static int lock_etcd__session_ok(void) {
    return lock_etcd__g.lease_id == 0 ||
           (lock_etcd__g.lease_ttl_ms > 0 && lock_etcd__g.valid_until_ns > 0);
}

#define LOCK_ETCD__KEY_MAX (LOCK_KEY_MAX + 256)
#define LOCK_ETCD__RETRIES 3 /* fresh sessions one acquire may start */
/* extend_many's mark, inside one call, for "this lease's session lease was
 * asked already and the answer was an error": kept apart from LOCK_ERR
 * ("not asked yet") and turned into LOCK_ERR before the call returns. */
#define LOCK_ETCD__DONE_UNKNOWN (-2)

static lock_etcd__client_t *lock_etcd__cl(lock_client_t *cl) {
    return (lock_etcd__client_t *)cl;
}

/* Copies gw's error onto cl. Returns LOCK_ERR. */
static int lock_etcd__fail(lock_etcd__client_t *c) {
    return lock_client_fail(&c->base, lock_etcd_gw_errkind(c->gw), "%s",
                            lock_etcd_gw_errstr(c->gw));
}

static int lock_etcd__bad(lock_etcd__client_t *c, const char *what) {
    lock_etcd_gw_bad_reply(c->gw, what);
    return lock_etcd__fail(c);
}

/* One attempt's bound when the caller has none. */
static int64_t lock_etcd__deadline(void) {
    return mono_ns() + (int64_t)lock_etcd_gw_nendpoints() *
                           lock_etcd__g.cfg->etcd_timeout_ms * MONO_MS;
}

/* The bound of a call made on the way to deadline: the deadline, but never
 * less than one attempt. A call that ran out of time before it was sent
 * would report the backend unavailable when only our wait ended (and only
 * "unavailable" may switch a degraded mode on). */
static int64_t lock_etcd__bound(int64_t deadline) {
    int64_t min =
        mono_ns() + (int64_t)lock_etcd__g.cfg->etcd_timeout_ms * MONO_MS;
    return deadline > min ? deadline : min;
}

/* ---------------------------------------------------------------- keys --- */

static const char *lock_etcd__prefix(void) {
    return lock_etcd__g.cfg->etcd_prefix;
}

/* The resource R of a lease (its Redis-style key says it). */
static void lock_etcd__resource(const lock_lease_t *lease, char *out) {
    lock_resource_of(lease->key, out);
}

static void lock_etcd__my_key(const lock_lease_t *lease, char *out) {
    char r[LOCK_KEY_MAX];
    lock_etcd__resource(lease, r);
    snprintf(out, LOCK_ETCD__KEY_MAX, "%slock/%s/%s", lock_etcd__prefix(), r,
             lease->token);
}

static void lock_etcd__queue_prefix(const char *r, char *out) {
    snprintf(out, LOCK_ETCD__KEY_MAX, "%slock/%s/", lock_etcd__prefix(), r);
}

static void lock_etcd__fence_key(const char *r, char *out) {
    snprintf(out, LOCK_ETCD__KEY_MAX, "%sfence/%s", lock_etcd__prefix(), r);
}

/* JSON string of a key in base64 (new reference, NULL when out of memory). */
static json_t *lock_etcd__jkey(const char *key) {
    char *b = lock_etcd_gw_b64(key, strlen(key));
    json_t *j = b != NULL ? json_string(b) : NULL;
    free(b);
    return j;
}

/* The range_end that makes a range of every key starting with prefix. */
static json_t *lock_etcd__jend(const char *prefix) {
    char end[LOCK_ETCD__KEY_MAX];
    snprintf(end, sizeof(end), "%s", prefix);
    end[strlen(end) - 1]++; /* "R/" -> "R0": prefixes end in '/' */
    return lock_etcd__jkey(end);
}

/* A range request op: the key alone. */
static json_t *lock_etcd__op_get(const char *key) {
    return json_pack("{s:{s:o}}", "request_range", "key", lock_etcd__jkey(key));
}

/* The first key of R's queue (lowest create revision). */
static json_t *lock_etcd__op_owner(const char *r) {
    char q[LOCK_ETCD__KEY_MAX];
    lock_etcd__queue_prefix(r, q);
    return json_pack("{s:{s:o, s:o, s:s, s:s, s:s, s:b}}", "request_range",
                     "key", lock_etcd__jkey(q), "range_end", lock_etcd__jend(q),
                     "sort_order", "ASCEND", "sort_target", "CREATE", "limit",
                     "1", "keys_only", 1);
}

/* The key of R's queue just before create revision rev. */
static json_t *lock_etcd__op_before(const char *r, int64_t rev) {
    char q[LOCK_ETCD__KEY_MAX];
    lock_etcd__queue_prefix(r, q);
    return json_pack("{s:{s:o, s:o, s:s, s:s, s:s, s:o, s:b}}", "request_range",
                     "key", lock_etcd__jkey(q), "range_end", lock_etcd__jend(q),
                     "sort_order", "DESCEND", "sort_target", "CREATE", "limit",
                     "1", "max_create_revision", lock_etcd_gw_jint(rev - 1),
                     "keys_only", 1);
}

/* responses[i].response_range.kvs[0] of a txn answer, or NULL. */
static json_t *lock_etcd__kv(json_t *txn, size_t i) {
    json_t *r = json_array_get(json_object_get(txn, "responses"), i);
    return json_array_get(
        json_object_get(json_object_get(r, "response_range"), "kvs"), 0);
}

/* The decimal number in a kv's base64 value (0 for none). */
static int64_t lock_etcd__kv_int(const json_t *kv) {
    const char *v = json_string_value(json_object_get(kv, "value"));
    char buf[32];
    long n = v != NULL ? lock_etcd_gw_unb64(v, buf, sizeof(buf) - 1) : -1;
    if (n <= 0) {
        return 0;
    }
    buf[n] = '\0';
    return strtoll(buf, NULL, 10);
}

/* A call that consumes req. */
static int lock_etcd__call(lock_etcd__client_t *c, const char *path,
                           json_t *req, int64_t deadline, json_t **resp,
                           int64_t *sent) {
    if (req == NULL) {
        return lock_client_fail(&c->base, LOCK_ESYS, "out of memory");
    }
    int rc = lock_etcd_gw_call(c->gw, path, req, deadline, resp, sent);
    json_decref(req);
    return rc;
}

/* ------------------------------------------------------------- session --- */

/* Keeps lease id alive once. LOCK_HELD: alive (its TTL in *ttl_ms, sent
 * time in *sent); LOCK_LOST: gone (etcd answered no TTL, or not found);
 * LOCK_ERR. */
static int lock_etcd__keepalive(lock_etcd__client_t *c, int64_t id,
                                int64_t deadline, int64_t *ttl_ms,
                                int64_t *sent) {
    json_t *resp = NULL;
    int rc = lock_etcd__call(c, "/v3/lease/keepalive",
                             json_pack("{s:o}", "ID", lock_etcd_gw_jint(id)),
                             deadline, &resp, sent);
    if (rc == LOCK_ETCD_GW_NOTFOUND) {
        return LOCK_LOST;
    }
    if (rc != LOCK_ETCD_GW_OK) {
        return lock_etcd__fail(c);
    }
    int64_t ttl = lock_etcd_gw_i64(resp, "TTL");
    json_decref(resp);
    *ttl_ms = ttl * 1000;
    return ttl > 0 ? LOCK_HELD : LOCK_LOST;
}

/* Grants a new process lease: LOCK_OK with its *id, *ttl_ms and the
 * instant it is valid until (*until, boot clock), or LOCK_ERR. */
static int lock_etcd__grant(lock_etcd__client_t *c, int64_t deadline,
                            int64_t *id, int64_t *ttl_ms, int64_t *until) {
    json_t *resp = NULL;
    int64_t sent = 0;
    int g = lock_etcd__call(
        c, "/v3/lease/grant",
        json_pack("{s:o}", "TTL", lock_etcd_gw_jint(lock_etcd__g.ttl_s)),
        deadline, &resp, &sent);
    if (g != LOCK_ETCD_GW_OK) {
        return lock_etcd__fail(c);
    }
    int64_t cur = lock_etcd_gw_i64(resp, "ID");
    int64_t ttl = lock_etcd_gw_i64(resp, "TTL") * 1000;
    json_decref(resp);
    if (cur == 0 || ttl <= 0) {
        return lock_etcd__bad(c, "lease grant");
    }
    *id = cur;
    *ttl_ms = ttl;
    *until = sent + ttl * MONO_MS;
    log_info("lock.etcd_session", "lease=%llx ttl_ms=%lld",
             (unsigned long long)cur, (long long)ttl);
    return LOCK_OK;
}

/* The process lease, fresh for at least half its TTL: kept alive or granted
 * anew if needed. LOCK_OK with *id, *ttl_ms and *valid_until, or LOCK_ERR. */
static int lock_etcd__session(lock_etcd__client_t *c, int64_t deadline,
                              int64_t *id, int64_t *ttl_ms,
                              int64_t *valid_until) {
    pthread_mutex_lock(&lock_etcd__g.grant_mu);
    pthread_mutex_lock(&lock_etcd__g.mu);
    int64_t cur = lock_etcd__g.lease_id, ttl = lock_etcd__g.lease_ttl_ms;
    int64_t until = lock_etcd__g.valid_until_ns;
    pthread_mutex_unlock(&lock_etcd__g.mu);
    int64_t now = mono_boot_ns();
    int rc = LOCK_OK;
    if (cur != 0 && until - now > ttl * MONO_MS / 2) {
        goto done;
    }
    if (cur != 0 && now < until) {
        int64_t sent = 0, t = 0;
        int k = lock_etcd__keepalive(c, cur, deadline, &t, &sent);
        if (k == LOCK_HELD) {
            ttl = t;
            until = sent + t * MONO_MS;
            goto store;
        }
        if (k == LOCK_ERR) {
            rc = LOCK_ERR;
            goto done;
        }
        log_warn("lock.etcd_session_lost", "lease=%llx (keep-alive: no TTL)",
                 (unsigned long long)cur);
    }
    /* No lease, or it ran out: a new one. */
    rc = lock_etcd__grant(c, deadline, &cur, &ttl, &until);
    if (rc != LOCK_OK) {
        goto done;
    }
store:
    pthread_mutex_lock(&lock_etcd__g.mu);
    lock_etcd__g.lease_id = cur;
    lock_etcd__g.lease_ttl_ms = ttl;
    lock_etcd__g.valid_until_ns = until;
    assert(lock_etcd__session_ok());
    pthread_mutex_unlock(&lock_etcd__g.mu);
done:
    pthread_mutex_unlock(&lock_etcd__g.grant_mu);
    *id = cur;
    *ttl_ms = ttl;
    *valid_until = until;
    return rc;
}

/* Forgets lease id as the process's session (it was found lost). */
static void lock_etcd__session_lost(int64_t id) {
    pthread_mutex_lock(&lock_etcd__g.mu);
    if (lock_etcd__g.lease_id == id) {
        lock_etcd__g.lease_id = 0;
        lock_etcd__g.valid_until_ns = 0;
    }
    assert(lock_etcd__session_ok());
    pthread_mutex_unlock(&lock_etcd__g.mu);
}

/* ---------------------------------------------------------------- init --- */

int lock_etcd_selected(const cfg_t *cfg) {
    return cfg->lock_backend != NULL && strcmp(cfg->lock_backend, "etcd") == 0;
}

static int lock_etcd__init(const cfg_t *cfg, char *err, size_t errlen) {
    lock_etcd__g.cfg = cfg;
    if (lock_etcd_gw_init(cfg->etcd_endpoints, cfg->etcd_username,
                          cfg->etcd_password, cfg->etcd_ca_file,
                          cfg->etcd_timeout_ms, err, errlen) != 0) {
        return -1;
    }
    if (cfg->etcd_prefix[0] == '\0' ||
        cfg->etcd_prefix[strlen(cfg->etcd_prefix) - 1] != '/') {
        snprintf(err, errlen, "COUPON_ETCD_PREFIX must end in '/' (\"%s\")",
                 cfg->etcd_prefix);
        return -1;
    }
    int64_t ttl_s = lock_etcd_gw_ttl_s(cfg->lock_ttl_ms, cfg->etcd_election_ms);
    lock_etcd__g.ttl_s = ttl_s;
    lock_etcd__g.recheck_ms = cfg->lock_recheck_ms;
    if (ttl_s * 1000 != (int64_t)cfg->lock_ttl_ms) {
        log_info("lock.etcd_ttl",
                 "COUPON_LOCK_TTL_MS=%u rounded up to %lld s (etcd leases "
                 "are whole seconds, at least 1.5 x the election timeout "
                 "%u ms)",
                 cfg->lock_ttl_ms, (long long)ttl_s, cfg->etcd_election_ms);
    }
    if ((int64_t)cfg->watchdog_period_ms * 2 > ttl_s * 1000) {
        log_warn("lock.etcd_ttl",
                 "the watchdog period %u ms is more than "
                 "half the lease TTL %lld s",
                 cfg->watchdog_period_ms, (long long)ttl_s);
    }
    log_info("lock.backend",
             "backend=etcd endpoints=%s prefix=%s auth=%s ttl_s=%lld",
             cfg->etcd_endpoints, cfg->etcd_prefix,
             cfg->etcd_username[0] != '\0' ? "on" : "off", (long long)ttl_s);
    return 0;
}

static lock_client_t *lock_etcd__client_new(const cfg_t *cfg) {
    (void)cfg;
    lock_etcd__client_t *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        return NULL;
    }
    lock_client_base_init(&c->base, &lock_etcd_backend);
    c->gw = lock_etcd_gw_new();
    if (c->gw == NULL) {
        free(c);
        return NULL;
    }
    return &c->base;
}

static void lock_etcd__client_free(lock_client_t *cl) {
    lock_etcd__client_t *c = lock_etcd__cl(cl);
    lock_etcd_gw_free(c->gw);
    free(c);
}

/* Revokes the session (every key of the process goes at once), bounded. */
static void lock_etcd__shutdown(void) {
    pthread_mutex_lock(&lock_etcd__g.mu);
    int64_t id = lock_etcd__g.lease_id;
    lock_etcd__g.lease_id = 0;
    pthread_mutex_unlock(&lock_etcd__g.mu);
    if (id != 0) {
        lock_etcd__client_t *c =
            lock_etcd__cl(lock_etcd__client_new(lock_etcd__g.cfg));
        if (c != NULL) {
            json_t *resp = NULL;
            int rc =
                lock_etcd__call(c, "/v3/lease/revoke",
                                json_pack("{s:o}", "ID", lock_etcd_gw_jint(id)),
                                lock_etcd__deadline(), &resp, NULL);
            json_decref(resp);
            log_info("lock.etcd_session_revoked", "lease=%llx ok=%d",
                     (unsigned long long)id, rc == LOCK_ETCD_GW_OK);
            lock_etcd__client_free(&c->base);
        }
    }
    lock_etcd_gw_shutdown();
}

/* ------------------------------------------------------------- acquire --- */

/* Deletes key, bounded; best effort (logged). */
static int lock_etcd__delete(lock_etcd__client_t *c, const char *key) {
    json_t *resp = NULL;
    int rc = lock_etcd__call(c, "/v3/kv/deleterange",
                             json_pack("{s:o}", "key", lock_etcd__jkey(key)),
                             lock_etcd__deadline(), &resp, NULL);
    json_decref(resp);
    if (rc != LOCK_ETCD_GW_OK) {
        log_warn("lock.etcd_delete_failed",
                 "key=%s err=\"%s\" (goes with the lease)", key,
                 lock_etcd_gw_errstr(c->gw));
        return lock_etcd__fail(c);
    }
    return LOCK_OK;
}

/* Step 1: puts our key (once) and reads the owner and the offset. LOCK_OK
 * with *myrev, *owner (0: empty queue), *offset; 1 when the session lease
 * was not found (lost: the caller starts a new one); LOCK_ERR. */
static int lock_etcd__enqueue(lock_etcd__client_t *c, const lock_lease_t *lease,
                              int64_t id, int64_t deadline, int64_t *myrev,
                              int64_t *owner, int64_t *offset) {
    char key[LOCK_ETCD__KEY_MAX], fk[LOCK_ETCD__KEY_MAX], r[LOCK_KEY_MAX];
    lock_etcd__my_key(lease, key);
    lock_etcd__resource(lease, r);
    lock_etcd__fence_key(r, fk);
    json_t *req = json_pack(
        "{s:[{s:s, s:o, s:s}], s:[{s:{s:o, s:s, s:o}}, o, o], s:[o, o, o]}",
        "compare", "target", "CREATE", "key", lock_etcd__jkey(key),
        "create_revision", "0", "success", "request_put", "key",
        lock_etcd__jkey(key), "value", "", "lease", lock_etcd_gw_jint(id),
        lock_etcd__op_owner(r), lock_etcd__op_get(fk), "failure",
        lock_etcd__op_get(key), lock_etcd__op_owner(r), lock_etcd__op_get(fk));
    json_t *resp = NULL;
    int rc = lock_etcd__call(c, "/v3/kv/txn", req, deadline, &resp, NULL);
    if (rc == LOCK_ETCD_GW_NOTFOUND) {
        return 1; /* "requested lease not found" */
    }
    if (rc != LOCK_ETCD_GW_OK) {
        return lock_etcd__fail(c);
    }
    int ok = json_is_true(json_object_get(resp, "succeeded"));
    *myrev = ok ? lock_etcd_gw_i64(json_object_get(resp, "header"), "revision")
                : lock_etcd_gw_i64(lock_etcd__kv(resp, 0), "create_revision");
    *owner = lock_etcd_gw_i64(lock_etcd__kv(resp, 1), "create_revision");
    *offset = lock_etcd__kv_int(lock_etcd__kv(resp, 2));
    json_decref(resp);
    if (*myrev <= 0) {
        return lock_etcd__bad(c, "acquire txn");
    }
    return LOCK_OK;
}

/* One look at the queue while waiting: is our key still there, which key is
 * just before it, and the offset. LOCK_OK with *mine (0/1), *before (new
 * string or NULL: none), *rev (the read's revision), *offset; LOCK_ERR. */
static int lock_etcd__look(lock_etcd__client_t *c, const lock_lease_t *lease,
                           int64_t myrev, int64_t deadline, int *mine,
                           char **before, int64_t *rev, int64_t *offset) {
    char key[LOCK_ETCD__KEY_MAX], fk[LOCK_ETCD__KEY_MAX], r[LOCK_KEY_MAX];
    lock_etcd__my_key(lease, key);
    lock_etcd__resource(lease, r);
    lock_etcd__fence_key(r, fk);
    json_t *req =
        json_pack("{s:[o, o, o]}", "success", lock_etcd__op_get(key),
                  lock_etcd__op_before(r, myrev), lock_etcd__op_get(fk));
    json_t *resp = NULL;
    *before = NULL;
    if (lock_etcd__call(c, "/v3/kv/txn", req, deadline, &resp, NULL) !=
        LOCK_ETCD_GW_OK) {
        return lock_etcd__fail(c);
    }
    *mine = lock_etcd__kv(resp, 0) != NULL;
    *rev = lock_etcd_gw_i64(json_object_get(resp, "header"), "revision");
    *offset = lock_etcd__kv_int(lock_etcd__kv(resp, 2));
    const char *b64 =
        json_string_value(json_object_get(lock_etcd__kv(resp, 1), "key"));
    if (b64 != NULL) {
        char buf[LOCK_ETCD__KEY_MAX];
        long n = lock_etcd_gw_unb64(b64, buf, sizeof(buf) - 1);
        if (n < 0) {
            json_decref(resp);
            return lock_etcd__bad(c, "range (key before ours)");
        }
        buf[n] = '\0';
        *before = strdup(buf);
        if (*before == NULL) {
            json_decref(resp);
            return lock_client_fail(&c->base, LOCK_ESYS, "out of memory");
        }
    }
    json_decref(resp);
    return LOCK_OK;
}

/* Fills a granted lease. */
static void lock_etcd__granted(lock_lease_t *lease, int64_t id, int64_t myrev,
                               int64_t offset, int64_t ttl_ms,
                               int64_t valid_until) {
    lease->u.etcd.lease_id = id;
    lease->u.etcd.create_revision = myrev;
    lease->fence = offset + myrev;
    lease->ttl_ms = (uint32_t)ttl_ms;
    atomic_store(&lease->valid_until_ns, valid_until);
}

/* Step 3 of the top for our key (on session lease key_id, created at
 * myrev): waits for our turn until deadline. LOCK_OK: granted, lease
 * filled; LOCK_BUSY: the deadline passed; LOCK_ERR: an error (in both our
 * key is deleted); LOCK_LOST: our key went with a lost session, start
 * over. */
static int lock_etcd__wait_turn(lock_etcd__client_t *c, lock_lease_t *lease,
                                const char *key, int64_t key_id, int64_t myrev,
                                int64_t deadline) {
    for (;;) {
        int64_t now = mono_ns();
        if (now >= deadline) {
            lock_etcd__delete(c, key);
            return LOCK_BUSY;
        }
        /* Waiting holds no lock: no watchdog round keeps the session
         * alive for us. */
        int64_t id = 0, ttl_ms = 0, until = 0;
        if (lock_etcd__session(c, lock_etcd__bound(deadline), &id, &ttl_ms,
                               &until) != LOCK_OK) {
            lock_etcd__delete(c, key);
            return LOCK_ERR;
        }
        if (id != key_id) {
            /* The session was found lost and replaced: our key went
             * with the old lease. */
            log_warn("lock.etcd_key_lost",
                     "key=%s (its session lease was lost while we "
                     "waited; starting again)",
                     key);
            return LOCK_LOST;
        }
        int mine = 0;
        char *before = NULL;
        int64_t rev = 0, offset = 0;
        if (lock_etcd__look(c, lease, myrev, lock_etcd__bound(deadline), &mine,
                            &before, &rev, &offset) != LOCK_OK) {
            lock_etcd__delete(c, key);
            return LOCK_ERR;
        }
        if (!mine) {
            free(before);
            log_warn("lock.etcd_key_lost",
                     "key=%s (the session lease ran out while we "
                     "waited; starting again)",
                     key);
            lock_etcd__session_lost(key_id);
            return LOCK_LOST; /* start over, same token, new session */
        }
        if (before == NULL) {
            /* Nobody before us. The session must still be fresh: the
             * lease is only as valid as it is. */
            if (lock_etcd__session(c, lock_etcd__bound(deadline), &id, &ttl_ms,
                                   &until) != LOCK_OK) {
                lock_etcd__delete(c, key);
                return LOCK_ERR;
            }
            if (id != key_id) {
                return LOCK_LOST; /* replaced just now: our key is gone */
            }
            lock_etcd__granted(lease, id, myrev, offset, ttl_ms, until);
            return LOCK_OK;
        }
        int64_t wake = now + (int64_t)lock_etcd__g.recheck_ms * MONO_MS;
        if (wake > deadline) {
            wake = deadline;
        }
        lock_etcd_gw_watch_delete(c->gw, before, strlen(before), rev + 1, wake);
        free(before);
    }
}

/* The acquire of the top, steps 1 to 4; wait = 0 for a single try. */
static int lock_etcd__acquire_loop(lock_etcd__client_t *c, int64_t deadline,
                                   lock_lease_t *lease, int wait) {
    char key[LOCK_ETCD__KEY_MAX];
    if (lease->token[0] == '\0' && lock_token_new(lease->token) != 0) {
        return lock_client_fail(&c->base, LOCK_ESYS, "getrandom failed");
    }
    /* A call may take the whole deadline of a waiting claim, but never less
     * than its own bound: an acquire tried at the deadline still gets one
     * full attempt. */
    int64_t call_dl = deadline;
    if (call_dl - mono_ns() <
        (int64_t)lock_etcd__g.cfg->etcd_timeout_ms * MONO_MS) {
        call_dl =
            mono_ns() + (int64_t)lock_etcd__g.cfg->etcd_timeout_ms * MONO_MS;
    }
    for (int attempt = 0; attempt < LOCK_ETCD__RETRIES; attempt++) {
        int64_t id = 0, ttl_ms = 0, until = 0;
        if (lock_etcd__session(c, call_dl, &id, &ttl_ms, &until) != LOCK_OK) {
            return LOCK_ERR;
        }
        int64_t myrev = 0, owner = 0, offset = 0;
        int rc =
            lock_etcd__enqueue(c, lease, id, call_dl, &myrev, &owner, &offset);
        if (rc == 1) {
            lock_etcd__session_lost(id);
            continue;
        }
        if (rc != LOCK_OK) {
            /* The put may have been applied without our hearing of it. */
            lock_etcd__my_key(lease, key);
            lock_etcd__delete(c, key);
            return LOCK_ERR;
        }
        if (owner == myrev) {
            lock_etcd__granted(lease, id, myrev, offset, ttl_ms, until);
            return LOCK_OK;
        }
        lock_etcd__my_key(lease, key);
        if (!wait) {
            lock_etcd__delete(c, key);
            return LOCK_BUSY;
        }
        rc = lock_etcd__wait_turn(c, lease, key, id, myrev, deadline);
        if (rc != LOCK_LOST) {
            return rc;
        }
        lease->u.etcd.lease_id = 0;
    }
    return lock_client_fail(&c->base, LOCK_EIO,
                            "etcd: the session lease was lost %d times in one "
                            "acquire",
                            LOCK_ETCD__RETRIES);
}

static int lock_etcd__try_acquire(lock_client_t *cl, lock_lease_t *lease,
                                  int64_t *holder_pttl_ms) {
    *holder_pttl_ms = -1; /* etcd has no per-key TTL to tell */
    return lock_etcd__acquire_loop(lock_etcd__cl(cl), mono_ns(), lease, 0);
}

static int lock_etcd__acquire(lock_client_t *cl, int64_t deadline_ns,
                              lock_lease_t *lease) {
    return lock_etcd__acquire_loop(lock_etcd__cl(cl), deadline_ns, lease, 1);
}

/* -------------------------------------------------------- the watchdog --- */

static int lock_etcd__extend_many(lock_client_t *cl,
                                  lock_lease_t *const *leases, size_t n,
                                  int *results, int64_t *sent_at_ns) {
    lock_etcd__client_t *c = lock_etcd__cl(cl);
    int rc = LOCK_OK;
    *sent_at_ns = mono_boot_ns();
    /* Normally every lease is on the one session lease: one keep-alive.
     * Just after a session was lost and replaced, two. */
    for (size_t i = 0; i < n; i++) {
        if (results[i] != LOCK_ERR) {
            continue;
        }
        int64_t id = leases[i]->u.etcd.lease_id;
        int64_t ttl_ms = 0, sent = 0;
        int k =
            lock_etcd__keepalive(c, id, lock_etcd__deadline(), &ttl_ms, &sent);
        if (k == LOCK_ERR) {
            rc = LOCK_ERR;
        } else if (k == LOCK_LOST) {
            log_warn("lock.etcd_session_lost",
                     "lease=%llx (keep-alive: no TTL): every lock on it is "
                     "lost",
                     (unsigned long long)id);
            lock_etcd__session_lost(id);
        } else {
            if (sent < *sent_at_ns) {
                *sent_at_ns = sent;
            }
            pthread_mutex_lock(&lock_etcd__g.mu);
            if (lock_etcd__g.lease_id == id) {
                lock_etcd__g.lease_ttl_ms = ttl_ms;
                if (sent + ttl_ms * MONO_MS > lock_etcd__g.valid_until_ns) {
                    lock_etcd__g.valid_until_ns = sent + ttl_ms * MONO_MS;
                }
            }
            assert(lock_etcd__session_ok());
            pthread_mutex_unlock(&lock_etcd__g.mu);
        }
        for (size_t j = i; j < n; j++) {
            if (leases[j]->u.etcd.lease_id == id) {
                results[j] = k == LOCK_ERR ? LOCK_ETCD__DONE_UNKNOWN : k;
            }
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (results[i] == LOCK_ETCD__DONE_UNKNOWN) {
            results[i] = LOCK_ERR;
        }
    }
    return rc;
}

/* ------------------------------------------------------ the other calls --- */

static int lock_etcd__release(lock_client_t *cl, const lock_lease_t *lease) {
    char key[LOCK_ETCD__KEY_MAX];
    lock_etcd__my_key(lease, key);
    return lock_etcd__delete(lock_etcd__cl(cl), key);
}

static void lock_etcd__abandon(lock_client_t *cl, lock_lease_t *lease) {
    (void)lock_etcd__release(cl, lease);
}

/* A linearizable count of the keys named key (0 or 1) into *count: one
 * round trip that needs the cluster's quorum, as a grant does. LOCK_OK, or
 * LOCK_ERR. */
static int lock_etcd__count(lock_etcd__client_t *c, const char *key,
                            int64_t *count) {
    json_t *resp = NULL;
    if (lock_etcd__call(c, "/v3/kv/range",
                        json_pack("{s:o, s:b}", "key", lock_etcd__jkey(key),
                                  "count_only", 1),
                        lock_etcd__deadline(), &resp,
                        NULL) != LOCK_ETCD_GW_OK) {
        return lock_etcd__fail(c);
    }
    *count = lock_etcd_gw_i64(resp, "count");
    json_decref(resp);
    return LOCK_OK;
}

static int lock_etcd__check(lock_client_t *cl, const lock_lease_t *lease) {
    char key[LOCK_ETCD__KEY_MAX];
    lock_etcd__my_key(lease, key);
    int64_t n = 0;
    if (lock_etcd__count(lock_etcd__cl(cl), key, &n) != LOCK_OK) {
        return LOCK_ERR;
    }
    /* Our key exists: it is still the lowest of the queue (no key created
     * later can be lower), so we still hold the lock. */
    return n > 0 ? LOCK_HELD : LOCK_LOST;
}

static int lock_etcd__raise_fence(lock_client_t *cl, const char *resource,
                                  int64_t floor, int64_t *now_at) {
    lock_etcd__client_t *c = lock_etcd__cl(cl);
    char fk[LOCK_ETCD__KEY_MAX];
    lock_etcd__fence_key(resource, fk);
    for (int i = 0; i < 8; i++) {
        json_t *resp = NULL;
        if (lock_etcd__call(c, "/v3/kv/range",
                            json_pack("{s:o}", "key", lock_etcd__jkey(fk)),
                            lock_etcd__deadline(), &resp,
                            NULL) != LOCK_ETCD_GW_OK) {
            return lock_etcd__fail(c);
        }
        json_t *kv = json_array_get(json_object_get(resp, "kvs"), 0);
        int64_t cur = lock_etcd__kv_int(kv);
        int64_t modrev = lock_etcd_gw_i64(kv, "mod_revision");
        json_decref(resp);
        if (cur >= floor) {
            *now_at = cur;
            return LOCK_OK;
        }
        /* Compare-and-swap on the key's mod revision (absent: create
         * revision 0), so two raisers cannot lower each other. */
        char val[24];
        snprintf(val, sizeof(val), "%lld", (long long)floor);
        char *v64 = lock_etcd_gw_b64(val, strlen(val));
        json_t *cmp =
            kv != NULL ? json_pack("{s:s, s:o, s:o}", "target", "MOD", "key",
                                   lock_etcd__jkey(fk), "mod_revision",
                                   lock_etcd_gw_jint(modrev))
                       : json_pack("{s:s, s:o, s:s}", "target", "CREATE", "key",
                                   lock_etcd__jkey(fk), "create_revision", "0");
        json_t *req = v64 != NULL && cmp != NULL
                          ? json_pack("{s:[o], s:[{s:{s:o, s:s}}]}", "compare",
                                      cmp, "success", "request_put", "key",
                                      lock_etcd__jkey(fk), "value", v64)
                          : NULL;
        free(v64);
        if (req == NULL) {
            json_decref(cmp);
        }
        if (lock_etcd__call(c, "/v3/kv/txn", req, lock_etcd__deadline(), &resp,
                            NULL) != LOCK_ETCD_GW_OK) {
            return lock_etcd__fail(c);
        }
        int ok = json_is_true(json_object_get(resp, "succeeded"));
        json_decref(resp);
        if (ok) {
            log_warn("lock.etcd_fence_offset", "resource=%s offset=%lld",
                     resource, (long long)floor);
            *now_at = floor;
            return LOCK_OK;
        }
    }
    return lock_client_fail(&c->base, LOCK_EPROTO,
                            "etcd: the fence offset kept changing under us");
}

/* Readiness: a linearizable read needs the cluster's quorum, as a grant
 * does. */
static int lock_etcd__ping(lock_client_t *cl) {
    char key[LOCK_ETCD__KEY_MAX];
    snprintf(key, sizeof(key), "%sping", lock_etcd__prefix());
    int64_t n = 0;
    return lock_etcd__count(lock_etcd__cl(cl), key, &n);
}

const lock_backend_t lock_etcd_backend = {
    .name = "etcd",
    .init = lock_etcd__init,
    .shutdown = lock_etcd__shutdown,
    .client_new = lock_etcd__client_new,
    .client_free = lock_etcd__client_free,
    .try_acquire = lock_etcd__try_acquire,
    .acquire = lock_etcd__acquire,
    .extend_many = lock_etcd__extend_many,
    .release = lock_etcd__release,
    .check = lock_etcd__check,
    .raise_fence = lock_etcd__raise_fence,
    .ping = lock_etcd__ping,
    .abandon = lock_etcd__abandon,
};
