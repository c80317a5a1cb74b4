/*
 * Exhaustive test of pyquant's C ABI from C: every status code, exact codes
 * checked by hand and against a C reference of the scheme in docs/scheme.md, and
 * "nothing written on error" proven with canary bytes.
 *
 * Prints "N passed, M failed" as its last line; exits non-zero if M > 0.
 * Built and run by tests/test_c_host.py.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pyquant_test.h" /* pyquant.h and the test-only exports (test-ffi) */

/* ------------------------------------------------------------------ */
/* Tiny test framework                                                  */
/* ------------------------------------------------------------------ */

#include "check.h"

/* The error struct every call below writes to. Pre-filled with garbage (and
 * no NUL) so that the tests see whether pyquant really writes it. */
static PqError err;

static void scribble_err(void) { memset(&err, 'X', sizeof err); }

/* Checks a status, that err mirrors it, and that the message is a
 * NUL-terminated string: empty on success, non-empty (and containing
 * `needle` if given) on error. */
static void check_status(PqStatus got, PqStatus want, const char *needle,
                         const char *expr, int line) {
    const char *nul = memchr(err.message, '\0', sizeof err.message);
    int ok = got == want && err.status == want && nul != NULL &&
             (want == PQ_STATUS_OK ? err.message[0] == '\0' : err.message[0] != '\0') &&
             (needle == NULL || (nul != NULL && strstr(err.message, needle) != NULL));
    if (ok) {
        passed++;
    } else {
        failed++;
        printf("FAIL %s:%d: %s\n    status %u (err.status %u), want %u; message \"%.*s\"%s%s\n",
               __FILE__, line, expr, (unsigned)got, (unsigned)err.status, (unsigned)want,
               (int)sizeof err.message, err.message, needle ? ", want it to contain " : "",
               needle ? needle : "");
    }
}

/* EXPECT(call, status): `call` must use &err as its error argument. */
#define EXPECT(call, want) EXPECT_MSG(call, want, NULL)
#define EXPECT_MSG(call, want, needle)                                       \
    do {                                                                     \
        scribble_err();                                                      \
        PqStatus got_ = (call);                                              \
        check_status(got_, (want), (needle), #call, __LINE__);               \
    } while (0)

/* ------------------------------------------------------------------ */
/* Helpers                                                              */
/* ------------------------------------------------------------------ */

static uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float f32_from_bits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* Exact binary16 -> binary32. */
static float f16_to_f32(uint16_t h) {
    unsigned exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
    float f;
    if (exp == 0) f = ldexpf((float)mant, -24);
    else if (exp == 31) f = mant ? NAN : INFINITY;
    else f = ldexpf((float)(mant | 0x400), (int)exp - 25);
    return (h & 0x8000) ? -f : f;
}

/* Exact bfloat16 -> binary32. */
static float bf16_to_f32(uint16_t b) { return f32_from_bits((uint32_t)b << 16); }

/* Deterministic pseudo-random numbers. */
static uint64_t rng_state = 0x243F6A8885A308D3u;
static uint32_t rng(void) {
    rng_state = rng_state * 6364136223846793005u + 1442695040888963407u;
    return (uint32_t)(rng_state >> 33);
}

/* Values in [-0.5, 0.5) times 10^-3 .. 10^3. */
static float rand_f32(void) {
    float u = (float)(rng() & 0xFFFFFF) / 16777216.0f - 0.5f;
    return u * powf(10.0f, (float)((int)(rng() % 7) - 3));
}

/* Finite f16 / bf16 patterns of moderate magnitude. */
static uint16_t rand_f16(void) {
    return (uint16_t)((rng() & 1u) << 15 | (8u + rng() % 14u) << 10 | (rng() & 0x3FFu));
}
static uint16_t rand_bf16(void) {
    return (uint16_t)((rng() & 1u) << 15 | (115u + rng() % 24u) << 7 | (rng() & 0x7Fu));
}

static float to_f32(uint32_t dtype, const void *p, size_t i) {
    switch (dtype) {
    case PQ_DTYPE_F32: return ((const float *)p)[i];
    case PQ_DTYPE_F16: return f16_to_f32(((const uint16_t *)p)[i]);
    default: return bf16_to_f32(((const uint16_t *)p)[i]);
    }
}

/* The scheme of docs/scheme.md written out in C (f32 arithmetic, no FMA: -std=c11
 * turns contraction off in GCC; rintf rounds half to even). */
static void reference_quantize(uint32_t dtype, const void *in, size_t n, unsigned bits, size_t g,
                               uint8_t *codes, float *scales, float *mins) {
    const float qmax = (float)((1u << bits) - 1);
    memset(codes, 0, n * bits / 8);
    for (size_t gi = 0; gi < n / g; gi++) {
        float lo = INFINITY, hi = -INFINITY;
        for (size_t j = 0; j < g; j++) {
            float x = to_f32(dtype, in, gi * g + j);
            lo = x < lo ? x : lo;
            hi = x > hi ? x : hi;
        }
        lo += 0.0f; /* -0.0 -> +0.0 */
        hi += 0.0f;
        float scale = (hi - lo) / qmax;
        for (size_t j = 0; j < g; j++) {
            size_t i = gi * g + j;
            unsigned q = 0;
            if (scale != 0.0f) {
                float t = (to_f32(dtype, in, i) - lo) / scale;
                t = rintf(t);
                q = (unsigned)(t < 0.0f ? 0.0f : t > qmax ? qmax : t);
            }
            /* One little-endian bit stream: a 3-bit code may spill into the next byte. */
            size_t bit = i * bits;
            codes[bit / 8] |= (uint8_t)(q << (bit % 8));
            if (bit % 8 + bits > 8) codes[bit / 8 + 1] |= (uint8_t)(q >> (8 - bit % 8));
        }
        scales[gi] = scale;
        mins[gi] = lo;
    }
}

static unsigned code_at(const uint8_t *codes, size_t i, unsigned bits) {
    size_t bit = i * bits;
    unsigned word = codes[bit / 8] | (bit % 8 + bits > 8 ? (unsigned)codes[bit / 8 + 1] << 8 : 0u);
    return (word >> (bit % 8)) & ((1u << bits) - 1);
}

/* Output buffers surrounded by guard bytes, all filled with a canary so that
 * a failed call can be shown to have written nothing, inside or around. */
#define GUARD 64
#define CAP 4096
#define CANARY 0xA5
static _Alignas(64) unsigned char codes_mem[GUARD + CAP + GUARD];
static _Alignas(64) unsigned char scales_mem[GUARD + CAP * 4 + GUARD];
static _Alignas(64) unsigned char mins_mem[GUARD + CAP * 4 + GUARD];
static uint8_t *const codes = codes_mem + GUARD;
static float *const scales = (float *)(scales_mem + GUARD);
static float *const mins = (float *)(mins_mem + GUARD);

static void fill_canary(void) {
    memset(codes_mem, CANARY, sizeof codes_mem);
    memset(scales_mem, CANARY, sizeof scales_mem);
    memset(mins_mem, CANARY, sizeof mins_mem);
}

static int is_canary(const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i] != CANARY) return 0;
    return 1;
}

static int outputs_untouched(void) {
    return is_canary(codes_mem, sizeof codes_mem) && is_canary(scales_mem, sizeof scales_mem) &&
           is_canary(mins_mem, sizeof mins_mem);
}

/* After a bad value the outputs may be partly written (ABI 4), but nothing
 * outside the lengths the call was given: the guards and the spare capacity
 * keep the canary. */
static int nothing_written_past(size_t codes_len, size_t groups) {
    return is_canary(codes_mem, GUARD) && is_canary(codes + codes_len, sizeof codes_mem - GUARD - codes_len) &&
           is_canary(scales_mem, GUARD) && is_canary(scales + groups, sizeof scales_mem - GUARD - groups * 4) &&
           is_canary(mins_mem, GUARD) && is_canary(mins + groups, sizeof mins_mem - GUARD - groups * 4);
}

/* Arguments of pq_quantize, so that each test changes one thing. */
typedef struct {
    uint32_t dtype;
    const void *input;
    size_t input_len, row_len;
    uint32_t bits;
    size_t group_size;
    uint8_t *codes;
    size_t codes_len;
    float *scales;
    size_t scales_len;
    float *mins;
    size_t mins_len;
} Q;

static PqStatus quantize(Q a) {
    return pq_quantize(a.dtype, a.input, a.input_len, a.row_len, a.bits, a.group_size, 0, a.codes,
                       a.codes_len, a.scales, a.scales_len, a.mins, a.mins_len, &err);
}

