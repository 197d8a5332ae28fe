/* ---- checkpoints ----------------------------------------------------------------------------
   The file is a plain safetensors file: the state_dict first (so weights loaders read it),
   then "dtnh.*" tensors, and every scalar in the metadata, integers in decimal and the lr as
   the hexadecimal bits of its double (exact, and no locale can change it). */

#include <limits.h>

#define DTNH__CKPT_VERSION "1"
#define DTNH__CKPT_NUM 24                   /* chars of one number in the metadata */
#define DTNH__CKPT_KEY (DTNH_NAME_SIZE + 16) /* chars of one generated name or key */
#define DTNH__CKPT_MAX_META (10 + DTNH_CKPT_MAX_RNGS + DTNH_CKPT_MAX_META)

static const char dtnh__ckpt_w_src_prefix[] = "dtnh.w_src.";

/* What save puts together in scratch: the tensor table, the metadata and its text. */
typedef struct dtnh__ckpt_table {
    dtnh_st_tensor *tensors;
    int count;
    dtnh_st_meta meta[DTNH__CKPT_MAX_META];
    char text[DTNH__CKPT_MAX_META][2][DTNH__CKPT_KEY];
    int meta_count;
} dtnh__ckpt_table;

/* The scalars of a file, parsed and checked before anything is restored. */
typedef struct dtnh__ckpt_scalars {
    long iteration, optim_step, optim_kind;
    uint64_t optim_lr_bits;
    long stream_next, stream_epoch;
    uint64_t stream_rng;
    uint64_t rng[DTNH_CKPT_MAX_RNGS];
} dtnh__ckpt_scalars;

static dtnh_status dtnh__ckpt_check(const dtnh_checkpoint *c, dtnh_error *err) {
    int i;
    if (!c || !c->net) return dtnh_fail(err, DTNH_ERR_ARG, "checkpoint: NULL checkpoint or network");
    if (!c->net->params.w || c->net->weights != c->net->params.w)
        return dtnh_fail(err, DTNH_ERR_ARG, "checkpoint: the network reads external weights; "
                         "checkpoint the network that owns them");
    if (c->with_source && !c->net->params.w_src)
        return dtnh_fail(err, DTNH_ERR_ARG, "checkpoint: with_source, but the network has no w_src "
                         "(role DTNH_ROLE_W_SRC)");
    if (c->optim && (c->optim->view_count != c->net->params.count || !c->optim->slots))
        return dtnh_fail(err, DTNH_ERR_ARG, "checkpoint: the optimizer has %d views, the network %d "
                         "(or its state was only counted)", c->optim->view_count, c->net->params.count);
    if (c->stream && !c->stream->order)
        return dtnh_fail(err, DTNH_ERR_ARG, "checkpoint: the stream was only counted, it has no order");
    if (c->rng_count < 0 || c->rng_count > DTNH_CKPT_MAX_RNGS || c->meta_count < 0 ||
        c->meta_count > DTNH_CKPT_MAX_META)
        return dtnh_fail(err, DTNH_ERR_ARG, "checkpoint: %d RNGs (at most %d) and %d metadata pairs "
                         "(at most %d)", c->rng_count, DTNH_CKPT_MAX_RNGS, c->meta_count, DTNH_CKPT_MAX_META);
    for (i = 0; i < c->rng_count; i++)
        if (!c->rngs[i] || !c->rng_names[i] || strlen(c->rng_names[i]) >= DTNH_NAME_SIZE)
            return dtnh_fail(err, DTNH_ERR_ARG, "checkpoint: RNG %d has no state or no name (or one "
                             "of %d characters or more)", i, DTNH_NAME_SIZE);
    for (i = 0; i < c->meta_count; i++)
        if (!c->meta[i].key || !c->meta[i].value || strncmp(c->meta[i].key, "dtnh.", 5) == 0)
            return dtnh_fail(err, DTNH_ERR_ARG, "checkpoint: metadata pair %d lacks a key or value, or "
                             "its key starts with \"dtnh.\" (reserved)", i);
    return DTNH_OK;
}

/* ---- saving --------------------------------------------------------------------------------- */

