/* prog.h - what dtnh-train and dtnh-eval share: one-line errors, a clock, the input
   normalisation options, a data set with a class subset, what a weights file says about its
   network, saving weights with that description, and evaluation on a set of images.

   Programs may use malloc (the libraries may not): sizes come from the library's counting
   arenas, the programs malloc them and hand them over. Include after dtnh.h and dtnh_nn.h,
   in the one file that defines DTNH_IMPLEMENTATION or beside it.
*/
#ifndef DTNH_PROG_H
#define DTNH_PROG_H

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#define PROG_POSIX 1
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

#define PROG_MAX_CLASSES 64 /* the outputs a weights file may name in dtnh.classes */

#define PROG_MIB (1024.0 * 1024.0)

/* Each program uses some of these helpers: the others must not warn. */
#if defined(__GNUC__) || defined(__clang__)
#define PROGDEF static __attribute__((unused))
#else
#define PROGDEF static
#endif

/* Prints "prog: message" on one line to stderr; returns 1, the exit status of a failure. */
PROGDEF int prog_fail(const char *prog, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    msg[strcspn(msg, "\n")] = 0;
    fprintf(stderr, "%s: %s\n", prog, msg);
    return 1;
}

/* Wall-clock seconds from an arbitrary start (monotonic where POSIX has it). */
PROGDEF double prog_now(void) {
#if defined(PROG_POSIX) && defined(CLOCK_MONOTONIC)
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
#else
    return (double)time(NULL);
#endif
}

PROGDEF int prog_is_terminal(FILE *f) {
#ifdef PROG_POSIX
    return isatty(fileno(f));
#else
    (void)f;
    return 0;
#endif
}

PROGDEF void prog_set_threads(int threads) {
#ifdef _OPENMP
    if (threads > 0) omp_set_num_threads(threads);
#else
    (void)threads;
#endif
}

PROGDEF void *prog_malloc(size_t bytes) { return malloc(bytes ? bytes : 1); }
 
 /* Puts "what: " before the message of a failure; returns s. */
 PROGDEF dtnh_status prog_prefix(dtnh_status s, const char *what, dtnh_error *err) {
    char msg[DTNH_ERROR_MSG_SIZE];
    if (s == DTNH_OK || !err) return s;
    snprintf(msg, sizeof msg, "%s", err->msg);
    return dtnh_fail(err, s, "%s: %s", what, msg);
}

/* The same, unless the message names the path already. */
PROGDEF dtnh_status prog_name_file(dtnh_status s, const char *path, dtnh_error *err) {
    return s && err && strstr(err->msg, path) ? s : prog_prefix(s, path, err);
}

/* ---- options that are lists ----------------------------------------------------------------- */

/* "0.5" or "0.485,0.456,0.406": 1..max finite numbers in [lo, hi]. Returns the count, or -1. */
PROGDEF int prog_parse_floats(const char *s, float *v, int max, double lo, double hi) {
    int n = 0;
    const char *p = s;
    while (*p && n < max) {
        char *end;
        double x = strtod(p, &end);
        if (end == p || !(x >= lo && x <= hi)) return -1;
        v[n++] = (float)x;
        if (*end == 0) return n;
        if (*end != ',') return -1;
        p = end + 1;
    }
    return -1;
}

/* Splits "a,b,c" into at most max names of up to size-1 characters. Returns the count, or -1. */
PROGDEF int prog_split_names(const char *s, char (*names)[DTNH_NAME_SIZE], int max) {
    int n = 0;
    for (;;) {
        size_t len = strcspn(s, ",");
        if (len == 0 || len >= DTNH_NAME_SIZE || n == max) return -1;
        memcpy(names[n], s, len);
        names[n++][len] = 0;
        if (!s[len]) return n;
        s += len + 1;
    }
}

PROGDEF void prog_format_floats(char *out, size_t size, const float *v, int n) {
    size_t used = 0;
    int i;
    out[0] = 0;
    for (i = 0; i < n && used < size; i++) used += (size_t)snprintf(out + used, size - used, "%s%g", i ? "," : "", v[i]);
}

