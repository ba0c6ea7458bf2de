/*
 * fuzz_req.c: a libFuzzer target for req.c, the edge where untrusted bytes
 * become typed values.
 *
 * Every input goes through all five entry points: the two body parsers (as
 * the raw body, exactly as http.c passes it: a pointer and a length, not
 * NUL-terminated), req_is_json_type (as a header value, which is a C string
 * by then), and both id validators. Beyond "no crash, no sanitizer report",
 * each result is checked against the rules in req.h, written out again here
 * independently, so a parser that accepts what the rules refuse (or the
 * reverse) is a finding too, and abort() makes libFuzzer save the input.
 *
 *   make fuzz                       build and run for FUZZ_SECONDS (60)
 *   build/fuzz/fuzz_req FILE...     replay inputs (a crash artifact)
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "req.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "fuzz_req: %s:%d: %s\n", __FILE__, __LINE__,       \
                    #cond);                                                    \
            abort();                                                           \
        }                                                                      \
    } while (0)

/* The id rules of req.h, restated. */
static int oracle_id(const char *s, size_t len, size_t max, int user) {
    if (len == 0 || len > max) {
        return -1;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        int ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                 (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-' ||
                 (user && (c == '@' || c == ':' || c == '+'));
        if (!ok) {
            return -1;
        }
    }
    return 0;
}

/* The Content-Type rule of req.h, restated: optional leading spaces, then
 * "application/json" in any case, then the end, ';' or a space. */
static int oracle_json_type(const char *ct) {
    while (*ct == ' ') {
        ct++;
    }
    const char *want = "application/json";
    size_t i = 0;
    for (; want[i] != '\0'; i++) {
        char c = ct[i];
        if (c >= 'A' && c <= 'Z') {
            c = (char)(c - 'A' + 'a');
        }
        if (c != want[i]) {
            return 0;
        }
    }
    return ct[i] == '\0' || ct[i] == ';' || ct[i] == ' ';
}

/* An error must carry one of the documented codes and a terminated detail. */
static void check_error(const req_error_t *err) {
    CHECK(err->code != NULL);
    CHECK(strcmp(err->code, "bad_json") == 0 ||
          strcmp(err->code, "bad_request") == 0 ||
          strcmp(err->code, "invalid_id") == 0);
    CHECK(memchr(err->detail, '\0', sizeof(err->detail)) != NULL);
}

/* A parsed id must be terminated inside its array and pass the rules. */
static void check_id(const char *id, size_t cap, size_t max, int user) {
    const char *nul = memchr(id, '\0', cap);
    CHECK(nul != NULL);
    CHECK(oracle_id(id, (size_t)(nul - id), max, user) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *body = (const char *)data;

    /* Bodies. Poison the outputs first, so a field left unset on success
     * shows up as a failed check, not as stale zeros. */
    req_claim_t claim;
    req_error_t err;
    memset(&claim, 0x5a, sizeof(claim));
    memset(&err, 0x5a, sizeof(err));
    err.code = NULL;
    if (req_parse_claim(body, size, &claim, &err) == 0) {
        check_id(claim.coupon_id, sizeof(claim.coupon_id), REQ_COUPON_ID_MAX,
                 0);
        check_id(claim.user_id, sizeof(claim.user_id), REQ_USER_ID_MAX, 1);
    } else {
        check_error(&err);
    }

    req_coupon_t coupon;
    memset(&coupon, 0x5a, sizeof(coupon));
    memset(&err, 0x5a, sizeof(err));
    err.code = NULL;
    if (req_parse_coupon(body, size, &coupon, &err) == 0) {
        check_id(coupon.id, sizeof(coupon.id), REQ_COUPON_ID_MAX, 0);
        CHECK(coupon.total >= 0 && coupon.total <= REQ_TOTAL_MAX);
    } else {
        check_error(&err);
    }

    /* Validators, on the raw bytes (NULs included) and against the rules. */
    const char *why = NULL;
    int rc = req_valid_coupon_id(body, size, &why);
    CHECK(rc == oracle_id(body, size, REQ_COUPON_ID_MAX, 0));
    CHECK(rc == 0 || why != NULL);
    why = NULL;
    rc = req_valid_user_id(body, size, &why);
    CHECK(rc == oracle_id(body, size, REQ_USER_ID_MAX, 1));
    CHECK(rc == 0 || why != NULL);

    /* A header value: libmicrohttpd hands it over as a C string, so the
     * input is cut at its first NUL, as it would be there. */
    char *ct = malloc(size + 1);
    if (ct == NULL) {
        return 0;
    }
    memcpy(ct, data, size);
    ct[size] = '\0';
    CHECK(req_is_json_type(ct) == oracle_json_type(ct));
    free(ct);
    CHECK(req_is_json_type(NULL) == 0);
    return 0;
}
