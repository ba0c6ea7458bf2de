/*
 * test_loadgen.c: the load generator's connection engine against scripted
 * servers.
 *
 * build/loadgen writes its requests and reads its responses itself (libcurl
 * only makes the connections and moves the bytes), so everything a library
 * used to get right for it is now its own: keep-alive reuse, reconnecting
 * after "Connection: close" or a body ended by the end of the connection,
 * the one silent retry when a REUSED connection breaks before any byte of
 * the answer, the per-request timeout, and which transport error a failure
 * is counted as. A wrong answer in any of these does not crash anything; it
 * quietly skews the numbers of every benchmark. So each test here starts a
 * small HTTP server inside the test process, scripted to misbehave in one
 * way, runs the real build/loadgen against it (raw mode, GET /), and checks
 * both sides: what loadgen reports in its --json summary and what the server
 * saw (connections accepted, requests read, bytes sent after the server said
 * it was done with a connection).
 *
 * No PostgreSQL and no Redis: these tests do not call h_begin(). LOADGEN
 * names the binary (default build/loadgen), as COUPONSVC_BIN does for the
 * service. loadgen's output and summary go to a directory of the test's own
 * in /tmp, printed when a test fails and removed when it passes.
 *
 * The server: one thread accepts, one thread per connection reads requests
 * (a request is a header block: loadgen's raw GET has no body) and answers
 * as the mode says. Counters are atomics, read after loadgen has exited.
 */
#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "mono.h"
#include "tt.h"

/* --------------------------------------------------------------- server --- */

/* How the scripted server answers each request. */
typedef enum lt_mode {
    LT_KEEPALIVE,   /* 200 with Content-Length, connection kept */
    LT_CLOSE,       /* 200 with "Connection: close", then a lingering close */
    LT_EOF_BODY,    /* 200 whose body ends with the connection (no length) */
    LT_CLOSE_AFTER, /* keep-alive, but close silently after close_after
                       answers, a little later, without reading on */
    LT_CHUNKED,     /* chunked, with chunk extensions and a trailer */
    LT_SPLIT,       /* a 100 Continue and a 200, or a chunked 200, one
                       byte per write */
    LT_SILENT,      /* reads requests, never answers */
    LT_GARBAGE,     /* a header block that is not HTTP, then lingers */
    LT_HANGUP,      /* reads the request, closes without a byte */
} lt_mode_t;

/* A scripted server on 127.0.0.1. The counters are written by its threads
 * and read by the test once loadgen has exited (lt_settle). */
typedef struct lt_server {
    lt_mode_t mode;
    int close_after; /* LT_CLOSE_AFTER: answers per connection */
    int lfd;         /* listening socket */
    int port;
    char url[64];           /* http://127.0.0.1:<port> */
    atomic_long conns;      /* connections accepted */
    atomic_long requests;   /* complete requests read */
    atomic_long answers;    /* complete responses written */
    atomic_long after_done; /* connections that sent bytes after the
                               server's last answer on them (it said
                               close, or its body ended with the
                               connection): the client reused a
                               connection it must not reuse */
    atomic_long open_conns; /* connection threads still running */
    atomic_int stop;        /* 1: accept what is queued, then end */
    pthread_t thread;       /* the acceptor */
} lt_server_t;

typedef struct lt_conn_arg {
    lt_server_t *s;
    int fd;
} lt_conn_arg_t;

static const char lt_resp_keepalive[] =
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n"
    "\r\nhello";
static const char lt_resp_close[] =
    "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello";
static const char lt_resp_eof_body[] =
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"
    "this body ends when the connection does";
/* Extensions, one with a quoted ";" in it, and a trailer field: a reader
 * that takes the extension for part of the size, or stops at the zero
 * chunk without reading the trailer, leaves bytes behind and is caught by
 * the connection count. */
static const char lt_resp_chunked[] =
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
    "Transfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"
    "5;name=value\r\nhello\r\n"
    "7;q=\"a;b\"\r\n, world\r\n"
    "0;last\r\nX-Checksum: 1234\r\n\r\n";
