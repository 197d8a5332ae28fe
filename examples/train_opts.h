/* train_opts.h - dtnh-train's options: the values, their defaults and the cli.h table that
   parses them (examples/cli.h). Apart from the program so that a fuzzer or a test can drive
   the real table. Include cli.h first. */
#ifndef DTNH_TRAIN_OPTS_H
#define DTNH_TRAIN_OPTS_H

#include <string.h>

#define TRAIN_MAX_OPTIONS 64

enum { REG_NONE, REG_L2, REG_L2SP, REG_FM, REG_DELTA, REG_AT };
enum { MODE_OFF, MODE_GLOBAL, MODE_PER_TENSOR };
enum { OPT_SGD, OPT_MOMENTUM, OPT_ADAM };
enum { FREEZE_NONE, FREEZE_STEM, FREEZE_LAYER1, FREEZE_LAYER2, FREEZE_LAYER3, FREEZE_BACKBONE, FREEZE_KERNELS };
enum { STEM_CIFAR, STEM_IMAGENET };

typedef struct train_opts {
    const char *weights, *data, *labels, *test_data, *test_labels, *save, *log, *plot, *mean, *std, *hooks;
    const char *checkpoint, *resume;
    cli_int_list classes, lr_step;
    int shots, val_shots, reg, dtnh, optim, iters, batch, freeze, threads, seed, save_dtype, width, stem,
        in_channels, size, crop_pad, flip, eval_every, head_iters, memory, keep_head, checkpoint_every, test_rest, angles,
        winograd;
    float alpha, beta, lr, momentum, test_fraction;
} train_opts;