/* pq_quantize_copy with the same arguments, the input taken as bytes. */
static PqStatus quantize_copy(Q a, const uint8_t *bytes, size_t n_bytes) {
    return pq_quantize_copy(a.dtype, bytes, n_bytes, a.row_len, a.bits, a.group_size, 0, a.codes,
                            a.codes_len, a.scales, a.scales_len, a.mins, a.mins_len, &err);
}

/* A valid call: 2 rows of 128 f32 values, 4 bits, groups of 64 ->
 * 128 code bytes and 4 groups, written into the canary buffers. */
static float base_input[256];
static Q base(void) {
    Q a = {PQ_DTYPE_F32, base_input, 256, 128, 4, 64, codes, 128, scales, 4, mins, 4};
    return a;
}

/* ------------------------------------------------------------------ */
/* Tests                                                                */
/* ------------------------------------------------------------------ */

static void test_versions(void) {
    CHECK(pq_abi_version() == PQ_ABI_VERSION);
    CHECK(pq_version() != NULL && strlen(pq_version()) > 0);
    CHECK(sizeof(PqError) == sizeof(uint32_t) + PQ_ERROR_MESSAGE_CAPACITY);
    CHECK(PQ_STATUS_OK == 0 && PQ_STATUS_PANIC == 1 && PQ_STATUS_UNSUPPORTED_DTYPE == 11);
}

static void test_quantized_sizes(void) {
    size_t c = 0, g = 0;
    EXPECT(pq_quantized_sizes(1024 * 256, 256, 4, 128, &c, &g, &err), PQ_STATUS_OK);
    CHECK(c == 1024 * 128 && g == 2048);
    EXPECT(pq_quantized_sizes(12, 4, 2, 4, &c, &g, &err), PQ_STATUS_OK);
    CHECK(c == 3 && g == 3);
    EXPECT(pq_quantized_sizes(3, 3, 8, 1, &c, &g, &err), PQ_STATUS_OK);
    CHECK(c == 3 && g == 3);
    EXPECT(pq_quantized_sizes(0, 128, 8, 128, &c, &g, &err), PQ_STATUS_OK); /* zero rows */
    CHECK(c == 0 && g == 0);

    /* Out-pointers are required and must be aligned. */
    EXPECT_MSG(pq_quantized_sizes(256, 128, 4, 64, NULL, &g, &err), PQ_STATUS_NULL_POINTER, "codes_len");
    EXPECT_MSG(pq_quantized_sizes(256, 128, 4, 64, &c, NULL, &err), PQ_STATUS_NULL_POINTER, "n_groups");
    _Alignas(8) unsigned char raw[3 * sizeof(size_t)];
    EXPECT(pq_quantized_sizes(256, 128, 4, 64, (size_t *)(void *)(raw + 1), &g, &err),
           PQ_STATUS_MISALIGNED);

    /* Layout errors. */
    c = g = 77;
    EXPECT(pq_quantized_sizes(256, 128, 5, 64, &c, &g, &err), PQ_STATUS_INVALID_BITS);
    CHECK(c == 77 && g == 77); /* nothing written on error */
    EXPECT(pq_quantized_sizes(256, 128, 4, 0, &c, &g, &err), PQ_STATUS_INVALID_GROUP_SIZE);
    EXPECT(pq_quantized_sizes(256, 128, 4, 3, &c, &g, &err), PQ_STATUS_INVALID_GROUP_SIZE);
    EXPECT(pq_quantized_sizes(256, 128, 4, 256, &c, &g, &err), PQ_STATUS_INVALID_GROUP_SIZE);
    EXPECT(pq_quantized_sizes(256, 128, 4, SIZE_MAX, &c, &g, &err), PQ_STATUS_INVALID_GROUP_SIZE);
    EXPECT(pq_quantized_sizes(120, 120, 4, 16, &c, &g, &err), PQ_STATUS_SHAPE_MISMATCH);
    EXPECT(pq_quantized_sizes(130, 128, 4, 128, &c, &g, &err), PQ_STATUS_SHAPE_MISMATCH);
    EXPECT(pq_quantized_sizes(0, 0, 4, 128, &c, &g, &err), PQ_STATUS_SHAPE_MISMATCH);

    /* len * bits overflows. */
    size_t huge = SIZE_MAX / 128 * 128;
    EXPECT_MSG(pq_quantized_sizes(huge, 128, 4, 128, &c, &g, &err), PQ_STATUS_SIZE_OVERFLOW, "overflow");
    EXPECT(pq_quantized_sizes(huge, 128, 8, 128, &c, &g, &err), PQ_STATUS_SIZE_OVERFLOW);
    CHECK(c == 77 && g == 77);
    /* ... but a huge length whose code size fits is fine. */
    size_t big = SIZE_MAX / 4 / 4 * 4;
    EXPECT(pq_quantized_sizes(big, 4, 2, 4, &c, &g, &err), PQ_STATUS_OK);
    CHECK(c == big / 4 && g == big / 4);
}

/* Codes checked by hand against the scheme. */
static void test_known_codes(void) {
    Q a = base();
    /* 0,1,2,3 with bits 2, group 4: lo 0, hi 3, scale 1, codes 0,1,2,3 -> 0b11100100. */
    float x[4] = {0, 1, 2, 3};
    a.input = x; a.input_len = 4; a.row_len = 4; a.bits = 2; a.group_size = 4;
    a.codes_len = 1; a.scales_len = 1; a.mins_len = 1;
    fill_canary();
    EXPECT(quantize(a), PQ_STATUS_OK);
    CHECK(codes[0] == 0xE4 && scales[0] == 1.0f && mins[0] == 0.0f);
    CHECK(is_canary(codes + 1, 8) && is_canary(scales + 1, 8) && is_canary(codes_mem, GUARD));

    /* The same values as f16 and bf16 bit patterns. */
    const uint16_t h[4] = {0x0000, 0x3C00, 0x4000, 0x4200};
    const uint16_t b[4] = {0x0000, 0x3F80, 0x4000, 0x4040};
    a.dtype = PQ_DTYPE_F16; a.input = h; codes[0] = 0;
    EXPECT(quantize(a), PQ_STATUS_OK);
    CHECK(codes[0] == 0xE4 && scales[0] == 1.0f && mins[0] == 0.0f);
    a.dtype = PQ_DTYPE_BF16; a.input = b; codes[0] = 0;
    EXPECT(quantize(a), PQ_STATUS_OK);
    CHECK(codes[0] == 0xE4 && scales[0] == 1.0f && mins[0] == 0.0f);

    /* Round half to even: scale 1, (x - lo) = 0.5 -> 0, 1.5 -> 2, 2.5 -> 2. */
    a.dtype = PQ_DTYPE_F32;
    float tie1[4] = {0, 0.5f, 2.5f, 3};   /* codes 0,0,2,3 -> 0b11100000 */
    float tie2[4] = {0, 1.5f, 0.5f, 3};   /* codes 0,2,0,3 -> 0b11001000 */
    a.input = tie1;
    EXPECT(quantize(a), PQ_STATUS_OK);
    CHECK(codes[0] == 0xE0 && scales[0] == 1.0f);
    a.input = tie2;
    EXPECT(quantize(a), PQ_STATUS_OK);
    CHECK(codes[0] == 0xC8 && scales[0] == 1.0f);

    /* 4 bits: 0..15 in one group of 16 -> nibbles in order, low nibble first. */
    float ramp[16];
    for (int i = 0; i < 16; i++) ramp[i] = (float)i;
    a.input = ramp; a.input_len = 16; a.row_len = 16; a.bits = 4; a.group_size = 16;
    a.codes_len = 8;
    EXPECT(quantize(a), PQ_STATUS_OK);
    const uint8_t want4[8] = {0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE};
    CHECK(memcmp(codes, want4, 8) == 0 && scales[0] == 1.0f && mins[0] == 0.0f);

    /* 4 bits, ties: lo 0, hi 30, scale 2; 1/2, 3/2, 5/2 -> 0, 2, 2. */
    float t4[16] = {0, 1, 3, 5, 30};
    a.input = t4;
    EXPECT(quantize(a), PQ_STATUS_OK);
    CHECK(scales[0] == 2.0f && codes[0] == 0x00 && codes[1] == 0x22 && codes[2] == 0x0F);

    /* 8 bits, one code per byte: lo 0, hi 255, scale 1; ties 127.5 -> 128, 126.5 -> 126. */
    float x8[4] = {0.0f, 255.0f, 127.5f, 126.5f};
    a.input = x8; a.input_len = 4; a.row_len = 4; a.bits = 8; a.group_size = 4; a.codes_len = 4;
    EXPECT(quantize(a), PQ_STATUS_OK);
    CHECK(mins[0] == 0.0f && scales[0] == 1.0f);
    CHECK(codes[0] == 0 && codes[1] == 255 && codes[2] == 128 && codes[3] == 126);

    /* Two groups in one row, then one group per row (group_size = row_len). */
    float two[8] = {0, 1, 2, 3, 10, 10, 10, 13};
    a.input = two; a.input_len = 8; a.row_len = 8; a.bits = 2; a.group_size = 4;
    a.codes_len = 2; a.scales_len = 2; a.mins_len = 2;
    EXPECT(quantize(a), PQ_STATUS_OK);
    CHECK(codes[0] == 0xE4 && codes[1] == 0xC0 && scales[0] == 1.0f && scales[1] == 1.0f &&
          mins[0] == 0.0f && mins[1] == 10.0f);
    a.row_len = 4; /* 2 rows of 4: same bytes */
    EXPECT(quantize(a), PQ_STATUS_OK);
    CHECK(codes[0] == 0xE4 && codes[1] == 0xC0 && mins[1] == 10.0f);

    /* Dequantize the hand example back, to f32, f16 and bf16. */
    a.row_len = 8;
    EXPECT(quantize(a), PQ_STATUS_OK);
    float y[8];
    EXPECT(pq_dequantize(codes, 2, scales, 2, mins, 2, 8, 2, 4, PQ_DTYPE_F32, 0, y, 8, &err), PQ_STATUS_OK);
    CHECK(memcmp(y, two, sizeof y) == 0);
    uint16_t yh[8], yb[8];
    EXPECT(pq_dequantize(codes, 2, scales, 2, mins, 2, 8, 2, 4, PQ_DTYPE_F16, 0, yh, 8, &err), PQ_STATUS_OK);
    EXPECT(pq_dequantize(codes, 2, scales, 2, mins, 2, 8, 2, 4, PQ_DTYPE_BF16, 0, yb, 8, &err), PQ_STATUS_OK);
    CHECK(yh[0] == 0x0000 && yh[3] == 0x4200 && yh[4] == 0x4900 && yh[7] == 0x4A80); /* 0 3 10 13 */
    CHECK(yb[0] == 0x0000 && yb[3] == 0x4040 && yb[4] == 0x4120 && yb[7] == 0x4150);
}

