/*
 * loadgen.c -- the couponsvc load generator.
 *
 * It sends claim requests (POST /claim) to couponsvc, or plain requests to
 * any trivial endpoint, as fast as a fixed number of connections allow
 * (closed loop) or on a fixed schedule (open loop). It prints a summary with
 * per-status counts and latency percentiles, can write the same as JSON and a
 * per-second CSV, and, given a PostgreSQL DSN, checks afterwards that the
 * database agrees with what the clients were told: no coupon handed out beyond
 * its stock, no 201 without a claim row, fences increasing in commit order.
 *
 * The file reads top to bottom, one section per concern, in the manner of
 * antirez's kilo: configuration, small helpers, request naming, statistics,
 * the event loop, the admin call, what is gathered after the run, and
 * finally main(). Beside it: lg_cli.c (the command line: one table of
 * options), lg_hist.c (the latency histogram), lg_report.c (the
 * verification and the summary, JSON and CSV), lg_http.c (the response
 * reader) and lg_verify.c (the invariant checker in PostgreSQL, shared with
 * the test harness); loadgen.h is what they share.
 *
 * Design
 * ------
 *
 * T worker threads each own one epoll set and C/T connections. A worker
 * never shares any of these, so the hot path takes no lock.
 *
 * libcurl makes the connections and moves the bytes; loadgen writes the
 * requests and reads the responses (lg_http.c). Each connection is a
 * CURLOPT_CONNECT_ONLY easy handle in a multi handle of its own: libcurl
 * resolves the name, connects without blocking the worker (its socket and
 * timer callbacks feed the worker's epoll set) and, for https:// URLs, does
 * TLS; curl_easy_send and curl_easy_recv then carry one request and one
 * response at a time over the kept-alive connection. The worker's loop is:
 *
 *      start requests on idle connections  (closed loop: all of them;
 *                                           open loop: those that are due)
 *                                          a request is written to the socket
 *                                          at once; a connection that has no
 *                                          socket yet asks libcurl for one
 *      epoll_wait                          (sockets, the schedule timerfd,
 *                                           libcurl's connect timeouts)
 *      for each ready socket               read, feed the response reader;
 *                                          when a response is complete,
 *                                          record its status and latency and
 *                                          give the connection back to the
 *                                          idle list
 *
 * Per request that is one send and one recv system call, nothing else: no
 * epoll_ctl (a socket stays registered for EPOLLIN for its whole life), no
 * allocation, one clock read at each end.
 *
 * Why not let libcurl run each request as a transfer (curl_multi with
 * reused easy handles)? That is what loadgen did first, and it cost about
 * 12 us of CPU per request on a 2-core VM against wrk's 7.5: libcurl 7.88
 * spends some 5 us per transfer on work a load generator does not need
 * (details in lg_http.h). On a machine that runs the server too, that CPU
 * comes out of the server's share, and loadgen reached 0.82 of wrk's rate
 * on a trivial endpoint. Now it spends about 6 us per request, less than
 * wrk, and `make bench-loadgen` keeps that claim honest.
 *
 * A kept-alive connection can be closed by the server just as a request is
 * sent on it; that request then fails before any byte of answer. As libcurl
 * does, such a request is sent once more on a new connection (only when the
 * connection had carried a response before, so a server that refuses every
 * request is still counted). Responses that end with "Connection: close",
 * HTTP/1.0 without keep-alive, or a body ended by the end of the connection
 * close it; the next request on that slot connects again. Timeouts are
 * looked for every 10 ms; a request past --timeout-ms (connect included)
 * ends as a transport error and its connection is closed.
 *
 * Closed loop (-c N): every connection sends its next request as soon as the
 * previous one is answered. Latency is measured from the moment a request
 * starts (is written, or waits for its connection). This measures what N
 * impatient clients see, but the offered load drops when the server slows down,
 * so it hides queueing.
 *
 * Open loop (--rate R): request i is due at start + i/R, whatever happened to
 * the previous ones; worker w sends requests w, w+T, w+2T, ... so together the
 * workers follow one schedule. -c caps the requests in flight. When a request
 * cannot go out on time (every handle is busy, or the machine is slow), it is
 * sent as soon as it can be, and its latency is STILL measured from the time
 * it was due. Measuring from the actual send time instead would be
 * "coordinated omission": a stalled server stops the client from sending, so
 * the requests that would have waited longest are never measured, and a
 * ten-second stall shows up as one slow request instead of thousands. The
 * summary also counts requests sent more than 1 ms late, and those that were
 * due before the end but never went out.
 *
 * Latency goes into a log-linear histogram in the manner of HdrHistogram: 128
 * linear sub-buckets per power of two, so any recorded value is known within
 * 1/128 (under 1%) from 1 us up to about 70 minutes. Each worker has one for
 * the whole run and one for the current second; at every second boundary a
 * worker merges its per-second numbers into a shared row under a mutex (once
 * a second per worker, so the lock never shows in a profile). The main thread
 * merges the whole-run histograms after the workers have finished.
 *
 * The main thread only prints the progress line (on a TTY), turns Ctrl-C into
 * "stop sending" (a second Ctrl-C abandons requests still in flight), and does
 * everything before and after the run: --create-stock, --verify-dsn, the
 * summary, --json and --csv.
 *
 * Exit status: 0 fine; 1 could not run (setup failed, --create-stock failed,
 * no HTTP response at all, verification could not reach the database);
 * 2 usage error; 3 verification ran and found a violation.
 */

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "lg_hist.h"
#include "lg_http.h"
#include "lg_report.h"
#include "loadgen.h"
#include "mono.h"

/* ============================= Configuration ============================= */

#define LG_BODY_MAX 640    /* claim body: two escaped names and numbers */
#define LG_SAMPLE_MAX 160  /* bytes of a response body kept as a sample */
#define LG_NS MONO_S       /* nanoseconds per second */
#define LG_LATE_NS MONO_MS /* open loop: later than this counts as late */
#define LG_WAIT_MAX_MS 50  /* longest epoll wait, so a stop is noticed */
#define LG_SWEEP_NS (LG_NS / 100) /* how often timeouts are looked for */
#define LG_PROGRESS_NS (LG_NS / 4)

/* Derived once from lg_cfg before the run. */
static char *lg__target;        /* the URL every request goes to */
static char *lg__coupon_json;   /* lg_cfg.coupon escaped for a JSON string */
static char *lg__prefix_json;   /* lg_cfg.user_prefix escaped likewise */
static char *lg__req_head;      /* request line and headers, up to the length */
static size_t lg__req_head_len; /* strlen(lg__req_head) */
static size_t lg__req_max;      /* room for a whole request */

/* Run control, shared by all threads. */
static int64_t lg__start_ns;          /* first request may go (MONOTONIC) */
static int64_t lg__end_ns;            /* no request may start from here on */
static int64_t lg__last_sec;          /* CSV row that also takes the drain */
static atomic_int lg__stop;           /* 1: stop sending; 2: also abandon */
static atomic_uint_fast64_t lg__next; /* closed loop: next request number */
static atomic_int lg__workers_done;   /* workers that left their loop */
static volatile sig_atomic_t lg__interrupts; /* SIGINT/SIGTERM received */

/* ================================ Helpers ================================ */

void lg_vexit(int code, const char *tail, const char *fmt, va_list ap) {
    fputs("loadgen: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs(tail, stderr);
    va_end(ap);
    exit(code);
}

/* Print "loadgen: <message>" and exit 1. */
void lg_die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    lg_vexit(LG_EXIT_ERROR, "\n", fmt, ap);
}

/* Returns new memory, zeroed; never NULL. */
void *lg_calloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (p == NULL) {
        lg_die("out of memory");
    }
    return p;
}

