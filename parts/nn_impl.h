/* ============================================================================================
   Layers
   Loops over (image, channel) planes, parallel over planes or channels with static
   partitions; every reduction runs inside one plane or channel in a fixed order, so results
   do not depend on the thread count.
   ============================================================================================ */

/* Parallelise only when there is enough work to pay for waking the threads. */
#define DTNH__PAR_MIN 32768

/* The reductions below add 16 float lanes over blocks of at most 256 values, then the lanes
   and the blocks in double, in a fixed order: the same bits for any thread count. The lanes
   are a GNU vector where the compiler has them (plain loops over lane arrays vectorise badly
   at GCC -O3), else (or with DTNH_NO_SIMD) arrays; both compute the same per-lane sums. */
#define DTNH__LANES 16
#define DTNH__BLOCK 256

#if (defined(__GNUC__) || defined(__clang__)) && !defined(DTNH_NO_SIMD)
typedef float dtnh__v16 __attribute__((vector_size(64)));
typedef int dtnh__i16 __attribute__((vector_size(64)));

/* s += p - shift, q += (p - shift)^2, lane by lane over len values (a multiple of 16). */
static void dtnh__acc_sumsq(const float *p, size_t len, float shift, float *s, float *q) {
    dtnh__v16 vs, vq, v;
    size_t j;
    memcpy(&vs, s, sizeof vs);
    memcpy(&vq, q, sizeof vq);
    for (j = 0; j < len; j += DTNH__LANES) {
        memcpy(&v, p + j, sizeof v);
        v -= shift;
        vs += v;
        vq += v * v;
    }
    memcpy(s, &vs, sizeof vs);
    memcpy(q, &vq, sizeof vq);
}

/* s += g, q += g * (x - mean), g = dy masked by y > 0 when y is not NULL. */
static void dtnh__acc_dy_dyx(const float *dy, const float *x, const float *y, float mean,
                             size_t len, float *s, float *q) {
    dtnh__v16 vs, vq, g, vx, vy;
    size_t j;
    memcpy(&vs, s, sizeof vs);
    memcpy(&vq, q, sizeof vq);
    for (j = 0; j < len; j += DTNH__LANES) {
        memcpy(&g, dy + j, sizeof g);
        memcpy(&vx, x + j, sizeof vx);
        if (y) {
            memcpy(&vy, y + j, sizeof vy);
            g = (dtnh__v16)((dtnh__i16)g & (vy > 0.0f));
        }
        vs += g;
        vq += g * (vx - mean);
    }
    memcpy(s, &vs, sizeof vs);
    memcpy(q, &vq, sizeof vq);
}
#else
static void dtnh__acc_sumsq(const float *p, size_t len, float shift, float *s, float *q) {
    size_t j;
    int k;
    for (j = 0; j < len; j += DTNH__LANES)
        for (k = 0; k < DTNH__LANES; k++) {
            float v = p[j + k] - shift;
            s[k] += v;
            q[k] += v * v;
        }
}

static void dtnh__acc_dy_dyx(const float *dy, const float *x, const float *y, float mean,
                             size_t len, float *s, float *q) {
    size_t j;
    int k;
    for (j = 0; j < len; j += DTNH__LANES)
        for (k = 0; k < DTNH__LANES; k++) {
            float g = y && !(y[j + k] > 0.0f) ? 0.0f : dy[j + k];
            s[k] += g;
            q[k] += g * (x[j + k] - mean);
        }
}
#endif

static double dtnh__lanes_sum(const float *lanes) {
    double s = 0;
    int k;
    for (k = 0; k < DTNH__LANES; k++) s += (double)lanes[k];
    return s;
}

/* Sums of (p - shift) and (p - shift)^2 over p[0..n). A shift near the mean keeps the
   variance E[d^2] - E[d]^2 free of cancellation. */
static void dtnh__sum_sumsq(const float *p, size_t n, float shift, double *sum, double *sumsq) {
    size_t i = 0;
    while (i < n) {
        size_t len = n - i < DTNH__BLOCK ? n - i : DTNH__BLOCK, j = len / DTNH__LANES * DTNH__LANES;
        float s[DTNH__LANES] = {0}, q[DTNH__LANES] = {0};
        int k;
        dtnh__acc_sumsq(p + i, j, shift, s, q);
        for (k = 0; j < len; j++, k++) {
            float v = p[i + j] - shift;
            s[k] += v;
            q[k] += v * v;
        }
        *sum += dtnh__lanes_sum(s);
        *sumsq += dtnh__lanes_sum(q);
        i += len;
    }
}

/* Sums of g and g * (x - mean) over [0..n), g = dy, or dy where y > 0 (a fused ReLU's mask)
   when y is not NULL. x NULL: only the first. */
static void dtnh__sum_dy_dyx(const float *dy, const float *x, const float *y, float mean,
                             size_t n, double *sum_dy, double *sum_dyx) {
    size_t i = 0;
    while (i < n) {
        size_t len = n - i < DTNH__BLOCK ? n - i : DTNH__BLOCK, j = len / DTNH__LANES * DTNH__LANES;
        const float *d = dy + i, *xs = x ? x + i : dy + i, *ys = y ? y + i : NULL;
        float s[DTNH__LANES] = {0}, q[DTNH__LANES] = {0};
        int k;
        dtnh__acc_dy_dyx(d, xs, ys, mean, j, s, q);
        for (k = 0; j < len; j++, k++) {
            float g = ys && !(ys[j] > 0.0f) ? 0.0f : d[j];
            s[k] += g;
            q[k] += g * (xs[j] - mean);
        }
        *sum_dy += dtnh__lanes_sum(s);
        if (x) *sum_dyx += dtnh__lanes_sum(q);
        i += len;
    }
}

/* dx = k_dy * g + k_x * x + k_0 with g as above, out of place and in place (dx == dy): one
   loop each, so the compiler need not fear that they overlap. */
static void dtnh__bn_dx(float *dx, const float *dy, const float *x, const float *y, size_t n,
                        float k_dy, float k_x, float k_0) {
    size_t j;
    if (y && x)
        for (j = 0; j < n; j++) dx[j] = k_dy * (y[j] > 0.0f ? dy[j] : 0.0f) + k_x * x[j] + k_0;
    else if (x)
        for (j = 0; j < n; j++) dx[j] = k_dy * dy[j] + k_x * x[j] + k_0;
    else if (y)
        for (j = 0; j < n; j++) dx[j] = y[j] > 0.0f ? k_dy * dy[j] : 0.0f;
    else
        for (j = 0; j < n; j++) dx[j] = k_dy * dy[j];
}

static void dtnh__bn_dx_inplace(float *d, const float *x, const float *y, size_t n, float k_dy,
                                float k_x, float k_0) {
    size_t j;
    if (y && x)
        for (j = 0; j < n; j++) d[j] = k_dy * (y[j] > 0.0f ? d[j] : 0.0f) + k_x * x[j] + k_0;
    else if (x)
        for (j = 0; j < n; j++) d[j] = k_dy * d[j] + k_x * x[j] + k_0;
    else if (y)
        for (j = 0; j < n; j++) d[j] = y[j] > 0.0f ? k_dy * d[j] : 0.0f;
    else
        for (j = 0; j < n; j++) d[j] *= k_dy;
}

DTNHDEF void dtnh_batchnorm_stats(int n, int c, int hw, const float *x, float eps, float *mean,
                                  float *invstd, float *var_unbiased) {
    long ch;
    size_t cnt = (size_t)n * (size_t)hw;
    DTNH__OMP(parallel for schedule(static) if ((size_t)c * cnt > DTNH__PAR_MIN))
    for (ch = 0; ch < c; ch++) {
        double s = 0, q = 0, m, var;
        float shift = x[(size_t)ch * (size_t)hw]; /* a value of the channel: near its mean */
        int i;
        for (i = 0; i < n; i++)
            dtnh__sum_sumsq(x + ((size_t)i * (size_t)c + (size_t)ch) * (size_t)hw, (size_t)hw,
                            shift, &s, &q);
        m = s / (double)cnt;
        var = q / (double)cnt - m * m;
        if (var < 0) var = 0; /* rounding, when every value is the same */
        m += (double)shift;
        mean[ch] = (float)m;
        invstd[ch] = (float)(1.0 / sqrt(var + (double)eps));
        if (var_unbiased) var_unbiased[ch] = cnt > 1 ? (float)(var * (double)cnt / (double)(cnt - 1)) : 0.0f;
    }
}

DTNHDEF void dtnh_batchnorm_eval_invstd(int c, const float *running_var, float eps, float *invstd) {
    int ch;
    for (ch = 0; ch < c; ch++) invstd[ch] = (float)(1.0 / sqrt((double)running_var[ch] + (double)eps));
}

DTNHDEF void dtnh_batchnorm_update_running(int c, const float *batch_mean,
                                           const float *batch_var_unbiased, float momentum,
                                           float *running_mean, float *running_var,
                                           int64_t *num_batches_tracked) {
    int ch;
    for (ch = 0; ch < c; ch++) {
        running_mean[ch] = (1.0f - momentum) * running_mean[ch] + momentum * batch_mean[ch];
        running_var[ch] = (1.0f - momentum) * running_var[ch] + momentum * batch_var_unbiased[ch];
    }
    if (num_batches_tracked) ++*num_batches_tracked;
}

DTNHDEF void dtnh_batchnorm_apply(int n, int c, int hw, const float *x, const float *mean,
                                  const float *invstd, const float *gamma, const float *beta,
                                  int relu, float *y) {
    long plane, planes = (long)n * c;
    DTNH__OMP(parallel for schedule(static) if ((size_t)planes * (size_t)hw > DTNH__PAR_MIN))
    for (plane = 0; plane < planes; plane++) {
        int ch = (int)(plane % c), j;
        /* PyTorch's form: y = x * alpha + shift, alpha = gamma * invstd. */
        float alpha = gamma[ch] * invstd[ch], shift = beta[ch] - mean[ch] * alpha;
        const float *xp = x + (size_t)plane * (size_t)hw;
        float *yp = y + (size_t)plane * (size_t)hw;
        if (relu)
            for (j = 0; j < hw; j++) {
                float v = xp[j] * alpha + shift;
                yp[j] = v <= 0.0f ? 0.0f : v; /* NaN passes, as in PyTorch */
            }
        else
            for (j = 0; j < hw; j++) yp[j] = xp[j] * alpha + shift;
    }
}

DTNHDEF void dtnh_batchnorm_backward(int n, int c, int hw, const float *x, const float *y,
                                     const float *dy, const float *mean, const float *invstd,
                                     const float *gamma, int batch_stats, float *dx,
                                     float *dgamma, float *dbeta, int accumulate) {
    long ch;
    size_t cnt = (size_t)n * (size_t)hw;
    DTNH__OMP(parallel for schedule(static) if ((size_t)c * cnt > DTNH__PAR_MIN))
    for (ch = 0; ch < c; ch++) {
        double sdy = 0, sdyxc = 0, sdyxhat;
        float a, k_x, k_0;
        int i;
        for (i = 0; i < n; i++) {
            size_t off = ((size_t)i * (size_t)c + (size_t)ch) * (size_t)hw;
            dtnh__sum_dy_dyx(dy + off, x ? x + off : NULL, y ? y + off : NULL, mean[ch],
                             (size_t)hw, &sdy, &sdyxc);
        }
        /* sum(g * xhat) = invstd * sum(g * (x - mean)) */
        sdyxhat = (double)invstd[ch] * sdyxc;
        if (dgamma) dgamma[ch] = accumulate ? dgamma[ch] + (float)sdyxhat : (float)sdyxhat;
        if (dbeta) dbeta[ch] = accumulate ? dbeta[ch] + (float)sdy : (float)sdy;
        if (!dx) continue;
        /* dx = a * (g - sum(g)/N - xhat * sum(g xhat)/N), a = gamma * invstd, written as
           a * g + k_x * x + k_0 (batch statistics), or a * g (constant statistics). */
        a = gamma[ch] * invstd[ch];
        k_x = batch_stats ? (float)(-(double)a * (double)invstd[ch] * sdyxhat / (double)cnt) : 0.0f;
        k_0 = batch_stats ? (float)(-(double)k_x * (double)mean[ch] - (double)a * sdy / (double)cnt) : 0.0f;
        for (i = 0; i < n; i++) {
            size_t off = ((size_t)i * (size_t)c + (size_t)ch) * (size_t)hw;
            const float *xp = batch_stats ? x + off : NULL, *yp = y ? y + off : NULL;
            if (dx == dy) dtnh__bn_dx_inplace(dx + off, xp, yp, (size_t)hw, a, k_x, k_0);
            else dtnh__bn_dx(dx + off, dy + off, xp, yp, (size_t)hw, a, k_x, k_0);
        }
    }
}

