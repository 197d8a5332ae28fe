/* The layers of dtnh_nn.h: each backward against central finite differences of a
   double-precision loss, and the forwards against naive references and PyTorch's formulas. */
#include <string.h>
#include "test.h"
#include "../dtnh_nn.h"

/* ---- a finite-difference harness ----------------------------------------------------------- */

/* The scalar loss L = sum_i r_i * y_i (in double) of a layer's output y for fixed random r:
   its gradient with respect to y is r, which backward takes as dy. */
typedef double (*loss_fn)(void *ctx);

static void fill_normal(float *x, size_t n, float scale, uint64_t seed) {
    dtnh_rng r;
    size_t i;
    dtnh_rng_seed(&r, seed);
    for (i = 0; i < n; i++) x[i] = scale * dtnh_rng_normal(&r);
}

static double project(const float *y, const float *r, size_t n) {
    double s = 0;
    size_t i;
    for (i = 0; i < n; i++) s += (double)y[i] * (double)r[i];
    return s;
}

/* Worst relative error between the analytic directional derivative <grad, v> and the central
   difference (L(x + h v) - L(x - h v)) / 2h, over 4 random directions v and the first 6
   coordinates. The derivative uses the steps float rounding really took. x is restored. */
static double fd_worst(loss_fn f, void *ctx, float *x, const float *grad, size_t n, float h,
                       uint64_t seed) {
    float v[4096], saved[4096], plus[4096];
    double worst = 0;
    int t;
    size_t i;
    if (n > 4096) return 1e9;
    for (t = 0; t < 10; t++) {
        double an = 0, fd, gn = 0, vn = 0, lp, lm, err;
        if (t < 4) fill_normal(v, n, 1.0f, seed + (uint64_t)t);
        else {
            if ((size_t)(t - 4) >= n) break;
            memset(v, 0, n * sizeof(float));
            v[t - 4] = 1.0f;
        }
        memcpy(saved, x, n * sizeof(float));
        for (i = 0; i < n; i++) x[i] = plus[i] = saved[i] + h * v[i];
        lp = f(ctx);
        for (i = 0; i < n; i++) x[i] = saved[i] - h * v[i];
        lm = f(ctx);
        for (i = 0; i < n; i++) {
            an += (double)grad[i] * ((double)plus[i] - (double)x[i]) / (2.0 * h);
            gn += (double)grad[i] * grad[i];
            vn += (double)v[i] * v[i];
        }
        memcpy(x, saved, n * sizeof(float));
        fd = (lp - lm) / (2.0 * h);
        /* Relative to the derivative, with a floor at 1e-3 of the largest it could be. */
        err = fabs(fd - an) / fmax(fabs(an), 1e-3 * sqrt(gn * vn) + 1e-12);
        if (err > worst) worst = err;
    }
    return worst;
}

static dtnh_work small_work(void) {
    static DTNH_ALIGNED(64) unsigned char buf[1 << 16];
    dtnh_work w;
    dtnh_arena a;
    dtnh_arena_init(&a, buf, sizeof buf);
    dtnh_work_alloc(&w, &a, dtnh_gemm_work_bytes(1), 1, NULL);
    return w;
}

/* ---- convolution ----------------------------------------------------------------------------- */

typedef struct conv_case {
    dtnh_conv_geom g;
    float x[2 * 3 * 7 * 6], w[4 * 3 * 3 * 3], b[4], y[2 * 4 * 4 * 3], r[2 * 4 * 4 * 3];
    int bias;
    dtnh_work work;
    DTNH_ALIGNED(64) unsigned char wbuf[1 << 18];
} conv_case;

static double conv_loss(void *ctx) {
    conv_case *c = (conv_case *)ctx;
    dtnh_conv2d_forward(&c->g, c->x, c->w, c->bias ? c->b : NULL, c->y, &c->work);
    return project(c->y, c->r, sizeof c->y / sizeof c->y[0]);
}

