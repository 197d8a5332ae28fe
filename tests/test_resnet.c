/* ResNet-18 in dtnh_nn.h: the memory plan is exact, freezing shrinks it, gradients (from the
   logits and from hooks) match finite differences, results do not depend on the thread
   count, and bad input is refused. Networks are tiny (width 4..16, 8x8..32x32 inputs). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "test.h"
#include "../dtnh_nn.h"
#ifdef _OPENMP
#include <omp.h>
#endif

/* ---- a network on exactly planned memory ------------------------------------------------------ */

typedef struct net_case {
    dtnh_resnet net;
    dtnh_resnet_plan plan;
    unsigned char *praw, *sraw;
    dtnh_arena pa, sa;
    float *x;
    dtnh_tensor input;
    int labels[16];
} net_case;

/* A 64-byte aligned block of exactly `bytes` usable bytes (raw is what to free). */
static unsigned char *aligned_block(size_t bytes, unsigned char **raw) {
    *raw = (unsigned char *)malloc(bytes + 64);
    if (!*raw) return NULL;
    return *raw + (64 - (uintptr_t)*raw % 64) % 64;
}

static dtnh_resnet_config small_config(dtnh_stem stem, int width, int hw, int batch) {
    dtnh_resnet_config c;
    memset(&c, 0, sizeof c);
    c.stem = stem;
    c.width = width;
    c.height = c.width_px = hw;
    c.max_batch = batch;
    c.num_classes = 5;
    c.seed = 42;
    return c;
}

static void fill_normal(float *x, size_t n, float scale, uint64_t seed) {
    dtnh_rng r;
    size_t i;
    dtnh_rng_seed(&r, seed);
    for (i = 0; i < n; i++) x[i] = scale * dtnh_rng_normal(&r);
}

static void case_close(net_case *c) {
    free(c->praw);
    free(c->sraw);
    free(c->x);
    memset(c, 0, sizeof *c);
}

/* Plans cfg, builds it on exactly the persistent bytes, gives it a step arena of the larger
   step size and a random input batch of max_batch. */
static dtnh_status case_open(net_case *c, const dtnh_resnet_config *cfg) {
    dtnh_resnet_config d = dtnh_resnet_config_def(cfg);
    unsigned char *p, *s;
    dtnh_status st;
    size_t step;
    int shape[4], i;
    memset(c, 0, sizeof *c);
    if ((st = dtnh_resnet_plan_memory(cfg, 0, &c->plan, NULL))) return st;
    step = c->plan.step_train > c->plan.step_infer ? c->plan.step_train : c->plan.step_infer;
    p = aligned_block(c->plan.persistent, &c->praw);
    s = aligned_block(step, &c->sraw);
    if (!p || !s) return DTNH_ERR_NOMEM;
    dtnh_arena_init(&c->pa, p, c->plan.persistent);
    dtnh_arena_init(&c->sa, s, step);
    if ((st = dtnh_resnet_init(&c->net, cfg, &c->pa, NULL))) return st;
    shape[0] = d.max_batch;
    shape[1] = d.in_channels;
    shape[2] = d.height;
    shape[3] = d.width_px;
    if ((st = dtnh_tensor_shape(&c->input, 4, shape, NULL))) return st;
    c->x = c->input.data = (float *)malloc(dtnh_tensor_count(&c->input) * sizeof(float));
    if (!c->x) return DTNH_ERR_NOMEM;
    fill_normal(c->x, dtnh_tensor_count(&c->input), 1.0f, 7);
    for (i = 0; i < 16; i++) c->labels[i] = (3 * i + 1) % d.num_classes;
    return DTNH_OK;
}

/* One training step's forward, loss and backward into param_grad; returns the loss. */
static double case_step(net_case *c, float *param_grad, dtnh_status *st) {
    dtnh_tensor logits;
    float dlogits[16 * 64];
    double loss = 0;
    dtnh_arena_reset(&c->sa, 0);
    if ((*st = dtnh_resnet_forward(&c->net, &c->input, &c->sa, &logits, NULL))) return 0;
    if ((*st = dtnh_softmax_cross_entropy(logits.shape[0], logits.shape[1], logits.data, c->labels,
                                          dlogits, &loss, NULL)))
        return 0;
    *st = dtnh_resnet_backward(&c->net, dlogits, NULL, param_grad, 0, NULL);
    return loss;
}

/* The loss alone (a training forward, so batch statistics as in the step). */
static double case_loss(net_case *c) {
    dtnh_tensor logits;
    double loss = 0;
    dtnh_arena_reset(&c->sa, 0);
    if (dtnh_resnet_forward(&c->net, &c->input, &c->sa, &logits, NULL)) return NAN;
    dtnh_softmax_cross_entropy(logits.shape[0], logits.shape[1], logits.data, c->labels, NULL, &loss,
                               NULL);
    return loss;
}

/* ---- the memory plan ---------------------------------------------------------------------------- */

/* The persistent arena holds the build to the byte; a step and an inference peak exactly at
   the planned sizes; one byte less fails with DTNH_ERR_NOMEM and nothing else. */
static void plan_check(const dtnh_resnet_config *cfg) {
    dtnh_resnet_plan plan;
    static dtnh_resnet net;
    dtnh_tensor x, logits;
    unsigned char *praw, *sraw, *p, *s;
    dtnh_arena pa, sa;
    dtnh_error err;
    float *dl;
    dtnh_optim opt;
    dtnh_optim_config oc;
    int shape[4];
    dtnh_resnet_config d = dtnh_resnet_config_def(cfg);
    CHECK_OK(dtnh_resnet_plan_memory(cfg, 1, &plan, &err));
    CHECK(plan.persistent == plan.structure + plan.weights + plan.gradients + plan.source_copy +
                                 plan.buffers + plan.optimizer_state);
    CHECK(plan.step_train == plan.activations + plan.scratch);
    p = aligned_block(plan.persistent, &praw);
    s = aligned_block(plan.step_train + plan.step_infer, &sraw);
    dtnh_arena_init(&pa, p, plan.persistent - plan.optimizer_state - 1);
    CHECK_STATUS(dtnh_resnet_init(&net, cfg, &pa, &err), DTNH_ERR_NOMEM);
    dtnh_arena_init(&pa, p, plan.persistent);
    CHECK_OK(dtnh_resnet_init(&net, cfg, &pa, &err));
    memset(&oc, 0, sizeof oc);
    oc.momentum = 0.9;
    CHECK_OK(dtnh_optim_init(&opt, &oc, &net.params, &pa, &err));
    CHECK(dtnh_arena_used(&pa) == plan.persistent);
    CHECK(opt.state_count == plan.trainable_params);
    shape[0] = d.max_batch;
    shape[1] = d.in_channels;
    shape[2] = d.height;
    shape[3] = d.width_px;
    CHECK_OK(dtnh_tensor_shape(&x, 4, shape, &err));
    x.data = (float *)calloc(dtnh_tensor_count(&x), sizeof(float));
    dl = (float *)calloc((size_t)d.max_batch * d.num_classes, sizeof(float));
    dtnh_arena_init(&sa, s, plan.step_train - 1);
    CHECK_STATUS(dtnh_resnet_forward(&net, &x, &sa, &logits, &err), DTNH_ERR_NOMEM);
    CHECK_STATUS(dtnh_resnet_backward(&net, dl, NULL, NULL, 0, &err), DTNH_ERR_ARG);
    dtnh_arena_init(&sa, s, plan.step_train);
    CHECK_OK(dtnh_resnet_forward(&net, &x, &sa, &logits, &err));
    CHECK_OK(dtnh_resnet_backward(&net, dl, NULL, NULL, 0, &err));
    CHECK(dtnh_arena_peak(&sa) == plan.step_train);
    dtnh_arena_init(&sa, s, plan.step_infer - 1);
    CHECK_STATUS(dtnh_resnet_infer(&net, &x, &sa, &logits, &err), DTNH_ERR_NOMEM);
    dtnh_arena_init(&sa, s, plan.step_infer);
    CHECK_OK(dtnh_resnet_infer(&net, &x, &sa, &logits, &err));
    CHECK(dtnh_arena_peak(&sa) == plan.step_infer);
    free(x.data);
    free(dl);
    free(praw);
    free(sraw);
}

