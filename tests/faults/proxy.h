/*
 * proxy.h: a TCP proxy on 127.0.0.1 that can black-hole, for "Redis is
 * unreachable from one instance only".
 *
 * fp_start listens on a free loopback port and forwards every connection to
 * 127.0.0.1:<target>. In black-hole mode it stops moving bytes in both
 * directions and stops accepting, but closes nothing: the peers see neither
 * a reset nor an EOF, only silence, like a network path that drops every
 * packet. Only their own timeouts get them out. Leaving black-hole mode moves
 * whatever was waiting (like packets retransmitted after a partition heals)
 * and accepts the connections queued meanwhile.
 *
 * One thread (a poll loop) per proxy; it lives in the test's process and
 * ends with fp_stop or with the test.
 */
#ifndef COUPONSVC_FAULTS_PROXY_H
#define COUPONSVC_FAULTS_PROXY_H

typedef struct fp fp_t;

/* Starts a proxy to 127.0.0.1:target_port. Returns a new proxy (fp_stop
 * frees it); fails the test if it cannot listen. */
fp_t *fp_start(int target_port);

/* The port it listens on. */
int fp_port(const fp_t *p);

/* 1: black-hole; 0: forward. Takes effect within a few ms. */
void fp_blackhole(fp_t *p, int on);

/* New connections go to 127.0.0.1:target_port from now on; open ones stay
 * where they are, like a service address moved to a new primary. */
void fp_retarget(fp_t *p, int target_port);

/* Connections accepted so far. */
int fp_accepted(fp_t *p);

/* Closes every connection, joins the thread, frees. Accepts NULL. */
void fp_stop(fp_t *p);

#endif
