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
        ("{\"__metadata__\":{},\"__metadata__\":{},\"a\":{\"dtype\":\"F32\",\"shape\":[1],"
         "\"data_offsets\":[0,4]}}"),
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

/* ---- ResNet-18 weights --------------------------------------------------------------------------- */

/* A small network (width 4) on malloc'd memory; buffers get values unlike their defaults. */
typedef struct st_net {
    dtnh_resnet net;
    void *mem;
} st_net;

static dtnh_status st_net_init(st_net *n, dtnh_stem stem, int classes, uint64_t seed) {
    dtnh_resnet_config cfg;
    dtnh_resnet_plan plan;
    dtnh_arena a;
    dtnh_status s;
    size_t i;
    memset(&cfg, 0, sizeof cfg);
    cfg.width = 4;
    cfg.stem = stem;
    cfg.num_classes = classes;
    cfg.height = cfg.width_px = 8;
    cfg.train = DTNH_TRAIN_NONE;
    cfg.seed = seed;
    n->mem = NULL;
    if ((s = dtnh_resnet_plan_memory(&cfg, 0, &plan, NULL))) return s;
    n->mem = malloc(plan.persistent + 64);
    dtnh_arena_init(&a, n->mem, plan.persistent + 64);
    if ((s = dtnh_resnet_init(&n->net, &cfg, &a, NULL))) return s;
    for (i = 0; i < n->net.buffers.total; i++) n->net.buffers.values[i] = (float)(seed % 7) + 0.01f * (float)i;
    for (i = 0; i < n->net.buffers.count_total; i++) n->net.buffers.counts[i] = (int64_t)(seed * 100 + i);
    return DTNH_OK;
}

/* Weights and buffers, bit for bit. */
typedef struct st_snapshot {
    float *w, *values;
    int64_t *counts;
} st_snapshot;

static void st_snap(st_snapshot *s, const dtnh_resnet *net) {
    const dtnh_buffers *b = &net->buffers;
    s->w = (float *)malloc(net->params.total * sizeof(float));
    s->values = (float *)malloc(b->total * sizeof(float));
    s->counts = (int64_t *)malloc(b->count_total * sizeof(int64_t));
    memcpy(s->w, net->params.w, net->params.total * sizeof(float));
    memcpy(s->values, b->values, b->total * sizeof(float));
    memcpy(s->counts, b->counts, b->count_total * sizeof(int64_t));
}

static int st_same(const st_snapshot *s, const dtnh_resnet *net) {
    const dtnh_buffers *b = &net->buffers;
    int same = memcmp(s->w, net->params.w, net->params.total * sizeof(float)) == 0 &&
               memcmp(s->values, b->values, b->total * sizeof(float)) == 0 &&
               memcmp(s->counts, b->counts, b->count_total * sizeof(int64_t)) == 0;
    free(s->w);
    free(s->values);
    free(s->counts);
    return same;
}

static int st_nets_equal(const dtnh_resnet *a, const dtnh_resnet *b) {
    st_snapshot s;
    st_snap(&s, a);
    return st_same(&s, b);
}

/* The network's state as writer tensors, to make files with a tensor changed. */
static int st_state_tensors(const dtnh_resnet *net, dtnh_st_tensor *t) {
    int n = 0;
    dtnh_resnet_state_tensors(net, DTNH_ST_F32, t, &n, NULL);
    return n;
}

static unsigned char st_big[1 << 20];

/* Writes tensors into st_big and opens it. */
static dtnh_status st_open_tensors(dtnh_st_file *f, const dtnh_st_tensor *t, int n, dtnh_error *err) {
    dtnh_arena a;
    size_t size;
    dtnh_status s = dtnh_st_write_memory(t, n, NULL, 0, st_big, sizeof st_big, &size, err);
    if (s) return s;
    st_arena(&a);
    return dtnh_st_open_memory(f, st_big, size, &a, err);
}

