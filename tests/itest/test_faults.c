/*
 * test_faults.c: the failure table, injected for real. Each scenario runs
 * under concurrent load (threads claiming across 2-3 instances), injects one
 * fault (kill -9, SIGSTOP, Redis killed / stalled / partitioned / clock
 * jumped, PostgreSQL restarted, an outside row lock), checks what the
 * clients saw while it lasted, and ends with the same accounting:
 *
 *   1. settle: every ambiguous answer (transport error, failed COMMIT) is
 *      retried once; every other failure promised "nothing written" and its
 *      retry must not find a claim (tests/faults/load.h);
 *   2. rows: the users the clients were told they got a coupon are exactly
 *      the users with a row (every 201 durable, no hidden writes);
 *   3. drain: the rest of the stock is sold from healthy instances, exactly;
 *   4. h_check_invariants: claimed <= stock, rows = claimed, one claim per
 *      user, fences strictly rising in commit order.
 *
 * Timings are chosen so that the fault is much longer than the TTL (1 s in
 * most scenarios) and every wait is bounded; assertions on time carry slack
 * for a loaded 2-core machine. `build/tests/fault-tests <name>` runs one.
 *
 * Four scenarios are also the negative controls of `make test-negative`
 * (tests/faults/negative.sh): stale_holder_fenced_after_early_expiry fails
 * without the fence predicate, stale_read_last_coupon without
 * `claimed < total`, redis_lost_duplicate_fence_refused without the strict
 * first-write rule (last_fence < fence), and sigstop_bucket_holder_past_ttl
 * without the fence (on its 409: the commit gate keeps the data right).
 */
#include <fcntl.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "faults/load.h"
#include "faults/proxy.h"
#include "harness.h"
#include "tt.h"

/* ------------------------------------------------------------- helpers --- */

/* Rows in claims written by this instance / for this user. */
static long rows_by_instance(const char *name) {
    char sql[160];
    snprintf(sql, sizeof(sql),
             "SELECT count(*) FROM claims WHERE instance = '%s'", name);
    return h_pg_int(sql);
}

/* Sessions of the test database that sit inside a transaction. */
static long idle_in_tx(void) {
    return h_pg_int("SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database()"
                    "   AND state LIKE 'idle in transaction%'");
}

/* Polls until idle_in_tx() == want; returns the time it took (ms), or -1. */
static double wait_idle_in_tx(long want, int timeout_ms) {
    double start = h_now_ms();
    while (h_now_ms() - start < timeout_ms) {
        if (idle_in_tx() == want) {
            return h_now_ms() - start;
        }
        h_sleep_ms(10);
    }
    return -1;
}

/* Statements the server cancelled by statement_timeout, over these
 * instances (counted by SQLSTATE, not by the message's text). */
static long statement_timeouts(h_svc_t *const *svcs, int n) {
    long sum = 0;
    for (int i = 0; i < n; i++) {
        sum += (long)h_metric(
            svcs[i], "couponsvc_postgres_timeouts_total{kind=\"statement\"}");
    }
    return sum;
}

/* Waits until s holds a lease (its victim claim is in the critical
 * section). */
static void wait_lease(const h_svc_t *s) {
    TT_CMP_INT(h_wait_metric(s, "couponsvc_leases_held", 1, 10000), >=, 1);
}

static long pttl_of(const char *coupon) {
    if (h_etcd_on()) {
        /* The owner key's process lease: its remaining TTL. */
        char sub[96];
        snprintf(sub, sizeof(sub), "lock/%s/", coupon);
        return h_etcd_owner_ttl_ms(sub);
    }
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "PTTL coupon:{%s}:lock", coupon);
    return h_redis_cmd(cmd);
}

/* Redis with a movable wall clock (tests/faults/clockshift.c). */
static fl_clock_t redis_clock;

static void redis_with_clockshift(void) {
    fl_clock_init(&redis_clock, "clockshift");
    h_redis_restart_with(NULL, redis_clock.env);
}

/* Moves the test Redis's wall clock to real time + ms. */
static void redis_clock_shift(int64_t ms) {
    fl_clock_shift(&redis_clock, ms);
}

#define TTL_ENV "COUPON_LOCK_TTL_MS=1000"

/* The load: each thread pauses this long between claims (a few hundred
 * claims a second in all), and the stock is large enough that it does not
 * sell out before the fault is over; the drain sells the rest. */
#define LOAD_PAUSE_MS 20
#define STOCK 2000

/* ------------------------------------------------------ kill -9 holder --- */

/*
 * The holder dies (SIGKILL) inside its critical section: at after_acquire
 * (lock held, no transaction yet), at before_commit (transaction open,
 * UPDATE done, the coupon's row locked) or at after_commit (committed, not
 * yet released nor answered). Nobody releases its lock: the others must
 * wait for the TTL, no longer, and then go on. An open transaction must
 * vanish: the kernel closes the dead process's sockets, the backend reads
 * EOF and rolls back, releasing the row lock. A committed claim must stay,
 * and a retry by the client (who saw only a dropped connection) must find
 * it: 200 already_claimed.
 */
static void kill9_holder(const char *point) {
    h_begin();
    char fault[64];
    snprintf(fault, sizeof(fault), "COUPON_FAULT=%s:5000", point);
    const char *env_v[] = {TTL_ENV, fault, "COUPON_LOCK_WAIT_MS=10000", NULL};
    const char *env[] = {TTL_ENV, "COUPON_LOCK_WAIT_MS=5000", NULL};
    h_svc_t *a = h_svc_start("k9-a", env), *b = h_svc_start("k9-b", env);
    h_svc_t *v = h_svc_start("k9-victim", env_v);
    h_svc_t *ok[] = {a, b};
    h_coupon(a, "k9", STOCK);

    fl_load_t *l = fl_start(ok, 2, "k9", "load", 4, 20000, LOAD_PAUSE_MS);
    fl_wait_201s(l, 20);
    fl_solo_t so;
    fl_solo_start(&so, v, "k9", "victim", 20000);
    wait_lease(v);
    double t_seen = h_now_ms();
    int in_tx = strcmp(point, "before_commit") == 0;
    int committed = strcmp(point, "after_commit") == 0;
    /* at before_commit its transaction is open: the only one, as it holds
     * the lock; at after_acquire there is none yet. */
    TT_CMP_INT(wait_idle_in_tx(in_tx ? 1 : 0, 3000), >=, 0);

    h_sleep_ms(300);
    double t_kill = h_now_ms();
    kill(v->pid, SIGKILL);
    waitpid(v->pid, NULL, 0);
    long pttl = pttl_of("k9");
    printf("    killed %s at %s; its lock had %ld ms left\n", v->name, point,
           pttl);
    TT_CMP_INT(pttl, >, 0);
    TT_CMP_INT(pttl, <=, 1000);
    /* The backend noticed the dead client and rolled back at once. */
    double gone = wait_idle_in_tx(0, 3000);
    TT_CMP_INT(gone, >=, 0);
    printf("    open transactions gone %.0f ms after the kill\n", gone);

    h_sleep_ms(2500);
    fl_stop(l);
    fl_solo_join(&so);
    fl_print(l, "load");

    TT_EQ_INT(so.r.status, 0); /* the client saw the process die */
    /* Nobody wrote while the victim held the lock... */
    TT_EQ_INT(fl_count_within(l, 201, t_seen, t_kill + pttl - 100), 0);
    /* ...and the others went on once its TTL ran out, not before. */
    double first = fl_first_after(l, 201, t_kill);
    TT_CMP_INT(first, >, 0);
    printf("    first 201 after the kill: +%.0f ms (TTL left %ld ms)\n",
           first - t_kill, pttl);
    TT_CMP_INT(first - t_kill, >=, pttl - 100);
    TT_CMP_INT(first - t_kill, <=, pttl + 2000);
    long extra = 0;
    if (!committed) {
        /* No partial claim: nothing of the victim's, in either table. */
        TT_EQ_INT(fl_rows_for_user("victim"), 0);
        TT_EQ_INT(rows_by_instance("k9-victim"), 0);
    } else {
        /* Committed, then killed before it could answer or release: the
         * claim stands, the client cannot know, and a retry tells it. */
        TT_EQ_INT(fl_rows_for_user("victim"), 1);
        fl_rec_t again;
        fl_claim(a->url, "k9", "victim", 10000, &again);
        TT_EQ_INT(again.status, 200);
        extra = 1;
    }

    fl_finish_one(l, "k9", STOCK, extra, ok, 2);
}

TT_TEST(kill9_holder_after_acquire, 60) {
    kill9_holder("after_acquire");
}

TT_TEST(kill9_holder_before_commit, 60) {
    kill9_holder("before_commit");
}

TT_TEST(kill9_holder_after_commit, 60) {
    kill9_holder("after_commit");
}

/* ------------------------------------------------------ SIGSTOP holder --- */

/*
 * The holder is frozen (SIGSTOP: a GC pause, a VM migration) right after
 * acquiring, for 2.5x its TTL. Its lease expires in Redis, the others take
 * the lock and write with newer fences. When it thaws, it goes on with its
 * claim as if nothing happened: its write carries the old fence and
 * PostgreSQL refuses it (409 fenced). Nothing of it is written.
 */
TT_TEST(sigstop_holder_after_acquire, 60) {
    h_begin();
    const char *env_v[] = {TTL_ENV, "COUPON_FAULT=after_acquire:500",
                           "COUPON_LOCK_WAIT_MS=10000", NULL};
    const char *env[] = {TTL_ENV, "COUPON_LOCK_WAIT_MS=5000", NULL};
    h_svc_t *a = h_svc_start("st-a", env), *b = h_svc_start("st-b", env);
    h_svc_t *v = h_svc_start("st-victim", env_v);
    h_svc_t *ok[] = {a, b};
    h_coupon(a, "st", STOCK);

    fl_load_t *l = fl_start(ok, 2, "st", "load", 4, 20000, LOAD_PAUSE_MS);
    fl_wait_201s(l, 20);
    fl_solo_t so;
    fl_solo_start(&so, v, "st", "sleeper", 20000);
    wait_lease(v);
    kill(v->pid, SIGSTOP);
    double t_stop = h_now_ms();
    h_sleep_ms(2500);
    double t_cont = h_now_ms(); /* before: the window closes as we send */
    kill(v->pid, SIGCONT);
    fl_solo_join(&so);
    h_sleep_ms(1000);
    fl_stop(l);
    fl_print(l, "load");

    /* The lease expired in Redis and the others went on meanwhile. */
    TT_CMP_INT(fl_count_between(l, 201, t_stop + 900, t_cont), >=, 1);
    TT_EQ_INT(so.r.status, 409);
    TT_EQ_STR(so.r.error, "fenced");
    TT_EQ_INT(fl_rows_for_user("sleeper"), 0);
    TT_EQ_INT(rows_by_instance("st-victim"), 0);
    TT_CMP_INT(h_metric(v, "couponsvc_fenced_refusals_total"), >=, 1);

    fl_finish_one(l, "st", STOCK, 0, ok, 2);
}

