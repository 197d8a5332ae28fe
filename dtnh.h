/* dtnh.h - v0.1 - public domain (or MIT) - fine-tuning deep networks on the device itself

   The core of dtnh: status codes, arenas, tensor views, a seeded RNG, the kernels (GEMM,
   convolution, elementwise, reductions), the flat parameter store, the optimizers and the
   DTNH step of "Towards Making Deep Transfer Learning Never Hurt" (Wan et al., ICDM 2019).
   The networks (layers, ResNet-18, regularizers, weights and data I/O) live in dtnh_nn.h.

   DO THIS
      #define DTNH_IMPLEMENTATION
   in exactly one C or C++ file before you #include this file, so that file holds the
   implementation. Every other file includes it as a plain header.

   MEMORY
   The library never calls malloc. You hand it memory as arenas; an arena whose base is NULL
   only counts, through the same code that assigns, so you can ask for a size first:

      dtnh_arena counter, arena;
      dtnh_arena_init(&counter, NULL, 0);          // counts only
      build_everything(&counter);                  // same calls as below
      void *mem = your_memory(dtnh_arena_used(&counter)); // yours: a static buffer...
      dtnh_arena_init(&arena, mem, dtnh_arena_used(&counter));
      build_everything(&arena);                    // now assigns; cannot run out

   ERRORS
   Every fallible call returns a dtnh_status (DTNH_OK is 0, errors are negative) and takes a
   last argument `dtnh_error *err` (may be NULL) that receives a message naming what failed,
   where, and what was expected against what was found. Nothing aborts on bad input.

   OPTIONS (define before including)
      DTNH_STATIC         make every function static to the including file
      DTNH_ASSERT(x)      replace assert() for the library's internal invariants
      DTNH_NO_STDIO       leave out everything that touches files (bare-metal builds)
      DTNH_ARENA_ALIGN    default arena alignment in bytes (64)
      DTNH_NO_SIMD        the portable C micro-kernel even where AVX-512, AVX2/FMA or NEON
                          intrinsics are available (they are chosen at compile time)

   OpenMP: compile with -fopenmp and the kernels run in parallel; results are bit-identical
   for any thread count, and without OpenMP.

   FASTER 3x3 CONVOLUTIONS: set `winograd = 1` in a dtnh_conv_geom (dtnh_resnet_config has the
   same field) and, in AVX-512 builds, 3x3 stride-1 pad-1 layers whose channel counts are
   multiples of 16 run Winograd F(4x4, 3x3) in all three passes: 1.6-3.5x faster layers and
   1.6-2.0x faster ResNet-18 training steps here, results within about 3e-5 of the largest
   output of the direct kernel's (not the same bits), more work memory (dtnh_conv_work_bytes
   says how much). Elsewhere the flag is ignored.

   EXAMPLE (the smallest use of the core: a DTNH step on two gradients)
      float w[3] = {1,2,3}, gj[3] = {1,0,0}, gom[3] = {-1,1,0}, d[3];
      dtnh_direction_stats st;
      dtnh_direction_flat(NULL, 3, gj, gom, d, &st, NULL);  // NULL config: DTNH, global
      for (int i = 0; i < 3; i++) w[i] -= 0.1f * d[i];      // d = {1,1,0}: no pull against gj
      // st.projected == 1, st.cos_j_omega < 0

   With a network, the parameters live in a dtnh_params store and one fused call does the
   direction and the optimizer (torch.optim's SGD, Adam or AdamW) in two passes:
      dtnh_optim_init(&opt, &opt_cfg, &params, &arena, &err);      // once
      ... backward into params.g_j, regularizer into params.g_omega ...
      dtnh_step(&opt, &dir_cfg, &params, params.g_j, params.g_omega, &stats, &err);
   and for L2-SP, whose g_Omega is a closed form, without storing g_Omega at all:
      dtnh_step_l2sp(&opt, &dir_cfg, &l2sp_cfg, &params, params.g_j, &stats, &err);

   LICENSE: see the end of the file.
*/
#ifndef DTNH_H
#define DTNH_H

#include <stddef.h>
#include <stdint.h>

#ifdef DTNH_STATIC
#define DTNHDEF static
#else
#define DTNHDEF extern
#endif

#ifndef DTNH_ARENA_ALIGN
#define DTNH_ARENA_ALIGN 64
#endif

/* For your own buffers: static DTNH_ALIGNED(64) unsigned char mem[1 << 20]; */
#if defined(__GNUC__) || defined(__clang__)
#define DTNH_ALIGNED(n) __attribute__((aligned(n)))
#elif defined(_MSC_VER)
#define DTNH_ALIGNED(n) __declspec(align(n))
#else
#define DTNH_ALIGNED(n)
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ============================================================================================
   Status codes and error detail
   Every fallible call returns one of these; the message lives in a caller-owned dtnh_error.
   ============================================================================================ */

#define DTNH_STATUS_LIST(X)                                               \
    X(DTNH_OK, 0, "ok")                                                   \
    X(DTNH_ERR_ARG, -1, "bad argument")                                   \
    X(DTNH_ERR_NOMEM, -2, "out of memory: the arena is too small")        \
    X(DTNH_ERR_SHAPE, -3, "shape mismatch")                               \
    X(DTNH_ERR_IO, -4, "input/output error")                              \
    X(DTNH_ERR_FORMAT, -5, "bad file format")                             \
    X(DTNH_ERR_NUMERIC, -6, "numeric fault: NaN or Inf")

typedef enum dtnh_status {
#define DTNH__STATUS_ENUM(name, value, text) name = value,
    DTNH_STATUS_LIST(DTNH__STATUS_ENUM)
#undef DTNH__STATUS_ENUM
    DTNH__STATUS_END = 1
} dtnh_status;

#define DTNH_ERROR_MSG_SIZE 256

/* Caller-owned detail of the last failure: what failed, where, expected against found. */
typedef struct dtnh_error {
    dtnh_status status;
    char msg[DTNH_ERROR_MSG_SIZE];
} dtnh_error;

DTNHDEF const char *dtnh_status_str(dtnh_status s);
/* Records a failure in err (when not NULL) with a printf-style message; returns s. */
DTNHDEF dtnh_status dtnh_fail(dtnh_error *err, dtnh_status s, const char *fmt, ...)
#if defined(__GNUC__) || defined(__clang__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
DTNHDEF void dtnh_error_clear(dtnh_error *err);

/* Multiplies sizes, failing with DTNH_ERR_ARG instead of wrapping around. */
DTNHDEF dtnh_status dtnh_size_mul(size_t a, size_t b, size_t *out, dtnh_error *err);

/* ============================================================================================
   Arenas
   A bump allocator over a caller-supplied buffer. A NULL base counts instead of assigning.
   ============================================================================================ */

typedef struct dtnh_arena {
    unsigned char *base; /* NULL: a counting arena */
    size_t capacity;     /* bytes usable from base (unbounded when counting) */
    size_t used;         /* bytes handed out, alignment padding included */
    size_t peak;         /* the highest `used` ever reached */
} dtnh_arena;

/* base NULL makes a counting arena: allocations succeed, return NULL, and only add up.
   base is aligned up to DTNH_ARENA_ALIGN inside; the bytes skipped come off capacity, so a
   count is exact for an aligned buffer (add DTNH_ARENA_ALIGN-1 bytes for any other). */
DTNHDEF void dtnh_arena_init(dtnh_arena *a, void *base, size_t capacity);
DTNHDEF int dtnh_arena_is_counting(const dtnh_arena *a);
/* align 0 means DTNH_ARENA_ALIGN. *out is NULL for a counting arena. Exhaustion returns
   DTNH_ERR_NOMEM, leaves the arena as it was and writes nothing. */
DTNHDEF dtnh_status dtnh_arena_alloc(dtnh_arena *a, size_t bytes, size_t align, void **out,
                                     dtnh_error *err);
DTNHDEF dtnh_status dtnh_arena_alloc_floats(dtnh_arena *a, size_t count, float **out,
                                            dtnh_error *err);
DTNHDEF size_t dtnh_arena_used(const dtnh_arena *a);
DTNHDEF size_t dtnh_arena_peak(const dtnh_arena *a);
DTNHDEF size_t dtnh_arena_mark(const dtnh_arena *a);
/* Frees everything allocated after the mark was taken. */
DTNHDEF void dtnh_arena_reset(dtnh_arena *a, size_t mark);

/* ============================================================================================
   Tensor views
   Up to 4-D float32 views in NCHW order over memory someone else owns.
   ============================================================================================ */

#define DTNH_MAX_DIMS 4

typedef struct dtnh_tensor {
    float *data;
    int ndim;
    int shape[DTNH_MAX_DIMS]; /* shape[i] for i >= ndim is 1 */
} dtnh_tensor;

/* Checks the shape (1..4 dims, each > 0, product fits size_t) and fills t, data NULL. */
DTNHDEF dtnh_status dtnh_tensor_shape(dtnh_tensor *t, int ndim, const int *shape, dtnh_error *err);
DTNHDEF dtnh_status dtnh_tensor_view(dtnh_tensor *t, float *data, int ndim, const int *shape,
                                     dtnh_error *err);
DTNHDEF dtnh_status dtnh_tensor_alloc(dtnh_tensor *t, dtnh_arena *a, int ndim, const int *shape,
                                      dtnh_error *err);
DTNHDEF size_t dtnh_tensor_count(const dtnh_tensor *t);
DTNHDEF int dtnh_tensor_same_shape(const dtnh_tensor *a, const dtnh_tensor *b);

/* ============================================================================================
   Random numbers
   A small seeded generator (splitmix64) in caller-owned state: runs repeat exactly.
   ============================================================================================ */

typedef struct dtnh_rng {
    uint64_t state;
} dtnh_rng;

DTNHDEF void dtnh_rng_seed(dtnh_rng *r, uint64_t seed);
DTNHDEF uint32_t dtnh_rng_u32(dtnh_rng *r);
DTNHDEF float dtnh_rng_uniform(dtnh_rng *r);             /* [0, 1) */
DTNHDEF uint32_t dtnh_rng_below(dtnh_rng *r, uint32_t n); /* [0, n), n > 0, unbiased */
DTNHDEF float dtnh_rng_normal(dtnh_rng *r);               /* mean 0, std 1 */
/* Fill x with N(0, 2/fan): torchvision's kaiming_normal_(mode="fan_out", relu) for ResNet
   convolutions, with fan = out_channels * kh * kw. */
DTNHDEF void dtnh_init_kaiming_normal(float *x, size_t n, size_t fan, dtnh_rng *r);
/* Fill x with U(-bound, bound): nn.Linear's default uses bound = 1/sqrt(fan_in). */
DTNHDEF void dtnh_init_uniform(float *x, size_t n, float bound, dtnh_rng *r);

/* ============================================================================================
   Threads
   ============================================================================================ */

/* The OpenMP thread count the kernels will use (1 without OpenMP). */
DTNHDEF int dtnh_threads(void);

/* ============================================================================================
   Reductions and elementwise operations
   Reductions add fixed 1024-element blocks in double, then the blocks in order, so the
   result does not depend on the thread count.
   ============================================================================================ */

DTNHDEF double dtnh_dot(size_t n, const float *x, const float *y);
DTNHDEF double dtnh_sumsq(size_t n, const float *x);
DTNHDEF double dtnh_sum(size_t n, const float *x);
DTNHDEF void dtnh_fill(size_t n, float *x, float v);
DTNHDEF void dtnh_copy(size_t n, const float *x, float *y);
DTNHDEF void dtnh_scale(size_t n, float a, float *x);
DTNHDEF void dtnh_axpy(size_t n, float a, const float *x, float *y); /* y += a*x */
/* 1 when every value is finite, else 0 and *first_bad (when not NULL) is its index. */
DTNHDEF int dtnh_all_finite(size_t n, const float *x, size_t *first_bad);

/* ============================================================================================
   The flat parameter store
   Parameters live in flat float vectors, one per role (w, w_s, g_J, g_Omega); each tensor is
   a named view (torchvision name, shape, offset, groups), so optimizers and the DTNH step
   are a few loops over flat arrays.
   ============================================================================================ */

/* Groups a parameter belongs to; a mask of these selects parameters. */
enum {
    DTNH_GROUP_BACKBONE = 1u << 0, /* pre-trained part: everything but the new head */
    DTNH_GROUP_HEAD = 1u << 1,     /* the new classifier (fc.weight, fc.bias) */
    DTNH_GROUP_KERNEL = 1u << 2,   /* convolution and linear weights */
    DTNH_GROUP_BN = 1u << 3,       /* batch-norm affine (weight, bias) */
    DTNH_GROUP_BIAS = 1u << 4,     /* biases of convolutions and linear layers */
    DTNH_GROUP_ALL = 0xFFu
};

#define DTNH_NAME_SIZE 48

typedef struct dtnh_param_view {
    char name[DTNH_NAME_SIZE]; /* torchvision state_dict name, e.g. "layer1.0.conv1.weight" */
    int ndim;
    int shape[DTNH_MAX_DIMS];
    size_t offset; /* first element in the flat vectors */
    size_t count;
    unsigned groups;
    int trainable; /* 0: frozen, no gradient is computed or applied */
} dtnh_param_view;

/* Roles of the flat vectors; dtnh_params_alloc takes a mask of these. */
enum {
    DTNH_ROLE_W = 1u << 0,       /* current weights */
    DTNH_ROLE_W_SRC = 1u << 1,   /* the source (pre-trained) weights w_s */
    DTNH_ROLE_G_J = 1u << 2,     /* gradient of the empirical loss J */
    DTNH_ROLE_G_OMEGA = 1u << 3  /* gradient of the regularizer Omega, already weighted */
};

typedef struct dtnh_params {
    dtnh_param_view *views;
    int count, capacity;
    size_t total; /* elements in each flat vector */
    float *w, *w_src, *g_j, *g_omega;
} dtnh_params;

/* Reserves room for up to max_views views. */
DTNHDEF dtnh_status dtnh_params_init(dtnh_params *p, dtnh_arena *a, int max_views, dtnh_error *err);
/* Appends a view (trainable) at the end of the flat layout; *index (may be NULL) gets its slot. */
DTNHDEF dtnh_status dtnh_params_add(dtnh_params *p, const char *name, int ndim, const int *shape,
                                    unsigned groups, int *index, dtnh_error *err);
/* Allocates the flat vectors named by roles (zeroed when assigning). Call after every add. */
DTNHDEF dtnh_status dtnh_params_alloc(dtnh_params *p, dtnh_arena *a, unsigned roles, dtnh_error *err);
DTNHDEF int dtnh_params_find(const dtnh_params *p, const char *name); /* index or -1 */
/* Sets trainable = (view.groups & mask) != 0 for every view; returns the trainable count. */
DTNHDEF size_t dtnh_params_set_trainable(dtnh_params *p, unsigned mask);
/* Elements of the views that are trainable and in `mask`. */
DTNHDEF size_t dtnh_params_count(const dtnh_params *p, unsigned mask);

/* ============================================================================================
   Kernels: GEMM and 2-D convolution
   The conv GEMMs are the whole cost of training, so these are packed and cache-blocked, with
   a register-blocked micro-kernel in portable C and AVX-512, AVX2/FMA and NEON variants.
   ============================================================================================ */

typedef enum dtnh_trans { DTNH_NO_TRANS = 0, DTNH_TRANS = 1 } dtnh_trans;

/* Scratch memory for the kernels (packing panels, im2col tiles), sized for a thread count.
   The kernels use at most `threads` threads, whatever OpenMP would offer. One buffer can
   serve many calls: size it with the largest dtnh_gemm_work_bytes / dtnh_conv_work_bytes.
   The micro-kernel is chosen at compile time: AVX-512, AVX2+FMA, NEON (AArch64) or portable
   C; define DTNH_NO_SIMD to force the portable one. */
typedef struct dtnh_work {
    void *buf;
    size_t bytes;
    int threads;
} dtnh_work;

/* Allocates scratch of `bytes` from the arena (counting arenas count it). */
DTNHDEF dtnh_status dtnh_work_alloc(dtnh_work *w, dtnh_arena *a, size_t bytes, int threads,
                                    dtnh_error *err);

/* Bytes of work dtnh_sgemm needs with `threads` threads. */
DTNHDEF size_t dtnh_gemm_work_bytes(int threads);

/* C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C, row-major, leading dimensions in
   floats. beta == 0 ignores what C held (NaN included). Deterministic: the reduction over K
   runs in the same order for any thread count. work may be NULL: plain loops on one thread
   (fine for tiny products); otherwise it must hold dtnh_gemm_work_bytes(work->threads). */
DTNHDEF void dtnh_sgemm(dtnh_trans ta, dtnh_trans tb, int M, int N, int K, float alpha,
                        const float *A, int lda, const float *B, int ldb, float beta, float *C,
                        int ldc, const dtnh_work *work);
/* The same with every argument checked (dimensions, leading dimensions, NULLs, work size). */
DTNHDEF dtnh_status dtnh_sgemm_checked(dtnh_trans ta, dtnh_trans tb, int M, int N, int K,
                                       float alpha, const float *A, int lda, const float *B,
                                       int ldb, float beta, float *C, int ldc,
                                       const dtnh_work *work, dtnh_error *err);

/* Geometry of a 2-D convolution over an NCHW batch (square stride and padding, no dilation,
   no groups: what ResNet needs). oh = (h + 2*pad - kh)/stride + 1, likewise ow. */
typedef struct dtnh_conv_geom {
    int n, c_in, h, w;
    int c_out, kh, kw, stride, pad;
    int oh, ow;
    int winograd; /* 0 (dtnh_conv_geom_init's): direct. 1: Winograd F(4x4, 3x3) where it applies */
} dtnh_conv_geom;

DTNHDEF dtnh_status dtnh_conv_geom_init(dtnh_conv_geom *g, int n, int c_in, int h, int w,
                                        int c_out, int kh, int kw, int stride, int pad,
                                        dtnh_error *err);
/* Bytes of work the three convolution calls below need with `threads` threads (the packing
   blocks only: no unfolded im2col matrix is ever built). The calls expect a geometry from
   dtnh_conv_geom_init (winograd set, when wanted, before the size is asked) and work of at
   least dtnh_conv_work_bytes(g, work->threads). With AVX-512, same-size stride-1
   convolutions (ResNet's 3x3 layers) and, through the input's four phases, stride-2 ones read
   their input directly instead of packing it, with the same bits (tested against dtnh_im2col
   and dtnh_sgemm). */
DTNHDEF size_t dtnh_conv_work_bytes(const dtnh_conv_geom *g, int threads);

/* y[n,c_out,oh,ow] = conv(x[n,c_in,h,w], w[c_out,c_in,kh,kw]) + bias (bias may be NULL). */
DTNHDEF void dtnh_conv2d_forward(const dtnh_conv_geom *g, const float *x, const float *w,
                                 const float *bias, float *y, const dtnh_work *work);
/* dx = gradient with respect to x; dx is overwritten. */
DTNHDEF void dtnh_conv2d_backward_data(const dtnh_conv_geom *g, const float *dy, const float *w,
                                       float *dx, const dtnh_work *work);
/* The same, added to what dx holds (a residual block's input gradient, without a temporary). */
DTNHDEF void dtnh_conv2d_backward_data_add(const dtnh_conv_geom *g, const float *dy,
                                           const float *w, float *dx, const dtnh_work *work);
/* dw (and dbias when not NULL) = gradients with respect to w and bias; added to what they
   hold when accumulate is non-zero, else overwritten. */
DTNHDEF void dtnh_conv2d_backward_weights(const dtnh_conv_geom *g, const float *x,
                                          const float *dy, float *dw, float *dbias,
                                          int accumulate, const dtnh_work *work);

/* One image: col[(c*kh+i)*kw+j][oy*ow+ox] = x[c][oy*stride-pad+i][ox*stride-pad+j] (0 off the
   edge), and the adjoint, which adds col back into x (x is accumulated, not overwritten). */
DTNHDEF void dtnh_im2col(const dtnh_conv_geom *g, const float *x_image, float *col);
DTNHDEF void dtnh_col2im(const dtnh_conv_geom *g, const float *col, float *x_image);
/* ============================================================================================
   The DTNH direction
   Algorithm 1 of the paper: when g_Omega pulls against g_J, its component along g_J is
   removed, so the step d = g_J + g_Omega never raises the empirical loss to first order.
   ============================================================================================ */

enum {
    DTNH_MODE_DTNH = 0, /* the paper: project g_Omega when <g_J, g_Omega> < 0 */
    DTNH_MODE_SUM = 1   /* vanilla regularized fine-tuning: d = g_J + g_Omega */
};
enum {
    DTNH_SCOPE_GLOBAL = 0,    /* one projection over every view taking part (the paper's w) */
    DTNH_SCOPE_PER_TENSOR = 1 /* each view projected on its own */
};

/* ||g_J||^2 below this and nothing is projected (the projection divides by it). */
#define DTNH_DIRECTION_EPS 1e-20

/* Zero means default everywhere. */
typedef struct dtnh_direction_config {
    int mode;        /* DTNH_MODE_DTNH (default) or DTNH_MODE_SUM */
    int scope;       /* DTNH_SCOPE_GLOBAL (default) or DTNH_SCOPE_PER_TENSOR */
    double eps;      /* 0 means DTNH_DIRECTION_EPS */
    unsigned groups; /* views taking part: trainable and in these groups; 0 means every
                        trainable view. The others get d = g_J + g_Omega. */
} dtnh_direction_config;

/* What one step looked like. Norms, cosine and angles cover every trainable view; angles are
   in degrees, and a zero vector counts as orthogonal to everything (90). */
typedef struct dtnh_direction_stats {
    double loss;              /* J: the caller fills it; nothing here writes it */
    double omega;             /* Omega: the regularizer, or the fused L2-SP step, fills it */
    double cos_j_omega;       /* cos(g_J, g_Omega), before any projection */
    double projected;         /* global: 1 or 0; per tensor: the fraction of views projected */
    double norm_g_j, norm_g_omega;
    double angle_d_j;         /* Angle 1: angle(d, g_J) */
    double angle_d_omega;     /* Angle 2: angle(d, g_Omega) */
    double angle_sum_j;       /* Angle 3: angle(g_J + g_Omega, g_J) */
    double angle_sum_omega;   /* Angle 4: angle(g_J + g_Omega, g_Omega) */
    int views, views_projected; /* views taking part, and how many of them were projected */
} dtnh_direction_stats;

/* d = g_J + g_Omega, with g_Omega projected as the config says; g_j and g_omega are flat
   vectors over the store p and are not changed. d may be g_omega or g_j itself (in place);
   views that are not trainable are left alone in d. st (may be NULL) gets every field but
   loss and omega. A NaN or Inf in either gradient: DTNH_ERR_NUMERIC naming the view, and
   nothing written. */
DTNHDEF dtnh_status dtnh_direction(const dtnh_direction_config *cfg, const dtnh_params *p,
                                   const float *g_j, const float *g_omega, float *d,
                                   dtnh_direction_stats *st, dtnh_error *err);
/* The same on n loose floats, as one trainable tensor (cfg may be NULL). */
DTNHDEF dtnh_status dtnh_direction_flat(const dtnh_direction_config *cfg, size_t n,
                                        const float *g_j, const float *g_omega, float *d,
                                        dtnh_direction_stats *st, dtnh_error *err);

/* ============================================================================================
   Learning-rate schedules and coefficient decay
   Pure functions of the iteration, with torch.optim.lr_scheduler's closed forms.
   ============================================================================================ */

enum {
    DTNH_SCHEDULE_CONSTANT = 0,
    DTNH_SCHEDULE_STEP = 1,  /* MultiStepLR: times gamma at each milestone (the paper: /10) */
    DTNH_SCHEDULE_COSINE = 2 /* CosineAnnealingLR, held at lr_min after `total` iterations */
};
#define DTNH_MAX_MILESTONES 8

typedef struct dtnh_schedule {
    int kind;
    long milestones[DTNH_MAX_MILESTONES]; /* step: ascending iteration counts */
    int n_milestones;
    double gamma;  /* step: 0 means 0.1 */
    long total;    /* cosine: iterations from the base lr down to lr_min (> 0) */
    double lr_min; /* cosine */
} dtnh_schedule;

/* The lr for the step that follows `iteration` finished steps (s NULL: constant). */
DTNHDEF double dtnh_schedule_lr(const dtnh_schedule *s, double base_lr, long iteration);
DTNHDEF dtnh_status dtnh_schedule_check(const dtnh_schedule *s, dtnh_error *err);
/* A regularizer coefficient decayed per epoch: coef * decay^epoch; decay 0 means constant. */
DTNHDEF double dtnh_coef_decayed(double coef, double decay, long epoch);

/* ============================================================================================
   Optimizers
   torch.optim's SGD (momentum, Nesterov; dampening 0), Adam and AdamW, consuming the
   direction d exactly where torch consumes the gradient. Weight decay is a regularizer in
   g_Omega (so DTNH sees it); only AdamW keeps its decoupled decay.
   ============================================================================================ */

enum { DTNH_OPTIM_SGD = 0, DTNH_OPTIM_ADAM = 1, DTNH_OPTIM_ADAMW = 2 };
#define DTNH_MAX_LR_RULES 4

/* A view whose groups meet `groups` learns at mult times the lr; the first match wins,
   unmatched views use 1. Rules with groups 0 are unused. */
typedef struct dtnh_lr_rule {
    unsigned groups;
    double mult;
} dtnh_lr_rule;

/* Zero means default everywhere. */
typedef struct dtnh_optim_config {
    int kind;            /* DTNH_OPTIM_SGD (default), _ADAM, _ADAMW */
    double lr;           /* base lr: 0 means 0.01 (SGD) or 0.001 (Adam, AdamW) */
    double momentum;     /* SGD: 0 is plain SGD */
    int nesterov;        /* SGD: needs momentum > 0 */
    double beta1, beta2; /* Adam: 0 means 0.9 and 0.999 */
    double eps;          /* Adam: 0 means 1e-8 */
    double weight_decay; /* AdamW's decoupled decay: 0 means 0.01, as torch */
    dtnh_lr_rule lr_rules[DTNH_MAX_LR_RULES];
    dtnh_schedule schedule;
} dtnh_optim_config;

#define DTNH_NO_STATE ((size_t)-1)

/* Per view: where its state starts in m and v (DTNH_NO_STATE: frozen at init), and how many
   steps it took (torch keeps both per parameter). */
typedef struct dtnh_optim_slot {
    size_t state_offset;
    long steps;
} dtnh_optim_slot;

typedef struct dtnh_optim {
    dtnh_optim_config cfg; /* with the defaults filled in */
    long step;             /* steps taken: the schedule's iteration */
    double lr;             /* the scheduled base lr of the last step */
    float *m, *v;          /* momentum / first moment, second moment; NULL when unused */
    size_t state_count;    /* floats in each of m and v: the views trainable at init */
    dtnh_optim_slot *slots;
    int view_count;
} dtnh_optim;

/* Takes the state (zeroed) from the arena, only for the views trainable now; a counting arena
   or a counting store (views NULL, every view counted) gives the size. Views made trainable
   later need a new init. */
DTNHDEF dtnh_status dtnh_optim_init(dtnh_optim *o, const dtnh_optim_config *cfg,
                                    const dtnh_params *p, dtnh_arena *a, dtnh_error *err);
/* One update of p->w from d (a flat vector over p) on every trainable view. */
DTNHDEF dtnh_status dtnh_optim_step(dtnh_optim *o, dtnh_params *p, const float *d,
                                    dtnh_error *err);
/* The lr view `index` gets at the next step (schedule and rules). */
DTNHDEF double dtnh_optim_view_lr(const dtnh_optim *o, const dtnh_params *p, int index);

/* ============================================================================================
   Fused steps
   Direction and update in two passes over the flat vectors (one for the dot products, one
   for the update), with no d stored. L2-SP needs no stored g_Omega at all.
   ============================================================================================ */

/* The L2 family, whose gradient is a closed form: backbone views are pulled toward w_s with
   alpha, head views toward 0 with beta: Omega = alpha/2 ||w_b - w_s||^2 + beta/2 ||w_h||^2.
   Zero means default. */
typedef struct dtnh_l2sp_config {
    double alpha;     /* 0 means 0.01 */
    double beta;      /* 0 means 0.01 */
    int kernels_only; /* 1: only the backbone's KERNEL views are pulled (BN and biases free) */
    int toward_zero;  /* 1: the backbone is pulled toward 0 too: plain L2 weight decay */
} dtnh_l2sp_config;

/* dtnh_direction then dtnh_optim_step, fused: g_j and g_omega are left unchanged. A NaN or
   Inf: DTNH_ERR_NUMERIC naming the view, and nothing changed; except in mode SUM without st,
   which takes a single pass and can only report it after the update. */
DTNHDEF dtnh_status dtnh_step(dtnh_optim *o, const dtnh_direction_config *dc, dtnh_params *p,
                              const float *g_j, const float *g_omega, dtnh_direction_stats *st,
                              dtnh_error *err);
/* The same with g_Omega from L2-SP (rc NULL: defaults) over p->w and p->w_src; st->omega
   gets its value when st is given. */
DTNHDEF dtnh_status dtnh_step_l2sp(dtnh_optim *o, const dtnh_direction_config *dc,
                                   const dtnh_l2sp_config *rc, dtnh_params *p, const float *g_j,
                                   dtnh_direction_stats *st, dtnh_error *err);

#ifdef __cplusplus
}
#endif

#endif /* DTNH_H */

/* ============================================================================================
   IMPLEMENTATION
   ============================================================================================ */
#ifdef DTNH_IMPLEMENTATION
#ifndef DTNH__IMPLEMENTED
#define DTNH__IMPLEMENTED

#include <math.h>
#include <stdarg.h>
#include <stdio.h> /* vsnprintf for messages only */
#include <string.h>

#ifndef DTNH_ASSERT
#include <assert.h>
#define DTNH_ASSERT(x) assert(x)
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__GNUC__) || defined(__clang__)
#define DTNH__RESTRICT __restrict__
#elif defined(_MSC_VER)
#define DTNH__RESTRICT __restrict
#else
#define DTNH__RESTRICT
#endif

/* OpenMP pragmas only where the compiler has OpenMP; a string literal keeps -pedantic happy. */
#ifdef _OPENMP
#define DTNH__PRAGMA(x) _Pragma(#x)
#define DTNH__OMP(x) DTNH__PRAGMA(omp x)
#else
#define DTNH__OMP(x)
#endif

/* ---- status -------------------------------------------------------------------------------- */

DTNHDEF const char *dtnh_status_str(dtnh_status s) {
    switch (s) {
#define DTNH__STATUS_CASE(name, value, text) \
    case name: return text;
        DTNH_STATUS_LIST(DTNH__STATUS_CASE)
#undef DTNH__STATUS_CASE
    default: return "unknown status";
    }
}

