#!/usr/bin/env bash
# sanitize-selfcheck.sh: proves that a sanitizer report in couponsvc fails
# the tests, the way test-negative proves the invariant checks can fail.
#
#   tests/sanitize-selfcheck.sh          (make test-sanitize-selfcheck)
#
# For each planted bug: copy the tree to a temporary directory, add one bad
# line to service/api.c's claim handler, build that copy with
# SANITIZE=address,undefined, and run one integration test (this tree's
# sanitized test binary) against the broken service, with the same sanitizer
# options as `make test-sanitize`. The check passes only if, for every bug,
# the test FAILS and a sanitizer report of the expected kind is found where
# tests/sanitize.sh looks for one.
#
#   heap-overflow   ASan: one byte past an 8-byte malloc, on every claim
#   signed-overflow UBSan: INT_MAX + 1, on every claim
#   leak            LSan: 64 bytes lost per claim, seen only at exit; the
#                   graceful-shutdown test SIGTERMs the service and expects
#                   exit status 0
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
SAN=address,undefined
# The Makefile's name for the sanitized build directory.
SANDIR=$(make -s --no-print-directory -f Makefile -f - SANITIZE=$SAN print-build <<'EOF'
print-build:
	@echo $(BUILD)
EOF
)
ITEST=$ROOT/$SANDIR/tests/integration-tests

say() { printf 'sanitize-selfcheck: %s\n' "$*"; }

say "building this tree's sanitized tests ($SANDIR)"
make -s --no-print-directory SANITIZE=$SAN "$SANDIR/tests/integration-tests" >/dev/null

WORK=$(mktemp -d /tmp/couponsvc-sancheck-XXXXXX)
trap 'rm -rf "$WORK"' EXIT

# plant NAME LINE TEST KIND: see the header.
plant() {
    name=$1 line=$2 test=$3 kind=$4
    copy=$WORK/$name
    mkdir -p "$copy"
    tar -C "$ROOT" --exclude=./build --exclude=./.git -cf - . | tar -C "$copy" -xf -
    # The first statement of api__claim, before anything can return.
    awk -v bad="$line" '
        { print }
        /^static void api__claim\(/ && !done { print "    " bad; done = 1 }
    ' "$ROOT/service/api.c" >"$copy/service/api.c"
    grep -qF "$line" "$copy/service/api.c" || { say "$name: could not plant the bug"; return 1; }
    (cd "$copy" && make -s --no-print-directory SANITIZE=$SAN all >/dev/null)

    # Where tests/sanitize.sh looks: ASan/LSan's log_path, and the service
    # logs in the harness's run directory (UBSan, linked with ASan, writes
    # to stderr whatever log_path says).
    logs=$WORK/$name-logs
    mkdir -p "$logs"
    set +e
    ASAN_OPTIONS=log_path=$logs/asan:detect_leaks=1:strict_string_checks=1 \
    UBSAN_OPTIONS=log_path=$logs/ubsan:halt_on_error=1:print_stacktrace=1 \
    KEEP_TEST_DIR=1 COUPONSVC_BIN=$copy/$SANDIR/couponsvc "$ITEST" "$test" \
        >"$WORK/$name.out" 2>&1
    rc=$?
    set -e
    rundir=$(sed -n 's/.*run directory \(\/tmp\/couponsvc-it-[A-Za-z0-9]*\).*/\1/p' "$WORK/$name.out")
    report=$(cat "$logs"/* 2>/dev/null | grep -m 1 -E "$kind" || true)
    if [ -z "$report" ] && [ -n "$rundir" ]; then
        report=$(grep -rh -m 1 -E "$kind" "$rundir" --include='*.log' || true)
    fi
    [ -n "$rundir" ] && rm -rf "$rundir"
    if [ "$rc" = 0 ]; then
        say "$name: FAILED: test $test passed with the bug planted"
        return 1
    fi
    if [ -z "$report" ]; then
        say "$name: FAILED: no report matching '$kind' in $logs"
        cat "$WORK/$name.out"
        return 1
    fi
    say "$name: test $test failed as it should; report: $(printf '%s' "$report" | sed 's/^==[0-9]*==//' | cut -c1-110)"
}

status=0
plant heap-overflow \
    '{ char *volatile p = malloc(8); p[8] = 1; free(p); }' \
    api_contract 'heap-buffer-overflow' || status=1
plant signed-overflow \
    '{ volatile int i = 2147483647; i = i + (int)(req->body_len > 0); }' \
    api_contract 'signed integer overflow' || status=1
plant leak \
    '{ char *volatile p = malloc(64); p[0] = 1; p = NULL; }' \
    graceful_shutdown 'detected memory leaks' || status=1
[ $status = 0 ] && say "ok: every planted bug failed a test and left a report"
exit $status
