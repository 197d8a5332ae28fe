/* bench_gemm: GFLOP/s of dtnh_sgemm on the GEMM shapes of ResNet-18's convolutions (forward,
   backward-data, backward-weights; ImageNet stem at 224x224 batch 8, CIFAR stem at 32x32 batch
   48, width 64), at 1 and 2 threads, as a fraction of this machine's fp32 FMA peak measured
   here by an FMA loop, next to OpenBLAS's cblas_sgemm on the same shapes when
   libopenblas.so.0 can be loaded; then the convolution calls themselves (implicit im2col or
   direct), those layers and the width-16 28x28 network's (bench_resnet's configuration (c)).
   Run:  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE make bench
   Each figure is the median of 7 timed samples (wall clock; DTNH_BENCH_SAMPLES below). The
   machine is shared, so each row also gives load-robust figures: at 1 thread GFLOP per second
   of the thread's own CPU time (time-slicing by other jobs does not count), at 2 threads the
   best sample.
   Env: DTNH_BENCH_THREADS=t runs the "2t" columns on t threads instead (a larger machine);
   DTNH_BENCH_SAMPLES=s takes s samples per figure (up to 63; more make the best samples
   steadier where other machines' jobs share the caches and memory); DTNH_BENCH_BRIEF (below)
   prints one line per figure for tools/ab-bench. */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#define DTNH_IMPLEMENTATION
#include "../dtnh.h"

#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int team = 2; /* the thread count of the "2t" columns (DTNH_BENCH_THREADS) */
/* DTNH_BENCH_BRIEF=gemm|conv|all|ob: one line per figure, 1 thread, CPU time only, of the GEMM
   shapes, the convolution calls, both, or OpenBLAS's GEMM on the shapes; for tools/ab-bench,
   which runs the builds of several headers in turn */
static int brief = 0; /* 1 ours, 2 OpenBLAS */

static void set_threads(int t) {
#ifdef _OPENMP
    omp_set_num_threads(t);
#else
    (void)t;
#endif
}

static double thread_cpu(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- FMA peak: independent FMA chains, enough to cover latency times ports, timed by the
   thread's own CPU time so other jobs on the machine do not lower it ---------------------- */

static double fma_loop(long iters, float seed) {
#if defined(__AVX512F__)
    const char *isa = "AVX-512";
    __m512 m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f), acc[16];
    const int lanes = 16, chains = 16;
#elif defined(__AVX2__) && defined(__FMA__)
    __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f), acc[12];
    const int lanes = 8, chains = 12;
#endif
    double t0, t1, sum = 0;
    long i;
    int k;
#if defined(__AVX512F__)
    (void)isa;
    for (k = 0; k < chains; k++) acc[k] = _mm512_set1_ps(seed + (float)k);
    t0 = thread_cpu();
    for (i = 0; i < iters; i++) {
#define F(k) acc[k] = _mm512_fmadd_ps(acc[k], m, c)
        F(0); F(1); F(2); F(3); F(4); F(5); F(6); F(7);
        F(8); F(9); F(10); F(11); F(12); F(13); F(14); F(15);
#undef F
    }
    t1 = thread_cpu();
    for (k = 0; k < chains; k++) sum += _mm512_reduce_add_ps(acc[k]);
#elif defined(__AVX2__) && defined(__FMA__)
    for (k = 0; k < chains; k++) acc[k] = _mm256_set1_ps(seed + (float)k);
    t0 = thread_cpu();
    for (i = 0; i < iters; i++) {
#define F(k) acc[k] = _mm256_fmadd_ps(acc[k], m, c)
        F(0); F(1); F(2); F(3); F(4); F(5); F(6); F(7); F(8); F(9); F(10); F(11);
#undef F
    }
    t1 = thread_cpu();
    for (k = 0; k < chains; k++) {
        float v[8];
        _mm256_storeu_ps(v, acc[k]);
        sum += v[0];
    }
#else
    const int lanes = 1, chains = 8;
    float acc[8];
    for (k = 0; k < chains; k++) acc[k] = seed + (float)k;
    t0 = thread_cpu();
    for (i = 0; i < iters; i++)
        for (k = 0; k < chains; k++) acc[k] = acc[k] * 0.999999f + 1e-7f;
    t1 = thread_cpu();
    for (k = 0; k < chains; k++) sum += acc[k];