static void conv_check(int bias) {
    static conv_case c;
    float dx[sizeof c.x / sizeof(float)], dw[sizeof c.w / sizeof(float)], db[4];
    dtnh_arena a;
    memset(&c, 0, sizeof c);
    c.bias = bias;
    CHECK_OK(dtnh_conv_geom_init(&c.g, 2, 3, 7, 6, 4, 3, 3, 2, 1, NULL));
    CHECK(c.g.oh == 4 && c.g.ow == 3);
    dtnh_arena_init(&a, c.wbuf, sizeof c.wbuf);
    CHECK_OK(dtnh_work_alloc(&c.work, &a, dtnh_conv_work_bytes(&c.g, 1), 1, NULL));
    fill_normal(c.x, sizeof c.x / sizeof(float), 1.0f, 1);
    fill_normal(c.w, sizeof c.w / sizeof(float), 0.3f, 2);
    fill_normal(c.b, 4, 0.5f, 3);
    fill_normal(c.r, sizeof c.r / sizeof(float), 1.0f, 4);
    dtnh_conv2d_backward_data(&c.g, c.r, c.w, dx, &c.work);
    dtnh_conv2d_backward_weights(&c.g, c.x, c.r, dw, bias ? db : NULL, 0, &c.work);
    CHECK(fd_worst(conv_loss, &c, c.x, dx, sizeof c.x / sizeof(float), 1e-2f, 10) < 2e-3);
    CHECK(fd_worst(conv_loss, &c, c.w, dw, sizeof c.w / sizeof(float), 1e-2f, 20) < 2e-3);
    if (bias) CHECK(fd_worst(conv_loss, &c, c.b, db, 4, 1e-2f, 30) < 2e-3);
}

static void conv2d_gradients_match_finite_differences(void) { conv_check(0); }
static void conv2d_with_bias_gradients_match_finite_differences(void) { conv_check(1); }

/* ---- batch norm ------------------------------------------------------------------------------- */

enum { BN_N = 3, BN_C = 4, BN_HW = 5, BN_COUNT = BN_N * BN_C * BN_HW };

typedef struct bn_case {
    float x[BN_COUNT], y[BN_COUNT], r[BN_COUNT], gamma[BN_C], beta[BN_C];
    float mean[BN_C], invstd[BN_C], var[BN_C], rmean[BN_C], rvar[BN_C];
    int batch_stats, relu;
} bn_case;

static void bn_forward(bn_case *c) {
    if (c->batch_stats) {
        dtnh_batchnorm_stats(BN_N, BN_C, BN_HW, c->x, DTNH_BN_EPS, c->mean, c->invstd, c->var);
        dtnh_batchnorm_apply(BN_N, BN_C, BN_HW, c->x, c->mean, c->invstd, c->gamma, c->beta, c->relu, c->y);
    } else {
        dtnh_batchnorm_eval_invstd(BN_C, c->rvar, DTNH_BN_EPS, c->invstd);
        dtnh_batchnorm_apply(BN_N, BN_C, BN_HW, c->x, c->rmean, c->invstd, c->gamma, c->beta, c->relu, c->y);
    }
}

static double bn_loss(void *ctx) {
    bn_case *c = (bn_case *)ctx;
    bn_forward(c);
    return project(c->y, c->r, BN_COUNT);
}

