/*
 * lg_report.c: what the load generator says after the run.
 *
 * Two concerns, one section each: the verification (the invariant checker of
 * lg_verify.c, shared with the test harness, fed from the answers the
 * workers recorded) and the reporting (the summary on stdout, --json and
 * --csv). The JSON's member names and the CSV's columns are read by
 * loadtest/bench.sh, the soak and the tests: they do not change.
 */
#include "lg_report.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ============================== Verification ==============================
 *
 * After the run, the checker looks at the run's coupons, rows from earlier
 * runs on them included, and at every claim answered 201 or 200: each must
 * have its row. The answered claims are handed to it as request numbers,
 * which name their coupon and user, so nothing is built as strings before
 * it asks.
 */

static void lg_report__coupon(void *arg, uint64_t k, char *coupon, char *user) {
    (void)arg;
    (void)user;
    lg_coupon_name(coupon, LG_VERIFY_ID_MAX, k);
}

/* The answered claims over all workers, 201s first, then 200s, by index.
 * The checker asks for them in index order, so a cursor makes each lookup
 * O(1) amortised. */
typedef struct lg_report__cursor {
    uint64_t base; /* index of the first pair of vector (held, t) */
    bool held;     /* false: the 201s; true: the 200s */
    int t;         /* the worker */
} lg_report__cursor_t;

static void lg_report__pair(void *arg, uint64_t i, char *coupon, char *user) {
    lg_report__cursor_t *c = arg;
    for (;;) {
        const lg_u64vec_t *vec = lg_worker_answers(c->t, c->held);
        if (i >= c->base && i - c->base < vec->n) {
            uint64_t seq = vec->v[i - c->base];
            lg_coupon_name(coupon, LG_VERIFY_ID_MAX,
                           lg_cfg.coupons ? seq % lg_cfg.coupons : 0);
            snprintf(user, LG_VERIFY_ID_MAX, "%s-%" PRIu64, lg_cfg.user_prefix,
                     lg_user_no(seq));
            return;
        }
        if (i < c->base) { /* went backwards: start over */
            *c = (lg_report__cursor_t){0};
            continue;
        }
        c->base += vec->n;
        if (++c->t == lg_cfg.threads) {
            assert(!c->held && "pair index out of range");
            c->t = 0;
            c->held = true;
        }
    }
}

void lg_report_verify(lg_verify_t *v) {
    v->ran = true;
    uint64_t n201 = 0, n200 = 0;
    for (int t = 0; t < lg_cfg.threads; t++) {
        n201 += lg_worker_answers(t, false)->n;
        n200 += lg_worker_answers(t, true)->n;
    }
    lg_report__cursor_t cur = {0};
    lg_verify_list_t coupons = {lg_coupon_count(), lg_report__coupon, NULL};
    lg_verify_list_t answered = {n201 + n200, lg_report__pair, &cur};
    lg_verify_dsn(lg_cfg.verify_dsn, &coupons, &answered, &v->rep);
    /* rep.err says whether it ran; the counts are printed only if it did.
     * claimed_2xx has always counted the 201s; the 200s are beside it. */
    v->rep.claimed_2xx = (long long)n201;
    v->answered_200 = (long long)n200;
}

/* =============================== Reporting =============================== */

/* Write s to f as a quoted JSON string. */
static void lg_report__json_str(FILE *f, const char *s) {
    char *e = lg_json_escape(s);
    fprintf(f, "\"%s\"", e);
    free(e);
}

/* fopen for writing; NULL after printing why. */
static FILE *lg_report__open(const char *path) {
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        fprintf(stderr, "loadgen: %s: %s\n", path, strerror(errno));
    }
    return f;
}

/* fclose f, written to path; -1 after printing why (a full disk shows
 * here, when the buffered rest is written). */
static int lg_report__close(FILE *f, const char *path) {
    if (fclose(f) == 0) {
        return 0;
    }
    fprintf(stderr, "loadgen: %s: %s\n", path, strerror(errno));
    return -1;
}

