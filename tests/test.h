/* A small test runner: CHECK* stop the current test on the first failure and report it.
   Each test file defines suite_<topic>() that RUNs its tests; main.c calls every suite. */
#ifndef DTNH_TEST_H
#define DTNH_TEST_H
#include <math.h>
#include <stdio.h>
#include "../dtnh.h"

extern int t_passed, t_failed, t_current_failed;
extern const char *t_filter;
void t_report(const char *file, int line, const char *what);
void t_run(const char *name, void (*fn)(void));
/* Where tests find their fixtures (tests/fixtures, overridable with DTNH_FIXTURES). */
const char *t_fixture(const char *name);

#define RUN(fn) t_run(#fn, fn)
#define CHECK(cond)                                          \
    do {                                                     \
        if (!(cond)) {                                       \
            t_report(__FILE__, __LINE__, #cond);             \
            return;                                          \
        }                                                    \
    } while (0)
#define CHECK_MSG(cond, ...)                                 \
    do {                                                     \
        if (!(cond)) {                                       \
            char t_msg_[512];                                \
            snprintf(t_msg_, sizeof t_msg_, __VA_ARGS__);    \
            t_report(__FILE__, __LINE__, t_msg_);            \
            return;                                          \
        }                                                    \
    } while (0)
/* |a-b| <= tol * max(1, |b|) */
#define CHECK_NEAR(a, b, tol)                                                              \
    do {                                                                                   \
        double t_a_ = (double)(a), t_b_ = (double)(b), t_tol_ = (double)(tol);              \
        double t_s_ = fabs(t_b_) > 1.0 ? fabs(t_b_) : 1.0;                                  \
        if (!(fabs(t_a_ - t_b_) <= t_tol_ * t_s_)) {                                        \
            char t_msg_[512];                                                              \
            snprintf(t_msg_, sizeof t_msg_, "%s = %.9g, expected %s = %.9g (tol %g)", #a,  \
                     t_a_, #b, t_b_, t_tol_);                                              \
            t_report(__FILE__, __LINE__, t_msg_);                                          \
            return;                                                                        \
        }                                                                                  \
    } while (0)
#define CHECK_OK(expr)                                                                     \
    do {                                                                                   \
        dtnh_status t_s_ = (expr);                                                         \
        if (t_s_ != DTNH_OK) {                                                             \
            char t_msg_[512];                                                              \
            snprintf(t_msg_, sizeof t_msg_, "%s returned %d (%s)", #expr, (int)t_s_,       \
                     dtnh_status_str(t_s_));                                               \
            t_report(__FILE__, __LINE__, t_msg_);                                          \
            return;                                                                        \
        }                                                                                  \
    } while (0)
#define CHECK_STATUS(expr, want)                                                           \
    do {                                                                                   \
        dtnh_status t_s_ = (expr);                                                         \
        if (t_s_ != (want)) {                                                              \
            char t_msg_[512];                                                              \
            snprintf(t_msg_, sizeof t_msg_, "%s returned %d (%s), expected %s", #expr,     \
                     (int)t_s_, dtnh_status_str(t_s_), #want);                             \
            t_report(__FILE__, __LINE__, t_msg_);                                          \
            return;                                                                        \
        }                                                                                  \
    } while (0)

#endif
