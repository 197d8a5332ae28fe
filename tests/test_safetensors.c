/* Safetensors: round trips of every dtype, the exact F16/BF16 conversions, the size query,
   each kind of bad file (a status and a message naming the tensor, never a crash) and the
   atomic save. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "test.h"
#include "../dtnh_nn.h"

static DTNH_ALIGNED(64) unsigned char st_scratch[1 << 20];

static void st_arena(dtnh_arena *a) { dtnh_arena_init(a, st_scratch, sizeof st_scratch); }

/* A unique path in the temporary directory: the stack address differs between processes. */
static const char *st_temp_path(char *buf, size_t size, const char *tag) {
    const char *dir = getenv("TMPDIR");
    snprintf(buf, size, "%s/dtnh_st_%lx_%s.safetensors", dir ? dir : "/tmp",
             (unsigned long)(uintptr_t)&buf, tag);
    return buf;
}

/* A file made of a JSON header (length prefix added) and `data` zero bytes, in a malloc'd
   buffer of exactly that size, so ASan sees any read past the end. */
static unsigned char *st_file(const char *json, size_t data, size_t *size) {
    size_t n = strlen(json), i;
    unsigned char *b = (unsigned char *)malloc(8 + n + data + 1);
    for (i = 0; i < 8; i++) b[i] = (unsigned char)((uint64_t)n >> (8 * i));
    memcpy(b + 8, json, n);
    memset(b + 8 + n, 0, data);
    *size = 8 + n + data;
    return b;
}

/* Opens a hand-made file; returns the status, the message in err. */
static dtnh_status st_open_json(const char *json, size_t data, dtnh_error *err) {
    dtnh_st_file f;
    dtnh_arena a;
    size_t size;
    unsigned char *b = st_file(json, data, &size);
    dtnh_status s;
    st_arena(&a);
    dtnh_error_clear(err);
    s = dtnh_st_open_memory(&f, b, size, &a, err);
    free(b);
    return s;
}

/* ---- round trips ---------------------------------------------------------------------------- */

static const float st_vals[6] = {0.5f, -1.25f, 3.0f, 65504.0f, -0.0f, 0.0078125f};

static void st_sample(dtnh_st_tensor t[4], const int64_t *steps) {
    memset(t, 0, 4 * sizeof *t);
    t[0].name = "layer1.0.conv1.weight";
    t[0].dtype = DTNH_ST_F32;
    t[0].ndim = 2;
    t[0].shape[0] = 2;
    t[0].shape[1] = 3;
    t[0].f32 = st_vals;
    t[1].name = "bn1.num_batches_tracked";
    t[1].dtype = DTNH_ST_I64;
    t[1].ndim = 0;
    t[1].i64 = steps;
    t[2].name = "half";
    t[2].dtype = DTNH_ST_F16;
    t[2].ndim = 1;
    t[2].shape[0] = 6;
    t[2].f32 = st_vals;
    t[3].name = "brain";
    t[3].dtype = DTNH_ST_BF16;
    t[3].ndim = 1;
    t[3].shape[0] = 3;
    t[3].f32 = st_vals; /* 0.5, -1.25, 3: exact in bfloat16 */
}

