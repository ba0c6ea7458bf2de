/*
 * http.c: libmicrohttpd glue and the claim workers; see http.h for the
 * threading model.
 *
 * libmicrohttpd calls the access handler several times per request: once
 * when the headers are in (*con_cls still NULL), once per chunk of body, and
 * once more with no data when the body is complete. The body is collected in
 * a per-request buffer up to COUPON_MAX_BODY; beyond that the rest is read
 * and dropped and the answer is 413. A Content-Length above the limit is
 * answered 413 at once, before any body is read.
 *
 * A request's life (http__req_t.state):
 *
 *   READING --body complete--> QUEUED --worker done--> ANSWERED --> sent
 *      |                        (connection suspended)
 *      +--inline route or early 413--> sent
 *
 * Invariant: a request is on the queue iff its state is QUEUED, and its
 * connection is suspended exactly while it is QUEUED. Every QUEUED request is
 * resumed exactly once, by the worker that answered it.
 */
#include "http.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netdb.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "api.h"
#include "log.h"
#include "mono.h"
#include "ready.h"

typedef enum http__state {
    HTTP__READING = 0, /* headers in, body arriving */
    HTTP__QUEUED,      /* waiting for or held by a worker */
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
    api_response_t resp;    /* filled by the worker (or inline) */
    struct http__req *next; /* queue link */
} http__req_t;

/* One open connection, for the slow-client deadline (see http__reaper). */
typedef struct http__conn {
    MHD_socket fd;       /* the connection's socket; valid while listed */
    int64_t deadline_ns; /* the request must have arrived by then */
    int busy;            /* a request is being answered: no deadline */
    int reaped;          /* shut down once already */
    struct http__conn *prev, *next;
} http__conn_t;

struct http {
    struct MHD_Daemon *d;
    const cfg_t *cfg;
    int64_t request_deadline_ns; /* COUPON_CONN_TIMEOUT_S, in ns */

    /* Open connections, guarded by conns_mu; the reaper walks them. */
    pthread_mutex_t conns_mu;
    http__conn_t *conns;
    pthread_t reaper;
    pthread_cond_t reaper_wake;
    int reaper_stop;
    int reaper_started;
    atomic_int draining;  /* set by http_stop: answer Connection: close */
    atomic_long requests; /* requests between first call and completion */

    /* The work queue: FIFO, guarded by mu. */
    pthread_mutex_t mu;
    pthread_cond_t work;
    http__req_t *head, *tail;
    int stopping; /* workers answer what is left with 503, exit */
    pthread_t *workers;
    uint32_t nworkers;
};

/* ------------------------------------------------------------ responses --- */

/* Queues r on conn; close_after adds "Connection: close", so that nothing
 * the client sent after this request is read as another request. */
static enum MHD_Result http__send(http_t *h, struct MHD_Connection *conn,
                                  api_response_t *r, int close_after) {
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
    if (r->www_authenticate) {
        MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE,
                                "Bearer");
    }
    if (atomic_load(&h->draining) || close_after) {
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    }
    enum MHD_Result ret = MHD_queue_response(conn, r->status, resp);
    MHD_destroy_response(resp);
    return ret;
}

static void http__handle(http__req_t *rq) {
    api_request_t ar = {
        .method = rq->method,
        .path = rq->path,
        .content_type = rq->content_type,
        .authorization = rq->authorization,
        .body = rq->body,
        .body_len = rq->len,
        .body_too_large = rq->too_large,
    };
    api_handle(&ar, &rq->resp);
}

/* ------------------------------------------------------------- workers --- */

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
        int stopping = h->stopping;
        pthread_mutex_unlock(&h->mu);

        if (stopping) {
            http__answer_shutting_down(rq);
        } else {
            http__handle(rq);
        }
        rq->state = HTTP__ANSWERED;
        /* From here on the event loop owns rq again: it calls the access
         * handler, which sends rq->resp. */
        MHD_resume_connection(rq->conn);
    }
    return NULL;
}

static void http__enqueue(http_t *h, http__req_t *rq) {
    pthread_mutex_lock(&h->mu);
    rq->next = NULL;
    if (h->tail != NULL) {
        h->tail->next = rq;
    } else {
        h->head = rq;
    }
    h->tail = rq;
    pthread_cond_signal(&h->work);
    pthread_mutex_unlock(&h->mu);
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
    pthread_mutex_unlock(&h->conns_mu);
    free(c);
    *socket_context = NULL;
}

/* busy = 1: a request is complete and being answered; busy = 0: answered,
 * the next request's deadline starts now. */
static void http__conn_busy(http_t *h, struct MHD_Connection *conn, int busy) {
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    http__conn_t *c = ci != NULL ? ci->socket_context : NULL;
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
                          (long long)(h->request_deadline_ns / 1000000000LL));
            }
        }
        int64_t next = mono_ns() + 500 * MONO_MS;
        struct timespec ts = {.tv_sec = next / 1000000000LL,
                              .tv_nsec = next % 1000000000LL};
        pthread_cond_timedwait(&h->reaper_wake, &h->conns_mu, &ts);
    }
    pthread_mutex_unlock(&h->conns_mu);
    return NULL;
}

/* ------------------------------------------------------------- handler --- */

/* Counts the headers of a request that must not be ambiguous
 * (MHD_KeyValueIterator). */
