/*
 * lock_sentinel.c: see lock_sentinel.h.
 */
#include "lock_sentinel.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lock_backend.h"
#include "log.h"
#include "mono.h"

/* The master last reported, to log a change once (not on every connect),
 * and for lock_sentinel_last. */
static pthread_mutex_t lock_sentinel__mu = PTHREAD_MUTEX_INITIALIZER;
static cfg_addr_t lock_sentinel__last;
static cfg_addr_t lock_sentinel__last_from; /* the sentinel that named it */

/* The sentinel that answered last: the next question starts there. */
static atomic_int lock_sentinel__first;

/* The process's configuration (lock_sentinel_init), NULL before. */
static const cfg_t *lock_sentinel__cfg;

int lock_sentinel_configured(const cfg_t *cfg) {
    return cfg->nsentinels > 0;
}

void lock_sentinel_log_config(const cfg_t *cfg) {
    if (!lock_sentinel_configured(cfg)) {
        return;
    }
    char list[512];
    size_t used = 0;
    list[0] = '\0';
    for (int i = 0; i < cfg->nsentinels && used < sizeof(list); i++) {
        int n = snprintf(list + used, sizeof(list) - used, "%s%s:%u",
                         i > 0 ? "," : "", cfg->sentinels[i].host,
                         cfg->sentinels[i].port);
        if (n < 0) {
            break;
        }
        used += (size_t)n;
    }
    log_info("sentinel.config", "master_name=%s sentinels=%s auth=%s",
             cfg->redis_master_name, list,
             cfg->redis_sentinel_password[0] != '\0' ? "password" : "none");
    if (cfg->redis_addrs_given) {
        log_warn("sentinel.overrides_addrs",
                 "msg=\"COUPON_REDIS_SENTINELS is set: the master comes from "
                 "the sentinels, COUPON_REDIS_ADDRS (%s:%u%s) is ignored\"",
                 cfg->redis[0].host, cfg->redis[0].port,
                 cfg->nredis > 1 ? ",..." : "");
    }
}

/* Milliseconds left until deadline_ns, at least 1 (hiredis reads a zero
 * timeout as "none"). */
static long lock_sentinel__left_ms(int64_t deadline_ns) {
    int64_t left = (deadline_ns - mono_ns()) / MONO_MS;
    return left < 1 ? 1 : (long)left;
}

/* hiredis's text for a context error; a blocking call that ran out of time
 * says EAGAIN's "Resource temporarily unavailable", which hides what it
 * was. */
static const char *lock_sentinel__ctx_err(const redisContext *c) {
    if (c->err == REDIS_ERR_IO && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        return "timed out";
    }
    return c->errstr;
}

/* What lock_sentinel__ask says besides 0 (*out filled). */
enum {
    LOCK_SENTINEL__UNREACHED = -1, /* no connection, or it timed out */
    LOCK_SENTINEL__NO = -2,        /* it answered, but no address */
    LOCK_SENTINEL__AUTH = -3,      /* it refused our password */
};

/* The answer of sentinel s (on c) to get-master-addr-by-name, r (NULL: none
 * came): 0 and *out filled, or one of the codes above with why in err. */
static int lock_sentinel__read_master(const cfg_t *cfg, const cfg_addr_t *s,
                                      const redisContext *c,
                                      const redisReply *r, cfg_addr_t *out,
                                      char *err, size_t errlen) {
    int rc = r == NULL ? LOCK_SENTINEL__UNREACHED : LOCK_SENTINEL__NO;
    if (r == NULL) {
        snprintf(err, errlen, "sentinel %s:%u: %s", s->host, s->port,
                 lock_sentinel__ctx_err(c));
    } else if (r->type == REDIS_REPLY_NIL) {
        snprintf(err, errlen, "sentinel %s:%u: no master named \"%s\"", s->host,
                 s->port, cfg->redis_master_name);
    } else if (lock_redis_reply_kind(r) == LOCK_EAUTH) {
        snprintf(err, errlen, "sentinel %s:%u: %s", s->host, s->port, r->str);
        rc = LOCK_SENTINEL__AUTH; /* it wants a password we do not have */
    } else if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
               r->element[0]->type != REDIS_REPLY_STRING ||
               r->element[1]->type != REDIS_REPLY_STRING) {
        snprintf(err, errlen, "sentinel %s:%u: unexpected reply%s%s", s->host,
                 s->port, r->type == REDIS_REPLY_ERROR ? ": " : "",
                 r->type == REDIS_REPLY_ERROR ? r->str : "");
    } else {
        char *end;
        errno = 0;
        unsigned long port = strtoul(r->element[1]->str, &end, 10);
        if (errno != 0 || *end != '\0' || port == 0 || port > 65535 ||
            r->element[0]->len == 0 ||
            r->element[0]->len >= sizeof(out->host)) {
            snprintf(err, errlen, "sentinel %s:%u: bad address in reply",
                     s->host, s->port);
        } else {
            memcpy(out->host, r->element[0]->str, r->element[0]->len);
            out->host[r->element[0]->len] = '\0';
            out->port = (uint16_t)port;
            rc = 0;
        }
    }
    return rc;
}

/* Asks one sentinel, until deadline_ns: 0 and *out filled, or one of the
 * codes above with why in err. */
