/* The DTNH direction (Algorithm 1) and the fused steps: exact properties on random and
   crafted vectors, the stats against direct computation, fused against unfused, bad input. */
#include <stdlib.h>
#include <string.h>
#include "test.h"
#include "../dtnh_nn.h"
#include "formula.h"
#ifdef _OPENMP
#include <omp.h>
#endif

static DTNH_ALIGNED(64) unsigned char dt_mem[1 << 21];

/* A store of nviews views (sizes, groups) with w, w_src, g_J and g_Omega from the arena. */
static dtnh_status dt_store(dtnh_params *p, dtnh_arena *a, int nviews, const int *sizes,
                            const unsigned *groups) {
    static const char *names[] = {"conv1.weight", "bn1.weight", "bn1.bias", "layer1.0.conv1.weight",
                                  "fc.weight", "fc.bias", "v6", "v7"};
    dtnh_status s;
    int i;
    dtnh_arena_init(a, dt_mem, sizeof dt_mem);
    if ((s = dtnh_params_init(p, a, 8, NULL))) return s;
    for (i = 0; i < nviews; i++)
        if ((s = dtnh_params_add(p, names[i], 1, &sizes[i], groups[i], NULL, NULL))) return s;
    return dtnh_params_alloc(p, a, DTNH_ROLE_W | DTNH_ROLE_W_SRC | DTNH_ROLE_G_J | DTNH_ROLE_G_OMEGA, NULL);
}

/* The views of a small ResNet-like store: backbone kernels, BN, biases, and a head. */
static const int dt_sizes[6] = {300, 16, 16, 2500, 40, 4};
static const unsigned dt_groups[6] = {
    DTNH_GROUP_BACKBONE | DTNH_GROUP_KERNEL, DTNH_GROUP_BACKBONE | DTNH_GROUP_BN,
    DTNH_GROUP_BACKBONE | DTNH_GROUP_BN,     DTNH_GROUP_BACKBONE | DTNH_GROUP_KERNEL,
    DTNH_GROUP_HEAD | DTNH_GROUP_KERNEL,     DTNH_GROUP_HEAD | DTNH_GROUP_BIAS};

static void dt_random(dtnh_rng *r, size_t n, float *x, float scale) {
    size_t i;
    for (i = 0; i < n; i++) x[i] = scale * dtnh_rng_normal(r);
}

static double dt_dot(size_t n, const float *x, const float *y) { return dtnh_dot(n, x, y); }

static void direction_example_projects_the_conflicting_part(void) {
    float gj[3] = {1, 0, 0}, gom[3] = {-1, 1, 0}, d[3];
    dtnh_direction_stats st;
    CHECK_OK(dtnh_direction_flat(NULL, 3, gj, gom, d, &st, NULL));
    CHECK(d[0] == 1 && d[1] == 1 && d[2] == 0);
    CHECK(st.projected == 1 && st.views == 1 && st.views_projected == 1);
    CHECK_NEAR(st.cos_j_omega, -1 / sqrt(2.0), 1e-12);
    CHECK(gom[0] == -1 && gj[0] == 1); /* the inputs are not changed */
}

static void projected_omega_is_orthogonal_to_gj(void) {
    dtnh_rng r;
    static float gj[4000], gom[4000], d[4000];
    int trial, conflicts = 0;
    dtnh_rng_seed(&r, 11);
    for (trial = 0; trial < 200; trial++) {
        size_t n = 1 + dtnh_rng_below(&r, 4000), i;
        double dot = 0, nj, no;
        dtnh_direction_stats st;
        dt_random(&r, n, gj, 1.0f);
        dt_random(&r, n, gom, 0.01f + 3 * dtnh_rng_uniform(&r));
        for (i = 0; i < n; i++) gom[i] -= 0.3f * gj[i]; /* lean toward conflict */
        CHECK_OK(dtnh_direction_flat(NULL, n, gj, gom, d, &st, NULL));
        if (!st.projected) continue;
        conflicts++;
        for (i = 0; i < n; i++) dot += ((double)d[i] - gj[i]) * gj[i];
        nj = sqrt(dt_dot(n, gj, gj));
        no = sqrt(dt_dot(n, d, d));
        CHECK_MSG(fabs(dot) <= 1e-6 * nj * no, "trial %d n %zu: <g_Om', g_J> = %g", trial, n, dot);
    }
    CHECK(conflicts > 50);
}

static void acute_pair_is_left_alone(void) {
    dtnh_rng r;
    static float gj[3000], gom[3000], d[3000];
    int trial;
    dtnh_rng_seed(&r, 12);
    for (trial = 0; trial < 100; trial++) {
        size_t n = 1 + dtnh_rng_below(&r, 3000), i;
        dtnh_direction_stats st;
        dt_random(&r, n, gj, 1.0f);
        dt_random(&r, n, gom, 1.0f);
        if (dt_dot(n, gj, gom) < 0)
            for (i = 0; i < n; i++) gom[i] = -gom[i];
        CHECK_OK(dtnh_direction_flat(NULL, n, gj, gom, d, &st, NULL));
        CHECK(st.projected == 0);
        for (i = 0; i < n; i++) CHECK(d[i] == gj[i] + gom[i]);
    }
}

