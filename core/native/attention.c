/* Attention for many-query batches on the CPU: bf16 inputs, float32 scores and softmax, bf16 output.
 *
 * The flash-attention loop: for a tile of query rows, key blocks of 64 cells up to the last cell any row
 * of the tile sees; scores by AVX-512 bf16 dot products (float32 accumulation, never rounded to bf16),
 * an online softmax in float32 (running max and sum per row), and probabilities rounded to bf16 for the
 * dot products with the values, as PyTorch's bf16 softmax output is.  Grouped-query heads that share a
 * KV head are rows of the same tile, so each K/V block is read once for all of them.
 *
 *   q     bf16 [B, H, T, D]      (strides q_sb, q_sh, q_st in elements; D contiguous)
 *   k, v  bf16 [B, Hkv, S, D]    (strides *_sb, *_sh, *_ss)
 *   mask  uint8 [B, T, S]        (strides m_sb, m_st; S contiguous): nonzero where a query sees a cell;
 *                                 every row sees at least one cell
 *   out   bf16 [B, T, H * D]     (contiguous)
 *
 * K and V are first repacked per (sequence, KV head) into the pair layouts the dot-product instruction
 * reads (zero-padded to whole blocks).  Work is split by (sequence, KV head, query tile) over OpenMP
 * threads: this library is linked against libgomp.so.1, which resolves to the copy PyTorch has loaded,
 * so these are PyTorch's own worker threads (a thread of our own found the second core busy with
 * PyTorch's workers spinning between parallel regions, and gained nothing).
 * Returns 0, or -1 where this build has no AVX-512 bf16 (callers then use PyTorch).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512BF16__) && defined(__AVX512VL__)
#include <immintrin.h>
#define HAVE_BF16_DOT 1
#include "bf16_simd.h"
#endif

int attention_supported(void) {
#ifdef HAVE_BF16_DOT
    return 1;
#else
    return 0;
#endif
}

#ifdef HAVE_BF16_DOT

enum { KB = 64, TQ = 16, RQ = 4 };  /* keys per block, query positions per tile, rows per register tile */

typedef struct {
    const uint16_t *q, *k, *v;
    const uint8_t *mask;
    uint16_t *out;
    int64_t q_sb, q_sh, q_st, k_sb, k_sh, k_ss, v_sb, v_sh, v_ss, m_sb, m_st;
    int64_t B, H, Hkv, T, S, D, S_pad;
    float scale;
    uint16_t *kp, *vp;  /* repacked K and V, one [S_pad * D] slab per (b, kvh) */
} attn_t;

/* K block of 16 cells, pair p of dims: lane j holds (k[j][2p], k[j][2p+1]) */
static void repack(const attn_t *A, int64_t b, int64_t h) {
    int64_t D = A->D, S = A->S;
    const uint16_t *k = A->k + b * A->k_sb + h * A->k_sh, *v = A->v + b * A->v_sb + h * A->v_sh;
    uint16_t *kp = A->kp + (b * A->Hkv + h) * A->S_pad * D, *vp = A->vp + (b * A->Hkv + h) * A->S_pad * D;
    for (int64_t j = 0; j < S; j++) {
        const uint16_t *kr = k + j * A->k_ss, *vr = v + j * A->v_ss;
        uint16_t *kdst = kp + (j / 16) * 16 * D + (j % 16) * 2;  /* + p * 32 + {0, 1} */
        for (int64_t p = 0; p < D / 2; p++) {
            kdst[p * 32] = kr[2 * p];
            kdst[p * 32 + 1] = kr[2 * p + 1];
        }
        /* V, cell pair i = j / 2, dims c * 16 + l: lane l holds (v[2i][16c + l], v[2i + 1][16c + l]) */
        uint16_t *vdst = vp + (j / 2) * 2 * D + (j % 2);
        for (int64_t d = 0; d < D; d++) vdst[(d / 16) * 32 + (d % 16) * 2] = vr[d];
    }
}


typedef struct {
    const uint16_t *q;   /* the row's query */
    const uint8_t *mask; /* the row's mask over cells */
    float m, l;          /* running max and sum of its softmax */
    float *acc;          /* [D] running sum of p * v */
} row_t;

