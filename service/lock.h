/*
 * lock.h: the distributed lock: acquire (with its fencing token), extend,
 * release, behind one contract whatever the backend.
 *
 * This is the only lock header the rest of the service includes. Behind it
 * (lock_backend.h, the operations table) sit the backends, side by side:
 *   lock_redis.c    one Redis node (COUPON_REDIS_ADDRS names one address)
 *   lock_redlock.c  N >= 3 independent Redis nodes, odd N, majority grants
 *   lock_etcd.c     etcd (built with it: COUPON_LOCK_BACKEND=etcd)
 * lock.c picks one in lock_init, dispatches to it, and keeps what every
 * backend shares: tokens, error kinds, lease usable/lost, the waiting loop
 * (lock_wait.c) and the grant log line. The Lua scripts the Redis backends
 * run are in lock_scripts.h, each with the race it closes.
 *
 * A lock_client_t is one thread's connection(s) to the backend plus its
 * error state, used by one thread at a time (each HTTP worker owns one, the
 * watchdog owns one, the readiness probe owns one). It connects lazily, and
 * after any error it drops the failed connection and connects again on the
 * next call. Every call is bounded by the configured Redis timeout (for
 * Redlock: one deadline for the whole round over all nodes).
 *
 * A lock_lease_t is one grant: key, token, fence, TTL, and the two fields the
 * watchdog writes and the claim reads from another thread (valid_until_ns and
 * lost), which are atomics. Leases are owned by the caller (usually on the
 * stack of the claim); the watchdog only borrows them between wd_watch and
 * wd_unwatch.
 *
 * Return codes: one table, lock_rc_t below. LOCK_OK (0); LOCK_BUSY (held
 * by another token: not an error); LOCK_HELD / LOCK_LOST (the answers of
 * lock_check and of each lease in lock_extend_many: still ours / ours no
 * more); LOCK_ERR (negative: the backend is unreachable, timed out or
 * answered an error; lock_errkind says which kind, lock_errstr says it in
 * words).
 */
#ifndef COUPONSVC_LOCK_H
#define COUPONSVC_LOCK_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "cfg.h"
#include "req.h"

/* The return codes of every lock_ function that returns an int. Expected
 * outcomes are positive and named; LOCK_ERR is the only failure. */
typedef enum lock_rc {
    LOCK_ERR = -1, /* failed: lock_errkind / lock_errstr say why */
    LOCK_OK = 0,   /* done (acquire: granted) */
    LOCK_BUSY = 1, /* somebody else holds it */
    LOCK_HELD = 2, /* check / extend: the lock still holds our token */
    LOCK_LOST = 3, /* check / extend: our token is gone, for good */
} lock_rc_t;

/* What kind of failure the last LOCK_ERR was. Callers decide on the kind,
 * never on the text of lock_errstr. */
typedef enum lock_errkind {
    LOCK_ENONE = 0, /* no error yet */
    LOCK_EIO,       /* the backend is unavailable: unreachable, timed out,
                       connection dropped, a node that cannot serve writes
                       (READONLY, MASTERDOWN, LOADING), Redlock without a
                       reachable majority, etcd without quorum. The only
                       kind that may trigger a degraded mode. */
    LOCK_EAUTH,     /* our credentials were refused (WRONGPASS, NOAUTH) */
    LOCK_EPERM,     /* the ACL user lacks a command, key or channel (NOPERM) */
    LOCK_EPROTO,    /* an unexpected reply, or an error from a script */
    LOCK_ESYS,      /* a local failure: out of memory, no randomness */
} lock_errkind_t;

#define LOCK_TOKEN_HEX 32 /* 128 random bits as hex */
#define LOCK_KEY_MAX (REQ_COUPON_ID_MAX + 32)
#define LOCK_MAX_NODES CFG_MAX_REDIS /* Redlock nodes, at most */

typedef struct lock_client_base lock_client_t; /* lock_backend.h */