/* Random inputs of every dtype and every bits value against the C reference;
 * pq_quantize_copy (also from an odd address) gives the same bytes; the
 * dequantized values are mins + q * scales and within the error bound. */
static void test_reference_all_dtypes_and_bits(void) {
    enum { ROW = 256, ROWS = 3, N = ROW * ROWS };
    static float xf[N];
    static uint16_t xh[N], xb[N];
    for (size_t i = 0; i < N; i++) {
        xf[i] = rand_f32();
        xh[i] = rand_f16();
        xb[i] = rand_bf16();
    }
    const uint32_t dtypes[3] = {PQ_DTYPE_F32, PQ_DTYPE_F16, PQ_DTYPE_BF16};
    const void *inputs[3] = {xf, xh, xb};
    const size_t elem[3] = {4, 2, 2};
    const unsigned all_bits[4] = {2, 3, 4, 8};
    const size_t groups[4] = {8, 32, 128, ROW};
    static uint8_t rc[N], cc[N], unaligned[N * 4 + 1];
    static float rs[N], rm[N], cs[N], cm[N], y[N];

    for (int d = 0; d < 3; d++) {
        for (int bi = 0; bi < 4; bi++) {
            for (int gi = 0; gi < 4; gi++) {
                unsigned bits = all_bits[bi];
                size_t g = groups[gi], nc = N * bits / 8, ng = N / g;
                size_t c_len = 0, g_len = 0;
                EXPECT(pq_quantized_sizes(N, ROW, bits, g, &c_len, &g_len, &err), PQ_STATUS_OK);
                CHECK(c_len == nc && g_len == ng);

                Q a = {dtypes[d], inputs[d], N, ROW, bits, g, codes, nc, scales, ng, mins, ng};
                fill_canary();
                EXPECT(quantize(a), PQ_STATUS_OK);
                reference_quantize(dtypes[d], inputs[d], N, bits, g, rc, rs, rm);
                int same = memcmp(codes, rc, nc) == 0 && memcmp(scales, rs, ng * 4) == 0 &&
                           memcmp(mins, rm, ng * 4) == 0;
                CHECK(same);
                if (!same) printf("    dtype %u bits %u group %zu\n", (unsigned)dtypes[d], bits, g);
                CHECK(is_canary(codes + nc, GUARD) && is_canary(scales + ng, GUARD) &&
                      is_canary(mins + ng, GUARD));

                /* The copying path, from an odd (misaligned) byte address. */
                memcpy(unaligned + 1, inputs[d], N * elem[d]);
                Q b = a;
                b.codes = cc; b.scales = cs; b.mins = cm;
                EXPECT(quantize_copy(b, unaligned + 1, N * elem[d]), PQ_STATUS_OK);
                CHECK(memcmp(cc, codes, nc) == 0 && memcmp(cs, scales, ng * 4) == 0 &&
                      memcmp(cm, mins, ng * 4) == 0);

                /* Dequantize: exactly mins + q * scales, and within the bound. */
                EXPECT(pq_dequantize(codes, nc, scales, ng, mins, ng, ROW, bits, g, PQ_DTYPE_F32, 0, y, N, &err),
                       PQ_STATUS_OK);
                int exact = 1, bounded = 1;
                for (size_t i = 0; i < N; i++) {
                    float s = scales[i / g], m = mins[i / g];
                    float q = (float)code_at(codes, i, bits);
                    float prod = q * s;
                    float want = m + prod;
                    if (f32_bits(y[i]) != f32_bits(want)) exact = 0;
                    float x = to_f32(dtypes[d], inputs[d], i);
                    if (fabsf(x - y[i]) > s / 2 + 4 * FLT_EPSILON * fmaxf(fabsf(x), fabsf(m))) bounded = 0;
                }
                CHECK(exact);
                CHECK(bounded);
            }
        }
    }

    /* Dequantizing to f16 / bf16 rounds the f32 result to nearest. */
    size_t nc = N / 2, ng = N / 64;
    EXPECT(pq_quantize(PQ_DTYPE_F16, xh, N, ROW, 4, 64, 0, codes, nc, scales, ng, mins, ng, &err), PQ_STATUS_OK);
    EXPECT(pq_dequantize(codes, nc, scales, ng, mins, ng, ROW, 4, 64, PQ_DTYPE_F32, 0, y, N, &err), PQ_STATUS_OK);
    static uint16_t yh[N], yb[N];
    EXPECT(pq_dequantize(codes, nc, scales, ng, mins, ng, ROW, 4, 64, PQ_DTYPE_F16, 0, yh, N, &err), PQ_STATUS_OK);
    EXPECT(pq_dequantize(codes, nc, scales, ng, mins, ng, ROW, 4, 64, PQ_DTYPE_BF16, 0, yb, N, &err), PQ_STATUS_OK);
    int near_h = 1, near_b = 1;
    for (size_t i = 0; i < N; i++) {
        float a = fabsf(y[i]);
        /* half an ulp: 2^-11 relative for f16 (2^-25 absolute near 0), 2^-8 for bf16 */
        if (fabsf(f16_to_f32(yh[i]) - y[i]) > fmaxf(a * 0x1p-11f, 0x1p-25f)) near_h = 0;
        if (fabsf(bf16_to_f32(yb[i]) - y[i]) > a * 0x1p-8f) near_b = 0;
    }
    CHECK(near_h);
    CHECK(near_b);
}

/* Outputs longer than needed: only the prefix the layout names is written. */
static void test_longer_outputs(void) {
    Q a = base();
    a.codes_len = 200; a.scales_len = 10; a.mins_len = 10;
    fill_canary();
    EXPECT(quantize(a), PQ_STATUS_OK);
    CHECK(is_canary(codes + 128, CAP - 128) && is_canary(scales + 4, 4 * 6 + GUARD) &&
          is_canary(mins + 4, 4 * 6 + GUARD));
}

