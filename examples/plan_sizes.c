/* plan_sizes.c - prints the arena sizes of common ResNet-18 configurations as a Markdown
   table (the one in README.md): fine-tuning with SGD momentum and L2-SP (weights, source
   copy, gradient, momentum), all layers trained, and the head alone. */
#define DTNH_IMPLEMENTATION
#include <stdio.h>
#include "../dtnh.h"
#include "../dtnh_nn.h"

typedef struct row {
    const char *what;
    dtnh_stem stem;
    int width, channels, size, batch;
} row;

static double mib(size_t bytes) { return (double)bytes / (1024.0 * 1024.0); }

static int print_row(const row *r, dtnh_train train) {
    dtnh_resnet_config cfg = {0};
    dtnh_resnet_plan plan;
    dtnh_error err;
    cfg.stem = r->stem, cfg.width = r->width, cfg.in_channels = r->channels;
    cfg.height = cfg.width_px = r->size, cfg.max_batch = r->batch, cfg.num_classes = 10;
    cfg.threads = 1, cfg.train = train;
    cfg.roles = DTNH_ROLE_W | DTNH_ROLE_W_SRC | DTNH_ROLE_G_J;
    if (dtnh_resnet_plan_memory(&cfg, 1, &plan, &err)) {
        fprintf(stderr, "plan_sizes: %s\n", err.msg);
        return 1;
    }
    printf("| %s | %s | %.1f | %.1f | %.1f | %.1f |\n", r->what,
           train == DTNH_TRAIN_HEAD ? "head only" : "all", (double)plan.params / 1e6,
           mib(plan.persistent), mib(plan.step_train), mib(plan.persistent + plan.step_train));
    return 0;
}

int main(void) {
    static const row rows[] = {
        {"imagenet stem, width 64, 224x224x3, batch 8", DTNH_STEM_IMAGENET, 64, 3, 224, 8},
        {"imagenet stem, width 64, 224x224x3, batch 32", DTNH_STEM_IMAGENET, 64, 3, 224, 32},
        {"cifar stem, width 64, 32x32x3, batch 48", DTNH_STEM_CIFAR, 64, 3, 32, 48},
        {"cifar stem, width 32, 32x32x3, batch 48", DTNH_STEM_CIFAR, 32, 3, 32, 48},
        {"cifar stem, width 16, 28x28x1, batch 48", DTNH_STEM_CIFAR, 16, 1, 28, 48},
        {"cifar stem, width 16, 28x28x1, batch 8", DTNH_STEM_CIFAR, 16, 1, 28, 8},
    };
    size_t i;
    printf("| configuration (10 classes) | trains | params (M) | persistent MiB | step MiB | total MiB |\n");
    printf("|---|---|---|---|---|---|\n");
    for (i = 0; i < sizeof rows / sizeof rows[0]; i++)
        if (print_row(&rows[i], DTNH_TRAIN_ALL) || print_row(&rows[i], DTNH_TRAIN_HEAD)) return 1;
    return 0;
}
