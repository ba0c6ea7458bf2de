#!/bin/bash
# probe.sh: container health probe, installed as couponsvc-probe.
#
#   couponsvc-probe [PATH]      exit 0 if GET PATH (default /readyz) is 200
#
# The runtime image carries libcurl but no curl binary, so the probe speaks
# just enough HTTP/1.0 over bash's /dev/tcp. The port is taken from
# COUPON_HTTP_ADDR (host:port), the address the service itself listens on.
set -eu
path=${1:-/readyz}
port=${COUPON_HTTP_ADDR##*:}
exec 3<>"/dev/tcp/127.0.0.1/${port:-8081}"
printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$path" >&3
IFS=' ' read -r -t 2 _ code _ <&3
[ "$code" = 200 ]
