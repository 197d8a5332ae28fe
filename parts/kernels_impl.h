/* ---- kernels ------------------------------------------------------------------------------- */
/* Step 1: simple, correct reference loops. The packed, blocked versions replace them. */

DTNHDEF dtnh_status dtnh_work_alloc(dtnh_work *w, dtnh_arena *a, size_t bytes, int threads,
                                    dtnh_error *err) {
    void *p = NULL;
    dtnh_status s;
    if (!w || !a) return dtnh_fail(err, DTNH_ERR_ARG, "work_alloc: NULL work or arena");
    if (threads < 1)
        return dtnh_fail(err, DTNH_ERR_ARG, "work_alloc: threads is %d, expected >= 1", threads);
    w->buf = NULL;
    w->bytes = 0;
    w->threads = threads;
    if ((s = dtnh_arena_alloc(a, bytes, 64, &p, err))) return s;
    w->buf = p;
    w->bytes = bytes;
    return DTNH_OK;
}

DTNHDEF size_t dtnh_gemm_work_bytes(int threads) { return (size_t)(threads < 1 ? 1 : threads) * 64; }

static float dtnh__gemm_elem(const float *X, int ld, dtnh_trans t, int r, int c) {
    return t == DTNH_NO_TRANS ? X[(size_t)r * (size_t)ld + (size_t)c] : X[(size_t)c * (size_t)ld + (size_t)r];
}

DTNHDEF void dtnh_sgemm(dtnh_trans ta, dtnh_trans tb, int M, int N, int K, float alpha,
                        const float *A, int lda, const float *B, int ldb, float beta, float *C,
                        int ldc, const dtnh_work *work) {
    int i, j, k;
    (void)work;
    for (i = 0; i < M; i++)
        for (j = 0; j < N; j++) {
            float s = 0, *c = C + (size_t)i * (size_t)ldc + (size_t)j;
            for (k = 0; k < K; k++)
                s += dtnh__gemm_elem(A, lda, ta, i, k) * dtnh__gemm_elem(B, ldb, tb, k, j);
            *c = beta == 0.0f ? alpha * s : alpha * s + beta * *c;
        }
}

DTNHDEF dtnh_status dtnh_sgemm_checked(dtnh_trans ta, dtnh_trans tb, int M, int N, int K,
                                       float alpha, const float *A, int lda, const float *B,
                                       int ldb, float beta, float *C, int ldc,
                                       const dtnh_work *work, dtnh_error *err) {
    int a_cols = ta == DTNH_NO_TRANS ? K : M, b_cols = tb == DTNH_NO_TRANS ? N : K;
    if (M <= 0 || N <= 0 || K <= 0)
        return dtnh_fail(err, DTNH_ERR_ARG, "sgemm: M=%d N=%d K=%d, expected all > 0", M, N, K);
    if (!A || !B || !C) return dtnh_fail(err, DTNH_ERR_ARG, "sgemm: NULL A, B or C");
    if ((ta != DTNH_NO_TRANS && ta != DTNH_TRANS) || (tb != DTNH_NO_TRANS && tb != DTNH_TRANS))
        return dtnh_fail(err, DTNH_ERR_ARG, "sgemm: transpose flags %d, %d, expected 0 or 1",
                         (int)ta, (int)tb);
    if (lda < a_cols)
        return dtnh_fail(err, DTNH_ERR_ARG, "sgemm: lda=%d, expected >= %d", lda, a_cols);
    if (ldb < b_cols)
        return dtnh_fail(err, DTNH_ERR_ARG, "sgemm: ldb=%d, expected >= %d", ldb, b_cols);
    if (ldc < N) return dtnh_fail(err, DTNH_ERR_ARG, "sgemm: ldc=%d, expected >= %d", ldc, N);
    if (!work || work->threads < 1 || (work->bytes && !work->buf) ||
        work->bytes < dtnh_gemm_work_bytes(work->threads))
        return dtnh_fail(err, DTNH_ERR_ARG, "sgemm: work of %zu bytes for %d threads, expected %zu",
                         work ? work->bytes : 0, work ? work->threads : 0,
                         dtnh_gemm_work_bytes(work && work->threads > 0 ? work->threads : 1));
    dtnh_sgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, work);
    return DTNH_OK;
}

/* ---- convolution --------------------------------------------------------------------------- */

