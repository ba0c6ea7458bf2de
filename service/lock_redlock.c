/*
 * lock_redlock.c: the lock on N >= 3 (odd) independent Redis masters
 * (lock_redlock_backend), with fencing tokens that stay monotonic.
 *
 * The algorithm. An acquire sends the ACQUIRE script (lock_scripts.h) to
 * every node at once and is granted when a majority M = floor(N/2) + 1 says
 * yes. Each node INCRs its own fence counter in that script; the lease's
 * fence is the highest any granting node drew. Then the WRITE-BACK script
 * goes to every granting node: where our token still holds the lock, raise
 * the counter to our fence ("raised while held"). The lease is usable only
 * once a majority answered "raised while held", and only for validity =
 * TTL - elapsed - drift, elapsed counted from the acquire's send to the end
 * of the write-back, drift = TTL/100 + 2 ms (the reference algorithm's
 * allowance for the nodes' clocks running at different speeds). If either
 * step fails, the lock is released on every node at once.
 *
 * Why fences stay monotonic, with no timing assumption. Let lease A become
 * usable with fence F: a majority S_A of nodes answered "raised while held",
 * so on each node X in S_A the counter reached F at a moment when A's key
 * was still on X. Let lease B be granted later, by a majority S_B: any
 * lease acquired after A became usable, and any other whose grant on the
 * shared node below came after A's there. S_A and S_B share a node X (two
 * majorities of N always intersect). B's SET NX on X succeeded after A's,
 * so A's key was gone from X by then (released, or expired); it
 * was there when A's raise ran (the script checked it, atomically), so the
 * raise came first, and B's INCR on X (in the same script as its SET NX)
 * drew at least F + 1. B's fence is the maximum over S_B, so it is above F.
 * Nothing here depends on clocks, pauses or message delays: only on each
 * node's order of operations. Without the token check the argument breaks:
 * a raise that lands on X after B's grant there lifts the counter too late
 * for B (tests/tests.mk's UNSAFE=REDLOCK_WRITEBACK_NO_TOKEN, and without any
 * write-back, UNSAFE=REDLOCK_NO_WRITEBACK, are the negative controls).
 *
 * What breaks it: a node that loses its data (restarted empty, without
 * persistence). It forgets both A's key and its counter, and B can form a
 * majority with it and draw a fence at or below F. Then PostgreSQL's strict
 * rule (a write is accepted only with a fence strictly above the last one
 * accepted) refuses the colliding write, and the counter recovery
 * (lock_raise_fence, on every node) lifts the counters above PostgreSQL's
 * high-water mark, as on one node. Keeping a restarted node out for at least
 * the maximum TTL keeps the lock itself exclusive too.
 *
 * Mutual exclusion (two usable leases at once) is Redlock's, with its known
 * assumption: the holder stops using the lease when validity runs out by its
 * own clock, and the nodes' TTLs do not run faster than that by more than
 * the drift. The fence is what protects PostgreSQL when the assumption
 * fails (a pause, a clock jump).
 *
 * The watchdog extends on every node in one round and needs a majority,
 * else the lease is lost (a majority saying "not ours" loses it at once;
 * errors leave it to run out by its validity). Release goes to every node,
 * always. Waiting subscribes on every node (lock_wait.c).
 *
 * Rounds. Every operation is one round over the nodes: non-blocking hiredis
 * contexts (redisConnectNonBlock, redisBufferWrite, redisBufferRead), one
 * poll(2) over every socket, one deadline for the whole round (the Redis
 * timeout), connect included: not N times the timeout. A round over one
 * command per node ends as soon as its outcome is decided (a majority said
 * yes, or so many said no that no majority can say yes); a node still
 * behind keeps its connection and its replies, still owed, are read and
 * dropped at the start of the next round on that client (a node behind by
 * more than the timeout is dropped and connected afresh); a release's
 * reply, read that way too, still gives its receiver count to the
 * fairness hint (lock_wait.c). Scripts go out as
 * EVAL with their source: no SCRIPT LOAD round on each connect, no NOSCRIPT
 * fallback; Redis finds the compiled script by its hash.
 *
 * Start-up (lock_init): an even N was refused by lock.c. Here: two
 * addresses of one host and port, a node whose ROLE is not master, two
 * addresses that reach one server (the same run_id) are refused, each with
 * a message saying which and why; the topology is logged. A node that does
 * not answer at start is logged and used when it comes back; its role is not
 * checked then (an ACL user without ROLE and INFO server is logged the same
 * way; deploy/redis/couponsvc.acl grants both).
 */
#include <assert.h>
#include <errno.h>
#include <hiredis/hiredis.h>
#include <netdb.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "fault.h"
#include "lock_backend.h"
#include "lock_scripts.h"
#include "lock_wait.h"
#include "log.h"
#include "metrics.h"
#include "mono.h"

#if defined(COUPONSVC_UNSAFE_REDLOCK_WRITEBACK_NO_TOKEN)
#pragma message                                                                \
    "COUPONSVC_UNSAFE_REDLOCK_WRITEBACK_NO_TOKEN: Redlock fences may go backwards"
#elif defined(COUPONSVC_UNSAFE_REDLOCK_NO_WRITEBACK)
#pragma message                                                                \
    "COUPONSVC_UNSAFE_REDLOCK_NO_WRITEBACK: Redlock fences may go backwards"
#endif

#define LOCK_REDLOCK__MAXARGS 8

/* Release replies remembered per node, to be read late (lock_wait.c's
 * fairness hint); an older one is forgotten, which costs only a hint. */
#define LOCK_REDLOCK__NTAGS 4

/* How long a round that awaits no replies (a release) waits for nodes
 * still connecting once the rest is written out: far above a connect on a
 * LAN, far below the timeout a node dropping SYNs would cost. */
#define LOCK_REDLOCK__CONNECT_GRACE_NS (10 * MONO_MS)

/* ---------------------------------------------------------- arithmetic --- */

int lock_redlock_majority(int n) {
    int m = n / 2 + 1;
    /* The smallest count that two disjoint sets of n nodes cannot both
     * reach: more than half, and one less is not. */
    assert(2 * m > n && 2 * (m - 1) <= n);
    return m;
}

int lock_redlock__quorum_ok(int n, int yes, int no) {
    return n >= 1 && n <= LOCK_MAX_NODES && yes >= 0 && no >= 0 &&
           yes + no <= n;
}

int lock_redlock__masks_ok(int n, uint32_t yes_mask, uint32_t no_mask, int yes,
                           int no) {
    uint32_t all = n >= 32 ? 0xffffffffu : (1u << n) - 1;
    return lock_redlock__quorum_ok(n, yes, no) && (yes_mask & no_mask) == 0 &&
           (yes_mask & ~all) == 0 && (no_mask & ~all) == 0 &&
           __builtin_popcount(yes_mask) == yes &&
           __builtin_popcount(no_mask) == no;
}

