/*
 * test_claim_batch.c: a batch's answers, claim by claim, and the sanity
 * checks of the combiner (claim_int.h). No network: the store's answer is
 * written here as store_claim would fill it, and each claim's HTTP answer
 * is what api_claim_respond makes of its result.
 */
#include <stdio.h>
#include <string.h>

#include "api.h"
#include "claim.h"
#include "claim_int.h"
#include "mono.h"
#include "store.h"
#include "tt.h"

/* The HTTP status and error code (or status) of w's answer. */
static unsigned answer_of(const claim_waiter_t *w, char *body, size_t len) {
    api_response_t resp;
    api_claim_respond(w, &resp);
    snprintf(body, len, "%s", resp.body != NULL ? resp.body : "");
    unsigned status = resp.status;
    api_response_free(&resp);
    return status;
}

static claim_waiter_t *waiter(claim_waiter_t *w, const char *user) {
    memset(w, 0, sizeof(*w));
    snprintf(w->coupon, sizeof(w->coupon), "tb");
    snprintf(w->user, sizeof(w->user), "%s", user);
    w->result.fence = -1;
    return w;
}

/* One batch of five on an unsharded coupon, lease fence 7: u1 claimed now;
 * u2 held a claim from an older lease; u1 named again, who gets u1's
 * claim; u4 past the stock; u5 on a bucket found empty. */
TT_TEST(claim_batch_answers_each_claim, 5) {
    const store_item_t items[] = {
        {.user_id = "u1",
         .status = STORE_OK,
         .claim_id = 11,
         .fence = 7,
         .remaining = 0},
        {.user_id = "u2",
         .status = STORE_ALREADY,
         .claim_id = 3,
         .fence = 2,
         .remaining = 0},
        {.user_id = "u1",
         .status = STORE_ALREADY,
         .claim_id = 11,
         .fence = 7,
         .remaining = 0},
        {.user_id = "u4",
         .status = STORE_SOLD_OUT,
         .remaining = 0,
         .fence = STORE_NO_FENCE},
        {.user_id = "u5",
         .status = STORE_BUCKET_EMPTY,
         .remaining = 4,
         .fence = STORE_NO_FENCE},
    };
    const size_t n = sizeof(items) / sizeof(items[0]);
    static const unsigned want_status[] = {201, 200, 200, 410, 0};
    static const int64_t want_claim[] = {11, 3, 11, 0, 0};
    static const int64_t want_fence[] = {7, 2, 7, STORE_NO_FENCE, 0};
    claim_waiter_t w[5];
    claim__tally_t t = {.n = n, .written = 1};
    for (size_t i = 0; i < n; i++) {
        waiter(&w[i], items[i].user_id);
        int how = claim__batch_answer(STORE_OK, &items[i], 7, "", &w[i].result);
        claim__tally_add(&t, how, &w[i].result);
        if (want_status[i] == 0) {
            TT_EQ_INT(how, CLAIM__MOVED);
            continue;
        }
        TT_EQ_INT(how, CLAIM__ANSWERED);
        char body[512];
        unsigned status = answer_of(&w[i], body, sizeof(body));
        TT_ASSERT_MSG(status == want_status[i], "claim %zu: %u, want %u: %s", i,
                      status, want_status[i], body);
        TT_ASSERT_MSG(w[i].result.claim_id == want_claim[i] &&
                          w[i].result.fence == want_fence[i],
                      "claim %zu: claim %lld fence %lld, want %lld %lld", i,
                      (long long)w[i].result.claim_id,
                      (long long)w[i].result.fence, (long long)want_claim[i],
                      (long long)want_fence[i]);
    }
    TT_EQ_INT(t.outcome[CLAIM_CLAIMED], 1);
    TT_EQ_INT(t.outcome[CLAIM_ALREADY], 2);
    TT_EQ_INT(t.outcome[CLAIM_SOLD_OUT], 1);
    TT_EQ_INT(t.moved, 1);
    TT_ASSERT(claim__tally_ok(&t));
}

/* A whole-call answer: the window not open yet refuses the batch, but a
 * holder still gets its claim back; a failed store is 503 for every claim,
 * with the store's words. */
