/*
 * cfg.c: the settings table, and the parsing of environment and flags.
 *
 * The table is the single source: cfg_usage prints it and cfg_load walks it.
 * Each entry says how to parse the text into its field of cfg_t.
 */
#include "cfg.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef enum cfg__kind {
    CFG__STR,   /* char * owned by cfg_t */
    CFG__U32,   /* uint32_t within [min, max] */
    CFG__ADDR,  /* cfg_addr_t */
    CFG__ADDRS, /* redis[] + nredis */
    CFG__SENTS, /* sentinels[] + nsentinels */
    CFG__MODE,  /* claim_mode_t */
    CFG__LEVEL, /* log_level_t */
    CFG__ID,    /* char instance_id[128] */
    CFG__ONOFF, /* int: on = 1, off = 0 */
    CFG__WAIT,  /* int: 1 = poll, 0 = pubsub */
    CFG__UNAV,  /* int: 1 = atomic, 0 = fail */
    CFG__LOGF,  /* int: 1 = json, 0 = text */
} cfg__kind_t;

typedef struct cfg__opt {
    const char *env; /* COUPON_X; the flag is --x with '_' -> '-' */
    cfg__kind_t kind;
    size_t off;        /* offset of the field in cfg_t */
    const char *def;   /* default, as text; NULL = computed */
    uint32_t min, max; /* bounds for CFG__U32 */
    const char *help;
} cfg__opt_t;

#define F(field) offsetof(cfg_t, field)