DTNHDEF dtnh_status dtnh_conv_geom_init(dtnh_conv_geom *g, int n, int c_in, int h, int w,
                                        int c_out, int kh, int kw, int stride, int pad,
                                        dtnh_error *err) {
    long long oh, ow;
    size_t cnt;
    if (!g) return dtnh_fail(err, DTNH_ERR_ARG, "conv_geom: NULL geometry");
    if (n <= 0 || c_in <= 0 || h <= 0 || w <= 0 || c_out <= 0 || kh <= 0 || kw <= 0 || stride <= 0)
        return dtnh_fail(err, DTNH_ERR_ARG,
                         "conv_geom: n=%d c_in=%d h=%d w=%d c_out=%d kernel %dx%d stride %d, "
                         "expected all > 0", n, c_in, h, w, c_out, kh, kw, stride);
    if (pad < 0) return dtnh_fail(err, DTNH_ERR_ARG, "conv_geom: pad=%d, expected >= 0", pad);
    if ((long long)kh > (long long)h + 2LL * pad || (long long)kw > (long long)w + 2LL * pad)
        return dtnh_fail(err, DTNH_ERR_SHAPE,
                         "conv_geom: kernel %dx%d larger than the padded input %lldx%lld", kh, kw,
                         (long long)h + 2LL * pad, (long long)w + 2LL * pad);
    oh = ((long long)h + 2LL * pad - kh) / stride + 1;
    ow = ((long long)w + 2LL * pad - kw) / stride + 1;
    if (oh > 0x7fffffff || ow > 0x7fffffff)
        return dtnh_fail(err, DTNH_ERR_ARG, "conv_geom: output %lldx%lld too large", oh, ow);
    /* Every tensor and matrix the kernels index must fit size_t. */
    if (dtnh_size_mul((size_t)n, (size_t)c_in, &cnt, err) ||
        dtnh_size_mul(cnt, (size_t)h, &cnt, err) || dtnh_size_mul(cnt, (size_t)w, &cnt, err) ||
        dtnh_size_mul(cnt, sizeof(float), &cnt, err) ||
        dtnh_size_mul((size_t)n, (size_t)c_out, &cnt, err) ||
        dtnh_size_mul(cnt, (size_t)oh, &cnt, err) || dtnh_size_mul(cnt, (size_t)ow, &cnt, err) ||
        dtnh_size_mul(cnt, sizeof(float), &cnt, err) ||
        dtnh_size_mul((size_t)c_in * (size_t)kh, (size_t)kw, &cnt, err) ||
        dtnh_size_mul(cnt, (size_t)c_out, &cnt, err) ||
        dtnh_size_mul(cnt, (size_t)oh * (size_t)ow * sizeof(float), &cnt, err))
        return dtnh_fail(err, DTNH_ERR_ARG,
                         "conv_geom: n=%d c_in=%d %dx%d c_out=%d: sizes overflow size_t", n, c_in,
                         h, w, c_out);
    g->n = n; g->c_in = c_in; g->h = h; g->w = w;
    g->c_out = c_out; g->kh = kh; g->kw = kw; g->stride = stride; g->pad = pad;
    g->oh = (int)oh; g->ow = (int)ow;
    return DTNH_OK;
}

DTNHDEF size_t dtnh_conv_work_bytes(const dtnh_conv_geom *g, int threads) {
    (void)g;
    return dtnh_gemm_work_bytes(threads);
}

/* The input pixel a kernel tap reads, or -1 off the edge. */
static long dtnh__conv_src(const dtnh_conv_geom *g, int oy, int ox, int i, int j) {
    int iy = oy * g->stride - g->pad + i, ix = ox * g->stride - g->pad + j;
    if (iy < 0 || iy >= g->h || ix < 0 || ix >= g->w) return -1;
    return (long)iy * g->w + ix;
}

DTNHDEF void dtnh_conv2d_forward(const dtnh_conv_geom *g, const float *x, const float *w,
                                 const float *bias, float *y, const dtnh_work *work) {
    size_t hw = (size_t)g->h * (size_t)g->w, ohw = (size_t)g->oh * (size_t)g->ow;
    int n, co, c, oy, ox, i, j;
    (void)work;
    for (n = 0; n < g->n; n++)
        for (co = 0; co < g->c_out; co++)
            for (oy = 0; oy < g->oh; oy++)
                for (ox = 0; ox < g->ow; ox++) {
                    float s = bias ? bias[co] : 0.0f;
                    for (c = 0; c < g->c_in; c++)
                        for (i = 0; i < g->kh; i++)
                            for (j = 0; j < g->kw; j++) {
                                long src = dtnh__conv_src(g, oy, ox, i, j);
                                if (src >= 0)
                                    s += x[((size_t)n * g->c_in + c) * hw + (size_t)src] *
                                         w[(((size_t)co * g->c_in + c) * g->kh + i) * g->kw + j];
                            }
                    y[((size_t)n * g->c_out + co) * ohw + (size_t)oy * g->ow + ox] = s;
                }
}

