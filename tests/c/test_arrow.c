/*
 * The Arrow C Data Interface path from a C host: input structs built by
 * hand (with release callbacks that count their calls), a quantize /
 * dequantize round trip checked against pq_quantize / pq_dequantize, moving
 * and releasing the exported structs, and every docs/bad-inputs.md row 21 error
 * releasing the input exactly once.
 *
 * The Arrow structs are defined here first, under the spec's guard, as a
 * host that includes Arrow's or nanoarrow's headers would; pyquant.h must
 * then skip its own copy.
 *
 * Prints "N passed, M failed" as its last line; exits non-zero if M > 0.
 * Built and run by tests/test_c_host.py.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef ARROW_C_DATA_INTERFACE
#define ARROW_C_DATA_INTERFACE
#define ARROW_FLAG_DICTIONARY_ORDERED 1
#define ARROW_FLAG_NULLABLE 2
#define ARROW_FLAG_MAP_KEYS_SORTED 4
struct ArrowSchema {
    const char *format;
    const char *name;
    const char *metadata;
    int64_t flags;
    int64_t n_children;
    struct ArrowSchema **children;
    struct ArrowSchema *dictionary;
    void (*release)(struct ArrowSchema *);
    void *private_data;
};
struct ArrowArray {
    int64_t length;
    int64_t null_count;
    int64_t offset;
    int64_t n_buffers;
    int64_t n_children;
    const void **buffers;
    struct ArrowArray **children;
    struct ArrowArray *dictionary;
    void (*release)(struct ArrowArray *);
    void *private_data;
};
#endif

#include "pyquant_test.h" /* pyquant.h and the test-only exports (test-ffi) */

#include "check.h"

static PqError err;

/* ------------------------------------------------------------------ */
/* A hand-made producer                                                 */
/* ------------------------------------------------------------------ */

/* Every array node owns one of these; the top-level release frees the tree. */
typedef struct Node {
    const void *buffers[3];
    struct ArrowArray *children[3];
    struct ArrowArray child_structs[3];
} Node;

static int input_releases;

static void release_node(struct ArrowArray *a) {
    Node *n = a->private_data;
    for (int64_t i = 0; i < a->n_children && n != NULL; i++) {
        struct ArrowArray *c = n->children[i];
        if (c != NULL && c->release != NULL) c->release(c);
    }
    free(n);
    a->release = NULL;
}

static void release_top(struct ArrowArray *a) {
    input_releases++;
    release_node(a);
}

/* Fills *a as an array node with the given buffers (not owned: static data). */
static void node(struct ArrowArray *a, int64_t length, int64_t offset, int n_buffers,
                 const void *b0, const void *b1, const void *b2, int top) {
    Node *n = calloc(1, sizeof *n);
    n->buffers[0] = b0;
    n->buffers[1] = b1;
    n->buffers[2] = b2;
    memset(a, 0, sizeof *a);
    a->length = length;
    a->offset = offset;
    a->n_buffers = n_buffers;
    a->buffers = n->buffers;
    a->release = top ? release_top : release_node;
    a->private_data = n;
}

static struct ArrowArray *add_child(struct ArrowArray *parent, int i) {
    Node *n = parent->private_data;
    n->children[i] = &n->child_structs[i];
    parent->children = n->children;
    parent->n_children = i + 1;
    return n->children[i];
}

static void release_schema(struct ArrowSchema *s) { s->release = NULL; }

static struct ArrowSchema schema(const char *format, const char *name, int n, struct ArrowSchema **children) {
    struct ArrowSchema s = {format, name, NULL, 0, n, children, NULL, release_schema, NULL};
    return s;
}

/* The input: 32 floats; "w" is 2 x 8 values starting at value 4 of the
 * values child (child offset 4), "v" the next 8 as 1 x 8. */
static float values[32];
static const int32_t name_offsets[] = {0, 1, 2};
static const char name_data[] = "wv";
static const int32_t weight_offsets[] = {0, 16, 24};
static const int32_t shape_offsets[] = {0, 2, 3};
static const int64_t shape_values[] = {2, 8, 8};

static struct ArrowSchema item_schema, weights_children[1], *weights_child_ptrs[1];
static struct ArrowSchema shape_item, shape_children[1], *shape_child_ptrs[1];
static struct ArrowSchema batch_fields[3], *batch_field_ptrs[3], batch_schema;

