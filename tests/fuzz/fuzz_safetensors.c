/* libFuzzer target for the safetensors reader and the weights loader:
      clang -g -O1 -fsanitize=fuzzer,address,undefined tests/fuzz/fuzz_safetensors.c -lm -o fuzz_st
      ./fuzz_st -max_total_time=60 tests/fixtures/resnet_w4_weights.safetensors
   Any input must open or fail with a status; what opens must read and load without a fault. */
#define DTNH_IMPLEMENTATION
#include "../../dtnh.h"
#include "../../dtnh_nn.h"
#include <stdlib.h>

static float fuzz_out[1 << 16];
static int64_t fuzz_i64[1 << 13];

static void fuzz_read_all(dtnh_st_file *f) {
    int i;
    for (i = 0; i < f->count; i++) {
        const dtnh_st_entry *e = &f->entries[i];
        dtnh_st_check_finite(f, i, NULL);
        if (e->dtype == DTNH_ST_I64 && e->count <= (1 << 13))
            dtnh_st_read_i64(f, i, fuzz_i64, (size_t)e->count, NULL);
        else if (e->dtype != DTNH_ST_I64 && e->count <= (1 << 16))
            dtnh_st_read_f32(f, i, fuzz_out, (size_t)e->count, NULL);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static dtnh_resnet net;
    static void *net_mem, *scratch_mem;
    static int ready;
    dtnh_arena scratch;
    dtnh_st_file f;
    dtnh_resnet_config cfg;
    if (!ready) { /* a width-4 network to load into, built once */
        dtnh_resnet_plan plan;
        dtnh_arena pa;
        memset(&cfg, 0, sizeof cfg);
        cfg.width = 4;
        cfg.num_classes = 5;
        cfg.height = cfg.width_px = 8;
        cfg.train = DTNH_TRAIN_NONE;
        if (dtnh_resnet_plan_memory(&cfg, 0, &plan, NULL)) abort();
        net_mem = malloc(plan.persistent + 64);
        scratch_mem = malloc(1 << 24);
        dtnh_arena_init(&pa, net_mem, plan.persistent + 64);
        if (dtnh_resnet_init(&net, &cfg, &pa, NULL)) abort();
        ready = 1;
    }
    dtnh_arena_init(&scratch, scratch_mem, 1 << 24);
    if (dtnh_st_open_memory(&f, data, size, &scratch, NULL) != DTNH_OK) return 0;
    fuzz_read_all(&f);
    dtnh_resnet_config_from_st(&f, &cfg, NULL);
    dtnh_resnet_load(&net, &f, NULL, NULL, NULL);
    return 0;
}
