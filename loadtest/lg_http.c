/*
 * lg_http.c: the load generator's HTTP/1.1 response reader. See lg_http.h
 * for why it exists and what it accepts.
 */
#include "lg_http.h"

#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

static lg_http_rc_t lg_http__fail(lg_http_resp_t *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Put r in the error state; returns LG_HTTP_EBAD. */
static lg_http_rc_t lg_http__fail(lg_http_resp_t *r, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->errstr, sizeof r->errstr, fmt, ap);
    va_end(ap);
    r->state = LG_HTTP_S_ERROR;
    return LG_HTTP_EBAD;
}

void lg_http_resp_init(lg_http_resp_t *r, bool head_request, char *sample,
                       size_t sample_cap) {
    memset(r, 0, sizeof *r);
    r->state = LG_HTTP_S_HEAD;
    r->head_request = head_request;
    r->sample = sample;
    r->sample_cap = sample ? sample_cap : 0;
}

/* Returns the length of the line at p (up to and including its LF), or 0 if
 * p[0..len) holds no complete line. */
static size_t lg_http__line(const char *p, size_t len) {
    const char *nl = memchr(p, '\n', len);
    return nl ? (size_t)(nl - p) + 1 : 0;
}

/* Is the line p[0..n) (its line end included) empty? */
static bool lg_http__empty_line(const char *p, size_t n) {
    return n == 1 || (n == 2 && p[0] == '\r');
}

/* Returns the length of the header block at p (status line to the empty
 * line, inclusive), or 0 if it is not complete yet. */
static size_t lg_http__head_len(const char *p, size_t len) {
    size_t off = 0;
    for (;;) {
        size_t n = lg_http__line(p + off, len - off);
        if (n == 0) {
            return 0;
        }
        if (lg_http__empty_line(p + off, n)) {
            return off + n; /* the status line is never empty */
        }
        off += n;
    }
}

/* Trims spaces and tabs from both ends of v[0..*n), and the line end. */
static const char *lg_http__trim(const char *v, size_t *n) {
    while (*n && (*v == ' ' || *v == '\t')) {
        v++, (*n)--;
    }
    while (*n && (v[*n - 1] == ' ' || v[*n - 1] == '\t' || v[*n - 1] == '\r' ||
                  v[*n - 1] == '\n')) {
        (*n)--;
    }
    return v;
}

/* Does the comma-separated list v[0..n) hold token (any case)? */
static bool lg_http__has_token(const char *v, size_t n, const char *token) {
    size_t tl = strlen(token);
    while (n) {
        const char *comma = memchr(v, ',', n);
        size_t item = comma ? (size_t)(comma - v) : n;
        size_t il = item;
        const char *it = lg_http__trim(v, &il);
        if (il == tl && strncasecmp(it, token, tl) == 0) {
            return true;
        }
        if (!comma) {
            break;
        }
        v += item + 1;
        n -= item + 1;
    }
    return false;
}

/* Parses a decimal Content-Length; returns 0 and sets *out, or -1. */
static int lg_http__decimal(const char *v, size_t n, uint64_t *out) {
    uint64_t x = 0;
    if (n == 0 || n > 18) {
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9') {
            return -1;
        }
        x = x * 10 + (uint64_t)(v[i] - '0');
    }
    *out = x;
    return 0;
}

/* Is p[0..n) a status line: "HTTP/1.x SSS", then a reason phrase, which
 * may be empty, and the line end? */
static bool lg_http__status_line_ok(const char *p, size_t n) {
    return n >= 13 && memcmp(p, "HTTP/1.", 7) == 0 && p[7] >= '0' &&
           p[7] <= '9' && p[8] == ' ' && p[9] >= '1' && p[9] <= '9' &&
           p[10] >= '0' && p[10] <= '9' && p[11] >= '0' && p[11] <= '9' &&
           (p[12] == ' ' || p[12] == '\r' || p[12] == '\n');
}

/* Could p[0..avail), an incomplete header block, still begin a valid one?
 * Lets garbage fail at once instead of after the request's timeout. */
static bool lg_http__head_start_ok(const char *p, size_t avail) {
    size_t k = avail < 7 ? avail : 7;
    if (memcmp(p, "HTTP/1.", k) != 0) {
        return false;
    }
    size_t n = lg_http__line(p, avail);
    return n == 0 || lg_http__status_line_ok(p, n);
}

