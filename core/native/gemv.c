/* Few-row products with 4- and 8-bit weights for CPU decoding, by AVX-512 VNNI integer dot products.
 *
 * y[r, n] = sum_k W[n, k] x[r, k] for r < R (a handful of rows: decode steps), W in groups of 32
 * weights along k with W = q * d + m (q in 0..15, d and m exact per group: Q4_0, Q4_1, Q4_K all are).
 * Each row of x is first rounded to integers per block of 32, xi = round(x / dx) with dx = max|x| / 16256,
 * and split into two int8 planes xi = 128 * hi + lo, so a group's product is
 *     d * dx * (128 * sum(q * hi) + sum(q * lo)) + m * dx * sum(xi)
 * with both sums exact in int32 (vpdpbusd: unsigned weights times signed 8-bit activations).  ggml
 * rounds x to 8 bits (one plane, 127 steps): that moved SmolLM2's logits ~3x further from float32
 * than bf16 activations did and flipped greedy chat answers; 15 bits are as close as bf16 and cost
 * nothing measurable, the products being bound by reading the weights.
 *
 * Weights are repacked at load (core/gemv.py) in tiles of 16 output rows x 32 k, 256 bytes each, tile
 * (g, b) at (g * K/32 + b) * 256: four chunks of 64 bytes, chunk c holding for row i of the tile the
 * bytes 4i..4i+3 = q[16g + i, 32b + 8c + j] | q[16g + i, 32b + 8c + 4 + j] << 4 (j < 4).  A chunk's low
 * nibbles are then 16 rows x 4 consecutive k, exactly the lanes of one vpdpbusd against a plane's
 * x[k..k+3] broadcast, and its high nibbles the next 4 k: each int32 lane accumulates one output row.
 * d and m are [N/16, K/32, 16] (tile order), float32 or half floats.
 *
 * Rows of y are split over OpenMP threads (PyTorch's own, see attention.c) in tiles of 16.
 * Returns 0, or -1 where this build lacks AVX-512 VNNI/BW/BF16 or the shapes do not fit.
 *
 * int4_tiles_rebuild: prefill's bf16 W^T rebuilt from the same tiles (as int4_rebuild.c does from
 * PyTorch's pack): byte j of a chunk's int32 lanes is one k for all 16 rows of the tile, so each
 * (chunk, j, nibble) is 16 consecutive columns of one row of W^T: q * d + m in float32 (multiply, then
 * add: ggml's and PyTorch's rounding), rounded once to bf16.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__) && defined(__AVX512BF16__) && \
    defined(__AVX512VL__)
#include <immintrin.h>
#include <omp.h>
#define HAVE_VNNI 1
#endif

int int4_gemv_supported(void) {
#ifdef HAVE_VNNI
    return 1;
#else
    return 0;
#endif
}

#ifdef HAVE_VNNI

#define MAX_ROWS 4 /* rows of x per pass over the weights (accumulators in registers) */
/* Weights stream from memory once per step, and one core's own requests bound the rate (it doubled
 * with the second thread): prefetching 8 tiles ahead took SmolLM2's 120 products + output from
 * ~19 to ~24 GB/s on an Intel host (1 to 8 KiB tried; 2 KiB was best) */
#define PREFETCH 2048

/* x row (float32 or bf16) -> 15-bit integers xi = round(x / dx) per block of 32 (|xi| <= 16256 =
 * 127 * 128), split into two int8 planes xi = 128 * hi + lo (hi in -127..127, lo in -64..63), for
 * two integer dot products; dx [K/32], sx = dx * sum(xi) and iq = sum(xi) per block */
