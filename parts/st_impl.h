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

/* Called on the bytes of elements [first, first + n) of a tensor. */
typedef dtnh_status (*dtnh__st_chunk_fn)(void *ctx, const dtnh_st_entry *e, const unsigned char *b,
                                         size_t first, size_t n, dtnh_error *err);

/* Hands the tensor's bytes to fn in order, DTNH__ST_CHUNK bytes at most at a time. */
static dtnh_status dtnh__st_each_chunk(dtnh_st_file *f, const dtnh_st_entry *e, dtnh__st_chunk_fn fn,
                                       void *ctx, dtnh_error *err) {
    size_t es = dtnh__st_dtype_sizes[e->dtype], step = DTNH__ST_CHUNK / es, done, count = (size_t)e->count;
    dtnh_status s;
#ifndef DTNH_NO_STDIO
    uint64_t at = f->data_offset + e->begin;
    if (!f->mem && f->fp &&
        (at > (uint64_t)LONG_MAX || fseek((FILE *)f->fp, (long)at, SEEK_SET) != 0))
        return dtnh_fail(err, DTNH_ERR_IO, "safetensors tensor '%s': cannot seek to byte %llu",
                         e->name, (unsigned long long)at);
#endif
    for (done = 0; done < count; done += step) {
        size_t n = count - done < step ? count - done : step;
        const unsigned char *b = NULL;
#ifndef DTNH_NO_STDIO
        unsigned char buf[DTNH__ST_CHUNK];
        if (!f->mem && f->fp) {
            if (fread(buf, es, n, (FILE *)f->fp) != n)
                return dtnh_fail(err, DTNH_ERR_IO, "safetensors tensor '%s': the file ends inside "
                                 "its data", e->name);
            b = buf;
        }
#endif
        if (f->mem) b = f->mem + f->data_offset + e->begin + done * es;
        if (!b) return dtnh_fail(err, DTNH_ERR_ARG, "st_read: the file is not open");
        if ((s = fn(ctx, e, b, done, n, err))) return s;
    }
    return DTNH_OK;
}

typedef struct dtnh__st_dest {
    float *f32;
    int64_t *i64;
} dtnh__st_dest;

static dtnh_status dtnh__st_decode_chunk(void *ctx, const dtnh_st_entry *e, const unsigned char *b,
                                         size_t first, size_t n, dtnh_error *err) {
    dtnh__st_dest *d = (dtnh__st_dest *)ctx;
    (void)err;
    dtnh__st_decode(e->dtype, b, n, d->f32 ? d->f32 + first : NULL, d->i64 ? d->i64 + first : NULL);
    return DTNH_OK;
}

static dtnh_status dtnh__st_finite_chunk(void *ctx, const dtnh_st_entry *e, const unsigned char *b,
                                         size_t first, size_t n, dtnh_error *err) {
    float vals[DTNH__ST_CHUNK / 2];
    size_t bad = 0;
    (void)ctx;
    if (e->dtype == DTNH_ST_I64) return DTNH_OK;
    dtnh__st_decode(e->dtype, b, n, vals, NULL);
    if (!dtnh_all_finite(n, vals, &bad))
        return dtnh_fail(err, DTNH_ERR_NUMERIC, "safetensors tensor '%s': element %zu is %g",
                         e->name, first + bad, (double)vals[bad]);
    return DTNH_OK;
}

static dtnh_status dtnh__st_entry_at(const dtnh_st_file *f, int index, const dtnh_st_entry **e,
                                     dtnh_error *err) {
    if (!f || index < 0 || index >= f->count)
        return dtnh_fail(err, DTNH_ERR_ARG, "st_read: no tensor %d in the file", index);
    *e = &f->entries[index];
    return DTNH_OK;
}