typedef struct lock_lease {
    char key[LOCK_KEY_MAX];         /* coupon:{ID}:lock */
    char fence_key[LOCK_KEY_MAX];   /* coupon:{ID}:fence */
    char channel[LOCK_KEY_MAX];     /* coupon:{ID}:released */
    char token[LOCK_TOKEN_HEX + 1]; /* our value in the lock key */
    int64_t fence;                  /* the fencing token drawn at grant */
    uint32_t ttl_ms;                /* TTL set at grant and on each renewal */

    /* Written by the watchdog (lost also by the claim's own check before
     * COMMIT), read by the claim. Invariant: once lost is 1 it stays 1;
     * valid_until_ns only grows while lost is 0 (lock_lease__sanity checks
     * both, at the end of each watchdog round). The lease may be used for a
     * write only while !lost && mono_boot_ns() < valid_until_ns. */
    _Atomic int64_t valid_until_ns; /* boot clock (mono.h): the instant the
                                       last grant/renewal was sent + ttl
                                       (Redlock: minus its drift allowance) */
    atomic_int lost;                /* renewal refused, or TTL ran out */

    /* The watchdog's list links and state (wd.c); only touched under the
     * watchdog's mutex. wd_state holds a wd_state_t (wd.h). */
    struct lock_lease *wd_prev, *wd_next;
    int wd_state;
    int64_t wd_hold_until_ns; /* boot clock: no renewal from then on */

    /* Backend-private state, one member per backend that needs one. */
    union {
        struct {
            uint32_t granted; /* bit i: node i answered "granted" */
            uint32_t raised;  /* bit i: node i answered "raised while held" */
        } redlock;
        struct {
            int64_t lease_id;        /* the process lease the key lives on */
            int64_t create_revision; /* of our key: the fence */
        } etcd;
    } u;
} lock_lease_t;

/* Once per process, before any other call: picks the backend from cfg
 * (COUPON_LOCK_BACKEND, then the shape of COUPON_REDIS_ADDRS: one address
 * is one Redis node, N >= 3 odd is Redlock), sets the credentials every new
 * connection authenticates with, configures the waiting strategy, checks the
 * topology (Redlock: refuses an even N, a duplicate, a node that is not a
 * master, two addresses of one server) and logs it. cfg is borrowed for the
 * life of the process. Returns 0, or -1 with a clear message in err. */
int lock_init(const cfg_t *cfg, char *err, size_t errlen);

/* Stops the waiters' subscriber and frees the backend's shared state; call
 * once, after the claim workers and the watchdog have stopped. */
void lock_shutdown(void);

/* "redis" | "sentinel" | "redlock" | "etcd" (static storage); "none"
 * before lock_init. */
const char *lock_backend_name(void);

/* Where the backend lock_init picked keeps the lock, for the start-up log
 * line, into out (outlen bytes, always NUL-terminated), as key=value
 * fields: "redis=HOST:PORT" (one node); "redis=H:P,H:P,..." (Redlock);
 * behind Sentinel "redis=HOST:PORT master_name=NAME sentinel=H:P", the
 * master the sentinels name and the one that named it (asked now if no
 * connection asked yet; "redis=unknown" when none answers). Other
 * backends: "". */
void lock_describe(char *out, size_t outlen);

/* Creates a client for the backend lock_init picked (cfg borrowed). Nothing
 * is sent until the first call. Returns a new client (free with
 * lock_client_free), or NULL when out of memory. */
lock_client_t *lock_client_new(const cfg_t *cfg);

/* Closes the connection(s) and frees. Accepts NULL. */
void lock_client_free(lock_client_t *cl);

/* The last error, borrowed; valid until the next call on cl. */
const char *lock_errstr(const lock_client_t *cl);

/* The kind of the last error; LOCK_ENONE before the first. */
lock_errkind_t lock_errkind(const lock_client_t *cl);

/* A short fixed name for a kind ("io", "auth", ...), for logs and metrics. */
const char *lock_errkind_name(lock_errkind_t kind);

/* Fills out[LOCK_TOKEN_HEX + 1] with 128 bits from getrandom(2), as hex.
 * Returns 0, or -1 if the kernel gave no randomness. */
int lock_token_new(char *out);

/* One acquire attempt on resource's lock with a fresh token. LOCK_OK: *lease
 * is granted with its fence (and logged: lock.acquired). LOCK_BUSY:
 * *holder_pttl_ms is the holder's remaining TTL (may be -1/-2 if the key
 * just vanished). LOCK_ERR: whatever the attempt may have left behind is
 * released at once, best effort (the backend says how). */
int lock_try_acquire(lock_client_t *cl, const char *resource, uint32_t ttl_ms,
                     lock_lease_t *lease, int64_t *holder_pttl_ms);

