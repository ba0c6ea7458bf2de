/*
 * lock.c: the lock contract (lock.h): picks the backend, dispatches to it
 * (lock_backend.h), and keeps what every backend shares: the tokens, the
 * error state, lease usable/lost, the waiting loop around one attempt, the
 * lock metrics and the grant log line
 *
 *   lock.acquired resource=R fence=F token=XXXXXXXX backend=B
 *
 * (info; the token's first 8 hex digits), one per grant, so that tests and
 * demonstrations can check fences in grant order from the logs alone.
 */
#include "lock.h"

#include <assert.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "lock_backend.h"
#include "lock_sentinel.h"
#include "lock_wait.h"
#include "log.h"
#include "metrics.h"
#include "mono.h"

/* The backend lock_init picked; NULL before. Written once, before any
 * client exists, then only read. */
static const lock_backend_t *lock__be;
static const cfg_t *lock__cfg; /* lock_init's, borrowed: lock_describe */

/* ------------------------------------------------------------- backend --- */

/* The backend cfg asks for, or NULL with the reason in err. An etcd build
 * (COUPONSVC_WITH_ETCD, lock_etcd.c) selects its backend here first. */
static const lock_backend_t *lock__pick(const cfg_t *cfg, char *err,
                                        size_t errlen) {
#ifdef COUPONSVC_WITH_ETCD
    if (lock_etcd_selected(cfg)) {
        return &lock_etcd_backend;
    }
#endif
    if (lock_sentinel_configured(cfg)) {
        return &lock_sentinel_backend; /* COUPON_REDIS_ADDRS is ignored */
    }
    if (cfg->nredis == 1) {
        return &lock_redis_backend;
    }
    if (cfg->nredis % 2 == 0 || cfg->nredis < 3) {
        snprintf(err, errlen,
                 "COUPON_REDIS_ADDRS names %d Redis nodes: give one node, or "
                 "an odd number of at least 3 independent masters for "
                 "Redlock (an even count tolerates no more failures than "
                 "one node fewer, and 2 none at all)",
                 cfg->nredis);
        return NULL;
    }
    return &lock_redlock_backend;
}

int lock_init(const cfg_t *cfg, char *err, size_t errlen) {
    lock_redis_username = cfg->redis_username;
    lock_redis_password = cfg->redis_password;
    lock_sentinel_init(cfg);
    const lock_backend_t *be = lock__pick(cfg, err, errlen);
    if (be == NULL) {
        return -1;
    }
    if (be->init(cfg, err, errlen) != 0) {
        return -1;
    }
    /* One subscriber per node the backend writes to. */
    lock_wait_config(cfg, be == &lock_redlock_backend ? cfg->nredis : 1);
    lock__be = be;
    lock__cfg = cfg;
    return 0;
}

void lock_shutdown(void) {
    lock_wait_shutdown();
    if (lock__be != NULL && lock__be->shutdown != NULL) {
        lock__be->shutdown();
    }
}

const char *lock_backend_name(void) {
    return lock__be != NULL ? lock__be->name : "none";
}

void lock_describe(char *out, size_t outlen) {
    out[0] = '\0';
    const cfg_t *cfg = lock__cfg;
    if (cfg == NULL) {
        return;
    }
    if (lock__be == &lock_sentinel_backend) {
        cfg_addr_t m, from;
        char err[160];
        if (!lock_sentinel_last(&m, &from) &&
            lock_sentinel_master(cfg, &m, err, sizeof(err)) !=
                LOCK_SENTINEL_OK) {
            snprintf(out, outlen, "redis=unknown master_name=%s",
                     cfg->redis_master_name);
            return;
        }
        lock_sentinel_last(&m, &from);
        snprintf(out, outlen, "redis=%s:%u master_name=%s sentinel=%s:%u",
                 m.host, m.port, cfg->redis_master_name, from.host, from.port);
        return;
    }
    if (lock__be != &lock_redis_backend && lock__be != &lock_redlock_backend) {
        return;
    }
    /* One node (the redis backend has exactly one), or Redlock's list. */
    size_t used = (size_t)snprintf(out, outlen, "redis=");
    for (int i = 0; i < cfg->nredis && used < outlen; i++) {
        int n = snprintf(out + used, outlen - used, "%s%s:%u", i > 0 ? "," : "",
                         cfg->redis[i].host, cfg->redis[i].port);
        if (n < 0) {
            break;
        }
        used += (size_t)n;
    }
}

