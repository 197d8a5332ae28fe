/* bench_winograd: what Winograd's F(2x2, 3x3) would give on configuration (c)'s 3x3 layers
   (issue 3), measured beside the library's direct convolution; an experiment, not part of
   the libraries (it changes the order of additions, so the libraries do not use it).
   For each same-size 3x3 layer of bench_resnet's (c) (batch 48; 16 channels at 28x28 to 128
   at 4x4) it times dtnh_conv2d_forward and a Winograd forward written here (AVX-512 only):
   the weights transformed to U = G g G^T (16 planes of c_out x c_in), then per block of about
   256 output tiles: the input tiles transformed to V = B^T d B (16 planes), 16 GEMMs
   M = U V, and the output tiles A^T M A written out. Best of 15 calls on one thread (CPU
   time), the largest difference between the two outputs, and the split of Winograd's time
   between its three parts. BENCHMARKS.md ("Session 6", under ResNet-18) reads the figures.
   Run:  make build/cc-omp1-san0/bench/bench_winograd && ./build/cc-omp1-san0/bench/bench_winograd */
#define _POSIX_C_SOURCE 200809L
#define DTNH_IMPLEMENTATION
#include "../dtnh.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

static double cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static float *floats(size_t n) {
    void *p = NULL;
    if (posix_memalign(&p, 64, (n + 16) * sizeof(float))) return NULL;
    memset(p, 0, (n + 16) * sizeof(float));
    return (float *)p;
}

#if defined(__AVX512F__)

/* One layer: n images of c channels, s x s, 3x3 pad 1 stride 1, c -> c. Tiles of 2x2
   outputs, tt per side; a block is `rows` tile rows (of all images in turn). Planes of V and
   M are padded by 16 floats so the 16 of a tile do not alias in L1 (4 KiB apart). */
typedef struct layer {
    int n, c, s, tt, rows, cols; /* cols: tiles of a block, rounded up to 32 */
    size_t vplane, mplane;       /* floats between the 16 transformed planes */
} layer;

static void layer_init(layer *L, int n, int c, int s) {
    L->n = n;
    L->c = c;
    L->s = s;
    L->tt = (s + 1) / 2;
    L->rows = 256 / L->tt;
    L->cols = (L->rows * L->tt + 31) / 32 * 32 + 16;
    L->vplane = (size_t)c * (size_t)L->cols + 16;
    L->mplane = L->vplane;
}

/* U[xi][co][ci] = (G g G^T)[xi], G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1]. */
static void transform_weights(const layer *L, const float *w, float *u) {
    static const float G[4][3] = {{1, 0, 0}, {.5f, .5f, .5f}, {.5f, -.5f, .5f}, {0, 0, 1}};
    int co, ci, a, b, k;
    for (co = 0; co < L->c; co++)
        for (ci = 0; ci < L->c; ci++) {
            const float *g = w + ((size_t)co * L->c + ci) * 9;
            float t[4][3];
            for (a = 0; a < 4; a++)
                for (b = 0; b < 3; b++)
                    for (t[a][b] = 0, k = 0; k < 3; k++) t[a][b] += G[a][k] * g[k * 3 + b];
            for (a = 0; a < 4; a++)
                for (b = 0; b < 4; b++) {
                    float v = 0;
                    for (k = 0; k < 3; k++) v += t[a][k] * G[b][k];
                    u[((size_t)(a * 4 + b) * L->c + co) * L->c + ci] = v;
                }
        }
}

/* Lanes 0..31 of an input row from column col0 on, zero outside the image and past `len`. */
static __mmask16 row_mask(int col0, int s, int len, int half) {
    int first = col0 < 0 ? -col0 : 0, end = s - col0 < len ? s - col0 : len;
    unsigned long long m = ((end >= 64 ? ~0ull : (1ull << end)) - 1) & ~((1ull << first) - 1);
    return (__mmask16)(m >> (16 * half));
}

/* V of tile rows [r0, r1): per channel and tile row, up to 15 tiles a vector; d[i][j] of the
   tiles is input row 2ty-1+i, columns 2tx-1+j: lanes 2l+j of two loads. */
