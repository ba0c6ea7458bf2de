# tests/tests.mk: test binaries and the `test` target. Included by Makefile.

TEST_CFLAGS = $(CFLAGS) $(PKG_CFLAGS) -Iservice -Itests -Iloadtest
TEST_LIBS   = $(PKG_LIBS) $(shell pkg-config --libs libcurl 2>/dev/null) \
              $(LDLIBS) -lm

UNIT_OBJS := $(addprefix $(BUILD)/tests/, tt.o unit/test_cfg.o \
	unit/test_req.o unit/test_misc.o unit/test_lg_http.o unit/test_lock.o \
	unit/test_log.o unit/test_etcd.o)
UNIT_OBJS += $(addprefix $(BUILD)/tests/, unit/test_lockmath.o unit/test_locksanity.o)
UNIT_OBJS += $(BUILD)/tests/unit/test_claim_batch.o \
	$(addprefix $(BUILD)/service/, api.o claim.o ready.o store.o migrations.o)
ITEST_OBJS := $(addprefix $(BUILD)/tests/, tt.o itest/main.o \
	itest/harness.o itest/h_etcd.o itest/test_claim.o itest/test_api.o \
	itest/test_hostile.o itest/test_loadgen.o itest/test_redis.o \
	itest/test_comb.o itest/test_verify.o itest/test_store.o \
	itest/test_lock_wait.o itest/test_redlock.o itest/h_topo.o \
	itest/test_ops.o faults/proxy.o) \
	$(BUILD)/loadtest/lg_verify.o \
	$(LIB_OBJS) $(BUILD)/service/store.o $(BUILD)/service/migrations.o

$(BUILD)/tests/%.o: tests/%.c | deps-check
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	$(Q)$(CC) $(TEST_CFLAGS) -c -o $@ $<

# The load generator's response reader is tested with the service's units;
# the harness shares the load generator's invariant checker (lg_verify.c),
# so every test sees the loadtest headers.

$(BUILD)/tests/unit-tests: $(UNIT_OBJS) $(LIB_OBJS) \
		$(addprefix $(BUILD)/service/, $(LOCK_OBJS) wd.o) \
		$(BUILD)/loadtest/lg_http.o
	@echo "  LD      $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(TEST_LIBS)

$(BUILD)/tests/integration-tests: $(ITEST_OBJS)
	@echo "  LD      $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(TEST_LIBS)

# `make test`: every suite that needs no special build: unit, integration
# (claim path, API, hostile input), fault scenarios (on Redis, then the etcd
# backend's own scenarios on a 3-member cluster), and the local stack. The
# claim and fault suites also run whole on etcd: `make test-integration
# LOCK_BACKEND=etcd`, `make test-faults LOCK_BACKEND=etcd` (CI runs the
# first).
.PHONY: test test-unit test-integration
test: deps-check all $(BUILD)/tests/unit-tests $(BUILD)/tests/integration-tests \
		$(BUILD)/tests/fault-tests $(BUILD)/tests/libclockshift.so \
		$(BUILD)/tests/libbootshift.so \
		$(BUILD)/loadgen $(BUILD)/old/couponsvc
	$(Q)$(FAULT_ENV) LOADGEN=$(BUILD)/loadgen \
		COUPONSVC_OLD_BIN=$(BUILD)/old/couponsvc sh tests/run.sh \
		"python3 tests/docs/check_excerpts.py ." \
		$(BUILD)/tests/unit-tests $(BUILD)/tests/integration-tests \
		$(BUILD)/tests/fault-tests \
		"env COUPONSVC_LOCK_BACKEND=etcd $(BUILD)/tests/fault-tests etcd_" \
		tests/stack/test_stack.sh

test-unit: $(BUILD)/tests/unit-tests
	$(Q)$(BUILD)/tests/unit-tests

test-integration: all $(BUILD)/tests/integration-tests $(BUILD)/loadgen \
		$(BUILD)/old/couponsvc
	$(Q)$(BACKEND_ENV) COUPONSVC_BIN=$(BUILD)/couponsvc LOADGEN=$(BUILD)/loadgen \
		COUPONSVC_OLD_BIN=$(BUILD)/old/couponsvc \
		$(BUILD)/tests/integration-tests $(T)

