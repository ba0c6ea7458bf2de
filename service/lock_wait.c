/*
 * lock_wait.c: waiting for a busy lock without spinning.
 *
 * How waiters wake. One subscriber thread per Redis node (one in all with a
 * single node, N under Redlock) holds one connection to its node and is
 * subscribed to coupon:{R}:released for exactly the resources R that have
 * waiters in this process, or had a grant here within the last second
 * (LOCK_WAIT__LINGER_NS: the handoff below counts the messages that follow
 * our release); after that it unsubscribes. Every release script PUBLISHes on
 * that channel in the same atomic step as its DEL. The waiters of R form a FIFO
 * queue; each release message wakes ONE of them, the oldest not yet woken
 * (no herd: the others stay asleep, since only one can win anyway). A new
 * claim that finds subscribed waiters queued joins the tail instead of
 * trying first, so a local newcomer does not overtake a local waiter.
 *
 * Why subscribe before the attempt. A claim first tries once without any of
 * this (the uncontended claim sends Redis nothing extra). When refused, it
 * joins the queue, which subscribes, and WAITS FOR THE CONFIRMATION, and only
 * then tries again, and only after that second refusal does it sleep. A release
 * that happens between the first refusal and the subscription sends its
 * message to nobody; the attempt after the confirmation sees the lock free
 * instead. Every release after the confirmation reaches our subscriber. So
 * no release is lost in the gap, and no wake is lost either: a wake that
 * arrives while the waiter is trying is kept in the waiter and its next
 * sleep returns at once.
 *
 * Under Redlock a release deletes the key on (at least) a majority of the
 * nodes, and each of them announces it. A resource counts as subscribed
 * once a majority of the nodes confirmed: then any release, announced by a
 * majority, reaches at least one of our subscriptions (two majorities
 * share a node). The announcement carries the released token, and the
 * resource remembers the last LOCK_WAIT__NSEEN tokens announced: the
 * copies of one release from the other nodes are dropped, so a release
 * still wakes one waiter, not one per node. When a node's subscription
 * comes (back) while fewer than a majority were confirmed, releases may
 * have gone by unheard, so the waiters already queued are woken once.
 *
 * What cannot be lost. A waiter woken that leaves without the lock (its
 * deadline passed before it could try, or its attempt failed on an error)
 * passes the wake on to the next waiter, so that a release is never spent on
 * somebody who is gone. When the subscriber connects or reconnects (after
 * CLIENT KILL, a Redis restart), every waiter already queued is woken once:
 * releases in the outage reached nobody. And a message can be lost anyway (a
 * release by TTL expiry publishes nothing; a DEL by an operator neither), so
 * the head of each queue also tries again every COUPON_LOCK_RECHECK_MS (at
 * most 250 ms). Not the holder's PTTL: a lease the watchdog renews always
 * shows nearly the whole TTL, longer than any claim's deadline. Only the
 * head re-checks: the others are behind it in the FIFO anyway, and N
 * re-checking waiters would be N times the load for no grant. (While its
 * queue is not subscribed on a majority, or too few subscribers are
 * connected, every waiter re-checks: no message would wake it.)
 *
 * Fairness across processes, bounded by design. Wake-one and FIFO are local;
 * between processes the woken heads race for the key. The process that just
 * released has the edge: its next claim (or its woken head) runs without a
 * network hop of notice, and could keep the lock round after round while
 * the other replicas' waiters always find it taken. The release script
 * therefore returns PUBLISH's receiver count. Receivers beyond our own
 * subscriber connection (which counts one when this process is subscribed
 * to the channel: it has waiters, or had a grant within the linger) are
 * other processes waiting: K of them. Then
 * this process's own claims of that resource, queued or new, hold back
 * before their attempt until our subscriber has seen K more release
 * messages of the resource than our own (each is another process's grant
 * come and gone), or until the lock has been idle for a handoff window:
 * LOCK_WAIT__HANDOFF_NS (10 ms, far above a LAN notification plus an
 * acquire) since our release or the last message, whichever came later.
 * Every process that had the lock holds back in turn, so while the others
 * keep trying the grants go round the processes, each once per round: a
 * claim waits at most one round for its process's next turn, instead of a
 * geometric number of lost races (which is what made a closed loop's p99
 * several times its p50). The bound: while others wait, this process does
 * not take the lock again before each of them had it, unless the lock
 * stays idle for the window. The count is read with
 * the release's reply, which is read late (lock.c sends the release at once
 * and reads its reply before the next command on that connection), so the
 * hint may be a release or a few old; on a hot coupon, where this matters,
 * whether others wait changes slowly, a stale "others wait" costs one
 * window of an idle lock at most, and a stale "nobody waits" one grant out
 * of turn. Under Redlock every node that held the lock answers the
 * release with its own count; each, less our own subscription on that
 * node, counts the same other processes (they subscribe on every node),
 * so the hint is the maximum over the nodes that answered. The hint lives
 * in a fixed table of LOCK_WAIT__NFAIR slots
 * indexed by the resource's hash; a collision mixes two resources' hints,
 * which costs fairness, never safety.
 *
 * Threads and ownership. One mutex guards the resources, their queues and
 * the subscriber's state. The subscriber thread is the only user of its
 * Redis connection; the waiters ask it for a (un)subscription through a
 * pipe. Resources are allocated by the first waiter and freed by the
 * subscriber thread once they have no waiters and no subscription on any
 * node (or by lock_wait_shutdown, after the subscribers have ended, once
 * they have no waiters).
 *
 * Invariant of a resource's queue (under the mutex): head and tail are both
 * NULL iff nwaiters is 0; walked from head by next, the queue is nwaiters
 * long, each waiter's prev is the one before it and its res is the
 * resource, the seq numbers grow (FIFO: join order), and it ends at tail.
 * lock_wait__queue_ok checks the ends in O(1) at every join and leave, and
 * when a resource is freed; lock_wait__queue_sanity walks the queue at each
 * join and leave in a COUPONSVC_DEBUG_SANITY build.
 */
