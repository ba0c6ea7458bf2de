/*
 * lock_redlock.c: the lock on N >= 3 independent Redis nodes (Redlock).
 * Not built yet in this commit: lock_init refuses the configuration.
 */
#include <stdio.h>

#include "lock_backend.h"

static int lock_redlock__init(const cfg_t *cfg, char *err, size_t errlen) {
    snprintf(err, errlen,
             "COUPON_REDIS_ADDRS names %d nodes, but this build has no "
             "Redlock backend yet",
             cfg->nredis);
    return -1;
}

const lock_backend_t lock_redlock_backend = {
    .name = "redlock",
    .init = lock_redlock__init,
};
