/*
 * lock.c: see lock.h for the contract and lock_scripts.h for the scripts.
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
#include "lock.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "lock_scripts.h"
#include "lock_wait.h"
#include "log.h"
#include "metrics.h"
#include "mono.h"
#include "sentinel.h"

typedef enum lock__script {
    LOCK__ACQUIRE = 0,
    LOCK__EXTEND,
    LOCK__RELEASE,
    LOCK__RAISE,
    LOCK__NSCRIPTS,
} lock__script_t;

static const char *const lock__src[LOCK__NSCRIPTS] = {
    LOCK_SCRIPT_ACQUIRE,
    LOCK_SCRIPT_EXTEND,
    LOCK_SCRIPT_RELEASE,
    LOCK_SCRIPT_RAISE_FENCE,
};

struct lock_client {
    redisContext *ctx;            /* NULL while disconnected */
    cfg_addr_t addr;              /* where Redis is */
    uint32_t timeout_ms;          /* connect and command timeout */
    char sha[LOCK__NSCRIPTS][41]; /* SHA1s from SCRIPT LOAD on this conn */
    uint64_t rng;                 /* backoff jitter state (xorshift64) */
    int unanswered;               /* the last failure sent a command and got
                                     no reply: it may have been applied */
    lock_errkind_t errkind;       /* kind of the last error */
    char errstr[160];             /* last error */

    /* A release sent whose reply is not read yet (lock_release). */
    int pending;
    char pend_key[LOCK_KEY_MAX]; /* its lock key, for the logs */
};

/* The process's Redis credentials (lock_init); borrowed from cfg_t. */
static const char *lock__username = "";
static const char *lock__password = "";

/* ------------------------------------------------------------ plumbing --- */

void lock_init(const char *username, const char *password) {
    lock__username = username != NULL ? username : "";
    lock__password = password != NULL ? password : "";
    lock_wait_credentials(lock__username, lock__password);
}

lock_client_t *lock_client_new(const cfg_addr_t *addr, uint32_t timeout_ms) {
    lock_client_t *cl = calloc(1, sizeof(*cl));
    if (cl == NULL) {
        return NULL;
    }
    cl->addr = *addr;
    cl->timeout_ms = timeout_ms;
    if (getrandom(&cl->rng, sizeof(cl->rng), 0) != sizeof(cl->rng) ||
        cl->rng == 0) {
        cl->rng = (uint64_t)mono_ns() | 1;
    }
    return cl;
}

static void lock__disconnect(lock_client_t *cl) {
    if (cl->ctx != NULL) {
        redisFree(cl->ctx);
        cl->ctx = NULL;
    }
    /* A release whose reply is lost with the connection either ran or
     * not; if not, the TTL frees the lock. */
    cl->pending = 0;
}

void lock_client_free(lock_client_t *cl) {
    if (cl == NULL) {
        return;
    }
    lock__disconnect(cl);
    free(cl);
}

const char *lock_errstr(const lock_client_t *cl) {
    return cl->errstr;
}

lock_errkind_t lock_errkind(const lock_client_t *cl) {
    return cl->errkind;
}

const char *lock_errkind_name(lock_errkind_t kind) {
    switch (kind) {
    case LOCK_ENONE:
        return "none";
    case LOCK_EIO:
        return "io";
    case LOCK_EAUTH:
        return "auth";
    case LOCK_EPERM:
        return "perm";
    case LOCK_EPROTO:
        return "proto";
    case LOCK_ESYS:
        return "sys";
    }
    return "?";
}

/* The kind of an error reply, from its error code. READONLY (a replica),
 * MASTERDOWN (a replica that lost its primary) and LOADING (a node still
 * reading its data set) say that this node cannot serve us now; they count
 * as connection errors, so the connection is dropped and the next call
 * connects afresh, to whatever node the address leads to by then. */
