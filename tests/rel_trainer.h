/* A tiny complete training run for the reliability checks (tests/test_reliability.c and the
   crash-test driver tests/crash_checkpoint.c): a width-4 ResNet-18 (cifar stem, 8x8 inputs,
   5 classes) fine-tuned with DTNH(L2-SP) and SGD momentum on 24 fixed synthetic images, with a
   shuffled minibatch stream and random crops and flips, so every piece of state a checkpoint
   must carry (weights, BN statistics, momentum, step counts, stream, augmentation RNG,
   iteration) changes at every step. Include after dtnh_nn.h; the functions are static inline, so
   a file that uses only some of them gets no unused-function warning. */
#ifndef DTNH_REL_TRAINER_H
#define DTNH_REL_TRAINER_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define REL_BATCH 2
#define REL_CLASSES 5
#define REL_HW 8
#define REL_IMAGES 24
#define REL_MAX_BATCH 16

static inline dtnh_resnet_config rel_config(void) {
    dtnh_resnet_config c;
    memset(&c, 0, sizeof c);
    c.stem = DTNH_STEM_CIFAR;
    c.width = 4;
    c.num_classes = REL_CLASSES;
    c.height = c.width_px = REL_HW;
    c.max_batch = REL_BATCH;
    c.threads = 2; /* the same kernel scratch whatever the thread count of a run */
    c.roles = DTNH_ROLE_W | DTNH_ROLE_W_SRC | DTNH_ROLE_G_J;
    c.seed = 11;
    return c;
}

/* Large enough that the kernels' parallel loops split (for the thread-count checks). */
static inline dtnh_resnet_config rel_config_parallel(void) {
    dtnh_resnet_config c = rel_config();
    c.width = 16;
    c.height = c.width_px = 16;
    c.max_batch = REL_MAX_BATCH;
    return c;
}

static inline dtnh_optim_config rel_optim_config(void) {
    dtnh_optim_config oc;
    memset(&oc, 0, sizeof oc);
    oc.lr = 0.05;
    oc.momentum = 0.9;
    return oc;
}

typedef struct rel_trainer {
    dtnh_resnet net;
    dtnh_optim opt;
    dtnh_batch_stream stream;
    dtnh_rng aug_rng;
    dtnh_augment_config aug;
    dtnh_image_set set;
    unsigned char pixels[REL_IMAGES * 3 * REL_HW * REL_HW];
    int labels[REL_IMAGES];
    dtnh_resnet_config cfg;
    unsigned char *mem[4];
    dtnh_arena persistent, step, scratch;
    long iteration;
    double loss;
    float *x; /* the batch: max_batch x 3 x height x width_px */
    int batch_labels[REL_MAX_BATCH];
} rel_trainer;

/* The build, on any arena: network (w_s = the initial weights), optimizer, stream. */
static inline dtnh_status rel_trainer_build(rel_trainer *t, uint64_t seed, dtnh_arena *a) {
    dtnh_optim_config oc = rel_optim_config();
    dtnh_status s;
    t->cfg.seed = seed;
    if ((s = dtnh_resnet_init(&t->net, &t->cfg, a, NULL))) return s;
    if (!dtnh_arena_is_counting(a)) dtnh_copy(t->net.params.total, t->net.params.w, t->net.params.w_src);
    if ((s = dtnh_optim_init(&t->opt, &oc, &t->net.params, a, NULL))) return s;
    return dtnh_batch_stream_init(&t->stream, REL_IMAGES, seed + 1, a, NULL);
}

static inline void rel_trainer_data(rel_trainer *t) {
    dtnh_rng g;
    int i;
    dtnh_rng_seed(&g, 2019);
    for (i = 0; i < (int)sizeof t->pixels; i++) t->pixels[i] = (unsigned char)dtnh_rng_below(&g, 256);
    for (i = 0; i < REL_IMAGES; i++) t->labels[i] = i % REL_CLASSES;
    memset(&t->set, 0, sizeof t->set);
    t->set.count = REL_IMAGES;
    t->set.channels = 3;
    t->set.height = t->set.width = REL_HW;
    t->set.classes = REL_CLASSES;
    t->set.image_bytes = 3 * REL_HW * REL_HW;
    t->set.pixels = t->pixels;
    t->set.labels = t->labels;
    memset(&t->aug, 0, sizeof t->aug);
    if (t->cfg.height != REL_HW || t->cfg.width_px != REL_HW) { /* resized for a larger network */
        t->aug.out_height = t->cfg.height;
        t->aug.out_width = t->cfg.width_px;
    }
    t->aug.pad = 1;
    t->aug.flip = 1;
}

static inline void *rel_aligned(size_t bytes, unsigned char **raw) {
    *raw = (unsigned char *)malloc(bytes + DTNH_ARENA_ALIGN);
    return *raw;
}

/* A run of network c (cifar stem, 3 channels, max_batch <= REL_MAX_BATCH) seeded by seed
   (weights, stream, augmentation); 0 on failure. t is large: make it static or allocate it. */
