/*
 * harness.h: real PostgreSQL, real Redis and real couponsvc processes for the
 * integration tests. Nothing here is a mock.
 *
 * Once per run (in the test runner, before any test): a temporary directory,
 * a fresh PostgreSQL cluster on a free loopback port (as user postgres when
 * run as root: initdb refuses root), and a template database with the
 * migrations applied by `couponsvc migrate`.
 *
 * Once per test (in the test's own process): a database cloned from the
 * template, and a Redis on another free port. Services the test starts are
 * children of the test process, in its process group: when the test ends,
 * or times out, the runner kills the group, so nothing outlives it. On
 * failure the tail of every service log is printed.
 */
#ifndef COUPONSVC_HARNESS_H
#define COUPONSVC_HARNESS_H

#include <jansson.h>
#include <stdint.h>
#include <sys/types.h>

#include "lg_verify.h"

#define H_MAX_SVCS 8

typedef struct h_svc {
    pid_t pid;
    int port;
    char name[32];
    char url[64];
    char log[512];
    int conn_timeout_s; /* its COUPON_CONN_TIMEOUT_S: its idle timeout */
} h_svc_t;

/* Runner-level setup/teardown (for tt_main). */
int h_setup(void);
void h_teardown(void);

/* Per test: a database and a Redis of its own. Call first in every
 * integration test. */
void h_begin(void);

const char *h_dsn(void); /* the test database, for COUPON_PG_DSN */
int h_redis_port(void);

/* Redis control, for fault tests. */
void h_redis_stop(void);      /* SIGTERM and wait: data gone (no persistence) */
void h_redis_start(void);     /* on the same port */
void h_redis_signal(int sig); /* e.g. SIGSTOP / SIGCONT */

/* Runs one Redis command on the test's Redis; returns its integer reply or
 * -1 (for status/string replies 0). Fails the test if Redis is down. */
long long h_redis_cmd(const char *fmt, ...);

/* Starts couponsvc with the test's DSN and Redis, plus env ("K=V", NULL-
 * terminated; may be NULL), and waits until /healthz answers. */
h_svc_t *h_svc_start(const char *name, const char *const *env);

/* SIGTERM, then waits up to timeout_ms; returns the exit status (or -1 if
 * it had to be killed). */
int h_svc_stop(h_svc_t *s, int timeout_ms);

/* Forgets s, which must be the service started last and already stopped
 * (h_svc_stop), so that its slot can be used again: for tests that start
 * and stop many services one after the other. Its log stays on disk. */
void h_svc_drop(h_svc_t *s);

/* One HTTP request. Returns the status (0 on transport error); *body gets a
 * new NUL-terminated copy of the response body if body != NULL. */
long h_http(const char *method, const char *url, const char *content_type,
            const char *auth, const char *data, size_t len, char **body);

/* With COUPONSVC_API_RECORD set to a directory, appends "METHOD PATH
 * STATUS ERROR" ("-" when the body has no error member) to
 * DIR/<test name>.api, for the check of the API document
 * (tests/openapi/check_openapi.py). h_http calls it for every answer. */
void h_api_record(const char *method, const char *url, long status,
                  const char *body);

/* A response body being collected: h_buf_write is a CURLOPT_WRITEFUNCTION
 * for it (CURLOPT_WRITEDATA = the h_buf_t); p stays NUL-terminated. */
typedef struct h_buf {
    char *p; /* new (free()); NULL until the first byte */
    size_t len;
} h_buf_t;
size_t h_buf_write(char *ptr, size_t size, size_t n, void *arg);

/* POST /claim; returns the status and the parsed body (new ref) in *json. */
long h_claim(const h_svc_t *s, const char *coupon, const char *user,
             json_t **json);

/* POST /coupons with the admin token the harness gives every service. */
void h_coupon(const h_svc_t *s, const char *id, long total);

/* Reads a metric's value from GET /metrics (the whole line's name part must
 * match, labels included). -1 if absent. */
double h_metric(const h_svc_t *s, const char *series);

/* One integer from a query on the test database (first row, first column). */
long long h_pg_int(const char *sql);

