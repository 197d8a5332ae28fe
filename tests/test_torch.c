/* ResNet-18 against PyTorch: tests/fixtures/resnet_*.safetensors (tools/gen_fixtures.py) hold
   what PyTorch computed for torchvision-layout networks whose weights and inputs come from a
   closed-form formula; here the same network recomputes the logits, the loss, every
   parameter's gradient and the running statistics after one step, and compares. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "test.h"
#include "../dtnh_nn.h"
#include "formula.h"

/* ---- a fixture and the network it describes ---------------------------------------------------- */

typedef struct torch_case {
    dtnh_st_file f;
    dtnh_resnet net;
    dtnh_arena persistent, step;
    void *mem[3];
    float *input;
    int batch, train;
} torch_case;

static int torch_meta_int(const dtnh_st_file *f, const char *key) {
    const char *v = dtnh_st_meta_get(f, key);
    return v ? atoi(v) : 0;
}

/* Reads tensor name of the fixture: count floats into out. */
static dtnh_status torch_read(torch_case *c, const char *name, float *out, size_t count) {
    int i = dtnh_st_find(&c->f, name);
    if (i < 0) return DTNH_ERR_ARG;
    return dtnh_st_read_f32(&c->f, i, out, count, NULL);
}

static float torch_scalar(torch_case *c, const char *prefix, const char *name) {
    char key[128];
    float v = -1e30f;
    snprintf(key, sizeof key, "%s%s", prefix, name);
    torch_read(c, key, &v, 1);
    return v;
}

static void torch_close(torch_case *c) {
    int i;
    dtnh_st_close(&c->f);
    for (i = 0; i < 3; i++) free(c->mem[i]);
    free(c->input);
}

/* Opens the fixture and builds the network its metadata describes, weights by the formula. */
static dtnh_status torch_open(torch_case *c, const char *file, int winograd) {
    dtnh_resnet_config cfg;
    dtnh_resnet_plan plan;
    dtnh_arena scratch;
    const char *stem, *mode;
    dtnh_status s;
    memset(c, 0, sizeof *c);
    c->mem[0] = malloc(1 << 21);
    dtnh_arena_init(&scratch, c->mem[0], 1 << 21);
    if ((s = dtnh_st_open(&c->f, t_fixture(file), &scratch, NULL))) return s;
    stem = dtnh_st_meta_get(&c->f, "stem");
    mode = dtnh_st_meta_get(&c->f, "mode");
    if (!stem || !mode) return DTNH_ERR_FORMAT;
    memset(&cfg, 0, sizeof cfg);
    cfg.stem = strcmp(stem, "cifar") == 0 ? DTNH_STEM_CIFAR : DTNH_STEM_IMAGENET;
    cfg.width = torch_meta_int(&c->f, "width");
    cfg.in_channels = torch_meta_int(&c->f, "in_channels");
    cfg.num_classes = torch_meta_int(&c->f, "classes");
    cfg.height = torch_meta_int(&c->f, "height");
    cfg.width_px = torch_meta_int(&c->f, "width_px");
    cfg.max_batch = c->batch = torch_meta_int(&c->f, "batch");
    c->train = strcmp(mode, "train") == 0;
    cfg.train = DTNH_TRAIN_ALL;
    cfg.bn_stats = c->train ? DTNH_BN_STATS_BATCH : DTNH_BN_STATS_FROZEN;
    cfg.winograd = winograd;
    if ((s = dtnh_resnet_plan_memory(&cfg, 0, &plan, NULL))) return s;
    c->mem[1] = malloc(plan.persistent + 64);
    c->mem[2] = malloc(plan.step_train + 64);
    dtnh_arena_init(&c->persistent, c->mem[1], plan.persistent + 64);
    dtnh_arena_init(&c->step, c->mem[2], plan.step_train + 64);
    if ((s = dtnh_resnet_init(&c->net, &cfg, &c->persistent, NULL))) return s;
    formula_fill(&c->net, 0);
    return DTNH_OK;
}

