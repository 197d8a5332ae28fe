/* ---- regularizers --------------------------------------------------------------------------- */

/* The L2 family on a stored g_Omega, with the same per-view pull as the fused step
   (dtnh__l2sp_coef), restricted to the views in `groups` (0: all). Checks every view before
   writing any. */
static dtnh_status dtnh__reg_pull(const dtnh_l2sp_config *rc, unsigned groups, const dtnh_params *p,
                                  float *g, double *value, const char *who, dtnh_error *err) {
    double total = 0;
    int i, pass;
    if (!p || !g) return dtnh_fail(err, DTNH_ERR_ARG, "%s: NULL store or g_Omega", who);
    if (!p->views || !p->w) return dtnh_fail(err, DTNH_ERR_ARG, "%s: a counting store or no weights", who);
    if (!rc->toward_zero && !p->w_src)
        return dtnh_fail(err, DTNH_ERR_ARG, "%s: the store has no w_src (allocate DTNH_ROLE_W_SRC)", who);
    for (pass = 0; pass < 2; pass++)
        for (i = 0; i < p->count; i++) {
            const dtnh_param_view *v = &p->views[i];
            const float *w = p->w + v->offset, *ws;
            float *gv = g + v->offset, coef;
            double sum = 0;
            int toward_source;
            size_t k;
            if (!v->trainable || (groups && !(v->groups & groups))) continue;
            coef = (float)dtnh__l2sp_coef(rc, v->groups, &toward_source);
            if (coef == 0) continue;
            ws = toward_source ? p->w_src + v->offset : NULL;
            if (pass == 0) {
                for (k = 0; k < v->count; k++) {
                    double x = ws ? (double)(w[k] - ws[k]) : (double)w[k];
                    sum += x * x;
                }
                if (!(sum - sum == 0))
                    return dtnh_fail(err, DTNH_ERR_NUMERIC, "%s: the weights%s of view '%s' hold NaN or Inf",
                                     who, ws ? " or w_s" : "", v->name);
                total += 0.5 * (double)coef * sum;
            } else if (ws) {
                for (k = 0; k < v->count; k++) gv[k] += coef * (w[k] - ws[k]);
            } else {
                for (k = 0; k < v->count; k++) gv[k] += coef * w[k];
            }
        }
    if (value) *value = total;
    return DTNH_OK;
}

DTNHDEF dtnh_status dtnh_reg_l2sp(const dtnh_l2sp_config *rc, const dtnh_params *p,
                                  float *g_omega, double *value, dtnh_error *err) {
    dtnh_l2sp_config c;
    dtnh_status s = dtnh__l2sp_resolve(rc, &c, err);
    if (s) return s;
    return dtnh__reg_pull(&c, 0, p, g_omega, value, "reg_l2sp", err);
}

DTNHDEF dtnh_status dtnh_reg_l2(double lambda, unsigned groups, const dtnh_params *p,
                                float *g_omega, double *value, dtnh_error *err) {
    dtnh_l2sp_config c;
    if (!(lambda > 0) || lambda > 1e30)
        return dtnh_fail(err, DTNH_ERR_ARG, "reg_l2: lambda %g, expected > 0", lambda);
    memset(&c, 0, sizeof c);
    c.alpha = c.beta = lambda;
    c.toward_zero = 1;
    return dtnh__reg_pull(&c, groups, p, g_omega, value, "reg_l2", err);
}

/* ---- feature-map distances -------------------------------------------------------------------- */

#define DTNH__FMAP_CHUNK 256

/* f and s alike, with data: n samples of c channels of hw positions each. */
static dtnh_status dtnh__fmap_dims(const dtnh_tensor *f, const dtnh_tensor *s, double alpha, const char *who,
                                   int *n, int *c, size_t *hw, dtnh_error *err) {
    if (!f || !s || !f->data || !s->data) return dtnh_fail(err, DTNH_ERR_ARG, "%s: NULL tensor or data", who);
    if (!dtnh_tensor_same_shape(f, s))
        return dtnh_fail(err, DTNH_ERR_SHAPE, "%s: target [%d,%d,%d,%d] and source [%d,%d,%d,%d] differ", who,
                         f->shape[0], f->shape[1], f->shape[2], f->shape[3], s->shape[0], s->shape[1],
                         s->shape[2], s->shape[3]);
    if (!(alpha > 0) || alpha > 1e30)
        return dtnh_fail(err, DTNH_ERR_ARG, "%s: coefficient %g, expected > 0", who, alpha);
    *n = f->shape[0];
    *c = f->ndim > 1 ? f->shape[1] : 1;
    *hw = dtnh_tensor_count(f) / ((size_t)*n * (size_t)*c);
    return DTNH_OK;
}

