/* SGEMM: against a double-precision triple loop on awkward shapes, every transpose, alpha and
   beta, padded leading dimensions, thread-count independence, and argument checking. */
#include <stdlib.h>
#include <string.h>
#include "test.h"
#ifdef _OPENMP
#include <omp.h>
#endif

static void set_threads(int n) {
#ifdef _OPENMP
    omp_set_num_threads(n);
#else
    (void)n;
#endif
}

/* Work from a malloc'd arena; the caller frees the returned block. */
static void *gemm_work(dtnh_work *w, int threads) {
    size_t bytes = dtnh_gemm_work_bytes(threads);
    void *mem = malloc(bytes + 64);
    dtnh_arena a;
    dtnh_arena_init(&a, mem, bytes + 64);
    if (dtnh_work_alloc(w, &a, bytes, threads, NULL)) return NULL;
    return mem;
}

static float *random_floats(size_t n, dtnh_rng *r) {
    float *x = (float *)malloc((n ? n : 1) * sizeof(float));
    size_t i;
    for (i = 0; i < n; i++) x[i] = 2.0f * dtnh_rng_uniform(r) - 1.0f;
    return x;
}

static double elem(const float *X, int ld, dtnh_trans t, int r, int c) {
    return t == DTNH_NO_TRANS ? X[(size_t)r * ld + c] : X[(size_t)c * ld + r];
}

typedef struct gemm_case {
    int M, N, K;
    dtnh_trans ta, tb;
    int pad_a, pad_b, pad_c; /* extra leading-dimension floats */
    float alpha, beta;
} gemm_case;

/* Runs one case against the reference; returns 0 and fills msg on the first mismatch. */
static int gemm_case_ok(const gemm_case *t, const dtnh_work *work, dtnh_rng *r, char *msg) {
    int a_rows = t->ta ? t->K : t->M, a_cols = t->ta ? t->M : t->K;
    int b_rows = t->tb ? t->N : t->K, b_cols = t->tb ? t->K : t->N;
    int lda = a_cols + t->pad_a, ldb = b_cols + t->pad_b, ldc = t->N + t->pad_c;
    float *A = random_floats((size_t)a_rows * lda, r), *B = random_floats((size_t)b_rows * ldb, r);
    float *C = random_floats((size_t)t->M * ldc, r), *C0 = random_floats((size_t)t->M * ldc, r);
    int i, j, k, ok = 1;
    memcpy(C0, C, (size_t)t->M * ldc * sizeof(float));
    dtnh_sgemm(t->ta, t->tb, t->M, t->N, t->K, t->alpha, A, lda, B, ldb, t->beta, C, ldc, work);
    for (i = 0; i < t->M && ok; i++)
        for (j = 0; j < ldc && ok; j++) {
            size_t at = (size_t)i * ldc + j;
            double ref = 0, bound = 0, tol;
            if (j >= t->N) { /* padding columns stay untouched */
                if (memcmp(&C[at], &C0[at], sizeof(float)) != 0) {
                    sprintf(msg, "padding C[%d][%d] changed", i, j);
                    ok = 0;
                }
                continue;
            }
            for (k = 0; k < t->K; k++) {
                double p = elem(A, lda, t->ta, i, k) * elem(B, ldb, t->tb, k, j);
                ref += p;
                bound += fabs(p);
            }
            ref = t->alpha * ref + t->beta * C0[at];
            bound = fabs(t->alpha) * bound + fabs(t->beta * C0[at]);
            tol = 1.2e-7 * (t->K + 4) * bound + 1e-30;
            if (!(fabs(C[at] - ref) <= tol)) {
                sprintf(msg, "M=%d N=%d K=%d ta=%d tb=%d: C[%d][%d]=%.9g, expected %.9g", t->M,
                        t->N, t->K, t->ta, t->tb, i, j, C[at], ref);
                ok = 0;
            }
        }
    free(A); free(B); free(C); free(C0);
    return ok;
}

/* Shapes with 1, primes, and sizes that are no multiple of any block or tile, on both sides
   of the blocking sizes. */
static const int shapes[][3] = {
    {1, 1, 1},    {1, 7, 1},     {7, 1, 13},   {2, 3, 5},    {13, 17, 19},  {31, 37, 41},
    {8, 32, 16},  {9, 33, 17},   {67, 71, 73}, {6, 16, 300}, {130, 97, 261}, {257, 5, 3},
    {3, 1031, 7}, {16, 48, 513}, {300, 40, 20}, {49, 130, 64}, {24, 1, 600}, {1, 300, 257}};