# `make test-openapi`: service/openapi.yaml against the service and its
# tests (tests/openapi/check_openapi.py): first statically (routes and
# error codes against the source, the balancer's errors against
# deploy/nginx/proxy.conf, every witness a test that mentions its code),
# then it runs the integration tests the document names as witnesses with
# COUPONSVC_API_RECORD set, and checks that every answer they saw is
# documented and that each witness produced the answer it is named for.
API_RECORDS = $(abspath $(BUILD))/api-records
.PHONY: test-openapi
test-openapi: all $(BUILD)/tests/integration-tests $(BUILD)/loadgen
	$(Q)python3 tests/openapi/check_openapi.py .
	$(Q)rm -rf $(API_RECORDS) && mkdir -p $(API_RECORDS)
	$(Q)COUPONSVC_API_RECORD=$(API_RECORDS) COUPONSVC_BIN=$(BUILD)/couponsvc \
		LOADGEN=$(BUILD)/loadgen $(BUILD)/tests/integration-tests \
		$$(python3 tests/openapi/check_openapi.py . --witnesses integration)
	$(Q)python3 tests/openapi/check_openapi.py . --records $(API_RECORDS)

# The replica a rolling upgrade starts from, for
# rolling_upgrade_old_and_new_replicas: couponsvc as it was in the commit
# before migrations/002 was added (OLD_REV), built from `git archive` into
# $(BUILD)/old/. It only needs a rebuild when OLD_REV changes.
OLD_REV ?= $(shell git log --diff-filter=A --format=%H -1 -- \
	migrations/002_buckets_window.sql 2>/dev/null)^
$(BUILD)/old/couponsvc:
	@echo "  OLD     $@ (from $(OLD_REV))"
	$(Q)rm -rf $(BUILD)/old/src && mkdir -p $(BUILD)/old/src
	$(Q)git archive "$(OLD_REV)" | tar -x -C $(BUILD)/old/src
	$(Q)$(MAKE) --no-print-directory -C $(BUILD)/old/src NO_DEPS=1 \
		BUILD=build build/couponsvc >/dev/null
	$(Q)cp $(BUILD)/old/src/build/couponsvc $@

# ------------------------------------------------------------ fault tests ---
# `make test-faults [T=name]`: the failure scenarios (kill -9,
# SIGSTOP, Redis lost/stalled/partitioned/clock-jumped, PostgreSQL restarted,
# an outside row lock), each under load, each ending with the invariants.
# `make test-negative`: builds couponsvc with one guard removed (into
# $(BUILD)/neg-*/) and checks that the matching scenario FAILS with it.

FAULT_OBJS := $(addprefix $(BUILD)/tests/, tt.o itest/main.o \
	itest/harness.o itest/h_etcd.o itest/test_faults.o itest/test_etcd_faults.o itest/test_redis_faults.o \
	itest/test_comb_faults.o itest/test_lock_wait_faults.o \
	itest/h_topo.o itest/test_sentinel_faults.o itest/test_redlock_faults.o \
	itest/test_pg_ha.o itest/test_degraded.o \
	faults/load.o faults/proxy.o) $(BUILD)/loadtest/lg_verify.o

$(BUILD)/tests/fault-tests: $(FAULT_OBJS)
	@echo "  LD      $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(TEST_LIBS)

# Preloaded into redis-server to move its wall clock (see the file for why
# not libfaketime). Its own flags: no sanitizer may be preloaded into Redis.
$(BUILD)/tests/libclockshift.so: tests/faults/clockshift.c
	@mkdir -p $(dir $@)
	@echo "  CC      $@"
	$(Q)$(CC) -std=c11 -O2 -Wall -Wextra -shared -fPIC \
		-o $@ $<

# Preloaded into couponsvc to move its CLOCK_BOOTTIME alone (a suspend).
$(BUILD)/tests/libbootshift.so: tests/faults/bootshift.c
	@mkdir -p $(dir $@)
	@echo "  CC      $@"
	$(Q)$(CC) -std=c11 -O2 -Wall -Wextra -shared -fPIC \
		-o $@ $<

# LOCK_BACKEND=etcd runs the claim and fault suites on a 3-member etcd
# cluster the harness starts (tests/itest/h_etcd.h) instead of Redis.
LOCK_BACKEND ?= redis
BACKEND_ENV = COUPONSVC_LOCK_BACKEND=$(LOCK_BACKEND)
FAULT_ENV = COUPONSVC_BIN=$(BUILD)/couponsvc \
	COUPONSVC_CLOCKSHIFT=$(BUILD)/tests/libclockshift.so \
	COUPONSVC_BOOTSHIFT=$(BUILD)/tests/libbootshift.so

.PHONY: test-faults test-negative
test-faults: all $(BUILD)/tests/fault-tests $(BUILD)/tests/libclockshift.so \
		$(BUILD)/tests/libbootshift.so
	$(Q)$(BACKEND_ENV) $(FAULT_ENV) $(BUILD)/tests/fault-tests $(T)

