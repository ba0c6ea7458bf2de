#!/usr/bin/env bash
# bench.sh: the performance bench (make bench). One command, one local stack
# (deploy/stack.sh: 3 replicas behind nginx, PostgreSQL, Redis), every ratio
# measured in the same session, the invariant checker after every claim run.
#
#   loadtest/bench.sh [--json FILE]
#
# What it runs, in this order (S = BENCH_SECONDS per run, 256 connections):
#
#   hot-atomic-R, spread-atomic-R,   R = 1..3, interleaved with
#   hot-lock-R,   spread-lock-R      each other (the mode switched by a
#                                    rolling restart of the replicas)
#       hot: one coupon, closed loop, every request a new user;
#       spread: 1000 coupons round robin.
#   hot-buckets      lock mode, one coupon split into BENCH_BUCKETS buckets
#   open-2000        open loop at 2,000 claims/s offered (loadgen --rate)
#   open-80pct       open loop at 80 % of the lock mode's capacity (the
#                    median of hot-lock-*, measured above)
#   overload-2x      open loop at about twice that capacity: goodput
#   soldout          a sold-out coupon, one in ten requests by a user who
#                    holds a claim (200), the rest 410: answers/s
#   healthz          GET /healthz: the HTTP ceiling of the same path
#   hot-poll         lock mode, COUPON_LOCK_WAIT_STRATEGY=poll
#   hot-batch1       lock mode, COUPON_BATCH_MAX=1 (no combining)
#   soldout-nomemo   as soldout, COUPON_SOLDOUT_MEMO=off
#   hot-etcd, spread-etcd, latency-etcd
#                    lock mode on the etcd backend (a 3-member cluster
#                    the stack starts beside Redis; BENCH_ETCD=0 skips
#                    them): hot and spread as above, latency-etcd an
#                    open loop at 200 claims/s; each with its etcd calls
#                    per claim (the members' gRPC counters, summed)
#   hot-single, hot-sentinel, hot-redlock3, hot-redlock5
#                    lock mode, hot coupon, on each Redis topology:
#                    hot-single on the stack itself (one node); the others
#                    each on a second stack of their own (stack.sh up
#                    REDIS_TOPOLOGY=sentinel|redlock3|redlock5, with its
#                    own PostgreSQL, replicas and nginx, on ports from
#                    REDIS_PORT + 100 up, sharing nothing with the first),
#                    taken down after its run; Redis commands counted on
#                    every data node of the topology, summed
#                    (BENCH_TOPOLOGIES=0 skips them)
#   rss              one more instance (not behind the LB), 1000
#                    connections made directly to it, each after one
#                    request: its RSS, at the default
#                    COUPON_CONN_MEMORY_LIMIT and at 32 KiB
#
# Per run: claims/s (or answers/s), latency p50/p99/p99.9/max, the longest
# wait for a lock or a batch as the replicas' histograms bound it, 503s,
# Redis commands per claim (the sum of every cmdstat_* call, commands run
# inside scripts included, over the 2xx answers; INFO commandstats after a
# CONFIG RESETSTAT before each run) and top-level commands per claim, each
# replica's share of the grants (its /metrics, before and after), and the
# load generator's own CPU. Then the goals beside the measured ratios, met
# or not. A speed goal never fails the bench; a run whose invariant check
# fails does not count, and fails the bench (exit 1).
#
# A setting the service build does not have (couponsvc --help does not
# list it) is not passed, and its feature-off run is skipped and said so.
#
# Settings (environment): BENCH_SECONDS (8), BENCH_CONN (256),
# BENCH_THREADS (loadgen threads, 2), BENCH_ROUNDS (3), BENCH_BUCKETS (8),
# BENCH_BATCH_MAX (COUPON_BATCH_MAX of the lock-mode runs, 256),
# BENCH_DURABLE (1: PostgreSQL with fsync, full_page_writes and
# synchronous_commit on, stack.sh's PG_DURABLE; 0: the stack's default, all
# off, and the table says "non-durable"), BENCH_SPREAD (1000 coupons),
# BENCH_RSS_CONNS (1000), BENCH_TOPOLOGIES (1; 0 skips the Redis topology
# rows), BENCH_ETCD (1; 0 skips the etcd rows), BENCH_ONLY (a list of run names without the
# round suffix, e.g. "hot-lock soldout healthz": only those runs, and only
# the restarts they need; empty: every run), REPLICAS (3), LOADGEN,
# COUPONSVC. Ports: a free
# block between 20000 and 31000, unless LB_PORT, PG_PORT, REDIS_PORT and
# APP_PORT_BASE are all given; the etcd members on ETCD_PORT_BASE
# (REDIS_PORT + 60 ..); the topology rows' second stacks from
# REDIS_PORT + 100 to REDIS_PORT + 219. The stack's state directory is a mktemp
# directory in /tmp (STACK_DIR to choose), removed at the end; the reports
# are kept in build/bench/.

