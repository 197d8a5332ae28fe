/* Data: the IDX, CIFAR-10 and PGM/PPM folder readers on tiny crafted files (made by
   tools/make_data_fixtures.py) and on the bundled data/, every bad input, seeded sampling, and
   batch assembly with augmentation against naive references and PyTorch's bilinear resize. */
#include <stdlib.h>
#include <string.h>
#include "../dtnh_nn.h"
#include "test.h"

/* ---- helpers ------------------------------------------------------------------------------- */

static const char *fx(const char *name) {
    static char path[1024];
    snprintf(path, sizeof path, "%s", t_fixture(name));
    return path;
}

/* A second path buffer, for calls that name two fixtures. */
static const char *fx2(const char *name) {
    static char path[1024];
    snprintf(path, sizeof path, "%s", t_fixture(name));
    return path;
}

/* The bundled data/ folder (DTNH_DATA overrides it). */
static const char *bundled(const char *name) {
    static char path[2][1024];
    static int which;
    const char *dir = getenv("DTNH_DATA");
    which ^= 1;
    snprintf(path[which], sizeof path[which], "%s/%s", dir ? dir : "data", name);
    return path[which];
}

static size_t slurp(const char *path, unsigned char *buf, size_t cap) {
    FILE *f = fopen(path, "rb");
    size_t n;
    if (!f) return 0;
    n = fread(buf, 1, cap, f);
    fclose(f);
    return n;
}

/* An IDX images header in memory: magic, n, h, w. */
static void put_be32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static size_t idx_header(unsigned char *buf, uint32_t magic, uint32_t n, uint32_t h, uint32_t w) {
    put_be32(buf, magic);
    put_be32(buf + 4, n);
    put_be32(buf + 8, h);
    put_be32(buf + 12, w);
    return 16;
}

/* ---- IDX ----------------------------------------------------------------------------------- */

static void idx_reads_tiny_file(void) {
    dtnh_dataset ds;
    unsigned char px[18];
    int labels[3], i;
    CHECK_OK(dtnh_idx_open(&ds, fx("data/tiny-images.idx3"), fx2("data/tiny-labels.idx1"), NULL));
    CHECK(ds.count == 3 && ds.channels == 1 && ds.height == 2 && ds.width == 3);
    CHECK(ds.image_bytes == 6 && ds.classes == 3 && ds.has_labels);
    CHECK_OK(dtnh_dataset_read(&ds, 0, 3, px, labels, NULL));
    for (i = 0; i < 18; i++) CHECK(px[i] == 10 * (i / 6) + i % 6 + 1);
    CHECK(labels[0] == 2 && labels[1] == 0 && labels[2] == 1);
    dtnh_dataset_close(&ds);
    dtnh_dataset_close(&ds); /* twice is harmless */
}

static void idx_reads_an_index_list_in_order(void) {
    dtnh_dataset ds;
    unsigned char px[12];
    int idx[2] = {2, 0}, labels[2];
    CHECK_OK(dtnh_idx_open(&ds, fx("data/tiny-images.idx3"), fx2("data/tiny-labels.idx1"), NULL));
    CHECK_OK(dtnh_dataset_read_indices(&ds, idx, 2, px, labels, NULL));
    CHECK(px[0] == 21 && px[5] == 26 && px[6] == 1 && px[11] == 6);
    CHECK(labels[0] == 1 && labels[1] == 2);
    dtnh_dataset_close(&ds);
}

static void idx_memory_reader_matches_file_reader(void) {
    unsigned char img[64], lab[16], a[18], b[18];
    size_t ni = slurp(fx("data/tiny-images.idx3"), img, sizeof img);
    size_t nl = slurp(fx("data/tiny-labels.idx1"), lab, sizeof lab);
    dtnh_dataset f, m;
    int lf[3], lm[3];
    CHECK(ni == 34 && nl == 11);
    CHECK_OK(dtnh_idx_open(&f, fx("data/tiny-images.idx3"), fx2("data/tiny-labels.idx1"), NULL));
    CHECK_OK(dtnh_idx_open_memory(&m, img, ni, lab, nl, NULL));
    CHECK_OK(dtnh_dataset_read(&f, 0, 3, a, lf, NULL));
    CHECK_OK(dtnh_dataset_read(&m, 0, 3, b, lm, NULL));
    CHECK(memcmp(a, b, 18) == 0 && memcmp(lf, lm, sizeof lf) == 0);
    CHECK(strcmp(m.images.name, "<memory>") == 0);
    dtnh_dataset_close(&f);
    dtnh_dataset_close(&m);
}

static void idx_without_labels_reads_minus_one(void) {
    dtnh_dataset ds;
    int labels[3];
    CHECK_OK(dtnh_idx_open(&ds, fx("data/tiny-images.idx3"), NULL, NULL));
    CHECK(!ds.has_labels && ds.classes == 0);
    CHECK_OK(dtnh_dataset_read(&ds, 1, 2, NULL, labels, NULL));
    CHECK(labels[0] == -1 && labels[1] == -1);
    dtnh_dataset_close(&ds);
}

static void idx_rejects_wrong_magic_naming_the_file(void) {
    dtnh_dataset ds;
    dtnh_error err;
    CHECK_STATUS(dtnh_idx_open(&ds, fx("data/bad-magic.idx3"), NULL, &err), DTNH_ERR_FORMAT);
    CHECK_MSG(strstr(err.msg, "bad-magic.idx3") && strstr(err.msg, "0x00000801") &&
                  strstr(err.msg, "expected 0x00000803"), "%s", err.msg);
}

static void idx_rejects_a_labels_file_for_images_swapped(void) {
    dtnh_dataset ds;
    dtnh_error err;
    CHECK_STATUS(dtnh_idx_open(&ds, fx("data/tiny-labels.idx1"), fx2("data/tiny-images.idx3"), &err),
                 DTNH_ERR_FORMAT);
    CHECK_MSG(strstr(err.msg, "tiny-labels.idx1") != NULL, "%s", err.msg);
}

static void idx_rejects_gzip_with_a_hint(void) {
    unsigned char gz[32] = {0x1F, 0x8B, 0x08, 0x00};
    dtnh_dataset ds;
    dtnh_error err;
    CHECK_STATUS(dtnh_idx_open_memory(&ds, gz, sizeof gz, NULL, 0, &err), DTNH_ERR_FORMAT);
    CHECK_MSG(strstr(err.msg, "gunzip") != NULL, "%s", err.msg);
}

static void idx_rejects_truncated_file(void) {
    dtnh_dataset ds;
    dtnh_error err;
    CHECK_STATUS(dtnh_idx_open(&ds, fx("data/truncated.idx3"), NULL, &err), DTNH_ERR_FORMAT);
    CHECK_MSG(strstr(err.msg, "truncated.idx3") && strstr(err.msg, "truncated") &&
                  strstr(err.msg, "3 images of 2x3") && strstr(err.msg, "only 16"), "%s", err.msg);
}

static void idx_rejects_header_cut_short(void) {
    unsigned char buf[16];
    dtnh_dataset ds;
    dtnh_error err;
    idx_header(buf, 0x803, 1, 1, 1);
    CHECK_STATUS(dtnh_idx_open_memory(&ds, buf, 10, NULL, 0, &err), DTNH_ERR_FORMAT);
    CHECK_MSG(strstr(err.msg, "16-byte IDX header") != NULL, "%s", err.msg);
    CHECK_STATUS(dtnh_idx_open_memory(&ds, buf, 2, NULL, 0, &err), DTNH_ERR_FORMAT);
    CHECK_MSG(strstr(err.msg, "too short") != NULL, "%s", err.msg);
}

static void idx_rejects_trailing_bytes(void) {
    unsigned char buf[16 + 4 + 3] = {0};
    dtnh_dataset ds;
    dtnh_error err;
    idx_header(buf, 0x803, 1, 2, 2);
    CHECK_STATUS(dtnh_idx_open_memory(&ds, buf, sizeof buf, NULL, 0, &err), DTNH_ERR_FORMAT);
    CHECK_MSG(strstr(err.msg, "3 bytes after") != NULL, "%s", err.msg);
}

