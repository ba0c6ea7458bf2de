/*
 * wd.c: see wd.h.
 *
 * Data: a doubly linked list of watched leases (links live in the lease) and,
 * during a round, an array snapshot of the leases the round holds: the ones
 * to renew, then the ones to abandon (their max hold ran out). Each lease
 * is in one state of wd_state_t (wd.h), its transitions given by
 * wd_state_next, asserted at every step:
 *
 *   IDLE --watch--> WATCHED --snapshot--> IN_ROUND --round end--> WATCHED
 *   WATCHED --unwatch--> IDLE
 *   IN_ROUND --unwatch--> UNLINKED_IN_ROUND --round end--> IDLE
 *
 * wd_unwatch of a lease IN_ROUND unlinks it at once, then sleeps on
 * round_done until the round ends (UNLINKED_IN_ROUND -> IDLE), so that the
 * round never touches a lease its owner has let go of.
 *
 * Invariant (under mu): a lease is in the list iff its state is WATCHED or
 * IN_ROUND (wd_state_listed); it is held by the round in flight iff its
 * state is IN_ROUND or UNLINKED_IN_ROUND (wd_state_in_round), which happens
 * only between the snapshot and the end of that round; count is the length
 * of the list. So an UNLINKED_IN_ROUND lease is in no list and has no links,
 * yet sits in the round's array until the round ends. wd__lease_ok checks
 * one lease's part of this in O(1) at every watch and unwatch; wd__sanity
 * walks the list and the round at the round's two transitions (snapshot,
 * end), and at every watch and unwatch too in a COUPONSVC_DEBUG_SANITY
 * build.
 */
#include "wd.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "metrics.h"
#include "mono.h"

int wd_state_next(wd_state_t s, wd_event_t ev) {
    switch (s) {
    case WD_IDLE:
        return ev == WD_EV_WATCH     ? WD_WATCHED
               : ev == WD_EV_UNWATCH ? WD_IDLE /* idempotent */
                                     : -1;
    case WD_WATCHED:
        return ev == WD_EV_SNAPSHOT  ? WD_IN_ROUND
               : ev == WD_EV_UNWATCH ? WD_IDLE
                                     : -1;
    case WD_IN_ROUND:
        return ev == WD_EV_ROUND_END ? WD_WATCHED
               : ev == WD_EV_UNWATCH ? WD_UNLINKED_IN_ROUND
                                     : -1;
    case WD_UNLINKED_IN_ROUND:
        /* A second wd_unwatch (another thread) waits like the first. */
        return ev == WD_EV_ROUND_END ? WD_IDLE
               : ev == WD_EV_UNWATCH ? WD_UNLINKED_IN_ROUND
                                     : -1;
    }
    return -1;
}

int wd_state_listed(wd_state_t s) {
    return s == WD_WATCHED || s == WD_IN_ROUND;
}

int wd_state_in_round(wd_state_t s) {
    return s == WD_IN_ROUND || s == WD_UNLINKED_IN_ROUND;
}

/* Moves l along ev; an illegal move is a bug in this file. Under mu. */
static void wd__step(lock_lease_t *l, wd_event_t ev) {
    int next = wd_state_next((wd_state_t)l->wd_state, ev);
    assert(next >= 0);
    l->wd_state = next;
}

struct wd {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t wake;       /* signals stop */
    pthread_cond_t round_done; /* a round in flight has finished */
    int stop;                  /* set by wd_stop */
    int64_t period_ns;
    int64_t max_hold_ns; /* set before the first wd_watch; then read-only */

    lock_lease_t *head; /* watched leases */
    long count;

    lock_client_t *redis; /* the watchdog's own connection */
    lock_lease_t **round; /* snapshot for one round; grows as needed */
    int *results;
    lock_lease_seen_t *seen; /* each round lease's fields at the snapshot */
    size_t cap;
    int in_flight; /* a round holds round[0..nrenew) and round[cap-nabandon..)
                    */
    size_t nrenew, nabandon;
};

/* ---------------------------------------------------------- the checks --- */

