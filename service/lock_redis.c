/*
 * lock_redis.c: the lock on one Redis node (lock_redis_backend), and the
 * helpers both Redis backends share (credentials, error classification).
 *
 * Scripts are run with EVALSHA, which sends 40 bytes instead of the script.
 * Their SHA1s are learned with SCRIPT LOAD right after each connect (Redis
 * computes them for us, so no SHA1 code lives here). A NOSCRIPT answer means
 * the server's script cache was emptied (SCRIPT FLUSH, or a restart behind a
 * proxy): the call is repeated once with EVAL, which also caches it again.
 *
 * Every new connection sends AUTH before anything else when a password is
 * configured (lock_init). Error replies are classified once, here, by their
 * error code (the first word of the reply, the protocol's machine-readable
 * part) into a lock_errkind_t; nothing else looks at the text.
 */
#include <errno.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lock_backend.h"
#include "lock_scripts.h"
#include "lock_sentinel.h"
#include "lock_wait.h"
#include "log.h"
#include "metrics.h"
#include "mono.h"

typedef enum lock_redis__script {
    LOCK__ACQUIRE = 0,
    LOCK__EXTEND,
    LOCK__RELEASE,
    LOCK__RAISE,
    LOCK__NSCRIPTS,
} lock_redis__script_t;

static const char *const lock_redis__src[LOCK__NSCRIPTS] = {
    LOCK_SCRIPT_ACQUIRE,
    LOCK_SCRIPT_EXTEND,
    LOCK_SCRIPT_RELEASE,
    LOCK_SCRIPT_RAISE_FENCE,
};

typedef struct lock_redis__client {
    lock_client_t base;      /* first: lock.c's view */
    redisContext *ctx;       /* NULL while disconnected */
    cfg_addr_t addr;         /* where Redis is */
    const char *master_name; /* behind Sentinel: the master's name
                                (the cfg's); NULL otherwise */
    int resolved;        /* behind Sentinel: addr is the master the sentinels
                            named (0 until they answered) */
    uint32_t timeout_ms; /* connect and command timeout */
    char sha[LOCK__NSCRIPTS][41]; /* SHA1s from SCRIPT LOAD on this conn */
    int unanswered;               /* the last failure sent a command and got
                                     no reply: it may have been applied */

    /* A release sent whose reply is not read yet (lock_release). */
    int pending;
    char pend_key[LOCK_KEY_MAX]; /* its lock key, for the logs */
} lock_redis__client_t;

/* ---------------------------------------------- shared by both backends --- */

const char *lock_redis_username = "";
const char *lock_redis_password = "";

int lock_redis_wants_auth(void) {
    return lock_redis_username[0] != '\0' || lock_redis_password[0] != '\0';
}

int lock_redis_auth_argv(const char **argv) {
    int argc = 0;
    argv[argc++] = "AUTH";
    if (lock_redis_username[0] != '\0') {
        argv[argc++] = lock_redis_username;
    }
    argv[argc++] = lock_redis_password;
    return argc;
}

/* The kind of an error reply, from its error code. READONLY (a replica),
 * MASTERDOWN (a replica that lost its primary) and LOADING (a node still
 * reading its data set) say that this node cannot serve us now; they count
 * as connection errors, so the connection is dropped and the next call
 * connects afresh, to whatever node the address leads to by then. */
lock_errkind_t lock_redis_reply_kind(const struct redisReply *r) {
    static const struct {
        const char *code;
        lock_errkind_t kind;
    } codes[] = {
        {"WRONGPASS", LOCK_EAUTH}, {"NOAUTH", LOCK_EAUTH},
        {"NOPERM", LOCK_EPERM},    {"READONLY", LOCK_EIO},
        {"MASTERDOWN", LOCK_EIO},  {"LOADING", LOCK_EIO},
    };
    if (r->type != REDIS_REPLY_ERROR) {
        return LOCK_ENONE;
    }
    size_t len = strcspn(r->str, " ");
    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
        if (strlen(codes[i].code) == len &&
            strncmp(r->str, codes[i].code, len) == 0) {
            return codes[i].kind;
        }
    }
    return LOCK_EPROTO;
}

