/* dtnh-train: pre-train a ResNet-18 from scratch, or fine-tune one from a safetensors source
   with a regularizer (L2, L2-SP, feature maps, DELTA, attention transfer), plainly or with the
   DTNH step of Wan et al. (ICDM 2019). `dtnh-train --help` lists every option; `make demo`
   and `make source` show whole runs. For instance (from the repository root, after make):

     # pre-train a width-16 source on Fashion-MNIST classes 0-4 (what `make source` does)
     bin/dtnh-train --data data/fashion-train-images-idx3-ubyte \
         --labels data/fashion-train-labels-idx1-ubyte --classes 0,1,2,3,4 --width 16 \
         --reg l2 --dtnh off --alpha 0.0005 --lr 0.05 --iters 1400 --save fm04.safetensors
     # fine-tune it on 30 digits per class of 5-9 with DTNH(L2-SP); log, plots, weights
     bin/dtnh-train --weights fm04.safetensors --data data/digits-train-images-idx3-ubyte \
         --labels data/digits-train-labels-idx1-ubyte --classes 5,6,7,8,9 --shots 30 \
         --test-data data/digits-test-images-idx3-ubyte \
         --test-labels data/digits-test-labels-idx1-ubyte --reg l2sp --dtnh global \
         --log run.csv --plot run.svg --save digits59.safetensors
     # its accuracy, per class and as a confusion matrix (the classes come from the file)
     bin/dtnh-eval --weights digits59.safetensors --data data/digits-test-images-idx3-ubyte \
         --labels data/digits-test-labels-idx1-ubyte

   Pixel bytes v become (v/255 - mean)/std per channel (--mean, --std: 0.5 and 0.5). The
   output is one line per step of progress (redrawn in place on a terminal), a line per
   evaluation, then the test and validation results, the share of steps whose gradients
   conflicted, and a machine-readable "result:" line.

   Exit status: 0 on success; 1 with a one-line reason on bad input or a failure; 3 when
   training diverged (NaN or Inf): the log and plots are still written, the weights are not. */
#define _POSIX_C_SOURCE 200809L
#include "../dtnh.h"
#include "../dtnh_nn.h"
#define CLI_IMPLEMENTATION
#include "cli.h"
#define SVG_IMPLEMENTATION
#include "svg.h"
#define RUNLOG_IMPLEMENTATION
#include "runlog.h"
#include "prog.h"
#include "train_opts.h"

#define PROG "dtnh-train"
#define EXIT_DIVERGED 3

static const char *const reg_names[] = {"none", "L2", "L2-SP", "feature maps", "DELTA", "attention transfer"};

/* Everything one run holds; static, as the network structs are large. */
typedef struct trainer {
    train_opts o;
    prog_data train, test;
    int *train_ids, ntrain, *val_ids, nval; /* image indices into train.ds */
    int *held_ids, nheld;                   /* test images drawn from train.ds (--test-fraction, --test-rest) */
    prog_data *test_set;                    /* &test, &train with held-out images, or NULL */
    const int *test_ids;                    /* ntest image indices into test_set->ds */
    int ntest;
    int classes;
    dtnh_resnet_config cfg;
    dtnh_augment_config aug_train, aug_eval;
    dtnh_resnet net;
    dtnh_fmap_reg reg;
    dtnh_optim opt, head_opt;
    dtnh_direction_config dc;
    dtnh_l2sp_config rc;
    dtnh_arena pa, sa;
    void *pmem, *smem;
    size_t persistent_bytes, step_bytes;
    prog_batch batch;
    float *dlogits;
    dtnh_batch_stream stream;
    void *stream_mem;
    dtnh_rng aug_rng;
    runlog log;
    char command[2048];
    int diverged, terminal, conflicts;
    double t0;
} trainer;

static trainer T;

static int is_fmap(int reg) { return reg == REG_FM || reg == REG_DELTA || reg == REG_AT; }

/* Plain distillation needs only g_J + g_Omega: one backward pass carries the loss and the hooks
   together, and cos(g_J, g_Omega) goes unmeasured (--angles measures it with a second pass). */
static int one_backward(const trainer *t) { return is_fmap(t->o.reg) && t->o.dtnh == MODE_OFF && !t->o.angles; }

/* Combinations the table cannot express. */
static int check_options(trainer *t) {
    train_opts *o = &t->o;
    if (!o->data) return prog_fail(PROG, "--data is required (see --help)");
    if (!o->weights && (o->reg == REG_L2SP || is_fmap(o->reg)))
        return prog_fail(PROG, "--reg %s needs --weights (a source model); from scratch use --reg l2 or none",
                         o->reg == REG_L2SP ? "l2sp" : o->reg == REG_FM ? "fm" : o->reg == REG_DELTA ? "delta" : "at");
    if (o->test_labels && !o->test_data) return prog_fail(PROG, "--test-labels needs --test-data");
    if ((o->test_data != NULL) + (o->test_fraction > 0) + o->test_rest > 1)
        return prog_fail(PROG, "--test-data, --test-fraction and --test-rest each name the test set: give one");
    if (o->test_rest && !o->shots) return prog_fail(PROG, "--test-rest needs --shots (without it no image is left)");
    if (o->head_iters < 0) o->head_iters = o->reg == REG_DELTA ? 50 : 0;
    if (o->eval_every < 0) o->eval_every = o->iters >= 10 ? o->iters / 10 : 1;
    if (o->checkpoint_every && !o->checkpoint) return prog_fail(PROG, "--checkpoint-every needs --checkpoint");
    if (!o->checkpoint_every) o->checkpoint_every = o->iters >= 10 ? o->iters / 10 : 1;
    return 0;
}

/* ---- data ----------------------------------------------------------------------------------- */