/*
 * A bucket's holder frozen past its TTL: the coupon is sharded (4 buckets of
 * STOCK / 4), and the victim is SIGSTOPped right after acquiring the lock of
 * one bucket, B (resource bk#B), before its transaction. The watchdog is
 * frozen with it, so the lock of B expires in Redis after the TTL; the load
 * (two other instances) takes B's lock, among the others', and writes B
 * with newer fences of B's own counter. When the victim thaws its write
 * carries the old fence, and B's row refuses it: 409 fenced, nothing
 * written. It is the fence at the UPDATE that this scenario exercises, not
 * the commit gate: the refusal comes before COMMIT. So that nothing else
 * ends the claim first, the victim's max hold and transaction deadline are
 * far above the freeze.
 *
 * The victim claims once before the freeze, so it knows the coupon is
 * sharded (a first claim tries it unsharded, and learns). The load starts
 * only once the victim is frozen, so the one bucket lock in Redis then is
 * the victim's, which tells the test B and the victim's fence.
 *
 * The commit gate is the second line here: without the fence predicate
 * (make test-negative's NO_FENCE build) the stale write passes the UPDATE,
 * and then the gate finds the lease's validity, by the victim's own clock,
 * long gone: rolled back, the claim re-queued for a new lease, and claimed
 * with a fresh fence of B. The data stays right (the invariant check, run
 * first, passes) and the claim is answered 201, not 409: the control fails
 * on the status, which shows that the 409 here is the fence's.
 */
TT_TEST(sigstop_bucket_holder_past_ttl, 90) {
    H_REDIS_ONLY(); /* it reads each bucket's Redis keys */
    enum { BUCKETS = 4 };
    h_begin();
    const char *env_v[] = {TTL_ENV,
                           "COUPON_FAULT=after_acquire:500",
                           "COUPON_LOCK_WAIT_MS=10000",
                           "COUPON_LOCK_MAX_HOLD_MS=60000",
                           "COUPON_PG_TX_DEADLINE_MS=60000",
                           NULL};
    const char *env[] = {TTL_ENV, "COUPON_LOCK_WAIT_MS=5000", NULL};
    h_svc_t *a = h_svc_start("sbk-a", env), *b = h_svc_start("sbk-b", env);
    h_svc_t *v = h_svc_start("sbk-victim", env_v);
    h_svc_t *ok[] = {a, b};
    char body[96], url[160];
    snprintf(body, sizeof(body), "{\"id\":\"bk\",\"total\":%d,\"buckets\":%d}",
             STOCK, BUCKETS);
    snprintf(url, sizeof(url), "%s/coupons", a->url);
    TT_EQ_INT(h_http("POST", url, "application/json", "Bearer test-admin-token",
                     body, strlen(body), NULL),
              201);
    TT_EQ_INT(h_claim(v, "bk", "warm", NULL), 201); /* learns the shape */

    fl_solo_t so;
    fl_solo_start(&so, v, "bk", "sleeper", 20000);
    wait_lease(v);
    kill(v->pid, SIGSTOP);
    double t_stop = h_now_ms();
    int bucket = -1, held = 0;
    for (int i = 0; i < BUCKETS; i++) {
        if (h_redis_cmd("EXISTS coupon:{bk#%d}:lock", i) == 1) {
            bucket = i;
            held++;
        }
    }
    TT_EQ_INT(held, 1);
    long long vfence = h_redis_cmd("INCRBY coupon:{bk#%d}:fence 0", bucket);
    printf("    %s frozen holding bucket %d with fence %lld\n", v->name, bucket,
           vfence);
    TT_CMP_INT(vfence, >=, 1);

    fl_load_t *l = fl_start(ok, 2, "bk", "load", 4, 20000, LOAD_PAUSE_MS);
    h_sleep_ms(2500);
    /* Another instance took B's lock and wrote B, newer, meanwhile. */
    char sql[200];
    snprintf(sql, sizeof(sql),
             "SELECT count(*) FROM claims WHERE coupon_id = 'bk'"
             " AND bucket = %d AND fence > %lld",
             bucket, vfence);
    long newer = h_pg_int(sql);
    TT_CMP_INT(fl_count_between(l, 201, t_stop + 900, h_now_ms()), >=, 1);
    kill(v->pid, SIGCONT);
    fl_solo_join(&so);
    h_sleep_ms(500);
    fl_stop(l);
    fl_print(l, "load");
    printf("    bucket %d: %ld claims above fence %lld while frozen\n", bucket,
           newer, vfence);
    TT_CMP_INT(newer, >=, 1);

    /* The data first: this is what the negative control must trip. */
    fl_settle(l, a);
    fl_check_rows(l, "bk");
    long n = fl_durable(l) + 1 + (so.r.status == 201);
    h_check_invariants("bk", STOCK, n);
    TT_EQ_INT(so.r.status, 409);
    TT_EQ_STR(so.r.error, "fenced");
    TT_EQ_INT(so.r.fence, vfence);
    TT_EQ_INT(fl_rows_for_user("sleeper"), 0);
    TT_CMP_INT(h_metric(v, "couponsvc_fenced_refusals_total"), >=, 1);

    n += fl_drain(ok, 2, "bk", "drain");
    h_check_invariants("bk", STOCK, n);
    TT_EQ_INT(h_pg_int("SELECT count(*) FROM coupon_buckets"
                       " WHERE coupon_id = 'bk' AND claimed = total"),
              BUCKETS);
    fl_free(l);
}

/*
 * Frozen BEFORE COMMIT: the holder's transaction has done its UPDATE, so it
 * holds the coupon's row lock in PostgreSQL, and SIGSTOP freezes its client
 * side, not the backend: the session sits "idle in transaction", row lock
 * and all. What happens, as this test observes it:
 *
 *   - its watchdog is frozen too, so the lease expires in Redis after the
 *     TTL and a new holder acquires the Redis lock (the lock is advisory);
 *   - the new holder's check (a plain SELECT) does not wait, but its UPDATE
 *     waits for the row lock, until statement_timeout cancels it: 503
 *     unavailable, rolled back, lock released; the next holder does the
 *     same. So while the frozen process holds the row lock, NOBODY commits a
 *     claim: no 201 at all, only bounded 503s (lock wait + statement
 *     timeout). Fence and Redis lock do not matter here: the row lock orders
 *     the writers, and the frozen one is first in line.
 *   - when it thaws, its commit gate finds the lease lost (the monotonic
 *     clock ran on while it was stopped) and it rolls back: 503 lease_lost,
 *     nothing written. Its transaction deadline has passed by then too, so
 *     it drops the connection instead of waiting for a ROLLBACK; the server
 *     rolls back when it sees the connection close. The row lock goes with
 *     the rollback and the others commit again at once.
 *   - if it stays frozen longer than idle_in_transaction_session_timeout
 *     (COUPON_PG_IDLE_TX_TIMEOUT_MS, default 2 x statement timeout + 1 s),
 *     PostgreSQL ends the session first, rolling it back and freeing the
 *     row; the others resume while it is still frozen (next test). When it
 *     thaws, the gate again says lost: 503 lease_lost.
 *
 * So the outcome is safe either way; the cost is an outage of the coupon for
 * as long as the freeze, bounded by the idle-in-transaction timeout. That
 * timeout is the knob: it must be well above a normal critical section and
 * as low as the outage one is willing to accept.
 */