#include "lock_wait.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fault.h"
#include "lock.h"
#include "lock_backend.h"
#include "lock_sentinel.h"
#include "log.h"
#include "metrics.h"
#include "mono.h"

#define LOCK_WAIT__HANDOFF_NS (10 * MONO_MS)
#define LOCK_WAIT__LINGER_NS (1000 * MONO_MS)
#define LOCK_WAIT__NBUCKETS 64
#define LOCK_WAIT__NFAIR 256
#define LOCK_WAIT__RETRY_NS (100 * MONO_MS) /* between subscriber connects */
#define LOCK_WAIT__NSEEN 8 /* release tokens remembered per resource */

typedef enum lock_wait__state {
    LOCK_WAIT__NONE = 0, /* not subscribed, nothing asked */
    LOCK_WAIT__PENDING,  /* SUBSCRIBE sent, no confirmation yet */
    LOCK_WAIT__SUBSCRIBED,
    LOCK_WAIT__UNSUB, /* UNSUBSCRIBE sent, no confirmation yet */
} lock_wait__state_t;

typedef struct lock_wait__res {
    struct lock_wait__res *hnext; /* hash chain */
    char channel[LOCK_KEY_MAX];   /* coupon:{R}:released */
    lock_waiter_t *head, *tail;   /* FIFO, oldest first */
    int nwaiters;
    uint64_t next_seq; /* the seq of the next waiter to join */
    lock_wait__state_t state[LOCK_MAX_NODES];        /* per node */
    char seen[LOCK_WAIT__NSEEN][LOCK_TOKEN_HEX + 1]; /* last tokens heard */
    int seen_next;                                   /* ring position */
    int64_t linger_ns; /* monotonic: stay subscribed without waiters until
                          then (a grant here was recent) */
} lock_wait__res_t;

typedef struct lock_wait__fair {
    uint64_t hash;       /* of the resource's channel; 0 = unused */
    int64_t released_ns; /* monotonic: when we last sent a release */
    int64_t last_ns;     /* that, or the last release message seen since */
    int self;            /* our subscriber was on the channel then: our own
                            release's message comes back to us */
    int others;          /* other processes that release reached */
    int answers;         /* nodes whose count came since that release */
    int msgs;            /* release messages our subscriber saw since */
} lock_wait__fair_t;

static struct {
    pthread_mutex_t mu;
    int configured, poll;
    int64_t recheck_ns;
    int nnodes, majority; /* the nodes, and how many make a majority */
    cfg_addr_t addr[LOCK_MAX_NODES];
    uint32_t timeout_ms;

    int started;  /* the subscriber threads run */
    int stopping; /* lock_wait_shutdown: the threads must end */
    pthread_t thread[LOCK_MAX_NODES];
    int up[LOCK_MAX_NODES]; /* node's connection open and authenticated */
    int wake_fd[LOCK_MAX_NODES][2]; /* waiters -> subscriber i: "look at
                                       the table" */
    lock_wait__res_t *buckets[LOCK_WAIT__NBUCKETS];
    lock_wait__fair_t fair[LOCK_WAIT__NFAIR];
    pthread_cond_t handoff; /* broadcast on each release message */
} lock_wait__g = {.mu = PTHREAD_MUTEX_INITIALIZER, .nnodes = 1, .majority = 1};

/* FNV-1a, never 0 (0 marks an unused hint slot). */
static uint64_t lock_wait__hash(const char *s) {
    uint64_t h = 1469598103934665603ULL;
    for (; *s != '\0'; s++) {
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    }
    return h == 0 ? 1 : h;
}

static void lock_wait__channel(const char *resource, char *out) {
    snprintf(out, LOCK_KEY_MAX, "coupon:{%s}:released", resource);
}