#endif
    if (sum == 12345.678) printf("!"); /* keeps the loop alive */
    return 2.0 * lanes * chains * (double)iters / (t1 - t0) * 1e-9;
}

static const char *isa_name(void) {
#if defined(__AVX512F__)
    return "AVX-512";
#elif defined(__AVX2__) && defined(__FMA__)
    return "AVX2+FMA";
#else
    return "scalar";
#endif
}

/* GFLOP/s of the whole team (best of 5 runs, each thread running the loop). */
static double fma_peak(int threads) {
    double best = 0;
    int r;
    set_threads(threads);
    for (r = 0; r < 5; r++) {
        double total = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) reduction(+ : total)
#endif
        total += fma_loop(20000000L, 1.0f + (float)r);
        if (total > best) best = total;
    }
    return best;
}

/* ---- OpenBLAS through dlopen -------------------------------------------------------------- */

typedef void (*cblas_sgemm_fn)(int, int, int, int, int, int, float, const float *, int,
                               const float *, int, float, float *, int);
typedef void (*set_threads_fn)(int);
static cblas_sgemm_fn ob_sgemm;
static set_threads_fn ob_set_threads;

static int load_openblas(void) {
    void *h = dlopen("libopenblas.so.0", RTLD_NOW | RTLD_LOCAL), *f, *g;
    if (!h) return 0;
    f = dlsym(h, "cblas_sgemm");
    g = dlsym(h, "openblas_set_num_threads");
    if (!f || !g) return 0;
    memcpy(&ob_sgemm, &f, sizeof f); /* object to function pointer without a pedantic cast */
    memcpy(&ob_set_threads, &g, sizeof g);
    return 1;
}

/* ---- timing ---------------------------------------------------------------------------- */

typedef void (*job_fn)(void *ctx);

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Seconds per call: median (the upper middle one for an even count) and best wall-clock
   sample, best calling-thread CPU time; `samples` samples, each long enough (~30 ms) to time
   reliably. */
typedef struct timing {
    double median, best, cpu;
} timing;

#define MAX_SAMPLES 63
static int samples = 7; /* timed samples per figure (DTNH_BENCH_SAMPLES) */

static timing time_job(job_fn fn, void *ctx) {
    double t0, c0, once, s[MAX_SAMPLES];
    timing tm;
    int reps, r, i;
    fn(ctx); /* warm up: page faults, caches, thread start */
    t0 = now();
    fn(ctx);
    once = now() - t0;
    reps = once > 0.03 ? 1 : (int)(0.03 / (once + 1e-9)) + 1;
    tm.cpu = 1e30;
    for (i = 0; i < samples; i++) {
        t0 = now();
        c0 = thread_cpu();
        for (r = 0; r < reps; r++) fn(ctx);
        s[i] = (now() - t0) / reps;
        c0 = (thread_cpu() - c0) / reps;
        if (c0 < tm.cpu) tm.cpu = c0;
    }
    qsort(s, (size_t)samples, sizeof s[0], cmp_double);
    tm.median = s[samples / 2];
    tm.best = s[0];
    return tm;
}

typedef struct gemm_job {
    dtnh_trans ta, tb;
    int M, N, K, lda, ldb;
    const float *A, *B;
    float *C;
    const dtnh_work *work;
} gemm_job;

static void run_dtnh(void *v) {
    gemm_job *j = (gemm_job *)v;
    dtnh_sgemm(j->ta, j->tb, j->M, j->N, j->K, 1.0f, j->A, j->lda, j->B, j->ldb, 0.0f, j->C, j->N,
               j->work);
}
static void run_openblas(void *v) {
    gemm_job *j = (gemm_job *)v;
    ob_sgemm(101, j->ta ? 112 : 111, j->tb ? 112 : 111, j->M, j->N, j->K, 1.0f, j->A, j->lda, j->B,
             j->ldb, 0.0f, j->C, j->N);
}

/* ---- the shapes ---------------------------------------------------------------------------- */

