/* ---- the DTNH direction, schedules, optimizers and fused steps ----------------------------- */

/* Every pass walks a view in tiles of DTNH__TILE floats; reductions add one partial per tile
   in tile order, so the bits do not depend on the thread count. */
#define DTNH__TILE 1024
#define DTNH__TILE_CHUNK 64

/* <g_J,g_J>, <g_J,g_Omega>, <g_Omega,g_Omega> over some range. */
typedef struct dtnh__triple {
    double jj, jo, oo;
} dtnh__triple;

/* g_Omega over one view: a stored vector, or the L2 family's closed form coef*(w - anchor)
   (anchor NULL: toward 0), which the fused L2-SP step never stores. */
typedef struct dtnh__gview {
    const float *stored;
    const float *w, *anchor;
    float coef;
} dtnh__gview;

static const float *dtnh__gview_tile(const dtnh__gview *g, size_t off, size_t n, float *buf) {
    size_t i;
    if (g->stored) return g->stored + off;
    if (g->anchor) {
        const float *w = g->w + off, *a = g->anchor + off;
        for (i = 0; i < n; i++) buf[i] = g->coef * (w[i] - a[i]);
    } else {
        const float *w = g->w + off;
        for (i = 0; i < n; i++) buf[i] = g->coef * w[i];
    }
    return buf;
}

/* Four lanes added in a fixed order at the end: cheaper than one long dependency chain. */
static dtnh__triple dtnh__block_triple(const float *gj, const float *go, size_t n) {
    double jj[4] = {0, 0, 0, 0}, jo[4] = {0, 0, 0, 0}, oo[4] = {0, 0, 0, 0};
    dtnh__triple t;
    size_t i, k;
    for (i = 0; i + 4 <= n; i += 4)
        for (k = 0; k < 4; k++) {
            double a = gj[i + k], b = go[i + k];
            jj[k] += a * a;
            jo[k] += a * b;
            oo[k] += b * b;
        }
    for (; i < n; i++) {
        double a = gj[i], b = go[i];
        jj[0] += a * a;
        jo[0] += a * b;
        oo[0] += b * b;
    }
    t.jj = (jj[0] + jj[1]) + (jj[2] + jj[3]);
    t.jo = (jo[0] + jo[1]) + (jo[2] + jo[3]);
    t.oo = (oo[0] + oo[1]) + (oo[2] + oo[3]);
    return t;
}

static void dtnh__triple_add(dtnh__triple *a, dtnh__triple b) {
    a->jj += b.jj;
    a->jo += b.jo;
    a->oo += b.oo;
}

/* The triple of one view (gj points at the view's first element). */
static dtnh__triple dtnh__view_triple(const float *gj, const dtnh__gview *g, size_t n) {
    dtnh__triple partial[DTNH__TILE_CHUNK], total = {0, 0, 0};
    size_t ntiles = (n + DTNH__TILE - 1) / DTNH__TILE, chunk, b;
    for (chunk = 0; chunk < ntiles; chunk += DTNH__TILE_CHUNK) {
        long cnt = (long)(ntiles - chunk < DTNH__TILE_CHUNK ? ntiles - chunk : DTNH__TILE_CHUNK), k;
        DTNH__OMP(parallel for schedule(static) if (cnt > 8))
        for (k = 0; k < cnt; k++) {
            float buf[DTNH__TILE];
            size_t off = (chunk + (size_t)k) * DTNH__TILE;
            size_t len = n - off < DTNH__TILE ? n - off : DTNH__TILE;
            partial[k] = dtnh__block_triple(gj + off, dtnh__gview_tile(g, off, len, buf), len);
        }
        for (b = 0; b < (size_t)cnt; b++) dtnh__triple_add(&total, partial[b]);
    }
    return total;
}

static int dtnh__triple_finite(dtnh__triple t) {
    double s = t.jj + t.jo + t.oo;
    return s - s == 0.0;
}

/* Algorithm 1, line by line: g_Omega - c*g_J, then + g_J. c is 0 when nothing is projected,
   which leaves exactly g_J + g_Omega. */
static void dtnh__direction_tile(const float *gj, const float *go, float c, float *d, size_t n) {
    size_t i;
    if (c == 0.0f)
        for (i = 0; i < n; i++) d[i] = gj[i] + go[i];
    else
        for (i = 0; i < n; i++) d[i] = gj[i] + (go[i] - c * gj[i]);
}

