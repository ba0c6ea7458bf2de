/*
 * test_lg_http.c: the load generator's HTTP/1.1 response reader
 * (loadtest/lg_http.c). No network: responses are fed from strings.
 *
 * Covers framing by Content-Length, by chunked coding (with a chunk
 * extension and a trailer) and by the end of the connection; feeding a
 * response whole, split in two at every byte, and one byte at a time, the
 * way loadgen.c's connection buffer does it (unconsumed bytes are kept and
 * fed again with the next ones); interim 1xx responses; HEAD, 204 and 304;
 * the keep-alive rules; the body sample; bytes left over after a response;
 * and every way the reader is meant to refuse a response (LG_HTTP_EBAD with
 * a reason in errstr).
 */
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "lg_http.h"
#include "tt.h"

/* ------------------------------------------------------------- helpers --- */

/* A connection's receive buffer, kept as loadgen.c keeps one: the bytes
 * received and not yet consumed by the reader. Room for more than a full
 * header block, so that a test can feed a response and what follows it. */
typedef struct conn {
    char buf[2 * LG_HTTP_HEAD_MAX];
    size_t len;
} conn_t;

/* Appends p[0..n) to c, feeds the whole buffer to r and drops the bytes r
 * consumed. Sets *used (may be NULL) to that count. */
static int conn_feed(lg_http_resp_t *r, conn_t *c, const char *p, size_t n,
                     size_t *used) {
    TT_ASSERT(c->len + n <= sizeof c->buf);
    memcpy(c->buf + c->len, p, n);
    c->len += n;
    size_t u = (size_t)-1;
    int rc = lg_http_feed(r, c->buf, c->len, &u);
    TT_CMP_INT(u, <=, c->len);
    memmove(c->buf, c->buf + u, c->len - u);
    c->len -= u;
    if (used) {
        *used = u;
    }
    return rc;
}

/* What the first of two feeds did. */
typedef struct split {
    int first_rc;      /* lg_http_feed's result for msg[0..k) */
    size_t first_used; /* what it consumed of msg[0..k) */
} split_t;

/* Feeds msg[0..k) and then, unless that ended the response, msg[k..len),
 * through c (emptied first). Returns the last result; whatever r did not
 * consume, including bytes never fed, is left in c. */
static int feed_split(lg_http_resp_t *r, conn_t *c, const char *msg, size_t len,
                      size_t k, split_t *s) {
    c->len = 0;
    int rc = conn_feed(r, c, msg, k, &s->first_used);
    s->first_rc = rc;
    if (rc == LG_HTTP_AGAIN) {
        return conn_feed(r, c, msg + k, len - k, NULL);
    }
    TT_ASSERT(c->len + (len - k) <= sizeof c->buf);
    memcpy(c->buf + c->len, msg + k, len - k);
    c->len += len - k;
    return rc;
}

/* Feeds msg one byte at a time through c (emptied first) until the reader
 * says anything but LG_HTTP_AGAIN; *fed is how many bytes that took. */
static int feed_bytewise(lg_http_resp_t *r, conn_t *c, const char *msg,
                         size_t len, size_t *fed) {
    int rc = LG_HTTP_AGAIN;
    size_t i = 0;
    c->len = 0;
    while (rc == LG_HTTP_AGAIN && i < len) {
        rc = conn_feed(r, c, msg + i++, 1, NULL);
    }
    *fed = i;
    return rc;
}

/* Feeds msg whole to a fresh reader (sample: 64 bytes in *sample, or none
 * if sample is NULL). Returns the result; sets *used. */
static int feed_whole(lg_http_resp_t *r, bool head, const char *msg,
                      char *sample, size_t *used) {
    lg_http_resp_init(r, head, sample, sample ? 64 : 0);
    if (sample) {
        memset(sample, 0, 64);
    }
    return lg_http_feed(r, msg, strlen(msg), used);
}

/* Asserts r's sample holds exactly want. */
static void check_sample(const lg_http_resp_t *r, const char *want) {
    TT_EQ_INT(r->sample_len, strlen(want));
    TT_ASSERT_MSG(memcmp(r->sample, want, r->sample_len) == 0,
                  "sample \"%.*s\" != \"%s\"", (int)r->sample_len, r->sample,
                  want);
}

