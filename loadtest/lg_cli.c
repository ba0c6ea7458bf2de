/*
 * lg_cli.c: the load generator's command line.
 *
 * One table, lg_cli__opts, in the manner of the service's settings table
 * (service/cfg.c): each row is an option's name, the kind of value it takes,
 * the lg_config_t field it sets, its default, its range and its help. The
 * getopt_long table, the --help text, the defaults and the check of each
 * value all come from it; what involves two options at once (raw mode and
 * --verify-dsn, --create-stock and its token, ...) is checked afterwards,
 * in lg_cli__check.
 */
#include "loadgen.h"

#include <assert.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "str.h"

/* Written here, read everywhere; create_stock -1 is "not given" (the
 * option's range starts at 0, so no default text can say it). */
lg_config_t lg_cfg = {.create_stock = -1};

/* What an option's value is, and so how it is checked and stored. */
typedef enum lg_cli__kind {
    LG_CLI__STR,    /* const char *, any text */
    LG_CLI__NAME,   /* const char *, 1 to LG_NAME_MAX characters */
    LG_CLI__FILE,   /* const char *, a file we may read */
    LG_CLI__INT,    /* int in [min, max] */
    LG_CLI__LONG,   /* long in [min, max] */
    LG_CLI__LLONG,  /* long long in [min, max] */
    LG_CLI__U64,    /* uint64_t in [min, max] */
    LG_CLI__POSNUM, /* double, finite and > 0 */
    LG_CLI__FLAG,   /* bool, no value: set to true */
    LG_CLI__HELP,   /* no value, no field: print the help, exit 0 */
} lg_cli__kind_t;

typedef struct lg_cli__opt {
    const char *name;    /* --name */
    char shortopt;       /* -x, or 0 */
    const char *metavar; /* the value's name in the help; NULL: no value */
    lg_cli__kind_t kind;
    size_t off;        /* offset of the field in lg_config_t */
    const char *def;   /* default as text, set through the same check;
                          NULL: none, or computed (the help says) */
    uint64_t min, max; /* bounds of the integer kinds */
    const char *help;  /* lines after the first are indented under it */
} lg_cli__opt_t;

#define F(field) offsetof(lg_config_t, field)