static void sigstop_before_commit(int idle_timeout_ms, int stop_ms) {
    h_begin();
    char idle[64];
    snprintf(idle, sizeof(idle), "COUPON_PG_IDLE_TX_TIMEOUT_MS=%d",
             idle_timeout_ms);
    /* The victim claims alone (COUPON_BATCH_MAX=1): a lease lost before
     * COMMIT is then answered 503 lease_lost. Combined, the claim would go
     * back to its queue for a new lease instead: that path is
     * comb_batch_lease_lost_requeued. */
    const char *env_v[] = {TTL_ENV,
                           "COUPON_FAULT=before_commit:400",
                           "COUPON_LOCK_WAIT_MS=10000",
                           idle,
                           "COUPON_BATCH_MAX=1",
                           NULL};
    const char *env[] = {TTL_ENV, "COUPON_LOCK_WAIT_MS=3000",
                         "COUPON_PG_STATEMENT_TIMEOUT_MS=1000", NULL};
    h_svc_t *a = h_svc_start("sb-a", env), *b = h_svc_start("sb-b", env);
    h_svc_t *v = h_svc_start("sb-victim", env_v);
    h_svc_t *ok[] = {a, b};
    h_coupon(a, "sb", STOCK);

    fl_load_t *l = fl_start(ok, 2, "sb", "load", 4, 20000, LOAD_PAUSE_MS);
    fl_wait_201s(l, 20);
    fl_solo_t so;
    fl_solo_start(&so, v, "sb", "frozen", 20000);
    wait_lease(v);
    /* In its before_commit pause: the only open transaction. */
    TT_CMP_INT(wait_idle_in_tx(1, 3000), >=, 0);
    kill(v->pid, SIGSTOP);
    double t_stop = h_now_ms();

    double t_idle_killed = -1;
    while (h_now_ms() - t_stop < stop_ms) {
        if (t_idle_killed < 0 && idle_in_tx() == 0) {
            t_idle_killed = h_now_ms();
        }
        h_sleep_ms(20);
    }
    double t_cont = h_now_ms(); /* before: the window closes as we send */
    kill(v->pid, SIGCONT);
    fl_solo_join(&so);
    h_sleep_ms(2000);
    fl_stop(l);
    fl_print(l, "load");

    TT_EQ_INT(so.r.status, 503);
    TT_EQ_STR(so.r.error, "lease_lost");
    TT_EQ_INT(fl_rows_for_user("frozen"), 0);
    TT_EQ_INT(rows_by_instance("sb-victim"), 0);
    long stmt = statement_timeouts(ok, 2);
    printf("    UPDATEs cancelled by statement_timeout: %ld\n", stmt);
    const char *clear[] = {"unavailable", "lock_busy", "lease_lost", NULL};
    fl_failures_clear(l, t_stop, t_cont, clear);
    /* Bounded: lock wait (3 s) + statement timeout (1 s) + slack. */
    TT_CMP_INT(fl_max_latency(l, t_stop, t_cont), <, 6500);

    if (idle_timeout_ms > stop_ms) {
        /* Row lock held the whole freeze: no commit by anyone. A new
         * holder did get the Redis lock, and its UPDATE waited on the row
         * lock until statement_timeout. */
        TT_CMP_INT(stmt, >=, 1);
        TT_CMP_INT(t_idle_killed, <, 0);
        TT_EQ_INT(fl_count_within(l, 201, t_stop, t_cont), 0);
        double first = fl_first_after(l, 201, t_cont);
        TT_CMP_INT(first, >, 0);
        printf("    first 201 after SIGCONT: +%.0f ms\n", first - t_cont);
        TT_CMP_INT(first - t_cont, <, 2500);
    } else {
        /* PostgreSQL ended the frozen session; the others resumed while
         * it was still stopped. */
        TT_CMP_INT(t_idle_killed, >, 0);
        printf("    idle-in-transaction timeout ended the session at "
               "+%.0f ms\n",
               t_idle_killed - t_stop);
        TT_CMP_INT(t_idle_killed - t_stop, >=, idle_timeout_ms - 600);
        TT_EQ_INT(
            fl_count_within(l, 201, t_stop, t_stop + idle_timeout_ms - 600), 0);
        TT_CMP_INT(fl_count_between(l, 201, t_idle_killed, t_cont), >=, 1);
    }
    /* (Not leases_lost_total: after SIGCONT the gate may find the lease
     * run out by the clock before the watchdog's next round marks it.) */
    TT_CMP_INT(h_metric(v, "couponsvc_claims_total{outcome=\"lease_lost\"}"),
               >=, 1);

    fl_finish_one(l, "sb", STOCK, 0, ok, 2);
}

TT_TEST(sigstop_holder_before_commit_row_lock, 60) {
    sigstop_before_commit(60000, 4000);
}

TT_TEST(sigstop_holder_before_commit_idle_tx_timeout, 60) {
    sigstop_before_commit(1500, 4000);
}

/* ------------------------------------------------------------- Redis --- */

/*
 * Redis killed (SIGKILL, no persistence) and restarted empty under load: the
 * lock keys and the fence counter are gone. Meanwhile: quick, clear 503s.
 * After: the first fenced write finds the counter below last_fence, raises
 * it, retries; the service recovers by itself.
 */
TT_TEST(redis_killed_restarted_empty, 60) {
    H_REDIS_ONLY();
    h_begin();
    const char *env[] = {TTL_ENV, "COUPON_LOCK_WAIT_MS=3000", NULL};
    h_svc_t *s[] = {h_svc_start("rk-1", env), h_svc_start("rk-2", env),
                    h_svc_start("rk-3", env)};
    h_coupon(s[0], "rk", STOCK);
    fl_load_t *l = fl_start(s, 3, "rk", "load", 6, 20000, LOAD_PAUSE_MS);
    fl_wait_201s(l, 30);

    long f_before = h_redis_cmd("GET coupon:{rk}:fence");
    h_redis_stop();
    double t_down = h_now_ms();
    h_sleep_ms(1000);
    double t_restart = h_now_ms();
    h_redis_start();
    double t_up = h_now_ms();
    h_sleep_ms(2500);
    fl_stop(l);
    fl_print(l, "load");

    const char *clear[] = {"unavailable", NULL};
    fl_failures_clear(l, t_down + 50, t_up - 50, clear);
    TT_EQ_INT(fl_count_within(l, 201, t_down, t_restart), 0);
    TT_CMP_INT(fl_max_latency(l, t_down + 50, t_up - 50), <, 2000);
    double first = fl_first_after(l, 201, t_up);
    TT_CMP_INT(first, >, 0);
    printf("    fence counter %ld before; first 201 +%.0f ms after the "
           "restart\n",
           f_before, first - t_up);
    TT_CMP_INT(first - t_up, <, 2000);
    double rec = 0;
    for (int i = 0; i < 3; i++) {
        rec += h_metric(s[i], "couponsvc_fence_counter_recoveries_total");
    }
    TT_CMP_INT(rec, >=, 1);
    TT_CMP_INT(h_redis_cmd("GET coupon:{rk}:fence"), >=,
               h_pg_int("SELECT last_fence FROM coupons WHERE id = 'rk'"));

    fl_finish_one(l, "rk", STOCK, 0, s, 3);
}

/*
 * Redis stalls (DEBUG SLEEP: it answers nobody) for 3x the TTL while a
 * holder sits before its commit. The holder's watchdog cannot renew, its
 * lease runs out by its own clock, and its gate rolls back: 503 lease_lost.
 * Everyone else gets quick 503s (the Redis command timeout), and claims
 * resume after the stall.
 */
TT_TEST(redis_stalled_past_ttl, 60) {
    H_REDIS_ONLY();
    h_begin();
    const char *dbg[] = {"--enable-debug-command", "local", NULL};
    h_redis_restart_with(dbg, NULL);
    /* The victim claims alone (COUPON_BATCH_MAX=1): a lease lost before
     * COMMIT is then answered 503 lease_lost. Combined, the claim would go
     * back to its queue for a new lease instead: that path is
     * comb_batch_lease_lost_requeued. */
    const char *env_v[] = {TTL_ENV, "COUPON_FAULT=before_commit:1500",
                           "COUPON_LOCK_WAIT_MS=10000", "COUPON_BATCH_MAX=1",
                           NULL};
    const char *env[] = {TTL_ENV, "COUPON_LOCK_WAIT_MS=3000", NULL};
    h_svc_t *a = h_svc_start("rs-a", env), *b = h_svc_start("rs-b", env);
    h_svc_t *v = h_svc_start("rs-victim", env_v);
    h_svc_t *ok[] = {a, b};
    h_coupon(a, "rs", STOCK);

    fl_load_t *l = fl_start(ok, 2, "rs", "load", 4, 20000, LOAD_PAUSE_MS);
    fl_wait_201s(l, 20);
    fl_solo_t so;
    fl_solo_start(&so, v, "rs", "stalled", 20000);
    wait_lease(v);
    TT_CMP_INT(wait_idle_in_tx(1, 3000), >=, 0);
    pid_t cli = h_redis_stall_bg(3000);
    double t_stall = h_now_ms();
    int st = 0;
    waitpid(cli, &st, 0);
    double t_end = h_now_ms();
    TT_ASSERT_MSG(WIFEXITED(st) && WEXITSTATUS(st) == 0 &&
                      t_end - t_stall >= 2900,
                  "DEBUG SLEEP did not stall Redis (%.0f ms)", t_end - t_stall);
    fl_solo_join(&so);
    h_sleep_ms(2500);
    fl_stop(l);
    fl_print(l, "load");

    TT_EQ_INT(so.r.status, 503);
    TT_EQ_STR(so.r.error, "lease_lost");
    TT_EQ_INT(fl_rows_for_user("stalled"), 0);
    TT_EQ_INT(rows_by_instance("rs-victim"), 0);
    TT_CMP_INT(h_metric(v, "couponsvc_leases_lost_total"), >=, 1);
    TT_EQ_INT(fl_count_within(l, 201, t_stall, t_end), 0);
    const char *clear[] = {"unavailable", "lock_busy", NULL};
    fl_failures_clear(l, t_stall + 100, t_end - 100, clear);
    /* The command timeout (250 ms at this TTL), not the stall, bounds
     * them. */
    TT_CMP_INT(fl_max_latency(l, t_stall + 100, t_end - 1000), <, 1500);
    double first = fl_first_after(l, 201, t_end);
    TT_CMP_INT(first, >, 0);
    printf("    first 201 +%.0f ms after the stall\n", first - t_end);
    /* Acquires sent during the stall ran when it ended and left orphan
     * locks (their senders had given up); those expire within a TTL. */
    TT_CMP_INT(first - t_end, <, 1000 + 1500);

    fl_finish_one(l, "rs", STOCK, 0, ok, 2);
}

/*
 * Redis unreachable from ONE instance only: the victim reaches Redis through
 * a proxy that black-holes (bytes stop, nothing is closed) while the victim
 * sits before its commit. Its watchdog's renewals time out, its lease runs
 * out, its commit is aborted (503 lease_lost) and nothing of it is written;
 * the other instances, which still see Redis, take over after the TTL.
 */