static void resnet_save_and_load_round_trip_exactly(void) {
    st_net a, b;
    dtnh_st_file f;
    dtnh_load_report rep;
    dtnh_arena ar;
    dtnh_error err;
    size_t size;
    CHECK_OK(st_net_init(&a, DTNH_STEM_CIFAR, 10, 1));
    CHECK_OK(st_net_init(&b, DTNH_STEM_CIFAR, 10, 2));
    CHECK(!st_nets_equal(&a.net, &b.net));
    CHECK_OK(dtnh_resnet_save_memory(&a.net, st_big, sizeof st_big, &size, &err));
    st_arena(&ar);
    CHECK_OK(dtnh_st_open_memory(&f, st_big, size, &ar, &err));
    CHECK(f.count == dtnh_resnet_state_count(&a.net) && strcmp(f.entries[0].name, "conv1.weight") == 0);
    CHECK(f.entries[dtnh_st_find(&f, "bn1.num_batches_tracked")].dtype == DTNH_ST_I64);
    CHECK(f.entries[dtnh_st_find(&f, "bn1.num_batches_tracked")].ndim == 0);
    CHECK_OK(dtnh_resnet_load(&b.net, &f, NULL, &rep, &err));
    CHECK(rep.loaded == f.count && rep.missing == 0 && rep.unknown == 0 && !rep.head_skipped);
    CHECK(rep.file_classes == 10 && rep.missing_names[0] == '\0');
    CHECK(st_nets_equal(&a.net, &b.net));
    free(a.mem);
    free(b.mem);
}

static void resnet_file_round_trip_and_config_from_header(void) {
    st_net a, b, c;
    dtnh_resnet_config cfg;
    dtnh_load_report rep;
    dtnh_arena ar;
    dtnh_error err;
    char path[512];
    st_temp_path(path, sizeof path, "resnet");
    CHECK_OK(st_net_init(&a, DTNH_STEM_CIFAR, 10, 3));
    CHECK_OK(st_net_init(&b, DTNH_STEM_CIFAR, 10, 4));
    CHECK_OK(st_net_init(&c, DTNH_STEM_IMAGENET, 7, 5));
    CHECK_OK(dtnh_resnet_save(&a.net, path, &err));
    st_arena(&ar);
    memset(&cfg, 0, sizeof cfg);
    cfg.max_batch = 9;
    CHECK_OK(dtnh_resnet_config_from_file(path, &ar, &cfg, &err));
    CHECK(cfg.stem == DTNH_STEM_CIFAR && cfg.width == 4 && cfg.in_channels == 3 &&
          cfg.num_classes == 10 && cfg.max_batch == 9 && dtnh_arena_used(&ar) == 0);
    CHECK_OK(dtnh_resnet_load_file(&b.net, path, &ar, NULL, &rep, &err));
    CHECK(rep.loaded == dtnh_resnet_state_count(&a.net) && dtnh_arena_used(&ar) == 0);
    CHECK(st_nets_equal(&a.net, &b.net));
    CHECK_OK(dtnh_resnet_save(&c.net, path, &err));
    CHECK_OK(dtnh_resnet_config_from_file(path, &ar, &cfg, &err));
    CHECK(cfg.stem == DTNH_STEM_IMAGENET && cfg.num_classes == 7);
    remove(path);
    free(a.mem);
    free(b.mem);
    free(c.mem);
}

/* The transfer case: a source with 10 classes into a target with 5. */
static void another_class_count_keeps_the_new_head(void) {
    st_net a, b;
    dtnh_st_file f;
    dtnh_load_report rep;
    dtnh_arena ar;
    dtnh_error err;
    float head[5 * 32 + 5];
    size_t size, fcw;
    int iw, ib;
    CHECK_OK(st_net_init(&a, DTNH_STEM_CIFAR, 10, 1));
    CHECK_OK(st_net_init(&b, DTNH_STEM_CIFAR, 5, 2));
    iw = dtnh_params_find(&b.net.params, "fc.weight");
    ib = dtnh_params_find(&b.net.params, "fc.bias");
    fcw = b.net.params.views[iw].offset;
    CHECK(b.net.params.views[ib].offset == fcw + 5 * 32 && fcw + 5 * 32 + 5 == b.net.params.total);
    memcpy(head, b.net.params.w + fcw, sizeof head);
    CHECK_OK(dtnh_resnet_save_memory(&a.net, st_big, sizeof st_big, &size, &err));
    st_arena(&ar);
    CHECK_OK(dtnh_st_open_memory(&f, st_big, size, &ar, &err));
    CHECK_OK(dtnh_resnet_load(&b.net, &f, NULL, &rep, &err));
    CHECK(rep.head_skipped == 1 && rep.file_classes == 10 && rep.missing == 0 && rep.unknown == 0);
    CHECK(rep.loaded == f.count - 2);
    CHECK(memcmp(head, b.net.params.w + fcw, sizeof head) == 0);
    CHECK(memcmp(a.net.params.w, b.net.params.w, fcw * sizeof(float)) == 0);
    CHECK(memcmp(a.net.buffers.values, b.net.buffers.values, a.net.buffers.total * sizeof(float)) == 0);
    free(a.mem);
    free(b.mem);
}