# Negative controls: UNSAFE=NO_FENCE, NO_STOCK_CHECK, FENCE_NOT_STRICT or
# TRUST_READ compiles service/store.c with that guard removed; UNSAFE=
# REDLOCK_WRITEBACK_NO_TOKEN (raise the counters on any majority, holding or
# not) or REDLOCK_NO_WRITEBACK (no write-back at all) compiles
# service/lock_redlock.c so. Only ever into a neg-* directory.
ifdef UNSAFE
ifeq ($(findstring /neg-,$(BUILD)),)
$(error UNSAFE=$(UNSAFE) builds a deliberately broken couponsvc; only into \
	a $$(BUILD)/neg-* directory, through make test-negative)
endif
CFLAGS += -DCOUPONSVC_UNSAFE_$(UNSAFE)
endif

test-negative: all $(BUILD)/tests/fault-tests $(BUILD)/tests/libclockshift.so \
		$(BUILD)/tests/libbootshift.so
	$(Q)$(MAKE) --no-print-directory BUILD=$(BUILD)/neg-nofence \
		UNSAFE=NO_FENCE $(BUILD)/neg-nofence/couponsvc
	$(Q)$(MAKE) --no-print-directory BUILD=$(BUILD)/neg-nostock \
		UNSAFE=NO_STOCK_CHECK $(BUILD)/neg-nostock/couponsvc
	$(Q)$(MAKE) --no-print-directory BUILD=$(BUILD)/neg-loosefence \
		UNSAFE=FENCE_NOT_STRICT $(BUILD)/neg-loosefence/couponsvc
	$(Q)$(MAKE) --no-print-directory BUILD=$(BUILD)/neg-trustread \
		UNSAFE=TRUST_READ $(BUILD)/neg-trustread/couponsvc
	$(Q)$(MAKE) --no-print-directory BUILD=$(BUILD)/neg-wbnotoken \
		UNSAFE=REDLOCK_WRITEBACK_NO_TOKEN $(BUILD)/neg-wbnotoken/couponsvc
	$(Q)$(MAKE) --no-print-directory BUILD=$(BUILD)/neg-nowriteback \
		UNSAFE=REDLOCK_NO_WRITEBACK $(BUILD)/neg-nowriteback/couponsvc
	$(Q)sh tests/faults/negative.sh $(BUILD)

# ------------------------------------------------------------ stack tests ---
# `make test-stack [T=name]`: the local stack as a whole (deploy/stack.sh up
# and down, a replica killed under load, the verifier catching injected
# faults), each test on its own ports and state directory in /tmp.
# `make bench-baseline`: lock vs atomic claims/s and sold-out vs /healthz
# answers/s on one hot coupon, 3 replicas, 256 connections (about a minute).

.PHONY: test-stack bench-baseline
test-stack: all $(BUILD)/loadgen
	$(Q)COUPONSVC_BIN=$(BUILD)/couponsvc LOADGEN=$(BUILD)/loadgen \
		bash tests/stack/test_stack.sh $(T)

bench-baseline: all $(BUILD)/loadgen
	$(Q)COUPONSVC=$(BUILD)/couponsvc LOADGEN=$(BUILD)/loadgen \
		bash loadtest/baseline.sh

# ------------------------------------------------------------------ fuzz ----
# `make fuzz [FUZZ_SECONDS=60]`: libFuzzer on req.c (the request parsers and
# the id rules), with ASan and UBSan, for a bounded time. It runs on a copy
# of the committed seed corpus in $(BUILD)/fuzz/corpus (new inputs collect
# there, never in tests/fuzz/corpus); a crash is saved in
# $(BUILD)/fuzz/artifacts/ and fails the target. Needs clang (FUZZ_CC).

FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 60
FUZZ_FLAGS   := -std=c11 -D_GNU_SOURCE -Wall -Wextra -g -O1 \
	-fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined \
	-fno-sanitize-recover=all

$(BUILD)/fuzz/fuzz_req: tests/fuzz/fuzz_req.c service/req.c service/req.h \
		| deps-check
	@mkdir -p $(dir $@)
	@echo "  FUZZCC  $@"
	$(Q)$(FUZZ_CC) $(FUZZ_FLAGS) $(shell pkg-config --cflags jansson) \
		-Iservice -o $@ tests/fuzz/fuzz_req.c service/req.c \
		$(shell pkg-config --libs jansson)

