/*
 * ready.c: see ready.h.
 *
 * One thread, one round a second: ping the lock backend (Redis or etcd,
 * lock mode only) and SELECT 1 on PostgreSQL, each on the thread's own
 * connection, then store both results at once. The round runs without the
 * mutex; only the store takes it, so ready_get never waits for a backend.
 */
#include "ready.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "lock.h"
#include "log.h"
#include "metrics.h"
#include "mono.h"
#include "store.h"

#define READY__PERIOD_MS 1000

static struct {
    pthread_mutex_t mu;   /* guards state and stop */
    pthread_cond_t wake;  /* signals stop */
    pthread_cond_t first; /* the first round has ended */
    ready_state_t state;  /* the last finished round, plus draining */
    int stop;             /* set by ready_stop */
    int running;          /* the thread was started */
    pthread_t thread;
    const cfg_t *cfg;
    lock_client_t *redis; /* the probe's own connections */
    store_t *store;
} ready__g = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* The lock backend's slot is named after the store that holds the locks:
 * "etcd" with the etcd backend, "redis" with every Redis topology (one
 * node, Sentinel, Redlock). */
const char *ready_backend_name(ready_backend_t b) {
    if (b != READY_REDIS) {
        return "postgres";
    }
    return strcmp(lock_backend_name(), "etcd") == 0 ? "etcd" : "redis";
}

/* ---------------------------------------------------------- the checks --- */

static void ready__check_redis(ready_backend_state_t *b) {
    if (lock_ping(ready__g.redis) == LOCK_OK) {
        b->health = READY_UP;
        return;
    }
    lock_errkind_t kind = lock_errkind(ready__g.redis);
    b->health =
        kind == LOCK_EAUTH || kind == LOCK_EPERM ? READY_REFUSED : READY_DOWN;
    /* The lock backend may be etcd: the same slot, its own words. */
    int etcd = strcmp(lock_backend_name(), "etcd") == 0;
    snprintf(b->detail, sizeof(b->detail), "%s%s",
             kind == LOCK_EAUTH && etcd
                 ? "etcd refused this instance's credentials "
                   "(COUPON_ETCD_USERNAME/PASSWORD): "
             : kind == LOCK_EPERM && etcd
                 ? "etcd's role denies this instance's user a key it needs "
                   "(COUPON_ETCD_PREFIX): "
             : kind == LOCK_EAUTH ? "Redis refused this instance's "
                                    "credentials (COUPON_REDIS_USERNAME/"
                                    "PASSWORD): "
             : kind == LOCK_EPERM ? "Redis's ACL denies this instance's user "
                                    "a command it needs: "
                                  : "",
             lock_errstr(ready__g.redis));
}

static void ready__check_pg(ready_backend_state_t *b) {
    int rc = store_probe(ready__g.store);
    if (rc == STORE_OK) {
        b->health = READY_UP;
        return;
    }
    b->health = rc == STORE_EREFUSED ? READY_REFUSED : READY_DOWN;
    snprintf(b->detail, sizeof(b->detail), "%s%s",
             rc == STORE_EREFUSED ? "PostgreSQL refused this instance's login "
                                    "(COUPON_PG_DSN): "
                                  : "",
             store_errstr(ready__g.store));
}

static void ready__round(void) {
    ready_backend_state_t got[READY__NBACKENDS];
    memset(got, 0, sizeof(got));
    got[READY_REDIS].used = ready__g.cfg->mode == CLAIM_MODE_LOCK;
    got[READY_POSTGRES].used = 1;
    if (got[READY_REDIS].used) {
        ready__check_redis(&got[READY_REDIS]);
        got[READY_REDIS].checked_ns = mono_ns();
    }
    ready__check_pg(&got[READY_POSTGRES]);
    got[READY_POSTGRES].checked_ns = mono_ns();

    pthread_mutex_lock(&ready__g.mu);
    for (int i = 0; i < READY__NBACKENDS; i++) {
        ready_backend_state_t *was = &ready__g.state.backend[i];
        if (got[i].used && got[i].health != was->health) {
            log_info("ready.backend", "backend=%s up=%d detail=\"%s\"",
                     ready_backend_name((ready_backend_t)i),
                     got[i].health == READY_UP, got[i].detail);
        }
        *was = got[i];
        if (got[i].used) {
            metrics_set_backend((metrics_backend_t)i, got[i].health == READY_UP,
                                got[i].checked_ns);
        }
    }
    ready__g.state.started = 1;
    pthread_cond_broadcast(&ready__g.first); /* ready_start may wait */
    pthread_mutex_unlock(&ready__g.mu);
}

