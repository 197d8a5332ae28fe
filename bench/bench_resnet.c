/* bench_resnet: ResNet-18 training and inference on the CPU, against PyTorch.
   Configurations (issue 3): (a) ImageNet stem, 224x224x3, batch 8, 1000 classes; (b) CIFAR
   stem, 32x32x3, batch 48, 10 classes; (c) CIFAR stem, width 16, 28x28x1, batch 48, 10
   classes; each at 1 and 2 threads (or the counts asked). Per configuration: training-step
   throughput (forward, cross-entropy, backward, SGD with momentum 0.9) and inference
   throughput in images/s, the achieved GFLOP/s and its fraction of this machine's FMA peak
   (an FMA loop measures it), the arena bytes beside the analytic minimum (BENCHMARKS.md
   defines it: weights, gradients, momentum and the source copy, plus the activations backward
   reads, PyTorch's set; dtnh recomputes some of them, so its arena can be below it), and the
   peak RSS of a process that ran only that configuration. When /usr/bin/python3 (or
   DTNH_BENCH_PYTHON) has torch, the same configuration runs in PyTorch
   (bench/bench_resnet_torch.py, its thread count set) and the ratios are printed.
   Run:   make bench   (or build/.../bench/bench_resnet [a|b|c])
   Env:   DTNH_BENCH_ITERS=n   timed steps per figure (median; default 10, 1 for a smoke run)
          DTNH_BENCH_NO_TORCH=1 skip PyTorch
          DTNH_BENCH_THREADS=list  thread counts to run, e.g. 2 or 1,4,8,16 (default: 1,2)
          DTNH_BENCH_PYTHON=path   the Python with torch (default /usr/bin/python3)
          DTNH_BENCH_WINOGRAD=keys configurations also run with dtnh_resnet_config.winograd = 1
                                   ("dtnh W" lines; default abc, "-" for none)
   Each configuration runs in a child process, so its peak RSS is its own. */
#define _POSIX_C_SOURCE 200809L
#define DTNH_IMPLEMENTATION
#include "../dtnh.h"
#include "../dtnh_nn.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

static double cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void set_threads(int t) {
#ifdef _OPENMP
    omp_set_num_threads(t);
#else
    (void)t;
#endif
}

/* ---- FMA peak: independent FMA chains, enough to cover latency times ports ------------------ */

static double fma_loop(long iters, float seed) {
    double t0, t1, sum = 0;
    long i;
    int k;
#if defined(__AVX512F__)
    __m512 m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f), acc[16];
    const int lanes = 16, chains = 16;
    for (k = 0; k < chains; k++) acc[k] = _mm512_set1_ps(seed + (float)k);
    t0 = now();
    for (i = 0; i < iters; i++)
        for (k = 0; k < 16; k++) acc[k] = _mm512_fmadd_ps(acc[k], m, c);
    t1 = now();
    for (k = 0; k < chains; k++) sum += _mm512_reduce_add_ps(acc[k]);
#elif defined(__AVX2__) && defined(__FMA__)
    __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f), acc[12];
    const int lanes = 8, chains = 12;
    for (k = 0; k < chains; k++) acc[k] = _mm256_set1_ps(seed + (float)k);
    t0 = now();
    for (i = 0; i < iters; i++)
        for (k = 0; k < 12; k++) acc[k] = _mm256_fmadd_ps(acc[k], m, c);
    t1 = now();
    for (k = 0; k < chains; k++) {
        float v[8];
        _mm256_storeu_ps(v, acc[k]);
        sum += v[0];
    }
#else
    const int lanes = 1, chains = 8;
    float acc[8];
    for (k = 0; k < chains; k++) acc[k] = seed + (float)k;
    t0 = now();
    for (i = 0; i < iters; i++)
        for (k = 0; k < chains; k++) acc[k] = acc[k] * 0.999999f + 1e-7f;
    t1 = now();
    for (k = 0; k < chains; k++) sum += acc[k];
#endif
    if (sum == 12345.678) printf("!"); /* keeps the loop alive */
    return 2.0 * lanes * chains * (double)iters / (t1 - t0) * 1e-9;
}