static void round_trip_every_dtype_in_memory(void) {
    static unsigned char buf[4096];
    const int64_t steps = -1234567890123ll;
    dtnh_st_meta meta[1] = {{"format", "pt"}};
    dtnh_st_tensor t[4];
    dtnh_st_file f;
    dtnh_arena a;
    dtnh_error err;
    float out[6];
    int64_t got = 0;
    size_t size = 0, i;
    int shape[2] = {2, 3};
    st_sample(t, &steps);
    CHECK_OK(dtnh_st_write_memory(t, 4, meta, 1, buf, sizeof buf, &size, &err));
    st_arena(&a);
    CHECK_OK(dtnh_st_open_memory(&f, buf, size, &a, &err));
    CHECK(f.count == 4 && (f.data_offset % 8) == 0);
    CHECK(strcmp(dtnh_st_meta_get(&f, "format"), "pt") == 0);
    CHECK(dtnh_st_meta_get(&f, "nope") == NULL);
    CHECK(dtnh_st_shape_is(&f, dtnh_st_find(&f, "layer1.0.conv1.weight"), 2, shape));
    CHECK_OK(dtnh_st_read_f32(&f, dtnh_st_find(&f, "layer1.0.conv1.weight"), out, 6, &err));
    for (i = 0; i < 6; i++) CHECK(memcmp(&out[i], &st_vals[i], sizeof(float)) == 0);
    CHECK_OK(dtnh_st_read_f32(&f, dtnh_st_find(&f, "half"), out, 6, &err));
    for (i = 0; i < 6; i++) CHECK(memcmp(&out[i], &st_vals[i], sizeof(float)) == 0);
    CHECK_OK(dtnh_st_read_f32(&f, dtnh_st_find(&f, "brain"), out, 3, &err));
    for (i = 0; i < 3; i++) CHECK(out[i] == st_vals[i]);
    CHECK(f.entries[dtnh_st_find(&f, "bn1.num_batches_tracked")].ndim == 0);
    CHECK_OK(dtnh_st_read_i64(&f, dtnh_st_find(&f, "bn1.num_batches_tracked"), &got, 1, &err));
    CHECK(got == steps);
}

static void round_trip_through_a_file(void) {
    const int64_t steps = 7;
    char path[512], tmp[600];
    dtnh_st_tensor t[4];
    dtnh_st_file f;
    dtnh_arena a;
    dtnh_error err;
    float out[6];
    int64_t got = 0;
    FILE *fp;
    st_sample(t, &steps);
    st_temp_path(path, sizeof path, "trip");
    CHECK_OK(dtnh_st_save(path, t, 4, NULL, 0, &err));
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    fp = fopen(tmp, "rb");
    CHECK(fp == NULL); /* renamed away */
    st_arena(&a);
    CHECK_OK(dtnh_st_open(&f, path, &a, &err));
    CHECK_OK(dtnh_st_read_f32(&f, dtnh_st_find(&f, "half"), out, 6, &err));
    CHECK(out[3] == 65504.0f && out[1] == -1.25f);
    CHECK_OK(dtnh_st_read_i64(&f, dtnh_st_find(&f, "bn1.num_batches_tracked"), &got, 1, &err));
    CHECK(got == 7);
    dtnh_st_close(&f);
    dtnh_st_close(&f);
    remove(path);
}

/* The memory writer's size query, the padded header, and a buffer one byte short. */
static void writer_pads_the_header_and_reports_its_size(void) {
    static unsigned char buf[4096];
    const int64_t steps = 1;
    dtnh_st_tensor t[4];
    dtnh_error err;
    size_t size = 0, size2 = 0;
    uint64_t n = 0;
    int i;
    st_sample(t, &steps);
    CHECK_OK(dtnh_st_write_memory(t, 4, NULL, 0, NULL, 0, &size, &err));
    CHECK_STATUS(dtnh_st_write_memory(t, 4, NULL, 0, buf, size - 1, &size2, &err), DTNH_ERR_NOMEM);
    CHECK_OK(dtnh_st_write_memory(t, 4, NULL, 0, buf, size, &size2, &err));
    CHECK(size2 == size);
    for (i = 7; i >= 0; i--) n = (n << 8) | buf[i];
    CHECK(n % 8 == 0 && buf[8] == '{' && buf[8 + n - 1] != '\0');
    CHECK(size == 8 + n + 24 + 8 + 12 + 6);
}