PROGDEF void prog_format_ints(char *out, size_t size, const int *v, int n) {
    size_t used = 0;
    int i;
    out[0] = 0;
    for (i = 0; i < n && used < size; i++) used += (size_t)snprintf(out + used, size - used, "%s%d", i ? "," : "", v[i]);
}

/* The normalisation (v/255 - mean)/std from --mean and --std: one value for every channel, or
   one per channel. Fills aug's mean and std for `channels` channels; -1 with msg on a mismatch. */
PROGDEF int prog_normalisation(const char *mean, const char *std, int channels, dtnh_augment_config *aug,
                               char *msg, size_t msgsize) {
    float m[DTNH_MAX_CHANNELS], s[DTNH_MAX_CHANNELS];
    int nm = prog_parse_floats(mean, m, DTNH_MAX_CHANNELS, -1e6, 1e6);
    int ns = prog_parse_floats(std, s, DTNH_MAX_CHANNELS, 1e-6, 1e6);
    int c;
    if (nm < 0 || (nm != 1 && nm != channels)) {
        snprintf(msg, msgsize, "--mean '%s': expected 1 or %d comma-separated numbers", mean, channels);
        return -1;
    }
    if (ns < 0 || (ns != 1 && ns != channels)) {
        snprintf(msg, msgsize, "--std '%s': expected 1 or %d comma-separated numbers in [1e-6, 1e6]", std, channels);
        return -1;
    }
    for (c = 0; c < channels; c++) {
        aug->mean[c] = m[nm == 1 ? 0 : c];
        aug->std[c] = s[ns == 1 ? 0 : c];
    }
    return 0;
}

/* ---- a data set with a class subset ----------------------------------------------------------- */

/* The images of a data set that take part, and their labels after the class subset. */
typedef struct prog_data {
    dtnh_dataset ds;
    const char *path;
    void *folder_mem; /* the folder reader's file list */
    int *labels;      /* ds.count labels: relabelled into [0, classes), -1 outside the subset */
    int classes;      /* after the subset */
    int *ids;         /* images taking part (label >= 0), ascending */
    int n;
} prog_data;

PROGDEF void prog_data_close(prog_data *d) {
    dtnh_dataset_close(&d->ds);
    free(d->folder_mem);
    free(d->labels);
    free(d->ids);
    memset(d, 0, sizeof *d);
}

/* Opens path (IDX with labels_path, a CIFAR-10 batch, or a folder), reads every label and
   keeps the images of the class subset (subset NULL or empty: every class, as labelled). */