/* ---- schedules ------------------------------------------------------------------------------ */

DTNHDEF dtnh_status dtnh_schedule_check(const dtnh_schedule *s, dtnh_error *err) {
    int i;
    if (!s) return DTNH_OK;
    if (s->kind < DTNH_SCHEDULE_CONSTANT || s->kind > DTNH_SCHEDULE_COSINE)
        return dtnh_fail(err, DTNH_ERR_ARG, "schedule: unknown kind %d", s->kind);
    if (s->kind == DTNH_SCHEDULE_STEP) {
        if (s->n_milestones < 0 || s->n_milestones > DTNH_MAX_MILESTONES)
            return dtnh_fail(err, DTNH_ERR_ARG, "schedule: %d milestones, expected 0..%d",
                             s->n_milestones, DTNH_MAX_MILESTONES);
        for (i = 1; i < s->n_milestones; i++)
            if (s->milestones[i] <= s->milestones[i - 1])
                return dtnh_fail(err, DTNH_ERR_ARG, "schedule: milestone %d (%ld) not above the one before (%ld)",
                                 i, s->milestones[i], s->milestones[i - 1]);
        if (s->gamma < 0 || !(s->gamma == s->gamma))
            return dtnh_fail(err, DTNH_ERR_ARG, "schedule: gamma %g, expected > 0", s->gamma);
    }
    if (s->kind == DTNH_SCHEDULE_COSINE) {
        if (s->total <= 0)
            return dtnh_fail(err, DTNH_ERR_ARG, "schedule: cosine over %ld iterations, expected > 0", s->total);
        if (!(s->lr_min >= 0))
            return dtnh_fail(err, DTNH_ERR_ARG, "schedule: lr_min %g, expected >= 0", s->lr_min);
    }
    return DTNH_OK;
}

DTNHDEF double dtnh_schedule_lr(const dtnh_schedule *s, double base_lr, long iteration) {
    if (!s || s->kind == DTNH_SCHEDULE_CONSTANT) return base_lr;
    if (s->kind == DTNH_SCHEDULE_STEP) {
        double gamma = s->gamma > 0 ? s->gamma : 0.1;
        int passed = 0, i;
        for (i = 0; i < s->n_milestones && i < DTNH_MAX_MILESTONES; i++)
            if (s->milestones[i] <= iteration) passed++;
        return base_lr * pow(gamma, passed);
    }
    if (s->total <= 0) return base_lr;
    {
        long t = iteration < s->total ? iteration : s->total;
        return s->lr_min +
               (base_lr - s->lr_min) * (1 + cos(3.141592653589793 * (double)t / (double)s->total)) / 2;
    }
}

DTNHDEF double dtnh_coef_decayed(double coef, double decay, long epoch) {
    return decay == 0 ? coef : coef * pow(decay, (double)epoch);
}

/* ---- optimizer configuration and state -------------------------------------------------------- */

static dtnh_status dtnh__check_unit(double x, const char *name, dtnh_error *err) {
    if (!(x >= 0 && x < 1))
        return dtnh_fail(err, DTNH_ERR_ARG, "optim: %s = %g, expected in [0, 1)", name, x);
    return DTNH_OK;
}

/* Copies cfg (NULL: all defaults) into out with the defaults filled in, and checks it. */
static dtnh_status dtnh__optim_resolve(const dtnh_optim_config *cfg, dtnh_optim_config *out,
                                       dtnh_error *err) {
    dtnh_optim_config c;
    dtnh_status s;
    int i, adam;
    if (cfg) c = *cfg;
    else memset(&c, 0, sizeof c);
    if (c.kind < DTNH_OPTIM_SGD || c.kind > DTNH_OPTIM_ADAMW)
        return dtnh_fail(err, DTNH_ERR_ARG, "optim: unknown kind %d", c.kind);
    adam = c.kind != DTNH_OPTIM_SGD;
    if (!(c.lr >= 0) || c.lr > 1e30) return dtnh_fail(err, DTNH_ERR_ARG, "optim: lr %g, expected > 0", c.lr);
    if (c.lr == 0) c.lr = adam ? 0.001 : 0.01;
    if (!(c.momentum >= 0)) return dtnh_fail(err, DTNH_ERR_ARG, "optim: momentum %g, expected >= 0", c.momentum);
    if (c.nesterov && (adam || c.momentum == 0))
        return dtnh_fail(err, DTNH_ERR_ARG, "optim: Nesterov needs SGD with momentum > 0");
    if ((s = dtnh__check_unit(c.beta1, "beta1", err)) || (s = dtnh__check_unit(c.beta2, "beta2", err)))
        return s;
    if (c.beta1 == 0) c.beta1 = 0.9;
    if (c.beta2 == 0) c.beta2 = 0.999;
    if (!(c.eps >= 0)) return dtnh_fail(err, DTNH_ERR_ARG, "optim: eps %g, expected >= 0", c.eps);
    if (c.eps == 0) c.eps = 1e-8;
    if (!(c.weight_decay >= 0))
        return dtnh_fail(err, DTNH_ERR_ARG, "optim: weight_decay %g, expected >= 0", c.weight_decay);
    if (c.weight_decay == 0) c.weight_decay = 0.01;
    for (i = 0; i < DTNH_MAX_LR_RULES; i++)
        if (c.lr_rules[i].groups && !(c.lr_rules[i].mult > 0))
            return dtnh_fail(err, DTNH_ERR_ARG, "optim: lr rule %d has multiplier %g, expected > 0", i,
                             c.lr_rules[i].mult);
    if ((s = dtnh_schedule_check(&c.schedule, err))) return s;
    *out = c;
    return DTNH_OK;
}