/* Acquires resource's lock, waiting for it until deadline_ns (monotonic).
 * resource is a coupon id, or "ID#b" for bucket b of a sharded coupon; the
 * keys are coupon:{resource}:lock/fence/released. Returns LOCK_OK (*lease
 * granted), LOCK_BUSY (the deadline passed) or LOCK_ERR. *waited_ns gets
 * the time spent. How it waits is the process's strategy
 * (COUPON_LOCK_WAIT_STRATEGY): asleep until a release notification, a
 * reconnect of the subscriber or the timed re-check wakes it (lock_wait.c),
 * or, with poll, a jittered, growing backoff never past the holder's PTTL. */
int lock_acquire(lock_client_t *cl, const char *resource, uint32_t ttl_ms,
                 int64_t deadline_ns, lock_lease_t *lease, int64_t *waited_ns);

/* The watchdog's round: extends many leases at once. results[i] is
 * LOCK_HELD when lease i was extended, LOCK_LOST when it is lost for good
 * (its token is gone: on Redlock, on so many nodes that no majority can be
 * had), LOCK_ERR when unknown (an error). Returns LOCK_OK, or LOCK_ERR when
 * the backend failed (lock_errstr says how; every lease it could not renew
 * is LOCK_ERR, those it did are still LOCK_HELD). The leases are borrowed.
 * *sent_at_ns gets the instant (boot clock) from which an extended lease is
 * valid for its TTL: the send time, minus the clock drift allowance where the
 * backend has one (Redlock). */
int lock_extend_many(lock_client_t *cl, lock_lease_t *const *leases, size_t n,
                     int *results, int64_t *sent_at_ns);

/* Compare-and-delete (and announce to waiters), sent at once and on every
 * node; its reply is read before the next command on cl, not waited for here
 * (one round trip less per claim). LOCK_OK when the release was written out,
 * LOCK_ERR when it could not be sent (the lock then expires by its TTL). The
 * lease is borrowed. Logged at debug: lock.released. */
int lock_release(lock_client_t *cl, const lock_lease_t *lease);

/* LOCK_HELD if the lock still holds our token (Redlock: on a majority),
 * LOCK_LOST if not, LOCK_ERR on error. */
int lock_check(lock_client_t *cl, const lock_lease_t *lease);

/* Raises resource's fence counter (every node's) to at least floor, the
 * recovery after PostgreSQL refused a fence as stale. Returns LOCK_OK and the
 * value after in *now_at (Redlock: the lowest over the nodes that answered),
 * or LOCK_ERR. */
int lock_raise_fence(lock_client_t *cl, const char *resource, int64_t floor,
                     int64_t *now_at);

/* Readiness: LOCK_OK when the backend in use can serve (Redlock: a majority
 * answers), or LOCK_ERR. */
int lock_ping(lock_client_t *cl);

/* The watchdog's max hold: makes the lock go away without us. Redis and
 * Redlock: nothing (renewals stop, the key expires by its TTL); etcd:
 * deletes our key (the process lease lives on). The lease is borrowed. */
void lock_abandon(lock_client_t *cl, lock_lease_t *lease);

/* 1 while the lease may still be used for a write (not lost, TTL not run
 * out by the boot clock), else 0. Thread-safe. */
int lock_lease_usable(const lock_lease_t *lease);

/* Marks the lease lost for good. Thread-safe. Returns 1 if this call was the
 * one that marked it. */
int lock_lease_mark_lost(lock_lease_t *lease);

/* ------------------------------------------------ checks, for assert() --- */

/* What one reader saw of the two fields the watchdog writes, to hold a later
 * look at the lease against (lock_lease__sanity). */
typedef struct lock_lease_seen {
    int lost;
    int64_t valid_until_ns;
} lock_lease_seen_t;

/* The two fields now (lost read first). Thread-safe. */
lock_lease_seen_t lock_lease_seen(const lock_lease_t *lease);

/* 1 when the fields of a granted lease are in range: lost is 0 or 1, the
 * TTL is not 0, the token is LOCK_TOKEN_HEX lower-case hex digits. O(1)
 * (the token's 32 digits). The watchdog's fields are wd.c's to check. */
int lock_lease__ok(const lock_lease_t *lease);

/* 1 when the lease agrees with its invariant against an earlier look
 * before: once lost it stays lost, and while not lost valid_until_ns has
 * not gone back. O(1). Call it from the watchdog's thread, the only writer
 * of valid_until_ns after the grant. */
int lock_lease__sanity(const lock_lease_t *lease, lock_lease_seen_t before);

#endif