TT_TEST(redis_partitioned_from_one_instance, 60) {
    H_REDIS_ONLY();
    h_begin();
    fp_t *px = fp_start(h_redis_port());
    char via[64];
    snprintf(via, sizeof(via), "COUPON_REDIS_ADDRS=127.0.0.1:%d", fp_port(px));
    /* The victim claims alone (COUPON_BATCH_MAX=1): a lease lost before
     * COMMIT is then answered 503 lease_lost. Combined, the claim would go
     * back to its queue for a new lease instead: that path is
     * comb_batch_lease_lost_requeued. */
    const char *env_v[] = {TTL_ENV,
                           "COUPON_FAULT=before_commit:1500",
                           "COUPON_LOCK_WAIT_MS=10000",
                           via,
                           "COUPON_BATCH_MAX=1",
                           NULL};
    const char *env[] = {TTL_ENV, "COUPON_LOCK_WAIT_MS=3000", NULL};
    h_svc_t *a = h_svc_start("rp-a", env), *b = h_svc_start("rp-b", env);
    h_svc_t *v = h_svc_start("rp-victim", env_v);
    h_svc_t *ok[] = {a, b};
    h_coupon(a, "rp", STOCK);

    fl_load_t *l = fl_start(ok, 2, "rp", "load", 4, 20000, LOAD_PAUSE_MS);
    fl_wait_201s(l, 20);
    fl_solo_t so;
    fl_solo_start(&so, v, "rp", "cut-off", 20000);
    wait_lease(v);
    TT_CMP_INT(wait_idle_in_tx(1, 3000), >=, 0);
    fp_blackhole(px, 1);
    double t_cut = h_now_ms();
    fl_solo_join(&so);

    /* While cut off, the victim answers quickly and clearly. */
    for (int i = 0; i < 3; i++) {
        char user[32];
        snprintf(user, sizeof(user), "while-cut-%d", i);
        fl_rec_t r;
        fl_claim(v->url, "rp", user, 10000, &r);
        TT_EQ_INT(r.status, 503);
        TT_EQ_STR(r.error, "unavailable");
        TT_ASSERT(r.retry_after);
        TT_CMP_INT(r.t1 - r.t0, <, 2000);
    }
    h_sleep_ms(1000);
    double t_heal = h_now_ms();
    fp_blackhole(px, 0);

    TT_EQ_INT(so.r.status, 503);
    TT_EQ_STR(so.r.error, "lease_lost");
    TT_EQ_INT(rows_by_instance("rp-victim"), 0);
    TT_CMP_INT(h_metric(v, "couponsvc_leases_lost_total"), >=, 1);
    TT_CMP_INT(h_metric(v, "couponsvc_watchdog_renewals_total{result="
                           "\"failed\"}"),
               >=, 1);
    /* The rest of the fleet went on during the partition. */
    TT_CMP_INT(fl_count_between(l, 201, t_cut + 1000, t_heal), >=, 1);

    /* Healed: the victim claims again (through fresh connections). */
    long st = 0;
    fl_rec_t r;
    for (int i = 0; i < 10 && st != 201; i++) {
        char user[32];
        snprintf(user, sizeof(user), "healed-%d", i);
        fl_claim(v->url, "rp", user, 10000, &r);
        st = r.status;
        if (st != 201) {
            h_sleep_ms(300);
        }
    }
    TT_EQ_INT(st, 201);
    TT_EQ_INT(rows_by_instance("rp-victim"), 1);
    h_sleep_ms(500);
    fl_stop(l);
    fl_print(l, "load");

    fl_finish_one(l, "rp", STOCK, 1, ok, 2);
    fp_stop(px);
}

/*
 * Redis's clock jumps 60 s forward (an NTP step, a VM restored) while a
 * holder pauses after acquiring: Redis expires the lock at once, though the
 * holder's own clock says it has most of its TTL left. Others take the lock
 * and write; the early-expired holder is then refused by the fence (409) or,
 * if its watchdog noticed first and nobody wrote in between, by its gate
 * (503 lease_lost). Either way nothing of it is written.
 */
TT_TEST(redis_clock_jumps_forward, 60) {
    H_REDIS_ONLY();
    h_begin();
    redis_with_clockshift();
    const char *env_v[] = {"COUPON_LOCK_TTL_MS=2000",
                           "COUPON_FAULT=after_acquire:1500",
                           "COUPON_LOCK_WAIT_MS=10000", NULL};
    const char *env[] = {"COUPON_LOCK_TTL_MS=2000", "COUPON_LOCK_WAIT_MS=5000",
                         NULL};
    h_svc_t *a = h_svc_start("cj-a", env), *b = h_svc_start("cj-b", env);
    h_svc_t *v = h_svc_start("cj-victim", env_v);
    h_svc_t *ok[] = {a, b};
    h_coupon(a, "cj", STOCK);

    fl_load_t *l = fl_start(ok, 2, "cj", "load", 4, 20000, LOAD_PAUSE_MS);
    fl_wait_201s(l, 20);
    fl_solo_t so;
    fl_solo_start(&so, v, "cj", "early", 20000);
    wait_lease(v);
    TT_CMP_INT(pttl_of("cj"), >, 1000);
    redis_clock_shift(60000);
    double t_jump = h_now_ms();
    TT_EQ_INT(h_redis_cmd("EXISTS coupon:{cj}:lock") == 0 ||
                  pttl_of("cj") > 1000,
              1); /* gone, or already somebody else's new lock */
    fl_solo_join(&so);
    h_sleep_ms(1000);
    fl_stop(l);
    fl_print(l, "load");

    /* The lock really ended early: others wrote while the victim was
     * still in its pause, long before its TTL would have run out. */
    TT_CMP_INT(fl_count_between(l, 201, t_jump, t_jump + 1300), >=, 1);
    TT_ASSERT_MSG(
        (so.r.status == 409 && strcmp(so.r.error, "fenced") == 0) ||
            (so.r.status == 503 && strcmp(so.r.error, "lease_lost") == 0),
        "early-expired holder got %ld %s", so.r.status, so.r.error);
    TT_EQ_INT(fl_rows_for_user("early"), 0);
    TT_EQ_INT(rows_by_instance("cj-victim"), 0);

    fl_finish_one(l, "cj", STOCK, 0, ok, 2);
}

/* ------------------------------------------------- stale holder / read --- */

/*
 * A holder whose lease ended in Redis while it could not hear about it: its
 * Redis path is black-holed right after it acquires (so its watchdog learns
 * nothing: renewals time out, "unknown", and by its own clock the lease is
 * valid for 5 s more) and Redis's clock jumps forward (so the lock expires
 * now). This is the case no client-side check can close: the holder's gate
 * says "still mine". B acquires, writes and commits with a newer fence; then
 * the stale holder writes. Only the fence predicate in the UPDATE stops it
 * (409). Without it (make test-negative, COUPONSVC_UNSAFE_NO_FENCE) its
 * write lands after B's with a lower fence, and the invariant check fails:
 * "fences not rising in commit order".
 *
 * The load runs on another coupon, through a third instance: load on this
 * coupon would write between the two and decide the race for them.
 */
TT_TEST(stale_holder_fenced_after_early_expiry, 60) {
    h_begin();
    /* Redis: the stale holder's one path goes through the proxy, and Redis's
     * clock jumps. etcd: every member's path does, and its process lease is
     * revoked (what etcd does when a lease runs out while its keep-alives
     * are lost). */
    fp_t *px = NULL, *pe[H_ETCD_MEMBERS] = {NULL};
    char via[256];
    if (h_etcd_on()) {
        size_t o = (size_t)snprintf(via, sizeof(via), "COUPON_ETCD_ENDPOINTS=");
        for (int i = 0; i < H_ETCD_MEMBERS; i++) {
            pe[i] = fp_start(h_etcd_client_port(i));
            o += (size_t)snprintf(via + o, sizeof(via) - o,
                                  "%shttp://127.0.0.1:%d", i ? "," : "",
                                  fp_port(pe[i]));
        }
    } else {
        redis_with_clockshift();
        px = fp_start(h_redis_port());
        snprintf(via, sizeof(via), "COUPON_REDIS_ADDRS=127.0.0.1:%d",
                 fp_port(px));
    }
    const char *env_v[] = {"COUPON_LOCK_TTL_MS=5000",
                           "COUPON_FAULT=after_acquire:1500", via, NULL};
    h_svc_t *v = h_svc_start("sh-stale", env_v);
    h_svc_t *b = h_svc_start("sh-fresh", NULL);
    h_svc_t *c = h_svc_start("sh-bg", NULL);
    h_svc_t *bg_svcs[] = {c, b};
    h_coupon(b, "sh", 10);
    h_coupon(b, "bg", 1000);
    fl_load_t *bg = fl_start(bg_svcs, 2, "bg", "bg", 4, 20000, LOAD_PAUSE_MS);
    fl_wait_201s(bg, 10);

    fl_solo_t so;
    fl_solo_start(&so, v, "sh", "stale", 20000);
    wait_lease(v);
    if (h_etcd_on()) {
        for (int i = 0; i < H_ETCD_MEMBERS; i++) {
            fp_blackhole(pe[i], 1); /* the stale holder hears nothing more */
        }
        TT_EQ_INT(h_etcd_revoke_owner("lock/sh/"), 1); /* and its key goes */
        TT_EQ_INT(h_etcd_count("lock/sh/"), 0);
    } else {
        fp_blackhole(px, 1);      /* the stale holder hears nothing more */
        redis_clock_shift(60000); /* and its lock expires in Redis now */
        TT_EQ_INT(h_redis_cmd("EXISTS coupon:{sh}:lock"), 0);
    }

    fl_rec_t rb;
    fl_claim(b->url, "sh", "fresh", 10000, &rb);
    fl_solo_join(&so);
    printf("    fresh on sh-fresh: %ld fence %ld; stale fence %ld\n", rb.status,
           rb.fence, so.r.fence);
    fl_stop(bg);
    fl_print(bg, "bg load");

    /* The data first: this is what the negative control must trip. */
    h_check_invariants("sh", 10, (rb.status == 201) + (so.r.status == 201));
    TT_EQ_INT(rb.status, 201);
    TT_EQ_INT(so.r.status, 409);
    TT_EQ_STR(so.r.error, "fenced");
    TT_CMP_INT(so.r.fence, <, rb.fence);
    TT_EQ_INT(fl_rows_for_user("stale"), 0);

    for (int i = 0; i < H_ETCD_MEMBERS; i++) {
        if (pe[i] != NULL) {
            fp_blackhole(pe[i], 0);
        }
    }
    if (px != NULL) {
        fp_blackhole(px, 0);
    }
    h_svc_t *ok[] = {b, c};
    fl_load_t *ls[] = {bg};
    fl_finish("bg", 1000, ls, 1, 0, ok, 2);
    fl_free(bg);
    fp_stop(px);
    for (int i = 0; i < H_ETCD_MEMBERS; i++) {
        fp_stop(pe[i]);
    }
}