typedef struct conv_layer {
    const char *name;
    int n, c_in, h, c_out, k, stride, pad;
} conv_layer;

static const conv_layer layers[] = {
    {"in224 conv1", 8, 3, 224, 64, 7, 2, 3},    {"in224 layer1", 8, 64, 56, 64, 3, 1, 1},
    {"in224 l2.down3", 8, 64, 56, 128, 3, 2, 1}, {"in224 l2.ds1x1", 8, 64, 56, 128, 1, 2, 0},
    {"in224 layer2", 8, 128, 28, 128, 3, 1, 1}, {"in224 l3.down3", 8, 128, 28, 256, 3, 2, 1},
    {"in224 l3.ds1x1", 8, 128, 28, 256, 1, 2, 0}, {"in224 layer3", 8, 256, 14, 256, 3, 1, 1},
    {"in224 l4.down3", 8, 256, 14, 512, 3, 2, 1}, {"in224 l4.ds1x1", 8, 256, 14, 512, 1, 2, 0},
    {"in224 layer4", 8, 512, 7, 512, 3, 1, 1},
    {"c32 conv1", 48, 3, 32, 64, 3, 1, 1},        {"c32 layer1", 48, 64, 32, 64, 3, 1, 1},
    {"c32 l2.down3", 48, 64, 32, 128, 3, 2, 1},   {"c32 l2.ds1x1", 48, 64, 32, 128, 1, 2, 0},
    {"c32 layer2", 48, 128, 16, 128, 3, 1, 1},    {"c32 l3.down3", 48, 128, 16, 256, 3, 2, 1},
    {"c32 l3.ds1x1", 48, 128, 16, 256, 1, 2, 0},  {"c32 layer3", 48, 256, 8, 256, 3, 1, 1},
    {"c32 l4.down3", 48, 256, 8, 512, 3, 2, 1},   {"c32 l4.ds1x1", 48, 256, 8, 512, 1, 2, 0},
    {"c32 layer4", 48, 512, 4, 512, 3, 1, 1}};

/* Configuration (c) of bench_resnet (width 16, 28x28x1, batch 48): timed as convolution calls
   only (its GEMM shapes are not among issue 2's). */
static const conv_layer conv_only_layers[] = {
    {"c28w16 conv1", 48, 1, 28, 16, 3, 1, 1},     {"c28w16 layer1", 48, 16, 28, 16, 3, 1, 1},
    {"c28w16 l2.down3", 48, 16, 28, 32, 3, 2, 1}, {"c28w16 l2.ds1x1", 48, 16, 28, 32, 1, 2, 0},
    {"c28w16 layer2", 48, 32, 14, 32, 3, 1, 1},   {"c28w16 l3.down3", 48, 32, 14, 64, 3, 2, 1},
    {"c28w16 l3.ds1x1", 48, 32, 14, 64, 1, 2, 0}, {"c28w16 layer3", 48, 64, 7, 64, 3, 1, 1},
    {"c28w16 l4.down3", 48, 64, 7, 128, 3, 2, 1}, {"c28w16 l4.ds1x1", 48, 64, 7, 128, 1, 2, 0},
    {"c28w16 layer4", 48, 128, 4, 128, 3, 1, 1}};

static float *random_floats(size_t n, unsigned seed) {
    float *x = (float *)malloc(n * sizeof(float));
    dtnh_rng r;
    size_t i;
    dtnh_rng_seed(&r, seed);
    for (i = 0; i < n; i++) x[i] = dtnh_rng_uniform(&r) - 0.5f;
    return x;
}

typedef struct summary {
    double min_big, min_small, min_ratio1, min_ratio2, min_scale, sum_scale;
    double min_big_r, min_small_r, min_ratio1_r, min_ratio2_r, min_scale_r, sum_scale_r;
    int n_scale;
    /* how many shapes meet each target (load-robust figures), and of how many */
    int big_met, big_of, small_met, small_of, ob1_met, ob2_met, ob_of, scale_met;
} summary;

static void keep_min(double *m, double v) {
    if (v < *m) *m = v;
}

static void tally(int *met, int *of, int ok) {
    *met += ok;
    if (of) ++*of;
}

