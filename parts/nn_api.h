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
    size_t offset[2];   /* per-sample floats into the step block: [0] training, [1] inference */
    size_t grad_offset; /* per-sample floats: its gradient in the training block */
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
    size_t kept_floats;     /* per-sample floats of the activations backward reads */
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
   backward reads, scratch the rest (transient tensors, gradient buffers, kernel work). */
typedef struct dtnh_resnet_plan {
    size_t structure, weights, gradients, source_copy, buffers, optimizer_state;
    size_t persistent;
    size_t activations, scratch;
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