/* Asserts r failed: EBAD, the error state, a reason containing why. */
static void check_failed(const lg_http_resp_t *r, int rc, const char *why) {
    TT_EQ_INT(rc, LG_HTTP_EBAD);
    TT_EQ_INT(r->state, LG_HTTP_S_ERROR);
    TT_ASSERT(r->errstr[0] != '\0');
    TT_CONTAINS(r->errstr, why);
}

/* Asserts msg is refused (errstr containing why) when fed whole and when
 * split at every byte, and that the refusal sticks: more bytes and the end
 * of the connection give EBAD again without changing the reason. */
static void check_refused(const char *msg, const char *why) {
    static conn_t c;
    size_t len = strlen(msg), used;
    lg_http_resp_t r;
    char sample[64] = {0};
    for (size_t k = 0; k <= len; k++) {
        split_t s;
        lg_http_resp_init(&r, false, sample, sizeof sample);
        int rc = feed_split(&r, &c, msg, len, k, &s);
        TT_ASSERT_MSG(rc == LG_HTTP_EBAD, "split at %zu of \"%s\": rc %d", k,
                      msg, rc);
        check_failed(&r, rc, why);
    }
    int rc = feed_whole(&r, false, msg, sample, &used);
    check_failed(&r, rc, why);
    char before[sizeof r.errstr];
    memcpy(before, r.errstr, sizeof before);
    static const char more[] = "0\r\n\r\nHTTP/1.1 200 OK\r\n\r\n";
    TT_EQ_INT(lg_http_feed(&r, more, sizeof more - 1, &used), LG_HTTP_EBAD);
    TT_EQ_INT(lg_http_eof(&r), LG_HTTP_EBAD);
    TT_EQ_INT(r.state, LG_HTTP_S_ERROR);
    TT_EQ_STR(r.errstr, before);
}

/* ------------------------------------------------------- Content-Length --- */

static const char len_resp[] = "HTTP/1.1 200 OK\r\n"
                               "Content-Type: text/plain\r\n"
                               "Content-Length: 11\r\n"
                               "\r\n"
                               "hello world";

/* The next response on the same connection, to check what is left over. */
static const char next_resp[] = "HTTP/1.1 204 No Content\r\n\r\n";

TT_TEST(lg_http_length_whole, 5) {
    lg_http_resp_t r;
    char sample[64] = {0};
    size_t used = 0;
    TT_EQ_INT(feed_whole(&r, false, len_resp, sample, &used), LG_HTTP_OK);
    TT_EQ_INT(used, strlen(len_resp));
    TT_EQ_INT(r.state, LG_HTTP_S_DONE);
    TT_EQ_INT(r.status, 200);
    TT_EQ_INT(r.minor, 1);
    TT_ASSERT(r.keep_alive);
    TT_EQ_INT(r.body_bytes, 11);
    TT_EQ_INT(r.remaining, 0);
    check_sample(&r, "hello world");
    TT_EQ_INT(lg_http_eof(&r), LG_HTTP_OK);
}

/* Splits a response (followed by the next one) at every byte: the result
 * must not depend on where the network cut the stream. */
static void check_every_split(const char *resp, const char *body) {
    static conn_t c;
    char stream[1024];
    size_t rlen = strlen(resp), nlen = strlen(next_resp);
    size_t hlen = (size_t)(strstr(resp, "\r\n\r\n") - resp) + 4;
    TT_ASSERT(rlen + nlen < sizeof stream);
    memcpy(stream, resp, rlen);
    memcpy(stream + rlen, next_resp, nlen);
    for (size_t k = 0; k <= rlen + nlen; k++) {
        lg_http_resp_t r;
        char sample[64] = {0};
        split_t s;
        lg_http_resp_init(&r, false, sample, sizeof sample);
        int rc = feed_split(&r, &c, stream, rlen + nlen, k, &s);
        TT_ASSERT_MSG(rc == LG_HTTP_OK, "split at %zu: rc %d (%s)", k, rc,
                      r.errstr);
        /* Only the response's last byte completes it. */
        TT_EQ_INT(s.first_rc, k < rlen ? LG_HTTP_AGAIN : LG_HTTP_OK);
        /* A partial header block is not consumed: it is fed again. */
        if (k < hlen) {
            TT_EQ_INT(s.first_used, 0);
        }
        TT_EQ_INT(r.status, 200);
        TT_ASSERT(r.keep_alive);
        TT_EQ_INT(r.body_bytes, strlen(body));
        check_sample(&r, body);
        /* What is left is the next response, whole. */
        TT_EQ_INT(c.len, nlen);
        TT_ASSERT(memcmp(c.buf, next_resp, nlen) == 0);
    }
}