static void transform_input(const layer *L, const float *x, int r0, int r1, float *v) {
    const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    int s = L->s, tt = L->tt, c, r, tx0, i, j;
    for (tx0 = 0; tx0 < tt; tx0 += 15) {
        int nt = tt - tx0 < 15 ? tt - tx0 : 15, col0 = 2 * tx0 - 1;
        __mmask16 lo = row_mask(col0, s, 2 * nt + 2, 0), hi = row_mask(col0, s, 2 * nt + 2, 1);
        __mmask16 lanes = (__mmask16)((1u << nt) - 1);
        for (c = 0; c < L->c; c++)
            for (r = r0; r < r1; r++) {
                const float *plane = x + ((size_t)(r / tt) * L->c + c) * s * s;
                int ty = r % tt;
                float *out = v + (size_t)c * L->cols + (size_t)(r - r0) * tt + tx0;
                __m512 d[4][4], h[4][4];
                for (i = 0; i < 4; i++) {
                    int row = 2 * ty - 1 + i;
                    __m512 a = _mm512_setzero_ps(), b = a;
                    if (row >= 0 && row < s) {
                        a = _mm512_maskz_loadu_ps(lo, plane + (size_t)row * s + col0);
                        b = _mm512_maskz_loadu_ps(hi, plane + (size_t)row * s + col0 + 16);
                    }
                    for (j = 0; j < 4; j++)
                        d[i][j] = _mm512_permutex2var_ps(a, _mm512_add_epi32(even, _mm512_set1_epi32(j)), b);
                    h[i][0] = _mm512_sub_ps(d[i][0], d[i][2]); /* d B, row by row */
                    h[i][1] = _mm512_add_ps(d[i][1], d[i][2]);
                    h[i][2] = _mm512_sub_ps(d[i][2], d[i][1]);
                    h[i][3] = _mm512_sub_ps(d[i][1], d[i][3]);
                }
                for (j = 0; j < 4; j++) { /* B^T (d B) */
                    _mm512_mask_storeu_ps(out + (0 + j) * L->vplane, lanes, _mm512_sub_ps(h[0][j], h[2][j]));
                    _mm512_mask_storeu_ps(out + (4 + j) * L->vplane, lanes, _mm512_add_ps(h[1][j], h[2][j]));
                    _mm512_mask_storeu_ps(out + (8 + j) * L->vplane, lanes, _mm512_sub_ps(h[2][j], h[1][j]));
                    _mm512_mask_storeu_ps(out + (12 + j) * L->vplane, lanes, _mm512_sub_ps(h[1][j], h[3][j]));
                }
            }
    }
}