static void direction_never_opposes_gj(void) {
    dtnh_rng r;
    dtnh_params p;
    dtnh_arena a;
    int trial, scope;
    dtnh_rng_seed(&r, 13);
    CHECK_OK(dt_store(&p, &a, 6, dt_sizes, dt_groups));
    for (scope = 0; scope < 2; scope++)
        for (trial = 0; trial < 150; trial++) {
            dtnh_direction_config dc;
            float *d = p.w; /* any spare flat vector */
            memset(&dc, 0, sizeof dc);
            dc.scope = scope;
            dt_random(&r, p.total, p.g_j, (float)pow(10.0, dtnh_rng_uniform(&r) * 4 - 2));
            dt_random(&r, p.total, p.g_omega, (float)pow(10.0, dtnh_rng_uniform(&r) * 4 - 2));
            CHECK_OK(dtnh_direction(&dc, &p, p.g_j, p.g_omega, d, NULL, NULL));
            CHECK_MSG(dt_dot(p.total, d, p.g_j) >= 0, "scope %d trial %d: <d, g_J> = %g", scope,
                      trial, dt_dot(p.total, d, p.g_j));
        }
}

static void eps_guard_skips_projection(void) {
    float gj[4] = {1e-12f, 0, 0, 0}, gom[4] = {-1, 1, 0, 0}, d[4];
    dtnh_direction_config dc;
    dtnh_direction_stats st;
    int i;
    CHECK_OK(dtnh_direction_flat(NULL, 4, gj, gom, d, &st, NULL)); /* ||g_J||^2 = 1e-24 < 1e-20 */
    CHECK(st.projected == 0);
    for (i = 0; i < 4; i++) CHECK(d[i] == gj[i] + gom[i]);
    memset(&dc, 0, sizeof dc);
    dc.eps = 1e-30; /* now 1e-24 is enough */
    CHECK_OK(dtnh_direction_flat(&dc, 4, gj, gom, d, &st, NULL));
    CHECK(st.projected == 1);
    gj[0] = 0.5f;
    dc.eps = 0.3; /* 0.25 < 0.3: skipped again */
    CHECK_OK(dtnh_direction_flat(&dc, 4, gj, gom, d, &st, NULL));
    CHECK(st.projected == 0 && d[0] == -0.5f);
}

/* View A conflicts (<g_J,g_Om> = -1), view B agrees (+6): globally acute (+5). */
static void per_tensor_differs_from_global_on_crafted_vectors(void) {
    static const int sizes[2] = {2, 2};
    static const unsigned groups[2] = {DTNH_GROUP_BACKBONE, DTNH_GROUP_HEAD};
    static const float gj[4] = {1, 0, 2, 0}, gom[4] = {-1, 1, 3, 0};
    dtnh_params p;
    dtnh_arena a;
    dtnh_direction_config dc;
    dtnh_direction_stats st;
    float d[4];
    CHECK_OK(dt_store(&p, &a, 2, sizes, groups));
    memset(&dc, 0, sizeof dc);
    CHECK_OK(dtnh_direction(&dc, &p, gj, gom, d, &st, NULL));
    CHECK(st.projected == 0);
    CHECK(d[0] == 0 && d[1] == 1 && d[2] == 5 && d[3] == 0);
    dc.scope = DTNH_SCOPE_PER_TENSOR;
    CHECK_OK(dtnh_direction(&dc, &p, gj, gom, d, &st, NULL));
    CHECK(st.projected == 0.5 && st.views == 2 && st.views_projected == 1);
    CHECK(d[0] == 1 && d[1] == 1 && d[2] == 5 && d[3] == 0);
}

static void group_mask_limits_the_projection(void) {
    static const int sizes[2] = {2, 2};
    static const unsigned groups[2] = {DTNH_GROUP_BACKBONE, DTNH_GROUP_HEAD};
    static const float gj[4] = {1, 0, 1, 0}, gom[4] = {-1, 1, -2, 0};
    dtnh_params p;
    dtnh_arena a;
    dtnh_direction_config dc;
    dtnh_direction_stats st;
    float d[4];
    CHECK_OK(dt_store(&p, &a, 2, sizes, groups));
    memset(&dc, 0, sizeof dc);
    dc.groups = DTNH_GROUP_HEAD; /* only the head takes part: backbone gets the plain sum */
    CHECK_OK(dtnh_direction(&dc, &p, gj, gom, d, &st, NULL));
    CHECK(st.projected == 1 && st.views == 1);
    CHECK(d[0] == 0 && d[1] == 1); /* backbone: g_J + g_Om */
    CHECK(d[2] == 1 && d[3] == 0); /* head: -2 + 2 = 0 along g_J, then + g_J */
}

static void sum_mode_adds_even_when_obtuse(void) {
    float gj[3] = {1, 0, 0}, gom[3] = {-1, 1, 0}, d[3];
    dtnh_direction_config dc;
    dtnh_direction_stats st;
    memset(&dc, 0, sizeof dc);
    dc.mode = DTNH_MODE_SUM;
    CHECK_OK(dtnh_direction_flat(&dc, 3, gj, gom, d, &st, NULL));
    CHECK(d[0] == 0 && d[1] == 1 && d[2] == 0);
    CHECK(st.projected == 0);
    CHECK_NEAR(st.angle_d_j, st.angle_sum_j, 1e-12);
    CHECK_NEAR(st.angle_d_j, 90, 1e-9);
}

