/* libFuzzer target for the CIFAR-10 binary reader over memory:
      clang -g -O1 -fsanitize=fuzzer,address,undefined tests/fuzz/fuzz_cifar.c -lm -o fuzz_cifar
      ./fuzz_cifar -max_total_time=60 tests/fuzz/corpus/cifar
   Any input must open or fail with a status; a batch that opens must read every record (and
   assemble it into a network batch) without a fault. */
#define DTNH_IMPLEMENTATION
#include "../../dtnh.h"
#include "../../dtnh_nn.h"

#define FUZZ_IMAGES 64

static unsigned char fuzz_pixels[FUZZ_IMAGES * 3072];
static float fuzz_batch[FUZZ_IMAGES * 3072];
static int fuzz_labels[FUZZ_IMAGES];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    dtnh_dataset ds;
    if (dtnh_cifar10_open_memory(&ds, data, size, NULL) == DTNH_OK) {
        int n = ds.count < FUZZ_IMAGES ? ds.count : FUZZ_IMAGES, i, idx[FUZZ_IMAGES];
        for (i = 0; i < n; i++) idx[i] = (i * 7) % ds.count;
        dtnh_dataset_read_indices(&ds, idx, n, fuzz_pixels, fuzz_labels, NULL);
        if (dtnh_dataset_read(&ds, 0, n, fuzz_pixels, fuzz_labels, NULL) == DTNH_OK) {
            dtnh_augment_config cfg;
            dtnh_tensor out;
            dtnh_rng rng;
            int shape[4];
            memset(&cfg, 0, sizeof cfg);
            cfg.pad = 4;
            cfg.flip = 1;
            dtnh_rng_seed(&rng, size);
            if (dtnh_batch_shape(&cfg, n, ds.channels, ds.height, ds.width, shape, NULL) == DTNH_OK &&
                dtnh_tensor_view(&out, fuzz_batch, 4, shape, NULL) == DTNH_OK)
                dtnh_batch_assemble(&cfg, fuzz_pixels, n, ds.channels, ds.height, ds.width, &rng, &out, NULL);
        }
        if (ds.count <= FUZZ_IMAGES) dtnh_dataset_labels(&ds, fuzz_labels, NULL);
    }
    dtnh_dataset_close(&ds);
    return 0;
}
