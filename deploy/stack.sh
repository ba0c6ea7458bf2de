#!/usr/bin/env bash
# stack.sh: the whole couponsvc topology on one machine, without Docker.
#
#   deploy/stack.sh up            PostgreSQL, Redis, migrations, N replicas,
#                                 nginx in front; returns once all are ready
#   deploy/stack.sh down          stop exactly what `up` started
#   deploy/stack.sh status        one line per process: pid, port, alive/dead
#   deploy/stack.sh restart-app   restart only the replicas, one at a time
#                                 (rolling), with the COUPON_* settings of
#                                 the current environment
#   deploy/stack.sh restart-redis N
#                                 restart Redis node N (0 = redis, 1 =
#                                 redis1, ...) empty, as after a crash
#                                 without persistence; a Redlock node stays
#                                 out REDIS_RESTART_DELAY_MS first (below)
#
# Everything lives on 127.0.0.1 and in one state directory: data, unix
# sockets, configuration, credentials, logs and one pid file per process.
# `up` starts from an empty PostgreSQL and Redis every time; nothing here is
# meant to keep data. The state directory is printed by `up` and `status`.
#
# Settings (environment):
#   REPLICAS       number of couponsvc processes            (3)
#   STACK_DIR      state directory (default: see below)
#   LB_PORT        nginx, the load balancer                 (8080)
#   APP_PORT_BASE  replica i listens on APP_PORT_BASE + i   (8080: 8081, 8082..)
#   PG_PORT        PostgreSQL                               (15432)
#   REDIS_PORT     Redis                                    (16379)
#   COUPON_LOCK_BACKEND  etcd: a 3-member etcd cluster too, and the
#                  replicas lock on it (their COUPON_ETCD_ENDPOINTS)  (redis)
#   STACK_ETCD     1: start the etcd members whatever the backend, so that
#                  restart-app can switch the replicas to it   (0)
#   ETCD_PORT_BASE member i's client port is ETCD_PORT_BASE + 2(i-1), its
#                  peer port the next one                    (12379)
#   REDIS_TOPOLOGY single: one Redis node (redis); sentinel: a master
#                  (redis), its replica (redis1) and three sentinels
#                  (sentinel1..3 on SENTINEL_PORT + 1..3) monitoring it as
#                  "couponsvc", the replicas finding the master through
#                  them; redlock3, redlock5: 3 or 5 independent nodes
#                  (redis, redis1, ... on REDIS_PORT + 0, 1, ...), the
#                  replicas taking each lock on a majority     (single)
#   SENTINEL_PORT  base of the sentinels' ports             (16389)
#   REDIS_RESTART_DELAY_MS
#                  how long restart-redis keeps a Redlock node out before
#                  starting it again; empty: longer than any lock's TTL
#                  (COUPON_LOCK_TTL_MS, 5000 if unset, + 1000 ms); 0 turns
#                  the rule off (to show what it prevents)
#   COUPONSVC      the service binary                       (<repo>/build/couponsvc)
#   PG_BIN         PostgreSQL server binaries  (/usr/lib/postgresql/15/bin)
#   PG_PASSWORD    password of the couponsvc database role  (generated)
#   PG_DURABLE     1: PostgreSQL with fsync, full_page_writes and
#                  synchronous_commit on (benchmarks)        (0: all off)
#   LB_RATE_LIMIT  on: nginx's per-client rate limit as deployments ship
#                  it (deploy/nginx/http.conf); off: no limit, since every
#                  client here is 127.0.0.1                  (off)
#   WAIT_SECS      bound on each readiness wait             (30)
#   STOP_SECS      grace after the stop request, then SIGKILL (15; the
#                  service drains for up to 10 s on SIGTERM)
#   COUPON_ADMIN_TOKEN                                      (generated)
#   COUPON_*       every other COUPON_ variable (COUPON_CLAIM_MODE,
#                  COUPON_LOCK_TTL_MS, COUPON_FAULT, ...) reaches the replicas
#                  unchanged. The stack sets COUPON_HTTP_ADDR, COUPON_PG_DSN,
#                  COUPON_REDIS_ADDRS (or COUPON_REDIS_SENTINELS,
#                  COUPON_REDIS_MASTER_NAME, COUPON_REDIS_SENTINEL_PASSWORD,
#                  by REDIS_TOPOLOGY: the others are unset), COUPON_REDIS_USERNAME,
#                  COUPON_REDIS_PASSWORD and COUPON_INSTANCE_ID itself.
#
# The state directory, unless STACK_DIR names one: <repo>/build/stack when
# the users the servers run as can reach it, else /tmp/couponsvc-stack-HASH,
# HASH being taken from the checkout's path (two checkouts never share one).
# As root, PostgreSQL runs as `postgres` (initdb refuses root) and nginx's
# workers as `nobody`; a checkout in a 0700 home is out of their reach. The
# choice is recorded in <repo>/build/stack.dir, where down, status and
# restart-app find it.
#
# Credentials are generated at every `up` and kept in the state directory,
# mode 0600: the PostgreSQL role's password (scram-sha-256 over TCP), the
# Redis ACL user the replicas log in as, Redis's `default` user (the
# operator's), and the admin token. `. <state dir>/env` exports them.
#
# Stopping: each process is asked by its own means (pg_ctl stop -m fast,
# redis-cli shutdown nosave, nginx -s quit, SIGTERM to couponsvc, which
# finishes what is in flight and exits 0). What is still there after
# STOP_SECS gets SIGKILL, sent to the process group: every process runs in
# a group of its own, so its children (nginx's workers) go with it;
# PostgreSQL's backends exit once the postmaster has. deploy/proc.sh guards
# every signal against a reused pid.

set -eu
umask 022

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PROG=stack
# shellcheck source=deploy/proc.sh
. "$ROOT/deploy/proc.sh"