DTNHDEF dtnh_status dtnh_optim_init(dtnh_optim *o, const dtnh_optim_config *cfg,
                                    const dtnh_params *p, dtnh_arena *a, dtnh_error *err) {
    dtnh_optim_config c;
    dtnh_status s;
    size_t n = 0, bytes = 0, next = 0;
    void *mem = NULL;
    int i, vectors;
    if (!o || !p || !a) return dtnh_fail(err, DTNH_ERR_ARG, "optim_init: NULL optimizer, store or arena");
    if ((s = dtnh__optim_resolve(cfg, &c, err))) return s;
    if (!p->views) n = p->total; /* a counting store: every view may train */
    for (i = 0; p->views && i < p->count; i++)
        if (p->views[i].trainable) n += p->views[i].count;
    vectors = c.kind != DTNH_OPTIM_SGD ? 2 : c.momentum > 0 ? 1 : 0;
    memset(o, 0, sizeof *o);
    if ((s = dtnh_size_mul((size_t)p->count, sizeof(dtnh_optim_slot), &bytes, err))) return s;
    if ((s = dtnh_arena_alloc(a, bytes, 0, &mem, err))) return s;
    if (vectors >= 1 && (s = dtnh_arena_alloc_floats(a, n, &o->m, err))) return s;
    if (vectors >= 2 && (s = dtnh_arena_alloc_floats(a, n, &o->v, err))) return s;
    o->cfg = c;
    o->lr = c.lr;
    o->state_count = n;
    o->slots = (dtnh_optim_slot *)mem;
    o->view_count = p->count;
    if (o->m) dtnh_fill(n, o->m, 0.0f);
    if (o->v) dtnh_fill(n, o->v, 0.0f);
    if (o->slots && p->views)
        for (i = 0; i < p->count; i++) {
            o->slots[i].steps = 0;
            o->slots[i].state_offset = p->views[i].trainable ? next : DTNH_NO_STATE;
            if (p->views[i].trainable) next += p->views[i].count;
        }
    return DTNH_OK;
}

static double dtnh__lr_mult(const dtnh_optim_config *c, unsigned groups) {
    int i;
    for (i = 0; i < DTNH_MAX_LR_RULES; i++)
        if (c->lr_rules[i].groups & groups) return c->lr_rules[i].mult;
    return 1.0;
}

DTNHDEF double dtnh_optim_view_lr(const dtnh_optim *o, const dtnh_params *p, int index) {
    double lr = dtnh_schedule_lr(&o->cfg.schedule, o->cfg.lr, o->step);
    if (!p->views || index < 0 || index >= p->count) return lr;
    return lr * dtnh__lr_mult(&o->cfg, p->views[index].groups);
}

/* An optimizer may step the store when it was made for it and every trainable view has state. */
static dtnh_status dtnh__optim_check(const dtnh_optim *o, const dtnh_params *p, dtnh_error *err) {
    int i;
    if (!o->slots || !p->views || !p->w)
        return dtnh_fail(err, DTNH_ERR_ARG, "optim: a counting optimizer or store, or no weights vector");
    if (o->view_count != p->count)
        return dtnh_fail(err, DTNH_ERR_ARG, "optim: made for %d views, the store has %d", o->view_count, p->count);
    for (i = 0; i < p->count; i++)
        if (p->views[i].trainable && o->slots[i].state_offset == DTNH_NO_STATE)
            return dtnh_fail(err, DTNH_ERR_ARG,
                             "optim: view '%s' became trainable after dtnh_optim_init; init again",
                             p->views[i].name);
    return DTNH_OK;
}