#define X_MAX 16256
static void quantize_row(const void *x, int x_bf16, int64_t K, int8_t *qhi, int8_t *qlo, float *dx, float *sx,
                         int32_t *iq) {
    for (int64_t b = 0; b < K / 32; b++) {
        __m512 v[2];
        if (x_bf16) {
            const uint16_t *p = (const uint16_t *)x + 32 * b;
            for (int h = 0; h < 2; h++)
                v[h] = _mm512_castsi512_ps(
                    _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(p + 16 * h))), 16));
        } else {
            const float *p = (const float *)x + 32 * b;
            v[0] = _mm512_loadu_ps(p);
            v[1] = _mm512_loadu_ps(p + 16);
        }
        float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v[0]), _mm512_abs_ps(v[1])));
        float d = amax / (float)X_MAX, id = amax > 0.0f ? (float)X_MAX / amax : 0.0f;
        __m512i sum = _mm512_setzero_si512();
        for (int h = 0; h < 2; h++) {
            __m512i xi = _mm512_cvtps_epi32(_mm512_mul_ps(v[h], _mm512_set1_ps(id)));  /* nearest, ties to even */
            xi = _mm512_min_epi32(_mm512_max_epi32(xi, _mm512_set1_epi32(-X_MAX)), _mm512_set1_epi32(X_MAX));
            __m512i hi = _mm512_srai_epi32(_mm512_add_epi32(xi, _mm512_set1_epi32(64)), 7);
            __m512i lo = _mm512_sub_epi32(xi, _mm512_slli_epi32(hi, 7));
            _mm_storeu_si128((__m128i *)(qhi + 32 * b + 16 * h), _mm512_cvtsepi32_epi8(hi));
            _mm_storeu_si128((__m128i *)(qlo + 32 * b + 16 * h), _mm512_cvtsepi32_epi8(lo));
            sum = _mm512_add_epi32(sum, xi);
        }
        int32_t total = _mm512_reduce_add_epi32(sum);
        dx[b] = d;
        sx[b] = d * (float)total;
        iq[b] = total;
    }
}

/* 128 * (a0 + a1) + (b0 + b1): a block's sum from the chains of the high and low planes */
static inline __m512i combine(__m512i a0, __m512i a1, __m512i b0, __m512i b1) {
    return _mm512_add_epi32(_mm512_slli_epi32(_mm512_add_epi32(a0, a1), 7), _mm512_add_epi32(b0, b1));
}

static inline __m512 load_scales(const void *s, int half, int64_t at) {
    if (half) return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)s + at)));
    return _mm512_loadu_ps((const float *)s + at);
}

/* tiles [g0, g1) of 16 output rows for R rows of x (R a constant after inlining) */
static inline __attribute__((always_inline)) void tiles(int R, const uint8_t *w, const void *d, const void *m,
                                                        int half, int64_t nb, int64_t g0, int64_t g1,
                                                        const int8_t *qx, const float *dx, const float *sx,
                                                        int64_t K, float *out, int64_t N) {
    const __m512i low = _mm512_set1_epi8(0x0f);
    for (int64_t g = g0; g < g1; g++) {
        __m512 y[MAX_ROWS];
        for (int r = 0; r < R; r++) y[r] = _mm512_setzero_ps();
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *t = w + (g * nb + b) * 256;
            for (int l = 0; l < 4; l++) _mm_prefetch((const char *)t + PREFETCH + 64 * l, _MM_HINT_T0);
            __m512i ah[MAX_ROWS][2], al[MAX_ROWS][2];  /* chains: high and low planes, even and odd chunks */
            for (int r = 0; r < R; r++)
                for (int e = 0; e < 2; e++) ah[r][e] = al[r][e] = _mm512_setzero_si512();
            for (int c = 0; c < 4; c++) {
                __m512i v = _mm512_loadu_si512(t + 64 * c);
                __m512i lo = _mm512_and_si512(v, low), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
                for (int r = 0; r < R; r++) {
                    const int64_t at = r * 2 * K + 32 * b + 8 * c;
                    int32_t h0, h1, l0, l1;
                    memcpy(&h0, qx + at, 4);
                    memcpy(&h1, qx + at + 4, 4);
                    memcpy(&l0, qx + at + K, 4);
                    memcpy(&l1, qx + at + K + 4, 4);
                    ah[r][c & 1] = _mm512_dpbusd_epi32(ah[r][c & 1], lo, _mm512_set1_epi32(h0));
                    ah[r][c & 1] = _mm512_dpbusd_epi32(ah[r][c & 1], hi, _mm512_set1_epi32(h1));
                    al[r][c & 1] = _mm512_dpbusd_epi32(al[r][c & 1], lo, _mm512_set1_epi32(l0));
                    al[r][c & 1] = _mm512_dpbusd_epi32(al[r][c & 1], hi, _mm512_set1_epi32(l1));
                }
            }
            __m512 dv = load_scales(d, half, (g * nb + b) * 16), mv = load_scales(m, half, (g * nb + b) * 16);
            for (int r = 0; r < R; r++) {
                __m512i s = combine(ah[r][0], ah[r][1], al[r][0], al[r][1]);
                y[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dv, _mm512_set1_ps(dx[r * nb + b])), y[r]);
                y[r] = _mm512_fmadd_ps(mv, _mm512_set1_ps(sx[r * nb + b]), y[r]);
            }
        }
        for (int r = 0; r < R; r++) _mm512_storeu_ps(out + r * N + 16 * g, y[r]);
    }
}