/* The fixture's sums of every weight and of the input: both sides fill the same values. */
static int torch_formula_agrees(torch_case *c, const float *x, size_t nx) {
    int k;
    for (k = 0; k < dtnh_resnet_state_count(&c->net); k++) {
        dtnh_state_entry e;
        double sum, abs = 0;
        size_t i;
        dtnh_resnet_state_entry(&c->net, k, &e, NULL);
        if (!e.f32) continue;
        sum = dtnh_sum(e.count, e.f32);
        for (i = 0; i < e.count; i++) abs += fabs(e.f32[i]);
        if (fabs(sum - torch_scalar(c, "weight_sum.", e.name)) > 1e-6 * abs + 1e-6) {
            printf("    weight_sum.%s: %.9g, PyTorch %.9g\n", e.name, sum,
                   torch_scalar(c, "weight_sum.", e.name));
            return 0;
        }
    }
    return fabs(dtnh_sum(nx, x) - torch_scalar(c, "", "input_sum")) < 1e-6 * (double)nx;
}

/* One parameter's gradient g (count floats) against the fixture's norm, projection, samples,
   and the whole gradient where stored, all relative to the gradient's norm. */
static int torch_gradient_agrees(torch_case *c, const dtnh_param_view *v, int k, const float *g) {
    float sample[16], full_norm;
    int64_t index[16];
    double norm = torch_scalar(c, "grad_norm.", v->name), tol = 1e-3 * norm + 1e-9;
    double dot = 0, rr = 0, mine = sqrt(dtnh_sumsq(v->count, g));
    char key[128];
    size_t i;
    int j;
    for (i = 0; i < v->count; i++) {
        double r = (double)(float)formula_u(i, k + 3000);
        dot += g[i] * r;
        rr += r * r;
    }
    if (fabs(mine - norm) > tol || fabs(dot - torch_scalar(c, "grad_dot.", v->name)) > tol * sqrt(rr)) {
        printf("    %s: |g| %.9g dot %.9g, PyTorch %.9g and %.9g\n", v->name, mine, dot, norm,
               torch_scalar(c, "grad_dot.", v->name));
        return 0;
    }
    snprintf(key, sizeof key, "grad_index.%s", v->name);
    if (dtnh_st_read_i64(&c->f, dtnh_st_find(&c->f, key), index, 16, NULL)) return 0;
    snprintf(key, sizeof key, "grad_sample.%s", v->name);
    if (torch_read(c, key, sample, 16)) return 0;
    for (j = 0; j < 16; j++)
        if (index[j] < 0 || (size_t)index[j] >= v->count || fabs(g[index[j]] - sample[j]) > tol) {
            printf("    %s[%lld]: %.9g, PyTorch %.9g\n", v->name, (long long)index[j],
                   g[index[j]], sample[j]);
            return 0;
        }
    snprintf(key, sizeof key, "grad.%s", v->name);
    if (dtnh_st_find(&c->f, key) >= 0) {
        float *full = (float *)malloc(v->count * sizeof(float));
        double diff = 0;
        torch_read(c, key, full, v->count);
        for (i = 0; i < v->count; i++) diff += ((double)g[i] - full[i]) * ((double)g[i] - full[i]);
        full_norm = (float)sqrt(diff);
        free(full);
        if (full_norm > tol) {
            printf("    %s: |g - g_torch| = %.3g, |g_torch| = %.9g\n", v->name, full_norm, norm);
            return 0;
        }
    }
    return 1;
}

/* One float BN buffer after the step: PyTorch's (training mode) or unchanged (evaluation). */
static int torch_buffer_agrees(torch_case *c, const dtnh_state_entry *e, int k) {
    float *ref = (float *)malloc(e->count * sizeof(float));
    char key[128];
    size_t i;
    int ok = 1;
    snprintf(key, sizeof key, "running.%s", e->name);
    if (c->train) ok = torch_read(c, key, ref, e->count) == DTNH_OK;
    else
        for (i = 0; i < e->count; i++) ref[i] = formula_value(e, i, k);
    for (i = 0; ok && i < e->count; i++)
        if (fabs(e->f32[i] - ref[i]) > 1e-4 * (fabs(ref[i]) > 1 ? fabs(ref[i]) : 1)) {
            printf("    %s[%zu]: %.9g, PyTorch %.9g\n", e->name, i, e->f32[i], ref[i]);
            ok = 0;
        }
    free(ref);
    return ok;
}