/* One GEMM shape: ours at 1 and 2 threads, OpenBLAS likewise; prints a row. Ratios "r" use
   the load-robust figures (1 thread: CPU time; 2 threads: best sample). */
static void bench_gemm_shape(const char *name, const char *pass, dtnh_trans ta, dtnh_trans tb,
                             int M, int N, int K, int small, const dtnh_work *work, double peak1,
                             int have_ob, summary *sm) {
    gemm_job j;
    double flop = 2.0 * M * N * K * 1e-9, maxdiff = 0;
    timing d1, d2, o1, o2;
    float *C2;
    size_t i;
    j.ta = ta; j.tb = tb; j.M = M; j.N = N; j.K = K;
    j.lda = ta ? M : K;
    j.ldb = tb ? K : N;
    j.A = random_floats((size_t)M * K, 1);
    j.B = random_floats((size_t)K * N, 2);
    j.C = (float *)malloc((size_t)M * N * sizeof(float));
    j.work = work;
    set_threads(1);
    if (brief) {
        if (brief == 2) ob_set_threads(1);
        d1 = time_job(brief == 2 ? run_openblas : run_dtnh, &j);
        printf("gemm %s %s %d %d %d %.2f\n", name, pass, M, N, K, flop / d1.cpu);
        fflush(stdout);
        free((void *)j.A);
        free((void *)j.B);
        free(j.C);
        return;
    }
    d1 = time_job(run_dtnh, &j);
    set_threads(team);
    d2 = time_job(run_dtnh, &j);
    printf("%-15s %-4s %5d %6d %6d | %6.1f %6.1f %5.1f%% | %6.1f %6.1f %5.2fx", name, pass, M, N,
           K, flop / d1.median, flop / d1.cpu, 100.0 * flop / d1.cpu / peak1, flop / d2.median,
           flop / d2.best, d1.cpu / d2.best);
    if (have_ob) {
        C2 = (float *)malloc((size_t)M * N * sizeof(float));
        memcpy(C2, j.C, (size_t)M * N * sizeof(float));
        ob_set_threads(1);
        o1 = time_job(run_openblas, &j);
        ob_set_threads(team);
        o2 = time_job(run_openblas, &j);
        for (i = 0; i < (size_t)M * N; i++) {
            double d = fabs((double)C2[i] - j.C[i]) / (1e-3 + fabs((double)j.C[i]));
            if (d > maxdiff) maxdiff = d;
        }
        free(C2);
        printf(" | %6.1f %5.2fx %6.1f %5.2fx | %6.1f %5.2fx %6.1f %5.2fx %7.1e", flop / o1.median,
               o1.median / d1.median, flop / o1.cpu, o1.cpu / d1.cpu, flop / o2.median,
               o2.median / d2.median, flop / o2.best, o2.best / d2.best, maxdiff);
        keep_min(&sm->min_ratio1, o1.median / d1.median);
        keep_min(&sm->min_ratio2, o2.median / d2.median);
        keep_min(&sm->min_ratio1_r, o1.cpu / d1.cpu);
        keep_min(&sm->min_ratio2_r, o2.best / d2.best);
        tally(&sm->ob1_met, &sm->ob_of, o1.cpu >= d1.cpu);
        tally(&sm->ob2_met, NULL, o2.best >= d2.best);
    }
    printf("\n");
    fflush(stdout);
    if (M >= 256 && N >= 256 && K >= 256) {
        keep_min(&sm->min_big, flop / d1.median / peak1);
        keep_min(&sm->min_big_r, flop / d1.cpu / peak1);
        tally(&sm->big_met, &sm->big_of, flop / d1.cpu / peak1 >= 0.8);
    }
    if (small) {
        keep_min(&sm->min_small, flop / d1.median / peak1);
        keep_min(&sm->min_small_r, flop / d1.cpu / peak1);
        tally(&sm->small_met, &sm->small_of, flop / d1.cpu / peak1 >= 0.6);
    }
    keep_min(&sm->min_scale, d1.median / d2.median);
    keep_min(&sm->min_scale_r, d1.cpu / d2.best);
    sm->sum_scale += d1.median / d2.median;
    sm->sum_scale_r += d1.cpu / d2.best;
    sm->n_scale++;
    tally(&sm->scale_met, NULL, d1.cpu / d2.best >= 1.8);
    free((void *)j.A);
    free((void *)j.B);
    free(j.C);
}

