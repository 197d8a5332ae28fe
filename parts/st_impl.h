/* ---- safetensors ----------------------------------------------------------------------------
   A strict reader (every malformed header is an error naming the tensor, never a crash) and
   a writer that produces what the reference implementation produces. */

#ifndef DTNH_NO_STDIO
#include <limits.h>
#include <stdio.h>
#if !defined(DTNH_NO_FSYNC) && (defined(__unix__) || defined(__APPLE__))
#define DTNH__ST_FSYNC 1
#ifdef __cplusplus
#include <unistd.h>
#else
/* POSIX, declared here because a strict -std=c99 build hides them in the system headers;
   the parentheses keep a libc that defines fileno as a macro happy. */
extern int fsync(int fd);
extern int(fileno)(FILE *stream);
#endif
#endif
#endif

#define DTNH__ST_CHUNK 4096
#define DTNH__ST_PATH_MAX 4096
/* The shortest text an accepted entry or metadata pair can take (see dtnh__st_bounds). */
#define DTNH__ST_MIN_ENTRY_CHARS 50
#define DTNH__ST_MIN_META_CHARS 6

static const char *const dtnh__st_dtype_names[4] = {"F32", "F16", "BF16", "I64"};
static const unsigned char dtnh__st_dtype_sizes[4] = {4, 2, 2, 8};

DTNHDEF const char *dtnh_st_dtype_name(dtnh_st_dtype t) {
    return (unsigned)t < 4 ? dtnh__st_dtype_names[t] : "?";
}

DTNHDEF size_t dtnh_st_dtype_size(dtnh_st_dtype t) {
    return (unsigned)t < 4 ? dtnh__st_dtype_sizes[t] : 0;
}

/* ---- safetensors: number conversions (little-endian on disk, whatever the host) ---------- */

static uint64_t dtnh__st_load_le(const unsigned char *b, int bytes) {
    uint64_t v = 0;
    int i;
    for (i = bytes - 1; i >= 0; i--) v = (v << 8) | b[i];
    return v;
}

static void dtnh__st_store_le(unsigned char *b, uint64_t v, int bytes) {
    int i;
    for (i = 0; i < bytes; i++, v >>= 8) b[i] = (unsigned char)(v & 0xFF);
}

static float dtnh__st_bits_to_float(uint32_t u) {
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

static uint32_t dtnh__st_float_to_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

/* IEEE half to float, exact (subnormals normalised, Inf and NaN kept). */
static float dtnh__st_half_to_float(unsigned h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 31u, man = h & 1023u;
    uint32_t e = 113;
    if (exp == 31) return dtnh__st_bits_to_float(sign | 0x7F800000u | (man << 13));
    if (exp != 0) return dtnh__st_bits_to_float(sign | ((exp + 112) << 23) | (man << 13));
    if (man == 0) return dtnh__st_bits_to_float(sign);
    while (!(man & 0x400u)) {
        man <<= 1;
        e--;
    }
    return dtnh__st_bits_to_float(sign | (e << 23) | ((man & 0x3FFu) << 13));
}

/* Float to IEEE half, rounding to nearest even; too large becomes Inf, NaN stays NaN. */
static unsigned dtnh__st_float_to_half(float x) {
    uint32_t u = dtnh__st_float_to_bits(x), a = u & 0x7FFFFFFFu;
    unsigned sign = (unsigned)(u >> 16) & 0x8000u;
    if (a > 0x7F800000u) return sign | 0x7E00u;
    if (a >= 0x477FF000u) return sign | 0x7C00u; /* 65520 and up round to Inf */
    if (a < 0x38800000u) {                       /* below 2^-14: a half subnormal */
        uint32_t e = a >> 23, m = (a & 0x7FFFFFu) | 0x800000u, shift, q, rem, half;
        if (e < 102) return sign; /* below 2^-25: rounds to zero */
        shift = 126 - e;
        q = m >> shift;
        rem = m & ((1u << shift) - 1);
        half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1))) q++;
        return sign | (unsigned)q;
    }
    return sign | (unsigned)((a - 0x38000000u + 0xFFFu + ((a >> 13) & 1u)) >> 13);
}

