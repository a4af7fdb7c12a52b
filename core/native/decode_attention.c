/* Attention for decoding on the CPU: few queries per sequence, bf16 K/V read where they lie in the cache.
 *
 * attention.c repacks K and V for every call, which pays off over a tile of many queries; a decode step
 * has one query per sequence, and the repack (a scalar transpose of the whole context) cost more than
 * the attention itself.  Here each query row (sequence, position, head) is one task over the keys and
 * values in their cache layout:
 *   scores   s_j = q . k_j by AVX-512 bf16 dot products (float32 accumulation), 16 cells at a time,
 *            their 16 partial vectors summed across lanes in one fixed tree;
 *   softmax  in float32 over the row's visible cells (two passes: max, then exp and sum);
 *   values   sum_j p_j * v_j in float32 (v_j widened exactly from bf16, p_j never rounded to bf16).
 * A row's arithmetic depends only on its own query, mask row and cells: the same row gives the same
 * bits alone, among other sequences or among the rows of a checking batch, on any number of threads.
 *
 *   q     bf16 [B, H, T, D]      (strides q_sb, q_sh, q_st in elements; D contiguous)
 *   k, v  bf16 [B, Hkv, S, D]    (strides *_sb, *_sh, *_ss)
 *   mask  uint8 [B, T, S]        (strides m_sb, m_st; S contiguous): nonzero where a query sees a cell;
 *                                 every row sees at least one cell
 *   out   bf16 [B, T, H * D]     (contiguous)
 * Returns 0, or -1 where this build has no AVX-512 bf16 or D is not a multiple of 32.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512BF16__) && defined(__AVX512VL__)
#include <immintrin.h>
#define HAVE_BF16_DOT 1
#include "bf16_simd.h"
#endif

#ifdef HAVE_BF16_DOT

enum { DMAX = 512 };  /* widest head served (Gemma 3 has 256): DECODE_MAX_HEAD in __init__.py */

typedef struct {
    const uint16_t *q, *k, *v;
    const uint8_t *mask;
    uint16_t *out;
    int64_t q_sb, q_sh, q_st, k_sb, k_sh, k_ss, v_sb, v_sh, v_ss, m_sb, m_st;
    int64_t B, H, Hkv, T, S, D;
    float scale;
} decode_t;

/* lane c of the result = the sum of the 16 lanes of a[c] (one fixed order of additions) */
static inline __m512 sum_lanes16(__m512 a[16]) {
    __m512 w[8], x[4], y[2];
    for (int i = 0; i < 8; i++)  /* 256-bit halves folded: low half from a[i], high half from a[i + 8] */
        w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[i], a[i + 8], 0x44), _mm512_shuffle_f32x4(a[i], a[i + 8], 0xEE));
    for (int i = 0; i < 4; i++)  /* 128-bit blocks: [a_i, a_i+8, a_i+4, a_i+12] */
        x[i] = _mm512_add_ps(_mm512_shuffle_f32x4(w[i], w[i + 4], 0x88), _mm512_shuffle_f32x4(w[i], w[i + 4], 0xDD));
    for (int i = 0; i < 2; i++) {  /* 64-bit halves of each block: pairs (a_i, a_i+2) and so on */
        __m512d lo = _mm512_unpacklo_pd(_mm512_castps_pd(x[i]), _mm512_castps_pd(x[i + 2]));
        __m512d hi = _mm512_unpackhi_pd(_mm512_castps_pd(x[i]), _mm512_castps_pd(x[i + 2]));
        y[i] = _mm512_add_ps(_mm512_castpd_ps(lo), _mm512_castpd_ps(hi));
    }
    __m512 z = _mm512_add_ps(_mm512_shuffle_ps(y[0], y[1], 0x88), _mm512_shuffle_ps(y[0], y[1], 0xDD));
    /* z holds cells 0 2 1 3 | 8 10 9 11 | 4 6 5 7 | 12 14 13 15 */
    const __m512i order = _mm512_setr_epi32(0, 2, 1, 3, 8, 10, 9, 11, 4, 6, 5, 7, 12, 14, 13, 15);
    return _mm512_permutexvar_ps(order, z);
}

/* bf16 [16] -> float32, exactly */
static inline __m512 widen16(const uint16_t *x) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)x)), 16));
}