/* Fills o (room for TRAIN_MAX_OPTIONS rows) with the options writing into v; returns the count. */
static int train_option_table(cli_option *o, train_opts *v) {
    int n = 0;
#define OPT(name, kind, dest, lo, hi, choices, help)                                                   \
    do {                                                                                               \
        cli_option row = {name, kind, dest, lo, hi, choices, help};                                    \
        o[n++] = row;                                                                                  \
    } while (0)
    OPT("weights", CLI_STRING, &v->weights, 0, 0, NULL, "safetensors source to fine-tune (its network shape is read from it; the head is re-created); none: train from scratch");
    OPT("data", CLI_STRING, &v->data, 0, 0, NULL, "training images: IDX file, CIFAR-10 batch, or a folder of PGM/PPM class folders (required)");
    OPT("labels", CLI_STRING, &v->labels, 0, 0, NULL, "IDX labels of --data");
    OPT("test-data", CLI_STRING, &v->test_data, 0, 0, NULL, "held-out test images, evaluated during and after training");
    OPT("test-labels", CLI_STRING, &v->test_labels, 0, 0, NULL, "IDX labels of --test-data");
    OPT("test-fraction", CLI_FLOAT, &v->test_fraction, 0, 0.95, NULL, "hold out this share of every class of --data as the test set (instead of --test-data)");
    OPT("test-rest", CLI_FLAG, &v->test_rest, 0, 0, NULL, "test on the images of --data that --shots and --val-shots leave (instead of --test-data)");
    OPT("classes", CLI_INT_LIST, &v->classes, 0, 1e6, NULL, "class subset, relabelled 0..k-1 in this order, e.g. 5,6,7,8,9");
    OPT("shots", CLI_INT, &v->shots, 0, 1e8, NULL, "training images per class, drawn with --seed; 0: all");
    OPT("val-shots", CLI_INT, &v->val_shots, 0, 1e8, NULL, "validation images per class, drawn from --data apart from the training ones");
    OPT("reg", CLI_CHOICE, &v->reg, 0, 0, "none|l2|l2sp|fm|delta|at", "regularizer Omega: l2 (weight decay toward 0), l2sp (toward the source), fm (feature maps), delta, at (attention transfer)");
    OPT("dtnh", CLI_CHOICE, &v->dtnh, 0, 0, "off|global|per-tensor", "DTNH step: off = vanilla d = g_J + g_Omega; global = one projection over all parameters; per-tensor");
    OPT("alpha", CLI_FLOAT, &v->alpha, 1e-8, 1e6, NULL, "strength of the regularizer (> 0)");
    OPT("beta", CLI_FLOAT, &v->beta, 1e-8, 1e6, NULL, "L2 on the new head, for l2sp, fm, delta and at (> 0)");
    OPT("optim", CLI_CHOICE, &v->optim, 0, 0, "sgd|momentum|adam", "optimizer (torch.optim semantics)");
    OPT("momentum", CLI_FLOAT, &v->momentum, 0, 0.999, NULL, "momentum of --optim momentum");
    OPT("lr", CLI_FLOAT, &v->lr, 1e-9, 10, NULL, "learning rate");
    OPT("lr-step", CLI_INT_LIST, &v->lr_step, 1, 1e8, NULL, "iterations after which the lr is divided by 10, e.g. 225");
    OPT("iters", CLI_INT, &v->iters, 1, 1e8, NULL, "training iterations (minibatches)");
    OPT("batch", CLI_INT, &v->batch, 2, 4096, NULL, "minibatch size (also the evaluation batch)");
    OPT("freeze", CLI_CHOICE, &v->freeze, 0, 0, "none|stem|layer1|layer2|layer3|backbone|kernels", "frozen up to and including this part (backbone: train the head only; kernels: train BN, biases and head)");
    OPT("threads", CLI_INT, &v->threads, 0, 1024, NULL, "threads; 0: OpenMP's default (OMP_NUM_THREADS)");
    OPT("winograd", CLI_FLAG, &v->winograd, 0, 0, NULL, "3x3 layers by Winograd F(4x4, 3x3) (AVX-512 builds; ignored elsewhere): 1.6-2x faster steps, results that differ in the last bits");
    OPT("seed", CLI_INT, &v->seed, 0, 2147483647, NULL, "seed of the few-shot draw, the minibatches, augmentation and initialisation");
    OPT("save", CLI_STRING, &v->save, 0, 0, NULL, "write the trained weights here (safetensors, torchvision names)");
    OPT("save-dtype", CLI_CHOICE, &v->save_dtype, 0, 0, "f32|f16|bf16", "float type of --save");
    OPT("log", CLI_STRING, &v->log, 0, 0, NULL, "CSV, one row per iteration: J, Omega, cos, projected, norms, Angles 1-4, train acc, lr, test and val loss/acc");
    OPT("plot", CLI_STRING, &v->plot, 0, 0, NULL, "SVG of J and test loss against iterations; Angles 1-4 go beside it as <name>-angles.svg");
    OPT("width", CLI_INT, &v->width, 1, 512, NULL, "from scratch: channels of layer1 (torchvision: 64)");
    OPT("stem", CLI_CHOICE, &v->stem, 0, 0, "cifar|imagenet", "from scratch: cifar = 3x3 conv, no pool; imagenet = 7x7 stride 2 and max-pool");
    OPT("in-channels", CLI_INT, &v->in_channels, 0, 3, NULL, "from scratch: input channels; 0: the images' own (3 with grey images repeats the grey)");
    OPT("size", CLI_INT, &v->size, 0, 4096, NULL, "resize images to size x size (bilinear); 0: their own size");
    OPT("mean", CLI_STRING, &v->mean, 0, 0, NULL, "input = (v/255 - mean)/std: one value, or one per channel (ImageNet: 0.485,0.456,0.406)");
    OPT("std", CLI_STRING, &v->std, 0, 0, NULL, "see --mean (ImageNet: 0.229,0.224,0.225)");
    OPT("crop-pad", CLI_INT, &v->crop_pad, 0, 64, NULL, "random crop after zero padding of this many pixels; 0: none");
    OPT("flip", CLI_FLAG, &v->flip, 0, 0, NULL, "random horizontal flips (wrong for digits)");
    OPT("eval-every", CLI_INT, &v->eval_every, -1, 1e8, NULL, "evaluate test and validation images every N iterations; -1: iters/10; 0: at the end only");
    OPT("angles", CLI_FLAG, &v->angles, 0, 0, NULL, "with --dtnh off and fm, delta or at: back-propagate J and Omega apart to log cos(g_J, g_Omega) and Angles 1-4 (a second backward pass; without it one pass carries both, as plain distillation needs)");
    OPT("hooks", CLI_STRING, &v->hooks, 0, 0, NULL, "layers the fm, delta and at regularizers compare");
    OPT("head-iters", CLI_INT, &v->head_iters, -1, 1e8, NULL, "first train the new head alone this long; -1: 50 for delta (its attention needs a trained head), else 0");
    OPT("keep-head", CLI_FLAG, &v->keep_head, 0, 0, NULL, "keep the source's head when its class count fits (resume a run) instead of re-creating it");
    OPT("checkpoint", CLI_STRING, &v->checkpoint, 0, 0, NULL, "save the whole training state here every --checkpoint-every iterations, atomically (with <path>.log.csv beside it)");
    OPT("checkpoint-every", CLI_INT, &v->checkpoint_every, 0, 1e8, NULL, "iterations between checkpoints; 0: iters/10");
    OPT("resume", CLI_STRING, &v->resume, 0, 0, NULL, "continue the run a --checkpoint file holds (the same options otherwise); the result is bit-identical to an uninterrupted run");
    OPT("memory", CLI_INT, &v->memory, 0, 1e7, NULL, "refuse to run when the arenas need more than this many MiB; 0: no cap");
#undef OPT
    return n;
}

static void train_option_defaults(train_opts *v) {
    memset(v, 0, sizeof *v);
    v->reg = REG_L2SP;
    v->dtnh = MODE_GLOBAL;
    v->alpha = v->beta = 0.01f;
    v->optim = OPT_MOMENTUM;
    v->momentum = 0.9f;
    v->lr = 0.01f;
    v->iters = 300;
    v->batch = 48;
    v->seed = 1;
    v->width = 16;
    v->mean = v->std = "0.5";
    v->eval_every = -1;
    v->hooks = "layer1,layer2,layer3,layer4";
    v->head_iters = -1;
}

#endif