/* 1 if a line of the file at path (a service's log, a command's output)
 * contains text, else 0; fails the test if the file cannot be read. */
int h_file_has(const char *path, const char *text);

/* Concurrent claims: users <prefix>-0 .. <prefix>-(n-1), spread round-robin
 * over svcs, from `threads` threads at once. counts[status]++ per answer
 * (status 0 = transport error). */
typedef struct h_counts {
    long by_status[600];
} h_counts_t;
void h_claim_many(h_svc_t *const *svcs, int nsvc, const char *coupon,
                  const char *prefix, int n, int threads, h_counts_t *out);

/* The invariants every claim test ends with: claimed <= stock, claim rows ==
 * claimed, one claim per user, every 201 durable (n201 == rows), and fences
 * strictly rising in commit order (seq) when the claims carry fences. */
void h_check_invariants(const char *coupon, long stock, long n201);

/* The same check without asserting: the shared invariant checker
 * (loadtest/lg_verify.c, which the load generator's --verify-dsn runs too)
 * on one coupon of the test database, no answered claims given. Fills *rep;
 * returns lg_verify_run's result. For tests that plant a violation and
 * expect the checker to see it. */
int h_invariants(const char *coupon, lg_verify_report_t *rep);

/* Runs `couponsvc migrate` on the test database; returns its exit status. */
int h_run_migrate(void);

/* Sleeps ms milliseconds. */
void h_sleep_ms(long ms);

/* Milliseconds on the monotonic clock (for intervals, not dates). */
double h_now_ms(void);

/* A free loopback TCP port (bound, then closed: nobody else holds it at
 * the moment of the call). Exits the process if there is none. */
int h_free_port(void);

struct passwd;

/* fork + exec (execvp) argv, stdout and stderr appended to logfile, stdin
 * from /dev/null, the settings of env ("K=V", NULL-terminated, may be NULL)
 * added, as user pw if not NULL. Returns the child's pid (the caller reaps
 * it); exits the process if fork fails. For the harness's own files
 * (harness.c, h_topo.c, h_etcd.c) and tests that start a helper process. */
pid_t h_spawn(char *const *argv, const char *logfile, struct passwd *pw,
              const char *const *env);

/* Polls until metric >= want on s, up to timeout_ms; returns the last value. */
double h_wait_metric(const h_svc_t *s, const char *series, double want,
                     int timeout_ms);

/* ------------------------------------------ additions for the fault tests ---
 * (tests/itest/test_faults.c). None of them changes what the functions above
 * do. */

/* The test's own directory (service logs, a private cluster's data). */
const char *h_test_dir(void);

/* Replaces the test's Redis: SIGKILL (data gone), then a new one on the same
 * port with extra arguments appended to the usual ones (NULL-terminated, may
 * be NULL; e.g. "--enable-debug-command", "local") and extra environment
 * ("K=V", NULL-terminated, may be NULL; e.g. an LD_PRELOAD). Waits for PING. */
void h_redis_restart_with(const char *const *args, const char *const *env);

/* Sends DEBUG SLEEP to the test's Redis from a background redis-cli and
 * returns at once: Redis then answers nobody for ms. The Redis must allow
 * DEBUG (h_redis_restart_with "--enable-debug-command", "local"). Returns
 * the redis-cli's pid (waitpid it, or leave it to the end of the test). */
pid_t h_redis_stall_bg(long ms);

/* A PostgreSQL cluster of the test's own, for tests that stop and restart
 * PostgreSQL: restarting the run's shared cluster would make the new
 * postmaster a child of this test (killed with it) and leave the runner
 * waiting on a dead pid. initdb (about 1 s), start on a free port with
 * synchronous_commit ON (the shared cluster runs with it off, under which an
 * immediate shutdown may lose commits already acknowledged; fsync stays off:
 * a process crash does not lose the OS page cache), a database with the
 * migrations applied by `couponsvc migrate`. From then on h_dsn(), h_pg_int,
 * h_check_invariants and services started afterwards use it. */
void h_pg_private_start(void);