PROGDEF dtnh_status prog_data_open(prog_data *d, const char *path, const char *labels_path, const int *subset,
                                   int nsubset, int need_labels, dtnh_error *err) {
    dtnh_arena count;
    dtnh_status s;
    int i;
    memset(d, 0, sizeof *d);
    d->path = path;
    dtnh_arena_init(&count, NULL, 0); /* the folder reader's list: count it, then allocate it */
    if ((s = dtnh_dataset_open(&d->ds, path, labels_path, &count, err)))
        return labels_path && strstr(err->msg, labels_path) ? s : prog_name_file(s, path, err);
    dtnh_dataset_close(&d->ds);
    if (d->ds.format == DTNH_DATA_FOLDER) {
        dtnh_arena a;
        if (!(d->folder_mem = prog_malloc(dtnh_arena_used(&count) + DTNH_ARENA_ALIGN)))
            return dtnh_fail(err, DTNH_ERR_NOMEM, "%s: out of memory for the file list", path);
        dtnh_arena_init(&a, d->folder_mem, dtnh_arena_used(&count) + DTNH_ARENA_ALIGN);
        s = dtnh_dataset_open(&d->ds, path, NULL, &a, err);
    } else {
        s = dtnh_dataset_open(&d->ds, path, labels_path, NULL, err);
    }
    if (s) return s;
    if (need_labels && !d->ds.has_labels)
        return dtnh_fail(err, DTNH_ERR_ARG, "%s: IDX images need their labels (--labels for --data, "
                         "--test-labels for --test-data)", path);
    d->labels = (int *)prog_malloc((size_t)d->ds.count * sizeof(int));
    d->ids = (int *)prog_malloc((size_t)d->ds.count * sizeof(int));
    if (!d->labels || !d->ids) return dtnh_fail(err, DTNH_ERR_NOMEM, "%s: out of memory for %d labels", path, d->ds.count);
    if ((s = dtnh_dataset_labels(&d->ds, d->labels, err))) return s;
    d->classes = d->ds.classes;
    if (d->ds.has_labels && subset && nsubset > 0) {
        int *counts = (int *)prog_malloc((size_t)nsubset * sizeof(int));
        if (!counts) return dtnh_fail(err, DTNH_ERR_NOMEM, "out of memory");
        if ((s = dtnh_relabel(d->labels, d->ds.count, subset, nsubset, err))) {
            free(counts);
            return s;
        }
        d->classes = nsubset;
        dtnh_class_counts(d->labels, d->ds.count, nsubset, counts);
        for (i = 0; i < nsubset && counts[i] > 0; i++) continue;
        free(counts);
        if (i < nsubset)
            return dtnh_fail(err, DTNH_ERR_ARG, "--classes: class %d has no images in %s", subset[i], path);
    }
    for (i = 0; i < d->ds.count; i++)
        if (d->labels[i] >= 0 || !d->ds.has_labels) d->ids[d->n++] = i;
    if (d->n == 0) return dtnh_fail(err, DTNH_ERR_ARG, "%s: no images", path);
    return DTNH_OK;
}

/* ---- what a weights file says ------------------------------------------------------------------ */

/* Beside the shapes (which give stem, width, input channels and classes), dtnh-train writes
   in the file's metadata what evaluation needs to repeat its input pipeline. */
typedef struct prog_weights_info {
    dtnh_resnet_config cfg; /* stem, width, in_channels, num_classes */
    int height, width;      /* "dtnh.input" CxHxW; 0 when the file does not say */
    int classes[PROG_MAX_CLASSES], nclasses; /* "dtnh.classes": original labels of the outputs */
    char mean[64], std[64]; /* "dtnh.mean", "dtnh.std"; empty when not said */
} prog_weights_info;

/* Opens a safetensors file, its header's scratch counted first, then allocated (*mem). */
PROGDEF dtnh_status prog_st_open(dtnh_st_file *f, const char *path, void **mem, dtnh_error *err) {
    dtnh_arena a;
    dtnh_status s;
    size_t bytes;
    *mem = NULL;
    memset(f, 0, sizeof *f);
    dtnh_arena_init(&a, NULL, 0);
    s = dtnh_st_open(f, path, &a, err);
    dtnh_st_close(f);
    if (s) return prog_name_file(s, path, err);
    bytes = dtnh_arena_used(&a) + DTNH_ARENA_ALIGN;
    if (!(*mem = prog_malloc(bytes))) return dtnh_fail(err, DTNH_ERR_NOMEM, "%s: out of memory for its header", path);
    dtnh_arena_init(&a, *mem, bytes);
    return prog_name_file(dtnh_st_open(f, path, &a, err), path, err);
}

