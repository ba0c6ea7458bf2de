#!/usr/bin/env bash
# bench-loadgen.sh -- is build/loadgen fast enough not to be the bottleneck?
#
# Starts nginx on a free 127.0.0.1 port as a trivial endpoint (return 200
# "ok", keep-alive), then runs wrk and loadgen against it for the same
# duration, connections and threads, and prints both rates and their ratio.
# The goal is loadgen/wrk >= 0.9: then a slow service measured with loadgen
# is the service, not the load generator.
#
# Everything runs in a temp dir and is stopped on exit, error or Ctrl-C.
#
# Environment (defaults in brackets):
#   LOADGEN            path to loadgen                    [build/loadgen]
#   BENCH_DURATION     seconds per tool                   [5]
#   BENCH_CONNECTIONS  connections per tool               [64]
#   BENCH_THREADS      threads per tool                   [2]
#   BENCH_ROUNDS       alternating rounds; medians compared [3]
#   BENCH_NGINX_WORKERS nginx worker_processes            [1]
#   BENCH_STRICT       1: exit 1 when the ratio is below the goal  [0]
#
# The tools alternate (wrk, loadgen, wrk, ...) so that a slow patch of a
# shared machine hurts both alike, and the medians are compared.
#
# On a small machine nginx and the client share the CPU, so the rate a tool
# reaches depends on the CPU it spends per request: what it spends, nginx
# cannot. The script therefore also prints each tool's CPU time (user +
# system, from bash's `time`) per request. On the 2-core development VM
# loadgen spends about 6 us per request and wrk about 8; loadgen used to
# spend 12 (when libcurl ran every request as a transfer; see the top of
# loadgen.c) and then reached only 0.82 of wrk's rate.
set -euo pipefail

LOADGEN=${LOADGEN:-build/loadgen}
DURATION=${BENCH_DURATION:-5}
CONNS=${BENCH_CONNECTIONS:-64}
THREADS=${BENCH_THREADS:-2}
ROUNDS=${BENCH_ROUNDS:-3}
NGINX_WORKERS=${BENCH_NGINX_WORKERS:-1}
STRICT=${BENCH_STRICT:-0}
GOAL=0.9

die() { echo "bench-loadgen: $*" >&2; exit 1; }

[ -x "$LOADGEN" ] || die "$LOADGEN not built (make $LOADGEN)"
command -v wrk >/dev/null || die "wrk not installed (apt-get install wrk)"
NGINX=$(command -v nginx || true)
[ -n "$NGINX" ] || NGINX=/usr/sbin/nginx
[ -x "$NGINX" ] || die "nginx not installed (apt-get install nginx-light)"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/bench-loadgen.XXXXXX")
NGINX_PID=

# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    if [ -n "$NGINX_PID" ] && kill -0 "$NGINX_PID" 2>/dev/null; then
        kill -TERM "$NGINX_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$NGINX_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$NGINX_PID" 2>/dev/null || true
        wait "$NGINX_PID" 2>/dev/null || true
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Temp paths for every module compiled in, so nothing is written outside TMP.
# (nginx-light leaves some modules out; naming their paths would be an error.)
temp_paths="client_body_temp_path $TMP/body;"
for m in proxy fastcgi uwsgi scgi; do
    if ! "$NGINX" -V 2>&1 | grep -q -- "--without-http_${m}_module"; then
        temp_paths="$temp_paths ${m}_temp_path $TMP/$m;"
    fi
done

write_conf() { # port
    {
        [ "$(id -u)" = 0 ] && echo "user root;"
        cat <<EOF
worker_processes $NGINX_WORKERS;
daemon off;
master_process on;
pid $TMP/nginx.pid;
error_log $TMP/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    $temp_paths
    keepalive_timeout 60s;
    keepalive_requests 100000000;
    server {
        listen 127.0.0.1:$1 reuseport;
        location / { return 200 "ok"; }
    }
}
EOF
    } > "$TMP/nginx.conf"
}