/* Under the mutex. The resource of channel, or NULL. */
static lock_wait__res_t *lock_wait__find(const char *channel, uint64_t h) {
    lock_wait__res_t *r = lock_wait__g.buckets[h % LOCK_WAIT__NBUCKETS];
    while (r != NULL && strcmp(r->channel, channel) != 0) {
        r = r->hnext;
    }
    return r;
}

int lock_wait__queue_ok(const lock_waiter_t *head, const lock_waiter_t *tail,
                        int n) {
    if (n < 0 || (n == 0) != (head == NULL) ||
        (head == NULL) != (tail == NULL)) {
        return 0;
    }
    return head == NULL || (head->prev == NULL && tail->next == NULL);
}

int lock_wait__queue_sanity(const lock_waiter_t *head,
                            const lock_waiter_t *tail, int n) {
    int len = 0;
    const lock_waiter_t *prev = NULL;
    for (const lock_waiter_t *w = head; w != NULL; w = w->next) {
        if (++len > n || w->prev != prev || w->res != head->res ||
            (prev != NULL && w->seq <= prev->seq)) {
            return 0;
        }
        prev = w;
    }
    return len == n && prev == tail && lock_wait__queue_ok(head, tail, n);
}

/* Under the mutex: r's queue, checked in O(1), or walked whole in a
 * COUPONSVC_DEBUG_SANITY build. */
#ifdef COUPONSVC_DEBUG_SANITY
#define LOCK_WAIT__QUEUE_CHECK(r)                                              \
    assert(lock_wait__queue_sanity((r)->head, (r)->tail, (r)->nwaiters) &&     \
           ((r)->head == NULL || (r)->head->res == (r)))
#else
#define LOCK_WAIT__QUEUE_CHECK(r)                                              \
    assert(lock_wait__queue_ok((r)->head, (r)->tail, (r)->nwaiters))
#endif

/* Tells every subscriber thread to look at the table again. A full pipe
 * already carries a wake, so EAGAIN is fine. */
static void lock_wait__kick(void) {
    char b = 1;
    for (int i = 0; i < lock_wait__g.nnodes; i++) {
        ssize_t n = write(lock_wait__g.wake_fd[i][1], &b, 1);
        (void)n;
    }
}

/* Under the mutex: 1 when r is subscribed on a majority of the nodes, so
 * that every release reaches us. */
static int lock_wait__subscribed(const lock_wait__res_t *r) {
    int n = 0;
    for (int i = 0; i < lock_wait__g.nnodes; i++) {
        n += r->state[i] == LOCK_WAIT__SUBSCRIBED;
    }
    return n >= lock_wait__g.majority;
}

/* Under the mutex: 1 when a majority of the subscribers are connected. */
static int lock_wait__up(void) {
    int n = 0;
    for (int i = 0; i < lock_wait__g.nnodes; i++) {
        n += lock_wait__g.up[i];
    }
    return n >= lock_wait__g.majority;
}

/* Under the mutex: 1 when token was announced for r before (another
 * node's copy of the same release); otherwise remembers it. With one node
 * every message counts. */
static int lock_wait__seen(lock_wait__res_t *r, const char *token) {
    if (lock_wait__g.nnodes == 1) {
        return 0;
    }
    for (int i = 0; i < LOCK_WAIT__NSEEN; i++) {
        if (strcmp(r->seen[i], token) == 0) {
            return 1;
        }
    }
    snprintf(r->seen[r->seen_next], sizeof(r->seen[0]), "%s", token);
    r->seen_next = (r->seen_next + 1) % LOCK_WAIT__NSEEN;
    return 0;
}

/* A condition timed wait until abs_ns on the monotonic clock. */
static void lock_wait__timedwait(pthread_cond_t *c, int64_t abs_ns) {
    struct timespec ts = mono_ts_from_ns(abs_ns);
    pthread_cond_timedwait(c, &lock_wait__g.mu, &ts);
}

/* ---------------------------------------------------------- configure --- */

void lock_wait_config(const cfg_t *cfg, int nnodes) {
    int poll = cfg->lock_wait_poll;
    uint32_t recheck_ms = cfg->lock_recheck_ms;
    uint32_t timeout_ms = cfg->redis_timeout_ms;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_lock(&lock_wait__g.mu);
    if (!lock_wait__g.configured) {
        pthread_cond_init(&lock_wait__g.handoff, &ca);
    }
    pthread_condattr_destroy(&ca);
    lock_wait__g.poll = poll;
    lock_wait__g.recheck_ns = lock_wait__recheck_ns(recheck_ms);
    lock_wait__g.nnodes = nnodes;
    lock_wait__g.majority = nnodes / 2 + 1;
    for (int i = 0; i < nnodes; i++) {
        lock_wait__g.addr[i] = cfg->redis[i];
        lock_wait__g.wake_fd[i][0] = lock_wait__g.wake_fd[i][1] = -1;
    }
    lock_wait__g.timeout_ms = timeout_ms;
    lock_wait__g.configured = 1;
    pthread_mutex_unlock(&lock_wait__g.mu);
}

