#!/usr/bin/env bash
# stack.sh: the whole couponsvc topology on one machine, without Docker.
#
#   deploy/stack.sh up            PostgreSQL, Redis, migrations, N replicas,
#                                 nginx in front; returns once all are ready
#   deploy/stack.sh down          stop exactly what `up` started, by pid
#   deploy/stack.sh status        one line per process: pid, port, alive/dead
#   deploy/stack.sh restart-app   restart only the replicas, one at a time
#                                 (rolling), with the COUPON_* settings of
#                                 the current environment
#
# Everything lives on 127.0.0.1 and in one directory, $STACK_DIR: data, unix
# sockets, configuration, logs and one pid file per process. `up` starts from
# an empty PostgreSQL and Redis every time; nothing here is meant to keep data.
#
# Settings (environment):
#   REPLICAS       number of couponsvc processes            (3)
#   STACK_DIR      state directory                          (<repo>/build/stack)
#   LB_PORT        nginx, the load balancer                 (8080)
#   APP_PORT_BASE  replica i listens on APP_PORT_BASE + i   (8080: 8081, 8082..)
#   PG_PORT        PostgreSQL                               (15432)
#   REDIS_PORT     Redis                                    (16379)
#   COUPONSVC      the service binary                       (<repo>/build/couponsvc)
#   PG_BIN         PostgreSQL server binaries  (/usr/lib/postgresql/15/bin)
#   PG_PASSWORD    password of the couponsvc database role  (couponsvc)
#   WAIT_SECS      bound on each readiness wait             (30)
#   STOP_SECS      grace after the stop signal before KILL  (15; the
#                  service drains for up to 10 s on SIGTERM)
#   COUPON_ADMIN_TOKEN                                      (dev-admin-token)
#   COUPON_*       every other COUPON_ variable (COUPON_CLAIM_MODE,
#                  COUPON_LOCK_TTL_MS, COUPON_FAULT, ...) reaches the replicas
#                  unchanged. The stack sets COUPON_HTTP_ADDR, COUPON_PG_DSN,
#                  COUPON_REDIS_ADDRS and COUPON_INSTANCE_ID itself.
#
# Stop signals: nginx, couponsvc and Redis get SIGTERM (nginx: fast shutdown;
# couponsvc: stop accepting, finish in-flight requests, exit 0; Redis: no
# save, as configured). PostgreSQL gets SIGINT, its "fast" shutdown: its
# SIGTERM ("smart") waits for every client to disconnect, possibly forever.
# Whatever is still alive after STOP_SECS gets SIGKILL, and so do descendants
# left behind by a killed parent (PostgreSQL backends, nginx workers).
#
# As root, PostgreSQL runs as the `postgres` user (initdb refuses root) and
# nginx workers as `nobody`; everything else runs as the caller.

set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PROG=stack

REPLICAS=${REPLICAS:-3}
STACK_DIR=${STACK_DIR:-$ROOT/build/stack}
LB_PORT=${LB_PORT:-8080}
APP_PORT_BASE=${APP_PORT_BASE:-8080}
# Defaults below Linux's ephemeral range (32768-60999): a port in that range
# can be taken at any moment as the local end of some outgoing connection,
# and `up` then fails with "address already in use".
PG_PORT=${PG_PORT:-15432}
REDIS_PORT=${REDIS_PORT:-16379}
COUPONSVC=${COUPONSVC:-$ROOT/build/couponsvc}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
PG_PASSWORD=${PG_PASSWORD:-couponsvc}
WAIT_SECS=${WAIT_SECS:-30}
STOP_SECS=${STOP_SECS:-15}
ADMIN_TOKEN=${COUPON_ADMIN_TOKEN:-dev-admin-token}