int64_t lock_redlock_drift_ns(uint32_t ttl_ms) {
    return (int64_t)ttl_ms * MONO_MS / 100 + 2 * MONO_MS;
}

int64_t lock_redlock_validity_ns(uint32_t ttl_ms, int64_t elapsed_ns) {
    return (int64_t)ttl_ms * MONO_MS - elapsed_ns -
           lock_redlock_drift_ns(ttl_ms);
}

int lock_redlock_verdict(int n, int yes, int no) {
    assert(lock_redlock__quorum_ok(n, yes, no));
    int m = lock_redlock_majority(n);
    if (yes >= m) {
        return LOCK_OK;
    }
    return yes + no >= m ? LOCK_BUSY : LOCK_ERR;
}

/* --------------------------------------------------------------- types --- */

typedef struct lock_redlock__cmd {
    int argc;
    const char *argv[LOCK_REDLOCK__MAXARGS];
} lock_redlock__cmd_t;

/* A release whose reply is still to come: the reply to the command
 * numbered seq on this connection carries PUBLISH's receiver count. */
typedef struct lock_redlock__tag {
    int used;
    uint64_t seq;
    char resource[LOCK_KEY_MAX];
} lock_redlock__tag_t;

typedef struct lock_redlock__node {
    cfg_addr_t addr;
    int idx;             /* its place in COUPON_REDIS_ADDRS (and lock_wait's) */
    redisContext *c;     /* NULL while disconnected; non-blocking */
    int connecting;      /* connect(2) in progress: wait for POLLOUT */
    int owed;            /* replies of earlier rounds still to read and drop */
    int64_t owed_ns;     /* monotonic: since when they are owed */
    int auth_pending;    /* the next reply (after owed) is AUTH's */
    uint64_t wseq, rseq; /* commands appended, replies read (AUTH aside) */
    lock_redlock__tag_t tag[LOCK_REDLOCK__NTAGS];

    /* The round in progress. */
    int active;         /* takes part */
    int written;        /* its output is written out */
    int ncmd, got;      /* commands sent, replies read */
    redisReply **rep;   /* rep[0..ncmd): replies, NULL until read */
    lock_errkind_t err; /* LOCK_ENONE, or why it failed this round */
    char errstr[112];
} lock_redlock__node_t;

typedef struct lock_redlock__client {
    lock_client_t base; /* first: lock.c's view */
    int n;
    int64_t timeout_ns;
    const char *tag_resource; /* the round in progress is a release of it:
                                 its replies are tagged */
    lock_redlock__node_t node[LOCK_MAX_NODES];
} lock_redlock__client_t;

/* What ends a round early: called with the reply of the round's single
 * command of one node, says 1 (yes), 0 (no) or -1 (neither). */
typedef int (*lock_redlock__judge_fn)(const redisReply *r, const void *arg);

/* --------------------------------------------------------------- nodes --- */

static void lock_redlock__drop(lock_redlock__node_t *nd) {
    if (nd->c != NULL) {
        redisFree(nd->c);
        nd->c = NULL;
    }
    nd->connecting = 0;
    nd->owed = 0;
    nd->auth_pending = 0;
    nd->wseq = nd->rseq = 0;
    for (int i = 0; i < LOCK_REDLOCK__NTAGS; i++) {
        nd->tag[i].used = 0; /* their replies went with the connection */
    }
}

/* A reply read off nd (the seq-th, AUTH's aside): when it answers a
 * release, its receiver count goes to the fairness hint. */
static void lock_redlock__on_reply(lock_redlock__node_t *nd, uint64_t seq,
                                   const redisReply *r) {
    for (int i = 0; i < LOCK_REDLOCK__NTAGS; i++) {
        lock_redlock__tag_t *t = &nd->tag[i];
        if (!t->used || t->seq != seq) {
            continue;
        }
        t->used = 0;
        if (r->type == REDIS_REPLY_INTEGER && r->integer >= 1) {
            lock_wait_note_receivers_at(t->resource, nd->idx, r->integer - 1);
        }
        return;
    }
}