static const char lt_resp_continue[] =
    "HTTP/1.1 100 Continue\r\n\r\n"
    "HTTP/1.1 200 OK\r\nContent-Length: 12\r\nX-Pad: 0123456789\r\n\r\n"
    "hello, world";
static const char lt_resp_garbage[] =
    "SSH-2.0-OpenSSH_9.2p1 not HTTP at all\r\nhello: there\r\n\r\n";

static void lt_sleep_us(long us) {
    mono_sleep_ns((int64_t)us * 1000);
}

/* Writes all of p[0..n); returns 0, or -1 if the client went away. */
static int lt_send_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k < 0 && errno == EINTR) {
            continue;
        }
        if (k <= 0) {
            return -1;
        }
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* One byte per write, with a pause between, so the client's reads end at
 * every possible place inside the status line, headers and chunks. */
static int lt_send_drip(int fd, const char *p, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (lt_send_all(fd, p + i, 1) < 0) {
            return -1;
        }
        lt_sleep_us(100);
    }
    return 0;
}

/* The server has answered for the last time on fd: it sends its FIN and
 * keeps reading, as nginx's lingering close does, until the client closes
 * its end (or 5 s pass). Any byte the client still sends means it took the
 * connection for one it may reuse. */
static void lt_linger(lt_server_t *s, int fd) {
    shutdown(fd, SHUT_WR);
    struct pollfd p = {.fd = fd, .events = POLLIN};
    double end = h_now_ms() + 5000;
    bool counted = false;
    while (h_now_ms() < end && poll(&p, 1, 100) >= 0) {
        if (!(p.revents & (POLLIN | POLLHUP | POLLERR))) {
            continue;
        }
        char buf[4096];
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return;
        }
        if (!counted) {
            atomic_fetch_add(&s->after_done, 1);
            counted = true;
        }
    }
}

/* Answers one request as the mode says; returns 0 to read the next one,
 * -1 when the connection is done (fd is closed by the caller). */
static int lt_answer(lt_server_t *s, int fd, int nth) {
    int rc = -1;
    switch (s->mode) {
    case LT_KEEPALIVE:
        rc = lt_send_all(fd, lt_resp_keepalive, strlen(lt_resp_keepalive));
        break;
    case LT_CLOSE:
        if (lt_send_all(fd, lt_resp_close, strlen(lt_resp_close)) == 0) {
            atomic_fetch_add(&s->answers, 1);
            lt_linger(s, fd);
        }
        return -1;
    case LT_EOF_BODY:
        if (lt_send_all(fd, lt_resp_eof_body, strlen(lt_resp_eof_body)) == 0) {
            atomic_fetch_add(&s->answers, 1);
            lt_linger(s, fd);
        }
        return -1;
    case LT_CLOSE_AFTER:
        rc = lt_send_all(fd, lt_resp_keepalive, strlen(lt_resp_keepalive));
        if (rc == 0 && nth + 1 == s->close_after) {
            atomic_fetch_add(&s->answers, 1);
            /* In the meantime the client sends its next request, which
             * this close discards unread (the kernel answers with a RST). */
            lt_sleep_us(20000);
            return -1;
        }
        break;
    case LT_CHUNKED:
        rc = lt_send_all(fd, lt_resp_chunked, strlen(lt_resp_chunked));
        break;
    case LT_SPLIT:
        rc = nth % 2 == 0
                 ? lt_send_drip(fd, lt_resp_continue, strlen(lt_resp_continue))
                 : lt_send_drip(fd, lt_resp_chunked, strlen(lt_resp_chunked));
        break;
    case LT_SILENT:
        return 0;
    case LT_GARBAGE:
        if (lt_send_all(fd, lt_resp_garbage, strlen(lt_resp_garbage)) == 0) {
            lt_linger(s, fd);
        }
        return -1;
    case LT_HANGUP:
        return -1;
    }
    if (rc == 0) {
        atomic_fetch_add(&s->answers, 1);
    }
    return rc;
}

