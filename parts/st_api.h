/* ============================================================================================
   Safetensors
   The weights format of the Hugging Face `safetensors` library: an 8-byte little-endian
   header length N, N bytes of JSON naming each tensor (dtype, shape, byte offsets), then the
   raw little-endian data. Read without malloc: the header lives in caller arena scratch.
   ============================================================================================ */

/* The dtypes read and written. F16 and BF16 are widened to float on reading and narrowed
   (round to nearest even) on writing; I64 holds BatchNorm's num_batches_tracked. */
typedef enum dtnh_st_dtype {
    DTNH_ST_F32 = 0,
    DTNH_ST_F16 = 1,
    DTNH_ST_BF16 = 2,
    DTNH_ST_I64 = 3
} dtnh_st_dtype;

#define DTNH_ST_MAX_DIMS 8
/* The largest header accepted, as in the reference implementation. */
#define DTNH_ST_MAX_HEADER 100000000u

/* One tensor of an opened file. */
typedef struct dtnh_st_entry {
    const char *name; /* NUL-terminated, inside the header scratch */
    dtnh_st_dtype dtype;
    int ndim; /* 0 for a scalar */
    uint64_t shape[DTNH_ST_MAX_DIMS];
    uint64_t count;      /* elements: the product of the shape */
    uint64_t begin, end; /* bytes, relative to the start of the data section */
} dtnh_st_entry;

/* One "__metadata__" pair (string to string). */
typedef struct dtnh_st_meta {
    const char *key, *value;
} dtnh_st_meta;

/* An opened file: the parsed and fully validated header, and where the data comes from. */
typedef struct dtnh_st_file {
    dtnh_st_entry *entries; /* in the order of the header */
    int count;
    dtnh_st_meta *meta;
    int meta_count;
    uint64_t header_bytes; /* N */
    uint64_t data_offset;  /* 8 + N: the start of the data section in the file */
    uint64_t data_bytes;   /* the length of the data section */
    const unsigned char *mem; /* the whole file, when opened from memory */
    void *fp;                 /* the FILE *, when opened from a path */
} dtnh_st_file;

DTNHDEF const char *dtnh_st_dtype_name(dtnh_st_dtype t);
DTNHDEF size_t dtnh_st_dtype_size(dtnh_st_dtype t);

/* Parses and checks the header of a file held in memory (data must outlive f). The header is
   copied into scratch and parsed there. Every check happens here: a file that opens has
   well-formed JSON, supported dtypes, unique names, and offsets that agree with dtype x shape
   and tile the data section exactly (no overlap, no gap), as the reference implementation
   demands. With a counting scratch arena only the scratch size is counted (f->count is 0). */
DTNHDEF dtnh_status dtnh_st_open_memory(dtnh_st_file *f, const void *data, size_t size,
                                        dtnh_arena *scratch, dtnh_error *err);
/* Index of the tensor called name, or -1. */
DTNHDEF int dtnh_st_find(const dtnh_st_file *f, const char *name);
/* The metadata value for key, or NULL. */
DTNHDEF const char *dtnh_st_meta_get(const dtnh_st_file *f, const char *key);
/* 1 when entry index has exactly this shape (ndim dimensions), else 0. */
DTNHDEF int dtnh_st_shape_is(const dtnh_st_file *f, int index, int ndim, const int *shape);
/* Reads tensor index (F32, F16 or BF16) as float into out, which holds count values, count
   being the tensor's element count. */
DTNHDEF dtnh_status dtnh_st_read_f32(dtnh_st_file *f, int index, float *out, size_t count,
                                     dtnh_error *err);
/* Reads tensor index (I64) into out, which holds count values. */
DTNHDEF dtnh_status dtnh_st_read_i64(dtnh_st_file *f, int index, int64_t *out, size_t count,
                                     dtnh_error *err);

/* A tensor to write: f32 for F32, F16 and BF16 (narrowed on the way), i64 for I64. */
typedef struct dtnh_st_tensor {
    const char *name;
    dtnh_st_dtype dtype;
    int ndim; /* 0..DTNH_ST_MAX_DIMS */
    int shape[DTNH_ST_MAX_DIMS];
    const float *f32;
    const int64_t *i64;
} dtnh_st_tensor;

/* Writes a safetensors file into buf (capacity bytes): the tensors in the order given, the
   header padded with spaces to a multiple of 8 as the reference writer does. *size gets the
   file's length; buf NULL only computes it. */
DTNHDEF dtnh_status dtnh_st_write_memory(const dtnh_st_tensor *tensors, int count,
                                         const dtnh_st_meta *meta, int meta_count, void *buf,
                                         size_t capacity, size_t *size, dtnh_error *err);

#ifndef DTNH_NO_STDIO
/* dtnh_st_open_memory for a file on disk: reads and checks the header, keeps the file open
   for the reads that follow. Close it with dtnh_st_close. */