/* One channel plane: sum (f - s)^2 in double, and df = gscale * (f - s). */
static double dtnh__plane_distance(const float *f, const float *s, size_t hw, float gscale, float *df) {
    double sum = 0;
    size_t p;
    for (p = 0; p < hw; p++) {
        float d = f[p] - s[p];
        sum += (double)d * d;
        if (df) df[p] = gscale * d;
    }
    return sum;
}

DTNHDEF dtnh_status dtnh_feature_distance(const dtnh_tensor *f, const dtnh_tensor *s,
                                          const float *channel_weight, double alpha, float *df,
                                          double *value, dtnh_error *err) {
    double partial[DTNH__FMAP_CHUNK], total = 0, scale;
    size_t hw, planes, chunk, b;
    int n, c;
    dtnh_status st = dtnh__fmap_dims(f, s, alpha, "feature_distance", &n, &c, &hw, err);
    if (st) return st;
    scale = alpha / n;
    planes = (size_t)n * (size_t)c;
    for (chunk = 0; chunk < planes; chunk += DTNH__FMAP_CHUNK) {
        long cnt = (long)(planes - chunk < DTNH__FMAP_CHUNK ? planes - chunk : DTNH__FMAP_CHUNK), k;
        DTNH__OMP(parallel for schedule(static) if (cnt * (long)hw > 32768))
        for (k = 0; k < cnt; k++) {
            size_t plane = chunk + (size_t)k, off = plane * hw;
            double wt = channel_weight ? channel_weight[plane % (size_t)c] : 1.0;
            partial[k] = wt * dtnh__plane_distance(f->data + off, s->data + off, hw, (float)(scale * wt),
                                                   df ? df + off : NULL);
        }
        for (b = 0; b < (size_t)cnt; b++) total += partial[b];
    }
    if (!(total - total == 0))
        return dtnh_fail(err, DTNH_ERR_NUMERIC, "feature_distance: NaN or Inf in the features or weights");
    if (value) *value = 0.5 * scale * total;
    return DTNH_OK;
}

/* Attention map of one sample at position p: sum over channels of x^2. */
static double dtnh__at_map(const float *x, int c, size_t hw, size_t p) {
    double a = 0;
    int k;
    for (k = 0; k < c; k++) {
        double v = x[(size_t)k * hw + p];
        a += v * v;
    }
    return a;
}

/* F.normalize's denominator: the norm of the map, at least 1e-12. */
static double dtnh__at_norm(const float *x, int c, size_t hw) {
    double nn = 0;
    size_t p;
    for (p = 0; p < hw; p++) {
        double a = dtnh__at_map(x, c, hw, p);
        nn += a * a;
    }
    return sqrt(nn);
}

/* One sample: returns sum_p (q_f - q_s)^2 and, when df is set, its gradient times gscale:
   dL/dA = (g - q <g,q>)/||A|| (g/eps below eps), dL/df = 2 f dL/dA. Maps are recomputed
   rather than stored, so no scratch is needed. */
static double dtnh__at_sample(const float *f, const float *s, int c, size_t hw, double gscale, float *df) {
    double nf_raw = dtnh__at_norm(f, c, hw), ns = dtnh__at_norm(s, c, hw), nf, sum = 0, gq = 0;
    size_t p;
    int k;
    nf = nf_raw > 1e-12 ? nf_raw : 1e-12;
    ns = ns > 1e-12 ? ns : 1e-12;
    for (p = 0; p < hw; p++) {
        double qf = dtnh__at_map(f, c, hw, p) / nf, d = qf - dtnh__at_map(s, c, hw, p) / ns;
        sum += d * d;
        gq += gscale * d * qf;
    }
    if (!df) return sum;
    for (p = 0; p < hw; p++) {
        double qf = dtnh__at_map(f, c, hw, p) / nf, g = gscale * (qf - dtnh__at_map(s, c, hw, p) / ns);
        double da = nf_raw > 1e-12 ? (g - qf * gq) / nf : g / nf;
        for (k = 0; k < c; k++) df[(size_t)k * hw + p] = (float)(2.0 * f[(size_t)k * hw + p] * da);
    }
    return sum;
}

