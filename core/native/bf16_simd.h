/* AVX-512 helpers shared by the attention kernels (attention.c, decode_attention.c); included only
 * where AVX-512 F/BW/VL/BF16 are on. */
#ifndef LLAMATORCH_BF16_SIMD_H
#define LLAMATORCH_BF16_SIMD_H
#include <immintrin.h>
#include <stdint.h>

static inline __m512 exp512(__m512 x) {
    /* e^x = 2^n * e^r, |r| <= ln2 / 2, a degree-6 Taylor polynomial (error ~1e-7 relative) */
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.0f / 720);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

/* which of the 16 cells from j (of S) a mask row sees */
static inline __mmask16 visible16(const uint8_t *m, int64_t j, int64_t S) {
    int64_t n = S - j;
    if (n <= 0) return 0;
    __mmask16 in = n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1);
    __m128i bytes = _mm_maskz_loadu_epi8(in, m + j);
    return _mm_test_epi8_mask(bytes, bytes);
}

#endif
