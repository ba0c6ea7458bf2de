/*
 * api.h: the HTTP API, independent of the HTTP library.
 *
 * http.c turns a libmicrohttpd request into an api_request_t, calls
 * api_handle, and sends the api_response_t back. Everything the contract
 * says about routes, status codes and JSON bodies lives in api.c; jansson is
 * used here and in req.c, nowhere deeper.
 */
#ifndef COUPONSVC_API_H
#define COUPONSVC_API_H

#include <stddef.h>

#include "cfg.h"

typedef struct api_request {
    const char *method;        /* borrowed */
    const char *path;          /* borrowed; without the query string */
    const char *content_type;  /* borrowed; NULL if absent */
    const char *authorization; /* borrowed; NULL if absent */
    const char *body;          /* borrowed; may be NULL when body_len == 0 */
    size_t body_len;
    int body_too_large; /* the body passed COUPON_MAX_BODY */
} api_request_t;

typedef struct api_response {
    unsigned status;
    char *body; /* new (free with api_response_free) */
    size_t len;
    const char *content_type; /* static */
    const char *allow;        /* static; set on 405 */
    unsigned retry_after;     /* seconds; 0 = no Retry-After header */
    int www_authenticate;     /* 401: add WWW-Authenticate: Bearer */
} api_response_t;

/* Borrows cfg for the process's lifetime. */
void api_init(const cfg_t *cfg);

/* Handles one request. Always fills *resp (500 with a JSON body if even
 * that fails). Thread-safe. */
void api_handle(const api_request_t *req, api_response_t *resp);

/* 1 if the request never touches a backend (GET /healthz, /readyz, /metrics:
 * /readyz reads the readiness probe's state) and may
 * be answered on the HTTP event-loop thread; 0 if it must go to a worker. */
int api_is_inline(const char *method, const char *path);

/* Frees resp->body. Accepts NULL. */
void api_response_free(api_response_t *resp);

#endif