static void strict_load_refuses_another_head(void) {
    st_net a, b;
    st_snapshot snap;
    dtnh_st_file f;
    dtnh_load_config lc;
    dtnh_load_report rep;
    dtnh_arena ar;
    dtnh_error err;
    size_t size;
    CHECK_OK(st_net_init(&a, DTNH_STEM_CIFAR, 10, 1));
    CHECK_OK(st_net_init(&b, DTNH_STEM_CIFAR, 5, 2));
    CHECK_OK(dtnh_resnet_save_memory(&a.net, st_big, sizeof st_big, &size, &err));
    st_arena(&ar);
    CHECK_OK(dtnh_st_open_memory(&f, st_big, size, &ar, &err));
    lc.strict = 1;
    st_snap(&snap, &b.net);
    CHECK_STATUS(dtnh_resnet_load(&b.net, &f, &lc, &rep, &err), DTNH_ERR_FORMAT);
    CHECK(strstr(err.msg, "class count") != NULL && rep.loaded == 0);
    CHECK(st_same(&snap, &b.net));
    free(a.mem);
    free(b.mem);
}

static void missing_and_unknown_names_are_reported(void) {
    static const float extra[2] = {1, 2};
    st_net a, b;
    st_snapshot snap;
    dtnh_st_tensor t[DTNH__RESNET_MAX_STATE + 1];
    dtnh_st_file f;
    dtnh_load_config lc;
    dtnh_load_report rep;
    dtnh_error err;
    int n, i, j;
    CHECK_OK(st_net_init(&a, DTNH_STEM_CIFAR, 10, 1));
    CHECK_OK(st_net_init(&b, DTNH_STEM_CIFAR, 10, 2));
    n = st_state_tensors(&a.net, t);
    for (i = j = 0; i < n; i++) /* drop two */
        if (strcmp(t[i].name, "layer1.0.bn1.running_var") && strcmp(t[i].name, "fc.bias")) t[j++] = t[i];
    memset(&t[j], 0, sizeof t[j]);
    t[j].name = "extra.weight";
    t[j].ndim = 1;
    t[j].shape[0] = 2;
    t[j].f32 = extra;
    CHECK_OK(st_open_tensors(&f, t, j + 1, &err));
    lc.strict = 1;
    st_snap(&snap, &b.net);
    CHECK_STATUS(dtnh_resnet_load(&b.net, &f, &lc, &rep, &err), DTNH_ERR_FORMAT);
    CHECK(strstr(err.msg, "fc.bias") && strstr(err.msg, "extra.weight"));
    CHECK(st_same(&snap, &b.net));
    CHECK_OK(dtnh_resnet_load(&b.net, &f, NULL, &rep, &err));
    CHECK(rep.missing == 2 && rep.unknown == 1 && rep.loaded == n - 2);
    CHECK(strcmp(rep.missing_names, "layer1.0.bn1.running_var, fc.bias") == 0);
    CHECK(strcmp(rep.unknown_names, "extra.weight") == 0);
    free(a.mem);
    free(b.mem);
}

/* Every model tensor missing: the list of names ends with "..." and stays in its buffer. */
static void a_long_list_of_names_is_cut_with_an_ellipsis(void) {
    static const float one[1] = {1};
    st_net b;
    st_snapshot snap;
    dtnh_st_tensor t;
    dtnh_st_file f;
    dtnh_load_report rep;
    dtnh_error err;
    size_t len;
    CHECK_OK(st_net_init(&b, DTNH_STEM_CIFAR, 10, 2));
    memset(&t, 0, sizeof t);
    t.name = "something.else";
    t.f32 = one;
    CHECK_OK(st_open_tensors(&f, &t, 1, &err));
    st_snap(&snap, &b.net);
    CHECK_OK(dtnh_resnet_load(&b.net, &f, NULL, &rep, &err));
    CHECK(rep.loaded == 0 && rep.unknown == 1 && rep.missing == dtnh_resnet_state_count(&b.net));
    len = strlen(rep.missing_names);
    CHECK(len < DTNH_LOAD_NAMES_SIZE && strcmp(rep.missing_names + len - 3, "...") == 0);
    CHECK(strncmp(rep.missing_names, "conv1.weight, bn1.weight, ", 26) == 0);
    CHECK(st_same(&snap, &b.net));
    free(b.mem);
}

/* A tensor shaped for another network: an error naming it, and nothing written, even though
   the tensors before it in the file are fine. */