static double dt_angle(size_t n, const float *x, const float *y) {
    double c = dt_dot(n, x, y) / sqrt(dt_dot(n, x, x) * dt_dot(n, y, y));
    return acos(c > 1 ? 1 : c < -1 ? -1 : c) * 180 / 3.141592653589793;
}

static void stats_match_direct_computation(void) {
    dtnh_rng r;
    dtnh_params p;
    dtnh_arena a;
    static float d[4000], sum[4000];
    int trial, scope;
    size_t i;
    dtnh_rng_seed(&r, 14);
    CHECK_OK(dt_store(&p, &a, 6, dt_sizes, dt_groups));
    CHECK(p.total <= 4000);
    for (scope = 0; scope < 2; scope++)
        for (trial = 0; trial < 20; trial++) {
            dtnh_direction_config dc;
            dtnh_direction_stats st;
            memset(&dc, 0, sizeof dc);
            dc.scope = scope;
            dt_random(&r, p.total, p.g_j, 1.0f);
            dt_random(&r, p.total, p.g_omega, 2.0f);
            for (i = 0; i < p.total; i++) p.g_omega[i] -= (trial % 3) * 0.5f * p.g_j[i];
            for (i = 0; i < p.total; i++) sum[i] = p.g_j[i] + p.g_omega[i];
            st.loss = 7;
            st.omega = 8;
            CHECK_OK(dtnh_direction(&dc, &p, p.g_j, p.g_omega, d, &st, NULL));
            CHECK(st.loss == 7 && st.omega == 8); /* the caller's fields */
            CHECK_NEAR(st.norm_g_j, sqrt(dt_dot(p.total, p.g_j, p.g_j)), 1e-9);
            CHECK_NEAR(st.norm_g_omega, sqrt(dt_dot(p.total, p.g_omega, p.g_omega)), 1e-9);
            CHECK_NEAR(st.cos_j_omega, dt_dot(p.total, p.g_j, p.g_omega) / st.norm_g_j / st.norm_g_omega, 1e-9);
            CHECK_NEAR(st.angle_d_j, dt_angle(p.total, d, p.g_j), 1e-3);
            CHECK_NEAR(st.angle_d_omega, dt_angle(p.total, d, p.g_omega), 1e-3);
            CHECK_NEAR(st.angle_sum_j, dt_angle(p.total, sum, p.g_j), 1e-3);
            CHECK_NEAR(st.angle_sum_omega, dt_angle(p.total, sum, p.g_omega), 1e-3);
            if (scope == DTNH_SCOPE_GLOBAL) CHECK(st.projected == (st.cos_j_omega < 0));
        }
}

static void direction_in_place_equals_separate_output(void) {
    dtnh_rng r;
    dtnh_params p;
    dtnh_arena a;
    static float d[4000];
    size_t i;
    dtnh_rng_seed(&r, 15);
    CHECK_OK(dt_store(&p, &a, 6, dt_sizes, dt_groups));
    dt_random(&r, p.total, p.g_j, 1.0f);
    dt_random(&r, p.total, p.g_omega, 1.0f);
    for (i = 0; i < p.total; i++) p.g_omega[i] -= p.g_j[i];
    CHECK_OK(dtnh_direction(NULL, &p, p.g_j, p.g_omega, d, NULL, NULL));
    CHECK_OK(dtnh_direction(NULL, &p, p.g_j, p.g_omega, p.g_omega, NULL, NULL));
    for (i = 0; i < p.total; i++) CHECK(d[i] == p.g_omega[i]);
}

static void frozen_views_are_left_alone_and_ignored(void) {
    static const int sizes[2] = {3, 2};
    static const unsigned groups[2] = {DTNH_GROUP_BACKBONE, DTNH_GROUP_HEAD};
    float gj[5] = {0, 0, 0, 1, 0}, gom[5] = {1, 2, 3, -1, 1}, d[5] = {9, 9, 9, 9, 9};
    dtnh_params p;
    dtnh_arena a;
    dtnh_direction_stats st;
    CHECK_OK(dt_store(&p, &a, 2, sizes, groups));
    dtnh_params_set_trainable(&p, DTNH_GROUP_HEAD);
    gj[1] = (float)NAN;      /* a frozen view's gradient plays no part ... */
    gom[0] = (float)INFINITY; /* ... not even a NaN or an Inf there */
    CHECK_OK(dtnh_direction(NULL, &p, gj, gom, d, &st, NULL));
    CHECK(d[0] == 9 && d[1] == 9 && d[2] == 9);
    CHECK(d[3] == 1 && d[4] == 1);
    CHECK(st.views == 1 && st.projected == 1);
}

