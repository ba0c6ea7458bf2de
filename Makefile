# couponsvc — build, test, demo.
#
#   make            build build/couponsvc (and the tools)
#   make test       install missing packages, run every test suite
#   make test-docs  the READMEs' excerpts of the source equal the source
#   make demo       install missing packages, race vs fix through the LB
#   make tour       every failure and performance demo, narrated (deploy/tour)
#   make up/down    local stack (see deploy/stack.sh)
#
# Switches: V=1 prints commands, SANITIZE=address,undefined builds with
# sanitizers and COUPONSVC_DEBUG_SANITY (the sanity functions' full walks of
# a list or table, off in a plain build) into build/san-*/, so that a plain
# build is not clobbered,
# WERROR=1 turns warnings into errors (CI sets it).

CC       ?= cc
BUILD    ?= build
PKGS     := libmicrohttpd hiredis jansson libpq libcurl
CSTD     := -std=c11 -D_GNU_SOURCE
WARN     := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
            -Wformat=2 -Wno-format-nonliteral -Wno-format-truncation
# (Error strings are fixed-size buffers and are cut on purpose when long.)
OPT      ?= -O2 -g
CFLAGS   += $(CSTD) $(WARN) $(OPT) -MMD -MP -pthread
LDLIBS   += -pthread

ifeq ($(WERROR),1)
CFLAGS   += -Werror
endif
comma    := ,
ifdef SANITIZE
BUILD    := $(BUILD)/san-$(subst $(comma),-,$(SANITIZE))
CFLAGS   += -fsanitize=$(SANITIZE) -fno-omit-frame-pointer -fno-sanitize-recover=all
CFLAGS   += -DCOUPONSVC_DEBUG_SANITY # the sanity checks' full walks, too
LDFLAGS  += -fsanitize=$(SANITIZE)
endif

ifneq ($(V),1)
Q        := @
endif

PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   = $(shell pkg-config --libs $(PKGS) 2>/dev/null)

# ---------------------------------------------------------------- service ---

# The lock module: the contract and the waiting (lock.o, lock_wait.o), then
# one object per backend (lock_*.o). A build with etcd adds its objects here.
LOCK_OBJS := lock.o lock_wait.o lock_redis.o lock_redlock.o lock_sentinel.o
# etcd (COUPON_LOCK_BACKEND=etcd): its v3 JSON gateway over libcurl.
LOCK_OBJS += lock_etcd.o lock_etcd_gw.o
CFLAGS   += -DCOUPONSVC_WITH_ETCD

SVC_OBJS := $(addprefix $(BUILD)/service/, \
	main.o cfg.o log.o http.o api.o claim.o $(LOCK_OBJS) wd.o store.o \
	metrics.o fault.o req.o ready.o migrations.o)

# Objects the unit tests link against: everything but main and the
# network-facing modules they do not need.
LIB_OBJS := $(addprefix $(BUILD)/service/, cfg.o log.o req.o fault.o \
	metrics.o)

.PHONY: all
all: $(BUILD)/couponsvc

$(BUILD)/couponsvc: $(SVC_OBJS)
	@echo "  LD      $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(PKG_LIBS) $(LDLIBS) -lm

$(BUILD)/service/%.o: service/%.c | deps-check
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	$(Q)$(CC) $(CFLAGS) $(PKG_CFLAGS) -Iservice -I$(BUILD)/service -c -o $@ $<

# The migrations are compiled into the binary so `couponsvc migrate` works
# wherever the binary goes (a container, a Kubernetes Job) without the tree.
MIGRATIONS := $(sort $(wildcard migrations/*.sql))
$(BUILD)/service/migrations.c: $(MIGRATIONS) deploy/build/embed.sh
	@mkdir -p $(dir $@)
	@echo "  EMBED   $@"
	$(Q)sh deploy/build/embed.sh $(MIGRATIONS) > $@

$(BUILD)/service/migrations.o: $(BUILD)/service/migrations.c
	@echo "  CC      $<"
	$(Q)$(CC) $(CFLAGS) -Iservice -c -o $@ $<

# ------------------------------------------------------------------ deps ----

# deps-check runs before every build: deploy/deps.sh asks dpkg which of the
# packages are missing (about 0.1 s) and installs only those, so a fresh
# machine gets libraries, servers and tools alike. NO_DEPS=1 skips it.
.PHONY: deps deps-check
deps:
	$(Q)sh deploy/deps.sh
deps-check:
ifneq ($(NO_DEPS),1)
	$(Q)sh deploy/deps.sh
endif

# ---------------------------------------------------------------- format ---

# `make format` rewrites the C files of service/, loadtest/ and tests/ with
# clang-format-16 (.clang-format's InsertBraces needs version 15 or later;
# Debian 12's default clang-format is 14). `make check-format` changes
# nothing and fails, listing the files clang-format-16 would change.
# FORMAT_DIRS narrows both to some of the directories.
CLANG_FORMAT ?= clang-format-16
FORMAT_DIRS  ?= service loadtest tests
FORMAT_FILES  = $(shell find $(FORMAT_DIRS) -name '*.[ch]' | sort)

.PHONY: format check-format
format: | deps-check
	$(Q)$(CLANG_FORMAT) -i $(FORMAT_FILES)
check-format: | deps-check
	$(Q)bad=; for f in $(FORMAT_FILES); do \
		$(CLANG_FORMAT) --dry-run -Werror "$$f" >/dev/null 2>&1 || bad="$$bad $$f"; \
	done; \
	if [ -n "$$bad" ]; then \
		echo "check-format: $(CLANG_FORMAT) would change these files (make format):"; \
		for f in $$bad; do echo "  $$f"; done; \
		exit 1; \
	fi

-include tests/tests.mk
-include loadtest/loadtest.mk
-include deploy/deploy.mk
-include deploy/tour/tour.mk

# ------------------------------------------------------------------ docs ----

# `make test-docs`: every excerpt of the source the READMEs show (the Lua
# scripts, the fenced SQL) equals the source, every Lua or SQL block there
# is such an excerpt, and every path and file:function they name exists
# (tests/docs/check_excerpts.py: Python 3 alone, no build, well under a
# second). `make test` runs it first, in tests/run.sh's list (tests/tests.mk).
.PHONY: test-docs
test-docs:
	$(Q)python3 tests/docs/check_excerpts.py .

.PHONY: clean
clean:
	rm -rf build

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