# Pick a random port below the ephemeral range (where the clients' own
# sockets would get in the way); if nginx cannot bind it, try another.
eph_low=$(awk '{ print $1 }' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
[ "$eph_low" -gt 12000 ] || eph_low=32768
PORT=
for _ in $(seq 20); do
    p=$((10000 + RANDOM % (eph_low - 10000)))
    if ss -Htln "sport = :$p" 2>/dev/null | grep -q .; then continue; fi
    write_conf "$p"
    "$NGINX" -e "$TMP/error.log" -p "$TMP" -c "$TMP/nginx.conf" &
    NGINX_PID=$!
    for _ in $(seq 50); do
        if ! kill -0 "$NGINX_PID" 2>/dev/null; then break; fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then PORT=$p; break; fi
        sleep 0.1
    done
    [ -n "$PORT" ] && break
    kill -TERM "$NGINX_PID" 2>/dev/null || true
    wait "$NGINX_PID" 2>/dev/null || true
    NGINX_PID=
done
[ -n "$PORT" ] || { cat "$TMP/error.log" >&2 || true; die "could not start nginx"; }
URL="http://127.0.0.1:$PORT"

echo "endpoint: nginx ($NGINX_WORKERS worker(s)) at $URL/, return 200 \"ok\", keep-alive"
echo "each tool: ${DURATION}s, $CONNS connections, $THREADS threads ($(nproc) cores)"
bound=$(awk -v d="$DURATION" 'BEGIN { printf "%d", d + 30 }')

# A short warm-up, so neither tool pays for nginx's first accepts.
timeout --foreground "$bound" wrk -t "$THREADS" -c "$CONNS" -d 1s "$URL/" >/dev/null

# Each run prints "<req/s> <CPU us per request>". The CPU time is the
# tool's user + system time as bash's `time` reports it.
TIMEFORMAT='%3U %3S'

cpu_per_req() { # time-file rate
    awk -v r="$2" -v d="$DURATION" '{ printf "%.2f", ($1 + $2) * 1e6 / (r * d) }' "$1"
}

run_wrk() {
    { time timeout --foreground "$bound" wrk -t "$THREADS" -c "$CONNS" -d "${DURATION}s" "$URL/" \
        > "$TMP/wrk.txt"; } 2> "$TMP/wrk.time"
    r=$(awk '/^Requests\/sec:/ { print $2 }' "$TMP/wrk.txt")
    [ -n "$r" ] || { cat "$TMP/wrk.txt" >&2; die "no rate in wrk's output"; }
    echo "$r $(cpu_per_req "$TMP/wrk.time" "$r")"
}

run_loadgen() {
    { time timeout --foreground "$bound" "$LOADGEN" --url "$URL" --method GET --path / -c "$CONNS" \
        -t "$THREADS" -d "$DURATION" -q --json "$TMP/loadgen.json" > "$TMP/loadgen.txt"; } \
        2> "$TMP/loadgen.time"
    r=$(sed -n 's/.*"achieved_rate":\([0-9.]*\).*/\1/p' "$TMP/loadgen.json")
    [ -n "$r" ] || { cat "$TMP/loadgen.txt" >&2; die "no rate in loadgen's JSON"; }
    e=$(sed -n 's/.*"transport_errors":\([0-9]*\).*/\1/p' "$TMP/loadgen.json")
    [ "$e" = 0 ] || echo "bench-loadgen: loadgen saw $e transport errors" >&2
    echo "$r $(cpu_per_req "$TMP/loadgen.time" "$r")"
}

median() {
    tr ' ' '\n' | grep . | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}

# Alternate the tools, so a slow patch of the machine hurts both alike, and
# compare medians.
wrk_all=''
lg_all=''
wrk_cpu=''
lg_cpu=''
for round in $(seq "$ROUNDS"); do
    read -r w wc <<< "$(run_wrk)"
    read -r l lc <<< "$(run_loadgen)"
    printf 'round %d: wrk %8.0f req/s %5.2f us CPU/req   loadgen %8.0f req/s %5.2f us CPU/req   (%.2f)\n' \
        "$round" "$w" "$wc" "$l" "$lc" "$(awk -v a="$l" -v b="$w" 'BEGIN { print a / b }')"
    wrk_all="$wrk_all $w"
    lg_all="$lg_all $l"
    wrk_cpu="$wrk_cpu $wc"
    lg_cpu="$lg_cpu $lc"
done
wrk_rps=$(echo "$wrk_all" | median)
lg_rps=$(echo "$lg_all" | median)

printf 'wrk      %10.0f req/s, %5.2f us CPU per request (medians of %d)\n' \
    "$wrk_rps" "$(echo "$wrk_cpu" | median)" "$ROUNDS"
printf 'loadgen  %10.0f req/s, %5.2f us CPU per request (medians of %d)\n' \
    "$lg_rps" "$(echo "$lg_cpu" | median)" "$ROUNDS"
ratio=$(awk -v a="$lg_rps" -v b="$wrk_rps" 'BEGIN { printf "%.2f", a / b }')
echo "loadgen/wrk = $ratio (goal >= $GOAL)"
if awk -v r="$ratio" -v g="$GOAL" 'BEGIN { exit !(r < g) }'; then
    echo "bench-loadgen: below the goal" >&2
    [ "$STRICT" = 1 ] && exit 1
fi
exit 0