/* Float to bfloat16, rounding to nearest even; NaN stays NaN. */
static unsigned dtnh__st_float_to_bf16(float x) {
    uint32_t u = dtnh__st_float_to_bits(x);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (unsigned)(u >> 16) | 0x40u;
    return (unsigned)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

/* n elements of dtype t from little-endian bytes into outf (float types) or outi (I64). */
static void dtnh__st_decode(dtnh_st_dtype t, const unsigned char *b, size_t n, float *outf,
                            int64_t *outi) {
    size_t i;
    for (i = 0; i < n; i++) {
        switch (t) {
        case DTNH_ST_F32: outf[i] = dtnh__st_bits_to_float((uint32_t)dtnh__st_load_le(b + 4 * i, 4)); break;
        case DTNH_ST_F16: outf[i] = dtnh__st_half_to_float((unsigned)dtnh__st_load_le(b + 2 * i, 2)); break;
        case DTNH_ST_BF16: outf[i] = dtnh__st_bits_to_float((uint32_t)dtnh__st_load_le(b + 2 * i, 2) << 16); break;
        case DTNH_ST_I64: {
            uint64_t v = dtnh__st_load_le(b + 8 * i, 8);
            memcpy(&outi[i], &v, sizeof v);
            break;
        }
        }
    }
}

/* n elements into little-endian bytes of dtype t. */
static void dtnh__st_encode(dtnh_st_dtype t, const float *inf, const int64_t *ini, size_t n,
                            unsigned char *b) {
    size_t i;
    for (i = 0; i < n; i++) {
        switch (t) {
        case DTNH_ST_F32: dtnh__st_store_le(b + 4 * i, dtnh__st_float_to_bits(inf[i]), 4); break;
        case DTNH_ST_F16: dtnh__st_store_le(b + 2 * i, dtnh__st_float_to_half(inf[i]), 2); break;
        case DTNH_ST_BF16: dtnh__st_store_le(b + 2 * i, dtnh__st_float_to_bf16(inf[i]), 2); break;
        case DTNH_ST_I64: {
            uint64_t v;
            memcpy(&v, &ini[i], sizeof v);
            dtnh__st_store_le(b + 8 * i, v, 8);
            break;
        }
        }
    }
}

/* ---- safetensors: the JSON header parser -------------------------------------------------
   Only what a safetensors header holds: one object of tensor entries and "__metadata__".
   Strings are decoded in place (decoding never lengthens them) and NUL-terminated. */

typedef struct dtnh__st_parser {
    char *s; /* the header text, with a NUL after its end */
    size_t pos, len;
    const char *tensor; /* the entry being parsed, for messages */
    dtnh_error *err;
} dtnh__st_parser;

static dtnh_status dtnh__st_syntax(const dtnh__st_parser *p, const char *what) {
    if (p->tensor)
        return dtnh_fail(p->err, DTNH_ERR_FORMAT, "safetensors header, byte %zu, tensor '%s': %s",
                         p->pos, p->tensor, what);
    return dtnh_fail(p->err, DTNH_ERR_FORMAT, "safetensors header, byte %zu: %s", p->pos, what);
}

static void dtnh__st_ws(dtnh__st_parser *p) {
    while (p->pos < p->len && (p->s[p->pos] == ' ' || p->s[p->pos] == '\t' ||
                               p->s[p->pos] == '\n' || p->s[p->pos] == '\r'))
        p->pos++;
}

/* Skips white space, then expects the character c. */
static dtnh_status dtnh__st_expect(dtnh__st_parser *p, char c, const char *what) {
    dtnh__st_ws(p);
    if (p->pos >= p->len || p->s[p->pos] != c) return dtnh__st_syntax(p, what);
    p->pos++;
    return DTNH_OK;
}

/* After an item of an object or array: 1 on ',', 0 on the closing character, -1 otherwise. */
static int dtnh__st_next_item(dtnh__st_parser *p, char close) {
    dtnh__st_ws(p);
    if (p->pos < p->len && p->s[p->pos] == ',') {
        p->pos++;
        return 1;
    }
    if (p->pos < p->len && p->s[p->pos] == close) {
        p->pos++;
        return 0;
    }
    return -1;
}

static int dtnh__st_hex4(const dtnh__st_parser *p, size_t at, unsigned *out) {
    unsigned v = 0;
    size_t i;
    if (at + 4 > p->len) return 0;
    for (i = at; i < at + 4; i++) {
        char c = p->s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
              : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0) return 0;
        v = v * 16 + (unsigned)d;
    }
    *out = v;
    return 1;
}

/* Decodes the \u escape at p->pos (surrogate pairs joined) into UTF-8 at *dst. */
static dtnh_status dtnh__st_unicode_escape(dtnh__st_parser *p, char **dst) {
    unsigned cp, lo;
    char *d = *dst;
    if (!dtnh__st_hex4(p, p->pos + 2, &cp)) return dtnh__st_syntax(p, "bad \\u escape");
    p->pos += 6;
    if (cp >= 0xDC00 && cp <= 0xDFFF) return dtnh__st_syntax(p, "lone low surrogate in \\u escape");
    if (cp >= 0xD800 && cp <= 0xDBFF) {
        if (p->pos + 1 >= p->len || p->s[p->pos] != '\\' || p->s[p->pos + 1] != 'u' ||
            !dtnh__st_hex4(p, p->pos + 2, &lo) || lo < 0xDC00 || lo > 0xDFFF)
            return dtnh__st_syntax(p, "high surrogate without its low half in \\u escape");
        p->pos += 6;
        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
    }
    if (cp == 0) return dtnh__st_syntax(p, "\\u0000 in a string");
    if (cp < 0x80) {
        *d++ = (char)cp;
    } else if (cp < 0x800) {
        *d++ = (char)(0xC0 | (cp >> 6));
        *d++ = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        *d++ = (char)(0xE0 | (cp >> 12));
        *d++ = (char)(0x80 | ((cp >> 6) & 0x3F));
        *d++ = (char)(0x80 | (cp & 0x3F));
    } else {
        *d++ = (char)(0xF0 | (cp >> 18));
        *d++ = (char)(0x80 | ((cp >> 12) & 0x3F));
        *d++ = (char)(0x80 | ((cp >> 6) & 0x3F));
        *d++ = (char)(0x80 | (cp & 0x3F));
    }
    *dst = d;
    return DTNH_OK;
}

/* Length of the valid UTF-8 sequence at s[pos] (lead byte >= 0x80), or 0 when invalid. */
static size_t dtnh__st_utf8_len(const dtnh__st_parser *p) {
    const unsigned char *b = (const unsigned char *)p->s + p->pos;
    size_t left = p->len - p->pos, n, i;
    unsigned lo = 0x80, hi = 0xBF;
    if (b[0] >= 0xC2 && b[0] <= 0xDF) n = 2;
    else if (b[0] >= 0xE0 && b[0] <= 0xEF) n = 3;
    else if (b[0] >= 0xF0 && b[0] <= 0xF4) n = 4;
    else return 0;
    if (n > left) return 0;
    if (b[0] == 0xE0) lo = 0xA0; /* no overlong forms */
    if (b[0] == 0xED) hi = 0x9F; /* no surrogates */
    if (b[0] == 0xF0) lo = 0x90;
    if (b[0] == 0xF4) hi = 0x8F; /* nothing past U+10FFFF */
    if (b[1] < lo || b[1] > hi) return 0;
    for (i = 2; i < n; i++)
        if (b[i] < 0x80 || b[i] > 0xBF) return 0;
    return n;
}