static void idx_rejects_dims_out_of_range(void) {
    unsigned char buf[16];
    dtnh_dataset ds;
    dtnh_error err;
    idx_header(buf, 0x803, 2, 100000, 100000);
    CHECK_STATUS(dtnh_idx_open_memory(&ds, buf, sizeof buf, NULL, 0, &err), DTNH_ERR_FORMAT);
    CHECK_MSG(strstr(err.msg, "100000x100000") != NULL, "%s", err.msg);
    idx_header(buf, 0x803, 0, 2, 2);
    CHECK_STATUS(dtnh_idx_open_memory(&ds, buf, sizeof buf, NULL, 0, &err), DTNH_ERR_FORMAT);
    idx_header(buf, 0x803, 0x80000000u, 2, 2);
    CHECK_STATUS(dtnh_idx_open_memory(&ds, buf, sizeof buf, NULL, 0, &err), DTNH_ERR_FORMAT);
}

/* The largest dims allowed multiply to 2^59 bytes: no overflow, and the size check catches it. */
static void idx_rejects_huge_dims_that_disagree_with_the_size(void) {
    unsigned char buf[16 + 8] = {0};
    dtnh_dataset ds;
    dtnh_error err;
    idx_header(buf, 0x803, 0x7FFFFFFFu, DTNH_MAX_SIDE, DTNH_MAX_SIDE);
    CHECK_STATUS(dtnh_idx_open_memory(&ds, buf, sizeof buf, NULL, 0, &err), DTNH_ERR_FORMAT);
    CHECK_MSG(strstr(err.msg, "truncated") != NULL, "%s", err.msg);
}

static void idx_rejects_label_count_mismatch(void) {
    dtnh_dataset ds;
    dtnh_error err;
    CHECK_STATUS(dtnh_idx_open(&ds, fx("data/tiny-images.idx3"), fx2("data/short-labels.idx1"), &err),
                 DTNH_ERR_FORMAT);
    CHECK_MSG(strstr(err.msg, "short-labels.idx1' holds 2 labels") &&
                  strstr(err.msg, "tiny-images.idx3' holds 3 images"), "%s", err.msg);
}

static void idx_rejects_truncated_labels(void) {
    unsigned char img[64], lab[16];
    size_t ni = slurp(fx("data/tiny-images.idx3"), img, sizeof img);
    size_t nl = slurp(fx("data/tiny-labels.idx1"), lab, sizeof lab);
    dtnh_dataset ds;
    dtnh_error err;
    CHECK_STATUS(dtnh_idx_open_memory(&ds, img, ni, lab, nl - 1, &err), DTNH_ERR_FORMAT);
    CHECK_MSG(strstr(err.msg, "truncated") && strstr(err.msg, "3 labels"), "%s", err.msg);
}

static void idx_rejects_missing_file(void) {
    dtnh_dataset ds;
    dtnh_error err;
    CHECK_STATUS(dtnh_idx_open(&ds, fx("data/no-such-file.idx3"), NULL, &err), DTNH_ERR_IO);
    CHECK_MSG(strstr(err.msg, "no-such-file.idx3") != NULL, "%s", err.msg);
}

static void read_rejects_indices_outside_the_set(void) {
    dtnh_dataset ds;
    dtnh_error err;
    unsigned char px[18];
    int bad[2] = {1, 3};
    CHECK_OK(dtnh_idx_open(&ds, fx("data/tiny-images.idx3"), fx2("data/tiny-labels.idx1"), NULL));
    CHECK_STATUS(dtnh_dataset_read(&ds, 2, 2, px, NULL, &err), DTNH_ERR_ARG);
    CHECK_STATUS(dtnh_dataset_read(&ds, -1, 1, px, NULL, &err), DTNH_ERR_ARG);
    CHECK_STATUS(dtnh_dataset_read_indices(&ds, bad, 2, px, NULL, &err), DTNH_ERR_ARG);
    CHECK_MSG(strstr(err.msg, "index 3 at position 1") != NULL, "%s", err.msg);
    dtnh_dataset_close(&ds);
}

static void set_classes_rejects_a_label_out_of_range(void) {
    dtnh_dataset ds;
    dtnh_error err;
    int label;
    CHECK_OK(dtnh_idx_open(&ds, fx("data/tiny-images.idx3"), fx2("data/tiny-labels.idx1"), NULL));
    CHECK_STATUS(dtnh_dataset_set_classes(&ds, 2, &err), DTNH_ERR_FORMAT);
    CHECK_MSG(strstr(err.msg, "label 2 of image 0") && strstr(err.msg, "tiny-labels.idx1") &&
                  strstr(err.msg, "[0, 2)"), "%s", err.msg);
    /* reading that image's label is refused too */
    CHECK_STATUS(dtnh_dataset_read(&ds, 0, 1, NULL, &label, &err), DTNH_ERR_FORMAT);
    CHECK_OK(dtnh_dataset_set_classes(&ds, 10, NULL));
    CHECK(ds.classes == 10);
    dtnh_dataset_close(&ds);
}

/* ---- CIFAR-10 ------------------------------------------------------------------------------ */

static void cifar_reads_tiny_file(void) {
    static unsigned char px[2 * 3072];
    dtnh_dataset ds;
    int labels[2], p;
    CHECK_OK(dtnh_cifar10_open(&ds, fx("data/tiny.cifar"), NULL));
    CHECK(ds.count == 2 && ds.channels == 3 && ds.height == 32 && ds.width == 32 && ds.classes == 10);
    CHECK_OK(dtnh_dataset_read(&ds, 0, 2, px, labels, NULL));
    CHECK(labels[0] == 3 && labels[1] == 9);
    for (p = 0; p < 3072; p++) CHECK(px[3072 + p] == (7 + p) % 256 && px[p] == p % 256);
    dtnh_dataset_close(&ds);
}

static void cifar_memory_reader_reads_a_record(void) {
    static unsigned char file[2 * 3073], px[3072];
    size_t n = slurp(fx("data/tiny.cifar"), file, sizeof file);
    dtnh_dataset ds;
    int idx = 1, label;
    CHECK(n == sizeof file);
    CHECK_OK(dtnh_cifar10_open_memory(&ds, file, n, NULL));
    CHECK_OK(dtnh_dataset_read_indices(&ds, &idx, 1, px, &label, NULL));
    CHECK(label == 9 && px[0] == 7 && px[2048] == (7 + 2048) % 256);
}

static void cifar_rejects_out_of_range_label(void) {
    dtnh_dataset ds;
    dtnh_error err;
    CHECK_STATUS(dtnh_cifar10_open(&ds, fx("data/bad-label.cifar"), &err), DTNH_ERR_FORMAT);
    CHECK_MSG(strstr(err.msg, "label 10 of image 1 (offset 3073)") &&
                  strstr(err.msg, "bad-label.cifar") && strstr(err.msg, "[0, 10)"), "%s", err.msg);
}

static void cifar_rejects_truncated_file(void) {
    dtnh_dataset ds;
    dtnh_error err;
    CHECK_STATUS(dtnh_cifar10_open(&ds, fx("data/truncated.cifar"), &err), DTNH_ERR_FORMAT);
    CHECK_MSG(strstr(err.msg, "truncated.cifar") && strstr(err.msg, "100 bytes follow record 1"),
              "%s", err.msg);
}

/* ---- PGM / PPM ----------------------------------------------------------------------------- */

static void pnm_decodes_binary_grey_with_comments(void) {
    const char img[] = "P5 # a comment\n3 # width\n2\n255\n\x01\x02\x03\x04\x05\xff";
    unsigned char px[6];
    int c, h, w;
    CHECK_OK(dtnh_pnm_decode(img, sizeof img - 1, px, sizeof px, &c, &h, &w, NULL));
    CHECK(c == 1 && h == 2 && w == 3);
    CHECK(px[0] == 1 && px[4] == 5 && px[5] == 255);
}

