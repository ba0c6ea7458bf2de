#!/usr/bin/env bash
# soak.sh: the soak test (make soak [SOAK_SECONDS=600]).
#
# The local stack (deploy/stack.sh: 3 replicas, nginx on 127.0.0.1:8080,
# PostgreSQL durable, PG_DURABLE=1), under open-loop load for SOAK_SECONDS
# at 80 % of the capacity measured at its start, on the mixed profile: one
# hot coupon and SOAK_SPREAD (1000) others, each driven by a load generator
# of its own. Halfway, a rolling restart of the replicas (stack.sh
# restart-app). What it checks:
#   - no error but the documented ones: every request answered 2xx, or 503
#     (the service's lock_busy / overloaded answers, which tell the client
#     to retry), or, in the minute of the rolling restart only, 502 (the
#     failure table's "replicas restarted" row: a POST nginx sent on a
#     kept-alive connection as the stopping replica closed it); all counted
#     and shown. Any other 4xx/5xx, or a request with no answer at all (a
#     transport error), fails the soak;
#   - RSS and open file descriptors of every replica, sampled every
#     SOAK_SAMPLE_SECS (5): per process lifetime (the restart replaces the
#     processes), after SOAK_WARMUP_SECS (60), the mean of the last 30 s
#     may exceed the mean of the first 30 s by less than 5 %; a lifetime
#     too short for that is reported as not judged. The descriptors judged
#     are the process's own: all of them less the balancer's connections
#     to it, whose number follows the load (both are shown);
#   - the invariants in PostgreSQL at the end (loadgen --verify-only);
#   - latency percentiles per minute: the load runs in one-minute segments,
#     each a loadgen run of its own, so that each minute's p50/p99 are exact.
# Output in build/soak/: summary.txt (the per-minute table, the drift
# table, CPU and peak RSS per replica), samples.tsv, per-minute JSON and
# CSV, and soak.png (throughput, latency, RSS over time).
#
# The fixed stack ports are used: nothing else may run `make up` meanwhile.
# Not part of make test.

set -eu

LT_NAME=soak
# shellcheck source=loadtest/lib.sh
. "$(dirname "$0")/lib.sh"
# The soak's own: seconds since its start on every line, and FAIL.
T0=$SECONDS
say() { printf 'soak: [%4ds] %s\n' $((SECONDS - T0)) "$*" >&2; }
die() {
    printf 'soak: FAIL: %s\n' "$*" >&2
    exit 1
}

SECS=${SOAK_SECONDS:-600}
SPREAD=${SOAK_SPREAD:-1000}
SAMPLE=${SOAK_SAMPLE_SECS:-5}
WARMUP=${SOAK_WARMUP_SECS:-60}
CAP_SECS=${SOAK_CAPACITY_SECONDS:-15}
CONN=${SOAK_CONN:-128}
REPLICAS=${REPLICAS:-3}
APP_PORT_BASE=${APP_PORT_BASE:-8080}
PG_PORT=${PG_PORT:-15432}
REDIS_PORT=${REDIS_PORT:-16379}
OUT=$ROOT/build/soak

lt_positive_ints "" SECS SPREAD SAMPLE WARMUP CAP_SECS CONN
[ "$SECS" -ge 60 ] || die "SOAK_SECONDS must be at least 60 (one minute segment)"
lt_need_tools

rm -rf "$OUT"
mkdir -p "$OUT"
export REPLICAS APP_PORT_BASE PG_PORT REDIS_PORT PG_DURABLE=1

SAMPLER=
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
    local rc=$?
    trap - EXIT
    trap '' INT TERM
    # The load generators of an unfinished minute (children of the
    # subshells whose pids we have), and the sampler.
    local p
    for p in ${p1:-} ${p2:-} $SAMPLER; do
        pkill -TERM -P "$p" 2>/dev/null || true
        kill "$p" 2>/dev/null || true
    done
    for p in ${p1:-} ${p2:-} $SAMPLER; do
        wait "$p" 2>/dev/null || true
    done
    lt_stack_down "$OUT/down.log"
    [ "$rc" = 0 ] && say "passed" || say "output in $OUT"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "stack: $REPLICAS replicas, durable PostgreSQL (deploy/stack.sh up)"
lt_stack_up "$OUT/up.log"
SD=$(cat "$ROOT/build/stack.dir")
# shellcheck disable=SC1091
. "$SD/env"