static void lock_redlock__node_fail(lock_redlock__node_t *nd,
                                    lock_errkind_t kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Fails nd for this round and drops its connection (replies may be owed
 * on it: hiredis pairs replies with commands only by order). */
static void lock_redlock__node_fail(lock_redlock__node_t *nd,
                                    lock_errkind_t kind, const char *fmt, ...) {
    char what[80];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    if (nd->c != NULL && nd->c->err != 0) {
        snprintf(nd->errstr, sizeof(nd->errstr), "%s:%u: %s: %s", nd->addr.host,
                 nd->addr.port, what, nd->c->errstr);
    } else {
        snprintf(nd->errstr, sizeof(nd->errstr), "%s:%u: %s", nd->addr.host,
                 nd->addr.port, what);
    }
    nd->err = kind;
    nd->active = 0;
    lock_redlock__drop(nd);
    metrics_inc(M_REDIS_ERRORS);
}

/* Reads what the socket has and sorts the replies: owed ones are dropped,
 * AUTH's is checked, the round's are kept. 0, or -1 after
 * lock_redlock__node_fail. */
static int lock_redlock__read(lock_redlock__node_t *nd) {
    if (redisBufferRead(nd->c) != REDIS_OK) {
        lock_redlock__node_fail(nd, LOCK_EIO, "read");
        return -1;
    }
    for (;;) {
        void *reply = NULL;
        if (redisGetReplyFromReader(nd->c, &reply) != REDIS_OK) {
            lock_redlock__node_fail(nd, LOCK_EIO, "protocol");
            return -1;
        }
        if (reply == NULL) {
            return 0;
        }
        redisReply *r = reply;
        /* AUTH goes first on a fresh connection, before anything is owed
         * on it, so its reply comes first. */
        if (nd->auth_pending) {
            nd->auth_pending = 0;
            int ok = r->type == REDIS_REPLY_STATUS;
            lock_errkind_t kind =
                lock_redis_reply_kind(r) == LOCK_EIO ? LOCK_EIO : LOCK_EAUTH;
            char msg[64];
            snprintf(msg, sizeof(msg), "AUTH refused: %.40s",
                     r->type == REDIS_REPLY_ERROR ? r->str : "bad reply");
            freeReplyObject(r);
            if (!ok) {
                lock_redlock__node_fail(nd, kind, "%s", msg);
                return -1;
            }
        } else if (nd->owed > 0) {
            lock_redlock__on_reply(nd, nd->rseq++, r);
            nd->owed--;
            freeReplyObject(r);
        } else if (nd->active && nd->rep != NULL && nd->got < nd->ncmd) {
            lock_redlock__on_reply(nd, nd->rseq++, r);
            nd->rep[nd->got++] = r;
        } else {
            nd->rseq++;
            freeReplyObject(r); /* not ours to keep: cannot happen */
        }
    }
}

/* Before a round: reads what earlier rounds left owed without waiting; a
 * node owing replies for longer than the timeout is dropped (it will be
 * connected afresh). */
static void lock_redlock__settle(lock_redlock__client_t *cl,
                                 lock_redlock__node_t *nd) {
    if (nd->c == NULL || nd->owed == 0) {
        return;
    }
    if ((nd->connecting || lock_redlock__read(nd) == 0) && nd->owed > 0 &&
        mono_ns() - nd->owed_ns > cl->timeout_ns) {
        log_warn("lock.redlock_node_behind", "node=%s:%u owed=%d (dropped)",
                 nd->addr.host, nd->addr.port, nd->owed);
        lock_redlock__drop(nd);
    }
}

/* --------------------------------------------------------------- round --- */

/* Frees the replies of the last round. */
static void lock_redlock__round_end(lock_redlock__client_t *cl) {
    for (int i = 0; i < cl->n; i++) {
        lock_redlock__node_t *nd = &cl->node[i];
        if (nd->rep != NULL) {
            for (int j = 0; j < nd->ncmd; j++) {
                if (nd->rep[j] != NULL) {
                    freeReplyObject(nd->rep[j]);
                }
            }
            free(nd->rep);
            nd->rep = NULL;
        }
        nd->active = 0;
    }
}

/* Starts nd's part: connect if needed, AUTH first on a fresh connection,
 * then the commands, appended to its output buffer. */
static void lock_redlock__begin(lock_redlock__client_t *cl,
                                lock_redlock__node_t *nd,
                                const lock_redlock__cmd_t *cmds, int ncmd,
                                int want_replies) {
    /* First what earlier rounds left: a failure there drops the
     * connection, and this round starts on a fresh one. */
    lock_redlock__settle(cl, nd);
    nd->err = LOCK_ENONE;
    nd->errstr[0] = '\0';
    nd->active = 1;
    nd->written = 0;
    nd->ncmd = ncmd;
    nd->got = 0;
    nd->rep = NULL;
    if (want_replies &&
        (nd->rep = calloc((size_t)ncmd, sizeof(*nd->rep))) == NULL) {
        lock_redlock__node_fail(nd, LOCK_ESYS, "out of memory");
        return;
    }
    if (nd->c == NULL) {
        nd->c = redisConnectNonBlock(nd->addr.host, nd->addr.port);
        if (nd->c == NULL) {
            lock_redlock__node_fail(nd, LOCK_ESYS, "connect: out of memory");
            return;
        }
        if (nd->c->err != 0) {
            lock_redlock__node_fail(nd, LOCK_EIO, "connect");
            return;
        }
        nd->connecting = 1;
        if (lock_redis_wants_auth()) {
            const char *argv[3];
            int argc = lock_redis_auth_argv(argv);
            if (redisAppendCommandArgv(nd->c, argc, argv, NULL) != REDIS_OK) {
                lock_redlock__node_fail(nd, LOCK_ESYS, "AUTH: out of memory");
                return;
            }
            nd->auth_pending = 1;
        }
    }
    for (int j = 0; j < ncmd; j++) {
        if (redisAppendCommandArgv(nd->c, cmds[j].argc,
                                   (const char **)cmds[j].argv,
                                   NULL) != REDIS_OK) {
            lock_redlock__node_fail(nd, LOCK_ESYS, "out of memory");
            return;
        }
        if (cl->tag_resource != NULL) {
            /* The oldest slot goes first: the ring's next one. */
            lock_redlock__tag_t *t = &nd->tag[nd->wseq % LOCK_REDLOCK__NTAGS];
            t->used = 1;
            t->seq = nd->wseq;
            snprintf(t->resource, sizeof(t->resource), "%s", cl->tag_resource);
        }
        nd->wseq++;
    }
}

/* 1 when nd has nothing more to do in this round. */
static int lock_redlock__node_done(const lock_redlock__node_t *nd,
                                   int want_replies) {
    if (!nd->active) {
        return 1;
    }
    return nd->written && (!want_replies || nd->got == nd->ncmd);
}

/* One I/O step of nd on the events poll reported. */
static void lock_redlock__step(lock_redlock__node_t *nd, short revents) {
    if (nd->connecting) {
        if (!(revents & (POLLOUT | POLLERR | POLLHUP))) {
            return;
        }
        int soerr = 0;
        socklen_t len = sizeof(soerr);
        if (getsockopt(nd->c->fd, SOL_SOCKET, SO_ERROR, &soerr, &len) != 0) {
            soerr = errno;
        }
        if (soerr != 0) {
            lock_redlock__node_fail(nd, LOCK_EIO, "connect: %s",
                                    strerror(soerr));
            return;
        }
        nd->connecting = 0;
    }
    if (!nd->written && (revents & (POLLOUT | POLLERR | POLLHUP))) {
        if (redisBufferWrite(nd->c, &nd->written) != REDIS_OK) {
            lock_redlock__node_fail(nd, LOCK_EIO, "write");
            return;
        }
    }
    if (revents & (POLLIN | POLLERR | POLLHUP)) {
        lock_redlock__read(nd);
    }
}

/* One pass over the round's nodes: the poll set of those not done yet,
 * and the counts the round's end depends on. */
typedef struct lock_redlock__pollset {
    struct pollfd pf[LOCK_MAX_NODES];
    int idx[LOCK_MAX_NODES]; /* pf[j] is node idx[j] */
    int k;                   /* entries in pf */
    int yes, no;             /* the judge's answers so far */
    int written, connecting; /* active nodes written out / connecting */
} lock_redlock__pollset_t;

static void lock_redlock__pollset(lock_redlock__client_t *cl, int want_replies,
                                  lock_redlock__judge_fn judge,
                                  const void *jarg,
                                  lock_redlock__pollset_t *ps) {
    ps->k = ps->yes = ps->no = ps->written = ps->connecting = 0;
    for (int i = 0; i < cl->n; i++) {
        lock_redlock__node_t *nd = &cl->node[i];
        ps->written += nd->active && nd->written;
        ps->connecting += nd->active && nd->connecting;
        if (judge != NULL && nd->rep != NULL && nd->got == 1) {
            int v = judge(nd->rep[0], jarg);
            ps->yes += v == 1;
            ps->no += v == 0;
        }
        if (lock_redlock__node_done(nd, want_replies)) {
            continue;
        }
        short ev = 0;
        if (nd->connecting || !nd->written) {
            ev |= POLLOUT;
        }
        if (!nd->connecting &&
            (want_replies || nd->owed > 0 || nd->auth_pending)) {
            ev |= POLLIN;
        }
        ps->pf[ps->k].fd = nd->c->fd;
        ps->pf[ps->k].events = ev;
        ps->pf[ps->k].revents = 0;
        ps->idx[ps->k++] = i;
    }
}

/* The round's I/O, until it is decided, done, or out of time (the nodes
 * still behind then fail with "timed out"). */
static void lock_redlock__round_io(lock_redlock__client_t *cl, int want_replies,
                                   int64_t deadline_ns,
                                   lock_redlock__judge_fn judge,
                                   const void *jarg) {
    int m = lock_redlock_majority(cl->n);
    int64_t grace_end = mono_ns() + LOCK_REDLOCK__CONNECT_GRACE_NS;
    for (;;) {
        lock_redlock__pollset_t ps;
        lock_redlock__pollset(cl, want_replies, judge, jarg, &ps);
        int k = ps.k;
        if (judge != NULL && (ps.yes >= m || ps.no > cl->n - m)) {
            break; /* decided */
        }
        int64_t now = mono_ns();
        int only_connecting = !want_replies && k > 0 && ps.connecting == k;
        if (only_connecting && (ps.written >= m || now >= grace_end)) {
            /* What is left is still connecting: a node cut off drops our
             * SYNs and would hold every release for the whole timeout.
             * Its output goes out with the next round on this client. */
            break;
        }
        if (k == 0) {
            break;
        }
        int64_t left = deadline_ns - now;
        if (only_connecting && grace_end - now < left) {
            left = grace_end - now; /* wake up for the grace's end */
            if (left <= 0) {
                left = 1;
            }
        }
        if (deadline_ns - now <= 0) {
            left = 0;
        }
        if (left <= 0) {
            for (int j = 0; j < k; j++) {
                lock_redlock__node_fail(&cl->node[ps.idx[j]], LOCK_EIO,
                                        "timed out");
            }
            break;
        }
        int ms = (int)((left + MONO_MS - 1) / MONO_MS);
        int rc = poll(ps.pf, (nfds_t)k, ms);
        if (rc < 0 && errno != EINTR) {
            for (int j = 0; j < k; j++) {
                lock_redlock__node_fail(&cl->node[ps.idx[j]], LOCK_ESYS,
                                        "poll: %s", strerror(errno));
            }
            break;
        }
        for (int j = 0; rc > 0 && j < k; j++) {
            if (ps.pf[j].revents != 0) {
                lock_redlock__step(&cl->node[ps.idx[j]], ps.pf[j].revents);
            }
        }
    }
}

/* After the round's I/O: nodes left behind owe what they have not answered
 * yet, and a reply that says a node cannot serve fails that node. */
static void lock_redlock__round_settle(lock_redlock__client_t *cl,
                                       int want_replies) {
    for (int i = 0; i < cl->n; i++) {
        lock_redlock__node_t *nd = &cl->node[i];
        if (!nd->active) {
            continue;
        }
        int missing = want_replies ? nd->ncmd - nd->got : nd->ncmd;
        if (missing > 0) {
            if (nd->owed == 0) {
                nd->owed_ns = mono_ns();
            }
            nd->owed += missing;
            if (want_replies) {
                /* Shrinks the round to what came: later replies are
                 * dropped, not stored. */
                nd->ncmd = nd->got;
                nd->err = LOCK_EIO;
                snprintf(nd->errstr, sizeof(nd->errstr), "%s:%u: no answer yet",
                         nd->addr.host, nd->addr.port);
            }
        }
        for (int j = 0; nd->rep != NULL && j < nd->got; j++) {
            lock_errkind_t kind = lock_redis_reply_kind(nd->rep[j]);
            if (kind == LOCK_EIO || kind == LOCK_EAUTH) {
                char msg[80];
                snprintf(msg, sizeof(msg), "%.70s", nd->rep[j]->str);
                lock_redlock__node_fail(nd, kind, "%s", msg);
                break;
            }
        }
    }
}

/*
 * Runs one round: cmds (ncmd of them) on every node in mask, all at once,
 * until deadline_ns (monotonic). want_replies 0: done once written out (the
 * replies are owed, read by a later round). judge (may be NULL, only with
 * ncmd == 1): the round ends as soon as the yes answers make a majority or
 * the no answers make one impossible; a node still behind then owes its
 * replies. A round without replies ends once written out to a majority
 * when the others are still connecting. Afterwards nd->err and nd->rep[] say
 * what each node did; an error reply that says the node cannot serve (READONLY,
 * LOADING, MASTERDOWN) or refuses our credentials fails the node like a
 * connection error. Call lock_redlock__round_end after reading the replies.
 */
static void lock_redlock__round(lock_redlock__client_t *cl, uint32_t mask,
                                const lock_redlock__cmd_t *cmds, int ncmd,
                                int want_replies, int64_t deadline_ns,
                                lock_redlock__judge_fn judge,
                                const void *jarg) {
    for (int i = 0; i < cl->n; i++) {
        cl->node[i].active = 0;
        cl->node[i].err = LOCK_ENONE;
        cl->node[i].errstr[0] = '\0';
        cl->node[i].got = 0; /* a node left out has no replies */
        cl->node[i].ncmd = 0;
        if (mask & (1u << i)) {
            lock_redlock__begin(cl, &cl->node[i], cmds, ncmd, want_replies);
        }
    }
    lock_redlock__round_io(cl, want_replies, deadline_ns, judge, jarg);
    lock_redlock__round_settle(cl, want_replies);
}

/* The round's failures in cl's error state: what, and each failed node.
 * The kind is io (an outage), unless a node failed otherwise (refused
 * credentials, an ACL, a bad reply): a configuration problem wins. The
 * text starts "redlock (KIND): WHAT: ...". Returns LOCK_ERR. */
static int lock_redlock__fail(lock_redlock__client_t *cl, const char *what,
                              int answered) {
    lock_errkind_t kind = LOCK_EIO;
    for (int i = 0; i < cl->n; i++) {
        if (cl->node[i].err != LOCK_ENONE && cl->node[i].err != LOCK_EIO) {
            kind = cl->node[i].err;
        }
    }
    char *p = cl->base.errstr;
    size_t left = sizeof(cl->base.errstr);
    int w = snprintf(p, left,
                     "redlock (%s): %s: %d of %d nodes answered, %d needed",
                     lock_errkind_name(kind), what, answered, cl->n,
                     lock_redlock_majority(cl->n));
    for (int i = 0; i < cl->n; i++) {
        const lock_redlock__node_t *nd = &cl->node[i];
        if (nd->err == LOCK_ENONE || w < 0 || (size_t)w >= left) {
            continue;
        }
        p += w;
        left -= (size_t)w;
        w = snprintf(p, left, "; %s", nd->errstr);
    }
    cl->base.errkind = kind;
    return LOCK_ERR;
}

static uint32_t lock_redlock__all(const lock_redlock__client_t *cl) {
    return cl->n >= 32 ? 0xffffffffu : (1u << cl->n) - 1;
}

static int64_t lock_redlock__deadline(const lock_redlock__client_t *cl) {
    return mono_ns() + cl->timeout_ns;
}

/* One integer reply equal to 1: yes; another integer: no. */
static int lock_redlock__judge_one(const redisReply *r, const void *arg) {
    (void)arg;
    if (r->type != REDIS_REPLY_INTEGER) {
        return -1;
    }
    return r->integer == 1 ? 1 : 0;
}

/* A status reply (PONG): yes. */
static int lock_redlock__judge_status(const redisReply *r, const void *arg) {
    (void)arg;
    return r->type == REDIS_REPLY_STATUS ? 1 : -1;
}

/* Any integer (the counter after a raise): yes. */
static int lock_redlock__judge_int(const redisReply *r, const void *arg) {
    (void)arg;
    return r->type == REDIS_REPLY_INTEGER ? 1 : -1;
}

/* GET of the lock key: our token (arg) yes, another value or none no. */
static int lock_redlock__judge_held(const redisReply *r, const void *arg) {
    if (r->type == REDIS_REPLY_STRING) {
        return strcmp(r->str, (const char *)arg) == 0 ? 1 : 0;
    }
    return r->type == REDIS_REPLY_NIL ? 0 : -1;
}

/* ACQUIRE's {1, fence}: yes; {0, pttl}: no. */
static int lock_redlock__judge_acquire(const redisReply *r, const void *arg) {
    (void)arg;
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[0]->type != REDIS_REPLY_INTEGER ||
        r->element[1]->type != REDIS_REPLY_INTEGER) {
        return -1;
    }
    return r->element[0]->integer == 1 ? 1 : 0;
}

