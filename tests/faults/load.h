/*
 * load.h: background claim load for the fault tests, with a record of every
 * answer, and the accounting that turns those records into the invariants.
 *
 * A load is a few threads that claim one coupon, each request for a new
 * user (<prefix>-<i>), spread round-robin over the services, until stopped
 * or until max requests were sent. Every answer is kept: which service,
 * status, error code and detail, Retry-After, the fence, and when the request
 * started and ended (ms on the monotonic clock, h_now_ms). The tests then
 * ask questions of the records ("was any 201 answered while the row lock was
 * held?") rather than of counters.
 *
 * After a fault, some answers are ambiguous: a transport error (the instance
 * died, or the client gave up) or a 503 from a failed COMMIT may hide a claim
 * that was written. fl_settle retries exactly those users once; a retry is
 * safe (UNIQUE (coupon_id, user_id) turns it into already_claimed) and tells
 * what really happened. Any other failure (lock_busy, lease_lost, fenced,
 * a 503 before COMMIT) promised that nothing was written: its retry must not
 * find a claim, and fl_settle fails the test if it does.
 *
 * Thread safety notes: fl_start and fl_stop from the test's thread only; the
 * records may be read after fl_stop, or while running through fl_count*
 * (which take the load's mutex).
 */
#ifndef COUPONSVC_FAULTS_LOAD_H
#define COUPONSVC_FAULTS_LOAD_H

#include <pthread.h>
#include <stdint.h>

#include "itest/harness.h"

typedef struct fl_rec {
    int svc;          /* index into the load's services */
    int user;         /* <prefix>-<user> */
    long status;      /* HTTP status, 0 = transport error */
    char error[24];   /* "error" member of the body, "" if none */
    char detail[160]; /* "detail" member, cut */
    long fence;       /* "fence" member, -1 if none */
    int retry_after;  /* the Retry-After header was present */
    double t0, t1;    /* sent / answered, h_now_ms() */
} fl_rec_t;

typedef struct fl_load fl_load_t;

/* One claim with the answer recorded into *r (status, error, detail, fence,
 * Retry-After, times). timeout_ms bounds the whole request. */
void fl_claim(const char *url, const char *coupon, const char *user,
              long timeout_ms, fl_rec_t *r);

/* Starts threads claiming coupon as <prefix>-0, -1, ... over svcs (at
 * most 16; the array is copied, the services it names are borrowed and
 * must outlive the load), each thread pausing pause_ms
 * between its requests, until fl_stop or max requests. Returns a new load
 * (free with fl_free). */
fl_load_t *fl_start(h_svc_t *const *svcs, int nsvc, const char *coupon,
                    const char *prefix, int threads, int max, int pause_ms);

/* Stops sending, waits for the requests in flight, joins. Idempotent. */
void fl_stop(fl_load_t *l);

/* Waits until the load has sent everything (max requests), then stops it. */
void fl_wait(fl_load_t *l);

void fl_free(fl_load_t *l);

/* The records so far (borrowed; stable only after fl_stop). */
const fl_rec_t *fl_recs(const fl_load_t *l, int *n);

/* Answers with this status (and error code, if err != NULL). */
long fl_count(fl_load_t *l, long status, const char *err);

/* Answers with this status answered (t1) in [from, to). */
long fl_count_between(fl_load_t *l, long status, double from, double to);

/* Answers with this status to requests sent in [from, to) and answered
 * before to: what a fault lasting [from, to) decided by itself. Prints
 * each one it counts. */
long fl_count_within(fl_load_t *l, long status, double from, double to);

/* The earliest t1 >= from of an answer with this status; -1 if none. */
double fl_first_after(fl_load_t *l, long status, double from);

/* The longest request (t1 - t0) among those sent in [from, to). */
double fl_max_latency(fl_load_t *l, double from, double to);

/* Prints a one-line summary of the answers: "201=.. 410=.. 503(lock_busy)=.."
 * with a label. */
void fl_print(fl_load_t *l, const char *label);