int wd__lease_ok(const lock_lease_t *head, const lock_lease_t *l) {
    int s = l->wd_state;
    if (s < WD_IDLE || s > WD_UNLINKED_IN_ROUND) {
        return 0;
    }
    if (!wd_state_listed((wd_state_t)s)) {
        return l->wd_prev == NULL && l->wd_next == NULL && head != l;
    }
    if (l->wd_prev == NULL ? head != l : l->wd_prev->wd_next != l) {
        return 0;
    }
    return l->wd_next == NULL || l->wd_next->wd_prev == l;
}

long wd__list_sanity(const lock_lease_t *head, long count) {
    long len = 0, in_round = 0;
    for (const lock_lease_t *l = head; l != NULL; l = l->wd_next) {
        if (!wd_state_listed((wd_state_t)l->wd_state) ||
            !wd__lease_ok(head, l) || ++len > count) {
            return -1;
        }
        in_round += l->wd_state == WD_IN_ROUND;
    }
    return len == count ? in_round : -1;
}

/* 1 when the whole invariant holds: the list passes wd__list_sanity, no
 * lease is in a round state while no round is in flight, and while one is,
 * every lease of its array is in a round state and the leases in a round
 * state are exactly those of the array (IN_ROUND ones in the list, plus the
 * UNLINKED_IN_ROUND ones out of it). O(count). Under mu. */
static int wd__sanity(const wd_t *wd) {
    long in_round = wd__list_sanity(wd->head, wd->count);
    if (in_round < 0) {
        return 0;
    }
    if (!wd->in_flight) {
        return in_round == 0;
    }
    if (wd->nrenew + wd->nabandon > wd->cap) {
        return 0;
    }
    size_t held = wd->nrenew + wd->nabandon, unlinked = 0;
    for (size_t k = 0; k < held; k++) {
        size_t i = k < wd->nrenew ? k : wd->cap - (k - wd->nrenew) - 1;
        const lock_lease_t *l = wd->round[i];
        if (!wd_state_in_round((wd_state_t)l->wd_state) ||
            !wd__lease_ok(wd->head, l)) {
            return 0;
        }
        unlinked += l->wd_state == WD_UNLINKED_IN_ROUND;
    }
    return (size_t)in_round + unlinked == held;
}

#ifdef COUPONSVC_DEBUG_SANITY
#define WD__DEBUG_SANITY(wd) assert(wd__sanity(wd))
#else
#define WD__DEBUG_SANITY(wd) ((void)0)
#endif

/* ------------------------------------------------------------ the list --- */

void wd_set_max_hold(wd_t *wd, uint32_t max_hold_ms) {
    assert(max_hold_ms > 0);
    pthread_mutex_lock(&wd->mu);
    wd->max_hold_ns = (int64_t)max_hold_ms * MONO_MS;
    pthread_mutex_unlock(&wd->mu);
}

void wd_watch(wd_t *wd, lock_lease_t *l) {
    int64_t since = mono_boot_ns();
    assert(lock_lease__ok(l));
    pthread_mutex_lock(&wd->mu);
    assert(wd__lease_ok(wd->head, l));
    wd__step(l, WD_EV_WATCH);
    l->wd_hold_until_ns = since + wd->max_hold_ns;
    l->wd_prev = NULL;
    l->wd_next = wd->head;
    if (wd->head != NULL) {
        wd->head->wd_prev = l;
    }
    wd->head = l;
    metrics_set_leases_held(++wd->count);
    assert(wd__lease_ok(wd->head, l));
    WD__DEBUG_SANITY(wd);
    pthread_mutex_unlock(&wd->mu);
}

static void wd__unlink(wd_t *wd, lock_lease_t *l) {
    assert(wd_state_listed((wd_state_t)l->wd_state));
    if (l->wd_prev != NULL) {
        l->wd_prev->wd_next = l->wd_next;
    } else {
        wd->head = l->wd_next;
    }
    if (l->wd_next != NULL) {
        l->wd_next->wd_prev = l->wd_prev;
    }
    l->wd_prev = l->wd_next = NULL;
    metrics_set_leases_held(--wd->count);
}

void wd_unwatch(wd_t *wd, lock_lease_t *l) {
    pthread_mutex_lock(&wd->mu);
    assert(wd__lease_ok(wd->head, l));
    if (wd_state_listed((wd_state_t)l->wd_state)) {
        wd__unlink(wd, l);
    }
    wd__step(l, WD_EV_UNWATCH);
    assert(wd__lease_ok(wd->head, l));
    while (l->wd_state == WD_UNLINKED_IN_ROUND) {
        pthread_cond_wait(&wd->round_done, &wd->mu);
    }
    assert(l->wd_state == WD_IDLE && wd__lease_ok(wd->head, l));
    WD__DEBUG_SANITY(wd);
    pthread_mutex_unlock(&wd->mu);
}

