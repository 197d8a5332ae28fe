/* Optimizers and schedules: trajectories against torch.optim (fixtures from
   tools/gen_optim_fixtures.py), state sizing, frozen views, bad configurations. */
#include <stdlib.h>
#include <string.h>
#include "test.h"

/* A fixture case: two views (backbone 7, head 3), five steps; see the generator. */
#define OPT_N 10
#define OPT_STEPS 5

typedef struct opt_case {
    float w0[OPT_N], ws[OPT_N], g[OPT_STEPS][OPT_N], w[OPT_STEPS][OPT_N];
    int projected[OPT_STEPS];
    int lines;
} opt_case;

/* Reads "label numbers..." lines; returns the number of labelled lines read, 0 if no file. */
static int opt_read(const char *name, opt_case *c) {
    FILE *f = fopen(t_fixture(name), "r");
    char line[4096];
    memset(c, 0, sizeof *c);
    if (!f) return 0;
    while (fgets(line, sizeof line, f)) {
        char label[32], *s = line;
        float v[OPT_N];
        int used = 0, k, t = 0;
        if (line[0] == '#' || sscanf(s, "%31s%n", label, &used) != 1) continue;
        s += used;
        for (k = 0; k < OPT_N; k++) v[k] = strtof(s, &s);
        c->lines++;
        if (strcmp(label, "w0") == 0) memcpy(c->w0, v, sizeof v);
        else if (strcmp(label, "ws") == 0) memcpy(c->ws, v, sizeof v);
        else if (sscanf(label, "projected%d", &t) == 1 && t >= 1 && t <= OPT_STEPS) c->projected[t - 1] = (int)v[0];
        else if (sscanf(label, "g%d", &t) == 1 && t >= 1 && t <= OPT_STEPS) memcpy(c->g[t - 1], v, sizeof v);
        else if (sscanf(label, "w%d", &t) == 1 && t >= 1 && t <= OPT_STEPS) memcpy(c->w[t - 1], v, sizeof v);
    }
    fclose(f);
    return c->lines;
}

static DTNH_ALIGNED(64) unsigned char opt_mem[1 << 16];

static dtnh_status opt_store(dtnh_params *p, dtnh_arena *a) {
    static const int sizes[2] = {7, 3};
    dtnh_status s;
    dtnh_arena_init(a, opt_mem, sizeof opt_mem);
    if ((s = dtnh_params_init(p, a, 2, NULL))) return s;
    if ((s = dtnh_params_add(p, "layer4.1.conv2.weight", 1, &sizes[0], DTNH_GROUP_BACKBONE | DTNH_GROUP_KERNEL,
                             NULL, NULL)))
        return s;
    if ((s = dtnh_params_add(p, "fc.weight", 1, &sizes[1], DTNH_GROUP_HEAD | DTNH_GROUP_KERNEL, NULL, NULL))) return s;
    return dtnh_params_alloc(p, a, DTNH_ROLE_W | DTNH_ROLE_W_SRC | DTNH_ROLE_G_J | DTNH_ROLE_G_OMEGA, NULL);
}

/* Replays a fixture: the head learns 10x faster, as the torch param groups do. */
static void opt_replay(const char *name, dtnh_optim_config oc, int dtnh_l2sp) {
    opt_case c;
    dtnh_params p;
    dtnh_arena a;
    dtnh_optim o;
    dtnh_l2sp_config rc;
    int t, k;
    CHECK_MSG(opt_read(name, &c) > 0, "missing fixture %s (run tools/gen_optim_fixtures.py)", t_fixture(name));
    CHECK_OK(opt_store(&p, &a));
    oc.lr_rules[0].groups = DTNH_GROUP_HEAD;
    oc.lr_rules[0].mult = 10;
    memset(&rc, 0, sizeof rc);
    rc.alpha = 0.5;
    rc.beta = 0.3;
    CHECK_OK(dtnh_optim_init(&o, &oc, &p, &a, NULL));
    dtnh_copy(OPT_N, c.w0, p.w);
    dtnh_copy(OPT_N, c.ws, p.w_src);
    for (t = 0; t < OPT_STEPS; t++) {
        dtnh_direction_stats st;
        dtnh_copy(OPT_N, c.g[t], p.g_j);
        if (dtnh_l2sp) {
            CHECK_OK(dtnh_step_l2sp(&o, NULL, &rc, &p, p.g_j, &st, NULL));
            CHECK_MSG(st.projected == c.projected[t], "step %d: projected %g, torch %d", t + 1, st.projected,
                      c.projected[t]);
        } else {
            CHECK_OK(dtnh_optim_step(&o, &p, p.g_j, NULL));
        }
        for (k = 0; k < OPT_N; k++)
            CHECK_MSG(fabs(p.w[k] - c.w[t][k]) <= 1e-6 * (1 + fabs(c.w[t][k])), "%s step %d: w[%d] = %.9g, torch %.9g",
                      name, t + 1, k, p.w[k], c.w[t][k]);
    }
    CHECK(o.step == OPT_STEPS && o.slots[0].steps == OPT_STEPS);
}