/* NULL with length 0 is an empty buffer; NULL with a non-zero length is an error. */
static void test_null_and_empty(void) {
    fill_canary();
    /* Zero rows: everything empty, outputs NULL too. */
    EXPECT(pq_quantize(PQ_DTYPE_F32, NULL, 0, 128, 4, 128, 0, NULL, 0, NULL, 0, NULL, 0, &err), PQ_STATUS_OK);
    EXPECT(pq_quantize(PQ_DTYPE_BF16, NULL, 0, 128, 4, 128, 0, NULL, 0, NULL, 0, NULL, 0, &err), PQ_STATUS_OK);
    /* Zero rows with real output buffers: OK, nothing written. */
    EXPECT(pq_quantize(PQ_DTYPE_F16, NULL, 0, 128, 8, 64, 0, codes, 16, scales, 4, mins, 4, &err), PQ_STATUS_OK);
    EXPECT(pq_quantize_copy(PQ_DTYPE_F32, NULL, 0, 128, 2, 128, 0, codes, 16, scales, 4, mins, 4, &err),
           PQ_STATUS_OK);
    EXPECT(pq_dequantize(NULL, 0, NULL, 0, NULL, 0, 128, 4, 128, PQ_DTYPE_F32, 0, NULL, 0, &err), PQ_STATUS_OK);
    CHECK(outputs_untouched());
    /* Zero rows but row length 0 is still an error. */
    EXPECT(pq_quantize(PQ_DTYPE_F32, NULL, 0, 0, 4, 128, 0, NULL, 0, NULL, 0, NULL, 0, &err),
           PQ_STATUS_SHAPE_MISMATCH);

    /* NULL with a non-zero length, one buffer at a time; the message names it. */
    Q a = base();
    fill_canary();
    a.input = NULL;
    EXPECT_MSG(quantize(a), PQ_STATUS_NULL_POINTER, "input");
    a = base(); a.codes = NULL;
    EXPECT_MSG(quantize(a), PQ_STATUS_NULL_POINTER, "codes");
    a = base(); a.scales = NULL;
    EXPECT_MSG(quantize(a), PQ_STATUS_NULL_POINTER, "scales");
    a = base(); a.mins = NULL;
    EXPECT_MSG(quantize(a), PQ_STATUS_NULL_POINTER, "mins");
    CHECK(outputs_untouched());
    a = base();
    EXPECT_MSG(quantize_copy(a, NULL, 1024), PQ_STATUS_NULL_POINTER, "input");
    a = base(); a.codes = NULL;
    EXPECT_MSG(quantize_copy(a, (const uint8_t *)base_input, 1024), PQ_STATUS_NULL_POINTER, "codes");
    CHECK(outputs_untouched());

    /* NULL with length 0 for an output of a non-empty input: just too small. */
    a = base(); a.codes = NULL; a.codes_len = 0;
    EXPECT_MSG(quantize(a), PQ_STATUS_BUFFER_TOO_SMALL, "codes");
    a = base(); a.scales = NULL; a.scales_len = 0;
    EXPECT_MSG(quantize(a), PQ_STATUS_BUFFER_TOO_SMALL, "scales");
    a = base(); a.mins = NULL; a.mins_len = 0;
    EXPECT_MSG(quantize(a), PQ_STATUS_BUFFER_TOO_SMALL, "mins");
    CHECK(outputs_untouched());

    /* Dequantize with NULL inputs or output. */
    float y[256];
    EXPECT_MSG(pq_dequantize(NULL, 128, scales, 4, mins, 4, 128, 4, 64, PQ_DTYPE_F32, 0, y, 256, &err),
               PQ_STATUS_NULL_POINTER, "codes");
    EXPECT_MSG(pq_dequantize(codes, 128, NULL, 4, mins, 4, 128, 4, 64, PQ_DTYPE_F32, 0, y, 256, &err),
               PQ_STATUS_NULL_POINTER, "scales");
    EXPECT_MSG(pq_dequantize(codes, 128, scales, 4, NULL, 4, 128, 4, 64, PQ_DTYPE_F32, 0, y, 256, &err),
               PQ_STATUS_NULL_POINTER, "mins");
    EXPECT_MSG(pq_dequantize(codes, 128, scales, 4, mins, 4, 128, 4, 64, PQ_DTYPE_F32, 0, NULL, 256, &err),
               PQ_STATUS_NULL_POINTER, "output");
}

static void test_misaligned(void) {
    static _Alignas(16) unsigned char raw[1100];
    memcpy(raw + 1, base_input, 1024);
    Q a = base();
    fill_canary();
    /* f32 input at an odd address: pq_quantize refuses, pq_quantize_copy works. */
    a.input = raw + 1;
    EXPECT_MSG(quantize(a), PQ_STATUS_MISALIGNED, "aligned");
    a.input = raw + 2;
    EXPECT(quantize(a), PQ_STATUS_MISALIGNED);
    a.dtype = PQ_DTYPE_F16; a.input = raw + 1;
    EXPECT(quantize(a), PQ_STATUS_MISALIGNED);
    a.dtype = PQ_DTYPE_BF16;
    EXPECT(quantize(a), PQ_STATUS_MISALIGNED);
    CHECK(outputs_untouched());
    /* f16 at an even address is aligned. */
    a.input = raw + 2;
    EXPECT(quantize(a), PQ_STATUS_OK);

    /* Misaligned outputs (scales and mins must be float-aligned; codes are bytes). */
    fill_canary();
    a = base();
    a.scales = (float *)(void *)(scales_mem + GUARD + 1);
    EXPECT_MSG(quantize(a), PQ_STATUS_MISALIGNED, "scales");
    a = base();
    a.mins = (float *)(void *)(mins_mem + GUARD + 2);
    EXPECT_MSG(quantize(a), PQ_STATUS_MISALIGNED, "mins");
    CHECK(outputs_untouched());
    a = base();
    a.codes = codes + 1;
    EXPECT(quantize(a), PQ_STATUS_OK);

    /* Dequantize into a misaligned output, or from misaligned scales. */
    a = base();
    EXPECT(quantize(a), PQ_STATUS_OK);
    EXPECT_MSG(pq_dequantize(codes, 128, scales, 4, mins, 4, 128, 4, 64, PQ_DTYPE_F32, 0, raw + 1, 256, &err),
               PQ_STATUS_MISALIGNED, "output");
    EXPECT(pq_dequantize(codes, 128, scales, 4, mins, 4, 128, 4, 64, PQ_DTYPE_F16, 0, raw + 1, 256, &err),
           PQ_STATUS_MISALIGNED);
    memcpy(raw + 1, scales, 16);
    float y[256];
    EXPECT(pq_dequantize(codes, 128, (const float *)(const void *)(raw + 1), 4, mins, 4, 128, 4, 64,
                         PQ_DTYPE_F32, 0, y, 256, &err),
           PQ_STATUS_MISALIGNED);
}

/* pq_quantize_block: the same bytes as pq_quantize, as one block of scales,
 * mins and codes; its length and alignment checked before anything is written. */
static void test_block(void) {
    static _Alignas(64) unsigned char block[GUARD + 256];
    uint8_t *b = block + GUARD;
    fill_canary();
    EXPECT(quantize(base()), PQ_STATUS_OK);
    memset(block, CANARY, sizeof block);
    EXPECT(pq_quantize_block(PQ_DTYPE_F32, base_input, 256, 128, 4, 64, 1, b, 200, &err), PQ_STATUS_OK);
    CHECK(memcmp(b, scales, 16) == 0 && memcmp(b + 16, mins, 16) == 0 && memcmp(b + 32, codes, 128) == 0);
    CHECK(is_canary(block, GUARD) && is_canary(b + 160, 96));
    memset(block, CANARY, sizeof block);
    EXPECT_MSG(pq_quantize_block(PQ_DTYPE_F32, base_input, 256, 128, 4, 64, 0, b, 159, &err),
               PQ_STATUS_BUFFER_TOO_SMALL, "block");
    EXPECT_MSG(pq_quantize_block(PQ_DTYPE_F32, base_input, 256, 128, 4, 64, 0, b + 2, 200, &err),
               PQ_STATUS_MISALIGNED, "block");
    EXPECT(pq_quantize_block(PQ_DTYPE_F32, base_input, 256, 128, 4, 64, 0, NULL, 160, &err), PQ_STATUS_NULL_POINTER);
    EXPECT(pq_quantize_block(PQ_DTYPE_F32, base_input, 256, 128, 4, 65, 0, b, 200, &err),
           PQ_STATUS_INVALID_GROUP_SIZE);
    CHECK(is_canary(block, sizeof block));
    EXPECT(pq_quantize_block(PQ_DTYPE_F32, base_input, 256, 128, 4, 64, 0, (uint8_t *)base_input, 1024, &err),
           PQ_STATUS_OVERLAP);
    /* Zero rows: an empty block, NULL allowed. */
    EXPECT(pq_quantize_block(PQ_DTYPE_F32, NULL, 0, 128, 4, 64, 0, NULL, 0, &err), PQ_STATUS_OK);
}

static void test_too_small(void) {
    Q a;
    fill_canary();
    a = base(); a.codes_len = 127;
    EXPECT_MSG(quantize(a), PQ_STATUS_BUFFER_TOO_SMALL, "codes");
    a = base(); a.scales_len = 3;
    EXPECT_MSG(quantize(a), PQ_STATUS_BUFFER_TOO_SMALL, "scales");
    a = base(); a.mins_len = 3;
    EXPECT_MSG(quantize(a), PQ_STATUS_BUFFER_TOO_SMALL, "mins");
    a = base(); a.codes_len = 1; a.scales_len = 1; a.mins_len = 1;
    EXPECT(quantize(a), PQ_STATUS_BUFFER_TOO_SMALL);
    /* Same through the copying path. */
    a = base(); a.codes_len = 64;
    EXPECT(quantize_copy(a, (const uint8_t *)base_input, 1024), PQ_STATUS_BUFFER_TOO_SMALL);
    a = base(); a.mins_len = 0;
    EXPECT(quantize_copy(a, (const uint8_t *)base_input, 1024), PQ_STATUS_BUFFER_TOO_SMALL);
    CHECK(outputs_untouched());
}