typedef struct conv_job {
    const dtnh_conv_geom *g;
    const float *x, *w, *dy;
    float *y, *dx, *dw;
    const dtnh_work *work;
    int pass;
} conv_job;

static void run_conv(void *v) {
    conv_job *j = (conv_job *)v;
    if (j->pass == 0) dtnh_conv2d_forward(j->g, j->x, j->w, NULL, j->y, j->work);
    else if (j->pass == 1) dtnh_conv2d_backward_data(j->g, j->dy, j->w, j->dx, j->work);
    else dtnh_conv2d_backward_weights(j->g, j->x, j->dy, j->dw, NULL, 0, j->work);
}

/* The three convolution calls of one layer at 1 and 2 threads. */
static void bench_conv_layer(const conv_layer *L, double peak1) {
    static const char *passes[3] = {"fwd", "bwdD", "bwdW"};
    dtnh_conv_geom g;
    dtnh_work work;
    conv_job j;
    void *mem;
    size_t bytes;
    int p;
    if (dtnh_conv_geom_init(&g, L->n, L->c_in, L->h, L->h, L->c_out, L->k, L->k, L->stride, L->pad,
                            NULL))
        return;
    bytes = dtnh_conv_work_bytes(&g, team);
    mem = malloc(bytes);
    work.buf = mem;
    work.bytes = bytes;
    work.threads = team;
    j.g = &g;
    j.work = &work;
    j.x = random_floats((size_t)g.n * g.c_in * g.h * g.w, 3);
    j.w = random_floats((size_t)g.c_out * g.c_in * g.kh * g.kw, 4);
    j.dy = random_floats((size_t)g.n * g.c_out * g.oh * g.ow, 5);
    j.y = (float *)malloc((size_t)g.n * g.c_out * g.oh * g.ow * sizeof(float));
    j.dx = (float *)malloc((size_t)g.n * g.c_in * g.h * g.w * sizeof(float));
    j.dw = (float *)malloc((size_t)g.c_out * g.c_in * g.kh * g.kw * sizeof(float));
    for (p = 0; p < 3; p++) {
        double flop = 2.0 * g.c_out * ((double)g.n * g.oh * g.ow) * g.c_in * g.kh * g.kw;
        timing t1, t2;
        j.pass = p;
        set_threads(1);
        t1 = time_job(run_conv, &j);
        if (brief) {
            printf("conv %s %s %.2f\n", L->name, passes[p], flop * 1e-9 / t1.cpu);
            fflush(stdout);
            continue;
        }
        set_threads(team);
        t2 = time_job(run_conv, &j);
        flop *= 1e-9;
        printf("%-15s %-4s | %6.1f %6.1f %5.1f%% | %6.1f %6.1f %5.2fx | %6.2f MB\n", L->name,
               passes[p], flop / t1.median, flop / t1.cpu, 100.0 * flop / t1.cpu / peak1,
               flop / t2.median, flop / t2.best, t1.cpu / t2.best, (double)bytes / 1048576.0);
        fflush(stdout);
    }
    free((void *)j.x); free((void *)j.w); free((void *)j.dy);
    free(j.y); free(j.dx); free(j.dw); free(mem);
}

/* The GEMM rows: each layer's forward, backward-data and backward-weights shapes. */
static void bench_gemm_shapes(const char *only, const dtnh_work *work, double peak1, int have_ob,
                              summary *sm) {
    size_t i;
    for (i = 0; i < sizeof layers / sizeof layers[0]; i++) {
        const conv_layer *L = &layers[i];
        int o = (L->h + 2 * L->pad - L->k) / L->stride + 1, kk = L->c_in * L->k * L->k;
        int cols = L->n * o * o, small = strstr(L->name, "c32 layer4") != NULL;
        if (only && !strstr(L->name, only)) continue;
        bench_gemm_shape(L->name, "fwd", DTNH_NO_TRANS, DTNH_NO_TRANS, L->c_out, cols, kk, small,
                         work, peak1, have_ob, sm);
        if (L->c_in > 3) /* the stem's input gradient is never needed */
            bench_gemm_shape(L->name, "bwdD", DTNH_TRANS, DTNH_NO_TRANS, kk, cols, L->c_out, small,
                             work, peak1, have_ob, sm);
        bench_gemm_shape(L->name, "bwdW", DTNH_NO_TRANS, DTNH_TRANS, L->c_out, kk, cols, small,
                         work, peak1, have_ob, sm);
    }
}