/* ------------------------------------------------------------- release --- */

/* RELEASE (announce 1) or UNDO (0) on every node in mask, written out at
 * once, replies not awaited (they are read and dropped by the next round).
 * Returns the number of nodes it was written out to. */
static int lock_redlock__release_mask(lock_redlock__client_t *cl,
                                      const lock_lease_t *lease, uint32_t mask,
                                      int announce) {
    lock_redlock__cmd_t c = {.argc = 6,
                             .argv = {"EVAL", LOCK_SCRIPT_RELEASE, "1",
                                      lease->key, lease->token,
                                      lease->channel}};
    if (!announce) {
        c = (lock_redlock__cmd_t){
            .argc = 5,
            .argv = {"EVAL", LOCK_SCRIPT_UNDO, "1", lease->key, lease->token}};
    }
    char res[LOCK_KEY_MAX];
    lock_resource_of(lease->key, res);
    cl->tag_resource = announce ? res : NULL;
    lock_redlock__round(cl, mask, &c, 1, 0, lock_redlock__deadline(cl), NULL,
                        NULL);
    cl->tag_resource = NULL;
    int written = 0;
    for (int i = 0; i < cl->n; i++) {
        written += (mask & (1u << i)) && cl->node[i].err == LOCK_ENONE;
    }
    lock_redlock__round_end(cl);
    return written;
}

