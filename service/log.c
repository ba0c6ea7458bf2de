/*
 * log.c: see log.h. Deliberately tiny: no allocation, no locks.
 */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static char log__instance[128] = "-";
static log_level_t log__min = LOG_INFO;
static log_format_t log__format = LOG_FORMAT_TEXT;
static _Thread_local char log__rid[LOG_REQUEST_ID_MAX + 1];

static const char *const log__names[] = {"DEBUG", "INFO", "WARN", "ERROR"};

void log_init(const char *instance, log_level_t min_level) {
    if (instance != NULL) {
        snprintf(log__instance, sizeof(log__instance), "%s", instance);
    }
    log__min = min_level;
}

void log_set_format(log_format_t format) {
    log__format = format;
}

int log_level_parse(const char *s, log_level_t *out) {
    static const char *const names[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++) {
        if (strcmp(s, names[i]) == 0) {
            *out = (log_level_t)i;
            return 0;
        }
    }
    return -1;
}

int log_format_parse(const char *s, log_format_t *out) {
    if (strcmp(s, "text") == 0) {
        *out = LOG_FORMAT_TEXT;
    } else if (strcmp(s, "json") == 0) {
        *out = LOG_FORMAT_JSON;
    } else {
        return -1;
    }
    return 0;
}

void log_set_request_id(const char *id) {
    snprintf(log__rid, sizeof(log__rid), "%s", id != NULL ? id : "");
}

const char *log_request_id(void) {
    return log__rid;
}

/* ---------------------------------------------------------------- json --- */

/* A bounded output buffer. Whatever is appended either fits whole or is not
 * appended at all (full is set), so the JSON written so far stays valid
 * once the closing brace, kept in reserve, is added. */
typedef struct log__out {
    char *p;
    size_t len, cap; /* cap excludes the reserve */
    int full;
} log__out_t;

static int log__put(log__out_t *o, const char *s, size_t n) {
    if (o->full || o->len + n > o->cap) {
        o->full = 1;
        return -1;
    }
    memcpy(o->p + o->len, s, n);
    o->len += n;
    return 0;
}

/* The length of the valid UTF-8 sequence at s (at most n bytes), or 0. */
static size_t log__utf8_len(const unsigned char *s, size_t n) {
    unsigned char c = s[0];
    size_t len;
    unsigned min;
    unsigned cp;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2, cp = c & 0x1fu, min = 0x80;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3, cp = c & 0x0fu, min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4, cp = c & 0x07u, min = 0x10000;
    } else {
        return 0;
    }
    if (len > n) {
        return 0;
    }
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) {
            return 0;
        }
        cp = (cp << 6) | (s[i] & 0x3fu);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
        return 0;
    }
    return len;
}

/* Appends s (n bytes) as a JSON string, quotes included. A string that does
 * not fit is cut at a character boundary and closed. */
static void log__str(log__out_t *o, const char *s, size_t n) {
    if (log__put(o, "\"", 1) != 0) {
        return;
    }
    o->cap += 1; /* room for the closing quote, whatever happens */
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n && !o->full;) {
        unsigned char c = u[i];
        char esc[8];
        size_t len;
        if (c == '"' || c == '\\') {
            esc[0] = '\\', esc[1] = (char)c;
            log__put(o, esc, 2);
            i++;
        } else if (c < 0x20 || c == 0x7f) {
            snprintf(esc, sizeof(esc), "\\u%04x", c);
            log__put(o, esc, 6);
            i++;
        } else if (c < 0x80) {
            log__put(o, (const char *)&u[i], 1);
            i++;
        } else if ((len = log__utf8_len(u + i, n - i)) > 0) {
            log__put(o, (const char *)&u[i], len);
            i += len;
        } else {
            log__put(o, "\\ufffd", 6);
            i++;
        }
    }
    o->cap -= 1;
    o->p[o->len++] = '"';
}

static void log__member(log__out_t *o, const char *k, size_t kn, const char *v,
                        size_t vn) {
    if (log__put(o, ",", 1) == 0) {
        log__str(o, k, kn);
        log__put(o, ":", 1);
        log__str(o, v, vn);
    }
}

static int log__is_key_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-';
}

#define LOG__MAX_PAIRS 32

/* 1 if p starts a key=value pair. */
static int log__starts_pair(const char *p) {
    const char *k = p;
    while (log__is_key_char(*p)) {
        p++;
    }
    return p > k && *p == '=';
}

/* Where the quoted value starting at p (after its opening quote) ends. The
 * text format does not escape quotes inside a value (an error text may hold
 * some), so the closing one is the first quote that is followed by the end
 * or by a space and the next key=value; failing that, the last quote that
 * is followed by a space or the end; failing that, the end. */
static const char *log__closing_quote(const char *p) {
    const char *last = NULL, *q = p;
    for (; *q != '\0'; q++) {
        if (*q != '"') {
            continue;
        }
        if (q[1] == '\0' || (q[1] == ' ' && log__starts_pair(q + 2))) {
            return q;
        }
        if (q[1] == ' ') {
            last = q;
        }
    }
    return last != NULL ? last : q;
}

/* The free text of a JSON line, split: its key=value pairs, in order, and
 * the rest (prose, a reserved key, a key seen twice) as msg. The pointers
 * are into the text. */
typedef struct log__fields {
    struct {
        const char *k, *v;
        size_t kn, vn;
    } pair[LOG__MAX_PAIRS];
    size_t npairs;
    char msg[1024];
    size_t msgn;
} log__fields_t;

/* 1 if k may be a member of its own: not a fixed field's name, not seen
 * already, and there is room. */