static const cfg__opt_t cfg__opts[] = {
    {"COUPON_HTTP_ADDR", CFG__ADDR, F(http), "127.0.0.1:8081", 0, 0,
     "listen address host:port (0.0.0.0:8081 in containers)"},
    {"COUPON_PG_DSN", CFG__STR, F(pg_dsn),
     "host=127.0.0.1 port=5432 dbname=couponsvc user=couponsvc", 0, 0,
     "PostgreSQL connection string (libpq keywords or URI)"},
    {"COUPON_REDIS_ADDRS", CFG__ADDRS, F(redis), "127.0.0.1:6379", 0, 0,
     "Redis host:port, comma-separated (one node used for now)"},
    {"COUPON_REDIS_SENTINELS", CFG__SENTS, F(sentinels), NULL, 0, 0,
     "Redis Sentinel host:port, comma-separated: ask them for the master of "
     "COUPON_REDIS_MASTER_NAME on every (re)connect (COUPON_REDIS_ADDRS is "
     "then ignored)"},
    {"COUPON_REDIS_MASTER_NAME", CFG__STR, F(redis_master_name), "mymaster", 0,
     0, "the master's name in the sentinels' configuration"},
    {"COUPON_REDIS_SENTINEL_PASSWORD", CFG__STR, F(redis_sentinel_password),
     NULL, 0, 0,
     "password the sentinels require (default: COUPON_REDIS_PASSWORD; empty: "
     "no AUTH); never logged"},
    {"COUPON_REDIS_USERNAME", CFG__STR, F(redis_username), "", 0, 0,
     "Redis ACL user (empty: AUTH with the password alone, as the default "
     "user)"},
    {"COUPON_REDIS_PASSWORD", CFG__STR, F(redis_password), "", 0, 0,
     "Redis password (empty, and no username: no AUTH); never logged"},
    {"COUPON_LOCK_TTL_MS", CFG__U32, F(lock_ttl_ms), "5000", 100, 600000,
     "lock lease TTL in ms, kept alive by the watchdog"},
    {"COUPON_LOCK_WAIT_MS", CFG__U32, F(lock_wait_ms), "2000", 0, 600000,
     "longest wait for a busy lock before 503 (from when the request is "
     "queued)"},
    {"COUPON_WATCHDOG_PERIOD_MS", CFG__U32, F(watchdog_period_ms), NULL, 0,
     600000, "lease renewal period in ms (default: TTL/10)"},
    {"COUPON_CLAIM_MODE", CFG__MODE, F(mode), "lock", 0, 0,
     "lock | naive | atomic"},
    {"COUPON_ADMIN_TOKEN", CFG__STR, F(admin_token), "", 0, 0,
     "Bearer token for POST /coupons (empty: admin API refused)"},
    {"COUPON_FAULT", CFG__STR, F(fault), "", 0, 0,
     "fault hook, e.g. after_acquire:3000,before_commit:100 (tests only)"},
    {"COUPON_THREADS", CFG__U32, F(threads), "16", 1, 1024,
     "claim worker threads (each owns one Redis and one PostgreSQL "
     "connection)"},
    {"COUPON_HTTP_THREADS", CFG__U32, F(http_threads), "2", 1, 64,
     "HTTP event-loop threads (they never block on a backend)"},
    {"COUPON_MAX_CONNECTIONS", CFG__U32, F(max_connections), "4096", 1, 1000000,
     "concurrent HTTP connections accepted"},
    {"COUPON_CONN_TIMEOUT_S", CFG__U32, F(conn_timeout_s), "30", 1, 3600,
     "seconds a connection may stay idle, and may take to deliver a "
     "request"},
    {"COUPON_MAX_BODY", CFG__U32, F(max_body), "4096", 64, 1048576,
     "request body limit in bytes (413 above it)"},
    {"COUPON_CONN_MEMORY_LIMIT", CFG__U32, F(conn_memory_limit), "8192", 4096,
     1048576,
     "bytes of libmicrohttpd's memory pool per connection: request line and "
     "headers (431 above about this size), the body's read buffer, the "
     "response headers; resident, zeroed, while the connection stays open"},
    {"COUPON_REDIS_TIMEOUT_MS", CFG__U32, F(redis_timeout_ms), NULL, 0, 60000,
     "Redis connect and command timeout in ms (default: the smaller "
     "of 500 and TTL/4)"},
    {"COUPON_PG_CONNECT_TIMEOUT_S", CFG__U32, F(pg_connect_timeout_s), "3", 2,
     600, "PostgreSQL connect timeout in seconds"},
    {"COUPON_PG_STATEMENT_TIMEOUT_MS", CFG__U32, F(pg_statement_timeout_ms),
     "2000", 1, 3600000, "PostgreSQL statement_timeout in ms"},
    {"COUPON_PG_IDLE_TX_TIMEOUT_MS", CFG__U32, F(pg_idle_tx_timeout_ms), NULL,
     0, 3600000,
     "idle_in_transaction_session_timeout in ms (0: off; default: "
     "2 x statement timeout + 1000)"},
    {"COUPON_PG_TX_DEADLINE_MS", CFG__U32, F(pg_tx_deadline_ms), NULL, 100,
     3600000,
     "client-side deadline for one PostgreSQL transaction; past it the "
     "connection is dropped (default: statement timeout + 1000)"},
    {"COUPON_LOCK_MAX_HOLD_MS", CFG__U32, F(lock_max_hold_ms), NULL, 100,
     3600000,
     "longest the watchdog renews one lease; then it is lost (default: "
     "transaction deadline + watchdog period)"},
    {"COUPON_LOCK_WAIT_STRATEGY", CFG__WAIT, F(lock_wait_poll), "pubsub", 0, 0,
     "pubsub (sleep until a release notification or the re-check) | poll "
     "(jittered backoff, the baseline)"},
    {"COUPON_LOCK_RECHECK_MS", CFG__U32, F(lock_recheck_ms), "200", 1, 250,
     "longest a pubsub waiter sleeps before trying again without a "
     "notification (a notification can be lost)"},
    {"COUPON_LOCK_UNAVAILABLE", CFG__UNAV, F(lock_unavailable_atomic), "fail",
     0, 0,
     "fail (503 while the lock backend is unavailable) | atomic (claim "
     "without the lock then: PostgreSQL's conditional UPDATE alone)"},
    {"COUPON_LOCK_BACKEND", CFG__STR, F(lock_backend), "redis", 0, 0,
     "redis (COUPON_REDIS_ADDRS: one node, or Redlock) | etcd "
     "(COUPON_ETCD_ENDPOINTS)"},
    {"COUPON_ETCD_ENDPOINTS", CFG__STR, F(etcd_endpoints),
     "http://127.0.0.1:2379", 0, 0,
     "etcd members' client URLs (http:// or https://), comma-separated; a "
     "call that gets no answer from one goes to the next"},
    {"COUPON_ETCD_USERNAME", CFG__STR, F(etcd_username), "", 0, 0,
     "etcd user (empty: the cluster has auth off)"},
    {"COUPON_ETCD_PASSWORD", CFG__STR, F(etcd_password), "", 0, 0,
     "etcd password; never logged"},
    {"COUPON_ETCD_CA_FILE", CFG__STR, F(etcd_ca_file), "", 0, 0,
     "CA bundle that signed the members' certificates, for https:// "
     "endpoints (empty: the system's)"},
    {"COUPON_ETCD_PREFIX", CFG__STR, F(etcd_prefix), "couponsvc/", 0, 0,
     "every etcd key of the service is under this prefix (ends in /)"},
    {"COUPON_ETCD_TIMEOUT_MS", CFG__U32, F(etcd_timeout_ms), "1000", 10, 60000,
     "bound of one etcd call on one endpoint, connect included"},
    {"COUPON_ETCD_ELECTION_TIMEOUT_MS", CFG__U32, F(etcd_election_ms), "1000",
     10, 60000,
     "the cluster's --election-timeout: lease TTLs are at least 1.5 x it"},
    {"COUPON_SHUTDOWN_GRACE_MS", CFG__U32, F(shutdown_grace_ms), "10000", 0,
     600000, "how long SIGTERM waits for open connections to finish"},
    {"COUPON_BATCH_MAX", CFG__U32, F(batch_max), "256", 1, 1024,
     "most claims of one coupon one lease serves in one transaction (lock "
     "mode; a leader takes every claim queued, up to this; 1: no combining, "
     "every claim waits for the lock on a worker)"},
    {"COUPON_QUEUE_MAX_PER_COUPON", CFG__U32, F(queue_max_per_coupon), "1024",
     1, 1000000,
     "claims that may wait in one coupon's queue; more are answered 503 "
     "overloaded at once"},
    {"COUPON_QUEUE_MAX", CFG__U32, F(queue_max), "8192", 1, 1000000,
     "claims that may wait in all coupons' queues of this process together"},
    {"COUPON_SOLDOUT_MEMO", CFG__ONOFF, F(soldout_memo), "on", 0, 0,
     "on | off: answer claims on a coupon seen sold out from memory"},
    {"COUPON_INSTANCE_ID", CFG__ID, F(instance_id), NULL, 0, 0,
     "name in logs, metrics and claim rows (default: hostname-pid)"},
    {"COUPON_LOG_LEVEL", CFG__LEVEL, F(log_level), "info", 0, 0,
     "debug | info | warn | error"},
    {"COUPON_LOG_FORMAT", CFG__LOGF, F(log_json), "text", 0, 0,
     "text (key=value lines) | json (one JSON object per line)"},
};