/* ------------------------------------------------------------ plumbing --- */

static void lock_redis__disconnect(lock_redis__client_t *cl) {
    if (cl->ctx != NULL) {
        redisFree(cl->ctx);
        cl->ctx = NULL;
    }
    /* A release whose reply is lost with the connection either ran or
     * not; if not, the TTL frees the lock. */
    cl->pending = 0;
}

/* Records a failure of the given kind: the connection is dropped, so the
 * next call starts on a fresh one. Always returns LOCK_ERR. */
static int lock_redis__fail(lock_redis__client_t *cl, lock_errkind_t kind,
                            const char *what) {
    cl->base.errkind = kind;
    /* Which Redis: behind Sentinel the master the sentinels named, or
     * "sentinel" alone before they named one (then what names the master
     * and the sentinels asked); never the COUPON_REDIS_ADDRS entry, which
     * is not used. */
    char where[400];
    if (cl->master_name == NULL) {
        snprintf(where, sizeof(where), "redis %s:%u", cl->addr.host,
                 cl->addr.port);
    } else if (cl->resolved) {
        snprintf(where, sizeof(where), "sentinel master %s at %s:%u",
                 cl->master_name, cl->addr.host, cl->addr.port);
    } else {
        snprintf(where, sizeof(where), "sentinel"); /* what says the rest */
    }
    if (cl->ctx != NULL && cl->ctx->err != 0) {
        snprintf(cl->base.errstr, sizeof(cl->base.errstr), "%s: %s: %s", where,
                 what, cl->ctx->errstr);
    } else {
        snprintf(cl->base.errstr, sizeof(cl->base.errstr), "%s: %s", where,
                 what);
    }
    lock_redis__disconnect(cl);
    metrics_inc(M_REDIS_ERRORS);
    return LOCK_ERR;
}

/* Sends AUTH on the fresh connection: "AUTH user pass" for an ACL user (the
 * password may be empty, for a "nopass" user), "AUTH pass" for the default
 * user. The password never appears in errstr;
 * Redis's own refusal (WRONGPASS ...) does not contain it either. */
static int lock_redis__auth(lock_redis__client_t *cl) {
    const char *argv[3] = {"AUTH"};
    int argc = 1;
    if (lock_redis_username[0] != '\0') {
        argv[argc++] = lock_redis_username;
    }
    argv[argc++] = lock_redis_password;
    redisReply *r = redisCommandArgv(cl->ctx, argc, argv, NULL);
    if (r == NULL) {
        return lock_redis__fail(cl, LOCK_EIO, "AUTH");
    }
    int ok = r->type == REDIS_REPLY_STATUS;
    char msg[128];
    lock_errkind_t kind = LOCK_EAUTH;
    if (!ok) {
        /* Any refusal of AUTH is about the credentials, whatever the code
         * (WRONGPASS from Redis 6+, "ERR invalid password" before it). */
        snprintf(msg, sizeof(msg), "AUTH refused (user \"%s\"): %s",
                 lock_redis_username[0] != '\0' ? lock_redis_username
                                                : "default",
                 r->type == REDIS_REPLY_ERROR ? r->str : "bad reply");
        if (lock_redis_reply_kind(r) == LOCK_EIO) {
            kind = LOCK_EIO; /* LOADING: not about us */
        }
    }
    freeReplyObject(r);
    return ok ? LOCK_OK : lock_redis__fail(cl, kind, msg);
}