REPLICAS=${REPLICAS:-3}
LB_PORT=${LB_PORT:-8080}
APP_PORT_BASE=${APP_PORT_BASE:-8080}
# Defaults below Linux's ephemeral range (32768-60999): a port in that range
# can be taken at any moment as the local end of some outgoing connection,
# and `up` then fails with "address already in use".
PG_PORT=${PG_PORT:-15432}
REDIS_PORT=${REDIS_PORT:-16379}
ETCD_PORT_BASE=${ETCD_PORT_BASE:-12379}
ETCD_MEMBERS=0
if [ "${COUPON_LOCK_BACKEND:-redis}" = etcd ] || [ "${STACK_ETCD:-0}" = 1 ]; then
    ETCD_MEMBERS=3
fi
REDIS_TOPOLOGY=${REDIS_TOPOLOGY:-single}
SENTINEL_PORT=${SENTINEL_PORT:-16389}
REDIS_RESTART_DELAY_MS=${REDIS_RESTART_DELAY_MS:-}
COUPONSVC=${COUPONSVC:-$ROOT/build/couponsvc}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
PG_PASSWORD=${PG_PASSWORD:-}
PG_DURABLE=${PG_DURABLE:-0}
WAIT_SECS=${WAIT_SECS:-30}
STOP_SECS=${STOP_SECS:-15}
ADMIN_TOKEN=${COUPON_ADMIN_TOKEN:-}
# The rule of the replicas' Redis ACL user ("user NAME RULES..."), without
# its password.
REDIS_ACL=$ROOT/deploy/redis/couponsvc.acl
STACK_RECORD=$ROOT/build/stack.dir
# Set by up, or read back from the state directory.
REDIS_USER='' REDIS_PASSWORD='' REDIS_ADMIN_PASSWORD='' SENTINEL_PASSWORD=''

