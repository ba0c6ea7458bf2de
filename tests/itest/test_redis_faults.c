/*
 * test_redis_faults.c: Redis-side liveness faults. An acquire whose reply
 * is lost, a primary demoted to a replica behind a stable address, and a
 * system suspend seen through CLOCK_BOOTTIME. Real Redis, PostgreSQL and
 * couponsvc; the TCP proxy of tests/faults/proxy.c plays the stable
 * address, tests/faults/bootshift.c the suspend.
 */
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "faults/proxy.h"
#include "harness.h"
#include "tt.h"

static const char *jerr(json_t *j) {
    json_t *v = json_object_get(j, "error");
    return json_is_string(v) ? json_string_value(v) : "";
}

/* ---------------------------------------------------- lost acquire reply ---
 */

/*
 * t=0 Redis is paused (SIGSTOP). A claims: its acquire sits in Redis's input
 * and the reply times out (300 ms): 503. A then sends a release with that
 * acquire's token on a fresh connection, which also waits in Redis's input.
 * Redis resumes: the acquire runs (a lock with a 30 s TTL whose token only A
 * knows), then the release deletes it. B's claim, with a 2 s lock wait, is
 * granted. Without the release, B would answer 503 lock_busy: the lock
 * would stay for the full 30 s.
 */
TT_TEST(redis_lost_acquire_reply_released, 60) {
    H_REDIS_ONLY();
    h_begin();
    /* One worker, so the claim runs on the connection "warm" opened: a
     * worker connecting afresh would stop at its SCRIPT LOAD and never send
     * the acquire. */
    const char *env_a[] = {"COUPON_LOCK_TTL_MS=30000",
                           "COUPON_REDIS_TIMEOUT_MS=300", "COUPON_THREADS=1",
                           NULL};
    const char *env_b[] = {"COUPON_LOCK_TTL_MS=30000",
                           "COUPON_LOCK_WAIT_MS=2000", NULL};
    h_svc_t *a = h_svc_start("lostA", env_a);
    h_svc_t *b = h_svc_start("lostB", env_b);
    h_coupon(a, "lost", 10);
    TT_EQ_INT(h_claim(a, "lost", "warm", NULL), 201);

    h_redis_signal(SIGSTOP);
    json_t *j = NULL;
    long st = h_claim(a, "lost", "timed-out", &j);
    h_redis_signal(SIGCONT);
    TT_EQ_INT(st, 503);
    TT_EQ_STR(jerr(j), "unavailable");
    json_decref(j);

    /* Both have run by now, or within moments (their connections are
     * older than ours); a lock left by the acquire alone would show a PTTL
     * near 30000 for the next 30 s. */
    long long pttl = 0;
    for (int i = 0;
         i < 20 && (pttl = h_redis_cmd("PTTL coupon:{lost}:lock")) != -2; i++) {
        h_sleep_ms(50);
    }
    TT_EQ_INT(pttl, -2);
    TT_EQ_INT(h_claim(b, "lost", "next", &j), 201);
    json_decref(j);
    TT_EQ_INT(h_pg_int("SELECT count(*) FROM claims WHERE user_id = "
                       "'timed-out'"),
              0);
    h_check_invariants("lost", 10, 2);
}

/* ------------------------------------------------------ demoted primary --- */

/*
 * The service reaches Redis through a stable address (the proxy), as behind
 * a DNS name or a virtual IP that moves on failover. t=0 claims work on R1.
 * R1 is demoted (REPLICAOF R2): every write it gets answers READONLY. The
 * claim then answers 503 at once, not hangs. The address is moved to R2
 * (new connections go there, open ones stay on R1). The next claim must
 * succeed without a restart: READONLY drops the connection and the retry on
 * a fresh one reaches R2. A client that kept its connection after READONLY
 * would stay pinned to R1 and fail every claim.
 */