/* Parses a string at p->pos; *out points at its decoded, NUL-terminated text in place. */
static dtnh_status dtnh__st_string(dtnh__st_parser *p, char **out) {
    char *dst;
    dtnh__st_ws(p);
    if (p->pos >= p->len || p->s[p->pos] != '"') return dtnh__st_syntax(p, "expected a string");
    dst = *out = p->s + ++p->pos;
    for (;;) {
        unsigned char c;
        if (p->pos >= p->len) return dtnh__st_syntax(p, "unterminated string");
        c = (unsigned char)p->s[p->pos];
        if (c == '"') {
            p->pos++;
            *dst = '\0';
            return DTNH_OK;
        } else if (c < 0x20) {
            return dtnh__st_syntax(p, "control character in a string");
        } else if (c == '\\') {
            static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
            const char *hit = p->pos + 1 < p->len ? strchr(from, p->s[p->pos + 1]) : NULL;
            if (p->pos + 1 < p->len && p->s[p->pos + 1] == 'u') {
                dtnh_status s = dtnh__st_unicode_escape(p, &dst);
                if (s) return s;
            } else if (hit && *hit) {
                *dst++ = to[hit - from];
                p->pos += 2;
            } else {
                return dtnh__st_syntax(p, "bad escape in a string");
            }
        } else if (c < 0x80) {
            *dst++ = (char)c;
            p->pos++;
        } else {
            size_t n = dtnh__st_utf8_len(p);
            if (!n) return dtnh__st_syntax(p, "invalid UTF-8 in a string");
            while (n--) *dst++ = p->s[p->pos++];
        }
    }
}

/* A non-negative JSON integer that fits 64 bits. */
static dtnh_status dtnh__st_u64(dtnh__st_parser *p, uint64_t *out) {
    uint64_t v = 0;
    size_t start;
    dtnh__st_ws(p);
    start = p->pos;
    while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') {
        unsigned d = (unsigned)(p->s[p->pos] - '0');
        if (v > (UINT64_MAX - d) / 10) return dtnh__st_syntax(p, "integer does not fit 64 bits");
        v = v * 10 + d;
        p->pos++;
    }
    if (p->pos == start) return dtnh__st_syntax(p, "expected a non-negative integer");
    if (p->s[start] == '0' && p->pos - start > 1) return dtnh__st_syntax(p, "integer with a leading zero");
    if (p->pos < p->len && (p->s[p->pos] == '.' || p->s[p->pos] == 'e' || p->s[p->pos] == 'E'))
        return dtnh__st_syntax(p, "expected an integer, found a fraction or an exponent");
    *out = v;
    return DTNH_OK;
}

/* An array of at most max non-negative integers; *n gets how many. */
static dtnh_status dtnh__st_u64_array(dtnh__st_parser *p, uint64_t *v, int max, int *n) {
    dtnh_status s;
    int more;
    *n = 0;
    if ((s = dtnh__st_expect(p, '[', "expected '['"))) return s;
    dtnh__st_ws(p);
    if (p->pos < p->len && p->s[p->pos] == ']') {
        p->pos++;
        return DTNH_OK;
    }
    do {
        if (*n == max) return dtnh__st_syntax(p, "array too long");
        if ((s = dtnh__st_u64(p, &v[(*n)++]))) return s;
        more = dtnh__st_next_item(p, ']');
        if (more < 0) return dtnh__st_syntax(p, "expected ',' or ']' in an array");
    } while (more);
    return DTNH_OK;
}

static dtnh_status dtnh__st_dtype_field(dtnh__st_parser *p, dtnh_st_entry *e) {
    char *name;
    int t;
    dtnh_status s = dtnh__st_string(p, &name);
    if (s) return s;
    for (t = 0; t < 4; t++)
        if (strcmp(name, dtnh__st_dtype_names[t]) == 0) {
            e->dtype = (dtnh_st_dtype)t;
            return DTNH_OK;
        }
    return dtnh_fail(p->err, DTNH_ERR_FORMAT,
                     "safetensors tensor '%s': dtype '%s' is not supported (F32, F16, BF16, I64)",
                     p->tensor, name);
}

/* The object {"dtype": .., "shape": [..], "data_offsets": [begin, end]} of one tensor. */
static dtnh_status dtnh__st_entry(dtnh__st_parser *p, dtnh_st_entry *e) {
    int seen_dtype = 0, seen_shape = 0, seen_offsets = 0, more, n;
    uint64_t off[2];
    dtnh_status s;
    if ((s = dtnh__st_expect(p, '{', "expected '{' opening the tensor's entry"))) return s;
    do {
        char *key;
        if ((s = dtnh__st_string(p, &key))) return s;
        if ((s = dtnh__st_expect(p, ':', "expected ':' after a key"))) return s;
        if (strcmp(key, "dtype") == 0 && !seen_dtype++) {
            s = dtnh__st_dtype_field(p, e);
        } else if (strcmp(key, "shape") == 0 && !seen_shape++) {
            s = dtnh__st_u64_array(p, e->shape, DTNH_ST_MAX_DIMS, &e->ndim);
        } else if (strcmp(key, "data_offsets") == 0 && !seen_offsets++) {
            s = dtnh__st_u64_array(p, off, 2, &n);
            if (!s && n != 2) s = dtnh__st_syntax(p, "data_offsets must hold 2 integers");
            e->begin = off[0];
            e->end = off[1];
        } else {
            return dtnh__st_syntax(p, "unknown or repeated key in the tensor's entry");
        }
        if (s) return s;
        more = dtnh__st_next_item(p, '}');
        if (more < 0) return dtnh__st_syntax(p, "expected ',' or '}' in the tensor's entry");
    } while (more);
    if (!seen_dtype || !seen_shape || !seen_offsets)
        return dtnh__st_syntax(p, "entry lacks dtype, shape or data_offsets");
    return DTNH_OK;
}

static dtnh_status dtnh__st_metadata(dtnh__st_parser *p, dtnh_st_file *f, int max) {
    dtnh_status s;
    int more;
    if ((s = dtnh__st_expect(p, '{', "expected '{' opening __metadata__"))) return s;
    dtnh__st_ws(p);
    if (p->pos < p->len && p->s[p->pos] == '}') {
        p->pos++;
        return DTNH_OK;
    }
    do {
        char *key, *value;
        if ((s = dtnh__st_string(p, &key))) return s;
        if ((s = dtnh__st_expect(p, ':', "expected ':' in __metadata__"))) return s;
        if ((s = dtnh__st_string(p, &value))) return s; /* the format allows strings only */
        if (f->meta_count >= max) return dtnh__st_syntax(p, "too many metadata pairs");
        f->meta[f->meta_count].key = key;
        f->meta[f->meta_count++].value = value;
        more = dtnh__st_next_item(p, '}');
        if (more < 0) return dtnh__st_syntax(p, "expected ',' or '}' in __metadata__");
    } while (more);
    return DTNH_OK;
}