static int lock_redis__connect(lock_redis__client_t *cl) {
    if (cl->ctx != NULL) {
        return LOCK_OK;
    }
    /* Behind Sentinel, every (re)connect asks where the master is now. */
    char serr[160];
    int src = lock_sentinel_resolve(&cl->addr, serr, sizeof(serr));
    cl->resolved = src == LOCK_SENTINEL_OK;
    if (src == LOCK_SENTINEL_ERR || src == LOCK_SENTINEL_EAUTH) {
        return lock_redis__fail(
            cl, src == LOCK_SENTINEL_EAUTH ? LOCK_EAUTH : LOCK_EIO, serr);
    }
    struct timeval tv = {.tv_sec = cl->timeout_ms / 1000,
                         .tv_usec = (cl->timeout_ms % 1000) * 1000};
    cl->ctx = redisConnectWithTimeout(cl->addr.host, cl->addr.port, tv);
    if (cl->ctx == NULL) {
        return lock_redis__fail(cl, LOCK_ESYS, "connect: out of memory");
    }
    if (cl->ctx->err != 0 || redisSetTimeout(cl->ctx, tv) != REDIS_OK ||
        redisEnableKeepAlive(cl->ctx) != REDIS_OK) {
        return lock_redis__fail(cl, LOCK_EIO, "connect");
    }

    if ((lock_redis_username[0] != '\0' || lock_redis_password[0] != '\0') &&
        lock_redis__auth(cl) != LOCK_OK) {
        return LOCK_ERR;
    }

    for (int i = 0; i < LOCK__NSCRIPTS; i++) {
        redisReply *r =
            redisCommand(cl->ctx, "SCRIPT LOAD %s", lock_redis__src[i]);
        if (r == NULL) {
            return lock_redis__fail(cl, LOCK_EIO, "SCRIPT LOAD");
        }
        int ok = r->type == REDIS_REPLY_STRING && r->len == 40;
        lock_errkind_t kind = ok ? LOCK_ENONE : lock_redis_reply_kind(r);
        char msg[96];
        if (ok) {
            memcpy(cl->sha[i], r->str, 40);
            cl->sha[i][40] = '\0';
        } else {
            snprintf(msg, sizeof(msg), "SCRIPT LOAD: %s",
                     r->type == REDIS_REPLY_ERROR ? r->str : "bad reply");
        }
        freeReplyObject(r);
        if (!ok) {
            return lock_redis__fail(cl, kind == LOCK_ENONE ? LOCK_EPROTO : kind,
                                    msg);
        }
    }
    return LOCK_OK;
}

static int lock_redis__is_noscript(const redisReply *r) {
    return r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOSCRIPT", 8) == 0;
}

/* Builds the argv of EVALSHA (or EVAL when src is set) for script s. */
static int lock_redis__argv(lock_redis__client_t *cl, lock_redis__script_t s,
                            int use_src, const char **keys, int nkeys,
                            const char **args, int nargs, const char **argv,
                            char *nkeys_buf) {
    int argc = 0;
    argv[argc++] = use_src ? "EVAL" : "EVALSHA";
    argv[argc++] = use_src ? lock_redis__src[s] : cl->sha[s];
    snprintf(nkeys_buf, 8, "%d", nkeys);
    argv[argc++] = nkeys_buf;
    for (int i = 0; i < nkeys; i++) {
        argv[argc++] = keys[i];
    }
    for (int i = 0; i < nargs; i++) {
        argv[argc++] = args[i];
    }
    return argc;
}

/* 1 if the last failure says the server had closed or reset the
 * connection (EOF, ECONNRESET, EPIPE), not that it was slow. hiredis 0.14
 * reports every socket error as REDIS_ERR_IO with strerror's text; err_no is
 * errno as the failed call left it (hiredis makes no system call after it),
 * so the kind is read from the number, not the text. */
static int lock_redis__dropped(const redisContext *c, int err_no) {
    return c->err == REDIS_ERR_EOF ||
           (c->err == REDIS_ERR_IO &&
            (err_no == ECONNRESET || err_no == EPIPE));
}

static void lock_redis__drain(lock_redis__client_t *cl);

/* Sends one command and returns its reply (new), or NULL after
 * lock_redis__fail.
 *
 * A connection that sat idle may have been closed under us: Redis restarted,
 * or a proxy timed it out. Then the first command on it fails although Redis
 * is fine, and every worker would answer one spurious 503 after each Redis
 * restart. So when a connection that was already open fails with EOF or a
 * reset, the command is sent once more on a fresh one. Every command here
 * can be repeated safely: an acquire whose first copy did reach Redis finds
 * its own token and is granted again (see ACQUIRE), a repeated extend or
 * release compares the same token. A timeout is NOT retried: Redis may be
 * running the command right now. A failure after the command was sent sets
 * cl->unanswered, so that an acquire can undo what it may have done
 * (lock_redis__try).
 *
 * An error reply that says this node cannot serve (READONLY from a demoted
 * primary, MASTERDOWN, LOADING) is a connection error: the connection is
 * dropped, and on a connection that was already open the command is sent
 * once more on a fresh one. Otherwise a client would stay pinned to the old
 * node after a failover behind a stable address, and fail every call until a
 * restart. Refused credentials also drop the connection. Any other error
 * reply is returned for the caller to judge. */
