/* Reliability: every arena size from 0 up to the plan fails cleanly with DTNH_ERR_NOMEM and
   writes nothing outside the buffer; NaN and Inf are caught before an update; one seed gives
   the same bits whatever the thread count; a checkpoint resumes bit-identically. The network
   is a width-4 ResNet-18 with the cifar stem on 8x8 inputs, batch 2. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "test.h"
#include "../dtnh_nn.h"
#ifdef _OPENMP
#include <omp.h>
#endif

#include "rel_trainer.h"

/* ---- guarded buffers ---------------------------------------------------------------------------
   An arena of exactly `capacity` bytes at a 64-byte aligned address inside a larger block whose
   other bytes hold a pattern: any write outside the arena shows as a changed guard byte. */

#define REL_GUARD 256
#define REL_PATTERN 0xA5

typedef struct rel_guarded {
    unsigned char *raw, *base;
    size_t capacity, size; /* size: the largest capacity the block holds */
} rel_guarded;

static int rel_guarded_open(rel_guarded *g, size_t size) {
    memset(g, 0, sizeof *g);
    g->raw = (unsigned char *)malloc(size + 2 * REL_GUARD + 64);
    if (!g->raw) return 0;
    g->base = g->raw + REL_GUARD + (64 - (uintptr_t)(g->raw + REL_GUARD) % 64) % 64;
    g->size = size;
    return 1;
}

/* Fills the guards of an arena of `capacity` bytes (the arena's own bytes too, so a stale value
   cannot pass for a good one) and initialises a on it. */
static void rel_guarded_arena(rel_guarded *g, size_t capacity, dtnh_arena *a) {
    memset(g->raw, REL_PATTERN, g->size + 2 * REL_GUARD + 64);
    g->capacity = capacity;
    dtnh_arena_init(a, g->base, capacity);
}

/* 1 when every byte outside [base, base + capacity) still holds the pattern. */
static int rel_guards_intact(const rel_guarded *g) {
    const unsigned char *p = g->raw, *end = g->raw + g->size + 2 * REL_GUARD + 64;
    for (; p < g->base; p++)
        if (*p != REL_PATTERN) return 0;
    for (p = g->base + g->capacity; p < end; p++)
        if (*p != REL_PATTERN) return 0;
    return 1;
}

static void rel_guarded_close(rel_guarded *g) {
    free(g->raw);
    memset(g, 0, sizeof *g);
}

/* ---- the arena sweep ------------------------------------------------------------------------------
   A run is a deterministic sequence of allocations on one arena, so how far it gets (the arena's
   peak) is a step function of the capacity, with a step at the end of every allocation. The
   steps are found by bisection; every capacity within REL_NEAR bytes of a step, and one every
   `stride` bytes between, must give DTNH_ERR_NOMEM below the total and DTNH_OK from it on, with
   the guards intact. */

#define REL_NEAR 9

typedef dtnh_status (*rel_run_fn)(void *ctx, dtnh_arena *a);

typedef struct rel_sweep {
    rel_run_fn run;
    void *ctx;
    rel_guarded g;
    size_t total;
    long runs, steps;
    size_t bad_capacity; /* the first capacity that misbehaved, or (size_t)-1 */
    dtnh_status bad_status;
} rel_sweep;

/* Runs once on `capacity` bytes; returns the arena's peak, records a misbehaviour. */
static size_t rel_sweep_try(rel_sweep *s, size_t capacity) {
    dtnh_arena a;
    dtnh_status st;
    dtnh_status want = capacity < s->total ? DTNH_ERR_NOMEM : DTNH_OK;
    rel_guarded_arena(&s->g, capacity, &a);
    st = s->run(s->ctx, &a);
    s->runs++;
    if ((st != want || !rel_guards_intact(&s->g) || a.peak > capacity) &&
        s->bad_capacity == (size_t)-1) {
        s->bad_capacity = capacity;
        s->bad_status = st;
    }
    return dtnh_arena_peak(&a);
}

/* The smallest capacity in (lo, total] whose run reaches beyond `reached`. */
static size_t rel_next_step(rel_sweep *s, size_t lo, size_t reached) {
    size_t hi = s->total;
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (rel_sweep_try(s, mid) > reached) hi = mid;
        else lo = mid;
    }
    return hi;
}

static void rel_sweep_near(rel_sweep *s, size_t at) {
    size_t c = at > REL_NEAR ? at - REL_NEAR : 0;
    for (; c <= at + REL_NEAR && c <= s->total + REL_NEAR; c++) rel_sweep_try(s, c);
}

