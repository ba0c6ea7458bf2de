/*
 * http.c: libmicrohttpd glue and the claim workers; see http.h for the
 * threading model.
 *
 * libmicrohttpd calls the access handler several times per request: once
 * when the headers are in (*con_cls still NULL), once per chunk of body, and
 * once more with no data when the body is complete. The body is collected in
 * a per-request buffer up to COUPON_MAX_BODY; beyond that the rest is read
 * and dropped and the answer is 413. A Content-Length above the limit is
 * answered 413 at once, before any body is read, from routing alone (see
 * api_handle): that answer is made on the event loop, which never waits on
 * a backend. libmicrohttpd then closes the connection without reading the
 * body; so that the client is not sent a RST before it reads the answer, the
 * rest is read and dropped after the close ("lingering", see http__linger_arm).
 *
 * A request's life (http__req_t.state):
 *
 *   READING --body complete--> QUEUED --worker done--> ANSWERED --> sent
 *      |          |              ^  (connection suspended)
 *      |          |   dispatch:  |
 *      |          +--> PARKED ---+--leader's batch done--> ANSWERED
 *      |               (POST /claim behind its coupon's leader; suspended)
 *      +--inline route, early 413, claim answered on the loop--> sent
 *
 * POST /claim is handed to the claim module on the event loop
 * (api_claim_submit, claim.h): it answers at once (a 4xx, the sold-out fast
 * path, 503 overloaded), or says "run it" (queued here as any request), or
 * parks it in its coupon's queue behind a leader, where it holds no worker;
 * a leader later answers it (http__claim_done) or makes it the next leader
 * (http__claim_dispatch: PARKED -> QUEUED).
 *
 * Invariant (http__req_ok): a request on the worker queue is QUEUED (a
 * QUEUED request is on the queue or held by a worker), and its connection
 * is suspended exactly while it is QUEUED or PARKED. Every such
 * request is resumed exactly once, by the worker that answered it. A
 * request is queued only while the workers are not stopping (checked under
 * the queue's mutex, the one the workers take), and the workers empty the
 * queue before they exit. A PARKED request always has a leader that is
 * QUEUED or running (claim.c's invariant), and a leader that will not run
 * because the workers are stopping answers its parked requests first
 * (claim_cancel, or a refused dispatch). So once the workers are joined, no
 * connection is suspended, which MHD_stop_daemon requires (it aborts the
 * process otherwise). A request that completes after that is answered 503
 * shutting_down on the event loop.
 */
#include "http.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include "api.h"
#include "log.h"
#include "mono.h"
#include "ready.h"
#include "req.h"
#include "str.h"

typedef enum http__state {
    HTTP__READING = 0, /* headers in, body arriving */
    HTTP__QUEUED,      /* waiting for or held by a worker */
    HTTP__PARKED,      /* a claim the claim module holds: in its coupon's
                          queue, in a batch, or its leader running */
    HTTP__ANSWERED,    /* resp is filled; the event loop sends it */
} http__state_t;

/* One request, from the first call of the handler to completion. */
typedef struct http__req {
    http__state_t state;
    struct MHD_Connection *conn; /* borrowed from libmicrohttpd */
    char *body;                  /* collected body; NULL until the first byte */
    size_t len;                  /* bytes in body */
    int too_large;               /* passed the limit: the rest is dropped */
    /* Copies of what the worker needs: libmicrohttpd's strings are only
     * guaranteed during the handler call. */
    char method[16];
    char *path, *content_type, *authorization; /* owned */
    /* The client's X-Request-Id when well-formed (req_valid_request_id),
     * else one made here; in the answer's header and the lines logged for
     * this request. */
    char request_id[REQ_REQUEST_ID_MAX + 1];
    int64_t deadline_ns;    /* lock-wait deadline, from when it was queued */
    api_response_t resp;    /* filled by the worker (or inline) */
    struct http__req *next; /* queue link */
    int on_queue;           /* on h's worker queue (under h->mu) */
    int suspended;          /* suspended and not yet resumed */
    int is_claim;           /* POST /claim: handled through waiter */
    claim_waiter_t waiter;  /* the claim's, while is_claim */
    struct http *h;         /* for the waiter's callbacks */
} http__req_t;

/* One open connection, for the slow-client deadline (see http__reaper). */
typedef struct http__conn {
    MHD_socket fd;       /* the connection's socket; valid while listed */
    int64_t deadline_ns; /* the request must have arrived by then */
    int busy;            /* a request is being answered: no deadline */
    int reaped;          /* shut down once already */
    int linger_fd;       /* -1, or a dup of fd to drain after the close */
    struct http__conn *prev, *next;
} http__conn_t;

/* A closed connection whose unread input is being drained (http__linger). */
typedef struct http__linger {
    int fd;              /* owned: a dup of the connection's socket */
    int64_t deadline_ns; /* drained by then, or closed anyway */
    size_t left;         /* bytes that may still be read and dropped */
    int done;            /* EOF, error, or a bound reached: close it */
    struct http__linger *next;
} http__linger_t;

/* Lingering bounds: enough for a client that sends a body of a few MiB
 * before it reads the answer; beyond them the close is a plain close. */
#define HTTP__LINGER_BYTES (16u * 1024u * 1024u)
#define HTTP__LINGER_MS 5000
#define HTTP__LINGER_MAX 64

/* How long http_stop waits, after the workers are joined, for answers to be
 * written before the event loops are stopped. */
#define HTTP__FLUSH_MS 1000