static void dtnh__ckpt_meta(dtnh__ckpt_table *t, const char *key, const char *value) {
    int i = t->meta_count++;
    DTNH_ASSERT(i < DTNH__CKPT_MAX_META && strlen(key) < DTNH__CKPT_KEY && strlen(value) < DTNH__CKPT_KEY);
    strcpy(t->text[i][0], key);
    strcpy(t->text[i][1], value);
    t->meta[i].key = t->text[i][0];
    t->meta[i].value = t->text[i][1];
}

static void dtnh__ckpt_meta_long(dtnh__ckpt_table *t, const char *key, long v) {
    char num[DTNH__CKPT_NUM];
    snprintf(num, sizeof num, "%ld", v);
    dtnh__ckpt_meta(t, key, num);
}

static void dtnh__ckpt_meta_u64(dtnh__ckpt_table *t, const char *key, uint64_t v, int hex) {
    char num[DTNH__CKPT_NUM];
    snprintf(num, sizeof num, hex ? "0x%016llx" : "%llu", (unsigned long long)v);
    dtnh__ckpt_meta(t, key, num);
}

static dtnh_st_tensor *dtnh__ckpt_add(dtnh__ckpt_table *t, const char *name, dtnh_st_dtype dtype,
                                      int ndim, int d0, int d1) {
    dtnh_st_tensor *x = &t->tensors[t->count++];
    memset(x, 0, sizeof *x);
    x->name = name;
    x->dtype = dtype;
    x->ndim = ndim;
    x->shape[0] = d0;
    x->shape[1] = d1;
    return x;
}

static dtnh_status dtnh__ckpt_add_state(dtnh__ckpt_table *t, const dtnh_resnet *net, dtnh_error *err) {
    int i, d, n = dtnh_resnet_state_count(net);
    for (i = 0; i < n; i++) {
        dtnh_state_entry e;
        dtnh_st_tensor *x;
        dtnh_status s = dtnh_resnet_state_entry(net, i, &e, err);
        if (s) return s;
        x = dtnh__ckpt_add(t, e.name, e.i64 ? DTNH_ST_I64 : DTNH_ST_F32, e.ndim, 0, 0);
        for (d = 0; d < e.ndim; d++) x->shape[d] = e.shape[d];
        x->f32 = e.f32;
        x->i64 = e.i64;
    }
    return DTNH_OK;
}

/* w_s view by view, under names kept in scratch. */
static dtnh_status dtnh__ckpt_add_source(dtnh__ckpt_table *t, const dtnh_params *p, dtnh_arena *scratch,
                                         dtnh_error *err) {
    char *names = NULL;
    int i, d;
    dtnh_status s = dtnh_arena_alloc(scratch, (size_t)p->count * DTNH__CKPT_KEY, 1, (void **)&names, err);
    if (s || !names) return s;
    for (i = 0; i < p->count; i++) {
        const dtnh_param_view *v = &p->views[i];
        char *name = names + (size_t)i * DTNH__CKPT_KEY;
        dtnh_st_tensor *x;
        snprintf(name, DTNH__CKPT_KEY, "%s%s", dtnh__ckpt_w_src_prefix, v->name);
        x = dtnh__ckpt_add(t, name, DTNH_ST_F32, v->ndim, 0, 0);
        for (d = 0; d < v->ndim; d++) x->shape[d] = v->shape[d];
        x->f32 = p->w_src + v->offset;
    }
    return DTNH_OK;
}