/* Labels of the images part[] puts in `which` (others -1), for the draws that follow. */
static int *labels_of_part(const int *labels, const int *part, int count, int which) {
    int *l = (int *)prog_malloc((size_t)count * sizeof(int)), i;
    if (l)
        for (i = 0; i < count; i++) l[i] = part[i] == which ? labels[i] : -1;
    return l;
}

/* The draws from --data, all seeded: the --test-fraction hold-out first, then --shots training
   and --val-shots validation images per class, and with --test-rest what they leave. */
static dtnh_status split_train(trainer *t, dtnh_error *err) {
    prog_data *d = &t->train;
    int per_class[3], *part, *labels, i, count = d->ds.count;
    dtnh_rng rng;
    dtnh_status s = DTNH_OK;
    char what[96];
    per_class[0] = t->o.shots ? t->o.shots : DTNH_SPLIT_REST;
    per_class[1] = t->o.val_shots;
    per_class[2] = DTNH_SPLIT_REST;
    t->train_ids = (int *)prog_malloc((size_t)count * sizeof(int));
    t->val_ids = (int *)prog_malloc((size_t)count * sizeof(int));
    t->held_ids = (int *)prog_malloc((size_t)count * sizeof(int));
    part = (int *)prog_malloc((size_t)count * sizeof(int));
    labels = d->labels;
    if (!t->train_ids || !t->val_ids || !t->held_ids || !part) {
        free(part);
        return dtnh_fail(err, DTNH_ERR_NOMEM, "out of memory");
    }
    dtnh_rng_seed(&rng, (uint64_t)t->o.seed);
    if (t->o.test_fraction > 0) {
        if ((s = dtnh_split_fraction(d->labels, count, d->classes, t->o.test_fraction, &rng, part, err))) goto done;
        for (i = 0; i < count; i++)
            if (part[i] == 1) t->held_ids[t->nheld++] = i;
        if (!(labels = labels_of_part(d->labels, part, count, 0))) {
            s = dtnh_fail(err, DTNH_ERR_NOMEM, "out of memory");
            goto done;
        }
    }
    s = dtnh_split_per_class(labels, count, d->classes, per_class, t->o.test_rest ? 3 : 2, &rng, part, err);
    for (i = 0; !s && i < count; i++) {
        if (part[i] == 0) t->train_ids[t->ntrain++] = i;
        if (part[i] == 1) t->val_ids[t->nval++] = i;
        if (part[i] == 2) t->held_ids[t->nheld++] = i;
    }
done:
    if (labels != d->labels) free(labels);
    free(part);
    snprintf(what, sizeof what, "--shots %d --val-shots %d%s", t->o.shots, t->o.val_shots,
             t->o.test_fraction > 0 ? " after --test-fraction" : "");
    if (s) return prog_prefix(s, what, err);
    if (t->ntrain < 1) return dtnh_fail(err, DTNH_ERR_ARG, "%s: no training images left", d->path);
    return DTNH_OK;
}

static dtnh_status open_data(trainer *t, dtnh_error *err) {
    const cli_int_list *c = &t->o.classes;
    dtnh_status s;
    if ((s = prog_data_open(&t->train, t->o.data, t->o.labels, c->v, c->count, 1, err))) return s;
    t->classes = t->train.classes;
    if (t->classes < 2) return dtnh_fail(err, DTNH_ERR_ARG, "%s: %d class, a classifier needs 2 or more", t->o.data, t->classes);
    if ((s = split_train(t, err))) return s;
    if (t->nheld) {
        t->test_set = &t->train;
        t->test_ids = t->held_ids;
        t->ntest = t->nheld;
    }
    if (!t->o.test_data) return DTNH_OK;
    if ((s = prog_data_open(&t->test, t->o.test_data, t->o.test_labels, c->v, c->count, 1, err))) return s;
    if (t->test.ds.channels != t->train.ds.channels || t->test.ds.height != t->train.ds.height ||
        t->test.ds.width != t->train.ds.width)
        return dtnh_fail(err, DTNH_ERR_SHAPE, "%s: images are %dx%dx%d, the training images %dx%dx%d", t->o.test_data,
                         t->test.ds.channels, t->test.ds.height, t->test.ds.width, t->train.ds.channels,
                         t->train.ds.height, t->train.ds.width);
    if (!c->count && (s = dtnh_dataset_set_classes(&t->test.ds, t->classes, err))) return s; /* names a stray label */
    t->test_set = &t->test;
    t->test_ids = t->test.ids;
    t->ntest = t->test.n;
    return DTNH_OK;
}

/* ---- the network ---------------------------------------------------------------------------- */

