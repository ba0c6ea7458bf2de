/*
 * test_locksanity.c: the lock module's invariant checkers, fed good values
 * and then corrupted copies, each of which they must refuse: the lease
 * (lock_lease__ok, lock_lease__sanity), the watchdog's list (wd__lease_ok,
 * wd__list_sanity) and a waiter queue (lock_wait__queue_ok,
 * lock_wait__queue_sanity). The service calls them from assert(); here
 * they are called directly, so a checker that accepts everything fails.
 * No network.
 */
#include <stdint.h>
#include <string.h>

#include "lock.h"
#include "lock_backend.h"
#include "lock_wait.h"
#include "mono.h"
#include "tt.h"
#include "wd.h"

/* A granted lease as lock_try_acquire leaves it. */
static void granted(lock_lease_t *l) {
    lock_lease_setup(l, "c1", 5000);
    memset(l->token, 'a', LOCK_TOKEN_HEX);
    l->token[LOCK_TOKEN_HEX] = '\0';
    l->fence = 7;
    atomic_store(&l->valid_until_ns, 1000 * MONO_MS);
}

TT_TEST(lease_ok_refuses_corrupted_fields, 5) {
    lock_lease_t l;
    granted(&l);
    TT_EQ_INT(lock_lease__ok(&l), 1);

    lock_lease_t bad = l;
    atomic_store(&bad.lost, 2);
    TT_EQ_INT(lock_lease__ok(&bad), 0);

    bad = l;
    bad.ttl_ms = 0;
    TT_EQ_INT(lock_lease__ok(&bad), 0);

    bad = l;
    bad.token[3] = 'G'; /* not lower-case hex */
    TT_EQ_INT(lock_lease__ok(&bad), 0);

    bad = l;
    bad.token[LOCK_TOKEN_HEX - 1] = '\0'; /* one digit short */
    TT_EQ_INT(lock_lease__ok(&bad), 0);
}

/* Lost stays lost; validity only grows while not lost. */
TT_TEST(lease_sanity_lost_stays_lost_validity_grows, 5) {
    lock_lease_t l;
    granted(&l);
    lock_lease_seen_t before = lock_lease_seen(&l);
    TT_EQ_INT(lock_lease__sanity(&l, before), 1);

    atomic_store(&l.valid_until_ns, 2000 * MONO_MS); /* a renewal */
    TT_EQ_INT(lock_lease__sanity(&l, before), 1);

    atomic_store(&l.valid_until_ns, 500 * MONO_MS); /* went back */
    TT_EQ_INT(lock_lease__sanity(&l, before), 0);

    TT_EQ_INT(lock_lease_mark_lost(&l), 1);
    TT_EQ_INT(lock_lease_mark_lost(&l), 0);
    TT_EQ_INT(lock_lease__sanity(&l, before), 1); /* lost: validity is moot */

    lock_lease_seen_t lost = lock_lease_seen(&l);
    TT_EQ_INT(lost.lost, 1);
    atomic_store(&l.lost, 0); /* lost came back */
    TT_EQ_INT(lock_lease__sanity(&l, lost), 0);
}

/* Three leases linked as wd_watch links them: c at the head, then b, a. */
static void wd_list3(lock_lease_t *a, lock_lease_t *b, lock_lease_t *c) {
    granted(a);
    granted(b);
    granted(c);
    c->wd_prev = NULL;
    c->wd_next = b;
    b->wd_prev = c;
    b->wd_next = a;
    a->wd_prev = b;
    a->wd_next = NULL;
    a->wd_state = b->wd_state = c->wd_state = WD_WATCHED;
}