TT_TEST(claim_batch_whole_call_answers, 5) {
    const store_item_t held = {.user_id = "h",
                               .status = STORE_ALREADY,
                               .claim_id = 5,
                               .fence = 1,
                               .remaining = 3};
    const store_item_t other = {.user_id = "o",
                                .status = STORE_NOT_STARTED,
                                .fence = STORE_NO_FENCE,
                                .remaining = 3};
    claim_waiter_t a, b, c;
    char body[512];
    claim__batch_answer(STORE_NOT_STARTED, &held, 9, "",
                        &waiter(&a, "h")->result);
    TT_EQ_INT(answer_of(&a, body, sizeof(body)), 200);
    TT_EQ_INT(a.result.claim_id, 5);
    claim__batch_answer(STORE_NOT_STARTED, &other, 9, "",
                        &waiter(&b, "o")->result);
    TT_EQ_INT(answer_of(&b, body, sizeof(body)), 409);
    TT_CONTAINS(body, "not_started");
    TT_EQ_INT(b.result.fence, 9);
    claim__batch_answer(STORE_ERR, &other, 9, "postgres: connect: refused",
                        &waiter(&c, "o")->result);
    TT_EQ_INT(answer_of(&c, body, sizeof(body)), 503);
    TT_CONTAINS(body, "postgres: connect: refused");
}

static int done_calls[8];

static void count_done(claim_waiter_t *w) {
    done_calls[(size_t)(w->arg)]++;
}

/* Parks claims 1..k on a fresh entry led by claim 0, every one submitted
 * now, those named in late with a deadline already past. */
static claim__res_t *queue(claim_waiter_t *w, size_t k, const char *key,
                           unsigned late) {
    memset(done_calls, 0, sizeof(done_calls));
    claim__res_t *r = claim__res_lead(key, -1);
    TT_ASSERT(r != NULL);
    int64_t now = mono_ns();
    for (size_t i = 0; i <= k; i++) {
        char user[8];
        snprintf(user, sizeof(user), "u%zu", i);
        waiter(&w[i], user);
        w[i].done = count_done;
        w[i].arg = (void *)i;
        w[i].submitted_ns = now;
        w[i].deadline_ns =
            (late & (1u << i)) ? now - MONO_MS : now + 60000 * MONO_MS;
        if (i == 0) {
            w[i].res = r; /* the leader: it runs, it is not parked */
        } else {
            claim__park(r, &w[i]);
        }
    }
    return r;
}

/* Claims 1 and 3 waited past their deadline in the queue: answered 503
 * lock_busy, once each, and left out; the batch is the leader, 2 and 4, in
 * order. */
TT_TEST(claim_batch_leaves_out_the_late, 5) {
    claim_waiter_t w[5];
    claim__res_t *r = queue(w, 4, "tb-late", (1u << 1) | (1u << 3));
    TT_EQ_INT(claim__parked_now(), 4);
    claim_waiter_t *b[8] = {&w[0]};
    size_t n = claim__take(r, b, 1, 8);
    TT_EQ_INT(n, 3);
    TT_ASSERT(b[0] == &w[0] && b[1] == &w[2] && b[2] == &w[4]);
    TT_ASSERT(claim__batch_ok(b, n, 8, r));
    TT_EQ_INT(claim__parked_now(), 0);
    static const int want_done[] = {0, 1, 0, 1, 0};
    for (size_t i = 0; i < 5; i++) {
        TT_ASSERT_MSG(done_calls[i] == want_done[i], "claim %zu answered %d", i,
                      done_calls[i]);
    }
    char body[512];
    TT_EQ_INT(answer_of(&w[1], body, sizeof(body)), 503);
    TT_CONTAINS(body, "lock_busy");
    TT_EQ_INT(w[3].result.outcome, CLAIM_BUSY);
    claim_cancel(&w[0]); /* ends the leadership: the entry is dropped */
}

/* A batch takes at most max; the rest stay parked, and are answered once
 * each when the leader is cancelled. */
