/* ============================================================================================
   Data sets
   Readers for IDX (the MNIST family, uncompressed), CIFAR-10 binary batches and folders of
   PGM/PPM images with one sub-folder per class. Open a data set, ask for its count and shape,
   then read any images into your own buffers, so a data set need not fit in memory. Pixels
   come out as bytes, image after image, each channel-planar (C, H, W) like the network input.
   A dtnh_dataset reads through a file position: use one per thread, and do not copy an open
   one (both copies would close the same file).
   ============================================================================================ */

#define DTNH_PATH_SIZE 512
#define DTNH_MAX_CHANNELS 3
#define DTNH_MAX_SIDE 16384 /* largest image height or width the readers accept */

typedef enum dtnh_data_format {
    DTNH_DATA_NONE = 0,
    DTNH_DATA_IDX,     /* MNIST-style IDX: images 0x00000803, labels 0x00000801 */
    DTNH_DATA_CIFAR10, /* records of 1 label byte + 3072 pixel bytes (R, G, B planes, 32x32) */
    DTNH_DATA_FOLDER   /* root/<class>/<image>.pgm|ppm|pnm, classes = sorted sub-folder names */
} dtnh_data_format;

/* Internal: where a data set's bytes come from, a memory buffer or a file it opened. */
typedef struct dtnh__source {
    const unsigned char *mem; /* memory source, or NULL */
    void *file;               /* FILE * the data set opened, or NULL */
    size_t size;              /* bytes in the source */
    size_t pos;               /* the file's position, so sequential reads need no seek */
    char name[DTNH_PATH_SIZE]; /* the path, or "<memory>", for messages */
} dtnh__source;

typedef struct dtnh_dataset {
    dtnh_data_format format;
    int count;                   /* images */
    int channels, height, width; /* every image has this shape */
    size_t image_bytes;          /* channels * height * width */
    int has_labels;              /* 0: IDX images without a labels file; labels read as -1 */
    int classes;                 /* labels lie in [0, classes) */
    int max_label, max_label_at; /* the largest label and the first image that has it */
    /* IDX and CIFAR-10 */
    dtnh__source images, labels;
    size_t image_offset, image_stride; /* where image i starts: offset + i * stride */
    size_t label_offset, label_stride; /* where label i is (CIFAR-10: in the images source) */
    /* folders (in the caller's arena) */
    char root[DTNH_PATH_SIZE];
    const char *const *class_names; /* [classes], sorted by strcmp */
    const char *const *files;       /* [count] file names, class by class, sorted in a class */
    const int *file_labels;         /* [count] */
} dtnh_dataset;

#ifndef DTNH_NO_STDIO
/* IDX images (count, rows, columns as big-endian u32) and, unless labels_path is NULL, their
   labels. Checks magic numbers, sizes against the headers and the two counts; classes becomes
   the largest label + 1 (see dtnh_dataset_set_classes). Gzipped files are refused. */
DTNHDEF dtnh_status dtnh_idx_open(dtnh_dataset *ds, const char *images_path,
                                  const char *labels_path, dtnh_error *err);
/* A CIFAR-10 binary batch (data_batch_N.bin, test_batch.bin), or several concatenated
   (`cat data_batch_*.bin > train.bin`); 3 x 32 x 32 images, 10 classes. */
DTNHDEF dtnh_status dtnh_cifar10_open(dtnh_dataset *ds, const char *path, dtnh_error *err);
/* A folder with one sub-folder per class (hidden entries skipped); class k is the k-th
   sub-folder name in strcmp order, like torchvision's ImageFolder. Images are binary or ASCII
   PGM/PPM (P5, P6, P2, P3; maxval <= 255, scaled to 0..255), named *.pgm, *.ppm or *.pnm, all of
   one shape: every header is checked here, so a wrong-sized image fails at open, named. The
   file list lives in `a`; a counting arena sizes it (count and classes are then set, but the
   data set cannot be read). Needs POSIX <dirent.h>; define DTNH_NO_DIRENT to leave it out. */
DTNHDEF dtnh_status dtnh_folder_open(dtnh_dataset *ds, const char *root, dtnh_arena *a,
                                     dtnh_error *err);
/* Any of the three, told apart by what path is: a folder, IDX images (by the magic; labels
   from labels_path, may be NULL), or a CIFAR-10 batch (a whole number of 3073-byte records;
   labels_path must be NULL). `a` is used only by folders (may be NULL otherwise). For programs
   that take a --data argument. */