DTNHDEF dtnh_status dtnh_attention_distance(const dtnh_tensor *f, const dtnh_tensor *s,
                                            double alpha, float *df, double *value,
                                            dtnh_error *err) {
    double partial[DTNH__FMAP_CHUNK], total = 0, gscale;
    size_t hw, chunk, b, per_sample;
    int n, c;
    dtnh_status st = dtnh__fmap_dims(f, s, alpha, "attention_distance", &n, &c, &hw, err);
    if (st) return st;
    gscale = alpha / ((double)n * (double)hw);
    per_sample = (size_t)c * hw;
    for (chunk = 0; chunk < (size_t)n; chunk += DTNH__FMAP_CHUNK) {
        long cnt = (long)((size_t)n - chunk < DTNH__FMAP_CHUNK ? (size_t)n - chunk : DTNH__FMAP_CHUNK), k;
        DTNH__OMP(parallel for schedule(static) if (cnt > 1 && per_sample > 4096))
        for (k = 0; k < cnt; k++) {
            size_t off = (chunk + (size_t)k) * per_sample;
            partial[k] = dtnh__at_sample(f->data + off, s->data + off, c, hw, gscale, df ? df + off : NULL);
        }
        for (b = 0; b < (size_t)cnt; b++) total += partial[b];
    }
    if (!(total - total == 0))
        return dtnh_fail(err, DTNH_ERR_NUMERIC, "attention_distance: NaN or Inf in the features");
    if (value) *value = 0.5 * gscale * total;
    return DTNH_OK;
}

/* ---- DELTA's attention weights ---------------------------------------------------------------- */

DTNHDEF void dtnh_delta_weights(int count, float *v, double temperature) {
    double mean = 0, var = 0, std, zmax = -1e300, sum = 0;
    int i;
    if (count <= 0 || !v) return;
    if (!(temperature > 0)) temperature = 5;
    for (i = 0; i < count; i++) mean += v[i];
    mean /= count;
    for (i = 0; i < count; i++) var += (v[i] - mean) * (v[i] - mean);
    std = sqrt(var / count);
    /* z-score (all zero when every channel matters alike), then a tempered softmax */
    for (i = 0; i < count; i++) {
        double z = std > 0 ? (v[i] - mean) / std : 0;
        v[i] = (float)z;
        if (z > zmax) zmax = z;
    }
    for (i = 0; i < count; i++) sum += exp((v[i] - zmax) / temperature);
    for (i = 0; i < count; i++) v[i] = (float)(exp((v[i] - zmax) / temperature) / sum);
}

/* ---- feature-map regularizers on ResNet-18 ------------------------------------------------- */

/* Channels of a hook's output. */
static int dtnh__fmap_hook_channels(const dtnh_resnet *net, int hook) {
    return net->values[net->hook_value[hook]].c;
}

