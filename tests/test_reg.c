/* Regularizers: every gradient against finite differences, values against their definitions,
   g_Omega written and g_J left alone, DELTA's attention, bad input. */
#include <stdlib.h>
#include <string.h>
#include "test.h"
#include "../dtnh_nn.h"

static DTNH_ALIGNED(64) unsigned char rg_mem[1 << 20];

static const int rg_sizes[6] = {60, 8, 8, 90, 20, 4};
static const unsigned rg_groups[6] = {
    DTNH_GROUP_BACKBONE | DTNH_GROUP_KERNEL, DTNH_GROUP_BACKBONE | DTNH_GROUP_BN,
    DTNH_GROUP_BACKBONE | DTNH_GROUP_BIAS,   DTNH_GROUP_BACKBONE | DTNH_GROUP_KERNEL,
    DTNH_GROUP_HEAD | DTNH_GROUP_KERNEL,     DTNH_GROUP_HEAD | DTNH_GROUP_BIAS};

/* A store like a small network's, w near w_s, g_J filled with a sentinel. */
static dtnh_status rg_store(dtnh_params *p, dtnh_arena *a, uint64_t seed) {
    static const char *names[6] = {"conv1.weight", "bn1.weight", "bn1.bias", "layer1.0.conv1.weight",
                                   "fc.weight", "fc.bias"};
    dtnh_rng r;
    dtnh_status s;
    size_t k;
    int i;
    dtnh_arena_init(a, rg_mem, sizeof rg_mem);
    if ((s = dtnh_params_init(p, a, 6, NULL))) return s;
    for (i = 0; i < 6; i++)
        if ((s = dtnh_params_add(p, names[i], 1, &rg_sizes[i], rg_groups[i], NULL, NULL))) return s;
    if ((s = dtnh_params_alloc(p, a, DTNH_ROLE_W | DTNH_ROLE_W_SRC | DTNH_ROLE_G_J | DTNH_ROLE_G_OMEGA, NULL)))
        return s;
    dtnh_rng_seed(&r, seed);
    for (k = 0; k < p->total; k++) {
        p->w_src[k] = dtnh_rng_normal(&r);
        p->w[k] = p->w_src[k] + 0.3f * dtnh_rng_normal(&r);
        p->g_j[k] = 123.0f;
    }
    return DTNH_OK;
}

typedef dtnh_status (*rg_value_fn)(const dtnh_params *p, const void *ctx, float *g, double *value);

static dtnh_status rg_l2sp_fn(const dtnh_params *p, const void *ctx, float *g, double *value) {
    return dtnh_reg_l2sp((const dtnh_l2sp_config *)ctx, p, g, value, NULL);
}

static dtnh_status rg_l2_head_fn(const dtnh_params *p, const void *ctx, float *g, double *value) {
    (void)ctx;
    return dtnh_reg_l2(0.2, DTNH_GROUP_HEAD, p, g, value, NULL);
}

/* Central differences along a random direction over every parameter and along a few
   coordinates, against the gradient the regularizer adds to a zeroed g_Omega. */
static int rg_check_gradient(dtnh_params *p, rg_value_fn fn, const void *ctx, double *worst) {
    static float dir[1024], w0[1024];
    dtnh_rng r;
    double vp, vm, analytic, numeric, h = 1e-2;
    size_t k;
    int trial;
    dtnh_rng_seed(&r, 99);
    dtnh_fill(p->total, p->g_omega, 0.0f);
    if (fn(p, ctx, p->g_omega, &vp)) return 0;
    dtnh_copy(p->total, p->w, w0);
    *worst = 0;
    for (trial = 0; trial < 8; trial++) {
        static float scratch[1024];
        if (trial == 0)
            for (k = 0; k < p->total; k++) dir[k] = dtnh_rng_normal(&r);
        else {
            dtnh_fill(p->total, dir, 0.0f);
            dir[dtnh_rng_below(&r, (uint32_t)p->total)] = 1.0f;
        }
        analytic = dtnh_dot(p->total, p->g_omega, dir);
        for (k = 0; k < p->total; k++) p->w[k] = w0[k] + (float)h * dir[k];
        if (fn(p, ctx, scratch, &vp)) return 0;
        for (k = 0; k < p->total; k++) p->w[k] = w0[k] - (float)h * dir[k];
        if (fn(p, ctx, scratch, &vm)) return 0;
        numeric = (vp - vm) / (2 * h);
        if (fabs(numeric - analytic) / (1e-3 + fabs(analytic)) > *worst)
            *worst = fabs(numeric - analytic) / (1e-3 + fabs(analytic));
    }
    dtnh_copy(p->total, w0, p->w);
    return 1;
}

