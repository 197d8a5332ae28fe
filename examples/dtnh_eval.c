/* dtnh-eval: the accuracy of a ResNet-18 weights file on a labelled set of images, with the
   per-class accuracy and the confusion matrix, and the prediction for every image on request.
   The network's shape (stem, width, input channels, classes) comes from the weights file; the
   input size, normalisation and class subset from its metadata when dtnh-train wrote it. */
#define _POSIX_C_SOURCE 200809L
#include "../dtnh.h"
#include "../dtnh_nn.h"
#define CLI_IMPLEMENTATION
#include "cli.h"
#include "prog.h"

#define PROG "dtnh-eval"

typedef struct eval_opts {
    const char *weights, *data, *labels, *predictions, *mean, *std;
    cli_int_list classes;
    int batch, threads, size, memory, winograd;
} eval_opts;

typedef struct evaluator {
    eval_opts o;
    prog_weights_info wi;
    const int *subset; /* original labels of the outputs, or NULL */
    int nsubset;
    prog_data data;
    dtnh_resnet net;
    dtnh_augment_config aug;
    dtnh_arena pa, sa;
    void *pmem, *smem;
    prog_batch batch;
    prog_eval ev;
} evaluator;

static evaluator E;

static int option_table(cli_option *o, eval_opts *v) {
    int n = 0;
#define OPT(name, kind, dest, lo, hi, help)                                                            \
    do {                                                                                               \
        cli_option row = {name, kind, dest, lo, hi, NULL, help};                                       \
        o[n++] = row;                                                                                  \
    } while (0)
    OPT("weights", CLI_STRING, &v->weights, 0, 0, "the ResNet-18 to evaluate (safetensors, torchvision names; required)");
    OPT("data", CLI_STRING, &v->data, 0, 0, "images: IDX file, CIFAR-10 batch, or a folder of PGM/PPM class folders (required)");
    OPT("labels", CLI_STRING, &v->labels, 0, 0, "IDX labels of --data; without labels only predictions are made");
    OPT("classes", CLI_INT_LIST, &v->classes, 0, 1e6, "original labels of the network's outputs, in order (default: the file's dtnh.classes, else 0..k-1)");
    OPT("predictions", CLI_STRING, &v->predictions, 0, 0, "write one line per image here: index,label,predicted (CSV)");
    OPT("size", CLI_INT, &v->size, 0, 4096, "resize images to size x size; 0: the size the file says it was trained at, else the images' own");
    OPT("mean", CLI_STRING, &v->mean, 0, 0, "input = (v/255 - mean)/std, one value or one per channel; default: the file's, else 0.5");
    OPT("std", CLI_STRING, &v->std, 0, 0, "see --mean; default: the file's, else 0.5");
    OPT("batch", CLI_INT, &v->batch, 1, 4096, "images per forward");
    OPT("threads", CLI_INT, &v->threads, 0, 1024, "threads; 0: OpenMP's default");
    OPT("winograd", CLI_FLAG, &v->winograd, 0, 0, "3x3 layers by Winograd F(4x4, 3x3) (AVX-512 builds): faster, results differ in the last bits");
    OPT("memory", CLI_INT, &v->memory, 0, 1e7, "refuse to run when the arenas need more than this many MiB; 0: no cap");
#undef OPT
    return n;
}