static dtnh_status configure(trainer *t, dtnh_error *err) {
    train_opts *o = &t->o;
    dtnh_resnet_config *c = &t->cfg;
    static char hook_names[DTNH_RESNET_MAX_HOOKS][DTNH_NAME_SIZE];
    int data_ch = t->train.ds.channels, i;
    char msg[256];
    memset(c, 0, sizeof *c);
    if (o->weights) {
        prog_weights_info wi;
        dtnh_status s = prog_weights_info_read(o->weights, &wi, err);
        if (s) return s;
        *c = wi.cfg;
    } else {
        c->width = o->width;
        c->stem = o->stem == STEM_CIFAR ? DTNH_STEM_CIFAR : DTNH_STEM_IMAGENET;
        c->in_channels = o->in_channels ? o->in_channels : data_ch;
    }
    if (c->in_channels != data_ch && !(data_ch == 1 && c->in_channels == 3))
        return dtnh_fail(err, DTNH_ERR_SHAPE, "%s: images have %d channels, the network takes %d", o->data, data_ch,
                         c->in_channels);
    c->num_classes = t->classes;
    c->height = o->size ? o->size : t->train.ds.height;
    c->width_px = o->size ? o->size : t->train.ds.width;
    c->max_batch = o->batch;
    c->winograd = o->winograd;
    c->seed = (uint64_t)o->seed;
    c->roles = DTNH_ROLE_W | DTNH_ROLE_G_J;
    if (o->reg == REG_L2SP || is_fmap(o->reg)) c->roles |= DTNH_ROLE_W_SRC;
    if (is_fmap(o->reg)) c->roles |= DTNH_ROLE_G_OMEGA;
    if (is_fmap(o->reg)) {
        c->hook_count = prog_split_names(o->hooks, hook_names, DTNH_RESNET_MAX_HOOKS);
        if (c->hook_count < 1)
            return dtnh_fail(err, DTNH_ERR_ARG, "--hooks '%s': expected 1 to %d comma-separated layer names", o->hooks,
                             DTNH_RESNET_MAX_HOOKS);
        for (i = 0; i < c->hook_count; i++) c->hooks[i] = hook_names[i];
    }
    memset(&t->aug_eval, 0, sizeof t->aug_eval);
    t->aug_eval.out_channels = c->in_channels;
    t->aug_eval.out_height = c->height;
    t->aug_eval.out_width = c->width_px;
    if (prog_normalisation(o->mean, o->std, c->in_channels, &t->aug_eval, msg, sizeof msg))
        return dtnh_fail(err, DTNH_ERR_ARG, "%s", msg);
    t->aug_train = t->aug_eval;
    t->aug_train.pad = o->crop_pad;
    t->aug_train.flip = o->flip;
    return DTNH_OK;
}

static dtnh_train train_mode(int freeze, int *stages) {
    static const int stages_of[] = {0, 4, 3, 2, 1};
    *stages = freeze <= FREEZE_LAYER3 ? stages_of[freeze] : 0;
    if (freeze == FREEZE_NONE) return DTNH_TRAIN_ALL;
    if (freeze <= FREEZE_LAYER3) return DTNH_TRAIN_LAST_STAGES;
    return freeze == FREEZE_BACKBONE ? DTNH_TRAIN_HEAD : DTNH_TRAIN_BN_BIAS;
}

static dtnh_optim_config optim_config(const train_opts *o) {
    dtnh_optim_config oc;
    int i;
    memset(&oc, 0, sizeof oc);
    oc.kind = o->optim == OPT_ADAM ? DTNH_OPTIM_ADAM : DTNH_OPTIM_SGD;
    oc.lr = o->lr;
    oc.momentum = o->optim == OPT_MOMENTUM ? o->momentum : 0;
    if (o->lr_step.count) {
        oc.schedule.kind = DTNH_SCHEDULE_STEP;
        oc.schedule.n_milestones = o->lr_step.count < DTNH_MAX_MILESTONES ? o->lr_step.count : DTNH_MAX_MILESTONES;
        for (i = 0; i < oc.schedule.n_milestones; i++) oc.schedule.milestones[i] = o->lr_step.v[i];
    }
    return oc;
}

/* The source's weights into w (and w_s), a fresh head for the target's classes. */
static dtnh_status load_source(trainer *t, dtnh_error *err) {
    dtnh_params *p = &t->net.params;
    dtnh_st_file f;
    dtnh_load_report rep;
    void *mem;
    dtnh_status s = prog_st_open(&f, t->o.weights, &mem, err);
    if (!s) s = prog_name_file(dtnh_resnet_load(&t->net, &f, NULL, &rep, err), t->o.weights, err);
    dtnh_st_close(&f);
    free(mem);
    if (s) return s;
    if (rep.missing > 0)
        return dtnh_fail(err, DTNH_ERR_FORMAT, "%s lacks %d tensors of the network: %s", t->o.weights, rep.missing,
                         rep.missing_names);
    printf("weights: %d tensors from %s", rep.loaded, t->o.weights);
    if (rep.unknown) printf(", %d unknown ignored (%s)", rep.unknown, rep.unknown_names);
    if (!rep.head_skipped && t->o.keep_head) printf(", its head kept\n");
    else {
        dtnh_resnet_init_head(&t->net, (uint64_t)t->o.seed + 1);
        printf(", a new head for %d classes (the file's has %d)\n", t->classes, rep.file_classes);
    }
    if (p->w_src) dtnh_copy(p->total, p->w, p->w_src);
    return DTNH_OK;
}

/* Every persistent allocation, through one path: a counting arena sizes what an assigning
   one then holds. */
static dtnh_status build(trainer *t, dtnh_arena *pa, dtnh_error *err) {
    dtnh_optim_config oc = optim_config(&t->o);
    int stages, i;
    dtnh_train mode = train_mode(t->o.freeze, &stages);
    dtnh_status s;
    t->cfg.train = mode;
    t->cfg.train_stages = stages;
    if ((s = dtnh_resnet_init(&t->net, &t->cfg, pa, err))) return strstr(err->msg, "hook") ? prog_prefix(s, "--hooks", err) : s;
    if (!dtnh_arena_is_counting(pa) && t->o.weights && (s = load_source(t, err))) return s;
    if (is_fmap(t->o.reg)) {
        dtnh_fmap_config fc;
        memset(&fc, 0, sizeof fc);
        fc.kind = t->o.reg == REG_FM ? DTNH_FMAP_DISTANCE : t->o.reg == REG_DELTA ? DTNH_FMAP_DELTA : DTNH_FMAP_ATTENTION;
        fc.alpha = t->o.alpha;
        fc.hook_count = t->cfg.hook_count;
        for (i = 0; i < fc.hook_count; i++) fc.hooks[i] = t->cfg.hooks[i];
        if ((s = dtnh_fmap_reg_init(&t->reg, &fc, &t->net, NULL, pa, err))) return s;
    }
    if (t->o.head_iters > 0) {
        dtnh_optim_config hc = oc;
        hc.schedule.kind = DTNH_SCHEDULE_CONSTANT;
        if ((s = dtnh_resnet_set_train(&t->net, DTNH_TRAIN_HEAD, 0, err)) ||
            (s = dtnh_optim_init(&t->head_opt, &hc, &t->net.params, pa, err)) ||
            (s = dtnh_resnet_set_train(&t->net, mode, stages, err)))
            return s;
    }
    return dtnh_optim_init(&t->opt, &oc, &t->net.params, pa, err);
}