static redisReply *lock_redis__command(lock_redis__client_t *cl, int argc,
                                       const char **argv) {
    lock_redis__drain(cl);
    cl->unanswered = 0;
    for (int attempt = 0;; attempt++) {
        int reused = cl->ctx != NULL;
        if (lock_redis__connect(cl) != LOCK_OK) {
            return NULL; /* unanswered stays as the first copy left it */
        }
        errno = 0;
        redisReply *r = redisCommandArgv(cl->ctx, argc, argv, NULL);
        int err_no = errno;
        if (r == NULL) {
            cl->unanswered = 1; /* sent, perhaps received; no reply */
            if (attempt == 0 && reused &&
                lock_redis__dropped(cl->ctx, err_no)) {
                lock_redis__disconnect(cl);
                continue;
            }
            lock_redis__fail(cl, LOCK_EIO, argv[0]);
            return NULL;
        }
        cl->unanswered = 0;
        lock_errkind_t kind = lock_redis_reply_kind(r);
        if (kind == LOCK_EIO && attempt == 0 && reused) {
            /* A node that cannot serve did not run the command: try once
             * on a fresh connection, which may lead to the new primary. A
             * fresh connection that gets the same answer is not retried. */
            freeReplyObject(r);
            lock_redis__disconnect(cl);
            continue;
        }
        if (kind == LOCK_EIO || kind == LOCK_EAUTH) {
            char msg[128];
            snprintf(msg, sizeof(msg), "%s: %s", argv[0], r->str);
            freeReplyObject(r);
            lock_redis__fail(cl, kind, msg);
            return NULL;
        }
        return r;
    }
}

/* Runs script s. Returns a new reply (freeReplyObject) or NULL after
 * lock_redis__fail. An error reply from the script itself is returned as a
 * reply, for the caller to judge. */
static redisReply *lock_redis__eval(lock_redis__client_t *cl,
                                    lock_redis__script_t s, const char **keys,
                                    int nkeys, const char **args, int nargs) {
    const char *argv[8];
    char nk[8];
    /* argv[1] points INTO cl->sha[s]: if lock_redis__command has to
     * (re)connect, SCRIPT LOAD refills that buffer before the command is sent.
     */
    for (int use_src = 0; use_src < 2; use_src++) {
        int argc = lock_redis__argv(cl, s, use_src, keys, nkeys, args, nargs,
                                    argv, nk);
        redisReply *r = lock_redis__command(cl, argc, argv);
        if (r == NULL) {
            return NULL;
        }
        if (!lock_redis__is_noscript(r) || use_src) {
            return r;
        }
        freeReplyObject(r); /* NOSCRIPT: once more, with the source */
    }
    return NULL; /* not reached */
}

/* Turns an unexpected reply into an error; frees it. */
static int lock_redis__bad_reply(lock_redis__client_t *cl, redisReply *r,
                                 const char *what) {
    char msg[128];
    snprintf(msg, sizeof(msg), "%s: unexpected reply%s%s", what,
             r->type == REDIS_REPLY_ERROR ? ": " : "",
             r->type == REDIS_REPLY_ERROR ? r->str : "");
    lock_errkind_t kind = lock_redis_reply_kind(r);
    freeReplyObject(r);
    /* The connection is healthy; the data is not what we expect. Keep the
     * connection but count and report the error. */
    cl->base.errkind = kind == LOCK_EPERM ? LOCK_EPERM : LOCK_EPROTO;
    snprintf(cl->base.errstr, sizeof(cl->base.errstr), "redis: %s", msg);
    metrics_inc(M_REDIS_ERRORS);
    return LOCK_ERR;
}