/* The class subset, the input size and the normalisation: options first, then the file. */
static dtnh_status configure(evaluator *e, dtnh_error *err) {
    dtnh_resnet_config *c = &e->wi.cfg;
    const dtnh_dataset *ds;
    char msg[256];
    dtnh_status s;
    int h, w;
    if ((s = prog_weights_info_read(e->o.weights, &e->wi, err))) return s;
    e->subset = e->o.classes.count ? e->o.classes.v : e->wi.nclasses ? e->wi.classes : NULL;
    e->nsubset = e->o.classes.count ? e->o.classes.count : e->wi.nclasses;
    if (e->subset && e->nsubset != c->num_classes)
        return dtnh_fail(err, DTNH_ERR_ARG, "--classes lists %d classes, %s has %d outputs", e->nsubset, e->o.weights,
                         c->num_classes);
    if ((s = prog_data_open(&e->data, e->o.data, e->o.labels, e->subset, e->nsubset, 0, err))) return s;
    ds = &e->data.ds;
    if (!e->subset && ds->has_labels && (s = dtnh_dataset_set_classes(&e->data.ds, c->num_classes, err))) return s;
    if (ds->channels != c->in_channels && !(ds->channels == 1 && c->in_channels == 3))
        return dtnh_fail(err, DTNH_ERR_SHAPE, "%s: images have %d channels, the network in %s takes %d", e->o.data,
                         ds->channels, e->o.weights, c->in_channels);
    h = e->o.size ? e->o.size : e->wi.height ? e->wi.height : ds->height;
    w = e->o.size ? e->o.size : e->wi.width ? e->wi.width : ds->width;
    if (!e->o.size && (h != ds->height || w != ds->width))
        return dtnh_fail(err, DTNH_ERR_SHAPE, "%s: images are %dx%d, the network in %s was trained on %dx%d (--size "
                         "resizes them)", e->o.data, ds->height, ds->width, e->o.weights, h, w);
    c->height = h;
    c->width_px = w;
    c->max_batch = e->o.batch;
    c->winograd = e->o.winograd;
    c->train = DTNH_TRAIN_NONE;
    c->roles = DTNH_ROLE_W;
    memset(&e->aug, 0, sizeof e->aug);
    e->aug.out_channels = c->in_channels;
    e->aug.out_height = h;
    e->aug.out_width = w;
    if (prog_normalisation(e->o.mean ? e->o.mean : e->wi.mean[0] ? e->wi.mean : "0.5",
                           e->o.std ? e->o.std : e->wi.std[0] ? e->wi.std : "0.5", c->in_channels, &e->aug, msg,
                           sizeof msg))
        return dtnh_fail(err, DTNH_ERR_ARG, "%s", msg);
    return DTNH_OK;
}

/* Arenas sized by the library's plan, then the weights. */
static dtnh_status load(evaluator *e, dtnh_error *err) {
    dtnh_resnet_plan plan;
    dtnh_st_file f;
    dtnh_load_report rep;
    void *mem;
    dtnh_status s;
    size_t cap = (size_t)e->o.memory * (size_t)PROG_MIB;
    if ((s = dtnh_resnet_plan_memory(&e->wi.cfg, 0, &plan, err))) return s;
    if (cap && plan.persistent + plan.step_infer + 2 * DTNH_ARENA_ALIGN > cap)
        return dtnh_fail(err, DTNH_ERR_NOMEM, "--memory %d MiB is too small for --batch %d: it needs %.1f MiB "
                         "(%.1f weights + %.1f per batch); try a smaller --batch", e->o.memory, e->o.batch,
                         (plan.persistent + plan.step_infer) / PROG_MIB, plan.persistent / PROG_MIB,
                         plan.step_infer / PROG_MIB);
    if (!(e->pmem = prog_malloc(plan.persistent + DTNH_ARENA_ALIGN)) ||
        !(e->smem = prog_malloc(plan.step_infer + DTNH_ARENA_ALIGN)))
        return dtnh_fail(err, DTNH_ERR_NOMEM, "out of memory: %.1f MiB", (plan.persistent + plan.step_infer) / PROG_MIB);
    dtnh_arena_init(&e->pa, e->pmem, plan.persistent + DTNH_ARENA_ALIGN);
    dtnh_arena_init(&e->sa, e->smem, plan.step_infer + DTNH_ARENA_ALIGN);
    if ((s = dtnh_resnet_init(&e->net, &e->wi.cfg, &e->pa, err))) return s;
    if ((s = prog_st_open(&f, e->o.weights, &mem, err)) == DTNH_OK) s = prog_name_file(dtnh_resnet_load(&e->net, &f, NULL, &rep, err), e->o.weights, err);
    dtnh_st_close(&f);
    free(mem);
    if (s) return s;
    if (rep.missing) return dtnh_fail(err, DTNH_ERR_FORMAT, "%s lacks %d tensors of the network: %s", e->o.weights,
                                      rep.missing, rep.missing_names);
    return prog_batch_alloc(&e->batch, e->o.batch, e->data.ds.image_bytes,
                            (size_t)e->wi.cfg.in_channels * (size_t)e->wi.cfg.height * (size_t)e->wi.cfg.width_px, err);
}

/* Output j's original label. */
static int class_label(const evaluator *e, int j) { return e->subset ? e->subset[j] : j; }