/* The top-level object. */
static dtnh_status dtnh__st_parse(dtnh__st_parser *p, dtnh_st_file *f, int max_entries,
                                  int max_meta) {
    int seen_meta = 0, more;
    dtnh_status s;
    if ((s = dtnh__st_expect(p, '{', "expected '{' opening the header"))) return s;
    dtnh__st_ws(p);
    if (p->pos < p->len && p->s[p->pos] == '}') {
        p->pos++;
        more = 0;
    } else {
        do {
            char *name;
            if ((s = dtnh__st_string(p, &name))) return s;
            if ((s = dtnh__st_expect(p, ':', "expected ':' after a tensor name"))) return s;
            if (strcmp(name, "__metadata__") == 0) {
                if (seen_meta++) return dtnh__st_syntax(p, "__metadata__ appears twice");
                s = dtnh__st_metadata(p, f, max_meta);
            } else {
                dtnh_st_entry *e;
                if (f->count >= max_entries) return dtnh__st_syntax(p, "too many tensors");
                e = &f->entries[f->count];
                memset(e, 0, sizeof *e);
                e->name = name;
                p->tensor = name;
                s = dtnh__st_entry(p, e);
                p->tensor = NULL;
                f->count++;
            }
            if (s) return s;
            more = dtnh__st_next_item(p, '}');
            if (more < 0) return dtnh__st_syntax(p, "expected ',' or '}' after a tensor");
        } while (more);
    }
    dtnh__st_ws(p);
    if (p->pos != p->len) return dtnh__st_syntax(p, "text after the header's closing '}'");
    return DTNH_OK;
}

/* ---- safetensors: checks after parsing --------------------------------------------------- */

/* Element count and byte size of e, failing when they overflow. */
static dtnh_status dtnh__st_entry_size(dtnh_st_entry *e, uint64_t *bytes, dtnh_error *err) {
    uint64_t n = 1, es = dtnh__st_dtype_sizes[e->dtype];
    int d, overflow = 0;
    for (d = 0; d < e->ndim; d++) {
        if (e->shape[d] != 0 && n > UINT64_MAX / e->shape[d]) overflow = 1;
        n *= e->shape[d];
    }
    for (d = 0; d < e->ndim; d++) {
        if (e->shape[d] != 0) continue;
        overflow = 0; /* empty, whatever the other dimensions */
        n = 0;
    }
    if (overflow || n > UINT64_MAX / es || n * es > (uint64_t)(size_t)-1)
        return dtnh_fail(err, DTNH_ERR_FORMAT, "safetensors tensor '%s': its shape of %d "
                         "dimensions overflows the byte count", e->name, e->ndim);
    e->count = n;
    *bytes = n * es;
    return DTNH_OK;
}

static dtnh_status dtnh__st_check_offsets(dtnh_st_entry *e, uint64_t data_bytes, dtnh_error *err) {
    uint64_t bytes = 0;
    dtnh_status s = dtnh__st_entry_size(e, &bytes, err);
    if (s) return s;
    if (e->begin > e->end)
        return dtnh_fail(err, DTNH_ERR_FORMAT, "safetensors tensor '%s': data_offsets [%llu, %llu] "
                         "run backwards", e->name, (unsigned long long)e->begin, (unsigned long long)e->end);
    if (e->end > data_bytes)
        return dtnh_fail(err, DTNH_ERR_FORMAT, "safetensors tensor '%s': data_offsets [%llu, %llu] "
                         "leave the data section of %llu bytes", e->name, (unsigned long long)e->begin,
                         (unsigned long long)e->end, (unsigned long long)data_bytes);
    if (e->end - e->begin != bytes)
        return dtnh_fail(err, DTNH_ERR_FORMAT, "safetensors tensor '%s': data_offsets [%llu, %llu] "
                         "hold %llu bytes, dtype %s x shape needs %llu", e->name,
                         (unsigned long long)e->begin, (unsigned long long)e->end,
                         (unsigned long long)(e->end - e->begin), dtnh__st_dtype_names[e->dtype],
                         (unsigned long long)bytes);
    return DTNH_OK;
}

typedef int (*dtnh__st_cmp)(const dtnh_st_entry *e, int a, int b);

static int dtnh__st_by_name(const dtnh_st_entry *e, int a, int b) {
    return strcmp(e[a].name, e[b].name);
}

static int dtnh__st_by_offset(const dtnh_st_entry *e, int a, int b) {
    if (e[a].begin != e[b].begin) return e[a].begin < e[b].begin ? -1 : 1;
    if (e[a].end != e[b].end) return e[a].end < e[b].end ? -1 : 1;
    return 0;
}

/* Heap sort of an index array: O(n log n) with no memory, whatever a hostile header holds. */
static void dtnh__st_sift(int *idx, int root, int n, const dtnh_st_entry *e, dtnh__st_cmp cmp) {
    for (;;) {
        int child = 2 * root + 1, t;
        if (child >= n) return;
        if (child + 1 < n && cmp(e, idx[child], idx[child + 1]) < 0) child++;
        if (cmp(e, idx[root], idx[child]) >= 0) return;
        t = idx[root];
        idx[root] = idx[child];
        idx[child] = t;
        root = child;
    }
}

static void dtnh__st_sort(int *idx, int n, const dtnh_st_entry *e, dtnh__st_cmp cmp) {
    int i, t;
    for (i = 0; i < n; i++) idx[i] = i;
    for (i = n / 2 - 1; i >= 0; i--) dtnh__st_sift(idx, i, n, e, cmp);
    for (i = n - 1; i > 0; i--) {
        t = idx[0];
        idx[0] = idx[i];
        idx[i] = t;
        dtnh__st_sift(idx, 0, i, e, cmp);
    }
}

