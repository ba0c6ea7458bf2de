#!/usr/bin/env bash
# sanitize.sh: the sanitizer passes (`make test-san-suites`: unit,
# integration and hostile input, and one fault scenario per lock backend,
# SAN_FAULTS in tests/tests.mk) under sanitizers, failing on any sanitizer
# report, not only on the reports that happen to fail a test.
#
#   tests/sanitize.sh [SANITIZE]        make test-sanitize: address,undefined
#                                       (the default); make test-tsan: thread
#
# A sanitized process stops at its first report (see tests/tests.mk), and
# usually the test talking to it fails. Usually is not always: a report in
# a service whose test sends nothing more, or in a process that exits on
# its own, would pass unseen. So after the run this script looks for
# reports in two places:
#
#   - $LOGS (build/san-logs): ASan, LSan and TSan write there (log_path);
#   - the integration harness's run directories, kept for the purpose
#     (KEEP_TEST_DIR=1): every couponsvc log. GCC's UBSan runtime ignores
#     log_path when linked with ASan, so UBSan reports land on stderr, which
#     for a service is its log.
#
# The run directories are removed afterwards. Exit status: that of the
# make, or 1 if any report was found.
set -u

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
SAN=${1:-address,undefined}
LOGS=$ROOT/build/san-logs # no commas: sanitizer option parsers split on them
PATTERN='runtime error:|ERROR: (Address|Leak|Thread|UndefinedBehavior|Memory)Sanitizer|WARNING: ThreadSanitizer'

rm -rf "$LOGS"
mkdir -p "$LOGS"
start=$(date +%s)

export ASAN_OPTIONS="log_path=$LOGS/asan:detect_leaks=1:strict_string_checks=1"
export UBSAN_OPTIONS="log_path=$LOGS/ubsan:halt_on_error=1:print_stacktrace=1"
export TSAN_OPTIONS="log_path=$LOGS/tsan:halt_on_error=1:second_deadlock_stack=1:suppressions=$ROOT/tests/tsan.supp"
export KEEP_TEST_DIR=1
{
    make --no-print-directory test-san-suites SANITIZE="$SAN"
    echo $? >"$LOGS/.status"
} 2>&1 | tee "$LOGS/.output"
status=$(cat "$LOGS/.status" 2>/dev/null || echo 1)

found=0
for f in "$LOGS"/*; do
    [ -f "$f" ] || continue
    found=1
    echo "== sanitizer report: $f"
    head -n 60 "$f"
done
dirs=$(sed -n 's/.*run directory \(\/tmp\/couponsvc-it-[A-Za-z0-9]*\).*/\1/p' \
    "$LOGS/.output" | sort -u)
for d in $dirs; do
    [ -d "$d" ] || continue
    for f in $(grep -rlE "$PATTERN" "$d" --include='*.log' 2>/dev/null); do
        found=1
        echo "== sanitizer report in $f"
        grep -E -A 25 "$PATTERN" "$f" | head -n 60
    done
    rm -rf "$d"
done

echo "sanitize.sh: make test-san-suites SANITIZE=$SAN: exit $status," \
    "$([ $found = 0 ] && echo 'no sanitizer reports' || echo 'SANITIZER REPORTS FOUND')," \
    "$(($(date +%s) - start)) s"
[ "$status" = 0 ] && [ $found = 0 ]
