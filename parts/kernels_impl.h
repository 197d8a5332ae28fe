/* ---- kernels: GEMM ------------------------------------------------------------------------- */
/* A GotoBLAS/BLIS-style SGEMM. C is cut into MC x NC blocks, K into KC slices; for each slice
   an A block (MC x KC) and a B block (KC x NC) are packed into the work buffer, and a
   register-blocked micro-kernel multiplies an MR x KC panel of A by a KC x NR sliver of B.
   The packing routines read their operand through a view (plain, transposed, implicit im2col,
   batch-folded), so convolutions run on the same engine without unfolding their input, and
   the write-back likewise maps a tile of C onto a plain, transposed or batch-folded output.
   Determinism: each element of C is a chain of FMAs over k in order inside a KC slice, and the
   slices are added in order; threads only choose which tiles they compute. */

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

/* Block sizes (definable before the include, for tuning). Tiles run along C's rows: an A
   panel (MR x KC) stays in L1 while the B block (KC x NC, 1 MiB) streams from L2; the A block
   (MC x KC) is packed once per B block. Only KC changes the arithmetic (how K is sliced). */
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
#else
#define DTNH__PREFETCH(p) ((void)0)
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
/* The 16 x 16 transpose in zmm registers: half the shuffles per element of the 8 x 8. */
#define DTNH__HAVE_TRANSPOSE16 1
static void dtnh__transpose16(const float *src, size_t src_stride, float *dst, size_t dst_stride) {
    const __mmask16 all = 0xFFFF; /* maskz forms: g++ warns on the plain ones' undefined */
    __m512 r[16], t[16];
    int i, j;
    for (i = 0; i < 16; i++) r[i] = _mm512_loadu_ps(src + (size_t)i * src_stride);
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
        _mm512_storeu_ps(dst + (size_t)j * dst_stride, _mm512_maskz_shuffle_f32x4(all, x0, y0, 0x88));
        _mm512_storeu_ps(dst + (size_t)(4 + j) * dst_stride, _mm512_maskz_shuffle_f32x4(all, x0, y0, 0xDD));
        _mm512_storeu_ps(dst + (size_t)(8 + j) * dst_stride, _mm512_maskz_shuffle_f32x4(all, x1, y1, 0x88));
        _mm512_storeu_ps(dst + (size_t)(12 + j) * dst_stride, _mm512_maskz_shuffle_f32x4(all, x1, y1, 0xDD));
    }
}
#endif

/* How one K slice's product t lands in C: the first slice applies beta (0 ignores C, NaN
   included) and a per-row bias; later slices add. */
typedef struct dtnh__blend {
    float alpha, beta, bias;
    int first;
} dtnh__blend;

static void dtnh__blend_run(float *DTNH__RESTRICT c, const float *DTNH__RESTRICT t, int n,
                             const dtnh__blend *u) {
    int i = 0;
#if defined(DTNH__AVX512)
    __m512 va = _mm512_set1_ps(u->alpha), vb = _mm512_set1_ps(u->beta);
    __m512 vbias = _mm512_set1_ps(u->bias);
    for (; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1u);
        __m512 vt = _mm512_maskz_loadu_ps(m, t + i), v;
        if (!u->first) v = _mm512_fmadd_ps(va, vt, _mm512_maskz_loadu_ps(m, c + i));
        else if (u->beta == 0.0f) v = _mm512_fmadd_ps(va, vt, vbias);
        else v = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m, c + i), _mm512_fmadd_ps(va, vt, vbias));
        _mm512_mask_storeu_ps(c + i, m, v);
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
static void dtnh__kernel(int kc, const float *DTNH__RESTRICT a, int rs, int ks, const float *DTNH__RESTRICT b,
                         float *DTNH__RESTRICT c, size_t ldc, const dtnh__blend *u,
                         const float *bias) {
    const float *a0 = a, *a1 = a + rs, *a2 = a + 2 * rs, *a3 = a + 3 * rs;
    const float *a4 = a + 4 * rs, *a5 = a + 5 * rs, *a6 = a + 6 * rs, *a7 = a + 7 * rs;
    __m512 c00 = _mm512_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m512 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    __m512 c60 = c00, c61 = c00, c70 = c00, c71 = c00;
    int k, ak;
    if (!u->first || u->beta != 0.0f)
        for (k = 0; k < 8; k++) { /* C arrives while the loop runs */
            _mm_prefetch((const char *)(c + (size_t)k * ldc), _MM_HINT_T0);
            _mm_prefetch((const char *)(c + (size_t)k * ldc + 31), _MM_HINT_T0);
        }
    for (k = 0, ak = 0; k < kc; k++, ak += ks, b += 32) {
        __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
        DTNH__PREFETCH_A;
        DTNH__ROW512(0); DTNH__ROW512(1); DTNH__ROW512(2); DTNH__ROW512(3);
        DTNH__ROW512(4); DTNH__ROW512(5); DTNH__ROW512(6); DTNH__ROW512(7);
    }
    DTNH__OUT(0); DTNH__OUT(1); DTNH__OUT(2); DTNH__OUT(3);
    DTNH__OUT(4); DTNH__OUT(5); DTNH__OUT(6); DTNH__OUT(7);
}
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
#undef DTNH__ROW512
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