static const char *lg_report__yes(bool b) {
    return b ? "yes" : "no";
}
static const char *lg_report__flag(bool failed) {
    return failed ? "   <-- FAIL" : "";
}

static void lg_report__print_verify(const lg_verify_t *lv) {
    const lg_verify_report_t *v = &lv->rep;
    if (v->err[0]) {
        printf("verify             ERROR: %s\n", v->err);
        return;
    }
    printf("verify             %s\n", v->ok ? "OK" : "FAILED");
    printf("  coupons          %lld (%lld missing)%s\n", v->coupons,
           v->coupons_missing, lg_report__flag(v->coupons_missing > 0));
    printf("  stock            %lld\n", v->stock);
    printf("  claimed          %lld\n", v->claimed);
    printf("  claim rows       %lld\n", v->claim_rows);
    printf("  201 responses    %lld (and %lld answered 200)\n", v->claimed_2xx,
           lv->answered_200);
    printf("  oversell         %lld (%lld coupons)%s\n", v->oversell,
           v->oversold_coupons, lg_report__flag(v->oversell > 0));
    printf("  duplicate users  %lld%s\n", v->duplicate_users,
           lg_report__flag(v->duplicate_users > 0));
    printf("  rows = claimed   %s (%lld coupons differ)%s\n",
           lg_report__yes(v->rows_mismatch == 0), v->rows_mismatch,
           lg_report__flag(v->rows_mismatch > 0));
    if (v->buckets > 0 || v->bucket_rows_mismatch > 0) {
        printf("  buckets          %lld: oversell %lld (%lld buckets), rows "
               "!= claimed in %lld%s\n",
               v->buckets, v->bucket_oversell, v->oversold_buckets,
               v->bucket_rows_mismatch,
               lg_report__flag(v->bucket_oversell > 0 ||
                               v->bucket_rows_mismatch > 0));
    }
    printf("  missing rows     %lld%s\n", v->missing_rows,
           lg_report__flag(v->missing_rows > 0));
    printf("  seq = 1..rows    %s (%lld counters differ)%s\n",
           lg_report__yes(v->seq_mismatch == 0), v->seq_mismatch,
           lg_report__flag(v->seq_mismatch > 0));
    if (v->fences_increasing < 0) {
        printf("  fences increase  n/a (no fenced rows)\n");
    } else {
        printf("  fences increase  %s (%lld fenced rows, %lld repeats, %lld "
               "decreases; %lld shared within a transaction)%s\n",
               lg_report__yes(v->fences_increasing), v->fenced_rows,
               v->fence_repeats, v->fence_decreases, v->fence_ties_in_tx,
               lg_report__flag(!v->fences_increasing));
    }
    if (v->first[0]) {
        printf("  first violation  %s\n", v->first);
    }
}

/* The run's counts and latency, under the summary's head. */
static void lg_report__print_counts(const lg_result_t *res) {
    const lg_stats_t *t = &res->total;
    printf("requests           %" PRIu64 "\n", t->requests);
    printf("duration           %.2f s\n", res->duration_s);
    printf("achieved rate      %.1f req/s\n", res->rate);
    for (int s = 0; s < LG_STATUS_MAX; s++) {
        if (t->status[s]) {
            printf("status %-3d         %-10" PRIu64 " %s\n", s, t->status[s],
                   lg_status_label(s));
        }
    }
    printf("transport errors   %" PRIu64 "\n", t->errors);
    for (int k = 0; k < CURL_LAST; k++) {
        if (t->err_kind[k]) {
            printf("  %-16" PRIu64 " %s\n", t->err_kind[k],
                   curl_easy_strerror((CURLcode)k));
        }
    }
    if (lg_cfg.rate > 0) {
        printf("sent late (>1 ms)  %" PRIu64 "\n", res->sent_late);
        printf("never sent         %" PRIu64 "%s\n", res->unsent,
               res->unsent ? " (due before the end; raise -c?)" : "");
    }
    printf("latency ms         p50 %.3f  p90 %.3f  p99 %.3f  p99.9 %.3f  max "
           "%.3f\n",
           res->p50, res->p90, res->p99, res->p999, res->max);
    if (lg_cfg.rate > 0) {
        printf("                   (from the intended send time)\n");
    }
    if (res->sample_status) {
        printf("first unexpected   HTTP %ld %s\n", res->sample_status,
               res->sample);
    }
}

