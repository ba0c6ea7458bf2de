/*
 * lg_hist.h: the load generator's latency histogram, in the manner of
 * HdrHistogram: 128 linear sub-buckets per power of two.
 *
 * Values are microseconds. Bucket i covers [low(i), high(i)]:
 *
 *   v < 256:  one bucket per microsecond, index v (exact);
 *   v >= 256: with h the position of v's highest set bit and s = h - 7, the
 *             index is s*128 + (v >> s); v >> s is in [128, 255], so each
 *             power of two [2^h, 2^(h+1)) is cut into 128 equal buckets.
 *
 * A bucket's width is at most 1/128 of its lower bound, so a percentile read
 * as the bucket's upper bound is off by less than 0.8%. The table covers
 * values below 2^32 us (71 minutes); larger ones land in the last bucket,
 * and max is kept exactly anyway.
 *
 * Thread safety: none; a histogram belongs to one worker, or to main()
 * after the workers have been joined (a per-second row, which every worker
 * merges into, is guarded by loadgen.c's lg__secs_lock).
 */
#ifndef COUPONSVC_LG_HIST_H
#define COUPONSVC_LG_HIST_H

#include <stdbool.h>
#include <stdint.h>

#define LG_HIST_SUB_BITS 7
#define LG_HIST_SUB (1 << LG_HIST_SUB_BITS)
#define LG_HIST_TOP_BIT 31 /* highest bit of the largest value kept exactly */
#define LG_HIST_LEN ((LG_HIST_TOP_BIT - LG_HIST_SUB_BITS + 2) * LG_HIST_SUB)

/* Invariant: total == the sum of count[] (lg_hist_ok). */
typedef struct lg_hist {
    uint64_t count[LG_HIST_LEN]; /* values recorded per bucket */
    uint64_t total;              /* values recorded */
    uint64_t max;                /* largest value recorded, exact */
} lg_hist_t;

/* The bucket of value v. Inline: it runs once per request. */
static inline int lg_hist_index(uint64_t v) {
    if (v >= (1ULL << (LG_HIST_TOP_BIT + 1))) {
        return LG_HIST_LEN - 1;
    }
    int h = v ? 63 - __builtin_clzll(v) : 0;
    int s = h > LG_HIST_SUB_BITS ? h - LG_HIST_SUB_BITS : 0;
    return s * LG_HIST_SUB + (int)(v >> s);
}

static inline void lg_hist_record(lg_hist_t *h, uint64_t v) {
    h->count[lg_hist_index(v)]++;
    h->total++;
    if (v > h->max) {
        h->max = v;
    }
}

/* The largest value bucket i holds. */
uint64_t lg_hist_high(int i);

/* Adds src's values to dst. */
void lg_hist_merge(lg_hist_t *dst, const lg_hist_t *src);

/* The invariant, for asserts (a walk of the buckets: after the run only). */
bool lg_hist_ok(const lg_hist_t *h);

/* The value at percentile p (0..100) in microseconds, 0 when empty: the
 * upper bound of the bucket holding the ceil(p% * total)-th value, but never
 * more than the exact maximum. */
uint64_t lg_hist_percentile(const lg_hist_t *h, double p);

static inline double lg_us_to_ms(uint64_t us) {
    return (double)us / 1000.0;
}

#endif