lock_client_t *lock_client_new(const cfg_t *cfg) {
    return lock__be != NULL ? lock__be->client_new(cfg) : NULL;
}

void lock_client_free(lock_client_t *cl) {
    if (cl != NULL) {
        cl->be->client_free(cl);
    }
}

void lock_client_base_init(lock_client_t *cl, const lock_backend_t *be) {
    cl->be = be;
    cl->errkind = LOCK_ENONE;
    cl->errstr[0] = '\0';
    if (getrandom(&cl->rng, sizeof(cl->rng), 0) != sizeof(cl->rng) ||
        cl->rng == 0) {
        cl->rng = (uint64_t)mono_ns() | 1;
    }
}

int lock_client_fail(lock_client_t *cl, lock_errkind_t kind, const char *fmt,
                     ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cl->errstr, sizeof(cl->errstr), fmt, ap);
    va_end(ap);
    cl->errkind = kind;
    return LOCK_ERR;
}

const char *lock_errstr(const lock_client_t *cl) {
    return cl->errstr;
}

lock_errkind_t lock_errkind(const lock_client_t *cl) {
    return cl->errkind;
}

const char *lock_errkind_name(lock_errkind_t kind) {
    switch (kind) {
    case LOCK_ENONE:
        return "none";
    case LOCK_EIO:
        return "io";
    case LOCK_EAUTH:
        return "auth";
    case LOCK_EPERM:
        return "perm";
    case LOCK_EPROTO:
        return "proto";
    case LOCK_ESYS:
        return "sys";
    }
    return "?";
}

/* --------------------------------------------------------------- lease --- */

int lock_token_new(char *out) {
    unsigned char raw[LOCK_TOKEN_HEX / 2];
    size_t got = 0;
    while (got < sizeof(raw)) {
        ssize_t n = getrandom(raw + got, sizeof(raw) - got, 0);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -1;
        }
        got += (size_t)n;
    }
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < sizeof(raw); i++) {
        out[2 * i] = hex[raw[i] >> 4];
        out[2 * i + 1] = hex[raw[i] & 15];
    }
    out[LOCK_TOKEN_HEX] = '\0';
    return 0;
}

void lock_lease_setup(lock_lease_t *l, const char *resource, uint32_t ttl_ms) {
    memset(l, 0, sizeof(*l));
    snprintf(l->key, sizeof(l->key), "coupon:{%s}:lock", resource);
    snprintf(l->fence_key, sizeof(l->fence_key), "coupon:{%s}:fence", resource);
    snprintf(l->channel, sizeof(l->channel), "coupon:{%s}:released", resource);
    l->ttl_ms = ttl_ms;
    atomic_store(&l->valid_until_ns, 0);
    atomic_store(&l->lost, 0);
}

void lock__raise_fence_args(const char *resource, int64_t floor, char *key,
                            char *fl) {
    snprintf(key, LOCK_KEY_MAX, "coupon:{%s}:fence", resource);
    snprintf(fl, LOCK__DEC_MAX, "%lld", (long long)floor);
}

void lock_resource_of(const char *key, char *out) {
    const char *a = strchr(key, '{'), *b = strrchr(key, '}');
    size_t n = a != NULL && b != NULL && b > a ? (size_t)(b - a - 1) : 0;
    memcpy(out, a != NULL ? a + 1 : key, n);
    out[n] = '\0';
}

int lock_lease_usable(const lock_lease_t *l) {
    return !atomic_load(&l->lost) &&
           mono_boot_ns() < atomic_load(&l->valid_until_ns);
}

int lock_lease_mark_lost(lock_lease_t *l) {
    int expected = 0;
    int marked = atomic_compare_exchange_strong(&l->lost, &expected, 1);
    assert(marked || expected == 1); /* lost is 0 or 1, nothing else */
    return marked;
}

lock_lease_seen_t lock_lease_seen(const lock_lease_t *l) {
    lock_lease_seen_t s;
    s.lost = atomic_load(&l->lost);
    s.valid_until_ns = atomic_load(&l->valid_until_ns);
    return s;
}

