/*
 * test_etcd.c: the etcd gateway client's pure parts: base64 both ways (keys
 * and values travel as base64), int64 fields that arrive as JSON strings and
 * are left out at zero, and the lease TTL rounding. No network.
 */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "lock_etcd_gw.h"
#include "tt.h"

TT_TEST(etcd_base64_round_trip, 5) {
    static const struct {
        const char *in, *out;
    } known[] = {{"", ""},
                 {"a", "YQ=="},
                 {"ab", "YWI="},
                 {"abc", "YWJj"},
                 {"couponsvc/", "Y291cG9uc3ZjLw=="}};
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
        char *b = lock_etcd_gw_b64(known[i].in, strlen(known[i].in));
        TT_EQ_STR(b, known[i].out);
        char back[64];
        long n = lock_etcd_gw_unb64(b, back, sizeof(back));
        TT_EQ_INT(n, strlen(known[i].in));
        TT_ASSERT(memcmp(back, known[i].in, (size_t)n) == 0);
        free(b);
    }
    /* Every byte value survives (keys are bytes to etcd). */
    char all[256], back[256];
    for (int i = 0; i < 256; i++) {
        all[i] = (char)i;
    }
    char *b = lock_etcd_gw_b64(all, sizeof(all));
    TT_EQ_INT(lock_etcd_gw_unb64(b, back, sizeof(back)), 256);
    TT_ASSERT(memcmp(all, back, sizeof(all)) == 0);
    /* Too small an output, or a character outside the alphabet: -1. */
    TT_EQ_INT(lock_etcd_gw_unb64(b, back, 10), -1);
    free(b);
    TT_EQ_INT(lock_etcd_gw_unb64("YW*j", back, sizeof(back)), -1);
}

TT_TEST(etcd_int64_fields, 5) {
    json_t *j = json_loads("{\"revision\":\"9007199254740993\",\"TTL\":\"2\","
                           "\"n\":7,\"neg\":\"-1\"}",
                           0, NULL);
    TT_ASSERT(j != NULL);
    /* Above 2^53: a double would round it; the string keeps it exact. */
    TT_EQ_INT(lock_etcd_gw_i64(j, "revision"), 9007199254740993LL);
    TT_EQ_INT(lock_etcd_gw_i64(j, "TTL"), 2);
    TT_EQ_INT(lock_etcd_gw_i64(j, "n"), 7);
    TT_EQ_INT(lock_etcd_gw_i64(j, "neg"), -1);
    /* Left out means zero: a keep-alive of an expired lease has no TTL. */
    TT_EQ_INT(lock_etcd_gw_i64(j, "absent"), 0);
    json_decref(j);
    json_t *s = lock_etcd_gw_jint(1234567890123LL);
    TT_EQ_STR(json_string_value(s), "1234567890123");
    json_decref(s);
}

TT_TEST(etcd_lease_ttl_rounding, 5) {
    TT_EQ_INT(lock_etcd_gw_ttl_s(5000, 1000), 5); /* whole already */
    TT_EQ_INT(lock_etcd_gw_ttl_s(2001, 1000), 3); /* rounded up */
    TT_EQ_INT(lock_etcd_gw_ttl_s(1000, 1000), 2); /* 1.5 x 1000 ms -> 2 s */
    TT_EQ_INT(lock_etcd_gw_ttl_s(500, 500), 1);   /* the test cluster */
    TT_EQ_INT(lock_etcd_gw_ttl_s(100, 10), 1);    /* never 0 */
    TT_EQ_INT(lock_etcd_gw_ttl_s(3000, 5000), 8); /* 7.5 s -> 8 */
}
