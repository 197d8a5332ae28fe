/* bench_dtnh: what the DTNH step costs over the regularizer it wraps, in one run. Step time of
   L2-SP and DTNH(L2-SP), of feature-map distillation and DTNH(feature maps), on the cifar-stem
   ResNet-18 at 32x32x3 (width 64, batch 48 by default), their ratios, and the memory DTNH adds.
   A step: training forward, cross-entropy, backward, the regularizer, the direction and an SGD
   momentum update. The plain feature-map step takes one backward (loss and hooks together);
   DTNH needs g_J and g_Omega apart, so it takes two. The four steps run interleaved, one each
   per iteration, after one warm-up; each figure is the median.
   Usage: bench_dtnh [iterations [width [batch]]]      (defaults 10 64 48)
   The machine may be shared: check its load. */
#define _POSIX_C_SOURCE 199309L
#define DTNH_IMPLEMENTATION
#include "../dtnh.h"
#include "../dtnh_nn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_ITERS 200

enum { L2SP, DTNH_L2SP, FMAP, DTNH_FMAP, VARIANTS };
static const char *const variant_names[VARIANTS] = {"L2-SP", "DTNH(L2-SP)", "feature maps",
                                                    "DTNH(feature maps)"};

typedef struct bench {
    dtnh_resnet net;
    dtnh_fmap_reg reg;
    dtnh_optim opt;
    dtnh_arena persistent, step;
    float *x, *dlogits;
    int *labels;
    dtnh_tensor input;
    int batch;
} bench;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void die(const char *what, dtnh_status s, const dtnh_error *err) {
    fprintf(stderr, "bench_dtnh: %s: %s (%s)\n", what, dtnh_status_str(s), err->msg);
    exit(1);
}

static dtnh_resnet_config net_config(int width, int batch, unsigned roles) {
    static const char *hooks[4] = {"layer1", "layer2", "layer3", "layer4"};
    dtnh_resnet_config c;
    int i;
    memset(&c, 0, sizeof c);
    c.stem = DTNH_STEM_CIFAR;
    c.width = width;
    c.num_classes = 10;
    c.height = c.width_px = 32;
    c.max_batch = batch;
    c.roles = roles;
    c.hook_count = 4;
    for (i = 0; i < 4; i++) c.hooks[i] = hooks[i];
    c.seed = 1;
    return c;
}

/* Everything persistent: the network with w, w_s, g_J, g_Omega, the feature-map regularizer
   and the optimizer. Run once on a counting arena for the size, then for real. */
static dtnh_status setup(bench *b, int width, dtnh_arena *a, dtnh_error *err) {
    dtnh_resnet_config c =
        net_config(width, b->batch, DTNH_ROLE_W | DTNH_ROLE_W_SRC | DTNH_ROLE_G_J | DTNH_ROLE_G_OMEGA);
    dtnh_optim_config oc;
    dtnh_status s;
    if ((s = dtnh_resnet_init(&b->net, &c, a, err))) return s;
    if (!dtnh_arena_is_counting(a)) /* the source is the initialisation */
        dtnh_copy(b->net.params.total, b->net.params.w, b->net.params.w_src);
    if ((s = dtnh_fmap_reg_init(&b->reg, NULL, &b->net, NULL, a, err))) return s;
    memset(&oc, 0, sizeof oc);
    oc.lr = 0.01;
    oc.momentum = 0.9;
    return dtnh_optim_init(&b->opt, &oc, &b->net.params, a, err);
}

