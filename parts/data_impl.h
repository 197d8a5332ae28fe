/* ---- data: byte sources ---------------------------------------------------------------------
   Every reader parses through a source, a memory buffer or a file, with positional reads that
   check the size first: the same parsing code serves files, buffers and the fuzzers. */

#include <limits.h>

#ifndef DTNH_NO_STDIO
#include <errno.h>
#include <stdio.h>
#if !defined(DTNH_NO_DIRENT) && !defined(_WIN32)
#define DTNH__HAVE_DIRENT 1
#include <dirent.h>
#endif
#endif

#define DTNH__IDX_IMAGES 0x00000803u
#define DTNH__IDX_LABELS 0x00000801u
#define DTNH__CIFAR_PIXELS 3072u

static dtnh_status dtnh__src_memory(dtnh__source *s, const void *data, size_t size,
                                    dtnh_error *err) {
    memset(s, 0, sizeof *s);
    strcpy(s->name, "<memory>");
    if (!data) return dtnh_fail(err, DTNH_ERR_ARG, "data set: NULL memory buffer");
    s->mem = (const unsigned char *)data;
    s->size = size;
    return DTNH_OK;
}

static void dtnh__src_close(dtnh__source *s) {
#ifndef DTNH_NO_STDIO
    if (s->file) fclose((FILE *)s->file);
#endif
    s->file = NULL;
    s->mem = NULL;
}

