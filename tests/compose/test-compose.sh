#!/usr/bin/env bash
# test-compose.sh: docker-compose.yml and deploy/Dockerfile, run for real
# (make test-compose). Debian 12's podman 4.3 is the engine, driven by
# docker-compose 1.29 through `podman system service` (podman-compose 1.0.3
# ignores depends_on conditions, which the compose file relies on).
#
# What it does, in order, each step bounded in time:
#   1. podman set up for this test only: its own containers.conf (runc,
#      cgroupfs, events to a file, default_ulimits at the host's hard
#      `ulimit -n`), its own image storage and network configs under
#      $COMPOSE_CACHE, its own API socket in a temporary directory;
#   2. the images: debian:12 and debian:12-slim debootstrapped from this
#      machine's Debian mirror, stand-ins for postgres:15, redis:7 and the
#      LB's nginx built from Debian packages (images.sh), then couponsvc
#      built from deploy/Dockerfile by `docker-compose build`;
#   3. `docker-compose up -d` with the LB published on 127.0.0.1 and a free
#      port; every health check must pass (a background loop runs them:
#      without systemd podman never does);
#   4. the bundled load test (`--profile loadtest run loadgen`: the race
#      check, verified in PostgreSQL), then build/loadgen from this machine
#      through the LB on 127.0.0.1, verified in PostgreSQL the same way;
#   5. one replica killed (SIGKILL) under load: at most the requests in
#      flight on it fail, the invariants hold, the replica comes back;
#   6. --scale couponsvc=5: five healthy replicas, all five get requests
#      from the LB; back to 3: no error, three get requests;
#   7. the migrate job twice: the second applies nothing;
#   8. `docker-compose down -v`, then a check that no container, network or
#      volume of the project is left; the API service is stopped.
#
# Kept between runs, in $COMPOSE_CACHE (/var/cache/couponsvc-compose): the
# debootstrapped tree (rootfs-bookworm.tar) and podman's image storage with
# the bases, the stand-ins and couponsvc:local. Those image names exist in
# that storage only, never in the machine's own /var/lib/containers. A
# second run rebuilds only what changed. `rm -rf $COMPOSE_CACHE` forgets it.
#
# Needs root (rootful podman), podman, runc, docker-compose, debootstrap,
# curl, python3, and build/loadgen (make). Traffic goes to 127.0.0.1 and
# to the test's own container network, removed at the end.
#
# Settings: COMPOSE_CACHE, COMPOSE_KEEP=1 (leave the stack up on failure,
# for a look; `docker-compose -p couponsvc-ctest down -v` with the printed
# DOCKER_HOST removes it), LOADGEN.