static lock_errkind_t lock__reply_kind(const redisReply *r) {
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

/* Records a failure of the given kind: the connection is dropped, so the
 * next call starts on a fresh one. Always returns LOCK_ERR. */
static int lock__fail(lock_client_t *cl, lock_errkind_t kind,
                      const char *what) {
    cl->errkind = kind;
    if (cl->ctx != NULL && cl->ctx->err != 0) {
        snprintf(cl->errstr, sizeof(cl->errstr), "redis %s:%u: %s: %s",
                 cl->addr.host, cl->addr.port, what, cl->ctx->errstr);
    } else {
        snprintf(cl->errstr, sizeof(cl->errstr), "redis %s:%u: %s",
                 cl->addr.host, cl->addr.port, what);
    }
    lock__disconnect(cl);
    metrics_inc(M_REDIS_ERRORS);
    return LOCK_ERR;
}

/* Sends AUTH on the fresh connection: "AUTH user pass" for an ACL user (the
 * password may be empty, for a "nopass" user), "AUTH pass" for the default
 * user. The password never appears in errstr;
 * Redis's own refusal (WRONGPASS ...) does not contain it either. */
static int lock__auth(lock_client_t *cl) {
    const char *argv[3] = {"AUTH"};
    int argc = 1;
    if (lock__username[0] != '\0') {
        argv[argc++] = lock__username;
    }
    argv[argc++] = lock__password;
    redisReply *r = redisCommandArgv(cl->ctx, argc, argv, NULL);
    if (r == NULL) {
        return lock__fail(cl, LOCK_EIO, "AUTH");
    }
    int ok = r->type == REDIS_REPLY_STATUS;
    char msg[128];
    lock_errkind_t kind = LOCK_EAUTH;
    if (!ok) {
        /* Any refusal of AUTH is about the credentials, whatever the code
         * (WRONGPASS from Redis 6+, "ERR invalid password" before it). */
        snprintf(msg, sizeof(msg), "AUTH refused (user \"%s\"): %s",
                 lock__username[0] != '\0' ? lock__username : "default",
                 r->type == REDIS_REPLY_ERROR ? r->str : "bad reply");
        if (lock__reply_kind(r) == LOCK_EIO) {
            kind = LOCK_EIO; /* LOADING: not about us */
        }
    }
    freeReplyObject(r);
    return ok ? LOCK_OK : lock__fail(cl, kind, msg);
}

static int lock__connect(lock_client_t *cl) {
    if (cl->ctx != NULL) {
        return LOCK_OK;
    }
    /* Behind Sentinel, every (re)connect asks where the master is now. */
    char serr[160];
    if (sentinel_resolve(&cl->addr, serr, sizeof(serr)) == SENTINEL_ERR) {
        return lock__fail(cl, LOCK_EIO, serr);
    }
    struct timeval tv = {.tv_sec = cl->timeout_ms / 1000,
                         .tv_usec = (cl->timeout_ms % 1000) * 1000};
    cl->ctx = redisConnectWithTimeout(cl->addr.host, cl->addr.port, tv);
    if (cl->ctx == NULL) {
        return lock__fail(cl, LOCK_ESYS, "connect: out of memory");
    }
    if (cl->ctx->err != 0 || redisSetTimeout(cl->ctx, tv) != REDIS_OK ||
        redisEnableKeepAlive(cl->ctx) != REDIS_OK) {
        return lock__fail(cl, LOCK_EIO, "connect");
    }

    if ((lock__username[0] != '\0' || lock__password[0] != '\0') &&
        lock__auth(cl) != LOCK_OK) {
        return LOCK_ERR;
    }

    for (int i = 0; i < LOCK__NSCRIPTS; i++) {
        redisReply *r = redisCommand(cl->ctx, "SCRIPT LOAD %s", lock__src[i]);
        if (r == NULL) {
            return lock__fail(cl, LOCK_EIO, "SCRIPT LOAD");
        }
        int ok = r->type == REDIS_REPLY_STRING && r->len == 40;
        lock_errkind_t kind = ok ? LOCK_ENONE : lock__reply_kind(r);
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
            return lock__fail(cl, kind == LOCK_ENONE ? LOCK_EPROTO : kind, msg);
        }
    }
    return LOCK_OK;
}

static int lock__is_noscript(const redisReply *r) {
    return r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOSCRIPT", 8) == 0;
}