/* GFLOP/s of the whole team (best of 3 runs, each thread running the loop). */
static double fma_peak(int threads) {
    double best = 0;
    int r;
    set_threads(threads);
    for (r = 0; r < 3; r++) {
        double total = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) reduction(+ : total)
#endif
        total += fma_loop(20000000L, 1.0f + (float)r);
        if (total > best) best = total;
    }
    return best;
}

/* ---- configurations and results ------------------------------------------------------------ */

typedef struct bench_cfg {
    char key;
    const char *name, *torch_stem;
    dtnh_stem stem;
    int width, in_ch, hw, batch, classes;
} bench_cfg;

static const bench_cfg configs[3] = {
    {'a', "(a) ImageNet stem 224x224x3, batch 8", "imagenet", DTNH_STEM_IMAGENET, 64, 3, 224, 8, 1000},
    {'b', "(b) CIFAR stem 32x32x3, batch 48", "cifar", DTNH_STEM_CIFAR, 64, 3, 32, 48, 10},
    {'c', "(c) CIFAR stem width 16, 28x28x1, batch 48", "cifar", DTNH_STEM_CIFAR, 16, 1, 28, 48, 10}};

typedef struct result {
    int ok;
    char error[DTNH_ERROR_MSG_SIZE];
    double train_ips, train_spread, infer_ips, step_gflop, infer_gflop;
    double train_cpu_ips; /* by the process's CPU time: time-slicing by other jobs not counted */
    size_t arena, minimum, weights, gradients, momentum, source, activations, persistent, step;
    size_t recomputed; /* of the activations, those backward recomputes instead of keeping */
    long rss_kb;
} result;

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Median of t[0..n) (sorted in place) and the spread (max - min) / median. */
static double median(double *t, int n, double *spread) {
    double m;
    qsort(t, (size_t)n, sizeof t[0], cmp_double);
    m = t[n / 2];
    if (spread) *spread = (t[n - 1] - t[0]) / m;
    return m;
}

static unsigned char *aligned_block(size_t bytes, unsigned char **raw) {
    *raw = (unsigned char *)malloc(bytes + 64);
    return *raw ? *raw + (64 - (uintptr_t)*raw % 64) % 64 : NULL;
}

static dtnh_resnet_config net_config(const bench_cfg *b, int threads, int winograd) {
    dtnh_resnet_config c;
    memset(&c, 0, sizeof c);
    c.stem = b->stem;
    c.width = b->width;
    c.in_channels = b->in_ch;
    c.height = c.width_px = b->hw;
    c.max_batch = b->batch;
    c.num_classes = b->classes;
    c.threads = threads;
    c.single_backward = 1; /* the plain training step: one backward per forward */
    c.winograd = winograd;
    c.roles = DTNH_ROLE_W | DTNH_ROLE_W_SRC | DTNH_ROLE_G_J;
    return c;
}

typedef struct run_state {
    dtnh_resnet net;
    dtnh_optim opt;
    dtnh_arena pa, sa;
    dtnh_tensor x;
    int labels[64];
    float dlogits[64 * 1000];
} run_state;

static dtnh_status train_step(run_state *s, dtnh_error *err) {
    dtnh_tensor logits;
    double loss;
    dtnh_status st;
    dtnh_arena_reset(&s->sa, 0);
    if ((st = dtnh_resnet_forward(&s->net, &s->x, &s->sa, &logits, err)) ||
        (st = dtnh_softmax_cross_entropy(logits.shape[0], logits.shape[1], logits.data, s->labels,
                                         s->dlogits, &loss, err)) ||
        (st = dtnh_resnet_backward(&s->net, s->dlogits, NULL, s->net.params.g_j, 0, err)) ||
        (st = dtnh_optim_step(&s->opt, &s->net.params, s->net.params.g_j, err)))
        return st;
    return DTNH_OK;
}

static dtnh_status infer_step(run_state *s, dtnh_error *err) {
    dtnh_tensor logits;
    dtnh_arena_reset(&s->sa, 0);
    return dtnh_resnet_infer(&s->net, &s->x, &s->sa, &logits, err);
}

/* Sizes: the persistent arena through the same calls that fill it (a counting build plus the
   optimizer's init), the step arena from the plan. */