case $COUPONSVC in /*) ;; *) COUPONSVC=$PWD/$COUPONSVC ;; esac

IS_ROOT=0
[ "$(id -u)" = 0 ] && IS_ROOT=1

# ------------------------------------------------------------- helpers ----

say() { printf '%s: %s\n' "$PROG" "$*"; }
warn() { printf '%s: warning: %s\n' "$PROG" "$*" >&2; }
fail() {
    printf '%s: error: %s\n' "$PROG" "$*" >&2
    exit 1
}
have() { command -v "$1" >/dev/null 2>&1; }
is_uint() { case $1 in '' | *[!0-9]*) return 1 ;; *) return 0 ;; esac; }

# Print the last lines of a log, indented, to stderr.
tail_log() {
    if [ -s "$1" ]; then
        printf '%s: --- last lines of %s ---\n' "$PROG" "$1" >&2
        tail -n "${2:-25}" "$1" | sed 's/^/    | /' >&2
    fi
}

# A random secret: 32 hex digits, safe in a URI, an SQL literal and a
# Redis ACL rule without quoting.
secret() { od -An -N16 -tx1 /dev/urandom | tr -d ' \n'; }

check_settings() {
    local v val
    for v in REPLICAS LB_PORT APP_PORT_BASE PG_PORT REDIS_PORT SENTINEL_PORT ETCD_PORT_BASE WAIT_SECS STOP_SECS; do
        eval "val=\$$v"
        is_uint "$val" || fail "$v must be a non-negative integer, got '$val'"
    done
    case $PG_DURABLE in 0 | 1) ;; *) fail "PG_DURABLE must be 0 or 1, got '$PG_DURABLE'" ;; esac
    case $REDIS_TOPOLOGY in
    single | sentinel | redlock3 | redlock5) ;;
    *) fail "REDIS_TOPOLOGY must be single, sentinel, redlock3 or redlock5, got '$REDIS_TOPOLOGY'" ;;
    esac
    # The password goes into a URI and an SQL literal: keep it plain.
    case $PG_PASSWORD in
    *[!A-Za-z0-9_.-]*) fail "PG_PASSWORD may only contain A-Z a-z 0-9 _ . -" ;;
    esac
    case $ADMIN_TOKEN in
    *[!A-Za-z0-9_.~+/=-]*) fail "COUPON_ADMIN_TOKEN must be a token (A-Z a-z 0-9 _ . ~ + / = -)" ;;
    esac
}

# --- the state directory ----------------------------------------------------

# reachable DIR: can the users the servers run as (postgres, nobody: as
# root only) search DIR, or its nearest existing ancestor?
reachable() {
    local d=$1 u
    [ "$IS_ROOT" = 1 ] || return 0
    until [ -d "$d" ]; do d=$(dirname "$d"); done
    for u in postgres nobody; do
        runuser -u "$u" -- test -x "$d" 2>/dev/null || return 1
    done
}

# pg_socket_fits DIR: a unix socket path is limited to 107 bytes, and
# PostgreSQL's, DIR/pg/sock/.s.PGSQL.PORT, is the longest of the stack.
pg_socket_fits() { [ $((${#1} + 18 + ${#PG_PORT})) -le 107 ]; }

# default_stack_dir: the state directory `up` picks (see the top of this file).
default_stack_dir() {
    local d=$ROOT/build/stack
    if reachable "$d" && pg_socket_fits "$d"; then
        printf '%s\n' "$d"
    else
        printf '/tmp/couponsvc-stack-%s\n' "$(printf '%s' "$ROOT" | sha256sum | cut -c1-12)"
    fi
}

# Sets SD, the state directory, for command $1.
pick_stack_dir() {
    if [ -n "${STACK_DIR:-}" ]; then
        case $STACK_DIR in /*) SD=$STACK_DIR ;; *) SD=$PWD/$STACK_DIR ;; esac
    elif [ "$1" != up ] && [ -s "$STACK_RECORD" ]; then
        read -r SD <"$STACK_RECORD"
    else
        SD=$(default_stack_dir)
    fi
    MARKER=$SD/.couponsvc-stack
}

# make_stack_dir: create SD, or check the one there is ours. In /tmp anyone
# could have made it first, so it must be a real directory owned by us.
make_stack_dir() {
    pg_socket_fits "$SD" ||
        fail "$SD is too long for a unix socket path (107 bytes); use a shorter STACK_DIR"
    mkdir -p "$(dirname "$SD")"
    mkdir "$SD" 2>/dev/null || true
    if [ ! -d "$SD" ] || [ -L "$SD" ] || [ ! -O "$SD" ]; then
        fail "$SD is not a directory owned by $(id -un); remove it or set STACK_DIR"
    fi
    chmod 755 "$SD"
    reachable "$SD" ||
        fail "users postgres and nobody cannot reach $SD (a parent directory is not searchable by others); set STACK_DIR elsewhere, or unset it"
}

# --- processes ------------------------------------------------------------

pidfile() { printf '%s/pids/%s.pid\n' "$SD" "$1"; }
live_pid() { proc_live "$(pidfile "$1")"; }

# spawn NAME CMD...: run CMD in a session and process group of its own (so
# its children can be stopped with it), output to logs/NAME.log; record it.
spawn() {
    local name=$1
    shift
    setsid "$@" >>"$SD/logs/$name.log" 2>&1 </dev/null &
    proc_record "$(pidfile "$name")" $! || {
        kill -s KILL $! 2>/dev/null || true
        tail_log "$SD/logs/$name.log"
        fail "$name exited immediately (pid $!)"
    }
}

# The kinds of process. A kind is the component name without its number
# (app2 -> app); each has a start_KIND, a stop_KIND that asks one process
# of that kind to stop by its own means (given its name and pid), and a
# port in port_of. A new kind (a Sentinel, an etcd member) is those three
# plus its names in all_names.
stop_app() { kill -s TERM "$2"; }
stop_nginx() { nginx -q -p "$SD/nginx" -e "$SD/logs/nginx.error.log" -c "$SD/nginx/nginx.conf" -s quit; }
stop_redis() { redis_cli "$(port_of "$1")" shutdown nosave >/dev/null 2>&1; }
stop_etcd() { kill -s TERM "$2"; }
stop_sentinel() { kill -s TERM "$2"; }
stop_postgres() { as_pg "$SD/logs/pg_ctl.log" "$PG_BIN/pg_ctl" -D "$SD/pg/data" -m fast -W stop; }

port_of() {
    case $1 in
    nginx) echo "$LB_PORT" ;;
    redis) echo "$REDIS_PORT" ;;
    redis[0-9]*) echo $((REDIS_PORT + ${1#redis})) ;;
    sentinel*) echo $((SENTINEL_PORT + ${1#sentinel})) ;;
    postgres) echo "$PG_PORT" ;;
    etcd*) echo $((ETCD_PORT_BASE + 2 * (${1#etcd} - 1))) ;;
    app*) echo $((APP_PORT_BASE + ${1#app})) ;;
    esac
}

# stop_components NAME...: ask each live component to stop, wait up to
# STOP_SECS for all their process groups together to be gone, SIGKILL the
# groups still there and wait 5 s more. Stopping what is already stopped
# does nothing; a pid file is kept only for a group that outlived all that.
stop_components() {
    local name left pid killed=0 deadline=$((SECONDS + STOP_SECS))
    for name in "$@"; do
        pid=$(live_pid "$name") || continue
        say "stopping $name (pid $pid)"
        "stop_${name%%[0-9]*}" "$name" "$pid" || warn "$name: the stop request failed; SIGKILL after ${STOP_SECS}s"
    done
    while :; do
        left=
        for name in "$@"; do
            proc_group_left "$(pidfile "$name")" && left="$left $name"
        done
        [ -n "$left" ] || break
        if [ "$SECONDS" -ge "$deadline" ]; then
            if [ "$killed" = 1 ]; then
                warn "still running 5 s after SIGKILL:$left"
                break
            fi
            for name in $left; do
                warn "$name still running after ${STOP_SECS}s: SIGKILL to its process group"
                proc_kill_group "$(pidfile "$name")" KILL
            done
            killed=1 deadline=$((SECONDS + 5))
        fi
        sleep 0.1
    done
    for name in "$@"; do
        case " $left " in *" $name "*) ;; *) rm -f "$(pidfile "$name")" "$SD/pids/$name.start" ;; esac
    done
}

# as_pg LOG CMD...: run a PostgreSQL command as the user that owns the data
# directory, from / (a cwd that user cannot read would be an error), its
# output appended to LOG. (The redirection is inside, never on the call of
# a shell function: bash would apply it to the function, and a Ctrl-C trap
# running meanwhile would write its messages into the log.)
as_pg() {
    local log=$1
    shift
    if [ "$IS_ROOT" = 1 ]; then
        runuser -u postgres -- env -C / "$@" >>"$log" 2>&1
    else
        env -C / "$@" >>"$log" 2>&1
    fi
}

# redis_cli PORT ARGS...: redis-cli as Redis's `default` user (the
# operator). The password goes by environment, never on a command line.
redis_cli() {
    local port=$1
    shift
    # (An empty REDISCLI_AUTH would still send an AUTH, which Redis refuses.)
    [ -z "$REDIS_ADMIN_PASSWORD" ] || export REDISCLI_AUTH=$REDIS_ADMIN_PASSWORD
    timeout 5 redis-cli --no-auth-warning -h 127.0.0.1 -p "$port" "$@"
}

# --- network ------------------------------------------------------------------

port_in_use() {
    [ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ] && return 0
    # Anything accepting a connection on loopback holds the port too.
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# http_code PORT PATH: the status of GET http://127.0.0.1:PORT/PATH, or 000
# if there was no answer within 2 seconds.
http_code() {
    curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:$1$2" 2>/dev/null || true
}

# wait_http NAME PORT PATH LOG: wait until PATH answers 200, at most
# WAIT_SECS; fail with the log tail if it does not or if NAME died.
wait_http() {
    local name=$1 port=$2 path=$3 log=$4 code=000 deadline=$((SECONDS + WAIT_SECS))
    while [ "$SECONDS" -lt "$deadline" ]; do
        code=$(http_code "$port" "$path")
        [ "$code" = 200 ] && return 0
        live_pid "$name" >/dev/null || {
            tail_log "$log"
            fail "$name died while starting (see $log)"
        }
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

# In the order `up` starts them; stopped in the reverse order.
all_names() { printf 'postgres %s%s%s nginx\n' "$(redis_names)" "$(etcd_names)" "$(app_names "$REPLICAS")"; }

# The settings `up` used are recorded, so that down, status and restart-app
# act on the stack that exists, whatever the environment says now.
load_recorded() {
    [ -f "$SD/stack.conf" ] || return 1
    # shellcheck disable=SC1091
    . "$SD/stack.conf"
}

# The durability settings of postgresql.conf. By default none: the stack
# is re-created at every 'up', and a commit that waits for the disk only
# slows a demo down. PG_DURABLE=1 turns fsync, full_page_writes and
# synchronous_commit on, as a production server runs, for benchmarks
# whose figures should mean what they would mean there (make bench).
pg_durability() {
    if [ "$PG_DURABLE" = 1 ]; then
        printf '%s\n' "# PG_DURABLE=1: durable, as in production." \
            "fsync = on" "full_page_writes = on" "synchronous_commit = on"
    else
        printf '%s\n' "# No durability: the stack is re-created at every 'up'. Never in production." \
            "fsync = off" "full_page_writes = off" "synchronous_commit = off"
    fi
}

start_postgres() {
    local pg=$SD/pg log=$SD/logs/postgres.log pid
    [ -x "$PG_BIN/initdb" ] || fail "no $PG_BIN/initdb: install postgresql-15 (make deps) or set PG_BIN"
    mkdir -p "$pg/sock"
    : >"$log"
    [ "$IS_ROOT" = 1 ] && chown postgres: "$pg" "$pg/sock" "$log"
    chmod 700 "$pg" "$pg/sock"

    say "postgres: initdb in $pg/data"
    # Local sockets (in a 0700 directory) trust; TCP needs the password,
    # as a SCRAM-SHA-256 exchange (never in clear, never MD5).
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
unix_socket_directories = '$pg/sock'
password_encryption = 'scram-sha-256'
max_connections = 300
shared_buffers = 128MB
$(pg_durability)
log_line_prefix = '%m [%p] %q%u@%d '
log_min_duration_statement = -1
EOF

    say "postgres: starting on 127.0.0.1:$PG_PORT"
    # pg_ctl starts the postmaster in a session of its own (setsid).
    as_pg /dev/null "$PG_BIN/pg_ctl" -D "$pg/data" -l "$log" -w -t "$WAIT_SECS" start || {
        tail_log "$log"
        fail "PostgreSQL did not start within ${WAIT_SECS}s (see $log)"
    }
    read -r pid <"$pg/data/postmaster.pid"
    proc_record "$(pidfile postgres)" "$pid" || fail "postgres (pid $pid) is gone or leads no process group"

    # The service's role and database. psql runs as the caller, over the
    # socket, as the postgres superuser (trusted locally).
    psql_admin -v pw="$PG_PASSWORD" <<'EOF' || {
CREATE ROLE couponsvc LOGIN PASSWORD :'pw';
CREATE DATABASE couponsvc OWNER couponsvc;
EOF
        tail_log "$SD/logs/initdb.log"
        fail "could not create role/database couponsvc"
    }
}

# psql_admin ARGS...: psql as the superuser, over the unix socket.
psql_admin() {
    local psql=psql
    [ -x "$PG_BIN/psql" ] && psql=$PG_BIN/psql
    "$psql" -X -q -v ON_ERROR_STOP=1 -h "$SD/pg/sock" -p "$PG_PORT" \
        -U postgres -d postgres "$@" >>"$SD/logs/initdb.log" 2>&1
}

# --- Redis topologies ---------------------------------------------------------

# The number of Redis data nodes of REDIS_TOPOLOGY.
redis_nodes() {
    case $REDIS_TOPOLOGY in
    sentinel) echo 2 ;;
    redlock3) echo 3 ;;
    redlock5) echo 5 ;;
    *) echo 1 ;;
    esac
}

# The Redis processes of REDIS_TOPOLOGY, in start order: the data nodes
# (redis, redis1, ...), then the sentinels.
redis_names() {
    local i=1
    printf 'redis '
    while [ "$i" -lt "$(redis_nodes)" ]; do
        printf 'redis%s ' "$i"
        i=$((i + 1))
    done
    [ "$REDIS_TOPOLOGY" != sentinel ] || printf 'sentinel1 sentinel2 sentinel3 '
}

# What the replicas are told about Redis: one "K=V" per line.
redis_app_env() {
    local i addrs=127.0.0.1:$REDIS_PORT
    case $REDIS_TOPOLOGY in
    sentinel)
        printf 'COUPON_REDIS_SENTINELS=127.0.0.1:%s,127.0.0.1:%s,127.0.0.1:%s\n' \
            $((SENTINEL_PORT + 1)) $((SENTINEL_PORT + 2)) $((SENTINEL_PORT + 3))
        printf 'COUPON_REDIS_MASTER_NAME=couponsvc\n'
        printf 'COUPON_REDIS_SENTINEL_PASSWORD=%s\n' "$SENTINEL_PASSWORD"
        return 0
        ;;
    redlock*)
        for i in $(seq $(($(redis_nodes) - 1))); do
            addrs="$addrs,127.0.0.1:$((REDIS_PORT + i))"
        done
        ;;
    esac
    printf 'COUPON_REDIS_ADDRS=%s\n' "$addrs"
}

# start_redis_node NAME [MASTER_PORT]: one Redis data node (a replica of
# MASTER_PORT if given); waits until it answers PING.
start_redis_node() {
    local name=$1 port conf deadline=$((SECONDS + WAIT_SECS)) c
    port=$(port_of "$name")
    conf=$SD/redis/$name.conf
    for c in redis-server redis-cli; do have $c || fail "$c not found: install redis-server (make deps)"; done
    mkdir -p "$SD/redis/$name"
    # noeviction: the fence counter has no TTL and must never be evicted.
    # No persistence locally; compose turns AOF on. The file holds the
    # passwords: mode 0600. Every node has the same users: a replica that
    # Sentinel promotes must accept the replicas' ACL user.
    (
        umask 077
        cat >"$conf" <<EOF
bind 127.0.0.1
port $port
save ""
appendonly no
maxmemory-policy noeviction
dir $SD/redis/$name
daemonize no
logfile ""
requirepass $REDIS_ADMIN_PASSWORD
masterauth $REDIS_ADMIN_PASSWORD
$REDIS_RULE >$REDIS_PASSWORD
EOF
        [ -z "${2:-}" ] || printf 'replicaof 127.0.0.1 %s\n' "$2" >>"$conf"
    )
    say "$name: starting on 127.0.0.1:$port${2:+ (replica of 127.0.0.1:$2)} (ACL user $REDIS_USER)"
    spawn "$name" redis-server "$conf"
    until [ "$(redis_cli "$port" ping 2>/dev/null)" = PONG ]; do
        live_pid "$name" >/dev/null || {
            tail_log "$SD/logs/$name.log"
            fail "$name died while starting (see $SD/logs/$name.log)"
        }
        [ "$SECONDS" -lt "$deadline" ] || fail "$name did not answer PING within ${WAIT_SECS}s"
        sleep 0.1
    done
}

# --- etcd (COUPON_LOCK_BACKEND=etcd) ------------------------------------------

etcd_names() {
    local i=1
    while [ "$i" -le "$ETCD_MEMBERS" ]; do
        printf 'etcd%s ' "$i"
        i=$((i + 1))
    done
}

# The members' client URLs, comma-separated: the replicas' endpoints.
etcd_endpoints() {
    local i=1 sep=''
    while [ "$i" -le "$ETCD_MEMBERS" ]; do
        printf '%shttp://127.0.0.1:%s' "$sep" "$(port_of "etcd$i")"
        sep=,
        i=$((i + 1))
    done
}

# What the replicas get as COUPON_ETCD_ENDPOINTS: the stack's members, or
# what the environment says (an outside cluster).
app_etcd_endpoints() {
    if [ "$ETCD_MEMBERS" -gt 0 ]; then etcd_endpoints; else printf '%s' "${COUPON_ETCD_ENDPOINTS:-http://127.0.0.1:2379}"; fi
}

# Three members of one new cluster, data under $SD/etcd, default timing
# (election 1000 ms: the replicas' lease TTL is at least 2 s). No auth
# locally; deploy/README.md shows the production set-up with a user.
start_etcd() {
    local i cluster='' deadline=$((SECONDS + WAIT_SECS)) port ok
    have etcd || fail "etcd not found: install etcd-server (make deps)"
    mkdir -p "$SD/etcd"
    for i in $(seq "$ETCD_MEMBERS"); do
        cluster="$cluster${cluster:+,}etcd$i=http://127.0.0.1:$(($(port_of "etcd$i") + 1))"
    done
    for i in $(seq "$ETCD_MEMBERS"); do
        port=$(port_of "etcd$i")
        say "etcd$i: starting on 127.0.0.1:$port"
        spawn "etcd$i" etcd --name "etcd$i" --data-dir "$SD/etcd/etcd$i" \
            --listen-client-urls "http://127.0.0.1:$port" \
            --advertise-client-urls "http://127.0.0.1:$port" \
            --listen-peer-urls "http://127.0.0.1:$((port + 1))" \
            --initial-advertise-peer-urls "http://127.0.0.1:$((port + 1))" \
            --initial-cluster "$cluster" --initial-cluster-state new \
            --initial-cluster-token "couponsvc-$$" --logger zap --log-level warn
    done
    for i in $(seq "$ETCD_MEMBERS"); do
        port=$(port_of "etcd$i")
        until ok=$(curl -s -m 2 "http://127.0.0.1:$port/health" 2>/dev/null) &&
            case $ok in *'"health":"true"'*) true ;; *) false ;; esac; do
            live_pid "etcd$i" >/dev/null || {
                tail_log "$SD/logs/etcd$i.log"
                fail "etcd$i died while starting (see $SD/logs/etcd$i.log)"
            }
            [ "$SECONDS" -lt "$deadline" ] || fail "etcd$i not healthy within ${WAIT_SECS}s"
            sleep 0.2
        done
    done
    say "etcd: cluster of $ETCD_MEMBERS healthy at $(etcd_endpoints)"
}

# start_sentinel NAME: one sentinel monitoring redis as "couponsvc" (quorum
# 2 of 3), behind a password of its own; waits until it names the master.
# The sentinels see a dead master at different times (1, 1.25, 1.5 s), so
# that one usually asks for votes first: a split vote is retried only after
# twice the failover timeout (3 s).
start_sentinel() {
    local name=$1 port conf deadline=$((SECONDS + WAIT_SECS))
    port=$(port_of "$name")
    conf=$SD/redis/$name.conf
    mkdir -p "$SD/redis/$name"
    # Sentinel rewrites its file (epochs, the replicas and sentinels it
    # found): it must be writable; it holds passwords: mode 0600.
    (
        umask 077
        cat >"$conf" <<EOF
bind 127.0.0.1
port $port
dir $SD/redis/$name
daemonize no
logfile ""
requirepass $SENTINEL_PASSWORD
sentinel monitor couponsvc 127.0.0.1 $REDIS_PORT 2
sentinel auth-pass couponsvc $REDIS_ADMIN_PASSWORD
sentinel down-after-milliseconds couponsvc $((750 + 250 * ${name#sentinel}))
sentinel failover-timeout couponsvc 3000
EOF
    )
    say "$name: starting on 127.0.0.1:$port (monitors redis as couponsvc)"
    spawn "$name" redis-server "$conf" --sentinel
    until [ "$(REDIS_ADMIN_PASSWORD=$SENTINEL_PASSWORD redis_cli "$port" sentinel get-master-addr-by-name couponsvc 2>/dev/null | tail -n 1)" = "$REDIS_PORT" ]; do
        live_pid "$name" >/dev/null || {
            tail_log "$SD/logs/$name.log"
            fail "$name died while starting (see $SD/logs/$name.log)"
        }
        [ "$SECONDS" -lt "$deadline" ] || fail "$name did not name the master within ${WAIT_SECS}s"
        sleep 0.1
    done
}

start_redis() {
    local name
    for name in $(redis_names); do
        case $name in
        redis) start_redis_node redis ;;
        sentinel*) start_sentinel "$name" ;;
        *)
            if [ "$REDIS_TOPOLOGY" = sentinel ]; then
                start_redis_node "$name" "$REDIS_PORT"
            else
                start_redis_node "$name"
            fi
            ;;
        esac
    done
    say "redis: topology $REDIS_TOPOLOGY ($(redis_names | sed 's/ $//'))"
}

# restart-redis N: node N stopped and started again, empty, as after a
# crash without persistence. The delayed-restart rule: a Redlock node that
# lost its data may have held a live lock of a lease granted on exactly a
# majority including it; back at once and empty, it helps a second holder
# to a majority of its own while the first still holds. Kept out longer
# than any lock can live (a lease that cannot renew on a majority is lost,
# and its keys expire within a TTL of their last renewal), it comes back to
# a world in which every lock it held is gone on every node. Sentinel's
# nodes and a single node restart at once (a single node's restart is the
# fence counter recovery's case).
cmd_restart_redis() {
    local n=${1:-} name delay ttl
    load_recorded || fail "no stack in $SD (run: make up)"
    { is_uint "$n" && [ "$n" -lt "$(redis_nodes)" ]; } ||
        fail "restart-redis N: N is a node number, 0 to $(($(redis_nodes) - 1)) in topology $REDIS_TOPOLOGY"
    REDIS_RULE=$(grep '^user ' "$REDIS_ACL" 2>/dev/null) ||
        fail "no 'user' line in $REDIS_ACL (the rule of the replicas' Redis user)"
    name=redis
    [ "$n" = 0 ] || name=redis$n
    stop_components "$name"
    case $REDIS_TOPOLOGY in
    redlock*)
        ttl=$(sed -n 's/^COUPON_LOCK_TTL_MS=//p' "$SD/app.env" 2>/dev/null || true)
        delay=${REDIS_RESTART_DELAY_MS:-$((${ttl:-5000} + 1000))}
        is_uint "$delay" || fail "REDIS_RESTART_DELAY_MS must be a whole number of ms, got '$delay'"
        if [ "$delay" -gt 0 ]; then
            say "$name: stays out $delay ms (delayed restart: longer than any lock's TTL)"
            sleep "$((delay / 1000)).$(printf '%03d' $((delay % 1000)))"
        else
            warn "$name: restarted at once (REDIS_RESTART_DELAY_MS=0): two holders of one lock can form"
        fi
        ;;
    esac
    if [ "$REDIS_TOPOLOGY" = sentinel ] && [ "$n" != 0 ]; then
        start_redis_node "$name" "$REDIS_PORT"
    else
        start_redis_node "$name"
    fi
    say "restart-redis: $name back, empty"
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
    local i=$1 instance=app$1
    [ -n "${COUPON_INSTANCE_ID:-}" ] && instance=$COUPON_INSTANCE_ID-$i
    say "app$i: starting on 127.0.0.1:$((APP_PORT_BASE + i)) (mode ${COUPON_CLAIM_MODE:-default})"
    local redis_env
    mapfile -t redis_env < <(redis_app_env)
    COUPON_HTTP_ADDR=127.0.0.1:$((APP_PORT_BASE + i)) COUPON_PG_DSN=$DSN \
        COUPON_REDIS_USERNAME=$REDIS_USER \
        COUPON_REDIS_PASSWORD=$REDIS_PASSWORD COUPON_ADMIN_TOKEN=$ADMIN_TOKEN \
        COUPON_INSTANCE_ID=$instance \
        COUPON_ETCD_ENDPOINTS=$(app_etcd_endpoints) \
        spawn "app$i" env -u COUPON_REDIS_ADDRS \
        -u COUPON_REDIS_SENTINELS -u COUPON_REDIS_MASTER_NAME \
        -u COUPON_REDIS_SENTINEL_PASSWORD "${redis_env[@]}" "$COUPONSVC" serve
}

# Start replicas 1..REPLICAS and wait until every one is ready.
start_apps() {
    local i
    [ "$REPLICAS" -eq 0 ] && return 0
    write_app_env
    for i in $(seq "$REPLICAS"); do start_app "$i"; done
    for i in $(seq "$REPLICAS"); do
        wait_http "app$i" $((APP_PORT_BASE + i)) /readyz "$SD/logs/app$i.log"
    done
    say "replicas ready: $(app_names "$REPLICAS")"
}

# What the replicas were started with, for `status` and for a reader.
write_app_env() {
    {
        printf '# COUPON_* settings of the running replicas (written by stack.sh)\n'
        env | grep '^COUPON_' | sort |
            grep -Ev '^COUPON_(HTTP_ADDR|PG_DSN|REDIS_ADDRS|REDIS_SENTINELS|REDIS_MASTER_NAME|REDIS_SENTINEL_PASSWORD|REDIS_USERNAME|REDIS_PASSWORD|INSTANCE_ID|ADMIN_TOKEN)=' || true
    } >"$SD/app.env"
}

start_nginx() {
    local conf=$SD/nginx/nginx.conf log=$SD/logs/nginx.error.log
    local servers='' i user_line='' nofile wc=8192
    have nginx || fail "nginx not found: install nginx-light (make deps)"
    mkdir -p "$SD/nginx/tmp"
    cp "$ROOT/deploy/nginx/proxy.conf" "$SD/nginx/proxy.conf"
    # The per-client rate limit is off unless LB_RATE_LIMIT=on: every client
    # of this stack (the load tests, the bench) is 127.0.0.1, so a limit per
    # address would be one limit for all. Off, the zone's key is empty, and
    # nginx counts no request whose key is empty.
    case ${LB_RATE_LIMIT:-off} in
    on) cp "$ROOT/deploy/nginx/http.conf" "$SD/nginx/http.conf" ;;
    off)
        # shellcheck disable=SC2016 # a literal nginx variable, not the shell's
        sed 's/^limit_req_zone \$binary_remote_addr /limit_req_zone "" /' \
            "$ROOT/deploy/nginx/http.conf" >"$SD/nginx/http.conf"
        ;;
    *) fail "LB_RATE_LIMIT must be on or off, not '$LB_RATE_LIMIT'" ;;
    esac
    grep -q '^limit_req_zone ' "$SD/nginx/http.conf" ||
        fail "deploy/nginx/http.conf has no limit_req_zone line at the start of a line"
    if [ "${LB_RATE_LIMIT:-off}" = off ] && ! grep -q '^limit_req_zone "" ' "$SD/nginx/http.conf"; then
        fail "LB_RATE_LIMIT=off: the limit_req_zone line of deploy/nginx/http.conf no longer starts with its key \$binary_remote_addr"
    fi

    for i in $(seq "$REPLICAS"); do
        servers="$servers        server 127.0.0.1:$((APP_PORT_BASE + i)) max_fails=3 fail_timeout=5s;
"
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
    spawn nginx nginx -p "$SD/nginx" -e "$log" -c "$conf" -g 'daemon off;'
    wait_http nginx "$LB_PORT" /lb-healthz "$log"
    [ "$REPLICAS" -eq 0 ] || wait_http nginx "$LB_PORT" /readyz "$log"
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
    (
        umask 077
        cat >"$SD/env" <<EOF
# Written by deploy/stack.sh up; source it:  . $SD/env
export COUPONSVC_URL='http://127.0.0.1:$LB_PORT'
export COUPONSVC_STACK_DIR='$SD'
export COUPON_ADMIN_TOKEN='$ADMIN_TOKEN'
export COUPON_PG_DSN='$DSN'
$(redis_app_env | sed "s/^\([^=]*\)=\(.*\)/export \1='\2'/")
export COUPON_REDIS_USERNAME='$REDIS_USER' COUPON_REDIS_PASSWORD='$REDIS_PASSWORD'
$([ "$ETCD_MEMBERS" -gt 0 ] && printf "export COUPON_ETCD_ENDPOINTS='%s'\n" "$(etcd_endpoints)")
$([ "${COUPON_LOCK_BACKEND:-}" = etcd ] && printf 'export COUPON_LOCK_BACKEND=etcd\n')
# For psql and friends (psql alone then opens the service's database).
export PGHOST='127.0.0.1' PGPORT='$PG_PORT' PGUSER='couponsvc' PGDATABASE='couponsvc' PGPASSWORD='$PG_PASSWORD'
# Redis's default user, the operator: REDISCLI_AUTH=\$REDIS_ADMIN_PASSWORD redis-cli -p $REDIS_PORT
export REDIS_ADMIN_PASSWORD='$REDIS_ADMIN_PASSWORD'
# PostgreSQL superuser: psql -h '$SD/pg/sock' -p $PG_PORT -U postgres
# Example: build/loadgen --url "\$COUPONSVC_URL" --admin-token "\$COUPON_ADMIN_TOKEN" --verify-dsn "\$COUPON_PG_DSN" ...
EOF
    )
}

# ------------------------------------------------------------ commands ----

cmd_up() {
    local name p seen=' ' hard
    check_settings
    # In a subshell: the recorded settings must not replace the ones given.
    (
        load_recorded 2>/dev/null || exit 0
        for name in $(all_names); do
            live_pid "$name" >/dev/null && exit 1
        done
        exit 0
    ) || fail "a stack is already running in $SD: run 'deploy/stack.sh down' (make down) first"
    if [ -d "$SD" ] && [ -n "$(ls -A "$SD" 2>/dev/null)" ] && [ ! -f "$MARKER" ]; then
        fail "$SD exists, is not empty and was not made by stack.sh; choose another STACK_DIR"
    fi
    if [ "$REPLICAS" -gt 0 ] && [ ! -x "$COUPONSVC" ]; then
        fail "$COUPONSVC not found: build it first (make), or set COUPONSVC"
    fi
    REDIS_RULE=$(grep '^user ' "$REDIS_ACL" 2>/dev/null) ||
        fail "no 'user' line in $REDIS_ACL (the rule of the replicas' Redis user)"

    # Ports: all distinct, all free.
    for name in $(all_names); do
        p=$(port_of "$name")
        [ "$p" -lt 1 ] || [ "$p" -gt 65535 ] && fail "$name: port $p out of range"
        case $seen in *" $p "*) fail "port $p of $name is used twice; check LB_PORT, APP_PORT_BASE, PG_PORT, REDIS_PORT" ;; esac
        seen="$seen$p "
        port_in_use "$p" &&
            fail "port $p ($name) is already in use on this machine; pick others with LB_PORT, APP_PORT_BASE, PG_PORT, REDIS_PORT"
    done

    # A fresh state directory: remove only what stack.sh creates.
    make_stack_dir
    rm -rf "$SD/pg" "$SD/redis" "$SD/etcd" "$SD/nginx" "$SD/pids" "$SD/logs" \
        "$SD/env" "$SD/app.env" "$SD/stack.conf"
    : >"$MARKER"
    mkdir -p "$SD/pids" "$SD/logs"
    if [ -z "${STACK_DIR:-}" ]; then
        mkdir -p "$(dirname "$STACK_RECORD")"
        printf '%s\n' "$SD" >"$STACK_RECORD"
    fi

    # Redis and nginx want many descriptors for 1000+ clients.
    hard=$(ulimit -Hn)
    [ "$hard" = unlimited ] && hard=65536
    [ "$hard" -gt 65536 ] && hard=65536
    ulimit -n "$hard" 2>/dev/null || true

    PG_PASSWORD=${PG_PASSWORD:-$(secret)}
    ADMIN_TOKEN=${ADMIN_TOKEN:-$(secret)}
    REDIS_USER=$(printf '%s\n' "$REDIS_RULE" | awk '{ print $2 }')
    REDIS_PASSWORD=$(secret)
    REDIS_ADMIN_PASSWORD=$(secret)
    SENTINEL_PASSWORD=$(secret)
    DSN="postgresql://couponsvc:$PG_PASSWORD@127.0.0.1:$PG_PORT/couponsvc"
    (
        umask 077
        cat >"$SD/stack.conf" <<EOF
# The settings 'stack.sh up' ran with; read by down, status, restart-app.
REPLICAS=$REPLICAS
LB_PORT=$LB_PORT
APP_PORT_BASE=$APP_PORT_BASE
PG_PORT=$PG_PORT
REDIS_PORT=$REDIS_PORT
ETCD_PORT_BASE=$ETCD_PORT_BASE
ETCD_MEMBERS=$ETCD_MEMBERS
REDIS_TOPOLOGY=$REDIS_TOPOLOGY
SENTINEL_PORT=$SENTINEL_PORT
SENTINEL_PASSWORD='$SENTINEL_PASSWORD'
COUPONSVC='$COUPONSVC'
ADMIN_TOKEN='$ADMIN_TOKEN'
PG_PASSWORD='$PG_PASSWORD'
DSN='$DSN'
REDIS_USER='$REDIS_USER'
REDIS_PASSWORD='$REDIS_PASSWORD'
REDIS_ADMIN_PASSWORD='$REDIS_ADMIN_PASSWORD'
EOF
    )

    # From here on, a failure (or Ctrl-C) takes down whatever was started.
    trap up_exit EXIT
    trap 'exit 130' INT TERM

    say "state: $SD"
    start_postgres
    start_redis
    [ "$ETCD_MEMBERS" -gt 0 ] && start_etcd
    if [ -x "$COUPONSVC" ]; then
        run_migrate
    else
        warn "$COUPONSVC not built: migrations not applied"
    fi
    start_apps
    start_nginx
    write_env_file
    trap - EXIT INT TERM

    say "up: $REPLICAS replica(s) behind http://127.0.0.1:$LB_PORT"
    if [ -n "${STACK_DIR:-}" ]; then say "state: $SD"; else say "state: $SD (recorded in $STACK_RECORD)"; fi
    say "env: . $SD/env   (URL, admin token, DSN, Redis credentials)"
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

# stop_all: nginx first, then every replica (also those of an earlier,
# larger stack in the same directory: every pid file counts), then the
# backends.
stop_all() {
    local f apps=''
    for f in "$SD"/pids/app*.pid; do
        [ -e "$f" ] && f=${f##*/} && apps="$apps ${f%.pid}"
    done
    stop_components nginx
    # shellcheck disable=SC2086 # one word per replica
    stop_components $apps
    # shellcheck disable=SC2046 # one word per member
    stop_components $(etcd_names)
    # The sentinels first (they would fail over a stopping master), then
    # the data nodes.
    # shellcheck disable=SC2046 # one word per Redis process
    stop_components $(redis_names | tr ' ' '\n' | tac | tr '\n' ' ')
    stop_components postgres
}

