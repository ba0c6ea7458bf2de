/*
 * test_req.c: request bodies and identifiers.
 */
#include <string.h>

#include "req.h"
#include "tt.h"

static int claim(const char *body, req_claim_t *out, req_error_t *err) {
    return req_parse_claim(body, strlen(body), out, err);
}

TT_TEST(req_claim_ok, 5) {
    req_claim_t c;
    req_error_t e;
    TT_EQ_INT(claim("{\"coupon_id\":\"spring-2026\",\"user_id\":\"u@x.io\","
                    "\"extra\":[1,2]}",
                    &c, &e),
              0);
    TT_EQ_STR(c.coupon_id, "spring-2026");
    TT_EQ_STR(c.user_id, "u@x.io");
}

TT_TEST(req_claim_rejects, 5) {
    static const struct {
        const char *body;
        const char *code;
    } cases[] = {
        {"", "bad_request"},
        {"{", "bad_json"},
        {"[]", "bad_request"},
        {"\"str\"", "bad_json"}, /* jansson wants an object or array */
        {"null", "bad_json"},
        {"{\"coupon_id\":\"a\"}", "bad_request"},
        {"{\"user_id\":\"a\"}", "bad_request"},
        {"{\"coupon_id\":1,\"user_id\":\"a\"}", "bad_request"},
        {"{\"coupon_id\":\"a\",\"user_id\":null}", "bad_request"},
        {"{\"coupon_id\":\"\",\"user_id\":\"a\"}", "invalid_id"},
        {"{\"coupon_id\":\"a b\",\"user_id\":\"a\"}", "invalid_id"},
        {"{\"coupon_id\":\"a{b}\",\"user_id\":\"a\"}", "invalid_id"},
        {"{\"coupon_id\":\"a';DROP TABLE coupons;--\",\"user_id\":\"a\"}",
         "invalid_id"},
        {"{\"coupon_id\":\"a\",\"user_id\":\"a\\u0000b\"}", "bad_json"},
        {"{\"coupon_id\":\"\\u00e9\",\"user_id\":\"a\"}", "invalid_id"},
        {"{\"coupon_id\":\"a\",\"coupon_id\":\"b\",\"user_id\":\"a\"}",
         "bad_json"},
        {"{\"coupon_id\":\"a\",\"user_id\":\"a\"} trailing", "bad_json"},
        {"\xff\xfe{}", "bad_json"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        req_claim_t c;
        req_error_t e = {0};
        int rc = claim(cases[i].body, &c, &e);
        TT_ASSERT_MSG(rc == -1, "case %zu (%s) was accepted", i, cases[i].body);
        TT_ASSERT_MSG(e.code != NULL && strcmp(e.code, cases[i].code) == 0,
                      "case %zu: code %s, want %s", i, e.code, cases[i].code);
        TT_ASSERT(e.detail[0] != '\0');
    }
}

TT_TEST(req_id_lengths, 5) {
    char id[200];
    const char *why;
    memset(id, 'a', sizeof(id));
    TT_EQ_INT(req_valid_coupon_id(id, 64, &why), 0);
    TT_EQ_INT(req_valid_coupon_id(id, 65, &why), -1);
    TT_EQ_INT(req_valid_user_id(id, 128, &why), 0);
    TT_EQ_INT(req_valid_user_id(id, 129, &why), -1);
    TT_EQ_INT(req_valid_user_id("a:b+c@d", 7, &why), 0);
    TT_EQ_INT(req_valid_coupon_id("a:b", 3, &why), -1);
    TT_EQ_INT(req_valid_user_id("a\0b", 3, &why), -1);
}

TT_TEST(req_coupon_body, 5) {
    req_coupon_t c;
    req_error_t e;
    const char *ok = "{\"id\":\"c1\",\"total\":10}";
    TT_EQ_INT(req_parse_coupon(ok, strlen(ok), &c, &e), 0);
    TT_EQ_STR(c.id, "c1");
    TT_EQ_INT(c.total, 10);
    static const char *bad[] = {
        "{\"id\":\"c1\"}",
        "{\"id\":\"c1\",\"total\":-1}",
        "{\"id\":\"c1\",\"total\":1.5}",
        "{\"id\":\"c1\",\"total\":\"10\"}",
        "{\"id\":\"c1\",\"total\":10000000000}",
        "{\"total\":1}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        TT_ASSERT_MSG(req_parse_coupon(bad[i], strlen(bad[i]), &c, &e) == -1,
                      "accepted %s", bad[i]);
    }
}

TT_TEST(req_content_type, 5) {
    TT_EQ_INT(req_is_json_type("application/json"), 1);
    TT_EQ_INT(req_is_json_type("application/json; charset=utf-8"), 1);
    TT_EQ_INT(req_is_json_type("Application/JSON"), 1);
    TT_EQ_INT(req_is_json_type("application/jsonx"), 0);
    TT_EQ_INT(req_is_json_type("text/plain"), 0);
    TT_EQ_INT(req_is_json_type(""), 0);
    TT_EQ_INT(req_is_json_type(NULL), 0);
}