/* What the headers of one response say about its framing. */
typedef struct lg_http__framing {
    bool conn_close, conn_keep; /* Connection: close / keep-alive */
    bool chunked;               /* Transfer-Encoding: chunked */
    bool have_len;              /* a Content-Length was given */
    uint64_t clen;              /* its value */
} lg_http__framing_t;

/* Reads one header line, line[0..ln) (not the empty one), into *f. */
static lg_http_rc_t lg_http__header(lg_http_resp_t *r, const char *line,
                                    size_t ln, lg_http__framing_t *f) {
    const char *colon = memchr(line, ':', ln);
    if (colon == NULL || colon == line) {
        return lg_http__fail(r, "bad header line");
    }
    size_t name_len = (size_t)(colon - line);
    size_t vn = ln - name_len - 1;
    const char *v = lg_http__trim(colon + 1, &vn);
    if (name_len == 14 && strncasecmp(line, "Content-Length", 14) == 0) {
        uint64_t x;
        if (lg_http__decimal(v, vn, &x) < 0) {
            return lg_http__fail(r, "bad Content-Length");
        }
        if (f->have_len && x != f->clen) {
            return lg_http__fail(r, "conflicting Content-Length");
        }
        f->have_len = true;
        f->clen = x;
    } else if (name_len == 17 &&
               strncasecmp(line, "Transfer-Encoding", 17) == 0) {
        f->chunked = lg_http__has_token(v, vn, "chunked");
    } else if (name_len == 10 && strncasecmp(line, "Connection", 10) == 0) {
        f->conn_close |= lg_http__has_token(v, vn, "close");
        f->conn_keep |= lg_http__has_token(v, vn, "keep-alive");
    }
    return LG_HTTP_AGAIN;
}

/* The final response's headers are read: set the state its body is read
 * in. Returns LG_HTTP_OK when there is no body, else LG_HTTP_AGAIN. */
static lg_http_rc_t lg_http__framed(lg_http_resp_t *r,
                                    const lg_http__framing_t *f) {
    r->keep_alive =
        r->minor >= 1 ? !f->conn_close : f->conn_keep && !f->conn_close;
    if (r->head_request || r->status == 204 || r->status == 304 ||
        (!f->chunked && f->have_len && f->clen == 0)) {
        r->state = LG_HTTP_S_DONE;
        return LG_HTTP_OK;
    }
    if (f->chunked) {
        r->state = LG_HTTP_S_CHUNK_SIZE;
    } else if (f->have_len) {
        r->remaining = f->clen;
        r->state = LG_HTTP_S_BODY_LEN;
    } else {
        r->keep_alive = false; /* only the end of the connection ends it */
        r->state = LG_HTTP_S_BODY_EOF;
    }
    return LG_HTTP_AGAIN;
}

/* Reads the header block p[0..len), which ends with its empty line, and
 * sets the body state. Returns LG_HTTP_AGAIN, LG_HTTP_OK (no body) or
 * LG_HTTP_EBAD. */
static lg_http_rc_t lg_http__head(lg_http_resp_t *r, const char *p,
                                  size_t len) {
    size_t n = lg_http__line(p, len);
    if (!lg_http__status_line_ok(p, n)) {
        return lg_http__fail(r, "bad status line");
    }
    int status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
    lg_http__framing_t f = {0};
    for (size_t off = n; off < len;) {
        size_t ln = lg_http__line(p + off, len - off);
        const char *line = p + off;
        off += ln;
        if (lg_http__empty_line(line, ln)) {
            break; /* the empty line; one of blanks has no colon: refused */
        }
        if (lg_http__header(r, line, ln, &f) != LG_HTTP_AGAIN) {
            return LG_HTTP_EBAD;
        }
    }
    if (status < 200) {
        if (status == 101) {
            return lg_http__fail(r, "unexpected 101 Switching Protocols");
        }
        /* An interim response: the real one follows on the same stream. */
        return LG_HTTP_AGAIN;
    }
    r->status = status;
    r->minor = p[7] - '0';
    return lg_http__framed(r, &f);
}

