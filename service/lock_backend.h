/*
 * lock_backend.h: the lock's backends behind lock.h (internal to the lock
 * module: lock.c, lock_redis.c, lock_redlock.c, lock_etcd*.c, lock_wait.c,
 * lock_sentinel.c; and the unit tests of its pure parts).
 *
 * A backend is one const table of operations. lock.c picks one table in
 * lock_init and calls through it; whatever every backend needs the same way
 * (tokens, error state, lease usable/lost, waiting, the grant log line, the
 * lock metrics) stays in lock.c, so a backend implements only what talks to
 * its servers.
 *
 * Each backend's client struct starts with a struct lock_client_base (the
 * type lock.h calls lock_client_t): lock.c reads the backend pointer and the
 * error state through it, the backend casts it to its own struct.
 * Backend-private lease state lives in lock_lease_t's union, in the member
 * named after the backend (lease->u.redlock, lease->u.etcd).
 */
#ifndef COUPONSVC_LOCK_BACKEND_H
#define COUPONSVC_LOCK_BACKEND_H

#include <stdarg.h>

#include "lock.h"

typedef struct lock_backend {
    const char *name; /* lock_backend_name(): "redis", "redlock", ... */

    /* Once per process, from lock_init: check the configuration and the
     * servers, log the topology. 0, or -1 with the reason in err. */
    int (*init)(const cfg_t *cfg, char *err, size_t errlen);
    void (*shutdown)(void); /* may be NULL */

    /* A new client whose base is set up by lock_client_base_init; NULL
     * when out of memory. free accepts only what new returned. */
    lock_client_t *(*client_new)(const cfg_t *cfg);
    void (*client_free)(lock_client_t *cl);

    /* The operations of lock.h, with its contracts. lock.c has already
     * set up the lease (lock_lease_setup: keys, a fresh token, ttl) before
     * try_acquire, and counts and logs what comes back. */
    int (*try_acquire)(lock_client_t *cl, lock_lease_t *lease,
                       int64_t *holder_pttl_ms);
    /* Optional: a backend with its own way of waiting (etcd's watch) sets
     * it; NULL means lock.c's waiting (lock_wait.c) around try_acquire. */
    int (*acquire)(lock_client_t *cl, int64_t deadline_ns, lock_lease_t *lease);
    int (*extend_many)(lock_client_t *cl, lock_lease_t *const *leases, size_t n,
                       int *results, int64_t *sent_at_ns);
    int (*release)(lock_client_t *cl, const lock_lease_t *lease);
    int (*check)(lock_client_t *cl, const lock_lease_t *lease);
    int (*raise_fence)(lock_client_t *cl, const char *resource, int64_t floor,
                       int64_t *now_at);
    int (*ping)(lock_client_t *cl);
    void (*abandon)(lock_client_t *cl, lock_lease_t *lease); /* may be NULL */
} lock_backend_t;

/* The backends. lock_etcd_backend is defined only in a build with etcd
 * (lock_etcd.c); lock.c refers to it only under COUPONSVC_WITH_ETCD. */
extern const lock_backend_t lock_redis_backend, lock_redlock_backend,
    lock_etcd_backend;

/* lock_redis.c's code for one logical node found through Redis Sentinel
 * (lock_sentinel.h): chosen when COUPON_REDIS_SENTINELS is set. */
extern const lock_backend_t lock_sentinel_backend;

/* An etcd build's choice (lock_etcd.c): 1 when cfg selects etcd
 * (COUPON_LOCK_BACKEND=etcd). Called by lock_init under
 * COUPONSVC_WITH_ETCD, before the Redis backends are considered. */
int lock_etcd_selected(const cfg_t *cfg);

struct lock_client_base {
    const lock_backend_t *be; /* the backend this client belongs to */
    lock_errkind_t errkind;   /* kind of the last error */
    char errstr[256];         /* the last error, in words */
    uint64_t rng;             /* backoff jitter state (xorshift64) */
};

/* ------------------------------------------- shared helpers (lock.c) --- */

