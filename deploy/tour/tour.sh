#!/usr/bin/env bash
# tour.sh: the guided tour. One narrated demo per failure of the README's
# failure table and per performance consideration, each happening on the
# local stack in front of the reader.
#
#   deploy/tour/tour.sh            every demo, in order (make tour)
#   deploy/tour/tour.sh NAME...    those demos only (make demo-NAME)
#   deploy/tour/tour.sh --ci       the fast ones (make tour-ci)
#   deploy/tour/tour.sh --list     the names
#
# Each demo says in two sentences what it is about to show, runs it, prints
# a timeline built from the service's own log lines (time since the demo
# began, instance, event, fence, token prefix) and the tour's marks (the
# faults it injects, the answers clients got, lines starting "**"), and
# then a verdict checked against PostgreSQL. The tour exits non-zero if any
# verdict is wrong, and stops everything it started, also on Ctrl-C.
#
# What it starts, once for all the demos it runs: the local stack
# (deploy/stack.sh: PostgreSQL, and Redis, 3 replicas and nginx, which only
# the race and contention demos use), and beside it a Redis of its own
# whose wall clock it can move (tests/faults/clockshift.c preloaded), for
# the instances the fault demos start by name (A, B, ...) on the stack's
# PostgreSQL with the settings each demo needs. A TCP proxy
# (build/tests/faultproxy) stands between an instance and Redis where a
# demo cuts it off. The failover demo adds a master, its replica and three
# sentinels, then three Redlock nodes; the etcd demo a 3-member cluster.
# Negative controls, couponsvc built with one guard compiled out, are
# built once by make into build/neg-*/, as make test-negative does.
#
# Settings (environment): LB_PORT, APP_PORT_BASE, PG_PORT, REDIS_PORT (the
# stack's, see deploy/stack.sh), TOUR_REDIS_PORT (REDIS_PORT + 1; the
# topologies take the 14 ports after it), TOUR_PORT_BASE (APP_PORT_BASE +
# 10: instance A listens on TOUR_PORT_BASE + 1, B on + 2, ...), TOUR_DIR
# (state and logs; /tmp/couponsvc-tour-HASH), COUPONSVC, LOADGEN, BUILD.

set -eu
umask 022

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PROG=tour
# shellcheck source=deploy/proc.sh
. "$ROOT/deploy/proc.sh"