static void l2sp_gradient_matches_finite_differences(void) {
    dtnh_params p;
    dtnh_arena a;
    dtnh_l2sp_config rc;
    double worst;
    int variant;
    for (variant = 0; variant < 3; variant++) {
        CHECK_OK(rg_store(&p, &a, 1));
        memset(&rc, 0, sizeof rc);
        rc.alpha = 0.7;
        rc.beta = 0.2;
        rc.kernels_only = variant == 1;
        rc.toward_zero = variant == 2;
        CHECK(rg_check_gradient(&p, rg_l2sp_fn, &rc, &worst));
        CHECK_MSG(worst < 1e-3, "variant %d: relative error %g", variant, worst);
    }
    CHECK(rg_check_gradient(&p, rg_l2_head_fn, NULL, &worst));
    CHECK_MSG(worst < 1e-3, "L2 on the head: relative error %g", worst);
}

static void l2sp_value_follows_its_definition(void) {
    dtnh_params p;
    dtnh_arena a;
    dtnh_l2sp_config rc;
    double value, want = 0;
    size_t k;
    int i;
    CHECK_OK(rg_store(&p, &a, 2));
    memset(&rc, 0, sizeof rc);
    rc.kernels_only = 1; /* defaults 0.01; BN and bias views are free */
    CHECK_OK(dtnh_reg_l2sp(&rc, &p, p.g_omega, &value, NULL));
    for (i = 0; i < p.count; i++) {
        const dtnh_param_view *v = &p.views[i];
        for (k = v->offset; k < v->offset + v->count; k++) {
            double x = (v->groups & DTNH_GROUP_HEAD) ? p.w[k] : p.w[k] - p.w_src[k];
            if ((v->groups & DTNH_GROUP_HEAD) || (v->groups & DTNH_GROUP_KERNEL)) want += 0.5 * 0.01f * x * x;
            else CHECK(p.g_omega[k] == 0);
        }
    }
    CHECK_NEAR(value, want, 1e-9);
}

static void regularizers_write_g_omega_and_leave_g_j(void) {
    dtnh_params p;
    dtnh_arena a;
    double value;
    size_t k;
    CHECK_OK(rg_store(&p, &a, 3));
    dtnh_fill(p.total, p.g_omega, 1.0f);
    CHECK_OK(dtnh_reg_l2(0.5, DTNH_GROUP_HEAD, &p, p.g_omega, &value, NULL));
    for (k = 0; k < p.total; k++) {
        int head = k >= p.views[4].offset;
        CHECK(p.g_j[k] == 123.0f);
        CHECK(head ? p.g_omega[k] == 1.0f + 0.5f * p.w[k] : p.g_omega[k] == 1.0f); /* added */
    }
    dtnh_params_set_trainable(&p, DTNH_GROUP_BACKBONE); /* a frozen head takes nothing */
    dtnh_fill(p.total, p.g_omega, 0.0f);
    CHECK_OK(dtnh_reg_l2sp(NULL, &p, p.g_omega, &value, NULL));
    for (k = p.views[4].offset; k < p.total; k++) CHECK(p.g_omega[k] == 0);
}