int lock_lease__ok(const lock_lease_t *l) {
    int lost = atomic_load(&l->lost);
    if ((lost != 0 && lost != 1) || l->ttl_ms == 0 ||
        l->token[LOCK_TOKEN_HEX] != '\0') {
        return 0;
    }
    for (int i = 0; i < LOCK_TOKEN_HEX; i++) {
        char c = l->token[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
            return 0;
        }
    }
    return 1;
}

int lock_lease__sanity(const lock_lease_t *l, lock_lease_seen_t before) {
    lock_lease_seen_t now = lock_lease_seen(l);
    if (before.lost && !now.lost) {
        return 0; /* lost came back */
    }
    if (!now.lost && now.valid_until_ns < before.valid_until_ns) {
        return 0; /* validity shrank while not lost */
    }
    return lock_lease__ok(l);
}

/* ------------------------------------------------------------- acquire --- */

int lock_try_acquire(lock_client_t *cl, const char *resource, uint32_t ttl_ms,
                     lock_lease_t *lease, int64_t *holder_pttl_ms) {
    lock_lease_setup(lease, resource, ttl_ms);
    int rc;
    if (lock_token_new(lease->token) != 0) {
        rc = lock_client_fail(cl, LOCK_ESYS, "getrandom: %s", strerror(errno));
    } else {
        rc = cl->be->try_acquire(cl, lease, holder_pttl_ms);
    }
    metrics_inc(rc == LOCK_OK     ? M_LOCK_OK
                : rc == LOCK_BUSY ? M_LOCK_BUSY
                                  : M_LOCK_ERROR);
    if (rc == LOCK_OK) {
        assert(lock_lease__ok(lease));
        log_info("lock.acquired",
                 "resource=%s fence=%lld token=%.8s backend=%s", resource,
                 (long long)lease->fence, lease->token, cl->be->name);
    }
    return rc;
}

static uint64_t lock__rand(lock_client_t *cl) {
    uint64_t x = cl->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return cl->rng = x;
}

/*
 * Backoff: the first retry waits about 1 ms, each later one doubles the cap
 * up to 50 ms, and the actual sleep is drawn uniformly from [cap/2, cap]
 * ("equal jitter") so that waiters released by the same event do not retry in
 * lock step. The sleep never runs past the holder's PTTL (the lock is free at
 * the latest then) nor past the caller's deadline, and never below 1 ms: an
 * attempt per millisecond at most, whatever the backend answers (a PTTL of
 * 0, or none: -1).
 */
#define LOCK__BACKOFF_MIN_NS (1 * MONO_MS)
#define LOCK__BACKOFF_MAX_NS (50 * MONO_MS)

int64_t lock__backoff_ns(int64_t cap_ns, uint64_t rnd, int64_t pttl_ms,
                         int64_t left_ns) {
    int64_t sleep = cap_ns / 2 + (int64_t)(rnd % (uint64_t)(cap_ns / 2 + 1));
    if (pttl_ms >= 0 && sleep > pttl_ms * MONO_MS) {
        sleep = pttl_ms * MONO_MS;
    }
    /* Never below the backoff's floor: a PTTL of 0 (a key about to
     * expire) must not turn this into a loop without a pause. */
    if (sleep < LOCK__BACKOFF_MIN_NS) {
        sleep = LOCK__BACKOFF_MIN_NS;
    }
    if (sleep > left_ns) {
        sleep = left_ns;
    }
    return sleep;
}

int64_t lock__backoff_next_cap(int64_t cap_ns) {
    return cap_ns * 2 > LOCK__BACKOFF_MAX_NS ? LOCK__BACKOFF_MAX_NS
                                             : cap_ns * 2;
}

static int lock__acquire_poll(lock_client_t *cl, const char *resource,
                              uint32_t ttl_ms, int64_t deadline_ns,
                              lock_lease_t *lease) {
    int64_t cap = LOCK__BACKOFF_MIN_NS;
    for (;;) {
        int64_t pttl = -1;
        int rc = lock_try_acquire(cl, resource, ttl_ms, lease, &pttl);
        if (rc != LOCK_BUSY) {
            return rc;
        }
        int64_t now = mono_ns();
        if (now >= deadline_ns) {
            return LOCK_BUSY; /* waited long enough */
        }
        mono_sleep_ns(
            lock__backoff_ns(cap, lock__rand(cl), pttl, deadline_ns - now));
        cap = lock__backoff_next_cap(cap);
    }
}