/* one block of KB cells for RQ rows */
static void block(const attn_t *A, row_t *rows, const uint16_t *kp, const uint16_t *vp, int64_t j0, uint16_t *pbuf) {
    const int64_t D = A->D, pairs = D / 2;
    __m512 s[RQ][KB / 16];
    for (int r = 0; r < RQ; r++)
        for (int c = 0; c < KB / 16; c++) s[r][c] = _mm512_setzero_ps();
    const uint16_t *kb = kp + j0 * D;  /* blocks of 16 cells are 16 * D elements apart */
    for (int64_t p = 0; p < pairs; p++) {
        __m512bh kv[KB / 16];
        for (int c = 0; c < KB / 16; c++) kv[c] = (__m512bh)_mm512_loadu_si512(kb + c * 16 * D + p * 32);
        for (int r = 0; r < RQ; r++) {
            uint32_t qq;
            memcpy(&qq, rows[r].q + 2 * p, 4);
            __m512bh qb = (__m512bh)_mm512_set1_epi32((int)qq);
            for (int c = 0; c < KB / 16; c++) s[r][c] = _mm512_dpbf16_ps(s[r][c], qb, kv[c]);
        }
    }
    const __m512 scale = _mm512_set1_ps(A->scale), ninf = _mm512_set1_ps(-INFINITY);
    for (int r = 0; r < RQ; r++) {
        row_t *R = &rows[r];
        __mmask16 vis[KB / 16];
        __m512 mx = ninf;
        for (int c = 0; c < KB / 16; c++) {
            vis[c] = visible16(R->mask, j0 + c * 16, A->S);
            s[r][c] = _mm512_mask_mul_ps(ninf, vis[c], s[r][c], scale);
            mx = _mm512_max_ps(mx, s[r][c]);
        }
        float bmax = _mm512_reduce_max_ps(mx);
        uint16_t *prow = pbuf + r * KB;
        if (bmax == -INFINITY) {  /* nothing visible in this block: no contribution */
            memset(prow, 0, KB * sizeof(uint16_t));
            continue;
        }
        float m_new = bmax > R->m ? bmax : R->m;
        float corr = R->m == -INFINITY ? 0.0f : expf(R->m - m_new);
        __m512 mnew = _mm512_set1_ps(m_new), sum = _mm512_setzero_ps();
        for (int c = 0; c < KB / 16; c++) {
            __m512 e = _mm512_maskz_mov_ps(vis[c], exp512(_mm512_sub_ps(s[r][c], mnew)));
            sum = _mm512_add_ps(sum, e);
            _mm256_storeu_si256((__m256i *)(prow + c * 16), (__m256i)_mm512_cvtneps_pbh(e));
        }
        R->l = R->l * corr + _mm512_reduce_add_ps(sum);
        R->m = m_new;
        if (corr != 1.0f) {
            __m512 cv = _mm512_set1_ps(corr);
            for (int64_t d = 0; d < D; d += 16) _mm512_storeu_ps(R->acc + d, _mm512_mul_ps(_mm512_loadu_ps(R->acc + d), cv));
        }
    }
    /* acc[r] += P[r] . V over the block's cell pairs, four 16-dim slices at a time */
    const uint16_t *vb = vp + j0 * D;  /* cell pairs are 2 * D elements apart */
    for (int64_t d0 = 0; d0 < D; d0 += 64) {
        int nc = (int)((D - d0) / 16 < 4 ? (D - d0) / 16 : 4);
        __m512 o[RQ][4];
        for (int r = 0; r < RQ; r++)
            for (int c = 0; c < 4; c++) o[r][c] = _mm512_setzero_ps();
        for (int i = 0; i < KB / 2; i++) {
            __m512bh vv[4];
            for (int c = 0; c < nc; c++) vv[c] = (__m512bh)_mm512_loadu_si512(vb + i * 2 * D + (d0 / 16 + c) * 32);
            for (int r = 0; r < RQ; r++) {
                uint32_t pp;
                memcpy(&pp, pbuf + r * KB + 2 * i, 4);
                __m512bh pb = (__m512bh)_mm512_set1_epi32((int)pp);
                for (int c = 0; c < nc; c++) o[r][c] = _mm512_dpbf16_ps(o[r][c], pb, vv[c]);
            }
        }
        for (int r = 0; r < RQ; r++)
            for (int c = 0; c < nc; c++) {
                float *a = rows[r].acc + d0 + c * 16;
                _mm512_storeu_ps(a, _mm512_add_ps(_mm512_loadu_ps(a), o[r][c]));
            }
    }
}

/* last cell + 1 and first cell a mask row sees */
static void extent(const uint8_t *m, int64_t S, int64_t *first, int64_t *end) {
    int64_t e = S;
    while (e > 0 && !m[e - 1]) e--;
    int64_t f = 0;
    while (f < e && !m[f]) f++;
    *first = f;
    *end = e;
}

