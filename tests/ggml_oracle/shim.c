/* The few ggml.c pieces that ggml-quants.c links against, plus one entry
 * point per direction with ggml_quantize_chunk's dispatch (start = 0).
 * Compiled together with llama.cpp's own ggml-quants.c by build.py; only
 * the test suite and the bench load it. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ggml-quants.h"
#include "ggml-impl.h"
#include "ggml-common.h"

void ggml_abort(const char * file, int line, const char * fmt, ...) {
    va_list args;
    va_start(args, fmt);
    fprintf(stderr, "ggml oracle abort %s:%d: ", file, line);
    vfprintf(stderr, fmt, args);
    va_end(args);
    fputc('\n', stderr);
    abort();
}

/* Block size and bytes per block of the types the oracle serves; 0 otherwise. */
static void traits(enum ggml_type type, size_t * blck, size_t * bytes) {
    switch (type) {
        case GGML_TYPE_F32:    *blck = 1;      *bytes = 4; return;
        case GGML_TYPE_F16:    *blck = 1;      *bytes = 2; return;
        case GGML_TYPE_BF16:   *blck = 1;      *bytes = 2; return;
        case GGML_TYPE_Q4_0:   *blck = QK4_0;  *bytes = sizeof(block_q4_0); return;
        case GGML_TYPE_Q4_1:   *blck = QK4_1;  *bytes = sizeof(block_q4_1); return;
        case GGML_TYPE_Q5_0:   *blck = QK5_0;  *bytes = sizeof(block_q5_0); return;
        case GGML_TYPE_Q5_1:   *blck = QK5_1;  *bytes = sizeof(block_q5_1); return;
        case GGML_TYPE_Q8_0:   *blck = QK8_0;  *bytes = sizeof(block_q8_0); return;
        case GGML_TYPE_Q2_K:   *blck = QK_K;   *bytes = sizeof(block_q2_K); return;
        case GGML_TYPE_Q3_K:   *blck = QK_K;   *bytes = sizeof(block_q3_K); return;
        case GGML_TYPE_Q4_K:   *blck = QK_K;   *bytes = sizeof(block_q4_K); return;
        case GGML_TYPE_Q5_K:   *blck = QK_K;   *bytes = sizeof(block_q5_K); return;
        case GGML_TYPE_Q6_K:   *blck = QK_K;   *bytes = sizeof(block_q6_K); return;
        case GGML_TYPE_IQ4_NL: *blck = QK4_NL; *bytes = sizeof(block_iq4_nl); return;
        case GGML_TYPE_IQ4_XS: *blck = QK_K;   *bytes = sizeof(block_iq4_xs); return;
        default: *blck = 0; *bytes = 0; return;
    }
}

size_t ggml_type_size(enum ggml_type type) {
    size_t blck, bytes;
    traits(type, &blck, &bytes);
    return bytes;
}

size_t ggml_row_size(enum ggml_type type, int64_t ne) {
    size_t blck, bytes;
    traits(type, &blck, &bytes);
    if (blck == 0) ggml_abort(__FILE__, __LINE__, "type %d not in the oracle", (int) type);
    return bytes * (size_t) ne / blck;
}

const char * ggml_type_name(enum ggml_type type) {
    (void) type;
    return "?";
}

/* Bytes of one row of n_per_row values, 0 for a type the oracle lacks. */
size_t pqo_row_size(int type, int64_t n_per_row) {
    size_t blck, bytes;
    traits((enum ggml_type) type, &blck, &bytes);
    return blck ? bytes * (size_t) n_per_row / blck : 0;
}