BUILD=${BUILD:-$ROOT/build}
case $BUILD in /*) ;; *) BUILD=$ROOT/$BUILD ;; esac
COUPONSVC=${COUPONSVC:-$BUILD/couponsvc}
LOADGEN=${LOADGEN:-$BUILD/loadgen}
FAULTPROXY=$BUILD/tests/faultproxy
CLOCKSHIFT=$BUILD/tests/libclockshift.so
NEG_NOFENCE=$BUILD/neg-nofence/couponsvc
NEG_TRUSTREAD=$BUILD/neg-trustread/couponsvc
export LB_PORT=${LB_PORT:-8080} APP_PORT_BASE=${APP_PORT_BASE:-8080}
export PG_PORT=${PG_PORT:-15432} REDIS_PORT=${REDIS_PORT:-16379}
TOUR_REDIS_PORT=${TOUR_REDIS_PORT:-$((REDIS_PORT + 1))}
TOUR_PORT_BASE=${TOUR_PORT_BASE:-$((APP_PORT_BASE + 10))}
TOUR_DIR=${TOUR_DIR:-/tmp/couponsvc-tour-$(printf '%s' "$ROOT" | sha256sum | cut -c1-12)}
case $TOUR_DIR in /*) ;; *) TOUR_DIR=$PWD/$TOUR_DIR ;; esac
export STACK_DIR=$TOUR_DIR/stack
LOGS=$TOUR_DIR/logs
MARKS=$LOGS/tour.log
PY=python3
[ -x /usr/bin/python3 ] && PY=/usr/bin/python3
RUN=$(date +%s | tail -c 6)
# Every process the tour starts, the stack's replicas included, runs with
# the settings each demo gives it and the defaults otherwise, whatever the
# caller's environment says (a COUPON_CLAIM_MODE=naive left in it would
# change what the demos show); and logs text lines at info, which the
# timelines read.
for v in $(compgen -e); do
    case $v in COUPON_*) unset "$v" ;; esac
done
export COUPON_LOG_FORMAT=text COUPON_LOG_LEVEL=info

# The demos, in the order of the tour. CI_DEMOS: the fast ones, no load.
ALL_DEMOS="race stale oversell kill flush failover redis-down clock partition contention etcd"
CI_DEMOS="stale oversell kill flush redis-down clock partition"

say() { printf '%s: %s\n' "$PROG" "$*"; }
fail() {
    printf '%s: error: %s\n' "$PROG" "$*" >&2
    exit 1
}

# --------------------------------------------------------- the reader ----

BAD=0       # wrong verdicts so far
VERDICTS='' # "name PASS|FAIL" lines, for the summary

# intro NAME TITLE TEXT: the demo's header and its two sentences; the
# demo's clock starts here.
intro() {
    DEMO=$1
    printf '\n=== %s: %s\n' "$1" "$2"
    printf '%s\n' "$3" | fold -s -w 78 | sed 's/^/    /'
    echo
    T0=$(now) PART_N=0 DEMO_START=$SECONDS
    mark "demo $1 begins"
}

# part TEXT: one run of a demo with a before/after; its timeline starts here.
part() {
    PART_N=$((PART_N + 1))
    [ "$PART_N" = 1 ] || echo
    printf '  -- %s\n' "$*"
    T0=$(now)
    mark "$*"
}

now() { date -u +%Y-%m-%dT%H:%M:%S.%3NZ; }

# mark TEXT: a line of the tour's own in the timeline.
mark() {
    printf '%s INFO instance=tour event=tour.mark msg="%s"\n' "$(now)" "$*" >>"$MARKS"
}

# timeline COUPON-REGEX [OPTION...]: the demo's events since it began
# (options of timeline.py: --max N, --head N, --t0 ..., --seq FILE).
timeline() {
    local names=() f re=$1
    shift
    echo "  timeline (t: seconds since it began; letters are instances, R1-R3 the stack's replicas):"
    for f in "$LOGS"/inst-*.log; do [ -e "$f" ] && names+=("$f"); done
    for f in "$STACK_DIR"/logs/app*.log; do [ -e "$f" ] && names+=("$f"); done
    "$PY" "$ROOT/deploy/tour/timeline.py" --t0 "$T0" --coupons "$re" \
        --name app1=R1 --name app2=R2 --name app3=R3 --skip claim.retry \
        --skip coupon.created --skip lock.subscriber_connected "$@" "$MARKS" "${names[@]}"
}

# verdict OK TEXT: OK is 1 when what PostgreSQL shows is what the demo
# claims; the verdict is printed either way, and a wrong one fails the tour.
verdict() {
    echo
    if [ "$1" = 1 ]; then
        printf 'VERDICT: PASS - %s\n' "$2" | fold -s -w 78
        VERDICTS="$VERDICTS$(printf '%-11s PASS %3d s' "$DEMO" $((SECONDS - DEMO_START)))
"
    else
        printf 'VERDICT: FAIL - %s\n' "$2" | fold -s -w 78
        VERDICTS="$VERDICTS$(printf '%-11s FAIL %3d s' "$DEMO" $((SECONDS - DEMO_START)))
"
        BAD=$((BAD + 1))
    fi
}

# ------------------------------------------------------------ processes ----

pidf() { printf '%s/pids/%s.pid\n' "$TOUR_DIR" "$1"; }

# spawn NAME CMD...: like the stack's: its own session, logged, recorded.
spawn() {
    local name=$1
    shift
    setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
    proc_record "$(pidf "$name")" $! || fail "$name exited at once (see $LOGS/$name.log)"
    # Not a job of this shell: a demo's SIGKILL is not reported as one.
    disown $!
}

# stop NAME [SIGNAL]: stop one process the tour started, by its pid file.
stop() {
    local f pid i
    f=$(pidf "$1")
    pid=$(proc_live "$f") || {
        rm -f "$f"
        return 0
    }
    kill -s "${2:-TERM}" "$pid" 2>/dev/null || true
    for i in $(seq 100); do
        proc_group_left "$f" || break
        sleep 0.05
    done
    proc_kill_group "$f" KILL
    rm -f "$f"
}

# stops NAME...: the same for several at once (SIGTERM to all, then wait).
stops() {
    local n pid
    for n in "$@"; do
        if pid=$(proc_live "$(pidf "$n")"); then kill -s TERM "$pid" 2>/dev/null || true; fi
    done
    for n in "$@"; do stop "$n"; done
}

port_free() { [ -z "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]; }

# ---------------------------------------------------------------- stack ----

# Only the race and contention demos need the replicas; the others start
# instances of their own on the stack's PostgreSQL.
STACK_UP=0 STACK_REPLICAS=3
need_stack() {
    [ "$STACK_UP" = 1 ] && return 0
    say "starting the stack (PostgreSQL, Redis, $STACK_REPLICAS replicas, nginx on :$LB_PORT; logs in $STACK_DIR/logs)"
    STACK_UP=1
    REPLICAS=$STACK_REPLICAS COUPONSVC=$COUPONSVC bash "$ROOT/deploy/stack.sh" up >"$LOGS/stack-up.log" 2>&1 || {
        STACK_UP=0
        tail -n 20 "$LOGS/stack-up.log" >&2
        fail "the stack did not come up (see $LOGS/stack-up.log)"
    }
    # shellcheck disable=SC1091
    . "$STACK_DIR/env"
}

pgq() { PGCONNECT_TIMEOUT=5 psql -X -A -t -q -v ON_ERROR_STOP=1 -c "$1"; }

# verify COUPON: the load generator's invariant check on the coupon, read
# from PostgreSQL (exit 0: every invariant holds; 3: one does not). Sets
# VIOLATION to the first violation it names.
verify() {
    local rc=0
    "$LOADGEN" --url "$COUPONSVC_URL" --verify-only --coupon "$1" \
        --verify-dsn "$COUPON_PG_DSN" --json "$LOGS/verify-$1.json" -q \
        >"$LOGS/verify-$1.log" 2>&1 || rc=$?
    VIOLATION=$("$PY" -c 'import json,sys
v=json.load(open(sys.argv[1])).get("verify",{})
print(v.get("first_violation") or "")' "$LOGS/verify-$1.json" 2>/dev/null || true)
    return "$rc"
}

# rows COUPON: the claims PostgreSQL holds, in commit order.
rows() {
    echo "  PostgreSQL, claims of $1 in commit order (seq):"
    pgq "SELECT '    seq ' || seq || '  ' || replace(user_id, '-' || coupon_id, '') || '  fence ' || COALESCE(fence::text, 'none')
                || '  by ' || instance FROM claims WHERE coupon_id = '$1' ORDER BY seq, id"
    pgq "SELECT '    coupons row: claimed ' || claimed || ' of ' || total || ', last_fence ' || last_fence
           FROM coupons WHERE id = '$1'"
}

# ----------------------------------------------------- the tour's Redis ----

CLOCK_FILE=$TOUR_DIR/redis-clock
CLOCK_MS=0

tredis_start() {
    mkdir -p "$TOUR_DIR/redis"
    port_free "$TOUR_REDIS_PORT" || fail "port $TOUR_REDIS_PORT (TOUR_REDIS_PORT) is in use"
    spawn redis env LD_PRELOAD="$CLOCKSHIFT" CLOCKSHIFT_FILE="$CLOCK_FILE" \
        redis-server --bind 127.0.0.1 --port "$TOUR_REDIS_PORT" --save '' \
        --appendonly no --maxmemory-policy noeviction --dir "$TOUR_DIR/redis" \
        --enable-debug-command local
    local i
    for i in $(seq 100); do
        [ "$(tredis PING 2>/dev/null)" = PONG ] && return 0
        sleep 0.05
    done
    fail "the tour's Redis did not start (see $LOGS/redis.log)"
}

tredis() { timeout 5 redis-cli -h 127.0.0.1 -p "$TOUR_REDIS_PORT" "$@"; }

# clock_set MS: the tour's Redis sees the time as real time + MS. Only
# ever moved forward, so that a key set meanwhile never lives longer.
clock_set() {
    CLOCK_MS=$1
    "$PY" -c 'import struct,sys
with open(sys.argv[1], "r+b" if __import__("os").path.exists(sys.argv[1]) else "wb") as f:
    f.write(struct.pack("=q", int(sys.argv[2])))' "$CLOCK_FILE" "$1"
}
clock_jump() { clock_set $((CLOCK_MS + $1)); }

# wait_lock COUPON: until its lock key exists in the tour's Redis (5 s).
wait_lock() {
    local i
    for i in $(seq 250); do
        [ "$(tredis EXISTS "coupon:{$1}:lock")" = 1 ] && return 0
        sleep 0.02
    done
    fail "nobody took coupon:{$1}:lock"
}

# ------------------------------------------------------------ instances ----

# inst LETTER BINARY [SETTING=VALUE...]: start couponsvc instance LETTER
# (tour-LETTER in the logs and claims.instance) on the stack's PostgreSQL
# and, unless a setting names another, the tour's Redis; wait until ready.
inst() {
    local l=$1 bin=$2 port i
    shift 2
    # A listens on TOUR_PORT_BASE + 1, B on + 2, ...
    port=$((TOUR_PORT_BASE + $(printf '%d' "'$l") - 64))
    stop "inst-$l"
    port_free "$port" || fail "port $port (instance $l: TOUR_PORT_BASE + ...) is in use"
    eval "URL_$l=http://127.0.0.1:$port"
    : >"$LOGS/inst-$l.log"
    spawn "inst-$l" env COUPON_HTTP_ADDR="127.0.0.1:$port" \
        COUPON_PG_DSN="$COUPON_PG_DSN" COUPON_REDIS_ADDRS="127.0.0.1:$TOUR_REDIS_PORT" \
        COUPON_REDIS_USERNAME= COUPON_REDIS_PASSWORD= \
        COUPON_ADMIN_TOKEN="$COUPON_ADMIN_TOKEN" COUPON_INSTANCE_ID="tour-$l" \
        "$@" "$bin" serve
    PENDING="$PENDING $l"
}

# ready: wait until every instance started since the last call answers
# /readyz (they start side by side). coupon and claim call it.
PENDING=''
ready() {
    local l i port
    for l in $PENDING; do
        port=$(url "$l")
        for i in $(seq 300); do
            [ "$(curl -s -o /dev/null -m 1 -w '%{http_code}' "$port/readyz")" = 200 ] && continue 2
            proc_live "$(pidf "inst-$l")" >/dev/null || break
            sleep 0.05
        done
        tail -n 20 "$LOGS/inst-$l.log" >&2
        fail "instance $l did not become ready"
    done
    PENDING=''
}

url() { eval "printf '%s' \"\$URL_$1\""; }
inst_pid() { proc_live "$(pidf "inst-$1")"; }

# coupon LETTER ID TOTAL: create a coupon through instance LETTER.
coupon() {
    local code
    ready
    code=$(curl -s -o "$LOGS/coupon-$2.json" -w '%{http_code}' -m 10 \
        -H "Authorization: Bearer $COUPON_ADMIN_TOKEN" -H 'Content-Type: application/json' \
        -d "{\"id\":\"$2\",\"total\":$3}" "$(url "$1")/coupons")
    [ "$code" = 201 ] || fail "creating coupon $2 answered $code"
}

# claim LETTER COUPON USER: one claim through instance LETTER; its answer
# goes to the timeline and into ANSWER_<USER> ("201 claimed", "409 fenced").
claim() {
    local l=$1 c=$2 u=$3 out code err
    ready
    out=$LOGS/answer-$u.json
    code=$(curl -s -o "$out" -w '%{http_code} %{time_total}' -m 30 -H 'Content-Type: application/json' \
        -d "{\"coupon_id\":\"$c\",\"user_id\":\"$u\"}" "$(url "$l")/claim" || true)
    # The client's view of how long the answer took, in ms.
    printf '%s\n' "${code#* }" | awk '{ printf "%.0f\n", $1 * 1000 }' >"$LOGS/answer-$u.ms"
    code=${code%% *}
    err=$("$PY" -c 'import json,sys
try: d=json.load(open(sys.argv[1]))
except Exception: d={}
print(d.get("error") or d.get("status") or "no answer")' "$out")
    printf '%s %s\n' "$code" "$err" >"$LOGS/answer-$u"
    mark "$l answered ${u%-"$c"}: $code $err"
}
answer() { cat "$LOGS/answer-$1" 2>/dev/null || echo "none"; }

# claim_bg LETTER COUPON USER: the same in the background (wait_claims).
BG=''
claim_bg() {
    claim "$@" &
    BG="$BG $!"
}
wait_claims() {
    local p
    for p in $BG; do wait "$p" || true; done
    BG=''
}

# proxy NAME: a faultproxy in front of the tour's Redis; PROXY_PORT_<NAME>.
proxy() {
    local pf=$TOUR_DIR/proxy-$1.port i
    rm -f "$pf"
    spawn "proxy-$1" "$FAULTPROXY" "$TOUR_REDIS_PORT" "$pf"
    for i in $(seq 100); do
        [ -s "$pf" ] && break
        sleep 0.02
    done
    [ -s "$pf" ] || fail "the proxy did not start"
    read -r PROXY_PORT <"$pf"
}
cut_off() { kill -s USR1 "$(proc_live "$(pidf "proxy-$1")")"; }
heal() { kill -s USR2 "$(proc_live "$(pidf "proxy-$1")")"; }

# metric LETTER NAME: one value of the instance's /metrics (0 if absent).
metric() {
    curl -s -m 2 "$(url "$1")/metrics" | awk -v n="$2" '$1 == n { v = $2 } END { print v + 0 }'
}

# ------------------------------------------------------------ the demos ----

demo_race() {
    intro race "the race, naive vs lock" \
        "The same load (stock 10, 1000 users, 200 connections through nginx to 3 replicas) runs first in naive mode, which reads claimed and writes claimed + 1 without a lock, then in lock mode. Naive mode hands out more than 10 (the replicas read the same count and overwrite each other); lock mode hands out exactly 10."
    need_stack
    local rc=0
    # deploy/demo.sh is the demo; here it runs on the tour's stack.
    DEMO_REUSE_STACK=1 LOADGEN=$LOADGEN COUPONSVC=$COUPONSVC bash "$ROOT/deploy/demo.sh" \
        >"$LOGS/race.log" 2>&1 || rc=$?
    # Naive mode's claims carry no fence; what each write read and wrote
    # (claims.seq is the count it wrote) tells the race.
    pgq "SELECT id, seq FROM claims WHERE coupon_id LIKE 'demo-naive-%'" | tr '|' ' ' >"$LOGS/race-seq.txt"
    echo "  naive mode:"
    timeline 'demo-naive-.*' --seq "$LOGS/race-seq.txt" --max 24
    echo "  lock mode:"
    timeline 'demo-lock-.*' --skip soldout.memo --max 16
    echo
    sed -n '/^mode /,$p' "$LOGS/race.log" | sed '/^VERDICT/d; /^$/d; s/^/  /'
    local v
    v=$(sed -n 's/^VERDICT: \(PASS - \|FAIL - \)\{0,1\}//p' "$LOGS/race.log")
    [ "$rc" = 0 ] || sed 's/^/    | /' "$LOGS/race.log" | tail -n 15
    verdict "$([ "$rc" = 0 ] && echo 1 || echo 0)" "${v:-demo.sh gave no verdict (exit $rc)} (checked in PostgreSQL by the load generator)"
}

# The stale holder: A's lease ends in Redis while A cannot hear about it.
# $1: the binary, $2: the coupon. Sets A_ANS, B_ANS.
stale_run() {
    need_stack
    proxy A
    # A's pause is long enough for B's whole claim to come first, even on
    # a loaded machine, and well inside A's TTL and max hold.
    inst A "$1" COUPON_LOCK_TTL_MS=5000 COUPON_FAULT=after_acquire:2500 \
        COUPON_LOCK_MAX_HOLD_MS=12000 COUPON_BATCH_MAX=1 COUPON_REDIS_ADDRS="127.0.0.1:$PROXY_PORT"
    inst B "$COUPONSVC" COUPON_LOCK_TTL_MS=5000
    coupon B "$2" 10
    claim_bg A "$2" "stale-$2"
    wait_lock "$2"
    cut_off A
    mark "A's path to Redis black-holed: its watchdog hears nothing more"
    clock_jump 60000
    mark "Redis's clock jumps 60 s forward: A's lock expires in Redis now; by A's own clock it has most of its 5 s left"
    claim B "$2" "fresh-$2"
    wait_claims
    heal A
    stops inst-A inst-B proxy-A
    A_ANS=$(answer "stale-$2") B_ANS=$(answer "fresh-$2")
}

demo_stale() {
    intro stale "a holder whose lease ended early, with and without the fence" \
        "Instance A takes the lock, then stops hearing Redis while Redis's clock jumps past its TTL: Redis gives the lock to B, while A's own clock says A still holds it, so A writes anyway. With the fence PostgreSQL refuses A's older fence; with the build that lacks it (the negative control) A's write lands after B's, and beside it a plain SIGSTOP is caught by the commit gate even in that build."
    local c1=stale-$RUN c2=stale-nofence-$RUN c3=stale-sigstop-$RUN ok=1 why=''
    part "1. the real couponsvc"
    stale_run "$COUPONSVC" "$c1"
    timeline "$c1"
    rows "$c1"
    verify "$c1" || { ok=0 why="$why; the invariant check failed on $c1: $VIOLATION"; }
    case $A_ANS in "409 fenced") ;; *) ok=0 why="$why; A got $A_ANS, not 409 fenced" ;; esac
    case $B_ANS in "201 claimed") ;; *) ok=0 why="$why; B got $B_ANS" ;; esac
    [ "$(pgq "SELECT count(*) FROM claims WHERE coupon_id = '$c1' AND user_id LIKE 'stale-%'")" = 0 ] ||
        { ok=0 why="$why; A's claim is in PostgreSQL"; }

    part "2. the negative control: build/neg-nofence/couponsvc, no fence in the UPDATE"
    stale_run "$NEG_NOFENCE" "$c2"
    timeline "$c2"
    rows "$c2"
    if verify "$c2"; then
        ok=0 why="$why; without the fence the invariant check passed: the control shows nothing"
    else
        echo "  invariant check: $VIOLATION"
    fi
    [ "$(pgq "SELECT count(*) FROM claims s, claims f WHERE s.coupon_id = '$c2' AND f.coupon_id = '$c2'
              AND s.user_id LIKE 'stale-%' AND f.user_id LIKE 'fresh-%' AND s.seq > f.seq AND s.fence < f.fence")" = 1 ] ||
        { ok=0 why="$why; without the fence A's write did not land after B's with a lower fence"; }

    part "3. a plain SIGSTOP, with the same no-fence build: the commit gate catches it"
    need_stack
    inst A "$NEG_NOFENCE" COUPON_LOCK_TTL_MS=1000 COUPON_FAULT=after_acquire:300 COUPON_BATCH_MAX=1
    inst B "$COUPONSVC" COUPON_LOCK_TTL_MS=1000 COUPON_LOCK_WAIT_MS=5000
    coupon B "$c3" 10
    claim_bg A "$c3" "frozen-$c3"
    wait_lock "$c3"
    kill -s STOP "$(inst_pid A)"
    mark "A frozen (SIGSTOP) holding the lock: its watchdog is frozen too; its boot clock runs on"
    claim B "$c3" "fresh-$c3"
    sleep 0.5
    mark "A thawed (SIGCONT), frozen past its TTL"
    kill -s CONT "$(inst_pid A)"
    wait_claims
    stops inst-A inst-B
    timeline "$c3"
    rows "$c3"
    verify "$c3" || { ok=0 why="$why; the invariant check failed on $c3: $VIOLATION"; }
    case $(answer "frozen-$c3") in "503 lease_lost") ;; *) ok=0 why="$why; the frozen A got $(answer "frozen-$c3"), not 503 lease_lost" ;; esac
    verdict "$ok" "$([ "$ok" = 1 ] && echo "with the fence A's stale write was refused (409) and only B's claim is in PostgreSQL; without it A's fence-$(pgq "SELECT fence FROM claims WHERE coupon_id = '$c2' AND user_id LIKE 'stale-%'") write landed after B's newer fence (the invariant check names it); a SIGSTOPped holder was rolled back by its commit gate even without the fence." || echo "${why#; }")"
}

# The stale read: A reads "1 left" and pauses; its lease ends early (as
# above); B claims the last one; A writes. $1: binary, $2: coupon.
oversell_run() {
    need_stack
    proxy A
    # A pauses inside its transaction (holding the row lock, in the real
    # build) and B's transaction may wait that long for the row: both get
    # statement and transaction bounds above the pause.
    local pg="COUPON_PG_STATEMENT_TIMEOUT_MS=5000 COUPON_PG_TX_DEADLINE_MS=10000 COUPON_LOCK_MAX_HOLD_MS=12000"
    # shellcheck disable=SC2086 # one word per setting
    inst A "$1" COUPON_LOCK_TTL_MS=5000 COUPON_FAULT=after_check:2500 $pg \
        COUPON_BATCH_MAX=1 COUPON_REDIS_ADDRS="127.0.0.1:$PROXY_PORT"
    # shellcheck disable=SC2086
    inst B "$1" COUPON_LOCK_TTL_MS=5000 COUPON_BATCH_MAX=1 $pg
    coupon B "$2" 2
    claim B "$2" "first-$2"
    claim_bg A "$2" "stale-$2"
    wait_lock "$2"
    sleep 0.1
    mark "A has read the stock (1 left) and pauses before its write"
    cut_off A
    clock_jump 60000
    mark "A cut off from Redis, Redis's clock jumps 60 s: A's lock is gone, A does not know"
    claim B "$2" "fresh-$2"
    wait_claims
    heal A
    stops inst-A inst-B proxy-A
}

demo_oversell() {
    intro oversell "the last coupon and a stale read: the oversell prevented" \
        "Two coupons in stock, one claimed; A reads \"1 left\", pauses, and its lease ends early while B claims the last one, then A writes. The real couponsvc reads the count under the stock row's lock in the same statement as the guarded write, so B waits for A and finds none left; a control build whose lock-mode write trusts its earlier read (naive mode's write under the lock: no fence, no claimed < total) hands out 3 of 2."
    local c1=last-$RUN c2=last-trustread-$RUN ok=1 why=''
    part "1. the real couponsvc"
    oversell_run "$COUPONSVC" "$c1"
    timeline "$c1"
    rows "$c1"
    verify "$c1" || { ok=0 why="$why; the invariant check failed on $c1: $VIOLATION"; }
    [ "$(pgq "SELECT count(*) FROM claims WHERE coupon_id = '$c1'")" = 2 ] || { ok=0 why="$why; $c1 does not have exactly 2 claims"; }
    part "2. the negative control: build/neg-trustread/couponsvc, the write trusts its read"
    oversell_run "$NEG_TRUSTREAD" "$c2"
    timeline "$c2"
    rows "$c2"
    if verify "$c2"; then
        ok=0 why="$why; the trusting write did not oversell: the control shows nothing"
    else
        echo "  invariant check: $VIOLATION"
    fi
    [ "$(pgq "SELECT count(*) FROM claims WHERE coupon_id = '$c2'")" = 3 ] || { ok=0 why="$why; the control did not hand out 3 of 2"; }
    verdict "$ok" "$([ "$ok" = 1 ] && echo "the real couponsvc handed out exactly 2 of 2 (A's write came first and B found the stock gone); the build whose write trusts its read handed out 3 of 2 while its counter says 2 (a lost update hides the oversell)." || echo "${why#; }")"
}

demo_kill() {
    intro kill "a holder killed before DEL" \
        "Instance A takes the lock and is killed (SIGKILL) before it writes or releases, so nobody deletes its key. Its watchdog dies with it, the key's TTL runs down instead of being renewed, and B, waiting, gets the lock when the TTL ends: nothing of A's is written."
    need_stack
    local c=kill-$RUN ok=1 why='' p1 p2 ren
    inst A "$COUPONSVC" COUPON_LOCK_TTL_MS=2000 COUPON_FAULT=after_acquire:10000 COUPON_BATCH_MAX=1
    inst B "$COUPONSVC" COUPON_LOCK_TTL_MS=2000 COUPON_LOCK_WAIT_MS=6000
    coupon B "$c" 10
    claim_bg A "$c" "killed-$c"
    wait_lock "$c"
    sleep 0.6
    ren=$(metric A 'couponsvc_watchdog_renewals_total{result="ok"}')
    p1=$(tredis PTTL "coupon:{$c}:lock")
    mark "A holds the lock; its watchdog renewed it $ren times (PTTL $p1 ms of 2000)"
    kill -s KILL "$(inst_pid A)"
    mark "A killed (SIGKILL) before its write and its DEL"
    claim_bg B "$c" "next-$c"
    sleep 0.7
    p2=$(tredis PTTL "coupon:{$c}:lock")
    mark "PTTL $p2 ms: nobody renews it now; B waits"
    wait_claims
    stops inst-A inst-B
    timeline "$c"
    rows "$c"
    verify "$c" || { ok=0 why="$why; the invariant check failed: $VIOLATION"; }
    case $(answer "next-$c") in "201 claimed") ;; *) ok=0 why="$why; B got $(answer "next-$c")" ;; esac
    [ "$(pgq "SELECT count(*) FROM claims WHERE coupon_id = '$c' AND instance = 'tour-A'")" = 0 ] || { ok=0 why="$why; A's claim is in PostgreSQL"; }
    [ "${p2:-0}" -lt "${p1:-0}" ] || { ok=0 why="$why; the TTL did not run down after the kill"; }
    verdict "$ok" "$([ "$ok" = 1 ] && echo "A's lock outlived A by its TTL (PTTL $p1 -> $p2 ms, not renewed), then B claimed; nothing of A's is in PostgreSQL." || echo "${why#; }")"
}

demo_flush() {
    intro flush "Redis loses its data (FLUSHALL, then a restart without persistence)" \
        "Redis's fence counter restarts from nothing, below the coupon's last accepted fence in PostgreSQL, so the next lease draws a fence that was used already. PostgreSQL refuses it (a lease's first write needs a fence above last_fence); the holder, whose token is still in Redis, raises the counter to last_fence and retries, and claims go on with fences that keep rising."
    need_stack
    local c=flush-$RUN ok=1 why='' rec
    inst A "$COUPONSVC" COUPON_LOCK_TTL_MS=2000
    inst B "$COUPONSVC" COUPON_LOCK_TTL_MS=2000
    coupon A "$c" 10
    claim A "$c" "u1-$c"
    claim B "$c" "u2-$c"
    claim A "$c" "u3-$c"
    tredis FLUSHALL >/dev/null
    mark "FLUSHALL: the lock keys and coupon:{$c}:fence are gone"
    claim B "$c" "u4-$c"
    stop redis
    tredis_start
    mark "Redis restarted empty (no persistence)"
    claim A "$c" "u5-$c"
    claim B "$c" "u6-$c"
    rec=$(($(metric A couponsvc_fence_counter_recoveries_total) + $(metric B couponsvc_fence_counter_recoveries_total)))
    stops inst-A inst-B
    timeline "$c"
    rows "$c"
    verify "$c" || { ok=0 why="$why; the invariant check failed: $VIOLATION"; }
    [ "$(pgq "SELECT count(*) FROM claims WHERE coupon_id = '$c'")" = 6 ] || { ok=0 why="$why; not all 6 claims were made"; }
    [ "$rec" -ge 2 ] || { ok=0 why="$why; $rec fence counter recoveries, not 2"; }
    verdict "$ok" "$([ "$ok" = 1 ] && echo "6 claims, fences strictly rising in commit order across both losses; the counter was recovered from PostgreSQL's last_fence $rec times." || echo "${why#; }")"
}

demo_redis_down() {
    local then="When Redis is back, claims go on."
    "$COUPONSVC" --help 2>&1 | grep -q COUPON_LOCK_UNAVAILABLE &&
        then="When Redis is back claims go on; with COUPON_LOCK_UNAVAILABLE=atomic the same outage is served by PostgreSQL alone, and exactly."
    intro redis-down "Redis down entirely" \
        "With Redis stopped, every claim answers 503 unavailable with Retry-After within the Redis timeout, nothing is written, and /readyz stays 200 (a shared outage must not take every replica out of the balancer). $then"
    need_stack
    local c=down-$RUN ok=1 why='' i ms rz
    part "1. the default (COUPON_LOCK_UNAVAILABLE=fail): 503"
    inst A "$COUPONSVC" COUPON_LOCK_TTL_MS=2000
    coupon A "$c" 10
    claim A "$c" "before-$c"
    mark "Redis stopped"
    stop redis
    for i in 1 2 3; do claim A "$c" "down$i-$c"; done
    ms=$(cat "$LOGS"/answer-down[123]-"$c".ms | awk '{ s += $1 } END { printf "%.0f", s / NR }')
    rz=$(curl -s -o /dev/null -w '%{http_code}' "$(url A)/readyz")
    mark "3 claims took $ms ms each on average; /readyz answers $rz"
    tredis_start
    mark "Redis started again (empty)"
    sleep 0.3
    claim A "$c" "after-$c"
    stops inst-A
    timeline "$c"
    rows "$c"
    verify "$c" || { ok=0 why="$why; the invariant check failed: $VIOLATION"; }
    for i in 1 2 3; do
        case $(answer "down$i-$c") in "503 unavailable") ;; *) ok=0 why="$why; claim $i while down got $(answer "down$i-$c")" ;; esac
    done
    [ "$rz" = 200 ] || { ok=0 why="$why; /readyz answered $rz while Redis was down"; }
    [ "$(pgq "SELECT count(*) FROM claims WHERE coupon_id = '$c' AND user_id LIKE 'down%'")" = 0 ] || { ok=0 why="$why; a claim made while Redis was down is in PostgreSQL"; }
    case $(answer "after-$c") in "201 claimed") ;; *) ok=0 why="$why; the claim after Redis came back got $(answer "after-$c")" ;; esac
    local degraded=''
    if "$COUPONSVC" --help 2>&1 | grep -q COUPON_LOCK_UNAVAILABLE; then
        degraded_run || { ok=0 why="$why$DEGRADED_WHY"; }
        degraded="; with COUPON_LOCK_UNAVAILABLE=atomic the same outage served claims from PostgreSQL alone, exactly the stock"
    else
        echo
        echo "  (this build has no COUPON_LOCK_UNAVAILABLE: the degraded mode is not shown)"
    fi
    verdict "$ok" "$([ "$ok" = 1 ] && echo "while Redis was down: 503 unavailable in about $ms ms, nothing written, /readyz 200; afterwards claims succeeded again$degraded." || echo "${why#; }")"
}

# The degraded mode: Redis down, claims served by one conditional UPDATE in
# PostgreSQL (atomic mode's), which needs no lock to stay exact.
degraded_run() {
    local c=degraded-$RUN i n
    DEGRADED_WHY=''
    part "2. the degraded mode: COUPON_LOCK_UNAVAILABLE=atomic"
    inst C "$COUPONSVC" COUPON_LOCK_UNAVAILABLE=atomic COUPON_LOCK_TTL_MS=2000
    inst D "$COUPONSVC" COUPON_LOCK_UNAVAILABLE=atomic COUPON_LOCK_TTL_MS=2000
    coupon C "$c" 5
    claim C "$c" "u0-$c"
    mark "Redis stopped; 8 more users claim the 4 left, through C and D at once"
    stop redis
    for i in 1 2 3 4; do
        claim_bg C "$c" "c$i-$c"
        claim_bg D "$c" "d$i-$c"
    done
    wait_claims
    tredis_start
    mark "Redis started again"
    stops inst-C inst-D
    timeline "$c"
    rows "$c"
    verify "$c" || DEGRADED_WHY="$DEGRADED_WHY; the invariant check failed on $c: $VIOLATION"
    n=$(pgq "SELECT count(*) FROM claims WHERE coupon_id = '$c'")
    [ "$n" = 5 ] || DEGRADED_WHY="$DEGRADED_WHY; the degraded mode made $n claims of 5"
    n=$(cat "$LOGS"/answer-[cd][1-4]-"$c" | grep -c '^201 ' || true)
    [ "$n" = 4 ] || DEGRADED_WHY="$DEGRADED_WHY; $n of the 8 claims during the outage got 201, not 4"
    [ -z "$DEGRADED_WHY" ]
}

demo_clock() {
    intro clock "clock drift: Redis's clock jumps forward" \
        "A holds the lock and pauses when Redis's wall clock jumps 60 s forward, so Redis expires the lock at once while A's own clock (a relative TTL on the boot clock: no wall-clock time is ever compared) says most of it is left. B takes the lock and writes; A is then refused by the fence, or by its commit gate if its watchdog noticed first, and nothing of A's is written."
    need_stack
    local c=clock-$RUN ok=1 why=''
    inst A "$COUPONSVC" COUPON_LOCK_TTL_MS=2000 COUPON_FAULT=after_acquire:1500 COUPON_BATCH_MAX=1
    inst B "$COUPONSVC" COUPON_LOCK_TTL_MS=2000
    coupon B "$c" 10
    claim_bg A "$c" "early-$c"
    wait_lock "$c"
    clock_jump 60000
    mark "Redis's clock jumps 60 s forward: the lock expires in Redis now"
    claim B "$c" "fresh-$c"
    wait_claims
    stops inst-A inst-B
    timeline "$c"
    rows "$c"
    verify "$c" || { ok=0 why="$why; the invariant check failed: $VIOLATION"; }
    case $(answer "early-$c") in "409 fenced" | "503 lease_lost") ;; *) ok=0 why="$why; A got $(answer "early-$c")" ;; esac
    case $(answer "fresh-$c") in "201 claimed") ;; *) ok=0 why="$why; B got $(answer "fresh-$c")" ;; esac
    verdict "$ok" "$([ "$ok" = 1 ] && echo "the lease ended early in Redis; B claimed, A was refused ($(answer "early-$c")) and nothing of A's is in PostgreSQL." || echo "${why#; }")"
}

demo_partition() {
    intro partition "a network partition: one instance cut off from Redis" \
        "A holds the lock, has written, and is about to commit when its path to Redis goes silent. Its watchdog cannot renew, the lease runs out by A's own clock and its commit gate rolls the write back; meanwhile B, which still sees Redis, takes over after the TTL, and A's new claims fail fast until the path heals."
    need_stack
    local c=part-$RUN ok=1 why=''
    proxy A
    inst A "$COUPONSVC" COUPON_LOCK_TTL_MS=1000 COUPON_FAULT=before_commit:1500 \
        COUPON_BATCH_MAX=1 COUPON_REDIS_ADDRS="127.0.0.1:$PROXY_PORT"
    inst B "$COUPONSVC" COUPON_LOCK_TTL_MS=1000 COUPON_LOCK_WAIT_MS=3000
    coupon B "$c" 10
    claim_bg A "$c" "cut-$c"
    wait_lock "$c"
    sleep 0.2
    cut_off A
    mark "A's path to Redis black-holed (bytes stop, nothing is closed)"
    claim B "$c" "other-$c"
    wait_claims
    claim A "$c" "while-cut-$c"
    heal A
    mark "the path heals"
    sleep 0.3
    claim A "$c" "healed-$c"
    stops inst-A inst-B proxy-A
    timeline "$c"
    rows "$c"
    verify "$c" || { ok=0 why="$why; the invariant check failed: $VIOLATION"; }
    case $(answer "cut-$c") in "503 lease_lost") ;; *) ok=0 why="$why; A's claim got $(answer "cut-$c"), not 503 lease_lost" ;; esac
    case $(answer "while-cut-$c") in "503 unavailable") ;; *) ok=0 why="$why; A's claim while cut off got $(answer "while-cut-$c")" ;; esac
    case $(answer "other-$c") in "201 claimed") ;; *) ok=0 why="$why; B got $(answer "other-$c")" ;; esac
    case $(answer "healed-$c") in "201 claimed") ;; *) ok=0 why="$why; A after healing got $(answer "healed-$c")" ;; esac
    verdict "$ok" "$([ "$ok" = 1 ] && echo "A's lease was lost and its commit rolled back (nothing of it in PostgreSQL); B claimed meanwhile; A failed fast while cut off and claimed again once healed." || echo "${why#; }")"
}

# load NAME COUPON BUCKETS: 3 s of claims through nginx, 64 connections,
# every claim a new user; prints one table row. Redis's command counts are
# reset before and read after.
load_row() {
    local name=$1 c=$2 b=$3 rc=0 cmds
    REDISCLI_AUTH=$REDIS_ADMIN_PASSWORD timeout 5 redis-cli --no-auth-warning -p "$REDIS_PORT" CONFIG RESETSTAT >/dev/null
    now >"$LOGS/t-$name"
    date -u -d '+1 second' +%Y-%m-%dT%H:%M:%S.%3NZ >"$LOGS/t1-$name"
    "$LOADGEN" --url "$COUPONSVC_URL" -c 64 -d 3 --coupon "$c" --create-stock 1000000 \
        ${b:+--create-buckets "$b"} --admin-token "$COUPON_ADMIN_TOKEN" \
        --verify-dsn "$COUPON_PG_DSN" --json "$LOGS/load-$name.json" -q \
        >"$LOGS/load-$name.log" 2>&1 || rc=$?
    cmds=$(REDISCLI_AUTH=$REDIS_ADMIN_PASSWORD timeout 5 redis-cli --no-auth-warning -p "$REDIS_PORT" INFO commandstats |
        awk -F'[:=,]' '/^cmdstat_/ { s += $3 } END { print s + 0 }')
    "$PY" - "$LOGS/load-$name.json" "$name" "$cmds" "$rc" <<'EOF' >>"$LOGS/contention.txt"
import json, sys
d = json.load(open(sys.argv[1])); name, cmds, rc = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
n = d.get("status", {}).get("201", 0); v = d.get("verify", {})
dur = d.get("duration_s") or d.get("duration") or 3
print("%-22s %9.0f %12.2f %8.1f  %s" % (name, n / float(dur), cmds / max(n, 1),
      float(d.get("latency_ms", {}).get("p99", 0)), "ok" if rc == 0 and v.get("ok") else "VIOLATED: %s" % v.get("first_violation")))
EOF
    return "$rc"
}

demo_contention() {
    # The batch bound the replicas run with by default, from --help.
    local bmax
    bmax=$("$COUPONSVC" --help 2>&1 | sed -n '/^  COUPON_BATCH_MAX /{n;s/.*\[\([0-9]*\)\]$/\1/p;}')
    bmax=${bmax:-32}
    intro contention "contention: how waiting, combining and buckets pay" \
        "One hot coupon, 64 connections through nginx to 3 replicas, 3 s per run, every claim a new user: first each claim on its own lease, waiting by polling and then on pub/sub (Redis commands per claim), then one lease carrying a batch of up to $bmax claims (claims/s), then the coupon split into 8 buckets. Every run ends with the invariant check in PostgreSQL; the figures are printed, never asserted."
    need_stack
    local ok=1 why=''
    : >"$LOGS/contention.txt"
    say "rolling restart: COUPON_BATCH_MAX=1 COUPON_LOCK_WAIT_STRATEGY=poll"
    COUPON_BATCH_MAX=1 COUPON_LOCK_WAIT_STRATEGY=poll bash "$ROOT/deploy/stack.sh" restart-app >"$LOGS/restart.log" 2>&1 || fail "restart-app failed"
    load_row "batch1-poll" "hot-poll-$RUN" "" || { ok=0 why="$why; batch1-poll"; }
    say "rolling restart: COUPON_BATCH_MAX=1 (pub/sub waiting)"
    COUPON_BATCH_MAX=1 bash "$ROOT/deploy/stack.sh" restart-app >"$LOGS/restart.log" 2>&1 || fail "restart-app failed"
    load_row "batch1-pubsub" "hot-b1-$RUN" "" || { ok=0 why="$why; batch1-pubsub"; }
    say "rolling restart: the defaults (pub/sub, COUPON_BATCH_MAX=$bmax)"
    bash "$ROOT/deploy/stack.sh" restart-app >"$LOGS/restart.log" 2>&1 || fail "restart-app failed"
    load_row "batch$bmax-pubsub" "hot-batch-$RUN" "" || { ok=0 why="$why; batch$bmax-pubsub"; }
    load_row "batch$bmax-8-buckets" "hot-bk-$RUN" 8 || { ok=0 why="$why; batch$bmax-8-buckets"; }
    echo "  one claim per lease (pub/sub waiting), a slice 1 s into the run:"
    T0=$(cat "$LOGS/t-batch1-pubsub") timeline "hot-b1-$RUN" --head 6 --from "$(cat "$LOGS/t1-batch1-pubsub")"
    echo "  a batch per lease, a slice 1 s into the run:"
    T0=$(cat "$LOGS/t-batch$bmax-pubsub") timeline "hot-batch-$RUN" --head 6 --from "$(cat "$LOGS/t1-batch$bmax-pubsub")"
    echo
    printf '  %-22s %9s %12s %8s  %s\n' run "claims/s" "redis/claim" "p99 ms" "PostgreSQL check"
    sed 's/^/  /' "$LOGS/contention.txt"
    verdict "$ok" "$([ "$ok" = 1 ] && echo "every run handed out claims with every invariant intact in PostgreSQL (the figures above are from this machine, and only relative)." || echo "invariant check failed in:${why#;}")"
}

# ------------------------------------------------ Redis topologies, etcd ----
# Their ports follow the tour's Redis: TOUR_REDIS_PORT + 1 the master and
# + 2 its replica, + 3..5 the sentinels, + 6..8 the Redlock nodes, + 9..11
# the etcd members' client ports and + 12..14 their peer ports.

# node NAME PORT [ARG...]: a Redis of the tour's, empty, no password.
node() {
    local name=$1 port=$2 i
    shift 2
    mkdir -p "$TOUR_DIR/$name"
    port_free "$port" || fail "port $port ($name) is in use"
    spawn "$name" redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
        --maxmemory-policy noeviction --dir "$TOUR_DIR/$name" "$@"
    for i in $(seq 100); do
        [ "$(timeout 2 redis-cli -p "$port" PING 2>/dev/null)" = PONG ] && return 0
        sleep 0.05
    done
    fail "$name did not start (see $LOGS/$name.log)"
}
rc() { timeout 5 redis-cli -h 127.0.0.1 -p "$@"; }

# proxy_to NAME TARGET: a faultproxy in front of 127.0.0.1:TARGET.
proxy_to() {
    local pf=$TOUR_DIR/proxy-$1.port i
    rm -f "$pf"
    spawn "proxy-$1" "$FAULTPROXY" "$2" "$pf"
    for i in $(seq 100); do
        [ -s "$pf" ] && break
        sleep 0.02
    done
    read -r PROXY_PORT <"$pf"
}

# sentinels MASTER-PORT: three sentinels watching it as "couponsvc"
# (quorum 2, down after 600 ms). failover-timeout is long so that no
# sentinel "fixes" the replica's replicaof (the proxy) during the demo.
sentinels() {
    local i port conf
    mkdir -p "$TOUR_DIR/sentinel"
    for i in 1 2 3; do
        port=$((TOUR_REDIS_PORT + 2 + i))
        conf=$TOUR_DIR/sentinel/s$i.conf
        printf '%s\n' "port $port" "bind 127.0.0.1" "dir $TOUR_DIR/sentinel" \
            "sentinel monitor couponsvc 127.0.0.1 $1 2" \
            "sentinel down-after-milliseconds couponsvc 600" \
            "sentinel failover-timeout couponsvc 30000" \
            "sentinel parallel-syncs couponsvc 1" >"$conf"
        port_free "$port" || fail "port $port (sentinel $i) is in use"
        spawn "sentinel$i" redis-server "$conf" --sentinel
    done
    # Ready when every sentinel knows the replica and the two others.
    for i in $(seq 150); do
        local n=0
        for port in $((TOUR_REDIS_PORT + 3)) $((TOUR_REDIS_PORT + 4)) $((TOUR_REDIS_PORT + 5)); do
            rc "$port" SENTINEL master couponsvc 2>/dev/null | paste - - |
                awk '$1 == "num-slaves" && $2 == 1 { a = 1 } $1 == "num-other-sentinels" && $2 == 2 { b = 1 } END { exit !(a && b) }' &&
                n=$((n + 1))
        done
        [ "$n" = 3 ] && return 0
        sleep 0.2
    done
    fail "the sentinels did not learn the topology in 30 s"
}
sentinel_master() { rc "$((TOUR_REDIS_PORT + 4))" SENTINEL get-master-addr-by-name couponsvc 2>/dev/null | tail -n 1; }

# grants COUPON FENCE: how many grants of that fence the instances logged.
grants() { cat "$LOGS"/inst-*.log | grep -c "event=lock.acquired resource=$1 fence=$2 " || true; }

demo_failover() {
    intro failover "the Redis master fails: Sentinel, then Redlock" \
        "Replication is asynchronous: A's lock and its fence's INCR reach the master and, held back by a proxy on the replication link, not the replica; the master dies, Sentinel promotes the replica, and B is granted the same lock with the same fence while A still holds it. PostgreSQL accepts one write for that fence and refuses the other; under Redlock (three independent masters, a majority needed) one master dying makes no second holder."
    need_stack
    local c=sf-$RUN c2=rl-$RUN ok=1 why='' m=$((TOUR_REDIS_PORT + 1)) r=$((TOUR_REDIS_PORT + 2)) i t_kill took
    local sents="127.0.0.1:$((TOUR_REDIS_PORT + 3)),127.0.0.1:$((TOUR_REDIS_PORT + 4)),127.0.0.1:$((TOUR_REDIS_PORT + 5))"
    part "1. Sentinel: a master, its replica behind a proxy, three sentinels"
    node redis-master "$m"
    proxy_to repl "$m"
    node redis-replica "$r" --replicaof 127.0.0.1 "$PROXY_PORT"
    sentinels "$m"
    proxy_to asks "$((TOUR_REDIS_PORT + 3))"
    inst A "$COUPONSVC" COUPON_REDIS_SENTINELS="127.0.0.1:$PROXY_PORT" COUPON_REDIS_MASTER_NAME=couponsvc \
        COUPON_LOCK_TTL_MS=10000 COUPON_FAULT=after_acquire:4000 COUPON_LOCK_WAIT_MS=10000 \
        COUPON_LOCK_MAX_HOLD_MS=60000 COUPON_PG_TX_DEADLINE_MS=60000 COUPON_BATCH_MAX=1
    inst B "$COUPONSVC" COUPON_REDIS_SENTINELS="$sents" COUPON_REDIS_MASTER_NAME=couponsvc \
        COUPON_LOCK_TTL_MS=1000 COUPON_LOCK_WAIT_MS=5000
    coupon B "$c" 10
    for i in 1 2 3; do claim B "$c" "warm$i-$c"; done
    for i in $(seq 100); do
        [ "$(rc "$r" GET "coupon:{$c}:fence")" = 3 ] && break
        sleep 0.05
    done
    kill -s USR1 "$(proc_live "$(pidf proxy-repl)")"
    mark "the replication link black-holed: the replica keeps fence counter 3"
    claim_bg A "$c" "a-$c"
    for i in $(seq 250); do
        [ "$(rc "$m" EXISTS "coupon:{$c}:lock")" = 1 ] && break
        sleep 0.02
    done
    kill -s USR1 "$(proc_live "$(pidf proxy-asks)")"
    mark "A holds the lock on the master (fence counter there: $(rc "$m" GET "coupon:{$c}:fence"), on the replica: $(rc "$r" GET "coupon:{$c}:fence"), lock on the replica: $(rc "$r" EXISTS "coupon:{$c}:lock")); A's path to the sentinels goes dark"
    mark "the master killed (SIGKILL)"
    t_kill=$(date +%s%N)
    stop redis-master KILL
    for i in $(seq 200); do
        [ "$(sentinel_master)" = "$r" ] && break
        sleep 0.05
    done
    took=$((($(date +%s%N) - t_kill) / 1000000))
    mark "the sentinels name the replica the master, $took ms later"
    claim B "$c" "b-$c"
    wait_claims
    kill -s USR2 "$(proc_live "$(pidf proxy-asks)")"
    mark "A's path to the sentinels heals"
    claim A "$c" "a-again-$c"
    stops inst-A inst-B sentinel1 sentinel2 sentinel3 redis-replica proxy-repl proxy-asks
    timeline "$c"
    rows "$c"
    verify "$c" || { ok=0 why="$why; the invariant check failed on $c: $VIOLATION"; }
    local g4 n4
    g4=$(grants "$c" 4)
    n4=$(pgq "SELECT count(*) FROM claims WHERE coupon_id = '$c' AND fence = 4")
    echo "  grants of fence 4 in the logs: $g4; claims with fence 4 in PostgreSQL: $n4"
    [ "$g4" = 2 ] || { ok=0 why="$why; fence 4 was granted $g4 times, not twice: no second holder was shown"; }
    [ "$n4" = 1 ] || { ok=0 why="$why; PostgreSQL holds $n4 claims with fence 4"; }
    case "$(answer "a-$c") $(answer "b-$c")" in
    "409 fenced 201 claimed" | "201 claimed 201 claimed") ;;
    *) ok=0 why="$why; A got $(answer "a-$c"), B $(answer "b-$c")" ;;
    esac
    case $(answer "a-again-$c") in "201 claimed") ;; *) ok=0 why="$why; A, healed, got $(answer "a-again-$c")" ;; esac

    part "2. Redlock: three independent masters, one of them killed while A holds the lock"
    local addrs="127.0.0.1:$((TOUR_REDIS_PORT + 6)),127.0.0.1:$((TOUR_REDIS_PORT + 7)),127.0.0.1:$((TOUR_REDIS_PORT + 8))"
    for i in 1 2 3; do node "redlock$i" $((TOUR_REDIS_PORT + 5 + i)); done
    inst A "$COUPONSVC" COUPON_REDIS_ADDRS="$addrs" COUPON_LOCK_TTL_MS=5000 \
        COUPON_FAULT=after_acquire:2000 COUPON_BATCH_MAX=1
    inst B "$COUPONSVC" COUPON_REDIS_ADDRS="$addrs" COUPON_LOCK_TTL_MS=5000 COUPON_LOCK_WAIT_MS=8000
    coupon B "$c2" 10
    claim B "$c2" "warm-$c2"
    claim_bg A "$c2" "a-$c2"
    for i in $(seq 250); do
        [ "$(rc $((TOUR_REDIS_PORT + 6)) EXISTS "coupon:{$c2}:lock")" = 1 ] && break
        sleep 0.02
    done
    mark "one of the three masters killed (SIGKILL) while A holds the lock; B asks for it"
    stop redlock1 KILL
    claim B "$c2" "b-$c2"
    wait_claims
    stops inst-A inst-B redlock2 redlock3
    timeline "$c2"
    rows "$c2"
    verify "$c2" || { ok=0 why="$why; the invariant check failed on $c2: $VIOLATION"; }
    local dup
    dup=$(cat "$LOGS"/inst-*.log | grep "event=lock.acquired resource=$c2 " | sed 's/.* fence=\([0-9]*\) .*/\1/' | sort | uniq -d | wc -l)
    [ "$dup" = 0 ] || { ok=0 why="$why; under Redlock a fence was granted twice"; }
    case "$(answer "a-$c2") $(answer "b-$c2")" in
    "201 claimed 201 claimed") ;;
    *) ok=0 why="$why; under Redlock A got $(answer "a-$c2"), B $(answer "b-$c2")" ;;
    esac
    [ "$(pgq "SELECT string_agg(user_id, ',' ORDER BY seq) FROM claims WHERE coupon_id = '$c2'")" = "warm-$c2,a-$c2,b-$c2" ] ||
        { ok=0 why="$why; under Redlock B did not wait for A"; }
    verdict "$ok" "$([ "$ok" = 1 ] && echo "after the Sentinel failover fence 4 was granted twice, to two holders at once, and PostgreSQL holds one claim with it ($(answer "a-$c"), $(answer "b-$c") for A, B), and A, healed, followed the failover and claimed again; under Redlock the dead master made no second holder: B waited for A's release, every fence granted once." || echo "${why#; }")"
}