TT_TEST(claim_batch_size_bounded, 5) {
    claim_waiter_t w[6];
    claim__res_t *r = queue(w, 5, "tb-max", 0);
    claim_waiter_t *b[3] = {&w[0]};
    size_t n = claim__take(r, b, 1, 3);
    TT_EQ_INT(n, 3);
    TT_ASSERT(claim__batch_ok(b, n, 3, r));
    TT_EQ_INT(claim__parked_now(), 3);
    claim_cancel(&w[0]);
    TT_EQ_INT(claim__parked_now(), 0);
    for (size_t i = 3; i <= 5; i++) {
        TT_EQ_INT(done_calls[i], 1);
        TT_EQ_INT(w[i].result.outcome, CLAIM_SHUTTING_DOWN);
    }
    TT_EQ_INT(w[0].result.outcome, CLAIM_SHUTTING_DOWN);
    TT_EQ_INT(done_calls[0] + done_calls[1] + done_calls[2], 0);
}

/* Each sanity check holds on the real thing and fails on a corrupted
 * copy of it. */
TT_TEST(claim_sanity_catches_corruption, 5) {
    claim_waiter_t w[3];
    claim__res_t *r = queue(w, 2, "tb-sane", 0);
    TT_ASSERT(claim__res_ok(r) && claim__res_sanity(r));
    claim__res_t bad = *r;
    bad.n = 1; /* two in the queue */
    TT_ASSERT(!claim__res_sanity(&bad));
    bad = *r;
    bad.led = 0; /* parked with no leader */
    TT_ASSERT(!claim__res_ok(&bad));
    bad = *r;
    bad.tail = bad.head; /* the tail is not the last */
    TT_ASSERT(!claim__res_ok(&bad));
    bad = *r;
    bad.n = 1000; /* more than the process has parked */
    TT_ASSERT(!claim__res_ok(&bad));
    claim__res_t other = *r;
    w[2].res = &other; /* a claim of another entry in r's queue */
    TT_ASSERT(claim__res_ok(r) && !claim__res_sanity(r));
    w[2].res = r;

    claim_waiter_t *b[3] = {&w[0]};
    size_t n = claim__take(r, b, 1, 3);
    TT_ASSERT(claim__batch_ok(b, n, 3, r));
    TT_ASSERT(!claim__batch_ok(b, n, 2, r)); /* past max */
    TT_ASSERT(!claim__batch_ok(b, 0, 3, r)); /* empty */
    claim_waiter_t *dup[3] = {b[0], b[1], b[1]};
    b[1]->answered = 1; /* answered already: cannot be answered again */
    TT_ASSERT(!claim__batch_ok(dup, 3, 3, r));
    b[1]->answered = 0;
    claim_waiter_t *hole[3] = {b[0], NULL, b[2]};
    TT_ASSERT(!claim__batch_ok(hole, 3, 3, r));
    claim_cancel(&w[0]);

    claim__tally_t t = {.n = 3, .written = 1, .moved = 1};
    t.outcome[CLAIM_CLAIMED] = 1;
    t.outcome[CLAIM_SOLD_OUT] = 1;
    TT_ASSERT(claim__tally_ok(&t));
    claim__tally_t tb = t;
    tb.outcome[CLAIM_ALREADY]++; /* one claim answered twice */
    TT_ASSERT(!claim__tally_ok(&tb));
    tb = t;
    tb.written = 2; /* the store wrote two, one was answered claimed */
    TT_ASSERT(!claim__tally_ok(&tb));

    const claim__claimant_t m[3] = {{.h = 1, .off = 0, .len = 2},
                                    {.h = 5, .off = 2, .len = 2},
                                    {.h = 9, .off = 4, .len = 2}};
    TT_ASSERT(claim__memo_sanity(m, 3, 6, 3));
    TT_ASSERT(!claim__memo_sanity(m, 3, 6, 4)); /* claimed says 4 */
    TT_ASSERT(!claim__memo_sanity(m, 3, 5, 3)); /* a user id past the text */
    claim__claimant_t mb[3];
    memcpy(mb, m, sizeof(mb));
    mb[1].h = 10; /* out of order */
    TT_ASSERT(!claim__memo_sanity(mb, 3, 6, 3));
    memcpy(mb, m, sizeof(mb));
    mb[2].len = 0;
    TT_ASSERT(!claim__memo_sanity(mb, 3, 6, 3));
}