DTNHDEF void dtnh_relu_forward(size_t count, const float *x, float *y) {
    size_t i;
    for (i = 0; i < count; i++) y[i] = x[i] <= 0.0f ? 0.0f : x[i]; /* NaN passes */
}

DTNHDEF void dtnh_relu_backward(size_t count, const float *y, const float *dy, float *dx) {
    size_t i;
    if (dx == dy) /* in place: one pointer, so the loop vectorises */
        for (i = 0; i < count; i++) dx[i] = y[i] > 0.0f ? dx[i] : 0.0f;
    else
        for (i = 0; i < count; i++) dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
}

/* Output size of a pooling or convolution window, PyTorch's floor mode. */
static int dtnh__window_out(int size, int k, int stride, int pad) {
    return (size + 2 * pad - k) / stride + 1;
}

/* Index (in the plane) of the first largest input of output (oy, ox)'s window, -1 if the
   window holds only padding. */
static long dtnh__maxpool_argmax(const float *xp, int h, int w, int k, int stride, int pad,
                                 int oy, int ox, float *best) {
    long arg = -1;
    int i, j;
    *best = -INFINITY;
    for (i = 0; i < k; i++) {
        int iy = oy * stride - pad + i;
        if (iy < 0 || iy >= h) continue;
        for (j = 0; j < k; j++) {
            int ix = ox * stride - pad + j;
            float v;
            if (ix < 0 || ix >= w) continue;
            v = xp[(size_t)iy * (size_t)w + (size_t)ix];
            if (v > *best || arg < 0 || v != v) { /* NaN wins, as in PyTorch */
                *best = v;
                arg = (long)iy * w + ix;
            }
        }
    }
    return arg;
}

/* The 3x3 windows whose 9 inputs all lie inside: output columns [*lo, *hi) of a row whose
   3 input rows are inside. The hot path of ResNet's max-pool runs there without bounds checks
   or padding; the border goes through dtnh__maxpool_argmax. */
static void dtnh__maxpool3_interior(int w, int ow, int stride, int pad, int *lo, int *hi) {
    *lo = (pad + stride - 1) / stride;
    *hi = w - 3 + pad >= 0 ? (w - 3 + pad) / stride + 1 : 0;
    if (*hi > ow) *hi = ow;
    if (*lo > *hi) *lo = *hi;
}

/* The larger of a and b, NaN winning (as PyTorch's max-pool). */
#define DTNH__MAXNAN(a, b) ((b) > (a) || (b) != (b) ? (b) : (a))

static float dtnh__max9(const float *r0, const float *r1, const float *r2) {
    float m = r0[0];
    m = DTNH__MAXNAN(m, r0[1]);
    m = DTNH__MAXNAN(m, r0[2]);
    m = DTNH__MAXNAN(m, r1[0]);
    m = DTNH__MAXNAN(m, r1[1]);
    m = DTNH__MAXNAN(m, r1[2]);
    m = DTNH__MAXNAN(m, r2[0]);
    m = DTNH__MAXNAN(m, r2[1]);
    return DTNH__MAXNAN(m, r2[2]);
}

static void dtnh__maxpool_plane(const float *xp, int h, int w, int k, int stride, int pad,
                                float *yp, int oh, int ow) {
    int oy, ox, lo, hi;
    dtnh__maxpool3_interior(w, ow, stride, pad, &lo, &hi);
    for (oy = 0; oy < oh; oy++) {
        int iy = oy * stride - pad, fast = k == 3 && iy >= 0 && iy + 2 < h;
        float *yr = yp + (size_t)oy * (size_t)ow;
        for (ox = 0; ox < ow; ox++) {
            float best;
            if (fast && ox >= lo && ox < hi) {
                const float *r0 = xp + (size_t)iy * (size_t)w + (size_t)(ox * stride - pad);
                yr[ox] = dtnh__max9(r0, r0 + w, r0 + 2 * (size_t)w);
                continue;
            }
            dtnh__maxpool_argmax(xp, h, w, k, stride, pad, oy, ox, &best);
            yr[ox] = best;
        }
    }
}

/* Index in the 3x3 window (row-major) of its first largest value, the rule of the generic
   scan; -1 when the window holds a NaN (the generic scan decides those). */
static int dtnh__argmax9(const float *r0, const float *r1, const float *r2) {
    float m = dtnh__max9(r0, r1, r2);
    int arg = 8;
    if (m != m) return -1;
    arg = r2[1] == m ? 7 : arg;
    arg = r2[0] == m ? 6 : arg;
    arg = r1[2] == m ? 5 : arg;
    arg = r1[1] == m ? 4 : arg;
    arg = r1[0] == m ? 3 : arg;
    arg = r0[2] == m ? 2 : arg;
    arg = r0[1] == m ? 1 : arg;
    return r0[0] == m ? 0 : arg;
}

static void dtnh__maxpool_plane_backward(const float *xp, int h, int w, int k, int stride,
                                         int pad, const float *dyp, int oh, int ow, float *dxp) {
    int oy, ox, lo, hi;
    dtnh__maxpool3_interior(w, ow, stride, pad, &lo, &hi);
    dtnh_fill((size_t)h * (size_t)w, dxp, 0.0f);
    for (oy = 0; oy < oh; oy++) {
        int iy = oy * stride - pad, fast = k == 3 && iy >= 0 && iy + 2 < h;
        for (ox = 0; ox < ow; ox++) {
            float g = dyp[(size_t)oy * (size_t)ow + (size_t)ox], best;
            long arg = -1;
            if (fast && ox >= lo && ox < hi) {
                size_t at = (size_t)iy * (size_t)w + (size_t)(ox * stride - pad);
                int t = dtnh__argmax9(xp + at, xp + at + w, xp + at + 2 * (size_t)w);
                if (t >= 0) arg = (long)(at + (size_t)(t / 3) * (size_t)w + (size_t)(t % 3));
            }
            if (arg < 0) arg = dtnh__maxpool_argmax(xp, h, w, k, stride, pad, oy, ox, &best);
            if (arg >= 0) dxp[arg] += g;
        }
    }
}

DTNHDEF void dtnh_maxpool_forward(int n, int c, int h, int w, int k, int stride, int pad,
                                  const float *x, float *y) {
    int oh = dtnh__window_out(h, k, stride, pad), ow = dtnh__window_out(w, k, stride, pad);
    long plane, planes = (long)n * c;
    DTNH__OMP(parallel for schedule(static) if ((size_t)planes * (size_t)h * (size_t)w > DTNH__PAR_MIN))
    for (plane = 0; plane < planes; plane++)
        dtnh__maxpool_plane(x + (size_t)plane * (size_t)h * (size_t)w, h, w, k, stride, pad,
                            y + (size_t)plane * (size_t)oh * (size_t)ow, oh, ow);
}

DTNHDEF void dtnh_maxpool_backward(int n, int c, int h, int w, int k, int stride, int pad,
                                   const float *x, const float *dy, float *dx) {
    int oh = dtnh__window_out(h, k, stride, pad), ow = dtnh__window_out(w, k, stride, pad);
    long plane, planes = (long)n * c;
    DTNH__OMP(parallel for schedule(static) if ((size_t)planes * (size_t)h * (size_t)w > DTNH__PAR_MIN))
    for (plane = 0; plane < planes; plane++)
        dtnh__maxpool_plane_backward(x + (size_t)plane * (size_t)h * (size_t)w, h, w, k, stride,
                                     pad, dy + (size_t)plane * (size_t)oh * (size_t)ow, oh, ow,
                                     dx + (size_t)plane * (size_t)h * (size_t)w);
}

DTNHDEF void dtnh_avgpool_forward(int n, int c, int hw, const float *x, float *y) {
    long plane, planes = (long)n * c;
    DTNH__OMP(parallel for schedule(static) if ((size_t)planes * (size_t)hw > DTNH__PAR_MIN))
    for (plane = 0; plane < planes; plane++) {
        double s = 0, q = 0;
        dtnh__sum_sumsq(x + (size_t)plane * (size_t)hw, (size_t)hw, 0.0f, &s, &q);
        y[plane] = (float)(s / (double)hw);
    }
}

DTNHDEF void dtnh_avgpool_backward(int n, int c, int hw, const float *dy, float *dx) {
    long plane, planes = (long)n * c;
    DTNH__OMP(parallel for schedule(static) if ((size_t)planes * (size_t)hw > DTNH__PAR_MIN))
    for (plane = 0; plane < planes; plane++)
        dtnh_fill((size_t)hw, dx + (size_t)plane * (size_t)hw, dy[plane] / (float)hw);
}

DTNHDEF void dtnh_linear_forward(int n, int in, int out, const float *x, const float *w,
                                 const float *b, float *y, const dtnh_work *work) {
    int i, j;
    dtnh_sgemm(DTNH_NO_TRANS, DTNH_TRANS, n, out, in, 1.0f, x, in, w, in, 0.0f, y, out, work);
    if (b)
        for (i = 0; i < n; i++)
            for (j = 0; j < out; j++) y[(size_t)i * (size_t)out + (size_t)j] += b[j];
}

DTNHDEF void dtnh_linear_backward_data(int n, int in, int out, const float *dy, const float *w,
                                       float *dx, int accumulate, const dtnh_work *work) {
    dtnh_sgemm(DTNH_NO_TRANS, DTNH_NO_TRANS, n, in, out, 1.0f, dy, out, w, in,
               accumulate ? 1.0f : 0.0f, dx, in, work);
}

DTNHDEF void dtnh_linear_backward_weights(int n, int in, int out, const float *x, const float *dy,
                                          float *dw, float *db, int accumulate,
                                          const dtnh_work *work) {
    int i, j;
    if (dw)
        dtnh_sgemm(DTNH_TRANS, DTNH_NO_TRANS, out, in, n, 1.0f, dy, out, x, in,
                   accumulate ? 1.0f : 0.0f, dw, in, work);
    if (!db) return;
    for (j = 0; j < out; j++) {
        float s = 0;
        for (i = 0; i < n; i++) s += dy[(size_t)i * (size_t)out + (size_t)j];
        db[j] = accumulate ? db[j] + s : s;
    }
}

DTNHDEF dtnh_status dtnh_softmax_cross_entropy(int n, int classes, const float *logits,
                                               const int *labels, float *dlogits, double *loss,
                                               dtnh_error *err) {
    double total = 0;
    size_t bad;
    int i, j;
    if (n <= 0 || classes <= 0 || !logits || !labels || !loss)
        return dtnh_fail(err, DTNH_ERR_ARG,
                         "softmax_cross_entropy: n=%d classes=%d (expected > 0) or NULL pointer",
                         n, classes);
    for (i = 0; i < n; i++)
        if (labels[i] < 0 || labels[i] >= classes)
            return dtnh_fail(err, DTNH_ERR_ARG,
                             "softmax_cross_entropy: label %d of sample %d, expected 0..%d",
                             labels[i], i, classes - 1);
    if (!dtnh_all_finite((size_t)n * (size_t)classes, logits, &bad))
        return dtnh_fail(err, DTNH_ERR_NUMERIC,
                         "softmax_cross_entropy: logit %zu (sample %zu) is NaN or Inf", bad,
                         bad / (size_t)classes);
    for (i = 0; i < n; i++) {
        const float *l = logits + (size_t)i * (size_t)classes;
        double m = l[0], s = 0;
        for (j = 1; j < classes; j++)
            if (l[j] > m) m = l[j];
        for (j = 0; j < classes; j++) s += exp((double)l[j] - m);
        total += m + log(s) - (double)l[labels[i]];
        if (dlogits) {
            float *d = dlogits + (size_t)i * (size_t)classes;
            for (j = 0; j < classes; j++)
                d[j] = (float)((exp((double)l[j] - m) / s - (j == labels[i] ? 1.0 : 0.0)) / n);
        }
    }
    *loss = total / n;
    return DTNH_OK;
}