static void test_overlap(void) {
    static float in[256 + 64];
    for (int i = 0; i < 256 + 64; i++) in[i] = (float)i;
    const float snapshot_first = in[0];
    Q a = base();
    a.input = in;
    fill_canary();

    /* codes inside the input, at its start, and sharing only its last byte. */
    a.codes = (uint8_t *)in + 100;
    EXPECT_MSG(quantize(a), PQ_STATUS_OVERLAP, "overlap");
    a.codes = (uint8_t *)in;
    EXPECT(quantize(a), PQ_STATUS_OVERLAP);
    a.codes = (uint8_t *)in + 256 * 4 - 1;
    EXPECT(quantize(a), PQ_STATUS_OVERLAP);
    a.codes = (uint8_t *)in + 256 * 4; /* adjacent: fine */
    EXPECT(quantize(a), PQ_STATUS_OK);
    /* scales or mins inside the input. */
    a = base(); a.input = in; a.scales = in + 255;
    EXPECT(quantize(a), PQ_STATUS_OVERLAP);
    a = base(); a.input = in; a.mins = in + 10;
    EXPECT(quantize(a), PQ_STATUS_OVERLAP);
    CHECK(in[0] == snapshot_first && in[10] == 10.0f && in[255] == 255.0f);

    /* Outputs overlapping each other. */
    fill_canary();
    a = base(); a.mins = scales + 3;
    EXPECT_MSG(quantize(a), PQ_STATUS_OVERLAP, "overlaps");
    a = base(); a.mins = scales;
    EXPECT(quantize(a), PQ_STATUS_OVERLAP);
    a = base(); a.codes = (uint8_t *)(scales + 1);
    EXPECT(quantize(a), PQ_STATUS_OVERLAP);
    a = base(); a.scales = (float *)(void *)(codes + 124);
    EXPECT(quantize(a), PQ_STATUS_OVERLAP);
    CHECK(outputs_untouched());
    /* A zero-length output overlaps nothing. */
    a = base(); a.input = NULL; a.input_len = 0; a.codes = codes; a.scales = (float *)(void *)codes;
    a.scales_len = 0; a.mins_len = 0;
    EXPECT(quantize(a), PQ_STATUS_OK);

    /* The copying path checks the source bytes too. */
    a = base(); a.codes = (uint8_t *)in + 512;
    EXPECT(quantize_copy(a, (const uint8_t *)in, 1024), PQ_STATUS_OVERLAP);
    CHECK(outputs_untouched());
}

static void test_invalid_bits_and_groups(void) {
    const uint32_t bad_bits[] = {0, 1, 5, 6, 7, 16, 32, UINT32_MAX};
    Q a;
    fill_canary();
    for (size_t i = 0; i < sizeof bad_bits / sizeof bad_bits[0]; i++) {
        a = base(); a.bits = bad_bits[i];
        EXPECT_MSG(quantize(a), PQ_STATUS_INVALID_BITS, "bits");
    }
    a = base(); a.bits = 5;
    EXPECT(quantize_copy(a, (const uint8_t *)base_input, 1024), PQ_STATUS_INVALID_BITS);

    a = base(); a.group_size = 0;
    EXPECT_MSG(quantize(a), PQ_STATUS_INVALID_GROUP_SIZE, "group_size");
    a = base(); a.group_size = 3; /* 3 * 4 bits is not whole bytes */
    EXPECT_MSG(quantize(a), PQ_STATUS_INVALID_GROUP_SIZE, "multiple of 8");
    a = base(); a.group_size = 2; a.bits = 2;
    EXPECT(quantize(a), PQ_STATUS_INVALID_GROUP_SIZE);
    a = base(); a.group_size = 1; a.bits = 4;
    EXPECT(quantize(a), PQ_STATUS_INVALID_GROUP_SIZE);
    a = base(); a.group_size = 256; /* larger than the row of 128 */
    EXPECT_MSG(quantize(a), PQ_STATUS_INVALID_GROUP_SIZE, "larger");
    a = base(); a.group_size = SIZE_MAX;
    EXPECT(quantize(a), PQ_STATUS_INVALID_GROUP_SIZE);
    a = base(); a.group_size = SIZE_MAX / 4; a.bits = 8;
    EXPECT(quantize(a), PQ_STATUS_INVALID_GROUP_SIZE);
    a = base(); a.group_size = SIZE_MAX / 2 + 1; a.bits = 2;
    EXPECT(quantize(a), PQ_STATUS_INVALID_GROUP_SIZE);

    /* Shapes. */
    a = base(); a.input_len = 240; a.row_len = 120; a.group_size = 16;
    EXPECT_MSG(quantize(a), PQ_STATUS_SHAPE_MISMATCH, "multiple of group_size");
    a = base(); a.input_len = 250;
    EXPECT_MSG(quantize(a), PQ_STATUS_SHAPE_MISMATCH, "row length");
    a = base(); a.input_len = 128 + 64; /* 1.5 rows */
    EXPECT(quantize(a), PQ_STATUS_SHAPE_MISMATCH);
    a = base(); a.row_len = 0;
    EXPECT(quantize(a), PQ_STATUS_SHAPE_MISMATCH);
    a = base(); /* copy: a byte count that is not whole f32 values */
    EXPECT_MSG(quantize_copy(a, (const uint8_t *)base_input, 1023), PQ_STATUS_SHAPE_MISMATCH, "multiple");
    a.dtype = PQ_DTYPE_F16;
    EXPECT(quantize_copy(a, (const uint8_t *)base_input, 511), PQ_STATUS_SHAPE_MISMATCH);

    /* Unknown dtype codes. */
    a = base(); a.dtype = 7;
    EXPECT_MSG(quantize(a), PQ_STATUS_UNSUPPORTED_DTYPE, "dtype");
    a.dtype = 3;
    EXPECT(quantize(a), PQ_STATUS_UNSUPPORTED_DTYPE);
    a.dtype = UINT32_MAX;
    EXPECT(quantize(a), PQ_STATUS_UNSUPPORTED_DTYPE);
    a.dtype = 7;
    EXPECT(quantize_copy(a, (const uint8_t *)base_input, 1024), PQ_STATUS_UNSUPPORTED_DTYPE);
    CHECK(outputs_untouched());
    float y[256];
    EXPECT(pq_quantize(PQ_DTYPE_F32, base_input, 256, 128, 4, 64, 0, codes, 128, scales, 4, mins, 4, &err),
           PQ_STATUS_OK);
    EXPECT_MSG(pq_dequantize(codes, 128, scales, 4, mins, 4, 128, 4, 64, 7, 0, y, 256, &err),
               PQ_STATUS_UNSUPPORTED_DTYPE, "dtype");
    EXPECT(pq_dequantize(codes, 128, scales, 4, mins, 4, 128, 5, 64, PQ_DTYPE_F32, 0, y, 256, &err),
           PQ_STATUS_INVALID_BITS);
    EXPECT(pq_dequantize(codes, 128, scales, 4, mins, 4, 128, 4, 3, PQ_DTYPE_F32, 0, y, 256, &err),
           PQ_STATUS_INVALID_GROUP_SIZE);
    EXPECT(pq_dequantize(codes, 128, scales, 4, mins, 4, 128, 4, 64, PQ_DTYPE_F32, 0, y, 250, &err),
           PQ_STATUS_SHAPE_MISMATCH);
}

