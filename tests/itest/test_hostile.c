/*
 * test_hostile.c: malformed and hostile requests over raw TCP.
 *
 * libcurl would refuse to send most of these (two Content-Lengths, a NUL in
 * a header, a chunk size of "ZZ"), so the requests here are bytes written to
 * a socket, and the answers are bytes read back and parsed just enough to
 * check the status line and the JSON error body.
 *
 * Three kinds of answers show up:
 *
 *   - ours: {"error": CODE, "detail": TEXT}, for everything that reaches the
 *     access handler (the table names the CODE);
 *   - libmicrohttpd's own (flag MHD): requests it refuses before our handler
 *     runs: oversized headers (431), a URL too long (414), a malformed
 *     Content-Length or chunk size (400, 413), an unknown HTTP version
 *     (505). These bodies are libmicrohttpd's HTML pages, without a
 *     Content-Type, and there is no hook in 0.9.75 to replace them; the table
 *     checks the status and that the body is not ours, so a change in either
 *     is noticed;
 *   - none: the connection is closed without an answer (garbage request
 *     line), or, for a client that stops sending halfway, by the
 *     connection timeout (flag SLOW; the instances run with a 2 s timeout).
 *
 * After the table, both instances must still be up and the database exactly
 * as it was before: no hostile request wrote anything.
 *
 * Two cases here found bugs, fixed in http.c: two Content-Length headers
 * (or Content-Length with chunked) were accepted, the first one winning,
 * which let a second request ride inside the first one's body ("request
 * smuggling", see SMUGGLED_CLAIM); and "%00" in a URL cut the path at the
 * NUL, so /coupons/c1%00x was served as coupon c1. libmicrohttpd also
 * accepted an HTTP/1.1 request without Host, and any request with two;
 * http.c now answers both 400 (RFC 9112 section 3.2).
 *
 * Known limitations, checked as they are: libmicrohttpd 0.9.75 takes the
 * first of two Content-Types,
 * truncates a header value at a raw NUL, and sends the header block of its
 * own 400 for a malformed Content-Length twice. Its connection timeout is
 * an idle timeout only; http.c adds a deadline for the whole request, so a
 * client that trickles a byte at a time is cut off too
 * (hostile_trickling_clients_are_cut).
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "tt.h"

#define CONN_TIMEOUT_S 2
#define BIG_BODY 1048576 /* COUPON_MAX_BODY of the "big" instance */

/* ---------------------------------------------------------- raw client --- */

/* A growable byte buffer; p is always NUL-terminated (bodies may hold NULs,
 * len is what counts). */
typedef struct hb {
    char *p;
    size_t len, cap;
} hb_t;

static void hb_add(hb_t *b, const void *data, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap != 0 ? b->cap : 256;
        while (b->len + n + 1 > cap) {
            cap *= 2;
        }
        b->p = realloc(b->p, cap);
        TT_ASSERT(b->p != NULL);
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void hb_str(hb_t *b, const char *s) {
    hb_add(b, s, strlen(s));
}

static void hb_fill(hb_t *b, char ch, size_t n) {
    for (size_t i = 0; i < n; i++) {
        hb_add(b, &ch, 1);
    }
}

static void hb_printf(hb_t *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void hb_printf(hb_t *b, const char *fmt, ...) {
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    TT_ASSERT(n >= 0 && (size_t)n < sizeof(tmp));
    hb_add(b, tmp, (size_t)n);
}

static void hb_free(hb_t *b) {
    free(b->p);
    memset(b, 0, sizeof(*b));
}

/* What came back on one connection. */
typedef struct raw_resp {
    int status;       /* from the first status line; 0 = no answer */
    int eof;          /* the server closed the connection (FIN or RST) */
    hb_t data;        /* every byte received */
    size_t body_off;  /* where the first response's body starts in data */
    long clen;        /* its Content-Length, -1 if none */
    int has_ctype;    /* it had a Content-Type header */
    double ms;        /* from connect until we stopped reading */
    double answer_ms; /* from connect until the answer was complete */
} raw_resp_t;

static int raw_connect(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    TT_ASSERT_MSG(fd >= 0, "socket: %s", strerror(errno));
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    TT_ASSERT_MSG(connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0,
                  "connect 127.0.0.1:%d: %s", port, strerror(errno));
    return fd;
}

/* Parses the first response once its header block is in; returns 1 when
 * that response is complete (head_only: no body follows, as for HEAD). */
static int raw_parse(raw_resp_t *r, int head_only) {
    char *end = strstr(r->data.p, "\r\n\r\n");
    if (end == NULL) {
        return 0;
    }
    if (r->status == 0) {
        int st = 0;
        if (sscanf(r->data.p, "HTTP/1.%*c %d", &st) != 1) {
            st = -1; /* something that is not HTTP */
        }
        r->status = st;
        r->body_off = (size_t)(end + 4 - r->data.p);
        r->clen = -1;
        /* Header names are case-insensitive; libmicrohttpd writes these
         * two in this exact form. */
        const char *cl = strstr(r->data.p, "\r\nContent-Length: ");
        if (cl != NULL && cl < end) {
            r->clen = atol(cl + 18);
        }
        const char *ct = strstr(r->data.p, "\r\nContent-Type: ");
        r->has_ctype = ct != NULL && ct < end;
    }
    if (head_only) {
        return 1;
    }
    return r->clen >= 0 && r->data.len - r->body_off >= (size_t)r->clen;
}

/* Sends req on a new connection and reads the answer. Writing and reading
 * interleave, so an early answer (413 before the body is read) is seen even
 * if the server stops reading. Stops at the first complete answer, unless
 * linger_ms > 0: then it keeps reading until the server closes the
 * connection or linger_ms more have passed. Gives up after wait_ms. */
static void raw_exchange(int port, const char *req, size_t len, int wait_ms,
                         int linger_ms, int head_only, raw_resp_t *r) {
    memset(r, 0, sizeof(*r));
    hb_add(&r->data, "", 0);
    double start = h_now_ms(), end = start + wait_ms;
    int fd = raw_connect(port);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    size_t sent = 0;
    int done = 0;
    while (!r->eof) {
        double left = end - h_now_ms();
        if (left <= 0) {
            break;
        }
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (sent < len) {
            p.events |= POLLOUT;
        }
        if (poll(&p, 1, (int)left + 1) <= 0) {
            continue;
        }
        if ((p.revents & POLLOUT) && sent < len) {
            ssize_t n = send(fd, req + sent, len - sent, MSG_NOSIGNAL);
            if (n > 0) {
                sent += (size_t)n;
            } else if (errno != EAGAIN && errno != EINTR) {
                sent = len; /* the server stopped reading; keep listening */
            }
        }
        if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
            char buf[65536];
            ssize_t n = recv(fd, buf, sizeof(buf), 0);
            if (n > 0) {
                hb_add(&r->data, buf, (size_t)n);
            } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
                r->eof = 1;
            }
        }
        if (!done && raw_parse(r, head_only)) {
            done = 1;
            r->answer_ms = h_now_ms() - start;
            if (linger_ms <= 0) {
                break;
            }
            if (end > h_now_ms() + linger_ms) {
                end = h_now_ms() + linger_ms;
            }
        }
    }
    if (!done) {
        raw_parse(r, head_only); /* an answer cut short still has a status */
    }
    r->ms = h_now_ms() - start;
    close(fd);
}