static void regularizers_reject_bad_input(void) {
    dtnh_params p;
    dtnh_arena a;
    dtnh_l2sp_config rc;
    dtnh_error err;
    double value;
    size_t k;
    CHECK_OK(rg_store(&p, &a, 4));
    CHECK_STATUS(dtnh_reg_l2(0, 0, &p, p.g_omega, &value, &err), DTNH_ERR_ARG);
    CHECK(strstr(err.msg, "lambda"));
    CHECK_STATUS(dtnh_reg_l2(-1, 0, &p, p.g_omega, &value, &err), DTNH_ERR_ARG);
    memset(&rc, 0, sizeof rc);
    rc.beta = -0.5;
    CHECK_STATUS(dtnh_reg_l2sp(&rc, &p, p.g_omega, &value, &err), DTNH_ERR_ARG);
    CHECK_STATUS(dtnh_reg_l2sp(NULL, &p, NULL, &value, &err), DTNH_ERR_ARG);
    dtnh_fill(p.total, p.g_omega, 0.0f);
    p.w[p.views[3].offset + 5] = (float)NAN;
    CHECK_STATUS(dtnh_reg_l2sp(NULL, &p, p.g_omega, &value, &err), DTNH_ERR_NUMERIC);
    CHECK(strstr(err.msg, "layer1.0.conv1.weight"));
    for (k = 0; k < p.total; k++) CHECK(p.g_omega[k] == 0); /* nothing written */
    p.w_src = NULL;
    CHECK_STATUS(dtnh_reg_l2sp(NULL, &p, p.g_omega, &value, &err), DTNH_ERR_ARG);
    CHECK(strstr(err.msg, "w_src"));
}

/* ---- feature-map distances ----------------------------------------------------------------- */

typedef struct rg_maps {
    dtnh_tensor f, s;
    float fdata[3 * 4 * 5 * 6], sdata[3 * 4 * 5 * 6], df[3 * 4 * 5 * 6], weight[4];
} rg_maps;

static void rg_make_maps(rg_maps *m, uint64_t seed) {
    static const int shape[4] = {3, 4, 5, 6};
    dtnh_rng r;
    size_t k;
    dtnh_rng_seed(&r, seed);
    dtnh_tensor_view(&m->f, m->fdata, 4, shape, NULL);
    dtnh_tensor_view(&m->s, m->sdata, 4, shape, NULL);
    for (k = 0; k < sizeof m->fdata / sizeof m->fdata[0]; k++) {
        m->sdata[k] = fabsf(dtnh_rng_normal(&r)); /* post-ReLU-like maps */
        m->fdata[k] = fabsf(m->sdata[k] + 0.5f * dtnh_rng_normal(&r));
    }
    for (k = 0; k < 4; k++) m->weight[k] = 0.5f + (float)k;
}

/* kind 0: plain distance, 1: channel-weighted, 2: attention transfer. */
static dtnh_status rg_distance(rg_maps *m, int kind, float *df, double *value) {
    if (kind == 2) return dtnh_attention_distance(&m->f, &m->s, 0.8, df, value, NULL);
    return dtnh_feature_distance(&m->f, &m->s, kind ? m->weight : NULL, 0.8, df, value, NULL);
}

static void feature_distances_match_finite_differences(void) {
    static rg_maps m;
    int kind, trial;
    for (kind = 0; kind < 3; kind++) {
        dtnh_rng r;
        size_t n = sizeof m.fdata / sizeof m.fdata[0], k;
        double v;
        rg_make_maps(&m, 5 + (uint64_t)kind);
        dtnh_rng_seed(&r, 6);
        CHECK_OK(rg_distance(&m, kind, m.df, &v));
        CHECK(v > 0);
        for (trial = 0; trial < 12; trial++) {
            static float dir[3 * 4 * 5 * 6], f0[3 * 4 * 5 * 6];
            double vp, vm, h = 1e-3, analytic, numeric;
            for (k = 0; k < n; k++) dir[k] = trial == 0 ? dtnh_rng_normal(&r) : 0.0f;
            if (trial) dir[dtnh_rng_below(&r, (uint32_t)n)] = 1.0f;
            dtnh_copy(n, m.fdata, f0);
            for (k = 0; k < n; k++) m.fdata[k] = f0[k] + (float)h * dir[k];
            CHECK_OK(rg_distance(&m, kind, NULL, &vp));
            for (k = 0; k < n; k++) m.fdata[k] = f0[k] - (float)h * dir[k];
            CHECK_OK(rg_distance(&m, kind, NULL, &vm));
            dtnh_copy(n, f0, m.fdata);
            numeric = (vp - vm) / (2 * h);
            analytic = dtnh_dot(n, m.df, dir);
            CHECK_MSG(fabs(numeric - analytic) <= 2e-3 * (fabs(analytic) + 1e-3), "kind %d trial %d: %g vs %g",
                      kind, trial, analytic, numeric);
        }
    }
}