/* The step arena's size: the largest of a training step (with the regularizer's source
   forward), an evaluation forward and, for a head phase, a head-only step. */
static dtnh_status count_step(trainer *t, size_t *bytes, dtnh_error *err) {
    int shape[4] = {t->o.batch, t->cfg.in_channels, t->cfg.height, t->cfg.width_px}, stages, pass;
    dtnh_train mode = train_mode(t->o.freeze, &stages);
    dtnh_tensor x, logits;
    dtnh_status s;
    *bytes = 0;
    if ((s = dtnh_tensor_shape(&x, 4, shape, err))) return s;
    for (pass = 0; pass < 3; pass++) {
        dtnh_arena c;
        dtnh_arena_init(&c, NULL, 0);
        if (pass == 2 && t->o.head_iters == 0) break;
        if (pass == 2 && (s = dtnh_resnet_set_train(&t->net, DTNH_TRAIN_HEAD, 0, err))) return s;
        if (pass == 1) s = dtnh_resnet_infer(&t->net, &x, &c, &logits, err);
        else s = dtnh_resnet_forward(&t->net, &x, &c, &logits, err);
        if (!s && pass == 0 && is_fmap(t->o.reg)) s = dtnh_fmap_reg_compute(&t->reg, &x, &c, NULL, NULL, 0, NULL, err);
        if (pass == 2 && !s) s = dtnh_resnet_set_train(&t->net, mode, stages, err);
        if (s) return s;
        if (dtnh_arena_peak(&c) > *bytes) *bytes = dtnh_arena_peak(&c);
    }
    return DTNH_OK;
}

static dtnh_status allocate(trainer *t, dtnh_error *err) {
    dtnh_arena counter;
    dtnh_status s;
    size_t cap = (size_t)t->o.memory * (size_t)PROG_MIB;
    dtnh_arena_init(&counter, NULL, 0);
    if ((s = build(t, &counter, err))) return s;
    t->persistent_bytes = dtnh_arena_used(&counter) + DTNH_ARENA_ALIGN;
    if (cap && t->persistent_bytes > cap)
        return dtnh_fail(err, DTNH_ERR_NOMEM, "--memory %d MiB is too small: the weights, gradients and optimizer "
                         "state alone need %.1f MiB", t->o.memory, t->persistent_bytes / PROG_MIB);
    if (!(t->pmem = prog_malloc(t->persistent_bytes)))
        return dtnh_fail(err, DTNH_ERR_NOMEM, "out of memory: %.1f MiB persistent", t->persistent_bytes / PROG_MIB);
    dtnh_arena_init(&t->pa, t->pmem, t->persistent_bytes);
    if ((s = build(t, &t->pa, err)) || (s = count_step(t, &t->step_bytes, err))) return s;
    t->step_bytes += DTNH_ARENA_ALIGN;
    if (cap && t->persistent_bytes + t->step_bytes > cap)
        return dtnh_fail(err, DTNH_ERR_NOMEM, "--memory %d MiB is too small for --batch %d: it needs %.1f MiB "
                         "(%.1f persistent + %.1f per step); try a smaller --batch", t->o.memory, t->o.batch,
                         (t->persistent_bytes + t->step_bytes) / PROG_MIB, t->persistent_bytes / PROG_MIB,
                         t->step_bytes / PROG_MIB);
    if (!(t->smem = prog_malloc(t->step_bytes)))
        return dtnh_fail(err, DTNH_ERR_NOMEM, "out of memory: %.1f MiB per step", t->step_bytes / PROG_MIB);
    dtnh_arena_init(&t->sa, t->smem, t->step_bytes);
    if ((s = prog_batch_alloc(&t->batch, t->o.batch, t->train.ds.image_bytes,
                              (size_t)t->cfg.in_channels * (size_t)t->cfg.height * (size_t)t->cfg.width_px, err)))
        return s;
    if (!(t->dlogits = (float *)prog_malloc((size_t)t->o.batch * (size_t)t->classes * sizeof(float))))
        return dtnh_fail(err, DTNH_ERR_NOMEM, "out of memory");
    return DTNH_OK;
}

/* ---- training -------------------------------------------------------------------------------- */

static dtnh_status stream_init(trainer *t, dtnh_error *err) {
    dtnh_arena c, a;
    dtnh_status s;
    dtnh_arena_init(&c, NULL, 0);
    if ((s = dtnh_batch_stream_init(&t->stream, t->ntrain, (uint64_t)t->o.seed + 2, &c, err))) return s;
    if (!(t->stream_mem = prog_malloc(dtnh_arena_used(&c) + DTNH_ARENA_ALIGN)))
        return dtnh_fail(err, DTNH_ERR_NOMEM, "out of memory");
    dtnh_arena_init(&a, t->stream_mem, dtnh_arena_used(&c) + DTNH_ARENA_ALIGN);
    dtnh_rng_seed(&t->aug_rng, (uint64_t)t->o.seed + 3);
    return dtnh_batch_stream_init(&t->stream, t->ntrain, (uint64_t)t->o.seed + 2, &a, err);
}

/* Forward and (when `backward`) backward of the next minibatch: g_J in params.g_j, J and the
   batch accuracy; dlogits either way. */
