/*
 * lock.pml: the claim's lock protocol as a Promela model, checked by spin.
 *
 * What is modelled (tests/model/run.sh builds each configuration with
 * spin -D... and runs an exhaustive search; the README's "The protocol,
 * model-checked" says how to read a trail):
 *
 *   - N Redis nodes (N = 1: one node; N = 3: Redlock), each with the lock
 *     key (the token of the lease that holds it, or none) and its own fence
 *     counter. Every script is one atomic step on its node, as in Redis.
 *   - L leases, one per client process, each with its own token. A client
 *     sends each command to each node on that node's own connection: a
 *     FIFO link process per (lease, node) runs it on the node whenever the
 *     scheduler lets it and answers, or the answer misses the round's
 *     deadline and an acquire still runs later (or never). So commands to
 *     different nodes land at different times, and a late acquire leaves a
 *     key (and an INCR) after its client stopped waiting.
 *   - Acquire: SET NX PX + INCR in one script. Granted with a majority;
 *     the fence is the highest counter a granting node returned.
 *   - Redlock's write-back: "raise the counter to the fence only where our
 *     token still holds the lock", and the lease usable only once a majority
 *     answered "raised while held". One node needs none: its INCR is the
 *     fence.
 *   - The watchdog's renewal round (fewer than a majority of keys still
 *     ours: the lease is lost) and the fence recovery (a refused fence
 *     raises every node's counter to last_fence). The release and the
 *     extend script are not sent as commands: a key may vanish at any
 *     moment anyway, which covers every moment a release could land, and a
 *     renewal only keeps a key that may still expire here.
 *   - Time is abstract. A key may expire at any moment (TTL expiry, a
 *     process pause of any length, a clock jump on a node), and a lease's
 *     validity may end at any moment, so the commit gate may refuse at any
 *     moment; it refuses for sure a lease that is lost, or that a delayed
 *     restart has outlived.
 *   - A node losing its data (restarted empty), at most once, optionally
 *     with the delayed-restart rule (the node stays out until every lease
 *     that existed when it died has run out of validity: "at least the
 *     maximum TTL").
 *   - PostgreSQL: the fenced conditional UPDATE of service/store.c
 *     (last_fence <= fence - 1, i.e. last_fence < fence, and
 *     claimed + 1 <= total), and last_fence := fence on COMMIT. The UPDATE
 *     holds the stock row's lock to COMMIT or ROLLBACK, so the transaction
 *     (with the watchdog's last round and the commit gate) is one step
 *     here: nothing another lease does reaches PostgreSQL in between. One
 *     claim per lease, so each lease writes at most once.
 *
 * What is checked (assert):
 *
 *   P1  of two leases that became usable, the later has the higher fence
 *       (not checked once a node lost its data). "B is later than A": B's
 *       acquire began after A became usable, or B took the lock over from A
 *       on a node of A's usable majority, one whose counter gave B its
 *       fence (A held the key there before B's SET NX succeeded).
 *   P2  no write of a lease is accepted (committed) after a write of a
 *       later lease, in the same sense of "later".
 *   P3  never more claims than stock: claimed <= TOTAL at every COMMIT.
 *
 * Switches (spin -D...): N (1 or 3), L (2 or 3), TOTAL, CTR_MAX (the
 * counters start anywhere in 0..CTR_MAX: earlier leases that never wrote),
 * DATALOSS,
 * DELAYED_RESTART, and the negative controls WB_UNCOND (the write-back
 * raises the counter on any node without the token check and counts every
 * answer), NO_WB (no write-back: usable right after the grant), NO_FENCE
 * (the UPDATE without last_fence < fence), NO_STOCK (without
 * claimed < total).
 */

#ifndef N
#define N 3
#endif
#ifndef L
#define L 2
#endif
#ifndef TOTAL
#define TOTAL 1
#endif
#ifndef CTR_MAX
#define CTR_MAX 2
#endif

#define MAJ (N / 2 + 1)
#define NL (N * L)
#define BIT(i) (1 << (i))
#define ALL ((1 << N) - 1)