int lock_wait_pubsub(void) {
    pthread_mutex_lock(&lock_wait__g.mu);
    int on = lock_wait__g.configured && !lock_wait__g.poll;
    pthread_mutex_unlock(&lock_wait__g.mu);
    return on;
}

/* ---------------------------------------------------------- subscriber --- */

/* Under the mutex: every resource loses its subscription on node (the
 * connection is gone); they are subscribed again on the next connect. */
static void lock_wait__all_unsubscribed(int node) {
    for (int b = 0; b < LOCK_WAIT__NBUCKETS; b++) {
        for (lock_wait__res_t *r = lock_wait__g.buckets[b]; r != NULL;
             r = r->hnext) {
            r->state[node] = LOCK_WAIT__NONE;
        }
    }
}

/* Under the mutex: 1 when r has no subscription on any node, asked or
 * confirmed. */
static int lock_wait__unsubscribed(const lock_wait__res_t *r) {
    for (int i = 0; i < lock_wait__g.nnodes; i++) {
        if (r->state[i] != LOCK_WAIT__NONE) {
            return 0;
        }
    }
    return 1;
}

/* Under the mutex: the wake of one waiter, the oldest without a wake. */
static void lock_wait__wake_one(lock_wait__res_t *r, int cause) {
    for (lock_waiter_t *w = r->head; w != NULL; w = w->next) {
        if (w->wake == LOCK_WAKE_NONE && w->joined) {
            w->wake = cause;
            pthread_cond_signal(&w->cond);
            return;
        }
    }
}

/* Connects and authenticates like every other connection of the process.
 * *addr (the caller's): the configured address; afterwards the one
 * connected to (behind Sentinel, the master it named). Returns a new
 * context, or NULL (logged). Called without the mutex. */
static redisContext *lock_wait__connect(cfg_addr_t *addr, uint32_t timeout_ms) {
    /* Behind Sentinel, every (re)connect asks where the master is now. */
    cfg_addr_t at = *addr;
    char serr[160];
    if (lock_sentinel_resolve(&at, serr, sizeof(serr)) < 0) {
        log_warn("lock.subscriber_sentinel", "err=\"%s\"", serr);
        return NULL;
    }
    *addr = at;
    struct timeval tv = {.tv_sec = timeout_ms / 1000,
                         .tv_usec = (timeout_ms % 1000) * 1000};
    redisContext *c = redisConnectWithTimeout(at.host, at.port, tv);
    if (c == NULL || c->err != 0 || redisSetTimeout(c, tv) != REDIS_OK ||
        redisEnableKeepAlive(c) != REDIS_OK) {
        if (c != NULL) {
            redisFree(c);
        }
        return NULL;
    }
    if (lock_redis_wants_auth()) {
        const char *argv[3];
        int argc = lock_redis_auth_argv(argv);
        redisReply *r = redisCommandArgv(c, argc, argv, NULL);
        int ok = r != NULL && r->type == REDIS_REPLY_STATUS;
        if (!ok) {
            log_warn("lock.subscriber_auth", "err=\"%s\"",
                     r != NULL && r->type == REDIS_REPLY_ERROR ? r->str
                                                               : c->errstr);
        }
        if (r != NULL) {
            freeReplyObject(r);
        }
        if (!ok) {
            redisFree(c);
            return NULL;
        }
    }
    return c;
}

/* Under the mutex: appends the (un)subscriptions the table needs on node
 * and frees resources nobody needs. Returns the number of commands
 * appended, or -1 on a hiredis failure. */
static int lock_wait__sync(redisContext *c, int node) {
    int n = 0;
    int64_t now = mono_ns();
    for (int b = 0; b < LOCK_WAIT__NBUCKETS; b++) {
        lock_wait__res_t **pp = &lock_wait__g.buckets[b];
        while (*pp != NULL) {
            lock_wait__res_t *r = *pp;
            const char *cmd = NULL;
            if (r->nwaiters > 0 && r->state[node] == LOCK_WAIT__NONE) {
                cmd = "SUBSCRIBE";
                r->state[node] = LOCK_WAIT__PENDING;
            } else if (r->nwaiters == 0 &&
                       r->state[node] == LOCK_WAIT__SUBSCRIBED &&
                       now >= r->linger_ns) {
                cmd = "UNSUBSCRIBE";
                r->state[node] = LOCK_WAIT__UNSUB;
            } else if (r->nwaiters == 0 && lock_wait__unsubscribed(r)) {
                assert(r->head == NULL &&
                       lock_wait__queue_ok(NULL, r->tail, r->nwaiters));
                *pp = r->hnext;
                free(r);
                continue;
            }
            if (cmd != NULL) {
                const char *argv[2] = {cmd, r->channel};
                if (redisAppendCommandArgv(c, 2, argv, NULL) != REDIS_OK) {
                    return -1;
                }
                n++;
            }
            pp = &r->hnext;
        }
    }
    return n;
}