static dtnh_status dtnh__fmap_resolve(const dtnh_fmap_config *in, dtnh_fmap_reg *r, dtnh_error *err) {
    static const char *const defaults[4] = {"layer1", "layer2", "layer3", "layer4"};
    dtnh_fmap_config c;
    int i;
    if (in) c = *in;
    else memset(&c, 0, sizeof c);
    if ((unsigned)c.kind > (unsigned)DTNH_FMAP_ATTENTION) /* negative kinds wrap around */
        return dtnh_fail(err, DTNH_ERR_ARG, "fmap_reg: unknown kind %d", (int)c.kind);
    if (!(c.alpha >= 0) || c.alpha > 1e30)
        return dtnh_fail(err, DTNH_ERR_ARG, "fmap_reg: alpha %g, expected > 0 (0: default 0.01)", c.alpha);
    if (!(c.temperature >= 0) || c.temperature > 1e30)
        return dtnh_fail(err, DTNH_ERR_ARG, "fmap_reg: temperature %g, expected > 0 (0: default 5)",
                         c.temperature);
    if (c.hook_count < 0 || c.hook_count > DTNH_RESNET_MAX_HOOKS)
        return dtnh_fail(err, DTNH_ERR_ARG, "fmap_reg: hook_count %d, expected 0..%d", c.hook_count,
                         DTNH_RESNET_MAX_HOOKS);
    if (c.alpha == 0) c.alpha = 0.01;
    if (c.temperature == 0) c.temperature = 5;
    if (c.hook_count == 0) {
        c.hook_count = 4;
        for (i = 0; i < 4; i++) c.hooks[i] = defaults[i];
    }
    for (i = 0; i < c.hook_count; i++) {
        if (!c.hooks[i] || !c.hooks[i][0] || strlen(c.hooks[i]) >= DTNH_NAME_SIZE)
            return dtnh_fail(err, DTNH_ERR_ARG, "fmap_reg: hook %d is NULL, empty or too long", i);
        strcpy(r->hook_name[i], c.hooks[i]);
        c.hooks[i] = r->hook_name[i];
    }
    r->cfg = c;
    return DTNH_OK;
}

/* The source statistics must come from a network of the target's shapes. */
static dtnh_status dtnh__fmap_same_shapes(const dtnh_resnet *a, const dtnh_resnet *b, dtnh_error *err) {
    int i, k;
    if (a->params.count != b->params.count || a->params.total != b->params.total ||
        a->buffers.total != b->buffers.total)
        return dtnh_fail(err, DTNH_ERR_SHAPE,
                         "fmap_reg: the source has %d tensors (%zu parameters), the target %d (%zu)",
                         b->params.count, b->params.total, a->params.count, a->params.total);
    if (!a->params.views || !b->params.views) return DTNH_OK;
    for (i = 0; i < a->params.count; i++)
        for (k = 0; k < DTNH_MAX_DIMS; k++)
            if (a->params.views[i].shape[k] != b->params.views[i].shape[k])
                return dtnh_fail(err, DTNH_ERR_SHAPE,
                                 "fmap_reg: '%s' has dimension %d of %d in the target, %d in the source",
                                 a->params.views[i].name, k, a->params.views[i].shape[k],
                                 b->params.views[i].shape[k]);
    return DTNH_OK;
}

/* The source copy: the target's configuration, forward only, frozen statistics, the
   regularizer's hooks, and no weights of its own (it reads the target's w_src). */
static dtnh_status dtnh__fmap_source(dtnh_fmap_reg *r, const dtnh_resnet *stats_from, dtnh_arena *a,
                                     dtnh_error *err) {
    dtnh_resnet_config c = r->target->cfg;
    dtnh_status s;
    int i;
    c.train = DTNH_TRAIN_NONE;
    c.bn_stats = DTNH_BN_STATS_FROZEN;
    c.external_weights = 1;
    c.roles = 0;
    c.hook_count = r->cfg.hook_count;
    for (i = 0; i < DTNH_RESNET_MAX_HOOKS; i++) c.hooks[i] = i < c.hook_count ? r->cfg.hooks[i] : NULL;
    if ((s = dtnh_resnet_init(&r->source, &c, a, err))) return s;
    if ((s = dtnh__fmap_same_shapes(r->target, &r->source, err))) return s;
    if (stats_from && (s = dtnh__fmap_same_shapes(r->target, stats_from, err))) return s;
    if (dtnh_arena_is_counting(a)) return DTNH_OK;
    if ((s = dtnh_resnet_use_weights(&r->source, r->target->params.w_src, err))) return s;
    return dtnh_resnet_copy_buffers(&r->source, stats_from ? stats_from : r->target, err);
}

