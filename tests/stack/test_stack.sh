#!/usr/bin/env bash
# test_stack.sh: tests of the local stack (deploy/stack.sh) as a whole:
# PostgreSQL, Redis, N replicas and nginx on 127.0.0.1, driven by curl and
# build/loadgen, checked in PostgreSQL.
#
#   tests/stack/test_stack.sh [SUBSTRING]   run the tests whose name contains it
#
# Each test is a function t_NAME, run in its own bash process under
# `timeout` (TEST_TIMEOUT seconds, 90 by default), with its own state
# directory (a mktemp directory in /tmp, made searchable so that user
# postgres can reach it when we run as root) and its own ports: a block of
# ten free ports between 20000 and 31000, below the kernel's ephemeral range,
# so that neither a developer's `make up` on 8080 nor a test harness that
# binds port 0 can collide with it. Whatever happens to the test (failure,
# timeout, Ctrl-C), the runner takes the test's stack down afterwards.
#
# Prints "ok NAME (S s)" or "FAIL NAME (S s)" per test, then
# "N passed, N failed"; exit 1 if any failed. The state directory of a failed
# test is kept (without the PostgreSQL data) and named in the output.
#
# Environment: COUPONSVC (or COUPONSVC_BIN, as `make test` sets it;
# default build/couponsvc), LOADGEN (build/loadgen), TEST_TIMEOUT (90),
# STACK_SH (deploy/stack.sh: the script under test), VERBOSE=1 (print the
# output of passing tests too).