static const lg_cli__opt_t lg_cli__opts[] = {
    {"url", 0, "URL", LG_CLI__STR, F(url_arg), "http://127.0.0.1:8080", 0, 0,
     "base URL (default http://127.0.0.1:8080)"},
    {"connections", 'c', "N", LG_CLI__INT, F(connections), "64", 1, 100000,
     "closed loop: N connections each sending back-to-back\n"
     "(default 64); open loop: at most N requests in flight"},
    {"rate", 0, "R", LG_CLI__POSNUM, F(rate), NULL, 0, 0,
     "open loop: R requests/s in total on a fixed schedule;\n"
     "latency is measured from the intended send time, also\n"
     "for requests that could not be sent on time"},
    {"duration", 'd', "S", LG_CLI__POSNUM, F(duration), "10", 0, 0,
     "run time in seconds (default 10)"},
    {"requests", 'n', "N", LG_CLI__U64, F(requests), NULL, 1, UINT64_MAX / 2,
     "stop after N requests (whichever comes first)"},
    {"threads", 't', "N", LG_CLI__INT, F(threads), "2", 1, 256,
     "worker threads (default 2)"},
    {"users", 0, "N", LG_CLI__U64, F(users), NULL, 1, UINT64_MAX,
     "distinct users: request i uses user\n"
     "\"<user-prefix>-<i % N>\" (default: one per request)"},
    {"user-prefix", 0, "P", LG_CLI__NAME, F(prefix_arg), NULL, 0, 0,
     "default \"u<pid>-<unix time>\", so runs do not collide"},
    {"coupon", 0, "ID", LG_CLI__NAME, F(coupon), "hot", 0, 0,
     "the coupon to claim (default \"hot\")"},
    {"coupons", 0, "N", LG_CLI__U64, F(coupons), NULL, 1, 1000000,
     "spread over N coupons \"<ID>-0\" .. \"<ID>-<N-1>\",\n"
     "round robin"},
    {"create-stock", 0, "N", LG_CLI__LLONG, F(create_stock), NULL, 0, INT_MAX,
     "first create the coupon(s) with stock N via\n"
     "POST /coupons (needs --admin-token; 409 is fine)"},
    {"create-buckets", 0, "B", LG_CLI__LONG, F(create_buckets), NULL, 1, 1024,
     "... split into B stock buckets (\"buckets\": B in\n"
     "the creation body; a service without buckets\n"
     "ignores it)"},
    {"admin-token", 0, "T", LG_CLI__STR, F(admin_token), NULL, 0, 0,
     "admin token (default: env COUPON_ADMIN_TOKEN)"},
    {"method", 0, "M", LG_CLI__STR, F(method), NULL, 0, 0,
     "raw mode: send M requests without a body ..."},
    {"path", 0, "P", LG_CLI__STR, F(path), NULL, 0, 0,
     "... to URL/P (e.g. --method GET --path /healthz);\n"
     "either one selects raw mode (defaults GET and /);\n"
     "--verify-dsn is not allowed then"},
    {"timeout-ms", 0, "MS", LG_CLI__LONG, F(timeout_ms), "10000", 1, 3600000,
     "per request timeout, connect included (default 10000)"},
    {"cacert", 0, "FILE", LG_CLI__FILE, F(cacert), NULL, 0, 0,
     "https:// URLs: trust the CA certificates in FILE\n"
     "(PEM) instead of the system's"},
    {"json", 0, "FILE", LG_CLI__STR, F(json_path), NULL, 0, 0,
     "write a machine-readable summary"},
    {"csv", 0, "FILE", LG_CLI__STR, F(csv_path), NULL, 0, 0,
     "write one row per second: second,requests,ok_2xx,\n"
     "status_4xx,status_5xx,errors,p50_ms,p90_ms,p99_ms,max_ms"},
    {"verify-dsn", 0, "DSN", LG_CLI__STR, F(verify_dsn), NULL, 0, 0,
     "after the run, check the database: oversell, duplicate\n"
     "users, rows vs counter, a row for every 201, fences\n"
     "increasing in commit order"},
    {"verify-only", 0, NULL, LG_CLI__FLAG, F(verify_only), NULL, 0, 0,
     "send nothing: only verify the --coupon/--coupons\n"
     "in --verify-dsn (e.g. after a load from another\n"
     "tool); the 201 check then has nothing to check"},
    {"quiet", 'q', NULL, LG_CLI__FLAG, F(quiet), NULL, 0, 0,
     "no progress line (shown only when stderr is a TTY)"},
    {"help", 'h', NULL, LG_CLI__HELP, 0, NULL, 0, 0, "this text"},
};

#undef F

#define LG_CLI__NOPTS (sizeof lg_cli__opts / sizeof lg_cli__opts[0])

/* ------------------------------------------------------------ the help --- */

/* Prints the help: a fixed head and tail around the table's rows, each row
 * "  -x, --name METAVAR" in 23 columns, then its help, whose later lines
 * are indented to the same column. */
static void lg_cli__usage(FILE *out) {
    fputs("usage: loadgen [options]\n"
          "\n"
          "Send claim requests (POST URL/claim) to couponsvc, closed or open "
          "loop, and\n"
          "report status counts and latency; optionally verify PostgreSQL "
          "afterwards.\n"
          "\n",
          out);
    for (size_t i = 0; i < LG_CLI__NOPTS; i++) {
        const lg_cli__opt_t *o = &lg_cli__opts[i];
        char head[64];
        int n =
            o->shortopt ? snprintf(head, sizeof head, "-%c, ", o->shortopt) : 0;
        snprintf(head + n, sizeof head - (size_t)n, "--%s%s%s", o->name,
                 o->metavar ? " " : "", o->metavar ? o->metavar : "");
        fprintf(out, "  %-22s ", head);
        for (const char *h = o->help; *h; h++) {
            fputc(*h, out);
            if (*h == '\n') {
                fprintf(out, "%25s", "");
            }
        }
        fputc('\n', out);
    }
    fputs("\n"
          "Ctrl-C stops sending and waits for requests in flight; a second "
          "one abandons\n"
          "them. Exit status: 0 ok, 1 could not run (or no HTTP response at "
          "all),\n"
          "2 usage error, 3 verification failed.\n",
          out);
}

