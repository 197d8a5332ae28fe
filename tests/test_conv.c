/* Convolution: geometry checks, im2col/col2im, the forward and both backward passes against
   double-precision loops and central finite differences, thread-count independence, and
   work sizes that are honest. */
#include <stdlib.h>
#include <string.h>
#include "test.h"
#ifdef _OPENMP
#include <omp.h>
#endif

/* The thread counts the bit-identity tests try: 1, and 2 with OpenMP. */
static int conv_max_threads(void) {
#ifdef _OPENMP
    return 2;
#else
    return 1;
#endif
}

static void conv_set_threads(int n) {
#ifdef _OPENMP
    omp_set_num_threads(n);
#else
    (void)n;
#endif
}

/* n, c_in, h, w, c_out, kh, kw, stride, pad: kernels 1, 3, 7 (and 1x3), strides 1 and 2,
   pads 0, 1, 3, odd sizes, batch 1 and 3, and enough channels to cross the blocking. */
static const int geoms[][9] = {
    {1, 3, 7, 9, 4, 3, 3, 1, 1},  {3, 2, 11, 8, 5, 3, 3, 2, 1},   {1, 4, 13, 13, 3, 7, 7, 2, 3},
    {3, 5, 6, 7, 6, 1, 1, 1, 0},  {2, 6, 9, 9, 7, 1, 1, 2, 0},    {1, 3, 10, 5, 2, 3, 3, 1, 0},
    {3, 3, 15, 15, 4, 7, 7, 1, 3}, {1, 3, 5, 5, 2, 3, 3, 2, 3},   {2, 3, 6, 7, 4, 1, 3, 1, 1},
    {3, 2, 5, 6, 3, 1, 1, 1, 1},  {2, 16, 8, 8, 33, 3, 3, 1, 1},  {1, 40, 9, 7, 70, 3, 3, 1, 1},
    {3, 37, 7, 7, 35, 3, 3, 2, 1}, {1, 300, 3, 3, 20, 1, 1, 1, 0}, {1, 1, 1, 1, 1, 1, 1, 1, 0},
    {2, 5, 7, 7, 300, 1, 1, 2, 0}, {1, 3, 9, 9, 260, 3, 3, 2, 1},  {1, 40, 9, 9, 6, 3, 3, 2, 1},
    {3, 4, 30, 30, 5, 3, 3, 2, 1},
    /* a padded 1x1 stride 2 reads the input's odd phase: 7x7 and (K slices over 17 images) 4x4 */
    {3, 8, 11, 12, 12, 1, 1, 2, 1}, {20, 6, 7, 7, 10, 1, 1, 2, 1}};

static int geom_from(dtnh_conv_geom *g, const int *p) {
    return dtnh_conv_geom_init(g, p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], NULL) ==
           DTNH_OK;
}

static size_t x_count(const dtnh_conv_geom *g) { return (size_t)g->n * g->c_in * g->h * g->w; }
static size_t y_count(const dtnh_conv_geom *g) { return (size_t)g->n * g->c_out * g->oh * g->ow; }
static size_t w_count(const dtnh_conv_geom *g) { return (size_t)g->c_out * g->c_in * g->kh * g->kw; }

static float *rnd(size_t n, dtnh_rng *r) {
    float *x = (float *)malloc((n ? n : 1) * sizeof(float));
    size_t i;
    for (i = 0; i < n; i++) x[i] = 2.0f * dtnh_rng_uniform(r) - 1.0f;
    return x;
}

/* Work of exactly `bytes` (dtnh_conv_work_bytes for conv_work), followed by guard bytes that
   must stay intact. */
#define GUARD 256
static void *work_of(dtnh_work *w, size_t bytes, int threads) {
    unsigned char *mem = (unsigned char *)malloc(bytes + 64 + GUARD);
    dtnh_arena a;
    dtnh_arena_init(&a, mem, bytes + 64 + GUARD);
    dtnh_work_alloc(w, &a, bytes, threads, NULL);
    memset((unsigned char *)w->buf + bytes, 0xC3, GUARD);
    return mem;
}
static void *conv_work(dtnh_work *w, const dtnh_conv_geom *g, int threads) {
    return work_of(w, dtnh_conv_work_bytes(g, threads), threads);
}
/* A one-thread GEMM work buffer, for references built on dtnh_sgemm. */
static void *gemm_work_for_tests(dtnh_work *w) {
    void *mem = malloc(dtnh_gemm_work_bytes(1) + 64);
    dtnh_arena a;
    dtnh_arena_init(&a, mem, dtnh_gemm_work_bytes(1) + 64);
    dtnh_work_alloc(w, &a, dtnh_gemm_work_bytes(1), 1, NULL);
    return mem;
}
static int guard_intact(const dtnh_work *w) {
    const unsigned char *p = (const unsigned char *)w->buf + w->bytes;
    int i;
    for (i = 0; i < GUARD; i++)
        if (p[i] != 0xC3) return 0;
    return 1;
}

/* The input pixel a tap reads, or -1 off the edge. */
static long tap(const dtnh_conv_geom *g, int oy, int ox, int i, int j) {
    int iy = oy * g->stride - g->pad + i, ix = ox * g->stride - g->pad + j;
    if (iy < 0 || iy >= g->h || ix < 0 || ix >= g->w) return -1;
    return (long)iy * g->w + ix;
}

/* Visits every (output, input, weight) triple of the convolution once, in double. */
typedef void (*triple_fn)(void *ctx, size_t yi, size_t xi, size_t wi);
static void for_each_triple(const dtnh_conv_geom *g, triple_fn fn, void *ctx) {
    int n, co, c, oy, ox, i, j;
    for (n = 0; n < g->n; n++)
        for (co = 0; co < g->c_out; co++)
            for (oy = 0; oy < g->oh; oy++)
                for (ox = 0; ox < g->ow; ox++)
                    for (c = 0; c < g->c_in; c++)
                        for (i = 0; i < g->kh; i++)
                            for (j = 0; j < g->kw; j++) {
                                long s = tap(g, oy, ox, i, j);
                                if (s < 0) continue;
                                fn(ctx,
                                   (((size_t)n * g->c_out + co) * g->oh + oy) * g->ow + ox,
                                   ((size_t)n * g->c_in + c) * g->h * g->w + (size_t)s,
                                   (((size_t)co * g->c_in + c) * g->kh + i) * g->kw + j);
                            }
}

