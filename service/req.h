/*
 * req.h: parsing and validation of request bodies and identifiers.
 *
 * This is the edge where untrusted bytes become typed values; nothing past it
 * sees raw JSON. The rules, also in the README:
 *
 *   coupon id  1..64 bytes of  A-Z a-z 0-9 _ . -
 *   user id    1..128 bytes of A-Z a-z 0-9 _ . - @ : +
 *   request id (the X-Request-Id header) 1..64 bytes of A-Z a-z 0-9 _ . - :
 *   total      a JSON integer in 0..1000000000
 *   buckets    a JSON integer in 1..min(total, 64); optional, default 1
 *   starts_at, ends_at
 *              RFC 3339 date-times (2026-12-01T18:00:00Z, with an optional
 *              fraction of up to 6 digits and Z or a +hh:mm offset; years
 *              1970..9999, no leap second); optional (absent or null), and
 *              ends_at after starts_at when both are given
 *
 * The coupon id is used inside Redis keys (coupon:{ID}:lock), so it may not
 * contain braces, spaces or anything a key or a log line would trip on.
 * Unknown JSON members are ignored, so clients can send more than we read.
 */
#ifndef COUPONSVC_REQ_H
#define COUPONSVC_REQ_H

#include <stddef.h>
#include <stdint.h>

#define REQ_COUPON_ID_MAX 64
#define REQ_USER_ID_MAX 128
#define REQ_TOTAL_MAX 1000000000LL
#define REQ_BUCKETS_MAX 64
#define REQ_NO_TIME INT64_MIN /* no bound on that side of the window */

/* A failed parse: code is a stable machine-readable string (static),
 * detail is for humans. Both become the JSON error body. */
typedef struct req_error {
    const char *code;
    char detail[192];
} req_error_t;

typedef struct req_claim {
    char coupon_id[REQ_COUPON_ID_MAX + 1];
    char user_id[REQ_USER_ID_MAX + 1];
} req_claim_t;

typedef struct req_coupon {
    char id[REQ_COUPON_ID_MAX + 1];
    int64_t total;
    int buckets;                      /* 1: unsharded */
    int64_t starts_at_us, ends_at_us; /* since the Unix epoch, or REQ_NO_TIME */
} req_coupon_t;

/* Return 0 if s[0..len) is a valid id, else -1 and *why says which rule
 * failed (static string). */
int req_valid_coupon_id(const char *s, size_t len, const char **why);
int req_valid_user_id(const char *s, size_t len, const char **why);

/* 1 if s (NUL-terminated; NULL is 0) is a well-formed request id: short
 * enough for a log line and of an alphabet that needs no quoting in a log
 * line, a JSON string or a header (a UUID, a ULID, nginx's $request_id). */
#define REQ_REQUEST_ID_MAX 64
int req_valid_request_id(const char *s);

/* Parse a POST /claim body. 0 on success, -1 with *err filled. */
int req_parse_claim(const char *body, size_t len, req_claim_t *out,
                    req_error_t *err);

/* Parse a POST /coupons body. 0 on success, -1 with *err filled. */
int req_parse_coupon(const char *body, size_t len, req_coupon_t *out,
                     req_error_t *err);

/* Parses an RFC 3339 date-time (the form above, nothing around it) into
 * microseconds since the Unix epoch. 0, or -1 with *why set (static). */
int req_parse_time(const char *s, size_t len, int64_t *us, const char **why);

/* Writes us (microseconds since the Unix epoch, 1970..9999) as RFC 3339 in
 * UTC, with a fraction only when it is not zero: 2026-12-01T18:00:00Z or
 * 2026-12-01T18:00:00.250000Z. out needs 32 bytes. */
void req_format_time(int64_t us, char *out, size_t outsz);

/* 1 if a Content-Type header value names JSON (application/json, with or
 * without parameters such as charset=utf-8), else 0. NULL is 0. */
int req_is_json_type(const char *content_type);

#endif
