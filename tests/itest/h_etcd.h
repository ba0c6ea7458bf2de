/*
 * h_etcd.h: a real 3-member etcd cluster for the suites run with the etcd
 * lock backend (COUPONSVC_LOCK_BACKEND=etcd in the runner's environment;
 * `make test-integration LOCK_BACKEND=etcd`).
 *
 * One cluster per run of a test binary, started before the first test and
 * stopped after the last: members on free loopback ports, their data on
 * /dev/shm when it exists (etcd 3.4 fsyncs its WAL and has no switch to stop
 * it; tmpfs makes the fsyncs free), heartbeat 50 ms and election timeout
 * 500 ms (so a lost leader is replaced in about a second, and the lease TTL
 * floor is 1 s). Each test gets a key prefix of its own, so tests never see
 * each other's locks.
 *
 * The members are children of a small supervisor process, itself a child of
 * the runner: tests are forked processes killed with their process group at
 * their end, so a member a test restarts must not be the test's child. A test
 * asks the supervisor to (re)start a member through a FIFO; it kills or
 * stops one itself, by the pid the supervisor wrote. Every process of the
 * cluster dies with the runner (PR_SET_PDEATHSIG at each level), and the
 * runner's teardown stops the supervisor, which stops the members: nothing
 * is left running. Each test begins by restarting any member a failed test
 * left down and waiting until the cluster has a leader.
 */
#ifndef COUPONSVC_H_ETCD_H
#define COUPONSVC_H_ETCD_H

#define H_ETCD_MEMBERS 3
#define H_ETCD_ELECTION_MS 500

/* 1 when this run uses the etcd backend. */
int h_etcd_on(void);

/* Runner level (h_setup / h_teardown call them when h_etcd_on()). */
int h_etcd_setup(void);
void h_etcd_teardown(void);

/* Per test (h_begin calls it): heals the cluster, picks the test's prefix. */
void h_etcd_begin(void);

/* The environment h_svc_start gives a service (NULL-terminated array of
 * "K=V", static storage). */
const char *const *h_etcd_svc_env(void);

/* "http://127.0.0.1:C0,http://...": every member's client URL. */
const char *h_etcd_endpoints(void);
int h_etcd_client_port(int i);

/* The test's key prefix ("couponsvc-t<pid>/"). */
const char *h_etcd_prefix(void);

/* The index of the current leader, waiting up to timeout_ms for one; -1. */
int h_etcd_leader(int timeout_ms);

/* Member control. kill: SIGKILL and wait until it is gone. signal: any
 * signal (SIGSTOP/SIGCONT). start: the supervisor starts it again on its
 * ports and data; waits until it answers /health (or timeout: fails). */
void h_etcd_kill(int i);
void h_etcd_signal(int i, int sig);
void h_etcd_start(int i);

/* Waits until every running member says healthy (has a leader). */
void h_etcd_wait_healthy(int timeout_ms);

/* Keys under the test's prefix followed by sub ("lock/" ...): their count,
 * or -1 if no member answered. */
long h_etcd_count(const char *sub);

/* Puts key (under the test's prefix) = value; fails the test on error. */
void h_etcd_put(const char *sub, const char *value);

/* The decimal number in key (under the test's prefix); 0 when absent. */
long long h_etcd_get_int(const char *sub);

/* Deletes key (under the test's prefix); returns how many were deleted. */
long h_etcd_del(const char *sub);

/* Revokes the lease of the first key (lowest create revision) under the
 * test's prefix followed by sub: the owner's process lease. Returns 1 when a
 * lease was revoked, 0 when there was no key. */
int h_etcd_revoke_owner(const char *sub);

/* Moves the leadership to member i (etcd's MoveLeader, sent to the current
 * leader) and waits until i leads; fails the test if it does not. */
void h_etcd_make_leader(int i);

/* The remaining TTL in ms of the process lease of the first key under the
 * test's prefix followed by sub (etcd counts it in whole seconds: this is
 * the upper end, capped at the granted TTL), or -2 when there is no key. */
long h_etcd_owner_ttl_ms(const char *sub);

#endif