struct http {
    struct MHD_Daemon *d;
    const cfg_t *cfg;
    int64_t request_deadline_ns; /* COUPON_CONN_TIMEOUT_S, in ns */

    /* Open connections and lingering ones, guarded by conns_mu; the reaper
     * walks both. */
    pthread_mutex_t conns_mu;
    http__conn_t *conns;
    http__linger_t *lingers;
    unsigned nlingers;
    pthread_t reaper;
    pthread_cond_t reaper_wake;
    int reaper_stop;
    int reaper_started;
    atomic_int draining;  /* set by http_stop: answer Connection: close */
    atomic_long requests; /* requests between first call and completion */
    uint64_t rid_prefix;  /* random, per process: see http__request_id */
    _Atomic uint64_t rid_next;

    /* The work queue: FIFO, guarded by mu. */
    pthread_mutex_t mu;
    pthread_cond_t work;
    http__req_t *head, *tail;
    int stopping; /* nothing more is queued; workers answer what is left
                     with 503 and exit */
    pthread_t *workers;
    uint32_t nworkers;
};

/* ------------------------------------------------------------ responses --- */

static void http__linger_arm(http_t *h, struct MHD_Connection *conn);

/* Queues rq's answer on its connection; close_after adds "Connection: close",
 * so that nothing the client sent after this request is read as another
 * request, and lingers after the close (whatever the client still sends is read
 * and dropped, so that the close is not a RST that destroys the answer). */
static enum MHD_Result http__send(http_t *h, http__req_t *rq, int close_after) {
    struct MHD_Connection *conn = rq->conn;
    api_response_t *r = &rq->resp;
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(r->len, r->body, MHD_RESPMEM_MUST_FREE);
    if (resp == NULL) {
        api_response_free(r);
        return MHD_NO;
    }
    r->body = NULL; /* now the response's */
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
                            r->content_type != NULL ? r->content_type
                                                    : "application/json");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    if (r->allow != NULL) {
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, r->allow);
    }
    if (r->retry_after > 0) {
        char v[16];
        snprintf(v, sizeof(v), "%u", r->retry_after);
        MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, v);
    }
    MHD_add_response_header(resp, "X-Request-Id", rq->request_id);
    if (r->www_authenticate) {
        MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE,
                                "Bearer");
    }
    if (atomic_load(&h->draining) || close_after) {
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    }
    if (close_after) {
        http__linger_arm(h, conn);
    }
    enum MHD_Result ret = MHD_queue_response(conn, r->status, resp);
    MHD_destroy_response(resp);
    return ret;
}

/* The API's view of rq: borrows rq's strings and body. */
static api_request_t http__api_request(const http__req_t *rq) {
    return (api_request_t){
        .method = rq->method,
        .path = rq->path,
        .content_type = rq->content_type,
        .authorization = rq->authorization,
        .body = rq->body,
        .body_len = rq->len,
        .body_too_large = rq->too_large,
        .deadline_ns = rq->deadline_ns,
    };
}

static void http__handle(http__req_t *rq) {
    api_request_t ar = http__api_request(rq);
    api_handle(&ar, &rq->resp);
}

/* ------------------------------------------------------------- workers --- */

/* The request's invariant (see the top). O(1): checked at every suspend,
 * resume and queue move. */
static int http__req_ok(const http__req_t *rq) {
    int held = rq->state == HTTP__QUEUED || rq->state == HTTP__PARKED;
    return rq->suspended == held &&
           (!rq->on_queue || rq->state == HTTP__QUEUED);
}

/* Suspends rq's connection; rq->state must already say why (QUEUED or
 * PARKED) once the caller's step is done, which the caller asserts. */
static void http__suspend(http__req_t *rq) {
    assert(!rq->suspended);
    rq->suspended = 1;
    MHD_suspend_connection(rq->conn);
}

/* Resumes rq's connection once it is ANSWERED. From here on the event loop
 * owns rq again: nothing may touch it after this call. */
static void http__resume(http__req_t *rq) {
    assert(rq->suspended); /* resumed once per suspend */
    rq->suspended = 0;
    assert(rq->state == HTTP__ANSWERED && http__req_ok(rq));
    MHD_resume_connection(rq->conn);
}

static void http__answer_shutting_down(http__req_t *rq) {
    memset(&rq->resp, 0, sizeof(rq->resp));
    rq->resp.status = 503;
    rq->resp.retry_after = 1;
    rq->resp.body = strdup("{\"error\":\"shutting_down\",\"detail\":"
                           "\"this instance is stopping; retry\"}");
    rq->resp.len = rq->resp.body != NULL ? strlen(rq->resp.body) : 0;
}

static void *http__worker(void *arg) {
    http_t *h = arg;
    for (;;) {
        pthread_mutex_lock(&h->mu);
        while (h->head == NULL && !h->stopping) {
            pthread_cond_wait(&h->work, &h->mu);
        }
        http__req_t *rq = h->head;
        if (rq == NULL) { /* stopping and nothing left */
            pthread_mutex_unlock(&h->mu);
            break;
        }
        h->head = rq->next;
        if (h->head == NULL) {
            h->tail = NULL;
        }
        rq->on_queue = 0;
        assert(http__req_ok(rq));
        int stopping = h->stopping;
        pthread_mutex_unlock(&h->mu);
        log_set_request_id(rq->request_id);

        if (rq->is_claim) {
            if (!stopping) {
                /* Off the worker queue, in the claim module's hands (it
                 * may put the claim back in its coupon's queue). Answers
                 * through http__claim_done, this one included. */
                rq->state = HTTP__PARKED;
                claim_run(&rq->waiter);
                log_set_request_id(NULL);
                continue;
            }
            claim_cancel(&rq->waiter); /* answers the claims behind it */
            http__answer_shutting_down(rq);
        } else if (stopping) {
            http__answer_shutting_down(rq);
        } else {
            http__handle(rq);
        }
        log_set_request_id(NULL);
        rq->state = HTTP__ANSWERED;
        /* The event loop then calls the access handler, which sends
         * rq->resp. */
        http__resume(rq);
    }
    return NULL;
}

