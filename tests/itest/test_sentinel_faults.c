/*
 * test_sentinel_faults.c: the failure table's middle row on one logical
 * Redis behind Sentinel. A master, one replica replicating through a TCP
 * proxy, three sentinels (tests/itest/h_topo.c); the services find the
 * master by asking the sentinels (COUPON_REDIS_SENTINELS).
 *
 * Replication is asynchronous: a lock granted on the master, with the INCR
 * of its fence counter, can be lost in a failover. Sentinel does not make
 * the lock safe; the fence and PostgreSQL's first-write rule keep the data
 * right when it fails.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "faults/load.h"
#include "faults/proxy.h"
#include "harness.h"
#include "tt.h"

/* The fences of the grants of resource res that s logged, in grant order
 * (the "lock.acquired resource=R fence=F ..." lines). Returns how many,
 * at most max. */
static int grant_fences(const h_svc_t *s, const char *res, long *out, int max) {
    FILE *f = fopen(s->log, "r");
    TT_ASSERT_MSG(f != NULL, "cannot read %s", s->log);
    char line[1024], want[128];
    snprintf(want, sizeof(want), " resource=%s ", res);
    int n = 0;
    while (fgets(line, sizeof(line), f) != NULL && n < max) {
        const char *fe = strstr(line, " fence=");
        if (strstr(line, "lock.acquired") != NULL &&
            strstr(line, want) != NULL && fe != NULL) {
            out[n++] = atol(fe + 7);
        }
    }
    fclose(f);
    return n;
}

#define SF_MASTER "couponsvc"
#define SF_SENT_PASS "sentinel-pw"

/*
 * Sentinel failover loses the lock.
 *
 *   1. Three warm-up claims on coupon sf: its fence counter is at 3 on the
 *      master, and the replica has it (waited for).
 *   2. The replication proxy black-holes: from now on nothing the master
 *      takes reaches the replica, and both stay up.
 *   3. The victim V claims sf: granted on the master with fence 4 (the
 *      lock and its INCR: neither replicated). V pauses after the grant
 *      (its critical section) for 5 s, and its path to the sentinels goes
 *      dark too, so it can learn nothing of what follows: by its own clock
 *      its lease (TTL 20 s) stays valid.
 *   4. The master is killed. The sentinels see it down (0.5-1 s), agree,
 *      and promote the replica, which has neither the lock nor the INCR.
 *   5. B, which asks the sentinels, claims sf on the new master: no lock
 *      there, granted, and its INCR draws 4 again. Two holders of one
 *      lock, the same fence: both grants are in the logs.
 *   6. B writes fence 4 and commits. V wakes and writes fence 4: the
 *      coupon's last_fence is 4 already and a lease's first write needs
 *      last_fence < fence, so PostgreSQL refuses it: 409 fenced. Should the
 *      failover be slow enough that V writes first, B is the one refused:
 *      its lease still holds, so it raises the counter and draws anew
 *      (the recovery of a counter gone backwards), 201 with a higher fence.
 *      Either way one write per fence, no oversell, no lost 201.
 *   7. V's path heals and V claims again: it follows the failover.
 *
 * Throughout, a load on another coupon (through B and C, both asking the
 * sentinels) runs into the failover: clear 503s while there is no master,
 * then claims again; the usual accounting ends it.
 */
/* The scenario's processes and what it learns on the way. */
typedef struct sf {
    fp_t *vpath;             /* V's path to the sentinels */
    h_svc_t *v, *b, *c;      /* the victim, and two that ask the sentinels */
    int old_master, replica; /* node ports */
    fl_load_t *l;            /* on coupon bg, through B and C */
    fl_solo_t sv, sb;        /* V's claim "victim", B's claim "second" */
    double t_promoted;       /* when every sentinel named the replica */
} sf_t;

/* The setting: the sentinels over a master and its replica, V (TTL 20 s, a
 * 5 s pause after its grant, nothing else that could end its claim early)
 * reaching one sentinel through a proxy of its own, B and C (TTL 1 s)
 * asking all of them; the coupons sf (10) and bg (2000). */