/*
 * The stale READ: fences order writes, not reads. The last coupon; two
 * holders, each pausing between its read and its write (after_check):
 *
 *   t=0     S acquires (fence f), takes the coupon's row lock and reads: 1
 *           left. Pauses 1.5 s, holding the row lock.
 *           S's Redis path is black-holed, Redis's clock jumps: S's lock is
 *           gone while S believes it holds it (as in the test above).
 *   t=0.1   B acquires (fence g > f). Its row-lock statement waits for S.
 *   t=1.5   S writes: last_fence < f, so the fence accepts it (nobody newer
 *           has WRITTEN yet), 1 left: claimed = total. S commits: 201.
 *   t=1.5   B gets the row, reads 0 left, pauses 2.5 s, and writes
 *           nothing: the stock terms of its UPDATE (the count bounded by
 *           total - claimed, and claimed + k <= total) refuse it: 410.
 *
 * The row lock taken before the read is what keeps B's read from going
 * stale; the stock terms are what turn it into a refusal. Without them
 * (COUPONSVC_UNSAFE_NO_STOCK_CHECK) B's write lands, claimed = total + 1.
 * The schema's CHECK (claimed <= total) would still stop that, as the last
 * line of defence; this test drops that CHECK from its own database, so that
 * it tests the UPDATE's predicate alone and the invariant check can see the
 * oversell.
 */
TT_TEST(stale_read_last_coupon, 60) {
    H_REDIS_ONLY(); /* its early expiry is a Redis clock jump */
    h_begin();
    redis_with_clockshift();
    fp_t *px = fp_start(h_redis_port());
    char via[64];
    snprintf(via, sizeof(via), "COUPON_REDIS_ADDRS=127.0.0.1:%d", fp_port(px));
    const char *env_s[] = {"COUPON_LOCK_TTL_MS=5000",
                           "COUPON_FAULT=after_check:1500", via, NULL};
    /* Its pause in the transaction is near the default transaction
     * deadline (statement timeout + 1 s): give it room. */
    const char *env_b[] = {"COUPON_LOCK_TTL_MS=5000",
                           "COUPON_FAULT=after_check:2500",
                           "COUPON_PG_TX_DEADLINE_MS=10000",
                           "COUPON_LOCK_MAX_HOLD_MS=12000", NULL};
    h_svc_t *s = h_svc_start("sr-stale", env_s);
    h_svc_t *b = h_svc_start("sr-fresh", env_b);
    h_svc_t *c = h_svc_start("sr-bg", NULL);
    h_coupon(c, "sr", 2);
    h_coupon(c, "bg", 1000);
    h_pg_int("SELECT 1 FROM (SELECT 1) x"); /* the database is up */
    {
        PGconn *pg = PQconnectdb(h_dsn());
        PGresult *res = PQexec(pg, "ALTER TABLE coupons DROP CONSTRAINT "
                                   "coupons_claimed_within_total");
        TT_ASSERT(PQresultStatus(res) == PGRES_COMMAND_OK);
        PQclear(res);
        PQfinish(pg);
    }
    fl_rec_t r0;
    fl_claim(c->url, "sr", "first", 10000, &r0);
    TT_EQ_INT(r0.status, 201); /* one left */

    h_svc_t *bg_svcs[] = {c};
    fl_load_t *bg = fl_start(bg_svcs, 1, "bg", "bg", 4, 20000, LOAD_PAUSE_MS);
    fl_wait_201s(bg, 10);

    fl_solo_t ss, sb;
    fl_solo_start(&ss, s, "sr", "stale", 20000);
    wait_lease(s);
    h_sleep_ms(50); /* its check is done: it pauses after it */
    fp_blackhole(px, 1);
    redis_clock_shift(60000);
    TT_EQ_INT(h_redis_cmd("EXISTS coupon:{sr}:lock"), 0);
    fl_solo_start(&sb, b, "sr", "fresh", 20000);
    fl_solo_join(&ss);
    fl_solo_join(&sb);
    fl_stop(bg);
    fl_print(bg, "bg load");

    /* The data first: this is what the negative control must trip. */
    h_check_invariants("sr", 2,
                       1 + (ss.r.status == 201) + (sb.r.status == 201));
    TT_EQ_INT(ss.r.status, 201); /* the stale holder's write was first */
    TT_EQ_INT(sb.r.status, 410); /* the stale check is refused */
    TT_CMP_INT(ss.r.fence, <, h_redis_cmd("GET coupon:{sr}:fence"));

    fp_blackhole(px, 0);
    h_svc_t *ok[] = {c};
    fl_load_t *ls[] = {bg};
    fl_finish("bg", 1000, ls, 1, 0, ok, 1);
    fl_free(bg);
    fp_stop(px);
}

/*
 * Two leases with the SAME fence, after Redis lost its data. S holds fence
 * f (drawn right after the last write, so last_fence = f - 1) and cannot
 * hear Redis (black-holed). Redis restarts empty. B draws fence 1, is
 * refused, finds its token still in Redis (so the counter went backwards),
 * raises the counter to last_fence = f - 1 and retries: it draws f, the
 * same fence S holds. B writes and commits with f. Then S writes with f.
 * The store's rule that a lease's FIRST write needs last_fence < fence
 * (strictly) refuses it: 409. With "at least" (last_fence <= fence) for the
 * first write too, S's write would land and two claims would carry fence f;
 * the invariant check (fences strictly rising in commit order) catches that
 * (make test-negative, COUPONSVC_UNSAFE_FENCE_NOT_STRICT).
 */
TT_TEST(redis_lost_duplicate_fence_refused, 60) {
    H_REDIS_ONLY();
    h_begin();
    fp_t *px = fp_start(h_redis_port());
    char via[64];
    snprintf(via, sizeof(via), "COUPON_REDIS_ADDRS=127.0.0.1:%d", fp_port(px));
    const char *env_s[] = {"COUPON_LOCK_TTL_MS=5000",
                           "COUPON_FAULT=after_acquire:1500", via, NULL};
    h_svc_t *st = h_svc_start("df-stale", env_s);
    h_svc_t *b = h_svc_start("df-fresh", NULL);
    h_svc_t *c = h_svc_start("df-bg", NULL);
    h_coupon(b, "df", 10);
    h_coupon(b, "bg", 1000);
    for (int i = 0; i < 3; i++) {
        char user[32];
        snprintf(user, sizeof(user), "warm-%d", i);
        fl_rec_t r;
        fl_claim(b->url, "df", user, 10000, &r);
        TT_EQ_INT(r.status, 201);
    }
    h_svc_t *bg_svcs[] = {c};
    fl_load_t *bg = fl_start(bg_svcs, 1, "bg", "bg", 4, 20000, LOAD_PAUSE_MS);
    fl_wait_201s(bg, 10);

    fl_solo_t so;
    fl_solo_start(&so, st, "df", "stale", 20000);
    wait_lease(st);
    fp_blackhole(px, 1);
    h_redis_stop(); /* the counter and the lock are gone */
    h_redis_start();
    fl_rec_t rb;
    fl_claim(b->url, "df", "fresh", 10000, &rb);
    fl_solo_join(&so);
    printf("    fresh: %ld fence %ld; stale: %ld fence %ld\n", rb.status,
           rb.fence, so.r.status, so.r.fence);
    fl_stop(bg);
    fl_print(bg, "bg load");

    /* The data first: this is what the negative control must trip. */
    h_check_invariants("df", 10, 3 + (rb.status == 201) + (so.r.status == 201));
    TT_EQ_INT(rb.status, 201);
    TT_EQ_INT(rb.fence, so.r.fence); /* the same fence, twice */
    TT_EQ_INT(so.r.status, 409);
    TT_EQ_STR(so.r.error, "fenced");
    TT_EQ_INT(fl_rows_for_user("stale"), 0);
    TT_CMP_INT(h_metric(b, "couponsvc_fence_counter_recoveries_total"), >=, 1);

    fp_blackhole(px, 0);
    h_svc_t *ok[] = {c, b};
    fl_load_t *ls[] = {bg};
    fl_finish("bg", 1000, ls, 1, 0, ok, 2);
    fl_free(bg);
    fp_stop(px);
}

/* ---------------------------------------------------------- PostgreSQL --- */

/*
 * PostgreSQL stopped (fast: clients disconnected, open transactions rolled
 * back; immediate: killed, crash recovery at the next start) and started
 * again under load. Meanwhile: clear 503s with Retry-After, the service
 * stays up. After: recovery without a restart of the service, and every 201
 * durable, also across the crash (synchronous_commit is on in this private
 * cluster; see h_pg_private_start). A COMMIT cut off mid-way is ambiguous;
 * fl_settle resolves it.
 */
static void pg_restart(const char *mode) {
    h_begin();
    h_pg_private_start();
    const char *env[] = {TTL_ENV, "COUPON_LOCK_WAIT_MS=3000",
                         "COUPON_PG_CONNECT_TIMEOUT_S=2", NULL};
    h_svc_t *s[] = {h_svc_start("pg-1", env), h_svc_start("pg-2", env),
                    h_svc_start("pg-3", env)};
    h_coupon(s[0], "pg", STOCK);
    fl_load_t *l = fl_start(s, 3, "pg", "load", 6, 20000, LOAD_PAUSE_MS);
    fl_wait_201s(l, 30);

    double t_stop = h_now_ms();
    h_pg_private_stop(mode);
    double t_down = h_now_ms();
    h_sleep_ms(1000);
    double t_restart = h_now_ms();
    h_pg_private_restart();
    double t_up = h_now_ms();
    h_sleep_ms(3000);
    fl_stop(l);
    fl_print(l, "load");
    printf("    stop (%s) took %.0f ms\n", mode, t_down - t_stop);

    TT_EQ_INT(fl_count(l, 0, NULL), 0); /* the service stayed up */
    TT_EQ_INT(fl_count(l, 500, NULL), 0);
    const char *clear[] = {"unavailable", "lock_busy", "commit_unknown", NULL};
    fl_failures_clear(l, t_down, t_up, clear);
    TT_EQ_INT(fl_count_within(l, 201, t_down, t_restart), 0);
    double first = fl_first_after(l, 201, t_up);
    TT_CMP_INT(first, >, 0);
    printf("    first 201 +%.0f ms after the restart; 503s answered after "
           "it: %ld (a worker's first call on a connection that died)\n",
           first - t_up, fl_count_between(l, 503, t_up, h_now_ms()));
    TT_CMP_INT(first - t_up, <, 5000);

    fl_finish_one(l, "pg", STOCK, 0, s, 3);
    h_pg_private_stop("fast");
}

