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

int req_valid_coupon_id(const char *s, size_t len, const char **why) {
    if (len == 0) {
        *why = "coupon id is empty";
        return -1;
    }
    if (len > REQ_COUPON_ID_MAX) {
        *why = "coupon id is longer than 64 bytes";
        return -1;
    }
    if (req__id_chars(s, len, NULL) != 0) {
        *why = "coupon id may only contain A-Z a-z 0-9 _ . -";
        return -1;
    }
    return 0;
}

int req_valid_user_id(const char *s, size_t len, const char **why) {
    if (len == 0) {
        *why = "user id is empty";
        return -1;
    }
    if (len > REQ_USER_ID_MAX) {
        *why = "user id is longer than 128 bytes";
        return -1;
    }
    if (req__id_chars(s, len, "@:+") != 0) {
        *why = "user id may only contain A-Z a-z 0-9 _ . - @ : +";
        return -1;
    }
    return 0;
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
