/* W^T columns in bf16 from PyTorch's CPU int4 pack, in one pass (see int4_dequant.py for the layout).
 *
 *   packed  uint8 [N/64, K, 32]: byte j of row k in block b holds column 64b + j (low nibble) and
 *           64b + 32 + j (high nibble)
 *   scale, offset  [K/32, N/64, 2, 32], each float16 or float32 (scale_half, offset_half)
 *   out     bf16 [K, 64 * (b1 - b0)]: out[k][64 (b - b0) + 32 h + j] = bf16(q * scale + offset)
 *
 * The arithmetic is that of the PyTorch path it replaces, bit for bit: q * scale rounded to float32, plus
 * offset rounded to float32 (this file is compiled with -ffp-contract=off: no fused multiply-add), then
 * rounded to nearest-even bf16.  Groups of 32 rows are split over `threads` of PyTorch's OpenMP
 * threads (see attention.c on why they are PyTorch's).
 */
#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#endif
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const uint8_t *packed;
    const void *scale, *offset;
    uint16_t *out;
    int64_t k, b0, b1, n_blocks;
    int scale_half, offset_half;
} rebuild_t;

static inline uint16_t bf16_rne(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

#if defined(__AVX512F__) && defined(__AVX512BW__)
static inline __m256i bf16_rne16(__m512 f) {
    __m512i u = _mm512_castps_si512(f);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    u = _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
    return _mm512_cvtepi32_epi16(_mm512_srli_epi32(u, 16));
}

/* 16 nibbles (as bytes) -> 16 bf16 weights */
static inline void weights16(__m128i q, const float *s, const float *o, uint16_t *out) {
    __m512 w = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(q)), _mm512_loadu_ps(s));
    w = _mm512_add_ps(w, _mm512_loadu_ps(o));
    _mm256_storeu_si256((__m256i *)out, bf16_rne16(w));
}

/* one row's 64 columns of one block: bytes p[0..31] */
static inline void block_row(const uint8_t *p, const float *s, const float *o, uint16_t *out) {
    __m256i bytes = _mm256_loadu_si256((const __m256i *)p);
    __m256i lo = _mm256_and_si256(bytes, _mm256_set1_epi8(15));
    __m256i hi = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), _mm256_set1_epi8(15));
    weights16(_mm256_castsi256_si128(lo), s, o, out);
    weights16(_mm256_extracti128_si256(lo, 1), s + 16, o + 16, out + 16);
    weights16(_mm256_castsi256_si128(hi), s + 32, o + 32, out + 32);
    weights16(_mm256_extracti128_si256(hi, 1), s + 48, o + 48, out + 48);
}
#else
static inline void block_row(const uint8_t *p, const float *s, const float *o, uint16_t *out) {
    for (int j = 0; j < 32; j++) {
        float wl = (float)(p[j] & 15) * s[j], wh = (float)(p[j] >> 4) * s[32 + j];
        out[j] = bf16_rne(wl + o[j]);
        out[32 + j] = bf16_rne(wh + o[32 + j]);
    }
}
#endif

static void load_params(const rebuild_t *J, const void *src, int half, int64_t g, float *dst) {
    /* group g's values for blocks b0..b1-1 as float32 */
    int64_t first = (g * J->n_blocks + J->b0) * 64, count = (J->b1 - J->b0) * 64;
    if (half) {
        const _Float16 *h = (const _Float16 *)src + first;
        for (int64_t i = 0; i < count; i++) dst[i] = (float)h[i];
    } else {
        memcpy(dst, (const float *)src + first, count * sizeof(float));
    }
}

static int rebuild(const rebuild_t *J, int threads) {
    const int64_t nb = J->b1 - J->b0, n = nb * 64;
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        float *s = malloc(2 * n * sizeof(float)), *o = s + n;  /* one group's scales and offsets */
        failed = s == NULL;
#pragma omp for
        for (int64_t g = 0; g < J->k / 32; g++) {
            if (s == NULL) continue;
            load_params(J, J->scale, J->scale_half, g, s);
            load_params(J, J->offset, J->offset_half, g, o);
            for (int64_t k = g * 32; k < g * 32 + 32; k++) {
                uint16_t *row = J->out + k * n;
                for (int64_t b = 0; b < nb; b++)
                    block_row(J->packed + ((J->b0 + b) * J->k + k) * 32, s + b * 64, o + b * 64, row + b * 64);
            }
        }
        free(s);
    }
    return failed;
}

int int4_rebuild_columns(const uint8_t *packed, const void *scale, int scale_half, const void *offset, int offset_half,
                         int64_t n_total, int64_t k, int64_t b0, int64_t b1, uint16_t *out, int threads) {
    rebuild_t J = {packed, scale, offset, out, k, b0, b1, n_total / 64, scale_half, offset_half};
    return rebuild(&J, threads);
}