static int lock_redlock__release(lock_client_t *base,
                                 const lock_lease_t *lease) {
    lock_redlock__client_t *cl = (lock_redlock__client_t *)base;
    int written =
        lock_redlock__release_mask(cl, lease, lock_redlock__all(cl), 1);
    if (written < lock_redlock_majority(cl->n)) {
        return lock_redlock__fail(cl, "release not sent", written);
    }
    return LOCK_OK;
}

/* ------------------------------------------------------------- acquire --- */

/* The write-back round (the top of the file says why) on the granting
 * nodes. Returns how many answered "raised while held"; *refused gets how
 * many answered "not held". */
static int lock_redlock__write_back(lock_redlock__client_t *cl,
                                    lock_lease_t *lease, uint32_t granted,
                                    int64_t deadline_ns, int *refused) {
    char fence[24];
    snprintf(fence, sizeof(fence), "%lld", (long long)lease->fence);
    *refused = 0;
#if defined(COUPONSVC_UNSAFE_REDLOCK_NO_WRITEBACK)
    (void)deadline_ns;
    (void)fence;
    int yes = 0;
    for (int i = 0; i < cl->n; i++) {
        yes += (granted >> i) & 1;
    }
    return yes;
#elif defined(COUPONSVC_UNSAFE_REDLOCK_WRITEBACK_NO_TOKEN)
    /* Broken on purpose: raise on every node, holding or not, and take
     * the first majority that answers. */
    (void)granted;
    lock_redlock__cmd_t c = {.argc = 5,
                             .argv = {"EVAL", LOCK_SCRIPT_RAISE_FENCE, "1",
                                      lease->fence_key, fence}};
    lock_redlock__round(cl, lock_redlock__all(cl), &c, 1, 1, deadline_ns,
                        lock_redlock__judge_int, NULL);
    int yes = 0;
    for (int i = 0; i < cl->n; i++) {
        const lock_redlock__node_t *nd = &cl->node[i];
        yes += nd->err == LOCK_ENONE && nd->got == 1 &&
               nd->rep[0]->type == REDIS_REPLY_INTEGER;
    }
    lock_redlock__round_end(cl);
    return yes;
#else
    lock_redlock__cmd_t c = {.argc = 7,
                             .argv = {"EVAL", LOCK_SCRIPT_WRITEBACK, "2",
                                      lease->key, lease->fence_key,
                                      lease->token, fence}};
    lock_redlock__round(cl, granted, &c, 1, 1, deadline_ns,
                        lock_redlock__judge_one, NULL);
    int yes = 0;
    for (int i = 0; i < cl->n; i++) {
        const lock_redlock__node_t *nd = &cl->node[i];
        if (nd->err != LOCK_ENONE || nd->got != 1) {
            continue;
        }
        int v = lock_redlock__judge_one(nd->rep[0], NULL);
        if (v == 1) {
            yes++;
            lease->u.redlock.raised |= 1u << i;
        } else if (v == 0) {
            ++*refused;
        }
    }
    /* Only granting nodes were asked, each once. */
    assert((lease->u.redlock.raised & ~granted) == 0 &&
           __builtin_popcount(lease->u.redlock.raised) == yes &&
           yes + *refused <= __builtin_popcount(granted));
    lock_redlock__round_end(cl);
    return yes;
#endif
}

/* The acquire round's replies, counted: yes / no and their node masks, the
 * highest fence a granting node drew and the lowest PTTL a refusing node
 * told. A reply that is neither fails its node for the round. */
typedef struct lock_redlock__tally {
    int yes, no;
    uint32_t granted, refused;
    int64_t fence, pttl;
} lock_redlock__tally_t;

static lock_redlock__tally_t
lock_redlock__tally_acquire(lock_redlock__client_t *cl) {
    lock_redlock__tally_t t = {.pttl = -1};
    for (int i = 0; i < cl->n; i++) {
        lock_redlock__node_t *nd = &cl->node[i];
        if (nd->err != LOCK_ENONE || nd->got != 1) {
            continue;
        }
        const redisReply *r = nd->rep[0];
        int v = lock_redlock__judge_acquire(r, NULL);
        if (v == 1) {
            t.yes++;
            t.granted |= 1u << i;
            if (r->element[1]->integer > t.fence) {
                t.fence = r->element[1]->integer;
            }
        } else if (v == 0) {
            t.no++;
            t.refused |= 1u << i;
            long long p = r->element[1]->integer;
            if (p >= 0 && (t.pttl < 0 || p < t.pttl)) {
                t.pttl = p;
            }
        } else {
            nd->err = lock_redis_reply_kind(r) == LOCK_EPERM ? LOCK_EPERM
                                                             : LOCK_EPROTO;
            snprintf(nd->errstr, sizeof(nd->errstr), "%s:%u: acquire: %.60s",
                     nd->addr.host, nd->addr.port,
                     r->type == REDIS_REPLY_ERROR ? r->str : "bad reply");
        }
    }
    assert(lock_redlock__masks_ok(cl->n, t.granted, t.refused, t.yes, t.no));
    return t;
}