/* ---- the update rules: torch.optim's arithmetic, operation by operation ----------------------- */

enum { DTNH__RULE_SGD, DTNH__RULE_MOMENTUM, DTNH__RULE_NESTEROV, DTNH__RULE_ADAM };

/* One view's update, its scalars computed once in double and rounded to float as torch does. */
typedef struct dtnh__update {
    int rule, first;
    float neg_lr, momentum;
    float decay, beta1, beta2, one_minus_beta1, one_minus_beta2, bc2_sqrt, eps, neg_step_size;
    float *m, *v; /* the view's state */
} dtnh__update;

static dtnh__update dtnh__update_for(dtnh_optim *o, const dtnh_param_view *view, dtnh_optim_slot *slot) {
    const dtnh_optim_config *c = &o->cfg;
    double lr = dtnh_schedule_lr(&c->schedule, c->lr, o->step) * dtnh__lr_mult(c, view->groups);
    dtnh__update u;
    memset(&u, 0, sizeof u);
    u.first = slot->steps == 0;
    u.neg_lr = (float)-lr;
    u.momentum = (float)c->momentum;
    u.m = o->m ? o->m + slot->state_offset : NULL;
    u.v = o->v ? o->v + slot->state_offset : NULL;
    if (c->kind == DTNH_OPTIM_SGD) {
        u.rule = c->momentum == 0 ? DTNH__RULE_SGD : c->nesterov ? DTNH__RULE_NESTEROV : DTNH__RULE_MOMENTUM;
    } else {
        double step = (double)(slot->steps + 1);
        double bc1 = 1 - pow(c->beta1, step), bc2 = 1 - pow(c->beta2, step);
        u.rule = DTNH__RULE_ADAM;
        u.decay = c->kind == DTNH_OPTIM_ADAMW ? (float)(1 - lr * c->weight_decay) : 1.0f;
        u.beta1 = (float)c->beta1;
        u.beta2 = (float)c->beta2;
        u.one_minus_beta1 = (float)(1 - c->beta1);
        u.one_minus_beta2 = (float)(1 - c->beta2);
        u.bc2_sqrt = (float)sqrt(bc2);
        u.eps = (float)c->eps;
        u.neg_step_size = (float)-(lr / bc1);
    }
    return u;
}

/* torch: buf = d on the first step, else buf*momentum + d; Nesterov steps along d + momentum*buf. */
static void dtnh__apply_momentum(const dtnh__update *u, float *w, const float *d, float *m, size_t n) {
    size_t i;
    if (u->first)
        for (i = 0; i < n; i++) m[i] = d[i];
    else
        for (i = 0; i < n; i++) m[i] = m[i] * u->momentum + d[i];
    if (u->rule == DTNH__RULE_NESTEROV)
        for (i = 0; i < n; i++) w[i] += u->neg_lr * (d[i] + u->momentum * m[i]);
    else
        for (i = 0; i < n; i++) w[i] += u->neg_lr * m[i];
}

/* torch: p *= 1 - lr*wd (AdamW); m = m*b1 + (1-b1)*g; v = v*b2 + (1-b2)*g*g;
   p += -step_size*m / (sqrt(v)/sqrt(bc2) + eps). */
static void dtnh__apply_adam(const dtnh__update *u, float *w, const float *d, float *m, float *v, size_t n) {
    size_t i;
    for (i = 0; i < n; i++) {
        float g = d[i];
        float mi = m[i] * u->beta1 + u->one_minus_beta1 * g;
        float vi = v[i] * u->beta2 + u->one_minus_beta2 * g * g;
        float denom = sqrtf(vi) / u->bc2_sqrt + u->eps;
        m[i] = mi;
        v[i] = vi;
        w[i] = w[i] * u->decay + u->neg_step_size * mi / denom;
    }
}