static dtnh_status plan(const dtnh_resnet_config *c, const dtnh_optim_config *oc, result *r,
                        size_t *persistent, size_t *step, dtnh_error *err) {
    static dtnh_resnet counted;
    dtnh_optim o;
    dtnh_resnet_plan p;
    dtnh_arena a;
    dtnh_status st;
    dtnh_arena_init(&a, NULL, 0);
    if ((st = dtnh_resnet_plan_memory(c, 1, &p, err)) || (st = dtnh_resnet_init(&counted, c, &a, err)) ||
        (st = dtnh_optim_init(&o, oc, &counted.params, &a, err)))
        return st;
    *persistent = dtnh_arena_used(&a);
    *step = p.step_train > p.step_infer ? p.step_train : p.step_infer;
    r->weights = p.params * sizeof(float);
    r->gradients = p.trainable_params * sizeof(float);
    r->momentum = p.trainable_params * sizeof(float);
    r->source = p.params * sizeof(float);
    r->activations = p.activations + p.activations_recomputed; /* what backward reads */
    r->recomputed = p.activations_recomputed;
    r->minimum = r->weights + r->gradients + r->momentum + r->source + r->activations;
    r->step = p.step_train;
    return DTNH_OK;
}

static void run_config(const bench_cfg *b, int threads, int winograd, int iters, result *r) {
    static run_state s;
    dtnh_resnet_config c = net_config(b, threads, winograd);
    dtnh_optim_config oc;
    dtnh_error err;
    dtnh_status st;
    unsigned char *praw = NULL, *sraw = NULL, *pm, *sm;
    size_t persistent = 0, step = 0, i;
    double *t = (double *)malloc((size_t)iters * sizeof(double));
    double *tc = (double *)malloc((size_t)iters * sizeof(double));
    int shape[4], k;
    struct rusage ru;
    dtnh_rng rng;
    memset(&oc, 0, sizeof oc);
    oc.lr = 0.01;
    oc.momentum = 0.9;
    set_threads(threads);
    if ((st = plan(&c, &oc, r, &persistent, &step, &err))) goto fail;
    pm = aligned_block(persistent, &praw);
    sm = aligned_block(step, &sraw);
    if (!pm || !sm || !t || !tc) {
        strcpy(err.msg, "malloc failed");
        goto fail;
    }
    dtnh_arena_init(&s.pa, pm, persistent);
    dtnh_arena_init(&s.sa, sm, step);
    if ((st = dtnh_resnet_init(&s.net, &c, &s.pa, &err)) ||
        (st = dtnh_optim_init(&s.opt, &oc, &s.net.params, &s.pa, &err)))
        goto fail;
    dtnh_copy(s.net.params.total, s.net.params.w, s.net.params.w_src);
    r->persistent = dtnh_arena_used(&s.pa);
    shape[0] = b->batch;
    shape[1] = b->in_ch;
    shape[2] = shape[3] = b->hw;
    if ((st = dtnh_tensor_shape(&s.x, 4, shape, &err))) goto fail;
    s.x.data = (float *)malloc(dtnh_tensor_count(&s.x) * sizeof(float));
    dtnh_rng_seed(&rng, 1);
    for (i = 0; i < dtnh_tensor_count(&s.x); i++) s.x.data[i] = dtnh_rng_normal(&rng);
    for (k = 0; k < b->batch; k++) s.labels[k] = (int)dtnh_rng_below(&rng, (uint32_t)b->classes);
    if ((st = train_step(&s, &err))) goto fail; /* warm-up: page faults, thread start */
    r->arena = r->persistent + dtnh_arena_peak(&s.sa);
    for (k = 0; k < iters; k++) {
        double t0 = now(), c0 = cpu_now();
        if ((st = train_step(&s, &err))) goto fail;
        t[k] = now() - t0;
        tc[k] = cpu_now() - c0;
    }
    r->train_ips = b->batch / median(t, iters, &r->train_spread);
    r->train_cpu_ips = b->batch / median(tc, iters, NULL);
    r->step_gflop = dtnh_resnet_step_flops(&s.net, b->batch) * 1e-9;
    if ((st = infer_step(&s, &err))) goto fail;
    for (k = 0; k < iters; k++) {
        double t0 = now();
        if ((st = infer_step(&s, &err))) goto fail;
        t[k] = now() - t0;
    }
    r->infer_ips = b->batch / median(t, iters, NULL);
    r->infer_gflop = dtnh_resnet_forward_flops(&s.net, b->batch) * 1e-9;
    getrusage(RUSAGE_SELF, &ru);
    r->rss_kb = ru.ru_maxrss;
    r->ok = 1;
    free(t);
    free(tc);
    return;
fail:
    snprintf(r->error, sizeof r->error, "%s", err.msg);
    free(t);
    free(tc);
}