/* Retries every ambiguous answer once on svc (see above); fails the test if
 * a non-ambiguous failure turns out to have written a claim, or if a retry
 * is itself not a clear answer. Returns the claims that exist for the
 * retried users (201 now + 200 already_claimed). */
long fl_settle(fl_load_t *l, const h_svc_t *svc);

/* The claims the load created that the client knows of: 201s so far plus
 * what fl_settle found. */
long fl_durable(fl_load_t *l);

/* Every user answered 201 (or found by fl_settle) has exactly one row in
 * claims; fails the test otherwise. */
void fl_check_rows(fl_load_t *l, const char *coupon);

/* Sells out what is left of coupon from svcs with new users (prefix), 20
 * more than the stock left, and checks that exactly the remaining stock was
 * handed out (503s retried through fl_settle). Returns the claims made. */
long fl_drain(h_svc_t *const *svcs, int nsvc, const char *coupon,
              const char *prefix);

/* One claim in a thread of its own (a victim's claim, usually), answered
 * within timeout_ms. coupon and user are copied. */
typedef struct fl_solo {
    const h_svc_t *s;
    char coupon[64], user[64];
    long timeout_ms;
    fl_rec_t r;
    pthread_t t;
} fl_solo_t;

/* Starts the claim; s is borrowed until fl_solo_join. */
void fl_solo_start(fl_solo_t *so, const h_svc_t *s, const char *coupon,
                   const char *user, long timeout_ms);

/* Waits for the answer (in so->r) and prints it. */
void fl_solo_join(fl_solo_t *so);

/* The accounting every fault scenario ends with: stops the loads, settles
 * them on healthy[0], checks their rows, sells out the rest from healthy,
 * checks every invariant with extra201 more 201s given outside the loads,
 * and that the stock is exactly gone. */
void fl_finish(const char *coupon, long stock, fl_load_t *const *loads, int nl,
               long extra201, h_svc_t *const *healthy, int nh);

/* fl_finish for a scenario of one load, l, which it then frees (stolen). */
void fl_finish_one(fl_load_t *l, const char *coupon, long stock, long extra201,
                   h_svc_t *const *healthy, int nh);

/* Waits, at most 15 s, until the load has n 201s (the setting is up and
 * the coupon is being claimed). */
void fl_wait_201s(fl_load_t *l, long n);

/* Every answer of l sent in [from, to) that is not a 201/410 is a clear
 * 503: with Retry-After, and with one of the error codes in ok
 * (NULL-terminated; ok NULL: any code). */
void fl_failures_clear(fl_load_t *l, double from, double to,
                       const char *const *ok);

/* n claims of coupon at url (users warm-0, warm-1, ...), one after the
 * other, each of which must be answered 201: the coupon's counters and
 * fences have moved before the fault. */
void fl_warm(const char *url, const char *coupon, int n);

/* Claim rows of user / of coupon with fence fence, in PostgreSQL. */
long fl_rows_for_user(const char *user);
long fl_rows_with_fence(const char *coupon, long fence);

/* A movable wall clock for one process (tests/faults/clockshift.c): env is
 * the environment to start it with (LD_PRELOAD, CLOCKSHIFT_FILE; it points
 * into the struct, which must outlive the start), path the file that holds
 * the shift. */
typedef struct fl_clock {
    char path[400];     /* the shift, an int64_t of ms, in the test dir */
    char pre[480];      /* "LD_PRELOAD=<abs path of libclockshift.so>" */
    char file[480];     /* "CLOCKSHIFT_FILE=<path>" */
    const char *env[3]; /* {pre, file, NULL} */
} fl_clock_t;

/* Creates <test dir>/<name> with a shift of 0 and fills c. Fails the test if
 * libclockshift.so (COUPONSVC_CLOCKSHIFT, or the build's) is missing. */
void fl_clock_init(fl_clock_t *c, const char *name);

/* Moves the clock of the process started with c->env to real time + ms. */
void fl_clock_shift(const fl_clock_t *c, int64_t ms);

#endif