set -eu

LT_NAME=bench
# shellcheck source=loadtest/lib.sh
. "$(dirname "$0")/lib.sh"

SECS=${BENCH_SECONDS:-8}
CONN=${BENCH_CONN:-256}
THREADS=${BENCH_THREADS:-2}
ROUNDS=${BENCH_ROUNDS:-3}
BUCKETS=${BENCH_BUCKETS:-8}
BATCH=${BENCH_BATCH_MAX:-256}
DURABLE=${BENCH_DURABLE:-1}
SPREAD=${BENCH_SPREAD:-1000}
RSS_CONNS=${BENCH_RSS_CONNS:-1000}
REPLICAS=${REPLICAS:-3}
OUT=$ROOT/build/bench
JSON_OUT=

while [ $# -gt 0 ]; do
    case $1 in
    --json)
        [ $# -ge 2 ] || { echo "bench: --json needs a file" >&2; exit 2; }
        JSON_OUT=$2
        shift 2
        ;;
    --json=*) JSON_OUT=${1#--json=}; shift ;;
    -h | --help) sed -n '2,/^set -eu/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
case $JSON_OUT in '' | /*) ;; *) JSON_OUT=$PWD/$JSON_OUT ;; esac

ONLY=$(printf '%s' "${BENCH_ONLY:-}" | tr ',' ' ')
# want NAME: 0 if the run NAME (without its round suffix) is to be run.
want() {
    [ -z "$ONLY" ] && return 0
    case " $ONLY " in *" $1 "*) return 0 ;; esac
    return 1
}

lt_need_tools
lt_positive_ints BENCH_ SECS CONN THREADS ROUNDS BUCKETS BATCH SPREAD RSS_CONNS

# The settings this build knows (the first column of couponsvc --help).
HELP=$("$COUPONSVC" --help 2>&1 || true)
has_setting() { printf '%s\n' "$HELP" | grep -Eq "^ +$1( |\$)"; }

lt_pick_ports
SPARE_PORT=$((APP_PORT_BASE + REPLICAS + 1))
# The etcd members (stack.sh's default is a fixed 12379): beside Redis.
ETCD_PORT_BASE=${ETCD_PORT_BASE:-$((REDIS_PORT + 60))}
export ETCD_PORT_BASE

WORK=$(mktemp -d /tmp/couponsvc-bench.XXXXXX)
chmod 755 "$WORK" # user postgres must reach it when we are root
STACK_DIR=${STACK_DIR:-$WORK/stack}
export STACK_DIR LB_PORT PG_PORT REDIS_PORT APP_PORT_BASE REPLICAS
rm -rf "$OUT"
mkdir -p "$OUT"
: >"$OUT/runs.tsv"

SPARE_PID=
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
    local rc=$?
    trap - EXIT
    trap '' INT TERM
    if [ -n "$SPARE_PID" ] && kill -0 "$SPARE_PID" 2>/dev/null; then
        kill -TERM "$SPARE_PID" 2>/dev/null || true
        wait "$SPARE_PID" 2>/dev/null || true
    fi
    lt_stack_down "$OUT/down.log"
    [ -z "${TOPO_DIR:-}" ] || topo_down
    if [ "$rc" = 0 ] || [ "$rc" = 1 ]; then
        rm -rf "$WORK"
    else
        rm -rf "$STACK_DIR/pg/data"
        say "stack logs kept in $STACK_DIR/logs"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the feature settings ----------------------------------------------------

# settings MODE [NAME=VALUE ...]: the COUPON_* environment of a phase. Only
# settings this build has are kept; the others are dropped (and named).
PHASE_ENV=()
settings() {
    PHASE_ENV=("COUPON_CLAIM_MODE=$1")
    shift
    local kv
    for kv in "$@"; do
        if has_setting "${kv%%=*}"; then
            PHASE_ENV+=("$kv")
        else
            say "this build has no ${kv%%=*}: not set"
        fi
    done
}

# restart MODE [NAME=VALUE ...]: the replicas again (rolling), with these;
# nothing when they already run with exactly these.
CUR_ENV=
restart() {
    settings "$@"
    [ "${PHASE_ENV[*]}" != "$CUR_ENV" ] || return 0
    CUR_ENV="${PHASE_ENV[*]}"
    say "replicas: ${PHASE_ENV[*]}"
    env -u COUPON_LOCK_WAIT_STRATEGY -u COUPON_BATCH_MAX -u COUPON_SOLDOUT_MEMO \
        "${PHASE_ENV[@]}" bash "$STACK_SH" restart-app >>"$OUT/restart.log" 2>&1 || {
        tail -n 20 "$OUT/restart.log" >&2
        die "restart-app failed"
    }
}

# --- one run -----------------------------------------------------------------

# redis_admin PORT ARGS...: redis-cli as Redis's default user (the operator).
redis_admin() {
    local port=$1
    shift
    REDISCLI_AUTH=$REDIS_ADMIN_PASSWORD timeout 5 redis-cli --no-auth-warning \
        -h 127.0.0.1 -p "$port" "$@"
}
# The Redis data nodes whose commands a run counts (a topology row sets
# its own for its run).
REDIS_DATA_PORTS=$REDIS_PORT

metrics_snapshot() { # NAME SUFFIX
    local i
    for i in $(seq "$REPLICAS"); do
        curl -s -m 5 "http://127.0.0.1:$((APP_PORT_BASE + i))/metrics" \
            >"$OUT/$1.$2.app$i" 2>/dev/null || : >"$OUT/$1.$2.app$i"
    done
}

FAILED=0
# run NAME KIND LOADGEN-ARGS...: one loadgen run through the LB, with the
# replicas' metrics and Redis's command counts around it. KIND: claims,
# soldout, healthz, setup (a preparation, not reported).
run() {
    local name=$1 kind=$2 rc=0
    shift 2
    # Its length as loadgen is given it (-d S, or -n N requests).
    local a prev='' len="${SECS} s"
    for a in "$@"; do
        case $prev in -d) len="$a s" ;; -n) len="$a requests" ;; esac
        prev=$a
    done
    say "$name: $len"
    metrics_snapshot "$name" m0
    local p
    for p in $REDIS_DATA_PORTS; do
        redis_admin "$p" CONFIG RESETSTAT >/dev/null || die "redis CONFIG RESETSTAT on port $p failed"
    done
    local TIMEFORMAT='%U %S'
    { time "$LOADGEN" --url "$COUPONSVC_URL" -t "$THREADS" --json "$OUT/$name.json" \
        -q "$@" >"$OUT/$name.out" 2>&1 || rc=$?; } 2>"$OUT/$name.cpu"
    # Claims still in flight when the load generator stopped finish first,
    # so that the counters below are read at rest: /metrics renders its
    # histograms bucket by bucket, and one read in the middle of an
    # observation would show a count in +Inf that no bucket has.
    sleep 0.5
    # Every data node's counts, one after the other: the report sums them.
    : >"$OUT/$name.redis"
    for p in $REDIS_DATA_PORTS; do
        redis_admin "$p" INFO commandstats >>"$OUT/$name.redis" || true
    done
    metrics_snapshot "$name" m1
    if [ "$rc" = 3 ]; then
        say "$name: THE INVARIANT CHECK FAILED (see $OUT/$name.out)"
        sed -n '/^verify/,$p' "$OUT/$name.out" | sed 's/^/    | /' >&2
        FAILED=1
    elif [ "$rc" != 0 ]; then
        say "$name: loadgen exit status $rc (see $OUT/$name.out)"
        FAILED=1
    fi
    [ -s "$OUT/$name.json" ] || die "$name: no report $OUT/$name.json"
    printf '%s\t%s\t%s\t%s\n' "$name" "$kind" "$rc" "${PHASE_ENV[*]}" >>"$OUT/runs.tsv"
}

# claims/s of a finished run (201s over its duration).
rate_of() {
    "$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); print("%.0f" % (d["status"].get("201",0)/d["duration_s"]))' "$OUT/$1.json"
}

STOCK=1000000000
RUN=$(date +%s)
VERIFY=(--verify-dsn)

# --- the stack ---------------------------------------------------------------

say "starting the stack: $REPLICAS replicas, LB 127.0.0.1:$LB_PORT, PostgreSQL $([ "$DURABLE" = 1 ] && echo durable || echo non-durable) (state $STACK_DIR)"
settings atomic
lt_stack_up "$OUT/up.log" -u COUPON_LOCK_WAIT_STRATEGY -u COUPON_BATCH_MAX -u COUPON_SOLDOUT_MEMO \
    "${PHASE_ENV[@]}" REDIS_TOPOLOGY=single PG_DURABLE="$DURABLE" STACK_ETCD="${BENCH_ETCD:-1}"
CUR_ENV="${PHASE_ENV[*]}"
# shellcheck disable=SC1091
. "$STACK_DIR/env"
VERIFY+=("$COUPON_PG_DSN")
ADMIN=(--admin-token "$COUPON_ADMIN_TOKEN")

# --- hot and spread, atomic and lock, interleaved ------------------------------

LOCK_DEFAULTS=(COUPON_LOCK_WAIT_STRATEGY=pubsub "COUPON_BATCH_MAX=$BATCH" COUPON_SOLDOUT_MEMO=on)
# mode_round MODE L R [NAME=VALUE ...]: round R's hot and spread runs in
# MODE (coupons hot-LR-RUN and spr-LR-RUN), the replicas restarted with
# these settings first if either run is wanted.
mode_round() {
    local mode=$1 l=$2 r=$3
    shift 3
    if want "hot-$mode" || want "spread-$mode"; then
        restart "$mode" "$@"
    fi
    ! want "hot-$mode" ||
        run "hot-$mode-$r" claims -c "$CONN" -d "$SECS" --coupon "hot-$l$r-$RUN" \
            --create-stock "$STOCK" "${ADMIN[@]}" "${VERIFY[@]}"
    ! want "spread-$mode" ||
        run "spread-$mode-$r" claims -c "$CONN" -d "$SECS" --coupon "spr-$l$r-$RUN" \
            --coupons "$SPREAD" --create-stock "$STOCK" "${ADMIN[@]}" "${VERIFY[@]}"
}
for r in $(seq "$ROUNDS"); do
    mode_round atomic a "$r"
    mode_round lock l "$r" "${LOCK_DEFAULTS[@]}"
done

# The lock mode's capacity: the median of its hot runs (BENCH_CAP when
# they were not run).
CAP=${BENCH_CAP:-1000}
if want hot-lock; then
    CAP=$(for r in $(seq "$ROUNDS"); do rate_of "hot-lock-$r"; done | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
fi
[ "$CAP" -gt 0 ] 2>/dev/null || CAP=1000
say "lock-mode capacity (median of $ROUNDS): $CAP claims/s"

# --- lock mode, defaults: buckets, open loop, overload, sold out --------------

restart lock "${LOCK_DEFAULTS[@]}"
! want hot-buckets ||
    run hot-buckets claims -c "$CONN" -d "$SECS" --coupon "hot-b-$RUN" \
    --create-stock "$STOCK" --create-buckets "$BUCKETS" "${ADMIN[@]}" "${VERIFY[@]}"
! want hot-buckets ||
    curl -s -m 5 "$COUPONSVC_URL/coupons/hot-b-$RUN" >"$OUT/hot-buckets.coupon" || true
# The open-loop runs start warm: 3 s at the 80 % rate on a coupon of their
# own first (a preparation, not reported). On a stack just started or
# restarted, the balancer's cache of connections to the replicas holds
# what the closed loop of 256 needed; an open loop near capacity keeps
# more requests in flight, and the first seconds of connecting (the
# replicas' accepts, nginx's connects, on the same two cores as the lock
# holder) measured a p99 two to three times that of the same run warm.
# The cold start is the stack's, not the lock's; the runs measure the lock.
if want open-2000 || want open-80pct; then
    run open-warm setup -c 1024 --rate $((CAP * 8 / 10)) -d 3 --coupon "warm-$RUN" \
        --create-stock "$STOCK" "${ADMIN[@]}" "${VERIFY[@]}"
fi
! want open-2000 ||
    run open-2000 open -c 1024 --rate 2000 -d "$SECS" --coupon "open-$RUN" \
    --create-stock "$STOCK" "${ADMIN[@]}" "${VERIFY[@]}"
! want open-80pct ||
    run open-80pct open -c 1024 --rate $((CAP * 8 / 10)) -d "$SECS" --coupon "o80-$RUN" \
    --create-stock "$STOCK" "${ADMIN[@]}" "${VERIFY[@]}"
# Up to 4096 in flight: more than the replicas' per-coupon queues hold
# (COUPON_QUEUE_MAX_PER_COUPON, 1024 each), so that admission control, not
# the load generator's own bound, decides what is refused.
! want overload-2x ||
    run overload-2x overload -c 4096 --rate $((CAP * 2)) -d "$SECS" --coupon "ovl-$RUN" \
    --create-stock "$STOCK" "${ADMIN[@]}" "${VERIFY[@]}"

# soldout NAME: a coupon of stock 500 claimed out by users 0..499, then a
# closed loop whose users are 0..4999 in turn: one request in ten is by a
# user who holds a claim (200), the others are answered 410.
soldout() {
    local name=$1 c=so-$1-$RUN
    run "$name-fill" setup -c 64 -n 500 --users 500 --user-prefix "u-$c" \
        --coupon "$c" --create-stock 500 "${ADMIN[@]}" "${VERIFY[@]}"
    run "$name" soldout -c "$CONN" -d "$SECS" --users 5000 --user-prefix "u-$c" \
        --coupon "$c" "${VERIFY[@]}"
}
! want soldout || soldout soldout
! want healthz || run healthz healthz -c "$CONN" -d "$SECS" --method GET --path /healthz

# --- each feature off, one at a time --------------------------------------------

# feature_off NAME SETTING COMMAND...: the run NAME, if it is wanted and
# this build has SETTING; otherwise say why it is skipped.
feature_off() {
    local name=$1 setting=$2
    shift 2
    want "$name" || return 0
    if has_setting "$setting"; then
        "$@"
    else
        say "$name: skipped, this build has no $setting"
    fi
}
# hot_with NAME TAG SETTING=VALUE...: lock mode with these settings, one
# hot-coupon run (coupon hot-TAG-RUN).
# shellcheck disable=SC2317 # invoked through feature_off
hot_with() {
    local name=$1 tag=$2
    shift 2
    restart lock "$@"
    run "$name" claims -c "$CONN" -d "$SECS" --coupon "hot-$tag-$RUN" \
        --create-stock "$STOCK" "${ADMIN[@]}" "${VERIFY[@]}"
}
# shellcheck disable=SC2317 # invoked through feature_off
soldout_nomemo() {
    restart lock COUPON_LOCK_WAIT_STRATEGY=pubsub "COUPON_BATCH_MAX=$BATCH" COUPON_SOLDOUT_MEMO=off
    soldout soldout-nomemo
}
feature_off hot-poll COUPON_LOCK_WAIT_STRATEGY hot_with hot-poll p \
    COUPON_LOCK_WAIT_STRATEGY=poll "COUPON_BATCH_MAX=$BATCH" COUPON_SOLDOUT_MEMO=on
feature_off hot-batch1 COUPON_BATCH_MAX hot_with hot-batch1 1 \
    COUPON_LOCK_WAIT_STRATEGY=pubsub COUPON_BATCH_MAX=1 COUPON_SOLDOUT_MEMO=on
feature_off soldout-nomemo COUPON_SOLDOUT_MEMO soldout_nomemo

# --- the etcd backend -------------------------------------------------------------

# etcd_calls NAME SUFFIX: every member's count of handled gRPC calls (the
# JSON gateway goes through them) into NAME.etcd.SUFFIX.
etcd_calls() {
    local ep n=0 v
    for ep in $(printf '%s' "$COUPON_ETCD_ENDPOINTS" | tr ',' ' '); do
        v=$(curl -s -m 5 "$ep/metrics" | awk '/^grpc_server_handled_total/ { s += $NF } END { printf "%d", s }')
        n=$((n + ${v:-0}))
    done
    printf '%s\n' "$n" >"$OUT/$1.etcd.$2"
}

# etcd_run NAME KIND ARGS...: run, with the members' calls counted around
# it; prints claims/s and etcd calls per claim (also into etcd.txt).
etcd_run() {
    local name=$1 b a
    etcd_calls "$name" 0
    run "$@"
    etcd_calls "$name" 1
    read -r b <"$OUT/$name.etcd.0"
    read -r a <"$OUT/$name.etcd.1"
    "$PY" - "$OUT/$name.json" "$name" $((a - b)) <<'PYEOF' | tee -a "$OUT/etcd.txt" >&2
import json, sys
d = json.load(open(sys.argv[1]))
n, calls = d["status"].get("201", 0), int(sys.argv[3])
lat = d.get("latency_ms", {})
print("%s: %.0f claims/s, p50 %s ms, p99 %s ms, %d etcd calls for %d claims: %.2f per claim"
      % (sys.argv[2], n / d["duration_s"] if d["duration_s"] else 0,
         lat.get("p50"), lat.get("p99"), calls, n, calls / n if n else 0))
PYEOF
}

etcd_rows() {
    [ "${BENCH_ETCD:-1}" = 0 ] && return 0
    if ! has_setting COUPON_LOCK_BACKEND || [ -z "${COUPON_ETCD_ENDPOINTS:-}" ]; then
        say "etcd rows: skipped (this build or stack has no etcd backend)"
        return 0
    fi
    want hot-etcd || want spread-etcd || want latency-etcd || return 0
    restart lock "${LOCK_DEFAULTS[@]}" COUPON_LOCK_BACKEND=etcd
    ! want hot-etcd ||
        etcd_run hot-etcd claims -c "$CONN" -d "$SECS" --coupon "hot-e-$RUN" \
        --create-stock "$STOCK" "${ADMIN[@]}" "${VERIFY[@]}"
    ! want spread-etcd ||
        etcd_run spread-etcd claims -c "$CONN" -d "$SECS" --coupon "spr-e-$RUN" \
        --coupons "$SPREAD" --create-stock "$STOCK" "${ADMIN[@]}" "${VERIFY[@]}"
    ! want latency-etcd ||
        etcd_run latency-etcd open -c 256 --rate 200 -d "$SECS" --coupon "lat-e-$RUN" \
        --coupons "$SPREAD" --create-stock "$STOCK" "${ADMIN[@]}" "${VERIFY[@]}"
    restart lock "${LOCK_DEFAULTS[@]}"
}

# --- the Redis topologies ----------------------------------------------------------

# The second stack of a topology row, while it is up (cleanup takes it down).
TOPO_DIR=
topo_down() {
    [ -n "$TOPO_DIR" ] || return 0
    STACK_DIR=$TOPO_DIR bash "$STACK_SH" down >>"$OUT/topo-down.log" 2>&1 ||
        tail -n 20 "$OUT/topo-down.log" >&2
    TOPO_DIR=
}

# topo_row TOPOLOGY K: the hot coupon in lock mode on a second stack whose
# Redis is TOPOLOGY (sentinel, redlock3, redlock5), its ports a block of 40
# from REDIS_PORT + 100 + 40 K: LB +0, PostgreSQL +1, the Redis data nodes
# +10.., the sentinels +21..23, the replicas +31... Its own PostgreSQL too,
# so that the invariant check reads what this row's replicas wrote, and
# nothing of the first stack (its Redis, its fence counters) is touched.
topo_row() {
    local topo=$1 name=hot-$1 base=$((REDIS_PORT + 100 + 40 * $2)) p nodes
    want "$name" || return 0
    for p in $base $((base + 1)) $(seq $((base + 10)) $((base + 14))) \
        $(seq $((base + 21)) $((base + 23))) $(seq $((base + 31)) $((base + 30 + REPLICAS))); do
        if [ "$p" -gt 65535 ] || [ -n "$(ss -Htan "( sport = :$p )" 2>/dev/null)" ]; then
            say "$name: port $p is in use (or out of range): not run"
            FAILED=1
            return 0
        fi
    done
    case $topo in sentinel) nodes=2 ;; redlock3) nodes=3 ;; *) nodes=5 ;; esac
    settings lock "${LOCK_DEFAULTS[@]}"
    TOPO_DIR=$WORK/topo-$topo
    say "$name: a second stack, REDIS_TOPOLOGY=$topo, ports $base-$((base + 39))"
    if ! env -u COUPON_ETCD_ENDPOINTS -u COUPON_LOCK_BACKEND -u COUPON_ADMIN_TOKEN \
        -u COUPON_PG_DSN -u COUPON_REDIS_ADDRS -u COUPON_REDIS_SENTINELS \
        -u COUPON_REDIS_MASTER_NAME -u COUPON_REDIS_SENTINEL_PASSWORD \
        -u COUPON_REDIS_USERNAME -u COUPON_REDIS_PASSWORD \
        "${PHASE_ENV[@]}" STACK_DIR="$TOPO_DIR" LB_PORT="$base" PG_PORT=$((base + 1)) \
        REDIS_PORT=$((base + 10)) SENTINEL_PORT=$((base + 20)) \
        APP_PORT_BASE=$((base + 30)) REDIS_TOPOLOGY="$topo" STACK_ETCD=0 \
        PG_DURABLE="$DURABLE" bash "$STACK_SH" up >"$OUT/$name.up.log" 2>&1; then
        tail -n 20 "$OUT/$name.up.log" >&2
        say "$name: stack.sh up REDIS_TOPOLOGY=$topo failed: not run"
        topo_down
        FAILED=1
        return 0
    fi
    # Locals: run() and what it calls see this stack's (dynamic scope).
    local COUPONSVC_URL COUPON_PG_DSN COUPON_ADMIN_TOKEN REDIS_ADMIN_PASSWORD
    local APP_PORT_BASE=$((base + 30)) REDIS_DATA_PORTS
    REDIS_DATA_PORTS=$(seq -s ' ' $((base + 10)) $((base + 9 + nodes)))
    {
        read -r COUPONSVC_URL
        read -r COUPON_PG_DSN
        read -r COUPON_ADMIN_TOKEN
        read -r REDIS_ADMIN_PASSWORD
    } < <(
        # shellcheck disable=SC1091
        . "$TOPO_DIR/env"
        printf '%s\n' "$COUPONSVC_URL" "$COUPON_PG_DSN" "$COUPON_ADMIN_TOKEN" "$REDIS_ADMIN_PASSWORD"
    )
    PHASE_ENV+=("REDIS_TOPOLOGY=$topo")
    run "$name" claims -c "$CONN" -d "$SECS" --coupon "hot-$topo-$RUN" \
        --create-stock "$STOCK" --admin-token "$COUPON_ADMIN_TOKEN" \
        --verify-dsn "$COUPON_PG_DSN"
    topo_down
}

if [ "${BENCH_TOPOLOGIES:-1}" != 0 ]; then
    if want hot-single; then
        restart lock "${LOCK_DEFAULTS[@]}"
        run hot-single claims -c "$CONN" -d "$SECS" --coupon "hot-single-$RUN" \
            --create-stock "$STOCK" "${ADMIN[@]}" "${VERIFY[@]}"
    fi
    if has_setting COUPON_REDIS_SENTINELS; then
        topo_row sentinel 0
    elif want hot-sentinel; then
        say "hot-sentinel: skipped, this build has no COUPON_REDIS_SENTINELS"
    fi
    topo_row redlock3 1
    topo_row redlock5 2
fi
etcd_rows

# --- RSS at 1000 connections -----------------------------------------------------

# rss NAME [NAME=VALUE]: one more instance (lock mode, the stack's backends)
# on a port of its own, RSS_CONNS connections to it, each after one request.
rss() {
    local name=$1 i
    shift
    say "$name: $RSS_CONNS connections to one instance ${*:-(defaults)}"
    COUPON_HTTP_ADDR=127.0.0.1:$SPARE_PORT COUPON_INSTANCE_ID=bench-rss \
        COUPON_CLAIM_MODE=lock COUPON_MAX_CONNECTIONS=$((RSS_CONNS + 100)) \
        env "$@" "$COUPONSVC" serve >"$OUT/$name.log" 2>&1 &
    SPARE_PID=$!
    for i in $(seq 100); do
        [ "$(curl -s -o /dev/null -m 1 -w '%{http_code}' "http://127.0.0.1:$SPARE_PORT/readyz")" = 200 ] && break
        sleep 0.1
    done
    "$PY" "$ROOT/loadtest/conns_rss.py" "$SPARE_PORT" "$SPARE_PID" "$RSS_CONNS" \
        >"$OUT/$name.rss" 2>>"$OUT/$name.log" || say "$name: not every connection was answered"
    kill -TERM "$SPARE_PID" 2>/dev/null || true
    wait "$SPARE_PID" 2>/dev/null || true
    SPARE_PID=
    printf '%s\t%s\t%s\t%s\n' "$name" rss 0 "$*" >>"$OUT/runs.tsv"
}
! want rss || rss rss-default
if want rss && has_setting COUPON_CONN_MEMORY_LIMIT; then
    rss rss-32k COUPON_CONN_MEMORY_LIMIT=32768
fi

# --- the table -------------------------------------------------------------------

rc=0
"$PY" "$ROOT/loadtest/bench_report.py" "$OUT" "$JSON_OUT" \
    "replicas=$REPLICAS" "connections=$CONN" "seconds=$SECS" "rounds=$ROUNDS" \
    "buckets=$BUCKETS" "batch=$BATCH" "durable=$DURABLE" "spread=$SPREAD" "rss_conns=$RSS_CONNS" \
    "capacity=$CAP" "cpus=$(nproc)" \
    "mem_gib=$(awk '/MemTotal/ { printf "%.0f", $2 / 1048576 }' /proc/meminfo)" \
    "os=$(sed -n 's/^PRETTY_NAME="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /etc/os-release 2>/dev/null)" || rc=$?
[ "$FAILED" = 0 ] || rc=1
exit "$rc"