/* m, v, and per view (state offset or -1, steps taken) as I64 [views, 2]. */
static dtnh_status dtnh__ckpt_add_optim(dtnh__ckpt_table *t, const dtnh_optim *o, dtnh_arena *scratch,
                                        dtnh_error *err) {
    int64_t *slots = NULL;
    int i;
    dtnh_status s = dtnh_arena_alloc(scratch, (size_t)o->view_count * 2 * sizeof(int64_t), 0,
                                     (void **)&slots, err);
    if (s) return s;
    if (o->state_count > 0 && o->m) dtnh__ckpt_add(t, "dtnh.optim.m", DTNH_ST_F32, 1, (int)o->state_count, 0)->f32 = o->m;
    if (o->state_count > 0 && o->v) dtnh__ckpt_add(t, "dtnh.optim.v", DTNH_ST_F32, 1, (int)o->state_count, 0)->f32 = o->v;
    dtnh__ckpt_add(t, "dtnh.optim.slots", DTNH_ST_I64, 2, o->view_count, 2)->i64 = slots;
    for (i = 0; slots && i < o->view_count; i++) {
        size_t off = o->slots[i].state_offset;
        slots[2 * i] = off == DTNH_NO_STATE ? -1 : (int64_t)off;
        slots[2 * i + 1] = o->slots[i].steps;
    }
    dtnh__ckpt_meta_long(t, "dtnh.optim.step", o->step);
    dtnh__ckpt_meta_long(t, "dtnh.optim.kind", o->cfg.kind);
    {
        uint64_t bits;
        memcpy(&bits, &o->lr, sizeof bits);
        dtnh__ckpt_meta_u64(t, "dtnh.optim.lr", bits, 1);
    }
    return DTNH_OK;
}

static dtnh_status dtnh__ckpt_add_stream(dtnh__ckpt_table *t, const dtnh_batch_stream *bs,
                                         dtnh_arena *scratch, dtnh_error *err) {
    int64_t *order = NULL;
    int i;
    dtnh_status s = dtnh_arena_alloc(scratch, (size_t)bs->count * sizeof(int64_t), 0, (void **)&order, err);
    if (s) return s;
    dtnh__ckpt_add(t, "dtnh.stream.order", DTNH_ST_I64, 1, bs->count, 0)->i64 = order;
    for (i = 0; order && i < bs->count; i++) order[i] = bs->order[i];
    dtnh__ckpt_meta_long(t, "dtnh.stream.next", bs->next);
    dtnh__ckpt_meta_long(t, "dtnh.stream.epoch", bs->epoch);
    dtnh__ckpt_meta_u64(t, "dtnh.stream.rng", bs->rng.state, 0);
    return DTNH_OK;
}

/* Puts the whole table together in scratch; *t is NULL when scratch only counts. */
static dtnh_status dtnh__ckpt_table_build(const dtnh_checkpoint *c, dtnh_arena *scratch,
                                          dtnh__ckpt_table **out, dtnh_error *err) {
    const dtnh_resnet *net = c->net;
    int max = dtnh_resnet_state_count(net) + net->params.count + 4, i;
    dtnh__ckpt_table *t = NULL;
    dtnh_st_tensor *tensors = NULL;
    dtnh_status s;
    *out = NULL;
    if ((s = dtnh_arena_alloc(scratch, sizeof *t, 0, (void **)&t, err)) ||
        (s = dtnh_arena_alloc(scratch, (size_t)max * sizeof *tensors, 0, (void **)&tensors, err)))
        return s;
    if (!t) { /* counting: the same allocations as below, nothing written */
        if (c->with_source) s = dtnh__ckpt_add_source(t, &net->params, scratch, err);
        if (!s && c->optim) s = dtnh_arena_alloc(scratch, (size_t)c->optim->view_count * 2 * sizeof(int64_t), 0, (void **)&tensors, err);
        if (!s && c->stream) s = dtnh_arena_alloc(scratch, (size_t)c->stream->count * sizeof(int64_t), 0, (void **)&tensors, err);
        return s;
    }
    memset(t, 0, sizeof *t);
    t->tensors = tensors;
    dtnh__ckpt_meta(t, "format", "pt");
    dtnh__ckpt_meta(t, "dtnh.checkpoint", DTNH__CKPT_VERSION);
    dtnh__ckpt_meta_long(t, "dtnh.iteration", c->iteration);
    if ((s = dtnh__ckpt_add_state(t, net, err))) return s;
    if (c->with_source && (s = dtnh__ckpt_add_source(t, &net->params, scratch, err))) return s;
    if (c->optim && (s = dtnh__ckpt_add_optim(t, c->optim, scratch, err))) return s;
    if (c->stream && (s = dtnh__ckpt_add_stream(t, c->stream, scratch, err))) return s;
    for (i = 0; i < c->rng_count; i++) {
        char key[DTNH__CKPT_KEY];
        snprintf(key, sizeof key, "dtnh.rng.%s", c->rng_names[i]);
        dtnh__ckpt_meta_u64(t, key, c->rngs[i]->state, 0);
    }
    for (i = 0; i < c->meta_count; i++) {
        if (strlen(c->meta[i].key) >= DTNH__CKPT_KEY || strlen(c->meta[i].value) >= DTNH__CKPT_KEY)
            return dtnh_fail(err, DTNH_ERR_ARG, "checkpoint: metadata '%.32s' is longer than %d "
                             "characters", c->meta[i].key, DTNH__CKPT_KEY - 1);
        dtnh__ckpt_meta(t, c->meta[i].key, c->meta[i].value);
    }
    *out = t;
    return DTNH_OK;
}