static void build_batch_schema(void) {
    weights_children[0] = schema("f", "item", 0, NULL);
    weights_child_ptrs[0] = &weights_children[0];
    shape_children[0] = schema("l", "item", 0, NULL);
    shape_child_ptrs[0] = &shape_children[0];
    batch_fields[0] = schema("u", "name", 0, NULL);
    batch_fields[1] = schema("+l", "weights", 1, weights_child_ptrs);
    batch_fields[2] = schema("+l", "shape", 1, shape_child_ptrs);
    for (int i = 0; i < 3; i++) batch_field_ptrs[i] = &batch_fields[i];
    batch_schema = schema("+s", "", 3, batch_field_ptrs);
    (void)item_schema;
    (void)shape_item;
}

static void build_batch(struct ArrowArray *a) {
    node(a, 2, 0, 1, NULL, NULL, NULL, 1);
    node(add_child(a, 0), 2, 0, 3, NULL, name_offsets, name_data, 0);
    struct ArrowArray *w = add_child(a, 1);
    node(w, 2, 0, 2, NULL, weight_offsets, NULL, 0);
    node(add_child(w, 0), 28, 4, 2, NULL, values, NULL, 0);
    struct ArrowArray *s = add_child(a, 2);
    node(s, 2, 0, 2, NULL, shape_offsets, NULL, 0);
    node(add_child(s, 0), 3, 0, 2, NULL, shape_values, NULL, 0);
}

/* ------------------------------------------------------------------ */

static int find_child(const struct ArrowSchema *s, const char *name) {
    for (int64_t i = 0; i < s->n_children; i++) {
        if (strcmp(s->children[i]->name, name) == 0) return (int)i;
    }
    return -1;
}

static void test_round_trip(void) {
    build_batch_schema();
    struct ArrowArray in, out, back;
    struct ArrowSchema out_schema, back_schema;
    build_batch(&in);
    input_releases = 0;
    PqStatus s = pq_quantize_arrow(&in, &batch_schema, 4, 8, PQ_METHOD_MIN_MAX, PQ_SCALE_DTYPE_F32, PQ_AXIS_LAST,
                                   NULL, 0, 0, &out, &out_schema, &err);
    CHECK(s == PQ_STATUS_OK);
    if (s != PQ_STATUS_OK) {
        printf("    %s\n", err.message);
        return;
    }
    CHECK(input_releases == 1 && in.release == NULL);
    CHECK(pq_arrow_live_exports() == 1);
    CHECK(strcmp(out_schema.format, "+s") == 0 && out_schema.n_children == 8);
    CHECK(out.length == 2 && out.n_children == 8 && out.release != NULL);

    /* codes: large_binary, buffers {validity, int64 offsets, data}. */
    int codes = find_child(&out_schema, "codes"), scales = find_child(&out_schema, "scales");
    CHECK(codes >= 0 && strcmp(out_schema.children[codes]->format, "Z") == 0);
    const struct ArrowArray *c = out.children[codes];
    const int64_t *coff = c->buffers[1];
    const uint8_t *cdata = c->buffers[2];
    const struct ArrowArray *sc = out.children[scales];
    const int32_t *soff = sc->buffers[1];
    const float *svals = sc->children[0]->buffers[1];

    /* The same bytes as pq_quantize on each tensor. */
    const float *tensors[2] = {values + 4, values + 20};
    size_t lens[2] = {16, 8}, rows[2] = {8, 8};
    for (int t = 0; t < 2; t++) {
        uint8_t want_codes[8];
        float want_scales[2], want_mins[2];
        size_t n_groups = lens[t] / 8;
        CHECK(pq_quantize(PQ_DTYPE_F32, tensors[t], lens[t], rows[t], 4, 8, 0, want_codes, lens[t] / 2,
                          want_scales, n_groups, want_mins, n_groups, &err) == PQ_STATUS_OK);
        CHECK(coff[t + 1] - coff[t] == (int64_t)(lens[t] / 2));
        CHECK(memcmp(cdata + coff[t], want_codes, lens[t] / 2) == 0);
        CHECK((size_t)(soff[t + 1] - soff[t]) == n_groups);
        CHECK(memcmp(svals + soff[t], want_scales, n_groups * sizeof(float)) == 0);
    }

    /* Keep the scales: the quantized batch is released when consumed below. */
    float scales_copy[3];
    memcpy(scales_copy, svals, sizeof scales_copy);

    /* Move the result (bitwise copy, source marked released), then hand the
     * moved struct to pq_dequantize_arrow, which consumes it. */
    struct ArrowArray moved;
    memcpy(&moved, &out, sizeof moved);
    out.release = NULL;
    s = pq_dequantize_arrow(&moved, &out_schema, PQ_DEQUANTIZED_AUTO, 0, &back, &back_schema, &err);
    CHECK(s == PQ_STATUS_OK && moved.release == NULL);
    CHECK(pq_arrow_live_exports() == 1); /* the quantized batch is gone, the result lives */
    if (s == PQ_STATUS_OK) {
        int w = find_child(&back_schema, "weights");
        CHECK(w >= 0 && strcmp(back_schema.children[w]->format, "+l") == 0);
        const struct ArrowArray *wa = back.children[w];
        const int32_t *woff = wa->buffers[1];
        const float *wv = wa->children[0]->buffers[1];
        CHECK(woff[0] == 0 && woff[1] == 16 && woff[2] == 24);
        /* Each value within scale/2 of the input. */
        int close = 1;
        for (int i = 0; i < 24; i++) {
            float x = values[4 + i], y = wv[i], scale = scales_copy[i / 8];
            if (!(x - y <= scale / 2 + 1e-6f && y - x <= scale / 2 + 1e-6f)) close = 0;
        }
        CHECK(close);
        back.release(&back);
        back_schema.release(&back_schema);
    }
    out_schema.release(&out_schema);
    CHECK(pq_arrow_live_exports() == 0);
}