/* The convolution rows: those layers' calls, then configuration (c)'s. */
static void bench_conv_layers(const char *only, double peak1) {
    size_t i;
    for (i = 0; i < sizeof layers / sizeof layers[0]; i++)
        if (!only || strstr(layers[i].name, only)) bench_conv_layer(&layers[i], peak1);
    for (i = 0; i < sizeof conv_only_layers / sizeof conv_only_layers[0]; i++)
        if (!only || strstr(conv_only_layers[i].name, only)) bench_conv_layer(&conv_only_layers[i], peak1);
}

/* The brief mode's figures (see `brief`). */
static int brief_run(const char *what, const char *only, int have_ob) {
    int gemm = !strcmp(what, "gemm") || !strcmp(what, "all") || !strcmp(what, "ob");
    int conv = !strcmp(what, "conv") || !strcmp(what, "all");
    summary sm; /* not read in the brief mode */
    dtnh_work work;
    memset(&sm, 0, sizeof sm);
    if (!gemm && !conv) {
        fprintf(stderr, "DTNH_BENCH_BRIEF=%s: expected gemm, conv, all or ob\n", what);
        return 2;
    }
    if (!strcmp(what, "ob") && !have_ob) {
        fprintf(stderr, "DTNH_BENCH_BRIEF=ob: libopenblas.so.0 not found\n");
        return 2;
    }
    brief = !strcmp(what, "ob") ? 2 : 1;
    work.bytes = dtnh_gemm_work_bytes(1);
    work.buf = malloc(work.bytes);
    work.threads = 1;
    if (gemm) bench_gemm_shapes(only, &work, 1.0, 0, &sm);
    if (conv) bench_conv_layers(only, 1.0);
    free(work.buf);
    return 0;
}

