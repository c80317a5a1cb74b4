/* Concurrency stress from C: pthreads calling pq_quantize and
 * pq_quantize_batch at once on one shared, read-only input must all get the
 * bytes of a serial call. Prints "N passed, M failed". */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pyquant.h"

#define ROWS 256
#define ROW_LEN 512
#define N (ROWS * ROW_LEN)
#define GROUP 128
#define NG (N / GROUP)
#define THREADS 6
#define ROUNDS 20

static float input[N];
static uint8_t want_codes[N / 2];
static float want_scales[NG], want_mins[NG];

struct outcome { int passed, failed; };

static int same(const uint8_t *c, const float *s, const float *m) {
    return memcmp(c, want_codes, sizeof want_codes) == 0 && memcmp(s, want_scales, sizeof want_scales) == 0 &&
           memcmp(m, want_mins, sizeof want_mins) == 0;
}

static void *worker(void *arg) {
    struct outcome *o = arg;
    uint8_t *codes = malloc(2 * sizeof want_codes);
    float *scales = malloc(2 * sizeof want_scales), *mins = malloc(2 * sizeof want_mins);
    PqError err;
    for (int r = 0; r < ROUNDS; r++) {
        size_t threads = (size_t)(r % 3);  /* 0 = all cores, 1 = serial, 2 */
        if (r % 2 == 0) {
            PqStatus s = pq_quantize(PQ_DTYPE_F32, input, N, ROW_LEN, 4, GROUP, threads, codes, N / 2, scales, NG,
                                     mins, NG, &err);
            if (s == PQ_STATUS_OK && same(codes, scales, mins)) o->passed++; else o->failed++;
        } else {
            /* Two items reading the same input: inputs may overlap, outputs not. */
            PqQuantizeItem items[2] = {
                {PQ_DTYPE_F32, input, N, ROW_LEN, 4, GROUP, codes, N / 2, scales, NG, mins, NG, PQ_METHOD_MIN_MAX, PQ_SCALE_DTYPE_F32, NULL, 0, PQ_AXIS_LAST},
                {PQ_DTYPE_F32, input, N, ROW_LEN, 4, GROUP, codes + N / 2, N / 2, scales + NG, NG, mins + NG, NG, PQ_METHOD_MIN_MAX, PQ_SCALE_DTYPE_F32, NULL, 0, PQ_AXIS_LAST},
            };
            size_t failed_item;
            PqStatus s = pq_quantize_batch(items, 2, threads, &failed_item, &err);
            int ok = s == PQ_STATUS_OK && same(codes, scales, mins) && same(codes + N / 2, scales + NG, mins + NG);
            if (ok) o->passed++; else o->failed++;
        }
    }
    free(codes);
    free(scales);
    free(mins);
    return NULL;
}

int main(void) {
    uint64_t state = 42;
    for (size_t i = 0; i < N; i++) {
        state = state * 6364136223846793005ULL + 1442695040888963407ULL;
        input[i] = (float)((int64_t)(state >> 40) - (1 << 23)) / (float)(1 << 23);
    }
    PqError err;
    if (pq_quantize(PQ_DTYPE_F32, input, N, ROW_LEN, 4, GROUP, 1, want_codes, N / 2, want_scales, NG, want_mins, NG,
                    &err) != PQ_STATUS_OK) {
        printf("serial call failed: %s\n0 passed, 1 failed\n", err.message);
        return 1;
    }
    pthread_t tids[THREADS];
    struct outcome outcomes[THREADS];
    memset(outcomes, 0, sizeof outcomes);
    for (int t = 0; t < THREADS; t++) pthread_create(&tids[t], NULL, worker, &outcomes[t]);
    int passed = 0, failed = 0;
    for (int t = 0; t < THREADS; t++) {
        pthread_join(tids[t], NULL);
        passed += outcomes[t].passed;
        failed += outcomes[t].failed;
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
