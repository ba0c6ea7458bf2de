/*
 * wd.h: the watchdog. One thread per process keeps every held lease alive.
 *
 * Every COUPON_WATCHDOG_PERIOD_MS it sends one pipelined round of EXTEND
 * scripts (compare token, then PEXPIRE; never a re-SET) for all watched
 * leases. A lease is marked lost, for good:
 *   - on the first renewal Redis refuses (the token is gone: expired, taken
 *     over, or Redis lost the key), or
 *   - when its TTL has run out by the boot clock (mono.h: unlike the
 *     monotonic clock it counts a system suspend) without a successful
 *     renewal (Redis unreachable or slow: we cannot know whether the key
 *     still exists, so we assume the worst).
 * The claim checks the lease right before COMMIT and rolls back if it is
 * lost; see claim.c.
 *
 * Thread safety notes: wd_watch and wd_unwatch may be called from any thread.
 * They take the watchdog's mutex only briefly; the Redis round trip runs
 * without it. wd_unwatch waits, if needed, for a round in flight that
 * includes the lease, so that once it returns the watchdog will never touch
 * the lease again: the caller may then let the lease go out of scope. The
 * claim unwatches before it releases, so the watchdog sends no renewal of
 * the lease after that point. That order alone does not keep renewals off
 * the release, though: a round whose replies timed out has ended, yet its
 * renewals may still sit in a slow Redis's input and run after the release,
 * which travels on another connection, or after the key expired and was
 * granted to someone else. What makes that harmless is the token compare in
 * the EXTEND script: a renewal for a token that no longer holds the key is a
 * no-op (see lock_scripts.h).
 */
#ifndef COUPONSVC_WD_H
#define COUPONSVC_WD_H

#include <stdint.h>

#include "cfg.h"
#include "lock.h"

typedef struct wd wd_t;

/* Starts the watchdog thread with its own Redis connection to addr. Returns
 * a new watchdog (stop and free with wd_stop), or NULL with errno set. */
wd_t *wd_start(const cfg_addr_t *addr, uint32_t redis_timeout_ms,
               uint32_t period_ms);

/* Stops the thread, joins it and frees. Leases still watched are left alone
 * (they expire by TTL). Accepts NULL. */
void wd_stop(wd_t *wd);

/* Starts renewing lease (borrowed until wd_unwatch). */
void wd_watch(wd_t *wd, lock_lease_t *lease);

/* Stops renewing lease; see the thread safety notes. Idempotent. */
void wd_unwatch(wd_t *wd, lock_lease_t *lease);

/* Marks lease lost for good (idempotent); the first call counts it in
 * couponsvc_leases_lost_total and logs why. Thread-safe. */
void wd_lost(lock_lease_t *lease, const char *why);

#endif
