/* libFuzzer target for the checkpoint loader (dtnh_checkpoint_load over memory): the metadata
   numbers, the optimizer layout, the stream order and every tensor of a width-1 ResNet-18:
      clang -g -O1 -fsanitize=fuzzer,address,undefined tests/fuzz/fuzz_checkpoint.c -lm -o fuzz_ckpt
      ./fuzz_ckpt -max_total_time=60 tests/fuzz/corpus/checkpoint
   Any input must load or fail with a status; a failed load must leave the state unchanged.
   The seed is a real checkpoint of the same run, written by this file built with
   -DFUZZ_MAKE_SEED:  cc -DFUZZ_MAKE_SEED tests/fuzz/fuzz_checkpoint.c -lm -o seed && ./seed FILE */
#define DTNH_IMPLEMENTATION
#include "../../dtnh.h"
#include "../../dtnh_nn.h"
#include <stdio.h>
#include <stdlib.h>

typedef struct fuzz_run {
    dtnh_resnet net;
    dtnh_optim opt;
    dtnh_batch_stream stream;
    dtnh_rng rng;
    dtnh_arena scratch;
} fuzz_run;

static fuzz_run fuzz_state;

static void fuzz_checkpoint_of(fuzz_run *r, dtnh_checkpoint *c) {
    memset(c, 0, sizeof *c);
    c->net = &r->net;
    c->with_source = 1;
    c->optim = &r->opt;
    c->stream = &r->stream;
    c->rngs[0] = &r->rng;
    c->rng_names[0] = "augment";
    c->rng_count = 1;
}

/* A width-1 network with Adam (two state vectors), a stream over 10 images; once. */
static void fuzz_setup(void) {
    static int ready;
    dtnh_resnet_config cfg;
    dtnh_optim_config oc;
    dtnh_arena a;
    void *mem;
    if (ready) return;
    memset(&cfg, 0, sizeof cfg);
    cfg.stem = DTNH_STEM_CIFAR;
    cfg.width = 1;
    cfg.num_classes = 3;
    cfg.height = cfg.width_px = 4;
    cfg.max_batch = 2;
    cfg.threads = 1;
    cfg.train = DTNH_TRAIN_LAST_STAGES; /* frozen views: slots without state */
    cfg.roles = DTNH_ROLE_W | DTNH_ROLE_W_SRC | DTNH_ROLE_G_J;
    memset(&oc, 0, sizeof oc);
    oc.kind = DTNH_OPTIM_ADAM;
    mem = malloc(1 << 22);
    dtnh_arena_init(&a, mem, 1 << 22);
    if (dtnh_resnet_init(&fuzz_state.net, &cfg, &a, NULL) ||
        dtnh_optim_init(&fuzz_state.opt, &oc, &fuzz_state.net.params, &a, NULL) ||
        dtnh_batch_stream_init(&fuzz_state.stream, 10, 5, &a, NULL))
        abort();
    dtnh_rng_seed(&fuzz_state.rng, 9);
    dtnh_arena_init(&fuzz_state.scratch, malloc(1 << 22), 1 << 22);
    ready = 1;
}

static uint64_t fuzz_hash(const fuzz_run *r) {
    uint64_t h = 14695981039346656037ull;
    const unsigned char *p = (const unsigned char *)r->net.params.w;
    size_t i, n = r->net.params.total * sizeof(float);
    for (i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
    p = (const unsigned char *)r->opt.m;
    for (i = 0; i < r->opt.state_count * sizeof(float); i++) h = (h ^ p[i]) * 1099511628211ull;
    return h ^ r->rng.state ^ (uint64_t)r->opt.step ^ (uint64_t)r->stream.next;
}

#ifndef FUZZ_MAKE_SEED
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    dtnh_checkpoint c;
    dtnh_st_file f;
    uint64_t before;
    fuzz_setup();
    dtnh_arena_reset(&fuzz_state.scratch, 0);
    fuzz_checkpoint_of(&fuzz_state, &c);
    before = fuzz_hash(&fuzz_state);
    if (dtnh_st_open_memory(&f, data, size, &fuzz_state.scratch, NULL) != DTNH_OK) return 0;
    if (dtnh_checkpoint_load(&c, &f, &fuzz_state.scratch, NULL) != DTNH_OK && fuzz_hash(&fuzz_state) != before)
        abort(); /* a refused checkpoint changed the state */
    return 0;
}
#else
/* Writes the seed: the run after a few made-up steps. */
int main(int argc, char **argv) {
    dtnh_checkpoint c;
    static unsigned char buf[1 << 20];
    size_t size, i;
    FILE *fp;
    fuzz_setup();
    for (i = 0; i < fuzz_state.net.params.total; i++) fuzz_state.net.params.w_src[i] = fuzz_state.net.params.w[i];
    for (i = 0; i < fuzz_state.opt.state_count; i++) fuzz_state.opt.m[i] = fuzz_state.opt.v[i] = 0.001f * (float)(i % 13);
    fuzz_state.opt.step = 3;
    fuzz_checkpoint_of(&fuzz_state, &c);
    c.iteration = 3;
    if (argc < 2 || dtnh_checkpoint_save_memory(&c, &fuzz_state.scratch, buf, sizeof buf, &size, NULL)) return 1;
    { /* it must load back, to the same state */
        dtnh_st_file f;
        uint64_t before = fuzz_hash(&fuzz_state);
        dtnh_error err = {DTNH_OK, ""};
        if (dtnh_st_open_memory(&f, buf, size, &fuzz_state.scratch, &err) ||
            dtnh_checkpoint_load(&c, &f, &fuzz_state.scratch, &err) || fuzz_hash(&fuzz_state) != before) {
            fprintf(stderr, "the seed does not load back: %s\n", err.msg);
            return 1;
        }
    }
    fp = fopen(argv[1], "wb");
    if (!fp || fwrite(buf, 1, size, fp) != size) return 1;
    fclose(fp);
    return 0;
}
#endif
