/*
 * claim_int.h: the claim module's internals that its unit tests reach
 * (tests/unit/test_claim_batch.c): the combiner's queue entry, the mapping
 * of a batch's store answer to each claim's answer, and the sanity checks
 * claim.c asserts. Not an API: nothing outside claim.c and its tests
 * includes this.
 *
 * Sanity functions return 1 when the invariant holds, so that claim.c can
 * say assert(claim__x_ok(...)). The O(1) ones run on every step they
 * guard; the ones that walk a list run at a state transition (a memo
 * published), or only when built with COUPONSVC_DEBUG_SANITY.
 */
#ifndef COUPONSVC_CLAIM_INT_H
#define COUPONSVC_CLAIM_INT_H

#include <stddef.h>
#include <stdint.h>

#include "claim.h"
#include "lock.h"
#include "store.h"

#define CLAIM__NOUTCOMES (CLAIM_EXPIRED + 1)

/* One coupon (or bucket) with a claim in flight in this process: its queue
 * of parked claims. Guarded by claim.c's claim__mu.
 *
 * Invariant (claim__res_ok, O(1)): the entry exists only while led or
 * holding parked claims, and claims park only behind a leader: led is 1
 * whenever it is reachable; head, tail and n agree (n == 0 iff no head iff
 * no tail; tail ends the list; one claim is head and tail); and n is part
 * of the process's parked count. claim__res_sanity walks the queue too:
 * exactly n claims, each with res pointing here, the last one tail. */
typedef struct claim__res {
    char key[LOCK_KEY_MAX];      /* the lock's resource */
    int bucket;                  /* -1: unsharded */
    claim_waiter_t *head, *tail; /* parked claims, FIFO */
    uint32_t n;                  /* parked claims in the queue */
    int led;                     /* a leader runs or is queued */
    int64_t cycle_ns;            /* recent batch durations (EWMA) */
    struct claim__res *next;     /* hash chain */
} claim__res_t;

int claim__res_ok(const claim__res_t *r);
int claim__res_sanity(const claim__res_t *r);

/* The entry for key, made led when it is new (the caller is its leader);
 * NULL when out of memory. Takes claim__mu. Borrowed: claim.c frees it
 * when its leadership ends with nothing parked. */
claim__res_t *claim__res_lead(const char *key, int bucket);

/* Parks w behind r's leader (takes claim__mu). w is borrowed until done. */
void claim__park(claim__res_t *r, claim_waiter_t *w);

/* Takes up to max - have parked claims of r into b[have..], answering 503
 * lock_busy (through done) those whose deadline passed while parked: they
 * are left out of the batch. Returns the new count. Takes claim__mu. */
size_t claim__take(claim__res_t *r, claim_waiter_t **b, size_t have,
                   size_t max);

/* Claims parked in the whole process (admission control's count). */
uint32_t claim__parked_now(void);

/* A leader's batch b[0..n) for entry r: 1..max (COUPON_BATCH_MAX)
 * claims, none NULL, none answered yet, none still linked in a queue, each
 * of r. O(n): once per batch, as much as building it costs. */
int claim__batch_ok(claim_waiter_t *const *b, size_t n, size_t max,
                    const claim__res_t *r);

/* What claim__batch_answer did with one claim of a batch. */
enum {
    CLAIM__ANSWERED = 0, /* *o is the claim's answer */
    CLAIM__MOVED = 1,    /* its bucket was empty: it goes to another one */
};

/*
 * The answer of one claim of a batch whose store_claim returned src, from
 * the claim's own row it: when src is STORE_OK, 201 claimed now
 * (CLAIM_CLAIMED), 200 its existing claim (CLAIM_ALREADY: held before, or
 * the second of a user named twice in the batch, who gets the first's),
 * 410 past the stock (CLAIM_SOLD_OUT), or CLAIM__MOVED for a bucket found
 * empty; otherwise the whole call's answer, a holder's claim still given
 * back after a window refusal. The fence answered is the claim's own when
 * it has one, else the batch's (lease_fence). errstr (the store's text,
 * borrowed) is the detail of a failure. A fenced batch (STORE_FENCED) is
 * answered by claim__lead_settle, with both fences in the detail.
 */
int claim__batch_answer(int src, const store_item_t *it, int64_t lease_fence,
                        const char *errstr, claim_result_t *o);

/* The outcomes of one batch, counted as they are answered. */
typedef struct claim__tally {
    size_t n;                         /* claims in the batch */
    size_t written;                   /* rows the store says it claimed now */
    size_t moved;                     /* CLAIM__MOVED */
    size_t outcome[CLAIM__NOUTCOMES]; /* answered, by outcome */
} claim__tally_t;

/* Counts one claim of the batch (what claim__batch_answer returned, and
 * its answer o unless moved). */
void claim__tally_add(claim__tally_t *t, int how, const claim_result_t *o);

/* Every claim of the batch answered once or moved once, and as many
 * answered "claimed now" as the store wrote. */
int claim__tally_ok(const claim__tally_t *t);

/* One claimant of a final coupon: its user id's hash (the sort key), its
 * claim as PostgreSQL holds it (neither changes once written), and where
 * its user id is in the memo's text. */
typedef struct claim__claimant {
    uint64_t h;
    int64_t claim_id;
    int64_t fence; /* or STORE_NO_FENCE */
    uint32_t off;  /* the user id: text[off, off + len) */
    uint32_t len;
} claim__claimant_t;

/* A claimant set about to be published: c[0..n) sorted by h, each user id
 * 1..REQ_USER_ID_MAX bytes inside the text of tlen bytes, and n the
 * coupon's claimed count. O(n), once per memo. */
int claim__memo_sanity(const claim__claimant_t *c, size_t n, size_t tlen,
                       int64_t claimed);

#endif
