#!/bin/sh
# deps.sh: install the Debian 12 packages couponsvc needs to build, test and
# run its demo. Only packages that are missing are installed; sudo is used
# when not root. Called by `make deps`, and by `make test` / `make demo`
# through `deps-check` when a library is missing.
set -eu

# Build: compiler, pkg-config and the five libraries (libcurl also serves
# the tests, the load generator and the etcd lock backend). Run: PostgreSQL and Redis servers for tests and the
# local stack, nginx as the load balancer. Tools: wrk (load generator
# benchmark), gnuplot (report), faketime (clock-jump fault test), clang
# (fuzzer), clang-format-16 (make format, make check-format), valgrind (leak check), procps/iproute2 for the harness; spin
# (the lock protocol's model, make model);
# etcd (server and etcdctl) for the etcd lock backend's tests and local stack;
# prometheus for promtool (make check-deploy checks and tests the alert
# rules; its server is not started, see below).
PKGS="build-essential pkg-config
libmicrohttpd-dev libhiredis-dev libjansson-dev libpq-dev libcurl4-openssl-dev
postgresql-15 postgresql-client-15 redis-server redis-tools nginx-light
wrk gnuplot-nox faketime clang clang-format-16 valgrind procps iproute2 curl ca-certificates
python3 python3-yaml etcd-server etcd-client spin
prometheus"

# `deps.sh compose`: what make test-compose needs instead (podman driven by
# docker-compose 1.29, runc, debootstrap for the base images, and the CNI
# dnsname plugin, without which containers cannot find each other by name).
if [ "${1:-}" = compose ]; then
    PKGS="podman runc docker-compose debootstrap golang-github-containernetworking-plugin-dnsname
curl python3 util-linux"
fi

missing=""
for p in $PKGS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
        missing="$missing $p"
    fi
done

if [ -z "$missing" ]; then
    exit 0
fi

echo "deps: installing:$missing"
if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
else
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive

# Installing postgresql-15, redis-server, nginx-light or prometheus would
# also start their system services (PostgreSQL on 5432, Redis on 6379, nginx
# on 80, Prometheus on 9090),
# which nothing here uses: the tests and the local stack run their own. A
# policy-rc.d that exits 101 ("action forbidden") tells invoke-rc.d and
# deb-systemd-invoke, which the packages' scripts call, to start nothing
# during this install; it is removed afterwards. The services stay enabled
# as Debian installs them, so they start at the next boot unless disabled.
# A policy-rc.d that was there before (a container image's) is left alone.
POLICY=/usr/sbin/policy-rc.d
if [ ! -e "$POLICY" ]; then
    trap '$SUDO rm -f "$POLICY"' EXIT
    trap 'exit 130' INT TERM
    printf '#!/bin/sh\n# deploy/deps.sh: no service starts during its install.\nexit 101\n' |
        $SUDO tee "$POLICY" >/dev/null
    $SUDO chmod 755 "$POLICY"
fi
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing
