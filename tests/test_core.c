/* Status codes, arenas, tensor views, the RNG, reductions and the parameter store. */
#include <stdint.h>
#include <string.h>
#include "test.h"

static void status_strings_name_every_code(void) {
    CHECK(strcmp(dtnh_status_str(DTNH_OK), "ok") == 0);
    CHECK(strstr(dtnh_status_str(DTNH_ERR_NOMEM), "memory") != NULL);
    CHECK(strstr(dtnh_status_str(DTNH_ERR_NUMERIC), "NaN") != NULL);
    CHECK(strcmp(dtnh_status_str((dtnh_status)-99), "unknown status") == 0);
}

static void fail_fills_the_callers_error(void) {
    dtnh_error err;
    dtnh_error_clear(&err);
    CHECK(dtnh_fail(&err, DTNH_ERR_SHAPE, "layer %s: expected %d, found %d", "fc", 10, 5) ==
          DTNH_ERR_SHAPE);
    CHECK(err.status == DTNH_ERR_SHAPE);
    CHECK(strcmp(err.msg, "layer fc: expected 10, found 5") == 0);
    CHECK(dtnh_fail(NULL, DTNH_ERR_IO, "no error object") == DTNH_ERR_IO);
}

static void size_mul_detects_overflow(void) {
    size_t out = 7;
    dtnh_error err;
    CHECK_OK(dtnh_size_mul(3, 5, &out, &err));
    CHECK(out == 15);
    CHECK_STATUS(dtnh_size_mul((size_t)-1 / 2 + 1, 2, &out, &err), DTNH_ERR_ARG);
    CHECK(strstr(err.msg, "overflow") != NULL);
}

static void arena_aligns_every_allocation(void) {
    static unsigned char buf[4096 + 64];
    dtnh_arena a;
    void *p, *q;
    dtnh_arena_init(&a, buf + 3, sizeof buf - 3); /* a misaligned buffer */
    CHECK_OK(dtnh_arena_alloc(&a, 5, 0, &p, NULL));
    CHECK_OK(dtnh_arena_alloc(&a, 7, 0, &q, NULL));
    CHECK((uintptr_t)p % DTNH_ARENA_ALIGN == 0);
    CHECK((uintptr_t)q % DTNH_ARENA_ALIGN == 0);
    CHECK_OK(dtnh_arena_alloc(&a, 1, 4, &q, NULL));
    CHECK((uintptr_t)q % 4 == 0);
    CHECK_STATUS(dtnh_arena_alloc(&a, 1, 3, &q, NULL), DTNH_ERR_ARG);
}

/* A made-up plan of several allocations, run on a counting and an assigning arena. */
static dtnh_status plan_some(dtnh_arena *a) {
    static const size_t sizes[] = {1, 63, 64, 65, 1000, 3, 4096, 17};
    size_t i;
    for (i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        void *p;
        dtnh_status s = dtnh_arena_alloc(a, sizes[i], i % 2 ? 16 : 0, &p, NULL);
        if (s) return s;
        if (p) memset(p, 0xAB, sizes[i]);
    }
    return DTNH_OK;
}

static void arena_count_equals_use(void) {
    static DTNH_ALIGNED(64) unsigned char buf[16384];
    dtnh_arena counter, a;
    dtnh_arena_init(&counter, NULL, 0);
    CHECK(dtnh_arena_is_counting(&counter));
    CHECK_OK(plan_some(&counter));
    dtnh_arena_init(&a, buf, dtnh_arena_used(&counter));
    CHECK_OK(plan_some(&a));
    CHECK(dtnh_arena_used(&a) == dtnh_arena_used(&counter));
}