static void feature_distance_value_follows_its_definition(void) {
    static rg_maps m;
    double v, want = 0;
    size_t k;
    rg_make_maps(&m, 7);
    CHECK_OK(rg_distance(&m, 1, NULL, &v));
    for (k = 0; k < sizeof m.fdata / sizeof m.fdata[0]; k++) {
        double d = (double)m.fdata[k] - m.sdata[k];
        want += m.weight[(k / 30) % 4] * d * d;
    }
    CHECK_NEAR(v, 0.5 * 0.8 / 3 * want, 1e-6);
    dtnh_copy(sizeof m.fdata / sizeof m.fdata[0], m.sdata, m.fdata);
    CHECK_OK(rg_distance(&m, 2, NULL, &v));
    CHECK(v == 0);
}

/* Attention maps are normalised: scaling a sample's features changes nothing. */
static void attention_distance_ignores_feature_scale(void) {
    static rg_maps m;
    double v1, v2;
    size_t k;
    rg_make_maps(&m, 8);
    CHECK_OK(rg_distance(&m, 2, NULL, &v1));
    for (k = 0; k < sizeof m.fdata / sizeof m.fdata[0]; k++) m.fdata[k] *= 3.0f;
    CHECK_OK(rg_distance(&m, 2, NULL, &v2));
    CHECK_NEAR(v1, v2, 1e-6);
}

static void feature_distances_reject_bad_input(void) {
    static rg_maps m;
    static const int other[4] = {3, 4, 6, 5};
    dtnh_tensor t;
    dtnh_error err;
    rg_make_maps(&m, 9);
    CHECK_OK(dtnh_tensor_view(&t, m.sdata, 4, other, NULL));
    CHECK_STATUS(dtnh_feature_distance(&m.f, &t, NULL, 1, NULL, NULL, &err), DTNH_ERR_SHAPE);
    CHECK(strstr(err.msg, "[3,4,5,6]") && strstr(err.msg, "[3,4,6,5]"));
    CHECK_STATUS(dtnh_attention_distance(&m.f, &t, 1, NULL, NULL, &err), DTNH_ERR_SHAPE);
    CHECK_STATUS(dtnh_feature_distance(&m.f, &m.s, NULL, 0, NULL, NULL, &err), DTNH_ERR_ARG);
    CHECK_STATUS(dtnh_attention_distance(&m.f, &m.s, -2, NULL, NULL, &err), DTNH_ERR_ARG);
    m.fdata[17] = (float)NAN;
    CHECK_STATUS(dtnh_feature_distance(&m.f, &m.s, NULL, 1, m.df, NULL, &err), DTNH_ERR_NUMERIC);
}

static void delta_weights_are_a_tempered_softmax_of_z_scores(void) {
    float v[3] = {1, 2, 3}, same[4] = {0.2f, 0.2f, 0.2f, 0.2f};
    double z = sqrt(1.5), e0 = exp(-z / 5), e2 = exp(z / 5), sum = e0 + 1 + e2;
    dtnh_delta_weights(3, v, 0); /* default temperature 5 */
    CHECK_NEAR(v[0], e0 / sum, 1e-6);
    CHECK_NEAR(v[1], 1 / sum, 1e-6);
    CHECK_NEAR(v[2], e2 / sum, 1e-6);
    dtnh_delta_weights(4, same, 5);
    CHECK(same[0] == 0.25f && same[3] == 0.25f);
}


/* ---- feature-map regularizers on a tiny ResNet-18 ------------------------------------------ */

static DTNH_ALIGNED(64) unsigned char rg_persist[6 << 20], rg_step[6 << 20];

typedef struct rg_net {
    dtnh_resnet target;
    dtnh_fmap_reg reg;
    dtnh_arena pa, sa;
    float x[3 * 3 * 12 * 12];
    int labels[3];
    dtnh_tensor input;
} rg_net;

/* Width 4, cifar stem, 12x12 inputs, batch 3, hooks layer1..layer4 and layer2.0; w_s is the
   initialisation and w a perturbation of it, so the distances are not zero. */
static dtnh_status rg_net_make(rg_net *t, int width, dtnh_fmap_kind kind, const dtnh_fmap_config *custom) {
    static const char *hooks[5] = {"layer1", "layer2", "layer3", "layer4", "layer2.0"};
    static const int xshape[4] = {3, 3, 12, 12};
    dtnh_resnet_config c;
    dtnh_fmap_config fc;
    dtnh_rng r;
    dtnh_status s;
    size_t k;
    int i;
    memset(&c, 0, sizeof c);
    c.width = width;
    c.num_classes = 5;
    c.stem = DTNH_STEM_CIFAR;
    c.height = c.width_px = 12;
    c.max_batch = 3;
    c.roles = DTNH_ROLE_W | DTNH_ROLE_W_SRC | DTNH_ROLE_G_J | DTNH_ROLE_G_OMEGA;
    c.hook_count = 5;
    for (i = 0; i < 5; i++) c.hooks[i] = hooks[i];
    c.seed = 7;
    dtnh_arena_init(&t->pa, rg_persist, sizeof rg_persist);
    dtnh_arena_init(&t->sa, rg_step, sizeof rg_step);
    if ((s = dtnh_resnet_init(&t->target, &c, &t->pa, NULL))) return s;
    dtnh_copy(t->target.params.total, t->target.params.w, t->target.params.w_src);
    memset(&fc, 0, sizeof fc);
    fc.kind = kind;
    fc.alpha = 0.5;
    if ((s = dtnh_fmap_reg_init(&t->reg, custom ? custom : &fc, &t->target, NULL, &t->pa, NULL))) return s;
    dtnh_rng_seed(&r, 8);
    for (k = 0; k < t->target.params.total; k++) t->target.params.w[k] *= 1 + 0.2f * dtnh_rng_normal(&r);
    for (k = 0; k < sizeof t->x / sizeof t->x[0]; k++) t->x[k] = dtnh_rng_normal(&r);
    for (i = 0; i < 3; i++) t->labels[i] = i;
    return dtnh_tensor_view(&t->input, t->x, 4, xshape, NULL);
}

/* Omega at the current weights (a forward, then the regularizer), gradient into g. */
static dtnh_status rg_net_omega(rg_net *t, float *g, double *value) {
    dtnh_tensor logits;
    dtnh_status s;
    dtnh_arena_reset(&t->sa, 0);
    if ((s = dtnh_resnet_forward(&t->target, &t->input, &t->sa, &logits, NULL))) return s;
    return dtnh_fmap_reg_compute(&t->reg, &t->input, &t->sa, NULL, g, 0, value, NULL);
}

static rg_net rg_tiny;

static void rg_net_gradient_check(dtnh_fmap_kind kind) {
    rg_net *t = &rg_tiny;
    dtnh_params *p;
    static float dir[1 << 17], w0[1 << 17], wp[1 << 17], scratch[1 << 17];
    double v, vp, vm, h = 1e-5, analytic, numeric;
    dtnh_rng r;
    size_t k, n;
    CHECK_OK(rg_net_make(t, 4, kind, NULL));
    if (kind == DTNH_FMAP_DELTA) { /* any attention that is not uniform */
        for (k = 0; k < 60; k++) t->reg.attention[k] = 0.01f + 0.02f * (float)(k % 7);
        t->reg.attention_ready = 1;
    }
    p = &t->target.params;
    n = p->total;
    CHECK(n <= sizeof dir / sizeof dir[0]);
    CHECK_OK(rg_net_omega(t, p->g_omega, &v));
    CHECK(v > 0);
    dtnh_rng_seed(&r, 10);
    for (k = 0; k < n; k++) dir[k] = dtnh_rng_normal(&r) * (1e-2f + fabsf(p->w[k]));
    dtnh_copy(n, p->w, w0);
    /* the steps actually taken in float, so rounding of w +- h*dir adds no error */
    for (k = 0; k < n; k++) wp[k] = w0[k] + (float)h * dir[k];
    for (k = 0; k < n; k++) dir[k] = wp[k] - (w0[k] - (float)h * dir[k]);
    analytic = dtnh_dot(n, p->g_omega, dir);
    dtnh_copy(n, wp, p->w);
    CHECK_OK(rg_net_omega(t, scratch, &vp));
    for (k = 0; k < n; k++) p->w[k] = wp[k] - dir[k];
    CHECK_OK(rg_net_omega(t, scratch, &vm));
    dtnh_copy(n, w0, p->w);
    numeric = vp - vm;
    CHECK_MSG(fabs(numeric - analytic) <= 2e-2 * fabs(analytic), "kind %d: directional derivative %g, finite differences %g",
              (int)kind, analytic, numeric);
    /* the head is above every hook: no gradient there */
    for (k = p->views[p->count - 2].offset; k < n; k++) CHECK(p->g_omega[k] == 0);
}