/* Updates n weights from n directions; off is the place in the view (for the state). */
static void dtnh__update_apply(const dtnh__update *u, float *w, const float *d, size_t off, size_t n) {
    size_t i;
    switch (u->rule) {
    case DTNH__RULE_SGD:
        for (i = 0; i < n; i++) w[i] += u->neg_lr * d[i];
        break;
    case DTNH__RULE_MOMENTUM:
    case DTNH__RULE_NESTEROV: dtnh__apply_momentum(u, w, d, u->m + off, n); break;
    default: dtnh__apply_adam(u, w, d, u->m + off, u->v + off, n); break;
    }
}

/* ---- the engine: pass 1 (dot products), pass 2 (direction, then d or the update) ---------- */

typedef struct dtnh__acc {
    double jj, jo, oo, dj, dom, dd; /* the triple, <d,g_J>, <d,g_Omega>, <d,d> */
} dtnh__acc;

/* d = (1-c) g_J + g_Omega, so its dot products follow from the triple in closed form. */
static void dtnh__acc_add(dtnh__acc *a, dtnh__triple t, double c) {
    double k = 1 - c;
    a->jj += t.jj;
    a->jo += t.jo;
    a->oo += t.oo;
    a->dj += k * t.jj + t.jo;
    a->dom += k * t.jo + t.oo;
    a->dd += k * k * t.jj + 2 * k * t.jo + t.oo;
}

static double dtnh__angle_deg(double dot, double xx, double yy) {
    double c;
    if (!(xx > 0 && yy > 0)) return 90.0;
    c = dot / sqrt(xx * yy);
    c = c > 1 ? 1 : c < -1 ? -1 : c;
    return acos(c) * (180.0 / 3.141592653589793);
}

typedef struct dtnh__job {
    dtnh_direction_config dc; /* resolved */
    dtnh_l2sp_config l2;      /* resolved; used when g_omega is NULL */
    const dtnh_params *p;
    const float *g_j, *g_omega;
    float *d;      /* write d here, or NULL: update the weights with o */
    dtnh_optim *o;
    dtnh_direction_stats *st;
} dtnh__job;

/* The L2 family's pull on a view: its coefficient (0: none) and whether toward w_s. */
static double dtnh__l2sp_coef(const dtnh_l2sp_config *rc, unsigned groups, int *toward_source) {
    *toward_source = 0;
    if (groups & DTNH_GROUP_HEAD) return rc->beta;
    if (!(groups & DTNH_GROUP_BACKBONE)) return 0;
    if (rc->kernels_only && !(groups & DTNH_GROUP_KERNEL)) return 0;
    *toward_source = !rc->toward_zero;
    return rc->alpha;
}

static dtnh_status dtnh__l2sp_resolve(const dtnh_l2sp_config *in, dtnh_l2sp_config *out, dtnh_error *err) {
    dtnh_l2sp_config c;
    if (in) c = *in;
    else memset(&c, 0, sizeof c);
    if (!(c.alpha >= 0) || c.alpha > 1e30 || !(c.beta >= 0) || c.beta > 1e30)
        return dtnh_fail(err, DTNH_ERR_ARG, "L2-SP: alpha %g and beta %g, expected finite and >= 0 (0: default 0.01)",
                         c.alpha, c.beta);
    if (c.alpha == 0) c.alpha = 0.01;
    if (c.beta == 0) c.beta = 0.01;
    *out = c;
    return DTNH_OK;
}

static dtnh__gview dtnh__job_gview(const dtnh__job *job, int i) {
    const dtnh_param_view *v = &job->p->views[i];
    dtnh__gview g;
    int toward_source;
    memset(&g, 0, sizeof g);
    if (job->g_omega) {
        g.stored = job->g_omega + v->offset;
        return g;
    }
    g.coef = (float)dtnh__l2sp_coef(&job->l2, v->groups, &toward_source);
    g.w = job->p->w + v->offset;
    g.anchor = toward_source ? job->p->w_src + v->offset : NULL;
    return g;
}

static int dtnh__job_takes_part(const dtnh__job *job, int i) {
    const dtnh_param_view *v = &job->p->views[i];
    return v->trainable && (job->dc.groups == 0 || (v->groups & job->dc.groups));
}

/* The projection coefficient c of Algorithm 1 (g_Omega -= c g_J), 0 when none applies. */
static double dtnh__job_coef(const dtnh__job *job, dtnh__triple t) {
    if (job->dc.mode != DTNH_MODE_DTNH || !(t.jo < 0) || !(t.jj >= job->dc.eps)) return 0;
    return t.jo / t.jj;
}