/* int8 weights: tiles of 16 rows x 32 k, 512 bytes, chunk c (8 of them) holding row i's bytes
 * 4i..4i+3 = W[16g + i, 32b + 4c + j] + 128 (unsigned, as vpdpbusd wants its first operand), so a
 * block's sum is sum(w * xi) + 128 * sum(xi); one float32 scale per output row */
static inline __attribute__((always_inline)) void tiles8(int R, const uint8_t *w, const float *rs, int64_t nb,
                                                         int64_t g0, int64_t g1, const int8_t *qx, const float *dx,
                                                         const int32_t *iq, int64_t K, float *out, int64_t N) {
    for (int64_t g = g0; g < g1; g++) {
        __m512 y[MAX_ROWS];
        for (int r = 0; r < R; r++) y[r] = _mm512_setzero_ps();
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *t = w + (g * nb + b) * 512;
            for (int l = 0; l < 8; l++) _mm_prefetch((const char *)t + 2 * PREFETCH + 64 * l, _MM_HINT_T0);
            __m512i ah[MAX_ROWS][2], al[MAX_ROWS][2];
            for (int r = 0; r < R; r++)
                for (int e = 0; e < 2; e++) ah[r][e] = al[r][e] = _mm512_setzero_si512();
            for (int c = 0; c < 8; c++) {
                __m512i v = _mm512_loadu_si512(t + 64 * c);
                for (int r = 0; r < R; r++) {
                    const int64_t at = r * 2 * K + 32 * b + 4 * c;
                    int32_t h, l;
                    memcpy(&h, qx + at, 4);
                    memcpy(&l, qx + at + K, 4);
                    ah[r][c & 1] = _mm512_dpbusd_epi32(ah[r][c & 1], v, _mm512_set1_epi32(h));
                    al[r][c & 1] = _mm512_dpbusd_epi32(al[r][c & 1], v, _mm512_set1_epi32(l));
                }
            }
            for (int r = 0; r < R; r++) {
                __m512i s = combine(ah[r][0], ah[r][1], al[r][0], al[r][1]);
                s = _mm512_sub_epi32(s, _mm512_set1_epi32(128 * iq[r * nb + b]));
                y[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_set1_ps(dx[r * nb + b]), y[r]);
            }
        }
        __m512 scale = _mm512_loadu_ps(rs + 16 * g);
        for (int r = 0; r < R; r++) _mm512_storeu_ps(out + r * N + 16 * g, _mm512_mul_ps(y[r], scale));
    }
}

#endif

/* columns [16 g0, 16 g1) of W^T as bf16 [K, 16 (g1 - g0)] (contiguous) */
int int4_tiles_rebuild(const uint8_t *w, const void *d, const void *m, int scales_half, int64_t N, int64_t K,
                       int64_t g0, int64_t g1, uint16_t *out, int threads) {
#ifdef HAVE_VNNI
    if (N % 16 || K % 32 || g0 < 0 || g1 > N / 16 || g0 >= g1) return -1;
    const int64_t nb = K / 32, ld = 16 * (g1 - g0);
    if (threads < 1) threads = 1;
#pragma omp parallel for collapse(2) num_threads(threads) schedule(static)
    for (int64_t b = 0; b < nb; b++) {
        for (int64_t g = g0; g < g1; g++) {
            const uint8_t *t = w + (g * nb + b) * 256;
            const __m512 dv = load_scales(d, scales_half, (g * nb + b) * 16);
            const __m512 mv = load_scales(m, scales_half, (g * nb + b) * 16);
            const __m512i low = _mm512_set1_epi32(0x0f);
            uint16_t *o = out + (32 * b) * ld + 16 * (g - g0);
            for (int c = 0; c < 4; c++) {
                __m512i v = _mm512_loadu_si512(t + 64 * c);
                for (int j = 0; j < 4; j++) {
                    for (int h = 0; h < 2; h++) {
                        __m512i q = _mm512_and_si512(_mm512_srli_epi32(v, 8 * j + 4 * h), low);
                        __m512 x = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(q), dv), mv);
                        _mm256_storeu_si256((__m256i *)(o + (8 * c + 4 * h + j) * ld), (__m256i)_mm512_cvtneps_pbh(x));
                    }
                }
            }
        }
    }
    return 0;
#else
    (void)w, (void)d, (void)m, (void)scales_half, (void)N, (void)K, (void)g0, (void)g1, (void)out, (void)threads;
    return -1;
#endif
}

/* The few-row product of a tiled matrix: bits 4 (w, d, m as above) or 8 (w, d = float32 row scales);
 * x [R, K] float32 or bf16 (x_bf16), contiguous; y [R, N] float32 or bf16 (y_bf16), contiguous */