set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE=${COMPOSE_CACHE:-/var/cache/couponsvc-compose}
LOADGEN=${LOADGEN:-$ROOT/build/loadgen}
case $LOADGEN in /*) ;; *) LOADGEN=$PWD/$LOADGEN ;; esac
PROJECT=couponsvc-ctest
T0=$SECONDS

say() { printf 'test-compose: [%3ds] %s\n' $((SECONDS - T0)) "$*" >&2; }
die() {
    printf 'test-compose: FAIL: %s\n' "$*" >&2
    exit 1
}
have() { command -v "$1" >/dev/null 2>&1; }

[ "$(id -u)" = 0 ] || die "run as root (rootful podman)"
for t in podman runc docker-compose debootstrap curl python3 flock; do
    have "$t" || die "$t is missing (sh deploy/deps.sh compose)"
done
[ -x "$LOADGEN" ] || die "$LOADGEN not found: make"
[ -x /usr/lib/cni/dnsname ] ||
    die "the CNI dnsname plugin is missing (apt-get install golang-github-containernetworking-plugin-dnsname): without it the containers cannot find each other by name"

mkdir -p "$CACHE/cni" "$CACHE/storage"
# One run at a time: the cache's storage is shared by runs.
exec 9>"$CACHE/lock"
flock -w 600 9 || die "another test-compose holds $CACHE/lock"

WORK=$(mktemp -d /tmp/couponsvc-compose.XXXXXX)
LOGS=$WORK/logs
mkdir -p "$LOGS"
RUNROOT=/run/couponsvc-compose

# --- 1. podman, for this test only ----------------------------------------------

# The containers' limits must not exceed podman's own hard limits (runc has
# no CAP_SYS_RESOURCE to raise them: EPERM). Those are not the shell's:
# podman sets its own at start (here nproc 32768 against the shell's
# 96365). So they are read from a podman process.
podman system service --time=2 "unix://$WORK/probe.sock" >/dev/null 2>&1 &
probe=$!
sleep 0.5
NOFILE=$(awk '/^Max open files/ { print $5 }' "/proc/$probe/limits" 2>/dev/null || true)
NPROC=$(awk '/^Max processes/ { print $4 }' "/proc/$probe/limits" 2>/dev/null || true)
kill "$probe" 2>/dev/null || true
wait "$probe" 2>/dev/null || true
rm -f "$WORK/probe.sock"
case $NOFILE in '' | *[!0-9]*) NOFILE=$(ulimit -Hn) ;; esac
case $NPROC in '' | *[!0-9]*) NPROC=$(ulimit -Hu) ;; esac
[ "$NOFILE" = unlimited ] && NOFILE=1048576
[ "$NPROC" = unlimited ] && NPROC=4194304
cat >"$WORK/containers.conf" <<EOF
# test-compose.sh's podman: written for one run.
[containers]
# At most podman's own hard limits (see above): its defaults (nofile
# 1048576, nproc 4194304) are higher here, and runc then fails with EPERM.
default_ulimits = ["nofile=$NOFILE:$NOFILE", "nproc=$NPROC:$NPROC"]
[network]
network_config_dir = "$CACHE/cni"
[engine]
# crun fails here: "cgroups in hybrid mode not supported".
runtime = "runc"
cgroup_manager = "cgroupfs"
# No journald.
events_logger = "file"
events_logfile_path = "$WORK/events.log"
tmp_dir = "$RUNROOT/libpod"
EOF
cat >"$WORK/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$CACHE/storage"
runroot = "$RUNROOT/storage"
EOF
export CONTAINERS_CONF=$WORK/containers.conf CONTAINERS_STORAGE_CONF=$WORK/storage.conf
SOCK=$WORK/podman.sock
export DOCKER_HOST=unix://$SOCK
export COMPOSE_PROJECT_NAME=$PROJECT
# docker-compose's own client timeout (60 s) is short for a build here.
export COMPOSE_HTTP_TIMEOUT=600
# compose 1.29 builds with the classic builder API, which podman serves.
export DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0

SERVICE_PID='' HC_PID='' STARTED=0
IPFWD=$(cat /proc/sys/net/ipv4/ip_forward)

compose() { docker-compose -f "$ROOT/docker-compose.yml" --project-directory "$ROOT" "$@"; }

# The project's containers, networks and volumes that exist now.
leftovers() {
    podman ps -a --filter "label=com.docker.compose.project=$PROJECT" --format '{{.Names}}' 2>/dev/null
    podman network ls --format '{{.Name}}' 2>/dev/null | grep "^${PROJECT}_" || true
    podman volume ls --format '{{.Name}}' 2>/dev/null | grep "^${PROJECT}_" || true
}

# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
    local rc=$? left
    trap - EXIT
    trap '' INT TERM
    if [ -n "$HC_PID" ]; then
        kill "$HC_PID" 2>/dev/null || true
        wait "$HC_PID" 2>/dev/null || true
    fi
    if [ "$STARTED" = 1 ] && [ "$rc" != 0 ] && [ "${COMPOSE_KEEP:-0}" = 1 ]; then
        say "COMPOSE_KEEP=1: the stack stays up; DOCKER_HOST=$DOCKER_HOST CONTAINERS_CONF=$CONTAINERS_CONF CONTAINERS_STORAGE_CONF=$CONTAINERS_STORAGE_CONF"
        exit "$rc"
    fi
    if [ "$STARTED" = 1 ]; then
        say "docker-compose down -v"
        compose --profile loadtest down -v --remove-orphans -t 20 >"$LOGS/down.log" 2>&1 ||
            { cat "$LOGS/down.log" >&2; rc=1; }
        # What compose left (a container of a failed `run`): removed by podman.
        left=$(leftovers)
        if [ -n "$left" ]; then
            say "FAIL: left after down: $(echo "$left" | tr '\n' ' ')"
            rc=1
            podman ps -aq --filter "label=com.docker.compose.project=$PROJECT" |
                xargs -r podman rm -f -t 5 >/dev/null 2>&1 || true
            podman network ls --format '{{.Name}}' | grep "^${PROJECT}_" | xargs -r podman network rm -f >/dev/null 2>&1 || true
            podman volume ls --format '{{.Name}}' | grep "^${PROJECT}_" | xargs -r podman volume rm -f >/dev/null 2>&1 || true
        fi
        # Images a rebuild replaced: no name, no use. (The builder stage's
        # layers are kept by its tag, localhost/couponsvc-ctest/builder.)
        podman image prune -f >/dev/null 2>&1 || true
    fi
    if [ -n "$SERVICE_PID" ]; then
        kill -TERM "$SERVICE_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$SERVICE_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SERVICE_PID" 2>/dev/null || true
        wait "$SERVICE_PID" 2>/dev/null || true
    fi
    # The CNI bridge plugin turns IP forwarding on for the host: put it back.
    echo "$IPFWD" >/proc/sys/net/ipv4/ip_forward 2>/dev/null || true
    if [ "$rc" = 0 ]; then
        rm -rf "$WORK"
        say "passed in $((SECONDS - T0)) s"
    else
        say "logs kept in $LOGS"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "podman $(podman --version | awk '{print $3}'), $(docker-compose version --short), storage $CACHE/storage, nofile $NOFILE, nproc $NPROC"
podman system service --time=0 "unix://$SOCK" >"$LOGS/podman-service.log" 2>&1 &
SERVICE_PID=$!
for _ in $(seq 100); do
    curl -s -m 1 --unix-socket "$SOCK" http://d/_ping 2>/dev/null | grep -q OK && break
    kill -0 "$SERVICE_PID" 2>/dev/null || { cat "$LOGS/podman-service.log" >&2; die "podman system service exited"; }
    sleep 0.1
done
curl -s -m 1 --unix-socket "$SOCK" http://d/_ping | grep -q OK || die "podman's API does not answer on $SOCK"

# A project that a killed run left behind goes first.
if [ -n "$(leftovers)" ]; then
    say "removing what an earlier run left"
    compose --profile loadtest down -v --remove-orphans -t 5 >/dev/null 2>&1 || true
fi

# Health checks: podman runs them from systemd timers, and there is no
# systemd here. This loop runs every container's check every 2 s (the
# compose file's shortest interval), until the test ends.
healthchecks() {
    local id end=$((SECONDS + 3600))
    while [ "$SECONDS" -lt "$end" ]; do
        for id in $(podman ps -q --filter "label=com.docker.compose.project=$PROJECT" 2>/dev/null); do
            timeout 10 podman healthcheck run "$id" >/dev/null 2>&1 &
        done
        wait
        sleep 2
    done
}

# --- 2. images -------------------------------------------------------------------

# shellcheck source=tests/compose/images.sh
. "$HERE/images.sh"
make_bases
make_standins

# Throwaway secrets, and the deployment settings (docker-compose.yml's head).
secret() { od -An -N16 -tx1 /dev/urandom | tr -d ' \n'; }
POSTGRES_PASSWORD=$(secret) COUPON_REDIS_PASSWORD=$(secret)
REDIS_ADMIN_PASSWORD=$(secret) COUPON_ADMIN_TOKEN=$(secret)
export POSTGRES_PASSWORD COUPON_REDIS_PASSWORD REDIS_ADMIN_PASSWORD COUPON_ADMIN_TOKEN
tries=0
while :; do
    PORT=$((20000 + RANDOM % 11000))
    [ -z "$(ss -Htan "sport = :$PORT" 2>/dev/null)" ] && break
    tries=$((tries + 1))
    [ "$tries" -lt 50 ] || die "no free port found"
done
# Every request of the load below comes from one address: the LB's
# per-client rate limit would answer most of them 429.
export COUPONSVC_LB_RATE_LIMIT=off
export COUPONSVC_LB_PUBLISH=127.0.0.1:$PORT COUPONSVC_NOFILE=$NOFILE COUPONSVC_NPROC=$NPROC
# A replica that dies holding a coupon's lock blocks that coupon until the
# lock's TTL (5 s) runs out; a claim waiting for it longer than
# COUPON_LOCK_WAIT_MS (2 s by default) is answered 503, as documented. The
# kill test below counts on one thing only, requests in flight on the dead
# replica: so claims here wait past the TTL.
export COUPON_LOCK_WAIT_MS=8000
URL=http://127.0.0.1:$PORT
DSN=postgresql://couponsvc:$POSTGRES_PASSWORD@postgres:5432/couponsvc

compose config -q || die "docker-compose config rejects docker-compose.yml"

say "podman build -f deploy/Dockerfile -t couponsvc:local"
STARTED=1
b0=$SECONDS
# The image docker-compose.yml names, built as `docker-compose build` would
# build it (same Dockerfile, same context, the root .dockerignore), but by
# podman's own build command: podman's compat build API, which
# docker-compose calls, keeps no layers of a stage other than the last, so
# every run there would install the build tools again (minutes). With
# --layers a run rebuilds from the first step whose input changed.
# A file in build/ that the image must not see (the builder's own make
# writes build/ too, so build/ itself is there in any case).
date >"$ROOT/build/.test-compose-probe"
podman build --layers -f "$ROOT/deploy/Dockerfile" -t localhost/couponsvc:local "$ROOT" \
    >"$LOGS/build.log" 2>&1 || {
    tail -n 30 "$LOGS/build.log" >&2
    die "podman build failed (see $LOGS/build.log)"
}
say "built couponsvc:local in $((SECONDS - b0)) s ($(grep -c '^--> Using cache' "$LOGS/build.log") steps from the cache)"
# The context the builder saw: the root .dockerignore keeps build/, .git
# and .env out of it (a stale build/ would be copied over the clean
# build's objects, and .git defeats the layer cache at every commit).
podman build --layers --target builder -f "$ROOT/deploy/Dockerfile" -t localhost/couponsvc-ctest/builder \
    "$ROOT" >"$LOGS/build-builder.log" 2>&1 || die "podman build --target builder failed"
podman run --rm --entrypoint sh localhost/couponsvc-ctest/builder -c \
    'for p in .git build/.test-compose-probe .env; do if [ -e "/src/$p" ]; then echo "/src/$p"; fi; done' >"$LOGS/context.txt" 2>&1 ||
    die "cannot look into the builder stage: $(cat "$LOGS/context.txt")"
[ ! -s "$LOGS/context.txt" ] ||
    die "the build context holds what .dockerignore must keep out: $(tr '\n' ' ' <"$LOGS/context.txt")"
if podman run --rm --entrypoint sh couponsvc:local -c 'ls /usr/local/bin' >"$LOGS/bin.txt" 2>&1; then
    grep -qx couponsvc "$LOGS/bin.txt" && grep -qx loadgen "$LOGS/bin.txt" ||
        die "couponsvc:local lacks couponsvc or loadgen in /usr/local/bin: $(tr '\n' ' ' <"$LOGS/bin.txt")"
else
    die "couponsvc:local does not run: $(cat "$LOGS/bin.txt")"
fi
# The runtime image must start: every library the binary needs is there.
podman run --rm couponsvc:local --help >"$LOGS/help.txt" 2>&1 ||
    die "couponsvc --help fails in the image: $(head -n 5 "$LOGS/help.txt")"

# --- 3. up -----------------------------------------------------------------------

healthchecks &
HC_PID=$!

say "docker-compose up -d (LB on $URL)"
timeout 300 docker-compose -f "$ROOT/docker-compose.yml" --project-directory "$ROOT" up -d \
    --no-build >"$LOGS/up.log" 2>&1 || {
    cat "$LOGS/up.log" >&2
    compose logs --no-color >"$LOGS/compose.log" 2>&1 || true
    tail -n 40 "$LOGS/compose.log" >&2
    die "docker-compose up failed"
}

# health SERVICE: the health of each of SERVICE's running containers, one
# word per line (healthy, starting, unhealthy).
health() {
    local id
    for id in $(podman ps -q --filter "label=com.docker.compose.project=$PROJECT" \
        --filter "label=com.docker.compose.service=$1"); do
        podman inspect --format '{{.State.Health.Status}}' "$id"
    done
}

# wait_healthy SERVICE N SECS: exactly N containers of SERVICE, all healthy.
wait_healthy() {
    local svc=$1 n=$2 end=$((SECONDS + $3)) h
    while :; do
        h=$(health "$svc" | sort | uniq -c | tr -s ' ' | tr '\n' ',')
        [ "$h" = " $n healthy," ] && return 0
        [ "$SECONDS" -lt "$end" ] || die "$svc: wanted $n healthy containers, found: ${h:-none}"
        sleep 1
    done
}

for s in postgres redis; do wait_healthy "$s" 1 120; done
wait_healthy couponsvc 3 120
wait_healthy lb 1 60
say "healthy: postgres, redis, 3 replicas, lb"
migrated=$(compose logs --no-color migrate 2>&1 | grep -o 'migrate.done applied=[0-9]* known=[0-9]*' | tail -n 1)
case $migrated in
"migrate.done applied="*) say "migrate: $migrated" ;;
*) die "the migrate service left no migrate.done line: $(compose logs --no-color migrate 2>&1 | tail -n 5)" ;;
esac
[ "$(curl -s -m 5 -o /dev/null -w '%{http_code}' "$URL/healthz")" = 200 ] || die "GET $URL/healthz is not 200"
[ "$(curl -s -m 5 -o /dev/null -w '%{http_code}' "$URL/lb-healthz")" = 200 ] || die "GET $URL/lb-healthz is not 200"

# --- 4. load -----------------------------------------------------------------------

say "the bundled load test: docker-compose --profile loadtest run --rm loadgen"
LOADGEN_COUPON=ctest-bundled timeout 300 docker-compose -f "$ROOT/docker-compose.yml" \
    --project-directory "$ROOT" --profile loadtest run --rm loadgen \
    >"$LOGS/loadgen-bundled.log" 2>&1 || {
    tail -n 30 "$LOGS/loadgen-bundled.log" >&2
    die "the bundled load test failed (its invariant check included)"
}
grep -q '^verify' "$LOGS/loadgen-bundled.log" || die "the bundled load test printed no verify line"
say "  $(grep -E '^verify +(OK|FAIL)' "$LOGS/loadgen-bundled.log" | head -n 1)"

# verify COUPON: the invariant checker (loadgen --verify-only), run in the
# project's network (the database has no host port).
verify() {
    timeout 120 docker-compose -f "$ROOT/docker-compose.yml" --project-directory "$ROOT" \
        --profile loadtest run --rm --no-deps loadgen --verify-only --coupon "$1" \
        --verify-dsn "$DSN" >"$LOGS/verify-$1.log" 2>&1 || {
        cat "$LOGS/verify-$1.log" >&2
        die "the invariants do not hold for coupon $1"
    }
    say "  $1: $(grep -E '^verify +(OK|FAIL)' "$LOGS/verify-$1.log" | head -n 1)"
}

# hostload NAME ARGS...: build/loadgen through the LB on 127.0.0.1, its
# JSON report in $LOGS/NAME.json. Its exit status is returned.
hostload() {
    local name=$1
    shift
    "$LOADGEN" --url "$URL" -t 2 --timeout-ms 20000 --json "$LOGS/$name.json" -q \
        --admin-token "$COUPON_ADMIN_TOKEN" \
        "$@" >"$LOGS/$name.out" 2>&1
}
# field NAME EXPR: a figure from NAME's report (EXPR in Python over d).
field() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$LOGS/$1.json" "$2"; }
# errors NAME: requests answered neither 2xx nor 410 (sold out), plus
# those with no answer at all (transport errors).
errors() {
    field "$1" 'sum(v for k, v in d["status"].items() if k[0] != "2" and k != "410") + d["transport_errors"]'
}

say "build/loadgen through the LB on $URL: 2000 claims, 64 connections, stock 500"
hostload host-race -c 64 -n 2000 --users 2000 --coupon ctest-host --create-stock 500 ||
    { cat "$LOGS/host-race.out" >&2; die "build/loadgen through the LB failed"; }
[ "$(field host-race 'd["status"].get("201", 0)')" = 500 ] ||
    die "wanted 500 claims of the stock of 500 (201), got: $(field host-race 'd["status"]')"
verify ctest-host

# --- 5. a replica killed under load ------------------------------------------------

CONNS=32
say "one replica crashes (SIGKILL from the host) under load: $CONNS connections for 15 s"
hostload kill -c "$CONNS" -d 15 --users 1000000 --coupon ctest-kill --create-stock 1000000000 &
LG=$!
sleep 5
victim=$(podman ps --filter "label=com.docker.compose.project=$PROJECT" \
    --filter "label=com.docker.compose.service=couponsvc" --format '{{.Names}}' | sort | head -n 1)
[ -n "$victim" ] || die "no replica to kill"
# A crash, as the engine sees one: the process dies, nobody asked it to
# stop. (`podman kill` would count as a stop by the user, and podman then
# never applies the restart policy.)
vpid=$(podman inspect --format '{{.State.Pid}}' "$victim")
case $vpid in '' | 0 | *[!0-9]*) die "no pid for $victim" ;; esac
kill -KILL "$vpid" || die "kill -KILL $vpid ($victim) failed"
say "  killed $victim (pid $vpid on the host)"
rc=0
wait "$LG" || rc=$?
[ "$rc" = 0 ] || [ "$rc" = 1 ] || { cat "$LOGS/kill.out" >&2; die "loadgen under the kill: exit status $rc"; }
failed=$(errors kill)
ok=$(field kill 'd["status"].get("201", 0)')
say "  $ok claims made, $failed requests failed (status $(field kill 'd["status"]'))"
[ "$ok" -gt 0 ] || die "no claim was made during the kill test"
# Each connection has at most one request in flight: those on the killed
# replica may fail (nginx does not move a POST it has sent), nothing else.
[ "$failed" -le "$CONNS" ] || die "$failed requests failed, more than the $CONNS that can have been in flight"
verify ctest-kill
# restart: unless-stopped brings it back.
wait_healthy couponsvc 3 90
say "  $victim is back: 3 healthy replicas"

# --- 6. scale ------------------------------------------------------------------------

# lb_log: the LB's output so far (its access log goes to stdout).
lb_log() {
    podman logs "$(podman ps -q --filter "label=com.docker.compose.project=$PROJECT" \
        --filter "label=com.docker.compose.service=lb")" 2>/dev/null
}
# upstreams FROM: the distinct replica addresses in the LB's access log
# after its first FROM lines.
upstreams() { lb_log | tail -n +$(($1 + 1)) | grep -o ' up=[0-9.:]*' | sort -u | wc -l; }

say "scale to 5 replicas"
timeout 300 docker-compose -f "$ROOT/docker-compose.yml" --project-directory "$ROOT" up -d \
    --no-recreate --scale couponsvc=5 >"$LOGS/scale5.log" 2>&1 || { cat "$LOGS/scale5.log" >&2; die "scale to 5 failed"; }
wait_healthy couponsvc 5 120
# The LB's DNS cache is 5 s (compose.conf): past it, every replica is seen.
sleep 6
since=$(lb_log | wc -l)
hostload scale5 -c 32 -d 8 --users 1000000 --coupon ctest-scale5 --create-stock 1000000000 ||
    { cat "$LOGS/scale5.out" >&2; die "load at 5 replicas failed"; }
n=$(upstreams "$since")
say "  5 healthy; the LB sent requests to $n replicas, $(errors scale5) failed"
[ "$n" = 5 ] || die "the LB sent requests to $n replicas, not 5"
[ "$(errors scale5)" = 0 ] || die "requests failed at 5 replicas: $(field scale5 'd["status"]')"

say "scale back to 3"
timeout 300 docker-compose -f "$ROOT/docker-compose.yml" --project-directory "$ROOT" up -d \
    --no-recreate --scale couponsvc=3 >"$LOGS/scale3.log" 2>&1 || { cat "$LOGS/scale3.log" >&2; die "scale to 3 failed"; }
wait_healthy couponsvc 3 120
sleep 6
since=$(lb_log | wc -l)
hostload scale3 -c 32 -d 8 --users 1000000 --coupon ctest-scale3 --create-stock 1000000000 ||
    { cat "$LOGS/scale3.out" >&2; die "load at 3 replicas failed"; }
n=$(upstreams "$since")
say "  3 healthy; the LB sent requests to $n replicas, $(errors scale3) failed"
[ "$n" = 3 ] || die "the LB sent requests to $n replicas, not 3"
[ "$(errors scale3)" = 0 ] || die "requests failed after scaling to 3: $(field scale3 'd["status"]')"
verify ctest-scale5
verify ctest-scale3

# --- 7. migrate twice ------------------------------------------------------------------

# The first run was `up`'s, on the empty database: it applied every
# migration it knows. The second, on the same database, must apply none.
known=${migrated##*known=}
[ "$migrated" = "migrate.done applied=$known known=$known" ] && [ "$known" -gt 0 ] ||
    die "the first migrate did not apply every migration: $migrated"
timeout 120 docker-compose -f "$ROOT/docker-compose.yml" --project-directory "$ROOT" \
    run --rm migrate >"$LOGS/migrate2.log" 2>&1 || { cat "$LOGS/migrate2.log" >&2; die "the second migrate failed"; }
m=$(grep -o 'migrate.done applied=[0-9]* known=[0-9]*' "$LOGS/migrate2.log" | tail -n 1)
say "migrate, run 1 (up): $migrated; run 2: $m"
[ "$m" = "migrate.done applied=0 known=$known" ] || die "the second migrate was not a no-op: ${m:-no migrate.done line}"
