# deploy.mk: running couponsvc, included by the top-level Makefile (which
# defines BUILD, Q, `all`, `deps` and `deps-check`).
#
#   make up [REPLICAS=3]   build, then PostgreSQL + Redis + replicas + nginx
#                          on 127.0.0.1 (LB on :8080); see deploy/stack.sh
#   make up COUPON_LOCK_BACKEND=etcd
#                          the same, plus a 3-member etcd cluster the
#                          replicas lock on (ETCD_PORT_BASE: 12379..12384)
#   make up REDIS_TOPOLOGY=sentinel|redlock3|redlock5
#                          the same with Redis behind three sentinels, or
#                          3 / 5 independent Redlock nodes (default single);
#                          deploy/stack.sh restart-redis N restarts node N
#   make down              stop exactly what `make up` started
#   make status            pid, port and state of every process
#   make restart-app       restart the replicas only, e.g.
#                          make restart-app COUPON_CLAIM_MODE=naive
#   make demo              the race (naive) and the fix (lock), same load
#   make check-deploy      static checks of deploy/, docker-compose.yml, k8s
#   make test-compose      docker-compose.yml and deploy/Dockerfile for real,
#                          on podman (tests/compose/test-compose.sh; root,
#                          minutes; not part of make test)
#
# Ports and the state directory come from the environment or the command
# line: LB_PORT, APP_PORT_BASE, PG_PORT, REDIS_PORT, STACK_DIR. Variables
# given on the command line reach the scripts (make exports them), and so
# does every COUPON_* setting (make up COUPON_CLAIM_MODE=atomic).

REPLICAS ?= 3

# Which binaries the scripts run: the ones this build produced (SANITIZE
# builds live in their own $(BUILD)).
DEPLOY_ENV := COUPONSVC=$(BUILD)/couponsvc LOADGEN=$(BUILD)/loadgen

.PHONY: up down status restart-app demo check-deploy test-compose

up: all
	$(Q)$(DEPLOY_ENV) REPLICAS=$(REPLICAS) bash deploy/stack.sh up

down:
	$(Q)bash deploy/stack.sh down

status:
	$(Q)bash deploy/stack.sh status

restart-app: all
	$(Q)$(DEPLOY_ENV) bash deploy/stack.sh restart-app

# deps-check first, so that a fresh machine gets its packages before the
# build. The load generator is built here if `all` did not build it.
demo: deps-check all
	$(Q)test -x $(BUILD)/loadgen || $(MAKE) --no-print-directory $(BUILD)/loadgen
	$(Q)$(DEPLOY_ENV) bash deploy/demo.sh

# The binary is built first: the metric-name check scrapes a real replica.
check-deploy: all
	$(Q)COUPONSVC=$(BUILD)/couponsvc bash deploy/check-deploy.sh

# The host's build/loadgen drives the load through the LB on 127.0.0.1.
test-compose: all
ifneq ($(NO_DEPS),1)
	$(Q)sh deploy/deps.sh compose
endif
	$(Q)LOADGEN=$(BUILD)/loadgen bash tests/compose/test-compose.sh