/* Sweeps capacities 0 .. total + REL_NEAR; 1 when every one behaved. */
static int rel_sweep_run(rel_sweep *s, size_t stride) {
    size_t at = 0, reached, c;
    s->bad_capacity = (size_t)-1;
    s->runs = s->steps = 0;
    if (!rel_guarded_open(&s->g, s->total + REL_NEAR)) return 0;
    reached = rel_sweep_try(s, 0);
    rel_sweep_near(s, 0);
    while (at < s->total) {
        size_t next = rel_next_step(s, at, reached);
        for (c = at + stride; c + REL_NEAR < next; c += stride) rel_sweep_try(s, c);
        rel_sweep_near(s, next);
        reached = rel_sweep_try(s, next);
        at = next;
        s->steps++;
    }
    rel_guarded_close(&s->g);
    return s->bad_capacity == (size_t)-1;
}

/* ---- a training step on caller memory ------------------------------------------------------------ */

typedef struct rel_net {
    int fmap; /* 1: DTNH(feature maps) on layer1..layer4 instead of DTNH(L2-SP) */
    dtnh_resnet net;
    dtnh_fmap_reg reg;
    dtnh_optim opt;
    float x[REL_BATCH * 3 * REL_HW * REL_HW];
    int labels[REL_BATCH];
    dtnh_tensor input;
    double loss;
} rel_net;

static dtnh_resnet_config rel_net_config(const rel_net *r) {
    static const char *const hooks[4] = {"layer1", "layer2", "layer3", "layer4"};
    dtnh_resnet_config c = rel_config();
    int k;
    if (r->fmap) {
        c.roles |= DTNH_ROLE_G_OMEGA;
        c.hook_count = 4;
        for (k = 0; k < 4; k++) c.hooks[k] = hooks[k];
    }
    return c;
}

/* The build: network, the regularizer's source copy (feature maps), optimizer state, all from
   the persistent arena. */
static dtnh_status rel_build(void *ctx, dtnh_arena *a) {
    rel_net *r = (rel_net *)ctx;
    dtnh_resnet_config c = rel_net_config(r);
    dtnh_optim_config oc = rel_optim_config();
    dtnh_status s;
    if ((s = dtnh_resnet_init(&r->net, &c, a, NULL))) return s;
    if (!dtnh_arena_is_counting(a))
        dtnh_copy(r->net.params.total, r->net.params.w, r->net.params.w_src);
    if (r->fmap && (s = dtnh_fmap_reg_init(&r->reg, NULL, &r->net, NULL, a, NULL))) return s;
    return dtnh_optim_init(&r->opt, &oc, &r->net.params, a, NULL);
}

static void rel_inputs(rel_net *r, uint64_t seed) {
    int shape[4] = {REL_BATCH, 3, REL_HW, REL_HW}, i;
    dtnh_rng g;
    dtnh_rng_seed(&g, seed);
    for (i = 0; i < REL_BATCH * 3 * REL_HW * REL_HW; i++) r->x[i] = dtnh_rng_normal(&g);
    for (i = 0; i < REL_BATCH; i++) r->labels[i] = (int)dtnh_rng_below(&g, REL_CLASSES);
    dtnh_tensor_view(&r->input, r->x, 4, shape, NULL);
}

/* One step: forward, loss, backward into g_J, then DTNH(L2-SP) fused, or the feature-map
   regularizer's source forward and backward into g_Omega and the DTNH step. */
static dtnh_status rel_step(void *ctx, dtnh_arena *step) {
    rel_net *r = (rel_net *)ctx;
    dtnh_params *p = &r->net.params;
    dtnh_tensor logits;
    float dlogits[REL_BATCH * REL_CLASSES];
    dtnh_status s;
    if ((s = dtnh_resnet_forward(&r->net, &r->input, step, &logits, NULL))) return s;
    if (dtnh_arena_is_counting(step))
        return r->fmap ? dtnh_fmap_reg_compute(&r->reg, &r->input, step, NULL, NULL, 0, NULL, NULL) : DTNH_OK;
    if ((s = dtnh_softmax_cross_entropy(REL_BATCH, REL_CLASSES, logits.data, r->labels, dlogits,
                                        &r->loss, NULL)) ||
        (s = dtnh_resnet_backward(&r->net, dlogits, NULL, NULL, 0, NULL)))
        return s;
    if (!r->fmap) return dtnh_step_l2sp(&r->opt, NULL, NULL, p, p->g_j, NULL, NULL);
    if ((s = dtnh_fmap_reg_compute(&r->reg, &r->input, step, NULL, p->g_omega, 0, NULL, NULL))) return s;
    return dtnh_step(&r->opt, NULL, p, p->g_j, p->g_omega, NULL, NULL);
}