static void fmap_distance_gradient_matches_finite_differences(void) { rg_net_gradient_check(DTNH_FMAP_DISTANCE); }
static void fmap_delta_gradient_matches_finite_differences(void) { rg_net_gradient_check(DTNH_FMAP_DELTA); }
static void fmap_attention_gradient_matches_finite_differences(void) { rg_net_gradient_check(DTNH_FMAP_ATTENTION); }

/* g_J from the loss, then g_Omega: g_J and the forward stay as they were, the source copy
   neither updates its statistics nor writes the target's w_s. */
static void fmap_reg_leaves_g_j_and_the_source_alone(void) {
    rg_net *t = &rg_tiny;
    dtnh_params *p;
    static float gj[1 << 17], ws[1 << 17], stats[1 << 12];
    dtnh_tensor logits;
    float dlogits[15];
    double loss, v;
    size_t k;
    CHECK_OK(rg_net_make(t, 4, DTNH_FMAP_DISTANCE, NULL));
    p = &t->target.params;
    CHECK(t->reg.source.buffers.total <= sizeof stats / sizeof stats[0]);
    dtnh_copy(p->total, p->w_src, ws);
    dtnh_copy(t->reg.source.buffers.total, t->reg.source.buffers.values, stats);
    CHECK_OK(dtnh_resnet_forward(&t->target, &t->input, &t->sa, &logits, NULL));
    CHECK_OK(dtnh_softmax_cross_entropy(3, 5, logits.data, t->labels, dlogits, &loss, NULL));
    CHECK_OK(dtnh_resnet_backward(&t->target, dlogits, NULL, p->g_j, 0, NULL));
    dtnh_copy(p->total, p->g_j, gj);
    CHECK_OK(dtnh_fmap_reg_compute(&t->reg, &t->input, &t->sa, NULL, p->g_omega, 0, &v, NULL));
    CHECK(memcmp(gj, p->g_j, p->total * sizeof(float)) == 0);
    CHECK_OK(dtnh_resnet_backward(&t->target, dlogits, NULL, p->g_j, 0, NULL)); /* forward intact */
    CHECK(memcmp(gj, p->g_j, p->total * sizeof(float)) == 0);
    CHECK(memcmp(ws, p->w_src, p->total * sizeof(float)) == 0);
    CHECK(memcmp(stats, t->reg.source.buffers.values, t->reg.source.buffers.total * sizeof(float)) == 0);
    CHECK(t->reg.source.params.w == NULL && t->reg.source.params.g_j == NULL);
    for (k = 0; k < p->total; k++) CHECK(p->g_omega[k] == p->g_omega[k]);
}

/* The g_Omega backward starts at the deepest hook: nothing above layer2 gets a gradient. */
static void fmap_reg_gradient_stops_at_the_deepest_hook(void) {
    rg_net *t = &rg_tiny;
    dtnh_params *p;
    dtnh_fmap_config fc;
    double v, below = 0;
    int i;
    memset(&fc, 0, sizeof fc);
    fc.hook_count = 1;
    fc.hooks[0] = "layer2";
    CHECK_OK(rg_net_make(t, 4, DTNH_FMAP_DISTANCE, &fc));
    p = &t->target.params;
    CHECK_OK(rg_net_omega(t, p->g_omega, &v));
    for (i = 0; i < p->count; i++) {
        const dtnh_param_view *w = &p->views[i];
        double sq = dtnh_sumsq(w->count, p->g_omega + w->offset);
        int above = strncmp(w->name, "layer3", 6) == 0 || strncmp(w->name, "layer4", 6) == 0 ||
                    strncmp(w->name, "fc.", 3) == 0;
        if (above) CHECK_MSG(sq == 0, "%s has a gradient", w->name);
        else below += sq;
    }
    CHECK(below > 0);
}

