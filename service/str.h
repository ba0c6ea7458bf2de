/*
 * str.h: small string helpers (str_) that more than one module needs.
 *
 * Header-only (static inline), no state, no allocation: any module, the load
 * generator and the tests may include it without linking anything.
 */
#ifndef COUPONSVC_STR_H
#define COUPONSVC_STR_H

#include <stddef.h>
#include <string.h>

/* The length of s (NUL-terminated, borrowed, not changed) without its
 * trailing characters that appear in set: for a message that is const, to
 * print with "%.*s". */
static inline size_t str_trimmed_len(const char *s, const char *set) {
    size_t n = strlen(s);
    while (n > 0 && strchr(set, s[n - 1]) != NULL) {
        n--;
    }
    return n;
}

/* Cuts every trailing character of s (a NUL-terminated string, modified in
 * place) that appears in set. Returns the new length. */
static inline size_t str_trim_end(char *s, const char *set) {
    size_t n = str_trimmed_len(s, set);
    s[n] = '\0';
    return n;
}

/* Cuts the trailing newlines ("\n", "\r\n") of s, in place, as libpq,
 * libmicrohttpd and strerror-style messages end with one. Returns the new
 * length. */
static inline size_t str_trim_newline(char *s) {
    return str_trim_end(s, "\r\n");
}

#endif