# etcd: three members on the tour's ports, data in TOUR_DIR/etcd.
etcd_cluster() {
    local i cluster='' ep='' n
    have_etcd=1
    command -v etcd >/dev/null 2>&1 || { have_etcd=0; return 0; }
    for i in 0 1 2; do
        cluster="$cluster${cluster:+,}m$i=http://127.0.0.1:$((TOUR_REDIS_PORT + 12 + i))"
        ep="$ep${ep:+,}http://127.0.0.1:$((TOUR_REDIS_PORT + 9 + i))"
    done
    ETCD_ENDPOINTS=$ep
    for i in $(seq 9 14); do
        port_free $((TOUR_REDIS_PORT + i)) || fail "port $((TOUR_REDIS_PORT + i)) (etcd, TOUR_REDIS_PORT + $i) is in use"
    done
    rm -rf "$TOUR_DIR/etcd"
    for i in 0 1 2; do
        mkdir -p "$TOUR_DIR/etcd/m$i"
        spawn "etcd$i" etcd --name "m$i" --data-dir "$TOUR_DIR/etcd/m$i" \
            --listen-client-urls "http://127.0.0.1:$((TOUR_REDIS_PORT + 9 + i))" \
            --advertise-client-urls "http://127.0.0.1:$((TOUR_REDIS_PORT + 9 + i))" \
            --listen-peer-urls "http://127.0.0.1:$((TOUR_REDIS_PORT + 12 + i))" \
            --initial-advertise-peer-urls "http://127.0.0.1:$((TOUR_REDIS_PORT + 12 + i))" \
            --initial-cluster "$cluster" --initial-cluster-state new \
            --initial-cluster-token "tour-$RUN" --heartbeat-interval 50 --election-timeout 500 \
            --logger zap --log-level warn
    done
    for n in $(seq 150); do
        ETCDCTL_API=3 timeout 2 etcdctl --endpoints "$ep" endpoint health >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    fail "the etcd cluster did not become healthy (see $LOGS/etcd0.log)"
}