static void wrong_shape_leaves_the_network_unchanged(void) {
    st_net a, b;
    st_snapshot snap;
    dtnh_st_tensor t[DTNH__RESNET_MAX_STATE];
    dtnh_st_file f;
    dtnh_load_report rep;
    dtnh_error err;
    int n, i;
    CHECK_OK(st_net_init(&a, DTNH_STEM_CIFAR, 10, 1));
    CHECK_OK(st_net_init(&b, DTNH_STEM_CIFAR, 10, 2));
    n = st_state_tensors(&a.net, t);
    i = dtnh_resnet_state_find(&a.net, "layer2.0.conv1.weight");
    CHECK(t[i].shape[0] == 8 && t[i].shape[1] == 4);
    t[i].shape[0] = 4; /* same element count, another shape */
    t[i].shape[1] = 8;
    CHECK_OK(st_open_tensors(&f, t, n, &err));
    st_snap(&snap, &b.net);
    CHECK_STATUS(dtnh_resnet_load(&b.net, &f, NULL, &rep, &err), DTNH_ERR_SHAPE);
    CHECK_MSG(strstr(err.msg, "'layer2.0.conv1.weight'") && strstr(err.msg, "[4, 8, 3, 3]") &&
              strstr(err.msg, "[8, 4, 3, 3]"), "%s", err.msg);
    CHECK(rep.loaded == 0);
    CHECK(st_same(&snap, &b.net));
    free(a.mem);
    free(b.mem);
}

static void nan_weight_leaves_the_network_unchanged(void) {
    volatile float zero = 0;
    st_net a, b;
    st_snapshot snap;
    dtnh_st_file f;
    dtnh_error err;
    size_t size;
    dtnh_arena ar;
    int v;
    CHECK_OK(st_net_init(&a, DTNH_STEM_CIFAR, 10, 1));
    CHECK_OK(st_net_init(&b, DTNH_STEM_CIFAR, 10, 2));
    v = dtnh_params_find(&a.net.params, "layer3.1.bn2.bias");
    a.net.params.w[a.net.params.views[v].offset + 5] = zero / zero;
    CHECK_OK(dtnh_resnet_save_memory(&a.net, st_big, sizeof st_big, &size, &err));
    st_arena(&ar);
    CHECK_OK(dtnh_st_open_memory(&f, st_big, size, &ar, &err));
    st_snap(&snap, &b.net);
    CHECK_STATUS(dtnh_resnet_load(&b.net, &f, NULL, NULL, &err), DTNH_ERR_NUMERIC);
    CHECK(strstr(err.msg, "'layer3.1.bn2.bias'") && strstr(err.msg, "element 5"));
    CHECK(st_same(&snap, &b.net));
    free(a.mem);
    free(b.mem);
}

static void counter_of_the_wrong_dtype_is_rejected(void) {
    static const float fake = 3.0f;
    st_net a, b;
    st_snapshot snap;
    dtnh_st_tensor t[DTNH__RESNET_MAX_STATE];
    dtnh_st_file f;
    dtnh_error err;
    int n, i;
    CHECK_OK(st_net_init(&a, DTNH_STEM_CIFAR, 10, 1));
    CHECK_OK(st_net_init(&b, DTNH_STEM_CIFAR, 10, 2));
    n = st_state_tensors(&a.net, t);
    i = dtnh_resnet_state_find(&a.net, "layer4.1.bn1.num_batches_tracked");
    t[i].dtype = DTNH_ST_F32;
    t[i].f32 = &fake;
    t[i].i64 = NULL;
    CHECK_OK(st_open_tensors(&f, t, n, &err));
    st_snap(&snap, &b.net);
    CHECK_STATUS(dtnh_resnet_load(&b.net, &f, NULL, NULL, &err), DTNH_ERR_FORMAT);
    CHECK(strstr(err.msg, "'layer4.1.bn1.num_batches_tracked'") && strstr(err.msg, "I64"));
    CHECK(st_same(&snap, &b.net));
    free(a.mem);
    free(b.mem);
}

