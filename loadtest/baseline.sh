#!/usr/bin/env bash
# baseline.sh: four throughput measurements on one hot coupon, in one session
# on one local stack (3 replicas behind nginx, deploy/stack.sh), which this
# script starts and stops:
#
#   lock      claims/s in lock mode       fresh coupon, stock 1e9 (never sells out)
#   atomic    claims/s in atomic mode     fresh coupon, stock 1e9
#   soldout   410 answers/s, lock mode    a coupon with stock 0
#   healthz   GET /healthz answers/s      touches no backend: the HTTP ceiling
#
# Each is a closed loop of BASE_CONN connections (256) for BASE_SECS seconds
# (10) through the load balancer, every request from a distinct user. The
# mode is switched with `stack.sh restart-app` (COUPON_CLAIM_MODE from the
# environment). The claim runs are verified in PostgreSQL afterwards
# (loadgen --verify-dsn); the rate counts only the expected answers (201,
# 201, 410, 200) divided by the run's duration. Ends with a table and the
# ratios lock/atomic and soldout/healthz.
#
#   loadtest/baseline.sh          (make bench-baseline)
#
# Settings (environment): BASE_SECS (10), BASE_CONN (256), BASE_THREADS
# (loadgen threads, 2), REPLICAS (3), LOADGEN (build/loadgen), COUPONSVC
# (build/couponsvc). Ports: a free block between 20000 and 31000, unless
# LB_PORT, PG_PORT, REDIS_PORT and APP_PORT_BASE are all given. The state
# directory is a new mktemp directory in /tmp, removed at the end; the
# loadgen reports (JSON, CSV, output) are kept in build/baseline/.
#
# Everything runs on this machine: the load generator competes for the same
# cores as nginx, the replicas, PostgreSQL and Redis. Compare numbers only
# between runs on the same machine.

set -eu

LT_NAME=baseline
# shellcheck source=loadtest/lib.sh
. "$(dirname "$0")/lib.sh"

SECS=${BASE_SECS:-10}
CONN=${BASE_CONN:-256}
THREADS=${BASE_THREADS:-2}
REPLICAS=${REPLICAS:-3}
OUT=$ROOT/build/baseline

lt_need_tools
lt_pick_ports

WORK=$(mktemp -d /tmp/couponsvc-baseline.XXXXXX)
chmod 755 "$WORK" # user postgres must reach it when we are root
export STACK_DIR=$WORK/stack LB_PORT PG_PORT REDIS_PORT APP_PORT_BASE REPLICAS
mkdir -p "$OUT"

# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
    local rc=$?
    trap - EXIT
    trap '' INT TERM
    lt_stack_down "$OUT/down.log"
    if [ "$rc" = 0 ]; then
        rm -rf "$WORK"
    else
        rm -rf "$WORK/stack/pg/data"
        say "stack logs kept in $WORK/stack/logs"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "starting the stack: $REPLICAS replicas, LB 127.0.0.1:$LB_PORT (state $STACK_DIR)"
lt_stack_up "$OUT/up.log" COUPON_CLAIM_MODE=lock
# shellcheck disable=SC1091
. "$STACK_DIR/env"

restart_app() {
    say "restart-app in $1 mode"
    COUPON_CLAIM_MODE=$1 bash "$STACK_SH" restart-app >"$OUT/restart-$1.log" 2>&1 || {
        cat "$OUT/restart-$1.log" >&2
        die "restart-app ($1) failed"
    }
}

RUN=$(date +%s)
FAILED=0

# run NAME ARGS...: one loadgen run, its report in $OUT/NAME.json.
run() {
    local name=$1 rc=0
    shift
    say "$name: $CONN connections, ${SECS} s"
    "$LOADGEN" --url "$COUPONSVC_URL" -c "$CONN" -t "$THREADS" -d "$SECS" \
        --json "$OUT/$name.json" --csv "$OUT/$name.csv" -q "$@" >"$OUT/$name.out" 2>&1 || rc=$?
    if [ "$rc" != 0 ]; then
        say "$name: loadgen exit status $rc (see $OUT/$name.out)"
        FAILED=1
    fi
    [ -s "$OUT/$name.json" ] || die "$name: no report $OUT/$name.json"
}

run lock --coupon "base-lock-$RUN" --create-stock 1000000000 \
    --admin-token "$COUPON_ADMIN_TOKEN" --verify-dsn "$COUPON_PG_DSN"
restart_app atomic
run atomic --coupon "base-atomic-$RUN" --create-stock 1000000000 \
    --admin-token "$COUPON_ADMIN_TOKEN" --verify-dsn "$COUPON_PG_DSN"
restart_app lock
run soldout --coupon "base-soldout-$RUN" --create-stock 0 \
    --admin-token "$COUPON_ADMIN_TOKEN" --verify-dsn "$COUPON_PG_DSN"
run healthz --method GET --path /healthz

echo
rc=0
"$PY" - "$OUT" "$CONN" "$SECS" "$REPLICAS" "$(nproc)" <<'EOF' || rc=$?
import json, sys

out, conn, secs, replicas, cpus = sys.argv[1:6]
runs = [  # name, mode, expected status, what is counted
    ("lock", "lock", "201", "claims/s"),
    ("atomic", "atomic", "201", "claims/s"),
    ("soldout", "lock", "410", "sold-out/s"),
    ("healthz", "-", "200", "healthz/s"),
]
rate, rows, bad = {}, [], False
for name, mode, want, unit in runs:
    d = json.load(open("%s/%s.json" % (out, name)))
    st = d.get("status", {})
    good = st.get(want, 0)
    other = d["requests"] - good
    r = good / d["duration_s"] if d["duration_s"] else 0.0
    rate[name] = r
    v = d.get("verify")
    ver = "-" if v is None else ("ok" if v.get("ok") else "FAILED")
    if ver == "FAILED":  # a 503 under contention is an answer, not a failure
        bad = True
    lat = d["latency_ms"]
    rows.append([name, mode, unit, "%.0f" % r, "%d" % good, "%d" % other,
                 "%.1f" % lat["p50"], "%.1f" % lat["p99"], ver])

head = ["run", "mode", "unit", "rate", "answers", "other", "p50 ms", "p99 ms", "verify"]
t = [head] + rows
w = [max(len(r[i]) for r in t) for i in range(len(head))]
print("one hot coupon, %s replicas behind nginx, %s connections, %s s per run, %s CPUs"
      % (replicas, conn, secs, cpus))
print()
for r in t:
    print("  ".join(c.rjust(w[i]) if i >= 3 and i < 8 else c.ljust(w[i])
                    for i, c in enumerate(r)).rstrip())
print()
def ratio(a, b):
    return "%.3f" % (rate[a] / rate[b]) if rate[b] else "n/a"
print("lock/atomic      %s   (claims/s in lock mode over atomic mode)" % ratio("lock", "atomic"))
print("soldout/healthz  %s   (sold-out answers/s, lock mode, over /healthz answers/s)"
      % ratio("soldout", "healthz"))
print()
print("'other' counts answers that are not the expected status (and transport")
print("errors); statuses per run are in %s/NAME.json" % out)
sys.exit(1 if bad else 0)
EOF
[ "$FAILED" = 0 ] || rc=1
exit "$rc"