DTNHDEF dtnh_status dtnh_fail(dtnh_error *err, dtnh_status s, const char *fmt, ...) {
    if (err) {
        va_list ap;
        err->status = s;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return s;
}

DTNHDEF void dtnh_error_clear(dtnh_error *err) {
    if (err) {
        err->status = DTNH_OK;
        err->msg[0] = '\0';
    }
}

DTNHDEF dtnh_status dtnh_size_mul(size_t a, size_t b, size_t *out, dtnh_error *err) {
    if (a != 0 && b > (size_t)-1 / a)
        return dtnh_fail(err, DTNH_ERR_ARG, "size overflow: %zu x %zu does not fit size_t", a, b);
    *out = a * b;
    return DTNH_OK;
}

/* ---- arena --------------------------------------------------------------------------------- */

DTNHDEF void dtnh_arena_init(dtnh_arena *a, void *base, size_t capacity) {
    size_t skip = 0;
    if (base) {
        uintptr_t p = (uintptr_t)base;
        skip = (size_t)((DTNH_ARENA_ALIGN - p % DTNH_ARENA_ALIGN) % DTNH_ARENA_ALIGN);
        if (skip > capacity) skip = capacity;
    }
    a->base = base ? (unsigned char *)base + skip : NULL;
    a->capacity = base ? capacity - skip : (size_t)-1;
    a->used = 0;
    a->peak = 0;
}

DTNHDEF int dtnh_arena_is_counting(const dtnh_arena *a) { return a->base == NULL; }

DTNHDEF dtnh_status dtnh_arena_alloc(dtnh_arena *a, size_t bytes, size_t align, void **out,
                                     dtnh_error *err) {
    size_t start, pad;
    if (out) *out = NULL;
    if (!a || !out) return dtnh_fail(err, DTNH_ERR_ARG, "arena_alloc: NULL arena or out pointer");
    if (align == 0) align = DTNH_ARENA_ALIGN;
    if ((align & (align - 1)) != 0)
        return dtnh_fail(err, DTNH_ERR_ARG, "arena_alloc: alignment %zu is not a power of two", align);
    /* Offsets are aligned relative to the (aligned) base, so counting and assigning agree. */
    pad = (align - a->used % align) % align;
    if (pad > a->capacity - a->used || bytes > a->capacity - a->used - pad)
        return dtnh_fail(err, DTNH_ERR_NOMEM,
                         "arena exhausted: asked for %zu bytes, %zu of %zu left", bytes,
                         a->capacity - a->used, a->capacity);
    start = a->used + pad;
    a->used = start + bytes;
    if (a->used > a->peak) a->peak = a->used;
    *out = a->base ? a->base + start : NULL;
    return DTNH_OK;
}

DTNHDEF dtnh_status dtnh_arena_alloc_floats(dtnh_arena *a, size_t count, float **out,
                                            dtnh_error *err) {
    size_t bytes = 0;
    void *p = NULL;
    dtnh_status s;
    if (out) *out = NULL;
    if (!out) return dtnh_fail(err, DTNH_ERR_ARG, "arena_alloc_floats: NULL out pointer");
    s = dtnh_size_mul(count, sizeof(float), &bytes, err);
    if (s) return s;
    s = dtnh_arena_alloc(a, bytes, 0, &p, err);
    *out = (float *)p;
    return s;
}

DTNHDEF size_t dtnh_arena_used(const dtnh_arena *a) { return a->used; }
DTNHDEF size_t dtnh_arena_peak(const dtnh_arena *a) { return a->peak; }
DTNHDEF size_t dtnh_arena_mark(const dtnh_arena *a) { return a->used; }

DTNHDEF void dtnh_arena_reset(dtnh_arena *a, size_t mark) {
    DTNH_ASSERT(mark <= a->used);
    a->used = mark;
}

/* ---- tensor -------------------------------------------------------------------------------- */

DTNHDEF dtnh_status dtnh_tensor_shape(dtnh_tensor *t, int ndim, const int *shape, dtnh_error *err) {
    size_t count = 1;
    int i;
    if (!t || !shape) return dtnh_fail(err, DTNH_ERR_ARG, "tensor: NULL tensor or shape");
    if (ndim < 1 || ndim > DTNH_MAX_DIMS)
        return dtnh_fail(err, DTNH_ERR_ARG, "tensor: %d dimensions, expected 1..%d", ndim,
                         DTNH_MAX_DIMS);
    for (i = 0; i < ndim; i++) {
        if (shape[i] <= 0)
            return dtnh_fail(err, DTNH_ERR_ARG, "tensor: dimension %d is %d, expected > 0", i,
                             shape[i]);
        if (dtnh_size_mul(count, (size_t)shape[i], &count, err)) return DTNH_ERR_ARG;
    }
    if (dtnh_size_mul(count, sizeof(float), &count, err)) return DTNH_ERR_ARG;
    t->data = NULL;
    t->ndim = ndim;
    for (i = 0; i < DTNH_MAX_DIMS; i++) t->shape[i] = i < ndim ? shape[i] : 1;
    return DTNH_OK;
}

DTNHDEF dtnh_status dtnh_tensor_view(dtnh_tensor *t, float *data, int ndim, const int *shape,
                                     dtnh_error *err) {
    dtnh_status s = dtnh_tensor_shape(t, ndim, shape, err);
    if (s) return s;
    t->data = data;
    return DTNH_OK;
}

DTNHDEF dtnh_status dtnh_tensor_alloc(dtnh_tensor *t, dtnh_arena *a, int ndim, const int *shape,
                                      dtnh_error *err) {
    dtnh_status s = dtnh_tensor_shape(t, ndim, shape, err);
    if (s) return s;
    return dtnh_arena_alloc_floats(a, dtnh_tensor_count(t), &t->data, err);
}

DTNHDEF size_t dtnh_tensor_count(const dtnh_tensor *t) {
    size_t n = 1;
    int i;
    for (i = 0; i < t->ndim; i++) n *= (size_t)t->shape[i];
    return n;
}

DTNHDEF int dtnh_tensor_same_shape(const dtnh_tensor *a, const dtnh_tensor *b) {
    int i;
    if (a->ndim != b->ndim) return 0;
    for (i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return 0;
    return 1;
}

/* ---- rng ----------------------------------------------------------------------------------- */

DTNHDEF void dtnh_rng_seed(dtnh_rng *r, uint64_t seed) { r->state = seed ^ 0x9E3779B97F4A7C15ull; }

static uint64_t dtnh__rng_next64(dtnh_rng *r) {
    uint64_t z = (r->state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

DTNHDEF uint32_t dtnh_rng_u32(dtnh_rng *r) { return (uint32_t)(dtnh__rng_next64(r) >> 32); }

DTNHDEF float dtnh_rng_uniform(dtnh_rng *r) {
    return (float)(dtnh_rng_u32(r) >> 8) * (1.0f / 16777216.0f);
}

DTNHDEF uint32_t dtnh_rng_below(dtnh_rng *r, uint32_t n) {
    /* Rejection keeps every value equally likely. */
    uint32_t limit = (uint32_t)(0u - n) % n, x;
    do x = dtnh_rng_u32(r);
    while (x < limit);
    return x % n;
}

DTNHDEF float dtnh_rng_normal(dtnh_rng *r) {
    /* Box-Muller; u1 in (0,1] so the log is finite. */
    double u1 = ((double)(dtnh__rng_next64(r) >> 11) + 1.0) * (1.0 / 9007199254740992.0);
    double u2 = (double)(dtnh__rng_next64(r) >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

DTNHDEF void dtnh_init_kaiming_normal(float *x, size_t n, size_t fan, dtnh_rng *r) {
    float std = (float)sqrt(2.0 / (double)(fan ? fan : 1));
    size_t i;
    for (i = 0; i < n; i++) x[i] = std * dtnh_rng_normal(r);
}

DTNHDEF void dtnh_init_uniform(float *x, size_t n, float bound, dtnh_rng *r) {
    size_t i;
    for (i = 0; i < n; i++) x[i] = bound * (2.0f * dtnh_rng_uniform(r) - 1.0f);
}

/* ---- threads ------------------------------------------------------------------------------- */

DTNHDEF int dtnh_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/* ---- reductions and elementwise ------------------------------------------------------------ */

#define DTNH__RBLOCK 1024

/* Each block's partial sum is computed alone, then the blocks are added in order: the same
   bits for any thread count. Partials sit on the stack in chunks of 256 blocks. */
typedef double (*dtnh__block_fn)(const float *x, const float *y, size_t n);

static double dtnh__block_dot(const float *x, const float *y, size_t n) {
    double s = 0;
    size_t i;
    for (i = 0; i < n; i++) s += (double)x[i] * (double)y[i];
    return s;
}
static double dtnh__block_sumsq(const float *x, const float *y, size_t n) {
    double s = 0;
    size_t i;
    (void)y;
    for (i = 0; i < n; i++) s += (double)x[i] * (double)x[i];
    return s;
}
static double dtnh__block_sum(const float *x, const float *y, size_t n) {
    double s = 0;
    size_t i;
    (void)y;
    for (i = 0; i < n; i++) s += (double)x[i];
    return s;
}

static double dtnh__reduce(size_t n, const float *x, const float *y, dtnh__block_fn fn) {
    double partial[256], total = 0;
    size_t nblocks = (n + DTNH__RBLOCK - 1) / DTNH__RBLOCK, chunk, b;
    for (chunk = 0; chunk < nblocks; chunk += 256) {
        long cnt = (long)(nblocks - chunk < 256 ? nblocks - chunk : 256), k;
        DTNH__OMP(parallel for schedule(static) if (cnt > 8))
        for (k = 0; k < cnt; k++) {
            size_t off = (chunk + (size_t)k) * DTNH__RBLOCK;
            size_t len = n - off < DTNH__RBLOCK ? n - off : DTNH__RBLOCK;
            partial[k] = fn(x + off, y ? y + off : NULL, len);
        }
        for (b = 0; b < (size_t)cnt; b++) total += partial[b];
    }
    return total;
}

DTNHDEF double dtnh_dot(size_t n, const float *x, const float *y) {
    return dtnh__reduce(n, x, y, dtnh__block_dot);
}
DTNHDEF double dtnh_sumsq(size_t n, const float *x) { return dtnh__reduce(n, x, NULL, dtnh__block_sumsq); }
DTNHDEF double dtnh_sum(size_t n, const float *x) { return dtnh__reduce(n, x, NULL, dtnh__block_sum); }

DTNHDEF void dtnh_fill(size_t n, float *x, float v) {
    size_t i;
    for (i = 0; i < n; i++) x[i] = v;
}
DTNHDEF void dtnh_copy(size_t n, const float *x, float *y) {
    if (n) memmove(y, x, n * sizeof(float));
}
DTNHDEF void dtnh_scale(size_t n, float a, float *x) {
    size_t i;
    for (i = 0; i < n; i++) x[i] *= a;
}
DTNHDEF void dtnh_axpy(size_t n, float a, const float *x, float *y) {
    size_t i;
    for (i = 0; i < n; i++) y[i] += a * x[i];
}
DTNHDEF int dtnh_all_finite(size_t n, const float *x, size_t *first_bad) {
    size_t i;
    for (i = 0; i < n; i++) {
        /* x - x is 0 for finite x and NaN for NaN or Inf; works under -ffast-math too. */
        float d = x[i] - x[i];
        if (d != d) {
            if (first_bad) *first_bad = i;
            return 0;
        }
    }
    return 1;
}

/* ---- parameter store ------------------------------------------------------------------ */

DTNHDEF dtnh_status dtnh_params_init(dtnh_params *p, dtnh_arena *a, int max_views, dtnh_error *err) {
    void *mem = NULL;
    dtnh_status s;
    size_t bytes = 0;
    if (!p || !a || max_views <= 0)
        return dtnh_fail(err, DTNH_ERR_ARG, "params_init: NULL argument or max_views %d <= 0", max_views);
    memset(p, 0, sizeof *p);
    if ((s = dtnh_size_mul((size_t)max_views, sizeof(dtnh_param_view), &bytes, err))) return s;
    if ((s = dtnh_arena_alloc(a, bytes, 0, &mem, err))) return s;
    p->views = (dtnh_param_view *)mem;
    p->capacity = max_views;
    return DTNH_OK;
}

DTNHDEF dtnh_status dtnh_params_add(dtnh_params *p, const char *name, int ndim, const int *shape,
                                    unsigned groups, int *index, dtnh_error *err) {
    dtnh_tensor t;
    dtnh_param_view v;
    dtnh_status s;
    size_t n;
    int i;
    if (!p || !name) return dtnh_fail(err, DTNH_ERR_ARG, "params_add: NULL argument");
    if (strlen(name) >= DTNH_NAME_SIZE)
        return dtnh_fail(err, DTNH_ERR_ARG, "params_add: name '%s' longer than %d", name, DTNH_NAME_SIZE - 1);
    if ((s = dtnh_tensor_shape(&t, ndim, shape, err))) return s;
    n = dtnh_tensor_count(&t);
    if (p->total > (size_t)-1 / sizeof(float) - n)
        return dtnh_fail(err, DTNH_ERR_ARG, "params_add: '%s' makes the store overflow", name);
    memset(&v, 0, sizeof v);
    strcpy(v.name, name);
    v.ndim = ndim;
    for (i = 0; i < DTNH_MAX_DIMS; i++) v.shape[i] = t.shape[i];
    v.offset = p->total;
    v.count = n;
    v.groups = groups;
    v.trainable = 1;
    /* A counting store (views NULL) only adds up offsets. */
    if (p->views && p->count >= p->capacity)
        return dtnh_fail(err, DTNH_ERR_ARG, "params_add: more than %d views", p->capacity);
    if (p->views) p->views[p->count] = v;
    if (index) *index = p->count;
    p->total += n;
    p->count++;
    return DTNH_OK;
}

DTNHDEF dtnh_status dtnh_params_alloc(dtnh_params *p, dtnh_arena *a, unsigned roles, dtnh_error *err) {
    float **slots[4];
    unsigned bits[4] = {DTNH_ROLE_W, DTNH_ROLE_W_SRC, DTNH_ROLE_G_J, DTNH_ROLE_G_OMEGA};
    int i;
    slots[0] = &p->w;
    slots[1] = &p->w_src;
    slots[2] = &p->g_j;
    slots[3] = &p->g_omega;
    for (i = 0; i < 4; i++) {
        dtnh_status s;
        if (!(roles & bits[i])) continue;
        if ((s = dtnh_arena_alloc_floats(a, p->total, slots[i], err))) return s;
        if (*slots[i]) dtnh_fill(p->total, *slots[i], 0.0f);
    }
    return DTNH_OK;
}

DTNHDEF int dtnh_params_find(const dtnh_params *p, const char *name) {
    int i;
    if (!p->views) return -1;
    for (i = 0; i < p->count; i++)
        if (strcmp(p->views[i].name, name) == 0) return i;
    return -1;
}

DTNHDEF size_t dtnh_params_set_trainable(dtnh_params *p, unsigned mask) {
    size_t n = 0;
    int i;
    if (!p->views) return 0;
    for (i = 0; i < p->count; i++) {
        p->views[i].trainable = (p->views[i].groups & mask) != 0;
        if (p->views[i].trainable) n += p->views[i].count;
    }
    return n;
}

DTNHDEF size_t dtnh_params_count(const dtnh_params *p, unsigned mask) {
    size_t n = 0;
    int i;
    if (!p->views) return 0;
    for (i = 0; i < p->count; i++)
        if (p->views[i].trainable && (p->views[i].groups & mask)) n += p->views[i].count;
    return n;
}

/* ---- kernels: GEMM ------------------------------------------------------------------------- */
/* A GotoBLAS/BLIS-style SGEMM. C is cut into MC x NC blocks, K into KC slices; for each slice
   an A block (MC x KC) and a B block (KC x NC) are packed into the work buffer, and a
   register-blocked micro-kernel multiplies an MR x KC panel of A by a KC x NR sliver of B.
   The packing routines read their operand through a view (plain, transposed, implicit im2col,
   batch-folded), so convolutions run on the same engine without unfolding their input, and
   the write-back likewise maps a tile of C onto a plain, transposed or batch-folded output.
   Determinism: each element of C is a chain of FMAs over k in order inside a KC slice, and the
   slices are added in order; threads only choose which tiles they compute. (A long product
   with a small C is cut along K into parts, or not, by its shape alone: see dtnh__k_cut.) */

#if !defined(DTNH_NO_SIMD) && defined(__AVX512F__)
#include <immintrin.h>
#define DTNH__AVX512 1
#define DTNH__MR 8
#define DTNH__NR 32
#elif !defined(DTNH_NO_SIMD) && defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define DTNH__AVX2 1
#define DTNH__MR 6
#define DTNH__NR 16
#elif !defined(DTNH_NO_SIMD) && defined(__ARM_NEON) && defined(__aarch64__)
#include <arm_neon.h>
#define DTNH__NEON 1
#define DTNH__MR 8
#define DTNH__NR 12
#else
#define DTNH__MR 4
#define DTNH__NR 16
#endif

/* Block sizes (definable before the include, for tuning). The B block (KC x NC, 1 MiB) is
   packed once per K slice of NC columns, the A block (MC x KC) once per B block; dtnh__macro
   says which block's pieces stay in L1 while the other's stream. Only KC changes the
   arithmetic (how K is sliced). */
#ifndef DTNH__KC
#define DTNH__KC 256
#endif
#ifndef DTNH__MC
#define DTNH__MC 256
#endif
#ifndef DTNH__NC
#define DTNH__NC 1024
#endif
#define DTNH__PAR_MADDS 262144.0 /* multiply-adds below which one thread is quicker */

#if defined(__GNUC__) || defined(__clang__)
#define DTNH__PREFETCH(p) __builtin_prefetch(p)
#define DTNH__PREFETCH_W(p) __builtin_prefetch(p, 1, 3) /* to be written */
#else
#define DTNH__PREFETCH(p) ((void)0)
#define DTNH__PREFETCH_W(p) ((void)0)
#endif

static int dtnh__kmin(int a, int b) { return a < b ? a : b; }
static int dtnh__kround_up(int x, int m) { return (x + m - 1) / m * m; }

/* ---- small vector helpers: short runs of floats (zero, copy, update) ------------------------ */

static void dtnh__vzero(float *d, int n) {
    int i;
#if defined(DTNH__AVX512)
    for (i = 0; i + 16 <= n; i += 16) _mm512_storeu_ps(d + i, _mm512_setzero_ps());
    if (i < n) _mm512_mask_storeu_ps(d + i, (__mmask16)((1u << (n - i)) - 1u), _mm512_setzero_ps());
#else
    for (i = 0; i < n; i++) d[i] = 0.0f;
#endif
}

static void dtnh__vcopy(float *DTNH__RESTRICT d, const float *DTNH__RESTRICT s, int n) {
    int i;
#if defined(DTNH__AVX512)
    for (i = 0; i + 16 <= n; i += 16) _mm512_storeu_ps(d + i, _mm512_loadu_ps(s + i));
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
        _mm512_mask_storeu_ps(d + i, m, _mm512_maskz_loadu_ps(m, s + i));
    }
#else
    for (i = 0; i < n; i++) d[i] = s[i];
#endif
}

#if defined(DTNH__AVX512)
/* A pointer `back` floats before p, as an integer sum: the lanes in front of p are masked off
   and never read, and no out-of-bounds pointer arithmetic happens in C. */
static const float *dtnh__floats_before(const float *p, int back) {
    return (const float *)((uintptr_t)p - (uintptr_t)back * sizeof(float));
}
#endif

/* dst[0..len) = 0 except dst[lo..hi) = src[0..hi-lo): a run of im2col with its padding.
   src is only read when hi > lo. */
static void dtnh__copy_padded(float *DTNH__RESTRICT dst, int len, int lo, int hi,
                              const float *DTNH__RESTRICT src) {
#if defined(DTNH__AVX512)
    if (len <= 16) { /* one masked load straight into place, one masked store */
        __m512 v = _mm512_setzero_ps();
        if (hi > lo)
            v = _mm512_maskz_loadu_ps((__mmask16)(((1u << (hi - lo)) - 1u) << lo), dtnh__floats_before(src, lo));
        _mm512_mask_storeu_ps(dst, (__mmask16)((1u << len) - 1u), v);
        return;
    }
#endif
    dtnh__vzero(dst, lo);
    dtnh__vcopy(dst + lo, src, hi - lo);
    dtnh__vzero(dst + hi, len - hi);
}

/* One NR-wide row of a B sliver; fixed length, so it stays inline (no memcpy call). */
static void dtnh__copy_sliver_row(float *DTNH__RESTRICT d, const float *DTNH__RESTRICT s) {
#if defined(DTNH__AVX512)
    _mm512_store_ps(d, _mm512_loadu_ps(s));
    _mm512_store_ps(d + 16, _mm512_loadu_ps(s + 16));
#elif defined(DTNH__AVX2)
    _mm256_store_ps(d, _mm256_loadu_ps(s));
    _mm256_store_ps(d + 8, _mm256_loadu_ps(s + 8));
#else
    int i;
    for (i = 0; i < DTNH__NR; i++) d[i] = s[i];
#endif
}

/* dst[i * dst_stride + j] = src[j * src_stride + i] for an 8 x 8 block: the building block of
   every transposing pack and of the transposed write-back. */
#if defined(__AVX__) && !defined(DTNH_NO_SIMD)
#define DTNH__AVX_TRANSPOSE 1
static void dtnh__transpose8_regs(__m256 *r) {
    __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
    r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
    r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
    r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
    r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
    r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
    r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
    r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}
static void dtnh__transpose8(const float *src, size_t src_stride, float *dst, size_t dst_stride) {
    __m256 r[8];
    int i;
    for (i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(src + (size_t)i * src_stride);
    dtnh__transpose8_regs(r);
    for (i = 0; i < 8; i++) _mm256_storeu_ps(dst + (size_t)i * dst_stride, r[i]);
}
#else
static void dtnh__transpose8(const float *src, size_t src_stride, float *dst, size_t dst_stride) {
    int i, j;
    for (i = 0; i < 8; i++)
        for (j = 0; j < 8; j++) dst[(size_t)i * dst_stride + j] = src[(size_t)j * src_stride + i];
}
#endif

#if defined(DTNH__AVX512)
/* The 16 x 16 transpose in zmm registers: half the shuffles per element of the 8 x 8. Row k of
   dst (for k < rows_out) = column k of the src rows; src rows past rows_in and columns past
   cols read as zero (nothing is read there). */
#define DTNH__HAVE_TRANSPOSE16 1
static void dtnh__transpose16_part(const float *src, size_t src_stride, int rows_in, int cols, float *dst,
                                   size_t dst_stride, int rows_out) {
    const __mmask16 all = 0xFFFF; /* maskz forms: g++ warns on the plain ones' undefined */
    __mmask16 lanes = (__mmask16)((1u << cols) - 1u);
    __m512 r[16], t[16];
    int i, j;
    for (i = 0; i < 16; i++)
        r[i] = _mm512_maskz_loadu_ps(i < rows_in ? lanes : (__mmask16)0, src + (size_t)(i < rows_in ? i : 0) * src_stride);
    for (i = 0; i < 8; i++) {
        t[2 * i] = _mm512_maskz_unpacklo_ps(all, r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_maskz_unpackhi_ps(all, r[2 * i], r[2 * i + 1]);
    }
    for (i = 0; i < 4; i++) { /* r[4i + j] now holds column 4L + j of rows 4i..4i+3 in lane L */
        r[4 * i] = _mm512_maskz_shuffle_ps(all, t[4 * i], t[4 * i + 2], 0x44);
        r[4 * i + 1] = _mm512_maskz_shuffle_ps(all, t[4 * i], t[4 * i + 2], 0xEE);
        r[4 * i + 2] = _mm512_maskz_shuffle_ps(all, t[4 * i + 1], t[4 * i + 3], 0x44);
        r[4 * i + 3] = _mm512_maskz_shuffle_ps(all, t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    for (j = 0; j < 4; j++) {
        __m512 x0 = _mm512_maskz_shuffle_f32x4(all, r[j], r[4 + j], 0x44), x1 = _mm512_maskz_shuffle_f32x4(all, r[j], r[4 + j], 0xEE);
        __m512 y0 = _mm512_maskz_shuffle_f32x4(all, r[8 + j], r[12 + j], 0x44), y1 = _mm512_maskz_shuffle_f32x4(all, r[8 + j], r[12 + j], 0xEE);
        if (j < rows_out) _mm512_storeu_ps(dst + (size_t)j * dst_stride, _mm512_maskz_shuffle_f32x4(all, x0, y0, 0x88));
        if (4 + j < rows_out) _mm512_storeu_ps(dst + (size_t)(4 + j) * dst_stride, _mm512_maskz_shuffle_f32x4(all, x0, y0, 0xDD));
        if (8 + j < rows_out) _mm512_storeu_ps(dst + (size_t)(8 + j) * dst_stride, _mm512_maskz_shuffle_f32x4(all, x1, y1, 0x88));
        if (12 + j < rows_out) _mm512_storeu_ps(dst + (size_t)(12 + j) * dst_stride, _mm512_maskz_shuffle_f32x4(all, x1, y1, 0xDD));
    }
}

static void dtnh__transpose16(const float *src, size_t src_stride, float *dst, size_t dst_stride) {
    dtnh__transpose16_part(src, src_stride, 16, 16, dst, dst_stride, 16);
}
#endif

/* How one K slice's product t lands in C: the first slice applies beta (0 ignores C, NaN
   included) and a per-row bias; later slices add. */
typedef struct dtnh__blend {
    float alpha, beta, bias;
    int first;
} dtnh__blend;

#if defined(DTNH__AVX512)
/* The lanes m of c blended with vt (bias added by the first slice). */
static void dtnh__blend16(float *c, __m512 vt, __mmask16 m, const dtnh__blend *u, float bias) {
    __m512 va = _mm512_set1_ps(u->alpha), v;
    if (!u->first) v = _mm512_fmadd_ps(va, vt, _mm512_maskz_loadu_ps(m, c));
    else if (u->beta == 0.0f) v = _mm512_fmadd_ps(va, vt, _mm512_set1_ps(bias));
    else v = _mm512_fmadd_ps(_mm512_set1_ps(u->beta), _mm512_maskz_loadu_ps(m, c), _mm512_fmadd_ps(va, vt, _mm512_set1_ps(bias)));
    _mm512_mask_storeu_ps(c, m, v);
}
#endif

static void dtnh__blend_run(float *DTNH__RESTRICT c, const float *DTNH__RESTRICT t, int n,
                             const dtnh__blend *u) {
    int i = 0;
#if defined(DTNH__AVX512)
    for (; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1u);
        dtnh__blend16(c + i, _mm512_maskz_loadu_ps(m, t + i), m, u, u->bias);
    }
#elif defined(DTNH__AVX2)
    __m256 va = _mm256_set1_ps(u->alpha), vb = _mm256_set1_ps(u->beta);
    __m256 vbias = _mm256_set1_ps(u->bias);
    for (; i + 8 <= n; i += 8) {
        __m256 vt = _mm256_loadu_ps(t + i), v;
        if (!u->first) v = _mm256_fmadd_ps(va, vt, _mm256_loadu_ps(c + i));
        else if (u->beta == 0.0f) v = _mm256_fmadd_ps(va, vt, vbias);
        else v = _mm256_fmadd_ps(vb, _mm256_loadu_ps(c + i), _mm256_fmadd_ps(va, vt, vbias));
        _mm256_storeu_ps(c + i, v);
    }
#endif
    for (; i < n; i++) {
        if (!u->first) c[i] += u->alpha * t[i];
        else if (u->beta == 0.0f) c[i] = u->alpha * t[i] + u->bias;
        else c[i] = u->alpha * t[i] + u->bias + u->beta * c[i];
    }
}

/* ---- micro-kernels: C[MR][NR] = blend(panel[MR][kc] x sliver[kc][NR]) --------------------- */
/* Panel element (r, k) is a[r * rs + k * ks]: rows of kc (rs kc, ks 1) or columns of MR
   (rs 1, ks MR), whichever its operand packs without transposing. */
/* C has row stride ldc; bias holds MR per-row values or is NULL. Writing to a tile buffer is
   the same call with ldc NR and the plain blend (alpha 1, first, beta 0). Hot loops, written
   out per instruction set; the tile stays in registers until the blend, which uses the same
   arithmetic as dtnh__blend_run, so a tile gives the same bits whichever way it is stored. */

static const dtnh__blend dtnh__plain_blend = {1.0f, 0.0f, 0.0f, 1};

#if defined(DTNH__AVX512)
static void dtnh__out512(float *c, __m512 v0, __m512 v1, const dtnh__blend *u, float bias) {
    __m512 va = _mm512_set1_ps(u->alpha);
    if (!u->first) {
        v0 = _mm512_fmadd_ps(va, v0, _mm512_loadu_ps(c));
        v1 = _mm512_fmadd_ps(va, v1, _mm512_loadu_ps(c + 16));
    } else {
        __m512 vbias = _mm512_set1_ps(bias);
        v0 = _mm512_fmadd_ps(va, v0, vbias);
        v1 = _mm512_fmadd_ps(va, v1, vbias);
        if (u->beta != 0.0f) {
            __m512 vb = _mm512_set1_ps(u->beta);
            v0 = _mm512_fmadd_ps(vb, _mm512_loadu_ps(c), v0);
            v1 = _mm512_fmadd_ps(vb, _mm512_loadu_ps(c + 16), v1);
        }
    }
    _mm512_storeu_ps(c, v0);
    _mm512_storeu_ps(c + 16, v1);
}
/* 8 x 32: sixteen zmm accumulators, two vectors of B and one broadcast of A per row. */
#define DTNH__ROW512(r)                                          \
    do {                                                         \
        __m512 a_ = _mm512_set1_ps(a##r[ak]);                     \
        c##r##0 = _mm512_fmadd_ps(a_, b0, c##r##0);              \
        c##r##1 = _mm512_fmadd_ps(a_, b1, c##r##1);              \
    } while (0)
/* The eight rows of A are eight streams the hardware prefetcher loses track of: fetch each
   row 64 floats ahead, one row per step. */
#define DTNH__PREFETCH_A _mm_prefetch((const char *)(a + (k & 7) * rs + ak + 64 * ks), _MM_HINT_T0)
#define DTNH__OUT(r) dtnh__out512(c + (size_t)(r) * ldc, c##r##0, c##r##1, u, bias ? bias[r] : 0.0f)
/* A tile's C: read by the blend, so fetched while the loop runs; or only written, but after a
   loop too short (K = 27: the stem) to hide fetching its lines for the stores, so asked for,
   for writing, now (measured: 0.79-0.96x OpenBLAS -> 1.00-1.08x on 64 x 49152 x 27; no gain at
   K = 64 or, asked for at every K, at 256). */
static void dtnh__prefetch_c512(const float *c, size_t ldc, const dtnh__blend *u, int kc) {
    int r;
    if (!u->first || u->beta != 0.0f) {
        for (r = 0; r < 8; r++) {
            _mm_prefetch((const char *)(c + (size_t)r * ldc), _MM_HINT_T0);
            _mm_prefetch((const char *)(c + (size_t)r * ldc + 31), _MM_HINT_T0);
        }
    } else if (kc <= 32) {
        for (r = 0; r < 8; r++) {
            DTNH__PREFETCH_W(c + (size_t)r * ldc);
            DTNH__PREFETCH_W(c + (size_t)r * ldc + 31);
        }
    }
}
static void dtnh__kernel(int kc, const float *DTNH__RESTRICT a, int rs, int ks, const float *DTNH__RESTRICT b,
                         float *DTNH__RESTRICT c, size_t ldc, const dtnh__blend *u,
                         const float *bias) {
    const float *a0 = a, *a1 = a + rs, *a2 = a + 2 * rs, *a3 = a + 3 * rs;
    const float *a4 = a + 4 * rs, *a5 = a + 5 * rs, *a6 = a + 6 * rs, *a7 = a + 7 * rs;
    __m512 c00 = _mm512_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m512 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    __m512 c60 = c00, c61 = c00, c70 = c00, c71 = c00;
    int k, ak;
    dtnh__prefetch_c512(c, ldc, u, kc);
    for (k = 0, ak = 0; k < kc; k++, ak += ks, b += 32) {
        __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
        DTNH__PREFETCH_A;
        DTNH__ROW512(0); DTNH__ROW512(1); DTNH__ROW512(2); DTNH__ROW512(3);
        DTNH__ROW512(4); DTNH__ROW512(5); DTNH__ROW512(6); DTNH__ROW512(7);
    }
    DTNH__OUT(0); DTNH__OUT(1); DTNH__OUT(2); DTNH__OUT(3);
    DTNH__OUT(4); DTNH__OUT(5); DTNH__OUT(6); DTNH__OUT(7);
}
/* The same for a panel packed by columns (element (r, k) at k*8 + r: a transposed A, the
   backward-data products): one pointer with the rows at fixed offsets, one forward stream,
   fewer registers and no index arithmetic per step (through the kernel above such panels ran
   6-9% slower). Fetching the panel 128 floats ahead every other step (past its end only a
   hint, never a load) measured 1-2% faster than leaving it to the prefetchers. Packing a plain
   A this way too (8 x 8 transposes) gained 0-3% on plain products but lost 5-20% on
   convolutions' forward passes, so rows stay rows. */
#define DTNH__ROWK(r)                                            \
    do {                                                         \
        __m512 a_ = _mm512_set1_ps(a[r]);                         \
        c##r##0 = _mm512_fmadd_ps(a_, b0, c##r##0);              \
        c##r##1 = _mm512_fmadd_ps(a_, b1, c##r##1);              \
    } while (0)
#define DTNH__KMAJOR_KERNEL 1
static void dtnh__kernel_kmajor(int kc, const float *DTNH__RESTRICT a, const float *DTNH__RESTRICT b,
                                float *DTNH__RESTRICT c, size_t ldc, const dtnh__blend *u,
                                const float *bias) {
    __m512 c00 = _mm512_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m512 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    __m512 c60 = c00, c61 = c00, c70 = c00, c71 = c00;
    int k;
    dtnh__prefetch_c512(c, ldc, u, kc);
    for (k = 0; k < kc; k++, a += 8, b += 32) {
        __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
        if (k & 1) _mm_prefetch((const char *)(a + 128), _MM_HINT_T0);
        DTNH__ROWK(0); DTNH__ROWK(1); DTNH__ROWK(2); DTNH__ROWK(3);
        DTNH__ROWK(4); DTNH__ROWK(5); DTNH__ROWK(6); DTNH__ROWK(7);
    }
    DTNH__OUT(0); DTNH__OUT(1); DTNH__OUT(2); DTNH__OUT(3);
    DTNH__OUT(4); DTNH__OUT(5); DTNH__OUT(6); DTNH__OUT(7);
}
#undef DTNH__ROWK
/* 8 x 16 for the last sliver when at most 16 of its columns are real: half the work. */
#define DTNH__ROW512H(r) c##r##0 = _mm512_fmadd_ps(_mm512_set1_ps(a##r[ak]), b0, c##r##0)
#define DTNH__OUTH(r) _mm512_store_ps(tile + (r) * DTNH__NR, c##r##0)
#define DTNH__HALF_KERNEL 1
static void dtnh__kernel_half(int kc, const float *DTNH__RESTRICT a, int rs, int ks, const float *DTNH__RESTRICT b,
                              float *DTNH__RESTRICT tile) {
    const float *a0 = a, *a1 = a + rs, *a2 = a + 2 * rs, *a3 = a + 3 * rs;
    const float *a4 = a + 4 * rs, *a5 = a + 5 * rs, *a6 = a + 6 * rs, *a7 = a + 7 * rs;
    __m512 c00 = _mm512_setzero_ps(), c10 = c00, c20 = c00, c30 = c00;
    __m512 c40 = c00, c50 = c00, c60 = c00, c70 = c00;
    int k, ak;
    for (k = 0, ak = 0; k < kc; k++, ak += ks, b += 32) {
        __m512 b0 = _mm512_load_ps(b);
        DTNH__PREFETCH_A;
        DTNH__ROW512H(0); DTNH__ROW512H(1); DTNH__ROW512H(2); DTNH__ROW512H(3);
        DTNH__ROW512H(4); DTNH__ROW512H(5); DTNH__ROW512H(6); DTNH__ROW512H(7);
    }
    DTNH__OUTH(0); DTNH__OUTH(1); DTNH__OUTH(2); DTNH__OUTH(3);
    DTNH__OUTH(4); DTNH__OUTH(5); DTNH__OUTH(6); DTNH__OUTH(7);
}
#if defined(__FMA__)
/* 8 x 8 (ymm) for a last sliver with at most 8 real columns. */
#define DTNH__ROW256Q(r) c##r = _mm256_fmadd_ps(_mm256_broadcast_ss(a##r + ak), b0, c##r)
#define DTNH__QUARTER_KERNEL 1
static void dtnh__kernel_quarter(int kc, const float *DTNH__RESTRICT a, int rs, int ks,
                                 const float *DTNH__RESTRICT b, float *DTNH__RESTRICT tile) {
    const float *a0 = a, *a1 = a + rs, *a2 = a + 2 * rs, *a3 = a + 3 * rs;
    const float *a4 = a + 4 * rs, *a5 = a + 5 * rs, *a6 = a + 6 * rs, *a7 = a + 7 * rs;
    __m256 c0 = _mm256_setzero_ps(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0;
    int k, ak;
    for (k = 0, ak = 0; k < kc; k++, ak += ks, b += 32) {
        __m256 b0 = _mm256_load_ps(b);
        DTNH__PREFETCH_A;
        DTNH__ROW256Q(0); DTNH__ROW256Q(1); DTNH__ROW256Q(2); DTNH__ROW256Q(3);
        DTNH__ROW256Q(4); DTNH__ROW256Q(5); DTNH__ROW256Q(6); DTNH__ROW256Q(7);
    }
    _mm256_store_ps(tile, c0);
    _mm256_store_ps(tile + DTNH__NR, c1);
    _mm256_store_ps(tile + 2 * DTNH__NR, c2);
    _mm256_store_ps(tile + 3 * DTNH__NR, c3);
    _mm256_store_ps(tile + 4 * DTNH__NR, c4);
    _mm256_store_ps(tile + 5 * DTNH__NR, c5);
    _mm256_store_ps(tile + 6 * DTNH__NR, c6);
    _mm256_store_ps(tile + 7 * DTNH__NR, c7);
}
#undef DTNH__ROW256Q
#endif
#undef DTNH__ROW512H
#undef DTNH__OUTH
#undef DTNH__OUT
#elif defined(DTNH__AVX2)
static void dtnh__out256(float *c, __m256 v0, __m256 v1, const dtnh__blend *u, float bias) {
    __m256 va = _mm256_set1_ps(u->alpha);
    if (!u->first) {
        v0 = _mm256_fmadd_ps(va, v0, _mm256_loadu_ps(c));
        v1 = _mm256_fmadd_ps(va, v1, _mm256_loadu_ps(c + 8));
    } else {
        __m256 vbias = _mm256_set1_ps(bias);
        v0 = _mm256_fmadd_ps(va, v0, vbias);
        v1 = _mm256_fmadd_ps(va, v1, vbias);
        if (u->beta != 0.0f) {
            __m256 vb = _mm256_set1_ps(u->beta);
            v0 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(c), v0);
            v1 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(c + 8), v1);
        }
    }
    _mm256_storeu_ps(c, v0);
    _mm256_storeu_ps(c + 8, v1);
}
/* 6 x 16: twelve ymm accumulators, two vectors of B, one broadcast of A. */
#define DTNH__ROW256(r)                                          \
    do {                                                         \
        __m256 a_ = _mm256_broadcast_ss(a##r + ak);               \
        c##r##0 = _mm256_fmadd_ps(a_, b0, c##r##0);              \
        c##r##1 = _mm256_fmadd_ps(a_, b1, c##r##1);              \
    } while (0)
#define DTNH__OUT(r) dtnh__out256(c + (size_t)(r) * ldc, c##r##0, c##r##1, u, bias ? bias[r] : 0.0f)
static void dtnh__kernel(int kc, const float *DTNH__RESTRICT a, int rs, int ks, const float *DTNH__RESTRICT b,
                         float *DTNH__RESTRICT c, size_t ldc, const dtnh__blend *u,
                         const float *bias) {
    const float *a0 = a, *a1 = a + rs, *a2 = a + 2 * rs, *a3 = a + 3 * rs, *a4 = a + 4 * rs;
    const float *a5 = a + 5 * rs;
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    int k, ak;
    for (k = 0, ak = 0; k < kc; k++, ak += ks, b += 16) {
        __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
        /* six A streams: prefetch ahead as in the AVX-512 kernel */
        _mm_prefetch((const char *)(a + (k & 3) * rs + ak + 64 * ks), _MM_HINT_T0);
        _mm_prefetch((const char *)(a + (4 + (k & 1)) * rs + ak + 64 * ks), _MM_HINT_T0);
        DTNH__ROW256(0); DTNH__ROW256(1); DTNH__ROW256(2);
        DTNH__ROW256(3); DTNH__ROW256(4); DTNH__ROW256(5);
    }
    DTNH__OUT(0); DTNH__OUT(1); DTNH__OUT(2); DTNH__OUT(3); DTNH__OUT(4); DTNH__OUT(5);
}
#undef DTNH__ROW256
#undef DTNH__OUT
#else
/* NEON and portable C: the tile is stored to a local array and blended row by row. */
static void dtnh__blend_tile(float *c, size_t ldc, const float *tile, const dtnh__blend *u,
                             const float *bias) {
    dtnh__blend row = *u;
    int r;
    for (r = 0; r < DTNH__MR; r++) {
        row.bias = bias ? bias[r] : 0.0f;
        dtnh__blend_run(c + (size_t)r * ldc, tile + r * DTNH__NR, DTNH__NR, &row);
    }
}
#if defined(DTNH__NEON)
/* 8 x 12: twenty-four q accumulators, three vectors of B, A by scalar-times-vector FMA. */
#define DTNH__ROWNEON(r)                                         \
    do {                                                         \
        float a_ = a##r[ak];                                      \
        c##r##0 = vfmaq_n_f32(c##r##0, b0, a_);                  \
        c##r##1 = vfmaq_n_f32(c##r##1, b1, a_);                  \
        c##r##2 = vfmaq_n_f32(c##r##2, b2, a_);                  \
    } while (0)
#define DTNH__STNEON(r)                                          \
    do {                                                         \
        vst1q_f32(tile + r * 12, c##r##0);                       \
        vst1q_f32(tile + r * 12 + 4, c##r##1);                   \
        vst1q_f32(tile + r * 12 + 8, c##r##2);                   \
    } while (0)
static void dtnh__kernel(int kc, const float *DTNH__RESTRICT a, int rs, int ks, const float *DTNH__RESTRICT b,
                         float *DTNH__RESTRICT c, size_t ldc, const dtnh__blend *u,
                         const float *bias) {
    const float *a0 = a, *a1 = a + rs, *a2 = a + 2 * rs, *a3 = a + 3 * rs;
    const float *a4 = a + 4 * rs, *a5 = a + 5 * rs, *a6 = a + 6 * rs, *a7 = a + 7 * rs;
    float32x4_t c00 = vdupq_n_f32(0.0f), c01 = c00, c02 = c00, c10 = c00, c11 = c00, c12 = c00;
    float32x4_t c20 = c00, c21 = c00, c22 = c00, c30 = c00, c31 = c00, c32 = c00;
    float32x4_t c40 = c00, c41 = c00, c42 = c00, c50 = c00, c51 = c00, c52 = c00;
    float32x4_t c60 = c00, c61 = c00, c62 = c00, c70 = c00, c71 = c00, c72 = c00;
    float tile[DTNH__MR * DTNH__NR];
    int k, ak;
    for (k = 0, ak = 0; k < kc; k++, ak += ks, b += 12) {
        float32x4_t b0 = vld1q_f32(b), b1 = vld1q_f32(b + 4), b2 = vld1q_f32(b + 8);
#if defined(__GNUC__)
        __builtin_prefetch(a + (k & 7) * rs + ak + 64 * ks); /* eight A streams, as on x86 */
#endif
        DTNH__ROWNEON(0); DTNH__ROWNEON(1); DTNH__ROWNEON(2); DTNH__ROWNEON(3);
        DTNH__ROWNEON(4); DTNH__ROWNEON(5); DTNH__ROWNEON(6); DTNH__ROWNEON(7);
    }
    DTNH__STNEON(0); DTNH__STNEON(1); DTNH__STNEON(2); DTNH__STNEON(3);
    DTNH__STNEON(4); DTNH__STNEON(5); DTNH__STNEON(6); DTNH__STNEON(7);
    dtnh__blend_tile(c, ldc, tile, u, bias);
}
#undef DTNH__ROWNEON
#undef DTNH__STNEON
#else
/* Portable C: a 4 x 16 tile in a local array the compiler can keep in registers. */
static void dtnh__kernel(int kc, const float *DTNH__RESTRICT a, int rs, int ks, const float *DTNH__RESTRICT b,
                         float *DTNH__RESTRICT c, size_t ldc, const dtnh__blend *u,
                         const float *bias) {
    float acc[DTNH__MR * DTNH__NR];
    int k, r, q;
    for (q = 0; q < DTNH__MR * DTNH__NR; q++) acc[q] = 0.0f;
    for (k = 0; k < kc; k++, b += DTNH__NR)
        for (r = 0; r < DTNH__MR; r++) {
            float av = a[r * rs + k * ks];
            for (q = 0; q < DTNH__NR; q++) acc[r * DTNH__NR + q] += av * b[q];
        }
    dtnh__blend_tile(c, ldc, acc, u, bias);
}
#endif
#endif

/* ---- operand views ------------------------------------------------------------------------- */

/* How a packing routine finds element (row, col) of an operand, or where the write-back puts
   element (row, col) of C. `g` describes the convolution for the conv views; a folded matrix
   has one row per channel and its columns run over (image, pixel) of an NCHW tensor. */
enum {
    DTNH__ROWS,     /* p[row * ld + col] */
    DTNH__COLS,     /* p[col * ld + row] */
    DTNH__IM2COL,   /* rows (c, i, j), columns (image, oy, ox): the unfolded input, implicitly */
    DTNH__FLIPPED,  /* A only: rows c_in, columns (c_out, i, j): w[c_out][c_in][kh-1-i][kw-1-j] */
    DTNH__FOLDED,   /* C only: rows channels, columns (image, pixel) of p[image][ch][pixel] */
    DTNH__FOLDED_T, /* B only: rows (image, pixel), columns channels, of p[image][ch][pixel] */
    DTNH__SCATTER   /* C only: rows (c, i, j), columns (image, oy, ox) onto the input pixel they
                       read; no two land on one pixel (kernel <= stride) */
};

typedef struct dtnh__view {
    int kind;
    float *p;
    size_t ld;        /* ROWS, COLS */
    int ch, plane;    /* FOLDED, FOLDED_T: channels and pixels per image */
    int row0, col0;   /* ROWS: C's element (row0, col0) sits at p[0] */
    dtnh_conv_geom g; /* IM2COL, FLIPPED, SCATTER */
} dtnh__view;

typedef struct dtnh__gemm {
    int M, N, K;
    float alpha, beta;
    const float *bias; /* per row of C, added by the first K slice (beta is 0 then) */
    dtnh__view a, b, c;
} dtnh__gemm;

static dtnh__view dtnh__view_plain(int kind, const float *p, size_t ld) {
    dtnh__view v;
    memset(&v, 0, sizeof v);
    v.kind = kind;
    v.p = (float *)p; /* views are read-only except C's */
    v.ld = ld;
    return v;
}

static dtnh__view dtnh__view_conv(int kind, const float *p, const dtnh_conv_geom *g) {
    dtnh__view v = dtnh__view_plain(kind, p, 0);
    v.g = *g;
    return v;
}

static dtnh__view dtnh__view_folded(int kind, const float *p, int ch, int plane) {
    dtnh__view v = dtnh__view_plain(kind, p, 0);
    v.ch = ch;
    v.plane = plane;
    return v;
}

/* Walks columns [col, end) of a conv matrix in runs that stay inside one output row and, when
   split is not 0, inside one split-wide group (a B sliver). */
typedef struct dtnh__runs {
    int col, end, split, img, oy, ox, len;
    int ow, ohw;
} dtnh__runs;

static void dtnh__runs_start(dtnh__runs *w, int ow, int ohw, int col, int end, int split) {
    w->ow = ow;
    w->ohw = ohw;
    w->col = col;
    w->end = end;
    w->split = split;
    w->img = col / ohw;
    w->oy = col % ohw / ow;
    w->ox = col % ohw % ow;
}

/* The next run from column base: returns 0 when done, else fills len. */
static int dtnh__runs_next(dtnh__runs *w, int base) {
    int len;
    if (w->col >= w->end) return 0;
    len = dtnh__kmin(w->ow - w->ox, w->end - w->col);
    if (w->split) len = dtnh__kmin(len, w->split - (w->col - base) % w->split);
    w->len = len;
    return 1;
}

static void dtnh__runs_advance(dtnh__runs *w) {
    w->col += w->len;
    w->ox += w->len;
    if (w->ox == w->ow) {
        w->ox = 0;
        if (++w->oy * w->ow == w->ohw) w->oy = 0, w->img++;
    }
}

/* ---- im2col runs ------------------------------------------------------------------------ */

/* Writes rows [row0, row0 + nrows) of the im2col matrix of image img, for the output pixels
   (oy, ox0 .. ox0 + len - 1), to dst + r * dst_stride. Rows are (c, i, j) in order. */
#if defined(DTNH__AVX512)
/* Stride 1, at most 32 outputs: the load masks of each kernel column j are fixed for the run,
   so a row is one or two masked loads and stores. The hot path of conv packing. */
static void dtnh__im2col_run32(const dtnh_conv_geom *g, const float *ximg, int oy, int ox0,
                               int len, int row0, int nrows, float *dst, size_t dst_stride,
                               int room) {
    __mmask16 lo_mask[16], hi_mask[16];
    __mmask16 store_lo = (__mmask16)(len >= 16 ? 0xFFFFu : (1u << len) - 1u);
    __mmask16 store_hi = (__mmask16)(len > 16 ? (1u << (len - 16)) - 1u : 0u);
    int kk = g->kh * g->kw, c = row0 / kk, i = row0 % kk / g->kw, j = row0 % g->kw, r, q;
    int iy0 = oy - g->pad, ix00 = ox0 - g->pad, wide = len > 16;
    size_t plane = (size_t)g->h * (size_t)g->w;
    for (q = 0; q < g->kw; q++) { /* output t reads ix00 + q + t: valid for lo <= t < hi */
        int ix0 = ix00 + q, lo = ix0 < 0 ? -ix0 : 0, hi = dtnh__kmin(len, g->w - ix0);
        uint32_t m = hi > lo ? (uint32_t)((((uint64_t)1 << (hi - lo)) - 1u) << lo) : 0u;
        lo_mask[q] = (__mmask16)(m & 0xFFFFu);
        hi_mask[q] = (__mmask16)(m >> 16);
    }
    for (r = 0; r < nrows; r++, dst += dst_stride) {
        int iy = iy0 + i;
        __m512 v0 = _mm512_setzero_ps(), v1 = _mm512_setzero_ps();
        if (iy >= 0 && iy < g->h) {
            const float *row = ximg + (size_t)c * plane + (size_t)iy * g->w;
            const float *src = dtnh__floats_before(row, -(ix00 + j));
            if (j == 0) /* two rows down: what the next slivers read (too many streams for the
                           prefetchers); an integer sum, as the row may be the tensor's last */
                DTNH__PREFETCH((const void *)((uintptr_t)row + 2 * (uintptr_t)g->w * sizeof(float)));
            if (lo_mask[j]) v0 = _mm512_maskz_loadu_ps(lo_mask[j], src);
            if (hi_mask[j]) v1 = _mm512_maskz_loadu_ps(hi_mask[j], dtnh__floats_before(src, -16));
        }
        /* full stores where the spill is rewritten by later runs (masked stores are slow) */
        if (room >= 16) _mm512_storeu_ps(dst, v0);
        else _mm512_mask_storeu_ps(dst, store_lo, v0);
        if (wide) {
            if (room >= 32) _mm512_storeu_ps(dst + 16, v1);
            else _mm512_mask_storeu_ps(dst + 16, store_hi, v1);
        }
        if (++j == g->kw) {
            j = 0;
            if (++i == g->kh) i = 0, c++;
        }
    }
}
#endif

#if defined(DTNH__AVX512)
/* Stride 2: output t reads input ix0 + 2t, so 16 outputs come from 32 consecutive inputs: two
   masked loads (the padding masked to zero) and one permute that keeps the even lanes. */
static void dtnh__im2col_run_s2(const dtnh_conv_geom *g, const float *ximg, int oy, int ox0,
                                int len, int row0, int nrows, float *dst, size_t dst_stride,
                                int room) {
    const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    int kk = g->kh * g->kw, c = row0 / kk, i = row0 % kk / g->kw, j = row0 % g->kw, r, t0;
    int iy0 = oy * 2 - g->pad, ix00 = ox0 * 2 - g->pad;
    size_t plane = (size_t)g->h * (size_t)g->w;
    for (r = 0; r < nrows; r++, dst += dst_stride) {
        int iy = iy0 + i;
        if (iy < 0 || iy >= g->h) {
            dtnh__vzero(dst, len);
        } else {
            const float *row = ximg + (size_t)c * plane + (size_t)iy * g->w;
            for (t0 = 0; t0 < len; t0 += 16) {
                int n = dtnh__kmin(16, len - t0), first = ix00 + j + 2 * t0;
                int lo = first < 0 ? -first : 0, hi = dtnh__kmin(2 * n - 1, g->w - first);
                uint32_t m = hi > lo ? (uint32_t)((((uint64_t)1 << (hi - lo)) - 1u) << lo) : 0u;
                __m512 a = _mm512_setzero_ps(), b = _mm512_setzero_ps(), v;
                if (m & 0xFFFFu) a = _mm512_maskz_loadu_ps((__mmask16)(m & 0xFFFFu), dtnh__floats_before(row, -first));
                if (m >> 16) b = _mm512_maskz_loadu_ps((__mmask16)(m >> 16), dtnh__floats_before(row, -(first + 16)));
                v = _mm512_permutex2var_ps(a, even, b);
                if (room - t0 >= 16) _mm512_storeu_ps(dst + t0, v);
                else _mm512_mask_storeu_ps(dst + t0, (__mmask16)((1u << n) - 1u), v);
            }
        }
        if (++j == g->kw) {
            j = 0;
            if (++i == g->kh) i = 0, c++;
        }
    }
}
#endif

/* Rows [row0, row0 + nrows) of the im2col matrix for the output pixels of run w, to dst + r *
   dst_stride. Each row of dst has room floats from dst on that runs to its right will fill
   later (masked stores are slow; a full vector store is fine where the spill is rewritten). */
static void dtnh__im2col_run(const dtnh_conv_geom *g, const float *x, const dtnh__runs *w,
                             int row0, int nrows, float *dst, size_t dst_stride, int room) {
    int img = w->img, oy = w->oy, ox0 = w->ox, len = w->len;
    int kk = g->kh * g->kw, s = g->stride;
    int c = row0 / kk, i = row0 % kk / g->kw, j = row0 % g->kw, r;
    int iy0 = oy * s - g->pad, ix00 = ox0 * s - g->pad;
    const float *ximg = x + (size_t)img * (size_t)g->c_in * (size_t)g->h * (size_t)g->w;
#if defined(DTNH__AVX512)
    if (s == 1 && len <= 32 && g->kw <= 16) {
        dtnh__im2col_run32(g, ximg, oy, ox0, len, row0, nrows, dst, dst_stride, room);
        return;
    }
    if (s == 2) {
        dtnh__im2col_run_s2(g, ximg, oy, ox0, len, row0, nrows, dst, dst_stride, room);
        return;
    }
#endif
    (void)room;
    for (r = 0; r < nrows; r++, dst += dst_stride) {
        int iy = iy0 + i, ix0 = ix00 + j, lo, hi, t;
        if (iy < 0 || iy >= g->h) {
            dtnh__vzero(dst, len);
        } else {
            const float *src = ximg + ((size_t)c * (size_t)g->h + (size_t)iy) * (size_t)g->w;
            /* output t reads ix0 + t*s: valid for lo <= t < hi (no division for strides 1, 2) */
            if (s == 1) {
                lo = ix0 < 0 ? -ix0 : 0;
                hi = g->w - ix0;
            } else if (s == 2) {
                lo = ix0 < 0 ? (1 - ix0) >> 1 : 0;
                hi = g->w - ix0 > 0 ? (g->w - ix0 + 1) >> 1 : 0;
            } else {
                lo = ix0 < 0 ? (-ix0 + s - 1) / s : 0;
                hi = g->w - ix0 > 0 ? (g->w - ix0 + s - 1) / s : 0;
            }
            if (lo > len) lo = len;
            if (hi > len) hi = len;
            if (hi < lo) hi = lo;
            if (s == 1) {
                dtnh__copy_padded(dst, len, lo, hi, src + ix0 + lo);
            } else { /* (an AVX-512 gather of even lanes measured slower than this loop) */
                dtnh__vzero(dst, lo);
                for (t = lo; t < hi; t++) dst[t] = src[ix0 + t * s];
                dtnh__vzero(dst + hi, len - hi);
            }
        }
        if (++j == g->kw) {
            j = 0;
            if (++i == g->kh) i = 0, c++;
        }
    }
}

/* ---- packing ------------------------------------------------------------------------------- */

/* Packed panels and slivers sit 16 floats (one cache line) further apart than their size:
   with kc a multiple of 64 their starts would otherwise share L1 sets, and packing, which
   writes to all of them in turn, would evict itself. */
static size_t dtnh__panel_stride(int kc) { return (size_t)DTNH__MR * (size_t)kc + 16; }
static size_t dtnh__sliver_stride(int kc) { return (size_t)kc * DTNH__NR + 16; }

/* A transposed A packs by columns (element (r, k) at k*MR + r), a copy: eight stored rows at
   a time across all panels, so the source is read as eight forward streams. */
static void dtnh__pack_a_cols(const dtnh__view *v, int m0, int mc, int k0, int kc, float *dst) {
    int k8, p, i, r;
    for (k8 = 0; k8 < kc; k8 += 8) {
        int rows = dtnh__kmin(8, kc - k8);
        const float *src = v->p + (size_t)(k0 + k8) * v->ld + m0;
        for (p = 0; p < mc; p += DTNH__MR) {
            int mr = dtnh__kmin(DTNH__MR, mc - p);
            float *d = dst + (size_t)(p / DTNH__MR) * dtnh__panel_stride(kc) + (size_t)k8 * DTNH__MR;
            for (i = 0; i < rows; i++, d += DTNH__MR) {
                const float *s = src + (size_t)i * v->ld + p;
                if (p % 16 == 0) DTNH__PREFETCH(s + 8 * v->ld); /* the next eight rows */
                for (r = 0; r < mr; r++) d[r] = s[r];
                for (; r < DTNH__MR; r++) d[r] = 0.0f;
            }
        }
    }
}

#if defined(DTNH__AVX512)
/* The lanes of pixels q .. q+len-1 (one image) whose tap t reads inside the image, for every t
   (kh, kw <= 16). */
static void dtnh__tap_masks(const dtnh_conv_geom *g, int q, int len, __mmask16 *mask) {
    uint32_t rows[16] = {0}, cols[16] = {0};
    int oy = q / g->w, ox = q % g->w, lane, i, j;
    for (lane = 0; lane < len; lane++) {
        for (i = 0; i < g->kh; i++) rows[i] |= (uint32_t)(oy + i - g->pad >= 0 && oy + i - g->pad < g->h) << lane;
        for (j = 0; j < g->kw; j++) cols[j] |= (uint32_t)(ox + j - g->pad >= 0 && ox + j - g->pad < g->w) << lane;
        if (++ox == g->w) ox = 0, oy++;
    }
    for (i = 0; i < g->kh; i++)
        for (j = 0; j < g->kw; j++) mask[i * g->kw + j] = (__mmask16)(rows[i] & cols[j]);
}

/* A panels of a same-size stride-1 convolution's unfolded input (backward-weights' A): as in
   the direct convolution, 16 pixels of one image are one masked load per row, where the runs
   of the general path stop at every output row (4 pixels at 4x4, 7 at 7x7). Same values. */
static int dtnh__pack_a_same_size(const dtnh__view *v, int m0, int mc, int k0, int kc, float *dst) {
    const dtnh_conv_geom *g = &v->g;
    int plane = g->h * g->w, kk = g->kh * g->kw, col, p, r;
    __mmask16 mask[16 * 16];
    if (g->stride != 1 || g->oh != g->h || g->ow != g->w || g->kh > 16 || g->kw > 16) return 0;
    if (g->ow >= 16) return 0; /* rows of 16 or more: the general runs are as long, and cheaper */
    for (col = k0; col < k0 + kc;) {
        int img = col / plane, q = col % plane, at = col - k0;
        int len = dtnh__kmin(dtnh__kmin(16, plane - q), k0 + kc - col);
        int whole = at + 16 <= kc; /* a full store spills only onto columns packed later */
        uintptr_t base = (uintptr_t)v->p +
                         (uintptr_t)((ptrdiff_t)img * g->c_in * plane + q - (ptrdiff_t)g->pad * (g->w + 1)) * sizeof(float);
        dtnh__tap_masks(g, q, len, mask);
        for (p = 0; p < mc; p += DTNH__MR) {
            float *panel = dst + (size_t)(p / DTNH__MR) * dtnh__panel_stride(kc) + at;
            int mr = dtnh__kmin(DTNH__MR, mc - p);
            for (r = 0; r < mr; r++) {
                int m = m0 + p + r, c = m / kk, t = m % kk;
                uintptr_t src = base + (uintptr_t)((size_t)c * plane + (size_t)(t / g->kw * g->w + t % g->kw)) * sizeof(float);
                __m512 x = _mm512_maskz_loadu_ps(mask[t], (const void *)src);
                if (whole) _mm512_storeu_ps(panel + (size_t)r * kc, x);
                else _mm512_mask_storeu_ps(panel + (size_t)r * kc, (__mmask16)((1u << len) - 1u), x);
            }
        }
        col += len;
    }
    for (p = 0; p < mc; p += DTNH__MR)
        for (r = dtnh__kmin(DTNH__MR, mc - p); r < DTNH__MR; r++)
            dtnh__vzero(dst + (size_t)(p / DTNH__MR) * dtnh__panel_stride(kc) + (size_t)r * kc, kc);
    return 1;
}
#endif

/* A block rows [m0, m0+mc) x columns [k0, k0+kc) into MR-row panels, each row kc long. */
static void dtnh__pack_a(const dtnh__gemm *G, int m0, int mc, int k0, int kc, float *dst) {
    const dtnh__view *v = &G->a;
    int p, r, k;
    if (v->kind == DTNH__COLS) {
        dtnh__pack_a_cols(v, m0, mc, k0, kc, dst);
        return;
    }
#if defined(DTNH__AVX512)
    if (v->kind == DTNH__IM2COL && dtnh__pack_a_same_size(v, m0, mc, k0, kc, dst)) return;
#endif
    for (p = 0; p < mc; p += DTNH__MR, dst += dtnh__panel_stride(kc)) {
        int mr = dtnh__kmin(DTNH__MR, mc - p), m = m0 + p;
        if (v->kind == DTNH__ROWS) {
            for (r = 0; r < mr; r++) dtnh__vcopy(dst + r * kc, v->p + (size_t)(m + r) * v->ld + k0, kc);
        } else if (v->kind == DTNH__IM2COL) {
            dtnh__runs w;
            dtnh__runs_start(&w, v->g.ow, v->g.oh * v->g.ow, k0, k0 + kc, 0);
            for (; dtnh__runs_next(&w, k0); dtnh__runs_advance(&w))
                dtnh__im2col_run(&v->g, v->p, &w, m, mr, dst + (w.col - k0), (size_t)kc, k0 + kc - w.col);
        } else { /* FLIPPED: row c_in m+r, column (co, t): flipping i and j reverses t */
            const dtnh_conv_geom *g = &v->g;
            int kk = g->kh * g->kw;
            for (r = 0; r < mr; r++) {
                float *d = dst + r * kc;
                int co = k0 / kk, t = k0 % kk;
                for (k = 0; k < kc; co++, t = 0) {
                    const float *src = v->p + ((size_t)co * g->c_in + (size_t)(m + r)) * kk + (kk - 1);
                    for (; t < kk && k < kc; t++, k++) d[k] = src[-t];
                }
            }
        }
        for (r = mr; r < DTNH__MR; r++) dtnh__vzero(dst + r * kc, kc);
    }
}

/* One sliver of B = dY^T: rows (image, pixel), columns channels n .. n+nr of dY[image][ch][pixel];
   8 x 8 transposes inside each image's run of pixels. */
static void dtnh__pack_folded_t(const dtnh__view *v, int k0, int kc, int n, int nr, float *dst) {
    int k = 0, q, i;
    while (k < kc) {
        int img = (k0 + k) / v->plane, px = (k0 + k) % v->plane;
        int run = dtnh__kmin(v->plane - px, kc - k), t;
        const float *src = v->p + ((size_t)img * v->ch + (size_t)n) * v->plane + (size_t)px;
        for (q = 0; q < nr; q += 8) {
            int w8 = dtnh__kmin(8, nr - q);
            t = 0;
#ifdef DTNH__HAVE_TRANSPOSE16
            if (q % 16 == 0 && q + 16 <= nr) { /* a 16-channel block: zmm transposes, then 8 more */
                for (; t + 16 <= run; t += 16)
                    dtnh__transpose16(src + (size_t)q * v->plane + t, (size_t)v->plane,
                                      dst + (size_t)(k + t) * DTNH__NR + q, DTNH__NR);
                for (i = 0; i < 16; i++) {
                    int u;
                    for (u = t; u < run; u++)
                        dst[(size_t)(k + u) * DTNH__NR + q + i] = src[(size_t)(q + i) * v->plane + u];
                }
                q += 8;
                continue;
            }
#endif
            if (w8 == 8)
                for (; t + 8 <= run; t += 8)
                    dtnh__transpose8(src + (size_t)q * v->plane + t, (size_t)v->plane,
                                     dst + (size_t)(k + t) * DTNH__NR + q, DTNH__NR);
            for (; t < run; t++)
                for (i = 0; i < w8; i++)
                    dst[(size_t)(k + t) * DTNH__NR + q + i] = src[(size_t)(q + i) * v->plane + t];
        }
        k += run;
    }
}

/* B block rows [k0, k0+kc) x columns [n0, n0+nc) into NR-column slivers, each kc x NR. */
static void dtnh__pack_b(const dtnh__gemm *G, int k0, int kc, int n0, int nc, float *dst) {
    const dtnh__view *v = &G->b;
    int s, q, k;
    if (v->kind == DTNH__ROWS) {
        /* Eight rows at a time across all slivers: B is read as eight forward streams the
           prefetchers follow, and each sliver gets a contiguous 8-row chunk. */
        int full = nc / DTNH__NR * DTNH__NR, k8, i;
        for (k8 = 0; k8 < kc; k8 += 8) {
            int rows = dtnh__kmin(8, kc - k8);
            const float *src = v->p + (size_t)(k0 + k8) * v->ld + n0;
            float *d = dst + (size_t)k8 * DTNH__NR;
            for (s = 0; s < full; s += DTNH__NR, d += dtnh__sliver_stride(kc))
                for (i = 0; i < rows; i++) { /* and fetch the next eight rows' piece */
                    DTNH__PREFETCH(src + (size_t)(i + 8) * v->ld + s);
                    DTNH__PREFETCH(src + (size_t)(i + 8) * v->ld + s + DTNH__NR - 1);
                    dtnh__copy_sliver_row(d + i * DTNH__NR, src + (size_t)i * v->ld + s);
                }
        }
    }
    if (v->kind == DTNH__IM2COL) {
        /* Eight rows at a time across the columns: consecutive runs read consecutive input
           rows (prefetchers follow), and each run lands in one sliver. A single sliver stays
           in L1, so it takes all its rows per run (fewer, longer calls). */
        int k8, group = nc <= DTNH__NR ? kc : 8;
        for (k8 = 0; k8 < kc; k8 += group) {
            dtnh__runs w;
            dtnh__runs_start(&w, v->g.ow, v->g.oh * v->g.ow, n0, n0 + nc, DTNH__NR);
            for (; dtnh__runs_next(&w, n0); dtnh__runs_advance(&w)) {
                int rel = w.col - n0;
                dtnh__im2col_run(&v->g, v->p, &w, k0 + k8, dtnh__kmin(group, kc - k8),
                                 dst + (size_t)(rel / DTNH__NR) * dtnh__sliver_stride(kc) + (size_t)k8 * DTNH__NR + rel % DTNH__NR,
                                 DTNH__NR, DTNH__NR - rel % DTNH__NR);
            }
        }
    }
    for (s = 0; s < nc; s += DTNH__NR, dst += dtnh__sliver_stride(kc)) {
        int nr = dtnh__kmin(DTNH__NR, nc - s), n = n0 + s;
        if (v->kind == DTNH__ROWS) {
            if (nr < DTNH__NR) /* full slivers were packed above */
                for (k = 0; k < kc; k++)
                    dtnh__vcopy(dst + k * DTNH__NR, v->p + (size_t)(k0 + k) * v->ld + n, nr);
        } else if (v->kind == DTNH__COLS) {
            q = 0;
#ifdef DTNH__HAVE_TRANSPOSE16
            for (; q + 16 <= nr && kc >= 16; q += 16) {
                const float *src = v->p + (size_t)(n + q) * v->ld + k0;
                int i;
                for (k = 0; k + 16 <= kc; k += 16) {
                    for (i = 0; i < 16; i++) DTNH__PREFETCH(src + (size_t)i * v->ld + k + 64);
                    dtnh__transpose16(src + k, v->ld, dst + k * DTNH__NR + q, DTNH__NR);
                }
                for (; k < kc; k++)
                    for (i = 0; i < 16; i++) dst[k * DTNH__NR + q + i] = src[(size_t)i * v->ld + k];
            }
#endif
            for (; q < nr; q += 8) {
                const float *src = v->p + (size_t)(n + q) * v->ld + k0;
                int w8 = dtnh__kmin(8, nr - q), i;
                k = 0;
                if (w8 == 8)
                    for (; k + 8 <= kc; k += 8) {
                        if (k % 16 == 0) /* eight short streams: fetch ahead by hand */
                            for (i = 0; i < 8; i++) DTNH__PREFETCH(src + (size_t)i * v->ld + k + 64);
                        dtnh__transpose8(src + k, v->ld, dst + k * DTNH__NR + q, DTNH__NR);
                    }
                for (; k < kc; k++)
                    for (i = 0; i < w8; i++) dst[k * DTNH__NR + q + i] = src[(size_t)i * v->ld + k];
            }
        } else if (v->kind == DTNH__FOLDED_T) {
            dtnh__pack_folded_t(v, k0, kc, n, nr, dst);
        }
        if (nr < DTNH__NR)
            for (k = 0; k < kc; k++) dtnh__vzero(dst + k * DTNH__NR + nr, DTNH__NR - nr);
    }
}

/* ---- write-back of one tile ------------------------------------------------------------- */

static void dtnh__store_tile(const dtnh__gemm *G, int m0, int mr, int n0, int nr, const float *tile,
                             int first) {
    const dtnh__view *v = &G->c;
    dtnh__blend u;
    int r, q;
    u.alpha = G->alpha;
    u.beta = G->beta;
    u.first = first;
    u.bias = 0.0f;
    if (v->kind == DTNH__COLS) {
        DTNH_ALIGNED(64) float tt[DTNH__NR * 8];
        for (q = 0; q < nr; q += 8) {
            int w8 = dtnh__kmin(8, nr - q), i;
            if (mr == 8 && w8 == 8) {
                dtnh__transpose8(tile + q, DTNH__NR, tt, 8);
            } else {
                for (i = 0; i < w8; i++)
                    for (r = 0; r < mr; r++) tt[i * 8 + r] = tile[r * DTNH__NR + q + i];
            }
            for (i = 0; i < w8; i++)
                dtnh__blend_run(v->p + (size_t)(n0 + q + i) * v->ld + m0, tt + i * 8, mr, &u);
        }
        return;
    }
    for (r = 0; r < mr; r++) {
        const float *t = tile + r * DTNH__NR;
        int m = m0 + r;
        if (G->bias) u.bias = G->bias[m];
        if (v->kind == DTNH__ROWS) {
            dtnh__blend_run(v->p + (size_t)(m - v->row0) * v->ld + (size_t)(n0 - v->col0), t, nr, &u);
        } else if (v->kind == DTNH__FOLDED) {
            int img = n0 / v->plane, px = n0 % v->plane;
            for (q = 0; q < nr;) {
                int len = dtnh__kmin(v->plane - px, nr - q);
                dtnh__blend_run(v->p + ((size_t)img * v->ch + (size_t)m) * v->plane + (size_t)px, t + q, len, &u);
                q += len;
                px = 0;
                img++;
            }
        } else { /* SCATTER: runs along ox land every stride-th pixel of an input row */
            const dtnh_conv_geom *g = &v->g;
            int kk = g->kh * g->kw, c = m / kk, i = m % kk / g->kw, j = m % g->kw, st = g->stride;
            dtnh__runs w;
            dtnh__runs_start(&w, g->ow, g->oh * g->ow, n0, n0 + nr, 0);
            for (; dtnh__runs_next(&w, n0); dtnh__runs_advance(&w)) {
                int iy = w.oy * st - g->pad + i, ix0 = w.ox * st - g->pad + j, lo, hi;
                const float *src = t + (w.col - n0);
                float *d;
                if (iy < 0 || iy >= g->h) continue;
                d = v->p + (((size_t)w.img * g->c_in + (size_t)c) * g->h + (size_t)iy) * g->w;
                lo = ix0 < 0 ? (-ix0 + st - 1) / st : 0;
                hi = g->w - ix0 > 0 ? (g->w - ix0 + st - 1) / st : 0;
                if (hi > w.len) hi = w.len;
                for (q = lo; q < hi; q++) {
                    float *e = d + ix0 + q * st;
                    if (!first) *e += u.alpha * src[q];
                    else *e = u.alpha * src[q] + (u.beta == 0.0f ? 0.0f : u.beta * *e);
                }
            }
        }
    }
}

/* ---- the blocked loops ------------------------------------------------------------------ */

/* Block sizes for one multiplication. Only kc changes the arithmetic (how K is sliced), and it
   depends on K alone; mc and nc shrink to the matrix so small products need little work. */
typedef struct dtnh__plan {
    int mc, nc, kc, slices; /* slices: of K, kc each but the last */
    size_t a_floats, b_floats, extra_floats, thread_bytes;
} dtnh__plan;

static void dtnh__plan_make(int M, int N, int K, size_t extra_floats, dtnh__plan *p) {
    int slices = (K + DTNH__KC - 1) / DTNH__KC;
    p->kc = (K + slices - 1) / slices;
    p->slices = (K + p->kc - 1) / p->kc;
    p->mc = dtnh__kmin(DTNH__MC / DTNH__MR * DTNH__MR, dtnh__kround_up(M, DTNH__MR));
    p->nc = dtnh__kmin(DTNH__NC / DTNH__NR * DTNH__NR, dtnh__kround_up(N, DTNH__NR));
    /* 16-float multiples keep every buffer 64-byte aligned */
    p->a_floats = (size_t)(p->mc / DTNH__MR) * ((dtnh__panel_stride(p->kc) + 15) / 16 * 16);
    p->b_floats = (size_t)(p->nc / DTNH__NR) * ((dtnh__sliver_stride(p->kc) + 15) / 16 * 16);
    p->extra_floats = extra_floats;
    p->thread_bytes = ((p->a_floats + p->b_floats + extra_floats) * sizeof(float) + 63) / 64 * 64;
}

/* The largest blocks: what dtnh_gemm_work_bytes gives each thread. */
static void dtnh__plan_default(dtnh__plan *p) {
    dtnh__plan_make(DTNH__MC, DTNH__NC, DTNH__KC, 0, p);
}

/* Where a full tile can be blended in place: plain rows of C, or a folded output whose tile
   stays inside one image. NULL: through a tile buffer and dtnh__store_tile. */
static float *dtnh__tile_in_place(const dtnh__gemm *G, int m0, int mr, int n0, int nr, size_t *ldc) {
    const dtnh__view *v = &G->c;
    if (mr != DTNH__MR || nr != DTNH__NR) return NULL;
    if (v->kind == DTNH__ROWS) {
        *ldc = v->ld;
        return v->p + (size_t)(m0 - v->row0) * v->ld + (size_t)(n0 - v->col0);
    }
    if (v->kind == DTNH__FOLDED && n0 % v->plane + DTNH__NR <= v->plane) {
        *ldc = (size_t)v->plane;
        return v->p + ((size_t)(n0 / v->plane) * v->ch + (size_t)m0) * v->plane + (size_t)(n0 % v->plane);
    }
    return NULL;
}

static void dtnh__tile(const dtnh__gemm *G, int kc, const float *a, const float *b, int m0, int mr,
                       int n0, int nr, int first) {
    int by_cols = G->a.kind == DTNH__COLS, rs = by_cols ? 1 : kc, ks = by_cols ? DTNH__MR : 1;
    DTNH_ALIGNED(64) float tile[DTNH__MR * DTNH__NR];
    size_t ldc = 0;
    float *c = dtnh__tile_in_place(G, m0, mr, n0, nr, &ldc);
    if (c) {
        dtnh__blend u;
        u.alpha = G->alpha;
        u.beta = G->beta;
        u.bias = 0.0f;
        u.first = first;
#ifdef DTNH__KMAJOR_KERNEL
        if (by_cols) dtnh__kernel_kmajor(kc, a, b, c, ldc, &u, G->bias && first ? G->bias + m0 : NULL);
        else
#endif
            dtnh__kernel(kc, a, rs, ks, b, c, ldc, &u, G->bias && first ? G->bias + m0 : NULL);
    } else {
#ifdef DTNH__QUARTER_KERNEL
        if (nr <= DTNH__NR / 4) dtnh__kernel_quarter(kc, a, rs, ks, b, tile);
        else
#endif
#ifdef DTNH__HALF_KERNEL
        if (nr <= DTNH__NR / 2) dtnh__kernel_half(kc, a, rs, ks, b, tile);
        else
#endif
            dtnh__kernel(kc, a, rs, ks, b, tile, DTNH__NR, &dtnh__plain_blend, NULL);
        dtnh__store_tile(G, m0, mr, n0, nr, tile, first);
    }
}

/* One A block times one B block. With AVX-512 the tiles go down C's columns: each B sliver
   (KC x NR floats, 32 KiB by default) stays in L1 while the A block's panels stream from L2
   (measured 1-4% faster than along the rows, where each A panel stayed in L1 and the 1 MiB B
   block streamed from L2 and beyond). Elsewhere they follow C: along its rows for a row-major
   C, down its columns for a transposed one (with AVX2 both orders measured the same). */
#if defined(DTNH__AVX512)
#define DTNH__TILES_DOWN_COLUMNS 1
#else
#define DTNH__TILES_DOWN_COLUMNS 0
#endif
static void dtnh__macro(const dtnh__gemm *G, int kc, const float *abuf, int ic, int mc,
                        const float *bbuf, int jc, int nc, int first) {
    int ir, jr;
    if (G->c.kind == DTNH__COLS || DTNH__TILES_DOWN_COLUMNS) {
        for (jr = 0; jr < nc; jr += DTNH__NR)
            for (ir = 0; ir < mc; ir += DTNH__MR)
                dtnh__tile(G, kc, abuf + (size_t)(ir / DTNH__MR) * dtnh__panel_stride(kc), bbuf + (size_t)(jr / DTNH__NR) * dtnh__sliver_stride(kc), ic + ir,
                           dtnh__kmin(DTNH__MR, mc - ir), jc + jr, dtnh__kmin(DTNH__NR, nc - jr), first);
    } else {
        for (ir = 0; ir < mc; ir += DTNH__MR)
            for (jr = 0; jr < nc; jr += DTNH__NR)
                dtnh__tile(G, kc, abuf + (size_t)(ir / DTNH__MR) * dtnh__panel_stride(kc), bbuf + (size_t)(jr / DTNH__NR) * dtnh__sliver_stride(kc), ic + ir,
                           dtnh__kmin(DTNH__MR, mc - ir), jc + jr, dtnh__kmin(DTNH__NR, nc - jr), first);
    }
}

/* Few rows of C: each packed B sliver serves only a few A panels, so packing a whole B block
   (1 MiB, written out to L2 and read back) costs as much as the arithmetic. Instead all of A's
   rows are packed once per K slice of each column block (whose C block stays in L2 across the
   slices) and each B sliver is packed just before its tiles use it, while it is still in L1.
   Same tiles, same K slices: the same arithmetic. */
#ifndef DTNH__FEW_ROWS
#define DTNH__FEW_ROWS 64
#endif

static void dtnh__gemm_range_few_rows(const dtnh__gemm *G, const dtnh__plan *P, int m_lo, int m_hi,
                                      int n_lo, int n_hi, int k_lo, int k_hi, float *abuf,
                                      float *bbuf) {
    int jb, jc, pc, ir, mc = m_hi - m_lo;
    for (jb = n_lo; jb < n_hi; jb += P->nc) {
        int jb_end = dtnh__kmin(jb + P->nc, n_hi);
        for (pc = k_lo; pc < k_hi; pc += P->kc) {
            int kc = dtnh__kmin(P->kc, k_hi - pc);
            dtnh__pack_a(G, m_lo, mc, pc, kc, abuf);
            for (jc = jb; jc < jb_end; jc += DTNH__NR) {
                int nr = dtnh__kmin(DTNH__NR, jb_end - jc);
                dtnh__pack_b(G, pc, kc, jc, nr, bbuf);
                for (ir = 0; ir < mc; ir += DTNH__MR)
                    dtnh__tile(G, kc, abuf + (size_t)(ir / DTNH__MR) * dtnh__panel_stride(kc), bbuf,
                               m_lo + ir, dtnh__kmin(DTNH__MR, mc - ir), jc, nr, pc == k_lo);
            }
        }
    }
}

/* The general case: B blocks of NC columns, A blocks of MC rows, K slices [k_lo, k_hi) (each
   starting at a multiple of kc; the first one blends into C with beta, the others add). */
static void dtnh__gemm_range_packed(const dtnh__gemm *G, const dtnh__plan *P, int m_lo, int m_hi,
                                    int n_lo, int n_hi, int k_lo, int k_hi, float *abuf,
                                    float *bbuf) {
    int jc, pc, ic;
    if (m_hi - m_lo <= DTNH__FEW_ROWS && m_hi - m_lo <= P->mc) {
        dtnh__gemm_range_few_rows(G, P, m_lo, m_hi, n_lo, n_hi, k_lo, k_hi, abuf, bbuf);
        return;
    }
    for (jc = n_lo; jc < n_hi; jc += P->nc) {
        int nc = dtnh__kmin(P->nc, n_hi - jc);
        for (pc = k_lo; pc < k_hi; pc += P->kc) {
            int kc = dtnh__kmin(P->kc, k_hi - pc);
            dtnh__pack_b(G, pc, kc, jc, nc, bbuf);
            for (ic = m_lo; ic < m_hi; ic += P->mc) {
                int mc = dtnh__kmin(P->mc, m_hi - ic);
                dtnh__pack_a(G, ic, mc, pc, kc, abuf);
                dtnh__macro(G, kc, abuf, ic, mc, bbuf, jc, nc, pc == k_lo);
            }
        }
    }
}

#if defined(DTNH__AVX512)
/* ---- direct same-size convolutions: B straight from the input ----------------------------- */
/* In a stride-1 convolution whose output is as large as its input (3x3 pad 1: all of
   ResNet's 3x3 stride-1 layers, forward and the flipped backward-data), tap (c, i, j) of
   output pixel q reads input element c*H*W + q + (i-pad)*W + (j-pad): linear in q. So 16
   consecutive output pixels of one image are one masked load per tap, the mask zeroing the
   lanes whose tap falls into the padding, and no B sliver is packed (with 16 to 64 output
   channels, packing cost as much as the multiply-adds). Every element of C is the same chain
   of FMAs over the same K slices as the packed path, with the same zeros in the padding, and
   is blended the same way: the same bits. */

#define DTNH__DIRECT_TAPS 64 /* largest kh*kw taken directly */

/* Whether images of `plane` output pixels fill enough of the 16-lane vectors: with few rows of
   C packing weighs more (measured: 7x7, 15 idle lanes of 64, gains with 64 channels, not 512). */
static int dtnh__direct_lanes_ok(int plane, int rows) {
    int idle = (plane + 15) / 16 * 16 - plane; /* lanes idle in an image's last vector */
    return idle * 8 <= plane || (rows <= 64 && idle * 3 <= plane);
}

static int dtnh__direct_ok(const dtnh__gemm *G) {
    const dtnh_conv_geom *g = &G->b.g;
    int kk = g->kh * g->kw, plane = g->h * g->w;
    if (G->b.kind != DTNH__IM2COL || G->c.kind != DTNH__FOLDED) return 0;
    if (g->stride != 1 || kk < 2 || kk > DTNH__DIRECT_TAPS || g->kh > 16 || g->kw > 16) return 0;
    if (g->oh != g->h || g->ow != g->w) return 0;
    if ((double)g->c_in * plane >= (double)(1 << 25)) return 0; /* offsets fit a code (below) */
    return dtnh__direct_lanes_ok(plane, G->M);
}

/* Bytes of a thread's B buffer the direct path uses: a code per k, masks per 16 pixels. */
static size_t dtnh__direct_bytes(const dtnh_conv_geom *g, int kc) {
    return (size_t)kc * sizeof(int32_t) + (size_t)((g->h * g->w + 15) / 16) * (size_t)(g->kh * g->kw) * sizeof(__mmask16);
}

/* code[k] for K slice [k0, k0+kc): the input offset of tap k (c*H*W + i*W + j) times 64, plus
   the tap index i*kw + j. */
static void dtnh__direct_codes(const dtnh_conv_geom *g, int k0, int kc, int32_t *code) {
    int kk = g->kh * g->kw, k;
    for (k = 0; k < kc; k++) {
        int c = (k0 + k) / kk, t = (k0 + k) % kk;
        code[k] = (int32_t)((c * g->h * g->w + t / g->kw * g->w + t % g->kw) * 64 + t);
    }
}

/* masks[(q / 16) * kk + t]: dtnh__tap_masks of pixels q .. q+15 (q a multiple of 16). */
static void dtnh__direct_masks(const dtnh_conv_geom *g, __mmask16 *masks) {
    int plane = g->h * g->w, q;
    for (q = 0; q < plane; q += 16)
        dtnh__tap_masks(g, q, dtnh__kmin(16, plane - q), masks + (q / 16) * g->kh * g->kw);
}

/* Up to 16 consecutive output pixels of one image, starting at column col of C. */
typedef struct dtnh__dpiece {
    uintptr_t src; /* where tap offset 0 of lane 0 reads (may lie before x: masked lanes only) */
    float *dst;    /* C's element (m_lo, col) */
    int len;
    __mmask16 mask[DTNH__DIRECT_TAPS];
} dtnh__dpiece;

/* The piece from col (ending at a multiple of 16 pixels, the image's end or end); returns the
   column after it. */
static int dtnh__direct_piece(const dtnh__gemm *G, const __mmask16 *masks, int m_lo, int col, int end,
                              dtnh__dpiece *p) {
    const dtnh_conv_geom *g = &G->b.g;
    int plane = g->h * g->w, kk = g->kh * g->kw, img = col / plane, q = col % plane, t;
    int shift = q % 16, len = dtnh__kmin(dtnh__kmin(16 - shift, plane - q), end - col);
    ptrdiff_t at = (ptrdiff_t)img * g->c_in * plane + q - (ptrdiff_t)g->pad * (g->w + 1);
    __mmask16 lanes = (__mmask16)((1u << len) - 1u);
    const __mmask16 *m = masks + (q / 16) * kk;
    p->src = (uintptr_t)G->b.p + (uintptr_t)at * sizeof(float);
    p->dst = G->c.p + ((size_t)img * G->c.ch + (size_t)m_lo) * (size_t)plane + (size_t)q;
    p->len = len;
    for (t = 0; t < kk; t++) p->mask[t] = (__mmask16)((m[t] >> shift) & lanes);
    return col + len;
}

/* An MR x 32 tile of C over pieces p0 and p1 (p1->len may be 0): the micro-kernel (its row
   macro DTNH__ROW512) with its B rows loaded from the input. */
#define DTNH__DOUT(r)                                                                          \
    do {                                                                                       \
        if ((r) < mr) {                                                                        \
            float bias_ = bias ? bias[r] : 0.0f;                                               \
            dtnh__blend16(d0 + (size_t)(r) * ldc, c##r##0, lanes0, u, bias_);                  \
            if (lanes1) dtnh__blend16(d1 + (size_t)(r) * ldc, c##r##1, lanes1, u, bias_);      \
        }                                                                                      \
    } while (0)
static void dtnh__direct_kernel(int kc, const float *DTNH__RESTRICT a, int rs, int ks,
                                const int32_t *DTNH__RESTRICT code, const dtnh__dpiece *p0,
                                const dtnh__dpiece *p1, float *d0, float *d1, int mr, size_t ldc,
                                const dtnh__blend *u, const float *bias) {
    const float *a0 = a, *a1 = a + rs, *a2 = a + 2 * rs, *a3 = a + 3 * rs;
    const float *a4 = a + 4 * rs, *a5 = a + 5 * rs, *a6 = a + 6 * rs, *a7 = a + 7 * rs;
    __m512 c00 = _mm512_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m512 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    __m512 c60 = c00, c61 = c00, c70 = c00, c71 = c00;
    __mmask16 lanes0 = (__mmask16)((1u << p0->len) - 1u), lanes1 = (__mmask16)((1u << p1->len) - 1u);
    int k, ak;
    for (k = 0, ak = 0; k < kc; k++, ak += ks) {
        int32_t cd = code[k];
        uintptr_t off = (uintptr_t)(cd >> 6) * sizeof(float);
        __m512 b0 = _mm512_maskz_loadu_ps(p0->mask[cd & 63], (const void *)(p0->src + off));
        __m512 b1 = _mm512_maskz_loadu_ps(p1->mask[cd & 63], (const void *)(p1->src + off));
        DTNH__ROW512(0); DTNH__ROW512(1); DTNH__ROW512(2); DTNH__ROW512(3);
        DTNH__ROW512(4); DTNH__ROW512(5); DTNH__ROW512(6); DTNH__ROW512(7);
    }
    DTNH__DOUT(0); DTNH__DOUT(1); DTNH__DOUT(2); DTNH__DOUT(3);
    DTNH__DOUT(4); DTNH__DOUT(5); DTNH__DOUT(6); DTNH__DOUT(7);
}
#undef DTNH__ROW512
#undef DTNH__DOUT

/* Columns [lo, hi) against the packed A block of rows [ic, ic + mc): pairs of pieces, each pair
   against every panel while its input rows sit in L1. */
static void dtnh__direct_pieces(const dtnh__gemm *G, const float *abuf, int ic, int mc, int kc, int lo,
                                int hi, const int32_t *code, const __mmask16 *masks, const dtnh__blend *u) {
    int by_cols = G->a.kind == DTNH__COLS, rs = by_cols ? 1 : kc, ks = by_cols ? DTNH__MR : 1, col, ir;
    size_t plane = (size_t)G->c.plane;
    for (col = lo; col < hi;) {
        dtnh__dpiece p0, p1;
        col = dtnh__direct_piece(G, masks, ic, col, hi, &p0);
        if (col < hi) {
            col = dtnh__direct_piece(G, masks, ic, col, hi, &p1);
        } else {
            memset(&p1, 0, sizeof p1); /* all lanes masked: reads and writes nothing */
            p1.src = p0.src;
        }
        for (ir = 0; ir < mc; ir += DTNH__MR)
            dtnh__direct_kernel(kc, abuf + (size_t)(ir / DTNH__MR) * dtnh__panel_stride(kc), rs, ks, code, &p0,
                                &p1, p0.dst + (size_t)ir * plane, p1.len ? p1.dst + (size_t)ir * plane : NULL,
                                dtnh__kmin(DTNH__MR, mc - ir), plane, u,
                                G->bias && u->first ? G->bias + ic + ir : NULL);
    }
}

static dtnh__blend dtnh__slice_blend(const dtnh__gemm *G, int pc) {
    dtnh__blend u;
    u.alpha = G->alpha;
    u.beta = G->beta;
    u.bias = 0.0f;
    u.first = pc == 0;
    return u;
}

/* The few-rows loop order with direct tiles: an A block packed once per K slice of a column
   block, then its pieces (measured faster than the packed path at every width of ResNet-18,
   16 to 512 channels). */
static void dtnh__gemm_range_direct(const dtnh__gemm *G, const dtnh__plan *P, int m_lo, int m_hi,
                                    int n_lo, int n_hi, float *abuf, float *bbuf) {
    int jb, pc, ic;
    int32_t *code = (int32_t *)(void *)bbuf;
    __mmask16 *masks = (__mmask16 *)(void *)(code + P->kc);
    dtnh__direct_masks(&G->b.g, masks);
    for (jb = n_lo; jb < n_hi; jb += P->nc) {
        int jb_end = dtnh__kmin(jb + P->nc, n_hi);
        for (pc = 0; pc < G->K; pc += P->kc) {
            int kc = dtnh__kmin(P->kc, G->K - pc);
            dtnh__blend u = dtnh__slice_blend(G, pc);
            dtnh__direct_codes(&G->b.g, pc, kc, code);
            for (ic = m_lo; ic < m_hi; ic += P->mc) {
                int mc = dtnh__kmin(P->mc, m_hi - ic);
                dtnh__pack_a(G, ic, mc, pc, kc, abuf);
                dtnh__direct_pieces(G, abuf, ic, mc, kc, jb, jb_end, code, masks, &u);
            }
        }
    }
}

/* ---- stride 2 through the input's four phases ------------------------------------------------ */
/* In a stride-2 convolution tap (c, i, j) of output (oy, ox) reads input row 2 oy - pad + i,
   which is row oy + di of row phase a, where i - pad = 2 di + a (a in {0, 1}); columns alike.
   So with an image split into its four phases X_ab[c][y][x] = x[c][2y + a][2x + b] (OH x OW
   planes, zero past the input), every tap reads a plane at a shift linear in the output pixel:
   the direct kernel applies, its code table mapping tap (c, i, j), in the packed path's order,
   to plane (a, b, c) and shift (di, dj). Same values, same K slices, same order: the same
   bits. */

/* The phase planes as a same-size geometry: 4 c_in channels, OH x OW, taps di, dj. */
static dtnh_conv_geom dtnh__phase_geom(const dtnh_conv_geom *g) {
    dtnh_conv_geom s = *g;
    int lo = -((g->pad + 1) / 2), hi = (g->kh - 1 - g->pad) / 2; /* floor((i - pad) / 2) */
    s.n = 1;
    s.c_in = 4 * g->c_in;
    s.h = s.oh = g->oh;
    s.w = s.ow = g->ow;
    s.kh = s.kw = hi - lo + 1;
    s.pad = -lo;
    s.stride = 1;
    return s;
}

static int dtnh__phases_ok(const dtnh__gemm *G) {
    const dtnh_conv_geom *g = &G->b.g;
    int plane = g->oh * g->ow;
    if (G->b.kind != DTNH__IM2COL || G->c.kind != DTNH__FOLDED || g->stride != 2) return 0;
    if (g->kh != g->kw || 2 * g->pad + 1 < g->kh) return 0; /* nothing read past the phases */
    if (g->kh > 3) return 0; /* a 7x7 stem over 3 channels measured 2% slower */
    if ((double)4 * g->c_in * plane >= (double)(1 << 25)) return 0;
    if (plane < 32) return 0; /* an image at a time: one 16-pixel piece leaves half a tile idle */
    return dtnh__direct_lanes_ok(plane, G->M);
}

/* A thread's floats: the A block, the codes of all K, the masks, one image's phases. */
static size_t dtnh__phases_floats(const dtnh__gemm *G, const dtnh__plan *P) {
    dtnh_conv_geom s = dtnh__phase_geom(&G->b.g);
    size_t plane = (size_t)s.h * (size_t)s.w, masks = (plane + 15) / 16 * (size_t)(s.kh * s.kw);
    return P->a_floats + (size_t)G->K + (masks / 2 + 32) / 16 * 16 + (size_t)s.c_in * plane;
}

/* code[k] as dtnh__direct_codes gives it, for tap k of g read in the phase geometry s. */
static void dtnh__phase_codes(const dtnh_conv_geom *g, const dtnh_conv_geom *s, int k0, int kc, int32_t *code) {
    int kk = g->kh * g->kw, plane = s->h * s->w, k;
    for (k = 0; k < kc; k++) {
        int c = (k0 + k) / kk, t = (k0 + k) % kk, ri = t / g->kw - g->pad, rj = t % g->kw - g->pad;
        int a = ri & 1, b = rj & 1, di = (ri - a) / 2 + s->pad, dj = (rj - b) / 2 + s->pad;
        int ch = (a * 2 + b) * g->c_in + c;
        code[k] = (int32_t)((ch * plane + di * s->w + dj) * 64 + di * s->kw + dj);
    }
}

/* out[x] = row[2 x] for x < count, reading nothing past row[2 count - 2]. */
static void dtnh__copy_even(const float *row, int count, float *out) {
    const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    int x = 0;
    for (; x + 16 <= count; x += 16) {
        __m512 lo = _mm512_loadu_ps(row + 2 * x), hi = _mm512_maskz_loadu_ps(0x7FFF, row + 2 * x + 16);
        _mm512_storeu_ps(out + x, _mm512_permutex2var_ps(lo, even, hi));
    }
    for (; x < count; x++) out[x] = row[2 * x];
}

/* Whether only phase (0, 0) is read: a 1x1 without padding. (With padding p it reads phase
   (p mod 2, p mod 2), so all four are copied.) */
static int dtnh__one_phase(const dtnh_conv_geom *g) {
    return g->kh == 1 && g->kw == 1 && g->pad == 0;
}

/* Image img's phases, channels [c_lo, c_hi) of each, into ph x pw planes at dst (channel
   (a * 2 + b) * c_in + c), each OH x OW phase placed pad rows and columns in and the rest zero:
   the forward reads them as they are (pad 0), the backward-weights padded. */
static void dtnh__split_phases(const dtnh_conv_geom *g, const float *x, int img, int c_lo, int c_hi,
                               int ph, int pw, int pad, float *dst) {
    int a, b, c, y;
    for (a = 0; a < 2; a++)
        for (b = 0; b < 2; b++) {
            int inside = dtnh__kmin(g->ow, (g->w - b + 1) / 2); /* columns 2 xo + b < w */
            if (dtnh__one_phase(g) && (a || b)) continue;
            for (c = c_lo; c < c_hi; c++) {
                const float *src = x + ((size_t)img * g->c_in + (size_t)c) * (size_t)g->h * (size_t)g->w;
                float *d = dst + ((size_t)(a * 2 + b) * g->c_in + (size_t)c) * (size_t)ph * (size_t)pw;
                dtnh__vzero(d, ph * pw); /* one pass: cheaper than zeroing the borders row by row */
                for (y = 0; y < g->oh && 2 * y + a < g->h; y++)
                    dtnh__copy_even(src + (size_t)(2 * y + a) * (size_t)g->w + b, inside,
                                    d + (size_t)(y + pad) * (size_t)pw + (size_t)pad);
            }
        }
}

static void dtnh__gemm_range_phases(const dtnh__gemm *G, const dtnh__plan *P, int m_lo, int m_hi,
                                    int n_lo, int n_hi, float *abuf) {
    dtnh_conv_geom s = dtnh__phase_geom(&G->b.g);
    int plane = s.h * s.w, col, pc, ic;
    int32_t *code = (int32_t *)(void *)(abuf + P->a_floats);
    __mmask16 *masks = (__mmask16 *)(void *)(code + G->K);
    float *phases = abuf + dtnh__phases_floats(G, P) - (size_t)s.c_in * (size_t)plane;
    dtnh__gemm Gi = *G; /* one image at a time: B its phases, C its output */
    Gi.b.g = s;
    Gi.b.p = phases;
    dtnh__phase_codes(&G->b.g, &s, 0, G->K, code); /* the same for every image */
    dtnh__direct_masks(&s, masks);
    for (col = n_lo; col < n_hi;) {
        int img = col / plane, q0 = col % plane, q1 = dtnh__kmin(plane, q0 + (n_hi - col));
        dtnh__split_phases(&G->b.g, G->b.p, img, 0, G->b.g.c_in, s.h, s.w, 0, phases);
        Gi.c.p = G->c.p + (size_t)img * (size_t)G->c.ch * (size_t)plane;
        for (pc = 0; pc < G->K; pc += P->kc) {
            int kc = dtnh__kmin(P->kc, G->K - pc);
            dtnh__blend u = dtnh__slice_blend(G, pc);
            for (ic = m_lo; ic < m_hi; ic += P->mc) {
                int mc = dtnh__kmin(P->mc, m_hi - ic);
                dtnh__pack_a(G, ic, mc, pc, kc, abuf);
                dtnh__direct_pieces(&Gi, abuf, ic, mc, kc, q0, q1, code + pc, masks, &u);
            }
        }
        col += q1 - q0;
    }
}
#endif

#if defined(DTNH__AVX512)
/* ---- backward-weights with A read from a padded input --------------------------------------- */
/* Same-size convolutions: instead of packing A panels (the unfolded input; with 16 or 32 output
   channels each element feeds only one or two vector FMAs, so packing cost about as much as the
   multiply-adds), the input images a K slice touches are copied once, with a zero border, into
   the thread's buffer, and the micro-kernel broadcasts A's elements straight from there: tap
   (c, i, j) of output pixel (oy, ox) is padded element (c, oy + i, ox + j). Measured faster at
   every width of ResNet-18 (28x28x16: 1.65 -> 1.2 ms, 7x7x64: 1.08 -> 0.84 ms, 1-5% on wide
   layers). Stride-2 convolutions copy the input's four phases instead (see the forward's
   phases above), each plane padded: tap (c, i, j) is then element (oy + di, ox + dj) of plane
   (a, b, c). Same values, same K slices, same order: the same bits as the packed path. */

#define DTNH__PADDED_SLOTS 24 /* images a K slice may touch */

typedef struct dtnh__padded {
    const dtnh_conv_geom *g;   /* the convolution */
    dtnh_conv_geom s;          /* what is padded: g, or for stride 2 its phase planes */
    const float *x;
    int ph, pw, slots;         /* padded height and width, image slots */
    int img[DTNH__PADDED_SLOTS]; /* which image each slot holds */
    int c_lo, c_hi;            /* the channels this thread's rows read: only those are copied */
    size_t image_floats;       /* s.c_in * ph * pw */
    float *buf;
} dtnh__padded;


/* The same-size geometry whose input is padded: the convolution's, or its phase planes'
   (phase (0, 0) alone for a 1x1 without padding). */
static dtnh_conv_geom dtnh__padded_geom(const dtnh_conv_geom *g) {
    dtnh_conv_geom s = *g;
    if (g->stride != 2) return s;
    s = dtnh__phase_geom(g);
    if (dtnh__one_phase(g)) s.c_in = g->c_in;
    return s;
}

/* Slots a K slice of kc pixels can touch, and the floats of a thread's buffer they need. */
static int dtnh__padded_slots(const dtnh_conv_geom *g, int kc) {
    return (kc + g->oh * g->ow - 2) / (g->oh * g->ow) + 1;
}
static size_t dtnh__padded_floats(const dtnh_conv_geom *g, int kc) {
    dtnh_conv_geom s = dtnh__padded_geom(g);
    size_t image = (size_t)s.c_in * (size_t)(s.h + s.kh - 1) * (size_t)(s.w + s.kw - 1);
    return (size_t)dtnh__padded_slots(g, kc) * ((image + 15) / 16 * 16) + (size_t)kc + 16;
}

/* The B slivers of all N columns; they come first in the thread's buffer, the images after. */
static size_t dtnh__padded_slivers(const dtnh__gemm *G, const dtnh__plan *P) {
    return (size_t)((G->N + DTNH__NR - 1) / DTNH__NR) * ((dtnh__sliver_stride(P->kc) + 15) / 16 * 16);
}

static int dtnh__padded_ok(const dtnh__gemm *G, const dtnh__plan *P) {
    const dtnh_conv_geom *g = &G->a.g;
    int same_size = g->stride == 1 && g->oh == g->h && g->ow == g->w;
    int phases = g->stride == 2 && g->kh == g->kw && g->kh <= 3 && 2 * g->pad + 1 >= g->kh;
    return G->a.kind == DTNH__IM2COL && G->c.kind == DTNH__COLS && (same_size || phases) &&
           dtnh__padded_slots(g, P->kc) <= DTNH__PADDED_SLOTS &&
           dtnh__padded_slivers(G, P) + dtnh__padded_floats(g, P->kc) <= P->thread_bytes / sizeof(float);
}

/* The padded copy of image img, in its slot (if not there already). */
static float *dtnh__padded_image(dtnh__padded *d, int img) {
    const dtnh_conv_geom *g = d->g;
    int slot = img % d->slots, c, y;
    float *dst = d->buf + (size_t)slot * ((d->image_floats + 15) / 16 * 16);
    if (d->img[slot] == img) return dst;
    d->img[slot] = img;
    if (g->stride == 2) {
        dtnh__split_phases(g, d->x, img, d->c_lo, d->c_hi, d->ph, d->pw, d->s.pad, dst);
        return dst;
    }
    for (c = d->c_lo; c < d->c_hi; c++) {
        float *plane = dst + (size_t)c * (size_t)d->ph * (size_t)d->pw;
        const float *src = d->x + ((size_t)img * g->c_in + (size_t)c) * (size_t)g->h * (size_t)g->w;
        memset(plane, 0, (size_t)d->pw * (size_t)g->pad * sizeof(float));
        for (y = 0; y < g->h; y++) {
            float *row = plane + (size_t)(y + g->pad) * (size_t)d->pw;
            memset(row, 0, (size_t)g->pad * sizeof(float));
            memcpy(row + g->pad, src + (size_t)y * (size_t)g->w, (size_t)g->w * sizeof(float));
            memset(row + g->pad + g->w, 0, (size_t)(d->pw - g->pad - g->w) * sizeof(float));
        }
        memset(plane + (size_t)(g->h + g->pad) * (size_t)d->pw, 0,
               (size_t)d->pw * (size_t)(d->ph - g->h - g->pad) * sizeof(float));
    }
    return dst;
}

/* Where tap (c, i, j) of output pixel 0 sits in a slot: tap i - pad = 2 di + a (stride 2)
   reads row di of phase a; with stride 1, row i - pad. Then shifted by the padding. */
static const float *dtnh__padded_tap(const dtnh__padded *d, int c, int i, int j) {
    const dtnh_conv_geom *g = d->g;
    int ri = i - g->pad, rj = j - g->pad, a = 0, b = 0;
    size_t ch;
    if (g->stride == 2) {
        a = ri & 1;
        b = rj & 1;
        ri = (ri - a) / 2;
        rj = (rj - b) / 2;
    }
    ch = (size_t)(a * 2 + b) * (size_t)g->c_in + (size_t)c;
    return d->buf + (ch * (size_t)d->ph + (size_t)(ri + d->s.pad)) * (size_t)d->pw + (size_t)(rj + d->s.pad);
}

/* off[k]: where in the buffer tap (0, 0, 0) of pixel k0 + k sits, its images padded. */
static void dtnh__padded_offsets(dtnh__padded *d, int k0, int kc, int32_t *off) {
    int plane = d->g->oh * d->g->ow, k = 0;
    while (k < kc) {
        int img = (k0 + k) / plane, q = (k0 + k) % plane, end = dtnh__kmin(kc, k + plane - q);
        int32_t at = (int32_t)(dtnh__padded_image(d, img) - d->buf);
        for (; k < end; k++, q++) off[k] = at + (int32_t)(q / d->g->ow * d->pw + q % d->g->ow);
    }
}

/* The micro-kernel with row r of A at rows[r][off[k]], into a tile: both B vectors (wide) or
   the first only (at most 16 columns). */
#define DTNH__PROW(r)                                                           \
    do {                                                                        \
        __m512 a_ = _mm512_set1_ps(a##r[o]);                                     \
        c##r##0 = _mm512_fmadd_ps(a_, b0, c##r##0);                             \
        if (wide) c##r##1 = _mm512_fmadd_ps(a_, _mm512_load_ps(b + 16), c##r##1); \
    } while (0)
#define DTNH__POUT(r) _mm512_store_ps(tile + (r) * DTNH__NR, c##r##0), _mm512_store_ps(tile + (r) * DTNH__NR + 16, c##r##1)
#define DTNH__PADDED_KERNEL(name, wide_value)                                                     \
    static void name(int kc, const float *const *rows, const int32_t *DTNH__RESTRICT off,          \
                     const float *DTNH__RESTRICT b, float *DTNH__RESTRICT tile) {                \
        const int wide = wide_value;                                                              \
        const float *a0 = rows[0], *a1 = rows[1], *a2 = rows[2], *a3 = rows[3];                   \
        const float *a4 = rows[4], *a5 = rows[5], *a6 = rows[6], *a7 = rows[7];                   \
        __m512 c00 = _mm512_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;  \
        __m512 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;                  \
        __m512 c60 = c00, c61 = c00, c70 = c00, c71 = c00;                                        \
        int k;                                                                                    \
        for (k = 0; k < kc; k++, b += DTNH__NR) {                                                 \
            int32_t o = off[k];                                                                   \
            __m512 b0 = _mm512_load_ps(b);                                                        \
            DTNH__PROW(0); DTNH__PROW(1); DTNH__PROW(2); DTNH__PROW(3);                           \
            DTNH__PROW(4); DTNH__PROW(5); DTNH__PROW(6); DTNH__PROW(7);                           \
        }                                                                                         \
        DTNH__POUT(0); DTNH__POUT(1); DTNH__POUT(2); DTNH__POUT(3);                               \
        DTNH__POUT(4); DTNH__POUT(5); DTNH__POUT(6); DTNH__POUT(7);                               \
    }
DTNH__PADDED_KERNEL(dtnh__kernel_padded, 1)
DTNH__PADDED_KERNEL(dtnh__kernel_padded_half, 0)
#undef DTNH__PADDED_KERNEL
#undef DTNH__PROW
#undef DTNH__POUT

/* C here is dW^T stored by columns, and blending a tile there takes transposes at every K
   slice. When the thread's block of C fits in what the buffer has left, it is accumulated in
   a row-major copy and transposed out once: the same additions, so the same bits. */
static float *dtnh__padded_c_copy(const dtnh__gemm *G, const dtnh__plan *P, int m_lo, int m_hi, int n_lo,
                                  int n_hi, float *abuf, dtnh__gemm *Gt) {
    size_t used = dtnh__padded_slivers(G, P) + (dtnh__padded_floats(&G->a.g, P->kc) + 15) / 16 * 16;
    size_t rows = (size_t)(m_hi - m_lo), cols = (size_t)(n_hi - n_lo), m, n;
    float *ct = abuf + used;
    if (used + rows * cols > P->thread_bytes / sizeof(float)) return NULL;
    *Gt = *G;
    Gt->c = dtnh__view_plain(DTNH__ROWS, ct, cols);
    Gt->c.row0 = m_lo;
    Gt->c.col0 = n_lo;
    if (G->beta != 0.0f) /* the first slice reads C */
        for (m = 0; m < rows; m++)
            for (n = 0; n < cols; n++) ct[m * cols + n] = G->c.p[(n_lo + n) * G->c.ld + (size_t)m_lo + m];
    return ct;
}

static void dtnh__gemm_range_padded(const dtnh__gemm *G, const dtnh__plan *P, int m_lo, int m_hi,
                                    int n_lo, int n_hi, float *abuf, float *bbuf) {
    const dtnh_conv_geom *g = &G->a.g;
    int kk = g->kh * g->kw, pc, ir, jr, r, s;
    dtnh__padded d;
    dtnh__gemm Gt;
    const dtnh__gemm *Gc = G;
    int32_t *off;
    float *ct;
    d.g = g;
    d.x = G->a.p;
    d.s = dtnh__padded_geom(g);
    d.ph = d.s.h + d.s.kh - 1;
    d.pw = d.s.w + d.s.kw - 1;
    d.slots = dtnh__padded_slots(g, P->kc);
    d.image_floats = (size_t)d.s.c_in * (size_t)d.ph * (size_t)d.pw;
    d.c_lo = m_lo / kk;
    d.c_hi = (m_hi - 1) / kk + 1;
    (void)bbuf; /* one block: the slivers, the images, the offsets, the copy of C */
    d.buf = abuf + dtnh__padded_slivers(G, P);
    for (s = 0; s < DTNH__PADDED_SLOTS; s++) d.img[s] = -1;
    off = (int32_t *)(void *)(d.buf + (size_t)d.slots * ((d.image_floats + 15) / 16 * 16));
    ct = dtnh__padded_c_copy(G, P, m_lo, m_hi, n_lo, n_hi, abuf, &Gt);
    if (ct) Gc = &Gt;
    for (pc = 0; pc < G->K; pc += P->kc) {
        int kc = dtnh__kmin(P->kc, G->K - pc);
        dtnh__pack_b(G, pc, kc, n_lo, n_hi - n_lo, abuf);
        dtnh__padded_offsets(&d, pc, kc, off);
        for (ir = m_lo; ir < m_hi; ir += DTNH__MR) {
            int mr = dtnh__kmin(DTNH__MR, m_hi - ir);
            const float *rows[DTNH__MR];
            for (r = 0; r < DTNH__MR; r++) { /* rows past M read tap 0: computed, never stored */
                int m = ir + (r < mr ? r : 0);
                rows[r] = dtnh__padded_tap(&d, m / kk, m % kk / g->kw, m % g->kw);
            }
            for (jr = n_lo; jr < n_hi; jr += DTNH__NR) {
                DTNH_ALIGNED(64) float tile[DTNH__MR * DTNH__NR];
                const float *b = abuf + (size_t)((jr - n_lo) / DTNH__NR) * dtnh__sliver_stride(kc);
                int nr = dtnh__kmin(DTNH__NR, n_hi - jr);
                if (nr <= 16) dtnh__kernel_padded_half(kc, rows, off, b, tile);
                else dtnh__kernel_padded(kc, rows, off, b, tile);
                dtnh__store_tile(Gc, ir, mr, jr, nr, tile, pc == 0);
            }
        }
    }
    if (ct) {
        size_t rows = (size_t)(m_hi - m_lo), cols = (size_t)(n_hi - n_lo), m, n;
        for (n = 0; n < cols; n++)
            for (m = 0; m < rows; m++) G->c.p[(n_lo + n) * G->c.ld + (size_t)m_lo + m] = ct[m * cols + n];
    }
}
#endif

/* C rows [m_lo, m_hi) x columns [n_lo, n_hi), all of K, on one thread's buffers. */
static void dtnh__gemm_range(const dtnh__gemm *G, const dtnh__plan *P, int m_lo, int m_hi,
                             int n_lo, int n_hi, float *abuf, float *bbuf) {
#if defined(DTNH__AVX512)
    if (dtnh__padded_ok(G, P)) {
        dtnh__gemm_range_padded(G, P, m_lo, m_hi, n_lo, n_hi, abuf, bbuf);
        return;
    }
    if (dtnh__phases_ok(G) && dtnh__phases_floats(G, P) <= P->thread_bytes / sizeof(float)) {
        dtnh__gemm_range_phases(G, P, m_lo, m_hi, n_lo, n_hi, abuf);
        return;
    }
    if (dtnh__direct_ok(G) && dtnh__direct_bytes(&G->b.g, P->kc) <= P->b_floats * sizeof(float)) {
        dtnh__gemm_range_direct(G, P, m_lo, m_hi, n_lo, n_hi, abuf, bbuf);
        return;
    }
#endif
    dtnh__gemm_range_packed(G, P, m_lo, m_hi, n_lo, n_hi, 0, G->K, abuf, bbuf);
}

static int dtnh__omp_thread(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}
static int dtnh__omp_team(void) {
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

/* Threads the work buffer holds and OpenMP offers. */
static int dtnh__threads_for(const dtnh_work *work, size_t thread_bytes, double madds) {
    int t = dtnh__kmin(work->threads, dtnh_threads());
    size_t fit = work->bytes > 64 ? (work->bytes - 64) / thread_bytes : 0;
    if ((size_t)t > fit) t = (int)fit;
    if (madds < DTNH__PAR_MADDS) t = 1;
    return t < 1 ? 1 : t;
}

static float *dtnh__thread_buf(const dtnh_work *work, const dtnh__plan *P, int tid) {
    uintptr_t p = ((uintptr_t)work->buf + 63) / 64 * 64;
    return (float *)(p + (uintptr_t)tid * P->thread_bytes);
}

/* Packing cost of an operand, relative: it decides which operand threads pack redundantly. */
static double dtnh__pack_cost(int kind) {
    return kind == DTNH__ROWS ? 1.0 : kind == DTNH__IM2COL ? 3.0 : 2.0;
}

/* Columns are shared in whole slivers, or in half slivers where whole ones leave the threads
   unbalanced and each thread gets several (147 columns on 2 threads: 96 + 51 in slivers,
   80 + 67 in halves; 32 columns stay whole: two half-width tiles run slower than one). A
   tile's arithmetic does not depend on where it starts, so neither do the bits. */
static int dtnh__column_unit(int N, int T) {
    double nu = (N + DTNH__NR - 1) / DTNH__NR;
    return nu >= 2 * T && nu / (T * ceil(nu / T)) < 0.9 ? DTNH__NR / 2 : DTNH__NR;
}

/* Splits the columns (1) or the rows (0) among T threads: balance first, then the cheaper
   redundant packing (splitting N packs A on every thread, splitting M packs B). */
static int dtnh__split_columns(const dtnh__gemm *G, int T) {
    int unit = dtnh__column_unit(G->N, T);
    double nu = (G->N + unit - 1) / unit, mu = (G->M + DTNH__MR - 1) / DTNH__MR;
    double eff_n = nu / (T * ceil(nu / T)), eff_m = mu / (T * ceil(mu / T));
    double extra_n = 32.0 * dtnh__pack_cost(G->a.kind) * (T - 1) / G->N;
    double extra_m = 32.0 * dtnh__pack_cost(G->b.kind) * (T - 1) / G->M;
    return (1.0 + extra_n) / eff_n <= (1.0 + extra_m) / eff_m;
}

/* [lo, hi) of `units` units of `size` (last one short, total `n`) for thread t of T. */
static void dtnh__share(int n, int size, int t, int T, int *lo, int *hi) {
    int units = (n + size - 1) / size;
    *lo = dtnh__kmin(n, units * t / T * size);
    *hi = dtnh__kmin(n, units * (t + 1) / T * size);
}

/* Thread t of nt: its share of C's columns (by_cols) or rows, all of K. */
static void dtnh__gemm_share(const dtnh__gemm *G, const dtnh_work *work, const dtnh__plan *P,
                             int by_cols, int t, int nt) {
    float *abuf = dtnh__thread_buf(work, P, t);
    int m_lo = 0, m_hi = G->M, n_lo = 0, n_hi = G->N;
    if (by_cols) dtnh__share(G->N, dtnh__column_unit(G->N, nt), t, nt, &n_lo, &n_hi);
    else dtnh__share(G->M, DTNH__MR, t, nt, &m_lo, &m_hi);
    if (m_lo < m_hi && n_lo < n_hi)
        dtnh__gemm_range(G, P, m_lo, m_hi, n_lo, n_hi, abuf, abuf + P->a_floats);
}

/* ---- long K, small C: the product cut into parts along K ------------------------------------
   The stem's backward-weights (64 x 147 over K = 100352) shared by columns makes every thread
   pack all of A, and 147 columns split 80 + 67: 1.5-1.7x on two threads. Where C is small and
   K long, K is cut instead into 16 parts of whole K slices, which the threads share; each
   part's product goes to a buffer of its own, and at the end the parts are added in order and
   blended into C. Whether a product is cut depends on its shape alone, never on the thread
   count, so any thread count gives the same bits (but not the bits of the uncut product).
   Threads beyond 16 wait. */
#define DTNH__KPARTS 16

static int dtnh__plain_kind(int kind) { return kind == DTNH__ROWS || kind == DTNH__COLS; }

static size_t dtnh__part_floats(const dtnh__gemm *G) {
    return ((size_t)G->M * (size_t)G->N + 15) / 16 * 16;
}

/* Whether to cut: plain operands (dtnh_sgemm's); a K slice or more, and as many multiply-adds
   as make a second thread worth it, per part; all parts fitting beside the packed blocks in
   one thread's share of dtnh_gemm_work_bytes. Products under 16 K slices stay whole: the
   convolutions' own paths never cut, and a test compares their bits with dtnh_sgemm's on such
   products. */
static int dtnh__k_cut(const dtnh__gemm *G, const dtnh__plan *P) {
    dtnh__plan full;
    if (!dtnh__plain_kind(G->a.kind) || !dtnh__plain_kind(G->b.kind) || P->slices < DTNH__KPARTS ||
        (double)G->M * G->N * G->K < DTNH__KPARTS * DTNH__PAR_MADDS)
        return 0;
    dtnh__plan_default(&full);
    return P->a_floats + P->b_floats + DTNH__KPARTS * dtnh__part_floats(G) <=
           full.a_floats + full.b_floats;
}

/* Where each part's product goes: in the buffer of the thread that computes it, after its
   packed blocks. */
static void dtnh__part_bufs(const dtnh__gemm *G, const dtnh_work *work, const dtnh__plan *P, int nt,
                            float **part) {
    int t, p, lo, hi;
    for (t = 0; t < nt; t++) {
        float *after_blocks = dtnh__thread_buf(work, P, t) + P->a_floats + P->b_floats;
        dtnh__share(DTNH__KPARTS, 1, t, nt, &lo, &hi);
        for (p = lo; p < hi; p++) part[p] = after_blocks + (size_t)(p - lo) * dtnh__part_floats(G);
    }
}

/* Rows [m_lo, m_hi) of C: the parts summed in order, then blended in as a first K slice. */
static void dtnh__add_parts(const dtnh__gemm *G, float *const *part, int m_lo, int m_hi) {
    DTNH_ALIGNED(64) float tile[DTNH__MR * DTNH__NR];
    int m0, n0, r, p;
    for (m0 = m_lo; m0 < m_hi; m0 += DTNH__MR)
        for (n0 = 0; n0 < G->N; n0 += DTNH__NR) {
            int mr = dtnh__kmin(DTNH__MR, m_hi - m0), nr = dtnh__kmin(DTNH__NR, G->N - n0);
            for (r = 0; r < mr; r++) {
                size_t at = (size_t)(m0 + r) * (size_t)G->N + (size_t)n0;
                dtnh_copy((size_t)nr, part[0] + at, tile + r * DTNH__NR);
                for (p = 1; p < DTNH__KPARTS; p++)
                    dtnh_axpy((size_t)nr, 1.0f, part[p] + at, tile + r * DTNH__NR);
            }
            dtnh__store_tile(G, m0, mr, n0, nr, tile, 1);
        }
}

/* Thread t of nt: its share of the parts, then (once all are done) its share of C's rows.
   No early return: every thread of the team must reach the barrier. */
static void dtnh__gemm_parts(const dtnh__gemm *G, const dtnh_work *work, const dtnh__plan *P, int t,
                             int nt) {
    float *abuf = dtnh__thread_buf(work, P, t), *part[DTNH__KPARTS];
    int lo, hi, p, m_lo, m_hi;
    dtnh__part_bufs(G, work, P, nt, part);
    dtnh__share(DTNH__KPARTS, 1, t, nt, &lo, &hi);
    for (p = lo; p < hi; p++) {
        dtnh__gemm one = *G;
        int s_lo, s_hi; /* never empty: a cut product has a slice or more per part */
        dtnh__share(P->slices, 1, p, DTNH__KPARTS, &s_lo, &s_hi);
        one.alpha = 1.0f;
        one.beta = 0.0f;
        one.bias = NULL;
        one.c = dtnh__view_plain(DTNH__ROWS, part[p], (size_t)G->N);
        dtnh__gemm_range_packed(&one, P, 0, G->M, 0, G->N, s_lo * P->kc,
                                dtnh__kmin(G->K, s_hi * P->kc), abuf, abuf + P->a_floats);
    }
    DTNH__OMP(barrier)
    dtnh__share(G->M, DTNH__MR, t, nt, &m_lo, &m_hi);
    if (m_lo < m_hi) dtnh__add_parts(G, part, m_lo, m_hi);
}

static void dtnh__gemm_run(const dtnh__gemm *G, const dtnh_work *work) {
    dtnh__plan P;
    int T, by_cols, cut;
    dtnh__plan_make(G->M, G->N, G->K, 0, &P);
    cut = dtnh__k_cut(G, &P);
    if (cut) dtnh__plan_make(G->M, G->N, G->K, DTNH__KPARTS * dtnh__part_floats(G), &P);
    T = dtnh__threads_for(work, P.thread_bytes, (double)G->M * G->N * G->K);
    by_cols = !cut && dtnh__split_columns(G, T);
    DTNH_ASSERT(work->bytes >= P.thread_bytes + 64 && work->buf);
#if defined(DTNH__AVX512)
    /* The padded backward-weights and the stride-2 phases take each thread's share of all the
       work there is (a shared work buffer is sized for the largest layer): the more of it, the
       more often they fit. */
    if ((G->a.kind == DTNH__IM2COL && G->c.kind == DTNH__COLS) || dtnh__phases_ok(G))
        P.thread_bytes = (work->bytes - 64) / (size_t)T / 64 * 64;
#endif
    DTNH__OMP(parallel num_threads(T) if (T > 1))
    {
        int t = dtnh__omp_thread(), nt = dtnh__omp_team();
        if (cut) dtnh__gemm_parts(G, work, &P, t, nt);
        else dtnh__gemm_share(G, work, &P, by_cols, t, nt);
    }
}

/* ---- public GEMM --------------------------------------------------------------------------- */

DTNHDEF dtnh_status dtnh_work_alloc(dtnh_work *w, dtnh_arena *a, size_t bytes, int threads,
                                    dtnh_error *err) {
    void *p = NULL;
    dtnh_status s;
    if (!w || !a) return dtnh_fail(err, DTNH_ERR_ARG, "work_alloc: NULL work or arena");
    if (threads < 1)
        return dtnh_fail(err, DTNH_ERR_ARG, "work_alloc: threads is %d, expected >= 1", threads);
    w->buf = NULL;
    w->bytes = 0;
    w->threads = threads;
    if ((s = dtnh_arena_alloc(a, bytes, 64, &p, err))) return s;
    w->buf = p;
    w->bytes = bytes;
    return DTNH_OK;
}

/* Room for `threads` per-thread buffers of thread_bytes, plus slack to align the start. */
static size_t dtnh__work_total(size_t thread_bytes, int threads) {
    return (size_t)(threads < 1 ? 1 : threads) * thread_bytes + 64;
}

DTNHDEF size_t dtnh_gemm_work_bytes(int threads) {
    dtnh__plan P;
    dtnh__plan_default(&P);
    return dtnh__work_total(P.thread_bytes, threads);
}

/* Without work: plain loops, for small products and callers without scratch. */
static void dtnh__sgemm_unpacked(dtnh_trans ta, dtnh_trans tb, int M, int N, int K, float alpha,
                                 const float *A, int lda, const float *B, int ldb, float beta,
                                 float *C, int ldc) {
    int i, j, k;
    for (i = 0; i < M; i++)
        for (j = 0; j < N; j++) {
            float s = 0, *c = C + (size_t)i * (size_t)ldc + (size_t)j;
            for (k = 0; k < K; k++) {
                float a = ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];
                float b = tb ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j];
                s += a * b;
            }
            *c = beta == 0.0f ? alpha * s : alpha * s + beta * *c;
        }
}

DTNHDEF void dtnh_sgemm(dtnh_trans ta, dtnh_trans tb, int M, int N, int K, float alpha,
                        const float *A, int lda, const float *B, int ldb, float beta, float *C,
                        int ldc, const dtnh_work *work) {
    dtnh__gemm G;
    if (M <= 0 || N <= 0) return;
    if (!work || !work->buf || K <= 0) {
        dtnh__sgemm_unpacked(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    G.alpha = alpha;
    G.beta = beta;
    G.bias = NULL;
    G.K = K;
    /* Both transposed: C^T = B.A is a plain product written back transposed. */
    if (tb == DTNH_TRANS && ta == DTNH_TRANS) {
        G.M = N;
        G.N = M;
        G.a = dtnh__view_plain(DTNH__ROWS, B, (size_t)ldb);
        G.b = dtnh__view_plain(DTNH__ROWS, A, (size_t)lda);
        G.c = dtnh__view_plain(DTNH__COLS, C, (size_t)ldc);
    } else {
        G.M = M;
        G.N = N;
        G.a = dtnh__view_plain(ta ? DTNH__COLS : DTNH__ROWS, A, (size_t)lda);
        G.b = dtnh__view_plain(tb ? DTNH__COLS : DTNH__ROWS, B, (size_t)ldb);
        G.c = dtnh__view_plain(DTNH__ROWS, C, (size_t)ldc);
    }
    dtnh__gemm_run(&G, work);
}

DTNHDEF dtnh_status dtnh_sgemm_checked(dtnh_trans ta, dtnh_trans tb, int M, int N, int K,
                                       float alpha, const float *A, int lda, const float *B,
                                       int ldb, float beta, float *C, int ldc,
                                       const dtnh_work *work, dtnh_error *err) {
    int a_cols = ta == DTNH_NO_TRANS ? K : M, b_cols = tb == DTNH_NO_TRANS ? N : K;
    if (M <= 0 || N <= 0 || K <= 0)
        return dtnh_fail(err, DTNH_ERR_ARG, "sgemm: M=%d N=%d K=%d, expected all > 0", M, N, K);
    if (!A || !B || !C) return dtnh_fail(err, DTNH_ERR_ARG, "sgemm: NULL A, B or C");
    if ((ta != DTNH_NO_TRANS && ta != DTNH_TRANS) || (tb != DTNH_NO_TRANS && tb != DTNH_TRANS))
        return dtnh_fail(err, DTNH_ERR_ARG, "sgemm: transpose flags %d, %d, expected 0 or 1",
                         (int)ta, (int)tb);
    if (lda < a_cols)
        return dtnh_fail(err, DTNH_ERR_ARG, "sgemm: lda=%d, expected >= %d", lda, a_cols);
    if (ldb < b_cols)
        return dtnh_fail(err, DTNH_ERR_ARG, "sgemm: ldb=%d, expected >= %d", ldb, b_cols);
    if (ldc < N) return dtnh_fail(err, DTNH_ERR_ARG, "sgemm: ldc=%d, expected >= %d", ldc, N);
    if (!work || work->threads < 1 || !work->buf ||
        work->bytes < dtnh_gemm_work_bytes(work->threads))
        return dtnh_fail(err, DTNH_ERR_ARG,
                         "sgemm: work of %zu bytes at %p for %d threads, expected %zu bytes",
                         work ? work->bytes : 0, work ? work->buf : NULL, work ? work->threads : 0,
                         dtnh_gemm_work_bytes(work && work->threads > 0 ? work->threads : 1));
    dtnh_sgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, work);
    return DTNH_OK;
}

/* ---- kernels: convolution ------------------------------------------------------------------ */
/* Every pass is one GEMM with the batch folded into a dimension, its conv operand packed
   straight from the NCHW tensor (no unfolded copy exists):
     forward           y  = W . im2col(x)                         M c_out, N n*oh*ow, K c_in*kh*kw
     backward-weights  dW^T = im2col(x) . dY^T                    M c_in*kh*kw, N c_out, K n*oh*ow
     backward-data, stride 1: a forward convolution of dY with the flipped, transposed kernel
     backward-data, kernel <= stride: dX = scatter(W^T . dY), no two taps meet
     backward-data, otherwise: W^T . dY in tiles of fixed size, each col2im'ed into dX. */

#define DTNH__C2I_ROWS 256 /* col2im tile: rows (whole channels) ... */
#define DTNH__C2I_COLS 512 /* ... by columns, fixed so the order of additions is fixed */

DTNHDEF dtnh_status dtnh_conv_geom_init(dtnh_conv_geom *g, int n, int c_in, int h, int w,
                                        int c_out, int kh, int kw, int stride, int pad,
                                        dtnh_error *err) {
    long long oh, ow;
    size_t cnt = 0;
    if (!g) return dtnh_fail(err, DTNH_ERR_ARG, "conv_geom: NULL geometry");
    if (n <= 0 || c_in <= 0 || h <= 0 || w <= 0 || c_out <= 0 || kh <= 0 || kw <= 0 || stride <= 0)
        return dtnh_fail(err, DTNH_ERR_ARG,
                         "conv_geom: n=%d c_in=%d h=%d w=%d c_out=%d kernel %dx%d stride %d, "
                         "expected all > 0", n, c_in, h, w, c_out, kh, kw, stride);
    if (pad < 0) return dtnh_fail(err, DTNH_ERR_ARG, "conv_geom: pad=%d, expected >= 0", pad);
    if ((long long)kh > (long long)h + 2LL * pad || (long long)kw > (long long)w + 2LL * pad)
        return dtnh_fail(err, DTNH_ERR_SHAPE,
                         "conv_geom: kernel %dx%d larger than the padded input %lldx%lld", kh, kw,
                         (long long)h + 2LL * pad, (long long)w + 2LL * pad);
    oh = ((long long)h + 2LL * pad - kh) / stride + 1;
    ow = ((long long)w + 2LL * pad - kw) / stride + 1;
    /* The GEMM dimensions (n*oh*ow, n*h*w, c_in*kh*kw, c_out*kh*kw) are ints; every tensor
       must fit size_t. */
    if ((long long)h * w > 0x7fffffffLL / n || (long long)kh * kw > 0x7fffffffLL / c_in ||
        (long long)kh * kw > 0x7fffffffLL / c_out || oh * ow > 0x7fffffffLL / n)
        return dtnh_fail(err, DTNH_ERR_ARG,
                         "conv_geom: n=%d c_in=%d %dx%d kernel %dx%d: sizes overflow int", n, c_in,
                         h, w, kh, kw);
    if (dtnh_size_mul((size_t)n * (size_t)c_in, (size_t)h * (size_t)w, &cnt, err) ||
        dtnh_size_mul(cnt, sizeof(float), &cnt, err) ||
        dtnh_size_mul((size_t)n * (size_t)c_out, (size_t)(oh * ow), &cnt, err) ||
        dtnh_size_mul(cnt, sizeof(float), &cnt, err) ||
        dtnh_size_mul((size_t)c_in * (size_t)(kh * kw), (size_t)c_out * sizeof(float), &cnt, err))
        return dtnh_fail(err, DTNH_ERR_ARG,
                         "conv_geom: n=%d c_in=%d %dx%d c_out=%d: sizes overflow size_t", n, c_in,
                         h, w, c_out);
    g->n = n; g->c_in = c_in; g->h = h; g->w = w;
    g->c_out = c_out; g->kh = kh; g->kw = kw; g->stride = stride; g->pad = pad;
    g->oh = (int)oh; g->ow = (int)ow;
    g->winograd = 0;
    return DTNH_OK;
}

/* A 1x1 stride-1 convolution reads whole planes: treat each as one long row, so runs are long. */
static dtnh_conv_geom dtnh__flat_if_pointwise(const dtnh_conv_geom *g) {
    dtnh_conv_geom f = *g;
    if (g->kh == 1 && g->kw == 1 && g->stride == 1 && g->pad == 0) {
        f.w = f.ow = g->h * g->w;
        f.h = f.oh = 1;
    }
    return f;
}

/* A folded NCHW tensor as a conv operand: rows channels, columns (image, pixel). */
static dtnh_conv_geom dtnh__plane_geom(int n, int ch, int plane) {
    dtnh_conv_geom f;
    memset(&f, 0, sizeof f);
    f.n = n;
    f.c_in = f.c_out = ch;
    f.h = f.oh = 1;
    f.w = f.ow = plane;
    f.kh = f.kw = f.stride = 1;
    return f;
}

enum { DTNH__BWD_FLIPPED, DTNH__BWD_SCATTER, DTNH__BWD_COL2IM };

/* The flipped convolution packs k*k*c_out rows of dY per column for only c_in rows of dX:
   with few input channels (a network's stem) unpacking dY plainly and col2im win. */
static int dtnh__backward_data_path(const dtnh_conv_geom *g) {
    if (g->stride == 1 && g->kh == g->kw && g->pad <= g->kh - 1 && g->c_in >= 16)
        return DTNH__BWD_FLIPPED;
    if (g->kh <= g->stride && g->kw <= g->stride) return DTNH__BWD_SCATTER;
    return DTNH__BWD_COL2IM;
}

/* The convolution that computes dX for stride 1: dY padded by k-1-pad, kernel flipped. */
static dtnh_conv_geom dtnh__flipped_geom(const dtnh_conv_geom *g) {
    dtnh_conv_geom f = *g;
    f.c_in = g->c_out;
    f.c_out = g->c_in;
    f.h = g->oh;
    f.w = g->ow;
    f.pad = g->kh - 1 - g->pad;
    f.oh = g->h;
    f.ow = g->w;
    return dtnh__flat_if_pointwise(&f);
}

static int dtnh__c2i_channels(const dtnh_conv_geom *g) {
    int c = DTNH__C2I_ROWS / (g->kh * g->kw);
    return c < 1 ? 1 : dtnh__kmin(c, g->c_in);
}

/* The plan of each pass; conv_work_bytes takes the largest, the passes use their own. */
static void dtnh__conv_plans(const dtnh_conv_geom *g, dtnh__plan *fwd, dtnh__plan *bwd_data,
                             dtnh__plan *bwd_w) {
    int kk = g->kh * g->kw, cols = g->n * g->oh * g->ow;
    dtnh__plan_make(g->c_out, cols, g->c_in * kk, 0, fwd);
    dtnh__plan_make(g->c_in * kk, g->c_out, cols, 0, bwd_w);
    switch (dtnh__backward_data_path(g)) {
    case DTNH__BWD_FLIPPED: dtnh__plan_make(g->c_in, g->n * g->h * g->w, g->c_out * kk, 0, bwd_data); break;
    case DTNH__BWD_SCATTER: dtnh__plan_make(g->c_in * kk, cols, g->c_out, 0, bwd_data); break;
    default: {
        int rows = dtnh__c2i_channels(g) * kk;
        int ncols = dtnh__kmin(cols, DTNH__C2I_COLS);
        dtnh__plan_make(rows, ncols, g->c_out, (size_t)rows * (size_t)dtnh__kround_up(ncols, DTNH__NR), bwd_data);
    }
    }
}

/* ---- Winograd F(4x4, 3x3) (opt-in: dtnh_conv_geom.winograd) --------------------------------
   For 3x3 stride-1 pad-1 convolutions whose channel counts are multiples of 16 (ResNet's 3x3
   layers): each 4x4 block of outputs ("tile") of one output channel is A^T [sum over input
   channels of U (.) V] A, with V = B^T d B the tile's 6x6 input patch and U = G g G^T the
   transformed 3x3 kernel (Lavin and Gray, 2016, points 0, +-1, +-2 and infinity). The 36
   frequencies are 36 independent GEMMs of (tiles x c_in) by (c_in x c_out): 36 multiply-adds
   per tile and channel pair where the direct kernel does 144. The transforms run 16 channels
   to a vector: an image's input planes are first turned into pixel-major rows of 16 channels
   (a 16x16 transpose), with a zero border; outputs come back the same way. Backward-data is
   the same pass over dY with the kernel rotated by 180 degrees and its two channel axes
   swapped. The order of additions differs from the direct kernel's: results differ by up to
   about 3e-5 of the largest output (bench_winograd), hence opt-in. Deterministic: each output
   is computed by one thread, in the same order for any thread count. Forward and
   backward-data split whole images between threads (a batch smaller than the thread count
   leaves some idle). AVX-512 only for now: elsewhere the flag is ignored (a portable version
   measured 0.5-0.9x the direct kernel with AVX2). */

#if defined(DTNH__AVX512)
static int dtnh__wino_ok(const dtnh_conv_geom *g) {
    return g->winograd && g->kh == 3 && g->kw == 3 && g->stride == 1 && g->pad == 1 && g->c_in % 16 == 0 &&
           g->c_out % 16 == 0;
}

/* Sixteen floats in a zmm register. */
typedef __m512 dtnh__f32x16;
static dtnh__f32x16 dtnh__f32x16_load(const float *p) { return _mm512_loadu_ps(p); }
static void dtnh__f32x16_store(float *p, dtnh__f32x16 a) { _mm512_storeu_ps(p, a); }
static dtnh__f32x16 dtnh__f32x16_add(dtnh__f32x16 a, dtnh__f32x16 b) { return _mm512_add_ps(a, b); }
static dtnh__f32x16 dtnh__f32x16_sub(dtnh__f32x16 a, dtnh__f32x16 b) { return _mm512_sub_ps(a, b); }
static dtnh__f32x16 dtnh__f32x16_fma(dtnh__f32x16 a, float s, dtnh__f32x16 b) { /* a * s + b */
    return _mm512_fmadd_ps(a, _mm512_set1_ps(s), b);
}
static dtnh__f32x16 dtnh__f32x16_scale(dtnh__f32x16 a, float s) { return _mm512_mul_ps(a, _mm512_set1_ps(s)); }
/* p[l * stride] for the 16 lanes */
static dtnh__f32x16 dtnh__f32x16_strided(const float *p, int stride) {
    const __m512i iota = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    /* the masked form: g++ warns on the plain one's undefined source */
    return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), (__mmask16)0xFFFF, _mm512_mullo_epi32(iota, _mm512_set1_epi32(stride)), p, 4);
}

/* o = B^T d for six values (one row or column of a patch). */
static void dtnh__wino_bt(const dtnh__f32x16 *d, dtnh__f32x16 *o) {
    dtnh__f32x16 a = dtnh__f32x16_fma(d[2], -4.0f, d[4]), b = dtnh__f32x16_fma(d[1], -4.0f, d[3]);
    dtnh__f32x16 c = dtnh__f32x16_sub(d[4], d[2]), e = dtnh__f32x16_scale(dtnh__f32x16_sub(d[3], d[1]), 2.0f);
    o[0] = dtnh__f32x16_fma(d[0], 4.0f, dtnh__f32x16_fma(d[2], -5.0f, d[4]));
    o[1] = dtnh__f32x16_add(a, b);
    o[2] = dtnh__f32x16_sub(a, b);
    o[3] = dtnh__f32x16_add(c, e);
    o[4] = dtnh__f32x16_sub(c, e);
    o[5] = dtnh__f32x16_fma(d[1], 4.0f, dtnh__f32x16_fma(d[3], -5.0f, d[5]));
}

/* o = A^T m: six frequencies to four outputs. */
static void dtnh__wino_at(const dtnh__f32x16 *m, dtnh__f32x16 *o) {
    dtnh__f32x16 p = dtnh__f32x16_add(m[1], m[2]), q = dtnh__f32x16_sub(m[1], m[2]);
    dtnh__f32x16 r = dtnh__f32x16_add(m[3], m[4]), u = dtnh__f32x16_sub(m[3], m[4]);
    o[0] = dtnh__f32x16_add(dtnh__f32x16_add(m[0], p), r);
    o[1] = dtnh__f32x16_fma(u, 2.0f, q);
    o[2] = dtnh__f32x16_fma(r, 4.0f, p);
    o[3] = dtnh__f32x16_add(dtnh__f32x16_fma(u, 8.0f, q), m[5]);
}

/* o = G g: three kernel taps to six frequencies. */
static void dtnh__wino_g(const dtnh__f32x16 *g, dtnh__f32x16 *o) {
    dtnh__f32x16 even = dtnh__f32x16_add(g[0], g[2]);
    dtnh__f32x16 q = dtnh__f32x16_fma(g[0], 0.25f, g[2]); /* g0 / 4 + g2: 6 (g0/24 + g2/6) */
    o[0] = dtnh__f32x16_scale(g[0], 0.25f);
    o[1] = dtnh__f32x16_scale(dtnh__f32x16_add(even, g[1]), -1.0f / 6.0f);
    o[2] = dtnh__f32x16_scale(dtnh__f32x16_sub(even, g[1]), -1.0f / 6.0f);
    o[3] = dtnh__f32x16_scale(dtnh__f32x16_fma(g[1], 0.5f, q), 1.0f / 6.0f);
    o[4] = dtnh__f32x16_scale(dtnh__f32x16_fma(g[1], -0.5f, q), 1.0f / 6.0f);
    o[5] = g[2];
}

/* A 1-D transform of n_in values (vectors of 16) into n_out: B^T, A^T, G, and A, G^T below. */
typedef void (*dtnh__wino_1d)(const dtnh__f32x16 *in, dtnh__f32x16 *out);

/* The 2-D transform T s T^T of an n_in x n_in block s (element (i, j) at src + i si + j sj)
   into the n_out x n_out block at dst (element (a, b) at dst + a da + b db): f along each row,
   then along each column. The tile transforms and dW's are these (timed as fast as the
   separate loops they replace, the same bits); the kernel's, which gathers its taps, is not
   (through this, 25% slower). */
static void dtnh__wino_2d(dtnh__wino_1d f, int n_in, int n_out, const float *src, size_t si, size_t sj, float *dst,
                          size_t da, size_t db) {
    dtnh__f32x16 d[6], t[6][6], o[6];
    int i, j;
    for (i = 0; i < n_in; i++) {
        for (j = 0; j < n_in; j++) d[j] = dtnh__f32x16_load(src + (size_t)i * si + (size_t)j * sj);
        f(d, t[i]);
    }
    for (j = 0; j < n_out; j++) {
        for (i = 0; i < n_in; i++) d[i] = t[i][j];
        f(d, o);
        for (i = 0; i < n_out; i++) dtnh__f32x16_store(dst + (size_t)i * da + (size_t)j * db, o[i]);
    }
}

/* V of one tile: the 6x6 patch of 16-channel pixels at src (rows pw pixels apart) to the 36
   frequencies, frequency xi at v + xi * vplane. */
static void dtnh__wino_in_tile(const float *src, int pw, float *v, size_t vplane) {
    dtnh__wino_2d(dtnh__wino_bt, 6, 6, src, (size_t)pw * 16, 16, v, 6 * vplane, vplane);
}

/* The 4x4 outputs of one tile for 16 channels, from the frequencies at m + xi * mplane, to
   16-channel pixels at dst (rows opw pixels apart). */
static void dtnh__wino_out_tile(const float *m, size_t mplane, float *dst, int opw) {
    dtnh__wino_2d(dtnh__wino_at, 6, 4, m, 6 * mplane, mplane, dst, (size_t)opw * 16, 16);
}

/* 16 channels of an image (h x w planes, plane floats apart) to 16-channel pixels, pixel
   (y, x) at dst[((y + 1) * pw + x + 1) * 16]: the zero border around them is left as it is. */
static void dtnh__wino_to_lanes(const float *x, size_t plane, int h, int w, int pw, float *dst) {
    int y, x0;
    for (y = 0; y < h; y++)
        for (x0 = 0; x0 < w; x0 += 16) {
            int n = dtnh__kmin(16, w - x0);
            dtnh__transpose16_part(x + (size_t)y * (size_t)w + (size_t)x0, plane, 16, n,
                                   dst + ((size_t)(y + 1) * (size_t)pw + (size_t)(x0 + 1)) * 16, 16, n);
        }
}

/* The reverse for the outputs: 16-channel pixel (y, x) at src[(y * opw + x) * 16] to 16 planes
   of h x w at out, plus bias (16 values, or NULL), added to what they hold when add. */
static void dtnh__wino_from_lanes(const float *src, int opw, int h, int w, const float *bias, int add,
                                  float *out, size_t plane) {
    int y, x0;
    float tmp[16 * 16];
    for (y = 0; y < h; y++)
        for (x0 = 0; x0 < w; x0 += 16) {
            int n = dtnh__kmin(16, w - x0), l;
            __mmask16 lanes = (__mmask16)((1u << n) - 1u);
            dtnh__transpose16_part(src + ((size_t)y * (size_t)opw + (size_t)x0) * 16, 16, n, 16, tmp, 16, 16);
            for (l = 0; l < 16; l++) {
                float *o = out + (size_t)l * plane + (size_t)y * (size_t)w + (size_t)x0;
                __m512 v = _mm512_loadu_ps(tmp + 16 * l);
                if (bias) v = _mm512_add_ps(v, _mm512_set1_ps(bias[l]));
                if (add) v = _mm512_add_ps(_mm512_maskz_loadu_ps(lanes, o), v);
                _mm512_mask_storeu_ps(o, lanes, v);
            }
        }
}

/* One pass: P input channels to Q output channels over h x w images, the tiles of `imgs`
   images at a time (a group: its V and M stay in L2). Backward-weights uses M's layout for Z. */
typedef struct dtnh__wino {
    int P, Q, h, w, th, tw, imgs, rows; /* rows: the largest group's tiles, rounded up to
                                           DTNH__WINO_ROWS */
    size_t uplane, vplane, mplane;      /* floats between frequencies in U, V and M */
    size_t u_floats, thread_floats;     /* U (shared), and (forward) each thread's V, M and
                                           two stagings */
} dtnh__wino;

#define DTNH__WINO_ROWS 8 /* a multiple of 8: the GEMM's tails (8 x 16 and 4 x 32) cover it */
#define DTNH__WINO_GROUP 524288      /* bytes of V and M a forward group aims at (L2) */
#define DTNH__WINO_DW_GROUP 2097152  /* backward-weights: fewer, longer sums into dU */

/* Floats of one image's staging: 16 channels of (4 th + 2) x (4 tw + 2) pixels, a zero border
   around the image. */
static size_t dtnh__wino_stage_floats(const dtnh__wino *W) {
    return (size_t)16 * (size_t)(4 * W->th + 2) * (size_t)(4 * W->tw + 2);
}

/* Pixel offset of tile t's first pixel in a staging whose rows are `pitch` pixels apart. */
static size_t dtnh__wino_tile(const dtnh__wino *W, int t, int pitch) {
    return (size_t)(4 * (t / W->tw)) * (size_t)pitch + (size_t)(4 * (t % W->tw));
}

/* A group's V and M take about group_bytes, or U's size where U is larger (each group reads
   all of U: 512 channels at 4x4 streamed 38 MB per group and ran slower than the direct
   kernel); groups are at most n / threads images, so that each thread has one. */
static void dtnh__wino_make(int P, int Q, int h, int w, int n, int threads, size_t group_bytes, dtnh__wino *W) {
    int tpi, fit, share;
    if (threads < 1) threads = 1;
    share = (n + threads - 1) / threads;
    W->P = P;
    W->Q = Q;
    W->h = h;
    W->w = w;
    W->th = (h + 3) / 4;
    W->tw = (w + 3) / 4;
    tpi = W->th * W->tw;
    W->uplane = (size_t)P * (size_t)Q + 16; /* 64 bytes more: at 128 channels, 36 stores 64 KiB
                                               apart shared an L1 set (U took 340 us, now 48) */
    W->u_floats = 36 * W->uplane;
    if (W->u_floats * sizeof(float) > group_bytes) group_bytes = W->u_floats * sizeof(float);
    fit = (int)(group_bytes / (36 * sizeof(float) * (size_t)(P + Q)));
    W->imgs = dtnh__kmin(share, fit / tpi < 1 ? 1 : fit / tpi);
    W->rows = dtnh__kround_up(W->imgs * tpi, DTNH__WINO_ROWS);
    W->vplane = (size_t)W->rows * (size_t)P + 16; /* likewise: frequencies not 4 KiB apart */
    W->mplane = (size_t)W->rows * (size_t)Q + 16;
    W->thread_floats = 36 * (W->vplane + W->mplane) + dtnh__wino_stage_floats(W) + (size_t)16 * (size_t)(16 * tpi);
}

static size_t dtnh__wino_bytes(const dtnh__wino *W, int threads) {
    return 64 + sizeof(float) * (W->u_floats + (size_t)(threads < 1 ? 1 : threads) * W->thread_floats);
}

/* U[xi][p][q] = (G g G^T)[xi] for the kernel g from input channel p to output channel q: w's
   [q][p] (forward), or w's [p][q] rotated by 180 degrees (backward-data, P = c_out). */
static void dtnh__wino_weights(const dtnh__wino *W, const float *w, int flipped, float *u, int threads) {
    int P = W->P, Q = W->Q, p;
    (void)threads; /* used only by the pragma */
    DTNH__OMP(parallel for num_threads(threads) if (threads > 1 && P * Q >= 4096))
    for (p = 0; p < P; p++) {
        int q0, i, j;
        for (q0 = 0; q0 < Q; q0 += 16) {
            dtnh__f32x16 g[3][3], t[3][6], col[3], o[6];
            for (i = 0; i < 3; i++)
                for (j = 0; j < 3; j++)
                    g[i][j] = flipped ? dtnh__f32x16_strided(w + ((size_t)p * Q + (size_t)q0) * 9 + (size_t)((2 - i) * 3 + 2 - j), 9)
                                      : dtnh__f32x16_strided(w + ((size_t)q0 * P + (size_t)p) * 9 + (size_t)(i * 3 + j), P * 9);
            for (i = 0; i < 3; i++) dtnh__wino_g(g[i], t[i]);
            for (j = 0; j < 6; j++) {
                for (i = 0; i < 3; i++) col[i] = t[i][j];
                dtnh__wino_g(col, o);
                for (i = 0; i < 6; i++)
                    dtnh__f32x16_store(u + (size_t)(i * 6 + j) * W->uplane + (size_t)p * Q + (size_t)q0, o[i]);
            }
        }
    }
}

/* c[R][16 or 32] (+)= A[R][kn] b[kn][16 or 32] for R rows (24, 12, 8, 4; 16 and 8 in
   backward-weights), the accumulators named one by one so that they stay in registers (arrays
   of them were kept in memory). DTNH__WA(r) is A's element (r, k): a row of `a`, or in
   backward-weights a column. */
#define DTNH__WZ1(r) __m512 c##r##0 = _mm512_setzero_ps()
#define DTNH__WZ2(r) __m512 c##r##0 = _mm512_setzero_ps(), c##r##1 = c##r##0
#define DTNH__WC1(r) __m512 c##r##0 = _mm512_loadu_ps(c + (size_t)(r) * (size_t)ldc)
#define DTNH__WC2(r) DTNH__WC1(r), c##r##1 = _mm512_loadu_ps(c + (size_t)(r) * (size_t)ldc + 16)
#define DTNH__WF1(r)                                                                               \
    do {                                                                                           \
        __m512 a_ = _mm512_set1_ps(DTNH__WA(r));                                                   \
        c##r##0 = _mm512_fmadd_ps(a_, b0, c##r##0);                                                \
    } while (0)
#define DTNH__WF2(r)                                                                               \
    do {                                                                                           \
        __m512 a_ = _mm512_set1_ps(DTNH__WA(r));                                                   \
        c##r##0 = _mm512_fmadd_ps(a_, b0, c##r##0);                                                \
        c##r##1 = _mm512_fmadd_ps(a_, b1, c##r##1);                                                \
    } while (0)
#define DTNH__WS1(r) _mm512_storeu_ps(c + (size_t)(r) * (size_t)ldc, c##r##0)
#define DTNH__WS2(r) (DTNH__WS1(r), _mm512_storeu_ps(c + (size_t)(r) * (size_t)ldc + 16, c##r##1))
#define DTNH__W12(X) X(0); X(1); X(2); X(3); X(4); X(5); X(6); X(7); X(8); X(9); X(10); X(11)
#define DTNH__W24(X) DTNH__W12(X); X(12); X(13); X(14); X(15); X(16); X(17); X(18); X(19); X(20); X(21); X(22); X(23)

#define DTNH__W4(X) X(0); X(1); X(2); X(3)
#define DTNH__W8(X) DTNH__W4(X); X(4); X(5); X(6); X(7)
#define DTNH__W16(X) DTNH__W8(X); X(8); X(9); X(10); X(11); X(12); X(13); X(14); X(15)
#define DTNH__WINO_MM(name, ROWS, Z, F, S, LOAD)                                                    \
    static void name(int kn, const float *DTNH__RESTRICT a, int lda, const float *DTNH__RESTRICT b, \
                     int ldb, float *DTNH__RESTRICT c, int ldc) {                                  \
        int k;                                                                                     \
        ROWS(Z);                                                                                   \
        for (k = 0; k < kn; k++) {                                                                 \
            const float *b_ = b + (size_t)k * (size_t)ldb;                                         \
            LOAD;                                                                                  \
            ROWS(F);                                                                               \
        }                                                                                          \
        ROWS(S);                                                                                   \
    }
#define DTNH__WL1 __m512 b0 = _mm512_loadu_ps(b_)
#define DTNH__WL2 __m512 b0 = _mm512_loadu_ps(b_), b1 = _mm512_loadu_ps(b_ + 16)
/* The forward's: A is a (V), c (M) is overwritten. */
#define DTNH__WA(r) a[(size_t)(r) * (size_t)lda + (size_t)k]
DTNH__WINO_MM(dtnh__wino_mm24x16, DTNH__W24, DTNH__WZ1, DTNH__WF1, DTNH__WS1, DTNH__WL1)
DTNH__WINO_MM(dtnh__wino_mm8x16, DTNH__W8, DTNH__WZ1, DTNH__WF1, DTNH__WS1, DTNH__WL1)
DTNH__WINO_MM(dtnh__wino_mm12x32, DTNH__W12, DTNH__WZ2, DTNH__WF2, DTNH__WS2, DTNH__WL2)
DTNH__WINO_MM(dtnh__wino_mm4x32, DTNH__W4, DTNH__WZ2, DTNH__WF2, DTNH__WS2, DTNH__WL2)
#undef DTNH__WA
/* Backward-weights': A is a (Z) transposed, and c (dU) is added to. */
#define DTNH__WA(r) a[(size_t)k * (size_t)lda + (size_t)(r)]
DTNH__WINO_MM(dtnh__wino_tn16x16, DTNH__W16, DTNH__WC1, DTNH__WF1, DTNH__WS1, DTNH__WL1)
DTNH__WINO_MM(dtnh__wino_tn8x32, DTNH__W8, DTNH__WC2, DTNH__WF2, DTNH__WS2, DTNH__WL2)
#undef DTNH__WA
#undef DTNH__WINO_MM
#undef DTNH__WL1
#undef DTNH__WL2
#undef DTNH__W4
#undef DTNH__W8
#undef DTNH__W16
#undef DTNH__WZ1
#undef DTNH__WZ2
#undef DTNH__WC1
#undef DTNH__WC2
#undef DTNH__WF1
#undef DTNH__WF2
#undef DTNH__WS1
#undef DTNH__WS2
#undef DTNH__W12
#undef DTNH__W24

/* M of one frequency: m[rows][Q] = v[rows][P] u[P][Q]. */
static void dtnh__wino_gemm(const dtnh__wino *W, int rows, const float *v, const float *u, float *m) {
    int P = W->P, Q = W->Q, t0, q0;
    if (Q % 32 == 0) { /* 12 x 32 tiles, then 4 x 32 (rows is a multiple of 8) */
        for (q0 = 0; q0 < Q; q0 += 32) {
            for (t0 = 0; t0 + 12 <= rows; t0 += 12)
                dtnh__wino_mm12x32(P, v + (size_t)t0 * P, P, u + q0, Q, m + (size_t)t0 * Q + q0, Q);
            for (; t0 < rows; t0 += 4)
                dtnh__wino_mm4x32(P, v + (size_t)t0 * P, P, u + q0, Q, m + (size_t)t0 * Q + q0, Q);
        }
    } else { /* 24 x 16, then 8 x 16 */
        for (q0 = 0; q0 < Q; q0 += 16) {
            for (t0 = 0; t0 + 24 <= rows; t0 += 24)
                dtnh__wino_mm24x16(P, v + (size_t)t0 * P, P, u + q0, Q, m + (size_t)t0 * Q + q0, Q);
            for (; t0 < rows; t0 += 8)
                dtnh__wino_mm8x16(P, v + (size_t)t0 * P, P, u + q0, Q, m + (size_t)t0 * Q + q0, Q);
        }
    }
}

/* V of image img's tiles (x's P channels, staged 16 at a time through xs), from row row0. */
static void dtnh__wino_image_in(const dtnh__wino *W, const float *x, int img, int row0, float *v, float *xs) {
    int tpi = W->th * W->tw, pw = 4 * W->tw + 2, cb, t;
    size_t plane = (size_t)W->h * (size_t)W->w;
    for (cb = 0; cb < W->P; cb += 16) {
        dtnh__wino_to_lanes(x + ((size_t)img * W->P + (size_t)cb) * plane, plane, W->h, W->w, pw, xs);
        for (t = 0; t < tpi; t++)
            dtnh__wino_in_tile(xs + dtnh__wino_tile(W, t, pw) * 16, pw, v + (size_t)(row0 + t) * W->P + (size_t)cb,
                               W->vplane);
    }
}

/* Images [i0, i1): their tiles' V, the 36 products, the outputs. */
static void dtnh__wino_group(const dtnh__wino *W, const float *x, const float *u, const float *bias, float *y,
                             int add, int i0, int i1, float *buf) {
    int tpi = W->th * W->tw, opw = 4 * W->tw, img, cb, t, xi;
    int used = (i1 - i0) * tpi, rows = dtnh__kround_up(used, DTNH__WINO_ROWS);
    size_t plane = (size_t)W->h * (size_t)W->w;
    float *v = buf, *m = v + 36 * W->vplane, *xs = m + 36 * W->mplane, *os = xs + dtnh__wino_stage_floats(W);
    for (img = i0; img < i1; img++) dtnh__wino_image_in(W, x, img, (img - i0) * tpi, v, xs);
    for (xi = 0; xi < 36; xi++) { /* the spare rows zero, not stale or never written */
        memset(v + (size_t)xi * W->vplane + (size_t)used * W->P, 0, (size_t)(rows - used) * W->P * sizeof(float));
        dtnh__wino_gemm(W, rows, v + (size_t)xi * W->vplane, u + (size_t)xi * W->uplane, m + (size_t)xi * W->mplane);
    }
    for (img = i0; img < i1; img++)
        for (cb = 0; cb < W->Q; cb += 16) {
            for (t = 0; t < tpi; t++)
                dtnh__wino_out_tile(m + (size_t)((img - i0) * tpi + t) * W->Q + (size_t)cb, W->mplane,
                                    os + dtnh__wino_tile(W, t, opw) * 16, opw);
            dtnh__wino_from_lanes(os, opw, W->h, W->w, bias ? bias + cb : NULL, add,
                                  y + ((size_t)img * W->Q + (size_t)cb) * plane, plane);
        }
}

/* y (+)= the convolution of x's n images by w, through W; work from dtnh__wino_bytes. */
static void dtnh__wino_run(const dtnh__wino *W, int n, const float *x, const float *w, int flipped,
                           const float *bias, float *y, int add, const dtnh_work *work) {
    float *base = (float *)(((uintptr_t)work->buf + 63) / 64 * 64);
    int groups = (n + W->imgs - 1) / W->imgs, T = dtnh__kmin(work->threads, dtnh_threads());
    size_t fit;
    DTNH_ASSERT(work->buf && work->bytes >= dtnh__wino_bytes(W, 1)); /* sized with winograd set */
    fit = ((work->bytes - 64) / sizeof(float) - W->u_floats) / W->thread_floats;
    if ((size_t)T > fit) T = (int)fit;
    T = dtnh__kmin(T, groups);
    if (T < 1) T = 1;
    dtnh__wino_weights(W, w, flipped, base, T);
    DTNH__OMP(parallel num_threads(T) if (T > 1))
    {
        int t = dtnh__omp_thread(), nt = dtnh__omp_team(), lo, hi, g;
        float *buf = base + W->u_floats + (size_t)t * W->thread_floats;
        float *xs = buf + 36 * (W->vplane + W->mplane);
        memset(xs, 0, dtnh__wino_stage_floats(W) * sizeof(float)); /* its border */
        dtnh__share(groups, 1, t, nt, &lo, &hi);
        for (g = lo; g < hi; g++)
            dtnh__wino_group(W, x, base, bias, y, add, g * W->imgs, dtnh__kmin(n, (g + 1) * W->imgs), buf);
    }
}

/* ---- Winograd backward-weights -------------------------------------------------------------
   The forward's adjoint: dU[xi][co][ci] = sum over tiles of Z[xi][co] V[xi][ci], with V the
   forward's input frequencies and Z = A dY A^T the tile's 4x4 output gradients taken to the 36
   frequencies; then dW = G^T dU G. Groups of images run in order; in each, the threads first
   transform their share of the images, then each adds the products of its own frequencies:
   every sum runs in the same order for any thread count. */

/* o = A y: four output gradients to six frequencies (A is A^T's transpose). */
static void dtnh__wino_a(const dtnh__f32x16 *y, dtnh__f32x16 *o) {
    dtnh__f32x16 even = dtnh__f32x16_add(y[0], y[2]), odd = dtnh__f32x16_add(y[1], y[3]);
    dtnh__f32x16 even4 = dtnh__f32x16_fma(y[2], 4.0f, y[0]), odd4 = dtnh__f32x16_fma(y[3], 4.0f, y[1]);
    o[0] = y[0];
    o[1] = dtnh__f32x16_add(even, odd);
    o[2] = dtnh__f32x16_sub(even, odd);
    o[3] = dtnh__f32x16_fma(odd4, 2.0f, even4); /* y0 + 2 y1 + 4 y2 + 8 y3 */
    o[4] = dtnh__f32x16_fma(odd4, -2.0f, even4);
    o[5] = y[3];
}

/* o = G^T u: six frequencies to three taps. */
static void dtnh__wino_gt(const dtnh__f32x16 *u, dtnh__f32x16 *o) {
    dtnh__f32x16 s = dtnh__f32x16_add(u[1], u[2]), d = dtnh__f32x16_sub(u[1], u[2]);
    dtnh__f32x16 s2 = dtnh__f32x16_add(u[3], u[4]), d2 = dtnh__f32x16_sub(u[3], u[4]);
    o[0] = dtnh__f32x16_fma(u[0], 0.25f, dtnh__f32x16_fma(s2, 1.0f / 24.0f, dtnh__f32x16_scale(s, -1.0f / 6.0f)));
    o[1] = dtnh__f32x16_fma(d2, 1.0f / 12.0f, dtnh__f32x16_scale(d, -1.0f / 6.0f));
    o[2] = dtnh__f32x16_fma(dtnh__f32x16_sub(s2, s), 1.0f / 6.0f, u[5]);
}

/* Z of one tile: the 4x4 gradients of 16 channels at src (16-channel pixels, rows pw apart)
   to the 36 frequencies at z + xi * zplane. */
static void dtnh__wino_grad_tile(const float *src, int pw, float *z, size_t zplane) {
    dtnh__wino_2d(dtnh__wino_a, 4, 6, src, (size_t)pw * 16, 16, z, 6 * zplane, zplane);
}

/* Bytes: dU, one group's V and Z (shared), and each thread's two stagings. */
static size_t dtnh__wino_dw_bytes(const dtnh__wino *W, int threads) {
    size_t shared = W->u_floats + 36 * (W->vplane + W->mplane);
    return 64 + sizeof(float) * (shared + (size_t)(threads < 1 ? 1 : threads) * 2 * dtnh__wino_stage_floats(W));
}

/* V and Z of image img (the group's img0-th), staged through xs and ys. */
static void dtnh__wino_dw_image(const dtnh__wino *W, const float *x, const float *dy, int img, int img0,
                                float *v, float *z, float *xs, float *ys) {
    int tpi = W->th * W->tw, pw = 4 * W->tw + 2, cb, t;
    size_t plane = (size_t)W->h * (size_t)W->w;
    dtnh__wino_image_in(W, x, img, img0 * tpi, v, xs);
    for (cb = 0; cb < W->Q; cb += 16) { /* staged like x: tile (ty, tx) starts at (4 ty + 1, 4 tx + 1) */
        dtnh__wino_to_lanes(dy + ((size_t)img * W->Q + (size_t)cb) * plane, plane, W->h, W->w, pw, ys);
        for (t = 0; t < tpi; t++)
            dtnh__wino_grad_tile(ys + (dtnh__wino_tile(W, t, pw) + (size_t)pw + 1) * 16, pw,
                                 z + (size_t)(img0 * tpi + t) * W->Q + (size_t)cb, W->mplane);
    }
}

/* du[co][ci] += sum over `tiles` of z[t][co] v[t][ci], one frequency. */
static void dtnh__wino_dgemm(const dtnh__wino *W, int tiles, const float *z, const float *v, float *du) {
    int P = W->P, Q = W->Q, co, ci;
    if (P % 32 == 0) {
        for (co = 0; co < Q; co += 8)
            for (ci = 0; ci < P; ci += 32) dtnh__wino_tn8x32(tiles, z + co, Q, v + ci, P, du + (size_t)co * P + ci, P);
    } else {
        for (co = 0; co < Q; co += 16)
            for (ci = 0; ci < P; ci += 16) dtnh__wino_tn16x16(tiles, z + co, Q, v + ci, P, du + (size_t)co * P + ci, P);
    }
}

/* dw (+)= G^T dU G for output channel co. */
static void dtnh__wino_dw_out(const dtnh__wino *W, const float *du, float *dw, int accumulate, int co) {
    int P = W->P, ci, k, l;
    for (ci = 0; ci < P; ci += 16) {
        float taps[9 * 16];
        dtnh__wino_2d(dtnh__wino_gt, 6, 3, du + (size_t)co * P + (size_t)ci, 6 * W->uplane, W->uplane, taps, 3 * 16, 16);
        for (l = 0; l < 16; l++)
            for (k = 0; k < 9; k++) {
                float *o_ = dw + ((size_t)co * P + (size_t)(ci + l)) * 9 + (size_t)k;
                *o_ = accumulate ? *o_ + taps[k * 16 + l] : taps[k * 16 + l];
            }
    }
}

static void dtnh__wino_backward_weights(const dtnh_conv_geom *g, const float *x, const float *dy, float *dw,
                                        int accumulate, const dtnh_work *work) {
    dtnh__wino W;
    float *du, *v, *z, *stage;
    int groups, T = dtnh__kmin(work->threads, dtnh_threads()), co;
    size_t sf;
    dtnh__wino_make(g->c_in, g->c_out, g->h, g->w, g->n, 1, DTNH__WINO_DW_GROUP, &W);
    sf = dtnh__wino_stage_floats(&W);
    DTNH_ASSERT(work->buf && work->bytes >= dtnh__wino_dw_bytes(&W, 1));
    while (T > 1 && dtnh__wino_dw_bytes(&W, T) > work->bytes) T--;
    groups = (g->n + W.imgs - 1) / W.imgs;
    du = (float *)(((uintptr_t)work->buf + 63) / 64 * 64);
    v = du + W.u_floats;
    z = v + 36 * W.vplane;
    stage = z + 36 * W.mplane;
    memset(du, 0, W.u_floats * sizeof(float));
    DTNH__OMP(parallel num_threads(T) if (T > 1))
    {
        int t = dtnh__omp_thread(), nt = dtnh__omp_team(), xlo, xhi, gi, xi;
        float *xs = stage + (size_t)t * 2 * sf, *ys = xs + sf;
        memset(xs, 0, 2 * sf * sizeof(float)); /* the zero borders */
        dtnh__share(36, 1, t, nt, &xlo, &xhi);
        for (gi = 0; gi < groups; gi++) {
            int i0 = gi * W.imgs, i1 = dtnh__kmin(g->n, i0 + W.imgs), lo, hi, img;
            dtnh__share(i1 - i0, 1, t, nt, &lo, &hi);
            for (img = i0 + lo; img < i0 + hi; img++) dtnh__wino_dw_image(&W, x, dy, img, img - i0, v, z, xs, ys);
            DTNH__OMP(barrier)
            for (xi = xlo; xi < xhi; xi++)
                dtnh__wino_dgemm(&W, (i1 - i0) * W.th * W.tw, z + (size_t)xi * W.mplane, v + (size_t)xi * W.vplane,
                                 du + (size_t)xi * W.uplane);
            DTNH__OMP(barrier)
        }
    }
    DTNH__OMP(parallel for num_threads(T) if (T > 1))
    for (co = 0; co < g->c_out; co++) dtnh__wino_dw_out(&W, du, dw, accumulate, co);
}
#endif

DTNHDEF size_t dtnh_conv_work_bytes(const dtnh_conv_geom *g, int threads) {
    dtnh__plan f, d, w;
    size_t most;
    dtnh__conv_plans(g, &f, &d, &w);
    most = f.thread_bytes > d.thread_bytes ? f.thread_bytes : d.thread_bytes;
    if (w.thread_bytes > most) most = w.thread_bytes;
    most = dtnh__work_total(most, threads);
#if defined(DTNH__AVX512)
    if (dtnh__wino_ok(g)) {
        dtnh__wino forward, backward, weights;
        dtnh__wino_make(g->c_in, g->c_out, g->h, g->w, g->n, threads, DTNH__WINO_GROUP, &forward);
        dtnh__wino_make(g->c_out, g->c_in, g->h, g->w, g->n, threads, DTNH__WINO_GROUP, &backward);
        dtnh__wino_make(g->c_in, g->c_out, g->h, g->w, g->n, 1, DTNH__WINO_DW_GROUP, &weights);
        if (dtnh__wino_dw_bytes(&weights, threads) > most) most = dtnh__wino_dw_bytes(&weights, threads);
        if (dtnh__wino_bytes(&forward, threads) > most) most = dtnh__wino_bytes(&forward, threads);
        if (dtnh__wino_bytes(&backward, threads) > most) most = dtnh__wino_bytes(&backward, threads);
    }
#endif
    return most;
}

static void dtnh__zero_parallel(float *x, size_t n) {
    long chunks = (long)((n + 65535) / 65536), c;
    DTNH__OMP(parallel for schedule(static) if (chunks > 4))
    for (c = 0; c < chunks; c++) {
        size_t lo = (size_t)c * 65536, len = n - lo < 65536 ? n - lo : 65536;
        memset(x + lo, 0, len * sizeof(float));
    }
}

DTNHDEF void dtnh_conv2d_forward(const dtnh_conv_geom *g, const float *x, const float *w,
                                 const float *bias, float *y, const dtnh_work *work) {
    dtnh__gemm G;
    dtnh_conv_geom f = dtnh__flat_if_pointwise(g);
#if defined(DTNH__AVX512)
    if (dtnh__wino_ok(g)) {
        dtnh__wino W;
        dtnh__wino_make(g->c_in, g->c_out, g->h, g->w, g->n, work->threads, DTNH__WINO_GROUP, &W);
        dtnh__wino_run(&W, g->n, x, w, 0, bias, y, 0, work);
        return;
    }
#endif
    G.M = g->c_out;
    G.N = g->n * g->oh * g->ow;
    G.K = g->c_in * g->kh * g->kw;
    G.alpha = 1.0f;
    G.beta = 0.0f;
    G.bias = bias;
    G.a = dtnh__view_plain(DTNH__ROWS, w, (size_t)G.K);
    G.b = dtnh__view_conv(DTNH__IM2COL, x, &f);
    G.c = dtnh__view_folded(DTNH__FOLDED, y, g->c_out, g->oh * g->ow);
    dtnh__gemm_run(&G, work);
}

/* dbias (+)= the sum of dy over images and pixels, per channel (nothing when dbias is NULL). */
static void dtnh__conv_bias_grad(const dtnh_conv_geom *g, const float *dy, float *dbias, int accumulate) {
    int ohw = g->oh * g->ow, co;
    if (!dbias) return;
    DTNH__OMP(parallel for schedule(static) if ((double)g->c_out * g->n * ohw > DTNH__PAR_MADDS))
    for (co = 0; co < g->c_out; co++) {
        double s = 0;
        int img, px;
        for (img = 0; img < g->n; img++) {
            const float *d = dy + ((size_t)img * g->c_out + (size_t)co) * (size_t)ohw;
            for (px = 0; px < ohw; px++) s += d[px];
        }
        dbias[co] = accumulate ? dbias[co] + (float)s : (float)s;
    }
}

DTNHDEF void dtnh_conv2d_backward_weights(const dtnh_conv_geom *g, const float *x,
                                          const float *dy, float *dw, float *dbias,
                                          int accumulate, const dtnh_work *work) {
    dtnh__gemm G;
    dtnh_conv_geom f = dtnh__flat_if_pointwise(g);
    int ohw = g->oh * g->ow;
#if defined(DTNH__AVX512)
    if (dtnh__wino_ok(g)) {
        dtnh__wino_backward_weights(g, x, dy, dw, accumulate, work);
        dtnh__conv_bias_grad(g, dy, dbias, accumulate);
        return;
    }
#endif
    G.M = g->c_in * g->kh * g->kw;
    G.N = g->c_out;
    G.K = g->n * ohw;
    G.alpha = 1.0f;
    G.beta = accumulate ? 1.0f : 0.0f;
    G.bias = NULL;
    G.a = dtnh__view_conv(DTNH__IM2COL, x, &f);
    G.b = dtnh__view_folded(DTNH__FOLDED_T, dy, g->c_out, ohw);
    G.c = dtnh__view_plain(DTNH__COLS, dw, (size_t)G.M);
    dtnh__gemm_run(&G, work);
    dtnh__conv_bias_grad(g, dy, dbias, accumulate);
}

#if defined(DTNH__AVX512)
/* d[2 q] += src[q] for q < n, sixteen at a time: each element still gets one addition, so
   every pixel of dX sees its additions in the same order as the scalar loop's. */
static void dtnh__add_even(float *d, const float *src, int n) {
    const __m512i lo = _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
    const __m512i hi = _mm512_set_epi32(15, 15, 14, 14, 13, 13, 12, 12, 11, 11, 10, 10, 9, 9, 8, 8);
    int q;
    for (q = 0; q < n; q += 16, d += 32) {
        int r = dtnh__kmin(16, n - q), r0 = dtnh__kmin(8, r), r1 = r - r0;
        __mmask16 m0 = (__mmask16)(0x5555u & ((1u << (2 * r0)) - 1u));
        __mmask16 m1 = (__mmask16)(0x5555u & ((1u << (2 * r1)) - 1u));
        __m512 s = _mm512_maskz_loadu_ps((__mmask16)((1u << r) - 1u), src + q);
        _mm512_mask_storeu_ps(d, m0, _mm512_add_ps(_mm512_maskz_loadu_ps(m0, d), _mm512_permutex2var_ps(s, lo, s)));
        if (m1)
            _mm512_mask_storeu_ps(d + 16, m1,
                                  _mm512_add_ps(_mm512_maskz_loadu_ps(m1, d + 16), _mm512_permutex2var_ps(s, hi, s)));
    }
}

/* dtnh__col2im_add for stride 2: the same loops (rows, then output rows in column order), the
   output rows stepped through by hand and each added by dtnh__add_even. (The same body inside
   dtnh__col2im_add's dtnh__runs loop measured 20-25% slower on (c)'s three stride-2 layers.) */
static void dtnh__col2im_add_s2(const dtnh_conv_geom *g, const float *t, size_t ld, int m_lo,
                                int m_hi, int n_lo, int n_hi, float *dx) {
    int kk = g->kh * g->kw, ohw = g->oh * g->ow, m;
    for (m = m_lo; m < m_hi; m++, t += ld) {
        int c = m / kk, i = m % kk / g->kw, j = m % g->kw;
        int img = n_lo / ohw, oy = n_lo % ohw / g->ow, ox = n_lo % g->ow, col = n_lo;
        const float *src = t;
        while (col < n_hi) {
            int len = dtnh__kmin(g->ow - ox, n_hi - col), iy = 2 * oy - g->pad + i;
            if (iy >= 0 && iy < g->h) {
                int ix0 = 2 * ox - g->pad + j, lo = ix0 < 0 ? (1 - ix0) / 2 : 0;
                int hi = dtnh__kmin(len, (g->w - ix0 + 1) / 2); /* ix0 + 2 q < w */
                float *d = dx + (((size_t)img * g->c_in + (size_t)c) * g->h + (size_t)iy) * g->w;
                if (hi > lo) dtnh__add_even(d + ix0 + 2 * lo, src + lo, hi - lo);
            }
            src += len;
            col += len;
            ox += len;
            if (ox == g->ow) {
                ox = 0;
                if (++oy == g->oh) oy = 0, img++;
            }
        }
    }
}
#endif

/* Adds W^T.dY tile rows [m_lo, m_hi) (whole channels) x columns [n_lo, n_hi), held in t with
   row stride ld, into dX: the adjoint of im2col, in a fixed order. */
static void dtnh__col2im_add(const dtnh_conv_geom *g, const float *t, size_t ld, int m_lo,
                             int m_hi, int n_lo, int n_hi, float *dx) {
    int kk = g->kh * g->kw, s = g->stride, m;
#if defined(DTNH__AVX512)
    if (s == 2) {
        dtnh__col2im_add_s2(g, t, ld, m_lo, m_hi, n_lo, n_hi, dx);
        return;
    }
#endif
    for (m = m_lo; m < m_hi; m++, t += ld) {
        int c = m / kk, i = m % kk / g->kw, j = m % g->kw;
        dtnh__runs w;
        dtnh__runs_start(&w, g->ow, g->oh * g->ow, n_lo, n_hi, 0);
        for (; dtnh__runs_next(&w, n_lo); dtnh__runs_advance(&w)) {
            int iy = w.oy * s - g->pad + i, ix0 = w.ox * s - g->pad + j, lo, hi, q;
            const float *src = t + (w.col - n_lo);
            float *d;
            if (iy < 0 || iy >= g->h) continue;
            d = dx + (((size_t)w.img * g->c_in + (size_t)c) * g->h + (size_t)iy) * g->w;
            lo = ix0 < 0 ? (-ix0 + s - 1) / s : 0;
            hi = g->w - ix0 > 0 ? (g->w - ix0 + s - 1) / s : 0;
            if (hi > w.len) hi = w.len;
            for (q = lo; q < hi; q++) d[ix0 + q * s] += src[q];
        }
    }
}

static void dtnh__backward_data_col2im(const dtnh_conv_geom *g, const float *dy, const float *w,
                                       float *dx, int add, const dtnh_work *work) {
    dtnh__plan F, P, W;
    dtnh__gemm G;
    dtnh_conv_geom dyg = dtnh__plane_geom(g->n, g->c_out, g->oh * g->ow);
    int kk = g->kh * g->kw, cpc = dtnh__c2i_channels(g), chunks = (g->c_in + cpc - 1) / cpc, T;
    dtnh__conv_plans(g, &F, &P, &W);
    G.M = g->c_in * kk;
    G.N = g->n * g->oh * g->ow;
    G.K = g->c_out;
    G.alpha = 1.0f;
    G.beta = 0.0f;
    G.bias = NULL;
    G.a = dtnh__view_plain(DTNH__COLS, w, (size_t)G.M);
    G.b = dtnh__view_conv(DTNH__IM2COL, dy, &dyg);
    T = dtnh__threads_for(work, P.thread_bytes, (double)G.M * G.N * G.K);
    /* Threads own whole chunks of channels: a multiple of T of them, for balance (16 channels
       made one chunk, so one thread). Chunks group whole channels, and every addition into a
       pixel of dX comes from its own channel's rows, so the split leaves the bits alone. */
    chunks = (chunks + T - 1) / T * T;
    cpc = (g->c_in + chunks - 1) / chunks;
    chunks = (g->c_in + cpc - 1) / cpc;
    DTNH_ASSERT(work->bytes >= P.thread_bytes + 64 && work->buf);
    if (!add) dtnh__zero_parallel(dx, (size_t)g->n * g->c_in * g->h * g->w);
    DTNH__OMP(parallel num_threads(T) if (T > 1))
    {
        int t = dtnh__omp_thread(), nt = dtnh__omp_team(), ch, col;
        float *abuf = dtnh__thread_buf(work, &P, t), *bbuf = abuf + P.a_floats;
        float *tile = bbuf + P.b_floats;
        dtnh__gemm Gt = G;
        Gt.c = dtnh__view_plain(DTNH__ROWS, tile, (size_t)P.nc);
        /* Threads own whole channels of dX, so no two add to one pixel. */
        for (ch = t; ch < chunks; ch += nt) {
            int m_lo = ch * cpc * kk, m_hi = dtnh__kmin(g->c_in, (ch + 1) * cpc) * kk;
            for (col = 0; col < G.N; col += DTNH__C2I_COLS) {
                int n_hi = dtnh__kmin(G.N, col + DTNH__C2I_COLS);
                Gt.c.row0 = m_lo;
                Gt.c.col0 = col;
                dtnh__gemm_range(&Gt, &P, m_lo, m_hi, col, n_hi, abuf, bbuf);
                dtnh__col2im_add(g, tile, (size_t)P.nc, m_lo, m_hi, col, n_hi, dx);
            }
        }
    }
}

/* dx = (add ? dx : 0) + the gradient. */
static void dtnh__backward_data(const dtnh_conv_geom *g, const float *dy, const float *w, float *dx,
                                int add, const dtnh_work *work) {
    dtnh__gemm G;
    int path = dtnh__backward_data_path(g), kk = g->kh * g->kw;
#if defined(DTNH__AVX512)
    if (dtnh__wino_ok(g)) {
        dtnh__wino W;
        dtnh__wino_make(g->c_out, g->c_in, g->h, g->w, g->n, work->threads, DTNH__WINO_GROUP, &W);
        dtnh__wino_run(&W, g->n, dy, w, 1, NULL, dx, add, work);
        return;
    }
#endif
    if (path == DTNH__BWD_COL2IM) {
        dtnh__backward_data_col2im(g, dy, w, dx, add, work);
        return;
    }
    G.alpha = 1.0f;
    G.beta = add ? 1.0f : 0.0f;
    G.bias = NULL;
    if (path == DTNH__BWD_FLIPPED) {
        dtnh_conv_geom f = dtnh__flipped_geom(g);
        G.M = g->c_in;
        G.N = g->n * g->h * g->w;
        G.K = g->c_out * kk;
        G.a = dtnh__view_conv(DTNH__FLIPPED, w, g);
        G.b = dtnh__view_conv(DTNH__IM2COL, dy, &f);
        G.c = dtnh__view_folded(DTNH__FOLDED, dx, g->c_in, g->h * g->w);
    } else {
        dtnh_conv_geom dyg = dtnh__plane_geom(g->n, g->c_out, g->oh * g->ow);
        G.M = g->c_in * kk;
        G.N = g->n * g->oh * g->ow;
        G.K = g->c_out;
        G.a = dtnh__view_plain(DTNH__COLS, w, (size_t)G.M);
        G.b = dtnh__view_conv(DTNH__IM2COL, dy, &dyg);
        G.c = dtnh__view_conv(DTNH__SCATTER, dx, g);
        /* pixels no tap reads (stride > kernel) get no gradient */
        if (!add) dtnh__zero_parallel(dx, (size_t)g->n * g->c_in * g->h * g->w);
    }
    dtnh__gemm_run(&G, work);
}

DTNHDEF void dtnh_conv2d_backward_data(const dtnh_conv_geom *g, const float *dy, const float *w,
                                       float *dx, const dtnh_work *work) {
    dtnh__backward_data(g, dy, w, dx, 0, work);
}

DTNHDEF void dtnh_conv2d_backward_data_add(const dtnh_conv_geom *g, const float *dy,
                                           const float *w, float *dx, const dtnh_work *work) {
    dtnh__backward_data(g, dy, w, dx, 1, work);
}

DTNHDEF void dtnh_im2col(const dtnh_conv_geom *g, const float *x_image, float *col) {
    int ohw = g->oh * g->ow;
    dtnh__runs w;
    dtnh__runs_start(&w, g->ow, ohw, 0, ohw, 0);
    for (; dtnh__runs_next(&w, 0); dtnh__runs_advance(&w))
        dtnh__im2col_run(g, x_image, &w, 0, g->c_in * g->kh * g->kw, col + w.col, (size_t)ohw,
                         w.len); /* the caller's matrix: no room past the run */
}

DTNHDEF void dtnh_col2im(const dtnh_conv_geom *g, const float *col, float *x_image) {
    int ohw = g->oh * g->ow;
    dtnh__col2im_add(g, col, (size_t)ohw, 0, g->c_in * g->kh * g->kw, 0, ohw, x_image);
}
/* ---- the DTNH direction, schedules, optimizers and fused steps ----------------------------- */

/* Every pass walks a view in tiles of DTNH__TILE floats; reductions add one partial per tile
   in tile order, so the bits do not depend on the thread count. */
#define DTNH__TILE 1024
#define DTNH__TILE_CHUNK 64

/* <g_J,g_J>, <g_J,g_Omega>, <g_Omega,g_Omega> over some range. */
typedef struct dtnh__triple {
    double jj, jo, oo;
} dtnh__triple;

/* g_Omega over one view: a stored vector, or the L2 family's closed form coef*(w - anchor)
   (anchor NULL: toward 0), which the fused L2-SP step never stores. */
typedef struct dtnh__gview {
    const float *stored;
    const float *w, *anchor;
    float coef;
} dtnh__gview;

static const float *dtnh__gview_tile(const dtnh__gview *g, size_t off, size_t n, float *buf) {
    size_t i;
    if (g->stored) return g->stored + off;
    if (g->anchor) {
        const float *w = g->w + off, *a = g->anchor + off;
        for (i = 0; i < n; i++) buf[i] = g->coef * (w[i] - a[i]);
    } else {
        const float *w = g->w + off;
        for (i = 0; i < n; i++) buf[i] = g->coef * w[i];
    }
    return buf;
}

/* Four lanes added in a fixed order at the end: cheaper than one long dependency chain. */
static dtnh__triple dtnh__block_triple(const float *gj, const float *go, size_t n) {
    double jj[4] = {0, 0, 0, 0}, jo[4] = {0, 0, 0, 0}, oo[4] = {0, 0, 0, 0};
    dtnh__triple t;
    size_t i, k;
    for (i = 0; i + 4 <= n; i += 4)
        for (k = 0; k < 4; k++) {
            double a = gj[i + k], b = go[i + k];
            jj[k] += a * a;
            jo[k] += a * b;
            oo[k] += b * b;
        }
    for (; i < n; i++) {
        double a = gj[i], b = go[i];
        jj[0] += a * a;
        jo[0] += a * b;
        oo[0] += b * b;
    }
    t.jj = (jj[0] + jj[1]) + (jj[2] + jj[3]);
    t.jo = (jo[0] + jo[1]) + (jo[2] + jo[3]);
    t.oo = (oo[0] + oo[1]) + (oo[2] + oo[3]);
    return t;
}

static void dtnh__triple_add(dtnh__triple *a, dtnh__triple b) {
    a->jj += b.jj;
    a->jo += b.jo;
    a->oo += b.oo;
}

/* The triple of one view (gj points at the view's first element). */
static dtnh__triple dtnh__view_triple(const float *gj, const dtnh__gview *g, size_t n) {
    dtnh__triple partial[DTNH__TILE_CHUNK], total = {0, 0, 0};
    size_t ntiles = (n + DTNH__TILE - 1) / DTNH__TILE, chunk, b;
    for (chunk = 0; chunk < ntiles; chunk += DTNH__TILE_CHUNK) {
        long cnt = (long)(ntiles - chunk < DTNH__TILE_CHUNK ? ntiles - chunk : DTNH__TILE_CHUNK), k;
        DTNH__OMP(parallel for schedule(static) if (cnt > 8))
        for (k = 0; k < cnt; k++) {
            float buf[DTNH__TILE];
            size_t off = (chunk + (size_t)k) * DTNH__TILE;
            size_t len = n - off < DTNH__TILE ? n - off : DTNH__TILE;
            partial[k] = dtnh__block_triple(gj + off, dtnh__gview_tile(g, off, len, buf), len);
        }
        for (b = 0; b < (size_t)cnt; b++) dtnh__triple_add(&total, partial[b]);
    }
    return total;
}

static int dtnh__triple_finite(dtnh__triple t) {
    double s = t.jj + t.jo + t.oo;
    return s - s == 0.0;
}

/* Algorithm 1, line by line: g_Omega - c*g_J, then + g_J. c is 0 when nothing is projected,
   which leaves exactly g_J + g_Omega. */
static void dtnh__direction_tile(const float *gj, const float *go, float c, float *d, size_t n) {
    size_t i;
    if (c == 0.0f)
        for (i = 0; i < n; i++) d[i] = gj[i] + go[i];
    else
        for (i = 0; i < n; i++) d[i] = gj[i] + (go[i] - c * gj[i]);
}

/* ---- schedules ------------------------------------------------------------------------------ */

DTNHDEF dtnh_status dtnh_schedule_check(const dtnh_schedule *s, dtnh_error *err) {
    int i;
    if (!s) return DTNH_OK;
    if (s->kind < DTNH_SCHEDULE_CONSTANT || s->kind > DTNH_SCHEDULE_COSINE)
        return dtnh_fail(err, DTNH_ERR_ARG, "schedule: unknown kind %d", s->kind);
    if (s->kind == DTNH_SCHEDULE_STEP) {
        if (s->n_milestones < 0 || s->n_milestones > DTNH_MAX_MILESTONES)
            return dtnh_fail(err, DTNH_ERR_ARG, "schedule: %d milestones, expected 0..%d",
                             s->n_milestones, DTNH_MAX_MILESTONES);
        for (i = 1; i < s->n_milestones; i++)
            if (s->milestones[i] <= s->milestones[i - 1])
                return dtnh_fail(err, DTNH_ERR_ARG, "schedule: milestone %d (%ld) not above the one before (%ld)",
                                 i, s->milestones[i], s->milestones[i - 1]);
        if (s->gamma < 0 || !(s->gamma == s->gamma))
            return dtnh_fail(err, DTNH_ERR_ARG, "schedule: gamma %g, expected > 0", s->gamma);
    }
    if (s->kind == DTNH_SCHEDULE_COSINE) {
        if (s->total <= 0)
            return dtnh_fail(err, DTNH_ERR_ARG, "schedule: cosine over %ld iterations, expected > 0", s->total);
        if (!(s->lr_min >= 0))
            return dtnh_fail(err, DTNH_ERR_ARG, "schedule: lr_min %g, expected >= 0", s->lr_min);
    }
    return DTNH_OK;
}

DTNHDEF double dtnh_schedule_lr(const dtnh_schedule *s, double base_lr, long iteration) {
    if (!s || s->kind == DTNH_SCHEDULE_CONSTANT) return base_lr;
    if (s->kind == DTNH_SCHEDULE_STEP) {
        double gamma = s->gamma > 0 ? s->gamma : 0.1;
        int passed = 0, i;
        for (i = 0; i < s->n_milestones && i < DTNH_MAX_MILESTONES; i++)
            if (s->milestones[i] <= iteration) passed++;
        return base_lr * pow(gamma, passed);
    }
    if (s->total <= 0) return base_lr;
    {
        long t = iteration < s->total ? iteration : s->total;
        return s->lr_min +
               (base_lr - s->lr_min) * (1 + cos(3.141592653589793 * (double)t / (double)s->total)) / 2;
    }
}

DTNHDEF double dtnh_coef_decayed(double coef, double decay, long epoch) {
    return decay == 0 ? coef : coef * pow(decay, (double)epoch);
}

/* ---- optimizer configuration and state -------------------------------------------------------- */

static dtnh_status dtnh__check_unit(double x, const char *name, dtnh_error *err) {
    if (!(x >= 0 && x < 1))
        return dtnh_fail(err, DTNH_ERR_ARG, "optim: %s = %g, expected in [0, 1)", name, x);
    return DTNH_OK;
}

/* Copies cfg (NULL: all defaults) into out with the defaults filled in, and checks it. */
static dtnh_status dtnh__optim_resolve(const dtnh_optim_config *cfg, dtnh_optim_config *out,
                                       dtnh_error *err) {
    dtnh_optim_config c;
    dtnh_status s;
    int i, adam;
    if (cfg) c = *cfg;
    else memset(&c, 0, sizeof c);
    if (c.kind < DTNH_OPTIM_SGD || c.kind > DTNH_OPTIM_ADAMW)
        return dtnh_fail(err, DTNH_ERR_ARG, "optim: unknown kind %d", c.kind);
    adam = c.kind != DTNH_OPTIM_SGD;
    if (!(c.lr >= 0) || c.lr > 1e30) return dtnh_fail(err, DTNH_ERR_ARG, "optim: lr %g, expected > 0", c.lr);
    if (c.lr == 0) c.lr = adam ? 0.001 : 0.01;
    if (!(c.momentum >= 0)) return dtnh_fail(err, DTNH_ERR_ARG, "optim: momentum %g, expected >= 0", c.momentum);
    if (c.nesterov && (adam || c.momentum == 0))
        return dtnh_fail(err, DTNH_ERR_ARG, "optim: Nesterov needs SGD with momentum > 0");
    if ((s = dtnh__check_unit(c.beta1, "beta1", err)) || (s = dtnh__check_unit(c.beta2, "beta2", err)))
        return s;
    if (c.beta1 == 0) c.beta1 = 0.9;
    if (c.beta2 == 0) c.beta2 = 0.999;
    if (!(c.eps >= 0)) return dtnh_fail(err, DTNH_ERR_ARG, "optim: eps %g, expected >= 0", c.eps);
    if (c.eps == 0) c.eps = 1e-8;
    if (!(c.weight_decay >= 0))
        return dtnh_fail(err, DTNH_ERR_ARG, "optim: weight_decay %g, expected >= 0", c.weight_decay);
    if (c.weight_decay == 0) c.weight_decay = 0.01;
    for (i = 0; i < DTNH_MAX_LR_RULES; i++)
        if (c.lr_rules[i].groups && !(c.lr_rules[i].mult > 0))
            return dtnh_fail(err, DTNH_ERR_ARG, "optim: lr rule %d has multiplier %g, expected > 0", i,
                             c.lr_rules[i].mult);
    if ((s = dtnh_schedule_check(&c.schedule, err))) return s;
    *out = c;
    return DTNH_OK;
}

DTNHDEF dtnh_status dtnh_optim_init(dtnh_optim *o, const dtnh_optim_config *cfg,
                                    const dtnh_params *p, dtnh_arena *a, dtnh_error *err) {
    dtnh_optim_config c;
    dtnh_status s;
    size_t n = 0, bytes = 0, next = 0;
    void *mem = NULL;
    int i, vectors;
    if (!o || !p || !a) return dtnh_fail(err, DTNH_ERR_ARG, "optim_init: NULL optimizer, store or arena");
    if ((s = dtnh__optim_resolve(cfg, &c, err))) return s;
    if (!p->views) n = p->total; /* a counting store: every view may train */
    for (i = 0; p->views && i < p->count; i++)
        if (p->views[i].trainable) n += p->views[i].count;
    vectors = c.kind != DTNH_OPTIM_SGD ? 2 : c.momentum > 0 ? 1 : 0;
    memset(o, 0, sizeof *o);
    if ((s = dtnh_size_mul((size_t)p->count, sizeof(dtnh_optim_slot), &bytes, err))) return s;
    if ((s = dtnh_arena_alloc(a, bytes, 0, &mem, err))) return s;
    if (vectors >= 1 && (s = dtnh_arena_alloc_floats(a, n, &o->m, err))) return s;
    if (vectors >= 2 && (s = dtnh_arena_alloc_floats(a, n, &o->v, err))) return s;
    o->cfg = c;
    o->lr = c.lr;
    o->state_count = n;
    o->slots = (dtnh_optim_slot *)mem;
    o->view_count = p->count;
    if (o->m) dtnh_fill(n, o->m, 0.0f);
    if (o->v) dtnh_fill(n, o->v, 0.0f);
    if (o->slots && p->views)
        for (i = 0; i < p->count; i++) {
            o->slots[i].steps = 0;
            o->slots[i].state_offset = p->views[i].trainable ? next : DTNH_NO_STATE;
            if (p->views[i].trainable) next += p->views[i].count;
        }
    return DTNH_OK;
}

static double dtnh__lr_mult(const dtnh_optim_config *c, unsigned groups) {
    int i;
    for (i = 0; i < DTNH_MAX_LR_RULES; i++)
        if (c->lr_rules[i].groups & groups) return c->lr_rules[i].mult;
    return 1.0;
}

DTNHDEF double dtnh_optim_view_lr(const dtnh_optim *o, const dtnh_params *p, int index) {
    double lr = dtnh_schedule_lr(&o->cfg.schedule, o->cfg.lr, o->step);
    if (!p->views || index < 0 || index >= p->count) return lr;
    return lr * dtnh__lr_mult(&o->cfg, p->views[index].groups);
}

/* An optimizer may step the store when it was made for it and every trainable view has state. */
static dtnh_status dtnh__optim_check(const dtnh_optim *o, const dtnh_params *p, dtnh_error *err) {
    int i;
    if (!o->slots || !p->views || !p->w)
        return dtnh_fail(err, DTNH_ERR_ARG, "optim: a counting optimizer or store, or no weights vector");
    if (o->view_count != p->count)
        return dtnh_fail(err, DTNH_ERR_ARG, "optim: made for %d views, the store has %d", o->view_count, p->count);
    for (i = 0; i < p->count; i++)
        if (p->views[i].trainable && o->slots[i].state_offset == DTNH_NO_STATE)
            return dtnh_fail(err, DTNH_ERR_ARG,
                             "optim: view '%s' became trainable after dtnh_optim_init; init again",
                             p->views[i].name);
    return DTNH_OK;
}

/* ---- the update rules: torch.optim's arithmetic, operation by operation ----------------------- */

enum { DTNH__RULE_SGD, DTNH__RULE_MOMENTUM, DTNH__RULE_NESTEROV, DTNH__RULE_ADAM };

/* One view's update, its scalars computed once in double and rounded to float as torch does. */
typedef struct dtnh__update {
    int rule, first;
    float neg_lr, momentum;
    float decay, beta1, beta2, one_minus_beta1, one_minus_beta2, bc2_sqrt, eps, neg_step_size;
    float *m, *v; /* the view's state */
} dtnh__update;

static dtnh__update dtnh__update_for(dtnh_optim *o, const dtnh_param_view *view, dtnh_optim_slot *slot) {
    const dtnh_optim_config *c = &o->cfg;
    double lr = dtnh_schedule_lr(&c->schedule, c->lr, o->step) * dtnh__lr_mult(c, view->groups);
    dtnh__update u;
    memset(&u, 0, sizeof u);
    u.first = slot->steps == 0;
    u.neg_lr = (float)-lr;
    u.momentum = (float)c->momentum;
    u.m = o->m ? o->m + slot->state_offset : NULL;
    u.v = o->v ? o->v + slot->state_offset : NULL;
    if (c->kind == DTNH_OPTIM_SGD) {
        u.rule = c->momentum == 0 ? DTNH__RULE_SGD : c->nesterov ? DTNH__RULE_NESTEROV : DTNH__RULE_MOMENTUM;
    } else {
        double step = (double)(slot->steps + 1);
        double bc1 = 1 - pow(c->beta1, step), bc2 = 1 - pow(c->beta2, step);
        u.rule = DTNH__RULE_ADAM;
        u.decay = c->kind == DTNH_OPTIM_ADAMW ? (float)(1 - lr * c->weight_decay) : 1.0f;
        u.beta1 = (float)c->beta1;
        u.beta2 = (float)c->beta2;
        u.one_minus_beta1 = (float)(1 - c->beta1);
        u.one_minus_beta2 = (float)(1 - c->beta2);
        u.bc2_sqrt = (float)sqrt(bc2);
        u.eps = (float)c->eps;
        u.neg_step_size = (float)-(lr / bc1);
    }
    return u;
}

/* torch: buf = d on the first step, else buf*momentum + d; Nesterov steps along d + momentum*buf. */
static void dtnh__apply_momentum(const dtnh__update *u, float *w, const float *d, float *m, size_t n) {
    size_t i;
    if (u->first)
        for (i = 0; i < n; i++) m[i] = d[i];
    else
        for (i = 0; i < n; i++) m[i] = m[i] * u->momentum + d[i];
    if (u->rule == DTNH__RULE_NESTEROV)
        for (i = 0; i < n; i++) w[i] += u->neg_lr * (d[i] + u->momentum * m[i]);
    else
        for (i = 0; i < n; i++) w[i] += u->neg_lr * m[i];
}

/* torch: p *= 1 - lr*wd (AdamW); m = m*b1 + (1-b1)*g; v = v*b2 + (1-b2)*g*g;
   p += -step_size*m / (sqrt(v)/sqrt(bc2) + eps). */
static void dtnh__apply_adam(const dtnh__update *u, float *w, const float *d, float *m, float *v, size_t n) {
    size_t i;
    for (i = 0; i < n; i++) {
        float g = d[i];
        float mi = m[i] * u->beta1 + u->one_minus_beta1 * g;
        float vi = v[i] * u->beta2 + u->one_minus_beta2 * g * g;
        float denom = sqrtf(vi) / u->bc2_sqrt + u->eps;
        m[i] = mi;
        v[i] = vi;
        w[i] = w[i] * u->decay + u->neg_step_size * mi / denom;
    }
}

/* Updates n weights from n directions; off is the place in the view (for the state). */
static void dtnh__update_apply(const dtnh__update *u, float *w, const float *d, size_t off, size_t n) {
    size_t i;
    switch (u->rule) {
    case DTNH__RULE_SGD:
        for (i = 0; i < n; i++) w[i] += u->neg_lr * d[i];
        break;
    case DTNH__RULE_MOMENTUM:
    case DTNH__RULE_NESTEROV: dtnh__apply_momentum(u, w, d, u->m + off, n); break;
    default: dtnh__apply_adam(u, w, d, u->m + off, u->v + off, n); break;
    }
}

/* ---- the engine: pass 1 (dot products), pass 2 (direction, then d or the update) ---------- */

typedef struct dtnh__acc {
    double jj, jo, oo, dj, dom, dd; /* the triple, <d,g_J>, <d,g_Omega>, <d,d> */
} dtnh__acc;

/* d = (1-c) g_J + g_Omega, so its dot products follow from the triple in closed form. */
static void dtnh__acc_add(dtnh__acc *a, dtnh__triple t, double c) {
    double k = 1 - c;
    a->jj += t.jj;
    a->jo += t.jo;
    a->oo += t.oo;
    a->dj += k * t.jj + t.jo;
    a->dom += k * t.jo + t.oo;
    a->dd += k * k * t.jj + 2 * k * t.jo + t.oo;
}

static double dtnh__angle_deg(double dot, double xx, double yy) {
    double c;
    if (!(xx > 0 && yy > 0)) return 90.0;
    c = dot / sqrt(xx * yy);
    c = c > 1 ? 1 : c < -1 ? -1 : c;
    return acos(c) * (180.0 / 3.141592653589793);
}

typedef struct dtnh__job {
    dtnh_direction_config dc; /* resolved */
    dtnh_l2sp_config l2;      /* resolved; used when g_omega is NULL */
    const dtnh_params *p;
    const float *g_j, *g_omega;
    float *d;      /* write d here, or NULL: update the weights with o */
    dtnh_optim *o;
    dtnh_direction_stats *st;
} dtnh__job;

/* The L2 family's pull on a view: its coefficient (0: none) and whether toward w_s. */
static double dtnh__l2sp_coef(const dtnh_l2sp_config *rc, unsigned groups, int *toward_source) {
    *toward_source = 0;
    if (groups & DTNH_GROUP_HEAD) return rc->beta;
    if (!(groups & DTNH_GROUP_BACKBONE)) return 0;
    if (rc->kernels_only && !(groups & DTNH_GROUP_KERNEL)) return 0;
    *toward_source = !rc->toward_zero;
    return rc->alpha;
}

static dtnh_status dtnh__l2sp_resolve(const dtnh_l2sp_config *in, dtnh_l2sp_config *out, dtnh_error *err) {
    dtnh_l2sp_config c;
    if (in) c = *in;
    else memset(&c, 0, sizeof c);
    if (!(c.alpha >= 0) || c.alpha > 1e30 || !(c.beta >= 0) || c.beta > 1e30)
        return dtnh_fail(err, DTNH_ERR_ARG, "L2-SP: alpha %g and beta %g, expected finite and >= 0 (0: default 0.01)",
                         c.alpha, c.beta);
    if (c.alpha == 0) c.alpha = 0.01;
    if (c.beta == 0) c.beta = 0.01;
    *out = c;
    return DTNH_OK;
}

static dtnh__gview dtnh__job_gview(const dtnh__job *job, int i) {
    const dtnh_param_view *v = &job->p->views[i];
    dtnh__gview g;
    int toward_source;
    memset(&g, 0, sizeof g);
    if (job->g_omega) {
        g.stored = job->g_omega + v->offset;
        return g;
    }
    g.coef = (float)dtnh__l2sp_coef(&job->l2, v->groups, &toward_source);
    g.w = job->p->w + v->offset;
    g.anchor = toward_source ? job->p->w_src + v->offset : NULL;
    return g;
}

static int dtnh__job_takes_part(const dtnh__job *job, int i) {
    const dtnh_param_view *v = &job->p->views[i];
    return v->trainable && (job->dc.groups == 0 || (v->groups & job->dc.groups));
}

/* The projection coefficient c of Algorithm 1 (g_Omega -= c g_J), 0 when none applies. */
static double dtnh__job_coef(const dtnh__job *job, dtnh__triple t) {
    if (job->dc.mode != DTNH_MODE_DTNH || !(t.jo < 0) || !(t.jj >= job->dc.eps)) return 0;
    return t.jo / t.jj;
}

static dtnh_status dtnh__job_numeric_fail(const dtnh__job *job, int i, dtnh__triple t, dtnh_error *err) {
    const dtnh_param_view *v = &job->p->views[i];
    size_t bad = 0;
    if (!dtnh_all_finite(v->count, job->g_j + v->offset, &bad) || !(t.jj - t.jj == 0))
        return dtnh_fail(err, DTNH_ERR_NUMERIC, "DTNH step: g_J of view '%s' holds NaN or Inf at element %zu",
                         v->name, bad);
    if (job->g_omega)
        dtnh_all_finite(v->count, job->g_omega + v->offset, &bad);
    else if (dtnh_all_finite(v->count, job->p->w + v->offset, &bad) && job->p->w_src)
        dtnh_all_finite(v->count, job->p->w_src + v->offset, &bad);
    return dtnh_fail(err, DTNH_ERR_NUMERIC, "DTNH step: g_Omega of view '%s' holds NaN or Inf at element %zu%s",
                     v->name, bad, job->g_omega ? "" : " (from w or w_s)");
}

/* Pass 1: the triples of the views taking part (into part) and of the other trainable views
   (into rest), the L2 value, and the NaN check, before anything is written. */
static dtnh_status dtnh__job_pass1(const dtnh__job *job, dtnh__triple *part, dtnh__triple *rest,
                                   double *l2_value, dtnh_error *err) {
    const dtnh_params *p = job->p;
    int i;
    memset(part, 0, sizeof *part);
    memset(rest, 0, sizeof *rest);
    *l2_value = 0;
    for (i = 0; i < p->count; i++) {
        const dtnh_param_view *v = &p->views[i];
        dtnh__gview g;
        dtnh__triple t;
        if (!v->trainable) continue;
        g = dtnh__job_gview(job, i);
        t = dtnh__view_triple(job->g_j + v->offset, &g, v->count);
        if (!dtnh__triple_finite(t)) return dtnh__job_numeric_fail(job, i, t, err);
        dtnh__triple_add(dtnh__job_takes_part(job, i) ? part : rest, t);
        if (!job->g_omega && g.coef > 0) *l2_value += t.oo / (2.0 * g.coef);
    }
    return DTNH_OK;
}

/* Pass 2 over one view: direction tile by tile, then into d or through the update.
   Returns how many tiles held a non-finite d (checked only when check is set). */
static long dtnh__view_pass2(const float *gj, const dtnh__gview *g, float c, float *d,
                             const dtnh__update *u, float *w, size_t n, int check) {
    long ntiles = (long)((n + DTNH__TILE - 1) / DTNH__TILE), k, bad = 0;
    DTNH__OMP(parallel for schedule(static) reduction(+ : bad) if (ntiles > 8))
    for (k = 0; k < ntiles; k++) {
        float gbuf[DTNH__TILE], dbuf[DTNH__TILE];
        size_t off = (size_t)k * DTNH__TILE;
        size_t len = n - off < DTNH__TILE ? n - off : DTNH__TILE;
        float *dt = d ? d + off : dbuf;
        dtnh__direction_tile(gj + off, dtnh__gview_tile(g, off, len, gbuf), c, dt, len);
        if (check && !dtnh_all_finite(len, dt, NULL)) bad++;
        if (u) dtnh__update_apply(u, w + off, dt, off, len);
    }
    return bad;
}

static void dtnh__job_stats(const dtnh__job *job, const dtnh__acc *a, int views, int projected) {
    dtnh_direction_stats *st = job->st;
    double sj = a->jj + a->jo, so = a->jo + a->oo, ss = a->jj + 2 * a->jo + a->oo;
    if (!st) return;
    st->cos_j_omega = a->jj > 0 && a->oo > 0 ? a->jo / sqrt(a->jj * a->oo) : 0;
    st->norm_g_j = sqrt(a->jj);
    st->norm_g_omega = sqrt(a->oo);
    st->angle_d_j = dtnh__angle_deg(a->dj, a->dd, a->jj);
    st->angle_d_omega = dtnh__angle_deg(a->dom, a->dd, a->oo);
    st->angle_sum_j = dtnh__angle_deg(sj, ss, a->jj);
    st->angle_sum_omega = dtnh__angle_deg(so, ss, a->oo);
    st->views = views;
    st->views_projected = projected;
    st->projected = views ? (double)projected / views : 0;
}

/* Runs the direction (and the update when job->o is set) on every trainable view. */
static dtnh_status dtnh__job_run(dtnh__job *job, dtnh_error *err) {
    const dtnh_params *p = job->p;
    dtnh__triple part, rest;
    dtnh__acc acc;
    double c_global = 0, l2_value = 0;
    int i, views = 0, projected = 0, global = job->dc.scope == DTNH_SCOPE_GLOBAL;
    int pass1 = job->dc.mode == DTNH_MODE_DTNH || job->st || !job->o;
    dtnh_status s, result = DTNH_OK;
    memset(&acc, 0, sizeof acc);
    if (pass1 && (s = dtnh__job_pass1(job, &part, &rest, &l2_value, err))) return s;
    if (pass1) {
        c_global = dtnh__job_coef(job, part);
        dtnh__acc_add(&acc, rest, 0);
        if (global) dtnh__acc_add(&acc, part, c_global);
    }
    for (i = 0; i < p->count; i++) {
        const dtnh_param_view *v = &p->views[i];
        dtnh__gview g;
        dtnh__update u;
        double c = 0;
        long bad;
        if (!v->trainable) continue;
        g = dtnh__job_gview(job, i);
        if (pass1 && dtnh__job_takes_part(job, i)) {
            views++;
            if (global) c = c_global;
            else {
                dtnh__triple t = dtnh__view_triple(job->g_j + v->offset, &g, v->count);
                c = dtnh__job_coef(job, t);
                dtnh__acc_add(&acc, t, c);
            }
            projected += c != 0;
        }
        if (job->o) u = dtnh__update_for(job->o, v, &job->o->slots[i]);
        bad = dtnh__view_pass2(job->g_j + v->offset, &g, (float)c, job->d ? job->d + v->offset : NULL,
                               job->o ? &u : NULL, p->w ? p->w + v->offset : NULL, v->count, !pass1);
        if (job->o) job->o->slots[i].steps++;
        /* Only the single pass of mode sum gets here with a NaN: pass 1 stops it otherwise. */
        if (bad && result == DTNH_OK)
            result = dtnh_fail(err, DTNH_ERR_NUMERIC,
                               "DTNH step (mode sum, no stats): d of view '%s' holds NaN or Inf; "
                               "the single pass already applied the update", v->name);
    }
    if (job->o) {
        job->o->lr = dtnh_schedule_lr(&job->o->cfg.schedule, job->o->cfg.lr, job->o->step);
        job->o->step++;
    }
    if (pass1) dtnh__job_stats(job, &acc, views, projected);
    if (job->st && !job->g_omega && pass1) job->st->omega = l2_value;
    return result;
}

/* ---- public entry points -------------------------------------------------------------------- */

static dtnh_status dtnh__direction_resolve(const dtnh_direction_config *in, dtnh_direction_config *out,
                                           dtnh_error *err) {
    dtnh_direction_config c;
    if (in) c = *in;
    else memset(&c, 0, sizeof c);
    if (c.mode != DTNH_MODE_DTNH && c.mode != DTNH_MODE_SUM)
        return dtnh_fail(err, DTNH_ERR_ARG, "direction: unknown mode %d", c.mode);
    if (c.scope != DTNH_SCOPE_GLOBAL && c.scope != DTNH_SCOPE_PER_TENSOR)
        return dtnh_fail(err, DTNH_ERR_ARG, "direction: unknown scope %d", c.scope);
    if (!(c.eps >= 0)) return dtnh_fail(err, DTNH_ERR_ARG, "direction: eps %g, expected >= 0", c.eps);
    if (c.eps == 0) c.eps = DTNH_DIRECTION_EPS;
    *out = c;
    return DTNH_OK;
}

/* The checks every entry point shares; fills the job's resolved direction config. */
static dtnh_status dtnh__job_init(dtnh__job *job, const dtnh_direction_config *dc, const dtnh_params *p,
                                  const float *g_j, dtnh_direction_stats *st, const char *who,
                                  dtnh_error *err) {
    memset(job, 0, sizeof *job);
    if (!p || !g_j) return dtnh_fail(err, DTNH_ERR_ARG, "%s: NULL store or g_J", who);
    if (!p->views) return dtnh_fail(err, DTNH_ERR_ARG, "%s: the store only counts (no views)", who);
    job->p = p;
    job->g_j = g_j;
    job->st = st;
    return dtnh__direction_resolve(dc, &job->dc, err);
}

DTNHDEF dtnh_status dtnh_direction(const dtnh_direction_config *cfg, const dtnh_params *p,
                                   const float *g_j, const float *g_omega, float *d,
                                   dtnh_direction_stats *st, dtnh_error *err) {
    dtnh__job job;
    dtnh_status s = dtnh__job_init(&job, cfg, p, g_j, st, "direction", err);
    if (s) return s;
    if (!g_omega || !d) return dtnh_fail(err, DTNH_ERR_ARG, "direction: NULL g_Omega or d");
    job.g_omega = g_omega;
    job.d = d;
    return dtnh__job_run(&job, err);
}

DTNHDEF dtnh_status dtnh_direction_flat(const dtnh_direction_config *cfg, size_t n,
                                        const float *g_j, const float *g_omega, float *d,
                                        dtnh_direction_stats *st, dtnh_error *err) {
    dtnh_param_view view;
    dtnh_params p;
    if (n == 0) return dtnh_fail(err, DTNH_ERR_ARG, "direction_flat: no elements");
    memset(&view, 0, sizeof view);
    memset(&p, 0, sizeof p);
    strcpy(view.name, "flat");
    view.ndim = 1;
    view.count = n;
    view.groups = DTNH_GROUP_ALL;
    view.trainable = 1;
    p.views = &view;
    p.count = p.capacity = 1;
    p.total = n;
    return dtnh_direction(cfg, &p, g_j, g_omega, d, st, err);
}

DTNHDEF dtnh_status dtnh_optim_step(dtnh_optim *o, dtnh_params *p, const float *d, dtnh_error *err) {
    dtnh_status s;
    int i;
    if (!o || !p || !d) return dtnh_fail(err, DTNH_ERR_ARG, "optim_step: NULL optimizer, store or d");
    if ((s = dtnh__optim_check(o, p, err))) return s;
    for (i = 0; i < p->count; i++) {
        const dtnh_param_view *v = &p->views[i];
        dtnh__update u;
        long ntiles, k;
        if (!v->trainable) continue;
        u = dtnh__update_for(o, v, &o->slots[i]);
        ntiles = (long)((v->count + DTNH__TILE - 1) / DTNH__TILE);
        DTNH__OMP(parallel for schedule(static) if (ntiles > 8))
        for (k = 0; k < ntiles; k++) {
            size_t off = (size_t)k * DTNH__TILE;
            size_t len = v->count - off < DTNH__TILE ? v->count - off : DTNH__TILE;
            dtnh__update_apply(&u, p->w + v->offset + off, d + v->offset + off, off, len);
        }
        o->slots[i].steps++;
    }
    o->lr = dtnh_schedule_lr(&o->cfg.schedule, o->cfg.lr, o->step);
    o->step++;
    return DTNH_OK;
}

DTNHDEF dtnh_status dtnh_step(dtnh_optim *o, const dtnh_direction_config *dc, dtnh_params *p,
                              const float *g_j, const float *g_omega, dtnh_direction_stats *st,
                              dtnh_error *err) {
    dtnh__job job;
    dtnh_status s = dtnh__job_init(&job, dc, p, g_j, st, "step", err);
    if (s) return s;
    if (!o || !g_omega) return dtnh_fail(err, DTNH_ERR_ARG, "step: NULL optimizer or g_Omega");
    if ((s = dtnh__optim_check(o, p, err))) return s;
    job.g_omega = g_omega;
    job.o = o;
    return dtnh__job_run(&job, err);
}

DTNHDEF dtnh_status dtnh_step_l2sp(dtnh_optim *o, const dtnh_direction_config *dc,
                                   const dtnh_l2sp_config *rc, dtnh_params *p, const float *g_j,
                                   dtnh_direction_stats *st, dtnh_error *err) {
    dtnh__job job;
    dtnh_status s = dtnh__job_init(&job, dc, p, g_j, st, "step_l2sp", err);
    if (s) return s;
    if (!o) return dtnh_fail(err, DTNH_ERR_ARG, "step_l2sp: NULL optimizer");
    if ((s = dtnh__optim_check(o, p, err))) return s;
    if ((s = dtnh__l2sp_resolve(rc, &job.l2, err))) return s;
    if (!job.l2.toward_zero && !p->w_src)
        return dtnh_fail(err, DTNH_ERR_ARG, "step_l2sp: the store has no w_src (allocate DTNH_ROLE_W_SRC)");
    job.o = o;
    return dtnh__job_run(&job, err);
}

#endif /* DTNH__IMPLEMENTED */
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
