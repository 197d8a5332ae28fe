/* A bare-metal build of both headers for a Cortex-M7 (`make check-m7`): no file I/O
   (DTNH_NO_STDIO), every byte from static arenas. It plans, builds and runs one DTNH(L2-SP)
   step of a width-4 ResNet-18 whose last stage and head train, on two 8x8 images; main returns
   0 when every call succeeded. Linked with newlib's nosys stubs, so it proves the libraries
   need nothing a bare-metal C library lacks; run it on a board (or QEMU's mps2-an500) to see
   it train. */
#define DTNH_IMPLEMENTATION
#define DTNH_NO_STDIO
#include "../../dtnh.h"
#include "../../dtnh_nn.h"

#define M7_PERSISTENT (688 * 1024)
#define M7_STEP (64 * 1024)

static DTNH_ALIGNED(64) unsigned char m7_persistent[M7_PERSISTENT];
static DTNH_ALIGNED(64) unsigned char m7_step[M7_STEP];
static dtnh_resnet m7_net;
static float m7_x[2 * 3 * 8 * 8];

static dtnh_resnet_config m7_config(void) {
    dtnh_resnet_config c;
    memset(&c, 0, sizeof c);
    c.stem = DTNH_STEM_CIFAR;
    c.width = 4;
    c.num_classes = 5;
    c.height = c.width_px = 8;
    c.max_batch = 2;
    c.threads = 1;
    c.train = DTNH_TRAIN_LAST_STAGES;
    c.train_stages = 1;
    c.roles = DTNH_ROLE_W | DTNH_ROLE_W_SRC | DTNH_ROLE_G_J;
    return c;
}

int main(void) {
    dtnh_resnet_config c = m7_config();
    dtnh_resnet_plan plan;
    dtnh_arena pa, sa;
    dtnh_optim opt;
    dtnh_tensor x, logits;
    dtnh_direction_stats st;
    dtnh_error err;
    float dlogits[2 * 5];
    double loss;
    int labels[2] = {3, 1}, shape[4] = {2, 3, 8, 8}, i;
    if (dtnh_resnet_plan_memory(&c, 1, &plan, &err) || plan.persistent + 64 > M7_PERSISTENT ||
        plan.step_train > M7_STEP)
        return 1;
    dtnh_arena_init(&pa, m7_persistent, sizeof m7_persistent);
    dtnh_arena_init(&sa, m7_step, sizeof m7_step);
    if (dtnh_resnet_init(&m7_net, &c, &pa, &err) || dtnh_optim_init(&opt, NULL, &m7_net.params, &pa, &err))
        return 2;
    dtnh_copy(m7_net.params.total, m7_net.params.w, m7_net.params.w_src);
    for (i = 0; i < 2 * 3 * 8 * 8; i++) m7_x[i] = (float)(i % 7) / 7.0f - 0.5f;
    if (dtnh_tensor_view(&x, m7_x, 4, shape, &err) || dtnh_resnet_forward(&m7_net, &x, &sa, &logits, &err) ||
        dtnh_softmax_cross_entropy(2, 5, logits.data, labels, dlogits, &loss, &err) ||
        dtnh_resnet_backward(&m7_net, dlogits, NULL, NULL, 0, &err) ||
        dtnh_check_step_finite(&m7_net.params, &opt, loss, m7_net.params.g_j, NULL, &err) ||
        dtnh_step_l2sp(&opt, NULL, NULL, &m7_net.params, m7_net.params.g_j, &st, &err))
        return 3;
    return 0;
}
