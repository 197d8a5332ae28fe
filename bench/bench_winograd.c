/* bench_winograd: the library's Winograd F(4x4, 3x3) (dtnh_conv_geom.winograd = 1) against
   its direct convolution, pass by pass, on the same-size 3x3 layers of bench_resnet's (c)
   (batch 48, 16 channels at 28x28 to 128 at 4x4) and (b) (batch 48, 64 channels at 32x32 to
   512 at 4x4). For each layer and pass (forward, backward-data, backward-weights): the best of
   `reps` calls on one thread (CPU time) both ways, their ratio, and the largest difference
   between the two results against the largest result. BENCHMARKS.md ("Session 7") reads it.
   Run:  make build/cc-omp1-san0/bench/bench_winograd && ./build/cc-omp1-san0/bench/bench_winograd
   Env:  DTNH_BENCH_ITERS=n  calls per figure (default 10) */
#define _POSIX_C_SOURCE 200809L
#define DTNH_IMPLEMENTATION
#include "../dtnh.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__AVX512F__) && !defined(DTNH_NO_SIMD)

static double cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static float *floats(size_t n) {
    void *p = NULL;
    if (posix_memalign(&p, 64, (n + 16) * sizeof(float))) return NULL;
    return (float *)p;
}

enum { FORWARD, BACKWARD_DATA, BACKWARD_WEIGHTS };

/* One pass of g into out. */
static void pass(int which, const dtnh_conv_geom *g, const float *x, const float *w, const float *dy, float *out,
                 const dtnh_work *work) {
    if (which == FORWARD) dtnh_conv2d_forward(g, x, w, NULL, out, work);
    else if (which == BACKWARD_DATA) dtnh_conv2d_backward_data(g, dy, w, out, work);
    else dtnh_conv2d_backward_weights(g, x, dy, out, NULL, 0, work);
}

/* max |a - b| / max |a| over n values. */
static double relative_difference(const float *a, const float *b, size_t n) {
    double diff = 0, big = 0;
    size_t i;
    for (i = 0; i < n; i++) {
        if (fabs((double)a[i] - b[i]) > diff) diff = fabs((double)a[i] - b[i]);
        if (fabs((double)a[i]) > big) big = fabs((double)a[i]);
    }
    return big > 0 ? diff / big : diff;
}

static int run_layer(const char *name, int c, int s, int reps) {
    static const char *const pass_name[3] = {"forward", "backward-data", "backward-weights"};
    const int n = 48;
    dtnh_conv_geom g, gw;
    dtnh_work work;
    size_t xs = (size_t)n * c * s * s, ws = (size_t)c * c * 9, i, outs[3];
    float *x = floats(xs), *w = floats(ws), *dy = floats(xs), *o0 = floats(xs > ws ? xs : ws), *o1 = floats(xs > ws ? xs : ws);
    dtnh_rng rng;
    int p, rep;
    dtnh_conv_geom_init(&g, n, c, s, s, c, 3, 3, 1, 1, NULL);
    gw = g;
    gw.winograd = 1;
    work.threads = 1;
    work.bytes = dtnh_conv_work_bytes(&gw, 1);
    work.buf = floats(work.bytes / sizeof(float) + 16);
    if (!x || !w || !dy || !o0 || !o1 || !work.buf) {
        printf("%s: out of memory\n", name);
        return 1;
    }
    dtnh_rng_seed(&rng, 7);
    for (i = 0; i < xs; i++) x[i] = dtnh_rng_normal(&rng), dy[i] = dtnh_rng_normal(&rng);
    for (i = 0; i < ws; i++) w[i] = 0.2f * dtnh_rng_normal(&rng);
    outs[FORWARD] = outs[BACKWARD_DATA] = xs;
    outs[BACKWARD_WEIGHTS] = ws;
    for (p = 0; p < 3; p++) {
        double best_direct = 1e30, best_wino = 1e30;
        for (rep = 0; rep < reps; rep++) { /* interleaved, so both see the same machine */
            double t0 = cpu_now(), t1, t2;
            pass(p, &g, x, w, dy, o0, &work);
            t1 = cpu_now();
            pass(p, &gw, x, w, dy, o1, &work);
            t2 = cpu_now();
            if (t1 - t0 < best_direct) best_direct = t1 - t0;
            if (t2 - t1 < best_wino) best_wino = t2 - t1;
        }
        printf("%-26s %-17s %8.3f %9.3f %7.2fx   %.1e\n", p ? "" : name, pass_name[p], 1e3 * best_direct,
               1e3 * best_wino, best_direct / best_wino, relative_difference(o0, o1, outs[p]));
    }
    free(x), free(w), free(dy), free(o0), free(o1), free(work.buf);
    return 0;
}

int main(void) {
    const char *it = getenv("DTNH_BENCH_ITERS");
    int reps = it ? atoi(it) : 10, bad = 0;
    if (reps < 1) reps = 1;
    printf("same-size 3x3 layers, batch 48, 1 thread, best of %d (ms, CPU time)\n", reps);
    printf("%-26s %-17s %8s %9s %8s   %s\n", "layer", "pass", "direct", "Winograd", "speedup", "max |diff| / max |out|");
    bad |= run_layer("(c) layer1: 16 ch, 28x28", 16, 28, reps);
    bad |= run_layer("(c) layer2: 32 ch, 14x14", 32, 14, reps);
    bad |= run_layer("(c) layer3: 64 ch, 7x7", 64, 7, reps);
    bad |= run_layer("(c) layer4: 128 ch, 4x4", 128, 4, reps);
    bad |= run_layer("(b) layer1: 64 ch, 32x32", 64, 32, reps);
    bad |= run_layer("(b) layer2: 128 ch, 16x16", 128, 16, reps);
    bad |= run_layer("(b) layer3: 256 ch, 8x8", 256, 8, reps);
    bad |= run_layer("(b) layer4: 512 ch, 4x4", 512, 4, reps);
    return bad;
}

#else

int main(void) {
    printf("bench_winograd: Winograd exists in AVX-512 builds only; not run here\n");
    return 0;
}

#endif