void lg_report_summary(const lg_result_t *res, const lg_verify_t *v) {
    if (lg_cfg.verify_only) {
        printf("\nverify only: nothing was sent; coupon%s %s%s\n",
               lg_cfg.coupons > 1 ? "s" : "", lg_cfg.coupon,
               lg_cfg.coupons > 1 ? "-*" : "");
        lg_report__print_verify(v);
        return;
    }
    printf("\n%s %s\n", lg_cfg.raw ? lg_cfg.method : "POST", res->target);
    if (lg_cfg.rate > 0) {
        printf("open loop: %.1f req/s scheduled, at most %d in flight, %d "
               "threads\n",
               lg_cfg.rate, lg_cfg.connections, lg_cfg.threads);
    } else {
        printf("closed loop: %d connections, %d threads\n", lg_cfg.connections,
               lg_cfg.threads);
    }
    if (!lg_cfg.raw) {
        printf("users: %s-*\n", lg_cfg.user_prefix);
    }
    if (res->interrupted) {
        printf("(interrupted)\n");
    }
    printf("\n");
    lg_report__print_counts(res);
    if (v->ran) {
        lg_report__print_verify(v);
    }
}

static void lg_report__verify_json(FILE *f, const lg_verify_t *lv) {
    const lg_verify_report_t *v = &lv->rep;
    if (!lv->ran) {
        fputs("null", f);
        return;
    }
    if (v->err[0]) {
        fputs("{\"ok\":false,\"error\":", f);
        lg_report__json_str(f, v->err);
        fputs("}", f);
        return;
    }
    /* The first sixteen members are the original report's, unchanged in
     * name and meaning; the rest were added with buckets and batches. */
    fprintf(
        f,
        "{\"ok\":%s,\"coupons\":%lld,\"coupons_missing\":%lld,\"stock\":%lld,"
        "\"claimed\":%lld,\"claim_rows\":%lld,\"claimed_2xx\":%lld,"
        "\"oversell\":%lld,"
        "\"oversold_coupons\":%lld,\"duplicate_users\":%lld,\"rows_match_"
        "claimed\":%s,"
        "\"missing_rows\":%lld,\"fences_increasing\":%s,\"fenced_rows\":%lld,"
        "\"fence_repeats\":%lld,\"fence_decreases\":%lld,",
        v->ok ? "true" : "false", v->coupons, v->coupons_missing, v->stock,
        v->claimed, v->claim_rows, v->claimed_2xx, v->oversell,
        v->oversold_coupons, v->duplicate_users,
        v->rows_mismatch == 0 ? "true" : "false", v->missing_rows,
        v->fences_increasing < 0 ? "null"
        : v->fences_increasing   ? "true"
                                 : "false",
        v->fenced_rows, v->fence_repeats, v->fence_decreases);
    fprintf(f,
            "\"rows_mismatch\":%lld,\"answered_200\":%lld,\"buckets\":%lld,"
            "\"bucket_oversell\":%lld,\"oversold_buckets\":%lld,"
            "\"bucket_rows_mismatch\":%lld,\"seq_mismatch\":%lld,"
            "\"fence_ties_in_tx\":%lld,\"first_violation\":",
            v->rows_mismatch, lv->answered_200, v->buckets, v->bucket_oversell,
            v->oversold_buckets, v->bucket_rows_mismatch, v->seq_mismatch,
            v->fence_ties_in_tx);
    if (v->first[0]) {
        lg_report__json_str(f, v->first);
    } else {
        fputs("null", f);
    }
    fputs("}", f);
}