static void sf_start(sf_t *f) {
    h_sentinel_start(SF_MASTER, SF_SENT_PASS, 500);
    f->old_master = h_node_port(0);
    f->replica = h_node_port(1);
    f->vpath = fp_start(h_sentinel_port(0));
    char sents[128], vsents[64];
    snprintf(sents, sizeof(sents), "COUPON_REDIS_SENTINELS=%s",
             h_sentinel_addrs());
    snprintf(vsents, sizeof(vsents), "COUPON_REDIS_SENTINELS=127.0.0.1:%d",
             fp_port(f->vpath));
    const char *env_v[] = {sents,
                           vsents,
                           "COUPON_REDIS_MASTER_NAME=" SF_MASTER,
                           "COUPON_REDIS_SENTINEL_PASSWORD=" SF_SENT_PASS,
                           "COUPON_LOCK_TTL_MS=20000",
                           "COUPON_FAULT=after_acquire:5000",
                           "COUPON_LOCK_WAIT_MS=10000",
                           "COUPON_LOCK_MAX_HOLD_MS=60000",
                           "COUPON_PG_TX_DEADLINE_MS=60000",
                           "COUPON_BATCH_MAX=1",
                           NULL};
    const char *env[] = {sents,
                         "COUPON_REDIS_MASTER_NAME=" SF_MASTER,
                         "COUPON_REDIS_SENTINEL_PASSWORD=" SF_SENT_PASS,
                         "COUPON_LOCK_TTL_MS=1000",
                         "COUPON_LOCK_WAIT_MS=3000",
                         NULL};
    f->v = h_svc_start("sf-victim", env_v);
    f->b = h_svc_start("sf-b", env);
    f->c = h_svc_start("sf-c", env);
    /* The harness also sets COUPON_REDIS_ADDRS (to the test's own Redis,
     * which nobody here uses): the sentinels win, and the log says so. */
    TT_ASSERT(h_file_has(f->b->log, "sentinel.overrides_addrs"));
    h_coupon(f->b, "sf", 10);
    h_coupon(f->b, "bg", 2000);
}

/* Step 1: three warm-up claims on sf, the load on bg, and the replica has
 * the fence counter at 3 through the replication proxy. */
static void sf_warm(sf_t *f) {
    fl_warm(f->b->url, "sf", 3);
    TT_EQ_INT(h_node_int(f->old_master, "GET coupon:{sf}:fence"), 3);
    h_svc_t *ok[] = {f->b, f->c};
    f->l = fl_start(ok, 2, "bg", "load", 4, 20000, 20);
    fl_wait_201s(f->l, 20);
    h_repl_wait_synced(10000);
    TT_EQ_INT(h_node_int(f->replica, "GET coupon:{sf}:fence"), 3);
    char mport[16];
    TT_ASSERT(h_node_info(f->replica, "replication", "master_port", mport,
                          sizeof(mport)) == 0);
    TT_EQ_INT(atoi(mport), fp_port(h_sentinel_repl_proxy()));
}

/* Steps 2 and 3: replication black-holed, V granted fence 4 on the master
 * alone, then V's path to the sentinels dark. */
static void sf_victim_granted(sf_t *f) {
    fp_blackhole(h_sentinel_repl_proxy(), 1);
    fl_solo_start(&f->sv, f->v, "sf", "victim", 30000);
    TT_CMP_INT(h_wait_metric(f->v, "couponsvc_leases_held", 1, 10000), >=, 1);
    fp_blackhole(f->vpath, 1);
    TT_EQ_INT(h_node_int(f->old_master, "GET coupon:{sf}:fence"), 4);
    TT_EQ_INT(h_node_int(f->replica, "GET coupon:{sf}:fence"), 3);
    TT_EQ_INT(h_node_int(f->replica, "EXISTS coupon:{sf}:lock"), 0);
}

/* Steps 4 and 5: the master killed, the replica promoted, B's claim on it;
 * both claims answered, the load stopped. */
static void sf_failover(sf_t *f) {
    h_node_kill(0);
    /* A split vote among the sentinels is retried after twice the
     * failover timeout (10 s): room for one. */
    double took = h_sentinel_wait_master(f->replica, 45000);
    TT_CMP_INT(took, >=, 0);
    f->t_promoted = h_now_ms();
    printf("    master killed; every sentinel names the replica %.0f ms "
           "later\n",
           took);
    fl_solo_start(&f->sb, f->b, "sf", "second", 30000);
    fl_solo_join(&f->sb);
    fl_solo_join(&f->sv);
    h_sleep_ms(1500);
    fl_stop(f->l);
    fl_print(f->l, "load");
}

/* Two holders of sf, granted the same fence (the grant log), and step 6:
 * PostgreSQL accepted one write for fence 4 and refused the other. */