/* Reference values and error bounds (sums of |terms|) in double. */
typedef struct ref_ctx {
    const float *x, *w, *dy;
    double *y, *ybound, *dx, *dxbound, *dw, *dwbound;
} ref_ctx;
static void ref_triple(void *vc, size_t yi, size_t xi, size_t wi) {
    ref_ctx *c = (ref_ctx *)vc;
    double xw = (double)c->x[xi] * c->w[wi];
    double dyw = (double)c->dy[yi] * c->w[wi], dyx = (double)c->dy[yi] * c->x[xi];
    c->y[yi] += xw;
    c->ybound[yi] += fabs(xw);
    c->dx[xi] += dyw;
    c->dxbound[xi] += fabs(dyw);
    c->dw[wi] += dyx;
    c->dwbound[wi] += fabs(dyx);
}

static double *zeros(size_t n) { return (double *)calloc(n ? n : 1, sizeof(double)); }

/* |got - ref| <= 1.2e-7 * (terms + 4) * bound: the float accumulation bound with margin. For
   Winograd's results (normwise non-zero) the bound is WINOGRAD_SLACK times the largest of the
   tensor's: its transforms scale terms by up to 8 (and 1/24) before adding them, so an
   element's error follows the tensor's magnitudes, not its own sum's (a 2x2 image with 48
   channels had a weight gradient 19x past its own bound; against the largest, 1200 random
   geometries of conv_sweep reached 0.43 of it). */
#define WINOGRAD_SLACK 4.0
static int close_all(const float *got, const double *ref, const double *bound, size_t n,
                     size_t terms, int normwise, size_t *bad) {
    double most = 0;
    size_t i;
    for (i = 0; normwise && i < n; i++)
        if (bound[i] > most) most = bound[i];
    for (i = 0; i < n; i++)
        if (!(fabs(got[i] - ref[i]) <= 1.2e-7 * (double)(terms + 4) * (normwise ? WINOGRAD_SLACK * most : bound[i]) + 1e-30)) {
            *bad = i;
            return 0;
        }
    return 1;
}

/* All three passes of one geometry against the reference loops, with `threads` threads and
   work of `bytes` (0: the geometry's own dtnh_conv_work_bytes; a network shares one sized for
   its largest layer, which lets more paths fit); msg says what failed. */
static int conv_case_ok(const dtnh_conv_geom *g, dtnh_rng *r, char *msg, size_t bytes, int threads) {
    size_t nx = x_count(g), ny = y_count(g), nw = w_count(g), bad = 0, i;
    size_t kk = (size_t)g->c_in * g->kh * g->kw, nohw = (size_t)g->n * g->oh * g->ow;
    float *x = rnd(nx, r), *w = rnd(nw, r), *dy = rnd(ny, r), *bias = rnd((size_t)g->c_out, r);
    float *y = rnd(ny, r), *dx = rnd(nx, r), *dw = rnd(nw, r), *db = rnd((size_t)g->c_out, r);
    double *dbref = zeros((size_t)g->c_out);
    ref_ctx c;
    dtnh_work work;
    void *mem = bytes ? work_of(&work, bytes, threads) : conv_work(&work, g, threads);
    int ok = 1;
    conv_set_threads(threads);
    c.x = x; c.w = w; c.dy = dy;
    c.y = zeros(ny); c.ybound = zeros(ny); c.dx = zeros(nx); c.dxbound = zeros(nx);
    c.dw = zeros(nw); c.dwbound = zeros(nw);
    for_each_triple(g, ref_triple, &c);
    for (i = 0; i < ny; i++) {
        c.y[i] += bias[(i / ((size_t)g->oh * g->ow)) % g->c_out];
        c.ybound[i] += fabs(bias[(i / ((size_t)g->oh * g->ow)) % g->c_out]);
        dbref[(i / ((size_t)g->oh * g->ow)) % g->c_out] += dy[i];
    }
    dtnh_conv2d_forward(g, x, w, bias, y, &work);
    if (ok && !close_all(y, c.y, c.ybound, ny, kk + 1, g->winograd, &bad))
        ok = 0, sprintf(msg, "forward y[%zu] = %.9g, expected %.9g", bad, y[bad], c.y[bad]);
    dtnh_conv2d_backward_data(g, dy, w, dx, &work);
    if (ok && !close_all(dx, c.dx, c.dxbound, nx, (size_t)g->c_out * g->kh * g->kw, g->winograd, &bad))
        ok = 0, sprintf(msg, "backward_data dx[%zu] = %.9g, expected %.9g", bad, dx[bad], c.dx[bad]);
    dtnh_conv2d_backward_weights(g, x, dy, dw, db, 0, &work);
    if (ok && !close_all(dw, c.dw, c.dwbound, nw, nohw, g->winograd, &bad))
        ok = 0, sprintf(msg, "backward_weights dw[%zu] = %.9g, expected %.9g", bad, dw[bad], c.dw[bad]);
    for (i = 0; ok && i < (size_t)g->c_out; i++)
        if (!(fabs(db[i] - dbref[i]) <= 1.2e-7 * (double)(nohw + 4) * (double)nohw))
            ok = 0, sprintf(msg, "dbias[%zu] = %.9g, expected %.9g", i, db[i], dbref[i]);
    if (ok && !guard_intact(&work)) ok = 0, sprintf(msg, "work written past its size");
    conv_set_threads(dtnh_threads());
    free(x); free(w); free(dy); free(bias); free(y); free(dx); free(dw); free(db); free(dbref);
    free(c.y); free(c.ybound); free(c.dx); free(c.dxbound); free(c.dw); free(c.dwbound);
    free(mem);
    return ok;
}

/* Each geometry of list (with the winograd flag as given) with its own work on one thread,
   and with large work on two. */
static void geometries_match_reference_loops(const int (*list)[9], size_t count, int winograd, uint64_t seed) {
    dtnh_rng r;
    char msg[256] = "";
    size_t s;
    dtnh_rng_seed(&r, seed);
    for (s = 0; s < count; s++) {
        dtnh_conv_geom g;
        CHECK_MSG(geom_from(&g, list[s]), "geometry %zu rejected", s);
        g.winograd = winograd;
        CHECK_MSG(conv_case_ok(&g, &r, msg, 0, 1), "geometry %zu: %s", s, msg);
        CHECK_MSG(conv_case_ok(&g, &r, msg, (size_t)8 << 20, 2), "geometry %zu, large work: %s", s, msg);
    }
}

static void conv_passes_match_reference_loops(void) {
    geometries_match_reference_loops(geoms, sizeof geoms / sizeof geoms[0], 0, 10);
}

/* Random geometries (strides 1 and 2, kernels 1-3 and now and then 5 or 7, pads 0-2, sizes
   1-20, rectangular), small enough for valgrind: each kernel path meets shapes nobody picked. */