/* Appends rq to the worker queue. Under h->mu, not stopping. */
static void http__push(http_t *h, http__req_t *rq) {
    rq->state = HTTP__QUEUED;
    rq->next = NULL;
    if (h->tail != NULL) {
        h->tail->next = rq;
    } else {
        h->head = rq;
    }
    h->tail = rq;
    rq->on_queue = 1;
    assert(http__req_ok(rq));
    pthread_cond_signal(&h->work);
}

/* What http__enqueue and http__claim_dispatch did with a request. */
enum {
    HTTP__ENQUEUED = 0, /* on the worker queue, its connection suspended */
    HTTP__STOPPING = 1, /* the workers are stopping: not queued */
};

/* Queues rq and suspends its connection: HTTP__ENQUEUED. When the workers
 * are stopping, does neither and returns HTTP__STOPPING: the caller answers
 * on the event loop. The
 * decision is made under the mutex the workers take, so a request is never
 * queued after the last worker looked at the queue for the last time. */
static int http__enqueue(http_t *h, http__req_t *rq) {
    pthread_mutex_lock(&h->mu);
    if (h->stopping) {
        pthread_mutex_unlock(&h->mu);
        return HTTP__STOPPING;
    }
    /* Time in the queue counts against the lock-wait deadline (a claim's
     * deadline was set when it was submitted). */
    if (!rq->is_claim) {
        rq->deadline_ns = mono_ns() + (int64_t)h->cfg->lock_wait_ms * MONO_MS;
    }
    /* Suspended before any worker can see it, so the worker's resume never
     * comes first. */
    http__suspend(rq);
    http__push(h, rq);
    pthread_mutex_unlock(&h->mu);
    return HTTP__ENQUEUED;
}

/* The claim's callbacks (claim.h). park runs on the event loop inside
 * claim_submit, under the claim module's mutex and before any leader can
 * see the claim, so the resume in done never comes before the suspend. */
static void http__claim_park(claim_waiter_t *w) {
    http__req_t *rq = w->arg;
    rq->state = HTTP__PARKED;
    http__suspend(rq);
    assert(http__req_ok(rq));
}

/* On a worker: the claim's answer is final. From the resume on, the event
 * loop owns rq again. */
static void http__claim_done(claim_waiter_t *w) {
    http__req_t *rq = w->arg;
    api_claim_respond(w, &rq->resp);
    rq->state = HTTP__ANSWERED;
    http__resume(rq);
}

/* On a worker: the parked claim becomes its coupon's leader and needs a
 * worker of its own. Its connection stays suspended. HTTP__ENQUEUED, or
 * HTTP__STOPPING when the workers are stopping (the claim module then
 * answers it through done). */
static int http__claim_dispatch(claim_waiter_t *w) {
    http__req_t *rq = w->arg;
    http_t *h = rq->h;
    pthread_mutex_lock(&h->mu);
    if (h->stopping) {
        pthread_mutex_unlock(&h->mu);
        return HTTP__STOPPING;
    }
    assert(rq->state == HTTP__PARKED);
    http__push(h, rq);
    pthread_mutex_unlock(&h->mu);
    return HTTP__ENQUEUED;
}

/* ---------------------------------------------------- slow clients --- */

/*
 * libmicrohttpd's connection timeout is an *idle* timeout: a client that
 * sends one byte every few seconds is never idle, and could hold a
 * connection slot for hours while it trickles in a request. So every
 * connection also has a deadline: its request must have arrived within
 * COUPON_CONN_TIMEOUT_S of the connection being opened or of the previous
 * response. While a request is being answered there is no deadline. The
 * reaper thread shuts down (shutdown(2), not close) the socket of a
 * connection past its deadline; the event loop then sees the connection
 * fail and closes it in the ordinary way.
 *
 * The fd is only used while the record is on the list, and the record is
 * taken off (under conns_mu) when libmicrohttpd reports the connection
 * closed, which it does before it closes the socket: the reaper can never
 * shut down a reused fd.
 */