static dtnh_optim_config opt_config(int kind, double lr) {
    dtnh_optim_config oc;
    memset(&oc, 0, sizeof oc);
    oc.kind = kind;
    oc.lr = lr;
    return oc;
}

static void sgd_matches_torch(void) { opt_replay("optim/sgd.txt", opt_config(DTNH_OPTIM_SGD, 0.1), 0); }

/* With MultiStepLR([3], 0.1) stepping after every update, as in the paper's recipe. */
static void sgd_momentum_with_step_decay_matches_torch(void) {
    dtnh_optim_config oc = opt_config(DTNH_OPTIM_SGD, 0.05);
    oc.momentum = 0.9;
    oc.schedule.kind = DTNH_SCHEDULE_STEP;
    oc.schedule.n_milestones = 1;
    oc.schedule.milestones[0] = 3;
    opt_replay("optim/momentum.txt", oc, 0);
}

static void nesterov_matches_torch(void) {
    dtnh_optim_config oc = opt_config(DTNH_OPTIM_SGD, 0.05);
    oc.momentum = 0.9;
    oc.nesterov = 1;
    opt_replay("optim/nesterov.txt", oc, 0);
}

static void adam_matches_torch(void) { opt_replay("optim/adam.txt", opt_config(DTNH_OPTIM_ADAM, 0.01), 0); }

static void adamw_matches_torch(void) {
    dtnh_optim_config oc = opt_config(DTNH_OPTIM_ADAMW, 0.01);
    oc.weight_decay = 0.05;
    opt_replay("optim/adamw.txt", oc, 0);
}

/* DTNH(L2-SP), alpha 0.5, beta 0.3, with SGD momentum: torch runs Algorithm 1 by hand. */
static void dtnh_l2sp_momentum_matches_torch(void) {
    dtnh_optim_config oc = opt_config(DTNH_OPTIM_SGD, 0.05);
    oc.momentum = 0.9;
    opt_replay("optim/dtnh_l2sp_momentum.txt", oc, 1);
}

static void schedules_match_torch(void) {
    FILE *f = fopen(t_fixture("optim/schedules.txt"), "r");
    char line[2048];
    dtnh_schedule step, cosine;
    int rows = 0;
    CHECK_MSG(f != NULL, "missing %s", t_fixture("optim/schedules.txt"));
    memset(&step, 0, sizeof step);
    step.kind = DTNH_SCHEDULE_STEP;
    step.n_milestones = 2;
    step.milestones[0] = 3;
    step.milestones[1] = 6;
    memset(&cosine, 0, sizeof cosine);
    cosine.kind = DTNH_SCHEDULE_COSINE;
    cosine.total = 8;
    cosine.lr_min = 0.001;
    CHECK_OK(dtnh_schedule_check(&step, NULL));
    CHECK_OK(dtnh_schedule_check(&cosine, NULL));
    while (fgets(line, sizeof line, f)) {
        char *s = line + 6;
        long it;
        const dtnh_schedule *sc = strncmp(line, "step ", 5) == 0 ? &step : strncmp(line, "cosine", 6) == 0 ? &cosine : NULL;
        if (!sc) continue;
        if (sc == &step) s = line + 5;
        for (it = 0; it < 12; it++) {
            double want = strtod(s, &s);
            if (sc == &cosine && it > 8) want = 0.001; /* held at lr_min; torch climbs back */
            CHECK_MSG(fabs(dtnh_schedule_lr(sc, 0.1, it) - want) <= 1e-12, "%s at %ld: %.17g, torch %.17g",
                      sc == &step ? "step" : "cosine", it, dtnh_schedule_lr(sc, 0.1, it), want);
        }
        rows++;
    }
    fclose(f);
    CHECK(rows == 2);
    CHECK(dtnh_schedule_lr(NULL, 0.1, 1000) == 0.1);
}