/* ----------------------------------------------------------- the round --- */

void wd_lost(lock_lease_t *l, const char *why) {
    if (lock_lease_mark_lost(l)) {
        metrics_inc(M_LEASES_LOST);
        log_warn("lease.lost", "key=%s fence=%lld reason=%s", l->key,
                 (long long)l->fence, why);
    }
}

/* Grows the round's arrays to twice the list's length when the list has
 * outgrown them. Under mu. Out of memory: the capacity stays, and the
 * leases beyond it wait for a later round. */
static void wd__grow(wd_t *wd) {
    if ((size_t)wd->count > wd->cap) {
        size_t cap = (size_t)wd->count * 2;
        lock_lease_t **r = realloc(wd->round, cap * sizeof(*r));
        if (r != NULL) {
            wd->round = r;
        }
        int *res = r != NULL ? realloc(wd->results, cap * sizeof(*res)) : NULL;
        if (res != NULL) {
            wd->results = res;
        }
        lock_lease_seen_t *seen =
            res != NULL ? realloc(wd->seen, cap * sizeof(*seen)) : NULL;
        if (seen != NULL) {
            wd->seen = seen;
        }
        if (seen == NULL) {
            /* Keep the old capacity; leases beyond it wait for a later
             * round (their expiry check still runs in wd__snapshot). */
            log_error("wd.oom", "cannot grow the round to %zu leases", cap);
        } else {
            wd->cap = cap;
        }
    }
}

/* Takes a snapshot of the leases to renew, from the front of the round
 * array, and of the leases whose max hold has just run out, from its back
 * (*nabandon of them, to be abandoned: lock_abandon); marks them IN_ROUND.
 * Expired leases are marked lost here and left out. Called with mu held.
 * Returns the number to renew. */
static size_t wd__snapshot(wd_t *wd, size_t *nabandon) {
    /* The max hold, like lease validity, is on the boot clock: a suspended
     * host's hold time counts too. */
    int64_t held_now = mono_boot_ns();
    wd__grow(wd);

    int64_t now = mono_boot_ns(); /* lease validity is on the boot clock */
    size_t n = 0, m = 0;
    for (lock_lease_t *l = wd->head; l != NULL; l = l->wd_next) {
        if (atomic_load(&l->lost)) {
            continue;
        }
        if (held_now >= l->wd_hold_until_ns) {
            /* Not renewed any more: the key goes away without us (it
             * expires within one TTL of the last renewal, or the backend
             * deletes it: lock_abandon), and the commit gate refuses from
             * now on. */
            wd_lost(l, "max_hold");
            if (n + m < wd->cap) {
                wd__step(l, WD_EV_SNAPSHOT);
                wd->round[wd->cap - ++m] = l;
                wd->seen[wd->cap - m] = lock_lease_seen(l);
            }
            continue;
        }
        if (now >= atomic_load(&l->valid_until_ns)) {
            wd_lost(l, "ttl_ran_out");
            continue;
        }
        if (n + m < wd->cap) {
            wd__step(l, WD_EV_SNAPSHOT);
            wd->seen[n] = lock_lease_seen(l);
            wd->round[n++] = l;
        }
    }
    *nabandon = m;
    wd->in_flight = n + m > 0;
    wd->nrenew = n;
    wd->nabandon = m;
    assert(wd__sanity(wd));
    return n;
}

