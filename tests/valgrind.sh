#!/usr/bin/env bash
# valgrind.sh: couponsvc under valgrind --leak-check=full, over a short load.
#
#   tests/valgrind.sh [COUPONSVC]        (make valgrind)
#
# Starts its own PostgreSQL and Redis on free loopback ports in a temporary
# directory, applies the migrations, runs one couponsvc under memcheck, sends
# it CLAIMS claims (a third of them for a coupon with half as much stock,
# so 201 and 410 both happen) plus a mix of bad requests, reads and
# /metrics, then SIGTERMs it and waits for a clean exit. Every process it
# started is stopped by pid on the way out.
#
# Exit status: 0 when memcheck reports no errors and no definite leaks and
# the service exited 0; 1 otherwise. The full memcheck log is kept in
# $OUT (default build/valgrind.log).
#
# Settings (environment): CLAIMS (300), PARALLEL (8), OUT, PG_BIN
# (/usr/lib/postgresql/15/bin), KEEP=1 keeps the temporary directory.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SVC=${1:-$ROOT/build/couponsvc}
CLAIMS=${CLAIMS:-300}
PARALLEL=${PARALLEL:-8}
OUT=${OUT:-$ROOT/build/valgrind.log}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}

say() { printf 'valgrind.sh: %s\n' "$*"; }
fail() { printf 'valgrind.sh: error: %s\n' "$*" >&2; exit 1; }

command -v valgrind >/dev/null || fail "valgrind is not installed (apt-get install valgrind)"
command -v redis-server >/dev/null || fail "redis-server is not installed"
[ -x "$PG_BIN/initdb" ] || fail "no PostgreSQL server binaries in $PG_BIN"
[ -x "$SVC" ] || fail "no $SVC (run make first)"
if nm -D "$SVC" 2>/dev/null | grep -q __asan_init; then
    fail "$SVC is built with AddressSanitizer; valgrind needs a plain build"
fi

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

DIR=$(mktemp -d /tmp/couponsvc-vg-XXXXXX)
chmod 755 "$DIR"
PG_PID='' REDIS_PID='' SVC_PID=''
cleanup() {
    [ -n "$SVC_PID" ] && kill -KILL "$SVC_PID" 2>/dev/null || true
    [ -n "$REDIS_PID" ] && kill -TERM "$REDIS_PID" 2>/dev/null || true
    # $PG_PID may be su; the postmaster's own pid is in postmaster.pid.
    # SIGINT is PostgreSQL's fast shutdown.
    local pm=
    [ -f "$DIR/pg/postmaster.pid" ] && pm=$(head -n 1 "$DIR/pg/postmaster.pid")
    for p in $pm $PG_PID; do
        kill -INT "$p" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
    done
    if [ "${KEEP:-0}" = 1 ]; then say "kept $DIR"; else rm -rf "$DIR"; fi
}
trap cleanup EXIT

# ------------------------------------------------------------- backends ---

PG_PORT=$(free_port)
REDIS_PORT=$(free_port)
HTTP_PORT=$(free_port)
mkdir "$DIR/pg"
as_pg() {
    if [ "$(id -u)" = 0 ]; then
        chown postgres "$DIR/pg"
        su postgres -s /bin/sh -c "$*"
    else
        sh -c "$*"
    fi
}
as_pg "'$PG_BIN/initdb' -D '$DIR/pg' -A trust -U postgres --no-sync -E UTF8" \
    >"$DIR/initdb.log" 2>&1 || { cat "$DIR/initdb.log"; fail "initdb failed"; }
touch "$DIR/pg.log" && chmod 666 "$DIR/pg.log"
as_pg "exec '$PG_BIN/postgres' -D '$DIR/pg' -p $PG_PORT -k '$DIR/pg' \
    -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off" \
    >>"$DIR/pg.log" 2>&1 &
PG_PID=$!
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --maxmemory-policy noeviction --dir "$DIR" >"$DIR/redis.log" 2>&1 &
REDIS_PID=$!

for _ in $(seq 300); do
    "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" && break
    sleep 0.1
done
"$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" || { cat "$DIR/pg.log"; fail "PostgreSQL did not start"; }
psql -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -c 'CREATE DATABASE vg' postgres

export COUPON_PG_DSN="host=127.0.0.1 port=$PG_PORT dbname=vg user=postgres"
export COUPON_REDIS_ADDRS=127.0.0.1:$REDIS_PORT
export COUPON_HTTP_ADDR=127.0.0.1:$HTTP_PORT
export COUPON_ADMIN_TOKEN=vg-token
export COUPON_INSTANCE_ID=vg
# Memcheck runs the service 20-50 times slower: give the backends' timeouts
# room, so that the run measures leaks, not timeouts.
export COUPON_THREADS=4
export COUPON_LOCK_TTL_MS=30000
export COUPON_REDIS_TIMEOUT_MS=5000
export COUPON_LOCK_WAIT_MS=20000
export COUPON_PG_STATEMENT_TIMEOUT_MS=20000
"$SVC" migrate >"$DIR/migrate.log" 2>&1 || { cat "$DIR/migrate.log"; fail "migrate failed"; }