/* ============================================================================================
   BatchNorm buffers
   ============================================================================================ */

static dtnh_status dtnh__buffers_init(dtnh_buffers *b, dtnh_arena *a, int max_views,
                                      dtnh_error *err) {
    void *mem = NULL;
    dtnh_status s;
    memset(b, 0, sizeof *b);
    if ((s = dtnh_arena_alloc(a, (size_t)max_views * sizeof(dtnh_buffer_view), 0, &mem, err)))
        return s;
    b->views = (dtnh_buffer_view *)mem;
    b->capacity = max_views;
    return DTNH_OK;
}

/* Appends a float vector of c values, or (is_count) one int64 counter; a counting store
   (views NULL) only adds up. */
static dtnh_status dtnh__buffers_add(dtnh_buffers *b, const char *name, int is_count, int c,
                                     int *index, size_t *offset, dtnh_error *err) {
    dtnh_buffer_view v;
    if (strlen(name) >= DTNH_NAME_SIZE)
        return dtnh_fail(err, DTNH_ERR_ARG, "buffers: name '%s' longer than %d", name,
                         DTNH_NAME_SIZE - 1);
    if (b->views && b->count >= b->capacity)
        return dtnh_fail(err, DTNH_ERR_ARG, "buffers: more than %d views", b->capacity);
    memset(&v, 0, sizeof v);
    strcpy(v.name, name);
    v.ndim = is_count ? 0 : 1;
    v.shape[0] = is_count ? 1 : c;
    v.shape[1] = v.shape[2] = v.shape[3] = 1;
    v.is_count = is_count;
    v.count = is_count ? 1 : (size_t)c;
    v.offset = is_count ? b->count_total : b->total;
    if (is_count) b->count_total += 1;
    else b->total += (size_t)c;
    if (b->views) b->views[b->count] = v;
    *index = b->count++;
    *offset = v.offset;
    return DTNH_OK;
}

static dtnh_status dtnh__buffers_alloc(dtnh_buffers *b, dtnh_arena *a, dtnh_error *err) {
    void *mem = NULL;
    dtnh_status s;
    if ((s = dtnh_arena_alloc_floats(a, b->total, &b->values, err))) return s;
    if ((s = dtnh_arena_alloc(a, b->count_total * sizeof(int64_t), 0, &mem, err))) return s;
    b->counts = (int64_t *)mem;
    return DTNH_OK;
}

DTNHDEF int dtnh_buffers_find(const dtnh_buffers *b, const char *name) {
    int i;
    if (!b || !b->views || !name) return -1;
    for (i = 0; i < b->count; i++)
        if (strcmp(b->views[i].name, name) == 0) return i;
    return -1;
}

/* ============================================================================================
   ResNet-18: configuration and building
   The network is a list of nodes (layers) over values (activation tensors), in forward
   order; node and parameter order is torchvision's state_dict order.
   ============================================================================================ */

enum {
    DTNH__NODE_CONV = 1,
    DTNH__NODE_BN,
    DTNH__NODE_RELU,
    DTNH__NODE_MAXPOOL,
    DTNH__NODE_AVGPOOL,
    DTNH__NODE_LINEAR,
    DTNH__NODE_ADD
};
enum { DTNH__TRAIN = 0, DTNH__INFER = 1 };

/* ResNet-18 has 62 parameter tensors and 20 BatchNorms of 3 buffers each, whatever the
   configuration (layer1 never downsamples: the stem keeps `width` channels). */
#define DTNH__RESNET_VIEWS 62
#define DTNH__RESNET_BUFFERS 60

DTNHDEF dtnh_resnet_config dtnh_resnet_config_def(const dtnh_resnet_config *cfg) {
    dtnh_resnet_config c;
    if (cfg) c = *cfg;
    else memset(&c, 0, sizeof c);
    if (!c.in_channels) c.in_channels = 3;
    if (!c.num_classes) c.num_classes = 1000;
    if (!c.width) c.width = 64;
    if (c.stem == DTNH_STEM_DEFAULT) c.stem = DTNH_STEM_IMAGENET;
    if (!c.height) c.height = c.stem == DTNH_STEM_CIFAR ? 32 : 224;
    if (!c.width_px) c.width_px = c.stem == DTNH_STEM_CIFAR ? 32 : 224;
    if (!c.max_batch) c.max_batch = 1;
    if (!c.threads) c.threads = dtnh_threads();
    if (c.train == DTNH_TRAIN_DEFAULT) c.train = DTNH_TRAIN_ALL;
    if (!c.train_stages) c.train_stages = 1;
    if (c.bn_stats == DTNH_BN_STATS_DEFAULT) c.bn_stats = DTNH_BN_STATS_AUTO;
    if (!c.roles) c.roles = c.train == DTNH_TRAIN_NONE ? DTNH_ROLE_W : DTNH_ROLE_W | DTNH_ROLE_G_J;
    if (c.external_weights) c.roles &= ~(unsigned)DTNH_ROLE_W;
    return c;
}

static dtnh_status dtnh__resnet_check_config(const dtnh_resnet_config *c, dtnh_error *err) {
    int i;
    if (c->in_channels < 1 || c->num_classes < 1 || c->width < 1 || c->height < 1 ||
        c->width_px < 1 || c->max_batch < 1 || c->threads < 1)
        return dtnh_fail(err, DTNH_ERR_ARG,
                         "resnet config: in_channels=%d num_classes=%d width=%d input %dx%d "
                         "max_batch=%d threads=%d, expected all >= 1 (0 means default)",
                         c->in_channels, c->num_classes, c->width, c->height, c->width_px,
                         c->max_batch, c->threads);
    if (c->width > 65536 || c->in_channels > 65536 || c->height > 65536 || c->width_px > 65536)
        return dtnh_fail(err, DTNH_ERR_ARG,
                         "resnet config: width=%d in_channels=%d input %dx%d, expected <= 65536",
                         c->width, c->in_channels, c->height, c->width_px);
    if (c->stem != DTNH_STEM_IMAGENET && c->stem != DTNH_STEM_CIFAR)
        return dtnh_fail(err, DTNH_ERR_ARG, "resnet config: stem %d, expected DTNH_STEM_*", (int)c->stem);
    if (c->train < DTNH_TRAIN_ALL || c->train > DTNH_TRAIN_NONE)
        return dtnh_fail(err, DTNH_ERR_ARG, "resnet config: train %d, expected DTNH_TRAIN_*", (int)c->train);
    if (c->train_stages < 1 || c->train_stages > 4)
        return dtnh_fail(err, DTNH_ERR_ARG, "resnet config: train_stages %d, expected 1..4",
                         c->train_stages);
    if (c->bn_stats < DTNH_BN_STATS_AUTO || c->bn_stats > DTNH_BN_STATS_FROZEN)
        return dtnh_fail(err, DTNH_ERR_ARG, "resnet config: bn_stats %d, expected DTNH_BN_STATS_*",
                         (int)c->bn_stats);
    if (c->roles & ~(unsigned)(DTNH_ROLE_W | DTNH_ROLE_W_SRC | DTNH_ROLE_G_J | DTNH_ROLE_G_OMEGA))
        return dtnh_fail(err, DTNH_ERR_ARG, "resnet config: roles 0x%x, expected DTNH_ROLE_* bits",
                         c->roles);
    if (c->hook_count < 0 || c->hook_count > DTNH_RESNET_MAX_HOOKS)
        return dtnh_fail(err, DTNH_ERR_ARG, "resnet config: hook_count %d, expected 0..%d",
                         c->hook_count, DTNH_RESNET_MAX_HOOKS);
    for (i = 0; i < c->hook_count; i++)
        if (!c->hooks[i] || !c->hooks[i][0] || strlen(c->hooks[i]) >= DTNH_NAME_SIZE)
            return dtnh_fail(err, DTNH_ERR_ARG, "resnet config: hook %d is NULL, empty or too long", i);
    return DTNH_OK;
}

/* torchvision's names for the same output: "layer3" is "layer3.1", a block's "relu" is the
   block's output, "downsample" is its BatchNorm. */
static void dtnh__hook_normalise(const char *name, char *out) {
    size_t len;
    strncpy(out, name, DTNH_NAME_SIZE - 3);
    out[DTNH_NAME_SIZE - 3] = '\0';
    len = strlen(out);
    if (len == 6 && strncmp(out, "layer", 5) == 0) {
        strcat(out, ".1");
    } else if (strncmp(out, "layer", 5) == 0 && len > 5 && strcmp(out + len - 5, ".relu") == 0) {
        out[len - 5] = '\0';
    } else if (len > 11 && strcmp(out + len - 11, ".downsample") == 0) {
        strcat(out, ".1");
    }
}

/* 1 when a configured hook names the module `name` (so its output must stay unfused). */
static int dtnh__hooked(const dtnh_resnet *net, const char *name) {
    char norm[DTNH_NAME_SIZE];
    int i;
    for (i = 0; i < net->cfg.hook_count; i++) {
        dtnh__hook_normalise(net->cfg.hooks[i], norm);
        if (strcmp(norm, name) == 0) return 1;
    }
    return 0;
}

static size_t dtnh__value_floats(const dtnh__rvalue *v) {
    return (size_t)v->c * (size_t)v->h * (size_t)v->w;
}

/* Per-sample sizes round up to 16 floats, so every offset times the batch stays 64-byte
   aligned. */
static size_t dtnh__round16(size_t n) { return (n + 15) / 16 * 16; }

static dtnh_status dtnh__add_node(dtnh_resnet *net, int kind, const char *name, int in0, int in1,
                                  int stage, int c, int h, int w, dtnh__rnode **out,
                                  dtnh_error *err) {
    dtnh__rnode *nd = NULL;
    dtnh__rvalue *v;
    int i, idx = net->node_count, ins[2];
    if (idx >= DTNH__RESNET_MAX_NODES)
        return dtnh_fail(err, DTNH_ERR_ARG, "resnet: more than %d layers", DTNH__RESNET_MAX_NODES);
    nd = &net->nodes[idx];
    memset(nd, 0, sizeof *nd);
    strncpy(nd->name, name, sizeof nd->name - 1);
    nd->kind = kind;
    nd->stage = stage;
    nd->in[0] = in0;
    nd->in[1] = in1;
    nd->wview = nd->bufview = -1;
    nd->out = net->value_count++;
    v = &net->values[nd->out];
    memset(v, 0, sizeof *v);
    v->c = c;
    v->h = h;
    v->w = w;
    v->producer = idx;
    v->last_consumer = -1;
    v->hook = -1;
    ins[0] = in0;
    ins[1] = in1;
    for (i = 0; i < 2; i++)
        if (ins[i] >= 0) {
            net->values[ins[i]].consumers++;
            net->values[ins[i]].last_consumer = idx;
        }
    net->node_count++;
    *out = nd;
    return DTNH_OK;
}

static dtnh_status dtnh__add_param(dtnh_resnet *net, const char *module, const char *what,
                                   int ndim, const int *shape, unsigned groups, size_t *off,
                                   size_t *count, int *view, dtnh_error *err) {
    char name[DTNH_NAME_SIZE];
    dtnh_status s;
    int idx = -1;
    size_t before = net->params.total;
    snprintf(name, sizeof name, "%s.%s", module, what);
    if ((s = dtnh_params_add(&net->params, name, ndim, shape, groups, &idx, err))) return s;
    *off = before;
    *count = net->params.total - before;
    if (view) *view = idx;
    net->state_kind[net->state_count] = 0;
    net->state_index[net->state_count++] = idx;
    return DTNH_OK;
}

static dtnh_status dtnh__add_buffer(dtnh_resnet *net, const char *module, const char *what,
                                    int is_count, int c, size_t *off, int *view, dtnh_error *err) {
    char name[DTNH_NAME_SIZE];
    dtnh_status s;
    int idx = -1;
    snprintf(name, sizeof name, "%s.%s", module, what);
    if ((s = dtnh__buffers_add(&net->buffers, name, is_count, c, &idx, off, err))) return s;
    if (view) *view = idx;
    net->state_kind[net->state_count] = 1;
    net->state_index[net->state_count++] = idx;
    return DTNH_OK;
}