TT_TEST(lg_http_length_every_split, 5) {
    check_every_split(len_resp, "hello world");
}

/* -------------------------------------------------------------- chunked --- */

/* Chunk sizes with hex letters (0x1a = 26, 0xA = 10), an extension, a
 * trailer: a decimal reading of the sizes cannot pass. */
static const char chunked_resp[] = "HTTP/1.1 200 OK\r\n"
                                   "Transfer-Encoding: chunked\r\n"
                                   "\r\n"
                                   "1a;name=\"value\"\r\n"
                                   "abcdefghijklmnopqrstuvwxyz\r\n"
                                   "A\r\n"
                                   "0123456789\r\n"
                                   "0\r\n"
                                   "X-Checksum: 42\r\n"
                                   "\r\n";
static const char chunked_body[] = "abcdefghijklmnopqrstuvwxyz0123456789";

TT_TEST(lg_http_chunked_whole, 5) {
    lg_http_resp_t r;
    char sample[64] = {0};
    size_t used = 0;
    TT_EQ_INT(feed_whole(&r, false, chunked_resp, sample, &used), LG_HTTP_OK);
    TT_EQ_INT(used, strlen(chunked_resp));
    TT_EQ_INT(r.status, 200);
    TT_ASSERT(r.keep_alive);
    TT_EQ_INT(r.body_bytes, 36);
    check_sample(&r, chunked_body);
}

TT_TEST(lg_http_chunked_every_split, 5) {
    check_every_split(chunked_resp, chunked_body);
}

TT_TEST(lg_http_byte_at_a_time, 5) {
    static conn_t c;
    const char *resps[] = {len_resp, chunked_resp};
    const char *bodies[] = {"hello world", chunked_body};
    for (int i = 0; i < 2; i++) {
        lg_http_resp_t r;
        char sample[64] = {0};
        size_t fed = 0, len = strlen(resps[i]);
        lg_http_resp_init(&r, false, sample, sizeof sample);
        TT_EQ_INT(feed_bytewise(&r, &c, resps[i], len, &fed), LG_HTTP_OK);
        TT_EQ_INT(fed, len);
        TT_EQ_INT(c.len, 0);
        TT_EQ_INT(r.status, 200);
        TT_EQ_INT(r.body_bytes, strlen(bodies[i]));
        check_sample(&r, bodies[i]);
    }
}

/* A bare LF ends a line as well as CRLF does. */
TT_TEST(lg_http_bare_lf_lines, 5) {
    lg_http_resp_t r;
    char sample[64] = {0};
    size_t used;
    TT_EQ_INT(feed_whole(&r, false, "HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
                         sample, &used),
              LG_HTTP_OK);
    check_sample(&r, "ok");
    TT_EQ_INT(feed_whole(&r, false,
                         "HTTP/1.1 200\nTransfer-Encoding: chunked\n\n"
                         "3\nabc\n0\n\n",
                         sample, &used),
              LG_HTTP_OK);
    check_sample(&r, "abc");
}

/* ---------------------------------------------- interim and bodyless --- */

TT_TEST(lg_http_skips_100_continue, 5) {
    static conn_t c;
    static const char interim[] = "HTTP/1.1 100 Continue\r\n\r\n"
                                  "HTTP/1.1 103 Early Hints\r\n"
                                  "Link: </a.css>; rel=preload\r\n\r\n";
    static const char final[] = "HTTP/1.1 201 Created\r\n"
                                "Content-Length: 2\r\n\r\nok";
    char stream[256];
    size_t ilen = strlen(interim), flen = strlen(final);
    memcpy(stream, interim, ilen);
    memcpy(stream + ilen, final, flen);

    /* The interim responses alone are consumed, and are not the answer. */
    lg_http_resp_t r;
    size_t used = 0;
    lg_http_resp_init(&r, false, NULL, 0);
    TT_EQ_INT(lg_http_feed(&r, interim, ilen, &used), LG_HTTP_AGAIN);
    TT_EQ_INT(used, ilen);
    TT_EQ_INT(r.status, 0);
    TT_EQ_INT(r.state, LG_HTTP_S_HEAD);
    TT_EQ_INT(lg_http_feed(&r, final, flen, &used), LG_HTTP_OK);
    TT_EQ_INT(r.status, 201);

    for (size_t k = 0; k <= ilen + flen; k++) {
        char sample[64] = {0};
        split_t s;
        lg_http_resp_init(&r, false, sample, sizeof sample);
        TT_EQ_INT(feed_split(&r, &c, stream, ilen + flen, k, &s), LG_HTTP_OK);
        TT_EQ_INT(r.status, 201);
        TT_EQ_INT(r.body_bytes, 2);
        check_sample(&r, "ok");
        TT_EQ_INT(c.len, 0);
    }
}

