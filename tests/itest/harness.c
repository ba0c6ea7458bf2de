/*
 * harness.c: see harness.h.
 */
#include "harness.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <libpq-fe.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "h_etcd.h"
#include "mono.h"
#include "str.h"
#include "tt.h"

#define H_ADMIN_TOKEN "test-admin-token"

/* Run-wide (set in the runner before forking, inherited by each test). */
static char h__dir[256];    /* temporary directory of the run */
static char h__bindir[256]; /* PostgreSQL's bin directory */
static int h__pg_port;
static pid_t h__pg_pid;

/* Per test (in the test's process). */
static char h__test_dir[320];
static char h__dsn[256];
static int h__redis_port;
static pid_t h__redis_pid;
static const char *h__redis_pass; /* the default user's password, or NULL */
static h_svc_t h__svcs[H_MAX_SVCS];
static int h__nsvcs;

/* -------------------------------------------------------------- helpers --- */

void h_sleep_ms(long ms) {
    mono_sleep_ns((int64_t)ms * MONO_MS);
}

double h_now_ms(void) {
    return (double)mono_ns() / (double)MONO_MS;
}

/* A port the kernel calls free now. The socket is closed before the port is
 * used, so the kernel may hand the same port out again on the next call: a
 * test that asked for five Redis nodes once got one port twice (and the
 * service rightly refused a Redlock of four distinct nodes). So the ports
 * this process has handed out are remembered and never returned twice. */
int h_free_port(void) {
    enum { H__GIVEN_MAX = 512 };
    static int given[H__GIVEN_MAX]; /* a ring: the last ports handed out */
    static size_t ngiven;           /* how many ever were */
    for (int attempt = 0; attempt < 1000; attempt++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET,
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t len = sizeof(a);
        if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
            getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
            perror("free port");
            exit(1);
        }
        close(fd);
        int port = ntohs(a.sin_port);
        size_t i = 0, n = ngiven < H__GIVEN_MAX ? ngiven : H__GIVEN_MAX;
        while (i < n && given[i] != port) {
            i++;
        }
        if (i == n) {
            given[ngiven++ % H__GIVEN_MAX] = port;
            return port;
        }
    }
    fprintf(stderr, "free port: the kernel kept handing out used ports\n");
    exit(1);
}

/* The user PostgreSQL runs as: postgres when we are root (initdb refuses
 * root), ourselves otherwise. Returns NULL for "ourselves". */
static struct passwd *h__pg_user(void) {
    if (geteuid() != 0) {
        return NULL;
    }
    struct passwd *pw = getpwnam("postgres");
    if (pw == NULL) {
        fprintf(stderr, "harness: running as root but there is no user "
                        "'postgres' (install postgresql)\n");
        exit(1);
    }
    return pw;
}

pid_t h_spawn(char *const *argv, const char *logfile, struct passwd *pw,
              const char *const *env) {
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        exit(1);
    }
    if (pid != 0) {
        return pid;
    }
    int fd = open(logfile, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
        close(fd);
    }
    int devnull = open("/dev/null", O_RDONLY);
    if (devnull >= 0) {
        dup2(devnull, 0);
        close(devnull);
    }
    for (int i = 0; env != NULL && env[i] != NULL; i++) {
        putenv((char *)env[i]);
    }
    if (pw != NULL && (setgid(pw->pw_gid) != 0 || setuid(pw->pw_uid) != 0)) {
        perror("setuid postgres");
        _exit(127);
    }
    execvp(argv[0], argv);
    fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
    _exit(127);
}

/* Waits for pid up to timeout_ms; returns its wait status or -1. */
static int h__wait(pid_t pid, int timeout_ms) {
    double end = h_now_ms() + timeout_ms;
    int status;
    for (;;) {
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid) {
            return status;
        }
        if (w < 0 || h_now_ms() > end) {
            return -1;
        }
        h_sleep_ms(10);
    }
}

static void h__tail(const char *path, int lines) {
    char cmd[700];
    snprintf(cmd, sizeof(cmd),
             "tail -n %d '%s' 2>/dev/null | sed 's/^/      | /'", lines, path);
    fflush(stderr);
    int rc = system(cmd);
    (void)rc;
}

static void h__dump(void) {
    for (int i = 0; i < h__nsvcs; i++) {
        fprintf(stderr, "    --- log of %s (%s), last lines:\n",
                h__svcs[i].name, h__svcs[i].log);
        h__tail(h__svcs[i].log, 25);
    }
}

/* ----------------------------------------------------------- postgres --- */

static PGconn *h__pg(const char *db) {
    char dsn[256];
    snprintf(dsn, sizeof(dsn),
             "host=127.0.0.1 port=%d dbname=%s user=postgres "
             "connect_timeout=5",
             h__pg_port, db);
    PGconn *c = PQconnectdb(dsn);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "harness: connect %s: %s", db, PQerrorMessage(c));
        PQfinish(c);
        return NULL;
    }
    return c;
}

static int h__pg_exec(PGconn *c, const char *sql) {
    PGresult *r = PQexec(c, sql);
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK ||
             PQresultStatus(r) == PGRES_TUPLES_OK;
    if (!ok) {
        fprintf(stderr, "harness: %s: %s", sql, PQresultErrorMessage(r));
    }
    PQclear(r);
    return ok ? 0 : -1;
}

static const char *h__bin(void) {
    const char *b = getenv("COUPONSVC_BIN");
    return b != NULL ? b : "build/couponsvc";
}

/* The PostgreSQL binaries' directory (pg_config --bindir) into h__bindir. */
static int h__find_pg_bindir(void) {
    FILE *p = popen("pg_config --bindir 2>/dev/null", "r");
    if (p == NULL || fgets(h__bindir, sizeof(h__bindir), p) == NULL) {
        fprintf(stderr, "harness: pg_config not found (libpq-dev)\n");
        if (p != NULL) {
            pclose(p);
        }
        return -1;
    }
    pclose(p);
    str_trim_newline(h__bindir);
    return 0;
}

/* The run's temporary directory, h__dir, readable by the postgres user. */
static int h__make_run_dir(void) {
    snprintf(h__dir, sizeof(h__dir), "/tmp/couponsvc-it-XXXXXX");
    if (mkdtemp(h__dir) == NULL) {
        perror("mkdtemp");
        return -1;
    }
    chmod(h__dir, 0755);
    return 0;
}