/* The pubsub strategy (lock_wait.c has the design): try once; when
 * refused, queue and subscribe, and only after the confirmation try again;
 * then sleep until a release message, the re-check or a reconnect wakes
 * us. */
static int lock__acquire_pubsub(lock_client_t *cl, const char *resource,
                                uint32_t ttl_ms, int64_t deadline_ns,
                                lock_lease_t *lease) {
    int64_t pttl = -1;
    lock_wait_holdback(resource, deadline_ns);
    if (!lock_wait_has_waiters(resource)) {
        int rc = lock_try_acquire(cl, resource, ttl_ms, lease, &pttl);
        if (rc != LOCK_BUSY || mono_ns() >= deadline_ns) {
            return rc;
        }
    }
    lock_waiter_t w;
    int try_now = lock_wait_join(&w, resource, deadline_ns);
    int rc = LOCK_BUSY;
    for (;;) {
        if (try_now) {
            rc = lock_try_acquire(cl, resource, ttl_ms, lease, &pttl);
            if (rc != LOCK_BUSY) {
                break;
            }
        }
        try_now = 1;
        int cause = lock_wait_sleep(&w, deadline_ns);
        if (cause == LOCK_WAKE_NONE) {
            break; /* LOCK_BUSY: the deadline passed */
        }
        if (cause == LOCK_WAKE_MESSAGE) {
            lock_wait_holdback(resource, deadline_ns);
        }
    }
    lock_wait_leave(&w, rc == LOCK_OK, rc == LOCK_ERR);
    return rc;
}

int lock_acquire(lock_client_t *cl, const char *resource, uint32_t ttl_ms,
                 int64_t deadline_ns, lock_lease_t *lease, int64_t *waited_ns) {
    int64_t start = mono_ns();
    int rc;
    if (cl->be->acquire != NULL) {
        lock_lease_setup(lease, resource, ttl_ms);
        rc = cl->be->acquire(cl, deadline_ns, lease);
        if (rc == LOCK_OK) {
            assert(lock_lease__ok(lease));
            log_info("lock.acquired",
                     "resource=%s fence=%lld token=%.8s backend=%s", resource,
                     (long long)lease->fence, lease->token, cl->be->name);
        }
    } else if (lock_wait_pubsub()) {
        rc = lock__acquire_pubsub(cl, resource, ttl_ms, deadline_ns, lease);
    } else {
        rc = lock__acquire_poll(cl, resource, ttl_ms, deadline_ns, lease);
    }
    if (rc == LOCK_OK) {
        metrics_inc(M_LOCK_GRANTS);
    }
    *waited_ns = mono_ns() - start;
    return rc;
}

/* ------------------------------------------------- the other operations --- */

int lock_extend_many(lock_client_t *cl, lock_lease_t *const *leases, size_t n,
                     int *results, int64_t *sent_at_ns) {
    for (size_t i = 0; i < n; i++) {
        results[i] = LOCK_ERR;
    }
    *sent_at_ns = mono_boot_ns();
    if (n == 0) {
        return LOCK_OK;
    }
    return cl->be->extend_many(cl, leases, n, results, sent_at_ns);
}

int lock_release(lock_client_t *cl, const lock_lease_t *lease) {
    assert(lock_lease__ok(lease));
    char res[LOCK_KEY_MAX];
    lock_resource_of(lease->key, res);
    lock_wait_note_release(res);
    int rc = cl->be->release(cl, lease);
    log_debug("lock.released", "resource=%s fence=%lld token=%.8s sent=%d", res,
              (long long)lease->fence, lease->token, rc == LOCK_OK);
    return rc;
}

int lock_check(lock_client_t *cl, const lock_lease_t *lease) {
    return cl->be->check(cl, lease);
}

int lock_raise_fence(lock_client_t *cl, const char *resource, int64_t floor,
                     int64_t *now_at) {
    return cl->be->raise_fence(cl, resource, floor, now_at);
}

int lock_ping(lock_client_t *cl) {
    return cl->be->ping(cl);
}

void lock_abandon(lock_client_t *cl, lock_lease_t *lease) {
    if (cl->be->abandon != NULL) {
        cl->be->abandon(cl, lease);
    }
}