/* Commands on a link. */
#define ACQ 1
#define WB 2
#define EXT 3
#define RAISE 4

/* ------------------------------------------------------------ Redis ---- */

byte key[N];   /* 0: no lock; l + 1: lease l's token holds it */
byte ctr[N];   /* the node's fence counter */
byte held[N];  /* bit l: lease l has held the key here */
bit out[N];    /* restarted empty and kept out (delayed restart) */

/* rep[l * N + n]: node n's answer to lease l's command of the round in
 * progress. 0 none yet, 1 yes, 2 no, 3 none in time (the round's deadline;
 * the command may still run later). afence: the fence an acquire drew. */
byte rep[NL];
byte afence[NL];

/* One connection per (lease, node): FIFO, so a late command delays the
 * ones sent after it on that connection, never another node's. */
chan link[NL] = [2] of { byte };

/* ------------------------------------------------------------ leases --- */

byte fence[L];     /* the lease's fence, once granted */
byte gmask[L];     /* the nodes whose grants gave the fence */
byte umask[L];     /* the nodes that made it usable */
bit usable[L];
bit lost[L];       /* the watchdog found it gone on a majority */
bit dead[L];       /* its validity ran out for sure (delayed restart) */
bit started[L];
byte raise_to[L];  /* the recovery's floor: last_fence when refused */

/* seen[a * L + b], bit n: b's SET NX succeeded on node n after a had held
 * the key there. rt[a], bit b: b's acquire began after a became usable. */
byte seen[L * L];
byte rt[L];

/* ------------------------------------------------------- PostgreSQL --- */

byte last_fence;
byte claimed;
bit accepted[L];   /* lease l's write committed */

/* ----------------------------------------------------------- faults --- */

bit lost_data;     /* a node restarted empty: P1 no longer holds */
byte loss_mask;    /* leases alive when it did (delayed restart) */

/* b is later than a (P1 above). */
#define LATER(a, b)                                                           \
    ((a) != (b) &&                                                            \
     ((rt[a] & BIT(b)) != 0 || (seen[(a) * L + (b)] & umask[a] & gmask[b]) != 0))

/* Every answer of lease l's round from the nodes in mask is in. */
#define IN(l, m, n) (((m) & BIT(n)) == 0 || rep[(l) * N + (n)] != 0)
#if N == 1
#define ALL_IN(l, m) IN(l, m, 0)
#else
#define ALL_IN(l, m) (IN(l, m, 0) && IN(l, m, 1) && IN(l, m, 2))
#endif

/* One node runs one command of lease l: the scripts of the lock (acquire:
 * SET NX PX + INCR; write-back: compare token, raise; extend: compare
 * token; raise: compare-and-raise). Sets r to the answer (1 yes, 2 no). */
inline node_run(l, n, cmd, r) {
    r = 2;
    if
    :: out[n] -> skip /* down: every command fails */
    :: !out[n] && cmd == ACQ && key[n] == 0 ->
        key[n] = l + 1;
        ctr[n]++;
        j = 0;
        do
        :: j < L ->
            if
            :: j != l && (held[n] & BIT(j)) -> seen[j * L + l] = seen[j * L + l] | BIT(n)
            :: else -> skip
            fi;
            j++
        :: else -> break
        od;
        j = 0;
        held[n] = held[n] | BIT(l);
        afence[l * N + n] = ctr[n];
        printf("MSC: node %d: lease %d SET NX ok, INCR -> %d\n", n, l, ctr[n]);
        r = 1
#ifdef WB_UNCOND
    :: !out[n] && cmd == WB ->
#else
    :: !out[n] && cmd == WB && key[n] == l + 1 ->
#endif
        if
        :: ctr[n] < fence[l] -> ctr[n] = fence[l]
        :: else -> skip
        fi;
        if
        :: key[n] == l + 1 -> printf("MSC: node %d: lease %d write-back while held, counter now %d\n", n, l, ctr[n])
        :: else -> printf("MSC: node %d: lease %d write-back NOT held, counter now %d\n", n, l, ctr[n])
        fi;
        r = 1
    :: !out[n] && cmd == EXT && key[n] == l + 1 -> r = 1
    :: !out[n] && cmd == RAISE ->
        if
        :: ctr[n] < raise_to[l] -> ctr[n] = raise_to[l]
        :: else -> skip
        fi;
        printf("MSC: node %d: lease %d recovery raise, counter now %d\n", n, l, ctr[n])
    :: else -> skip
    fi;
    if
    :: r == 2 && cmd == ACQ -> printf("MSC: node %d: lease %d acquire refused\n", n, l)
    :: r == 2 && cmd == WB -> printf("MSC: node %d: lease %d write-back refused (not held)\n", n, l)
    :: else -> skip
    fi
}