/* Unique names; tensors that tile the data section with no overlap and no gap. */
static dtnh_status dtnh__st_check_layout(const dtnh_st_file *f, int *idx, dtnh_error *err) {
    const dtnh_st_entry *e = f->entries;
    uint64_t at = 0;
    int i;
    dtnh__st_sort(idx, f->count, e, dtnh__st_by_name);
    for (i = 1; i < f->count; i++)
        if (strcmp(e[idx[i - 1]].name, e[idx[i]].name) == 0)
            return dtnh_fail(err, DTNH_ERR_FORMAT, "safetensors tensor '%s' appears twice",
                             e[idx[i]].name);
    dtnh__st_sort(idx, f->count, e, dtnh__st_by_offset);
    for (i = 0; i < f->count; i++) {
        const dtnh_st_entry *t = &e[idx[i]];
        if (t->begin < at)
            return dtnh_fail(err, DTNH_ERR_FORMAT, "safetensors tensor '%s': data_offsets [%llu, "
                             "%llu] overlap tensor '%s'", t->name, (unsigned long long)t->begin,
                             (unsigned long long)t->end, e[idx[i - 1]].name);
        if (t->begin > at)
            return dtnh_fail(err, DTNH_ERR_FORMAT, "safetensors tensor '%s': data_offsets begin at "
                             "%llu, leaving a gap after byte %llu", t->name,
                             (unsigned long long)t->begin, (unsigned long long)at);
        at = t->end;
    }
    if (at != f->data_bytes)
        return dtnh_fail(err, DTNH_ERR_FORMAT, "safetensors data section holds %llu bytes, the "
                         "tensors cover %llu", (unsigned long long)f->data_bytes,
                         (unsigned long long)at);
    return DTNH_OK;
}

/* ---- safetensors: opening ----------------------------------------------------------------- */

/* The 8-byte prefix: the header length, checked against the file's size. */
static dtnh_status dtnh__st_prefix(dtnh_st_file *f, const unsigned char *prefix, uint64_t size,
                                   dtnh_error *err) {
    uint64_t n;
    if (size < 8)
        return dtnh_fail(err, DTNH_ERR_FORMAT, "safetensors file truncated: %llu bytes, the header "
                         "length alone needs 8", (unsigned long long)size);
    n = dtnh__st_load_le(prefix, 8);
    if (n > size - 8)
        return dtnh_fail(err, DTNH_ERR_FORMAT, "safetensors header length %llu runs past the end "
                         "of the file (%llu bytes)", (unsigned long long)n, (unsigned long long)size);
    if (n > DTNH_ST_MAX_HEADER)
        return dtnh_fail(err, DTNH_ERR_FORMAT, "safetensors header length %llu exceeds the limit "
                         "of %u bytes", (unsigned long long)n, DTNH_ST_MAX_HEADER);
    f->header_bytes = n;
    f->data_offset = 8 + n;
    f->data_bytes = size - 8 - n;
    return DTNH_OK;
}

/* Scratch for the header text and the tables, sized from the header length alone, so a
   counting arena counts exactly what the assigning one takes. An entry needs at least
   DTNH__ST_MIN_ENTRY_CHARS characters ("":{"dtype":"F32","shape":[],"data_offsets":[0,0]}
   and a comma), a metadata pair DTNH__ST_MIN_META_CHARS ("":"" and a comma). */
static dtnh_status dtnh__st_scratch(dtnh_st_file *f, dtnh_arena *a, char **text, int **idx,
                                    int *max_entries, int *max_meta, dtnh_error *err) {
    size_t n = (size_t)f->header_bytes;
    void *p[4];
    dtnh_status s;
    *max_entries = (int)(n / DTNH__ST_MIN_ENTRY_CHARS + 1);
    *max_meta = (int)(n / DTNH__ST_MIN_META_CHARS + 1);
    if ((s = dtnh_arena_alloc(a, n + 1, 1, &p[0], err)) ||
        (s = dtnh_arena_alloc(a, (size_t)*max_entries * sizeof(dtnh_st_entry), 0, &p[1], err)) ||
        (s = dtnh_arena_alloc(a, (size_t)*max_meta * sizeof(dtnh_st_meta), 0, &p[2], err)) ||
        (s = dtnh_arena_alloc(a, (size_t)*max_entries * sizeof(int), 0, &p[3], err)))
        return s;
    *text = (char *)p[0];
    f->entries = (dtnh_st_entry *)p[1];
    f->meta = (dtnh_st_meta *)p[2];
    *idx = (int *)p[3];
    return DTNH_OK;
}

/* Parses the header text (already in scratch) and checks every entry. */
static dtnh_status dtnh__st_load_header(dtnh_st_file *f, char *text, int *idx, int max_entries,
                                        int max_meta, dtnh_error *err) {
    dtnh__st_parser p;
    dtnh_status s;
    int i;
    p.s = text;
    p.pos = 0;
    p.len = (size_t)f->header_bytes;
    p.tensor = NULL;
    p.err = err;
    text[p.len] = '\0';
    f->count = f->meta_count = 0;
    if ((s = dtnh__st_parse(&p, f, max_entries, max_meta))) return s;
    for (i = 0; i < f->count; i++)
        if ((s = dtnh__st_check_offsets(&f->entries[i], f->data_bytes, err))) return s;
    return dtnh__st_check_layout(f, idx, err);
}

DTNHDEF dtnh_status dtnh_st_open_memory(dtnh_st_file *f, const void *data, size_t size,
                                        dtnh_arena *scratch, dtnh_error *err) {
    char *text;
    int *idx, max_entries, max_meta;
    dtnh_status s;
    if (!f || !scratch || (!data && size))
        return dtnh_fail(err, DTNH_ERR_ARG, "st_open_memory: NULL file, scratch or data");
    memset(f, 0, sizeof *f);
    if ((s = dtnh__st_prefix(f, (const unsigned char *)data, size, err))) return s;
    if ((s = dtnh__st_scratch(f, scratch, &text, &idx, &max_entries, &max_meta, err))) return s;
    if (dtnh_arena_is_counting(scratch)) return DTNH_OK;
    memcpy(text, (const unsigned char *)data + 8, (size_t)f->header_bytes);
    if ((s = dtnh__st_load_header(f, text, idx, max_entries, max_meta, err))) {
        f->count = f->meta_count = 0;
        return s;
    }
    f->mem = (const unsigned char *)data;
    return DTNH_OK;
}