static void *lt_conn_main(void *arg) {
    lt_conn_arg_t *a = arg;
    lt_server_t *s = a->s;
    int fd = a->fd;
    free(a);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

    char buf[16384];
    size_t len = 0;
    for (int nth = 0;; nth++) {
        char *end;
        while ((end = memmem(buf, len, "\r\n\r\n", 4)) == NULL) {
            if (len == sizeof(buf)) {
                goto done; /* not a request we know */
            }
            ssize_t n = recv(fd, buf + len, sizeof(buf) - len, 0);
            if (n < 0 && errno == EINTR) {
                continue;
            }
            if (n <= 0) {
                goto done;
            }
            len += (size_t)n;
        }
        size_t used = (size_t)(end + 4 - buf);
        memmove(buf, buf + used, len - used);
        len -= used;
        atomic_fetch_add(&s->requests, 1);
        if (lt_answer(s, fd, nth) < 0) {
            break;
        }
    }
done:
    close(fd);
    atomic_fetch_sub(&s->open_conns, 1);
    return NULL;
}

static void *lt_accept_main(void *arg) {
    lt_server_t *s = arg;
    for (;;) {
        /* CLOEXEC: a loadgen started later must not hold server ends. */
        int fd = accept4(s->lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (atomic_load(&s->stop)) {
                return NULL; /* the listen queue is empty */
            }
            struct pollfd p = {.fd = s->lfd, .events = POLLIN};
            poll(&p, 1, 20);
            continue;
        }
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) {
                continue;
            }
            return NULL;
        }
        atomic_fetch_add(&s->conns, 1);
        atomic_fetch_add(&s->open_conns, 1);
        lt_conn_arg_t *a = malloc(sizeof(*a));
        TT_ASSERT(a != NULL);
        a->s = s;
        a->fd = fd;
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&attr, 256 * 1024);
        TT_ASSERT(pthread_create(&t, &attr, lt_conn_main, a) == 0);
        pthread_attr_destroy(&attr);
    }
}

/* A loopback socket bound to a free port (0 asks the kernel for one);
 * returns the fd, and the port in *port. */
static int lt_bind_free(int *port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    TT_ASSERT_MSG(fd >= 0, "socket: %s", strerror(errno));
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof(a);
    TT_ASSERT_MSG(bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
                      getsockname(fd, (struct sockaddr *)&a, &alen) == 0,
                  "bind: %s", strerror(errno));
    *port = ntohs(a.sin_port);
    return fd;
}

/* Starts a server in mode on a free port; it accepts connections until
 * lt_settle, and its connection threads run until their clients close. */
static lt_server_t *lt_server_start(lt_mode_t mode) {
    static lt_server_t srv; /* one per test process */
    lt_server_t *s = &srv;
    memset(s, 0, sizeof(*s));
    s->mode = mode;
    s->close_after = 3;
    s->lfd = lt_bind_free(&s->port);
    TT_ASSERT_MSG(listen(s->lfd, 512) == 0, "listen: %s", strerror(errno));
    /* Non-blocking, so the acceptor can tell when the queue is empty. */
    fcntl(s->lfd, F_SETFL, fcntl(s->lfd, F_GETFL) | O_NONBLOCK);
    snprintf(s->url, sizeof(s->url), "http://127.0.0.1:%d", s->port);
    TT_ASSERT(pthread_create(&s->thread, NULL, lt_accept_main, s) == 0);
    return s;
}

/* Call once loadgen has exited: makes the counters final. Every connection
 * loadgen made is then accepted or waiting in the listen queue; the acceptor
 * takes the ones waiting and ends. Then waits (up to 3 s) until every
 * connection thread has seen its connection end. */