DTNHDEF void dtnh_conv2d_backward_data(const dtnh_conv_geom *g, const float *dy, const float *w,
                                       float *dx, const dtnh_work *work) {
    size_t hw = (size_t)g->h * (size_t)g->w, ohw = (size_t)g->oh * (size_t)g->ow;
    int n, co, c, oy, ox, i, j;
    (void)work;
    for (n = 0; n < g->n * g->c_in; n++) dtnh_fill(hw, dx + (size_t)n * hw, 0.0f);
    for (n = 0; n < g->n; n++)
        for (co = 0; co < g->c_out; co++)
            for (oy = 0; oy < g->oh; oy++)
                for (ox = 0; ox < g->ow; ox++) {
                    float d = dy[((size_t)n * g->c_out + co) * ohw + (size_t)oy * g->ow + ox];
                    for (c = 0; c < g->c_in; c++)
                        for (i = 0; i < g->kh; i++)
                            for (j = 0; j < g->kw; j++) {
                                long src = dtnh__conv_src(g, oy, ox, i, j);
                                if (src >= 0)
                                    dx[((size_t)n * g->c_in + c) * hw + (size_t)src] +=
                                        d * w[(((size_t)co * g->c_in + c) * g->kh + i) * g->kw + j];
                            }
                }
}

DTNHDEF void dtnh_conv2d_backward_weights(const dtnh_conv_geom *g, const float *x,
                                          const float *dy, float *dw, float *dbias,
                                          int accumulate, const dtnh_work *work) {
    size_t hw = (size_t)g->h * (size_t)g->w, ohw = (size_t)g->oh * (size_t)g->ow;
    int n, co, c, oy, ox, i, j;
    (void)work;
    for (co = 0; co < g->c_out; co++) {
        for (c = 0; c < g->c_in; c++)
            for (i = 0; i < g->kh; i++)
                for (j = 0; j < g->kw; j++) {
                    float s = 0, *out = dw + (((size_t)co * g->c_in + c) * g->kh + i) * g->kw + j;
                    for (n = 0; n < g->n; n++)
                        for (oy = 0; oy < g->oh; oy++)
                            for (ox = 0; ox < g->ow; ox++) {
                                long src = dtnh__conv_src(g, oy, ox, i, j);
                                if (src >= 0)
                                    s += x[((size_t)n * g->c_in + c) * hw + (size_t)src] *
                                         dy[((size_t)n * g->c_out + co) * ohw + (size_t)oy * g->ow + ox];
                            }
                    *out = accumulate ? *out + s : s;
                }
        if (dbias) {
            float s = 0;
            for (n = 0; n < g->n; n++)
                for (oy = 0; oy < g->oh * g->ow; oy++)
                    s += dy[((size_t)n * g->c_out + co) * ohw + (size_t)oy];
            dbias[co] = accumulate ? dbias[co] + s : s;
        }
    }
}

DTNHDEF void dtnh_im2col(const dtnh_conv_geom *g, const float *x_image, float *col) {
    size_t ohw = (size_t)g->oh * (size_t)g->ow, hw = (size_t)g->h * (size_t)g->w;
    int c, i, j, oy, ox;
    for (c = 0; c < g->c_in; c++)
        for (i = 0; i < g->kh; i++)
            for (j = 0; j < g->kw; j++) {
                float *row = col + (((size_t)c * g->kh + i) * g->kw + j) * ohw;
                for (oy = 0; oy < g->oh; oy++)
                    for (ox = 0; ox < g->ow; ox++) {
                        long src = dtnh__conv_src(g, oy, ox, i, j);
                        row[(size_t)oy * g->ow + ox] = src >= 0 ? x_image[(size_t)c * hw + (size_t)src] : 0.0f;
                    }
            }
}

DTNHDEF void dtnh_col2im(const dtnh_conv_geom *g, const float *col, float *x_image) {
    size_t ohw = (size_t)g->oh * (size_t)g->ow, hw = (size_t)g->h * (size_t)g->w;
    int c, i, j, oy, ox;
    for (c = 0; c < g->c_in; c++)
        for (i = 0; i < g->kh; i++)
            for (j = 0; j < g->kw; j++) {
                const float *row = col + (((size_t)c * g->kh + i) * g->kw + j) * ohw;
                for (oy = 0; oy < g->oh; oy++)
                    for (ox = 0; ox < g->ow; ox++) {
                        long src = dtnh__conv_src(g, oy, ox, i, j);
                        if (src >= 0) x_image[(size_t)c * hw + (size_t)src] += row[(size_t)oy * g->ow + ox];
                    }
            }
}