static dtnh_status forward_backward(trainer *t, dtnh_tensor *x, int backward, double *loss, double *acc,
                                    dtnh_error *err) {
    int b = t->o.batch, k, correct = 0;
    dtnh_tensor logits;
    dtnh_status s;
    dtnh_arena_reset(&t->sa, 0);
    if ((s = dtnh_batch_stream_next(&t->stream, b, t->batch.ids, err))) return s;
    for (k = 0; k < b; k++) t->batch.ids[k] = t->train_ids[t->batch.ids[k]];
    if ((s = prog_batch_load(&t->batch, &t->train, t->batch.ids, b, &t->aug_train, &t->aug_rng, x, err)) ||
        (s = dtnh_resnet_forward(&t->net, x, &t->sa, &logits, err)) ||
        (s = dtnh_softmax_cross_entropy(b, t->classes, logits.data, t->batch.labels, t->dlogits, loss, err)))
        return s;
    for (k = 0; k < b; k++) correct += prog_argmax(logits.data + (size_t)k * (size_t)t->classes, t->classes) == t->batch.labels[k];
    *acc = (double)correct / b;
    return backward ? dtnh_resnet_backward(&t->net, t->dlogits, NULL, NULL, 0, err) : DTNH_OK;
}

/* g_Omega and the update: the fused L2 family, or a feature-map regularizer plus L2 on the
   head, each through the DTNH direction (or the plain sum with --dtnh off). A NaN or Inf in
   the loss, the weights or a gradient stops it before anything changes. With one_backward()
   g_j gets J's and the feature maps' gradients together and g_omega the head's L2 alone. */
static dtnh_status regularize_and_step(trainer *t, const dtnh_tensor *x, double loss, dtnh_direction_stats *st,
                                       dtnh_error *err) {
    dtnh_params *p = &t->net.params;
    dtnh_status s;
    double omega = 0, head = 0;
    if (!is_fmap(t->o.reg)) {
        if ((s = dtnh_check_step_finite(p, &t->opt, loss, p->g_j, NULL, err))) return s;
        if (t->o.reg == REG_NONE) return dtnh_optim_step(&t->opt, p, p->g_j, err);
        return dtnh_step_l2sp(&t->opt, &t->dc, &t->rc, p, p->g_j, st, err);
    }
    if (one_backward(t)) {
        if ((s = dtnh_fmap_reg_compute(&t->reg, x, &t->sa, t->dlogits, p->g_j, 0, &omega, err))) return s;
        dtnh_fill(p->total, p->g_omega, 0.0f);
    } else if ((s = dtnh_fmap_reg_compute(&t->reg, x, &t->sa, NULL, p->g_omega, 0, &omega, err))) {
        return s;
    }
    if ((s = dtnh_reg_l2(t->o.beta, DTNH_GROUP_HEAD, p, p->g_omega, &head, err)) ||
        (s = dtnh_check_step_finite(p, &t->opt, loss, p->g_j, p->g_omega, err)) ||
        (s = dtnh_step(&t->opt, &t->dc, p, p->g_j, p->g_omega, st, err)))
        return s;
    st->omega = omega + head;
    return DTNH_OK;
}

static void record_step(trainer *t, int it, double loss, double acc, const dtnh_direction_stats *st, double lr) {
    double *row = runlog_add(&t->log);
    if (!row) return;
    row[RL_ITER] = it + 1;
    row[RL_J] = loss;
    row[RL_TRAIN_ACC] = acc;
    row[RL_LR] = lr;
    row[RL_SECONDS] = prog_now() - t->t0;
    if (t->o.reg == REG_NONE) return;
    row[RL_OMEGA] = st->omega;
    if (one_backward(t)) return; /* g_J and g_Omega were never apart */
    t->conflicts += st->cos_j_omega < 0;
    row[RL_COS] = st->cos_j_omega;
    row[RL_PROJECTED] = st->projected;
    row[RL_NORM_GJ] = st->norm_g_j;
    row[RL_NORM_GOMEGA] = st->norm_g_omega;
    row[RL_ANGLE1] = st->angle_d_j;
    row[RL_ANGLE2] = st->angle_d_omega;
    row[RL_ANGLE3] = st->angle_sum_j;
    row[RL_ANGLE4] = st->angle_sum_omega;
}

/* The mean of a column over the last n rows (measured values only). */
static double recent(const runlog *rl, int col, int n) {
    double sum = 0;
    int r, k = 0;
    for (r = rl->rows - 1; r >= 0 && r >= rl->rows - n; r--) {
        double v = rl->v[(size_t)r * RL_COUNT + col];
        if (v != RL_NONE) sum += v, k++;
    }
    return k ? sum / k : NAN;
}

static void progress(trainer *t, int it) {
    int total = t->o.iters, every = total >= 20 ? total / 20 : 1;
    double el = prog_now() - t->t0, left = el / (it + 1) * (total - it - 1);
    const runlog *rl = &t->log;
    if (!t->terminal && (it + 1) % every != 0 && it + 1 != total) return;
    /* short enough for an 80-column terminal, where a wrapped line could not be redrawn */
    printf("%siter %d/%d J %.4f", t->terminal ? "\r" : "", it + 1, total, recent(rl, RL_J, 10));
    if (t->o.reg != REG_NONE) printf(" Omega %.3g", recent(rl, RL_OMEGA, 10));
    if (t->o.reg != REG_NONE && !one_backward(t))
        printf(" %s %.0f%%", t->o.dtnh == MODE_OFF ? "conflict" : "proj",
               100 * (t->o.dtnh == MODE_OFF ? t->conflicts / (it + 1.0) : recent(rl, RL_PROJECTED, it + 1)));
    printf(" acc %.1f%% %.0f img/s %d:%02d left%s", 100 * recent(rl, RL_TRAIN_ACC, 20),
           (it + 1) * (double)t->o.batch / (el > 1e-9 ? el : 1e-9), (int)(left / 60), (int)fmod(left, 60),
           t->terminal ? "\033[K" : "\n");
    fflush(stdout);
}