static void plan_is_exact_for_the_cifar_stem(void) {
    dtnh_resnet_config c = small_config(DTNH_STEM_CIFAR, 8, 16, 3);
    plan_check(&c);
}

static void plan_is_exact_for_the_imagenet_stem_with_hooks(void) {
    dtnh_resnet_config c = small_config(DTNH_STEM_IMAGENET, 8, 32, 2);
    c.hooks[0] = "layer1";
    c.hooks[1] = "bn1";
    c.hook_count = 2;
    c.roles = DTNH_ROLE_W | DTNH_ROLE_W_SRC | DTNH_ROLE_G_J | DTNH_ROLE_G_OMEGA;
    plan_check(&c);
}

static void plan_is_exact_for_a_frozen_network(void) {
    dtnh_resnet_config c = small_config(DTNH_STEM_CIFAR, 8, 16, 3);
    c.train = DTNH_TRAIN_LAST_STAGES;
    c.train_stages = 2;
    plan_check(&c);
}

static void plan_is_exact_for_a_single_backward(void) {
    dtnh_resnet_config c = small_config(DTNH_STEM_IMAGENET, 8, 32, 3);
    c.single_backward = 1;
    plan_check(&c);
}

static void plan_splits_the_persistent_memory_by_role(void) {
    dtnh_resnet_config c = small_config(DTNH_STEM_CIFAR, 16, 8, 2);
    dtnh_resnet_plan p1, p4;
    size_t vec;
    CHECK_OK(dtnh_resnet_plan_memory(&c, 0, &p1, NULL)); /* plain SGD: its slots only */
    c.roles = DTNH_ROLE_W | DTNH_ROLE_W_SRC | DTNH_ROLE_G_J | DTNH_ROLE_G_OMEGA;
    CHECK_OK(dtnh_resnet_plan_memory(&c, 2, &p4, NULL));
    vec = p1.params * sizeof(float); /* each vector, plus up to 63 bytes of alignment */
    CHECK(p1.weights >= vec && p1.weights < vec + 64 && p1.source_copy == 0);
    CHECK(p1.gradients >= vec && p1.gradients < vec + 64);
    CHECK(p4.gradients >= 2 * vec && p4.gradients < 2 * vec + 128);
    CHECK(p4.source_copy >= vec && p4.source_copy < vec + 64);
    CHECK(p4.optimizer_state >= 2 * vec + 62 * sizeof(dtnh_optim_slot) &&
          p4.optimizer_state < 2 * vec + 62 * sizeof(dtnh_optim_slot) + 192);
    CHECK(p1.optimizer_state > 0 && p1.optimizer_state < 62 * sizeof(dtnh_optim_slot) + 64);
    CHECK(p1.params == p1.trainable_params);
    /* 2 BN buffers of C floats and one int64 per BN, 20 BNs: sum of C = 15 * width + ... */
    CHECK(p1.buffers >= 2 * sizeof(float) * 20 * 16);
}

/* The activations backward reads: those stored and those it recomputes. */
static size_t reads(const dtnh_resnet_plan *p) {
    return p->activations + p->activations_recomputed;
}

/* Layers below the first trainable one keep nothing: each mode reads less than the one
   that trains more, and the head alone keeps only the pooled features. */
static void frozen_training_plans_keep_fewer_activations(void) {
    dtnh_resnet_config c = small_config(DTNH_STEM_IMAGENET, 16, 64, 4);
    dtnh_resnet_plan all, bnb, last2, last1, head;
    CHECK_OK(dtnh_resnet_plan_memory(&c, 1, &all, NULL));
    c.train = DTNH_TRAIN_BN_BIAS;
    CHECK_OK(dtnh_resnet_plan_memory(&c, 1, &bnb, NULL));
    c.train = DTNH_TRAIN_LAST_STAGES;
    c.train_stages = 2;
    CHECK_OK(dtnh_resnet_plan_memory(&c, 1, &last2, NULL));
    c.train_stages = 1;
    CHECK_OK(dtnh_resnet_plan_memory(&c, 1, &last1, NULL));
    c.train = DTNH_TRAIN_HEAD;
    CHECK_OK(dtnh_resnet_plan_memory(&c, 1, &head, NULL));
    if (getenv("PLAN_DEBUG"))
        printf("all %zu/%zu bnb %zu/%zu last2 %zu/%zu last1 %zu/%zu head %zu/%zu\n", reads(&all),
               all.step_train, reads(&bnb), bnb.step_train, reads(&last2), last2.step_train,
               reads(&last1), last1.step_train, reads(&head), head.step_train);
    CHECK(reads(&all) > reads(&bnb));
    CHECK(reads(&all) > reads(&last2) && reads(&last2) > reads(&last1));
    CHECK(reads(&last1) > reads(&head));
    CHECK(head.activations == 4 * 128 * sizeof(float)); /* the fc input: [4, 8 x width] */
    /* The step also holds the forward's transient tensors and the kernels' scratch, which
       frozen layers still need: it shrinks, but not always strictly. */
    CHECK(all.step_train > last2.step_train && last2.step_train >= last1.step_train &&
          last1.step_train >= head.step_train);
    CHECK(all.trainable_params > last2.trainable_params &&
          last1.trainable_params > head.trainable_params);
    CHECK(head.optimizer_state < last1.optimizer_state);
    CHECK(head.trainable_params == 5 * 128 + 5);
}

/* ---- forward ------------------------------------------------------------------------------------ */

static void forward_gives_the_expected_shapes(void) {
    static const char *hooks[4] = {"layer1", "layer2", "layer3", "layer4"};
    dtnh_stem stems[2] = {DTNH_STEM_CIFAR, DTNH_STEM_IMAGENET};
    int widths[2] = {16, 64}, si, wi, h;
    for (si = 0; si < 2; si++)
        for (wi = 0; wi < 2; wi++) {
            static net_case c;
            int hw = si == 0 ? 8 : 32, first = si == 0 ? 8 : 8; /* imagenet: 32 -> 16 -> 8 */
            dtnh_resnet_config cfg = small_config(stems[si], widths[wi], hw, 2);
            dtnh_tensor logits, t;
            cfg.train = DTNH_TRAIN_NONE;
            for (h = 0; h < 4; h++) cfg.hooks[h] = hooks[h];
            cfg.hook_count = 4;
            CHECK_OK(case_open(&c, &cfg));
            CHECK_OK(dtnh_resnet_infer(&c.net, &c.input, &c.sa, &logits, NULL));
            CHECK(logits.ndim == 2 && logits.shape[0] == 2 && logits.shape[1] == 5);
            CHECK(dtnh_all_finite(10, logits.data, NULL));
            for (h = 0; h < 4; h++) {
                int s = first >> h;
                CHECK_OK(dtnh_resnet_hook_output(&c.net, h, &t, NULL));
                CHECK_MSG(t.shape[0] == 2 && t.shape[1] == widths[wi] << h &&
                              t.shape[2] == (s ? s : 1) && t.shape[3] == (s ? s : 1) && t.data,
                          "stem %d width %d hook %s: [%d,%d,%d,%d]", si, widths[wi], hooks[h],
                          t.shape[0], t.shape[1], t.shape[2], t.shape[3]);
            }
            case_close(&c);
        }
}