/* Every capacity below the counted size fails cleanly and writes nothing past it. */
static void arena_exhaustion_at_every_boundary(void) {
    static DTNH_ALIGNED(64) unsigned char buf[16384 + 128];
    dtnh_arena counter, a;
    size_t need, cap, i;
    dtnh_arena_init(&counter, NULL, 0);
    CHECK_OK(plan_some(&counter));
    need = dtnh_arena_used(&counter);
    for (cap = 0; cap < need; cap++) {
        memset(buf, 0x5A, sizeof buf);
        dtnh_arena_init(&a, buf, cap);
        CHECK_MSG(plan_some(&a) == DTNH_ERR_NOMEM, "capacity %zu of %zu did not fail", cap, need);
        CHECK(dtnh_arena_used(&a) <= cap);
        for (i = cap; i < sizeof buf; i++)
            CHECK_MSG(buf[i] == 0x5A, "capacity %zu: byte %zu written", cap, i);
    }
}

static void arena_exhaustion_leaves_arena_unchanged(void) {
    static DTNH_ALIGNED(64) unsigned char buf[256];
    dtnh_arena a;
    dtnh_error err;
    void *p = &a;
    dtnh_arena_init(&a, buf, sizeof buf);
    CHECK_OK(dtnh_arena_alloc(&a, 100, 0, &p, &err));
    CHECK_STATUS(dtnh_arena_alloc(&a, 200, 0, &p, &err), DTNH_ERR_NOMEM);
    CHECK(p == NULL);
    CHECK(dtnh_arena_used(&a) == 100);
    CHECK(strstr(err.msg, "200") != NULL);
    CHECK_STATUS(dtnh_arena_alloc(&a, (size_t)-1, 0, &p, &err), DTNH_ERR_NOMEM);
    CHECK_OK(dtnh_arena_alloc(&a, 156 - 28, 0, &p, &err)); /* 128 from offset 128 fits */
}

static void arena_mark_reset_and_peak(void) {
    static DTNH_ALIGNED(64) unsigned char buf[1024];
    dtnh_arena a;
    void *p, *q;
    size_t m;
    dtnh_arena_init(&a, buf, sizeof buf);
    CHECK_OK(dtnh_arena_alloc(&a, 64, 0, &p, NULL));
    m = dtnh_arena_mark(&a);
    CHECK_OK(dtnh_arena_alloc(&a, 512, 0, &q, NULL));
    dtnh_arena_reset(&a, m);
    CHECK(dtnh_arena_used(&a) == 64);
    CHECK(dtnh_arena_peak(&a) == 576);
    CHECK_OK(dtnh_arena_alloc(&a, 64, 0, &q, NULL));
    CHECK(q == (unsigned char *)p + 64);
}

static void arena_floats_overflow_is_an_error(void) {
    dtnh_arena a;
    float *f = NULL;
    dtnh_arena_init(&a, NULL, 0);
    CHECK_STATUS(dtnh_arena_alloc_floats(&a, (size_t)-1 / 2, &f, NULL), DTNH_ERR_ARG);
}

static void tensor_rejects_bad_shapes(void) {
    dtnh_tensor t;
    dtnh_error err;
    int ok[4] = {2, 3, 4, 5}, zero[2] = {3, 0}, neg[1] = {-1}, huge[4] = {1 << 30, 1 << 30, 1 << 30, 1 << 30};
    CHECK_OK(dtnh_tensor_shape(&t, 4, ok, &err));
    CHECK(dtnh_tensor_count(&t) == 120);
    CHECK_STATUS(dtnh_tensor_shape(&t, 2, zero, &err), DTNH_ERR_ARG);
    CHECK(strstr(err.msg, "dimension 1") != NULL);
    CHECK_STATUS(dtnh_tensor_shape(&t, 1, neg, &err), DTNH_ERR_ARG);
    CHECK_STATUS(dtnh_tensor_shape(&t, 5, ok, &err), DTNH_ERR_ARG);
    CHECK_STATUS(dtnh_tensor_shape(&t, 0, ok, &err), DTNH_ERR_ARG);
    CHECK_STATUS(dtnh_tensor_shape(&t, 4, huge, &err), DTNH_ERR_ARG);
    CHECK_STATUS(dtnh_tensor_shape(NULL, 4, ok, &err), DTNH_ERR_ARG);
}