/* Starts postgres on the cluster in dir, on 127.0.0.1:port and a socket in
 * dir, fsync off (a test cluster), with the settings of `extra` ("-c"
 * values, NULL-terminated, at most 8), logging to log, as pw (NULL: this
 * user). Returns its pid. */
static pid_t h__postgres_spawn(const char *dir, int port, const char *log,
                               struct passwd *pw, const char *const *extra) {
    char postgres[300], portstr[16];
    snprintf(portstr, sizeof(portstr), "%d", port);
    snprintf(postgres, sizeof(postgres), "%s/postgres", h__bindir);
    char *d = (char *)dir;
    /* Each option next to its value. */
    /* clang-format off */
    char *argv[32] = {postgres, "-D", d, "-p", portstr, "-k", d,
                      "-c", "listen_addresses=127.0.0.1",
                      "-c", "fsync=off"};
    /* clang-format on */
    int n = 11;
    for (int i = 0; extra[i] != NULL; i++) {
        if (n + 3 > (int)(sizeof(argv) / sizeof(argv[0]))) {
            break;
        }
        argv[n++] = "-c";
        argv[n++] = (char *)extra[i];
    }
    argv[n] = NULL;
    return h_spawn(argv, log, pw, NULL);
}

/* Waits up to 30 s for postgres (pid) on port to answer. Returns NULL once
 * it does, or why not ("exited during start", "did not start"). */
static const char *h__postgres_wait(int port, pid_t pid) {
    char ping[160];
    snprintf(ping, sizeof(ping),
             "host=127.0.0.1 port=%d dbname=postgres user=postgres "
             "connect_timeout=2",
             port);
    double end = h_now_ms() + 30000;
    while (PQping(ping) != PQPING_OK) {
        if (waitpid(pid, NULL, WNOHANG) != 0) {
            return "exited during start";
        }
        if (h_now_ms() > end) {
            return "did not start";
        }
        h_sleep_ms(20);
    }
    return NULL;
}

/* A new cluster in pgdir (created), its log in log, both owned by pw (NULL:
 * this user). */
static int h__pg_initdb(const char *pgdir, const char *log, struct passwd *pw) {
    if (mkdir(pgdir, 0700) != 0) {
        perror(pgdir);
        return -1;
    }
    int fd = open(log, O_CREAT | O_WRONLY, 0666);
    if (fd >= 0) {
        close(fd);
    }
    if (pw != NULL && (chown(pgdir, pw->pw_uid, pw->pw_gid) != 0 ||
                       chown(log, pw->pw_uid, pw->pw_gid) != 0)) {
        perror("chown");
        return -1;
    }
    char initdb[300];
    snprintf(initdb, sizeof(initdb), "%s/initdb", h__bindir);
    char *d = (char *)pgdir;
    char *iargv[] = {initdb,     "-D",        d,    "-A",   "trust", "-U",
                     "postgres", "--no-sync", "-E", "UTF8", NULL};
    pid_t ip = h_spawn(iargv, log, pw, NULL);
    int st = h__wait(ip, 60000);
    if (st < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "harness: initdb failed, see %s\n", log);
        h__tail(log, 20);
        return -1;
    }
    return 0;
}

/* Starts postgres on the cluster in pgdir, on a free port (h__pg_port,
 * h__pg_pid), durability off (a test database), and waits until it
 * answers. */
static int h__pg_start(const char *pgdir, const char *log, struct passwd *pw) {
    const char *extra[] = {"synchronous_commit=off", "full_page_writes=off",
                           "max_connections=400", NULL};
    h__pg_port = h_free_port();
    h__pg_pid = h__postgres_spawn(pgdir, h__pg_port, log, pw, extra);
    const char *why = h__postgres_wait(h__pg_port, h__pg_pid);
    if (why != NULL) {
        fprintf(stderr, "harness: postgres %s, see %s\n", why, log);
        h__tail(log, 20);
        return -1;
    }
    return 0;
}

/* The template database tpl, its schema from the real migrate command:
 * each test's database is a copy of it. */
static int h__make_template(void) {
    PGconn *c = h__pg("postgres");
    if (c == NULL || h__pg_exec(c, "CREATE DATABASE tpl") != 0) {
        PQfinish(c);
        return -1;
    }
    PQfinish(c);

    char dsn[200], mlog[320];
    snprintf(dsn, sizeof(dsn),
             "COUPON_PG_DSN=host=127.0.0.1 port=%d dbname=tpl user=postgres",
             h__pg_port);
    snprintf(mlog, sizeof(mlog), "%s/migrate.log", h__dir);
    const char *env[] = {dsn, NULL};
    char *margv[] = {(char *)h__bin(), "migrate", NULL};
    pid_t mp = h_spawn(margv, mlog, NULL, env);
    int st = h__wait(mp, 30000);
    if (st < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "harness: couponsvc migrate failed\n");
        h__tail(mlog, 20);
        return -1;
    }
    return 0;
}

int h_setup(void) {
    curl_global_init(CURL_GLOBAL_ALL);
    signal(SIGPIPE, SIG_IGN);
    if (h__find_pg_bindir() != 0 || h__make_run_dir() != 0) {
        return -1;
    }
    struct passwd *pw = h__pg_user();
    char pgdir[300], log[320];
    snprintf(pgdir, sizeof(pgdir), "%s/pg", h__dir);
    snprintf(log, sizeof(log), "%s/postgres.log", h__dir);
    if (h__pg_initdb(pgdir, log, pw) != 0 || h__pg_start(pgdir, log, pw) != 0 ||
        h__make_template() != 0) {
        return -1;
    }
    printf("# postgres on 127.0.0.1:%d, run directory %s\n", h__pg_port,
           h__dir);
    if (h_etcd_on() && h_etcd_setup() != 0) {
        return -1;
    }
    return 0;
}

void h_teardown(void) {
    if (h_etcd_on()) {
        h_etcd_teardown();
    }
    if (h__pg_pid > 0) {
        kill(h__pg_pid, SIGINT); /* fast shutdown */
        if (h__wait(h__pg_pid, 15000) < 0) {
            kill(h__pg_pid, SIGKILL);
            waitpid(h__pg_pid, NULL, 0);
        }
    }
    if (h__dir[0] != '\0' && getenv("KEEP_TEST_DIR") == NULL) {
        char cmd[300];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", h__dir);
        int rc = system(cmd);
        (void)rc;
    }
}