/* Stops the private cluster: "smart", "fast" or "immediate" (the pg_ctl
 * modes: SIGTERM, SIGINT, SIGQUIT to the postmaster); waits for it to exit. */
void h_pg_private_stop(const char *mode);

/* Starts the private cluster again on the same port and data directory
 * (after "immediate", it runs crash recovery first); waits until it accepts
 * connections. */
void h_pg_private_restart(void);

/* A streaming standby of the private cluster (h_pg_private_start first):
 * pg_basebackup -R, then a postgres of its own on a free port, replaying
 * (asynchronously unless the primary's synchronous_standby_names names
 * "walreceiver", its application_name). Returns its DSN (database t). */
const char *h_pg_standby_start(void);
void h_pg_standby_stop(void);    /* fast shutdown */
void h_pg_standby_restart(void); /* after h_pg_standby_stop */
/* Ends recovery (pg_promote, waiting): the standby becomes a primary. */
void h_pg_standby_promote(void);
/* Waits (up to 30 s) until the standby has replayed all the primary's WAL
 * written so far. */
void h_pg_standby_catch_up(void);

/* ------------------------------------------------ a real nginx in front ---
 * nginx (Debian's nginx-light) as a child of the test, in the test's
 * directory (-p), on a free loopback port, in the foreground with
 * master_process off, so that the test's process group holds it. Its server
 * block includes the repository's deploy/nginx/proxy.conf (override the
 * path with COUPONSVC_PROXY_CONF), so a test goes through the load
 * balancer's real configuration; its http block includes http.conf from
 * the same directory (request ids; the rate limit, see h_nginx_rate_limit);
 * `upstream couponsvc` points at the given
 * services. Returns the port nginx listens on; waits until /lb-healthz
 * answers. One nginx per test. */
int h_nginx_start(h_svc_t *const *upstreams, int n);

/* 1: the next h_nginx_start applies deploy/nginx/http.conf's per-client
 * rate limit as shipped; 0 (the default): no limit, since every client of
 * a test comes from the loopback. */
void h_nginx_rate_limit(int on);

/* Stops it (SIGQUIT, then SIGKILL after 5 s) and waits. Accepts no nginx. */
void h_nginx_stop(void);

/* ------------------------------------------ additions for the Redis tests ---
 * (tests/itest/test_redis.c, test_redis_faults.c). */

/* The password of the default user of a Redis with ACLs (h_redis_restart_acl);
 * the harness's own commands authenticate with it. */
#define H_REDIS_ADMIN_PASS "harness-admin-pw"

/* The shipped ACL rule: the one "user ..." line of deploy/redis/couponsvc.acl
 * (or $COUPONSVC_ACL), without a password. Static storage. */
const char *h_acl_rule(void);

/* Replaces the test's Redis (data gone) with one that requires AUTH: the
 * default user needs H_REDIS_ADMIN_PASS, and the service's user is exactly
 * h_acl_rule() with password svc_pass. Until the next h_begin. */
void h_redis_restart_acl(const char *svc_pass);

/* Starts one more Redis (no password) on a free port for this test; name
 * names its log. Returns the port. It ends with the test. */
int h_redis_extra_start(const char *name);

/* One command on the Redis at port (the test's own, authenticated, or an
 * extra one); fails the test on an error reply. Returns an integer reply, or
 * 0. */
long long h_redis_cmd_at(int port, const char *fmt, ...);

struct redisReply;

/* The same, returning the whole reply (new: freeReplyObject); fails the
 * test on an error reply or none. */
struct redisReply *h_redis_reply_at(int port, const char *fmt, ...);

/* ------------------------------------------------- the etcd suites ---
 * COUPONSVC_LOCK_BACKEND=etcd runs the same tests on a 3-member etcd
 * cluster (h_etcd.h); a test about Redis itself says so with
 * H_REDIS_ONLY() and passes without running there. */
#include "h_etcd.h"

#define H_REDIS_ONLY()                                                         \
    do {                                                                       \
        if (h_etcd_on()) {                                                     \
            printf("    (Redis-only: not run on etcd)\n");                     \
            return;                                                            \
        }                                                                      \
    } while (0)