demo_etcd() {
    intro etcd "the consensus backend: the same claim path on etcd" \
        "The lock moves to a 3-member etcd cluster (COUPON_LOCK_BACKEND=etcd): the fence is etcd's create revision, which a quorum keeps, so no failover can hand it out twice. Two instances claim in turn, then A is frozen past its lease while holding the lock, B takes over, and A thawed is refused."
    need_stack
    local c=etcd-$RUN ok=1 why='' i
    etcd_cluster
    if [ "$have_etcd" = 0 ]; then
        echo "  etcd is not installed (apt-get install etcd-server etcd-client): skipped"
        verdict 0 "no etcd on this machine"
        return 0
    fi
    inst A "$COUPONSVC" COUPON_LOCK_BACKEND=etcd COUPON_ETCD_ENDPOINTS="$ETCD_ENDPOINTS" \
        COUPON_ETCD_ELECTION_TIMEOUT_MS=500 COUPON_LOCK_TTL_MS=1000 COUPON_FAULT=after_acquire:300 COUPON_BATCH_MAX=1
    inst B "$COUPONSVC" COUPON_LOCK_BACKEND=etcd COUPON_ETCD_ENDPOINTS="$ETCD_ENDPOINTS" \
        COUPON_ETCD_ELECTION_TIMEOUT_MS=500 COUPON_LOCK_TTL_MS=1000 COUPON_LOCK_WAIT_MS=8000
    coupon B "$c" 10
    for i in 1 2; do
        claim A "$c" "a$i-$c"
        claim B "$c" "b$i-$c"
    done
    claim_bg A "$c" "frozen-$c"
    sleep 0.1
    kill -s STOP "$(inst_pid A)"
    mark "A frozen (SIGSTOP) holding the lock: nobody keeps its etcd lease alive"
    claim B "$c" "fresh-$c"
    kill -s CONT "$(inst_pid A)"
    mark "A thawed (SIGCONT)"
    wait_claims
    stops inst-A inst-B etcd0 etcd1 etcd2
    timeline "$c"
    rows "$c"
    verify "$c" || { ok=0 why="$why; the invariant check failed: $VIOLATION"; }
    case $(answer "frozen-$c") in "409 fenced" | "503 lease_lost") ;; *) ok=0 why="$why; the frozen A got $(answer "frozen-$c")" ;; esac
    case $(answer "fresh-$c") in "201 claimed") ;; *) ok=0 why="$why; B got $(answer "fresh-$c")" ;; esac
    [ "$(pgq "SELECT count(*) FROM claims WHERE coupon_id = '$c'")" = 5 ] || { ok=0 why="$why; not 5 claims"; }
    verdict "$ok" "$([ "$ok" = 1 ] && echo "claims on etcd with fences rising in commit order; the holder frozen past its lease was refused ($(answer "frozen-$c")) and B's claim stands." || echo "${why#; }")"
}