/* ----------------------------------------------------------- the table --- */

/* Case flags. MHD: libmicrohttpd answers by itself (HTML, no Content-Type).
 * CLOSE: the connection must be closed right after the answer. HEAD: the
 * answer has no body. SLOW: the client stops halfway; no answer, and the
 * connection timeout closes the connection. */
#define F_MHD 1u
#define F_CLOSE 2u
#define F_HEAD 4u
#define F_SLOW 8u

enum { DEF = 0, BIG = 1 }; /* which instance: default limits, or 1 MiB body */

typedef struct hcase {
    const char *what;
    int inst;
    /* The request: req[0..req_len) as is when body is NULL; otherwise req
     * is the request line and headers, and a Content-Length for body and
     * the blank line are added. gen, if set, builds the whole request. */
    const char *req;
    size_t req_len;
    const char *body;
    size_t body_len;
    void (*gen)(hb_t *out);
    int status;        /* expected; 0 = closed without an answer */
    const char *error; /* expected JSON "error"; NULL: none (2xx, MHD, 0) */
    unsigned flags;
} hcase_t;

#define RAW(s) .req = s, .req_len = sizeof(s) - 1
#define WITH_BODY(head, b)                                                     \
    .req = head, .req_len = sizeof(head) - 1, .body = b,                       \
    .body_len = sizeof(b) - 1
#define JSON_HEAD(path)                                                        \
    "POST " path " HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
#define CLAIM(b) WITH_BODY(JSON_HEAD("/claim"), b)
#define ADMIN_HEAD                                                             \
    "POST /coupons HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"  \
    "Authorization: Bearer test-admin-token\r\n"
#define ADMIN(b) WITH_BODY(ADMIN_HEAD, b)
#define GET(path) RAW("GET " path " HTTP/1.1\r\nHost: t\r\n\r\n")
#define EXPECT(st, err, fl) .status = st, .error = err, .flags = fl

/* A claim whose body is built at run time. */
static void claim_body(hb_t *out, const hb_t *body) {
    hb_printf(out, JSON_HEAD("/claim") "Content-Length: %zu\r\n\r\n",
              body->len);
    hb_add(out, body->p, body->len);
}

static void gen_open_brackets(hb_t *out) {
    hb_t b = {0};
    hb_fill(&b, '[', 100000);
    claim_body(out, &b);
    hb_free(&b);
}

static void gen_closed_brackets(hb_t *out) {
    hb_t b = {0};
    hb_fill(&b, '[', 100000);
    hb_fill(&b, ']', 100000);
    claim_body(out, &b);
    hb_free(&b);
}

/* Within the default 4096-byte limit: nesting deeper than jansson's 2048. */
static void gen_deep_member(hb_t *out) {
    hb_t b = {0};
    hb_str(&b, "{\"coupon_id\":\"c1\",\"user_id\":\"u\",\"x\":");
    hb_fill(&b, '[', 2100); /* unclosed: 4096 bytes cannot hold 2049 "[]" */
    claim_body(out, &b);
    hb_free(&b);
}

static void gen_huge_valid(hb_t *out) {
    hb_t b = {0};
    hb_str(&b, "{\"coupon_id\":\"nope\",\"user_id\":\"u\",\"pad\":\"");
    hb_fill(&b, 'a', BIG_BODY - 100);
    hb_str(&b, "\"}");
    claim_body(out, &b);
    hb_free(&b);
}

static void gen_huge_over(hb_t *out) {
    hb_t b = {0};
    hb_str(&b, "{\"coupon_id\":\"nope\",\"user_id\":\"u\",\"pad\":\"");
    hb_fill(&b, 'a', BIG_BODY);
    hb_str(&b, "\"}");
    claim_body(out, &b);
    hb_free(&b);
}

static void gen_many_members(hb_t *out) {
    hb_t b = {0};
    hb_str(&b, "{");
    for (int i = 0; i < 60000; i++) {
        hb_printf(&b, "\"k%d\":%d,", i, i);
    }
    hb_str(&b, "\"coupon_id\":\"nope\",\"user_id\":\"u\"}");
    claim_body(out, &b);
    hb_free(&b);
}

static void gen_body_4097(hb_t *out) {
    hb_t b = {0};
    hb_str(&b, "{\"coupon_id\":\"c1\",\"user_id\":\"u\",\"pad\":\"");
    hb_fill(&b, 'a', 4097 - b.len - 2);
    hb_str(&b, "\"}");
    claim_body(out, &b);
    hb_free(&b);
}

static void gen_id(hb_t *out, size_t coupon_len, size_t user_len) {
    hb_t b = {0};
    hb_str(&b, "{\"coupon_id\":\"");
    hb_fill(&b, 'c', coupon_len);
    hb_str(&b, "\",\"user_id\":\"");
    hb_fill(&b, 'u', user_len);
    hb_str(&b, "\"}");
    claim_body(out, &b);
    hb_free(&b);
}

static void gen_coupon_65(hb_t *out) {
    gen_id(out, 65, 1);
}
static void gen_coupon_64(hb_t *out) {
    gen_id(out, 64, 1);
}
static void gen_user_129(hb_t *out) {
    gen_id(out, 3, 129);
}
static void gen_user_128(hb_t *out) {
    gen_id(out, 3, 128); /* coupon "ccc" does not exist */
}

