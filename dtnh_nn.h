/* dtnh_nn.h - v0.1 - public domain (or MIT) - networks for dtnh: layers, ResNet-18,
   transfer regularizers, safetensors weights and checkpoints, data readers

   What fine-tuning on a device needs above the core in dtnh.h: the layers and a ResNet-18
   laid out as torchvision's (so its weights load as they are), trained on two arenas whose
   exact sizes are asked first; the regularizers that tie the model to its source (L2, L2-SP,
   feature maps, DELTA, attention transfer), each writing into g_Omega only, for the DTNH
   step to project; weights and whole training states in safetensors files, saved atomically;
   and readers for IDX, CIFAR-10 and PGM/PPM images with few-shot sampling and augmentation.

   DO THIS
      #define DTNH_IMPLEMENTATION
      #include "dtnh.h"
      #include "dtnh_nn.h"
   in exactly one C or C++ file; every other file includes both as plain headers.

   OPTIONS (define before including; dtnh.h's options apply too)
      DTNH_NO_STDIO       leave out every file reader and writer (the memory variants stay)
      DTNH_NO_DIRENT      leave out the PGM/PPM folder reader (it needs POSIX opendir)
      DTNH_NO_FSYNC       save without fsync (where POSIX fsync is missing)

   EXAMPLE (fine-tune a source with DTNH(L2-SP); error checks left out)
      dtnh_resnet_config cfg = {0};                  // zero means default
      dtnh_resnet_config_from_file("source.safetensors", &scratch, &cfg, &err);
      cfg.num_classes = 5; cfg.height = cfg.width_px = 28; cfg.max_batch = 32;
      cfg.roles = DTNH_ROLE_W | DTNH_ROLE_W_SRC | DTNH_ROLE_G_J;
      dtnh_resnet_plan_memory(&cfg, 1, &plan, &err);  // exact bytes; 1: momentum's vector
      dtnh_arena_init(&pa, persistent_mem, plan.persistent);   // your memory, that size
      dtnh_arena_init(&sa, step_mem, plan.step_train);
      dtnh_resnet_init(&net, &cfg, &pa, &err);
      dtnh_resnet_load_file(&net, "source.safetensors", &sa, NULL, &report, &err);
      dtnh_copy(net.params.total, net.params.w, net.params.w_src);   // w_s for L2-SP
      dtnh_optim_init(&opt, &optim_cfg, &net.params, &pa, &err);
      for (;;) {
          dtnh_arena_reset(&sa, 0);
          dtnh_resnet_forward(&net, &x, &sa, &logits, &err);
          dtnh_softmax_cross_entropy(n, 5, logits.data, labels, dlogits, &loss, &err);
          dtnh_resnet_backward(&net, dlogits, NULL, NULL, 0, &err);   // g_J
          dtnh_step_l2sp(&opt, NULL, NULL, &net.params, net.params.g_j, &stats, &err);
      }
      dtnh_resnet_save(&net, "tuned.safetensors", &err);   // loads into torchvision

   SPEED: cfg.winograd = 1 (before plan_memory) runs the 3x3 layers by Winograd F(4x4, 3x3)
   in AVX-512 builds: training steps 1.6-2.0x faster here, at 4-15% more arena, results that
   differ from the direct kernel's in the last bits (see dtnh.h).

   LICENSE: see the end of the file.
*/
#ifndef DTNH_NN_H
#define DTNH_NN_H

#include "dtnh.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ============================================================================================
   Layers
   Forward and backward of the layers ResNet-18 is made of, on NCHW float batches. These are
   raw kernels: no argument checks, the caller (the network below) has checked the shapes.
   Convolutions are dtnh_conv2d_* in dtnh.h. Parameter gradients are added to what the
   output arrays hold when `accumulate` is non-zero, else they overwrite it.
   ============================================================================================ */

#define DTNH_BN_EPS 1e-5f
#define DTNH_BN_MOMENTUM 0.1f

/* Batch statistics per channel of x[n][c][hw]: mean, invstd = 1/sqrt(biased var + eps), and
   the unbiased variance (for the running statistics; may be NULL). Sums in double, in an order
   that does not depend on the thread count. */
DTNHDEF void dtnh_batchnorm_stats(int n, int c, int hw, const float *x, float eps, float *mean,
                                  float *invstd, float *var_unbiased);
/* invstd = 1/sqrt(running_var + eps): the statistics evaluation mode normalises with. */
DTNHDEF void dtnh_batchnorm_eval_invstd(int c, const float *running_var, float eps, float *invstd);
/* running = (1 - momentum) * running + momentum * batch, as torch.nn.BatchNorm2d, and the
   batch counter (may be NULL) goes up by one. */
DTNHDEF void dtnh_batchnorm_update_running(int c, const float *batch_mean,
                                           const float *batch_var_unbiased, float momentum,
                                           float *running_mean, float *running_var,
                                           int64_t *num_batches_tracked);
/* y = gamma * (x - mean) * invstd + beta, then max(0, .) when relu is non-zero. */
DTNHDEF void dtnh_batchnorm_apply(int n, int c, int hw, const float *x, const float *mean,
                                  const float *invstd, const float *gamma, const float *beta,
                                  int relu, float *y);
/* Backward of dtnh_batchnorm_apply. y (may be NULL) is the forward output, needed only with a
   fused ReLU, whose mask it gives. batch_stats: mean and invstd came from this batch (training
   mode), so the gradient flows through them too; else they are constants (evaluation mode,
   frozen statistics). dx (may be NULL, may be dy itself) is overwritten; dgamma and dbeta (each
   may be NULL) follow `accumulate`. x may be NULL only when neither dgamma nor batch_stats
   needs it. */
DTNHDEF void dtnh_batchnorm_backward(int n, int c, int hw, const float *x, const float *y,
                                     const float *dy, const float *mean, const float *invstd,
                                     const float *gamma, int batch_stats, float *dx,
                                     float *dgamma, float *dbeta, int accumulate);

/* y = max(0, x), NaN kept (as PyTorch: a fault reaches the loss); dx = dy where y > 0, else 0
   (dx may be dy). */
DTNHDEF void dtnh_relu_forward(size_t count, const float *x, float *y);
DTNHDEF void dtnh_relu_backward(size_t count, const float *y, const float *dy, float *dx);

/* Max pooling with a k x k window, PyTorch's floor mode: oh = (h + 2*pad - k)/stride + 1.
   Padding counts as -inf; a NaN wins its window. Backward sends each output gradient to the
   first largest input of its window, as PyTorch does; dx is overwritten. */
DTNHDEF void dtnh_maxpool_forward(int n, int c, int h, int w, int k, int stride, int pad,
                                  const float *x, float *y);
DTNHDEF void dtnh_maxpool_backward(int n, int c, int h, int w, int k, int stride, int pad,
                                   const float *x, const float *dy, float *dx);

/* Global average pooling: y[n][c] = mean over hw of x[n][c]; dx (overwritten) = dy / hw. */
DTNHDEF void dtnh_avgpool_forward(int n, int c, int hw, const float *x, float *y);
DTNHDEF void dtnh_avgpool_backward(int n, int c, int hw, const float *dy, float *dx);

/* Linear layer as nn.Linear: y[n][out] = x[n][in] * w[out][in]^T + b (b may be NULL).
   work: at least dtnh_gemm_work_bytes(work->threads). backward_data overwrites dx when
   accumulate is 0 and adds to it otherwise; db may be NULL. */
DTNHDEF void dtnh_linear_forward(int n, int in, int out, const float *x, const float *w,
                                 const float *b, float *y, const dtnh_work *work);
DTNHDEF void dtnh_linear_backward_data(int n, int in, int out, const float *dy, const float *w,
                                       float *dx, int accumulate, const dtnh_work *work);
DTNHDEF void dtnh_linear_backward_weights(int n, int in, int out, const float *x, const float *dy,
                                          float *dw, float *db, int accumulate,
                                          const dtnh_work *work);

/* Softmax cross-entropy averaged over the batch (nn.CrossEntropyLoss), computed stably in
   double. dlogits (may be NULL) gets the gradient of that mean: (softmax - onehot) / n.
   A label outside [0, classes) or a non-finite logit: an error, nothing written. */
DTNHDEF dtnh_status dtnh_softmax_cross_entropy(int n, int classes, const float *logits,
                                               const int *labels, float *dlogits, double *loss,
                                               dtnh_error *err);

/* ============================================================================================
   BatchNorm buffers
   Running statistics are state, not parameters: they live outside the flat parameter vectors,
   in a store of their own with torchvision's names, so weights files can load and save them.
   ============================================================================================ */

typedef struct dtnh_buffer_view {
    char name[DTNH_NAME_SIZE]; /* "bn1.running_mean", "layer1.0.bn1.num_batches_tracked" */
    int ndim;                  /* 1, or 0 for the num_batches_tracked scalar */
    int shape[DTNH_MAX_DIMS];
    int is_count;  /* 1: an int64 counter in `counts`; 0: floats in `values` */
    size_t offset; /* first element in values (or counts) */
    size_t count;
} dtnh_buffer_view;

typedef struct dtnh_buffers {
    dtnh_buffer_view *views; /* NULL in a counting build */
    int count, capacity;
    float *values;   /* running means and variances, back to back */
    size_t total;    /* floats in values */
    int64_t *counts; /* one num_batches_tracked per BatchNorm */
    size_t count_total;
} dtnh_buffers;

/* Index of the buffer called name, or -1. */
DTNHDEF int dtnh_buffers_find(const dtnh_buffers *b, const char *name);

/* ============================================================================================
   ResNet-18
   torchvision's resnet18 (BasicBlocks [2,2,2,2]) with a width, a stem and a head to choose,
   trained on arenas: one persistent (weights, gradients, buffers, the plan) and one per step
   (activations, scratch), whose exact sizes dtnh_resnet_plan_memory gives beforehand.

      dtnh_resnet_config cfg = {0};        // zero means default
      cfg.stem = DTNH_STEM_CIFAR; cfg.num_classes = 10; cfg.max_batch = 32;
      dtnh_resnet_plan plan;
      dtnh_resnet_plan_memory(&cfg, 1, &plan, &err);           // 1: SGD momentum's state
      dtnh_arena_init(&pa, persistent_mem, plan.persistent);
      dtnh_arena_init(&sa, step_mem, plan.step_train);
      dtnh_resnet_init(&net, &cfg, &pa, &err);                 // then load weights, optim_init
      for (;;) {                                               // x: [n, 3, 32, 32]
          dtnh_arena_reset(&sa, 0);
          dtnh_resnet_forward(&net, &x, &sa, &logits, &err);
          dtnh_softmax_cross_entropy(n, 10, logits.data, labels, dlogits, &loss, &err);
          dtnh_resnet_backward(&net, dlogits, NULL, net.params.g_j, 0, &err);
          dtnh_optim_step(&opt, &net.params, net.params.g_j, &err);
      }
   ============================================================================================ */

typedef enum dtnh_stem {
    DTNH_STEM_DEFAULT = 0,
    DTNH_STEM_IMAGENET, /* 7x7 stride 2 pad 3 conv, BN, ReLU, 3x3 stride 2 max-pool */
    DTNH_STEM_CIFAR     /* 3x3 stride 1 pad 1 conv, BN, ReLU, no pool */
} dtnh_stem;

/* What trains. Layers below the first trainable parameter keep no activations and compute no
   input gradient, which is where the memory of on-device training is won. */
typedef enum dtnh_train {
    DTNH_TRAIN_DEFAULT = 0,
    DTNH_TRAIN_ALL,         /* every parameter */
    DTNH_TRAIN_LAST_STAGES, /* the last `train_stages` of layer1..layer4, and the head */
    DTNH_TRAIN_HEAD,        /* fc only: the backbone is a fixed feature extractor */
    DTNH_TRAIN_BN_BIAS,     /* BN affine, biases and the head (conv kernels frozen) */
    DTNH_TRAIN_NONE         /* inference only: no gradients, no training forward */
} dtnh_train;

/* Which statistics BatchNorm uses in a training forward. */
typedef enum dtnh_bn_stats {
    DTNH_BN_STATS_DEFAULT = 0,
    DTNH_BN_STATS_AUTO,   /* batch statistics, but frozen below the first trainable layer */
    DTNH_BN_STATS_BATCH,  /* batch statistics everywhere: model.train() in PyTorch */
    DTNH_BN_STATS_FROZEN  /* running statistics everywhere, never updated */
} dtnh_bn_stats;

#define DTNH_RESNET_MAX_HOOKS 8

/* Zero means default everywhere; dtnh_resnet_config_def fills the defaults in. */
typedef struct dtnh_resnet_config {
    int in_channels;      /* 3 */
    int num_classes;      /* 1000 */
    int width;            /* channels of layer1: 64 (torchvision); 16 or 32 for small devices */
    dtnh_stem stem;       /* DTNH_STEM_IMAGENET */
    int height, width_px; /* input size: 224 x 224 (imagenet stem), 32 x 32 (cifar stem) */
    int max_batch;        /* 1 */
    int threads;          /* threads the kernels' scratch is sized for: dtnh_threads() */
    dtnh_train train;     /* DTNH_TRAIN_ALL */
    int train_stages;     /* DTNH_TRAIN_LAST_STAGES: 1..4, default 1 */
    dtnh_bn_stats bn_stats; /* DTNH_BN_STATS_AUTO */
    unsigned roles;       /* flat vectors (DTNH_ROLE_*): W | G_J, or W when train is NONE */
    int external_weights; /* 1: no W vector; forward reads the one dtnh_resnet_use_weights
                             names (a teacher reading the target's w_src) */
    int single_backward;  /* 1: one backward per forward (the plain training step): backward
                             reuses the forward's memory as it goes, for a smaller step arena */
    int keep_activations; /* 1: keep every activation backward reads, as PyTorch does. 0:
                             backward recomputes the BN+ReLU outputs and the outputs of blocks
                             without downsample from the BN inputs it keeps anyway (an
                             elementwise pass or two each, the same bits): a smaller step arena */
    int winograd;         /* 1: 3x3 stride-1 convolutions with channels in multiples of 16 run
                             Winograd F(4x4, 3x3) in all three passes, in AVX-512 builds
                             (1.6-3.5x faster there; results differ from the direct kernel's
                             in the last bits; a larger work buffer). 0: the direct kernel */
    /* Layers whose outputs are exposed after a forward and take gradients in backward, by
       torchvision module name: "layer1".."layer4", "layer2.1", "conv1", "bn1", "relu",
       "maxpool", "layer3.0.bn2", "layer2.0.downsample", "avgpool", "fc". A block's "relu"
       ("layer1.0.relu") is the block's output, as PyTorch's hook fires last there. */
    const char *hooks[DTNH_RESNET_MAX_HOOKS];
    int hook_count;
    uint64_t seed; /* weight initialisation */
} dtnh_resnet_config;

DTNHDEF dtnh_resnet_config dtnh_resnet_config_def(const dtnh_resnet_config *cfg);

/* Internal: one layer of the network and one activation tensor between layers. */
#define DTNH__RESNET_MAX_NODES 80
#define DTNH__RESNET_MAX_STATE 128

typedef struct dtnh__rnode {
    char name[32];  /* torchvision module name: "layer1.0.bn1" */
    char alias[16]; /* a second name of the output ("relu" for the stem's fused BN) */
    int kind, relu, stage; /* dtnh__NODE_*; a fused ReLU; 0 stem, 1..4 layer1..4, 5 head */
    int in[2], out;        /* value indices, -1 for none */
    int wview, bufview;    /* first parameter view and first buffer view, -1 for none */
    size_t woff, wcount, boff, bcount; /* weight and bias in the flat vectors */
    size_t buf_off;        /* BN: running_mean at buffers.values + buf_off, running_var next */
    int count_index;       /* BN: its num_batches_tracked in buffers.counts */
    int c_out, k, stride, pad; /* convolution and max-pool geometry */
    int train_w, train_b, frozen_stats;
    int stats_off;      /* BN: mean, invstd, unbiased var at stats + stats_off (3 x C) */
    int has_temp;       /* conv: its input gradient is added through a temporary */
    size_t temp_offset; /* per-sample floats into the training block */
} dtnh__rnode;

typedef struct dtnh__rvalue {
    int c, h, w;
    int producer, consumers, last_consumer;
    int needs_grad, kept, hook; /* kept: backward reads it */
    int last_reader;            /* kept: the node whose backward reads it last (lowest index) */
    int first_reader;           /* kept: the node whose backward reads it first (highest index) */
    int recompute;              /* kept, not stored: backward recomputes it (DTNH__REDO_*) */
    size_t offset[2];   /* per-sample floats into the step block: [0] training, [1] inference */
    size_t grad_offset; /* per-sample floats: its gradient in the training block */
    size_t bwd_offset;  /* recompute: per-sample floats of the recomputed copy (training block) */
} dtnh__rvalue;

typedef struct dtnh_resnet {
    dtnh_resnet_config cfg; /* with the defaults filled in */
    dtnh_params params;     /* views in torchvision order; w, w_src, g_j, g_omega per roles */
    dtnh_buffers buffers;   /* BN running statistics */
    const float *weights;   /* what forward reads: params.w, or an external vector */
    dtnh__rnode nodes[DTNH__RESNET_MAX_NODES];
    dtnh__rvalue values[DTNH__RESNET_MAX_NODES + 1]; /* value 0 is the input */
    int node_count, value_count, logits_value;
    int hook_value[DTNH_RESNET_MAX_HOOKS];
    char hook_name[DTNH_RESNET_MAX_HOOKS][DTNH_NAME_SIZE];
    int state_kind[DTNH__RESNET_MAX_STATE]; /* the state_dict order: 0 param, 1 buffer */
    int state_index[DTNH__RESNET_MAX_STATE];
    int state_count;
    size_t block_floats[2]; /* per-sample floats of the step block: training, inference */
    size_t kept_floats;     /* per-sample floats of the activations backward reads and finds stored */
    size_t recomputed_floats; /* per-sample floats of those it recomputes instead */
    int stats_floats;       /* floats of the batch statistics a training forward saves */
    size_t mem_structure, mem_weights, mem_source, mem_gradients, mem_buffers;
    /* The last forward: which kind, its batch, where its memory lies. */
    int train_n, train_spent, infer_n;
    float *train_block, *train_stats, *infer_block, *infer_stats;
    const float *train_input;
    dtnh_work work;
    float *hook_data[DTNH_RESNET_MAX_HOOKS];
    int hook_n;
} dtnh_resnet;

/* Exact bytes for one configuration. Persistent: structure (views), weights (w), gradients
   (g_j, g_omega as the roles ask), source copy (w_src), BN buffers, optimizer state (the
   extra flat vectors asked for, over the trainable parameters). Step: a training step
   (forward and backward) and an inference forward at max_batch; activations are the tensors
   backward reads that are stored through the step, scratch the rest (transient tensors,
   gradient buffers, kernel work, the recomputed activations). activations_recomputed: the
   tensors backward reads but recomputes (keep_activations = 0), what storing them would add to
   activations. */
typedef struct dtnh_resnet_plan {
    size_t structure, weights, gradients, source_copy, buffers, optimizer_state;
    size_t persistent;
    size_t activations, scratch;
    size_t activations_recomputed;
    size_t step_train; /* activations + scratch */
    size_t step_infer;
    size_t params;           /* parameter count */
    size_t trainable_params; /* of which trainable */
} dtnh_resnet_plan;

/* Sizes for cfg, through the same code that builds and runs (on counting arenas): a build on
   a persistent arena of `persistent` bytes followed by dtnh_optim_init with optim_vectors
   state vectors (0: SGD, 1: SGD with momentum or Nesterov, 2: Adam or AdamW;
   DTNH_PLAN_NO_OPTIMIZER: no dtnh_optim), and steps on a step arena of step_train (or
   step_infer) bytes, cannot run out. The network struct is large (~20 KB): it lives on the
   stack here. */
#define DTNH_PLAN_NO_OPTIMIZER (-1)
DTNHDEF dtnh_status dtnh_resnet_plan_memory(const dtnh_resnet_config *cfg, int optim_vectors,
                                            dtnh_resnet_plan *plan, dtnh_error *err);

/* Builds the network on the persistent arena and initialises the weights as torchvision does
   (kaiming normal fan_out convolutions, BN 1 and 0, nn.Linear's uniform head), seeded by
   cfg->seed. A counting arena counts instead. */
DTNHDEF dtnh_status dtnh_resnet_init(dtnh_resnet *net, const dtnh_resnet_config *cfg,
                                     dtnh_arena *persistent, dtnh_error *err);
/* Re-initialises all weights and buffers, or only the head (fc), from seed. */
DTNHDEF void dtnh_resnet_init_weights(dtnh_resnet *net, uint64_t seed);
DTNHDEF void dtnh_resnet_init_head(dtnh_resnet *net, uint64_t seed);
/* Changes what trains (and so the step plan, which may grow: size the step arena for the
   largest mode you use). */
DTNHDEF dtnh_status dtnh_resnet_set_train(dtnh_resnet *net, dtnh_train train, int stages,
                                          dtnh_error *err);
/* Forward reads w (count: params.total) from now on: an external, read-only vector. */
DTNHDEF dtnh_status dtnh_resnet_use_weights(dtnh_resnet *net, const float *w, dtnh_error *err);
/* Copies BN running statistics and counters from src (same configuration). */
DTNHDEF dtnh_status dtnh_resnet_copy_buffers(dtnh_resnet *dst, const dtnh_resnet *src,
                                             dtnh_error *err);

/* Training forward of x [n, in_channels, height, width_px], n <= max_batch: BN layers use
   batch statistics (and update the running ones) unless frozen; the tensors backward needs
   are kept in the step arena. logits gets a view [n, num_classes] into the step arena. x must
   stay unchanged, and the step arena must not be reset, until the last backward of the step.
   A counting step arena counts and computes nothing. */
DTNHDEF dtnh_status dtnh_resnet_forward(dtnh_resnet *net, const dtnh_tensor *x,
                                        dtnh_arena *step, dtnh_tensor *logits, dtnh_error *err);
/* Evaluation forward: running statistics, nothing kept but the logits and the hooks. */
DTNHDEF dtnh_status dtnh_resnet_infer(dtnh_resnet *net, const dtnh_tensor *x, dtnh_arena *step,
                                      dtnh_tensor *logits, dtnh_error *err);
/* The same with channel `channel` of hook `hook`'s output zeroed before the layers above
   read it (DELTA's filter attention). */
DTNHDEF dtnh_status dtnh_resnet_infer_masked(dtnh_resnet *net, const dtnh_tensor *x, int hook,
                                             int channel, dtnh_arena *step, dtnh_tensor *logits,
                                             dtnh_error *err);
/* The logits dtnh_resnet_infer_masked would give for the input of the last dtnh_resnet_infer
   on this network, at the cost of the layers above the hook only: it re-runs them from that
   inference's tensors (the step arena must be as that call left it) with the channel zeroed,
   then restores the channel. Call it for every channel after one inference. Overwrites the
   logits and any hook above, which then hold the masked run's values. */
DTNHDEF dtnh_status dtnh_resnet_rerun_masked(dtnh_resnet *net, int hook, int channel,
                                             dtnh_arena *step, dtnh_tensor *logits,
                                             dtnh_error *err);
/* Backward of the last training forward. Gradients enter at the logits (dlogits [n, classes],
   may be NULL) and at the hooks (hook_grads[i] [n, C, H, W] for hook i, may be NULL, as may
   the array); only layers at or below the deepest entry point run. Parameter gradients go to
   param_grad (a flat vector over params; NULL means params.g_j): added to it when accumulate
   is non-zero, else every trainable view is overwritten (zero where no gradient reached).
   Frozen views are never written. Reads the forward's tensors without changing them, so it
   may run several times after one forward (g_J, then g_Omega). */
DTNHDEF dtnh_status dtnh_resnet_backward(dtnh_resnet *net, const float *dlogits,
                                         const float *const *hook_grads, float *param_grad,
                                         int accumulate, dtnh_error *err);

/* Index of the hook called name (as configured), or -1. */
DTNHDEF int dtnh_resnet_hook_index(const dtnh_resnet *net, const char *name);
/* Hook i's output shape per sample, known from the build (no forward needed). */
DTNHDEF dtnh_status dtnh_resnet_hook_shape(const dtnh_resnet *net, int hook, int *c, int *h,
                                           int *w, dtnh_error *err);
/* Hook i's output of the last forward, [n, C, H, W] (data NULL before any forward). */
DTNHDEF dtnh_status dtnh_resnet_hook_output(const dtnh_resnet *net, int hook, dtnh_tensor *out,
                                            dtnh_error *err);

/* The state_dict in torchvision's order: parameters and buffers interleaved. */
typedef struct dtnh_state_entry {
    const char *name;
    int ndim; /* 0 for num_batches_tracked */
    int shape[DTNH_MAX_DIMS];
    size_t count;
    float *f32;   /* the values (params.w for a parameter), or NULL */
    int64_t *i64; /* num_batches_tracked, or NULL */
    int param;    /* index in params.views, or -1 */
    int buffer;   /* index in buffers.views, or -1 */
} dtnh_state_entry;

DTNHDEF int dtnh_resnet_state_count(const dtnh_resnet *net);
DTNHDEF dtnh_status dtnh_resnet_state_entry(const dtnh_resnet *net, int i, dtnh_state_entry *e,
                                            dtnh_error *err);
/* Index in the state_dict order of the entry called name, or -1. */
DTNHDEF int dtnh_resnet_state_find(const dtnh_resnet *net, const char *name);

/* FLOPs (2 per multiply-add) of the convolutions and the linear layer in one forward at batch
   n, and in one training step (forward, then the weight gradients of trainable layers and the
   input gradients that flow), as configured now. For throughput reports. */
DTNHDEF double dtnh_resnet_forward_flops(const dtnh_resnet *net, int n);
DTNHDEF double dtnh_resnet_step_flops(const dtnh_resnet *net, int n);
/* ============================================================================================
   Safetensors
   The weights format of the Hugging Face `safetensors` library: an 8-byte little-endian
   header length N, N bytes of JSON naming each tensor (dtype, shape, byte offsets), then the
   raw little-endian data. Read without malloc: the header lives in caller arena scratch.
   ============================================================================================ */

/* The dtypes read and written. F16 and BF16 are widened to float on reading and narrowed
   (round to nearest even) on writing; I64 holds BatchNorm's num_batches_tracked. */
typedef enum dtnh_st_dtype {
    DTNH_ST_F32 = 0,
    DTNH_ST_F16 = 1,
    DTNH_ST_BF16 = 2,
    DTNH_ST_I64 = 3
} dtnh_st_dtype;

#define DTNH_ST_MAX_DIMS 8
/* The largest header accepted, as in the reference implementation. */
#define DTNH_ST_MAX_HEADER 100000000u

/* One tensor of an opened file. */
typedef struct dtnh_st_entry {
    const char *name; /* NUL-terminated, inside the header scratch */
    dtnh_st_dtype dtype;
    int ndim; /* 0 for a scalar */
    uint64_t shape[DTNH_ST_MAX_DIMS];
    uint64_t count;      /* elements: the product of the shape */
    uint64_t begin, end; /* bytes, relative to the start of the data section */
} dtnh_st_entry;

/* One "__metadata__" pair (string to string). */
typedef struct dtnh_st_meta {
    const char *key, *value;
} dtnh_st_meta;

/* An opened file: the parsed and fully validated header, and where the data comes from. */
typedef struct dtnh_st_file {
    dtnh_st_entry *entries; /* in the order of the header */
    int count;
    dtnh_st_meta *meta;
    int meta_count;
    uint64_t header_bytes; /* N */
    uint64_t data_offset;  /* 8 + N: the start of the data section in the file */
    uint64_t data_bytes;   /* the length of the data section */
    const unsigned char *mem; /* the whole file, when opened from memory */
    void *fp;                 /* the FILE *, when opened from a path */
} dtnh_st_file;

DTNHDEF const char *dtnh_st_dtype_name(dtnh_st_dtype t);
DTNHDEF size_t dtnh_st_dtype_size(dtnh_st_dtype t);

/* Parses and checks the header of a file held in memory (data must outlive f). The header is
   copied into scratch and parsed there. Every check happens here: a file that opens has
   well-formed JSON, supported dtypes, unique names, and offsets that agree with dtype x shape
   and tile the data section exactly (no overlap, no gap), as the reference implementation
   demands. With a counting scratch arena only the scratch size is counted (f->count is 0). */
DTNHDEF dtnh_status dtnh_st_open_memory(dtnh_st_file *f, const void *data, size_t size,
                                        dtnh_arena *scratch, dtnh_error *err);
/* Index of the tensor called name, or -1. */
DTNHDEF int dtnh_st_find(const dtnh_st_file *f, const char *name);
/* The metadata value for key, or NULL. */
DTNHDEF const char *dtnh_st_meta_get(const dtnh_st_file *f, const char *key);
/* 1 when entry index has exactly this shape (ndim dimensions), else 0. */
DTNHDEF int dtnh_st_shape_is(const dtnh_st_file *f, int index, int ndim, const int *shape);
/* Reads tensor index (F32, F16 or BF16) as float into out, which holds count values, count
   being the tensor's element count. */
DTNHDEF dtnh_status dtnh_st_read_f32(dtnh_st_file *f, int index, float *out, size_t count,
                                     dtnh_error *err);
/* Reads tensor index (I64) into out, which holds count values. */
DTNHDEF dtnh_status dtnh_st_read_i64(dtnh_st_file *f, int index, int64_t *out, size_t count,
                                     dtnh_error *err);

/* A tensor to write: f32 for F32, F16 and BF16 (narrowed on the way), i64 for I64. */
typedef struct dtnh_st_tensor {
    const char *name;
    dtnh_st_dtype dtype;
    int ndim; /* 0..DTNH_ST_MAX_DIMS */
    int shape[DTNH_ST_MAX_DIMS];
    const float *f32;
    const int64_t *i64;
} dtnh_st_tensor;

/* Writes a safetensors file into buf (capacity bytes): the tensors in the order given, the
   header padded with spaces to a multiple of 8 as the reference writer does. *size gets the
   file's length; buf NULL only computes it. */
DTNHDEF dtnh_status dtnh_st_write_memory(const dtnh_st_tensor *tensors, int count,
                                         const dtnh_st_meta *meta, int meta_count, void *buf,
                                         size_t capacity, size_t *size, dtnh_error *err);

#ifndef DTNH_NO_STDIO
/* dtnh_st_open_memory for a file on disk: reads and checks the header, keeps the file open
   for the reads that follow. Close it with dtnh_st_close. */
DTNHDEF dtnh_status dtnh_st_open(dtnh_st_file *f, const char *path, dtnh_arena *scratch,
                                 dtnh_error *err);
/* Writes the file to "<path>.tmp", flushes it (and fsyncs it on POSIX), then renames it over
   path (and fsyncs the directory): a crash or a failure leaves the previous file whole. Needs
   no memory. */
DTNHDEF dtnh_status dtnh_st_save(const char *path, const dtnh_st_tensor *tensors, int count,
                                 const dtnh_st_meta *meta, int meta_count, dtnh_error *err);
#endif
/* Closes a file opened by dtnh_st_open (nothing to do for memory); safe to call twice. */
DTNHDEF void dtnh_st_close(dtnh_st_file *f);

/* Fails with DTNH_ERR_NUMERIC when a float tensor (F32, F16, BF16) holds a NaN or an Inf,
   naming the tensor and the element; I64 tensors pass. Reads the data without keeping it. */
DTNHDEF dtnh_status dtnh_st_check_finite(dtnh_st_file *f, int index, dtnh_error *err);

/* ============================================================================================
   ResNet-18 weights in safetensors
   torchvision's resnet18 state_dict names (conv1.weight, bn1.running_mean,
   bn1.num_batches_tracked as I64, layer1.0.conv1.weight, ..., fc.bias): load with a report,
   save, and read a network's configuration from a file's header alone.
   ============================================================================================ */

#define DTNH_LOAD_NAMES_SIZE 256

/* Zero means default. */
typedef struct dtnh_load_config {
    int strict; /* 1: a missing or unknown tensor, or a head of another class count, is an
                   error (DTNH_ERR_FORMAT) and nothing is loaded, as load_state_dict(strict) */
} dtnh_load_config;

/* What a load did. Names missing or unknown are counted and listed, never passed over in
   silence. */
typedef struct dtnh_load_report {
    int loaded;       /* tensors copied into the network (parameters and BN buffers) */
    int missing;      /* the network's tensors the file lacks: they keep their values */
    int unknown;      /* the file's tensors the network has no place for: ignored */
    int head_skipped; /* 1: the file's fc has another class count (the transfer case): fc.weight
                         and fc.bias keep the network's fresh initialisation */
    int file_classes; /* rows of the file's fc.weight, 0 when it has none */
    char missing_names[DTNH_LOAD_NAMES_SIZE]; /* the first ones, comma-separated, "..." after */
    char unknown_names[DTNH_LOAD_NAMES_SIZE];
} dtnh_load_report;

/* Loads a torchvision-named state_dict from an opened file into the network's weights
   (params.w) and BN buffers. F16 and BF16 are widened to float. Everything is checked before
   anything is written: a tensor of the wrong shape or dtype (an error naming it, both shapes
   given), a NaN or Inf (DTNH_ERR_NUMERIC) or a failing read leaves the network unchanged.
   report (may be NULL) says what was loaded, missing, unknown, and whether the head was
   skipped. */
DTNHDEF dtnh_status dtnh_resnet_load(dtnh_resnet *net, dtnh_st_file *f, const dtnh_load_config *cfg,
                                     dtnh_load_report *report, dtnh_error *err);
/* Writes the network's state_dict (parameters, running statistics, num_batches_tracked as
   I64) in torchvision's names and order as a safetensors file into buf; buf NULL only sets
   *size. */
DTNHDEF dtnh_status dtnh_resnet_save_memory(const dtnh_resnet *net, void *buf, size_t capacity,
                                            size_t *size, dtnh_error *err);
/* The state_dict as writer tensors over the network's own memory (floats written as `floats`,
   counters as I64), to save with metadata of one's own through dtnh_st_save. t has room for
   dtnh_resnet_state_count(net) entries; *count gets that number. */
DTNHDEF dtnh_status dtnh_resnet_state_tensors(const dtnh_resnet *net, dtnh_st_dtype floats,
                                              dtnh_st_tensor *t, int *count, dtnh_error *err);
/* The configuration a file tells by its shapes: stem from conv1.weight's kernel (7: imagenet,
   3: cifar), width from its output channels, in_channels from its input channels, num_classes
   from fc.weight. Sets those four fields of cfg and leaves the others as they are. */
DTNHDEF dtnh_status dtnh_resnet_config_from_st(const dtnh_st_file *f, dtnh_resnet_config *cfg,
                                               dtnh_error *err);

#ifndef DTNH_NO_STDIO
/* dtnh_resnet_load from a path. scratch holds the parsed header meanwhile and is reset to
   where it was on return (dtnh_st_open on a counting arena tells the size). */
DTNHDEF dtnh_status dtnh_resnet_load_file(dtnh_resnet *net, const char *path, dtnh_arena *scratch,
                                          const dtnh_load_config *cfg, dtnh_load_report *report,
                                          dtnh_error *err);
/* dtnh_resnet_save_memory to a path, atomically as dtnh_st_save: a failure leaves the
   previous file whole. */
DTNHDEF dtnh_status dtnh_resnet_save(const dtnh_resnet *net, const char *path, dtnh_error *err);
/* dtnh_resnet_config_from_st from a path, reading the header only. */
DTNHDEF dtnh_status dtnh_resnet_config_from_file(const char *path, dtnh_arena *scratch,
                                                 dtnh_resnet_config *cfg, dtnh_error *err);
#endif
/* ============================================================================================
   Regularizers
   Each writes its value and its gradient into g_Omega only, never into g_J, so the DTNH step
   can tell the two apart. Coefficients are inside: g_Omega is already weighted.
   ============================================================================================ */

/* L2-SP (dtnh_l2sp_config in dtnh.h; rc NULL: alpha = beta = 0.01): adds its gradient to
   g_omega (a flat vector over p) on the trainable views and stores its value in *value. The
   fused dtnh_step_l2sp needs neither: this is for composing regularizers and for checks. */
DTNHDEF dtnh_status dtnh_reg_l2sp(const dtnh_l2sp_config *rc, const dtnh_params *p,
                                  float *g_omega, double *value, dtnh_error *err);
/* Plain L2 toward zero, lambda/2 ||w||^2 over the trainable views in `groups` (0: all): the
   weight decay of plain fine-tuning, and the head term of DELTA (groups DTNH_GROUP_HEAD).
   Adds to g_omega; lambda must be > 0. */
DTNHDEF dtnh_status dtnh_reg_l2(double lambda, unsigned groups, const dtnh_params *p,
                                float *g_omega, double *value, dtnh_error *err);

/* ---- distances between feature maps ([n, C, ...] tensors; the batch is averaged) ---------- */

/* alpha/2 * (1/n) * sum over samples, channels c and positions of weight[c] * (f - s)^2
   (channel_weight NULL: all 1). df (may be NULL; f's size) is overwritten with the gradient
   with respect to f. *value (may be NULL) gets the value. */
DTNHDEF dtnh_status dtnh_feature_distance(const dtnh_tensor *f, const dtnh_tensor *s,
                                          const float *channel_weight, double alpha, float *df,
                                          double *value, dtnh_error *err);
/* Attention transfer (Zagoruyko & Komodakis 2017, their code's at_loss): per sample the
   spatial map A = sum_c F_c^2, normalised q = A / max(||A||, 1e-12); the value is
   alpha/2 * mean over samples and positions of (q(f) - q(s))^2. df and value as above. */
DTNHDEF dtnh_status dtnh_attention_distance(const dtnh_tensor *f, const dtnh_tensor *s,
                                            double alpha, float *df, double *value,
                                            dtnh_error *err);

/* ============================================================================================
   Feature-map regularizers on ResNet-18
   The target's hooked layers against the same layers of the source model (weights w_s, BN
   statistics of the source, evaluation mode): feature-map distillation (the paper's
   KnowDist, Eq. 3), DELTA (Li et al., ICLR 2019) and attention transfer. The g_Omega backward
   starts at the hooks, reuses the target's forward and writes only g_Omega.
   ============================================================================================ */

typedef enum dtnh_fmap_kind {
    DTNH_FMAP_DISTANCE = 0, /* alpha/2 mean_batch sum_l ||F_l(w,x) - F_l(w_s,x)||^2 */
    DTNH_FMAP_DELTA = 1,    /* the same, channel c of layer l weighted by C_l * a_lc, where
                               a_l (summing to 1) is DELTA's attention: uniform attention
                               gives the plain distance (the DELTA code's factor C) */
    DTNH_FMAP_ATTENTION = 2 /* alpha/2 sum_l dtnh_attention_distance at each hook */
} dtnh_fmap_kind;

/* Zero means default everywhere. */
typedef struct dtnh_fmap_config {
    dtnh_fmap_kind kind;
    double alpha;                             /* 0 means 0.01 */
    const char *hooks[DTNH_RESNET_MAX_HOOKS]; /* the target's hooks to use; none: layer1..4 */
    int hook_count;
    double temperature; /* DELTA's softmax temperature: 0 means 5 */
} dtnh_fmap_config;

typedef struct dtnh_fmap_reg {
    dtnh_fmap_config cfg;    /* defaults filled in; hook names point into hook_name */
    char hook_name[DTNH_RESNET_MAX_HOOKS][DTNH_NAME_SIZE];
    dtnh_resnet *target;
    dtnh_resnet source;      /* forward only: reads target->params.w_src, frozen statistics */
    int target_hook[DTNH_RESNET_MAX_HOOKS], source_hook[DTNH_RESNET_MAX_HOOKS];
    int channels[DTNH_RESNET_MAX_HOOKS];
    float *attention;        /* DELTA: channels[0] + channels[1] + ... weights, layer by layer */
    int attention_ready;     /* computed or loaded */
} dtnh_fmap_reg;

/* Sets the regularizer up on a target built with these hooks and with a w_src vector holding
   the source weights. The source's BN statistics come from stats_from (may be NULL: the
   target's own, so call this before training changes them); its shapes must be the target's.
   Takes the source copy's structure and DELTA's weights from the persistent arena. */
DTNHDEF dtnh_status dtnh_fmap_reg_init(dtnh_fmap_reg *r, const dtnh_fmap_config *cfg,
                                       dtnh_resnet *target, const dtnh_resnet *stats_from,
                                       dtnh_arena *persistent, dtnh_error *err);
/* After the target's training forward on x (and before or after its g_J backward): runs the
   source on x, stores the value in *value (may be NULL) and backpropagates from the hooks into
   grad (a flat vector over the target's params; overwritten on the trainable views, or added
   to with accumulate). dlogits NULL, the DTNH way: grad is g_Omega alone. dlogits given: the
   loss gradient goes back in the same pass and grad gets g_J + g_Omega (plain regularized
   fine-tuning, one backward). Uses the step arena above the forward's tensors, and gives it
   back; a counting step arena only counts. */
DTNHDEF dtnh_status dtnh_fmap_reg_compute(dtnh_fmap_reg *r, const dtnh_tensor *x,
                                          dtnh_arena *step, const float *dlogits, float *grad,
                                          int accumulate, double *value, dtnh_error *err);

/* DELTA's attention, once per run: for each hooked layer and channel, how much the mean
   cross-entropy of net on the batches (x[b], labels[b]) rises when the channel is zeroed; per
   layer z-scored (population std) and passed through softmax(z / temperature). net is the
   source backbone with a head trained on the target (train the head alone first; often the
   target itself at that point), built with the same hooks. */
DTNHDEF dtnh_status dtnh_fmap_reg_attention(dtnh_fmap_reg *r, dtnh_resnet *net, int batches,
                                            const dtnh_tensor *x, const int *const *labels,
                                            dtnh_arena *step, dtnh_error *err);
/* Turns per-channel loss rises into DELTA's weights (z-score, softmax with temperature),
   in place over `count` values. */
DTNHDEF void dtnh_delta_weights(int count, float *rise_to_weight, double temperature);
#ifndef DTNH_NO_STDIO
/* The attention as a safetensors file (one F32 tensor "delta.<hook>" of C weights per hook,
   written atomically), and read back; the hooks and channel counts must match, and nothing is
   changed when they do not. scratch holds the file's header while loading. */
DTNHDEF dtnh_status dtnh_fmap_reg_save_attention(const dtnh_fmap_reg *r, const char *path,
                                                 dtnh_error *err);
DTNHDEF dtnh_status dtnh_fmap_reg_load_attention(dtnh_fmap_reg *r, const char *path,
                                                 dtnh_arena *scratch, dtnh_error *err);
#endif
/* ============================================================================================
   Data sets
   Readers for IDX (the MNIST family, uncompressed), CIFAR-10 binary batches and folders of
   PGM/PPM images with one sub-folder per class. Open a data set, ask for its count and shape,
   then read any images into your own buffers, so a data set need not fit in memory. Pixels
   come out as bytes, image after image, each channel-planar (C, H, W) like the network input.
   A dtnh_dataset reads through a file position: use one per thread, and do not copy an open
   one (both copies would close the same file).
   ============================================================================================ */

#define DTNH_PATH_SIZE 512
#define DTNH_MAX_CHANNELS 3
#define DTNH_MAX_SIDE 16384 /* largest image height or width the readers accept */

typedef enum dtnh_data_format {
    DTNH_DATA_NONE = 0,
    DTNH_DATA_IDX,     /* MNIST-style IDX: images 0x00000803, labels 0x00000801 */
    DTNH_DATA_CIFAR10, /* records of 1 label byte + 3072 pixel bytes (R, G, B planes, 32x32) */
    DTNH_DATA_FOLDER   /* root/<class>/<image>.pgm|ppm|pnm, classes = sorted sub-folder names */
} dtnh_data_format;

/* Internal: where a data set's bytes come from, a memory buffer or a file it opened. */
typedef struct dtnh__source {
    const unsigned char *mem; /* memory source, or NULL */
    void *file;               /* FILE * the data set opened, or NULL */
    size_t size;              /* bytes in the source */
    size_t pos;               /* the file's position, so sequential reads need no seek */
    char name[DTNH_PATH_SIZE]; /* the path, or "<memory>", for messages */
} dtnh__source;

typedef struct dtnh_dataset {
    dtnh_data_format format;
    int count;                   /* images */
    int channels, height, width; /* every image has this shape */
    size_t image_bytes;          /* channels * height * width */
    int has_labels;              /* 0: IDX images without a labels file; labels read as -1 */
    int classes;                 /* labels lie in [0, classes) */
    int max_label, max_label_at; /* the largest label and the first image that has it */
    /* IDX and CIFAR-10 */
    dtnh__source images, labels;
    size_t image_offset, image_stride; /* where image i starts: offset + i * stride */
    size_t label_offset, label_stride; /* where label i is (CIFAR-10: in the images source) */
    /* folders (in the caller's arena) */
    char root[DTNH_PATH_SIZE];
    const char *const *class_names; /* [classes], sorted by strcmp */
    const char *const *files;       /* [count] file names, class by class, sorted in a class */
    const int *file_labels;         /* [count] */
} dtnh_dataset;

#ifndef DTNH_NO_STDIO
/* IDX images (count, rows, columns as big-endian u32) and, unless labels_path is NULL, their
   labels. Checks magic numbers, sizes against the headers and the two counts; classes becomes
   the largest label + 1 (see dtnh_dataset_set_classes). Gzipped files are refused. */
DTNHDEF dtnh_status dtnh_idx_open(dtnh_dataset *ds, const char *images_path,
                                  const char *labels_path, dtnh_error *err);
/* A CIFAR-10 binary batch (data_batch_N.bin, test_batch.bin), or several concatenated
   (`cat data_batch_*.bin > train.bin`); 3 x 32 x 32 images, 10 classes. */
DTNHDEF dtnh_status dtnh_cifar10_open(dtnh_dataset *ds, const char *path, dtnh_error *err);
/* A folder with one sub-folder per class (hidden entries skipped); class k is the k-th
   sub-folder name in strcmp order, like torchvision's ImageFolder. Images are binary or ASCII
   PGM/PPM (P5, P6, P2, P3; maxval <= 255, scaled to 0..255), named *.pgm, *.ppm or *.pnm, all of
   one shape: every header is checked here, so a wrong-sized image fails at open, named. The
   file list lives in `a`; a counting arena sizes it (count and classes are then set, but the
   data set cannot be read). Needs POSIX <dirent.h>; define DTNH_NO_DIRENT to leave it out. */
DTNHDEF dtnh_status dtnh_folder_open(dtnh_dataset *ds, const char *root, dtnh_arena *a,
                                     dtnh_error *err);
/* Any of the three, told apart by what path is: a folder, IDX images (by the magic; labels
   from labels_path, may be NULL), or a CIFAR-10 batch (a whole number of 3073-byte records;
   labels_path must be NULL). `a` is used only by folders (may be NULL otherwise). For programs
   that take a --data argument. */
DTNHDEF dtnh_status dtnh_dataset_open(dtnh_dataset *ds, const char *path, const char *labels_path,
                                      dtnh_arena *a, dtnh_error *err);
#endif
/* The same readers over memory buffers (kept by the caller while the data set is in use). */
DTNHDEF dtnh_status dtnh_idx_open_memory(dtnh_dataset *ds, const void *images, size_t images_size,
                                         const void *labels, size_t labels_size, dtnh_error *err);
DTNHDEF dtnh_status dtnh_cifar10_open_memory(dtnh_dataset *ds, const void *data, size_t size,
                                             dtnh_error *err);
/* Closes the files a data set opened; safe to call twice, or on a data set that failed to open. */
DTNHDEF void dtnh_dataset_close(dtnh_dataset *ds);

/* Images [first, first + n) into pixels (n * image_bytes) and their labels into labels (n ints;
   may be NULL; -1 without labels). Out-of-range labels are refused here too. */
DTNHDEF dtnh_status dtnh_dataset_read(dtnh_dataset *ds, int first, int n, unsigned char *pixels,
                                      int *labels, dtnh_error *err);
/* The images indices[0..n) in that order; pixels or labels may be NULL. */
DTNHDEF dtnh_status dtnh_dataset_read_indices(dtnh_dataset *ds, const int *indices, int n,
                                              unsigned char *pixels, int *labels, dtnh_error *err);
/* Every label (count ints), for sampling. */
DTNHDEF dtnh_status dtnh_dataset_labels(dtnh_dataset *ds, int *labels, dtnh_error *err);
/* Declares the class count (a model's, say): fails naming the first image whose label is not
   below it. A test set that lacks a class keeps its labels meaning the same. */
DTNHDEF dtnh_status dtnh_dataset_set_classes(dtnh_dataset *ds, int classes, dtnh_error *err);

/* One PGM/PPM image from memory: its shape, and its pixels (channel-planar) when pixels is not
   NULL and capacity holds them. For your own files, and for fuzzing the parser. */
DTNHDEF dtnh_status dtnh_pnm_decode(const void *data, size_t size, unsigned char *pixels,
                                    size_t capacity, int *channels, int *height, int *width,
                                    dtnh_error *err);

/* ============================================================================================
   Image sets and sampling
   A few-shot set loaded whole, and seeded choices of images: k per class, a class subset with
   relabelling, train / validation / test splits, shuffled minibatch index streams. Every
   choice is a function of the seed alone, so a run repeats exactly.
   ============================================================================================ */

/* Images held in memory, in the layout the readers produce. */
typedef struct dtnh_image_set {
    int count, channels, height, width;
    int classes; /* the data set's; set it yourself after dtnh_relabel(set.labels, ...) */
    size_t image_bytes;
    unsigned char *pixels; /* count * image_bytes */
    int *labels;           /* count */
} dtnh_image_set;

/* Loads images indices[0..n) (indices NULL: images [0, n)) of ds into memory from `a`. With a
   counting arena only the size is counted; nothing is read. */
DTNHDEF dtnh_status dtnh_image_set_load(dtnh_image_set *set, dtnh_dataset *ds, const int *indices,
                                        int n, dtnh_arena *a, dtnh_error *err);

/* Class subset with relabelling, in place: a label equal to classes[j] becomes j, any other
   becomes -1 (so {5,6,7,8,9} maps 5..9 to 0..4 and drops 0..4). Labels of -1 are skipped by
   every sampling function below. */
DTNHDEF dtnh_status dtnh_relabel(int *labels, int count, const int *classes, int nclasses,
                                 dtnh_error *err);
/* Images with each label in [0, classes) into counts[classes]. */
DTNHDEF void dtnh_class_counts(const int *labels, int count, int classes, int *counts);

/* k images of every class in [0, classes), chosen at random: indices[classes * k], class by
   class, ascending within a class. Fails naming a class with fewer than k images. */
DTNHDEF dtnh_status dtnh_sample_per_class(const int *labels, int count, int classes, int k,
                                          dtnh_rng *rng, int *indices, dtnh_error *err);

#define DTNH_SPLIT_REST (-1) /* a part that takes what the other parts leave of each class */

/* Splits images into parts, class by class: part p gets per_class[p] random images of every
   class (or, for the one part that may be DTNH_SPLIT_REST, all the others). part[i] receives
   the part of image i, or -1 (label outside [0, classes), or left over). The parts are
   disjoint; draws go class by class, part by part, so the same seed gives the same split.
   E.g. {30, 20, DTNH_SPLIT_REST}: 30 train, 20 validation and the rest test, per class. */
DTNHDEF dtnh_status dtnh_split_per_class(const int *labels, int count, int classes,
                                         const int *per_class, int parts, dtnh_rng *rng, int *part,
                                         dtnh_error *err);
/* A stratified hold-out: of each class's n images, floor(fraction * n + 0.5) random ones get
   part 1, the others part 0 (labels outside [0, classes): -1). */
DTNHDEF dtnh_status dtnh_split_fraction(const int *labels, int count, int classes, float fraction,
                                        dtnh_rng *rng, int *part, dtnh_error *err);
/* The images of one part, ascending, into indices (may be NULL to count); returns how many. */
DTNHDEF int dtnh_part_indices(const int *part, int count, int which, int *indices);

/* Minibatch indices over [0, count) in shuffled epochs, like PyTorch's DataLoader with
   shuffle=True, drop_last=True: every batch is full and holds no repeats; when fewer than n
   are left in an epoch, they are skipped and a new shuffle begins (a batch larger than the
   whole set spans several shuffles). Its own seed: augmentation draws do not change it. */
typedef struct dtnh_batch_stream {
    int *order; /* count, in the arena */
    int count;
    int next;  /* position in order */
    int epoch; /* shuffles started after the first */
    dtnh_rng rng;
} dtnh_batch_stream;

DTNHDEF dtnh_status dtnh_batch_stream_init(dtnh_batch_stream *bs, int count, uint64_t seed,
                                           dtnh_arena *a, dtnh_error *err);
DTNHDEF dtnh_status dtnh_batch_stream_next(dtnh_batch_stream *bs, int n, int *indices,
                                           dtnh_error *err);

/* ============================================================================================
   Batches and augmentation
   Bytes to an NCHW float batch, in torchvision's order: bilinear resize, random crop with zero
   padding, horizontal flip, then x = (v / 255 - mean) / std per channel.
   ============================================================================================ */

/* Zero means default in every field. */
typedef struct dtnh_augment_config {
    float mean[DTNH_MAX_CHANNELS]; /* per output channel; read only when std is set */
    float std[DTNH_MAX_CHANNELS];  /* all zero: mean 0.5, std 0.5 for every channel */
    int out_channels;  /* 0: the images' own; 3 with grey images repeats the grey channel */
    int out_height, out_width; /* 0: the images' own; otherwise a bilinear resize with PyTorch's
                                  F.interpolate(mode="bilinear", align_corners=False) semantics
                                  (no antialiasing, as that call does by default) */
    int pad;  /* random crop: pad every side with pad zero-valued pixels (v = 0), crop back to
                 the size at a random offset, as torchvision's RandomCrop(size, padding=pad) */
    int flip; /* nonzero: flip horizontally with probability 1/2 (off by default: wrong for
                 digits) */
} dtnh_augment_config;

/* The batch's shape [n, C, H, W] for n images of channels x height x width under cfg (NULL:
   defaults); fails on a config that does not fit those images. */
DTNHDEF dtnh_status dtnh_batch_shape(const dtnh_augment_config *cfg, int n, int channels,
                                     int height, int width, int shape[4], dtnh_error *err);
/* n images laid out as the readers give them (n * channels * height * width bytes) into out,
   a tensor of the shape above. rng NULL means evaluation: no crop offset, no flip (resize and
   normalisation still apply). With an rng each image draws, in this order, the crop's row
   offset then column offset (dtnh_rng_below(2 * pad + 1) each, when pad > 0) then the flip
   (dtnh_rng_below(2), when flip is on). */
DTNHDEF dtnh_status dtnh_batch_assemble(const dtnh_augment_config *cfg, const unsigned char *pixels,
                                        int n, int channels, int height, int width, dtnh_rng *rng,
                                        dtnh_tensor *out, dtnh_error *err);
/* The same for set images indices[0..n), with their labels into labels (may be NULL). */
DTNHDEF dtnh_status dtnh_batch_from_set(const dtnh_augment_config *cfg, const dtnh_image_set *set,
                                        const int *indices, int n, dtnh_rng *rng, dtnh_tensor *out,
                                        int *labels, dtnh_error *err);
/* ============================================================================================
   Checkpoints
   The whole state of a training run in ONE safetensors file, so a run cut off anywhere (power,
   SIGKILL) resumes with bit-identical weights: the network's state_dict (torchvision names, so
   the file is also a weights file dtnh_resnet_load reads), optionally the source weights w_s,
   the optimizer's state, a minibatch stream, named RNG states and the iteration. Scalars live
   in the header's metadata ("dtnh.iteration", "dtnh.rng.<name>", ...). Saved atomically:
   written to "<path>.tmp", flushed, fsync'd, renamed (dtnh_st_save).
   ============================================================================================ */

#define DTNH_CKPT_MAX_RNGS 4
#define DTNH_CKPT_MAX_META 8

/* What a checkpoint holds. A NULL pointer (or a zero count) leaves that part out of the file;
   loading demands exactly the parts the struct names, with the shapes they have now. */
typedef struct dtnh_checkpoint {
    dtnh_resnet *net;   /* weights and BN buffers (required) */
    int with_source;    /* 1: also w_s, as "dtnh.w_src.<name>" (the L2-SP anchor) */
    dtnh_optim *optim;  /* m, v, per-view step counts and the step: "dtnh.optim.*" */
    dtnh_batch_stream *stream; /* the shuffled order and position: "dtnh.stream.*" */
    dtnh_rng *rngs[DTNH_CKPT_MAX_RNGS]; /* saved as metadata "dtnh.rng.<name>" */
    const char *rng_names[DTNH_CKPT_MAX_RNGS];
    int rng_count;
    long iteration;     /* training steps done: saved, and set again by a load */
    /* The caller's own metadata (a run's command line, say): written on save, ignored on load
       (read it with dtnh_st_meta_get). Keys must not start with "dtnh.". */
    dtnh_st_meta meta[DTNH_CKPT_MAX_META];
    int meta_count;
} dtnh_checkpoint;

/* Writes the checkpoint as a safetensors file into buf (capacity bytes); *size gets its length,
   buf NULL only computes it. scratch holds the tensor table meanwhile and is given back; with a
   counting scratch arena only the scratch is counted (nothing else happens). */
DTNHDEF dtnh_status dtnh_checkpoint_save_memory(const dtnh_checkpoint *c, dtnh_arena *scratch,
                                                void *buf, size_t capacity, size_t *size,
                                                dtnh_error *err);
/* Restores the parts c names from an opened file. Everything is checked first (every tensor
   present with its shape and dtype, finite floats, optimizer layout and stream order valid,
   metadata well formed) and nothing is written until all of it passed; only an I/O fault while
   copying can leave a partial state. scratch: as above (a counting one counts). */
DTNHDEF dtnh_status dtnh_checkpoint_load(dtnh_checkpoint *c, dtnh_st_file *f, dtnh_arena *scratch,
                                         dtnh_error *err);
#ifndef DTNH_NO_STDIO
/* The same through a file: saved atomically (a crash leaves the previous checkpoint whole);
   loading holds the file's header in scratch meanwhile and gives it back. */
DTNHDEF dtnh_status dtnh_checkpoint_save(const dtnh_checkpoint *c, const char *path,
                                         dtnh_arena *scratch, dtnh_error *err);
DTNHDEF dtnh_status dtnh_checkpoint_load_file(dtnh_checkpoint *c, const char *path,
                                              dtnh_arena *scratch, dtnh_error *err);
#endif

/* ============================================================================================
   Numeric guards
   A NaN or Inf anywhere in a training step's inputs, found before the update, so the step can
   be skipped with the weights as they were (and the run go on, say with a smaller lr).
   ============================================================================================ */

/* DTNH_ERR_NUMERIC naming the first non-finite value among: the loss, the weights (every
   view, frozen ones too), w_s, g_J and g_Omega (trainable views; either may be NULL) and the
   optimizer's m and v (o may be NULL). Nothing is changed. One read of each vector. */
DTNHDEF dtnh_status dtnh_check_step_finite(const dtnh_params *p, const dtnh_optim *o, double loss,
                                           const float *g_j, const float *g_omega,
                                           dtnh_error *err);

#ifdef __cplusplus
}
#endif

#endif /* DTNH_NN_H */

#ifdef DTNH_IMPLEMENTATION
#ifndef DTNH_NN__IMPLEMENTED
#define DTNH_NN__IMPLEMENTED

#include <math.h>
#include <string.h>

/* ============================================================================================
   Layers
   Loops over (image, channel) planes, parallel over planes or channels with static
   partitions; every reduction runs inside one plane or channel in a fixed order, so results
   do not depend on the thread count.
   ============================================================================================ */

/* Parallelise only when there is enough work to pay for waking the threads. */
#define DTNH__PAR_MIN 32768

/* The reductions below add 16 float lanes over blocks of at most 256 values, then the lanes
   and the blocks in double, in a fixed order: the same bits for any thread count. The lanes
   are a GNU vector where the compiler has them (plain loops over lane arrays vectorise badly
   at GCC -O3), else (or with DTNH_NO_SIMD) arrays; both compute the same per-lane sums. */
#define DTNH__LANES 16
#define DTNH__BLOCK 256

#if (defined(__GNUC__) || defined(__clang__)) && !defined(DTNH_NO_SIMD)
typedef float dtnh__v16 __attribute__((vector_size(64)));
typedef int dtnh__i16 __attribute__((vector_size(64)));

/* s += p - shift, q += (p - shift)^2, lane by lane over len values (a multiple of 16). */
static void dtnh__acc_sumsq(const float *p, size_t len, float shift, float *s, float *q) {
    dtnh__v16 vs, vq, v;
    size_t j;
    memcpy(&vs, s, sizeof vs);
    memcpy(&vq, q, sizeof vq);
    for (j = 0; j < len; j += DTNH__LANES) {
        memcpy(&v, p + j, sizeof v);
        v -= shift;
        vs += v;
        vq += v * v;
    }
    memcpy(s, &vs, sizeof vs);
    memcpy(q, &vq, sizeof vq);
}

/* s += g, q += g * (x - mean), g = dy masked by y > 0 when y is not NULL. */
static void dtnh__acc_dy_dyx(const float *dy, const float *x, const float *y, float mean,
                             size_t len, float *s, float *q) {
    dtnh__v16 vs, vq, g, vx, vy;
    size_t j;
    memcpy(&vs, s, sizeof vs);
    memcpy(&vq, q, sizeof vq);
    for (j = 0; j < len; j += DTNH__LANES) {
        memcpy(&g, dy + j, sizeof g);
        memcpy(&vx, x + j, sizeof vx);
        if (y) {
            memcpy(&vy, y + j, sizeof vy);
            g = (dtnh__v16)((dtnh__i16)g & (vy > 0.0f));
        }
        vs += g;
        vq += g * (vx - mean);
    }
    memcpy(s, &vs, sizeof vs);
    memcpy(q, &vq, sizeof vq);
}
#else
static void dtnh__acc_sumsq(const float *p, size_t len, float shift, float *s, float *q) {
    size_t j;
    int k;
    for (j = 0; j < len; j += DTNH__LANES)
        for (k = 0; k < DTNH__LANES; k++) {
            float v = p[j + k] - shift;
            s[k] += v;
            q[k] += v * v;
        }
}

static void dtnh__acc_dy_dyx(const float *dy, const float *x, const float *y, float mean,
                             size_t len, float *s, float *q) {
    size_t j;
    int k;
    for (j = 0; j < len; j += DTNH__LANES)
        for (k = 0; k < DTNH__LANES; k++) {
            float g = y && !(y[j + k] > 0.0f) ? 0.0f : dy[j + k];
            s[k] += g;
            q[k] += g * (x[j + k] - mean);
        }
}
#endif

static double dtnh__lanes_sum(const float *lanes) {
    double s = 0;
    int k;
    for (k = 0; k < DTNH__LANES; k++) s += (double)lanes[k];
    return s;
}

/* Sums of (p - shift) and (p - shift)^2 over p[0..n). A shift near the mean keeps the
   variance E[d^2] - E[d]^2 free of cancellation. */
static void dtnh__sum_sumsq(const float *p, size_t n, float shift, double *sum, double *sumsq) {
    size_t i = 0;
    while (i < n) {
        size_t len = n - i < DTNH__BLOCK ? n - i : DTNH__BLOCK, j = len / DTNH__LANES * DTNH__LANES;
        float s[DTNH__LANES] = {0}, q[DTNH__LANES] = {0};
        int k;
        dtnh__acc_sumsq(p + i, j, shift, s, q);
        for (k = 0; j < len; j++, k++) {
            float v = p[i + j] - shift;
            s[k] += v;
            q[k] += v * v;
        }
        *sum += dtnh__lanes_sum(s);
        *sumsq += dtnh__lanes_sum(q);
        i += len;
    }
}

/* Sums of g and g * (x - mean) over [0..n), g = dy, or dy where y > 0 (a fused ReLU's mask)
   when y is not NULL. x NULL: only the first. */
static void dtnh__sum_dy_dyx(const float *dy, const float *x, const float *y, float mean,
                             size_t n, double *sum_dy, double *sum_dyx) {
    size_t i = 0;
    while (i < n) {
        size_t len = n - i < DTNH__BLOCK ? n - i : DTNH__BLOCK, j = len / DTNH__LANES * DTNH__LANES;
        const float *d = dy + i, *xs = x ? x + i : dy + i, *ys = y ? y + i : NULL;
        float s[DTNH__LANES] = {0}, q[DTNH__LANES] = {0};
        int k;
        dtnh__acc_dy_dyx(d, xs, ys, mean, j, s, q);
        for (k = 0; j < len; j++, k++) {
            float g = ys && !(ys[j] > 0.0f) ? 0.0f : d[j];
            s[k] += g;
            q[k] += g * (xs[j] - mean);
        }
        *sum_dy += dtnh__lanes_sum(s);
        if (x) *sum_dyx += dtnh__lanes_sum(q);
        i += len;
    }
}

/* dx = k_dy * g + k_x * x + k_0 with g as above, out of place and in place (dx == dy): one
   loop each, so the compiler need not fear that they overlap. */
static void dtnh__bn_dx(float *dx, const float *dy, const float *x, const float *y, size_t n,
                        float k_dy, float k_x, float k_0) {
    size_t j;
    if (y && x)
        for (j = 0; j < n; j++) dx[j] = k_dy * (y[j] > 0.0f ? dy[j] : 0.0f) + k_x * x[j] + k_0;
    else if (x)
        for (j = 0; j < n; j++) dx[j] = k_dy * dy[j] + k_x * x[j] + k_0;
    else if (y)
        for (j = 0; j < n; j++) dx[j] = y[j] > 0.0f ? k_dy * dy[j] : 0.0f;
    else
        for (j = 0; j < n; j++) dx[j] = k_dy * dy[j];
}

static void dtnh__bn_dx_inplace(float *d, const float *x, const float *y, size_t n, float k_dy,
                                float k_x, float k_0) {
    size_t j;
    if (y && x)
        for (j = 0; j < n; j++) d[j] = k_dy * (y[j] > 0.0f ? d[j] : 0.0f) + k_x * x[j] + k_0;
    else if (x)
        for (j = 0; j < n; j++) d[j] = k_dy * d[j] + k_x * x[j] + k_0;
    else if (y)
        for (j = 0; j < n; j++) d[j] = y[j] > 0.0f ? k_dy * d[j] : 0.0f;
    else
        for (j = 0; j < n; j++) d[j] *= k_dy;
}

DTNHDEF void dtnh_batchnorm_stats(int n, int c, int hw, const float *x, float eps, float *mean,
                                  float *invstd, float *var_unbiased) {
    long ch;
    size_t cnt = (size_t)n * (size_t)hw;
    DTNH__OMP(parallel for schedule(static) if ((size_t)c * cnt > DTNH__PAR_MIN))
    for (ch = 0; ch < c; ch++) {
        double s = 0, q = 0, m, var;
        float shift = x[(size_t)ch * (size_t)hw]; /* a value of the channel: near its mean */
        int i;
        for (i = 0; i < n; i++)
            dtnh__sum_sumsq(x + ((size_t)i * (size_t)c + (size_t)ch) * (size_t)hw, (size_t)hw,
                            shift, &s, &q);
        m = s / (double)cnt;
        var = q / (double)cnt - m * m;
        if (var < 0) var = 0; /* rounding, when every value is the same */
        m += (double)shift;
        mean[ch] = (float)m;
        invstd[ch] = (float)(1.0 / sqrt(var + (double)eps));
        if (var_unbiased) var_unbiased[ch] = cnt > 1 ? (float)(var * (double)cnt / (double)(cnt - 1)) : 0.0f;
    }
}

DTNHDEF void dtnh_batchnorm_eval_invstd(int c, const float *running_var, float eps, float *invstd) {
    int ch;
    for (ch = 0; ch < c; ch++) invstd[ch] = (float)(1.0 / sqrt((double)running_var[ch] + (double)eps));
}

DTNHDEF void dtnh_batchnorm_update_running(int c, const float *batch_mean,
                                           const float *batch_var_unbiased, float momentum,
                                           float *running_mean, float *running_var,
                                           int64_t *num_batches_tracked) {
    int ch;
    for (ch = 0; ch < c; ch++) {
        running_mean[ch] = (1.0f - momentum) * running_mean[ch] + momentum * batch_mean[ch];
        running_var[ch] = (1.0f - momentum) * running_var[ch] + momentum * batch_var_unbiased[ch];
    }
    if (num_batches_tracked) ++*num_batches_tracked;
}

DTNHDEF void dtnh_batchnorm_apply(int n, int c, int hw, const float *x, const float *mean,
                                  const float *invstd, const float *gamma, const float *beta,
                                  int relu, float *y) {
    long plane, planes = (long)n * c;
    DTNH__OMP(parallel for schedule(static) if ((size_t)planes * (size_t)hw > DTNH__PAR_MIN))
    for (plane = 0; plane < planes; plane++) {
        int ch = (int)(plane % c), j;
        /* PyTorch's form: y = x * alpha + shift, alpha = gamma * invstd. */
        float alpha = gamma[ch] * invstd[ch], shift = beta[ch] - mean[ch] * alpha;
        const float *xp = x + (size_t)plane * (size_t)hw;
        float *yp = y + (size_t)plane * (size_t)hw;
        if (relu)
            for (j = 0; j < hw; j++) {
                float v = xp[j] * alpha + shift;
                yp[j] = v <= 0.0f ? 0.0f : v; /* NaN passes, as in PyTorch */
            }
        else
            for (j = 0; j < hw; j++) yp[j] = xp[j] * alpha + shift;
    }
}

DTNHDEF void dtnh_batchnorm_backward(int n, int c, int hw, const float *x, const float *y,
                                     const float *dy, const float *mean, const float *invstd,
                                     const float *gamma, int batch_stats, float *dx,
                                     float *dgamma, float *dbeta, int accumulate) {
    long ch;
    size_t cnt = (size_t)n * (size_t)hw;
    DTNH__OMP(parallel for schedule(static) if ((size_t)c * cnt > DTNH__PAR_MIN))
    for (ch = 0; ch < c; ch++) {
        double sdy = 0, sdyxc = 0, sdyxhat;
        float a, k_x, k_0;
        int i;
        for (i = 0; i < n; i++) {
            size_t off = ((size_t)i * (size_t)c + (size_t)ch) * (size_t)hw;
            dtnh__sum_dy_dyx(dy + off, x ? x + off : NULL, y ? y + off : NULL, mean[ch],
                             (size_t)hw, &sdy, &sdyxc);
        }
        /* sum(g * xhat) = invstd * sum(g * (x - mean)) */
        sdyxhat = (double)invstd[ch] * sdyxc;
        if (dgamma) dgamma[ch] = accumulate ? dgamma[ch] + (float)sdyxhat : (float)sdyxhat;
        if (dbeta) dbeta[ch] = accumulate ? dbeta[ch] + (float)sdy : (float)sdy;
        if (!dx) continue;
        /* dx = a * (g - sum(g)/N - xhat * sum(g xhat)/N), a = gamma * invstd, written as
           a * g + k_x * x + k_0 (batch statistics), or a * g (constant statistics). */
        a = gamma[ch] * invstd[ch];
        k_x = batch_stats ? (float)(-(double)a * (double)invstd[ch] * sdyxhat / (double)cnt) : 0.0f;
        k_0 = batch_stats ? (float)(-(double)k_x * (double)mean[ch] - (double)a * sdy / (double)cnt) : 0.0f;
        for (i = 0; i < n; i++) {
            size_t off = ((size_t)i * (size_t)c + (size_t)ch) * (size_t)hw;
            const float *xp = batch_stats ? x + off : NULL, *yp = y ? y + off : NULL;
            if (dx == dy) dtnh__bn_dx_inplace(dx + off, xp, yp, (size_t)hw, a, k_x, k_0);
            else dtnh__bn_dx(dx + off, dy + off, xp, yp, (size_t)hw, a, k_x, k_0);
        }
    }
}

DTNHDEF void dtnh_relu_forward(size_t count, const float *x, float *y) {
    size_t i;
    for (i = 0; i < count; i++) y[i] = x[i] <= 0.0f ? 0.0f : x[i]; /* NaN passes */
}

DTNHDEF void dtnh_relu_backward(size_t count, const float *y, const float *dy, float *dx) {
    size_t i;
    if (dx == dy) /* in place: one pointer, so the loop vectorises */
        for (i = 0; i < count; i++) dx[i] = y[i] > 0.0f ? dx[i] : 0.0f;
    else
        for (i = 0; i < count; i++) dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
}

/* Output size of a pooling or convolution window, PyTorch's floor mode. */
static int dtnh__window_out(int size, int k, int stride, int pad) {
    return (size + 2 * pad - k) / stride + 1;
}

/* Index (in the plane) of the first largest input of output (oy, ox)'s window, -1 if the
   window holds only padding. */
static long dtnh__maxpool_argmax(const float *xp, int h, int w, int k, int stride, int pad,
                                 int oy, int ox, float *best) {
    long arg = -1;
    int i, j;
    *best = -INFINITY;
    for (i = 0; i < k; i++) {
        int iy = oy * stride - pad + i;
        if (iy < 0 || iy >= h) continue;
        for (j = 0; j < k; j++) {
            int ix = ox * stride - pad + j;
            float v;
            if (ix < 0 || ix >= w) continue;
            v = xp[(size_t)iy * (size_t)w + (size_t)ix];
            if (v > *best || arg < 0 || v != v) { /* NaN wins, as in PyTorch */
                *best = v;
                arg = (long)iy * w + ix;
            }
        }
    }
    return arg;
}

/* The 3x3 windows whose 9 inputs all lie inside: output columns [*lo, *hi) of a row whose
   3 input rows are inside. The hot path of ResNet's max-pool runs there without bounds checks
   or padding; the border goes through dtnh__maxpool_argmax. */
static void dtnh__maxpool3_interior(int w, int ow, int stride, int pad, int *lo, int *hi) {
    *lo = (pad + stride - 1) / stride;
    *hi = w - 3 + pad >= 0 ? (w - 3 + pad) / stride + 1 : 0;
    if (*hi > ow) *hi = ow;
    if (*lo > *hi) *lo = *hi;
}

/* The larger of a and b, NaN winning (as PyTorch's max-pool). */
#define DTNH__MAXNAN(a, b) ((b) > (a) || (b) != (b) ? (b) : (a))

static float dtnh__max9(const float *r0, const float *r1, const float *r2) {
    float m = r0[0];
    m = DTNH__MAXNAN(m, r0[1]);
    m = DTNH__MAXNAN(m, r0[2]);
    m = DTNH__MAXNAN(m, r1[0]);
    m = DTNH__MAXNAN(m, r1[1]);
    m = DTNH__MAXNAN(m, r1[2]);
    m = DTNH__MAXNAN(m, r2[0]);
    m = DTNH__MAXNAN(m, r2[1]);
    return DTNH__MAXNAN(m, r2[2]);
}

#if defined(DTNH__AVX512)
/* 3x3 stride-2 windows, 16 at a time: the nine taps of outputs whose windows start at input
   column c0, c0 + 2, ... (n <= 16 of them, all inside) as nine vectors, row-major. Per input row
   the even, odd and next-even columns are three permutes of four loads. */
static void dtnh__pool_taps16(const float *r0, size_t w, int n, __m512 tap[9]) {
    const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i odd = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    int cols = 2 * n + 1, i; /* columns c0 .. c0 + 2n read */
    __mmask16 a0 = (__mmask16)(cols >= 16 ? 0xFFFFu : (1u << cols) - 1u);
    __mmask16 a1 = (__mmask16)(cols > 16 ? (1u << (cols - 16)) - 1u : 0u);
    __mmask16 b0 = (__mmask16)(cols - 2 >= 16 ? 0xFFFFu : (1u << (cols - 2)) - 1u);
    __mmask16 b1 = (__mmask16)(cols - 2 > 16 ? (1u << (cols - 18)) - 1u : 0u);
    for (i = 0; i < 3; i++) {
        const float *r = r0 + (size_t)i * w;
        __m512 l0 = _mm512_maskz_loadu_ps(a0, r), l1 = _mm512_maskz_loadu_ps(a1, r + 16);
        __m512 s0 = _mm512_maskz_loadu_ps(b0, r + 2), s1 = _mm512_maskz_loadu_ps(b1, r + 18);
        tap[3 * i] = _mm512_permutex2var_ps(l0, even, l1);
        tap[3 * i + 1] = _mm512_permutex2var_ps(l0, odd, l1);
        tap[3 * i + 2] = _mm512_permutex2var_ps(s0, even, s1);
    }
}

/* DTNH__MAXNAN on 16 lanes: b where b > a or b is NaN, else a. */
static __m512 dtnh__maxnan16(__m512 a, __m512 b) {
    __mmask16 take = _mm512_cmp_ps_mask(b, a, _CMP_GT_OQ) | _mm512_cmp_ps_mask(b, b, _CMP_UNORD_Q);
    return _mm512_mask_blend_ps(take, a, b);
}

/* The window maxima, in dtnh__max9's order of comparisons (the same bits, NaN included). */
static __m512 dtnh__max9x16(const __m512 tap[9]) {
    __m512 m = tap[0];
    int t;
    for (t = 1; t < 9; t++) m = dtnh__maxnan16(m, tap[t]);
    return m;
}

/* Outputs [lo, hi) of a row whose windows start at input row `row`, all of them inside. */
static void dtnh__maxpool_row_s2(const float *row, int w, int pad, int lo, int hi, float *yr) {
    int ox;
    for (ox = lo; ox < hi; ox += 16) {
        int n = dtnh__kmin(16, hi - ox);
        __m512 tap[9];
        dtnh__pool_taps16(row + (size_t)(2 * ox - pad), (size_t)w, n, tap);
        _mm512_mask_storeu_ps(yr + ox, (__mmask16)((1u << n) - 1u), dtnh__max9x16(tap));
    }
}

/* The gradient of those outputs: each to the first largest tap of its window (dtnh__argmax9's
   rule), added in the scalar loop's order; windows holding a NaN go through the generic scan. */
static void dtnh__maxpool_row_s2_backward(const float *xp, int h, int w, int pad, int oy, int lo,
                                          int hi, const float *dyr, float *dxp) {
    int ox, t, q;
    size_t iy = (size_t)(oy * 2 - pad);
    for (ox = lo; ox < hi; ox += 16) {
        int n = dtnh__kmin(16, hi - ox);
        DTNH_ALIGNED(64) int32_t arg[16];
        __m512 tap[9], m;
        __m512i a = _mm512_set1_epi32(-1);
        dtnh__pool_taps16(xp + iy * (size_t)w + (size_t)(2 * ox - pad), (size_t)w, n, tap);
        m = dtnh__max9x16(tap);
        for (t = 8; t >= 0; t--) /* the first equal tap wins; NaN windows stay -1 */
            a = _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(tap[t], m, _CMP_EQ_OQ), a, _mm512_set1_epi32(t));
        _mm512_store_si512((void *)arg, a);
        for (q = 0; q < n; q++) {
            long at;
            float best;
            if (arg[q] >= 0)
                at = (long)((iy + (size_t)(arg[q] / 3)) * (size_t)w + (size_t)(2 * (ox + q) - pad + arg[q] % 3));
            else
                at = dtnh__maxpool_argmax(xp, h, w, 3, 2, pad, oy, ox + q, &best);
            if (at >= 0) dxp[at] += dyr[ox + q];
        }
    }
}
#endif

static void dtnh__maxpool_plane(const float *xp, int h, int w, int k, int stride, int pad,
                                float *yp, int oh, int ow) {
    int oy, ox, lo, hi;
    dtnh__maxpool3_interior(w, ow, stride, pad, &lo, &hi);
    for (oy = 0; oy < oh; oy++) {
        int iy = oy * stride - pad, fast = k == 3 && iy >= 0 && iy + 2 < h;
        float *yr = yp + (size_t)oy * (size_t)ow;
#if defined(DTNH__AVX512)
        if (fast && stride == 2 && lo < hi) { /* the border outputs through the generic scan */
            float best;
            dtnh__maxpool_row_s2(xp + (size_t)iy * (size_t)w, w, pad, lo, hi, yr);
            for (ox = 0; ox < lo; ox++) dtnh__maxpool_argmax(xp, h, w, k, stride, pad, oy, ox, &best), yr[ox] = best;
            for (ox = hi; ox < ow; ox++) dtnh__maxpool_argmax(xp, h, w, k, stride, pad, oy, ox, &best), yr[ox] = best;
            continue;
        }
#endif
        for (ox = 0; ox < ow; ox++) {
            float best;
            if (fast && ox >= lo && ox < hi) {
                const float *r0 = xp + (size_t)iy * (size_t)w + (size_t)(ox * stride - pad);
                yr[ox] = dtnh__max9(r0, r0 + w, r0 + 2 * (size_t)w);
                continue;
            }
            dtnh__maxpool_argmax(xp, h, w, k, stride, pad, oy, ox, &best);
            yr[ox] = best;
        }
    }
}

/* Index in the 3x3 window (row-major) of its first largest value, the rule of the generic
   scan; -1 when the window holds a NaN (the generic scan decides those). */
static int dtnh__argmax9(const float *r0, const float *r1, const float *r2) {
    float m = dtnh__max9(r0, r1, r2);
    int arg = 8;
    if (m != m) return -1;
    arg = r2[1] == m ? 7 : arg;
    arg = r2[0] == m ? 6 : arg;
    arg = r1[2] == m ? 5 : arg;
    arg = r1[1] == m ? 4 : arg;
    arg = r1[0] == m ? 3 : arg;
    arg = r0[2] == m ? 2 : arg;
    arg = r0[1] == m ? 1 : arg;
    return r0[0] == m ? 0 : arg;
}

static void dtnh__maxpool_plane_backward(const float *xp, int h, int w, int k, int stride,
                                         int pad, const float *dyp, int oh, int ow, float *dxp) {
    int oy, ox, lo, hi;
    dtnh__maxpool3_interior(w, ow, stride, pad, &lo, &hi);
    dtnh_fill((size_t)h * (size_t)w, dxp, 0.0f);
    for (oy = 0; oy < oh; oy++) {
        int iy = oy * stride - pad, fast = k == 3 && iy >= 0 && iy + 2 < h;
#if defined(DTNH__AVX512)
        if (fast && stride == 2 && lo < hi) { /* border outputs before and after, in order */
            float best;
            long arg;
            for (ox = 0; ox < lo; ox++)
                if ((arg = dtnh__maxpool_argmax(xp, h, w, k, stride, pad, oy, ox, &best)) >= 0)
                    dxp[arg] += dyp[(size_t)oy * (size_t)ow + (size_t)ox];
            dtnh__maxpool_row_s2_backward(xp, h, w, pad, oy, lo, hi, dyp + (size_t)oy * (size_t)ow, dxp);
            for (ox = hi; ox < ow; ox++)
                if ((arg = dtnh__maxpool_argmax(xp, h, w, k, stride, pad, oy, ox, &best)) >= 0)
                    dxp[arg] += dyp[(size_t)oy * (size_t)ow + (size_t)ox];
            continue;
        }
#endif
        for (ox = 0; ox < ow; ox++) {
            float g = dyp[(size_t)oy * (size_t)ow + (size_t)ox], best;
            long arg = -1;
            if (fast && ox >= lo && ox < hi) {
                size_t at = (size_t)iy * (size_t)w + (size_t)(ox * stride - pad);
                int t = dtnh__argmax9(xp + at, xp + at + w, xp + at + 2 * (size_t)w);
                if (t >= 0) arg = (long)(at + (size_t)(t / 3) * (size_t)w + (size_t)(t % 3));
            }
            if (arg < 0) arg = dtnh__maxpool_argmax(xp, h, w, k, stride, pad, oy, ox, &best);
            if (arg >= 0) dxp[arg] += g;
        }
    }
}

DTNHDEF void dtnh_maxpool_forward(int n, int c, int h, int w, int k, int stride, int pad,
                                  const float *x, float *y) {
    int oh = dtnh__window_out(h, k, stride, pad), ow = dtnh__window_out(w, k, stride, pad);
    long plane, planes = (long)n * c;
    DTNH__OMP(parallel for schedule(static) if ((size_t)planes * (size_t)h * (size_t)w > DTNH__PAR_MIN))
    for (plane = 0; plane < planes; plane++)
        dtnh__maxpool_plane(x + (size_t)plane * (size_t)h * (size_t)w, h, w, k, stride, pad,
                            y + (size_t)plane * (size_t)oh * (size_t)ow, oh, ow);
}

DTNHDEF void dtnh_maxpool_backward(int n, int c, int h, int w, int k, int stride, int pad,
                                   const float *x, const float *dy, float *dx) {
    int oh = dtnh__window_out(h, k, stride, pad), ow = dtnh__window_out(w, k, stride, pad);
    long plane, planes = (long)n * c;
    DTNH__OMP(parallel for schedule(static) if ((size_t)planes * (size_t)h * (size_t)w > DTNH__PAR_MIN))
    for (plane = 0; plane < planes; plane++)
        dtnh__maxpool_plane_backward(x + (size_t)plane * (size_t)h * (size_t)w, h, w, k, stride,
                                     pad, dy + (size_t)plane * (size_t)oh * (size_t)ow, oh, ow,
                                     dx + (size_t)plane * (size_t)h * (size_t)w);
}

DTNHDEF void dtnh_avgpool_forward(int n, int c, int hw, const float *x, float *y) {
    long plane, planes = (long)n * c;
    DTNH__OMP(parallel for schedule(static) if ((size_t)planes * (size_t)hw > DTNH__PAR_MIN))
    for (plane = 0; plane < planes; plane++) {
        double s = 0, q = 0;
        dtnh__sum_sumsq(x + (size_t)plane * (size_t)hw, (size_t)hw, 0.0f, &s, &q);
        y[plane] = (float)(s / (double)hw);
    }
}

DTNHDEF void dtnh_avgpool_backward(int n, int c, int hw, const float *dy, float *dx) {
    long plane, planes = (long)n * c;
    DTNH__OMP(parallel for schedule(static) if ((size_t)planes * (size_t)hw > DTNH__PAR_MIN))
    for (plane = 0; plane < planes; plane++)
        dtnh_fill((size_t)hw, dx + (size_t)plane * (size_t)hw, dy[plane] / (float)hw);
}

DTNHDEF void dtnh_linear_forward(int n, int in, int out, const float *x, const float *w,
                                 const float *b, float *y, const dtnh_work *work) {
    int i, j;
    dtnh_sgemm(DTNH_NO_TRANS, DTNH_TRANS, n, out, in, 1.0f, x, in, w, in, 0.0f, y, out, work);
    if (b)
        for (i = 0; i < n; i++)
            for (j = 0; j < out; j++) y[(size_t)i * (size_t)out + (size_t)j] += b[j];
}

DTNHDEF void dtnh_linear_backward_data(int n, int in, int out, const float *dy, const float *w,
                                       float *dx, int accumulate, const dtnh_work *work) {
    dtnh_sgemm(DTNH_NO_TRANS, DTNH_NO_TRANS, n, in, out, 1.0f, dy, out, w, in,
               accumulate ? 1.0f : 0.0f, dx, in, work);
}

DTNHDEF void dtnh_linear_backward_weights(int n, int in, int out, const float *x, const float *dy,
                                          float *dw, float *db, int accumulate,
                                          const dtnh_work *work) {
    int i, j;
    if (dw)
        dtnh_sgemm(DTNH_TRANS, DTNH_NO_TRANS, out, in, n, 1.0f, dy, out, x, in,
                   accumulate ? 1.0f : 0.0f, dw, in, work);
    if (!db) return;
    for (j = 0; j < out; j++) {
        float s = 0;
        for (i = 0; i < n; i++) s += dy[(size_t)i * (size_t)out + (size_t)j];
        db[j] = accumulate ? db[j] + s : s;
    }
}

DTNHDEF dtnh_status dtnh_softmax_cross_entropy(int n, int classes, const float *logits,
                                               const int *labels, float *dlogits, double *loss,
                                               dtnh_error *err) {
    double total = 0;
    size_t bad;
    int i, j;
    if (n <= 0 || classes <= 0 || !logits || !labels || !loss)
        return dtnh_fail(err, DTNH_ERR_ARG,
                         "softmax_cross_entropy: n=%d classes=%d (expected > 0) or NULL pointer",
                         n, classes);
    for (i = 0; i < n; i++)
        if (labels[i] < 0 || labels[i] >= classes)
            return dtnh_fail(err, DTNH_ERR_ARG,
                             "softmax_cross_entropy: label %d of sample %d, expected 0..%d",
                             labels[i], i, classes - 1);
    if (!dtnh_all_finite((size_t)n * (size_t)classes, logits, &bad))
        return dtnh_fail(err, DTNH_ERR_NUMERIC,
                         "softmax_cross_entropy: logit %zu (sample %zu) is NaN or Inf", bad,
                         bad / (size_t)classes);
    for (i = 0; i < n; i++) {
        const float *l = logits + (size_t)i * (size_t)classes;
        double m = l[0], s = 0;
        for (j = 1; j < classes; j++)
            if (l[j] > m) m = l[j];
        for (j = 0; j < classes; j++) s += exp((double)l[j] - m);
        total += m + log(s) - (double)l[labels[i]];
        if (dlogits) {
            float *d = dlogits + (size_t)i * (size_t)classes;
            for (j = 0; j < classes; j++)
                d[j] = (float)((exp((double)l[j] - m) / s - (j == labels[i] ? 1.0 : 0.0)) / n);
        }
    }
    *loss = total / n;
    return DTNH_OK;
}

/* ============================================================================================
   BatchNorm buffers
   ============================================================================================ */

static dtnh_status dtnh__buffers_init(dtnh_buffers *b, dtnh_arena *a, int max_views,
                                      dtnh_error *err) {
    void *mem = NULL;
    dtnh_status s;
    memset(b, 0, sizeof *b);
    if ((s = dtnh_arena_alloc(a, (size_t)max_views * sizeof(dtnh_buffer_view), 0, &mem, err)))
        return s;
    b->views = (dtnh_buffer_view *)mem;
    b->capacity = max_views;
    return DTNH_OK;
}

/* Appends a float vector of c values, or (is_count) one int64 counter; a counting store
   (views NULL) only adds up. */
static dtnh_status dtnh__buffers_add(dtnh_buffers *b, const char *name, int is_count, int c,
                                     int *index, size_t *offset, dtnh_error *err) {
    dtnh_buffer_view v;
    if (strlen(name) >= DTNH_NAME_SIZE)
        return dtnh_fail(err, DTNH_ERR_ARG, "buffers: name '%s' longer than %d", name,
                         DTNH_NAME_SIZE - 1);
    if (b->views && b->count >= b->capacity)
        return dtnh_fail(err, DTNH_ERR_ARG, "buffers: more than %d views", b->capacity);
    memset(&v, 0, sizeof v);
    strcpy(v.name, name);
    v.ndim = is_count ? 0 : 1;
    v.shape[0] = is_count ? 1 : c;
    v.shape[1] = v.shape[2] = v.shape[3] = 1;
    v.is_count = is_count;
    v.count = is_count ? 1 : (size_t)c;
    v.offset = is_count ? b->count_total : b->total;
    if (is_count) b->count_total += 1;
    else b->total += (size_t)c;
    if (b->views) b->views[b->count] = v;
    *index = b->count++;
    *offset = v.offset;
    return DTNH_OK;
}

static dtnh_status dtnh__buffers_alloc(dtnh_buffers *b, dtnh_arena *a, dtnh_error *err) {
    void *mem = NULL;
    dtnh_status s;
    if ((s = dtnh_arena_alloc_floats(a, b->total, &b->values, err))) return s;
    if ((s = dtnh_arena_alloc(a, b->count_total * sizeof(int64_t), 0, &mem, err))) return s;
    b->counts = (int64_t *)mem;
    return DTNH_OK;
}

DTNHDEF int dtnh_buffers_find(const dtnh_buffers *b, const char *name) {
    int i;
    if (!b || !b->views || !name) return -1;
    for (i = 0; i < b->count; i++)
        if (strcmp(b->views[i].name, name) == 0) return i;
    return -1;
}

/* ============================================================================================
   ResNet-18: configuration and building
   The network is a list of nodes (layers) over values (activation tensors), in forward
   order; node and parameter order is torchvision's state_dict order.
   ============================================================================================ */

enum {
    DTNH__NODE_CONV = 1,
    DTNH__NODE_BN,
    DTNH__NODE_RELU,
    DTNH__NODE_MAXPOOL,
    DTNH__NODE_AVGPOOL,
    DTNH__NODE_LINEAR,
    DTNH__NODE_ADD
};
enum { DTNH__TRAIN = 0, DTNH__INFER = 1 };

/* ResNet-18 has 62 parameter tensors and 20 BatchNorms of 3 buffers each, whatever the
   configuration (layer1 never downsamples: the stem keeps `width` channels). */
#define DTNH__RESNET_VIEWS 62
#define DTNH__RESNET_BUFFERS 60

DTNHDEF dtnh_resnet_config dtnh_resnet_config_def(const dtnh_resnet_config *cfg) {
    dtnh_resnet_config c;
    if (cfg) c = *cfg;
    else memset(&c, 0, sizeof c);
    if (!c.in_channels) c.in_channels = 3;
    if (!c.num_classes) c.num_classes = 1000;
    if (!c.width) c.width = 64;
    if (c.stem == DTNH_STEM_DEFAULT) c.stem = DTNH_STEM_IMAGENET;
    if (!c.height) c.height = c.stem == DTNH_STEM_CIFAR ? 32 : 224;
    if (!c.width_px) c.width_px = c.stem == DTNH_STEM_CIFAR ? 32 : 224;
    if (!c.max_batch) c.max_batch = 1;
    if (!c.threads) c.threads = dtnh_threads();
    if (c.train == DTNH_TRAIN_DEFAULT) c.train = DTNH_TRAIN_ALL;
    if (!c.train_stages) c.train_stages = 1;
    if (c.bn_stats == DTNH_BN_STATS_DEFAULT) c.bn_stats = DTNH_BN_STATS_AUTO;
    if (!c.roles) c.roles = c.train == DTNH_TRAIN_NONE ? DTNH_ROLE_W : DTNH_ROLE_W | DTNH_ROLE_G_J;
    if (c.external_weights) c.roles &= ~(unsigned)DTNH_ROLE_W;
    return c;
}

static dtnh_status dtnh__resnet_check_config(const dtnh_resnet_config *c, dtnh_error *err) {
    int i;
    if (c->in_channels < 1 || c->num_classes < 1 || c->width < 1 || c->height < 1 ||
        c->width_px < 1 || c->max_batch < 1 || c->threads < 1)
        return dtnh_fail(err, DTNH_ERR_ARG,
                         "resnet config: in_channels=%d num_classes=%d width=%d input %dx%d "
                         "max_batch=%d threads=%d, expected all >= 1 (0 means default)",
                         c->in_channels, c->num_classes, c->width, c->height, c->width_px,
                         c->max_batch, c->threads);
    if (c->width > 65536 || c->in_channels > 65536 || c->height > 65536 || c->width_px > 65536)
        return dtnh_fail(err, DTNH_ERR_ARG,
                         "resnet config: width=%d in_channels=%d input %dx%d, expected <= 65536",
                         c->width, c->in_channels, c->height, c->width_px);
    if (c->stem != DTNH_STEM_IMAGENET && c->stem != DTNH_STEM_CIFAR)
        return dtnh_fail(err, DTNH_ERR_ARG, "resnet config: stem %d, expected DTNH_STEM_*", (int)c->stem);
    if (c->train < DTNH_TRAIN_ALL || c->train > DTNH_TRAIN_NONE)
        return dtnh_fail(err, DTNH_ERR_ARG, "resnet config: train %d, expected DTNH_TRAIN_*", (int)c->train);
    if (c->train_stages < 1 || c->train_stages > 4)
        return dtnh_fail(err, DTNH_ERR_ARG, "resnet config: train_stages %d, expected 1..4",
                         c->train_stages);
    if (c->bn_stats < DTNH_BN_STATS_AUTO || c->bn_stats > DTNH_BN_STATS_FROZEN)
        return dtnh_fail(err, DTNH_ERR_ARG, "resnet config: bn_stats %d, expected DTNH_BN_STATS_*",
                         (int)c->bn_stats);
    if (c->roles & ~(unsigned)(DTNH_ROLE_W | DTNH_ROLE_W_SRC | DTNH_ROLE_G_J | DTNH_ROLE_G_OMEGA))
        return dtnh_fail(err, DTNH_ERR_ARG, "resnet config: roles 0x%x, expected DTNH_ROLE_* bits",
                         c->roles);
    if (c->hook_count < 0 || c->hook_count > DTNH_RESNET_MAX_HOOKS)
        return dtnh_fail(err, DTNH_ERR_ARG, "resnet config: hook_count %d, expected 0..%d",
                         c->hook_count, DTNH_RESNET_MAX_HOOKS);
    for (i = 0; i < c->hook_count; i++)
        if (!c->hooks[i] || !c->hooks[i][0] || strlen(c->hooks[i]) >= DTNH_NAME_SIZE)
            return dtnh_fail(err, DTNH_ERR_ARG, "resnet config: hook %d is NULL, empty or too long", i);
    return DTNH_OK;
}

/* torchvision's names for the same output: "layer3" is "layer3.1", a block's "relu" is the
   block's output, "downsample" is its BatchNorm. */
static void dtnh__hook_normalise(const char *name, char *out) {
    size_t len;
    strncpy(out, name, DTNH_NAME_SIZE - 3);
    out[DTNH_NAME_SIZE - 3] = '\0';
    len = strlen(out);
    if (len == 6 && strncmp(out, "layer", 5) == 0) {
        strcat(out, ".1");
    } else if (strncmp(out, "layer", 5) == 0 && len > 5 && strcmp(out + len - 5, ".relu") == 0) {
        out[len - 5] = '\0';
    } else if (len > 11 && strcmp(out + len - 11, ".downsample") == 0) {
        strcat(out, ".1");
    }
}

/* 1 when a configured hook names the module `name` (so its output must stay unfused). */
static int dtnh__hooked(const dtnh_resnet *net, const char *name) {
    char norm[DTNH_NAME_SIZE];
    int i;
    for (i = 0; i < net->cfg.hook_count; i++) {
        dtnh__hook_normalise(net->cfg.hooks[i], norm);
        if (strcmp(norm, name) == 0) return 1;
    }
    return 0;
}

static size_t dtnh__value_floats(const dtnh__rvalue *v) {
    return (size_t)v->c * (size_t)v->h * (size_t)v->w;
}

/* Per-sample sizes round up to 16 floats, so every offset times the batch stays 64-byte
   aligned. */
static size_t dtnh__round16(size_t n) { return (n + 15) / 16 * 16; }

static dtnh_status dtnh__add_node(dtnh_resnet *net, int kind, const char *name, int in0, int in1,
                                  int stage, int c, int h, int w, dtnh__rnode **out,
                                  dtnh_error *err) {
    dtnh__rnode *nd = NULL;
    dtnh__rvalue *v;
    int i, idx = net->node_count, ins[2];
    if (idx >= DTNH__RESNET_MAX_NODES)
        return dtnh_fail(err, DTNH_ERR_ARG, "resnet: more than %d layers", DTNH__RESNET_MAX_NODES);
    nd = &net->nodes[idx];
    memset(nd, 0, sizeof *nd);
    strncpy(nd->name, name, sizeof nd->name - 1);
    nd->kind = kind;
    nd->stage = stage;
    nd->in[0] = in0;
    nd->in[1] = in1;
    nd->wview = nd->bufview = -1;
    nd->out = net->value_count++;
    v = &net->values[nd->out];
    memset(v, 0, sizeof *v);
    v->c = c;
    v->h = h;
    v->w = w;
    v->producer = idx;
    v->last_consumer = -1;
    v->hook = -1;
    ins[0] = in0;
    ins[1] = in1;
    for (i = 0; i < 2; i++)
        if (ins[i] >= 0) {
            net->values[ins[i]].consumers++;
            net->values[ins[i]].last_consumer = idx;
        }
    net->node_count++;
    *out = nd;
    return DTNH_OK;
}

static dtnh_status dtnh__add_param(dtnh_resnet *net, const char *module, const char *what,
                                   int ndim, const int *shape, unsigned groups, size_t *off,
                                   size_t *count, int *view, dtnh_error *err) {
    char name[DTNH_NAME_SIZE];
    dtnh_status s;
    int idx = -1;
    size_t before = net->params.total;
    snprintf(name, sizeof name, "%s.%s", module, what);
    if ((s = dtnh_params_add(&net->params, name, ndim, shape, groups, &idx, err))) return s;
    *off = before;
    *count = net->params.total - before;
    if (view) *view = idx;
    net->state_kind[net->state_count] = 0;
    net->state_index[net->state_count++] = idx;
    return DTNH_OK;
}

static dtnh_status dtnh__add_buffer(dtnh_resnet *net, const char *module, const char *what,
                                    int is_count, int c, size_t *off, int *view, dtnh_error *err) {
    char name[DTNH_NAME_SIZE];
    dtnh_status s;
    int idx = -1;
    snprintf(name, sizeof name, "%s.%s", module, what);
    if ((s = dtnh__buffers_add(&net->buffers, name, is_count, c, &idx, off, err))) return s;
    if (view) *view = idx;
    net->state_kind[net->state_count] = 1;
    net->state_index[net->state_count++] = idx;
    return DTNH_OK;
}

static dtnh_status dtnh__conv(dtnh_resnet *net, const char *name, int in, int c_out, int k,
                              int stride, int pad, int stage, int *out, dtnh_error *err) {
    const dtnh__rvalue *x = &net->values[in];
    dtnh_conv_geom g;
    dtnh__rnode *nd = NULL;
    dtnh_status s;
    int shape[4];
    memset(&g, 0, sizeof g);
    if ((s = dtnh_conv_geom_init(&g, net->cfg.max_batch, x->c, x->h, x->w, c_out, k, k, stride,
                                 pad, err)))
        return s;
    if ((s = dtnh__add_node(net, DTNH__NODE_CONV, name, in, -1, stage, c_out, g.oh, g.ow, &nd, err)))
        return s;
    nd->c_out = c_out;
    nd->k = k;
    nd->stride = stride;
    nd->pad = pad;
    shape[0] = c_out;
    shape[1] = x->c;
    shape[2] = shape[3] = k;
    *out = nd->out;
    return dtnh__add_param(net, name, "weight", 4, shape, DTNH_GROUP_BACKBONE | DTNH_GROUP_KERNEL,
                           &nd->woff, &nd->wcount, &nd->wview, err);
}

/* BatchNorm, with a ReLU after it when relu is set: fused into the BN unless a hook wants the
   BN's own output. relu_name names the ReLU's output ("" for none). */
static dtnh_status dtnh__bn(dtnh_resnet *net, const char *name, int in, int relu,
                            const char *relu_name, int stage, int *out, dtnh_error *err) {
    const dtnh__rvalue *x = &net->values[in];
    int c = x->c, fuse = relu && !dtnh__hooked(net, name), idx;
    dtnh__rnode *nd = NULL;
    dtnh_status s;
    size_t off;
    if ((s = dtnh__add_node(net, DTNH__NODE_BN, name, in, -1, stage, c, x->h, x->w, &nd, err)))
        return s;
    nd->relu = fuse;
    if (fuse) strncpy(nd->alias, relu_name, sizeof nd->alias - 1);
    if ((s = dtnh__add_param(net, name, "weight", 1, &c, DTNH_GROUP_BACKBONE | DTNH_GROUP_BN,
                             &nd->woff, &nd->wcount, &nd->wview, err)) ||
        (s = dtnh__add_param(net, name, "bias", 1, &c, DTNH_GROUP_BACKBONE | DTNH_GROUP_BN,
                             &nd->boff, &nd->bcount, NULL, err)) ||
        (s = dtnh__add_buffer(net, name, "running_mean", 0, c, &nd->buf_off, &nd->bufview, err)) ||
        (s = dtnh__add_buffer(net, name, "running_var", 0, c, &off, NULL, err)) ||
        (s = dtnh__add_buffer(net, name, "num_batches_tracked", 1, 1, &off, &idx, err)))
        return s;
    nd->count_index = (int)off;
    *out = nd->out;
    if (relu && !fuse) {
        if ((s = dtnh__add_node(net, DTNH__NODE_RELU, relu_name, *out, -1, stage, c, x->h, x->w,
                                &nd, err)))
            return s;
        *out = nd->out;
    }
    return DTNH_OK;
}

/* torchvision's BasicBlock: conv3x3-BN-ReLU-conv3x3-BN, plus the input (or its 1x1 conv + BN
   downsample when the shape changes), then ReLU. */
static dtnh_status dtnh__block(dtnh_resnet *net, int stage, int b, int in, int c_out, int stride,
                               int *out, dtnh_error *err) {
    char pre[32], name[64];
    int t, ident = in;
    dtnh__rnode *add = NULL;
    dtnh_status s;
    snprintf(pre, sizeof pre, "layer%d.%d", stage, b);
#define DTNH__NAME(suffix) (snprintf(name, sizeof name, "%s.%s", pre, suffix), name)
    if ((s = dtnh__conv(net, DTNH__NAME("conv1"), in, c_out, 3, stride, 1, stage, &t, err)) ||
        (s = dtnh__bn(net, DTNH__NAME("bn1"), t, 1, "", stage, &t, err)) ||
        (s = dtnh__conv(net, DTNH__NAME("conv2"), t, c_out, 3, 1, 1, stage, &t, err)) ||
        (s = dtnh__bn(net, DTNH__NAME("bn2"), t, 0, "", stage, &t, err)))
        return s;
    if (stride != 1 || net->values[in].c != c_out)
        if ((s = dtnh__conv(net, DTNH__NAME("downsample.0"), in, c_out, 1, stride, 0, stage, &ident,
                            err)) ||
            (s = dtnh__bn(net, DTNH__NAME("downsample.1"), ident, 0, "", stage, &ident, err)))
            return s;
#undef DTNH__NAME
    if ((s = dtnh__add_node(net, DTNH__NODE_ADD, pre, t, ident, stage, c_out, net->values[t].h,
                            net->values[t].w, &add, err)))
        return s;
    add->relu = 1;
    *out = add->out;
    return DTNH_OK;
}

static dtnh_status dtnh__resnet_build(dtnh_resnet *net, dtnh_error *err) {
    const dtnh_resnet_config *c = &net->cfg;
    int v, stage, b, imagenet = c->stem == DTNH_STEM_IMAGENET;
    int shape[2];
    dtnh__rnode *nd = NULL;
    dtnh_status s;
    dtnh__rvalue *x = &net->values[0];
    memset(x, 0, sizeof *x);
    x->c = c->in_channels;
    x->h = c->height;
    x->w = c->width_px;
    x->producer = x->last_consumer = x->hook = -1;
    net->value_count = 1;
    if ((s = dtnh__conv(net, "conv1", 0, c->width, imagenet ? 7 : 3, imagenet ? 2 : 1,
                        imagenet ? 3 : 1, 0, &v, err)) ||
        (s = dtnh__bn(net, "bn1", v, 1, "relu", 0, &v, err)))
        return s;
    if (imagenet) {
        const dtnh__rvalue *r = &net->values[v];
        if ((s = dtnh__add_node(net, DTNH__NODE_MAXPOOL, "maxpool", v, -1, 0, r->c,
                                dtnh__window_out(r->h, 3, 2, 1), dtnh__window_out(r->w, 3, 2, 1),
                                &nd, err)))
            return s;
        nd->k = 3;
        nd->stride = 2;
        nd->pad = 1;
        v = nd->out;
    }
    for (stage = 1; stage <= 4; stage++)
        for (b = 0; b < 2; b++)
            if ((s = dtnh__block(net, stage, b, v, c->width << (stage - 1),
                                 b == 0 && stage > 1 ? 2 : 1, &v, err)))
                return s;
    if ((s = dtnh__add_node(net, DTNH__NODE_AVGPOOL, "avgpool", v, -1, 4, net->values[v].c, 1, 1,
                            &nd, err)))
        return s;
    v = nd->out;
    if ((s = dtnh__add_node(net, DTNH__NODE_LINEAR, "fc", v, -1, 5, c->num_classes, 1, 1, &nd, err)))
        return s;
    nd->c_out = c->num_classes;
    net->logits_value = nd->out;
    shape[0] = c->num_classes;
    shape[1] = net->values[v].c;
    if ((s = dtnh__add_param(net, "fc", "weight", 2, shape, DTNH_GROUP_HEAD | DTNH_GROUP_KERNEL,
                             &nd->woff, &nd->wcount, &nd->wview, err)) ||
        (s = dtnh__add_param(net, "fc", "bias", 1, shape, DTNH_GROUP_HEAD | DTNH_GROUP_BIAS,
                             &nd->boff, &nd->bcount, NULL, err)))
        return s;
    return DTNH_OK;
}

/* Resolves every configured hook to the value it names. */
static dtnh_status dtnh__resnet_resolve_hooks(dtnh_resnet *net, dtnh_error *err) {
    char norm[DTNH_NAME_SIZE];
    int h, i;
    for (h = 0; h < net->cfg.hook_count; h++) {
        int found = -1;
        dtnh__hook_normalise(net->cfg.hooks[h], norm);
        for (i = 0; i < net->node_count && found < 0; i++)
            if (strcmp(net->nodes[i].name, norm) == 0 || strcmp(net->nodes[i].alias, norm) == 0)
                found = net->nodes[i].out;
        if (found < 0)
            return dtnh_fail(err, DTNH_ERR_ARG,
                             "resnet: hook '%s' names no layer (expected a torchvision module "
                             "name such as layer1..layer4, layer2.1, conv1, bn1, relu, "
                             "layer3.0.bn2, avgpool, fc)",
                             net->cfg.hooks[h]);
        strcpy(net->hook_name[h], net->cfg.hooks[h]);
        net->cfg.hooks[h] = net->hook_name[h];
        net->hook_value[h] = found;
        if (net->values[found].hook < 0) net->values[found].hook = h;
    }
    return DTNH_OK;
}

/* ============================================================================================
   ResNet-18: what trains, what is kept, and where every tensor of a step lives
   ============================================================================================ */

static int dtnh__trainable(const dtnh_resnet_config *c, int stage, unsigned groups) {
    switch (c->train) {
    case DTNH_TRAIN_ALL: return 1;
    case DTNH_TRAIN_LAST_STAGES: return stage >= 5 - c->train_stages;
    case DTNH_TRAIN_HEAD: return stage == 5;
    case DTNH_TRAIN_BN_BIAS: return stage == 5 || (groups & (DTNH_GROUP_BN | DTNH_GROUP_BIAS)) != 0;
    default: return 0;
    }
}

static void dtnh__resnet_mark_trainable(dtnh_resnet *net) {
    int i;
    for (i = 0; i < net->node_count; i++) {
        dtnh__rnode *nd = &net->nodes[i];
        unsigned wg = nd->kind == DTNH__NODE_BN ? DTNH_GROUP_BN : DTNH_GROUP_KERNEL;
        unsigned bg = nd->kind == DTNH__NODE_BN ? DTNH_GROUP_BN : DTNH_GROUP_BIAS;
        nd->train_w = nd->wcount > 0 && dtnh__trainable(&net->cfg, nd->stage, wg);
        nd->train_b = nd->bcount > 0 && dtnh__trainable(&net->cfg, nd->stage, bg);
        if (net->params.views && nd->wview >= 0) {
            net->params.views[nd->wview].trainable = nd->train_w;
            if (nd->bcount) net->params.views[nd->wview + 1].trainable = nd->train_b;
        }
    }
}

/* Marks v as read by the backward of node i; nodes come in forward order, so the first mark
   is the reader whose backward runs last. */
static void dtnh__keep(dtnh__rvalue *v, int i, int read) {
    if (!read) return;
    if (!v->kept) v->last_reader = i;
    v->first_reader = i;
    v->kept = 1;
}

/* Activations backward reads but recomputes (dtnh__rvalue.recompute). */
#define DTNH__REDO_BN 1  /* a fused BN+ReLU output, from the BN's input */
#define DTNH__REDO_ADD 2 /* a block's ReLU(BN2 output + the block's input), from BN2's input */

/* Whether value v, which backward reads, can be recomputed from values backward stores anyway
   and statistics the step keeps: a fused BN+ReLU output (the next convolution's input, the
   ReLU's mask) from the BN's input; a block's output from its BN2's input and the block's
   input, when the block has no downsample (whose BN output nothing keeps) and its input is
   stored (recomputing chains of blocks would keep the chain's copies alive together: measured
   larger). Backward recomputes it before its first reader, so it need not outlive the
   forward. A hooked value outlives the forward anyway (the caller reads it): not recomputed. */
static int dtnh__recomputable(const dtnh_resnet *net, int v) {
    const dtnh__rvalue *x = &net->values[v];
    const dtnh__rnode *nd = &net->nodes[x->producer];
    if (!x->kept || x->hook >= 0 || nd->in[0] < 1) return 0;
    if (nd->kind == DTNH__NODE_BN) return nd->relu && net->values[nd->in[0]].kept ? DTNH__REDO_BN : 0;
    if (nd->kind == DTNH__NODE_ADD) {
        const dtnh__rnode *bn2 = &net->nodes[net->values[nd->in[0]].producer];
        int ident = nd->in[1];
        if (bn2->kind == DTNH__NODE_BN && !bn2->relu && bn2->in[0] >= 1 && net->values[bn2->in[0]].kept &&
            ident >= 1 && net->values[ident].kept && !net->values[ident].recompute)
            return DTNH__REDO_ADD;
    }
    return 0;
}

static void dtnh__resnet_mark_recompute(dtnh_resnet *net) {
    int v;
    if (net->cfg.keep_activations) return;
    for (v = 1; v < net->value_count; v++) net->values[v].recompute = dtnh__recomputable(net, v);
}

/* A value needs a gradient when a trainable parameter lies at or below it. BN statistics
   freeze (AUTO) below the first trainable layer. Then: which values backward reads. */
static void dtnh__resnet_mark_flow(dtnh_resnet *net) {
    int i, j;
    for (i = 0; i < net->value_count; i++)
        net->values[i].needs_grad = net->values[i].kept = net->values[i].recompute = 0;
    for (i = 0; i < net->node_count; i++) {
        dtnh__rnode *nd = &net->nodes[i];
        int ng = nd->train_w || nd->train_b;
        for (j = 0; j < 2; j++)
            if (nd->in[j] >= 0) ng |= net->values[nd->in[j]].needs_grad;
        net->values[nd->out].needs_grad = ng;
        if (nd->kind == DTNH__NODE_BN)
            nd->frozen_stats = net->cfg.bn_stats == DTNH_BN_STATS_FROZEN ||
                               (net->cfg.bn_stats == DTNH_BN_STATS_AUTO && !ng);
    }
    for (i = 0; i < net->node_count; i++) {
        dtnh__rnode *nd = &net->nodes[i];
        dtnh__rvalue *in = &net->values[nd->in[0]], *out = &net->values[nd->out];
        int in_grad = in->needs_grad || (nd->in[1] >= 0 && net->values[nd->in[1]].needs_grad);
        if (!out->needs_grad) continue;
        switch (nd->kind) {
        case DTNH__NODE_CONV:
        case DTNH__NODE_LINEAR: dtnh__keep(in, i, nd->train_w); break;
        case DTNH__NODE_BN:
            dtnh__keep(in, i, nd->train_w || (in->needs_grad && !nd->frozen_stats));
            dtnh__keep(out, i, nd->relu);
            break;
        case DTNH__NODE_RELU:
        case DTNH__NODE_ADD: dtnh__keep(out, i, in_grad); break;
        case DTNH__NODE_MAXPOOL: dtnh__keep(in, i, in->needs_grad); break;
        default: break;
        }
    }
    dtnh__resnet_mark_recompute(net);
}

typedef struct dtnh__interval {
    size_t size, off; /* per-sample floats */
    int start, end;   /* steps, inclusive */
} dtnh__interval;

#define DTNH__MAX_INTERVALS (4 * DTNH__RESNET_MAX_NODES + 4)

/* Places the intervals in one block, greedily, largest first: each at the lowest offset free
   of every placed interval that is alive at the same time. Returns the block size. */
static size_t dtnh__place(dtnh__interval *iv, int count) {
    int order[DTNH__MAX_INTERVALS], near[DTNH__MAX_INTERVALS], i, j, k;
    size_t total = 0;
    for (i = 0; i < count; i++) { /* insertion sort: size descending, then start, index */
        int x = i;
        for (j = i; j > 0; j--) {
            const dtnh__interval *a = &iv[order[j - 1]], *b = &iv[x];
            if (a->size > b->size || (a->size == b->size && a->start <= b->start)) break;
            order[j] = order[j - 1];
        }
        order[j] = x;
    }
    for (i = 0; i < count; i++) {
        dtnh__interval *cur = &iv[order[i]];
        size_t cand = 0;
        int n = 0;
        for (j = 0; j < i; j++) { /* placed neighbours in time, by offset */
            int p = order[j];
            if (iv[p].end < cur->start || iv[p].start > cur->end) continue;
            for (k = n++; k > 0 && iv[near[k - 1]].off > iv[p].off; k--) near[k] = near[k - 1];
            near[k] = p;
        }
        for (k = 0; k < n; k++) {
            const dtnh__interval *o = &iv[near[k]];
            if (cand + cur->size <= o->off) break;
            if (o->off + o->size > cand) cand = o->off + o->size;
        }
        cur->off = cand;
        if (cand + cur->size > total) total = cand + cur->size;
    }
    return total;
}

static int dtnh__new_interval(dtnh__interval *iv, int *count, size_t size, int start, int end) {
    iv[*count].size = dtnh__round16(size);
    iv[*count].off = 0;
    iv[*count].start = start;
    iv[*count].end = end;
    return (*count)++;
}

/* A value's data lives from its producer to its last reader: the end of the step when it is
   kept, hooked or the logits; else its last consumer. */
static int dtnh__data_end(const dtnh_resnet *net, int v, int end) {
    const dtnh__rvalue *x = &net->values[v];
    if (x->hook >= 0 || v == net->logits_value) return end;
    return x->consumers ? x->last_consumer : x->producer;
}

/* The inference plan: forward steps 0..F-1, only hooks and logits outlive their readers. */
/* 1 when v crosses hook h's cut: made at or below the hook's layer and read above it (the
   hook's own output, a block input on the identity path). A masked re-run from the hook
   needs exactly these. */
static int dtnh__crosses_hook(const dtnh_resnet *net, int v, int h) {
    int p = net->values[net->hook_value[h]].producer;
    const dtnh__rvalue *x = &net->values[v];
    return v == net->hook_value[h] || (x->producer <= p && x->consumers && x->last_consumer > p);
}

/* The inference plan: forward steps 0..F-1. Hooks, the logits and the values that cross a
   hook's cut outlive their readers (dtnh_resnet_rerun_masked starts from them). */
static void dtnh__plan_infer(dtnh_resnet *net) {
    dtnh__interval iv[DTNH__MAX_INTERVALS];
    int id[DTNH__RESNET_MAX_NODES + 1], count = 0, v, h, F = net->node_count;
    for (v = 1; v < net->value_count; v++) {
        int end = dtnh__data_end(net, v, F);
        for (h = 0; h < net->cfg.hook_count; h++)
            if (dtnh__crosses_hook(net, v, h)) end = F;
        id[v] = dtnh__new_interval(iv, &count, dtnh__value_floats(&net->values[v]),
                                   net->values[v].producer, end);
    }
    net->block_floats[DTNH__INFER] = dtnh__place(iv, count);
    for (v = 1; v < net->value_count; v++) net->values[v].offset[DTNH__INFER] = iv[id[v]].off;
}

/* Gradient groups of the training plan. A value's gradient lives from the backward of its last
   consumer to the backward of its producer. BN, ReLU and the add's first input take their
   input gradient in place of the output gradient when they are the input's only consumer. */
static void dtnh__plan_grads(dtnh_resnet *net, dtnh__interval *iv, int *count, int *gid) {
    int i, j, F = net->node_count;
    for (i = F - 1; i >= 0; i--) {
        dtnh__rnode *nd = &net->nodes[i];
        const dtnh__rvalue *o = &net->values[nd->out];
        int start = o->consumers ? 2 * F - 1 - o->last_consumer : 2 * F - 1 - i, end = 2 * F - 1 - i;
        nd->has_temp = 0;
        if (!o->needs_grad) continue;
        if (gid[nd->out] < 0) {
            gid[nd->out] = dtnh__new_interval(iv, count, dtnh__value_floats(o), start, end);
        } else {
            dtnh__interval *g = &iv[gid[nd->out]];
            if (start < g->start) g->start = start;
            if (end > g->end) g->end = end;
        }
        for (j = 0; j < 2; j++) {
            int u = nd->in[j];
            int inplace = nd->kind == DTNH__NODE_BN || nd->kind == DTNH__NODE_RELU ||
                          (nd->kind == DTNH__NODE_ADD && j == 0);
            if (u < 1 || !net->values[u].needs_grad) continue;
            if (inplace && net->values[u].consumers == 1) gid[u] = gid[nd->out];
        }
        /* temp_offset holds the interval's index until dtnh__plan_train turns it into an offset */
        if (nd->kind == DTNH__NODE_CONV && nd->in[0] >= 1 && net->values[nd->in[0]].needs_grad &&
            net->values[nd->in[0]].consumers > 1) {
            nd->has_temp = 1;
            nd->temp_offset = (size_t)dtnh__new_interval(
                iv, count, dtnh__value_floats(&net->values[nd->in[0]]), 2 * F - 1 - i, 2 * F - 1 - i);
        }
    }
}

/* The training plan: forward steps 0..F-1, backward steps F..2F-1 (node i at 2F-1-i). Kept
   values live to the end, as backward may run more than once; with single_backward, only until
   their last reader's backward, and gradients take their place. A recomputed value lives in
   the forward until its last consumer, and again from its first reader's backward to its last
   reader's (every backward recomputes it). What it is recomputed from outlives that start:
   its BN's input until that BN's backward, a block's input until its conv1's, both later. */
static void dtnh__plan_train(dtnh_resnet *net) {
    dtnh__interval iv[DTNH__MAX_INTERVALS];
    int id[DTNH__RESNET_MAX_NODES + 1], gid[DTNH__RESNET_MAX_NODES + 1], bid[DTNH__RESNET_MAX_NODES + 1];
    int count = 0, v, i, F = net->node_count;
    net->kept_floats = net->recomputed_floats = 0;
    for (v = 1; v < net->value_count; v++) {
        const dtnh__rvalue *x = &net->values[v];
        size_t floats = dtnh__value_floats(x);
        int end = dtnh__data_end(net, v, 2 * F);
        if (x->kept && !x->recompute)
            end = net->cfg.single_backward && x->hook < 0 ? 2 * F - 1 - x->last_reader : 2 * F;
        id[v] = dtnh__new_interval(iv, &count, floats, x->producer, end);
        gid[v] = bid[v] = -1;
        if (x->recompute) {
            bid[v] = dtnh__new_interval(iv, &count, floats, 2 * F - 1 - x->first_reader,
                                        2 * F - 1 - x->last_reader);
            net->recomputed_floats += dtnh__round16(floats);
        } else if (x->kept) {
            net->kept_floats += dtnh__round16(floats);
        }
    }
    dtnh__plan_grads(net, iv, &count, gid);
    net->block_floats[DTNH__TRAIN] = dtnh__place(iv, count);
    for (v = 1; v < net->value_count; v++) {
        net->values[v].offset[DTNH__TRAIN] = iv[id[v]].off;
        net->values[v].grad_offset = gid[v] >= 0 ? iv[gid[v]].off : 0;
        net->values[v].bwd_offset = bid[v] >= 0 ? iv[bid[v]].off : 0;
    }
    for (i = 0; i < F; i++)
        if (net->nodes[i].has_temp) net->nodes[i].temp_offset = iv[net->nodes[i].temp_offset].off;
}

static void dtnh__resnet_analyse(dtnh_resnet *net) {
    int i, stats = 0;
    dtnh__resnet_mark_trainable(net);
    dtnh__resnet_mark_flow(net);
    for (i = 0; i < net->node_count; i++)
        if (net->nodes[i].kind == DTNH__NODE_BN) {
            net->nodes[i].stats_off = stats;
            stats += 3 * net->values[net->nodes[i].out].c;
        }
    net->stats_floats = stats;
    dtnh__plan_train(net);
    dtnh__plan_infer(net);
    net->train_n = 0;
}

/* ============================================================================================
   ResNet-18: init, weights, plan
   ============================================================================================ */

DTNHDEF void dtnh_resnet_init_head(dtnh_resnet *net, uint64_t seed) {
    dtnh_rng rng;
    int i;
    if (!net || !net->params.w) return;
    dtnh_rng_seed(&rng, seed);
    for (i = 0; i < net->node_count; i++) {
        const dtnh__rnode *nd = &net->nodes[i];
        /* nn.Linear: kaiming_uniform(a=sqrt(5)) gives U(+-1/sqrt(fan_in)), the bias the same. */
        float bound = (float)(1.0 / sqrt((double)dtnh__value_floats(&net->values[nd->in[0]])));
        if (nd->kind != DTNH__NODE_LINEAR) continue;
        dtnh_init_uniform(net->params.w + nd->woff, nd->wcount, bound, &rng);
        dtnh_init_uniform(net->params.w + nd->boff, nd->bcount, bound, &rng);
    }
}

DTNHDEF void dtnh_resnet_init_weights(dtnh_resnet *net, uint64_t seed) {
    dtnh_rng rng;
    int i;
    if (!net) return;
    dtnh_rng_seed(&rng, seed);
    for (i = 0; i < net->node_count; i++) {
        const dtnh__rnode *nd = &net->nodes[i];
        int c = net->values[nd->out].c;
        float *w = net->params.w;
        if (w && nd->kind == DTNH__NODE_CONV)
            dtnh_init_kaiming_normal(w + nd->woff, nd->wcount, (size_t)nd->c_out * nd->k * nd->k, &rng);
        if (nd->kind != DTNH__NODE_BN) continue;
        if (w) {
            dtnh_fill(nd->wcount, w + nd->woff, 1.0f);
            dtnh_fill(nd->bcount, w + nd->boff, 0.0f);
        }
        if (net->buffers.values) {
            dtnh_fill((size_t)c, net->buffers.values + nd->buf_off, 0.0f);
            dtnh_fill((size_t)c, net->buffers.values + nd->buf_off + c, 1.0f);
            net->buffers.counts[nd->count_index] = 0;
        }
    }
    dtnh_resnet_init_head(net, dtnh_rng_u32(&rng) | (uint64_t)dtnh_rng_u32(&rng) << 32);
}

DTNHDEF dtnh_status dtnh_resnet_init(dtnh_resnet *net, const dtnh_resnet_config *cfg,
                                     dtnh_arena *persistent, dtnh_error *err) {
    dtnh_arena *a = persistent;
    dtnh_status s;
    size_t mark;
    unsigned roles;
    if (!net || !persistent) return dtnh_fail(err, DTNH_ERR_ARG, "resnet_init: NULL net or arena");
    memset(net, 0, sizeof *net);
    net->cfg = dtnh_resnet_config_def(cfg);
    if ((s = dtnh__resnet_check_config(&net->cfg, err))) return s;
    mark = dtnh_arena_used(a);
    if ((s = dtnh_params_init(&net->params, a, DTNH__RESNET_VIEWS, err)) ||
        (s = dtnh__buffers_init(&net->buffers, a, DTNH__RESNET_BUFFERS, err)))
        return s;
    net->mem_structure = dtnh_arena_used(a) - mark;
    if ((s = dtnh__resnet_build(net, err)) || (s = dtnh__resnet_resolve_hooks(net, err))) return s;
    roles = net->cfg.roles;
    mark = dtnh_arena_used(a);
    if ((s = dtnh_params_alloc(&net->params, a, roles & DTNH_ROLE_W, err))) return s;
    net->mem_weights = dtnh_arena_used(a) - mark;
    mark = dtnh_arena_used(a);
    if ((s = dtnh_params_alloc(&net->params, a, roles & DTNH_ROLE_W_SRC, err))) return s;
    net->mem_source = dtnh_arena_used(a) - mark;
    mark = dtnh_arena_used(a);
    if ((s = dtnh_params_alloc(&net->params, a, roles & (DTNH_ROLE_G_J | DTNH_ROLE_G_OMEGA), err)))
        return s;
    net->mem_gradients = dtnh_arena_used(a) - mark;
    mark = dtnh_arena_used(a);
    if ((s = dtnh__buffers_alloc(&net->buffers, a, err))) return s;
    net->mem_buffers = dtnh_arena_used(a) - mark;
    dtnh__resnet_analyse(net);
    dtnh_resnet_init_weights(net, net->cfg.seed);
    net->weights = net->params.w;
    return DTNH_OK;
}

DTNHDEF dtnh_status dtnh_resnet_set_train(dtnh_resnet *net, dtnh_train train, int stages,
                                          dtnh_error *err) {
    dtnh_resnet_config c;
    dtnh_status s;
    if (!net) return dtnh_fail(err, DTNH_ERR_ARG, "resnet_set_train: NULL net");
    c = net->cfg;
    c.train = train == DTNH_TRAIN_DEFAULT ? DTNH_TRAIN_ALL : train;
    c.train_stages = stages ? stages : 1;
    if ((s = dtnh__resnet_check_config(&c, err))) return s;
    net->cfg.train = c.train;
    net->cfg.train_stages = c.train_stages;
    dtnh__resnet_analyse(net);
    return DTNH_OK;
}

DTNHDEF dtnh_status dtnh_resnet_use_weights(dtnh_resnet *net, const float *w, dtnh_error *err) {
    if (!net || !w) return dtnh_fail(err, DTNH_ERR_ARG, "resnet_use_weights: NULL net or weights");
    net->weights = w;
    net->train_n = 0;
    return DTNH_OK;
}

DTNHDEF dtnh_status dtnh_resnet_copy_buffers(dtnh_resnet *dst, const dtnh_resnet *src,
                                             dtnh_error *err) {
    if (!dst || !src || !dst->buffers.values || !src->buffers.values)
        return dtnh_fail(err, DTNH_ERR_ARG, "resnet_copy_buffers: NULL or counting-built network");
    if (dst->buffers.total != src->buffers.total ||
        dst->buffers.count_total != src->buffers.count_total)
        return dtnh_fail(err, DTNH_ERR_SHAPE,
                         "resnet_copy_buffers: %zu running values in the destination, %zu in the "
                         "source: different widths",
                         dst->buffers.total, src->buffers.total);
    dtnh_copy(src->buffers.total, src->buffers.values, dst->buffers.values);
    memcpy(dst->buffers.counts, src->buffers.counts, src->buffers.count_total * sizeof(int64_t));
    return DTNH_OK;
}

static size_t dtnh__trainable_count(const dtnh_resnet *net) {
    size_t n = 0;
    int i;
    for (i = 0; i < net->node_count; i++)
        n += (net->nodes[i].train_w ? net->nodes[i].wcount : 0) +
             (net->nodes[i].train_b ? net->nodes[i].bcount : 0);
    return n;
}

/* The optimizer's state through dtnh_optim_init itself, on the counting arena: a counting
   build has no views, so it gets a shadow store whose views say what trains. */
static dtnh_status dtnh__plan_optimizer(const dtnh_resnet *net, int vectors, dtnh_arena *a,
                                        dtnh_error *err) {
    dtnh_param_view views[DTNH__RESNET_VIEWS];
    dtnh_params shadow = net->params;
    dtnh_optim_config oc;
    dtnh_optim o;
    int i;
    memset(views, 0, sizeof views);
    memset(&oc, 0, sizeof oc);
    for (i = 0; i < net->node_count; i++) {
        const dtnh__rnode *nd = &net->nodes[i];
        if (nd->wview < 0) continue;
        views[nd->wview].count = nd->wcount;
        views[nd->wview].offset = nd->woff;
        views[nd->wview].trainable = nd->train_w;
        if (!nd->bcount) continue;
        views[nd->wview + 1].count = nd->bcount;
        views[nd->wview + 1].offset = nd->boff;
        views[nd->wview + 1].trainable = nd->train_b;
    }
    shadow.views = views;
    oc.kind = vectors == 2 ? DTNH_OPTIM_ADAM : DTNH_OPTIM_SGD;
    oc.momentum = vectors == 1 ? 0.9 : 0.0;
    return dtnh_optim_init(&o, &oc, &shadow, a, err);
}

DTNHDEF dtnh_status dtnh_resnet_plan_memory(const dtnh_resnet_config *cfg, int optim_vectors,
                                            dtnh_resnet_plan *plan, dtnh_error *err) {
    dtnh_resnet net;
    dtnh_arena pa, sa;
    dtnh_tensor x, logits;
    dtnh_status s;
    size_t mark;
    int shape[4];
    if (!plan || optim_vectors < DTNH_PLAN_NO_OPTIMIZER || optim_vectors > 2)
        return dtnh_fail(err, DTNH_ERR_ARG,
                         "resnet_plan_memory: NULL plan or optim_vectors %d, expected -1..2",
                         optim_vectors);
    memset(plan, 0, sizeof *plan);
    dtnh_arena_init(&pa, NULL, 0);
    if ((s = dtnh_resnet_init(&net, cfg, &pa, err))) return s;
    plan->structure = net.mem_structure;
    plan->weights = net.mem_weights;
    plan->gradients = net.mem_gradients;
    plan->source_copy = net.mem_source;
    plan->buffers = net.mem_buffers;
    plan->params = net.params.total;
    plan->trainable_params = dtnh__trainable_count(&net);
    mark = dtnh_arena_used(&pa);
    if (optim_vectors >= 0 && (s = dtnh__plan_optimizer(&net, optim_vectors, &pa, err))) return s;
    plan->optimizer_state = dtnh_arena_used(&pa) - mark;
    plan->persistent = dtnh_arena_used(&pa);
    shape[0] = net.cfg.max_batch;
    shape[1] = net.cfg.in_channels;
    shape[2] = net.cfg.height;
    shape[3] = net.cfg.width_px;
    if ((s = dtnh_tensor_shape(&x, 4, shape, err))) return s;
    if (net.cfg.train != DTNH_TRAIN_NONE) {
        dtnh_arena_init(&sa, NULL, 0);
        if ((s = dtnh_resnet_forward(&net, &x, &sa, &logits, err)) ||
            (s = dtnh_resnet_backward(&net, NULL, NULL, NULL, 0, err)))
            return s;
        plan->step_train = dtnh_arena_peak(&sa);
        plan->activations = net.kept_floats * (size_t)net.cfg.max_batch * sizeof(float);
        plan->activations_recomputed = net.recomputed_floats * (size_t)net.cfg.max_batch * sizeof(float);
        plan->scratch = plan->step_train - plan->activations;
    }
    dtnh_arena_init(&sa, NULL, 0);
    if ((s = dtnh_resnet_infer(&net, &x, &sa, &logits, err))) return s;
    plan->step_infer = dtnh_arena_peak(&sa);
    return DTNH_OK;
}

/* FLOPs of node i's forward for one sample (0 for the layers that are not GEMMs). */
static double dtnh__node_flops(const dtnh_resnet *net, const dtnh__rnode *nd) {
    const dtnh__rvalue *x = &net->values[nd->in[0]], *y = &net->values[nd->out];
    if (nd->kind == DTNH__NODE_CONV) return 2.0 * x->c * nd->k * nd->k * (double)dtnh__value_floats(y);
    if (nd->kind == DTNH__NODE_LINEAR) return 2.0 * (double)dtnh__value_floats(x) * (double)y->c;
    return 0;
}

DTNHDEF double dtnh_resnet_forward_flops(const dtnh_resnet *net, int n) {
    double f = 0;
    int i;
    for (i = 0; net && i < net->node_count; i++) f += dtnh__node_flops(net, &net->nodes[i]);
    return f * n;
}

DTNHDEF double dtnh_resnet_step_flops(const dtnh_resnet *net, int n) {
    double f = 0;
    int i;
    for (i = 0; net && i < net->node_count; i++) {
        const dtnh__rnode *nd = &net->nodes[i];
        double one = dtnh__node_flops(net, nd);
        f += one;
        if (!net->values[nd->out].needs_grad) continue;
        if (nd->train_w) f += one;
        if (nd->in[0] >= 1 && net->values[nd->in[0]].needs_grad) f += one;
    }
    return f * n;
}

/* ============================================================================================
   ResNet-18: forward and backward
   One step's tensors live in one block of the step arena, at the offsets the plan gave them
   (per sample, times the batch).
   ============================================================================================ */

typedef struct dtnh__run {
    dtnh_resnet *net;
    int mode, n;
    float *block, *stats;
    const float *input;
    float *pgrad;
    int backward;                           /* recomputed values are read from their copy */
    int ginit[DTNH__RESNET_MAX_NODES + 1]; /* backward: the value's gradient holds something */
} dtnh__run;

static float *dtnh__vout(const dtnh__run *r, int v) {
    const dtnh__rvalue *x = &r->net->values[v];
    return r->block + (r->backward && x->recompute ? x->bwd_offset : x->offset[r->mode]) * (size_t)r->n;
}
static const float *dtnh__vin(const dtnh__run *r, int v) {
    return v == 0 ? r->input : dtnh__vout(r, v);
}
static float *dtnh__vgrad(const dtnh__run *r, int v) {
    return r->block + r->net->values[v].grad_offset * (size_t)r->n;
}
static size_t dtnh__vcount(const dtnh__run *r, int v) {
    return dtnh__value_floats(&r->net->values[v]) * (size_t)r->n;
}

static void dtnh__node_geom(const dtnh_resnet *net, const dtnh__rnode *nd, int n, dtnh_conv_geom *g) {
    const dtnh__rvalue *x = &net->values[nd->in[0]], *y = &net->values[nd->out];
    g->n = n;
    g->c_in = x->c;
    g->h = x->h;
    g->w = x->w;
    g->c_out = nd->c_out;
    g->kh = g->kw = nd->k;
    g->stride = nd->stride;
    g->pad = nd->pad;
    g->oh = y->h;
    g->ow = y->w;
    g->winograd = net->cfg.winograd;
}

/* The linear layer goes through the packed GEMM when it is big enough to pay for the
   packing buffers (ImageNet's 1000 classes); a small head runs dtnh_sgemm's plain loops, so
   a small network's step arena holds no GEMM-sized workspace. */
#define DTNH__LINEAR_PACKED_MACS (1u << 20)

static int dtnh__linear_packed(const dtnh_resnet *net, int n) {
    const dtnh__rnode *fc = &net->nodes[net->node_count - 1];
    return (double)n * (double)fc->c_out * (double)dtnh__value_floats(&net->values[fc->in[0]]) >=
           (double)DTNH__LINEAR_PACKED_MACS;
}

static const dtnh_work *dtnh__linear_work(const dtnh_resnet *net) {
    return net->work.bytes >= dtnh_gemm_work_bytes(net->work.threads) ? &net->work : NULL;
}

static size_t dtnh__work_bytes(const dtnh_resnet *net, int n) {
    size_t most = dtnh__linear_packed(net, n) ? dtnh_gemm_work_bytes(net->cfg.threads) : 0;
    int i;
    for (i = 0; i < net->node_count; i++)
        if (net->nodes[i].kind == DTNH__NODE_CONV) {
            dtnh_conv_geom g;
            size_t b;
            dtnh__node_geom(net, &net->nodes[i], n, &g);
            b = dtnh_conv_work_bytes(&g, net->cfg.threads);
            if (b > most) most = b;
        }
    return most;
}

/* Whether a BN normalises with batch statistics in this run (a training forward or its
   backward, statistics not frozen), else with the running ones. */
static int dtnh__bn_batch(const dtnh__run *r, const dtnh__rnode *nd) {
    return r->mode == DTNH__TRAIN && !nd->frozen_stats;
}

/* BN's statistics for this forward, kept in the step's stats: the batch's (mean, invstd,
   unbiased variance, and the running update), else invstd from the running variance. */
static void dtnh__bn_stats(const dtnh__run *r, const dtnh__rnode *nd, const float *x) {
    dtnh_resnet *net = r->net;
    const dtnh__rvalue *v = &net->values[nd->out];
    float *st = r->stats + nd->stats_off, *rm = net->buffers.values + nd->buf_off;
    int c = v->c;
    if (dtnh__bn_batch(r, nd)) {
        dtnh_batchnorm_stats(r->n, c, v->h * v->w, x, DTNH_BN_EPS, st, st + c, st + 2 * c);
        dtnh_batchnorm_update_running(c, st, st + 2 * c, DTNH_BN_MOMENTUM, rm, rm + c,
                                      net->buffers.counts + nd->count_index);
    } else {
        dtnh_batchnorm_eval_invstd(c, rm + c, DTNH_BN_EPS, st + c);
    }
}

/* The mean a BN normalises with (its invstd is always stats + stats_off + C). */
static const float *dtnh__bn_mean(const dtnh__run *r, const dtnh__rnode *nd) {
    return dtnh__bn_batch(r, nd) ? r->stats + nd->stats_off : r->net->buffers.values + nd->buf_off;
}

/* y = BN(x) (+ ReLU) with the statistics dtnh__bn_stats kept: the forward's call, and
   backward's recomputation of a BN output (the same call on the same values: the same bits). */
static void dtnh__bn_apply(const dtnh__run *r, const dtnh__rnode *nd, float *y) {
    const dtnh_resnet *net = r->net;
    const dtnh__rvalue *xv = &net->values[nd->in[0]];
    dtnh_batchnorm_apply(r->n, xv->c, xv->h * xv->w, dtnh__vin(r, nd->in[0]), dtnh__bn_mean(r, nd),
                         r->stats + nd->stats_off + xv->c, net->weights + nd->woff,
                         net->weights + nd->boff, nd->relu, y);
}

static void dtnh__add_relu(size_t count, const float *a, const float *b, float *y) {
    long i, n = (long)count;
    DTNH__OMP(parallel for schedule(static) if (count > DTNH__PAR_MIN))
    for (i = 0; i < n; i++) {
        float v = a[i] + b[i];
        y[i] = v <= 0.0f ? 0.0f : v; /* NaN passes */
    }
}

/* Before node i's backward: the recomputed values whose first reader it is, into their
   copies, by the forward's own calls on the same inputs (the same bits). */
static void dtnh__recompute_reads(const dtnh__run *r, int i) {
    const dtnh_resnet *net = r->net;
    int vals[2], j;
    vals[0] = net->nodes[i].in[0];
    vals[1] = net->nodes[i].out;
    for (j = 0; j < 2; j++) {
        const dtnh__rvalue *x = vals[j] >= 1 ? &net->values[vals[j]] : NULL;
        const dtnh__rnode *nd;
        float *y;
        if (!x || !x->recompute || x->first_reader != i) continue;
        nd = &net->nodes[x->producer];
        y = dtnh__vout(r, vals[j]);
        if (x->recompute == DTNH__REDO_BN) {
            dtnh__bn_apply(r, nd, y);
        } else { /* BN2's output, then the block's input added and ReLU, in place */
            dtnh__bn_apply(r, &net->nodes[net->values[nd->in[0]].producer], y);
            dtnh__add_relu(dtnh__vcount(r, vals[j]), y, dtnh__vin(r, nd->in[1]), y);
        }
    }
}

static void dtnh__node_forward(dtnh__run *r, const dtnh__rnode *nd) {
    const dtnh_resnet *net = r->net;
    const float *W = net->weights, *x = dtnh__vin(r, nd->in[0]);
    const dtnh__rvalue *xv = &net->values[nd->in[0]];
    float *y = dtnh__vout(r, nd->out);
    dtnh_conv_geom g;
    switch (nd->kind) {
    case DTNH__NODE_CONV:
        dtnh__node_geom(net, nd, r->n, &g);
        dtnh_conv2d_forward(&g, x, W + nd->woff, NULL, y, &net->work);
        break;
    case DTNH__NODE_BN:
        dtnh__bn_stats(r, nd, x);
        dtnh__bn_apply(r, nd, y);
        break;
    case DTNH__NODE_RELU: dtnh_relu_forward(dtnh__vcount(r, nd->out), x, y); break;
    case DTNH__NODE_MAXPOOL:
        dtnh_maxpool_forward(r->n, xv->c, xv->h, xv->w, nd->k, nd->stride, nd->pad, x, y);
        break;
    case DTNH__NODE_AVGPOOL: dtnh_avgpool_forward(r->n, xv->c, xv->h * xv->w, x, y); break;
    case DTNH__NODE_LINEAR:
        dtnh_linear_forward(r->n, (int)dtnh__value_floats(xv), nd->c_out, x, W + nd->woff,
                            W + nd->boff, y, dtnh__linear_work(net));
        break;
    case DTNH__NODE_ADD:
        dtnh__add_relu(dtnh__vcount(r, nd->out), x, dtnh__vin(r, nd->in[1]), y);
        break;
    default: DTNH_ASSERT(0);
    }
}

static dtnh_status dtnh__check_input(const dtnh_resnet *net, const dtnh_tensor *x, int counting,
                                     dtnh_error *err) {
    const dtnh_resnet_config *c = &net->cfg;
    if (!x) return dtnh_fail(err, DTNH_ERR_ARG, "resnet forward: NULL input");
    if (x->ndim != 4 || x->shape[1] != c->in_channels || x->shape[2] != c->height ||
        x->shape[3] != c->width_px)
        return dtnh_fail(err, DTNH_ERR_SHAPE,
                         "resnet forward: input of %d dims [%d,%d,%d,%d], expected [n,%d,%d,%d]",
                         x->ndim, x->shape[0], x->shape[1], x->shape[2], x->shape[3],
                         c->in_channels, c->height, c->width_px);
    if (x->shape[0] < 1 || x->shape[0] > c->max_batch)
        return dtnh_fail(err, DTNH_ERR_SHAPE, "resnet forward: batch %d, expected 1..%d (max_batch)",
                         x->shape[0], c->max_batch);
    if (!counting && (!x->data || !net->weights || !net->buffers.values))
        return dtnh_fail(err, DTNH_ERR_ARG,
                         "resnet forward: no input data, no weights (external weights not set?) or "
                         "a network built on a counting arena");
    return DTNH_OK;
}

/* Training mode normalises with batch statistics, which need two or more values per channel. */
static dtnh_status dtnh__check_batch_stats(const dtnh_resnet *net, int n, dtnh_error *err) {
    int i;
    for (i = 0; i < net->node_count; i++) {
        const dtnh__rnode *nd = &net->nodes[i];
        const dtnh__rvalue *v = &net->values[nd->out];
        if (nd->kind == DTNH__NODE_BN && !nd->frozen_stats && (size_t)n * v->h * v->w < 2)
            return dtnh_fail(err, DTNH_ERR_SHAPE,
                             "resnet forward: %s sees %d value per channel (batch %d, %dx%d): "
                             "batch statistics need more than 1",
                             nd->name, n * v->h * v->w, n, v->h, v->w);
    }
    return DTNH_OK;
}

/* Takes the step's memory: statistics, kernel work, the block. */
static dtnh_status dtnh__step_alloc(dtnh_resnet *net, dtnh__run *r, dtnh_arena *step,
                                    dtnh_error *err) {
    size_t floats = 0;
    dtnh_status s;
    if ((s = dtnh_arena_alloc_floats(step, (size_t)net->stats_floats, &r->stats, err)) ||
        (s = dtnh_work_alloc(&net->work, step, dtnh__work_bytes(net, r->n), net->cfg.threads, err)) ||
        (s = dtnh_size_mul(net->block_floats[r->mode], (size_t)r->n, &floats, err)) ||
        (s = dtnh_arena_alloc_floats(step, floats, &r->block, err)))
        return s;
    return DTNH_OK;
}

static dtnh_status dtnh__forward(dtnh_resnet *net, const dtnh_tensor *x, int mode, int mask_hook,
                                 int mask_channel, dtnh_arena *step, dtnh_tensor *logits,
                                 dtnh_error *err) {
    static dtnh__run zero_run;
    dtnh__run r = zero_run;
    int counting, i, h, shape[2];
    dtnh_status s;
    if (!net || !step || !logits)
        return dtnh_fail(err, DTNH_ERR_ARG, "resnet forward: NULL network, arena or logits");
    if (mode == DTNH__TRAIN && net->cfg.train == DTNH_TRAIN_NONE)
        return dtnh_fail(err, DTNH_ERR_ARG,
                         "resnet forward: a training forward on an inference-only network");
    counting = dtnh_arena_is_counting(step);
    if ((s = dtnh__check_input(net, x, counting, err))) return s;
    r.net = net;
    r.mode = mode;
    r.n = x->shape[0];
    r.input = x->data;
    /* A property of the batch, not of the memory: a size query (counting) does not ask it. */
    if (mode == DTNH__TRAIN && !counting && (s = dtnh__check_batch_stats(net, r.n, err))) return s;
    if (mode == DTNH__TRAIN) net->train_n = 0; /* until this forward has succeeded */
    else net->infer_n = 0;
    if ((s = dtnh__step_alloc(net, &r, step, err))) return s;
    for (h = 0; h < net->cfg.hook_count; h++)
        net->hook_data[h] = r.block ? dtnh__vout(&r, net->hook_value[h]) : NULL;
    net->hook_n = r.n;
    shape[0] = r.n;
    shape[1] = net->cfg.num_classes;
    if ((s = dtnh_tensor_view(logits, r.block ? dtnh__vout(&r, net->logits_value) : NULL, 2, shape,
                              err)))
        return s;
    for (i = 0; !counting && i < net->node_count; i++) {
        const dtnh__rnode *nd = &net->nodes[i];
        dtnh__node_forward(&r, nd);
        if (mask_hook >= 0 && nd->out == net->hook_value[mask_hook]) {
            const dtnh__rvalue *v = &net->values[nd->out];
            size_t plane = (size_t)v->h * v->w;
            int b;
            for (b = 0; b < r.n; b++)
                dtnh_fill(plane, dtnh__vout(&r, nd->out) + ((size_t)b * v->c + mask_channel) * plane, 0.0f);
        }
    }
    if (mode == DTNH__TRAIN) {
        net->train_spent = 0;
        net->train_n = r.n;
        net->train_block = r.block;
        net->train_stats = r.stats;
        net->train_input = r.input;
    } else {
        net->infer_n = r.n;
        net->infer_block = r.block;
        net->infer_stats = r.stats;
    }
    return DTNH_OK;
}

DTNHDEF dtnh_status dtnh_resnet_forward(dtnh_resnet *net, const dtnh_tensor *x,
                                        dtnh_arena *step, dtnh_tensor *logits, dtnh_error *err) {
    return dtnh__forward(net, x, DTNH__TRAIN, -1, 0, step, logits, err);
}

DTNHDEF dtnh_status dtnh_resnet_infer(dtnh_resnet *net, const dtnh_tensor *x, dtnh_arena *step,
                                      dtnh_tensor *logits, dtnh_error *err) {
    return dtnh__forward(net, x, DTNH__INFER, -1, 0, step, logits, err);
}

DTNHDEF dtnh_status dtnh_resnet_infer_masked(dtnh_resnet *net, const dtnh_tensor *x, int hook,
                                             int channel, dtnh_arena *step, dtnh_tensor *logits,
                                             dtnh_error *err) {
    if (!net) return dtnh_fail(err, DTNH_ERR_ARG, "resnet_infer_masked: NULL network");
    if (hook < 0 || hook >= net->cfg.hook_count)
        return dtnh_fail(err, DTNH_ERR_ARG, "resnet_infer_masked: hook %d, expected 0..%d", hook,
                         net->cfg.hook_count - 1);
    if (channel < 0 || channel >= net->values[net->hook_value[hook]].c)
        return dtnh_fail(err, DTNH_ERR_ARG, "resnet_infer_masked: channel %d of hook '%s', expected 0..%d",
                         channel, net->hook_name[hook], net->values[net->hook_value[hook]].c - 1);
    return dtnh__forward(net, x, DTNH__INFER, hook, channel, step, logits, err);
}

DTNHDEF dtnh_status dtnh_resnet_rerun_masked(dtnh_resnet *net, int hook, int channel,
                                             dtnh_arena *step, dtnh_tensor *logits,
                                             dtnh_error *err) {
    static dtnh__run zero_run;
    dtnh__run r = zero_run;
    const dtnh__rvalue *v;
    float *saved = NULL, *data;
    size_t plane, mark, b;
    int i, shape[2];
    dtnh_status s;
    if (!net || !step || !logits)
        return dtnh_fail(err, DTNH_ERR_ARG, "resnet_rerun_masked: NULL network, arena or logits");
    if (hook < 0 || hook >= net->cfg.hook_count)
        return dtnh_fail(err, DTNH_ERR_ARG, "resnet_rerun_masked: hook %d, expected 0..%d", hook,
                         net->cfg.hook_count - 1);
    v = &net->values[net->hook_value[hook]];
    if (channel < 0 || channel >= v->c)
        return dtnh_fail(err, DTNH_ERR_ARG, "resnet_rerun_masked: channel %d of hook '%s', expected 0..%d",
                         channel, net->hook_name[hook], v->c - 1);
    if (net->infer_n < 1)
        return dtnh_fail(err, DTNH_ERR_ARG, "resnet_rerun_masked: no inference forward to start from");
    r.net = net;
    r.mode = DTNH__INFER;
    r.n = net->infer_n;
    r.block = net->infer_block;
    r.stats = net->infer_stats;
    plane = (size_t)v->h * (size_t)v->w;
    mark = dtnh_arena_mark(step);
    if ((s = dtnh_arena_alloc_floats(step, (size_t)r.n * plane, &saved, err))) return s;
    shape[0] = r.n;
    shape[1] = net->cfg.num_classes;
    if ((s = dtnh_tensor_view(logits, r.block ? dtnh__vout(&r, net->logits_value) : NULL, 2, shape, err)) ||
        !r.block) {
        dtnh_arena_reset(step, mark);
        return s;
    }
    data = dtnh__vout(&r, net->hook_value[hook]);
    for (b = 0; b < (size_t)r.n; b++) { /* keep the channel, zero it, run the layers above */
        float *ch = data + (b * (size_t)v->c + (size_t)channel) * plane;
        dtnh_copy(plane, ch, saved + b * plane);
        dtnh_fill(plane, ch, 0.0f);
    }
    for (i = v->producer + 1; i < net->node_count; i++) dtnh__node_forward(&r, &net->nodes[i]);
    for (b = 0; b < (size_t)r.n; b++)
        dtnh_copy(plane, saved + b * plane, data + (b * (size_t)v->c + (size_t)channel) * plane);
    dtnh_arena_reset(step, mark);
    return DTNH_OK;
}

/* Adds g into value v's gradient, or copies it there when the gradient holds nothing yet. */
static void dtnh__grad_add(dtnh__run *r, int v, const float *g) {
    if (r->ginit[v]) dtnh_axpy(dtnh__vcount(r, v), 1.0f, g, dtnh__vgrad(r, v));
    else dtnh_copy(dtnh__vcount(r, v), g, dtnh__vgrad(r, v));
    r->ginit[v] = 1;
}

static void dtnh__conv_backward(dtnh__run *r, const dtnh__rnode *nd, const float *dy) {
    const dtnh_resnet *net = r->net;
    int u = nd->in[0];
    dtnh_conv_geom g;
    dtnh__node_geom(net, nd, r->n, &g);
    if (nd->train_w)
        dtnh_conv2d_backward_weights(&g, dtnh__vin(r, u), dy, r->pgrad + nd->woff, NULL, 1, &net->work);
    if (u < 1 || !net->values[u].needs_grad) return;
    if (!r->ginit[u]) {
        dtnh_conv2d_backward_data(&g, dy, net->weights + nd->woff, dtnh__vgrad(r, u), &net->work);
        r->ginit[u] = 1;
    } else { /* the kernel overwrites: go through the temporary */
        float *t = r->block + nd->temp_offset * (size_t)r->n;
        DTNH_ASSERT(nd->has_temp);
        dtnh_conv2d_backward_data(&g, dy, net->weights + nd->woff, t, &net->work);
        dtnh_axpy(dtnh__vcount(r, u), 1.0f, t, dtnh__vgrad(r, u));
    }
}

static void dtnh__bn_backward(dtnh__run *r, const dtnh__rnode *nd, const float *dy) {
    const dtnh_resnet *net = r->net;
    const dtnh__rvalue *xv = &net->values[nd->in[0]];
    const float *st = r->stats + nd->stats_off;
    int u = nd->in[0], dx = xv->needs_grad;
    DTNH_ASSERT(!dx || !r->ginit[u] || xv->grad_offset == net->values[nd->out].grad_offset);
    dtnh_batchnorm_backward(r->n, xv->c, xv->h * xv->w, xv->kept ? dtnh__vin(r, u) : NULL,
                            nd->relu ? dtnh__vout(r, nd->out) : NULL, dy,
                            dtnh__bn_mean(r, nd), st + xv->c, net->weights + nd->woff,
                            dtnh__bn_batch(r, nd), dx ? dtnh__vgrad(r, u) : NULL,
                            nd->train_w ? r->pgrad + nd->woff : NULL,
                            nd->train_b ? r->pgrad + nd->boff : NULL, 1);
    if (dx) r->ginit[u] = 1;
}

/* The add's output gradient, masked by its ReLU in place, goes to both inputs; the first input
   shares its buffer when the plan made it so (same offset). */
static void dtnh__add_backward(dtnh__run *r, const dtnh__rnode *nd, float *dy) {
    const dtnh_resnet *net = r->net;
    int j;
    dtnh_relu_backward(dtnh__vcount(r, nd->out), dtnh__vout(r, nd->out), dy, dy);
    for (j = 0; j < 2; j++) {
        int u = nd->in[j];
        if (u < 1 || !net->values[u].needs_grad) continue;
        if (net->values[u].grad_offset == net->values[nd->out].grad_offset) r->ginit[u] = 1;
        else dtnh__grad_add(r, u, dy);
    }
}

static void dtnh__node_backward(dtnh__run *r, const dtnh__rnode *nd) {
    const dtnh_resnet *net = r->net;
    const dtnh__rvalue *xv = &net->values[nd->in[0]];
    int u = nd->in[0], dx = u >= 1 && xv->needs_grad;
    float *dy = dtnh__vgrad(r, nd->out);
    switch (nd->kind) {
    case DTNH__NODE_CONV: dtnh__conv_backward(r, nd, dy); break;
    case DTNH__NODE_BN: dtnh__bn_backward(r, nd, dy); break;
    case DTNH__NODE_ADD: dtnh__add_backward(r, nd, dy); break;
    case DTNH__NODE_RELU:
        if (dx) dtnh_relu_backward(dtnh__vcount(r, u), dtnh__vout(r, nd->out), dy, dtnh__vgrad(r, u));
        break;
    case DTNH__NODE_MAXPOOL:
        if (dx)
            dtnh_maxpool_backward(r->n, xv->c, xv->h, xv->w, nd->k, nd->stride, nd->pad,
                                  dtnh__vin(r, u), dy, dtnh__vgrad(r, u));
        break;
    case DTNH__NODE_AVGPOOL:
        if (dx) dtnh_avgpool_backward(r->n, xv->c, xv->h * xv->w, dy, dtnh__vgrad(r, u));
        break;
    case DTNH__NODE_LINEAR:
        if (nd->train_w || nd->train_b)
            dtnh_linear_backward_weights(r->n, (int)dtnh__value_floats(xv), nd->c_out,
                                         nd->train_w ? dtnh__vin(r, u) : NULL, dy,
                                         nd->train_w ? r->pgrad + nd->woff : NULL,
                                         nd->train_b ? r->pgrad + nd->boff : NULL, 1,
                                         dtnh__linear_work(net));
        if (dx)
            dtnh_linear_backward_data(r->n, (int)dtnh__value_floats(xv), nd->c_out, dy,
                                      net->weights + nd->woff, dtnh__vgrad(r, u), r->ginit[u],
                                      dtnh__linear_work(net));
        break;
    default: DTNH_ASSERT(0);
    }
    if (dx) r->ginit[u] = 1;
}

static void dtnh__zero_trainable(const dtnh_resnet *net, float *pgrad) {
    int i;
    for (i = 0; i < net->node_count; i++) {
        const dtnh__rnode *nd = &net->nodes[i];
        if (nd->train_w) dtnh_fill(nd->wcount, pgrad + nd->woff, 0.0f);
        if (nd->train_b) dtnh_fill(nd->bcount, pgrad + nd->boff, 0.0f);
    }
}

DTNHDEF dtnh_status dtnh_resnet_backward(dtnh_resnet *net, const float *dlogits,
                                         const float *const *hook_grads, float *param_grad,
                                         int accumulate, dtnh_error *err) {
    static dtnh__run zero_run;
    dtnh__run r = zero_run;
    int i, h;
    if (!net) return dtnh_fail(err, DTNH_ERR_ARG, "resnet_backward: NULL network");
    if (net->train_n < 1)
        return dtnh_fail(err, DTNH_ERR_ARG,
                         "resnet_backward: no training forward to go back through (none yet, it "
                         "failed, or the network changed since)");
    if (net->cfg.single_backward && net->train_spent)
        return dtnh_fail(err, DTNH_ERR_ARG,
                         "resnet_backward: single_backward is set and this forward's tensors were "
                         "used up by the backward before");
    net->train_spent = 1;
    if (!net->train_block) return DTNH_OK; /* the forward only counted */
    r.pgrad = param_grad ? param_grad : net->params.g_j;
    if (!r.pgrad)
        return dtnh_fail(err, DTNH_ERR_ARG, "resnet_backward: no param_grad and no g_j vector");
    r.net = net;
    r.mode = DTNH__TRAIN;
    r.n = net->train_n;
    r.block = net->train_block;
    r.stats = net->train_stats;
    r.input = net->train_input;
    r.backward = 1;
    if (!accumulate) dtnh__zero_trainable(net, r.pgrad);
    if (dlogits && net->values[net->logits_value].needs_grad) dtnh__grad_add(&r, net->logits_value, dlogits);
    for (i = net->node_count - 1; i >= 0; i--) {
        const dtnh__rnode *nd = &net->nodes[i];
        if (!net->values[nd->out].needs_grad) continue;
        dtnh__recompute_reads(&r, i);
        for (h = 0; hook_grads && h < net->cfg.hook_count; h++)
            if (hook_grads[h] && net->hook_value[h] == nd->out) dtnh__grad_add(&r, nd->out, hook_grads[h]);
        if (r.ginit[nd->out]) dtnh__node_backward(&r, nd);
    }
    return DTNH_OK;
}

/* ============================================================================================
   ResNet-18: hooks and the state_dict
   ============================================================================================ */

DTNHDEF int dtnh_resnet_hook_index(const dtnh_resnet *net, const char *name) {
    int h;
    if (!net || !name) return -1;
    for (h = 0; h < net->cfg.hook_count; h++)
        if (strcmp(net->hook_name[h], name) == 0) return h;
    return -1;
}

DTNHDEF dtnh_status dtnh_resnet_hook_shape(const dtnh_resnet *net, int hook, int *c, int *h,
                                           int *w, dtnh_error *err) {
    const dtnh__rvalue *v;
    if (!net || !c || !h || !w) return dtnh_fail(err, DTNH_ERR_ARG, "resnet_hook_shape: NULL argument");
    if (hook < 0 || hook >= net->cfg.hook_count)
        return dtnh_fail(err, DTNH_ERR_ARG, "resnet_hook_shape: hook %d, expected 0..%d", hook,
                         net->cfg.hook_count - 1);
    v = &net->values[net->hook_value[hook]];
    *c = v->c;
    *h = v->h;
    *w = v->w;
    return DTNH_OK;
}

DTNHDEF dtnh_status dtnh_resnet_hook_output(const dtnh_resnet *net, int hook, dtnh_tensor *out,
                                            dtnh_error *err) {
    const dtnh__rvalue *v;
    int shape[4];
    if (!net || !out) return dtnh_fail(err, DTNH_ERR_ARG, "resnet_hook_output: NULL argument");
    if (hook < 0 || hook >= net->cfg.hook_count)
        return dtnh_fail(err, DTNH_ERR_ARG, "resnet_hook_output: hook %d, expected 0..%d", hook,
                         net->cfg.hook_count - 1);
    v = &net->values[net->hook_value[hook]];
    shape[0] = net->hook_n ? net->hook_n : net->cfg.max_batch;
    shape[1] = v->c;
    shape[2] = v->h;
    shape[3] = v->w;
    return dtnh_tensor_view(out, net->hook_data[hook], 4, shape, err);
}

DTNHDEF int dtnh_resnet_state_count(const dtnh_resnet *net) { return net ? net->state_count : 0; }

DTNHDEF dtnh_status dtnh_resnet_state_entry(const dtnh_resnet *net, int i, dtnh_state_entry *e,
                                            dtnh_error *err) {
    int k;
    if (e) { /* cleared first, so a failed call leaves no stale fields */
        memset(e, 0, sizeof *e);
        e->param = e->buffer = -1;
    }
    if (!net || !e) return dtnh_fail(err, DTNH_ERR_ARG, "resnet_state_entry: NULL argument");
    if (i < 0 || i >= net->state_count)
        return dtnh_fail(err, DTNH_ERR_ARG, "resnet_state_entry: entry %d, expected 0..%d", i,
                         net->state_count - 1);
    if (!net->params.views || !net->buffers.views)
        return dtnh_fail(err, DTNH_ERR_ARG, "resnet_state_entry: network built on a counting arena");
    if (net->state_kind[i] == 0) {
        const dtnh_param_view *v = &net->params.views[net->state_index[i]];
        e->name = v->name;
        e->ndim = v->ndim;
        for (k = 0; k < DTNH_MAX_DIMS; k++) e->shape[k] = v->shape[k];
        e->count = v->count;
        e->f32 = net->params.w ? net->params.w + v->offset : NULL;
        e->param = net->state_index[i];
    } else {
        const dtnh_buffer_view *v = &net->buffers.views[net->state_index[i]];
        e->name = v->name;
        e->ndim = v->ndim;
        for (k = 0; k < DTNH_MAX_DIMS; k++) e->shape[k] = v->shape[k];
        e->count = v->count;
        if (v->is_count) e->i64 = net->buffers.counts + v->offset;
        else e->f32 = net->buffers.values + v->offset;
        e->buffer = net->state_index[i];
    }
    return DTNH_OK;
}

DTNHDEF int dtnh_resnet_state_find(const dtnh_resnet *net, const char *name) {
    dtnh_state_entry e;
    int i;
    for (i = 0; net && name && i < net->state_count; i++)
        if (dtnh_resnet_state_entry(net, i, &e, NULL) == DTNH_OK && strcmp(e.name, name) == 0)
            return i;
    return -1;
}
/* ---- safetensors ----------------------------------------------------------------------------
   A strict reader (every malformed header is an error naming the tensor, never a crash) and
   a writer that produces what the reference implementation produces. */

#ifndef DTNH_NO_STDIO
#include <limits.h>
#include <stdio.h>
#if !defined(DTNH_NO_FSYNC) && (defined(__unix__) || defined(__APPLE__))
#define DTNH__ST_FSYNC 1
#ifdef __cplusplus
#include <unistd.h>
#else
/* POSIX, declared here because a strict -std=c99 build hides them in the system headers;
   the parentheses keep a libc that defines fileno as a macro happy. */
extern int fsync(int fd);
extern int(fileno)(FILE *stream);
#endif
#endif
#endif

#define DTNH__ST_CHUNK 4096
#define DTNH__ST_PATH_MAX 4096
/* The shortest text an accepted entry or metadata pair can take (see dtnh__st_bounds). */
#define DTNH__ST_MIN_ENTRY_CHARS 50
#define DTNH__ST_MIN_META_CHARS 6

static const char *const dtnh__st_dtype_names[4] = {"F32", "F16", "BF16", "I64"};
static const unsigned char dtnh__st_dtype_sizes[4] = {4, 2, 2, 8};

DTNHDEF const char *dtnh_st_dtype_name(dtnh_st_dtype t) {
    return (unsigned)t < 4 ? dtnh__st_dtype_names[t] : "?";
}

DTNHDEF size_t dtnh_st_dtype_size(dtnh_st_dtype t) {
    return (unsigned)t < 4 ? dtnh__st_dtype_sizes[t] : 0;
}

/* ---- safetensors: number conversions (little-endian on disk, whatever the host) ---------- */

static uint64_t dtnh__st_load_le(const unsigned char *b, int bytes) {
    uint64_t v = 0;
    int i;
    for (i = bytes - 1; i >= 0; i--) v = (v << 8) | b[i];
    return v;
}

static void dtnh__st_store_le(unsigned char *b, uint64_t v, int bytes) {
    int i;
    for (i = 0; i < bytes; i++, v >>= 8) b[i] = (unsigned char)(v & 0xFF);
}

static float dtnh__st_bits_to_float(uint32_t u) {
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

static uint32_t dtnh__st_float_to_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

/* IEEE half to float, exact (subnormals normalised, Inf and NaN kept). */
static float dtnh__st_half_to_float(unsigned h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 31u, man = h & 1023u;
    uint32_t e = 113;
    if (exp == 31) return dtnh__st_bits_to_float(sign | 0x7F800000u | (man << 13));
    if (exp != 0) return dtnh__st_bits_to_float(sign | ((exp + 112) << 23) | (man << 13));
    if (man == 0) return dtnh__st_bits_to_float(sign);
    while (!(man & 0x400u)) {
        man <<= 1;
        e--;
    }
    return dtnh__st_bits_to_float(sign | (e << 23) | ((man & 0x3FFu) << 13));
}

/* Float to IEEE half, rounding to nearest even; too large becomes Inf, NaN stays NaN. */
static unsigned dtnh__st_float_to_half(float x) {
    uint32_t u = dtnh__st_float_to_bits(x), a = u & 0x7FFFFFFFu;
    unsigned sign = (unsigned)(u >> 16) & 0x8000u;
    if (a > 0x7F800000u) return sign | 0x7E00u;
    if (a >= 0x477FF000u) return sign | 0x7C00u; /* 65520 and up round to Inf */
    if (a < 0x38800000u) {                       /* below 2^-14: a half subnormal */
        uint32_t e = a >> 23, m = (a & 0x7FFFFFu) | 0x800000u, shift, q, rem, half;
        if (e < 102) return sign; /* below 2^-25: rounds to zero */
        shift = 126 - e;
        q = m >> shift;
        rem = m & ((1u << shift) - 1);
        half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1))) q++;
        return sign | (unsigned)q;
    }
    return sign | (unsigned)((a - 0x38000000u + 0xFFFu + ((a >> 13) & 1u)) >> 13);
}

/* Float to bfloat16, rounding to nearest even; NaN stays NaN. */
static unsigned dtnh__st_float_to_bf16(float x) {
    uint32_t u = dtnh__st_float_to_bits(x);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (unsigned)(u >> 16) | 0x40u;
    return (unsigned)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

/* n elements of dtype t from little-endian bytes into outf (float types) or outi (I64). */
static void dtnh__st_decode(dtnh_st_dtype t, const unsigned char *b, size_t n, float *outf,
                            int64_t *outi) {
    size_t i;
    for (i = 0; i < n; i++) {
        switch (t) {
        case DTNH_ST_F32: outf[i] = dtnh__st_bits_to_float((uint32_t)dtnh__st_load_le(b + 4 * i, 4)); break;
        case DTNH_ST_F16: outf[i] = dtnh__st_half_to_float((unsigned)dtnh__st_load_le(b + 2 * i, 2)); break;
        case DTNH_ST_BF16: outf[i] = dtnh__st_bits_to_float((uint32_t)dtnh__st_load_le(b + 2 * i, 2) << 16); break;
        case DTNH_ST_I64: {
            uint64_t v = dtnh__st_load_le(b + 8 * i, 8);
            memcpy(&outi[i], &v, sizeof v);
            break;
        }
        }
    }
}

/* n elements into little-endian bytes of dtype t. */
static void dtnh__st_encode(dtnh_st_dtype t, const float *inf, const int64_t *ini, size_t n,
                            unsigned char *b) {
    size_t i;
    for (i = 0; i < n; i++) {
        switch (t) {
        case DTNH_ST_F32: dtnh__st_store_le(b + 4 * i, dtnh__st_float_to_bits(inf[i]), 4); break;
        case DTNH_ST_F16: dtnh__st_store_le(b + 2 * i, dtnh__st_float_to_half(inf[i]), 2); break;
        case DTNH_ST_BF16: dtnh__st_store_le(b + 2 * i, dtnh__st_float_to_bf16(inf[i]), 2); break;
        case DTNH_ST_I64: {
            uint64_t v;
            memcpy(&v, &ini[i], sizeof v);
            dtnh__st_store_le(b + 8 * i, v, 8);
            break;
        }
        }
    }
}

/* ---- safetensors: the JSON header parser -------------------------------------------------
   Only what a safetensors header holds: one object of tensor entries and "__metadata__".
   Strings are decoded in place (decoding never lengthens them) and NUL-terminated. */

typedef struct dtnh__st_parser {
    char *s; /* the header text, with a NUL after its end */
    size_t pos, len;
    const char *tensor; /* the entry being parsed, for messages */
    dtnh_error *err;
} dtnh__st_parser;

static dtnh_status dtnh__st_syntax(const dtnh__st_parser *p, const char *what) {
    if (p->tensor)
        return dtnh_fail(p->err, DTNH_ERR_FORMAT, "safetensors header, byte %zu, tensor '%s': %s",
                         p->pos, p->tensor, what);
    return dtnh_fail(p->err, DTNH_ERR_FORMAT, "safetensors header, byte %zu: %s", p->pos, what);
}

static void dtnh__st_ws(dtnh__st_parser *p) {
    while (p->pos < p->len && (p->s[p->pos] == ' ' || p->s[p->pos] == '\t' ||
                               p->s[p->pos] == '\n' || p->s[p->pos] == '\r'))
        p->pos++;
}

/* Skips white space, then expects the character c. */
static dtnh_status dtnh__st_expect(dtnh__st_parser *p, char c, const char *what) {
    dtnh__st_ws(p);
    if (p->pos >= p->len || p->s[p->pos] != c) return dtnh__st_syntax(p, what);
    p->pos++;
    return DTNH_OK;
}

/* After an item of an object or array: 1 on ',', 0 on the closing character, -1 otherwise. */
static int dtnh__st_next_item(dtnh__st_parser *p, char close) {
    dtnh__st_ws(p);
    if (p->pos < p->len && p->s[p->pos] == ',') {
        p->pos++;
        return 1;
    }
    if (p->pos < p->len && p->s[p->pos] == close) {
        p->pos++;
        return 0;
    }
    return -1;
}

static int dtnh__st_hex4(const dtnh__st_parser *p, size_t at, unsigned *out) {
    unsigned v = 0;
    size_t i;
    if (at + 4 > p->len) return 0;
    for (i = at; i < at + 4; i++) {
        char c = p->s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
              : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0) return 0;
        v = v * 16 + (unsigned)d;
    }
    *out = v;
    return 1;
}

/* Decodes the \u escape at p->pos (surrogate pairs joined) into UTF-8 at *dst. */
static dtnh_status dtnh__st_unicode_escape(dtnh__st_parser *p, char **dst) {
    unsigned cp, lo;
    char *d = *dst;
    if (!dtnh__st_hex4(p, p->pos + 2, &cp)) return dtnh__st_syntax(p, "bad \\u escape");
    p->pos += 6;
    if (cp >= 0xDC00 && cp <= 0xDFFF) return dtnh__st_syntax(p, "lone low surrogate in \\u escape");
    if (cp >= 0xD800 && cp <= 0xDBFF) {
        if (p->pos + 1 >= p->len || p->s[p->pos] != '\\' || p->s[p->pos + 1] != 'u' ||
            !dtnh__st_hex4(p, p->pos + 2, &lo) || lo < 0xDC00 || lo > 0xDFFF)
            return dtnh__st_syntax(p, "high surrogate without its low half in \\u escape");
        p->pos += 6;
        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
    }
    if (cp == 0) return dtnh__st_syntax(p, "\\u0000 in a string");
    if (cp < 0x80) {
        *d++ = (char)cp;
    } else if (cp < 0x800) {
        *d++ = (char)(0xC0 | (cp >> 6));
        *d++ = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        *d++ = (char)(0xE0 | (cp >> 12));
        *d++ = (char)(0x80 | ((cp >> 6) & 0x3F));
        *d++ = (char)(0x80 | (cp & 0x3F));
    } else {
        *d++ = (char)(0xF0 | (cp >> 18));
        *d++ = (char)(0x80 | ((cp >> 12) & 0x3F));
        *d++ = (char)(0x80 | ((cp >> 6) & 0x3F));
        *d++ = (char)(0x80 | (cp & 0x3F));
    }
    *dst = d;
    return DTNH_OK;
}

/* Length of the valid UTF-8 sequence at s[pos] (lead byte >= 0x80), or 0 when invalid. */
static size_t dtnh__st_utf8_len(const dtnh__st_parser *p) {
    const unsigned char *b = (const unsigned char *)p->s + p->pos;
    size_t left = p->len - p->pos, n, i;
    unsigned lo = 0x80, hi = 0xBF;
    if (b[0] >= 0xC2 && b[0] <= 0xDF) n = 2;
    else if (b[0] >= 0xE0 && b[0] <= 0xEF) n = 3;
    else if (b[0] >= 0xF0 && b[0] <= 0xF4) n = 4;
    else return 0;
    if (n > left) return 0;
    if (b[0] == 0xE0) lo = 0xA0; /* no overlong forms */
    if (b[0] == 0xED) hi = 0x9F; /* no surrogates */
    if (b[0] == 0xF0) lo = 0x90;
    if (b[0] == 0xF4) hi = 0x8F; /* nothing past U+10FFFF */
    if (b[1] < lo || b[1] > hi) return 0;
    for (i = 2; i < n; i++)
        if (b[i] < 0x80 || b[i] > 0xBF) return 0;
    return n;
}

/* Parses a string at p->pos; *out points at its decoded, NUL-terminated text in place. */
static dtnh_status dtnh__st_string(dtnh__st_parser *p, char **out) {
    char *dst;
    dtnh__st_ws(p);
    if (p->pos >= p->len || p->s[p->pos] != '"') return dtnh__st_syntax(p, "expected a string");
    dst = *out = p->s + ++p->pos;
    for (;;) {
        unsigned char c;
        if (p->pos >= p->len) return dtnh__st_syntax(p, "unterminated string");
        c = (unsigned char)p->s[p->pos];
        if (c == '"') {
            p->pos++;
            *dst = '\0';
            return DTNH_OK;
        } else if (c < 0x20) {
            return dtnh__st_syntax(p, "control character in a string");
        } else if (c == '\\') {
            static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
            const char *hit = p->pos + 1 < p->len ? strchr(from, p->s[p->pos + 1]) : NULL;
            if (p->pos + 1 < p->len && p->s[p->pos + 1] == 'u') {
                dtnh_status s = dtnh__st_unicode_escape(p, &dst);
                if (s) return s;
            } else if (hit && *hit) {
                *dst++ = to[hit - from];
                p->pos += 2;
            } else {
                return dtnh__st_syntax(p, "bad escape in a string");
            }
        } else if (c < 0x80) {
            *dst++ = (char)c;
            p->pos++;
        } else {
            size_t n = dtnh__st_utf8_len(p);
            if (!n) return dtnh__st_syntax(p, "invalid UTF-8 in a string");
            while (n--) *dst++ = p->s[p->pos++];
        }
    }
}

/* A non-negative JSON integer that fits 64 bits. */
static dtnh_status dtnh__st_u64(dtnh__st_parser *p, uint64_t *out) {
    uint64_t v = 0;
    size_t start;
    dtnh__st_ws(p);
    start = p->pos;
    while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') {
        unsigned d = (unsigned)(p->s[p->pos] - '0');
        if (v > (UINT64_MAX - d) / 10) return dtnh__st_syntax(p, "integer does not fit 64 bits");
        v = v * 10 + d;
        p->pos++;
    }
    if (p->pos == start) return dtnh__st_syntax(p, "expected a non-negative integer");
    if (p->s[start] == '0' && p->pos - start > 1) return dtnh__st_syntax(p, "integer with a leading zero");
    if (p->pos < p->len && (p->s[p->pos] == '.' || p->s[p->pos] == 'e' || p->s[p->pos] == 'E'))
        return dtnh__st_syntax(p, "expected an integer, found a fraction or an exponent");
    *out = v;
    return DTNH_OK;
}

/* An array of at most max non-negative integers; *n gets how many. */
static dtnh_status dtnh__st_u64_array(dtnh__st_parser *p, uint64_t *v, int max, int *n) {
    dtnh_status s;
    int more;
    *n = 0;
    if ((s = dtnh__st_expect(p, '[', "expected '['"))) return s;
    dtnh__st_ws(p);
    if (p->pos < p->len && p->s[p->pos] == ']') {
        p->pos++;
        return DTNH_OK;
    }
    do {
        if (*n == max) return dtnh__st_syntax(p, "array too long");
        if ((s = dtnh__st_u64(p, &v[(*n)++]))) return s;
        more = dtnh__st_next_item(p, ']');
        if (more < 0) return dtnh__st_syntax(p, "expected ',' or ']' in an array");
    } while (more);
    return DTNH_OK;
}

static dtnh_status dtnh__st_dtype_field(dtnh__st_parser *p, dtnh_st_entry *e) {
    char *name;
    int t;
    dtnh_status s = dtnh__st_string(p, &name);
    if (s) return s;
    for (t = 0; t < 4; t++)
        if (strcmp(name, dtnh__st_dtype_names[t]) == 0) {
            e->dtype = (dtnh_st_dtype)t;
            return DTNH_OK;
        }
    return dtnh_fail(p->err, DTNH_ERR_FORMAT,
                     "safetensors tensor '%s': dtype '%s' is not supported (F32, F16, BF16, I64)",
                     p->tensor, name);
}

/* The object {"dtype": .., "shape": [..], "data_offsets": [begin, end]} of one tensor. */
static dtnh_status dtnh__st_entry(dtnh__st_parser *p, dtnh_st_entry *e) {
    int seen_dtype = 0, seen_shape = 0, seen_offsets = 0, more, n;
    uint64_t off[2];
    dtnh_status s;
    if ((s = dtnh__st_expect(p, '{', "expected '{' opening the tensor's entry"))) return s;
    do {
        char *key;
        if ((s = dtnh__st_string(p, &key))) return s;
        if ((s = dtnh__st_expect(p, ':', "expected ':' after a key"))) return s;
        if (strcmp(key, "dtype") == 0 && !seen_dtype++) {
            s = dtnh__st_dtype_field(p, e);
        } else if (strcmp(key, "shape") == 0 && !seen_shape++) {
            s = dtnh__st_u64_array(p, e->shape, DTNH_ST_MAX_DIMS, &e->ndim);
        } else if (strcmp(key, "data_offsets") == 0 && !seen_offsets++) {
            s = dtnh__st_u64_array(p, off, 2, &n);
            if (!s && n != 2) s = dtnh__st_syntax(p, "data_offsets must hold 2 integers");
            e->begin = off[0];
            e->end = off[1];
        } else {
            return dtnh__st_syntax(p, "unknown or repeated key in the tensor's entry");
        }
        if (s) return s;
        more = dtnh__st_next_item(p, '}');
        if (more < 0) return dtnh__st_syntax(p, "expected ',' or '}' in the tensor's entry");
    } while (more);
    if (!seen_dtype || !seen_shape || !seen_offsets)
        return dtnh__st_syntax(p, "entry lacks dtype, shape or data_offsets");
    return DTNH_OK;
}

static dtnh_status dtnh__st_metadata(dtnh__st_parser *p, dtnh_st_file *f, int max) {
    dtnh_status s;
    int more;
    if ((s = dtnh__st_expect(p, '{', "expected '{' opening __metadata__"))) return s;
    dtnh__st_ws(p);
    if (p->pos < p->len && p->s[p->pos] == '}') {
        p->pos++;
        return DTNH_OK;
    }
    do {
        char *key, *value;
        if ((s = dtnh__st_string(p, &key))) return s;
        if ((s = dtnh__st_expect(p, ':', "expected ':' in __metadata__"))) return s;
        if ((s = dtnh__st_string(p, &value))) return s; /* the format allows strings only */
        if (f->meta_count >= max) return dtnh__st_syntax(p, "too many metadata pairs");
        f->meta[f->meta_count].key = key;
        f->meta[f->meta_count++].value = value;
        more = dtnh__st_next_item(p, '}');
        if (more < 0) return dtnh__st_syntax(p, "expected ',' or '}' in __metadata__");
    } while (more);
    return DTNH_OK;
}

/* The top-level object. */
static dtnh_status dtnh__st_parse(dtnh__st_parser *p, dtnh_st_file *f, int max_entries,
                                  int max_meta) {
    int seen_meta = 0, more;
    dtnh_status s;
    if ((s = dtnh__st_expect(p, '{', "expected '{' opening the header"))) return s;
    dtnh__st_ws(p);
    if (p->pos < p->len && p->s[p->pos] == '}') {
        p->pos++;
        more = 0;
    } else {
        do {
            char *name;
            if ((s = dtnh__st_string(p, &name))) return s;
            if ((s = dtnh__st_expect(p, ':', "expected ':' after a tensor name"))) return s;
            if (strcmp(name, "__metadata__") == 0) {
                if (seen_meta++) return dtnh__st_syntax(p, "__metadata__ appears twice");
                s = dtnh__st_metadata(p, f, max_meta);
            } else {
                dtnh_st_entry *e;
                if (f->count >= max_entries) return dtnh__st_syntax(p, "too many tensors");
                e = &f->entries[f->count];
                memset(e, 0, sizeof *e);
                e->name = name;
                p->tensor = name;
                s = dtnh__st_entry(p, e);
                p->tensor = NULL;
                f->count++;
            }
            if (s) return s;
            more = dtnh__st_next_item(p, '}');
            if (more < 0) return dtnh__st_syntax(p, "expected ',' or '}' after a tensor");
        } while (more);
    }
    dtnh__st_ws(p);
    if (p->pos != p->len) return dtnh__st_syntax(p, "text after the header's closing '}'");
    return DTNH_OK;
}

/* ---- safetensors: checks after parsing --------------------------------------------------- */

/* Element count and byte size of e, failing when they overflow. */
static dtnh_status dtnh__st_entry_size(dtnh_st_entry *e, uint64_t *bytes, dtnh_error *err) {
    uint64_t n = 1, es = dtnh__st_dtype_sizes[e->dtype];
    int d, overflow = 0;
    for (d = 0; d < e->ndim; d++) {
        if (e->shape[d] != 0 && n > UINT64_MAX / e->shape[d]) overflow = 1;
        n *= e->shape[d];
    }
    for (d = 0; d < e->ndim; d++) {
        if (e->shape[d] != 0) continue;
        overflow = 0; /* empty, whatever the other dimensions */
        n = 0;
    }
    if (overflow || n > UINT64_MAX / es || n * es > (uint64_t)(size_t)-1)
        return dtnh_fail(err, DTNH_ERR_FORMAT, "safetensors tensor '%s': its shape of %d "
                         "dimensions overflows the byte count", e->name, e->ndim);
    e->count = n;
    *bytes = n * es;
    return DTNH_OK;
}

static dtnh_status dtnh__st_check_offsets(dtnh_st_entry *e, uint64_t data_bytes, dtnh_error *err) {
    uint64_t bytes = 0;
    dtnh_status s = dtnh__st_entry_size(e, &bytes, err);
    if (s) return s;
    if (e->begin > e->end)
        return dtnh_fail(err, DTNH_ERR_FORMAT, "safetensors tensor '%s': data_offsets [%llu, %llu] "
                         "run backwards", e->name, (unsigned long long)e->begin, (unsigned long long)e->end);
    if (e->end > data_bytes)
        return dtnh_fail(err, DTNH_ERR_FORMAT, "safetensors tensor '%s': data_offsets [%llu, %llu] "
                         "leave the data section of %llu bytes", e->name, (unsigned long long)e->begin,
                         (unsigned long long)e->end, (unsigned long long)data_bytes);
    if (e->end - e->begin != bytes)
        return dtnh_fail(err, DTNH_ERR_FORMAT, "safetensors tensor '%s': data_offsets [%llu, %llu] "
                         "hold %llu bytes, dtype %s x shape needs %llu", e->name,
                         (unsigned long long)e->begin, (unsigned long long)e->end,
                         (unsigned long long)(e->end - e->begin), dtnh__st_dtype_names[e->dtype],
                         (unsigned long long)bytes);
    return DTNH_OK;
}

typedef int (*dtnh__st_cmp)(const dtnh_st_entry *e, int a, int b);

static int dtnh__st_by_name(const dtnh_st_entry *e, int a, int b) {
    return strcmp(e[a].name, e[b].name);
}

static int dtnh__st_by_offset(const dtnh_st_entry *e, int a, int b) {
    if (e[a].begin != e[b].begin) return e[a].begin < e[b].begin ? -1 : 1;
    if (e[a].end != e[b].end) return e[a].end < e[b].end ? -1 : 1;
    return 0;
}

/* Heap sort of an index array: O(n log n) with no memory, whatever a hostile header holds. */
static void dtnh__st_sift(int *idx, int root, int n, const dtnh_st_entry *e, dtnh__st_cmp cmp) {
    for (;;) {
        int child = 2 * root + 1, t;
        if (child >= n) return;
        if (child + 1 < n && cmp(e, idx[child], idx[child + 1]) < 0) child++;
        if (cmp(e, idx[root], idx[child]) >= 0) return;
        t = idx[root];
        idx[root] = idx[child];
        idx[child] = t;
        root = child;
    }
}

static void dtnh__st_sort(int *idx, int n, const dtnh_st_entry *e, dtnh__st_cmp cmp) {
    int i, t;
    for (i = 0; i < n; i++) idx[i] = i;
    for (i = n / 2 - 1; i >= 0; i--) dtnh__st_sift(idx, i, n, e, cmp);
    for (i = n - 1; i > 0; i--) {
        t = idx[0];
        idx[0] = idx[i];
        idx[i] = t;
        dtnh__st_sift(idx, 0, i, e, cmp);
    }
}

/* Unique names; tensors that tile the data section with no overlap and no gap. */
static dtnh_status dtnh__st_check_layout(const dtnh_st_file *f, int *idx, dtnh_error *err) {
    const dtnh_st_entry *e = f->entries;
    uint64_t at = 0;
    int i;
    dtnh__st_sort(idx, f->count, e, dtnh__st_by_name);
    for (i = 1; i < f->count; i++)
        if (strcmp(e[idx[i - 1]].name, e[idx[i]].name) == 0)
            return dtnh_fail(err, DTNH_ERR_FORMAT, "safetensors tensor '%s' appears twice",
                             e[idx[i]].name);
    dtnh__st_sort(idx, f->count, e, dtnh__st_by_offset);
    for (i = 0; i < f->count; i++) {
        const dtnh_st_entry *t = &e[idx[i]];
        if (t->begin < at)
            return dtnh_fail(err, DTNH_ERR_FORMAT, "safetensors tensor '%s': data_offsets [%llu, "
                             "%llu] overlap tensor '%s'", t->name, (unsigned long long)t->begin,
                             (unsigned long long)t->end, e[idx[i - 1]].name);
        if (t->begin > at)
            return dtnh_fail(err, DTNH_ERR_FORMAT, "safetensors tensor '%s': data_offsets begin at "
                             "%llu, leaving a gap after byte %llu", t->name,
                             (unsigned long long)t->begin, (unsigned long long)at);
        at = t->end;
    }
    if (at != f->data_bytes)
        return dtnh_fail(err, DTNH_ERR_FORMAT, "safetensors data section holds %llu bytes, the "
                         "tensors cover %llu", (unsigned long long)f->data_bytes,
                         (unsigned long long)at);
    return DTNH_OK;
}

/* ---- safetensors: opening ----------------------------------------------------------------- */

/* The 8-byte prefix: the header length, checked against the file's size. */
static dtnh_status dtnh__st_prefix(dtnh_st_file *f, const unsigned char *prefix, uint64_t size,
                                   dtnh_error *err) {
    uint64_t n;
    if (size < 8)
        return dtnh_fail(err, DTNH_ERR_FORMAT, "safetensors file truncated: %llu bytes, the header "
                         "length alone needs 8", (unsigned long long)size);
    n = dtnh__st_load_le(prefix, 8);
    if (n > size - 8)
        return dtnh_fail(err, DTNH_ERR_FORMAT, "safetensors header length %llu runs past the end "
                         "of the file (%llu bytes)", (unsigned long long)n, (unsigned long long)size);
    if (n > DTNH_ST_MAX_HEADER)
        return dtnh_fail(err, DTNH_ERR_FORMAT, "safetensors header length %llu exceeds the limit "
                         "of %u bytes", (unsigned long long)n, DTNH_ST_MAX_HEADER);
    f->header_bytes = n;
    f->data_offset = 8 + n;
    f->data_bytes = size - 8 - n;
    return DTNH_OK;
}

/* Scratch for the header text and the tables, sized from the header length alone, so a
   counting arena counts exactly what the assigning one takes. An entry needs at least
   DTNH__ST_MIN_ENTRY_CHARS characters ("":{"dtype":"F32","shape":[],"data_offsets":[0,0]}
   and a comma), a metadata pair DTNH__ST_MIN_META_CHARS ("":"" and a comma). */
static dtnh_status dtnh__st_scratch(dtnh_st_file *f, dtnh_arena *a, char **text, int **idx,
                                    int *max_entries, int *max_meta, dtnh_error *err) {
    size_t n = (size_t)f->header_bytes;
    void *p[4];
    dtnh_status s;
    *max_entries = (int)(n / DTNH__ST_MIN_ENTRY_CHARS + 1);
    *max_meta = (int)(n / DTNH__ST_MIN_META_CHARS + 1);
    if ((s = dtnh_arena_alloc(a, n + 1, 1, &p[0], err)) ||
        (s = dtnh_arena_alloc(a, (size_t)*max_entries * sizeof(dtnh_st_entry), 0, &p[1], err)) ||
        (s = dtnh_arena_alloc(a, (size_t)*max_meta * sizeof(dtnh_st_meta), 0, &p[2], err)) ||
        (s = dtnh_arena_alloc(a, (size_t)*max_entries * sizeof(int), 0, &p[3], err)))
        return s;
    *text = (char *)p[0];
    f->entries = (dtnh_st_entry *)p[1];
    f->meta = (dtnh_st_meta *)p[2];
    *idx = (int *)p[3];
    return DTNH_OK;
}

/* Parses the header text (already in scratch) and checks every entry. */
static dtnh_status dtnh__st_load_header(dtnh_st_file *f, char *text, int *idx, int max_entries,
                                        int max_meta, dtnh_error *err) {
    dtnh__st_parser p;
    dtnh_status s;
    int i;
    p.s = text;
    p.pos = 0;
    p.len = (size_t)f->header_bytes;
    p.tensor = NULL;
    p.err = err;
    text[p.len] = '\0';
    f->count = f->meta_count = 0;
    if ((s = dtnh__st_parse(&p, f, max_entries, max_meta))) return s;
    for (i = 0; i < f->count; i++)
        if ((s = dtnh__st_check_offsets(&f->entries[i], f->data_bytes, err))) return s;
    return dtnh__st_check_layout(f, idx, err);
}

DTNHDEF dtnh_status dtnh_st_open_memory(dtnh_st_file *f, const void *data, size_t size,
                                        dtnh_arena *scratch, dtnh_error *err) {
    char *text;
    int *idx, max_entries, max_meta;
    dtnh_status s;
    if (!f || !scratch || (!data && size))
        return dtnh_fail(err, DTNH_ERR_ARG, "st_open_memory: NULL file, scratch or data");
    memset(f, 0, sizeof *f);
    if ((s = dtnh__st_prefix(f, (const unsigned char *)data, size, err))) return s;
    if ((s = dtnh__st_scratch(f, scratch, &text, &idx, &max_entries, &max_meta, err))) return s;
    if (dtnh_arena_is_counting(scratch)) return DTNH_OK;
    memcpy(text, (const unsigned char *)data + 8, (size_t)f->header_bytes);
    if ((s = dtnh__st_load_header(f, text, idx, max_entries, max_meta, err))) {
        f->count = f->meta_count = 0;
        return s;
    }
    f->mem = (const unsigned char *)data;
    return DTNH_OK;
}

DTNHDEF int dtnh_st_find(const dtnh_st_file *f, const char *name) {
    int i;
    for (i = 0; i < f->count; i++)
        if (strcmp(f->entries[i].name, name) == 0) return i;
    return -1;
}

DTNHDEF const char *dtnh_st_meta_get(const dtnh_st_file *f, const char *key) {
    int i;
    for (i = 0; i < f->meta_count; i++)
        if (strcmp(f->meta[i].key, key) == 0) return f->meta[i].value;
    return NULL;
}

DTNHDEF int dtnh_st_shape_is(const dtnh_st_file *f, int index, int ndim, const int *shape) {
    const dtnh_st_entry *e;
    int d;
    if (index < 0 || index >= f->count) return 0;
    e = &f->entries[index];
    if (e->ndim != ndim) return 0;
    for (d = 0; d < ndim; d++)
        if (shape[d] < 0 || e->shape[d] != (uint64_t)shape[d]) return 0;
    return 1;
}

/* ---- safetensors: reading data ------------------------------------------------------------ */

/* Called on the bytes of elements [first, first + n) of a tensor. */
typedef dtnh_status (*dtnh__st_chunk_fn)(void *ctx, const dtnh_st_entry *e, const unsigned char *b,
                                         size_t first, size_t n, dtnh_error *err);

/* Hands the tensor's bytes to fn in order, DTNH__ST_CHUNK bytes at most at a time. */
static dtnh_status dtnh__st_each_chunk(dtnh_st_file *f, const dtnh_st_entry *e, dtnh__st_chunk_fn fn,
                                       void *ctx, dtnh_error *err) {
    size_t es = dtnh__st_dtype_sizes[e->dtype], step = DTNH__ST_CHUNK / es, done, count = (size_t)e->count;
    dtnh_status s;
#ifndef DTNH_NO_STDIO
    uint64_t at = f->data_offset + e->begin;
    if (!f->mem && f->fp &&
        (at > (uint64_t)LONG_MAX || fseek((FILE *)f->fp, (long)at, SEEK_SET) != 0))
        return dtnh_fail(err, DTNH_ERR_IO, "safetensors tensor '%s': cannot seek to byte %llu",
                         e->name, (unsigned long long)at);
#endif
    for (done = 0; done < count; done += step) {
        size_t n = count - done < step ? count - done : step;
        const unsigned char *b = NULL;
#ifndef DTNH_NO_STDIO
        unsigned char buf[DTNH__ST_CHUNK];
        if (!f->mem && f->fp) {
            if (fread(buf, es, n, (FILE *)f->fp) != n)
                return dtnh_fail(err, DTNH_ERR_IO, "safetensors tensor '%s': the file ends inside "
                                 "its data", e->name);
            b = buf;
        }
#endif
        if (f->mem) b = f->mem + f->data_offset + e->begin + done * es;
        if (!b) return dtnh_fail(err, DTNH_ERR_ARG, "st_read: the file is not open");
        if ((s = fn(ctx, e, b, done, n, err))) return s;
    }
    return DTNH_OK;
}

typedef struct dtnh__st_dest {
    float *f32;
    int64_t *i64;
} dtnh__st_dest;

static dtnh_status dtnh__st_decode_chunk(void *ctx, const dtnh_st_entry *e, const unsigned char *b,
                                         size_t first, size_t n, dtnh_error *err) {
    dtnh__st_dest *d = (dtnh__st_dest *)ctx;
    (void)err;
    dtnh__st_decode(e->dtype, b, n, d->f32 ? d->f32 + first : NULL, d->i64 ? d->i64 + first : NULL);
    return DTNH_OK;
}

static dtnh_status dtnh__st_finite_chunk(void *ctx, const dtnh_st_entry *e, const unsigned char *b,
                                         size_t first, size_t n, dtnh_error *err) {
    float vals[DTNH__ST_CHUNK / 2];
    size_t bad = 0;
    (void)ctx;
    if (e->dtype == DTNH_ST_I64) return DTNH_OK;
    dtnh__st_decode(e->dtype, b, n, vals, NULL);
    if (!dtnh_all_finite(n, vals, &bad))
        return dtnh_fail(err, DTNH_ERR_NUMERIC, "safetensors tensor '%s': element %zu is %g",
                         e->name, first + bad, (double)vals[bad]);
    return DTNH_OK;
}

static dtnh_status dtnh__st_entry_at(const dtnh_st_file *f, int index, const dtnh_st_entry **e,
                                     dtnh_error *err) {
    if (!f || index < 0 || index >= f->count)
        return dtnh_fail(err, DTNH_ERR_ARG, "st_read: no tensor %d in the file", index);
    *e = &f->entries[index];
    return DTNH_OK;
}

static dtnh_status dtnh__st_read(dtnh_st_file *f, int index, float *outf, int64_t *outi,
                                 size_t count, dtnh_error *err) {
    const dtnh_st_entry *e = NULL;
    dtnh__st_dest d;
    dtnh_status s = dtnh__st_entry_at(f, index, &e, err);
    if (s) return s;
    if ((outi != NULL) != (e->dtype == DTNH_ST_I64))
        return dtnh_fail(err, DTNH_ERR_FORMAT, "safetensors tensor '%s' is %s, expected %s",
                         e->name, dtnh__st_dtype_names[e->dtype], outi ? "I64" : "F32, F16 or BF16");
    if (e->count != (uint64_t)count)
        return dtnh_fail(err, DTNH_ERR_SHAPE, "safetensors tensor '%s' holds %llu values, the "
                         "buffer %zu", e->name, (unsigned long long)e->count, count);
    d.f32 = outf;
    d.i64 = outi;
    return dtnh__st_each_chunk(f, e, dtnh__st_decode_chunk, &d, err);
}

DTNHDEF dtnh_status dtnh_st_read_f32(dtnh_st_file *f, int index, float *out, size_t count,
                                     dtnh_error *err) {
    if (!out && count) return dtnh_fail(err, DTNH_ERR_ARG, "st_read_f32: NULL output");
    return dtnh__st_read(f, index, out, NULL, count, err);
}

DTNHDEF dtnh_status dtnh_st_read_i64(dtnh_st_file *f, int index, int64_t *out, size_t count,
                                     dtnh_error *err) {
    int64_t dummy;
    if (!out && count) return dtnh_fail(err, DTNH_ERR_ARG, "st_read_i64: NULL output");
    return dtnh__st_read(f, index, NULL, out ? out : &dummy, count, err);
}

DTNHDEF dtnh_status dtnh_st_check_finite(dtnh_st_file *f, int index, dtnh_error *err) {
    const dtnh_st_entry *e = NULL;
    dtnh_status s = dtnh__st_entry_at(f, index, &e, err);
    if (s) return s;
    return dtnh__st_each_chunk(f, e, dtnh__st_finite_chunk, NULL, err);
}

DTNHDEF void dtnh_st_close(dtnh_st_file *f) {
    if (!f) return;
#ifndef DTNH_NO_STDIO
    if (f->fp) fclose((FILE *)f->fp);
#endif
    f->fp = NULL;
}

/* ---- safetensors: writing ------------------------------------------------------------------
   One emitter writes to a counter, a memory buffer or a FILE, so sizing and writing agree. */

typedef struct dtnh__st_sink {
    unsigned char *buf; /* memory, or NULL */
    size_t cap;
    void *fp; /* FILE *, or NULL; both NULL only counts */
    size_t len;
    int failed;
} dtnh__st_sink;

static void dtnh__st_put(dtnh__st_sink *k, const void *src, size_t n) {
    if (k->failed) return;
    if (k->buf) {
        if (n > k->cap - k->len) {
            k->failed = 1;
            return;
        }
        if (n) memcpy(k->buf + k->len, src, n);
    }
#ifndef DTNH_NO_STDIO
    else if (k->fp && fwrite(src, 1, n, (FILE *)k->fp) != n) {
        k->failed = 1;
        return;
    }
#endif
    k->len += n;
}

static void dtnh__st_puts(dtnh__st_sink *k, const char *s) { dtnh__st_put(k, s, strlen(s)); }

static void dtnh__st_put_u64(dtnh__st_sink *k, uint64_t v) {
    char digits[24];
    int n = 0;
    do digits[sizeof digits - 1 - n++] = (char)('0' + v % 10);
    while ((v /= 10) != 0);
    dtnh__st_put(k, digits + sizeof digits - n, (size_t)n);
}

/* A JSON string: quotes, backslashes and control characters escaped, UTF-8 passed through. */
static void dtnh__st_put_json(dtnh__st_sink *k, const char *s) {
    static const char hex[] = "0123456789abcdef";
    dtnh__st_puts(k, "\"");
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            char esc[2];
            esc[0] = '\\';
            esc[1] = (char)c;
            dtnh__st_put(k, esc, 2);
        } else if (c < 0x20) {
            char esc[6] = {'\\', 'u', '0', '0', 0, 0};
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            dtnh__st_put(k, esc, 6);
        } else {
            dtnh__st_put(k, s, 1);
        }
    }
    dtnh__st_puts(k, "\"");
}

static uint64_t dtnh__st_tensor_bytes(const dtnh_st_tensor *t) {
    uint64_t n = dtnh__st_dtype_sizes[t->dtype];
    int d;
    for (d = 0; d < t->ndim; d++) n *= (uint64_t)t->shape[d];
    return n;
}

static void dtnh__st_emit_json(dtnh__st_sink *k, const dtnh_st_tensor *t, int count,
                               const dtnh_st_meta *meta, int meta_count) {
    uint64_t at = 0;
    int i, d;
    dtnh__st_puts(k, "{");
    if (meta_count > 0) {
        dtnh__st_puts(k, "\"__metadata__\":{");
        for (i = 0; i < meta_count; i++) {
            if (i) dtnh__st_puts(k, ",");
            dtnh__st_put_json(k, meta[i].key);
            dtnh__st_puts(k, ":");
            dtnh__st_put_json(k, meta[i].value);
        }
        dtnh__st_puts(k, count > 0 ? "}," : "}");
    }
    for (i = 0; i < count; i++) {
        if (i) dtnh__st_puts(k, ",");
        dtnh__st_put_json(k, t[i].name);
        dtnh__st_puts(k, ":{\"dtype\":\"");
        dtnh__st_puts(k, dtnh__st_dtype_names[t[i].dtype]);
        dtnh__st_puts(k, "\",\"shape\":[");
        for (d = 0; d < t[i].ndim; d++) {
            if (d) dtnh__st_puts(k, ",");
            dtnh__st_put_u64(k, (uint64_t)t[i].shape[d]);
        }
        dtnh__st_puts(k, "],\"data_offsets\":[");
        dtnh__st_put_u64(k, at);
        dtnh__st_puts(k, ",");
        at += dtnh__st_tensor_bytes(&t[i]);
        dtnh__st_put_u64(k, at);
        dtnh__st_puts(k, "]}");
    }
    dtnh__st_puts(k, "}");
}

/* The whole file: header length, the JSON padded with spaces to a multiple of 8, the data. */
static void dtnh__st_emit_file(dtnh__st_sink *k, const dtnh_st_tensor *t, int count,
                               const dtnh_st_meta *meta, int meta_count) {
    dtnh__st_sink counter;
    unsigned char buf[DTNH__ST_CHUNK];
    size_t json, padded;
    int i;
    memset(&counter, 0, sizeof counter);
    dtnh__st_emit_json(&counter, t, count, meta, meta_count);
    json = counter.len;
    padded = (json + 7) / 8 * 8;
    dtnh__st_store_le(buf, padded, 8);
    dtnh__st_put(k, buf, 8);
    dtnh__st_emit_json(k, t, count, meta, meta_count);
    memset(buf, ' ', 8);
    dtnh__st_put(k, buf, padded - json);
    for (i = 0; i < count; i++) {
        size_t es = dtnh__st_dtype_sizes[t[i].dtype], n = (size_t)(dtnh__st_tensor_bytes(&t[i]) / es);
        size_t done, step = DTNH__ST_CHUNK / es;
        for (done = 0; done < n; done += step) {
            size_t m = n - done < step ? n - done : step;
            dtnh__st_encode(t[i].dtype, t[i].f32 ? t[i].f32 + done : NULL,
                            t[i].i64 ? t[i].i64 + done : NULL, m, buf);
            dtnh__st_put(k, buf, m * es);
        }
    }
}

static dtnh_status dtnh__st_check_tensor(const dtnh_st_tensor *t, dtnh_error *err) {
    uint64_t n = 1;
    int d;
    if (!t->name || strcmp(t->name, "__metadata__") == 0)
        return dtnh_fail(err, DTNH_ERR_ARG, "st_write: a tensor without a name, or named __metadata__");
    if ((unsigned)t->dtype >= 4 || t->ndim < 0 || t->ndim > DTNH_ST_MAX_DIMS)
        return dtnh_fail(err, DTNH_ERR_ARG, "st_write: tensor '%s' has dtype %d and %d dimensions",
                         t->name, (int)t->dtype, t->ndim);
    for (d = 0; d < t->ndim; d++) {
        if (t->shape[d] < 0)
            return dtnh_fail(err, DTNH_ERR_ARG, "st_write: tensor '%s' dimension %d is %d", t->name,
                             d, t->shape[d]);
        if (t->shape[d] && n > ((uint64_t)(size_t)-1 / 8) / (uint64_t)t->shape[d])
            return dtnh_fail(err, DTNH_ERR_ARG, "st_write: tensor '%s' is too large", t->name);
        n *= (uint64_t)t->shape[d];
    }
    if (n && (t->dtype == DTNH_ST_I64 ? !t->i64 : !t->f32))
        return dtnh_fail(err, DTNH_ERR_ARG, "st_write: tensor '%s' (%s) has no %s data", t->name,
                         dtnh__st_dtype_names[t->dtype], t->dtype == DTNH_ST_I64 ? "i64" : "f32");
    return DTNH_OK;
}

/* Everything the writer is given, checked before one byte is written. Names are compared
   pairwise: a model has a few hundred tensors at most. */
static dtnh_status dtnh__st_check_write(const dtnh_st_tensor *t, int count, const dtnh_st_meta *meta,
                                        int meta_count, dtnh_error *err) {
    uint64_t total = 0;
    int i, j;
    if (count < 0 || meta_count < 0 || (count && !t) || (meta_count && !meta))
        return dtnh_fail(err, DTNH_ERR_ARG, "st_write: %d tensors, %d metadata pairs", count, meta_count);
    for (i = 0; i < count; i++) {
        dtnh_status s = dtnh__st_check_tensor(&t[i], err);
        if (s) return s;
        total += dtnh__st_tensor_bytes(&t[i]);
        if (total > (uint64_t)(size_t)-1 / 2)
            return dtnh_fail(err, DTNH_ERR_ARG, "st_write: the tensors are too large in all");
        for (j = 0; j < i; j++)
            if (strcmp(t[i].name, t[j].name) == 0)
                return dtnh_fail(err, DTNH_ERR_ARG, "st_write: tensor '%s' given twice", t[i].name);
    }
    for (i = 0; i < meta_count; i++) {
        if (!meta[i].key || !meta[i].value)
            return dtnh_fail(err, DTNH_ERR_ARG, "st_write: metadata pair %d lacks a key or value", i);
        for (j = 0; j < i; j++)
            if (strcmp(meta[i].key, meta[j].key) == 0)
                return dtnh_fail(err, DTNH_ERR_ARG, "st_write: metadata key '%s' given twice", meta[i].key);
    }
    return DTNH_OK;
}

DTNHDEF dtnh_status dtnh_st_write_memory(const dtnh_st_tensor *tensors, int count,
                                         const dtnh_st_meta *meta, int meta_count, void *buf,
                                         size_t capacity, size_t *size, dtnh_error *err) {
    dtnh__st_sink k;
    dtnh_status s = dtnh__st_check_write(tensors, count, meta, meta_count, err);
    if (s) return s;
    memset(&k, 0, sizeof k);
    dtnh__st_emit_file(&k, tensors, count, meta, meta_count);
    if (size) *size = k.len;
    if (!buf) return DTNH_OK;
    if (capacity < k.len)
        return dtnh_fail(err, DTNH_ERR_NOMEM, "st_write_memory: the file needs %zu bytes, the "
                         "buffer holds %zu", k.len, capacity);
    memset(&k, 0, sizeof k);
    k.buf = (unsigned char *)buf;
    k.cap = capacity;
    dtnh__st_emit_file(&k, tensors, count, meta, meta_count);
    return DTNH_OK;
}

#ifndef DTNH_NO_STDIO

/* The file's size; the position is left at its start. */
static dtnh_status dtnh__st_file_size(FILE *fp, const char *path, uint64_t *size, dtnh_error *err) {
    long end;
    if (fseek(fp, 0, SEEK_END) != 0 || (end = ftell(fp)) < 0 || fseek(fp, 0, SEEK_SET) != 0)
        return dtnh_fail(err, DTNH_ERR_IO, "safetensors '%s': cannot find the file's size", path);
    *size = (uint64_t)end;
    return DTNH_OK;
}

static dtnh_status dtnh__st_open_stream(dtnh_st_file *f, FILE *fp, const char *path,
                                        dtnh_arena *scratch, dtnh_error *err) {
    unsigned char prefix[8];
    uint64_t size = 0;
    char *text;
    int *idx, max_entries, max_meta;
    dtnh_status s;
    if ((s = dtnh__st_file_size(fp, path, &size, err))) return s;
    if (size >= 8 && fread(prefix, 1, 8, fp) != 8)
        return dtnh_fail(err, DTNH_ERR_IO, "safetensors '%s': cannot read the header length", path);
    if ((s = dtnh__st_prefix(f, prefix, size, err))) return s;
    if ((s = dtnh__st_scratch(f, scratch, &text, &idx, &max_entries, &max_meta, err))) return s;
    if (dtnh_arena_is_counting(scratch)) return DTNH_OK;
    if (fread(text, 1, (size_t)f->header_bytes, fp) != (size_t)f->header_bytes)
        return dtnh_fail(err, DTNH_ERR_IO, "safetensors '%s': cannot read the %llu-byte header",
                         path, (unsigned long long)f->header_bytes);
    return dtnh__st_load_header(f, text, idx, max_entries, max_meta, err);
}

DTNHDEF dtnh_status dtnh_st_open(dtnh_st_file *f, const char *path, dtnh_arena *scratch,
                                 dtnh_error *err) {
    FILE *fp;
    dtnh_status s;
    if (!f || !path || !scratch)
        return dtnh_fail(err, DTNH_ERR_ARG, "st_open: NULL file, path or scratch");
    memset(f, 0, sizeof *f);
    fp = fopen(path, "rb");
    if (!fp) return dtnh_fail(err, DTNH_ERR_IO, "safetensors '%s': cannot open the file", path);
    s = dtnh__st_open_stream(f, fp, path, scratch, err);
    if (s || dtnh_arena_is_counting(scratch)) {
        fclose(fp);
        f->count = f->meta_count = 0;
        return s;
    }
    f->fp = fp;
    return DTNH_OK;
}

static int dtnh__st_flush_to_disk(FILE *fp) {
    if (fflush(fp) != 0) return 0;
#ifdef DTNH__ST_FSYNC
    if (fsync((fileno)(fp)) != 0) return 0;
#endif
    return 1;
}

/* After the rename the new name lives in the directory's own data: fsync the directory too,
   or a power cut may bring back the old file (or none). fopen(dir, "r") gives a descriptor on
   POSIX systems without <fcntl.h>. Best effort: the file itself is already safe on disk. */
static void dtnh__st_sync_dir(const char *path) {
#ifdef DTNH__ST_FSYNC
    char dir[DTNH__ST_PATH_MAX];
    const char *slash = strrchr(path, '/');
    FILE *d;
    if (!slash) strcpy(dir, ".");
    else if (slash == path) strcpy(dir, "/");
    else {
        memcpy(dir, path, (size_t)(slash - path));
        dir[slash - path] = '\0';
    }
    d = fopen(dir, "r");
    if (!d) return;
    (void)fsync((fileno)(d));
    fclose(d);
#else
    (void)path;
#endif
}

DTNHDEF dtnh_status dtnh_st_save(const char *path, const dtnh_st_tensor *tensors, int count,
                                 const dtnh_st_meta *meta, int meta_count, dtnh_error *err) {
    char tmp[DTNH__ST_PATH_MAX];
    dtnh__st_sink k;
    FILE *fp;
    int ok;
    dtnh_status s = dtnh__st_check_write(tensors, count, meta, meta_count, err);
    if (s) return s;
    if (!path || strlen(path) + 5 > sizeof tmp)
        return dtnh_fail(err, DTNH_ERR_ARG, "st_save: no path, or a path over %d bytes",
                         DTNH__ST_PATH_MAX - 5);
    strcpy(tmp, path);
    strcat(tmp, ".tmp");
    fp = fopen(tmp, "wb");
    if (!fp) return dtnh_fail(err, DTNH_ERR_IO, "st_save: cannot create '%s'", tmp);
    memset(&k, 0, sizeof k);
    k.fp = fp;
    dtnh__st_emit_file(&k, tensors, count, meta, meta_count);
    ok = !k.failed && dtnh__st_flush_to_disk(fp);
    if (fclose(fp) != 0) ok = 0;
    if (!ok) {
        remove(tmp);
        return dtnh_fail(err, DTNH_ERR_IO, "st_save: writing '%s' failed; '%s' is unchanged", tmp, path);
    }
#ifdef _WIN32
    remove(path); /* rename does not replace there */
#endif
    if (rename(tmp, path) != 0) {
        remove(tmp);
        return dtnh_fail(err, DTNH_ERR_IO, "st_save: cannot rename '%s' to '%s'", tmp, path);
    }
    dtnh__st_sync_dir(path);
    return DTNH_OK;
}

#endif /* DTNH_NO_STDIO */

/* ---- ResNet-18 weights in safetensors --------------------------------------------------------
   Two passes over the file: the first checks every tensor (name, dtype, shape, finite values,
   readable bytes) and writes nothing; only then the second copies. */

/* Appends name to a comma-separated list, ending it with "..." once it is full. */
static void dtnh__st_list_name(char *list, const char *name) {
    size_t used = strlen(list), n = strlen(name);
    if (used >= 3 && strcmp(list + used - 3, "...") == 0) return;
    if (used + n + 2 + 5 < DTNH_LOAD_NAMES_SIZE) {
        if (used) strcat(list, ", ");
        strcat(list, name);
    } else if (used + 5 < DTNH_LOAD_NAMES_SIZE) {
        strcat(list, used ? ", ..." : "...");
    }
}

/* "[64, 3, 7, 7]" into buf. */
static const char *dtnh__st_shape_text(char *buf, size_t size, int ndim, const uint64_t *shape) {
    size_t used = 0;
    int d;
    buf[0] = '\0';
    for (d = 0; d < ndim && used + 1 < size; d++)
        used += (size_t)snprintf(buf + used, size - used, "%s%llu", d ? ", " : "[",
                                 (unsigned long long)shape[d]);
    if (used + 2 < size) strcat(buf, ndim ? "]" : "[]");
    return buf;
}

static dtnh_status dtnh__st_shape_error(const dtnh_st_entry *fe, const dtnh_state_entry *e,
                                        dtnh_error *err) {
    char a[64], b[64];
    uint64_t want[DTNH_MAX_DIMS];
    int d;
    for (d = 0; d < e->ndim; d++) want[d] = (uint64_t)e->shape[d];
    return dtnh_fail(err, DTNH_ERR_SHAPE, "weights: tensor '%s' has shape %s in the file, the "
                     "network needs %s", fe->name, dtnh__st_shape_text(a, sizeof a, fe->ndim, fe->shape),
                     dtnh__st_shape_text(b, sizeof b, e->ndim, want));
}

/* The transfer case: the file's fc.weight is [K, in_features] with K other than the
   network's class count (fc.bias, if there, must be [K]). */
static dtnh_status dtnh__st_other_head(const dtnh_resnet *net, const dtnh_st_file *f, int *other,
                                       int *file_classes, dtnh_error *err) {
    int fw = dtnh_st_find(f, "fc.weight"), fb = dtnh_st_find(f, "fc.bias");
    int jw = dtnh_resnet_state_find(net, "fc.weight");
    dtnh_state_entry e;
    const dtnh_st_entry *w;
    dtnh_status s;
    *other = *file_classes = 0;
    if (fw < 0 || jw < 0) return DTNH_OK;
    if ((s = dtnh_resnet_state_entry(net, jw, &e, err))) return s;
    w = &f->entries[fw];
    if (w->ndim != 2 || w->shape[0] > 0x7FFFFFFF) return DTNH_OK; /* a shape error later */
    *file_classes = (int)w->shape[0];
    if (w->shape[1] != (uint64_t)e.shape[1] || w->shape[0] == (uint64_t)e.shape[0]) return DTNH_OK;
    if (fb >= 0 && (f->entries[fb].ndim != 1 || f->entries[fb].shape[0] != w->shape[0]))
        return dtnh_fail(err, DTNH_ERR_SHAPE, "weights: fc.bias has %llu values, fc.weight %llu rows",
                         (unsigned long long)f->entries[fb].shape[0], (unsigned long long)w->shape[0]);
    *other = 1;
    return DTNH_OK;
}

static int dtnh__st_is_head(const char *name) {
    return strcmp(name, "fc.weight") == 0 || strcmp(name, "fc.bias") == 0;
}

/* One file tensor against the network's entry of that name. */
static dtnh_status dtnh__st_check_state(dtnh_st_file *f, int i, const dtnh_state_entry *e,
                                        dtnh_error *err) {
    const dtnh_st_entry *fe = &f->entries[i];
    if (!e->f32 && !e->i64)
        return dtnh_fail(err, DTNH_ERR_ARG, "weights: the network holds no '%s' of its own "
                         "(external weights)", e->name);
    if ((fe->dtype == DTNH_ST_I64) != (e->i64 != NULL))
        return dtnh_fail(err, DTNH_ERR_FORMAT, "weights: tensor '%s' is %s in the file, the network "
                         "needs %s", fe->name, dtnh__st_dtype_names[fe->dtype],
                         e->i64 ? "I64" : "F32, F16 or BF16");
    if (!dtnh_st_shape_is(f, i, e->ndim, e->shape)) return dtnh__st_shape_error(fe, e, err);
    return dtnh_st_check_finite(f, i, err);
}

/* Pass one: checks every tensor of the file and fills the report; writes nothing. */
static dtnh_status dtnh__st_plan_load(dtnh_resnet *net, dtnh_st_file *f, int strict,
                                      dtnh_load_report *r, dtnh_error *err) {
    dtnh_state_entry e;
    dtnh_status s;
    int i, n = dtnh_resnet_state_count(net);
    if ((s = dtnh__st_other_head(net, f, &r->head_skipped, &r->file_classes, err))) return s;
    for (i = 0; i < f->count; i++) {
        int j = dtnh_resnet_state_find(net, f->entries[i].name);
        if (j < 0) {
            r->unknown++;
            dtnh__st_list_name(r->unknown_names, f->entries[i].name);
            continue;
        }
        if (r->head_skipped && dtnh__st_is_head(f->entries[i].name)) continue;
        if ((s = dtnh_resnet_state_entry(net, j, &e, err))) return s;
        if ((s = dtnh__st_check_state(f, i, &e, err))) return s;
        r->loaded++;
    }
    for (i = 0; i < n; i++) {
        if ((s = dtnh_resnet_state_entry(net, i, &e, err))) return s;
        if (dtnh_st_find(f, e.name) >= 0) continue;
        r->missing++;
        dtnh__st_list_name(r->missing_names, e.name);
    }
    if (strict && (r->missing || r->unknown || r->head_skipped))
        return dtnh_fail(err, DTNH_ERR_FORMAT, "weights (strict): missing %d [%s], unknown %d [%s]%s",
                         r->missing, r->missing_names, r->unknown, r->unknown_names,
                         r->head_skipped ? ", and fc has another class count" : "");
    return DTNH_OK;
}

DTNHDEF dtnh_status dtnh_resnet_load(dtnh_resnet *net, dtnh_st_file *f, const dtnh_load_config *cfg,
                                     dtnh_load_report *report, dtnh_error *err) {
    dtnh_load_report local;
    dtnh_load_report *r = report ? report : &local;
    dtnh_state_entry e;
    dtnh_status s;
    int i;
    memset(r, 0, sizeof *r);
    if (!net || !f) return dtnh_fail(err, DTNH_ERR_ARG, "resnet_load: NULL network or file");
    if ((s = dtnh__st_plan_load(net, f, cfg ? cfg->strict : 0, r, err))) {
        r->loaded = 0;
        return s;
    }
    for (i = 0; i < f->count; i++) {
        int j = dtnh_resnet_state_find(net, f->entries[i].name);
        if (j < 0 || (r->head_skipped && dtnh__st_is_head(f->entries[i].name))) continue;
        if ((s = dtnh_resnet_state_entry(net, j, &e, err))) return s;
        s = e.i64 ? dtnh_st_read_i64(f, i, e.i64, e.count, err)
                  : dtnh_st_read_f32(f, i, e.f32, e.count, err);
        if (s) return s; /* only an I/O fault after pass one read the same bytes */
    }
    return DTNH_OK;
}

/* The network's state_dict as writer tensors, in torchvision's order. */
DTNHDEF dtnh_status dtnh_resnet_state_tensors(const dtnh_resnet *net, dtnh_st_dtype floats,
                                              dtnh_st_tensor *t, int *count, dtnh_error *err) {
    int i, d, n = dtnh_resnet_state_count(net);
    if (!net || !t || !count) return dtnh_fail(err, DTNH_ERR_ARG, "resnet_save: NULL network, tensors or count");
    if (n > DTNH__RESNET_MAX_STATE)
        return dtnh_fail(err, DTNH_ERR_ARG, "resnet_save: %d state entries, at most %d", n,
                         DTNH__RESNET_MAX_STATE);
    for (i = 0; i < n; i++) {
        dtnh_state_entry e;
        dtnh_status s = dtnh_resnet_state_entry(net, i, &e, err);
        if (s) return s;
        if (!e.f32 && !e.i64)
            return dtnh_fail(err, DTNH_ERR_ARG, "resnet_save: the network holds no '%s' of its own "
                             "(external weights)", e.name);
        memset(&t[i], 0, sizeof t[i]);
        t[i].name = e.name;
        t[i].dtype = e.i64 ? DTNH_ST_I64 : floats;
        t[i].ndim = e.ndim;
        for (d = 0; d < e.ndim; d++) t[i].shape[d] = e.shape[d];
        t[i].f32 = e.f32;
        t[i].i64 = e.i64;
    }
    *count = n;
    return DTNH_OK;
}

static const dtnh_st_meta dtnh__st_torch_meta[1] = {{"format", "pt"}};

DTNHDEF dtnh_status dtnh_resnet_save_memory(const dtnh_resnet *net, void *buf, size_t capacity,
                                            size_t *size, dtnh_error *err) {
    dtnh_st_tensor t[DTNH__RESNET_MAX_STATE];
    int n = 0;
    dtnh_status s;
    if ((s = dtnh_resnet_state_tensors(net, DTNH_ST_F32, t, &n, err))) return s;
    return dtnh_st_write_memory(t, n, dtnh__st_torch_meta, 1, buf, capacity, size, err);
}

/* A positive dimension that fits an int. */
static int dtnh__st_dim(uint64_t v) { return v > 0 && v <= 0x7FFFFFFF ? (int)v : 0; }

DTNHDEF dtnh_status dtnh_resnet_config_from_st(const dtnh_st_file *f, dtnh_resnet_config *cfg,
                                               dtnh_error *err) {
    int c = f ? dtnh_st_find(f, "conv1.weight") : -1, h = f ? dtnh_st_find(f, "fc.weight") : -1;
    const dtnh_st_entry *conv, *fc;
    if (!f || !cfg) return dtnh_fail(err, DTNH_ERR_ARG, "resnet_config_from_st: NULL argument");
    if (c < 0 || h < 0)
        return dtnh_fail(err, DTNH_ERR_FORMAT, "weights: no %s, not a ResNet-18 state_dict",
                         c < 0 ? "conv1.weight" : "fc.weight");
    conv = &f->entries[c];
    fc = &f->entries[h];
    if (conv->ndim != 4 || conv->shape[2] != conv->shape[3] ||
        (conv->shape[2] != 7 && conv->shape[2] != 3) || !dtnh__st_dim(conv->shape[0]) ||
        !dtnh__st_dim(conv->shape[1]) || conv->shape[0] > 0x7FFFFFFF / 8)
        return dtnh_fail(err, DTNH_ERR_FORMAT, "weights: conv1.weight should be [width, channels, "
                         "7 or 3, 7 or 3], its shape has %d dimensions", conv->ndim);
    if (fc->ndim != 2 || !dtnh__st_dim(fc->shape[0]) || fc->shape[1] != 8 * conv->shape[0])
        return dtnh_fail(err, DTNH_ERR_FORMAT, "weights: fc.weight should be [classes, %llu] "
                         "for a ResNet-18 of width %llu", (unsigned long long)(8 * conv->shape[0]),
                         (unsigned long long)conv->shape[0]);
    cfg->stem = conv->shape[2] == 7 ? DTNH_STEM_IMAGENET : DTNH_STEM_CIFAR;
    cfg->width = (int)conv->shape[0];
    cfg->in_channels = (int)conv->shape[1];
    cfg->num_classes = (int)fc->shape[0];
    return DTNH_OK;
}

#ifndef DTNH_NO_STDIO

DTNHDEF dtnh_status dtnh_resnet_load_file(dtnh_resnet *net, const char *path, dtnh_arena *scratch,
                                          const dtnh_load_config *cfg, dtnh_load_report *report,
                                          dtnh_error *err) {
    dtnh_st_file f;
    size_t mark;
    dtnh_status s;
    memset(&f, 0, sizeof f);
    if (report) memset(report, 0, sizeof *report);
    if (!scratch) return dtnh_fail(err, DTNH_ERR_ARG, "resnet_load_file: NULL scratch");
    mark = dtnh_arena_mark(scratch);
    s = dtnh_st_open(&f, path, scratch, err);
    if (!s) s = dtnh_resnet_load(net, &f, cfg, report, err);
    dtnh_st_close(&f);
    dtnh_arena_reset(scratch, mark);
    return s;
}

DTNHDEF dtnh_status dtnh_resnet_save(const dtnh_resnet *net, const char *path, dtnh_error *err) {
    dtnh_st_tensor t[DTNH__RESNET_MAX_STATE];
    int n = 0;
    dtnh_status s;
    if ((s = dtnh_resnet_state_tensors(net, DTNH_ST_F32, t, &n, err))) return s;
    return dtnh_st_save(path, t, n, dtnh__st_torch_meta, 1, err);
}

DTNHDEF dtnh_status dtnh_resnet_config_from_file(const char *path, dtnh_arena *scratch,
                                                 dtnh_resnet_config *cfg, dtnh_error *err) {
    dtnh_st_file f;
    size_t mark;
    dtnh_status s;
    memset(&f, 0, sizeof f);
    if (!scratch) return dtnh_fail(err, DTNH_ERR_ARG, "resnet_config_from_file: NULL scratch");
    mark = dtnh_arena_mark(scratch);
    s = dtnh_st_open(&f, path, scratch, err);
    if (!s) s = dtnh_resnet_config_from_st(&f, cfg, err);
    dtnh_st_close(&f);
    dtnh_arena_reset(scratch, mark);
    return s;
}

#endif /* DTNH_NO_STDIO */
/* ---- regularizers --------------------------------------------------------------------------- */

/* The L2 family on a stored g_Omega, with the same per-view pull as the fused step
   (dtnh__l2sp_coef), restricted to the views in `groups` (0: all). Checks every view before
   writing any. */
static dtnh_status dtnh__reg_pull(const dtnh_l2sp_config *rc, unsigned groups, const dtnh_params *p,
                                  float *g, double *value, const char *who, dtnh_error *err) {
    double total = 0;
    int i, pass;
    if (!p || !g) return dtnh_fail(err, DTNH_ERR_ARG, "%s: NULL store or g_Omega", who);
    if (!p->views || !p->w) return dtnh_fail(err, DTNH_ERR_ARG, "%s: a counting store or no weights", who);
    if (!rc->toward_zero && !p->w_src)
        return dtnh_fail(err, DTNH_ERR_ARG, "%s: the store has no w_src (allocate DTNH_ROLE_W_SRC)", who);
    for (pass = 0; pass < 2; pass++)
        for (i = 0; i < p->count; i++) {
            const dtnh_param_view *v = &p->views[i];
            const float *w = p->w + v->offset, *ws;
            float *gv = g + v->offset, coef;
            double sum = 0;
            int toward_source;
            size_t k;
            if (!v->trainable || (groups && !(v->groups & groups))) continue;
            coef = (float)dtnh__l2sp_coef(rc, v->groups, &toward_source);
            if (coef == 0) continue;
            ws = toward_source ? p->w_src + v->offset : NULL;
            if (pass == 0) {
                for (k = 0; k < v->count; k++) {
                    double x = ws ? (double)(w[k] - ws[k]) : (double)w[k];
                    sum += x * x;
                }
                if (!(sum - sum == 0))
                    return dtnh_fail(err, DTNH_ERR_NUMERIC, "%s: the weights%s of view '%s' hold NaN or Inf",
                                     who, ws ? " or w_s" : "", v->name);
                total += 0.5 * (double)coef * sum;
            } else if (ws) {
                for (k = 0; k < v->count; k++) gv[k] += coef * (w[k] - ws[k]);
            } else {
                for (k = 0; k < v->count; k++) gv[k] += coef * w[k];
            }
        }
    if (value) *value = total;
    return DTNH_OK;
}

DTNHDEF dtnh_status dtnh_reg_l2sp(const dtnh_l2sp_config *rc, const dtnh_params *p,
                                  float *g_omega, double *value, dtnh_error *err) {
    dtnh_l2sp_config c;
    dtnh_status s = dtnh__l2sp_resolve(rc, &c, err);
    if (s) return s;
    return dtnh__reg_pull(&c, 0, p, g_omega, value, "reg_l2sp", err);
}

DTNHDEF dtnh_status dtnh_reg_l2(double lambda, unsigned groups, const dtnh_params *p,
                                float *g_omega, double *value, dtnh_error *err) {
    dtnh_l2sp_config c;
    if (!(lambda > 0) || lambda > 1e30)
        return dtnh_fail(err, DTNH_ERR_ARG, "reg_l2: lambda %g, expected > 0", lambda);
    memset(&c, 0, sizeof c);
    c.alpha = c.beta = lambda;
    c.toward_zero = 1;
    return dtnh__reg_pull(&c, groups, p, g_omega, value, "reg_l2", err);
}

/* ---- feature-map distances -------------------------------------------------------------------- */

#define DTNH__FMAP_CHUNK 256

/* f and s alike, with data: n samples of c channels of hw positions each. */
static dtnh_status dtnh__fmap_dims(const dtnh_tensor *f, const dtnh_tensor *s, double alpha, const char *who,
                                   int *n, int *c, size_t *hw, dtnh_error *err) {
    if (!f || !s || !f->data || !s->data) return dtnh_fail(err, DTNH_ERR_ARG, "%s: NULL tensor or data", who);
    if (!dtnh_tensor_same_shape(f, s))
        return dtnh_fail(err, DTNH_ERR_SHAPE, "%s: target [%d,%d,%d,%d] and source [%d,%d,%d,%d] differ", who,
                         f->shape[0], f->shape[1], f->shape[2], f->shape[3], s->shape[0], s->shape[1],
                         s->shape[2], s->shape[3]);
    if (!(alpha > 0) || alpha > 1e30)
        return dtnh_fail(err, DTNH_ERR_ARG, "%s: coefficient %g, expected > 0", who, alpha);
    *n = f->shape[0];
    *c = f->ndim > 1 ? f->shape[1] : 1;
    *hw = dtnh_tensor_count(f) / ((size_t)*n * (size_t)*c);
    return DTNH_OK;
}

/* One channel plane: sum (f - s)^2 in double, and df = gscale * (f - s). */
static double dtnh__plane_distance(const float *f, const float *s, size_t hw, float gscale, float *df) {
    double sum = 0;
    size_t p;
    for (p = 0; p < hw; p++) {
        float d = f[p] - s[p];
        sum += (double)d * d;
        if (df) df[p] = gscale * d;
    }
    return sum;
}

DTNHDEF dtnh_status dtnh_feature_distance(const dtnh_tensor *f, const dtnh_tensor *s,
                                          const float *channel_weight, double alpha, float *df,
                                          double *value, dtnh_error *err) {
    double partial[DTNH__FMAP_CHUNK], total = 0, scale;
    size_t hw, planes, chunk, b;
    int n, c;
    dtnh_status st = dtnh__fmap_dims(f, s, alpha, "feature_distance", &n, &c, &hw, err);
    if (st) return st;
    scale = alpha / n;
    planes = (size_t)n * (size_t)c;
    for (chunk = 0; chunk < planes; chunk += DTNH__FMAP_CHUNK) {
        long cnt = (long)(planes - chunk < DTNH__FMAP_CHUNK ? planes - chunk : DTNH__FMAP_CHUNK), k;
        DTNH__OMP(parallel for schedule(static) if (cnt * (long)hw > 32768))
        for (k = 0; k < cnt; k++) {
            size_t plane = chunk + (size_t)k, off = plane * hw;
            double wt = channel_weight ? channel_weight[plane % (size_t)c] : 1.0;
            partial[k] = wt * dtnh__plane_distance(f->data + off, s->data + off, hw, (float)(scale * wt),
                                                   df ? df + off : NULL);
        }
        for (b = 0; b < (size_t)cnt; b++) total += partial[b];
    }
    if (!(total - total == 0))
        return dtnh_fail(err, DTNH_ERR_NUMERIC, "feature_distance: NaN or Inf in the features or weights");
    if (value) *value = 0.5 * scale * total;
    return DTNH_OK;
}

/* Attention map of one sample at position p: sum over channels of x^2. */
static double dtnh__at_map(const float *x, int c, size_t hw, size_t p) {
    double a = 0;
    int k;
    for (k = 0; k < c; k++) {
        double v = x[(size_t)k * hw + p];
        a += v * v;
    }
    return a;
}

/* F.normalize's denominator: the norm of the map, at least 1e-12. */
static double dtnh__at_norm(const float *x, int c, size_t hw) {
    double nn = 0;
    size_t p;
    for (p = 0; p < hw; p++) {
        double a = dtnh__at_map(x, c, hw, p);
        nn += a * a;
    }
    return sqrt(nn);
}

/* One sample: returns sum_p (q_f - q_s)^2 and, when df is set, its gradient times gscale:
   dL/dA = (g - q <g,q>)/||A|| (g/eps below eps), dL/df = 2 f dL/dA. Maps are recomputed
   rather than stored, so no scratch is needed. */
static double dtnh__at_sample(const float *f, const float *s, int c, size_t hw, double gscale, float *df) {
    double nf_raw = dtnh__at_norm(f, c, hw), ns = dtnh__at_norm(s, c, hw), nf, sum = 0, gq = 0;
    size_t p;
    int k;
    nf = nf_raw > 1e-12 ? nf_raw : 1e-12;
    ns = ns > 1e-12 ? ns : 1e-12;
    for (p = 0; p < hw; p++) {
        double qf = dtnh__at_map(f, c, hw, p) / nf, d = qf - dtnh__at_map(s, c, hw, p) / ns;
        sum += d * d;
        gq += gscale * d * qf;
    }
    if (!df) return sum;
    for (p = 0; p < hw; p++) {
        double qf = dtnh__at_map(f, c, hw, p) / nf, g = gscale * (qf - dtnh__at_map(s, c, hw, p) / ns);
        double da = nf_raw > 1e-12 ? (g - qf * gq) / nf : g / nf;
        for (k = 0; k < c; k++) df[(size_t)k * hw + p] = (float)(2.0 * f[(size_t)k * hw + p] * da);
    }
    return sum;
}

DTNHDEF dtnh_status dtnh_attention_distance(const dtnh_tensor *f, const dtnh_tensor *s,
                                            double alpha, float *df, double *value,
                                            dtnh_error *err) {
    double partial[DTNH__FMAP_CHUNK], total = 0, gscale;
    size_t hw, chunk, b, per_sample;
    int n, c;
    dtnh_status st = dtnh__fmap_dims(f, s, alpha, "attention_distance", &n, &c, &hw, err);
    if (st) return st;
    gscale = alpha / ((double)n * (double)hw);
    per_sample = (size_t)c * hw;
    for (chunk = 0; chunk < (size_t)n; chunk += DTNH__FMAP_CHUNK) {
        long cnt = (long)((size_t)n - chunk < DTNH__FMAP_CHUNK ? (size_t)n - chunk : DTNH__FMAP_CHUNK), k;
        DTNH__OMP(parallel for schedule(static) if (cnt > 1 && per_sample > 4096))
        for (k = 0; k < cnt; k++) {
            size_t off = (chunk + (size_t)k) * per_sample;
            partial[k] = dtnh__at_sample(f->data + off, s->data + off, c, hw, gscale, df ? df + off : NULL);
        }
        for (b = 0; b < (size_t)cnt; b++) total += partial[b];
    }
    if (!(total - total == 0))
        return dtnh_fail(err, DTNH_ERR_NUMERIC, "attention_distance: NaN or Inf in the features");
    if (value) *value = 0.5 * gscale * total;
    return DTNH_OK;
}

/* ---- DELTA's attention weights ---------------------------------------------------------------- */

DTNHDEF void dtnh_delta_weights(int count, float *v, double temperature) {
    double mean = 0, var = 0, std, zmax = -1e300, sum = 0;
    int i;
    if (count <= 0 || !v) return;
    if (!(temperature > 0)) temperature = 5;
    for (i = 0; i < count; i++) mean += v[i];
    mean /= count;
    for (i = 0; i < count; i++) var += (v[i] - mean) * (v[i] - mean);
    std = sqrt(var / count);
    /* z-score (all zero when every channel matters alike), then a tempered softmax */
    for (i = 0; i < count; i++) {
        double z = std > 0 ? (v[i] - mean) / std : 0;
        v[i] = (float)z;
        if (z > zmax) zmax = z;
    }
    for (i = 0; i < count; i++) sum += exp((v[i] - zmax) / temperature);
    for (i = 0; i < count; i++) v[i] = (float)(exp((v[i] - zmax) / temperature) / sum);
}

/* ---- feature-map regularizers on ResNet-18 ------------------------------------------------- */

/* Channels of a hook's output. */
static int dtnh__fmap_hook_channels(const dtnh_resnet *net, int hook) {
    return net->values[net->hook_value[hook]].c;
}

static dtnh_status dtnh__fmap_resolve(const dtnh_fmap_config *in, dtnh_fmap_reg *r, dtnh_error *err) {
    static const char *const defaults[4] = {"layer1", "layer2", "layer3", "layer4"};
    dtnh_fmap_config c;
    int i;
    if (in) c = *in;
    else memset(&c, 0, sizeof c);
    if ((unsigned)c.kind > (unsigned)DTNH_FMAP_ATTENTION) /* negative kinds wrap around */
        return dtnh_fail(err, DTNH_ERR_ARG, "fmap_reg: unknown kind %d", (int)c.kind);
    if (!(c.alpha >= 0) || c.alpha > 1e30)
        return dtnh_fail(err, DTNH_ERR_ARG, "fmap_reg: alpha %g, expected > 0 (0: default 0.01)", c.alpha);
    if (!(c.temperature >= 0) || c.temperature > 1e30)
        return dtnh_fail(err, DTNH_ERR_ARG, "fmap_reg: temperature %g, expected > 0 (0: default 5)",
                         c.temperature);
    if (c.hook_count < 0 || c.hook_count > DTNH_RESNET_MAX_HOOKS)
        return dtnh_fail(err, DTNH_ERR_ARG, "fmap_reg: hook_count %d, expected 0..%d", c.hook_count,
                         DTNH_RESNET_MAX_HOOKS);
    if (c.alpha == 0) c.alpha = 0.01;
    if (c.temperature == 0) c.temperature = 5;
    if (c.hook_count == 0) {
        c.hook_count = 4;
        for (i = 0; i < 4; i++) c.hooks[i] = defaults[i];
    }
    for (i = 0; i < c.hook_count; i++) {
        if (!c.hooks[i] || !c.hooks[i][0] || strlen(c.hooks[i]) >= DTNH_NAME_SIZE)
            return dtnh_fail(err, DTNH_ERR_ARG, "fmap_reg: hook %d is NULL, empty or too long", i);
        strcpy(r->hook_name[i], c.hooks[i]);
        c.hooks[i] = r->hook_name[i];
    }
    r->cfg = c;
    return DTNH_OK;
}

/* The source statistics must come from a network of the target's shapes. */
static dtnh_status dtnh__fmap_same_shapes(const dtnh_resnet *a, const dtnh_resnet *b, dtnh_error *err) {
    int i, k;
    if (a->params.count != b->params.count || a->params.total != b->params.total ||
        a->buffers.total != b->buffers.total)
        return dtnh_fail(err, DTNH_ERR_SHAPE,
                         "fmap_reg: the source has %d tensors (%zu parameters), the target %d (%zu)",
                         b->params.count, b->params.total, a->params.count, a->params.total);
    if (!a->params.views || !b->params.views) return DTNH_OK;
    for (i = 0; i < a->params.count; i++)
        for (k = 0; k < DTNH_MAX_DIMS; k++)
            if (a->params.views[i].shape[k] != b->params.views[i].shape[k])
                return dtnh_fail(err, DTNH_ERR_SHAPE,
                                 "fmap_reg: '%s' has dimension %d of %d in the target, %d in the source",
                                 a->params.views[i].name, k, a->params.views[i].shape[k],
                                 b->params.views[i].shape[k]);
    return DTNH_OK;
}

/* The source copy: the target's configuration, forward only, frozen statistics, the
   regularizer's hooks, and no weights of its own (it reads the target's w_src). */
static dtnh_status dtnh__fmap_source(dtnh_fmap_reg *r, const dtnh_resnet *stats_from, dtnh_arena *a,
                                     dtnh_error *err) {
    dtnh_resnet_config c = r->target->cfg;
    dtnh_status s;
    int i;
    c.train = DTNH_TRAIN_NONE;
    c.bn_stats = DTNH_BN_STATS_FROZEN;
    c.external_weights = 1;
    c.roles = 0;
    c.hook_count = r->cfg.hook_count;
    for (i = 0; i < DTNH_RESNET_MAX_HOOKS; i++) c.hooks[i] = i < c.hook_count ? r->cfg.hooks[i] : NULL;
    if ((s = dtnh_resnet_init(&r->source, &c, a, err))) return s;
    if ((s = dtnh__fmap_same_shapes(r->target, &r->source, err))) return s;
    if (stats_from && (s = dtnh__fmap_same_shapes(r->target, stats_from, err))) return s;
    if (dtnh_arena_is_counting(a)) return DTNH_OK;
    if ((s = dtnh_resnet_use_weights(&r->source, r->target->params.w_src, err))) return s;
    return dtnh_resnet_copy_buffers(&r->source, stats_from ? stats_from : r->target, err);
}

DTNHDEF dtnh_status dtnh_fmap_reg_init(dtnh_fmap_reg *r, const dtnh_fmap_config *cfg,
                                       dtnh_resnet *target, const dtnh_resnet *stats_from,
                                       dtnh_arena *persistent, dtnh_error *err) {
    dtnh_status s;
    size_t total = 0;
    int i, k;
    if (!r || !target || !persistent)
        return dtnh_fail(err, DTNH_ERR_ARG, "fmap_reg_init: NULL regularizer, target or arena");
    memset(r, 0, sizeof *r);
    if ((s = dtnh__fmap_resolve(cfg, r, err))) return s;
    r->target = target;
    if (!target->params.w_src && !dtnh_arena_is_counting(persistent))
        return dtnh_fail(err, DTNH_ERR_ARG, "fmap_reg_init: the target has no w_src (add DTNH_ROLE_W_SRC to its roles)");
    for (i = 0; i < r->cfg.hook_count; i++) {
        r->target_hook[i] = dtnh_resnet_hook_index(target, r->cfg.hooks[i]);
        r->source_hook[i] = i;
        if (r->target_hook[i] < 0)
            return dtnh_fail(err, DTNH_ERR_ARG,
                             "fmap_reg_init: hook '%s' is not among the target's hooks (name it in "
                             "dtnh_resnet_config.hooks when building the target)", r->cfg.hooks[i]);
        for (k = 0; k < i; k++)
            if (r->target_hook[k] == r->target_hook[i])
                return dtnh_fail(err, DTNH_ERR_ARG, "fmap_reg_init: hook '%s' named twice", r->cfg.hooks[i]);
        r->channels[i] = dtnh__fmap_hook_channels(target, r->target_hook[i]);
        total += (size_t)r->channels[i];
    }
    if ((s = dtnh__fmap_source(r, stats_from, persistent, err))) return s;
    if (r->cfg.kind == DTNH_FMAP_DELTA && (s = dtnh_arena_alloc_floats(persistent, total, &r->attention, err)))
        return s;
    return DTNH_OK;
}

/* Value and gradient at hook i, given both models' outputs there. */
static dtnh_status dtnh__fmap_hook(dtnh_fmap_reg *r, int i, const dtnh_tensor *f, const dtnh_tensor *s,
                                   float *df, float *weights, double *value, dtnh_error *err) {
    size_t off = 0;
    int k;
    if (r->cfg.kind == DTNH_FMAP_ATTENTION) return dtnh_attention_distance(f, s, r->cfg.alpha, df, value, err);
    if (r->cfg.kind == DTNH_FMAP_DISTANCE) return dtnh_feature_distance(f, s, NULL, r->cfg.alpha, df, value, err);
    for (k = 0; k < i; k++) off += (size_t)r->channels[k];
    for (k = 0; k < r->channels[i]; k++) weights[k] = (float)r->channels[i] * r->attention[off + (size_t)k];
    return dtnh_feature_distance(f, s, weights, r->cfg.alpha, df, value, err);
}

/* Everything compute does between the source forward and the backward, on the step arena. */
static dtnh_status dtnh__fmap_run(dtnh_fmap_reg *r, const dtnh_tensor *x, dtnh_arena *step,
                                  const float *dlogits, float *grad, int accumulate, double *value,
                                  dtnh_error *err) {
    const float *hook_grads[DTNH_RESNET_MAX_HOOKS];
    dtnh_tensor logits;
    double total = 0;
    int i;
    dtnh_status s;
    if ((s = dtnh_resnet_infer(&r->source, x, step, &logits, err))) return s;
    for (i = 0; i < DTNH_RESNET_MAX_HOOKS; i++) hook_grads[i] = NULL;
    for (i = 0; i < r->cfg.hook_count; i++) {
        dtnh_tensor f, src;
        float *df = NULL, *weights = NULL;
        double v = 0;
        if ((s = dtnh_resnet_hook_output(r->target, r->target_hook[i], &f, err)) ||
            (s = dtnh_resnet_hook_output(&r->source, r->source_hook[i], &src, err)))
            return s;
        if ((s = dtnh_arena_alloc_floats(step, dtnh_tensor_count(&f), &df, err)) ||
            (s = dtnh_arena_alloc_floats(step, (size_t)r->channels[i], &weights, err)))
            return s;
        if (dtnh_arena_is_counting(step)) continue;
        if (!f.data)
            return dtnh_fail(err, DTNH_ERR_ARG, "fmap_reg_compute: no training forward of the target yet");
        if ((s = dtnh__fmap_hook(r, i, &f, &src, df, weights, &v, err))) return s;
        hook_grads[r->target_hook[i]] = df;
        total += v;
    }
    if (dtnh_arena_is_counting(step)) return DTNH_OK;
    if ((s = dtnh_resnet_backward(r->target, dlogits, hook_grads, grad, accumulate, err))) return s;
    if (value) *value = total;
    return DTNH_OK;
}

DTNHDEF dtnh_status dtnh_fmap_reg_compute(dtnh_fmap_reg *r, const dtnh_tensor *x,
                                          dtnh_arena *step, const float *dlogits, float *grad,
                                          int accumulate, double *value, dtnh_error *err) {
    size_t mark;
    dtnh_status s;
    if (!r || !r->target || !x || !step || (!grad && !dtnh_arena_is_counting(step)))
        return dtnh_fail(err, DTNH_ERR_ARG, "fmap_reg_compute: NULL regularizer, input, arena or gradient");
    if (r->cfg.kind == DTNH_FMAP_DELTA && !r->attention_ready && !dtnh_arena_is_counting(step))
        return dtnh_fail(err, DTNH_ERR_ARG,
                         "fmap_reg_compute: DELTA needs its attention (dtnh_fmap_reg_attention or _load_attention)");
    mark = dtnh_arena_mark(step);
    s = dtnh__fmap_run(r, x, step, dlogits, grad, accumulate, value, err);
    dtnh_arena_reset(step, mark);
    return s;
}

/* Mean cross-entropy of net on batch b, with channel `channel` of hook `hook` zeroed (hook
   -1: nothing zeroed). */
static dtnh_status dtnh__delta_loss(dtnh_resnet *net, const dtnh_tensor *x, const int *labels, int hook,
                                    int channel, dtnh_arena *step, double *loss, dtnh_error *err) {
    dtnh_tensor logits;
    size_t mark = dtnh_arena_mark(step);
    dtnh_status s = hook < 0 ? dtnh_resnet_infer(net, x, step, &logits, err)
                             : dtnh_resnet_infer_masked(net, x, hook, channel, step, &logits, err);
    if (!s) s = dtnh_softmax_cross_entropy(logits.shape[0], logits.shape[1], logits.data, labels, NULL, loss, err);
    dtnh_arena_reset(step, mark);
    return s;
}

DTNHDEF dtnh_status dtnh_fmap_reg_attention(dtnh_fmap_reg *r, dtnh_resnet *net, int batches,
                                            const dtnh_tensor *x, const int *const *labels,
                                            dtnh_arena *step, dtnh_error *err) {
    double base = 0, loss;
    size_t off = 0;
    int i, c, b, hook[DTNH_RESNET_MAX_HOOKS];
    dtnh_status s;
    if (!r || !net || !x || !labels || !step || batches < 1 || dtnh_arena_is_counting(step))
        return dtnh_fail(err, DTNH_ERR_ARG, "fmap_reg_attention: NULL argument, %d batches or a counting arena", batches);
    if (r->cfg.kind != DTNH_FMAP_DELTA || !r->attention)
        return dtnh_fail(err, DTNH_ERR_ARG, "fmap_reg_attention: only a DELTA regularizer has attention");
    for (i = 0; i < r->cfg.hook_count; i++) {
        hook[i] = dtnh_resnet_hook_index(net, r->cfg.hooks[i]);
        if (hook[i] < 0 || dtnh__fmap_hook_channels(net, hook[i]) != r->channels[i])
            return dtnh_fail(err, DTNH_ERR_ARG, "fmap_reg_attention: net lacks hook '%s' or it has another width",
                             r->cfg.hooks[i]);
    }
    r->attention_ready = 0;
    for (b = 0; b < batches; b++) {
        if ((s = dtnh__delta_loss(net, &x[b], labels[b], -1, 0, step, &loss, err))) return s;
        base += loss / batches;
    }
    for (i = 0; i < r->cfg.hook_count; i++) {
        float *rise = r->attention + off;
        for (c = 0; c < r->channels[i]; c++) {
            double mean = 0;
            for (b = 0; b < batches; b++) {
                if ((s = dtnh__delta_loss(net, &x[b], labels[b], hook[i], c, step, &loss, err))) return s;
                mean += loss / batches;
            }
            rise[c] = (float)(mean - base);
        }
        dtnh_delta_weights(r->channels[i], rise, r->cfg.temperature);
        off += (size_t)r->channels[i];
    }
    r->attention_ready = 1;
    return DTNH_OK;
}

#ifndef DTNH_NO_STDIO
#define DTNH__DELTA_PREFIX "delta."

static void dtnh__delta_tensor_name(const dtnh_fmap_reg *r, int i, char *name) {
    strcpy(name, DTNH__DELTA_PREFIX);
    strcat(name, r->cfg.hooks[i]);
}

DTNHDEF dtnh_status dtnh_fmap_reg_save_attention(const dtnh_fmap_reg *r, const char *path,
                                                 dtnh_error *err) {
    dtnh_st_tensor t[DTNH_RESNET_MAX_HOOKS];
    char names[DTNH_RESNET_MAX_HOOKS][DTNH_NAME_SIZE + 8];
    dtnh_st_meta meta;
    size_t off = 0;
    int i;
    if (!r || !path || !r->attention_ready)
        return dtnh_fail(err, DTNH_ERR_ARG, "fmap_reg_save_attention: NULL argument or no attention yet");
    memset(t, 0, sizeof t);
    for (i = 0; i < r->cfg.hook_count; i++) {
        dtnh__delta_tensor_name(r, i, names[i]);
        t[i].name = names[i];
        t[i].dtype = DTNH_ST_F32;
        t[i].ndim = 1;
        t[i].shape[0] = r->channels[i];
        t[i].f32 = r->attention + off;
        off += (size_t)r->channels[i];
    }
    meta.key = "format";
    meta.value = "dtnh-delta-attention";
    return dtnh_st_save(path, t, r->cfg.hook_count, &meta, 1, err);
}

/* Every hook's tensor present, of C floats, finite: checked before anything is read. */
static dtnh_status dtnh__delta_check_file(const dtnh_fmap_reg *r, dtnh_st_file *f, const char *path,
                                          int *index, dtnh_error *err) {
    char name[DTNH_NAME_SIZE + 8];
    int i;
    dtnh_status s;
    for (i = 0; i < r->cfg.hook_count; i++) {
        dtnh__delta_tensor_name(r, i, name);
        index[i] = dtnh_st_find(f, name);
        if (index[i] < 0)
            return dtnh_fail(err, DTNH_ERR_FORMAT, "fmap_reg_load_attention: '%s' has no tensor '%s'", path, name);
        if (!dtnh_st_shape_is(f, index[i], 1, &r->channels[i]))
            return dtnh_fail(err, DTNH_ERR_SHAPE, "fmap_reg_load_attention: '%s' in '%s' is not [%d]", name, path,
                             r->channels[i]);
        if ((s = dtnh_st_check_finite(f, index[i], err))) return s;
    }
    return DTNH_OK;
}

DTNHDEF dtnh_status dtnh_fmap_reg_load_attention(dtnh_fmap_reg *r, const char *path,
                                                 dtnh_arena *scratch, dtnh_error *err) {
    dtnh_st_file f;
    int index[DTNH_RESNET_MAX_HOOKS], i;
    size_t mark, off = 0;
    dtnh_status s;
    if (!r || !path || !scratch || !r->attention)
        return dtnh_fail(err, DTNH_ERR_ARG, "fmap_reg_load_attention: NULL argument or not a DELTA regularizer");
    mark = dtnh_arena_mark(scratch);
    if ((s = dtnh_st_open(&f, path, scratch, err))) {
        dtnh_arena_reset(scratch, mark);
        return s;
    }
    s = dtnh__delta_check_file(r, &f, path, index, err);
    for (i = 0; !s && i < r->cfg.hook_count; i++) {
        s = dtnh_st_read_f32(&f, index[i], r->attention + off, (size_t)r->channels[i], err);
        off += (size_t)r->channels[i];
    }
    dtnh_st_close(&f);
    dtnh_arena_reset(scratch, mark);
    if (!s) r->attention_ready = 1;
    return s;
}
#endif
/* ---- data: byte sources ---------------------------------------------------------------------
   Every reader parses through a source, a memory buffer or a file, with positional reads that
   check the size first: the same parsing code serves files, buffers and the fuzzers. */

#include <limits.h>

#ifndef DTNH_NO_STDIO
#include <errno.h>
#include <stdio.h>
#if !defined(DTNH_NO_DIRENT) && !defined(_WIN32)
#define DTNH__HAVE_DIRENT 1
#include <dirent.h>
#endif
#endif

#define DTNH__IDX_IMAGES 0x00000803u
#define DTNH__IDX_LABELS 0x00000801u
#define DTNH__CIFAR_PIXELS 3072u

static dtnh_status dtnh__src_memory(dtnh__source *s, const void *data, size_t size,
                                    dtnh_error *err) {
    memset(s, 0, sizeof *s);
    strcpy(s->name, "<memory>");
    if (!data) return dtnh_fail(err, DTNH_ERR_ARG, "data set: NULL memory buffer");
    s->mem = (const unsigned char *)data;
    s->size = size;
    return DTNH_OK;
}

static void dtnh__src_close(dtnh__source *s) {
#ifndef DTNH_NO_STDIO
    if (s->file) fclose((FILE *)s->file);
#endif
    s->file = NULL;
    s->mem = NULL;
}

#ifndef DTNH_NO_STDIO
static dtnh_status dtnh__src_open_file(dtnh__source *s, const char *path, dtnh_error *err) {
    FILE *f;
    long end = -1;
    memset(s, 0, sizeof *s);
    strcpy(s->name, "<none>");
    if (!path) return dtnh_fail(err, DTNH_ERR_ARG, "data set: NULL path");
    if (strlen(path) >= DTNH_PATH_SIZE)
        return dtnh_fail(err, DTNH_ERR_ARG, "path '%.80s...' is longer than %d bytes", path,
                         DTNH_PATH_SIZE - 1);
    strcpy(s->name, path);
    f = fopen(path, "rb");
    if (!f) return dtnh_fail(err, DTNH_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
    if (fseek(f, 0, SEEK_END) == 0) end = ftell(f);
    if (end < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        return dtnh_fail(err, DTNH_ERR_IO, "cannot find the size of '%s'", path);
    }
    s->file = f;
    s->size = (size_t)end;
    return DTNH_OK;
}
#endif

/* n bytes at offset off into buf; reading past the end is a truncated file. */
static dtnh_status dtnh__src_read(dtnh__source *s, size_t off, void *buf, size_t n,
                                  dtnh_error *err) {
    if (off > s->size || n > s->size - off)
        return dtnh_fail(err, DTNH_ERR_FORMAT,
                         "'%s' is truncated: %zu bytes wanted at offset %zu, it has %zu", s->name,
                         n, off, s->size);
    if (n == 0) return DTNH_OK;
    if (s->mem) {
        memcpy(buf, s->mem + off, n);
        return DTNH_OK;
    }
#ifndef DTNH_NO_STDIO
    if (s->file) {
        FILE *f = (FILE *)s->file;
        size_t got;
        if (s->pos != off && (off > (size_t)LONG_MAX || fseek(f, (long)off, SEEK_SET) != 0)) {
            s->pos = (size_t)-1;
            return dtnh_fail(err, DTNH_ERR_IO, "cannot seek to offset %zu in '%s'", off, s->name);
        }
        got = fread(buf, 1, n, f);
        s->pos = off + got;
        if (got != n)
            return dtnh_fail(err, DTNH_ERR_IO, "'%s': read %zu of %zu bytes at offset %zu", s->name,
                             got, n, off);
        return DTNH_OK;
    }
#endif
    return dtnh_fail(err, DTNH_ERR_ARG, "data set '%s' is not open", s->name);
}

static uint32_t dtnh__be32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static void dtnh__dataset_reset(dtnh_dataset *ds, dtnh_data_format format) {
    memset(ds, 0, sizeof *ds);
    ds->format = format;
    ds->max_label = -1;
    ds->max_label_at = -1;
}

DTNHDEF void dtnh_dataset_close(dtnh_dataset *ds) {
    if (!ds) return;
    dtnh__src_close(&ds->images);
    dtnh__src_close(&ds->labels);
}

/* CIFAR-10 keeps its labels inside the image records. */
static dtnh__source *dtnh__label_source(dtnh_dataset *ds) {
    return ds->format == DTNH_DATA_CIFAR10 ? &ds->images : &ds->labels;
}

static const char *dtnh__label_origin(dtnh_dataset *ds) {
    return ds->format == DTNH_DATA_FOLDER ? ds->root : dtnh__label_source(ds)->name;
}

/* ---- data: labels -------------------------------------------------------------------------- */

/* Labels [first, first + n) of an IDX or CIFAR-10 set into out, through a small stack buffer. */
static dtnh_status dtnh__read_label_bytes(dtnh_dataset *ds, int first, int n, int *out,
                                          dtnh_error *err) {
    unsigned char buf[512];
    dtnh__source *src = dtnh__label_source(ds);
    int done = 0;
    while (done < n) {
        int k = n - done < (int)sizeof buf ? n - done : (int)sizeof buf, j;
        size_t pos = ds->label_offset + (size_t)(first + done) * ds->label_stride;
        dtnh_status s = DTNH_OK;
        if (ds->label_stride == 1) s = dtnh__src_read(src, pos, buf, (size_t)k, err);
        for (j = 0; ds->label_stride != 1 && j < k && !s; j++)
            s = dtnh__src_read(src, pos + (size_t)j * ds->label_stride, buf + j, 1, err);
        if (s) return s;
        for (j = 0; j < k; j++) out[done + j] = buf[j];
        done += k;
    }
    return DTNH_OK;
}

/* Labels [first, first + n) in any format. */
static dtnh_status dtnh__read_labels(dtnh_dataset *ds, int first, int n, int *out,
                                     dtnh_error *err) {
    int j;
    if (ds->format == DTNH_DATA_FOLDER) {
        memcpy(out, ds->file_labels + first, (size_t)n * sizeof(int));
        return DTNH_OK;
    }
    if (!ds->has_labels) {
        for (j = 0; j < n; j++) out[j] = -1;
        return DTNH_OK;
    }
    return dtnh__read_label_bytes(ds, first, n, out, err);
}

/* Finds the largest label and where it first occurs; classes becomes it + 1. */
static dtnh_status dtnh__scan_labels(dtnh_dataset *ds, dtnh_error *err) {
    int chunk[256], first;
    ds->max_label = -1;
    ds->max_label_at = -1;
    for (first = 0; first < ds->count; first += 256) {
        int n = ds->count - first < 256 ? ds->count - first : 256, j;
        dtnh_status s = dtnh__read_labels(ds, first, n, chunk, err);
        if (s) return s;
        for (j = 0; j < n; j++)
            if (chunk[j] > ds->max_label) {
                ds->max_label = chunk[j];
                ds->max_label_at = first + j;
            }
    }
    ds->classes = ds->max_label + 1;
    return DTNH_OK;
}

static dtnh_status dtnh__bad_label(dtnh_dataset *ds, int label, int index, dtnh_error *err) {
    if (ds->format == DTNH_DATA_CIFAR10)
        return dtnh_fail(err, DTNH_ERR_FORMAT,
                         "label %d of image %d (offset %zu) in '%s' is out of range [0, %d)", label,
                         index, (size_t)index * ds->label_stride, ds->images.name, ds->classes);
    return dtnh_fail(err, DTNH_ERR_FORMAT, "label %d of image %d in '%s' is out of range [0, %d)",
                     label, index, dtnh__label_origin(ds), ds->classes);
}

DTNHDEF dtnh_status dtnh_dataset_set_classes(dtnh_dataset *ds, int classes, dtnh_error *err) {
    if (!ds || classes < 1)
        return dtnh_fail(err, DTNH_ERR_ARG, "set_classes: NULL data set or %d classes", classes);
    if (ds->has_labels && ds->max_label >= classes) {
        ds->classes = classes;
        return dtnh__bad_label(ds, ds->max_label, ds->max_label_at, err);
    }
    ds->classes = classes;
    return DTNH_OK;
}

DTNHDEF dtnh_status dtnh_dataset_labels(dtnh_dataset *ds, int *labels, dtnh_error *err) {
    if (!ds || !labels) return dtnh_fail(err, DTNH_ERR_ARG, "dataset_labels: NULL argument");
    if (ds->format == DTNH_DATA_FOLDER && !ds->file_labels)
        return dtnh_fail(err, DTNH_ERR_ARG, "folder '%s' was only sized (counting arena)", ds->root);
    return dtnh__read_labels(ds, 0, ds->count, labels, err);
}

/* ---- data: IDX ----------------------------------------------------------------------------- */

/* Reads an IDX header of ndim u32 dimensions after the magic; refuses any other magic. */
static dtnh_status dtnh__idx_header(dtnh__source *s, uint32_t magic_wanted, uint32_t *dims,
                                    dtnh_error *err) {
    unsigned char h[16];
    int ndim = (int)(magic_wanted & 0xFFu), i;
    uint32_t magic;
    dtnh_status st;
    const char *what = ndim == 3 ? "images" : "labels";
    if (s->size < 4)
        return dtnh_fail(err, DTNH_ERR_FORMAT, "'%s' is %zu bytes: too short for IDX %s", s->name,
                         s->size, what);
    if ((st = dtnh__src_read(s, 0, h, 4, err))) return st;
    magic = dtnh__be32(h);
    if (h[0] == 0x1F && h[1] == 0x8B)
        return dtnh_fail(err, DTNH_ERR_FORMAT, "'%s' is gzip-compressed: gunzip it first", s->name);
    if (magic != magic_wanted)
        return dtnh_fail(err, DTNH_ERR_FORMAT, "'%s' has magic 0x%08x, expected 0x%08x (IDX %s)",
                         s->name, (unsigned)magic, (unsigned)magic_wanted, what);
    if (s->size < 4 + 4 * (size_t)ndim)
        return dtnh_fail(err, DTNH_ERR_FORMAT, "'%s' is truncated inside its %d-byte IDX header",
                         s->name, 4 + 4 * ndim);
    if ((st = dtnh__src_read(s, 4, h + 4, 4 * (size_t)ndim, err))) return st;
    for (i = 0; i < ndim; i++) dims[i] = dtnh__be32(h + 4 + 4 * i);
    return DTNH_OK;
}

/* The body of a source must be exactly `want` bytes after `header`. */
static dtnh_status dtnh__check_body_size(const dtnh__source *s, size_t header, size_t want,
                                         const char *what, dtnh_error *err) {
    size_t have = s->size - header;
    if (have < want)
        return dtnh_fail(err, DTNH_ERR_FORMAT,
                         "'%s' is truncated: its header announces %s (%zu bytes), only %zu follow",
                         s->name, what, want, have);
    if (have > want)
        return dtnh_fail(err, DTNH_ERR_FORMAT,
                         "'%s' has %zu bytes after %s (%zu bytes) that its header does not announce",
                         s->name, have - want, what, want);
    return DTNH_OK;
}

static dtnh_status dtnh__idx_images(dtnh_dataset *ds, dtnh_error *err) {
    uint32_t d[3] = {0, 0, 0};
    size_t total = 0;
    char what[96];
    dtnh_status s = dtnh__idx_header(&ds->images, DTNH__IDX_IMAGES, d, err);
    if (s) return s;
    if (d[0] == 0 || d[0] > (uint32_t)INT_MAX)
        return dtnh_fail(err, DTNH_ERR_FORMAT, "'%s' announces %lu images, expected 1..%d",
                         ds->images.name, (unsigned long)d[0], INT_MAX);
    if (d[1] == 0 || d[2] == 0 || d[1] > DTNH_MAX_SIDE || d[2] > DTNH_MAX_SIDE)
        return dtnh_fail(err, DTNH_ERR_FORMAT, "'%s' announces %lux%lu images, expected 1..%d a side",
                         ds->images.name, (unsigned long)d[1], (unsigned long)d[2], DTNH_MAX_SIDE);
    ds->count = (int)d[0];
    ds->channels = 1;
    ds->height = (int)d[1];
    ds->width = (int)d[2];
    ds->image_bytes = (size_t)d[1] * d[2];
    ds->image_offset = 16;
    ds->image_stride = ds->image_bytes;
    if ((s = dtnh_size_mul(ds->image_bytes, (size_t)ds->count, &total, err))) return s;
    snprintf(what, sizeof what, "%d images of %dx%d", ds->count, ds->height, ds->width);
    return dtnh__check_body_size(&ds->images, 16, total, what, err);
}

static dtnh_status dtnh__idx_labels(dtnh_dataset *ds, dtnh_error *err) {
    uint32_t n = 0;
    char what[64];
    dtnh_status s = dtnh__idx_header(&ds->labels, DTNH__IDX_LABELS, &n, err);
    if (s) return s;
    if (n != (uint32_t)ds->count)
        return dtnh_fail(err, DTNH_ERR_FORMAT, "'%s' holds %lu labels but '%s' holds %d images",
                         ds->labels.name, (unsigned long)n, ds->images.name, ds->count);
    ds->label_offset = 8;
    ds->label_stride = 1;
    ds->has_labels = 1;
    snprintf(what, sizeof what, "%d labels", ds->count);
    return dtnh__check_body_size(&ds->labels, 8, (size_t)ds->count, what, err);
}

static dtnh_status dtnh__idx_finish(dtnh_dataset *ds, int with_labels, dtnh_error *err) {
    dtnh_status s = dtnh__idx_images(ds, err);
    if (!s && with_labels) s = dtnh__idx_labels(ds, err);
    if (!s && with_labels) s = dtnh__scan_labels(ds, err);
    if (s) dtnh_dataset_close(ds);
    return s;
}

#ifndef DTNH_NO_STDIO
DTNHDEF dtnh_status dtnh_idx_open(dtnh_dataset *ds, const char *images_path,
                                  const char *labels_path, dtnh_error *err) {
    dtnh_status s;
    if (!ds) return dtnh_fail(err, DTNH_ERR_ARG, "idx_open: NULL data set");
    dtnh__dataset_reset(ds, DTNH_DATA_IDX);
    if ((s = dtnh__src_open_file(&ds->images, images_path, err))) return s;
    if (labels_path && (s = dtnh__src_open_file(&ds->labels, labels_path, err))) {
        dtnh_dataset_close(ds);
        return s;
    }
    return dtnh__idx_finish(ds, labels_path != NULL, err);
}
#endif

DTNHDEF dtnh_status dtnh_idx_open_memory(dtnh_dataset *ds, const void *images, size_t images_size,
                                         const void *labels, size_t labels_size, dtnh_error *err) {
    dtnh_status s;
    if (!ds) return dtnh_fail(err, DTNH_ERR_ARG, "idx_open_memory: NULL data set");
    dtnh__dataset_reset(ds, DTNH_DATA_IDX);
    if ((s = dtnh__src_memory(&ds->images, images, images_size, err))) return s;
    if (labels && (s = dtnh__src_memory(&ds->labels, labels, labels_size, err))) return s;
    return dtnh__idx_finish(ds, labels != NULL, err);
}

/* ---- data: CIFAR-10 ------------------------------------------------------------------------ */

static dtnh_status dtnh__cifar_finish(dtnh_dataset *ds, dtnh_error *err) {
    dtnh__source *src = &ds->images;
    size_t rec = 1 + DTNH__CIFAR_PIXELS, n = src->size / rec;
    dtnh_status s;
    ds->channels = 3;
    ds->height = ds->width = 32;
    ds->image_bytes = DTNH__CIFAR_PIXELS;
    ds->image_offset = 1;
    ds->image_stride = rec;
    ds->label_offset = 0;
    ds->label_stride = rec;
    ds->has_labels = 1;
    if (src->size == 0 || src->size % rec != 0 || n > (size_t)INT_MAX) {
        dtnh_fail(err, DTNH_ERR_FORMAT,
                  "'%s' is %zu bytes, not a whole number of %zu-byte CIFAR-10 records (1 label + "
                  "3072 pixels): %zu bytes follow record %zu",
                  src->name, src->size, rec, src->size % rec, n);
        dtnh_dataset_close(ds);
        return DTNH_ERR_FORMAT;
    }
    ds->count = (int)n;
    s = dtnh__scan_labels(ds, err);
    if (!s) s = dtnh_dataset_set_classes(ds, 10, err);
    if (s) dtnh_dataset_close(ds);
    return s;
}

#ifndef DTNH_NO_STDIO
DTNHDEF dtnh_status dtnh_cifar10_open(dtnh_dataset *ds, const char *path, dtnh_error *err) {
    dtnh_status s;
    if (!ds) return dtnh_fail(err, DTNH_ERR_ARG, "cifar10_open: NULL data set");
    dtnh__dataset_reset(ds, DTNH_DATA_CIFAR10);
    if ((s = dtnh__src_open_file(&ds->images, path, err))) return s;
    return dtnh__cifar_finish(ds, err);
}
#endif

DTNHDEF dtnh_status dtnh_cifar10_open_memory(dtnh_dataset *ds, const void *data, size_t size,
                                             dtnh_error *err) {
    dtnh_status s;
    if (!ds) return dtnh_fail(err, DTNH_ERR_ARG, "cifar10_open_memory: NULL data set");
    dtnh__dataset_reset(ds, DTNH_DATA_CIFAR10);
    if ((s = dtnh__src_memory(&ds->images, data, size, err))) return s;
    return dtnh__cifar_finish(ds, err);
}

/* ---- data: PGM / PPM ------------------------------------------------------------------------
   Netpbm P2/P5 (grey) and P3/P6 (RGB), maxval 1..255, through a small buffered reader so the
   header's comments and the ASCII bodies parse the same from a file or from memory. */

typedef struct dtnh__reader {
    dtnh__source *src;
    size_t next;     /* source offset just past buf's contents */
    size_t len, at;  /* bytes in buf, and the next one to hand out */
    dtnh_status status; /* a failed read, already reported into err */
    dtnh_error *err;
    unsigned char buf[1024];
} dtnh__reader;

typedef struct dtnh__pnm {
    int kind; /* 2, 3, 5 or 6 */
    int channels, width, height, maxval;
    size_t data_offset; /* first byte after the header */
} dtnh__pnm;

static void dtnh__reader_init(dtnh__reader *r, dtnh__source *src, dtnh_error *err) {
    r->src = src;
    r->next = r->len = r->at = 0;
    r->status = DTNH_OK;
    r->err = err;
}

/* The next byte, or -1 at the end or after a failed read (then r->status says which). */
static int dtnh__reader_getc(dtnh__reader *r) {
    if (r->at == r->len) {
        size_t n = r->src->size - r->next;
        if (n > sizeof r->buf) n = sizeof r->buf;
        if (n == 0 || r->status) return -1;
        r->status = dtnh__src_read(r->src, r->next, r->buf, n, r->err);
        if (r->status) return -1;
        r->next += n;
        r->len = n;
        r->at = 0;
    }
    return r->buf[r->at++];
}

static size_t dtnh__reader_offset(const dtnh__reader *r) { return r->next - r->len + r->at; }

static int dtnh__is_space(int c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* Skips a # comment through its line end; returns the line end (or -1). */
static int dtnh__skip_comment(dtnh__reader *r) {
    int c;
    do c = dtnh__reader_getc(r);
    while (c >= 0 && c != '\n' && c != '\r');
    return c;
}

/* The next decimal number after blanks and comments. *end gets the byte that ended it (a
   comment counts as a line end). Returns 0, -1 without digits, -2 when too large. */
static int dtnh__pnm_number(dtnh__reader *r, long *value, int *end) {
    int c = dtnh__reader_getc(r), digits = 0;
    long v = 0;
    while (c == '#' || dtnh__is_space(c))
        c = c == '#' ? dtnh__skip_comment(r) : dtnh__reader_getc(r);
    for (; c >= '0' && c <= '9'; c = dtnh__reader_getc(r), digits++) {
        if (v > 99999999L) return -2;
        v = v * 10 + (c - '0');
    }
    if (c == '#') c = dtnh__skip_comment(r) < 0 ? -1 : '\n';
    *end = c;
    *value = v;
    return digits ? 0 : -1;
}

static dtnh_status dtnh__pnm_header(dtnh__reader *r, dtnh__pnm *p, dtnh_error *err) {
    static const char *const what[3] = {"width", "height", "maxval"};
    const char *name = r->src->name;
    long v[3];
    int c0, c1, i;
    memset(p, 0, sizeof *p);
    c0 = dtnh__reader_getc(r);
    c1 = dtnh__reader_getc(r);
    if (r->status) return r->status;
    if (c0 != 'P' || !(c1 == '2' || c1 == '3' || c1 == '5' || c1 == '6'))
        return dtnh_fail(err, DTNH_ERR_FORMAT,
                         "'%s' is not a PGM/PPM image: it starts with 0x%02x 0x%02x, expected P2, "
                         "P3, P5 or P6", name, c0 & 0xFF, c1 & 0xFF);
    p->kind = c1 - '0';
    p->channels = p->kind == 3 || p->kind == 6 ? 3 : 1;
    for (i = 0; i < 3; i++) {
        int end, rc = dtnh__pnm_number(r, &v[i], &end);
        if (r->status) return r->status;
        if (rc == -2)
            return dtnh_fail(err, DTNH_ERR_FORMAT, "'%s': the header's %s is too large", name, what[i]);
        if (rc)
            return dtnh_fail(err, DTNH_ERR_FORMAT, "'%s': the header ends before its %s", name, what[i]);
        if (!dtnh__is_space(end))
            return dtnh_fail(err, DTNH_ERR_FORMAT, "'%s': %s in the header after its %s", name,
                             end < 0 ? "the file ends" : "an unexpected byte", what[i]);
    }
    if (v[0] < 1 || v[1] < 1 || v[0] > DTNH_MAX_SIDE || v[1] > DTNH_MAX_SIDE)
        return dtnh_fail(err, DTNH_ERR_FORMAT, "'%s' is %ldx%ld, expected 1..%d a side", name, v[0],
                         v[1], DTNH_MAX_SIDE);
    if (v[2] < 1 || v[2] > 255)
        return dtnh_fail(err, DTNH_ERR_FORMAT,
                         "'%s' has maxval %ld, expected 1..255 (16-bit PGM/PPM is not supported)",
                         name, v[2]);
    p->width = (int)v[0];
    p->height = (int)v[1];
    p->maxval = (int)v[2];
    p->data_offset = dtnh__reader_offset(r);
    return DTNH_OK;
}

/* One pixel value of the body: a byte (P5, P6) or a decimal (P2, P3); fails with a message. */
static dtnh_status dtnh__pnm_value(dtnh__reader *r, const dtnh__pnm *p, size_t i, size_t n,
                                   long *v, dtnh_error *err) {
    int rc = 0, end = ' ';
    if (p->kind >= 5) {
        int c = dtnh__reader_getc(r);
        rc = c < 0 ? -1 : 0;
        *v = c;
    } else {
        rc = dtnh__pnm_number(r, v, &end);
    }
    if (r->status) return r->status;
    if (rc || !(dtnh__is_space(end) || end < 0))
        return dtnh_fail(err, DTNH_ERR_FORMAT, "'%s': %s at pixel value %zu of %zu",
                         r->src->name, rc == -1 ? "truncated" : "a bad value", i, n);
    if (*v > p->maxval)
        return dtnh_fail(err, DTNH_ERR_FORMAT, "'%s': pixel value %zu is %ld, above maxval %d",
                         r->src->name, i, *v, p->maxval);
    return DTNH_OK;
}

/* The pixels after the header, channel-planar, scaled to 0..255 when maxval is not 255. */
static dtnh_status dtnh__pnm_body(dtnh__reader *r, const dtnh__pnm *p, unsigned char *pixels,
                                  dtnh_error *err) {
    size_t plane = (size_t)p->width * (size_t)p->height, n = plane * (size_t)p->channels, i;
    if (p->kind >= 5 && r->src->size - p->data_offset < n)
        return dtnh_fail(err, DTNH_ERR_FORMAT,
                         "'%s' is truncated: %zu pixel bytes follow the header at offset %zu, %zu "
                         "needed", r->src->name, r->src->size - p->data_offset, p->data_offset, n);
    if (p->kind == 5 && p->maxval == 255)
        return dtnh__src_read(r->src, p->data_offset, pixels, n, err);
    for (i = 0; i < n; i++) {
        long v;
        dtnh_status s = dtnh__pnm_value(r, p, i, n, &v, err);
        if (s) return s;
        if (p->maxval != 255) v = (v * 255 + p->maxval / 2) / p->maxval;
        pixels[(i % (size_t)p->channels) * plane + i / (size_t)p->channels] = (unsigned char)v;
    }
    return DTNH_OK;
}

DTNHDEF dtnh_status dtnh_pnm_decode(const void *data, size_t size, unsigned char *pixels,
                                    size_t capacity, int *channels, int *height, int *width,
                                    dtnh_error *err) {
    dtnh__source src;
    dtnh__reader r;
    dtnh__pnm p;
    dtnh_status s = dtnh__src_memory(&src, data, size, err);
    size_t need;
    if (s) return s;
    dtnh__reader_init(&r, &src, err);
    if ((s = dtnh__pnm_header(&r, &p, err))) return s;
    if (channels) *channels = p.channels;
    if (height) *height = p.height;
    if (width) *width = p.width;
    if (!pixels) return DTNH_OK;
    need = (size_t)p.channels * (size_t)p.height * (size_t)p.width;
    if (capacity < need)
        return dtnh_fail(err, DTNH_ERR_ARG, "pnm_decode: a %dx%dx%d image needs %zu bytes, %zu given",
                         p.channels, p.height, p.width, need, capacity);
    return dtnh__pnm_body(&r, &p, pixels, err);
}

/* ---- data: folders of images ---------------------------------------------------------------
   root/<class>/<file>: class names sorted, files sorted within a class, so the order does not
   depend on the file system. The lists live in the caller's arena. */

#ifndef DTNH_NO_STDIO
static dtnh_status dtnh__join(char *out, const char *a, const char *b, const char *c,
                              dtnh_error *err) {
    int n = c ? snprintf(out, DTNH_PATH_SIZE, "%s/%s/%s", a, b, c)
              : snprintf(out, DTNH_PATH_SIZE, "%s/%s", a, b);
    if (n < 0 || n >= DTNH_PATH_SIZE)
        return dtnh_fail(err, DTNH_ERR_ARG, "path '%s/%s/%s' is longer than %d bytes", a, b,
                         c ? c : "", DTNH_PATH_SIZE - 1);
    return DTNH_OK;
}

/* Reads image i of a folder data set: its header only (pixels NULL) or the whole image. The
   first header read (channels still 0) sets the data set's shape; others must match it. */
static dtnh_status dtnh__folder_image(dtnh_dataset *ds, int i, unsigned char *pixels,
                                      dtnh_error *err) {
    char path[DTNH_PATH_SIZE];
    dtnh__source src;
    dtnh__reader r;
    dtnh__pnm p;
    dtnh_status s = dtnh__join(path, ds->root, ds->class_names[ds->file_labels[i]], ds->files[i], err);
    if (s || (s = dtnh__src_open_file(&src, path, err))) return s;
    dtnh__reader_init(&r, &src, err);
    s = dtnh__pnm_header(&r, &p, err);
    if (!s && ds->channels == 0) {
        ds->channels = p.channels;
        ds->height = p.height;
        ds->width = p.width;
        ds->image_bytes = (size_t)p.channels * (size_t)p.height * (size_t)p.width;
    }
    if (!s && (p.channels != ds->channels || p.height != ds->height || p.width != ds->width))
        s = dtnh_fail(err, DTNH_ERR_SHAPE,
                      "'%s' is %dx%d with %d channel(s), expected %dx%d with %d like '%s/%s'",
                      path, p.height, p.width, p.channels, ds->height, ds->width, ds->channels,
                      ds->class_names[ds->file_labels[0]], ds->files[0]);
    if (!s && pixels) s = dtnh__pnm_body(&r, &p, pixels, err);
    dtnh__src_close(&src);
    return s;
}
#endif

#ifdef DTNH__HAVE_DIRENT
static void dtnh__sift_names(const char **v, size_t root, size_t n) {
    for (;;) {
        size_t child = 2 * root + 1;
        const char *t;
        if (child >= n) return;
        if (child + 1 < n && strcmp(v[child], v[child + 1]) < 0) child++;
        if (strcmp(v[root], v[child]) >= 0) return;
        t = v[root];
        v[root] = v[child];
        v[child] = t;
        root = child;
    }
}

/* Heapsort by strcmp: no allocation, unlike some libc qsorts. */
static void dtnh__sort_names(const char **v, size_t n) {
    size_t i;
    if (n < 2) return;
    for (i = n / 2; i-- > 0;) dtnh__sift_names(v, i, n);
    for (i = n - 1; i > 0; i--) {
        const char *t = v[0];
        v[0] = v[i];
        v[i] = t;
        dtnh__sift_names(v, 0, i);
    }
}

static int dtnh__is_dir(const char *path) {
    DIR *d = opendir(path);
    if (d) closedir(d);
    return d != NULL;
}

static int dtnh__is_image_name(const char *s) {
    static const char *const ext[3] = {".pgm", ".ppm", ".pnm"};
    size_t n = strlen(s);
    int i, k;
    if (s[0] == '.' || n < 5) return 0;
    for (i = 0; i < 3; i++) {
        for (k = 0; k < 4; k++) {
            int c = s[n - 4 + k];
            if (c >= 'A' && c <= 'Z') c += 'a' - 'A';
            if (c != ext[i][k]) break;
        }
        if (k == 4) return 1;
    }
    return 0;
}

static dtnh_status dtnh__arena_strdup(dtnh_arena *a, const char *s, const char **out,
                                      dtnh_error *err) {
    size_t n = strlen(s) + 1;
    void *p = NULL;
    dtnh_status st = dtnh_arena_alloc(a, n, 1, &p, err);
    if (st) return st;
    if (p) memcpy(p, s, n);
    *out = (const char *)p;
    return DTNH_OK;
}

static dtnh_status dtnh__opendir(DIR **d, const char *path, dtnh_error *err) {
    *d = opendir(path);
    if (!*d) return dtnh_fail(err, DTNH_ERR_IO, "cannot open folder '%s': %s", path, strerror(errno));
    return DTNH_OK;
}

/* The next class sub-folder of an open root, its name in *name; 0 at the end. */
static int dtnh__next_class(DIR *d, const char *root, const char **name) {
    struct dirent *e;
    char path[DTNH_PATH_SIZE];
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        if (dtnh__join(path, root, e->d_name, NULL, NULL)) continue;
        if (!dtnh__is_dir(path)) continue;
        *name = e->d_name;
        return 1;
    }
    return 0;
}

/* Images in folder root/cls: counts them into *k (a NULL: nothing else), copies their names
   into the arena (a), and stores them (files, room for `room`). */
static dtnh_status dtnh__list_images(const char *root, const char *cls, dtnh_arena *a,
                                     const char **files, int room, int *k, dtnh_error *err) {
    char path[DTNH_PATH_SIZE];
    struct dirent *e;
    DIR *d;
    dtnh_status s = dtnh__join(path, root, cls, NULL, err);
    *k = 0;
    if (s || (s = dtnh__opendir(&d, path, err))) return s;
    while (!s && (e = readdir(d)) != NULL) {
        const char *copy = NULL;
        if (!dtnh__is_image_name(e->d_name)) continue;
        if (*k == INT_MAX || (files && *k >= room)) {
            s = dtnh_fail(err, DTNH_ERR_IO, "folder '%s' changed while being read", path);
            break;
        }
        if (a && !(s = dtnh__arena_strdup(a, e->d_name, &copy, err)) && files) files[*k] = copy;
        ++*k;
    }
    closedir(d);
    if (!s && *k == 0)
        s = dtnh_fail(err, DTNH_ERR_FORMAT, "class folder '%s' holds no .pgm/.ppm/.pnm images", path);
    return s;
}

/* Counts the class sub-folders, then copies their names (names may be NULL when counting). */
static dtnh_status dtnh__folder_classes(dtnh_dataset *ds, dtnh_arena *a, dtnh_error *err) {
    const char *name, **names = NULL;
    void *mem = NULL;
    int n = 0, k = 0;
    DIR *d;
    dtnh_status s = dtnh__opendir(&d, ds->root, err);
    if (s) return s;
    while (dtnh__next_class(d, ds->root, &name)) n++;
    closedir(d);
    if (n == 0)
        return dtnh_fail(err, DTNH_ERR_FORMAT, "folder '%s' has no class sub-folders", ds->root);
    if ((s = dtnh_arena_alloc(a, (size_t)n * sizeof(char *), sizeof(char *), &mem, err))) return s;
    names = (const char **)mem;
    if ((s = dtnh__opendir(&d, ds->root, err))) return s;
    while (!s && dtnh__next_class(d, ds->root, &name)) {
        const char *copy = NULL;
        if (k >= n) break;
        if (!(s = dtnh__arena_strdup(a, name, &copy, err)) && names) names[k] = copy;
        k++;
    }
    closedir(d);
    if (!s && k != n)
        s = dtnh_fail(err, DTNH_ERR_IO, "folder '%s' changed while being read", ds->root);
    if (s) return s;
    if (names) dtnh__sort_names(names, (size_t)n);
    ds->class_names = names;
    ds->classes = n;
    return DTNH_OK;
}

/* A counting arena keeps no class names: size the file lists by walking the root again. */
static dtnh_status dtnh__folder_count_files(dtnh_dataset *ds, dtnh_arena *a, int *total,
                                            dtnh_error *err) {
    const char *name;
    DIR *d;
    dtnh_status s = dtnh__opendir(&d, ds->root, err);
    *total = 0;
    while (!s && dtnh__next_class(d, ds->root, &name)) {
        int k;
        s = dtnh__list_images(ds->root, name, a, NULL, 0, &k, err);
        if (!s && k > INT_MAX - *total)
            s = dtnh_fail(err, DTNH_ERR_FORMAT, "folder '%s' holds too many images", ds->root);
        if (!s) *total += k;
    }
    if (d) closedir(d);
    return s;
}

/* Fills the sorted file lists, class by class (an assigning arena only). */
static dtnh_status dtnh__folder_fill(dtnh_dataset *ds, dtnh_arena *a, const char **files,
                                     int *labels, int total, dtnh_error *err) {
    int c, at = 0;
    for (c = 0; c < ds->classes; c++) {
        int k, j;
        dtnh_status s = dtnh__list_images(ds->root, ds->class_names[c], a, files + at, total - at,
                                          &k, err);
        if (s) return s;
        dtnh__sort_names(files + at, (size_t)k);
        for (j = 0; j < k; j++) labels[at + j] = c;
        at += k;
    }
    if (at != total)
        return dtnh_fail(err, DTNH_ERR_IO, "folder '%s' changed while being read", ds->root);
    return DTNH_OK;
}

static dtnh_status dtnh__folder_lists(dtnh_dataset *ds, dtnh_arena *a, dtnh_error *err) {
    int total = 0, c;
    void *files = NULL, *labels = NULL;
    dtnh_status s;
    if (dtnh_arena_is_counting(a)) {
        s = dtnh__folder_count_files(ds, NULL, &total, err);
    } else {
        for (c = 0, s = DTNH_OK; c < ds->classes && !s; c++) {
            int k;
            s = dtnh__list_images(ds->root, ds->class_names[c], NULL, NULL, 0, &k, err);
            if (!s && k > INT_MAX - total)
                s = dtnh_fail(err, DTNH_ERR_FORMAT, "folder '%s' holds too many images", ds->root);
            total += s ? 0 : k;
        }
    }
    if (s) return s;
    if ((s = dtnh_arena_alloc(a, (size_t)total * sizeof(char *), sizeof(char *), &files, err)) ||
        (s = dtnh_arena_alloc(a, (size_t)total * sizeof(int), sizeof(int), &labels, err)))
        return s;
    ds->count = total;
    if (dtnh_arena_is_counting(a)) return dtnh__folder_count_files(ds, a, &total, err);
    ds->files = (const char *const *)files;
    ds->file_labels = (const int *)labels;
    return dtnh__folder_fill(ds, a, (const char **)files, (int *)labels, total, err);
}
#endif

#ifndef DTNH_NO_STDIO
DTNHDEF dtnh_status dtnh_folder_open(dtnh_dataset *ds, const char *root, dtnh_arena *a,
                                     dtnh_error *err) {
#ifdef DTNH__HAVE_DIRENT
    size_t mark;
    dtnh_status s;
    int i;
    if (!ds || !root || !a) return dtnh_fail(err, DTNH_ERR_ARG, "folder_open: NULL argument");
    dtnh__dataset_reset(ds, DTNH_DATA_FOLDER);
    if (strlen(root) >= DTNH_PATH_SIZE)
        return dtnh_fail(err, DTNH_ERR_ARG, "path '%.80s...' is longer than %d bytes", root,
                         DTNH_PATH_SIZE - 1);
    strcpy(ds->root, root);
    mark = dtnh_arena_mark(a);
    s = dtnh__folder_classes(ds, a, err);
    if (!s) s = dtnh__folder_lists(ds, a, err);
    if (!s && dtnh_arena_is_counting(a)) return DTNH_OK;
    ds->has_labels = 1;
    for (i = 0; !s && i < ds->count; i++) s = dtnh__folder_image(ds, i, NULL, err);
    if (!s) s = dtnh__scan_labels(ds, err);
    if (!s) ds->classes = ds->max_label + 1;
    if (s) {
        dtnh_arena_reset(a, mark);
        dtnh__dataset_reset(ds, DTNH_DATA_FOLDER);
    }
    return s;
#else
    (void)ds;
    (void)root;
    (void)a;
    return dtnh_fail(err, DTNH_ERR_ARG, "folder_open: built without <dirent.h> (DTNH_NO_DIRENT)");
#endif
}
#endif

#ifndef DTNH_NO_STDIO
static int dtnh__path_is_folder(const char *path) {
#ifdef DTNH__HAVE_DIRENT
    return dtnh__is_dir(path);
#else
    (void)path;
    return 0;
#endif
}

DTNHDEF dtnh_status dtnh_dataset_open(dtnh_dataset *ds, const char *path, const char *labels_path,
                                      dtnh_arena *a, dtnh_error *err) {
    dtnh__source src;
    unsigned char magic[4] = {0, 0, 0, 0};
    dtnh_status s;
    size_t size;
    if (!ds || !path) return dtnh_fail(err, DTNH_ERR_ARG, "dataset_open: NULL argument");
    if (dtnh__path_is_folder(path)) {
        if (labels_path)
            return dtnh_fail(err, DTNH_ERR_ARG, "'%s' is a folder: its labels are its sub-folders, "
                             "not '%s'", path, labels_path);
        if (!a) return dtnh_fail(err, DTNH_ERR_ARG, "dataset_open: folder '%s' needs an arena", path);
        return dtnh_folder_open(ds, path, a, err);
    }
    if ((s = dtnh__src_open_file(&src, path, err))) return s;
    size = src.size;
    if (size >= 4) s = dtnh__src_read(&src, 0, magic, 4, err);
    dtnh__src_close(&src);
    if (s) return s;
    if (dtnh__be32(magic) == DTNH__IDX_IMAGES) return dtnh_idx_open(ds, path, labels_path, err);
    if (size > 0 && size % (1 + DTNH__CIFAR_PIXELS) == 0) {
        if (labels_path)
            return dtnh_fail(err, DTNH_ERR_ARG, "'%s' is a CIFAR-10 batch: its labels are inside, "
                             "not in '%s'", path, labels_path);
        return dtnh_cifar10_open(ds, path, err);
    }
    return dtnh_fail(err, DTNH_ERR_FORMAT, "'%s' is neither IDX images (magic 0x00000803, "
                     "uncompressed), a CIFAR-10 batch (a multiple of 3073 bytes) nor a folder; "
                     "it starts with 0x%02x%02x%02x%02x", path, magic[0], magic[1], magic[2], magic[3]);
}
#endif

/* ---- data: reading ------------------------------------------------------------------------- */

/* Image i into pixels (may be NULL) and its label into *label (may be NULL), checked. */
static dtnh_status dtnh__read_one(dtnh_dataset *ds, int i, unsigned char *pixels, int *label,
                                  dtnh_error *err) {
    dtnh_status s = DTNH_OK;
    if (ds->format == DTNH_DATA_FOLDER) {
#ifndef DTNH_NO_STDIO
        if (pixels) s = dtnh__folder_image(ds, i, pixels, err);
#endif
    } else if (pixels) {
        s = dtnh__src_read(&ds->images, ds->image_offset + (size_t)i * ds->image_stride, pixels,
                           ds->image_bytes, err);
    }
    if (s || !label) return s;
    if ((s = dtnh__read_labels(ds, i, 1, label, err))) return s;
    if (ds->has_labels && (*label < 0 || *label >= ds->classes))
        return dtnh__bad_label(ds, *label, i, err);
    return DTNH_OK;
}

static dtnh_status dtnh__check_readable(dtnh_dataset *ds, const char *what, dtnh_error *err) {
    if (!ds) return dtnh_fail(err, DTNH_ERR_ARG, "%s: NULL data set", what);
    if (ds->format == DTNH_DATA_NONE || ds->count <= 0 || ds->image_bytes == 0)
        return dtnh_fail(err, DTNH_ERR_ARG, "%s: the data set is not open (or was only sized)", what);
    return DTNH_OK;
}

DTNHDEF dtnh_status dtnh_dataset_read(dtnh_dataset *ds, int first, int n, unsigned char *pixels,
                                      int *labels, dtnh_error *err) {
    int i;
    dtnh_status s = dtnh__check_readable(ds, "dataset_read", err);
    if (s) return s;
    if (first < 0 || n < 0 || first > ds->count - n)
        return dtnh_fail(err, DTNH_ERR_ARG, "dataset_read: images [%d, %d + %d) are outside [0, %d)",
                         first, first, n, ds->count);
    if (ds->format == DTNH_DATA_IDX) {
        /* One read for the whole range: the streaming fast path. */
        if (pixels && (s = dtnh__src_read(&ds->images, ds->image_offset + (size_t)first * ds->image_stride,
                                          pixels, (size_t)n * ds->image_bytes, err)))
            return s;
        if (!labels) return DTNH_OK;
        if ((s = dtnh__read_labels(ds, first, n, labels, err))) return s;
        for (i = 0; ds->has_labels && i < n; i++)
            if (labels[i] >= ds->classes) return dtnh__bad_label(ds, labels[i], first + i, err);
        return DTNH_OK;
    }
    for (i = 0; i < n; i++) {
        s = dtnh__read_one(ds, first + i, pixels ? pixels + (size_t)i * ds->image_bytes : NULL,
                           labels ? labels + i : NULL, err);
        if (s) return s;
    }
    return DTNH_OK;
}

DTNHDEF dtnh_status dtnh_dataset_read_indices(dtnh_dataset *ds, const int *indices, int n,
                                              unsigned char *pixels, int *labels, dtnh_error *err) {
    int i;
    dtnh_status s = dtnh__check_readable(ds, "dataset_read_indices", err);
    if (s) return s;
    if (!indices || n < 0) return dtnh_fail(err, DTNH_ERR_ARG, "dataset_read_indices: NULL indices or n < 0");
    for (i = 0; i < n; i++) {
        if (indices[i] < 0 || indices[i] >= ds->count)
            return dtnh_fail(err, DTNH_ERR_ARG, "dataset_read_indices: index %d at position %d is outside [0, %d)",
                             indices[i], i, ds->count);
        s = dtnh__read_one(ds, indices[i], pixels ? pixels + (size_t)i * ds->image_bytes : NULL,
                           labels ? labels + i : NULL, err);
        if (s) return s;
    }
    return DTNH_OK;
}

/* ---- data: image sets and sampling --------------------------------------------------------- */

DTNHDEF dtnh_status dtnh_image_set_load(dtnh_image_set *set, dtnh_dataset *ds, const int *indices,
                                        int n, dtnh_arena *a, dtnh_error *err) {
    size_t bytes = 0;
    void *pix = NULL, *lab = NULL;
    dtnh_status s;
    if (!set || !ds || !a || n < 0) return dtnh_fail(err, DTNH_ERR_ARG, "image_set_load: NULL argument or n < 0");
    memset(set, 0, sizeof *set);
    if (!indices && n > ds->count)
        return dtnh_fail(err, DTNH_ERR_ARG, "image_set_load: %d images asked of %d", n, ds->count);
    if ((s = dtnh_size_mul((size_t)n, ds->image_bytes, &bytes, err)) ||
        (s = dtnh_arena_alloc(a, bytes, 0, &pix, err)) ||
        (s = dtnh_arena_alloc(a, (size_t)n * sizeof(int), 0, &lab, err)))
        return s;
    set->count = n;
    set->channels = ds->channels;
    set->height = ds->height;
    set->width = ds->width;
    set->classes = ds->classes;
    set->image_bytes = ds->image_bytes;
    set->pixels = (unsigned char *)pix;
    set->labels = (int *)lab;
    if (dtnh_arena_is_counting(a) || n == 0) return DTNH_OK;
    return indices ? dtnh_dataset_read_indices(ds, indices, n, set->pixels, set->labels, err)
                   : dtnh_dataset_read(ds, 0, n, set->pixels, set->labels, err);
}

DTNHDEF dtnh_status dtnh_relabel(int *labels, int count, const int *classes, int nclasses,
                                 dtnh_error *err) {
    int i, j;
    if (!labels || !classes || count < 0 || nclasses < 1)
        return dtnh_fail(err, DTNH_ERR_ARG, "relabel: NULL argument, count < 0 or no classes");
    for (j = 0; j < nclasses; j++) {
        if (classes[j] < 0) return dtnh_fail(err, DTNH_ERR_ARG, "relabel: class %d is negative", classes[j]);
        for (i = 0; i < j; i++)
            if (classes[i] == classes[j])
                return dtnh_fail(err, DTNH_ERR_ARG, "relabel: class %d is listed twice", classes[j]);
    }
    for (i = 0; i < count; i++) {
        int to = -1;
        for (j = 0; j < nclasses && to < 0; j++)
            if (labels[i] == classes[j]) to = j;
        labels[i] = to;
    }
    return DTNH_OK;
}

static int dtnh__count_class(const int *labels, int count, int c, const int *part, int from) {
    int i, n = 0;
    for (i = 0; i < count; i++) n += labels[i] == c && (!part || part[i] == from);
    return n;
}

DTNHDEF void dtnh_class_counts(const int *labels, int count, int classes, int *counts) {
    int i;
    for (i = 0; i < classes; i++) counts[i] = 0;
    for (i = 0; i < count; i++)
        if (labels[i] >= 0 && labels[i] < classes) counts[labels[i]]++;
}

/* Knuth's selection sampling (Algorithm S): takes `want` of the `avail` images i with
   labels[i] == c (and part[i] == from when part is given), every subset equally likely,
   scanning in index order. A chosen image gets part[i] = to, or is appended to out. */
static void dtnh__choose(const int *labels, int count, int c, int *part, int from, int to,
                         int want, int avail, dtnh_rng *rng, int *out) {
    int i;
    for (i = 0; i < count && want > 0; i++) {
        if (labels[i] != c || (part && part[i] != from)) continue;
        if ((int)dtnh_rng_below(rng, (uint32_t)avail) < want) {
            if (out) *out++ = i;
            else part[i] = to;
            want--;
        }
        avail--;
    }
}

static dtnh_status dtnh__check_sampling(const int *labels, int count, int classes, dtnh_rng *rng,
                                        const void *out, const char *what, dtnh_error *err) {
    if (!labels || !rng || !out || count < 0 || classes < 1)
        return dtnh_fail(err, DTNH_ERR_ARG, "%s: NULL argument, count %d or classes %d", what,
                         count, classes);
    return DTNH_OK;
}

DTNHDEF dtnh_status dtnh_sample_per_class(const int *labels, int count, int classes, int k,
                                          dtnh_rng *rng, int *indices, dtnh_error *err) {
    int c;
    dtnh_status s = dtnh__check_sampling(labels, count, classes, rng, indices, "sample_per_class", err);
    if (s) return s;
    if (k < 0 || k > INT_MAX / classes)
        return dtnh_fail(err, DTNH_ERR_ARG, "sample_per_class: k = %d", k);
    for (c = 0; c < classes; c++) {
        int n = dtnh__count_class(labels, count, c, NULL, 0);
        if (n < k)
            return dtnh_fail(err, DTNH_ERR_ARG, "sample_per_class: class %d has %d images, %d asked", c, n, k);
    }
    for (c = 0; c < classes; c++)
        dtnh__choose(labels, count, c, NULL, 0, 0, k, dtnh__count_class(labels, count, c, NULL, 0),
                     rng, indices + (size_t)c * (size_t)k);
    return DTNH_OK;
}

#define DTNH__UNASSIGNED (-2)

/* part[i] = -2 (to be assigned) for labels in [0, classes), else -1. */
static void dtnh__split_start(const int *labels, int count, int classes, int *part) {
    int i;
    for (i = 0; i < count; i++)
        part[i] = labels[i] >= 0 && labels[i] < classes ? DTNH__UNASSIGNED : -1;
}

static void dtnh__split_finish(int *part, int count, int rest) {
    int i;
    for (i = 0; i < count; i++)
        if (part[i] == DTNH__UNASSIGNED) part[i] = rest;
}

DTNHDEF dtnh_status dtnh_split_per_class(const int *labels, int count, int classes,
                                         const int *per_class, int parts, dtnh_rng *rng, int *part,
                                         dtnh_error *err) {
    int p, c, rest = -1;
    long need = 0;
    dtnh_status s = dtnh__check_sampling(labels, count, classes, rng, part, "split_per_class", err);
    if (s) return s;
    if (!per_class || parts < 1) return dtnh_fail(err, DTNH_ERR_ARG, "split_per_class: no parts");
    for (p = 0; p < parts; p++) {
        if (per_class[p] == DTNH_SPLIT_REST && rest < 0) rest = p;
        else if (per_class[p] < 0)
            return dtnh_fail(err, DTNH_ERR_ARG, "split_per_class: part %d asks for %d images (one "
                             "part at most may be DTNH_SPLIT_REST)", p, per_class[p]);
        else need += per_class[p];
    }
    for (c = 0; c < classes; c++) {
        int n = dtnh__count_class(labels, count, c, NULL, 0);
        if (n < need)
            return dtnh_fail(err, DTNH_ERR_ARG, "split_per_class: class %d has %d images, the "
                             "parts ask for %ld of each class", c, n, need);
    }
    dtnh__split_start(labels, count, classes, part);
    for (c = 0; c < classes; c++) {
        int avail = dtnh__count_class(labels, count, c, NULL, 0);
        for (p = 0; p < parts; p++) {
            if (p == rest) continue;
            dtnh__choose(labels, count, c, part, DTNH__UNASSIGNED, p, per_class[p], avail, rng, NULL);
            avail -= per_class[p];
        }
    }
    dtnh__split_finish(part, count, rest);
    return DTNH_OK;
}

DTNHDEF dtnh_status dtnh_split_fraction(const int *labels, int count, int classes, float fraction,
                                        dtnh_rng *rng, int *part, dtnh_error *err) {
    int c;
    dtnh_status s = dtnh__check_sampling(labels, count, classes, rng, part, "split_fraction", err);
    if (s) return s;
    if (!(fraction >= 0.0f && fraction <= 1.0f))
        return dtnh_fail(err, DTNH_ERR_ARG, "split_fraction: fraction %g is outside [0, 1]", (double)fraction);
    dtnh__split_start(labels, count, classes, part);
    for (c = 0; c < classes; c++) {
        int n = dtnh__count_class(labels, count, c, NULL, 0);
        int k = (int)floor((double)fraction * n + 0.5);
        dtnh__choose(labels, count, c, part, DTNH__UNASSIGNED, 1, k, n, rng, NULL);
    }
    dtnh__split_finish(part, count, 0);
    return DTNH_OK;
}

DTNHDEF int dtnh_part_indices(const int *part, int count, int which, int *indices) {
    int i, n = 0;
    for (i = 0; i < count; i++)
        if (part[i] == which) {
            if (indices) indices[n] = i;
            n++;
        }
    return n;
}

static void dtnh__shuffle(int *v, int n, dtnh_rng *rng) {
    int i;
    for (i = n - 1; i > 0; i--) {
        int j = (int)dtnh_rng_below(rng, (uint32_t)i + 1u), t = v[i];
        v[i] = v[j];
        v[j] = t;
    }
}

DTNHDEF dtnh_status dtnh_batch_stream_init(dtnh_batch_stream *bs, int count, uint64_t seed,
                                           dtnh_arena *a, dtnh_error *err) {
    void *mem = NULL;
    int i;
    dtnh_status s;
    if (!bs || !a || count < 1)
        return dtnh_fail(err, DTNH_ERR_ARG, "batch_stream_init: NULL argument or count %d < 1", count);
    memset(bs, 0, sizeof *bs);
    if ((s = dtnh_arena_alloc(a, (size_t)count * sizeof(int), 0, &mem, err))) return s;
    bs->order = (int *)mem;
    bs->count = count;
    dtnh_rng_seed(&bs->rng, seed);
    if (!bs->order) return DTNH_OK;
    for (i = 0; i < count; i++) bs->order[i] = i;
    dtnh__shuffle(bs->order, count, &bs->rng);
    return DTNH_OK;
}

DTNHDEF dtnh_status dtnh_batch_stream_next(dtnh_batch_stream *bs, int n, int *indices,
                                           dtnh_error *err) {
    int k;
    if (!bs || !bs->order || !indices || n < 1)
        return dtnh_fail(err, DTNH_ERR_ARG, "batch_stream_next: NULL or sized-only stream, or n %d < 1", n);
    if (n <= bs->count && bs->next > bs->count - n) bs->next = bs->count; /* drop the tail */
    for (k = 0; k < n; k++) {
        if (bs->next == bs->count) {
            dtnh__shuffle(bs->order, bs->count, &bs->rng);
            bs->next = 0;
            bs->epoch++;
        }
        indices[k] = bs->order[bs->next++];
    }
    return DTNH_OK;
}

/* ---- data: augmentation and batches -------------------------------------------------------- */

/* A resolved config: every default filled in, the normalisation tabulated per channel. */
typedef struct dtnh__aug {
    int c_in, h_in, w_in, c_out, h_out, w_out, pad, flip;
    float mean[DTNH_MAX_CHANNELS], std[DTNH_MAX_CHANNELS];
    float unit[256];                    /* v / 255 */
    float lut[DTNH_MAX_CHANNELS][256];  /* (v / 255 - mean) / std */
} dtnh__aug;

static dtnh_status dtnh__aug_shape(dtnh__aug *g, const dtnh_augment_config *cfg, int c, int h,
                                   int w, dtnh_error *err) {
    g->c_out = g->h_out = g->w_out = 0;
    if (c < 1 || c > DTNH_MAX_CHANNELS || h < 1 || w < 1 || h > DTNH_MAX_SIDE || w > DTNH_MAX_SIDE)
        return dtnh_fail(err, DTNH_ERR_SHAPE, "augment: images of %dx%dx%d, expected 1..%d channels "
                         "and 1..%d a side", c, h, w, DTNH_MAX_CHANNELS, DTNH_MAX_SIDE);
    g->c_in = c;
    g->h_in = h;
    g->w_in = w;
    g->c_out = cfg->out_channels ? cfg->out_channels : c;
    g->h_out = cfg->out_height ? cfg->out_height : h;
    g->w_out = cfg->out_width ? cfg->out_width : w;
    g->pad = cfg->pad;
    g->flip = cfg->flip != 0;
    if (!(g->c_out == c || (c == 1 && g->c_out == 3)))
        return dtnh_fail(err, DTNH_ERR_SHAPE, "augment: out_channels %d from %d-channel images, "
                         "expected %d (or 3 from grey)", cfg->out_channels, c, c);
    if (g->h_out < 1 || g->w_out < 1 || g->h_out > DTNH_MAX_SIDE || g->w_out > DTNH_MAX_SIDE)
        return dtnh_fail(err, DTNH_ERR_ARG, "augment: output size %dx%d, expected 1..%d a side",
                         g->h_out, g->w_out, DTNH_MAX_SIDE);
    if (g->pad < 0 || g->pad > DTNH_MAX_SIDE)
        return dtnh_fail(err, DTNH_ERR_ARG, "augment: pad %d, expected 0..%d", g->pad, DTNH_MAX_SIDE);
    return DTNH_OK;
}

static dtnh_status dtnh__aug_setup(dtnh__aug *g, const dtnh_augment_config *cfg, int c, int h,
                                   int w, dtnh_error *err) {
    dtnh_augment_config zero;
    int k, v, custom = 0;
    dtnh_status s;
    if (!cfg) {
        memset(&zero, 0, sizeof zero);
        cfg = &zero;
    }
    if ((s = dtnh__aug_shape(g, cfg, c, h, w, err))) return s;
    for (k = 0; k < DTNH_MAX_CHANNELS; k++) custom |= cfg->std[k] != 0.0f;
    for (k = 0; k < g->c_out; k++) {
        g->mean[k] = custom ? cfg->mean[k] : 0.5f;
        g->std[k] = custom ? cfg->std[k] : 0.5f;
        if (!(g->std[k] != 0.0f && g->std[k] - g->std[k] == 0.0f && g->mean[k] - g->mean[k] == 0.0f))
            return dtnh_fail(err, DTNH_ERR_ARG, "augment: channel %d has mean %g, std %g; expected "
                             "finite values and std != 0", k, (double)g->mean[k], (double)g->std[k]);
    }
    for (v = 0; v < 256; v++) g->unit[v] = (float)v / 255.0f;
    for (k = 0; k < g->c_out; k++)
        for (v = 0; v < 256; v++) g->lut[k][v] = (g->unit[v] - g->mean[k]) / g->std[k];
    return DTNH_OK;
}

/* PyTorch's linear source index for output d (align_corners=False): scale * (d + 0.5) - 0.5,
   clamped at 0, with scale = in / out in float, as aten's upsample kernels compute it. */
static void dtnh__linear_index(int d, int in, int out, int *i0, int *i1, float *w1) {
    float scale = (float)in / (float)out;
    float src = scale * ((float)d + 0.5f) - 0.5f, lambda;
    int i;
    if (src < 0.0f) src = 0.0f;
    i = (int)src; /* floor: src >= 0 */
    if (i > in - 1) i = in - 1;
    lambda = src - (float)i;
    *w1 = lambda < 0.0f ? 0.0f : lambda > 1.0f ? 1.0f : lambda;
    *i0 = i;
    *i1 = i < in - 1 ? i + 1 : i;
}

/* One bilinear sample of a plane at output pixel (y, x), summed in aten's order. */
static float dtnh__bilinear(const dtnh__aug *g, const unsigned char *plane, int y, int x) {
    int y0, y1, x0, x1;
    float ly, lx;
    const unsigned char *r0, *r1;
    dtnh__linear_index(y, g->h_in, g->h_out, &y0, &y1, &ly);
    dtnh__linear_index(x, g->w_in, g->w_out, &x0, &x1, &lx);
    r0 = plane + (size_t)y0 * (size_t)g->w_in;
    r1 = plane + (size_t)y1 * (size_t)g->w_in;
    return (g->unit[r0[x0]] * (1.0f - lx) + g->unit[r0[x1]] * lx) * (1.0f - ly) +
           (g->unit[r1[x0]] * (1.0f - lx) + g->unit[r1[x1]] * lx) * ly;
}

/* One image: output (y, x) shows the resized image at (y + dy - pad, x' + dx - pad), where x'
   is x or its mirror; outside the resized image lies the zero padding. */
static void dtnh__augment_one(const dtnh__aug *g, const unsigned char *img, dtnh_rng *rng,
                              float *out) {
    int dy = g->pad, dx = g->pad, flip = 0, c, y, x;
    int resize = g->h_out != g->h_in || g->w_out != g->w_in;
    size_t plane = (size_t)g->h_in * (size_t)g->w_in;
    if (rng && g->pad > 0) {
        dy = (int)dtnh_rng_below(rng, 2u * (uint32_t)g->pad + 1u);
        dx = (int)dtnh_rng_below(rng, 2u * (uint32_t)g->pad + 1u);
    }
    if (rng && g->flip) flip = (int)dtnh_rng_below(rng, 2u);
    for (c = 0; c < g->c_out; c++) {
        const unsigned char *src = img + (g->c_in == 1 ? 0 : (size_t)c * plane);
        for (y = 0; y < g->h_out; y++) {
            int ry = y + dy - g->pad;
            float *row = out + ((size_t)c * (size_t)g->h_out + (size_t)y) * (size_t)g->w_out;
            for (x = 0; x < g->w_out; x++) {
                int rx = (flip ? g->w_out - 1 - x : x) + dx - g->pad;
                if (ry < 0 || ry >= g->h_out || rx < 0 || rx >= g->w_out) row[x] = g->lut[c][0];
                else if (!resize) row[x] = g->lut[c][src[(size_t)ry * (size_t)g->w_in + (size_t)rx]];
                else row[x] = (dtnh__bilinear(g, src, ry, rx) - g->mean[c]) / g->std[c];
            }
        }
    }
}

DTNHDEF dtnh_status dtnh_batch_shape(const dtnh_augment_config *cfg, int n, int channels,
                                     int height, int width, int shape[4], dtnh_error *err) {
    dtnh__aug g;
    dtnh_augment_config zero;
    dtnh_status s;
    if (!shape || n < 1) return dtnh_fail(err, DTNH_ERR_ARG, "batch_shape: NULL shape or n %d < 1", n);
    if (!cfg) {
        memset(&zero, 0, sizeof zero);
        cfg = &zero;
    }
    if ((s = dtnh__aug_shape(&g, cfg, channels, height, width, err))) return s;
    shape[0] = n;
    shape[1] = g.c_out;
    shape[2] = g.h_out;
    shape[3] = g.w_out;
    return DTNH_OK;
}

static dtnh_status dtnh__check_batch(const dtnh__aug *g, int n, const dtnh_tensor *out,
                                     dtnh_error *err) {
    if (!out || !out->data)
        return dtnh_fail(err, DTNH_ERR_ARG, "batch: NULL output tensor or data");
    if (out->ndim != 4 || out->shape[0] != n || out->shape[1] != g->c_out ||
        out->shape[2] != g->h_out || out->shape[3] != g->w_out)
        return dtnh_fail(err, DTNH_ERR_SHAPE, "batch: output is %dd [%d, %d, %d, %d], expected "
                         "[%d, %d, %d, %d]", out->ndim, out->shape[0], out->shape[1], out->shape[2],
                         out->shape[3], n, g->c_out, g->h_out, g->w_out);
    return DTNH_OK;
}

DTNHDEF dtnh_status dtnh_batch_assemble(const dtnh_augment_config *cfg, const unsigned char *pixels,
                                        int n, int channels, int height, int width, dtnh_rng *rng,
                                        dtnh_tensor *out, dtnh_error *err) {
    dtnh__aug g;
    size_t in_bytes, out_floats;
    int i;
    dtnh_status s;
    if (!pixels || n < 1) return dtnh_fail(err, DTNH_ERR_ARG, "batch_assemble: NULL pixels or n %d < 1", n);
    if ((s = dtnh__aug_setup(&g, cfg, channels, height, width, err))) return s;
    if ((s = dtnh__check_batch(&g, n, out, err))) return s;
    in_bytes = (size_t)g.c_in * (size_t)g.h_in * (size_t)g.w_in;
    out_floats = (size_t)g.c_out * (size_t)g.h_out * (size_t)g.w_out;
    for (i = 0; i < n; i++)
        dtnh__augment_one(&g, pixels + (size_t)i * in_bytes, rng, out->data + (size_t)i * out_floats);
    return DTNH_OK;
}

DTNHDEF dtnh_status dtnh_batch_from_set(const dtnh_augment_config *cfg, const dtnh_image_set *set,
                                        const int *indices, int n, dtnh_rng *rng, dtnh_tensor *out,
                                        int *labels, dtnh_error *err) {
    dtnh__aug g;
    size_t out_floats;
    int i;
    dtnh_status s;
    if (!set || !set->pixels || !indices || n < 1)
        return dtnh_fail(err, DTNH_ERR_ARG, "batch_from_set: NULL set, pixels or indices, or n %d < 1", n);
    if ((s = dtnh__aug_setup(&g, cfg, set->channels, set->height, set->width, err))) return s;
    if ((s = dtnh__check_batch(&g, n, out, err))) return s;
    for (i = 0; i < n; i++)
        if (indices[i] < 0 || indices[i] >= set->count)
            return dtnh_fail(err, DTNH_ERR_ARG, "batch_from_set: index %d at position %d is outside [0, %d)",
                             indices[i], i, set->count);
    out_floats = (size_t)g.c_out * (size_t)g.h_out * (size_t)g.w_out;
    for (i = 0; i < n; i++) {
        dtnh__augment_one(&g, set->pixels + (size_t)indices[i] * set->image_bytes, rng,
                          out->data + (size_t)i * out_floats);
        if (labels) labels[i] = set->labels[indices[i]];
    }
    return DTNH_OK;
}
/* ---- checkpoints ----------------------------------------------------------------------------
   The file is a plain safetensors file: the state_dict first (so weights loaders read it),
   then "dtnh.*" tensors, and every scalar in the metadata, integers in decimal and the lr as
   the hexadecimal bits of its double (exact, and no locale can change it). */

#include <limits.h>

#define DTNH__CKPT_VERSION "1"
#define DTNH__CKPT_NUM 24                   /* chars of one number in the metadata */
#define DTNH__CKPT_KEY (DTNH_NAME_SIZE + 16) /* chars of one generated name or key */
#define DTNH__CKPT_MAX_META (10 + DTNH_CKPT_MAX_RNGS + DTNH_CKPT_MAX_META)

static const char dtnh__ckpt_w_src_prefix[] = "dtnh.w_src.";

/* What save puts together in scratch: the tensor table, the metadata and its text. */
typedef struct dtnh__ckpt_table {
    dtnh_st_tensor *tensors;
    int count;
    dtnh_st_meta meta[DTNH__CKPT_MAX_META];
    char text[DTNH__CKPT_MAX_META][2][DTNH__CKPT_KEY];
    int meta_count;
} dtnh__ckpt_table;

/* The scalars of a file, parsed and checked before anything is restored. */
typedef struct dtnh__ckpt_scalars {
    long iteration, optim_step, optim_kind;
    uint64_t optim_lr_bits;
    long stream_next, stream_epoch;
    uint64_t stream_rng;
    uint64_t rng[DTNH_CKPT_MAX_RNGS];
} dtnh__ckpt_scalars;

static dtnh_status dtnh__ckpt_check(const dtnh_checkpoint *c, dtnh_error *err) {
    int i;
    if (!c || !c->net) return dtnh_fail(err, DTNH_ERR_ARG, "checkpoint: NULL checkpoint or network");
    if (!c->net->params.w || c->net->weights != c->net->params.w)
        return dtnh_fail(err, DTNH_ERR_ARG, "checkpoint: the network reads external weights; "
                         "checkpoint the network that owns them");
    if (c->with_source && !c->net->params.w_src)
        return dtnh_fail(err, DTNH_ERR_ARG, "checkpoint: with_source, but the network has no w_src "
                         "(role DTNH_ROLE_W_SRC)");
    if (c->optim && (c->optim->view_count != c->net->params.count || !c->optim->slots))
        return dtnh_fail(err, DTNH_ERR_ARG, "checkpoint: the optimizer has %d views, the network %d "
                         "(or its state was only counted)", c->optim->view_count, c->net->params.count);
    if (c->stream && !c->stream->order)
        return dtnh_fail(err, DTNH_ERR_ARG, "checkpoint: the stream was only counted, it has no order");
    if (c->rng_count < 0 || c->rng_count > DTNH_CKPT_MAX_RNGS || c->meta_count < 0 ||
        c->meta_count > DTNH_CKPT_MAX_META)
        return dtnh_fail(err, DTNH_ERR_ARG, "checkpoint: %d RNGs (at most %d) and %d metadata pairs "
                         "(at most %d)", c->rng_count, DTNH_CKPT_MAX_RNGS, c->meta_count, DTNH_CKPT_MAX_META);
    for (i = 0; i < c->rng_count; i++)
        if (!c->rngs[i] || !c->rng_names[i] || strlen(c->rng_names[i]) >= DTNH_NAME_SIZE)
            return dtnh_fail(err, DTNH_ERR_ARG, "checkpoint: RNG %d has no state or no name (or one "
                             "of %d characters or more)", i, DTNH_NAME_SIZE);
    for (i = 0; i < c->meta_count; i++)
        if (!c->meta[i].key || !c->meta[i].value || strncmp(c->meta[i].key, "dtnh.", 5) == 0)
            return dtnh_fail(err, DTNH_ERR_ARG, "checkpoint: metadata pair %d lacks a key or value, or "
                             "its key starts with \"dtnh.\" (reserved)", i);
    return DTNH_OK;
}

/* ---- saving --------------------------------------------------------------------------------- */

static void dtnh__ckpt_meta(dtnh__ckpt_table *t, const char *key, const char *value) {
    int i = t->meta_count++;
    DTNH_ASSERT(i < DTNH__CKPT_MAX_META && strlen(key) < DTNH__CKPT_KEY && strlen(value) < DTNH__CKPT_KEY);
    strcpy(t->text[i][0], key);
    strcpy(t->text[i][1], value);
    t->meta[i].key = t->text[i][0];
    t->meta[i].value = t->text[i][1];
}

static void dtnh__ckpt_meta_long(dtnh__ckpt_table *t, const char *key, long v) {
    char num[DTNH__CKPT_NUM];
    snprintf(num, sizeof num, "%ld", v);
    dtnh__ckpt_meta(t, key, num);
}

static void dtnh__ckpt_meta_u64(dtnh__ckpt_table *t, const char *key, uint64_t v, int hex) {
    char num[DTNH__CKPT_NUM];
    snprintf(num, sizeof num, hex ? "0x%016llx" : "%llu", (unsigned long long)v);
    dtnh__ckpt_meta(t, key, num);
}

static dtnh_st_tensor *dtnh__ckpt_add(dtnh__ckpt_table *t, const char *name, dtnh_st_dtype dtype,
                                      int ndim, int d0, int d1) {
    dtnh_st_tensor *x = &t->tensors[t->count++];
    memset(x, 0, sizeof *x);
    x->name = name;
    x->dtype = dtype;
    x->ndim = ndim;
    x->shape[0] = d0;
    x->shape[1] = d1;
    return x;
}

static dtnh_status dtnh__ckpt_add_state(dtnh__ckpt_table *t, const dtnh_resnet *net, dtnh_error *err) {
    int i, d, n = dtnh_resnet_state_count(net);
    for (i = 0; i < n; i++) {
        dtnh_state_entry e;
        dtnh_st_tensor *x;
        dtnh_status s = dtnh_resnet_state_entry(net, i, &e, err);
        if (s) return s;
        x = dtnh__ckpt_add(t, e.name, e.i64 ? DTNH_ST_I64 : DTNH_ST_F32, e.ndim, 0, 0);
        for (d = 0; d < e.ndim; d++) x->shape[d] = e.shape[d];
        x->f32 = e.f32;
        x->i64 = e.i64;
    }
    return DTNH_OK;
}

/* w_s view by view, under names kept in scratch. */
static dtnh_status dtnh__ckpt_add_source(dtnh__ckpt_table *t, const dtnh_params *p, dtnh_arena *scratch,
                                         dtnh_error *err) {
    char *names = NULL;
    int i, d;
    dtnh_status s = dtnh_arena_alloc(scratch, (size_t)p->count * DTNH__CKPT_KEY, 1, (void **)&names, err);
    if (s || !names) return s;
    for (i = 0; i < p->count; i++) {
        const dtnh_param_view *v = &p->views[i];
        char *name = names + (size_t)i * DTNH__CKPT_KEY;
        dtnh_st_tensor *x;
        snprintf(name, DTNH__CKPT_KEY, "%s%s", dtnh__ckpt_w_src_prefix, v->name);
        x = dtnh__ckpt_add(t, name, DTNH_ST_F32, v->ndim, 0, 0);
        for (d = 0; d < v->ndim; d++) x->shape[d] = v->shape[d];
        x->f32 = p->w_src + v->offset;
    }
    return DTNH_OK;
}

/* m, v, and per view (state offset or -1, steps taken) as I64 [views, 2]. */
static dtnh_status dtnh__ckpt_add_optim(dtnh__ckpt_table *t, const dtnh_optim *o, dtnh_arena *scratch,
                                        dtnh_error *err) {
    int64_t *slots = NULL;
    int i;
    dtnh_status s = dtnh_arena_alloc(scratch, (size_t)o->view_count * 2 * sizeof(int64_t), 0,
                                     (void **)&slots, err);
    if (s) return s;
    if (o->state_count > 0 && o->m) dtnh__ckpt_add(t, "dtnh.optim.m", DTNH_ST_F32, 1, (int)o->state_count, 0)->f32 = o->m;
    if (o->state_count > 0 && o->v) dtnh__ckpt_add(t, "dtnh.optim.v", DTNH_ST_F32, 1, (int)o->state_count, 0)->f32 = o->v;
    dtnh__ckpt_add(t, "dtnh.optim.slots", DTNH_ST_I64, 2, o->view_count, 2)->i64 = slots;
    for (i = 0; slots && i < o->view_count; i++) {
        size_t off = o->slots[i].state_offset;
        slots[2 * i] = off == DTNH_NO_STATE ? -1 : (int64_t)off;
        slots[2 * i + 1] = o->slots[i].steps;
    }
    dtnh__ckpt_meta_long(t, "dtnh.optim.step", o->step);
    dtnh__ckpt_meta_long(t, "dtnh.optim.kind", o->cfg.kind);
    {
        uint64_t bits;
        memcpy(&bits, &o->lr, sizeof bits);
        dtnh__ckpt_meta_u64(t, "dtnh.optim.lr", bits, 1);
    }
    return DTNH_OK;
}

static dtnh_status dtnh__ckpt_add_stream(dtnh__ckpt_table *t, const dtnh_batch_stream *bs,
                                         dtnh_arena *scratch, dtnh_error *err) {
    int64_t *order = NULL;
    int i;
    dtnh_status s = dtnh_arena_alloc(scratch, (size_t)bs->count * sizeof(int64_t), 0, (void **)&order, err);
    if (s) return s;
    dtnh__ckpt_add(t, "dtnh.stream.order", DTNH_ST_I64, 1, bs->count, 0)->i64 = order;
    for (i = 0; order && i < bs->count; i++) order[i] = bs->order[i];
    dtnh__ckpt_meta_long(t, "dtnh.stream.next", bs->next);
    dtnh__ckpt_meta_long(t, "dtnh.stream.epoch", bs->epoch);
    dtnh__ckpt_meta_u64(t, "dtnh.stream.rng", bs->rng.state, 0);
    return DTNH_OK;
}

/* Puts the whole table together in scratch; *t is NULL when scratch only counts. */
static dtnh_status dtnh__ckpt_table_build(const dtnh_checkpoint *c, dtnh_arena *scratch,
                                          dtnh__ckpt_table **out, dtnh_error *err) {
    const dtnh_resnet *net = c->net;
    int max = dtnh_resnet_state_count(net) + net->params.count + 4, i;
    dtnh__ckpt_table *t = NULL;
    dtnh_st_tensor *tensors = NULL;
    dtnh_status s;
    *out = NULL;
    if ((s = dtnh_arena_alloc(scratch, sizeof *t, 0, (void **)&t, err)) ||
        (s = dtnh_arena_alloc(scratch, (size_t)max * sizeof *tensors, 0, (void **)&tensors, err)))
        return s;
    if (!t) { /* counting: the same allocations as below, nothing written */
        if (c->with_source) s = dtnh__ckpt_add_source(t, &net->params, scratch, err);
        if (!s && c->optim) s = dtnh_arena_alloc(scratch, (size_t)c->optim->view_count * 2 * sizeof(int64_t), 0, (void **)&tensors, err);
        if (!s && c->stream) s = dtnh_arena_alloc(scratch, (size_t)c->stream->count * sizeof(int64_t), 0, (void **)&tensors, err);
        return s;
    }
    memset(t, 0, sizeof *t);
    t->tensors = tensors;
    dtnh__ckpt_meta(t, "format", "pt");
    dtnh__ckpt_meta(t, "dtnh.checkpoint", DTNH__CKPT_VERSION);
    dtnh__ckpt_meta_long(t, "dtnh.iteration", c->iteration);
    if ((s = dtnh__ckpt_add_state(t, net, err))) return s;
    if (c->with_source && (s = dtnh__ckpt_add_source(t, &net->params, scratch, err))) return s;
    if (c->optim && (s = dtnh__ckpt_add_optim(t, c->optim, scratch, err))) return s;
    if (c->stream && (s = dtnh__ckpt_add_stream(t, c->stream, scratch, err))) return s;
    for (i = 0; i < c->rng_count; i++) {
        char key[DTNH__CKPT_KEY];
        snprintf(key, sizeof key, "dtnh.rng.%s", c->rng_names[i]);
        dtnh__ckpt_meta_u64(t, key, c->rngs[i]->state, 0);
    }
    for (i = 0; i < c->meta_count; i++) {
        if (strlen(c->meta[i].key) >= DTNH__CKPT_KEY || strlen(c->meta[i].value) >= DTNH__CKPT_KEY)
            return dtnh_fail(err, DTNH_ERR_ARG, "checkpoint: metadata '%.32s' is longer than %d "
                             "characters", c->meta[i].key, DTNH__CKPT_KEY - 1);
        dtnh__ckpt_meta(t, c->meta[i].key, c->meta[i].value);
    }
    *out = t;
    return DTNH_OK;
}

DTNHDEF dtnh_status dtnh_checkpoint_save_memory(const dtnh_checkpoint *c, dtnh_arena *scratch,
                                                void *buf, size_t capacity, size_t *size,
                                                dtnh_error *err) {
    dtnh__ckpt_table *t;
    size_t mark;
    dtnh_status s;
    if (!scratch) return dtnh_fail(err, DTNH_ERR_ARG, "checkpoint_save: NULL scratch arena");
    if ((s = dtnh__ckpt_check(c, err))) return s;
    mark = dtnh_arena_mark(scratch);
    s = dtnh__ckpt_table_build(c, scratch, &t, err);
    if (!s && t) s = dtnh_st_write_memory(t->tensors, t->count, t->meta, t->meta_count, buf, capacity, size, err);
    dtnh_arena_reset(scratch, mark);
    return s;
}

/* ---- loading ---------------------------------------------------------------------------------- */

/* Decimal (or 0x-prefixed hexadecimal) digits only, no sign, no overflow. */
static int dtnh__ckpt_parse_u64(const char *s, uint64_t *out) {
    uint64_t v = 0, base = 10;
    if (!s || !*s) return 0;
    if (s[0] == '0' && s[1] == 'x') {
        base = 16;
        s += 2;
        if (!*s) return 0;
    }
    for (; *s; s++) {
        uint64_t d;
        if (*s >= '0' && *s <= '9') d = (uint64_t)(*s - '0');
        else if (base == 16 && *s >= 'a' && *s <= 'f') d = (uint64_t)(*s - 'a' + 10);
        else return 0;
        if (v > (UINT64_MAX - d) / base) return 0;
        v = v * base + d;
    }
    *out = v;
    return 1;
}

/* A metadata number in [lo, hi] into *out; fails naming the key. */
static dtnh_status dtnh__ckpt_get_long(const dtnh_st_file *f, const char *key, long lo, long hi,
                                       long *out, dtnh_error *err) {
    const char *text = dtnh_st_meta_get(f, key);
    uint64_t v;
    int neg = text && text[0] == '-';
    if (!text || !dtnh__ckpt_parse_u64(text + neg, &v) || v > (uint64_t)LONG_MAX ||
        (neg ? -(long)v : (long)v) < lo || (neg ? -(long)v : (long)v) > hi)
        return dtnh_fail(err, DTNH_ERR_FORMAT, "checkpoint: metadata '%s' is '%s', expected an integer in "
                         "[%ld, %ld]", key, text ? text : "(missing)", lo, hi);
    *out = neg ? -(long)v : (long)v;
    return DTNH_OK;
}

static dtnh_status dtnh__ckpt_get_u64(const dtnh_st_file *f, const char *key, uint64_t *out,
                                      dtnh_error *err) {
    const char *text = dtnh_st_meta_get(f, key);
    if (!text || !dtnh__ckpt_parse_u64(text, out))
        return dtnh_fail(err, DTNH_ERR_FORMAT, "checkpoint: metadata '%s' is '%s', expected an unsigned "
                         "64-bit integer", key, text ? text : "(missing)");
    return DTNH_OK;
}

static dtnh_status dtnh__ckpt_check_version(const dtnh_st_file *f, dtnh_error *err) {
    const char *version = dtnh_st_meta_get(f, "dtnh.checkpoint");
    if (!version || strcmp(version, DTNH__CKPT_VERSION) != 0)
        return dtnh_fail(err, DTNH_ERR_FORMAT, "checkpoint: metadata 'dtnh.checkpoint' is '%s', expected "
                         "'%s' (a weights file is not a checkpoint)", version ? version : "(missing)",
                         DTNH__CKPT_VERSION);
    return DTNH_OK;
}

static dtnh_status dtnh__ckpt_read_scalars(const dtnh_checkpoint *c, const dtnh_st_file *f,
                                           dtnh__ckpt_scalars *v, dtnh_error *err) {
    dtnh_status s;
    int i;
    memset(v, 0, sizeof *v);
    if ((s = dtnh__ckpt_get_long(f, "dtnh.iteration", 0, LONG_MAX, &v->iteration, err))) return s;
    if (c->optim &&
        ((s = dtnh__ckpt_get_long(f, "dtnh.optim.step", 0, LONG_MAX, &v->optim_step, err)) ||
         (s = dtnh__ckpt_get_long(f, "dtnh.optim.kind", c->optim->cfg.kind, c->optim->cfg.kind,
                                  &v->optim_kind, err)) ||
         (s = dtnh__ckpt_get_u64(f, "dtnh.optim.lr", &v->optim_lr_bits, err))))
        return s;
    if (c->stream &&
        ((s = dtnh__ckpt_get_long(f, "dtnh.stream.next", 0, c->stream->count, &v->stream_next, err)) ||
         (s = dtnh__ckpt_get_long(f, "dtnh.stream.epoch", 0, INT_MAX, &v->stream_epoch, err)) ||
         (s = dtnh__ckpt_get_u64(f, "dtnh.stream.rng", &v->stream_rng, err))))
        return s;
    for (i = 0; i < c->rng_count; i++) {
        char key[DTNH__CKPT_KEY];
        snprintf(key, sizeof key, "dtnh.rng.%s", c->rng_names[i]);
        if ((s = dtnh__ckpt_get_u64(f, key, &v->rng[i], err))) return s;
    }
    return DTNH_OK;
}

/* The index of tensor name, checked for dtype and shape (and finite values for floats). */
static dtnh_status dtnh__ckpt_find(dtnh_st_file *f, const char *name, dtnh_st_dtype dtype, int ndim,
                                   const int *shape, int *index, dtnh_error *err) {
    int i = dtnh_st_find(f, name), d;
    char want[64] = "";
    size_t used = 0;
    if (i >= 0 && f->entries[i].dtype == dtype && dtnh_st_shape_is(f, i, ndim, shape)) {
        *index = i;
        return dtype == DTNH_ST_I64 ? DTNH_OK : dtnh_st_check_finite(f, i, err);
    }
    for (d = 0; d < ndim && used < sizeof want - 16; d++)
        used += (size_t)snprintf(want + used, sizeof want - used, d ? ", %d" : "%d", shape[d]);
    if (i < 0) return dtnh_fail(err, DTNH_ERR_FORMAT, "checkpoint: tensor '%s' is missing", name);
    return dtnh_fail(err, DTNH_ERR_FORMAT, "checkpoint: tensor '%s' is %s with %d dimension(s), expected "
                     "%s [%s]", name, dtnh_st_dtype_name(f->entries[i].dtype), f->entries[i].ndim,
                     dtnh_st_dtype_name(dtype), want);
}

static dtnh_status dtnh__ckpt_check_state(const dtnh_resnet *net, dtnh_st_file *f, dtnh_error *err) {
    int i, n = dtnh_resnet_state_count(net), at;
    for (i = 0; i < n; i++) {
        dtnh_state_entry e;
        dtnh_status s = dtnh_resnet_state_entry(net, i, &e, err);
        if (s || (s = dtnh__ckpt_find(f, e.name, e.i64 ? DTNH_ST_I64 : DTNH_ST_F32, e.ndim, e.shape, &at, err)))
            return s;
    }
    return DTNH_OK;
}

static dtnh_status dtnh__ckpt_check_source(const dtnh_params *p, dtnh_st_file *f, dtnh_error *err) {
    int i, at;
    for (i = 0; i < p->count; i++) {
        char name[DTNH__CKPT_KEY];
        dtnh_status s;
        snprintf(name, sizeof name, "%s%s", dtnh__ckpt_w_src_prefix, p->views[i].name);
        if ((s = dtnh__ckpt_find(f, name, DTNH_ST_F32, p->views[i].ndim, p->views[i].shape, &at, err)))
            return s;
    }
    return DTNH_OK;
}

/* Reads the slots table into scratch (slots) and checks it against the optimizer's layout. */
static dtnh_status dtnh__ckpt_check_optim(const dtnh_optim *o, dtnh_st_file *f, int64_t *slots,
                                          dtnh_error *err) {
    int shape[2], at, i;
    dtnh_status s;
    shape[0] = (int)o->state_count;
    if (o->m && o->state_count && (s = dtnh__ckpt_find(f, "dtnh.optim.m", DTNH_ST_F32, 1, shape, &at, err))) return s;
    if (o->v && o->state_count && (s = dtnh__ckpt_find(f, "dtnh.optim.v", DTNH_ST_F32, 1, shape, &at, err))) return s;
    if ((!o->m || !o->state_count) && dtnh_st_find(f, "dtnh.optim.m") >= 0)
        return dtnh_fail(err, DTNH_ERR_FORMAT, "checkpoint: the file has momentum (dtnh.optim.m), the optimizer none");
    if ((!o->v || !o->state_count) && dtnh_st_find(f, "dtnh.optim.v") >= 0)
        return dtnh_fail(err, DTNH_ERR_FORMAT, "checkpoint: the file has second moments (dtnh.optim.v), the optimizer none");
    shape[0] = o->view_count;
    shape[1] = 2;
    if ((s = dtnh__ckpt_find(f, "dtnh.optim.slots", DTNH_ST_I64, 2, shape, &at, err)) ||
        (s = dtnh_st_read_i64(f, at, slots, (size_t)o->view_count * 2, err)))
        return s;
    for (i = 0; i < o->view_count; i++) {
        size_t off = o->slots[i].state_offset;
        int64_t want = off == DTNH_NO_STATE ? -1 : (int64_t)off;
        if (slots[2 * i] != want || slots[2 * i + 1] < 0)
            return dtnh_fail(err, DTNH_ERR_FORMAT, "checkpoint: optimizer view %d has state offset %lld and "
                             "%lld steps, expected offset %lld (the same views trainable) and steps >= 0", i,
                             (long long)slots[2 * i], (long long)slots[2 * i + 1], (long long)want);
    }
    return DTNH_OK;
}

/* Reads the stream's order into scratch (order) and checks it is a permutation (seen: count
   bytes of scratch). */
static dtnh_status dtnh__ckpt_check_stream(const dtnh_batch_stream *bs, dtnh_st_file *f, int64_t *order,
                                           unsigned char *seen, dtnh_error *err) {
    int at, i;
    dtnh_status s = dtnh__ckpt_find(f, "dtnh.stream.order", DTNH_ST_I64, 1, &bs->count, &at, err);
    if (s || (s = dtnh_st_read_i64(f, at, order, (size_t)bs->count, err))) return s;
    memset(seen, 0, (size_t)bs->count);
    for (i = 0; i < bs->count; i++) {
        if (order[i] < 0 || order[i] >= bs->count || seen[order[i]])
            return dtnh_fail(err, DTNH_ERR_FORMAT, "checkpoint: the stream order holds %lld at %d, expected "
                             "a permutation of [0, %d)", (long long)order[i], i, bs->count);
        seen[order[i]] = 1;
    }
    return DTNH_OK;
}

/* Everything checked: now the copies. */
static dtnh_status dtnh__ckpt_restore(dtnh_checkpoint *c, dtnh_st_file *f, const dtnh__ckpt_scalars *v,
                                      const int64_t *slots, const int64_t *order, dtnh_error *err) {
    dtnh_params *p = &c->net->params;
    dtnh_status s;
    int i;
    if ((s = dtnh_resnet_load(c->net, f, NULL, NULL, err))) return s;
    for (i = 0; c->with_source && i < p->count; i++) {
        char name[DTNH__CKPT_KEY];
        snprintf(name, sizeof name, "%s%s", dtnh__ckpt_w_src_prefix, p->views[i].name);
        if ((s = dtnh_st_read_f32(f, dtnh_st_find(f, name), p->w_src + p->views[i].offset, p->views[i].count, err)))
            return s;
    }
    if (c->optim) {
        dtnh_optim *o = c->optim;
        if (o->m && o->state_count && (s = dtnh_st_read_f32(f, dtnh_st_find(f, "dtnh.optim.m"), o->m, o->state_count, err)))
            return s;
        if (o->v && o->state_count && (s = dtnh_st_read_f32(f, dtnh_st_find(f, "dtnh.optim.v"), o->v, o->state_count, err)))
            return s;
        for (i = 0; i < o->view_count; i++) o->slots[i].steps = (long)slots[2 * i + 1];
        o->step = v->optim_step;
        memcpy(&o->lr, &v->optim_lr_bits, sizeof o->lr);
    }
    if (c->stream) {
        for (i = 0; i < c->stream->count; i++) c->stream->order[i] = (int)order[i];
        c->stream->next = (int)v->stream_next;
        c->stream->epoch = (int)v->stream_epoch;
        c->stream->rng.state = v->stream_rng;
    }
    for (i = 0; i < c->rng_count; i++) c->rngs[i]->state = v->rng[i];
    c->iteration = v->iteration;
    return DTNH_OK;
}

static dtnh_status dtnh__ckpt_load(dtnh_checkpoint *c, dtnh_st_file *f, dtnh_arena *scratch,
                                   dtnh_error *err) {
    dtnh__ckpt_scalars v;
    int64_t *slots = NULL, *order = NULL;
    unsigned char *seen = NULL;
    dtnh_status s;
    if (c->optim && (s = dtnh_arena_alloc(scratch, (size_t)c->optim->view_count * 2 * sizeof(int64_t), 0,
                                          (void **)&slots, err)))
        return s;
    if (c->stream && ((s = dtnh_arena_alloc(scratch, (size_t)c->stream->count * sizeof(int64_t), 0,
                                            (void **)&order, err)) ||
                      (s = dtnh_arena_alloc(scratch, (size_t)c->stream->count, 1, (void **)&seen, err))))
        return s;
    if (dtnh_arena_is_counting(scratch)) return DTNH_OK;
    if ((s = dtnh__ckpt_check_version(f, err)) || (s = dtnh__ckpt_check_state(c->net, f, err)) ||
        (s = dtnh__ckpt_read_scalars(c, f, &v, err)) ||
        (c->with_source && (s = dtnh__ckpt_check_source(&c->net->params, f, err))) ||
        (c->optim && (s = dtnh__ckpt_check_optim(c->optim, f, slots, err))) ||
        (c->stream && (s = dtnh__ckpt_check_stream(c->stream, f, order, seen, err))))
        return s;
    return dtnh__ckpt_restore(c, f, &v, slots, order, err);
}

DTNHDEF dtnh_status dtnh_checkpoint_load(dtnh_checkpoint *c, dtnh_st_file *f, dtnh_arena *scratch,
                                         dtnh_error *err) {
    size_t mark;
    dtnh_status s;
    if (!f || !scratch) return dtnh_fail(err, DTNH_ERR_ARG, "checkpoint_load: NULL file or scratch arena");
    if ((s = dtnh__ckpt_check(c, err))) return s;
    mark = dtnh_arena_mark(scratch);
    s = dtnh__ckpt_load(c, f, scratch, err);
    dtnh_arena_reset(scratch, mark);
    return s;
}

#ifndef DTNH_NO_STDIO
DTNHDEF dtnh_status dtnh_checkpoint_save(const dtnh_checkpoint *c, const char *path,
                                         dtnh_arena *scratch, dtnh_error *err) {
    dtnh__ckpt_table *t;
    size_t mark;
    dtnh_status s;
    if (!scratch) return dtnh_fail(err, DTNH_ERR_ARG, "checkpoint_save: NULL scratch arena");
    if ((s = dtnh__ckpt_check(c, err))) return s;
    mark = dtnh_arena_mark(scratch);
    s = dtnh__ckpt_table_build(c, scratch, &t, err);
    if (!s && t) s = dtnh_st_save(path, t->tensors, t->count, t->meta, t->meta_count, err);
    dtnh_arena_reset(scratch, mark);
    return s;
}

DTNHDEF dtnh_status dtnh_checkpoint_load_file(dtnh_checkpoint *c, const char *path,
                                              dtnh_arena *scratch, dtnh_error *err) {
    dtnh_st_file f;
    size_t mark;
    dtnh_status s;
    if (!scratch) return dtnh_fail(err, DTNH_ERR_ARG, "checkpoint_load: NULL scratch arena");
    if ((s = dtnh__ckpt_check(c, err))) return s;
    memset(&f, 0, sizeof f); /* closed below even when the open fails early */
    mark = dtnh_arena_mark(scratch);
    s = dtnh_st_open(&f, path, scratch, err);
    if (!s) s = dtnh__ckpt_load(c, &f, scratch, err);
    dtnh_st_close(&f);
    dtnh_arena_reset(scratch, mark);
    return s;
}
#endif

/* ---- numeric guards ------------------------------------------------------------------------- */

static dtnh_status dtnh__guard_fail(const dtnh_param_view *v, const char *what, const float *x, size_t bad,
                                    dtnh_error *err) {
    return dtnh_fail(err, DTNH_ERR_NUMERIC, "%s of view '%s' holds %g at element %zu: step skipped", what,
                     v->name, (double)x[bad], bad);
}

/* x over the views of p (the trainable ones only, or all). */
static dtnh_status dtnh__guard_vector(const dtnh_params *p, const float *x, const char *what,
                                      int trainable_only, dtnh_error *err) {
    int i;
    for (i = 0; x && i < p->count; i++) {
        const dtnh_param_view *v = &p->views[i];
        size_t bad = 0;
        if ((!trainable_only || v->trainable) && !dtnh_all_finite(v->count, x + v->offset, &bad))
            return dtnh__guard_fail(v, what, x + v->offset, bad, err);
    }
    return DTNH_OK;
}

/* An optimizer vector (m or v): each view's slice at its state offset. */
static dtnh_status dtnh__guard_state(const dtnh_params *p, const dtnh_optim *o, const float *x,
                                     const char *what, dtnh_error *err) {
    int i;
    for (i = 0; x && i < o->view_count && i < p->count; i++) {
        size_t off = o->slots[i].state_offset, bad = 0;
        const dtnh_param_view *v = &p->views[i];
        if (off != DTNH_NO_STATE && off + v->count <= o->state_count && !dtnh_all_finite(v->count, x + off, &bad))
            return dtnh__guard_fail(v, what, x + off, bad, err);
    }
    return DTNH_OK;
}

DTNHDEF dtnh_status dtnh_check_step_finite(const dtnh_params *p, const dtnh_optim *o, double loss,
                                           const float *g_j, const float *g_omega,
                                           dtnh_error *err) {
    dtnh_status s;
    if (!p || !p->views) return dtnh_fail(err, DTNH_ERR_ARG, "check_step_finite: NULL or counting store");
    if (!(loss - loss == 0))
        return dtnh_fail(err, DTNH_ERR_NUMERIC, "the loss is %g: step skipped", loss);
    if ((s = dtnh__guard_vector(p, p->w, "the weights", 0, err)) ||
        (s = dtnh__guard_vector(p, p->w_src, "the source weights w_s", 0, err)) ||
        (s = dtnh__guard_vector(p, g_j, "g_J", 1, err)) ||
        (s = dtnh__guard_vector(p, g_omega, "g_Omega", 1, err)))
        return s;
    if (o && o->slots &&
        ((s = dtnh__guard_state(p, o, o->m, "the optimizer's momentum (first moment)", err)) ||
         (s = dtnh__guard_state(p, o, o->v, "the optimizer's second moment", err))))
        return s;
    return DTNH_OK;
}

#endif /* DTNH_NN__IMPLEMENTED */
#endif /* DTNH_IMPLEMENTATION */

/*
------------------------------------------------------------------------------
This software is available under 2 licenses -- choose whichever you prefer.
------------------------------------------------------------------------------
ALTERNATIVE A - MIT License
Copyright (c) 2026 the dtnh authors
Permission is hereby granted, free of charge, to any person obtaining a copy of
this software and associated documentation files (the "Software"), to deal in
the Software without restriction, including without limitation the rights to
use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies
of the Software, and to permit persons to whom the Software is furnished to do
so, subject to the following conditions:
The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.
THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
------------------------------------------------------------------------------
ALTERNATIVE B - Public Domain (www.unlicense.org)
This is free and unencumbered software released into the public domain.
Anyone is free to copy, modify, publish, use, compile, sell, or distribute this
software, either in source code form or as a compiled binary, for any purpose,
commercial or non-commercial, and by any means.
------------------------------------------------------------------------------
*/