static dtnh_status dtnh__conv(dtnh_resnet *net, const char *name, int in, int c_out, int k,
                              int stride, int pad, int stage, int *out, dtnh_error *err) {
    const dtnh__rvalue *x = &net->values[in];
    dtnh_conv_geom g;
    dtnh__rnode *nd = NULL;
    dtnh_status s;
    int shape[4];
    memset(&g, 0, sizeof g);
    if ((s = dtnh_conv_geom_init(&g, net->cfg.max_batch, x->c, x->h, x->w, c_out, k, k, stride,
                                 pad, err)))
        return s;
    if ((s = dtnh__add_node(net, DTNH__NODE_CONV, name, in, -1, stage, c_out, g.oh, g.ow, &nd, err)))
        return s;
    nd->c_out = c_out;
    nd->k = k;
    nd->stride = stride;
    nd->pad = pad;
    shape[0] = c_out;
    shape[1] = x->c;
    shape[2] = shape[3] = k;
    *out = nd->out;
    return dtnh__add_param(net, name, "weight", 4, shape, DTNH_GROUP_BACKBONE | DTNH_GROUP_KERNEL,
                           &nd->woff, &nd->wcount, &nd->wview, err);
}

/* BatchNorm, with a ReLU after it when relu is set: fused into the BN unless a hook wants the
   BN's own output. relu_name names the ReLU's output ("" for none). */
static dtnh_status dtnh__bn(dtnh_resnet *net, const char *name, int in, int relu,
                            const char *relu_name, int stage, int *out, dtnh_error *err) {
    const dtnh__rvalue *x = &net->values[in];
    int c = x->c, fuse = relu && !dtnh__hooked(net, name), idx;
    dtnh__rnode *nd = NULL;
    dtnh_status s;
    size_t off;
    if ((s = dtnh__add_node(net, DTNH__NODE_BN, name, in, -1, stage, c, x->h, x->w, &nd, err)))
        return s;
    nd->relu = fuse;
    if (fuse) strncpy(nd->alias, relu_name, sizeof nd->alias - 1);
    if ((s = dtnh__add_param(net, name, "weight", 1, &c, DTNH_GROUP_BACKBONE | DTNH_GROUP_BN,
                             &nd->woff, &nd->wcount, &nd->wview, err)) ||
        (s = dtnh__add_param(net, name, "bias", 1, &c, DTNH_GROUP_BACKBONE | DTNH_GROUP_BN,
                             &nd->boff, &nd->bcount, NULL, err)) ||
        (s = dtnh__add_buffer(net, name, "running_mean", 0, c, &nd->buf_off, &nd->bufview, err)) ||
        (s = dtnh__add_buffer(net, name, "running_var", 0, c, &off, NULL, err)) ||
        (s = dtnh__add_buffer(net, name, "num_batches_tracked", 1, 1, &off, &idx, err)))
        return s;
    nd->count_index = (int)off;
    *out = nd->out;
    if (relu && !fuse) {
        if ((s = dtnh__add_node(net, DTNH__NODE_RELU, relu_name, *out, -1, stage, c, x->h, x->w,
                                &nd, err)))
            return s;
        *out = nd->out;
    }
    return DTNH_OK;
}

/* torchvision's BasicBlock: conv3x3-BN-ReLU-conv3x3-BN, plus the input (or its 1x1 conv + BN
   downsample when the shape changes), then ReLU. */
static dtnh_status dtnh__block(dtnh_resnet *net, int stage, int b, int in, int c_out, int stride,
                               int *out, dtnh_error *err) {
    char pre[32], name[64];
    int t, ident = in;
    dtnh__rnode *add = NULL;
    dtnh_status s;
    snprintf(pre, sizeof pre, "layer%d.%d", stage, b);
#define DTNH__NAME(suffix) (snprintf(name, sizeof name, "%s.%s", pre, suffix), name)
    if ((s = dtnh__conv(net, DTNH__NAME("conv1"), in, c_out, 3, stride, 1, stage, &t, err)) ||
        (s = dtnh__bn(net, DTNH__NAME("bn1"), t, 1, "", stage, &t, err)) ||
        (s = dtnh__conv(net, DTNH__NAME("conv2"), t, c_out, 3, 1, 1, stage, &t, err)) ||
        (s = dtnh__bn(net, DTNH__NAME("bn2"), t, 0, "", stage, &t, err)))
        return s;
    if (stride != 1 || net->values[in].c != c_out)
        if ((s = dtnh__conv(net, DTNH__NAME("downsample.0"), in, c_out, 1, stride, 0, stage, &ident,
                            err)) ||
            (s = dtnh__bn(net, DTNH__NAME("downsample.1"), ident, 0, "", stage, &ident, err)))
            return s;
#undef DTNH__NAME
    if ((s = dtnh__add_node(net, DTNH__NODE_ADD, pre, t, ident, stage, c_out, net->values[t].h,
                            net->values[t].w, &add, err)))
        return s;
    add->relu = 1;
    *out = add->out;
    return DTNH_OK;
}

static dtnh_status dtnh__resnet_build(dtnh_resnet *net, dtnh_error *err) {
    const dtnh_resnet_config *c = &net->cfg;
    int v, stage, b, imagenet = c->stem == DTNH_STEM_IMAGENET;
    int shape[2];
    dtnh__rnode *nd = NULL;
    dtnh_status s;
    dtnh__rvalue *x = &net->values[0];
    memset(x, 0, sizeof *x);
    x->c = c->in_channels;
    x->h = c->height;
    x->w = c->width_px;
    x->producer = x->last_consumer = x->hook = -1;
    net->value_count = 1;
    if ((s = dtnh__conv(net, "conv1", 0, c->width, imagenet ? 7 : 3, imagenet ? 2 : 1,
                        imagenet ? 3 : 1, 0, &v, err)) ||
        (s = dtnh__bn(net, "bn1", v, 1, "relu", 0, &v, err)))
        return s;
    if (imagenet) {
        const dtnh__rvalue *r = &net->values[v];
        if ((s = dtnh__add_node(net, DTNH__NODE_MAXPOOL, "maxpool", v, -1, 0, r->c,
                                dtnh__window_out(r->h, 3, 2, 1), dtnh__window_out(r->w, 3, 2, 1),
                                &nd, err)))
            return s;
        nd->k = 3;
        nd->stride = 2;
        nd->pad = 1;
        v = nd->out;
    }
    for (stage = 1; stage <= 4; stage++)
        for (b = 0; b < 2; b++)
            if ((s = dtnh__block(net, stage, b, v, c->width << (stage - 1),
                                 b == 0 && stage > 1 ? 2 : 1, &v, err)))
                return s;
    if ((s = dtnh__add_node(net, DTNH__NODE_AVGPOOL, "avgpool", v, -1, 4, net->values[v].c, 1, 1,
                            &nd, err)))
        return s;
    v = nd->out;
    if ((s = dtnh__add_node(net, DTNH__NODE_LINEAR, "fc", v, -1, 5, c->num_classes, 1, 1, &nd, err)))
        return s;
    nd->c_out = c->num_classes;
    net->logits_value = nd->out;
    shape[0] = c->num_classes;
    shape[1] = net->values[v].c;
    if ((s = dtnh__add_param(net, "fc", "weight", 2, shape, DTNH_GROUP_HEAD | DTNH_GROUP_KERNEL,
                             &nd->woff, &nd->wcount, &nd->wview, err)) ||
        (s = dtnh__add_param(net, "fc", "bias", 1, shape, DTNH_GROUP_HEAD | DTNH_GROUP_BIAS,
                             &nd->boff, &nd->bcount, NULL, err)))
        return s;
    return DTNH_OK;
}

/* Resolves every configured hook to the value it names. */
static dtnh_status dtnh__resnet_resolve_hooks(dtnh_resnet *net, dtnh_error *err) {
    char norm[DTNH_NAME_SIZE];
    int h, i;
    for (h = 0; h < net->cfg.hook_count; h++) {
        int found = -1;
        dtnh__hook_normalise(net->cfg.hooks[h], norm);
        for (i = 0; i < net->node_count && found < 0; i++)
            if (strcmp(net->nodes[i].name, norm) == 0 || strcmp(net->nodes[i].alias, norm) == 0)
                found = net->nodes[i].out;
        if (found < 0)
            return dtnh_fail(err, DTNH_ERR_ARG,
                             "resnet: hook '%s' names no layer (expected a torchvision module "
                             "name such as layer1..layer4, layer2.1, conv1, bn1, relu, "
                             "layer3.0.bn2, avgpool, fc)",
                             net->cfg.hooks[h]);
        strcpy(net->hook_name[h], net->cfg.hooks[h]);
        net->cfg.hooks[h] = net->hook_name[h];
        net->hook_value[h] = found;
        if (net->values[found].hook < 0) net->values[found].hook = h;
    }
    return DTNH_OK;
}

/* ============================================================================================
   ResNet-18: what trains, what is kept, and where every tensor of a step lives
   ============================================================================================ */

static int dtnh__trainable(const dtnh_resnet_config *c, int stage, unsigned groups) {
    switch (c->train) {
    case DTNH_TRAIN_ALL: return 1;
    case DTNH_TRAIN_LAST_STAGES: return stage >= 5 - c->train_stages;
    case DTNH_TRAIN_HEAD: return stage == 5;
    case DTNH_TRAIN_BN_BIAS: return stage == 5 || (groups & (DTNH_GROUP_BN | DTNH_GROUP_BIAS)) != 0;
    default: return 0;
    }
}

static void dtnh__resnet_mark_trainable(dtnh_resnet *net) {
    int i;
    for (i = 0; i < net->node_count; i++) {
        dtnh__rnode *nd = &net->nodes[i];
        unsigned wg = nd->kind == DTNH__NODE_BN ? DTNH_GROUP_BN : DTNH_GROUP_KERNEL;
        unsigned bg = nd->kind == DTNH__NODE_BN ? DTNH_GROUP_BN : DTNH_GROUP_BIAS;
        nd->train_w = nd->wcount > 0 && dtnh__trainable(&net->cfg, nd->stage, wg);
        nd->train_b = nd->bcount > 0 && dtnh__trainable(&net->cfg, nd->stage, bg);
        if (net->params.views && nd->wview >= 0) {
            net->params.views[nd->wview].trainable = nd->train_w;
            if (nd->bcount) net->params.views[nd->wview + 1].trainable = nd->train_b;
        }
    }
}

/* Marks v as read by the backward of node i; nodes come in forward order, so the first mark
   is the reader whose backward runs last. */
static void dtnh__keep(dtnh__rvalue *v, int i, int read) {
    if (!read) return;
    if (!v->kept) v->last_reader = i;
    v->kept = 1;
}

/* A value needs a gradient when a trainable parameter lies at or below it. BN statistics
   freeze (AUTO) below the first trainable layer. Then: which values backward reads. */
static void dtnh__resnet_mark_flow(dtnh_resnet *net) {
    int i, j;
    for (i = 0; i < net->value_count; i++) net->values[i].needs_grad = net->values[i].kept = 0;
    for (i = 0; i < net->node_count; i++) {
        dtnh__rnode *nd = &net->nodes[i];
        int ng = nd->train_w || nd->train_b;
        for (j = 0; j < 2; j++)
            if (nd->in[j] >= 0) ng |= net->values[nd->in[j]].needs_grad;
        net->values[nd->out].needs_grad = ng;
        if (nd->kind == DTNH__NODE_BN)
            nd->frozen_stats = net->cfg.bn_stats == DTNH_BN_STATS_FROZEN ||
                               (net->cfg.bn_stats == DTNH_BN_STATS_AUTO && !ng);
    }
    for (i = 0; i < net->node_count; i++) {
        dtnh__rnode *nd = &net->nodes[i];
        dtnh__rvalue *in = &net->values[nd->in[0]], *out = &net->values[nd->out];
        int in_grad = in->needs_grad || (nd->in[1] >= 0 && net->values[nd->in[1]].needs_grad);
        if (!out->needs_grad) continue;
        switch (nd->kind) {
        case DTNH__NODE_CONV:
        case DTNH__NODE_LINEAR: dtnh__keep(in, i, nd->train_w); break;
        case DTNH__NODE_BN:
            dtnh__keep(in, i, nd->train_w || (in->needs_grad && !nd->frozen_stats));
            dtnh__keep(out, i, nd->relu);
            break;
        case DTNH__NODE_RELU:
        case DTNH__NODE_ADD: dtnh__keep(out, i, in_grad); break;
        case DTNH__NODE_MAXPOOL: dtnh__keep(in, i, in->needs_grad); break;
        default: break;
        }
    }
}