static void conv_random_geometries_match_reference_loops(void) {
    dtnh_rng r;
    char msg[256] = "";
    int tried = 0, t;
    dtnh_rng_seed(&r, 77);
    for (t = 0; t < 400 && tried < 40; t++) {
        int k = dtnh_rng_uniform(&r) < 0.2f ? 5 + 2 * (int)(2.0f * dtnh_rng_uniform(&r)) : 1 + (int)(3.0f * dtnh_rng_uniform(&r));
        int p[9];
        dtnh_conv_geom g;
        p[0] = 1 + (int)(20.0f * dtnh_rng_uniform(&r)); p[1] = 1 + (int)(24.0f * dtnh_rng_uniform(&r));
        p[2] = 1 + (int)(20.0f * dtnh_rng_uniform(&r)); p[3] = 1 + (int)(20.0f * dtnh_rng_uniform(&r));
        p[4] = 1 + (int)(24.0f * dtnh_rng_uniform(&r)); p[5] = p[6] = k;
        p[7] = 1 + (int)(2.0f * dtnh_rng_uniform(&r)); p[8] = (int)(3.0f * dtnh_rng_uniform(&r));
        if (!geom_from(&g, p)) continue; /* kernel larger than the padded input */
        if ((double)w_count(&g) * g.n * g.oh * g.ow > 3e5) continue;
        tried++;
        CHECK_MSG(conv_case_ok(&g, &r, msg, tried % 2 ? (size_t)8 << 20 : 0, 1 + tried % 3 % 2),
                  "n %d c_in %d %dx%d c_out %d k %d stride %d pad %d: %s", p[0], p[1], p[2], p[3], p[4], k, p[7], p[8], msg);
    }
    CHECK(tried == 40);
}

/* L(x, w, b) = sum(r * conv(x, w) + b) in double; its central differences must match the
   backward passes with dy = r. L is linear in each argument, so h can be large. */
static double loss(const dtnh_conv_geom *g, const float *x, const float *w, const float *b,
                   const float *rr) {
    ref_ctx c;
    size_t ny = y_count(g), nx = x_count(g), nw = w_count(g), i;
    double L = 0;
    c.x = x; c.w = w; c.dy = rr;
    c.y = zeros(ny); c.ybound = zeros(ny); c.dx = zeros(nx); c.dxbound = zeros(nx);
    c.dw = zeros(nw); c.dwbound = zeros(nw);
    for_each_triple(g, ref_triple, &c);
    for (i = 0; i < ny; i++) L += rr[i] * (c.y[i] + b[(i / ((size_t)g->oh * g->ow)) % g->c_out]);
    free(c.y); free(c.ybound); free(c.dx); free(c.dxbound); free(c.dw); free(c.dwbound);
    return L;
}

static double central_diff(const dtnh_conv_geom *g, float *x, float *w, float *b, const float *rr,
                           float *p) {
    const float h = 0.25f, keep = *p;
    double up, down;
    *p = keep + h;
    up = loss(g, x, w, b, rr);
    *p = keep - h;
    down = loss(g, x, w, b, rr);
    *p = keep;
    return (up - down) / (2.0 * h);
}

static void conv_gradients_match_finite_differences(void) {
    static const int fd[][9] = {{2, 3, 7, 6, 4, 3, 3, 1, 1}, {3, 2, 9, 9, 3, 3, 3, 2, 1},
                                {1, 2, 11, 11, 2, 7, 7, 2, 3}, {2, 4, 5, 5, 3, 1, 1, 2, 0}};
    dtnh_rng r;
    size_t s;
    int t;
    dtnh_rng_seed(&r, 11);
    for (s = 0; s < sizeof fd / sizeof fd[0]; s++) {
        dtnh_conv_geom g;
        dtnh_work work;
        float *x, *w, *b, *rr, *dx, *dw, *db;
        void *mem;
        CHECK(geom_from(&g, fd[s]));
        x = rnd(x_count(&g), &r); w = rnd(w_count(&g), &r); b = rnd((size_t)g.c_out, &r);
        rr = rnd(y_count(&g), &r); dx = rnd(x_count(&g), &r); dw = rnd(w_count(&g), &r);
        db = rnd((size_t)g.c_out, &r);
        mem = conv_work(&work, &g, 1);
        dtnh_conv2d_backward_data(&g, rr, w, dx, &work);
        dtnh_conv2d_backward_weights(&g, x, rr, dw, db, 0, &work);
        for (t = 0; t < 6; t++) {
            size_t xi = dtnh_rng_below(&r, (uint32_t)x_count(&g));
            size_t wi = dtnh_rng_below(&r, (uint32_t)w_count(&g));
            size_t bi = dtnh_rng_below(&r, (uint32_t)g.c_out);
            CHECK_NEAR(dx[xi], central_diff(&g, x, w, b, rr, &x[xi]), 1e-4);
            CHECK_NEAR(dw[wi], central_diff(&g, x, w, b, rr, &w[wi]), 1e-4);
            CHECK_NEAR(db[bi], central_diff(&g, x, w, b, rr, &b[bi]), 1e-4);
        }
        free(x); free(w); free(b); free(rr); free(dx); free(dw); free(db); free(mem);
    }
}

static void conv_backward_weights_accumulates_when_asked(void) {
    static const int p[9] = {2, 5, 8, 8, 6, 3, 3, 1, 1};
    dtnh_conv_geom g;
    dtnh_work work;
    dtnh_rng r;
    float *x, *dy, *dw0, *dw, *db0, *db;
    void *mem;
    size_t i;
    CHECK(geom_from(&g, p));
    dtnh_rng_seed(&r, 12);
    x = rnd(x_count(&g), &r); dy = rnd(y_count(&g), &r);
    dw0 = rnd(w_count(&g), &r); dw = rnd(w_count(&g), &r);
    db0 = rnd((size_t)g.c_out, &r); db = rnd((size_t)g.c_out, &r);
    mem = conv_work(&work, &g, 1);
    dtnh_conv2d_backward_weights(&g, x, dy, dw0, db0, 0, &work); /* the plain gradient */
    for (i = 0; i < w_count(&g); i++) dw[i] = 1.0f;
    for (i = 0; i < (size_t)g.c_out; i++) db[i] = -2.0f;
    dtnh_conv2d_backward_weights(&g, x, dy, dw, db, 1, &work);
    for (i = 0; i < w_count(&g); i++) CHECK_NEAR(dw[i], dw0[i] + 1.0f, 1e-5);
    for (i = 0; i < (size_t)g.c_out; i++) CHECK_NEAR(db[i], db0[i] - 2.0f, 1e-5);
    dtnh_conv2d_backward_weights(&g, x, dy, dw, NULL, 0, &work); /* no bias gradient */
    for (i = 0; i < w_count(&g); i++) CHECK(dw[i] == dw0[i]);
    free(x); free(dy); free(dw0); free(dw); free(db0); free(db); free(mem);
}

