/*
 * test_cfg.c: configuration from defaults, environment and flags.
 */
#include <stdlib.h>
#include <string.h>

#include "cfg.h"
#include "tt.h"

static int load(cfg_t *c, int argc, char **argv) {
    return cfg_load(c, argc, argv);
}

TT_TEST(cfg_defaults, 5) {
    cfg_t c;
    char *argv[] = {"couponsvc", NULL};
    TT_EQ_INT(load(&c, 1, argv), CFG_OK);
    TT_EQ_STR(c.command, "serve");
    TT_EQ_INT(c.lock_ttl_ms, 5000);
    TT_EQ_INT(c.watchdog_period_ms, 500); /* a tenth of the TTL */
    TT_EQ_INT(c.redis_timeout_ms, 500);
    TT_EQ_INT(c.mode, CLAIM_MODE_LOCK);
    TT_EQ_INT(c.nredis, 1);
    TT_EQ_STR(c.redis[0].host, "127.0.0.1");
    TT_EQ_INT(c.redis[0].port, 6379);
    TT_EQ_STR(c.http.host, "127.0.0.1");
    TT_EQ_INT(c.http.port, 8081);
    TT_EQ_STR(c.admin_token, "");
    cfg_free(&c);
}

TT_TEST(cfg_env_then_flag_wins, 5) {
    setenv("COUPON_LOCK_TTL_MS", "2000", 1);
    setenv("COUPON_CLAIM_MODE", "atomic", 1);
    setenv("COUPON_REDIS_ADDRS", "10.0.0.1:7000, 10.0.0.2:7001", 1);
    cfg_t c;
    char *argv[] = {"couponsvc", "--claim-mode",
                    "naive",     "--http-addr=0.0.0.0:9000",
                    "migrate",   NULL};
    TT_EQ_INT(load(&c, 5, argv), CFG_OK);
    TT_EQ_INT(c.lock_ttl_ms, 2000);
    TT_EQ_INT(c.watchdog_period_ms, 200);
    TT_EQ_INT(c.mode, CLAIM_MODE_NAIVE); /* the flag beat the env */
    TT_EQ_INT(c.nredis, 2);
    TT_EQ_STR(c.redis[1].host, "10.0.0.2");
    TT_EQ_INT(c.redis[1].port, 7001);
    TT_EQ_STR(c.http.host, "0.0.0.0");
    TT_EQ_INT(c.http.port, 9000);
    TT_EQ_STR(c.command, "migrate");
    cfg_free(&c);
}

/* The PostgreSQL bounds derive from the statement timeout unless set: the
 * transaction deadline is one statement's worth plus a second, the max hold
 * that plus one renewal period, and the idle-in-transaction timeout twice
 * the statement timeout plus a second. 0 (off) stays 0. */
TT_TEST(cfg_pg_bounds_follow_statement_timeout, 5) {
    cfg_t c;
    char *argv[] = {"couponsvc", NULL};
    TT_EQ_INT(load(&c, 1, argv), CFG_OK);
    TT_EQ_INT(c.pg_idle_tx_timeout_ms, 5000);
    TT_EQ_INT(c.pg_tx_deadline_ms, 3000);
    TT_EQ_INT(c.lock_max_hold_ms, 3500);
    cfg_free(&c);

    setenv("COUPON_PG_STATEMENT_TIMEOUT_MS", "1000", 1);
    setenv("COUPON_LOCK_TTL_MS", "1000", 1);
    TT_EQ_INT(load(&c, 1, argv), CFG_OK);
    TT_EQ_INT(c.pg_idle_tx_timeout_ms, 3000);
    TT_EQ_INT(c.pg_tx_deadline_ms, 2000);
    TT_EQ_INT(c.lock_max_hold_ms, 2100);
    cfg_free(&c);

    setenv("COUPON_PG_IDLE_TX_TIMEOUT_MS", "0", 1);
    char *argv2[] = {"couponsvc", "--lock-max-hold-ms", "700", NULL};
    TT_EQ_INT(load(&c, 3, argv2), CFG_OK);
    TT_EQ_INT(c.pg_idle_tx_timeout_ms, 0);
    TT_EQ_INT(c.lock_max_hold_ms, 700);
    cfg_free(&c);
}

