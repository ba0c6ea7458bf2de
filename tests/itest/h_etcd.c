/*
 * h_etcd.c: see h_etcd.h.
 */
#include "h_etcd.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "mono.h"
#include "tt.h"

/* Run-wide: set in the runner before any test forks, inherited. */
static struct {
    int on;
    char dir[256]; /* member data, the FIFO, the pid files */
    int client[H_ETCD_MEMBERS], peer[H_ETCD_MEMBERS];
    char endpoints[256];
    pid_t sup; /* the supervisor */
} h_etcd__g;

static char h_etcd__prefix[64];

int h_etcd_on(void) {
    const char *b = getenv("COUPONSVC_LOCK_BACKEND");
    return b != NULL && strcmp(b, "etcd") == 0;
}

/* ---------------------------------------------------------- supervisor --- */

static void h_etcd__pidfile(int i, char *out, size_t n) {
    snprintf(out, n, "%s/m%d.pid", h_etcd__g.dir, i);
}

static pid_t h_etcd__read_pid(int i) {
    char pf[300];
    h_etcd__pidfile(i, pf, sizeof(pf));
    FILE *f = fopen(pf, "r");
    long pid = 0;
    if (f != NULL) {
        if (fscanf(f, "%ld", &pid) != 1) {
            pid = 0;
        }
        fclose(f);
    }
    return (pid_t)pid;
}

/* In the supervisor: starts member i as its child. */
static void h_etcd__spawn_member(int i, int first) {
    char name[16], data[300], curl_[64], purl[64], cluster[512], log[300];
    snprintf(name, sizeof(name), "m%d", i);
    snprintf(data, sizeof(data), "%s/m%d.data", h_etcd__g.dir, i);
    snprintf(curl_, sizeof(curl_), "http://127.0.0.1:%d", h_etcd__g.client[i]);
    snprintf(purl, sizeof(purl), "http://127.0.0.1:%d", h_etcd__g.peer[i]);
    snprintf(log, sizeof(log), "%s/m%d.log", h_etcd__g.dir, i);
    size_t o = 0;
    for (int k = 0; k < H_ETCD_MEMBERS; k++) {
        o += (size_t)snprintf(cluster + o, sizeof(cluster) - o,
                              "%sm%d=http://127.0.0.1:%d", k ? "," : "", k,
                              h_etcd__g.peer[k]);
    }
    char et[16];
    snprintf(et, sizeof(et), "%d", H_ETCD_ELECTION_MS);
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        char *argv[] = {"etcd",
                        "--name",
                        name,
                        "--data-dir",
                        data,
                        "--listen-client-urls",
                        curl_,
                        "--advertise-client-urls",
                        curl_,
                        "--listen-peer-urls",
                        purl,
                        "--initial-advertise-peer-urls",
                        purl,
                        "--initial-cluster",
                        cluster,
                        "--initial-cluster-state",
                        first ? "new" : "existing",
                        "--initial-cluster-token",
                        h_etcd__g.dir,
                        "--heartbeat-interval",
                        "50",
                        "--election-timeout",
                        et,
                        "--logger",
                        "zap",
                        "--log-level",
                        "warn",
                        NULL};
        execvp(argv[0], argv);
        _exit(127);
    }
    char pf[300], tmp[310];
    h_etcd__pidfile(i, pf, sizeof(pf));
    snprintf(tmp, sizeof(tmp), "%s.tmp", pf);
    FILE *f = fopen(tmp, "w");
    if (f != NULL) {
        fprintf(f, "%ld\n", (long)pid);
        fclose(f);
        rename(tmp, pf);
    }
}

static volatile sig_atomic_t h_etcd__stop;

static void h_etcd__on_term(int sig) {
    (void)sig;
    h_etcd__stop = 1;
}

