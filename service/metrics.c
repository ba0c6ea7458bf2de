/*
 * metrics.c: see metrics.h.
 */
#include "metrics.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mono.h"

static _Atomic uint64_t metrics__c[M__COUNT];
static _Atomic int64_t metrics__leases_held;
static _Atomic int64_t metrics__lock_waiters;

/* Lock wait histogram, upper bounds in seconds. The claim path waits at most
 * COUPON_LOCK_WAIT_MS (2 s by default), so the buckets stop at 10 s. */
static const double metrics__le[] = {0.0005, 0.001, 0.0025, 0.005, 0.01,
                                     0.025,  0.05,  0.1,    0.25,  0.5,
                                     1,      2.5,   5,      10};
#define METRICS__NB (sizeof(metrics__le) / sizeof(metrics__le[0]))
static _Atomic uint64_t metrics__wait_bucket[METRICS__NB];
static _Atomic uint64_t metrics__wait_count;
static _Atomic uint64_t metrics__wait_sum_ns;

/* A histogram with fixed upper bounds; sum in the unit of the samples. */
typedef struct metrics__hist {
    const char *name, *help;
    const double *le;
    size_t nb;
    double scale; /* sample -> rendered unit (1e-9: ns -> s) */
    _Atomic uint64_t bucket[16];
    _Atomic uint64_t count, sum;
} metrics__hist_t;

static const double metrics__batch_le[] = {1, 2, 4, 8, 16, 32, 64, 128, 256};
static metrics__hist_t metrics__batch = {
    "couponsvc_claim_batch_size",
    "Claims one lease carried in one transaction.",
    metrics__batch_le,
    sizeof(metrics__batch_le) / sizeof(metrics__batch_le[0]),
    1,
    {0},
    0,
    0};
static metrics__hist_t metrics__queue = {
    "couponsvc_claim_queue_seconds",
    "Time a claim waited in its coupon's queue for a leader's batch.",
    metrics__le,
    sizeof(metrics__le) / sizeof(metrics__le[0]),
    1e-9,
    {0},
    0,
    0};
static _Atomic int64_t metrics__parked;

static void metrics__hist_add(metrics__hist_t *h, uint64_t v) {
    double x = (double)v * h->scale;
    for (size_t i = 0; i < h->nb; i++) {
        if (x <= h->le[i]) {
            atomic_fetch_add_explicit(&h->bucket[i], 1, memory_order_relaxed);
            break;
        }
    }
    atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum, v, memory_order_relaxed);
}

void metrics_observe_batch(uint32_t size) {
    metrics__hist_add(&metrics__batch, size);
}

void metrics_observe_queue_wait(uint64_t ns) {
    metrics__hist_add(&metrics__queue, ns);
}

void metrics_set_parked(int64_t n) {
    atomic_store_explicit(&metrics__parked, n, memory_order_relaxed);
}

void metrics_inc(metrics_counter_t c) {
    atomic_fetch_add_explicit(&metrics__c[c], 1, memory_order_relaxed);
}

uint64_t metrics_get(metrics_counter_t c) {
    return atomic_load_explicit(&metrics__c[c], memory_order_relaxed);
}

static _Atomic int metrics__backend_up[M_BACKEND__COUNT];
static _Atomic int64_t metrics__backend_checked_ns[M_BACKEND__COUNT];

void metrics_set_backend(metrics_backend_t b, int up, int64_t checked_ns) {
    atomic_store(&metrics__backend_up[b], up);
    atomic_store(&metrics__backend_checked_ns[b], checked_ns);
}

void metrics_set_leases_held(int64_t n) {
    atomic_store_explicit(&metrics__leases_held, n, memory_order_relaxed);
}

void metrics_add_lock_waiters(int64_t delta) {
    atomic_fetch_add_explicit(&metrics__lock_waiters, delta,
                              memory_order_relaxed);
}

