#!/bin/sh
# run.sh: runs each test binary in turn, adds up their "N passed, N failed"
# lines, and ends with the total on a line of its own. Exit 1 if any failed.
# An argument may carry the binary's own arguments after it, separated by
# spaces ("build/tests/fault-tests name1 name2": only those tests).
set -u
passed=0
failed=0
status=0
for bin in "$@"; do
    echo "== $bin"
    out=$(mktemp)
    # shellcheck disable=SC2086 # a binary and its arguments
    (set -f; $bin) 2>&1 | tee "$out"
    last=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$out" | tail -n 1)
    rm -f "$out"
    if [ -z "$last" ]; then
        echo "run.sh: $bin printed no summary (crashed?)"
        failed=$((failed + 1))
        status=1
        continue
    fi
    p=${last%% passed*}
    f=${last#*passed, }
    f=${f%% failed*}
    passed=$((passed + p))
    failed=$((failed + f))
    [ "$f" -eq 0 ] || status=1
done
echo "== total"
echo "$passed passed, $failed failed"
exit $status