# --- samples -------------------------------------------------------------------

# Every SAMPLE seconds, per replica: its pid, RSS (kB), open descriptors,
# how many of them are the balancer's connections to it (all its sockets
# but those to PostgreSQL and Redis: their number follows nginx's
# keep-alive pool and the load, not the process's age), and CPU time
# (clock ticks, user + system). A replica in the middle of its restart has
# no live pid and is skipped. Descriptors and sockets are read in one pass
# over /proc/PID/fd and one ss, so the two agree.
sampler() {
    local end=$((SECONDS + SECS + 600)) i pf pid rss fds cpu now conns sockets backend
    printf 't\treplica\tpid\trss_kb\tfds\tconns\tcpu_ticks\n' >"$OUT/samples.tsv"
    while [ "$SECONDS" -lt "$end" ]; do
        now=$(date +%s.%N)
        for i in $(seq "$REPLICAS"); do
            pf=$SD/pids/app$i.pid
            [ -f "$pf" ] || continue
            read -r pid _ <"$pf" || continue
            rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2>/dev/null) || continue
            [ -n "$rss" ] || continue
            fds=$(find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 -printf '%l\n' 2>/dev/null) || continue
            sockets=$(printf '%s\n' "$fds" | grep -c '^socket:' || true)
            fds=$(printf '%s\n' "$fds" | grep -c . || true)
            # Its sockets to the backends, and its listening socket.
            backend=$(ss -Htanp "( dport = :$PG_PORT or dport = :$REDIS_PORT or sport = :$((APP_PORT_BASE + i)) )" 2>/dev/null |
                grep -E "^(ESTAB|LISTEN|SYN-SENT)" | grep -v "^ESTAB.*:$((APP_PORT_BASE + i)) " | grep -c "pid=$pid," || true)
            conns=$((sockets - backend))
            cpu=$(awk '{ print $14 + $15 }' "/proc/$pid/stat" 2>/dev/null) || continue
            printf '%s\tapp%s\t%s\t%s\t%s\t%s\t%s\n' "$now" "$i" "$pid" "$rss" "$fds" "$conns" "$cpu" \
                >>"$OUT/samples.tsv"
        done
        sleep "$SAMPLE"
    done
}

# --- capacity --------------------------------------------------------------------

RUN=$(date +%s)
HOT=soak-hot-$RUN
ADMIN=(--admin-token "$COUPON_ADMIN_TOKEN")
# lg NAME ARGS...: one loadgen run through the LB, JSON and CSV in OUT.
lg() {
    local name=$1
    shift
    "$LOADGEN" --url "$COUPONSVC_URL" -t 2 -q --json "$OUT/$name.json" --csv "$OUT/$name.csv" \
        "$@" >"$OUT/$name.out" 2>&1
}
field() { "$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$OUT/$1.json" "$2"; }
rate2xx() { field "$1" '"%.0f" % (sum(v for k, v in d["status"].items() if k[0] == "2") / d["duration_s"])'; }

say "capacity: both profiles at once, closed loop, $CONN connections each, ${CAP_SECS} s"
lg cap-hot -c "$CONN" -d "$CAP_SECS" --coupon "$HOT" --create-stock 1000000000 \
    --user-prefix "cap-" "${ADMIN[@]}" &
p1=$!
lg cap-spread -c "$CONN" -d "$CAP_SECS" --coupon "soak-spr-$RUN" --coupons "$SPREAD" \
    --create-stock 1000000000 --user-prefix "cap-" "${ADMIN[@]}" &
p2=$!
rc1=0 rc2=0
wait "$p1" || rc1=$?
wait "$p2" || rc2=$?
[ "$rc1" = 0 ] && [ "$rc2" = 0 ] || die "the capacity runs failed (see $OUT/cap-*.out)"
CAP_HOT=$(rate2xx cap-hot) CAP_SPREAD=$(rate2xx cap-spread)
R_HOT=$((CAP_HOT * 8 / 10)) R_SPREAD=$((CAP_SPREAD * 8 / 10))
[ "$R_HOT" -gt 0 ] && [ "$R_SPREAD" -gt 0 ] || die "no capacity measured: hot $CAP_HOT/s, spread $CAP_SPREAD/s"
say "capacity: hot $CAP_HOT/s + spread $CAP_SPREAD/s; the soak sends $R_HOT/s + $R_SPREAD/s (80 %)"