static void test_size_overflow(void) {
    Q a;
    fill_canary();
    /* input_len * 8 bits overflows. */
    a = base(); a.input_len = SIZE_MAX / 2; a.row_len = 1; a.group_size = 1; a.bits = 8;
    EXPECT_MSG(quantize(a), PQ_STATUS_SIZE_OVERFLOW, "overflow");
    /* The layout fits (len * 2 bits) but len * 4 bytes of f32 input does not. */
    a = base(); a.input_len = SIZE_MAX / 2 / 4 * 4; a.row_len = 4; a.group_size = 4; a.bits = 2;
    EXPECT_MSG(quantize(a), PQ_STATUS_SIZE_OVERFLOW, "input");
    a.dtype = PQ_DTYPE_F16; /* 2 bytes each: still more than the address space allows */
    EXPECT(quantize(a), PQ_STATUS_SIZE_OVERFLOW);
    a.dtype = PQ_DTYPE_BF16;
    EXPECT(quantize(a), PQ_STATUS_SIZE_OVERFLOW);
    /* Output lengths whose byte size overflows. */
    a = base(); a.codes_len = SIZE_MAX;
    EXPECT_MSG(quantize(a), PQ_STATUS_SIZE_OVERFLOW, "codes");
    a = base(); a.scales_len = SIZE_MAX / 2;
    EXPECT_MSG(quantize(a), PQ_STATUS_SIZE_OVERFLOW, "scales");
    a = base(); a.mins_len = SIZE_MAX / 4 + 1;
    EXPECT_MSG(quantize(a), PQ_STATUS_SIZE_OVERFLOW, "mins");
    /* Copy with a byte count beyond the address space. */
    a = base();
    EXPECT(quantize_copy(a, (const uint8_t *)base_input, SIZE_MAX), PQ_STATUS_SIZE_OVERFLOW);
    /* A pointer whose region would wrap around the end of the address space
     * (never dereferenced: the check comes first). */
    a = base(); a.input = (const void *)(uintptr_t)(UINTPTR_MAX - 15);
    EXPECT_MSG(quantize(a), PQ_STATUS_SIZE_OVERFLOW, "wraps");
    CHECK(outputs_untouched());
    /* Dequantize into an output whose byte size overflows. */
    float y[4];
    EXPECT(pq_dequantize(codes, 128, scales, 4, mins, 4, 4, 2, 4, PQ_DTYPE_F32, 0, y, SIZE_MAX / 2 / 4 * 4, &err),
           PQ_STATUS_SIZE_OVERFLOW);
}

static void test_non_finite(void) {
    Q a;
    const float bad_f32[3] = {NAN, INFINITY, -INFINITY};
    static float x[256];
    for (int k = 0; k < 3; k++) {
        for (int i = 0; i < 256; i++) x[i] = (float)i * 0.25f;
        x[200] = bad_f32[k]; /* group 3 (row 1, column 72) */
        a = base(); a.input = x;
        fill_canary();
        EXPECT_MSG(quantize(a), PQ_STATUS_NON_FINITE, "group 3");
        CHECK(strstr(err.message, "flat index 200") != NULL);
        EXPECT(quantize_copy(a, (const uint8_t *)x, sizeof x), PQ_STATUS_NON_FINITE);
        CHECK(nothing_written_past(128, 4));
    }
    /* A NaN with a payload and a negative NaN are NaN too. */
    x[200] = f32_from_bits(0x7F800001u);
    a = base(); a.input = x;
    EXPECT(quantize(a), PQ_STATUS_NON_FINITE);
    x[200] = f32_from_bits(0xFFC00000u);
    EXPECT(quantize(a), PQ_STATUS_NON_FINITE);
    x[200] = 1.0f;
    x[0] = NAN; /* very first value */
    EXPECT_MSG(quantize(a), PQ_STATUS_NON_FINITE, "group 0");
    x[0] = 0.0f;
    x[255] = INFINITY; /* very last value */
    EXPECT_MSG(quantize(a), PQ_STATUS_NON_FINITE, "group 3");
    x[255] = 1.0f;
    CHECK(nothing_written_past(128, 4));

    /* f16 NaN, +Inf, -Inf and bf16 NaN, +Inf, -Inf. */
    const uint16_t bad_f16[3] = {0x7E00, 0x7C00, 0xFC00};
    const uint16_t bad_bf16[3] = {0x7FC0, 0x7F80, 0xFF80};
    static uint16_t h[256];
    for (int k = 0; k < 3; k++) {
        for (int i = 0; i < 256; i++) h[i] = 0x3C00; /* 1.0 */
        h[77] = bad_f16[k];
        a = base(); a.dtype = PQ_DTYPE_F16; a.input = h;
        EXPECT_MSG(quantize(a), PQ_STATUS_NON_FINITE, "group 1");
        EXPECT(quantize_copy(a, (const uint8_t *)h, sizeof h), PQ_STATUS_NON_FINITE);
        for (int i = 0; i < 256; i++) h[i] = 0x3F80; /* 1.0 */
        h[130] = bad_bf16[k];
        a.dtype = PQ_DTYPE_BF16;
        EXPECT_MSG(quantize(a), PQ_STATUS_NON_FINITE, "group 2");
        EXPECT(quantize_copy(a, (const uint8_t *)h, sizeof h), PQ_STATUS_NON_FINITE);
    }
    CHECK(nothing_written_past(128, 4));

    /* +FLT_MAX and -FLT_MAX in one group: the range overflows, no infinite scale. */
    for (int i = 0; i < 256; i++) x[i] = 0.0f;
    x[64] = FLT_MAX;
    x[65] = -FLT_MAX;
    a = base(); a.input = x;
    EXPECT_MSG(quantize(a), PQ_STATUS_NON_FINITE, "overflows");
    CHECK(nothing_written_past(128, 4));
    /* ... in different groups it is fine, as is a range of exactly FLT_MAX. */
    x[65] = 0.0f;
    x[0] = -FLT_MAX;
    EXPECT(quantize(a), PQ_STATUS_OK);
    CHECK(scales[0] == FLT_MAX / 15.0f && mins[0] == -FLT_MAX && scales[1] == FLT_MAX / 15.0f);
    float y[256];
    EXPECT(pq_dequantize(codes, 128, scales, 4, mins, 4, 128, 4, 64, PQ_DTYPE_F32, 0, y, 256, &err), PQ_STATUS_OK);
    CHECK(y[0] == -FLT_MAX && y[64] == FLT_MAX && isfinite(y[1]) && fabsf(y[1]) <= scales[0] / 2);
    /* FLT_MAX twice: a constant group. */
    float m2[2] = {FLT_MAX, FLT_MAX};
    EXPECT(pq_quantize(PQ_DTYPE_F32, m2, 2, 2, 4, 2, 0, codes, 1, scales, 1, mins, 1, &err), PQ_STATUS_OK);
    CHECK(scales[0] == 0.0f && mins[0] == FLT_MAX && codes[0] == 0);

    /* Dequantize refuses non-finite scales or mins, naming the first. */
    EXPECT(pq_quantize(PQ_DTYPE_F32, base_input, 256, 128, 4, 64, 0, codes, 128, scales, 4, mins, 4, &err),
           PQ_STATUS_OK);
    for (int i = 0; i < 256; i++) y[i] = 42.0f;
    float s[4], m[4];
    memcpy(s, scales, sizeof s);
    memcpy(m, mins, sizeof m);
    s[2] = NAN;
    EXPECT_MSG(pq_dequantize(codes, 128, s, 4, m, 4, 128, 4, 64, PQ_DTYPE_F32, 0, y, 256, &err),
               PQ_STATUS_NON_FINITE, "group 2");
    s[2] = scales[2];
    m[3] = -INFINITY;
    EXPECT_MSG(pq_dequantize(codes, 128, s, 4, m, 4, 128, 4, 64, PQ_DTYPE_F32, 0, y, 256, &err),
               PQ_STATUS_NON_FINITE, "group 3");
    s[0] = INFINITY;
    m[3] = mins[3];
    EXPECT(pq_dequantize(codes, 128, s, 4, m, 4, 128, 4, 64, PQ_DTYPE_BF16, 0, y, 256, &err),
           PQ_STATUS_NON_FINITE);
    /* (y may be partly written: ABI 4.) */
}