static void tile(const attn_t *A, int64_t task, row_t *rows, float *acc, uint16_t *pbuf) {
    const int64_t D = A->D, g = A->H / A->Hkv, n_tiles = (A->T + TQ - 1) / TQ;
    const int64_t b = task / (A->Hkv * n_tiles), h = task / n_tiles % A->Hkv, t0 = task % n_tiles * TQ;
    const int64_t nt = A->T - t0 < TQ ? A->T - t0 : TQ;
    int64_t n = g * nt, n_pad = (n + RQ - 1) / RQ * RQ, first = A->S, end = 0;
    for (int64_t i = 0; i < n_pad; i++) {
        int64_t ii = i < n ? i : n - 1;  /* padding rows repeat the last one; their results are dropped */
        int64_t gi = ii / nt, t = t0 + ii % nt;
        rows[i].q = A->q + b * A->q_sb + (h * g + gi) * A->q_sh + t * A->q_st;
        rows[i].mask = A->mask + b * A->m_sb + t * A->m_st;
        rows[i].m = -INFINITY;
        rows[i].l = 0.0f;
        rows[i].acc = acc + i * D;
        memset(rows[i].acc, 0, D * sizeof(float));
        if (i < n && gi == 0) {
            int64_t f, e;
            extent(rows[i].mask, A->S, &f, &e);
            if (f < first) first = f;
            if (e > end) end = e;
        }
    }
    const uint16_t *kp = A->kp + (b * A->Hkv + h) * A->S_pad * D, *vp = A->vp + (b * A->Hkv + h) * A->S_pad * D;
    for (int64_t j0 = first / KB * KB; j0 < end; j0 += KB)
        for (int64_t i = 0; i < n_pad; i += RQ) block(A, rows + i, kp, vp, j0, pbuf);
    for (int64_t i = 0; i < n; i++) {
        int64_t gi = i / nt, t = t0 + i % nt;
        uint16_t *o = A->out + ((b * A->T + t) * A->H + h * g + gi) * D;
        __m512 inv = _mm512_set1_ps(1.0f / rows[i].l);
        for (int64_t d = 0; d < D; d += 16)
            _mm256_storeu_si256((__m256i *)(o + d), (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(_mm512_loadu_ps(rows[i].acc + d), inv)));
    }
}

static int tiles(const attn_t *A, int threads) {
    const int64_t g = A->H / A->Hkv, rows_max = (g * TQ + RQ - 1) / RQ * RQ;
    const int64_t n_tasks = A->B * A->Hkv * ((A->T + TQ - 1) / TQ);
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        row_t *rows = malloc(rows_max * sizeof(row_t));
        float *acc = malloc(rows_max * A->D * sizeof(float));
        uint16_t *pbuf = malloc(RQ * KB * sizeof(uint16_t));
        failed = !rows || !acc || !pbuf;
#pragma omp for schedule(dynamic, 1)
        for (int64_t task = 0; task < n_tasks; task++)
            if (!failed) tile(A, task, rows, acc, pbuf);
        free(rows), free(acc), free(pbuf);
    }
    return failed;
}
#endif

int attention_bf16(const uint16_t *q, int64_t q_sb, int64_t q_sh, int64_t q_st, const uint16_t *k, int64_t k_sb,
                   int64_t k_sh, int64_t k_ss, const uint16_t *v, int64_t v_sb, int64_t v_sh, int64_t v_ss,
                   const uint8_t *mask, int64_t m_sb, int64_t m_st, uint16_t *out, int64_t B, int64_t H, int64_t Hkv,
                   int64_t T, int64_t S, int64_t D, float scale, int threads) {
#ifdef HAVE_BF16_DOT
    if (D % 32 != 0 || H % Hkv != 0) return -1;
    attn_t A = {q, k, v, mask, out, q_sb, q_sh, q_st, k_sb, k_sh, k_ss, v_sb, v_sh, v_ss, m_sb, m_st,
                B, H, Hkv, T, S, D, (S + KB - 1) / KB * KB, scale, NULL, NULL};
    size_t slab = (size_t)(A.S_pad * D);
    A.kp = calloc(slab * B * Hkv, sizeof(uint16_t));  /* zero padding: a padded cell meets p = 0, not NaN */
    A.vp = calloc(slab * B * Hkv, sizeof(uint16_t));
    int failed = !A.kp || !A.vp;
    if (!failed) {
#pragma omp parallel for collapse(2) num_threads(threads)
        for (int64_t b = 0; b < B; b++)
            for (int64_t h = 0; h < Hkv; h++) repack(&A, b, h);
        failed = tiles(&A, threads);
    }
    free(A.kp), free(A.vp);
    return failed;
#else
    (void)q, (void)q_sb, (void)q_sh, (void)q_st, (void)k, (void)k_sb, (void)k_sh, (void)k_ss, (void)v, (void)v_sb;
    (void)v_sh, (void)v_ss, (void)mask, (void)m_sb, (void)m_st, (void)out, (void)B, (void)H, (void)Hkv, (void)T;
    (void)S, (void)D, (void)scale, (void)threads;
    return -1;
#endif
}
