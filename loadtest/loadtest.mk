# loadtest/loadtest.mk -- the load generator and its helpers.
#
# Included by the top-level Makefile, which defines BUILD, CC, CFLAGS, LDFLAGS,
# LDLIBS, Q and deps-check.
#
#   make build/loadgen      the load generator (also part of `make all`)
#   make bench [BENCH_JSON=file]
#                           the performance bench on the local stack
#   make bench-loadgen      loadgen vs wrk against a trivial nginx endpoint
#   make soak [SOAK_SECONDS=600]
#                           the soak test on the local stack (loadtest/soak.sh;
#                           fixed ports, not part of make test)
#   make report [CSV=file.csv] [OUT=file.png]
#                           plot a `loadgen --csv` file (default
#                           $(BUILD)/demo/lock.csv -> $(BUILD)/report.png)

LOADGEN_PKGS := libcurl libpq
LOADGEN_OBJS := $(addprefix $(BUILD)/loadtest/, loadgen.o lg_cli.o \
	lg_hist.o lg_report.o lg_http.o lg_verify.o)

# -Iservice: the load generator shares the service's header-only helpers
# (mono.h's clocks and sleeps, str.h's string trimming), nothing it links.
# Recursive (=) on purpose: pkg-config runs when a recipe needs the flags,
# after deps-check has had the chance to install the packages.
LOADGEN_CFLAGS = $(shell pkg-config --cflags $(LOADGEN_PKGS) 2>/dev/null)
LOADGEN_LIBS   = $(shell pkg-config --libs $(LOADGEN_PKGS) 2>/dev/null)

.PHONY: all
all: $(BUILD)/loadgen

$(BUILD)/loadgen: $(LOADGEN_OBJS)
	@echo "  LD      $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(LOADGEN_LIBS) $(LDLIBS) -lm -pthread

$(BUILD)/loadtest/%.o: loadtest/%.c | deps-check
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	$(Q)$(CC) $(CFLAGS) $(LOADGEN_CFLAGS) -Iservice -c -o $@ $<

# `make bench [BENCH_JSON=file] [BENCH_SECONDS=8]`: the performance bench
# (loadtest/bench.sh says what it runs; about 5 minutes at the defaults).
.PHONY: bench
bench: all $(BUILD)/loadgen
	$(Q)COUPONSVC=$(BUILD)/couponsvc LOADGEN=$(BUILD)/loadgen \
		bash loadtest/bench.sh $(if $(BENCH_JSON),--json $(BENCH_JSON))

.PHONY: bench-loadgen
bench-loadgen: $(BUILD)/loadgen
	$(Q)LOADGEN=$(BUILD)/loadgen bash loadtest/bench-loadgen.sh

# CSV and OUT are read from the command line only, so that the generic names
# do not leak into the rest of the build as defaults.
.PHONY: report
report:
	$(Q)sh loadtest/report.sh $(or $(CSV),$(BUILD)/demo/lock.csv) $(or $(OUT),$(BUILD)/report.png)

# `make soak [SOAK_SECONDS=600]`: open loop at 80 % of capacity with a
# rolling restart halfway (loadtest/soak.sh); uses the fixed stack ports.
.PHONY: soak
soak: all $(BUILD)/loadgen
	$(Q)COUPONSVC=$(BUILD)/couponsvc LOADGEN=$(BUILD)/loadgen SOAK_SECONDS=$(or $(SOAK_SECONDS),600) \
		bash loadtest/soak.sh