DTNHDEF int dtnh_st_find(const dtnh_st_file *f, const char *name) {
    int i;
    for (i = 0; i < f->count; i++)
        if (strcmp(f->entries[i].name, name) == 0) return i;
    return -1;
}

DTNHDEF const char *dtnh_st_meta_get(const dtnh_st_file *f, const char *key) {
    int i;
    for (i = 0; i < f->meta_count; i++)
        if (strcmp(f->meta[i].key, key) == 0) return f->meta[i].value;
    return NULL;
}

DTNHDEF int dtnh_st_shape_is(const dtnh_st_file *f, int index, int ndim, const int *shape) {
    const dtnh_st_entry *e;
    int d;
    if (index < 0 || index >= f->count) return 0;
    e = &f->entries[index];
    if (e->ndim != ndim) return 0;
    for (d = 0; d < ndim; d++)
        if (shape[d] < 0 || e->shape[d] != (uint64_t)shape[d]) return 0;
    return 1;
}

/* ---- safetensors: reading data ------------------------------------------------------------ */

static dtnh_status dtnh__st_read(dtnh_st_file *f, int index, float *outf, int64_t *outi,
                                 size_t count, dtnh_error *err) {
    const dtnh_st_entry *e;
    if (!f || index < 0 || index >= f->count)
        return dtnh_fail(err, DTNH_ERR_ARG, "st_read: no tensor %d in the file", index);
    e = &f->entries[index];
    if ((outi != NULL) != (e->dtype == DTNH_ST_I64))
        return dtnh_fail(err, DTNH_ERR_FORMAT, "safetensors tensor '%s' is %s, expected %s",
                         e->name, dtnh__st_dtype_names[e->dtype], outi ? "I64" : "F32, F16 or BF16");
    if (e->count != (uint64_t)count)
        return dtnh_fail(err, DTNH_ERR_SHAPE, "safetensors tensor '%s' holds %llu values, the "
                         "buffer %zu", e->name, (unsigned long long)e->count, count);
    if (f->mem) {
        dtnh__st_decode(e->dtype, f->mem + f->data_offset + e->begin, count, outf, outi);
        return DTNH_OK;
    }
#ifndef DTNH_NO_STDIO
    if (f->fp) {
        uint64_t at = f->data_offset + e->begin;
        size_t done = 0, es = dtnh__st_dtype_sizes[e->dtype];
        if (at > (uint64_t)LONG_MAX || fseek((FILE *)f->fp, (long)at, SEEK_SET) != 0)
            return dtnh_fail(err, DTNH_ERR_IO, "safetensors tensor '%s': cannot seek to byte %llu",
                             e->name, (unsigned long long)at);
        while (done < count) {
            unsigned char buf[DTNH__ST_CHUNK];
            size_t n = count - done < DTNH__ST_CHUNK / es ? count - done : DTNH__ST_CHUNK / es;
            if (fread(buf, es, n, (FILE *)f->fp) != n)
                return dtnh_fail(err, DTNH_ERR_IO, "safetensors tensor '%s': the file ends inside "
                                 "its data", e->name);
            dtnh__st_decode(e->dtype, buf, n, outf ? outf + done : NULL, outi ? outi + done : NULL);
            done += n;
        }
        return DTNH_OK;
    }
#endif
    return dtnh_fail(err, DTNH_ERR_ARG, "st_read: the file is not open");
}

DTNHDEF dtnh_status dtnh_st_read_f32(dtnh_st_file *f, int index, float *out, size_t count,
                                     dtnh_error *err) {
    if (!out && count) return dtnh_fail(err, DTNH_ERR_ARG, "st_read_f32: NULL output");
    return dtnh__st_read(f, index, out, NULL, count, err);
}

DTNHDEF dtnh_status dtnh_st_read_i64(dtnh_st_file *f, int index, int64_t *out, size_t count,
                                     dtnh_error *err) {
    int64_t dummy;
    if (!out && count) return dtnh_fail(err, DTNH_ERR_ARG, "st_read_i64: NULL output");
    return dtnh__st_read(f, index, NULL, out ? out : &dummy, count, err);
}

DTNHDEF void dtnh_st_close(dtnh_st_file *f) {
    if (!f) return;
#ifndef DTNH_NO_STDIO
    if (f->fp) fclose((FILE *)f->fp);
#endif
    f->fp = NULL;
}

/* ---- safetensors: writing ------------------------------------------------------------------
   One emitter writes to a counter, a memory buffer or a FILE, so sizing and writing agree. */

typedef struct dtnh__st_sink {
    unsigned char *buf; /* memory, or NULL */
    size_t cap;
    void *fp; /* FILE *, or NULL; both NULL only counts */
    size_t len;
    int failed;
} dtnh__st_sink;

static void dtnh__st_put(dtnh__st_sink *k, const void *src, size_t n) {
    if (k->failed) return;
    if (k->buf) {
        if (n > k->cap - k->len) {
            k->failed = 1;
            return;
        }
        if (n) memcpy(k->buf + k->len, src, n);
    }
#ifndef DTNH_NO_STDIO
    else if (k->fp && fwrite(src, 1, n, (FILE *)k->fp) != n) {
        k->failed = 1;
        return;
    }
#endif
    k->len += n;
}

static void dtnh__st_puts(dtnh__st_sink *k, const char *s) { dtnh__st_put(k, s, strlen(s)); }

static void dtnh__st_put_u64(dtnh__st_sink *k, uint64_t v) {
    char digits[24];
    int n = 0;
    do digits[sizeof digits - 1 - n++] = (char)('0' + v % 10);
    while ((v /= 10) != 0);
    dtnh__st_put(k, digits + sizeof digits - n, (size_t)n);
}

/* A JSON string: quotes, backslashes and control characters escaped, UTF-8 passed through. */
static void dtnh__st_put_json(dtnh__st_sink *k, const char *s) {
    static const char hex[] = "0123456789abcdef";
    dtnh__st_puts(k, "\"");
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            char esc[2];
            esc[0] = '\\';
            esc[1] = (char)c;
            dtnh__st_put(k, esc, 2);
        } else if (c < 0x20) {
            char esc[6] = {'\\', 'u', '0', '0', 0, 0};
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            dtnh__st_put(k, esc, 6);
        } else {
            dtnh__st_put(k, s, 1);
        }
    }
    dtnh__st_puts(k, "\"");
}