typedef struct dtnh__interval {
    size_t size, off; /* per-sample floats */
    int start, end;   /* steps, inclusive */
} dtnh__interval;

#define DTNH__MAX_INTERVALS (3 * DTNH__RESNET_MAX_NODES + 4)

/* Places the intervals in one block, greedily, largest first: each at the lowest offset free
   of every placed interval that is alive at the same time. Returns the block size. */
static size_t dtnh__place(dtnh__interval *iv, int count) {
    int order[DTNH__MAX_INTERVALS], near[DTNH__MAX_INTERVALS], i, j, k;
    size_t total = 0;
    for (i = 0; i < count; i++) { /* insertion sort: size descending, then start, index */
        int x = i;
        for (j = i; j > 0; j--) {
            const dtnh__interval *a = &iv[order[j - 1]], *b = &iv[x];
            if (a->size > b->size || (a->size == b->size && a->start <= b->start)) break;
            order[j] = order[j - 1];
        }
        order[j] = x;
    }
    for (i = 0; i < count; i++) {
        dtnh__interval *cur = &iv[order[i]];
        size_t cand = 0;
        int n = 0;
        for (j = 0; j < i; j++) { /* placed neighbours in time, by offset */
            int p = order[j];
            if (iv[p].end < cur->start || iv[p].start > cur->end) continue;
            for (k = n++; k > 0 && iv[near[k - 1]].off > iv[p].off; k--) near[k] = near[k - 1];
            near[k] = p;
        }
        for (k = 0; k < n; k++) {
            const dtnh__interval *o = &iv[near[k]];
            if (cand + cur->size <= o->off) break;
            if (o->off + o->size > cand) cand = o->off + o->size;
        }
        cur->off = cand;
        if (cand + cur->size > total) total = cand + cur->size;
    }
    return total;
}

static int dtnh__new_interval(dtnh__interval *iv, int *count, size_t size, int start, int end) {
    iv[*count].size = dtnh__round16(size);
    iv[*count].off = 0;
    iv[*count].start = start;
    iv[*count].end = end;
    return (*count)++;
}

/* A value's data lives from its producer to its last reader: the end of the step when it is
   kept, hooked or the logits; else its last consumer. */
static int dtnh__data_end(const dtnh_resnet *net, int v, int end) {
    const dtnh__rvalue *x = &net->values[v];
    if (x->hook >= 0 || v == net->logits_value) return end;
    return x->consumers ? x->last_consumer : x->producer;
}

/* The inference plan: forward steps 0..F-1, only hooks and logits outlive their readers. */
/* 1 when v crosses hook h's cut: made at or below the hook's layer and read above it (the
   hook's own output, a block input on the identity path). A masked re-run from the hook
   needs exactly these. */
static int dtnh__crosses_hook(const dtnh_resnet *net, int v, int h) {
    int p = net->values[net->hook_value[h]].producer;
    const dtnh__rvalue *x = &net->values[v];
    return v == net->hook_value[h] || (x->producer <= p && x->consumers && x->last_consumer > p);
}

/* The inference plan: forward steps 0..F-1. Hooks, the logits and the values that cross a
   hook's cut outlive their readers (dtnh_resnet_rerun_masked starts from them). */
static void dtnh__plan_infer(dtnh_resnet *net) {
    dtnh__interval iv[DTNH__MAX_INTERVALS];
    int id[DTNH__RESNET_MAX_NODES + 1], count = 0, v, h, F = net->node_count;
    for (v = 1; v < net->value_count; v++) {
        int end = dtnh__data_end(net, v, F);
        for (h = 0; h < net->cfg.hook_count; h++)
            if (dtnh__crosses_hook(net, v, h)) end = F;
        id[v] = dtnh__new_interval(iv, &count, dtnh__value_floats(&net->values[v]),
                                   net->values[v].producer, end);
    }
    net->block_floats[DTNH__INFER] = dtnh__place(iv, count);
    for (v = 1; v < net->value_count; v++) net->values[v].offset[DTNH__INFER] = iv[id[v]].off;
}

/* Gradient groups of the training plan. A value's gradient lives from the backward of its last
   consumer to the backward of its producer. BN, ReLU and the add's first input take their
   input gradient in place of the output gradient when they are the input's only consumer. */
static void dtnh__plan_grads(dtnh_resnet *net, dtnh__interval *iv, int *count, int *gid) {
    int i, j, F = net->node_count;
    for (i = F - 1; i >= 0; i--) {
        dtnh__rnode *nd = &net->nodes[i];
        const dtnh__rvalue *o = &net->values[nd->out];
        int start = o->consumers ? 2 * F - 1 - o->last_consumer : 2 * F - 1 - i, end = 2 * F - 1 - i;
        nd->has_temp = 0;
        if (!o->needs_grad) continue;
        if (gid[nd->out] < 0) {
            gid[nd->out] = dtnh__new_interval(iv, count, dtnh__value_floats(o), start, end);
        } else {
            dtnh__interval *g = &iv[gid[nd->out]];
            if (start < g->start) g->start = start;
            if (end > g->end) g->end = end;
        }
        for (j = 0; j < 2; j++) {
            int u = nd->in[j];
            int inplace = nd->kind == DTNH__NODE_BN || nd->kind == DTNH__NODE_RELU ||
                          (nd->kind == DTNH__NODE_ADD && j == 0);
            if (u < 1 || !net->values[u].needs_grad) continue;
            if (inplace && net->values[u].consumers == 1) gid[u] = gid[nd->out];
        }
        /* temp_offset holds the interval's index until dtnh__plan_train turns it into an offset */
        if (nd->kind == DTNH__NODE_CONV && nd->in[0] >= 1 && net->values[nd->in[0]].needs_grad &&
            net->values[nd->in[0]].consumers > 1) {
            nd->has_temp = 1;
            nd->temp_offset = (size_t)dtnh__new_interval(
                iv, count, dtnh__value_floats(&net->values[nd->in[0]]), 2 * F - 1 - i, 2 * F - 1 - i);
        }
    }
}

/* The training plan: forward steps 0..F-1, backward steps F..2F-1 (node i at 2F-1-i). Kept
   values live to the end, as backward may run more than once; with single_backward, only until
   their last reader's backward, and gradients take their place. */
static void dtnh__plan_train(dtnh_resnet *net) {
    dtnh__interval iv[DTNH__MAX_INTERVALS];
    int id[DTNH__RESNET_MAX_NODES + 1], gid[DTNH__RESNET_MAX_NODES + 1];
    int count = 0, v, i, F = net->node_count;
    net->kept_floats = 0;
    for (v = 1; v < net->value_count; v++) {
        const dtnh__rvalue *x = &net->values[v];
        int end = dtnh__data_end(net, v, 2 * F);
        if (x->kept) end = net->cfg.single_backward && x->hook < 0 ? 2 * F - 1 - x->last_reader : 2 * F;
        id[v] = dtnh__new_interval(iv, &count, dtnh__value_floats(x), x->producer, end);
        gid[v] = -1;
        if (x->kept) net->kept_floats += dtnh__round16(dtnh__value_floats(x));
    }
    dtnh__plan_grads(net, iv, &count, gid);
    net->block_floats[DTNH__TRAIN] = dtnh__place(iv, count);
    for (v = 1; v < net->value_count; v++) {
        net->values[v].offset[DTNH__TRAIN] = iv[id[v]].off;
        net->values[v].grad_offset = gid[v] >= 0 ? iv[gid[v]].off : 0;
    }
    for (i = 0; i < F; i++)
        if (net->nodes[i].has_temp) net->nodes[i].temp_offset = iv[net->nodes[i].temp_offset].off;
}

static void dtnh__resnet_analyse(dtnh_resnet *net) {
    int i, stats = 0;
    dtnh__resnet_mark_trainable(net);
    dtnh__resnet_mark_flow(net);
    for (i = 0; i < net->node_count; i++)
        if (net->nodes[i].kind == DTNH__NODE_BN) {
            net->nodes[i].stats_off = stats;
            stats += 3 * net->values[net->nodes[i].out].c;
        }
    net->stats_floats = stats;
    dtnh__plan_train(net);
    dtnh__plan_infer(net);
    net->train_n = 0;
}

/* ============================================================================================
   ResNet-18: init, weights, plan
   ============================================================================================ */

DTNHDEF void dtnh_resnet_init_head(dtnh_resnet *net, uint64_t seed) {
    dtnh_rng rng;
    int i;
    if (!net || !net->params.w) return;
    dtnh_rng_seed(&rng, seed);
    for (i = 0; i < net->node_count; i++) {
        const dtnh__rnode *nd = &net->nodes[i];
        /* nn.Linear: kaiming_uniform(a=sqrt(5)) gives U(+-1/sqrt(fan_in)), the bias the same. */
        float bound = (float)(1.0 / sqrt((double)dtnh__value_floats(&net->values[nd->in[0]])));
        if (nd->kind != DTNH__NODE_LINEAR) continue;
        dtnh_init_uniform(net->params.w + nd->woff, nd->wcount, bound, &rng);
        dtnh_init_uniform(net->params.w + nd->boff, nd->bcount, bound, &rng);
    }
}

DTNHDEF void dtnh_resnet_init_weights(dtnh_resnet *net, uint64_t seed) {
    dtnh_rng rng;
    int i;
    if (!net) return;
    dtnh_rng_seed(&rng, seed);
    for (i = 0; i < net->node_count; i++) {
        const dtnh__rnode *nd = &net->nodes[i];
        int c = net->values[nd->out].c;
        float *w = net->params.w;
        if (w && nd->kind == DTNH__NODE_CONV)
            dtnh_init_kaiming_normal(w + nd->woff, nd->wcount, (size_t)nd->c_out * nd->k * nd->k, &rng);
        if (nd->kind != DTNH__NODE_BN) continue;
        if (w) {
            dtnh_fill(nd->wcount, w + nd->woff, 1.0f);
            dtnh_fill(nd->bcount, w + nd->boff, 0.0f);
        }
        if (net->buffers.values) {
            dtnh_fill((size_t)c, net->buffers.values + nd->buf_off, 0.0f);
            dtnh_fill((size_t)c, net->buffers.values + nd->buf_off + c, 1.0f);
            net->buffers.counts[nd->count_index] = 0;
        }
    }
    dtnh_resnet_init_head(net, dtnh_rng_u32(&rng) | (uint64_t)dtnh_rng_u32(&rng) << 32);
}

DTNHDEF dtnh_status dtnh_resnet_init(dtnh_resnet *net, const dtnh_resnet_config *cfg,
                                     dtnh_arena *persistent, dtnh_error *err) {
    dtnh_arena *a = persistent;
    dtnh_status s;
    size_t mark;
    unsigned roles;
    if (!net || !persistent) return dtnh_fail(err, DTNH_ERR_ARG, "resnet_init: NULL net or arena");
    memset(net, 0, sizeof *net);
    net->cfg = dtnh_resnet_config_def(cfg);
    if ((s = dtnh__resnet_check_config(&net->cfg, err))) return s;
    mark = dtnh_arena_used(a);
    if ((s = dtnh_params_init(&net->params, a, DTNH__RESNET_VIEWS, err)) ||
        (s = dtnh__buffers_init(&net->buffers, a, DTNH__RESNET_BUFFERS, err)))
        return s;
    net->mem_structure = dtnh_arena_used(a) - mark;
    if ((s = dtnh__resnet_build(net, err)) || (s = dtnh__resnet_resolve_hooks(net, err))) return s;
    roles = net->cfg.roles;
    mark = dtnh_arena_used(a);
    if ((s = dtnh_params_alloc(&net->params, a, roles & DTNH_ROLE_W, err))) return s;
    net->mem_weights = dtnh_arena_used(a) - mark;
    mark = dtnh_arena_used(a);
    if ((s = dtnh_params_alloc(&net->params, a, roles & DTNH_ROLE_W_SRC, err))) return s;
    net->mem_source = dtnh_arena_used(a) - mark;
    mark = dtnh_arena_used(a);
    if ((s = dtnh_params_alloc(&net->params, a, roles & (DTNH_ROLE_G_J | DTNH_ROLE_G_OMEGA), err)))
        return s;
    net->mem_gradients = dtnh_arena_used(a) - mark;
    mark = dtnh_arena_used(a);
    if ((s = dtnh__buffers_alloc(&net->buffers, a, err))) return s;
    net->mem_buffers = dtnh_arena_used(a) - mark;
    dtnh__resnet_analyse(net);
    dtnh_resnet_init_weights(net, net->cfg.seed);
    net->weights = net->params.w;
    return DTNH_OK;
}