/* Runs one configuration (b NULL: the FMA peaks) in a child process, whose result comes back
   through a pipe. The parent never starts OpenMP threads: a fork after that can hang. */
static result run_isolated(const bench_cfg *b, int threads, int winograd, int iters) {
    result r;
    int fd[2];
    pid_t pid;
    memset(&r, 0, sizeof r);
    fflush(stdout);
    if (pipe(fd) != 0) return r;
    pid = fork();
    if (pid == 0) {
        close(fd[0]);
        if (b) run_config(b, threads, winograd, iters, &r);
        else {
            r.train_ips = fma_peak(threads); /* the peak of this many threads */
            r.ok = 1;
        }
        if (write(fd[1], &r, sizeof r) != (ssize_t)sizeof r) _exit(1);
        _exit(0);
    }
    close(fd[1]);
    if (pid < 0 || read(fd[0], &r, sizeof r) != (ssize_t)sizeof r) strcpy(r.error, "child failed");
    close(fd[0]);
    if (pid > 0) waitpid(pid, NULL, 0);
    return r;
}

/* ---- PyTorch --------------------------------------------------------------------------------- */

typedef struct torch_result {
    int ok;
    double train_ips, train_spread, infer_ips;
    long rss_kb;
} torch_result;

static const char *python(void) {
    const char *p = getenv("DTNH_BENCH_PYTHON");
    return p && *p ? p : "/usr/bin/python3";
}

static int have_torch(void) {
    char cmd[512];
    if (getenv("DTNH_BENCH_NO_TORCH")) return 0;
    snprintf(cmd, sizeof cmd, "%s -c 'import torch, torchvision' >/dev/null 2>&1", python());
    return system(cmd) == 0;
}

static torch_result run_torch(const bench_cfg *b, int threads, int iters) {
    torch_result t;
    char cmd[512], line[256];
    FILE *p;
    memset(&t, 0, sizeof t);
    snprintf(cmd, sizeof cmd, "%s bench/bench_resnet_torch.py %s %d %d %d %d %d %d %d", python(),
             b->torch_stem, b->width, b->in_ch, b->hw, b->batch, b->classes, threads, iters);
    fflush(stdout);
    p = popen(cmd, "r");
    if (!p) return t;
    while (fgets(line, sizeof line, p))
        if (sscanf(line, "train_ips=%lf train_spread=%lf infer_ips=%lf rss_kb=%ld", &t.train_ips,
                   &t.train_spread, &t.infer_ips, &t.rss_kb) == 4)
            t.ok = 1;
    pclose(p);
    return t;
}

/* ---- report ---------------------------------------------------------------------------------- */

/* One dtnh run's lines, labelled ("dtnh", or "dtnh W" for the Winograd run). */
static void report_dtnh(const char *label, const bench_cfg *b, int threads, double peak, const result *r,
                        int iters) {
    const double MB = 1e6;
    double train_gf = r->step_gflop * r->train_ips / b->batch;
    double infer_gf = r->infer_gflop * r->infer_ips / b->batch;
    if (!r->ok) {
        printf("  %-6s FAILED: %s\n", label, r->error);
        return;
    }
    printf("  %-6s train %8.2f img/s (median of %d, spread %.0f%%%s)  %6.1f GFLOP/s = %3.0f%% of FMA peak\n",
           label, r->train_ips, iters, 100 * r->train_spread, r->train_spread > 0.2 ? ", LARGE" : "",
           train_gf, 100 * train_gf / peak);
    if (threads == 1)
        printf("         train %8.2f img/s by process CPU time (median; other jobs' time slices not counted)\n",
               r->train_cpu_ips);
    printf("         infer %8.2f img/s                              %6.1f GFLOP/s = %3.0f%% of FMA peak\n",
           r->infer_ips, infer_gf, 100 * infer_gf / peak);
    printf("  arena  %.1f MB = %.3f x the minimum %.1f MB (weights %.1f, gradients %.1f, momentum %.1f, "
           "source %.1f, activations %.1f, of which dtnh recomputes %.1f); persistent %.1f, step %.1f\n",
           r->arena / MB, (double)r->arena / (double)r->minimum, r->minimum / MB, r->weights / MB,
           r->gradients / MB, r->momentum / MB, r->source / MB, r->activations / MB,
           r->recomputed / MB, r->persistent / MB, (r->arena - r->persistent) / MB);
    printf("  rss    %.1f MB\n", r->rss_kb * 1024.0 / MB);
}