/* A network built on its own exactly-sized persistent block (raw: to free). */
static dtnh_status rel_net_open(rel_net *r, unsigned char **raw) {
    dtnh_arena a;
    size_t bytes;
    dtnh_status s;
    dtnh_arena_init(&a, NULL, 0);
    if ((s = rel_build(r, &a))) return s;
    bytes = dtnh_arena_used(&a);
    *raw = (unsigned char *)malloc(bytes + DTNH_ARENA_ALIGN);
    if (!*raw) return DTNH_ERR_NOMEM;
    dtnh_arena_init(&a, *raw, bytes + DTNH_ARENA_ALIGN);
    if ((s = rel_build(r, &a))) return s;
    rel_inputs(r, 5);
    return DTNH_OK;
}

static size_t rel_step_bytes(rel_net *r) {
    dtnh_arena a;
    dtnh_arena_init(&a, NULL, 0);
    if (rel_step(r, &a)) return 0;
    return dtnh_arena_peak(&a);
}

/* ---- arena sweeps -------------------------------------------------------------------------------- */

/* The build needs what the plan says (network plus one optimizer vector), and every smaller
   persistent arena fails cleanly. */
static void rel_persistent_sweep(int fmap) {
    static rel_net r;
    dtnh_resnet_config c;
    dtnh_resnet_plan plan;
    dtnh_arena counter;
    rel_sweep s;
    r.fmap = fmap;
    c = rel_net_config(&r);
    CHECK_OK(dtnh_resnet_plan_memory(&c, 1, &plan, NULL));
    dtnh_arena_init(&counter, NULL, 0);
    CHECK_OK(rel_build(&r, &counter));
    memset(&s, 0, sizeof s);
    s.run = rel_build;
    s.ctx = &r;
    s.total = dtnh_arena_used(&counter);
    /* The plan covers network and optimizer exactly; the feature-map source copy is extra. */
    CHECK_MSG(fmap ? s.total > plan.persistent : s.total == plan.persistent,
              "the build takes %zu bytes, the plan says %zu", s.total, plan.persistent);
    CHECK_MSG(rel_sweep_run(&s, 4093), "capacity %zu of %zu: status %d (%s), or a guard byte changed",
              s.bad_capacity, s.total, (int)s.bad_status, dtnh_status_str(s.bad_status));
    if (getenv("DTNH_TEST_VERBOSE")) printf("    persistent: %zu bytes, %ld steps, %ld runs\n", s.total, s.steps, s.runs);
    CHECK(s.steps >= 8);
}

/* The step needs exactly plan.step_train (the feature-map regularizer more), and every smaller
   step arena fails cleanly before anything changes: the weights are those of before. */
static void rel_step_sweep(int fmap) {
    static rel_net r;
    unsigned char *raw = NULL;
    dtnh_resnet_config c;
    dtnh_resnet_plan plan;
    rel_sweep s;
    float w0[64];
    r.fmap = fmap;
    c = rel_net_config(&r);
    CHECK_OK(dtnh_resnet_plan_memory(&c, 1, &plan, NULL));
    CHECK_OK(rel_net_open(&r, &raw));
    memset(&s, 0, sizeof s);
    s.run = rel_step;
    s.ctx = &r;
    s.total = rel_step_bytes(&r);
    CHECK_MSG(fmap ? s.total > plan.step_train : s.total == plan.step_train,
              "the step takes %zu bytes, the plan says %zu", s.total, plan.step_train);
    dtnh_copy(64, r.net.params.w, w0);
    {   /* a failing step leaves the weights alone */
        dtnh_arena a;
        static unsigned char small[256];
        dtnh_arena_init(&a, small, sizeof small);
        CHECK_STATUS(rel_step(&r, &a), DTNH_ERR_NOMEM);
        CHECK(memcmp(w0, r.net.params.w, sizeof w0) == 0);
    }
    CHECK_MSG(rel_sweep_run(&s, 997), "capacity %zu of %zu: status %d (%s), or a guard byte changed",
              s.bad_capacity, s.total, (int)s.bad_status, dtnh_status_str(s.bad_status));
    if (getenv("DTNH_TEST_VERBOSE")) printf("    step: %zu bytes, %ld steps, %ld runs\n", s.total, s.steps, s.runs);
    free(raw);
}

