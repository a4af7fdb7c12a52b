/* RMSNorm's statistic, row by row, as ggml's CPU rms_norm computes it: each square in float32, their
 * sum in double, in order; mean = (float)(sum / d); scale = 1.0f / sqrtf(mean + eps) in float.
 *
 * The order depends on the row alone, whatever the number of rows: a decode step of many sequences
 * gets each row's statistic exactly as that sequence decoded alone (the server's isolation), in one
 * call instead of a PyTorch dot product per row.
 */
#include <math.h>
#include <stdint.h>

static float row_scale(const float *x, int64_t d, double eps) {
    double sum = 0.0;
    for (int64_t i = 0; i < d; i++) sum += (double)(x[i] * x[i]);
    const float mean = (float)(sum / (double)d);
    return 1.0f / sqrtf(mean + (float)eps);
}

float rms_scale(const float *x, int64_t d, double eps) { return row_scale(x, d, eps); }

void rms_scales(const float *x, int64_t rows, int64_t d, int64_t row_stride, double eps, float *out) {
    for (int64_t r = 0; r < rows; r++) out[r] = row_scale(x + r * row_stride, d, eps);
}