/* The counts: requests, statuses, transport errors by kind. */
static void lg_report__json_counts(FILE *f, const lg_result_t *res) {
    const lg_stats_t *t = &res->total;
    fprintf(f,
            "{\"requests\":%" PRIu64
            ",\"duration_s\":%.3f,\"achieved_rate\":%.1f,",
            t->requests, res->duration_s, res->rate);
    fputs("\"status\":{", f);
    const char *sep = "";
    for (int s = 0; s < LG_STATUS_MAX; s++) {
        if (t->status[s]) {
            fprintf(f, "%s\"%d\":%" PRIu64, sep, s, t->status[s]);
            sep = ",";
        }
    }
    fprintf(f, "},\"transport_errors\":%" PRIu64 ",\"transport_error_kinds\":{",
            t->errors);
    sep = "";
    for (int k = 0; k < CURL_LAST; k++) {
        if (t->err_kind[k]) {
            fputs(sep, f);
            lg_report__json_str(f, curl_easy_strerror((CURLcode)k));
            fprintf(f, ":%" PRIu64, t->err_kind[k]);
            sep = ",";
        }
    }
    fputs("}", f);
}

/* How the run was made: mode, connections, target, names. */
static void lg_report__json_run(FILE *f, const lg_result_t *res) {
    fprintf(
        f,
        ",\"mode\":\"%s\",\"connections\":%d,\"threads\":%d,\"target_rate\":",
        lg_cfg.rate > 0 ? "open" : "closed", lg_cfg.connections,
        lg_cfg.threads);
    if (lg_cfg.rate > 0) {
        fprintf(f, "%.3f,\"sent_late\":%" PRIu64 ",\"unsent\":%" PRIu64 ",",
                lg_cfg.rate, res->sent_late, res->unsent);
    } else {
        fputs("null,", f);
    }
    fputs("\"url\":", f);
    lg_report__json_str(f, res->target);
    fputs(",\"method\":", f);
    lg_report__json_str(f, lg_cfg.raw ? lg_cfg.method : "POST");
    if (!lg_cfg.raw) {
        fputs(",\"coupon\":", f);
        lg_report__json_str(f, lg_cfg.coupon);
        fprintf(f,
                ",\"coupons\":%" PRIu64 ",\"user_prefix\":", lg_coupon_count());
        lg_report__json_str(f, lg_cfg.user_prefix);
    }
    fprintf(f, ",\"interrupted\":%s", res->interrupted ? "true" : "false");
}

int lg_report_json(const char *path, const lg_result_t *res,
                   const lg_verify_t *v) {
    FILE *f = lg_report__open(path);
    if (f == NULL) {
        return -1;
    }
    lg_report__json_counts(f, res);
    lg_report__json_run(f, res);
    fprintf(f,
            ",\"latency_ms\":{\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"p99.9\":"
            "%.3f,"
            "\"max\":%.3f},\"verify\":",
            res->p50, res->p90, res->p99, res->p999, res->max);
    lg_report__verify_json(f, v);
    fputs("}\n", f);
    return lg_report__close(f, path);
}

/* One row per second of the run. The last row also holds the requests that
 * finished after the end; with a fractional --duration it covers less than a
 * second of sending. */
int lg_report_csv(const char *path, const lg_result_t *res) {
    FILE *f = lg_report__open(path);
    if (f == NULL) {
        return -1;
    }
    fputs("second,requests,ok_2xx,status_4xx,status_5xx,errors,p50_ms,p90_ms,"
          "p99_ms,max_ms\n",
          f);
    for (size_t s = 0; s < res->nsecs; s++) {
        const lg_secrow_t *r = &res->secs[s];
        fprintf(f,
                "%zu,%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%" PRIu64
                ",%.3f,%.3f,%.3f,%.3f\n",
                s, r->requests, r->c2xx, r->c4xx, r->c5xx, r->errors, r->p50,
                r->p90, r->p99, r->max);
    }
    return lg_report__close(f, path);
}