/* ------------------------------------------------------------- acquire --- */

/*
 * An acquire whose reply never came (a timeout) may have been applied, now
 * or later: a slow or paused Redis runs it when it gets to it. Then the key
 * holds a token only we know, and without a release every other claimant
 * waits out the full TTL. So we send the release at once, best effort, on a
 * connection of its own (the client's was dropped, and a fresh one through
 * lock_redis__connect would first wait for SCRIPT LOAD replies): AUTH and the
 * release script pipelined in one write, then replies awaited for at most
 * the command timeout. If Redis is paused, the release sits in its socket
 * buffer behind the acquire (already read off an older connection) and runs
 * right after it when Redis resumes, even though we stopped waiting. If it
 * never arrives, the TTL frees the lock. cl's error state is left
 * as the acquire set it.
 */
static void lock_redis__release_unanswered(lock_redis__client_t *cl,
                                           const lock_lease_t *lease) {
    struct timeval tv = {.tv_sec = cl->timeout_ms / 1000,
                         .tv_usec = (cl->timeout_ms % 1000) * 1000};
    redisContext *c = redisConnectWithTimeout(cl->addr.host, cl->addr.port, tv);
    const char *outcome = "not sent";
    if (c != NULL && c->err == 0 && redisSetTimeout(c, tv) == REDIS_OK) {
        int nreplies = 0;
        if (lock_redis_wants_auth()) {
            const char *auth[3];
            int n = lock_redis_auth_argv(auth);
            redisAppendCommandArgv(c, n, auth, NULL);
            nreplies++;
        }
        const char *argv[] = {"EVAL",     LOCK_SCRIPT_RELEASE, "1",
                              lease->key, lease->token,        lease->channel};
        redisAppendCommandArgv(c, 6, argv, NULL);
        nreplies++;
        outcome = "sent, no reply";
        for (int i = 0; i < nreplies; i++) {
            void *reply = NULL;
            if (redisGetReply(c, &reply) != REDIS_OK || reply == NULL) {
                break;
            }
            redisReply *r = reply;
            if (i == nreplies - 1) {
                outcome = r->type == REDIS_REPLY_INTEGER && r->integer >= 1
                              ? "released"
                          : r->type == REDIS_REPLY_INTEGER ? "not held"
                                                           : "error";
            }
            freeReplyObject(r);
        }
    }
    if (c != NULL) {
        redisFree(c);
    }
    log_info("lock.unanswered_release", "key=%s outcome=\"%s\"", lease->key,
             outcome);
}

static int lock_redis__try(lock_client_t *base, lock_lease_t *lease,
                           int64_t *holder_pttl_ms) {
    lock_redis__client_t *cl = (lock_redis__client_t *)base;
    uint32_t ttl_ms = lease->ttl_ms;
    char ttl[16];
    snprintf(ttl, sizeof(ttl), "%u", ttl_ms);
    const char *keys[] = {lease->key, lease->fence_key};
    const char *args[] = {lease->token, ttl};

    /* The lease is valid for ttl from the moment we SENT the request: the
     * server started the TTL later than that, never earlier. */
    int64_t sent = mono_boot_ns();
    redisReply *r = lock_redis__eval(cl, LOCK__ACQUIRE, keys, 2, args, 2);
    if (r == NULL) {
        if (cl->unanswered) {
            lock_redis__release_unanswered(cl, lease);
        }
        return LOCK_ERR;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[0]->type != REDIS_REPLY_INTEGER ||
        r->element[1]->type != REDIS_REPLY_INTEGER) {
        return lock_redis__bad_reply(cl, r, "acquire");
    }
    int granted = r->element[0]->integer == 1;
    long long v = r->element[1]->integer;
    freeReplyObject(r);

    if (!granted) {
        *holder_pttl_ms = v;
        return LOCK_BUSY;
    }
    lease->fence = v;
    atomic_store(&lease->valid_until_ns, sent + (int64_t)ttl_ms * MONO_MS);
    return LOCK_OK;
}

/* -------------------------------------------------------------- extend --- */