.PHONY: fuzz
fuzz: $(BUILD)/fuzz/fuzz_req
	@mkdir -p $(BUILD)/fuzz/corpus $(BUILD)/fuzz/artifacts
	$(Q)cp tests/fuzz/corpus/* $(BUILD)/fuzz/corpus/
	$(Q)$(BUILD)/fuzz/fuzz_req -max_total_time=$(FUZZ_SECONDS) \
		-max_len=4096 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
		-dict=tests/fuzz/req.dict \
		-artifact_prefix=$(BUILD)/fuzz/artifacts/ $(BUILD)/fuzz/corpus

# ------------------------------------------------------------ sanitizers ---
# With SANITIZE set, every sanitized process the tests start (the test
# binaries, couponsvc, loadgen) stops at its first report: the build has
# -fno-sanitize-recover=all, ASan and UBSan exit non-zero, LeakSanitizer
# checks each couponsvc that exits on SIGTERM (exit status 23 on a leak),
# and TSan halts. A couponsvc that stops answers no more requests, so the
# test that was talking to it fails, and its log (printed on failure) holds
# the report. Values already in the environment win.
#
# `make test-sanitize`: `make test-san-suites SANITIZE=address,undefined`
# (SAN_FAULTS below), failing also on a report that no test noticed
# (tests/sanitize.sh says where it looks).
# `make test-sanitize-selfcheck`: plants an ASan, a UBSan and an LSan bug in
# copies of the service and checks that each one fails a test.
# `make test-tsan`: the same with ThreadSanitizer (SANITIZE=thread)
# and tests/tsan.supp (every entry there says why it is not our race).
# `make valgrind`: couponsvc under memcheck over a short load
# (tests/valgrind.sh; a plain build, valgrind and ASan do not mix).

# What the sanitizer passes run: unit, integration (with the hostile-input
# tests) and, of the fault suite, one scenario per lock backend, named here
# (substrings of test names, as T= takes them). The whole fault suite and
# the stack suite run once, unsanitized, in `make test`. To add a backend's
# scenario, add its name.
SAN_FAULTS ?= stale_holder_fenced_after_early_expiry \
	sentinel_failover_loses_lock redlock3_holder_paused_past_validity
SAN_FAULTS_ETCD ?= etcd_session_lost_every_lock_lost

.PHONY: test-san-suites
test-san-suites: deps-check all $(BUILD)/tests/unit-tests \
		$(BUILD)/tests/integration-tests $(BUILD)/tests/fault-tests \
		$(BUILD)/tests/libclockshift.so $(BUILD)/tests/libbootshift.so \
		$(BUILD)/loadgen $(BUILD)/old/couponsvc
	$(Q)for t in $(SAN_FAULTS) $(SAN_FAULTS_ETCD); do grep -q "^TT_TEST($$t," tests/itest/*.c || \
		{ echo "SAN_FAULTS: no fault test named $$t"; exit 1; }; done
	$(Q)$(FAULT_ENV) LOADGEN=$(BUILD)/loadgen \
		COUPONSVC_OLD_BIN=$(BUILD)/old/couponsvc sh tests/run.sh \
		$(BUILD)/tests/unit-tests $(BUILD)/tests/integration-tests \
		"$(BUILD)/tests/fault-tests $(strip $(SAN_FAULTS))" \
		"env COUPONSVC_LOCK_BACKEND=etcd $(BUILD)/tests/fault-tests $(SAN_FAULTS_ETCD)"

ifdef SANITIZE
export ASAN_OPTIONS ?= detect_leaks=1:strict_string_checks=1
export UBSAN_OPTIONS ?= halt_on_error=1:print_stacktrace=1
export TSAN_OPTIONS ?= halt_on_error=1:second_deadlock_stack=1:suppressions=$(CURDIR)/tests/tsan.supp
endif

.PHONY: test-sanitize test-sanitize-selfcheck test-tsan valgrind
test-sanitize:
	$(Q)bash tests/sanitize.sh address,undefined

test-sanitize-selfcheck:
	$(Q)bash tests/sanitize-selfcheck.sh

test-tsan:
	$(Q)bash tests/sanitize.sh thread

valgrind: all
	$(Q)bash tests/valgrind.sh $(BUILD)/couponsvc

# ----------------------------------------------------------------- model ---
# `make model [T=name]`: the lock protocol's Promela model
# (tests/model/lock.pml) checked by spin in each configuration of
# tests/model/run.sh: one node and Redlock with three, each property
# verified, each negative control and known weak spot shown to fail with a
# trail in $(BUILD)/model/. A few minutes on 2 cores.

.PHONY: model
model: | deps-check
	$(Q)MODEL_DIR=$(CURDIR)/$(BUILD)/model bash tests/model/run.sh $(T)