static int torch_buffers_agree(torch_case *c) {
    int k;
    for (k = 0; k < dtnh_resnet_state_count(&c->net); k++) {
        dtnh_state_entry e;
        char key[128];
        int64_t n = 0;
        dtnh_resnet_state_entry(&c->net, k, &e, NULL);
        if (e.param >= 0) continue;
        if (e.f32 && !torch_buffer_agrees(c, &e, k)) return 0;
        if (!e.i64) continue;
        snprintf(key, sizeof key, "running.%s", e.name);
        if (c->train && dtnh_st_read_i64(&c->f, dtnh_st_find(&c->f, key), &n, 1, NULL)) return 0;
        if (e.i64[0] != n || n != c->train) {
            printf("    %s: %lld, PyTorch %lld\n", e.name, (long long)e.i64[0], (long long)n);
            return 0;
        }
    }
    return 1;
}

/* x and dlogits live outside the step arena, which the plan sized for the network alone. */
static void torch_compare(const char *file, int winograd) {
    torch_case c;
    dtnh_tensor x, logits;
    dtnh_error err;
    float want[2000], dlogits[2000];
    int labels[8], shape[4], i, n, classes;
    double loss;
    size_t nx;
    dtnh_status s = torch_open(&c, file, winograd);
    CHECK_MSG(s == DTNH_OK, "%s: fixture or network (%s)", file, dtnh_status_str(s));
    n = c.batch;
    classes = c.net.cfg.num_classes;
    CHECK(n <= 8 && n * classes <= 2000);
    shape[0] = n;
    shape[1] = c.net.cfg.in_channels;
    shape[2] = c.net.cfg.height;
    shape[3] = c.net.cfg.width_px;
    CHECK_OK(dtnh_tensor_shape(&x, 4, shape, &err));
    nx = dtnh_tensor_count(&x);
    x.data = c.input = (float *)malloc(nx * sizeof(float));
    for (i = 0; (size_t)i < nx; i++) x.data[i] = (float)formula_u((size_t)i, 1000);
    for (i = 0; i < n; i++) labels[i] = (7 * i + 3) % classes;
    CHECK_MSG(torch_formula_agrees(&c, x.data, nx), "%s: the formula differs from Python's", file);
    CHECK_OK(dtnh_resnet_forward(&c.net, &x, &c.step, &logits, &err));
    CHECK_OK(torch_read(&c, "logits", want, (size_t)(n * classes)));
    for (i = 0; i < n * classes; i++) CHECK_NEAR(logits.data[i], want[i], 1e-4);
    CHECK_OK(dtnh_softmax_cross_entropy(n, classes, logits.data, labels, dlogits, &loss, &err));
    CHECK_NEAR(loss, torch_scalar(&c, "", "loss"), 1e-4 * torch_scalar(&c, "", "loss"));
    CHECK_OK(dtnh_resnet_backward(&c.net, dlogits, NULL, NULL, 0, &err));
    for (i = 0; i < c.net.params.count; i++) {
        const dtnh_param_view *v = &c.net.params.views[i];
        int k = dtnh_resnet_state_find(&c.net, v->name);
        CHECK_MSG(torch_gradient_agrees(&c, v, k, c.net.params.g_j + v->offset),
                  "%s: gradient of %s", file, v->name);
    }
    CHECK_MSG(torch_buffers_agree(&c), "%s: running statistics", file);
    torch_close(&c);
}

static void cifar_w16_training_step_matches_pytorch(void) {
    torch_compare("resnet_cifar_w16_train.safetensors", 0);
}
static void cifar_w16_evaluation_gradients_match_pytorch(void) {
    torch_compare("resnet_cifar_w16_eval.safetensors", 0);
}
static void cifar_w64_training_step_matches_pytorch(void) {
    torch_compare("resnet_cifar_w64_train.safetensors", 0);
}
static void cifar_w64_evaluation_gradients_match_pytorch(void) {
    torch_compare("resnet_cifar_w64_eval.safetensors", 0);
}
static void imagenet_w16_training_step_matches_pytorch(void) {
    torch_compare("resnet_imagenet_w16_train.safetensors", 0);
}
static void imagenet_w16_evaluation_gradients_match_pytorch(void) {
    torch_compare("resnet_imagenet_w16_eval.safetensors", 0);
}
static void imagenet_w64_training_step_matches_pytorch(void) {
    torch_compare("resnet_imagenet_w64_train.safetensors", 0);
}
static void imagenet_w64_evaluation_gradients_match_pytorch(void) {
    torch_compare("resnet_imagenet_w64_eval.safetensors", 0);
}
/* With Winograd's 3x3 layers (dtnh_resnet_config.winograd), within the same tolerances. Only
   AVX-512 builds have it: elsewhere the flag is ignored (test_conv checks that), and these
   would repeat the tests above (under valgrind, at CI's cost). */