/* Sets up a fresh client's base for backend be. */
void lock_client_base_init(lock_client_t *cl, const lock_backend_t *be);

/* Records an error of kind on cl (printf-style text). Returns LOCK_ERR. */
int lock_client_fail(lock_client_t *cl, lock_errkind_t kind, const char *fmt,
                     ...) __attribute__((format(printf, 3, 4)));

/* Fills lease's keys for resource, its ttl, and clears the rest (no token:
 * lock.c draws it before try_acquire). */
void lock_lease_setup(lock_lease_t *lease, const char *resource,
                      uint32_t ttl_ms);

/* The resource of a lock key "coupon:{R}:lock", into out[LOCK_KEY_MAX]. */
void lock_resource_of(const char *key, char *out);

#define LOCK__DEC_MAX 24 /* an int64_t in decimal, sign and NUL included */

/* The arguments of RAISE FENCE for resource: its fence key, into
 * key[LOCK_KEY_MAX], and floor in decimal, into fl[LOCK__DEC_MAX]. */
void lock__raise_fence_args(const char *resource, int64_t floor, char *key,
                            char *fl);

/* The poll strategy's arithmetic (lock.c's backoff comment), pure. One
 * sleep, in ns: drawn from [cap/2, cap] by rnd, no longer than the holder's
 * PTTL (pttl_ms >= 0; -1: unknown), never below 1 ms, never past left_ns
 * (the time to the deadline, > 0). */
int64_t lock__backoff_ns(int64_t cap_ns, uint64_t rnd, int64_t pttl_ms,
                         int64_t left_ns);

/* The cap after cap_ns: doubled, at most 50 ms. */
int64_t lock__backoff_next_cap(int64_t cap_ns);

/* ------------------ shared by the two Redis backends (lock_redis.c) --- */

struct redisReply;

/* The process's Redis credentials (lock_init), borrowed from cfg_t: a
 * username "" means the default user, a password "" means no AUTH unless
 * a username is set. */
extern const char *lock_redis_username, *lock_redis_password;

/* 1 when new connections send AUTH first. */
int lock_redis_wants_auth(void);

/* Fills argv[3] with the AUTH command for the credentials; returns argc. */
int lock_redis_auth_argv(const char **argv);

/* The kind of an error reply, from its error code (LOCK_ENONE for a reply
 * that is not an error). READONLY, MASTERDOWN and LOADING say that this
 * node cannot serve now: LOCK_EIO. */
lock_errkind_t lock_redis_reply_kind(const struct redisReply *r);

/* ----------------------- Redlock's arithmetic (lock_redlock.c), pure --- */

/* The majority of n nodes: floor(n/2) + 1. */
int lock_redlock_majority(int n);

/* The clock drift allowance for a TTL: ttl/100 + 2 ms, in ns (the
 * reference algorithm's). */
int64_t lock_redlock_drift_ns(uint32_t ttl_ms);

/* What is left of a TTL after a round that took elapsed_ns: ttl - elapsed
 * - drift, in ns; <= 0 means the grant is worthless. */
int64_t lock_redlock_validity_ns(uint32_t ttl_ms, int64_t elapsed_ns);

/* The verdict of one round over n nodes where yes said yes, no said no,
 * and the rest failed: LOCK_OK (yes is a majority), LOCK_BUSY (a majority
 * answered, but no majority said yes) or LOCK_ERR (no majority answered:
 * the backend is unavailable). */
int lock_redlock_verdict(int n, int yes, int no);

/* The counts of one round are possible: 1 <= n <= LOCK_MAX_NODES, yes and
 * no not negative, yes + no <= n (a node answers once). For assert(). */
int lock_redlock__quorum_ok(int n, int yes, int no);

/* The same, with the round's bit masks (bit i: node i said yes / no):
 * disjoint, within n nodes, and yes / no bits set. For assert(). */
int lock_redlock__masks_ok(int n, uint32_t yes_mask, uint32_t no_mask, int yes,
                           int no);

#endif
