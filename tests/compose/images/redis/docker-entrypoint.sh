#!/bin/sh
# The stand-in redis:7 entrypoint, as the official one: `-flag` or a
# `.conf` first means redis-server; redis-server started as root gets /data
# and runs as user redis.
set -eu

case ${1:-} in
-* | *.conf) set -- redis-server "$@" ;;
esac

if [ "${1:-}" = redis-server ] && [ "$(id -u)" = 0 ]; then
    find . \! -user redis -exec chown redis '{}' +
    exec setpriv --reuid=redis --regid=redis --init-groups "$0" "$@"
fi

exec "$@"