/* Test and validation loss and accuracy into the iteration's row; a line for each. */
static dtnh_status evaluate_now(trainer *t, int it, dtnh_error *err) {
    double *row = t->log.rows ? t->log.v + (size_t)(t->log.rows - 1) * RL_COUNT : NULL;
    prog_eval ev;
    dtnh_status s;
    int pass;
    for (pass = 0; pass < 2; pass++) {
        prog_data *d = pass == 0 ? t->test_set : &t->train;
        const int *ids = pass == 0 ? t->test_ids : t->val_ids;
        int n = pass == 0 ? t->ntest : t->nval;
        if (n == 0) continue;
        memset(&ev, 0, sizeof ev);
        if ((s = prog_evaluate(&t->net, d, ids, n, &t->aug_eval, &t->batch, &t->sa, &ev, err))) return s;
        if (row) {
            row[pass == 0 ? RL_TEST_LOSS : RL_VAL_LOSS] = ev.loss;
            row[pass == 0 ? RL_TEST_ACC : RL_VAL_ACC] = (double)ev.correct / ev.labelled;
        }
        printf("%s  %s at %d: loss %.4f, accuracy %.2f%% (%d/%d)\n", t->terminal ? "\r\033[K" : "",
               pass == 0 ? "test" : "val", it + 1, ev.loss, 100.0 * ev.correct / ev.labelled, ev.correct, ev.labelled);
    }
    return DTNH_OK;
}

/* --head-iters steps on the head alone (no regularizer), then DELTA's attention from one
   batch of training images through the source backbone and that head. */
static dtnh_status head_phase(trainer *t, dtnh_error *err) {
    int stages, i;
    dtnh_train mode = train_mode(t->o.freeze, &stages);
    dtnh_status s;
    if (t->o.head_iters > 0) {
        if ((s = dtnh_resnet_set_train(&t->net, DTNH_TRAIN_HEAD, 0, err))) return s;
        double loss = 0, acc = 0;
        for (i = 0; i < t->o.head_iters; i++) {
            dtnh_tensor x;
            if ((s = forward_backward(t, &x, 1, &loss, &acc, err)) ||
                (s = dtnh_optim_step(&t->head_opt, &t->net.params, t->net.params.g_j, err)))
                return s;
        }
        printf("head: %d iterations alone, last J %.4f\n", t->o.head_iters, loss);
        if ((s = dtnh_resnet_set_train(&t->net, mode, stages, err))) return s;
    }
    if (t->o.reg == REG_DELTA) {
        int n = t->ntrain < t->o.batch ? t->ntrain : t->o.batch;
        dtnh_tensor x;
        const int *labels = t->batch.labels;
        dtnh_arena_reset(&t->sa, 0);
        if ((s = prog_batch_load(&t->batch, &t->train, t->train_ids, n, &t->aug_eval, NULL, &x, err)) ||
            (s = dtnh_fmap_reg_attention(&t->reg, &t->net, 1, &x, &labels, &t->sa, err)))
            return s;
        printf("delta: channel attention from %d training images\n", n);
    }
    return DTNH_OK;
}

/* ---- checkpoints ------------------------------------------------------------------------------ */

/* Everything the run needs to go on: weights, BN buffers, w_s, the optimizer, the minibatch
   stream, the augmentation draws and the iteration. */
static dtnh_checkpoint checkpoint_of(trainer *t, long iteration) {
    dtnh_checkpoint c;
    memset(&c, 0, sizeof c);
    c.net = &t->net;
    c.with_source = t->net.params.w_src != NULL;
    c.optim = &t->opt;
    c.stream = &t->stream;
    c.rngs[0] = &t->aug_rng;
    c.rng_names[0] = "augment";
    c.rng_count = 1;
    c.iteration = iteration;
    return c;
}

static void beside(const char *path, const char *suffix, char *out, size_t size) {
    snprintf(out, size, "%s%s", path, suffix);
}

/* The log and DELTA's attention first, the checkpoint last: it is the commit point, and a log
   longer than the checkpoint is cut back on resuming. */
static dtnh_status save_checkpoint(trainer *t, long iteration, dtnh_error *err) {
    dtnh_checkpoint c = checkpoint_of(t, iteration);
    dtnh_arena a;
    char path[1100];
    void *mem;
    dtnh_status s;
    beside(t->o.checkpoint, ".log.csv", path, sizeof path);
    if (runlog_write_csv(&t->log, path)) return dtnh_fail(err, DTNH_ERR_IO, "--checkpoint: cannot write %s", path);
    beside(t->o.checkpoint, ".delta", path, sizeof path);
    if (t->o.reg == REG_DELTA && (s = dtnh_fmap_reg_save_attention(&t->reg, path, err))) return s;
    dtnh_arena_init(&a, NULL, 0);
    if ((s = dtnh_checkpoint_save_memory(&c, &a, NULL, 0, NULL, err))) return s;
    if (!(mem = prog_malloc(dtnh_arena_peak(&a) + DTNH_ARENA_ALIGN))) return dtnh_fail(err, DTNH_ERR_NOMEM, "out of memory");
    dtnh_arena_init(&a, mem, dtnh_arena_peak(&a) + DTNH_ARENA_ALIGN);
    s = prog_prefix(dtnh_checkpoint_save(&c, t->o.checkpoint, &a, err), "--checkpoint", err);
    free(mem);
    return s;
}

