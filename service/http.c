/*
 * http.c: libmicrohttpd glue; see http.h for the threading model.
 *
 * libmicrohttpd calls the access handler several times per request: once
 * when the headers are in (*con_cls still NULL), once per chunk of body, and
 * once more with no data when the body is complete. The body is collected in
 * a per-request buffer up to COUPON_MAX_BODY; beyond that the rest is read
 * and dropped and the answer is 413. A Content-Length above the limit is
 * answered 413 at once, before any body is read.
 */
#include "http.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "api.h"
#include "log.h"
#include "mono.h"

struct http {
    struct MHD_Daemon *d;
    const cfg_t *cfg;
    atomic_int draining;     /* set by http_stop: answer Connection: close */
    atomic_long connections; /* open connections right now */
    atomic_long requests;    /* requests between first call and completion */
};

/* One request's state, from the first call of the handler to completion. */
typedef struct http__req {
    char *body;     /* collected body; NULL until the first byte */
    size_t len;     /* bytes in body */
    int too_large;  /* passed the limit: the rest is dropped */
} http__req_t;

static enum MHD_Result http__send(http_t *h, struct MHD_Connection *conn,
                                  api_response_t *r) {
    struct MHD_Response *resp = MHD_create_response_from_buffer(
        r->len, r->body, MHD_RESPMEM_MUST_FREE);
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
    if (atomic_load(&h->draining)) {
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    }
    enum MHD_Result ret = MHD_queue_response(conn, r->status, resp);
    MHD_destroy_response(resp);
    return ret;
}

static void http__dispatch(http_t *h, struct MHD_Connection *conn,
                           const char *url, const char *method,
                           http__req_t *rq, api_response_t *out) {
    api_request_t ar = {
        .method = method,
        .path = url,
        .content_type = MHD_lookup_connection_value(
            conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE),
        .authorization = MHD_lookup_connection_value(
            conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION),
        .body = rq->body,
        .body_len = rq->len,
        .body_too_large = rq->too_large,
    };
    (void)h;
    api_handle(&ar, out);
}

static enum MHD_Result http__access(void *cls, struct MHD_Connection *conn,
                                    const char *url, const char *method,
                                    const char *version,
                                    const char *upload_data,
                                    size_t *upload_data_size, void **con_cls) {
    http_t *h = cls;
    http__req_t *rq = *con_cls;
    (void)version;

    if (rq == NULL) {
        /* Headers are in; no body read yet. */
        rq = calloc(1, sizeof(*rq));
        if (rq == NULL) {
            return MHD_NO;
        }
        *con_cls = rq;
        atomic_fetch_add(&h->requests, 1);
        const char *cl = MHD_lookup_connection_value(
            conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl != NULL && strtoull(cl, NULL, 10) > h->cfg->max_body) {
            rq->too_large = 1;
            api_response_t r;
            http__dispatch(h, conn, url, method, rq, &r);
            return http__send(h, conn, &r);
        }
        return MHD_YES;
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
    api_response_t r;
    http__dispatch(h, conn, url, method, rq, &r);
    return http__send(h, conn, &r);
}

static void http__completed(void *cls, struct MHD_Connection *conn,
                            void **con_cls,
                            enum MHD_RequestTerminationCode toe) {
    http_t *h = cls;
    (void)conn;
    (void)toe;
    http__req_t *rq = *con_cls;
    if (rq != NULL) {
        atomic_fetch_sub(&h->requests, 1);
        free(rq->body);
        free(rq);
        *con_cls = NULL;
    }
}

static void http__connection(void *cls, struct MHD_Connection *conn,
                             void **socket_context,
                             enum MHD_ConnectionNotificationCode toe) {
    http_t *h = cls;
    (void)conn;
    (void)socket_context;
    atomic_fetch_add(&h->connections,
                     toe == MHD_CONNECTION_NOTIFY_STARTED ? 1 : -1);
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

    unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_USE_ITC |
                     MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6) {
        flags |= MHD_USE_IPv6;
    }
    h->d = MHD_start_daemon(
        flags, cfg->http.port, NULL, NULL, http__access, h,
        MHD_OPTION_SOCK_ADDR, ai->ai_addr,
        MHD_OPTION_THREAD_POOL_SIZE, (unsigned int)cfg->threads,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned int)cfg->max_connections,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)cfg->conn_timeout_s,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(32 * 1024),
        MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024U,
        MHD_OPTION_NOTIFY_COMPLETED, http__completed, h,
        MHD_OPTION_NOTIFY_CONNECTION, http__connection, h,
        MHD_OPTION_EXTERNAL_LOGGER, http__log, h,
        MHD_OPTION_END);
    freeaddrinfo(ai);
    if (h->d == NULL) {
        log_error("http.start", "cannot listen on %s:%u (in use?)",
                  cfg->http.host, cfg->http.port);
        free(h);
        return NULL;
    }
    return h;
}

void http_stop(http_t *h, uint32_t grace_ms) {
    if (h == NULL) {
        return;
    }
    /* 1. No new connections. 2. Open ones get "Connection: close" on their
     * next response, so keep-alive clients (the load balancer) move on.
     * 3. Wait until no request is in progress and no connection is open,
     * bounded by grace_ms; idle keep-alive connections are not worth
     * waiting for once every request has been answered, so the wait for
     * connections is short. 4. Stop the threads. */
    atomic_store(&h->draining, 1);
    MHD_socket ls = MHD_quiesce_daemon(h->d);
    if (ls != MHD_INVALID_SOCKET) {
        close(ls);
    }
    int64_t start = mono_ns();
    int64_t deadline = start + (int64_t)grace_ms * MONO_MS;
    int64_t idle_wait = start + 200 * MONO_MS;
    for (;;) {
        int64_t now = mono_ns();
        long req = atomic_load(&h->requests);
        long conns = atomic_load(&h->connections);
        if (now >= deadline || (req == 0 && (conns == 0 || now >= idle_wait))) {
            break;
        }
        mono_sleep_ns(10 * MONO_MS);
    }
    long left = atomic_load(&h->requests);
    if (left > 0) {
        log_warn("http.drain", "stopping with %ld request(s) in progress "
                 "after %u ms", left, grace_ms);
    }
    MHD_stop_daemon(h->d);
    free(h);
}