static void nan_in_a_gradient_is_refused_naming_the_view(void) {
    dtnh_params p;
    dtnh_arena a;
    dtnh_error err;
    static float d[4000];
    size_t i;
    CHECK_OK(dt_store(&p, &a, 6, dt_sizes, dt_groups));
    for (i = 0; i < p.total; i++) {
        p.g_j[i] = 1;
        p.g_omega[i] = -1;
        d[i] = 5;
    }
    p.g_omega[p.views[3].offset + 17] = (float)NAN;
    CHECK_STATUS(dtnh_direction(NULL, &p, p.g_j, p.g_omega, d, NULL, &err), DTNH_ERR_NUMERIC);
    CHECK(strstr(err.msg, "layer1.0.conv1.weight") && strstr(err.msg, "g_Omega") && strstr(err.msg, "17"));
    for (i = 0; i < p.total; i++) CHECK(d[i] == 5);
    p.g_omega[p.views[3].offset + 17] = -1;
    p.g_j[p.views[5].offset + 1] = (float)INFINITY;
    CHECK_STATUS(dtnh_direction(NULL, &p, p.g_j, p.g_omega, d, NULL, &err), DTNH_ERR_NUMERIC);
    CHECK(strstr(err.msg, "fc.bias") && strstr(err.msg, "g_J"));
    for (i = 0; i < p.total; i++) CHECK(d[i] == 5);
}

static void direction_rejects_bad_arguments(void) {
    float g[2] = {1, 2}, d[2];
    dtnh_direction_config dc;
    dtnh_params counting;
    dtnh_arena a;
    dtnh_error err;
    memset(&dc, 0, sizeof dc);
    dc.mode = 7;
    CHECK_STATUS(dtnh_direction_flat(&dc, 2, g, g, d, NULL, &err), DTNH_ERR_ARG);
    CHECK(strstr(err.msg, "mode"));
    dc.mode = 0;
    dc.scope = 3;
    CHECK_STATUS(dtnh_direction_flat(&dc, 2, g, g, d, NULL, &err), DTNH_ERR_ARG);
    dc.scope = 0;
    dc.eps = -1;
    CHECK_STATUS(dtnh_direction_flat(&dc, 2, g, g, d, NULL, &err), DTNH_ERR_ARG);
    CHECK_STATUS(dtnh_direction_flat(NULL, 0, g, g, d, NULL, &err), DTNH_ERR_ARG);
    CHECK_STATUS(dtnh_direction_flat(NULL, 2, NULL, g, d, NULL, &err), DTNH_ERR_ARG);
    CHECK_STATUS(dtnh_direction_flat(NULL, 2, g, g, NULL, NULL, &err), DTNH_ERR_ARG);
    dtnh_arena_init(&a, NULL, 0);
    memset(&counting, 0, sizeof counting);
    counting.count = 1;
    counting.total = 2;
    CHECK_STATUS(dtnh_direction(NULL, &counting, g, g, d, NULL, &err), DTNH_ERR_ARG);
    CHECK(strstr(err.msg, "count"));
}

/* ---- fused steps ---------------------------------------------------------------------------- */

/* The naive L2-SP gradient, written out from its definition. */
static double dt_l2sp_naive(const dtnh_params *p, double alpha, double beta, int kernels_only,
                            float *g) {
    double value = 0;
    int i;
    size_t k;
    for (i = 0; i < p->count; i++) {
        const dtnh_param_view *v = &p->views[i];
        int head = (v->groups & DTNH_GROUP_HEAD) != 0;
        int pulled = head || !kernels_only || (v->groups & DTNH_GROUP_KERNEL);
        for (k = v->offset; k < v->offset + v->count; k++) {
            float x = head ? p->w[k] : p->w[k] - p->w_src[k];
            float coef = (float)(head ? beta : alpha);
            g[k] = pulled && v->trainable ? coef * x : 0;
            if (pulled && v->trainable) value += 0.5 * coef * (double)x * x;
        }
    }
    return value;
}

static void dt_fill_l2sp_case(dtnh_params *p, dtnh_rng *r) {
    size_t i;
    dt_random(r, p->total, p->w_src, 0.5f);
    for (i = 0; i < p->total; i++) p->w[i] = p->w_src[i] + 0.1f * dtnh_rng_normal(r);
}

/* Three steps of DTNH(L2-SP) two ways: the fused step, and direction on a stored g_Omega then
   the optimizer. */