static void hooks_resolve_torchvision_names(void) {
    static net_case c;
    dtnh_resnet_config cfg = small_config(DTNH_STEM_CIFAR, 8, 8, 2);
    dtnh_tensor logits, a, b, pre, post;
    size_t i, n;
    int neg = 0;
    cfg.hooks[0] = "layer3";
    cfg.hooks[1] = "layer3.1";
    cfg.hooks[2] = "layer3.1.relu";
    cfg.hooks[3] = "bn1";
    cfg.hooks[4] = "relu";
    cfg.hooks[5] = "layer2.0.downsample";
    cfg.hook_count = 6;
    CHECK_OK(case_open(&c, &cfg));
    CHECK(dtnh_resnet_hook_index(&c.net, "bn1") == 3 && dtnh_resnet_hook_index(&c.net, "x") == -1);
    CHECK_OK(dtnh_resnet_infer(&c.net, &c.input, &c.sa, &logits, NULL));
    CHECK_OK(dtnh_resnet_hook_output(&c.net, 0, &a, NULL));
    CHECK_OK(dtnh_resnet_hook_output(&c.net, 2, &b, NULL));
    CHECK(a.data == b.data && a.shape[1] == 32);
    CHECK_OK(dtnh_resnet_hook_output(&c.net, 5, &a, NULL));
    CHECK(a.shape[1] == 16 && a.shape[2] == 4);
    /* bn1 is the BatchNorm's own output (negative values), relu the rectified one. */
    CHECK_OK(dtnh_resnet_hook_output(&c.net, 3, &pre, NULL));
    CHECK_OK(dtnh_resnet_hook_output(&c.net, 4, &post, NULL));
    n = dtnh_tensor_count(&pre);
    for (i = 0; i < n; i++) {
        neg += pre.data[i] < 0;
        CHECK(post.data[i] == (pre.data[i] > 0 ? pre.data[i] : 0.0f));
    }
    CHECK(neg > 0);
    case_close(&c);
}

static void training_forward_updates_running_stats_and_inference_does_not(void) {
    static net_case c;
    dtnh_resnet_config cfg = small_config(DTNH_STEM_CIFAR, 4, 8, 2);
    dtnh_tensor logits;
    dtnh_status st;
    int rv = -1, nbt = -1, m;
    float before;
    CHECK_OK(case_open(&c, &cfg));
    rv = dtnh_buffers_find(&c.net.buffers, "layer2.1.bn1.running_var");
    nbt = dtnh_buffers_find(&c.net.buffers, "layer2.1.bn1.num_batches_tracked");
    CHECK(rv >= 0 && nbt >= 0);
    m = (int)c.net.buffers.views[rv].offset;
    before = c.net.buffers.values[m];
    CHECK_OK(dtnh_resnet_infer(&c.net, &c.input, &c.sa, &logits, NULL));
    CHECK(c.net.buffers.values[m] == before);
    CHECK(c.net.buffers.counts[c.net.buffers.views[nbt].offset] == 0);
    case_step(&c, NULL, &st);
    CHECK_OK(st);
    CHECK(c.net.buffers.values[m] != before);
    CHECK(c.net.buffers.counts[c.net.buffers.views[nbt].offset] == 1);
    case_close(&c);
}

/* With frozen statistics the training forward computes what inference does. */
static void frozen_statistics_forward_equals_inference(void) {
    static net_case c;
    dtnh_resnet_config cfg = small_config(DTNH_STEM_IMAGENET, 4, 32, 2);
    dtnh_tensor a, b;
    float saved[10];
    cfg.bn_stats = DTNH_BN_STATS_FROZEN;
    CHECK_OK(case_open(&c, &cfg));
    /* running statistics that differ from the initial ones */
    fill_normal(c.net.buffers.values, c.net.buffers.total, 0.1f, 3);
    {
        size_t i;
        for (i = 0; i < c.net.buffers.total; i++) c.net.buffers.values[i] = 1.0f + fabsf(c.net.buffers.values[i]);
    }
    CHECK_OK(dtnh_resnet_forward(&c.net, &c.input, &c.sa, &a, NULL));
    memcpy(saved, a.data, sizeof saved);
    dtnh_arena_reset(&c.sa, 0);
    CHECK_OK(dtnh_resnet_infer(&c.net, &c.input, &c.sa, &b, NULL));
    CHECK(memcmp(saved, b.data, sizeof saved) == 0);
    CHECK(c.net.buffers.counts[0] == 0);
    case_close(&c);
}

static void teacher_with_external_weights_matches_the_target(void) {
    static net_case t, s;
    dtnh_resnet_config cfg = small_config(DTNH_STEM_CIFAR, 8, 8, 2);
    dtnh_tensor lt, ls, ht, hs;
    float saved[10];
    int h;
    cfg.hooks[0] = "layer2";
    cfg.hooks[1] = "layer4";
    cfg.hook_count = 2;
    cfg.roles = DTNH_ROLE_W | DTNH_ROLE_W_SRC | DTNH_ROLE_G_J | DTNH_ROLE_G_OMEGA;
    CHECK_OK(case_open(&t, &cfg));
    cfg.train = DTNH_TRAIN_NONE;
    cfg.external_weights = 1;
    cfg.roles = 0;
    CHECK_OK(case_open(&s, &cfg));
    CHECK(s.plan.weights == 0 && s.plan.gradients == 0 && s.plan.step_train == 0);
    CHECK(s.plan.persistent < t.plan.persistent / 4);
    CHECK_STATUS(dtnh_resnet_infer(&s.net, &s.input, &s.sa, &ls, NULL), DTNH_ERR_ARG);
    dtnh_copy(t.net.params.total, t.net.params.w, t.net.params.w_src);
    CHECK_OK(dtnh_resnet_use_weights(&s.net, t.net.params.w_src, NULL));
    fill_normal(t.net.buffers.values, t.net.buffers.total, 0.1f, 5);
    for (h = 0; (size_t)h < t.net.buffers.total; h++)
        t.net.buffers.values[h] = 0.5f + fabsf(t.net.buffers.values[h]);
    CHECK_OK(dtnh_resnet_copy_buffers(&s.net, &t.net, NULL));
    CHECK_OK(dtnh_resnet_infer(&t.net, &t.input, &t.sa, &lt, NULL));
    memcpy(saved, lt.data, sizeof saved);
    CHECK_OK(dtnh_resnet_infer(&s.net, &t.input, &s.sa, &ls, NULL));
    CHECK(memcmp(saved, ls.data, sizeof saved) == 0);
    for (h = 0; h < 2; h++) {
        CHECK_OK(dtnh_resnet_hook_output(&t.net, h, &ht, NULL));
        CHECK_OK(dtnh_resnet_hook_output(&s.net, h, &hs, NULL));
        CHECK(dtnh_tensor_same_shape(&ht, &hs));
        CHECK(memcmp(ht.data, hs.data, dtnh_tensor_count(&ht) * sizeof(float)) == 0);
    }
    case_close(&t);
    case_close(&s);
}

/* DELTA's filter attention: one channel of a hook is zeroed before the layers above read it. */
static void masked_inference_zeroes_one_channel(void) {
    static net_case c;
    dtnh_resnet_config cfg = small_config(DTNH_STEM_CIFAR, 4, 8, 2);
    dtnh_tensor logits, h;
    float plain[10], plain_hook[2 * 8 * 4 * 4];
    size_t plane = 16;
    int b, i, differs = 0;
    cfg.hooks[0] = "layer2";
    cfg.hook_count = 1;
    CHECK_OK(case_open(&c, &cfg));
    CHECK_OK(dtnh_resnet_infer(&c.net, &c.input, &c.sa, &logits, NULL));
    memcpy(plain, logits.data, sizeof plain);
    CHECK_OK(dtnh_resnet_hook_output(&c.net, 0, &h, NULL));
    CHECK(dtnh_tensor_count(&h) == sizeof plain_hook / sizeof(float));
    memcpy(plain_hook, h.data, sizeof plain_hook);
    CHECK_STATUS(dtnh_resnet_infer_masked(&c.net, &c.input, 0, 8, &c.sa, &logits, NULL), DTNH_ERR_ARG);
    CHECK_STATUS(dtnh_resnet_infer_masked(&c.net, &c.input, 1, 0, &c.sa, &logits, NULL), DTNH_ERR_ARG);
    dtnh_arena_reset(&c.sa, 0);
    CHECK_OK(dtnh_resnet_infer_masked(&c.net, &c.input, 0, 3, &c.sa, &logits, NULL));
    CHECK_OK(dtnh_resnet_hook_output(&c.net, 0, &h, NULL));
    for (b = 0; b < 2; b++)
        for (i = 0; i < 8 * 16; i++) {
            float want = i / 16 == 3 ? 0.0f : plain_hook[b * 8 * 16 + i];
            CHECK(h.data[(size_t)b * 8 * plane + (size_t)i] == want);
        }
    for (i = 0; i < 10; i++) differs |= logits.data[i] != plain[i];
    CHECK(differs);
    case_close(&c);
}

