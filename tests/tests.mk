# tests/tests.mk: test binaries and the `test` target. Included by Makefile.

TEST_CFLAGS = $(CFLAGS) $(PKG_CFLAGS) -Iservice -Itests
TEST_LIBS   = $(PKG_LIBS) $(shell pkg-config --libs libcurl 2>/dev/null) \
              $(LDLIBS) -lm

UNIT_OBJS := $(addprefix $(BUILD)/tests/, tt.o unit/test_cfg.o \
	unit/test_req.o unit/test_misc.o)
ITEST_OBJS := $(addprefix $(BUILD)/tests/, tt.o itest/main.o \
	itest/harness.o itest/test_claim.o itest/test_api.o)

$(BUILD)/tests/%.o: tests/%.c | deps-check
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	$(Q)$(CC) $(TEST_CFLAGS) -c -o $@ $<

$(BUILD)/tests/unit-tests: $(UNIT_OBJS) $(LIB_OBJS) $(BUILD)/service/lock.o
	@echo "  LD      $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(TEST_LIBS)

$(BUILD)/tests/integration-tests: $(ITEST_OBJS)
	@echo "  LD      $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(TEST_LIBS)

.PHONY: test test-unit test-integration
test: deps-check all $(BUILD)/tests/unit-tests $(BUILD)/tests/integration-tests
	$(Q)COUPONSVC_BIN=$(BUILD)/couponsvc sh tests/run.sh \
		$(BUILD)/tests/unit-tests $(BUILD)/tests/integration-tests

test-unit: $(BUILD)/tests/unit-tests
	$(Q)$(BUILD)/tests/unit-tests

test-integration: all $(BUILD)/tests/integration-tests
	$(Q)COUPONSVC_BIN=$(BUILD)/couponsvc $(BUILD)/tests/integration-tests $(T)
