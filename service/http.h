/*
 * http.h: the HTTP server (libmicrohttpd), and nothing but transport.
 *
 * Threading model: an epoll thread pool of COUPON_THREADS threads. Each
 * thread runs its own event loop over its share of the connections, and
 * calls the API synchronously: a claim blocks its thread while it waits for
 * Redis and PostgreSQL. That is deliberate. It keeps each claim a straight
 * line of code a reader can follow, and it gives each thread exactly one
 * Redis connection and one PGconn with no pool and no locking. The price: a
 * thread blocked in a claim delays the other connections on that thread, so
 * COUPON_THREADS should be at least the number of claims you want in flight
 * per instance (lock mode serialises a hot coupon anyway).
 *
 * The connection limit and per-connection timeout are set explicitly (the
 * library's defaults are about 1020 connections and no timeout at all).
 */
#ifndef COUPONSVC_HTTP_H
#define COUPONSVC_HTTP_H

#include "cfg.h"

typedef struct http http_t;

/* Starts serving on cfg->http. Returns a new server (free with http_stop),
 * or NULL with a log line. Borrows cfg. */
http_t *http_start(const cfg_t *cfg);

/* Graceful stop: closes the listening socket, marks every further response
 * "Connection: close", waits until open connections have finished (at most
 * grace_ms), then stops the threads and frees. Requests in flight complete.
 * Accepts NULL. */
void http_stop(http_t *h, uint32_t grace_ms);

#endif
