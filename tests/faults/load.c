/*
 * load.c: see load.h.
 */
#include "load.h"

#include "itest/harness.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "tt.h"

#define FL__MAX_THREADS 32
#define FL__MAX_SVCS 16

struct fl_load {
    /* A copy of the caller's array (which may be a local of a function that
     * returns while the load runs); the services it points to are borrowed
     * and must outlive the load. */
    h_svc_t *svcs[FL__MAX_SVCS];
    int nsvc;
    char coupon[64], prefix[64];
    int max, pause_ms, nthreads;
    pthread_t threads[FL__MAX_THREADS];

    pthread_mutex_t mu; /* guards everything below */
    int next;           /* next user index to send */
    int stop;
    int stopped;    /* fl_stop ran */
    fl_rec_t *recs; /* max entries; the first n are filled */
    int n;
    long settled;         /* claims found by fl_settle */
    unsigned char *found; /* per user: fl_settle found a claim */
};

/* ---------------------------------------------------------------- http --- */

typedef struct fl__buf {
    h_buf_t body; /* the body, collected by h_buf_write */
    int retry_after;
} fl__buf_t;

static size_t fl__header(char *ptr, size_t size, size_t n, void *arg) {
    fl__buf_t *b = arg;
    if (size * n >= 12 && strncasecmp(ptr, "Retry-After:", 12) == 0) {
        b->retry_after = 1;
    }
    return size * n;
}

void fl_claim(const char *url, const char *coupon, const char *user,
              long timeout_ms, fl_rec_t *r) {
    static __thread CURL *curl;
    if (curl == NULL) {
        curl = curl_easy_init();
    }
    curl_easy_reset(curl);
    char full[128], data[256];
    snprintf(full, sizeof(full), "%s/claim", url);
    snprintf(data, sizeof(data), "{\"coupon_id\":\"%s\",\"user_id\":\"%s\"}",
             coupon, user);
    struct curl_slist *hdr =
        curl_slist_append(NULL, "Content-Type: application/json");
    hdr = curl_slist_append(hdr, "Expect:");
    fl__buf_t b = {0};
    curl_easy_setopt(curl, CURLOPT_URL, full);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, data);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, (long)strlen(data));
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, h_buf_write);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &b.body);
    curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, fl__header);
    curl_easy_setopt(curl, CURLOPT_HEADERDATA, &b);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, 2000L);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_FORBID_REUSE, 1L);

    memset(r, 0, sizeof(*r));
    r->fence = -1;
    r->t0 = h_now_ms();
    if (curl_easy_perform(curl) == CURLE_OK) {
        curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &r->status);
    }
    r->t1 = h_now_ms();
    r->retry_after = b.retry_after;
    curl_slist_free_all(hdr);

    json_t *j = b.body.p != NULL ? json_loads(b.body.p, 0, NULL) : NULL;
    const char *s;
    if ((s = json_string_value(json_object_get(j, "error"))) != NULL) {
        snprintf(r->error, sizeof(r->error), "%s", s);
    }
    if ((s = json_string_value(json_object_get(j, "detail"))) != NULL) {
        snprintf(r->detail, sizeof(r->detail), "%s", s);
    }
    json_t *f = json_object_get(j, "fence");
    if (json_is_integer(f)) {
        r->fence = (long)json_integer_value(f);
    }
    json_decref(j);
    free(b.body.p);
}

/* ---------------------------------------------------------------- load --- */

static void *fl__thread(void *arg) {
    fl_load_t *l = arg;
    for (;;) {
        pthread_mutex_lock(&l->mu);
        int i = l->stop || l->next >= l->max ? -1 : l->next++;
        pthread_mutex_unlock(&l->mu);
        if (i < 0) {
            break;
        }
        char user[96];
        snprintf(user, sizeof(user), "%s-%d", l->prefix, i);
        fl_rec_t r;
        int svc = i % l->nsvc;
        fl_claim(l->svcs[svc]->url, l->coupon, user, 15000, &r);
        r.svc = svc;
        r.user = i;
        pthread_mutex_lock(&l->mu);
        l->recs[l->n++] = r;
        pthread_mutex_unlock(&l->mu);
        if (l->pause_ms > 0) {
            h_sleep_ms(l->pause_ms);
        }
    }
    return NULL;
}