#define CFG__NOPTS (sizeof(cfg__opts) / sizeof(cfg__opts[0]))

const char *cfg_mode_name(claim_mode_t m) {
    switch (m) {
    case CLAIM_MODE_LOCK:
        return "lock";
    case CLAIM_MODE_NAIVE:
        return "naive";
    case CLAIM_MODE_ATOMIC:
        return "atomic";
    }
    return "?";
}

int cfg_parse_addr(const char *s, cfg_addr_t *out) {
    const char *colon = strrchr(s, ':');
    if (colon == NULL || colon[1] == '\0') {
        return -1;
    }
    size_t hlen = (size_t)(colon - s);
    const char *h = s;
    if (hlen >= 2 && h[0] == '[' && h[hlen - 1] == ']') {
        h++;
        hlen -= 2;
    }
    if (hlen >= sizeof(out->host)) {
        return -1;
    }
    char *end;
    errno = 0;
    unsigned long port = strtoul(colon + 1, &end, 10);
    if (errno != 0 || *end != '\0' || port == 0 || port > 65535) {
        return -1;
    }
    memcpy(out->host, h, hlen);
    out->host[hlen] = '\0';
    out->port = (uint16_t)port;
    return 0;
}

int cfg_parse_addr_list(const char *s, cfg_addr_t *out, int max) {
    int n = 0;
    const char *p = s;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma != NULL ? (size_t)(comma - p) : strlen(p);
        while (len > 0 && *p == ' ') {
            p++;
            len--;
        }
        char item[300];
        if (n == max || len == 0 || len >= sizeof(item)) {
            return -1; /* too many, an empty entry, or absurdly long */
        }
        memcpy(item, p, len);
        item[len] = '\0';
        if (cfg_parse_addr(item, &out[n]) != 0 || out[n].host[0] == '\0') {
            return -1;
        }
        n++;
        if (comma == NULL) {
            return n;
        }
        p = comma + 1;
    }
}

/* Records why cfg_load fails, and the kind of failure. Returns CFG_ERR. */
__attribute__((format(printf, 3, 4))) static int
cfg__fail(cfg_t *c, cfg_errkind_t kind, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->errstr, sizeof(c->errstr), fmt, ap);
    va_end(ap);
    c->errkind = kind;
    return CFG_ERR;
}

