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
    t_verifier_catches_injected_faults t_loadgen_https_cacert"

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

# proc_start PID: start time of a process (clock ticks since boot), to tell
# it from a later process given the same pid.
proc_start() {
    local line rest
    { read -r line <"/proc/$1/stat"; } 2>/dev/null || return 1
    rest=${line##*) }
    # shellcheck disable=SC2086
    set -- $rest
    printf '%s\n' "${20}"
}

# alive PID:START: is that very process still there (and not a zombie)?
alive() {
    local got
    got=$(proc_start "${1%%:*}") || return 1
    [ "$got" = "${1#*:}" ] || return 1
    case $(sed -n 's/^State:[[:space:]]*\(.\).*/\1/p' "/proc/${1%%:*}/status" 2>/dev/null) in
    Z | X | '') return 1 ;;
    esac
}

# stack_procs: pid:start of every process of the stack: the recorded pids and
# all their descendants (PostgreSQL backends, nginx workers).
stack_procs() {
    local roots='' f
    for f in "$SD"/pids/*.pid; do
        [ -e "$f" ] && roots="$roots $(cat "$f")"
    done
    # shellcheck disable=SC2086
    "$PY" - $roots <<'EOF'
import os, sys
ppid, start = {}, {}
for p in os.listdir("/proc"):
    if not p.isdigit():
        continue
    try:
        s = open("/proc/%s/stat" % p).read()
    except OSError:
        continue
    f = s[s.rindex(")") + 2:].split()
    ppid[int(p)], start[int(p)] = int(f[1]), f[19]
todo, seen = [int(a) for a in sys.argv[1:]], set()
while todo:
    p = todo.pop()
    if p in seen or p not in start:
        continue
    seen.add(p)
    todo += [c for c, pp in ppid.items() if pp == p]
for p in sorted(seen):
    print("%d:%s" % (p, start[p]))
EOF
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

    for p in $procs; do
        alive "$p" && fail "process ${p%%:*} of the stack is still alive after down: $(tr '\0' ' ' <"/proc/${p%%:*}/cmdline" | sed 's/ *$//')"
    done
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
    pid=$(cat "$SD/pids/app2.pid")
    start=$(cat "$SD/pids/app2.start")
    alive "$pid:$start" || fail "app2 (pid $pid) is not running before the test"

    claim_load_start 6 kill-hot
    sleep 2
    alive "$pid:$start" || fail "app2 died on its own before the kill"
    kill -9 "$pid"
    note "kill -9 app2 (pid $pid) at ~2 s"
    claim_load_end

    alive "$pid:$start" && fail "app2 still alive after kill -9"
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
    for i in 1 2 3; do old="$old $(cat "$SD/pids/app$i.pid")"; done

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

    for i in 1 2 3; do new="$new $(cat "$SD/pids/app$i.pid")"; done
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
#    PostgreSQL: (a) a claim row without its counter, (b) a user twice.
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
    return 0
}

# ================================================================= runner ===

# 4. loadgen over https://: libcurl does the TLS, loadgen's own HTTP reader
#    reads what comes out of it. An nginx with a throwaway certificate: with
#    --cacert naming it every request is answered on a kept-alive connection;
#    without, every one fails certificate verification (exit 1), so the test
#    shows that TLS really is verified and really is in the path. The nginx
#    is stopped with SIGTERM (master and worker) when the test process
#    exits, however it exits; it is also recorded like a stack process, for
#    the safety net in down_and_clean. (That net alone is not enough: its
#    SIGKILL reaches only the master, and the worker would live on.)
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
    nginx -p "$W/tls" -e "$W/tls/error.log" -c "$W/tls/nginx.conf" -g 'daemon off;' \
        >"$W/tls/nginx.out" 2>&1 </dev/null &
    pid=$!
    # shellcheck disable=SC2064 # pid is meant to be expanded now
    trap "kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null" EXIT
    trap 'exit 143' TERM
    echo "$pid" >"$SD/pids/tlsnginx.pid"
    awk '{ sub(/.*\) /, ""); print $20 }' "/proc/$pid/stat" >"$SD/pids/tlsnginx.start"
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
    local f pid start
    if [ -f "$1/stack/stack.conf" ]; then
        STACK_DIR=$1/stack bash "$STACK_SH" down >>"$1/down.log" 2>&1 ||
            echo "  (stack.sh down failed in $1: see $1/down.log)"
    fi
    # Safety net, for a stack.sh whose down is broken: a recorded process
    # that is still that very process gets SIGKILL.
    for f in "$1"/stack/pids/*.pid; do
        [ -e "$f" ] || continue
        pid=$(cat "$f") start=$(cat "${f%.pid}.start" 2>/dev/null) || continue
        if [ "$(awk '{ sub(/.*\) /, ""); print $20 }' "/proc/$pid/stat" 2>/dev/null)" = "$start" ]; then
            echo "  leftover ${f##*/} (pid $pid) after down: SIGKILL"
            kill -s KILL "$pid" 2>/dev/null
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