/* Returns p resized (p is stolen); never NULL. */
static void *lg__realloc(void *p, size_t size) {
    void *q = realloc(p, size ? size : 1);
    if (q == NULL) {
        lg_die("out of memory");
    }
    return q;
}

/* Returns a new copy of s. */
char *lg_strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = lg_calloc(n, 1);
    memcpy(p, s, n);
    return p;
}

/* Returns a new string, formatted. */
char *lg_sprintf(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    assert(n >= 0);
    char *p = lg_calloc((size_t)n + 1, 1);
    va_start(ap, fmt);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return p;
}

/* Returns a new string: s escaped for the inside of a JSON string. Bytes
 * from 0x80 up pass through, so UTF-8 stays UTF-8. */
char *lg_json_escape(const char *s) {
    char *out = lg_calloc(strlen(s) * 6 + 1, 1), *o = out;
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            *o++ = '\\';
            *o++ = (char)ch;
        } else if (ch < 0x20) {
            o += sprintf(o, "\\u%04x", ch);
        } else {
            *o++ = (char)ch;
        }
    }
    return out;
}

static void lg__u64vec_push(lg_u64vec_t *a, uint64_t x) {
    if (a->n == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 1024;
        a->v = lg__realloc(a->v, a->cap * sizeof *a->v);
    }
    a->v[a->n++] = x;
}

/* ============================= Request naming =============================
 *
 * A request is known by its number alone (0, 1, 2, ...). The number names its
 * user and its coupon, so the load generator only has to remember the numbers
 * of the requests that were answered 201 to ask PostgreSQL about them later.
 */

uint64_t lg_user_no(uint64_t seq) {
    return lg_cfg.users ? seq % lg_cfg.users : seq;
}

/* The claim body for request seq into buf; returns its length. */
static size_t lg__claim_body(char *buf, size_t cap, uint64_t seq) {
    int n;
    if (lg_cfg.coupons) {
        n = snprintf(buf, cap,
                     "{\"coupon_id\":\"%s-%" PRIu64
                     "\",\"user_id\":\"%s-%" PRIu64 "\"}",
                     lg__coupon_json, seq % lg_cfg.coupons, lg__prefix_json,
                     lg_user_no(seq));
    } else {
        n = snprintf(buf, cap,
                     "{\"coupon_id\":\"%s\",\"user_id\":\"%s-%" PRIu64 "\"}",
                     lg__coupon_json, lg__prefix_json, lg_user_no(seq));
    }
    assert(n > 0 && (size_t)n < cap); /* the CLI bounds the name lengths */
    return (size_t)n;
}

/* Request seq, whole, into buf (lg__req_max bytes); returns its length. The
 * request line and the fixed headers were written once (lg__req_setup); a
 * claim adds its Content-Length and body. */
static size_t lg__build_request(char *buf, uint64_t seq) {
    memcpy(buf, lg__req_head, lg__req_head_len);
    char *p = buf + lg__req_head_len;
    if (lg_cfg.raw) {
        memcpy(p, "\r\n", 2);
        return lg__req_head_len + 2;
    }
    char body[LG_BODY_MAX];
    size_t n = lg__claim_body(body, sizeof body, seq);
    p += sprintf(p, "Content-Length: %zu\r\n\r\n", n);
    memcpy(p, body, n);
    return (size_t)(p - buf) + n;
}

/* Coupon k of the run (k < lg_coupon_count()) into buf, unescaped. */
void lg_coupon_name(char *buf, size_t cap, uint64_t k) {
    if (lg_cfg.coupons) {
        snprintf(buf, cap, "%s-%" PRIu64, lg_cfg.coupon, k);
    } else {
        snprintf(buf, cap, "%s", lg_cfg.coupon);
    }
}

uint64_t lg_coupon_count(void) {
    return lg_cfg.coupons ? lg_cfg.coupons : 1;
}

/* Open loop: when request seq is due. */
static int64_t lg__due_ns(uint64_t seq) {
    return lg__start_ns + (int64_t)((double)seq * 1e9 / lg_cfg.rate);
}

/* Open loop: how many requests the schedule holds before the end. */
static uint64_t lg__scheduled(void) {
    uint64_t n = (uint64_t)ceil(lg_cfg.duration * lg_cfg.rate);
    while (n > 0 && lg__due_ns(n - 1) >= lg__end_ns) {
        n--;
    }
    while (lg__due_ns(n) < lg__end_ns) {
        n++;
    }
    if (lg_cfg.requests && n > lg_cfg.requests) {
        n = lg_cfg.requests;
    }
    return n;
}

/* =============================== Statistics =============================== */

/* What a worker counts for the current second. */
typedef struct lg_secstats {
    uint64_t requests, c2xx, c4xx, c5xx, errors; /* as in lg_stats_t */
    lg_hist_t *lat;                              /* owned */
} lg_secstats_t;

/* The rows, grown on demand. Guarded by lg__secs_lock. */
static pthread_mutex_t lg__secs_lock = PTHREAD_MUTEX_INITIALIZER;
static lg_secrow_t *lg__secs;
static size_t lg__nsecs;

static void lg__secrow_close(lg_secrow_t *r) {
    if (r->lat == NULL) {
        return;
    }
    r->p50 = lg_us_to_ms(lg_hist_percentile(r->lat, 50));
    r->p90 = lg_us_to_ms(lg_hist_percentile(r->lat, 90));
    r->p99 = lg_us_to_ms(lg_hist_percentile(r->lat, 99));
    r->max = lg_us_to_ms(r->lat->max);
    free(r->lat);
    r->lat = NULL;
}

/* Add one worker's numbers for second `sec` to the shared row, then clear
 * them. Takes lg__secs_lock. */
static void lg__secs_merge(int64_t sec, lg_secstats_t *s, int nworkers) {
    pthread_mutex_lock(&lg__secs_lock);
    if ((size_t)sec >= lg__nsecs) {
        size_t n = (size_t)sec + 1;
        lg__secs = lg__realloc(lg__secs, n * sizeof *lg__secs);
        memset(lg__secs + lg__nsecs, 0, (n - lg__nsecs) * sizeof *lg__secs);
        lg__nsecs = n;
    }
    lg_secrow_t *r = &lg__secs[sec];
    r->requests += s->requests;
    r->c2xx += s->c2xx;
    r->c4xx += s->c4xx;
    r->c5xx += s->c5xx;
    r->errors += s->errors;
    if (r->reported == 0) {
        r->lat = lg_calloc(1, sizeof *r->lat);
    }
    if (r->lat) {
        lg_hist_merge(r->lat, s->lat);
    }
    if (++r->reported == nworkers) {
        lg__secrow_close(r);
    }
    pthread_mutex_unlock(&lg__secs_lock);

    lg_hist_t *lat = s->lat;
    memset(lat, 0, sizeof *lat);
    memset(s, 0, sizeof *s);
    s->lat = lat;
}

/* ================================ Workers ================================= */

/* Counters a worker publishes for the progress line (relaxed atomics: the
 * line is a glance, not a measurement). */
enum {
    LG_LIVE_REQ,
    LG_LIVE_ERR,
    LG_LIVE_2XX,
    LG_LIVE_4XX,
    LG_LIVE_5XX,
    LG_LIVE_201,
    LG_LIVE_200,
    LG_LIVE_409,
    LG_LIVE_410,
    LG_LIVE_503,
    LG_LIVE_N
};

struct lg_worker;

/* What a connection is doing. */
typedef enum lg_cstate {
    LG_C_IDLE,       /* no request; the socket may be open (keep-alive) */
    LG_C_CONNECTING, /* libcurl is making the connection for a request */
    LG_C_SENDING,    /* the request is partly sent; waiting for EPOLLOUT */
    LG_C_READING,    /* the request is sent; reading its response */
} lg_cstate_t;