/* Body bytes p[0..n) arrived: count them and keep the sample. */
static void lg_http__body(lg_http_resp_t *r, const char *p, size_t n) {
    r->body_bytes += n;
    size_t room = r->sample_cap - r->sample_len;
    size_t k = n < room ? n : room;
    if (k > 0) { /* sample may be NULL, and memcpy(NULL, p, 0) is undefined */
        memcpy(r->sample + r->sample_len, p, k);
    }
    r->sample_len += k;
}

/* Parses a chunk-size line (hex, then optional ";extensions"). */
static lg_http_rc_t lg_http__chunk_size(lg_http_resp_t *r, const char *p,
                                        size_t n) {
    uint64_t x = 0;
    size_t i = 0, digits = 0;
    for (; i < n; i++, digits++) {
        char ch = p[i];
        int d = ch >= '0' && ch <= '9'   ? ch - '0'
                : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
                : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10
                                         : -1;
        if (d < 0) {
            break;
        }
        if (digits == 15) {
            return lg_http__fail(r, "chunk size too large");
        }
        x = x * 16 + (uint64_t)d;
    }
    if (digits == 0 || (i < n && p[i] != ';' && p[i] != ' ' && p[i] != '\t' &&
                        p[i] != '\r' && p[i] != '\n')) {
        return lg_http__fail(r, "bad chunk size");
    }
    r->remaining = x;
    r->state = x ? LG_HTTP_S_CHUNK_DATA : LG_HTTP_S_TRAILER;
    return LG_HTTP_AGAIN;
}

/* The state machine, one function per state that reads bytes. Each gets
 * the bytes not yet consumed, p[0..avail) with avail > 0, sets *used to how
 * many it consumed and returns what lg_http_feed would: LG_HTTP_AGAIN with
 * *used == 0 means it needs more bytes than there are. */

static lg_http_rc_t lg_http__step_head(lg_http_resp_t *r, const char *p,
                                       size_t avail, size_t *used) {
    size_t n = lg_http__head_len(p, avail);
    *used = n;
    if (n == 0 && !lg_http__head_start_ok(p, avail)) {
        return lg_http__fail(r, "bad status line");
    }
    if (n == 0 ? avail >= LG_HTTP_HEAD_MAX : n > LG_HTTP_HEAD_MAX) {
        return lg_http__fail(r, "headers longer than %d bytes",
                             LG_HTTP_HEAD_MAX);
    }
    return n == 0 ? LG_HTTP_AGAIN : lg_http__head(r, p, n);
}

/* BODY_LEN and CHUNK_DATA: up to `remaining` bytes of body. */
static lg_http_rc_t lg_http__step_body(lg_http_resp_t *r, const char *p,
                                       size_t avail, size_t *used) {
    size_t n = avail < r->remaining ? avail : (size_t)r->remaining;
    lg_http__body(r, p, n);
    *used = n;
    r->remaining -= n;
    if (r->remaining > 0) {
        return LG_HTTP_AGAIN;
    }
    if (r->state == LG_HTTP_S_CHUNK_DATA) {
        r->state = LG_HTTP_S_CHUNK_END;
        return LG_HTTP_AGAIN;
    }
    r->state = LG_HTTP_S_DONE;
    return LG_HTTP_OK;
}

/* For the states that read whole lines: sets *n to the length of the line
 * at p, 0 while it is incomplete; fails r with `why` if avail bytes without
 * a line end are already more than such a line may be (max). */
static lg_http_rc_t lg_http__whole_line(lg_http_resp_t *r, const char *p,
                                        size_t avail, size_t max,
                                        const char *why, size_t *n) {
    *n = lg_http__line(p, avail);
    if (*n == 0 && avail >= max) {
        return lg_http__fail(r, "%s", why);
    }
    return LG_HTTP_AGAIN;
}

static lg_http_rc_t lg_http__step_chunk_size(lg_http_resp_t *r, const char *p,
                                             size_t avail, size_t *used) {
    lg_http_rc_t rc = lg_http__whole_line(r, p, avail, LG_HTTP_HEAD_MAX,
                                          "chunk-size line too long", used);
    return *used == 0 ? rc : lg_http__chunk_size(r, p, *used);
}