/* Every half-precision pattern reads as the float it denotes and writes back to itself. */
static void f16_conversions_are_exact_for_every_pattern(void) {
    static float vals[65536];
    static unsigned char buf[65536 * 2 + 256], buf2[65536 * 2 + 256];
    dtnh_st_tensor t;
    dtnh_st_file f;
    dtnh_arena a;
    dtnh_error err;
    size_t size, i, data;
    memset(&t, 0, sizeof t);
    t.name = "h";
    t.dtype = DTNH_ST_F16;
    t.ndim = 1;
    t.shape[0] = 65536;
    t.f32 = vals;
    CHECK_OK(dtnh_st_write_memory(&t, 1, NULL, 0, buf, sizeof buf, &size, &err));
    data = size - 2 * 65536;
    for (i = 0; i < 65536; i++) {
        buf[data + 2 * i] = (unsigned char)(i & 0xFF);
        buf[data + 2 * i + 1] = (unsigned char)(i >> 8);
    }
    st_arena(&a);
    CHECK_OK(dtnh_st_open_memory(&f, buf, size, &a, &err));
    CHECK_OK(dtnh_st_read_f32(&f, 0, vals, 65536, &err));
    CHECK(vals[0x3C00] == 1.0f && vals[0x7BFF] == 65504.0f && vals[0xC000] == -2.0f);
    CHECK(vals[0x0001] == ldexpf(1.0f, -24) && vals[0x03FF] == ldexpf(1023.0f, -24));
    CHECK(vals[0x7C00] > 3e38f && vals[0xFC00] < -3e38f && vals[0x7E00] != vals[0x7E00]);
    CHECK_OK(dtnh_st_write_memory(&t, 1, NULL, 0, buf2, sizeof buf2, &size, &err));
    for (i = 0; i < 65536; i++) {
        int nan = (i & 0x7C00) == 0x7C00 && (i & 0x3FF);
        unsigned got = buf2[data + 2 * i] | (unsigned)buf2[data + 2 * i + 1] << 8;
        if (nan) CHECK_MSG((got & 0x7C00) == 0x7C00 && (got & 0x3FF), "pattern %zx: NaN lost", i);
        else CHECK_MSG(got == i, "pattern %zx wrote back as %x", i, got);
    }
}

/* Narrowing rounds to nearest, ties to even, overflows to Inf, underflows through subnormals. */
static void f16_and_bf16_round_to_nearest_even(void) {
    static unsigned char buf[1024];
    const float in[8] = {1.0f + ldexpf(1, -11), 1.0f + 3 * ldexpf(1, -11), 65519.0f, 65520.0f,
                         ldexpf(1, -25), ldexpf(3, -26), 1.0f + ldexpf(1, -8), 1.0f + 3 * ldexpf(1, -8)};
    const float want16[6] = {1.0f, 1.0f + ldexpf(1, -9), 65504.0f, 0, 0, ldexpf(1, -24)};
    dtnh_st_tensor t[2];
    dtnh_st_file f;
    dtnh_arena a;
    dtnh_error err;
    float out[8];
    size_t size;
    int i;
    memset(t, 0, sizeof t);
    t[0].name = "h";
    t[0].dtype = DTNH_ST_F16;
    t[0].ndim = 1;
    t[0].shape[0] = 6;
    t[0].f32 = in;
    t[1].name = "b";
    t[1].dtype = DTNH_ST_BF16;
    t[1].ndim = 1;
    t[1].shape[0] = 2;
    t[1].f32 = in + 6;
    CHECK_OK(dtnh_st_write_memory(t, 2, NULL, 0, buf, sizeof buf, &size, &err));
    st_arena(&a);
    CHECK_OK(dtnh_st_open_memory(&f, buf, size, &a, &err));
    CHECK_OK(dtnh_st_read_f32(&f, 0, out, 6, &err));
    for (i = 0; i < 6; i++)
        if (i != 3) CHECK_MSG(out[i] == want16[i], "f16 %d: %g, expected %g", i, out[i], want16[i]);
    CHECK(out[3] > 65504.0f * 2); /* Inf */
    CHECK_OK(dtnh_st_read_f32(&f, 1, out, 2, &err));
    CHECK(out[0] == 1.0f && out[1] == 1.0f + ldexpf(1, -6));
}