static void gen_long_header(hb_t *out) {
    hb_str(out, "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: ");
    hb_fill(out, 'a', 33 * 1024);
    hb_str(out, "\r\n\r\n");
}

static void gen_long_url(hb_t *out) {
    hb_str(out, "GET /coupons/");
    hb_fill(out, 'a', 33 * 1024);
    hb_str(out, " HTTP/1.1\r\nHost: t\r\n\r\n");
}

static void gen_many_headers(hb_t *out) {
    hb_str(out, "GET /healthz HTTP/1.1\r\nHost: t\r\n");
    for (int i = 0; i < 3000; i++) {
        hb_printf(out, "X-H%d: v\r\n", i);
    }
    hb_str(out, "\r\n");
}

/* Chunks adding up to more than the 4096-byte limit. */
static void gen_chunked_over(hb_t *out) {
    hb_str(out, JSON_HEAD("/claim") "Transfer-Encoding: chunked\r\n\r\n");
    for (int i = 0; i < 5; i++) {
        hb_str(out, "400\r\n");
        hb_fill(out, ' ', 0x400);
        hb_str(out, "\r\n");
    }
    hb_str(out, "0\r\n\r\n");
}

/* The whole point of rejecting two Content-Lengths: with the first one (0)
 * the rest would be read here as a second request, a claim the proxy in
 * front never saw. */
#define SMUGGLED_CLAIM                                                         \
    "POST /claim HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"    \
    "Content-Length: "                                                         \
    "39\r\n\r\n{\"coupon_id\":\"c1\",\"user_id\":\"smuggled\"}"