/* backward_data_add adds the same gradient backward_data writes, on every path (flipped
   convolution, scatter, col2im). */
static void conv_backward_data_add_adds_the_gradient(void) {
    static const int p[][9] = {{2, 16, 8, 8, 12, 3, 3, 1, 1}, {2, 6, 9, 9, 7, 1, 1, 2, 0},
                               {3, 2, 11, 8, 5, 3, 3, 2, 1}, {2, 5, 7, 7, 300, 1, 1, 2, 0}};
    dtnh_rng r;
    size_t s, i;
    dtnh_rng_seed(&r, 15);
    for (s = 0; s < sizeof p / sizeof p[0]; s++) {
        dtnh_conv_geom g;
        dtnh_work work;
        float *dy, *w, *dx, *acc;
        void *mem;
        CHECK(geom_from(&g, p[s]));
        dy = rnd(y_count(&g), &r); w = rnd(w_count(&g), &r);
        dx = rnd(x_count(&g), &r); acc = rnd(x_count(&g), &r);
        mem = conv_work(&work, &g, 1);
        for (i = 0; i < x_count(&g); i++) acc[i] = (float)(i % 7) - 3.0f;
        dtnh_conv2d_backward_data(&g, dy, w, dx, &work);
        dtnh_conv2d_backward_data_add(&g, dy, w, acc, &work);
        for (i = 0; i < x_count(&g); i++)
            CHECK_MSG(fabs(acc[i] - ((float)(i % 7) - 3.0f + dx[i])) <= 1e-5 * (1 + fabs(dx[i])),
                      "geometry %zu: dx[%zu] %.9g + %d != %.9g", s, i, dx[i], (int)(i % 7) - 3, acc[i]);
        CHECK(guard_intact(&work));
        free(dy); free(w); free(dx); free(acc); free(mem);
    }
}

/* Winograd F(4x4, 3x3) (opt-in, AVX-512 builds): 3x3 stride-1 pad-1 layers with channels in
   multiples of 16, sizes that are and are not multiples of the 4x4 tile, one and two threads,
   the exact work size. */
static const int wino_geoms[][9] = {
    {2, 16, 8, 8, 32, 3, 3, 1, 1},  {1, 32, 5, 7, 16, 3, 3, 1, 1}, {3, 16, 1, 1, 16, 3, 3, 1, 1},
    {2, 48, 9, 6, 16, 3, 3, 1, 1},  {1, 16, 13, 10, 48, 3, 3, 1, 1}, {2, 64, 4, 4, 64, 3, 3, 1, 1},
    {30, 16, 2, 3, 32, 3, 3, 1, 1}};

static void conv_winograd_matches_reference_loops(void) {
    geometries_match_reference_loops(wino_geoms, sizeof wino_geoms / sizeof wino_geoms[0], 1, 21);
}

/* The flag changes the arithmetic only where Winograd applies (and only with AVX-512), stays
   close to the direct results, gives the same bits for one and two threads and for work sized
   for more threads than run, and the adding forms add. The first two geometries run several
   groups of images in every pass (backward-weights adds into dU across groups). */
enum { WO_Y, WO_DX, WO_DX_ADD, WO_DW, WO_DW_ADD, WO_COUNT };
static void winograd_outputs(const dtnh_conv_geom *g, const float *x, const float *w, const float *dy,
                             const float *dx0, const float *dw0, float **out, const dtnh_work *work) {
    memcpy(out[WO_DX_ADD], dx0, x_count(g) * sizeof(float));
    memcpy(out[WO_DW_ADD], dw0, w_count(g) * sizeof(float));
    dtnh_conv2d_forward(g, x, w, NULL, out[WO_Y], work);
    dtnh_conv2d_backward_data(g, dy, w, out[WO_DX], work);
    dtnh_conv2d_backward_data_add(g, dy, w, out[WO_DX_ADD], work);
    dtnh_conv2d_backward_weights(g, x, dy, out[WO_DW], NULL, 0, work);
    dtnh_conv2d_backward_weights(g, x, dy, out[WO_DW_ADD], NULL, 1, work);
}

/* The adding forms add: where the flag is ignored, the direct kernel adds what C held at
   another point of its sum than a separate addition would (aarch64: 5e-6 apart on 5.1 after
   9072 terms), hence a tolerance, far below what a missing addition would leave. */
#define ADD_TOL(base, pass) (1e-4 * (1 + fabs(base) + fabs(pass)))

