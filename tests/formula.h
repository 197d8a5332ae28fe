/* The closed-form weights and inputs of tools/gen_fixtures.py (its docstring has the formula),
   shared by the tests that compare with PyTorch fixtures. Element i of the k-th state_dict
   tensor, computed in double and rounded once to float, as the Python side does. */
#ifndef DTNH_TEST_FORMULA_H
#define DTNH_TEST_FORMULA_H
#include <math.h>
#include <stdint.h>
#include <string.h>
#include "../dtnh_nn.h"

/* lowbias32 of (i * 0x9E3779B1 + (k + 1) * 0x85EBCA77) mod 2^32. */
static inline uint32_t formula_hash(size_t i, int k) {
    uint32_t x = (uint32_t)i * 0x9E3779B1u + (uint32_t)(k + 1) * 0x85EBCA77u;
    x ^= x >> 16;
    x *= 0x7FEB352Du;
    x ^= x >> 15;
    x *= 0x846CA68Bu;
    x ^= x >> 16;
    return x;
}

/* u(i, k) in [-1, 1), exact in float. */
static inline double formula_u(size_t i, int k) {
    return (double)(formula_hash(i, k) >> 8) * (1.0 / 8388608.0) - 1.0;
}

static inline int formula_ends_with(const char *s, const char *tail) {
    size_t n = strlen(s), m = strlen(tail);
    return n >= m && strcmp(s + n - m, tail) == 0;
}

/* Element i of state tensor k (e names and shapes it). One operation per statement, so no
   compiler fuses a multiply-add that Python rounds twice. */
static inline float formula_value(const dtnh_state_entry *e, size_t i, int k) {
    double u = formula_u(i, k), t;
    if (strcmp(e->name, "fc.weight") == 0) return (float)(u / sqrt((double)e->shape[1]));
    if (formula_ends_with(e->name, ".bias") || formula_ends_with(e->name, "running_mean")) {
        t = 0.1 * u;
        return (float)t;
    }
    if (e->ndim == 4) {
        t = sqrt(6.0 / ((double)e->shape[1] * e->shape[2] * e->shape[3]));
        return (float)(u * t);
    }
    if (formula_ends_with(e->name, "running_var")) {
        t = 0.5 * u;
        return (float)(1.0 + t);
    }
    t = 0.25 * u; /* BN weight */
    return (float)(0.7 + t);
}

/* Every parameter and buffer of the network from the formula, tensor k taking key k + key
   (key 0 is the fixtures' network); num_batches_tracked 0. */
static inline void formula_fill(dtnh_resnet *net, int key) {
    int k;
    for (k = 0; k < dtnh_resnet_state_count(net); k++) {
        dtnh_state_entry e;
        size_t i;
        dtnh_resnet_state_entry(net, k, &e, NULL);
        if (e.i64) e.i64[0] = 0;
        else
            for (i = 0; i < e.count; i++) e.f32[i] = formula_value(&e, i, k + key);
    }
}

#endif