static void bn_check(int batch_stats, int relu) {
    static bn_case c;
    float dx[BN_COUNT], dg[BN_C], db[BN_C];
    int i;
    memset(&c, 0, sizeof c);
    c.batch_stats = batch_stats;
    c.relu = relu;
    fill_normal(c.x, BN_COUNT, 2.0f, 5);
    for (i = 0; i < BN_COUNT; i++) c.x[i] += 1.0f; /* a mean away from 0 */
    fill_normal(c.gamma, BN_C, 1.0f, 6);
    fill_normal(c.beta, BN_C, 1.0f, 7);
    fill_normal(c.r, BN_COUNT, 1.0f, 8);
    for (i = 0; i < BN_C; i++) {
        c.rmean[i] = 0.5f * (float)i;
        c.rvar[i] = 1.0f + (float)i;
    }
    bn_forward(&c);
    dtnh_batchnorm_backward(BN_N, BN_C, BN_HW, c.x, relu ? c.y : NULL, c.r,
                            batch_stats ? c.mean : c.rmean, c.invstd, c.gamma, batch_stats, dx,
                            dg, db, 0);
    CHECK(fd_worst(bn_loss, &c, c.x, dx, BN_COUNT, 3e-3f, 40) < 5e-3);
    CHECK(fd_worst(bn_loss, &c, c.gamma, dg, BN_C, 3e-3f, 50) < 5e-3);
    CHECK(fd_worst(bn_loss, &c, c.beta, db, BN_C, 3e-3f, 60) < 5e-3);
}

static void batchnorm_training_gradients_match_finite_differences(void) { bn_check(1, 0); }
static void batchnorm_relu_training_gradients_match_finite_differences(void) { bn_check(1, 1); }
static void batchnorm_frozen_gradients_match_finite_differences(void) { bn_check(0, 0); }

static void batchnorm_backward_in_place_equals_out_of_place(void) {
    static bn_case c;
    float a[BN_COUNT], dg1[BN_C], dg2[BN_C];
    memset(&c, 0, sizeof c);
    c.batch_stats = c.relu = 1;
    fill_normal(c.x, BN_COUNT, 1.0f, 9);
    fill_normal(c.gamma, BN_C, 1.0f, 10);
    fill_normal(c.r, BN_COUNT, 1.0f, 11);
    bn_forward(&c);
    dtnh_batchnorm_backward(BN_N, BN_C, BN_HW, c.x, c.y, c.r, c.mean, c.invstd, c.gamma, 1, a, dg1, NULL, 0);
    dtnh_batchnorm_backward(BN_N, BN_C, BN_HW, c.x, c.y, c.r, c.mean, c.invstd, c.gamma, 1, c.r, dg2, NULL, 0);
    CHECK(memcmp(a, c.r, sizeof a) == 0);
    CHECK(memcmp(dg1, dg2, sizeof dg1) == 0);
}

/* Running statistics as torch.nn.BatchNorm2d: momentum 0.1, the unbiased batch variance. */
static void batchnorm_running_stats_follow_pytorch(void) {
    float x[BN_COUNT], mean[BN_C], invstd[BN_C], var[BN_C], rm[BN_C], rv[BN_C];
    int64_t nbt = 7;
    int ch, i, j;
    fill_normal(x, BN_COUNT, 3.0f, 12);
    for (ch = 0; ch < BN_C; ch++) {
        rm[ch] = 1.0f;
        rv[ch] = 2.0f;
    }
    dtnh_batchnorm_stats(BN_N, BN_C, BN_HW, x, DTNH_BN_EPS, mean, invstd, var);
    dtnh_batchnorm_update_running(BN_C, mean, var, DTNH_BN_MOMENTUM, rm, rv, &nbt);
    CHECK(nbt == 8);
    for (ch = 0; ch < BN_C; ch++) {
        double s = 0, q = 0, m, cnt = BN_N * BN_HW;
        for (i = 0; i < BN_N; i++)
            for (j = 0; j < BN_HW; j++) s += x[(i * BN_C + ch) * BN_HW + j];
        m = s / cnt;
        for (i = 0; i < BN_N; i++)
            for (j = 0; j < BN_HW; j++) {
                double d = x[(i * BN_C + ch) * BN_HW + j] - m;
                q += d * d;
            }
        CHECK_NEAR(mean[ch], m, 1e-6);
        CHECK_NEAR(invstd[ch], 1.0 / sqrt(q / cnt + 1e-5), 1e-6);
        CHECK_NEAR(rm[ch], 0.9 * 1.0 + 0.1 * m, 1e-6);
        CHECK_NEAR(rv[ch], 0.9 * 2.0 + 0.1 * q / (cnt - 1), 1e-6);
    }
}