static void conv_winograd_is_opt_in_and_thread_independent(void) {
    static const int p[][9] = {{7, 16, 36, 36, 16, 3, 3, 1, 1}, {11, 32, 20, 18, 32, 3, 3, 1, 1},
                               {2, 16, 9, 11, 32, 3, 3, 1, 1}, {2, 32, 6, 6, 16, 3, 3, 1, 1},
                               {2, 16, 9, 9, 32, 3, 3, 2, 1},  {2, 16, 9, 9, 32, 3, 3, 1, 0},
                               {2, 24, 8, 8, 16, 3, 3, 1, 1},  {2, 16, 8, 8, 16, 1, 1, 1, 0}};
    dtnh_rng r;
    size_t s = 0, i, k, o;
    dtnh_rng_seed(&r, 22);
#if !defined(__AVX512F__) || defined(DTNH_NO_SIMD)
    s = 2; /* without Winograd the large ones only repeat the direct kernel (62 s under valgrind) */
#endif
    for (; s < sizeof p / sizeof p[0]; s++) {
        dtnh_conv_geom g, gw;
        dtnh_work wk[4]; /* direct; Winograd with 1 and 2 threads; 2 run in work sized for 4 */
        float *x, *w, *dy, *dx0, *dw0, *out[4][WO_COUNT];
        size_t size[WO_COUNT];
        void *mem[4];
        int applies;
        CHECK(geom_from(&g, p[s]));
        gw = g;
        gw.winograd = 1;
#if defined(__AVX512F__) && !defined(DTNH_NO_SIMD)
        applies = s < 4;
#else
        applies = 0;
#endif
        size[WO_Y] = y_count(&g);
        size[WO_DX] = size[WO_DX_ADD] = x_count(&g);
        size[WO_DW] = size[WO_DW_ADD] = w_count(&g);
        x = rnd(x_count(&g), &r); w = rnd(w_count(&g), &r); dy = rnd(y_count(&g), &r);
        dx0 = rnd(x_count(&g), &r); dw0 = rnd(w_count(&g), &r);
        for (k = 0; k < 4; k++) {
            mem[k] = conv_work(&wk[k], k ? &gw : &g, k == 0 ? 1 : (int)k);
            for (o = 0; o < WO_COUNT; o++) out[k][o] = rnd(size[o], &r);
            conv_set_threads(k < 2 ? 1 : 2);
            winograd_outputs(k ? &gw : &g, x, w, dy, dx0, dw0, out[k], &wk[k]);
        }
        conv_set_threads(dtnh_threads());
        for (o = 0; o < WO_COUNT; o++) {
            double big = 0, diff = 0;
            CHECK_MSG((memcmp(out[0][o], out[1][o], size[o] * sizeof(float)) != 0) == applies,
                      "geometry %zu, output %zu: Winograd %s the direct kernel's bits", s, o, applies ? "keeps" : "changes");
            for (k = 2; k < 4; k++)
                CHECK_MSG(memcmp(out[1][o], out[k][o], size[o] * sizeof(float)) == 0,
                          "geometry %zu: output %zu differs between 1 thread and run %zu", s, o, k);
            for (i = 0; i < size[o]; i++) {
                if (fabs(out[0][o][i]) > big) big = fabs(out[0][o][i]);
                if (fabs(out[0][o][i] - out[1][o][i]) > diff) diff = fabs(out[0][o][i] - out[1][o][i]);
            }
            CHECK_MSG(diff <= 1e-4 * big, "geometry %zu, output %zu: Winograd %.3g from the direct results (largest %.3g)",
                      s, o, diff, big);
        }
        for (i = 0; i < x_count(&g); i++)
            CHECK_MSG(fabs(out[1][WO_DX_ADD][i] - (dx0[i] + out[1][WO_DX][i])) <= ADD_TOL(dx0[i], out[1][WO_DX][i]),
                      "geometry %zu: dx[%zu] added is %.9g, expected %.9g + %.9g", s, i, out[1][WO_DX_ADD][i], dx0[i], out[1][WO_DX][i]);
        for (i = 0; i < w_count(&g); i++)
            CHECK_MSG(fabs(out[1][WO_DW_ADD][i] - (dw0[i] + out[1][WO_DW][i])) <= ADD_TOL(dw0[i], out[1][WO_DW][i]),
                      "geometry %zu: dw[%zu] added is %.9g, expected %.9g + %.9g", s, i, out[1][WO_DW_ADD][i], dw0[i], out[1][WO_DW][i]);
        for (k = 0; k < 4; k++) {
            CHECK(guard_intact(&wk[k]));
            for (o = 0; o < WO_COUNT; o++) free(out[k][o]);
            free(mem[k]);
        }
        free(x); free(w); free(dy); free(dx0); free(dw0);
    }
}

/* Every pass gives the same bits with one and two threads. */
static void conv_is_identical_for_any_thread_count(void) {
    static const int p[][9] = {{3, 16, 12, 12, 24, 3, 3, 1, 1}, {2, 8, 13, 13, 16, 3, 3, 2, 1},
                               {3, 12, 8, 8, 20, 1, 1, 2, 0}, {1, 24, 10, 10, 8, 1, 1, 1, 0},
                               {2, 40, 9, 9, 8, 3, 3, 2, 1}};
    size_t s;
    dtnh_rng r;
    dtnh_rng_seed(&r, 13);
    for (s = 0; s < sizeof p / sizeof p[0]; s++) {
        dtnh_conv_geom g;
        dtnh_work w1, w2;
        float *x, *w, *b, *dy, *out1[4], *out2[4];
        size_t sizes[4];
        void *m1, *m2;
        int k;
        CHECK(geom_from(&g, p[s]));
        x = rnd(x_count(&g), &r); w = rnd(w_count(&g), &r); b = rnd((size_t)g.c_out, &r);
        dy = rnd(y_count(&g), &r);
        sizes[0] = y_count(&g); sizes[1] = x_count(&g); sizes[2] = w_count(&g);
        sizes[3] = (size_t)g.c_out;
        for (k = 0; k < 4; k++) out1[k] = rnd(sizes[k], &r), out2[k] = rnd(sizes[k], &r);
        m1 = conv_work(&w1, &g, 1);
        m2 = conv_work(&w2, &g, 2);
        conv_set_threads(1);
        dtnh_conv2d_forward(&g, x, w, b, out1[0], &w1);
        dtnh_conv2d_backward_data(&g, dy, w, out1[1], &w1);
        dtnh_conv2d_backward_weights(&g, x, dy, out1[2], out1[3], 0, &w1);
        conv_set_threads(2);
        dtnh_conv2d_forward(&g, x, w, b, out2[0], &w2);
        dtnh_conv2d_backward_data(&g, dy, w, out2[1], &w2);
        dtnh_conv2d_backward_weights(&g, x, dy, out2[2], out2[3], 0, &w2);
        conv_set_threads(dtnh_threads());
        for (k = 0; k < 4; k++)
            CHECK_MSG(memcmp(out1[k], out2[k], sizes[k] * sizeof(float)) == 0,
                      "geometry %zu, output %d differs", s, k);
        CHECK(guard_intact(&w1) && guard_intact(&w2));
        for (k = 0; k < 4; k++) free(out1[k]), free(out2[k]);
        free(x); free(w); free(b); free(dy); free(m1); free(m2);
    }
}

/* dx of one image through the explicit route: dY unfolded with the flipped geometry, times the
   flipped weights wf[ci][co*kk + t] = w[co][ci][kk-1-t]. */
static void flipped_by_im2col(const dtnh_conv_geom *g, const float *dy_img, const float *w,
                              float beta, float *dx_img, const dtnh_work *work) {
    dtnh_conv_geom f;
    int kk = g->kh * g->kw, plane = g->h * g->w, K = g->c_out * kk, ci, co, t;
    float *wf = (float *)malloc((size_t)g->c_in * K * sizeof(float));
    float *col = (float *)malloc((size_t)K * plane * sizeof(float));
    dtnh_conv_geom_init(&f, 1, g->c_out, g->oh, g->ow, g->c_in, g->kh, g->kw, 1, g->kh - 1 - g->pad, NULL);
    for (ci = 0; ci < g->c_in; ci++)
        for (co = 0; co < g->c_out; co++)
            for (t = 0; t < kk; t++)
                wf[(size_t)ci * K + co * kk + t] = w[((size_t)co * g->c_in + ci) * kk + (kk - 1 - t)];
    dtnh_im2col(&f, dy_img, col);
    dtnh_sgemm(DTNH_NO_TRANS, DTNH_NO_TRANS, g->c_in, plane, K, 1.0f, wf, K, col, plane, beta, dx_img, plane, work);
    free(wf); free(col);
}

/* dW^T = unfold(x) . dY^T with the columns (image, pixel) of the whole batch, as one GEMM;
   then once more, added to it. K = n*oh*ow stays at most 3840 (15 K slices) in every geometry
   here: dtnh_sgemm cuts products of 16 slices or more along K, the convolution paths do not. */