static void every_persistent_arena_size_fails_cleanly_or_builds(void) { rel_persistent_sweep(0); }
static void every_step_arena_size_fails_cleanly_or_steps(void) { rel_step_sweep(0); }
static void feature_map_regularizer_arenas_fail_cleanly_too(void) {
    rel_persistent_sweep(1);
    if (t_current_failed) return;
    rel_step_sweep(1);
}


/* ---- checkpoints ------------------------------------------------------------------------------------ */

#define REL_STEPS 6

/* Runs steps, stopping the test's caller on a failure (returns 0). */
static int rel_run(rel_trainer *t, int steps) {
    dtnh_error err;
    int i;
    for (i = 0; i < steps; i++)
        if (rel_trainer_step(t, &err)) {
            printf("    step %ld: %s\n", t->iteration, err.msg);
            return 0;
        }
    return 1;
}

static int rel_same_state(const rel_trainer *a, const rel_trainer *b) {
    const dtnh_params *p = &a->net.params, *q = &b->net.params;
    return p->total == q->total && memcmp(p->w, q->w, p->total * sizeof(float)) == 0 &&
           memcmp(p->w_src, q->w_src, p->total * sizeof(float)) == 0 &&
           memcmp(a->net.buffers.values, b->net.buffers.values, a->net.buffers.total * sizeof(float)) == 0 &&
           memcmp(a->net.buffers.counts, b->net.buffers.counts, a->net.buffers.count_total * sizeof(int64_t)) == 0 &&
           memcmp(a->opt.m, b->opt.m, a->opt.state_count * sizeof(float)) == 0 &&
           a->opt.step == b->opt.step && a->iteration == b->iteration &&
           a->stream.next == b->stream.next && a->aug_rng.state == b->aug_rng.state;
}

/* The checkpoint as a file in memory (malloc'd; *size its length). */
static unsigned char *rel_save_memory(rel_trainer *t, size_t *size) {
    dtnh_checkpoint c;
    unsigned char *buf;
    rel_trainer_checkpoint(t, &c);
    if (dtnh_checkpoint_save_memory(&c, &t->scratch, NULL, 0, size, NULL)) return NULL;
    buf = (unsigned char *)malloc(*size);
    if (buf && dtnh_checkpoint_save_memory(&c, &t->scratch, buf, *size, size, NULL)) {
        free(buf);
        return NULL;
    }
    return buf;
}

static dtnh_status rel_load_memory(rel_trainer *t, const unsigned char *buf, size_t size, dtnh_error *err) {
    dtnh_checkpoint c;
    dtnh_st_file f;
    dtnh_status s;
    size_t mark = dtnh_arena_mark(&t->scratch);
    rel_trainer_checkpoint(t, &c);
    if ((s = dtnh_st_open_memory(&f, buf, size, &t->scratch, err))) return s;
    s = dtnh_checkpoint_load(&c, &f, &t->scratch, err);
    dtnh_arena_reset(&t->scratch, mark);
    if (!s) t->iteration = c.iteration;
    return s;
}

/* N steps straight, against N/2, a checkpoint, a fresh run of another seed restored from it, and
   N/2 more: the same bits everywhere. */
static void resume_from_a_checkpoint_is_bit_identical(void) {
    static rel_trainer straight, first, second;
    unsigned char *buf;
    size_t size;
    dtnh_error err;
    CHECK(rel_trainer_open(&straight, 7) && rel_trainer_open(&first, 7) && rel_trainer_open(&second, 99));
    CHECK(rel_run(&straight, REL_STEPS) && rel_run(&first, REL_STEPS / 2));
    CHECK((buf = rel_save_memory(&first, &size)) != NULL);
    CHECK(!rel_same_state(&second, &first));
    CHECK_OK(rel_load_memory(&second, buf, size, &err));
    CHECK(rel_same_state(&second, &first));
    CHECK(memcmp(second.stream.order, first.stream.order, sizeof(int) * REL_IMAGES) == 0);
    CHECK(rel_run(&second, REL_STEPS - REL_STEPS / 2));
    CHECK(rel_same_state(&second, &straight));
    CHECK(rel_trainer_hash(&second) == rel_trainer_hash(&straight));
    free(buf);
    rel_trainer_close(&straight);
    rel_trainer_close(&first);
    rel_trainer_close(&second);
}