/* A key expires (its TTL, its holder paused, a clock jump on the node) at
 * any moment; only a command on that node can tell, so the model decides
 * whether it has when the next command runs there. */
#define EXPIRY(n)                                                             \
    if                                                                        \
    :: key[n] != 0 -> printf("MSC: node %d: lease %d's key expires\n", n, key[n] - 1); key[n] = 0 \
    :: true                                                                   \
    fi

/* The connection from lease l to node n: runs each command when the
 * scheduler lets it and answers; or the answer does not come in time and
 * the command runs later, or never. */
proctype linkp(byte l; byte n) {
    byte cmd, r, j;
    bit late;
end:
    do
    :: atomic {
        !late && nempty(link[l * N + n]) -> link[l * N + n]?cmd;
        if
        :: EXPIRY(n); d_step {
               node_run(l, n, cmd, r);
               if
               :: cmd != RAISE -> rep[l * N + n] = r
               :: else -> skip
               fi;
               cmd = 0;
               r = 0
           }
        :: cmd == ACQ -> rep[l * N + n] = 3; late = 1; /* runs later, or never */
            printf("MSC: node %d: lease %d's acquire is late\n", n, l)
        :: cmd == WB -> rep[l * N + n] = 3; cmd = 0; /* late, it would only raise */
            printf("MSC: node %d: lease %d's write-back is lost\n", n, l)
        :: cmd == RAISE -> cmd = 0 /* lost */
        fi
       }
    :: atomic {
        late -> EXPIRY(n); d_step {
            node_run(l, n, cmd, r);
            afence[l * N + n] = 0;
            late = 0;
            cmd = 0;
            r = 0
        }
       }
    :: d_step { late -> late = 0; cmd = 0 }
    od
}

/* Lease l sends cmd to the nodes in m (in one step: the sends cannot block). */
inline send(l, cmd, m) {
    n = 0;
    do
    :: n < N ->
        if
        :: (m & BIT(n)) -> rep[l * N + n] = 0; link[l * N + n]!cmd
        :: else -> skip
        fi;
        n++
    :: else -> break
    od;
    n = 0
}

/* Counts the yes answers from the nodes in m into cnt, their nodes into got. */
inline count(l, m) {
    cnt = 0;
    got = 0;
    n = 0;
    do
    :: n < N ->
        if
        :: (m & BIT(n)) && rep[l * N + n] == 1 -> cnt++; got = got | BIT(n)
        :: else -> skip
        fi;
        rep[l * N + n] = 0;
        n++
    :: else -> break
    od;
    n = 0
}

/* P1, whenever lease x becomes usable, against every usable lease, in both
 * directions (either may turn out to be the later one). */
inline check_order(x) {
    y = 0;
    do
    :: y < L ->
        if
        :: usable[y] && !lost_data && LATER(y, x) -> assert(fence[x] > fence[y])
        :: usable[y] && !lost_data && LATER(x, y) -> assert(fence[y] > fence[x])
        :: else -> skip
        fi;
        y++
    :: else -> break
    od;
    y = 0
}