static void pnm_decodes_ascii_rgb_into_planes(void) {
    const char img[] = "P3\n2 1\n255\n10 20 30  11 21 31\n";
    unsigned char px[6];
    int c, h, w;
    CHECK_OK(dtnh_pnm_decode(img, sizeof img - 1, px, sizeof px, &c, &h, &w, NULL));
    CHECK(c == 3 && h == 1 && w == 2);
    CHECK(px[0] == 10 && px[1] == 11 && px[2] == 20 && px[3] == 21 && px[4] == 30 && px[5] == 31);
}

static void pnm_scales_a_small_maxval_to_bytes(void) {
    const char img[] = "P2 3 1 15 0 7 15";
    unsigned char px[3];
    CHECK_OK(dtnh_pnm_decode(img, sizeof img - 1, px, sizeof px, NULL, NULL, NULL, NULL));
    CHECK(px[0] == 0 && px[1] == 119 && px[2] == 255); /* (7 * 255 + 7) / 15 = 119 */
}

static void pnm_shape_query_needs_no_buffer(void) {
    const char img[] = "P6\n640 480\n255\n";
    int c, h, w;
    CHECK_OK(dtnh_pnm_decode(img, sizeof img - 1, NULL, 0, &c, &h, &w, NULL));
    CHECK(c == 3 && h == 480 && w == 640);
}

static void pnm_rejects_unknown_magic(void) {
    dtnh_error err;
    CHECK_STATUS(dtnh_pnm_decode("P4\n1 1\n", 7, NULL, 0, NULL, NULL, NULL, &err), DTNH_ERR_FORMAT);
    CHECK_MSG(strstr(err.msg, "not a PGM/PPM") != NULL, "%s", err.msg);
}

static void pnm_rejects_16_bit_maxval(void) {
    dtnh_error err;
    CHECK_STATUS(dtnh_pnm_decode("P5 1 1 65535 ab", 15, NULL, 0, NULL, NULL, NULL, &err), DTNH_ERR_FORMAT);
    CHECK_MSG(strstr(err.msg, "maxval 65535") != NULL, "%s", err.msg);
}

static void pnm_rejects_value_above_maxval(void) {
    unsigned char px[2];
    dtnh_error err;
    CHECK_STATUS(dtnh_pnm_decode("P2 2 1 100 5 101", 16, px, 2, NULL, NULL, NULL, &err), DTNH_ERR_FORMAT);
    CHECK_MSG(strstr(err.msg, "pixel value 1 is 101, above maxval 100") != NULL, "%s", err.msg);
}

static void pnm_rejects_truncated_body(void) {
    unsigned char px[4];
    dtnh_error err;
    CHECK_STATUS(dtnh_pnm_decode("P5 2 2 255 abc", 14, px, 4, NULL, NULL, NULL, &err), DTNH_ERR_FORMAT);
    CHECK_MSG(strstr(err.msg, "truncated") != NULL, "%s", err.msg);
    CHECK_STATUS(dtnh_pnm_decode("P2 2 2 255 1 2 3", 16, px, 4, NULL, NULL, NULL, &err), DTNH_ERR_FORMAT);
}

static void pnm_rejects_header_cut_short_or_garbled(void) {
    dtnh_error err;
    CHECK_STATUS(dtnh_pnm_decode("P5 2", 4, NULL, 0, NULL, NULL, NULL, &err), DTNH_ERR_FORMAT);
    CHECK_MSG(strstr(err.msg, "ends in the header after its width") != NULL, "%s", err.msg);
    CHECK_STATUS(dtnh_pnm_decode("P5 2 ", 5, NULL, 0, NULL, NULL, NULL, &err), DTNH_ERR_FORMAT);
    CHECK_MSG(strstr(err.msg, "ends before its height") != NULL, "%s", err.msg);
    CHECK_STATUS(dtnh_pnm_decode("P5 2x2 255 ", 11, NULL, 0, NULL, NULL, NULL, &err), DTNH_ERR_FORMAT);
    CHECK_STATUS(dtnh_pnm_decode("P5 0 2 255 ", 11, NULL, 0, NULL, NULL, NULL, &err), DTNH_ERR_FORMAT);
    CHECK_STATUS(dtnh_pnm_decode("P5 99999999999 2 255 ", 21, NULL, 0, NULL, NULL, NULL, &err),
                 DTNH_ERR_FORMAT);
}

static void pnm_rejects_a_buffer_too_small(void) {
    unsigned char px[3];
    dtnh_error err;
    CHECK_STATUS(dtnh_pnm_decode("P5 2 2 255 abcd", 15, px, 3, NULL, NULL, NULL, &err), DTNH_ERR_ARG);
}

/* ---- folders ------------------------------------------------------------------------------- */

static DTNH_ALIGNED(64) unsigned char folder_mem[1 << 14];

static dtnh_status open_folder(dtnh_dataset *ds, const char *name, dtnh_error *err) {
    dtnh_arena a;
    dtnh_arena_init(&a, folder_mem, sizeof folder_mem);
    return dtnh_folder_open(ds, fx(name), &a, err);
}

static void folder_sorts_classes_and_files_and_skips_the_rest(void) {
    dtnh_dataset ds;
    int labels[4];
    CHECK_OK(open_folder(&ds, "data/folder", NULL));
    CHECK(ds.count == 4 && ds.classes == 2 && ds.channels == 1 && ds.height == 2 && ds.width == 3);
    CHECK(strcmp(ds.class_names[0], "cat") == 0 && strcmp(ds.class_names[1], "dog") == 0);
    CHECK(strcmp(ds.files[0], "a.pgm") == 0 && strcmp(ds.files[1], "b.pgm") == 0);
    CHECK(strcmp(ds.files[2], "D.PGM") == 0 && strcmp(ds.files[3], "c.pnm") == 0);
    CHECK_OK(dtnh_dataset_labels(&ds, labels, NULL));
    CHECK(labels[0] == 0 && labels[1] == 0 && labels[2] == 1 && labels[3] == 1);
}

static void folder_reads_binary_and_ascii_images(void) {
    dtnh_dataset ds;
    unsigned char px[4 * 6];
    int labels[4], i;
    CHECK_OK(open_folder(&ds, "data/folder", NULL));
    CHECK_OK(dtnh_dataset_read(&ds, 0, 4, px, labels, NULL));
    for (i = 0; i < 6; i++) {
        CHECK(px[i] == 100 + i);      /* cat/a.pgm, P5 */
        CHECK(px[6 + i] == 17 * i);   /* cat/b.pgm, P2 maxval 15 */
        CHECK(px[12 + i] == 50 + i);  /* dog/D.PGM */
        CHECK(px[18 + i] == 200 + i); /* dog/c.pnm */
    }
    CHECK(labels[1] == 0 && labels[3] == 1);
}

static void folder_reads_rgb_into_planes(void) {
    dtnh_dataset ds;
    unsigned char px[2 * 12];
    int c, i;
    CHECK_OK(open_folder(&ds, "data/folder-rgb", NULL));
    CHECK(ds.count == 2 && ds.channels == 3 && strcmp(ds.class_names[0], "blue") == 0);
    CHECK_OK(dtnh_dataset_read(&ds, 0, 2, px, NULL, NULL));
    for (c = 0; c < 3; c++)
        for (i = 0; i < 4; i++) {
            CHECK(px[c * 4 + i] == 40 * c + i + 2);      /* blue/y.ppm, P3 */
            CHECK(px[12 + c * 4 + i] == 40 * c + i + 1); /* red/x.ppm, P6 */
        }
}

static void folder_counting_arena_sizes_it_exactly(void) {
    dtnh_arena counter, a;
    dtnh_dataset ds;
    size_t need;
    dtnh_arena_init(&counter, NULL, 0);
    CHECK_OK(dtnh_folder_open(&ds, fx("data/folder"), &counter, NULL));
    CHECK(ds.count == 4 && ds.classes == 2);
    need = dtnh_arena_used(&counter);
    dtnh_arena_init(&a, folder_mem, need);
    CHECK_OK(dtnh_folder_open(&ds, fx("data/folder"), &a, NULL));
    CHECK(dtnh_arena_used(&a) == need);
    dtnh_arena_init(&a, folder_mem, need - 1);
    CHECK_STATUS(dtnh_folder_open(&ds, fx("data/folder"), &a, NULL), DTNH_ERR_NOMEM);
}