/* Through a file: saved atomically (no .tmp left), loaded, and it is also a plain weights file. */
static void checkpoint_file_round_trips_and_loads_as_weights(void) {
    static rel_trainer a, b;
    char path[128], tmp[140];
    dtnh_checkpoint c;
    dtnh_load_report report;
    dtnh_st_file f;
    dtnh_error err;
    FILE *fp;
    snprintf(path, sizeof path, "build/rel-ckpt-%lx.safetensors", (unsigned long)(uintptr_t)&c ^ 0x5a5aul);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    CHECK(rel_trainer_open(&a, 3) && rel_trainer_open(&b, 4) && rel_run(&a, 2));
    rel_trainer_checkpoint(&a, &c);
    c.meta[0].key = "command";
    c.meta[0].value = "rel_trainer --steps 2";
    c.meta_count = 1;
    CHECK_OK(dtnh_checkpoint_save(&c, path, &a.scratch, &err));
    CHECK((fp = fopen(tmp, "rb")) == NULL);
    rel_trainer_checkpoint(&b, &c);
    CHECK_OK(dtnh_checkpoint_load_file(&c, path, &b.scratch, &err));
    b.iteration = c.iteration;
    CHECK(rel_same_state(&a, &b));
    CHECK(dtnh_arena_used(&b.scratch) == 0);
    CHECK_OK(dtnh_st_open(&f, path, &b.scratch, &err));
    CHECK(strcmp(dtnh_st_meta_get(&f, "command"), "rel_trainer --steps 2") == 0);
    CHECK(strcmp(dtnh_st_meta_get(&f, "dtnh.iteration"), "2") == 0);
    CHECK_OK(dtnh_resnet_load(&b.net, &f, NULL, &report, &err));
    CHECK(report.missing == 0 && report.loaded == dtnh_resnet_state_count(&b.net));
    dtnh_st_close(&f);
    remove(path);
    rel_trainer_close(&a);
    rel_trainer_close(&b);
}

/* Files that cannot be written or read give DTNH_ERR_IO (or ARG), never a crash, and change
   nothing. */
static void checkpoint_io_failures_are_reported(void) {
    static rel_trainer a;
    dtnh_checkpoint c;
    dtnh_error err;
    CHECK(rel_trainer_open(&a, 3));
    rel_trainer_checkpoint(&a, &c);
    CHECK_STATUS(dtnh_checkpoint_save(&c, "build/no-such-folder/x/ck.safetensors", &a.scratch, &err), DTNH_ERR_IO);
    CHECK_STATUS(dtnh_checkpoint_save(&c, NULL, &a.scratch, &err), DTNH_ERR_ARG);
    CHECK_STATUS(dtnh_checkpoint_load_file(&c, "build/no-such-folder/ck.safetensors", &a.scratch, &err), DTNH_ERR_IO);
    CHECK_STATUS(dtnh_checkpoint_load_file(&c, NULL, &a.scratch, &err), DTNH_ERR_ARG);
    CHECK_STATUS(dtnh_checkpoint_load_file(&c, "tests/fixtures/resnet_w4_weights.safetensors", &a.scratch, &err),
                 DTNH_ERR_FORMAT);
    CHECK(dtnh_arena_used(&a.scratch) == 0 && a.iteration == 0);
    c.net = NULL;
    CHECK_STATUS(dtnh_checkpoint_save(&c, "build/x.safetensors", &a.scratch, &err), DTNH_ERR_ARG);
    rel_trainer_close(&a);
}

/* A counting scratch arena tells what save and load need; a smaller one fails cleanly. */
static void checkpoint_scratch_is_counted_and_checked(void) {
    static rel_trainer a;
    static DTNH_ALIGNED(64) unsigned char small[64 * 1024];
    dtnh_checkpoint c;
    dtnh_arena counter, tight;
    size_t size = 0, need;
    unsigned char *buf;
    CHECK(rel_trainer_open(&a, 3) && rel_run(&a, 1));
    rel_trainer_checkpoint(&a, &c);
    dtnh_arena_init(&counter, NULL, 0);
    CHECK_OK(dtnh_checkpoint_save_memory(&c, &counter, NULL, 0, &size, NULL));
    need = dtnh_arena_peak(&counter);
    CHECK(need > 0 && need <= sizeof small && size == 0);
    dtnh_arena_init(&tight, small, need - 1);
    CHECK_STATUS(dtnh_checkpoint_save_memory(&c, &tight, NULL, 0, &size, NULL), DTNH_ERR_NOMEM);
    dtnh_arena_init(&tight, small, need);
    CHECK_OK(dtnh_checkpoint_save_memory(&c, &tight, NULL, 0, &size, NULL));
    CHECK(size > a.net.params.total * 3 * sizeof(float));
    CHECK((buf = rel_save_memory(&a, &size)) != NULL);
    free(buf);
    rel_trainer_close(&a);
}