DTNHDEF dtnh_status dtnh_dataset_open(dtnh_dataset *ds, const char *path, const char *labels_path,
                                      dtnh_arena *a, dtnh_error *err);
#endif
/* The same readers over memory buffers (kept by the caller while the data set is in use). */
DTNHDEF dtnh_status dtnh_idx_open_memory(dtnh_dataset *ds, const void *images, size_t images_size,
                                         const void *labels, size_t labels_size, dtnh_error *err);
DTNHDEF dtnh_status dtnh_cifar10_open_memory(dtnh_dataset *ds, const void *data, size_t size,
                                             dtnh_error *err);
/* Closes the files a data set opened; safe to call twice, or on a data set that failed to open. */
DTNHDEF void dtnh_dataset_close(dtnh_dataset *ds);

/* Images [first, first + n) into pixels (n * image_bytes) and their labels into labels (n ints;
   may be NULL; -1 without labels). Out-of-range labels are refused here too. */
DTNHDEF dtnh_status dtnh_dataset_read(dtnh_dataset *ds, int first, int n, unsigned char *pixels,
                                      int *labels, dtnh_error *err);
/* The images indices[0..n) in that order; pixels or labels may be NULL. */
DTNHDEF dtnh_status dtnh_dataset_read_indices(dtnh_dataset *ds, const int *indices, int n,
                                              unsigned char *pixels, int *labels, dtnh_error *err);
/* Every label (count ints), for sampling. */
DTNHDEF dtnh_status dtnh_dataset_labels(dtnh_dataset *ds, int *labels, dtnh_error *err);
/* Declares the class count (a model's, say): fails naming the first image whose label is not
   below it. A test set that lacks a class keeps its labels meaning the same. */
DTNHDEF dtnh_status dtnh_dataset_set_classes(dtnh_dataset *ds, int classes, dtnh_error *err);

/* One PGM/PPM image from memory: its shape, and its pixels (channel-planar) when pixels is not
   NULL and capacity holds them. For your own files, and for fuzzing the parser. */
DTNHDEF dtnh_status dtnh_pnm_decode(const void *data, size_t size, unsigned char *pixels,
                                    size_t capacity, int *channels, int *height, int *width,
                                    dtnh_error *err);

/* ============================================================================================
   Image sets and sampling
   A few-shot set loaded whole, and seeded choices of images: k per class, a class subset with
   relabelling, train / validation / test splits, shuffled minibatch index streams. Every
   choice is a function of the seed alone, so a run repeats exactly.
   ============================================================================================ */

/* Images held in memory, in the layout the readers produce. */
typedef struct dtnh_image_set {
    int count, channels, height, width;
    int classes; /* the data set's; set it yourself after dtnh_relabel(set.labels, ...) */
    size_t image_bytes;
    unsigned char *pixels; /* count * image_bytes */
    int *labels;           /* count */
} dtnh_image_set;

/* Loads images indices[0..n) (indices NULL: images [0, n)) of ds into memory from `a`. With a
   counting arena only the size is counted; nothing is read. */
DTNHDEF dtnh_status dtnh_image_set_load(dtnh_image_set *set, dtnh_dataset *ds, const int *indices,
                                        int n, dtnh_arena *a, dtnh_error *err);

/* Class subset with relabelling, in place: a label equal to classes[j] becomes j, any other
   becomes -1 (so {5,6,7,8,9} maps 5..9 to 0..4 and drops 0..4). Labels of -1 are skipped by
   every sampling function below. */
DTNHDEF dtnh_status dtnh_relabel(int *labels, int count, const int *classes, int nclasses,
                                 dtnh_error *err);
/* Images with each label in [0, classes) into counts[classes]. */
DTNHDEF void dtnh_class_counts(const int *labels, int count, int classes, int *counts);

/* k images of every class in [0, classes), chosen at random: indices[classes * k], class by
   class, ascending within a class. Fails naming a class with fewer than k images. */
DTNHDEF dtnh_status dtnh_sample_per_class(const int *labels, int count, int classes, int k,
                                          dtnh_rng *rng, int *indices, dtnh_error *err);

#define DTNH_SPLIT_REST (-1) /* a part that takes what the other parts leave of each class */