/* Every bfloat16 pattern reads as the float it denotes and writes back to itself. */
static void bf16_conversions_are_exact_for_every_pattern(void) {
    static float vals[65536];
    static unsigned char buf[65536 * 2 + 256], buf2[65536 * 2 + 256];
    dtnh_st_tensor t;
    dtnh_st_file f;
    dtnh_arena a;
    dtnh_error err;
    size_t size, i, data;
    memset(&t, 0, sizeof t);
    t.name = "b";
    t.dtype = DTNH_ST_BF16;
    t.ndim = 1;
    t.shape[0] = 65536;
    t.f32 = vals;
    CHECK_OK(dtnh_st_write_memory(&t, 1, NULL, 0, buf, sizeof buf, &size, &err));
    data = size - 2 * 65536;
    for (i = 0; i < 65536; i++) {
        buf[data + 2 * i] = (unsigned char)(i & 0xFF);
        buf[data + 2 * i + 1] = (unsigned char)(i >> 8);
    }
    st_arena(&a);
    CHECK_OK(dtnh_st_open_memory(&f, buf, size, &a, &err));
    CHECK_OK(dtnh_st_read_f32(&f, 0, vals, 65536, &err));
    CHECK(vals[0x3F80] == 1.0f && vals[0xC000] == -2.0f);
    CHECK_OK(dtnh_st_write_memory(&t, 1, NULL, 0, buf2, sizeof buf2, &size, &err));
    for (i = 0; i < 65536; i++) {
        int nan = (i & 0x7F80) == 0x7F80 && (i & 0x7F);
        unsigned got = buf2[data + 2 * i] | (unsigned)buf2[data + 2 * i + 1] << 8;
        if (nan) CHECK_MSG((got & 0x7F80) == 0x7F80 && (got & 0x7F), "pattern %zx: NaN lost", i);
        else CHECK_MSG(got == i, "pattern %zx wrote back as %x", i, got);
    }
}

/* Names with quotes, backslashes, control characters and UTF-8 survive the JSON escaping,
   and a header from another writer (spaces, \u escapes, metadata) parses. */
static void names_are_escaped_and_unescaped(void) {
    static unsigned char buf[1024];
    const float v[1] = {2.0f};
    const char *odd = "a\"b\\c\td\xc3\xa9";
    dtnh_st_tensor t;
    dtnh_st_file f;
    dtnh_arena a;
    dtnh_error err;
    size_t size;
    memset(&t, 0, sizeof t);
    t.name = odd;
    t.ndim = 1;
    t.shape[0] = 1;
    t.f32 = v;
    CHECK_OK(dtnh_st_write_memory(&t, 1, NULL, 0, buf, sizeof buf, &size, &err));
    st_arena(&a);
    CHECK_OK(dtnh_st_open_memory(&f, buf, size, &a, &err));
    CHECK(strcmp(f.entries[0].name, odd) == 0);
    CHECK_OK(st_open_json("{ \"__metadata__\" : {\"k\\u00e9\\ud83d\\ude00\": \"v\"} ,\n"
                          "\t\"x\\u0041\" : { \"shape\" : [ 2 , 1 ], \"data_offsets\": [0, 8],"
                          " \"dtype\": \"F32\" } }  ", 8, &err));
}

/* A counting arena reports the scratch that opening takes: that much succeeds, less fails. */
static void open_counts_its_scratch_exactly(void) {
    static unsigned char buf[4096];
    static DTNH_ALIGNED(64) unsigned char mem[65536];
    const int64_t steps = 1;
    dtnh_st_tensor t[4];
    dtnh_st_file f;
    dtnh_arena counter, a;
    dtnh_error err;
    size_t size, need;
    st_sample(t, &steps);
    CHECK_OK(dtnh_st_write_memory(t, 4, NULL, 0, buf, sizeof buf, &size, &err));
    dtnh_arena_init(&counter, NULL, 0);
    CHECK_OK(dtnh_st_open_memory(&f, buf, size, &counter, &err));
    CHECK(f.count == 0);
    need = dtnh_arena_used(&counter);
    CHECK(need > 0 && need <= sizeof mem);
    dtnh_arena_init(&a, mem, need);
    CHECK_OK(dtnh_st_open_memory(&f, buf, size, &a, &err));
    CHECK(f.count == 4);
    dtnh_arena_init(&a, mem, need - 1);
    CHECK_STATUS(dtnh_st_open_memory(&f, buf, size, &a, &err), DTNH_ERR_NOMEM);
}

/* ---- bad input: a status and a message, never a crash ---------------------------------------- */