/* A block rows [m0, m0+mc) x columns [k0, k0+kc) into MR-row panels, each row kc long. */
static void dtnh__pack_a(const dtnh__gemm *G, int m0, int mc, int k0, int kc, float *dst) {
    const dtnh__view *v = &G->a;
    int p, r, k;
    if (v->kind == DTNH__COLS) {
        dtnh__pack_a_cols(v, m0, mc, k0, kc, dst);
        return;
    }
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
    int mc, nc, kc;
    size_t a_floats, b_floats, extra_floats, thread_bytes;
} dtnh__plan;

static void dtnh__plan_make(int M, int N, int K, size_t extra_floats, dtnh__plan *p) {
    int slices = (K + DTNH__KC - 1) / DTNH__KC;
    p->kc = (K + slices - 1) / slices;
    p->mc = dtnh__kmin(DTNH__MC / DTNH__MR * DTNH__MR, dtnh__kround_up(M, DTNH__MR));
    p->nc = dtnh__kmin(DTNH__NC / DTNH__NR * DTNH__NR, dtnh__kround_up(N, DTNH__NR));
    /* 16-float multiples keep every buffer 64-byte aligned */
    p->a_floats = (size_t)(p->mc / DTNH__MR) * ((dtnh__panel_stride(p->kc) + 15) / 16 * 16);
    p->b_floats = (size_t)(p->nc / DTNH__NR) * ((dtnh__sliver_stride(p->kc) + 15) / 16 * 16);
    p->extra_floats = extra_floats;
    p->thread_bytes = ((p->a_floats + p->b_floats + extra_floats) * sizeof(float) + 63) / 64 * 64;
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

/* One A block times one B block. The tile order follows C: along its rows for a row-major C
   (each A panel stays in L1 while B streams from L2), down its columns for a transposed one. */
static void dtnh__macro(const dtnh__gemm *G, int kc, const float *abuf, int ic, int mc,
                        const float *bbuf, int jc, int nc, int first) {
    int ir, jr;
    if (G->c.kind == DTNH__COLS) {
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
                                      int n_lo, int n_hi, float *abuf, float *bbuf) {
    int jb, jc, pc, ir, mc = m_hi - m_lo;
    for (jb = n_lo; jb < n_hi; jb += P->nc) {
        int jb_end = dtnh__kmin(jb + P->nc, n_hi);
        for (pc = 0; pc < G->K; pc += P->kc) {
            int kc = dtnh__kmin(P->kc, G->K - pc);
            dtnh__pack_a(G, m_lo, mc, pc, kc, abuf);
            for (jc = jb; jc < jb_end; jc += DTNH__NR) {
                int nr = dtnh__kmin(DTNH__NR, jb_end - jc);
                dtnh__pack_b(G, pc, kc, jc, nr, bbuf);
                for (ir = 0; ir < mc; ir += DTNH__MR)
                    dtnh__tile(G, kc, abuf + (size_t)(ir / DTNH__MR) * dtnh__panel_stride(kc), bbuf,
                               m_lo + ir, dtnh__kmin(DTNH__MR, mc - ir), jc, nr, pc == 0);
            }
        }
    }
}

/* C rows [m_lo, m_hi) x columns [n_lo, n_hi), all of K, on one thread's buffers. */
static void dtnh__gemm_range(const dtnh__gemm *G, const dtnh__plan *P, int m_lo, int m_hi,
                             int n_lo, int n_hi, float *abuf, float *bbuf) {
    int jc, pc, ic;
    if (m_hi - m_lo <= DTNH__FEW_ROWS && m_hi - m_lo <= P->mc) {
        dtnh__gemm_range_few_rows(G, P, m_lo, m_hi, n_lo, n_hi, abuf, bbuf);
        return;
    }
    for (jc = n_lo; jc < n_hi; jc += P->nc) {
        int nc = dtnh__kmin(P->nc, n_hi - jc);
        for (pc = 0; pc < G->K; pc += P->kc) {
            int kc = dtnh__kmin(P->kc, G->K - pc);
            dtnh__pack_b(G, pc, kc, jc, nc, bbuf);
            for (ic = m_lo; ic < m_hi; ic += P->mc) {
                int mc = dtnh__kmin(P->mc, m_hi - ic);
                dtnh__pack_a(G, ic, mc, pc, kc, abuf);
                dtnh__macro(G, kc, abuf, ic, mc, bbuf, jc, nc, pc == 0);
            }
        }
    }
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

/* Splits the columns (1) or the rows (0) among T threads: balance first, then the cheaper
   redundant packing (splitting N packs A on every thread, splitting M packs B). */
static int dtnh__split_columns(const dtnh__gemm *G, int T) {
    double nu = (G->N + DTNH__NR - 1) / DTNH__NR, mu = (G->M + DTNH__MR - 1) / DTNH__MR;
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

static void dtnh__gemm_run(const dtnh__gemm *G, const dtnh_work *work) {
    dtnh__plan P;
    int T, by_cols;
    dtnh__plan_make(G->M, G->N, G->K, 0, &P);
    T = dtnh__threads_for(work, P.thread_bytes, (double)G->M * G->N * G->K);
    by_cols = dtnh__split_columns(G, T);
    (void)T; /* used only by the pragma */
    DTNH_ASSERT(work->bytes >= P.thread_bytes + 64 && work->buf);
    DTNH__OMP(parallel num_threads(T) if (T > 1))
    {
        int t = dtnh__omp_thread(), nt = dtnh__omp_team(), m_lo = 0, m_hi = G->M, n_lo = 0, n_hi = G->N;
        float *abuf = dtnh__thread_buf(work, &P, t);
        if (by_cols) dtnh__share(G->N, DTNH__NR, t, nt, &n_lo, &n_hi);
        else dtnh__share(G->M, DTNH__MR, t, nt, &m_lo, &m_hi);
        if (m_lo < m_hi && n_lo < n_hi) dtnh__gemm_range(G, &P, m_lo, m_hi, n_lo, n_hi, abuf, abuf + P.a_floats);
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
    dtnh__plan_make(DTNH__MC, DTNH__NC, DTNH__KC, 0, &P);
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

DTNHDEF size_t dtnh_conv_work_bytes(const dtnh_conv_geom *g, int threads) {
    dtnh__plan f, d, w;
    size_t most;
    dtnh__conv_plans(g, &f, &d, &w);
    most = f.thread_bytes > d.thread_bytes ? f.thread_bytes : d.thread_bytes;
    if (w.thread_bytes > most) most = w.thread_bytes;
    return dtnh__work_total(most, threads);
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

DTNHDEF void dtnh_conv2d_backward_weights(const dtnh_conv_geom *g, const float *x,
                                          const float *dy, float *dw, float *dbias,
                                          int accumulate, const dtnh_work *work) {
    dtnh__gemm G;
    dtnh_conv_geom f = dtnh__flat_if_pointwise(g);
    int ohw = g->oh * g->ow, co;
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
    if (!dbias) return;
    DTNH__OMP(parallel for schedule(static) if ((double)g->c_out * G.K > DTNH__PAR_MADDS))
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

/* Adds W^T.dY tile rows [m_lo, m_hi) (whole channels) x columns [n_lo, n_hi), held in t with
   row stride ld, into dX: the adjoint of im2col, in a fixed order. */
static void dtnh__col2im_add(const dtnh_conv_geom *g, const float *t, size_t ld, int m_lo,
                             int m_hi, int n_lo, int n_hi, float *dx) {
    int kk = g->kh * g->kw, s = g->stride, m;
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
    (void)T; /* used only by the pragma */
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
