#!/bin/sh
# run.sh: runs each test binary in turn, adds up their "N passed, N failed"
# lines, and ends with the total on a line of its own. Exit 1 if any failed.
# Just above the total it repeats every FAIL line the binaries printed, with
# the suite it came from and the failed checks reported since the test
# before it ("file.c:line: ..." lines): a CI log is often read from its
# tail only, and the failed test's name and reason must be in that tail.
# An argument may carry the binary's own arguments after it, separated by
# spaces ("build/tests/fault-tests name1 name2": only those tests).
set -u
passed=0
failed=0
status=0
fails=$(mktemp)
trap 'rm -f "$fails"' EXIT
for bin in "$@"; do
    echo "== $bin"
    out=$(mktemp)
    # shellcheck disable=SC2086 # a binary and its arguments
    (set -f; $bin) 2>&1 | tee "$out"
    last=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$out" | tail -n 1)
    # Each suite starts its own lines of a failed test with FAIL (tt.c, the
    # stack's and the docs' scripts); indented FAIL lines are a test's own
    # report of a subprocess that had to fail, not a failure.
    awk -v bin="$bin" '
        /^ok / { why = "" }
        /^ +[^ ]+\.(c|sh|py):[0-9]+: / { why = why "  " bin ": " $0 "\n" }
        /^FAIL / { printf "%s  %s: %s\n", why, bin, $0; why = "" }
    ' "$out" >>"$fails"
    rm -f "$out"
    if [ -z "$last" ]; then
        echo "run.sh: $bin printed no summary (crashed?)"
        echo "  $bin: printed no summary" >>"$fails"
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
if [ -s "$fails" ]; then
    echo "failed:"
    cat "$fails"
fi
echo "$passed passed, $failed failed"
exit $status