static void http__conn_notify(void *cls, struct MHD_Connection *conn,
                              void **socket_context,
                              enum MHD_ConnectionNotificationCode toe) {
    http_t *h = cls;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        http__conn_t *c = calloc(1, sizeof(*c));
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (c == NULL || ci == NULL) {
            free(c);
            *socket_context = NULL; /* no deadline for this one */
            return;
        }
        c->fd = ci->connect_fd;
        c->linger_fd = -1;
        c->deadline_ns = mono_ns() + h->request_deadline_ns;
        pthread_mutex_lock(&h->conns_mu);
        c->next = h->conns;
        if (h->conns != NULL) {
            h->conns->prev = c;
        }
        h->conns = c;
        pthread_mutex_unlock(&h->conns_mu);
        *socket_context = c;
        return;
    }
    http__conn_t *c = *socket_context;
    if (c == NULL) {
        return;
    }
    pthread_mutex_lock(&h->conns_mu);
    if (c->prev != NULL) {
        c->prev->next = c->next;
    } else {
        h->conns = c->next;
    }
    if (c->next != NULL) {
        c->next->prev = c->prev;
    }
    if (c->linger_fd >= 0) {
        http__linger_t *l =
            h->nlingers < HTTP__LINGER_MAX ? calloc(1, sizeof(*l)) : NULL;
        if (l != NULL) {
            l->fd = c->linger_fd;
            l->deadline_ns = mono_ns() + HTTP__LINGER_MS * MONO_MS;
            l->left = HTTP__LINGER_BYTES;
            l->next = h->lingers;
            h->lingers = l;
            h->nlingers++;
            pthread_cond_signal(&h->reaper_wake);
        } else {
            close(c->linger_fd); /* too many at once: a plain close */
        }
    }
    pthread_mutex_unlock(&h->conns_mu);
    free(c);
    *socket_context = NULL;
}

/* conn's record (http__conn_notify made it), or NULL when there is none (it
 * could not be allocated). Borrowed: freed when the connection closes. */
static http__conn_t *http__conn_of(struct MHD_Connection *conn) {
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci != NULL ? ci->socket_context : NULL;
}

/*
 * Lingering. When libmicrohttpd answers early and closes (the 413 for a
 * Content-Length over the limit, a 400 for bad framing), the request body is
 * still arriving. Closing a socket with unread input makes the kernel send a
 * RST instead of a FIN, and a client that is still writing its body then
 * gets EPIPE or "connection reset" and never reads the answer that was
 * already on its way. libmicrohttpd 0.9.75 has no lingering close of its
 * own: it shuts down the sending side and closes. So http__send keeps a dup
 * of the socket for every answer that closes; the socket then outlives
 * libmicrohttpd's close, the FIN goes out after the answer, and the reaper
 * reads and drops what the client still sends until it closes its side, or
 * until HTTP__LINGER_BYTES or HTTP__LINGER_MS, whichever comes first.
 */
static void http__linger_arm(http_t *h, struct MHD_Connection *conn) {
    http__conn_t *c = http__conn_of(conn);
    if (c == NULL) {
        return;
    }
    pthread_mutex_lock(&h->conns_mu);
    if (c->linger_fd < 0) {
        c->linger_fd = fcntl(c->fd, F_DUPFD_CLOEXEC, 0);
    }
    pthread_mutex_unlock(&h->conns_mu);
}

/* One round over the lingering sockets: waits up to 100 ms for input, drops
 * it, closes those that are done. Called by the reaper with conns_mu held;
 * releases it while it waits and reads. Only the reaper removes records or
 * touches their fields after insertion, so the pointers taken under the
 * mutex stay valid while it is released. */
static void http__linger_round(http_t *h) {
    struct pollfd pfd[HTTP__LINGER_MAX];
    http__linger_t *rec[HTTP__LINGER_MAX];
    nfds_t n = 0;
    for (http__linger_t *l = h->lingers; l != NULL && n < HTTP__LINGER_MAX;
         l = l->next) {
        rec[n] = l;
        pfd[n].fd = l->fd;
        pfd[n].events = POLLIN;
        pfd[n].revents = 0;
        n++;
    }
    pthread_mutex_unlock(&h->conns_mu);
    int ready = poll(pfd, n, 100);
    int64_t now = mono_ns();
    for (nfds_t i = 0; i < n; i++) {
        http__linger_t *l = rec[i];
        if (ready > 0 && pfd[i].revents != 0) {
            static char sink[65536]; /* only this thread reads into it */
            ssize_t got = recv(l->fd, sink,
                               l->left < sizeof(sink) ? l->left : sizeof(sink),
                               MSG_DONTWAIT);
            if (got > 0) {
                l->left -= (size_t)got;
            } else if (got == 0 || (errno != EAGAIN && errno != EINTR)) {
                l->done = 1;
            }
        }
        if (l->left == 0 || now >= l->deadline_ns) {
            l->done = 1;
        }
    }
    pthread_mutex_lock(&h->conns_mu);
    for (http__linger_t **pp = &h->lingers; *pp != NULL;) {
        http__linger_t *l = *pp;
        if (l->done) {
            *pp = l->next;
            close(l->fd);
            free(l);
            h->nlingers--;
        } else {
            pp = &l->next;
        }
    }
}

/* busy = 1: a request is complete and being answered; busy = 0: answered,
 * the next request's deadline starts now. */
static void http__conn_busy(http_t *h, struct MHD_Connection *conn, int busy) {
    http__conn_t *c = http__conn_of(conn);
    if (c == NULL) {
        return;
    }
    pthread_mutex_lock(&h->conns_mu);
    c->busy = busy;
    if (!busy) {
        c->deadline_ns = mono_ns() + h->request_deadline_ns;
    }
    pthread_mutex_unlock(&h->conns_mu);
}