/* Under the mutex: one reply from node's subscription. */
static void lock_wait__on_reply(const redisReply *rep, int node) {
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements < 3 ||
        rep->element[0]->type != REDIS_REPLY_STRING ||
        rep->element[1]->type != REDIS_REPLY_STRING) {
        return; /* e.g. an error reply: logged by the caller */
    }
    const char *kind = rep->element[0]->str;
    const char *channel = rep->element[1]->str;
    lock_wait__res_t *r = lock_wait__find(channel, lock_wait__hash(channel));
    if (r == NULL) {
        return;
    }
    if (strcmp(kind, "message") == 0) {
        if (rep->element[2]->type == REDIS_REPLY_STRING &&
            lock_wait__seen(r, rep->element[2]->str)) {
            return; /* another node's copy of a release already heard */
        }
        uint64_t h = lock_wait__hash(channel);
        lock_wait__fair_t *f = &lock_wait__g.fair[h % LOCK_WAIT__NFAIR];
        if (f->hash == h) {
            f->msgs++;
            f->last_ns = mono_ns();
            pthread_cond_broadcast(&lock_wait__g.handoff);
        }
        if (r->state[node] == LOCK_WAIT__SUBSCRIBED) {
            lock_wait__wake_one(r, LOCK_WAKE_MESSAGE);
        }
    } else if (strcmp(kind, "subscribe") == 0) {
        int before = lock_wait__subscribed(r);
        r->state[node] = LOCK_WAIT__SUBSCRIBED;
        /* The waiters still in lock_wait_join take a majority of these as
         * their go. The ones already past it were queued while too few
         * nodes listened (the subscribers were connecting, or
         * reconnecting): a release in that time may have reached nobody,
         * so each is woken once. */
        for (lock_waiter_t *w = r->head; w != NULL; w = w->next) {
            if (!before && w->joined && w->wake == LOCK_WAKE_NONE) {
                w->wake = LOCK_WAKE_RECONNECT;
            }
            pthread_cond_signal(&w->cond);
        }
    } else if (strcmp(kind, "unsubscribe") == 0) {
        r->state[node] = LOCK_WAIT__NONE; /* sync frees or resubscribes */
    }
}

/* Under no lock: 1 once lock_wait_shutdown asked the thread to end. */
static int lock_wait__stopping(void) {
    pthread_mutex_lock(&lock_wait__g.mu);
    int stop = lock_wait__g.stopping;
    pthread_mutex_unlock(&lock_wait__g.mu);
    return stop;
}

/* One subscriber thread: node's connection. */
static void *lock_wait__run(void *arg) {
    int node = (int)(intptr_t)arg;
    redisContext *c = NULL;
    int ever = 0;    /* connected before: this connect is a reconnect */
    cfg_addr_t addr; /* where c is connected */
    while (!lock_wait__stopping()) {
        if (c == NULL) {
            pthread_mutex_lock(&lock_wait__g.mu);
            addr = lock_wait__g.addr[node];
            uint32_t tmo = lock_wait__g.timeout_ms;
            pthread_mutex_unlock(&lock_wait__g.mu);
            c = lock_wait__connect(&addr, tmo);
            if (c == NULL) {
                mono_sleep_ns(LOCK_WAIT__RETRY_NS);
                continue;
            }
            pthread_mutex_lock(&lock_wait__g.mu);
            lock_wait__g.up[node] = 1;
            pthread_mutex_unlock(&lock_wait__g.mu);
            log_info("lock.subscriber_connected", "node=%s:%u reconnect=%d",
                     addr.host, addr.port, ever);
            ever = 1;
        }

        pthread_mutex_lock(&lock_wait__g.mu);
        int rc = lock_wait__sync(c, node);
        pthread_mutex_unlock(&lock_wait__g.mu);
        int done = 0, bad = rc < 0;
        while (!bad && !done) {
            bad = redisBufferWrite(c, &done) != REDIS_OK;
        }

        struct pollfd pf[2] = {
            {.fd = c->fd, .events = POLLIN},
            {.fd = lock_wait__g.wake_fd[node][0], .events = POLLIN}};
        if (!bad && poll(pf, 2, 1000) < 0 && errno != EINTR) {
            bad = 1;
        }
        if (!bad && (pf[1].revents & POLLIN)) {
            char buf[64];
            while (read(lock_wait__g.wake_fd[node][0], buf, sizeof(buf)) > 0) {
            }
        }
        if (!bad && (pf[0].revents & (POLLIN | POLLHUP | POLLERR))) {
            bad = redisBufferRead(c) != REDIS_OK;
            for (;;) {
                void *reply = NULL;
                if (bad || redisGetReplyFromReader(c, &reply) != REDIS_OK) {
                    bad = 1;
                    break;
                }
                if (reply == NULL) {
                    break;
                }
                redisReply *rep = reply;
                if (rep->type == REDIS_REPLY_ERROR) {
                    /* NOPERM on a channel the ACL does not grant, say:
                     * the waiters fall back on the re-check. */
                    log_warn("lock.subscriber_error", "err=\"%s\"", rep->str);
                }
                pthread_mutex_lock(&lock_wait__g.mu);
                lock_wait__on_reply(rep, node);
                pthread_mutex_unlock(&lock_wait__g.mu);
                freeReplyObject(rep);
            }
        }
        if (bad) {
            log_warn("lock.subscriber_lost", "node=%s:%u err=\"%s\"", addr.host,
                     addr.port,
                     c->errstr[0] != '\0' ? c->errstr : "write failed");
            redisFree(c);
            c = NULL;
            pthread_mutex_lock(&lock_wait__g.mu);
            lock_wait__g.up[node] = 0;
            lock_wait__all_unsubscribed(node);
            pthread_mutex_unlock(&lock_wait__g.mu);
        }
    }
    if (c != NULL) {
        redisFree(c);
    }
    return NULL;
}