# -------------------------------------------------------------- driver ----

cleanup() {
    local rc=$? f n
    trap - EXIT
    trap '' INT TERM
    for f in $BG; do kill "$f" 2>/dev/null || true; done
    for f in "$TOUR_DIR"/pids/*.pid; do
        [ -e "$f" ] || continue
        n=${f##*/}
        stop "${n%.pid}"
    done
    if [ "$STACK_UP" = 1 ]; then
        say "taking the stack down"
        bash "$ROOT/deploy/stack.sh" down >"$LOGS/stack-down.log" 2>&1 || tail -n 5 "$LOGS/stack-down.log" >&2
    fi
    exit "$rc"
}

main() {
    local demos='' d t_start
    case ${1:-} in
    --list)
        echo "$ALL_DEMOS"
        return 0
        ;;
    --ci) demos=$CI_DEMOS ;;
    '') demos=$ALL_DEMOS ;;
    *) demos="$*" ;;
    esac
    for d in $demos; do
        case " $ALL_DEMOS " in *" $d "*) ;; *) fail "no demo '$d' (there are: $ALL_DEMOS)" ;; esac
    done
    for f in "$COUPONSVC" "$LOADGEN" "$FAULTPROXY" "$CLOCKSHIFT" "$NEG_NOFENCE" "$NEG_TRUSTREAD"; do
        [ -e "$f" ] || fail "$f not found: run through make tour (or make demo-NAME)"
    done
    mkdir -p "$TOUR_DIR/pids" "$LOGS"
    rm -f "$LOGS"/*.log "$LOGS"/answer-* "$LOGS"/*.json
    : >"$MARKS"
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    t_start=$SECONDS
    say "state and logs: $TOUR_DIR"
    case " $demos " in *" race "* | *" contention "*) ;; *) STACK_REPLICAS=0 ;; esac
    need_stack
    clock_set 0
    tredis_start
    for d in $demos; do
        "demo_${d//-/_}"
    done
    echo
    printf '%s' "$VERDICTS" | sed 's/^/  /'
    say "$(printf '%s' "$VERDICTS" | grep -c PASS) of $(printf '%s' "$VERDICTS" | grep -c .) verdicts right, in $((SECONDS - t_start)) s"
    [ "$BAD" = 0 ]
}

main "$@"