static void lg_cli__error(const char *fmt, ...)
    __attribute__((format(printf, 1, 2), noreturn));

/* Print "loadgen: <message>" and the pointer to --help; exit 2. */
static void lg_cli__error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    lg_vexit(LG_EXIT_USAGE, "\n(loadgen --help lists the options)\n", fmt, ap);
}

/* ---------------------------------------------------------- the values --- */

static uint64_t lg_cli__u64(const lg_cli__opt_t *o, const char *s) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || *s == '-' || v < o->min || v > o->max) {
        lg_cli__error("--%s: expected an integer from %" PRIu64 " to %" PRIu64
                      ", got \"%s\"",
                      o->name, o->min, o->max, s);
    }
    return v;
}

static double lg_cli__posnum(const lg_cli__opt_t *o, const char *s) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v > 0) || !isfinite(v)) {
        lg_cli__error("--%s: expected a positive number, got \"%s\"", o->name,
                      s);
    }
    return v;
}

/* Checks v (borrowed: the field keeps pointing into it) as o's kind says
 * and stores it in lg_cfg; exits 2 if it does not fit. */
static void lg_cli__set(const lg_cli__opt_t *o, const char *v) {
    char *field = (char *)&lg_cfg + o->off;
    switch (o->kind) {
    case LG_CLI__NAME:
        if (!*v || strlen(v) > LG_NAME_MAX) {
            lg_cli__error("--%s: expected 1 to %d characters", o->name,
                          LG_NAME_MAX);
        }
        *(const char **)(void *)field = v;
        break;
    case LG_CLI__FILE:
        if (access(v, R_OK) != 0) {
            lg_cli__error("--%s %s: %s", o->name, v, strerror(errno));
        }
        *(const char **)(void *)field = v;
        break;
    case LG_CLI__STR:
        *(const char **)(void *)field = v;
        break;
    case LG_CLI__INT:
        *(int *)(void *)field = (int)lg_cli__u64(o, v);
        break;
    case LG_CLI__LONG:
        *(long *)(void *)field = (long)lg_cli__u64(o, v);
        break;
    case LG_CLI__LLONG:
        *(long long *)(void *)field = (long long)lg_cli__u64(o, v);
        break;
    case LG_CLI__U64:
        *(uint64_t *)(void *)field = lg_cli__u64(o, v);
        break;
    case LG_CLI__POSNUM:
        *(double *)(void *)field = lg_cli__posnum(o, v);
        break;
    case LG_CLI__FLAG:
        *(bool *)(void *)field = true;
        break;
    case LG_CLI__HELP:
        lg_cli__usage(stdout);
        exit(LG_EXIT_OK);
    }
}

/* The table's own invariants, checked once (they hold for any command
 * line): an integer kind's range is not empty and fits its field, and a
 * default is named in the help, so the text cannot drift from it. */
static bool lg_cli__opt_ok(const lg_cli__opt_t *o) {
    bool integer = o->kind == LG_CLI__INT || o->kind == LG_CLI__LONG ||
                   o->kind == LG_CLI__LLONG || o->kind == LG_CLI__U64;
    if (integer && (o->min > o->max ||
                    (o->kind == LG_CLI__INT && o->max > (uint64_t)INT_MAX))) {
        return false;
    }
    if ((o->metavar == NULL) !=
        (o->kind == LG_CLI__FLAG || o->kind == LG_CLI__HELP)) {
        return false;
    }
    return o->def == NULL || strstr(o->help, o->def) != NULL;
}

/* ------------------------------------------------------ the whole line --- */

/* The getopt_long tables of lg_cli__opts: longs (LG_CLI__NOPTS + 1 rows,
 * the last all zero) and the short option string. An option's val is its
 * row's index + 256, so no short letter is mistaken for it. */