# Relative paths are taken from the caller's directory, then made absolute:
# pid files, nginx and PostgreSQL need paths that do not depend on a cwd.
case $STACK_DIR in /*) ;; *) STACK_DIR=$PWD/$STACK_DIR ;; esac
case $COUPONSVC in /*) ;; *) COUPONSVC=$PWD/$COUPONSVC ;; esac
SD=$STACK_DIR
MARKER=$SD/.couponsvc-stack

# ------------------------------------------------------------- helpers ----

say() { printf '%s: %s\n' "$PROG" "$*"; }
warn() { printf '%s: warning: %s\n' "$PROG" "$*" >&2; }
fail() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }

# Print the last lines of a log, indented, to stderr.
tail_log() {
    if [ -s "$1" ]; then
        printf '%s: --- last lines of %s ---\n' "$PROG" "$1" >&2
        tail -n "${2:-25}" "$1" | sed 's/^/    | /' >&2
    fi
}

is_uint() { case $1 in '' | *[!0-9]*) return 1 ;; *) return 0 ;; esac; }

check_settings() {
    for v in REPLICAS LB_PORT APP_PORT_BASE PG_PORT REDIS_PORT WAIT_SECS STOP_SECS; do
        eval "val=\$$v"
        # shellcheck disable=SC2154 # val is set by the eval above
        is_uint "$val" || fail "$v must be a non-negative integer, got '$val'"
    done
    # The password goes into a URI and an SQL literal: keep it plain.
    case $PG_PASSWORD in
    '' | *[!A-Za-z0-9_.-]*) fail "PG_PASSWORD may only contain A-Z a-z 0-9 _ . -" ;;
    esac
    case $ADMIN_TOKEN in
    '' | *[!A-Za-z0-9_.~+/=-]*) fail "COUPON_ADMIN_TOKEN must be a non-empty token (A-Z a-z 0-9 _ . ~ + / = -)" ;;
    esac
}

# --- processes: identity, descendants, stopping ---------------------------

# The start time (clock ticks since boot, /proc/PID/stat field 22) tells a
# process apart from a later one that was given the same pid. Everything we
# signal is checked against the start time recorded when it was started.
proc_start() {
    local line rest
    { read -r line <"/proc/$1/stat"; } 2>/dev/null || return 1
    rest=${line##*) } # the command name may hold spaces; skip past it
    # shellcheck disable=SC2086 # word splitting of the fields is intended
    set -- $rest
    printf '%s\n' "${20}"
}

# Print "pid ppid" for every process on the machine.
ppid_table() {
    local f line rest
    for f in /proc/[0-9]*/stat; do
        { read -r line <"$f"; } 2>/dev/null || continue
        rest=${line##*) }
        # shellcheck disable=SC2086
        set -- $rest
        printf '%s %s\n' "${line%% *}" "$2"
    done
}

# Print "pid:starttime" for every descendant of pid $1.
descendants() {
    local table frontier next p c ppid s
    table=$(ppid_table)
    frontier=$1
    while [ -n "$frontier" ]; do
        next=
        for p in $frontier; do
            while read -r c ppid; do
                [ "$ppid" = "$p" ] || continue
                s=$(proc_start "$c") || continue
                printf '%s:%s\n' "$c" "$s"
                next="$next $c"
            done <<EOF
$table
EOF
        done
        frontier=$next
    done
}

pidfile() { printf '%s/pids/%s.pid\n' "$SD" "$1"; }

# Record the process we just started as component $1.
record_pid() {
    local start
    start=$(proc_start "$2") || {
        tail_log "$SD/logs/$1.log"
        fail "$1 exited immediately (pid $2)"
    }
    printf '%s\n' "$2" >"$(pidfile "$1")"
    printf '%s\n' "$start" >"$SD/pids/$1.start"
}

# Print the pid of component $1 if that very process is alive; else fail.
live_pid() {
    local f pid want got
    f=$(pidfile "$1")
    [ -f "$f" ] || return 1
    read -r pid <"$f" || return 1
    is_uint "$pid" || return 1
    read -r want <"$SD/pids/$1.start" 2>/dev/null || return 1
    got=$(proc_start "$pid") || return 1
    [ "$got" = "$want" ] || return 1
    # A zombie is dead for our purposes.
    case $(sed -n 's/^State:[[:space:]]*\(.\).*/\1/p' "/proc/$pid/status" 2>/dev/null) in
    Z | X | '') return 1 ;;
    esac
    printf '%s\n' "$pid"
}

# Is pid:starttime still that process, and not a zombie?
same_alive() {
    local got
    got=$(proc_start "${1%%:*}") || return 1
    [ "$got" = "${1#*:}" ] || return 1
    case $(sed -n 's/^State:[[:space:]]*\(.\).*/\1/p' "/proc/${1%%:*}/status" 2>/dev/null) in
    Z | X | '') return 1 ;;
    esac
}