DTNHDEF dtnh_status dtnh_resnet_set_train(dtnh_resnet *net, dtnh_train train, int stages,
                                          dtnh_error *err) {
    dtnh_resnet_config c;
    dtnh_status s;
    if (!net) return dtnh_fail(err, DTNH_ERR_ARG, "resnet_set_train: NULL net");
    c = net->cfg;
    c.train = train == DTNH_TRAIN_DEFAULT ? DTNH_TRAIN_ALL : train;
    c.train_stages = stages ? stages : 1;
    if ((s = dtnh__resnet_check_config(&c, err))) return s;
    net->cfg.train = c.train;
    net->cfg.train_stages = c.train_stages;
    dtnh__resnet_analyse(net);
    return DTNH_OK;
}

DTNHDEF dtnh_status dtnh_resnet_use_weights(dtnh_resnet *net, const float *w, dtnh_error *err) {
    if (!net || !w) return dtnh_fail(err, DTNH_ERR_ARG, "resnet_use_weights: NULL net or weights");
    net->weights = w;
    net->train_n = 0;
    return DTNH_OK;
}

DTNHDEF dtnh_status dtnh_resnet_copy_buffers(dtnh_resnet *dst, const dtnh_resnet *src,
                                             dtnh_error *err) {
    if (!dst || !src || !dst->buffers.values || !src->buffers.values)
        return dtnh_fail(err, DTNH_ERR_ARG, "resnet_copy_buffers: NULL or counting-built network");
    if (dst->buffers.total != src->buffers.total ||
        dst->buffers.count_total != src->buffers.count_total)
        return dtnh_fail(err, DTNH_ERR_SHAPE,
                         "resnet_copy_buffers: %zu running values in the destination, %zu in the "
                         "source: different widths",
                         dst->buffers.total, src->buffers.total);
    dtnh_copy(src->buffers.total, src->buffers.values, dst->buffers.values);
    memcpy(dst->buffers.counts, src->buffers.counts, src->buffers.count_total * sizeof(int64_t));
    return DTNH_OK;
}

static size_t dtnh__trainable_count(const dtnh_resnet *net) {
    size_t n = 0;
    int i;
    for (i = 0; i < net->node_count; i++)
        n += (net->nodes[i].train_w ? net->nodes[i].wcount : 0) +
             (net->nodes[i].train_b ? net->nodes[i].bcount : 0);
    return n;
}

/* The optimizer's state through dtnh_optim_init itself, on the counting arena: a counting
   build has no views, so it gets a shadow store whose views say what trains. */
static dtnh_status dtnh__plan_optimizer(const dtnh_resnet *net, int vectors, dtnh_arena *a,
                                        dtnh_error *err) {
    dtnh_param_view views[DTNH__RESNET_VIEWS];
    dtnh_params shadow = net->params;
    dtnh_optim_config oc;
    dtnh_optim o;
    int i;
    memset(views, 0, sizeof views);
    memset(&oc, 0, sizeof oc);
    for (i = 0; i < net->node_count; i++) {
        const dtnh__rnode *nd = &net->nodes[i];
        if (nd->wview < 0) continue;
        views[nd->wview].count = nd->wcount;
        views[nd->wview].offset = nd->woff;
        views[nd->wview].trainable = nd->train_w;
        if (!nd->bcount) continue;
        views[nd->wview + 1].count = nd->bcount;
        views[nd->wview + 1].offset = nd->boff;
        views[nd->wview + 1].trainable = nd->train_b;
    }
    shadow.views = views;
    oc.kind = vectors == 2 ? DTNH_OPTIM_ADAM : DTNH_OPTIM_SGD;
    oc.momentum = vectors == 1 ? 0.9 : 0.0;
    return dtnh_optim_init(&o, &oc, &shadow, a, err);
}

DTNHDEF dtnh_status dtnh_resnet_plan_memory(const dtnh_resnet_config *cfg, int optim_vectors,
                                            dtnh_resnet_plan *plan, dtnh_error *err) {
    dtnh_resnet net;
    dtnh_arena pa, sa;
    dtnh_tensor x, logits;
    dtnh_status s;
    size_t mark;
    int shape[4];
    if (!plan || optim_vectors < DTNH_PLAN_NO_OPTIMIZER || optim_vectors > 2)
        return dtnh_fail(err, DTNH_ERR_ARG,
                         "resnet_plan_memory: NULL plan or optim_vectors %d, expected -1..2",
                         optim_vectors);
    memset(plan, 0, sizeof *plan);
    dtnh_arena_init(&pa, NULL, 0);
    if ((s = dtnh_resnet_init(&net, cfg, &pa, err))) return s;
    plan->structure = net.mem_structure;
    plan->weights = net.mem_weights;
    plan->gradients = net.mem_gradients;
    plan->source_copy = net.mem_source;
    plan->buffers = net.mem_buffers;
    plan->params = net.params.total;
    plan->trainable_params = dtnh__trainable_count(&net);
    mark = dtnh_arena_used(&pa);
    if (optim_vectors >= 0 && (s = dtnh__plan_optimizer(&net, optim_vectors, &pa, err))) return s;
    plan->optimizer_state = dtnh_arena_used(&pa) - mark;
    plan->persistent = dtnh_arena_used(&pa);
    shape[0] = net.cfg.max_batch;
    shape[1] = net.cfg.in_channels;
    shape[2] = net.cfg.height;
    shape[3] = net.cfg.width_px;
    if ((s = dtnh_tensor_shape(&x, 4, shape, err))) return s;
    if (net.cfg.train != DTNH_TRAIN_NONE) {
        dtnh_arena_init(&sa, NULL, 0);
        if ((s = dtnh_resnet_forward(&net, &x, &sa, &logits, err)) ||
            (s = dtnh_resnet_backward(&net, NULL, NULL, NULL, 0, err)))
            return s;
        plan->step_train = dtnh_arena_peak(&sa);
        plan->activations = net.kept_floats * (size_t)net.cfg.max_batch * sizeof(float);
        plan->scratch = plan->step_train - plan->activations;
    }
    dtnh_arena_init(&sa, NULL, 0);
    if ((s = dtnh_resnet_infer(&net, &x, &sa, &logits, err))) return s;
    plan->step_infer = dtnh_arena_peak(&sa);
    return DTNH_OK;
}

/* FLOPs of node i's forward for one sample (0 for the layers that are not GEMMs). */
static double dtnh__node_flops(const dtnh_resnet *net, const dtnh__rnode *nd) {
    const dtnh__rvalue *x = &net->values[nd->in[0]], *y = &net->values[nd->out];
    if (nd->kind == DTNH__NODE_CONV) return 2.0 * x->c * nd->k * nd->k * (double)dtnh__value_floats(y);
    if (nd->kind == DTNH__NODE_LINEAR) return 2.0 * (double)dtnh__value_floats(x) * (double)y->c;
    return 0;
}

DTNHDEF double dtnh_resnet_forward_flops(const dtnh_resnet *net, int n) {
    double f = 0;
    int i;
    for (i = 0; net && i < net->node_count; i++) f += dtnh__node_flops(net, &net->nodes[i]);
    return f * n;
}

DTNHDEF double dtnh_resnet_step_flops(const dtnh_resnet *net, int n) {
    double f = 0;
    int i;
    for (i = 0; net && i < net->node_count; i++) {
        const dtnh__rnode *nd = &net->nodes[i];
        double one = dtnh__node_flops(net, nd);
        f += one;
        if (!net->values[nd->out].needs_grad) continue;
        if (nd->train_w) f += one;
        if (nd->in[0] >= 1 && net->values[nd->in[0]].needs_grad) f += one;
    }
    return f * n;
}

/* ============================================================================================
   ResNet-18: forward and backward
   One step's tensors live in one block of the step arena, at the offsets the plan gave them
   (per sample, times the batch).
   ============================================================================================ */

typedef struct dtnh__run {
    dtnh_resnet *net;
    int mode, n;
    float *block, *stats;
    const float *input;
    float *pgrad;
    int ginit[DTNH__RESNET_MAX_NODES + 1]; /* backward: the value's gradient holds something */
} dtnh__run;

static const float *dtnh__vin(const dtnh__run *r, int v) {
    return v == 0 ? r->input : r->block + r->net->values[v].offset[r->mode] * (size_t)r->n;
}
static float *dtnh__vout(const dtnh__run *r, int v) {
    return r->block + r->net->values[v].offset[r->mode] * (size_t)r->n;
}
static float *dtnh__vgrad(const dtnh__run *r, int v) {
    return r->block + r->net->values[v].grad_offset * (size_t)r->n;
}
static size_t dtnh__vcount(const dtnh__run *r, int v) {
    return dtnh__value_floats(&r->net->values[v]) * (size_t)r->n;
}

static void dtnh__node_geom(const dtnh_resnet *net, const dtnh__rnode *nd, int n, dtnh_conv_geom *g) {
    const dtnh__rvalue *x = &net->values[nd->in[0]], *y = &net->values[nd->out];
    g->n = n;
    g->c_in = x->c;
    g->h = x->h;
    g->w = x->w;
    g->c_out = nd->c_out;
    g->kh = g->kw = nd->k;
    g->stride = nd->stride;
    g->pad = nd->pad;
    g->oh = y->h;
    g->ow = y->w;
}

/* The linear layer goes through the packed GEMM when it is big enough to pay for the
   packing buffers (ImageNet's 1000 classes); a small head runs dtnh_sgemm's plain loops, so
   a small network's step arena holds no GEMM-sized workspace. */
#define DTNH__LINEAR_PACKED_MACS (1u << 20)

static int dtnh__linear_packed(const dtnh_resnet *net, int n) {
    const dtnh__rnode *fc = &net->nodes[net->node_count - 1];
    return (double)n * (double)fc->c_out * (double)dtnh__value_floats(&net->values[fc->in[0]]) >=
           (double)DTNH__LINEAR_PACKED_MACS;
}

static const dtnh_work *dtnh__linear_work(const dtnh_resnet *net) {
    return net->work.bytes >= dtnh_gemm_work_bytes(net->work.threads) ? &net->work : NULL;
}

static size_t dtnh__work_bytes(const dtnh_resnet *net, int n) {
    size_t most = dtnh__linear_packed(net, n) ? dtnh_gemm_work_bytes(net->cfg.threads) : 0;
    int i;
    for (i = 0; i < net->node_count; i++)
        if (net->nodes[i].kind == DTNH__NODE_CONV) {
            dtnh_conv_geom g;
            size_t b;
            dtnh__node_geom(net, &net->nodes[i], n, &g);
            b = dtnh_conv_work_bytes(&g, net->cfg.threads);
            if (b > most) most = b;
        }
    return most;
}

/* BN's mean and invstd for this forward: batch statistics (and the running update) in a
   training forward, else the running statistics. */
static void dtnh__bn_stats(const dtnh__run *r, const dtnh__rnode *nd, const float *x,
                           const float **mean, const float **invstd) {
    dtnh_resnet *net = r->net;
    const dtnh__rvalue *v = &net->values[nd->out];
    float *st = r->stats + nd->stats_off, *rm = net->buffers.values + nd->buf_off;
    int c = v->c;
    if (r->mode == DTNH__TRAIN && !nd->frozen_stats) {
        dtnh_batchnorm_stats(r->n, c, v->h * v->w, x, DTNH_BN_EPS, st, st + c, st + 2 * c);
        dtnh_batchnorm_update_running(c, st, st + 2 * c, DTNH_BN_MOMENTUM, rm, rm + c,
                                      net->buffers.counts + nd->count_index);
        *mean = st;
    } else {
        dtnh_batchnorm_eval_invstd(c, rm + c, DTNH_BN_EPS, st + c);
        *mean = rm;
    }
    *invstd = st + c;
}

