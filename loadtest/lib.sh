# shellcheck shell=bash
# lib.sh: what the stack-driving scripts of loadtest/ (baseline.sh,
# bench.sh, soak.sh) share, sourced by each after it has set LT_NAME:
#
#   say MESSAGE, die MESSAGE                   "LT_NAME: MESSAGE" on stderr
#                                              (die: "LT_NAME: error: ..."
#                                              and exit 1); a script may
#                                              define its own after sourcing
#
#   ROOT, STACK_SH, LOADGEN, COUPONSVC, PY     set when this file is sourced:
#                                              the tree, deploy/stack.sh,
#                                              the two binaries (absolute,
#                                              COUPONSVC exported for
#                                              stack.sh), the python3 to use
#   lt_need_tools                              die unless both binaries and
#                                              python3 are there
#   lt_positive_ints PREFIX VAR...             die unless each VAR holds a
#                                              positive integer
#   lt_pick_ports                              a free block of ten ports, unless
#                                              the caller gave all four
#   lt_stack_up LOG ARGS...                    stack.sh up (ARGS: environment
#                                              assignments); on failure the
#                                              log's tail and die
#   lt_stack_down LOG                          stack.sh down, if lt_stack_up ran

say() { printf '%s: %s\n' "$LT_NAME" "$*" >&2; }
die() {
    printf '%s: error: %s\n' "$LT_NAME" "$*" >&2
    exit 1
}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STACK_SH=$ROOT/deploy/stack.sh
LOADGEN=${LOADGEN:-$ROOT/build/loadgen}
COUPONSVC=${COUPONSVC:-$ROOT/build/couponsvc}
case $LOADGEN in /*) ;; *) LOADGEN=$PWD/$LOADGEN ;; esac
case $COUPONSVC in /*) ;; *) COUPONSVC=$PWD/$COUPONSVC ;; esac
export COUPONSVC
PY=python3
[ -x /usr/bin/python3 ] && PY=/usr/bin/python3
STARTED=0 # 1 from the moment stack.sh up is started

lt_need_tools() {
    [ -x "$LOADGEN" ] || die "$LOADGEN not found: make $LOADGEN"
    [ -x "$COUPONSVC" ] || die "$COUPONSVC not found: make"
    command -v "$PY" >/dev/null 2>&1 || die "python3 is needed to read loadgen's JSON"
}

# lt_positive_ints PREFIX VAR...: the message names PREFIX$VAR, the
# setting the user gave (BENCH_ for bench.sh's SECS, say).
lt_positive_ints() {
    local prefix=$1 v val
    shift
    for v in "$@"; do
        eval "val=\$$v"
        case $val in '' | *[!0-9]* | 0) die "$prefix$v must be a positive integer, got '$val'" ;; esac
    done
}

# Sets LB_PORT, PG_PORT, REDIS_PORT and APP_PORT_BASE (for up to seven
# replicas) to a block of ten free ports below the ephemeral range (no
# client socket can take one meanwhile) and away from a developer's
# `make up` on 8080; all four given in the environment are kept instead.
lt_pick_ports() {
    if [ -n "${LB_PORT:-}" ] && [ -n "${PG_PORT:-}" ] && [ -n "${REDIS_PORT:-}" ] &&
        [ -n "${APP_PORT_BASE:-}" ]; then
        return 0
    fi
    local tries=0 b
    while :; do
        b=$((20000 + 10 * (RANDOM % 1100)))
        [ -z "$(ss -Htan "( sport >= :$b and sport <= :$((b + 9)) )" 2>/dev/null)" ] && break
        tries=$((tries + 1))
        [ "$tries" -lt 50 ] || die "no free block of ports found"
    done
    LB_PORT=$b PG_PORT=$((b + 1)) REDIS_PORT=$((b + 2)) APP_PORT_BASE=$((b + 3))
}

# lt_stack_up LOG [NAME=VALUE ...]: starts the stack with these in its
# environment, its output in LOG; on failure shows LOG's last 20 lines and
# dies (the stack is then not taken down: it did not come up).
lt_stack_up() {
    local log=$1
    shift
    STARTED=1
    env "$@" bash "$STACK_SH" up >"$log" 2>&1 || {
        STARTED=0
        tail -n 20 "$log" >&2
        die "stack.sh up failed"
    }
}

# lt_stack_down LOG: takes down what lt_stack_up started (for the EXIT
# trap); its output in LOG, shown only if it failed.
lt_stack_down() {
    [ "$STARTED" = 1 ] || return 0
    say "taking the stack down"
    bash "$STACK_SH" down >"$1" 2>&1 || cat "$1" >&2
}