static void test_constant_zero_subnormal_negzero(void) {
    Q a = base();
    static float x[256], y[256];
    /* group 0 all zeros, group 1 constant 1.25, group 2 constant -3, group 3 -0.0 */
    for (int i = 0; i < 256; i++)
        x[i] = i < 64 ? 0.0f : i < 128 ? 1.25f : i < 192 ? -3.0f : -0.0f;
    a.input = x;
    fill_canary();
    EXPECT(quantize(a), PQ_STATUS_OK);
    CHECK(scales[0] == 0.0f && scales[1] == 0.0f && scales[2] == 0.0f && scales[3] == 0.0f);
    CHECK(mins[0] == 0.0f && mins[1] == 1.25f && mins[2] == -3.0f);
    CHECK(f32_bits(mins[3]) == 0 && f32_bits(scales[3]) == 0); /* +0.0, not -0.0 */
    uint8_t zeros[128] = {0};
    CHECK(memcmp(codes, zeros, 128) == 0);
    EXPECT(pq_dequantize(codes, 128, scales, 4, mins, 4, 128, 4, 64, PQ_DTYPE_F32, 0, y, 256, &err), PQ_STATUS_OK);
    int exact = 1, no_nan = 1;
    for (int i = 0; i < 192; i++) exact &= f32_bits(y[i]) == f32_bits(x[i]);
    for (int i = 0; i < 256; i++) no_nan &= !isnan(y[i]);
    CHECK(exact && no_nan);
    for (int i = 192; i < 256; i++) exact &= y[i] == 0.0f; /* -0.0 comes back as 0.0 */
    CHECK(exact);

    /* -0.0 behaves like 0.0 in a non-constant group: same bytes as with +0.0. */
    float pz[4] = {0.0f, 1, 2, 3}, nz[4] = {-0.0f, 1, 2, 3}, nz2[4] = {3, -0.0f, 0.0f, 1};
    uint8_t c1, c2;
    float s1, s2, m1, m2;
    EXPECT(pq_quantize(PQ_DTYPE_F32, pz, 4, 4, 2, 4, 0, &c1, 1, &s1, 1, &m1, 1, &err), PQ_STATUS_OK);
    EXPECT(pq_quantize(PQ_DTYPE_F32, nz, 4, 4, 2, 4, 0, &c2, 1, &s2, 1, &m2, 1, &err), PQ_STATUS_OK);
    CHECK(c1 == c2 && c1 == 0xE4 && f32_bits(s1) == f32_bits(s2) && f32_bits(m2) == 0);
    EXPECT(pq_quantize(PQ_DTYPE_F32, nz2, 4, 4, 2, 4, 0, &c2, 1, &s2, 1, &m2, 1, &err), PQ_STATUS_OK);
    CHECK(c2 == 0x43 && f32_bits(m2) == 0); /* codes 3,0,0,1 */
    const uint16_t hz[4] = {0x8000, 0x8000, 0x8000, 0x8000};
    EXPECT(pq_quantize(PQ_DTYPE_F16, hz, 4, 4, 2, 4, 0, &c2, 1, &s2, 1, &m2, 1, &err), PQ_STATUS_OK);
    CHECK(c2 == 0 && f32_bits(s2) == 0 && f32_bits(m2) == 0);
    EXPECT(pq_quantize(PQ_DTYPE_BF16, hz, 4, 4, 2, 4, 0, &c2, 1, &s2, 1, &m2, 1, &err), PQ_STATUS_OK);
    CHECK(c2 == 0 && f32_bits(s2) == 0 && f32_bits(m2) == 0);

    /* A subnormal-only group: finite positive scale, codes exact, round trip exact. */
    const float tiny = FLT_TRUE_MIN;
    float sub[16];
    for (int i = 0; i < 16; i++) sub[i] = tiny * (float)i;
    uint8_t c[8];
    float s, m, ys[16];
    EXPECT(pq_quantize(PQ_DTYPE_F32, sub, 16, 16, 4, 16, 0, c, 8, &s, 1, &m, 1, &err), PQ_STATUS_OK);
    CHECK(isfinite(s) && s > 0.0f && s == tiny && m == 0.0f);
    const uint8_t want[8] = {0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE};
    CHECK(memcmp(c, want, 8) == 0);
    EXPECT(pq_dequantize(c, 8, &s, 1, &m, 1, 16, 4, 16, PQ_DTYPE_F32, 0, ys, 16, &err), PQ_STATUS_OK);
    CHECK(memcmp(ys, sub, sizeof ys) == 0);
    /* Negative subnormals with 8 bits: scale positive and finite, error within bound. */
    float sub8[4] = {-FLT_MIN / 2, -tiny * 3, 0.0f, FLT_MIN / 4};
    uint8_t c8[4];
    float y8[4];
    EXPECT(pq_quantize(PQ_DTYPE_F32, sub8, 4, 4, 8, 4, 0, c8, 4, &s, 1, &m, 1, &err), PQ_STATUS_OK);
    CHECK(isfinite(s) && s > 0.0f && m == -FLT_MIN / 2 && c8[0] == 0 && c8[3] == 255);
    EXPECT(pq_dequantize(c8, 4, &s, 1, &m, 1, 4, 8, 4, PQ_DTYPE_F32, 0, y8, 4, &err), PQ_STATUS_OK);
    int within = 1;
    for (int i = 0; i < 4; i++) within &= fabsf(y8[i] - sub8[i]) <= s / 2 + 4 * tiny;
    CHECK(within);
    /* f16 subnormal patterns 0x0000..0x000F: values i * 2^-24, scale 2^-24. */
    uint16_t hs[16];
    for (int i = 0; i < 16; i++) hs[i] = (uint16_t)i;
    EXPECT(pq_quantize(PQ_DTYPE_F16, hs, 16, 16, 4, 16, 0, c, 8, &s, 1, &m, 1, &err), PQ_STATUS_OK);
    CHECK(s == 0x1p-24f && m == 0.0f && memcmp(c, want, 8) == 0);
    uint16_t hy[16];
    EXPECT(pq_dequantize(c, 8, &s, 1, &m, 1, 16, 4, 16, PQ_DTYPE_F16, 0, hy, 16, &err), PQ_STATUS_OK);
    CHECK(memcmp(hy, hs, sizeof hy) == 0);
}

static void test_dequantize_errors(void) {
    EXPECT(pq_quantize(PQ_DTYPE_F32, base_input, 256, 128, 4, 64, 0, codes, 128, scales, 4, mins, 4, &err),
           PQ_STATUS_OK);
    static float y[256];
    for (int i = 0; i < 256; i++) y[i] = 42.0f;
    /* Input lengths must match exactly: too short and too long. */
    EXPECT_MSG(pq_dequantize(codes, 127, scales, 4, mins, 4, 128, 4, 64, PQ_DTYPE_F32, 0, y, 256, &err),
               PQ_STATUS_BUFFER_TOO_SMALL, "codes");
    EXPECT(pq_dequantize(codes, 129, scales, 4, mins, 4, 128, 4, 64, PQ_DTYPE_F32, 0, y, 256, &err),
           PQ_STATUS_BUFFER_TOO_SMALL);
    EXPECT_MSG(pq_dequantize(codes, 128, scales, 3, mins, 4, 128, 4, 64, PQ_DTYPE_F32, 0, y, 256, &err),
               PQ_STATUS_BUFFER_TOO_SMALL, "scales");
    EXPECT_MSG(pq_dequantize(codes, 128, scales, 4, mins, 5, 128, 4, 64, PQ_DTYPE_F32, 0, y, 256, &err),
               PQ_STATUS_BUFFER_TOO_SMALL, "mins");
    /* Output overlapping codes, scales or mins. */
    EXPECT_MSG(pq_dequantize(codes, 128, scales, 4, mins, 4, 128, 4, 64, PQ_DTYPE_F32, 0, (void *)codes, 256, &err),
               PQ_STATUS_OVERLAP, "overlaps");
    static float buf[512];
    memcpy(buf + 256, scales, 4 * sizeof(float));
    EXPECT(pq_dequantize(codes, 128, buf + 256, 4, mins, 4, 128, 4, 64, PQ_DTYPE_F32, 0, buf + 3, 256, &err),
           PQ_STATUS_OVERLAP); /* output ends one float into the scales */
    EXPECT(pq_dequantize(codes, 128, scales, 4, mins, 4, 128, 4, 64, PQ_DTYPE_BF16, 0, mins + 2, 256, &err),
           PQ_STATUS_OVERLAP);
    int untouched = 1;
    for (int i = 0; i < 256; i++) untouched &= y[i] == 42.0f;
    CHECK(untouched);
    /* The inputs survived the refused calls. */
    float y2[256];
    EXPECT(pq_dequantize(codes, 128, scales, 4, mins, 4, 128, 4, 64, PQ_DTYPE_F32, 0, y2, 256, &err), PQ_STATUS_OK);
}

static void test_panic_and_null_error(void) {
    EXPECT_MSG(pq_debug_panic(&err), PQ_STATUS_PANIC, "pq_debug_panic");
    CHECK(pq_debug_panic(NULL) == PQ_STATUS_PANIC);
    /* Still alive, and the library still works. */
    Q a = base();
    EXPECT(quantize(a), PQ_STATUS_OK);

    /* A NULL PqError* is accepted, on success and on error. */
    CHECK(pq_quantize(PQ_DTYPE_F32, base_input, 256, 128, 4, 64, 0, codes, 128, scales, 4, mins, 4, NULL) ==
          PQ_STATUS_OK);
    CHECK(pq_quantize(PQ_DTYPE_F32, base_input, 256, 128, 5, 64, 0, codes, 128, scales, 4, mins, 4, NULL) ==
          PQ_STATUS_INVALID_BITS);
    CHECK(pq_quantize_copy(PQ_DTYPE_F32, NULL, 4, 1, 8, 1, 0, codes, 1, scales, 1, mins, 1, NULL) ==
          PQ_STATUS_NULL_POINTER);
    size_t c, g;
    CHECK(pq_quantized_sizes(256, 128, 4, 64, &c, &g, NULL) == PQ_STATUS_OK && c == 128 && g == 4);
    CHECK(pq_quantized_sizes(256, 128, 4, 0, &c, &g, NULL) == PQ_STATUS_INVALID_GROUP_SIZE);
    float y[256];
    CHECK(pq_dequantize(codes, 128, scales, 4, mins, 4, 128, 4, 64, PQ_DTYPE_F32, 0, y, 256, NULL) == PQ_STATUS_OK);
    CHECK(pq_dequantize(codes, 1, scales, 4, mins, 4, 128, 4, 64, PQ_DTYPE_F32, 0, y, 256, NULL) ==
          PQ_STATUS_BUFFER_TOO_SMALL);

    /* The message is cleared on success after an error. */
    EXPECT(pq_debug_panic(&err), PQ_STATUS_PANIC);
    PqStatus s = quantize(a); /* err not scribbled: still holds the panic text */
    CHECK(s == PQ_STATUS_OK && err.status == PQ_STATUS_OK && err.message[0] == '\0');
}