/* The log up to the checkpoint's iteration, with the conflict count and the clock it had. */
static dtnh_status resume_log(trainer *t, long iteration, dtnh_error *err) {
    char path[1100], msg[512];
    runlog old;
    int r;
    beside(t->o.resume, ".log.csv", path, sizeof path);
    if (runlog_read_csv(&old, path, msg, sizeof msg)) return dtnh_fail(err, DTNH_ERR_IO, "--resume: %s", msg);
    for (r = 0; r < old.rows && old.v[(size_t)r * RL_COUNT + RL_ITER] <= iteration; r++) {
        double *row = runlog_add(&t->log), cos = old.v[(size_t)r * RL_COUNT + RL_COS];
        if (!row) break;
        memcpy(row, old.v + (size_t)r * RL_COUNT, RL_COUNT * sizeof(double));
        t->conflicts += cos != RL_NONE && cos < 0;
    }
    runlog_free(&old);
    if (t->log.rows != iteration)
        return dtnh_fail(err, DTNH_ERR_FORMAT, "--resume: %s has %d rows up to iteration %ld", path, t->log.rows, iteration);
    if (t->log.rows) t->t0 -= t->log.v[(size_t)(t->log.rows - 1) * RL_COUNT + RL_SECONDS];
    return DTNH_OK;
}

static dtnh_status resume(trainer *t, long *iteration, dtnh_error *err) {
    dtnh_checkpoint c = checkpoint_of(t, 0);
    dtnh_arena a;
    char path[1100];
    void *mem;
    dtnh_status s;
    dtnh_arena_init(&a, NULL, 0);
    if ((s = prog_name_file(dtnh_checkpoint_load_file(&c, t->o.resume, &a, err), t->o.resume, err))) return s;
    if (!(mem = prog_malloc(dtnh_arena_peak(&a) + DTNH_ARENA_ALIGN))) return dtnh_fail(err, DTNH_ERR_NOMEM, "out of memory");
    dtnh_arena_init(&a, mem, dtnh_arena_peak(&a) + DTNH_ARENA_ALIGN);
    s = prog_name_file(dtnh_checkpoint_load_file(&c, t->o.resume, &a, err), t->o.resume, err);
    free(mem);
    if (s) return s;
    if (c.iteration > t->o.iters)
        return dtnh_fail(err, DTNH_ERR_ARG, "--resume %s: the run is at iteration %ld, past --iters %d", t->o.resume,
                         c.iteration, t->o.iters);
    beside(t->o.resume, ".delta", path, sizeof path);
    if (t->o.reg == REG_DELTA && (s = dtnh_fmap_reg_load_attention(&t->reg, path, &t->sa, err))) return s;
    *iteration = c.iteration;
    printf("resumed: %s at iteration %ld\n", t->o.resume, c.iteration);
    return resume_log(t, c.iteration, err);
}

static dtnh_status train(trainer *t, dtnh_error *err) {
    long start = 0;
    int it;
    dtnh_status s;
    t->dc.mode = t->o.dtnh == MODE_OFF ? DTNH_MODE_SUM : DTNH_MODE_DTNH;
    t->dc.scope = t->o.dtnh == MODE_PER_TENSOR ? DTNH_SCOPE_PER_TENSOR : DTNH_SCOPE_GLOBAL;
    t->rc.alpha = t->o.alpha;
    t->rc.beta = t->o.beta;
    t->rc.toward_zero = t->o.reg == REG_L2;
    t->t0 = prog_now();
    if ((s = stream_init(t, err)) || (s = t->o.resume ? resume(t, &start, err) : head_phase(t, err))) return s;
    for (it = (int)start; it < t->o.iters; it++) {
        dtnh_direction_stats st;
        dtnh_tensor x;
        double loss = NAN, acc = 0, lr = dtnh_schedule_lr(&t->opt.cfg.schedule, t->opt.cfg.lr, t->opt.step);
        memset(&st, 0, sizeof st);
        s = forward_backward(t, &x, !one_backward(t), &loss, &acc, err);
        if (!s) s = regularize_and_step(t, &x, loss, &st, err);
        if (s == DTNH_ERR_NUMERIC || (!s && loss != loss)) {
            record_step(t, it, NAN, acc, &st, lr);
            t->diverged = it + 1;
            printf("%sdiverged at iteration %d: %s\n", t->terminal ? "\r\033[K" : "", it + 1, s ? err->msg : "J is NaN");
            return DTNH_OK;
        }
        if (s) return s;
        record_step(t, it, loss, acc, &st, lr);
        progress(t, it);
        if ((t->o.eval_every && (it + 1) % t->o.eval_every == 0) || it + 1 == t->o.iters) {
            if ((s = evaluate_now(t, it, err))) return s;
        }
        if (t->o.checkpoint && (it + 1) % t->o.checkpoint_every == 0 && it + 1 < t->o.iters &&
            (s = save_checkpoint(t, it + 1, err)))
            return s;
    }
    if (t->terminal) printf("\n");
    return DTNH_OK;
}

/* ---- the end of a run ------------------------------------------------------------------------ */

static void angles_path(const char *plot, char *out, size_t size) {
    size_t n = strlen(plot);
    if (n > 4 && strcmp(plot + n - 4, ".svg") == 0) snprintf(out, size, "%.*s-angles.svg", (int)(n - 4), plot);
    else snprintf(out, size, "%s-angles.svg", plot);
}

static int write_outputs(trainer *t) {
    const char *name = reg_names[t->o.reg];
    char title[160], apath[1100];
    if (t->o.log && runlog_write_csv(&t->log, t->o.log)) return prog_fail(PROG, "--log %s: cannot write it", t->o.log);
    if (!t->o.plot) return 0;
    snprintf(title, sizeof title, "%s%s%s", t->o.dtnh != MODE_OFF && t->o.reg != REG_NONE ? "DTNH(" : "", name,
             t->o.dtnh != MODE_OFF && t->o.reg != REG_NONE ? ")" : "");
    if (runlog_plot_loss(t->o.plot, title, &t->log, (const char *const *)&name, 1))
        return prog_fail(PROG, "--plot %s: cannot write it", t->o.plot);
    angles_path(t->o.plot, apath, sizeof apath);
    if (t->o.reg != REG_NONE && !one_backward(t) && runlog_plot_angles(apath, title, &t->log))
        return prog_fail(PROG, "--plot: cannot write %s", apath);
    return 0;
}