static void *http__reaper(void *arg) {
    http_t *h = arg;
    pthread_mutex_lock(&h->conns_mu);
    while (!h->reaper_stop) {
        int64_t now = mono_ns();
        for (http__conn_t *c = h->conns; c != NULL; c = c->next) {
            if (!c->busy && !c->reaped && now >= c->deadline_ns) {
                c->reaped = 1;
                shutdown(c->fd, SHUT_RDWR);
                log_debug("http.slow_client",
                          "fd=%d closed: no complete "
                          "request within %lld s",
                          (int)c->fd,
                          (long long)(h->request_deadline_ns / MONO_S));
            }
        }
        if (h->lingers != NULL) {
            http__linger_round(h); /* waits up to 100 ms */
            continue;
        }
        int64_t next = mono_ns() + 500 * MONO_MS;
        struct timespec ts = mono_ts_from_ns(next);
        pthread_cond_timedwait(&h->reaper_wake, &h->conns_mu, &ts);
    }
    /* Stopping: whatever still lingers is closed as it is. */
    while (h->lingers != NULL) {
        http__linger_t *l = h->lingers;
        h->lingers = l->next;
        close(l->fd);
        free(l);
    }
    h->nlingers = 0;
    pthread_mutex_unlock(&h->conns_mu);
    return NULL;
}

/* ------------------------------------------------------------- handler --- */

/* What the handler checks in the header block before anything else
 * (MHD_KeyValueIterator over the request's headers). */
typedef struct http__framing {
    int content_length;    /* Content-Length headers seen */
    int transfer_encoding; /* Transfer-Encoding headers seen */
    int te_not_chunked;    /* one of them is not exactly "chunked" */
    int host;              /* Host headers seen */
    const char *bad;       /* the first reason to refuse, static; or NULL */
} http__framing_t;

/* 1 if s is a token (RFC 9110 section 5.6.2): one or more tchar. */
static int http__is_token(const char *s) {
    static const char extra[] = "!#$%&'*+-.^_`|~";
    if (*s == '\0') {
        return 0;
    }
    for (; *s != '\0'; s++) {
        unsigned char ch = (unsigned char)*s;
        int alnum = (ch >= '0' && ch <= '9') || (ch >= 'A' && ch <= 'Z') ||
                    (ch >= 'a' && ch <= 'z');
        if (!alnum && strchr(extra, ch) == NULL) {
            return 0;
        }
    }
    return 1;
}

/* 1 if name starts with prefix (any case) and goes on after it. */
static int http__extends(const char *name, const char *prefix) {
    size_t n = strlen(prefix);
    return strncasecmp(name, prefix, n) == 0 && name[n] != '\0';
}

/*
 * libmicrohttpd 0.9.75 keeps whatever precedes the colon as the header
 * name, so "Transfer-Encoding : chunked" is a header named
 * "Transfer-Encoding " that frames nothing here, while a proxy in front may
 * read it as chunked. It also appends a folded continuation line (obsolete
 * line folding) to the header *name*, so "Content-Length:\r\n 5" arrives as
 * a header "Content-Length5" with an empty value. Either way the body would
 * be framed here differently from how some front end frames it, and the
 * difference would be read as a request of its own. RFC 9112 asks for 400
 * on whitespace before the colon and allows it for folding: every name must
 * be a token, and no name may be Content-Length or Transfer-Encoding with
 * something after it. A Transfer-Encoding other than exactly "chunked"
 * (libmicrohttpd reads "gzip", "chunked, identity" or "xchunked" as "the
 * body ends when the connection does") or given twice is refused too.
 */
static enum MHD_Result http__count_framing(void *cls, enum MHD_ValueKind kind,
                                           const char *key, const char *value) {
    http__framing_t *f = cls;
    (void)kind;
    if (f->bad == NULL && !http__is_token(key)) {
        f->bad = "a header name is not a token (whitespace before the colon, "
                 "or a folded header line)";
    } else if (f->bad == NULL &&
               (http__extends(key, MHD_HTTP_HEADER_CONTENT_LENGTH) ||
                http__extends(key, MHD_HTTP_HEADER_TRANSFER_ENCODING))) {
        f->bad = "a header name extends Content-Length or Transfer-Encoding "
                 "(a folded header line)";
    }
    if (strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH) == 0) {
        f->content_length++;
    } else if (strcasecmp(key, MHD_HTTP_HEADER_TRANSFER_ENCODING) == 0) {
        f->transfer_encoding++;
        if (value == NULL || strcasecmp(value, "chunked") != 0) {
            f->te_not_chunked = 1;
        }
    } else if (strcasecmp(key, MHD_HTTP_HEADER_HOST) == 0) {
        f->host++;
    }
    return MHD_YES;
}

/* 1 if the request says in more than one way where its body ends: two
 * Content-Length headers, or Content-Length with Transfer-Encoding.
 * libmicrohttpd 0.9.75 picks one of them silently; a proxy in front may
 * pick the other, and then the rest of this request's body would be read
 * here as a second request ("request smuggling"). RFC 9112 section 6.3:
 * answer 400 and close the connection. */
static int http__ambiguous_framing(const http__framing_t *f) {
    return f->content_length > 1 ||
           (f->content_length > 0 && f->transfer_encoding > 0);
}

/* 1 if Transfer-Encoding is present and not exactly one "chunked". */
static int http__bad_transfer_encoding(const http__framing_t *f) {
    return f->transfer_encoding > 1 || f->te_not_chunked;
}

/* 1 if the Host header is wrong for the version: RFC 9112 section 3.2 asks
 * for 400 when an HTTP/1.1 request has none, and when any request has more
 * than one. libmicrohttpd 0.9.75 accepts both. Nothing here routes by Host,
 * but a proxy in front may have, and it may have read a different one. */
static int http__bad_host(const http__framing_t *f, const char *version) {
    return f->host > 1 ||
           (f->host == 0 && strcmp(version, MHD_HTTP_VERSION_1_1) == 0);
}