/* Reads the n replies of extend_many's pipeline into results. *noscript
 * gets 1 when some script was missing (those results stay LOCK_ERR).
 * LOCK_OK once every reply was read, or LOCK_ERR (results all LOCK_ERR). */
static int lock_redis__extend_read(lock_redis__client_t *cl, size_t n,
                                   int *results, int *noscript) {
    *noscript = 0;
    lock_errkind_t drop = LOCK_ENONE; /* a reply that condemns the conn */
    char dropmsg[128] = "";
    for (size_t i = 0; i < n; i++) {
        void *reply = NULL;
        if (redisGetReply(cl->ctx, &reply) != REDIS_OK || reply == NULL) {
            for (size_t j = 0; j < n; j++) {
                results[j] = LOCK_ERR;
            }
            return lock_redis__fail(cl, LOCK_EIO, "extend");
        }
        redisReply *r = reply;
        if (r->type == REDIS_REPLY_INTEGER) {
            results[i] = r->integer == 1 ? LOCK_HELD : LOCK_LOST;
        } else if (lock_redis__is_noscript(r)) {
            *noscript = 1;
        } else if (lock_redis_reply_kind(r) == LOCK_EIO ||
                   lock_redis_reply_kind(r) == LOCK_EAUTH) {
            drop = lock_redis_reply_kind(r);
            snprintf(dropmsg, sizeof(dropmsg), "extend: %s", r->str);
        } else {
            cl->base.errkind = lock_redis_reply_kind(r) == LOCK_EPERM
                                   ? LOCK_EPERM
                                   : LOCK_EPROTO;
            snprintf(cl->base.errstr, sizeof(cl->base.errstr), "extend: %s",
                     r->type == REDIS_REPLY_ERROR ? r->str : "bad reply");
            metrics_inc(M_REDIS_ERRORS);
        }
        freeReplyObject(r);
    }
    if (drop != LOCK_ENONE) {
        /* Every reply was read, so the pipeline is in step; but this node
         * cannot renew (a demoted primary): reconnect on the next round. */
        for (size_t j = 0; j < n; j++) {
            results[j] = LOCK_ERR;
        }
        return lock_redis__fail(cl, drop, dropmsg);
    }
    return LOCK_OK;
}

/* The script cache was flushed (rare): the leases whose EXTEND was not
 * run are redone one by one with EVAL (lock_redis__eval falls back by
 * itself). LOCK_OK, or LOCK_ERR. */
static int lock_redis__extend_redo(lock_redis__client_t *cl,
                                   lock_lease_t *const *leases, size_t n,
                                   int *results) {
    for (size_t i = 0; i < n; i++) {
        if (results[i] != LOCK_ERR) {
            continue;
        }
        char ttl[16];
        snprintf(ttl, sizeof(ttl), "%u", leases[i]->ttl_ms);
        const char *keys[] = {leases[i]->key};
        const char *args[] = {leases[i]->token, ttl};
        redisReply *r = lock_redis__eval(cl, LOCK__EXTEND, keys, 1, args, 2);
        if (r == NULL) {
            return LOCK_ERR;
        }
        if (r->type == REDIS_REPLY_INTEGER) {
            results[i] = r->integer == 1 ? LOCK_HELD : LOCK_LOST;
        }
        freeReplyObject(r);
    }
    return LOCK_OK;
}

static int lock_redis__extend_many(lock_client_t *base,
                                   lock_lease_t *const *leases, size_t n,
                                   int *results, int64_t *sent_at_ns) {
    lock_redis__client_t *cl = (lock_redis__client_t *)base;
    lock_redis__drain(cl);
    if (lock_redis__connect(cl) != LOCK_OK) {
        return LOCK_ERR;
    }

    /* Pipeline: every renewal goes out in one write, the replies come back
     * in order. One round trip however many leases this process holds. */
    *sent_at_ns = mono_boot_ns();
    for (size_t i = 0; i < n; i++) {
        char ttl[16], nk[8];
        snprintf(ttl, sizeof(ttl), "%u", leases[i]->ttl_ms);
        const char *keys[] = {leases[i]->key};
        const char *args[] = {leases[i]->token, ttl};
        const char *argv[8];
        int argc =
            lock_redis__argv(cl, LOCK__EXTEND, 0, keys, 1, args, 2, argv, nk);
        if (redisAppendCommandArgv(cl->ctx, argc, argv, NULL) != REDIS_OK) {
            return lock_redis__fail(cl, LOCK_EIO, "pipeline");
        }
    }
    int noscript = 0;
    if (lock_redis__extend_read(cl, n, results, &noscript) != LOCK_OK) {
        return LOCK_ERR;
    }
    return noscript ? lock_redis__extend_redo(cl, leases, n, results) : LOCK_OK;
}