static void coefficient_decays_per_epoch(void) {
    CHECK(dtnh_coef_decayed(0.01, 0, 50) == 0.01);
    CHECK_NEAR(dtnh_coef_decayed(0.01, 0.9, 0), 0.01, 1e-15);
    CHECK_NEAR(dtnh_coef_decayed(0.01, 0.9, 3), 0.01 * 0.729, 1e-15);
}

static void lr_rules_and_schedule_set_each_views_lr(void) {
    dtnh_params p;
    dtnh_arena a;
    dtnh_optim o;
    dtnh_optim_config oc = opt_config(DTNH_OPTIM_SGD, 0.02);
    CHECK_OK(opt_store(&p, &a));
    oc.lr_rules[0].groups = DTNH_GROUP_HEAD;
    oc.lr_rules[0].mult = 10;
    oc.lr_rules[1].groups = DTNH_GROUP_KERNEL; /* the head matched first */
    oc.lr_rules[1].mult = 0.5;
    oc.schedule.kind = DTNH_SCHEDULE_STEP;
    oc.schedule.n_milestones = 1;
    oc.schedule.milestones[0] = 1;
    CHECK_OK(dtnh_optim_init(&o, &oc, &p, &a, NULL));
    CHECK_NEAR(dtnh_optim_view_lr(&o, &p, 0), 0.01, 1e-15);
    CHECK_NEAR(dtnh_optim_view_lr(&o, &p, 1), 0.2, 1e-15);
    CHECK_OK(dtnh_optim_step(&o, &p, p.g_j, NULL));
    CHECK_NEAR(dtnh_optim_view_lr(&o, &p, 1), 0.02, 1e-15);
    CHECK_NEAR(o.lr, 0.02, 1e-15); /* the last step's scheduled lr */
}

/* The size a counting arena reports is what the assigning arena then uses; only trainable
   views get state. */
static void optim_state_count_equals_use(void) {
    dtnh_params p;
    dtnh_arena a, counter;
    dtnh_optim o;
    dtnh_optim_config oc = opt_config(DTNH_OPTIM_ADAM, 0);
    size_t mark, counted;
    CHECK_OK(opt_store(&p, &a));
    dtnh_params_set_trainable(&p, DTNH_GROUP_HEAD);
    dtnh_arena_init(&counter, NULL, 0);
    CHECK_OK(dtnh_optim_init(&o, &oc, &p, &counter, NULL));
    counted = dtnh_arena_used(&counter);
    CHECK(o.m == NULL && o.state_count == 3);
    mark = dtnh_arena_used(&a);
    CHECK_OK(dtnh_optim_init(&o, &oc, &p, &a, NULL));
    CHECK(dtnh_arena_used(&a) - mark <= counted + DTNH_ARENA_ALIGN);
    CHECK(o.state_count == 3 && o.m && o.v && o.slots[0].state_offset == DTNH_NO_STATE);
    CHECK(o.cfg.lr == 0.001 && o.cfg.beta1 == 0.9 && o.cfg.beta2 == 0.999 && o.cfg.eps == 1e-8);
    oc = opt_config(DTNH_OPTIM_SGD, 0);
    dtnh_arena_init(&counter, NULL, 0);
    CHECK_OK(dtnh_optim_init(&o, &oc, &p, &counter, NULL));
    CHECK(dtnh_arena_used(&counter) < 2 * DTNH_ARENA_ALIGN); /* plain SGD keeps no vectors */
}

static void optim_init_runs_out_of_arena_cleanly(void) {
    static DTNH_ALIGNED(64) unsigned char small[100];
    dtnh_params p;
    dtnh_arena a, tiny;
    dtnh_optim o;
    dtnh_optim_config oc = opt_config(DTNH_OPTIM_ADAM, 0);
    dtnh_error err;
    CHECK_OK(opt_store(&p, &a));
    dtnh_arena_init(&tiny, small, sizeof small);
    CHECK_STATUS(dtnh_optim_init(&o, &oc, &p, &tiny, &err), DTNH_ERR_NOMEM);
}

