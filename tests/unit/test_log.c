/*
 * test_log.c: the log line in both formats, read back from stderr. No
 * network.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "tt.h"

/* Runs fn with stderr sent to a temporary file; returns what it wrote (a
 * new string, free()). */
static char *capture(void (*fn)(void)) {
    char path[] = "/tmp/couponsvc-logtest-XXXXXX";
    int fd = mkstemp(path);
    TT_ASSERT(fd >= 0);
    unlink(path);
    int saved = dup(STDERR_FILENO);
    TT_ASSERT(saved >= 0 && dup2(fd, STDERR_FILENO) == STDERR_FILENO);
    fn();
    TT_ASSERT(dup2(saved, STDERR_FILENO) == STDERR_FILENO);
    close(saved);
    off_t n = lseek(fd, 0, SEEK_END);
    TT_ASSERT(n >= 0);
    char *buf = calloc(1, (size_t)n + 1);
    TT_ASSERT(buf != NULL && pread(fd, buf, (size_t)n, 0) == n);
    close(fd);
    return buf;
}

/* Splits text into lines and parses each as one JSON object; returns how
 * many, with the objects in out (new references). */
static size_t json_lines(char *text, json_t **out, size_t max) {
    size_t n = 0;
    for (char *line = strtok(text, "\n"); line != NULL;
         line = strtok(NULL, "\n")) {
        json_error_t err;
        json_t *o = json_loads(line, JSON_REJECT_DUPLICATES, &err);
        TT_ASSERT_MSG(o != NULL && json_is_object(o),
                      "not one JSON object (%s): %s", err.text, line);
        TT_ASSERT(n < max);
        out[n++] = o;
    }
    return n;
}

static const char *str(json_t *o, const char *key) {
    json_t *v = json_object_get(o, key);
    TT_ASSERT_MSG(json_is_string(v), "member %s missing or not a string", key);
    return json_string_value(v);
}

static void emit_awkward(void) {
    log_init("inst-1", LOG_INFO);
    log_set_format(LOG_FORMAT_JSON);
    log_set_request_id("req-42");
    /* A quoted error text with quotes, a backslash, a newline, a control
     * byte and a byte that is not UTF-8 inside; prose after the pairs; a
     * key given twice; a key that would overwrite a fixed field. */
    log_warn("claim.lock_error",
             "coupon=c1 err=\"conn \"refused\" \\ at\nline\x01 \xff\xc3\xa9\" "
             "fence=7 (expires by TTL) coupon=c2 event=forged");
    log_debug("claim.debug", "not=written");
    log_set_request_id(NULL);
    log_info("coupon.created", "coupon=x total=5");
    log_set_format(LOG_FORMAT_TEXT);
}

TT_TEST(log_json_lines_are_escaped_objects, 5) {
    char *text = capture(emit_awkward);
    json_t *o[4] = {0};
    size_t n = json_lines(text, o, 4);
    TT_EQ_INT(n, 2);
    TT_ASSERT(strcmp(str(o[0], "level"), "WARN") == 0);
    TT_ASSERT(strcmp(str(o[0], "instance"), "inst-1") == 0);
    TT_ASSERT(strcmp(str(o[0], "event"), "claim.lock_error") == 0);
    TT_ASSERT(strlen(str(o[0], "ts")) == strlen("2026-11-26T18:40:01.123Z"));
    TT_ASSERT(strcmp(str(o[0], "coupon"), "c1") == 0);
    TT_ASSERT_MSG(
        strcmp(str(o[0], "err"),
               "conn \"refused\" \\ at\nline\x01 \xef\xbf\xbd\xc3\xa9") == 0,
        "err is %s", str(o[0], "err"));
    TT_ASSERT(strcmp(str(o[0], "fence"), "7") == 0);
    TT_ASSERT_MSG(strcmp(str(o[0], "msg"),
                         "(expires by TTL) coupon=c2 event=forged") == 0,
                  "msg is %s", str(o[0], "msg"));
    TT_ASSERT(strcmp(str(o[0], "request_id"), "req-42") == 0);
    TT_ASSERT(strcmp(str(o[1], "event"), "coupon.created") == 0);
    TT_ASSERT(strcmp(str(o[1], "total"), "5") == 0);
    TT_ASSERT(json_object_get(o[1], "request_id") == NULL);
    json_decref(o[0]);
    json_decref(o[1]);
    free(text);
}

static void emit_long(void) {
    static char big[1000];
    memset(big, '\x01', sizeof(big) - 1); /* six bytes each when escaped */
    log_init("inst-1", LOG_INFO);
    log_set_format(LOG_FORMAT_JSON);
    log_set_request_id("r");
    log_info("big", "a=1 b=%s", big);
    log_set_format(LOG_FORMAT_TEXT);
}

TT_TEST(log_json_long_line_stays_valid, 5) {
    char *text = capture(emit_long);
    json_t *o[2] = {0};
    TT_EQ_INT(json_lines(text, o, 2), 1);
    TT_ASSERT(strcmp(str(o[0], "a"), "1") == 0);
    TT_ASSERT(json_is_true(json_object_get(o[0], "truncated")));
    json_decref(o[0]);
    free(text);
}

static void emit_text(void) {
    log_init("inst-1", LOG_INFO);
    log_set_format(LOG_FORMAT_TEXT);
    log_set_request_id("abc-1");
    log_info("claim.ok", "coupon=x user=u claim=3 fence=9");
    log_set_request_id("");
    log_info("claim.ok", "coupon=x user=v claim=4 fence=10");
}

TT_TEST(log_text_lines_end_with_request_id, 5) {
    char *text = capture(emit_text);
    char *second = strchr(text, '\n');
    TT_ASSERT(second != NULL);
    *second++ = '\0';
    TT_ASSERT_MSG(strstr(text,
                         " INFO instance=inst-1 event=claim.ok coupon=x "
                         "user=u claim=3 fence=9 request_id=abc-1") != NULL,
                  "line: %s", text);
    TT_ASSERT_MSG(strstr(second, "fence=10\n") != NULL &&
                      strstr(second, "request_id") == NULL,
                  "line: %s", second);
    free(text);
}

TT_TEST(log_format_parse_names, 5) {
    log_format_t f;
    TT_EQ_INT(log_format_parse("json", &f), 0);
    TT_EQ_INT(f, LOG_FORMAT_JSON);
    TT_EQ_INT(log_format_parse("text", &f), 0);
    TT_EQ_INT(f, LOG_FORMAT_TEXT);
    TT_EQ_INT(log_format_parse("JSON", &f), -1);
    TT_EQ_INT(log_format_parse("", &f), -1);
}
