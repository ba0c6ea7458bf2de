/*
 * log.c: see log.h. Deliberately tiny: no allocation, no locks.
 */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static char log__instance[128] = "-";
static log_level_t log__min = LOG_INFO;

static const char *const log__names[] = {"DEBUG", "INFO", "WARN", "ERROR"};

void log_init(const char *instance, log_level_t min_level) {
    if (instance != NULL) {
        snprintf(log__instance, sizeof(log__instance), "%s", instance);
    }
    log__min = min_level;
}

int log_level_parse(const char *s, log_level_t *out) {
    static const char *const names[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++) {
        if (strcmp(s, names[i]) == 0) {
            *out = (log_level_t)i;
            return 0;
        }
    }
    return -1;
}

void log_msg(log_level_t level, const char *event, const char *fmt, ...) {
    if (level < log__min) {
        return;
    }

    char line[2048];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);

    int n = snprintf(line, sizeof(line),
                     "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s instance=%s "
                     "event=%s ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                     tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000,
                     log__names[level], log__instance, event);
    if (n < 0) {
        return;
    }
    if ((size_t)n < sizeof(line)) {
        va_list ap;
        va_start(ap, fmt);
        int m = vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
        va_end(ap);
        if (m > 0) {
            n += m;
        }
    }
    if ((size_t)n >= sizeof(line) - 1) {
        n = (int)sizeof(line) - 2; /* truncated: still one whole line */
    }
    line[n++] = '\n';

    /* One write per line keeps lines whole across threads. A failed write
     * to stderr has nowhere to be reported, so its result is ignored. */
    ssize_t w = write(STDERR_FILENO, line, (size_t)n);
    (void)w;
}