TT_TEST(pg_restart_fast, 90) {
    pg_restart("fast");
}

TT_TEST(pg_restart_immediate, 90) {
    pg_restart("immediate");
}

/*
 * A row lock held by an outside session (BEGIN; SELECT ... FOR UPDATE on
 * the coupon; an operator's psql, a stuck batch job). Claims acquire the
 * Redis lock, check, and wait on the row in their UPDATE until
 * statement_timeout: a clear 503 within lock wait + statement timeout. No
 * lease lives on: each is released when its claim gives up, so the fence
 * counter moves on during the hold, and once the outside session ends and
 * the load stops, no lease is held and the lock key is gone.
 */
TT_TEST(outside_row_lock, 60) {
    H_REDIS_ONLY(); /* it counts grants on the Redis fence counter */
    h_begin();
    const char *env[] = {TTL_ENV, "COUPON_LOCK_WAIT_MS=2000",
                         "COUPON_PG_STATEMENT_TIMEOUT_MS=700", NULL};
    h_svc_t *s[] = {h_svc_start("rl-1", env), h_svc_start("rl-2", env)};
    h_coupon(s[0], "rl", STOCK);
    fl_load_t *l = fl_start(s, 2, "rl", "load", 4, 20000, LOAD_PAUSE_MS);
    fl_wait_201s(l, 20);

    PGconn *pg = PQconnectdb(h_dsn());
    TT_ASSERT(PQstatus(pg) == CONNECTION_OK);
    PGresult *res = PQexec(pg, "BEGIN");
    PQclear(res);
    res = PQexec(pg, "SELECT * FROM coupons WHERE id = 'rl' FOR UPDATE");
    TT_ASSERT(PQresultStatus(res) == PGRES_TUPLES_OK);
    PQclear(res);
    double t_lock = h_now_ms();
    h_sleep_ms(500);
    long f0 = h_redis_cmd("GET coupon:{rl}:fence");
    h_sleep_ms(2500);
    long f1 = h_redis_cmd("GET coupon:{rl}:fence");
    /* The window ends when the ROLLBACK is SENT: a claim waiting on the row
     * may commit and be answered before the ROLLBACK's own reply is back. */
    double t_unlock = h_now_ms();
    res = PQexec(pg, "ROLLBACK");
    PQclear(res);
    PQfinish(pg);
    h_sleep_ms(1500);
    fl_stop(l);
    fl_print(l, "load");

    TT_EQ_INT(fl_count_within(l, 201, t_lock, t_unlock), 0);
    const char *clear[] = {"unavailable", "lock_busy", NULL};
    fl_failures_clear(l, t_lock, t_unlock, clear);
    TT_CMP_INT(statement_timeouts(s, 2), >=, 2);
    /* lock wait 2 s + statement timeout 0.7 s + slack */
    double worst = fl_max_latency(l, t_lock, t_unlock);
    printf("    worst latency during the hold %.0f ms; fence %ld -> %ld\n",
           worst, f0, f1);
    TT_CMP_INT(worst, <, 4000);
    TT_CMP_INT(f1 - f0, >=, 2); /* leases came and went */
    double first = fl_first_after(l, 201, t_unlock);
    TT_CMP_INT(first, >, 0);
    TT_CMP_INT(first - t_unlock, <, 1500);

    /* Nothing lingers: no lease held, no lock key. */
    for (int i = 0; i < 2; i++) {
        double end = h_now_ms() + 3000;
        while (h_metric(s[i], "couponsvc_leases_held") != 0 &&
               h_now_ms() < end) {
            h_sleep_ms(20);
        }
        TT_EQ_INT(h_metric(s[i], "couponsvc_leases_held"), 0);
    }
    TT_EQ_INT(h_redis_cmd("EXISTS coupon:{rl}:lock"), 0);

    fl_finish_one(l, "rl", STOCK, 0, s, 2);
}

/*
 * Redis and PostgreSQL restarted while the service sits idle: every worker
 * holds a connection that died under it. The first claim on each must not
 * fail for that alone: lock.c sends a command again on a fresh connection
 * when a kept one turns out closed (EOF or reset, never a timeout), and
 * store.c does the same for a BEGIN. Before that, each worker answered one
 * spurious 503 after every restart.
 */
TT_TEST(idle_connections_survive_backend_restarts, 90) {
    h_begin();
    h_pg_private_start();
    const char *env[] = {"COUPON_THREADS=4", "COUPON_LOCK_WAIT_MS=5000", NULL};
    h_svc_t *s = h_svc_start("idle-1", env);
    h_coupon(s, "ir", 1000);
    h_svc_t *one[] = {s};
    h_counts_t c;
    /* Enough concurrent claims that every worker opens its connections. */
    h_claim_many(one, 1, "ir", "warm", 40, 8, &c);
    TT_EQ_INT(c.by_status[201], 40);

    h_redis_stop();
    h_redis_start(); /* empty: the fence counter is gone too */
    h_claim_many(one, 1, "ir", "after-redis", 40, 8, &c);
    printf("    after the Redis restart: 201=%ld 503=%ld\n", c.by_status[201],
           c.by_status[503]);
    TT_EQ_INT(c.by_status[503], 0);
    TT_EQ_INT(c.by_status[201], 40);

    h_pg_private_stop("fast");
    h_pg_private_restart();
    h_claim_many(one, 1, "ir", "after-pg", 40, 8, &c);
    printf("    after the PostgreSQL restart: 201=%ld 503=%ld\n",
           c.by_status[201], c.by_status[503]);
    TT_EQ_INT(c.by_status[503], 0);
    TT_EQ_INT(c.by_status[201], 40);
    h_check_invariants("ir", 1000, 120);
}

/* ------------------------------------------- PostgreSQL black-holed --- */

/* Runs one statement on the test database; fails the test if it fails. */
static void pg_exec(const char *sql) {
    PGconn *pg = PQconnectdb(h_dsn());
    TT_ASSERT_MSG(PQstatus(pg) == CONNECTION_OK, "connect: %s",
                  PQerrorMessage(pg));
    PGresult *res = PQexec(pg, sql);
    ExecStatusType s = PQresultStatus(res);
    TT_ASSERT_MSG(s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK, "%s: %s", sql,
                  PQresultErrorMessage(res));
    PQclear(res);
    PQfinish(pg);
}

/* The test database's port, from its DSN ("... port=N ..."). */
static int pg_port(void) {
    const char *p = strstr(h_dsn(), "port=");
    TT_ASSERT(p != NULL);
    return atoi(p + 5);
}

/* COUPON_PG_DSN for an instance that reaches PostgreSQL through px: the
 * test's DSN with the port replaced (in a conninfo string the last
 * occurrence of a keyword wins). */
static const char *dsn_via(const fp_t *px, char *buf, size_t len) {
    snprintf(buf, len, "COUPON_PG_DSN=%s port=%d", h_dsn(), fp_port(px));
    return buf;
}

/* One black-hole scenario: a victim instance that reaches PostgreSQL
 * through the proxy px, a healthy one under load, and the victim's claim
 * running in a thread of its own. */
typedef struct bh {
    const char *coupon; /* borrowed: a literal */
    fp_t *px;           /* between the victim and PostgreSQL */
    h_svc_t *ok;        /* the healthy instance (harness-owned) */
    h_svc_t *victim;    /* the victim (harness-owned) */
    fl_load_t *load;    /* claims on ok, from before the freeze to the end */
    fl_solo_t so;       /* the victim's claim, "victim" */
    char dsn[400];      /* the victim's COUPON_PG_DSN, through px */
} bh_t;

/* Copies the NULL-terminated settings of `from` after dst[*n]. */
static void bh__env_add(const char **dst, int *n, int cap,
                        const char *const *from) {
    for (int i = 0; from != NULL && from[i] != NULL; i++) {
        TT_ASSERT(*n < cap - 1);
        dst[(*n)++] = from[i];
    }
    dst[*n] = NULL;
}

/* Starts the scenario's setting: the proxy, the healthy instance (TTL_ENV
 * plus ok_env), the victim (TTL_ENV, its DSN through the proxy, one thread,
 * a lock wait of 10 s, plus victim_env), the coupon, one claim of the
 * victim's before anything (so that it is connected and its statements
 * prepared), the load on the healthy instance until it has 10 claims, and
 * the victim's claim, until it holds the lease. Both env arrays are
 * borrowed for the call. */
static void bh_start(bh_t *b, const char *coupon, const char *const *victim_env,
                     const char *const *ok_env) {
    memset(b, 0, sizeof(*b));
    b->coupon = coupon;
    b->px = fp_start(pg_port());
    const char *common_v[] = {TTL_ENV, dsn_via(b->px, b->dsn, sizeof(b->dsn)),
                              "COUPON_THREADS=1", "COUPON_LOCK_WAIT_MS=10000",
                              NULL};
    const char *env_v[16], *env[16];
    int nv = 0, n = 0;
    bh__env_add(env_v, &nv, 16, common_v);
    bh__env_add(env_v, &nv, 16, victim_env);
    const char *common[] = {TTL_ENV, NULL};
    bh__env_add(env, &n, 16, common);
    bh__env_add(env, &n, 16, ok_env);

    char name[64];
    snprintf(name, sizeof(name), "%s-a", coupon);
    b->ok = h_svc_start(name, env);
    snprintf(name, sizeof(name), "%s-victim", coupon);
    b->victim = h_svc_start(name, env_v);
    h_coupon(b->ok, coupon, STOCK);
    fl_rec_t warm;
    fl_claim(b->victim->url, coupon, "warm", 10000, &warm);
    TT_EQ_INT(warm.status, 201);

    b->load = fl_start(&b->ok, 1, coupon, "load", 2, 20000, LOAD_PAUSE_MS);
    fl_wait_201s(b->load, 10);
    fl_solo_start(&b->so, b->victim, coupon, "victim", 20000);
    wait_lease(b->victim);
}