static int lock_sentinel__ask(const cfg_t *cfg, const cfg_addr_t *s,
                              int64_t deadline_ns, cfg_addr_t *out, char *err,
                              size_t errlen) {
    long ms = lock_sentinel__left_ms(deadline_ns);
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    redisContext *c = redisConnectWithTimeout(s->host, s->port, tv);
    if (c == NULL) {
        snprintf(err, errlen, "sentinel %s:%u: out of memory", s->host,
                 s->port);
        return LOCK_SENTINEL__UNREACHED;
    }
    int rc = LOCK_SENTINEL__UNREACHED;
    redisReply *r = NULL;
    if (c->err != 0 || redisSetTimeout(c, tv) != REDIS_OK) {
        snprintf(err, errlen, "sentinel %s:%u: connect: %s", s->host, s->port,
                 lock_sentinel__ctx_err(c));
        goto out;
    }
    if (cfg->redis_sentinel_password[0] != '\0') {
        const char *argv[2] = {"AUTH", cfg->redis_sentinel_password};
        r = redisCommandArgv(c, 2, argv, NULL);
        if (r == NULL || r->type != REDIS_REPLY_STATUS) {
            /* Sentinel's refusal does not repeat the password. */
            snprintf(err, errlen, "sentinel %s:%u: AUTH: %s", s->host, s->port,
                     r == NULL                      ? lock_sentinel__ctx_err(c)
                     : r->type == REDIS_REPLY_ERROR ? r->str
                                                    : "bad reply");
            rc = r == NULL                      ? LOCK_SENTINEL__UNREACHED
                 : r->type == REDIS_REPLY_ERROR ? LOCK_SENTINEL__AUTH
                                                : LOCK_SENTINEL__NO;
            goto out;
        }
        freeReplyObject(r);
        r = NULL;
    }
    const char *argv[3] = {"SENTINEL", "get-master-addr-by-name",
                           cfg->redis_master_name};
    r = redisCommandArgv(c, 3, argv, NULL);
    rc = lock_sentinel__read_master(cfg, s, c, r, out, err, errlen);
out:
    if (r != NULL) {
        freeReplyObject(r);
    }
    redisFree(c);
    return rc;
}

int lock_sentinel_master(const cfg_t *cfg, cfg_addr_t *out, char *err,
                         size_t errlen) {
    int64_t start = mono_ns();
    int64_t deadline = start + (int64_t)cfg->redis_timeout_ms * MONO_MS;
    char why[192] = "no sentinel configured";
    int n = cfg->nsentinels, first = atomic_load(&lock_sentinel__first);
    int reached = 0, refused = 0;
    for (int k = 0; k < n; k++) {
        int64_t now = mono_ns();
        if (now >= deadline) {
            snprintf(why, sizeof(why), "timed out after %u ms",
                     cfg->redis_timeout_ms);
            break;
        }
        /* Each sentinel left gets an equal share of the time left: one
         * that black-holes costs its share, not the whole question. */
        int64_t until = now + (deadline - now) / (n - k);
        int i = (first + k) % n;
        cfg_addr_t a;
        int rc = lock_sentinel__ask(cfg, &cfg->sentinels[i], until, &a, why,
                                    sizeof(why));
        reached += rc != LOCK_SENTINEL__UNREACHED;
        refused += rc == LOCK_SENTINEL__AUTH;
        if (rc != 0) {
            continue;
        }
        /* Ask the one that answered first next time. */
        atomic_store(&lock_sentinel__first, i);
        pthread_mutex_lock(&lock_sentinel__mu);
        int changed = a.port != lock_sentinel__last.port ||
                      strcmp(a.host, lock_sentinel__last.host) != 0;
        cfg_addr_t was = lock_sentinel__last;
        lock_sentinel__last = a;
        lock_sentinel__last_from = cfg->sentinels[i];
        pthread_mutex_unlock(&lock_sentinel__mu);
        if (changed) {
            log_info("sentinel.master",
                     "master_name=%s addr=%s:%u was=%s:%u from=%s:%u "
                     "asked_ms=%lld",
                     cfg->redis_master_name, a.host, a.port,
                     was.host[0] != '\0' ? was.host : "none", was.port,
                     cfg->sentinels[i].host, cfg->sentinels[i].port,
                     (long long)((mono_ns() - start) / MONO_MS));
        }
        *out = a;
        return LOCK_SENTINEL_OK;
    }
    snprintf(err, errlen, "master \"%s\" unknown: %s", cfg->redis_master_name,
             why);
    /* Every sentinel that could be reached refused our password: that is
     * this instance's credentials, not an outage. */
    return refused > 0 && refused == reached ? LOCK_SENTINEL_EAUTH
                                             : LOCK_SENTINEL_ERR;
}

void lock_sentinel_init(const cfg_t *cfg) {
    lock_sentinel__cfg = cfg;
    lock_sentinel_log_config(cfg);
}

int lock_sentinel_resolve(cfg_addr_t *addr, char *err, size_t errlen) {
    const cfg_t *cfg = lock_sentinel__cfg;
    if (cfg == NULL || !lock_sentinel_configured(cfg)) {
        return LOCK_SENTINEL_NONE;
    }
    return lock_sentinel_master(cfg, addr, err, errlen);
}

int lock_sentinel_last(cfg_addr_t *master, cfg_addr_t *from) {
    pthread_mutex_lock(&lock_sentinel__mu);
    int known = lock_sentinel__last.host[0] != '\0';
    if (known) {
        *master = lock_sentinel__last;
        if (from != NULL) {
            *from = lock_sentinel__last_from;
        }
    }
    pthread_mutex_unlock(&lock_sentinel__mu);
    return known;
}