void lock_wait_shutdown(void) {
    pthread_mutex_lock(&lock_wait__g.mu);
    int started = lock_wait__g.started;
    lock_wait__g.stopping = 1;
    pthread_mutex_unlock(&lock_wait__g.mu);
    if (!started) {
        return;
    }
    lock_wait__kick();
    for (int i = 0; i < lock_wait__g.nnodes; i++) {
        pthread_join(lock_wait__g.thread[i], NULL);
    }
    /* Resources nobody waits on are freed. A claim still waiting (one the
     * grace period gave up on) keeps its resource, and the pipe stays
     * open for its lock_wait_leave (closing it could let its number be
     * reused by a file that leave would then write into); the process is
     * about to exit. */
    pthread_mutex_lock(&lock_wait__g.mu);
    for (int b = 0; b < LOCK_WAIT__NBUCKETS; b++) {
        lock_wait__res_t **pp = &lock_wait__g.buckets[b];
        while (*pp != NULL) {
            lock_wait__res_t *r = *pp;
            if (r->nwaiters > 0) {
                pp = &r->hnext;
                continue;
            }
            assert(r->head == NULL &&
                   lock_wait__queue_ok(NULL, r->tail, r->nwaiters));
            *pp = r->hnext;
            free(r);
        }
    }
    lock_wait__g.started = 0;
    for (int i = 0; i < lock_wait__g.nnodes; i++) {
        lock_wait__g.up[i] = 0; /* the ones left re-check on their timer */
    }
    pthread_mutex_unlock(&lock_wait__g.mu);
}

/* Under the mutex: starts the subscriber threads once, one per node. 0, or
 * -1 (then the waiters live on the re-check alone). */
static int lock_wait__start(void) {
    if (lock_wait__g.started) {
        return 0;
    }
    if (lock_wait__g.stopping) {
        return -1; /* shutting down: the re-check is enough */
    }
    int n = lock_wait__g.nnodes, made = 0, piped = 0;
    for (; piped < n; piped++) {
        if (pipe2(lock_wait__g.wake_fd[piped], O_NONBLOCK | O_CLOEXEC) != 0) {
            break;
        }
    }
    for (; piped == n && made < n; made++) {
        if (pthread_create(&lock_wait__g.thread[made], NULL, lock_wait__run,
                           (void *)(intptr_t)made) != 0) {
            break;
        }
    }
    if (made < n) {
        /* Threads already started stop at once and are joined; the pipes
         * go. */
        lock_wait__g.stopping = 1;
        pthread_mutex_unlock(&lock_wait__g.mu);
        lock_wait__kick();
        for (int i = 0; i < made; i++) {
            pthread_join(lock_wait__g.thread[i], NULL);
        }
        pthread_mutex_lock(&lock_wait__g.mu);
        for (int i = 0; i < piped; i++) {
            close(lock_wait__g.wake_fd[i][0]);
            close(lock_wait__g.wake_fd[i][1]);
            lock_wait__g.wake_fd[i][0] = lock_wait__g.wake_fd[i][1] = -1;
        }
        return -1;
    }
    lock_wait__g.started = 1;
    return 0;
}

/* ---------------------------------------------------------- arithmetic --- */

int64_t lock_wait__handoff_until(int64_t last_ns, int64_t deadline_ns) {
    int64_t until = last_ns + LOCK_WAIT__HANDOFF_NS;
    return lock_wait__until(until, deadline_ns);
}

int lock_wait__handoff_over(int others, int msgs, int self, int64_t now_ns,
                            int64_t until_ns) {
    return others <= 0 || msgs >= self + others || now_ns >= until_ns;
}

int64_t lock_wait__until(int64_t at_ns, int64_t deadline_ns) {
    return at_ns < deadline_ns ? at_ns : deadline_ns;
}