static void report_ratio(const char *label, const result *r, const torch_result *t) {
    if (r->ok)
        printf("  ratio  train %.2fx  infer %.2fx  rss %.2fx (%s / torch)\n", r->train_ips / t->train_ips,
               r->infer_ips / t->infer_ips, (double)r->rss_kb / (double)t->rss_kb, label);
}

/* A configuration's report: dtnh, dtnh with Winograd (w, when it ran), PyTorch, the ratios. */
static void report(const bench_cfg *b, int threads, double peak, const result *r, const result *w,
                   const torch_result *t, int iters) {
    printf("%s, %d thread%s\n", b->name, threads, threads > 1 ? "s" : "");
    report_dtnh("dtnh", b, threads, peak, r, iters);
    if (w) {
        report_dtnh("dtnh W", b, threads, peak, w, iters);
        printf("         (its GFLOP/s count the direct convolution's multiply-adds: Winograd does fewer)\n");
    }
    if (!t) return;
    if (!t->ok) {
        printf("  torch  FAILED\n");
        return;
    }
    printf("  torch  train %8.2f img/s (spread %.0f%%), infer %8.2f img/s, rss %.1f MB\n", t->train_ips,
           100 * t->train_spread, t->infer_ips, t->rss_kb * 1024.0 / 1e6);
    report_ratio("dtnh", r, t);
    if (w) report_ratio("dtnh W", w, t);
}

/* The thread counts to run: DTNH_BENCH_THREADS as a comma-separated list, else 1 and 2. */
static int thread_counts(int *counts, int max) {
    const char *th = getenv("DTNH_BENCH_THREADS");
    int n = 0;
    while (th && *th && n < max) {
        char *end;
        long t = strtol(th, &end, 10);
        if (end == th) break;
        if (t >= 1 && t <= 1024) counts[n++] = (int)t;
        th = *end == ',' ? end + 1 : end;
    }
    if (n == 0) {
        counts[0] = 1;
        counts[1] = 2;
        n = 2;
    }
    return n;
}

int main(int argc, char **argv) {
    const char *it = getenv("DTNH_BENCH_ITERS"), *winograd = getenv("DTNH_BENCH_WINOGRAD");
    int iters = it ? atoi(it) : 10, torch = have_torch(), c, i, counts[16];
    int n_counts = thread_counts(counts, 16);
    double peak[16];
    if (iters < 1) iters = 1;
    if (!winograd) winograd = "abc";
    printf("bench_resnet: FMA peak");
    for (i = 0; i < n_counts; i++) {
        peak[i] = run_isolated(NULL, counts[i], 0, 0).train_ips;
        printf("%s %.1f GFLOP/s (%d thread%s)", i ? "," : "", peak[i], counts[i],
               counts[i] > 1 ? "s" : "");
    }
    printf("; PyTorch %s\n", torch ? "found" : "not run");
    for (c = 0; c < 3; c++) {
        if (argc > 1 && !strchr(argv[1], configs[c].key)) continue;
        for (i = 0; i < n_counts; i++) {
            int wino = strchr(winograd, configs[c].key) != NULL;
            result r = run_isolated(&configs[c], counts[i], 0, iters), w;
            torch_result t;
            if (wino) w = run_isolated(&configs[c], counts[i], 1, iters);
            if (torch) t = run_torch(&configs[c], counts[i], iters);
            report(&configs[c], counts[i], peak[i], &r, wino ? &w : NULL, torch ? &t : NULL, iters);
            fflush(stdout);
        }
    }
    return 0;
}