/* A file that is not this run's checkpoint, or a damaged one, is refused and changes nothing. */
static void bad_checkpoints_are_refused_and_change_nothing(void) {
    static rel_trainer a, b;
    static unsigned char weights[1 << 20];
    unsigned char *buf;
    size_t size, wsize;
    dtnh_error err;
    int at;
    dtnh_st_file f;
    CHECK(rel_trainer_open(&a, 3) && rel_trainer_open(&b, 4) && rel_run(&a, 2));
    CHECK((buf = rel_save_memory(&a, &size)) != NULL);
    CHECK_OK(dtnh_resnet_save_memory(&a.net, weights, sizeof weights, &wsize, &err));
    CHECK_STATUS(rel_load_memory(&b, weights, wsize, &err), DTNH_ERR_FORMAT);
    CHECK(strstr(err.msg, "dtnh.checkpoint") != NULL);
    /* a stream order that is no permutation: 3 where 0..23 each appear once */
    CHECK_OK(dtnh_st_open_memory(&f, buf, size, &b.scratch, &err));
    at = dtnh_st_find(&f, "dtnh.stream.order");
    CHECK(at >= 0);
    {
        unsigned char *order = buf + f.data_offset + f.entries[at].begin;
        dtnh_arena_reset(&b.scratch, 0);
        order[0] = order[8] == 3 ? 4 : 3;
        memset(order + 1, 0, 7);
        memcpy(order + 8, order, 8);
    }
    CHECK_STATUS(rel_load_memory(&b, buf, size, &err), DTNH_ERR_FORMAT);
    CHECK(strstr(err.msg, "permutation") != NULL);
    CHECK(!rel_same_state(&a, &b) && b.iteration == 0 && b.opt.step == 0);
    /* a NaN in the momentum */
    free(buf);
    CHECK((buf = rel_save_memory(&a, &size)) != NULL);
    CHECK_OK(dtnh_st_open_memory(&f, buf, size, &b.scratch, &err));
    at = dtnh_st_find(&f, "dtnh.optim.m");
    CHECK(at >= 0);
    memcpy(buf + f.data_offset + f.entries[at].begin + 40, "\x00\x00\xc0\x7f", 4);
    dtnh_arena_reset(&b.scratch, 0);
    CHECK_STATUS(rel_load_memory(&b, buf, size, &err), DTNH_ERR_NUMERIC);
    CHECK(b.iteration == 0 && b.opt.step == 0);
    free(buf);
    rel_trainer_close(&a);
    rel_trainer_close(&b);
}

/* A checkpoint of another network shape is refused by name. */
static void checkpoint_of_another_network_is_refused(void) {
    static rel_trainer a;
    static rel_net other;
    static unsigned char weights[1 << 21];
    unsigned char *raw = NULL;
    dtnh_resnet_config c = rel_config();
    dtnh_checkpoint ck;
    dtnh_arena pa;
    size_t size;
    dtnh_error err;
    CHECK(rel_trainer_open(&a, 3));
    c.width = 8;
    memset(&ck, 0, sizeof ck);
    ck.net = &other.net;
    {
        dtnh_resnet_plan plan;
        CHECK_OK(dtnh_resnet_plan_memory(&c, 0, &plan, NULL));
        raw = (unsigned char *)malloc(plan.persistent + 64);
        dtnh_arena_init(&pa, raw, plan.persistent + 64);
        CHECK_OK(dtnh_resnet_init(&other.net, &c, &pa, NULL));
    }
    CHECK_OK(dtnh_checkpoint_save_memory(&ck, &a.scratch, weights, sizeof weights, &size, &err));
    CHECK_STATUS(rel_load_memory(&a, weights, size, &err), DTNH_ERR_FORMAT);
    CHECK_MSG(strstr(err.msg, "conv1.weight") != NULL, "%s", err.msg);
    free(raw);
    rel_trainer_close(&a);
}