/* The re-run from a hook gives masked inference's logits, for hooks at block outputs and
   inside blocks (where the identity path crosses the cut), and restores the hook. */
static void masked_rerun_from_a_hook_equals_masked_inference(void) {
    static net_case c;
    static const char *hooks[4] = {"layer2", "layer3.0.bn2", "layer2.1.bn1", "relu"};
    dtnh_resnet_config cfg = small_config(DTNH_STEM_IMAGENET, 4, 32, 2);
    dtnh_tensor logits, t;
    float want[10], *before;
    int h, ch;
    size_t n;
    for (h = 0; h < 4; h++) cfg.hooks[h] = hooks[h];
    cfg.hook_count = 4;
    CHECK_OK(case_open(&c, &cfg));
    CHECK_STATUS(dtnh_resnet_rerun_masked(&c.net, 0, 0, &c.sa, &logits, NULL), DTNH_ERR_ARG);
    for (h = 0; h < 4; h++)
        for (ch = 0; ch < 2; ch++) {
            dtnh_arena_reset(&c.sa, 0);
            CHECK_OK(dtnh_resnet_infer_masked(&c.net, &c.input, h, ch, &c.sa, &logits, NULL));
            memcpy(want, logits.data, sizeof want);
            dtnh_arena_reset(&c.sa, 0);
            CHECK_OK(dtnh_resnet_infer(&c.net, &c.input, &c.sa, &logits, NULL));
            CHECK_OK(dtnh_resnet_hook_output(&c.net, h, &t, NULL));
            n = dtnh_tensor_count(&t);
            before = (float *)malloc(n * sizeof(float));
            memcpy(before, t.data, n * sizeof(float));
            CHECK_OK(dtnh_resnet_rerun_masked(&c.net, h, ch, &c.sa, &logits, NULL));
            CHECK_MSG(memcmp(want, logits.data, sizeof want) == 0, "hook %s channel %d", hooks[h], ch);
            CHECK(memcmp(before, t.data, n * sizeof(float)) == 0);
            CHECK_OK(dtnh_resnet_rerun_masked(&c.net, h, ch, &c.sa, &logits, NULL));
            CHECK(memcmp(want, logits.data, sizeof want) == 0);
            free(before);
        }
    case_close(&c);
}

/* ---- backward ----------------------------------------------------------------------------------- */

/* kann's check: one random direction v over every parameter, one pair of extra losses. The
   derivative uses the steps float rounding really took. Steps of 1e-5 cross few ReLU kinks and
   stay well above the loss's float rounding (~2e-7). */
static double direction_error(net_case *c, const float *grad, double (*loss)(net_case *, void *),
                              void *ctx, float h, uint64_t seed) {
    size_t n = c->net.params.total, i;
    float *w = c->net.params.w, *saved = (float *)malloc(n * sizeof(float)),
          *plus = (float *)malloc(n * sizeof(float)), *v = (float *)malloc(n * sizeof(float));
    double lp, lm, an = 0, fd, gn = 0, vn = 0;
    fill_normal(v, n, 1.0f, seed);
    memcpy(saved, w, n * sizeof(float));
    for (i = 0; i < n; i++) w[i] = plus[i] = saved[i] + h * v[i];
    lp = loss(c, ctx);
    for (i = 0; i < n; i++) w[i] = saved[i] - h * v[i];
    lm = loss(c, ctx);
    for (i = 0; i < n; i++) {
        an += (double)grad[i] * ((double)plus[i] - (double)w[i]) / (2.0 * h);
        gn += (double)grad[i] * grad[i];
        vn += (double)v[i] * v[i];
    }
    memcpy(w, saved, n * sizeof(float));
    fd = (lp - lm) / (2.0 * h);
    free(saved);
    free(plus);
    free(v);
    if (getenv("FD_DEBUG")) printf("    an %.6e fd %.6e |g| %.3e\n", an, fd, sqrt(gn));
    /* Relative to the typical size of a derivative along a random direction, |g| |v| / sqrt(n):
       a float32 network's loss is rough (ReLU kinks, rounding) at the 1e-3 level of that. */
    return fabs(fd - an) / sqrt(gn * vn / (double)n);
}

static double ce_loss_of(net_case *c, void *ctx) {
    (void)ctx;
    return case_loss(c);
}

static void whole_network_gradient_matches_finite_differences(void) {
    static net_case c;
    dtnh_resnet_config cfg = small_config(DTNH_STEM_CIFAR, 4, 16, 2);
    dtnh_status st;
    int t;
    CHECK_OK(case_open(&c, &cfg));
    case_step(&c, NULL, &st);
    CHECK_OK(st);
    for (t = 0; t < 2; t++) {
        double e = direction_error(&c, c.net.params.g_j, ce_loss_of, NULL, 1e-5f, 100 + (uint64_t)t);
        CHECK_MSG(e < 2e-2, "direction %d: relative error %g", t, e);
    }
    case_close(&c);
}

static void imagenet_stem_gradient_matches_finite_differences(void) {
    static net_case c;
    dtnh_resnet_config cfg = small_config(DTNH_STEM_IMAGENET, 4, 64, 2); /* layer4: 2x2 */
    dtnh_status st;
    double e;
    CHECK_OK(case_open(&c, &cfg));
    case_step(&c, NULL, &st);
    CHECK_OK(st);
    e = direction_error(&c, c.net.params.g_j, ce_loss_of, NULL, 1e-5f, 200);
    CHECK_MSG(e < 2e-2, "relative error %g", e);
    case_close(&c);
}

/* Omega = sum over hooks of <r_h, F_h>: its gradient is backward from r_h at the hooks. */
typedef struct hook_loss_ctx {
    float *r[DTNH_RESNET_MAX_HOOKS];
} hook_loss_ctx;

static double hook_loss_of(net_case *c, void *ctx) {
    hook_loss_ctx *k = (hook_loss_ctx *)ctx;
    dtnh_tensor logits, t;
    double s = 0;
    size_t i;
    int h;
    dtnh_arena_reset(&c->sa, 0);
    if (dtnh_resnet_forward(&c->net, &c->input, &c->sa, &logits, NULL)) return NAN;
    for (h = 0; h < c->net.cfg.hook_count; h++) {
        dtnh_resnet_hook_output(&c->net, h, &t, NULL);
        for (i = 0; i < dtnh_tensor_count(&t); i++) s += (double)k->r[h][i] * t.data[i];
    }
    return s;
}