/* The supervisor's loop: "start I" lines on the FIFO; reaps members. */
static void h_etcd__supervise(void) {
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    signal(SIGTERM, h_etcd__on_term);
    char fifo[300];
    snprintf(fifo, sizeof(fifo), "%s/ctl", h_etcd__g.dir);
    int fd = open(fifo, O_RDWR | O_NONBLOCK);
    for (int i = 0; i < H_ETCD_MEMBERS; i++) {
        h_etcd__spawn_member(i, 1);
    }
    char buf[256];
    size_t have = 0;
    while (!h_etcd__stop) {
        while (waitpid(-1, NULL, WNOHANG) > 0) {
        }
        ssize_t n = fd >= 0 ? read(fd, buf + have, sizeof(buf) - 1 - have) : -1;
        if (n > 0) {
            have += (size_t)n;
            buf[have] = '\0';
            char *nl;
            while ((nl = strchr(buf, '\n')) != NULL) {
                *nl = '\0';
                int i = -1;
                if (sscanf(buf, "start %d", &i) == 1 && i >= 0 &&
                    i < H_ETCD_MEMBERS) {
                    pid_t old = h_etcd__read_pid(i);
                    if (old <= 0 || kill(old, 0) != 0) {
                        h_etcd__spawn_member(i, 0);
                    }
                }
                memmove(buf, nl + 1, strlen(nl + 1) + 1);
                have = strlen(buf);
            }
        } else {
            mono_sleep_ns(20 * MONO_MS);
        }
    }
    for (int i = 0; i < H_ETCD_MEMBERS; i++) {
        pid_t p = h_etcd__read_pid(i);
        if (p > 0) {
            kill(p, SIGCONT);
            kill(p, SIGTERM);
        }
    }
    for (int t = 0; t < 500; t++) {
        int alive = 0;
        for (int i = 0; i < H_ETCD_MEMBERS; i++) {
            pid_t p = h_etcd__read_pid(i);
            if (p > 0 && waitpid(p, NULL, WNOHANG) == 0) {
                alive = 1;
            }
        }
        if (!alive) {
            break;
        }
        mono_sleep_ns(10 * MONO_MS);
        if (t == 300) {
            for (int i = 0; i < H_ETCD_MEMBERS; i++) {
                pid_t p = h_etcd__read_pid(i);
                if (p > 0) {
                    kill(p, SIGKILL);
                }
            }
        }
    }
    _exit(0);
}

/* ------------------------------------------------------------ HTTP ------ */

/* POST body to member i's path with a short timeout. Returns the HTTP
 * status (0: no answer); *out gets the parsed body (new ref) or NULL. */
static long h_etcd__post(int i, const char *path, const char *body,
                         json_t **out) {
    char url[128];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", h_etcd__g.client[i],
             path);
    CURL *c = curl_easy_init();
    h_buf_t b = {0};
    curl_easy_setopt(c, CURLOPT_URL, url);
    if (body != NULL) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    }
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, h_buf_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 2000L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    long status = 0;
    if (curl_easy_perform(c) == CURLE_OK) {
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    }
    curl_easy_cleanup(c);
    if (out != NULL) {
        json_error_t je;
        *out =
            b.p != NULL ? json_loads(b.p, JSON_DISABLE_EOF_CHECK, &je) : NULL;
    }
    free(b.p);
    return status;
}

static int h_etcd__healthy(int i) {
    json_t *j = NULL;
    long st = h_etcd__post(i, "/health", NULL, &j);
    const char *h = json_string_value(json_object_get(j, "health"));
    int ok = st == 200 && h != NULL && strcmp(h, "true") == 0;
    json_decref(j);
    return ok;
}

/* -------------------------------------------------------------- runner --- */

int h_etcd_setup(void) {
    h_etcd__g.on = 1;
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(h_etcd__g.dir, sizeof(h_etcd__g.dir), "%s/couponsvc-etcd-XXXXXX",
             base);
    if (mkdtemp(h_etcd__g.dir) == NULL) {
        perror("mkdtemp");
        return -1;
    }
    size_t o = 0;
    for (int i = 0; i < H_ETCD_MEMBERS; i++) {
        h_etcd__g.client[i] = h_free_port();
        h_etcd__g.peer[i] = h_free_port();
        o += (size_t)snprintf(
            h_etcd__g.endpoints + o, sizeof(h_etcd__g.endpoints) - o,
            "%shttp://127.0.0.1:%d", i ? "," : "", h_etcd__g.client[i]);
    }
    char fifo[300];
    snprintf(fifo, sizeof(fifo), "%s/ctl", h_etcd__g.dir);
    if (mkfifo(fifo, 0600) != 0) {
        perror("mkfifo");
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        return -1;
    }
    if (pid == 0) {
        h_etcd__supervise();
    }
    h_etcd__g.sup = pid;
    /* Wait for the cluster: a leader, every member healthy. */
    double end = h_now_ms() + 30000;
    for (;;) {
        int ok = 0;
        for (int i = 0; i < H_ETCD_MEMBERS; i++) {
            ok += h_etcd__healthy(i);
        }
        if (ok == H_ETCD_MEMBERS) {
            break;
        }
        if (h_now_ms() > end) {
            fprintf(stderr, "harness: etcd cluster not healthy in 30 s (%s)\n",
                    h_etcd__g.dir);
            return -1;
        }
        h_sleep_ms(50);
    }
    printf("# etcd cluster %s in %s\n", h_etcd__g.endpoints, h_etcd__g.dir);
    return 0;
}