/* A 400 with our JSON error body; detail is a static string without
 * characters that need escaping in JSON. */
static void http__answer_400(http__req_t *rq, const char *detail) {
    memset(&rq->resp, 0, sizeof(rq->resp));
    rq->resp.status = 400;
    size_t n = strlen(detail) + 48;
    rq->resp.body = malloc(n);
    if (rq->resp.body != NULL) {
        snprintf(rq->resp.body, n,
                 "{\"error\":\"bad_request\",\"detail\":\"%s\"}", detail);
    }
    rq->resp.len = rq->resp.body != NULL ? strlen(rq->resp.body) : 0;
}

/* The request's id: the client's X-Request-Id when it is well-formed (the
 * load balancer sends its own $request_id when the client's was not), else
 * a new one, 32 hex digits like nginx's: this process's random prefix and a
 * counter, so ids are unique without a system call per request. */
static void http__request_id(http_t *h, struct MHD_Connection *conn,
                             char out[REQ_REQUEST_ID_MAX + 1]) {
    const char *got =
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Request-Id");
    if (req_valid_request_id(got)) {
        snprintf(out, REQ_REQUEST_ID_MAX + 1, "%s", got);
        return;
    }
    uint64_t n = atomic_fetch_add(&h->rid_next, 1);
    snprintf(out, REQ_REQUEST_ID_MAX + 1, "%016llx%016llx",
             (unsigned long long)h->rid_prefix, (unsigned long long)n);
}

static char *http__dup(const char *s) {
    return s != NULL ? strdup(s) : NULL;
}

/* A complete POST /claim, on the event loop: answered here, queued for a
 * worker, or parked (see the top). */
static enum MHD_Result http__claim(http_t *h, http__req_t *rq) {
    rq->is_claim = 1;
    rq->h = h;
    rq->waiter.park = http__claim_park;
    rq->waiter.done = http__claim_done;
    rq->waiter.dispatch = http__claim_dispatch;
    rq->waiter.arg = rq;
    memcpy(rq->waiter.request_id, rq->request_id, sizeof(rq->request_id));
    /* The claim's deadline counts from now: time parked or queued counts. */
    rq->deadline_ns = mono_ns() + (int64_t)h->cfg->lock_wait_ms * MONO_MS;
    api_request_t ar = http__api_request(rq);
    switch (api_claim_submit(&ar, &rq->resp, &rq->waiter)) {
    case API_CLAIM_PARKED:
        return MHD_YES; /* suspended by http__claim_park */
    case API_CLAIM_RUN:
        if (http__enqueue(h, rq) == HTTP__ENQUEUED) {
            return MHD_YES;
        }
        /* The workers are stopping: nobody will lead its coupon's queue. */
        claim_cancel(&rq->waiter);
        http__answer_shutting_down(rq);
        return http__send(h, rq, 1);
    default:
        return http__send(h, rq, 0);
    }
}

/* The first call for a request: its headers are in, no body read yet.
 * Makes rq (owned by *con_cls from here), then checks the framing and
 * answers 400 if it is ambiguous, or the early 413 for a Content-Length
 * over the limit. */
static enum MHD_Result http__begin(http_t *h, struct MHD_Connection *conn,
                                   const char *url, const char *method,
                                   const char *version, void **con_cls) {
    http__req_t *rq = calloc(1, sizeof(*rq));
    if (rq == NULL) {
        return MHD_NO;
    }
    *con_cls = rq;
    atomic_fetch_add(&h->requests, 1);
    rq->conn = conn;
    snprintf(rq->method, sizeof(rq->method), "%s", method);
    rq->path = http__dup(url);
    rq->content_type = http__dup(MHD_lookup_connection_value(
        conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE));
    rq->authorization = http__dup(MHD_lookup_connection_value(
        conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION));
    http__request_id(h, conn, rq->request_id);
    if (rq->path == NULL) {
        return MHD_NO;
    }
    /* Framing first: until it is known to be unambiguous, nothing
     * else about the request can be trusted. */
    http__framing_t f = {0, 0, 0, 0, NULL};
    MHD_get_connection_values(conn, MHD_HEADER_KIND, http__count_framing, &f);
    if (f.bad != NULL) {
        http__answer_400(rq, f.bad);
        return http__send(h, rq, 1);
    }
    if (http__bad_transfer_encoding(&f)) {
        http__answer_400(rq, "Transfer-Encoding must be exactly "
                             "chunked, once");
        return http__send(h, rq, 1);
    }
    if (http__ambiguous_framing(&f)) {
        http__answer_400(rq, "conflicting Content-Length or "
                             "Transfer-Encoding headers");
        return http__send(h, rq, 1);
    }
    if (http__bad_host(&f, version)) {
        http__answer_400(rq, "an HTTP/1.1 request needs exactly one "
                             "Host header, and no request may have two");
        return http__send(h, rq, 1);
    }
    const char *cl = MHD_lookup_connection_value(
        conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl != NULL && strtoull(cl, NULL, 10) > h->cfg->max_body) {
        /* Answer before reading the body at all, here on the event
         * loop: with body_too_large set, the API decides the status from
         * the route alone (404, 405, 401 for the admin route, else 413)
         * and calls no backend. libmicrohttpd closes the connection
         * after an answer this early; it lingers (http__send). */
        rq->too_large = 1;
        http__handle(rq);
        return http__send(h, rq, 1);
    }
    return MHD_YES;
}