int main(int argc, char **argv) {
    const char *only = argc > 1 ? argv[1] : NULL; /* run only layers whose name has this */
    double peak1, peak2;
    const char *th = getenv("DTNH_BENCH_THREADS"), *sm_env = getenv("DTNH_BENCH_SAMPLES");
    const char *br = getenv("DTNH_BENCH_BRIEF");
    int have_ob = load_openblas(), nthreads = dtnh_threads();
    size_t bytes;
    dtnh_work work;
    summary sm;
    FILE *f = fopen("/proc/loadavg", "r");
    char load[64] = "?";
    if (f) {
        if (!fgets(load, sizeof load, f)) strcpy(load, "?");
        fclose(f);
        load[strcspn(load, "\n")] = 0;
    }
    if (sm_env && atoi(sm_env) >= 1) samples = atoi(sm_env) < MAX_SAMPLES ? atoi(sm_env) : MAX_SAMPLES;
    if (br && *br) return brief_run(br, only, have_ob);
#ifdef __clang__
    printf("compiler: clang %s, ", __clang_version__);
#elif defined(__GNUC__)
    printf("compiler: gcc %s, ", __VERSION__);
#endif
    printf("kernel ISA: %s (MR %d x NR %d), OpenMP threads %d, load average: %s\n", isa_name(),
           DTNH__MR, DTNH__NR, nthreads, load);
#ifndef _OPENMP
    printf("built without OpenMP: the 2-thread columns run on one thread\n");
#endif
    peak1 = fma_peak(1);
    if (th && atoi(th) >= 1) team = atoi(th);
    if (team != 2) printf("DTNH_BENCH_THREADS=%d: the \"2t\" columns below run on %d threads\n", team, team);
    if (samples != 7) printf("DTNH_BENCH_SAMPLES=%d: %d timed samples per figure\n", samples, samples);
    bytes = dtnh_gemm_work_bytes(team);
    peak2 = fma_peak(team);
    printf("fp32 FMA peak (%s loop): %.1f GFLOP/s on 1 thread, %.1f on %d\n", isa_name(), peak1,
           peak2, team);
    if (have_ob) {
        const char *ct = getenv("OPENBLAS_CORETYPE");
        printf("OpenBLAS: libopenblas.so.0 loaded%s%s%s\n", ct ? " (OPENBLAS_CORETYPE=" : "",
               ct ? ct : "", ct ? " is set: not its best kernels)" : "");
    } else {
        printf("OpenBLAS: libopenblas.so.0 not found, comparison skipped\n");
    }
    work.buf = malloc(bytes);
    work.bytes = bytes;
    work.threads = team;
    memset(&sm, 0, sizeof sm); /* sums and counts; the minima start high */
    sm.min_big = sm.min_small = sm.min_ratio1 = sm.min_ratio2 = sm.min_scale = 1e9;
    sm.min_big_r = sm.min_small_r = sm.min_ratio1_r = sm.min_ratio2_r = sm.min_scale_r = 1e9;
    printf("\nGEMM (fwd: NN, bwdD: TN, bwdW: NT, row-major), GFLOP/s. med: median wall clock;\n"
           "cpu: per second of the thread's CPU time; best: best wall-clock sample;\n"
           "%%peak from cpu; 2/1 = cpu time at 1 thread / best at 2; vs OB = OpenBLAS time / ours\n");
    printf("%-15s %-4s %5s %6s %6s | %6s %6s %6s | %6s %6s %6s", "layer", "pass", "M", "N", "K",
           "1t med", "1t cpu", "%peak", "2t med", "2t bst", "2/1");
    if (have_ob)
        printf(" | %6s %6s %6s %6s | %6s %6s %6s %6s %7s", "OB1med", "vs OB", "OB1cpu", "vs OB",
               "OB2med", "vs OB", "OB2bst", "vs OB", "maxdiff");
    printf("\n");
    bench_gemm_shapes(only, &work, peak1, have_ob, &sm);
    printf("\nsummary (median wall clock | load-robust: cpu at 1 thread, best at 2):\n");
    printf("  1 thread, M,N,K >= 256: min %.1f%% | %.1f%% of the FMA peak\n", 100 * sm.min_big,
           100 * sm.min_big_r);
    printf("  smallest shapes (c32 layer4, N = 16*batch): min %.1f%% | %.1f%%\n",
           100 * sm.min_small, 100 * sm.min_small_r);
    if (have_ob)
        printf("  vs OpenBLAS: min %.2fx | %.2fx at 1 thread, %.2fx | %.2fx at 2 threads\n",
               sm.min_ratio1, sm.min_ratio1_r, sm.min_ratio2, sm.min_ratio2_r);
    printf("  2 threads / 1 thread: min %.2fx | %.2fx, mean %.2fx | %.2fx\n", sm.min_scale,
           sm.min_scale_r, sm.sum_scale / sm.n_scale, sm.sum_scale_r / sm.n_scale);
    printf("  shapes meeting each target, load-robust: >= 80%% %d of %d, >= 60%% %d of %d",
           sm.big_met, sm.big_of, sm.small_met, sm.small_of);
    if (have_ob)
        printf(", >= 1.0x OpenBLAS %d of %d at 1 thread and %d at 2", sm.ob1_met, sm.ob_of,
               sm.ob2_met);
    printf(", >= 1.8x %d of %d\n", sm.scale_met, sm.n_scale);
    printf("\nconvolution calls (implicit im2col), GFLOP/s (2*c_out*n*oh*ow*c_in*k*k per pass)\n");
    printf("%-15s %-4s | %6s %6s %6s | %6s %6s %6s | %9s\n", "layer", "pass", "1t med", "1t cpu",
           "%peak", "2t med", "2t bst", "2/1", "work");
    bench_conv_layers(only, peak1);
    f = fopen("/proc/loadavg", "r");
    if (f) {
        if (!fgets(load, sizeof load, f)) strcpy(load, "?");
        fclose(f);
        load[strcspn(load, "\n")] = 0;
        printf("\nload average at the end: %s (above ~0.5 other jobs shared the two cores: noisy)\n", load);
    }
    free(work.buf);
    return 0;
}