static dtnh_status dtnh__job_numeric_fail(const dtnh__job *job, int i, dtnh__triple t, dtnh_error *err) {
    const dtnh_param_view *v = &job->p->views[i];
    size_t bad = 0;
    if (!dtnh_all_finite(v->count, job->g_j + v->offset, &bad) || !(t.jj - t.jj == 0))
        return dtnh_fail(err, DTNH_ERR_NUMERIC, "DTNH step: g_J of view '%s' holds NaN or Inf at element %zu",
                         v->name, bad);
    if (job->g_omega)
        dtnh_all_finite(v->count, job->g_omega + v->offset, &bad);
    else if (dtnh_all_finite(v->count, job->p->w + v->offset, &bad) && job->p->w_src)
        dtnh_all_finite(v->count, job->p->w_src + v->offset, &bad);
    return dtnh_fail(err, DTNH_ERR_NUMERIC, "DTNH step: g_Omega of view '%s' holds NaN or Inf at element %zu%s",
                     v->name, bad, job->g_omega ? "" : " (from w or w_s)");
}

/* Pass 1: the triples of the views taking part (into part) and of the other trainable views
   (into rest), the L2 value, and the NaN check, before anything is written. */
static dtnh_status dtnh__job_pass1(const dtnh__job *job, dtnh__triple *part, dtnh__triple *rest,
                                   double *l2_value, dtnh_error *err) {
    const dtnh_params *p = job->p;
    int i;
    memset(part, 0, sizeof *part);
    memset(rest, 0, sizeof *rest);
    *l2_value = 0;
    for (i = 0; i < p->count; i++) {
        const dtnh_param_view *v = &p->views[i];
        dtnh__gview g;
        dtnh__triple t;
        if (!v->trainable) continue;
        g = dtnh__job_gview(job, i);
        t = dtnh__view_triple(job->g_j + v->offset, &g, v->count);
        if (!dtnh__triple_finite(t)) return dtnh__job_numeric_fail(job, i, t, err);
        dtnh__triple_add(dtnh__job_takes_part(job, i) ? part : rest, t);
        if (!job->g_omega && g.coef > 0) *l2_value += t.oo / (2.0 * g.coef);
    }
    return DTNH_OK;
}

/* Pass 2 over one view: direction tile by tile, then into d or through the update.
   Returns how many tiles held a non-finite d (checked only when check is set). */
static long dtnh__view_pass2(const float *gj, const dtnh__gview *g, float c, float *d,
                             const dtnh__update *u, float *w, size_t n, int check) {
    long ntiles = (long)((n + DTNH__TILE - 1) / DTNH__TILE), k, bad = 0;
    DTNH__OMP(parallel for schedule(static) reduction(+ : bad) if (ntiles > 8))
    for (k = 0; k < ntiles; k++) {
        float gbuf[DTNH__TILE], dbuf[DTNH__TILE];
        size_t off = (size_t)k * DTNH__TILE;
        size_t len = n - off < DTNH__TILE ? n - off : DTNH__TILE;
        float *dt = d ? d + off : dbuf;
        dtnh__direction_tile(gj + off, dtnh__gview_tile(g, off, len, gbuf), c, dt, len);
        if (check && !dtnh_all_finite(len, dt, NULL)) bad++;
        if (u) dtnh__update_apply(u, w + off, dt, off, len);
    }
    return bad;
}

static void dtnh__job_stats(const dtnh__job *job, const dtnh__acc *a, int views, int projected) {
    dtnh_direction_stats *st = job->st;
    double sj = a->jj + a->jo, so = a->jo + a->oo, ss = a->jj + 2 * a->jo + a->oo;
    if (!st) return;
    st->cos_j_omega = a->jj > 0 && a->oo > 0 ? a->jo / sqrt(a->jj * a->oo) : 0;
    st->norm_g_j = sqrt(a->jj);
    st->norm_g_omega = sqrt(a->oo);
    st->angle_d_j = dtnh__angle_deg(a->dj, a->dd, a->jj);
    st->angle_d_omega = dtnh__angle_deg(a->dom, a->dd, a->oo);
    st->angle_sum_j = dtnh__angle_deg(sj, ss, a->jj);
    st->angle_sum_omega = dtnh__angle_deg(so, ss, a->oo);
    st->views = views;
    st->views_projected = projected;
    st->projected = views ? (double)projected / views : 0;
}

