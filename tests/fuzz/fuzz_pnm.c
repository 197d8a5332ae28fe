/* libFuzzer target for the PGM/PPM parser (P2, P3, P5, P6) over memory:
      clang -g -O1 -fsanitize=fuzzer,address,undefined tests/fuzz/fuzz_pnm.c -lm -o fuzz_pnm
      ./fuzz_pnm -max_total_time=60 tests/fuzz/corpus/pnm
   Any input must decode or fail with a status; an image that decodes must go through a batch
   assembly (grey to RGB, bilinear resize, crop, flip) without a fault. */
#define DTNH_IMPLEMENTATION
#include "../../dtnh.h"
#include "../../dtnh_nn.h"

#define FUZZ_PIXELS (1 << 20)

static unsigned char fuzz_pixels[FUZZ_PIXELS];
static float fuzz_batch[3 * 16 * 16];

static void fuzz_assemble(int c, int h, int w, unsigned seed) {
    dtnh_augment_config cfg;
    dtnh_tensor out;
    dtnh_rng rng;
    int shape[4];
    memset(&cfg, 0, sizeof cfg);
    cfg.out_channels = 3;
    cfg.out_height = 1 + (int)(seed % 16);
    cfg.out_width = 1 + (int)(seed / 16 % 16);
    cfg.pad = (int)(seed / 256 % 4);
    cfg.flip = 1;
    dtnh_rng_seed(&rng, seed);
    if (dtnh_batch_shape(&cfg, 1, c, h, w, shape, NULL) == DTNH_OK &&
        dtnh_tensor_view(&out, fuzz_batch, 4, shape, NULL) == DTNH_OK)
        dtnh_batch_assemble(&cfg, fuzz_pixels, 1, c, h, w, &rng, &out, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    int c = 0, h = 0, w = 0;
    if (dtnh_pnm_decode(data, size, NULL, 0, &c, &h, &w, NULL) != DTNH_OK) return 0;
    /* A buffer one byte short must be refused, never overrun. */
    if ((size_t)c * h * w <= FUZZ_PIXELS && (size_t)c * h * w > 0)
        dtnh_pnm_decode(data, size, fuzz_pixels + 1, (size_t)c * h * w - 1, NULL, NULL, NULL, NULL);
    if (dtnh_pnm_decode(data, size, fuzz_pixels, FUZZ_PIXELS, &c, &h, &w, NULL) == DTNH_OK)
        fuzz_assemble(c, h, w, (unsigned)size * 2654435761u >> 20);
    return 0;
}