TT_TEST(lg_http_no_body_head_204_304, 5) {
    static const char *cases[] = {
        "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", /* HEAD */
        "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
        "HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
        "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    };
    static const int status[] = {200, 204, 304, 304, 200};
    /* A body-like tail that must be left for the next response. */
    static const char tail[] = "hello";
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char msg[256];
        snprintf(msg, sizeof msg, "%s%s", cases[i], tail);
        lg_http_resp_t r;
        char sample[64] = {0};
        size_t used = 0;
        TT_EQ_INT(feed_whole(&r, i == 0, msg, sample, &used), LG_HTTP_OK);
        TT_EQ_INT(used, strlen(cases[i]));
        TT_EQ_INT(r.status, status[i]);
        TT_EQ_INT(r.body_bytes, 0);
        TT_EQ_INT(r.sample_len, 0);
        TT_ASSERT(r.keep_alive);
    }
}

/* ------------------------------------------------------ end of connection ---
 */

TT_TEST(lg_http_body_until_eof, 5) {
    static const char *heads[] = {
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n",
        "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n",
    };
    for (int i = 0; i < 2; i++) {
        lg_http_resp_t r;
        char sample[64] = {0};
        size_t used = 0;
        TT_EQ_INT(feed_whole(&r, false, heads[i], sample, &used),
                  LG_HTTP_AGAIN);
        TT_EQ_INT(used, strlen(heads[i]));
        TT_EQ_INT(r.state, LG_HTTP_S_BODY_EOF);
        TT_EQ_INT(lg_http_feed(&r, "first,", 6, &used), LG_HTTP_AGAIN);
        TT_EQ_INT(used, 6);
        TT_EQ_INT(lg_http_feed(&r, "second", 6, &used), LG_HTTP_AGAIN);
        TT_EQ_INT(used, 6);
        TT_EQ_INT(lg_http_eof(&r), LG_HTTP_OK);
        TT_EQ_INT(r.state, LG_HTTP_S_DONE);
        TT_EQ_INT(r.status, 200);
        TT_ASSERT(!r.keep_alive);
        TT_EQ_INT(r.body_bytes, 12);
        check_sample(&r, "first,second");
    }
}

TT_TEST(lg_http_eof_cut_short, 5) {
    static const struct {
        const char *msg;
        const char *why;
    } cases[] = {
        {"", "headers"},
        {"HTTP/1.1 200 OK\r\nContent-Le", "headers"},
        {"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n", "headers"},
        {"HTTP/1.1 100 Continue\r\n\r\n", "headers"},
        {"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc", "body"},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "body"},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
         "body"},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab",
         "body"},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
         "2\r\nab\r\n0\r\nX: y\r\n",
         "body"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        lg_http_resp_t r;
        size_t used;
        TT_EQ_INT(feed_whole(&r, false, cases[i].msg, NULL, &used),
                  LG_HTTP_AGAIN);
        int rc = lg_http_eof(&r);
        TT_ASSERT_MSG(rc == LG_HTTP_EBAD, "eof after \"%s\": %d", cases[i].msg,
                      rc);
        check_failed(&r, rc, cases[i].why);
    }
}

/* ------------------------------------------------------------ keep-alive ---
 */