#ifndef DTNH_NO_STDIO
static dtnh_status dtnh__src_open_file(dtnh__source *s, const char *path, dtnh_error *err) {
    FILE *f;
    long end = -1;
    memset(s, 0, sizeof *s);
    strcpy(s->name, "<none>");
    if (!path) return dtnh_fail(err, DTNH_ERR_ARG, "data set: NULL path");
    if (strlen(path) >= DTNH_PATH_SIZE)
        return dtnh_fail(err, DTNH_ERR_ARG, "path '%.80s...' is longer than %d bytes", path,
                         DTNH_PATH_SIZE - 1);
    strcpy(s->name, path);
    f = fopen(path, "rb");
    if (!f) return dtnh_fail(err, DTNH_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
    if (fseek(f, 0, SEEK_END) == 0) end = ftell(f);
    if (end < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        return dtnh_fail(err, DTNH_ERR_IO, "cannot find the size of '%s'", path);
    }
    s->file = f;
    s->size = (size_t)end;
    return DTNH_OK;
}
#endif

/* n bytes at offset off into buf; reading past the end is a truncated file. */
static dtnh_status dtnh__src_read(dtnh__source *s, size_t off, void *buf, size_t n,
                                  dtnh_error *err) {
    if (off > s->size || n > s->size - off)
        return dtnh_fail(err, DTNH_ERR_FORMAT,
                         "'%s' is truncated: %zu bytes wanted at offset %zu, it has %zu", s->name,
                         n, off, s->size);
    if (n == 0) return DTNH_OK;
    if (s->mem) {
        memcpy(buf, s->mem + off, n);
        return DTNH_OK;
    }
#ifndef DTNH_NO_STDIO
    if (s->file) {
        FILE *f = (FILE *)s->file;
        size_t got;
        if (s->pos != off && (off > (size_t)LONG_MAX || fseek(f, (long)off, SEEK_SET) != 0)) {
            s->pos = (size_t)-1;
            return dtnh_fail(err, DTNH_ERR_IO, "cannot seek to offset %zu in '%s'", off, s->name);
        }
        got = fread(buf, 1, n, f);
        s->pos = off + got;
        if (got != n)
            return dtnh_fail(err, DTNH_ERR_IO, "'%s': read %zu of %zu bytes at offset %zu", s->name,
                             got, n, off);
        return DTNH_OK;
    }
#endif
    return dtnh_fail(err, DTNH_ERR_ARG, "data set '%s' is not open", s->name);
}

static uint32_t dtnh__be32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static void dtnh__dataset_reset(dtnh_dataset *ds, dtnh_data_format format) {
    memset(ds, 0, sizeof *ds);
    ds->format = format;
    ds->max_label = -1;
    ds->max_label_at = -1;
}

DTNHDEF void dtnh_dataset_close(dtnh_dataset *ds) {
    if (!ds) return;
    dtnh__src_close(&ds->images);
    dtnh__src_close(&ds->labels);
}

/* CIFAR-10 keeps its labels inside the image records. */
static dtnh__source *dtnh__label_source(dtnh_dataset *ds) {
    return ds->format == DTNH_DATA_CIFAR10 ? &ds->images : &ds->labels;
}

static const char *dtnh__label_origin(dtnh_dataset *ds) {
    return ds->format == DTNH_DATA_FOLDER ? ds->root : dtnh__label_source(ds)->name;
}

/* ---- data: labels -------------------------------------------------------------------------- */

/* Labels [first, first + n) of an IDX or CIFAR-10 set into out, through a small stack buffer. */
static dtnh_status dtnh__read_label_bytes(dtnh_dataset *ds, int first, int n, int *out,
                                          dtnh_error *err) {
    unsigned char buf[512];
    dtnh__source *src = dtnh__label_source(ds);
    int done = 0;
    while (done < n) {
        int k = n - done < (int)sizeof buf ? n - done : (int)sizeof buf, j;
        size_t pos = ds->label_offset + (size_t)(first + done) * ds->label_stride;
        dtnh_status s = DTNH_OK;
        if (ds->label_stride == 1) s = dtnh__src_read(src, pos, buf, (size_t)k, err);
        for (j = 0; ds->label_stride != 1 && j < k && !s; j++)
            s = dtnh__src_read(src, pos + (size_t)j * ds->label_stride, buf + j, 1, err);
        if (s) return s;
        for (j = 0; j < k; j++) out[done + j] = buf[j];
        done += k;
    }
    return DTNH_OK;
}

/* Labels [first, first + n) in any format. */
static dtnh_status dtnh__read_labels(dtnh_dataset *ds, int first, int n, int *out,
                                     dtnh_error *err) {
    int j;
    if (ds->format == DTNH_DATA_FOLDER) {
        memcpy(out, ds->file_labels + first, (size_t)n * sizeof(int));
        return DTNH_OK;
    }
    if (!ds->has_labels) {
        for (j = 0; j < n; j++) out[j] = -1;
        return DTNH_OK;
    }
    return dtnh__read_label_bytes(ds, first, n, out, err);
}

/* Finds the largest label and where it first occurs; classes becomes it + 1. */
static dtnh_status dtnh__scan_labels(dtnh_dataset *ds, dtnh_error *err) {
    int chunk[256], first;
    ds->max_label = -1;
    ds->max_label_at = -1;
    for (first = 0; first < ds->count; first += 256) {
        int n = ds->count - first < 256 ? ds->count - first : 256, j;
        dtnh_status s = dtnh__read_labels(ds, first, n, chunk, err);
        if (s) return s;
        for (j = 0; j < n; j++)
            if (chunk[j] > ds->max_label) {
                ds->max_label = chunk[j];
                ds->max_label_at = first + j;
            }
    }
    ds->classes = ds->max_label + 1;
    return DTNH_OK;
}

static dtnh_status dtnh__bad_label(dtnh_dataset *ds, int label, int index, dtnh_error *err) {
    if (ds->format == DTNH_DATA_CIFAR10)
        return dtnh_fail(err, DTNH_ERR_FORMAT,
                         "label %d of image %d (offset %zu) in '%s' is out of range [0, %d)", label,
                         index, (size_t)index * ds->label_stride, ds->images.name, ds->classes);
    return dtnh_fail(err, DTNH_ERR_FORMAT, "label %d of image %d in '%s' is out of range [0, %d)",
                     label, index, dtnh__label_origin(ds), ds->classes);
}

DTNHDEF dtnh_status dtnh_dataset_set_classes(dtnh_dataset *ds, int classes, dtnh_error *err) {
    if (!ds || classes < 1)
        return dtnh_fail(err, DTNH_ERR_ARG, "set_classes: NULL data set or %d classes", classes);
    if (ds->has_labels && ds->max_label >= classes) {
        ds->classes = classes;
        return dtnh__bad_label(ds, ds->max_label, ds->max_label_at, err);
    }
    ds->classes = classes;
    return DTNH_OK;
}

DTNHDEF dtnh_status dtnh_dataset_labels(dtnh_dataset *ds, int *labels, dtnh_error *err) {
    if (!ds || !labels) return dtnh_fail(err, DTNH_ERR_ARG, "dataset_labels: NULL argument");
    if (ds->format == DTNH_DATA_FOLDER && !ds->file_labels)
        return dtnh_fail(err, DTNH_ERR_ARG, "folder '%s' was only sized (counting arena)", ds->root);
    return dtnh__read_labels(ds, 0, ds->count, labels, err);
}

/* ---- data: IDX ----------------------------------------------------------------------------- */

/* Reads an IDX header of ndim u32 dimensions after the magic; refuses any other magic. */
static dtnh_status dtnh__idx_header(dtnh__source *s, uint32_t magic_wanted, uint32_t *dims,
                                    dtnh_error *err) {
    unsigned char h[16];
    int ndim = (int)(magic_wanted & 0xFFu), i;
    uint32_t magic;
    dtnh_status st;
    const char *what = ndim == 3 ? "images" : "labels";
    if (s->size < 4)
        return dtnh_fail(err, DTNH_ERR_FORMAT, "'%s' is %zu bytes: too short for IDX %s", s->name,
                         s->size, what);
    if ((st = dtnh__src_read(s, 0, h, 4, err))) return st;
    magic = dtnh__be32(h);
    if (h[0] == 0x1F && h[1] == 0x8B)
        return dtnh_fail(err, DTNH_ERR_FORMAT, "'%s' is gzip-compressed: gunzip it first", s->name);
    if (magic != magic_wanted)
        return dtnh_fail(err, DTNH_ERR_FORMAT, "'%s' has magic 0x%08x, expected 0x%08x (IDX %s)",
                         s->name, (unsigned)magic, (unsigned)magic_wanted, what);
    if (s->size < 4 + 4 * (size_t)ndim)
        return dtnh_fail(err, DTNH_ERR_FORMAT, "'%s' is truncated inside its %d-byte IDX header",
                         s->name, 4 + 4 * ndim);
    if ((st = dtnh__src_read(s, 4, h + 4, 4 * (size_t)ndim, err))) return st;
    for (i = 0; i < ndim; i++) dims[i] = dtnh__be32(h + 4 + 4 * i);
    return DTNH_OK;
}

/* The body of a source must be exactly `want` bytes after `header`. */
static dtnh_status dtnh__check_body_size(const dtnh__source *s, size_t header, size_t want,
                                         const char *what, dtnh_error *err) {
    size_t have = s->size - header;
    if (have < want)
        return dtnh_fail(err, DTNH_ERR_FORMAT,
                         "'%s' is truncated: its header announces %s (%zu bytes), only %zu follow",
                         s->name, what, want, have);
    if (have > want)
        return dtnh_fail(err, DTNH_ERR_FORMAT,
                         "'%s' has %zu bytes after %s (%zu bytes) that its header does not announce",
                         s->name, have - want, what, want);
    return DTNH_OK;
}

static dtnh_status dtnh__idx_images(dtnh_dataset *ds, dtnh_error *err) {
    uint32_t d[3] = {0, 0, 0};
    size_t total = 0;
    char what[96];
    dtnh_status s = dtnh__idx_header(&ds->images, DTNH__IDX_IMAGES, d, err);
    if (s) return s;
    if (d[0] == 0 || d[0] > (uint32_t)INT_MAX)
        return dtnh_fail(err, DTNH_ERR_FORMAT, "'%s' announces %lu images, expected 1..%d",
                         ds->images.name, (unsigned long)d[0], INT_MAX);
    if (d[1] == 0 || d[2] == 0 || d[1] > DTNH_MAX_SIDE || d[2] > DTNH_MAX_SIDE)
        return dtnh_fail(err, DTNH_ERR_FORMAT, "'%s' announces %lux%lu images, expected 1..%d a side",
                         ds->images.name, (unsigned long)d[1], (unsigned long)d[2], DTNH_MAX_SIDE);
    ds->count = (int)d[0];
    ds->channels = 1;
    ds->height = (int)d[1];
    ds->width = (int)d[2];
    ds->image_bytes = (size_t)d[1] * d[2];
    ds->image_offset = 16;
    ds->image_stride = ds->image_bytes;
    if ((s = dtnh_size_mul(ds->image_bytes, (size_t)ds->count, &total, err))) return s;
    snprintf(what, sizeof what, "%d images of %dx%d", ds->count, ds->height, ds->width);
    return dtnh__check_body_size(&ds->images, 16, total, what, err);
}

static dtnh_status dtnh__idx_labels(dtnh_dataset *ds, dtnh_error *err) {
    uint32_t n = 0;
    char what[64];
    dtnh_status s = dtnh__idx_header(&ds->labels, DTNH__IDX_LABELS, &n, err);
    if (s) return s;
    if (n != (uint32_t)ds->count)
        return dtnh_fail(err, DTNH_ERR_FORMAT, "'%s' holds %lu labels but '%s' holds %d images",
                         ds->labels.name, (unsigned long)n, ds->images.name, ds->count);
    ds->label_offset = 8;
    ds->label_stride = 1;
    ds->has_labels = 1;
    snprintf(what, sizeof what, "%d labels", ds->count);
    return dtnh__check_body_size(&ds->labels, 8, (size_t)ds->count, what, err);
}

static dtnh_status dtnh__idx_finish(dtnh_dataset *ds, int with_labels, dtnh_error *err) {
    dtnh_status s = dtnh__idx_images(ds, err);
    if (!s && with_labels) s = dtnh__idx_labels(ds, err);
    if (!s && with_labels) s = dtnh__scan_labels(ds, err);
    if (s) dtnh_dataset_close(ds);
    return s;
}

#ifndef DTNH_NO_STDIO
DTNHDEF dtnh_status dtnh_idx_open(dtnh_dataset *ds, const char *images_path,
                                  const char *labels_path, dtnh_error *err) {
    dtnh_status s;
    if (!ds) return dtnh_fail(err, DTNH_ERR_ARG, "idx_open: NULL data set");
    dtnh__dataset_reset(ds, DTNH_DATA_IDX);
    if ((s = dtnh__src_open_file(&ds->images, images_path, err))) return s;
    if (labels_path && (s = dtnh__src_open_file(&ds->labels, labels_path, err))) {
        dtnh_dataset_close(ds);
        return s;
    }
    return dtnh__idx_finish(ds, labels_path != NULL, err);
}
#endif

DTNHDEF dtnh_status dtnh_idx_open_memory(dtnh_dataset *ds, const void *images, size_t images_size,
                                         const void *labels, size_t labels_size, dtnh_error *err) {
    dtnh_status s;
    if (!ds) return dtnh_fail(err, DTNH_ERR_ARG, "idx_open_memory: NULL data set");
    dtnh__dataset_reset(ds, DTNH_DATA_IDX);
    if ((s = dtnh__src_memory(&ds->images, images, images_size, err))) return s;
    if (labels && (s = dtnh__src_memory(&ds->labels, labels, labels_size, err))) return s;
    return dtnh__idx_finish(ds, labels != NULL, err);
}

/* ---- data: CIFAR-10 ------------------------------------------------------------------------ */

static dtnh_status dtnh__cifar_finish(dtnh_dataset *ds, dtnh_error *err) {
    dtnh__source *src = &ds->images;
    size_t rec = 1 + DTNH__CIFAR_PIXELS, n = src->size / rec;
    dtnh_status s;
    ds->channels = 3;
    ds->height = ds->width = 32;
    ds->image_bytes = DTNH__CIFAR_PIXELS;
    ds->image_offset = 1;
    ds->image_stride = rec;
    ds->label_offset = 0;
    ds->label_stride = rec;
    ds->has_labels = 1;
    if (src->size == 0 || src->size % rec != 0 || n > (size_t)INT_MAX) {
        dtnh_fail(err, DTNH_ERR_FORMAT,
                  "'%s' is %zu bytes, not a whole number of %zu-byte CIFAR-10 records (1 label + "
                  "3072 pixels): %zu bytes follow record %zu",
                  src->name, src->size, rec, src->size % rec, n);
        dtnh_dataset_close(ds);
        return DTNH_ERR_FORMAT;
    }
    ds->count = (int)n;
    s = dtnh__scan_labels(ds, err);
    if (!s) s = dtnh_dataset_set_classes(ds, 10, err);
    if (s) dtnh_dataset_close(ds);
    return s;
}

#ifndef DTNH_NO_STDIO
DTNHDEF dtnh_status dtnh_cifar10_open(dtnh_dataset *ds, const char *path, dtnh_error *err) {
    dtnh_status s;
    if (!ds) return dtnh_fail(err, DTNH_ERR_ARG, "cifar10_open: NULL data set");
    dtnh__dataset_reset(ds, DTNH_DATA_CIFAR10);
    if ((s = dtnh__src_open_file(&ds->images, path, err))) return s;
    return dtnh__cifar_finish(ds, err);
}
#endif

DTNHDEF dtnh_status dtnh_cifar10_open_memory(dtnh_dataset *ds, const void *data, size_t size,
                                             dtnh_error *err) {
    dtnh_status s;
    if (!ds) return dtnh_fail(err, DTNH_ERR_ARG, "cifar10_open_memory: NULL data set");
    dtnh__dataset_reset(ds, DTNH_DATA_CIFAR10);
    if ((s = dtnh__src_memory(&ds->images, data, size, err))) return s;
    return dtnh__cifar_finish(ds, err);
}

/* ---- data: PGM / PPM ------------------------------------------------------------------------
   Netpbm P2/P5 (grey) and P3/P6 (RGB), maxval 1..255, through a small buffered reader so the
   header's comments and the ASCII bodies parse the same from a file or from memory. */

typedef struct dtnh__reader {
    dtnh__source *src;
    size_t next;     /* source offset just past buf's contents */
    size_t len, at;  /* bytes in buf, and the next one to hand out */
    dtnh_status status; /* a failed read, already reported into err */
    dtnh_error *err;
    unsigned char buf[1024];
} dtnh__reader;

typedef struct dtnh__pnm {
    int kind; /* 2, 3, 5 or 6 */
    int channels, width, height, maxval;
    size_t data_offset; /* first byte after the header */
} dtnh__pnm;

static void dtnh__reader_init(dtnh__reader *r, dtnh__source *src, dtnh_error *err) {
    r->src = src;
    r->next = r->len = r->at = 0;
    r->status = DTNH_OK;
    r->err = err;
}

/* The next byte, or -1 at the end or after a failed read (then r->status says which). */
static int dtnh__reader_getc(dtnh__reader *r) {
    if (r->at == r->len) {
        size_t n = r->src->size - r->next;
        if (n > sizeof r->buf) n = sizeof r->buf;
        if (n == 0 || r->status) return -1;
        r->status = dtnh__src_read(r->src, r->next, r->buf, n, r->err);
        if (r->status) return -1;
        r->next += n;
        r->len = n;
        r->at = 0;
    }
    return r->buf[r->at++];
}

static size_t dtnh__reader_offset(const dtnh__reader *r) { return r->next - r->len + r->at; }

static int dtnh__is_space(int c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* Skips a # comment through its line end; returns the line end (or -1). */
static int dtnh__skip_comment(dtnh__reader *r) {
    int c;
    do c = dtnh__reader_getc(r);
    while (c >= 0 && c != '\n' && c != '\r');
    return c;
}

/* The next decimal number after blanks and comments. *end gets the byte that ended it (a
   comment counts as a line end). Returns 0, -1 without digits, -2 when too large. */
static int dtnh__pnm_number(dtnh__reader *r, long *value, int *end) {
    int c = dtnh__reader_getc(r), digits = 0;
    long v = 0;
    while (c == '#' || dtnh__is_space(c))
        c = c == '#' ? dtnh__skip_comment(r) : dtnh__reader_getc(r);
    for (; c >= '0' && c <= '9'; c = dtnh__reader_getc(r), digits++) {
        if (v > 99999999L) return -2;
        v = v * 10 + (c - '0');
    }
    if (c == '#') c = dtnh__skip_comment(r) < 0 ? -1 : '\n';
    *end = c;
    *value = v;
    return digits ? 0 : -1;
}

static dtnh_status dtnh__pnm_header(dtnh__reader *r, dtnh__pnm *p, dtnh_error *err) {
    static const char *const what[3] = {"width", "height", "maxval"};
    const char *name = r->src->name;
    long v[3];
    int c0, c1, i;
    memset(p, 0, sizeof *p);
    c0 = dtnh__reader_getc(r);
    c1 = dtnh__reader_getc(r);
    if (r->status) return r->status;
    if (c0 != 'P' || !(c1 == '2' || c1 == '3' || c1 == '5' || c1 == '6'))
        return dtnh_fail(err, DTNH_ERR_FORMAT,
                         "'%s' is not a PGM/PPM image: it starts with 0x%02x 0x%02x, expected P2, "
                         "P3, P5 or P6", name, c0 & 0xFF, c1 & 0xFF);
    p->kind = c1 - '0';
    p->channels = p->kind == 3 || p->kind == 6 ? 3 : 1;
    for (i = 0; i < 3; i++) {
        int end, rc = dtnh__pnm_number(r, &v[i], &end);
        if (r->status) return r->status;
        if (rc == -2)
            return dtnh_fail(err, DTNH_ERR_FORMAT, "'%s': the header's %s is too large", name, what[i]);
        if (rc)
            return dtnh_fail(err, DTNH_ERR_FORMAT, "'%s': the header ends before its %s", name, what[i]);
        if (!dtnh__is_space(end))
            return dtnh_fail(err, DTNH_ERR_FORMAT, "'%s': %s in the header after its %s", name,
                             end < 0 ? "the file ends" : "an unexpected byte", what[i]);
    }
    if (v[0] < 1 || v[1] < 1 || v[0] > DTNH_MAX_SIDE || v[1] > DTNH_MAX_SIDE)
        return dtnh_fail(err, DTNH_ERR_FORMAT, "'%s' is %ldx%ld, expected 1..%d a side", name, v[0],
                         v[1], DTNH_MAX_SIDE);
    if (v[2] < 1 || v[2] > 255)
        return dtnh_fail(err, DTNH_ERR_FORMAT,
                         "'%s' has maxval %ld, expected 1..255 (16-bit PGM/PPM is not supported)",
                         name, v[2]);
    p->width = (int)v[0];
    p->height = (int)v[1];
    p->maxval = (int)v[2];
    p->data_offset = dtnh__reader_offset(r);
    return DTNH_OK;
}

/* One pixel value of the body: a byte (P5, P6) or a decimal (P2, P3); fails with a message. */
static dtnh_status dtnh__pnm_value(dtnh__reader *r, const dtnh__pnm *p, size_t i, size_t n,
                                   long *v, dtnh_error *err) {
    int rc = 0, end = ' ';
    if (p->kind >= 5) {
        int c = dtnh__reader_getc(r);
        rc = c < 0 ? -1 : 0;
        *v = c;
    } else {
        rc = dtnh__pnm_number(r, v, &end);
    }
    if (r->status) return r->status;
    if (rc || !(dtnh__is_space(end) || end < 0))
        return dtnh_fail(err, DTNH_ERR_FORMAT, "'%s': %s at pixel value %zu of %zu",
                         r->src->name, rc == -1 ? "truncated" : "a bad value", i, n);
    if (*v > p->maxval)
        return dtnh_fail(err, DTNH_ERR_FORMAT, "'%s': pixel value %zu is %ld, above maxval %d",
                         r->src->name, i, *v, p->maxval);
    return DTNH_OK;
}

/* The pixels after the header, channel-planar, scaled to 0..255 when maxval is not 255. */
static dtnh_status dtnh__pnm_body(dtnh__reader *r, const dtnh__pnm *p, unsigned char *pixels,
                                  dtnh_error *err) {
    size_t plane = (size_t)p->width * (size_t)p->height, n = plane * (size_t)p->channels, i;
    if (p->kind >= 5 && r->src->size - p->data_offset < n)
        return dtnh_fail(err, DTNH_ERR_FORMAT,
                         "'%s' is truncated: %zu pixel bytes follow the header at offset %zu, %zu "
                         "needed", r->src->name, r->src->size - p->data_offset, p->data_offset, n);
    if (p->kind == 5 && p->maxval == 255)
        return dtnh__src_read(r->src, p->data_offset, pixels, n, err);
    for (i = 0; i < n; i++) {
        long v;
        dtnh_status s = dtnh__pnm_value(r, p, i, n, &v, err);
        if (s) return s;
        if (p->maxval != 255) v = (v * 255 + p->maxval / 2) / p->maxval;
        pixels[(i % (size_t)p->channels) * plane + i / (size_t)p->channels] = (unsigned char)v;
    }
    return DTNH_OK;
}

DTNHDEF dtnh_status dtnh_pnm_decode(const void *data, size_t size, unsigned char *pixels,
                                    size_t capacity, int *channels, int *height, int *width,
                                    dtnh_error *err) {
    dtnh__source src;
    dtnh__reader r;
    dtnh__pnm p;
    dtnh_status s = dtnh__src_memory(&src, data, size, err);
    size_t need;
    if (s) return s;
    dtnh__reader_init(&r, &src, err);
    if ((s = dtnh__pnm_header(&r, &p, err))) return s;
    if (channels) *channels = p.channels;
    if (height) *height = p.height;
    if (width) *width = p.width;
    if (!pixels) return DTNH_OK;
    need = (size_t)p.channels * (size_t)p.height * (size_t)p.width;
    if (capacity < need)
        return dtnh_fail(err, DTNH_ERR_ARG, "pnm_decode: a %dx%dx%d image needs %zu bytes, %zu given",
                         p.channels, p.height, p.width, need, capacity);
    return dtnh__pnm_body(&r, &p, pixels, err);
}

/* ---- data: folders of images ---------------------------------------------------------------
   root/<class>/<file>: class names sorted, files sorted within a class, so the order does not
   depend on the file system. The lists live in the caller's arena. */

#ifndef DTNH_NO_STDIO
static dtnh_status dtnh__join(char *out, const char *a, const char *b, const char *c,
                              dtnh_error *err) {
    int n = c ? snprintf(out, DTNH_PATH_SIZE, "%s/%s/%s", a, b, c)
              : snprintf(out, DTNH_PATH_SIZE, "%s/%s", a, b);
    if (n < 0 || n >= DTNH_PATH_SIZE)
        return dtnh_fail(err, DTNH_ERR_ARG, "path '%s/%s/%s' is longer than %d bytes", a, b,
                         c ? c : "", DTNH_PATH_SIZE - 1);
    return DTNH_OK;
}

/* Reads image i of a folder data set: its header only (pixels NULL) or the whole image. The
   first header read (channels still 0) sets the data set's shape; others must match it. */
static dtnh_status dtnh__folder_image(dtnh_dataset *ds, int i, unsigned char *pixels,
                                      dtnh_error *err) {
    char path[DTNH_PATH_SIZE];
    dtnh__source src;
    dtnh__reader r;
    dtnh__pnm p;
    dtnh_status s = dtnh__join(path, ds->root, ds->class_names[ds->file_labels[i]], ds->files[i], err);
    if (s || (s = dtnh__src_open_file(&src, path, err))) return s;
    dtnh__reader_init(&r, &src, err);
    s = dtnh__pnm_header(&r, &p, err);
    if (!s && ds->channels == 0) {
        ds->channels = p.channels;
        ds->height = p.height;
        ds->width = p.width;
        ds->image_bytes = (size_t)p.channels * (size_t)p.height * (size_t)p.width;
    }
    if (!s && (p.channels != ds->channels || p.height != ds->height || p.width != ds->width))
        s = dtnh_fail(err, DTNH_ERR_SHAPE,
                      "'%s' is %dx%d with %d channel(s), expected %dx%d with %d like '%s/%s'",
                      path, p.height, p.width, p.channels, ds->height, ds->width, ds->channels,
                      ds->class_names[ds->file_labels[0]], ds->files[0]);
    if (!s && pixels) s = dtnh__pnm_body(&r, &p, pixels, err);
    dtnh__src_close(&src);
    return s;
}
#endif

#ifdef DTNH__HAVE_DIRENT
static void dtnh__sift_names(const char **v, size_t root, size_t n) {
    for (;;) {
        size_t child = 2 * root + 1;
        const char *t;
        if (child >= n) return;
        if (child + 1 < n && strcmp(v[child], v[child + 1]) < 0) child++;
        if (strcmp(v[root], v[child]) >= 0) return;
        t = v[root];
        v[root] = v[child];
        v[child] = t;
        root = child;
    }
}

/* Heapsort by strcmp: no allocation, unlike some libc qsorts. */
static void dtnh__sort_names(const char **v, size_t n) {
    size_t i;
    if (n < 2) return;
    for (i = n / 2; i-- > 0;) dtnh__sift_names(v, i, n);
    for (i = n - 1; i > 0; i--) {
        const char *t = v[0];
        v[0] = v[i];
        v[i] = t;
        dtnh__sift_names(v, 0, i);
    }
}

static int dtnh__is_dir(const char *path) {
    DIR *d = opendir(path);
    if (d) closedir(d);
    return d != NULL;
}

static int dtnh__is_image_name(const char *s) {
    static const char *const ext[3] = {".pgm", ".ppm", ".pnm"};
    size_t n = strlen(s);
    int i, k;
    if (s[0] == '.' || n < 5) return 0;
    for (i = 0; i < 3; i++) {
        for (k = 0; k < 4; k++) {
            int c = s[n - 4 + k];
            if (c >= 'A' && c <= 'Z') c += 'a' - 'A';
            if (c != ext[i][k]) break;
        }
        if (k == 4) return 1;
    }
    return 0;
}

static dtnh_status dtnh__arena_strdup(dtnh_arena *a, const char *s, const char **out,
                                      dtnh_error *err) {
    size_t n = strlen(s) + 1;
    void *p = NULL;
    dtnh_status st = dtnh_arena_alloc(a, n, 1, &p, err);
    if (st) return st;
    if (p) memcpy(p, s, n);
    *out = (const char *)p;
    return DTNH_OK;
}

static dtnh_status dtnh__opendir(DIR **d, const char *path, dtnh_error *err) {
    *d = opendir(path);
    if (!*d) return dtnh_fail(err, DTNH_ERR_IO, "cannot open folder '%s': %s", path, strerror(errno));
    return DTNH_OK;
}

/* The next class sub-folder of an open root, its name in *name; 0 at the end. */
static int dtnh__next_class(DIR *d, const char *root, const char **name) {
    struct dirent *e;
    char path[DTNH_PATH_SIZE];
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        if (dtnh__join(path, root, e->d_name, NULL, NULL)) continue;
        if (!dtnh__is_dir(path)) continue;
        *name = e->d_name;
        return 1;
    }
    return 0;
}

/* Images in folder root/cls: counts them into *k (a NULL: nothing else), copies their names
   into the arena (a), and stores them (files, room for `room`). */
static dtnh_status dtnh__list_images(const char *root, const char *cls, dtnh_arena *a,
                                     const char **files, int room, int *k, dtnh_error *err) {
    char path[DTNH_PATH_SIZE];
    struct dirent *e;
    DIR *d;
    dtnh_status s = dtnh__join(path, root, cls, NULL, err);
    *k = 0;
    if (s || (s = dtnh__opendir(&d, path, err))) return s;
    while (!s && (e = readdir(d)) != NULL) {
        const char *copy = NULL;
        if (!dtnh__is_image_name(e->d_name)) continue;
        if (*k == INT_MAX || (files && *k >= room)) {
            s = dtnh_fail(err, DTNH_ERR_IO, "folder '%s' changed while being read", path);
            break;
        }
        if (a && !(s = dtnh__arena_strdup(a, e->d_name, &copy, err)) && files) files[*k] = copy;
        ++*k;
    }
    closedir(d);
    if (!s && *k == 0)
        s = dtnh_fail(err, DTNH_ERR_FORMAT, "class folder '%s' holds no .pgm/.ppm/.pnm images", path);
    return s;
}

/* Counts the class sub-folders, then copies their names (names may be NULL when counting). */
static dtnh_status dtnh__folder_classes(dtnh_dataset *ds, dtnh_arena *a, dtnh_error *err) {
    const char *name, **names = NULL;
    void *mem = NULL;
    int n = 0, k = 0;
    DIR *d;
    dtnh_status s = dtnh__opendir(&d, ds->root, err);
    if (s) return s;
    while (dtnh__next_class(d, ds->root, &name)) n++;
    closedir(d);
    if (n == 0)
        return dtnh_fail(err, DTNH_ERR_FORMAT, "folder '%s' has no class sub-folders", ds->root);
    if ((s = dtnh_arena_alloc(a, (size_t)n * sizeof(char *), sizeof(char *), &mem, err))) return s;
    names = (const char **)mem;
    if ((s = dtnh__opendir(&d, ds->root, err))) return s;
    while (!s && dtnh__next_class(d, ds->root, &name)) {
        const char *copy = NULL;
        if (k >= n) break;
        if (!(s = dtnh__arena_strdup(a, name, &copy, err)) && names) names[k] = copy;
        k++;
    }
    closedir(d);
    if (!s && k != n)
        s = dtnh_fail(err, DTNH_ERR_IO, "folder '%s' changed while being read", ds->root);
    if (s) return s;
    if (names) dtnh__sort_names(names, (size_t)n);
    ds->class_names = names;
    ds->classes = n;
    return DTNH_OK;
}

/* A counting arena keeps no class names: size the file lists by walking the root again. */
static dtnh_status dtnh__folder_count_files(dtnh_dataset *ds, dtnh_arena *a, int *total,
                                            dtnh_error *err) {
    const char *name;
    DIR *d;
    dtnh_status s = dtnh__opendir(&d, ds->root, err);
    *total = 0;
    while (!s && dtnh__next_class(d, ds->root, &name)) {
        int k;
        s = dtnh__list_images(ds->root, name, a, NULL, 0, &k, err);
        if (!s && k > INT_MAX - *total)
            s = dtnh_fail(err, DTNH_ERR_FORMAT, "folder '%s' holds too many images", ds->root);
        if (!s) *total += k;
    }
    if (d) closedir(d);
    return s;
}

/* Fills the sorted file lists, class by class (an assigning arena only). */
static dtnh_status dtnh__folder_fill(dtnh_dataset *ds, dtnh_arena *a, const char **files,
                                     int *labels, int total, dtnh_error *err) {
    int c, at = 0;
    for (c = 0; c < ds->classes; c++) {
        int k, j;
        dtnh_status s = dtnh__list_images(ds->root, ds->class_names[c], a, files + at, total - at,
                                          &k, err);
        if (s) return s;
        dtnh__sort_names(files + at, (size_t)k);
        for (j = 0; j < k; j++) labels[at + j] = c;
        at += k;
    }
    if (at != total)
        return dtnh_fail(err, DTNH_ERR_IO, "folder '%s' changed while being read", ds->root);
    return DTNH_OK;
}

static dtnh_status dtnh__folder_lists(dtnh_dataset *ds, dtnh_arena *a, dtnh_error *err) {
    int total = 0, c;
    void *files = NULL, *labels = NULL;
    dtnh_status s;
    if (dtnh_arena_is_counting(a)) {
        s = dtnh__folder_count_files(ds, NULL, &total, err);
    } else {
        for (c = 0, s = DTNH_OK; c < ds->classes && !s; c++) {
            int k;
            s = dtnh__list_images(ds->root, ds->class_names[c], NULL, NULL, 0, &k, err);
            if (!s && k > INT_MAX - total)
                s = dtnh_fail(err, DTNH_ERR_FORMAT, "folder '%s' holds too many images", ds->root);
            total += s ? 0 : k;
        }
    }
    if (s) return s;
    if ((s = dtnh_arena_alloc(a, (size_t)total * sizeof(char *), sizeof(char *), &files, err)) ||
        (s = dtnh_arena_alloc(a, (size_t)total * sizeof(int), sizeof(int), &labels, err)))
        return s;
    ds->count = total;
    if (dtnh_arena_is_counting(a)) return dtnh__folder_count_files(ds, a, &total, err);
    ds->files = (const char *const *)files;
    ds->file_labels = (const int *)labels;
    return dtnh__folder_fill(ds, a, (const char **)files, (int *)labels, total, err);
}
#endif

#ifndef DTNH_NO_STDIO
DTNHDEF dtnh_status dtnh_folder_open(dtnh_dataset *ds, const char *root, dtnh_arena *a,
                                     dtnh_error *err) {
#ifdef DTNH__HAVE_DIRENT
    size_t mark;
    dtnh_status s;
    int i;
    if (!ds || !root || !a) return dtnh_fail(err, DTNH_ERR_ARG, "folder_open: NULL argument");
    dtnh__dataset_reset(ds, DTNH_DATA_FOLDER);
    if (strlen(root) >= DTNH_PATH_SIZE)
        return dtnh_fail(err, DTNH_ERR_ARG, "path '%.80s...' is longer than %d bytes", root,
                         DTNH_PATH_SIZE - 1);
    strcpy(ds->root, root);
    mark = dtnh_arena_mark(a);
    s = dtnh__folder_classes(ds, a, err);
    if (!s) s = dtnh__folder_lists(ds, a, err);
    if (!s && dtnh_arena_is_counting(a)) return DTNH_OK;
    ds->has_labels = 1;
    for (i = 0; !s && i < ds->count; i++) s = dtnh__folder_image(ds, i, NULL, err);
    if (!s) s = dtnh__scan_labels(ds, err);
    if (!s) ds->classes = ds->max_label + 1;
    if (s) {
        dtnh_arena_reset(a, mark);
        dtnh__dataset_reset(ds, DTNH_DATA_FOLDER);
    }
    return s;
#else
    (void)ds;
    (void)root;
    (void)a;
    return dtnh_fail(err, DTNH_ERR_ARG, "folder_open: built without <dirent.h> (DTNH_NO_DIRENT)");
#endif
}
#endif

#ifndef DTNH_NO_STDIO
static int dtnh__path_is_folder(const char *path) {
#ifdef DTNH__HAVE_DIRENT
    return dtnh__is_dir(path);
#else
    (void)path;
    return 0;
#endif
}

DTNHDEF dtnh_status dtnh_dataset_open(dtnh_dataset *ds, const char *path, const char *labels_path,
                                      dtnh_arena *a, dtnh_error *err) {
    dtnh__source src;
    unsigned char magic[4] = {0, 0, 0, 0};
    dtnh_status s;
    size_t size;
    if (!ds || !path) return dtnh_fail(err, DTNH_ERR_ARG, "dataset_open: NULL argument");
    if (dtnh__path_is_folder(path)) {
        if (labels_path)
            return dtnh_fail(err, DTNH_ERR_ARG, "'%s' is a folder: its labels are its sub-folders, "
                             "not '%s'", path, labels_path);
        if (!a) return dtnh_fail(err, DTNH_ERR_ARG, "dataset_open: folder '%s' needs an arena", path);
        return dtnh_folder_open(ds, path, a, err);
    }
    if ((s = dtnh__src_open_file(&src, path, err))) return s;
    size = src.size;
    if (size >= 4) s = dtnh__src_read(&src, 0, magic, 4, err);
    dtnh__src_close(&src);
    if (s) return s;
    if (dtnh__be32(magic) == DTNH__IDX_IMAGES) return dtnh_idx_open(ds, path, labels_path, err);
    if (size > 0 && size % (1 + DTNH__CIFAR_PIXELS) == 0) {
        if (labels_path)
            return dtnh_fail(err, DTNH_ERR_ARG, "'%s' is a CIFAR-10 batch: its labels are inside, "
                             "not in '%s'", path, labels_path);
        return dtnh_cifar10_open(ds, path, err);
    }
    return dtnh_fail(err, DTNH_ERR_FORMAT, "'%s' is neither IDX images (magic 0x00000803, "
                     "uncompressed), a CIFAR-10 batch (a multiple of 3073 bytes) nor a folder; "
                     "it starts with 0x%02x%02x%02x%02x", path, magic[0], magic[1], magic[2], magic[3]);
}
#endif

/* ---- data: reading ------------------------------------------------------------------------- */

/* Image i into pixels (may be NULL) and its label into *label (may be NULL), checked. */
static dtnh_status dtnh__read_one(dtnh_dataset *ds, int i, unsigned char *pixels, int *label,
                                  dtnh_error *err) {
    dtnh_status s = DTNH_OK;
    if (ds->format == DTNH_DATA_FOLDER) {
#ifndef DTNH_NO_STDIO
        if (pixels) s = dtnh__folder_image(ds, i, pixels, err);
#endif
    } else if (pixels) {
        s = dtnh__src_read(&ds->images, ds->image_offset + (size_t)i * ds->image_stride, pixels,
                           ds->image_bytes, err);
    }
    if (s || !label) return s;
    if ((s = dtnh__read_labels(ds, i, 1, label, err))) return s;
    if (ds->has_labels && (*label < 0 || *label >= ds->classes))
        return dtnh__bad_label(ds, *label, i, err);
    return DTNH_OK;
}

static dtnh_status dtnh__check_readable(dtnh_dataset *ds, const char *what, dtnh_error *err) {
    if (!ds) return dtnh_fail(err, DTNH_ERR_ARG, "%s: NULL data set", what);
    if (ds->format == DTNH_DATA_NONE || ds->count <= 0 || ds->image_bytes == 0)
        return dtnh_fail(err, DTNH_ERR_ARG, "%s: the data set is not open (or was only sized)", what);
    return DTNH_OK;
}

DTNHDEF dtnh_status dtnh_dataset_read(dtnh_dataset *ds, int first, int n, unsigned char *pixels,
                                      int *labels, dtnh_error *err) {
    int i;
    dtnh_status s = dtnh__check_readable(ds, "dataset_read", err);
    if (s) return s;
    if (first < 0 || n < 0 || first > ds->count - n)
        return dtnh_fail(err, DTNH_ERR_ARG, "dataset_read: images [%d, %d + %d) are outside [0, %d)",
                         first, first, n, ds->count);
    if (ds->format == DTNH_DATA_IDX) {
        /* One read for the whole range: the streaming fast path. */
        if (pixels && (s = dtnh__src_read(&ds->images, ds->image_offset + (size_t)first * ds->image_stride,
                                          pixels, (size_t)n * ds->image_bytes, err)))
            return s;
        if (!labels) return DTNH_OK;
        if ((s = dtnh__read_labels(ds, first, n, labels, err))) return s;
        for (i = 0; ds->has_labels && i < n; i++)
            if (labels[i] >= ds->classes) return dtnh__bad_label(ds, labels[i], first + i, err);
        return DTNH_OK;
    }
    for (i = 0; i < n; i++) {
        s = dtnh__read_one(ds, first + i, pixels ? pixels + (size_t)i * ds->image_bytes : NULL,
                           labels ? labels + i : NULL, err);
        if (s) return s;
    }
    return DTNH_OK;
}

DTNHDEF dtnh_status dtnh_dataset_read_indices(dtnh_dataset *ds, const int *indices, int n,
                                              unsigned char *pixels, int *labels, dtnh_error *err) {
    int i;
    dtnh_status s = dtnh__check_readable(ds, "dataset_read_indices", err);
    if (s) return s;
    if (!indices || n < 0) return dtnh_fail(err, DTNH_ERR_ARG, "dataset_read_indices: NULL indices or n < 0");
    for (i = 0; i < n; i++) {
        if (indices[i] < 0 || indices[i] >= ds->count)
            return dtnh_fail(err, DTNH_ERR_ARG, "dataset_read_indices: index %d at position %d is outside [0, %d)",
                             indices[i], i, ds->count);
        s = dtnh__read_one(ds, indices[i], pixels ? pixels + (size_t)i * ds->image_bytes : NULL,
                           labels ? labels + i : NULL, err);
        if (s) return s;
    }
    return DTNH_OK;
}

/* ---- data: image sets and sampling --------------------------------------------------------- */

DTNHDEF dtnh_status dtnh_image_set_load(dtnh_image_set *set, dtnh_dataset *ds, const int *indices,
                                        int n, dtnh_arena *a, dtnh_error *err) {
    size_t bytes = 0;
    void *pix = NULL, *lab = NULL;
    dtnh_status s;
    if (!set || !ds || !a || n < 0) return dtnh_fail(err, DTNH_ERR_ARG, "image_set_load: NULL argument or n < 0");
    memset(set, 0, sizeof *set);
    if (!indices && n > ds->count)
        return dtnh_fail(err, DTNH_ERR_ARG, "image_set_load: %d images asked of %d", n, ds->count);
    if ((s = dtnh_size_mul((size_t)n, ds->image_bytes, &bytes, err)) ||
        (s = dtnh_arena_alloc(a, bytes, 0, &pix, err)) ||
        (s = dtnh_arena_alloc(a, (size_t)n * sizeof(int), 0, &lab, err)))
        return s;
    set->count = n;
    set->channels = ds->channels;
    set->height = ds->height;
    set->width = ds->width;
    set->classes = ds->classes;
    set->image_bytes = ds->image_bytes;
    set->pixels = (unsigned char *)pix;
    set->labels = (int *)lab;
    if (dtnh_arena_is_counting(a) || n == 0) return DTNH_OK;
    return indices ? dtnh_dataset_read_indices(ds, indices, n, set->pixels, set->labels, err)
                   : dtnh_dataset_read(ds, 0, n, set->pixels, set->labels, err);
}

DTNHDEF dtnh_status dtnh_relabel(int *labels, int count, const int *classes, int nclasses,
                                 dtnh_error *err) {
    int i, j;
    if (!labels || !classes || count < 0 || nclasses < 1)
        return dtnh_fail(err, DTNH_ERR_ARG, "relabel: NULL argument, count < 0 or no classes");
    for (j = 0; j < nclasses; j++) {
        if (classes[j] < 0) return dtnh_fail(err, DTNH_ERR_ARG, "relabel: class %d is negative", classes[j]);
        for (i = 0; i < j; i++)
            if (classes[i] == classes[j])
                return dtnh_fail(err, DTNH_ERR_ARG, "relabel: class %d is listed twice", classes[j]);
    }
    for (i = 0; i < count; i++) {
        int to = -1;
        for (j = 0; j < nclasses && to < 0; j++)
            if (labels[i] == classes[j]) to = j;
        labels[i] = to;
    }
    return DTNH_OK;
}

static int dtnh__count_class(const int *labels, int count, int c, const int *part, int from) {
    int i, n = 0;
    for (i = 0; i < count; i++) n += labels[i] == c && (!part || part[i] == from);
    return n;
}

DTNHDEF void dtnh_class_counts(const int *labels, int count, int classes, int *counts) {
    int i;
    for (i = 0; i < classes; i++) counts[i] = 0;
    for (i = 0; i < count; i++)
        if (labels[i] >= 0 && labels[i] < classes) counts[labels[i]]++;
}

/* Knuth's selection sampling (Algorithm S): takes `want` of the `avail` images i with
   labels[i] == c (and part[i] == from when part is given), every subset equally likely,
   scanning in index order. A chosen image gets part[i] = to, or is appended to out. */
static void dtnh__choose(const int *labels, int count, int c, int *part, int from, int to,
                         int want, int avail, dtnh_rng *rng, int *out) {
    int i;
    for (i = 0; i < count && want > 0; i++) {
        if (labels[i] != c || (part && part[i] != from)) continue;
        if ((int)dtnh_rng_below(rng, (uint32_t)avail) < want) {
            if (out) *out++ = i;
            else part[i] = to;
            want--;
        }
        avail--;
    }
}

static dtnh_status dtnh__check_sampling(const int *labels, int count, int classes, dtnh_rng *rng,
                                        const void *out, const char *what, dtnh_error *err) {
    if (!labels || !rng || !out || count < 0 || classes < 1)
        return dtnh_fail(err, DTNH_ERR_ARG, "%s: NULL argument, count %d or classes %d", what,
                         count, classes);
    return DTNH_OK;
}

DTNHDEF dtnh_status dtnh_sample_per_class(const int *labels, int count, int classes, int k,
                                          dtnh_rng *rng, int *indices, dtnh_error *err) {
    int c;
    dtnh_status s = dtnh__check_sampling(labels, count, classes, rng, indices, "sample_per_class", err);
    if (s) return s;
    if (k < 0 || k > INT_MAX / classes)
        return dtnh_fail(err, DTNH_ERR_ARG, "sample_per_class: k = %d", k);
    for (c = 0; c < classes; c++) {
        int n = dtnh__count_class(labels, count, c, NULL, 0);
        if (n < k)
            return dtnh_fail(err, DTNH_ERR_ARG, "sample_per_class: class %d has %d images, %d asked", c, n, k);
    }
    for (c = 0; c < classes; c++)
        dtnh__choose(labels, count, c, NULL, 0, 0, k, dtnh__count_class(labels, count, c, NULL, 0),
                     rng, indices + (size_t)c * (size_t)k);
    return DTNH_OK;
}

#define DTNH__UNASSIGNED (-2)

/* part[i] = -2 (to be assigned) for labels in [0, classes), else -1. */
static void dtnh__split_start(const int *labels, int count, int classes, int *part) {
    int i;
    for (i = 0; i < count; i++)
        part[i] = labels[i] >= 0 && labels[i] < classes ? DTNH__UNASSIGNED : -1;
}

static void dtnh__split_finish(int *part, int count, int rest) {
    int i;
    for (i = 0; i < count; i++)
        if (part[i] == DTNH__UNASSIGNED) part[i] = rest;
}

DTNHDEF dtnh_status dtnh_split_per_class(const int *labels, int count, int classes,
                                         const int *per_class, int parts, dtnh_rng *rng, int *part,
                                         dtnh_error *err) {
    int p, c, rest = -1;
    long need = 0;
    dtnh_status s = dtnh__check_sampling(labels, count, classes, rng, part, "split_per_class", err);
    if (s) return s;
    if (!per_class || parts < 1) return dtnh_fail(err, DTNH_ERR_ARG, "split_per_class: no parts");
    for (p = 0; p < parts; p++) {
        if (per_class[p] == DTNH_SPLIT_REST && rest < 0) rest = p;
        else if (per_class[p] < 0)
            return dtnh_fail(err, DTNH_ERR_ARG, "split_per_class: part %d asks for %d images (one "
                             "part at most may be DTNH_SPLIT_REST)", p, per_class[p]);
        else need += per_class[p];
    }
    for (c = 0; c < classes; c++) {
        int n = dtnh__count_class(labels, count, c, NULL, 0);
        if (n < need)
            return dtnh_fail(err, DTNH_ERR_ARG, "split_per_class: class %d has %d images, the "
                             "parts ask for %ld of each class", c, n, need);
    }
    dtnh__split_start(labels, count, classes, part);
    for (c = 0; c < classes; c++) {
        int avail = dtnh__count_class(labels, count, c, NULL, 0);
        for (p = 0; p < parts; p++) {
            if (p == rest) continue;
            dtnh__choose(labels, count, c, part, DTNH__UNASSIGNED, p, per_class[p], avail, rng, NULL);
            avail -= per_class[p];
        }
    }
    dtnh__split_finish(part, count, rest);
    return DTNH_OK;
}

DTNHDEF dtnh_status dtnh_split_fraction(const int *labels, int count, int classes, float fraction,
                                        dtnh_rng *rng, int *part, dtnh_error *err) {
    int c;
    dtnh_status s = dtnh__check_sampling(labels, count, classes, rng, part, "split_fraction", err);
    if (s) return s;
    if (!(fraction >= 0.0f && fraction <= 1.0f))
        return dtnh_fail(err, DTNH_ERR_ARG, "split_fraction: fraction %g is outside [0, 1]", (double)fraction);
    dtnh__split_start(labels, count, classes, part);
    for (c = 0; c < classes; c++) {
        int n = dtnh__count_class(labels, count, c, NULL, 0);
        int k = (int)floor((double)fraction * n + 0.5);
        dtnh__choose(labels, count, c, part, DTNH__UNASSIGNED, 1, k, n, rng, NULL);
    }
    dtnh__split_finish(part, count, 0);
    return DTNH_OK;
}

DTNHDEF int dtnh_part_indices(const int *part, int count, int which, int *indices) {
    int i, n = 0;
    for (i = 0; i < count; i++)
        if (part[i] == which) {
            if (indices) indices[n] = i;
            n++;
        }
    return n;
}

static void dtnh__shuffle(int *v, int n, dtnh_rng *rng) {
    int i;
    for (i = n - 1; i > 0; i--) {
        int j = (int)dtnh_rng_below(rng, (uint32_t)i + 1u), t = v[i];
        v[i] = v[j];
        v[j] = t;
    }
}

DTNHDEF dtnh_status dtnh_batch_stream_init(dtnh_batch_stream *bs, int count, uint64_t seed,
                                           dtnh_arena *a, dtnh_error *err) {
    void *mem = NULL;
    int i;
    dtnh_status s;
    if (!bs || !a || count < 1)
        return dtnh_fail(err, DTNH_ERR_ARG, "batch_stream_init: NULL argument or count %d < 1", count);
    memset(bs, 0, sizeof *bs);
    if ((s = dtnh_arena_alloc(a, (size_t)count * sizeof(int), 0, &mem, err))) return s;
    bs->order = (int *)mem;
    bs->count = count;
    dtnh_rng_seed(&bs->rng, seed);
    if (!bs->order) return DTNH_OK;
    for (i = 0; i < count; i++) bs->order[i] = i;
    dtnh__shuffle(bs->order, count, &bs->rng);
    return DTNH_OK;
}

DTNHDEF dtnh_status dtnh_batch_stream_next(dtnh_batch_stream *bs, int n, int *indices,
                                           dtnh_error *err) {
    int k;
    if (!bs || !bs->order || !indices || n < 1)
        return dtnh_fail(err, DTNH_ERR_ARG, "batch_stream_next: NULL or sized-only stream, or n %d < 1", n);
    if (n <= bs->count && bs->next > bs->count - n) bs->next = bs->count; /* drop the tail */
    for (k = 0; k < n; k++) {
        if (bs->next == bs->count) {
            dtnh__shuffle(bs->order, bs->count, &bs->rng);
            bs->next = 0;
            bs->epoch++;
        }
        indices[k] = bs->order[bs->next++];
    }
    return DTNH_OK;
}

/* ---- data: augmentation and batches -------------------------------------------------------- */

/* A resolved config: every default filled in, the normalisation tabulated per channel. */
typedef struct dtnh__aug {
    int c_in, h_in, w_in, c_out, h_out, w_out, pad, flip;
    float mean[DTNH_MAX_CHANNELS], std[DTNH_MAX_CHANNELS];
    float unit[256];                    /* v / 255 */
    float lut[DTNH_MAX_CHANNELS][256];  /* (v / 255 - mean) / std */
} dtnh__aug;

static dtnh_status dtnh__aug_shape(dtnh__aug *g, const dtnh_augment_config *cfg, int c, int h,
                                   int w, dtnh_error *err) {
    g->c_out = g->h_out = g->w_out = 0;
    if (c < 1 || c > DTNH_MAX_CHANNELS || h < 1 || w < 1 || h > DTNH_MAX_SIDE || w > DTNH_MAX_SIDE)
        return dtnh_fail(err, DTNH_ERR_SHAPE, "augment: images of %dx%dx%d, expected 1..%d channels "
                         "and 1..%d a side", c, h, w, DTNH_MAX_CHANNELS, DTNH_MAX_SIDE);
    g->c_in = c;
    g->h_in = h;
    g->w_in = w;
    g->c_out = cfg->out_channels ? cfg->out_channels : c;
    g->h_out = cfg->out_height ? cfg->out_height : h;
    g->w_out = cfg->out_width ? cfg->out_width : w;
    g->pad = cfg->pad;
    g->flip = cfg->flip != 0;
    if (!(g->c_out == c || (c == 1 && g->c_out == 3)))
        return dtnh_fail(err, DTNH_ERR_SHAPE, "augment: out_channels %d from %d-channel images, "
                         "expected %d (or 3 from grey)", cfg->out_channels, c, c);
    if (g->h_out < 1 || g->w_out < 1 || g->h_out > DTNH_MAX_SIDE || g->w_out > DTNH_MAX_SIDE)
        return dtnh_fail(err, DTNH_ERR_ARG, "augment: output size %dx%d, expected 1..%d a side",
                         g->h_out, g->w_out, DTNH_MAX_SIDE);
    if (g->pad < 0 || g->pad > DTNH_MAX_SIDE)
        return dtnh_fail(err, DTNH_ERR_ARG, "augment: pad %d, expected 0..%d", g->pad, DTNH_MAX_SIDE);
    return DTNH_OK;
}

static dtnh_status dtnh__aug_setup(dtnh__aug *g, const dtnh_augment_config *cfg, int c, int h,
                                   int w, dtnh_error *err) {
    dtnh_augment_config zero;
    int k, v, custom = 0;
    dtnh_status s;
    if (!cfg) {
        memset(&zero, 0, sizeof zero);
        cfg = &zero;
    }
    if ((s = dtnh__aug_shape(g, cfg, c, h, w, err))) return s;
    for (k = 0; k < DTNH_MAX_CHANNELS; k++) custom |= cfg->std[k] != 0.0f;
    for (k = 0; k < g->c_out; k++) {
        g->mean[k] = custom ? cfg->mean[k] : 0.5f;
        g->std[k] = custom ? cfg->std[k] : 0.5f;
        if (!(g->std[k] != 0.0f && g->std[k] - g->std[k] == 0.0f && g->mean[k] - g->mean[k] == 0.0f))
            return dtnh_fail(err, DTNH_ERR_ARG, "augment: channel %d has mean %g, std %g; expected "
                             "finite values and std != 0", k, (double)g->mean[k], (double)g->std[k]);
    }
    for (v = 0; v < 256; v++) g->unit[v] = (float)v / 255.0f;
    for (k = 0; k < g->c_out; k++)
        for (v = 0; v < 256; v++) g->lut[k][v] = (g->unit[v] - g->mean[k]) / g->std[k];
    return DTNH_OK;
}

/* PyTorch's linear source index for output d (align_corners=False): scale * (d + 0.5) - 0.5,
   clamped at 0, with scale = in / out in float, as aten's upsample kernels compute it. */
static void dtnh__linear_index(int d, int in, int out, int *i0, int *i1, float *w1) {
    float scale = (float)in / (float)out;
    float src = scale * ((float)d + 0.5f) - 0.5f, lambda;
    int i;
    if (src < 0.0f) src = 0.0f;
    i = (int)src; /* floor: src >= 0 */
    if (i > in - 1) i = in - 1;
    lambda = src - (float)i;
    *w1 = lambda < 0.0f ? 0.0f : lambda > 1.0f ? 1.0f : lambda;
    *i0 = i;
    *i1 = i < in - 1 ? i + 1 : i;
}

/* One bilinear sample of a plane at output pixel (y, x), summed in aten's order. */
static float dtnh__bilinear(const dtnh__aug *g, const unsigned char *plane, int y, int x) {
    int y0, y1, x0, x1;
    float ly, lx;
    const unsigned char *r0, *r1;
    dtnh__linear_index(y, g->h_in, g->h_out, &y0, &y1, &ly);
    dtnh__linear_index(x, g->w_in, g->w_out, &x0, &x1, &lx);
    r0 = plane + (size_t)y0 * (size_t)g->w_in;
    r1 = plane + (size_t)y1 * (size_t)g->w_in;
    return (g->unit[r0[x0]] * (1.0f - lx) + g->unit[r0[x1]] * lx) * (1.0f - ly) +
           (g->unit[r1[x0]] * (1.0f - lx) + g->unit[r1[x1]] * lx) * ly;
}

/* One image: output (y, x) shows the resized image at (y + dy - pad, x' + dx - pad), where x'
   is x or its mirror; outside the resized image lies the zero padding. */
static void dtnh__augment_one(const dtnh__aug *g, const unsigned char *img, dtnh_rng *rng,
                              float *out) {
    int dy = g->pad, dx = g->pad, flip = 0, c, y, x;
    int resize = g->h_out != g->h_in || g->w_out != g->w_in;
    size_t plane = (size_t)g->h_in * (size_t)g->w_in;
    if (rng && g->pad > 0) {
        dy = (int)dtnh_rng_below(rng, 2u * (uint32_t)g->pad + 1u);
        dx = (int)dtnh_rng_below(rng, 2u * (uint32_t)g->pad + 1u);
    }
    if (rng && g->flip) flip = (int)dtnh_rng_below(rng, 2u);
    for (c = 0; c < g->c_out; c++) {
        const unsigned char *src = img + (g->c_in == 1 ? 0 : (size_t)c * plane);
        for (y = 0; y < g->h_out; y++) {
            int ry = y + dy - g->pad;
            float *row = out + ((size_t)c * (size_t)g->h_out + (size_t)y) * (size_t)g->w_out;
            for (x = 0; x < g->w_out; x++) {
                int rx = (flip ? g->w_out - 1 - x : x) + dx - g->pad;
                if (ry < 0 || ry >= g->h_out || rx < 0 || rx >= g->w_out) row[x] = g->lut[c][0];
                else if (!resize) row[x] = g->lut[c][src[(size_t)ry * (size_t)g->w_in + (size_t)rx]];
                else row[x] = (dtnh__bilinear(g, src, ry, rx) - g->mean[c]) / g->std[c];
            }
        }
    }
}

DTNHDEF dtnh_status dtnh_batch_shape(const dtnh_augment_config *cfg, int n, int channels,
                                     int height, int width, int shape[4], dtnh_error *err) {
    dtnh__aug g;
    dtnh_augment_config zero;
    dtnh_status s;
    if (!shape || n < 1) return dtnh_fail(err, DTNH_ERR_ARG, "batch_shape: NULL shape or n %d < 1", n);
    if (!cfg) {
        memset(&zero, 0, sizeof zero);
        cfg = &zero;
    }
    if ((s = dtnh__aug_shape(&g, cfg, channels, height, width, err))) return s;
    shape[0] = n;
    shape[1] = g.c_out;
    shape[2] = g.h_out;
    shape[3] = g.w_out;
    return DTNH_OK;
}

static dtnh_status dtnh__check_batch(const dtnh__aug *g, int n, const dtnh_tensor *out,
                                     dtnh_error *err) {
    if (!out || !out->data)
        return dtnh_fail(err, DTNH_ERR_ARG, "batch: NULL output tensor or data");
    if (out->ndim != 4 || out->shape[0] != n || out->shape[1] != g->c_out ||
        out->shape[2] != g->h_out || out->shape[3] != g->w_out)
        return dtnh_fail(err, DTNH_ERR_SHAPE, "batch: output is %dd [%d, %d, %d, %d], expected "
                         "[%d, %d, %d, %d]", out->ndim, out->shape[0], out->shape[1], out->shape[2],
                         out->shape[3], n, g->c_out, g->h_out, g->w_out);
    return DTNH_OK;
}

DTNHDEF dtnh_status dtnh_batch_assemble(const dtnh_augment_config *cfg, const unsigned char *pixels,
                                        int n, int channels, int height, int width, dtnh_rng *rng,
                                        dtnh_tensor *out, dtnh_error *err) {
    dtnh__aug g;
    size_t in_bytes, out_floats;
    int i;
    dtnh_status s;
    if (!pixels || n < 1) return dtnh_fail(err, DTNH_ERR_ARG, "batch_assemble: NULL pixels or n %d < 1", n);
    if ((s = dtnh__aug_setup(&g, cfg, channels, height, width, err))) return s;
    if ((s = dtnh__check_batch(&g, n, out, err))) return s;
    in_bytes = (size_t)g.c_in * (size_t)g.h_in * (size_t)g.w_in;
    out_floats = (size_t)g.c_out * (size_t)g.h_out * (size_t)g.w_out;
    for (i = 0; i < n; i++)
        dtnh__augment_one(&g, pixels + (size_t)i * in_bytes, rng, out->data + (size_t)i * out_floats);
    return DTNH_OK;
}

DTNHDEF dtnh_status dtnh_batch_from_set(const dtnh_augment_config *cfg, const dtnh_image_set *set,
                                        const int *indices, int n, dtnh_rng *rng, dtnh_tensor *out,
                                        int *labels, dtnh_error *err) {
    dtnh__aug g;
    size_t out_floats;
    int i;
    dtnh_status s;
    if (!set || !set->pixels || !indices || n < 1)
        return dtnh_fail(err, DTNH_ERR_ARG, "batch_from_set: NULL set, pixels or indices, or n %d < 1", n);
    if ((s = dtnh__aug_setup(&g, cfg, set->channels, set->height, set->width, err))) return s;
    if ((s = dtnh__check_batch(&g, n, out, err))) return s;
    for (i = 0; i < n; i++)
        if (indices[i] < 0 || indices[i] >= set->count)
            return dtnh_fail(err, DTNH_ERR_ARG, "batch_from_set: index %d at position %d is outside [0, %d)",
                             indices[i], i, set->count);
    out_floats = (size_t)g.c_out * (size_t)g.h_out * (size_t)g.w_out;
    for (i = 0; i < n; i++) {
        dtnh__augment_one(&g, set->pixels + (size_t)indices[i] * set->image_bytes, rng,
                          out->data + (size_t)i * out_floats);
        if (labels) labels[i] = set->labels[indices[i]];
    }
    return DTNH_OK;
}