static void hook_gradients_match_finite_differences_and_stop_at_the_deepest_hook(void) {
    static net_case c;
    dtnh_resnet_config cfg = small_config(DTNH_STEM_CIFAR, 4, 16, 2);
    hook_loss_ctx k;
    dtnh_tensor logits, t;
    int h, i, l4;
    double e;
    cfg.hooks[0] = "layer2";
    cfg.hooks[1] = "layer3.0.bn2";
    cfg.hooks[2] = "layer1.1";
    cfg.hook_count = 3;
    cfg.roles = DTNH_ROLE_W | DTNH_ROLE_G_J | DTNH_ROLE_G_OMEGA;
    CHECK_OK(case_open(&c, &cfg));
    CHECK_OK(dtnh_resnet_forward(&c.net, &c.input, &c.sa, &logits, NULL));
    for (h = 0; h < 3; h++) {
        CHECK_OK(dtnh_resnet_hook_output(&c.net, h, &t, NULL));
        k.r[h] = (float *)malloc(dtnh_tensor_count(&t) * sizeof(float));
        fill_normal(k.r[h], dtnh_tensor_count(&t), 1.0f, 300 + (uint64_t)h);
    }
    dtnh_fill(c.net.params.total, c.net.params.g_omega, 9.0f);
    CHECK_OK(dtnh_resnet_backward(&c.net, NULL, (const float *const *)k.r, c.net.params.g_omega, 0, NULL));
    e = direction_error(&c, c.net.params.g_omega, hook_loss_of, &k, 1e-5f, 400);
    CHECK_MSG(e < 2e-2, "relative error %g", e);
    /* Above layer3.0.bn2 nothing reaches: layer3.0.conv2 gets a gradient, layer4 and fc zero. */
    i = dtnh_params_find(&c.net.params, "layer3.0.conv2.weight");
    CHECK(i >= 0 && dtnh_sumsq(c.net.params.views[i].count, c.net.params.g_omega + c.net.params.views[i].offset) > 0);
    l4 = dtnh_params_find(&c.net.params, "layer3.1.conv1.weight");
    CHECK(l4 >= 0);
    for (i = l4; i < c.net.params.count; i++)
        CHECK(dtnh_sumsq(c.net.params.views[i].count, c.net.params.g_omega + c.net.params.views[i].offset) == 0);
    for (h = 0; h < 3; h++) free(k.r[h]);
    case_close(&c);
}

/* Backward reads the forward's tensors only: g_J, then g_Omega from hooks, then g_J again
   gives the same bits; accumulate adds. */
static void backward_runs_twice_after_one_forward(void) {
    static net_case c;
    dtnh_resnet_config cfg = small_config(DTNH_STEM_IMAGENET, 4, 32, 2);
    dtnh_tensor logits, t;
    float dl[10], *first, *hg[1];
    double loss;
    size_t n, i;
    cfg.hooks[0] = "layer3";
    cfg.hook_count = 1;
    cfg.roles = DTNH_ROLE_W | DTNH_ROLE_G_J | DTNH_ROLE_G_OMEGA;
    CHECK_OK(case_open(&c, &cfg));
    n = c.net.params.total;
    CHECK_OK(dtnh_resnet_forward(&c.net, &c.input, &c.sa, &logits, NULL));
    CHECK_OK(dtnh_softmax_cross_entropy(2, 5, logits.data, c.labels, dl, &loss, NULL));
    CHECK_OK(dtnh_resnet_backward(&c.net, dl, NULL, c.net.params.g_j, 0, NULL));
    first = (float *)malloc(n * sizeof(float));
    memcpy(first, c.net.params.g_j, n * sizeof(float));
    CHECK_OK(dtnh_resnet_hook_output(&c.net, 0, &t, NULL));
    hg[0] = (float *)malloc(dtnh_tensor_count(&t) * sizeof(float));
    fill_normal(hg[0], dtnh_tensor_count(&t), 1.0f, 9);
    CHECK_OK(dtnh_resnet_backward(&c.net, NULL, (const float *const *)hg, c.net.params.g_omega, 0, NULL));
    CHECK_OK(dtnh_resnet_backward(&c.net, dl, NULL, c.net.params.g_j, 0, NULL));
    CHECK(memcmp(first, c.net.params.g_j, n * sizeof(float)) == 0);
    CHECK_OK(dtnh_resnet_backward(&c.net, dl, NULL, c.net.params.g_j, 1, NULL));
    for (i = 0; i < n; i++) CHECK_NEAR(c.net.params.g_j[i], 2.0f * first[i], 1e-6);
    free(first);
    free(hg[0]);
    case_close(&c);
}

/* The lean plan lets backward reuse the memory of tensors it no longer reads: the same
   gradients from a smaller step arena, and no second backward. */
static void single_backward_gives_the_same_gradients_in_less_memory(void) {
    static net_case a, b;
    dtnh_resnet_config cfg = small_config(DTNH_STEM_IMAGENET, 8, 32, 3);
    dtnh_status st;
    dtnh_error err;
    CHECK_OK(case_open(&a, &cfg));
    cfg.single_backward = 1;
    CHECK_OK(case_open(&b, &cfg));
    CHECK(b.plan.step_train < a.plan.step_train && b.plan.activations == a.plan.activations);
    case_step(&a, NULL, &st);
    CHECK_OK(st);
    case_step(&b, NULL, &st);
    CHECK_OK(st);
    CHECK(memcmp(a.net.params.g_j, b.net.params.g_j, a.net.params.total * sizeof(float)) == 0);
    CHECK_STATUS(dtnh_resnet_backward(&b.net, NULL, NULL, NULL, 0, &err), DTNH_ERR_ARG);
    CHECK(strstr(err.msg, "single_backward") != NULL);
    case_close(&a);
    case_close(&b);
}

/* cfg.winograd reaches the 3x3 layers (AVX-512 builds: other bits, the same to 1e-4 of the
   largest gradient entry; elsewhere the same bits), and the plan grows for its work (or not). */
static void winograd_reaches_the_network(void) {
    static net_case a, b;
    dtnh_resnet_config cfg = small_config(DTNH_STEM_CIFAR, 16, 12, 3);
    dtnh_status st;
    double big = 0, diff = 0;
    size_t i, n;
    int applies;
#if defined(__AVX512F__) && !defined(DTNH_NO_SIMD)
    applies = 1;
#else
    applies = 0;
#endif
    CHECK_OK(case_open(&a, &cfg));
    cfg.winograd = 1;
    CHECK_OK(case_open(&b, &cfg));
    CHECK(applies ? b.plan.step_train > a.plan.step_train : b.plan.step_train == a.plan.step_train);
    case_step(&a, NULL, &st);
    CHECK_OK(st);
    case_step(&b, NULL, &st);
    CHECK_OK(st);
    n = a.net.params.total;
    CHECK((memcmp(a.net.params.g_j, b.net.params.g_j, n * sizeof(float)) != 0) == applies);
    for (i = 0; i < n; i++) {
        if (fabs(a.net.params.g_j[i]) > big) big = fabs(a.net.params.g_j[i]);
        if (fabs(a.net.params.g_j[i] - b.net.params.g_j[i]) > diff) diff = fabs(a.net.params.g_j[i] - b.net.params.g_j[i]);
    }
    CHECK_MSG(diff <= 1e-4 * big, "gradients %.3g apart (largest %.3g)", diff, big);
    case_close(&a);
    case_close(&b);
}

/* A second backward after one forward (recomputing what it reads again) repeats the first
   (untrained entries stay zero in both). */
static void twice_gives_the_same(net_case *c) {
    dtnh_tensor logits;
    float dlogits[16 * 64], *again = (float *)calloc(c->net.params.total, sizeof(float));
    double loss;
    dtnh_arena_reset(&c->sa, 0);
    CHECK_OK(dtnh_resnet_forward(&c->net, &c->input, &c->sa, &logits, NULL));
    CHECK_OK(dtnh_softmax_cross_entropy(logits.shape[0], logits.shape[1], logits.data, c->labels,
                                        dlogits, &loss, NULL));
    CHECK_OK(dtnh_resnet_backward(&c->net, dlogits, NULL, NULL, 0, NULL));
    CHECK_OK(dtnh_resnet_backward(&c->net, dlogits, NULL, again, 0, NULL));
    CHECK(memcmp(again, c->net.params.g_j, c->net.params.total * sizeof(float)) == 0);
    free(again);
}