cmd_down() {
    if ! load_recorded; then
        say "nothing to stop in $SD"
        return 0
    fi
    stop_all
    say "down: stopped (state and logs kept in $SD)"
}

cmd_status() {
    local name pid port state ready all_ok=0 mode
    load_recorded || {
        say "no stack in $SD (run: make up)"
        return 1
    }
    printf '%-10s %-8s %-6s %-6s %s\n' COMPONENT PID PORT STATE CHECK
    for name in $(all_names); do
        port=$(port_of "$name")
        ready=''
        if pid=$(live_pid "$name"); then
            state=alive
            case $name in
            app*) ready="readyz $(http_code "$port" /readyz)" ;;
            nginx) ready="readyz via LB $(http_code "$port" /readyz)" ;;
            esac
        else
            state=dead all_ok=1
            { read -r pid _ <"$(pidfile "$name")"; } 2>/dev/null || pid=-
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
    local i
    load_recorded || fail "no stack in $SD (run: make up)"
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
    for i in $(seq "$REPLICAS"); do
        stop_components "app$i"
        start_app "$i"
        wait_http "app$i" $((APP_PORT_BASE + i)) /readyz "$SD/logs/app$i.log"
        reload_nginx
    done
    say "restart-app: $REPLICAS replica(s) restarted one at a time, mode ${COUPON_CLAIM_MODE:-default}"
}

# The header comment, up to the paragraph on the state directory, is the help.
usage() {
    sed -n '2,/^# The state directory, unless/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
}

case ${1:-} in
up | down | status | restart-app | restart-redis) pick_stack_dir "$1" ;;
esac
case ${1:-} in
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
restart-app) cmd_restart_app ;;
restart-redis) cmd_restart_redis "${2:-}" ;;
-h | --help | help) usage ;;
*)
    usage >&2
    fail "unknown command '${1:-}': use up, down, status, restart-app or restart-redis"
    ;;
esac