static dtnh_status dtnh__st_read(dtnh_st_file *f, int index, float *outf, int64_t *outi,
                                 size_t count, dtnh_error *err) {
    const dtnh_st_entry *e = NULL;
    dtnh__st_dest d;
    dtnh_status s = dtnh__st_entry_at(f, index, &e, err);
    if (s) return s;
    if ((outi != NULL) != (e->dtype == DTNH_ST_I64))
        return dtnh_fail(err, DTNH_ERR_FORMAT, "safetensors tensor '%s' is %s, expected %s",
                         e->name, dtnh__st_dtype_names[e->dtype], outi ? "I64" : "F32, F16 or BF16");
    if (e->count != (uint64_t)count)
        return dtnh_fail(err, DTNH_ERR_SHAPE, "safetensors tensor '%s' holds %llu values, the "
                         "buffer %zu", e->name, (unsigned long long)e->count, count);
    d.f32 = outf;
    d.i64 = outi;
    return dtnh__st_each_chunk(f, e, dtnh__st_decode_chunk, &d, err);
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

DTNHDEF dtnh_status dtnh_st_check_finite(dtnh_st_file *f, int index, dtnh_error *err) {
    const dtnh_st_entry *e = NULL;
    dtnh_status s = dtnh__st_entry_at(f, index, &e, err);
    if (s) return s;
    return dtnh__st_each_chunk(f, e, dtnh__st_finite_chunk, NULL, err);
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

/* ---- ResNet-18 weights in safetensors --------------------------------------------------------
   Two passes over the file: the first checks every tensor (name, dtype, shape, finite values,
   readable bytes) and writes nothing; only then the second copies. */

/* Appends name to a comma-separated list, ending it with "..." once it is full. */
static void dtnh__st_list_name(char *list, const char *name) {
    size_t used = strlen(list), n = strlen(name);
    if (used >= 3 && strcmp(list + used - 3, "...") == 0) return;
    if (used + n + 2 + 5 < DTNH_LOAD_NAMES_SIZE) {
        if (used) strcat(list, ", ");
        strcat(list, name);
    } else if (used + 5 < DTNH_LOAD_NAMES_SIZE) {
        strcat(list, used ? ", ..." : "...");
    }
}

/* "[64, 3, 7, 7]" into buf. */
static const char *dtnh__st_shape_text(char *buf, size_t size, int ndim, const uint64_t *shape) {
    size_t used = 0;
    int d;
    buf[0] = '\0';
    for (d = 0; d < ndim && used + 1 < size; d++)
        used += (size_t)snprintf(buf + used, size - used, "%s%llu", d ? ", " : "[",
                                 (unsigned long long)shape[d]);
    if (used + 2 < size) strcat(buf, ndim ? "]" : "[]");
    return buf;
}

static dtnh_status dtnh__st_shape_error(const dtnh_st_entry *fe, const dtnh_state_entry *e,
                                        dtnh_error *err) {
    char a[64], b[64];
    uint64_t want[DTNH_MAX_DIMS];
    int d;
    for (d = 0; d < e->ndim; d++) want[d] = (uint64_t)e->shape[d];
    return dtnh_fail(err, DTNH_ERR_SHAPE, "weights: tensor '%s' has shape %s in the file, the "
                     "network needs %s", fe->name, dtnh__st_shape_text(a, sizeof a, fe->ndim, fe->shape),
                     dtnh__st_shape_text(b, sizeof b, e->ndim, want));
}

/* The transfer case: the file's fc.weight is [K, in_features] with K other than the
   network's class count (fc.bias, if there, must be [K]). */
static dtnh_status dtnh__st_other_head(const dtnh_resnet *net, const dtnh_st_file *f, int *other,
                                       int *file_classes, dtnh_error *err) {
    int fw = dtnh_st_find(f, "fc.weight"), fb = dtnh_st_find(f, "fc.bias");
    int jw = dtnh_resnet_state_find(net, "fc.weight");
    dtnh_state_entry e;
    const dtnh_st_entry *w;
    dtnh_status s;
    *other = *file_classes = 0;
    if (fw < 0 || jw < 0) return DTNH_OK;
    if ((s = dtnh_resnet_state_entry(net, jw, &e, err))) return s;
    w = &f->entries[fw];
    if (w->ndim != 2 || w->shape[0] > 0x7FFFFFFF) return DTNH_OK; /* a shape error later */
    *file_classes = (int)w->shape[0];
    if (w->shape[1] != (uint64_t)e.shape[1] || w->shape[0] == (uint64_t)e.shape[0]) return DTNH_OK;
    if (fb >= 0 && (f->entries[fb].ndim != 1 || f->entries[fb].shape[0] != w->shape[0]))
        return dtnh_fail(err, DTNH_ERR_SHAPE, "weights: fc.bias has %llu values, fc.weight %llu rows",
                         (unsigned long long)f->entries[fb].shape[0], (unsigned long long)w->shape[0]);
    *other = 1;
    return DTNH_OK;
}

static int dtnh__st_is_head(const char *name) {
    return strcmp(name, "fc.weight") == 0 || strcmp(name, "fc.bias") == 0;
}

/* One file tensor against the network's entry of that name. */
static dtnh_status dtnh__st_check_state(dtnh_st_file *f, int i, const dtnh_state_entry *e,
                                        dtnh_error *err) {
    const dtnh_st_entry *fe = &f->entries[i];
    if (!e->f32 && !e->i64)
        return dtnh_fail(err, DTNH_ERR_ARG, "weights: the network holds no '%s' of its own "
                         "(external weights)", e->name);
    if ((fe->dtype == DTNH_ST_I64) != (e->i64 != NULL))
        return dtnh_fail(err, DTNH_ERR_FORMAT, "weights: tensor '%s' is %s in the file, the network "
                         "needs %s", fe->name, dtnh__st_dtype_names[fe->dtype],
                         e->i64 ? "I64" : "F32, F16 or BF16");
    if (!dtnh_st_shape_is(f, i, e->ndim, e->shape)) return dtnh__st_shape_error(fe, e, err);
    return dtnh_st_check_finite(f, i, err);
}

/* Pass one: checks every tensor of the file and fills the report; writes nothing. */
static dtnh_status dtnh__st_plan_load(dtnh_resnet *net, dtnh_st_file *f, int strict,
                                      dtnh_load_report *r, dtnh_error *err) {
    dtnh_state_entry e;
    dtnh_status s;
    int i, n = dtnh_resnet_state_count(net);
    if ((s = dtnh__st_other_head(net, f, &r->head_skipped, &r->file_classes, err))) return s;
    for (i = 0; i < f->count; i++) {
        int j = dtnh_resnet_state_find(net, f->entries[i].name);
        if (j < 0) {
            r->unknown++;
            dtnh__st_list_name(r->unknown_names, f->entries[i].name);
            continue;
        }
        if (r->head_skipped && dtnh__st_is_head(f->entries[i].name)) continue;
        if ((s = dtnh_resnet_state_entry(net, j, &e, err))) return s;
        if ((s = dtnh__st_check_state(f, i, &e, err))) return s;
        r->loaded++;
    }
    for (i = 0; i < n; i++) {
        if ((s = dtnh_resnet_state_entry(net, i, &e, err))) return s;
        if (dtnh_st_find(f, e.name) >= 0) continue;
        r->missing++;
        dtnh__st_list_name(r->missing_names, e.name);
    }
    if (strict && (r->missing || r->unknown || r->head_skipped))
        return dtnh_fail(err, DTNH_ERR_FORMAT, "weights (strict): missing %d [%s], unknown %d [%s]%s",
                         r->missing, r->missing_names, r->unknown, r->unknown_names,
                         r->head_skipped ? ", and fc has another class count" : "");
    return DTNH_OK;
}

DTNHDEF dtnh_status dtnh_resnet_load(dtnh_resnet *net, dtnh_st_file *f, const dtnh_load_config *cfg,
                                     dtnh_load_report *report, dtnh_error *err) {
    dtnh_load_report local;
    dtnh_load_report *r = report ? report : &local;
    dtnh_state_entry e;
    dtnh_status s;
    int i;
    memset(r, 0, sizeof *r);
    if (!net || !f) return dtnh_fail(err, DTNH_ERR_ARG, "resnet_load: NULL network or file");
    if ((s = dtnh__st_plan_load(net, f, cfg ? cfg->strict : 0, r, err))) {
        r->loaded = 0;
        return s;
    }
    for (i = 0; i < f->count; i++) {
        int j = dtnh_resnet_state_find(net, f->entries[i].name);
        if (j < 0 || (r->head_skipped && dtnh__st_is_head(f->entries[i].name))) continue;
        if ((s = dtnh_resnet_state_entry(net, j, &e, err))) return s;
        s = e.i64 ? dtnh_st_read_i64(f, i, e.i64, e.count, err)
                  : dtnh_st_read_f32(f, i, e.f32, e.count, err);
        if (s) return s; /* only an I/O fault after pass one read the same bytes */
    }
    return DTNH_OK;
}

/* The network's state_dict as writer tensors, in torchvision's order. */
static dtnh_status dtnh__st_state_tensors(const dtnh_resnet *net, dtnh_st_tensor *t, int *count,
                                          dtnh_error *err) {
    int i, d, n = dtnh_resnet_state_count(net);
    if (n > DTNH__RESNET_MAX_STATE)
        return dtnh_fail(err, DTNH_ERR_ARG, "resnet_save: %d state entries, at most %d", n,
                         DTNH__RESNET_MAX_STATE);
    for (i = 0; i < n; i++) {
        dtnh_state_entry e;
        dtnh_status s = dtnh_resnet_state_entry(net, i, &e, err);
        if (s) return s;
        if (!e.f32 && !e.i64)
            return dtnh_fail(err, DTNH_ERR_ARG, "resnet_save: the network holds no '%s' of its own "
                             "(external weights)", e.name);
        memset(&t[i], 0, sizeof t[i]);
        t[i].name = e.name;
        t[i].dtype = e.i64 ? DTNH_ST_I64 : DTNH_ST_F32;
        t[i].ndim = e.ndim;
        for (d = 0; d < e.ndim; d++) t[i].shape[d] = e.shape[d];
        t[i].f32 = e.f32;
        t[i].i64 = e.i64;
    }
    *count = n;
    return DTNH_OK;
}

static const dtnh_st_meta dtnh__st_torch_meta[1] = {{"format", "pt"}};

DTNHDEF dtnh_status dtnh_resnet_save_memory(const dtnh_resnet *net, void *buf, size_t capacity,
                                            size_t *size, dtnh_error *err) {
    dtnh_st_tensor t[DTNH__RESNET_MAX_STATE];
    int n = 0;
    dtnh_status s;
    if (!net) return dtnh_fail(err, DTNH_ERR_ARG, "resnet_save: NULL network");
    if ((s = dtnh__st_state_tensors(net, t, &n, err))) return s;
    return dtnh_st_write_memory(t, n, dtnh__st_torch_meta, 1, buf, capacity, size, err);
}

/* A positive dimension that fits an int. */
static int dtnh__st_dim(uint64_t v) { return v > 0 && v <= 0x7FFFFFFF ? (int)v : 0; }

DTNHDEF dtnh_status dtnh_resnet_config_from_st(const dtnh_st_file *f, dtnh_resnet_config *cfg,
                                               dtnh_error *err) {
    int c = f ? dtnh_st_find(f, "conv1.weight") : -1, h = f ? dtnh_st_find(f, "fc.weight") : -1;
    const dtnh_st_entry *conv, *fc;
    if (!f || !cfg) return dtnh_fail(err, DTNH_ERR_ARG, "resnet_config_from_st: NULL argument");
    if (c < 0 || h < 0)
        return dtnh_fail(err, DTNH_ERR_FORMAT, "weights: no %s, not a ResNet-18 state_dict",
                         c < 0 ? "conv1.weight" : "fc.weight");
    conv = &f->entries[c];
    fc = &f->entries[h];
    if (conv->ndim != 4 || conv->shape[2] != conv->shape[3] ||
        (conv->shape[2] != 7 && conv->shape[2] != 3) || !dtnh__st_dim(conv->shape[0]) ||
        !dtnh__st_dim(conv->shape[1]) || conv->shape[0] > 0x7FFFFFFF / 8)
        return dtnh_fail(err, DTNH_ERR_FORMAT, "weights: conv1.weight should be [width, channels, "
                         "7 or 3, 7 or 3], its shape has %d dimensions", conv->ndim);
    if (fc->ndim != 2 || !dtnh__st_dim(fc->shape[0]) || fc->shape[1] != 8 * conv->shape[0])
        return dtnh_fail(err, DTNH_ERR_FORMAT, "weights: fc.weight should be [classes, %llu] "
                         "for a ResNet-18 of width %llu", (unsigned long long)(8 * conv->shape[0]),
                         (unsigned long long)conv->shape[0]);
    cfg->stem = conv->shape[2] == 7 ? DTNH_STEM_IMAGENET : DTNH_STEM_CIFAR;
    cfg->width = (int)conv->shape[0];
    cfg->in_channels = (int)conv->shape[1];
    cfg->num_classes = (int)fc->shape[0];
    return DTNH_OK;
}

#ifndef DTNH_NO_STDIO

DTNHDEF dtnh_status dtnh_resnet_load_file(dtnh_resnet *net, const char *path, dtnh_arena *scratch,
                                          const dtnh_load_config *cfg, dtnh_load_report *report,
                                          dtnh_error *err) {
    dtnh_st_file f;
    size_t mark;
    dtnh_status s;
    memset(&f, 0, sizeof f);
    if (report) memset(report, 0, sizeof *report);
    if (!scratch) return dtnh_fail(err, DTNH_ERR_ARG, "resnet_load_file: NULL scratch");
    mark = dtnh_arena_mark(scratch);
    s = dtnh_st_open(&f, path, scratch, err);
    if (!s) s = dtnh_resnet_load(net, &f, cfg, report, err);
    dtnh_st_close(&f);
    dtnh_arena_reset(scratch, mark);
    return s;
}

DTNHDEF dtnh_status dtnh_resnet_save(const dtnh_resnet *net, const char *path, dtnh_error *err) {
    dtnh_st_tensor t[DTNH__RESNET_MAX_STATE];
    int n = 0;
    dtnh_status s;
    if (!net) return dtnh_fail(err, DTNH_ERR_ARG, "resnet_save: NULL network");
    if ((s = dtnh__st_state_tensors(net, t, &n, err))) return s;
    return dtnh_st_save(path, t, n, dtnh__st_torch_meta, 1, err);
}

DTNHDEF dtnh_status dtnh_resnet_config_from_file(const char *path, dtnh_arena *scratch,
                                                 dtnh_resnet_config *cfg, dtnh_error *err) {
    dtnh_st_file f;
    size_t mark;
    dtnh_status s;
    memset(&f, 0, sizeof f);
    if (!scratch) return dtnh_fail(err, DTNH_ERR_ARG, "resnet_config_from_file: NULL scratch");
    mark = dtnh_arena_mark(scratch);
    s = dtnh_st_open(&f, path, scratch, err);
    if (!s) s = dtnh_resnet_config_from_st(&f, cfg, err);
    dtnh_st_close(&f);
    dtnh_arena_reset(scratch, mark);
    return s;
}

#endif /* DTNH_NO_STDIO */
