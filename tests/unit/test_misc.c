/*
 * test_misc.c: fault spec, lock tokens, metrics text. No network.
 */
#include <stdlib.h>
#include <string.h>

#include "fault.h"
#include "lock.h"
#include "metrics.h"
#include "tt.h"

TT_TEST(fault_parse_points, 5) {
    char err[256];
    TT_EQ_INT(
        fault_parse("after_acquire:3000,before_commit:15", err, sizeof(err)),
        0);
    TT_EQ_INT(fault_ms(FAULT_AFTER_ACQUIRE), 3000);
    TT_EQ_INT(fault_ms(FAULT_BEFORE_COMMIT), 15);
    TT_EQ_INT(fault_ms(FAULT_AFTER_COMMIT), 0);
    TT_EQ_INT(fault_any(), 1);
    TT_EQ_INT(fault_parse("", err, sizeof(err)), 0);
    TT_EQ_INT(fault_any(), 0);
    static const char *bad[] = {"after_acquire", "nowhere:5", "after_acquire:x",
                                "after_acquire:", "before_commit:9999999"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        TT_ASSERT_MSG(fault_parse(bad[i], err, sizeof(err)) == -1,
                      "accepted %s", bad[i]);
    }
}

TT_TEST(lock_tokens_are_random_hex, 5) {
    char a[LOCK_TOKEN_HEX + 1], b[LOCK_TOKEN_HEX + 1];
    TT_EQ_INT(lock_token_new(a), 0);
    TT_EQ_INT(lock_token_new(b), 0);
    TT_EQ_INT(strlen(a), 32);
    TT_EQ_INT(strspn(a, "0123456789abcdef"), 32);
    TT_ASSERT(strcmp(a, b) != 0);
    /* 1000 tokens, no repeats: 128 bits make a collision absurd, a broken
     * generator (a fixed seed, a short read) makes it certain. */
    static char seen[1000][LOCK_TOKEN_HEX + 1];
    for (int i = 0; i < 1000; i++) {
        TT_EQ_INT(lock_token_new(seen[i]), 0);
        for (int j = 0; j < i; j++) {
            TT_ASSERT(strcmp(seen[i], seen[j]) != 0);
        }
    }
}

TT_TEST(metrics_render_prometheus_text, 5) {
    metrics_inc(M_CLAIM_CLAIMED);
    metrics_inc(M_CLAIM_CLAIMED);
    metrics_inc(M_FENCED_REFUSALS);
    metrics_observe_lock_wait(3 * 1000 * 1000); /* 3 ms */
    size_t len = 0;
    char *t = metrics_render("i1", "lock", &len);
    TT_ASSERT(t != NULL);
    TT_EQ_INT(strlen(t), len);
    TT_CONTAINS(t, "couponsvc_claims_total{outcome=\"claimed\"} 2\n");
    TT_CONTAINS(t, "couponsvc_fenced_refusals_total 1\n");
    TT_CONTAINS(t, "couponsvc_lock_wait_seconds_bucket{le=\"0.0025\"} 0\n");
    TT_CONTAINS(t, "couponsvc_lock_wait_seconds_bucket{le=\"0.005\"} 1\n");
    TT_CONTAINS(t, "couponsvc_lock_wait_seconds_count 1\n");
    TT_CONTAINS(t, "# TYPE couponsvc_lock_wait_seconds histogram\n");
    TT_CONTAINS(t, "couponsvc_info{instance=\"i1\",mode=\"lock\"} 1\n");
    free(t);
}

int main(int argc, char **argv) {
    return tt_main(argc, argv, NULL, NULL);
}