/* The scheme fields of PqQuantizeItem: searched and float16 scales give the
 * same bytes for every thread count, float16 ones are exact halves, a zero
 * scheme is pq_quantize's, and bad codes or weights are refused. */
static void test_schemes(void) {
    enum { N = 4096, ROW = 512, G = 64, NG = N / G };
    static float x[N], w[ROW], s1[NG], m1[NG], s2[NG], m2[NG];
    static uint8_t c1[N / 4], c2[N / 4];
    for (int i = 0; i < N; i++) x[i] = rand_f32();
    for (int i = 0; i < ROW; i++) w[i] = (float)(i % 5);
    PqQuantizeItem it = {PQ_DTYPE_F32, x, N, ROW, 2, G, c1, sizeof c1, s1, NG, m1, NG,
                         PQ_METHOD_SEARCH, PQ_SCALE_DTYPE_F16, w, ROW, PQ_AXIS_LAST};
    size_t failed_item;
    EXPECT(pq_quantize_batch(&it, 1, 1, &failed_item, &err), PQ_STATUS_OK);
    it.codes = c2, it.scales = s2, it.mins = m2;
    EXPECT(pq_quantize_batch(&it, 1, 0, &failed_item, &err), PQ_STATUS_OK);
    CHECK(memcmp(c1, c2, sizeof c1) == 0 && memcmp(s1, s2, sizeof s1) == 0 && memcmp(m1, m2, sizeof m1) == 0);
    int halves = 1;
    for (int i = 0; i < NG; i++) {
        /* A float16 value has at most 11 significant bits. */
        uint32_t b, c;
        memcpy(&b, &s1[i], 4), memcpy(&c, &m1[i], 4);
        halves &= (b & 0x1FFF) == 0 && (c & 0x1FFF) == 0;
    }
    CHECK(halves);
    /* A zero scheme: pq_quantize's bytes. */
    PqQuantizeItem plain = {PQ_DTYPE_F32, x, N, ROW, 2, G, c1, sizeof c1, s1, NG, m1, NG, 0, 0, NULL, 0, 0};
    EXPECT(pq_quantize_batch(&plain, 1, 0, &failed_item, &err), PQ_STATUS_OK);
    EXPECT(pq_quantize(PQ_DTYPE_F32, x, N, ROW, 2, G, 1, c2, sizeof c2, s2, NG, m2, NG, &err), PQ_STATUS_OK);
    CHECK(memcmp(c1, c2, sizeof c1) == 0 && memcmp(s1, s2, sizeof s1) == 0 && memcmp(m1, m2, sizeof m1) == 0);
    PqQuantizeItem bad = it;
    bad.method = 7;
    EXPECT_MSG(pq_quantize_batch(&bad, 1, 0, &failed_item, &err), PQ_STATUS_INVALID_SCHEME, "method");
    CHECK(failed_item == 0);
    bad = it, bad.scale_dtype = 2;
    EXPECT_MSG(pq_quantize_batch(&bad, 1, 0, &failed_item, &err), PQ_STATUS_INVALID_SCHEME, "scale_dtype");
    bad = it, bad.method = PQ_METHOD_MIN_MAX;
    EXPECT_MSG(pq_quantize_batch(&bad, 1, 0, &failed_item, &err), PQ_STATUS_INVALID_SCHEME, "importance");
    bad = it, bad.importance_len = ROW - 1;
    EXPECT(pq_quantize_batch(&bad, 1, 0, &failed_item, &err), PQ_STATUS_INVALID_IMATRIX);
    bad = it, bad.importance = NULL;
    EXPECT(pq_quantize_batch(&bad, 1, 0, &failed_item, &err), PQ_STATUS_NULL_POINTER);
    /* 3 bits: eight codes in three bytes, one little-endian bit stream. */
    float ramp[8] = {0, 1, 2, 3, 4, 5, 6, 7}, back[8];
    uint8_t c3[3];
    float s3, m3;
    EXPECT(pq_quantize(PQ_DTYPE_F32, ramp, 8, 8, 3, 8, 1, c3, 3, &s3, 1, &m3, 1, &err), PQ_STATUS_OK);
    CHECK(c3[0] == 0x88 && c3[1] == 0xC6 && c3[2] == 0xFA && s3 == 1.0f && m3 == 0.0f);
    EXPECT(pq_dequantize(c3, 3, &s3, 1, &m3, 1, 8, 3, 8, PQ_DTYPE_F32, 1, back, 8, &err), PQ_STATUS_OK);
    CHECK(memcmp(back, ramp, sizeof ramp) == 0);
}

/* PQ_AXIS_FIRST: a 64 x 5 input grouped down its columns gives exactly the
 * outputs of its transpose (5 rows of 64), and dequantizes back into its own
 * shape; a bad axis code is refused. */
static void test_axis_first(void) {
    enum { R = 64, C = 5, AN = R * C, AG = 32, ANG = AN / AG };
    float w[AN], wt[AN], y[AN], yt[AN];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) w[r * C + c] = wt[c * R + r] = base_input[(r * C + c) % 256];
    uint8_t c1[AN / 2], c2[AN / 2];
    float s1[ANG], s2[ANG], m1[ANG], m2[ANG];
    size_t failed_item;
    PqQuantizeItem it = {PQ_DTYPE_F32, w, AN, R, 4, AG, c1, sizeof c1, s1, ANG, m1, ANG,
                         PQ_METHOD_SEARCH, PQ_SCALE_DTYPE_F16, NULL, 0, PQ_AXIS_FIRST};
    EXPECT(pq_quantize_batch(&it, 1, 0, &failed_item, &err), PQ_STATUS_OK);
    PqQuantizeItem tr = it;
    tr.input = wt, tr.axis = PQ_AXIS_LAST, tr.codes = c2, tr.scales = s2, tr.mins = m2;
    EXPECT(pq_quantize_batch(&tr, 1, 0, &failed_item, &err), PQ_STATUS_OK);
    CHECK(memcmp(c1, c2, sizeof c1) == 0 && memcmp(s1, s2, sizeof s1) == 0 && memcmp(m1, m2, sizeof m1) == 0);
    PqDequantizeItem d = {c1, sizeof c1, s1, ANG, m1, ANG, R, 4, AG, PQ_DTYPE_F32, y, AN, PQ_AXIS_FIRST};
    EXPECT(pq_dequantize_batch(&d, 1, 0, &failed_item, &err), PQ_STATUS_OK);
    EXPECT(pq_dequantize(c2, sizeof c2, s2, ANG, m2, ANG, R, 4, AG, PQ_DTYPE_F32, 1, yt, AN, &err), PQ_STATUS_OK);
    int same = 1;
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) same &= memcmp(&y[r * C + c], &yt[c * R + r], 4) == 0;
    CHECK(same);
    it.axis = 2;
    EXPECT_MSG(pq_quantize_batch(&it, 1, 0, &failed_item, &err), PQ_STATUS_INVALID_SCHEME, "axis");
    d.axis = 2;
    EXPECT_MSG(pq_dequantize_batch(&d, 1, 0, &failed_item, &err), PQ_STATUS_INVALID_SCHEME, "axis");
}

int main(void) {
    for (int i = 0; i < 256; i++) base_input[i] = rand_f32();

    test_versions();
    test_quantized_sizes();
    test_known_codes();
    test_reference_all_dtypes_and_bits();
    test_longer_outputs();
    test_null_and_empty();
    test_misaligned();
    test_too_small();
    test_block();
    test_overlap();
    test_invalid_bits_and_groups();
    test_size_overflow();
    test_non_finite();
    test_constant_zero_subnormal_negzero();
    test_dequantize_errors();
    test_panic_and_null_error();
    test_schemes();
    test_axis_first();

    return report();
}