TT_TEST(cfg_small_ttl_scales_redis_timeout, 5) {
    setenv("COUPON_LOCK_TTL_MS", "400", 1);
    cfg_t c;
    char *argv[] = {"couponsvc", NULL};
    TT_EQ_INT(load(&c, 1, argv), CFG_OK);
    TT_EQ_INT(c.redis_timeout_ms, 100);
    TT_EQ_INT(c.watchdog_period_ms, 40);
    cfg_free(&c);
}

TT_TEST(cfg_rejects_bad_values, 5) {
    static const char *bad[][2] = {
        {"COUPON_LOCK_TTL_MS", "abc"},         {"COUPON_LOCK_TTL_MS", "-5"},
        {"COUPON_LOCK_TTL_MS", "99"},          {"COUPON_LOCK_TTL_MS", "5000x"},
        {"COUPON_CLAIM_MODE", "fast"},         {"COUPON_HTTP_ADDR", "nohost"},
        {"COUPON_HTTP_ADDR", "h:99999"},       {"COUPON_REDIS_ADDRS", "a:1,,"},
        {"COUPON_LOG_LEVEL", "loud"},          {"COUPON_THREADS", "0"},
        {"COUPON_WATCHDOG_PERIOD_MS", "5000"}, /* not below the TTL */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        setenv(bad[i][0], bad[i][1], 1);
        cfg_t c;
        char *argv[] = {"couponsvc", NULL};
        int rc = load(&c, 1, argv);
        TT_ASSERT_MSG(rc == CFG_ERR, "%s=%s was accepted", bad[i][0],
                      bad[i][1]);
        TT_ASSERT(c.errstr[0] != '\0');
        /* One setting's value, except the period set against the TTL. */
        TT_EQ_INT(c.errkind, i + 1 < sizeof(bad) / sizeof(bad[0])
                                 ? CFG_EVALUE
                                 : CFG_ECONFLICT);
        cfg_free(&c);
        unsetenv(bad[i][0]);
    }
}

TT_TEST(cfg_unknown_flag_and_command, 5) {
    cfg_t c;
    char *a1[] = {"couponsvc", "--no-such-flag", "1", NULL};
    TT_EQ_INT(load(&c, 3, a1), CFG_ERR);
    TT_EQ_INT(c.errkind, CFG_EUSAGE);
    TT_CONTAINS(c.errstr, "unknown flag");
    cfg_free(&c);
    char *a2[] = {"couponsvc", "explode", NULL};
    TT_EQ_INT(load(&c, 2, a2), CFG_ERR);
    TT_EQ_INT(c.errkind, CFG_EUSAGE);
    cfg_free(&c);
    char *a3[] = {"couponsvc", "--lock-ttl-ms", NULL};
    TT_EQ_INT(load(&c, 2, a3), CFG_ERR);
    TT_EQ_INT(c.errkind, CFG_EUSAGE);
    TT_CONTAINS(c.errstr, "needs a value");
    cfg_free(&c);
    char *a4[] = {"couponsvc", "--help", NULL};
    TT_EQ_INT(load(&c, 2, a4), CFG_HELP);
    cfg_free(&c);
}

TT_TEST(cfg_usage_lists_every_contract_name, 5) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    cfg_usage(f);
    fclose(f);
    static const char *names[] = {"COUPON_HTTP_ADDR",
                                  "COUPON_PG_DSN",
                                  "COUPON_REDIS_ADDRS",
                                  "COUPON_LOCK_TTL_MS",
                                  "COUPON_CLAIM_MODE",
                                  "COUPON_ADMIN_TOKEN",
                                  "COUPON_FAULT",
                                  "COUPON_LOCK_WAIT_MS",
                                  "--lock-ttl-ms",
                                  "COUPON_WATCHDOG_PERIOD_MS",
                                  "COUPON_LOCK_MAX_HOLD_MS",
                                  "COUPON_PG_TX_DEADLINE_MS"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        TT_CONTAINS(buf, names[i]);
    }
    free(buf);
}

/* The Redis credentials are settings like any other, and the password
 * never shows up in --help (usage prints defaults only, and it has none). */