TT_TEST(redis_demoted_primary_reconnects, 60) {
    H_REDIS_ONLY();
    h_begin();
    int r2 = h_redis_extra_start("redis2");
    fp_t *p = fp_start(h_redis_port());
    char addr[64];
    snprintf(addr, sizeof(addr), "COUPON_REDIS_ADDRS=127.0.0.1:%d", fp_port(p));
    const char *env[] = {addr, "COUPON_THREADS=1",
                         "COUPON_REDIS_TIMEOUT_MS=300", NULL};
    h_svc_t *s = h_svc_start("demote", env);
    h_coupon(s, "fo", 10);
    TT_EQ_INT(h_claim(s, "fo", "before", NULL), 201);

    h_redis_cmd_at(h_redis_port(), "REPLICAOF 127.0.0.1 %d", r2);
    json_t *j = NULL;
    TT_EQ_INT(h_claim(s, "fo", "while-replica", &j), 503);
    TT_EQ_STR(jerr(j), "unavailable");
    json_decref(j);

    fp_retarget(p, r2);
    TT_EQ_INT(h_claim(s, "fo", "after-failover", &j), 201);
    json_decref(j);
    TT_EQ_INT(h_claim(s, "fo", "again", &j), 201);
    json_decref(j);
    /* R2 started empty: the fence counter was raised past PostgreSQL's. */
    TT_CMP_INT(h_redis_cmd_at(r2, "EXISTS coupon:{fo}:fence"), ==, 1);
    h_check_invariants("fo", 10, 3);
    fp_stop(p);
}

/* ------------------------------------------------------------- suspend --- */

typedef struct claim_arg {
    const h_svc_t *s;
    long status;
    json_t *json;
} claim_arg_t;

static void *claim_thread(void *p) {
    claim_arg_t *a = p;
    a->status = h_claim(a->s, "zz", "sleeper", &a->json);
    return NULL;
}

/*
 * A system suspend in the middle of a claim, seen through the clocks: the
 * holder's CLOCK_BOOTTIME jumps 120 s ahead, its CLOCK_MONOTONIC does not
 * (bootshift.c). t=0 the claim acquires a 30 s lease and pauses 3 s before
 * its commit gate; t=1 s the "suspend" (the boot clock moves +120 s). At the
 * gate the lease's validity, counted on the boot clock, passed 90 s ago: in
 * a real suspend Redis would have expired the key and granted it to someone
 * else. The gate must refuse: 503 lease_lost, nothing written. Judged by the
 * monotonic clock the lease looks 27 s from expiry and the claim commits.
 */
TT_TEST(lease_validity_counts_suspend, 60) {
    h_begin();
    const char *so = getenv("COUPONSVC_BOOTSHIFT");
    if (so == NULL) {
        so = "build/tests/libbootshift.so";
    }
    char abs[PATH_MAX];
    TT_ASSERT_MSG(realpath(so, abs) != NULL,
                  "%s missing: run through make test-faults", so);
    char file[400];
    snprintf(file, sizeof(file), "%s/bootshift", h_test_dir());
    int fd = open(file, O_CREAT | O_TRUNC | O_RDWR, 0644);
    int64_t off = 0;
    TT_ASSERT(fd >= 0 && write(fd, &off, sizeof(off)) == sizeof(off));

    static char pre[PATH_MAX + 16], bf[480], asan[1024];
    snprintf(pre, sizeof(pre), "LD_PRELOAD=%s", abs);
    snprintf(bf, sizeof(bf), "BOOTSHIFT_FILE=%s", file);
    /* A sanitized build: ASan must accept a library preloaded before it. */
    const char *ao = getenv("ASAN_OPTIONS");
    snprintf(asan, sizeof(asan), "ASAN_OPTIONS=%s%sverify_asan_link_order=0",
             ao != NULL ? ao : "", ao != NULL && ao[0] != '\0' ? ":" : "");
    const char *env[] = {pre, bf, asan, "COUPON_LOCK_TTL_MS=30000",
                         "COUPON_FAULT=before_commit:3000",
                         /* Neither bound may end the claim first: the
                          * gate's validity check is what is tested. */
                         "COUPON_PG_TX_DEADLINE_MS=20000",
                         "COUPON_LOCK_MAX_HOLD_MS=600000", NULL};
    h_svc_t *s = h_svc_start("suspend", env);
    h_coupon(s, "zz", 5);

    claim_arg_t a = {.s = s};
    pthread_t t;
    pthread_create(&t, NULL, claim_thread, &a);
    h_sleep_ms(1000); /* granted, paused before the gate */
    off = 120000;
    TT_ASSERT(pwrite(fd, &off, sizeof(off), 0) == sizeof(off));
    pthread_join(t, NULL);
    close(fd);

    TT_EQ_INT(a.status, 503);
    TT_EQ_STR(jerr(a.json), "lease_lost");
    json_decref(a.json);
    TT_EQ_INT(h_pg_int("SELECT count(*) FROM claims"), 0);
    TT_CMP_INT(h_metric(s, "couponsvc_leases_lost_total"), >=, 1);

    /* After the "suspend" the clock is consistent again: claims work. */
    json_t *j = NULL;
    TT_EQ_INT(h_claim(s, "zz", "awake", &j), 201);
    json_decref(j);
    h_check_invariants("zz", 5, 1);
}
