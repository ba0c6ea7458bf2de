/*
 * fault.c: see fault.h.
 */
#include "fault.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mono.h"

static const char *const fault__names[FAULT__COUNT] = {
    "after_acquire",       "before_commit",    "after_commit",    "after_check",
    "abort_before_commit", "before_subscribe", "before_writeback"};

/* Written once at start, read by every worker afterwards. */
static uint32_t fault__ms[FAULT__COUNT];

const char *fault_name(fault_point_t p) {
    return p < FAULT__COUNT ? fault__names[p] : "?";
}

uint32_t fault_ms(fault_point_t p) {
    return p < FAULT__COUNT ? fault__ms[p] : 0;
}

int fault_any(void) {
    for (int i = 0; i < FAULT__COUNT; i++) {
        if (fault__ms[i] != 0) {
            return 1;
        }
    }
    return 0;
}

int fault_parse(const char *spec, char *errstr, size_t errlen) {
    uint32_t ms[FAULT__COUNT] = {0};
    if (spec != NULL && spec[0] != '\0') {
        char buf[512];
        if (strlen(spec) >= sizeof(buf)) {
            snprintf(errstr, errlen, "COUPON_FAULT: too long");
            return -1;
        }
        strcpy(buf, spec);
        char *save = NULL;
        for (char *tok = strtok_r(buf, ",", &save); tok != NULL;
             tok = strtok_r(NULL, ",", &save)) {
            char *colon = strchr(tok, ':');
            int point = -1;
            if (colon != NULL) {
                *colon = '\0';
                for (int i = 0; i < FAULT__COUNT; i++) {
                    if (strcmp(tok, fault__names[i]) == 0) {
                        point = i;
                    }
                }
            }
            char *end = NULL;
            errno = 0;
            unsigned long v = colon != NULL ? strtoul(colon + 1, &end, 10) : 0;
            if (point < 0 || end == colon + 1 || *end != '\0' || errno != 0 ||
                v > 600000) {
                snprintf(errstr, errlen,
                         "COUPON_FAULT: '%s' is not <point>:<ms> with point "
                         "after_acquire, after_check, before_commit, "
                         "after_commit, abort_before_commit, "
                         "before_subscribe or before_writeback and ms <= "
                         "600000",
                         tok);
                return -1;
            }
            ms[point] = (uint32_t)v;
        }
    }
    memcpy(fault__ms, ms, sizeof(ms));
    return 0;
}

void fault_pause(fault_point_t p) {
    uint32_t ms = fault_ms(p);
    if (ms == 0 || p == FAULT_ABORT_BEFORE_COMMIT) {
        return;
    }
    mono_sleep_ns((int64_t)ms * MONO_MS);
}