/* ------------------------------------------------------------- release --- */

/*
 * The reply of the release sent last on this connection, read now: before
 * the next command on it (hiredis matches replies to commands in order) or
 * when the client is freed. Nothing waits on it: the claim answered its
 * client while the reply was on its way, so a release costs no round trip
 * of its own. What it says is used for the fairness hint (lock_wait.c) and
 * the logs. (The release goes out as EVAL, so no NOSCRIPT can come back
 * here after the claim has moved on; see lock_release.)
 */
static void lock_redis__drain(lock_redis__client_t *cl) {
    if (!cl->pending || cl->ctx == NULL) {
        cl->pending = 0;
        return;
    }
    cl->pending = 0;
    void *reply = NULL;
    if (redisGetReply(cl->ctx, &reply) != REDIS_OK || reply == NULL) {
        log_warn("lock.release_failed",
                 "key=%s err=\"%s\" (its reply was lost; expires by TTL)",
                 cl->pend_key, cl->ctx->errstr);
        lock_redis__fail(cl, LOCK_EIO, "release reply");
        return;
    }
    redisReply *r = reply;
    char res[LOCK_KEY_MAX];
    lock_resource_of(cl->pend_key, res);
    if (r->type == REDIS_REPLY_INTEGER && r->integer >= 1) {
        lock_wait_note_receivers(res, r->integer - 1);
    } else if (r->type != REDIS_REPLY_INTEGER) {
        log_warn("lock.release_failed", "key=%s err=\"%s\"", cl->pend_key,
                 r->type == REDIS_REPLY_ERROR ? r->str : "bad reply");
        metrics_inc(M_REDIS_ERRORS);
    }
    freeReplyObject(r);
}

static int lock_redis__release(lock_client_t *base, const lock_lease_t *lease) {
    lock_redis__client_t *cl = (lock_redis__client_t *)base;
    lock_redis__drain(cl);
    if (lock_redis__connect(cl) != LOCK_OK) {
        return LOCK_ERR;
    }

    const char *keys[] = {lease->key};
    const char *args[] = {lease->token, lease->channel};
    const char *argv[8];
    char nk[8];
    /* EVAL with the source, not EVALSHA: nobody reads the reply before the
     * claim answers, so a NOSCRIPT (script cache flushed) would leave the
     * lock held until this worker's next command or the TTL. The source
     * is a few hundred bytes more on the wire; Redis finds the compiled
     * script by its hash. */
    int argc =
        lock_redis__argv(cl, LOCK__RELEASE, 1, keys, 1, args, 2, argv, nk);
    if (redisAppendCommandArgv(cl->ctx, argc, argv, NULL) != REDIS_OK) {
        return lock_redis__fail(cl, LOCK_ESYS, "release: out of memory");
    }
    /* Written out now, whole (a blocking socket with the command timeout):
     * the release must not wait for this connection's next command. */
    int done = 0;
    for (int i = 0; !done; i++) {
        if (redisBufferWrite(cl->ctx, &done) != REDIS_OK || i > 1000) {
            return lock_redis__fail(cl, LOCK_EIO, "release");
        }
    }
    cl->pending = 1;
    memcpy(cl->pend_key, lease->key, sizeof(cl->pend_key));
    return LOCK_OK;
}