/* A small C over a long K, which dtnh_sgemm cuts into 16 parts along K (16 K slices, 2^18
   multiply-adds a part: about the smallest product that is cut, to keep valgrind's run short). */
static const int cut_shape[3] = {33, 34, 3900};

static void gemm_matches_reference_on_awkward_shapes(void) {
    dtnh_work w;
    void *mem = gemm_work(&w, 1);
    dtnh_rng r;
    char msg[256] = "";
    size_t s;
    int t, ok = 1;
    dtnh_rng_seed(&r, 1);
    for (s = 0; s < sizeof shapes / sizeof shapes[0] && ok; s++)
        for (t = 0; t < 4 && ok; t++) {
            gemm_case c;
            c.M = shapes[s][0]; c.N = shapes[s][1]; c.K = shapes[s][2];
            c.ta = (dtnh_trans)(t & 1); c.tb = (dtnh_trans)(t >> 1);
            c.pad_a = c.pad_b = c.pad_c = 0;
            c.alpha = 1.0f; c.beta = 0.0f;
            ok = gemm_case_ok(&c, &w, &r, msg);
        }
    free(mem);
    CHECK_MSG(ok, "%s", msg);
}

static void gemm_applies_alpha_beta_and_padded_leading_dims(void) {
    static const float ab[][2] = {{0.5f, 1.0f}, {-2.0f, 0.25f}, {1.0f, -1.0f}, {0.0f, 2.0f}};
    dtnh_work w;
    void *mem = gemm_work(&w, 1);
    dtnh_rng r;
    char msg[256] = "";
    size_t s;
    int t, ok = 1;
    dtnh_rng_seed(&r, 2);
    for (s = 0; s < sizeof shapes / sizeof shapes[0] && ok; s++)
        for (t = 0; t < 4 && ok; t++) {
            gemm_case c;
            c.M = shapes[s][0]; c.N = shapes[s][1]; c.K = shapes[s][2];
            c.ta = (dtnh_trans)(t & 1); c.tb = (dtnh_trans)(t >> 1);
            c.pad_a = 1 + (int)s % 5; c.pad_b = 3; c.pad_c = 2 + t;
            c.alpha = ab[(s + t) % 4][0]; c.beta = ab[(s + t) % 4][1];
            ok = gemm_case_ok(&c, &w, &r, msg);
        }
    for (t = 0; t < 4 && ok; t++) {
        gemm_case c;
        c.M = cut_shape[0]; c.N = cut_shape[1]; c.K = cut_shape[2];
        c.ta = (dtnh_trans)(t & 1); c.tb = (dtnh_trans)(t >> 1);
        c.pad_a = 2; c.pad_b = 1; c.pad_c = 3;
        c.alpha = ab[t][0]; c.beta = ab[t][1];
        ok = gemm_case_ok(&c, &w, &r, msg);
    }
    free(mem);
    CHECK_MSG(ok, "%s", msg);
}

static void gemm_beta_zero_ignores_nan_in_c(void) {
    float A[6] = {1, 2, 3, 4, 5, 6}, B[6] = {1, 0, 0, 1, 1, 1}, C[4];
    dtnh_work w;
    void *mem = gemm_work(&w, 1);
    dtnh_rng r;
    float *LA, *LB, *LC;
    int i;
    for (i = 0; i < 4; i++) C[i] = (float)NAN;
    dtnh_sgemm(DTNH_NO_TRANS, DTNH_NO_TRANS, 2, 2, 3, 1.0f, A, 3, B, 2, 0.0f, C, 2, &w);
    CHECK(C[0] == 4 && C[1] == 5 && C[2] == 10 && C[3] == 11);
    /* and a long product cut along K, whose parts are blended into C at the end */
    dtnh_rng_seed(&r, 5);
    LA = random_floats((size_t)cut_shape[0] * cut_shape[2], &r);
    LB = random_floats((size_t)cut_shape[2] * cut_shape[1], &r);
    LC = (float *)malloc((size_t)cut_shape[0] * cut_shape[1] * sizeof(float));
    for (i = 0; i < cut_shape[0] * cut_shape[1]; i++) LC[i] = (float)NAN;
    dtnh_sgemm(DTNH_NO_TRANS, DTNH_NO_TRANS, cut_shape[0], cut_shape[1], cut_shape[2], 1.0f, LA,
               cut_shape[2], LB, cut_shape[1], 0.0f, LC, cut_shape[1], &w);
    CHECK(dtnh_all_finite((size_t)cut_shape[0] * cut_shape[1], LC, NULL));
    free(LA); free(LB); free(LC); free(mem);
}