static void truncated_file_is_rejected(void) {
    static unsigned char buf[4096];
    const int64_t steps = 1;
    dtnh_st_tensor t[4];
    dtnh_st_file f;
    dtnh_arena a;
    dtnh_error err;
    size_t size;
    st_sample(t, &steps);
    CHECK_OK(dtnh_st_write_memory(t, 4, NULL, 0, buf, sizeof buf, &size, &err));
    st_arena(&a);
    CHECK_STATUS(dtnh_st_open_memory(&f, buf, 5, &a, &err), DTNH_ERR_FORMAT);
    CHECK(strstr(err.msg, "truncated") != NULL);
    CHECK_STATUS(dtnh_st_open_memory(&f, buf, size - 1, &a, &err), DTNH_ERR_FORMAT);
    CHECK_MSG(strstr(err.msg, "'brain'") != NULL, "%s", err.msg); /* the last tensor is cut */
    CHECK(f.count == 0);
}

static void header_length_past_the_end_is_rejected(void) {
    static unsigned char buf[4096];
    const int64_t steps = 1;
    dtnh_st_tensor t[4];
    dtnh_st_file f;
    dtnh_arena a;
    dtnh_error err;
    size_t size;
    st_sample(t, &steps);
    CHECK_OK(dtnh_st_write_memory(t, 4, NULL, 0, buf, sizeof buf, &size, &err));
    buf[0] = 0xF0;
    buf[7] = 0x7F; /* an absurd length */
    st_arena(&a);
    CHECK_STATUS(dtnh_st_open_memory(&f, buf, size, &a, &err), DTNH_ERR_FORMAT);
    CHECK(strstr(err.msg, "runs past the end") != NULL);
    buf[7] = 0;
    buf[0] = (unsigned char)(size - 7); /* one byte too long */
    buf[1] = (unsigned char)((size - 7) >> 8);
    CHECK_STATUS(dtnh_st_open_memory(&f, buf, size, &a, &err), DTNH_ERR_FORMAT);
}

static void malformed_json_is_rejected(void) {
    static const char *const bad[] = {
        "",
        "[]",
        "{",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}} x",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,],\"data_offsets\":[0,4]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[01],\"data_offsets\":[0,4]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1.0],\"data_offsets\":[0,4]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1e0],\"data_offsets\":[0,4]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,4]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}}",
        "{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
        "{\"a\":{\"dtype\":F32,\"shape\":[1],\"data_offsets\":[0,4]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,99999999999999999999]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}",
        "{\"a\":[1]}",
        "{a:{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
        "{\"a\\q\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
        "{\"a\\u12\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
        "{\"a\\ud800\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
        "{\"a\\u0000\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
        "{\"a\x01\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
        "{\"a\xc3\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
        "{\"a\xed\xa0\x80\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}",
        "{\"__metadata__\":{\"k\":1},\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
        "{\"__metadata__\":{},\"__metadata__\":{},\"a\":{\"dtype\":\"F32\",\"shape\":[1],"
        "\"data_offsets\":[0,4]}}",
    };
    size_t i;
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        dtnh_error err;
        dtnh_status s = st_open_json(bad[i], 4, &err);
        CHECK_MSG(s == DTNH_ERR_FORMAT, "header %zu <%s> gave %d", i, bad[i], (int)s);
        CHECK_MSG(strstr(err.msg, "safetensors") != NULL, "header %zu: message '%s'", i, err.msg);
    }
}

static void unsupported_dtype_is_named(void) {
    dtnh_error err;
    CHECK_STATUS(st_open_json("{\"w\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8,
                              &err), DTNH_ERR_FORMAT);
    CHECK(strstr(err.msg, "'w'") && strstr(err.msg, "F64") && strstr(err.msg, "BF16"));
}

static void offsets_outside_the_data_section_are_rejected(void) {
    dtnh_error err;
    CHECK_STATUS(st_open_json("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                              "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 12,
                              &err), DTNH_ERR_FORMAT);
    CHECK(strstr(err.msg, "'b'") && strstr(err.msg, "leave the data section"));
    CHECK_STATUS(st_open_json("{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,4]}}", 8,
                              &err), DTNH_ERR_FORMAT);
    CHECK(strstr(err.msg, "'a'") && strstr(err.msg, "backwards"));
}

static void overlapping_offsets_are_rejected(void) {
    dtnh_error err;
    CHECK_STATUS(st_open_json("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                              "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 16,
                              &err), DTNH_ERR_FORMAT);
    CHECK(strstr(err.msg, "overlap") && strstr(err.msg, "'a'") && strstr(err.msg, "'b'"));
}

