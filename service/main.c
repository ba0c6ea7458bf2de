/*
 * main.c: couponsvc's entry point.
 *
 *   couponsvc [serve]   serve HTTP until SIGTERM or SIGINT
 *   couponsvc migrate   apply the embedded migrations and exit
 *
 * Signals: every thread is created with SIGTERM, SIGINT and SIGPIPE blocked;
 * the main thread alone waits for SIGTERM/SIGINT with sigwait, so shutdown
 * runs as ordinary code, not in a signal handler. SIGPIPE stays blocked: a
 * peer that hangs up shows up as an error return from write, which every
 * library here handles.
 *
 * Shutdown order matters: stop taking requests, let the ones in flight
 * finish (each releases its own lock), and only then stop the watchdog,
 * which must keep renewing the leases of those in-flight claims to the end.
 */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "api.h"
#include "cfg.h"
#include "claim.h"
#include "fault.h"
#include "http.h"
#include "lock.h"
#include "log.h"
#include "ready.h"
#include "store.h"

static int main__migrate(const cfg_t *cfg) {
    store_opts_t so;
    store_opts_from_cfg(&so, cfg);
    char err[512];
    int n = store_migrate(&so, err, sizeof(err));
    if (n < 0) {
        log_error("migrate.failed", "err=\"%s\"", err);
        return 1;
    }
    log_info("migrate.done", "applied=%d known=%zu", n, store_migrations_count);
    return 0;
}

/* The connection limit needs as many file descriptors, plus the backends'. */
static void main__raise_nofile(uint32_t want) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
        return;
    }
    rlim_t need = (rlim_t)want + 256;
    if (rl.rlim_cur < need) {
        rl.rlim_cur = need < rl.rlim_max ? need : rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur < need) {
        log_warn("start.nofile",
                 "file descriptor limit %llu is below COUPON_MAX_CONNECTIONS "
                 "+ 256; raise ulimit -n",
                 (unsigned long long)rl.rlim_cur);
    }
}

/* The loud lines of a binary that is not safe to serve real claims: fault
 * injection on, or the naive mode. */
static void main__warn_unsafe(const cfg_t *cfg) {
    if (fault_any()) {
        /* Three times, on purpose: among a dozen start-up lines one line is
         * easy to scroll past, and a binary that pauses claims by design
         * must not pass for a normal one. */
        for (int i = 0; i < 3; i++) {
            log_warn("FAULT.INJECTION.ON",
                     "COUPON_FAULT=\"%s\": claims will pause on purpose "
                     "(after_acquire=%u ms after_check=%u ms "
                     "before_commit=%u ms after_commit=%u ms). NEVER set "
                     "this in production.",
                     cfg->fault, fault_ms(FAULT_AFTER_ACQUIRE),
                     fault_ms(FAULT_AFTER_CHECK), fault_ms(FAULT_BEFORE_COMMIT),
                     fault_ms(FAULT_AFTER_COMMIT));
        }
    }
    if (cfg->mode == CLAIM_MODE_NAIVE) {
        log_warn("MODE.NAIVE",
                 "COUPON_CLAIM_MODE=naive: claims are NOT protected and WILL "
                 "oversell under concurrency. For demonstrations only.");
    }
}

static int main__serve(const cfg_t *cfg) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &set, NULL);

    main__raise_nofile(cfg->max_connections);

    main__warn_unsafe(cfg);

    api_init(cfg);
    char err[512];
    if (lock_init(cfg, err, sizeof(err)) != 0) {
        log_error("start.lock", "err=\"%s\"", err);
        fprintf(stderr, "couponsvc: %s\n", err);
        return 1;
    }
    if (claim_init(cfg) != 0) {
        lock_shutdown();
        return 1;
    }
    if (ready_start(cfg) != 0) {
        ready_stop();
        claim_shutdown();
        lock_shutdown();
        return 1;
    }
    http_t *h = http_start(cfg);
    if (h == NULL) {
        ready_stop();
        claim_shutdown();
        lock_shutdown();
        return 1;
    }
    /* Behind Sentinel the master the sentinels name, not the unused
     * COUPON_REDIS_ADDRS entry. */
    char where[1200];
    lock_describe(where, sizeof(where));
    log_info("start",
             "listen=%s:%u mode=%s lock=%s %s lock_ttl_ms=%u "
             "lock_wait_ms=%u watchdog_period_ms=%u threads=%u "
             "max_connections=%u",
             cfg->http.host, cfg->http.port, cfg_mode_name(cfg->mode),
             lock_backend_name(), where, cfg->lock_ttl_ms, cfg->lock_wait_ms,
             cfg->watchdog_period_ms, cfg->threads, cfg->max_connections);

    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    int sig = 0;
    sigwait(&stop, &sig);

    log_info("stop.begin", "signal=%s grace_ms=%u",
             sig == SIGTERM ? "SIGTERM" : "SIGINT", cfg->shutdown_grace_ms);
    http_stop(h, cfg->shutdown_grace_ms);
    ready_stop();
    claim_shutdown();
    lock_shutdown();
    log_info("stop.done", "bye");
    return 0;
}

int main(int argc, char **argv) {
    cfg_t cfg;
    int rc = cfg_load(&cfg, argc, argv);
    if (rc == CFG_HELP) {
        cfg_usage(stdout);
        cfg_free(&cfg);
        return 0;
    }
    if (rc == CFG_VERSION) {
        puts("couponsvc " COUPONSVC_VERSION_STRING);
        cfg_free(&cfg);
        return 0;
    }
    if (rc != CFG_OK) {
        fprintf(stderr, "couponsvc: %s\n(see couponsvc --help)\n", cfg.errstr);
        cfg_free(&cfg);
        return 2;
    }
    log_init(cfg.instance_id, cfg.log_level);
    log_set_format(cfg.log_json ? LOG_FORMAT_JSON : LOG_FORMAT_TEXT);

    char err[256];
    if (fault_parse(cfg.fault, err, sizeof(err)) != 0) {
        fprintf(stderr, "couponsvc: %s\n", err);
        cfg_free(&cfg);
        return 2;
    }

    int status = strcmp(cfg.command, "migrate") == 0 ? main__migrate(&cfg)
                                                     : main__serve(&cfg);
    cfg_free(&cfg);
    return status;
}