/* one query row over cells [first, end) of its sequence; scores: a float buffer of >= end - first + 16 */
static void row(const decode_t *A, int64_t b, int64_t t, int64_t h, float *scores) {
    const int64_t D = A->D, kvh = h / (A->H / A->Hkv);
    const uint16_t *q = A->q + b * A->q_sb + h * A->q_sh + t * A->q_st;
    const uint16_t *k = A->k + b * A->k_sb + kvh * A->k_sh, *v = A->v + b * A->v_sb + kvh * A->v_sh;
    const uint8_t *m = A->mask + b * A->m_sb + t * A->m_st;
    int64_t end = A->S, first = 0;
    while (end > 0 && !m[end - 1]) end--;
    while (first < end && !m[first]) first++;

    __m512bh qv[DMAX / 32];
    for (int64_t c = 0; c < D / 32; c++) qv[c] = (__m512bh)_mm512_loadu_si512(q + c * 32);
    const __m512 scale = _mm512_set1_ps(A->scale), ninf = _mm512_set1_ps(-INFINITY);
    __m512 mx = ninf;
    for (int64_t j0 = first; j0 < end; j0 += 16) {
        __m512 acc[16];
        const int64_t n = end - j0 < 16 ? end - j0 : 16;
        for (int64_t i = 0; i < 16; i++) {
            acc[i] = _mm512_setzero_ps();
            if (i < n) {
                const uint16_t *kr = k + (j0 + i) * A->k_ss;
                for (int64_t c = 0; c < D / 32; c++)
                    acc[i] = _mm512_dpbf16_ps(acc[i], qv[c], (__m512bh)_mm512_loadu_si512(kr + c * 32));
            }
        }
        __m512 s = _mm512_mask_mul_ps(ninf, visible16(m, j0, end), sum_lanes16(acc), scale);
        _mm512_storeu_ps(scores + (j0 - first), s);
        mx = _mm512_max_ps(mx, s);
    }
    const __m512 top = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
    __m512 sum = _mm512_setzero_ps();
    for (int64_t j0 = first; j0 < end; j0 += 16) {  /* masked cells: exp(-inf) = 0 */
        float *s = scores + (j0 - first);
        __m512 e = _mm512_maskz_mov_ps(visible16(m, j0, end), exp512(_mm512_sub_ps(_mm512_loadu_ps(s), top)));
        _mm512_storeu_ps(s, e);
        sum = _mm512_add_ps(sum, e);
    }
    const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum));
    uint16_t *o = A->out + ((b * A->T + t) * A->H + h) * D;
    for (int64_t d0 = 0; d0 < D; d0 += 64) {  /* four 16-dim slices of the output at a time */
        const int nc = (int)((D - d0) / 16 < 4 ? (D - d0) / 16 : 4);
        __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
        for (int64_t j = first; j < end; j++) {
            const float p = scores[j - first];
            if (p == 0.0f) continue;  /* masked (or underflowed) cell: adds nothing */
            const __m512 pv = _mm512_set1_ps(p);
            const uint16_t *vr = v + j * A->v_ss + d0;
            for (int c = 0; c < nc; c++) acc[c] = _mm512_fmadd_ps(pv, widen16(vr + c * 16), acc[c]);
        }
        for (int c = 0; c < nc; c++)
            _mm256_storeu_si256((__m256i *)(o + d0 + c * 16), (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(acc[c], inv)));
    }
}
#endif

/* geometry g: q_sb q_sh q_st, k_sb k_sh k_ss, v_sb v_sh v_ss, m_sb m_st, B H Hkv T S D (17 values: one
 * array made once per decode step and shared by its layers, as a call's arguments cost more than its work) */
int decode_attention_bf16(const int64_t *g, const uint16_t *q, const uint16_t *k, const uint16_t *v,
                          const uint8_t *mask, uint16_t *out, float scale, int threads) {
#ifdef HAVE_BF16_DOT
    decode_t A = {q, k, v, mask, out, g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8], g[9], g[10],
                  g[11], g[12], g[13], g[14], g[15], g[16], scale};
    if (A.D % 32 != 0 || A.D > DMAX || A.H % A.Hkv != 0) return -1;
    const int64_t n_rows = A.B * A.T * A.H, T = A.T, H = A.H, S = A.S;
    int failed = 0;
    if (threads > n_rows) threads = (int)n_rows;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        float *scores = malloc((size_t)(S + 16) * sizeof(float));
        failed = !scores;
#pragma omp for schedule(static)
        for (int64_t i = 0; i < n_rows; i++)
            if (!failed) row(&A, i / (T * H), i / H % T, i % H, scores);
        free(scores);
    }
    return failed;
#else
    (void)g, (void)q, (void)k, (void)v, (void)mask, (void)out, (void)scale, (void)threads;
    return -1;
#endif
}