/* ---- numeric faults --------------------------------------------------------------------------------- */

/* A forward, loss and backward of the next batch, without the update. */
static dtnh_status rel_gradient(rel_trainer *t, dtnh_error *err) {
    dtnh_tensor x, logits;
    float dlogits[REL_BATCH * REL_CLASSES];
    dtnh_status s;
    dtnh_arena_reset(&t->step, 0);
    if ((s = rel_trainer_batch(t, &x, err)) ||
        (s = dtnh_resnet_forward(&t->net, &x, &t->step, &logits, err)) ||
        (s = dtnh_softmax_cross_entropy(REL_BATCH, REL_CLASSES, logits.data, t->batch_labels, dlogits,
                                        &t->loss, err)))
        return s;
    return dtnh_resnet_backward(&t->net, dlogits, NULL, NULL, 0, err);
}

static int rel_view(const rel_trainer *t, const char *name) { return dtnh_params_find(&t->net.params, name); }

/* A NaN in g_J: the step is skipped and named, the weights stay; with a smaller lr training
   goes on. */
static void nan_in_a_gradient_skips_the_step_and_training_goes_on(void) {
    static rel_trainer t;
    static float w0[1 << 17];
    dtnh_error err;
    const dtnh_param_view *v;
    CHECK(rel_trainer_open(&t, 5) && rel_run(&t, 2) && t.net.params.total <= sizeof w0 / sizeof w0[0]);
    v = &t.net.params.views[rel_view(&t, "layer3.1.conv2.weight")];
    CHECK_OK(rel_gradient(&t, &err));
    t.net.params.g_j[v->offset + 17] = NAN;
    dtnh_copy(t.net.params.total, t.net.params.w, w0);
    CHECK_STATUS(dtnh_check_step_finite(&t.net.params, &t.opt, t.loss, t.net.params.g_j, NULL, &err),
                 DTNH_ERR_NUMERIC);
    CHECK(strstr(err.msg, "g_J of view 'layer3.1.conv2.weight'") && strstr(err.msg, "element 17"));
    CHECK_STATUS(dtnh_step_l2sp(&t.opt, NULL, NULL, &t.net.params, t.net.params.g_j, NULL, &err),
                 DTNH_ERR_NUMERIC);
    CHECK(memcmp(w0, t.net.params.w, t.net.params.total * sizeof(float)) == 0);
    CHECK(t.opt.step == 2);
    t.opt.cfg.lr *= 0.5;
    CHECK(rel_run(&t, 2));
    CHECK(dtnh_all_finite(t.net.params.total, t.net.params.w, NULL) && t.opt.step == 4);
    rel_trainer_close(&t);
}

/* An Inf logit: the loss refuses it before any backward, and so does the guard. */
static void inf_in_the_loss_is_refused_before_the_update(void) {
    static rel_trainer t;
    dtnh_tensor x, logits;
    dtnh_error err;
    float dlogits[REL_BATCH * REL_CLASSES];
    CHECK(rel_trainer_open(&t, 5));
    CHECK_OK(rel_trainer_batch(&t, &x, &err));
    CHECK_OK(dtnh_resnet_forward(&t.net, &x, &t.step, &logits, &err));
    logits.data[3] = INFINITY;
    CHECK_STATUS(dtnh_softmax_cross_entropy(REL_BATCH, REL_CLASSES, logits.data, t.batch_labels, dlogits,
                                            &t.loss, &err), DTNH_ERR_NUMERIC);
    CHECK_STATUS(dtnh_check_step_finite(&t.net.params, &t.opt, INFINITY, NULL, NULL, &err), DTNH_ERR_NUMERIC);
    CHECK(strstr(err.msg, "loss") != NULL);
    CHECK_STATUS(dtnh_check_step_finite(&t.net.params, &t.opt, NAN, NULL, NULL, &err), DTNH_ERR_NUMERIC);
    rel_trainer_close(&t);
}

/* An Inf pixel reaches the logits (ReLU keeps NaN), so the loss refuses the batch before any
   backward or update. */
