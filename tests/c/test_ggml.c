/* The GGML functions of the C ABI from C: sizes, names, quantize with and
 * without an importance matrix, dequantize, the batch form, and the error
 * paths (nothing written on failure). Byte-exactness against ggml itself is
 * tested from Python (tests/test_ggml.py). */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "check.h"
#include "pyquant.h"

enum { ROWS = 2, COLS = 512, Q4_K = 12, Q8_0 = 8, IQ4_XS = 23 };

static float input[ROWS * COLS], back[ROWS * COLS], weights[COLS];
static uint8_t out[2 * ROWS * COLS], out2[2 * ROWS * COLS];

static float max_abs_error(void) {
    float worst = 0;
    for (int i = 0; i < ROWS * COLS; i++) {
        float e = fabsf(back[i] - input[i]);
        if (e > worst) worst = e;
    }
    return worst;
}

int main(void) {
    PqError err;
    size_t values, bytes, len;
    for (int i = 0; i < ROWS * COLS; i++) input[i] = sinf(0.37f * (float)i) * (1.0f + (float)(i % 7));
    for (int i = 0; i < COLS; i++) weights[i] = 1.0f + (float)(i % 3);

    CHECK(pq_abi_version() == PQ_ABI_VERSION);
    CHECK(strcmp(pq_ggml_type_name(Q4_K), "Q4_K") == 0);
    CHECK(pq_ggml_type_name(4) == NULL);
    CHECK(pq_ggml_block_size(IQ4_XS, &values, &bytes, &err) == PQ_STATUS_OK && values == 256 && bytes == 136);
    CHECK(pq_ggml_block_size(99, &values, &bytes, &err) == PQ_STATUS_UNSUPPORTED_GGML_TYPE);
    CHECK(pq_ggml_quantized_size(Q4_K, ROWS * COLS, COLS, &len, &err) == PQ_STATUS_OK && len == ROWS * 288);
    CHECK(pq_ggml_quantized_size(Q4_K, ROWS * COLS, 100, &len, &err) == PQ_STATUS_SHAPE_MISMATCH);

    /* Without and with an importance matrix; both dequantize close to the input. */
    CHECK(pq_ggml_quantize(Q4_K, PQ_DTYPE_F32, input, ROWS * COLS, COLS, NULL, 0, 0, out, sizeof out, &err) ==
          PQ_STATUS_OK);
    CHECK(pq_ggml_dequantize(Q4_K, out, ROWS * 288, COLS, PQ_DTYPE_F32, 0, back, ROWS * COLS, &err) == PQ_STATUS_OK);
    CHECK(max_abs_error() < 0.6f);
    CHECK(pq_ggml_quantize(Q4_K, PQ_DTYPE_F32, input, ROWS * COLS, COLS, weights, COLS, 1, out2, sizeof out2, &err) ==
          PQ_STATUS_OK);
    CHECK(memcmp(out, out2, ROWS * 288) != 0); /* the weights change the choice */

    /* Errors: nothing written. */
    memset(out2, 0xAB, sizeof out2);
    CHECK(pq_ggml_quantize(Q4_K, PQ_DTYPE_F32, input, ROWS * COLS, COLS, weights, COLS - 1, 1, out2, sizeof out2,
                           &err) == PQ_STATUS_INVALID_IMATRIX);
    CHECK(strstr(err.message, "one per column") != NULL);
    input[700] = NAN;
    CHECK(pq_ggml_quantize(Q8_0, PQ_DTYPE_F32, input, ROWS * COLS, COLS, NULL, 0, 1, out2, sizeof out2, &err) ==
          PQ_STATUS_NON_FINITE);
    CHECK(strstr(err.message, "input value 700") != NULL);
    input[700] = 0.0f;
    CHECK(pq_ggml_quantize(42, PQ_DTYPE_F32, input, ROWS * COLS, COLS, NULL, 0, 1, out2, sizeof out2, NULL) ==
          PQ_STATUS_UNSUPPORTED_GGML_TYPE);
    CHECK(pq_ggml_quantize(Q4_K, PQ_DTYPE_F32, input, ROWS * COLS, COLS, NULL, 0, 1, out2, 100, &err) ==
          PQ_STATUS_BUFFER_TOO_SMALL);
    CHECK(pq_ggml_quantize(Q4_K, PQ_DTYPE_F32, input, ROWS * COLS, COLS, NULL, 0, 1, (uint8_t *)input, 600, &err) ==
          PQ_STATUS_OVERLAP);
    int untouched = 1;
    for (size_t i = 0; i < sizeof out2; i++) untouched &= out2[i] == 0xAB;
    CHECK(untouched);

    /* Batch: the same bytes as the single calls; a bad item stops all. */
    PqGgmlQuantizeItem items[2] = {
        {Q4_K, PQ_DTYPE_F32, input, ROWS * COLS, COLS, NULL, 0, out2, ROWS * 288},
        {Q8_0, PQ_DTYPE_F32, input, COLS, COLS, NULL, 0, out2 + ROWS * 288, 34 * COLS / 32},
    };
    size_t failed = 0;
    CHECK(pq_ggml_quantize_batch(items, 2, 0, &failed, &err) == PQ_STATUS_OK && failed == SIZE_MAX);
    CHECK(memcmp(out, out2, ROWS * 288) == 0);
    items[1].row_len = 48;
    CHECK(pq_ggml_quantize_batch(items, 2, 0, &failed, &err) == PQ_STATUS_SHAPE_MISMATCH && failed == 1);
    CHECK(strncmp(err.message, "item ", 5) != 0); /* the index is in failed, not the message */

    /* Dequantize batch: Q4_K rows back as the single call gives them. */
    static float back2[ROWS * COLS];
    PqGgmlDequantizeItem deq[1] = {{Q4_K, out, ROWS * 288, COLS, PQ_DTYPE_F32, back2, ROWS * COLS}};
    CHECK(pq_ggml_dequantize_batch(deq, 1, 2, &failed, &err) == PQ_STATUS_OK && failed == SIZE_MAX);
    pq_ggml_dequantize(Q4_K, out, ROWS * 288, COLS, PQ_DTYPE_F32, 1, back, ROWS * COLS, &err);
    CHECK(memcmp(back, back2, sizeof back) == 0);
    deq[0].input_len -= 1;
    CHECK(pq_ggml_dequantize_batch(deq, 1, 2, &failed, &err) == PQ_STATUS_BUFFER_TOO_SMALL && failed == 0);
    return report();
}
