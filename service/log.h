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
 *
 * While a thread works for one request (log_set_request_id), its lines end
 * with request_id=ID, so every line a claim causes can be found from the id
 * the client sent or was answered with.
 *
 * COUPON_LOG_FORMAT=json writes the same line as one JSON object instead:
 * the fixed fields as "ts", "level", "instance", "event" (and "request_id"),
 * then each key=value of the free text as a string member in its order; a
 * value in double quotes loses them. Text that is not key=value (prose,
 * parentheses), and a key seen twice, go to "msg". Every string is escaped,
 * and a byte that is not valid UTF-8 becomes U+FFFD, so each line is valid
 * JSON whatever an error text or a client's id contains:
 *
 *   {"ts":"2026-11-26T18:40:01.123Z","level":"INFO","instance":"a1",
 *    "event":"claim.ok","coupon":"x","fence":"7","request_id":"5f0c..."}
 */
#ifndef COUPONSVC_LOG_H
#define COUPONSVC_LOG_H

typedef enum log_level {
    LOG_DEBUG = 0,
    LOG_INFO,
    LOG_WARN,
    LOG_ERROR,
} log_level_t;

typedef enum log_format {
    LOG_FORMAT_TEXT = 0,
    LOG_FORMAT_JSON,
} log_format_t;

/* Sets the instance id (copied) and the lowest level that is written. */
void log_init(const char *instance, log_level_t min_level);

/* Text (the default) or one JSON object per line; call before any thread
 * logs. */
void log_set_format(log_format_t format);

/* Parses "text" or "json". Returns 0, or -1 if unknown. */
int log_format_parse(const char *s, log_format_t *out);

/* The request the calling thread works for now: its lines carry the id
 * until the next call. NULL or "" ends it. The id is copied (at most
 * LOG_REQUEST_ID_MAX bytes); the caller checks its alphabet. */
#define LOG_REQUEST_ID_MAX 64
void log_set_request_id(const char *id);

/* The calling thread's request id, "" when none. Borrowed: valid until the
 * thread's next log_set_request_id. */
const char *log_request_id(void);

/* Parses "debug", "info", "warn" or "error". Returns 0, or -1 if unknown. */
int log_level_parse(const char *s, log_level_t *out);

void log_msg(log_level_t level, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define log_debug(ev, ...) log_msg(LOG_DEBUG, ev, __VA_ARGS__)
#define log_info(ev, ...) log_msg(LOG_INFO, ev, __VA_ARGS__)
#define log_warn(ev, ...) log_msg(LOG_WARN, ev, __VA_ARGS__)
#define log_error(ev, ...) log_msg(LOG_ERROR, ev, __VA_ARGS__)

#endif