long long h_pg_int(const char *sql) {
    PGconn *c = PQconnectdb(h__dsn);
    TT_ASSERT_MSG(PQstatus(c) == CONNECTION_OK, "connect: %s",
                  PQerrorMessage(c));
    PGresult *r = PQexec(c, sql);
    TT_ASSERT_MSG(PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0,
                  "%s: %s", sql, PQresultErrorMessage(r));
    long long v = PQgetisnull(r, 0, 0) ? -1 : atoll(PQgetvalue(r, 0, 0));
    PQclear(r);
    PQfinish(c);
    return v;
}

/* -------------------------------------------------------------- redis --- */

/* Authenticates the harness's own connection when the test's Redis has a
 * password (h_redis_restart_acl). 0 on success. */
static int h__redis_auth(redisContext *c) {
    if (h__redis_pass == NULL) {
        return 0;
    }
    redisReply *r = redisCommand(c, "AUTH %s", h__redis_pass);
    int ok = r != NULL && r->type == REDIS_REPLY_STATUS;
    freeReplyObject(r);
    return ok ? 0 : -1;
}

/* Starts redis-server on the test's port with the harness's settings, plus
 * args (NULL-terminated, may be NULL) and env ("K=V", may be NULL), and
 * waits until it answers PING. */
static void h__redis_launch(const char *const *args, const char *const *env) {
    char port[16], log[400];
    snprintf(port, sizeof(port), "%d", h__redis_port);
    snprintf(log, sizeof(log), "%s/redis.log", h__test_dir);
    char *argv[48] = {
        "redis-server", "--port", port,        "--bind",
        "127.0.0.1",    "--save", "",          "--appendonly",
        "no",           "--dir",  h__test_dir, "--maxmemory-policy",
        "noeviction"};
    int n = 13;
    for (int i = 0; args != NULL && args[i] != NULL && n < 47; i++) {
        argv[n++] = (char *)args[i];
    }
    argv[n] = NULL;
    h__redis_pid = h_spawn(argv, log, NULL, env);
    double end = h_now_ms() + 10000;
    for (;;) {
        struct timeval tv = {1, 0};
        redisContext *c =
            redisConnectWithTimeout("127.0.0.1", h__redis_port, tv);
        int ok = c != NULL && c->err == 0 && h__redis_auth(c) == 0;
        if (ok) {
            redisReply *r = redisCommand(c, "PING");
            ok = r != NULL && r->type == REDIS_REPLY_STATUS;
            freeReplyObject(r);
        }
        redisFree(c);
        if (ok) {
            return;
        }
        TT_ASSERT_MSG(waitpid(h__redis_pid, NULL, WNOHANG) == 0,
                      "redis exited during start (%s)", log);
        TT_ASSERT_MSG(h_now_ms() < end, "redis did not start (%s)", log);
        h_sleep_ms(20);
    }
}

void h_redis_start(void) {
    h__redis_launch(NULL, NULL);
}

void h_redis_stop(void) {
    if (h__redis_pid > 0) {
        kill(h__redis_pid, SIGKILL); /* no persistence: the data is gone */
        waitpid(h__redis_pid, NULL, 0);
        h__redis_pid = 0;
    }
}

void h_redis_signal(int sig) {
    kill(h__redis_pid, sig);
}

int h_redis_port(void) {
    return h__redis_port;
}