/* Builds the argv of EVALSHA (or EVAL when src is set) for script s. */
static int lock__argv(lock_client_t *cl, lock__script_t s, int use_src,
                      const char **keys, int nkeys, const char **args,
                      int nargs, const char **argv, char *nkeys_buf) {
    int argc = 0;
    argv[argc++] = use_src ? "EVAL" : "EVALSHA";
    argv[argc++] = use_src ? lock__src[s] : cl->sha[s];
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
static int lock__dropped(const redisContext *c, int err_no) {
    return c->err == REDIS_ERR_EOF ||
           (c->err == REDIS_ERR_IO &&
            (err_no == ECONNRESET || err_no == EPIPE));
}

/* Sends one command and returns its reply (new), or NULL after lock__fail.
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
 * (lock_try_acquire).
 *
 * An error reply that says this node cannot serve (READONLY from a demoted
 * primary, MASTERDOWN, LOADING) is a connection error: the connection is
 * dropped, and on a connection that was already open the command is sent
 * once more on a fresh one. Otherwise a client would stay pinned to the old
 * node after a failover behind a stable address, and fail every call until a
 * restart. Refused credentials also drop the connection. Any other error
 * reply is returned for the caller to judge. */
static void lock__drain(lock_client_t *cl);

static redisReply *lock__command(lock_client_t *cl, int argc,
                                 const char **argv) {
    lock__drain(cl);
    cl->unanswered = 0;
    for (int attempt = 0;; attempt++) {
        int reused = cl->ctx != NULL;
        if (lock__connect(cl) != LOCK_OK) {
            return NULL; /* unanswered stays as the first copy left it */
        }
        errno = 0;
        redisReply *r = redisCommandArgv(cl->ctx, argc, argv, NULL);
        int err_no = errno;
        if (r == NULL) {
            cl->unanswered = 1; /* sent, perhaps received; no reply */
            if (attempt == 0 && reused && lock__dropped(cl->ctx, err_no)) {
                lock__disconnect(cl);
                continue;
            }
            lock__fail(cl, LOCK_EIO, argv[0]);
            return NULL;
        }
        cl->unanswered = 0;
        lock_errkind_t kind = lock__reply_kind(r);
        if (kind == LOCK_EIO && attempt == 0 && reused) {
            /* A node that cannot serve did not run the command: try once
             * on a fresh connection, which may lead to the new primary. A
             * fresh connection that gets the same answer is not retried. */
            freeReplyObject(r);
            lock__disconnect(cl);
            continue;
        }
        if (kind == LOCK_EIO || kind == LOCK_EAUTH) {
            char msg[128];
            snprintf(msg, sizeof(msg), "%s: %s", argv[0], r->str);
            freeReplyObject(r);
            lock__fail(cl, kind, msg);
            return NULL;
        }
        return r;
    }
}

/* Runs script s. Returns a new reply (freeReplyObject) or NULL after
 * lock__fail. An error reply from the script itself is returned as a reply,
 * for the caller to judge. */
static redisReply *lock__eval(lock_client_t *cl, lock__script_t s,
                              const char **keys, int nkeys, const char **args,
                              int nargs) {
    const char *argv[8];
    char nk[8];
    /* argv[1] points INTO cl->sha[s]: if lock__command has to (re)connect,
     * SCRIPT LOAD refills that buffer before the command is sent. */
    for (int use_src = 0; use_src < 2; use_src++) {
        int argc =
            lock__argv(cl, s, use_src, keys, nkeys, args, nargs, argv, nk);
        redisReply *r = lock__command(cl, argc, argv);
        if (r == NULL) {
            return NULL;
        }
        if (!lock__is_noscript(r) || use_src) {
            return r;
        }
        freeReplyObject(r); /* NOSCRIPT: once more, with the source */
    }
    return NULL; /* not reached */
}

/* Turns an unexpected reply into an error; frees it. */
static int lock__bad_reply(lock_client_t *cl, redisReply *r, const char *what) {
    char msg[128];
    snprintf(msg, sizeof(msg), "%s: unexpected reply%s%s", what,
             r->type == REDIS_REPLY_ERROR ? ": " : "",
             r->type == REDIS_REPLY_ERROR ? r->str : "");
    lock_errkind_t kind = lock__reply_kind(r);
    freeReplyObject(r);
    /* The connection is healthy; the data is not what we expect. Keep the
     * connection but count and report the error. */
    cl->errkind = kind == LOCK_EPERM ? LOCK_EPERM : LOCK_EPROTO;
    snprintf(cl->errstr, sizeof(cl->errstr), "redis: %s", msg);
    metrics_inc(M_REDIS_ERRORS);
    return LOCK_ERR;
}

/* --------------------------------------------------------------- lease --- */

int lock_token_new(char *out) {
    unsigned char raw[LOCK_TOKEN_HEX / 2];
    size_t got = 0;
    while (got < sizeof(raw)) {
        ssize_t n = getrandom(raw + got, sizeof(raw) - got, 0);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -1;
        }
        got += (size_t)n;
    }
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < sizeof(raw); i++) {
        out[2 * i] = hex[raw[i] >> 4];
        out[2 * i + 1] = hex[raw[i] & 15];
    }
    out[LOCK_TOKEN_HEX] = '\0';
    return 0;
}