static void fused_l2sp_step_equals_unfused(void) {
    static float w_copy[4000], d[4000];
    int kind, variant;
    for (kind = 0; kind < 3; kind++)
        for (variant = 0; variant < 3; variant++) {
            dtnh_params p;
            dtnh_arena a;
            dtnh_rng r;
            dtnh_optim o1, o2;
            dtnh_optim_config oc;
            dtnh_l2sp_config rc;
            dtnh_direction_config dc;
            int step;
            size_t i;
            CHECK_OK(dt_store(&p, &a, 6, dt_sizes, dt_groups));
            dtnh_rng_seed(&r, 16 + (uint64_t)variant);
            dt_fill_l2sp_case(&p, &r);
            memset(&oc, 0, sizeof oc);
            oc.kind = kind == 2 ? DTNH_OPTIM_ADAM : DTNH_OPTIM_SGD;
            oc.momentum = kind == 1 ? 0.9 : 0;
            memset(&rc, 0, sizeof rc);
            rc.alpha = 0.3;
            rc.beta = 0.05;
            rc.kernels_only = variant == 1;
            memset(&dc, 0, sizeof dc);
            dc.scope = variant == 2 ? DTNH_SCOPE_PER_TENSOR : DTNH_SCOPE_GLOBAL;
            CHECK_OK(dtnh_optim_init(&o1, &oc, &p, &a, NULL));
            CHECK_OK(dtnh_optim_init(&o2, &oc, &p, &a, NULL));
            dtnh_copy(p.total, p.w, w_copy);
            for (step = 0; step < 3; step++) {
                dtnh_direction_stats s1, s2;
                float *w_fused = p.w;
                double value;
                dt_random(&r, p.total, p.g_j, 0.2f);
                /* fused, on p.w */
                CHECK_OK(dtnh_step_l2sp(&o1, &dc, &rc, &p, p.g_j, &s1, NULL));
                /* unfused, on w_copy */
                p.w = w_copy;
                value = dt_l2sp_naive(&p, rc.alpha, rc.beta, rc.kernels_only, p.g_omega);
                CHECK_OK(dtnh_direction(&dc, &p, p.g_j, p.g_omega, d, &s2, NULL));
                CHECK_OK(dtnh_optim_step(&o2, &p, d, NULL));
                p.w = w_fused;
                CHECK_NEAR(s1.omega, value, 1e-5);
                CHECK_NEAR(s1.cos_j_omega, s2.cos_j_omega, 1e-5);
                CHECK(s1.views_projected == s2.views_projected);
                for (i = 0; i < p.total; i++)
                    CHECK_MSG(fabs(p.w[i] - w_copy[i]) <= 1e-6 * (1 + fabs(w_copy[i])),
                              "kind %d variant %d step %d: w[%zu] %.9g vs %.9g", kind, variant, step, i,
                              p.w[i], w_copy[i]);
            }
        }
}

static void fused_step_equals_direction_then_optimizer(void) {
    static float w_copy[4000], d[4000];
    dtnh_params p;
    dtnh_arena a;
    dtnh_rng r;
    dtnh_optim o1, o2;
    dtnh_optim_config oc;
    int step;
    size_t i;
    CHECK_OK(dt_store(&p, &a, 6, dt_sizes, dt_groups));
    dtnh_rng_seed(&r, 17);
    dt_random(&r, p.total, p.w, 1.0f);
    dtnh_copy(p.total, p.w, w_copy);
    memset(&oc, 0, sizeof oc);
    oc.kind = DTNH_OPTIM_ADAMW;
    CHECK_OK(dtnh_optim_init(&o1, &oc, &p, &a, NULL));
    CHECK_OK(dtnh_optim_init(&o2, &oc, &p, &a, NULL));
    for (step = 0; step < 3; step++) {
        float *w_fused = p.w;
        dt_random(&r, p.total, p.g_j, 1.0f);
        dt_random(&r, p.total, p.g_omega, 1.0f);
        for (i = 0; i < p.total; i++) p.g_omega[i] -= p.g_j[i];
        CHECK_OK(dtnh_step(&o1, NULL, &p, p.g_j, p.g_omega, NULL, NULL));
        p.w = w_copy;
        CHECK_OK(dtnh_direction(NULL, &p, p.g_j, p.g_omega, d, NULL, NULL));
        CHECK_OK(dtnh_optim_step(&o2, &p, d, NULL));
        p.w = w_fused;
        for (i = 0; i < p.total; i++) CHECK(p.w[i] == w_copy[i]);
    }
}

/* The plain L2 baseline: toward_zero pulls the backbone toward 0, not w_s. */
static void l2_toward_zero_is_plain_weight_decay(void) {
    static const int sizes[2] = {3, 2};
    static const unsigned groups[2] = {DTNH_GROUP_BACKBONE, DTNH_GROUP_HEAD};
    dtnh_params p;
    dtnh_arena a;
    dtnh_optim o;
    dtnh_optim_config oc;
    dtnh_l2sp_config rc;
    dtnh_direction_config dc;
    dtnh_direction_stats st;
    size_t i;
    CHECK_OK(dt_store(&p, &a, 2, sizes, groups));
    for (i = 0; i < 5; i++) {
        p.w[i] = (float)(i + 1);
        p.w_src[i] = 100;
        p.g_j[i] = 0;
    }
    memset(&oc, 0, sizeof oc);
    oc.lr = 0.5;
    memset(&rc, 0, sizeof rc);
    rc.alpha = rc.beta = 0.1;
    rc.toward_zero = 1;
    memset(&dc, 0, sizeof dc);
    dc.mode = DTNH_MODE_SUM;
    CHECK_OK(dtnh_optim_init(&o, &oc, &p, &a, NULL));
    CHECK_OK(dtnh_step_l2sp(&o, &dc, &rc, &p, p.g_j, &st, NULL));
    for (i = 0; i < 5; i++) CHECK_NEAR(p.w[i], (i + 1) * (1 - 0.05), 1e-6);
    CHECK_NEAR(st.omega, 0.05 * (1 + 4 + 9 + 16 + 25), 1e-6);
}