set -u

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=deploy/proc.sh
. "$ROOT/deploy/proc.sh"
SELF=$ROOT/tests/stack/${0##*/}
STACK_SH=${STACK_SH:-$ROOT/deploy/stack.sh}
COUPONSVC=${COUPONSVC:-${COUPONSVC_BIN:-$ROOT/build/couponsvc}}
case $COUPONSVC in /*) ;; *) COUPONSVC=$PWD/$COUPONSVC ;; esac
LOADGEN=${LOADGEN:-$ROOT/build/loadgen}
case $LOADGEN in /*) ;; *) LOADGEN=$PWD/$LOADGEN ;; esac
TEST_TIMEOUT=${TEST_TIMEOUT:-90}
export COUPONSVC LOADGEN

# The system python3 (standard library only): a pyenv shim earlier in PATH
# may point at an interpreter that is not installed for this directory.
PY=python3
[ -x /usr/bin/python3 ] && PY=/usr/bin/python3

TESTS="t_up_down_leaves_nothing t_replica_kill_fails_only_in_flight t_restart_app_is_rolling
    t_verifier_catches_injected_faults t_loadgen_https_cacert t_checkout_in_0700_dir
    t_lb_errors_are_json t_credentials t_down_kills_frozen_spares_reused
    t_lb_rate_limit_switch t_redis_topologies t_etcd_backend_up_claims_down"

# ================================================================ helpers ===
# Used inside a test process (--run-one). W is the test's directory, SD its
# stack's state directory.

note() { printf '  %s\n' "$*"; }
fail() {
    printf '  assertion failed: %s\n' "$*"
    exit 1
}

expect_eq() { # WHAT GOT WANT
    [ "$2" = "$3" ] || fail "$1: got '$2', want '$3'"
}
expect_le() { # WHAT GOT MAX (integers)
    [ "$2" -le "$3" ] 2>/dev/null || fail "$1: got '$2', want <= $3"
}
expect_gt() { # WHAT GOT MIN (integers)
    [ "$2" -gt "$3" ] 2>/dev/null || fail "$1: got '$2', want > $3"
}

# jget FILE PATH: one value of a JSON file, dotted path ("verify.ok",
# "status.201"); booleans as true/false, absent as "null".
jget() {
    "$PY" - "$1" "$2" <<'EOF'
import json, sys
v = json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."):
    v = v.get(k) if isinstance(v, dict) else None
print("null" if v is None else str(v).lower() if isinstance(v, bool) else v)
EOF
}

# failures FILE: 5xx answers plus transport errors of a loadgen JSON report.
failures() {
    "$PY" - "$1" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
print(sum(n for s, n in d.get("status", {}).items() if s.startswith("5"))
      + d.get("transport_errors", 0))
EOF
}

# pick_ports: a block of ten ports, none of them in use by any TCP socket
# (listening or not). LB_PORT=B, PG_PORT=B+1, REDIS_PORT=B+2,
# APP_PORT_BASE=B+3 (replicas on B+4 .. B+3+REPLICAS, at most 6 of them).
pick_ports() {
    local b tries=0
    while [ "$tries" -lt 50 ]; do
        b=$((20000 + 10 * (RANDOM % 1100)))
        if [ -z "$(ss -Htan "( sport >= :$b and sport <= :$((b + 9)) )" 2>/dev/null)" ]; then
            LB_PORT=$b PG_PORT=$((b + 1)) REDIS_PORT=$((b + 2)) APP_PORT_BASE=$((b + 3))
            return 0
        fi
        tries=$((tries + 1))
    done
    fail "no free block of 10 ports found between 20000 and 31000"
}

# stack CMD: deploy/stack.sh with this test's directory and ports. COUPON_*
# settings given on the call (COUPON_LOCK_TTL_MS=1000 stack up) reach it.
stack() {
    STACK_DIR=$SD LB_PORT=$LB_PORT PG_PORT=$PG_PORT REDIS_PORT=$REDIS_PORT \
        APP_PORT_BASE=$APP_PORT_BASE REPLICAS=${REPLICAS:-3} \
        bash "$STACK_SH" "$@"
}

# stack_up N: up with N replicas on fresh ports; another block of ports is
# tried if one was taken in the meantime. Sources the stack's env file.
stack_up() {
    local n=$1 try=1 log=$W/up.log
    while :; do
        pick_ports
        if REPLICAS=$n stack up >"$log" 2>&1; then
            break
        fi
        if [ "$try" -lt 3 ] && grep -q 'is already in use' "$log"; then
            try=$((try + 1))
            continue
        fi
        sed 's/^/    | /' "$log"
        fail "stack.sh up (REPLICAS=$n) failed"
    done
    # shellcheck disable=SC1091
    . "$SD/env"
    note "stack up: $n replicas, LB 127.0.0.1:$LB_PORT, PG $PG_PORT, Redis $REDIS_PORT, apps $((APP_PORT_BASE + 1))..$((APP_PORT_BASE + n))"
}

# admin_create ID TOTAL: POST /coupons through the LB; prints the status.
admin_create() {
    curl -s -o "$W/create.out" -w '%{http_code}' -m 10 \
        -H "Authorization: Bearer $COUPON_ADMIN_TOKEN" -H 'Content-Type: application/json' \
        -d "{\"id\":\"$1\",\"total\":$2}" "$COUPONSVC_URL/coupons"
}

# sql SQL...: psql as the service's role (the DSN of the stack's env file).
sql() {
    psql "$COUPON_PG_DSN" -X -q -A -t -v ON_ERROR_STOP=1 "$@"
}

# alive PID START: is that very process still there (and not a zombie)?
alive() {
    proc_stat "$1" && [ "$PROC_START" = "$2" ] && case $PROC_STATE in Z | X) false ;; esac
}

# stack_procs: "pid start" of every process of the stack: the recorded
# leaders, their process groups (nginx workers) and their children
# (PostgreSQL's backends, each in a session of its own).
stack_procs() {
    local f pid p
    for f in "$SD"/pids/*.pid; do
        [ -e "$f" ] || continue
        read -r pid _ <"$f"
        for p in $(pgrep -g "$pid"; pgrep -P "$pid"); do
            proc_stat "$p" && printf '%s %s\n' "$p" "$PROC_START"
        done
    done | sort -u
}

# leftovers DIR PORT...: processes (other than this test's own ancestry)
# whose command line or environment mentions DIR, or whose command line
# mentions one of the ports as a number, or whose environment has
# 127.0.0.1:PORT. One line each: pid and command line.
leftovers() {
    "$PY" - "$@" <<'EOF'
import os, re, sys
sd, ports = sys.argv[1].encode(), sys.argv[2:]
port_re = re.compile(rb"(?<![0-9])(" + "|".join(ports).encode() + rb")(?![0-9])")
addr = [("127.0.0.1:%s" % p).encode() for p in ports]
mine, p = set(), os.getpid()
while p > 1:  # this scanner and the test's ancestry are not leftovers
    mine.add(p)
    try:
        s = open("/proc/%d/stat" % p).read()
        p = int(s[s.rindex(")") + 2:].split()[1])
    except (OSError, ValueError):
        break
for d in os.listdir("/proc"):
    if not d.isdigit() or int(d) in mine:
        continue
    try:
        cmd = open("/proc/%s/cmdline" % d, "rb").read()
    except OSError:
        continue
    try:
        env = open("/proc/%s/environ" % d, "rb").read()
    except OSError:
        env = b""
    hit = sd in cmd or sd in env or port_re.search(cmd) or any(
        a + b"\0" in env + b"\0" or a + b"," in env for a in addr)
    if hit:
        print(d, cmd.replace(b"\0", b" ").decode(errors="replace").strip())
EOF
}

# port_free PORT: nothing listens on it and a server could bind it now.
port_free() {
    [ -z "$(ss -Hltn "sport = :$1" 2>/dev/null)" ] || return 1
    "$PY" - "$1" <<'EOF'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.close()
EOF
}

# ================================================================== tests ===

# 1. up, status, a claim through the LB, down: nothing left behind, the
#    ports free again, and a second down harmless.
t_up_down_leaves_nothing() {
    local out code procs p left ports

    stack_up 2
    out=$(stack status) || {
        printf '%s\n' "$out" | sed 's/^/    | /'
        fail "stack.sh status exited non-zero after up"
    }
    expect_eq "components alive in status" "$(printf '%s\n' "$out" | grep -c ' alive ')" 5
    expect_eq "dead components in status" "$(printf '%s\n' "$out" | grep -c ' dead ')" 0
    expect_eq "replicas ready in status" "$(printf '%s\n' "$out" | grep -c '^app[12] .* readyz 200$')" 2
    printf '%s\n' "$out" | grep -q '^nginx .* readyz via LB 200$' ||
        fail "status does not show nginx ready through the LB: $out"

    code=$(admin_create up-down 3)
    expect_eq "POST /coupons through the LB" "$code" 201
    code=$(curl -s -o "$W/claim.out" -w '%{http_code}' -m 10 -H 'Content-Type: application/json' \
        -d '{"coupon_id":"up-down","user_id":"alice"}' "$COUPONSVC_URL/claim")
    expect_eq "POST /claim through the LB" "$code" 201
    grep -q '"status":"claimed"' "$W/claim.out" || fail "claim body: $(cat "$W/claim.out")"
    expect_eq "claims rows in PostgreSQL" "$(sql -c "SELECT count(*) FROM claims WHERE coupon_id = 'up-down'")" 1

    # Every process of the stack, children included, before down.
    procs=$(stack_procs)
    note "stack processes before down: $(printf '%s\n' "$procs" | wc -l)"
    expect_gt "stack processes found" "$(printf '%s\n' "$procs" | wc -l)" 9

    stack down >"$W/down1.log" 2>&1 || {
        sed 's/^/    | /' "$W/down1.log"
        fail "stack.sh down failed"
    }

    while read -r p st; do
        alive "$p" "$st" && fail "process $p of the stack is still alive after down: $(tr '\0' ' ' <"/proc/$p/cmdline" | sed 's/ *$//')"
    done <<<"$procs"
    ports="$LB_PORT $PG_PORT $REDIS_PORT $((APP_PORT_BASE + 1)) $((APP_PORT_BASE + 2))"
    # shellcheck disable=SC2086
    left=$(leftovers "$SD" $ports)
    [ -z "$left" ] || fail "processes mentioning $SD or ports $ports after down:
$left"
    for p in $ports; do
        port_free "$p" || fail "port $p is not free after down: $(ss -Hltnp "sport = :$p")"
    done
    stack status >/dev/null 2>&1 && fail "status exits 0 after down (it should report dead components)"

    stack down >"$W/down2.log" 2>&1 || {
        sed 's/^/    | /' "$W/down2.log"
        fail "a second stack.sh down failed"
    }
    grep -q 'stopping' "$W/down2.log" && fail "the second down stopped something: $(cat "$W/down2.log")"

    # up again in the same directory takes the settings it is given, not
    # those recorded by the stack before.
    REPLICAS=1 stack up >"$W/up2.log" 2>&1 || {
        sed 's/^/    | /' "$W/up2.log"
        fail "a second up in the same directory failed"
    }
    out=$(REPLICAS=1 stack status) || fail "status after the second up: $out"
    expect_eq "components alive after up with REPLICAS=1" "$(printf '%s\n' "$out" | grep -c ' alive ')" 4
    return 0
}

# The etcd backend in the stack: make up COUPON_LOCK_BACKEND=etcd starts
# three etcd members beside the rest and the replicas lock on them (their
# grants say backend=etcd); a claim load through the LB verifies clean;
# down stops the members too (no process mentions the state directory).
t_etcd_backend_up_claims_down() {
    local b tries=0 out left
    while :; do
        b=$((20000 + 10 * (RANDOM % 1100)))
        [ -z "$(ss -Htan "( sport >= :$b and sport <= :$((b + 9)) )" 2>/dev/null)" ] && break
        tries=$((tries + 1))
        [ "$tries" -lt 50 ] || fail "no free block of ports for etcd"
    done
    export COUPON_LOCK_BACKEND=etcd ETCD_PORT_BASE=$b
    stack_up 2
    out=$(stack status) || fail "status after up: $out"
    expect_eq "etcd members alive in status" "$(printf '%s\n' "$out" | grep -c '^etcd[123] .* alive')" 3
    claim_load_start 3 etcd-hot
    claim_load_end
    expect_gt "claims granted by etcd" "$(cat "$SD"/logs/app*.log | grep -c 'lock.acquired.*backend=etcd')" 0
    expect_eq "grants by another backend" "$(cat "$SD"/logs/app*.log | grep 'lock.acquired' | grep -vc 'backend=etcd')" 0
    stack down >"$W/down.log" 2>&1 || {
        sed 's/^/    | /' "$W/down.log"
        fail "stack.sh down failed"
    }
    left=$(leftovers "$SD" "$b" $((b + 2)) $((b + 4)))
    [ -z "$left" ] || fail "processes left after down:
$left"
    return 0
}

# claim_load_start SECONDS COUPON: claims from 32 connections (closed loop,
# every user new) through the load balancer in the background, verified in
# PostgreSQL afterwards; report in $W/load.{json,csv,out}. Sets LOAD_PID.
claim_load_start() {
    "$LOADGEN" --url "$COUPONSVC_URL" -c 32 -d "$1" --coupon "$2" --create-stock 100000000 \
        --admin-token "$COUPON_ADMIN_TOKEN" --verify-dsn "$COUPON_PG_DSN" \
        --json "$W/load.json" --csv "$W/load.csv" -q >"$W/load.out" 2>&1 &
    LOAD_PID=$!
}

# claim_load_end: waits for that load, shows its summary, and expects it to
# have verified clean and to have failed no more claims than the 32 that can
# be in flight at once (see test 2). Sets N201.
claim_load_end() {
    local rc=0 fails
    wait "$LOAD_PID" || rc=$?
    sed 's/^/    | /' "$W/load.out"
    expect_eq "loadgen exit status" "$rc" 0
    expect_eq "verify.ok" "$(jget "$W/load.json" verify.ok)" true
    N201=$(jget "$W/load.json" status.201)
    expect_eq "verify.claimed_2xx = status.201" "$(jget "$W/load.json" verify.claimed_2xx)" "$N201"
    fails=$(failures "$W/load.json")
    note "failed claims (5xx + transport errors): $fails; statuses: $(jget "$W/load.json" status)"
    expect_le "failed claims (5xx + transport errors)" "$fails" 32
    # Nothing else than 201 and failures: no 4xx, no 200 (every user distinct).
    expect_eq "201 + failures = requests" $((N201 + fails)) "$(jget "$W/load.json" requests)"
}

# 2. kill -9 of one of 3 replicas under load: the claims that fail are at
#    most those that could have been in flight on it.
#
# Why 32 is a bound: loadgen runs closed loop with 32 connections, so at
# most 32 claims are outstanding anywhere at any instant. nginx does not
# move a POST to another replica once it has sent it (proxy.conf), so the
# claims the killed replica had received fail with 502; a claim sent to it
# afterwards finds the port closed (connection refused), which nginx does
# retry on another replica, and after max_fails it stops trying the dead
# one. (A claim written on a cached keep-alive connection in the instant
# before nginx sees it closed also fails; such claims are among the 32
# outstanding ones too, as long as nginx notices the closed connections
# promptly, which it does from its event loop.)
#
# The lease TTL is set to 1000 ms, below the lock wait (COUPON_LOCK_WAIT_MS,
# 2000 ms): if the killed replica held the coupon's lock, the lease expires
# before any waiter's deadline. With the default TTL of 5000 ms the lock of
# a killed holder blocks the coupon for up to 5 s and every claim waiting
# for it gets 503 lock_busy after 2 s: correct (nothing is written), but
# not "only those in flight", and not what this test is about.
t_replica_kill_fails_only_in_flight() {
    local pid start served s

    COUPON_LOCK_TTL_MS=1000 stack_up 3
    read -r pid start <"$SD/pids/app2.pid"
    alive "$pid" "$start" || fail "app2 (pid $pid) is not running before the test"

    claim_load_start 6 kill-hot
    sleep 2
    alive "$pid" "$start" || fail "app2 died on its own before the kill"
    kill -9 "$pid"
    note "kill -9 app2 (pid $pid) at ~2 s"
    claim_load_end

    alive "$pid" "$start" && fail "app2 still alive after kill -9"
    stack status >"$W/status.out" 2>&1 && fail "status exits 0 with app2 killed"
    grep -q '^app2 .* dead' "$W/status.out" || fail "status does not show app2 dead: $(cat "$W/status.out")"

    expect_eq "verify.missing_rows (a 201 without its row)" "$(jget "$W/load.json" verify.missing_rows)" 0
    expect_eq "verify.oversell" "$(jget "$W/load.json" verify.oversell)" 0
    expect_gt "201 answers" "$N201" 1000

    # The killed replica did take part before it was killed ...
    served=$(grep -c "up=127.0.0.1:$((APP_PORT_BASE + 2)) ust=20" "$SD/logs/nginx.access.log" || true)
    expect_gt "claims answered by app2 before the kill" "$served" 0
    # ... and the others kept answering every second after it.
    for s in 3 4 5; do
        expect_gt "2xx answers in second $s (after the kill)" \
            "$(awk -F, -v s="$s" '$1 == s { print $3 }' "$W/load.csv")" 0
    done
    return 0
}

# 2b. restart-app under load is rolling: every replica is replaced (new
#     pids), the load balancer answers claims in every second of the
#     restart, and the claims that fail are at most those in flight (32, as
#     above: the only failure left is a POST nginx sends on an idle kept-alive
#     connection as the stopping replica closes it). Restarting all replicas
#     at once, as restart-app first did, failed 43 053 claims here in the
#     second nginx had no replica.
t_restart_app_is_rolling() {
    local i s old='' new='' t0 t1 secs

    stack_up 3
    for i in 1 2 3; do old="$old $(cut -d' ' -f1 "$SD/pids/app$i.pid")"; done

    claim_load_start 9 roll-hot
    sleep 2
    t0=$EPOCHREALTIME
    stack restart-app >"$W/restart.log" 2>&1 || {
        sed 's/^/    | /' "$W/restart.log"
        fail "stack.sh restart-app failed"
    }
    t1=$EPOCHREALTIME
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%d", b - a + 0.999 }')
    note "restart-app took $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s"
    claim_load_end

    for i in 1 2 3; do new="$new $(cut -d' ' -f1 "$SD/pids/app$i.pid")"; done
    for i in $new; do
        case " $old " in *" $i "*) fail "a replica kept its pid $i: not restarted (old:$old new:$new)" ;; esac
    done
    grep -q 'restarted one at a time' "$W/restart.log" || fail "restart-app did not report a rolling restart"

    # Claims were answered in every second the restart took, and after.
    s=2
    while [ "$s" -le $((2 + secs)) ] && [ "$s" -le 8 ]; do
        expect_gt "2xx answers in second $s (during the restart)" \
            "$(awk -F, -v s="$s" '$1 == s { print $3 }' "$W/load.csv")" 0
        s=$((s + 1))
    done
    return 0
}

# 3. the verifier (loadgen --verify-dsn) catches an inconsistency injected in
#    PostgreSQL: (a) a claim row without its counter, (b) a user twice,
#    (d) two transactions with one fence, (e) a falling fence, (f) a bucket
#    oversold; and passes (c) a batch's rows sharing their transaction's
#    fence and (f) buckets reusing each other's fences.
#
# loadgen has no verify-only mode: the re-verification is a run of one claim
# by a user who already holds a claim on the coupon (200 already_claimed),
# which changes nothing in the database.
t_verifier_catches_injected_faults() {
    local rc pfx=st$$

    stack_up 1

    # --- (a) an extra claim row, coupons.claimed not bumped ----------------
    rc=0
    "$LOADGEN" --url "$COUPONSVC_URL" -c 4 -n 20 --users 20 --user-prefix "$pfx-a" \
        --coupon inj-a --create-stock 100 --admin-token "$COUPON_ADMIN_TOKEN" \
        --verify-dsn "$COUPON_PG_DSN" --json "$W/a0.json" -q >"$W/a0.out" 2>&1 || rc=$?
    expect_eq "clean run on inj-a: loadgen exit status" "$rc" 0
    expect_eq "clean run on inj-a: verify.ok" "$(jget "$W/a0.json" verify.ok)" true
    expect_eq "clean run on inj-a: claimed" "$(jget "$W/a0.json" verify.claimed)" 20

    sql -c "INSERT INTO claims (coupon_id, user_id, fence, seq, instance)
            VALUES ('inj-a', 'injected-extra', NULL, 21, 'test_stack')" >/dev/null ||
        fail "could not insert the extra claim row"

    rc=0
    "$LOADGEN" --url "$COUPONSVC_URL" -c 1 -n 1 --users 1 --user-prefix "$pfx-a" \
        --coupon inj-a --verify-dsn "$COUPON_PG_DSN" --json "$W/a1.json" >"$W/a1.out" 2>&1 || rc=$?
    sed 's/^/    | /' "$W/a1.out"
    expect_eq "(a) re-verification: loadgen exit status" "$rc" 3
    expect_eq "(a) the re-verifying claim was already_claimed" "$(jget "$W/a1.json" status.200)" 1
    expect_eq "(a) verify.ok" "$(jget "$W/a1.json" verify.ok)" false
    expect_eq "(a) verify.rows_match_claimed" "$(jget "$W/a1.json" verify.rows_match_claimed)" false
    expect_eq "(a) verify.claim_rows" "$(jget "$W/a1.json" verify.claim_rows)" 21
    expect_eq "(a) verify.claimed" "$(jget "$W/a1.json" verify.claimed)" 20
    expect_eq "(a) verify.duplicate_users" "$(jget "$W/a1.json" verify.duplicate_users)" 0
    grep -Eq '^  rows = claimed +no' "$W/a1.out" || fail "(a) the summary does not say rows != claimed"

    # --- (b) the same user twice -------------------------------------------
    rc=0
    "$LOADGEN" --url "$COUPONSVC_URL" -c 4 -n 20 --users 20 --user-prefix "$pfx-b" \
        --coupon inj-b --create-stock 100 --admin-token "$COUPON_ADMIN_TOKEN" \
        --verify-dsn "$COUPON_PG_DSN" --json "$W/b0.json" -q >"$W/b0.out" 2>&1 || rc=$?
    expect_eq "clean run on inj-b: loadgen exit status" "$rc" 0
    expect_eq "clean run on inj-b: verify.ok" "$(jget "$W/b0.json" verify.ok)" true

    # UNIQUE (coupon_id, user_id) makes the duplicate impossible: show it,
    # then drop it in this test's own database. The counter is bumped with
    # the row, so that the duplicate is the only thing wrong.
    sql -c "INSERT INTO claims (coupon_id, user_id, fence, seq, instance)
            VALUES ('inj-b', '$pfx-b-5', NULL, 21, 'test_stack')" >/dev/null 2>"$W/b-unique.err" &&
        fail "(b) a duplicate claim row was accepted with the UNIQUE constraint in place"
    grep -q claims_one_per_user "$W/b-unique.err" ||
        fail "(b) the refused duplicate did not name claims_one_per_user: $(cat "$W/b-unique.err")"
    sql >/dev/null <<EOF || fail "(b) could not inject the duplicate"
ALTER TABLE claims DROP CONSTRAINT claims_one_per_user;
BEGIN;
INSERT INTO claims (coupon_id, user_id, fence, seq, instance)
     VALUES ('inj-b', '$pfx-b-5', NULL, 21, 'test_stack');
UPDATE coupons SET claimed = claimed + 1 WHERE id = 'inj-b';
COMMIT;
EOF

    rc=0
    "$LOADGEN" --url "$COUPONSVC_URL" -c 1 -n 1 --users 1 --user-prefix "$pfx-b" \
        --coupon inj-b --verify-dsn "$COUPON_PG_DSN" --json "$W/b1.json" >"$W/b1.out" 2>&1 || rc=$?
    sed 's/^/    | /' "$W/b1.out"
    expect_eq "(b) re-verification: loadgen exit status" "$rc" 3
    expect_eq "(b) the re-verifying claim was already_claimed" "$(jget "$W/b1.json" status.200)" 1
    expect_eq "(b) verify.ok" "$(jget "$W/b1.json" verify.ok)" false
    expect_eq "(b) verify.duplicate_users" "$(jget "$W/b1.json" verify.duplicate_users)" 1
    expect_eq "(b) verify.rows_match_claimed (only the duplicate is wrong)" \
        "$(jget "$W/b1.json" verify.rows_match_claimed)" true
    expect_eq "(b) verify.oversell" "$(jget "$W/b1.json" verify.oversell)" 0
    grep -Eq '^  duplicate users +1' "$W/b1.out" || fail "(b) the summary does not report the duplicate user"

    # --- (c) fences: equal within one transaction (a batch) is allowed;
    # equal across two transactions, or falling, is not. Planted rows, then
    # loadgen --verify-only (nothing sent). -----------------------------
    sql >/dev/null <<EOF || fail "(c) could not plant the fence rows"
INSERT INTO coupons (id, total, claimed) VALUES ('inj-c', 10, 3), ('inj-d', 10, 2), ('inj-e', 10, 2);
INSERT INTO claims (coupon_id, user_id, fence, seq, instance) VALUES ('inj-c', 'u1', 5, 1, 't');
BEGIN;
INSERT INTO claims (coupon_id, user_id, fence, seq, instance)
     VALUES ('inj-c', 'u2', 6, 2, 't'), ('inj-c', 'u3', 6, 3, 't');
COMMIT;
INSERT INTO claims (coupon_id, user_id, fence, seq, instance) VALUES ('inj-d', 'u1', 7, 1, 't');
INSERT INTO claims (coupon_id, user_id, fence, seq, instance) VALUES ('inj-d', 'u2', 7, 2, 't');
INSERT INTO claims (coupon_id, user_id, fence, seq, instance) VALUES ('inj-e', 'u1', 9, 1, 't');
INSERT INTO claims (coupon_id, user_id, fence, seq, instance) VALUES ('inj-e', 'u2', 8, 2, 't');
EOF
    local c rc_c rc_d rc_e
    for c in c d e; do
        rc=0
        "$LOADGEN" --verify-only --coupon "inj-$c" --verify-dsn "$COUPON_PG_DSN" \
            --json "$W/$c.json" >"$W/$c.out" 2>&1 || rc=$?
        sed 's/^/    | /' "$W/$c.out"
        printf -v "rc_$c" '%s' "$rc"
    done
    expect_eq "(c) a batch's shared fence: loadgen exit status" "$rc_c" 0
    expect_eq "(c) verify.ok" "$(jget "$W/c.json" verify.ok)" true
    expect_eq "(c) verify.fence_ties_in_tx" "$(jget "$W/c.json" verify.fence_ties_in_tx)" 1
    expect_eq "(d) two transactions, one fence: loadgen exit status" "$rc_d" 3
    expect_eq "(d) verify.fence_repeats" "$(jget "$W/d.json" verify.fence_repeats)" 1
    expect_eq "(d) verify.fences_increasing" "$(jget "$W/d.json" verify.fences_increasing)" false
    expect_eq "(e) a falling fence: loadgen exit status" "$rc_e" 3
    expect_eq "(e) verify.fence_decreases" "$(jget "$W/e.json" verify.fence_decreases)" 1

    # --- (f) a sharded coupon: per-bucket stock and counters. Bucket 0
    # holds 1 and gets two rows (the coupon's stock of 3 is not exceeded);
    # bucket 1's fence reuses bucket 0's, which is allowed (a lock and a
    # fence counter per bucket). -------------------------------------------
    sql >/dev/null <<EOF || fail "(f) could not plant the bucket rows"
INSERT INTO coupons (id, total, buckets) VALUES ('inj-f', 3, 2);
INSERT INTO coupon_buckets (coupon_id, bucket, total, claimed) VALUES ('inj-f', 0, 1, 1), ('inj-f', 1, 2, 1);
INSERT INTO claims (coupon_id, user_id, fence, seq, instance, bucket) VALUES ('inj-f', 'u1', 1, 1, 't', 0);
INSERT INTO claims (coupon_id, user_id, fence, seq, instance, bucket) VALUES ('inj-f', 'u2', 1, 1, 't', 1);
EOF
    rc=0
    "$LOADGEN" --verify-only --coupon inj-f --verify-dsn "$COUPON_PG_DSN" \
        --json "$W/f0.json" >"$W/f0.out" 2>&1 || rc=$?
    sed 's/^/    | /' "$W/f0.out"
    expect_eq "(f) clean sharded coupon: loadgen exit status" "$rc" 0
    expect_eq "(f) verify.buckets" "$(jget "$W/f0.json" verify.buckets)" 2
    sql -c "INSERT INTO claims (coupon_id, user_id, fence, seq, instance, bucket)
            VALUES ('inj-f', 'u3', 2, 2, 't', 0)" >/dev/null || fail "(f) could not plant the extra row"
    rc=0
    "$LOADGEN" --verify-only --coupon inj-f --verify-dsn "$COUPON_PG_DSN" \
        --json "$W/f1.json" >"$W/f1.out" 2>&1 || rc=$?
    sed 's/^/    | /' "$W/f1.out"
    expect_eq "(f) bucket 0 oversold: loadgen exit status" "$rc" 3
    expect_eq "(f) verify.bucket_oversell" "$(jget "$W/f1.json" verify.bucket_oversell)" 1
    expect_eq "(f) verify.bucket_rows_mismatch" "$(jget "$W/f1.json" verify.bucket_rows_mismatch)" 1
    expect_eq "(f) verify.oversell (the coupon as a whole)" "$(jget "$W/f1.json" verify.oversell)" 0
    return 0
}

# 5. A checkout in a 0700 directory (root's home, mktemp -d), run as root:
#    `up` without STACK_DIR picks a state directory that user postgres and
#    nginx's workers (nobody) can reach, records it in the checkout's
#    build/stack.dir and prints it; a claim whose body nginx buffers to a
#    temporary file (over its 16 KiB client_body_buffer_size, so written by
#    a worker into client_body_temp) is answered 201; `down`, again without
#    STACK_DIR, finds the stack and stops all of it; another checkout picks
#    another directory. What stack.sh needs of a checkout is deploy/ (the
#    binaries come from COUPONSVC), so deploy/ is what is copied. Before
#    the state directory was picked, `up` stopped with "user postgres
#    cannot reach .../build/stack/pg".
t_checkout_in_0700_dir() {
    local home=$W/home co sd other procs p st
    mkdir -m 700 "$home"
    mkdir "$home/x" "$home/y"
    cp -a "$(dirname "$STACK_SH")" "$home/x/deploy"
    cp -a "$(dirname "$STACK_SH")" "$home/y/deploy"
    printf '%s\n' "$home/x" "$home/y" >"$W/checkouts"
    co=$home/x
    pick_ports
    env -u STACK_DIR LB_PORT="$LB_PORT" PG_PORT="$PG_PORT" REDIS_PORT="$REDIS_PORT" \
        APP_PORT_BASE="$APP_PORT_BASE" REPLICAS=1 COUPON_MAX_BODY=65536 \
        bash "$co/deploy/stack.sh" up >"$W/up.log" 2>&1 || {
        sed 's/^/    | /' "$W/up.log"
        fail "stack.sh up in a checkout under a 0700 directory failed"
    }
    [ -s "$co/build/stack.dir" ] || fail "up recorded no state directory in $co/build/stack.dir"
    read -r sd <"$co/build/stack.dir"
    note "state directory: $sd"
    grep -qF "state: $sd" "$W/up.log" || fail "up did not print the state directory $sd: $(cat "$W/up.log")"
    if [ "$(id -u)" = 0 ]; then
        case $sd in "$home"/*) fail "as root, the state directory $sd is inside the 0700 directory" ;; esac
        for p in postgres nobody; do
            runuser -u "$p" -- test -x "$sd" || fail "user $p cannot reach $sd"
        done
    fi
    [ -S "$sd/pg/sock/.s.PGSQL.$PG_PORT" ] || fail "no PostgreSQL socket in $sd/pg/sock"
    p=$sd/pg/sock/.s.PGSQL.$PG_PORT
    expect_le "PostgreSQL socket path length ($p)" "${#p}" 107

    # shellcheck disable=SC1091
    . "$sd/env"
    expect_eq "POST /coupons through the LB" "$(admin_create deep 3)" 201
    "$PY" -c 'import sys; sys.stdout.write("{\"coupon_id\":\"deep\",\"user_id\":\"bob\"" + " " * 40000 + "}")' >"$W/big.json"
    expect_eq "POST /claim with a 40 KB body through the LB" "$(curl -s -o "$W/big.out" -w '%{http_code}' -m 10 \
        -H 'Content-Type: application/json' --data-binary @"$W/big.json" "$COUPONSVC_URL/claim")" 201
    grep -q 'a client request body is buffered to a temporary file' "$sd/logs/nginx.error.log" ||
        fail "nginx did not buffer the body to a file (the test proves nothing): $(tail -3 "$sd/logs/nginx.error.log")"

    other=$(env -u STACK_DIR bash "$home/y/deploy/stack.sh" status 2>&1 || true)
    case $other in *"no stack in "*) ;; *) fail "status in a second checkout: $other" ;; esac
    case $other in *"$sd"*) fail "two checkouts share the state directory $sd" ;; esac

    procs=$(SD=$sd stack_procs)
    env -u STACK_DIR bash "$co/deploy/stack.sh" down >"$W/down.log" 2>&1 || {
        sed 's/^/    | /' "$W/down.log"
        fail "stack.sh down (no STACK_DIR) failed"
    }
    grep -q 'stopping postgres' "$W/down.log" || fail "down did not find the stack: $(cat "$W/down.log")"
    while read -r p st; do
        alive "$p" "$st" && fail "process $p is still alive after down"
    done <<<"$procs"
    return 0
}

# lb_expect PORT: reads "NAME EXPECTED_STATUS REQUEST" cases (REQUEST a
# Python bytes expression) on stdin, sends each on a connection of its own to
# nginx on 127.0.0.1:PORT, and checks the answer: that status, Content-Type
# application/json, a body that parses with string members error and
# detail, and no header naming an internal address. One line per case;
# exit 1 if any case failed.
lb_expect() {
    "$PY" -c '
import json, socket, sys
port, bad = int(sys.argv[1]), 0
for line in sys.stdin:
    if not line.strip():
        continue
    name, want, req = line.split(" ", 2)
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s.sendall(eval(req, {"__builtins__": {}}))  # the cases are ours
    except OSError:
        pass  # nginx may answer and close before it has read everything
    data = b""
    try:
        while True:
            b = s.recv(65536)
            if not b:
                break
            data += b
    except OSError:
        pass
    s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(" ")[1] if len(lines[0].split(" ")) > 1 else "none"
    hdrs = {l.split(":", 1)[0].strip().lower(): l.split(":", 1)[1].strip() for l in lines[1:] if ":" in l}
    why = []
    if status != want:
        why.append("status %s, want %s" % (status, want))
    if not hdrs.get("content-type", "").startswith("application/json"):
        why.append("Content-Type %r" % hdrs.get("content-type"))
    try:
        j = json.loads(body)
        if not (isinstance(j.get("error"), str) and isinstance(j.get("detail"), str)):
            why.append("no error/detail strings")
    except ValueError:
        why.append("body is not JSON")
    if not hdrs.get("x-request-id"):
        why.append("no X-Request-Id")
    leak = [k for k, v in hdrs.items() if "127.0.0.1" in v or k == "x-upstream-addr"]
    if leak:
        why.append("internal address in headers %s" % leak)
    print("  %s %s: %s %s" % ("FAIL" if why else "ok  ", name, status,
                             "; ".join(why) + " | " + body[:120].decode("latin-1").strip() if why
                             else body.decode("latin-1").strip()))
    bad += bool(why)
sys.exit(1 if bad else 0)
' "$1"
}

# 6. Errors nginx makes itself are JSON in the service's shape, through the
#    stack's balancer: 400 (a malformed request line, a header line without
#    a colon), 413 (Content-Length over 64 KiB), 414 (a 10 KB URI), 431
#    (nginx's 494: a 10 KB header), 501 (Transfer-Encoding: gzip), 404 for
#    /metrics (however it is spelled) and for the pages' own internal
#    URIs, and 502 once the only replica is gone. A replica's own error
#    passes through untouched, every answer carries an X-Request-Id, and
#    no answer names an internal address.
#    (408, 500, 503 and 504 have their pages too but are not provoked here:
#    408 and 504 take the 60 s and 30 s timeouts, nginx makes 503 only with
#    limits this balancer does not set, and 500 only on its own failures.)
#    Before the pages, every case but the replica's own answer was HTML.
t_lb_errors_are_json() {
    local pid start i
    stack_up 1
    admin_create lbjson 1 >/dev/null
    lb_expect "$LB_PORT" <<'EOF' || fail "an answer of the load balancer is not the JSON error it should be (above)"
replica-404 404 b"GET /coupons/nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
bad-request-line 400 b"GARBAGE\x01 / HTTP/1.1\r\n\r\n"
header-without-colon 400 b"GET / HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n"
body-too-large 413 b"POST /claim HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
uri-too-long 414 b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
header-too-large 431 b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10000 + b"\r\n\r\n"
te-gzip 501 b"POST /claim HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n"
metrics 404 b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
metrics-query 404 b"GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
metrics-encoded 404 b"GET /%6detrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
metrics-dot-segment 404 b"GET /coupons/../metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
internal-page 404 b"GET /.lb-error/502 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
EOF
    # A claim through the LB names no internal address either.
    curl -s -D "$W/claim.hdr" -o /dev/null -m 10 -H 'Content-Type: application/json' \
        -d '{"coupon_id":"lbjson","user_id":"u1"}' "$COUPONSVC_URL/claim"
    grep -qi -e 'x-upstream' -e '127\.0\.0\.1' "$W/claim.hdr" && fail "a claim's headers name an internal address: $(cat "$W/claim.hdr")"

    read -r pid start <"$SD/pids/app1.pid"
    kill -s TERM "$pid"
    for i in $(seq 150); do
        alive "$pid" "$start" || break
        sleep 0.1
    done
    alive "$pid" "$start" && fail "app1 did not stop within 15 s of SIGTERM"
    lb_expect "$LB_PORT" <<'EOF' || fail "with the replica gone, an answer is not the JSON 502 (above)"
no-replica-get 502 b"GET /coupons/lbjson HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
no-replica-claim 502 b"POST /claim HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
EOF
    return 0
}

# 6b. The balancer's per-client rate limit as stack.sh sets it: off by
#     default (every client of this stack is 127.0.0.1, and the load tests
#     and the bench send thousands of requests a second from there), on
#     with LB_RATE_LIMIT=on, where 300 requests sent back to back on one
#     connection meet the limit (20/s, bursts of 40) and each refusal is
#     the JSON 429 rate_limited with Retry-After: 1.
burst_statuses() { # PORT: "N200 N404 N429 Nother" of 300 GETs on one connection
    "$PY" -c '
import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=10)
n = {}
for i in range(300):
    c.request("GET", "/coupons/none-%d" % i)
    r = c.getresponse()
    body = r.read()
    n[r.status] = n.get(r.status, 0) + 1
    if r.status == 429 and (r.getheader("Retry-After") != "1" or
                            b"\"error\":\"rate_limited\"" not in body):
        n["bad"] = n.get("bad", 0) + 1
print(n.get(404, 0), n.get(429, 0), sum(v for k, v in n.items() if k not in (404, 429)))
' "$1"
}
t_lb_rate_limit_switch() {
    local n404 n429 other
    stack_up 1
    read -r n404 n429 other <<<"$(burst_statuses "$LB_PORT")"
    note "limit off (default): $n404 x 404, $n429 x 429, $other other"
    expect_eq "429s with LB_RATE_LIMIT unset" "$n429" 0
    expect_eq "404s from the replica" "$n404" 300
    stack down >"$W/down.log" 2>&1 || fail "stack.sh down failed"
    LB_RATE_LIMIT=on stack_up 1
    read -r n404 n429 other <<<"$(burst_statuses "$LB_PORT")"
    note "LB_RATE_LIMIT=on: $n404 x 404, $n429 x 429, $other other"
    expect_gt "429s with LB_RATE_LIMIT=on" "$n429" 0
    expect_eq "answers other than 404 and 429 (or a 429 without Retry-After: 1 and the JSON rate_limited)" "$other" 0
    return 0
}

# 7. Credentials of the local stack. Redis: without a password every
#    command is refused (NOAUTH); the replicas' ACL user is exactly the
#    rule shipped in deploy/redis/couponsvc.acl, may not FLUSHALL nor touch
#    a key outside coupon:*, and claims through it work (201, and the lock
#    released). PostgreSQL: the service's role has a SCRAM-SHA-256 verifier,
#    TCP connections must use scram-sha-256, and a wrong password is
#    refused. The files holding the secrets are mode 0600. Before, Redis
#    answered PONG to anyone, and the password of the role was "couponsvc".
t_credentials() {
    local out f rule
    stack_up 1
    out=$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>&1)
    case $out in *NOAUTH*) ;; *) fail "Redis without a password answered '$out', want NOAUTH" ;; esac
    [ -n "${COUPON_REDIS_PASSWORD:-}" ] || fail "the env file exports no COUPON_REDIS_PASSWORD"
    rc() { REDISCLI_AUTH=$COUPON_REDIS_PASSWORD redis-cli --no-auth-warning --user "$COUPON_REDIS_USERNAME" \
        -h 127.0.0.1 -p "$REDIS_PORT" "$@" 2>&1; }
    expect_eq "PING as $COUPON_REDIS_USERNAME" "$(rc ping)" PONG
    case $(rc flushall) in *NOPERM*) ;; *) fail "the ACL user may FLUSHALL: $(rc flushall)" ;; esac
    case $(rc set other:key 1) in *NOPERM*) ;; *) fail "the ACL user may write other:key" ;; esac
    rule=$(grep '^user ' "$ROOT/deploy/redis/couponsvc.acl" | cut -d' ' -f2-)
    out=$(REDISCLI_AUTH=$REDIS_ADMIN_PASSWORD redis-cli --no-auth-warning -h 127.0.0.1 -p "$REDIS_PORT" acl list)
    note "ACL: $(printf '%s\n' "$out" | grep "^user $COUPON_REDIS_USERNAME " | sed 's/#[0-9a-f]*/#…/')"
    # Redis lists a user's rules in a canonical form: compare the grants.
    grants() { tr ' ' '\n' | grep -E '^[-~&+]' | sort; }
    expect_eq "the ACL user's grants (deploy/redis/couponsvc.acl)" \
        "$(printf '%s\n' "$out" | grep "^user $COUPON_REDIS_USERNAME " | grants | tr '\n' ' ')" \
        "$(printf '%s\n' "$rule" | grants | tr '\n' ' ')"
    expect_eq "POST /coupons" "$(admin_create creds 2)" 201
    expect_eq "POST /claim" "$(curl -s -o "$W/claim.out" -w '%{http_code}' -m 10 -H 'Content-Type: application/json' \
        -d '{"coupon_id":"creds","user_id":"u1"}' "$COUPONSVC_URL/claim")" 201
    expect_eq "the lock after the claim (released)" "$(rc get 'coupon:{creds}:lock')" ''

    su_sql() { psql -X -A -t -h "$SD/pg/sock" -p "$PG_PORT" -U postgres -d postgres -c "$1"; }
    expect_eq "the role's password verifier" \
        "$(su_sql "SELECT left(rolpassword, 14) FROM pg_authid WHERE rolname = 'couponsvc'")" 'SCRAM-SHA-256$'
    expect_eq "pg_hba methods for TCP" \
        "$(su_sql "SELECT string_agg(DISTINCT auth_method, ',') FROM pg_hba_file_rules WHERE type = 'host'")" scram-sha-256
    out=$(PGPASSWORD=wrong psql -X -h 127.0.0.1 -p "$PG_PORT" -U couponsvc -d couponsvc -c 'SELECT 1' 2>&1) &&
        fail "a wrong password was accepted"
    case $out in *"password authentication failed"*) ;; *) fail "wrong password: $out" ;; esac
    for f in stack.conf env redis/redis.conf; do
        expect_eq "mode of $f" "$(stat -c %a "$SD/$f")" 600
    done
    return 0
}

