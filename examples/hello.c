/* hello.c - the smallest embedding of dtnh: two static buffers are all the memory, a ResNet-18
   (fresh, or the source checkpoint named by argv[1]) takes ten DTNH(L2-SP) steps on eight
   bundled digits, and prints the loss. From the repository root:
       cc -O2 examples/hello.c -lm -o hello && ./hello data/source-fm04-w16.safetensors */
#define DTNH_IMPLEMENTATION
#include <stdio.h>
#include "../dtnh.h"
#include "../dtnh_nn.h"

#define BATCH 8
static DTNH_ALIGNED(64) unsigned char persistent_mem[16 << 20], step_mem[16 << 20];

static int fail(const dtnh_error *err) {
    fprintf(stderr, "hello: %s\n", err->msg);
    return 1;
}

int main(int argc, char **argv) {
    static dtnh_resnet net;
    static float input[BATCH * 28 * 28], dlogits[BATCH * 10];
    static unsigned char pixels[BATCH * 28 * 28];
    int labels[BATCH], shape[4] = {BATCH, 1, 28, 28}, step;
    dtnh_resnet_config cfg = {0};
    dtnh_arena persistent, steps;
    dtnh_dataset digits;
    dtnh_optim opt;
    dtnh_error err;
    dtnh_tensor x, logits;

    dtnh_arena_init(&persistent, persistent_mem, sizeof persistent_mem);
    dtnh_arena_init(&steps, step_mem, sizeof step_mem);
    cfg.in_channels = 1, cfg.width = 8, cfg.stem = DTNH_STEM_CIFAR; /* a file below says otherwise */
    if (argc > 1 && dtnh_resnet_config_from_file(argv[1], &persistent, &cfg, &err)) return fail(&err);
    cfg.num_classes = 10, cfg.height = cfg.width_px = 28, cfg.max_batch = BATCH;
    cfg.roles = DTNH_ROLE_W | DTNH_ROLE_W_SRC | DTNH_ROLE_G_J; /* weights, source, gradient */
    if (dtnh_resnet_init(&net, &cfg, &persistent, &err)) return fail(&err);
    if (argc > 1) { /* the source's backbone; a new head for our ten digits */
        if (dtnh_resnet_load_file(&net, argv[1], &persistent, NULL, NULL, &err)) return fail(&err);
        dtnh_resnet_init_head(&net, 1);
    }
    dtnh_copy(net.params.total, net.params.w, net.params.w_src); /* L2-SP pulls toward these */
    if (dtnh_optim_init(&opt, NULL, &net.params, &persistent, &err)) return fail(&err); /* SGD */

    if (dtnh_idx_open(&digits, "data/digits-train-images-idx3-ubyte", "data/digits-train-labels-idx1-ubyte", &err) ||
        dtnh_dataset_read(&digits, 0, BATCH, pixels, labels, &err) || dtnh_tensor_view(&x, input, 4, shape, &err) ||
        dtnh_batch_assemble(NULL, pixels, BATCH, 1, 28, 28, NULL, &x, &err)) /* (v/255 - 0.5)/0.5 */
        return fail(&err);
    dtnh_dataset_close(&digits);

    for (step = 1; step <= 10; step++) {
        dtnh_direction_stats st;
        double loss;
        dtnh_arena_reset(&steps, 0);
        if (dtnh_resnet_forward(&net, &x, &steps, &logits, &err) ||
            dtnh_softmax_cross_entropy(BATCH, 10, logits.data, labels, dlogits, &loss, &err) ||
            dtnh_resnet_backward(&net, dlogits, NULL, NULL, 0, &err) || /* g_J into net.params.g_j */
            dtnh_step_l2sp(&opt, NULL, NULL, &net.params, net.params.g_j, &st, &err)) /* DTNH(L2-SP) */
            return fail(&err);
        printf("step %2d  loss %.4f  Omega %.2e  cos(g_J, g_Omega) %+.3f  %s\n", step, loss, st.omega,
               st.cos_j_omega, st.projected ? "projected" : "");
    }
    printf("memory: %zu + %zu bytes\n", dtnh_arena_peak(&persistent), dtnh_arena_peak(&steps));
    return 0;
}