static void sf_check_two_holders(const sf_t *f) {
    long fv[4], fb[8];
    int nv = grant_fences(f->v, "sf", fv, 4);
    int nb = grant_fences(f->b, "sf", fb, 8);
    printf("    grants of sf: victim %d (first fence %ld), b %d (last fence "
           "%ld)\n",
           nv, nv > 0 ? fv[0] : -1L, nb, nb > 0 ? fb[nb - 1] : -1L);
    TT_EQ_INT(nv, 1);
    TT_CMP_INT(nb, >=, 4); /* three warm-ups, then "second" */
    TT_EQ_INT(fv[0], 4);
    TT_EQ_INT(fb[3], 4); /* the same fence, twice */
    /* In grant order across the three instances, that is the one place
     * where the fence did not rise. */
    h_svc_t *all[] = {f->v, f->b, f->c};
    TT_EQ_INT(h_grant_order_violations(all, 3, "sf", NULL), 1);

    /* V fenced, or B refused, recovered, and written above 4. */
    TT_EQ_INT(fl_rows_with_fence("sf", 4), 1);
    if (f->sb.r.status == 201 && f->sb.r.fence == 4) {
        TT_EQ_INT(f->sv.r.status, 409);
        TT_EQ_STR(f->sv.r.error, "fenced");
        TT_CMP_INT(h_metric(f->v, "couponsvc_fenced_refusals_total"), >=, 1);
        printf("    b wrote fence 4 first; the victim was fenced\n");
    } else {
        TT_EQ_INT(f->sv.r.status, 201);
        TT_EQ_INT(f->sv.r.fence, 4);
        TT_EQ_INT(f->sb.r.status, 201);
        TT_CMP_INT(f->sb.r.fence, >, 4);
        TT_CMP_INT(h_metric(f->b, "couponsvc_fence_counter_recoveries_total"),
                   >=, 1);
        printf("    the victim wrote fence 4 first; b was refused and "
               "recovered with fence %ld\n",
               f->sb.r.fence);
    }
}

/* Step 7: V's path heals; it asks the sentinels, finds the new master, and
 * claims again (within 20 tries). */
static void sf_victim_heals(const sf_t *f) {
    fp_blackhole(f->vpath, 0);
    long st = 0;
    fl_rec_t rv;
    for (int i = 0; i < 20 && st != 201; i++) {
        char user[32];
        snprintf(user, sizeof(user), "healed-%d", i);
        fl_claim(f->v->url, "sf", user, 10000, &rv);
        st = rv.status;
        if (st != 201) {
            h_sleep_ms(300);
        }
    }
    TT_EQ_INT(st, 201);
}

TT_TEST(sentinel_failover_loses_lock, 120) {
    H_REDIS_ONLY(); /* a Redis topology of its own */
    h_begin();
    sf_t f = {0};
    sf_start(&f);
    sf_warm(&f);
    sf_victim_granted(&f);
    sf_failover(&f);
    sf_check_two_holders(&f);

    /* The load ran into the failover: clear answers (503s with
     * Retry-After while there was no master), then claims again. */
    fl_failures_clear(f.l, -1, h_now_ms() + 1, NULL);
    TT_CMP_INT(fl_count_between(f.l, 201, f.t_promoted, h_now_ms()), >=, 1);
    printf("    load: first 201 +%.0f ms after every sentinel named the "
           "new master\n",
           fl_first_after(f.l, 201, f.t_promoted) - f.t_promoted);

    sf_victim_heals(&f);

    long n_sf = 3 + 1 + (f.sb.r.status == 201) + (f.sv.r.status == 201);
    h_check_invariants("sf", 10, n_sf);
    h_svc_t *ok[] = {f.b, f.c};
    fl_settle(f.l, f.b);
    fl_check_rows(f.l, "bg");
    long n_bg = fl_durable(f.l) + fl_drain(ok, 2, "bg", "drain");
    h_check_invariants("bg", 2000, n_bg);
    fl_free(f.l);
    fp_stop(f.vpath);
    h_topo_stop();
}

/* A free loopback port nothing listens on: connections to it are
 * refused. */
static int dead_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    TT_ASSERT(fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
              getsockname(fd, (struct sockaddr *)&a, &len) == 0);
    close(fd);
    return ntohs(a.sin_port);
}

