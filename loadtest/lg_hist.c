/*
 * lg_hist.c: the latency histogram's walks over its buckets (lg_hist.h says
 * how values map to buckets).
 */
#include "lg_hist.h"

#include <math.h>

uint64_t lg_hist_high(int i) {
    int s = i < 2 * LG_HIST_SUB ? 0 : i / LG_HIST_SUB - 1;
    uint64_t low = (uint64_t)(i - s * LG_HIST_SUB) << s;
    return low + ((1ULL << s) - 1);
}

void lg_hist_merge(lg_hist_t *dst, const lg_hist_t *src) {
    for (int i = 0; i < LG_HIST_LEN; i++) {
        dst->count[i] += src->count[i];
    }
    dst->total += src->total;
    if (src->max > dst->max) {
        dst->max = src->max;
    }
}

bool lg_hist_ok(const lg_hist_t *h) {
    uint64_t sum = 0;
    for (int i = 0; i < LG_HIST_LEN; i++) {
        sum += h->count[i];
    }
    return sum == h->total;
}

uint64_t lg_hist_percentile(const lg_hist_t *h, double p) {
    if (h->total == 0) {
        return 0;
    }
    uint64_t rank = (uint64_t)ceil(p / 100.0 * (double)h->total);
    if (rank < 1) {
        rank = 1;
    }
    uint64_t seen = 0;
    for (int i = 0; i < LG_HIST_LEN; i++) {
        seen += h->count[i];
        if (seen >= rank) {
            uint64_t v = lg_hist_high(i);
            return v < h->max ? v : h->max;
        }
    }
    return h->max;
}