/* One connection and the request it is carrying.
 *
 * The easy handle is a CURLOPT_CONNECT_ONLY handle in a multi handle of its
 * own. libcurl makes the connection inside that multi handle without
 * blocking the worker (the socket callback puts the connecting sockets in the
 * worker's epoll set), and the finished connection stays in that multi
 * handle's cache, where curl_easy_send and curl_easy_recv find it. A multi
 * handle per connection, not one per worker, because libcurl 7.88 looks the
 * connection up by walking the cache on every send and receive: with one
 * entry that walk is free.
 *
 * Invariants: fd >= 0 exactly when a connection is open, and then in_multi;
 * state == LG_C_IDLE exactly when the connection is on the worker's idle
 * list; state == LG_C_CONNECTING exactly when it counts in w->nconnecting. */
typedef struct lg_conn {
    struct lg_worker *w;      /* the owner */
    uint32_t idx;             /* position in w->conns; epoll events carry it */
    CURL *easy;               /* owned */
    CURLM *multi;             /* owned; holds easy while in_multi */
    bool in_multi;            /* easy is added to multi */
    int fd;                   /* the open connection's socket; -1 = none */
    uint32_t events;          /* what fd is registered for in epoll */
    lg_cstate_t state;        /* see lg_cstate_t */
    int64_t curl_deadline_ns; /* connecting: libcurl's timeout; -1 = none */
    bool reused;              /* the connection has carried a response */
    bool got_bytes;           /* some of the response has arrived */
    uint64_t seq;             /* the request number being carried */
    int64_t t0_ns;            /* latency origin: start or due time */
    int64_t start_ns;         /* when it started; the timeout counts from */
    char *req;                /* owned: the request's bytes */
    size_t req_len, req_off;  /* its length, and how much is sent */
    lg_http_resp_t resp;      /* reads the response */
    char rbuf[LG_HTTP_HEAD_MAX]; /* received, not yet consumed by resp */
    size_t rlen;                 /* bytes in rbuf */
    char sample[LG_SAMPLE_MAX];  /* start of the response body (resp) */
    struct lg_conn *next_idle;   /* idle list link */
} lg_conn_t;

/* A worker thread and all it owns. main() sets it up before the thread
 * starts and reads it after the join; in between only the worker touches it,
 * except `live`, which main() reads at any time for the progress line. */
typedef struct lg_worker {
    int id; /* 0 .. threads-1 */
    pthread_t thread;
    int epfd;               /* epoll set: sockets and sched_fd */
    int sched_fd;           /* timerfd: the open-loop schedule */
    int64_t sched_armed_ns; /* what sched_fd is armed for; 0 = not */
    lg_conn_t *conns;       /* owned, nconns of them */
    int nconns;
    lg_conn_t *idle;     /* connections not carrying a request */
    int inflight;        /* == nconns - length of idle */
    int nconnecting;     /* connections in LG_C_CONNECTING */
    int64_t sweep_ns;    /* next look for requests past their timeout */
    bool sending_done;   /* no new request will start */
    uint64_t next_seq;   /* open loop: next request, id + k*threads */
    uint64_t sent;       /* requests started */
    uint64_t sent_late;  /* open loop: sent > 1 ms after due */
    int64_t end_ns;      /* when the loop ended */
    lg_stats_t total;    /* the whole run */
    lg_secstats_t sec;   /* the current second */
    int64_t sec_no;      /* which second `sec` is */
    lg_u64vec_t claimed; /* numbers of requests answered 201 */
    lg_u64vec_t held;    /* numbers of requests answered 200 (the user's
                            existing claim) */
    long sample_status;  /* first unexpected status, 0 = none yet */
    char sample[LG_SAMPLE_MAX + 1]; /* its body, NUL-terminated */
    char errstr[128];               /* why the loop failed; "" = it did not */
    _Atomic uint64_t live[LG_LIVE_N];
} lg_worker_t;

static lg_worker_t *lg__workers;

/* An epoll event names a connection and a socket: the socket, because while
 * connecting libcurl may try several at once; the connection's index, to
 * find it. The schedule timer uses an index no connection has. */
#define LG_EV_SCHED UINT32_MAX

static uint64_t lg__ev_data(uint32_t idx, int fd) {
    return (uint64_t)idx << 32 | (uint32_t)fd;
}

/* Register fd in the worker's epoll set for `events` (MOD, or ADD if it is
 * not there). Returns 0 or -1. */
static int lg__ev_set(lg_worker_t *w, uint32_t idx, int fd, uint32_t events) {
    struct epoll_event ev = {.events = events,
                             .data.u64 = lg__ev_data(idx, fd)};
    if (epoll_ctl(w->epfd, EPOLL_CTL_MOD, fd, &ev) == 0) {
        return 0;
    }
    return errno == ENOENT ? epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &ev) : -1;
}

/* libcurl's socket callback, while it connects: watch s as it asks. */
static int lg__sock_cb(CURL *easy, curl_socket_t s, int what, void *userp,
                       void *socketp) {
    lg_conn_t *c = userp;
    (void)easy;
    (void)socketp;
    if (what == CURL_POLL_REMOVE) {
        epoll_ctl(c->w->epfd, EPOLL_CTL_DEL, s, NULL);
        return 0;
    }
    uint32_t events = ((what & CURL_POLL_IN) ? EPOLLIN : 0) |
                      ((what & CURL_POLL_OUT) ? EPOLLOUT : 0);
    return lg__ev_set(c->w, c->idx, s, events);
}

/* libcurl's timer callback: call socket_action(TIMEOUT) in timeout_ms
 * (0: as soon as possible; -1: never). Calling it from here is not allowed. */
static int lg__timer_cb(CURLM *multi, long timeout_ms, void *userp) {
    lg_conn_t *c = userp;
    (void)multi;
    c->curl_deadline_ns =
        timeout_ms < 0 ? -1 : mono_ns() + (int64_t)timeout_ms * MONO_MS;
    return 0;
}

/* The response statuses a claim run expects; anything else is an error.
 * In raw mode, every 2xx is expected. */
static bool lg__status_expected(long st) {
    if (lg_cfg.raw) {
        return st >= 200 && st < 300;
    }
    return st == 201 || st == 200 || st == 410 || st == 409 || st == 503;
}

const char *lg_status_label(long st) {
    if (lg_cfg.raw) {
        return lg__status_expected(st) ? "" : "unexpected";
    }
    switch (st) {
    case 201:
        return "claimed";
    case 200:
        return "already_claimed";
    case 410:
        return "sold_out";
    case 409:
        return "fenced";
    case 503:
        return "busy/unavailable";
    default:
        return "error";
    }
}

/* Which CSV row a request finishing at `now` belongs to. Requests that
 * finish after the end (the drain) count in the last second of the run, so
 * the plot does not end in a bogus dip. */
static int64_t lg__sec_of(int64_t now) {
    int64_t sec = (now - lg__start_ns) / LG_NS;
    return sec < lg__last_sec ? sec : lg__last_sec;
}

/* Close every second before the one `now` belongs to. */
static void lg__sec_advance(lg_worker_t *w, int64_t now) {
    int64_t sec = lg__sec_of(now);
    while (w->sec_no < sec) {
        lg__secs_merge(w->sec_no++, &w->sec, lg_cfg.threads);
    }
}