# 8. down under the fallbacks: a replica frozen with SIGSTOP ignores its
#    SIGTERM and is SIGKILLed with its process group after STOP_SECS; a pid
#    file whose pid now belongs to an unrelated process (another start
#    time) is never signalled.
t_down_kills_frozen_spares_reused() {
    local pid start other st
    stack_up 1
    read -r pid start <"$SD/pids/app1.pid"
    kill -s STOP "$pid"
    setsid sleep 120 &
    other=$!
    proc_stat "$other"
    st=$PROC_START
    printf '%s %s\n' "$other" $((st - 1)) >"$SD/pids/app9.pid"
    STOP_SECS=2 stack down >"$W/down.log" 2>&1 || {
        sed 's/^/    | /' "$W/down.log"
        fail "stack.sh down failed"
    }
    sed 's/^/    | /' "$W/down.log"
    alive "$pid" "$start" && fail "the frozen app1 (pid $pid) survived down"
    grep -q 'app1 still running after 2s: SIGKILL' "$W/down.log" || fail "down did not report the SIGKILL of app1"
    alive "$other" "$st" || fail "down signalled pid $other, which is not the stack's"
    grep -q 'stopping app9' "$W/down.log" && fail "down tried to stop the reused pid $other"
    kill "$other"
    return 0
}

