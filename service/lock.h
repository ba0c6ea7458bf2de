/*
 * lock.h: the Redis lock: acquire (with its fencing token), extend, release.
 *
 * Only this module (lock.c, and lock_wait.c for the waiters' subscriber)
 * includes hiredis. The Lua scripts it runs are in lock_scripts.h, each with
 * the race it closes.
 *
 * A lock_client_t is one Redis connection plus its error state, used by one
 * thread at a time (each HTTP worker owns one, the watchdog owns one). It
 * connects lazily, and after any error it drops the connection (a hiredis
 * context is unusable after an error) and connects again on the next call.
 * Every call is bounded by the connect and command timeout it was made with.
 *
 * A lock_lease_t is one grant: key, token, fence, TTL, and the two fields the
 * watchdog writes and the claim reads from another thread (valid_until_ns and
 * lost), which are atomics. Leases are owned by the caller (usually on the
 * stack of the claim); the watchdog only borrows them between wd_watch and
 * wd_unwatch.
 *
 * Return codes: LOCK_OK (0), LOCK_BUSY (held by another token: not an error),
 * LOCK_ERR (negative: Redis unreachable, timed out or answered an error;
 * lock_errkind says which kind, lock_errstr says it in words).
 *
 * Credentials: lock_init sets the Redis user and password for the whole
 * process, once, before any client exists. Every new connection of every
 * client (the workers', the watchdog's, the readiness probe's) sends AUTH
 * first, before anything else.
 */
#ifndef COUPONSVC_LOCK_H
#define COUPONSVC_LOCK_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "cfg.h"
#include "req.h"

enum {
    LOCK_OK = 0,
    LOCK_BUSY = 1, /* somebody else holds it */
    LOCK_ERR = -1,
};

/* What kind of failure the last LOCK_ERR was. Callers decide on the kind,
 * never on the text of lock_errstr. */
typedef enum lock_errkind {
    LOCK_ENONE = 0, /* no error yet */
    LOCK_EIO,       /* unreachable, timed out, connection dropped, or a node
                       that cannot serve writes (READONLY, MASTERDOWN,
                       LOADING): the connection was dropped */
    LOCK_EAUTH,     /* our credentials were refused (WRONGPASS, NOAUTH) */
    LOCK_EPERM,     /* the ACL user lacks a command, key or channel (NOPERM) */
    LOCK_EPROTO,    /* an unexpected reply, or an error from a script */
    LOCK_ESYS,      /* a local failure: out of memory, no randomness */
} lock_errkind_t;

#define LOCK_TOKEN_HEX 32 /* 128 random bits as hex */
#define LOCK_KEY_MAX (REQ_COUPON_ID_MAX + 32)

typedef struct lock_client lock_client_t;

typedef struct lock_lease {
    char key[LOCK_KEY_MAX];         /* coupon:{ID}:lock */
    char fence_key[LOCK_KEY_MAX];   /* coupon:{ID}:fence */
    char channel[LOCK_KEY_MAX];     /* coupon:{ID}:released */
    char token[LOCK_TOKEN_HEX + 1]; /* our value in the lock key */
    int64_t fence;                  /* the fencing token drawn at grant */
    uint32_t ttl_ms;                /* TTL set at grant and on each renewal */

    /* Written by the watchdog, read by the claim. Invariant: once lost is 1
     * it stays 1; valid_until_ns only grows while lost is 0. The lease may be
     * used for a write only while !lost && boot_ns() < valid_until_ns. */
    _Atomic int64_t valid_until_ns; /* boot clock (mono.h): send time of the
                                       last successful grant/renewal + ttl */
    atomic_int lost;                /* renewal refused, or TTL ran out */

    /* The watchdog's list links; only touched under the watchdog's mutex. */
    struct lock_lease *wd_prev, *wd_next;
    int wd_watched;
    int64_t wd_hold_until_ns; /* monotonic: no renewal from then on */
} lock_lease_t;