/* The second phase of a grant (the top of the file says why): the
 * write-back on the granting nodes, then the validity left. LOCK_OK with
 * lease usable until its valid_until_ns, or LOCK_BUSY / LOCK_ERR after
 * taking the grant back on every node (UNDO). t0 is when the acquire was
 * sent. */
static int lock_redlock__make_usable(lock_redlock__client_t *cl,
                                     lock_lease_t *lease, uint32_t granted,
                                     int64_t t0, int64_t *holder_pttl_ms) {
    /* The write-back ends within the timeout, and never after the lease's
     * validity would have run out anyway. */
    int64_t budget =
        lock_redlock_validity_ns(lease->ttl_ms, mono_boot_ns() - t0);
    int64_t deadline = lock_redlock__deadline(cl);
    if (budget < cl->timeout_ns) {
        deadline = mono_ns() + (budget > 0 ? budget : 0);
    }
    int wb_refused = 0;
    int raised =
        lock_redlock__write_back(cl, lease, granted, deadline, &wb_refused);
    int64_t validity =
        lock_redlock_validity_ns(lease->ttl_ms, mono_boot_ns() - t0);
    int wb = lock_redlock_verdict(cl->n, raised, wb_refused);
    if (wb != LOCK_OK || validity <= 0) {
        if (wb == LOCK_ERR) {
            lock_redlock__fail(cl, "fence write-back", raised + wb_refused);
        } else if (validity <= 0) {
            lock_client_fail(&cl->base, LOCK_EIO,
                             "redlock: the acquire took longer than the "
                             "lease's validity (TTL %u ms)",
                             lease->ttl_ms);
            wb = LOCK_ERR;
        }
        /* UNDO, not RELEASE, as for a partial grant: the lease never
         * became usable, so it never was a lock. Announcing its end would
         * wake a waiter (ours first: our own subscriber hears our own
         * node's message) to retry at once into whatever refused us, and
         * every retry that ends here again would wake the next: a retry
         * loop as fast as the round trips, bounded by no wake. The lock
         * that refused us is announced by its holder's own release.
         *
         * The holder's PTTL is unknown here (nobody said "busy" with a
         * TTL): -1 leaves the poll strategy's backoff in charge; 0 would
         * make it retry at once, in the same loop. */
        lock_redlock__release_mask(cl, lease, lock_redlock__all(cl), 0);
        *holder_pttl_ms = -1;
        return wb;
    }
    atomic_store(&lease->valid_until_ns,
                 t0 + (int64_t)lease->ttl_ms * MONO_MS -
                     lock_redlock_drift_ns(lease->ttl_ms));
    return LOCK_OK;
}

static int lock_redlock__try(lock_client_t *base, lock_lease_t *lease,
                             int64_t *holder_pttl_ms) {
    lock_redlock__client_t *cl = (lock_redlock__client_t *)base;
    char ttl[16];
    snprintf(ttl, sizeof(ttl), "%u", lease->ttl_ms);
    lock_redlock__cmd_t c = {.argc = 7,
                             .argv = {"EVAL", LOCK_SCRIPT_ACQUIRE, "2",
                                      lease->key, lease->fence_key,
                                      lease->token, ttl}};

    /* Validity counts from the moment we SENT the acquire: every node
     * started its TTL later than that, never earlier. */
    int64_t t0 = mono_boot_ns();
    lock_redlock__round(cl, lock_redlock__all(cl), &c, 1, 1,
                        lock_redlock__deadline(cl), lock_redlock__judge_acquire,
                        NULL);
    lock_redlock__tally_t t = lock_redlock__tally_acquire(cl);
    int verdict = lock_redlock_verdict(cl->n, t.yes, t.no);
    if (verdict != LOCK_OK) {
        /* Every node that may hold it, at once: the granting ones and the
         * silent ones (a reply that did not come may be a grant). A node
         * that answered "busy" holds somebody else's token. UNDO, not
         * RELEASE: no announcement (lock_scripts.h says why). */
        if (verdict == LOCK_ERR) {
            lock_redlock__fail(cl, "acquire", t.yes + t.no);
        }
        lock_redlock__round_end(cl);
        lock_redlock__release_mask(cl, lease,
                                   lock_redlock__all(cl) & ~t.refused, 0);
        *holder_pttl_ms = t.pttl;
        return verdict;
    }
    lock_redlock__round_end(cl);
    lease->fence = t.fence;
    lease->u.redlock.granted = t.granted;
    /* Tests only: a pause here counts against the validity like any delay
     * (the fault tests' way into the write-back's race). */
    fault_pause(FAULT_BEFORE_WRITEBACK);
    return lock_redlock__make_usable(cl, lease, t.granted, t0, holder_pttl_ms);
}

/* -------------------------------------------------------------- extend --- */

static int lock_redlock__extend_many(lock_client_t *base,
                                     lock_lease_t *const *leases, size_t n,
                                     int *results, int64_t *sent_at_ns) {
    lock_redlock__client_t *cl = (lock_redlock__client_t *)base;
    lock_redlock__cmd_t *cmds = calloc(n, sizeof(*cmds));
    char(*ttl)[16] = calloc(n, sizeof(*ttl));
    int *yes = calloc(n, sizeof(*yes)), *no = calloc(n, sizeof(*no));
    if (cmds == NULL || ttl == NULL || yes == NULL || no == NULL) {
        free(cmds);
        free(ttl);
        free(yes);
        free(no);
        return lock_client_fail(base, LOCK_ESYS, "redlock: out of memory");
    }
    uint32_t max_ttl = 0;
    for (size_t i = 0; i < n; i++) {
        snprintf(ttl[i], sizeof(ttl[i]), "%u", leases[i]->ttl_ms);
        cmds[i] = (lock_redlock__cmd_t){.argc = 6,
                                        .argv = {"EVAL", LOCK_SCRIPT_EXTEND,
                                                 "1", leases[i]->key,
                                                 leases[i]->token, ttl[i]}};
        if (leases[i]->ttl_ms > max_ttl) {
            max_ttl = leases[i]->ttl_ms;
        }
    }
    /* Every lease's TTL restarts on each node some time after this; the
     * drift allowance is taken off once more, as at grant. */
    int64_t sent = mono_boot_ns();
    *sent_at_ns = sent - lock_redlock_drift_ns(max_ttl);
    lock_redlock__round(cl, lock_redlock__all(cl), cmds, (int)n, 1,
                        lock_redlock__deadline(cl), NULL, NULL);
    int answered = 0;
    for (int k = 0; k < cl->n; k++) {
        lock_redlock__node_t *nd = &cl->node[k];
        if (nd->err != LOCK_ENONE || nd->got != (int)n) {
            continue;
        }
        answered++;
        for (size_t i = 0; i < n; i++) {
            int v = lock_redlock__judge_one(nd->rep[i], NULL);
            yes[i] += v == 1;
            no[i] += v == 0;
        }
    }
    int m = lock_redlock_majority(cl->n);
    for (size_t i = 0; i < n; i++) {
        assert(lock_redlock__quorum_ok(cl->n, yes[i], no[i]) &&
               yes[i] + no[i] <= answered);
        results[i] = yes[i] >= m         ? LOCK_HELD
                     : no[i] > cl->n - m ? LOCK_LOST
                                         : LOCK_ERR;
    }
    int rc = LOCK_OK;
    if (answered < m) {
        rc = lock_redlock__fail(cl, "extend", answered);
    }
    lock_redlock__round_end(cl);
    free(cmds);
    free(ttl);
    free(yes);
    free(no);
    return rc;
}