static void fused_step_refuses_nan_before_changing_anything(void) {
    dtnh_params p;
    dtnh_arena a;
    dtnh_optim o;
    dtnh_optim_config oc;
    dtnh_direction_config dc;
    dtnh_error err;
    static float w_copy[4000];
    size_t i;
    CHECK_OK(dt_store(&p, &a, 6, dt_sizes, dt_groups));
    for (i = 0; i < p.total; i++) {
        p.w[i] = 1;
        p.w_src[i] = 0.5f;
        p.g_j[i] = 0.1f;
    }
    p.g_j[p.views[4].offset + 3] = (float)NAN;
    memset(&oc, 0, sizeof oc);
    oc.momentum = 0.9;
    CHECK_OK(dtnh_optim_init(&o, &oc, &p, &a, NULL));
    dtnh_copy(p.total, p.w, w_copy);
    CHECK_STATUS(dtnh_step_l2sp(&o, NULL, NULL, &p, p.g_j, NULL, &err), DTNH_ERR_NUMERIC);
    CHECK(strstr(err.msg, "fc.weight") && strstr(err.msg, "g_J"));
    for (i = 0; i < p.total; i++) CHECK(p.w[i] == w_copy[i] && o.m[i] == 0);
    CHECK(o.step == 0 && o.slots[0].steps == 0);
    /* mode sum without stats takes one pass: it reports, after the fact */
    memset(&dc, 0, sizeof dc);
    dc.mode = DTNH_MODE_SUM;
    CHECK_STATUS(dtnh_step_l2sp(&o, &dc, NULL, &p, p.g_j, NULL, &err), DTNH_ERR_NUMERIC);
    CHECK(strstr(err.msg, "fc.weight") && strstr(err.msg, "already"));
}

static void fused_step_rejects_bad_input(void) {
    dtnh_params p;
    dtnh_arena a;
    dtnh_optim o;
    dtnh_l2sp_config rc;
    dtnh_error err;
    CHECK_OK(dt_store(&p, &a, 6, dt_sizes, dt_groups));
    CHECK_OK(dtnh_optim_init(&o, NULL, &p, &a, NULL));
    memset(&rc, 0, sizeof rc);
    rc.alpha = -0.1;
    CHECK_STATUS(dtnh_step_l2sp(&o, NULL, &rc, &p, p.g_j, NULL, &err), DTNH_ERR_ARG);
    CHECK(strstr(err.msg, "alpha"));
    rc.alpha = 0;
    rc.beta = (double)NAN;
    CHECK_STATUS(dtnh_step_l2sp(&o, NULL, &rc, &p, p.g_j, NULL, &err), DTNH_ERR_ARG);
    p.w_src = NULL;
    CHECK_STATUS(dtnh_step_l2sp(&o, NULL, NULL, &p, p.g_j, NULL, &err), DTNH_ERR_ARG);
    CHECK(strstr(err.msg, "w_src"));
    CHECK_STATUS(dtnh_step(&o, NULL, &p, p.g_j, NULL, NULL, &err), DTNH_ERR_ARG);
    CHECK(o.step == 0);
}


/* ---- one full step against PyTorch (tools/gen_dtnh_fixtures.py) ----------------------------- */

typedef struct dt_torch {
    dtnh_st_file f;
    dtnh_resnet net;
    dtnh_fmap_reg reg;
    dtnh_arena persistent, step, scratch;
    void *mem[3];
    float x[4 * 3 * 16 * 16], *w0;
    int labels[4];
} dt_torch;

static double dt_meta(const dt_torch *t, const char *key) {
    const char *v = dtnh_st_meta_get(&t->f, key);
    return v ? atof(v) : -1;
}

static float dt_scalar(dt_torch *t, const char *name) {
    float v = -1e30f;
    int i = dtnh_st_find(&t->f, name);
    if (i >= 0) dtnh_st_read_f32(&t->f, i, &v, 1, NULL);
    return v;
}

static void dt_torch_close(dt_torch *t) {
    int i;
    dtnh_st_close(&t->f);
    for (i = 0; i < 3; i++) free(t->mem[i]);
    free(t->w0);
}

/* The fixture's network (cifar stem, width 4, 16x16, batch 4, 10 classes, training mode),
   the target at formula key 0, its g_J from one forward and backward. */