static void dtnh__add_relu(size_t count, const float *a, const float *b, float *y) {
    long i, n = (long)count;
    DTNH__OMP(parallel for schedule(static) if (count > DTNH__PAR_MIN))
    for (i = 0; i < n; i++) {
        float v = a[i] + b[i];
        y[i] = v <= 0.0f ? 0.0f : v; /* NaN passes */
    }
}

static void dtnh__node_forward(dtnh__run *r, const dtnh__rnode *nd) {
    const dtnh_resnet *net = r->net;
    const float *W = net->weights, *x = dtnh__vin(r, nd->in[0]), *mean, *invstd;
    const dtnh__rvalue *xv = &net->values[nd->in[0]];
    float *y = dtnh__vout(r, nd->out);
    dtnh_conv_geom g;
    switch (nd->kind) {
    case DTNH__NODE_CONV:
        dtnh__node_geom(net, nd, r->n, &g);
        dtnh_conv2d_forward(&g, x, W + nd->woff, NULL, y, &net->work);
        break;
    case DTNH__NODE_BN:
        dtnh__bn_stats(r, nd, x, &mean, &invstd);
        dtnh_batchnorm_apply(r->n, xv->c, xv->h * xv->w, x, mean, invstd, W + nd->woff,
                             W + nd->boff, nd->relu, y);
        break;
    case DTNH__NODE_RELU: dtnh_relu_forward(dtnh__vcount(r, nd->out), x, y); break;
    case DTNH__NODE_MAXPOOL:
        dtnh_maxpool_forward(r->n, xv->c, xv->h, xv->w, nd->k, nd->stride, nd->pad, x, y);
        break;
    case DTNH__NODE_AVGPOOL: dtnh_avgpool_forward(r->n, xv->c, xv->h * xv->w, x, y); break;
    case DTNH__NODE_LINEAR:
        dtnh_linear_forward(r->n, (int)dtnh__value_floats(xv), nd->c_out, x, W + nd->woff,
                            W + nd->boff, y, dtnh__linear_work(net));
        break;
    case DTNH__NODE_ADD:
        dtnh__add_relu(dtnh__vcount(r, nd->out), x, dtnh__vin(r, nd->in[1]), y);
        break;
    default: DTNH_ASSERT(0);
    }
}

static dtnh_status dtnh__check_input(const dtnh_resnet *net, const dtnh_tensor *x, int counting,
                                     dtnh_error *err) {
    const dtnh_resnet_config *c = &net->cfg;
    if (!x) return dtnh_fail(err, DTNH_ERR_ARG, "resnet forward: NULL input");
    if (x->ndim != 4 || x->shape[1] != c->in_channels || x->shape[2] != c->height ||
        x->shape[3] != c->width_px)
        return dtnh_fail(err, DTNH_ERR_SHAPE,
                         "resnet forward: input of %d dims [%d,%d,%d,%d], expected [n,%d,%d,%d]",
                         x->ndim, x->shape[0], x->shape[1], x->shape[2], x->shape[3],
                         c->in_channels, c->height, c->width_px);
    if (x->shape[0] < 1 || x->shape[0] > c->max_batch)
        return dtnh_fail(err, DTNH_ERR_SHAPE, "resnet forward: batch %d, expected 1..%d (max_batch)",
                         x->shape[0], c->max_batch);
    if (!counting && (!x->data || !net->weights || !net->buffers.values))
        return dtnh_fail(err, DTNH_ERR_ARG,
                         "resnet forward: no input data, no weights (external weights not set?) or "
                         "a network built on a counting arena");
    return DTNH_OK;
}

/* Training mode normalises with batch statistics, which need two or more values per channel. */
static dtnh_status dtnh__check_batch_stats(const dtnh_resnet *net, int n, dtnh_error *err) {
    int i;
    for (i = 0; i < net->node_count; i++) {
        const dtnh__rnode *nd = &net->nodes[i];
        const dtnh__rvalue *v = &net->values[nd->out];
        if (nd->kind == DTNH__NODE_BN && !nd->frozen_stats && (size_t)n * v->h * v->w < 2)
            return dtnh_fail(err, DTNH_ERR_SHAPE,
                             "resnet forward: %s sees %d value per channel (batch %d, %dx%d): "
                             "batch statistics need more than 1",
                             nd->name, n * v->h * v->w, n, v->h, v->w);
    }
    return DTNH_OK;
}

/* Takes the step's memory: statistics, kernel work, the block. */
static dtnh_status dtnh__step_alloc(dtnh_resnet *net, dtnh__run *r, dtnh_arena *step,
                                    dtnh_error *err) {
    size_t floats = 0;
    dtnh_status s;
    if ((s = dtnh_arena_alloc_floats(step, (size_t)net->stats_floats, &r->stats, err)) ||
        (s = dtnh_work_alloc(&net->work, step, dtnh__work_bytes(net, r->n), net->cfg.threads, err)) ||
        (s = dtnh_size_mul(net->block_floats[r->mode], (size_t)r->n, &floats, err)) ||
        (s = dtnh_arena_alloc_floats(step, floats, &r->block, err)))
        return s;
    return DTNH_OK;
}

static dtnh_status dtnh__forward(dtnh_resnet *net, const dtnh_tensor *x, int mode, int mask_hook,
                                 int mask_channel, dtnh_arena *step, dtnh_tensor *logits,
                                 dtnh_error *err) {
    static dtnh__run zero_run;
    dtnh__run r = zero_run;
    int counting, i, h, shape[2];
    dtnh_status s;
    if (!net || !step || !logits)
        return dtnh_fail(err, DTNH_ERR_ARG, "resnet forward: NULL network, arena or logits");
    if (mode == DTNH__TRAIN && net->cfg.train == DTNH_TRAIN_NONE)
        return dtnh_fail(err, DTNH_ERR_ARG,
                         "resnet forward: a training forward on an inference-only network");
    counting = dtnh_arena_is_counting(step);
    if ((s = dtnh__check_input(net, x, counting, err))) return s;
    r.net = net;
    r.mode = mode;
    r.n = x->shape[0];
    r.input = x->data;
    /* A property of the batch, not of the memory: a size query (counting) does not ask it. */
    if (mode == DTNH__TRAIN && !counting && (s = dtnh__check_batch_stats(net, r.n, err))) return s;
    if (mode == DTNH__TRAIN) net->train_n = 0; /* until this forward has succeeded */
    else net->infer_n = 0;
    if ((s = dtnh__step_alloc(net, &r, step, err))) return s;
    for (h = 0; h < net->cfg.hook_count; h++)
        net->hook_data[h] = r.block ? dtnh__vout(&r, net->hook_value[h]) : NULL;
    net->hook_n = r.n;
    shape[0] = r.n;
    shape[1] = net->cfg.num_classes;
    if ((s = dtnh_tensor_view(logits, r.block ? dtnh__vout(&r, net->logits_value) : NULL, 2, shape,
                              err)))
        return s;
    for (i = 0; !counting && i < net->node_count; i++) {
        const dtnh__rnode *nd = &net->nodes[i];
        dtnh__node_forward(&r, nd);
        if (mask_hook >= 0 && nd->out == net->hook_value[mask_hook]) {
            const dtnh__rvalue *v = &net->values[nd->out];
            size_t plane = (size_t)v->h * v->w;
            int b;
            for (b = 0; b < r.n; b++)
                dtnh_fill(plane, dtnh__vout(&r, nd->out) + ((size_t)b * v->c + mask_channel) * plane, 0.0f);
        }
    }
    if (mode == DTNH__TRAIN) {
        net->train_spent = 0;
        net->train_n = r.n;
        net->train_block = r.block;
        net->train_stats = r.stats;
        net->train_input = r.input;
    } else {
        net->infer_n = r.n;
        net->infer_block = r.block;
        net->infer_stats = r.stats;
    }
    return DTNH_OK;
}

DTNHDEF dtnh_status dtnh_resnet_forward(dtnh_resnet *net, const dtnh_tensor *x,
                                        dtnh_arena *step, dtnh_tensor *logits, dtnh_error *err) {
    return dtnh__forward(net, x, DTNH__TRAIN, -1, 0, step, logits, err);
}

DTNHDEF dtnh_status dtnh_resnet_infer(dtnh_resnet *net, const dtnh_tensor *x, dtnh_arena *step,
                                      dtnh_tensor *logits, dtnh_error *err) {
    return dtnh__forward(net, x, DTNH__INFER, -1, 0, step, logits, err);
}

DTNHDEF dtnh_status dtnh_resnet_infer_masked(dtnh_resnet *net, const dtnh_tensor *x, int hook,
                                             int channel, dtnh_arena *step, dtnh_tensor *logits,
                                             dtnh_error *err) {
    if (!net) return dtnh_fail(err, DTNH_ERR_ARG, "resnet_infer_masked: NULL network");
    if (hook < 0 || hook >= net->cfg.hook_count)
        return dtnh_fail(err, DTNH_ERR_ARG, "resnet_infer_masked: hook %d, expected 0..%d", hook,
                         net->cfg.hook_count - 1);
    if (channel < 0 || channel >= net->values[net->hook_value[hook]].c)
        return dtnh_fail(err, DTNH_ERR_ARG, "resnet_infer_masked: channel %d of hook '%s', expected 0..%d",
                         channel, net->hook_name[hook], net->values[net->hook_value[hook]].c - 1);
    return dtnh__forward(net, x, DTNH__INFER, hook, channel, step, logits, err);
}

DTNHDEF dtnh_status dtnh_resnet_rerun_masked(dtnh_resnet *net, int hook, int channel,
                                             dtnh_arena *step, dtnh_tensor *logits,
                                             dtnh_error *err) {
    static dtnh__run zero_run;
    dtnh__run r = zero_run;
    const dtnh__rvalue *v;
    float *saved = NULL, *data;
    size_t plane, mark, b;
    int i, shape[2];
    dtnh_status s;
    if (!net || !step || !logits)
        return dtnh_fail(err, DTNH_ERR_ARG, "resnet_rerun_masked: NULL network, arena or logits");
    if (hook < 0 || hook >= net->cfg.hook_count)
        return dtnh_fail(err, DTNH_ERR_ARG, "resnet_rerun_masked: hook %d, expected 0..%d", hook,
                         net->cfg.hook_count - 1);
    v = &net->values[net->hook_value[hook]];
    if (channel < 0 || channel >= v->c)
        return dtnh_fail(err, DTNH_ERR_ARG, "resnet_rerun_masked: channel %d of hook '%s', expected 0..%d",
                         channel, net->hook_name[hook], v->c - 1);
    if (net->infer_n < 1)
        return dtnh_fail(err, DTNH_ERR_ARG, "resnet_rerun_masked: no inference forward to start from");
    r.net = net;
    r.mode = DTNH__INFER;
    r.n = net->infer_n;
    r.block = net->infer_block;
    r.stats = net->infer_stats;
    plane = (size_t)v->h * (size_t)v->w;
    mark = dtnh_arena_mark(step);
    if ((s = dtnh_arena_alloc_floats(step, (size_t)r.n * plane, &saved, err))) return s;
    shape[0] = r.n;
    shape[1] = net->cfg.num_classes;
    if ((s = dtnh_tensor_view(logits, r.block ? dtnh__vout(&r, net->logits_value) : NULL, 2, shape, err)) ||
        !r.block) {
        dtnh_arena_reset(step, mark);
        return s;
    }
    data = dtnh__vout(&r, net->hook_value[hook]);
    for (b = 0; b < (size_t)r.n; b++) { /* keep the channel, zero it, run the layers above */
        float *ch = data + (b * (size_t)v->c + (size_t)channel) * plane;
        dtnh_copy(plane, ch, saved + b * plane);
        dtnh_fill(plane, ch, 0.0f);
    }
    for (i = v->producer + 1; i < net->node_count; i++) dtnh__node_forward(&r, &net->nodes[i]);
    for (b = 0; b < (size_t)r.n; b++)
        dtnh_copy(plane, saved + b * plane, data + (b * (size_t)v->c + (size_t)channel) * plane);
    dtnh_arena_reset(step, mark);
    return DTNH_OK;
}