# stop_components NAME[:SIGNAL]...: send SIGNAL (default TERM) to each live
# component, wait up to STOP_SECS for all of them together, SIGKILL what is
# left, then SIGKILL any descendant that outlived its parent. Removes the pid
# files. Stopping what is already stopped does nothing.
stop_components() {
    local arg name sig pid targets='' kids='' t deadline left
    for arg in "$@"; do
        name=${arg%%:*}
        sig=TERM
        case $arg in *:*) sig=${arg#*:} ;; esac
        if pid=$(live_pid "$name"); then
            kids="$kids $(descendants "$pid" | tr '\n' ' ')"
            targets="$targets $pid:$(cat "$SD/pids/$name.start")"
            say "stopping $name (pid $pid, SIG$sig)"
            kill -s "$sig" "$pid" 2>/dev/null || true
        fi
    done
    deadline=$((SECONDS + STOP_SECS))
    while :; do
        left=''
        for t in $targets; do same_alive "$t" && left="$left $t"; done
        [ -n "$left" ] || break
        if [ "$SECONDS" -ge "$deadline" ]; then
            for t in $left; do
                warn "pid ${t%%:*} still alive after ${STOP_SECS}s: SIGKILL"
                kill -s KILL "${t%%:*}" 2>/dev/null || true
            done
            sleep 0.2
            break
        fi
        sleep 0.1
    done
    # Children normally die with their parent (PostgreSQL backends notice
    # the postmaster is gone, nginx workers are told by the master). Give
    # them a moment, then make sure.
    if [ -n "${kids# }" ]; then
        deadline=$((SECONDS + 3))
        while :; do
            left=''
            for t in $kids; do same_alive "$t" && left="$left $t"; done
            [ -n "$left" ] || break
            if [ "$SECONDS" -ge "$deadline" ]; then
                for t in $left; do
                    warn "leftover child pid ${t%%:*}: SIGKILL"
                    kill -s KILL "${t%%:*}" 2>/dev/null || true
                done
                break
            fi
            sleep 0.1
        done
    fi
    for arg in "$@"; do
        name=${arg%%:*}
        rm -f "$(pidfile "$name")" "$SD/pids/$name.start"
    done
}

# --- running as another user ---------------------------------------------

IS_ROOT=0
[ "$(id -u)" = 0 ] && IS_ROOT=1

# as_pg LOG CMD...: run a PostgreSQL server command as the user that owns
# the data directory, from / (a cwd the postgres user cannot read would be
# an error), its output appended to LOG.
#
# The redirection is on the command inside, never on a call of a shell
# function: bash applies a function call's redirection to itself, so a
# Ctrl-C trap that runs meanwhile would write its messages into the log.
as_pg() {
    local log=$1
    shift
    if [ "$IS_ROOT" = 1 ]; then
        runuser -u postgres -- env -C / "$@" >>"$log" 2>&1
    else
        env -C / "$@" >>"$log" 2>&1
    fi
}

# --- network -----------------------------------------------------------------