static void tensor_alloc_uses_the_arena(void) {
    static DTNH_ALIGNED(64) unsigned char buf[1024];
    dtnh_arena a;
    dtnh_tensor t, u;
    int shape[2] = {4, 8};
    dtnh_arena_init(&a, buf, sizeof buf);
    CHECK_OK(dtnh_tensor_alloc(&t, &a, 2, shape, NULL));
    CHECK(t.data == (float *)(void *)buf);
    CHECK(t.shape[2] == 1 && t.shape[3] == 1);
    CHECK_OK(dtnh_tensor_view(&u, t.data, 2, shape, NULL));
    CHECK(dtnh_tensor_same_shape(&t, &u));
    shape[0] = 100;
    CHECK_STATUS(dtnh_tensor_alloc(&t, &a, 2, shape, NULL), DTNH_ERR_NOMEM);
}

static void rng_repeats_with_the_seed(void) {
    dtnh_rng a, b;
    int i;
    dtnh_rng_seed(&a, 42);
    dtnh_rng_seed(&b, 42);
    for (i = 0; i < 100; i++) CHECK(dtnh_rng_u32(&a) == dtnh_rng_u32(&b));
    dtnh_rng_seed(&b, 43);
    CHECK(dtnh_rng_u32(&a) != dtnh_rng_u32(&b));
}

static void rng_distributions_have_their_moments(void) {
    dtnh_rng r;
    double s = 0, s2 = 0, u = 0;
    int i, n = 200000, counts[7] = {0};
    dtnh_rng_seed(&r, 7);
    for (i = 0; i < n; i++) {
        double x = dtnh_rng_normal(&r), v = dtnh_rng_uniform(&r);
        s += x;
        s2 += x * x;
        u += v;
        CHECK(v >= 0 && v < 1);
        counts[dtnh_rng_below(&r, 7)]++;
    }
    CHECK_NEAR(s / n, 0.0, 0.01);
    CHECK_NEAR(s2 / n, 1.0, 0.01);
    CHECK_NEAR(u / n, 0.5, 0.005);
    for (i = 0; i < 7; i++) CHECK_NEAR(counts[i] / (double)n, 1.0 / 7, 0.005);
}

static void kaiming_normal_has_std_sqrt_2_over_fan(void) {
    static float x[100000];
    dtnh_rng r;
    dtnh_rng_seed(&r, 1);
    dtnh_init_kaiming_normal(x, 100000, 64 * 9, &r);
    CHECK_NEAR(sqrt(dtnh_sumsq(100000, x) / 100000), sqrt(2.0 / 576), 0.002);
}

static void reductions_match_a_plain_loop(void) {
    static float x[5000], y[5000];
    double d = 0, q = 0, s = 0;
    int i;
    for (i = 0; i < 5000; i++) {
        x[i] = (float)sin(i * 0.1);
        y[i] = (float)cos(i * 0.37);
        d += (double)x[i] * y[i];
        q += (double)x[i] * x[i];
        s += x[i];
    }
    CHECK_NEAR(dtnh_dot(5000, x, y), d, 1e-12);
    CHECK_NEAR(dtnh_sumsq(5000, x), q, 1e-12);
    CHECK_NEAR(dtnh_sum(5000, x), s, 1e-12);
    CHECK(dtnh_dot(0, x, y) == 0.0);
}

static void all_finite_finds_the_first_bad_value(void) {
    float x[6] = {0, 1, -2, 3, 4, 5};
    size_t bad = 99;
    CHECK(dtnh_all_finite(6, x, &bad));
    x[4] = INFINITY;
    x[5] = NAN;
    CHECK(!dtnh_all_finite(6, x, &bad));
    CHECK(bad == 4);
}