static dtnh_status dt_torch_open(dt_torch *t, const char *file, int fmap) {
    static const char *hooks[4] = {"layer1", "layer2", "layer3", "layer4"};
    static const int xshape[4] = {4, 3, 16, 16};
    dtnh_resnet_config c;
    dtnh_resnet_plan plan;
    dtnh_tensor x, logits;
    float dlogits[40];
    double loss;
    dtnh_status s;
    size_t i;
    int k;
    memset(t, 0, sizeof *t);
    t->mem[0] = malloc(1 << 20);
    dtnh_arena_init(&t->scratch, t->mem[0], 1 << 20);
    if ((s = dtnh_st_open(&t->f, t_fixture(file), &t->scratch, NULL))) return s;
    memset(&c, 0, sizeof c);
    c.stem = DTNH_STEM_CIFAR;
    c.width = 4;
    c.num_classes = 10;
    c.height = c.width_px = 16;
    c.max_batch = 4;
    c.bn_stats = DTNH_BN_STATS_BATCH;
    c.roles = DTNH_ROLE_W | DTNH_ROLE_W_SRC | DTNH_ROLE_G_J | DTNH_ROLE_G_OMEGA;
    c.hook_count = 4;
    for (k = 0; k < 4; k++) c.hooks[k] = hooks[k];
    if ((s = dtnh_resnet_plan_memory(&c, 1, &plan, NULL))) return s;
    t->mem[1] = malloc(plan.persistent + plan.step_train + (1 << 20));
    t->mem[2] = malloc(2 * plan.step_train + (1 << 20));
    dtnh_arena_init(&t->persistent, t->mem[1], plan.persistent + plan.step_train + (1 << 20));
    dtnh_arena_init(&t->step, t->mem[2], 2 * plan.step_train + (1 << 20));
    if ((s = dtnh_resnet_init(&t->net, &c, &t->persistent, NULL))) return s;
    if (fmap) { /* the source model: its weights into w_s, its statistics into the copy */
        dtnh_fmap_config fc;
        memset(&fc, 0, sizeof fc);
        fc.alpha = dt_meta(t, "alpha");
        formula_fill(&t->net, (int)dt_meta(t, "source_key"));
        dtnh_copy(t->net.params.total, t->net.params.w, t->net.params.w_src);
        if ((s = dtnh_fmap_reg_init(&t->reg, &fc, &t->net, NULL, &t->persistent, NULL))) return s;
    }
    formula_fill(&t->net, 0);
    t->w0 = (float *)malloc(t->net.params.total * sizeof(float));
    dtnh_copy(t->net.params.total, t->net.params.w, t->w0);
    for (i = 0; i < sizeof t->x / sizeof t->x[0]; i++) t->x[i] = (float)formula_u(i, 1000);
    for (k = 0; k < 4; k++) t->labels[k] = (7 * k + 3) % 10;
    if ((s = dtnh_tensor_view(&x, t->x, 4, xshape, NULL)) ||
        (s = dtnh_resnet_forward(&t->net, &x, &t->step, &logits, NULL)) ||
        (s = dtnh_softmax_cross_entropy(4, 10, logits.data, t->labels, dlogits, &loss, NULL)) ||
        (s = dtnh_resnet_backward(&t->net, dlogits, NULL, t->net.params.g_j, 0, NULL)))
        return s;
    if (fabs(loss - dt_scalar(t, "loss")) > 1e-4 * fabs(loss)) return DTNH_ERR_NUMERIC;
    if (fmap) {
        double omega;
        if ((s = dtnh_fmap_reg_compute(&t->reg, &x, &t->step, NULL, t->net.params.g_omega, 0, &omega, NULL)))
            return s;
        if (fabs(omega - dt_scalar(t, "omega")) > 1e-4 * fabs(omega)) return DTNH_ERR_NUMERIC;
    }
    return DTNH_OK;
}

/* Every parameter after the step against w + PyTorch's update: the weights to 1e-4 of their
   norm, the update itself to 1e-3 of its norm, view by view. */
static int dt_torch_weights_agree(dt_torch *t) {
    const dtnh_params *p = &t->net.params;
    static float upd[1 << 16];
    int i;
    for (i = 0; i < p->count; i++) {
        const dtnh_param_view *v = &p->views[i];
        char key[96];
        double dw = 0, du = 0, nw = 0, nu = 0;
        size_t k;
        int at;
        snprintf(key, sizeof key, "update.%s", v->name);
        at = dtnh_st_find(&t->f, key);
        if (at < 0 || v->count > sizeof upd / sizeof upd[0] ||
            dtnh_st_read_f32(&t->f, at, upd, v->count, NULL))
            return 0;
        for (k = 0; k < v->count; k++) {
            double want = (double)t->w0[v->offset + k] + upd[k], got = p->w[v->offset + k];
            double mine = got - t->w0[v->offset + k];
            dw += (got - want) * (got - want);
            nw += want * want;
            du += (mine - upd[k]) * (mine - upd[k]);
            nu += (double)upd[k] * upd[k];
        }
        if (sqrt(dw) > 1e-4 * sqrt(nw) || sqrt(du) > 1e-3 * sqrt(nu) + 1e-9) {
            printf("    %s: |w - w_torch| = %.3g of %.3g, |dw - dw_torch| = %.3g of %.3g\n", v->name,
                   sqrt(dw), sqrt(nw), sqrt(du), sqrt(nu));
            return 0;
        }
    }
    return 1;
}

static void dt_torch_check_stats(dt_torch *t, const dtnh_direction_stats *st) {
    double cos = dt_scalar(t, "dot") / dt_scalar(t, "norm_g_j") / dt_scalar(t, "norm_g_omega");
    CHECK_NEAR(st->norm_g_j, dt_scalar(t, "norm_g_j"), 1e-4);
    CHECK_NEAR(st->norm_g_omega, dt_scalar(t, "norm_g_omega"), 1e-4);
    CHECK_NEAR(st->cos_j_omega, cos, 1e-4);
    CHECK(st->projected == 1);
}