void metrics_observe_lock_wait(uint64_t ns) {
    double s = (double)ns / 1e9;
    for (size_t i = 0; i < METRICS__NB; i++) {
        if (s <= metrics__le[i]) {
            atomic_fetch_add_explicit(&metrics__wait_bucket[i], 1,
                                      memory_order_relaxed);
            break;
        }
    }
    atomic_fetch_add_explicit(&metrics__wait_count, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&metrics__wait_sum_ns, ns, memory_order_relaxed);
}

/* A growing text buffer; on allocation failure it keeps failing quietly and
 * metrics_render returns NULL. */
typedef struct metrics__buf {
    char *p;
    size_t len, cap;
    int failed;
} metrics__buf_t;

__attribute__((format(printf, 2, 3))) static void
metrics__printf(metrics__buf_t *b, const char *fmt, ...) {
    if (b->failed) {
        return;
    }
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->failed = 1;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap * 2 + (size_t)n;
        char *p = realloc(b->p, cap);
        if (p == NULL) {
            b->failed = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
}

typedef struct metrics__family {
    const char *name;
    const char *help;
    const char *label; /* NULL: no label */
    struct {
        metrics_counter_t c;
        const char *value;
    } series[16];
} metrics__family_t;

static const metrics__family_t metrics__families[] = {
    {"couponsvc_claims_total",
     "Claims answered, by outcome.",
     "outcome",
     {{M_CLAIM_CLAIMED, "claimed"},
      {M_CLAIM_ALREADY, "already_claimed"},
      {M_CLAIM_SOLD_OUT, "sold_out"},
      {M_CLAIM_NOT_FOUND, "not_found"},
      {M_CLAIM_FENCED, "fenced"},
      {M_CLAIM_BUSY, "lock_busy"},
      {M_CLAIM_UNAVAILABLE, "unavailable"},
      {M_CLAIM_LEASE_LOST, "lease_lost"},
      {M_CLAIM_COMMIT_UNKNOWN, "commit_unknown"},
      {M_CLAIM_BAD_REQUEST, "bad_request"},
      {M_CLAIM_OVERLOADED, "overloaded"},
      {M_CLAIM_SHUTTING_DOWN, "shutting_down"},
      {M_CLAIM_NOT_STARTED, "not_started"},
      {M_CLAIM_EXPIRED, "expired"},
      {M__COUNT, NULL}}},
    {"couponsvc_lock_acquisitions_total",
     "Lock acquire attempts, by result.",
     "result",
     {{M_LOCK_OK, "ok"},
      {M_LOCK_BUSY, "busy"},
      {M_LOCK_ERROR, "error"},
      {M__COUNT, NULL}}},
    {"couponsvc_watchdog_renewals_total",
     "Lease renewals sent by the watchdog, by result.",
     "result",
     {{M_WD_RENEW_OK, "ok"}, {M_WD_RENEW_FAILED, "failed"}, {M__COUNT, NULL}}},
    {"couponsvc_leases_lost_total",
     "Leases marked lost (renewal refused, TTL ran out, or held past "
     "COUPON_LOCK_MAX_HOLD_MS).",
     NULL,
     {{M_LEASES_LOST, NULL}, {M__COUNT, NULL}}},
    {"couponsvc_fenced_refusals_total",
     "Writes PostgreSQL refused because their fence was stale.",
     NULL,
     {{M_FENCED_REFUSALS, NULL}, {M__COUNT, NULL}}},
    {"couponsvc_fence_counter_recoveries_total",
     "Claims fenced while still holding the lock (Redis had lost the "
     "fence counter) that raised it to last_fence and retried.",
     NULL,
     {{M_FENCE_RECOVERIES, NULL}, {M__COUNT, NULL}}},
    {"couponsvc_claims_degraded_total",
     "Claims run without the lock, by PostgreSQL's conditional UPDATE alone, "
     "because the lock backend was unavailable "
     "(COUPON_LOCK_UNAVAILABLE=atomic).",
     NULL,
     {{M_CLAIMS_DEGRADED, NULL}, {M__COUNT, NULL}}},
    {"couponsvc_backend_errors_total",
     "Errors talking to a backend.",
     "backend",
     {{M_REDIS_ERRORS, "redis"}, {M_PG_ERRORS, "postgres"}, {M__COUNT, NULL}}},
    {"couponsvc_postgres_timeouts_total",
     "PostgreSQL calls cut short: by the server's statement_timeout, or by "
     "the client's deadline (the connection is then dropped).",
     "kind",
     {{M_PG_STATEMENT_TIMEOUTS, "statement"},
      {M_PG_DEADLINE_DROPS, "deadline"},
      {M__COUNT, NULL}}},
    {"couponsvc_admissions_refused_total",
     "Claims answered 503 overloaded at once, by the bound they hit.",
     "reason",
     {{M_ADMIT_QUEUE_FULL, "coupon_queue_full"},
      {M_ADMIT_PROCESS_FULL, "process_queue_full"},
      {M_ADMIT_DEADLINE, "deadline"},
      {M__COUNT, NULL}}},
    {"couponsvc_soldout_fastpath_total",
     "Claims on a coupon this instance knows sold out or expired: answered "
     "410 from memory, or (a claimant) 200 with its claim from memory.",
     "result",
     {{M_FAST_SOLD_OUT, "sold_out"},
      {M_FAST_CLAIMANT, "claimant"},
      {M_FAST_EXPIRED, "expired"},
      {M__COUNT, NULL}}},
    {"couponsvc_soldout_memos_total",
     "Sold-out or expired coupons whose claimant set this instance loaded.",
     NULL,
     {{M_MEMOS_BUILT, NULL}, {M__COUNT, NULL}}},
    {"couponsvc_lock_grants_total",
     "Lock leases granted to this process (its share of a hot coupon).",
     NULL,
     {{M_LOCK_GRANTS, NULL}, {M__COUNT, NULL}}},
    {"couponsvc_lock_wakeups_total",
     "Lock waiters that tried again, by what woke them.",
     "cause",
     {{M_LOCK_WAKE_MESSAGE, "message"},
      {M_LOCK_WAKE_RECHECK, "recheck"},
      {M_LOCK_WAKE_RECONNECT, "reconnect"},
      {M__COUNT, NULL}}},
};

static void metrics__hist_render(metrics__buf_t *b, metrics__hist_t *h);

/* Every counter family of the table, with its series. */
static void metrics__render_counters(metrics__buf_t *b) {
    for (size_t f = 0;
         f < sizeof(metrics__families) / sizeof(metrics__families[0]); f++) {
        const metrics__family_t *fam = &metrics__families[f];
        metrics__printf(b, "# HELP %s %s\n# TYPE %s counter\n", fam->name,
                        fam->help, fam->name);
        for (int i = 0; fam->series[i].c != M__COUNT; i++) {
            uint64_t v = metrics_get(fam->series[i].c);
            if (fam->label != NULL) {
                metrics__printf(b, "%s{%s=\"%s\"} %llu\n", fam->name,
                                fam->label, fam->series[i].value,
                                (unsigned long long)v);
            } else {
                metrics__printf(b, "%s %llu\n", fam->name,
                                (unsigned long long)v);
            }
        }
    }
}

/* The lock-wait histogram (its own buckets, metrics__le). */
static void metrics__render_lock_wait(metrics__buf_t *b) {
    metrics__printf(b, "# HELP couponsvc_lock_wait_seconds Time from the "
                       "first acquire attempt to the grant or give-up.\n"
                       "# TYPE couponsvc_lock_wait_seconds histogram\n");
    uint64_t cum = 0;
    for (size_t i = 0; i < METRICS__NB; i++) {
        cum += atomic_load(&metrics__wait_bucket[i]);
        metrics__printf(b,
                        "couponsvc_lock_wait_seconds_bucket{le=\"%g\"} %llu\n",
                        metrics__le[i], (unsigned long long)cum);
    }
    uint64_t count = atomic_load(&metrics__wait_count);
    metrics__printf(b,
                    "couponsvc_lock_wait_seconds_bucket{le=\"+Inf\"} %llu\n"
                    "couponsvc_lock_wait_seconds_sum %.6f\n"
                    "couponsvc_lock_wait_seconds_count %llu\n",
                    (unsigned long long)count,
                    (double)atomic_load(&metrics__wait_sum_ns) / 1e9,
                    (unsigned long long)count);
}

/* The readiness probe's view of each backend: up, and how old that is. */
static void metrics__render_backends(metrics__buf_t *b) {
    static const char *const backend_names[M_BACKEND__COUNT] = {"redis",
                                                                "postgres"};
    metrics__printf(b, "# HELP couponsvc_backend_up 1 if the readiness "
                       "probe's last check of the backend succeeded.\n"
                       "# TYPE couponsvc_backend_up gauge\n");
    for (int i = 0; i < M_BACKEND__COUNT; i++) {
        if (atomic_load(&metrics__backend_checked_ns[i]) != 0) {
            metrics__printf(b, "couponsvc_backend_up{backend=\"%s\"} %d\n",
                            backend_names[i],
                            atomic_load(&metrics__backend_up[i]));
        }
    }
    metrics__printf(b, "# HELP couponsvc_backend_check_age_seconds Time "
                       "since that check finished.\n"
                       "# TYPE couponsvc_backend_check_age_seconds gauge\n");
    int64_t now = mono_ns();
    for (int i = 0; i < M_BACKEND__COUNT; i++) {
        int64_t at = atomic_load(&metrics__backend_checked_ns[i]);
        if (at != 0) {
            metrics__printf(
                b, "couponsvc_backend_check_age_seconds{backend=\"%s\"} %.3f\n",
                backend_names[i], (double)(now - at) / 1e9);
        }
    }
}

char *metrics_render(const char *instance, const char *mode, size_t *len) {
    metrics__buf_t b = {.p = malloc(4096), .cap = 4096};
    if (b.p == NULL) {
        return NULL;
    }

    metrics__printf(&b,
                    "# HELP couponsvc_info Build and configuration.\n"
                    "# TYPE couponsvc_info gauge\n"
                    "couponsvc_info{instance=\"%s\",mode=\"%s\"} 1\n",
                    instance, mode);

    metrics__render_counters(&b);

    metrics__printf(&b,
                    "# HELP couponsvc_leases_held Leases the watchdog keeps "
                    "alive now.\n"
                    "# TYPE couponsvc_leases_held gauge\n"
                    "couponsvc_leases_held %lld\n",
                    (long long)atomic_load(&metrics__leases_held));
    metrics__printf(&b,
                    "# HELP couponsvc_lock_waiters Claims of this process "
                    "waiting for a busy lock now.\n"
                    "# TYPE couponsvc_lock_waiters gauge\n"
                    "couponsvc_lock_waiters %lld\n",
                    (long long)atomic_load(&metrics__lock_waiters));

    metrics__render_lock_wait(&b);
    metrics__hist_render(&b, &metrics__batch);
    metrics__hist_render(&b, &metrics__queue);
    metrics__printf(&b,
                    "# HELP couponsvc_claims_parked Claims parked in the "
                    "per-coupon queues now.\n"
                    "# TYPE couponsvc_claims_parked gauge\n"
                    "couponsvc_claims_parked %lld\n",
                    (long long)atomic_load(&metrics__parked));

    metrics__render_backends(&b);

    if (b.failed) {
        free(b.p);
        return NULL;
    }
    *len = b.len;
    return b.p;
}

static void metrics__hist_render(metrics__buf_t *b, metrics__hist_t *h) {
    metrics__printf(b, "# HELP %s %s\n# TYPE %s histogram\n", h->name, h->help,
                    h->name);
    uint64_t cum = 0;
    for (size_t i = 0; i < h->nb; i++) {
        cum += atomic_load(&h->bucket[i]);
        metrics__printf(b, "%s_bucket{le=\"%g\"} %llu\n", h->name, h->le[i],
                        (unsigned long long)cum);
    }
    uint64_t count = atomic_load(&h->count);
    metrics__printf(b,
                    "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.6f\n"
                    "%s_count %llu\n",
                    h->name, (unsigned long long)count, h->name,
                    (double)atomic_load(&h->sum) * h->scale, h->name,
                    (unsigned long long)count);
}