static int weights_match_im2col_gemm(const dtnh_conv_geom *g, const float *x, const float *dy,
                                     const dtnh_work *work, const dtnh_work *gemm_work) {
    size_t plane = (size_t)g->oh * g->ow, M = (size_t)g->c_in * g->kh * g->kw, K = (size_t)g->n * plane;
    float *col = (float *)malloc(M * plane * sizeof(float)), *cols = (float *)malloc(M * K * sizeof(float));
    float *dyt = (float *)malloc((size_t)g->c_out * K * sizeof(float)), *ct = (float *)malloc(M * g->c_out * sizeof(float));
    float *dw = (float *)malloc(M * g->c_out * sizeof(float));
    size_t img, m, co, px;
    int same = 1;
    for (img = 0; img < (size_t)g->n; img++) {
        dtnh_im2col(g, x + img * g->c_in * (size_t)g->h * g->w, col);
        for (m = 0; m < M; m++) memcpy(cols + m * K + img * plane, col + m * plane, plane * sizeof(float));
        for (co = 0; co < (size_t)g->c_out; co++)
            for (px = 0; px < plane; px++) dyt[co * K + img * plane + px] = dy[(img * g->c_out + co) * plane + px];
    }
    dtnh_sgemm(DTNH_NO_TRANS, DTNH_TRANS, (int)M, g->c_out, (int)K, 1.0f, cols, (int)K, dyt, (int)K, 0.0f, ct,
               g->c_out, gemm_work);
    dtnh_conv2d_backward_weights(g, x, dy, dw, NULL, 0, work);
    for (m = 0; m < M; m++)
        for (co = 0; co < (size_t)g->c_out; co++) same &= memcmp(&dw[co * M + m], &ct[m * g->c_out + co], sizeof(float)) == 0;
    /* and accumulating into what is there (beta 1) */
    dtnh_sgemm(DTNH_NO_TRANS, DTNH_TRANS, (int)M, g->c_out, (int)K, 1.0f, cols, (int)K, dyt, (int)K, 1.0f, ct,
               g->c_out, gemm_work);
    dtnh_conv2d_backward_weights(g, x, dy, dw, NULL, 1, work);
    for (m = 0; m < M; m++)
        for (co = 0; co < (size_t)g->c_out; co++) same &= memcmp(&dw[co * M + m], &ct[m * g->c_out + co], sizeof(float)) == 0;
    free(col); free(cols); free(dyt); free(ct); free(dw);
    return same;
}

/* Same-size stride-1 convolutions (ResNet's 3x3 layers) and stride-2 ones (through the input's
   phases) read their input directly where the instruction set allows; they must give exactly
   the bits of an explicit im2col and GEMM (same K slices): forward with and without bias,
   backward-weights, and (stride 1) backward-data with and without adding. */
static void conv_same_size_gives_the_bits_of_im2col_and_gemm(void) {
    static const int p[][9] = {{2, 16, 20, 20, 16, 3, 3, 1, 1}, {6, 20, 14, 14, 12, 3, 3, 1, 1},
                               {2, 32, 8, 8, 40, 3, 3, 1, 1},   {2, 16, 12, 12, 8, 5, 5, 1, 2},
                               {3, 1, 20, 20, 16, 3, 3, 1, 1},  {4, 16, 4, 4, 16, 3, 3, 1, 1},
                               {2, 16, 4, 4, 264, 3, 3, 1, 1},  /* 264 rows: two A blocks */
                               {6, 24, 7, 7, 20, 3, 3, 1, 1},   {20, 16, 4, 4, 12, 3, 3, 1, 1},
                               /* stride 2 (forward through the input's phases): even and odd
                                  sizes, a 1x1, a 7x7 stem; 4x4 outputs, whose K slices span 17
                                  images (backward-weights through padded phases) */
                               {2, 16, 20, 20, 32, 3, 3, 2, 1}, {4, 8, 17, 17, 24, 3, 3, 2, 1},
                               {2, 16, 16, 16, 40, 1, 1, 2, 0}, {2, 3, 30, 30, 16, 7, 7, 2, 3},
                               {20, 8, 7, 7, 16, 3, 3, 2, 1},   {20, 16, 7, 7, 24, 1, 1, 2, 0}};
    size_t s;
    dtnh_rng r;
    dtnh_rng_seed(&r, 29);
    for (s = 0; s < sizeof p / sizeof p[0]; s++) {
        dtnh_conv_geom g;
        dtnh_work work, gw, big;
        float *x, *w, *b, *dy, *y, *ref, *dx, *dref, *col;
        void *m1, *m2, *m3;
        size_t plane, out, K, img, i; /* input and output pixels per image */
        int threads, max_threads = conv_max_threads();
        CHECK(geom_from(&g, p[s]));
        plane = (size_t)g.h * g.w;
        out = (size_t)g.oh * g.ow;
        K = (size_t)g.c_in * g.kh * g.kw;
        x = rnd(x_count(&g), &r); w = rnd(w_count(&g), &r); b = rnd((size_t)g.c_out, &r);
        dy = rnd(y_count(&g), &r); y = rnd(y_count(&g), &r); ref = rnd(y_count(&g), &r);
        dx = rnd(x_count(&g), &r); dref = rnd(x_count(&g), &r);
        col = (float *)malloc(K * out * sizeof(float));
        m1 = conv_work(&work, &g, 2);
        m3 = work_of(&big, (size_t)4 << 20, 2);
        m2 = gemm_work_for_tests(&gw);
        for (threads = 1; threads <= max_threads; threads++) {
            int bias;
            conv_set_threads(threads);
            for (bias = 0; bias <= 1; bias++) {
                dtnh_conv2d_forward(&g, x, w, bias ? b : NULL, y, &work);
                for (img = 0; img < (size_t)g.n; img++) {
                    float *ri = ref + img * g.c_out * out;
                    for (i = 0; i < (size_t)g.c_out * out; i++) ri[i] = bias ? b[i / out] : 0.0f;
                    dtnh_im2col(&g, x + img * g.c_in * plane, col);
                    dtnh_sgemm(DTNH_NO_TRANS, DTNH_NO_TRANS, g.c_out, (int)out, (int)K, 1.0f, w, (int)K,
                               col, (int)out, bias ? 1.0f : 0.0f, ri, (int)out, &gw);
                }
                CHECK_MSG(memcmp(y, ref, y_count(&g) * sizeof(float)) == 0, "geometry %zu, %d threads, bias %d: forward differs", s, threads, bias);
            }
            CHECK_MSG(weights_match_im2col_gemm(&g, x, dy, &work, &gw),
                      "geometry %zu, %d threads: backward-weights differs", s, threads);
            /* a network shares a buffer sized for its largest layer: paths it lets fit */
            CHECK_MSG(weights_match_im2col_gemm(&g, x, dy, &big, &gw),
                      "geometry %zu, %d threads: backward-weights (large work buffer) differs", s, threads);
            if (g.c_in < 16 || g.stride != 1) continue; /* col2im or scatter: another order */
            dtnh_conv2d_backward_data(&g, dy, w, dx, &work);
            for (img = 0; img < (size_t)g.n; img++)
                flipped_by_im2col(&g, dy + img * g.c_out * plane, w, 0.0f, dref + img * g.c_in * plane, &gw);
            CHECK_MSG(memcmp(dx, dref, x_count(&g) * sizeof(float)) == 0,
                      "geometry %zu, %d threads: backward-data differs", s, threads);
            dtnh_conv2d_backward_data_add(&g, dy, w, dx, &work);
            for (img = 0; img < (size_t)g.n; img++)
                flipped_by_im2col(&g, dy + img * g.c_out * plane, w, 1.0f, dref + img * g.c_in * plane, &gw);
            CHECK_MSG(memcmp(dx, dref, x_count(&g) * sizeof(float)) == 0,
                      "geometry %zu, %d threads: backward-data-add differs", s, threads);
        }
        conv_set_threads(dtnh_threads());
        CHECK(guard_intact(&work));
        free(x); free(w); free(b); free(dy); free(y); free(ref); free(dx); free(dref); free(col);
        free(m1); free(m2); free(m3);
    }
}