static void batchnorm_eval_normalises_with_running_stats(void) {
    float x[BN_COUNT], y[BN_COUNT], rm[BN_C] = {1, -1, 0, 2}, rv[BN_C] = {4, 1, 0.25f, 9};
    float g[BN_C] = {1, 2, -1, 0.5f}, b[BN_C] = {0, 1, 2, 3}, inv[BN_C];
    int i;
    fill_normal(x, BN_COUNT, 1.0f, 13);
    dtnh_batchnorm_eval_invstd(BN_C, rv, DTNH_BN_EPS, inv);
    dtnh_batchnorm_apply(BN_N, BN_C, BN_HW, x, rm, inv, g, b, 0, y);
    for (i = 0; i < BN_COUNT; i++) {
        int ch = (i / BN_HW) % BN_C;
        CHECK_NEAR(y[i], g[ch] * (x[i] - rm[ch]) / sqrt(rv[ch] + 1e-5) + b[ch], 1e-5);
    }
}

/* ---- ReLU, pooling, linear -------------------------------------------------------------------- */

typedef struct simple_case {
    float x[256], y[256], r[256], w[64], b[8];
    int kind; /* 0 relu, 1 maxpool, 2 avgpool, 3 linear */
    dtnh_work work;
} simple_case;

enum { MP_N = 2, MP_C = 2, MP_H = 7, MP_W = 6 };

static double simple_loss(void *ctx) {
    simple_case *c = (simple_case *)ctx;
    switch (c->kind) {
    case 0: dtnh_relu_forward(60, c->x, c->y); return project(c->y, c->r, 60);
    case 1:
        dtnh_maxpool_forward(MP_N, MP_C, MP_H, MP_W, 3, 2, 1, c->x, c->y);
        return project(c->y, c->r, MP_N * MP_C * 4 * 3);
    case 2: dtnh_avgpool_forward(3, 4, 5, c->x, c->y); return project(c->y, c->r, 12);
    default: dtnh_linear_forward(3, 8, 5, c->x, c->w, c->b, c->y, &c->work); return project(c->y, c->r, 15);
    }
}

/* Values at least 0.05 apart and away from 0, so a step of 1e-3 crosses no kink. */
static void fill_spread(float *x, size_t n, uint64_t seed) {
    dtnh_rng r;
    size_t i;
    dtnh_rng_seed(&r, seed);
    for (i = 0; i < n; i++) x[i] = (float)(i + 1) * 0.05f * (i % 2 ? -1.0f : 1.0f);
    for (i = n - 1; i > 0; i--) { /* shuffle */
        size_t j = dtnh_rng_below(&r, (uint32_t)(i + 1));
        float t = x[i];
        x[i] = x[j];
        x[j] = t;
    }
}

static void relu_gradient_matches_finite_differences(void) {
    static simple_case c;
    float dx[60];
    c.kind = 0;
    fill_spread(c.x, 60, 14);
    fill_normal(c.r, 60, 1.0f, 15);
    simple_loss(&c);
    dtnh_relu_backward(60, c.y, c.r, dx);
    CHECK(fd_worst(simple_loss, &c, c.x, dx, 60, 1e-3f, 70) < 1e-3);
}

static void maxpool_gradient_matches_finite_differences(void) {
    static simple_case c;
    float dx[MP_N * MP_C * MP_H * MP_W];
    c.kind = 1;
    fill_spread(c.x, sizeof dx / sizeof(float), 16);
    fill_normal(c.r, MP_N * MP_C * 12, 1.0f, 17);
    dtnh_maxpool_backward(MP_N, MP_C, MP_H, MP_W, 3, 2, 1, c.x, c.r, dx);
    CHECK(fd_worst(simple_loss, &c, c.x, dx, sizeof dx / sizeof(float), 1e-3f, 80) < 1e-3);
}