static void lt_settle(lt_server_t *s) {
    atomic_store(&s->stop, 1);
    pthread_join(s->thread, NULL);
    close(s->lfd);
    double end = h_now_ms() + 3000;
    while (atomic_load(&s->open_conns) > 0 && h_now_ms() < end) {
        h_sleep_ms(10);
    }
    TT_ASSERT_MSG(atomic_load(&s->open_conns) == 0,
                  "%ld server connections still open after loadgen exited",
                  atomic_load(&s->open_conns));
}

/* ------------------------------------------------------------ loadgen --- */

static char lt_dir[64];        /* this test's files */
static char lt_log[128];       /* loadgen's stdout and stderr */
static char lt_json_path[128]; /* its --json */

static void lt_cat(const char *title, const char *path) {
    fprintf(stderr, "    --- %s (%s):\n", title, path);
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        fprintf(stderr, "      (none)\n");
        return;
    }
    char line[1024];
    int n = 0;
    while (fgets(line, sizeof(line), f) != NULL && n++ < 60) {
        fprintf(stderr, "      | %s", line);
        if (line[strlen(line) - 1] != '\n') {
            fputc('\n', stderr);
        }
    }
    fclose(f);
}

static void lt_on_failure(void) {
    lt_cat("loadgen output", lt_log);
    lt_cat("loadgen --json", lt_json_path);
}

/* Call first in every test here: a directory for loadgen's files, and the
 * failure hook that prints them. */
static void lt_begin(void) {
    snprintf(lt_dir, sizeof(lt_dir), "/tmp/loadgen-it-XXXXXX");
    TT_ASSERT_MSG(mkdtemp(lt_dir) != NULL, "mkdtemp: %s", strerror(errno));
    snprintf(lt_log, sizeof(lt_log), "%s/loadgen.log", lt_dir);
    snprintf(lt_json_path, sizeof(lt_json_path), "%s/summary.json", lt_dir);
    tt_on_failure = lt_on_failure;
}

/* Call last: a passed test leaves nothing behind. */
static void lt_end(void) {
    unlink(lt_log);
    unlink(lt_json_path);
    rmdir(lt_dir);
}

static const char *lt_bin(void) {
    const char *b = getenv("LOADGEN");
    return b != NULL ? b : "build/loadgen";
}

/* One loadgen run and what came of it. */
typedef struct lt_run {
    int exit_status;   /* its exit status; -1 if it died by a signal */
    double elapsed_ms; /* from start to exit */
    json_t *json;      /* the --json summary (new ref), NULL if none */
} lt_run_t;

/* Runs loadgen in raw mode (GET /) against url, closed loop with conns
 * connections, until `requests` have finished or `duration` seconds have
 * passed, each request limited to timeout_ms. Waits for it up to bound_ms
 * (then kills it and fails the test). */