fl_load_t *fl_start(h_svc_t *const *svcs, int nsvc, const char *coupon,
                    const char *prefix, int threads, int max, int pause_ms) {
    fl_load_t *l = calloc(1, sizeof(*l));
    TT_ASSERT(l != NULL);
    TT_ASSERT(nsvc >= 1 && nsvc <= FL__MAX_SVCS);
    memcpy(l->svcs, svcs, (size_t)nsvc * sizeof(*svcs));
    l->nsvc = nsvc;
    snprintf(l->coupon, sizeof(l->coupon), "%s", coupon);
    snprintf(l->prefix, sizeof(l->prefix), "%s", prefix);
    l->max = max;
    l->pause_ms = pause_ms;
    l->nthreads = threads > FL__MAX_THREADS ? FL__MAX_THREADS : threads;
    l->recs = calloc((size_t)max, sizeof(*l->recs));
    l->found = calloc((size_t)max, 1);
    TT_ASSERT(l->recs != NULL && l->found != NULL);
    pthread_mutex_init(&l->mu, NULL);
    for (int i = 0; i < l->nthreads; i++) {
        TT_ASSERT(pthread_create(&l->threads[i], NULL, fl__thread, l) == 0);
    }
    return l;
}

void fl_stop(fl_load_t *l) {
    if (l->stopped) {
        return;
    }
    pthread_mutex_lock(&l->mu);
    l->stop = 1;
    pthread_mutex_unlock(&l->mu);
    for (int i = 0; i < l->nthreads; i++) {
        pthread_join(l->threads[i], NULL);
    }
    l->stopped = 1;
}

void fl_wait(fl_load_t *l) {
    for (int i = 0; i < l->nthreads; i++) {
        pthread_join(l->threads[i], NULL);
    }
    l->stopped = 1;
}

void fl_free(fl_load_t *l) {
    if (l == NULL) {
        return;
    }
    fl_stop(l);
    pthread_mutex_destroy(&l->mu);
    free(l->recs);
    free(l->found);
    free(l);
}

const fl_rec_t *fl_recs(const fl_load_t *l, int *n) {
    *n = l->n;
    return l->recs;
}

/* ------------------------------------------------------------- queries --- */

long fl_count(fl_load_t *l, long status, const char *err) {
    long c = 0;
    pthread_mutex_lock(&l->mu);
    for (int i = 0; i < l->n; i++) {
        c += l->recs[i].status == status &&
             (err == NULL || strcmp(l->recs[i].error, err) == 0);
    }
    pthread_mutex_unlock(&l->mu);
    return c;
}

long fl_count_between(fl_load_t *l, long status, double from, double to) {
    long c = 0;
    pthread_mutex_lock(&l->mu);
    for (int i = 0; i < l->n; i++) {
        const fl_rec_t *r = &l->recs[i];
        c += r->status == status && r->t1 >= from && r->t1 < to;
    }
    pthread_mutex_unlock(&l->mu);
    return c;
}

long fl_count_within(fl_load_t *l, long status, double from, double to) {
    long c = 0;
    pthread_mutex_lock(&l->mu);
    for (int i = 0; i < l->n; i++) {
        const fl_rec_t *r = &l->recs[i];
        if (r->status == status && r->t0 >= from && r->t1 < to) {
            printf("    %ld for %s-%d sent at +%.0f ms, answered at +%.0f ms "
                   "(fence %ld)\n",
                   status, l->prefix, r->user, r->t0 - from, r->t1 - from,
                   r->fence);
            c++;
        }
    }
    pthread_mutex_unlock(&l->mu);
    return c;
}

double fl_first_after(fl_load_t *l, long status, double from) {
    double best = -1;
    pthread_mutex_lock(&l->mu);
    for (int i = 0; i < l->n; i++) {
        const fl_rec_t *r = &l->recs[i];
        if (r->status == status && r->t1 >= from &&
            (best < 0 || r->t1 < best)) {
            best = r->t1;
        }
    }
    pthread_mutex_unlock(&l->mu);
    return best;
}

