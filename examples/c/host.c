/*
 * A minimal C host for pyquant: quantize a float32 matrix to 4 bits,
 * dequantize it back, check the error, and show a bad input being rejected.
 *
 * Build: make -C examples/c     Run: examples/c/host
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pyquant.h"

#define ROWS 4
#define ROW_LEN 256
#define BITS 4
#define GROUP_SIZE 128

int main(void) {
    int rc = 1; /* becomes 0 only when everything below succeeded */
    float *input = NULL, *output = NULL, *scales = NULL, *mins = NULL;
    uint8_t *codes = NULL;
    PqError err; /* caller-allocated; pyquant fills it on every call */

    /* 1. The library must implement the ABI this header describes. */
    if (pq_abi_version() != PQ_ABI_VERSION) {
        fprintf(stderr, "ABI mismatch: library %u, header %u\n",
                (unsigned)pq_abi_version(), (unsigned)PQ_ABI_VERSION);
        return 1;
    }
    printf("pyquant %s (ABI %u)\n", pq_version(), (unsigned)pq_abi_version());

    /* 2. Some input values: ROWS rows of ROW_LEN float32 values. */
    const size_t n = (size_t)ROWS * ROW_LEN;
    input = malloc(n * sizeof *input);
    output = malloc(n * sizeof *output);
    if (input == NULL || output == NULL) goto done;
    for (size_t i = 0; i < n; i++) {
        input[i] = sinf(0.37f * (float)i) * (float)(1 + i / ROW_LEN);
    }

    /* 3. Ask pyquant how large the outputs are, then allocate them. */
    size_t codes_len = 0, n_groups = 0;
    if (pq_quantized_sizes(n, ROW_LEN, BITS, GROUP_SIZE, &codes_len, &n_groups, &err) != PQ_STATUS_OK) {
        fprintf(stderr, "pq_quantized_sizes: %s\n", err.message);
        goto done;
    }
    printf("%zu values -> %zu code bytes, %zu groups\n", n, codes_len, n_groups);
    codes = malloc(codes_len);
    scales = malloc(n_groups * sizeof *scales);
    mins = malloc(n_groups * sizeof *mins);
    if (codes == NULL || scales == NULL || mins == NULL) goto done;

    /* 4. Quantize, reading the input in place; threads = 0 uses every core. */
    if (pq_quantize(PQ_DTYPE_F32, input, n, ROW_LEN, BITS, GROUP_SIZE, 0,
                    codes, codes_len, scales, n_groups, mins, n_groups, &err) != PQ_STATUS_OK) {
        fprintf(stderr, "pq_quantize: %s\n", err.message);
        goto done;
    }

    /* 5. Dequantize back to float32. */
    if (pq_dequantize(codes, codes_len, scales, n_groups, mins, n_groups,
                      ROW_LEN, BITS, GROUP_SIZE, PQ_DTYPE_F32, 0, output, n, &err) != PQ_STATUS_OK) {
        fprintf(stderr, "pq_dequantize: %s\n", err.message);
        goto done;
    }

    /* 6. Each value is within scale/2 of the original, plus a few float ulps. */
    float max_err = 0.0f;
    for (size_t i = 0; i < n; i++) {
        size_t g = i / GROUP_SIZE;
        float e = fabsf(input[i] - output[i]);
        float bound = scales[g] / 2.0f + 4.0f * FLT_EPSILON * fmaxf(fabsf(input[i]), fabsf(mins[g]));
        if (e > bound) {
            fprintf(stderr, "value %zu: error %g exceeds bound %g\n", i, (double)e, (double)bound);
            goto done;
        }
        if (e > max_err) max_err = e;
    }
    printf("max abs error %g (group 0: scale %g, min %g)\n",
           (double)max_err, (double)scales[0], (double)mins[0]);

    /* 7. A batch: several tensors (here the same input at 8 and 2 bits) in
     *    one call, all or nothing. Each item carries pq_quantize's arguments. */
    {
        static uint8_t codes8[ROWS * ROW_LEN], codes2[ROWS * ROW_LEN / 4];
        static float s8[ROWS * ROW_LEN / GROUP_SIZE], m8[ROWS * ROW_LEN / GROUP_SIZE];
        static float s2[ROWS * ROW_LEN / GROUP_SIZE], m2[ROWS * ROW_LEN / GROUP_SIZE];
        const size_t ng = ROWS * ROW_LEN / GROUP_SIZE;
        PqQuantizeItem items[2] = {
            {PQ_DTYPE_F32, input, n, ROW_LEN, 8, GROUP_SIZE, codes8, sizeof codes8, s8, ng, m8, ng, PQ_METHOD_MIN_MAX, PQ_SCALE_DTYPE_F32, NULL, 0, PQ_AXIS_LAST},
            {PQ_DTYPE_F32, input, n, ROW_LEN, 2, GROUP_SIZE, codes2, sizeof codes2, s2, ng, m2, ng, PQ_METHOD_MIN_MAX, PQ_SCALE_DTYPE_F32, NULL, 0, PQ_AXIS_LAST},
        };
        size_t failed_item;
        if (pq_quantize_batch(items, 2, 0, &failed_item, &err) != PQ_STATUS_OK) {
            fprintf(stderr, "pq_quantize_batch: item %zu: %s\n", failed_item, err.message);
            goto done;
        }
        /* Same scales as the single call (the scale depends on bits, the min does not). */
        if (memcmp(m8, mins, sizeof m8) != 0) {
            fprintf(stderr, "batch mins differ from pq_quantize's\n");
            goto done;
        }
        printf("batch of 2 (8 and 2 bits): %zu + %zu code bytes\n", sizeof codes8, sizeof codes2);
    }

    /* 8. Bad input: 3 bits is not supported. pyquant returns a status and a
     *    message, and writes nothing. */
    PqStatus s = pq_quantize(PQ_DTYPE_F32, input, n, ROW_LEN, 5, GROUP_SIZE, 0,
                             codes, codes_len, scales, n_groups, mins, n_groups, &err);
    if (s != PQ_STATUS_INVALID_BITS || err.status != s || err.message[0] == '\0') {
        fprintf(stderr, "bits = 5: expected PQ_STATUS_INVALID_BITS, got %u\n", (unsigned)s);
        goto done;
    }
    printf("bits = 5 rejected as expected (status %u): %s\n", (unsigned)s, err.message);

    rc = 0;
done:
    free(input);
    free(output);
    free(codes);
    free(scales);
    free(mins);
    if (rc != 0) fprintf(stderr, "host: FAILED\n");
    return rc;
}