static int lock_redis__check(lock_client_t *base, const lock_lease_t *lease) {
    lock_redis__client_t *cl = (lock_redis__client_t *)base;
    const char *argv[] = {"GET", lease->key};
    redisReply *r = lock_redis__command(cl, 2, argv);
    if (r == NULL) {
        return LOCK_ERR;
    }
    int held =
        r->type == REDIS_REPLY_STRING && strcmp(r->str, lease->token) == 0;
    freeReplyObject(r);
    return held ? LOCK_HELD : LOCK_LOST;
}

static int lock_redis__raise_fence(lock_client_t *base, const char *coupon,
                                   int64_t floor, int64_t *now_at) {
    lock_redis__client_t *cl = (lock_redis__client_t *)base;
    char key[LOCK_KEY_MAX], fl[LOCK__DEC_MAX];
    lock__raise_fence_args(coupon, floor, key, fl);
    const char *keys[] = {key};
    const char *args[] = {fl};
    redisReply *r = lock_redis__eval(cl, LOCK__RAISE, keys, 1, args, 1);
    if (r == NULL) {
        return LOCK_ERR;
    }
    if (r->type != REDIS_REPLY_INTEGER) {
        return lock_redis__bad_reply(cl, r, "raise fence");
    }
    *now_at = r->integer;
    freeReplyObject(r);
    return LOCK_OK;
}

static int lock_redis__ping(lock_client_t *base) {
    lock_redis__client_t *cl = (lock_redis__client_t *)base;
    const char *argv[] = {"PING"};
    redisReply *r = lock_redis__command(cl, 1, argv);
    if (r == NULL) {
        return LOCK_ERR;
    }
    int ok = r->type == REDIS_REPLY_STATUS;
    freeReplyObject(r);
    return ok ? LOCK_OK : lock_redis__fail(cl, LOCK_EPROTO, "PING: bad reply");
}

/* ------------------------------------------------------------- clients --- */

static lock_client_t *lock_redis__client_new(const cfg_t *cfg) {
    lock_redis__client_t *cl = calloc(1, sizeof(*cl));
    if (cl == NULL) {
        return NULL;
    }
    lock_client_base_init(&cl->base, lock_sentinel_configured(cfg)
                                         ? &lock_sentinel_backend
                                         : &lock_redis_backend);
    cl->addr = cfg->redis[0];
    if (lock_sentinel_configured(cfg)) {
        cl->master_name = cfg->redis_master_name;
    }
    cl->timeout_ms = cfg->redis_timeout_ms;
    return &cl->base;
}

static void lock_redis__client_free(lock_client_t *base) {
    lock_redis__client_t *cl = (lock_redis__client_t *)base;
    lock_redis__disconnect(cl);
    free(cl);
}

/* One node: nothing to check before the first connection (a node that
 * cannot serve answers READONLY or LOADING, which every call handles). */
static int lock_redis__init(const cfg_t *cfg, char *err, size_t errlen) {
    (void)err;
    (void)errlen;
    log_info("lock.topology", "backend=redis nodes=1 node=%s:%u",
             cfg->redis[0].host, cfg->redis[0].port);
    return 0;
}

/* The operations both tables below share: one node, found either way. */
#define LOCK_REDIS__OPS                                                        \
    .client_new = lock_redis__client_new,                                      \
    .client_free = lock_redis__client_free, .try_acquire = lock_redis__try,    \
    .extend_many = lock_redis__extend_many, .release = lock_redis__release,    \
    .check = lock_redis__check, .raise_fence = lock_redis__raise_fence,        \
    .ping = lock_redis__ping

const lock_backend_t lock_redis_backend = {
    .name = "redis",
    .init = lock_redis__init,
    LOCK_REDIS__OPS,
};

/* One logical node behind Sentinel: the same code; the master's address
 * comes from the sentinels on every (re)connect (lock_redis__connect). */
static int lock_redis__init_sentinel(const cfg_t *cfg, char *err,
                                     size_t errlen) {
    (void)err;
    (void)errlen;
    log_info("lock.topology",
             "backend=sentinel nodes=1 master_name=%s "
             "sentinels=%d",
             cfg->redis_master_name, cfg->nsentinels);
    return 0;
}

const lock_backend_t lock_sentinel_backend = {
    .name = "sentinel",
    .init = lock_redis__init_sentinel,
    LOCK_REDIS__OPS,
};