/* One training step of the given variant. */
static dtnh_status step(bench *b, int variant, dtnh_error *err) {
    dtnh_params *p = &b->net.params;
    dtnh_direction_config dc;
    dtnh_direction_stats st;
    dtnh_tensor logits;
    double loss, omega;
    dtnh_status s;
    memset(&dc, 0, sizeof dc);
    dc.mode = variant == L2SP || variant == FMAP ? DTNH_MODE_SUM : DTNH_MODE_DTNH;
    dtnh_arena_reset(&b->step, 0);
    if ((s = dtnh_resnet_forward(&b->net, &b->input, &b->step, &logits, err))) return s;
    if (dtnh_arena_is_counting(&b->step)) /* sizing: the regularizer's share of the step arena */
        return dtnh_fmap_reg_compute(&b->reg, &b->input, &b->step, NULL, NULL, 0, NULL, err);
    if ((s = dtnh_softmax_cross_entropy(b->batch, 10, logits.data, b->labels, b->dlogits, &loss, err))) return s;
    switch (variant) {
    case L2SP:
    case DTNH_L2SP:
        if ((s = dtnh_resnet_backward(&b->net, b->dlogits, NULL, p->g_j, 0, err))) return s;
        return dtnh_step_l2sp(&b->opt, &dc, NULL, p, p->g_j, variant == L2SP ? NULL : &st, err);
    case FMAP: /* one backward: g_J + g_Omega together */
        if ((s = dtnh_fmap_reg_compute(&b->reg, &b->input, &b->step, b->dlogits, p->g_j, 0, &omega, err))) return s;
        return dtnh_optim_step(&b->opt, p, p->g_j, err);
    default:
        if ((s = dtnh_resnet_backward(&b->net, b->dlogits, NULL, p->g_j, 0, err)) ||
            (s = dtnh_fmap_reg_compute(&b->reg, &b->input, &b->step, NULL, p->g_omega, 0, &omega, err)))
            return s;
        return dtnh_step(&b->opt, &dc, p, p->g_j, p->g_omega, &st, err);
    }
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, by_value);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* The optimizer part alone: the fused update with and without the DTNH pass. */
static void update_only(bench *b, int iters, double *sum_ms, double *dtnh_ms) {
    static double t[2][MAX_ITERS];
    dtnh_direction_config dc;
    dtnh_direction_stats st;
    int i, m;
    memset(&dc, 0, sizeof dc);
    for (i = 0; i < iters; i++)
        for (m = 0; m < 2; m++) {
            double t0 = now();
            dc.mode = m == 0 ? DTNH_MODE_SUM : DTNH_MODE_DTNH;
            dtnh_step_l2sp(&b->opt, &dc, NULL, &b->net.params, b->net.params.g_j, m ? &st : NULL, NULL);
            t[m][i] = 1e3 * (now() - t0);
        }
    *sum_ms = median(t[0], iters);
    *dtnh_ms = median(t[1], iters);
}

/* Persistent bytes of the network alone, with and without a g_Omega vector. */
static size_t g_omega_bytes(int width, int batch) {
    dtnh_resnet_plan with, without;
    dtnh_resnet_config c = net_config(width, batch, DTNH_ROLE_W | DTNH_ROLE_W_SRC | DTNH_ROLE_G_J | DTNH_ROLE_G_OMEGA);
    dtnh_resnet_plan_memory(&c, 0, &with, NULL);
    c.roles &= ~(unsigned)DTNH_ROLE_G_OMEGA;
    dtnh_resnet_plan_memory(&c, 0, &without, NULL);
    return with.persistent - without.persistent;
}