static dtnh_status build_store(dtnh_params *p, dtnh_arena *a) {
    int s1[4] = {8, 3, 3, 3}, s2[1] = {8}, s3[2] = {10, 8};
    dtnh_status s;
    if ((s = dtnh_params_init(p, a, 8, NULL))) return s;
    if ((s = dtnh_params_add(p, "conv1.weight", 4, s1, DTNH_GROUP_BACKBONE | DTNH_GROUP_KERNEL, NULL, NULL))) return s;
    if ((s = dtnh_params_add(p, "bn1.weight", 1, s2, DTNH_GROUP_BACKBONE | DTNH_GROUP_BN, NULL, NULL))) return s;
    if ((s = dtnh_params_add(p, "fc.weight", 2, s3, DTNH_GROUP_HEAD | DTNH_GROUP_KERNEL, NULL, NULL))) return s;
    return dtnh_params_alloc(p, a, DTNH_ROLE_W | DTNH_ROLE_G_J, NULL);
}

static void params_store_lays_views_end_to_end(void) {
    static DTNH_ALIGNED(64) unsigned char buf[8192];
    dtnh_arena counter, a;
    dtnh_params p;
    int i;
    dtnh_arena_init(&counter, NULL, 0);
    CHECK_OK(build_store(&p, &counter));
    CHECK(p.total == 216 + 8 + 80);
    dtnh_arena_init(&a, buf, dtnh_arena_used(&counter));
    CHECK_OK(build_store(&p, &a));
    CHECK(dtnh_arena_used(&a) == dtnh_arena_used(&counter));
    i = dtnh_params_find(&p, "fc.weight");
    CHECK(i == 2);
    CHECK(p.views[i].offset == 224 && p.views[i].count == 80);
    CHECK(dtnh_params_find(&p, "fc.bias") == -1);
    CHECK(p.w_src == NULL && p.g_j != NULL);
    CHECK(dtnh_params_set_trainable(&p, DTNH_GROUP_HEAD) == 80);
    CHECK(dtnh_params_count(&p, DTNH_GROUP_ALL) == 80);
    CHECK(dtnh_params_count(&p, DTNH_GROUP_BN) == 0);
}

static void params_reject_long_names(void) {
    static DTNH_ALIGNED(64) unsigned char buf[4096];
    dtnh_arena a;
    dtnh_params p;
    dtnh_error err;
    int s[1] = {3};
    char name[80];
    memset(name, 'x', 79);
    name[79] = 0;
    dtnh_arena_init(&a, buf, sizeof buf);
    CHECK_OK(dtnh_params_init(&p, &a, 1, &err));
    CHECK_STATUS(dtnh_params_add(&p, name, 1, s, 0, NULL, &err), DTNH_ERR_ARG);
    CHECK_OK(dtnh_params_add(&p, "a", 1, s, 0, NULL, &err));
    CHECK_STATUS(dtnh_params_add(&p, "b", 1, s, 0, NULL, &err), DTNH_ERR_ARG);
}

void suite_core(void) {
    RUN(status_strings_name_every_code);
    RUN(fail_fills_the_callers_error);
    RUN(size_mul_detects_overflow);
    RUN(arena_aligns_every_allocation);
    RUN(arena_count_equals_use);
    RUN(arena_exhaustion_at_every_boundary);
    RUN(arena_exhaustion_leaves_arena_unchanged);
    RUN(arena_mark_reset_and_peak);
    RUN(arena_floats_overflow_is_an_error);
    RUN(tensor_rejects_bad_shapes);
    RUN(tensor_alloc_uses_the_arena);
    RUN(rng_repeats_with_the_seed);
    RUN(rng_distributions_have_their_moments);
    RUN(kaiming_normal_has_std_sqrt_2_over_fan);
    RUN(reductions_match_a_plain_loop);
    RUN(all_finite_finds_the_first_bad_value);
    RUN(params_store_lays_views_end_to_end);
    RUN(params_reject_long_names);
}