DTNHDEF dtnh_status dtnh_fmap_reg_init(dtnh_fmap_reg *r, const dtnh_fmap_config *cfg,
                                       dtnh_resnet *target, const dtnh_resnet *stats_from,
                                       dtnh_arena *persistent, dtnh_error *err) {
    dtnh_status s;
    size_t total = 0;
    int i, k;
    if (!r || !target || !persistent)
        return dtnh_fail(err, DTNH_ERR_ARG, "fmap_reg_init: NULL regularizer, target or arena");
    memset(r, 0, sizeof *r);
    if ((s = dtnh__fmap_resolve(cfg, r, err))) return s;
    r->target = target;
    if (!target->params.w_src && !dtnh_arena_is_counting(persistent))
        return dtnh_fail(err, DTNH_ERR_ARG, "fmap_reg_init: the target has no w_src (add DTNH_ROLE_W_SRC to its roles)");
    for (i = 0; i < r->cfg.hook_count; i++) {
        r->target_hook[i] = dtnh_resnet_hook_index(target, r->cfg.hooks[i]);
        r->source_hook[i] = i;
        if (r->target_hook[i] < 0)
            return dtnh_fail(err, DTNH_ERR_ARG,
                             "fmap_reg_init: hook '%s' is not among the target's hooks (name it in "
                             "dtnh_resnet_config.hooks when building the target)", r->cfg.hooks[i]);
        for (k = 0; k < i; k++)
            if (r->target_hook[k] == r->target_hook[i])
                return dtnh_fail(err, DTNH_ERR_ARG, "fmap_reg_init: hook '%s' named twice", r->cfg.hooks[i]);
        r->channels[i] = dtnh__fmap_hook_channels(target, r->target_hook[i]);
        total += (size_t)r->channels[i];
    }
    if ((s = dtnh__fmap_source(r, stats_from, persistent, err))) return s;
    if (r->cfg.kind == DTNH_FMAP_DELTA && (s = dtnh_arena_alloc_floats(persistent, total, &r->attention, err)))
        return s;
    return DTNH_OK;
}

/* Value and gradient at hook i, given both models' outputs there. */
static dtnh_status dtnh__fmap_hook(dtnh_fmap_reg *r, int i, const dtnh_tensor *f, const dtnh_tensor *s,
                                   float *df, float *weights, double *value, dtnh_error *err) {
    size_t off = 0;
    int k;
    if (r->cfg.kind == DTNH_FMAP_ATTENTION) return dtnh_attention_distance(f, s, r->cfg.alpha, df, value, err);
    if (r->cfg.kind == DTNH_FMAP_DISTANCE) return dtnh_feature_distance(f, s, NULL, r->cfg.alpha, df, value, err);
    for (k = 0; k < i; k++) off += (size_t)r->channels[k];
    for (k = 0; k < r->channels[i]; k++) weights[k] = (float)r->channels[i] * r->attention[off + (size_t)k];
    return dtnh_feature_distance(f, s, weights, r->cfg.alpha, df, value, err);
}

/* Everything compute does between the source forward and the backward, on the step arena. */
static dtnh_status dtnh__fmap_run(dtnh_fmap_reg *r, const dtnh_tensor *x, dtnh_arena *step,
                                  const float *dlogits, float *grad, int accumulate, double *value,
                                  dtnh_error *err) {
    const float *hook_grads[DTNH_RESNET_MAX_HOOKS];
    dtnh_tensor logits;
    double total = 0;
    int i;
    dtnh_status s;
    if ((s = dtnh_resnet_infer(&r->source, x, step, &logits, err))) return s;
    for (i = 0; i < DTNH_RESNET_MAX_HOOKS; i++) hook_grads[i] = NULL;
    for (i = 0; i < r->cfg.hook_count; i++) {
        dtnh_tensor f, src;
        float *df = NULL, *weights = NULL;
        double v = 0;
        if ((s = dtnh_resnet_hook_output(r->target, r->target_hook[i], &f, err)) ||
            (s = dtnh_resnet_hook_output(&r->source, r->source_hook[i], &src, err)))
            return s;
        if ((s = dtnh_arena_alloc_floats(step, dtnh_tensor_count(&f), &df, err)) ||
            (s = dtnh_arena_alloc_floats(step, (size_t)r->channels[i], &weights, err)))
            return s;
        if (dtnh_arena_is_counting(step)) continue;
        if (!f.data)
            return dtnh_fail(err, DTNH_ERR_ARG, "fmap_reg_compute: no training forward of the target yet");
        if ((s = dtnh__fmap_hook(r, i, &f, &src, df, weights, &v, err))) return s;
        hook_grads[r->target_hook[i]] = df;
        total += v;
    }
    if (dtnh_arena_is_counting(step)) return DTNH_OK;
    if ((s = dtnh_resnet_backward(r->target, dlogits, hook_grads, grad, accumulate, err))) return s;
    if (value) *value = total;
    return DTNH_OK;
}