/* ------------------------------------------------- Redis topologies ---
 * (tests/itest/h_topo.c), for the lock backends: independent nodes for
 * Redlock, and a Sentinel set-up. Processes of the test, on free loopback
 * ports, files in h_test_dir(); h_topo_stop ends them (the end of the test
 * does too). Nodes are numbered 0..n-1 and have no password and no
 * persistence: a restart is a node that lost its data. They are separate
 * from the test's own Redis (h_begin), which stays as it is. */

#define H_NODES_MAX 7
#define H_SENTINELS 3

/* Starts n independent redis-server nodes (1 <= n <= H_NODES_MAX), each
 * waited for until it answers PING. Once per test. */
void h_nodes_start(int n);

int h_nodes_count(void);
int h_node_port(int i);
pid_t h_node_pid(int i); /* 0 while stopped */

/* "127.0.0.1:p0,127.0.0.1:p1,...": for COUPON_REDIS_ADDRS. Static storage. */
const char *h_nodes_addrs(void);

/* SIGKILL and wait: the node and its data are gone. */
void h_node_kill(int i);

/* (Re)starts stopped node i on its port, empty, with extra arguments and
 * environment (NULL-terminated, may be NULL: an LD_PRELOAD, say). */
void h_node_start(int i, const char *const *args, const char *const *env);

void h_node_signal(int i, int sig); /* SIGSTOP / SIGCONT */
int h_node_alive(int i);

/* One command on 127.0.0.1:port (a node, or anything without a password):
 * an integer reply, a string reply read as a number, 0 for a status, -1 for
 * nil, -2 for an error or no connection. Never fails the test. */
long long h_node_int(int port, const char *fmt, ...);

/* One field of INFO <section> on 127.0.0.1:port into out; 0, or -1. */
int h_node_info(int port, const char *section, const char *field, char *out,
                size_t outlen);

/* The Sentinel topology: node 0 a master, node 1 its replica, whose
 * replicaof is a TCP proxy (tests/faults/proxy.h) in front of the master,
 * so that black-holing the proxy holds replication back while both nodes
 * stay up; H_SENTINELS sentinels (redis-server --sentinel) monitoring the
 * master as master_name with quorum 2, down-after down_after_ms (and 1/4,
 * 1/2 more for the second and third: fewer split votes), and
 * requirepass sentinel_pass (NULL or "": none). Returns once the replica
 * has caught up and every sentinel knows the replica and the others. */
void h_sentinel_start(const char *master_name, const char *sentinel_pass,
                      int down_after_ms);

struct fp;
struct fp *h_sentinel_repl_proxy(void); /* the replication path */
const char *h_sentinel_addrs(void);     /* for COUPON_REDIS_SENTINELS; static */
int h_sentinel_port(int i);

/* What sentinel i names as the master: its port, or -1. */
int h_sentinel_master_port(int i);

/* Polls until every sentinel names port as the master; returns the time
 * it took (ms), or -1 after timeout_ms. */
double h_sentinel_wait_master(int port, int timeout_ms);

/* Waits until the replica (node 1) is linked and at the master's offset. */
void h_repl_wait_synced(int timeout_ms);

/* Ends every node and sentinel of the test, and the replication proxy. */
void h_topo_stop(void);

/* The grants of one lock resource, from the services' logs (the
 * "lock.acquired resource=R fence=F token=T backend=B" line every grant
 * logs), in grant order: by the lines' timestamps, ties by fence. */
typedef struct h_grant {
    char ts[32]; /* the line's timestamp */
    long fence;
    int svc; /* index into svcs */
} h_grant_t;

/* Fills out[max] with the grants of resource logged by svcs; returns how
 * many there are (may be more than max). */
int h_grants(h_svc_t *const *svcs, int nsvc, const char *resource,
             h_grant_t *out, int max);

/* The grants of resource whose fence is not above the one granted before
 * (the first three are printed); *ngrants (may be NULL) gets the count of
 * grants. With no data loss, 0: fences rise in grant order. */
int h_grant_order_violations(h_svc_t *const *svcs, int nsvc,
                             const char *resource, int *ngrants);

#endif