# --- the soak --------------------------------------------------------------------

sampler &
SAMPLER=$!
MINUTES=$((SECS / 60))
HALF=$((MINUTES / 2))
: >"$OUT/segments.tsv"
RESTART_PID=
say "soak: $MINUTES one-minute segments, rolling restart in minute $((HALF + 1))"
for m in $(seq 0 $((MINUTES - 1))); do
    t=$(date +%s.%N)
    # Open loop: requests are due on a fixed schedule whatever the latency
    # (a late one is measured from when it was due). In flight at most
    # CONN per generator, as many as the capacity was measured with: past
    # nginx's keep-alive pool to the replicas (64 per worker) every extra
    # request opens a TCP connection of its own, which costs the replicas
    # the CPU they need to catch up, and a backlog feeds on itself. What
    # could not be sent in time is counted (sent late, never sent).
    lg "m$m-hot" -c "$CONN" --rate "$R_HOT" -d 60 --coupon "$HOT" --user-prefix "m$m-" &
    p1=$!
    lg "m$m-spread" -c "$CONN" --rate "$R_SPREAD" -d 60 --coupon "soak-spr-$RUN" --coupons "$SPREAD" \
        --user-prefix "m$m-" &
    p2=$!
    if [ "$m" = "$HALF" ]; then
        sleep 10
        say "minute $((m + 1)): rolling restart of the replicas (stack.sh restart-app)"
        bash "$STACK_SH" restart-app >"$OUT/restart.log" 2>&1 &
        RESTART_PID=$!
    fi
    rc1=0 rc2=0
    wait "$p1" || rc1=$?
    wait "$p2" || rc2=$?
    printf '%s\t%s\t%s\t%s\t%s\n' "$m" "$t" "$rc1" "$rc2" "$([ "$m" = "$HALF" ] && echo restart || echo -)" \
        >>"$OUT/segments.tsv"
    if [ -n "$RESTART_PID" ] && ! kill -0 "$RESTART_PID" 2>/dev/null; then
        wait "$RESTART_PID" || { tail -n 20 "$OUT/restart.log" >&2; die "restart-app failed"; }
        RESTART_PID=
        say "rolling restart done"
    fi
    say "minute $((m + 1)): hot $(field "m$m-hot" 'd["status"]') p99 $(field "m$m-hot" 'd["latency_ms"]["p99"]') ms; spread $(field "m$m-spread" 'd["status"]') p99 $(field "m$m-spread" 'd["latency_ms"]["p99"]') ms"
done
[ -z "$RESTART_PID" ] || wait "$RESTART_PID" || die "restart-app failed"
sleep "$SAMPLE"
kill "$SAMPLER" 2>/dev/null || true
wait "$SAMPLER" 2>/dev/null || true
SAMPLER=

# --- the invariants ------------------------------------------------------------------

say "invariants in PostgreSQL"
vrc=0
"$LOADGEN" --verify-only --coupon "$HOT" --verify-dsn "$COUPON_PG_DSN" >"$OUT/verify-hot.out" 2>&1 || vrc=1
"$LOADGEN" --verify-only --coupon "soak-spr-$RUN" --coupons "$SPREAD" --verify-dsn "$COUPON_PG_DSN" \
    >"$OUT/verify-spread.out" 2>&1 || vrc=1
grep -hE '^verify +(OK|FAIL)' "$OUT/verify-hot.out" "$OUT/verify-spread.out" >&2 || true
[ "$vrc" = 0 ] || die "the invariants do not hold (see $OUT/verify-*.out)"

# --- the report ----------------------------------------------------------------------

rc=0
"$PY" "$ROOT/loadtest/soak_report.py" "$OUT" "$WARMUP" "$CAP_HOT" "$CAP_SPREAD" "$R_HOT" "$R_SPREAD" \
    "$(getconf CLK_TCK)" || rc=$?
cat "$OUT/summary.txt"
if command -v gnuplot >/dev/null 2>&1; then
    gnuplot -e "dir='$OUT'" "$ROOT/loadtest/soak.gp" 2>"$OUT/gnuplot.err" && say "plot: $OUT/soak.png" ||
        { cat "$OUT/gnuplot.err" >&2; rc=1; }
else
    say "gnuplot not installed: no soak.png (apt-get install gnuplot-nox)"
fi
exit "$rc"