DTNHDEF dtnh_status dtnh_checkpoint_save_memory(const dtnh_checkpoint *c, dtnh_arena *scratch,
                                                void *buf, size_t capacity, size_t *size,
                                                dtnh_error *err) {
    dtnh__ckpt_table *t;
    size_t mark;
    dtnh_status s;
    if (!scratch) return dtnh_fail(err, DTNH_ERR_ARG, "checkpoint_save: NULL scratch arena");
    if ((s = dtnh__ckpt_check(c, err))) return s;
    mark = dtnh_arena_mark(scratch);
    s = dtnh__ckpt_table_build(c, scratch, &t, err);
    if (!s && t) s = dtnh_st_write_memory(t->tensors, t->count, t->meta, t->meta_count, buf, capacity, size, err);
    dtnh_arena_reset(scratch, mark);
    return s;
}

/* ---- loading ---------------------------------------------------------------------------------- */

/* Decimal (or 0x-prefixed hexadecimal) digits only, no sign, no overflow. */
static int dtnh__ckpt_parse_u64(const char *s, uint64_t *out) {
    uint64_t v = 0, base = 10;
    if (!s || !*s) return 0;
    if (s[0] == '0' && s[1] == 'x') {
        base = 16;
        s += 2;
        if (!*s) return 0;
    }
    for (; *s; s++) {
        uint64_t d;
        if (*s >= '0' && *s <= '9') d = (uint64_t)(*s - '0');
        else if (base == 16 && *s >= 'a' && *s <= 'f') d = (uint64_t)(*s - 'a' + 10);
        else return 0;
        if (v > (UINT64_MAX - d) / base) return 0;
        v = v * base + d;
    }
    *out = v;
    return 1;
}

/* A metadata number in [lo, hi] into *out; fails naming the key. */
static dtnh_status dtnh__ckpt_get_long(const dtnh_st_file *f, const char *key, long lo, long hi,
                                       long *out, dtnh_error *err) {
    const char *text = dtnh_st_meta_get(f, key);
    uint64_t v;
    int neg = text && text[0] == '-';
    if (!text || !dtnh__ckpt_parse_u64(text + neg, &v) || v > (uint64_t)LONG_MAX ||
        (neg ? -(long)v : (long)v) < lo || (neg ? -(long)v : (long)v) > hi)
        return dtnh_fail(err, DTNH_ERR_FORMAT, "checkpoint: metadata '%s' is '%s', expected an integer in "
                         "[%ld, %ld]", key, text ? text : "(missing)", lo, hi);
    *out = neg ? -(long)v : (long)v;
    return DTNH_OK;
}

static dtnh_status dtnh__ckpt_get_u64(const dtnh_st_file *f, const char *key, uint64_t *out,
                                      dtnh_error *err) {
    const char *text = dtnh_st_meta_get(f, key);
    if (!text || !dtnh__ckpt_parse_u64(text, out))
        return dtnh_fail(err, DTNH_ERR_FORMAT, "checkpoint: metadata '%s' is '%s', expected an unsigned "
                         "64-bit integer", key, text ? text : "(missing)");
    return DTNH_OK;
}