typedef struct http__framing {
    int content_length;    /* Content-Length headers seen */
    int transfer_encoding; /* Transfer-Encoding headers seen */
    int host;              /* Host headers seen */
} http__framing_t;

static enum MHD_Result http__count_framing(void *cls, enum MHD_ValueKind kind,
                                           const char *key, const char *value) {
    http__framing_t *f = cls;
    (void)kind;
    (void)value;
    if (strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH) == 0) {
        f->content_length++;
    } else if (strcasecmp(key, MHD_HTTP_HEADER_TRANSFER_ENCODING) == 0) {
        f->transfer_encoding++;
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

static char *http__dup(const char *s) {
    return s != NULL ? strdup(s) : NULL;
}

static enum MHD_Result http__access(void *cls, struct MHD_Connection *conn,
                                    const char *url, const char *method,
                                    const char *version,
                                    const char *upload_data,
                                    size_t *upload_data_size, void **con_cls) {
    http_t *h = cls;
    http__req_t *rq = *con_cls;

    if (rq == NULL) {
        /* Headers are in; no body read yet. */
        rq = calloc(1, sizeof(*rq));
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
        if (rq->path == NULL) {
            return MHD_NO;
        }
        http__framing_t f = {0, 0, 0};
        MHD_get_connection_values(conn, MHD_HEADER_KIND, http__count_framing,
                                  &f);
        if (http__ambiguous_framing(&f)) {
            http__answer_400(rq, "conflicting Content-Length or "
                                 "Transfer-Encoding headers");
            return http__send(h, conn, &rq->resp, 1);
        }
        if (http__bad_host(&f, version)) {
            http__answer_400(rq, "an HTTP/1.1 request needs exactly one "
                                 "Host header, and no request may have two");
            return http__send(h, conn, &rq->resp, 1);
        }
        const char *cl = MHD_lookup_connection_value(
            conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl != NULL && strtoull(cl, NULL, 10) > h->cfg->max_body) {
            /* Answer before reading the body at all. The API decides the
             * status (405 beats 413, for one); no backend is involved. */
            rq->too_large = 1;
            http__handle(rq);
            return http__send(h, conn, &rq->resp, 0);
        }
        return MHD_YES;
    }

    if (rq->state == HTTP__ANSWERED) {
        return http__send(h, conn, &rq->resp, 0);
    }

    if (*upload_data_size > 0) {
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

    /* The whole request is in. */
    http__conn_busy(h, conn, 1);
    if (api_is_inline(rq->method, rq->path)) {
        http__handle(rq);
        return http__send(h, conn, &rq->resp, 0);
    }
    rq->state = HTTP__QUEUED;
    MHD_suspend_connection(conn);
    http__enqueue(h, rq);
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
    size_t n = strlen(msg);
    while (n > 0 && msg[n - 1] == '\n') {
        msg[--n] = '\0';
    }
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
    pthread_mutex_destroy(&h->mu);
    pthread_cond_destroy(&h->work);
    pthread_mutex_destroy(&h->conns_mu);
    pthread_cond_destroy(&h->reaper_wake);
    free(h->workers);
    free(h);
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
    h->cfg = cfg;
    pthread_mutex_init(&h->mu, NULL);
    pthread_mutex_init(&h->conns_mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&h->reaper_wake, &ca);
    pthread_condattr_destroy(&ca);
    h->request_deadline_ns = (int64_t)cfg->conn_timeout_s * 1000000000LL;
    pthread_cond_init(&h->work, NULL);
    h->workers = calloc(cfg->threads, sizeof(*h->workers));
    for (uint32_t i = 0; h->workers != NULL && i < cfg->threads; i++) {
        if (pthread_create(&h->workers[i], NULL, http__worker, h) != 0) {
            break;
        }
        h->nworkers++;
    }
    if (h->nworkers != cfg->threads) {
        log_error("http.start", "cannot start %u workers", cfg->threads);
        http__stop_workers(h);
        http__free(h);
        freeaddrinfo(ai);
        return NULL;
    }

    unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_USE_ITC |
                     MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6) {
        flags |= MHD_USE_IPv6;
    }
    h->d = MHD_start_daemon(
        flags, cfg->http.port, NULL, NULL, http__access, h,
        MHD_OPTION_SOCK_ADDR, ai->ai_addr, MHD_OPTION_THREAD_POOL_SIZE,
        (unsigned int)cfg->http_threads, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned int)cfg->max_connections, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned int)cfg->conn_timeout_s, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
        (size_t)(32 * 1024), MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024U,
        MHD_OPTION_NOTIFY_COMPLETED, http__completed, h,
        MHD_OPTION_NOTIFY_CONNECTION, http__conn_notify, h,
        MHD_OPTION_EXTERNAL_LOGGER, http__log, h, MHD_OPTION_UNESCAPE_CALLBACK,
        http__unescape, h, MHD_OPTION_END);
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
     * answered 503, and every suspended connection gets resumed, which
     * libmicrohttpd requires before it stops. 5. Stop the event loops. */
    atomic_store(&h->draining, 1);
    ready_set_draining(); /* /readyz: 503 from now on */
    MHD_socket ls = MHD_quiesce_daemon(h->d);
    if (ls != MHD_INVALID_SOCKET) {
        close(ls);
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
    /* Give the event loops a moment to send what the workers resumed. */
    mono_sleep_ns(50 * MONO_MS);
    MHD_stop_daemon(h->d);
    http__free(h);
}
