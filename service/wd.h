/*
 * wd.h: the watchdog. One thread per process keeps every held lease alive.
 *
 * Every COUPON_WATCHDOG_PERIOD_MS it sends one pipelined round of EXTEND
 * scripts (compare token, then PEXPIRE; never a re-SET) for all watched
 * leases, through its own lock client (lock_extend_many: on Redlock one
 * round over every node, a lease extended only where a majority agreed).
 * A lease is marked lost, for good:
 *   - on the first renewal Redis refuses (the token is gone: expired, taken
 *     over, or Redis lost the key; on Redlock, gone from so many nodes that
 *     no majority is left), or
 *   - when its TTL has run out by the boot clock (mono.h: unlike the
 *     monotonic clock it counts a system suspend) without a successful
 *     renewal (Redis unreachable or slow: we cannot know whether the key
 *     still exists, so we assume the worst), or
 *   - when it has been watched for longer than the max hold
 *     (COUPON_LOCK_MAX_HOLD_MS): the watchdog stops renewing it, so the key
 *     expires in Redis within one TTL of the last renewal, whatever the
 *     claiming thread is doing (blocked in a call that never returns, for
 *     instance). Renewing as long as the holder lives would let one hung
 *     thread block its coupon for as long as it hangs.
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

/* Where a lease stands with the watchdog (lock_lease_t's wd_state; the
 * transitions and the invariant are at the top of wd.c). */
typedef enum wd_state {
    WD_IDLE = 0,          /* not watched: in no list, no round holds it */
    WD_WATCHED,           /* in the list, no round holds it */
    WD_IN_ROUND,          /* in the list and in the round in flight */
    WD_UNLINKED_IN_ROUND, /* unwatched while its round is in flight: out of
                             the list, still held by the round; its
                             wd_unwatch waits for the round's end */
} wd_state_t;

typedef enum wd_event {
    WD_EV_WATCH,     /* wd_watch */
    WD_EV_SNAPSHOT,  /* a round takes it (renew or abandon) */
    WD_EV_UNWATCH,   /* wd_unwatch */
    WD_EV_ROUND_END, /* the round that took it has finished */
} wd_event_t;

/* The state after ev in state s, or -1 when ev cannot happen in s (the
 * watchdog asserts it never does). Pure; exported for the unit tests. */
int wd_state_next(wd_state_t s, wd_event_t ev);

/* 1 when a lease in state s is in the watchdog's list. */
int wd_state_listed(wd_state_t s);

/* 1 when a lease in state s is held by the round in flight. */
int wd_state_in_round(wd_state_t s);

/* Checks of the invariant at the top of wd.c, for assert() (exported for
 * the unit tests, which feed them corrupted copies). */

/* 1 when l's watchdog fields agree with its state, in a list that starts at
 * head: a known state; if listed (WATCHED, IN_ROUND), linked both ways (its
 * neighbours point back at it, or it is the head); otherwise no links and
 * not the head. O(1). */
int wd__lease_ok(const lock_lease_t *head, const lock_lease_t *l);

/* Walks the list from head: every lease passes wd__lease_ok in a listed
 * state, and the list is count long. Returns how many are IN_ROUND, or -1
 * when the list breaks the invariant. O(count). */
long wd__list_sanity(const lock_lease_t *head, long count);

/* Starts the watchdog thread with its own lock client (lock_client_new:
 * cfg is borrowed for the life of the watchdog; lock_init must have run).
 * Returns a new watchdog (stop and free with wd_stop), or NULL with errno
 * set. */
wd_t *wd_start(const cfg_t *cfg, uint32_t period_ms);

/* Stops the thread, joins it and frees. Leases still watched are left alone
 * (they expire by TTL). Accepts NULL. */
void wd_stop(wd_t *wd);

/* Sets the max hold (see the top) of wd (borrowed). Call once, before the
 * first wd_watch. */
void wd_set_max_hold(wd_t *wd, uint32_t max_hold_ms);

/* Starts renewing lease (borrowed until wd_unwatch), for at most the max
 * hold from now. */
void wd_watch(wd_t *wd, lock_lease_t *lease);

/* Stops renewing lease; see the thread safety notes. Idempotent. */
void wd_unwatch(wd_t *wd, lock_lease_t *lease);

/* Marks lease lost for good (idempotent); the first call counts it in
 * couponsvc_leases_lost_total and logs why. Thread-safe. */
void wd_lost(lock_lease_t *lease, const char *why);

#endif