static dtnh_status dtnh__ckpt_check_version(const dtnh_st_file *f, dtnh_error *err) {
    const char *version = dtnh_st_meta_get(f, "dtnh.checkpoint");
    if (!version || strcmp(version, DTNH__CKPT_VERSION) != 0)
        return dtnh_fail(err, DTNH_ERR_FORMAT, "checkpoint: metadata 'dtnh.checkpoint' is '%s', expected "
                         "'%s' (a weights file is not a checkpoint)", version ? version : "(missing)",
                         DTNH__CKPT_VERSION);
    return DTNH_OK;
}

static dtnh_status dtnh__ckpt_read_scalars(const dtnh_checkpoint *c, const dtnh_st_file *f,
                                           dtnh__ckpt_scalars *v, dtnh_error *err) {
    dtnh_status s;
    int i;
    memset(v, 0, sizeof *v);
    if ((s = dtnh__ckpt_get_long(f, "dtnh.iteration", 0, LONG_MAX, &v->iteration, err))) return s;
    if (c->optim &&
        ((s = dtnh__ckpt_get_long(f, "dtnh.optim.step", 0, LONG_MAX, &v->optim_step, err)) ||
         (s = dtnh__ckpt_get_long(f, "dtnh.optim.kind", c->optim->cfg.kind, c->optim->cfg.kind,
                                  &v->optim_kind, err)) ||
         (s = dtnh__ckpt_get_u64(f, "dtnh.optim.lr", &v->optim_lr_bits, err))))
        return s;
    if (c->stream &&
        ((s = dtnh__ckpt_get_long(f, "dtnh.stream.next", 0, c->stream->count, &v->stream_next, err)) ||
         (s = dtnh__ckpt_get_long(f, "dtnh.stream.epoch", 0, INT_MAX, &v->stream_epoch, err)) ||
         (s = dtnh__ckpt_get_u64(f, "dtnh.stream.rng", &v->stream_rng, err))))
        return s;
    for (i = 0; i < c->rng_count; i++) {
        char key[DTNH__CKPT_KEY];
        snprintf(key, sizeof key, "dtnh.rng.%s", c->rng_names[i]);
        if ((s = dtnh__ckpt_get_u64(f, key, &v->rng[i], err))) return s;
    }
    return DTNH_OK;
}

/* The index of tensor name, checked for dtype and shape (and finite values for floats). */
static dtnh_status dtnh__ckpt_find(dtnh_st_file *f, const char *name, dtnh_st_dtype dtype, int ndim,
                                   const int *shape, int *index, dtnh_error *err) {
    int i = dtnh_st_find(f, name), d;
    char want[64] = "";
    size_t used = 0;
    if (i >= 0 && f->entries[i].dtype == dtype && dtnh_st_shape_is(f, i, ndim, shape)) {
        *index = i;
        return dtype == DTNH_ST_I64 ? DTNH_OK : dtnh_st_check_finite(f, i, err);
    }
    for (d = 0; d < ndim && used < sizeof want - 16; d++)
        used += (size_t)snprintf(want + used, sizeof want - used, d ? ", %d" : "%d", shape[d]);
    if (i < 0) return dtnh_fail(err, DTNH_ERR_FORMAT, "checkpoint: tensor '%s' is missing", name);
    return dtnh_fail(err, DTNH_ERR_FORMAT, "checkpoint: tensor '%s' is %s with %d dimension(s), expected "
                     "%s [%s]", name, dtnh_st_dtype_name(f->entries[i].dtype), f->entries[i].ndim,
                     dtnh_st_dtype_name(dtype), want);
}

static dtnh_status dtnh__ckpt_check_state(const dtnh_resnet *net, dtnh_st_file *f, dtnh_error *err) {
    int i, n = dtnh_resnet_state_count(net), at;
    for (i = 0; i < n; i++) {
        dtnh_state_entry e;
        dtnh_status s = dtnh_resnet_state_entry(net, i, &e, err);
        if (s || (s = dtnh__ckpt_find(f, e.name, e.i64 ? DTNH_ST_I64 : DTNH_ST_F32, e.ndim, e.shape, &at, err)))
            return s;
    }
    return DTNH_OK;
}

