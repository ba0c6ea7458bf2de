/*
 * loadgen.h: what the load generator's files share.
 *
 * loadgen.c runs the load (workers, connections, main); lg_hist.c keeps
 * the latency histogram; lg_cli.c turns the command line into lg_cfg
 * through one table of options; lg_report.c checks the database afterwards
 * (through lg_verify.c) and prints the summary, the JSON and the CSV. The names
 * here are the ones those files use of each other; everything else stays static
 * in its file.
 *
 * Thread safety: lg_cfg is written by lg_cli_parse before any worker starts
 * and only read afterwards; the helpers keep no state.
 */
#ifndef COUPONSVC_LOADGEN_H
#define COUPONSVC_LOADGEN_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <curl/curl.h>

/* Exit statuses: the command line's contract with scripts and tests. */
#define LG_EXIT_OK 0     /* the run (and its verification) went fine */
#define LG_EXIT_ERROR 1  /* could not run, or no HTTP response at all */
#define LG_EXIT_USAGE 2  /* a bad command line */
#define LG_EXIT_VERIFY 3 /* verification ran and found a violation */

#define LG_NAME_MAX 128   /* longest --coupon / --user-prefix accepted */
#define LG_STATUS_MAX 600 /* statuses counted: 100..599, [0] out of range */

/* Everything the command line sets (lg_cli.c's table says which option sets
 * which field). Written by lg_cli_parse before any thread starts and only
 * read afterwards. */
typedef struct lg_config {
    const char *url_arg;     /* --url as given */
    char *url;               /* owned: --url without a trailing slash */
    int connections;         /* closed loop: connections; open loop: cap */
    double rate;             /* open loop: requests/s in total; 0 = closed */
    double duration;         /* seconds of sending */
    uint64_t requests;       /* stop after this many; 0 = no limit */
    int threads;             /* worker threads */
    uint64_t users;          /* distinct users; 0 = one per request */
    const char *prefix_arg;  /* --user-prefix as given; NULL = none */
    char *user_prefix;       /* owned: users are "<prefix>-<n>" */
    const char *coupon;      /* coupon ID, or the stem with --coupons */
    uint64_t coupons;        /* 0 = just `coupon`; else "<coupon>-<k>" */
    long long create_stock;  /* -1 = do not create coupons */
    long create_buckets;     /* --create-buckets B: "buckets" in the
                                creation body; 0 = leave it out */
    const char *admin_token; /* for --create-stock; NULL = none */
    const char *method;      /* raw mode: HTTP method */
    const char *path;        /* raw mode: request path */
    bool raw;                /* --method/--path given: no claim body */
    bool head;               /* raw mode with HEAD: responses have no body */
    long timeout_ms;         /* per request, connect included */
    const char *cacert;      /* --cacert FILE for https://; NULL = system */
    const char *json_path;   /* --json FILE; NULL = none */
    const char *csv_path;    /* --csv FILE; NULL = none */
    const char *verify_dsn;  /* --verify-dsn DSN; NULL = no verification */
    bool quiet;              /* no progress line, no create-stock note */
    bool verify_only;        /* --verify-only: send nothing, just verify */
} lg_config_t;

extern lg_config_t lg_cfg;

/* ------------------------------------------------------------ lg_cli.c --- */

/* Fills lg_cfg from argv (borrowed: lg_cfg keeps pointers into it). Prints
 * the help and exits 0 for --help; prints why and exits LG_EXIT_USAGE for a
 * bad command line. */
void lg_cli_parse(int argc, char **argv);

/* Frees what lg_cli_parse allocated in lg_cfg. */
void lg_cli_free(void);

/* ----------------------------------------------------------- loadgen.c --- */

/* Prints "loadgen: ", the message and tail to stderr; exits with code. */
void lg_vexit(int code, const char *tail, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0), noreturn));

/* Helpers that never fail: on failure they print why and exit 1. */
void lg_die(const char *fmt, ...)
    __attribute__((format(printf, 1, 2), noreturn));
void *lg_calloc(size_t n, size_t size); /* new, zeroed */
char *lg_strdup(const char *s);         /* new */
char *lg_sprintf(const char *fmt, ...)  /* new */
    __attribute__((format(printf, 1, 2)));
/* Returns a new string: s escaped for the inside of a JSON string. */
char *lg_json_escape(const char *s);

/* The run's names: coupon k (k < lg_coupon_count()) into buf, unescaped;
 * the user number of request seq. */
void lg_coupon_name(char *buf, size_t cap, uint64_t k);
uint64_t lg_coupon_count(void);
uint64_t lg_user_no(uint64_t seq);

/* What a status means in this run ("claimed", "sold_out", ...). */
const char *lg_status_label(long st);

/* A growable array of request numbers. */
typedef struct lg_u64vec {
    uint64_t *v; /* the elements, owned */
    size_t n;    /* elements in use */
    size_t cap;  /* elements allocated */
} lg_u64vec_t;

/* After the run: the numbers of the requests worker t (< lg_cfg.threads)
 * saw answered 201 (held = false) or 200 (held = true). Borrowed. */
const lg_u64vec_t *lg_worker_answers(int t, bool held);

/* What the workers counted over the whole run, merged. */
typedef struct lg_stats {
    uint64_t requests;              /* responses + transport errors */
    uint64_t errors;                /* transport errors (no HTTP status) */
    uint64_t status[LG_STATUS_MAX]; /* responses by status */
    uint64_t c2xx, c4xx, c5xx;      /* responses by class */
    uint64_t err_kind[CURL_LAST];   /* transport errors by libcurl code */
    struct lg_hist *lat;            /* latency of every response, owned */
} lg_stats_t;

/* One CSV row. While fewer than all workers have reported the second, lat
 * accumulates their histograms; the last one to report turns it into the
 * percentiles and frees it (lg__secrow_close in loadgen.c). */
typedef struct lg_secrow {
    uint64_t requests, c2xx, c4xx, c5xx, errors; /* summed over workers */
    struct lg_hist *lat;       /* merged latency, NULL once closed */
    int reported;              /* workers that have merged this second */
    double p50, p90, p99, max; /* milliseconds, valid once closed */
} lg_secrow_t;

/* Everything the summary, --json and --csv print, gathered after the run. */
typedef struct lg_result {
    const char *target; /* the URL every request went to (borrowed) */
    lg_stats_t total;   /* all workers merged */
    double duration_s;  /* start to the last worker's end */
    double rate;        /* requests / duration_s */
    uint64_t sent_late; /* open loop */
    uint64_t unsent;    /* open loop: due before the end, never sent */
    bool interrupted;   /* stopped by a signal */
    long sample_status; /* an unexpected response, 0 = none */
    const char *sample; /* its body (borrowed from a worker) */
    double p50, p90, p99, p999, max; /* milliseconds */
    const lg_secrow_t *secs;         /* the CSV rows, closed (borrowed) */
    size_t nsecs;
} lg_result_t;

#endif