double fl_max_latency(fl_load_t *l, double from, double to) {
    double worst = 0;
    pthread_mutex_lock(&l->mu);
    for (int i = 0; i < l->n; i++) {
        const fl_rec_t *r = &l->recs[i];
        if (r->t0 >= from && r->t0 < to && r->t1 - r->t0 > worst) {
            worst = r->t1 - r->t0;
        }
    }
    pthread_mutex_unlock(&l->mu);
    return worst;
}

void fl_print(fl_load_t *l, const char *label) {
    /* Distinct (status, error) pairs, in order of first appearance. */
    struct {
        long status;
        char error[24];
        long n;
    } seen[32];
    int ns = 0;
    pthread_mutex_lock(&l->mu);
    for (int i = 0; i < l->n; i++) {
        const fl_rec_t *r = &l->recs[i];
        int k = 0;
        while (k < ns && (seen[k].status != r->status ||
                          strcmp(seen[k].error, r->error) != 0)) {
            k++;
        }
        if (k == ns && ns < 32) {
            seen[ns].status = r->status;
            snprintf(seen[ns].error, sizeof(seen[ns].error), "%s", r->error);
            seen[ns++].n = 0;
        }
        if (k < ns) {
            seen[k].n++;
        }
    }
    int total = l->n;
    pthread_mutex_unlock(&l->mu);
    printf("    %s: %d requests:", label, total);
    for (int k = 0; k < ns; k++) {
        if (seen[k].error[0] != '\0' && seen[k].status != 410) {
            printf(" %ld(%s)=%ld", seen[k].status, seen[k].error, seen[k].n);
        } else {
            printf(" %ld=%ld", seen[k].status, seen[k].n);
        }
    }
    printf("\n");
}

/* ---------------------------------------------------------- accounting --- */

/* A failure that may hide a written claim: the client cannot know. Told by
 * the error code alone: the detail text is for people. */
static int fl__ambiguous(const fl_rec_t *r) {
    return r->status == 0 ||
           (r->status == 503 && strcmp(r->error, "commit_unknown") == 0);
}

long fl_settle(fl_load_t *l, const h_svc_t *svc) {
    fl_stop(l);
    long found = 0, hidden = 0, retried = 0;
    for (int i = 0; i < l->n; i++) {
        const fl_rec_t *r = &l->recs[i];
        TT_ASSERT_MSG(r->status != 200,
                      "%s-%d: already_claimed on the first request", l->prefix,
                      r->user);
        if (r->status == 201 || r->status == 410) {
            continue;
        }
        char user[96];
        snprintf(user, sizeof(user), "%s-%d", l->prefix, r->user);
        /* A retry may itself meet a worker whose connection died in the
         * fault (its first call after a backend restart fails): try a few
         * times. Any ambiguous answer on the way counts as ambiguous. */
        fl_rec_t again;
        int ambiguous = fl__ambiguous(r);
        for (int k = 0; k < 5; k++) {
            fl_claim(svc->url, l->coupon, user, 15000, &again);
            if (again.status != 503 && again.status != 0) {
                break;
            }
            ambiguous |= fl__ambiguous(&again);
            h_sleep_ms(100);
        }
        TT_ASSERT_MSG(
            again.status == 200 || again.status == 201 || again.status == 410,
            "retry of %s (first answer %ld %s) got %ld %s: %s", user, r->status,
            r->error, again.status, again.error, again.detail);
        TT_ASSERT_MSG(again.status != 200 || ambiguous,
                      "%s was answered %ld %s (\"%s\"), which promises that "
                      "nothing was written, but a claim exists",
                      user, r->status, r->error, r->detail);
        retried++;
        hidden += again.status == 200;
        if (again.status == 200 || again.status == 201) {
            l->found[r->user] = 1;
            found++;
        }
    }
    if (retried > 0) {
        printf("    settle: %ld retried: %ld had been written (a cut-off "
               "COMMIT or answer), %ld claimed now\n",
               retried, hidden, found - hidden);
    }
    l->settled += found;
    return found;
}

long fl_durable(fl_load_t *l) {
    return fl_count(l, 201, NULL) + l->settled;
}