static int gemv(int bits, const uint8_t *w, const void *d, const void *m, int scales_half, int64_t N, int64_t K,
                const void *x, int x_bf16, int64_t R, void *y, int y_bf16, int threads) {
#ifdef HAVE_VNNI
    if (N % 16 || K % 32 || R < 1) return -1;
    const int64_t nb = K / 32, ng = N / 16;
    int8_t *qx = malloc((size_t)(2 * R * K + 64));  /* per row: the high plane, then the low one */
    float *dx = malloc(sizeof(float) * (size_t)(3 * R * nb));
    float *out = y_bf16 ? malloc(sizeof(float) * (size_t)(R * N)) : (float *)y;
    if (!qx || !dx || !out) {
        free(qx);
        free(dx);
        if (y_bf16) free(out);
        return -1;
    }
    float *sx = dx + R * nb;
    int32_t *iq = (int32_t *)(dx + 2 * R * nb);
    for (int64_t r = 0; r < R; r++)
        quantize_row((const char *)x + r * K * (x_bf16 ? 2 : 4), x_bf16, K, qx + 2 * r * K, qx + 2 * r * K + K,
                     dx + r * nb, sx + r * nb, iq + r * nb);
    if (threads < 1) threads = 1;
    if (ng < threads) threads = (int)ng;
#pragma omp parallel num_threads(threads)
    {
        int nt = omp_get_num_threads(), it = omp_get_thread_num();
        int64_t g0 = ng * it / nt, g1 = ng * (it + 1) / nt;
        for (int64_t r0 = 0; r0 < R; r0 += MAX_ROWS) {
            int64_t rr = R - r0 < MAX_ROWS ? R - r0 : MAX_ROWS;
            const int8_t *q = qx + 2 * r0 * K;
            const float *dr = dx + r0 * nb, *sr = sx + r0 * nb;
            const int32_t *ir = iq + r0 * nb;
            float *o = out + r0 * N;
            if (bits == 4) {
                switch (rr) {
                    case 1: tiles(1, w, d, m, scales_half, nb, g0, g1, q, dr, sr, K, o, N); break;
                    case 2: tiles(2, w, d, m, scales_half, nb, g0, g1, q, dr, sr, K, o, N); break;
                    case 3: tiles(3, w, d, m, scales_half, nb, g0, g1, q, dr, sr, K, o, N); break;
                    default: tiles(4, w, d, m, scales_half, nb, g0, g1, q, dr, sr, K, o, N); break;
                }
            } else {
                switch (rr) {
                    case 1: tiles8(1, w, d, nb, g0, g1, q, dr, ir, K, o, N); break;
                    case 2: tiles8(2, w, d, nb, g0, g1, q, dr, ir, K, o, N); break;
                    case 3: tiles8(3, w, d, nb, g0, g1, q, dr, ir, K, o, N); break;
                    default: tiles8(4, w, d, nb, g0, g1, q, dr, ir, K, o, N); break;
                }
            }
        }
        if (y_bf16) {
#pragma omp barrier
            int64_t n16 = R * N / 16, e0 = n16 * it / nt * 16, e1 = n16 * (it + 1) / nt * 16;
            uint16_t *yb = (uint16_t *)y;
            for (int64_t e = e0; e < e1; e += 16)  /* rounded to nearest even, as PyTorch's casts */
                _mm256_storeu_si256((__m256i *)(yb + e), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(out + e)));
        }
    }
    free(qx);
    free(dx);
    if (y_bf16) free(out);
    return 0;
#else
    (void)bits, (void)w, (void)d, (void)m, (void)scales_half, (void)N, (void)K, (void)x, (void)x_bf16, (void)R;
    (void)y, (void)y_bf16, (void)threads;
    return -1;
#endif
}

int int4_gemv(const uint8_t *w, const void *d, const void *m, int scales_half, int64_t N, int64_t K,
              const void *x, int x_bf16, int64_t R, void *y, int y_bf16, int threads) {
    return gemv(4, w, d, m, scales_half, N, K, x, x_bf16, R, y, y_bf16, threads);
}

/* w: int8 tiles (see tiles8), scale: float32 [N] */
int int8_gemv(const uint8_t *w, const float *scale, int64_t N, int64_t K, const void *x, int x_bf16, int64_t R,
              void *y, int y_bf16, int threads) {
    return gemv(8, w, scale, NULL, 0, N, K, x, x_bf16, R, y, y_bf16, threads);
}
