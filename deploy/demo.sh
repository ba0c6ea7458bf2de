#!/usr/bin/env bash
# demo.sh: the race and its fix, on identical load, through the load balancer.
#
# Starts the local stack with 3 replicas (deploy/stack.sh), then runs the same
# load twice against a fresh coupon with 10 in stock: 1000 distinct users,
# 200 concurrent connections, every request through nginx.
#
#   1. naive mode: read `claimed`, write `claimed = read + 1`. Replicas race
#      and more than 10 users get a coupon (oversell). If a round happens not
#      to oversell, it is run again with a new coupon, at most 3 rounds.
#   2. lock mode: the Redis lock, the fenced conditional UPDATE and the
#      UNIQUE constraint. Exactly 10 claims, no user twice.
#
# The demo succeeds (exit 0) only if naive oversold AND lock was exact. The
# stack is taken down at the end, also on failure or Ctrl-C. The load
# generator's reports stay in build/demo/ (naive.json, lock.json, lock.csv).
#
# Settings (environment): LB_PORT and the other ports of stack.sh, STACK_DIR
# (by default stack.sh picks one and records it in build/stack.dir),
# LOADGEN (build/loadgen), COUPONSVC (build/couponsvc), DEMO_STOCK (10),
# DEMO_USERS (1000), DEMO_CONC (200), DEMO_NAIVE_ROUNDS (3).
# DEMO_REUSE_STACK=1 runs on a stack that is already up (STACK_DIR, or the
# one recorded in build/stack.dir) and leaves it up: the guided tour
# (deploy/tour/tour.sh) runs this demo among others on one stack. The
# replicas are left in lock mode.

set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
STACK=$ROOT/deploy/stack.sh
OUT=$ROOT/build/demo
LOADGEN=${LOADGEN:-$ROOT/build/loadgen}
STOCK=${DEMO_STOCK:-10}
USERS=${DEMO_USERS:-1000}
CONC=${DEMO_CONC:-200}
ROUNDS=${DEMO_NAIVE_ROUNDS:-3}

say() { printf 'demo: %s\n' "$*"; }
fail() {
    printf 'demo: error: %s\n' "$*" >&2
    exit 1
}

# JSON is read with python3, present on a stock Debian 12. Prefer the
# system one: a pyenv or virtualenv python3 earlier in PATH is fine too, it
# only needs the standard library.
PY=python3
[ -x /usr/bin/python3 ] && PY=/usr/bin/python3
command -v "$PY" >/dev/null 2>&1 || fail "python3 is needed to read the load generator's JSON"
[ -x "$LOADGEN" ] || fail "$LOADGEN not found: build it first (make, or make $LOADGEN)"

mkdir -p "$OUT"

# Take the stack down on any exit, but only a stack this script started: if
# `up` refuses because one is already running, that one is left alone.
STARTED=0
cleanup() {
    local rc=$?
    trap - EXIT
    # A second Ctrl-C must not cut the teardown short.
    trap '' INT TERM
    if [ "$STARTED" = 1 ]; then
        say "taking the stack down"
        "$STACK" down >"$OUT/down.log" 2>&1 || cat "$OUT/down.log" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ "${DEMO_REUSE_STACK:-0}" = 1 ]; then
    say "on the stack that is up"
else
    say "starting the stack: 3 replicas behind nginx"
    STARTED=1
    REPLICAS=3 "$STACK" up || {
        STARTED=0 # up stops what it started when it fails
        fail "the stack did not come up (its logs are named above)"
    }