/* ----------------------------------------------------------- the rest --- */

static int lock_redlock__check(lock_client_t *base, const lock_lease_t *lease) {
    lock_redlock__client_t *cl = (lock_redlock__client_t *)base;
    lock_redlock__cmd_t c = {.argc = 2, .argv = {"GET", lease->key}};
    lock_redlock__round(cl, lock_redlock__all(cl), &c, 1, 1,
                        lock_redlock__deadline(cl), lock_redlock__judge_held,
                        lease->token);
    int yes = 0, no = 0;
    for (int i = 0; i < cl->n; i++) {
        const lock_redlock__node_t *nd = &cl->node[i];
        if (nd->err != LOCK_ENONE || nd->got != 1) {
            continue;
        }
        const redisReply *r = nd->rep[0];
        if (r->type == REDIS_REPLY_STRING &&
            strcmp(r->str, lease->token) == 0) {
            yes++;
        } else if (r->type == REDIS_REPLY_STRING ||
                   r->type == REDIS_REPLY_NIL) {
            no++;
        }
    }
    int v = lock_redlock_verdict(cl->n, yes, no);
    if (v == LOCK_ERR) {
        lock_redlock__fail(cl, "check", yes + no);
    }
    lock_redlock__round_end(cl);
    return v == LOCK_OK ? LOCK_HELD : v == LOCK_BUSY ? LOCK_LOST : LOCK_ERR;
}

static int lock_redlock__raise_fence(lock_client_t *base, const char *resource,
                                     int64_t floor, int64_t *now_at) {
    lock_redlock__client_t *cl = (lock_redlock__client_t *)base;
    char key[LOCK_KEY_MAX], fl[LOCK__DEC_MAX];
    lock__raise_fence_args(resource, floor, key, fl);
    lock_redlock__cmd_t c = {
        .argc = 5, .argv = {"EVAL", LOCK_SCRIPT_RAISE_FENCE, "1", key, fl}};
    lock_redlock__round(cl, lock_redlock__all(cl), &c, 1, 1,
                        lock_redlock__deadline(cl), lock_redlock__judge_int,
                        NULL);
    int yes = 0;
    int64_t low = INT64_MAX;
    for (int i = 0; i < cl->n; i++) {
        const lock_redlock__node_t *nd = &cl->node[i];
        if (nd->err == LOCK_ENONE && nd->got == 1 &&
            nd->rep[0]->type == REDIS_REPLY_INTEGER) {
            yes++;
            if (nd->rep[0]->integer < low) {
                low = nd->rep[0]->integer;
            }
        }
    }
    /* A majority raised is enough: every later majority includes one of
     * them, and the fence is the maximum over the granting nodes. */
    int rc = LOCK_OK;
    if (yes < lock_redlock_majority(cl->n)) {
        rc = lock_redlock__fail(cl, "raise fence", yes);
    } else {
        *now_at = low;
    }
    lock_redlock__round_end(cl);
    return rc;
}

static int lock_redlock__ping(lock_client_t *base) {
    lock_redlock__client_t *cl = (lock_redlock__client_t *)base;
    lock_redlock__cmd_t c = {.argc = 1, .argv = {"PING"}};
    lock_redlock__round(cl, lock_redlock__all(cl), &c, 1, 1,
                        lock_redlock__deadline(cl), lock_redlock__judge_status,
                        NULL);
    int yes = 0;
    for (int i = 0; i < cl->n; i++) {
        const lock_redlock__node_t *nd = &cl->node[i];
        yes += nd->err == LOCK_ENONE && nd->got == 1 &&
               nd->rep[0]->type == REDIS_REPLY_STATUS;
    }
    int rc = LOCK_OK;
    if (yes < lock_redlock_majority(cl->n)) {
        rc = lock_redlock__fail(cl, "ping", yes);
    }
    lock_redlock__round_end(cl);
    return rc;
}

/* ------------------------------------------------------------- clients --- */

static lock_client_t *lock_redlock__client_new(const cfg_t *cfg) {
    lock_redlock__client_t *cl = calloc(1, sizeof(*cl));
    if (cl == NULL) {
        return NULL;
    }
    lock_client_base_init(&cl->base, &lock_redlock_backend);
    cl->n = cfg->nredis;
    cl->timeout_ns = (int64_t)cfg->redis_timeout_ms * MONO_MS;
    for (int i = 0; i < cl->n; i++) {
        cl->node[i].addr = cfg->redis[i];
        cl->node[i].idx = i;
    }
    return &cl->base;
}

static void lock_redlock__client_free(lock_client_t *base) {
    lock_redlock__client_t *cl = (lock_redlock__client_t *)base;
    lock_redlock__round_end(cl);
    for (int i = 0; i < cl->n; i++) {
        lock_redlock__drop(&cl->node[i]);
    }
    free(cl);
}

/* ------------------------------------------------------------ start-up --- */

/* host:port as one numeric address, the one hiredis connects to (the
 * first IPv4 address, else the first IPv6 one), so that "localhost:6379"
 * and "127.0.0.1:6379" are seen as one. */
static void lock_redlock__canon(const cfg_addr_t *a, char *out, size_t outlen) {
    static const int families[] = {AF_INET, AF_INET6};
    char host[NI_MAXHOST];
    for (size_t f = 0; f < sizeof(families) / sizeof(families[0]); f++) {
        struct addrinfo hints = {.ai_family = families[f],
                                 .ai_socktype = SOCK_STREAM},
                        *res = NULL;
        int ok = getaddrinfo(a->host, NULL, &hints, &res) == 0 && res != NULL &&
                 getnameinfo(res->ai_addr, res->ai_addrlen, host, sizeof(host),
                             NULL, 0, NI_NUMERICHOST) == 0;
        if (res != NULL) {
            freeaddrinfo(res);
        }
        if (ok) {
            snprintf(out, outlen, "%s:%u", host, a->port);
            return;
        }
    }
    snprintf(out, outlen, "%s:%u", a->host, a->port);
}