static void lg_cli__getopt_tables(struct option *longs, char *shorts) {
    char *s = shorts;
    for (size_t i = 0; i < LG_CLI__NOPTS; i++) {
        const lg_cli__opt_t *o = &lg_cli__opts[i];
        assert(lg_cli__opt_ok(o));
        longs[i] = (struct option){o->name,
                                   o->metavar ? required_argument : no_argument,
                                   NULL, (int)i + 256};
        if (o->shortopt) {
            *s++ = o->shortopt;
            if (o->metavar) {
                *s++ = ':';
            }
        }
    }
    longs[LG_CLI__NOPTS] = (struct option){0};
    *s = '\0';
}

/* The row of a getopt_long result: a long option's val, or a short one. */
static const lg_cli__opt_t *lg_cli__row(int ch) {
    if (ch >= 256 && (size_t)(ch - 256) < LG_CLI__NOPTS) {
        return &lg_cli__opts[ch - 256];
    }
    for (size_t i = 0; i < LG_CLI__NOPTS; i++) {
        if (ch != 0 && lg_cli__opts[i].shortopt == ch) {
            return &lg_cli__opts[i];
        }
    }
    return NULL; /* '?': getopt_long has said what was wrong */
}

/* What involves more than one option, and what is derived from them. */
static void lg_cli__check(void) {
    lg_cfg.url = lg_strdup(lg_cfg.url_arg);
    if (str_trim_end(lg_cfg.url, "/") == 0) {
        lg_cli__error("--url: empty");
    }
    lg_cfg.raw = lg_cfg.method || lg_cfg.path;
    if (lg_cfg.raw) {
        if (!lg_cfg.method) {
            lg_cfg.method = "GET";
        }
        if (!lg_cfg.path) {
            lg_cfg.path = "/";
        }
        if (!*lg_cfg.method || strpbrk(lg_cfg.method, " \t\r\n")) {
            lg_cli__error("--method: expected a single word");
        }
        if (lg_cfg.verify_dsn) {
            lg_cli__error(
                "--verify-dsn needs claim requests, not --method/--path");
        }
    }
    if (lg_cfg.verify_only &&
        (!lg_cfg.verify_dsn || lg_cfg.create_stock >= 0)) {
        lg_cli__error("--verify-only needs --verify-dsn (and the --coupon/"
                      "--coupons of the run), and sends nothing");
    }
    if (!lg_cfg.admin_token) {
        lg_cfg.admin_token = getenv("COUPON_ADMIN_TOKEN");
    }
    if (lg_cfg.create_buckets > 0 && lg_cfg.create_stock < 0) {
        lg_cli__error("--create-buckets needs --create-stock");
    }
    if (lg_cfg.create_stock >= 0 &&
        (!lg_cfg.admin_token || !*lg_cfg.admin_token)) {
        lg_cli__error(
            "--create-stock needs --admin-token or COUPON_ADMIN_TOKEN");
    }
    if (lg_cfg.threads > lg_cfg.connections) {
        lg_cfg.threads = lg_cfg.connections;
    }
    lg_cfg.user_prefix =
        lg_cfg.prefix_arg
            ? lg_strdup(lg_cfg.prefix_arg)
            : lg_sprintf("u%ld-%lld", (long)getpid(), (long long)time(NULL));
}

void lg_cli_parse(int argc, char **argv) {
    struct option longs[LG_CLI__NOPTS + 1];
    char shorts[2 * LG_CLI__NOPTS + 1];
    lg_cli__getopt_tables(longs, shorts);
    for (size_t i = 0; i < LG_CLI__NOPTS; i++) {
        if (lg_cli__opts[i].def != NULL) {
            lg_cli__set(&lg_cli__opts[i], lg_cli__opts[i].def);
        }
    }
    int ch;
    while ((ch = getopt_long(argc, argv, shorts, longs, NULL)) != -1) {
        const lg_cli__opt_t *o = lg_cli__row(ch);
        if (o == NULL) {
            lg_cli__error("bad option");
        }
        lg_cli__set(o, optarg);
    }
    if (optind < argc) {
        lg_cli__error("unexpected argument \"%s\"", argv[optind]);
    }
    lg_cli__check();
}

void lg_cli_free(void) {
    free(lg_cfg.url);
    free(lg_cfg.user_prefix);
    lg_cfg.url = lg_cfg.user_prefix = NULL;
}