/* Plain fine-tuning's single backward: dlogits and the hooks together give g_J + g_Omega. */
static void fmap_reg_with_dlogits_gives_the_sum_in_one_pass(void) {
    rg_net *t = &rg_tiny;
    dtnh_params *p;
    static float both[1 << 17];
    dtnh_tensor logits;
    float dlogits[15];
    double loss, v1, v2, scale = 0;
    size_t k;
    CHECK_OK(rg_net_make(t, 4, DTNH_FMAP_DISTANCE, NULL));
    p = &t->target.params;
    CHECK_OK(dtnh_resnet_forward(&t->target, &t->input, &t->sa, &logits, NULL));
    CHECK_OK(dtnh_softmax_cross_entropy(3, 5, logits.data, t->labels, dlogits, &loss, NULL));
    CHECK_OK(dtnh_resnet_backward(&t->target, dlogits, NULL, p->g_j, 0, NULL));
    CHECK_OK(dtnh_fmap_reg_compute(&t->reg, &t->input, &t->sa, NULL, p->g_omega, 0, &v1, NULL));
    CHECK_OK(dtnh_fmap_reg_compute(&t->reg, &t->input, &t->sa, dlogits, both, 0, &v2, NULL));
    CHECK(v1 == v2);
    for (k = 0; k < p->total; k++) scale = fmax(scale, fabs(p->g_j[k] + p->g_omega[k]));
    for (k = 0; k < p->total; k++)
        CHECK_MSG(fabs(both[k] - (p->g_j[k] + p->g_omega[k])) <= 1e-5 * scale, "element %zu: %g vs %g + %g", k,
                  both[k], p->g_j[k], p->g_omega[k]);
}

/* With attention 1/C in every channel, DELTA is the plain feature-map distance. */
static void delta_with_uniform_attention_is_the_plain_distance(void) {
    rg_net *t = &rg_tiny;
    static float plain_grad[1 << 17];
    double plain, delta;
    size_t k, off = 0;
    int i;
    CHECK_OK(rg_net_make(t, 4, DTNH_FMAP_DISTANCE, NULL));
    CHECK(t->target.params.total <= sizeof plain_grad / sizeof plain_grad[0]);
    CHECK_OK(rg_net_omega(t, plain_grad, &plain));
    CHECK_OK(rg_net_make(t, 4, DTNH_FMAP_DELTA, NULL));
    for (i = 0; i < t->reg.cfg.hook_count; i++)
        for (k = 0; k < (size_t)t->reg.channels[i]; k++) t->reg.attention[off++] = 1.0f / (float)t->reg.channels[i];
    t->reg.attention_ready = 1;
    CHECK_OK(rg_net_omega(t, t->target.params.g_omega, &delta));
    CHECK_NEAR(delta, plain, 1e-9);
    CHECK(memcmp(plain_grad, t->target.params.g_omega, t->target.params.total * sizeof(float)) == 0);
}

static void delta_attention_is_computed_saved_and_loaded(void) {
    rg_net *t = &rg_tiny;
    static float saved[60];
    const int *labels[2];
    dtnh_tensor xs[2];
    dtnh_fmap_config fc;
    dtnh_error err;
    const char *path = "build/test_delta_attention.safetensors";
    size_t off = 0, k;
    int i;
    CHECK_OK(rg_net_make(t, 4, DTNH_FMAP_DELTA, NULL));
    CHECK(t->reg.cfg.hook_count == 4 && t->reg.channels[3] == 32);
    CHECK_STATUS(rg_net_omega(t, t->target.params.g_omega, NULL), DTNH_ERR_ARG); /* no attention yet */
    xs[0] = xs[1] = t->input;
    labels[0] = labels[1] = t->labels;
    CHECK_OK(dtnh_fmap_reg_attention(&t->reg, &t->target, 2, xs, labels, &t->sa, NULL));
    for (i = 0; i < 4; i++) {
        double sum = 0;
        for (k = 0; k < (size_t)t->reg.channels[i]; k++) sum += t->reg.attention[off + k];
        CHECK_NEAR(sum, 1, 1e-5);
        off += (size_t)t->reg.channels[i];
    }
    dtnh_copy(60, t->reg.attention, saved);
    CHECK_OK(dtnh_fmap_reg_save_attention(&t->reg, path, &err));
    dtnh_fill(60, t->reg.attention, 0.0f);
    t->reg.attention_ready = 0;
    CHECK_OK(dtnh_fmap_reg_load_attention(&t->reg, path, &t->sa, &err));
    CHECK(t->reg.attention_ready && memcmp(saved, t->reg.attention, sizeof saved) == 0);
    /* a regularizer on other hooks refuses the file and keeps what it had */
    memset(&fc, 0, sizeof fc);
    fc.kind = DTNH_FMAP_DELTA;
    fc.hook_count = 1;
    fc.hooks[0] = "layer2.0";
    CHECK_OK(rg_net_make(t, 4, DTNH_FMAP_DELTA, &fc));
    t->reg.attention[0] = 0.5f;
    CHECK_STATUS(dtnh_fmap_reg_load_attention(&t->reg, path, &t->sa, &err), DTNH_ERR_FORMAT);
    CHECK(strstr(err.msg, "delta.layer2.0"));
    CHECK(!t->reg.attention_ready && t->reg.attention[0] == 0.5f);
    remove(path);
}