static void gaps_in_the_data_section_are_rejected(void) {
    dtnh_error err;
    CHECK_STATUS(st_open_json("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8,
                              &err), DTNH_ERR_FORMAT);
    CHECK(strstr(err.msg, "'a'") && strstr(err.msg, "gap"));
    CHECK_STATUS(st_open_json("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 8,
                              &err), DTNH_ERR_FORMAT);
    CHECK(strstr(err.msg, "cover 4"));
}

static void offsets_disagreeing_with_dtype_and_shape_are_rejected(void) {
    dtnh_error err;
    CHECK_STATUS(st_open_json("{\"a\":{\"dtype\":\"F16\",\"shape\":[2,2],\"data_offsets\":[0,16]}}",
                              16, &err), DTNH_ERR_FORMAT);
    CHECK(strstr(err.msg, "'a'") && strstr(err.msg, "needs 8"));
}

static void dimensions_that_overflow_are_rejected(void) {
    dtnh_error err;
    CHECK_STATUS(st_open_json("{\"big\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],"
                              "\"data_offsets\":[0,0]}}", 0, &err), DTNH_ERR_FORMAT);
    CHECK(strstr(err.msg, "'big'") && strstr(err.msg, "overflow"));
    CHECK_STATUS(st_open_json("{\"big\":{\"dtype\":\"I64\",\"shape\":[2305843009213693952],"
                              "\"data_offsets\":[0,0]}}", 0, &err), DTNH_ERR_FORMAT);
    CHECK(strstr(err.msg, "'big'") && strstr(err.msg, "overflow"));
    /* a zero dimension makes it empty, whatever the others */
    CHECK_OK(st_open_json("{\"e\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,0],"
                          "\"data_offsets\":[0,0]}}", 0, &err));
}

static void duplicate_names_are_rejected(void) {
    dtnh_error err;
    CHECK_STATUS(st_open_json("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                              "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8,
                              &err), DTNH_ERR_FORMAT);
    CHECK(strstr(err.msg, "'a' appears twice"));
}

static void reads_check_dtype_and_count(void) {
    static unsigned char buf[4096];
    const int64_t steps = 1;
    dtnh_st_tensor t[4];
    dtnh_st_file f;
    dtnh_arena a;
    dtnh_error err;
    float out[8];
    int64_t i64[8];
    size_t size;
    st_sample(t, &steps);
    CHECK_OK(dtnh_st_write_memory(t, 4, NULL, 0, buf, sizeof buf, &size, &err));
    st_arena(&a);
    CHECK_OK(dtnh_st_open_memory(&f, buf, size, &a, &err));
    CHECK_STATUS(dtnh_st_read_f32(&f, 0, out, 5, &err), DTNH_ERR_SHAPE);
    CHECK(strstr(err.msg, "layer1.0.conv1.weight") != NULL);
    CHECK_STATUS(dtnh_st_read_f32(&f, 1, out, 1, &err), DTNH_ERR_FORMAT);
    CHECK_STATUS(dtnh_st_read_i64(&f, 0, i64, 6, &err), DTNH_ERR_FORMAT);
    CHECK_STATUS(dtnh_st_read_f32(&f, 9, out, 1, &err), DTNH_ERR_ARG);
}

/* Every truncation and every single-bit flip of a valid file opens or fails cleanly; the
   sanitizers watch for the crash. */
static void every_truncation_and_bit_flip_fails_cleanly(void) {
    static unsigned char buf[4096];
    const int64_t steps = 3;
    dtnh_st_tensor t[4];
    dtnh_st_file f;
    dtnh_arena a;
    size_t size, n, bit;
    float out[6];
    st_sample(t, &steps);
    CHECK_OK(dtnh_st_write_memory(t, 4, NULL, 0, buf, sizeof buf, &size, NULL));
    for (n = 0; n < size; n++) {
        unsigned char *cut = (unsigned char *)malloc(n + 1);
        memcpy(cut, buf, n);
        st_arena(&a);
        CHECK_MSG(dtnh_st_open_memory(&f, cut, n, &a, NULL) == DTNH_ERR_FORMAT, "cut at %zu", n);
        free(cut);
    }
    for (bit = 0; bit < 8 * size; bit++) {
        unsigned char *copy = (unsigned char *)malloc(size);
        int i;
        memcpy(copy, buf, size);
        copy[bit / 8] ^= (unsigned char)(1u << (bit % 8));
        st_arena(&a);
        if (dtnh_st_open_memory(&f, copy, size, &a, NULL) == DTNH_OK)
            for (i = 0; i < f.count; i++)
                if (f.entries[i].dtype != DTNH_ST_I64 && f.entries[i].count <= 6)
                    dtnh_st_read_f32(&f, i, out, (size_t)f.entries[i].count, NULL);
        free(copy);
    }
}