/* The value of field in an INFO reply ("run_id:..."), into out. */
static void lock_redlock__info_field(const char *info, const char *field,
                                     char *out, size_t outlen) {
    out[0] = '\0';
    size_t fl = strlen(field);
    for (const char *p = info; p != NULL && *p != '\0';) {
        if (strncmp(p, field, fl) == 0 && p[fl] == ':') {
            p += fl + 1;
            size_t n = strcspn(p, "\r\n");
            snprintf(out, outlen, "%.*s", (int)(n < outlen ? n : outlen - 1),
                     p);
            return;
        }
        p = strchr(p, '\n');
        p = p != NULL ? p + 1 : NULL;
    }
}

/* Start-up check: no node listed twice (two spellings of one host and
 * port). 0, or -1 with why in err. */
static int lock_redlock__check_distinct(const cfg_t *cfg, char *err,
                                        size_t errlen) {
    int n = cfg->nredis;
    char canon[LOCK_MAX_NODES][300];
    for (int i = 0; i < n; i++) {
        lock_redlock__canon(&cfg->redis[i], canon[i], sizeof(canon[i]));
        for (int j = 0; j < i; j++) {
            if (strcmp(canon[i], canon[j]) == 0) {
                snprintf(err, errlen,
                         "COUPON_REDIS_ADDRS lists one node twice: entries "
                         "%d (%s:%u) and %d (%s:%u) are both %s; Redlock "
                         "needs %d distinct, independent masters",
                         j + 1, cfg->redis[j].host, cfg->redis[j].port, i + 1,
                         cfg->redis[i].host, cfg->redis[i].port, canon[i], n);
                return -1;
            }
        }
    }
    return 0;
}

/* Start-up check of node i from its ROLE and INFO server replies: a master,
 * and not the same server (run_id) as an earlier node j < i (run_id[j];
 * run_id[i] is filled here). 1: checked; 0: could not be checked (logged);
 * -1: refused, with why in err. */
static int lock_redlock__check_node(const cfg_t *cfg,
                                    const lock_redlock__node_t *nd, int i,
                                    char run_id[][48], char *err,
                                    size_t errlen) {
    int n = cfg->nredis;
    run_id[i][0] = '\0';
    if (nd->err != LOCK_ENONE || nd->got != 2) {
        log_warn("lock.topology_unchecked",
                 "node=%s:%u err=\"%s\" (not reachable at start: used "
                 "when it answers, its role unchecked)",
                 nd->addr.host, nd->addr.port, nd->errstr);
        return 0;
    }
    const redisReply *role = nd->rep[0], *info = nd->rep[1];
    if (role->type == REDIS_REPLY_ERROR || info->type == REDIS_REPLY_ERROR) {
        log_warn("lock.topology_unchecked",
                 "node=%s:%u err=\"%s\" (grant the lock's user +role "
                 "+info|server to have the topology checked at start)",
                 nd->addr.host, nd->addr.port,
                 role->type == REDIS_REPLY_ERROR ? role->str : info->str);
        return 0;
    }
    const char *what = role->type == REDIS_REPLY_ARRAY && role->elements > 0 &&
                               role->element[0]->type == REDIS_REPLY_STRING
                           ? role->element[0]->str
                           : "?";
    if (strcmp(what, "master") != 0) {
        char of[300] = "";
        if (strcmp(what, "slave") == 0 && role->elements >= 3 &&
            role->element[1]->type == REDIS_REPLY_STRING &&
            role->element[2]->type == REDIS_REPLY_INTEGER) {
            snprintf(of, sizeof(of), " of %s:%lld", role->element[1]->str,
                     role->element[2]->integer);
        }
        snprintf(err, errlen,
                 "Redlock node %s:%u (entry %d of COUPON_REDIS_ADDRS) is "
                 "not a master: its ROLE is %s%s. Redlock needs %d "
                 "independent masters; a replica shares its master's "
                 "fate and cannot take writes",
                 nd->addr.host, nd->addr.port, i + 1, what, of, n);
        return -1;
    }
    if (info->type == REDIS_REPLY_STRING || info->type == REDIS_REPLY_STATUS) {
        lock_redlock__info_field(info->str, "run_id", run_id[i],
                                 sizeof(run_id[i]));
    }
    for (int j = 0; j < i && run_id[i][0] != '\0'; j++) {
        if (strcmp(run_id[i], run_id[j]) == 0) {
            snprintf(err, errlen,
                     "Redlock nodes %s:%u and %s:%u (entries %d and %d of "
                     "COUPON_REDIS_ADDRS) are one Redis server (run_id "
                     "%.12s...): two addresses of one node would count "
                     "it twice toward the majority",
                     cfg->redis[j].host, cfg->redis[j].port, nd->addr.host,
                     nd->addr.port, j + 1, i + 1, run_id[i]);
            return -1;
        }
    }
    log_info("lock.topology_node",
             "node=%d addr=%s:%u role=master run_id=%.12s", i + 1,
             nd->addr.host, nd->addr.port, run_id[i]);
    return 1;
}

static int lock_redlock__init(const cfg_t *cfg, char *err, size_t errlen) {
    int n = cfg->nredis;
    if (lock_redlock__check_distinct(cfg, err, errlen) != 0) {
        return -1;
    }
    lock_client_t *base = lock_redlock__client_new(cfg);
    if (base == NULL) {
        snprintf(err, errlen, "redlock: out of memory");
        return -1;
    }
    lock_redlock__client_t *cl = (lock_redlock__client_t *)base;
    lock_redlock__cmd_t cmds[2] = {{.argc = 1, .argv = {"ROLE"}},
                                   {.argc = 2, .argv = {"INFO", "server"}}};
    lock_redlock__round(cl, lock_redlock__all(cl), cmds, 2, 1,
                        lock_redlock__deadline(cl), NULL, NULL);
    char run_id[LOCK_MAX_NODES][48];
    int rc = 0, checked = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        int c =
            lock_redlock__check_node(cfg, &cl->node[i], i, run_id, err, errlen);
        rc = c < 0 ? -1 : 0;
        checked += c > 0;
    }
    lock_redlock__round_end(cl);
    lock_redlock__client_free(base);
    if (rc != 0) {
        return -1;
    }
    log_info("lock.topology",
             "backend=redlock nodes=%d majority=%d checked=%d "
             "drift=\"ttl/100+2ms\" fences=\"max over the grant, written "
             "back where held\"",
             n, lock_redlock_majority(n), checked);
    return 0;
}

const lock_backend_t lock_redlock_backend = {
    .name = "redlock",
    .init = lock_redlock__init,
    .client_new = lock_redlock__client_new,
    .client_free = lock_redlock__client_free,
    .try_acquire = lock_redlock__try,
    .extend_many = lock_redlock__extend_many,
    .release = lock_redlock__release,
    .check = lock_redlock__check,
    .raise_fence = lock_redlock__raise_fence,
    .ping = lock_redlock__ping,
};