/* Count one finished request. */
static void lg__record(lg_worker_t *w, lg_conn_t *c, CURLcode rc, long st,
                       int64_t now) {
    lg__sec_advance(w, now); /* a request belongs to the second it ended in */
    w->total.requests++;
    w->sec.requests++;
    if (rc != CURLE_OK) {
        w->total.errors++;
        w->sec.errors++;
        w->total.err_kind[(unsigned)rc < CURL_LAST ? rc : 0]++;
        return;
    }
    uint64_t us = now > c->t0_ns ? (uint64_t)(now - c->t0_ns) / 1000 : 0;
    lg_hist_record(w->total.lat, us);
    lg_hist_record(w->sec.lat, us);
    if (st < 100 || st >= LG_STATUS_MAX) {
        st = 0;
    }
    w->total.status[st]++;
    if (st >= 200 && st < 300) {
        w->total.c2xx++, w->sec.c2xx++;
    }
    if (st >= 400 && st < 500) {
        w->total.c4xx++, w->sec.c4xx++;
    }
    if (st >= 500 && st < 600) {
        w->total.c5xx++, w->sec.c5xx++;
    }
    if (!lg_cfg.raw && st == 201) {
        lg__u64vec_push(&w->claimed, c->seq);
    }
    if (!lg_cfg.raw && st == 200) {
        lg__u64vec_push(&w->held, c->seq);
    }
    if (!lg__status_expected(st) && w->sample_status == 0) {
        w->sample_status = st;
        size_t n = c->resp.sample_len;
        memcpy(w->sample, c->sample, n);
        w->sample[n] = '\0';
        for (size_t i = 0; i < n; i++) {
            if ((unsigned char)w->sample[i] < 0x20) {
                w->sample[i] = ' ';
            }
        }
    }
}

static void lg__publish(lg_worker_t *w) {
    const uint64_t *st = w->total.status;
    uint64_t v[LG_LIVE_N] = {
        [LG_LIVE_REQ] = w->total.requests, [LG_LIVE_ERR] = w->total.errors,
        [LG_LIVE_2XX] = w->total.c2xx,     [LG_LIVE_4XX] = w->total.c4xx,
        [LG_LIVE_5XX] = w->total.c5xx,     [LG_LIVE_201] = st[201],
        [LG_LIVE_200] = st[200],           [LG_LIVE_409] = st[409],
        [LG_LIVE_410] = st[410],           [LG_LIVE_503] = st[503],
    };
    for (int i = 0; i < LG_LIVE_N; i++) {
        atomic_store_explicit(&w->live[i], v[i], memory_order_relaxed);
    }
}

/* ------------------------------ Connections ------------------------------ */

/* What one connection can check of lg_conn_t's invariants alone, O(1), for
 * asserts at its transitions: an open socket is in the multi handle, and
 * the request and read offsets stay inside their buffers. */
static bool lg__conn_ok(const lg_conn_t *c) {
    return (c->fd < 0 || c->in_multi) && c->req_off <= c->req_len &&
           c->rlen <= sizeof c->rbuf;
}

/* The invariants across a worker's connections (lg_conn_t's comment), by a
 * walk of all of them: the idle list holds exactly the LG_C_IDLE ones,
 * inflight counts the others and nconnecting the LG_C_CONNECTING ones.
 * Asserted when the worker's loop ends, and at every turn of it in a
 * COUPONSVC_DEBUG_SANITY build. */
static bool lg__worker_ok(const lg_worker_t *w) {
    int listed = 0, idle = 0, connecting = 0;
    for (const lg_conn_t *c = w->idle; c != NULL; c = c->next_idle) {
        if (c->state != LG_C_IDLE || ++listed > w->nconns) {
            return false;
        }
    }
    for (int i = 0; i < w->nconns; i++) {
        const lg_conn_t *c = &w->conns[i];
        if (!lg__conn_ok(c)) {
            return false;
        }
        idle += c->state == LG_C_IDLE;
        connecting += c->state == LG_C_CONNECTING;
    }
    return listed == idle && w->inflight == w->nconns - idle &&
           w->nconnecting == connecting;
}

static void lg__conn_send(lg_conn_t *c);
static void lg__conn_connected(lg_conn_t *c);

/* Close c's connection, if it has one. Removing a CONNECT_ONLY handle from
 * its multi handle is how libcurl closes the connection it made. */
static void lg__conn_close(lg_conn_t *c) {
    if (c->fd >= 0) {
        epoll_ctl(c->w->epfd, EPOLL_CTL_DEL, c->fd, NULL);
    }
    if (c->in_multi) {
        curl_multi_remove_handle(c->multi, c->easy);
    }
    if (c->state == LG_C_CONNECTING) {
        c->w->nconnecting--;
    }
    c->in_multi = false;
    c->fd = -1;
    c->events = 0;
    c->rlen = 0;
    c->reused = false;
    c->curl_deadline_ns = -1;
}

/* The request on c has ended: count it (rc: CURLE_OK and the status, or the
 * transport error) and put c on the idle list. */
static void lg__conn_finish(lg_conn_t *c, CURLcode rc, long st, int64_t now) {
    lg_worker_t *w = c->w;
    lg__record(w, c, rc, st, now);
    c->state = LG_C_IDLE;
    c->next_idle = w->idle;
    w->idle = c;
    w->inflight--;
    assert(w->inflight >= 0);
    assert(lg__conn_ok(c));
}

/* The request on c failed with transport error rc at `now`: the
 * connection is closed, since nobody knows what state it is in. */
static void lg__conn_fail(lg_conn_t *c, CURLcode rc, int64_t now) {
    lg__conn_close(c);
    lg__conn_finish(c, rc, 0, now);
}

/* Ask libcurl for a connection for c's request; the request goes out when
 * the connection is made (lg__conn_connected). */
static void lg__conn_connect(lg_conn_t *c) {
    int running;
    c->state = LG_C_CONNECTING;
    c->w->nconnecting++;
    CURLMcode mc = curl_multi_add_handle(c->multi, c->easy);
    assert(mc == CURLM_OK); /* fails only on misuse: c was not in it */
    (void)mc;
    c->in_multi = true;
    /* Adding the handle asked for a timeout call at once: make it, so the
     * connect starts before the worker sleeps. */
    c->curl_deadline_ns = -1;
    curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    lg__conn_connected(c); /* it may have failed at once (a bad name) */
}

/* After libcurl has run for a connecting c: if the connection is made, send
 * the request; if it failed, end the request with libcurl's error. */
static void lg__conn_connected(lg_conn_t *c) {
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(c->multi, &left)) != NULL) {
        if (m->msg != CURLMSG_DONE || c->state != LG_C_CONNECTING) {
            continue;
        }
        CURLcode rc = m->data.result;
        curl_socket_t s = CURL_SOCKET_BAD;
        if (rc == CURLE_OK && (curl_easy_getinfo(c->easy, CURLINFO_ACTIVESOCKET,
                                                 &s) != CURLE_OK ||
                               s == CURL_SOCKET_BAD)) {
            rc = CURLE_COULDNT_CONNECT;
        }
        if (rc != CURLE_OK) {
            lg__conn_fail(c, rc, mono_ns());
            return;
        }
        c->w->nconnecting--;
        c->curl_deadline_ns = -1;
        c->fd = s;
        c->state = LG_C_SENDING;
        if (lg__ev_set(c->w, c->idx, s, EPOLLIN) < 0) {
            lg__conn_fail(c, CURLE_COULDNT_CONNECT, mono_ns());
            return;
        }
        c->events = EPOLLIN;
        lg__conn_send(c);
        return;
    }
}

/* Start (or restart) c's request: on its open connection, or on a new one. */
static void lg__conn_go(lg_conn_t *c) {
    c->req_off = 0;
    c->got_bytes = false;
    lg_http_resp_init(&c->resp, lg_cfg.head, c->sample, sizeof c->sample);
    if (c->fd < 0) {
        lg__conn_connect(c);
    } else {
        c->state = LG_C_SENDING;
        lg__conn_send(c);
    }
}