# ================================================================= runner ===

# 9. REDIS_TOPOLOGY: sentinel (master, replica, three sentinels; the master
#    killed, the replica takes over, claims follow) and redlock3 (three
#    nodes; restart-redis keeps a node out for longer than the TTL, or not
#    with REDIS_RESTART_DELAY_MS=0). Redis gets the top of the port block:
#    REDIS_PORT=B+5 and the next nodes, the sentinels on B+7..B+9.
claim_lb() { # USER -> HTTP status of a claim of coupon topo through the LB
    curl -s -o "$W/claim.out" -w '%{http_code}' -m 10 -H 'Content-Type: application/json' \
        -d "{\"coupon_id\":\"topo\",\"user_id\":\"$1\"}" "$COUPONSVC_URL/claim"
}
topo_up() { # TOPOLOGY [K=V...]: up with one replica on fresh ports
    local topo=$1 try=1
    shift
    while :; do
        pick_ports
        REDIS_PORT=$((LB_PORT + 5))
        if (
            export REDIS_TOPOLOGY="$topo" SENTINEL_PORT=$((LB_PORT + 6))
            for kv in "$@"; do export "${kv?}"; done
            REPLICAS=1 stack up
        ) >"$W/up.log" 2>&1; then
            break
        fi
        if [ "$try" -lt 3 ] && grep -q 'is already in use' "$W/up.log"; then
            try=$((try + 1))
            continue
        fi
        sed 's/^/    | /' "$W/up.log"
        fail "stack.sh up (REDIS_TOPOLOGY=$topo) failed"
    done
    # shellcheck disable=SC1091
    . "$SD/env"
}
t_redis_topologies() {
    local out pid code i t0 ms
    topo_up sentinel
    out=$(stack status) || fail "status after up: $out"
    expect_eq "sentinels alive" "$(printf '%s\n' "$out" | grep -c '^sentinel[123] .* alive')" 3
    expect_eq "the replica alive" "$(printf '%s\n' "$out" | grep -c '^redis1 .* alive')" 1
    expect_eq "POST /coupons" "$(admin_create topo 10)" 201
    expect_eq "a claim before the failover" "$(claim_lb s1)" 201
    read -r pid _ <"$SD/pids/redis.pid"
    kill -s KILL "$pid"
    code=000
    for i in $(seq 120); do
        code=$(claim_lb "s2-$i")
        [ "$code" = 201 ] && break
        sleep 0.25
    done
    expect_eq "a claim after the master was killed (the replica promoted)" "$code" 201
    grep -q "event=sentinel.master .*addr=127.0.0.1:$((REDIS_PORT + 1)) was=127.0.0.1:$REDIS_PORT" \
        "$SD/logs/app1.log" || fail "app1 did not log the new master: $(grep sentinel "$SD/logs/app1.log")"
    note "sentinel: the replica took over after $i tries"
    stack down >"$W/down.log" 2>&1 || fail "down: $(cat "$W/down.log")"
    for f in "$SD"/pids/*.pid; do
        [ -e "$f" ] && fail "pid file left after down: $f"
    done

    topo_up redlock3 COUPON_LOCK_TTL_MS=1000
    grep -q 'event=lock.topology .*backend=redlock' "$SD/logs/app1.log" ||
        fail "app1 is not on Redlock: $(grep lock.topology "$SD/logs/app1.log")"
    expect_eq "POST /coupons" "$(admin_create topo 10)" 201
    expect_eq "a claim on three nodes" "$(claim_lb r1)" 201
    t0=$(date +%s%N)
    stack restart-redis 1 >"$W/restart.log" 2>&1 || fail "restart-redis 1: $(cat "$W/restart.log")"
    ms=$((($(date +%s%N) - t0) / 1000000))
    grep -q 'stays out 2000 ms' "$W/restart.log" || fail "restart-redis: $(cat "$W/restart.log")"
    expect_gt "ms restart-redis kept node 1 out" "$ms" 1999
    expect_eq "a claim after the delayed restart" "$(claim_lb r2)" 201
    t0=$(date +%s%N)
    REDIS_RESTART_DELAY_MS=0 stack restart-redis 2 >"$W/restart.log" 2>&1 ||
        fail "restart-redis 2: $(cat "$W/restart.log")"
    ms=$((($(date +%s%N) - t0) / 1000000))
    grep -q 'restarted at once' "$W/restart.log" || fail "restart-redis, no delay: $(cat "$W/restart.log")"
    expect_le "ms restart-redis took without the delay" "$ms" 1999
    expect_eq "a claim after the restart at once" "$(claim_lb r3)" 201
    note "redlock3: restart-redis kept the node out ${ms} ms without the delay, 2 s with"
    return 0
}

# 4. loadgen over https://: libcurl does the TLS, loadgen's own HTTP reader
#    reads what comes out of it. An nginx with a throwaway certificate: with
#    --cacert naming it every request is answered on a kept-alive connection;
#    without, every one fails certificate verification (exit 1), so the test
#    shows that TLS really is verified and really is in the path. The nginx
#    runs in a process group of its own, which gets SIGTERM (master and
#    worker) when the test process exits, however it exits; it is also
#    recorded like a stack process, for the safety net in down_and_clean.
t_loadgen_https_cacert() {
    local pid port rc=0 temp_paths='' m user_line=''
    command -v openssl >/dev/null || fail "openssl not installed (make deps: it comes with ca-certificates)"
    mkdir -p "$W/tls" "$SD/pids"
    openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=127.0.0.1" \
        -addext "subjectAltName=IP:127.0.0.1" \
        -keyout "$W/tls/key.pem" -out "$W/tls/cert.pem" >"$W/tls/openssl.log" 2>&1 ||
        fail "openssl could not make a certificate: $(cat "$W/tls/openssl.log")"
    for m in proxy fastcgi uwsgi scgi; do
        nginx -V 2>&1 | grep -q -- "--without-http_${m}_module" ||
            temp_paths="$temp_paths ${m}_temp_path $W/tls/$m;"
    done
    [ "$(id -u)" = 0 ] && user_line="user root;"
    pick_ports
    port=$LB_PORT
    cat >"$W/tls/nginx.conf" <<NGINX
$user_line
worker_processes 1;
pid $W/tls/nginx.pid;
error_log $W/tls/error.log warn;
events { worker_connections 256; }
http {
    access_log off;
    client_body_temp_path $W/tls/body; $temp_paths
    server {
        listen 127.0.0.1:$port ssl;
        ssl_certificate $W/tls/cert.pem;
        ssl_certificate_key $W/tls/key.pem;
        location / { return 200 "ok"; }
    }
}
NGINX
    setsid nginx -p "$W/tls" -e "$W/tls/error.log" -c "$W/tls/nginx.conf" -g 'daemon off;' \
        >"$W/tls/nginx.out" 2>&1 </dev/null &
    pid=$!
    proc_record "$SD/pids/tlsnginx.pid" "$pid" || fail "nginx (pid $pid) did not start: $(cat "$W/tls/nginx.out")"
    trap 'proc_kill_group "$SD/pids/tlsnginx.pid" TERM' EXIT
    trap 'exit 143' TERM
    for _ in $(seq 50); do
        curl -s -o /dev/null --cacert "$W/tls/cert.pem" "https://127.0.0.1:$port/" && break
        sleep 0.1
    done

    "$LOADGEN" --url "https://127.0.0.1:$port" --method GET --path / -c 4 -t 2 -n 2000 \
        --cacert "$W/tls/cert.pem" -q --json "$W/tls.json" >"$W/tls.out" 2>&1 || rc=$?
    sed 's/^/    | /' "$W/tls.out"
    expect_eq "loadgen exit status with --cacert" "$rc" 0
    expect_eq "status.200 with --cacert" "$(jget "$W/tls.json" status.200)" 2000
    expect_eq "transport errors with --cacert" "$(jget "$W/tls.json" transport_errors)" 0

    rc=0
    "$LOADGEN" --url "https://127.0.0.1:$port" --method GET --path / -c 2 -t 1 -n 10 \
        -q --json "$W/notrust.json" >"$W/notrust.out" 2>&1 || rc=$?
    expect_eq "loadgen exit status without --cacert (no answer at all)" "$rc" 1
    expect_eq "transport errors without --cacert" "$(jget "$W/notrust.json" transport_errors)" 10
    grep -q -i 'certificate' "$W/notrust.out" ||
        fail "the error does not name the certificate: $(cat "$W/notrust.out")"

    return 0 # the EXIT trap stops nginx
}

if [ "${1:-}" = --run-one ]; then
    # A test process: --run-one NAME DIR.
    W=$3
    SD=$W/stack
    cd "$W" || exit 1
    "$2"
    exit $?
fi

filter=${1:-}
passed=0
failed=0
CUR_W=

# down_and_clean DIR KEEP: take the test's stack down (whatever state it is
# in), then remove the directory, or keep its logs when KEEP=1.
down_and_clean() {
    local f co sd
    if [ -f "$1/stack/stack.conf" ]; then
        STACK_DIR=$1/stack bash "$STACK_SH" down >>"$1/down.log" 2>&1 ||
            echo "  (stack.sh down failed in $1: see $1/down.log)"
    fi
    # Checkouts a test made (see t_checkout_in_0700_dir): their stacks live
    # where each recorded it, outside the test's directory.
    # shellcheck disable=SC2013 # one path per line, without spaces
    for co in $(cat "$1/checkouts" 2>/dev/null); do
        sd=$(cat "$co/build/stack.dir" 2>/dev/null) || continue
        bash "$co/deploy/stack.sh" down >>"$1/down.log" 2>&1 ||
            echo "  (stack.sh down failed in $co: see $1/down.log)"
        for f in "$sd"/pids/*.pid; do
            [ -e "$f" ] && proc_kill_group "$f" KILL
        done
        case $sd in /tmp/couponsvc-stack-*) rm -rf "$sd" ;; esac
    done
    # Safety net, for a stack.sh whose down is broken: a recorded process
    # group that is still there gets SIGKILL.
    for f in "$1"/stack/pids/*.pid; do
        [ -e "$f" ] || continue
        if proc_group_left "$f"; then
            echo "  leftover ${f##*/} after down: SIGKILL to its process group"
            proc_kill_group "$f" KILL
        fi
    done
    if [ "$2" = 1 ]; then
        rm -rf "$1/stack/pg/data"
    else
        rm -rf "$1"
    fi
}