void fl_check_rows(fl_load_t *l, const char *coupon) {
    PGconn *c = PQconnectdb(h_dsn());
    TT_ASSERT(PQstatus(c) == CONNECTION_OK);
    char like[80];
    snprintf(like, sizeof(like), "%s-%%", l->prefix);
    const char *p[] = {coupon, like};
    PGresult *res = PQexecParams(c,
                                 "SELECT user_id FROM claims WHERE coupon_id "
                                 "= $1 AND user_id LIKE $2",
                                 2, NULL, p, NULL, NULL, 0);
    TT_ASSERT(PQresultStatus(res) == PGRES_TUPLES_OK);
    unsigned char *row = calloc((size_t)l->max, 1);
    TT_ASSERT(row != NULL);
    size_t plen = strlen(l->prefix) + 1;
    for (int i = 0; i < PQntuples(res); i++) {
        const char *u = PQgetvalue(res, i, 0);
        int idx = atoi(u + plen);
        TT_ASSERT_MSG(idx >= 0 && idx < l->max && !row[idx],
                      "unexpected claim row for %s", u);
        row[idx] = 1;
    }
    PQclear(res);
    PQfinish(c);
    unsigned char *known = calloc((size_t)l->max, 1);
    TT_ASSERT(known != NULL);
    for (int i = 0; i < l->n; i++) {
        if (l->recs[i].status == 201) {
            known[l->recs[i].user] = 1;
        }
    }
    for (int u = 0; u < l->max; u++) {
        int k = known[u] || l->found[u];
        TT_ASSERT_MSG(k == row[u],
                      "%s-%d: the client %s a claim but the table %s one",
                      l->prefix, u, k ? "was given" : "was not given",
                      row[u] ? "has" : "does not have");
    }
    free(row);
    free(known);
}

long fl_drain(h_svc_t *const *svcs, int nsvc, const char *coupon,
              const char *prefix) {
    char sql[320];
    /* A sharded coupon counts its claims in its buckets' rows. */
    snprintf(sql, sizeof(sql),
             "SELECT c.total - CASE WHEN c.buckets = 1 THEN c.claimed"
             " ELSE (SELECT COALESCE(sum(b.claimed), 0) FROM coupon_buckets b"
             " WHERE b.coupon_id = c.id) END FROM coupons c WHERE c.id = '%s'",
             coupon);
    long left = h_pg_int(sql);
    TT_CMP_INT(left, >=, 0);
    fl_load_t *l = fl_start(svcs, nsvc, coupon, prefix, 8, (int)left + 20, 0);
    fl_wait(l);
    fl_print(l, "drain");
    /* Failures here are retried (fl_settle): a worker thread whose backend
     * connection died in the fault fails its first call after it. */
    fl_settle(l, svcs[0]);
    long got = fl_durable(l);
    TT_EQ_INT(got, left);
    fl_check_rows(l, coupon);
    fl_free(l);
    return got;
}

/* ---------------------------------------------------------- one claim --- */

static void *fl__solo_run(void *p) {
    fl_solo_t *so = p;
    fl_claim(so->s->url, so->coupon, so->user, so->timeout_ms, &so->r);
    return NULL;
}

void fl_solo_start(fl_solo_t *so, const h_svc_t *s, const char *coupon,
                   const char *user, long timeout_ms) {
    memset(so, 0, sizeof(*so));
    so->s = s;
    so->timeout_ms = timeout_ms;
    snprintf(so->coupon, sizeof(so->coupon), "%s", coupon);
    snprintf(so->user, sizeof(so->user), "%s", user);
    TT_ASSERT(pthread_create(&so->t, NULL, fl__solo_run, so) == 0);
}

void fl_solo_join(fl_solo_t *so) {
    pthread_join(so->t, NULL);
    printf("    %s on %s: %ld %s fence %ld%s%s\n", so->user, so->s->name,
           so->r.status, so->r.error, so->r.fence, so->r.detail[0] ? ": " : "",
           so->r.detail);
}

/* ------------------------------------------------------------- finish --- */