static void folder_rejects_an_image_of_the_wrong_size(void) {
    dtnh_dataset ds;
    dtnh_error err;
    CHECK_STATUS(open_folder(&ds, "data/folder-badsize", &err), DTNH_ERR_SHAPE);
    CHECK_MSG(strstr(err.msg, "b/2.pgm' is 3x2") && strstr(err.msg, "expected 2x3") &&
                  strstr(err.msg, "a/1.pgm"), "%s", err.msg);
}

static void folder_rejects_an_empty_class(void) {
    dtnh_dataset ds;
    dtnh_error err;
    CHECK_STATUS(open_folder(&ds, "data/folder-empty-class", &err), DTNH_ERR_FORMAT);
    CHECK_MSG(strstr(err.msg, "folder-empty-class/b' holds no") != NULL, "%s", err.msg);
}

static void folder_rejects_a_missing_root(void) {
    dtnh_dataset ds;
    dtnh_error err;
    CHECK_STATUS(open_folder(&ds, "data/no-such-folder", &err), DTNH_ERR_IO);
    CHECK_MSG(strstr(err.msg, "no-such-folder") != NULL, "%s", err.msg);
}

static void folder_read_names_a_file_with_bad_pixels(void) {
    dtnh_dataset ds;
    dtnh_error err;
    unsigned char px[6];
    CHECK_OK(open_folder(&ds, "data/folder-badpixel", NULL)); /* headers are fine */
    CHECK_STATUS(dtnh_dataset_read(&ds, 0, 1, px, NULL, &err), DTNH_ERR_FORMAT);
    CHECK_MSG(strstr(err.msg, "a/1.pgm") && strstr(err.msg, "above maxval"), "%s", err.msg);
    CHECK_STATUS(dtnh_dataset_read(&ds, 1, 1, px, NULL, &err), DTNH_ERR_FORMAT);
    CHECK_MSG(strstr(err.msg, "a/2.pgm") && strstr(err.msg, "truncated"), "%s", err.msg);
}

/* ---- telling formats apart ---------------------------------------------------------------- */

static void dataset_open_tells_the_three_formats_apart(void) {
    dtnh_dataset ds;
    dtnh_arena a;
    dtnh_arena_init(&a, folder_mem, sizeof folder_mem);
    CHECK_OK(dtnh_dataset_open(&ds, fx("data/tiny-images.idx3"), fx2("data/tiny-labels.idx1"), NULL, NULL));
    CHECK(ds.format == DTNH_DATA_IDX && ds.count == 3 && ds.has_labels);
    dtnh_dataset_close(&ds);
    CHECK_OK(dtnh_dataset_open(&ds, fx("data/tiny.cifar"), NULL, NULL, NULL));
    CHECK(ds.format == DTNH_DATA_CIFAR10 && ds.count == 2);
    dtnh_dataset_close(&ds);
    CHECK_OK(dtnh_dataset_open(&ds, fx("data/folder"), NULL, &a, NULL));
    CHECK(ds.format == DTNH_DATA_FOLDER && ds.count == 4);
}

static void dataset_open_rejects_what_it_cannot_tell(void) {
    dtnh_dataset ds;
    dtnh_arena a;
    dtnh_error err;
    dtnh_arena_init(&a, folder_mem, sizeof folder_mem);
    CHECK_STATUS(dtnh_dataset_open(&ds, fx("data/tiny-labels.idx1"), NULL, NULL, &err), DTNH_ERR_FORMAT);
    CHECK_MSG(strstr(err.msg, "tiny-labels.idx1' is neither") && strstr(err.msg, "0x00000801"), "%s", err.msg);
    CHECK_STATUS(dtnh_dataset_open(&ds, fx("data/tiny.cifar"), fx2("data/tiny-labels.idx1"), NULL, &err),
                 DTNH_ERR_ARG);
    CHECK_STATUS(dtnh_dataset_open(&ds, fx("data/folder"), fx2("data/tiny-labels.idx1"), &a, &err),
                 DTNH_ERR_ARG);
    CHECK_STATUS(dtnh_dataset_open(&ds, fx("data/folder"), NULL, NULL, &err), DTNH_ERR_ARG);
    CHECK_STATUS(dtnh_dataset_open(&ds, fx("data/missing"), NULL, NULL, &err), DTNH_ERR_IO);
}

/* ---- the bundled data ---------------------------------------------------------------------- */

