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

#define REL_BATCH 2
#define REL_CLASSES 5
#define REL_HW 8

static dtnh_resnet_config rel_config(void) {
    dtnh_resnet_config c;
    memset(&c, 0, sizeof c);
    c.stem = DTNH_STEM_CIFAR;
    c.width = 4;
    c.num_classes = REL_CLASSES;
    c.height = c.width_px = REL_HW;
    c.max_batch = REL_BATCH;
    c.roles = DTNH_ROLE_W | DTNH_ROLE_W_SRC | DTNH_ROLE_G_J;
    c.seed = 11;
    return c;
}

static dtnh_optim_config rel_optim_config(void) {
    dtnh_optim_config oc;
    memset(&oc, 0, sizeof oc);
    oc.lr = 0.05;
    oc.momentum = 0.9;
    return oc;
}

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
    dtnh_resnet net;
    dtnh_optim opt;
    float x[REL_BATCH * 3 * REL_HW * REL_HW];
    int labels[REL_BATCH];
    dtnh_tensor input;
    double loss;
} rel_net;

/* The build: network then optimizer state, all from the persistent arena. */
static dtnh_status rel_build(void *ctx, dtnh_arena *a) {
    rel_net *r = (rel_net *)ctx;
    dtnh_resnet_config c = rel_config();
    dtnh_optim_config oc = rel_optim_config();
    dtnh_status s;
    if ((s = dtnh_resnet_init(&r->net, &c, a, NULL))) return s;
    if (!dtnh_arena_is_counting(a))
        dtnh_copy(r->net.params.total, r->net.params.w, r->net.params.w_src);
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

/* One DTNH(L2-SP) step: forward, loss, backward into g_J, the fused direction and update. */
static dtnh_status rel_step(void *ctx, dtnh_arena *step) {
    rel_net *r = (rel_net *)ctx;
    dtnh_tensor logits;
    float dlogits[REL_BATCH * REL_CLASSES];
    dtnh_status s;
    if ((s = dtnh_resnet_forward(&r->net, &r->input, step, &logits, NULL))) return s;
    if (dtnh_arena_is_counting(step)) return DTNH_OK;
    if ((s = dtnh_softmax_cross_entropy(REL_BATCH, REL_CLASSES, logits.data, r->labels, dlogits,
                                        &r->loss, NULL)) ||
        (s = dtnh_resnet_backward(&r->net, dlogits, NULL, NULL, 0, NULL)))
        return s;
    return dtnh_step_l2sp(&r->opt, NULL, NULL, &r->net.params, r->net.params.g_j, NULL, NULL);
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
static void every_persistent_arena_size_fails_cleanly_or_builds(void) {
    static rel_net r;
    dtnh_resnet_config c = rel_config();
    dtnh_resnet_plan plan;
    dtnh_arena counter;
    rel_sweep s;
    CHECK_OK(dtnh_resnet_plan_memory(&c, 1, &plan, NULL));
    dtnh_arena_init(&counter, NULL, 0);
    CHECK_OK(rel_build(&r, &counter));
    memset(&s, 0, sizeof s);
    s.run = rel_build;
    s.ctx = &r;
    s.total = dtnh_arena_used(&counter);
    CHECK_MSG(s.total <= plan.persistent + 4096, "the build takes %zu bytes, the plan says %zu",
              s.total, plan.persistent);
    CHECK_MSG(rel_sweep_run(&s, 4093), "capacity %zu of %zu: status %d (%s), or a guard byte changed",
              s.bad_capacity, s.total, (int)s.bad_status, dtnh_status_str(s.bad_status));
    if (getenv("DTNH_TEST_VERBOSE")) printf("    persistent: %zu bytes, %ld steps, %ld runs\n", s.total, s.steps, s.runs);
    CHECK(s.steps >= 8);
}

/* The step needs exactly plan.step_train, and every smaller step arena fails cleanly before
   anything changes: the weights are those of before the failed step. */
static void every_step_arena_size_fails_cleanly_or_steps(void) {
    static rel_net r;
    unsigned char *raw = NULL;
    dtnh_resnet_config c = rel_config();
    dtnh_resnet_plan plan;
    rel_sweep s;
    float w0[64];
    CHECK_OK(dtnh_resnet_plan_memory(&c, 1, &plan, NULL));
    CHECK_OK(rel_net_open(&r, &raw));
    memset(&s, 0, sizeof s);
    s.run = rel_step;
    s.ctx = &r;
    s.total = rel_step_bytes(&r);
    CHECK_MSG(s.total == plan.step_train, "the step takes %zu bytes, the plan says %zu", s.total,
              plan.step_train);
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

void suite_reliability(void) {
    RUN(every_persistent_arena_size_fails_cleanly_or_builds);
    RUN(every_step_arena_size_fails_cleanly_or_steps);
}