int main(int argc, char **argv) {
    static bench b;
    static double times[VARIANTS][MAX_ITERS];
    int iters = argc > 1 ? atoi(argv[1]) : 10, width = argc > 2 ? atoi(argv[2]) : 64;
    double ms[VARIANTS], upd_sum, upd_dtnh;
    dtnh_error err;
    dtnh_status s;
    dtnh_rng rng;
    size_t persistent_bytes, step_bytes, i;
    int shape[4], it, v;
    b.batch = argc > 3 ? atoi(argv[3]) : 48;
    if (iters < 1 || iters > MAX_ITERS || width < 1 || b.batch < 1) {
        fprintf(stderr, "usage: bench_dtnh [iterations (1..%d) [width [batch]]]\n", MAX_ITERS);
        return 2;
    }
    /* sizes first, through the same calls */
    dtnh_arena_init(&b.persistent, NULL, 0);
    if ((s = setup(&b, width, &b.persistent, &err))) die("sizing", s, &err);
    persistent_bytes = dtnh_arena_used(&b.persistent) + DTNH_ARENA_ALIGN;
    shape[0] = b.batch, shape[1] = 3, shape[2] = shape[3] = 32;
    dtnh_tensor_shape(&b.input, 4, shape, NULL);
    dtnh_arena_init(&b.persistent, malloc(persistent_bytes), persistent_bytes);
    if ((s = setup(&b, width, &b.persistent, &err))) die("setup", s, &err);
    dtnh_arena_init(&b.step, NULL, 0);
    if ((s = step(&b, DTNH_FMAP, &err))) die("sizing the step", s, &err);
    step_bytes = dtnh_arena_peak(&b.step) + DTNH_ARENA_ALIGN;
    dtnh_arena_init(&b.step, malloc(step_bytes), step_bytes);
    b.x = (float *)malloc(dtnh_tensor_count(&b.input) * sizeof(float));
    b.dlogits = (float *)malloc((size_t)b.batch * 10 * sizeof(float));
    b.labels = (int *)malloc((size_t)b.batch * sizeof(int));
    if (!b.persistent.base || !b.step.base || !b.x || !b.dlogits || !b.labels) {
        fprintf(stderr, "bench_dtnh: out of memory\n");
        return 1;
    }
    dtnh_rng_seed(&rng, 2);
    for (i = 0; i < dtnh_tensor_count(&b.input); i++) b.x[i] = dtnh_rng_normal(&rng);
    for (it = 0; it < b.batch; it++) b.labels[it] = (int)dtnh_rng_below(&rng, 10);
    b.input.data = b.x;

    printf("bench_dtnh: ResNet-18, cifar stem, width %d, 32x32x3, batch %d: %.2f M parameters, %d threads, "
           "median of %d steps\n", width, b.batch, b.net.params.total / 1e6, dtnh_threads(), iters);
    for (v = 0; v < VARIANTS; v++) /* warm-up */
        if ((s = step(&b, v, &err))) die(variant_names[v], s, &err);
    for (it = 0; it < iters; it++)
        for (v = 0; v < VARIANTS; v++) {
            double t0 = now();
            if ((s = step(&b, v, &err))) die(variant_names[v], s, &err);
            times[v][it] = 1e3 * (now() - t0);
        }
    for (v = 0; v < VARIANTS; v++) ms[v] = median(times[v], iters);
    update_only(&b, iters, &upd_sum, &upd_dtnh);
    printf("  %-20s %9.2f ms\n", variant_names[L2SP], ms[L2SP]);
    printf("  %-20s %9.2f ms   ratio %.4f   (target <= 1.01)\n", variant_names[DTNH_L2SP], ms[DTNH_L2SP],
           ms[DTNH_L2SP] / ms[L2SP]);
    printf("  %-20s %9.2f ms\n", variant_names[FMAP], ms[FMAP]);
    printf("  %-20s %9.2f ms   ratio %.4f   (target <= 1.35)\n", variant_names[DTNH_FMAP], ms[DTNH_FMAP],
           ms[DTNH_FMAP] / ms[FMAP]);
    printf("  the fused update alone: L2-SP %.2f ms, DTNH(L2-SP) %.2f ms (+%.2f ms, %.2f%% of an L2-SP step)\n",
           upd_sum, upd_dtnh, upd_dtnh - upd_sum, 100 * (upd_dtnh - upd_sum) / ms[L2SP]);
    printf("memory DTNH adds: L2-SP 0 bytes (g_Omega is never stored); feature maps %.1f MB (g_Omega, one "
           "flat vector; the plain step backpropagates both into g_J)\n", g_omega_bytes(width, b.batch) / 1e6);
    printf("arenas: persistent %.1f MB, step %.1f MB\n", persistent_bytes / 1e6, step_bytes / 1e6);
    return 0;
}