static void frozen_views_are_not_updated(void) {
    dtnh_params p;
    dtnh_arena a;
    dtnh_optim o;
    dtnh_optim_config oc = opt_config(DTNH_OPTIM_ADAMW, 0.1);
    int k;
    CHECK_OK(opt_store(&p, &a));
    for (k = 0; k < OPT_N; k++) {
        p.w[k] = 1;
        p.g_j[k] = 0.5f;
    }
    dtnh_params_set_trainable(&p, DTNH_GROUP_HEAD);
    CHECK_OK(dtnh_optim_init(&o, &oc, &p, &a, NULL));
    CHECK_OK(dtnh_optim_step(&o, &p, p.g_j, NULL));
    for (k = 0; k < 7; k++) CHECK(p.w[k] == 1);
    for (k = 7; k < OPT_N; k++) CHECK(p.w[k] < 1);
}

static void view_trainable_after_init_is_refused(void) {
    dtnh_params p;
    dtnh_arena a;
    dtnh_optim o;
    dtnh_error err;
    CHECK_OK(opt_store(&p, &a));
    dtnh_params_set_trainable(&p, DTNH_GROUP_HEAD);
    CHECK_OK(dtnh_optim_init(&o, NULL, &p, &a, NULL));
    dtnh_params_set_trainable(&p, DTNH_GROUP_ALL);
    CHECK_STATUS(dtnh_optim_step(&o, &p, p.g_j, &err), DTNH_ERR_ARG);
    CHECK(strstr(err.msg, "layer4.1.conv2.weight") && strstr(err.msg, "init again"));
    CHECK(o.step == 0);
}

static void optim_rejects_bad_configs(void) {
    dtnh_params p;
    dtnh_arena a;
    dtnh_optim o;
    dtnh_optim_config oc;
    dtnh_error err;
    CHECK_OK(opt_store(&p, &a));
    oc = opt_config(7, 0.1);
    CHECK_STATUS(dtnh_optim_init(&o, &oc, &p, &a, &err), DTNH_ERR_ARG);
    oc = opt_config(DTNH_OPTIM_SGD, -0.1);
    CHECK_STATUS(dtnh_optim_init(&o, &oc, &p, &a, &err), DTNH_ERR_ARG);
    CHECK(strstr(err.msg, "lr"));
    oc = opt_config(DTNH_OPTIM_SGD, 0.1);
    oc.nesterov = 1;
    CHECK_STATUS(dtnh_optim_init(&o, &oc, &p, &a, &err), DTNH_ERR_ARG);
    CHECK(strstr(err.msg, "Nesterov"));
    oc = opt_config(DTNH_OPTIM_ADAM, 0.1);
    oc.beta2 = 1.0;
    CHECK_STATUS(dtnh_optim_init(&o, &oc, &p, &a, &err), DTNH_ERR_ARG);
    CHECK(strstr(err.msg, "beta2"));
    oc = opt_config(DTNH_OPTIM_SGD, 0.1);
    oc.lr_rules[2].groups = DTNH_GROUP_HEAD;
    CHECK_STATUS(dtnh_optim_init(&o, &oc, &p, &a, &err), DTNH_ERR_ARG);
    oc = opt_config(DTNH_OPTIM_SGD, 0.1);
    oc.schedule.kind = DTNH_SCHEDULE_STEP;
    oc.schedule.n_milestones = 2;
    oc.schedule.milestones[0] = 5;
    oc.schedule.milestones[1] = 5;
    CHECK_STATUS(dtnh_optim_init(&o, &oc, &p, &a, &err), DTNH_ERR_ARG);
    CHECK(strstr(err.msg, "milestone"));
    oc.schedule.kind = DTNH_SCHEDULE_COSINE;
    CHECK_STATUS(dtnh_optim_init(&o, &oc, &p, &a, &err), DTNH_ERR_ARG);
    CHECK_STATUS(dtnh_optim_init(NULL, &oc, &p, &a, &err), DTNH_ERR_ARG);
    CHECK_STATUS(dtnh_optim_step(&o, &p, NULL, &err), DTNH_ERR_ARG);
}

void suite_optim(void) {
    RUN(sgd_matches_torch);
    RUN(sgd_momentum_with_step_decay_matches_torch);
    RUN(nesterov_matches_torch);
    RUN(adam_matches_torch);
    RUN(adamw_matches_torch);
    RUN(dtnh_l2sp_momentum_matches_torch);
    RUN(schedules_match_torch);
    RUN(coefficient_decays_per_epoch);
    RUN(lr_rules_and_schedule_set_each_views_lr);
    RUN(optim_state_count_equals_use);
    RUN(optim_init_runs_out_of_arena_cleanly);
    RUN(frozen_views_are_not_updated);
    RUN(view_trainable_after_init_is_refused);
    RUN(optim_rejects_bad_configs);
}