/* One chunk of rq's body: kept up to COUPON_MAX_BODY, dropped beyond it
 * (the answer is then 413). */
static enum MHD_Result http__body_chunk(http_t *h, http__req_t *rq,
                                        const char *upload_data,
                                        size_t *upload_data_size) {
    size_t n = *upload_data_size;
    *upload_data_size = 0; /* consumed (or dropped) */
    if (rq->too_large) {
        return MHD_YES;
    }
    if (rq->len + n > h->cfg->max_body) {
        rq->too_large = 1;
        free(rq->body);
        rq->body = NULL;
        rq->len = 0;
        return MHD_YES;
    }
    if (rq->body == NULL) {
        rq->body = malloc(h->cfg->max_body + 1);
        if (rq->body == NULL) {
            return MHD_NO;
        }
    }
    memcpy(rq->body + rq->len, upload_data, n);
    rq->len += n;
    return MHD_YES;
}

static enum MHD_Result http__access(void *cls, struct MHD_Connection *conn,
                                    const char *url, const char *method,
                                    const char *version,
                                    const char *upload_data,
                                    size_t *upload_data_size, void **con_cls) {
    http_t *h = cls;
    http__req_t *rq = *con_cls;

    if (rq == NULL) {
        return http__begin(h, conn, url, method, version, con_cls);
    }

    if (rq->state == HTTP__ANSWERED) {
        return http__send(h, rq, 0);
    }

    if (*upload_data_size > 0) {
        return http__body_chunk(h, rq, upload_data, upload_data_size);
    }

    /* The whole request is in. */
    http__conn_busy(h, conn, 1);
    if (api_is_inline(rq->method, rq->path)) {
        http__handle(rq);
        return http__send(h, rq, 0);
    }
    if (api_is_claim(rq->method, rq->path)) {
        return http__claim(h, rq);
    }
    if (http__enqueue(h, rq) != HTTP__ENQUEUED) {
        http__answer_shutting_down(rq);
        return http__send(h, rq, 1);
    }
    return MHD_YES;
}

static void http__completed(void *cls, struct MHD_Connection *conn,
                            void **con_cls,
                            enum MHD_RequestTerminationCode toe) {
    http_t *h = cls;
    (void)toe;
    http__req_t *rq = *con_cls;
    http__conn_busy(h, conn, 0);
    if (rq != NULL) {
        atomic_fetch_sub(&h->requests, 1);
        api_response_free(&rq->resp);
        free(rq->body);
        free(rq->path);
        free(rq->content_type);
        free(rq->authorization);
        free(rq);
        *con_cls = NULL;
    }
}

/* libmicrohttpd's own URL unescaping, except that a URL holding "%00" is
 * left as it is. Decoded, the NUL would end the C string the handler sees,
 * and "/coupons/c1%00x" would be served as coupon "c1". Left encoded, the
 * '%' fails validation like any other byte an id may not contain. */
static size_t http__unescape(void *cls, struct MHD_Connection *conn, char *s) {
    (void)cls;
    (void)conn;
    if (strstr(s, "%00") != NULL) {
        return strlen(s);
    }
    return MHD_http_unescape(s);
}

static void http__log(void *cls, const char *fmt, va_list ap) {
    (void)cls;
    char msg[256];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    str_trim_newline(msg);
    log_debug("http.mhd", "msg=\"%s\"", msg);
}

/* -------------------------------------------------------- start / stop --- */

static void http__stop_workers(http_t *h) {
    pthread_mutex_lock(&h->mu);
    h->stopping = 1;
    pthread_cond_broadcast(&h->work);
    pthread_mutex_unlock(&h->mu);
    for (uint32_t i = 0; i < h->nworkers; i++) {
        pthread_join(h->workers[i], NULL);
    }
    h->nworkers = 0;
}

static void http__free(http_t *h) {
    if (h->reaper_started) {
        pthread_mutex_lock(&h->conns_mu);
        h->reaper_stop = 1;
        pthread_cond_signal(&h->reaper_wake);
        pthread_mutex_unlock(&h->conns_mu);
        pthread_join(h->reaper, NULL);
    }
    while (h->lingers != NULL) { /* only without a reaper */
        http__linger_t *l = h->lingers;
        h->lingers = l->next;
        close(l->fd);
        free(l);
    }
    pthread_mutex_destroy(&h->mu);
    pthread_cond_destroy(&h->work);
    pthread_mutex_destroy(&h->conns_mu);
    pthread_cond_destroy(&h->reaper_wake);
    free(h->workers);
    free(h);
}

/* Phase 1 of http_start: h's locks, clocks and request-id prefix, and
 * its workers (h->nworkers says how many started). */
static void http__init(http_t *h, const cfg_t *cfg) {
    h->cfg = cfg;
    if (getrandom(&h->rid_prefix, sizeof(h->rid_prefix), 0) !=
        (ssize_t)sizeof(h->rid_prefix)) {
        h->rid_prefix = (uint64_t)mono_ns() ^ ((uint64_t)getpid() << 32);
    }
    pthread_mutex_init(&h->mu, NULL);
    pthread_mutex_init(&h->conns_mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&h->reaper_wake, &ca);
    pthread_condattr_destroy(&ca);
    h->request_deadline_ns = (int64_t)cfg->conn_timeout_s * MONO_S;
    pthread_cond_init(&h->work, NULL);
    h->workers = calloc(cfg->threads, sizeof(*h->workers));
    for (uint32_t i = 0; h->workers != NULL && i < cfg->threads; i++) {
        if (pthread_create(&h->workers[i], NULL, http__worker, h) != 0) {
            break;
        }
        h->nworkers++;
    }
}