static const hcase_t cases[] = {
    /* --- broken JSON */
    {"truncated object", DEF, CLAIM("{\"coupon_id\":\"c1\","),
     EXPECT(400, "bad_json", 0)},
    {"missing comma", DEF, CLAIM("{\"coupon_id\":\"c1\" \"user_id\":\"u\"}"),
     EXPECT(400, "bad_json", 0)},
    {"single quotes", DEF, CLAIM("{'coupon_id':'c1','user_id':'u'}"),
     EXPECT(400, "bad_json", 0)},
    {"trailing garbage", DEF,
     CLAIM("{\"coupon_id\":\"c1\",\"user_id\":\"u\"} x"),
     EXPECT(400, "bad_json", 0)},
    {"two documents", DEF, CLAIM("{\"coupon_id\":\"c1\",\"user_id\":\"u\"}{}"),
     EXPECT(400, "bad_json", 0)},
    {"whitespace only", DEF, CLAIM(" \t\r\n "), EXPECT(400, "bad_json", 0)},
    {"byte order mark", DEF,
     CLAIM("\xef\xbb\xbf{\"coupon_id\":\"c1\",\"user_id\":\"u\"}"),
     EXPECT(400, "bad_json", 0)},
    {"duplicate key", DEF,
     CLAIM("{\"coupon_id\":\"nope\",\"user_id\":\"u\",\"coupon_id\":\"c1\"}"),
     EXPECT(400, "bad_json", 0)},
    {"comment", DEF, CLAIM("{\"coupon_id\":\"c1\",/**/\"user_id\":\"u\"}"),
     EXPECT(400, "bad_json", 0)},
    {"empty body", DEF, CLAIM(""), EXPECT(400, "bad_request", 0)},
    {"no body, no Content-Length", DEF, RAW(JSON_HEAD("/claim") "\r\n"),
     EXPECT(400, "bad_request", 0)},

    /* --- deeply nested and huge */
    {"100000 '[' (default limit)", DEF, .gen = gen_open_brackets,
     EXPECT(413, "payload_too_large", 0)},
    {"100000 '[' (1 MiB limit)", BIG, .gen = gen_open_brackets,
     EXPECT(400, "bad_json", 0)},
    {"100000 '[' and ']' (1 MiB limit)", BIG, .gen = gen_closed_brackets,
     EXPECT(400, "bad_json", 0)},
    {"member nested 2100 deep", DEF, .gen = gen_deep_member,
     EXPECT(400, "bad_json", 0)},
    {"1 MiB valid JSON, unknown coupon", BIG, .gen = gen_huge_valid,
     EXPECT(404, "not_found", 0)},
    {"1 MiB + 1 body", BIG, .gen = gen_huge_over,
     EXPECT(413, "payload_too_large", F_CLOSE)},
    {"60000 members, unknown coupon", BIG, .gen = gen_many_members,
     EXPECT(404, "not_found", 0)},
    {"4097-byte body", DEF, .gen = gen_body_4097,
     EXPECT(413, "payload_too_large", F_CLOSE)},
    {"Content-Length 2^64-1", DEF,
     RAW(JSON_HEAD("/claim") "Content-Length: 18446744073709551615\r\n\r\n{}"),
     EXPECT(413, "payload_too_large", F_CLOSE)},

    /* --- wrong types */
    {"array body", DEF, CLAIM("[\"c1\",\"u\"]"), EXPECT(400, "bad_request", 0)},
    {"string body", DEF, CLAIM("\"c1\""), EXPECT(400, "bad_json", 0)},
    {"null body", DEF, CLAIM("null"), EXPECT(400, "bad_json", 0)},
    {"number body", DEF, CLAIM("42"), EXPECT(400, "bad_json", 0)},
    {"coupon_id number", DEF, CLAIM("{\"coupon_id\":1,\"user_id\":\"u\"}"),
     EXPECT(400, "bad_request", 0)},
    {"user_id null", DEF, CLAIM("{\"coupon_id\":\"c1\",\"user_id\":null}"),
     EXPECT(400, "bad_request", 0)},
    {"coupon_id array", DEF,
     CLAIM("{\"coupon_id\":[\"c1\"],\"user_id\":\"u\"}"),
     EXPECT(400, "bad_request", 0)},
    {"coupon_id operator object", DEF,
     CLAIM("{\"coupon_id\":{\"$ne\":\"\"},\"user_id\":\"u\"}"),
     EXPECT(400, "bad_request", 0)},
    {"user_id boolean", DEF, CLAIM("{\"coupon_id\":\"c1\",\"user_id\":true}"),
     EXPECT(400, "bad_request", 0)},
    {"user_id missing", DEF, CLAIM("{\"coupon_id\":\"c1\"}"),
     EXPECT(400, "bad_request", 0)},
    {"total as string", DEF, ADMIN("{\"id\":\"c9\",\"total\":\"5\"}"),
     EXPECT(400, "bad_request", 0)},
    {"total fractional", DEF, ADMIN("{\"id\":\"c9\",\"total\":1.5}"),
     EXPECT(400, "bad_request", 0)},
    {"total exponent", DEF, ADMIN("{\"id\":\"c9\",\"total\":1e3}"),
     EXPECT(400, "bad_request", 0)},
    {"total above the limit", DEF,
     ADMIN("{\"id\":\"c9\",\"total\":1000000001}"),
     EXPECT(400, "bad_request", 0)},
    {"total beyond int64", DEF,
     ADMIN("{\"id\":\"c9\",\"total\":99999999999999999999}"),
     EXPECT(400, "bad_json", 0)},
    {"total missing", DEF, ADMIN("{\"id\":\"c9\"}"),
     EXPECT(400, "bad_request", 0)},
    {"admin: bad token beats bad body", DEF,
     WITH_BODY("POST /coupons HTTP/1.1\r\nHost: t\r\nContent-Type: "
               "application/json\r\nAuthorization: Bearer nope\r\n",
               "{"),
     EXPECT(401, "unauthorized", 0)},

    /* --- identifiers */
    {"empty coupon id", DEF, CLAIM("{\"coupon_id\":\"\",\"user_id\":\"u\"}"),
     EXPECT(400, "invalid_id", 0)},
    {"empty user id", DEF, CLAIM("{\"coupon_id\":\"c1\",\"user_id\":\"\"}"),
     EXPECT(400, "invalid_id", 0)},
    {"coupon id 65 bytes", DEF, .gen = gen_coupon_65,
     EXPECT(400, "invalid_id", 0)},
    {"coupon id 64 bytes (valid, unknown)", DEF, .gen = gen_coupon_64,
     EXPECT(404, "not_found", 0)},
    {"user id 129 bytes", DEF, .gen = gen_user_129,
     EXPECT(400, "invalid_id", 0)},
    {"user id 128 bytes (valid)", DEF, .gen = gen_user_128,
     EXPECT(404, "not_found", 0)},
    {"raw NUL in coupon id", DEF,
     CLAIM("{\"coupon_id\":\"c1\0x\",\"user_id\":\"u\"}"),
     EXPECT(400, "bad_json", 0)},
    {"raw NUL after the object", DEF,
     CLAIM("{\"coupon_id\":\"c1\",\"user_id\":\"u\"}\0"),
     EXPECT(400, "bad_json", 0)},
    {"\\u0000 in coupon id", DEF,
     CLAIM("{\"coupon_id\":\"c1\\u0000x\",\"user_id\":\"u\"}"),
     EXPECT(400, "bad_json", 0)},
    {"\\u0000 in user id", DEF,
     CLAIM("{\"coupon_id\":\"c1\",\"user_id\":\"\\u0000\"}"),
     EXPECT(400, "bad_json", 0)},
    {"invalid UTF-8", DEF, CLAIM("{\"coupon_id\":\"c\xff\",\"user_id\":\"u\"}"),
     EXPECT(400, "bad_json", 0)},
    {"overlong UTF-8 '/'", DEF,
     CLAIM("{\"coupon_id\":\"c\xc0\xaf\",\"user_id\":\"u\"}"),
     EXPECT(400, "bad_json", 0)},
    {"lone surrogate escape", DEF,
     CLAIM("{\"coupon_id\":\"c\\ud800\",\"user_id\":\"u\"}"),
     EXPECT(400, "bad_json", 0)},
    {"non-ASCII UTF-8 id", DEF,
     CLAIM("{\"coupon_id\":\"c\xc3\xbc\",\"user_id\":\"u\"}"),
     EXPECT(400, "invalid_id", 0)},
    {"escaped brace (Redis hash tag)", DEF,
     CLAIM("{\"coupon_id\":\"c1\\u007d\",\"user_id\":\"u\"}"),
     EXPECT(400, "invalid_id", 0)},
    {"escaped newline (log line)", DEF,
     CLAIM("{\"coupon_id\":\"c1\",\"user_id\":\"u\\nlevel=ERROR\"}"),
     EXPECT(400, "invalid_id", 0)},
    {"user id '*'", DEF, CLAIM("{\"coupon_id\":\"c1\",\"user_id\":\"*\"}"),
     EXPECT(400, "invalid_id", 0)},

    /* --- SQL metacharacters (every query is parameterized; the id rules
     * refuse these before any query anyway) */
    {"quote in coupon id", DEF,
     CLAIM("{\"coupon_id\":\"c1' OR '1'='1\",\"user_id\":\"u\"}"),
     EXPECT(400, "invalid_id", 0)},
    {"statement in user id", DEF,
     CLAIM("{\"coupon_id\":\"c1\",\"user_id\":\"u'); DELETE FROM claims;--\"}"),
     EXPECT(400, "invalid_id", 0)},
    {"semicolon in coupon id", DEF,
     CLAIM("{\"coupon_id\":\"c1;\",\"user_id\":\"u\"}"),
     EXPECT(400, "invalid_id", 0)},
    {"backslash in user id", DEF,
     CLAIM("{\"coupon_id\":\"c1\",\"user_id\":\"u\\\\\"}"),
     EXPECT(400, "invalid_id", 0)},
    {"coupon id '--' (valid, unknown)", DEF,
     CLAIM("{\"coupon_id\":\"--\",\"user_id\":\"u\"}"),
     EXPECT(404, "not_found", 0)},
    {"quote in URL id", DEF, GET("/coupons/c1'%20OR%20'1'='1"),
     EXPECT(400, "invalid_id", 0)},
    {"%00 in URL id", DEF, GET("/coupons/c1%00x"),
     EXPECT(400, "invalid_id", 0)},
    {"URL id only %00", DEF, GET("/coupons/%00"), EXPECT(400, "invalid_id", 0)},
    {"empty URL id", DEF, GET("/coupons/"), EXPECT(400, "invalid_id", 0)},
    {"encoded slash in URL id", DEF, GET("/coupons/..%2Fclaim"),
     EXPECT(400, "invalid_id", 0)},

    /* --- methods and content types */
    {"PATCH /claim", DEF,
     WITH_BODY("PATCH /claim HTTP/1.1\r\nHost: t\r\n", "{}"),
     EXPECT(405, "method_not_allowed", 0)},
    {"lower-case post", DEF,
     WITH_BODY("post /claim HTTP/1.1\r\nHost: t\r\nContent-Type: "
               "application/json\r\n",
               "{}"),
     EXPECT(405, "method_not_allowed", 0)},
    {"HEAD /claim", DEF, RAW("HEAD /claim HTTP/1.1\r\nHost: t\r\n\r\n"),
     EXPECT(405, NULL, F_HEAD)},
    {"OPTIONS *", DEF, RAW("OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n"),
     EXPECT(404, "not_found", 0)},
    {"text/plain", DEF,
     WITH_BODY("POST /claim HTTP/1.1\r\nHost: t\r\nContent-Type: "
               "text/plain\r\n",
               "{\"coupon_id\":\"c1\",\"user_id\":\"u\"}"),
     EXPECT(415, "unsupported_media_type", 0)},
    {"no Content-Type", DEF,
     WITH_BODY("POST /claim HTTP/1.1\r\nHost: t\r\n",
               "{\"coupon_id\":\"c1\",\"user_id\":\"u\"}"),
     EXPECT(415, "unsupported_media_type", 0)},
    {"application/jsonp", DEF,
     WITH_BODY("POST /claim HTTP/1.1\r\nHost: t\r\nContent-Type: "
               "application/jsonp\r\n",
               "{\"coupon_id\":\"c1\",\"user_id\":\"u\"}"),
     EXPECT(415, "unsupported_media_type", 0)},
    {"form-encoded", DEF,
     WITH_BODY("POST /claim HTTP/1.1\r\nHost: t\r\nContent-Type: "
               "application/x-www-form-urlencoded\r\n",
               "coupon_id=c1&user_id=u"),
     EXPECT(415, "unsupported_media_type", 0)},
    {"APPLICATION/JSON (case-insensitive)", DEF,
     WITH_BODY("POST /claim HTTP/1.1\r\nHost: t\r\nContent-Type: "
               "APPLICATION/JSON\r\n",
               "{}"),
     EXPECT(400, "bad_request", 0)},
    {"two Content-Types, text/plain first", DEF,
     WITH_BODY("POST /claim HTTP/1.1\r\nHost: t\r\nContent-Type: "
               "text/plain\r\nContent-Type: application/json\r\n",
               "{}"),
     EXPECT(415, "unsupported_media_type", 0)},
    {"two Content-Types, JSON first", DEF,
     WITH_BODY("POST /claim HTTP/1.1\r\nHost: t\r\nContent-Type: "
               "application/json\r\nContent-Type: text/plain\r\n",
               "{}"),
     EXPECT(400, "bad_request", 0)},
    {"NUL inside Content-Type", DEF,
     WITH_BODY("POST /claim HTTP/1.1\r\nHost: t\r\nContent-Type: "
               "text/plain\0application/json\r\n",
               "{}"),
     EXPECT(415, "unsupported_media_type", 0)},

    /* --- framing: Content-Length, Transfer-Encoding, Host */
    {"two Content-Lengths that disagree", DEF,
     RAW(JSON_HEAD("/claim") "Content-Length: 7\r\nContent-Length: "
                             "5\r\n\r\n{\"a\":1}"),
     EXPECT(400, "bad_request", F_CLOSE)},
    {"two equal Content-Lengths", DEF,
     RAW(JSON_HEAD("/claim") "Content-Length: 2\r\nContent-Length: "
                             "2\r\n\r\n{}"),
     EXPECT(400, "bad_request", F_CLOSE)},
    {"smuggling: Content-Length 0 and 132", DEF,
     RAW("GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: "
         "0\r\nContent-Length: 132\r\n\r\n" SMUGGLED_CLAIM),
     EXPECT(400, "bad_request", F_CLOSE)},
    {"Content-Length with chunked", DEF,
     RAW(JSON_HEAD("/claim") "Content-Length: 2\r\nTransfer-Encoding: "
                             "chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"),
     EXPECT(400, "bad_request", F_CLOSE)},
    {"Content-Length abc", DEF,
     RAW(JSON_HEAD("/claim") "Content-Length: abc\r\n\r\n{}"),
     EXPECT(400, NULL, F_MHD)},
    {"Content-Length -1", DEF,
     RAW(JSON_HEAD("/claim") "Content-Length: -1\r\n\r\n{}"),
     EXPECT(400, NULL, F_MHD)},
    {"Content-Length beyond 2^64", DEF,
     RAW(JSON_HEAD("/claim") "Content-Length: 99999999999999999999999\r\n\r\n"
                             "{}"),
     EXPECT(413, NULL, F_MHD)},
    {"HTTP/1.1 without Host", DEF, RAW("GET /healthz HTTP/1.1\r\n\r\n"),
     EXPECT(400, "bad_request", F_CLOSE)},
    {"claim over HTTP/1.1 without Host", DEF,
     RAW("POST /claim HTTP/1.1\r\nContent-Type: application/json\r\n"
         "Content-Length: "
         "37\r\n\r\n{\"coupon_id\":\"c1\",\"user_id\":\"nohost\"}"),
     EXPECT(400, "bad_request", F_CLOSE)},
    {"two Hosts", DEF,
     RAW("GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
     EXPECT(400, "bad_request", F_CLOSE)},
    {"HTTP/1.0 with two Hosts", DEF,
     RAW("GET /healthz HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n"),
     EXPECT(400, "bad_request", F_CLOSE)},
    {"HTTP/1.0 without Host", DEF, RAW("GET /healthz HTTP/1.0\r\n\r\n"),
     EXPECT(200, NULL, F_CLOSE)},

    /* --- chunked bodies */
    {"chunked, two chunks, unknown coupon", DEF,
     RAW(JSON_HEAD("/claim") "Transfer-Encoding: chunked\r\n\r\n"
                             "10\r\n{\"coupon_id\":\"no\r\n"
                             "12\r\npe\",\"user_id\":\"u\"}\r\n0\r\n\r\n"),
     EXPECT(404, "not_found", 0)},
    {"chunked, extension and trailer", DEF,
     RAW(JSON_HEAD("/claim") "Transfer-Encoding: chunked\r\n\r\n"
                             "2;name=value\r\n{}\r\n0\r\nX-Trailer: "
                             "1\r\n\r\n"),
     EXPECT(400, "bad_request", 0)},
    {"chunk size ZZ", DEF,
     RAW(JSON_HEAD("/claim") "Transfer-Encoding: chunked\r\n\r\nZZ\r\n{}\r\n"
                             "0\r\n\r\n"),
     EXPECT(400, NULL, F_MHD)},
    {"chunk size -1", DEF,
     RAW(JSON_HEAD("/claim") "Transfer-Encoding: chunked\r\n\r\n-1\r\n{}\r\n"
                             "0\r\n\r\n"),
     EXPECT(400, NULL, F_MHD)},
    {"chunk size beyond 2^64", DEF,
     RAW(JSON_HEAD("/claim") "Transfer-Encoding: chunked\r\n\r\n"
                             "FFFFFFFFFFFFFFFFFF\r\n{}\r\n0\r\n\r\n"),
     EXPECT(413, NULL, F_MHD)},
    {"chunks over the body limit", DEF, .gen = gen_chunked_over,
     EXPECT(413, "payload_too_large", 0)},

    /* --- header block */
    {"header of 33 KiB", DEF, .gen = gen_long_header, EXPECT(431, NULL, F_MHD)},
    {"URL of 33 KiB", DEF, .gen = gen_long_url, EXPECT(414, NULL, F_MHD)},
    {"3000 headers", DEF, .gen = gen_many_headers, EXPECT(431, NULL, F_MHD)},
    {"header line without colon", DEF,
     RAW("GET /healthz HTTP/1.1\r\nHost: t\r\nNoColon\r\n\r\n"),
     EXPECT(400, NULL, F_MHD)},
    {"HTTP/9.9", DEF, RAW("GET /healthz HTTP/9.9\r\nHost: t\r\n\r\n"),
     EXPECT(505, NULL, F_MHD)},
    {"HTTP/2 preface", DEF, RAW("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
     EXPECT(505, NULL, F_MHD)},
    {"garbage request line", DEF, RAW("GARBAGE\r\n\r\n"), EXPECT(0, NULL, 0)},
    {"binary noise", DEF, RAW("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
     EXPECT(0, NULL, F_SLOW)},

    /* --- clients that stop halfway: the 2 s connection timeout closes */
    {"connect, send nothing", DEF, RAW(""), EXPECT(0, NULL, F_SLOW)},
    {"half a request line", DEF, RAW("POST /cl"), EXPECT(0, NULL, F_SLOW)},
    {"headers without the blank line", DEF,
     RAW(JSON_HEAD("/claim") "Content-Length: 2\r\n"), EXPECT(0, NULL, F_SLOW)},
    {"body shorter than Content-Length", DEF,
     RAW(JSON_HEAD("/claim") "Content-Length: 100\r\n\r\n{\"coupon_id\":"),
     EXPECT(0, NULL, F_SLOW)},
    {"chunk shorter than its size", DEF,
     RAW(JSON_HEAD("/claim") "Transfer-Encoding: chunked\r\n\r\n100\r\n{}"),
     EXPECT(0, NULL, F_SLOW)},
    {"Transfer-Encoding gzip (no framing)", DEF,
     RAW(JSON_HEAD("/claim") "Transfer-Encoding: gzip\r\n\r\n{}"),
     EXPECT(0, NULL, F_SLOW)},
    {"blank lines only", DEF, RAW("\r\n\r\n"), EXPECT(0, NULL, F_SLOW)},
};

#define NCASES (sizeof(cases) / sizeof(cases[0]))

/* Checks one answer against its case; fails the test with the case named. */
static void check_case(const hcase_t *c, const raw_resp_t *r) {
    const char *got = r->data.len > 0 ? r->data.p : "(nothing)";
    if (c->status == 0) {
        TT_ASSERT_MSG(r->data.len == 0 && r->eof,
                      "\"%s\": want the connection closed without an answer; "
                      "got eof=%d after %.0f ms and %zu bytes: %.300s",
                      c->what, r->eof, r->ms, r->data.len, got);
        if (c->flags & F_SLOW) {
            TT_ASSERT_MSG(r->ms < (CONN_TIMEOUT_S + 4) * 1000.0,
                          "\"%s\": closed only after %.0f ms", c->what, r->ms);
        }
        return;
    }
    TT_ASSERT_MSG(r->status == c->status,
                  "\"%s\": status %d, want %d; got: %.400s", c->what, r->status,
                  c->status, got);
    if (c->flags & F_CLOSE) {
        TT_ASSERT_MSG(r->eof, "\"%s\": connection still open after the answer",
                      c->what);
    }
    const char *body = r->data.p + r->body_off;
    size_t blen = r->data.len - r->body_off;
    if (c->flags & F_MHD) {
        /* libmicrohttpd's page: HTML, no Content-Type. The known limitation
         * is checked, not assumed: if this ever becomes our JSON, the case
         * should say so. */
        TT_ASSERT_MSG(!r->has_ctype && blen > 0 && body[0] != '{',
                      "\"%s\": expected libmicrohttpd's own page; got %.400s",
                      c->what, got);
        return;
    }
    if (c->flags & F_HEAD) {
        return;
    }
    TT_ASSERT_MSG(r->has_ctype, "\"%s\": no Content-Type: %.300s", c->what,
                  got);
    json_error_t jerr;
    json_t *j = json_loadb(body, blen, 0, &jerr);
    TT_ASSERT_MSG(json_is_object(j),
                  "\"%s\": body is not a JSON object: %.300s", c->what, body);
    if (c->status >= 400) {
        json_t *e = json_object_get(j, "error");
        json_t *d = json_object_get(j, "detail");
        TT_ASSERT_MSG(json_is_string(e) && json_is_string(d),
                      "\"%s\": error body lacks error/detail: %.300s", c->what,
                      body);
        TT_ASSERT_MSG(
            c->error != NULL && strcmp(json_string_value(e), c->error) == 0,
            "\"%s\": error \"%s\", want \"%s\" (%.300s)", c->what,
            json_string_value(e), c->error ? c->error : "(none)", body);
    }
    json_decref(j);
}

/* The database state a hostile request must not change. */
typedef struct db_state {
    long long coupons, claims, claimed, last_fence, tables;
} db_state_t;

static void db_state(db_state_t *s) {
    s->coupons = h_pg_int("SELECT count(*) FROM coupons");
    s->claims = h_pg_int("SELECT count(*) FROM claims");
    s->claimed = h_pg_int("SELECT claimed FROM coupons WHERE id = 'c1'");
    s->last_fence = h_pg_int("SELECT last_fence FROM coupons WHERE id = 'c1'");
    s->tables = h_pg_int("SELECT count(*) FROM pg_tables "
                         "WHERE schemaname = 'public'");
}

static void check_up(const h_svc_t *s) {
    TT_ASSERT_MSG(waitpid(s->pid, NULL, WNOHANG) == 0, "%s has exited",
                  s->name);
    raw_resp_t r;
    static const char hz[] = "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";
    raw_exchange(s->port, hz, sizeof(hz) - 1, 10000, 0, 0, &r);
    TT_ASSERT_MSG(r.status == 200, "%s: /healthz status %d", s->name, r.status);
    hb_free(&r.data);
}

/* One case in flight. */
typedef struct run {
    const hcase_t *c;
    int port;
    raw_resp_t r;
    pthread_t thread;
    int threaded;
} run_t;

static void run_case(run_t *run) {
    const hcase_t *c = run->c;
    hb_t req = {0};
    if (c->gen != NULL) {
        c->gen(&req);
    } else if (c->body != NULL) {
        hb_add(&req, c->req, c->req_len);
        hb_printf(&req, "Content-Length: %zu\r\n\r\n", c->body_len);
        hb_add(&req, c->body, c->body_len);
    } else {
        hb_add(&req, c->req, c->req_len);
    }
    int wait_ms = c->status == 0 ? (CONN_TIMEOUT_S + 6) * 1000 : 20000;
    int linger_ms = (c->flags & F_CLOSE) ? 1000 : 0;
    raw_exchange(run->port, req.p, req.len, wait_ms, linger_ms,
                 (c->flags & F_HEAD) != 0, &run->r);
    hb_free(&req);
}

static void *run_thread(void *arg) {
    run_case(arg);
    return NULL;
}

/* HOSTILE_VERBOSE=1 prints one line per case. */
static void report(size_t i, const run_t *run) {
    if (getenv("HOSTILE_VERBOSE") != NULL) {
        printf("# %3zu %-40s %3d %6.0f ms eof=%d\n", i, run->c->what,
               run->r.status, run->r.ms, run->r.eof);
    }
}

TT_TEST(hostile_requests_table, 180) {
    h_begin();
    const char *def_env[] = {"COUPON_CONN_TIMEOUT_S=2", NULL};
    const char *big_env[] = {"COUPON_CONN_TIMEOUT_S=2",
                             "COUPON_MAX_BODY=1048576", NULL};
    h_svc_t *svc[2] = {h_svc_start("hostile", def_env),
                       h_svc_start("hostile-big", big_env)};
    h_coupon(svc[DEF], "c1", 5);
    json_t *j = NULL;
    TT_EQ_INT(h_claim(svc[DEF], "c1", "u0", &j), 201);
    json_decref(j);

    db_state_t before, after;
    db_state(&before);

    /* The cases that wait for the connection timeout run on threads of
     * their own, alongside the others, so the table takes one timeout, not
     * one per case. Their answers are checked after the join. */
    static run_t runs[NCASES];
    for (size_t i = 0; i < NCASES; i++) {
        runs[i].c = &cases[i];
        runs[i].port = svc[cases[i].inst]->port;
        if (cases[i].status == 0) {
            TT_ASSERT(pthread_create(&runs[i].thread, NULL, run_thread,
                                     &runs[i]) == 0);
            runs[i].threaded = 1;
        }
    }
    for (size_t i = 0; i < NCASES; i++) {
        if (!runs[i].threaded) {
            run_case(&runs[i]);
            report(i, &runs[i]);
            check_case(runs[i].c, &runs[i].r);
        }
    }
    int by_mhd = 0, unanswered = 0;
    for (size_t i = 0; i < NCASES; i++) {
        if (runs[i].threaded) {
            pthread_join(runs[i].thread, NULL);
            report(i, &runs[i]);
            check_case(runs[i].c, &runs[i].r);
        }
        hb_free(&runs[i].r.data);
        by_mhd += (cases[i].flags & F_MHD) != 0;
        unanswered += cases[i].status == 0;
    }
    printf("# %zu hostile requests: %zu answered by couponsvc, %d by "
           "libmicrohttpd itself, %d closed without an answer\n",
           NCASES, NCASES - (size_t)by_mhd - (size_t)unanswered, by_mhd,
           unanswered);

    check_up(svc[DEF]);
    check_up(svc[BIG]);
    db_state(&after);
    TT_EQ_INT(after.coupons, before.coupons);
    TT_EQ_INT(after.claims, before.claims);
    TT_EQ_INT(after.claimed, before.claimed);
    TT_EQ_INT(after.last_fence, before.last_fence);
    TT_EQ_INT(after.tables, before.tables);
    TT_EQ_INT(h_pg_int("SELECT count(*) FROM claims WHERE user_id = "
                       "'smuggled'"),
              0);
    /* And the instance still does its job. */
    TT_EQ_INT(h_claim(svc[DEF], "c1", "u1", &j), 201);
    json_decref(j);
    h_check_invariants("c1", 5, 2);
}

/* ------------------------------------------------- many idle connections ---
 */

/* Raises the soft limit on open files to at least want (up to the hard
 * limit); returns the limit in force. */
static long raise_nofile(long want) {
    struct rlimit rl;
    TT_ASSERT(getrlimit(RLIMIT_NOFILE, &rl) == 0);
    if ((long)rl.rlim_cur < want) {
        rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || (long)rl.rlim_max >= want
                          ? (rlim_t)want
                          : rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    return (long)rl.rlim_cur;
}

/* Waits until the server has closed every fd in fds (reads 0 or an error);
 * returns how many it closed within timeout_ms. */
static int wait_all_closed(int *fds, int n, int timeout_ms) {
    struct pollfd *p = calloc((size_t)n, sizeof(*p));
    TT_ASSERT(p != NULL);
    for (int i = 0; i < n; i++) {
        p[i].fd = fds[i];
        p[i].events = POLLIN;
    }
    int closed = 0;
    double end = h_now_ms() + timeout_ms;
    while (closed < n && h_now_ms() < end) {
        if (poll(p, (nfds_t)n, 200) <= 0) {
            continue;
        }
        for (int i = 0; i < n; i++) {
            if (p[i].fd >= 0 && p[i].revents != 0) {
                char b[64];
                ssize_t r = recv(p[i].fd, b, sizeof(b), MSG_DONTWAIT);
                if (r == 0 || (r < 0 && errno != EAGAIN)) {
                    p[i].fd = -1; /* poll skips negative fds */
                    closed++;
                }
            }
        }
    }
    free(p);
    return closed;
}

static void claim_raw(const h_svc_t *s, const char *user, int want) {
    char body[128], req[512];
    int blen = snprintf(body, sizeof(body),
                        "{\"coupon_id\":\"c1\",\"user_id\":\"%s\"}", user);
    int len = snprintf(req, sizeof(req),
                       JSON_HEAD("/claim") "Content-Length: %d\r\n\r\n%s", blen,
                       body);
    raw_resp_t r;
    raw_exchange(s->port, req, (size_t)len, 15000, 0, 0, &r);
    TT_ASSERT_MSG(r.status == want, "claim for %s: status %d, want %d (%s)",
                  user, r.status, want, r.data.len ? r.data.p : "nothing");
    hb_free(&r.data);
}

/* 2000 connections that never send a request (half send nothing, half stop
 * in the middle of their headers) do not stop a claim from being served,
 * and the connection timeout closes every one of them. */
TT_TEST(hostile_idle_connections, 120) {
    enum { N = 2000 };
    TT_ASSERT_MSG(raise_nofile(N + 256) >= N + 64,
                  "cannot raise the open-file limit to %d", N + 256);
    h_begin();
    const char *env[] = {"COUPON_CONN_TIMEOUT_S=3", NULL};
    h_svc_t *s = h_svc_start("idle", env);
    h_coupon(s, "c1", 10);

    static int fds[N];
    double t0 = h_now_ms();
    for (int i = 0; i < N; i++) {
        fds[i] = raw_connect(s->port);
        if (i % 2 == 1) {
            static const char part[] = "POST /claim HTTP/1.1\r\nHost: t\r\n";
            TT_ASSERT(send(fds[i], part, sizeof(part) - 1, MSG_NOSIGNAL) > 0);
        }
    }
    double opened_ms = h_now_ms() - t0;

    t0 = h_now_ms();
    claim_raw(s, "while-idle", 201);
    double claim_ms = h_now_ms() - t0;
    check_up(s);

    int closed = wait_all_closed(fds, N, 3000 + 15000);
    printf("# %d idle connections opened in %.0f ms; a claim among them "
           "took %.0f ms; %d closed by the timeout\n",
           N, opened_ms, claim_ms, closed);
    TT_EQ_INT(closed, N);
    for (int i = 0; i < N; i++) {
        close(fds[i]);
    }

    claim_raw(s, "after-idle", 201);
    check_up(s);
    TT_EQ_INT(h_pg_int("SELECT count(*) FROM claims"), 2);
    h_check_invariants("c1", 10, 2);
}

/* With every connection slot taken by idle clients, a new client waits in
 * the listen queue, and is served once the timeout frees a slot: idle
 * clients can delay service by up to the timeout, not deny it. */
TT_TEST(hostile_connection_limit_full, 60) {
    enum { LIMIT = 50, N = 60 };
    h_begin();
    const char *env[] = {"COUPON_CONN_TIMEOUT_S=2", "COUPON_MAX_CONNECTIONS=50",
                         NULL};
    h_svc_t *s = h_svc_start("limit", env);
    h_coupon(s, "c1", 10);
    int fds[N];
    for (int i = 0; i < N; i++) {
        fds[i] = raw_connect(s->port);
    }
    double t0 = h_now_ms();
    claim_raw(s, "past-the-limit", 201);
    double ms = h_now_ms() - t0;
    printf("# with %d idle connections and a limit of %d, a claim took %.0f "
           "ms\n",
           N, LIMIT, ms);
    TT_CMP_INT(ms, <, (2 + 6) * 1000);
    for (int i = 0; i < N; i++) {
        close(fds[i]);
    }
    check_up(s);
    h_check_invariants("c1", 10, 1);
}

/* A client that sends a byte every 300 ms is never idle, so libmicrohttpd's
 * idle timeout never fires; the request deadline (COUPON_CONN_TIMEOUT_S from
 * the connection's start) must cut it off, in the header phase and in the
 * body phase alike. Bounds are generous on purpose: this is liveness, not
 * speed. */
static double trickle_until_closed(int port, const char *head,
                                   double give_up_ms) {
    int fd = raw_connect(port);
    double t0 = h_now_ms();
    TT_ASSERT(send(fd, head, strlen(head), MSG_NOSIGNAL) > 0);
    while (h_now_ms() - t0 < give_up_ms) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 300) > 0) {
            char buf[512];
            ssize_t n = recv(fd, buf, sizeof(buf), 0);
            if (n <= 0) {
                break; /* closed by the server */
            }
            continue; /* an answer (there should be none): keep reading */
        }
        if (send(fd, "a", 1, MSG_NOSIGNAL) < 0) {
            break; /* reset by the server */
        }
    }
    double ms = h_now_ms() - t0;
    close(fd);
    return ms;
}

TT_TEST(hostile_trickling_clients_are_cut, 60) {
    h_begin();
    const char *env[] = {"COUPON_CONN_TIMEOUT_S=2", NULL};
    h_svc_t *s = h_svc_start("trickle", env);
    h_coupon(s, "c1", 10);
    /* Header phase: a header line that never ends. */
    double hdr_ms = trickle_until_closed(
        s->port, "POST /claim HTTP/1.1\r\nHost: t\r\nX-Slow: ", 15000);
    /* Body phase: a body that never reaches its Content-Length. */
    double body_ms = trickle_until_closed(
        s->port,
        "POST /claim HTTP/1.1\r\nHost: t\r\nContent-Type: "
        "application/json\r\nContent-Length: 4000\r\n\r\n{\"coupon_id\":\"",
        15000);
    printf("# trickling clients cut after %.0f ms (headers), %.0f ms (body)\n",
           hdr_ms, body_ms);
    TT_CMP_INT(hdr_ms, <, 8000);
    TT_CMP_INT(body_ms, <, 8000);
    claim_raw(s, "after-trickle", 201);
    check_up(s);
    h_check_invariants("c1", 10, 1);
}