static uint64_t fnv1a(const unsigned char *p, size_t n) {
    uint64_t h = 1469598103934665603ull;
    size_t i;
    for (i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

static unsigned char bundle_px[2000 * 784];
static int bundle_labels[2000];

/* Opens data/<name>-*, checks count, shape and per-class counts, reads everything. */
static dtnh_status load_bundled(const char *name, int count, int per_class) {
    char img[64], lab[64];
    dtnh_dataset ds;
    int counts[10], c;
    dtnh_status s;
    snprintf(img, sizeof img, "%s-images-idx3-ubyte", name);
    snprintf(lab, sizeof lab, "%s-labels-idx1-ubyte", name);
    if ((s = dtnh_idx_open(&ds, bundled(img), bundled(lab), NULL))) return s;
    s = dtnh_dataset_read(&ds, 0, ds.count, bundle_px, bundle_labels, NULL);
    dtnh_dataset_close(&ds);
    if (s) return s;
    if (ds.count != count || ds.height != 28 || ds.width != 28 || ds.classes != 10) return DTNH_ERR_SHAPE;
    dtnh_class_counts(bundle_labels, count, 10, counts);
    for (c = 0; c < 10; c++)
        if (counts[c] != per_class) return DTNH_ERR_SHAPE;
    return DTNH_OK;
}

static int sum784(const unsigned char *p) {
    int i, s = 0;
    for (i = 0; i < 784; i++) s += p[i];
    return s;
}

/* Known values, from tools/make_data.py's output (data/README.md). */
static void bundled_fashion_subset_has_its_counts_and_pixels(void) {
    CHECK_OK(load_bundled("fashion-train", 2000, 200));
    CHECK(bundle_labels[0] == 9 && sum784(bundle_px) == 41803 && bundle_px[14 * 28 + 14] == 197);
    CHECK(bundle_labels[1999] == 4 && sum784(bundle_px + 1999 * 784) == 32534);
    CHECK_OK(load_bundled("fashion-test", 1000, 100));
    CHECK(bundle_labels[0] == 0 && sum784(bundle_px) == 56567 && bundle_px[14 * 28 + 14] == 92);
}

static void bundled_digits_subset_has_its_counts_and_pixels(void) {
    CHECK_OK(load_bundled("digits-train", 2000, 200));
    CHECK(bundle_labels[0] == 5 && sum784(bundle_px) == 33040 && bundle_px[14 * 28 + 14] == 253);
    CHECK_OK(load_bundled("digits-test", 1000, 100));
    CHECK(bundle_labels[0] == 1 && sum784(bundle_px) == 19860);
}

static void bundled_digits_train_and_test_are_disjoint(void) {
    static uint64_t train[2000];
    int i, j;
    CHECK_OK(load_bundled("digits-train", 2000, 200));
    for (i = 0; i < 2000; i++) train[i] = fnv1a(bundle_px + (size_t)i * 784, 784);
    CHECK_OK(load_bundled("digits-test", 1000, 100));
    for (j = 0; j < 1000; j++) {
        uint64_t h = fnv1a(bundle_px + (size_t)j * 784, 784);
        for (i = 0; i < 2000; i++) CHECK_MSG(train[i] != h, "test image %d equals train image %d", j, i);
    }
}

/* ---- sampling ------------------------------------------------------------------------------ */

/* 10 classes of 40 + c images each, interleaved, and a few unlabelled (-1). */
static int synth_labels(int *labels) {
    int n = 0, c, k;
    for (k = 0; k < 49; k++)
        for (c = 0; c < 10; c++)
            if (k < 40 + c) labels[n++] = c;
    labels[n++] = -1;
    labels[n++] = -1;
    return n;
}

static void sample_per_class_takes_exactly_k_of_each(void) {
    int labels[600], idx[10 * 7], n = synth_labels(labels), c, j;
    dtnh_rng r;
    dtnh_rng_seed(&r, 5);
    CHECK_OK(dtnh_sample_per_class(labels, n, 10, 7, &r, idx, NULL));
    for (c = 0; c < 10; c++)
        for (j = 0; j < 7; j++) {
            CHECK(labels[idx[c * 7 + j]] == c);
            if (j) CHECK(idx[c * 7 + j] > idx[c * 7 + j - 1]); /* distinct, ascending */
        }
}

static void sample_per_class_repeats_with_the_seed(void) {
    int labels[600], a[50], b[50], d[50], n = synth_labels(labels);
    dtnh_rng r;
    dtnh_rng_seed(&r, 11);
    CHECK_OK(dtnh_sample_per_class(labels, n, 10, 5, &r, a, NULL));
    dtnh_rng_seed(&r, 11);
    CHECK_OK(dtnh_sample_per_class(labels, n, 10, 5, &r, b, NULL));
    dtnh_rng_seed(&r, 12);
    CHECK_OK(dtnh_sample_per_class(labels, n, 10, 5, &r, d, NULL));
    CHECK(memcmp(a, b, sizeof a) == 0);
    CHECK(memcmp(a, d, sizeof a) != 0);
}

/* Selection sampling is uniform: choosing 2 of 5 images, each is chosen 2/5 of the time. */
static void sample_per_class_is_uniform(void) {
    int labels[5] = {0, 0, 0, 0, 0}, hits[5] = {0}, idx[2], t, i;
    dtnh_rng r;
    dtnh_rng_seed(&r, 3);
    for (t = 0; t < 10000; t++) {
        CHECK_OK(dtnh_sample_per_class(labels, 5, 1, 2, &r, idx, NULL));
        hits[idx[0]]++;
        hits[idx[1]]++;
    }
    for (i = 0; i < 5; i++) CHECK_MSG(abs(hits[i] - 4000) < 250, "image %d chosen %d times", i, hits[i]);
}

static void sample_per_class_rejects_a_class_too_small(void) {
    int labels[600], idx[450], n = synth_labels(labels);
    dtnh_rng r;
    dtnh_error err;
    dtnh_rng_seed(&r, 1);
    CHECK_STATUS(dtnh_sample_per_class(labels, n, 10, 41, &r, idx, &err), DTNH_ERR_ARG);
    CHECK_MSG(strstr(err.msg, "class 0 has 40 images, 41 asked") != NULL, "%s", err.msg);
}

static void relabel_maps_a_class_subset_to_zero_based(void) {
    int labels[8] = {0, 5, 9, 7, 4, 6, 8, -1}, classes[5] = {5, 6, 7, 8, 9};
    int want[8] = {-1, 0, 4, 2, -1, 1, 3, -1};
    CHECK_OK(dtnh_relabel(labels, 8, classes, 5, NULL));
    CHECK(memcmp(labels, want, sizeof want) == 0);
}

static void relabel_rejects_a_class_listed_twice(void) {
    int labels[2] = {1, 2}, classes[3] = {1, 2, 1};
    dtnh_error err;
    CHECK_STATUS(dtnh_relabel(labels, 2, classes, 3, &err), DTNH_ERR_ARG);
    CHECK_MSG(strstr(err.msg, "class 1 is listed twice") != NULL, "%s", err.msg);
}

static void split_per_class_gives_disjoint_parts_of_the_asked_sizes(void) {
    int labels[600], part[600], n = synth_labels(labels), counts[3][10], i, c, p;
    int sizes[3] = {30, 5, DTNH_SPLIT_REST};
    dtnh_rng r;
    dtnh_rng_seed(&r, 7);
    CHECK_OK(dtnh_split_per_class(labels, n, 10, sizes, 3, &r, part, NULL));
    memset(counts, 0, sizeof counts);
    for (i = 0; i < n; i++) {
        if (labels[i] < 0) {
            CHECK(part[i] == -1);
            continue;
        }
        CHECK(part[i] >= 0 && part[i] < 3); /* every labelled image in exactly one part */
        counts[part[i]][labels[i]]++;
    }
    for (c = 0; c < 10; c++) {
        CHECK(counts[0][c] == 30 && counts[1][c] == 5 && counts[2][c] == 40 + c - 35);
    }
    for (p = 0; p < 3; p++) CHECK(dtnh_part_indices(part, n, p, NULL) == (p == 0 ? 300 : p == 1 ? 50 : 95));
}

static void split_per_class_repeats_with_the_seed(void) {
    int labels[600], a[600], b[600], n = synth_labels(labels), sizes[2] = {10, 10};
    dtnh_rng r;
    dtnh_rng_seed(&r, 99);
    CHECK_OK(dtnh_split_per_class(labels, n, 10, sizes, 2, &r, a, NULL));
    dtnh_rng_seed(&r, 99);
    CHECK_OK(dtnh_split_per_class(labels, n, 10, sizes, 2, &r, b, NULL));
    CHECK(memcmp(a, b, (size_t)n * sizeof(int)) == 0);
}

static void split_without_a_rest_part_leaves_the_others_out(void) {
    int labels[600], part[600], n = synth_labels(labels), sizes[1] = {3}, idx[30], i;
    dtnh_rng r;
    dtnh_rng_seed(&r, 2);
    CHECK_OK(dtnh_split_per_class(labels, n, 10, sizes, 1, &r, part, NULL));
    CHECK(dtnh_part_indices(part, n, 0, idx) == 30);
    CHECK(dtnh_part_indices(part, n, -1, NULL) == n - 30);
    for (i = 1; i < 30; i++) CHECK(idx[i] > idx[i - 1]);
}

static void split_per_class_rejects_bad_requests(void) {
    int labels[600], part[600], n = synth_labels(labels), two_rests[2] = {-1, -1}, big[2] = {30, 11};
    dtnh_rng r;
    dtnh_error err;
    dtnh_rng_seed(&r, 2);
    CHECK_STATUS(dtnh_split_per_class(labels, n, 10, two_rests, 2, &r, part, &err), DTNH_ERR_ARG);
    CHECK_STATUS(dtnh_split_per_class(labels, n, 10, big, 2, &r, part, &err), DTNH_ERR_ARG);
    CHECK_MSG(strstr(err.msg, "class 0 has 40 images") && strstr(err.msg, "41"), "%s", err.msg);
}

static void split_fraction_holds_out_a_share_of_each_class(void) {
    int labels[600], part[600], n = synth_labels(labels), counts[10], held[10], i, c;
    dtnh_rng r;
    dtnh_rng_seed(&r, 4);
    CHECK_OK(dtnh_split_fraction(labels, n, 10, 0.2f, &r, part, NULL));
    dtnh_class_counts(labels, n, 10, counts);
    memset(held, 0, sizeof held);
    for (i = 0; i < n; i++)
        if (part[i] == 1) held[labels[i]]++;
    for (c = 0; c < 10; c++) CHECK(held[c] == (int)(0.2 * counts[c] + 0.5));
    CHECK(dtnh_part_indices(part, n, -1, NULL) == 2);
}

/* ---- minibatch streams --------------------------------------------------------------------- */

static DTNH_ALIGNED(64) unsigned char stream_mem[4096];

static void batch_stream_gives_full_batches_without_repeats(void) {
    dtnh_batch_stream bs;
    dtnh_arena a;
    int seen[10] = {0}, b[3], k, i, j;
    dtnh_arena_init(&a, stream_mem, sizeof stream_mem);
    CHECK_OK(dtnh_batch_stream_init(&bs, 10, 42, &a, NULL));
    for (k = 0; k < 3; k++) { /* one epoch: 3 batches of 3, the 10th image skipped */
        CHECK_OK(dtnh_batch_stream_next(&bs, 3, b, NULL));
        for (i = 0; i < 3; i++) {
            CHECK(b[i] >= 0 && b[i] < 10);
            seen[b[i]]++;
        }
    }
    for (i = 0, j = 0; i < 10; i++) {
        CHECK(seen[i] <= 1);
        j += seen[i];
    }
    CHECK(j == 9 && bs.epoch == 0);
    CHECK_OK(dtnh_batch_stream_next(&bs, 3, b, NULL));
    /* the left-over image was skipped: this batch is the start of a fresh shuffle */
    CHECK(bs.epoch == 1 && bs.next == 3);
    CHECK(b[0] == bs.order[0] && b[1] == bs.order[1] && b[2] == bs.order[2]);
}

static void batch_stream_larger_than_the_set_spans_shuffles(void) {
    dtnh_batch_stream bs;
    dtnh_arena a;
    int seen[4] = {0}, b[10], i;
    dtnh_arena_init(&a, stream_mem, sizeof stream_mem);
    CHECK_OK(dtnh_batch_stream_init(&bs, 4, 1, &a, NULL));
    CHECK_OK(dtnh_batch_stream_next(&bs, 10, b, NULL));
    for (i = 0; i < 10; i++) seen[b[i]]++;
    for (i = 0; i < 4; i++) CHECK(seen[i] >= 2);
}

static void batch_stream_repeats_with_the_seed(void) {
    dtnh_batch_stream s1, s2;
    dtnh_arena a;
    int x[5], y[5], k;
    dtnh_arena_init(&a, stream_mem, sizeof stream_mem);
    CHECK_OK(dtnh_batch_stream_init(&s1, 20, 9, &a, NULL));
    CHECK_OK(dtnh_batch_stream_init(&s2, 20, 9, &a, NULL));
    for (k = 0; k < 12; k++) {
        CHECK_OK(dtnh_batch_stream_next(&s1, 5, x, NULL));
        CHECK_OK(dtnh_batch_stream_next(&s2, 5, y, NULL));
        CHECK(memcmp(x, y, sizeof x) == 0);
    }
}

/* ---- batches and augmentation -------------------------------------------------------------- */

static float ref_norm(int v, float mean, float std) { return ((float)v / 255.0f - mean) / std; }

static void batch_normalises_every_byte_exactly(void) {
    static unsigned char px[256];
    static float out[256];
    dtnh_tensor t;
    int shape[4] = {1, 1, 16, 16}, v;
    for (v = 0; v < 256; v++) px[v] = (unsigned char)v;
    CHECK_OK(dtnh_tensor_view(&t, out, 4, shape, NULL));
    CHECK_OK(dtnh_batch_assemble(NULL, px, 1, 1, 16, 16, NULL, &t, NULL));
    for (v = 0; v < 256; v++) CHECK(out[v] == ref_norm(v, 0.5f, 0.5f));
    CHECK(out[0] == -1.0f && out[255] == 1.0f);
}

static void batch_normalises_each_channel_with_its_own_statistics(void) {
    unsigned char px[3 * 2] = {0, 255, 10, 20, 128, 64};
    float out[6];
    dtnh_augment_config cfg;
    dtnh_tensor t;
    int shape[4] = {1, 3, 1, 2}, k;
    memset(&cfg, 0, sizeof cfg);
    cfg.mean[0] = 0.485f, cfg.mean[1] = 0.456f, cfg.mean[2] = 0.406f;
    cfg.std[0] = 0.229f, cfg.std[1] = 0.224f, cfg.std[2] = 0.225f;
    CHECK_OK(dtnh_tensor_view(&t, out, 4, shape, NULL));
    CHECK_OK(dtnh_batch_assemble(&cfg, px, 1, 3, 1, 2, NULL, &t, NULL));
    for (k = 0; k < 6; k++) CHECK(out[k] == ref_norm(px[k], cfg.mean[k / 2], cfg.std[k / 2]));
}

static void batch_repeats_grey_into_three_channels(void) {
    unsigned char px[2] = {0, 255};
    float out[6];
    dtnh_augment_config cfg;
    dtnh_tensor t;
    int shape[4] = {1, 3, 1, 2}, c;
    memset(&cfg, 0, sizeof cfg);
    cfg.out_channels = 3;
    CHECK_OK(dtnh_tensor_view(&t, out, 4, shape, NULL));
    CHECK_OK(dtnh_batch_assemble(&cfg, px, 1, 1, 1, 2, NULL, &t, NULL));
    for (c = 0; c < 3; c++) CHECK(out[2 * c] == -1.0f && out[2 * c + 1] == 1.0f);
}

/* The naive reference: pad the image with zero bytes, crop at (dy, dx), mirror if asked. */
static void ref_crop(const unsigned char *img, int h, int w, int pad, int dy, int dx, int flip,
                     float *out) {
    static unsigned char padded[64 * 64];
    int ph = h + 2 * pad, pw = w + 2 * pad, y, x;
    memset(padded, 0, sizeof padded);
    for (y = 0; y < h; y++)
        for (x = 0; x < w; x++) padded[(y + pad) * pw + x + pad] = img[y * w + x];
    (void)ph;
    for (y = 0; y < h; y++)
        for (x = 0; x < w; x++) {
            int sx = flip ? w - 1 - x : x;
            out[y * w + x] = ref_norm(padded[(y + dy) * pw + sx + dx], 0.5f, 0.5f);
        }
}

static void batch_crop_with_padding_matches_a_naive_reference(void) {
    enum { N = 8, H = 6, W = 5, PAD = 2 };
    unsigned char px[N * H * W];
    float out[N * H * W], want[H * W];
    dtnh_augment_config cfg;
    dtnh_tensor t;
    dtnh_rng r, copy;
    int shape[4] = {N, 1, H, W}, i, moved = 0;
    for (i = 0; i < N * H * W; i++) px[i] = (unsigned char)(1 + (i * 53) % 250);
    memset(&cfg, 0, sizeof cfg);
    cfg.pad = PAD;
    CHECK_OK(dtnh_tensor_view(&t, out, 4, shape, NULL));
    dtnh_rng_seed(&r, 77);
    copy = r;
    CHECK_OK(dtnh_batch_assemble(&cfg, px, N, 1, H, W, &r, &t, NULL));
    for (i = 0; i < N; i++) {
        int dy = (int)dtnh_rng_below(&copy, 2 * PAD + 1), dx = (int)dtnh_rng_below(&copy, 2 * PAD + 1);
        ref_crop(px + i * H * W, H, W, PAD, dy, dx, 0, want);
        CHECK(memcmp(out + i * H * W, want, sizeof want) == 0);
        moved += dy != PAD || dx != PAD;
    }
    CHECK(moved > 0);
}

static void batch_flip_mirrors_about_half_the_images(void) {
    enum { N = 40, H = 3, W = 4 };
    unsigned char px[N * H * W];
    float out[N * H * W], want[H * W];
    dtnh_augment_config cfg;
    dtnh_tensor t;
    dtnh_rng r, copy;
    int shape[4] = {N, 1, H, W}, i, flips = 0;
    for (i = 0; i < N * H * W; i++) px[i] = (unsigned char)(i * 7);
    memset(&cfg, 0, sizeof cfg);
    cfg.flip = 1;
    CHECK_OK(dtnh_tensor_view(&t, out, 4, shape, NULL));
    dtnh_rng_seed(&r, 8);
    copy = r;
    CHECK_OK(dtnh_batch_assemble(&cfg, px, N, 1, H, W, &r, &t, NULL));
    for (i = 0; i < N; i++) {
        int flip = (int)dtnh_rng_below(&copy, 2);
        ref_crop(px + i * H * W, H, W, 0, 0, 0, flip, want);
        CHECK(memcmp(out + i * H * W, want, sizeof want) == 0);
        flips += flip;
    }
    CHECK(flips > 5 && flips < 35);
}

static void batch_without_rng_neither_crops_nor_flips(void) {
    unsigned char px[12];
    float a[12], b[12];
    dtnh_augment_config cfg;
    dtnh_tensor ta, tb;
    int shape[4] = {1, 1, 3, 4}, i;
    for (i = 0; i < 12; i++) px[i] = (unsigned char)(20 * i);
    memset(&cfg, 0, sizeof cfg);
    cfg.pad = 2;
    cfg.flip = 1;
    CHECK_OK(dtnh_tensor_view(&ta, a, 4, shape, NULL));
    CHECK_OK(dtnh_tensor_view(&tb, b, 4, shape, NULL));
    CHECK_OK(dtnh_batch_assemble(&cfg, px, 1, 1, 3, 4, NULL, &ta, NULL));
    CHECK_OK(dtnh_batch_assemble(NULL, px, 1, 1, 3, 4, NULL, &tb, NULL));
    CHECK(memcmp(a, b, sizeof a) == 0);
}

/* Golden values from PyTorch's F.interpolate (tools/make_data_fixtures.py). */
static void batch_bilinear_resize_matches_pytorch(void) {
    static unsigned char px[3 * 28 * 28];
    static float out[3 * 32 * 32], want[3 * 32 * 32];
    FILE *f = fopen(fx("data/resize-golden.txt"), "r");
    char line[512];
    int cases = 0;
    CHECK(f != NULL);
    CHECK(fgets(line, sizeof line, f) != NULL); /* the comment line */
    for (;;) {
        int c, h, w, oh, ow, k, y, x, shape[4];
        float m[3], s[3];
        dtnh_augment_config cfg;
        dtnh_tensor t;
        dtnh_status st;
        if (fscanf(f, "%d %d %d %d %d %f %f %f %f %f %f", &c, &h, &w, &oh, &ow, &m[0], &m[1], &m[2],
                   &s[0], &s[1], &s[2]) != 11)
            break;
        for (k = 0; k < c * oh * ow; k++)
            if (fscanf(f, "%f", &want[k]) != 1) break;
        for (k = 0; k < c; k++)
            for (y = 0; y < h; y++)
                for (x = 0; x < w; x++) px[(k * h + y) * w + x] = (unsigned char)((50 * k + 37 * y + 11 * x + 5) % 256);
        memset(&cfg, 0, sizeof cfg);
        memcpy(cfg.mean, m, sizeof m);
        memcpy(cfg.std, s, sizeof s);
        cfg.out_height = oh;
        cfg.out_width = ow;
        shape[0] = 1, shape[1] = c, shape[2] = oh, shape[3] = ow;
        dtnh_tensor_view(&t, out, 4, shape, NULL);
        st = dtnh_batch_assemble(&cfg, px, 1, c, h, w, NULL, &t, NULL);
        if (st) break;
        for (k = 0; k < c * oh * ow; k++) CHECK_NEAR(out[k], want[k], 2e-6);
        cases++;
    }
    fclose(f);
    CHECK_MSG(cases == 4, "read %d resize cases, expected 4", cases);
}

static void batch_resize_then_crop_pads_the_resized_image(void) {
    unsigned char px[4] = {255, 255, 255, 255};
    float out[1 * 1 * 4 * 4];
    dtnh_augment_config cfg;
    dtnh_tensor t;
    dtnh_rng r;
    int shape[4] = {1, 1, 4, 4}, i, pads = 0;
    memset(&cfg, 0, sizeof cfg);
    cfg.out_height = cfg.out_width = 4;
    cfg.pad = 1;
    dtnh_rng_seed(&r, 5);
    CHECK_OK(dtnh_tensor_view(&t, out, 4, shape, NULL));
    CHECK_OK(dtnh_batch_assemble(&cfg, px, 1, 1, 2, 2, &r, &t, NULL));
    for (i = 0; i < 16; i++) {
        CHECK(out[i] == 1.0f || out[i] == -1.0f); /* white, or the zero padding */
        pads += out[i] == -1.0f;
    }
    CHECK(pads == 0 || pads == 4 || pads == 7); /* 0, 1 or 2 padded edges */
}

static void batch_rejects_a_tensor_of_the_wrong_shape(void) {
    unsigned char px[4] = {0};
    float out[8];
    dtnh_tensor t;
    dtnh_error err;
    int shape[4] = {1, 1, 2, 4};
    CHECK_OK(dtnh_tensor_view(&t, out, 4, shape, NULL));
    CHECK_STATUS(dtnh_batch_assemble(NULL, px, 1, 1, 2, 2, NULL, &t, &err), DTNH_ERR_SHAPE);
    CHECK_MSG(strstr(err.msg, "expected [1, 1, 2, 2]") != NULL, "%s", err.msg);
}

static void batch_rejects_configs_that_do_not_fit(void) {
    dtnh_augment_config cfg;
    dtnh_error err;
    int shape[4];
    memset(&cfg, 0, sizeof cfg);
    cfg.out_channels = 2;
    CHECK_STATUS(dtnh_batch_shape(&cfg, 4, 1, 28, 28, shape, &err), DTNH_ERR_SHAPE);
    memset(&cfg, 0, sizeof cfg);
    cfg.pad = -1;
    CHECK_STATUS(dtnh_batch_shape(&cfg, 4, 1, 28, 28, shape, &err), DTNH_ERR_ARG);
    memset(&cfg, 0, sizeof cfg);
    cfg.out_height = 32, cfg.out_width = 32, cfg.out_channels = 3;
    CHECK_OK(dtnh_batch_shape(&cfg, 4, 1, 28, 28, shape, &err));
    CHECK(shape[0] == 4 && shape[1] == 3 && shape[2] == 32 && shape[3] == 32);
}

static void batch_rejects_a_zero_std_in_a_custom_normalisation(void) {
    unsigned char px[3] = {0};
    float out[3];
    dtnh_augment_config cfg;
    dtnh_tensor t;
    dtnh_error err;
    int shape[4] = {1, 3, 1, 1};
    memset(&cfg, 0, sizeof cfg);
    cfg.std[0] = 0.2f; /* std[1] and std[2] left 0 */
    CHECK_OK(dtnh_tensor_view(&t, out, 4, shape, NULL));
    CHECK_STATUS(dtnh_batch_assemble(&cfg, px, 1, 3, 1, 1, NULL, &t, &err), DTNH_ERR_ARG);
    CHECK_MSG(strstr(err.msg, "channel 1") != NULL, "%s", err.msg);
}

/* ---- image sets ---------------------------------------------------------------------------- */

static DTNH_ALIGNED(64) unsigned char set_mem[1024];

static void image_set_counts_then_loads_a_few_shot_set(void) {
    dtnh_dataset ds;
    dtnh_image_set set;
    dtnh_arena counter, a;
    int idx[2] = {2, 0};
    CHECK_OK(dtnh_idx_open(&ds, fx("data/tiny-images.idx3"), fx2("data/tiny-labels.idx1"), NULL));
    dtnh_arena_init(&counter, NULL, 0);
    CHECK_OK(dtnh_image_set_load(&set, &ds, idx, 2, &counter, NULL));
    CHECK(set.pixels == NULL && set.count == 2);
    dtnh_arena_init(&a, set_mem, dtnh_arena_used(&counter));
    CHECK_OK(dtnh_image_set_load(&set, &ds, idx, 2, &a, NULL));
    CHECK(dtnh_arena_used(&a) == dtnh_arena_used(&counter));
    CHECK(set.pixels[0] == 21 && set.pixels[6] == 1 && set.labels[0] == 1 && set.labels[1] == 2);
    dtnh_arena_init(&a, set_mem, dtnh_arena_used(&counter) - 1);
    CHECK_STATUS(dtnh_image_set_load(&set, &ds, idx, 2, &a, NULL), DTNH_ERR_NOMEM);
    dtnh_dataset_close(&ds);
}

static void batch_from_set_gathers_images_and_labels(void) {
    dtnh_dataset ds;
    dtnh_image_set set;
    dtnh_arena a;
    dtnh_tensor t;
    float out[2 * 6];
    int shape[4] = {2, 1, 2, 3}, idx[2] = {1, 2}, labels[2], i;
    CHECK_OK(dtnh_idx_open(&ds, fx("data/tiny-images.idx3"), fx2("data/tiny-labels.idx1"), NULL));
    dtnh_arena_init(&a, set_mem, sizeof set_mem);
    CHECK_OK(dtnh_image_set_load(&set, &ds, NULL, 3, &a, NULL));
    dtnh_dataset_close(&ds);
    CHECK_OK(dtnh_tensor_view(&t, out, 4, shape, NULL));
    CHECK_OK(dtnh_batch_from_set(NULL, &set, idx, 2, NULL, &t, labels, NULL));
    CHECK(labels[0] == 0 && labels[1] == 1);
    for (i = 0; i < 6; i++) {
        CHECK(out[i] == ref_norm(11 + i, 0.5f, 0.5f));
        CHECK(out[6 + i] == ref_norm(21 + i, 0.5f, 0.5f));
    }
    idx[1] = 3;
    CHECK_STATUS(dtnh_batch_from_set(NULL, &set, idx, 2, NULL, &t, labels, NULL), DTNH_ERR_ARG);
}

/* The whole few-shot recipe on the bundled digits: classes 5..9 relabelled 0..4, 30 train and
   20 validation per class, the rest test; loaded, then one augmented batch. */
static void few_shot_recipe_on_bundled_digits(void) {
    static DTNH_ALIGNED(64) unsigned char mem[1 << 18];
    static int labels[2000], part[2000], train[150];
    static float batch[48 * 28 * 28];
    int classes[5] = {5, 6, 7, 8, 9}, sizes[3] = {30, 20, DTNH_SPLIT_REST}, shape[4], idx[48], bl[48], i;
    dtnh_dataset ds;
    dtnh_image_set set;
    dtnh_batch_stream bs;
    dtnh_augment_config cfg;
    dtnh_arena a;
    dtnh_tensor t;
    dtnh_rng r;
    CHECK_OK(dtnh_idx_open(&ds, bundled("digits-train-images-idx3-ubyte"),
                           bundled("digits-train-labels-idx1-ubyte"), NULL));
    CHECK_OK(dtnh_dataset_labels(&ds, labels, NULL));
    CHECK_OK(dtnh_relabel(labels, ds.count, classes, 5, NULL));
    dtnh_rng_seed(&r, 1);
    CHECK_OK(dtnh_split_per_class(labels, ds.count, 5, sizes, 3, &r, part, NULL));
    CHECK(dtnh_part_indices(part, ds.count, 0, train) == 150);
    CHECK(dtnh_part_indices(part, ds.count, 1, NULL) == 100);
    CHECK(dtnh_part_indices(part, ds.count, 2, NULL) == 750);
    dtnh_arena_init(&a, mem, sizeof mem);
    CHECK_OK(dtnh_image_set_load(&set, &ds, train, 150, &a, NULL));
    dtnh_dataset_close(&ds);
    CHECK_OK(dtnh_relabel(set.labels, set.count, classes, 5, NULL));
    set.classes = 5;
    CHECK_OK(dtnh_batch_stream_init(&bs, set.count, 3, &a, NULL));
    CHECK_OK(dtnh_batch_stream_next(&bs, 48, idx, NULL));
    memset(&cfg, 0, sizeof cfg);
    cfg.pad = 2;
    CHECK_OK(dtnh_batch_shape(&cfg, 48, set.channels, set.height, set.width, shape, NULL));
    CHECK_OK(dtnh_tensor_view(&t, batch, 4, shape, NULL));
    CHECK_OK(dtnh_batch_from_set(&cfg, &set, idx, 48, &r, &t, bl, NULL));
    for (i = 0; i < 48; i++) CHECK(bl[i] >= 0 && bl[i] < 5);
    for (i = 0; i < 48 * 784; i++) CHECK(batch[i] >= -1.0f && batch[i] <= 1.0f);
}

void suite_data(void) {
    RUN(idx_reads_tiny_file);
    RUN(idx_reads_an_index_list_in_order);
    RUN(idx_memory_reader_matches_file_reader);
    RUN(idx_without_labels_reads_minus_one);
    RUN(idx_rejects_wrong_magic_naming_the_file);
    RUN(idx_rejects_a_labels_file_for_images_swapped);
    RUN(idx_rejects_gzip_with_a_hint);
    RUN(idx_rejects_truncated_file);
    RUN(idx_rejects_header_cut_short);
    RUN(idx_rejects_trailing_bytes);
    RUN(idx_rejects_dims_out_of_range);
    RUN(idx_rejects_huge_dims_that_disagree_with_the_size);
    RUN(idx_rejects_label_count_mismatch);
    RUN(idx_rejects_truncated_labels);
    RUN(idx_rejects_missing_file);
    RUN(read_rejects_indices_outside_the_set);
    RUN(set_classes_rejects_a_label_out_of_range);
    RUN(cifar_reads_tiny_file);
    RUN(cifar_memory_reader_reads_a_record);
    RUN(cifar_rejects_out_of_range_label);
    RUN(cifar_rejects_truncated_file);
    RUN(pnm_decodes_binary_grey_with_comments);
    RUN(pnm_decodes_ascii_rgb_into_planes);
    RUN(pnm_scales_a_small_maxval_to_bytes);
    RUN(pnm_shape_query_needs_no_buffer);
    RUN(pnm_rejects_unknown_magic);
    RUN(pnm_rejects_16_bit_maxval);
    RUN(pnm_rejects_value_above_maxval);
    RUN(pnm_rejects_truncated_body);
    RUN(pnm_rejects_header_cut_short_or_garbled);
    RUN(pnm_rejects_a_buffer_too_small);
    RUN(folder_sorts_classes_and_files_and_skips_the_rest);
    RUN(folder_reads_binary_and_ascii_images);
    RUN(folder_reads_rgb_into_planes);
    RUN(folder_counting_arena_sizes_it_exactly);
    RUN(folder_rejects_an_image_of_the_wrong_size);
    RUN(folder_rejects_an_empty_class);
    RUN(folder_rejects_a_missing_root);
    RUN(folder_read_names_a_file_with_bad_pixels);
    RUN(dataset_open_tells_the_three_formats_apart);
    RUN(dataset_open_rejects_what_it_cannot_tell);
    RUN(bundled_fashion_subset_has_its_counts_and_pixels);
    RUN(bundled_digits_subset_has_its_counts_and_pixels);
    RUN(bundled_digits_train_and_test_are_disjoint);
    RUN(sample_per_class_takes_exactly_k_of_each);
    RUN(sample_per_class_repeats_with_the_seed);
    RUN(sample_per_class_is_uniform);
    RUN(sample_per_class_rejects_a_class_too_small);
    RUN(relabel_maps_a_class_subset_to_zero_based);
    RUN(relabel_rejects_a_class_listed_twice);
    RUN(split_per_class_gives_disjoint_parts_of_the_asked_sizes);
    RUN(split_per_class_repeats_with_the_seed);
    RUN(split_without_a_rest_part_leaves_the_others_out);
    RUN(split_per_class_rejects_bad_requests);
    RUN(split_fraction_holds_out_a_share_of_each_class);
    RUN(batch_stream_gives_full_batches_without_repeats);
    RUN(batch_stream_larger_than_the_set_spans_shuffles);
    RUN(batch_stream_repeats_with_the_seed);
    RUN(batch_normalises_every_byte_exactly);
    RUN(batch_normalises_each_channel_with_its_own_statistics);
    RUN(batch_repeats_grey_into_three_channels);
    RUN(batch_crop_with_padding_matches_a_naive_reference);
    RUN(batch_flip_mirrors_about_half_the_images);
    RUN(batch_without_rng_neither_crops_nor_flips);
    RUN(batch_bilinear_resize_matches_pytorch);
    RUN(batch_resize_then_crop_pads_the_resized_image);
    RUN(batch_rejects_a_tensor_of_the_wrong_shape);
    RUN(batch_rejects_configs_that_do_not_fit);
    RUN(batch_rejects_a_zero_std_in_a_custom_normalisation);
    RUN(image_set_counts_then_loads_a_few_shot_set);
    RUN(batch_from_set_gathers_images_and_labels);
    RUN(few_shot_recipe_on_bundled_digits);
}