int64_t lock_wait__recheck_ns(uint32_t recheck_ms) {
    return (int64_t)(recheck_ms > 0 ? recheck_ms : 1) * MONO_MS;
}

/* ------------------------------------------------------------- waiters --- */

int lock_wait_has_waiters(const char *resource) {
    char ch[LOCK_KEY_MAX];
    lock_wait__channel(resource, ch);
    pthread_mutex_lock(&lock_wait__g.mu);
    lock_wait__res_t *r = lock_wait__find(ch, lock_wait__hash(ch));
    int has = r != NULL && r->nwaiters > 0;
    pthread_mutex_unlock(&lock_wait__g.mu);
    return has;
}

void lock_wait_holdback(const char *resource, int64_t deadline_ns) {
    char ch[LOCK_KEY_MAX];
    lock_wait__channel(resource, ch);
    uint64_t h = lock_wait__hash(ch);
    pthread_mutex_lock(&lock_wait__g.mu);
    const lock_wait__fair_t *f = &lock_wait__g.fair[h % LOCK_WAIT__NFAIR];
    /* Our own release's message comes back first (when we were subscribed);
     * each further one means another process has had the lock and released
     * it. Once as many have as were waiting, every one of them has had its
     * turn (a process that had its turn holds back in turn), so the grants
     * go round the processes instead of to whoever wins each race: the
     * handoff is done. The window restarts with every message, so a long
     * batch elsewhere does not end it; only a lock left idle that long
     * does (a waiter gone, a message lost). */
    for (;;) {
        int64_t until = lock_wait__handoff_until(f->last_ns, deadline_ns);
        if (f->hash != h || lock_wait__handoff_over(f->others, f->msgs, f->self,
                                                    mono_ns(), until)) {
            break;
        }
        lock_wait__timedwait(&lock_wait__g.handoff, until);
    }
    pthread_mutex_unlock(&lock_wait__g.mu);
}

void lock_wait_note_release(const char *resource) {
    char ch[LOCK_KEY_MAX];
    lock_wait__channel(resource, ch);
    uint64_t h = lock_wait__hash(ch);
    pthread_mutex_lock(&lock_wait__g.mu);
    lock_wait__fair_t *f = &lock_wait__g.fair[h % LOCK_WAIT__NFAIR];
    if (f->hash != h) {
        f->hash = h;
        f->others = 0;
    }
    const lock_wait__res_t *r = lock_wait__find(ch, h);
    /* Our own release's message comes back once (the copies of the
     * other nodes are dropped as already heard). */
    f->self = r != NULL && lock_wait__subscribed(r);
    f->released_ns = f->last_ns = mono_ns();
    f->msgs = 0;
    f->answers = 0;
    pthread_mutex_unlock(&lock_wait__g.mu);
}

void lock_wait_note_receivers(const char *resource, long long receivers) {
    lock_wait_note_receivers_at(resource, 0, receivers);
}

void lock_wait_note_receivers_at(const char *resource, int node,
                                 long long receivers) {
    char ch[LOCK_KEY_MAX];
    lock_wait__channel(resource, ch);
    uint64_t h = lock_wait__hash(ch);
    pthread_mutex_lock(&lock_wait__g.mu);
    lock_wait__res_t *r = lock_wait__find(ch, h);
    long long own = node >= 0 && node < lock_wait__g.nnodes && r != NULL &&
                            r->state[node] == LOCK_WAIT__SUBSCRIBED
                        ? 1
                        : 0;
    lock_wait__fair_t *f = &lock_wait__g.fair[h % LOCK_WAIT__NFAIR];
    if (f->hash == h) {
        /* Every other waiting process subscribes on every node it can
         * reach, so each node's count (less our own subscription there)
         * counts the same processes: the maximum over the nodes that
         * answered, not the sum, which would count each N times. The
         * first answer after a release replaces the old hint. */
        int others = receivers > own ? (int)(receivers - own) : 0;
        if (f->answers == 0 || others > f->others) {
            if (others != f->others) {
                log_debug("lock.handoff_hint",
                          "resource=%s others=%d was=%d node=%d", resource,
                          others, f->others, node);
            }
            f->others = others;
        }
        f->answers++;
    }
    pthread_mutex_unlock(&lock_wait__g.mu);
}