long long h_redis_cmd(const char *fmt, ...) {
    struct timeval tv = {2, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", h__redis_port, tv);
    TT_ASSERT_MSG(c != NULL && c->err == 0, "redis connect: %s",
                  c ? c->errstr : "oom");
    TT_ASSERT_MSG(h__redis_auth(c) == 0, "redis AUTH failed");
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    TT_ASSERT_MSG(r != NULL, "redis command failed: %s", c->errstr);
    long long v = r->type == REDIS_REPLY_INTEGER ? r->integer
                  : r->type == REDIS_REPLY_NIL   ? -1
                                                 : 0;
    if (r->type == REDIS_REPLY_STRING) {
        v = atoll(r->str);
    }
    freeReplyObject(r);
    redisFree(c);
    return v;
}

/* ---------------------------------------------------------------- test --- */

void h_begin(void) {
    tt_on_failure = h__dump;
    h__redis_pass = NULL;
    snprintf(h__test_dir, sizeof(h__test_dir), "%s/t%d", h__dir, (int)getpid());
    mkdir(h__test_dir, 0755);

    char db[32], sql[96];
    snprintf(db, sizeof(db), "t%d", (int)getpid());
    snprintf(sql, sizeof(sql), "CREATE DATABASE %s TEMPLATE tpl", db);
    PGconn *c = h__pg("postgres");
    TT_ASSERT(c != NULL);
    TT_ASSERT(h__pg_exec(c, sql) == 0);
    PQfinish(c);
    snprintf(h__dsn, sizeof(h__dsn),
             "host=127.0.0.1 port=%d dbname=%s user=postgres", h__pg_port, db);

    h__redis_port = h_free_port();
    h_redis_start();
    if (h_etcd_on()) {
        h_etcd_begin();
    }
}

const char *h_dsn(void) {
    return h__dsn;
}

h_svc_t *h_svc_start(const char *name, const char *const *env) {
    TT_ASSERT(h__nsvcs < H_MAX_SVCS);
    h_svc_t *s = &h__svcs[h__nsvcs++];
    memset(s, 0, sizeof(*s));
    snprintf(s->name, sizeof(s->name), "%s", name);
    s->port = h_free_port();
    snprintf(s->url, sizeof(s->url), "http://127.0.0.1:%d", s->port);
    snprintf(s->log, sizeof(s->log), "%s/%s.log", h__test_dir, name);

    /* Defaults first; the test's env comes after and wins (putenv order). */
    static char buf[H_MAX_SVCS][6][300];
    char(*b)[300] = buf[h__nsvcs - 1];
    snprintf(b[0], 300, "COUPON_PG_DSN=%s", h__dsn);
    snprintf(b[1], 300, "COUPON_REDIS_ADDRS=127.0.0.1:%d", h__redis_port);
    snprintf(b[2], 300, "COUPON_HTTP_ADDR=127.0.0.1:%d", s->port);
    snprintf(b[3], 300, "COUPON_INSTANCE_ID=%s", name);
    snprintf(b[4], 300, "COUPON_ADMIN_TOKEN=%s", H_ADMIN_TOKEN);
    snprintf(b[5], 300, "COUPON_THREADS=8");
    const char *all[32];
    int n = 0;
    for (int i = 0; i < 6; i++) {
        all[n++] = b[i];
    }
    /* The etcd suites: the lock backend is etcd, under the test's prefix. */
    for (const char *const *e = h_etcd_on() ? h_etcd_svc_env() : NULL;
         e != NULL && *e != NULL; e++) {
        all[n++] = *e;
    }
    s->conn_timeout_s = 30; /* the service's default */
    for (int i = 0; env != NULL && env[i] != NULL && n < 31; i++) {
        all[n++] = env[i];
        if (strncmp(env[i], "COUPON_CONN_TIMEOUT_S=", 22) == 0) {
            s->conn_timeout_s = atoi(env[i] + 22);
        }
    }
    all[n] = NULL;

    char *argv[] = {(char *)h__bin(), NULL};
    s->pid = h_spawn(argv, s->log, NULL, all);

    char url[96];
    snprintf(url, sizeof(url), "%s/healthz", s->url);
    double end = h_now_ms() + 10000;
    while (h_http("GET", url, NULL, NULL, NULL, 0, NULL) != 200) {
        TT_ASSERT_MSG(waitpid(s->pid, NULL, WNOHANG) == 0,
                      "%s exited during start", name);
        TT_ASSERT_MSG(h_now_ms() < end, "%s did not answer /healthz", name);
        h_sleep_ms(20);
    }
    return s;
}

int h_svc_stop(h_svc_t *s, int timeout_ms) {
    kill(s->pid, SIGTERM);
    int st = h__wait(s->pid, timeout_ms);
    if (st < 0) {
        kill(s->pid, SIGKILL);
        waitpid(s->pid, NULL, 0);
        return -1;
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

void h_svc_drop(h_svc_t *s) {
    TT_ASSERT_MSG(h__nsvcs > 0 && s == &h__svcs[h__nsvcs - 1],
                  "h_svc_drop: %s is not the service started last", s->name);
    TT_ASSERT_MSG(waitpid(s->pid, NULL, WNOHANG) != 0 || errno == ECHILD,
                  "h_svc_drop: %s is still running", s->name);
    h__nsvcs--;
}

/* ---------------------------------------------------------------- http --- */

size_t h_buf_write(char *ptr, size_t size, size_t n, void *arg) {
    h_buf_t *b = arg;
    size_t add = size * n;
    char *p = realloc(b->p, b->len + add + 1);
    if (p == NULL) {
        return 0;
    }
    memcpy(p + b->len, ptr, add);
    b->p = p;
    b->len += add;
    b->p[b->len] = '\0';
    return add;
}

static __thread CURL *h__curl;

void h_api_record(const char *method, const char *url, long status,
                  const char *body) {
    const char *dir = getenv("COUPONSVC_API_RECORD");
    if (dir == NULL || dir[0] == '\0' || status == 0) {
        return;
    }
    /* The path without scheme, authority and query. */
    const char *p = strstr(url, "://");
    p = p != NULL ? strchr(p + 3, '/') : url;
    if (p == NULL) {
        p = "/";
    }
    size_t plen = strcspn(p, "?");
    char code[64] = "-";
    json_t *j = body != NULL ? json_loads(body, 0, NULL) : NULL;
    const char *e = json_string_value(json_object_get(j, "error"));
    if (e != NULL) {
        snprintf(code, sizeof(code), "%s", e);
    }
    json_decref(j);
    char path[600], line[1024];
    snprintf(path, sizeof(path), "%s/%s.api", dir,
             tt_current[0] != '\0' ? tt_current : "none");
    int n = snprintf(line, sizeof(line), "%s %.*s %ld %s\n", method,
                     (int)(plen < 800 ? plen : 800), p, status, code);
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd >= 0 && n > 0) {
        ssize_t w = write(fd, line,
                          (size_t)n < sizeof(line) ? (size_t)n : sizeof(line));
        (void)w;
    }
    if (fd >= 0) {
        close(fd);
    }
}

long h_http(const char *method, const char *url, const char *content_type,
            const char *auth, const char *data, size_t len, char **body) {
    if (h__curl == NULL) {
        h__curl = curl_easy_init();
    }
    CURL *c = h__curl;
    curl_easy_reset(c);
    h_buf_t b = {0};
    struct curl_slist *hdr = NULL;
    char line[300];
    if (content_type != NULL) {
        snprintf(line, sizeof(line), "Content-Type: %s", content_type);
        hdr = curl_slist_append(hdr, line);
    }
    if (auth != NULL) {
        snprintf(line, sizeof(line), "Authorization: %s", auth);
        hdr = curl_slist_append(hdr, line);
    }
    hdr = curl_slist_append(hdr, "Expect:");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, h_buf_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 30000L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    /* A new connection per request: a kept-alive one lives on one service
     * thread, and if that thread is busy in a claim, a metrics poll on it
     * would wait for that claim. */
    curl_easy_setopt(c, CURLOPT_FORBID_REUSE, 1L);
    if (data != NULL) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, data);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)len);
    }
    long status = 0;
    if (curl_easy_perform(c) == CURLE_OK) {
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    }
    curl_slist_free_all(hdr);
    h_api_record(method, url, status, b.p);
    if (body != NULL) {
        *body = b.p != NULL ? b.p : strdup("");
    } else {
        free(b.p);
    }
    return status;
}

long h_claim(const h_svc_t *s, const char *coupon, const char *user,
             json_t **json) {
    char url[96], data[512];
    snprintf(url, sizeof(url), "%s/claim", s->url);
    snprintf(data, sizeof(data), "{\"coupon_id\":\"%s\",\"user_id\":\"%s\"}",
             coupon, user);
    char *body = NULL;
    long st = h_http("POST", url, "application/json", NULL, data, strlen(data),
                     json != NULL ? &body : NULL);
    if (json != NULL) {
        *json = json_loads(body, 0, NULL);
        free(body);
    }
    return st;
}

void h_coupon(const h_svc_t *s, const char *id, long total) {
    char url[96], data[256];
    snprintf(url, sizeof(url), "%s/coupons", s->url);
    snprintf(data, sizeof(data), "{\"id\":\"%s\",\"total\":%ld}", id, total);
    long st = h_http("POST", url, "application/json", "Bearer " H_ADMIN_TOKEN,
                     data, strlen(data), NULL);
    TT_ASSERT_MSG(st == 201, "create coupon %s: status %ld", id, st);
}

