# tour.mk: the guided tour (deploy/tour/tour.sh), included by the Makefile.
#
#   make tour              every demo in order, on one local stack
#   make demo-NAME         one of them (make demo-stale, demo-kill, ...;
#                          deploy/tour/tour.sh --list names them all)
#   make tour-ci           the fast demos, verdicts checked (CI)
#
# Ports and the state directory: LB_PORT, APP_PORT_BASE, PG_PORT,
# REDIS_PORT as for make up (the standard ones by default), TOUR_REDIS_PORT,
# TOUR_PORT_BASE, TOUR_DIR (see the top of deploy/tour/tour.sh).

TOUR_DEMOS := race stale oversell kill flush failover redis-down clock partition \
	contention etcd

$(BUILD)/tests/faultproxy: tests/faults/faultproxy.c tests/faults/proxy.c \
		tests/faults/proxy.h tests/tt.c tests/tt.h service/mono.h
	@mkdir -p $(dir $@)
	@echo "  LD      $@"
	$(Q)$(CC) $(CFLAGS) -Itests -Iservice -o $@ tests/faults/faultproxy.c \
		tests/faults/proxy.c tests/tt.c $(LDLIBS)

# The negative controls the demos run beside the real binary, each built
# once into its own neg-* directory (see the UNSAFE switch in tests/tests.mk
# and the top of service/store.c). The sub-makes are incremental.
.PHONY: tour-bins
tour-bins: all $(BUILD)/loadgen $(BUILD)/tests/faultproxy \
		$(BUILD)/tests/libclockshift.so
	$(Q)$(MAKE) --no-print-directory BUILD=$(BUILD)/neg-nofence \
		UNSAFE=NO_FENCE $(BUILD)/neg-nofence/couponsvc
	$(Q)$(MAKE) --no-print-directory BUILD=$(BUILD)/neg-trustread \
		UNSAFE=TRUST_READ $(BUILD)/neg-trustread/couponsvc

TOUR_ENV = BUILD=$(BUILD) COUPONSVC=$(BUILD)/couponsvc LOADGEN=$(BUILD)/loadgen

.PHONY: tour tour-ci $(addprefix demo-,$(TOUR_DEMOS))
tour: deps-check tour-bins
	$(Q)$(TOUR_ENV) bash deploy/tour/tour.sh

tour-ci: deps-check tour-bins
	$(Q)$(TOUR_ENV) bash deploy/tour/tour.sh --ci

$(addprefix demo-,$(TOUR_DEMOS)): demo-%: deps-check tour-bins
	$(Q)$(TOUR_ENV) bash deploy/tour/tour.sh $*