/* Padding is -inf (a window of negatives keeps its largest), ties go to the first. */
static void maxpool_pads_with_minus_infinity_and_breaks_ties_first(void) {
    float x[9], y[4], dy[4] = {1, 2, 3, 4}, dx[9];
    int i;
    for (i = 0; i < 9; i++) x[i] = -10.0f - (float)i;
    dtnh_maxpool_forward(1, 1, 3, 3, 3, 2, 1, x, y);
    CHECK(y[0] == -10.0f && y[1] == -11.0f && y[2] == -13.0f && y[3] == -14.0f);
    for (i = 0; i < 9; i++) x[i] = 1.0f;
    dtnh_maxpool_backward(1, 1, 3, 3, 3, 2, 1, x, dy, dx);
    /* Window of output (0,0) covers rows 0..1, cols 0..1: first is x[0]; (0,1) starts at x[1];
       (1,0) at x[3]; (1,1) at x[4]. */
    CHECK(dx[0] == 1 && dx[1] == 2 && dx[3] == 3 && dx[4] == 4);
    CHECK(dx[2] == 0 && dx[5] == 0 && dx[8] == 0);
}

/* The 3x3 interior fast path against a plain reference: -inf padding, first largest input of
   each window (row-major) takes the gradient; ties made common by rounding to halves. */
static void maxpool_matches_a_reference_on_odd_and_even_sizes(void) {
    static float x[2 * 3 * 11 * 75], y[2 * 3 * 6 * 38], dy[2 * 3 * 6 * 38], dx[2 * 3 * 11 * 75],
        want_dx[2 * 3 * 11 * 75];
    /* rows of 5 to 38 outputs: the vector path takes 16 at a time */
    int sizes[4][2] = {{11, 10}, {8, 9}, {7, 75}, {6, 34}}, t, pl, oy, ox, i, j;
    for (t = 0; t < 4; t++) {
        int h = sizes[t][0], w = sizes[t][1], oh = (h - 1) / 2 + 1, ow = (w - 1) / 2 + 1;
        fill_normal(x, (size_t)6 * h * w, 1.0f, 200 + (uint64_t)t);
        for (i = 0; i < 6 * h * w; i++) x[i] = floorf(x[i] * 2.0f) / 2.0f;
        fill_normal(dy, (size_t)6 * oh * ow, 1.0f, 210 + (uint64_t)t);
        dtnh_maxpool_forward(2, 3, h, w, 3, 2, 1, x, y);
        dtnh_maxpool_backward(2, 3, h, w, 3, 2, 1, x, dy, dx);
        memset(want_dx, 0, sizeof want_dx);
        for (pl = 0; pl < 6; pl++)
            for (oy = 0; oy < oh; oy++)
                for (ox = 0; ox < ow; ox++) {
                    float best = -INFINITY;
                    int arg = -1;
                    for (i = 2 * oy - 1; i <= 2 * oy + 1; i++)
                        for (j = 2 * ox - 1; j <= 2 * ox + 1; j++)
                            if (i >= 0 && i < h && j >= 0 && j < w && x[(pl * h + i) * w + j] > best) {
                                best = x[(pl * h + i) * w + j];
                                arg = (pl * h + i) * w + j;
                            }
                    CHECK(y[(pl * oh + oy) * ow + ox] == best);
                    want_dx[arg] += dy[(pl * oh + oy) * ow + ox];
                }
        for (i = 0; i < 6 * h * w; i++) CHECK_MSG(dx[i] == want_dx[i], "size %dx%d at %d", h, w, i);
    }
}

/* A NaN wins its windows (as in PyTorch), on the vector path too: forward gives NaN exactly
   where a window holds it, backward sends those windows' gradients to it. */