TT_TEST(lg_http_keep_alive_rules, 5) {
    static const struct {
        const char *msg;
        int minor;
        bool keep_alive;
    } cases[] = {
        {"HTTP/1.1 200 OK\r\n", 1, true},
        {"HTTP/1.1 200 OK\r\nConnection: close\r\n", 1, false},
        {"HTTP/1.1 200 OK\r\nConnection: foo, Close\r\n", 1, false},
        {"HTTP/1.1 200 OK\r\nConnection:CLOSE  \r\n", 1, false},
        {"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n", 1, true},
        {"HTTP/1.1 200 OK\r\nConnection: closed\r\n", 1, true},
        {"HTTP/1.1 200 OK\r\nConnection: upgrade\r\n"
         "Connection: close\r\n",
         1, false},
        {"HTTP/1.0 200 OK\r\n", 0, false},
        {"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n", 0, true},
        {"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\n", 0, true},
        {"HTTP/1.0 200 OK\r\nConnection: te, keep-alive\r\n", 0, true},
        {"HTTP/1.0 200 OK\r\nConnection: keep-alive, close\r\n", 0, false},
        {"HTTP/1.0 200 OK\r\nKeep-Alive: timeout=5\r\n", 0, false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char msg[256];
        snprintf(msg, sizeof msg, "%sContent-Length: 2\r\n\r\nok",
                 cases[i].msg);
        lg_http_resp_t r;
        size_t used;
        TT_EQ_INT(feed_whole(&r, false, msg, NULL, &used), LG_HTTP_OK);
        TT_EQ_INT(r.minor, cases[i].minor);
        TT_ASSERT_MSG(r.keep_alive == cases[i].keep_alive,
                      "keep_alive %d for \"%s\"", r.keep_alive, cases[i].msg);
    }
}

TT_TEST(lg_http_header_names_any_case, 5) {
    lg_http_resp_t r;
    char sample[64] = {0};
    size_t used;
    TT_EQ_INT(feed_whole(&r, false,
                         "HTTP/1.1 200 OK\r\ncontent-length: 3\r\n"
                         "CONNECTION: close\r\n\r\nabcdef",
                         sample, &used),
              LG_HTTP_OK);
    check_sample(&r, "abc");
    TT_ASSERT(!r.keep_alive);
    TT_EQ_INT(feed_whole(&r, false,
                         "HTTP/1.1 200 OK\r\nTRANSFER-ENCODING: Chunked\r\n"
                         "cOnNeCtIoN: Close\r\n\r\n2\r\nab\r\n0\r\n\r\n",
                         sample, &used),
              LG_HTTP_OK);
    check_sample(&r, "ab");
    TT_ASSERT(!r.keep_alive);
}

/* --------------------------------------------------------------- sample --- */

TT_TEST(lg_http_sample_keeps_body_start, 5) {
    static const char *resps[] = {
        len_resp,
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        "3\r\nhel\r\n8\r\nlo world\r\n0\r\n\r\n",
    };
    for (int i = 0; i < 2; i++) {
        /* A cap of 0..12 bytes, with guard bytes after it. */
        for (size_t cap = 0; cap <= 12; cap++) {
            char buf[32];
            memset(buf, '#', sizeof buf);
            lg_http_resp_t r;
            size_t used;
            lg_http_resp_init(&r, false, buf, cap);
            TT_EQ_INT(lg_http_feed(&r, resps[i], strlen(resps[i]), &used),
                      LG_HTTP_OK);
            size_t want = cap < 11 ? cap : 11;
            TT_EQ_INT(r.body_bytes, 11);
            TT_EQ_INT(r.sample_len, want);
            TT_ASSERT(memcmp(buf, "hello world", want) == 0);
            for (size_t j = cap; j < sizeof buf; j++) {
                TT_ASSERT_MSG(buf[j] == '#', "byte %zu written, cap %zu", j,
                              cap);
            }
        }
    }
    /* No sample at all: the body is still counted. */
    lg_http_resp_t r;
    size_t used;
    lg_http_resp_init(&r, false, NULL, 16);
    TT_EQ_INT(r.sample_cap, 0);
    TT_EQ_INT(lg_http_feed(&r, len_resp, strlen(len_resp), &used),
              LG_HTTP_OK);
    TT_EQ_INT(r.body_bytes, 11);
    TT_EQ_INT(r.sample_len, 0);
}

/* --------------------------------------------------------- left over --- */

TT_TEST(lg_http_leaves_bytes_after_response, 5) {
    static const char *resps[] = {len_resp, chunked_resp, next_resp};
    for (int i = 0; i < 3; i++) {
        char stream[512];
        size_t rlen = strlen(resps[i]);
        snprintf(stream, sizeof stream, "%s%s", resps[i], len_resp);
        lg_http_resp_t r;
        size_t used = 0;
        TT_EQ_INT(feed_whole(&r, false, stream, NULL, &used), LG_HTTP_OK);
        TT_EQ_INT(used, rlen);
        /* A finished reader takes nothing more. */
        TT_EQ_INT(lg_http_feed(&r, stream + used, strlen(stream) - used, &used),
                  LG_HTTP_OK);
        TT_EQ_INT(used, 0);
        /* The rest is the next response, intact. */
        char sample[64] = {0};
        TT_EQ_INT(feed_whole(&r, false, stream + rlen, sample, &used),
                  LG_HTTP_OK);
        TT_EQ_INT(used, strlen(len_resp));
        check_sample(&r, "hello world");
    }
}

/* --------------------------------------------------------------- errors --- */

TT_TEST(lg_http_bad_status_line, 5) {
    static const char *lines[] = {
        "HTTQ/1.1 200 OK",   "HTTP/1.1 20 OK",  "HTTP/2 200 OK",
        "HTTP/1.1 2000 OK",  "HTTP/1.x 200 OK", "HTTP/1.1 099 Low",
        "HTTP/1.1  200 OK",  "http/1.1 200 OK", "HTTP/1.1 2x0 OK",
        "HTTP/1.1 200OK",    "HTTP/1.1",        "",
        "Content-Length: 0",
    };
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
        char msg[128];
        snprintf(msg, sizeof msg, "%s\r\nContent-Length: 0\r\n\r\n", lines[i]);
        check_refused(msg, "status line");
    }
}