double h_metric(const h_svc_t *s, const char *series) {
    char url[96], *body = NULL;
    snprintf(url, sizeof(url), "%s/metrics", s->url);
    long st = h_http("GET", url, NULL, NULL, NULL, 0, &body);
    if (st != 200) {
        if (getenv("HDEBUG")) {
            fprintf(stderr, "metric %s: status %ld\n", url, st);
        }
        free(body);
        return -1;
    }
    double v = -1;
    size_t n = strlen(series);
    for (char *line = body; line != NULL && *line != '\0';) {
        char *next = strchr(line, '\n');
        if (strncmp(line, series, n) == 0 && line[n] == ' ') {
            v = atof(line + n + 1);
            break;
        }
        line = next != NULL ? next + 1 : NULL;
    }
    free(body);
    return v;
}

double h_wait_metric(const h_svc_t *s, const char *series, double want,
                     int timeout_ms) {
    double end = h_now_ms() + timeout_ms;
    double v;
    while ((v = h_metric(s, series)) < want && h_now_ms() < end) {
        h_sleep_ms(10);
    }
    return v;
}

/* ---------------------------------------------------------- concurrency --- */

typedef struct h__many {
    h_svc_t *const *svcs;
    int nsvc;
    const char *coupon, *prefix;
    int n;
    int next; /* guarded by mu */
    pthread_mutex_t mu;
    h_counts_t *out;
} h__many_t;

static void *h__many_thread(void *arg) {
    h__many_t *m = arg;
    for (;;) {
        pthread_mutex_lock(&m->mu);
        int i = m->next++;
        pthread_mutex_unlock(&m->mu);
        if (i >= m->n) {
            break;
        }
        char user[96];
        snprintf(user, sizeof(user), "%s-%d", m->prefix, i);
        long st = h_claim(m->svcs[i % m->nsvc], m->coupon, user, NULL);
        pthread_mutex_lock(&m->mu);
        m->out->by_status[st >= 0 && st < 600 ? st : 0]++;
        pthread_mutex_unlock(&m->mu);
    }
    return NULL;
}

void h_claim_many(h_svc_t *const *svcs, int nsvc, const char *coupon,
                  const char *prefix, int n, int threads, h_counts_t *out) {
    memset(out, 0, sizeof(*out));
    h__many_t m = {.svcs = svcs,
                   .nsvc = nsvc,
                   .coupon = coupon,
                   .prefix = prefix,
                   .n = n,
                   .out = out};
    pthread_mutex_init(&m.mu, NULL);
    pthread_t t[256];
    if (threads > 256) {
        threads = 256;
    }
    for (int i = 0; i < threads; i++) {
        pthread_create(&t[i], NULL, h__many_thread, &m);
    }
    for (int i = 0; i < threads; i++) {
        pthread_join(t[i], NULL);
    }
    pthread_mutex_destroy(&m.mu);
}

/* ---------------------------------------------------------- invariants --- */

static void h__one_coupon(void *arg, uint64_t i, char *coupon, char *user) {
    (void)i;
    (void)user;
    snprintf(coupon, LG_VERIFY_ID_MAX, "%s", (const char *)arg);
}

int h_invariants(const char *coupon, lg_verify_report_t *rep) {
    PGconn *c = PQconnectdb(h__dsn);
    lg_verify_list_t coupons = {1, h__one_coupon, (void *)coupon};
    int rc = lg_verify_run(c, &coupons, NULL, rep);
    PQfinish(c);
    return rc;
}

void h_check_invariants(const char *coupon, long stock, long n201) {
    lg_verify_report_t v;
    TT_ASSERT_MSG(h_invariants(coupon, &v) == 0, "invariant check on %s: %s",
                  coupon, v.err);
    if (!v.ok) {
        fprintf(stderr, "  invariants of %s: %s\n", coupon, v.first);
    }
    TT_EQ_INT(v.coupons_missing, 0);
    TT_EQ_INT(v.stock, stock);
    TT_CMP_INT(v.claimed, <=, stock); /* never oversold */
    TT_EQ_INT(v.oversell, 0);
    TT_EQ_INT(v.rows_mismatch, 0); /* every claim counted once */
    TT_EQ_INT(v.claim_rows, v.claimed);
    TT_EQ_INT(v.duplicate_users, 0); /* one claim per user */
    TT_EQ_INT(n201, v.claim_rows);   /* every 201 durable, no more */
    TT_EQ_INT(v.bucket_oversell, 0); /* per bucket of a sharded coupon */
    TT_EQ_INT(v.bucket_rows_mismatch, 0);
    TT_EQ_INT(v.seq_mismatch, 0); /* seq 1..claimed per counter */
    /* Fences: equal only within one transaction, rising between them. */
    TT_ASSERT_MSG(v.fences_increasing != 0, "fences out of commit order: %s",
                  v.first);
    TT_ASSERT_MSG(v.ok, "invariants of %s: %s", coupon, v.first);
}

int h_file_has(const char *path, const char *text) {
    FILE *f = fopen(path, "r");
    TT_ASSERT_MSG(f != NULL, "cannot read %s", path);
    char line[2048];
    int found = 0;
    while (!found && fgets(line, sizeof(line), f) != NULL) {
        found = strstr(line, text) != NULL;
    }
    fclose(f);
    return found;
}

