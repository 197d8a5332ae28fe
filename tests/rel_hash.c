/* Prints a hash of the weights, BN statistics and momentum after N steps of the run of
   tests/rel_trainer.h at the size where the kernels go parallel (width 16, 16x16, batch 16;
   seed 21): `make check-determinism` compares it across thread counts and between builds with
   and without OpenMP.      rel_hash [STEPS] */
#define DTNH_IMPLEMENTATION
#include "../dtnh.h"
#include "../dtnh_nn.h"
#include "rel_trainer.h"
#include <stdio.h>

static rel_trainer t;

int main(int argc, char **argv) {
    int steps = argc > 1 ? atoi(argv[1]) : 10, k;
    dtnh_resnet_config c = rel_config_parallel();
    dtnh_error err;
    if (!rel_trainer_open_with(&t, 21, &c)) return 1;
    for (k = 0; k < steps; k++)
        if (rel_trainer_step(&t, &err)) {
            fprintf(stderr, "step %d: %s\n", k, err.msg);
            return 1;
        }
    printf("%016llx after %d steps, %d thread(s)\n", (unsigned long long)rel_trainer_hash(&t), steps, dtnh_threads());
    return 0;
}
