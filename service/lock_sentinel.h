/*
 * lock_sentinel.h: where the Redis master is, asked of Redis Sentinel.
 *
 * With COUPON_REDIS_SENTINELS set, the service does not take the Redis
 * address from COUPON_REDIS_ADDRS: every (re)connect of a lock connection
 * asks the sentinels which node is the master of COUPON_REDIS_MASTER_NAME
 * now (SENTINEL get-master-addr-by-name), and connects there. A failover is
 * followed that way: the old master's connections fail (a reset, a timeout,
 * or READONLY once it comes back as a replica), the lock module drops them,
 * and the next connect asks again.
 *
 * The sentinels are asked one after the other until one answers with an
 * address, starting with the one that answered last time (the configured
 * order at first); the whole question is bounded by the Redis timeout
 * (COUPON_REDIS_TIMEOUT_MS), each sentinel getting an equal share of what
 * is left of it, so that one that black-holes does not use it all up. A
 * sentinel that answers "no such master" (a nil reply) is skipped like one that
 * is down: a sentinel that has not yet learned the configuration must not stop
 * the others from being asked.
 *
 * Thread safety: every function may be called from any thread at once;
 * each call uses connections of its own. The last master seen is kept under
 * a mutex, only to log the moment it changes.
 */
#ifndef COUPONSVC_LOCK_SENTINEL_H
#define COUPONSVC_LOCK_SENTINEL_H

#include <stddef.h>

#include "cfg.h"

enum {
    LOCK_SENTINEL_OK = 0,
    LOCK_SENTINEL_NONE = 1, /* lock_sentinel_resolve: no sentinels configured */
    LOCK_SENTINEL_ERR = -1, /* no sentinel gave an address: err says why */
    LOCK_SENTINEL_EAUTH = -2, /* every sentinel reached refused the password */
};

/* 1 when cfg names sentinels (COUPON_REDIS_SENTINELS), 0 otherwise. */
int lock_sentinel_configured(const cfg_t *cfg);

/* Logs, once at start, that the sentinels decide where Redis is, and warns
 * when COUPON_REDIS_ADDRS was also given (it is then ignored). Does nothing
 * when no sentinels are configured. cfg is borrowed. */
void lock_sentinel_log_config(const cfg_t *cfg);

/* Asks the sentinels of cfg (borrowed) for the master's address and writes
 * it to *out. Returns LOCK_SENTINEL_OK, or with a message in err (errlen bytes,
 * always NUL-terminated; never a password) LOCK_SENTINEL_ERR: the master is
 * unknown, which the callers treat as Redis being unavailable; or
 * LOCK_SENTINEL_EAUTH: every sentinel that answered refused our password (or
 * wanted one), this instance's own fault. */
int lock_sentinel_master(const cfg_t *cfg, cfg_addr_t *out, char *err,
                         size_t errlen);

/* Once per process, before any connection: remembers cfg (borrowed; it must
 * outlive every connection, as the process's cfg_t does) for
 * lock_sentinel_resolve, and logs it (lock_sentinel_log_config). */
void lock_sentinel_init(const cfg_t *cfg);

/* The hook of every lock connection's (re)connect: with sentinels
 * configured (lock_sentinel_init), asks them (lock_sentinel_master) and writes
 * the master's address to *addr: LOCK_SENTINEL_OK, or LOCK_SENTINEL_ERR /
 * LOCK_SENTINEL_EAUTH with err filled (a connection error / refused
 * credentials). Without sentinels: LOCK_SENTINEL_NONE, and *addr is left as it
 * is (the COUPON_REDIS_ADDRS entry). */
int lock_sentinel_resolve(cfg_addr_t *addr, char *err, size_t errlen);

/* The master the sentinels named last (any thread's question), into
 * *master, and the sentinel that named it, into *from (may be NULL).
 * Returns 1, or 0 when no sentinel has named one yet (both left as they
 * are). */
int lock_sentinel_last(cfg_addr_t *master, cfg_addr_t *from);

#endif
