/* libFuzzer target for the IDX reader over memory (images and labels files):
      make fuzz FUZZ_SECONDS=60        (or by hand:)
      clang -g -O1 -fsanitize=fuzzer,address,undefined tests/fuzz/fuzz_idx.c -lm -o fuzz_idx
      ./fuzz_idx -max_total_time=60 tests/fuzz/corpus/idx
   Input: one byte (bit 0: a labels file follows), a 16-bit little-endian length of the images
   file, the images file, then the labels file. Any input must open or fail with a status; a
   data set that opens must read every image, its labels and a class count without a fault. */
#define DTNH_IMPLEMENTATION
#include "../../dtnh.h"
#include "../../dtnh_nn.h"

#define FUZZ_PIXELS (1 << 20)
#define FUZZ_LABELS (1 << 16)

static unsigned char fuzz_pixels[FUZZ_PIXELS];
static int fuzz_labels[FUZZ_LABELS];

/* Reads every image that fits the buffers, in two calls so a ranged read is exercised too. */
static void fuzz_read_dataset(dtnh_dataset *ds) {
    int n = ds->count, half;
    if (ds->image_bytes == 0 || ds->image_bytes > FUZZ_PIXELS) return;
    if ((size_t)n > FUZZ_PIXELS / ds->image_bytes) n = (int)(FUZZ_PIXELS / ds->image_bytes);
    if (n > FUZZ_LABELS) n = FUZZ_LABELS;
    half = n / 2;
    dtnh_dataset_read(ds, 0, half, fuzz_pixels, fuzz_labels, NULL);
    dtnh_dataset_read(ds, half, n - half, fuzz_pixels, fuzz_labels, NULL);
    if (ds->count <= FUZZ_LABELS) dtnh_dataset_labels(ds, fuzz_labels, NULL);
    dtnh_dataset_set_classes(ds, 1 + (int)(ds->count % 11), NULL);
    dtnh_dataset_read(ds, ds->count - 1, 1, fuzz_pixels, fuzz_labels, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    dtnh_dataset ds;
    size_t split;
    int with_labels;
    if (size < 3) return 0;
    with_labels = data[0] & 1;
    split = (size_t)data[1] | (size_t)data[2] << 8;
    data += 3;
    size -= 3;
    if (split > size) split = size;
    if (dtnh_idx_open_memory(&ds, data, split, with_labels ? data + split : NULL,
                             with_labels ? size - split : 0, NULL) == DTNH_OK)
        fuzz_read_dataset(&ds);
    dtnh_dataset_close(&ds);
    return 0;
}