/* Garbage is refused as soon as it cannot begin a status line, not when a
 * whole header block has come (a server that sends one bad line and waits
 * would otherwise cost each request its full timeout). */
TT_TEST(lg_http_garbage_refused_early, 5) {
    static const struct {
        const char *bytes;
        int want;
    } cases[] = {
        {"garbage line\r\n", LG_HTTP_EBAD},
        {"HTTX", LG_HTTP_EBAD},
        {"HTTP/1.1 2000\r\n", LG_HTTP_EBAD},
        {"HTT", LG_HTTP_AGAIN},
        {"HTTP/1.1 200 OK", LG_HTTP_AGAIN},
        {"HTTP/1.1 200 OK\r\nServer: x\r\n", LG_HTTP_AGAIN},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        lg_http_resp_t r;
        size_t used = 99;
        lg_http_resp_init(&r, false, NULL, 0);
        int rc =
            lg_http_feed(&r, cases[i].bytes, strlen(cases[i].bytes), &used);
        TT_ASSERT_MSG(rc == cases[i].want, "%s: got %d, want %d",
                      cases[i].bytes, rc, cases[i].want);
        TT_EQ_INT(used, 0);
    }
}

TT_TEST(lg_http_bad_header_line, 5) {
    check_refused("HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "header line");
    check_refused("HTTP/1.1 200 OK\r\n: empty name\r\n\r\n", "header line");
    /* A line of blanks is not the end of the headers: what follows it
     * (here the length) must not be silently ignored. */
    check_refused("HTTP/1.1 200 OK\r\n  \r\nContent-Length: 2\r\n\r\nok",
                  "header line");
}

TT_TEST(lg_http_bad_content_length, 5) {
    static const char *values[] = {
        "12a", "", "-1", "+1", "1 2", "0x10", "1234567890123456789",
    };
    for (size_t i = 0; i < sizeof values / sizeof values[0]; i++) {
        char msg[128];
        snprintf(msg, sizeof msg,
                 "HTTP/1.1 200 OK\r\nContent-Length: %s\r\n\r\nbody",
                 values[i]);
        check_refused(msg, "Content-Length");
    }
    check_refused("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n"
                  "content-length: 5\r\n\r\nbodyx",
                  "conflicting");

    /* The same value twice is one length; spaces around it are not part
     * of it. */
    lg_http_resp_t r;
    char sample[64] = {0};
    size_t used;
    TT_EQ_INT(feed_whole(&r, false,
                         "HTTP/1.1 200 OK\r\nContent-Length:  4 \r\n"
                         "Content-Length: 4\r\n\r\nbodyNEXT",
                         sample, &used),
              LG_HTTP_OK);
    check_sample(&r, "body");
    TT_EQ_INT(r.body_bytes, 4);
}

#define CHUNKED_HEAD "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"

TT_TEST(lg_http_bad_chunk_size, 5) {
    check_refused(CHUNKED_HEAD "zz\r\nabc\r\n0\r\n\r\n", "chunk size");
    check_refused(CHUNKED_HEAD "\r\nabc\r\n0\r\n\r\n", "chunk size");
    check_refused(CHUNKED_HEAD "-1\r\n\r\n", "chunk size");
    check_refused(CHUNKED_HEAD "3x\r\nabc\r\n0\r\n\r\n", "chunk size");
    check_refused(CHUNKED_HEAD "1000000000000000\r\n", "chunk size");
}

TT_TEST(lg_http_no_crlf_after_chunk, 5) {
    check_refused(CHUNKED_HEAD "3\r\nabcX\r\n0\r\n\r\n", "CRLF");
    check_refused(CHUNKED_HEAD "3\r\nabcdef", "CRLF");
    check_refused(CHUNKED_HEAD "3\r\nabc\r\r\n0\r\n\r\n", "CRLF");
}

/* Fills buf[0..len) with a status line and header lines (the last one cut
 * short), with no empty line anywhere. */
static void fill_headers(char *buf, size_t len) {
    static const char status[] = "HTTP/1.1 200 OK\r\n";
    memcpy(buf, status, sizeof status - 1);
    for (size_t i = sizeof status - 1; i < len; i += 64) {
        size_t n = len - i < 64 ? len - i : 64;
        char line[65];
        snprintf(line, sizeof line, "X-Pad-%05zu: %-49s\r\n", i, "v");
        memcpy(buf + i, line, n);
    }
}

TT_TEST(lg_http_headers_too_long, 5) {
    static char buf[LG_HTTP_HEAD_MAX + 64];
    static conn_t c;
    lg_http_resp_t r;
    size_t used = 1;
    fill_headers(buf, sizeof buf);

    /* One byte short of the limit: the reader waits, consuming nothing. */
    lg_http_resp_init(&r, false, NULL, 0);
    TT_EQ_INT(lg_http_feed(&r, buf, LG_HTTP_HEAD_MAX - 1, &used),
              LG_HTTP_AGAIN);
    TT_EQ_INT(used, 0);
    /* At the limit with no empty line, and past it: refused. */
    for (size_t len = LG_HTTP_HEAD_MAX; len <= sizeof buf; len += 32) {
        lg_http_resp_init(&r, false, NULL, 0);
        check_failed(&r, lg_http_feed(&r, buf, len, &used), "longer");
    }
    /* The same, arriving in pieces through a connection buffer. */
    lg_http_resp_init(&r, false, NULL, 0);
    c.len = 0;
    int rc = LG_HTTP_AGAIN;
    size_t fed = 0;
    while (rc == LG_HTTP_AGAIN && fed < sizeof buf) {
        size_t n = sizeof buf - fed < 1000 ? sizeof buf - fed : 1000;
        rc = conn_feed(&r, &c, buf + fed, n, NULL);
        fed += n;
    }
    check_failed(&r, rc, "longer");
    TT_CMP_INT(fed, >=, LG_HTTP_HEAD_MAX);

    /* A complete header block of exactly LG_HTTP_HEAD_MAX bytes is read. */
    static const char end[] = "Content-Length: 2\r\n\r\n";
    size_t pad = LG_HTTP_HEAD_MAX - (sizeof end - 1) - 2;
    fill_headers(buf, pad);
    memcpy(buf + pad, "\r\n", 2); /* end the cut-short line */
    memcpy(buf + pad + 2, end, sizeof end - 1);
    memcpy(buf + LG_HTTP_HEAD_MAX, "ok", 2);
    lg_http_resp_init(&r, false, NULL, 0);
    TT_EQ_INT(lg_http_feed(&r, buf, LG_HTTP_HEAD_MAX, &used), LG_HTTP_AGAIN);
    TT_EQ_INT(used, LG_HTTP_HEAD_MAX);
    TT_EQ_INT(r.status, 200);
    TT_EQ_INT(lg_http_feed(&r, buf + LG_HTTP_HEAD_MAX, 2, &used), LG_HTTP_OK);
    TT_EQ_INT(r.body_bytes, 2);
}

TT_TEST(lg_http_refuses_101, 5) {
    check_refused("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\n\r\n",
                  "101");
}