static uint64_t dtnh__st_tensor_bytes(const dtnh_st_tensor *t) {
    uint64_t n = dtnh__st_dtype_sizes[t->dtype];
    int d;
    for (d = 0; d < t->ndim; d++) n *= (uint64_t)t->shape[d];
    return n;
}

static void dtnh__st_emit_json(dtnh__st_sink *k, const dtnh_st_tensor *t, int count,
                               const dtnh_st_meta *meta, int meta_count) {
    uint64_t at = 0;
    int i, d;
    dtnh__st_puts(k, "{");
    if (meta_count > 0) {
        dtnh__st_puts(k, "\"__metadata__\":{");
        for (i = 0; i < meta_count; i++) {
            if (i) dtnh__st_puts(k, ",");
            dtnh__st_put_json(k, meta[i].key);
            dtnh__st_puts(k, ":");
            dtnh__st_put_json(k, meta[i].value);
        }
        dtnh__st_puts(k, count > 0 ? "}," : "}");
    }
    for (i = 0; i < count; i++) {
        if (i) dtnh__st_puts(k, ",");
        dtnh__st_put_json(k, t[i].name);
        dtnh__st_puts(k, ":{\"dtype\":\"");
        dtnh__st_puts(k, dtnh__st_dtype_names[t[i].dtype]);
        dtnh__st_puts(k, "\",\"shape\":[");
        for (d = 0; d < t[i].ndim; d++) {
            if (d) dtnh__st_puts(k, ",");
            dtnh__st_put_u64(k, (uint64_t)t[i].shape[d]);
        }
        dtnh__st_puts(k, "],\"data_offsets\":[");
        dtnh__st_put_u64(k, at);
        dtnh__st_puts(k, ",");
        at += dtnh__st_tensor_bytes(&t[i]);
        dtnh__st_put_u64(k, at);
        dtnh__st_puts(k, "]}");
    }
    dtnh__st_puts(k, "}");
}

/* The whole file: header length, the JSON padded with spaces to a multiple of 8, the data. */
static void dtnh__st_emit_file(dtnh__st_sink *k, const dtnh_st_tensor *t, int count,
                               const dtnh_st_meta *meta, int meta_count) {
    dtnh__st_sink counter;
    unsigned char buf[DTNH__ST_CHUNK];
    size_t json, padded;
    int i;
    memset(&counter, 0, sizeof counter);
    dtnh__st_emit_json(&counter, t, count, meta, meta_count);
    json = counter.len;
    padded = (json + 7) / 8 * 8;
    dtnh__st_store_le(buf, padded, 8);
    dtnh__st_put(k, buf, 8);
    dtnh__st_emit_json(k, t, count, meta, meta_count);
    memset(buf, ' ', 8);
    dtnh__st_put(k, buf, padded - json);
    for (i = 0; i < count; i++) {
        size_t es = dtnh__st_dtype_sizes[t[i].dtype], n = (size_t)(dtnh__st_tensor_bytes(&t[i]) / es);
        size_t done, step = DTNH__ST_CHUNK / es;
        for (done = 0; done < n; done += step) {
            size_t m = n - done < step ? n - done : step;
            dtnh__st_encode(t[i].dtype, t[i].f32 ? t[i].f32 + done : NULL,
                            t[i].i64 ? t[i].i64 + done : NULL, m, buf);
            dtnh__st_put(k, buf, m * es);
        }
    }
}

static dtnh_status dtnh__st_check_tensor(const dtnh_st_tensor *t, dtnh_error *err) {
    uint64_t n = 1;
    int d;
    if (!t->name || strcmp(t->name, "__metadata__") == 0)
        return dtnh_fail(err, DTNH_ERR_ARG, "st_write: a tensor without a name, or named __metadata__");
    if ((unsigned)t->dtype >= 4 || t->ndim < 0 || t->ndim > DTNH_ST_MAX_DIMS)
        return dtnh_fail(err, DTNH_ERR_ARG, "st_write: tensor '%s' has dtype %d and %d dimensions",
                         t->name, (int)t->dtype, t->ndim);
    for (d = 0; d < t->ndim; d++) {
        if (t->shape[d] < 0)
            return dtnh_fail(err, DTNH_ERR_ARG, "st_write: tensor '%s' dimension %d is %d", t->name,
                             d, t->shape[d]);
        if (t->shape[d] && n > ((uint64_t)(size_t)-1 / 8) / (uint64_t)t->shape[d])
            return dtnh_fail(err, DTNH_ERR_ARG, "st_write: tensor '%s' is too large", t->name);
        n *= (uint64_t)t->shape[d];
    }
    if (n && (t->dtype == DTNH_ST_I64 ? !t->i64 : !t->f32))
        return dtnh_fail(err, DTNH_ERR_ARG, "st_write: tensor '%s' (%s) has no %s data", t->name,
                         dtnh__st_dtype_names[t->dtype], t->dtype == DTNH_ST_I64 ? "i64" : "f32");
    return DTNH_OK;
}

/* Everything the writer is given, checked before one byte is written. Names are compared
   pairwise: a model has a few hundred tensors at most. */
static dtnh_status dtnh__st_check_write(const dtnh_st_tensor *t, int count, const dtnh_st_meta *meta,
                                        int meta_count, dtnh_error *err) {
    uint64_t total = 0;
    int i, j;
    if (count < 0 || meta_count < 0 || (count && !t) || (meta_count && !meta))
        return dtnh_fail(err, DTNH_ERR_ARG, "st_write: %d tensors, %d metadata pairs", count, meta_count);
    for (i = 0; i < count; i++) {
        dtnh_status s = dtnh__st_check_tensor(&t[i], err);
        if (s) return s;
        total += dtnh__st_tensor_bytes(&t[i]);
        if (total > (uint64_t)(size_t)-1 / 2)
            return dtnh_fail(err, DTNH_ERR_ARG, "st_write: the tensors are too large in all");
        for (j = 0; j < i; j++)
            if (strcmp(t[i].name, t[j].name) == 0)
                return dtnh_fail(err, DTNH_ERR_ARG, "st_write: tensor '%s' given twice", t[i].name);
    }
    for (i = 0; i < meta_count; i++) {
        if (!meta[i].key || !meta[i].value)
            return dtnh_fail(err, DTNH_ERR_ARG, "st_write: metadata pair %d lacks a key or value", i);
        for (j = 0; j < i; j++)
            if (strcmp(meta[i].key, meta[j].key) == 0)
                return dtnh_fail(err, DTNH_ERR_ARG, "st_write: metadata key '%s' given twice", meta[i].key);
    }
    return DTNH_OK;
}