void h_etcd_teardown(void) {
    if (h_etcd__g.sup > 0) {
        kill(h_etcd__g.sup, SIGTERM);
        waitpid(h_etcd__g.sup, NULL, 0);
        h_etcd__g.sup = 0;
    }
    if (h_etcd__g.dir[0] != '\0' && getenv("KEEP_TEST_DIR") == NULL) {
        char cmd[300];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", h_etcd__g.dir);
        int rc = system(cmd);
        (void)rc;
    }
}

/* ---------------------------------------------------------------- test --- */

void h_etcd_begin(void) {
    snprintf(h_etcd__prefix, sizeof(h_etcd__prefix), "couponsvc-t%d/",
             (int)getpid());
    for (int i = 0; i < H_ETCD_MEMBERS; i++) {
        pid_t p = h_etcd__read_pid(i);
        if (p > 0) {
            kill(p, SIGCONT); /* a test that stopped it and failed */
        }
        if (p <= 0 || kill(p, 0) != 0) {
            h_etcd_start(i);
        }
    }
    h_etcd_wait_healthy(20000);
}

const char *const *h_etcd_svc_env(void) {
    static char b[4][300];
    static const char *env[5];
    snprintf(b[0], sizeof(b[0]), "COUPON_LOCK_BACKEND=etcd");
    snprintf(b[1], sizeof(b[1]), "COUPON_ETCD_ENDPOINTS=%s",
             h_etcd__g.endpoints);
    snprintf(b[2], sizeof(b[2]), "COUPON_ETCD_PREFIX=%s", h_etcd__prefix);
    snprintf(b[3], sizeof(b[3]), "COUPON_ETCD_ELECTION_TIMEOUT_MS=%d",
             H_ETCD_ELECTION_MS);
    for (int i = 0; i < 4; i++) {
        env[i] = b[i];
    }
    env[4] = NULL;
    return env;
}

const char *h_etcd_endpoints(void) {
    return h_etcd__g.endpoints;
}

int h_etcd_client_port(int i) {
    return h_etcd__g.client[i];
}

const char *h_etcd_prefix(void) {
    return h_etcd__prefix;
}

int h_etcd_leader(int timeout_ms) {
    double end = h_now_ms() + timeout_ms;
    do {
        for (int i = 0; i < H_ETCD_MEMBERS; i++) {
            json_t *j = NULL;
            if (h_etcd__post(i, "/v3/maintenance/status", "{}", &j) == 200) {
                const char *me = json_string_value(
                    json_object_get(json_object_get(j, "header"), "member_id"));
                const char *l = json_string_value(json_object_get(j, "leader"));
                if (me != NULL && l != NULL && strcmp(me, l) == 0) {
                    json_decref(j);
                    return i;
                }
            }
            json_decref(j);
        }
        h_sleep_ms(50);
    } while (h_now_ms() < end);
    return -1;
}

void h_etcd_kill(int i) {
    pid_t p = h_etcd__read_pid(i);
    TT_ASSERT(p > 0);
    kill(p, SIGKILL);
    for (int t = 0; t < 500 && kill(p, 0) == 0; t++) {
        h_sleep_ms(10); /* the supervisor reaps it */
    }
}

void h_etcd_signal(int i, int sig) {
    pid_t p = h_etcd__read_pid(i);
    TT_ASSERT(p > 0);
    kill(p, sig);
}

void h_etcd_start(int i) {
    char fifo[300], cmd[32];
    snprintf(fifo, sizeof(fifo), "%s/ctl", h_etcd__g.dir);
    int fd = open(fifo, O_WRONLY | O_NONBLOCK);
    TT_ASSERT_MSG(fd >= 0, "etcd supervisor FIFO: %s", strerror(errno));
    int n = snprintf(cmd, sizeof(cmd), "start %d\n", i);
    TT_ASSERT(write(fd, cmd, (size_t)n) == n);
    close(fd);
    double end = h_now_ms() + 20000;
    while (!h_etcd__healthy(i)) {
        TT_ASSERT_MSG(h_now_ms() < end, "etcd member %d did not come back", i);
        h_sleep_ms(50);
    }
}