DTNHDEF dtnh_status dtnh_fmap_reg_compute(dtnh_fmap_reg *r, const dtnh_tensor *x,
                                          dtnh_arena *step, const float *dlogits, float *grad,
                                          int accumulate, double *value, dtnh_error *err) {
    size_t mark;
    dtnh_status s;
    if (!r || !r->target || !x || !step || (!grad && !dtnh_arena_is_counting(step)))
        return dtnh_fail(err, DTNH_ERR_ARG, "fmap_reg_compute: NULL regularizer, input, arena or gradient");
    if (r->cfg.kind == DTNH_FMAP_DELTA && !r->attention_ready && !dtnh_arena_is_counting(step))
        return dtnh_fail(err, DTNH_ERR_ARG,
                         "fmap_reg_compute: DELTA needs its attention (dtnh_fmap_reg_attention or _load_attention)");
    mark = dtnh_arena_mark(step);
    s = dtnh__fmap_run(r, x, step, dlogits, grad, accumulate, value, err);
    dtnh_arena_reset(step, mark);
    return s;
}

/* Mean cross-entropy of net on batch b, with channel `channel` of hook `hook` zeroed (hook
   -1: nothing zeroed). */
static dtnh_status dtnh__delta_loss(dtnh_resnet *net, const dtnh_tensor *x, const int *labels, int hook,
                                    int channel, dtnh_arena *step, double *loss, dtnh_error *err) {
    dtnh_tensor logits;
    size_t mark = dtnh_arena_mark(step);
    dtnh_status s = hook < 0 ? dtnh_resnet_infer(net, x, step, &logits, err)
                             : dtnh_resnet_infer_masked(net, x, hook, channel, step, &logits, err);
    if (!s) s = dtnh_softmax_cross_entropy(logits.shape[0], logits.shape[1], logits.data, labels, NULL, loss, err);
    dtnh_arena_reset(step, mark);
    return s;
}

DTNHDEF dtnh_status dtnh_fmap_reg_attention(dtnh_fmap_reg *r, dtnh_resnet *net, int batches,
                                            const dtnh_tensor *x, const int *const *labels,
                                            dtnh_arena *step, dtnh_error *err) {
    double base = 0, loss;
    size_t off = 0;
    int i, c, b, hook[DTNH_RESNET_MAX_HOOKS];
    dtnh_status s;
    if (!r || !net || !x || !labels || !step || batches < 1 || dtnh_arena_is_counting(step))
        return dtnh_fail(err, DTNH_ERR_ARG, "fmap_reg_attention: NULL argument, %d batches or a counting arena", batches);
    if (r->cfg.kind != DTNH_FMAP_DELTA || !r->attention)
        return dtnh_fail(err, DTNH_ERR_ARG, "fmap_reg_attention: only a DELTA regularizer has attention");
    for (i = 0; i < r->cfg.hook_count; i++) {
        hook[i] = dtnh_resnet_hook_index(net, r->cfg.hooks[i]);
        if (hook[i] < 0 || dtnh__fmap_hook_channels(net, hook[i]) != r->channels[i])
            return dtnh_fail(err, DTNH_ERR_ARG, "fmap_reg_attention: net lacks hook '%s' or it has another width",
                             r->cfg.hooks[i]);
    }
    r->attention_ready = 0;
    for (b = 0; b < batches; b++) {
        if ((s = dtnh__delta_loss(net, &x[b], labels[b], -1, 0, step, &loss, err))) return s;
        base += loss / batches;
    }
    for (i = 0; i < r->cfg.hook_count; i++) {
        float *rise = r->attention + off;
        for (c = 0; c < r->channels[i]; c++) {
            double mean = 0;
            for (b = 0; b < batches; b++) {
                if ((s = dtnh__delta_loss(net, &x[b], labels[b], hook[i], c, step, &loss, err))) return s;
                mean += loss / batches;
            }
            rise[c] = (float)(mean - base);
        }
        dtnh_delta_weights(r->channels[i], rise, r->cfg.temperature);
        off += (size_t)r->channels[i];
    }
    r->attention_ready = 1;
    return DTNH_OK;
}