/* The CRLF that ends a chunk's data. */
static lg_http_rc_t lg_http__step_chunk_end(lg_http_resp_t *r, const char *p,
                                            size_t avail, size_t *used) {
    lg_http_rc_t rc =
        lg_http__whole_line(r, p, avail, 2, "no CRLF after a chunk", used);
    if (*used == 0) {
        return rc;
    }
    if (!lg_http__empty_line(p, *used)) {
        return lg_http__fail(r, "no CRLF after a chunk");
    }
    r->state = LG_HTTP_S_CHUNK_SIZE;
    return LG_HTTP_AGAIN;
}

/* Trailer lines are skipped; the empty line ends the response. */
static lg_http_rc_t lg_http__step_trailer(lg_http_resp_t *r, const char *p,
                                          size_t avail, size_t *used) {
    lg_http_rc_t rc = lg_http__whole_line(r, p, avail, LG_HTTP_HEAD_MAX,
                                          "trailer line too long", used);
    if (*used == 0 || !lg_http__empty_line(p, *used)) {
        return rc;
    }
    r->state = LG_HTTP_S_DONE;
    return LG_HTTP_OK;
}

static lg_http_rc_t lg_http__step(lg_http_resp_t *r, const char *p,
                                  size_t avail, size_t *used) {
    *used = 0;
    switch (r->state) {
    case LG_HTTP_S_HEAD:
        return lg_http__step_head(r, p, avail, used);
    case LG_HTTP_S_BODY_LEN:
    case LG_HTTP_S_CHUNK_DATA:
        return lg_http__step_body(r, p, avail, used);
    case LG_HTTP_S_BODY_EOF:
        lg_http__body(r, p, avail);
        *used = avail;
        return LG_HTTP_AGAIN;
    case LG_HTTP_S_CHUNK_SIZE:
        return lg_http__step_chunk_size(r, p, avail, used);
    case LG_HTTP_S_CHUNK_END:
        return lg_http__step_chunk_end(r, p, avail, used);
    case LG_HTTP_S_TRAILER:
        return lg_http__step_trailer(r, p, avail, used);
    case LG_HTTP_S_DONE:
        return LG_HTTP_OK;
    case LG_HTTP_S_ERROR:
        break;
    }
    return LG_HTTP_EBAD;
}

/* lg_http_resp_t's invariant (lg_http.h), for asserts after each call:
 * status is 0 while the headers are being read, then a real status; a
 * state that reads a counted body has bytes still to read (it leaves the
 * state when none are left); the sample never exceeds its buffer. */
static bool lg_http__resp_ok(const lg_http_resp_t *r) {
    bool counted =
        r->state == LG_HTTP_S_BODY_LEN || r->state == LG_HTTP_S_CHUNK_DATA;
    if (r->sample_len > r->sample_cap) {
        return false;
    }
    if (r->state == LG_HTTP_S_HEAD) {
        return r->status == 0;
    }
    if (r->state == LG_HTTP_S_ERROR) {
        return true;
    }
    return r->status >= 100 && r->status <= 999 &&
           (!counted || r->remaining > 0);
}

lg_http_rc_t lg_http_feed(lg_http_resp_t *r, const char *buf, size_t len,
                          size_t *used) {
    size_t off = 0, n = 0;
    lg_http_rc_t rc = LG_HTTP_AGAIN;
    while (rc == LG_HTTP_AGAIN && off < len) {
        rc = lg_http__step(r, buf + off, len - off, &n);
        off += n;
        if (rc == LG_HTTP_AGAIN && n == 0) {
            break; /* the state needs more bytes than have come */
        }
    }
    *used = off;
    assert(lg_http__resp_ok(r));
    return rc;
}

lg_http_rc_t lg_http_eof(lg_http_resp_t *r) {
    switch (r->state) {
    case LG_HTTP_S_DONE:
    case LG_HTTP_S_BODY_EOF:
        r->state = LG_HTTP_S_DONE;
        return LG_HTTP_OK;
    case LG_HTTP_S_HEAD:
        return lg_http__fail(r, "connection closed before the headers ended");
    case LG_HTTP_S_ERROR:
        return LG_HTTP_EBAD;
    default:
        return lg_http__fail(r, "connection closed inside the body");
    }
}