DTNHDEF dtnh_status dtnh_st_write_memory(const dtnh_st_tensor *tensors, int count,
                                         const dtnh_st_meta *meta, int meta_count, void *buf,
                                         size_t capacity, size_t *size, dtnh_error *err) {
    dtnh__st_sink k;
    dtnh_status s = dtnh__st_check_write(tensors, count, meta, meta_count, err);
    if (s) return s;
    memset(&k, 0, sizeof k);
    dtnh__st_emit_file(&k, tensors, count, meta, meta_count);
    if (size) *size = k.len;
    if (!buf) return DTNH_OK;
    if (capacity < k.len)
        return dtnh_fail(err, DTNH_ERR_NOMEM, "st_write_memory: the file needs %zu bytes, the "
                         "buffer holds %zu", k.len, capacity);
    memset(&k, 0, sizeof k);
    k.buf = (unsigned char *)buf;
    k.cap = capacity;
    dtnh__st_emit_file(&k, tensors, count, meta, meta_count);
    return DTNH_OK;
}

#ifndef DTNH_NO_STDIO

/* The file's size; the position is left at its start. */
static dtnh_status dtnh__st_file_size(FILE *fp, const char *path, uint64_t *size, dtnh_error *err) {
    long end;
    if (fseek(fp, 0, SEEK_END) != 0 || (end = ftell(fp)) < 0 || fseek(fp, 0, SEEK_SET) != 0)
        return dtnh_fail(err, DTNH_ERR_IO, "safetensors '%s': cannot find the file's size", path);
    *size = (uint64_t)end;
    return DTNH_OK;
}

static dtnh_status dtnh__st_open_stream(dtnh_st_file *f, FILE *fp, const char *path,
                                        dtnh_arena *scratch, dtnh_error *err) {
    unsigned char prefix[8];
    uint64_t size = 0;
    char *text;
    int *idx, max_entries, max_meta;
    dtnh_status s;
    if ((s = dtnh__st_file_size(fp, path, &size, err))) return s;
    if (size >= 8 && fread(prefix, 1, 8, fp) != 8)
        return dtnh_fail(err, DTNH_ERR_IO, "safetensors '%s': cannot read the header length", path);
    if ((s = dtnh__st_prefix(f, prefix, size, err))) return s;
    if ((s = dtnh__st_scratch(f, scratch, &text, &idx, &max_entries, &max_meta, err))) return s;
    if (dtnh_arena_is_counting(scratch)) return DTNH_OK;
    if (fread(text, 1, (size_t)f->header_bytes, fp) != (size_t)f->header_bytes)
        return dtnh_fail(err, DTNH_ERR_IO, "safetensors '%s': cannot read the %llu-byte header",
                         path, (unsigned long long)f->header_bytes);
    return dtnh__st_load_header(f, text, idx, max_entries, max_meta, err);
}

DTNHDEF dtnh_status dtnh_st_open(dtnh_st_file *f, const char *path, dtnh_arena *scratch,
                                 dtnh_error *err) {
    FILE *fp;
    dtnh_status s;
    if (!f || !path || !scratch)
        return dtnh_fail(err, DTNH_ERR_ARG, "st_open: NULL file, path or scratch");
    memset(f, 0, sizeof *f);
    fp = fopen(path, "rb");
    if (!fp) return dtnh_fail(err, DTNH_ERR_IO, "safetensors '%s': cannot open the file", path);
    s = dtnh__st_open_stream(f, fp, path, scratch, err);
    if (s || dtnh_arena_is_counting(scratch)) {
        fclose(fp);
        f->count = f->meta_count = 0;
        return s;
    }
    f->fp = fp;
    return DTNH_OK;
}

static int dtnh__st_flush_to_disk(FILE *fp) {
    if (fflush(fp) != 0) return 0;
#ifdef DTNH__ST_FSYNC
    if (fsync((fileno)(fp)) != 0) return 0;
#endif
    return 1;
}

DTNHDEF dtnh_status dtnh_st_save(const char *path, const dtnh_st_tensor *tensors, int count,
                                 const dtnh_st_meta *meta, int meta_count, dtnh_error *err) {
    char tmp[DTNH__ST_PATH_MAX];
    dtnh__st_sink k;
    FILE *fp;
    int ok;
    dtnh_status s = dtnh__st_check_write(tensors, count, meta, meta_count, err);
    if (s) return s;
    if (!path || strlen(path) + 5 > sizeof tmp)
        return dtnh_fail(err, DTNH_ERR_ARG, "st_save: no path, or a path over %d bytes",
                         DTNH__ST_PATH_MAX - 5);
    strcpy(tmp, path);
    strcat(tmp, ".tmp");
    fp = fopen(tmp, "wb");
    if (!fp) return dtnh_fail(err, DTNH_ERR_IO, "st_save: cannot create '%s'", tmp);
    memset(&k, 0, sizeof k);
    k.fp = fp;
    dtnh__st_emit_file(&k, tensors, count, meta, meta_count);
    ok = !k.failed && dtnh__st_flush_to_disk(fp);
    if (fclose(fp) != 0) ok = 0;
    if (!ok) {
        remove(tmp);
        return dtnh_fail(err, DTNH_ERR_IO, "st_save: writing '%s' failed; '%s' is unchanged", tmp, path);
    }
#ifdef _WIN32
    remove(path); /* rename does not replace there */
#endif
    if (rename(tmp, path) != 0) {
        remove(tmp);
        return dtnh_fail(err, DTNH_ERR_IO, "st_save: cannot rename '%s' to '%s'", tmp, path);
    }
    return DTNH_OK;
}

#endif /* DTNH_NO_STDIO */