#ifndef DTNH_NO_STDIO
#define DTNH__DELTA_PREFIX "delta."

static void dtnh__delta_tensor_name(const dtnh_fmap_reg *r, int i, char *name) {
    strcpy(name, DTNH__DELTA_PREFIX);
    strcat(name, r->cfg.hooks[i]);
}

DTNHDEF dtnh_status dtnh_fmap_reg_save_attention(const dtnh_fmap_reg *r, const char *path,
                                                 dtnh_error *err) {
    dtnh_st_tensor t[DTNH_RESNET_MAX_HOOKS];
    char names[DTNH_RESNET_MAX_HOOKS][DTNH_NAME_SIZE + 8];
    dtnh_st_meta meta;
    size_t off = 0;
    int i;
    if (!r || !path || !r->attention_ready)
        return dtnh_fail(err, DTNH_ERR_ARG, "fmap_reg_save_attention: NULL argument or no attention yet");
    memset(t, 0, sizeof t);
    for (i = 0; i < r->cfg.hook_count; i++) {
        dtnh__delta_tensor_name(r, i, names[i]);
        t[i].name = names[i];
        t[i].dtype = DTNH_ST_F32;
        t[i].ndim = 1;
        t[i].shape[0] = r->channels[i];
        t[i].f32 = r->attention + off;
        off += (size_t)r->channels[i];
    }
    meta.key = "format";
    meta.value = "dtnh-delta-attention";
    return dtnh_st_save(path, t, r->cfg.hook_count, &meta, 1, err);
}

/* Every hook's tensor present, of C floats, finite: checked before anything is read. */
static dtnh_status dtnh__delta_check_file(const dtnh_fmap_reg *r, dtnh_st_file *f, const char *path,
                                          int *index, dtnh_error *err) {
    char name[DTNH_NAME_SIZE + 8];
    int i;
    dtnh_status s;
    for (i = 0; i < r->cfg.hook_count; i++) {
        dtnh__delta_tensor_name(r, i, name);
        index[i] = dtnh_st_find(f, name);
        if (index[i] < 0)
            return dtnh_fail(err, DTNH_ERR_FORMAT, "fmap_reg_load_attention: '%s' has no tensor '%s'", path, name);
        if (!dtnh_st_shape_is(f, index[i], 1, &r->channels[i]))
            return dtnh_fail(err, DTNH_ERR_SHAPE, "fmap_reg_load_attention: '%s' in '%s' is not [%d]", name, path,
                             r->channels[i]);
        if ((s = dtnh_st_check_finite(f, index[i], err))) return s;
    }
    return DTNH_OK;
}

DTNHDEF dtnh_status dtnh_fmap_reg_load_attention(dtnh_fmap_reg *r, const char *path,
                                                 dtnh_arena *scratch, dtnh_error *err) {
    dtnh_st_file f;
    int index[DTNH_RESNET_MAX_HOOKS], i;
    size_t mark, off = 0;
    dtnh_status s;
    if (!r || !path || !scratch || !r->attention)
        return dtnh_fail(err, DTNH_ERR_ARG, "fmap_reg_load_attention: NULL argument or not a DELTA regularizer");
    mark = dtnh_arena_mark(scratch);
    if ((s = dtnh_st_open(&f, path, scratch, err))) {
        dtnh_arena_reset(scratch, mark);
        return s;
    }
    s = dtnh__delta_check_file(r, &f, path, index, err);
    for (i = 0; !s && i < r->cfg.hook_count; i++) {
        s = dtnh_st_read_f32(&f, index[i], r->attention + off, (size_t)r->channels[i], err);
        off += (size_t)r->channels[i];
    }
    dtnh_st_close(&f);
    dtnh_arena_reset(scratch, mark);
    if (!s) r->attention_ready = 1;
    return s;
}
#endif
