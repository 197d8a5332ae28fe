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
} dtnh_conv_geom;

DTNHDEF dtnh_status dtnh_conv_geom_init(dtnh_conv_geom *g, int n, int c_in, int h, int w,
                                        int c_out, int kh, int kw, int stride, int pad,
                                        dtnh_error *err);
/* Bytes of work the three convolution calls below need with `threads` threads (the packing
   blocks only: no unfolded im2col matrix is ever built). The calls expect a geometry from
   dtnh_conv_geom_init and work of at least dtnh_conv_work_bytes(g, work->threads). */
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