proctype client(byte l) {
    byte n, y, cnt, got;
    bit ok;

    /* The acquire round, on every node at once. */
    d_step {
        started[l] = 1;
        y = 0;
        do
        :: y < L ->
            if
            :: usable[y] -> rt[y] = rt[y] | BIT(l)
            :: else -> skip
            fi;
            y++
        :: else -> break
        od;
        y = 0;
        send(l, ACQ, ALL)
    }
    atomic {
        ALL_IN(l, ALL) -> count(l, ALL);
        if
        :: cnt < MAJ -> cnt = 0; got = 0; goto done
        :: else -> skip
        fi;
        /* Granted. The fence: the highest counter a granting node drew. */
        n = 0;
        do
        :: n < N ->
            if
            :: (got & BIT(n)) && afence[l * N + n] > fence[l] -> fence[l] = afence[l * N + n]
            :: else -> skip
            fi;
            afence[l * N + n] = 0;
            n++
        :: else -> break
        od;
        n = 0;
        gmask[l] = got;
        printf("MSC: lease %d granted on nodes %d (bit mask), fence %d\n", l, got, fence[l]);
#if N > 1 && !defined(NO_WB)
#ifdef WB_UNCOND
        /* The negative control: raise on every node, count any answer. */
        send(l, WB, ALL);
#else
        /* The write-back, to the granting nodes. */
        send(l, WB, gmask[l]);
#endif
        got = 0;
        cnt = 0
    }
    atomic {
        /* Usable only once a majority answered "raised while held". */
#ifdef WB_UNCOND
        ALL_IN(l, ALL) -> count(l, ALL);
#else
        ALL_IN(l, gmask[l]) -> count(l, gmask[l]);
#endif
        if
        :: cnt < MAJ -> cnt = 0; got = 0; goto done
        :: else -> skip
        fi;
#endif
        umask[l] = got;
        got = 0;
        cnt = 0;
        usable[l] = 1;
        printf("MSC: lease %d usable, fence %d, majority %d (bit mask)\n", l, fence[l], umask[l]);
        check_order(l)
    }

    /* The watchdog, the transaction and its commit gate, in one step. The
     * UPDATE takes the stock row's lock and holds it to COMMIT or ROLLBACK,
     * so nothing another lease does can reach PostgreSQL between the UPDATE,
     * the gate and the COMMIT; a pause anywhere in there shows as this step
     * coming later. What a pause between the gate and the COMMIT can still
     * do (the lease expires, someone else acquires, writes later) is there:
     * the step is taken with the lease in whatever state it is. */
    atomic {
        /* The watchdog's renewal round (on its own period; maybe none ran
         * since the grant). Its extend script changes nothing in this model,
         * since a key may expire at any moment anyway: a round that finds
         * fewer than a majority of keys still ours marks the lease lost;
         * keys still ours may have expired meanwhile. */
        if
        :: cnt = 0;
           n = 0;
           do
           :: n < N ->
               if
               :: key[n] == l + 1 && !out[n] -> cnt++
               :: else -> skip
               fi;
               n++
           :: else -> break
           od;
           n = 0;
           if
           :: cnt < MAJ -> lost[l] = 1; printf("MSC: lease %d renewal: %d keys, lost\n", l, cnt)
           :: else -> skip
           fi;
           cnt = 0
        :: skip
        fi;
        /* The UPDATE: written only if the fence is above last_fence and
         * stock is left. */
        ok = 1;
#ifndef NO_FENCE
        if
        :: last_fence >= fence[l] -> ok = 0
        :: else -> skip
        fi;
#endif
#ifndef NO_STOCK
        if
        :: claimed >= TOTAL -> ok = 0
        :: else -> skip
        fi;
#endif
        if
        :: !ok ->
            /* Refused (fenced, or sold out): ROLLBACK, and the recovery raises
             * every node's counter to last_fence, unconditionally. */
            raise_to[l] = last_fence;
            printf("MSC: lease %d UPDATE refused (fence %d, last_fence %d, claimed %d)\n", l, fence[l], last_fence, claimed);
            send(l, RAISE, ALL)
        :: ok && (lost[l] || dead[l]) ->
            /* The gate: lost, or validity over for sure: ROLLBACK. */
            printf("MSC: lease %d commit gate: lost or run out, ROLLBACK\n", l)
        :: ok && !lost[l] && !dead[l] ->
            /* The gate: validity over by the lease's own clock, which may
             * happen at any moment: ROLLBACK. */
            printf("MSC: lease %d commit gate: validity over, ROLLBACK\n", l)
        :: ok && !lost[l] && !dead[l] ->
            /* COMMIT. P2: nobody later than us has committed. */
            printf("MSC: lease %d COMMIT, fence %d\n", l, fence[l]);
            y = 0;
            do
            :: y < L -> assert(!(accepted[y] && LATER(l, y))); y++
            :: else -> break
            od;
            y = 0;
            last_fence = fence[l];
            claimed++;
            printf("MSC: lease %d committed, claimed %d of %d\n", l, claimed, TOTAL);
            assert(claimed <= TOTAL); /* P3 */
            accepted[l] = 1
        fi;
        ok = 0
    }
done:
    /* The release: a token-checked DEL on every node. Not modelled as a
     * command: a key may vanish at any moment anyway (env below), which
     * covers every time the release could land. */
    skip
}