static void maxpool_nan_wins_its_windows(void) {
    enum { H = 6, W = 40, OH = 3, OW = 20 };
    static float x[H * W], y[OH * OW], dy[OH * OW], dx[H * W];
    int oy, ox, nan_at = 3 * W + 21; /* row 3, column 21: windows (1..2, 10..11) */
    double want = 0;
    fill_normal(x, H * W, 1.0f, 220);
    fill_normal(dy, OH * OW, 1.0f, 221);
    x[nan_at] = NAN;
    dtnh_maxpool_forward(1, 1, H, W, 3, 2, 1, x, y);
    dtnh_maxpool_backward(1, 1, H, W, 3, 2, 1, x, dy, dx);
    for (oy = 0; oy < OH; oy++)
        for (ox = 0; ox < OW; ox++) {
            int holds = 2 * oy - 1 <= 3 && 3 <= 2 * oy + 1 && 2 * ox - 1 <= 21 && 21 <= 2 * ox + 1;
            CHECK_MSG((y[oy * OW + ox] != y[oy * OW + ox]) == holds, "output (%d, %d)", oy, ox);
            if (holds) want += dy[oy * OW + ox];
        }
    CHECK_NEAR(dx[nan_at], want, 1e-6);
}

static void avgpool_gradient_matches_finite_differences(void) {
    static simple_case c;
    float dx[60];
    c.kind = 2;
    fill_normal(c.x, 60, 1.0f, 18);
    fill_normal(c.r, 12, 1.0f, 19);
    dtnh_avgpool_backward(3, 4, 5, c.r, dx);
    CHECK(fd_worst(simple_loss, &c, c.x, dx, 60, 1e-3f, 90) < 1e-3);
}

static void linear_gradients_match_finite_differences(void) {
    static simple_case c;
    float dx[24], dw[40], db[5];
    c.kind = 3;
    c.work = small_work();
    fill_normal(c.x, 24, 1.0f, 20);
    fill_normal(c.w, 40, 0.5f, 21);
    fill_normal(c.b, 5, 0.5f, 22);
    fill_normal(c.r, 15, 1.0f, 23);
    dtnh_linear_backward_data(3, 8, 5, c.r, c.w, dx, 0, &c.work);
    dtnh_linear_backward_weights(3, 8, 5, c.x, c.r, dw, db, 0, &c.work);
    CHECK(fd_worst(simple_loss, &c, c.x, dx, 24, 1e-3f, 100) < 1e-3);
    CHECK(fd_worst(simple_loss, &c, c.w, dw, 40, 1e-3f, 110) < 1e-3);
    CHECK(fd_worst(simple_loss, &c, c.b, db, 5, 1e-3f, 120) < 1e-3);
}

static void linear_accumulates_when_asked(void) {
    float x[24], w[40], dy[15], dw[40], dw2[40], db[5], db2[5], dx[24], dx2[24];
    dtnh_work work = small_work();
    int i;
    fill_normal(x, 24, 1.0f, 24);
    fill_normal(w, 40, 1.0f, 25);
    fill_normal(dy, 15, 1.0f, 26);
    dtnh_linear_backward_weights(3, 8, 5, x, dy, dw, db, 0, &work);
    dtnh_linear_backward_data(3, 8, 5, dy, w, dx, 0, &work);
    for (i = 0; i < 40; i++) dw2[i] = 1.0f;
    for (i = 0; i < 5; i++) db2[i] = 1.0f;
    for (i = 0; i < 24; i++) dx2[i] = 1.0f;
    dtnh_linear_backward_weights(3, 8, 5, x, dy, dw2, db2, 1, &work);
    dtnh_linear_backward_data(3, 8, 5, dy, w, dx2, 1, &work);
    for (i = 0; i < 40; i++) CHECK_NEAR(dw2[i], dw[i] + 1.0f, 1e-6);
    for (i = 0; i < 5; i++) CHECK_NEAR(db2[i], db[i] + 1.0f, 1e-6);
    for (i = 0; i < 24; i++) CHECK_NEAR(dx2[i], dx[i] + 1.0f, 1e-6);
}

/* ---- softmax cross-entropy --------------------------------------------------------------------- */

typedef struct ce_case {
    float logits[12];
    int labels[3];
} ce_case;