TT_TEST(wd_list_sanity_refuses_corrupted_lists, 5) {
    lock_lease_t a, b, c, idle;
    wd_list3(&a, &b, &c);
    granted(&idle);
    TT_EQ_INT(wd__list_sanity(&c, 3), 0); /* none in a round */
    b.wd_state = WD_IN_ROUND;
    TT_EQ_INT(wd__list_sanity(&c, 3), 1);
    TT_EQ_INT(wd__list_sanity(NULL, 0), 0);
    TT_EQ_INT(wd__lease_ok(&c, &idle), 1); /* IDLE, unlinked */

    TT_EQ_INT(wd__list_sanity(&c, 2), -1); /* count too low */
    TT_EQ_INT(wd__list_sanity(&c, 4), -1); /* count too high */

    b.wd_state = WD_UNLINKED_IN_ROUND; /* unlinked, yet still in the list */
    TT_EQ_INT(wd__list_sanity(&c, 3), -1);
    TT_EQ_INT(wd__lease_ok(&c, &b), 0);
    b.wd_state = WD_IDLE;
    TT_EQ_INT(wd__list_sanity(&c, 3), -1);
    b.wd_state = 7; /* no such state */
    TT_EQ_INT(wd__lease_ok(&c, &b), 0);
    b.wd_state = WD_WATCHED;

    a.wd_prev = &c; /* a back link that skips b */
    TT_EQ_INT(wd__list_sanity(&c, 3), -1);
    a.wd_prev = &b;

    c.wd_prev = &a; /* the head with a predecessor */
    TT_EQ_INT(wd__list_sanity(&c, 3), -1);
    c.wd_prev = NULL;
    TT_EQ_INT(wd__list_sanity(&c, 3), 0);

    idle.wd_next = &a; /* an IDLE lease that still has a link */
    TT_EQ_INT(wd__lease_ok(&c, &idle), 0);
    idle.wd_next = NULL;
    idle.wd_state = WD_UNLINKED_IN_ROUND; /* fine: out of the list */
    TT_EQ_INT(wd__lease_ok(&c, &idle), 1);
    idle.wd_state = WD_WATCHED; /* listed, but not linked in */
    TT_EQ_INT(wd__lease_ok(&c, &idle), 0);
}

/* Three waiters queued as lock_wait_join queues them (seq 0, 1, 2). */
static void queue3(lock_waiter_t w[3]) {
    memset(w, 0, 3 * sizeof(*w));
    for (int i = 0; i < 3; i++) {
        w[i].res = (struct lock_wait__res *)&w[0]; /* any one resource */
        w[i].seq = (uint64_t)i;
        w[i].prev = i > 0 ? &w[i - 1] : NULL;
        w[i].next = i < 2 ? &w[i + 1] : NULL;
    }
}

TT_TEST(lock_wait_queue_sanity_refuses_corrupted_queues, 5) {
    lock_waiter_t w[3];
    queue3(w);
    TT_EQ_INT(lock_wait__queue_ok(&w[0], &w[2], 3), 1);
    TT_EQ_INT(lock_wait__queue_sanity(&w[0], &w[2], 3), 1);
    TT_EQ_INT(lock_wait__queue_ok(NULL, NULL, 0), 1);
    TT_EQ_INT(lock_wait__queue_sanity(NULL, NULL, 0), 1);

    TT_EQ_INT(lock_wait__queue_ok(NULL, NULL, 1), 0);  /* count, no queue */
    TT_EQ_INT(lock_wait__queue_ok(&w[0], NULL, 3), 0); /* head, no tail */
    TT_EQ_INT(lock_wait__queue_ok(&w[0], &w[2], 0), 0);
    TT_EQ_INT(lock_wait__queue_sanity(&w[0], &w[2], 2), 0); /* count low */
    TT_EQ_INT(lock_wait__queue_sanity(&w[0], &w[2], 4), 0); /* count high */
    TT_EQ_INT(lock_wait__queue_sanity(&w[0], &w[1], 3), 0); /* wrong tail */

    w[2].seq = 1; /* not FIFO: joined no later than the one before it */
    TT_EQ_INT(lock_wait__queue_sanity(&w[0], &w[2], 3), 0);
    w[2].seq = 2;

    w[2].prev = &w[0]; /* a back link that skips w[1] */
    TT_EQ_INT(lock_wait__queue_sanity(&w[0], &w[2], 3), 0);
    w[2].prev = &w[1];

    w[1].res = (struct lock_wait__res *)&w[1]; /* another resource's */
    TT_EQ_INT(lock_wait__queue_sanity(&w[0], &w[2], 3), 0);
    w[1].res = w[0].res;

    w[0].prev = &w[2]; /* the head with a predecessor */
    TT_EQ_INT(lock_wait__queue_ok(&w[0], &w[2], 3), 0);
    TT_EQ_INT(lock_wait__queue_sanity(&w[0], &w[2], 3), 0);
}