/* The settings that are one of two words, and the word that sets the field
 * to 1; in the order the error message names them. */
static const struct {
    const char *a, *b;
    int one_is_b;
} cfg__two_words[] = {
    [CFG__ONOFF] = {"on", "off", 0},
    [CFG__WAIT] = {"pubsub", "poll", 1},
    [CFG__UNAV] = {"fail", "atomic", 1},
};

/* The settings given as a word: the claim mode, the log level and format,
 * and the two-word ones. 0, or CFG_ERR. */
static int cfg__set_word(cfg_t *c, const cfg__opt_t *o, const char *v) {
    char *field = (char *)c + o->off;
    switch (o->kind) {
    case CFG__MODE:
        if (strcmp(v, "lock") == 0) {
            c->mode = CLAIM_MODE_LOCK;
        } else if (strcmp(v, "naive") == 0) {
            c->mode = CLAIM_MODE_NAIVE;
        } else if (strcmp(v, "atomic") == 0) {
            c->mode = CLAIM_MODE_ATOMIC;
        } else {
            return cfg__fail(c, CFG_EVALUE,
                             "%s: '%s' is not lock, naive or atomic", o->env,
                             v);
        }
        return 0;
    case CFG__LEVEL:
        if (log_level_parse(v, &c->log_level) != 0) {
            return cfg__fail(c, CFG_EVALUE,
                             "%s: '%s' is not debug, info, warn or error",
                             o->env, v);
        }
        return 0;
    case CFG__LOGF: {
        log_format_t lf;
        if (log_format_parse(v, &lf) != 0) {
            return cfg__fail(c, CFG_EVALUE, "%s: '%s' is not text or json",
                             o->env, v);
        }
        *(int *)(void *)field = lf == LOG_FORMAT_JSON;
        return 0;
    }
    case CFG__ONOFF:
    case CFG__WAIT:
    case CFG__UNAV: {
        const char *a = cfg__two_words[o->kind].a;
        const char *b = cfg__two_words[o->kind].b;
        if (strcmp(v, a) != 0 && strcmp(v, b) != 0) {
            return cfg__fail(c, CFG_EVALUE, "%s: '%s' is not %s or %s", o->env,
                             v, a, b);
        }
        int is_b = strcmp(v, b) == 0;
        *(int *)(void *)field = cfg__two_words[o->kind].one_is_b ? is_b : !is_b;
        return 0;
    }
    default:
        return cfg__fail(c, CFG_EVALUE, "%s: not a word setting", o->env);
    }
}

static int cfg__set(cfg_t *c, const cfg__opt_t *o, const char *v) {
    char *field = (char *)c + o->off;

    switch (o->kind) {
    case CFG__STR: {
        char **dst = (char **)(void *)field;
        char *copy = strdup(v);
        if (copy == NULL) {
            return cfg__fail(c, CFG_ESYS, "out of memory");
        }
        free(*dst);
        *dst = copy;
        return 0;
    }
    case CFG__U32: {
        char *end;
        errno = 0;
        unsigned long x = strtoul(v, &end, 10);
        if (errno != 0 || end == v || *end != '\0' || v[0] == '-' ||
            x < o->min || x > o->max) {
            return cfg__fail(c, CFG_EVALUE,
                             "%s: '%s' is not a whole number in [%u, %u]",
                             o->env, v, o->min, o->max);
        }
        *(uint32_t *)(void *)field = (uint32_t)x;
        return 0;
    }
    case CFG__ADDR:
        if (cfg_parse_addr(v, (cfg_addr_t *)(void *)field) != 0) {
            return cfg__fail(c, CFG_EVALUE, "%s: '%s' is not host:port", o->env,
                             v);
        }
        return 0;
    case CFG__ADDRS:
    case CFG__SENTS: {
        int sents = o->kind == CFG__SENTS;
        int n = cfg_parse_addr_list(v, sents ? c->sentinels : c->redis,
                                    CFG_MAX_REDIS);
        if (n < 0) {
            return cfg__fail(c, CFG_EVALUE,
                             "%s: '%s' is not a list of up to %d host:port",
                             o->env, v, CFG_MAX_REDIS);
        }
        if (sents) {
            c->nsentinels = n;
        } else {
            c->nredis = n;
            c->redis_addrs_given = 1;
        }
        return 0;
    }
    case CFG__ID: {
        size_t len = strlen(v);
        if (len == 0 || len >= sizeof(c->instance_id)) {
            return cfg__fail(c, CFG_EVALUE, "%s: must be 1 to %zu characters",
                             o->env, sizeof(c->instance_id) - 1);
        }
        memcpy(c->instance_id, v, len + 1);
        return 0;
    }
    default:
        return cfg__set_word(c, o, v);
    }
}