/* Runs the direction (and the update when job->o is set) on every trainable view. */
static dtnh_status dtnh__job_run(dtnh__job *job, dtnh_error *err) {
    const dtnh_params *p = job->p;
    dtnh__triple part, rest;
    dtnh__acc acc;
    double c_global = 0, l2_value = 0;
    int i, views = 0, projected = 0, global = job->dc.scope == DTNH_SCOPE_GLOBAL;
    int pass1 = job->dc.mode == DTNH_MODE_DTNH || job->st || !job->o;
    dtnh_status s, result = DTNH_OK;
    memset(&acc, 0, sizeof acc);
    if (pass1 && (s = dtnh__job_pass1(job, &part, &rest, &l2_value, err))) return s;
    if (pass1) {
        c_global = dtnh__job_coef(job, part);
        dtnh__acc_add(&acc, rest, 0);
        if (global) dtnh__acc_add(&acc, part, c_global);
    }
    for (i = 0; i < p->count; i++) {
        const dtnh_param_view *v = &p->views[i];
        dtnh__gview g;
        dtnh__update u;
        double c = 0;
        long bad;
        if (!v->trainable) continue;
        g = dtnh__job_gview(job, i);
        if (pass1 && dtnh__job_takes_part(job, i)) {
            views++;
            if (global) c = c_global;
            else {
                dtnh__triple t = dtnh__view_triple(job->g_j + v->offset, &g, v->count);
                c = dtnh__job_coef(job, t);
                dtnh__acc_add(&acc, t, c);
            }
            projected += c != 0;
        }
        if (job->o) u = dtnh__update_for(job->o, v, &job->o->slots[i]);
        bad = dtnh__view_pass2(job->g_j + v->offset, &g, (float)c, job->d ? job->d + v->offset : NULL,
                               job->o ? &u : NULL, p->w ? p->w + v->offset : NULL, v->count, !pass1);
        if (job->o) job->o->slots[i].steps++;
        /* Only the single pass of mode sum gets here with a NaN: pass 1 stops it otherwise. */
        if (bad && result == DTNH_OK)
            result = dtnh_fail(err, DTNH_ERR_NUMERIC,
                               "DTNH step (mode sum, no stats): d of view '%s' holds NaN or Inf; "
                               "the single pass already applied the update", v->name);
    }
    if (job->o) {
        job->o->lr = dtnh_schedule_lr(&job->o->cfg.schedule, job->o->cfg.lr, job->o->step);
        job->o->step++;
    }
    if (pass1) dtnh__job_stats(job, &acc, views, projected);
    if (job->st && !job->g_omega && pass1) job->st->omega = l2_value;
    return result;
}

/* ---- public entry points -------------------------------------------------------------------- */

static dtnh_status dtnh__direction_resolve(const dtnh_direction_config *in, dtnh_direction_config *out,
                                           dtnh_error *err) {
    dtnh_direction_config c;
    if (in) c = *in;
    else memset(&c, 0, sizeof c);
    if (c.mode != DTNH_MODE_DTNH && c.mode != DTNH_MODE_SUM)
        return dtnh_fail(err, DTNH_ERR_ARG, "direction: unknown mode %d", c.mode);
    if (c.scope != DTNH_SCOPE_GLOBAL && c.scope != DTNH_SCOPE_PER_TENSOR)
        return dtnh_fail(err, DTNH_ERR_ARG, "direction: unknown scope %d", c.scope);
    if (!(c.eps >= 0)) return dtnh_fail(err, DTNH_ERR_ARG, "direction: eps %g, expected >= 0", c.eps);
    if (c.eps == 0) c.eps = DTNH_DIRECTION_EPS;
    *out = c;
    return DTNH_OK;
}

/* The checks every entry point shares; fills the job's resolved direction config. */
static dtnh_status dtnh__job_init(dtnh__job *job, const dtnh_direction_config *dc, const dtnh_params *p,
                                  const float *g_j, dtnh_direction_stats *st, const char *who,
                                  dtnh_error *err) {
    memset(job, 0, sizeof *job);
    if (!p || !g_j) return dtnh_fail(err, DTNH_ERR_ARG, "%s: NULL store or g_J", who);
    if (!p->views) return dtnh_fail(err, DTNH_ERR_ARG, "%s: the store only counts (no views)", who);
    job->p = p;
    job->g_j = g_j;
    job->st = st;
    return dtnh__direction_resolve(dc, &job->dc, err);
}