/* A half-precision file loads widened: every weight within half's rounding of the source. */
static void f16_and_bf16_weights_load_widened(void) {
    st_net a, b;
    dtnh_st_tensor t[DTNH__RESNET_MAX_STATE];
    dtnh_st_file f;
    dtnh_error err;
    int n, i, pass;
    size_t j;
    CHECK_OK(st_net_init(&a, DTNH_STEM_IMAGENET, 10, 1));
    CHECK_OK(st_net_init(&b, DTNH_STEM_IMAGENET, 10, 2));
    for (pass = 0; pass < 2; pass++) {
        double rel = pass ? 1.0 / 256 : 1.0 / 2048;
        n = st_state_tensors(&a.net, t);
        for (i = 0; i < n; i++)
            if (t[i].dtype == DTNH_ST_F32) t[i].dtype = pass ? DTNH_ST_BF16 : DTNH_ST_F16;
        CHECK_OK(st_open_tensors(&f, t, n, &err));
        CHECK_OK(dtnh_resnet_load(&b.net, &f, NULL, NULL, &err));
        for (j = 0; j < a.net.params.total; j++)
            CHECK_MSG(fabs(a.net.params.w[j] - b.net.params.w[j]) <= rel * fabs(a.net.params.w[j]) + 1e-7,
                      "pass %d, weight %zu: %g against %g", pass, j, b.net.params.w[j], a.net.params.w[j]);
        CHECK(memcmp(a.net.buffers.counts, b.net.buffers.counts, a.net.buffers.count_total * 8) == 0);
    }
    free(a.mem);
    free(b.mem);
}

static void config_from_header_rejects_other_networks(void) {
    static const float z[8 * 3 * 5 * 5] = {0};
    dtnh_st_tensor t[2];
    dtnh_st_file f;
    dtnh_resnet_config cfg;
    dtnh_error err;
    memset(t, 0, sizeof t);
    memset(&cfg, 0, sizeof cfg);
    t[0].name = "conv1.weight";
    t[0].ndim = 4;
    t[0].shape[0] = 8;
    t[0].shape[1] = 3;
    t[0].shape[2] = t[0].shape[3] = 5; /* neither stem */
    t[0].f32 = z;
    t[1].name = "fc.weight";
    t[1].ndim = 2;
    t[1].shape[0] = 2;
    t[1].shape[1] = 64;
    t[1].f32 = z;
    CHECK_OK(st_open_tensors(&f, t, 2, &err));
    CHECK_STATUS(dtnh_resnet_config_from_st(&f, &cfg, &err), DTNH_ERR_FORMAT);
    CHECK(strstr(err.msg, "conv1.weight") != NULL);
    t[0].shape[2] = t[0].shape[3] = 3;
    t[1].shape[1] = 32; /* not 8 x width */
    CHECK_OK(st_open_tensors(&f, t, 2, &err));
    CHECK_STATUS(dtnh_resnet_config_from_st(&f, &cfg, &err), DTNH_ERR_FORMAT);
    CHECK(strstr(err.msg, "fc.weight") != NULL);
    CHECK_OK(st_open_tensors(&f, t, 1, &err));
    CHECK_STATUS(dtnh_resnet_config_from_st(&f, &cfg, &err), DTNH_ERR_FORMAT);
    CHECK(cfg.width == 0);
}

/* A weights file cut short on disk: the load fails and the network keeps its weights. */
static void truncated_weights_file_changes_nothing(void) {
    st_net a, b;
    st_snapshot snap;
    dtnh_arena ar;
    dtnh_error err;
    char path[512];
    size_t size;
    FILE *fp;
    CHECK_OK(st_net_init(&a, DTNH_STEM_CIFAR, 10, 1));
    CHECK_OK(st_net_init(&b, DTNH_STEM_CIFAR, 10, 2));
    CHECK_OK(dtnh_resnet_save_memory(&a.net, st_big, sizeof st_big, &size, &err));
    st_temp_path(path, sizeof path, "cut");
    fp = fopen(path, "wb");
    CHECK(fp != NULL);
    CHECK(fwrite(st_big, 1, size - 20, fp) == size - 20);
    fclose(fp);
    st_arena(&ar);
    st_snap(&snap, &b.net);
    CHECK_STATUS(dtnh_resnet_load_file(&b.net, path, &ar, NULL, NULL, &err), DTNH_ERR_FORMAT);
    CHECK_MSG(strstr(err.msg, "fc.bias") != NULL, "%s", err.msg); /* the last tensor is cut */
    CHECK(st_same(&snap, &b.net));
    remove(path);
    free(a.mem);
    free(b.mem);
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
    RUN(resnet_save_and_load_round_trip_exactly);
    RUN(resnet_file_round_trip_and_config_from_header);
    RUN(another_class_count_keeps_the_new_head);
    RUN(strict_load_refuses_another_head);
    RUN(missing_and_unknown_names_are_reported);
    RUN(a_long_list_of_names_is_cut_with_an_ellipsis);
    RUN(wrong_shape_leaves_the_network_unchanged);
    RUN(nan_weight_leaves_the_network_unchanged);
    RUN(counter_of_the_wrong_dtype_is_rejected);
    RUN(f16_and_bf16_weights_load_widened);
    RUN(config_from_header_rejects_other_networks);
    RUN(truncated_weights_file_changes_nothing);
}