/* Sets the credentials every new connection authenticates with: username
 * may be "" (AUTH password, for the default user), password "" means no AUTH.
 * With both "" no AUTH is sent; with a username, AUTH is sent even with an
 * empty password (an ACL user may be "nopass"). Both are borrowed for the
 * life of the process (they live in cfg_t). Call
 * once, before the first lock_client_new. */
void lock_init(const char *username, const char *password);

/* Creates a client for addr. Nothing is sent until the first call. Returns a
 * new client (free with lock_client_free), or NULL when out of memory. */
lock_client_t *lock_client_new(const cfg_addr_t *addr, uint32_t timeout_ms);

/* Closes the connection and frees. Accepts NULL. */
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

/* One acquire attempt on the coupon's lock with a fresh token. LOCK_OK: *lease
 * is granted with its fence. LOCK_BUSY: *holder_pttl_ms is the holder's
 * remaining TTL (may be -1/-2 if the key just vanished). LOCK_ERR after the
 * request was sent but its reply was lost (a timeout): the acquire may have
 * been applied, so a release with this token is sent at once on a fresh
 * connection, best effort; otherwise nobody could free the lock before its
 * TTL. */
int lock_try_acquire(lock_client_t *cl, const char *coupon, uint32_t ttl_ms,
                     lock_lease_t *lease, int64_t *holder_pttl_ms);

/* Acquires resource's lock, waiting for it until deadline_ns (monotonic).
 * resource is a coupon id, or "ID#b" for bucket b of a sharded coupon; the
 * keys are coupon:{resource}:lock/fence/released. Returns LOCK_OK (*lease
 * granted), LOCK_BUSY (the deadline passed) or LOCK_ERR. *waited_ns gets
 * the time spent. How it waits is the process's strategy
 * (lock_wait_config): asleep until a release notification, a reconnect of
 * the subscriber or the timed re-check wakes it (lock_wait.c), or, with
 * poll, a jittered, growing backoff never past the holder's PTTL. */
int lock_acquire(lock_client_t *cl, const char *coupon, uint32_t ttl_ms,
                 int64_t deadline_ns, lock_lease_t *lease, int64_t *waited_ns);

/* Extends many leases in one pipelined round trip. results[i] is 1 when
 * lease i was extended, 0 when its token is gone (lease lost), -1 on error.
 * Returns 0, or LOCK_ERR when the connection failed (results then -1). The
 * leases are borrowed. *sent_at_ns gets the send time on the boot clock. */
int lock_extend_many(lock_client_t *cl, lock_lease_t *const *leases, size_t n,
                     int *results, int64_t *sent_at_ns);

/* Compare-and-delete (and publish), sent at once; its reply is read before
 * the next command on cl, not waited for here (one round trip less per
 * claim). LOCK_OK when the release was written out, LOCK_ERR when it could
 * not be sent (the lock then expires by its TTL). Whether the lock was
 * still ours is logged when the reply is read. */
int lock_release(lock_client_t *cl, const lock_lease_t *lease);

/* 1 if the lock key still holds our token, 0 if not, LOCK_ERR on error. */
int lock_check(lock_client_t *cl, const lock_lease_t *lease);

/* Raises coupon's fence counter to at least floor. Returns LOCK_OK and the
 * value after in *now_at, or LOCK_ERR. */
int lock_raise_fence(lock_client_t *cl, const char *coupon, int64_t floor,
                     int64_t *now_at);

/* PING. LOCK_OK or LOCK_ERR. */
int lock_ping(lock_client_t *cl);

/* 1 while the lease may still be used for a write (not lost, TTL not run
 * out by the boot clock), else 0. Thread-safe. */
int lock_lease_usable(const lock_lease_t *lease);

/* Marks the lease lost for good. Thread-safe. Returns 1 if this call was the
 * one that marked it. */
int lock_lease_mark_lost(lock_lease_t *lease);

#endif