/* "COUPON_LOCK_TTL_MS" -> "lock-ttl-ms" */
static void cfg__flag_name(const char *env, char *out, size_t n) {
    const char *p = env + strlen("COUPON_");
    size_t i = 0;
    for (; *p != '\0' && i + 1 < n; p++, i++) {
        out[i] = *p == '_' ? '-' : (char)(*p - 'A' + 'a');
        if (*p >= '0' && *p <= '9') {
            out[i] = *p;
        }
    }
    out[i] = '\0';
}

static const cfg__opt_t *cfg__find_flag(const char *name, size_t len) {
    char flag[64];
    for (size_t i = 0; i < CFG__NOPTS; i++) {
        cfg__flag_name(cfg__opts[i].env, flag, sizeof(flag));
        if (strlen(flag) == len && memcmp(flag, name, len) == 0) {
            return &cfg__opts[i];
        }
    }
    return NULL;
}

/* Phase 1: every setting's default, so every field is valid before the
 * environment; and the defaults that no table row can say. */
static int cfg__defaults(cfg_t *c) {
    for (size_t i = 0; i < CFG__NOPTS; i++) {
        if (cfg__opts[i].def != NULL &&
            cfg__set(c, &cfg__opts[i], cfg__opts[i].def) != 0) {
            return CFG_ERR;
        }
    }
    c->redis_addrs_given = 0; /* the default is not an operator's choice */
    /* 0 is a valid idle-in-transaction timeout (off), so "not set" needs a
     * value no input can have. */
    c->pg_idle_tx_timeout_ms = UINT32_MAX;
    char host[64] = "host";
    gethostname(host, sizeof(host) - 1);
    host[sizeof(host) - 1] = '\0';
    snprintf(c->instance_id, sizeof(c->instance_id), "%s-%ld", host,
             (long)getpid());
    return CFG_OK;
}

/* Phase 2: the environment, over the defaults. */
static int cfg__from_env(cfg_t *c) {
    for (size_t i = 0; i < CFG__NOPTS; i++) {
        const char *v = getenv(cfg__opts[i].env);
        if (v != NULL && cfg__set(c, &cfg__opts[i], v) != 0) {
            return CFG_ERR;
        }
    }
    return CFG_OK;
}

/* Phase 3: the command line, over the environment: the command, and
 * --name=value or --name value for any setting. CFG_OK, CFG_HELP,
 * CFG_VERSION or CFG_ERR. */
static int cfg__from_argv(cfg_t *c, int argc, char **argv) {
    int have_command = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            return CFG_HELP;
        }
        if (strcmp(a, "--version") == 0) {
            return CFG_VERSION;
        }
        if (strncmp(a, "--", 2) != 0) {
            if (have_command ||
                (strcmp(a, "serve") != 0 && strcmp(a, "migrate") != 0)) {
                return cfg__fail(c, CFG_EUSAGE,
                                 "unknown command '%s' (serve, migrate)", a);
            }
            c->command = a;
            have_command = 1;
            continue;
        }
        const char *name = a + 2;
        const char *eq = strchr(name, '=');
        size_t len = eq != NULL ? (size_t)(eq - name) : strlen(name);
        const cfg__opt_t *o = cfg__find_flag(name, len);
        if (o == NULL) {
            return cfg__fail(c, CFG_EUSAGE, "unknown flag '%s'", a);
        }
        const char *v = eq != NULL ? eq + 1 : NULL;
        if (v == NULL) {
            if (i + 1 == argc) {
                return cfg__fail(c, CFG_EUSAGE, "flag '%s' needs a value", a);
            }
            v = argv[++i];
        }
        if (cfg__set(c, o, v) != 0) {
            return CFG_ERR;
        }
    }
    return CFG_OK;
}

/* Phase 4: the defaults that follow from other settings, for those left
 * unset. */
