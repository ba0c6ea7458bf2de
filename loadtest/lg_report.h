/*
 * lg_report.h: the load generator's verification and reports, after the
 * run (lg_report.c).
 *
 * Thread safety: called by main() only, after every worker has been joined.
 */
#ifndef COUPONSVC_LG_REPORT_H
#define COUPONSVC_LG_REPORT_H

#include "lg_verify.h"
#include "loadgen.h"

/* What --verify-dsn found. */
typedef struct lg_verify {
    bool ran;               /* --verify-dsn was given */
    lg_verify_report_t rep; /* what the checker found; rep.err: could not */
    long long answered_200; /* 200 already_claimed answers among the pairs */
} lg_verify_t;

/* Checks lg_cfg.verify_dsn's database against the run's coupons and the
 * answers the workers recorded; fills *v. */
void lg_report_verify(lg_verify_t *v);

/* The summary on stdout (both borrowed). */
void lg_report_summary(const lg_result_t *res, const lg_verify_t *v);

/* --json FILE and --csv FILE. Return 0, or -1 after printing why not. */
int lg_report_json(const char *path, const lg_result_t *res,
                   const lg_verify_t *v);
int lg_report_csv(const char *path, const lg_result_t *res);

#endif