/* The connection broke (rc) while c's request was on it. A kept-alive
 * connection that the server closed just before our request arrived looks
 * exactly like this; as libcurl does, a request that got no byte of answer
 * on a reused connection is sent once more on a new one. Once only: the new
 * connection is not reused, so if it breaks too, the request fails. */
static void lg__conn_broken(lg_conn_t *c, CURLcode rc) {
    if (c->reused && !c->got_bytes) {
        lg__conn_close(c); /* clears c->reused */
        lg__conn_go(c);
    } else {
        lg__conn_fail(c, rc, mono_ns());
    }
}

/* Make fd's epoll registration ask for `events`. */
static void lg__conn_want(lg_conn_t *c, uint32_t events) {
    if (c->events == events) {
        return;
    }
    struct epoll_event ev = {.events = events,
                             .data.u64 = lg__ev_data(c->idx, c->fd)};
    epoll_ctl(c->w->epfd, EPOLL_CTL_MOD, c->fd, &ev);
    c->events = events;
}

/* Send what is left of c's request; wait for EPOLLOUT if the socket is
 * full. */
static void lg__conn_send(lg_conn_t *c) {
    while (c->req_off < c->req_len) {
        size_t n = 0;
        CURLcode rc = curl_easy_send(c->easy, c->req + c->req_off,
                                     c->req_len - c->req_off, &n);
        if (rc == CURLE_AGAIN) {
            lg__conn_want(c, EPOLLIN | EPOLLOUT);
            return;
        }
        if (rc != CURLE_OK) {
            lg__conn_broken(c, rc);
            return;
        }
        c->req_off += n;
    }
    lg__conn_want(c, EPOLLIN);
    c->state = LG_C_READING;
}

/* The response on c is complete (status st, at `now`). */
static void lg__conn_answered(lg_conn_t *c, long st, int64_t now) {
    c->reused = true;
    /* Bytes beyond the response, or a response that ends the connection,
     * or one that came before the request was fully sent: close. */
    if (c->rlen != 0 || !c->resp.keep_alive || c->req_off < c->req_len) {
        lg__conn_close(c);
    }
    lg__conn_finish(c, CURLE_OK, st, now);
}

/* c's socket is readable: read what is there and feed the response. */
static void lg__conn_read(lg_conn_t *c) {
    for (;;) {
        size_t n = 0;
        CURLcode rc = curl_easy_recv(c->easy, c->rbuf + c->rlen,
                                     sizeof c->rbuf - c->rlen, &n);
        if (rc == CURLE_AGAIN) {
            return;
        }
        if (c->state == LG_C_IDLE) {
            /* Nothing is asked: the server closed a kept-alive connection,
             * or says something unasked for. Either way it is done. */
            lg__conn_close(c);
            return;
        }
        if (rc != CURLE_OK) {
            lg__conn_broken(c, rc);
            return;
        }
        if (n == 0) { /* the end of the connection */
            if (!c->got_bytes) {
                lg__conn_broken(c, CURLE_GOT_NOTHING);
            } else if (lg_http_eof(&c->resp) == LG_HTTP_OK) {
                lg__conn_answered(c, c->resp.status, mono_ns());
            } else {
                lg__conn_fail(c, CURLE_PARTIAL_FILE, mono_ns());
            }
            return;
        }
        /* A server may answer before it has read the whole request (an
         * early 413, say): stop sending and read. */
        if (c->state == LG_C_SENDING) {
            lg__conn_want(c, EPOLLIN); /* or EPOLLOUT would spin the loop */
        }
        c->state = LG_C_READING;
        c->got_bytes = true;
        c->rlen += n;
        size_t used = 0;
        int r = lg_http_feed(&c->resp, c->rbuf, c->rlen, &used);
        memmove(c->rbuf, c->rbuf + used, c->rlen - used);
        c->rlen -= used;
        if (r == LG_HTTP_OK) {
            lg__conn_answered(c, c->resp.status, mono_ns());
            return;
        }
        if (r == LG_HTTP_EBAD) {
            lg__conn_fail(c, CURLE_WEIRD_SERVER_REPLY, mono_ns());
            return;
        }
        /* Not complete: read on until the socket is empty (a TLS layer may
         * hold bytes that epoll cannot see). */
    }
}

/* End every request that has run past the timeout. */
static void lg__sweep(lg_worker_t *w, int64_t now) {
    int64_t limit = (int64_t)lg_cfg.timeout_ms * MONO_MS;
    for (int i = 0; i < w->nconns; i++) {
        lg_conn_t *c = &w->conns[i];
        if (c->state != LG_C_IDLE && now - c->start_ns >= limit) {
            lg__conn_fail(c, CURLE_OPERATION_TIMEDOUT, now);
        }
    }
}

/* Give libcurl the timeout calls that are due on connecting connections;
 * returns the next deadline among them, or -1. */
static int64_t lg__run_timeouts(lg_worker_t *w, int64_t now) {
    int64_t next = -1;
    for (int i = 0; i < w->nconns && w->nconnecting > 0; i++) {
        lg_conn_t *c = &w->conns[i];
        if (c->state != LG_C_CONNECTING || c->curl_deadline_ns < 0) {
            continue;
        }
        if (c->curl_deadline_ns <= now) {
            int running;
            c->curl_deadline_ns = -1; /* the call may set a new one */
            curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0,
                                     &running);
            lg__conn_connected(c);
        }
        if (c->state == LG_C_CONNECTING && c->curl_deadline_ns >= 0 &&
            (next < 0 || c->curl_deadline_ns < next)) {
            next = c->curl_deadline_ns;
        }
    }
    return next;
}

/* Start request seq on an idle connection; latency counts from t0. */
static void lg__start(lg_worker_t *w, uint64_t seq, int64_t t0, int64_t now) {
    lg_conn_t *c = w->idle;
    w->idle = c->next_idle;
    c->seq = seq;
    c->t0_ns = t0;
    c->start_ns = now;
    c->req_len = lg__build_request(c->req, seq);
    w->inflight++;
    w->sent++;
    lg__conn_go(c);
}

static void lg__arm_schedule(lg_worker_t *w, int64_t due) {
    if (w->sched_armed_ns == due) {
        return;
    }
    struct itimerspec its = {.it_value = mono_ts_from_ns(due)};
    timerfd_settime(w->sched_fd, TFD_TIMER_ABSTIME, &its, NULL);
    w->sched_armed_ns = due;
}

/* Start whatever may start now: in the closed loop a request on every idle
 * connection; in the open loop every request that is due, while connections
 * last, and arm the schedule timer for the next one. */
static void lg__issue(lg_worker_t *w, int64_t now) {
    while (w->idle && !w->sending_done) {
        if (lg_cfg.rate <= 0) {
            uint64_t seq =
                atomic_fetch_add_explicit(&lg__next, 1, memory_order_relaxed);
            if (lg_cfg.requests && seq >= lg_cfg.requests) {
                w->sending_done = true;
                break;
            }
            lg__start(w, seq, now, now);
        } else {
            uint64_t seq = w->next_seq;
            int64_t due = lg__due_ns(seq);
            if ((lg_cfg.requests && seq >= lg_cfg.requests) ||
                due >= lg__end_ns) {
                w->sending_done = true;
                break;
            }
            if (due > now) {
                lg__arm_schedule(w, due);
                break;
            }
            if (now - due > LG_LATE_NS) {
                w->sent_late++;
            }
            lg__start(w, seq, due, now); /* timed from when it was due */
            w->next_seq += (uint64_t)lg_cfg.threads;
        }
    }
}