port_in_use() {
    if have ss; then
        [ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ] && return 0
    fi
    # Anything accepting a connection on loopback holds the port too.
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# http_code PORT PATH: the HTTP status of GET http://127.0.0.1:PORT/PATH, or
# 000 if there was no answer within 2 seconds.
http_code() {
    local code
    if have curl; then
        code=$(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:$1$2" 2>/dev/null) || true
        printf '%s\n' "${code:-000}"
        return 0
    fi
    # No curl: speak just enough HTTP/1.0 over bash's /dev/tcp.
    (
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$2" >&3
        IFS=' ' read -r -t 2 _ code _ <&3 || exit 1
        printf '%s\n' "$code"
    ) 2>/dev/null || printf '000\n'
}

# wait_http NAME PORT PATH LOG: wait until PATH answers 200, at most
# WAIT_SECS; fail with the log tail if it does not or if NAME died.
wait_http() {
    local name=$1 port=$2 path=$3 log=$4 code=000 deadline
    deadline=$((SECONDS + WAIT_SECS))
    while [ "$SECONDS" -lt "$deadline" ]; do
        code=$(http_code "$port" "$path")
        [ "$code" = 200 ] && return 0
        if ! live_pid "$name" >/dev/null; then
            tail_log "$log"
            fail "$name died while starting (see $log)"
        fi
        sleep 0.2
    done
    tail_log "$log"
    fail "$name: GET http://127.0.0.1:$port$path gave $code, not 200, for ${WAIT_SECS}s (see $log)"
}

# ------------------------------------------------------------- components ----

app_names() {
    local i=1
    while [ "$i" -le "$1" ]; do
        printf 'app%s ' "$i"
        i=$((i + 1))
    done
}

# The settings `up` used are recorded, so that down, status and restart-app
# act on the stack that exists, whatever the environment says now.
load_recorded() {
    [ -f "$SD/stack.conf" ] || return 1
    # shellcheck disable=SC1091
    . "$SD/stack.conf"
}

start_postgres() {
    local pg=$SD/pg log=$SD/logs/postgres.log sock pid
    sock=$pg/sock
    [ -x "$PG_BIN/initdb" ] || fail "no $PG_BIN/initdb: install postgresql-15 (make deps) or set PG_BIN"
    # A unix socket path is limited to 107 bytes.
    [ "${#sock}" -le 90 ] || fail "STACK_DIR is too long for a PostgreSQL unix socket path ($sock); use a shorter STACK_DIR"

    mkdir -p "$pg" "$sock"
    : >"$log"
    if [ "$IS_ROOT" = 1 ]; then
        chown postgres: "$pg" "$sock" "$log"
        runuser -u postgres -- test -w "$pg" ||
            fail "user postgres cannot reach $pg (a parent directory is not searchable by others); use STACK_DIR=/tmp/couponsvc-stack"
    fi
    chmod 700 "$pg" "$sock"

    say "postgres: initdb in $pg/data"
    # Local sockets (in a 0700 directory) trust; TCP needs a password.
    as_pg "$SD/logs/initdb.log" "$PG_BIN/initdb" -D "$pg/data" -U postgres \
        -E UTF8 --locale=C --auth-local=trust --auth-host=scram-sha-256 \
        --no-sync || {
        tail_log "$SD/logs/initdb.log"
        fail "initdb failed"
    }
    cat >>"$pg/data/postgresql.conf" <<EOF

# ---- deploy/stack.sh: a throwaway local instance ----
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$sock'
max_connections = 300
shared_buffers = 128MB
# No durability: the stack is re-created at every 'up'. Never in production.
fsync = off
full_page_writes = off
synchronous_commit = off
log_line_prefix = '%m [%p] %q%u@%d '
log_min_duration_statement = -1
EOF

    say "postgres: starting on 127.0.0.1:$PG_PORT"
    as_pg /dev/null "$PG_BIN/pg_ctl" -D "$pg/data" -l "$log" -w -t "$WAIT_SECS" start || {
        tail_log "$log"
        fail "PostgreSQL did not start within ${WAIT_SECS}s (see $log)"
    }
    read -r pid <"$pg/data/postmaster.pid"
    record_pid postgres "$pid"

    # The service's role and database. psql runs as the caller, over the
    # socket, as the postgres superuser (trusted locally).
    psql_admin "$SD/logs/initdb.log" -v pw="$PG_PASSWORD" <<'EOF' || {
CREATE ROLE couponsvc LOGIN PASSWORD :'pw';
CREATE DATABASE couponsvc OWNER couponsvc;
EOF
        tail_log "$SD/logs/initdb.log"
        fail "could not create role/database couponsvc"
    }
}

# psql_admin LOG ARGS...: psql as the superuser, over the unix socket.
psql_admin() {
    local log=$1 psql=psql
    shift
    [ -x "$PG_BIN/psql" ] && psql=$PG_BIN/psql
    "$psql" -X -q -v ON_ERROR_STOP=1 -h "$SD/pg/sock" -p "$PG_PORT" \
        -U postgres -d postgres "$@" >>"$log" 2>&1
}

start_redis() {
    local log=$SD/logs/redis.log deadline
    have redis-server || fail "redis-server not found: install redis-server (make deps)"
    mkdir -p "$SD/redis"
    say "redis: starting on 127.0.0.1:$REDIS_PORT"
    # noeviction: the fence counter has no TTL and must never be evicted
    # (see DESIGN.md). No persistence locally; compose turns AOF on.
    setsid redis-server --bind 127.0.0.1 --port "$REDIS_PORT" \
        --save '' --appendonly no --maxmemory-policy noeviction \
        --dir "$SD/redis" --daemonize no --logfile '' \
        >"$log" 2>&1 </dev/null &
    record_pid redis $!
    deadline=$((SECONDS + WAIT_SECS))
    until redis_ping; do
        live_pid redis >/dev/null || {
            tail_log "$log"
            fail "redis died while starting (see $log)"
        }
        [ "$SECONDS" -lt "$deadline" ] || {
            tail_log "$log"
            fail "redis did not answer PING within ${WAIT_SECS}s"
        }
        sleep 0.1
    done
}

redis_ping() {
    if have redis-cli; then
        [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]
    else
        (
            exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT" || exit 1
            printf 'PING\r\n' >&3
            read -r -t 1 line <&3 || exit 1
            [ "${line%$'\r'}" = +PONG ]
        ) 2>/dev/null
    fi
}

run_migrate() {
    local log=$SD/logs/migrate.log
    say "migrate: applying migrations"
    COUPON_PG_DSN=$DSN "$COUPONSVC" migrate >"$log" 2>&1 </dev/null || {
        tail_log "$log"
        fail "couponsvc migrate failed (see $log)"
    }
}

# Start replica $1 (app$1 on APP_PORT_BASE + $1); does not wait.
start_app() {
    local i=$1 port name instance
    port=$((APP_PORT_BASE + i))
    name=app$i
    instance=$name
    [ -n "${COUPON_INSTANCE_ID:-}" ] && instance=$COUPON_INSTANCE_ID-$i
    say "$name: starting on 127.0.0.1:$port (mode ${COUPON_CLAIM_MODE:-default})"
    COUPON_HTTP_ADDR=127.0.0.1:$port \
        COUPON_PG_DSN=$DSN \
        COUPON_REDIS_ADDRS=127.0.0.1:$REDIS_PORT \
        COUPON_ADMIN_TOKEN=$ADMIN_TOKEN \
        COUPON_INSTANCE_ID=$instance \
        setsid "$COUPONSVC" serve >>"$SD/logs/$name.log" 2>&1 </dev/null &
    record_pid "$name" $!
}

# Start replicas 1..REPLICAS and wait until every one is ready.
start_apps() {
    local i=1
    [ "$REPLICAS" -eq 0 ] && return 0
    [ -x "$COUPONSVC" ] || fail "$COUPONSVC not found: run make first"
    write_app_env
    while [ "$i" -le "$REPLICAS" ]; do
        start_app "$i"
        i=$((i + 1))
    done
    i=1
    while [ "$i" -le "$REPLICAS" ]; do
        wait_http "app$i" $((APP_PORT_BASE + i)) /readyz "$SD/logs/app$i.log"
        i=$((i + 1))
    done
    say "replicas ready: $(app_names "$REPLICAS")"
}

# What the replicas were started with, for `status` and for a reader.
write_app_env() {
    {
        printf '# COUPON_* settings of the running replicas (written by stack.sh)\n'
        env | grep '^COUPON_' | grep -v -e '^COUPON_HTTP_ADDR=' -e '^COUPON_PG_DSN=' \
            -e '^COUPON_REDIS_ADDRS=' -e '^COUPON_INSTANCE_ID=' \
            -e '^COUPON_ADMIN_TOKEN=' | sort || true
    } >"$SD/app.env"
}

start_nginx() {
    local conf=$SD/nginx/nginx.conf log=$SD/logs/nginx.error.log
    local servers='' i=1 user_line='' nofile wc
    have nginx || fail "nginx not found: install nginx-light (make deps)"
    mkdir -p "$SD/nginx/tmp"
    cp "$ROOT/deploy/nginx/proxy.conf" "$SD/nginx/proxy.conf"

    while [ "$i" -le "$REPLICAS" ]; do
        servers="$servers        server 127.0.0.1:$((APP_PORT_BASE + i)) max_fails=3 fail_timeout=5s;
"
        i=$((i + 1))
    done
    # nginx refuses an empty upstream; REPLICAS=0 (testing the backends
    # alone) gets a placeholder that is never used.
    [ -n "$servers" ] || servers="        server 127.0.0.1:$((APP_PORT_BASE + 1)) down;
"
    if [ "$IS_ROOT" = 1 ]; then
        user_line="user nobody $(id -gn nobody 2>/dev/null || echo nogroup);"
        chown -R nobody "$SD/nginx/tmp"
    fi
    nofile=$(ulimit -n)
    wc=8192
    if [ "$nofile" -lt $((wc + 64)) ]; then
        wc=$((nofile - 64))
        warn "open file limit is $nofile: nginx gets worker_connections $wc (about $((wc / 2)) clients per worker); raise 'ulimit -Hn' for more"
    fi

    awk -v sd="$SD" -v lb="$LB_PORT" -v user="$user_line" -v nofile="$nofile" \
        -v wc="$wc" -v servers="$servers" '
        /^@UPSTREAM_SERVERS@$/ { printf "%s", servers; next }
        {
            gsub(/@STACK_DIR@/, sd); gsub(/@LB_PORT@/, lb)
            gsub(/@USER_LINE@/, user); gsub(/@RLIMIT_NOFILE@/, nofile)
            gsub(/@WORKER_CONNECTIONS@/, wc)
            print
        }' "$ROOT/deploy/nginx/local.conf.in" >"$conf"

    # shellcheck disable=SC2094 # -e names the log nginx writes, not reads
    nginx -t -q -p "$SD/nginx" -e "$log" -c "$conf" >>"$log" 2>&1 || {
        tail_log "$log"
        fail "nginx rejected $conf"
    }
    say "nginx: starting on 127.0.0.1:$LB_PORT"
    # shellcheck disable=SC2094
    setsid nginx -p "$SD/nginx" -e "$log" -c "$conf" -g 'daemon off;' \
        >>"$log" 2>&1 </dev/null &
    record_pid nginx $!
    wait_http nginx "$LB_PORT" /lb-healthz "$log"
    if [ "$REPLICAS" -gt 0 ]; then
        wait_http nginx "$LB_PORT" /readyz "$log"
    fi
}

# Reload nginx so that replicas marked failed while they were restarting are
# tried again at once instead of after fail_timeout.
reload_nginx() {
    local pid
    pid=$(live_pid nginx) || return 0
    kill -s HUP "$pid"
    sleep 0.5
    wait_http nginx "$LB_PORT" /readyz "$SD/logs/nginx.error.log"
}

write_env_file() {
    cat >"$SD/env" <<EOF
# Written by deploy/stack.sh up; source it:  . $SD/env
export COUPONSVC_URL='http://127.0.0.1:$LB_PORT'
export COUPONSVC_STACK_DIR='$SD'
export COUPON_ADMIN_TOKEN='$ADMIN_TOKEN'
export COUPON_PG_DSN='$DSN'
export COUPON_REDIS_ADDRS='127.0.0.1:$REDIS_PORT'
# For psql and friends (psql alone then opens the service's database).
export PGHOST='127.0.0.1' PGPORT='$PG_PORT' PGUSER='couponsvc' PGDATABASE='couponsvc' PGPASSWORD='$PG_PASSWORD'
# Superuser: psql -h '$SD/pg/sock' -p $PG_PORT -U postgres
# Redis:     redis-cli -p $REDIS_PORT
# Example:   build/loadgen --url "\$COUPONSVC_URL" --admin-token "\$COUPON_ADMIN_TOKEN" --verify-dsn "\$COUPON_PG_DSN" ...
EOF
    chmod 600 "$SD/env"
}

all_names() {
    printf 'nginx %s redis postgres\n' "$(app_names "$REPLICAS")"
}

# ------------------------------------------------------------ commands ----

cmd_up() {
    local name p seen=' '
    check_settings
    if [ -d "$SD" ] && [ -f "$SD/stack.conf" ]; then
        (
            load_recorded
            for name in $(all_names); do
                if live_pid "$name" >/dev/null; then exit 1; fi
            done
        ) || fail "a stack is already running in $SD: run 'deploy/stack.sh down' (make down) first"
    fi
    if [ -d "$SD" ] && [ -n "$(ls -A "$SD" 2>/dev/null)" ] && [ ! -f "$MARKER" ]; then
        fail "$SD exists, is not empty and was not made by stack.sh; choose another STACK_DIR"
    fi

    if [ "$REPLICAS" -gt 0 ] && [ ! -x "$COUPONSVC" ]; then
        fail "$COUPONSVC not found: build it first (make), or set COUPONSVC"
    fi

    # Ports: all distinct, all free.
    p=1
    set -- "LB_PORT=$LB_PORT" "PG_PORT=$PG_PORT" "REDIS_PORT=$REDIS_PORT"
    while [ "$p" -le "$REPLICAS" ]; do
        set -- "$@" "app$p=$((APP_PORT_BASE + p))"
        p=$((p + 1))
    done
    for name in "$@"; do
        p=${name#*=}
        if [ "$p" -lt 1 ] || [ "$p" -gt 65535 ]; then
            fail "${name%%=*}: port $p out of range"
        fi
        case $seen in *" $p "*) fail "port $p is used twice (${name%%=*}); check LB_PORT, APP_PORT_BASE, PG_PORT, REDIS_PORT" ;; esac
        seen="$seen$p "
        if port_in_use "$p"; then
            fail "port $p (${name%%=*}) is already in use on this machine; pick another with ${name%%=*}=... (app ports: APP_PORT_BASE)"
        fi
    done

    # A fresh state directory: remove only what stack.sh creates.
    mkdir -p "$SD"
    rm -rf "$SD/pg" "$SD/redis" "$SD/nginx" "$SD/pids" "$SD/logs" \
        "$SD/env" "$SD/app.env" "$SD/stack.conf"
    : >"$MARKER"
    mkdir -p "$SD/pids" "$SD/logs"

    # Redis and nginx want many descriptors for 1000+ clients.
    local hard
    hard=$(ulimit -Hn)
    [ "$hard" = unlimited ] && hard=65536
    [ "$hard" -gt 65536 ] && hard=65536
    ulimit -n "$hard" 2>/dev/null || true

    DSN="postgresql://couponsvc:$PG_PASSWORD@127.0.0.1:$PG_PORT/couponsvc"
    cat >"$SD/stack.conf" <<EOF
# The settings 'stack.sh up' ran with; read by down, status, restart-app.
REPLICAS=$REPLICAS
LB_PORT=$LB_PORT
APP_PORT_BASE=$APP_PORT_BASE
PG_PORT=$PG_PORT
REDIS_PORT=$REDIS_PORT
COUPONSVC='$COUPONSVC'
ADMIN_TOKEN='$ADMIN_TOKEN'
DSN='$DSN'
EOF

    # From here on, a failure (or Ctrl-C) takes down whatever was started.
    trap up_exit EXIT
    trap 'exit 130' INT TERM

    start_postgres
    start_redis
    if [ -x "$COUPONSVC" ]; then
        run_migrate
    elif [ "$REPLICAS" -eq 0 ]; then
        warn "$COUPONSVC not built: migrations not applied"
    fi
    start_apps
    start_nginx
    write_env_file
    trap - EXIT INT TERM

    say "up: $REPLICAS replica(s) behind http://127.0.0.1:$LB_PORT"
    say "env: . $SD/env   (URL, admin token, DSN)"
    say "logs: $SD/logs/"
}

# EXIT trap of `up`: on failure, leave no process behind.
up_exit() {
    local rc=$?
    trap - EXIT
    # A second Ctrl-C must not cut the cleanup short.
    trap '' INT TERM
    if [ "$rc" != 0 ]; then
        warn "up failed: stopping what was started (logs kept in $SD/logs)"
        stop_all
    fi
    exit "$rc"
}

stop_all() {
    stop_components nginx
    # shellcheck disable=SC2046 # one word per replica
    stop_components $(app_names "$REPLICAS")
    stop_components redis postgres:INT
}

cmd_down() {
    if [ ! -f "$SD/stack.conf" ]; then
        say "nothing to stop in $SD"
        return 0
    fi
    load_recorded
    # Replicas from an earlier, larger stack in the same directory are
    # stopped too: every pid file counts, not only REPLICAS of them.
    local f extra='' apps
    apps=" $(app_names "$REPLICAS")"
    for f in "$SD"/pids/app*.pid; do
        [ -e "$f" ] || continue
        f=${f##*/}
        case $apps in *" ${f%.pid} "*) ;; *) extra="$extra ${f%.pid}" ;; esac
    done
    stop_components nginx
    # shellcheck disable=SC2086,SC2046 # one word per replica
    stop_components $(app_names "$REPLICAS") $extra
    stop_components redis postgres:INT
    say "down: stopped (state and logs kept in $SD)"
}

cmd_status() {
    local name pid port state ready all_ok=0 i mode
    if [ ! -f "$SD/stack.conf" ]; then
        say "no stack in $SD (run: make up)"
        return 1
    fi
    load_recorded
    printf '%-10s %-8s %-6s %-6s %s\n' COMPONENT PID PORT STATE CHECK
    for name in $(all_names); do
        case $name in
        nginx) port=$LB_PORT ;;
        redis) port=$REDIS_PORT ;;
        postgres) port=$PG_PORT ;;
        app*)
            i=${name#app}
            port=$((APP_PORT_BASE + i))
            ;;
        esac
        ready=''
        if pid=$(live_pid "$name"); then
            state=alive
            case $name in
            app*) ready="readyz $(http_code "$port" /readyz)" ;;
            nginx) ready="readyz via LB $(http_code "$port" /readyz)" ;;
            esac
        else
            state=dead
            all_ok=1
            pid=$(cat "$(pidfile "$name")" 2>/dev/null || echo -)
        fi
        printf '%-10s %-8s %-6s %-6s %s\n' "$name" "$pid" "$port" "$state" "$ready"
    done
    mode=$(sed -n 's/^COUPON_CLAIM_MODE=//p' "$SD/app.env" 2>/dev/null || true)
    printf '\nLB: http://127.0.0.1:%s   claim mode: %s   state: %s\n' \
        "$LB_PORT" "${mode:-default (lock)}" "$SD"
    printf 'env: . %s/env\n' "$SD"
    return "$all_ok"
}