void h_etcd_wait_healthy(int timeout_ms) {
    double end = h_now_ms() + timeout_ms;
    for (;;) {
        int ok = 1;
        for (int i = 0; i < H_ETCD_MEMBERS; i++) {
            pid_t p = h_etcd__read_pid(i);
            if (p > 0 && kill(p, 0) == 0 && !h_etcd__healthy(i)) {
                ok = 0;
            }
        }
        if (ok) {
            return;
        }
        TT_ASSERT_MSG(h_now_ms() < end, "etcd cluster not healthy");
        h_sleep_ms(50);
    }
}

static char *h_etcd__b64(const char *s) {
    static const char t[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t n = strlen(s);
    char *o = malloc((n + 2) / 3 * 4 + 1);
    size_t k = 0;
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned char)s[i] << 16;
        v |= i + 1 < n ? (unsigned char)s[i + 1] << 8 : 0;
        v |= i + 2 < n ? (unsigned char)s[i + 2] : 0;
        o[k++] = t[(v >> 18) & 63];
        o[k++] = t[(v >> 12) & 63];
        o[k++] = i + 1 < n ? t[(v >> 6) & 63] : '=';
        o[k++] = i + 2 < n ? t[v & 63] : '=';
    }
    o[k] = '\0';
    return o;
}

/* POSTs body to path on each member in turn until one answers 200. Returns
 * that answer's JSON (new; an empty object if it had no JSON body), or NULL
 * if no member answered 200. */
static json_t *h_etcd__any(const char *path, const char *body) {
    for (int i = 0; i < H_ETCD_MEMBERS; i++) {
        json_t *j = NULL;
        if (h_etcd__post(i, path, body, &j) == 200) {
            return j != NULL ? j : json_object();
        }
        json_decref(j);
    }
    return NULL;
}

/* Writes to out the JSON body {"key": <the test's prefix + sub>} for the KV
 * API (base64, as the gateway wants), with "range_end" for every key under
 * it when range, then the members of extra ("" or starting with ","). */
static void h_etcd__key_body(char *out, size_t n, const char *sub, int range,
                             const char *extra) {
    char key[256], end[256];
    snprintf(key, sizeof(key), "%s%s", h_etcd__prefix, sub);
    char *k = h_etcd__b64(key), *e = NULL;
    if (range) {
        snprintf(end, sizeof(end), "%s", key);
        end[strlen(end) - 1]++;
        e = h_etcd__b64(end);
    }
    snprintf(out, n, "{\"key\":\"%s\"%s%s%s%s}", k,
             range ? ",\"range_end\":\"" : "", range ? e : "",
             range ? "\"" : "", extra);
    free(k);
    free(e);
}

/* A decimal-string member of j (etcd's gateway sends int64 as strings), 0
 * when absent. */
static long h_etcd__num(const json_t *j, const char *name) {
    const json_t *v = json_object_get(j, name);
    return json_is_string(v) ? atol(json_string_value(v)) : 0;
}

long h_etcd_count(const char *sub) {
    char body[700];
    h_etcd__key_body(body, sizeof(body), sub, 1, ",\"count_only\":true");
    json_t *j = h_etcd__any("/v3/kv/range", body);
    if (j == NULL) {
        return -1;
    }
    long n = h_etcd__num(j, "count");
    json_decref(j);
    return n;
}

void h_etcd_put(const char *sub, const char *value) {
    char *v = h_etcd__b64(value), extra[400], body[700];
    snprintf(extra, sizeof(extra), ",\"value\":\"%s\"", v);
    free(v);
    h_etcd__key_body(body, sizeof(body), sub, 0, extra);
    json_t *j = h_etcd__any("/v3/kv/put", body);
    TT_ASSERT_MSG(j != NULL, "etcd put %s: no member answered", sub);
    json_decref(j);
}