static dtnh_status dtnh__ckpt_check_source(const dtnh_params *p, dtnh_st_file *f, dtnh_error *err) {
    int i, at;
    for (i = 0; i < p->count; i++) {
        char name[DTNH__CKPT_KEY];
        dtnh_status s;
        snprintf(name, sizeof name, "%s%s", dtnh__ckpt_w_src_prefix, p->views[i].name);
        if ((s = dtnh__ckpt_find(f, name, DTNH_ST_F32, p->views[i].ndim, p->views[i].shape, &at, err)))
            return s;
    }
    return DTNH_OK;
}

/* Reads the slots table into scratch (slots) and checks it against the optimizer's layout. */
static dtnh_status dtnh__ckpt_check_optim(const dtnh_optim *o, dtnh_st_file *f, int64_t *slots,
                                          dtnh_error *err) {
    int shape[2], at, i;
    dtnh_status s;
    shape[0] = (int)o->state_count;
    if (o->m && o->state_count && (s = dtnh__ckpt_find(f, "dtnh.optim.m", DTNH_ST_F32, 1, shape, &at, err))) return s;
    if (o->v && o->state_count && (s = dtnh__ckpt_find(f, "dtnh.optim.v", DTNH_ST_F32, 1, shape, &at, err))) return s;
    if ((!o->m || !o->state_count) && dtnh_st_find(f, "dtnh.optim.m") >= 0)
        return dtnh_fail(err, DTNH_ERR_FORMAT, "checkpoint: the file has momentum (dtnh.optim.m), the optimizer none");
    if ((!o->v || !o->state_count) && dtnh_st_find(f, "dtnh.optim.v") >= 0)
        return dtnh_fail(err, DTNH_ERR_FORMAT, "checkpoint: the file has second moments (dtnh.optim.v), the optimizer none");
    shape[0] = o->view_count;
    shape[1] = 2;
    if ((s = dtnh__ckpt_find(f, "dtnh.optim.slots", DTNH_ST_I64, 2, shape, &at, err)) ||
        (s = dtnh_st_read_i64(f, at, slots, (size_t)o->view_count * 2, err)))
        return s;
    for (i = 0; i < o->view_count; i++) {
        size_t off = o->slots[i].state_offset;
        int64_t want = off == DTNH_NO_STATE ? -1 : (int64_t)off;
        if (slots[2 * i] != want || slots[2 * i + 1] < 0)
            return dtnh_fail(err, DTNH_ERR_FORMAT, "checkpoint: optimizer view %d has state offset %lld and "
                             "%lld steps, expected offset %lld (the same views trainable) and steps >= 0", i,
                             (long long)slots[2 * i], (long long)slots[2 * i + 1], (long long)want);
    }
    return DTNH_OK;
}

/* Reads the stream's order into scratch (order) and checks it is a permutation (seen: count
   bytes of scratch). */
static dtnh_status dtnh__ckpt_check_stream(const dtnh_batch_stream *bs, dtnh_st_file *f, int64_t *order,
                                           unsigned char *seen, dtnh_error *err) {
    int at, i;
    dtnh_status s = dtnh__ckpt_find(f, "dtnh.stream.order", DTNH_ST_I64, 1, &bs->count, &at, err);
    if (s || (s = dtnh_st_read_i64(f, at, order, (size_t)bs->count, err))) return s;
    memset(seen, 0, (size_t)bs->count);
    for (i = 0; i < bs->count; i++) {
        if (order[i] < 0 || order[i] >= bs->count || seen[order[i]])
            return dtnh_fail(err, DTNH_ERR_FORMAT, "checkpoint: the stream order holds %lld at %d, expected "
                             "a permutation of [0, %d)", (long long)order[i], i, bs->count);
        seen[order[i]] = 1;
    }
    return DTNH_OK;
}

