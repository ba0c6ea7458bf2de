#!/bin/sh
# negative.sh BUILD: the negative controls of `make test-negative`.
#
# A check that has never failed proves nothing. For each guard in the
# UPDATE, a couponsvc built without it ($BUILD/neg-*/couponsvc, see the
# UNSAFE switch in tests/tests.mk and the top of service/store.c) runs the
# fault scenario written for the bug that guard stops. The scenario must
# FAIL, and fail on the invariant check or on the answer the guard gives
# (the expected message), not on a timeout or a setup error. The same scenario must pass with the real
# binary, or its failure would say nothing. Exit 0 only if all of that holds.
set -u
BUILD=${1:-build}
TESTS=$BUILD/tests/fault-tests
export COUPONSVC_CLOCKSHIFT="$BUILD/tests/libclockshift.so"
status=0
out=$(mktemp)
trap 'rm -f "$out"' EXIT

# control BINARY SCENARIO EXPECTED-MESSAGE
control() {
    bin=$1 scenario=$2 expect=$3
    echo "== $scenario with $bin (must fail: $expect)"
    COUPONSVC_BIN=$bin "$TESTS" "$scenario" >"$out" 2>&1
    rc=$?
    grep -E "^(ok|FAIL) |test_[a-z_]*faults.c:|harness.c:" "$out" | sed 's/^/   /'
    if [ "$rc" -eq 0 ]; then
        echo "negative.sh: $scenario PASSED with $bin: the check is blind"
        status=1
    elif ! grep -q -- "$expect" "$out"; then
        echo "negative.sh: $scenario failed with $bin, but not with" \
             "\"$expect\" (see above)"
        status=1
    else
        echo "   -> failed as it must"
    fi
}

# baseline SCENARIO: the real binary passes the same scenario.
baseline() {
    echo "== $1 with $BUILD/couponsvc (must pass)"
    COUPONSVC_BIN=$BUILD/couponsvc "$TESTS" "$1" >"$out" 2>&1
    rc=$?
    grep -E "^(ok|FAIL) |test_[a-z_]*faults.c:" "$out" | sed 's/^/   /'
    if [ "$rc" -ne 0 ]; then
        echo "negative.sh: $1 fails with the real binary"
        status=1
    fi
}

baseline stale_holder_fenced_after_early_expiry
baseline stale_read_last_coupon
baseline redis_lost_duplicate_fence_refused
baseline sigstop_bucket_holder_past_ttl
baseline sentinel_failover_loses_lock
baseline redlock3_rotating_majorities_fences_rise
baseline redlock3_writeback_after_key_lost
baseline redlock3_clock_jumps_bare_majority
control "$BUILD/neg-nofence/couponsvc" stale_holder_fenced_after_early_expiry \
    "fences out of commit order"
control "$BUILD/neg-nostock/couponsvc" stale_read_last_coupon \
    "claimed <= stock"
control "$BUILD/neg-loosefence/couponsvc" redis_lost_duplicate_fence_refused \
    "fences out of commit order"
# The lock-mode write that trusts its earlier read (naive mode's write under
# the lock: no row lock before the read, no fence, no stock term): the
# stale holder and the fresh one both claim the last coupon.
control "$BUILD/neg-trustread/couponsvc" stale_read_last_coupon \
    "v.oversell == 0"
# A Sentinel failover lost the lock and its INCR: two holders drew the
# same fence. Only the strict first-write rule keeps the second write out.
control "$BUILD/neg-loosefence/couponsvc" sentinel_failover_loses_lock \
    'rows_with_fence("sf", 4) == 1: 2 != 1'
# Redlock's fences, checked on grant order (the lock.acquired lines). With
# no write-back, rotating majorities meet only lagging counters and draw a
# fence already used; with a write-back that raises the counters without
# checking our token, a lease whose key vanished from a node is still made
# usable, with a fence above that of a grant that came first there.
control "$BUILD/neg-nowriteback/couponsvc" \
    redlock3_rotating_majorities_fences_rise "bad == 0"
control "$BUILD/neg-wbnotoken/couponsvc" redlock3_writeback_after_key_lost \
    "bad == 0: 1 != 0"
# A bucket's holder frozen past its TTL: the fence answers it 409. Without
# the fence the commit gate still rolls the stale write back (the data stay
# right), so the claim is re-queued and claimed with a new lease: 201.
control "$BUILD/neg-nofence/couponsvc" sigstop_bucket_holder_past_ttl \
    "so.r.status == 409: 201 != 409"
# A node's clock jump takes a bare majority from the holder: a second
# holder, with a higher fence, writes first. Only the fence in the UPDATE
# refuses the first holder's late write.
control "$BUILD/neg-nofence/couponsvc" redlock3_clock_jumps_bare_majority \
    "e.sv.r.status == 409: 201 != 409"

if [ "$status" -eq 0 ]; then
    echo "negative controls: every guard's scenario fails without the guard"
else
    echo "negative controls: FAILED (see above)"
fi
exit $status