static void dtnh_l2sp_step_on_resnet_matches_torch(void) {
    static dt_torch t;
    dtnh_optim o;
    dtnh_optim_config oc;
    dtnh_l2sp_config rc;
    dtnh_direction_stats st;
    int i;
    CHECK_OK(dt_torch_open(&t, "dtnh_step_l2sp.safetensors", 0));
    for (i = 0; i < t.net.params.count; i++) {
        const dtnh_param_view *v = &t.net.params.views[i];
        char key[96];
        snprintf(key, sizeof key, "w_src.%s", v->name);
        CHECK_OK(dtnh_st_read_f32(&t.f, dtnh_st_find(&t.f, key), t.net.params.w_src + v->offset, v->count, NULL));
    }
    memset(&oc, 0, sizeof oc);
    oc.lr = dt_meta(&t, "lr");
    memset(&rc, 0, sizeof rc);
    rc.alpha = dt_meta(&t, "alpha");
    rc.beta = dt_meta(&t, "beta");
    CHECK_OK(dtnh_optim_init(&o, &oc, &t.net.params, &t.persistent, NULL));
    CHECK_OK(dtnh_step_l2sp(&o, NULL, &rc, &t.net.params, t.net.params.g_j, &st, NULL));
    CHECK_NEAR(st.omega, dt_scalar(&t, "omega"), 1e-4);
    dt_torch_check_stats(&t, &st);
    CHECK(dt_torch_weights_agree(&t));
    dt_torch_close(&t);
}

static void dtnh_feature_map_step_on_resnet_matches_torch(void) {
    static dt_torch t;
    dtnh_optim o;
    dtnh_optim_config oc;
    dtnh_direction_stats st;
    CHECK_OK(dt_torch_open(&t, "dtnh_step_fmap.safetensors", 1));
    memset(&oc, 0, sizeof oc);
    oc.lr = dt_meta(&t, "lr");
    CHECK_OK(dtnh_optim_init(&o, &oc, &t.net.params, &t.persistent, NULL));
    CHECK_OK(dtnh_step(&o, NULL, &t.net.params, t.net.params.g_j, t.net.params.g_omega, &st, NULL));
    dt_torch_check_stats(&t, &st);
    CHECK(dt_torch_weights_agree(&t));
    dt_torch_close(&t);
}

#ifdef _OPENMP
/* Fixed partitions: the same bits with 1 thread and with several. */
static void fused_step_bits_do_not_depend_on_threads(void) {
    static const int sizes[2] = {40000, 50};
    static const unsigned groups[2] = {DTNH_GROUP_BACKBONE, DTNH_GROUP_HEAD};
    static float w1[40050];
    dtnh_params p;
    dtnh_arena a;
    dtnh_direction_stats s1, s2;
    int threads = omp_get_max_threads(), run;
    CHECK_OK(dt_store(&p, &a, 2, sizes, groups));
    for (run = 0; run < 2; run++) {
        dtnh_rng r;
        dtnh_optim o;
        dtnh_arena_reset(&a, dtnh_arena_mark(&a));
        dtnh_rng_seed(&r, 18);
        dt_fill_l2sp_case(&p, &r);
        dt_random(&r, p.total, p.g_j, 1.0f);
        CHECK_OK(dtnh_optim_init(&o, NULL, &p, &a, NULL));
        omp_set_num_threads(run == 0 ? 1 : 4);
        CHECK_OK(dtnh_step_l2sp(&o, NULL, NULL, &p, p.g_j, run == 0 ? &s1 : &s2, NULL));
        if (run == 0) dtnh_copy(p.total, p.w, w1);
    }
    omp_set_num_threads(threads);
    CHECK(memcmp(w1, p.w, sizeof w1) == 0);
    CHECK(s1.cos_j_omega == s2.cos_j_omega && s1.omega == s2.omega);
}
#endif

void suite_dtnh(void) {
    RUN(direction_example_projects_the_conflicting_part);
    RUN(projected_omega_is_orthogonal_to_gj);
    RUN(acute_pair_is_left_alone);
    RUN(direction_never_opposes_gj);
    RUN(eps_guard_skips_projection);
    RUN(per_tensor_differs_from_global_on_crafted_vectors);
    RUN(group_mask_limits_the_projection);
    RUN(sum_mode_adds_even_when_obtuse);
    RUN(stats_match_direct_computation);
    RUN(direction_in_place_equals_separate_output);
    RUN(frozen_views_are_left_alone_and_ignored);
    RUN(nan_in_a_gradient_is_refused_naming_the_view);
    RUN(direction_rejects_bad_arguments);
    RUN(fused_l2sp_step_equals_unfused);
    RUN(fused_step_equals_direction_then_optimizer);
    RUN(l2_toward_zero_is_plain_weight_decay);
    RUN(fused_step_refuses_nan_before_changing_anything);
    RUN(fused_step_rejects_bad_input);
    RUN(dtnh_l2sp_step_on_resnet_matches_torch);
    RUN(dtnh_feature_map_step_on_resnet_matches_torch);
#ifdef _OPENMP
    RUN(fused_step_bits_do_not_depend_on_threads);
#endif
}