/* Everything checked: now the copies. */
static dtnh_status dtnh__ckpt_restore(dtnh_checkpoint *c, dtnh_st_file *f, const dtnh__ckpt_scalars *v,
                                      const int64_t *slots, const int64_t *order, dtnh_error *err) {
    dtnh_params *p = &c->net->params;
    dtnh_status s;
    int i;
    if ((s = dtnh_resnet_load(c->net, f, NULL, NULL, err))) return s;
    for (i = 0; c->with_source && i < p->count; i++) {
        char name[DTNH__CKPT_KEY];
        snprintf(name, sizeof name, "%s%s", dtnh__ckpt_w_src_prefix, p->views[i].name);
        if ((s = dtnh_st_read_f32(f, dtnh_st_find(f, name), p->w_src + p->views[i].offset, p->views[i].count, err)))
            return s;
    }
    if (c->optim) {
        dtnh_optim *o = c->optim;
        if (o->m && o->state_count && (s = dtnh_st_read_f32(f, dtnh_st_find(f, "dtnh.optim.m"), o->m, o->state_count, err)))
            return s;
        if (o->v && o->state_count && (s = dtnh_st_read_f32(f, dtnh_st_find(f, "dtnh.optim.v"), o->v, o->state_count, err)))
            return s;
        for (i = 0; i < o->view_count; i++) o->slots[i].steps = (long)slots[2 * i + 1];
        o->step = v->optim_step;
        memcpy(&o->lr, &v->optim_lr_bits, sizeof o->lr);
    }
    if (c->stream) {
        for (i = 0; i < c->stream->count; i++) c->stream->order[i] = (int)order[i];
        c->stream->next = (int)v->stream_next;
        c->stream->epoch = (int)v->stream_epoch;
        c->stream->rng.state = v->stream_rng;
    }
    for (i = 0; i < c->rng_count; i++) c->rngs[i]->state = v->rng[i];
    c->iteration = v->iteration;
    return DTNH_OK;
}

static dtnh_status dtnh__ckpt_load(dtnh_checkpoint *c, dtnh_st_file *f, dtnh_arena *scratch,
                                   dtnh_error *err) {
    dtnh__ckpt_scalars v;
    int64_t *slots = NULL, *order = NULL;
    unsigned char *seen = NULL;
    dtnh_status s;
    if (c->optim && (s = dtnh_arena_alloc(scratch, (size_t)c->optim->view_count * 2 * sizeof(int64_t), 0,
                                          (void **)&slots, err)))
        return s;
    if (c->stream && ((s = dtnh_arena_alloc(scratch, (size_t)c->stream->count * sizeof(int64_t), 0,
                                            (void **)&order, err)) ||
                      (s = dtnh_arena_alloc(scratch, (size_t)c->stream->count, 1, (void **)&seen, err))))
        return s;
    if (dtnh_arena_is_counting(scratch)) return DTNH_OK;
    if ((s = dtnh__ckpt_check_version(f, err)) || (s = dtnh__ckpt_check_state(c->net, f, err)) ||
        (s = dtnh__ckpt_read_scalars(c, f, &v, err)) ||
        (c->with_source && (s = dtnh__ckpt_check_source(&c->net->params, f, err))) ||
        (c->optim && (s = dtnh__ckpt_check_optim(c->optim, f, slots, err))) ||
        (c->stream && (s = dtnh__ckpt_check_stream(c->stream, f, order, seen, err))))
        return s;
    return dtnh__ckpt_restore(c, f, &v, slots, order, err);
}

DTNHDEF dtnh_status dtnh_checkpoint_load(dtnh_checkpoint *c, dtnh_st_file *f, dtnh_arena *scratch,
                                         dtnh_error *err) {
    size_t mark;
    dtnh_status s;
    if (!f || !scratch) return dtnh_fail(err, DTNH_ERR_ARG, "checkpoint_load: NULL file or scratch arena");
    if ((s = dtnh__ckpt_check(c, err))) return s;
    mark = dtnh_arena_mark(scratch);
    s = dtnh__ckpt_load(c, f, scratch, err);
    dtnh_arena_reset(scratch, mark);
    return s;
}