/* ggml_quantize_chunk with start = 0 (ggml.c), for the types above. */
size_t pqo_quantize(int type, const float * src, void * dst, int64_t nrows, int64_t n_per_row, const float * imatrix) {
    const int64_t n = nrows * n_per_row;
    switch ((enum ggml_type) type) {
        case GGML_TYPE_Q4_0:   return quantize_q4_0  (src, dst, nrows, n_per_row, imatrix);
        case GGML_TYPE_Q4_1:   return quantize_q4_1  (src, dst, nrows, n_per_row, imatrix);
        case GGML_TYPE_Q5_0:   return quantize_q5_0  (src, dst, nrows, n_per_row, imatrix);
        case GGML_TYPE_Q5_1:   return quantize_q5_1  (src, dst, nrows, n_per_row, imatrix);
        case GGML_TYPE_Q8_0:   return quantize_q8_0  (src, dst, nrows, n_per_row, imatrix);
        case GGML_TYPE_Q2_K:   return quantize_q2_K  (src, dst, nrows, n_per_row, imatrix);
        case GGML_TYPE_Q3_K:   return quantize_q3_K  (src, dst, nrows, n_per_row, imatrix);
        case GGML_TYPE_Q4_K:   return quantize_q4_K  (src, dst, nrows, n_per_row, imatrix);
        case GGML_TYPE_Q5_K:   return quantize_q5_K  (src, dst, nrows, n_per_row, imatrix);
        case GGML_TYPE_Q6_K:   return quantize_q6_K  (src, dst, nrows, n_per_row, imatrix);
        case GGML_TYPE_IQ4_NL: return quantize_iq4_nl(src, dst, nrows, n_per_row, imatrix);
        case GGML_TYPE_IQ4_XS: return quantize_iq4_xs(src, dst, nrows, n_per_row, imatrix);
        case GGML_TYPE_F16: {
            ggml_fp16_t * y = dst; /* ggml_fp32_to_fp16_row */
            for (int64_t i = 0; i < n; i++) y[i] = GGML_FP32_TO_FP16(src[i]);
            return n * sizeof(ggml_fp16_t);
        }
        case GGML_TYPE_BF16: {
            ggml_bf16_t * y = dst; /* ggml_fp32_to_bf16_row_ref */
            for (int64_t i = 0; i < n; i++) y[i] = GGML_FP32_TO_BF16(src[i]);
            return n * sizeof(ggml_bf16_t);
        }
        case GGML_TYPE_F32:
            memcpy(dst, src, n * sizeof(float));
            return n * sizeof(float);
        default:
            return 0;
    }
}

/* dequantize_row_* (the to_float of ggml's type traits) over k values. */
int pqo_dequantize(int type, const void * src, float * dst, int64_t k) {
    switch ((enum ggml_type) type) {
        case GGML_TYPE_Q4_0:   dequantize_row_q4_0  (src, dst, k); return 1;
        case GGML_TYPE_Q4_1:   dequantize_row_q4_1  (src, dst, k); return 1;
        case GGML_TYPE_Q5_0:   dequantize_row_q5_0  (src, dst, k); return 1;
        case GGML_TYPE_Q5_1:   dequantize_row_q5_1  (src, dst, k); return 1;
        case GGML_TYPE_Q8_0:   dequantize_row_q8_0  (src, dst, k); return 1;
        case GGML_TYPE_Q2_K:   dequantize_row_q2_K  (src, dst, k); return 1;
        case GGML_TYPE_Q3_K:   dequantize_row_q3_K  (src, dst, k); return 1;
        case GGML_TYPE_Q4_K:   dequantize_row_q4_K  (src, dst, k); return 1;
        case GGML_TYPE_Q5_K:   dequantize_row_q5_K  (src, dst, k); return 1;
        case GGML_TYPE_Q6_K:   dequantize_row_q6_K  (src, dst, k); return 1;
        case GGML_TYPE_IQ4_NL: dequantize_row_iq4_nl(src, dst, k); return 1;
        case GGML_TYPE_IQ4_XS: dequantize_row_iq4_xs(src, dst, k); return 1;
        case GGML_TYPE_F16: {
            const ggml_fp16_t * x = src;
            for (int64_t i = 0; i < k; i++) dst[i] = GGML_FP16_TO_FP32(x[i]);
            return 1;
        }
        case GGML_TYPE_BF16: {
            const ggml_bf16_t * x = src;
            for (int64_t i = 0; i < k; i++) dst[i] = GGML_BF16_TO_FP32(x[i]);
            return 1;
        }
        case GGML_TYPE_F32:
            memcpy(dst, src, k * sizeof(float));
            return 1;
        default:
            return 0;
    }
}