/* One epoll event. */
static void lg__event(lg_worker_t *w, const struct epoll_event *ev) {
    uint32_t idx = (uint32_t)(ev->data.u64 >> 32);
    int fd = (int)(uint32_t)ev->data.u64;
    if (idx == LG_EV_SCHED) {
        uint64_t expirations;
        if (read(fd, &expirations, sizeof expirations) < 0) { /* EAGAIN */
        }
        w->sched_armed_ns = 0;
        return;
    }
    lg_conn_t *c = &w->conns[idx];
    uint32_t e = ev->events;
    if (c->state == LG_C_CONNECTING) {
        int running;
        int flags = ((e & EPOLLIN) ? CURL_CSELECT_IN : 0) |
                    ((e & EPOLLOUT) ? CURL_CSELECT_OUT : 0) |
                    ((e & (EPOLLERR | EPOLLHUP)) ? CURL_CSELECT_ERR : 0);
        curl_multi_socket_action(c->multi, fd, flags, &running);
        lg__conn_connected(c);
        return;
    }
    if (fd != c->fd) {
        return; /* from a socket closed earlier in this batch */
    }
    if ((e & EPOLLOUT) && c->state == LG_C_SENDING) {
        lg__conn_send(c);
    }
    if ((e & (EPOLLIN | EPOLLERR | EPOLLHUP)) && fd == c->fd) {
        lg__conn_read(c);
    }
}

/* How long the event loop may sleep in epoll_wait, in ms: until a socket
 * is ready, the schedule timer fires, libcurl's timeout (curl_next, -1 =
 * none) is due or requests may time out; not at all if a request failed at
 * once and left a closed-loop connection idle. */
static int lg__wait_ms(const lg_worker_t *w, int64_t now, int64_t curl_next) {
    int64_t wait_ns = LG_WAIT_MAX_MS * MONO_MS;
    if (curl_next >= 0 && curl_next - now < wait_ns) {
        wait_ns = curl_next > now ? curl_next - now : 0;
    }
    if (w->inflight > 0 && w->sweep_ns - now < wait_ns) {
        wait_ns = w->sweep_ns > now ? w->sweep_ns - now : 0;
    }
    if (w->idle && !w->sending_done && lg_cfg.rate <= 0) {
        wait_ns = 0;
    }
    return (int)((wait_ns + MONO_MS - 1) / MONO_MS);
}

/* The event loop. See the top of the file. */
static void *lg__worker_main(void *arg) {
    lg_worker_t *w = arg;
    struct epoll_event evs[128];

    mono_sleep_ns(lg__start_ns - mono_ns());
    w->sweep_ns = lg__start_ns + LG_SWEEP_NS;
    for (;;) {
        int64_t now = mono_ns();
        int stop = atomic_load_explicit(&lg__stop, memory_order_relaxed);
        if (stop >= 2) {
            break; /* abandon what is in flight */
        }
        if (stop || now >= lg__end_ns) {
            w->sending_done = true;
        }

        lg__issue(w, now);
        int64_t curl_next = lg__run_timeouts(w, now);
        if (now >= w->sweep_ns) {
            lg__sweep(w, now);
            w->sweep_ns = now + LG_SWEEP_NS;
        }
        if (w->sending_done && w->inflight == 0) {
            break;
        }

        int n = epoll_wait(w->epfd, evs, (int)(sizeof evs / sizeof evs[0]),
                           lg__wait_ms(w, now, curl_next));
        if (n < 0 && errno != EINTR) {
            snprintf(w->errstr, sizeof w->errstr, "epoll_wait: %s",
                     strerror(errno));
            break;
        }
        for (int i = 0; i < n; i++) {
            lg__event(w, &evs[i]);
        }
        if (n > 0) {
            lg__sec_advance(w, mono_ns());
            lg__publish(w);
        }
#ifdef COUPONSVC_DEBUG_SANITY
        assert(lg__worker_ok(w));
#endif
    }
    assert(lg__worker_ok(w));
    w->end_ns = mono_ns();
    lg__secs_merge(w->sec_no, &w->sec,
                   lg_cfg.threads); /* the last, partial second */
    lg__publish(w);
    atomic_fetch_add(&lg__workers_done, 1);
    return NULL;
}

/* Set up worker w with nconns connections; dies on failure. */
static void lg__worker_init(lg_worker_t *w, int id, int nconns) {
    w->id = id;
    w->next_seq = (uint64_t)id;
    for (int i = 0; i < LG_LIVE_N; i++) {
        atomic_init(&w->live[i], 0);
    }
    w->total.lat = lg_calloc(1, sizeof(lg_hist_t));
    w->sec.lat = lg_calloc(1, sizeof(lg_hist_t));
    w->epfd = epoll_create1(EPOLL_CLOEXEC);
    w->sched_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (w->epfd < 0 || w->sched_fd < 0) {
        lg_die("epoll/timerfd: %s", strerror(errno));
    }
    struct epoll_event ev = {.events = EPOLLIN,
                             .data.u64 = lg__ev_data(LG_EV_SCHED, w->sched_fd)};
    if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->sched_fd, &ev) < 0) {
        lg_die("epoll_ctl: %s", strerror(errno));
    }

    w->nconns = nconns;
    w->conns = lg_calloc((size_t)nconns, sizeof *w->conns);
    for (int i = 0; i < nconns; i++) {
        lg_conn_t *c = &w->conns[i];
        c->w = w;
        c->idx = (uint32_t)i;
        c->fd = -1;
        c->curl_deadline_ns = -1;
        c->req = lg_calloc(lg__req_max, 1);
        c->multi = curl_multi_init();
        CURL *e = c->easy = curl_easy_init();
        if (c->multi == NULL || e == NULL) {
            lg_die("curl_multi_init/curl_easy_init failed");
        }
        curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, lg__sock_cb);
        curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
        curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, lg__timer_cb);
        curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
        curl_easy_setopt(e, CURLOPT_URL, lg__target);
        curl_easy_setopt(e, CURLOPT_CONNECT_ONLY, 1L);
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(e, CURLOPT_PROXY, ""); /* ignore http_proxy */
        curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, lg_cfg.timeout_ms);
        if (lg_cfg.cacert) {
            curl_easy_setopt(e, CURLOPT_CAINFO, lg_cfg.cacert);
        }
        curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
        c->next_idle = w->idle;
        w->idle = c;
    }
}

static void lg__worker_free(lg_worker_t *w) {
    for (int i = 0; i < w->nconns; i++) {
        lg_conn_t *c = &w->conns[i];
        if (c->in_multi) {
            curl_multi_remove_handle(c->multi, c->easy);
        }
        curl_easy_cleanup(c->easy);
        curl_multi_cleanup(c->multi);
        free(c->req);
    }
    close(w->sched_fd);
    close(w->epfd);
    free(w->conns);
    free(w->total.lat);
    free(w->sec.lat);
    free(w->claimed.v);
    free(w->held.v);
}

/* =============================== Admin call =============================== */

typedef struct lg__buf {
    char data[512]; /* start of the body, NUL-terminated */
    size_t len;
} lg__buf_t;

static size_t lg__buf_cb(char *ptr, size_t size, size_t nmemb, void *userdata) {
    lg__buf_t *b = userdata;
    size_t n = size * nmemb, room = sizeof b->data - 1 - b->len;
    memcpy(b->data + b->len, ptr, n < room ? n : room);
    b->len += n < room ? n : room;
    b->data[b->len] = '\0';
    return n;
}