static void report(trainer *t) {
    runlog_summary s;
    double secs = prog_now() - t->t0;
    runlog_summarize(&t->log, &s);
    if (t->ntest) printf("test: accuracy %.2f%%, loss %.4f (%d images)\n", 100 * s.test_acc, s.test_loss, t->ntest);
    if (t->nval) printf("val: accuracy %.2f%%, loss %.4f (%d images)\n", 100 * s.val_acc, s.val_loss, t->nval);
    printf("train: J %.4f, Omega %.4g (means of the last 10 iterations)\n", s.final_j,
           t->o.reg == REG_NONE ? 0.0 : s.final_omega);
    if (one_backward(t))
        printf("dtnh: cos(g_J, g_Omega) not measured (plain %s takes one backward pass; --angles measures it)\n",
               reg_names[t->o.reg]);
    else if (t->o.reg != REG_NONE)
        printf("dtnh: g_J and g_Omega conflicted (cos < 0) in %.1f%% of the steps, %s; mean cos %.4f\n",
               100 * s.conflict_rate, t->o.dtnh == MODE_OFF ? "not projected (--dtnh off)" : "projected", s.mean_cos);
    printf("result: test_acc=%.4f test_loss=%.4f val_acc=%.4f val_loss=%.4f final_j=%.4f final_omega=%.4g "
           "conflict_rate=%.4f projected=%.4f mean_cos=%.4f iters=%d diverged=%d seconds=%.1f\n",
           s.test_acc, s.test_loss, s.val_acc, s.val_loss, s.final_j, s.final_omega, s.conflict_rate, s.proj_rate,
           s.mean_cos, s.iters, t->diverged != 0, secs);
}

static void describe(const trainer *t) {
    const dtnh_resnet_config *c = &t->net.cfg;
    printf("network: ResNet-18, width %d, %s stem, input %dx%dx%d, %d classes, %zu parameters (%zu trained)\n",
           c->width, c->stem == DTNH_STEM_CIFAR ? "cifar" : "imagenet", c->in_channels, c->height, c->width_px,
           c->num_classes, t->net.params.total, dtnh_params_count(&t->net.params, DTNH_GROUP_ALL));
    printf("memory: %.1f MiB persistent + %.1f MiB per step (batch %d)\n", t->persistent_bytes / PROG_MIB,
           t->step_bytes / PROG_MIB, t->o.batch);
    printf("data: %d training images, %d validation, %d test, %d classes\n", t->ntrain, t->nval,
           t->ntest, t->classes);
    printf("method: %s%s%s, alpha %g, beta %g, lr %g, %d iterations, threads %d\n",
           t->o.reg != REG_NONE && t->o.dtnh != MODE_OFF ? "DTNH(" : "", reg_names[t->o.reg],
           t->o.reg != REG_NONE && t->o.dtnh != MODE_OFF ? (t->o.dtnh == MODE_PER_TENSOR ? ", per tensor)" : ")") : "",
           t->o.alpha, t->o.beta, t->o.lr, t->o.iters, dtnh_threads());
}

static void join_command(char *out, size_t size, int argc, char **argv) {
    size_t used = 0;
    int i;
    out[0] = 0;
    for (i = 0; i < argc && used < size; i++)
        used += (size_t)snprintf(out + used, size - used, "%s%s", i ? " " : "", i ? argv[i] : PROG);
}

static int run(trainer *t, int argc, char **argv) {
    dtnh_error err;
    dtnh_status s;
    dtnh_error_clear(&err);
    join_command(t->command, sizeof t->command, argc, argv);
    prog_set_threads(t->o.threads);
    t->terminal = prog_is_terminal(stdout);
    if ((s = open_data(t, &err)) || (s = configure(t, &err)) || (s = allocate(t, &err)))
        return prog_fail(PROG, "%s", err.msg);
    describe(t);
    if (runlog_init(&t->log, t->o.iters)) return prog_fail(PROG, "out of memory for the log");
    if ((s = train(t, &err))) return prog_fail(PROG, "%s", err.msg);
    report(t);
    if (write_outputs(t)) return 1;
    if (t->diverged) return EXIT_DIVERGED;
    if (t->o.save) {
        static const dtnh_st_dtype dtypes[3] = {DTNH_ST_F32, DTNH_ST_F16, DTNH_ST_BF16};
        const cli_int_list *c = &t->o.classes;
        if ((s = prog_save_weights(&t->net, t->o.save, dtypes[t->o.save_dtype], &t->aug_eval, c->v, c->count,
                                   t->command, &err)))
            return prog_fail(PROG, "--save %s: %s", t->o.save, err.msg);
        printf("saved: %s\n", t->o.save);
    }
    return 0;
}

int main(int argc, char **argv) {
    cli_option opts[TRAIN_MAX_OPTIONS];
    char msg[512];
    int help, n, status;
    train_option_defaults(&T.o);
    n = train_option_table(opts, &T.o);
    if (cli_parse(opts, n, argc, argv, &help, msg, sizeof msg)) return prog_fail(PROG, "%s", msg);
    if (help) {
        cli_print_help(stdout, "usage: dtnh-train --data IMAGES [--labels LABELS] [--weights SOURCE.safetensors] [options]\n"
                               "Pre-trains a ResNet-18 from scratch, or fine-tunes a source with a regularizer, "
                               "plainly or with DTNH.", opts, n);
        return 0;
    }
    if (check_options(&T)) return 1;
    status = run(&T, argc, argv);
    prog_data_close(&T.train);
    prog_data_close(&T.test);
    prog_batch_free(&T.batch);
    runlog_free(&T.log);
    free(T.pmem);
    free(T.smem);
    free(T.dlogits);
    free(T.stream_mem);
    free(T.train_ids);
    free(T.val_ids);
    free(T.held_ids);
    return status;
}