static int write_predictions(const evaluator *e) {
    char tmp[1100];
    FILE *f;
    int i, bad;
    snprintf(tmp, sizeof tmp, "%s.tmp", e->o.predictions);
    if (!(f = fopen(tmp, "w"))) return prog_fail(PROG, "--predictions %s: cannot write it", e->o.predictions);
    fprintf(f, "index,label,predicted\n");
    for (i = 0; i < e->data.n; i++) {
        int id = e->data.ids[i], label = e->data.labels[id];
        fprintf(f, "%d,", id);
        if (label >= 0) fprintf(f, "%d", class_label(e, label));
        fprintf(f, ",%d\n", class_label(e, e->ev.predictions[i]));
    }
    bad = ferror(f);
    if (fclose(f) != 0 || bad || rename(tmp, e->o.predictions) != 0) {
        remove(tmp);
        return prog_fail(PROG, "--predictions %s: cannot write it", e->o.predictions);
    }
    return 0;
}

static void print_results(const evaluator *e) {
    int k = e->wi.cfg.num_classes, i, j;
    const prog_eval *ev = &e->ev;
    if (!ev->labelled) {
        printf("no labels: %d predictions made\n", ev->count);
        return;
    }
    printf("accuracy: %.2f%% (%d/%d)\n", 100.0 * ev->correct / ev->labelled, ev->correct, ev->labelled);
    printf("loss: %.4f\n", ev->loss);
    printf("per class:\n");
    for (i = 0; i < k; i++) {
        int n = 0;
        for (j = 0; j < k; j++) n += ev->confusion[i * k + j];
        if (n) printf("  class %d: %.2f%% (%d/%d)\n", class_label(e, i), 100.0 * ev->confusion[i * k + i] / n, ev->confusion[i * k + i], n);
        else printf("  class %d: no images\n", class_label(e, i));
    }
    printf("confusion matrix (rows: true class, columns: predicted):\n       ");
    for (j = 0; j < k; j++) printf(" %6d", class_label(e, j));
    printf("\n");
    for (i = 0; i < k; i++) {
        printf("  %5d", class_label(e, i));
        for (j = 0; j < k; j++) printf(" %6d", ev->confusion[i * k + j]);
        printf("\n");
    }
}

static int run(evaluator *e) {
    dtnh_error err;
    dtnh_status s;
    int k;
    dtnh_error_clear(&err);
    prog_set_threads(e->o.threads);
    if ((s = configure(e, &err)) || (s = load(e, &err))) return prog_fail(PROG, "%s", err.msg);
    k = e->wi.cfg.num_classes;
    e->ev.confusion = (int *)prog_malloc((size_t)k * (size_t)k * sizeof(int));
    e->ev.predictions = (int *)prog_malloc((size_t)e->data.n * sizeof(int));
    if (!e->ev.confusion || !e->ev.predictions) return prog_fail(PROG, "out of memory");
    printf("network: ResNet-18 width %d, %s stem, input %dx%dx%d, %d classes, from %s\n", e->wi.cfg.width,
           e->wi.cfg.stem == DTNH_STEM_CIFAR ? "cifar" : "imagenet", e->wi.cfg.in_channels, e->wi.cfg.height,
           e->wi.cfg.width_px, k, e->o.weights);
    printf("data: %d images from %s\n", e->data.n, e->o.data);
    if ((s = prog_evaluate(&e->net, &e->data, e->data.ids, e->data.n, &e->aug, &e->batch, &e->sa, &e->ev, &err)))
        return prog_fail(PROG, "%s", err.msg);
    print_results(e);
    if (e->o.predictions) {
        if (write_predictions(e)) return 1;
        printf("predictions: %s\n", e->o.predictions);
    }
    return 0;
}

int main(int argc, char **argv) {
    cli_option opts[16];
    char msg[512];
    int help, n, status;
    E.o.batch = 64;
    n = option_table(opts, &E.o);
    if (cli_parse(opts, n, argc, argv, &help, msg, sizeof msg)) return prog_fail(PROG, "%s", msg);
    if (help) {
        cli_print_help(stdout, "usage: dtnh-eval --weights W.safetensors --data IMAGES [--labels LABELS] [options]\n"
                               "Accuracy, per-class accuracy and confusion matrix of a ResNet-18 on a test set.",
                       opts, n);
        return 0;
    }
    if (!E.o.weights || !E.o.data) return prog_fail(PROG, "--weights and --data are required (see --help)");
    status = run(&E);
    prog_data_close(&E.data);
    prog_batch_free(&E.batch);
    free(E.pmem);
    free(E.smem);
    free(E.ev.confusion);
    free(E.ev.predictions);
    return status;
}