static void wd__round(wd_t *wd) {
    pthread_mutex_lock(&wd->mu);
    size_t m = 0;
    size_t n = wd__snapshot(wd, &m);
    pthread_mutex_unlock(&wd->mu);
    if (n == 0 && m == 0) {
        return;
    }
    for (size_t i = wd->cap - m; i < wd->cap; i++) {
        lock_abandon(wd->redis, wd->round[i]);
    }

    /* The round trip runs without the mutex: claims can watch and unwatch
     * other leases meanwhile. The leases in the round stay valid because
     * wd_unwatch waits for round_done. */
    int64_t sent = 0;
    int rc = lock_extend_many(wd->redis, wd->round, n, wd->results, &sent);
    if (rc != LOCK_OK && n > 0) {
        log_warn("wd.renew_failed", "leases=%zu err=\"%s\"", n,
                 lock_errstr(wd->redis));
    }

    pthread_mutex_lock(&wd->mu);
    for (size_t i = 0; i < n; i++) {
        lock_lease_t *l = wd->round[i];
        if (wd->results[i] == LOCK_HELD) {
            metrics_inc(M_WD_RENEW_OK);
            /* Valid for ttl from when the renewal was sent (minus the
             * backend's drift allowance: lock_extend_many). */
            int64_t until = sent + (int64_t)l->ttl_ms * MONO_MS;
            if (until > atomic_load(&l->valid_until_ns)) {
                atomic_store(&l->valid_until_ns, until);
            }
        } else {
            metrics_inc(M_WD_RENEW_FAILED);
            if (wd->results[i] == LOCK_LOST) {
                wd_lost(l, "renewal_refused");
            }
            /* LOCK_ERR: unknown; the expiry check of a later round (and the
             * claim's own check before COMMIT) decides. */
        }
        assert(lock_lease__sanity(l, wd->seen[i]));
        wd__step(l, WD_EV_ROUND_END);
    }
    for (size_t i = wd->cap - m; i < wd->cap; i++) {
        assert(lock_lease__sanity(wd->round[i], wd->seen[i]));
        wd__step(wd->round[i], WD_EV_ROUND_END);
    }
    wd->in_flight = 0;
    wd->nrenew = wd->nabandon = 0;
    assert(wd__sanity(wd));
    pthread_cond_broadcast(&wd->round_done);
    pthread_mutex_unlock(&wd->mu);
}

static void *wd__main(void *arg) {
    wd_t *wd = arg;
    int64_t next = mono_ns() + wd->period_ns;

    pthread_mutex_lock(&wd->mu);
    while (!wd->stop) {
        struct timespec ts = mono_ts_from_ns(next);
        int rc = pthread_cond_timedwait(&wd->wake, &wd->mu, &ts);
        if (wd->stop) {
            break;
        }
        if (rc != ETIMEDOUT) {
            continue;
        }
        pthread_mutex_unlock(&wd->mu);
        wd__round(wd);
        /* Fixed period from the previous tick, but never a burst of
         * catch-up rounds after a long stall. */
        int64_t now = mono_ns();
        next += wd->period_ns;
        if (next < now) {
            next = now + wd->period_ns;
        }
        pthread_mutex_lock(&wd->mu);
    }
    pthread_mutex_unlock(&wd->mu);
    return NULL;
}

wd_t *wd_start(const cfg_t *cfg, uint32_t period_ms) {
    wd_t *wd = calloc(1, sizeof(*wd));
    if (wd == NULL) {
        return NULL;
    }
    wd->period_ns = (int64_t)period_ms * MONO_MS;
    wd->max_hold_ns = INT64_MAX / 2; /* no cap until wd_set_max_hold */
    wd->redis = lock_client_new(cfg);

    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&wd->mu, NULL);
    pthread_cond_init(&wd->wake, &ca);
    pthread_cond_init(&wd->round_done, NULL);
    pthread_condattr_destroy(&ca);

    int err = wd->redis == NULL
                  ? ENOMEM
                  : pthread_create(&wd->thread, NULL, wd__main, wd);
    if (err != 0) {
        lock_client_free(wd->redis);
        pthread_mutex_destroy(&wd->mu);
        pthread_cond_destroy(&wd->wake);
        pthread_cond_destroy(&wd->round_done);
        free(wd);
        errno = err;
        return NULL;
    }
    return wd;
}

void wd_stop(wd_t *wd) {
    if (wd == NULL) {
        return;
    }
    pthread_mutex_lock(&wd->mu);
    wd->stop = 1;
    pthread_cond_signal(&wd->wake);
    pthread_mutex_unlock(&wd->mu);
    pthread_join(wd->thread, NULL);

    lock_client_free(wd->redis);
    free(wd->round);
    free(wd->results);
    free(wd->seen);
    pthread_mutex_destroy(&wd->mu);
    pthread_cond_destroy(&wd->wake);
    pthread_cond_destroy(&wd->round_done);
    free(wd);
}