static int cfg__derive(cfg_t *c) {
    if (c->redis_sentinel_password == NULL) {
        c->redis_sentinel_password = strdup(c->redis_password);
        if (c->redis_sentinel_password == NULL) {
            return cfg__fail(c, CFG_ESYS, "out of memory");
        }
    }
    if (c->watchdog_period_ms == 0) {
        c->watchdog_period_ms = c->lock_ttl_ms / 10;
    }
    if (c->pg_idle_tx_timeout_ms == UINT32_MAX) {
        c->pg_idle_tx_timeout_ms = 2 * c->pg_statement_timeout_ms + 1000;
        if (c->pg_idle_tx_timeout_ms > 3600000) {
            c->pg_idle_tx_timeout_ms = 3600000;
        }
    }
    if (c->pg_tx_deadline_ms == 0) {
        c->pg_tx_deadline_ms = c->pg_statement_timeout_ms + 1000;
    }
    if (c->lock_max_hold_ms == 0) {
        c->lock_max_hold_ms = c->pg_tx_deadline_ms + c->watchdog_period_ms;
    }
    if (c->redis_timeout_ms == 0) {
        c->redis_timeout_ms =
            c->lock_ttl_ms / 4 < 500 ? c->lock_ttl_ms / 4 : 500;
    }
    return CFG_OK;
}

/* Phase 5: the settings checked against each other. */
static int cfg__check(cfg_t *c) {
    if (strcmp(c->lock_backend, "redis") != 0 &&
        strcmp(c->lock_backend, "etcd") != 0) {
        return cfg__fail(c, CFG_EVALUE,
                         "COUPON_LOCK_BACKEND: '%s' is not redis or etcd",
                         c->lock_backend);
    }
    if (c->watchdog_period_ms >= c->lock_ttl_ms) {
        return cfg__fail(
            c, CFG_ECONFLICT,
            "COUPON_WATCHDOG_PERIOD_MS (%u) must be below "
            "COUPON_LOCK_TTL_MS (%u), or leases expire between renewals",
            c->watchdog_period_ms, c->lock_ttl_ms);
    }
    if (c->redis_timeout_ms >= c->lock_ttl_ms) {
        return cfg__fail(c, CFG_ECONFLICT,
                         "COUPON_REDIS_TIMEOUT_MS (%u) must be below "
                         "COUPON_LOCK_TTL_MS (%u)",
                         c->redis_timeout_ms, c->lock_ttl_ms);
    }
    return CFG_OK;
}

int cfg_load(cfg_t *c, int argc, char **argv) {
    memset(c, 0, sizeof(*c));
    c->command = "serve";
    int rc = cfg__defaults(c);
    if (rc == CFG_OK) {
        rc = cfg__from_env(c);
    }
    if (rc == CFG_OK) {
        rc = cfg__from_argv(c, argc, argv);
    }
    if (rc == CFG_OK) {
        rc = cfg__derive(c);
    }
    if (rc == CFG_OK) {
        rc = cfg__check(c);
    }
    return rc;
}

void cfg_free(cfg_t *c) {
    if (c == NULL) {
        return;
    }
    free(c->pg_dsn);
    free(c->admin_token);
    free(c->fault);
    free(c->redis_username);
    free(c->redis_password);
    free(c->lock_backend);
    free(c->etcd_endpoints);
    free(c->etcd_username);
    free(c->etcd_password);
    free(c->etcd_ca_file);
    free(c->etcd_prefix);
    free(c->redis_master_name);
    free(c->redis_sentinel_password);
    c->redis_master_name = c->redis_sentinel_password = NULL;
    c->pg_dsn = c->admin_token = c->fault = NULL;
    c->redis_username = c->redis_password = NULL;
}

void cfg_usage(FILE *out) {
    fprintf(out,
            "couponsvc %s: hands out a limited stock of coupons, never one "
            "too many.\n\n"
            "usage: couponsvc [serve|migrate] [--flag value ...]\n"
            "  serve     serve HTTP (default)\n"
            "  migrate   apply migrations to COUPON_PG_DSN and exit\n\n"
            "Settings: environment variable, or the flag beside it "
            "(a flag wins).\n\n",
            COUPONSVC_VERSION_STRING);
    for (size_t i = 0; i < CFG__NOPTS; i++) {
        const cfg__opt_t *o = &cfg__opts[i];
        char flag[64];
        cfg__flag_name(o->env, flag, sizeof(flag));
        fprintf(out, "  %-31s --%s\n      %s", o->env, flag, o->help);
        if (o->def != NULL && o->def[0] != '\0') {
            fprintf(out, " [%s]", o->def);
        }
        fputc('\n', out);
    }
}