PROGDEF dtnh_status prog_weights_info_read(const char *path, prog_weights_info *wi, dtnh_error *err) {
    dtnh_st_file f;
    void *mem;
    const char *v;
    dtnh_status s;
    memset(wi, 0, sizeof *wi);
    if ((s = prog_st_open(&f, path, &mem, err)) == DTNH_OK)
        s = prog_name_file(dtnh_resnet_config_from_st(&f, &wi->cfg, err), path, err);
    if (s == DTNH_OK && (v = dtnh_st_meta_get(&f, "dtnh.input")) != NULL) {
        int c;
        if (sscanf(v, "%dx%dx%d", &c, &wi->height, &wi->width) != 3 || c != wi->cfg.in_channels)
            s = dtnh_fail(err, DTNH_ERR_FORMAT, "%s: metadata dtnh.input '%s' is not %dxHxW", path, v, wi->cfg.in_channels);
    }
    if (s == DTNH_OK && (v = dtnh_st_meta_get(&f, "dtnh.classes")) != NULL) {
        const char *p = v;
        while (*p && wi->nclasses < PROG_MAX_CLASSES) {
            char *end;
            long x = strtol(p, &end, 10);
            if (end == p || x < 0 || x > 1000000) break;
            wi->classes[wi->nclasses++] = (int)x;
            p = *end == ',' ? end + 1 : end;
            if (*end != ',' && *end) break;
        }
        if (wi->nclasses != wi->cfg.num_classes)
            s = dtnh_fail(err, DTNH_ERR_FORMAT, "%s: metadata dtnh.classes '%s' does not list %d classes", path, v,
                          wi->cfg.num_classes);
    }
    if (s == DTNH_OK && (v = dtnh_st_meta_get(&f, "dtnh.mean")) != NULL) snprintf(wi->mean, sizeof wi->mean, "%s", v);
    if (s == DTNH_OK && (v = dtnh_st_meta_get(&f, "dtnh.std")) != NULL) snprintf(wi->std, sizeof wi->std, "%s", v);
    dtnh_st_close(&f);
    free(mem);
    return s;
}

/* Saves the network's state_dict (torchvision names; floats as dtype, counters as I64) with
   the metadata above, atomically (the library writes "<path>.tmp" and renames it). */
PROGDEF dtnh_status prog_save_weights(const dtnh_resnet *net, const char *path, dtnh_st_dtype dtype,
                                      const dtnh_augment_config *aug, const int *classes, int nclasses,
                                      const char *command, dtnh_error *err) {
    static dtnh_st_tensor t[DTNH__RESNET_MAX_STATE];
    static char text[4][1024];
    dtnh_st_meta meta[6];
    int n = 0, m = 0, ch = net->cfg.in_channels;
    dtnh_status s = dtnh_resnet_state_tensors(net, dtype, t, &n, err);
    if (s) return s;
    meta[m].key = "format", meta[m++].value = "pt";
    snprintf(text[0], sizeof text[0], "%dx%dx%d", ch, net->cfg.height, net->cfg.width_px);
    meta[m].key = "dtnh.input", meta[m++].value = text[0];
    prog_format_floats(text[1], sizeof text[1], aug->mean, ch);
    meta[m].key = "dtnh.mean", meta[m++].value = text[1];
    prog_format_floats(text[2], sizeof text[2], aug->std, ch);
    meta[m].key = "dtnh.std", meta[m++].value = text[2];
    if (nclasses > 0) {
        prog_format_ints(text[3], sizeof text[3], classes, nclasses);
        meta[m].key = "dtnh.classes", meta[m++].value = text[3];
    }
    if (command) meta[m].key = "dtnh.command", meta[m++].value = command;
    return dtnh_st_save(path, t, n, meta, m, err);
}

/* ---- evaluation ---------------------------------------------------------------------------------- */

/* A batch's host buffers: pixel bytes as read, and the network input. */
typedef struct prog_batch {
    unsigned char *pixels;
    float *x;
    int *ids, *labels;
    int capacity;
} prog_batch;

PROGDEF dtnh_status prog_batch_alloc(prog_batch *b, int capacity, size_t image_bytes, size_t input_floats,
                                     dtnh_error *err) {
    b->capacity = capacity;
    b->pixels = (unsigned char *)prog_malloc((size_t)capacity * image_bytes);
    b->x = (float *)prog_malloc((size_t)capacity * input_floats * sizeof(float));
    b->ids = (int *)prog_malloc((size_t)capacity * sizeof(int));
    b->labels = (int *)prog_malloc((size_t)capacity * sizeof(int));
    if (!b->pixels || !b->x || !b->ids || !b->labels)
        return dtnh_fail(err, DTNH_ERR_NOMEM, "out of memory for a batch of %d", capacity);
    return DTNH_OK;
}