DTNHDEF dtnh_status dtnh_direction(const dtnh_direction_config *cfg, const dtnh_params *p,
                                   const float *g_j, const float *g_omega, float *d,
                                   dtnh_direction_stats *st, dtnh_error *err) {
    dtnh__job job;
    dtnh_status s = dtnh__job_init(&job, cfg, p, g_j, st, "direction", err);
    if (s) return s;
    if (!g_omega || !d) return dtnh_fail(err, DTNH_ERR_ARG, "direction: NULL g_Omega or d");
    job.g_omega = g_omega;
    job.d = d;
    return dtnh__job_run(&job, err);
}

DTNHDEF dtnh_status dtnh_direction_flat(const dtnh_direction_config *cfg, size_t n,
                                        const float *g_j, const float *g_omega, float *d,
                                        dtnh_direction_stats *st, dtnh_error *err) {
    dtnh_param_view view;
    dtnh_params p;
    if (n == 0) return dtnh_fail(err, DTNH_ERR_ARG, "direction_flat: no elements");
    memset(&view, 0, sizeof view);
    memset(&p, 0, sizeof p);
    strcpy(view.name, "flat");
    view.ndim = 1;
    view.count = n;
    view.groups = DTNH_GROUP_ALL;
    view.trainable = 1;
    p.views = &view;
    p.count = p.capacity = 1;
    p.total = n;
    return dtnh_direction(cfg, &p, g_j, g_omega, d, st, err);
}

DTNHDEF dtnh_status dtnh_optim_step(dtnh_optim *o, dtnh_params *p, const float *d, dtnh_error *err) {
    dtnh_status s;
    int i;
    if (!o || !p || !d) return dtnh_fail(err, DTNH_ERR_ARG, "optim_step: NULL optimizer, store or d");
    if ((s = dtnh__optim_check(o, p, err))) return s;
    for (i = 0; i < p->count; i++) {
        const dtnh_param_view *v = &p->views[i];
        dtnh__update u;
        long ntiles, k;
        if (!v->trainable) continue;
        u = dtnh__update_for(o, v, &o->slots[i]);
        ntiles = (long)((v->count + DTNH__TILE - 1) / DTNH__TILE);
        DTNH__OMP(parallel for schedule(static) if (ntiles > 8))
        for (k = 0; k < ntiles; k++) {
            size_t off = (size_t)k * DTNH__TILE;
            size_t len = v->count - off < DTNH__TILE ? v->count - off : DTNH__TILE;
            dtnh__update_apply(&u, p->w + v->offset + off, d + v->offset + off, off, len);
        }
        o->slots[i].steps++;
    }
    o->lr = dtnh_schedule_lr(&o->cfg.schedule, o->cfg.lr, o->step);
    o->step++;
    return DTNH_OK;
}

DTNHDEF dtnh_status dtnh_step(dtnh_optim *o, const dtnh_direction_config *dc, dtnh_params *p,
                              const float *g_j, const float *g_omega, dtnh_direction_stats *st,
                              dtnh_error *err) {
    dtnh__job job;
    dtnh_status s = dtnh__job_init(&job, dc, p, g_j, st, "step", err);
    if (s) return s;
    if (!o || !g_omega) return dtnh_fail(err, DTNH_ERR_ARG, "step: NULL optimizer or g_Omega");
    if ((s = dtnh__optim_check(o, p, err))) return s;
    job.g_omega = g_omega;
    job.o = o;
    return dtnh__job_run(&job, err);
}

DTNHDEF dtnh_status dtnh_step_l2sp(dtnh_optim *o, const dtnh_direction_config *dc,
                                   const dtnh_l2sp_config *rc, dtnh_params *p, const float *g_j,
                                   dtnh_direction_stats *st, dtnh_error *err) {
    dtnh__job job;
    dtnh_status s = dtnh__job_init(&job, dc, p, g_j, st, "step_l2sp", err);
    if (s) return s;
    if (!o) return dtnh_fail(err, DTNH_ERR_ARG, "step_l2sp: NULL optimizer");
    if ((s = dtnh__optim_check(o, p, err))) return s;
    if ((s = dtnh__l2sp_resolve(rc, &job.l2, err))) return s;
    if (!job.l2.toward_zero && !p->w_src)
        return dtnh_fail(err, DTNH_ERR_ARG, "step_l2sp: the store has no w_src (allocate DTNH_ROLE_W_SRC)");
    job.o = o;
    return dtnh__job_run(&job, err);
}