/* Time and faults. One guarded option per node and per lease (a select()
 * followed by a guard would block inside the atomic step). */
/* The delayed restart: the node comes back at least the maximum TTL after
 * it died, so every lease alive then has run out of validity by now. (When
 * exactly each ran out only its own commit gate can tell, and the gate may
 * refuse at any moment anyway: so the model marks them here.) */
#define REJOIN(n)                                                             \
    :: d_step {                                                               \
        out[n] ->                                                             \
        out[n] = 0;                                                           \
        dead[0] = dead[0] | (loss_mask & 1);                                  \
        dead[1] = dead[1] | ((loss_mask >> 1) & 1);                           \
        DEAD2;                                                                \
        printf("MSC: node %d back (delayed restart)\n", n)                  \
    }
#if L > 2
#define DEAD2 dead[2] = dead[2] | ((loss_mask >> 2) & 1)
#else
#define DEAD2 skip
#endif

active proctype env() {
    byte n, l;
end:
    do
    /* (Keys expire in the links: EXPIRY above.) */
    :: false
#ifdef DATALOSS
    /* One node restarts empty, once. */
    :: atomic {
#if CTR_MAX == 0
        /* The nodes start alike, so losing node 0 stands for any. */
        !lost_data -> n = 0;
#else
        !lost_data -> select(n : 0 .. N - 1);
#endif
        d_step {
            key[n] = 0;
            ctr[n] = 0;
            lost_data = 1;
            printf("MSC: node %d restarts empty\n", n);
#ifdef DELAYED_RESTART
            /* It stays out (every command fails) until every lease alive
             * now has run out of validity. */
            out[n] = 1;
            l = 0;
            do
            :: l < L ->
                if
                :: started[l] && !dead[l] -> loss_mask = loss_mask | BIT(l)
                :: else -> skip
                fi;
                l++
            :: else -> break
            od;
            l = 0;
#endif
            n = 0
        }
       }
#ifdef DELAYED_RESTART
    REJOIN(0)
#if N > 1
    REJOIN(1)
    REJOIN(2)
#endif
#endif
#endif
    od
}

init {
    byte n, l;
    atomic {
        /* The counters start anywhere in 0..CTR_MAX (earlier leases that
         * never wrote), in falling order (the nodes are interchangeable),
         * the last at 0 (with last_fence 0, only their differences
         * matter). */
        select(l : 0 .. CTR_MAX);
        ctr[0] = l;
#if N > 1
        select(l : 0 .. ctr[0]);
        ctr[1] = l;
        ctr[2] = 0;
#endif
        l = 0;
        do
        :: l < L ->
            n = 0;
            do
            :: n < N -> run linkp(l, n); n++
            :: else -> break
            od;
            l++
        :: else -> break
        od;
        l = 0;
        do
        :: l < L -> run client(l); l++
        :: else -> break
        od;
        l = 0;
        n = 0
    }
}