/* Splits images into parts, class by class: part p gets per_class[p] random images of every
   class (or, for the one part that may be DTNH_SPLIT_REST, all the others). part[i] receives
   the part of image i, or -1 (label outside [0, classes), or left over). The parts are
   disjoint; draws go class by class, part by part, so the same seed gives the same split.
   E.g. {30, 20, DTNH_SPLIT_REST}: 30 train, 20 validation and the rest test, per class. */
DTNHDEF dtnh_status dtnh_split_per_class(const int *labels, int count, int classes,
                                         const int *per_class, int parts, dtnh_rng *rng, int *part,
                                         dtnh_error *err);
/* A stratified hold-out: of each class's n images, floor(fraction * n + 0.5) random ones get
   part 1, the others part 0 (labels outside [0, classes): -1). */
DTNHDEF dtnh_status dtnh_split_fraction(const int *labels, int count, int classes, float fraction,
                                        dtnh_rng *rng, int *part, dtnh_error *err);
/* The images of one part, ascending, into indices (may be NULL to count); returns how many. */
DTNHDEF int dtnh_part_indices(const int *part, int count, int which, int *indices);

/* Minibatch indices over [0, count) in shuffled epochs, like PyTorch's DataLoader with
   shuffle=True, drop_last=True: every batch is full and holds no repeats; when fewer than n
   are left in an epoch, they are skipped and a new shuffle begins (a batch larger than the
   whole set spans several shuffles). Its own seed: augmentation draws do not change it. */
typedef struct dtnh_batch_stream {
    int *order; /* count, in the arena */
    int count;
    int next;  /* position in order */
    int epoch; /* shuffles started after the first */
    dtnh_rng rng;
} dtnh_batch_stream;

DTNHDEF dtnh_status dtnh_batch_stream_init(dtnh_batch_stream *bs, int count, uint64_t seed,
                                           dtnh_arena *a, dtnh_error *err);
DTNHDEF dtnh_status dtnh_batch_stream_next(dtnh_batch_stream *bs, int n, int *indices,
                                           dtnh_error *err);

/* ============================================================================================
   Batches and augmentation
   Bytes to an NCHW float batch, in torchvision's order: bilinear resize, random crop with zero
   padding, horizontal flip, then x = (v / 255 - mean) / std per channel.
   ============================================================================================ */

/* Zero means default in every field. */
typedef struct dtnh_augment_config {
    float mean[DTNH_MAX_CHANNELS]; /* per output channel; read only when std is set */
    float std[DTNH_MAX_CHANNELS];  /* all zero: mean 0.5, std 0.5 for every channel */
    int out_channels;  /* 0: the images' own; 3 with grey images repeats the grey channel */
    int out_height, out_width; /* 0: the images' own; otherwise a bilinear resize with PyTorch's
                                  F.interpolate(mode="bilinear", align_corners=False) semantics
                                  (no antialiasing, as that call does by default) */
    int pad;  /* random crop: pad every side with pad zero-valued pixels (v = 0), crop back to
                 the size at a random offset, as torchvision's RandomCrop(size, padding=pad) */
    int flip; /* nonzero: flip horizontally with probability 1/2 (off by default: wrong for
                 digits) */
} dtnh_augment_config;

/* The batch's shape [n, C, H, W] for n images of channels x height x width under cfg (NULL:
   defaults); fails on a config that does not fit those images. */
DTNHDEF dtnh_status dtnh_batch_shape(const dtnh_augment_config *cfg, int n, int channels,
                                     int height, int width, int shape[4], dtnh_error *err);
/* n images laid out as the readers give them (n * channels * height * width bytes) into out,
   a tensor of the shape above. rng NULL means evaluation: no crop offset, no flip (resize and
   normalisation still apply). With an rng each image draws, in this order, the crop's row
   offset then column offset (dtnh_rng_below(2 * pad + 1) each, when pad > 0) then the flip
   (dtnh_rng_below(2), when flip is on). */
DTNHDEF dtnh_status dtnh_batch_assemble(const dtnh_augment_config *cfg, const unsigned char *pixels,
                                        int n, int channels, int height, int width, dtnh_rng *rng,
                                        dtnh_tensor *out, dtnh_error *err);
/* The same for set images indices[0..n), with their labels into labels (may be NULL). */
DTNHDEF dtnh_status dtnh_batch_from_set(const dtnh_augment_config *cfg, const dtnh_image_set *set,
                                        const int *indices, int n, dtnh_rng *rng, dtnh_tensor *out,
                                        int *labels, dtnh_error *err);