#if defined(__AVX512F__) && !defined(DTNH_NO_SIMD)
static void cifar_w16_training_step_with_winograd_matches_pytorch(void) {
    torch_compare("resnet_cifar_w16_train.safetensors", 1);
}
static void cifar_w64_training_step_with_winograd_matches_pytorch(void) {
    torch_compare("resnet_cifar_w64_train.safetensors", 1);
}
#endif

/* A checkpoint PyTorch wrote (through tools/export_torchvision.py) configures the network from
   its header, loads, and gives PyTorch's evaluation logits. */
static void pytorch_checkpoint_loads_and_predicts_as_in_pytorch(void) {
    static DTNH_ALIGNED(64) unsigned char scratch_mem[1 << 18];
    dtnh_resnet_config cfg;
    dtnh_resnet_plan plan;
    dtnh_resnet net;
    dtnh_load_report rep;
    dtnh_arena scratch, pa, sa;
    dtnh_tensor x, logits;
    dtnh_error err;
    dtnh_st_file f;
    void *pm, *sm;
    float want[10], *input = (float *)malloc(2 * 3 * 32 * 32 * sizeof(float));
    int shape[4] = {2, 3, 32, 32}, i;
    dtnh_arena_init(&scratch, scratch_mem, sizeof scratch_mem);
    memset(&cfg, 0, sizeof cfg);
    cfg.height = cfg.width_px = 32;
    cfg.max_batch = 2;
    cfg.train = DTNH_TRAIN_NONE;
    CHECK_OK(dtnh_resnet_config_from_file(t_fixture("resnet_w4_weights.safetensors"), &scratch,
                                          &cfg, &err));
    CHECK(cfg.width == 4 && cfg.stem == DTNH_STEM_IMAGENET && cfg.in_channels == 3 &&
          cfg.num_classes == 5 && dtnh_arena_used(&scratch) == 0);
    CHECK_OK(dtnh_resnet_plan_memory(&cfg, 0, &plan, &err));
    pm = malloc(plan.persistent + 64);
    sm = malloc(plan.step_infer + 64);
    dtnh_arena_init(&pa, pm, plan.persistent + 64);
    dtnh_arena_init(&sa, sm, plan.step_infer + 64);
    CHECK_OK(dtnh_resnet_init(&net, &cfg, &pa, &err));
    CHECK_OK(dtnh_resnet_load_file(&net, t_fixture("resnet_w4_weights.safetensors"), &scratch,
                                   NULL, &rep, &err));
    CHECK(rep.loaded == dtnh_resnet_state_count(&net) && rep.missing == 0 && rep.unknown == 0);
    CHECK(net.buffers.counts[0] == 123);
    CHECK_OK(dtnh_tensor_view(&x, input, 4, shape, &err));
    for (i = 0; i < 2 * 3 * 32 * 32; i++) x.data[i] = (float)formula_u((size_t)i, 1000);
    CHECK_OK(dtnh_resnet_infer(&net, &x, &sa, &logits, &err));
    CHECK_OK(dtnh_st_open(&f, t_fixture("resnet_w4_expect.safetensors"), &scratch, &err));
    CHECK_OK(dtnh_st_read_f32(&f, dtnh_st_find(&f, "logits"), want, 10, &err));
    dtnh_st_close(&f);
    for (i = 0; i < 10; i++) CHECK_NEAR(logits.data[i], want[i], 1e-4);
    free(pm);
    free(sm);
    free(input);
}

void suite_torch(void) {
    RUN(cifar_w16_training_step_matches_pytorch);
    RUN(cifar_w16_evaluation_gradients_match_pytorch);
    RUN(cifar_w64_training_step_matches_pytorch);
    RUN(cifar_w64_evaluation_gradients_match_pytorch);
    RUN(imagenet_w16_training_step_matches_pytorch);
    RUN(imagenet_w16_evaluation_gradients_match_pytorch);
    RUN(imagenet_w64_training_step_matches_pytorch);
    RUN(imagenet_w64_evaluation_gradients_match_pytorch);
#if defined(__AVX512F__) && !defined(DTNH_NO_SIMD)
    RUN(cifar_w16_training_step_with_winograd_matches_pytorch);
    RUN(cifar_w64_training_step_with_winograd_matches_pytorch);
#endif
    RUN(pytorch_checkpoint_loads_and_predicts_as_in_pytorch);
}
