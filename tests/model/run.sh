#!/usr/bin/env bash
# run.sh: `make model`. Checks tests/model/lock.pml with spin in each
# configuration below, by exhaustive search, and prints one line per
# configuration and a summary.
#
#   tests/model/run.sh [SUBSTRING...]   only the configurations whose name
#                                       contains one of them
#
# A configuration marked "pass" must be searched completely with no error.
# One marked "fail P1|P2|P3" is a negative control (a guard removed) or a
# known weak spot: spin must find a counterexample, and the assertion it
# violates must be that property's; its trail is replayed into
# build/model/NAME/trail.txt (the MSC: lines, one event each; the README's
# "The protocol, model-checked" says how to read it). Exit 1 if any
# configuration did not turn out as marked.
#
# Environment: MODEL_DIR (build/model), MODEL_MEMLIM (MB per search, 2048),
# MODEL_TIMEOUT (seconds per search, 600).
set -u

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
MODEL=$ROOT/tests/model/lock.pml
OUT=${MODEL_DIR:-$ROOT/build/model}
MEMLIM=${MODEL_MEMLIM:-2048}
TIMEOUT=${MODEL_TIMEOUT:-600}

# name | expect | spin defines. N nodes, L leases, TOTAL stock, CTR_MAX the
# counters' spread at the start (see lock.pml).
CONFIGS="
single|pass|-DN=1 -DL=3 -DTOTAL=2 -DCTR_MAX=2
redlock3|pass|-DN=3 -DL=2 -DTOTAL=2 -DCTR_MAX=1
single_data_loss_delayed_restart|pass|-DN=1 -DL=3 -DTOTAL=2 -DCTR_MAX=0 -DDATALOSS -DDELAYED_RESTART
redlock3_data_loss_delayed_restart|pass|-DN=3 -DL=2 -DTOTAL=2 -DCTR_MAX=0 -DDATALOSS -DDELAYED_RESTART
neg_writeback_unconditional|fail P1|-DN=3 -DL=2 -DTOTAL=2 -DCTR_MAX=1 -DWB_UNCOND
neg_no_writeback|fail P1|-DN=3 -DL=2 -DTOTAL=2 -DCTR_MAX=1 -DNO_WB
neg_no_fence_predicate|fail P2|-DN=3 -DL=2 -DTOTAL=2 -DCTR_MAX=1 -DNO_FENCE
neg_single_no_fence_predicate|fail P2|-DN=1 -DL=3 -DTOTAL=2 -DCTR_MAX=2 -DNO_FENCE
neg_no_stock_predicate|fail P3|-DN=1 -DL=3 -DTOTAL=2 -DCTR_MAX=2 -DNO_STOCK
weak_single_data_loss_no_delay|fail P2|-DN=1 -DL=3 -DTOTAL=2 -DCTR_MAX=0 -DDATALOSS
weak_redlock3_data_loss_no_delay|fail P2|-DN=3 -DL=2 -DTOTAL=2 -DCTR_MAX=0 -DDATALOSS"

# The text of each property's assertion, as pan prints it.
prop_of() { # the "assertion violated (...)" text
    case $1 in
    *'fence['*'>fence['*) echo P1 ;;
    *'accepted['*) echo P2 ;;
    *'claimed<='*) echo P3 ;;
    *) echo '?' ;;
    esac
}

selected() {
    [ $# -le 1 ] && return 0
    local name=$1
    shift
    for s in "$@"; do
        case $name in *"$s"*) return 0 ;; esac
    done
    return 1
}

command -v spin >/dev/null || {
    echo "run.sh: spin is not installed (apt-get install spin)"
    exit 1
}
mkdir -p "$OUT"
echo "model: $(spin -V | head -n 1); memory limit $MEMLIM MB per search"
printf '%-36s %-8s %-8s %12s %6s %7s  %s\n' configuration expect result states depth seconds note
bad=0
ran=0
summary=""
t_all=$(date +%s)
while IFS='|' read -r name expect defs; do
    [ -n "$name" ] || continue
    selected "$name" "$@" || continue
    ran=$((ran + 1))
    d=$OUT/$name
    rm -rf "$d"
    mkdir -p "$d"
    cp "$MODEL" "$d/lock.pml"
    t0=$(date +%s)
    # shellcheck disable=SC2086 # defs is a list of words
    if ! (cd "$d" && spin -a $defs lock.pml >spin.out 2>&1 &&
        cc -w -O2 -DSAFETY -DCOLLAPSE -DMEMLIM="$MEMLIM" -o pan pan.c \
            >cc.out 2>&1); then
        echo "$name: spin or cc failed:"
        cat "$d/spin.out" "$d/cc.out" 2>/dev/null | head -n 20
        bad=$((bad + 1))
        continue
    fi
    # -m: the depth bound, far above what any run reaches (a deeper one
    # would say "max search depth too small" and count as incomplete).
    (cd "$d" && timeout "$TIMEOUT" ./pan -m20000 -w25 >pan.out 2>&1)
    secs=$(($(date +%s) - t0))
    states=$(sed -n 's/^ *\([0-9]*\) states, stored.*/\1/p' "$d/pan.out" | head -n 1)
    depth=$(sed -n 's/.*depth reached \([0-9]*\).*/\1/p' "$d/pan.out" | head -n 1)
    errors=$(sed -n 's/.*errors: \([0-9]*\).*/\1/p' "$d/pan.out" | head -n 1)
    incomplete=0
    grep -qE 'max search depth too small|out of memory|Search not completed' \
        "$d/pan.out" && incomplete=1
    [ -n "$errors" ] || incomplete=1
    result=pass
    note=""
    if [ "$incomplete" = 1 ] && [ "${errors:-0}" = 0 ]; then
        result=incomplete
        note="search did not finish (see $d/pan.out)"
    elif [ "${errors:-0}" != 0 ]; then
        what=$(grep -m 1 -E 'assertion violated|invalid end state' "$d/pan.out")
        result="fail $(prop_of "$what")"
        # shellcheck disable=SC2086
        (cd "$d" && spin -t $defs lock.pml 2>&1 |
            sed -n 's/^ *MSC: //p; s/^spin: text of failed assertion: /VIOLATED: /p' \
                >trail.txt)
        note="trail: ${d#"$ROOT"/}/trail.txt ($(wc -l <"$d/trail.txt") steps)"
    fi
    ok=no
    [ "$result" = "$expect" ] && ok=yes
    [ $ok = yes ] || bad=$((bad + 1))
    printf '%-36s %-8s %-8s %12s %6s %7s  %s\n' "$name" "$expect" "$result" \
        "${states:-?}" "${depth:-?}" "$secs" "$([ $ok = yes ] && echo "$note" || echo "UNEXPECTED: $note")"
    summary="$summary $name:$ok"
done <<EOF
$CONFIGS
EOF
echo "model: $ran configurations, $((ran - bad)) as expected, $bad not," \
    "$(($(date +%s) - t_all)) s"
if [ $bad = 0 ] && [ $ran -gt 0 ]; then
    echo "MODEL: PASS - every real configuration verified; every negative control and weak spot has its counterexample"
else
    echo "MODEL: FAIL -$(echo "$summary" | tr ' ' '\n' | grep ':no' | sed 's/:no//' | tr '\n' ' ')"
    exit 1
fi
