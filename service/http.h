/*
 * http.h: the HTTP server (libmicrohttpd), and nothing but transport.
 *
 * Threading model. Two kinds of threads, so that a slow backend never stalls
 * an unrelated connection:
 *
 *   - COUPON_HTTP_THREADS event-loop threads (libmicrohttpd's epoll thread
 *     pool) parse requests and write responses. They never wait on Redis or
 *     PostgreSQL. Each one serves many connections; if it blocked in a claim,
 *     every other connection it happens to own (including a health check,
 *     or a load balancer's kept-alive connection) would wait behind it.
 *   - COUPON_THREADS claim workers do the blocking work. When a request is
 *     complete, its connection is suspended and the request goes on a queue;
 *     a worker takes it, runs the API (which may wait on the lock and talk to
 *     PostgreSQL), stores the response and resumes the connection; the event
 *     loop then sends it. Each worker owns exactly one Redis connection and
 *     one PGconn (see claim.c), so no connection is shared and none needs a
 *     lock; the number of workers is the number of backend conversations one
 *     instance has in flight.
 *   - POST /claim is parsed on the event loop and handed to the claim
 *     module (claim.h): a claim whose coupon already has a leader parks in
 *     that coupon's queue on its suspended connection and holds no worker
 *     until the leader's batch answers it.
 *
 * GET /healthz, /readyz and /metrics touch no backend (/readyz reads the
 * state the readiness probe thread keeps, see ready.h) and are answered on
 * the event loop directly, so they stay responsive under any load. So are
 * the answers the event loop makes by itself, each decided without a
 * backend: 400 for ambiguous framing, the early 413 for a Content-Length
 * over the limit (from the route alone), and 503 shutting_down for a
 * request that completes once the workers are stopping.
 *
 * The connection limit and per-connection timeout are set explicitly (the
 * library's defaults are about 1020 connections and no timeout at all).
 */
#ifndef COUPONSVC_HTTP_H
#define COUPONSVC_HTTP_H

#include "cfg.h"

typedef struct http http_t;

/* Starts the workers and serves on cfg->http. Returns a new server (free
 * with http_stop), or NULL with a log line. Borrows cfg. */
http_t *http_start(const cfg_t *cfg);

/* Graceful stop: closes the listening socket, marks every further response
 * "Connection: close", waits until every request in progress is answered (at
 * most grace_ms; after that, queued requests are answered 503), stops the
 * workers (a request completing after that is answered 503 on the event
 * loop), waits until those answers are written (at most 1 s), then stops the
 * event loops and frees. Never aborts the process. Accepts NULL. */
void http_stop(http_t *h, uint32_t grace_ms);

#endif