static void lock__lease_init(lock_lease_t *l, const char *coupon,
                             uint32_t ttl_ms) {
    snprintf(l->key, sizeof(l->key), "coupon:{%s}:lock", coupon);
    snprintf(l->fence_key, sizeof(l->fence_key), "coupon:{%s}:fence", coupon);
    snprintf(l->channel, sizeof(l->channel), "coupon:{%s}:released", coupon);
    l->token[0] = '\0';
    l->fence = 0;
    l->ttl_ms = ttl_ms;
    atomic_store(&l->valid_until_ns, 0);
    atomic_store(&l->lost, 0);
    l->wd_prev = l->wd_next = NULL;
    l->wd_watched = 0;
}

int lock_lease_usable(const lock_lease_t *l) {
    return !atomic_load(&l->lost) &&
           boot_ns() < atomic_load(&l->valid_until_ns);
}

int lock_lease_mark_lost(lock_lease_t *l) {
    int expected = 0;
    return atomic_compare_exchange_strong(&l->lost, &expected, 1);
}

/* ------------------------------------------------------------- acquire --- */

/*
 * An acquire whose reply never came (a timeout) may have been applied, now
 * or later: a slow or paused Redis runs it when it gets to it. Then the key
 * holds a token only we know, and without a release every other claimant
 * waits out the full TTL. So we send the release at once, best effort, on a
 * connection of its own (the client's was dropped, and a fresh one through
 * lock__connect would first wait for SCRIPT LOAD replies): AUTH and the
 * release script pipelined in one write, then replies awaited for at most
 * the command timeout. If Redis is paused, the release sits in its socket
 * buffer behind the acquire (already read off an older connection) and runs
 * right after it when Redis resumes, even though we stopped waiting. If it
 * never arrives, the TTL frees the lock as before. cl's error state is left
 * as the acquire set it.
 */