static inline int rel_trainer_open_with(rel_trainer *t, uint64_t seed, const dtnh_resnet_config *c) {
    dtnh_arena counter;
    dtnh_resnet_plan plan;
    size_t bytes;
    memset(t, 0, sizeof *t);
    t->cfg = *c;
    if (c->max_batch < 1 || c->max_batch > REL_MAX_BATCH) return 0;
    dtnh_arena_init(&counter, NULL, 0);
    if (rel_trainer_build(t, seed, &counter) || dtnh_resnet_plan_memory(c, 1, &plan, NULL)) return 0;
    bytes = dtnh_arena_used(&counter) + DTNH_ARENA_ALIGN;
    if (!rel_aligned(bytes, &t->mem[0]) || !rel_aligned(plan.step_train, &t->mem[1]) ||
        !rel_aligned(1 << 20, &t->mem[2]) ||
        !rel_aligned((size_t)c->max_batch * 3 * c->height * c->width_px * sizeof(float), &t->mem[3]))
        return 0;
    t->x = (float *)t->mem[3];
    dtnh_arena_init(&t->persistent, t->mem[0], bytes);
    dtnh_arena_init(&t->step, t->mem[1], plan.step_train + DTNH_ARENA_ALIGN);
    dtnh_arena_init(&t->scratch, t->mem[2], (1 << 20) + DTNH_ARENA_ALIGN);
    if (rel_trainer_build(t, seed, &t->persistent)) return 0;
    dtnh_rng_seed(&t->aug_rng, seed + 2);
    rel_trainer_data(t);
    return 1;
}

/* The run of rel_config(). */
static inline int rel_trainer_open(rel_trainer *t, uint64_t seed) {
    dtnh_resnet_config c = rel_config();
    return rel_trainer_open_with(t, seed, &c);
}

static inline void rel_trainer_close(rel_trainer *t) {
    int i;
    for (i = 0; i < 4; i++) free(t->mem[i]);
    memset(t, 0, sizeof *t);
}

/* The next minibatch, augmented, into t->x. */
static inline dtnh_status rel_trainer_batch(rel_trainer *t, dtnh_tensor *x, dtnh_error *err) {
    int idx[REL_MAX_BATCH], n = t->cfg.max_batch, shape[4];
    dtnh_status s;
    shape[0] = n;
    shape[1] = 3;
    shape[2] = t->cfg.height;
    shape[3] = t->cfg.width_px;
    if ((s = dtnh_batch_stream_next(&t->stream, n, idx, err)) ||
        (s = dtnh_tensor_view(x, t->x, 4, shape, err)))
        return s;
    return dtnh_batch_from_set(&t->aug, &t->set, idx, n, &t->aug_rng, x, t->batch_labels, err);
}

/* One DTNH(L2-SP) step: batch, forward, loss, backward into g_J, the finite check, the fused
   direction and update. A numeric fault skips the update (the batch is consumed). */
static inline dtnh_status rel_trainer_step(rel_trainer *t, dtnh_error *err) {
    dtnh_tensor x, logits;
    float dlogits[REL_MAX_BATCH * REL_CLASSES];
    dtnh_status s;
    dtnh_arena_reset(&t->step, 0);
    if ((s = rel_trainer_batch(t, &x, err)) ||
        (s = dtnh_resnet_forward(&t->net, &x, &t->step, &logits, err)) ||
        (s = dtnh_softmax_cross_entropy(t->cfg.max_batch, REL_CLASSES, logits.data, t->batch_labels, dlogits,
                                        &t->loss, err)) ||
        (s = dtnh_resnet_backward(&t->net, dlogits, NULL, NULL, 0, err)) ||
        (s = dtnh_check_step_finite(&t->net.params, &t->opt, t->loss, t->net.params.g_j, NULL, err)) ||
        (s = dtnh_step_l2sp(&t->opt, NULL, NULL, &t->net.params, t->net.params.g_j, NULL, err)))
        return s;
    t->iteration++;
    return DTNH_OK;
}

/* Everything the run needs to go on, as a checkpoint. */
static inline void rel_trainer_checkpoint(rel_trainer *t, dtnh_checkpoint *c) {
    memset(c, 0, sizeof *c);
    c->net = &t->net;
    c->with_source = 1;
    c->optim = &t->opt;
    c->stream = &t->stream;
    c->rngs[0] = &t->aug_rng;
    c->rng_names[0] = "augment";
    c->rng_count = 1;
    c->iteration = t->iteration;
}

static inline uint64_t rel_hash_bytes(uint64_t h, const void *data, size_t n) {
    const unsigned char *p = (const unsigned char *)data;
    size_t i;
    for (i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

/* FNV-1a over the bits of the weights, BN buffers and counters, and the momentum. */
static inline uint64_t rel_trainer_hash(const rel_trainer *t) {
    uint64_t h = 14695981039346656037ull;
    h = rel_hash_bytes(h, t->net.params.w, t->net.params.total * sizeof(float));
    h = rel_hash_bytes(h, t->net.buffers.values, t->net.buffers.total * sizeof(float));
    h = rel_hash_bytes(h, t->net.buffers.counts, t->net.buffers.count_total * sizeof(int64_t));
    return rel_hash_bytes(h, t->opt.m, t->opt.state_count * sizeof(float));
}

#endif