static void gemm_without_work_runs_unpacked(void) {
    gemm_case c;
    dtnh_rng r;
    char msg[256] = "";
    int t;
    dtnh_rng_seed(&r, 3);
    for (t = 0; t < 4; t++) {
        c.M = 13; c.N = 29; c.K = 31;
        c.ta = (dtnh_trans)(t & 1); c.tb = (dtnh_trans)(t >> 1);
        c.pad_a = 1; c.pad_b = 0; c.pad_c = 3;
        c.alpha = 0.5f; c.beta = 2.0f;
        CHECK_MSG(gemm_case_ok(&c, NULL, &r, msg), "%s", msg);
    }
}

/* The same bits with one and two threads, for shapes split along M and along N (147 columns:
   in half slivers) and along K (the last: cut into 16 parts), and with three threads for the
   last two (3 threads take 5, 5 and 6 of the parts). */
static void gemm_is_identical_for_any_thread_count(void) {
    static const int big[][3] = {{200, 300, 280}, {300, 24, 270}, {24, 700, 90}, {97, 530, 600},
                                 {64, 147, 700}, {64, 27, 3000}, {33, 34, 3900}};
    const size_t shapes_on_3 = 2; /* the last two: valgrind runs this test without OpenMP */
    dtnh_work w1, w2, w3;
    void *m1 = gemm_work(&w1, 1), *m2 = gemm_work(&w2, 2), *m3 = gemm_work(&w3, 3);
    dtnh_rng r;
    size_t s;
    int t, same = 1, threads_before = dtnh_threads();
    dtnh_rng_seed(&r, 4);
    for (s = 0; s < sizeof big / sizeof big[0] && same; s++)
        for (t = 0; t < 4 && same; t++) {
            int M = big[s][0], N = big[s][1], K = big[s][2];
            int on_3 = s + shapes_on_3 >= sizeof big / sizeof big[0];
            dtnh_trans ta = (dtnh_trans)(t & 1), tb = (dtnh_trans)(t >> 1);
            float *A = random_floats((size_t)M * K, &r), *B = random_floats((size_t)K * N, &r);
            float *C1 = random_floats((size_t)M * N, &r), *C2 = (float *)malloc((size_t)M * N * 4);
            float *C3 = (float *)malloc((size_t)M * N * 4);
            memcpy(C2, C1, (size_t)M * N * sizeof(float));
            memcpy(C3, C1, (size_t)M * N * sizeof(float));
            set_threads(1);
            dtnh_sgemm(ta, tb, M, N, K, 1.5f, A, ta ? M : K, B, tb ? K : N, 0.5f, C1, N, &w1);
            set_threads(2);
            dtnh_sgemm(ta, tb, M, N, K, 1.5f, A, ta ? M : K, B, tb ? K : N, 0.5f, C2, N, &w2);
            set_threads(3);
            if (on_3)
                dtnh_sgemm(ta, tb, M, N, K, 1.5f, A, ta ? M : K, B, tb ? K : N, 0.5f, C3, N, &w3);
            same = memcmp(C1, C2, (size_t)M * N * sizeof(float)) == 0 &&
                   (!on_3 || memcmp(C1, C3, (size_t)M * N * sizeof(float)) == 0);
            free(A); free(B); free(C1); free(C2); free(C3);
        }
    set_threads(threads_before);
    free(m1); free(m2); free(m3);
    CHECK(same);
}