/* Backward recomputes the fused BN+ReLU outputs and the outputs of blocks without downsample
   from the BN inputs it keeps: the same gradients and running statistics, bit for bit, as
   keeping them, from a smaller step arena, whatever trains, with frozen or batch statistics,
   one or two backwards per forward, and hooked outputs (a BN's, a block's) stay stored and
   the same (their reader is the caller). */
static void recomputed_activations_give_the_same_gradients_in_less_memory(void) {
    static net_case keep, redo;
    static const dtnh_train trains[] = {DTNH_TRAIN_ALL, DTNH_TRAIN_BN_BIAS, DTNH_TRAIN_LAST_STAGES};
    int i, h;
    for (i = 0; i < 6; i++) {
        dtnh_resnet_config cfg = small_config(i % 2 ? DTNH_STEM_CIFAR : DTNH_STEM_IMAGENET, 8, 16, 3);
        size_t bufs;
        dtnh_status st;
        cfg.train = trains[i % 3];
        cfg.train_stages = 2;
        cfg.single_backward = i < 3;
        if (i == 4) cfg.bn_stats = DTNH_BN_STATS_FROZEN;
        if (i == 5) {
            cfg.hooks[0] = "layer1.0.bn1";
            cfg.hooks[1] = "layer1";
            cfg.hook_count = 2;
        }
        cfg.keep_activations = 1;
        CHECK_OK(case_open(&keep, &cfg));
        cfg.keep_activations = 0;
        CHECK_OK(case_open(&redo, &cfg));
        CHECK(keep.plan.activations_recomputed == 0 && redo.plan.activations_recomputed > 0);
        CHECK(redo.plan.activations + redo.plan.activations_recomputed == keep.plan.activations);
        CHECK(redo.plan.step_train <= keep.plan.step_train);
        /* training it all, the activations outweigh the kernels' work in the peak */
        if (cfg.train == DTNH_TRAIN_ALL) CHECK(redo.plan.step_train < keep.plan.step_train);
        CHECK(redo.plan.step_infer == keep.plan.step_infer);
        case_step(&keep, NULL, &st);
        CHECK_OK(st);
        case_step(&redo, NULL, &st);
        CHECK_OK(st);
        for (h = 0; h < cfg.hook_count; h++) {
            dtnh_tensor hk, hr;
            CHECK_OK(dtnh_resnet_hook_output(&keep.net, h, &hk, NULL));
            CHECK_OK(dtnh_resnet_hook_output(&redo.net, h, &hr, NULL));
            CHECK(memcmp(hk.data, hr.data, dtnh_tensor_count(&hk) * sizeof(float)) == 0);
        }
        CHECK(memcmp(keep.net.params.g_j, redo.net.params.g_j, keep.net.params.total * sizeof(float)) == 0);
        bufs = keep.net.buffers.total * sizeof(float);
        CHECK(memcmp(keep.net.buffers.values, redo.net.buffers.values, bufs) == 0);
        if (!cfg.single_backward) twice_gives_the_same(&redo);
        case_close(&keep);
        case_close(&redo);
    }
}

/* Training the last stage (with batch statistics everywhere, so the forward is the same)
   gives the same gradients there as training everything, and leaves frozen views alone. */
static void frozen_stages_get_no_gradient(void) {
    static net_case all, last;
    dtnh_resnet_config cfg = small_config(DTNH_STEM_CIFAR, 4, 16, 2);
    dtnh_status st;
    int i, trained = 0;
    cfg.bn_stats = DTNH_BN_STATS_BATCH;
    CHECK_OK(case_open(&all, &cfg));
    cfg.train = DTNH_TRAIN_LAST_STAGES;
    CHECK_OK(case_open(&last, &cfg));
    CHECK(memcmp(all.net.params.w, last.net.params.w, all.net.params.total * sizeof(float)) == 0);
    case_step(&all, NULL, &st);
    CHECK_OK(st);
    dtnh_fill(last.net.params.total, last.net.params.g_j, 7.0f);
    case_step(&last, NULL, &st);
    CHECK_OK(st);
    for (i = 0; i < last.net.params.count; i++) {
        const dtnh_param_view *v = &last.net.params.views[i];
        int in_last = strncmp(v->name, "layer4", 6) == 0 || strncmp(v->name, "fc", 2) == 0;
        size_t j;
        CHECK_MSG(v->trainable == in_last, "%s trainable %d", v->name, v->trainable);
        trained += v->trainable;
        for (j = 0; j < v->count; j++) {
            float g = last.net.params.g_j[v->offset + j];
            if (!v->trainable) CHECK_MSG(g == 7.0f, "%s[%zu] = %g", v->name, j, g);
            else CHECK_NEAR(g, all.net.params.g_j[v->offset + j], 1e-5);
        }
    }
    CHECK(trained == 17); /* layer4: 2 x 6 + downsample 3; fc: 2 */
    case_close(&all);
    case_close(&last);
}

static void head_and_bn_bias_modes_train_what_they_say(void) {
    static net_case c;
    dtnh_resnet_config cfg = small_config(DTNH_STEM_CIFAR, 4, 8, 2);
    dtnh_status st;
    int i;
    cfg.train = DTNH_TRAIN_BN_BIAS;
    CHECK_OK(case_open(&c, &cfg));
    for (i = 0; i < c.net.params.count; i++) {
        const dtnh_param_view *v = &c.net.params.views[i];
        int want = (v->groups & (DTNH_GROUP_BN | DTNH_GROUP_BIAS | DTNH_GROUP_HEAD)) != 0;
        CHECK_MSG(v->trainable == want, "%s", v->name);
    }
    case_step(&c, NULL, &st);
    CHECK_OK(st);
    CHECK(dtnh_sumsq(c.net.params.views[1].count, c.net.params.g_j + c.net.params.views[1].offset) > 0);
    CHECK_OK(dtnh_resnet_set_train(&c.net, DTNH_TRAIN_HEAD, 0, NULL));
    CHECK_STATUS(dtnh_resnet_backward(&c.net, NULL, NULL, NULL, 0, NULL), DTNH_ERR_ARG);
    for (i = 0; i < c.net.params.count; i++)
        CHECK(c.net.params.views[i].trainable == ((c.net.params.views[i].groups & DTNH_GROUP_HEAD) != 0));
    case_step(&c, NULL, &st);
    CHECK_OK(st);
    case_close(&c);
}

/* Bit-identical logits, gradients and running statistics with 1 and 2 threads. */
static void results_do_not_depend_on_the_thread_count(void) {
    static net_case c;
    dtnh_resnet_config cfg = small_config(DTNH_STEM_IMAGENET, 8, 32, 3);
    dtnh_status st;
    float *g1;
    float *b1;
    double l1, l2;
    size_t n;
#ifdef _OPENMP
    int saved = omp_get_max_threads();
    omp_set_num_threads(1);
#endif
    cfg.threads = 2;
    CHECK_OK(case_open(&c, &cfg));
    n = c.net.params.total;
    g1 = (float *)malloc(n * sizeof(float));
    b1 = (float *)malloc(c.net.buffers.total * sizeof(float));
    l1 = case_step(&c, NULL, &st);
    CHECK_OK(st);
    memcpy(g1, c.net.params.g_j, n * sizeof(float));
    memcpy(b1, c.net.buffers.values, c.net.buffers.total * sizeof(float));
    dtnh_resnet_init_weights(&c.net, 42);
#ifdef _OPENMP
    omp_set_num_threads(2);
#endif
    l2 = case_step(&c, NULL, &st);
#ifdef _OPENMP
    omp_set_num_threads(saved);
#endif
    CHECK_OK(st);
    CHECK(l1 == l2);
    CHECK(memcmp(g1, c.net.params.g_j, n * sizeof(float)) == 0);
    CHECK(memcmp(b1, c.net.buffers.values, c.net.buffers.total * sizeof(float)) == 0);
    free(g1);
    free(b1);
    case_close(&c);
}