int h_run_migrate(void) {
    char dsn[300], log[400];
    snprintf(dsn, sizeof(dsn), "COUPON_PG_DSN=%s", h__dsn);
    snprintf(log, sizeof(log), "%s/migrate.log", h__test_dir);
    const char *env[] = {dsn, NULL};
    char *argv[] = {(char *)h__bin(), "migrate", NULL};
    int st = h__wait(h_spawn(argv, log, NULL, env), 30000);
    return st >= 0 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* ------------------------------------------ additions for the fault tests ---
 * See harness.h. New functions only: what the ones above do is unchanged. */

const char *h_test_dir(void) {
    return h__test_dir;
}

void h_redis_restart_with(const char *const *args, const char *const *env) {
    h_redis_stop();
    h__redis_launch(args, env);
}

pid_t h_redis_stall_bg(long ms) {
    char port[16], secs[32], log[400];
    snprintf(port, sizeof(port), "%d", h__redis_port);
    snprintf(secs, sizeof(secs), "%ld.%03ld", ms / 1000, ms % 1000);
    snprintf(log, sizeof(log), "%s/redis-cli.log", h__test_dir);
    char *argv[] = {"redis-cli", "-h",    "127.0.0.1", "-p", port,
                    "DEBUG",     "SLEEP", secs,        NULL};
    return h_spawn(argv, log, NULL, NULL);
}

/* The private cluster (per test, in the test's process). */
static char h__ppg_dir[400];
static char h__ppg_log[420];
static int h__ppg_port;
static pid_t h__ppg_pid;

static void h__ppg_spawn(void) {
    const char *extra[] = {"full_page_writes=off", "synchronous_commit=on",
                           "max_connections=200", NULL};
    h__ppg_pid = h__postgres_spawn(h__ppg_dir, h__ppg_port, h__ppg_log,
                                   h__pg_user(), extra);
    const char *why = h__postgres_wait(h__ppg_port, h__ppg_pid);
    TT_ASSERT_MSG(why == NULL, "private postgres %s, see %s", why, h__ppg_log);
}

void h_pg_private_start(void) {
    TT_ASSERT_MSG(h__ppg_pid == 0, "private cluster started twice");
    struct passwd *pw = h__pg_user();
    snprintf(h__ppg_dir, sizeof(h__ppg_dir), "%s/pg", h__test_dir);
    snprintf(h__ppg_log, sizeof(h__ppg_log), "%s/postgres.log", h__test_dir);
    TT_ASSERT_MSG(h__pg_initdb(h__ppg_dir, h__ppg_log, pw) == 0,
                  "initdb of the private cluster failed, see %s", h__ppg_log);

    h__ppg_port = h_free_port();
    h__ppg_spawn();

    char dsn[200];
    snprintf(dsn, sizeof(dsn),
             "host=127.0.0.1 port=%d dbname=postgres "
             "user=postgres connect_timeout=5",
             h__ppg_port);
    PGconn *c = PQconnectdb(dsn);
    TT_ASSERT_MSG(PQstatus(c) == CONNECTION_OK, "private postgres: %s",
                  PQerrorMessage(c));
    TT_ASSERT(h__pg_exec(c, "CREATE DATABASE t") == 0);
    PQfinish(c);

    snprintf(h__dsn, sizeof(h__dsn),
             "host=127.0.0.1 port=%d dbname=t user=postgres", h__ppg_port);
    TT_EQ_INT(h_run_migrate(), 0);
}

void h_pg_private_stop(const char *mode) {
    TT_ASSERT_MSG(h__ppg_pid > 0, "no private cluster running");
    int sig = strcmp(mode, "smart") == 0  ? SIGTERM
              : strcmp(mode, "fast") == 0 ? SIGINT
                                          : SIGQUIT;
    TT_ASSERT_MSG(sig != SIGQUIT || strcmp(mode, "immediate") == 0,
                  "unknown shutdown mode %s", mode);
    kill(h__ppg_pid, sig);
    int st = h__wait(h__ppg_pid, 30000);
    TT_ASSERT_MSG(st >= 0, "private postgres did not stop (%s)", mode);
    h__ppg_pid = 0;
}

void h_pg_private_restart(void) {
    TT_ASSERT_MSG(h__ppg_pid == 0 && h__ppg_port > 0,
                  "the private cluster is not stopped");
    h__ppg_spawn();
}

/* A streaming standby of the private cluster (per test). */
static char h__sby_dir[400];
static char h__sby_log[420];
static char h__sby_dsn[200];
static int h__sby_port;
static pid_t h__sby_pid;

static void h__sby_spawn(void) {
    const char *extra[] = {"hot_standby=on", "max_connections=200", NULL};
    h__sby_pid = h__postgres_spawn(h__sby_dir, h__sby_port, h__sby_log,
                                   h__pg_user(), extra);
    const char *why = h__postgres_wait(h__sby_port, h__sby_pid);
    TT_ASSERT_MSG(why == NULL, "standby %s, see %s", why, h__sby_log);
}

const char *h_pg_standby_start(void) {
    TT_ASSERT_MSG(h__ppg_pid > 0, "no private cluster to replicate");
    TT_ASSERT_MSG(h__sby_pid == 0, "standby started twice");
    struct passwd *pw = h__pg_user();
    snprintf(h__sby_dir, sizeof(h__sby_dir), "%s/pg-standby", h__test_dir);
    snprintf(h__sby_log, sizeof(h__sby_log), "%s/standby.log", h__test_dir);
    TT_ASSERT(mkdir(h__sby_dir, 0700) == 0);
    int fd = open(h__sby_log, O_CREAT | O_WRONLY, 0666);
    TT_ASSERT(fd >= 0);
    close(fd);
    if (pw != NULL) {
        TT_ASSERT(chown(h__sby_dir, pw->pw_uid, pw->pw_gid) == 0 &&
                  chown(h__sby_log, pw->pw_uid, pw->pw_gid) == 0);
    }
    /* -c fast: a checkpoint at once, not a spread one (minutes). -R writes
     * standby.signal and primary_conninfo; its application_name
     * is the default, "walreceiver", which synchronous_standby_names can
     * name. */
    char bb[300], port[16];
    snprintf(bb, sizeof(bb), "%s/pg_basebackup", h__bindir);
    snprintf(port, sizeof(port), "%d", h__ppg_port);
    char *argv[] = {bb,          "-D", h__sby_dir, "-h", "127.0.0.1", "-p",
                    port,        "-U", "postgres", "-R", "-X",        "stream",
                    "--no-sync", "-c", "fast",     NULL};
    int st = h__wait(h_spawn(argv, h__sby_log, pw, NULL), 60000);
    TT_ASSERT_MSG(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0,
                  "pg_basebackup failed, see %s", h__sby_log);
    h__sby_port = h_free_port();
    h__sby_spawn();
    snprintf(h__sby_dsn, sizeof(h__sby_dsn),
             "host=127.0.0.1 port=%d dbname=t user=postgres", h__sby_port);
    return h__sby_dsn;
}

void h_pg_standby_stop(void) {
    TT_ASSERT_MSG(h__sby_pid > 0, "no standby running");
    kill(h__sby_pid, SIGINT); /* fast */
    TT_ASSERT_MSG(h__wait(h__sby_pid, 30000) >= 0, "standby did not stop");
    h__sby_pid = 0;
}

void h_pg_standby_restart(void) {
    TT_ASSERT_MSG(h__sby_pid == 0 && h__sby_port > 0, "standby not stopped");
    h__sby_spawn();
}

void h_pg_standby_promote(void) {
    TT_ASSERT_MSG(h__sby_pid > 0, "no standby running");
    char dsn[160];
    snprintf(dsn, sizeof(dsn),
             "host=127.0.0.1 port=%d dbname=postgres user=postgres "
             "connect_timeout=5",
             h__sby_port);
    PGconn *c = PQconnectdb(dsn);
    TT_ASSERT_MSG(PQstatus(c) == CONNECTION_OK, "standby: %s",
                  PQerrorMessage(c));
    /* Waits (up to 60 s) until the promotion is done. */
    PGresult *r = PQexec(c, "SELECT pg_promote(true, 60)");
    TT_ASSERT_MSG(PQresultStatus(r) == PGRES_TUPLES_OK &&
                      strcmp(PQgetvalue(r, 0, 0), "t") == 0,
                  "pg_promote: %s", PQerrorMessage(c));
    PQclear(r);
    PQfinish(c);
}

void h_pg_standby_catch_up(void) {
    char pdsn[160], sdsn[160];
    snprintf(pdsn, sizeof(pdsn),
             "host=127.0.0.1 port=%d dbname=postgres user=postgres",
             h__ppg_port);
    snprintf(sdsn, sizeof(sdsn),
             "host=127.0.0.1 port=%d dbname=postgres user=postgres",
             h__sby_port);
    PGconn *p = PQconnectdb(pdsn), *q = PQconnectdb(sdsn);
    TT_ASSERT(PQstatus(p) == CONNECTION_OK && PQstatus(q) == CONNECTION_OK);
    PGresult *r = PQexec(p, "SELECT pg_current_wal_lsn()::text");
    TT_ASSERT(PQresultStatus(r) == PGRES_TUPLES_OK);
    char lsn[64];
    snprintf(lsn, sizeof(lsn), "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    char sql[160];
    snprintf(sql, sizeof(sql),
             "SELECT pg_last_wal_replay_lsn() >= '%s'::pg_lsn", lsn);
    double end = h_now_ms() + 30000;
    for (;;) {
        r = PQexec(q, sql);
        int done = PQresultStatus(r) == PGRES_TUPLES_OK &&
                   strcmp(PQgetvalue(r, 0, 0), "t") == 0;
        PQclear(r);
        if (done) {
            break;
        }
        TT_ASSERT_MSG(h_now_ms() < end, "the standby did not replay %s", lsn);
        h_sleep_ms(20);
    }
    PQfinish(p);
    PQfinish(q);
}

/* ------------------------------------------------ a real nginx in front --- */

static pid_t h__nginx_pid;
static char h__nginx_err[420];

static int h__nginx_limited;

void h_nginx_rate_limit(int on) {
    h__nginx_limited = on;
}

/* Writes dir/http.conf: http.conf from beside proxy_conf, with the
 * per-client rate limit off (an empty key: nginx counts no such request)
 * unless the test asked for it (every client of a test is on the
 * loopback). Its path goes to http_conf. */
static void h__nginx_http_conf(const char *proxy_conf, const char *dir,
                               char *http_conf, size_t len) {
    char http_src[PATH_MAX + 16];
    snprintf(http_src, sizeof(http_src), "%s", proxy_conf);
    char *slash = strrchr(http_src, '/');
    TT_ASSERT(slash != NULL);
    snprintf(slash + 1, sizeof(http_src) - (size_t)(slash + 1 - http_src),
             "http.conf");
    snprintf(http_conf, len, "%s/http.conf", dir);
    FILE *in = fopen(http_src, "r"), *out = fopen(http_conf, "w");
    TT_ASSERT_MSG(in != NULL, "cannot read %s", http_src);
    TT_ASSERT(out != NULL);
    char line[1024];
    int zone = 0;
    static const char key[] = "limit_req_zone $binary_remote_addr ";
    while (fgets(line, sizeof(line), in) != NULL) {
        if (strncmp(line, key, sizeof(key) - 1) == 0) {
            zone = 1;
            if (!h__nginx_limited) {
                fprintf(out, "limit_req_zone \"\" %s", line + sizeof(key) - 1);
                continue;
            }
        }
        fputs(line, out);
    }
    fclose(in);
    TT_ASSERT(fclose(out) == 0);
    TT_ASSERT_MSG(zone, "%s: no line starting with '%s'", http_src, key);
}

/* Writes the nginx.conf at conf: nginx in the foreground, one process, its
 * files in dir (temp files in tmp), listening on port, balancing over the
 * n upstreams with the repository's proxy.conf and http.conf. */
static void h__nginx_conf(const char *conf, const char *dir, const char *tmp,
                          const char *http_conf, const char *proxy_conf,
                          int port, h_svc_t *const *upstreams, int n) {
    FILE *f = fopen(conf, "w");
    TT_ASSERT(f != NULL);
    /* Under master_process off nginx does not switch users, so its temp
     * directories may stay in the test's own (root-only) directory. */
    fprintf(f,
            "daemon off;\n"
            "master_process off;\n"
            "worker_processes 1;\n"
            "pid %s/nginx.pid;\n"
            "error_log %s info;\n"
            "events { worker_connections 512; }\n"
            "http {\n"
            "  access_log %s/access.log;\n"
            "  client_body_temp_path %s/body;\n"
            "  proxy_temp_path %s/proxy;\n"
            "  fastcgi_temp_path %s/fastcgi;\n"
            "  uwsgi_temp_path %s/uwsgi;\n"
            "  scgi_temp_path %s/scgi;\n"
            "  include %s;\n"
            "  upstream couponsvc {\n",
            dir, h__nginx_err, dir, tmp, tmp, tmp, tmp, tmp, http_conf);
    /* nginx must drop an idle upstream connection before the replica
     * does (deploy/nginx: 15 s against 30 s): a replica that closes a
     * kept-alive connection as nginx sends a POST on it loses that request,
     * and nginx does not retry a POST (502, "upstream prematurely closed
     * connection"). Half the shortest idle timeout of the upstreams; nginx's
     * own default (60 s) is far above the 1-2 s some tests run with. */
    int idle_ms = 30000;
    for (int i = 0; i < n; i++) {
        fprintf(f, "    server 127.0.0.1:%d max_fails=0;\n",
                upstreams[i]->port);
        if (upstreams[i]->conn_timeout_s * 500 < idle_ms) {
            idle_ms = upstreams[i]->conn_timeout_s * 500;
        }
    }
    fprintf(f,
            "    keepalive 16;\n"
            "    keepalive_timeout %dms;\n"
            "  }\n"
            /* proxy.conf's proxy_pass target: the upstream above. */
            "  map \"\" $couponsvc_upstream { default couponsvc; }\n"
            "  server {\n"
            "    listen 127.0.0.1:%d;\n"
            "    include %s;\n"
            "  }\n"
            "}\n",
            idle_ms, port, proxy_conf);
    TT_ASSERT(fclose(f) == 0);
}

int h_nginx_start(h_svc_t *const *upstreams, int n) {
    TT_ASSERT_MSG(h__nginx_pid == 0, "one nginx per test");
    const char *inc = getenv("COUPONSVC_PROXY_CONF");
    char proxy_conf[PATH_MAX];
    TT_ASSERT_MSG(realpath(inc != NULL ? inc : "deploy/nginx/proxy.conf",
                           proxy_conf) != NULL,
                  "cannot find the load balancer's proxy.conf (run from the "
                  "repository, or set COUPONSVC_PROXY_CONF)");

    char dir[400], conf[450], tmp[450], http_conf[460];
    snprintf(dir, sizeof(dir), "%s/nginx", h__test_dir);
    snprintf(conf, sizeof(conf), "%s/nginx.conf", dir);
    snprintf(tmp, sizeof(tmp), "%s/tmp", dir);
    snprintf(h__nginx_err, sizeof(h__nginx_err), "%s/error.log", dir);
    TT_ASSERT(mkdir(dir, 0755) == 0 && mkdir(tmp, 0755) == 0);
    h__nginx_http_conf(proxy_conf, dir, http_conf, sizeof(http_conf));
    int port = h_free_port();
    h__nginx_conf(conf, dir, tmp, http_conf, proxy_conf, port, upstreams, n);

    char *argv[] = {"nginx", "-p", dir, "-c", conf, "-e", h__nginx_err, NULL};
    h__nginx_pid = h_spawn(argv, h__nginx_err, NULL, NULL);

    char url[96];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/lb-healthz", port);
    double end = h_now_ms() + 10000;
    while (h_http("GET", url, NULL, NULL, NULL, 0, NULL) != 200) {
        if (waitpid(h__nginx_pid, NULL, WNOHANG) != 0 || h_now_ms() > end) {
            h__tail(h__nginx_err, 20);
            h__nginx_pid = 0;
            TT_ASSERT_MSG(0, "nginx did not start (see %s)", h__nginx_err);
        }
        h_sleep_ms(20);
    }
    return port;
}

void h_nginx_stop(void) {
    if (h__nginx_pid <= 0) {
        return;
    }
    kill(h__nginx_pid, SIGQUIT); /* graceful: finish what is in flight */
    if (h__wait(h__nginx_pid, 5000) < 0) {
        kill(h__nginx_pid, SIGKILL);
        waitpid(h__nginx_pid, NULL, 0);
    }
    h__nginx_pid = 0;
}

/* ------------------------------------------ additions for the Redis tests ---
 */

const char *h_acl_rule(void) {
    static char rule[1024];
    const char *path = getenv("COUPONSVC_ACL");
    if (path == NULL) {
        path = "deploy/redis/couponsvc.acl";
    }
    FILE *f = fopen(path, "r");
    TT_ASSERT_MSG(f != NULL,
                  "cannot read %s (run from the repository root, "
                  "or set COUPONSVC_ACL)",
                  path);
    rule[0] = '\0';
    char line[1024];
    while (fgets(line, sizeof(line), f) != NULL) {
        if (strncmp(line, "user ", 5) == 0) {
            TT_ASSERT_MSG(rule[0] == '\0', "%s: more than one user line", path);
            str_trim_newline(line);
            snprintf(rule, sizeof(rule), "%s", line);
        }
    }
    fclose(f);
    TT_ASSERT_MSG(rule[0] != '\0', "%s: no line starting with 'user '", path);
    return rule;
}

void h_redis_restart_acl(const char *svc_pass) {
    char path[400];
    snprintf(path, sizeof(path), "%s/users.acl", h__test_dir);
    FILE *f = fopen(path, "w");
    TT_ASSERT_MSG(f != NULL, "cannot write %s", path);
    fprintf(f, "user default on >%s ~* &* +@all\n%s >%s\n", H_REDIS_ADMIN_PASS,
            h_acl_rule(), svc_pass);
    fclose(f);
    const char *args[] = {"--aclfile", path, NULL};
    h_redis_stop();
    h__redis_pass = H_REDIS_ADMIN_PASS;
    h__redis_launch(args, NULL);
}

int h_redis_extra_start(const char *name) {
    int port = h_free_port();
    char ports[16], log[400];
    snprintf(ports, sizeof(ports), "%d", port);
    snprintf(log, sizeof(log), "%s/%s.log", h__test_dir, name);
    char *argv[] = {"redis-server", "--port", ports,       "--bind",
                    "127.0.0.1",    "--save", "",          "--appendonly",
                    "no",           "--dir",  h__test_dir, NULL};
    pid_t pid = h_spawn(argv, log, NULL, NULL);
    double end = h_now_ms() + 10000;
    for (;;) {
        struct timeval tv = {1, 0};
        redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
        int ok = c != NULL && c->err == 0;
        if (ok) {
            redisReply *r = redisCommand(c, "PING");
            ok = r != NULL && r->type == REDIS_REPLY_STATUS;
            freeReplyObject(r);
        }
        redisFree(c);
        if (ok) {
            return port;
        }
        TT_ASSERT_MSG(waitpid(pid, NULL, WNOHANG) == 0,
                      "redis exited during start (%s)", log);
        TT_ASSERT_MSG(h_now_ms() < end, "redis did not start (%s)", log);
        h_sleep_ms(20);
    }
}

/* The reply to one command (fmt, ap) on the Redis at port; see
 * h_redis_cmd_at. */
static redisReply *h__redis_vreply_at(int port, const char *fmt, va_list ap) {
    struct timeval tv = {2, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
    TT_ASSERT_MSG(c != NULL && c->err == 0, "redis connect: %s",
                  c ? c->errstr : "oom");
    if (port == h__redis_port) {
        TT_ASSERT_MSG(h__redis_auth(c) == 0, "redis AUTH failed");
    }
    redisReply *r = redisvCommand(c, fmt, ap);
    TT_ASSERT_MSG(r != NULL, "redis command failed: %s", c->errstr);
    TT_ASSERT_MSG(r->type != REDIS_REPLY_ERROR, "redis: %s", r->str);
    redisFree(c); /* the reply is an object of its own */
    return r;
}

redisReply *h_redis_reply_at(int port, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = h__redis_vreply_at(port, fmt, ap);
    va_end(ap);
    return r;
}

long long h_redis_cmd_at(int port, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = h__redis_vreply_at(port, fmt, ap);
    va_end(ap);
    long long v = r->type == REDIS_REPLY_INTEGER ? r->integer : 0;
    freeReplyObject(r);
    return v;
}