int lock_wait_join(lock_waiter_t *w, const char *resource,
                   int64_t deadline_ns) {
    fault_pause(FAULT_BEFORE_SUBSCRIBE);
    memset(w, 0, sizeof(*w));
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->cond, &ca);
    pthread_condattr_destroy(&ca);

    char ch[LOCK_KEY_MAX];
    lock_wait__channel(resource, ch);
    uint64_t h = lock_wait__hash(ch);
    pthread_mutex_lock(&lock_wait__g.mu);
    lock_wait__res_t *r = lock_wait__find(ch, h);
    if (r == NULL && (r = calloc(1, sizeof(*r))) != NULL) {
        memcpy(r->channel, ch, sizeof(r->channel));
        r->hnext = lock_wait__g.buckets[h % LOCK_WAIT__NBUCKETS];
        lock_wait__g.buckets[h % LOCK_WAIT__NBUCKETS] = r;
    }
    if (r == NULL) {
        /* Out of memory: not queued; lock_wait_sleep then re-checks. */
        w->joined = 1;
        pthread_mutex_unlock(&lock_wait__g.mu);
        metrics_add_lock_waiters(1);
        return 1;
    }
    w->res = r;
    w->seq = r->next_seq++;
    w->prev = r->tail;
    if (r->tail != NULL) {
        r->tail->next = w;
    } else {
        r->head = w;
    }
    r->tail = w;
    r->nwaiters++;
    LOCK_WAIT__QUEUE_CHECK(r);
    metrics_add_lock_waiters(1);

    /* Already subscribed, with waiters ahead of us: every release from
     * now on reaches our subscriber and wakes them in turn, so trying now
     * would only overtake them (and cost Redis a refused attempt). */
    int attempt = r->head == w || !lock_wait__subscribed(r);
    if (lock_wait__start() == 0 && !lock_wait__subscribed(r)) {
        lock_wait__kick();
        int64_t until = lock_wait__until(
            mono_ns() + (int64_t)lock_wait__g.timeout_ms * MONO_MS,
            deadline_ns);
        /* Waits for the confirmation, bounded: a subscriber that cannot
         * connect confirms nothing, and the re-check still works. */
        while (!lock_wait__subscribed(r) && mono_ns() < until) {
            lock_wait__timedwait(&w->cond, until);
        }
    }
    w->joined = 1;
    pthread_mutex_unlock(&lock_wait__g.mu);
    return attempt;
}

int lock_wait_sleep(lock_waiter_t *w, int64_t deadline_ns) {
    pthread_mutex_lock(&lock_wait__g.mu);
    int64_t recheck_at = mono_ns() + lock_wait__g.recheck_ns;
    int cause = LOCK_WAKE_NONE;
    for (;;) {
        if (w->wake != LOCK_WAKE_NONE) {
            cause = w->wake;
            w->wake = LOCK_WAKE_NONE;
            break;
        }
        int64_t now = mono_ns();
        if (now >= deadline_ns) {
            break;
        }
        if (now >= recheck_at) {
            /* Only the head re-checks (or anyone, when not queued or with
             * the subscriber down: nobody would wake them). */
            lock_wait__res_t *r = w->res;
            if (r == NULL || r->head == w || !lock_wait__up() ||
                !lock_wait__subscribed(r)) {
                cause = LOCK_WAKE_RECHECK;
                break;
            }
            recheck_at = now + lock_wait__g.recheck_ns;
        }
        lock_wait__timedwait(&w->cond,
                             lock_wait__until(recheck_at, deadline_ns));
    }
    pthread_mutex_unlock(&lock_wait__g.mu);
    static const metrics_counter_t m[] = {
        [LOCK_WAKE_MESSAGE] = M_LOCK_WAKE_MESSAGE,
        [LOCK_WAKE_RECHECK] = M_LOCK_WAKE_RECHECK,
        [LOCK_WAKE_RECONNECT] = M_LOCK_WAKE_RECONNECT,
    };
    if (cause != LOCK_WAKE_NONE) {
        metrics_inc(m[cause]);
    }
    return cause;
}

void lock_wait_leave(lock_waiter_t *w, int granted, int errored) {
    pthread_mutex_lock(&lock_wait__g.mu);
    lock_wait__res_t *r = w->res;
    if (r != NULL) {
        LOCK_WAIT__QUEUE_CHECK(r);
        int pass = !granted && (w->wake != LOCK_WAKE_NONE || errored);
        if (w->prev != NULL) {
            w->prev->next = w->next;
        } else {
            r->head = w->next;
        }
        if (w->next != NULL) {
            w->next->prev = w->prev;
        } else {
            r->tail = w->prev;
        }
        r->nwaiters--;
        LOCK_WAIT__QUEUE_CHECK(r);
        if (pass) {
            lock_wait__wake_one(r, LOCK_WAKE_MESSAGE);
        }
        if (granted) {
            /* Stay subscribed through our turn and a while after it: the
             * handoff counts the release messages that follow ours, and a
             * subscription dropped now would see none of them. The
             * subscriber drops it on its next round after the linger (it
             * wakes at least once a second). */
            r->linger_ns = mono_ns() + LOCK_WAIT__LINGER_NS;
        } else if (r->nwaiters == 0 && lock_wait__g.started) {
            lock_wait__kick(); /* unsubscribe */
        }
        w->res = NULL;
    }
    pthread_mutex_unlock(&lock_wait__g.mu);
    metrics_add_lock_waiters(-1);
    pthread_cond_destroy(&w->cond);
}
