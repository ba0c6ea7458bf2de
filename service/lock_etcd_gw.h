/*
 * lock_etcd_gw.h: a client of etcd's v3 JSON gateway (the grpc-gateway every
 * etcd member serves on its client URL), over libcurl, with jansson. Part of
 * the lock module: only lock_etcd*.c include it.
 *
 * Facts it relies on (checked against etcd 3.4.23):
 *   - every call is an HTTP POST of a JSON object to /v3/<service>/<method>;
 *     the answer is 200 with a JSON object, or 4xx/5xx with {"error",
 *     "message", "code"} where code is the gRPC status (5 not found, 7
 *     permission denied, 14 unavailable, 16 unauthenticated ...);
 *   - int64 fields (revisions, lease ids, TTLs, counts) are JSON strings;
 *     keys and values are base64; fields at their zero value are left out
 *     (a txn that failed has no "succeeded", a keep-alive of an expired lease
 *     has no "TTL");
 *   - the streaming calls (/v3/lease/keepalive, /v3/watch) answer with HTTP/1.1
 *     chunked bodies: one {"result": ...} object per line. A keep-alive with a
 *     one-message body ends after its one answer; a watch goes on until the
 *     client closes it;
 *   - with auth enabled, /v3/auth/authenticate {"name","password"} gives a
 *     token that goes, as is, into the Authorization header of every later
 *     call; an expired or unknown token is answered code 16.
 *
 * One lock_etcd_gw_t per thread (it owns two curl handles: one for unary
 * calls, kept alive between them, and one for watches). The endpoints, the
 * credentials and the current auth token are process-wide.
 */
#ifndef COUPONSVC_LOCK_ETCD_GW_H
#define COUPONSVC_LOCK_ETCD_GW_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "lock.h"

#define LOCK_ETCD_GW_MAX_ENDPOINTS 9

enum {
    LOCK_ETCD_GW_OK = 0,
    LOCK_ETCD_GW_NOTFOUND = 1, /* code 5: e.g. "requested lease not found" */
    LOCK_ETCD_GW_ERR = -1,     /* lock_etcd_gw_errkind says which kind */
};

typedef struct lock_etcd_gw lock_etcd_gw_t;

/* Sets the process-wide settings, once, before the first client:
 * endpoints is a comma-separated list of http:// or https:// URLs (copied);
 * username "" means no auth; ca_file "" means the system's CAs; timeout_ms
 * bounds one attempt on one endpoint. The strings are borrowed for the life
 * of the process (they live in cfg_t), except endpoints. Returns 0, or -1
 * with a message in err. */
int lock_etcd_gw_init(const char *endpoints, const char *username,
                      const char *password, const char *ca_file,
                      uint32_t timeout_ms, char *err, size_t errlen);

/* Frees the process-wide state; no client may be in use. */
void lock_etcd_gw_shutdown(void);

/* The number of endpoints configured. */
int lock_etcd_gw_nendpoints(void);

/* A new client (free with lock_etcd_gw_free), or NULL when out of memory. */
lock_etcd_gw_t *lock_etcd_gw_new(void);
void lock_etcd_gw_free(lock_etcd_gw_t *gw);

/* One unary call: POST req (borrowed) to path ("/v3/kv/txn"). Tries the
 * endpoint that answered last, then the others in turn, each attempt
 * bounded by the per-attempt timeout and all of them by deadline_ns
 * (monotonic; 0: n attempts of the timeout). Moves on to the next endpoint
 * on a transport error, a timeout, HTTP 5xx, or gRPC code 14 or 4 (a member
 * that cannot reach a quorum answers those). Re-authenticates once on code
 * 16. Returns LOCK_ETCD_GW_OK with *resp (new reference: the whole object,
 * or for a streaming call its first "result"), LOCK_ETCD_GW_NOTFOUND, or
 * LOCK_ETCD_GW_ERR. *sent_ns (may be NULL) gets the boot-clock time the
 * attempt that answered was started. */
int lock_etcd_gw_call(lock_etcd_gw_t *gw, const char *path, json_t *req,
                      int64_t deadline_ns, json_t **resp, int64_t *sent_ns);

/* Watches key (raw bytes, keylen) from revision start_rev and returns 1 as
 * soon as a DELETE of it is seen (also one at or after start_rev that
 * happened before the call), 0 when until_ns (monotonic) came first or the
 * watch ended without it (cancelled, compacted, the connection lost: the
 * caller re-checks), LOCK_ETCD_GW_ERR only for errors the caller must not
 * retry (auth, permission). */
int lock_etcd_gw_watch_delete(lock_etcd_gw_t *gw, const char *key,
                              size_t keylen, int64_t start_rev,
                              int64_t until_ns);

/* The last error of gw, as for lock_errstr / lock_errkind. */
const char *lock_etcd_gw_errstr(const lock_etcd_gw_t *gw);
lock_errkind_t lock_etcd_gw_errkind(const lock_etcd_gw_t *gw);

/* Records a protocol error (a reply of the wrong shape) on gw. Returns
 * LOCK_ETCD_GW_ERR. */
int lock_etcd_gw_bad_reply(lock_etcd_gw_t *gw, const char *what);

/* The lease TTL in whole seconds for a lock TTL of ttl_ms on a cluster
 * whose election timeout is election_ms: ttl_ms rounded up, and at least
 * ceil(1.5 x election_ms) (a lease shorter than an election could expire
 * while no leader can renew it), and at least 1. */
int64_t lock_etcd_gw_ttl_s(uint32_t ttl_ms, uint32_t election_ms);

/* JSON helpers. */

/* base64 of n bytes of src, NUL-terminated, into a new string (free()). */
char *lock_etcd_gw_b64(const char *src, size_t n);

/* Decodes base64 src into out[cap]; returns the length, or -1. */
long lock_etcd_gw_unb64(const char *src, char *out, size_t cap);

/* The int64 field name of obj (a JSON string, or a number): 0 when absent,
 * as the gateway leaves out zero values. */
int64_t lock_etcd_gw_i64(const json_t *obj, const char *name);

/* A JSON string of an int64, as the gateway wants them (new reference). */
json_t *lock_etcd_gw_jint(int64_t v);

#endif