static void test_export_children_outlive_parent(void) {
    struct ArrowArray in, out, child;
    struct ArrowSchema out_schema;
    build_batch(&in);
    CHECK(pq_quantize_arrow(&in, &batch_schema, 8, 8, 0, 0, 0, NULL, 0, 0, &out, &out_schema, &err) == PQ_STATUS_OK);
    /* Move one child out, release the parent, then the child. */
    memcpy(&child, out.children[1], sizeof child);
    out.children[1]->release = NULL;
    out.release(&out);
    CHECK(out.release == NULL);
    CHECK(pq_arrow_live_exports() == 1);
    child.release(&child);
    CHECK(pq_arrow_live_exports() == 0);
    out_schema.release(&out_schema);

    struct ArrowSchema fixed;
    CHECK(pq_arrow_quantized_schema(PQ_METHOD_MIN_MAX, PQ_SCALE_DTYPE_F32, PQ_AXIS_LAST, &fixed, &err) == PQ_STATUS_OK);
    CHECK(strcmp(fixed.format, "+s") == 0 && fixed.n_children == 8 && strcmp(fixed.children[0]->name, "name") == 0);
    fixed.release(&fixed);
    CHECK(pq_arrow_quantized_schema(2, 0, 0, &fixed, &err) == PQ_STATUS_INVALID_SCHEME);
}

/* The searched scheme with float16 scales: scales and mins are lists of
 * float16 ("e"), a "method" column says "search", and the batch reads back. */