TT_TEST(cfg_redis_credentials, 5) {
    setenv("COUPON_REDIS_USERNAME", "couponsvc", 1);
    setenv("COUPON_REDIS_PASSWORD", "hunter2-secret", 1);
    cfg_t c;
    char *argv[] = {"couponsvc", "--redis-password", "from-flag", NULL};
    TT_EQ_INT(load(&c, 3, argv), CFG_OK);
    TT_EQ_STR(c.redis_username, "couponsvc");
    TT_EQ_STR(c.redis_password, "from-flag");
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    cfg_usage(f);
    fclose(f);
    TT_CONTAINS(buf, "COUPON_REDIS_PASSWORD");
    TT_ASSERT(strstr(buf, "hunter2") == NULL &&
              strstr(buf, "from-flag") == NULL);
    free(buf);
    cfg_free(&c);
    unsetenv("COUPON_REDIS_USERNAME");
    unsetenv("COUPON_REDIS_PASSWORD");
}

/* The lock-wait settings: pubsub by default with a 200 ms re-check, poll on
 * request, and a re-check above 250 ms (or an unknown strategy) refused. */
TT_TEST(cfg_lock_wait_strategy, 5) {
    cfg_t c;
    char *argv[] = {"couponsvc", NULL};
    TT_EQ_INT(load(&c, 1, argv), CFG_OK);
    TT_EQ_INT(c.lock_wait_poll, 0);
    TT_EQ_INT(c.lock_recheck_ms, 200);
    cfg_free(&c);

    char *argv2[] = {"couponsvc", "--lock-wait-strategy",
                     "poll",      "--lock-recheck-ms",
                     "250",       NULL};
    TT_EQ_INT(load(&c, 5, argv2), CFG_OK);
    TT_EQ_INT(c.lock_wait_poll, 1);
    TT_EQ_INT(c.lock_recheck_ms, 250);
    cfg_free(&c);

    char *argv3[] = {"couponsvc", "--lock-recheck-ms", "251", NULL};
    TT_EQ_INT(load(&c, 3, argv3), CFG_ERR);
    cfg_free(&c);
    char *argv4[] = {"couponsvc", "--lock-wait-strategy", "spin", NULL};
    TT_EQ_INT(load(&c, 3, argv4), CFG_ERR);
    cfg_free(&c);
}

/* Sentinel: a host:port list; the sentinels' password is the Redis
 * password unless given (an explicit empty one means no AUTH); whether
 * COUPON_REDIS_ADDRS was given at all is recorded, for the warning that
 * the sentinels override it. */
TT_TEST(cfg_sentinel_settings, 5) {
    cfg_t c;
    char *argv[] = {"couponsvc", NULL};
    TT_EQ_INT(load(&c, 1, argv), CFG_OK);
    TT_EQ_INT(c.nsentinels, 0);
    TT_EQ_INT(c.redis_addrs_given, 0);
    TT_EQ_STR(c.redis_master_name, "mymaster");
    TT_EQ_STR(c.redis_sentinel_password, "");
    cfg_free(&c);

    setenv("COUPON_REDIS_SENTINELS", "10.0.0.1:26379,sentinel-b:26380", 1);
    setenv("COUPON_REDIS_PASSWORD", "pw", 1);
    setenv("COUPON_REDIS_ADDRS", "10.0.0.9:6379", 1);
    char *argv2[] = {"couponsvc", "--redis-master-name", "couponsvc", NULL};
    TT_EQ_INT(load(&c, 3, argv2), CFG_OK);
    TT_EQ_INT(c.nsentinels, 2);
    TT_EQ_STR(c.sentinels[1].host, "sentinel-b");
    TT_EQ_INT(c.sentinels[1].port, 26380);
    TT_EQ_STR(c.redis_master_name, "couponsvc");
    TT_EQ_STR(c.redis_sentinel_password, "pw"); /* the Redis password */
    TT_EQ_INT(c.redis_addrs_given, 1);
    cfg_free(&c);

    setenv("COUPON_REDIS_SENTINEL_PASSWORD", "", 1);
    TT_EQ_INT(load(&c, 1, argv), CFG_OK);
    TT_EQ_STR(c.redis_sentinel_password, ""); /* given empty: no AUTH */
    cfg_free(&c);

    setenv("COUPON_REDIS_SENTINELS", "10.0.0.1", 1);
    TT_EQ_INT(load(&c, 1, argv), CFG_ERR);
    TT_CONTAINS(c.errstr, "COUPON_REDIS_SENTINELS");
    cfg_free(&c);
}