/* The scenario's end, the proxy thawed and the victim's claim joined: the
 * load stopped and printed, nothing of the victim's written, and the
 * closing accounting with extra201 claims made outside the load (the warm
 * one and any after the thaw). */
static void bh_finish(bh_t *b, long extra201) {
    fl_stop(b->load);
    fl_print(b->load, "load");
    TT_EQ_INT(fl_rows_for_user("victim"), 0);
    fl_finish_one(b->load, b->coupon, STOCK, extra201, &b->ok, 1);
    fp_stop(b->px);
}

/*
 * The network to PostgreSQL black-holes while an instance holds a coupon's
 * lock, BEFORE its write: a host that died without a RST, a frozen VM. The
 * proxy between the victim and PostgreSQL stops moving bytes but closes
 * nothing, so the victim's BEGIN is sent and never answered, and no
 * server-side timeout can help (the server never saw it).
 *
 *   t=0      the victim acquires the lock (fence f), pauses 300 ms
 *            (after_acquire); the proxy freezes; its BEGIN goes nowhere.
 *   by the   the watchdog stops renewing and marks the lease lost
 *   max hold (COUPON_LOCK_MAX_HOLD_MS, 1.5 s here);
 *   + 1 TTL  the lock key expires in Redis (TTL 1 s), and the load on the
 *            healthy instance gets the lock and writes again.
 *
 * Bound: the first 201 after the freeze comes within max hold + TTL of the
 * grant (+ 2.5 s slack for a loaded machine), and none before max hold:
 * the victim held the lock until then. The transaction deadline is set far
 * beyond (30 s), so it is the max hold alone that frees the coupon. Before
 * the max hold existed, the watchdog renewed the lease for as long as the
 * call blocked (forever here) and every other claim answered lock_busy.
 * When the proxy thaws, the victim's transaction goes on with a stale
 * lease: its fence is refused (409) or its commit gate rolls back (503
 * lease_lost); nothing of it is written.
 */
TT_TEST(pg_blackhole_before_write_max_hold, 90) {
    h_begin();
    const char *env_v[] = {"COUPON_FAULT=after_acquire:300",
                           "COUPON_PG_TX_DEADLINE_MS=30000",
                           "COUPON_LOCK_MAX_HOLD_MS=1500", NULL};
    const char *env[] = {"COUPON_LOCK_WAIT_MS=500", NULL};
    bh_t b;
    bh_start(&b, "bh", env_v, env);
    double t_lease = h_now_ms();
    fp_blackhole(b.px, 1);
    double t_freeze = h_now_ms();

    /* Wait for the first 201 after the freeze, bounded. */
    double first = -1;
    while (first < 0 && h_now_ms() - t_lease < 1500 + 1000 + 2500) {
        first = fl_first_after(b.load, 201, t_freeze + 50);
        h_sleep_ms(20);
    }
    double lost = h_metric(b.victim, "couponsvc_leases_lost_total");
    printf("    first 201 after the freeze: +%.0f ms after the grant "
           "(max hold 1500 + TTL 1000); victim leases lost: %.0f\n",
           first > 0 ? first - t_lease : -1.0, lost);
    TT_CMP_INT(first, >, 0);
    TT_CMP_INT(first - t_lease, <=, 1500 + 1000 + 2500);
    TT_CMP_INT(lost, >=, 1);
    /* The victim did hold the lock until its max hold. */
    TT_EQ_INT(fl_count_within(b.load, 201, t_freeze + 50, t_lease + 1400), 0);

    fp_blackhole(b.px, 0);
    fl_solo_join(&b.so);
    TT_ASSERT_MSG(
        b.so.r.status == 409 ||
            (b.so.r.status == 503 && strcmp(b.so.r.error, "lease_lost") == 0),
        "victim answered %ld %s", b.so.r.status, b.so.r.error);
    bh_finish(&b, 1);
}

/*
 * The same black hole, with the transaction deadline shorter than the max
 * hold (as by default: deadline + one renewal period). The victim's call
 * gives up at its deadline (1.5 s from the start of the transaction): it
 * shuts its socket down, answers 503 unavailable and releases the lock, so
 * the others write again at once, well within max hold + TTL. Before the
 * deadline existed, the victim's claim never answered at all. Its next
 * claim, still during the black hole, has to connect again: the deadline
 * bounds that too (the connect timeout is set to 30 s here, so only the
 * deadline can answer it in time). After the thaw the victim connects again
 * and claims as before.
 */
TT_TEST(pg_blackhole_before_write_deadline, 90) {
    h_begin();
    const char *env_v[] = {"COUPON_FAULT=after_acquire:300",
                           "COUPON_PG_TX_DEADLINE_MS=1500",
                           "COUPON_PG_CONNECT_TIMEOUT_S=30", NULL};
    const char *env[] = {"COUPON_LOCK_WAIT_MS=500", NULL};
    bh_t b;
    bh_start(&b, "bd", env_v, env);
    double t_lease = h_now_ms();
    fp_blackhole(b.px, 1);
    double t_freeze = h_now_ms();
    fl_solo_join(&b.so); /* answers while the proxy is still frozen */
    double t_answer = h_now_ms();
    h_sleep_ms(500);
    double first = fl_first_after(b.load, 201, t_freeze + 50);
    printf("    victim answered +%.0f ms after the grant (pause 300 + "
           "deadline 1500); first 201 of the others +%.0f ms\n",
           t_answer - t_lease, first > 0 ? first - t_lease : -1.0);
    TT_EQ_INT(b.so.r.status, 503);
    TT_EQ_STR(b.so.r.error, "unavailable");
    TT_CMP_INT(t_answer - t_lease, <=, 300 + 1500 + 2000);
    TT_CMP_INT(h_metric(b.victim,
                        "couponsvc_postgres_timeouts_total{kind=\"deadline\"}"),
               >=, 1);
    TT_CMP_INT(first, >, 0);
    TT_CMP_INT(first - t_lease, <=, 300 + 1500 + 2000);

    fl_rec_t during;
    double t_during = h_now_ms();
    fl_claim(b.victim->url, "bd", "during", 20000, &during);
    double took = h_now_ms() - t_during;
    printf("    a claim that has to connect during the black hole: %ld %s "
           "after %.0f ms\n",
           during.status, during.error, took);
    TT_EQ_INT(during.status, 503);
    TT_CMP_INT(took, <=, 300 + 1500 + 2000);

    fp_blackhole(b.px, 0);
    fl_rec_t again;
    fl_claim(b.victim->url, "bd", "after", 10000, &again);
    TT_EQ_INT(again.status, 201); /* connected again once the path is back */
    TT_EQ_INT(fl_rows_for_user("during"), 0);
    bh_finish(&b, 2);
}

/*
 * The black hole strikes AFTER the write: the victim's UPDATE has run, so
 * its backend holds the coupon's row lock, and the COMMIT it sends next is
 * swallowed by the frozen proxy. The victim's deadline (statement timeout
 * 1 s + 1 s = 2 s by default) ends its call: 503 commit_unknown, since
 * COMMIT was sent and it cannot know whether it landed; it releases the
 * Redis lock. But the backend, which never got the COMMIT, still sits idle
 * in transaction holding the row lock: the others' UPDATEs wait on it
 * until their statement_timeout (503s), and nobody can commit until the
 * server's idle_in_transaction_session_timeout ends that session. Its
 * default, 2 x statement timeout + 1 s, is 3 s here (a default of a minute
 * would block the coupon for a minute).
 *
 * Bound: the first 201 of the others comes within the idle-in-transaction
 * timeout of the freeze (+ 2.5 s slack), and none before it minus 0.6 s.
 * After the thaw nothing of the victim's is written (its backend was gone
 * before the COMMIT could reach it); the settle retries its ambiguous
 * answer and finds no claim.
 */
TT_TEST(pg_blackhole_after_write_idle_tx_timeout, 90) {
    h_begin();
    const char *env_v[] = {"COUPON_FAULT=before_commit:500",
                           "COUPON_PG_STATEMENT_TIMEOUT_MS=1000", NULL};
    const char *env[] = {"COUPON_LOCK_WAIT_MS=2000",
                         "COUPON_PG_STATEMENT_TIMEOUT_MS=500", NULL};
    bh_t b;
    bh_start(&b, "bw", env_v, env);
    /* In its before_commit pause: written, row locked, idle in transaction
     * (the load's transactions are short; wait for a moment with one). */
    TT_CMP_INT(wait_idle_in_tx(1, 3000), >=, 0);
    fp_blackhole(b.px, 1);
    double t_freeze = h_now_ms();

    double first = -1;
    while (first < 0 && h_now_ms() - t_freeze < 3000 + 2500) {
        first = fl_first_after(b.load, 201, t_freeze + 50);
        h_sleep_ms(20);
    }
    fl_solo_join(&b.so);
    printf("    first 201 of the others +%.0f ms after the freeze "
           "(idle-in-transaction timeout 3000)\n",
           first > 0 ? first - t_freeze : -1.0);
    TT_CMP_INT(first, >, 0);
    TT_CMP_INT(first - t_freeze, <=, 3000 + 2500);
    TT_EQ_INT(
        fl_count_within(b.load, 201, t_freeze + 50, t_freeze + 3000 - 600), 0);
    TT_EQ_INT(b.so.r.status, 503);
    TT_EQ_STR(b.so.r.error, "commit_unknown");

    fp_blackhole(b.px, 0);
    h_sleep_ms(500);
    /* The victim's write is not there before the claim after the thaw. */
    TT_EQ_INT(fl_rows_for_user("victim"), 0);
    fl_rec_t again;
    fl_claim(b.victim->url, "bw", "after", 10000, &again);
    TT_EQ_INT(again.status, 201);
    bh_finish(&b, 2);
}

/* ------------------------------------- PostgreSQL answers to look at --- */

/*
 * A transaction that failed without the client noticing (here: the
 * abort_before_commit fault point runs a failing statement and ignores its
 * error, as a lost error of a pipelined statement would) is answered by
 * COMMIT with PGRES_COMMAND_OK and the tag "ROLLBACK". That is no commit:
 * the claim must not be answered 201, and nothing is written. Before the
 * tag was checked, the client got a 201 for a claim that does not exist.
 */