#ifndef DTNH_NO_STDIO
DTNHDEF dtnh_status dtnh_checkpoint_save(const dtnh_checkpoint *c, const char *path,
                                         dtnh_arena *scratch, dtnh_error *err) {
    dtnh__ckpt_table *t;
    size_t mark;
    dtnh_status s;
    if (!scratch) return dtnh_fail(err, DTNH_ERR_ARG, "checkpoint_save: NULL scratch arena");
    if ((s = dtnh__ckpt_check(c, err))) return s;
    mark = dtnh_arena_mark(scratch);
    s = dtnh__ckpt_table_build(c, scratch, &t, err);
    if (!s && t) s = dtnh_st_save(path, t->tensors, t->count, t->meta, t->meta_count, err);
    dtnh_arena_reset(scratch, mark);
    return s;
}

DTNHDEF dtnh_status dtnh_checkpoint_load_file(dtnh_checkpoint *c, const char *path,
                                              dtnh_arena *scratch, dtnh_error *err) {
    dtnh_st_file f;
    size_t mark;
    dtnh_status s;
    if (!scratch) return dtnh_fail(err, DTNH_ERR_ARG, "checkpoint_load: NULL scratch arena");
    if ((s = dtnh__ckpt_check(c, err))) return s;
    memset(&f, 0, sizeof f); /* closed below even when the open fails early */
    mark = dtnh_arena_mark(scratch);
    s = dtnh_st_open(&f, path, scratch, err);
    if (!s) s = dtnh__ckpt_load(c, &f, scratch, err);
    dtnh_st_close(&f);
    dtnh_arena_reset(scratch, mark);
    return s;
}
#endif

/* ---- numeric guards ------------------------------------------------------------------------- */

static dtnh_status dtnh__guard_fail(const dtnh_param_view *v, const char *what, const float *x, size_t bad,
                                    dtnh_error *err) {
    return dtnh_fail(err, DTNH_ERR_NUMERIC, "%s of view '%s' holds %g at element %zu: step skipped", what,
                     v->name, (double)x[bad], bad);
}

/* x over the views of p (the trainable ones only, or all). */
static dtnh_status dtnh__guard_vector(const dtnh_params *p, const float *x, const char *what,
                                      int trainable_only, dtnh_error *err) {
    int i;
    for (i = 0; x && i < p->count; i++) {
        const dtnh_param_view *v = &p->views[i];
        size_t bad = 0;
        if ((!trainable_only || v->trainable) && !dtnh_all_finite(v->count, x + v->offset, &bad))
            return dtnh__guard_fail(v, what, x + v->offset, bad, err);
    }
    return DTNH_OK;
}

/* An optimizer vector (m or v): each view's slice at its state offset. */
static dtnh_status dtnh__guard_state(const dtnh_params *p, const dtnh_optim *o, const float *x,
                                     const char *what, dtnh_error *err) {
    int i;
    for (i = 0; x && i < o->view_count && i < p->count; i++) {
        size_t off = o->slots[i].state_offset, bad = 0;
        const dtnh_param_view *v = &p->views[i];
        if (off != DTNH_NO_STATE && off + v->count <= o->state_count && !dtnh_all_finite(v->count, x + off, &bad))
            return dtnh__guard_fail(v, what, x + off, bad, err);
    }
    return DTNH_OK;
}

DTNHDEF dtnh_status dtnh_check_step_finite(const dtnh_params *p, const dtnh_optim *o, double loss,
                                           const float *g_j, const float *g_omega,
                                           dtnh_error *err) {
    dtnh_status s;
    if (!p || !p->views) return dtnh_fail(err, DTNH_ERR_ARG, "check_step_finite: NULL or counting store");
    if (!(loss - loss == 0))
        return dtnh_fail(err, DTNH_ERR_NUMERIC, "the loss is %g: step skipped", loss);
    if ((s = dtnh__guard_vector(p, p->w, "the weights", 0, err)) ||
        (s = dtnh__guard_vector(p, p->w_src, "the source weights w_s", 0, err)) ||
        (s = dtnh__guard_vector(p, g_j, "g_J", 1, err)) ||
        (s = dtnh__guard_vector(p, g_omega, "g_Omega", 1, err)))
        return s;
    if (o && o->slots &&
        ((s = dtnh__guard_state(p, o, o->m, "the optimizer's momentum (first moment)", err)) ||
         (s = dtnh__guard_state(p, o, o->v, "the optimizer's second moment", err))))
        return s;
    return DTNH_OK;
}
