/*
 * cfg.h: the service's configuration.
 *
 * Every setting has an environment variable (the way containers and the local
 * stack configure instances) and a command-line flag of the same name in
 * lower case (--lock-ttl-ms for COUPON_LOCK_TTL_MS). A flag wins over the
 * environment, the environment wins over the default. `couponsvc --help`
 * prints the table in cfg.c, so the documentation cannot drift from the code.
 */
#ifndef COUPONSVC_CFG_H
#define COUPONSVC_CFG_H

#include <stdint.h>
#include <stdio.h>

#include "log.h"

#define COUPONSVC_VERSION_STRING "0.1.0"

#define CFG_MAX_REDIS 8

typedef enum claim_mode {
    CLAIM_MODE_LOCK = 0, /* Redis lock + watchdog + fenced UPDATE */
    CLAIM_MODE_NAIVE,    /* read, then write read+1: reproduces the race */
    CLAIM_MODE_ATOMIC,   /* no Redis: one conditional UPDATE (the baseline) */
} claim_mode_t;

typedef struct cfg_addr {
    char host[256];
    uint16_t port;
} cfg_addr_t;

/* What kind of failure cfg_load's CFG_ERR was, beside errstr's words. */
typedef enum cfg_errkind {
    CFG_ENONE = 0, /* no failure */
    CFG_EUSAGE,    /* the command line: an unknown command or flag, a flag
                      without its value */
    CFG_EVALUE,    /* one setting's value is not one it may have */
    CFG_ECONFLICT, /* settings that contradict each other */
    CFG_ESYS,      /* out of memory */
} cfg_errkind_t;

typedef struct cfg {
    const char *command; /* "serve" or "migrate"; points into argv or static */

    cfg_addr_t http;                 /* COUPON_HTTP_ADDR */
    char *pg_dsn;                    /* COUPON_PG_DSN; owned */
    cfg_addr_t redis[CFG_MAX_REDIS]; /* COUPON_REDIS_ADDRS */
    int nredis;                      /* entries used in redis[]; >= 1 */
    char *redis_username;  /* COUPON_REDIS_USERNAME; owned; "" = none */
    char *redis_password;  /* COUPON_REDIS_PASSWORD; owned; "" = no AUTH */
    uint32_t lock_ttl_ms;  /* lease TTL; the watchdog keeps it alive */
    uint32_t lock_wait_ms; /* how long a claim may wait for the lock */
    uint32_t watchdog_period_ms; /* renewal period; 0 in input = TTL/10 */
    claim_mode_t mode;           /* COUPON_CLAIM_MODE */
    char *admin_token;           /* COUPON_ADMIN_TOKEN; owned; "" = admin off */
    char *fault;                 /* COUPON_FAULT spec; owned; "" = none */
    uint32_t threads;            /* claim workers, each with its own Redis
                                    and PostgreSQL connection */
    uint32_t http_threads;       /* libmicrohttpd event-loop threads */
    uint32_t max_connections;    /* libmicrohttpd connection limit */
    uint32_t conn_timeout_s;     /* idle/slow connection timeout */
    uint32_t max_body;           /* request body limit in bytes (413 above) */
    uint32_t conn_memory_limit;  /* libmicrohttpd pool bytes per connection */
    uint32_t redis_timeout_ms;   /* connect and command timeout, every call */
    uint32_t pg_connect_timeout_s;    /* libpq connect_timeout */
    uint32_t pg_statement_timeout_ms; /* SET statement_timeout */
    uint32_t pg_idle_tx_timeout_ms;   /* idle_in_transaction_session_timeout */
    uint32_t pg_tx_deadline_ms;       /* client-side bound on one transaction */
    uint32_t lock_max_hold_ms;   /* the watchdog renews one lease this long */
    int lock_wait_poll;          /* COUPON_LOCK_WAIT_STRATEGY: 1 = poll,
                                    0 = pubsub (release notifications) */
    uint32_t lock_recheck_ms;    /* COUPON_LOCK_RECHECK_MS: timed re-check */
    int lock_unavailable_atomic; /* COUPON_LOCK_UNAVAILABLE: 1 = atomic, 0 =
                                    fail */
    char *lock_backend;          /* COUPON_LOCK_BACKEND: "redis" | "etcd" */
    char *etcd_endpoints;        /* COUPON_ETCD_ENDPOINTS: URLs, commas */
    char *etcd_username;         /* COUPON_ETCD_USERNAME; "" = no auth */
    char *etcd_password;         /* COUPON_ETCD_PASSWORD; never logged */
    char *etcd_ca_file;          /* COUPON_ETCD_CA_FILE: for https:// */
    char *etcd_prefix;           /* COUPON_ETCD_PREFIX: every key under it */
    uint32_t etcd_timeout_ms;    /* one gateway call on one endpoint */
    uint32_t etcd_election_ms;   /* the cluster's election timeout */
    uint32_t shutdown_grace_ms;  /* how long SIGTERM waits for connections */
    uint32_t batch_max;          /* claims one lease serves; 1: no combining */
    uint32_t queue_max_per_coupon; /* parked claims per coupon (lock mode) */
    uint32_t queue_max;            /* parked claims in the whole process */
    int soldout_memo;              /* 1: the sold-out fast path is on */
    char instance_id[128]; /* COUPON_INSTANCE_ID; default hostname-pid */
    log_level_t log_level; /* COUPON_LOG_LEVEL */
    int log_json;          /* COUPON_LOG_FORMAT: 1 = json, 0 = text */

    /* Redis Sentinel (lock_sentinel.h): with sentinels, they name the master.
     */
    cfg_addr_t sentinels[CFG_MAX_REDIS]; /* COUPON_REDIS_SENTINELS */
    int nsentinels;                      /* 0: no Sentinel */
    char *redis_master_name;             /* COUPON_REDIS_MASTER_NAME; owned */
    char *redis_sentinel_password; /* COUPON_REDIS_SENTINEL_PASSWORD; owned;
                                      default: redis_password; "" = no AUTH */
    int redis_addrs_given;         /* COUPON_REDIS_ADDRS was set */

    cfg_errkind_t errkind; /* what kind of failure, beside errstr */
    char errstr[256];      /* why cfg_load failed */
} cfg_t;

enum {
    CFG_OK = 0,
    CFG_HELP = 1,    /* --help was given; usage printed, exit 0 */
    CFG_VERSION = 2, /* --version was given */
    CFG_ERR = -1,    /* errstr says what is wrong */
};

/* Fills *c from defaults, then the environment, then argv. Strings in *c are
 * new (free with cfg_free). Returns CFG_OK, CFG_HELP, CFG_VERSION or CFG_ERR.
 */
int cfg_load(cfg_t *c, int argc, char **argv);

/* Frees the strings cfg_load allocated. Accepts NULL. */
void cfg_free(cfg_t *c);

/* Prints the usage and the settings table. */
void cfg_usage(FILE *out);

/* Parses "host:port" (host may be "[v6]" or empty for all addresses). */
int cfg_parse_addr(const char *s, cfg_addr_t *out);

/* Parses a comma-separated list of host:port into out[max]; returns the
 * count, or -1 on a malformed entry. */
int cfg_parse_addr_list(const char *s, cfg_addr_t *out, int max);

const char *cfg_mode_name(claim_mode_t m);

#endif