static void inf_in_the_input_is_refused_before_the_update(void) {
    static rel_trainer t;
    dtnh_tensor x, logits;
    dtnh_error err;
    float dlogits[REL_BATCH * REL_CLASSES];
    CHECK(rel_trainer_open(&t, 5));
    CHECK_OK(rel_trainer_batch(&t, &x, &err));
    t.x[37] = INFINITY;
    CHECK_OK(dtnh_resnet_forward(&t.net, &x, &t.step, &logits, &err));
    CHECK_STATUS(dtnh_softmax_cross_entropy(REL_BATCH, REL_CLASSES, logits.data, t.batch_labels, dlogits,
                                            &t.loss, &err), DTNH_ERR_NUMERIC);
    rel_trainer_close(&t);
}

/* A NaN in the weights (a frozen view too) or in the momentum is named before the update; the
   run goes back to its last checkpoint and on with a smaller lr. */
static void nan_in_the_weights_or_momentum_is_named_and_a_checkpoint_recovers(void) {
    static rel_trainer t;
    unsigned char *buf;
    size_t size;
    dtnh_error err;
    int fc = rel_view(&t, "fc.weight");
    CHECK(rel_trainer_open(&t, 5) && rel_run(&t, 2));
    fc = rel_view(&t, "fc.weight");
    CHECK((buf = rel_save_memory(&t, &size)) != NULL);
    t.net.params.w[t.net.params.views[fc].offset + 3] = NAN;
    CHECK_STATUS(rel_trainer_step(&t, &err), DTNH_ERR_NUMERIC);
    CHECK(t.iteration == 2 && t.opt.step == 2);
    CHECK_OK(rel_load_memory(&t, buf, size, &err));
    t.net.params.views[0].trainable = 0; /* conv1 frozen: still checked */
    t.net.params.w[1] = -INFINITY;
    CHECK_STATUS(dtnh_check_step_finite(&t.net.params, NULL, 0.5, NULL, NULL, &err), DTNH_ERR_NUMERIC);
    CHECK(strstr(err.msg, "the weights of view 'conv1.weight'") != NULL);
    t.net.params.views[0].trainable = 1;
    CHECK_OK(rel_load_memory(&t, buf, size, &err));
    t.opt.m[t.opt.slots[fc].state_offset] = NAN;
    CHECK_STATUS(dtnh_check_step_finite(&t.net.params, &t.opt, 0.5, NULL, NULL, &err), DTNH_ERR_NUMERIC);
    CHECK(strstr(err.msg, "momentum") && strstr(err.msg, "'fc.weight'"));
    CHECK_OK(rel_load_memory(&t, buf, size, &err));
    t.opt.cfg.lr *= 0.5;
    CHECK(rel_run(&t, 2) && t.iteration == 4);
    free(buf);
    rel_trainer_close(&t);
}

/* ---- determinism -------------------------------------------------------------------------------- */

#ifdef _OPENMP
/* One seed, the same bits after a few steps with 1 and with 2 threads, on a network large
   enough that the kernels split their loops. */
static void one_seed_gives_the_same_bits_with_one_and_two_threads(void) {
    static rel_trainer a, b;
    dtnh_resnet_config c = rel_config_parallel();
    int threads = omp_get_max_threads();
    omp_set_num_threads(1);
    CHECK(rel_trainer_open_with(&a, 21, &c) && rel_run(&a, 3));
    omp_set_num_threads(2);
    CHECK(rel_trainer_open_with(&b, 21, &c) && rel_run(&b, 3));
    omp_set_num_threads(threads);
    CHECK(rel_same_state(&a, &b));
    rel_trainer_close(&a);
    rel_trainer_close(&b);
}
#endif

void suite_reliability(void) {
    RUN(every_persistent_arena_size_fails_cleanly_or_builds);
    RUN(every_step_arena_size_fails_cleanly_or_steps);
    RUN(feature_map_regularizer_arenas_fail_cleanly_too);
    RUN(resume_from_a_checkpoint_is_bit_identical);
    RUN(checkpoint_file_round_trips_and_loads_as_weights);
    RUN(checkpoint_io_failures_are_reported);
    RUN(checkpoint_scratch_is_counted_and_checked);
    RUN(bad_checkpoints_are_refused_and_change_nothing);
    RUN(checkpoint_of_another_network_is_refused);
    RUN(nan_in_a_gradient_skips_the_step_and_training_goes_on);
    RUN(inf_in_the_loss_is_refused_before_the_update);
    RUN(inf_in_the_input_is_refused_before_the_update);
    RUN(nan_in_the_weights_or_momentum_is_named_and_a_checkpoint_recovers);
#ifdef _OPENMP
    RUN(one_seed_gives_the_same_bits_with_one_and_two_threads);
#endif
}