/* The creation body of coupon `name` into body (cap bytes). */
static void lg__stock_body(char *body, size_t cap, const char *name) {
    char *esc = lg_json_escape(name);
    if (lg_cfg.create_buckets > 0) {
        snprintf(body, cap, "{\"id\":\"%s\",\"total\":%lld,\"buckets\":%ld}",
                 esc, lg_cfg.create_stock, lg_cfg.create_buckets);
    } else {
        snprintf(body, cap, "{\"id\":\"%s\",\"total\":%lld}", esc,
                 lg_cfg.create_stock);
    }
    free(esc);
}

/* POST one coupon on e (url and headers borrowed). Returns the status
 * (201, 409, ...), or -1 after printing the transport error. */
static long lg__create_one(CURL *e, const char *url, struct curl_slist *hdr,
                           const char *name, lg__buf_t *resp) {
    char body[2 * LG_NAME_MAX * 6 + 64];
    lg__stock_body(body, sizeof body, name);
    long st = 0;
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(e, CURLOPT_PROXY, "");
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, lg_cfg.timeout_ms);
    if (lg_cfg.cacert) {
        curl_easy_setopt(e, CURLOPT_CAINFO, lg_cfg.cacert);
    }
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, lg__buf_cb);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, (void *)resp);
    CURLcode cc = curl_easy_perform(e);
    if (cc != CURLE_OK) {
        fprintf(stderr, "loadgen: create coupon %s: %s\n", name,
                curl_easy_strerror(cc));
        return -1;
    }
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &st);
    return st;
}

/* --create-stock: POST /coupons for every coupon of the run. 201 and 409
 * (it exists already) are fine. Returns 0, or -1 after printing why not. */
static int lg__create_stock(void) {
    char *url = lg_sprintf("%s/coupons", lg_cfg.url);
    char *auth = lg_sprintf("Authorization: Bearer %s", lg_cfg.admin_token);
    struct curl_slist *hdr = NULL;
    hdr = curl_slist_append(hdr, "Content-Type: application/json");
    hdr = curl_slist_append(hdr, auth);
    CURL *e = curl_easy_init();
    int rc = 0;
    uint64_t created = 0, existed = 0;
    if (e == NULL || hdr == NULL) {
        lg_die("curl setup failed");
    }
    for (uint64_t k = 0; k < lg_coupon_count() && rc == 0; k++) {
        char name[LG_NAME_MAX + 32];
        lg_coupon_name(name, sizeof name, k);
        lg__buf_t resp = {.len = 0};
        long st = lg__create_one(e, url, hdr, name, &resp);
        if (st == 201) {
            created++;
        } else if (st == 409) {
            existed++;
        } else {
            if (st >= 0) {
                fprintf(stderr, "loadgen: create coupon %s: HTTP %ld %s\n",
                        name, st, resp.data);
            }
            rc = -1;
        }
    }
    if (rc == 0 && !lg_cfg.quiet) {
        fprintf(stderr,
                "loadgen: create-stock %lld: %" PRIu64 " created, %" PRIu64
                " already existed (their stock was left as it was)\n",
                lg_cfg.create_stock, created, existed);
    }
    curl_easy_cleanup(e);
    curl_slist_free_all(hdr);
    free(url);
    free(auth);
    return rc;
}

/* ============================ After the run ============================= */

static void lg__collect(lg_result_t *res) {
    lg_stats_t *t = &res->total;
    int64_t end = lg__start_ns;
    uint64_t sent = 0;
    t->lat = lg_calloc(1, sizeof *t->lat);
    for (int i = 0; i < lg_cfg.threads; i++) {
        lg_worker_t *w = &lg__workers[i];
        t->requests += w->total.requests;
        t->errors += w->total.errors;
        for (int s = 0; s < LG_STATUS_MAX; s++) {
            t->status[s] += w->total.status[s];
        }
        for (int k = 0; k < CURL_LAST; k++) {
            t->err_kind[k] += w->total.err_kind[k];
        }
        lg_hist_merge(t->lat, w->total.lat);
        res->sent_late += w->sent_late;
        sent += w->sent;
        if (w->end_ns > end) {
            end = w->end_ns;
        }
        if (w->sample_status && !res->sample_status) {
            res->sample_status = w->sample_status;
            res->sample = w->sample;
        }
    }
    assert(lg_hist_ok(t->lat));
    res->duration_s = (double)(end - lg__start_ns) / 1e9;
    res->rate = res->duration_s > 0 ? (double)t->requests / res->duration_s : 0;
    if (lg_cfg.rate > 0) {
        uint64_t sched = lg__scheduled();
        res->unsent = sched > sent ? sched - sent : 0;
    }
    res->interrupted = atomic_load(&lg__stop) != 0;
    res->p50 = lg_us_to_ms(lg_hist_percentile(t->lat, 50));
    res->p90 = lg_us_to_ms(lg_hist_percentile(t->lat, 90));
    res->p99 = lg_us_to_ms(lg_hist_percentile(t->lat, 99));
    res->p999 = lg_us_to_ms(lg_hist_percentile(t->lat, 99.9));
    res->max = lg_us_to_ms(t->lat->max);

    for (size_t s = 0; s < lg__nsecs; s++) {
        lg__secrow_close(&lg__secs[s]); /* stragglers */
    }
    res->target = lg__target;
    res->secs = lg__secs;
    res->nsecs = lg__nsecs;
}

const lg_u64vec_t *lg_worker_answers(int t, bool held) {
    assert(t >= 0 && t < lg_cfg.threads);
    return held ? &lg__workers[t].held : &lg__workers[t].claimed;
}

static void lg__progress(int64_t now, uint64_t *last_req, int64_t *last_ns) {
    uint64_t v[LG_LIVE_N] = {0};
    for (int i = 0; i < lg_cfg.threads; i++) {
        for (int k = 0; k < LG_LIVE_N; k++) {
            v[k] += atomic_load_explicit(&lg__workers[i].live[k],
                                         memory_order_relaxed);
        }
    }
    double dt = (double)(now - *last_ns) / 1e9;
    double rate = dt > 0 ? (double)(v[LG_LIVE_REQ] - *last_req) / dt : 0;
    double el = now > lg__start_ns ? (double)(now - lg__start_ns) / 1e9 : 0;
    *last_req = v[LG_LIVE_REQ];
    *last_ns = now;
    if (lg_cfg.raw) {
        fprintf(stderr,
                "\r%6.1fs %8.0f req/s | 2xx %" PRIu64 "  4xx %" PRIu64
                "  5xx %" PRIu64 " | errors %" PRIu64 "\033[K",
                el, rate, v[LG_LIVE_2XX], v[LG_LIVE_4XX], v[LG_LIVE_5XX],
                v[LG_LIVE_ERR]);
    } else {
        uint64_t known = v[LG_LIVE_201] + v[LG_LIVE_200] + v[LG_LIVE_410] +
                         v[LG_LIVE_409] + v[LG_LIVE_503];
        uint64_t other = v[LG_LIVE_REQ] - v[LG_LIVE_ERR] - known;
        fprintf(stderr,
                "\r%6.1fs %8.0f req/s | 201 %" PRIu64 "  200 %" PRIu64
                "  410 %" PRIu64 "  409 %" PRIu64 "  503 %" PRIu64
                "  other %" PRIu64 " | errors %" PRIu64 "\033[K",
                el, rate, v[LG_LIVE_201], v[LG_LIVE_200], v[LG_LIVE_410],
                v[LG_LIVE_409], v[LG_LIVE_503], other, v[LG_LIVE_ERR]);
    }
    fflush(stderr);
}

/* ================================== Main ================================== */

/* Write the request line and the fixed headers for lg__target into
 * lg__req_head; dies if the URL is not an http:// or https:// URL libcurl can
 * parse. */