/* ---- names and initialisation ------------------------------------------------------------------- */

static void state_dict_follows_torchvision(void) {
    static net_case c;
    static const char *first[] = {"conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean",
                                  "bn1.running_var", "bn1.num_batches_tracked",
                                  "layer1.0.conv1.weight", "layer1.0.bn1.weight"};
    dtnh_resnet_config cfg = small_config(DTNH_STEM_IMAGENET, 4, 32, 1);
    dtnh_state_entry e;
    int i, k;
    CHECK_OK(case_open(&c, &cfg));
    CHECK(dtnh_resnet_state_count(&c.net) == 122 && c.net.params.count == 62);
    for (i = 0; i < 8; i++) {
        CHECK_OK(dtnh_resnet_state_entry(&c.net, i, &e, NULL));
        CHECK_MSG(strcmp(e.name, first[i]) == 0, "entry %d is %s", i, e.name);
    }
    CHECK_OK(dtnh_resnet_state_entry(&c.net, 5, &e, NULL));
    CHECK(e.ndim == 0 && e.i64 && !e.f32 && e.buffer >= 0 && e.param < 0);
    CHECK_OK(dtnh_resnet_state_entry(&c.net, 0, &e, NULL));
    CHECK(e.ndim == 4 && e.shape[0] == 4 && e.shape[1] == 3 && e.shape[2] == 7 && e.f32 == c.net.params.w);
    k = dtnh_resnet_state_find(&c.net, "layer2.0.downsample.0.weight");
    CHECK_OK(dtnh_resnet_state_entry(&c.net, k, &e, NULL));
    CHECK(e.shape[0] == 8 && e.shape[1] == 4 && e.shape[2] == 1 && e.shape[3] == 1);
    CHECK_OK(dtnh_resnet_state_entry(&c.net, k - 1, &e, NULL));
    CHECK(strcmp(e.name, "layer2.0.bn2.num_batches_tracked") == 0);
    CHECK(dtnh_resnet_state_find(&c.net, "layer1.0.downsample.0.weight") == -1);
    CHECK_OK(dtnh_resnet_state_entry(&c.net, 120, &e, NULL));
    CHECK(strcmp(e.name, "fc.weight") == 0 && e.shape[0] == 5 && e.shape[1] == 32);
    CHECK(c.net.params.views[e.param].groups == (DTNH_GROUP_HEAD | DTNH_GROUP_KERNEL));
    CHECK_OK(dtnh_resnet_state_entry(&c.net, 121, &e, NULL));
    CHECK(strcmp(e.name, "fc.bias") == 0 && c.net.params.views[e.param].groups == (DTNH_GROUP_HEAD | DTNH_GROUP_BIAS));
    CHECK(c.net.params.views[1].groups == (DTNH_GROUP_BACKBONE | DTNH_GROUP_BN));
    CHECK(c.net.params.views[0].groups == (DTNH_GROUP_BACKBONE | DTNH_GROUP_KERNEL));
    CHECK_STATUS(dtnh_resnet_state_entry(&c.net, 122, &e, NULL), DTNH_ERR_ARG);
    case_close(&c);
}

static void initialisation_follows_torchvision(void) {
    static net_case c;
    dtnh_resnet_config cfg = small_config(DTNH_STEM_CIFAR, 16, 8, 1);
    const dtnh_param_view *v;
    double sd, bound = 1.0 / sqrt(128.0);
    size_t i;
    CHECK_OK(case_open(&c, &cfg));
    v = &c.net.params.views[dtnh_params_find(&c.net.params, "layer4.0.conv2.weight")];
    sd = sqrt(dtnh_sumsq(v->count, c.net.params.w + v->offset) / (double)v->count);
    CHECK_NEAR(sd, sqrt(2.0 / (128 * 9)), 0.02 * sqrt(2.0 / (128 * 9)));
    v = &c.net.params.views[dtnh_params_find(&c.net.params, "layer3.1.bn2.weight")];
    for (i = 0; i < v->count; i++) CHECK(c.net.params.w[v->offset + i] == 1.0f && c.net.params.w[v->offset + v->count + i] == 0.0f);
    v = &c.net.params.views[dtnh_params_find(&c.net.params, "fc.weight")];
    for (i = 0; i < v->count + 5; i++) CHECK(fabs(c.net.params.w[v->offset + i]) <= bound);
    CHECK(dtnh_sumsq(v->count, c.net.params.w + v->offset) > 0.25 * v->count * bound * bound);
    i = (size_t)dtnh_buffers_find(&c.net.buffers, "layer1.0.bn1.running_var");
    CHECK(c.net.buffers.values[c.net.buffers.views[i].offset] == 1.0f);
    case_close(&c);
}

/* ---- bad input ------------------------------------------------------------------------------------ */

static void bad_configurations_are_refused(void) {
    dtnh_resnet_config c;
    dtnh_resnet_plan p;
    dtnh_error err;
    c = small_config(DTNH_STEM_CIFAR, -1, 8, 1);
    CHECK_STATUS(dtnh_resnet_plan_memory(&c, 0, &p, &err), DTNH_ERR_ARG);
    CHECK(strstr(err.msg, "width=-1") != NULL);
    c = small_config((dtnh_stem)9, 4, 8, 1);
    CHECK_STATUS(dtnh_resnet_plan_memory(&c, 0, &p, &err), DTNH_ERR_ARG);
    c = small_config(DTNH_STEM_CIFAR, 4, 8, -3);
    CHECK_STATUS(dtnh_resnet_plan_memory(&c, 0, &p, &err), DTNH_ERR_ARG);
    c = small_config(DTNH_STEM_CIFAR, 4, 8, 1);
    c.train = DTNH_TRAIN_LAST_STAGES;
    c.train_stages = 5;
    CHECK_STATUS(dtnh_resnet_plan_memory(&c, 0, &p, &err), DTNH_ERR_ARG);
    CHECK(strstr(err.msg, "train_stages 5") != NULL);
    c = small_config(DTNH_STEM_CIFAR, 4, 8, 1);
    c.train = (dtnh_train)77;
    CHECK_STATUS(dtnh_resnet_plan_memory(&c, 0, &p, &err), DTNH_ERR_ARG);
    c = small_config(DTNH_STEM_CIFAR, 4, 8, 1);
    c.hooks[0] = "layer9";
    c.hook_count = 1;
    CHECK_STATUS(dtnh_resnet_plan_memory(&c, 0, &p, &err), DTNH_ERR_ARG);
    CHECK(strstr(err.msg, "layer9") != NULL);
    c.hook_count = 9;
    CHECK_STATUS(dtnh_resnet_plan_memory(&c, 0, &p, &err), DTNH_ERR_ARG);
    c = small_config(DTNH_STEM_CIFAR, 4, 8, 1);
    CHECK_STATUS(dtnh_resnet_plan_memory(&c, -2, &p, &err), DTNH_ERR_ARG);
    CHECK_STATUS(dtnh_resnet_plan_memory(&c, 3, &p, &err), DTNH_ERR_ARG);
    CHECK_OK(dtnh_resnet_plan_memory(&c, DTNH_PLAN_NO_OPTIMIZER, &p, &err));
    CHECK(p.optimizer_state == 0);
    CHECK_STATUS(dtnh_resnet_init(NULL, &c, NULL, &err), DTNH_ERR_ARG);
}