DTNHDEF dtnh_status dtnh_st_open(dtnh_st_file *f, const char *path, dtnh_arena *scratch,
                                 dtnh_error *err);
/* Writes the file to "<path>.tmp", flushes it (and fsyncs it on POSIX), then renames it over
   path: a crash or a failure leaves the previous file whole. Needs no memory. */
DTNHDEF dtnh_status dtnh_st_save(const char *path, const dtnh_st_tensor *tensors, int count,
                                 const dtnh_st_meta *meta, int meta_count, dtnh_error *err);
#endif
/* Closes a file opened by dtnh_st_open (nothing to do for memory); safe to call twice. */
DTNHDEF void dtnh_st_close(dtnh_st_file *f);

/* Fails with DTNH_ERR_NUMERIC when a float tensor (F32, F16, BF16) holds a NaN or an Inf,
   naming the tensor and the element; I64 tensors pass. Reads the data without keeping it. */
DTNHDEF dtnh_status dtnh_st_check_finite(dtnh_st_file *f, int index, dtnh_error *err);

/* ============================================================================================
   ResNet-18 weights in safetensors
   torchvision's resnet18 state_dict names (conv1.weight, bn1.running_mean,
   bn1.num_batches_tracked as I64, layer1.0.conv1.weight, ..., fc.bias): load with a report,
   save, and read a network's configuration from a file's header alone.
   ============================================================================================ */

#define DTNH_LOAD_NAMES_SIZE 256

/* Zero means default. */
typedef struct dtnh_load_config {
    int strict; /* 1: a missing or unknown tensor, or a head of another class count, is an
                   error (DTNH_ERR_FORMAT) and nothing is loaded, as load_state_dict(strict) */
} dtnh_load_config;

/* What a load did. Names missing or unknown are counted and listed, never passed over in
   silence. */
typedef struct dtnh_load_report {
    int loaded;       /* tensors copied into the network (parameters and BN buffers) */
    int missing;      /* the network's tensors the file lacks: they keep their values */
    int unknown;      /* the file's tensors the network has no place for: ignored */
    int head_skipped; /* 1: the file's fc has another class count (the transfer case): fc.weight
                         and fc.bias keep the network's fresh initialisation */
    int file_classes; /* rows of the file's fc.weight, 0 when it has none */
    char missing_names[DTNH_LOAD_NAMES_SIZE]; /* the first ones, comma-separated, "..." after */
    char unknown_names[DTNH_LOAD_NAMES_SIZE];
} dtnh_load_report;

/* Loads a torchvision-named state_dict from an opened file into the network's weights
   (params.w) and BN buffers. F16 and BF16 are widened to float. Everything is checked before
   anything is written: a tensor of the wrong shape or dtype (an error naming it, both shapes
   given), a NaN or Inf (DTNH_ERR_NUMERIC) or a failing read leaves the network unchanged.
   report (may be NULL) says what was loaded, missing, unknown, and whether the head was
   skipped. */
DTNHDEF dtnh_status dtnh_resnet_load(dtnh_resnet *net, dtnh_st_file *f, const dtnh_load_config *cfg,
                                     dtnh_load_report *report, dtnh_error *err);
/* Writes the network's state_dict (parameters, running statistics, num_batches_tracked as
   I64) in torchvision's names and order as a safetensors file into buf; buf NULL only sets
   *size. */
DTNHDEF dtnh_status dtnh_resnet_save_memory(const dtnh_resnet *net, void *buf, size_t capacity,
                                            size_t *size, dtnh_error *err);
/* The configuration a file tells by its shapes: stem from conv1.weight's kernel (7: imagenet,
   3: cifar), width from its output channels, in_channels from its input channels, num_classes
   from fc.weight. Sets those four fields of cfg and leaves the others as they are. */
DTNHDEF dtnh_status dtnh_resnet_config_from_st(const dtnh_st_file *f, dtnh_resnet_config *cfg,
                                               dtnh_error *err);

#ifndef DTNH_NO_STDIO
/* dtnh_resnet_load from a path. scratch holds the parsed header meanwhile and is reset to
   where it was on return (dtnh_st_open on a counting arena tells the size). */
DTNHDEF dtnh_status dtnh_resnet_load_file(dtnh_resnet *net, const char *path, dtnh_arena *scratch,
                                          const dtnh_load_config *cfg, dtnh_load_report *report,
                                          dtnh_error *err);
/* dtnh_resnet_save_memory to a path, atomically as dtnh_st_save: a failure leaves the
   previous file whole. */
DTNHDEF dtnh_status dtnh_resnet_save(const dtnh_resnet *net, const char *path, dtnh_error *err);
/* dtnh_resnet_config_from_st from a path, reading the header only. */
DTNHDEF dtnh_status dtnh_resnet_config_from_file(const char *path, dtnh_arena *scratch,
                                                 dtnh_resnet_config *cfg, dtnh_error *err);
#endif