static int log__pair_allowed(const log__fields_t *f, const char *k, size_t kn) {
    static const char *const reserved[] = {"ts",    "level",      "instance",
                                           "event", "request_id", "msg"};
    for (size_t i = 0; i < sizeof(reserved) / sizeof(reserved[0]); i++) {
        if (strlen(reserved[i]) == kn && memcmp(reserved[i], k, kn) == 0) {
            return 0;
        }
    }
    for (size_t i = 0; i < f->npairs; i++) {
        if (f->pair[i].kn == kn && memcmp(f->pair[i].k, k, kn) == 0) {
            return 0;
        }
    }
    return f->npairs < LOG__MAX_PAIRS;
}

/* Appends a word of text to msg, space-separated, as much as fits. */
static void log__msg_add(log__fields_t *f, const char *start, size_t tn) {
    if (f->msgn > 0 && f->msgn < sizeof(f->msg)) {
        f->msg[f->msgn++] = ' ';
    }
    if (tn > sizeof(f->msg) - f->msgn) {
        tn = sizeof(f->msg) - f->msgn;
    }
    memcpy(f->msg + f->msgn, start, tn);
    f->msgn += tn;
}

/* Splits text into f. */
static void log__split(const char *text, log__fields_t *f) {
    f->npairs = 0;
    f->msgn = 0;
    const char *p = text;
    while (*p != '\0') {
        while (*p == ' ') {
            p++;
        }
        if (*p == '\0') {
            break;
        }
        const char *start = p, *k = p;
        while (log__is_key_char(*p)) {
            p++;
        }
        size_t kn = (size_t)(p - k);
        if (kn == 0 || *p != '=') {
            while (*p != '\0' && *p != ' ') {
                p++;
            }
            log__msg_add(f, start, (size_t)(p - start));
            continue;
        }
        const char *v;
        size_t vn;
        p++;
        if (*p == '"') {
            v = ++p;
            const char *q = log__closing_quote(p);
            vn = (size_t)(q - v);
            p = *q == '"' ? q + 1 : q;
        } else {
            v = p;
            while (*p != '\0' && *p != ' ') {
                p++;
            }
            vn = (size_t)(p - v);
        }
        if (log__pair_allowed(f, k, kn)) {
            f->pair[f->npairs].k = k, f->pair[f->npairs].kn = kn;
            f->pair[f->npairs].v = v, f->pair[f->npairs].vn = vn;
            f->npairs++;
        } else {
            log__msg_add(f, start, (size_t)(p - start));
        }
    }
}

/* Writes the JSON line for the fixed fields and the free text. */
static size_t log__json(char *buf, size_t cap, const char *ts,
                        log_level_t level, const char *event, const char *text,
                        int text_cut) {
    log__out_t o = {buf, 0, cap - 32, 0}; /* reserve: truncated + "}\n" */
    log__put(&o, "{\"ts\":", 6);
    log__str(&o, ts, strlen(ts));
    log__member(&o, "level", 5, log__names[level], strlen(log__names[level]));
    log__member(&o, "instance", 8, log__instance, strlen(log__instance));
    log__member(&o, "event", 5, event, strlen(event));

    log__fields_t f;
    log__split(text, &f);
    for (size_t i = 0; i < f.npairs; i++) {
        log__member(&o, f.pair[i].k, f.pair[i].kn, f.pair[i].v, f.pair[i].vn);
    }
    if (f.msgn > 0) {
        log__member(&o, "msg", 3, f.msg, f.msgn);
    }
    if (log__rid[0] != '\0') {
        log__member(&o, "request_id", 10, log__rid, strlen(log__rid));
    }
    /* The reserve: a string cut short took at most its closing quote. */
    int truncated = o.full || text_cut;
    o.cap += 32;
    o.full = 0;
    if (truncated) {
        log__put(&o, ",\"truncated\":true", 17);
    }
    log__put(&o, "}\n", 2);
    return o.len;
}

/* ---------------------------------------------------------------- line --- */

void log_msg(log_level_t level, const char *event, const char *fmt, ...) {
    if (level < log__min) {
        return;
    }

    char line[2048];
    char ts[32];
    struct timespec now;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &now);
    gmtime_r(&now.tv_sec, &tm);
    snprintf(ts, sizeof(ts), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ",
             tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
             tm.tm_min, tm.tm_sec, now.tv_nsec / 1000000);

    if (log__format == LOG_FORMAT_JSON) {
        char text[1536];
        va_list ap;
        va_start(ap, fmt);
        int m = vsnprintf(text, sizeof(text), fmt, ap);
        va_end(ap);
        if (m < 0) {
            text[0] = '\0';
        }
        char out[4096];
        size_t n = log__json(out, sizeof(out), ts, level, event, text,
                             m >= (int)sizeof(text));
        ssize_t w = write(STDERR_FILENO, out, n);
        (void)w;
        return;
    }

    int n = snprintf(line, sizeof(line), "%s %s instance=%s event=%s ", ts,
                     log__names[level], log__instance, event);
    if (n < 0) {
        return;
    }
    if ((size_t)n < sizeof(line)) {
        va_list ap;
        va_start(ap, fmt);
        int m = vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
        va_end(ap);
        if (m > 0) {
            n += m;
        }
    }
    if (log__rid[0] != '\0' && (size_t)n < sizeof(line)) {
        int m = snprintf(line + n, sizeof(line) - (size_t)n, " request_id=%s",
                         log__rid);
        if (m > 0) {
            n += m;
        }
    }
    if ((size_t)n >= sizeof(line) - 1) {
        n = (int)sizeof(line) - 2; /* truncated: still one whole line */
    }
    line[n++] = '\n';

    /* One write per line keeps lines whole across threads. A failed write
     * to stderr has nowhere to be reported, so its result is ignored. */
    ssize_t w = write(STDERR_FILENO, line, (size_t)n);
    (void)w;
}