static void forward_refuses_wrong_inputs(void) {
    static net_case c;
    dtnh_resnet_config cfg = small_config(DTNH_STEM_CIFAR, 4, 8, 2);
    dtnh_tensor x, logits;
    dtnh_error err;
    int shape[4] = {3, 3, 8, 8};
    CHECK_OK(case_open(&c, &cfg));
    CHECK_STATUS(dtnh_resnet_backward(&c.net, NULL, NULL, NULL, 0, &err), DTNH_ERR_ARG);
    CHECK(strstr(err.msg, "no training forward") != NULL);
    CHECK_OK(dtnh_tensor_view(&x, c.x, 4, shape, NULL)); /* batch 3 > max_batch 2 */
    CHECK_STATUS(dtnh_resnet_forward(&c.net, &x, &c.sa, &logits, &err), DTNH_ERR_SHAPE);
    CHECK(strstr(err.msg, "batch 3") != NULL);
    shape[0] = 2;
    shape[1] = 1;
    CHECK_OK(dtnh_tensor_view(&x, c.x, 4, shape, NULL));
    CHECK_STATUS(dtnh_resnet_infer(&c.net, &x, &c.sa, &logits, &err), DTNH_ERR_SHAPE);
    shape[1] = 3;
    shape[3] = 9;
    CHECK_OK(dtnh_tensor_view(&x, c.x, 4, shape, NULL));
    CHECK_STATUS(dtnh_resnet_forward(&c.net, &x, &c.sa, &logits, &err), DTNH_ERR_SHAPE);
    CHECK_OK(dtnh_tensor_view(&x, c.x, 3, shape, NULL));
    CHECK_STATUS(dtnh_resnet_forward(&c.net, &x, &c.sa, &logits, &err), DTNH_ERR_SHAPE);
    x = c.input;
    x.data = NULL;
    CHECK_STATUS(dtnh_resnet_forward(&c.net, &x, &c.sa, &logits, &err), DTNH_ERR_ARG);
    CHECK_STATUS(dtnh_resnet_forward(&c.net, NULL, &c.sa, &logits, &err), DTNH_ERR_ARG);
    case_close(&c);
}

static void training_an_inference_only_network_is_refused(void) {
    static net_case c;
    dtnh_resnet_config cfg = small_config(DTNH_STEM_CIFAR, 4, 8, 2);
    dtnh_tensor logits;
    cfg.train = DTNH_TRAIN_NONE;
    CHECK_OK(case_open(&c, &cfg));
    CHECK(c.plan.gradients == 0 && c.net.params.g_j == NULL);
    CHECK_STATUS(dtnh_resnet_forward(&c.net, &c.input, &c.sa, &logits, NULL), DTNH_ERR_ARG);
    CHECK_STATUS(dtnh_resnet_backward(&c.net, NULL, NULL, NULL, 0, NULL), DTNH_ERR_ARG);
    CHECK_OK(dtnh_resnet_infer(&c.net, &c.input, &c.sa, &logits, NULL));
    case_close(&c);
}

/* PyTorch refuses batch statistics over a single value per channel; so do we. */
static void batch_statistics_need_two_values_per_channel(void) {
    static net_case c;
    dtnh_resnet_config cfg = small_config(DTNH_STEM_CIFAR, 4, 1, 2);
    dtnh_tensor x, logits;
    dtnh_error err;
    int shape[4] = {1, 3, 1, 1};
    CHECK_OK(case_open(&c, &cfg));
    CHECK_OK(dtnh_tensor_view(&x, c.x, 4, shape, NULL));
    CHECK_STATUS(dtnh_resnet_forward(&c.net, &x, &c.sa, &logits, &err), DTNH_ERR_SHAPE);
    CHECK(strstr(err.msg, "conv1") == NULL && strstr(err.msg, "bn1") != NULL);
    dtnh_arena_reset(&c.sa, 0);
    CHECK_OK(dtnh_resnet_infer(&c.net, &x, &c.sa, &logits, &err));
    dtnh_arena_reset(&c.sa, 0);
    CHECK_OK(dtnh_resnet_forward(&c.net, &c.input, &c.sa, &logits, &err));
    case_close(&c);
}

/* A NaN or Inf in the input reaches the logits (ReLU keeps NaN, as PyTorch), where the loss
   refuses it, instead of vanishing into finite logits. */
static void a_non_finite_input_reaches_the_loss(void) {
    static net_case c;
    dtnh_resnet_config cfg = small_config(DTNH_STEM_IMAGENET, 4, 32, 2);
    dtnh_tensor logits;
    double loss;
    CHECK_OK(case_open(&c, &cfg));
    c.x[5] = INFINITY;
    CHECK_OK(dtnh_resnet_forward(&c.net, &c.input, &c.sa, &logits, NULL));
    CHECK(!dtnh_all_finite(5, logits.data, NULL));
    CHECK_STATUS(dtnh_softmax_cross_entropy(2, 5, logits.data, c.labels, NULL, &loss, NULL),
                 DTNH_ERR_NUMERIC);
    c.x[5] = NAN;
    dtnh_arena_reset(&c.sa, 0);
    CHECK_OK(dtnh_resnet_infer(&c.net, &c.input, &c.sa, &logits, NULL));
    CHECK(!dtnh_all_finite(5, logits.data, NULL));
    case_close(&c);
}

static void hook_shapes_are_known_before_any_forward(void) {
    static net_case c;
    dtnh_resnet_config cfg = small_config(DTNH_STEM_CIFAR, 8, 16, 2);
    int ch, h, w;
    cfg.hooks[0] = "layer3.0.bn2";
    cfg.hooks[1] = "avgpool";
    cfg.hook_count = 2;
    CHECK_OK(case_open(&c, &cfg));
    CHECK_OK(dtnh_resnet_hook_shape(&c.net, 0, &ch, &h, &w, NULL));
    CHECK(ch == 32 && h == 4 && w == 4);
    CHECK_OK(dtnh_resnet_hook_shape(&c.net, 1, &ch, &h, &w, NULL));
    CHECK(ch == 64 && h == 1 && w == 1);
    CHECK_STATUS(dtnh_resnet_hook_shape(&c.net, 2, &ch, &h, &w, NULL), DTNH_ERR_ARG);
    case_close(&c);
}

void suite_resnet(void) {
    RUN(plan_is_exact_for_the_cifar_stem);
    RUN(plan_is_exact_for_the_imagenet_stem_with_hooks);
    RUN(plan_is_exact_for_a_frozen_network);
    RUN(plan_is_exact_for_a_single_backward);
    RUN(plan_splits_the_persistent_memory_by_role);
    RUN(frozen_training_plans_keep_fewer_activations);
    RUN(recomputed_activations_give_the_same_gradients_in_less_memory);
    RUN(forward_gives_the_expected_shapes);
    RUN(hooks_resolve_torchvision_names);
    RUN(training_forward_updates_running_stats_and_inference_does_not);
    RUN(frozen_statistics_forward_equals_inference);
    RUN(teacher_with_external_weights_matches_the_target);
    RUN(masked_inference_zeroes_one_channel);
    RUN(masked_rerun_from_a_hook_equals_masked_inference);
    RUN(whole_network_gradient_matches_finite_differences);
    RUN(imagenet_stem_gradient_matches_finite_differences);
    RUN(hook_gradients_match_finite_differences_and_stop_at_the_deepest_hook);
    RUN(backward_runs_twice_after_one_forward);
    RUN(single_backward_gives_the_same_gradients_in_less_memory);
    RUN(winograd_reaches_the_network);
    RUN(frozen_stages_get_no_gradient);
    RUN(head_and_bn_bias_modes_train_what_they_say);
    RUN(results_do_not_depend_on_the_thread_count);
    RUN(state_dict_follows_torchvision);
    RUN(initialisation_follows_torchvision);
    RUN(bad_configurations_are_refused);
    RUN(forward_refuses_wrong_inputs);
    RUN(training_an_inference_only_network_is_refused);
    RUN(batch_statistics_need_two_values_per_channel);
    RUN(a_non_finite_input_reaches_the_loss);
    RUN(hook_shapes_are_known_before_any_forward);
}