static void im2col_matches_definition_and_col2im_is_its_adjoint(void) {
    /* stride 2 with output rows of 3, 16, 18 and 21 (runs of more than 16 go in pieces) */
    static const int p[][9] = {{1, 3, 7, 6, 1, 3, 3, 2, 1},   {1, 2, 5, 9, 1, 7, 7, 1, 3},
                               {1, 4, 6, 6, 1, 1, 1, 2, 0},   {1, 3, 9, 41, 1, 3, 3, 2, 1},
                               {1, 2, 8, 35, 1, 7, 7, 2, 3},  {1, 2, 6, 33, 1, 3, 3, 2, 0},
                               {1, 2, 5, 32, 1, 1, 1, 2, 0}};
    dtnh_rng r;
    size_t s;
    dtnh_rng_seed(&r, 14);
    for (s = 0; s < sizeof p / sizeof p[0]; s++) {
        dtnh_conv_geom g;
        size_t ohw, rows, i, nx;
        float *x, *col, *c2, *back;
        double lhs = 0, rhs = 0;
        int c, ki, kj, oy, ox;
        CHECK(geom_from(&g, p[s]));
        ohw = (size_t)g.oh * g.ow;
        rows = (size_t)g.c_in * g.kh * g.kw;
        nx = x_count(&g);
        x = rnd(nx, &r); col = rnd(rows * ohw, &r); c2 = rnd(rows * ohw, &r);
        back = (float *)calloc(nx, sizeof(float));
        dtnh_im2col(&g, x, col);
        for (c = 0; c < g.c_in; c++)
            for (ki = 0; ki < g.kh; ki++)
                for (kj = 0; kj < g.kw; kj++)
                    for (oy = 0; oy < g.oh; oy++)
                        for (ox = 0; ox < g.ow; ox++) {
                            long t = tap(&g, oy, ox, ki, kj);
                            float want = t < 0 ? 0.0f : x[(size_t)c * g.h * g.w + (size_t)t];
                            size_t at = (((size_t)c * g.kh + ki) * g.kw + kj) * ohw +
                                        (size_t)oy * g.ow + ox;
                            CHECK(col[at] == want);
                        }
        /* <im2col(x), c2> == <x, col2im(c2)> */
        dtnh_col2im(&g, c2, back);
        for (i = 0; i < rows * ohw; i++) lhs += (double)col[i] * c2[i];
        for (i = 0; i < nx; i++) rhs += (double)x[i] * back[i];
        CHECK_NEAR(lhs, rhs, 1e-5);
        /* col2im adds to what the image holds */
        for (i = 0; i < nx; i++) x[i] = back[i];
        dtnh_col2im(&g, c2, back);
        for (i = 0; i < nx; i++) CHECK_NEAR(back[i], 2.0f * x[i], 1e-6);
        free(x); free(col); free(c2); free(back);
    }
}

static void conv_geom_computes_output_size(void) {
    dtnh_conv_geom g;
    CHECK_OK(dtnh_conv_geom_init(&g, 8, 3, 224, 224, 64, 7, 7, 2, 3, NULL));
    CHECK(g.oh == 112 && g.ow == 112);
    CHECK_OK(dtnh_conv_geom_init(&g, 1, 64, 7, 8, 64, 3, 3, 2, 1, NULL));
    CHECK(g.oh == 4 && g.ow == 4);
    CHECK_OK(dtnh_conv_geom_init(&g, 1, 1, 1, 1, 1, 3, 3, 1, 1, NULL));
    CHECK(g.oh == 1 && g.ow == 1);
}

static void conv_geom_rejects_bad_geometry(void) {
    dtnh_conv_geom g;
    dtnh_error err;
    CHECK_STATUS(dtnh_conv_geom_init(&g, 0, 3, 8, 8, 4, 3, 3, 1, 1, &err), DTNH_ERR_ARG);
    CHECK(strstr(err.msg, "n=0") != NULL);
    CHECK_STATUS(dtnh_conv_geom_init(&g, 1, -3, 8, 8, 4, 3, 3, 1, 1, &err), DTNH_ERR_ARG);
    CHECK_STATUS(dtnh_conv_geom_init(&g, 1, 3, 8, 8, 0, 3, 3, 1, 1, &err), DTNH_ERR_ARG);
    CHECK_STATUS(dtnh_conv_geom_init(&g, 1, 3, 8, 8, 4, 3, 3, 0, 1, &err), DTNH_ERR_ARG);
    CHECK_STATUS(dtnh_conv_geom_init(&g, 1, 3, 8, 8, 4, 3, 0, 1, 1, &err), DTNH_ERR_ARG);
    CHECK_STATUS(dtnh_conv_geom_init(&g, 1, 3, 8, 8, 4, 3, 3, 1, -1, &err), DTNH_ERR_ARG);
    CHECK(strstr(err.msg, "pad") != NULL);
    CHECK_STATUS(dtnh_conv_geom_init(&g, 1, 3, 4, 4, 4, 7, 7, 1, 1, &err), DTNH_ERR_SHAPE);
    CHECK(strstr(err.msg, "larger") != NULL);
    CHECK_STATUS(dtnh_conv_geom_init(&g, 100000, 100000, 100000, 100000, 4, 1, 1, 1, 0, &err),
                 DTNH_ERR_ARG);
    CHECK(strstr(err.msg, "overflow") != NULL);
    CHECK_STATUS(dtnh_conv_geom_init(&g, 1, 3, 0x7fffffff, 1, 4, 1, 1, 1, 0x3fffffff, &err),
                 DTNH_ERR_ARG);
    /* fits size_t, but a GEMM dimension (n*h*w, c*kh*kw) would overflow int */
    CHECK_STATUS(dtnh_conv_geom_init(&g, 3, 1, 30000, 30000, 1, 1, 1, 1, 0, &err), DTNH_ERR_ARG);
    CHECK(strstr(err.msg, "int") != NULL);
    CHECK_STATUS(dtnh_conv_geom_init(&g, 1, 1, 8, 8, 0x7fffffff / 4, 3, 3, 1, 1, &err), DTNH_ERR_ARG);
    CHECK_STATUS(dtnh_conv_geom_init(NULL, 1, 3, 8, 8, 4, 3, 3, 1, 1, &err), DTNH_ERR_ARG);
}

