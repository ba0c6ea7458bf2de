/*
 * req.c: see req.h. jansson parses; this file decides what is acceptable.
 *
 * jansson already rejects invalid UTF-8, "\u0000" inside strings (we do not
 * pass JSON_ALLOW_NUL), nesting deeper than its limit, and trailing garbage.
 * Duplicate keys are refused (JSON_REJECT_DUPLICATES): two "user_id" members
 * would leave it to chance which one is claimed.
 */
#include "req.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static int req__id_chars(const char *s, size_t len, const char *extra) {
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if ((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
            (ch >= '0' && ch <= '9') || ch == '_' || ch == '.' || ch == '-') {
            continue;
        }
        if (ch != '\0' && extra != NULL && strchr(extra, ch) != NULL) {
            continue;
        }
        return -1;
    }
    return 0;
}

/* One kind of id: its length bound and alphabet, and the words of each
 * refusal (static: they become the 400's detail). */
typedef struct req__id_rule {
    size_t max;
    const char *extra; /* allowed beyond A-Z a-z 0-9 _ . - */
    const char *empty, *too_long, *bad_char;
} req__id_rule_t;

static int req__valid_id(const req__id_rule_t *r, const char *s, size_t len,
                         const char **why) {
    if (len == 0) {
        *why = r->empty;
    } else if (len > r->max) {
        *why = r->too_long;
    } else if (req__id_chars(s, len, r->extra) != 0) {
        *why = r->bad_char;
    } else {
        return 0;
    }
    return -1;
}

int req_valid_coupon_id(const char *s, size_t len, const char **why) {
    static const req__id_rule_t coupon = {
        REQ_COUPON_ID_MAX, NULL, "coupon id is empty",
        "coupon id is longer than 64 bytes",
        "coupon id may only contain A-Z a-z 0-9 _ . -"};
    return req__valid_id(&coupon, s, len, why);
}

int req_valid_user_id(const char *s, size_t len, const char **why) {
    static const req__id_rule_t user = {
        REQ_USER_ID_MAX, "@:+", "user id is empty",
        "user id is longer than 128 bytes",
        "user id may only contain A-Z a-z 0-9 _ . - @ : +"};
    return req__valid_id(&user, s, len, why);
}

int req_valid_request_id(const char *s) {
    if (s == NULL) {
        return 0;
    }
    size_t len = strlen(s);
    return len > 0 && len <= REQ_REQUEST_ID_MAX &&
           req__id_chars(s, len, ":") == 0;
}

static int req__fail(req_error_t *err, const char *code, const char *fmt,
                     const char *arg) {
    err->code = code;
    snprintf(err->detail, sizeof(err->detail), fmt, arg);
    return -1;
}

/* Loads body as one JSON object. On failure fills *err; returns NULL. */
static json_t *req__load_object(const char *body, size_t len,
                                req_error_t *err) {
    if (len == 0) {
        req__fail(err, "bad_request", "%s", "request body is empty");
        return NULL;
    }
    json_error_t jerr;
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL) {
        err->code = "bad_json";
        snprintf(err->detail, sizeof(err->detail),
                 "body is not valid JSON: %s (at byte %d)", jerr.text,
                 jerr.position);
        return NULL;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        req__fail(err, "bad_request", "%s", "body must be a JSON object");
        return NULL;
    }
    return root;
}

/* Copies member `name` of obj, a string valid per `check`, into out. */
static int req__string_member(json_t *obj, const char *name, char *out,
                              size_t outsz,
                              int (*check)(const char *, size_t, const char **),
                              req_error_t *err) {
    json_t *v = json_object_get(obj, name);
    if (v == NULL) {
        return req__fail(err, "bad_request", "missing member \"%s\"", name);
    }
    if (!json_is_string(v)) {
        return req__fail(err, "bad_request", "\"%s\" must be a string", name);
    }
    const char *s = json_string_value(v);
    size_t len = json_string_length(v);
    const char *why = NULL;
    if (check(s, len, &why) != 0 || len >= outsz) {
        err->code = "invalid_id";
        snprintf(err->detail, sizeof(err->detail), "\"%s\": %s", name,
                 why != NULL ? why : "too long");
        return -1;
    }
    memcpy(out, s, len);
    out[len] = '\0';
    return 0;
}