static void gemm_checked_rejects_bad_arguments(void) {
    float A[64], B[64], C[64];
    dtnh_work w, small;
    void *mem = gemm_work(&w, 1);
    dtnh_error err;
    memset(A, 0, sizeof A); memset(B, 0, sizeof B); memset(C, 0, sizeof C);
    small = w;
    small.bytes = 16;
#define G(ta, tb, M, N, K, a, lda, b, ldb, c, ldc, wk) \
    dtnh_sgemm_checked(ta, tb, M, N, K, 1.0f, a, lda, b, ldb, 0.0f, c, ldc, wk, &err)
    CHECK_OK(G(DTNH_NO_TRANS, DTNH_NO_TRANS, 4, 4, 4, A, 4, B, 4, C, 4, &w));
    CHECK_STATUS(G(DTNH_NO_TRANS, DTNH_NO_TRANS, 0, 4, 4, A, 4, B, 4, C, 4, &w), DTNH_ERR_ARG);
    CHECK(strstr(err.msg, "M=0") != NULL);
    CHECK_STATUS(G(DTNH_NO_TRANS, DTNH_NO_TRANS, 4, -1, 4, A, 4, B, 4, C, 4, &w), DTNH_ERR_ARG);
    CHECK_STATUS(G(DTNH_NO_TRANS, DTNH_NO_TRANS, 4, 4, 0, A, 4, B, 4, C, 4, &w), DTNH_ERR_ARG);
    CHECK_STATUS(G(DTNH_NO_TRANS, DTNH_NO_TRANS, 4, 4, 4, NULL, 4, B, 4, C, 4, &w), DTNH_ERR_ARG);
    CHECK_STATUS(G(DTNH_NO_TRANS, DTNH_NO_TRANS, 4, 4, 4, A, 4, NULL, 4, C, 4, &w), DTNH_ERR_ARG);
    CHECK_STATUS(G(DTNH_NO_TRANS, DTNH_NO_TRANS, 4, 4, 4, A, 4, B, 4, NULL, 4, &w), DTNH_ERR_ARG);
    CHECK_STATUS(G(DTNH_NO_TRANS, DTNH_NO_TRANS, 4, 4, 5, A, 4, B, 4, C, 4, &w), DTNH_ERR_ARG);
    CHECK(strstr(err.msg, "lda=4") != NULL && strstr(err.msg, ">= 5") != NULL);
    CHECK_STATUS(G(DTNH_TRANS, DTNH_NO_TRANS, 5, 4, 4, A, 4, B, 4, C, 5, &w), DTNH_ERR_ARG);
    CHECK(strstr(err.msg, "lda") != NULL);
    CHECK_STATUS(G(DTNH_NO_TRANS, DTNH_NO_TRANS, 4, 5, 4, A, 4, B, 4, C, 5, &w), DTNH_ERR_ARG);
    CHECK(strstr(err.msg, "ldb") != NULL);
    CHECK_STATUS(G(DTNH_NO_TRANS, DTNH_TRANS, 4, 4, 5, A, 5, B, 4, C, 4, &w), DTNH_ERR_ARG);
    CHECK(strstr(err.msg, "ldb") != NULL);
    CHECK_STATUS(G(DTNH_NO_TRANS, DTNH_NO_TRANS, 4, 4, 4, A, 4, B, 4, C, 3, &w), DTNH_ERR_ARG);
    CHECK(strstr(err.msg, "ldc") != NULL);
    CHECK_STATUS(G(DTNH_NO_TRANS, DTNH_NO_TRANS, 4, 4, 4, A, 4, B, 4, C, 4, NULL), DTNH_ERR_ARG);
    CHECK_STATUS(G(DTNH_NO_TRANS, DTNH_NO_TRANS, 4, 4, 4, A, 4, B, 4, C, 4, &small), DTNH_ERR_ARG);
    CHECK(strstr(err.msg, "work") != NULL);
    CHECK_STATUS(G((dtnh_trans)7, DTNH_NO_TRANS, 4, 4, 4, A, 4, B, 4, C, 4, &w), DTNH_ERR_ARG);
#undef G
    free(mem);
}

static void work_alloc_counts_and_assigns_the_same_bytes(void) {
    dtnh_arena counter, a;
    dtnh_work w;
    dtnh_error err;
    size_t bytes = dtnh_gemm_work_bytes(2);
    void *mem;
    dtnh_arena_init(&counter, NULL, 0);
    CHECK_OK(dtnh_work_alloc(&w, &counter, bytes, 2, &err));
    CHECK(w.buf == NULL && w.bytes == bytes && w.threads == 2);
    mem = malloc(dtnh_arena_used(&counter) + 64);
    dtnh_arena_init(&a, (char *)mem + (64 - (uintptr_t)mem % 64) % 64, dtnh_arena_used(&counter));
    CHECK_OK(dtnh_work_alloc(&w, &a, bytes, 2, &err));
    CHECK(w.buf != NULL && dtnh_arena_used(&a) == dtnh_arena_used(&counter));
    CHECK_STATUS(dtnh_work_alloc(&w, &a, 1, 2, &err), DTNH_ERR_NOMEM);
    CHECK_STATUS(dtnh_work_alloc(&w, &a, 0, 0, &err), DTNH_ERR_ARG);
    CHECK(strstr(err.msg, "threads") != NULL);
    free(mem);
}

void suite_gemm(void) {
    RUN(gemm_matches_reference_on_awkward_shapes);
    RUN(gemm_applies_alpha_beta_and_padded_leading_dims);
    RUN(gemm_beta_zero_ignores_nan_in_c);
    RUN(gemm_without_work_runs_unpacked);
    RUN(gemm_is_identical_for_any_thread_count);
    RUN(gemm_checked_rejects_bad_arguments);
    RUN(work_alloc_counts_and_assigns_the_same_bytes);
}