static lt_run_t lt_loadgen(const char *url, int conns, long requests,
                           const char *duration, long timeout_ms,
                           int bound_ms) {
    const char *bin = lt_bin();
    TT_ASSERT_MSG(access(bin, X_OK) == 0,
                  "%s: %s (set LOADGEN, or make build/loadgen)", bin,
                  strerror(errno));
    char c[16], n[24], t[24];
    snprintf(c, sizeof(c), "%d", conns);
    snprintf(n, sizeof(n), "%ld", requests);
    snprintf(t, sizeof(t), "%ld", timeout_ms);
    char *b = (char *)bin, *u = (char *)url, *d = (char *)duration;
    /* Each option next to its value. */
    /* clang-format off */
    char *argv[] = {b, "-q", "--method", "GET", "--path", "/",
                    "--url", u, "-c", c, "-n", n, "-d", d,
                    "--timeout-ms", t, "--json", lt_json_path, NULL};
    /* clang-format on */
    unlink(lt_json_path);

    /* The test process has server threads: between fork and exec only
     * async-signal-safe calls. */
    double start = h_now_ms();
    pid_t pid = fork();
    TT_ASSERT_MSG(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        int fd = open(lt_log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        execv(bin, argv);
        _exit(127);
    }
    int st = 0;
    bool hung = false;
    while (waitpid(pid, &st, WNOHANG) != pid) {
        if (h_now_ms() - start > bound_ms) {
            hung = true;
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            break;
        }
        h_sleep_ms(5);
    }
    TT_ASSERT_MSG(!hung, "loadgen still running after %d ms (killed)",
                  bound_ms);
    lt_run_t r = {.elapsed_ms = h_now_ms() - start};
    r.exit_status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    TT_ASSERT_MSG(r.exit_status != 127, "could not run %s", bin);
    json_error_t err;
    r.json = json_load_file(lt_json_path, 0, &err);
    return r;
}

/* An integer member of the summary, nested by a path of names; 0 when it is
 * absent (the summary leaves out statuses and error kinds that did not
 * occur). */
static long long lt_num(const json_t *j, const char *a, const char *b) {
    const json_t *v = json_object_get(j, a);
    if (b != NULL) {
        v = json_object_get(v, b);
    }
    return json_is_number(v) ? (long long)json_number_value(v) : 0;
}

/* How many requests ended with transport error rc. The summary names the
 * kinds by libcurl's text for the code. */
static long long lt_errors(const json_t *j, CURLcode rc) {
    return lt_num(j, "transport_error_kinds", curl_easy_strerror(rc));
}

/* Sum of every per-status count: the requests that got an HTTP answer. */
static long long lt_answered(const json_t *j) {
    const json_t *st = json_object_get(j, "status");
    const char *k;
    json_t *v;
    long long sum = 0;
    json_object_foreach((json_t *)st, k, v) {
        sum += (long long)json_number_value(v);
    }
    return sum;
}

/* The summary of a run where every request was answered 200. */
static void lt_expect_all_200(const lt_run_t *r, long requests) {
    TT_ASSERT_MSG(r->json != NULL, "no --json summary");
    TT_EQ_INT(r->exit_status, 0);
    TT_EQ_INT(lt_num(r->json, "requests", NULL), requests);
    TT_EQ_INT(lt_num(r->json, "status", "200"), requests);
    TT_EQ_INT(lt_answered(r->json), requests);
    TT_EQ_INT(lt_num(r->json, "transport_errors", NULL), 0);
}

/* The summary of a run where every request failed with rc: no answers, and
 * exit status 1 ("no HTTP response at all"). */
static void lt_expect_all_errors(const lt_run_t *r, CURLcode rc) {
    TT_ASSERT_MSG(r->json != NULL, "no --json summary");
    long long n = lt_num(r->json, "requests", NULL);
    TT_CMP_INT(n, >, 0);
    TT_EQ_INT(lt_num(r->json, "transport_errors", NULL), n);
    TT_ASSERT_MSG(lt_errors(r->json, rc) == n,
                  "%lld of %lld requests are \"%s\"", lt_errors(r->json, rc), n,
                  curl_easy_strerror(rc));
    TT_EQ_INT(lt_answered(r->json), 0);
    TT_EQ_INT(r->exit_status, 1);
}

/* One run of loadgen against one kind of server, and what the server must
 * have counted. Each kind of server is one row, and each row is the test of
 * its own name below. */
typedef struct lt_case {
    int conns;            /* loadgen's connections (-c) */
    long requests;        /* requests to send (-n) */
    const char *duration; /* -d, seconds: a bound, the run ends at -n */
    long timeout_ms;      /* --timeout-ms, per request */
    int bound_ms;         /* how long loadgen may run before the test fails */
    CURLcode error;       /* CURLE_OK: every request answered 200; otherwise
                             every request failed with this error */
    long server_conns;    /* connections the server accepted: exactly ... */
    bool conns_at_least;  /* ... or at least that many */
    unsigned checks;      /* LT_CHECK_* below */
} lt_case_t;

enum {
    LT_CHECK_REQUESTS = 1 << 0, /* the server read exactly `requests` */
    LT_CHECK_ANSWERS = 1 << 1,  /* the server answered exactly `requests` */
    LT_CHECK_NOTHING_AFTER = 1 << 2, /* no byte came on a connection after
                                        its last answer */
};

#define LT_RQ LT_CHECK_REQUESTS
#define LT_AN LT_CHECK_ANSWERS
#define LT_NA LT_CHECK_NOTHING_AFTER
/* clang-format off */
static const lt_case_t lt_cases[] = {
/* conns, requests, duration, timeout_ms, bound_ms, error, server_conns,
 * conns_at_least, checks: as in lt_case_t. */
[LT_KEEPALIVE]   = {4,    400,  "20", 5000,   20000, CURLE_OK,                 4,             false,   LT_RQ | LT_AN},
[LT_CLOSE]       = {4,    200,  "20", 5000,   20000, CURLE_OK,                 200,           false,   LT_RQ | LT_NA},
[LT_EOF_BODY]    = {4,    200,  "20", 5000,   20000, CURLE_OK,                 200,           false,   LT_RQ | LT_NA},
[LT_CLOSE_AFTER] = {4,    400,  "20", 5000,   20000, CURLE_OK,                 (400 + 2) / 3, true,    LT_AN},
[LT_CHUNKED]     = {4,    400,  "20", 5000,   20000, CURLE_OK,                 4,             false,   LT_RQ},
[LT_SPLIT]       = {4,    80,   "30", 10000,  40000, CURLE_OK,                 4,             false,   LT_RQ},
[LT_GARBAGE]     = {2,    50,   "20", 5000,   20000, CURLE_WEIRD_SERVER_REPLY, 50,            false,   LT_RQ | LT_NA},
[LT_HANGUP]      = {4,    100,  "10", 2000,   15000, CURLE_GOT_NOTHING,        100,           false,   LT_RQ},
};
/* clang-format on */
#undef LT_RQ
#undef LT_AN
#undef LT_NA

/* Runs the row of server kind `mode` as the current test. */
static void lt_run_case(lt_mode_t mode) {
    TT_ASSERT(mode < sizeof(lt_cases) / sizeof(lt_cases[0]) &&
              lt_cases[mode].conns > 0);
    const lt_case_t *c = &lt_cases[mode];
    lt_begin();
    lt_server_t *s = lt_server_start(mode);
    lt_run_t r = lt_loadgen(s->url, c->conns, c->requests, c->duration,
                            c->timeout_ms, c->bound_ms);
    lt_settle(s);
    if (c->error == CURLE_OK) {
        lt_expect_all_200(&r, c->requests);
    } else {
        lt_expect_all_errors(&r, c->error);
        TT_EQ_INT(lt_num(r.json, "requests", NULL), c->requests);
    }
    if (c->conns_at_least) {
        TT_CMP_INT(atomic_load(&s->conns), >=, c->server_conns);
    } else {
        TT_EQ_INT(atomic_load(&s->conns), c->server_conns);
    }
    if (c->checks & LT_CHECK_REQUESTS) {
        TT_EQ_INT(atomic_load(&s->requests), c->requests);
    }
    if (c->checks & LT_CHECK_ANSWERS) {
        TT_EQ_INT(atomic_load(&s->answers), c->requests);
    }
    if (c->checks & LT_CHECK_NOTHING_AFTER) {
        TT_EQ_INT(atomic_load(&s->after_done), 0);
    }
    json_decref(r.json);
    lt_end();
}

/* ---------------------------------------------------------------- tests --- */

/* The plain case: 4 connections carry all 400 requests. */
TT_TEST(loadgen_keepalive_reuses_connections, 30) {
    lt_run_case(LT_KEEPALIVE);
}

/* "Connection: close" on every answer: a new connection per request, and
 * never a byte more on the old one. The server closes lazily (FIN, then
 * reads on), so a client that kept the connection would be seen sending
 * its next request into it, even though its own retry would hide that. */
TT_TEST(loadgen_connection_close_reconnects, 30) {
    lt_run_case(LT_CLOSE);
}

/* A body without Content-Length or chunking ends with the connection: the
 * end is the answer's last byte, not an error, and the connection is not
 * reused. */
TT_TEST(loadgen_eof_body_reconnects, 30) {
    lt_run_case(LT_EOF_BODY);
}

/* A server that drops kept-alive connections after 3 answers, without
 * saying so, while the next request is already on its way: that request
 * got no byte of answer on a reused connection, so loadgen sends it again
 * on a new one, and nobody sees an error. At most 3 answers per
 * connection. */
TT_TEST(loadgen_silent_close_is_retried, 30) {
    lt_run_case(LT_CLOSE_AFTER);
}

/* Chunked answers with chunk extensions and a trailer, read to their last
 * byte: anything left over would make loadgen close the connection, so the
 * 4 connections must carry all 400. */
TT_TEST(loadgen_chunked_with_trailer, 30) {
    lt_run_case(LT_CHUNKED);
}

/* Answers written one byte at a time, alternately a 100 Continue followed
 * by a 200 with Content-Length and a chunked 200 with a trailer. */
TT_TEST(loadgen_split_writes, 60) {
    lt_run_case(LT_SPLIT);
}

/* A server that reads and never answers: every request ends by the
 * per-request timeout, on time, and its connection is closed (the next
 * request gets a new one). loadgen stops sending at 2 s and has nothing in
 * flight 300 ms later. */
TT_TEST(loadgen_silent_server_times_out, 30) {
    lt_begin();
    lt_server_t *s = lt_server_start(LT_SILENT);
    lt_run_t r = lt_loadgen(s->url, 4, 1000000, "2", 300, 10000);
    lt_settle(s);
    lt_expect_all_errors(&r, CURLE_OPERATION_TIMEDOUT);
    long long n = lt_num(r.json, "requests", NULL);
    /* 4 connections, one request per 300 ms each, for 2 s: 28, give or
     * take the edges (the sweep runs every 10 ms). */
    TT_CMP_INT(n, >=, 20);
    TT_CMP_INT(n, <=, 32);
    TT_CMP_INT(r.elapsed_ms, <, 4000);
    double dur = json_number_value(json_object_get(r.json, "duration_s"));
    TT_ASSERT_MSG(dur > 1.9 && dur < 3, "duration_s %.3f", dur);
    TT_EQ_INT(atomic_load(&s->conns), n);
    TT_EQ_INT(atomic_load(&s->requests), n);
    json_decref(r.json);
    lt_end();
}

/* Not HTTP where the status line should be: an error of its own kind, not
 * a response with some status. The garbage is a whole header block (it ends
 * with an empty line): lg_http.c looks at the status line only once the
 * block is complete, so a lone bad line is not seen as one today; it ends
 * as a timeout if the server then waits, or as "partial file" if it
 * closes. The connection is dropped after it: one per request. */
TT_TEST(loadgen_garbage_is_weird_reply, 30) {
    lt_run_case(LT_GARBAGE);
}

/* Nothing listens on the port (it is bound, so nobody else takes it):
 * every request is a connect error, and loadgen says it got no response. */
TT_TEST(loadgen_connection_refused, 30) {
    lt_begin();
    int port;
    int fd = lt_bind_free(&port);
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", port);
    lt_run_t r = lt_loadgen(url, 4, 200, "10", 2000, 15000);
    lt_expect_all_errors(&r, CURLE_COULDNT_CONNECT);
    TT_EQ_INT(lt_num(r.json, "requests", NULL), 200);
    close(fd);
    json_decref(r.json);
    lt_end();
}

/* The server reads each request and hangs up without a byte. Every
 * connection is fresh (the previous one was closed), so there is nothing
 * to retry: a retry is only for a REUSED connection the server may have
 * closed while the request was on its way. Each error is one request at
 * the server, not two. */
TT_TEST(loadgen_hangup_on_fresh_is_not_retried, 30) {
    lt_run_case(LT_HANGUP);
}
