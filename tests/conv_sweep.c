/* conv_sweep: the three convolution passes on thousands of random geometries against the
   double-precision loops of tests/test_conv.c (its conv_case_ok: forward with bias,
   backward-data, backward-weights and the bias gradient, within bounds scaled by each sum's
   magnitude; the work buffer checked for writes past its end). Kernels 1-7 (a third of them
   rectangular), strides 1-3, pads 0-3, inputs 1-30 (rectangular too), 1-70 input and 1-140
   output channels, batches 1-12; work buffers of the exact size, 8 MB and sizes between (where
   the stride-2 and padded paths fit or not); 1 and 2 threads. Session 4's 1x1 stride-2
   padding bug was found this way; `make check-conv-sweep` runs it for the AVX-512, AVX2 and
   portable kernels (part of `make check-all`). A quarter of the geometries are Winograd's (3x3,
   stride 1, pad 1, channels in multiples of 16, dtnh_conv_geom.winograd set).
       conv_sweep [count [seed]]      prints each failure, then "N geometries, M failed"
   Built with tests/runner.c and tests/impl.c. */
#include <stdlib.h>
#include "test_conv.c"

static int rnd_int(dtnh_rng *r, int lo, int hi) { /* lo .. hi */
    return lo + (int)((float)(hi - lo + 1) * dtnh_rng_uniform(r)) % (hi - lo + 1);
}

/* A random geometry (p as geom_from takes it, and g) whose reference loops stay under a few
   seconds; 0 when it is invalid. */
static int random_geometry(dtnh_rng *r, int *p, dtnh_conv_geom *g) {
    p[5] = rnd_int(r, 1, 7);
    p[6] = dtnh_rng_uniform(r) < 0.7f ? p[5] : rnd_int(r, 1, 7);
    p[0] = rnd_int(r, 1, 12);
    p[1] = rnd_int(r, 1, 70);
    p[2] = rnd_int(r, 1, 30);
    p[3] = dtnh_rng_uniform(r) < 0.6f ? p[2] : rnd_int(r, 1, 30);
    p[4] = rnd_int(r, 1, 140);
    p[7] = rnd_int(r, 1, 3);
    p[8] = rnd_int(r, 0, 3);
    if (dtnh_rng_uniform(r) < 0.25f) { /* Winograd's: 3x3 stride 1 pad 1, channels by 16 */
        p[1] = 16 * rnd_int(r, 1, 4);
        p[4] = 16 * rnd_int(r, 1, 8);
        p[5] = p[6] = 3;
        p[7] = p[8] = 1;
    }
    if (!geom_from(g, p)) return 0;
    g->winograd = p[5] == 3 && p[6] == 3 && p[7] == 1 && p[8] == 1 && p[1] % 16 == 0 && p[4] % 16 == 0;
    return (double)w_count(g) * g->n * g->oh * g->ow <= 4e7;
}

int main(int argc, char **argv) {
    int count = argc > 1 ? atoi(argv[1]) : 1000, seed = argc > 2 ? atoi(argv[2]) : 1, tried = 0, bad = 0;
    dtnh_rng r;
    dtnh_rng_seed(&r, (uint64_t)seed);
    while (tried < count) {
        char msg[256] = "";
        int p[9], threads;
        size_t bytes;
        dtnh_conv_geom g;
        if (!random_geometry(&r, p, &g)) continue;
        tried++;
        threads = conv_max_threads() < 2 ? 1 : 1 + tried % 2;
        bytes = tried % 3 == 0 ? 0 : tried % 3 == 1 ? (size_t)8 << 20 : (size_t)(1 + tried % 7) << 18;
        if (bytes && bytes < dtnh_conv_work_bytes(&g, threads)) bytes = 0; /* 0: the exact size */
        if (!conv_case_ok(&g, &r, msg, bytes, threads)) {
            bad++;
            printf("FAIL n %d c_in %d %dx%d c_out %d k %dx%d stride %d pad %d%s, work %zu, %d thread(s): %s\n",
                   p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], g.winograd ? " (Winograd)" : "", bytes,
                   threads, msg);
        }
    }
    printf("%d geometries, %d failed\n", tried, bad);
    return bad != 0;
}