/*
 * Asking the sentinels. One instance's list starts with a sentinel that
 * refuses connections and one that black-holes (a proxy in front of a real
 * one, silent): it still finds the master, within the Redis timeout, and
 * claims. With the wrong sentinel password, claims answer 503 and /readyz
 * says 503 too: refused credentials are this instance's own fault, not a
 * shared outage. With a master name the sentinels do not know: 503, and
 * /readyz stays 200 (the sentinels may not have learned it yet).
 */
TT_TEST(sentinel_asks_each_sentinel_in_turn, 60) {
    H_REDIS_ONLY(); /* a Redis topology of its own */
    h_begin();
    h_sentinel_start(SF_MASTER, SF_SENT_PASS, 500);
    fp_t *hole = fp_start(h_sentinel_port(1));
    fp_blackhole(hole, 1);
    char list[200], good[200];
    snprintf(list, sizeof(list),
             "COUPON_REDIS_SENTINELS=127.0.0.1:%d,127.0.0.1:%d,127.0.0.1:%d",
             dead_port(), fp_port(hole), h_sentinel_port(2));
    snprintf(good, sizeof(good), "COUPON_REDIS_SENTINELS=%s",
             h_sentinel_addrs());
    const char *env_a[] = {list, "COUPON_REDIS_MASTER_NAME=" SF_MASTER,
                           "COUPON_REDIS_SENTINEL_PASSWORD=" SF_SENT_PASS,
                           "COUPON_REDIS_TIMEOUT_MS=600", NULL};
    const char *env_p[] = {good, "COUPON_REDIS_MASTER_NAME=" SF_MASTER,
                           "COUPON_REDIS_SENTINEL_PASSWORD=wrong", NULL};
    const char *env_n[] = {good, "COUPON_REDIS_MASTER_NAME=nobody",
                           "COUPON_REDIS_SENTINEL_PASSWORD=" SF_SENT_PASS,
                           NULL};
    h_svc_t *a = h_svc_start("sa-list", env_a);
    h_svc_t *p = h_svc_start("sa-badpass", env_p);
    h_svc_t *nm = h_svc_start("sa-noname", env_n);
    h_coupon(a, "sa", 10);
    for (int i = 0; i < 3; i++) {
        char user[16];
        snprintf(user, sizeof(user), "u%d", i);
        fl_rec_t r;
        fl_claim(a->url, "sa", user, 10000, &r);
        printf("    %s on %s: %ld in %.0f ms\n", user, a->name, r.status,
               r.t1 - r.t0);
        TT_EQ_INT(r.status, 201);
    }
    TT_ASSERT(
        h_file_has(a->log, "event=sentinel.master master_name=" SF_MASTER));
    /* The start line names the master the sentinels named, not the
     * COUPON_REDIS_ADDRS entry the harness also sets. */
    char start[160];
    snprintf(start, sizeof(start),
             "lock=sentinel redis=127.0.0.1:%d master_name=" SF_MASTER
             " sentinel=127.0.0.1:%d",
             h_node_port(0), h_sentinel_port(2));
    TT_ASSERT_MSG(h_file_has(a->log, start), "no \"%s\" in %s", start, a->log);

    fl_rec_t r;
    fl_claim(p->url, "sa", "badpass", 10000, &r);
    printf("    badpass on %s: %ld %s: %s\n", p->name, r.status, r.error,
           r.detail);
    TT_EQ_INT(r.status, 503);
    TT_CONTAINS(r.detail, "AUTH");
    /* Errors name the master (none known here), not COUPON_REDIS_ADDRS. */
    TT_CONTAINS(r.detail, "sentinel: master \"" SF_MASTER "\" unknown: ");
    char url[96];
    snprintf(url, sizeof(url), "%s/readyz", p->url);
    double end = h_now_ms() + 10000;
    long st;
    while ((st = h_http("GET", url, NULL, NULL, NULL, 0, NULL)) != 503 &&
           h_now_ms() < end) {
        h_sleep_ms(100);
    }
    TT_EQ_INT(st, 503);

    fl_claim(nm->url, "sa", "noname", 10000, &r);
    printf("    noname on %s: %ld %s: %s\n", nm->name, r.status, r.error,
           r.detail);
    TT_EQ_INT(r.status, 503);
    TT_CONTAINS(r.detail, "no master named");
    TT_CONTAINS(r.detail, "sentinel: master \"nobody\" unknown: ");
    snprintf(url, sizeof(url), "%s/readyz", nm->url);
    TT_EQ_INT(h_http("GET", url, NULL, NULL, NULL, 0, NULL), 200);

    h_check_invariants("sa", 10, 3);
    fp_stop(hole);
    h_topo_stop();
}