static void test_scheme(void) {
    build_batch_schema();
    struct ArrowArray in, out, back;
    struct ArrowSchema out_schema, back_schema;
    build_batch(&in);
    PqStatus s = pq_quantize_arrow(&in, &batch_schema, 4, 8, PQ_METHOD_SEARCH, PQ_SCALE_DTYPE_F16, PQ_AXIS_LAST, NULL, 0,
                                   0, &out, &out_schema, &err);
    CHECK(s == PQ_STATUS_OK);
    if (s != PQ_STATUS_OK) return;
    int sc = find_child(&out_schema, "scales"), m = find_child(&out_schema, "method");
    CHECK(out_schema.n_children == 9 && sc >= 0 && m == 8);
    if (sc >= 0) CHECK(strcmp(out_schema.children[sc]->children[0]->format, "e") == 0);
    if (m == 8) {
        const int32_t *off = out.children[m]->buffers[1];
        const char *text = out.children[m]->buffers[2];
        CHECK(off[1] - off[0] == 6 && memcmp(text + off[0], "search", 6) == 0);
    }
    s = pq_dequantize_arrow(&out, &out_schema, PQ_DEQUANTIZED_AUTO, 0, &back, &back_schema, &err);
    CHECK(s == PQ_STATUS_OK);
    if (s == PQ_STATUS_OK) {
        back.release(&back);
        back_schema.release(&back_schema);
    }
    out_schema.release(&out_schema);
    build_batch(&in);
    input_releases = 0;
    CHECK(pq_quantize_arrow(&in, &batch_schema, 4, 8, 7, 0, 0, NULL, 0, 0, &out, &out_schema, &err) == PQ_STATUS_INVALID_SCHEME);
    CHECK(input_releases == 1 && strstr(err.message, "method") != NULL);
    /* Groups down the columns: an int8 "axis" column; the batch's 1-D tensor is refused. */
    struct ArrowSchema axis_schema;
    CHECK(pq_arrow_quantized_schema(PQ_METHOD_MIN_MAX, PQ_SCALE_DTYPE_F32, PQ_AXIS_FIRST, &axis_schema, &err) ==
          PQ_STATUS_OK);
    CHECK(axis_schema.n_children == 9 && strcmp(axis_schema.children[8]->name, "axis") == 0 &&
          strcmp(axis_schema.children[8]->format, "c") == 0);
    axis_schema.release(&axis_schema);
    build_batch(&in);
    input_releases = 0;
    CHECK(pq_quantize_arrow(&in, &batch_schema, 4, PQ_GROUP_SIZE_PER_ROW, 0, 0, PQ_AXIS_FIRST, NULL, 0, 0, &out,
                            &out_schema, &err) == PQ_STATUS_SHAPE_MISMATCH);
    CHECK(input_releases == 1 && strstr(err.message, "2-D") != NULL);
    CHECK(pq_arrow_live_exports() == 0);
}

/* Row 21: each bad input is an error naming it, and the input is released once. */
static void expect_error(struct ArrowArray *in, struct ArrowSchema *sch, PqStatus want, const char *needle,
                         int releases, int line) {
    struct ArrowArray out;
    struct ArrowSchema out_schema;
    input_releases = 0;
    memset(&err, 'X', sizeof err);
    PqStatus got = pq_quantize_arrow(in, sch, 4, 4, 0, 0, 0, NULL, 0, 0, &out, &out_schema, &err);
    int ok = got == want && err.status == want && strstr(err.message, needle) != NULL &&
             input_releases == releases && in->release == NULL;
    if (ok) {
        passed++;
    } else {
        failed++;
        printf("FAIL %s:%d: status %u want %u, %d releases want %d, message \"%s\" want \"%s\"\n", __FILE__, line,
               (unsigned)got, (unsigned)want, input_releases, releases, err.message, needle);
    }
}

static const uint8_t some_null[] = {0xFD};