/* Phase 2 of http_start: libmicrohttpd's daemon listening on ai, or NULL. */
static struct MHD_Daemon *http__daemon(http_t *h, const struct addrinfo *ai) {
    const cfg_t *cfg = h->cfg;
    unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_USE_ITC |
                     MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6) {
        flags |= MHD_USE_IPv6;
    }
    return MHD_start_daemon(
        flags, cfg->http.port, NULL, NULL, http__access, h,
        MHD_OPTION_SOCK_ADDR, ai->ai_addr, MHD_OPTION_THREAD_POOL_SIZE,
        (unsigned int)cfg->http_threads, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned int)cfg->max_connections, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned int)cfg->conn_timeout_s, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
        (size_t)cfg->conn_memory_limit, MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024U,
        MHD_OPTION_NOTIFY_COMPLETED, http__completed, h,
        MHD_OPTION_NOTIFY_CONNECTION, http__conn_notify, h,
        MHD_OPTION_EXTERNAL_LOGGER, http__log, h, MHD_OPTION_UNESCAPE_CALLBACK,
        http__unescape, h, MHD_OPTION_END);
}

http_t *http_start(const cfg_t *cfg) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    char port[8];
    snprintf(port, sizeof(port), "%u", cfg->http.port);
    int gai = getaddrinfo(cfg->http.host[0] != '\0' ? cfg->http.host : NULL,
                          port, &hints, &ai);
    if (gai != 0) {
        log_error("http.start", "cannot resolve %s: %s", cfg->http.host,
                  gai_strerror(gai));
        return NULL;
    }

    http_t *h = calloc(1, sizeof(*h));
    if (h == NULL) {
        freeaddrinfo(ai);
        return NULL;
    }
    http__init(h, cfg);
    if (h->nworkers != cfg->threads) {
        log_error("http.start", "cannot start %u workers", cfg->threads);
        http__stop_workers(h);
        http__free(h);
        freeaddrinfo(ai);
        return NULL;
    }

    h->d = http__daemon(h, ai);
    freeaddrinfo(ai);
    if (h->d == NULL) {
        log_error("http.start", "cannot listen on %s:%u (in use?)",
                  cfg->http.host, cfg->http.port);
        http__stop_workers(h);
        http__free(h);
        return NULL;
    }
    if (pthread_create(&h->reaper, NULL, http__reaper, h) == 0) {
        h->reaper_started = 1;
    } else {
        log_warn("http.start", "no slow-client reaper: pthread_create failed");
    }
    return h;
}

void http_stop(http_t *h, uint32_t grace_ms) {
    if (h == NULL) {
        return;
    }
    /* 1. No new connections. 2. Open ones get "Connection: close" on their
     * next response, so keep-alive clients (the load balancer) move on.
     * 3. Wait until every request in progress has been answered, bounded
     * by grace_ms. 4. Stop the workers: whatever is still queued then is
     * answered 503, every suspended connection gets resumed (libmicrohttpd
     * requires that before it stops), and a request that completes later,
     * say on a kept-alive connection, is answered 503 by the event loop.
     * 5. Wait, bounded, until those answers are written. 6. Stop the event
     * loops. */
    atomic_store(&h->draining, 1);
    ready_set_draining(); /* /readyz: 503 from now on */
    /* The listening socket is ours now, but not to close yet: the event
     * loops take it out of their epoll sets on their own time, and
     * libmicrohttpd's manual says a threaded daemon's socket must stay
     * open until MHD_stop_daemon has returned. Closed earlier, a loop's
     * epoll_ctl races with the close (ThreadSanitizer caught one), and it
     * could reach a new descriptor given the same number. shutdown() stops
     * the listening at once (new connections are refused) and keeps the
     * descriptor; it is closed after MHD_stop_daemon, below. */
    MHD_socket ls = MHD_quiesce_daemon(h->d);
    if (ls != MHD_INVALID_SOCKET) {
        shutdown(ls, SHUT_RDWR);
    }
    int64_t deadline = mono_ns() + (int64_t)grace_ms * MONO_MS;
    while (atomic_load(&h->requests) > 0 && mono_ns() < deadline) {
        mono_sleep_ns(10 * MONO_MS);
    }
    long left = atomic_load(&h->requests);
    if (left > 0) {
        log_warn("http.drain",
                 "stopping with %ld request(s) in progress "
                 "after %u ms",
                 left, grace_ms);
    }
    http__stop_workers(h);
    /* No connection is suspended now (the workers emptied the queue, and
     * nothing is queued once they are stopping), and any request that
     * completes from here on is answered 503 on the event loop. Wait until
     * every answer is written (a request counts until libmicrohttpd reports
     * it complete), bounded: a client that never finishes its request must
     * not hold the process. */
    deadline = mono_ns() + HTTP__FLUSH_MS * MONO_MS;
    while (atomic_load(&h->requests) > 0 && mono_ns() < deadline) {
        mono_sleep_ns(5 * MONO_MS);
    }
    left = atomic_load(&h->requests);
    if (left > 0) {
        log_warn("http.drain",
                 "closing %ld connection(s) with a request still unanswered "
                 "after the workers stopped",
                 left);
    }
    MHD_stop_daemon(h->d);
    if (ls != MHD_INVALID_SOCKET) {
        close(ls);
    }
    http__free(h);
}