fi
# The state directory up used: the one asked for, or the one it recorded.
SD=${STACK_DIR:-$(cat "$ROOT/build/stack.dir")}
case $SD in /*) ;; *) SD=$PWD/$SD ;; esac
# shellcheck disable=SC1091
. "$SD/env"
RUN_ID=$(date +%s)

# run_load MODE COUPON: one run of the load generator. Returns its exit
# status: 0 verified, 3 verification failed; anything else is an error.
run_load() {
    local mode=$1 coupon=$2 rc=0
    say "$mode: $USERS users, $CONC connections, stock $STOCK, coupon $coupon"
    "$LOADGEN" --url "$COUPONSVC_URL" -c "$CONC" -n "$USERS" --users "$USERS" \
        --coupon "$coupon" --create-stock "$STOCK" \
        --admin-token "$COUPON_ADMIN_TOKEN" --verify-dsn "$COUPON_PG_DSN" \
        --json "$OUT/$mode.json" --csv "$OUT/$mode.csv" -q \
        >"$OUT/$mode.log" 2>&1 || rc=$?
    case $rc in
    0 | 3) ;;
    *)
        sed 's/^/    | /' "$OUT/$mode.log" >&2
        fail "loadgen failed with exit status $rc in $mode mode (see $OUT/$mode.log)"
        ;;
    esac
    [ -s "$OUT/$mode.json" ] || fail "loadgen wrote no $OUT/$mode.json"
    return "$rc"
}

# field FILE EXPR: one value from a loadgen JSON report ("?" if absent).
field() {
    "$PY" - "$1" "$2" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
v = d
for k in sys.argv[2].split("."):
    v = v.get(k) if isinstance(v, dict) else None
print("?" if v is None else v)
EOF
}

# --- 1. the race -----------------------------------------------------------

say "restarting the replicas in naive mode"
COUPON_CLAIM_MODE=naive "$STACK" restart-app >"$OUT/restart-naive.log" 2>&1 ||
    {
        cat "$OUT/restart-naive.log" >&2
        fail "restart-app (naive) failed"
    }
round=1
while :; do
    rc=0
    run_load naive "demo-naive-$RUN_ID-$round" || rc=$?
    oversell=$(field "$OUT/naive.json" verify.oversell)
    if [ "$oversell" != "?" ] && [ "$oversell" -gt 0 ]; then
        say "naive: oversold by $oversell (loadgen exit $rc, as expected)"
        break
    fi
    say "naive: round $round did not oversell (oversell=$oversell)"
    [ "$round" -lt "$ROUNDS" ] || break
    round=$((round + 1))
done

# --- 2. the fix ------------------------------------------------------------

say "restarting the replicas in lock mode"
COUPON_CLAIM_MODE=lock "$STACK" restart-app >"$OUT/restart-lock.log" 2>&1 ||
    {
        cat "$OUT/restart-lock.log" >&2
        fail "restart-app (lock) failed"
    }
lock_rc=0
run_load lock "demo-lock-$RUN_ID" || lock_rc=$?

# --- verdict ---------------------------------------------------------------

echo
"$PY" - "$OUT/naive.json" "$OUT/lock.json" "$STOCK" "$lock_rc" <<'EOF'
import json, sys

naive_f, lock_f, stock, lock_rc = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

def get(d, path, default=None):
    for k in path.split("."):
        d = d.get(k) if isinstance(d, dict) else None
    return default if d is None else d

def num(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None

rows = []
ok = {}
for mode, f in (("naive", naive_f), ("lock", lock_f)):
    d = json.load(open(f))
    v = get(d, "verify", {})
    oversell = get(v, "oversell")
    dups = get(v, "duplicate_users")
    claimed = get(v, "claimed")
    if mode == "naive":
        good = num(oversell) is not None and num(oversell) > 0
        verdict = "OVERSOLD: the race" if good else "no oversell seen"
    else:
        good = (lock_rc == 0 and num(claimed) == stock and num(oversell) == 0
                and num(dups) == 0 and get(v, "ok") is True)
        verdict = "exact: fixed" if good else "WRONG"
    ok[mode] = good
    rate = num(get(d, "achieved_rate"))
    p50 = num(get(d, "latency_ms.p50"))
    p99 = num(get(d, "latency_ms.p99"))
    rows.append([mode,
                 get(d, "status.201", 0),
                 get(v, "claimed", "?"),
                 get(v, "claim_rows", "?"),
                 get(v, "oversell", "?"),
                 get(v, "duplicate_users", "?"),
                 "?" if rate is None else "%.0f" % rate,
                 "?" if p50 is None else "%.1f" % p50,
                 "?" if p99 is None else "%.1f" % p99,
                 verdict])
    statuses = " ".join("%s:%s" % kv for kv in sorted(get(d, "status", {}).items()))
    rows[-1].append("statuses %s, transport errors %s" %
                    (statuses or "-", get(d, "transport_errors", "?")))

head = ["mode", "201s", "claimed", "claim rows", "oversell", "duplicates",
        "req/s", "p50 ms", "p99 ms", "verdict"]
table = [head] + [r[:10] for r in rows]
w = [max(len(str(r[i])) for r in table) for i in range(len(head))]
for r in table:
    print("  ".join(str(c).ljust(w[i]) for i, c in enumerate(r)).rstrip())
print()
for r in rows:
    print("%-6s %s" % (r[0], r[10]))
print("stock %d; coupons.claimed counts the UPDATEs that landed, claim rows "
      "the coupons handed out" % stock)
print()
if ok["naive"] and ok["lock"]:
    print("VERDICT: PASS - naive mode oversold under concurrency; lock mode "
          "handed out exactly %d, no user twice." % stock)
    sys.exit(0)
why = []
if not ok["naive"]:
    why.append("naive mode did not oversell, so the check proves nothing")
if not ok["lock"]:
    why.append("lock mode was not exact (claimed %s, oversell %s, duplicates %s, loadgen exit %d)"
               % (rows[1][2], rows[1][4], rows[1][5], lock_rc))
print("VERDICT: FAIL - " + "; ".join(why))
sys.exit(1)
EOF