TT_TEST(pg_commit_answered_rollback_is_not_a_claim, 60) {
    h_begin();
    const char *env[] = {"COUPON_FAULT=abort_before_commit:1", NULL};
    h_svc_t *s = h_svc_start("rb-1", env);
    h_coupon(s, "rb", 5);
    fl_rec_t r;
    fl_claim(s->url, "rb", "ghost", 10000, &r);
    printf("    answer: %ld %s\n", r.status, r.error);
    TT_EQ_INT(fl_rows_for_user("ghost"), 0);
    TT_CMP_INT(r.status, !=, 201);
    TT_EQ_INT(r.status, 503);
    TT_EQ_STR(r.error, "unavailable");
    TT_EQ_INT(h_pg_int("SELECT claimed FROM coupons WHERE id = 'rb'"), 0);
    h_check_invariants("rb", 5, 0);
}

/*
 * An online migration changes the type of a column a prepared statement
 * returns (coupons.total: integer -> bigint) while the service runs. The
 * next execution of each such statement fails with SQLSTATE 0A000 ("cached
 * plan must not change result type"); the store prepares its statements
 * again and runs the transaction (or the statement) once more. Before
 * that, every claim on that connection answered 503 until a restart. One
 * worker, so the claim after the migration runs on the connection that
 * prepared before it.
 */
TT_TEST(pg_migration_changes_result_type, 60) {
    h_begin();
    const char *env[] = {"COUPON_THREADS=1", NULL};
    h_svc_t *s = h_svc_start("mg-1", env);
    h_coupon(s, "mg", 5);
    fl_rec_t r;
    fl_claim(s->url, "mg", "before", 10000, &r);
    TT_EQ_INT(r.status, 201);

    pg_exec("ALTER TABLE coupons ALTER COLUMN total TYPE bigint");
    fl_claim(s->url, "mg", "after", 10000, &r);
    printf("    claim after the migration: %ld %s %s\n", r.status, r.error,
           r.detail);
    TT_EQ_INT(r.status, 201);
    if (!h_etcd_on()) {
        TT_EQ_INT(r.fence, 2);
    }
    fl_claim(s->url, "mg", "again", 10000, &r);
    TT_EQ_INT(r.status, 201);
    char url[160];
    snprintf(url, sizeof(url), "%s/coupons/mg", s->url);
    TT_EQ_INT(h_http("GET", url, NULL, NULL, NULL, 0, NULL), 200);
    h_check_invariants("mg", 5, 3);
}

/*
 * synchronous_commit below `on` (off, local, remote_write) lets a server
 * crash or a failover lose a COMMIT that already returned, and with it a
 * claim already answered 201. The service raises the session's value to
 * `on` when the server's (here the database's) is lower, and never lowers
 * it: remote_apply stays. A trigger on claims records the value each
 * claim's transaction ran with, as the server saw it.
 */
TT_TEST(pg_synchronous_commit_at_least_on, 60) {
    h_begin();
    pg_exec("CREATE TABLE sc_seen (setting text NOT NULL)");
    pg_exec("CREATE FUNCTION sc_note() RETURNS trigger LANGUAGE plpgsql AS $$"
            " BEGIN INSERT INTO sc_seen"
            " VALUES (current_setting('synchronous_commit')); RETURN NEW; END"
            " $$");
    pg_exec("CREATE TRIGGER sc_note AFTER INSERT ON claims FOR EACH ROW"
            " EXECUTE FUNCTION sc_note()");
    static const struct {
        const char *server, *want;
    } cases[] = {{"off", "on"},
                 {"local", "on"},
                 {"remote_write", "on"},
                 {"on", "on"},
                 {"remote_apply", "remote_apply"}};
    long n201 = 0;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char sql[300];
        snprintf(sql, sizeof(sql),
                 "DO $$ BEGIN EXECUTE format('ALTER DATABASE %%I SET "
                 "synchronous_commit = %s', current_database()); END $$",
                 cases[i].server);
        pg_exec(sql);
        pg_exec("DELETE FROM sc_seen");
        char name[32], user[32];
        snprintf(name, sizeof(name), "sc-%zu", i);
        snprintf(user, sizeof(user), "user-%zu", i);
        h_svc_t *s = h_svc_start(name, NULL); /* connects after the ALTER */
        if (i == 0) {
            h_coupon(s, "sc", 10);
        }
        fl_rec_t r;
        fl_claim(s->url, "sc", user, 10000, &r);
        TT_EQ_INT(r.status, 201);
        n201++;
        snprintf(sql, sizeof(sql),
                 "SELECT count(*) FROM sc_seen WHERE setting = '%s'",
                 cases[i].want);
        long good = h_pg_int(sql);
        long all = h_pg_int("SELECT count(*) FROM sc_seen");
        printf("    database synchronous_commit=%s: the claim ran with "
               "%s: %ld of %ld\n",
               cases[i].server, cases[i].want, good, all);
        TT_EQ_INT(all, 1);
        TT_EQ_INT(good, 1);
        TT_EQ_INT(h_svc_stop(s, 10000), 0);
    }
    h_check_invariants("sc", 10, n201);
}

/*
 * The transaction deadline passes while the claim is between its write and
 * its COMMIT (a before_commit pause longer than the deadline; the lease is
 * kept valid by a long TTL and max hold). COMMIT must then not be sent:
 * sent after the deadline, it would commit a claim whose client is told 503
 * commit_unknown at best. Dropped unsent, it is a rollback the client can be
 * told plainly: 503 unavailable, nothing written.
 */
TT_TEST(pg_deadline_before_commit_rolls_back, 60) {
    h_begin();
    const char *env[] = {"COUPON_LOCK_TTL_MS=10000",
                         "COUPON_LOCK_MAX_HOLD_MS=20000",
                         "COUPON_PG_TX_DEADLINE_MS=1000",
                         "COUPON_FAULT=before_commit:1500", NULL};
    h_svc_t *s = h_svc_start("dc-1", env);
    h_coupon(s, "dc", 5);
    fl_rec_t r;
    fl_claim(s->url, "dc", "late", 10000, &r);
    printf("    answer: %ld %s: %s\n", r.status, r.error, r.detail);
    TT_EQ_INT(r.status, 503);
    TT_EQ_STR(r.error, "unavailable");
    TT_EQ_INT(fl_rows_for_user("late"), 0);
    h_check_invariants("dc", 5, 0);
}

/* ------------------------------------------------ TCP keepalive, set --- */

/* The keepalive timer (seconds left) of the first of pid's established TCP
 * connections to port, as `ss -o` shows it ("timer:(keepalive,9.9sec,0)");
 * -1 if none of them has one, -2 if pid has no such connection. */
static double keepalive_timer_s(pid_t pid, int port) {
    TT_ASSERT_MSG(system("command -v ss >/dev/null 2>&1") == 0,
                  "ss (iproute2) is missing: run make deps");
    char cmd[200];
    snprintf(cmd, sizeof(cmd),
             "ss -tnopH state established '( dport = :%d )' 2>/dev/null", port);
    FILE *f = popen(cmd, "r");
    TT_ASSERT(f != NULL);
    char line[1024], want[32];
    snprintf(want, sizeof(want), "pid=%d,", (int)pid);
    double found = -2;
    while (fgets(line, sizeof(line), f) != NULL) {
        if (strstr(line, want) == NULL) {
            continue;
        }
        printf("    %s", line);
        const char *k = strstr(line, "timer:(keepalive,");
        if (k == NULL) {
            found = found < -1 ? -1 : found;
            continue;
        }
        /* ss prints [<m>min][<s>sec | <s>.][<ms>ms]: "119min", "9.980ms"
         * (9 s 980 ms), "12sec", "450ms". */
        const char *p = k + strlen("timer:(keepalive,");
        double v = 0;
        for (int part = 0; part < 3; part++) {
            char *end = NULL;
            long x = strtol(p, &end, 10);
            if (end == p) {
                break;
            }
            if (strncmp(end, "min", 3) == 0) {
                v += x * 60.0;
                p = end + 3;
            } else if (strncmp(end, "sec", 3) == 0) {
                v += x;
                p = end + 3;
            } else if (*end == '.') {
                v += x;
                p = end + 1;
            } else if (strncmp(end, "ms", 2) == 0) {
                v += x / 1000.0;
                p = end + 2;
            } else {
                break;
            }
        }
        if (v > found) {
            found = v;
        }
    }
    pclose(f);
    return found;
}

/*
 * libpq's TCP keepalives are on by default, but with the kernel's idle time
 * (two hours): a dead peer behind a silent network goes unnoticed that
 * long. The service sets keepalives_idle=10 (with interval and count, and
 * tcp_user_timeout) as defaults, and a DSN that sets its own wins. Seen
 * here on the service's own socket, through `ss -o`; what the kernel then
 * does with a peer that stops answering is not tested (it needs packets
 * dropped, which a user-space proxy cannot do).
 */
TT_TEST(pg_tcp_keepalives_default_and_dsn_override, 60) {
    h_begin();
    const char *one[] = {"COUPON_THREADS=1", NULL};
    h_svc_t *a = h_svc_start("ka-default", one);
    h_coupon(a, "ka", 10);
    fl_rec_t r;
    fl_claim(a->url, "ka", "u1", 10000, &r);
    TT_EQ_INT(r.status, 201);
    double t = keepalive_timer_s(a->pid, pg_port());
    printf("    default: keepalive timer %.1f s\n", t);
    TT_CMP_INT(t, >, 0);
    TT_CMP_INT(t, <=, 10);

    char dsn[400];
    snprintf(dsn, sizeof(dsn), "COUPON_PG_DSN=%s keepalives_idle=300", h_dsn());
    const char *env_b[] = {"COUPON_THREADS=1", dsn, NULL};
    h_svc_t *b = h_svc_start("ka-dsn", env_b);
    fl_claim(b->url, "ka", "u2", 10000, &r);
    TT_EQ_INT(r.status, 201);
    t = keepalive_timer_s(b->pid, pg_port());
    printf("    DSN keepalives_idle=300: keepalive timer %.1f s\n", t);
    TT_CMP_INT(t, >, 200);
    TT_CMP_INT(t, <=, 300);
    h_check_invariants("ka", 10, 2);
}