PROGDEF void prog_batch_free(prog_batch *b) {
    free(b->pixels);
    free(b->x);
    free(b->ids);
    free(b->labels);
    memset(b, 0, sizeof *b);
}

/* Reads images ids[0..n) of d and assembles them into the batch's input tensor (rng NULL:
   no augmentation); their labels go to b->labels. */
PROGDEF dtnh_status prog_batch_load(prog_batch *b, prog_data *d, const int *ids, int n,
                                    const dtnh_augment_config *aug, dtnh_rng *rng, dtnh_tensor *x, dtnh_error *err) {
    dtnh_status s;
    int shape[4], i;
    for (i = 0; i < n; i++) b->labels[i] = d->labels[ids[i]];
    if ((s = dtnh_dataset_read_indices(&d->ds, ids, n, b->pixels, NULL, err)) ||
        (s = dtnh_batch_shape(aug, n, d->ds.channels, d->ds.height, d->ds.width, shape, err)) ||
        (s = dtnh_tensor_view(x, b->x, 4, shape, err)))
        return s;
    return dtnh_batch_assemble(aug, b->pixels, n, d->ds.channels, d->ds.height, d->ds.width, rng, x, err);
}

PROGDEF int prog_argmax(const float *v, int n) {
    int i, best = 0;
    for (i = 1; i < n; i++)
        if (v[i] > v[best]) best = i;
    return best;
}

/* What evaluation found. confusion (classes x classes, rows true) and predictions (one per
   image evaluated) may be NULL. */
typedef struct prog_eval {
    double loss; /* mean cross-entropy over the labelled images */
    int correct, labelled, count;
    int *confusion, *predictions;
} prog_eval;

/* The network in evaluation mode on images ids[0..n) of d, in batches of at most b->capacity
   (no more than the network's max_batch). Labels of -1 count as unlabelled. */
PROGDEF dtnh_status prog_evaluate(dtnh_resnet *net, prog_data *d, const int *ids, int n,
                                  const dtnh_augment_config *aug, prog_batch *b, dtnh_arena *step, prog_eval *out,
                                  dtnh_error *err) {
    int classes = net->cfg.num_classes, first, i;
    double loss_sum = 0;
    out->loss = 0;
    out->correct = out->labelled = out->count = 0;
    if (out->confusion) memset(out->confusion, 0, (size_t)classes * (size_t)classes * sizeof(int));
    for (first = 0; first < n; first += b->capacity) {
        int m = n - first < b->capacity ? n - first : b->capacity;
        dtnh_tensor x, logits;
        dtnh_status s;
        dtnh_arena_reset(step, 0);
        if ((s = prog_batch_load(b, d, ids + first, m, aug, NULL, &x, err)) ||
            (s = dtnh_resnet_infer(net, &x, step, &logits, err)))
            return s;
        for (i = 0; i < m; i++) {
            const float *row = logits.data + (size_t)i * (size_t)classes;
            int label = b->labels[i], pred = prog_argmax(row, classes);
            if (out->predictions) out->predictions[first + i] = pred;
            out->count++;
            if (label < 0) continue;
            if (label >= classes)
                return dtnh_fail(err, DTNH_ERR_ARG, "%s: image %d has label %d, the network has %d classes",
                                 d->path, ids[first + i], label, classes);
            {
                double l;
                if ((s = dtnh_softmax_cross_entropy(1, classes, row, &label, NULL, &l, err))) return s;
                loss_sum += l;
            }
            out->labelled++;
            out->correct += pred == label;
            if (out->confusion) out->confusion[label * classes + pred]++;
        }
    }
    out->loss = out->labelled ? loss_sum / out->labelled : NAN;
    return DTNH_OK;
}

#endif