static void lock__release_unanswered(lock_client_t *cl,
                                     const lock_lease_t *lease) {
    struct timeval tv = {.tv_sec = cl->timeout_ms / 1000,
                         .tv_usec = (cl->timeout_ms % 1000) * 1000};
    redisContext *c = redisConnectWithTimeout(cl->addr.host, cl->addr.port, tv);
    const char *outcome = "not sent";
    if (c != NULL && c->err == 0 && redisSetTimeout(c, tv) == REDIS_OK) {
        int nreplies = 0;
        if (lock__username[0] != '\0' || lock__password[0] != '\0') {
            const char *auth[3] = {"AUTH"};
            int n = 1;
            if (lock__username[0] != '\0') {
                auth[n++] = lock__username;
            }
            auth[n++] = lock__password;
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

static int lock__try(lock_client_t *cl, const char *coupon, uint32_t ttl_ms,
                     lock_lease_t *lease, int64_t *holder_pttl_ms) {
    lock__lease_init(lease, coupon, ttl_ms);
    if (lock_token_new(lease->token) != 0) {
        snprintf(cl->errstr, sizeof(cl->errstr), "getrandom: %s",
                 strerror(errno));
        cl->errkind = LOCK_ESYS;
        return LOCK_ERR;
    }
    char ttl[16];
    snprintf(ttl, sizeof(ttl), "%u", ttl_ms);
    const char *keys[] = {lease->key, lease->fence_key};
    const char *args[] = {lease->token, ttl};

    /* The lease is valid for ttl from the moment we SENT the request: the
     * server started the TTL later than that, never earlier. */
    int64_t sent = boot_ns();
    redisReply *r = lock__eval(cl, LOCK__ACQUIRE, keys, 2, args, 2);
    if (r == NULL) {
        if (cl->unanswered) {
            lock__release_unanswered(cl, lease);
        }
        return LOCK_ERR;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[0]->type != REDIS_REPLY_INTEGER ||
        r->element[1]->type != REDIS_REPLY_INTEGER) {
        return lock__bad_reply(cl, r, "acquire");
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

int lock_try_acquire(lock_client_t *cl, const char *coupon, uint32_t ttl_ms,
                     lock_lease_t *lease, int64_t *holder_pttl_ms) {
    int rc = lock__try(cl, coupon, ttl_ms, lease, holder_pttl_ms);
    metrics_inc(rc == LOCK_OK     ? M_LOCK_OK
                : rc == LOCK_BUSY ? M_LOCK_BUSY
                                  : M_LOCK_ERROR);
    return rc;
}

static uint64_t lock__rand(lock_client_t *cl) {
    uint64_t x = cl->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return cl->rng = x;
}

/*
 * Backoff: the first retry waits about 1 ms, each later one doubles the cap
 * up to 50 ms, and the actual sleep is drawn uniformly from [cap/2, cap]
 * ("equal jitter") so that waiters released by the same event do not retry in
 * lock step. The sleep never runs past the holder's PTTL (the lock is free at
 * the latest then) nor past the caller's deadline.
 */
#define LOCK__BACKOFF_MIN_NS (1 * MONO_MS)
#define LOCK__BACKOFF_MAX_NS (50 * MONO_MS)

static int lock__acquire_poll(lock_client_t *cl, const char *coupon,
                              uint32_t ttl_ms, int64_t deadline_ns,
                              lock_lease_t *lease) {
    int64_t cap = LOCK__BACKOFF_MIN_NS;
    for (;;) {
        int64_t pttl = -1;
        int rc = lock_try_acquire(cl, coupon, ttl_ms, lease, &pttl);
        if (rc != LOCK_BUSY) {
            return rc;
        }
        int64_t now = mono_ns();
        if (now >= deadline_ns) {
            return LOCK_BUSY; /* waited long enough */
        }
        int64_t sleep =
            cap / 2 + (int64_t)(lock__rand(cl) % (uint64_t)(cap / 2 + 1));
        if (pttl >= 0 && sleep > pttl * MONO_MS) {
            sleep = pttl * MONO_MS;
        }
        if (sleep > deadline_ns - now) {
            sleep = deadline_ns - now;
        }
        mono_sleep_ns(sleep);
        cap = cap * 2 > LOCK__BACKOFF_MAX_NS ? LOCK__BACKOFF_MAX_NS : cap * 2;
    }
}

/* The pubsub strategy (lock_wait.c has the design): try once; when
 * refused, queue and subscribe, and only after the confirmation try again;
 * then sleep until a release message, the re-check or a reconnect wakes
 * us. */
static int lock__acquire_pubsub(lock_client_t *cl, const char *coupon,
                                uint32_t ttl_ms, int64_t deadline_ns,
                                lock_lease_t *lease) {
    int64_t pttl = -1;
    lock_wait_holdback(coupon, deadline_ns);
    if (!lock_wait_has_waiters(coupon)) {
        int rc = lock_try_acquire(cl, coupon, ttl_ms, lease, &pttl);
        if (rc != LOCK_BUSY || mono_ns() >= deadline_ns) {
            return rc;
        }
    }
    lock_waiter_t w;
    int try_now = lock_wait_join(&w, coupon, deadline_ns);
    int rc = LOCK_BUSY;
    for (;;) {
        if (try_now) {
            rc = lock_try_acquire(cl, coupon, ttl_ms, lease, &pttl);
            if (rc != LOCK_BUSY) {
                break;
            }
        }
        try_now = 1;
        int cause = lock_wait_sleep(&w, deadline_ns);
        if (cause == LOCK_WAKE_NONE) {
            break; /* LOCK_BUSY: the deadline passed */
        }
        if (cause == LOCK_WAKE_MESSAGE) {
            lock_wait_holdback(coupon, deadline_ns);
        }
    }
    lock_wait_leave(&w, rc == LOCK_OK, rc == LOCK_ERR);
    return rc;
}

int lock_acquire(lock_client_t *cl, const char *coupon, uint32_t ttl_ms,
                 int64_t deadline_ns, lock_lease_t *lease, int64_t *waited_ns) {
    int64_t start = mono_ns();
    int rc = lock_wait_pubsub()
                 ? lock__acquire_pubsub(cl, coupon, ttl_ms, deadline_ns, lease)
                 : lock__acquire_poll(cl, coupon, ttl_ms, deadline_ns, lease);
    if (rc == LOCK_OK) {
        metrics_inc(M_LOCK_GRANTS);
    }
    *waited_ns = mono_ns() - start;
    return rc;
}

/* -------------------------------------------------------------- extend --- */

int lock_extend_many(lock_client_t *cl, lock_lease_t *const *leases, size_t n,
                     int *results, int64_t *sent_at_ns) {
    for (size_t i = 0; i < n; i++) {
        results[i] = -1;
    }
    if (n == 0) {
        return LOCK_OK;
    }
    lock__drain(cl);
    if (lock__connect(cl) != LOCK_OK) {
        return LOCK_ERR;
    }

    /* Pipeline: every renewal goes out in one write, the replies come back
     * in order. One round trip however many leases this process holds. */
    *sent_at_ns = boot_ns();
    for (size_t i = 0; i < n; i++) {
        char ttl[16], nk[8];
        snprintf(ttl, sizeof(ttl), "%u", leases[i]->ttl_ms);
        const char *keys[] = {leases[i]->key};
        const char *args[] = {leases[i]->token, ttl};
        const char *argv[8];
        int argc = lock__argv(cl, LOCK__EXTEND, 0, keys, 1, args, 2, argv, nk);
        if (redisAppendCommandArgv(cl->ctx, argc, argv, NULL) != REDIS_OK) {
            return lock__fail(cl, LOCK_EIO, "pipeline");
        }
    }
    int noscript = 0;
    lock_errkind_t drop = LOCK_ENONE; /* a reply that condemns the conn */
    char dropmsg[128] = "";
    for (size_t i = 0; i < n; i++) {
        void *reply = NULL;
        if (redisGetReply(cl->ctx, &reply) != REDIS_OK || reply == NULL) {
            for (size_t j = 0; j < n; j++) {
                results[j] = -1;
            }
            return lock__fail(cl, LOCK_EIO, "extend");
        }
        redisReply *r = reply;
        if (r->type == REDIS_REPLY_INTEGER) {
            results[i] = r->integer == 1 ? 1 : 0;
        } else if (lock__is_noscript(r)) {
            noscript = 1;
        } else if (lock__reply_kind(r) == LOCK_EIO ||
                   lock__reply_kind(r) == LOCK_EAUTH) {
            drop = lock__reply_kind(r);
            snprintf(dropmsg, sizeof(dropmsg), "extend: %s", r->str);
        } else {
            cl->errkind =
                lock__reply_kind(r) == LOCK_EPERM ? LOCK_EPERM : LOCK_EPROTO;
            snprintf(cl->errstr, sizeof(cl->errstr), "extend: %s",
                     r->type == REDIS_REPLY_ERROR ? r->str : "bad reply");
            metrics_inc(M_REDIS_ERRORS);
        }
        freeReplyObject(r);
    }
    if (drop != LOCK_ENONE) {
        /* Every reply was read, so the pipeline is in step; but this node
         * cannot renew (a demoted primary): reconnect on the next round. */
        for (size_t j = 0; j < n; j++) {
            results[j] = -1;
        }
        return lock__fail(cl, drop, dropmsg);
    }

    /* Rare: the script cache was flushed. Redo those one by one with EVAL
     * (lock__eval falls back by itself). */
    for (size_t i = 0; noscript && i < n; i++) {
        if (results[i] != -1) {
            continue;
        }
        char ttl[16];
        snprintf(ttl, sizeof(ttl), "%u", leases[i]->ttl_ms);
        const char *keys[] = {leases[i]->key};
        const char *args[] = {leases[i]->token, ttl};
        redisReply *r = lock__eval(cl, LOCK__EXTEND, keys, 1, args, 2);
        if (r == NULL) {
            return LOCK_ERR;
        }
        if (r->type == REDIS_REPLY_INTEGER) {
            results[i] = r->integer == 1 ? 1 : 0;
        }
        freeReplyObject(r);
    }
    return LOCK_OK;
}

/* ------------------------------------------------------------- release --- */

/* The resource of a lock key "coupon:{R}:lock", into out[LOCK_KEY_MAX]. */
static void lock__resource_of(const char *key, char *out) {
    const char *a = strchr(key, '{'), *b = strrchr(key, '}');
    size_t n = a != NULL && b != NULL && b > a ? (size_t)(b - a - 1) : 0;
    memcpy(out, a != NULL ? a + 1 : key, n);
    out[n] = '\0';
}

/*
 * The reply of the release sent last on this connection, read now: before
 * the next command on it (hiredis matches replies to commands in order) or
 * when the client is freed. Nothing waits on it: the claim answered its
 * client while the reply was on its way, so a release costs no round trip
 * of its own. What it says is used for the fairness hint (lock_wait.c) and
 * the logs. (The release goes out as EVAL, so no NOSCRIPT can come back
 * here after the claim has moved on; see lock_release.)
 */
static void lock__drain(lock_client_t *cl) {
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
        lock__fail(cl, LOCK_EIO, "release reply");
        return;
    }
    redisReply *r = reply;
    char res[LOCK_KEY_MAX];
    lock__resource_of(cl->pend_key, res);
    if (r->type == REDIS_REPLY_INTEGER && r->integer >= 1) {
        lock_wait_note_receivers(res, r->integer - 1);
    } else if (r->type != REDIS_REPLY_INTEGER) {
        log_warn("lock.release_failed", "key=%s err=\"%s\"", cl->pend_key,
                 r->type == REDIS_REPLY_ERROR ? r->str : "bad reply");
        metrics_inc(M_REDIS_ERRORS);
    }
    freeReplyObject(r);
}

int lock_release(lock_client_t *cl, const lock_lease_t *lease) {
    lock__drain(cl);
    if (lock__connect(cl) != LOCK_OK) {
        return LOCK_ERR;
    }
    char res[LOCK_KEY_MAX];
    lock__resource_of(lease->key, res);
    lock_wait_note_release(res);

    const char *keys[] = {lease->key};
    const char *args[] = {lease->token, lease->channel};
    const char *argv[8];
    char nk[8];
    /* EVAL with the source, not EVALSHA: nobody reads the reply before the
     * claim answers, so a NOSCRIPT (script cache flushed) would leave the
     * lock held until this worker's next command or the TTL. The source
     * is a few hundred bytes more on the wire; Redis finds the compiled
     * script by its hash. */
    int argc = lock__argv(cl, LOCK__RELEASE, 1, keys, 1, args, 2, argv, nk);
    if (redisAppendCommandArgv(cl->ctx, argc, argv, NULL) != REDIS_OK) {
        return lock__fail(cl, LOCK_ESYS, "release: out of memory");
    }
    /* Written out now, whole (a blocking socket with the command timeout):
     * the release must not wait for this connection's next command. */
    int done = 0;
    for (int i = 0; !done; i++) {
        if (redisBufferWrite(cl->ctx, &done) != REDIS_OK || i > 1000) {
            return lock__fail(cl, LOCK_EIO, "release");
        }
    }
    cl->pending = 1;
    memcpy(cl->pend_key, lease->key, sizeof(cl->pend_key));
    return LOCK_OK;
}

int lock_check(lock_client_t *cl, const lock_lease_t *lease) {
    const char *argv[] = {"GET", lease->key};
    redisReply *r = lock__command(cl, 2, argv);
    if (r == NULL) {
        return LOCK_ERR;
    }
    int held =
        r->type == REDIS_REPLY_STRING && strcmp(r->str, lease->token) == 0;
    freeReplyObject(r);
    return held;
}

int lock_raise_fence(lock_client_t *cl, const char *coupon, int64_t floor,
                     int64_t *now_at) {
    char key[LOCK_KEY_MAX], fl[24];
    snprintf(key, sizeof(key), "coupon:{%s}:fence", coupon);
    snprintf(fl, sizeof(fl), "%lld", (long long)floor);
    const char *keys[] = {key};
    const char *args[] = {fl};
    redisReply *r = lock__eval(cl, LOCK__RAISE, keys, 1, args, 1);
    if (r == NULL) {
        return LOCK_ERR;
    }
    if (r->type != REDIS_REPLY_INTEGER) {
        return lock__bad_reply(cl, r, "raise fence");
    }
    *now_at = r->integer;
    freeReplyObject(r);
    return LOCK_OK;
}

int lock_ping(lock_client_t *cl) {
    const char *argv[] = {"PING"};
    redisReply *r = lock__command(cl, 1, argv);
    if (r == NULL) {
        return LOCK_ERR;
    }
    int ok = r->type == REDIS_REPLY_STATUS;
    freeReplyObject(r);
    return ok ? LOCK_OK : lock__fail(cl, LOCK_EPROTO, "PING: bad reply");
}