static void lg__req_setup(void) {
    CURLU *u = curl_url();
    char *scheme = NULL, *host = NULL, *port = NULL, *path = NULL,
         *query = NULL;
    if (u == NULL ||
        curl_url_set(u, CURLUPART_URL, lg__target, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_PATH, &path, 0) != CURLUE_OK) {
        lg_die("cannot parse URL %s", lg__target);
    }
    if (strcmp(scheme, "http") != 0 && strcmp(scheme, "https") != 0) {
        lg_die("URL %s: only http:// and https:// are supported", lg__target);
    }
    curl_url_get(u, CURLUPART_PORT, &port, 0);   /* NULL when not given */
    curl_url_get(u, CURLUPART_QUERY, &query, 0); /* likewise */
    const char *method = lg_cfg.raw ? lg_cfg.method : "POST";
    const char *extra = "";
    if (!lg_cfg.raw) {
        extra = "Content-Type: application/json\r\n";
    } else if (strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0) {
        extra = "Content-Length: 0\r\n";
    }
    lg__req_head =
        lg_sprintf("%s %s%s%s HTTP/1.1\r\n"
                   "Host: %s%s%s\r\n"
                   "User-Agent: couponsvc-loadgen/1\r\n"
                   "Accept: */*\r\n"
                   "%s",
                   method, path, query ? "?" : "", query ? query : "", host,
                   port ? ":" : "", port ? port : "", extra);
    lg__req_head_len = strlen(lg__req_head);
    lg__req_max = lg__req_head_len + 64 + LG_BODY_MAX;
    lg_cfg.head = lg_cfg.raw && strcmp(method, "HEAD") == 0;
    curl_free(scheme);
    curl_free(host);
    curl_free(port);
    curl_free(path);
    curl_free(query);
    curl_url_cleanup(u);
}

static void lg__on_signal(int sig) {
    (void)sig;
    lg__interrupts++;
}

/* Before the run: the request's fixed parts, --create-stock, the workers
 * and their connections. Returns 0, or -1 when --create-stock failed. */
static int lg__setup(void) {
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        lg_die("curl_global_init failed");
    }
    signal(SIGPIPE, SIG_IGN);

    lg__coupon_json = lg_json_escape(lg_cfg.coupon);
    lg__prefix_json = lg_json_escape(lg_cfg.user_prefix);
    if (lg_cfg.raw) {
        lg__target = lg_sprintf("%s%s%s", lg_cfg.url,
                                lg_cfg.path[0] == '/' ? "" : "/", lg_cfg.path);
    } else {
        lg__target = lg_sprintf("%s/claim", lg_cfg.url);
    }
    lg__req_setup();

    if (lg_cfg.create_stock >= 0 && lg__create_stock() < 0) {
        return -1;
    }

    lg__workers = lg_calloc((size_t)lg_cfg.threads, sizeof *lg__workers);
    for (int i = 0; i < lg_cfg.threads; i++) {
        lg__worker_init(&lg__workers[i], i,
                        lg_cfg.connections / lg_cfg.threads +
                            (i < lg_cfg.connections % lg_cfg.threads));
    }
    return 0;
}

/* Start the workers with SIGINT and SIGTERM blocked, so that Ctrl-C goes
 * to the main thread only (lg__on_signal). */
static void lg__start_workers(void) {
    struct sigaction sa = {.sa_handler = lg__on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &block, &old);

    /* A short head start, so every thread is waiting when the clock starts
     * and the first open-loop requests are not late by thread start-up. */
    lg__start_ns = mono_ns() + 20 * MONO_MS;
    lg__end_ns = lg__start_ns + (int64_t)(lg_cfg.duration * 1e9);
    lg__last_sec = (int64_t)ceil(lg_cfg.duration) - 1;
    /* --verify-only: no worker runs; the checks see zero requests (so "a
     * row for every 201" has nothing to check) and everything else is
     * read from the database as after a run. */
    for (int i = 0; i < lg_cfg.threads && !lg_cfg.verify_only; i++) {
        if (pthread_create(&lg__workers[i].thread, NULL, lg__worker_main,
                           &lg__workers[i]) != 0) {
            lg_die("pthread_create failed");
        }
    }
    if (lg_cfg.verify_only) {
        atomic_store(&lg__workers_done, lg_cfg.threads);
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

/* While the workers run: turn signals into lg__stop, show the progress line
 * on a TTY; then join them. */
static void lg__wait_workers(void) {
    bool progress =
        !lg_cfg.quiet && !lg_cfg.verify_only && isatty(STDERR_FILENO);
    uint64_t last_req = 0;
    int64_t last_ns = lg__start_ns,
            next_progress = lg__start_ns + LG_PROGRESS_NS;
    while (atomic_load(&lg__workers_done) < lg_cfg.threads) {
        mono_sleep_ns(20 * MONO_MS);
        if (lg__interrupts) {
            atomic_store(&lg__stop, lg__interrupts >= 2 ? 2 : 1);
        }
        int64_t now = mono_ns();
        if (progress && now >= next_progress) {
            lg__progress(now, &last_req, &last_ns);
            next_progress += LG_PROGRESS_NS;
        }
    }
    for (int i = 0; i < lg_cfg.threads && !lg_cfg.verify_only; i++) {
        pthread_join(lg__workers[i].thread, NULL);
    }
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    if (progress) {
        lg__progress(mono_ns(), &last_req, &last_ns);
        fputc('\n', stderr);
    }
}

/* After the run: gather, verify, report. Returns the exit status. */
static int lg__finish(lg_result_t *res) {
    int rc = LG_EXIT_OK;
    for (int i = 0; i < lg_cfg.threads; i++) {
        if (lg__workers[i].errstr[0]) {
            fprintf(stderr, "loadgen: worker %d: %s\n", i,
                    lg__workers[i].errstr);
            rc = LG_EXIT_ERROR;
        }
    }

    lg__collect(res);
    lg_verify_t v = {0};
    if (lg_cfg.verify_dsn) {
        lg_report_verify(&v);
    }
    lg_report_summary(res, &v);
    fflush(stdout);
    if (lg_cfg.json_path && lg_report_json(lg_cfg.json_path, res, &v) < 0) {
        rc = LG_EXIT_ERROR;
    }
    if (lg_cfg.csv_path && lg_report_csv(lg_cfg.csv_path, res) < 0) {
        rc = LG_EXIT_ERROR;
    }

    if (res->total.requests > 0 && res->total.requests == res->total.errors) {
        fprintf(stderr,
                "loadgen: no HTTP response at all (is the server at %s up?)\n",
                lg_cfg.url);
        rc = LG_EXIT_ERROR;
    }
    if (v.ran && v.rep.err[0]) {
        fprintf(stderr, "loadgen: verify: %s\n", v.rep.err);
        rc = LG_EXIT_ERROR;
    } else if (v.ran && !v.rep.ok) {
        rc = LG_EXIT_VERIFY;
    }
    return rc;
}

static void lg__cleanup(lg_result_t *res) {
    for (int i = 0; i < lg_cfg.threads; i++) {
        lg__worker_free(&lg__workers[i]);
    }
    free(lg__workers);
    free(res->total.lat);
    free(lg__secs);
    free(lg__req_head);
    curl_global_cleanup();
    free(lg__target);
    free(lg__coupon_json);
    free(lg__prefix_json);
    lg_cli_free();
}

int main(int argc, char **argv) {
    lg_cli_parse(argc, argv);
    if (lg__setup() < 0) {
        return LG_EXIT_ERROR;
    }
    lg__start_workers();
    lg__wait_workers();
    lg_result_t res = {0};
    int rc = lg__finish(&res);
    lg__cleanup(&res);
    return rc;
}