# -------------------------------------------------------------- service ---

mkdir -p "$(dirname "$OUT")"
valgrind --tool=memcheck --leak-check=full --show-leak-kinds=definite,indirect \
    --errors-for-leak-kinds=definite --track-origins=yes --num-callers=30 \
    --error-exitcode=99 --log-file="$OUT" "$SVC" >"$DIR/svc.log" 2>&1 &
SVC_PID=$!
URL=http://127.0.0.1:$HTTP_PORT
for _ in $(seq 600); do
    curl -fs "$URL/healthz" >/dev/null 2>&1 && break
    kill -0 "$SVC_PID" 2>/dev/null || { cat "$DIR/svc.log"; fail "couponsvc exited during start"; }
    sleep 0.1
done
curl -fs "$URL/healthz" >/dev/null || fail "couponsvc did not answer /healthz"
say "couponsvc under memcheck on $URL (pid $SVC_PID)"

JSON='Content-Type: application/json'
AUTH="Authorization: Bearer $COUPON_ADMIN_TOKEN"
stock=$((CLAIMS / 6))
curl -fs -o /dev/null -H "$JSON" -H "$AUTH" -d "{\"id\":\"vg1\",\"total\":$stock}" "$URL/coupons"
curl -fs -o /dev/null -H "$JSON" -H "$AUTH" -d "{\"id\":\"vg2\",\"total\":$CLAIMS}" "$URL/coupons"

start=$(date +%s)
seq "$CLAIMS" | xargs -P "$PARALLEL" -I{} sh -c '
    c=vg1; [ $(({} % 3)) = 0 ] || c=vg2
    curl -s -o /dev/null -w "%{http_code}\n" -m 60 -H "Content-Type: application/json" \
        -d "{\"coupon_id\":\"$c\",\"user_id\":\"user-{}\"}" "$0/claim"
' "$URL" >"$DIR/status.txt"
# The same users again (200 already_claimed), and some of everything else.
seq 20 | xargs -P 4 -I{} curl -s -o /dev/null -w "%{http_code}\n" -m 60 \
    -H "$JSON" -d '{"coupon_id":"vg2","user_id":"user-{}"}' "$URL/claim" >>"$DIR/status.txt"
for body in '{"coupon_id":"vg1",' '[]' '{"coupon_id":"x y","user_id":"u"}' \
    '{"coupon_id":"nope","user_id":"u"}' '{"coupon_id":"vg1","user_id":"u","coupon_id":"b"}'; do
    curl -s -o /dev/null -w "%{http_code}\n" -m 60 -H "$JSON" -d "$body" "$URL/claim" >>"$DIR/status.txt"
done
for path in /coupons/vg1 /coupons/none /coupons/bad%20id /readyz /metrics /nowhere; do
    curl -s -o /dev/null -w "%{http_code}\n" -m 60 "$URL$path" >>"$DIR/status.txt"
done
curl -s -o /dev/null -w "%{http_code}\n" -m 60 -H "$JSON" -H "$AUTH" \
    -d '{"id":"vg1","total":1}' "$URL/coupons" >>"$DIR/status.txt"
head -c 5000 /dev/zero | tr '\0' a >"$DIR/big.txt"
curl -s -o /dev/null -w "%{http_code}\n" -m 60 -H "$JSON" \
    --data-binary @"$DIR/big.txt" "$URL/claim" >>"$DIR/status.txt"
elapsed=$(( $(date +%s) - start ))
say "$(wc -l <"$DIR/status.txt") requests in ${elapsed}s; statuses: $(sort "$DIR/status.txt" | uniq -c | awk '{printf "%s×%s ", $2, $1}')"

kill -TERM "$SVC_PID"
rc=0
wait "$SVC_PID" || rc=$?
SVC_PID=
say "couponsvc exited with status $rc"

definite=$(sed -n 's/.*definitely lost: \([0-9,]*\) bytes.*/\1/p' "$OUT" | tr -d , | tail -n 1)
errors=$(sed -n 's/.*ERROR SUMMARY: \([0-9]*\) errors.*/\1/p' "$OUT" | tail -n 1)
say "memcheck: ${errors:-?} errors, ${definite:-0} bytes definitely lost (log: $OUT)"
sed -n '/HEAP SUMMARY/,/ERROR SUMMARY/p' "$OUT" | grep -v '^==[0-9]*== *$' | sed 's/^==[0-9]*== /    /'

claimed=$(psql -tA -h 127.0.0.1 -p "$PG_PORT" -U postgres -c \
    "SELECT (SELECT claimed FROM coupons WHERE id='vg1') || ' of $stock; claim rows, all coupons: ' || (SELECT count(*) FROM claims)" vg)
say "database: coupon vg1 claimed $claimed"

if [ "$rc" != 0 ] || [ "${errors:-1}" != 0 ] || [ "${definite:-0}" != 0 ]; then
    grep -A 30 'definitely lost in\|Invalid \|uninitialised\|Mismatched' "$OUT" | head -120
    fail "memcheck found problems (exit $rc), see $OUT"
fi
say "clean"