static double ce_loss(void *ctx) {
    ce_case *c = (ce_case *)ctx;
    double loss = 0;
    dtnh_softmax_cross_entropy(3, 4, c->logits, c->labels, NULL, &loss, NULL);
    return loss;
}

static void cross_entropy_gradient_matches_finite_differences(void) {
    static ce_case c;
    float d[12];
    double loss;
    c.labels[0] = 0;
    c.labels[1] = 3;
    c.labels[2] = 1;
    fill_normal(c.logits, 12, 2.0f, 27);
    CHECK_OK(dtnh_softmax_cross_entropy(3, 4, c.logits, c.labels, d, &loss, NULL));
    CHECK(fd_worst(ce_loss, &c, c.logits, d, 12, 1e-3f, 130) < 1e-3);
}

static void cross_entropy_is_the_batch_mean_of_minus_log_softmax(void) {
    float l[6] = {1, 2, 3, 0, 0, 0};
    int y[2] = {2, 1};
    double loss, want = 0.5 * ((log(exp(1.0) + exp(2.0) + exp(3.0)) - 3.0) + log(3.0));
    CHECK_OK(dtnh_softmax_cross_entropy(2, 3, l, y, NULL, &loss, NULL));
    CHECK_NEAR(loss, want, 1e-12);
}

static void cross_entropy_is_stable_for_huge_logits(void) {
    float l[4] = {1000, -1000, 3e4f, 3e4f}, d[4];
    int y[2] = {1, 0};
    double loss;
    CHECK_OK(dtnh_softmax_cross_entropy(2, 2, l, y, d, &loss, NULL));
    CHECK_NEAR(loss, 0.5 * (2000.0 + log(2.0)), 1e-9);
    CHECK(d[0] == 0.5f && d[1] == -0.5f);
    CHECK_NEAR(d[2], -0.25, 1e-7);
}

static void cross_entropy_rejects_bad_labels_and_nan(void) {
    float l[4] = {0, 1, 2, 3}, d[4] = {9, 9, 9, 9};
    int y[2] = {0, 2};
    double loss = 5;
    dtnh_error err;
    CHECK_STATUS(dtnh_softmax_cross_entropy(2, 2, l, y, d, &loss, &err), DTNH_ERR_ARG);
    CHECK(strstr(err.msg, "label 2") != NULL);
    CHECK(d[0] == 9 && loss == 5);
    y[1] = 1;
    l[3] = NAN;
    CHECK_STATUS(dtnh_softmax_cross_entropy(2, 2, l, y, d, &loss, &err), DTNH_ERR_NUMERIC);
    CHECK(d[0] == 9 && loss == 5);
}

void suite_layers(void) {
    RUN(conv2d_gradients_match_finite_differences);
    RUN(conv2d_with_bias_gradients_match_finite_differences);
    RUN(batchnorm_training_gradients_match_finite_differences);
    RUN(batchnorm_relu_training_gradients_match_finite_differences);
    RUN(batchnorm_frozen_gradients_match_finite_differences);
    RUN(batchnorm_backward_in_place_equals_out_of_place);
    RUN(batchnorm_running_stats_follow_pytorch);
    RUN(batchnorm_eval_normalises_with_running_stats);
    RUN(relu_gradient_matches_finite_differences);
    RUN(maxpool_gradient_matches_finite_differences);
    RUN(maxpool_pads_with_minus_infinity_and_breaks_ties_first);
    RUN(maxpool_matches_a_reference_on_odd_and_even_sizes);
    RUN(maxpool_nan_wins_its_windows);
    RUN(avgpool_gradient_matches_finite_differences);
    RUN(linear_gradients_match_finite_differences);
    RUN(linear_accumulates_when_asked);
    RUN(cross_entropy_gradient_matches_finite_differences);
    RUN(cross_entropy_is_the_batch_mean_of_minus_log_softmax);
    RUN(cross_entropy_is_stable_for_huge_logits);
    RUN(cross_entropy_rejects_bad_labels_and_nan);
}