/* Stride-2 backward-data with overlapping taps adds W^T.dY into dX a tile at a time (512
   columns, DTNH__C2I_COLS in dtnh.h; rows in (c, i, j) order): an explicit GEMM per tile and a
   scalar col2im in that order, added onto dx. */
static void col2im_in_tiles(const dtnh_conv_geom *g, const float *dy, const float *w, float *dx,
                            const dtnh_work *gw) {
    int kk = g->kh * g->kw, M = g->c_in * kk, ohw = g->oh * g->ow, N = g->n * ohw, col, m, k, n;
    float *b = (float *)malloc((size_t)g->c_out * 512 * sizeof(float));
    float *t = (float *)malloc((size_t)M * 512 * sizeof(float));
    for (col = 0; col < N; col += 512) {
        int cols = N - col < 512 ? N - col : 512;
        for (k = 0; k < g->c_out; k++)
            for (n = 0; n < cols; n++)
                b[k * cols + n] = dy[((size_t)((col + n) / ohw) * g->c_out + k) * ohw + (col + n) % ohw];
        dtnh_sgemm(DTNH_TRANS, DTNH_NO_TRANS, M, cols, g->c_out, 1.0f, w, M, b, cols, 0.0f, t, cols, gw);
        for (m = 0; m < M; m++)
            for (n = 0; n < cols; n++) {
                int q = col + n, img = q / ohw, oy = q % ohw / g->ow, ox = q % g->ow;
                int iy = oy * g->stride - g->pad + m % kk / g->kw, ix = ox * g->stride - g->pad + m % g->kw;
                if (iy >= 0 && iy < g->h && ix >= 0 && ix < g->w)
                    dx[(((size_t)img * g->c_in + m / kk) * g->h + iy) * g->w + ix] += t[(size_t)m * cols + n];
            }
    }
    free(b); free(t);
}

/* The vectorised col2im keeps each pixel's order of additions: the same bits as the scalar one. */
static void conv_stride2_backward_data_adds_in_col2im_order(void) {
    static const int p[][9] = {{4, 8, 17, 17, 24, 3, 3, 2, 1}, {8, 16, 28, 28, 32, 3, 3, 2, 1},
                               {6, 12, 15, 15, 20, 3, 3, 2, 0}, {3, 3, 30, 30, 16, 7, 7, 2, 3},
                               {2, 8, 9, 9, 300, 3, 3, 2, 1}}; /* 300: two K slices */
    dtnh_rng r;
    size_t s;
    dtnh_rng_seed(&r, 31);
    for (s = 0; s < sizeof p / sizeof p[0]; s++) {
        dtnh_conv_geom g;
        dtnh_work work, gw;
        float *dy, *w, *dx, *ref;
        void *m1, *m2;
        int threads, max_threads = conv_max_threads(), add;
        CHECK(geom_from(&g, p[s]));
        dy = rnd(y_count(&g), &r); w = rnd(w_count(&g), &r);
        dx = rnd(x_count(&g), &r); ref = (float *)malloc(x_count(&g) * sizeof(float));
        m1 = conv_work(&work, &g, 2);
        m2 = gemm_work_for_tests(&gw);
        for (threads = 1; threads <= max_threads; threads++)
            for (add = 0; add <= 1; add++) {
                conv_set_threads(threads);
                if (add) memcpy(ref, dx, x_count(&g) * sizeof(float));
                else memset(ref, 0, x_count(&g) * sizeof(float));
                col2im_in_tiles(&g, dy, w, ref, &gw);
                if (add) dtnh_conv2d_backward_data_add(&g, dy, w, dx, &work);
                else dtnh_conv2d_backward_data(&g, dy, w, dx, &work);
                CHECK_MSG(memcmp(dx, ref, x_count(&g) * sizeof(float)) == 0,
                          "geometry %zu, %d threads, add %d: backward-data differs", s, threads, add);
            }
        conv_set_threads(dtnh_threads());
        CHECK(guard_intact(&work));
        free(dy); free(w); free(dx); free(ref); free(m1); free(m2);
    }
}

static void conv_work_bytes_are_counted_exactly(void) {
    dtnh_conv_geom g;
    dtnh_arena counter;
    dtnh_work w;
    CHECK_OK(dtnh_conv_geom_init(&g, 3, 16, 12, 12, 24, 3, 3, 1, 1, NULL));
    dtnh_arena_init(&counter, NULL, 0);
    CHECK_OK(dtnh_work_alloc(&w, &counter, dtnh_conv_work_bytes(&g, 2), 2, NULL));
    CHECK(dtnh_arena_used(&counter) == dtnh_conv_work_bytes(&g, 2));
    CHECK(dtnh_conv_work_bytes(&g, 2) >= dtnh_conv_work_bytes(&g, 1));
}

void suite_conv(void) {
    RUN(conv_geom_computes_output_size);
    RUN(conv_geom_rejects_bad_geometry);
    RUN(conv_work_bytes_are_counted_exactly);
    RUN(im2col_matches_definition_and_col2im_is_its_adjoint);
    RUN(conv_passes_match_reference_loops);
    RUN(conv_random_geometries_match_reference_loops);
    RUN(conv_gradients_match_finite_differences);
    RUN(conv_backward_weights_accumulates_when_asked);
    RUN(conv_backward_data_add_adds_the_gradient);
    RUN(conv_is_identical_for_any_thread_count);
    RUN(conv_winograd_matches_reference_loops);
    RUN(conv_winograd_is_opt_in_and_thread_independent);
    RUN(conv_same_size_gives_the_bits_of_im2col_and_gemm);
    RUN(conv_stride2_backward_data_adds_in_col2im_order);
}