static void fmap_reg_rejects_bad_setups(void) {
    rg_net *t = &rg_tiny;
    static dtnh_resnet wider;
    dtnh_fmap_config fc;
    dtnh_resnet_config c;
    dtnh_error err;
    CHECK_OK(rg_net_make(t, 4, DTNH_FMAP_DISTANCE, NULL));
    memset(&fc, 0, sizeof fc);
    fc.hook_count = 1;
    fc.hooks[0] = "layer9";
    CHECK_STATUS(dtnh_fmap_reg_init(&t->reg, &fc, &t->target, NULL, &t->pa, &err), DTNH_ERR_ARG);
    CHECK(strstr(err.msg, "layer9"));
    fc.hooks[0] = "layer3.1.conv2"; /* a real layer, but the target was not built to expose it */
    CHECK_STATUS(dtnh_fmap_reg_init(&t->reg, &fc, &t->target, NULL, &t->pa, &err), DTNH_ERR_ARG);
    fc.hooks[0] = "layer1";
    fc.alpha = -1;
    CHECK_STATUS(dtnh_fmap_reg_init(&t->reg, &fc, &t->target, NULL, &t->pa, &err), DTNH_ERR_ARG);
    CHECK(strstr(err.msg, "alpha"));
    fc.alpha = 0;
    c = t->target.cfg;
    c.width = 8;
    c.hook_count = 0;
    c.roles = DTNH_ROLE_W;
    CHECK_OK(dtnh_resnet_init(&wider, &c, &t->pa, NULL));
    CHECK_STATUS(dtnh_fmap_reg_init(&t->reg, &fc, &t->target, &wider, &t->pa, &err), DTNH_ERR_SHAPE);
    t->target.params.w_src = NULL;
    CHECK_STATUS(dtnh_fmap_reg_init(&t->reg, &fc, &t->target, NULL, &t->pa, &err), DTNH_ERR_ARG);
    CHECK(strstr(err.msg, "w_src"));
}

void suite_reg(void) {
    RUN(l2sp_gradient_matches_finite_differences);
    RUN(l2sp_value_follows_its_definition);
    RUN(regularizers_write_g_omega_and_leave_g_j);
    RUN(regularizers_reject_bad_input);
    RUN(feature_distances_match_finite_differences);
    RUN(feature_distance_value_follows_its_definition);
    RUN(attention_distance_ignores_feature_scale);
    RUN(feature_distances_reject_bad_input);
    RUN(delta_weights_are_a_tempered_softmax_of_z_scores);
    RUN(fmap_distance_gradient_matches_finite_differences);
    RUN(fmap_delta_gradient_matches_finite_differences);
    RUN(fmap_attention_gradient_matches_finite_differences);
    RUN(fmap_reg_leaves_g_j_and_the_source_alone);
    RUN(fmap_reg_with_dlogits_gives_the_sum_in_one_pass);
    RUN(fmap_reg_gradient_stops_at_the_deepest_hook);
    RUN(delta_with_uniform_attention_is_the_plain_distance);
    RUN(delta_attention_is_computed_saved_and_loaded);
    RUN(fmap_reg_rejects_bad_setups);
}
