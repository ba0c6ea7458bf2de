/*
 * lg_http.h: the load generator's HTTP/1.1 response reader.
 *
 * Why the load generator reads HTTP itself
 * ----------------------------------------
 * libcurl makes the load generator's connections (name lookup, connect with
 * a timeout, TLS when the URL says https) and moves its bytes
 * (curl_easy_send, curl_easy_recv on a CURLOPT_CONNECT_ONLY handle). It no
 * longer runs each request as a libcurl transfer: a transfer costs about 5 us
 * of CPU in libcurl 7.88 (a fresh connection struct that is thrown away when
 * the cached one is found, a URL copy and a dozen strings taken from it, a
 * poll() to see that the cached connection is alive, another after the
 * request is sent, every response header stored for curl_easy_header(), some
 * 18 allocations and 17 clock reads). On a 2-core machine that CPU is taken
 * from the server under test, and the load generator measured 0.82 of wrk's
 * rate against the same endpoint. Writing a request and reading its response
 * by hand costs well under a microsecond.
 *
 * What it reads
 * -------------
 * One response at a time on a keep-alive connection (the load generator never
 * pipelines): a status line, header lines, then a body framed by
 * Content-Length, by chunked transfer coding, or by the end of the
 * connection; no body for HEAD, 1xx, 204 and 304. Interim 1xx responses
 * (100 Continue) are skipped. It tells the caller whether the connection may
 * carry the next request (HTTP/1.1 without "Connection: close", or HTTP/1.0
 * with "Connection: keep-alive").
 *
 * It is strict where a wrong guess would miscount (a malformed status line,
 * a bad or conflicting Content-Length, a bad chunk size all end the
 * response with LG_HTTP_EBAD) and lenient where nothing is at stake (a bare
 * LF ends a line; header names are matched without regard to case).
 *
 * Thread safety: none needed; a reader belongs to one connection.
 */
#ifndef COUPONSVC_LG_HTTP_H
#define COUPONSVC_LG_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The longest status line plus headers accepted; longer is LG_HTTP_EBAD. */
#define LG_HTTP_HEAD_MAX 16384

/* What lg_http_feed and lg_http_eof return, in the service's manner: 0 is
 * success, a negative value a failure, and an expected outcome that is
 * neither has a positive name of its own. */
typedef enum lg_http_rc {
    LG_HTTP_OK = 0,    /* the response is complete */
    LG_HTTP_AGAIN = 1, /* not complete yet: more bytes are needed */
    LG_HTTP_EBAD = -1, /* not a valid HTTP/1.x response: errstr says why */
} lg_http_rc_t;

enum lg_http_state {
    LG_HTTP_S_HEAD,       /* status line and headers, not yet complete */
    LG_HTTP_S_BODY_LEN,   /* body framed by Content-Length */
    LG_HTTP_S_BODY_EOF,   /* body ends when the connection does */
    LG_HTTP_S_CHUNK_SIZE, /* expecting a chunk-size line */
    LG_HTTP_S_CHUNK_DATA, /* inside a chunk */
    LG_HTTP_S_CHUNK_END,  /* expecting the CRLF after a chunk */
    LG_HTTP_S_TRAILER,    /* trailer lines after the last chunk */
    LG_HTTP_S_DONE,       /* complete */
    LG_HTTP_S_ERROR,      /* failed; errstr says why */
};

/* The reader of one response.
 *
 * Invariants: status is 0 until the headers are complete, then 100..999;
 * remaining counts body (or chunk) bytes still to come in the BODY_LEN and
 * CHUNK_DATA states; sample_len <= sample_cap, and sample holds the first
 * sample_len bytes of the body (after chunk decoding). */
typedef struct lg_http_resp {
    enum lg_http_state state;
    bool head_request;   /* the request was HEAD: no body follows */
    int status;          /* the final status code; 0 = headers not read */
    int minor;           /* HTTP/1.<minor> */
    bool keep_alive;     /* the connection may carry another request */
    uint64_t remaining;  /* body or chunk bytes still to read */
    uint64_t body_bytes; /* body bytes read so far */
    char *sample;        /* borrowed: where the body's start is copied */
    size_t sample_cap;   /* its size; 0 = keep no sample */
    size_t sample_len;   /* bytes copied there */
    char errstr[96];     /* why the state is LG_HTTP_S_ERROR */
} lg_http_resp_t;

/* Ready r for the response to a request; head_request: it was HEAD.
 * sample (borrowed, may be NULL with cap 0) receives the body's first
 * sample_cap bytes. */
void lg_http_resp_init(lg_http_resp_t *r, bool head_request, char *sample,
                       size_t sample_cap);

/* Read from buf[0..len), the bytes received after those already consumed.
 * Sets *used to how many bytes it consumed: the caller drops those and keeps
 * the rest for the next call (bytes are consumed only when a whole header
 * block, chunk-size line or trailer line is there, so the caller's buffer
 * must hold LG_HTTP_HEAD_MAX bytes). Returns LG_HTTP_OK, LG_HTTP_AGAIN or
 * LG_HTTP_EBAD; after LG_HTTP_OK any bytes left over are not part of the
 * response. */
lg_http_rc_t lg_http_feed(lg_http_resp_t *r, const char *buf, size_t len,
                          size_t *used);

/* The connection ended. Returns LG_HTTP_OK if that completes the response
 * (a body framed by the end of the connection), else LG_HTTP_EBAD with
 * errstr saying what was cut short. */
lg_http_rc_t lg_http_eof(lg_http_resp_t *r);

#endif