cmd_restart_app() {
    [ -f "$SD/stack.conf" ] || fail "no stack in $SD (run: make up)"
    load_recorded
    live_pid postgres >/dev/null || fail "postgres is not running: run down, then up"
    live_pid redis >/dev/null || fail "redis is not running: run down, then up"
    [ "$REPLICAS" -gt 0 ] || fail "the stack has no replicas (REPLICAS=0)"
    [ -x "$COUPONSVC" ] || fail "$COUPONSVC not found: run make first"
    write_app_env
    # Rolling: one replica at a time, each back and ready before the next
    # goes, so the load balancer always has REPLICAS - 1 to send to. A
    # stopping replica drains (no new connections; kept-alive ones get
    # "Connection: close" on their next answer; requests in progress are
    # finished); nginx retries a request whose connection is refused on the
    # next replica. What can still fail is a request nginx sends on an idle
    # kept-alive connection just as the stopping replica closes it: nginx
    # does not re-send a POST that was sent (proxy.conf says why).
    # nginx is reloaded after each replica: the refused connects of the
    # stopped one marked it failed for fail_timeout (5 s), and without the
    # reload the next replica to stop would leave nginx none it trusts
    # ("no live upstreams", a 502 for everything).
    local i=1
    while [ "$i" -le "$REPLICAS" ]; do
        stop_components "app$i"
        start_app "$i"
        wait_http "app$i" $((APP_PORT_BASE + i)) /readyz "$SD/logs/app$i.log"
        reload_nginx
        i=$((i + 1))
    done
    say "restart-app: $REPLICAS replica(s) restarted one at a time, mode ${COUPON_CLAIM_MODE:-default}"
}

# The header comment, up to the paragraph on stop signals, is the help.
usage() {
    sed -n '2,/^# Stop signals/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
}

case ${1:-} in
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
restart-app) cmd_restart_app ;;
-h | --help | help) usage ;;
*)
    usage >&2
    fail "unknown command '${1:-}': use up, down, status or restart-app"
    ;;
esac
