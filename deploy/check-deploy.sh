#!/usr/bin/env bash
# check-deploy.sh: static checks of everything in deploy/ and of
# docker-compose.yml, without Docker, a cluster or the network
# (make check-deploy).
#
#   shell scripts   bash -n; shellcheck when installed
#   nginx configs   `nginx -t` on the local template as stack.sh renders it,
#                   and on compose.conf with the Docker-only bits replaced
#   compose         `docker compose config -q`, else `docker-compose config
#                   -q` (Debian 12: docker-compose), when either works here;
#                   then YAML syntax and structure (check_deploy.py)
#   kubernetes      `kubectl kustomize deploy/k8s` when kubectl is installed
#                   (Debian 12: kubernetes-client), then YAML syntax and
#                   structure of the rendered objects (check_deploy.py)
#   Dockerfile      structure (check_deploy.py); building needs an engine
#   systemd         `systemd-analyze verify` when present; structure
#   prometheus      `promtool check config`, `check rules`, `test rules`
#                   (alerts_test.yml) when promtool is installed (Debian:
#                   prometheus)
#   metric names    every metric the alert rules and the Grafana dashboard
#                   name, and every label value they select, exists in the
#                   /metrics of a real couponsvc ($COUPONSVC, default
#                   build/couponsvc; started on a free loopback port with no
#                   reachable backend, stopped at once): check_metrics.py
#
# A tool that is missing is reported as skipped; the Python checks always
# run and need python3 with the yaml module (Debian: python3-yaml).

set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

failed=0
step() { printf '%s\n' "-- $*"; }
ok() { printf '   ok   %s\n' "$*"; }
skip() { printf '   skip %s\n' "$*"; }
bad() {
    printf '   FAIL %s\n' "$*"
    failed=$((failed + 1))
}
have() { command -v "$1" >/dev/null 2>&1; }

# python3 with yaml: the system one first (a pyenv python3 may lack yaml).
PY=
for p in /usr/bin/python3 python3; do
    if have "$p" && "$p" -c 'import yaml' 2>/dev/null; then
        PY=$p
        break
    fi
done