static int h_etcd__unb64(const char *s, char *out, size_t cap) {
    static const char t[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    unsigned acc = 0;
    int bits = 0;
    size_t o = 0;
    for (; *s != '\0' && *s != '='; s++) {
        const char *c = strchr(t, *s);
        if (c == NULL || o + 1 >= cap) {
            return -1;
        }
        acc = (acc << 6) | (unsigned)(c - t);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (char)((acc >> bits) & 0xff);
        }
    }
    out[o] = '\0';
    return (int)o;
}

long long h_etcd_get_int(const char *sub) {
    char body[400];
    h_etcd__key_body(body, sizeof(body), sub, 0, "");
    json_t *j = h_etcd__any("/v3/kv/range", body);
    TT_ASSERT_MSG(j != NULL, "etcd get %s: no member answered", sub);
    const char *v = json_string_value(
        json_object_get(json_array_get(json_object_get(j, "kvs"), 0), "value"));
    char buf[64] = "";
    if (v != NULL) {
        h_etcd__unb64(v, buf, sizeof(buf));
    }
    json_decref(j);
    return atoll(buf);
}

long h_etcd_del(const char *sub) {
    char body[400];
    h_etcd__key_body(body, sizeof(body), sub, 0, "");
    json_t *j = h_etcd__any("/v3/kv/deleterange", body);
    TT_ASSERT_MSG(j != NULL, "etcd delete %s: no member answered", sub);
    long n = h_etcd__num(j, "deleted");
    json_decref(j);
    return n;
}

/* The lease (a decimal string, new) of the first key under sub, or NULL. */
static char *h_etcd__owner_lease(const char *sub) {
    char body[700];
    h_etcd__key_body(body, sizeof(body), sub, 1,
                     ",\"limit\":1,\"sort_order\":\"ASCEND\","
                     "\"sort_target\":\"CREATE\"");
    json_t *j = h_etcd__any("/v3/kv/range", body);
    TT_ASSERT_MSG(j != NULL, "etcd range %s: no member answered", sub);
    const char *lease = json_string_value(
        json_object_get(json_array_get(json_object_get(j, "kvs"), 0), "lease"));
    char *out = lease != NULL ? strdup(lease) : NULL;
    json_decref(j);
    return out;
}

/* The answer of the lease API at path about the lease of the first key
 * under sub (new JSON; NULL when no member answered), or NULL with *none
 * set when there is no such key. */
static json_t *h_etcd__owner_call(const char *sub, const char *path,
                                  int *none) {
    char *lease = h_etcd__owner_lease(sub);
    *none = lease == NULL;
    if (lease == NULL) {
        return NULL;
    }
    char rb[96];
    snprintf(rb, sizeof(rb), "{\"ID\":\"%s\"}", lease);
    free(lease);
    return h_etcd__any(path, rb);
}

int h_etcd_revoke_owner(const char *sub) {
    int none;
    json_t *j = h_etcd__owner_call(sub, "/v3/lease/revoke", &none);
    if (none) {
        return 0;
    }
    TT_ASSERT_MSG(j != NULL, "etcd lease revoke: no member answered");
    json_decref(j);
    return 1;
}

long h_etcd_owner_ttl_ms(const char *sub) {
    int none;
    json_t *j = h_etcd__owner_call(sub, "/v3/lease/timetolive", &none);
    if (none) {
        return -2;
    }
    if (j == NULL) {
        return -1;
    }
    long ttl = h_etcd__num(j, "TTL"), granted = h_etcd__num(j, "grantedTTL");
    json_decref(j);
    long ms = (ttl + 1) * 1000;
    return ms > granted * 1000 ? granted * 1000 : ms;
}

void h_etcd_make_leader(int i) {
    double end = h_now_ms() + 15000;
    while (h_etcd_leader(5000) != i) {
        TT_ASSERT_MSG(h_now_ms() < end, "etcd: m%d did not become leader", i);
        json_t *j = NULL;
        TT_EQ_INT(h_etcd__post(i, "/v3/maintenance/status", "{}", &j), 200);
        const char *id = json_string_value(
            json_object_get(json_object_get(j, "header"), "member_id"));
        char body[96];
        snprintf(body, sizeof(body), "{\"targetID\":\"%s\"}",
                 id != NULL ? id : "0");
        json_decref(j);
        int l = h_etcd_leader(5000);
        if (l >= 0 && l != i) {
            h_etcd__post(l, "/v3/maintenance/transfer-leadership", body, NULL);
        }
        h_sleep_ms(200);
    }
}