int req_parse_claim(const char *body, size_t len, req_claim_t *out,
                    req_error_t *err) {
    json_t *root = req__load_object(body, len, err);
    if (root == NULL) {
        return -1;
    }
    int rc =
        req__string_member(root, "coupon_id", out->coupon_id,
                           sizeof(out->coupon_id), req_valid_coupon_id, err);
    if (rc == 0) {
        rc = req__string_member(root, "user_id", out->user_id,
                                sizeof(out->user_id), req_valid_user_id, err);
    }
    json_decref(root);
    return rc;
}

/* Days from 1970-01-01 to y-m-d (proleptic Gregorian). */
static int64_t req__days(int64_t y, int64_t m, int64_t d) {
    y -= m <= 2;
    int64_t era = y / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

/* n decimal digits at s into *v; 0, or -1 if any is not a digit. */
static int req__digits(const char *s, int n, int *v) {
    *v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return -1;
        }
        *v = *v * 10 + (s[i] - '0');
    }
    return 0;
}

int req_parse_time(const char *s, size_t len, int64_t *us, const char **why) {
    static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int y, mo, d, h, mi, sec;
    *why = "must be an RFC 3339 date-time such as 2026-12-01T18:00:00Z";
    if (len < 20 || req__digits(s, 4, &y) || s[4] != '-' ||
        req__digits(s + 5, 2, &mo) || s[7] != '-' ||
        req__digits(s + 8, 2, &d) || (s[10] != 'T' && s[10] != 't') ||
        req__digits(s + 11, 2, &h) || s[13] != ':' ||
        req__digits(s + 14, 2, &mi) || s[16] != ':' ||
        req__digits(s + 17, 2, &sec)) {
        return -1;
    }
    size_t i = 19;
    int64_t frac = 0;
    if (s[i] == '.') {
        size_t n = 0;
        for (i++; i < len && s[i] >= '0' && s[i] <= '9'; i++, n++) {
            if (n < 6) {
                frac = frac * 10 + (s[i] - '0');
            }
        }
        if (n == 0 || n > 6) {
            *why = "the fraction of a second takes 1 to 6 digits";
            return -1;
        }
        for (; n < 6; n++) {
            frac *= 10;
        }
    }
    int64_t off = 0;
    if (i < len && (s[i] == 'Z' || s[i] == 'z')) {
        i++;
    } else if (i + 6 == len && (s[i] == '+' || s[i] == '-')) {
        int oh, om;
        if (req__digits(s + i + 1, 2, &oh) || s[i + 3] != ':' ||
            req__digits(s + i + 4, 2, &om) || oh > 23 || om > 59) {
            return -1;
        }
        off = (s[i] == '-' ? -1 : 1) * (int64_t)(oh * 3600 + om * 60);
        i += 6;
    } else {
        *why = "needs a time zone: Z or an offset such as +01:00";
        return -1;
    }
    if (i != len) {
        return -1;
    }
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (y < 1970 || mo < 1 || mo > 12 || d < 1 ||
        d > mdays[mo - 1] + (mo == 2 && leap) || h > 23 || mi > 59 ||
        sec > 59) {
        *why = "is not a valid date and time (years 1970 to 9999, no leap "
               "second)";
        return -1;
    }
    int64_t t = req__days(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec - off;
    if (t < 0) {
        *why = "is before 1970-01-01T00:00:00Z";
        return -1;
    }
    *us = t * 1000000 + frac;
    return 0;
}

void req_format_time(int64_t us, char *out, size_t outsz) {
    int64_t t = us / 1000000, frac = us % 1000000;
    int64_t days = t / 86400, secs = t % 86400;
    /* civil_from_days, the inverse of req__days */
    int64_t z = days + 719468;
    int64_t era = z / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    int64_t d = doy - (153 * mp + 2) / 5 + 1;
    int64_t m = mp < 10 ? mp + 3 : mp - 9;
    int64_t y = yoe + era * 400 + (m <= 2);
    int n = snprintf(out, outsz, "%04lld-%02lld-%02lldT%02lld:%02lld:%02lld",
                     (long long)y, (long long)m, (long long)d,
                     (long long)(secs / 3600), (long long)(secs / 60 % 60),
                     (long long)(secs % 60));
    if (n > 0 && (size_t)n < outsz && frac != 0) {
        snprintf(out + n, outsz - (size_t)n, ".%06lldZ", (long long)frac);
    } else if (n > 0 && (size_t)n < outsz) {
        snprintf(out + n, outsz - (size_t)n, "Z");
    }
}

/* An optional time member: absent or null leaves *us at REQ_NO_TIME. */
static int req__time_member(json_t *obj, const char *name, int64_t *us,
                            req_error_t *err) {
    *us = REQ_NO_TIME;
    json_t *v = json_object_get(obj, name);
    if (v == NULL || json_is_null(v)) {
        return 0;
    }
    if (!json_is_string(v)) {
        return req__fail(err, "invalid_time", "\"%s\" must be a string", name);
    }
    const char *why = NULL;
    if (req_parse_time(json_string_value(v), json_string_length(v), us, &why) !=
        0) {
        err->code = "invalid_time";
        snprintf(err->detail, sizeof(err->detail), "\"%s\" %s", name, why);
        return -1;
    }
    return 0;
}

int req_parse_coupon(const char *body, size_t len, req_coupon_t *out,
                     req_error_t *err) {
    json_t *root = req__load_object(body, len, err);
    if (root == NULL) {
        return -1;
    }
    int rc = req__string_member(root, "id", out->id, sizeof(out->id),
                                req_valid_coupon_id, err);
    if (rc == 0) {
        json_t *t = json_object_get(root, "total");
        if (t == NULL) {
            rc =
                req__fail(err, "bad_request", "%s", "missing member \"total\"");
        } else if (!json_is_integer(t)) {
            rc = req__fail(err, "bad_request", "%s",
                           "\"total\" must be an integer");
        } else if (json_integer_value(t) < 0 ||
                   json_integer_value(t) > REQ_TOTAL_MAX) {
            rc = req__fail(err, "bad_request", "%s",
                           "\"total\" must be between 0 and 1000000000");
        } else {
            out->total = (int64_t)json_integer_value(t);
        }
    }
    out->buckets = 1;
    if (rc == 0) {
        json_t *b = json_object_get(root, "buckets");
        if (b != NULL && !json_is_integer(b)) {
            rc = req__fail(err, "bad_request", "%s",
                           "\"buckets\" must be an integer");
        } else if (b != NULL) {
            json_int_t v = json_integer_value(b);
            if (v < 1 || v > REQ_BUCKETS_MAX || (v > 1 && v > out->total)) {
                rc = req__fail(err, "bad_request", "%s",
                               "\"buckets\" must be between 1 and 64, and "
                               "no more than \"total\"");
            } else {
                out->buckets = (int)v;
            }
        }
    }
    if (rc == 0) {
        rc = req__time_member(root, "starts_at", &out->starts_at_us, err);
    }
    if (rc == 0) {
        rc = req__time_member(root, "ends_at", &out->ends_at_us, err);
    }
    if (rc == 0 && out->starts_at_us != REQ_NO_TIME &&
        out->ends_at_us != REQ_NO_TIME &&
        out->ends_at_us <= out->starts_at_us) {
        rc = req__fail(err, "invalid_window", "%s",
                       "\"ends_at\" must be after \"starts_at\"");
    }
    json_decref(root);
    return rc;
}

int req_is_json_type(const char *ct) {
    if (ct == NULL) {
        return 0;
    }
    while (*ct == ' ') {
        ct++;
    }
    static const char want[] = "application/json";
    size_t n = sizeof(want) - 1;
    if (strncasecmp(ct, want, n) != 0) {
        return 0;
    }
    return ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ';
}