/* Adds g into value v's gradient, or copies it there when the gradient holds nothing yet. */
static void dtnh__grad_add(dtnh__run *r, int v, const float *g) {
    if (r->ginit[v]) dtnh_axpy(dtnh__vcount(r, v), 1.0f, g, dtnh__vgrad(r, v));
    else dtnh_copy(dtnh__vcount(r, v), g, dtnh__vgrad(r, v));
    r->ginit[v] = 1;
}

static void dtnh__conv_backward(dtnh__run *r, const dtnh__rnode *nd, const float *dy) {
    const dtnh_resnet *net = r->net;
    int u = nd->in[0];
    dtnh_conv_geom g;
    dtnh__node_geom(net, nd, r->n, &g);
    if (nd->train_w)
        dtnh_conv2d_backward_weights(&g, dtnh__vin(r, u), dy, r->pgrad + nd->woff, NULL, 1, &net->work);
    if (u < 1 || !net->values[u].needs_grad) return;
    if (!r->ginit[u]) {
        dtnh_conv2d_backward_data(&g, dy, net->weights + nd->woff, dtnh__vgrad(r, u), &net->work);
        r->ginit[u] = 1;
    } else { /* the kernel overwrites: go through the temporary */
        float *t = r->block + nd->temp_offset * (size_t)r->n;
        DTNH_ASSERT(nd->has_temp);
        dtnh_conv2d_backward_data(&g, dy, net->weights + nd->woff, t, &net->work);
        dtnh_axpy(dtnh__vcount(r, u), 1.0f, t, dtnh__vgrad(r, u));
    }
}

static void dtnh__bn_backward(dtnh__run *r, const dtnh__rnode *nd, const float *dy) {
    const dtnh_resnet *net = r->net;
    const dtnh__rvalue *xv = &net->values[nd->in[0]];
    const float *rm = net->buffers.values + nd->buf_off, *st = r->stats + nd->stats_off;
    int u = nd->in[0], dx = xv->needs_grad;
    DTNH_ASSERT(!dx || !r->ginit[u] || xv->grad_offset == net->values[nd->out].grad_offset);
    dtnh_batchnorm_backward(r->n, xv->c, xv->h * xv->w, xv->kept ? dtnh__vin(r, u) : NULL,
                            nd->relu ? dtnh__vout(r, nd->out) : NULL, dy,
                            nd->frozen_stats ? rm : st, st + xv->c, net->weights + nd->woff,
                            !nd->frozen_stats, dx ? dtnh__vgrad(r, u) : NULL,
                            nd->train_w ? r->pgrad + nd->woff : NULL,
                            nd->train_b ? r->pgrad + nd->boff : NULL, 1);
    if (dx) r->ginit[u] = 1;
}

/* The add's output gradient, masked by its ReLU in place, goes to both inputs; the first input
   shares its buffer when the plan made it so (same offset). */
static void dtnh__add_backward(dtnh__run *r, const dtnh__rnode *nd, float *dy) {
    const dtnh_resnet *net = r->net;
    int j;
    dtnh_relu_backward(dtnh__vcount(r, nd->out), dtnh__vout(r, nd->out), dy, dy);
    for (j = 0; j < 2; j++) {
        int u = nd->in[j];
        if (u < 1 || !net->values[u].needs_grad) continue;
        if (net->values[u].grad_offset == net->values[nd->out].grad_offset) r->ginit[u] = 1;
        else dtnh__grad_add(r, u, dy);
    }
}

static void dtnh__node_backward(dtnh__run *r, const dtnh__rnode *nd) {
    const dtnh_resnet *net = r->net;
    const dtnh__rvalue *xv = &net->values[nd->in[0]];
    int u = nd->in[0], dx = u >= 1 && xv->needs_grad;
    float *dy = dtnh__vgrad(r, nd->out);
    switch (nd->kind) {
    case DTNH__NODE_CONV: dtnh__conv_backward(r, nd, dy); break;
    case DTNH__NODE_BN: dtnh__bn_backward(r, nd, dy); break;
    case DTNH__NODE_ADD: dtnh__add_backward(r, nd, dy); break;
    case DTNH__NODE_RELU:
        if (dx) dtnh_relu_backward(dtnh__vcount(r, u), dtnh__vout(r, nd->out), dy, dtnh__vgrad(r, u));
        break;
    case DTNH__NODE_MAXPOOL:
        if (dx)
            dtnh_maxpool_backward(r->n, xv->c, xv->h, xv->w, nd->k, nd->stride, nd->pad,
                                  dtnh__vin(r, u), dy, dtnh__vgrad(r, u));
        break;
    case DTNH__NODE_AVGPOOL:
        if (dx) dtnh_avgpool_backward(r->n, xv->c, xv->h * xv->w, dy, dtnh__vgrad(r, u));
        break;
    case DTNH__NODE_LINEAR:
        if (nd->train_w || nd->train_b)
            dtnh_linear_backward_weights(r->n, (int)dtnh__value_floats(xv), nd->c_out,
                                         nd->train_w ? dtnh__vin(r, u) : NULL, dy,
                                         nd->train_w ? r->pgrad + nd->woff : NULL,
                                         nd->train_b ? r->pgrad + nd->boff : NULL, 1,
                                         dtnh__linear_work(net));
        if (dx)
            dtnh_linear_backward_data(r->n, (int)dtnh__value_floats(xv), nd->c_out, dy,
                                      net->weights + nd->woff, dtnh__vgrad(r, u), r->ginit[u],
                                      dtnh__linear_work(net));
        break;
    default: DTNH_ASSERT(0);
    }
    if (dx) r->ginit[u] = 1;
}

static void dtnh__zero_trainable(const dtnh_resnet *net, float *pgrad) {
    int i;
    for (i = 0; i < net->node_count; i++) {
        const dtnh__rnode *nd = &net->nodes[i];
        if (nd->train_w) dtnh_fill(nd->wcount, pgrad + nd->woff, 0.0f);
        if (nd->train_b) dtnh_fill(nd->bcount, pgrad + nd->boff, 0.0f);
    }
}

DTNHDEF dtnh_status dtnh_resnet_backward(dtnh_resnet *net, const float *dlogits,
                                         const float *const *hook_grads, float *param_grad,
                                         int accumulate, dtnh_error *err) {
    static dtnh__run zero_run;
    dtnh__run r = zero_run;
    int i, h;
    if (!net) return dtnh_fail(err, DTNH_ERR_ARG, "resnet_backward: NULL network");
    if (net->train_n < 1)
        return dtnh_fail(err, DTNH_ERR_ARG,
                         "resnet_backward: no training forward to go back through (none yet, it "
                         "failed, or the network changed since)");
    if (net->cfg.single_backward && net->train_spent)
        return dtnh_fail(err, DTNH_ERR_ARG,
                         "resnet_backward: single_backward is set and this forward's tensors were "
                         "used up by the backward before");
    net->train_spent = 1;
    if (!net->train_block) return DTNH_OK; /* the forward only counted */
    r.pgrad = param_grad ? param_grad : net->params.g_j;
    if (!r.pgrad)
        return dtnh_fail(err, DTNH_ERR_ARG, "resnet_backward: no param_grad and no g_j vector");
    r.net = net;
    r.mode = DTNH__TRAIN;
    r.n = net->train_n;
    r.block = net->train_block;
    r.stats = net->train_stats;
    r.input = net->train_input;
    if (!accumulate) dtnh__zero_trainable(net, r.pgrad);
    if (dlogits && net->values[net->logits_value].needs_grad) dtnh__grad_add(&r, net->logits_value, dlogits);
    for (i = net->node_count - 1; i >= 0; i--) {
        const dtnh__rnode *nd = &net->nodes[i];
        if (!net->values[nd->out].needs_grad) continue;
        for (h = 0; hook_grads && h < net->cfg.hook_count; h++)
            if (hook_grads[h] && net->hook_value[h] == nd->out) dtnh__grad_add(&r, nd->out, hook_grads[h]);
        if (r.ginit[nd->out]) dtnh__node_backward(&r, nd);
    }
    return DTNH_OK;
}

/* ============================================================================================
   ResNet-18: hooks and the state_dict
   ============================================================================================ */

DTNHDEF int dtnh_resnet_hook_index(const dtnh_resnet *net, const char *name) {
    int h;
    if (!net || !name) return -1;
    for (h = 0; h < net->cfg.hook_count; h++)
        if (strcmp(net->hook_name[h], name) == 0) return h;
    return -1;
}

DTNHDEF dtnh_status dtnh_resnet_hook_shape(const dtnh_resnet *net, int hook, int *c, int *h,
                                           int *w, dtnh_error *err) {
    const dtnh__rvalue *v;
    if (!net || !c || !h || !w) return dtnh_fail(err, DTNH_ERR_ARG, "resnet_hook_shape: NULL argument");
    if (hook < 0 || hook >= net->cfg.hook_count)
        return dtnh_fail(err, DTNH_ERR_ARG, "resnet_hook_shape: hook %d, expected 0..%d", hook,
                         net->cfg.hook_count - 1);
    v = &net->values[net->hook_value[hook]];
    *c = v->c;
    *h = v->h;
    *w = v->w;
    return DTNH_OK;
}

DTNHDEF dtnh_status dtnh_resnet_hook_output(const dtnh_resnet *net, int hook, dtnh_tensor *out,
                                            dtnh_error *err) {
    const dtnh__rvalue *v;
    int shape[4];
    if (!net || !out) return dtnh_fail(err, DTNH_ERR_ARG, "resnet_hook_output: NULL argument");
    if (hook < 0 || hook >= net->cfg.hook_count)
        return dtnh_fail(err, DTNH_ERR_ARG, "resnet_hook_output: hook %d, expected 0..%d", hook,
                         net->cfg.hook_count - 1);
    v = &net->values[net->hook_value[hook]];
    shape[0] = net->hook_n ? net->hook_n : net->cfg.max_batch;
    shape[1] = v->c;
    shape[2] = v->h;
    shape[3] = v->w;
    return dtnh_tensor_view(out, net->hook_data[hook], 4, shape, err);
}

DTNHDEF int dtnh_resnet_state_count(const dtnh_resnet *net) { return net ? net->state_count : 0; }

DTNHDEF dtnh_status dtnh_resnet_state_entry(const dtnh_resnet *net, int i, dtnh_state_entry *e,
                                            dtnh_error *err) {
    int k;
    if (e) { /* cleared first, so a failed call leaves no stale fields */
        memset(e, 0, sizeof *e);
        e->param = e->buffer = -1;
    }
    if (!net || !e) return dtnh_fail(err, DTNH_ERR_ARG, "resnet_state_entry: NULL argument");
    if (i < 0 || i >= net->state_count)
        return dtnh_fail(err, DTNH_ERR_ARG, "resnet_state_entry: entry %d, expected 0..%d", i,
                         net->state_count - 1);
    if (!net->params.views || !net->buffers.views)
        return dtnh_fail(err, DTNH_ERR_ARG, "resnet_state_entry: network built on a counting arena");
    if (net->state_kind[i] == 0) {
        const dtnh_param_view *v = &net->params.views[net->state_index[i]];
        e->name = v->name;
        e->ndim = v->ndim;
        for (k = 0; k < DTNH_MAX_DIMS; k++) e->shape[k] = v->shape[k];
        e->count = v->count;
        e->f32 = net->params.w ? net->params.w + v->offset : NULL;
        e->param = net->state_index[i];
    } else {
        const dtnh_buffer_view *v = &net->buffers.views[net->state_index[i]];
        e->name = v->name;
        e->ndim = v->ndim;
        for (k = 0; k < DTNH_MAX_DIMS; k++) e->shape[k] = v->shape[k];
        e->count = v->count;
        if (v->is_count) e->i64 = net->buffers.counts + v->offset;
        else e->f32 = net->buffers.values + v->offset;
        e->buffer = net->state_index[i];
    }
    return DTNH_OK;
}

DTNHDEF int dtnh_resnet_state_find(const dtnh_resnet *net, const char *name) {
    dtnh_state_entry e;
    int i;
    for (i = 0; net && name && i < net->state_count; i++)
        if (dtnh_resnet_state_entry(net, i, &e, NULL) == DTNH_OK && strcmp(e.name, name) == 0)
            return i;
    return -1;
}