/* ---- saving ----------------------------------------------------------------------------------- */

static int st_file_equals(const char *path, const unsigned char *want, size_t n) {
    static unsigned char got[8192];
    FILE *fp = fopen(path, "rb");
    size_t r;
    if (!fp) return 0;
    r = fread(got, 1, sizeof got, fp);
    fclose(fp);
    return r == n && memcmp(got, want, n) == 0;
}

static void failed_save_leaves_the_previous_file(void) {
    static unsigned char before[4096];
    const int64_t steps = 11;
    char path[512], tmp[600], cmd[1400];
    dtnh_st_tensor t[4];
    dtnh_error err;
    size_t size;
    st_sample(t, &steps);
    st_temp_path(path, sizeof path, "atomic");
    CHECK_OK(dtnh_st_save(path, t, 4, NULL, 0, &err));
    CHECK_OK(dtnh_st_write_memory(t, 4, NULL, 0, before, sizeof before, &size, &err));
    CHECK(st_file_equals(path, before, size));
    /* A directory where the temporary file should go makes the write itself fail. */
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    snprintf(cmd, sizeof cmd, "mkdir '%s'", tmp);
    CHECK(system(cmd) == 0);
    t[0].f32 = st_vals + 1;
    CHECK_STATUS(dtnh_st_save(path, t, 4, NULL, 0, &err), DTNH_ERR_IO);
    CHECK(strstr(err.msg, ".tmp") != NULL);
    CHECK(st_file_equals(path, before, size));
    remove(tmp);
    /* A save refused for its input touches nothing either. */
    t[1].name = t[0].name;
    CHECK_STATUS(dtnh_st_save(path, t, 4, NULL, 0, &err), DTNH_ERR_ARG);
    CHECK(strstr(err.msg, "twice") != NULL);
    CHECK(st_file_equals(path, before, size));
    remove(path);
}

static void open_reports_missing_files(void) {
    dtnh_st_file f;
    dtnh_arena a;
    dtnh_error err;
    st_arena(&a);
    CHECK_STATUS(dtnh_st_open(&f, "/nonexistent/dir/w.safetensors", &a, &err), DTNH_ERR_IO);
    CHECK(strstr(err.msg, "/nonexistent/dir/w.safetensors") != NULL);
    CHECK(f.fp == NULL);
}

void suite_safetensors(void) {
    RUN(round_trip_every_dtype_in_memory);
    RUN(round_trip_through_a_file);
    RUN(writer_pads_the_header_and_reports_its_size);
    RUN(f16_conversions_are_exact_for_every_pattern);
    RUN(f16_and_bf16_round_to_nearest_even);
    RUN(bf16_conversions_are_exact_for_every_pattern);
    RUN(names_are_escaped_and_unescaped);
    RUN(open_counts_its_scratch_exactly);
    RUN(truncated_file_is_rejected);
    RUN(header_length_past_the_end_is_rejected);
    RUN(malformed_json_is_rejected);
    RUN(unsupported_dtype_is_named);
    RUN(offsets_outside_the_data_section_are_rejected);
    RUN(overlapping_offsets_are_rejected);
    RUN(gaps_in_the_data_section_are_rejected);
    RUN(offsets_disagreeing_with_dtype_and_shape_are_rejected);
    RUN(dimensions_that_overflow_are_rejected);
    RUN(duplicate_names_are_rejected);
    RUN(reads_check_dtype_and_count);
    RUN(every_truncation_and_bit_flip_fails_cleanly);
    RUN(failed_save_leaves_the_previous_file);
    RUN(open_reports_missing_files);
}