static void test_row21(void) {
    struct ArrowSchema f32 = schema("f", "", 0, NULL), f64 = schema("g", "", 0, NULL);
    struct ArrowArray a;

    node(&a, 8, 0, 2, NULL, values, NULL, 1);
    a.release = NULL; /* already released, and its node was never freed: free it */
    free(a.private_data);
    expect_error(&a, &f32, PQ_STATUS_INVALID_ARROW, "released", 0, __LINE__);

    node(&a, 8, 0, 2, NULL, values, NULL, 1);
    expect_error(&a, &f64, PQ_STATUS_UNSUPPORTED_DTYPE, "Float64", 1, __LINE__);

    node(&a, 8, 0, 2, some_null, values, NULL, 1);
    a.null_count = 1;
    expect_error(&a, &f32, PQ_STATUS_INVALID_ARROW, "null", 1, __LINE__);

    node(&a, 8, 0, 1, NULL, values, NULL, 1);
    expect_error(&a, &f32, PQ_STATUS_INVALID_ARROW, "buffers", 1, __LINE__);

    node(&a, 8, 0, 2, NULL, NULL, NULL, 1);
    expect_error(&a, &f32, PQ_STATUS_INVALID_ARROW, "NULL", 1, __LINE__);

    node(&a, 8, INT64_MAX - 4, 2, NULL, values, NULL, 1);
    expect_error(&a, &f32, PQ_STATUS_INVALID_ARROW, "overflows", 1, __LINE__);

    node(&a, 7, 0, 2, NULL, (const char *)values + 1, NULL, 1);
    expect_error(&a, &f32, PQ_STATUS_MISALIGNED, "aligned", 1, __LINE__);

    /* A struct batch whose children are missing. */
    build_batch_schema();
    node(&a, 2, 0, 1, NULL, NULL, NULL, 1);
    expect_error(&a, &batch_schema, PQ_STATUS_INVALID_ARROW, "children", 1, __LINE__);

    /* A NULL output still consumes the input. */
    node(&a, 8, 0, 2, NULL, values, NULL, 1);
    input_releases = 0;
    struct ArrowSchema out_schema;
    CHECK(pq_quantize_arrow(&a, &f32, 4, 4, 0, 0, 0, NULL, 0, 0, NULL, &out_schema, &err) == PQ_STATUS_NULL_POINTER);
    CHECK(input_releases == 1 && a.release == NULL);
    CHECK(pq_quantize_arrow(NULL, &f32, 4, 4, 0, 0, 0, NULL, 0, 0, NULL, NULL, NULL) == PQ_STATUS_NULL_POINTER);
    CHECK(pq_arrow_live_exports() == 0);
}

/* A carried-over row built by pq_arrow_quantized_row comes back bit for bit
 * from pq_dequantize_arrow in the raw form; a bad row is refused. */
static void test_carried_over_row(void) {
    const int64_t ids[3] = {-5, 1000000007, 42};
    const int64_t shape[1] = {3};
    struct ArrowArray row, back;
    struct ArrowSchema row_schema, back_schema;
    PqStatus s = pq_arrow_quantized_row((const uint8_t *)"ids", 3, (const uint8_t *)"int64", 5, shape, 1, 0, 0,
                                        (const uint8_t *)ids, sizeof ids, NULL, 0, NULL, 0, 0, 0, 0, &row, &row_schema, &err);
    CHECK(s == PQ_STATUS_OK);
    if (s != PQ_STATUS_OK) return;
    CHECK(pq_arrow_live_exports() == 1);
    s = pq_dequantize_arrow(&row, &row_schema, PQ_DEQUANTIZED_AUTO, 1, &back, &back_schema, &err);
    CHECK(s == PQ_STATUS_OK && row.release == NULL);
    if (s == PQ_STATUS_OK) {
        int d = find_child(&back_schema, "data"), t = find_child(&back_schema, "dtype");
        CHECK(d >= 0 && t >= 0 && strcmp(back_schema.children[d]->format, "Z") == 0);
        if (d >= 0 && t >= 0) {
            const int64_t *off = back.children[d]->buffers[1];
            const uint8_t *data = back.children[d]->buffers[2];
            const int32_t *toff = back.children[t]->buffers[1];
            const char *tdata = back.children[t]->buffers[2];
            CHECK(off[0] == 0 && off[1] == (int64_t)sizeof ids && memcmp(data, ids, sizeof ids) == 0);
            CHECK(toff[1] - toff[0] == 5 && memcmp(tdata + toff[0], "int64", 5) == 0);
        }
        back.release(&back);
        back_schema.release(&back_schema);
    }
    row_schema.release(&row_schema);
    /* 23 bytes for 3 int64 values: refused, naming the tensor; nothing exported. */
    s = pq_arrow_quantized_row((const uint8_t *)"ids", 3, (const uint8_t *)"int64", 5, shape, 1, 0, 0,
                               (const uint8_t *)ids, sizeof ids - 1, NULL, 0, NULL, 0, 0, 0, 0, &row, &row_schema, &err);
    CHECK(s == PQ_STATUS_SHAPE_MISMATCH && strstr(err.message, "\"ids\"") != NULL);
    CHECK(pq_arrow_live_exports() == 0);
}

int main(void) {
    for (int i = 0; i < 32; i++) values[i] = (float)((i * 37) % 29) / 7.0f - 2.0f;
    test_round_trip();
    test_scheme();
    test_export_children_outlive_parent();
    test_row21();
    test_carried_over_row();
    return report();
}