void fl_finish(const char *coupon, long stock, fl_load_t *const *loads, int nl,
               long extra201, h_svc_t *const *healthy, int nh) {
    long n = extra201;
    for (int i = 0; i < nl; i++) {
        fl_stop(loads[i]);
        fl_settle(loads[i], healthy[0]);
        fl_check_rows(loads[i], coupon);
        n += fl_durable(loads[i]);
    }
    n += fl_drain(healthy, nh, coupon, "drain");
    h_check_invariants(coupon, stock, n);
    char sql[128];
    snprintf(sql, sizeof(sql), "SELECT claimed FROM coupons WHERE id = '%s'",
             coupon);
    TT_EQ_INT(h_pg_int(sql), stock);
}

void fl_finish_one(fl_load_t *l, const char *coupon, long stock, long extra201,
                   h_svc_t *const *healthy, int nh) {
    fl_finish(coupon, stock, &l, 1, extra201, healthy, nh);
    fl_free(l);
}

/* ------------------------------------------ waits and row counts --- */

void fl_wait_201s(fl_load_t *l, long n) {
    double end = h_now_ms() + 15000;
    while (fl_count(l, 201, NULL) < n) {
        TT_ASSERT_MSG(h_now_ms() < end, "the load made no progress");
        h_sleep_ms(10);
    }
}

void fl_failures_clear(fl_load_t *l, double from, double to,
                       const char *const *ok) {
    int n;
    const fl_rec_t *r = fl_recs(l, &n);
    for (int i = 0; i < n; i++) {
        if (r[i].t0 < from || r[i].t0 >= to || r[i].status == 201 ||
            r[i].status == 410) {
            continue;
        }
        int known = ok == NULL;
        for (int k = 0; ok != NULL && ok[k] != NULL; k++) {
            known |= strcmp(r[i].error, ok[k]) == 0;
        }
        TT_ASSERT_MSG(r[i].status == 503 && r[i].retry_after && known,
                      "unclear answer during the fault: %ld %s (%s)%s",
                      r[i].status, r[i].error, r[i].detail,
                      r[i].retry_after ? "" : " without Retry-After");
    }
}

void fl_warm(const char *url, const char *coupon, int n) {
    for (int i = 0; i < n; i++) {
        char user[16];
        snprintf(user, sizeof(user), "warm-%d", i);
        fl_rec_t r;
        fl_claim(url, coupon, user, 10000, &r);
        TT_EQ_INT(r.status, 201);
    }
}

long fl_rows_for_user(const char *user) {
    char sql[160];
    snprintf(sql, sizeof(sql),
             "SELECT count(*) FROM claims WHERE user_id = '%s'", user);
    return h_pg_int(sql);
}

long fl_rows_with_fence(const char *coupon, long fence) {
    char sql[160];
    snprintf(sql, sizeof(sql),
             "SELECT count(*) FROM claims WHERE coupon_id = '%s' AND "
             "fence = %ld",
             coupon, fence);
    return h_pg_int(sql);
}

/* ------------------------------------------------------ movable clock --- */

void fl_clock_init(fl_clock_t *c, const char *name) {
    const char *so = getenv("COUPONSVC_CLOCKSHIFT");
    if (so == NULL) {
        so = "build/tests/libclockshift.so";
    }
    char abs[400];
    TT_ASSERT_MSG(realpath(so, abs) != NULL,
                  "%s missing: run through make test-faults", so);
    snprintf(c->path, sizeof(c->path), "%s/%s", h_test_dir(), name);
    int fd = open(c->path, O_CREAT | O_TRUNC | O_WRONLY, 0644);
    int64_t zero = 0;
    TT_ASSERT(fd >= 0 && write(fd, &zero, sizeof(zero)) == sizeof(zero));
    close(fd);
    snprintf(c->pre, sizeof(c->pre), "LD_PRELOAD=%s", abs);
    snprintf(c->file, sizeof(c->file), "CLOCKSHIFT_FILE=%s", c->path);
    c->env[0] = c->pre;
    c->env[1] = c->file;
    c->env[2] = NULL;
}

void fl_clock_shift(const fl_clock_t *c, int64_t ms) {
    int fd = open(c->path, O_WRONLY);
    TT_ASSERT(fd >= 0 && pwrite(fd, &ms, sizeof(ms), 0) == sizeof(ms));
    close(fd);
}
