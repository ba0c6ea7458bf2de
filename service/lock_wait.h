/*
 * lock_wait.h: how a lock waiter sleeps until a release (part of the lock
 * module; only lock.c calls it). The design is at the top of lock_wait.c.
 *
 * A lock_waiter_t lives on the stack of the waiting claim, between
 * lock_wait_join and lock_wait_leave; the subscriber thread only touches it
 * under the module's mutex while it is queued.
 */
#ifndef COUPONSVC_LOCK_WAIT_H
#define COUPONSVC_LOCK_WAIT_H

#include <pthread.h>
#include <stdint.h>

#include "cfg.h"

/* What woke a waiter (0: the deadline passed). */
enum {
    LOCK_WAKE_NONE = 0,
    LOCK_WAKE_MESSAGE,   /* a release notification */
    LOCK_WAKE_RECHECK,   /* the timed re-check ran out */
    LOCK_WAKE_RECONNECT, /* the subscriber (re)connected */
};

typedef struct lock_waiter {
    struct lock_wait__res *res;      /* its resource; NULL when not queued */
    struct lock_waiter *prev, *next; /* FIFO links, under the mutex */
    pthread_cond_t cond;             /* signalled on a wake */
    int wake;                        /* an unconsumed wake's cause, or 0 */
    int joined;                      /* past its subscription wait */
    uint64_t seq; /* its place in its resource's join order (FIFO check) */
} lock_waiter_t;

/* Sets the strategy for the whole process, once, before any wait, from cfg
 * (borrowed for the life of the process): poll or pubsub
 * (COUPON_LOCK_WAIT_STRATEGY), the re-check period, and the nodes the
 * subscribers connect to: the first nnodes addresses of COUPON_REDIS_ADDRS
 * (1 for one node, N under Redlock), one subscriber thread each. Without this
 * call lock_acquire polls. The subscribers authenticate with the process's
 * Redis credentials (lock_init, lock_redis_auth_argv). */
void lock_wait_config(const cfg_t *cfg, int nnodes);

/* Stops the subscriber threads and frees their state; call after the last
 * waiter has left (the claim workers are stopped). Later waits re-check on
 * their timer only. */
void lock_wait_shutdown(void);

/* 1 when waiters sleep on release notifications (pubsub configured). */
int lock_wait_pubsub(void);

/* 1 when resource already has waiters in this process: a new claim queues
 * behind them instead of trying first (FIFO, no barging). */
int lock_wait_has_waiters(const char *resource);

/* The handoff: when this process released resource moments ago and its
 * release reached K other processes' subscribers, sleeps until K other
 * releases were seen or the lock was idle for the handoff window (never
 * past deadline_ns). */
void lock_wait_holdback(const char *resource, int64_t deadline_ns);

/* Queues w (borrowed until lock_wait_leave) at the tail of resource's FIFO,
 * makes sure the subscriber is subscribed to its channel, and waits for the
 * confirmation: at most until deadline_ns or the Redis timeout, whichever
 * is first (without it the waiter relies on the re-check). Returns 1 when
 * the caller must try at once (the subscription is new, or nobody is ahead
 * of it), 0 when it joined a subscribed queue behind others and should
 * sleep until woken. */
int lock_wait_join(lock_waiter_t *w, const char *resource, int64_t deadline_ns);

/* Sleeps until woken (returns the cause, counted in the wakeups metric) or
 * until deadline_ns (returns LOCK_WAKE_NONE). */
int lock_wait_sleep(lock_waiter_t *w, int64_t deadline_ns);

/* Takes w out of the queue. granted: it got the lock. errored: its last
 * attempt failed on an error. A waiter that leaves without the lock while
 * holding a wake it did not use (woken, then the deadline), or after an
 * error, passes a wake on to the next waiter. */
void lock_wait_leave(lock_waiter_t *w, int granted, int errored);

/* The release path: just before the release of resource is sent. */
void lock_wait_note_release(const char *resource);

/* The release's reply: PUBLISH reached receivers subscribers. */
void lock_wait_note_receivers(const char *resource, long long receivers);

/* The same from node (0..nnodes-1, lock_wait_config's order) of several:
 * under Redlock each node that held the lock announces its release and
 * answers with its own receiver count. */
void lock_wait_note_receivers_at(const char *resource, int node,
                                 long long receivers);

/* ------------------------------ arithmetic (pure; for the unit tests) --- */

/* The end of a holdback's handoff window: the window (10 ms) after the last
 * release or release message last_ns, never past deadline_ns. */
int64_t lock_wait__handoff_until(int64_t last_ns, int64_t deadline_ns);

/* 1 when a holdback is over: no other process waits (others <= 0), or as
 * many release messages came as were due (msgs >= self + others: our own
 * release's echo, when self, and one per other process), or the window
 * until_ns has ended (now_ns >= until_ns). */
int lock_wait__handoff_over(int others, int msgs, int self, int64_t now_ns,
                            int64_t until_ns);

/* A wait's end: at_ns, clamped to deadline_ns. */
int64_t lock_wait__until(int64_t at_ns, int64_t deadline_ns);

/* The re-check period for COUPON_LOCK_RECHECK_MS = recheck_ms, in ns; at
 * least 1 ms. */
int64_t lock_wait__recheck_ns(uint32_t recheck_ms);

/* ------------------------------------------------ checks, for assert() --- */

/* 1 when a queue's ends agree with its count n: head and tail both NULL iff
 * n is 0; the head has no prev, the tail no next. O(1). */
int lock_wait__queue_ok(const lock_waiter_t *head, const lock_waiter_t *tail,
                        int n);

/* 1 when the whole queue holds its invariant (lock_wait.c's top): walked
 * from head, n waiters, each one's prev the one before it, all of one
 * resource, seq growing (join order: FIFO), the last one tail. O(n). */
int lock_wait__queue_sanity(const lock_waiter_t *head,
                            const lock_waiter_t *tail, int n);

#endif
