/*
 * h_topo.c: Redis topologies for the lock backends' tests (see harness.h,
 * "Redis topologies"): N independent nodes for Redlock, and a master, a
 * replica replicating through a TCP proxy and three sentinels for the
 * Sentinel failover. Every process is a child of the test, in its process
 * group, on a free loopback port, with its files in the test's directory;
 * h_topo_stop ends them, and the runner's kill of the group ends them if the
 * test dies first.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "faults/proxy.h"
#include "harness.h"
#include "tt.h"

typedef struct h__node {
    int port;
    pid_t pid;
} h__node_t;

static h__node_t h__nodes[H_NODES_MAX];
static int h__nnodes;
static char h__addrs[H_NODES_MAX * 24];

static h__node_t h__sents[H_SENTINELS];
static char h__sent_addrs[H_SENTINELS * 24];
static fp_t *h__repl_proxy;
static char h__master_name[64];
static char h__sent_pass[64];

/* -------------------------------------------------------------- helpers --- */

/* A new connection to 127.0.0.1:port, authenticated with pass if not NULL;
 * NULL if it cannot be had within 1 s. */
static redisContext *h__topo_conn(int port, const char *pass) {
    struct timeval tv = {1, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
    if (c == NULL || c->err != 0 || redisSetTimeout(c, tv) != REDIS_OK) {
        redisFree(c);
        return NULL;
    }
    if (pass != NULL && pass[0] != '\0') {
        redisReply *r = redisCommand(c, "AUTH %s", pass);
        int ok = r != NULL && r->type == REDIS_REPLY_STATUS;
        freeReplyObject(r);
        if (!ok) {
            redisFree(c);
            return NULL;
        }
    }
    return c;
}

/* Waits until 127.0.0.1:port answers PING (pid must stay alive). */
static void h__topo_wait_ping(int port, pid_t pid, const char *pass,
                              const char *log) {
    double end = h_now_ms() + 10000;
    for (;;) {
        redisContext *c = h__topo_conn(port, pass);
        int ok = 0;
        if (c != NULL) {
            redisReply *r = redisCommand(c, "PING");
            ok = r != NULL && r->type == REDIS_REPLY_STATUS;
            freeReplyObject(r);
            redisFree(c);
        }
        if (ok) {
            return;
        }
        TT_ASSERT_MSG(waitpid(pid, NULL, WNOHANG) == 0,
                      "redis on port %d exited during start (%s)", port, log);
        TT_ASSERT_MSG(h_now_ms() < end, "redis on port %d did not start (%s)",
                      port, log);
        h_sleep_ms(20);
    }
}

static void h__topo_reap(pid_t *pid, int sig) {
    if (*pid > 0) {
        kill(*pid, sig);
        waitpid(*pid, NULL, 0);
        *pid = 0;
    }
}

/* ---------------------------------------------------------------- nodes --- */

void h_node_start(int i, const char *const *args, const char *const *env) {
    TT_ASSERT(i >= 0 && i < h__nnodes);
    h__node_t *n = &h__nodes[i];
    TT_ASSERT_MSG(n->pid == 0, "node %d is running", i);
    char port[16], log[400], dir[400];
    snprintf(port, sizeof(port), "%d", n->port);
    snprintf(log, sizeof(log), "%s/node%d.log", h_test_dir(), i);
    snprintf(dir, sizeof(dir), "%s", h_test_dir());
    /* No persistence: a restart is a node that lost its data. Distinct
     * dbfilenames all the same, should a test turn saving on. */
    char dbfile[32];
    snprintf(dbfile, sizeof(dbfile), "node%d.rdb", i);
    char *argv[48] = {"redis-server",
                      "--port",
                      port,
                      "--bind",
                      "127.0.0.1",
                      "--save",
                      "",
                      "--appendonly",
                      "no",
                      "--dir",
                      dir,
                      "--dbfilename",
                      dbfile,
                      "--maxmemory-policy",
                      "noeviction"};
    int k = 15;
    for (int j = 0; args != NULL && args[j] != NULL && k < 47; j++) {
        argv[k++] = (char *)args[j];
    }
    argv[k] = NULL;
    n->pid = h_spawn(argv, log, NULL, env);
    h__topo_wait_ping(n->port, n->pid, NULL, log);
}

void h_nodes_start(int count) {
    TT_ASSERT_MSG(h__nnodes == 0, "h_nodes_start twice in one test");
    TT_ASSERT(count >= 1 && count <= H_NODES_MAX);
    h__nnodes = count;
    size_t used = 0;
    h__addrs[0] = '\0';
    for (int i = 0; i < count; i++) {
        h__nodes[i].port = h_free_port();
        used += (size_t)snprintf(h__addrs + used, sizeof(h__addrs) - used,
                                 "%s127.0.0.1:%d", i > 0 ? "," : "",
                                 h__nodes[i].port);
    }
    for (int i = 0; i < count; i++) {
        h_node_start(i, NULL, NULL);
    }
}

int h_nodes_count(void) {
    return h__nnodes;
}

int h_node_port(int i) {
    TT_ASSERT(i >= 0 && i < h__nnodes);
    return h__nodes[i].port;
}

pid_t h_node_pid(int i) {
    TT_ASSERT(i >= 0 && i < h__nnodes);
    return h__nodes[i].pid;
}

const char *h_nodes_addrs(void) {
    return h__addrs;
}

void h_node_kill(int i) {
    TT_ASSERT(i >= 0 && i < h__nnodes);
    h__topo_reap(&h__nodes[i].pid, SIGKILL);
}

void h_node_signal(int i, int sig) {
    TT_ASSERT(i >= 0 && i < h__nnodes && h__nodes[i].pid > 0);
    kill(h__nodes[i].pid, sig);
}

int h_node_alive(int i) {
    TT_ASSERT(i >= 0 && i < h__nnodes);
    return h__nodes[i].pid > 0 && waitpid(h__nodes[i].pid, NULL, WNOHANG) == 0;
}

long long h_node_int(int port, const char *fmt, ...) {
    redisContext *c = h__topo_conn(port, NULL);
    if (c == NULL) {
        return -2;
    }
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    long long v = -2;
    if (r != NULL) {
        v = r->type == REDIS_REPLY_INTEGER  ? r->integer
            : r->type == REDIS_REPLY_STRING ? atoll(r->str)
            : r->type == REDIS_REPLY_NIL    ? -1
            : r->type == REDIS_REPLY_STATUS ? 0
                                            : -2;
    }
    freeReplyObject(r);
    redisFree(c);
    return v;
}

int h_node_info(int port, const char *section, const char *field, char *out,
                size_t outlen) {
    redisContext *c = h__topo_conn(port, NULL);
    if (c == NULL) {
        return -1;
    }
    redisReply *r = redisCommand(c, "INFO %s", section);
    int rc = -1;
    if (r != NULL && r->type == REDIS_REPLY_STRING) {
        size_t flen = strlen(field);
        for (char *line = r->str; line != NULL && *line != '\0';) {
            char *next = strchr(line, '\n');
            if (strncmp(line, field, flen) == 0 && line[flen] == ':') {
                size_t len = strcspn(line + flen + 1, "\r\n");
                snprintf(out, outlen, "%.*s", (int)len, line + flen + 1);
                rc = 0;
                break;
            }
            line = next != NULL ? next + 1 : NULL;
        }
    }
    freeReplyObject(r);
    redisFree(c);
    return rc;
}

/* ------------------------------------------------------------- sentinel --- */

/* Sentinel i's view of the master: its port, or -1. */
int h_sentinel_master_port(int i) {
    TT_ASSERT(i >= 0 && i < H_SENTINELS);
    redisContext *c = h__topo_conn(h__sents[i].port, h__sent_pass);
    if (c == NULL) {
        return -1;
    }
    redisReply *r =
        redisCommand(c, "SENTINEL get-master-addr-by-name %s", h__master_name);
    int port = -1;
    if (r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
        r->element[1]->type == REDIS_REPLY_STRING) {
        port = atoi(r->element[1]->str);
    }
    freeReplyObject(r);
    redisFree(c);
    return port;
}

/* The number of entries sentinel i lists for "SENTINEL <what> name". */
static long h__sentinel_count(int i, const char *what) {
    redisContext *c = h__topo_conn(h__sents[i].port, h__sent_pass);
    if (c == NULL) {
        return -1;
    }
    redisReply *r = redisCommand(c, "SENTINEL %s %s", what, h__master_name);
    long n = r != NULL && r->type == REDIS_REPLY_ARRAY ? (long)r->elements : -1;
    freeReplyObject(r);
    redisFree(c);
    return n;
}

void h_repl_wait_synced(int timeout_ms) {
    double end = h_now_ms() + timeout_ms;
    int mport = h__nodes[0].port, rport = h__nodes[1].port;
    for (;;) {
        /* The master's offset first: a replica at or past it has
         * everything written before this call, while writes go on. */
        char link[32] = "", moff[32] = "", roff[32] = "";
        h_node_info(mport, "replication", "master_repl_offset", moff,
                    sizeof(moff));
        h_node_info(rport, "replication", "master_link_status", link,
                    sizeof(link));
        h_node_info(rport, "replication", "slave_repl_offset", roff,
                    sizeof(roff));
        if (strcmp(link, "up") == 0 && moff[0] != '\0' && roff[0] != '\0' &&
            atoll(roff) >= atoll(moff)) {
            return;
        }
        TT_ASSERT_MSG(h_now_ms() < end,
                      "the replica did not catch up in %d ms (link %s, "
                      "master offset %s, replica offset %s)",
                      timeout_ms, link, moff, roff);
        h_sleep_ms(20);
    }
}

void h_sentinel_start(const char *master_name, const char *sentinel_pass,
                      int down_after_ms) {
    snprintf(h__master_name, sizeof(h__master_name), "%s", master_name);
    snprintf(h__sent_pass, sizeof(h__sent_pass), "%s",
             sentinel_pass != NULL ? sentinel_pass : "");
    h_nodes_start(1); /* the master */
    int mport = h__nodes[0].port;

    /* The replica replicates through the proxy: black-holing it holds
     * replication back while the replica itself stays up and answers the
     * sentinels (a SIGSTOPped replica would not: its kernel still ACKs
     * the stream, and the sentinels would see it down). */
    h__repl_proxy = fp_start(mport);
    h__nnodes = 2;
    h__nodes[1].port = h_free_port();
    char replicaof[64];
    snprintf(replicaof, sizeof(replicaof), "127.0.0.1 %d",
             fp_port(h__repl_proxy));
    const char *rargs[] = {"--replicaof", replicaof, NULL};
    h_node_start(1, rargs, NULL);
    snprintf(h__addrs, sizeof(h__addrs), "127.0.0.1:%d,127.0.0.1:%d", mport,
             h__nodes[1].port);
    h_repl_wait_synced(10000);

    size_t used = 0;
    for (int i = 0; i < H_SENTINELS; i++) {
        h__sents[i].port = h_free_port();
        char conf[400], log[400];
        snprintf(conf, sizeof(conf), "%s/sentinel%d.conf", h_test_dir(), i);
        snprintf(log, sizeof(log), "%s/sentinel%d.log", h_test_dir(), i);
        FILE *f = fopen(conf, "w");
        TT_ASSERT_MSG(f != NULL, "cannot write %s", conf);
        /* failover-timeout also bounds how long a sentinel tolerates a
         * replica whose replicaof differs from the master's address (the
         * proxy's port here): past it, it "fixes" the replica to replicate
         * from the master directly (+fix-slave-config), which would take
         * the proxy out. 10 s covers a scenario's set-up and fault; the
         * failover itself is not slowed by it, but a failed leader
         * election (a split vote) is retried only after twice that. The
         * down-after times differ (down_after_ms, + 1/4, + 1/2), so that
         * one sentinel usually asks for votes before the others do. */
        fprintf(f,
                "port %d\n"
                "bind 127.0.0.1\n"
                "dir %s\n"
                "sentinel monitor %s 127.0.0.1 %d 2\n"
                "sentinel down-after-milliseconds %s %d\n"
                "sentinel failover-timeout %s 10000\n"
                "sentinel parallel-syncs %s 1\n",
                h__sents[i].port, h_test_dir(), master_name, mport, master_name,
                down_after_ms + i * down_after_ms / 4, master_name,
                master_name);
        if (h__sent_pass[0] != '\0') {
            fprintf(f, "requirepass %s\n", h__sent_pass);
        }
        TT_ASSERT(fclose(f) == 0);
        char *argv[] = {"redis-server", conf, "--sentinel", NULL};
        h__sents[i].pid = h_spawn(argv, log, NULL, NULL);
        h__topo_wait_ping(h__sents[i].port, h__sents[i].pid, h__sent_pass, log);
        used += (size_t)snprintf(h__sent_addrs + used,
                                 sizeof(h__sent_addrs) - used, "%s127.0.0.1:%d",
                                 i > 0 ? "," : "", h__sents[i].port);
    }

    /* Ready when every sentinel knows the replica and the two others
     * (their hello messages go every 2 s through the master). */
    double end = h_now_ms() + 20000;
    for (int i = 0; i < H_SENTINELS;) {
        if (h__sentinel_count(i, "replicas") == 1 &&
            h__sentinel_count(i, "sentinels") == H_SENTINELS - 1 &&
            h_sentinel_master_port(i) == mport) {
            i++;
            continue;
        }
        TT_ASSERT_MSG(h_now_ms() < end,
                      "sentinel %d did not learn the topology in 20 s", i);
        h_sleep_ms(50);
    }
}

fp_t *h_sentinel_repl_proxy(void) {
    return h__repl_proxy;
}

const char *h_sentinel_addrs(void) {
    return h__sent_addrs;
}

int h_sentinel_port(int i) {
    TT_ASSERT(i >= 0 && i < H_SENTINELS);
    return h__sents[i].port;
}

double h_sentinel_wait_master(int port, int timeout_ms) {
    double start = h_now_ms();
    for (int i = 0; i < H_SENTINELS;) {
        if (h_sentinel_master_port(i) == port) {
            i++;
            continue;
        }
        if (h_now_ms() - start > timeout_ms) {
            return -1;
        }
        h_sleep_ms(50);
    }
    return h_now_ms() - start;
}

void h_topo_stop(void) {
    for (int i = 0; i < H_SENTINELS; i++) {
        h__topo_reap(&h__sents[i].pid, SIGKILL);
    }
    for (int i = 0; i < h__nnodes; i++) {
        h__topo_reap(&h__nodes[i].pid, SIGKILL);
    }
    fp_stop(h__repl_proxy);
    h__repl_proxy = NULL;
    h__nnodes = 0;
}

/* --------------------------------------------------------- grant order --- */

typedef struct h__grant {
    char ts[32]; /* the log line's timestamp: ISO 8601, sorts as text */
    long fence;
    int svc;
} h__grant_t;

static int h__grant_cmp(const void *pa, const void *pb) {
    const h__grant_t *a = pa, *b = pb;
    int c = strcmp(a->ts, b->ts);
    if (c != 0) {
        return c;
    }
    /* Two grants in one millisecond: the order that rises, so that a
     * violation is never an artefact of the clock's resolution. */
    return (a->fence > b->fence) - (a->fence < b->fence);
}

int h_grants(h_svc_t *const *svcs, int nsvc, const char *resource,
             h_grant_t *out, int max) {
    enum { MAXG = 20000 };
    h__grant_t *g = calloc(MAXG, sizeof(*g));
    TT_ASSERT(g != NULL);
    char want[128];
    snprintf(want, sizeof(want), " resource=%s ", resource);
    int n = 0;
    for (int s = 0; s < nsvc; s++) {
        FILE *f = fopen(svcs[s]->log, "r");
        TT_ASSERT_MSG(f != NULL, "cannot read %s", svcs[s]->log);
        char line[1024];
        while (fgets(line, sizeof(line), f) != NULL && n < MAXG) {
            const char *fe = strstr(line, " fence=");
            if (strstr(line, "event=lock.acquired") == NULL ||
                strstr(line, want) == NULL || fe == NULL) {
                continue;
            }
            snprintf(g[n].ts, sizeof(g[n].ts), "%.*s", (int)strcspn(line, " "),
                     line);
            g[n].fence = atol(fe + 7);
            g[n].svc = s;
            n++;
        }
        fclose(f);
    }
    qsort(g, (size_t)n, sizeof(*g), h__grant_cmp);
    for (int i = 0; i < n && i < max; i++) {
        snprintf(out[i].ts, sizeof(out[i].ts), "%s", g[i].ts);
        out[i].fence = g[i].fence;
        out[i].svc = g[i].svc;
    }
    free(g);
    return n;
}

int h_grant_order_violations(h_svc_t *const *svcs, int nsvc,
                             const char *resource, int *ngrants) {
    enum { MAX = 20000 };
    h_grant_t *g = calloc(MAX, sizeof(*g));
    TT_ASSERT(g != NULL);
    int n = h_grants(svcs, nsvc, resource, g, MAX);
    if (n > MAX) {
        n = MAX;
    }
    int bad = 0;
    for (int i = 1; i < n; i++) {
        if (g[i].fence <= g[i - 1].fence) {
            if (bad++ < 3) {
                printf("    grant order of %s: %s %s fence %ld after %s %s "
                       "fence %ld\n",
                       resource, g[i].ts, svcs[g[i].svc]->name, g[i].fence,
                       g[i - 1].ts, svcs[g[i - 1].svc]->name, g[i - 1].fence);
            }
        }
    }
    if (ngrants != NULL) {
        *ngrants = n;
    }
    free(g);
    return bad;
}
