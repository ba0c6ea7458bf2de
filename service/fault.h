/*
 * fault.h: the fault hook, for tests and demos only.
 *
 * COUPON_FAULT=<point>:<ms>[,<point>:<ms>...] makes the claiming thread sleep
 * that long when it reaches the point. The points are where a real process
 * can freeze (a GC pause, SIGSTOP, a page fault storm, a slow network) with
 * the most damage:
 *
 *   after_acquire   holding the lock, before the transaction starts
 *   after_check     in the transaction, the check (the read) done and passed,
 *                   the write not yet sent: the moment a check can go stale
 *   before_commit   holding the lock and the row lock, write done, not
 *                   committed
 *   after_commit    committed, lock not yet released
 *   before_subscribe  a lock waiter whose first attempt was refused, before
 *                   it subscribes to the release channel: a release then
 *                   falls between the refusal and the subscription
 *   before_writeback  Redlock: a majority granted, the fence drawn, its
 *                   write-back not yet sent (the lease is not usable yet):
 *                   the moment a node can lose our key to another client
 *
 * One point is not a pause: abort_before_commit (any ms above 0 turns it
 * on) makes the store run a failing statement right before COMMIT and
 * ignore its error, so that the transaction is aborted and the client does
 * not know: the COMMIT then comes back with the tag ROLLBACK.
 *
 * The service logs a loud warning at start when any point is set.
 */
#ifndef COUPONSVC_FAULT_H
#define COUPONSVC_FAULT_H

#include <stddef.h>
#include <stdint.h>

typedef enum fault_point {
    FAULT_AFTER_ACQUIRE = 0,
    FAULT_BEFORE_COMMIT,
    FAULT_AFTER_COMMIT,
    FAULT_AFTER_CHECK,
    FAULT_ABORT_BEFORE_COMMIT, /* not a pause: see the top */
    FAULT_BEFORE_SUBSCRIBE,    /* a lock waiter, first attempt refused */
    FAULT_BEFORE_WRITEBACK,    /* Redlock: granted, write-back not sent */
    FAULT__COUNT,
} fault_point_t;

/* Parses spec ("" or NULL clears every point). Returns 0, or -1 with a
 * reason in errstr. Not thread-safe: call once at start. */
int fault_parse(const char *spec, char *errstr, size_t errlen);

/* Pause length for a point, in ms (0 = none). */
uint32_t fault_ms(fault_point_t p);

/* 1 if any point is set. */
int fault_any(void);

const char *fault_name(fault_point_t p);

/* Sleeps for the point's pause, if any (a monotonic sleep, restarted after
 * signals). */
void fault_pause(fault_point_t p);

#endif