# ------------------------------------------------------------- shell ------
step "shell scripts"
for f in deploy/*.sh deploy/build/*.sh deploy/tour/*.sh; do
    if bash -n "$f"; then ok "bash -n $f"; else bad "bash -n $f"; fi
done
if have shellcheck; then
    if shellcheck -x deploy/*.sh deploy/build/*.sh deploy/tour/*.sh; then ok "shellcheck deploy/*.sh deploy/build/*.sh deploy/tour/*.sh"; else bad "shellcheck deploy/*.sh deploy/build/*.sh deploy/tour/*.sh"; fi
else
    skip "shellcheck not installed (apt-get install shellcheck)"
fi

# ------------------------------------------------------------- nginx ------
step "nginx"
if have nginx; then
    # The local template, rendered the way stack.sh renders it.
    mkdir -p "$TMP/local/nginx/tmp" "$TMP/local/logs"
    cp deploy/nginx/proxy.conf deploy/nginx/http.conf "$TMP/local/nginx/"
    awk -v sd="$TMP/local" '
        /^@UPSTREAM_SERVERS@$/ {
            print "        server 127.0.0.1:8081 max_fails=3 fail_timeout=5s;"
            print "        server 127.0.0.1:8082 max_fails=3 fail_timeout=5s;"
            next
        }
        { gsub(/@STACK_DIR@/, sd); gsub(/@LB_PORT@/, "8080"); gsub(/@USER_LINE@/, "")
          gsub(/@RLIMIT_NOFILE@/, "20000"); gsub(/@WORKER_CONNECTIONS@/, "8192"); print }
    ' deploy/nginx/local.conf.in >"$TMP/local/nginx/nginx.conf"
    left=$(grep -v '^[[:space:]]*#' "$TMP/local/nginx/nginx.conf" | grep -o '@[A-Z_]*@' | sort -u | tr '\n' ' ' || true)
    if [ -n "$left" ]; then
        bad "local.conf.in has a placeholder this check does not fill: $left"
    elif nginx -t -q -p "$TMP/local/nginx" -e "$TMP/local/logs/error.log" \
        -c "$TMP/local/nginx/nginx.conf" 2>"$TMP/nginx-local.err"; then
        ok "nginx -t deploy/nginx/local.conf.in (rendered)"
    else
        cat "$TMP/nginx-local.err"
        bad "nginx -t deploy/nginx/local.conf.in"
    fi
    # compose.conf: the paths are the container's, and the resolver file and
    # http.conf are put in /tmp/couponsvc-lb/ by the lb service's command at
    # start. Put them here, check it as it is otherwise (the service name is
    # resolved at request time).
    mkdir -p "$TMP/compose/tmp/couponsvc-lb"
    echo "resolver 127.0.0.1 valid=5s ipv6=off;" >"$TMP/compose/tmp/couponsvc-lb/resolver.conf"
    cp deploy/nginx/http.conf "$TMP/compose/tmp/couponsvc-lb/http.conf"
    cp deploy/nginx/proxy.conf "$TMP/compose/proxy.conf"
    sed -e "s#/tmp/#$TMP/compose/tmp/#g" \
        -e "s#/etc/nginx/couponsvc/#$TMP/compose/#g" \
        deploy/nginx/compose.conf >"$TMP/compose/nginx.conf"
    if nginx -t -q -p "$TMP/compose" -e "$TMP/compose/error.log" \
        -c "$TMP/compose/nginx.conf" 2>"$TMP/nginx-compose.err"; then
        ok "nginx -t deploy/nginx/compose.conf (container paths replaced)"
    else
        cat "$TMP/nginx-compose.err"
        bad "nginx -t deploy/nginx/compose.conf"
    fi
else
    skip "nginx not installed (apt-get install nginx-light)"
fi

# ------------------------------------------------------------ compose -----
step "docker compose"
# The file requires its secrets (${VAR:?}): give it throwaway ones, every
# variable deploy/compose.env.example lists.
COMPOSE_ENV=$(sed -n 's/^\([A-Z_]*\)=$/\1=check-deploy/p' deploy/compose.env.example | tr '\n' ' ')
if have docker && docker compose version >/dev/null 2>&1; then
    # shellcheck disable=SC2086 # one word per variable
    if env $COMPOSE_ENV docker compose -f docker-compose.yml config -q; then ok "docker compose config -q"; else bad "docker compose config -q"; fi
elif have docker-compose; then
    # shellcheck disable=SC2086
    if env $COMPOSE_ENV docker-compose -f docker-compose.yml config -q; then
        ok "docker-compose config -q ($(docker-compose version --short 2>/dev/null))"
    else
        bad "docker-compose config -q"
    fi
else
    skip "no docker compose plugin nor docker-compose (apt-get install docker-compose); YAML checks below"
fi

# --------------------------------------------------------- kubernetes -----
step "kubernetes"
RENDERED=
if have kubectl; then
    if kubectl kustomize deploy/k8s >"$TMP/k8s.yaml" 2>"$TMP/k8s.err"; then
        ok "kubectl kustomize deploy/k8s ($(grep -c '^kind:' "$TMP/k8s.yaml") objects)"
        RENDERED=$TMP/k8s.yaml
    else
        cat "$TMP/k8s.err"
        bad "kubectl kustomize deploy/k8s"
    fi
else
    skip "kubectl not installed (apt-get install kubernetes-client); checking the files listed in kustomization.yaml"
fi

# ------------------------------------------------------------ systemd -----
step "systemd"
if have systemd-analyze; then
    # The unit names /usr/local/bin/couponsvc, which need not be installed
    # here: that one complaint is expected, any other is a failure.
    cp deploy/systemd/couponsvc@.service "$TMP/couponsvc@.service"
    systemd-analyze verify "$TMP/couponsvc@8081.service" >"$TMP/sd.out" 2>&1 || true
    if grep -v -e 'is not executable' -e '^$' "$TMP/sd.out" >"$TMP/sd.err"; then
        cat "$TMP/sd.err"
        bad "systemd-analyze verify couponsvc@.service"
    else
        ok "systemd-analyze verify couponsvc@.service"
    fi
else
    skip "systemd-analyze not installed"
fi

# --------------------------------------------------------- prometheus -----
step "prometheus"
if have promtool; then
    if promtool check config deploy/prometheus/prometheus.yml >"$TMP/prom.out" 2>&1; then
        ok "promtool check config deploy/prometheus/prometheus.yml"
    else
        cat "$TMP/prom.out"
        bad "promtool check config deploy/prometheus/prometheus.yml"
    fi
    if promtool check rules deploy/prometheus/alerts.yml >"$TMP/prom.out" 2>&1; then
        ok "promtool check rules deploy/prometheus/alerts.yml ($(grep -c '^      - alert:' deploy/prometheus/alerts.yml) alerts)"
    else
        cat "$TMP/prom.out"
        bad "promtool check rules deploy/prometheus/alerts.yml"
    fi
    # promtool resolves rule_files relative to the working directory.
    if (cd deploy/prometheus && promtool test rules alerts_test.yml) >"$TMP/prom.out" 2>&1; then
        ok "promtool test rules deploy/prometheus/alerts_test.yml"
    else
        cat "$TMP/prom.out"
        bad "promtool test rules deploy/prometheus/alerts_test.yml"
    fi
else
    skip "promtool not installed (apt-get install prometheus)"
fi

step "metric names (rules, dashboard) against a real /metrics"
SVC=${COUPONSVC:-$ROOT/build/couponsvc}
if [ ! -x "$SVC" ]; then
    skip "no couponsvc binary at $SVC (make first, or set COUPONSVC)"
elif [ -z "$PY" ]; then
    bad "python3 with the yaml module not found (apt-get install python3-yaml)"
else
    port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    # Backends on port 1 (nothing listens there): the replica starts, serves
    # /metrics with every family, and its probe reports both down.
    COUPON_HTTP_ADDR=127.0.0.1:$port COUPON_INSTANCE_ID=check-deploy \
        COUPON_PG_DSN='host=127.0.0.1 port=1 dbname=none user=none' \
        COUPON_REDIS_ADDRS=127.0.0.1:1 COUPON_LOG_LEVEL=warn \
        "$SVC" >"$TMP/svc.log" 2>&1 &
    svc_pid=$!
    got=0
    for _ in $(seq 100); do
        if curl -sf "http://127.0.0.1:$port/metrics" -o "$TMP/metrics.txt" 2>/dev/null &&
            grep -q '^couponsvc_backend_up{backend="postgres"}' "$TMP/metrics.txt"; then
            got=1
            break
        fi
        kill -0 "$svc_pid" 2>/dev/null || break
        sleep 0.1
    done
    kill "$svc_pid" 2>/dev/null || true
    wait "$svc_pid" 2>/dev/null || true
    if [ "$got" = 1 ]; then
        if "$PY" deploy/check_metrics.py "$TMP/metrics.txt" deploy/prometheus/alerts.yml \
            deploy/grafana/*.json; then
            ok "every metric and label value named in deploy/prometheus and deploy/grafana is in /metrics"
        else
            bad "deploy/prometheus or deploy/grafana names what /metrics does not have"
        fi
    else
        cat "$TMP/svc.log"
        bad "couponsvc ($SVC) did not serve /metrics on 127.0.0.1:$port within 10 s"
    fi
fi

# ------------------------------------------------------------ python ------
step "structure (check_deploy.py)"
if [ -n "$PY" ]; then
    if "$PY" deploy/check_deploy.py "$ROOT" ${RENDERED:+"$RENDERED"}; then :; else bad "check_deploy.py"; fi
else
    bad "python3 with the yaml module not found (apt-get install python3-yaml)"
fi

echo
if [ "$failed" -eq 0 ]; then
    echo "check-deploy: all checks passed"
else
    echo "check-deploy: $failed check(s) failed"
    exit 1
fi
