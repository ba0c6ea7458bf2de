/*
 * test_comb_faults.c: a batch whose lease is lost before COMMIT. Every claim
 * of it is either put back in its coupon's queue and served by a later
 * lease, or answered 503; none is answered 201 without its row.
 */
#include <pthread.h>
#include <signal.h>
#include <string.h>

#include "harness.h"
#include "tt.h"

typedef struct lost_arg {
    h_svc_t *s;
    char user[32];
    long status;
    char error[32];
} lost_arg_t;

static void *lost_thread(void *p) {
    lost_arg_t *a = p;
    json_t *j = NULL;
    a->status = h_claim(a->s, "lost", a->user, &j);
    const char *e = json_string_value(json_object_get(j, "error"));
    snprintf(a->error, sizeof(a->error), "%s", e != NULL ? e : "");
    json_decref(j);
    return NULL;
}

static void lost_start(lost_arg_t *a, pthread_t *t, int n, h_svc_t *s) {
    for (int i = 0; i < n; i++) {
        a[i].s = s;
        snprintf(a[i].user, sizeof(a[i].user), "u-%d", i);
        TT_ASSERT(pthread_create(&t[i], NULL, lost_thread, &a[i]) == 0);
    }
}

/* t=0 ten claims at once on one instance (batches of up to 32); the first
 * leader holds its lease and sits in its before_commit pause (400 ms, under
 * the 500 ms TTL, renewed by the watchdog). The whole process is frozen for
 * 1200 ms: the lease expires in Redis. On SIGCONT the commit gate finds the
 * lease lost and rolls the batch back; its claims go back to the head of the
 * queue and the next leases (pauses under the TTL) commit them. Every claim
 * is 201, none 503 lease_lost, and every 201 has its row. */
TT_TEST(comb_batch_lease_lost_requeued, 60) {
    enum { N = 10 };
    h_begin();
    const char *env[] = {"COUPON_BATCH_MAX=32", "COUPON_LOCK_TTL_MS=500",
                         "COUPON_LOCK_WAIT_MS=15000",
                         "COUPON_FAULT=before_commit:400", NULL};
    h_svc_t *s = h_svc_start("requeue", env);
    h_coupon(s, "lost", 20);
    static lost_arg_t a[N];
    pthread_t t[N];
    lost_start(a, t, N, s);
    TT_CMP_INT(h_wait_metric(s, "couponsvc_leases_held", 1, 5000), >=, 1);
    TT_ASSERT(kill(s->pid, SIGSTOP) == 0);
    h_sleep_ms(1200);
    TT_ASSERT(kill(s->pid, SIGCONT) == 0);
    long n201 = 0;
    for (int i = 0; i < N; i++) {
        pthread_join(t[i], NULL);
        printf("# %s: %ld %s\n", a[i].user, a[i].status, a[i].error);
        n201 += a[i].status == 201;
    }
    printf("# leases lost %.0f, batches %.0f\n",
           h_metric(s, "couponsvc_leases_lost_total"),
           h_metric(s, "couponsvc_claim_batch_size_count"));
    TT_CMP_INT(h_metric(s, "couponsvc_leases_lost_total"), >=, 1);
    TT_EQ_INT(n201, N);
    TT_EQ_INT(h_metric(s, "couponsvc_claims_total{outcome=\"lease_lost\"}"), 0);
    h_check_invariants("lost", 20, n201);
}

/* Every lease is lost before COMMIT: the before_commit pause (700 ms) is
 * past the TTL (500 ms) and the max hold (200 ms) stops the renewals. Each
 * batch rolls back and goes back to the queue until its claims' deadlines
 * (2 s) pass: every answer is a 503 (lease_lost, or lock_busy for one whose
 * deadline passed while it waited), nothing is written. */
TT_TEST(comb_batch_lease_always_lost, 60) {
    enum { N = 8 };
    h_begin();
    const char *env[] = {"COUPON_BATCH_MAX=32",
                         "COUPON_LOCK_TTL_MS=500",
                         "COUPON_LOCK_MAX_HOLD_MS=200",
                         "COUPON_LOCK_WAIT_MS=2000",
                         "COUPON_FAULT=before_commit:700",
                         NULL};
    h_svc_t *s = h_svc_start("always", env);
    h_coupon(s, "lost", 20);
    static lost_arg_t a[N];
    pthread_t t[N];
    lost_start(a, t, N, s);
    for (int i = 0; i < N; i++) {
        pthread_join(t[i], NULL);
        printf("# %s: %ld %s\n", a[i].user, a[i].status, a[i].error);
        TT_ASSERT_MSG(a[i].status == 503 &&
                          (strcmp(a[i].error, "lease_lost") == 0 ||
                           strcmp(a[i].error, "lock_busy") == 0),
                      "%s: %ld %s", a[i].user, a[i].status, a[i].error);
    }
    double lost = h_metric(s, "couponsvc_leases_lost_total");
    printf("# leases lost %.0f\n", lost);
    TT_CMP_INT(lost, >=, 2); /* a batch went back and was tried again */
    TT_EQ_INT(h_pg_int("SELECT count(*) FROM claims"), 0);
    h_check_invariants("lost", 20, 0);
}