on_signal() {
    trap '' INT TERM
    [ -n "$CUR_W" ] && down_and_clean "$CUR_W" 1
    echo "interrupted"
    echo "$passed passed, $((failed + 1)) failed"
    exit 130
}
trap on_signal INT TERM

missing=''
for f in "$COUPONSVC" "$LOADGEN"; do [ -x "$f" ] || missing="$missing $f"; done
for c in curl psql ss nginx redis-server timeout "$PY"; do
    command -v "$c" >/dev/null 2>&1 || missing="$missing $c"
done
if [ -n "$missing" ]; then
    echo "FAIL prerequisites: missing$missing (run make, make $ROOT/build/loadgen, make deps)"
    echo "0 passed, 1 failed"
    exit 1
fi

for t in $TESTS; do
    name=${t#t_}
    case $name in *"$filter"*) ;; *) continue ;; esac
    W=$(mktemp -d /tmp/couponsvc-stacktest.XXXXXX) || exit 1
    chmod 755 "$W" # user postgres must reach $W/stack/pg when we are root
    CUR_W=$W
    t0=$EPOCHREALTIME
    rc=0
    timeout -k 5 "$TEST_TIMEOUT" bash "$SELF" --run-one "$t" "$W" >"$W/test.out" 2>&1 || rc=$?
    secs=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
    if [ "$rc" = 0 ]; then
        echo "ok $name (${secs} s)"
        [ -n "${VERBOSE:-}" ] && cat "$W/test.out"
        passed=$((passed + 1))
        down_and_clean "$W" 0
    else
        echo "FAIL $name (${secs} s)"
        [ "$rc" = 124 ] && echo "  timed out after $TEST_TIMEOUT s"
        cat "$W/test.out"
        for log in "$W"/stack/logs/*.log; do
            [ -s "$log" ] || continue
            case $log in */initdb.log | */migrate.log) continue ;; esac
            echo "  --- last lines of $log"
            tail -n 8 "$log" | sed 's/^/    | /'
        done
        failed=$((failed + 1))
        down_and_clean "$W" 1
        echo "  state kept in $W"
    fi
    CUR_W=
done

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
