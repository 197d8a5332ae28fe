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
      void *mem = malloc(dtnh_arena_used(&counter));   // or a static buffer
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

#include "parts/kernels_api.h"
#include "parts/optim_api.h"

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

#include "parts/kernels_impl.h"
#include "parts/optim_impl.h"

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