/* M[8 rows][32 tiles] = U[8 rows][k] V[k][32 tiles]. */
static void gemm_8x32(int k_n, const float *u, int ldu, const float *v, size_t ldv, float *m, size_t ldm) {
    __m512 acc[8][2];
    int r, k;
    for (r = 0; r < 8; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (k = 0; k < k_n; k++) {
        __m512 b0 = _mm512_loadu_ps(v + (size_t)k * ldv), b1 = _mm512_loadu_ps(v + (size_t)k * ldv + 16);
        for (r = 0; r < 8; r++) {
            __m512 a = _mm512_set1_ps(u[(size_t)r * ldu + k]);
            acc[r][0] = _mm512_fmadd_ps(a, b0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(a, b1, acc[r][1]);
        }
    }
    for (r = 0; r < 8; r++) {
        _mm512_storeu_ps(m + (size_t)r * ldm, acc[r][0]);
        _mm512_storeu_ps(m + (size_t)r * ldm + 16, acc[r][1]);
    }
}

static void multiply(const layer *L, const float *u, const float *v, int tiles, float *m) {
    int xi, co, t;
    for (xi = 0; xi < 16; xi++)
        for (co = 0; co < L->c; co += 8)
            for (t = 0; t < tiles; t += 32)
                gemm_8x32(L->c, u + ((size_t)xi * L->c + co) * L->c, L->c, v + xi * L->vplane + t,
                          (size_t)L->cols, m + xi * L->mplane + (size_t)co * L->cols + t, (size_t)L->cols);
}

/* y of tile rows [r0, r1) = A^T M A, A^T = [1 1 1 0; 0 1 -1 -1]; the two output columns of a
   tile are interleaved into the row by permutes, clipped to the image. */
static void transform_output(const layer *L, const float *m, int r0, int r1, float *y) {
    const __m512i lo_i = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512i hi_i = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
    int s = L->s, tt = L->tt, co, r, tx0, a;
    for (co = 0; co < L->c; co++)
        for (r = r0; r < r1; r++) {
            float *plane = y + ((size_t)(r / tt) * L->c + co) * s * s;
            int ty = r % tt;
            for (tx0 = 0; tx0 < tt; tx0 += 16) {
                const float *in = m + (size_t)co * L->cols + (size_t)(r - r0) * tt + tx0;
                int cols = 2 * (tt - tx0 < 16 ? tt - tx0 : 16);
                __m512 t[4][2], o[2][2];
                unsigned keep;
                for (a = 0; a < 4; a++) {
                    __m512 m0 = _mm512_loadu_ps(in + (4 * a + 0) * L->mplane), m1 = _mm512_loadu_ps(in + (4 * a + 1) * L->mplane);
                    __m512 m2 = _mm512_loadu_ps(in + (4 * a + 2) * L->mplane), m3 = _mm512_loadu_ps(in + (4 * a + 3) * L->mplane);
                    t[a][0] = _mm512_add_ps(_mm512_add_ps(m0, m1), m2);
                    t[a][1] = _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3);
                }
                for (a = 0; a < 2; a++) {
                    o[0][a] = _mm512_add_ps(_mm512_add_ps(t[0][a], t[1][a]), t[2][a]);
                    o[1][a] = _mm512_sub_ps(_mm512_sub_ps(t[1][a], t[2][a]), t[3][a]);
                }
                if (2 * tx0 + cols > s) cols = s - 2 * tx0;
                keep = cols >= 32 ? 0xffffffffu : (1u << cols) - 1;
                for (a = 0; a < 2 && 2 * ty + a < s; a++) {
                    float *row = plane + (size_t)(2 * ty + a) * s + 2 * tx0;
                    _mm512_mask_storeu_ps(row, (__mmask16)keep, _mm512_permutex2var_ps(o[a][0], lo_i, o[a][1]));
                    _mm512_mask_storeu_ps(row + 16, (__mmask16)(keep >> 16), _mm512_permutex2var_ps(o[a][0], hi_i, o[a][1]));
                }
            }
        }
}

/* The forward, block by block; seconds of each part added to part[3]. */
static void winograd_forward(const layer *L, const float *x, const float *w, float *u, float *v,
                             float *m, float *y, double part[3]) {
    int total = L->n * L->tt, r0;
    double t0 = cpu_now(), t1;
    transform_weights(L, w, u);
    part[1] += cpu_now() - t0;
    for (r0 = 0; r0 < total; r0 += L->rows) {
        int r1 = r0 + L->rows < total ? r0 + L->rows : total;
        t0 = cpu_now();
        transform_input(L, x, r0, r1, v);
        t1 = cpu_now();
        multiply(L, u, v, (r1 - r0) * L->tt, m);
        part[0] += t1 - t0;
        t0 = cpu_now();
        part[1] += t0 - t1;
        transform_output(L, m, r0, r1, y);
        part[2] += cpu_now() - t0;
    }
}

static void run_layer(const char *name, int c, int s) {
    const int n = 48, reps = 15;
    layer L;
    dtnh_conv_geom g;
    dtnh_work work;
    size_t xs = (size_t)n * c * s * s, ws = (size_t)c * c * 9, i;
    float *x, *w, *y0, *y1, *u, *v, *m;
    double best_direct = 1e30, best_wino = 1e30, part[3] = {0, 0, 0}, err = 0, big = 0;
    dtnh_rng rng;
    int rep;
    layer_init(&L, n, c, s);
    x = floats(xs), w = floats(ws), y0 = floats(xs), y1 = floats(xs);
    u = floats(16 * (size_t)c * c), v = floats(16 * L.vplane), m = floats(16 * L.mplane);
    dtnh_conv_geom_init(&g, n, c, s, s, c, 3, 3, 1, 1, NULL);
    work.threads = 1;
    work.bytes = dtnh_conv_work_bytes(&g, 1);
    work.buf = floats(work.bytes / sizeof(float) + 16);
    if (!x || !w || !y0 || !y1 || !u || !v || !m || !work.buf) {
        printf("%s: out of memory\n", name);
        exit(1);
    }
    dtnh_rng_seed(&rng, 7);
    for (i = 0; i < xs; i++) x[i] = dtnh_rng_normal(&rng);
    for (i = 0; i < ws; i++) w[i] = 0.2f * dtnh_rng_normal(&rng);
    for (rep = 0; rep < reps; rep++) {
        double t0 = cpu_now(), t1, t2;
        dtnh_conv2d_forward(&g, x, w, NULL, y0, &work);
        t1 = cpu_now();
        winograd_forward(&L, x, w, u, v, m, y1, part);
        t2 = cpu_now();
        if (t1 - t0 < best_direct) best_direct = t1 - t0;
        if (t2 - t1 < best_wino) best_wino = t2 - t1;
    }
    for (i = 0; i < xs; i++) {
        if (fabs((double)y0[i] - y1[i]) > err) err = fabs((double)y0[i] - y1[i]);
        if (fabs((double)y0[i]) > big) big = fabs((double)y0[i]);
    }
    printf("%-24s %8.3f %9.3f %7.2fx   %.3f / %.3f / %.3f   %.1e of %.2f\n", name, 1e3 * best_direct,
           1e3 * best_wino, best_direct / best_wino, 1e3 * part[0] / reps, 1e3 * part[1] / reps,
           1e3 * part[2] / reps, err, big);
    free(x), free(w), free(y0), free(y1), free(u), free(v), free(m), free(work.buf);
}

int main(void) {
    printf("(c)'s 3x3 layers, batch 48, forward, 1 thread, best of 15 (ms, CPU time)\n");
    printf("%-24s %8s %9s %8s   %s   %s\n", "layer", "direct", "Winograd", "speedup",
           "input / weights+GEMM / output (mean)", "max |diff| of max |y|");
    run_layer("layer1 (16 ch, 28x28)", 16, 28);
    run_layer("layer2 (32 ch, 14x14)", 32, 14);
    run_layer("layer3 (64 ch, 7x7)", 64, 7);
    run_layer("layer4 (128 ch, 4x4)", 128, 4);
    return 0;
}

#else

int main(void) {
    printf("bench_winograd: the Winograd experiment is written for AVX-512; not run here\n");
    return 0;
}

#endif
