/*
 * log.h: one line per event on stderr.
 *
 * Every line carries a wall-clock timestamp (for humans and log shippers;
 * nothing in the lock logic reads it), the level, the instance id, an event
 * name and free key=value text:
 *
 *   2026-11-26T18:40:01.123Z INFO instance=a1 event=claim.ok coupon=x fence=7
 *
 * A line is formatted into one buffer and written with one write(2), so lines
 * from different threads never interleave.
 */
#ifndef COUPONSVC_LOG_H
#define COUPONSVC_LOG_H

typedef enum log_level {
    LOG_DEBUG = 0,
    LOG_INFO,
    LOG_WARN,
    LOG_ERROR,
} log_level_t;

/* Sets the instance id (copied) and the lowest level that is written. */
void log_init(const char *instance, log_level_t min_level);

/* Parses "debug", "info", "warn" or "error". Returns 0, or -1 if unknown. */
int log_level_parse(const char *s, log_level_t *out);

void log_msg(log_level_t level, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define log_debug(ev, ...) log_msg(LOG_DEBUG, ev, __VA_ARGS__)
#define log_info(ev, ...) log_msg(LOG_INFO, ev, __VA_ARGS__)
#define log_warn(ev, ...) log_msg(LOG_WARN, ev, __VA_ARGS__)
#define log_error(ev, ...) log_msg(LOG_ERROR, ev, __VA_ARGS__)

#endif