static void *ready__main(void *arg) {
    (void)arg;
    pthread_mutex_lock(&ready__g.mu);
    while (!ready__g.stop) {
        pthread_mutex_unlock(&ready__g.mu);
        ready__round();
        int64_t next = mono_ns() + READY__PERIOD_MS * MONO_MS;
        struct timespec ts = mono_ts_from_ns(next);
        pthread_mutex_lock(&ready__g.mu);
        while (!ready__g.stop &&
               pthread_cond_timedwait(&ready__g.wake, &ready__g.mu, &ts) !=
                   ETIMEDOUT) {
        }
    }
    pthread_mutex_unlock(&ready__g.mu);
    return NULL;
}

/* -------------------------------------------------------- start / stop --- */

int ready_start(const cfg_t *cfg) {
    ready__g.cfg = cfg;
    store_opts_t so;
    store_opts_from_cfg(&so, cfg);
    ready__g.store = store_new(&so);
    ready__g.redis = lock_client_new(cfg);

    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&ready__g.wake, &ca);
    pthread_cond_init(&ready__g.first, &ca);
    pthread_condattr_destroy(&ca);

    if (ready__g.store == NULL || ready__g.redis == NULL ||
        pthread_create(&ready__g.thread, NULL, ready__main, NULL) != 0) {
        log_error("ready.start", "cannot start the readiness probe");
        return -1;
    }
    ready__g.running = 1;

    /* Wait for the first round, so that /readyz has something to say as
     * soon as HTTP is up; but no longer than a round takes when both
     * backends time out (then /readyz says "starting" until it ends). */
    int64_t until =
        mono_ns() + ((int64_t)cfg->redis_timeout_ms +
                     (int64_t)cfg->pg_connect_timeout_s * 1000 + 1000) *
                        MONO_MS;
    struct timespec ts = mono_ts_from_ns(until);
    pthread_mutex_lock(&ready__g.mu);
    while (!ready__g.state.started &&
           pthread_cond_timedwait(&ready__g.first, &ready__g.mu, &ts) !=
               ETIMEDOUT) {
    }
    pthread_mutex_unlock(&ready__g.mu);
    return 0;
}

void ready_stop(void) {
    if (ready__g.running) {
        pthread_mutex_lock(&ready__g.mu);
        ready__g.stop = 1;
        pthread_cond_signal(&ready__g.wake);
        pthread_mutex_unlock(&ready__g.mu);
        pthread_join(ready__g.thread, NULL);
        ready__g.running = 0;
    }
    lock_client_free(ready__g.redis);
    store_free(ready__g.store);
    ready__g.redis = NULL;
    ready__g.store = NULL;
}

/* ----------------------------------------------------------- the state --- */

void ready_set_draining(void) {
    pthread_mutex_lock(&ready__g.mu);
    ready__g.state.draining = 1;
    pthread_mutex_unlock(&ready__g.mu);
}

void ready_get(ready_state_t *out) {
    pthread_mutex_lock(&ready__g.mu);
    *out = ready__g.state;
    pthread_mutex_unlock(&ready__g.mu);
}

int ready_decide(const ready_state_t *s, char *why, size_t len) {
    if (s->draining) {
        snprintf(why, len, "draining: this instance is shutting down");
        return 0;
    }
    if (!s->started) {
        snprintf(why, len,
                 "starting: the first backend checks have not "
                 "finished");
        return 0;
    }
    for (int i = 0; i < READY__NBACKENDS; i++) {
        if (s->backend[i].used && s->backend[i].health == READY_REFUSED) {
            snprintf(why, len, "%s", s->backend[i].detail);
            return 0;
        }
    }
    return 1;
}
